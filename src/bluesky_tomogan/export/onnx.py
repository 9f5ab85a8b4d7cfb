"""PyTorch generator -> ONNX (fp32, dynamic batch, height and width)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from ..errors import ExportOptionError, OutputPathError
from ..model.network import TomoGANGenerator
from .fused_decoder import FusedDecoderGenerator, fuse_decoders

__all__ = ["export_onnx", "fused_form", "ONNX_INPUT", "ONNX_OUTPUT", "ONNX_OPSET"]

log = logging.getLogger(__name__)
ONNX_INPUT = "frames"
ONNX_OUTPUT = "denoised"
ONNX_OPSET = 18


def export_onnx(gen: TomoGANGenerator, path: str | os.PathLike[str], *, fused: bool | None = None) -> Path:
    """Write ``gen`` as ONNX with dynamic N, H, W (H, W multiples of the size multiple).

    Input ``frames`` is ``(N, C, H, W)`` float32 normalised frames; output
    ``denoised`` is ``(N, 1, H, W)``. A network whose decoders pad the upsampled map by
    replication (``upsampled_padding="edge"``) is written in its fused form, each resize and
    the convolution behind it one transposed convolution
    (:func:`~bluesky_tomogan.export.fused_decoder.fuse_decoders`), checked to give
    the same output on a random input first; ``fused=False`` writes it as trained (resize,
    concatenation, convolution: faster in ONNX Runtime), ``fused=True`` requires the fused form.

    Raises
    ------
    ExportOptionError
        ``fused=True`` for a network that has no fused form, or a fused form that does not match.
    OutputPathError
        The file cannot be written.
    """
    path = Path(path)
    gen = gen.eval().float()
    if fused is None:
        fused = gen.config.upsampled_padding == "edge"
    if fused and gen.config.upsampled_padding != "edge":
        raise ExportOptionError("only a network trained with upsampled_padding='edge' has a fused form")
    if isinstance(gen, FusedDecoderGenerator) and not fused:
        raise ExportOptionError("this network is already fused; export the trained network for its resize form")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"cannot create {path.parent}: {exc}") from exc
    if fused and not isinstance(gen, FusedDecoderGenerator):
        gen = fused_form(gen)
    m = gen.config.size_multiple
    example = torch.zeros(1, gen.config.in_channels, 4 * m, 4 * m)
    batch = torch.export.Dim("batch", min=1, max=1024)
    # H and W are multiples of m: export them as m * k so the pooling guards hold.
    kh, kw = torch.export.Dim("kh", min=1, max=4096), torch.export.Dim("kw", min=1, max=4096)
    shapes = {"x": {0: batch, 2: m * kh, 3: m * kw}}
    try:
        program = torch.onnx.export(
            gen, (example,), dynamo=True, dynamic_shapes=shapes, opset_version=ONNX_OPSET,
            input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT], external_data=False,
        )
        assert program is not None
        program.save(str(path))
    except OSError as exc:
        raise OutputPathError(f"cannot write {path}: {exc}") from exc
    log.info("wrote %s", path)
    return path


#: Largest difference between a network and its fused form on the random check input (float
#: rounding: the sums run in another order; measured 1e-6 on the light projection network).
FUSED_TOLERANCE = 1e-4


def fused_form(gen: TomoGANGenerator) -> FusedDecoderGenerator:
    """``gen`` with its decoders fused (:func:`fuse_decoders`), after checking that both
    give the same output on a random input, edges included."""
    fused = fuse_decoders(gen)
    m = gen.config.size_multiple
    x = torch.rand(1, gen.config.in_channels, 6 * m, 5 * m, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = float((gen(x) - fused(x)).abs().max())
    if not diff <= FUSED_TOLERANCE:
        raise ExportOptionError(f"the fused decoders differ from the network by {diff:.3g} (more than "
                                f"{FUSED_TOLERANCE:g}): this network cannot be written in its fused form")
    log.info("decoders fused into transposed convolutions (max difference %.2g on a random input)", diff)
    return fused
