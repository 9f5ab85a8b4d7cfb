"""A convolution's int8 weights in an OpenVINO IR, in the form NNCF saves them.

NNCF stores an int8 convolution's kernel as an ``i8`` constant, converted to float and
multiplied by a per-output-channel scale. The transforms that change such a kernel (7-bit
first layer, sub-pixel rewrite, float activations) read it here.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

__all__ = ["Int8Weights", "int8_weights"]


class Int8Weights(NamedTuple):
    """The parts of an NNCF int8 kernel: ``dequantised = q * scale``."""

    q: np.ndarray
    """The int8 values."""
    scale: np.ndarray
    """The scale (float32), broadcast over ``q``: one value per output channel."""
    convert: Any
    """The ``Convert`` node between ``q`` and the ``Multiply``: its output type is the float one."""
    multiply: Any
    """The ``Multiply`` node whose output the convolution reads."""

    def dequantised(self) -> np.ndarray:
        """The float32 kernel the convolution computes with."""
        return self.q.astype(np.float32) * self.scale


def int8_weights(op: Any) -> Int8Weights | None:
    """The int8 kernel of convolution ``op`` (its input 1), or ``None`` where it is not in NNCF's form."""
    multiply = op.input(1).get_source_output().get_node()
    if multiply.get_type_name() != "Multiply":
        return None
    convert = multiply.input(0).get_source_output().get_node()
    scale = multiply.input(1).get_source_output().get_node()
    weights = convert.input(0).get_source_output().get_node() if convert.get_type_name() == "Convert" else None
    if (weights is None or weights.get_type_name() != "Constant" or scale.get_type_name() != "Constant"
            or weights.get_output_element_type(0).get_type_name() != "i8"):
        return None
    return Int8Weights(np.asarray(weights.get_data()), np.asarray(scale.get_data(), np.float32), convert, multiply)
