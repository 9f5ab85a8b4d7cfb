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
  output; the real model's loss and the extra cost are in docs/models.md;
* output bias correction (``bias_correction``): the converted model is run on
  calibration tiles, and the mean by which its correction differs from the float
  network's is taken off the output layer's bias before a second conversion. The
  roundings of a deep int8 network need not average to zero; the context-robust
  projection model's correction came out shifted by one to two input steps
  (SSIM loss 0.0039 mean, 0.0221 worst frame; PSNR 3.3 dB below fp32).

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


#: Calibration tiles the output bias correction compares the converted model with the float network on.
BIAS_CORRECTION_TILES = 32


def shift_output_bias(gen: TomoGANGenerator, shift: float) -> TomoGANGenerator:
    """A copy of ``gen`` whose output (every copy of it) is ``shift`` higher."""
    import copy

    import torch
    from torch import nn

    out = copy.deepcopy(gen).eval()
    last = out.head[2]
    assert isinstance(last, (nn.Conv2d, nn.ConvTranspose2d)) and last.bias is not None
    with torch.no_grad():
        last.bias.add_(shift)
    return out


def int8_output_bias(tflite_path: str | os.PathLike[str], gen: TomoGANGenerator, tiles: np.ndarray) -> float:
    """Mean of (the full-int8 model's output - ``gen``'s float output) over ``tiles`` (N, C, H, W).

    The model runs as the backend runs it (:class:`~bluesky_tomogan.inference.backends.litert.LiteRTSession`:
    the input on its int8 grid, the offset output copies averaged into one output); the copies'
    offsets sum to zero, so ``gen``'s copies are averaged over too.
    """
    import torch

    from ..inference.backends.litert import LiteRTSession

    int8 = LiteRTSession(tflite_path, threads=os.cpu_count() or 1).run(tiles)
    with torch.no_grad():
        ys = [gen(torch.from_numpy(np.ascontiguousarray(tiles[k : k + 8], np.float32))).numpy()
              for k in range(0, len(tiles), 8)]
    return float(int8.mean() - np.concatenate(ys).mean())  # equal tiles: the mean of the per-tile means


def export_tflite_int8(
    gen: TomoGANGenerator,
    path: str | os.PathLike[str],
    representative: np.ndarray,
    tile: int = DEFAULT_TILE,
    input_percentiles: tuple[float, float] | None = TFLITE_INPUT_PERCENTILES,
    equalise: bool = True,
    output_copies: int = OUTPUT_COPIES,
    activation_copies: Mapping[str, int] | None = None,
    bias_correction: bool = True,
    info: dict[str, float] | None = None,
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
    bias_correction : bool
        Take the converted model's mean output error on :data:`BIAS_CORRECTION_TILES`
        calibration tiles off the output layer's bias and convert again (see the
        module docstring).
    info : dict, optional
        Filled with what the export measured: ``output_bias_before`` and, with
        ``bias_correction``, ``output_bias_after`` (mean int8 - float output, in the
        network's normalised units).
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

    def samples() -> Iterator[list[np.ndarray]]:
        for x in rep:
            yield [x.transpose(1, 2, 0)[None]]

    def convert(net: TomoGANGenerator) -> bytes:
        # from_keras_model freezes the variables (from_concrete_functions keeps READ_VARIABLE ops)
        conv = tf.lite.TFLiteConverter.from_keras_model(keras_from_torch(net, tile, tile, edgetpu=True, int8_taps=True))
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = samples
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
        return bytes(conv.convert())

    path = Path(path)

    def write(blob: bytes) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(blob)
        except OSError as exc:
            raise OutputPathError(f"cannot write {path}: {exc}") from exc
        log.info("wrote %s (%d kB)", path, len(blob) // 1024)

    write(convert(gen))
    check = rep[np.unique(np.linspace(0, len(rep) - 1, min(BIAS_CORRECTION_TILES, len(rep))).astype(int))]
    bias = int8_output_bias(path, gen, check)
    record = {"output_bias_before": bias}
    if bias_correction:
        # calibrated again on the same tiles: the shift is far below the output's range, which barely moves
        write(convert(shift_output_bias(gen, -bias)))
        record["output_bias_after"] = int8_output_bias(path, gen, check)
        log.info("int8 output bias %.5f -> %.5f (normalised units)", bias, record["output_bias_after"])
    if info is not None:
        info.update(record)
    return path
