"""PyTorch generator -> full-integer int8 TFLite (LiteRT CPU and Edge TPU compiler input).

Everything is int8: weights (per-channel), activations, and the model's input
and output tensors, which is what ``edgetpu_compiler`` requires to map the
whole graph onto the TPU. The shape is fixed (one tile) because the Edge TPU
needs static shapes; the inference layer tiles frames of any size.
Calibration uses real normalised frames (``representative``) so the
activation ranges match what the model sees at the beamline.

The converter sets each tensor's int8 range from the extreme values it sees
in calibration. A few outlier pixels (streaks and edges of reconstructed
slices reach 5x the frame's robust range) would make the input's int8 step
four times coarser for every pixel, so the calibration frames are clipped to
their ``input_percentiles`` first; at inference the int8 input saturates
those rare pixels. Measured on the slice model's validation frames: SSIM loss
vs fp32 0.053 with raw min/max calibration, 0.019 with the inputs clipped.

More changes keep the int8 rounding out of the result, each exact in float
(the copies up to a fraction of one int8 step at ReLU's kink), measured with
the int8 simulation of :mod:`bluesky_tomogan.model.qat` or the real model on
the slice model's validation frames:

* activation equalisation (:mod:`.equalise`): every channel of a tensor gets
  the full int8 range the tensor is quantised over (loss 0.0204 -> 0.0118,
  simulated);
* offset output copies (``output_copies``): the last 1x1 convolution returns
  ``k`` copies of the correction, offset by ``-(k-1)/2k .. +(k-1)/2k`` of the
  output's int8 step, and the host averages them: a ``k`` times finer output
  step for ``k`` bytes per pixel (with the host-side handling of the input's
  rounding, :meth:`~bluesky_tomogan.inference.backends.litert.LiteRTSession.input_as_seen`:
  0.0104 -> 0.0077 for ``k = 4``, simulated);
* offset activation copies (``activation_copies``, :mod:`.copies`): the same
  inside the network, for the full-resolution layers whose rounding reaches the
  output; the real model's loss and the extra cost are in docs/models.md.

The whole network stays on the Edge TPU.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from ..errors import OutputPathError
from ..int8 import (
    ACTIVATION_COPIES,
    OUTPUT_COPIES,
    TFLITE_INPUT_PERCENTILES,
    copy_offsets,
    int8_input_range,
    widened_step,
)
from ..model.network import TomoGANGenerator
from .copies import offset_activation_copies
from .equalise import equalise_activations
from .keras_model import keras_from_torch

__all__ = ["export_tflite_int8", "offset_output_copies", "DEFAULT_TILE"]

log = logging.getLogger(__name__)
DEFAULT_TILE = 256
def offset_output_copies(gen: TomoGANGenerator, frames: np.ndarray, copies: int) -> TomoGANGenerator:
    """A copy of ``gen`` whose output is ``copies`` channels offset around the original output.

    The offsets are fractions of the int8 step that calibration on ``frames``
    will give the output, spread symmetrically around zero, so the mean of
    the copies is the original output and the mean of their int8 roundings
    has a ``copies`` times finer step.
    """
    import copy

    import torch
    from torch import nn

    out = copy.deepcopy(gen).eval()
    if copies == 1:
        return out
    with torch.no_grad():
        ys = [gen(torch.from_numpy(np.ascontiguousarray(frames[k : k + 10], np.float32)))
              for k in range(0, len(frames), 10)]
    lo, hi = min(float(y.min()) for y in ys), max(float(y.max()) for y in ys)
    lo, hi = min(lo, 0.0), max(hi, 0.0)  # int8 ranges hold zero
    offsets = copy_offsets(widened_step(lo, hi, copies), copies)  # the copies widen the range a little
    last = out.head[2]
    assert isinstance(last, (nn.Conv2d, nn.ConvTranspose2d)) and last.out_channels == 1
    wide: nn.Conv2d | nn.ConvTranspose2d
    if isinstance(last, nn.ConvTranspose2d):  # the sub-pixel head of a space-to-depth network
        wide = nn.ConvTranspose2d(last.in_channels, copies, last.kernel_size, stride=last.stride)  # type: ignore[arg-type]
        repeats = (1, copies, 1, 1)  # weights (in, out, kh, kw)
    else:
        wide = nn.Conv2d(last.in_channels, copies, 1)
        repeats = (copies, 1, 1, 1)
    assert wide.bias is not None and last.bias is not None
    with torch.no_grad():
        wide.weight.copy_(last.weight.repeat(*repeats))
        wide.bias.copy_(last.bias.repeat(copies) + offsets)
    out.head[2] = wide
    return out


def export_tflite_int8(
    gen: TomoGANGenerator,
    path: str | os.PathLike[str],
    representative: np.ndarray,
    tile: int = DEFAULT_TILE,
    input_percentiles: tuple[float, float] | None = TFLITE_INPUT_PERCENTILES,
    equalise: bool = True,
    output_copies: int = OUTPUT_COPIES,
    activation_copies: Mapping[str, int] | None = None,
) -> Path:
    """Write a full-int8 TFLite model with a fixed ``(1, tile, tile, C)`` input.

    Parameters
    ----------
    gen : TomoGANGenerator
        Trained generator.
    path : path-like
        Output ``.tflite`` file.
    representative : numpy.ndarray
        ``(N, C, tile, tile)`` normalised inputs for calibration (a few hundred
        tiles from the training distribution).
    tile : int
        Input height and width; a multiple of the network's size multiple.
    input_percentiles : (float, float) or None
        Percentiles of the calibration values that bound the int8 input range
        (see the module docstring); ``None`` calibrates on the raw extremes.
    equalise : bool
        Equalise the channels' activation ranges first (:mod:`.equalise`).
    output_copies : int
        Offset copies of the output (see the module docstring); 1 for a plain
        one-channel output.
    activation_copies : mapping of str to int, optional
        Offset copies of inner layers' outputs (:mod:`.copies`); defaults to
        :data:`ACTIVATION_COPIES`, ``{}`` for none.
    """
    import tensorflow as tf

    m = gen.config.size_multiple
    if tile % m:
        raise ValueError(f"tile {tile} must be a multiple of {m}")
    rep = np.asarray(representative, np.float32)
    if rep.ndim != 4 or rep.shape[1:] != (gen.config.in_channels, tile, tile):
        raise ValueError(
            f"representative data must be (N, {gen.config.in_channels}, {tile}, {tile}), got {rep.shape}"
        )
    if input_percentiles is not None:
        lo, hi = int8_input_range(rep, input_percentiles)
        log.info("int8 input range %.3f..%.3f (calibration extremes %.3f..%.3f)", lo, hi, rep.min(), rep.max())
        rep = np.clip(rep, lo, hi).astype(np.float32)
    if output_copies < 1:
        raise ValueError(f"output_copies must be >= 1, got {output_copies}")
    if equalise:
        gen = equalise_activations(gen, rep)
    gen = offset_activation_copies(gen, rep, ACTIVATION_COPIES if activation_copies is None else activation_copies)
    gen = offset_output_copies(gen, rep, output_copies)
    model = keras_from_torch(gen, tile, tile, edgetpu=True, int8_taps=True)

    def samples() -> Iterator[list[np.ndarray]]:
        for x in rep:
            yield [x.transpose(1, 2, 0)[None]]

    # from_keras_model freezes the variables (from_concrete_functions keeps READ_VARIABLE ops)
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = samples
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    blob = conv.convert()
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
    except OSError as exc:
        raise OutputPathError(f"cannot write {path}: {exc}") from exc
    log.info("wrote %s (%d kB)", path, len(blob) // 1024)
    return path
