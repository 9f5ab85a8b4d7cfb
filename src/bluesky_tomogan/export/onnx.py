"""PyTorch generator -> ONNX (fp32, dynamic batch, height and width)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from ..errors import OutputPathError
from ..model.network import TomoGANGenerator

__all__ = ["export_onnx", "ONNX_INPUT", "ONNX_OUTPUT", "ONNX_OPSET"]

log = logging.getLogger(__name__)
ONNX_INPUT = "frames"
ONNX_OUTPUT = "denoised"
ONNX_OPSET = 18


def export_onnx(gen: TomoGANGenerator, path: str | os.PathLike[str]) -> Path:
    """Write ``gen`` as ONNX with dynamic N, H, W (H, W multiples of the size multiple).

    Input ``frames`` is ``(N, C, H, W)`` float32 normalised frames; output
    ``denoised`` is ``(N, 1, H, W)``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"cannot create {path.parent}: {exc}") from exc
    gen = gen.eval().float()
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
