"""ONNX Runtime adapter (fp32): the portable CPU fallback."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...errors import BackendUnavailableError, ModelLoadError

__all__ = ["OnnxRuntimeSession", "available"]


def available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class OnnxRuntimeSession:
    """Run the fp32 ONNX model with ONNX Runtime's CPU provider."""

    backend = "onnxruntime"
    fixed_shape: tuple[int, int] | None = None
    max_batch = 16

    def __init__(self, onnx_path: str | os.PathLike[str], precision: str = "fp32", threads: int | None = None) -> None:
        if precision != "fp32":
            raise BackendUnavailableError(f"onnxruntime backend runs fp32 only, not {precision}")
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailableError("onnxruntime is not installed: pip install onnxruntime") from exc
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session = ort.InferenceSession(str(Path(onnx_path)), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors on bad files
            raise ModelLoadError(f"ONNX Runtime cannot load {onnx_path}: {exc}") from exc
        self._input = self._session.get_inputs()[0].name
        self.precision = precision

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: np.ascontiguousarray(batch, np.float32)})[0]

    def input_as_seen(self, x: np.ndarray) -> np.ndarray:
        return x  # fp32: exact
