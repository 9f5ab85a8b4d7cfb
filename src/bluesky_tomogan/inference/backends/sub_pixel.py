"""Fused decoders as plain convolutions, for CPUs whose OpenVINO has no int8 transposed convolution.

The export writes each decoder of an ``"edge"`` network as one 6x6, stride-2 transposed
convolution (:mod:`bluesky_tomogan.export.fused_decoder`). On a CPU with AVX-512 OpenVINO runs
it in int8 (``brgconv_avx512_I8``); on an AVX2-only CPU it has no such kernel and runs it in
fp32 on the dequantised weights (``brgconv_avx2_f32``): the light projection model's three
transposed convolutions took 238 of its 745 ms per 1024x1024 frame there, the rest of the
network running in int8 (``python benchmarks/layer_profile.py
src/bluesky_tomogan/weights/tomogan-projection-light.int8.xml --size 1024 --precision f32``,
AMD EPYC Zen 3, session 41, another job on the machine).

Such a transposed convolution is four 3x3 convolutions interleaved by a pixel shuffle: output
pixel ``2m + a`` (padding 4) reads input pixels ``m + t`` through kernel tap ``a + 4 - 2t``,
``t = 0, 1, 2``, so each output phase ``(a, b)`` is a 3x3 convolution without padding, and the
four phases are four groups of output channels put back in place by ``DepthToSpace`` (block 2,
depth first). :func:`sub_pixel_transposed_convolutions` rewrites the IR so at load: the same
int8 weights, rearranged, each with its output channel's scale; the same products and sums in
another order. OpenVINO runs both the convolution and ``DepthToSpace`` in int8 kernels.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np

from ...cpu import dispatch_cpu_flags as current_cpu_flags
from ...cpu import is_x86
from .ir_weights import int8_weights

__all__ = ["int8_transposed_convolutions_native", "sub_pixel_transposed_convolutions", "sub_pixel_weights"]

#: Kernel tap of ``t = 0, 1, 2`` for output phase 0 (phase 1 reads the next tap).
_PHASE_TAPS = np.array([4, 2, 0])


def int8_transposed_convolutions_native(cpu_flags: Collection[str] | None = None, machine: str | None = None) -> bool:
    """Whether OpenVINO runs an int8 transposed convolution in int8 on this CPU (or one with ``cpu_flags``).

    On x86 it needs AVX-512 (``avx512bw``); other architectures are left as they are (not measured).
    """
    if not is_x86(machine):
        return True
    flags = current_cpu_flags() if cpu_flags is None else cpu_flags
    return "avx512bw" in flags


def sub_pixel_weights(kernel: np.ndarray) -> np.ndarray:
    """The ``(4 * O, C, 3, 3)`` convolution weights of a ``(C, O, 6, 6)`` stride-2, padding-4 transposed
    convolution kernel: channel ``o * 4 + a * 2 + b`` computes output phase ``(a, b)`` of channel ``o``,
    in the order ``DepthToSpace`` (depth first) and PyTorch's ``PixelShuffle`` read them."""
    c, o = kernel.shape[:2]
    w = np.empty((o, 2, 2, c, 3, 3), kernel.dtype)
    for a in (0, 1):
        for b in (0, 1):
            w[:, a, b] = kernel[:, :, _PHASE_TAPS + a][:, :, :, _PHASE_TAPS + b].transpose(1, 0, 2, 3)
    return w.reshape(4 * o, c, 3, 3)


def sub_pixel_transposed_convolutions(model: Any) -> int:
    """Rewrite each int8 6x6, stride-2, padding-4 transposed convolution of an OpenVINO ``model`` as a
    3x3 convolution and ``DepthToSpace``, in place; returns how many were rewritten.

    Only the form NNCF saves is rewritten (int8 weights, ``Convert``, a per-output-channel
    ``Multiply`` by its scale); any other transposed convolution is left as it is.
    """
    from openvino import opset13

    rewritten = 0
    for op in list(model.get_ordered_ops()):
        if op.get_type_name() != "ConvolutionBackpropData" or op.get_input_size() != 2:
            continue
        attrs = op.get_attributes()
        if (attrs["strides"], attrs["pads_begin"], attrs["pads_end"], attrs["dilations"], attrs["output_padding"]) \
                != ([2, 2], [4, 4], [4, 4], [1, 1], [0, 0]):
            continue
        weights = int8_weights(op)
        if weights is None:
            continue
        q, per_channel = weights.q, weights.scale
        if q.ndim != 4 or q.shape[2:] != (6, 6) or per_channel.size not in (1, q.shape[1]):
            continue
        o = q.shape[1]
        new_scale = np.repeat(np.broadcast_to(per_channel.reshape(-1), (o,)), 4).reshape(4 * o, 1, 1, 1)
        kernel = opset13.multiply(opset13.convert(opset13.constant(sub_pixel_weights(q)),
                                                  weights.convert.get_output_element_type(0)),
                                  opset13.constant(new_scale))
        conv = opset13.convolution(op.input(0).get_source_output(), kernel, [1, 1], [0, 0], [0, 0], [1, 1])
        conv.set_friendly_name(f"{op.get_friendly_name()}/sub_pixel")  # profiles name the decoder it computes
        shuffled = opset13.depth_to_space(conv, "depth_first", 2)
        shuffled.set_friendly_name(op.get_friendly_name())
        op.output(0).replace(shuffled.output(0))
        rewritten += 1
    if rewritten:
        model.validate_nodes_and_infer_types()
    return rewritten
