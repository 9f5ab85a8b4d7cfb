"""OpenVINO adapter: fp32, bf16 (AMX/AVX-512 BF16) and int8 (VNNI/AMX) on x86 CPUs.

The fastest CPU runtime measured here. fp32 and bf16 compile the fp32 ONNX
model (bf16 through ``INFERENCE_PRECISION_HINT``); int8 loads the NNCF-quantised
IR shipped beside it, whose float parts (the operations between the quantised
convolutions, and any convolution NNCF kept in float) run in bf16 on CPUs with AMX
and in fp32 elsewhere (:func:`int8_float_precision`). Compiled models are cached
per input shape: OpenVINO runs static shapes fastest, and a scan has one or two
frame shapes.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

from ...cpu import cpu_flags as current_cpu_flags
from ...errors import BackendUnavailableError, ModelLoadError, PrecisionError

__all__ = ["OpenVINOSession", "available", "int8_float_precision", "round_to_bf16", "supports_bf16"]


def available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def supports_bf16() -> bool:
    """Whether this CPU has native bf16 (OpenVINO reports it as an optimisation capability)."""
    try:
        import openvino as ov

        caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # no openvino, or no CPU plugin
        return False
    return "BF16" in caps


def int8_float_precision(cpu_flags: Collection[str] | None = None) -> str:
    """Precision of an int8 graph's float parts on this CPU (or one with ``cpu_flags``).

    ``"bf16"`` with AMX bf16 tiles (``amx_bf16``), else ``"f32"``. Measured on a Xeon
    with AMX at 512x512 (All-in-One projection model, 2 threads, ``benchmarks/layer_profile.py
    --precision bf16|f32``, two runs): the int8 IR ran 32.5-38.2 ms with bf16 float parts and
    118.8-121.7 ms with fp32 ones, the same network in bf16 40.2-40.7 ms, because every
    layout change, upsampling and concatenation between the int8 convolutions otherwise
    runs in AVX-512 fp32. Without AMX the fp32 float parts are what the int8 numbers of
    issue 20 were measured with (AMD Zen 5: int8 faster than bf16). The model card's int8
    losses are measured with the precision of the CPU that exported it, named in the card.
    """
    flags = current_cpu_flags() if cpu_flags is None else cpu_flags
    return "bf16" if "amx_bf16" in flags else "f32"


class OpenVINOSession:
    """Run a TomoGAN model with OpenVINO on the CPU.

    Parameters
    ----------
    model_path : path-like
        The fp32 ONNX model (fp32, bf16) or the NNCF int8 IR (int8).
    precision : {"fp32", "bf16", "int8"}
        Arithmetic precision.
    threads : int, optional
        Inference threads.
    """

    backend = "openvino"
    fixed_shape: tuple[int, int] | None = None
    max_batch = 16

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        precision: str = "fp32",
        threads: int | None = None,
    ) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise BackendUnavailableError("openvino is not installed: pip install openvino") from exc
        if precision not in ("fp32", "bf16", "int8"):
            raise PrecisionError(f"openvino backend supports fp32, bf16, int8; not {precision!r}")
        if precision == "bf16" and not supports_bf16():
            raise PrecisionError("this CPU has no native bf16 (needs AVX-512 BF16 or AMX)")
        self._core = ov.Core()
        try:
            self._model = self._core.read_model(str(Path(model_path)))
        except Exception as exc:  # openvino raises RuntimeError subclasses on bad files
            raise ModelLoadError(f"OpenVINO cannot read {model_path}: {exc}") from exc
        self.precision = precision
        #: What the graph's float operations compute in ("f32" or "bf16").
        self.float_precision = {"fp32": "f32", "bf16": "bf16", "int8": int8_float_precision()}[precision]
        self._config: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": self.float_precision,
        }
        if threads:
            self._config["INFERENCE_NUM_THREADS"] = int(threads)
        self._compiled: dict[tuple[int, ...], Any] = {}
        self._lock = threading.Lock()

    def _request(self, shape: tuple[int, ...]) -> Any:
        with self._lock:
            req = self._compiled.get(shape)
            if req is None:
                model = self._model.clone()
                model.reshape({model.inputs[0].any_name: list(shape)})
                compiled = self._core.compile_model(model, "CPU", self._config)
                req = self._compiled[shape] = compiled.create_infer_request()
            return req

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, np.float32)
        req = self._request(batch.shape)
        req.infer({0: batch})
        return np.array(req.get_output_tensor(0).data, copy=True)

    def input_as_seen(self, x: np.ndarray) -> np.ndarray:
        # bf16 rounds the network's input; the int8 IR's input quantiser sits inside the IR
        # and is not modelled (its loss is within tolerance without it)
        return round_to_bf16(x) if self.precision == "bf16" else x


def round_to_bf16(x: np.ndarray) -> np.ndarray:
    """``x`` (float32, finite) rounded to the nearest bfloat16, ties to even, as float32."""
    bits = np.array(x, np.float32).view(np.uint32)  # a copy, rounded in place
    lsb = bits >> np.uint32(16)
    lsb &= np.uint32(1)
    bits += np.uint32(0x7FFF)
    bits += lsb
    bits &= np.uint32(0xFFFF0000)
    return bits.view(np.float32)
