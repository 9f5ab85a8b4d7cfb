"""The int8 rules that the TFLite export, int8-aware training and the int8 simulation share.

Each rule lives here once, so the simulation in training and the benchmarks
quantise exactly as the exported model does. NumPy only at import; the torch
helpers import torch when called (inference never needs it).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["LEVELS", "TFLITE_INPUT_PERCENTILES", "OUTPUT_COPIES", "ACTIVATION_COPIES", "int8_step",
           "widened_step", "int8_input_range", "copy_fractions", "copy_offsets"]

#: Steps between the ends of an int8 range (256 levels).
LEVELS = 255
#: Calibration values outside these percentiles do not widen the int8 input range.
TFLITE_INPUT_PERCENTILES = (0.01, 99.99)
#: Offset copies of the output the TFLite model returns (the host averages them).
OUTPUT_COPIES = 4
#: Offset copies of the full-resolution layers' outputs (:mod:`bluesky_tomogan.export.copies`).
ACTIVATION_COPIES: dict[str, int] = {"stem.0": 4, "head.0": 4}


def int8_step(lo: Any, hi: Any) -> Any:
    """The int8 step of the range ``[lo, hi]`` (floats, arrays or torch tensors)."""
    return (hi - lo) / LEVELS


def widened_step(lo: float, hi: float, copies: int) -> float:
    """The step of ``[lo, hi]`` once ``copies`` offset copies widen it by a fraction of one step."""
    return float((hi - lo + int8_step(lo, hi) * (copies - 1) / copies) / LEVELS)


def int8_input_range(values: np.ndarray,
                     percentiles: tuple[float, float] = TFLITE_INPUT_PERCENTILES) -> tuple[float, float]:
    """The int8 input range the export calibrates from ``values``: their ``percentiles``.

    Int8-aware training uses the same rule, so that it simulates the exported model.
    """
    lo, hi = np.percentile(np.asarray(values), percentiles)
    return float(lo), float(hi)


def copy_fractions(copies: int) -> np.ndarray:
    """``copies`` fractions of one step, symmetric around zero: the offsets of the copies in steps."""
    return (np.arange(copies, dtype=np.float32) - (copies - 1) / 2) / copies


def copy_offsets(step: Any, copies: int) -> Any:
    """Offsets of ``copies`` copies of a tensor whose int8 step is ``step`` (a float or torch tensor).

    Returns a float32 torch tensor; the export and int8-aware training
    (:func:`bluesky_tomogan.model.qat.fake_quant_copies`) both use it.
    """
    import torch

    return torch.from_numpy(copy_fractions(copies)) * step
