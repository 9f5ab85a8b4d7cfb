"""``load_denoiser``: resolve a model, a backend and a precision into a :class:`Denoiser`.

Backends (the registry): ``cpu`` (OpenVINO, or ONNX Runtime where OpenVINO is
absent), ``openvino``, ``onnxruntime``, ``litert`` (full-int8 TFLite on CPU),
``edgetpu`` (the same model compiled for a Coral Edge TPU) and ``tensorrt``
(NVIDIA GPUs and Jetson). ``auto`` tries them fastest first.

Precision ``auto`` picks the fastest precision whose measured quality loss
(recorded in the model card's ``quantization`` section) is within
:data:`SSIM_TOLERANCE`, on the first backend that can run it.
"""

from __future__ import annotations

import logging
import os
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import (
    BackendUnavailableError,
    PrecisionError,
    UnknownBackendError,
    UnknownModelError,
)
from ..modelcard import card_file_path, read_card
from .backends.base import Session
from .denoiser import Denoiser

__all__ = [
    "load_denoiser",
    "load_card",
    "shipped_models",
    "BACKENDS",
    "PRECISIONS",
    "DEFAULT_MODEL",
    "SSIM_TOLERANCE",
]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "tomogan-projection"
BACKENDS = ("auto", "cpu", "openvino", "onnxruntime", "litert", "edgetpu", "tensorrt")
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
# Largest SSIM drop vs fp32 a reduced precision may cost and still be chosen by "auto".
SSIM_TOLERANCE = {"int8": 0.005, "bf16": 0.001, "fp16": 0.001, "fp32": 0.0}
# Fastest first, as measured on x86 CPUs (docs/benchmarks.md); GPUs and TPUs first when present.
AUTO_ORDER: list[tuple[str, str]] = [
    ("tensorrt", "int8"), ("tensorrt", "fp16"), ("edgetpu", "int8"),
    ("openvino", "int8"), ("openvino", "bf16"), ("litert", "int8"),
    ("openvino", "fp32"), ("onnxruntime", "fp32"),
]


def _weights_dir() -> Path:
    return Path(str(resources.files("bluesky_tomogan") / "weights"))


def shipped_models() -> list[str]:
    """Names of the models installed with the package."""
    return sorted(p.stem for p in _weights_dir().glob("*.json"))


def load_card(model: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Find and read the model card of a shipped model name, a card file or a directory."""
    name = DEFAULT_MODEL if model is None else model
    path = Path(name)
    if path.suffix == ".json" and path.is_file():
        return read_card(path)
    if path.is_dir():
        cards = sorted(path.glob("*.json"))
        if len(cards) != 1:
            raise UnknownModelError(f"{path} must hold exactly one model card (*.json), found {len(cards)}")
        return read_card(cards[0])
    shipped = _weights_dir() / f"{name}.json"
    if shipped.is_file():
        return read_card(shipped)
    raise UnknownModelError(
        f"unknown model {str(name)!r}: not a shipped model ({', '.join(shipped_models()) or 'none installed'}) "
        "nor a model card file or directory"
    )


def _quality_ok(card: dict[str, Any], backend: str, precision: str) -> bool:
    """Whether the card records this backend/precision's SSIM loss within tolerance."""
    if precision == "fp32":
        return True
    # edgetpu runs the litert int8 model bit for bit; tensorrt is measured on its device
    key = f"{'litert' if backend == 'edgetpu' else backend}/{precision}"
    measured = card.get("quantization", {}).get(key, {}).get("ssim_drop")
    if measured is None:
        return False
    return float(measured) <= SSIM_TOLERANCE.get(precision, 0.0)


def _open_session(card: dict[str, Any], backend: str, precision: str, threads: int | None) -> tuple[Session, str]:
    """Build the backend session; returns it and the sha256 of the file it runs."""
    if backend == "onnxruntime":
        from .backends.onnxruntime import OnnxRuntimeSession

        path = card_file_path(card, "onnx")
        if precision != "fp32":
            raise PrecisionError(f"onnxruntime runs fp32 only; {precision} is on openvino or litert")
        return OnnxRuntimeSession(path, precision, threads), _sha(card, "onnx")
    if backend == "openvino":
        from .backends.openvino import OpenVINOSession, available

        if not available():
            raise BackendUnavailableError("openvino is not installed")
        kind = "openvino_int8" if precision == "int8" else "onnx"
        if precision not in ("fp32", "bf16", "int8"):
            raise PrecisionError(f"openvino runs fp32, bf16 or int8, not {precision}")
        return OpenVINOSession(card_file_path(card, kind), precision, threads), _sha(card, kind)
    if backend in ("litert", "edgetpu"):
        from .backends.litert import LiteRTSession

        if precision != "int8":
            raise PrecisionError(f"{backend} runs the full-int8 model only, not {precision}")
        kind = "edgetpu" if backend == "edgetpu" else "tflite_int8"
        if backend == "edgetpu":  # the runtime check first: a missing library is the likelier problem
            from .backends.litert import require_edgetpu_runtime

            require_edgetpu_runtime()
        return LiteRTSession(card_file_path(card, kind), threads, edgetpu=backend == "edgetpu"), _sha(card, kind)
    if backend == "tensorrt":
        try:
            from .backends.tensorrt import TensorRTSession
        except ImportError as exc:
            raise BackendUnavailableError(f"tensorrt backend unavailable: {exc}") from exc

        return TensorRTSession(card_file_path(card, "onnx"), precision, card), _sha(card, "onnx")
    raise UnknownBackendError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")


def _sha(card: dict[str, Any], kind: str) -> str:
    return str(card["files"][kind].get("sha256", ""))


def _cpu_backend() -> str:
    from .backends.openvino import available

    return "openvino" if available() else "onnxruntime"


def load_denoiser(
    model: str | os.PathLike[str] | None = None,
    backend: str = "auto",
    precision: str = "auto",
    *,
    threads: int | None = None,
    tile: int | None = None,
    overlap: int = 32,
) -> Denoiser:
    """Load a TomoGAN model on the best (or the requested) backend.

    Parameters
    ----------
    model : str or path, optional
        Shipped model name (``tomogan-projection`` for detector frames, the
        default; ``tomogan-slice`` for reconstructed slices), a model card
        ``.json``, or a directory holding one.
    backend : str
        One of :data:`BACKENDS`. ``cpu`` means OpenVINO, else ONNX Runtime.
    precision : str
        One of :data:`PRECISIONS`; ``auto`` = fastest within tolerance.
    threads : int, optional
        Runtime threads (default: the runtime's own choice).
    tile, overlap : int
        Tiling for dynamic-shape backends; see :class:`Denoiser`.

    Returns
    -------
    Denoiser
        With ``backend``, ``precision`` and ``model_sha256`` set for provenance.

    Raises
    ------
    UnknownModelError, UnknownBackendError, PrecisionError
        A name that is not known.
    ModelLoadError
        A missing or corrupt model file.
    BackendUnavailableError
        The named backend's runtime or device is absent.
    """
    if backend not in BACKENDS:
        raise UnknownBackendError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise PrecisionError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    card = load_card(model)
    if backend == "cpu":
        backend = _cpu_backend()
    if backend == "auto":
        candidates = [(b, p) for b, p in AUTO_ORDER if precision in ("auto", p)]
    elif precision == "auto":
        candidates = [(b, p) for b, p in AUTO_ORDER if b == backend] or [(backend, "fp32")]
    else:
        candidates = [(backend, precision)]
    errors: list[str] = []
    for b, p in candidates:
        if precision == "auto" and b != "tensorrt" and not _quality_ok(card, b, p):
            errors.append(f"{b}/{p}: SSIM loss vs fp32 not within {SSIM_TOLERANCE[p]} in the model card "
                          f"(pass precision={p!r} to use it anyway)")
            continue
        try:
            session, sha = _open_session(card, b, p, threads)
        except (BackendUnavailableError, PrecisionError) as exc:
            if len(candidates) == 1:
                raise
            errors.append(f"{b}/{p}: {exc}")
            log.debug("skipping %s/%s: %s", b, p, exc)
            continue
        card = dict(card, _sha256=sha)
        log.info("TomoGAN model %s on %s/%s", card["name"], b, p)
        return Denoiser(session, card, tile=tile, overlap=overlap)
    raise BackendUnavailableError(
        "no backend can run this model here:\n  " + "\n  ".join(errors)
    )

