"""TensorRT adapter (NVIDIA GPUs and Jetson): engines built from the fp32 ONNX model.

Engines are built once per (model sha256, precision, tile shape, TensorRT
version) and cached on disk (``$BLUESKY_TOMOGAN_CACHE`` or
``~/.cache/bluesky-tomogan/tensorrt``), because building takes minutes on a
Jetson. The engine has one optimisation profile: batch 1..``max_batch`` at the
fixed tile shape, which the Denoiser's tiler then always uses. int8 engines
need a calibration cache written by ``bluesky-tomogan export --format
tensorrt --trt-precision int8``.

Device memory goes through ``cuda-python`` (``cuda.bindings.runtime``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BackendUnavailableError, ModelLoadError, PrecisionError
from ...modelcard import ModelCard

__all__ = ["TensorRTSession", "engine_cache_path", "cache_dir", "DEFAULT_TILE", "MAX_BATCH"]

log = logging.getLogger(__name__)
DEFAULT_TILE = 512
MAX_BATCH = 4
TRT_PRECISIONS = ("fp32", "fp16", "int8")


def cache_dir() -> Path:
    """Where engines and calibration caches live."""
    root = os.environ.get("BLUESKY_TOMOGAN_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "bluesky-tomogan" / "tensorrt"


def engine_cache_path(model_sha256: str, precision: str, tile: tuple[int, int], trt_version: str) -> Path:
    """Cache file of an engine: one per model, precision, tile shape and TensorRT version."""
    if precision not in TRT_PRECISIONS:
        raise PrecisionError(f"tensorrt builds {', '.join(TRT_PRECISIONS)} engines, not {precision!r}")
    return cache_dir() / f"{model_sha256[:16]}-{precision}-{tile[0]}x{tile[1]}-trt{trt_version}.engine"


def _import_tensorrt() -> tuple[Any, Any]:
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
    except ImportError as exc:
        raise BackendUnavailableError(
            "tensorrt is not installed (JetPack provides it on Jetson; pip install tensorrt on x86 with an NVIDIA GPU)"
        ) from exc
    try:
        from cuda.bindings import runtime as cudart  # type: ignore[import-not-found]
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[import-not-found,no-redef]
        except ImportError as exc:
            raise BackendUnavailableError("cuda-python is not installed: pip install cuda-python") from exc
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count < 1:
        raise BackendUnavailableError("no CUDA device is visible (cudaGetDeviceCount found none)")
    return trt, cudart


def _check(cudart: Any, result: Any) -> Any:
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return rest[0] if len(rest) == 1 else rest


def build_engine(
    onnx_path: str | os.PathLike[str],
    precision: str,
    tile: tuple[int, int],
    in_channels: int = 3,
    calibration: np.ndarray | None = None,
    calibration_cache: Path | None = None,
) -> bytes:
    """Build a serialized engine for a fixed tile shape, batch 1..MAX_BATCH."""
    trt, cudart = _import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelLoadError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 30)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = _make_calibrator(trt, cudart, calibration, calibration_cache)
    profile = builder.create_optimization_profile()
    name = network.get_input(0).name
    h, w = tile
    profile.set_shape(name, (1, in_channels, h, w), (1, in_channels, h, w), (MAX_BATCH, in_channels, h, w))
    config.add_optimization_profile(profile)
    if precision == "int8":
        config.set_calibration_profile(profile)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise ModelLoadError(f"TensorRT failed to build a {precision} engine from {onnx_path}")
    return bytes(blob)


def _make_calibrator(trt: Any, cudart: Any, data: np.ndarray | None, cache: Path | None) -> Any:
    """Entropy calibrator feeding normalised tiles; reuses ``cache`` when it exists."""
    if data is None and (cache is None or not cache.exists()):
        raise PrecisionError("int8 TensorRT engines need calibration data or an existing calibration cache")

    class Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            tiles = [] if data is None else [np.ascontiguousarray(data[i : i + 1]) for i in range(len(data))]
            self.batches = iter(tiles)
            self.device = _check(cudart, cudart.cudaMalloc(int(data[0:1].nbytes))) if data is not None else None

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = next(self.batches, None)
            if batch is None:
                return None
            _check(cudart, cudart.cudaMemcpy(self.device, batch.ctypes.data, batch.nbytes,
                                             cudart.cudaMemcpyKind.cudaMemcpyHostToDevice))
            assert self.device is not None
            return [int(self.device)]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache is not None and cache.exists() else None

        def write_calibration_cache(self, blob: bytes) -> None:
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_bytes(bytes(blob))

    return Calibrator()


class TensorRTSession:
    """Run a cached TensorRT engine at a fixed tile shape."""

    backend = "tensorrt"
    max_batch = MAX_BATCH
    fixed_shape: tuple[int, int] | None

    def __init__(self, onnx_path: str | os.PathLike[str], precision: str, card: ModelCard,
                 tile: int = DEFAULT_TILE) -> None:
        if precision == "auto":
            precision = "fp16"
        if precision not in TRT_PRECISIONS:
            raise PrecisionError(f"tensorrt runs {', '.join(TRT_PRECISIONS)}, not {precision!r}")
        trt, cudart = _import_tensorrt()
        self._cudart = cudart
        self.precision = precision
        self.fixed_shape = (tile, tile)
        sha = card.file("onnx").sha256 or "unknown"
        path = engine_cache_path(sha, precision, self.fixed_shape, trt.__version__)
        if not path.exists():
            calib_cache = path.with_suffix(".calib")
            log.info("building TensorRT %s engine for %s (cached at %s)", precision, card.name, path)
            blob = build_engine(onnx_path, precision, self.fixed_shape, card.in_channels, None, calib_cache)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(blob)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            raise ModelLoadError(f"TensorRT cannot deserialize {path}; delete it to rebuild")
        self._context = self._engine.create_execution_context()
        self._input = self._engine.get_tensor_name(0)
        self._output = self._engine.get_tensor_name(1)
        self._stream = _check(cudart, cudart.cudaStreamCreate())
        c = card.in_channels
        self._in_bytes = MAX_BATCH * c * tile * tile * 4
        self._out_bytes = MAX_BATCH * tile * tile * 4
        self._d_in = _check(cudart, cudart.cudaMalloc(self._in_bytes))
        self._d_out = _check(cudart, cudart.cudaMalloc(self._out_bytes))

    def input_as_seen(self, x: np.ndarray) -> np.ndarray:
        return x  # the input binding is float32; the engine's internal rounding is not modelled

    def run(self, batch: np.ndarray) -> np.ndarray:
        cudart = self._cudart
        batch = np.ascontiguousarray(batch, np.float32)
        n = batch.shape[0]
        out = np.empty((n, 1, *batch.shape[2:]), np.float32)
        self._context.set_input_shape(self._input, batch.shape)
        self._context.set_tensor_address(self._input, int(self._d_in))
        self._context.set_tensor_address(self._output, int(self._d_out))
        kind = cudart.cudaMemcpyKind
        _check(cudart, cudart.cudaMemcpyAsync(self._d_in, batch.ctypes.data, batch.nbytes,
                                              kind.cudaMemcpyHostToDevice, self._stream))
        if not self._context.execute_async_v3(self._stream):
            raise RuntimeError("TensorRT execution failed")
        _check(cudart, cudart.cudaMemcpyAsync(out.ctypes.data, self._d_out, out.nbytes,
                                              kind.cudaMemcpyDeviceToHost, self._stream))
        _check(cudart, cudart.cudaStreamSynchronize(self._stream))
        return out

    def __del__(self) -> None:
        cudart = getattr(self, "_cudart", None)
        if cudart is not None:
            for ptr in (getattr(self, "_d_in", None), getattr(self, "_d_out", None)):
                if ptr is not None:
                    cudart.cudaFree(ptr)
