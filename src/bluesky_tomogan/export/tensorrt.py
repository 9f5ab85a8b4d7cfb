"""Build and cache TensorRT engines from a model card's ONNX file (on the GPU host itself).

TensorRT engines are specific to the GPU and TensorRT version, so they are
built where they run: ``bluesky-tomogan export MODEL --format tensorrt`` on the
Jetson, or lazily on first use by ``load_denoiser(backend="tensorrt")``.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..inference.backends.tensorrt import _import_tensorrt, build_engine, engine_cache_path
from ..inference.load import load_card
from ..inference.registry import REGISTRY

__all__ = ["build_engine_from_card"]


def build_engine_from_card(model: str | os.PathLike[str], precision: str = "fp16", tile: int | None = None,
                           calibration_data: str | os.PathLike[str] | None = None) -> Path:
    """Build (or reuse) the engine of a shipped model or model card; returns its cache path.

    ``tile`` defaults to the registry's TensorRT tile, the shape ``load_denoiser`` looks for.
    """
    trt, _ = _import_tensorrt()
    tile = tile or REGISTRY["tensorrt"].fixed_tile
    assert tile is not None
    card = load_card(model)
    onnx = card.path("onnx")
    path = engine_cache_path(card.file("onnx").sha256, precision, (tile, tile), trt.__version__)
    if path.exists():
        return path
    calib = None
    if precision == "int8" and calibration_data is not None:
        from ..simulate.datasets import read_dataset
        from .pipeline import calibration_frames

        calib = calibration_frames(read_dataset(calibration_data).split("train"), 200, tile, card.in_channels)
    blob = build_engine(onnx, precision, (tile, tile), card.in_channels, calib, path.with_suffix(".calib"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob)
    return path
