"""The backend registry: what each inference backend runs, which model file it needs, how to probe and open it.

One :class:`BackendSpec` per backend. ``load_denoiser`` and its ``auto``
choice, the export pipeline's quality measurement, ``bluesky-tomogan bench``
and the CLI's choices all read this table, so which backend runs which
precision from which file is decided here and nowhere else.

``AUTO_ORDER`` lists (backend, precision) pairs fastest first, as measured on
x86 CPUs (docs/benchmarks.md), with GPUs and TPUs first when present.

An installed package adds a backend (an accelerator this package does not know) by
announcing a :class:`BackendSpec`, or a callable that returns one, as an entry point of
the group ``bluesky_tomogan.backends`` named after the backend. It is found at the first
use of the registry; ``auto`` tries its precisions just before the built-in backend its
``auto_before`` names (:func:`auto_order`). A package that fails to load costs only its
own backend, which then says why when asked for.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..errors import BackendUnavailableError, UnknownBackendError
from ..modelcard import ModelCard
from .backends.base import Session
from .backends.tensorrt import DEFAULT_TILE as TENSORRT_TILE  # numpy only at import; tensorrt loads on use

__all__ = ["BackendSpec", "OpenRequest", "REGISTRY", "AUTO_ORDER", "ALIASES", "PRECISIONS", "SSIM_TOLERANCE",
           "SSIM_TOLERANCE_WORST", "ENTRY_POINT_GROUP", "BUILTIN_BACKENDS",
           "backend_names", "configurations", "spec", "resolve_alias", "auto_order"]

log = logging.getLogger(__name__)

#: Entry-point group through which an installed package adds a backend (a ``BackendSpec``, or a callable giving one).
ENTRY_POINT_GROUP = "bluesky_tomogan.backends"

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
#: Largest mean SSIM drop vs fp32 a reduced precision may cost and still be chosen by ``precision="auto"``.
SSIM_TOLERANCE: Mapping[str, float] = MappingProxyType({"int8": 0.005, "bf16": 0.001, "fp16": 0.001, "fp32": 0.0})
#: Largest SSIM drop on the worst measured frame, the second condition of ``precision="auto"``.
SSIM_TOLERANCE_WORST: Mapping[str, float] = MappingProxyType(
    {"int8": 0.01, "bf16": 0.003, "fp16": 0.003, "fp32": 0.0})


@dataclass(frozen=True)
class OpenRequest:
    """What an opener gets: the verified model file, the precision, and the caller's options."""

    path: Path
    precision: str
    card: ModelCard
    threads: int | None
    tile: int | None


@dataclass(frozen=True)
class BackendSpec:
    """One inference backend.

    Attributes
    ----------
    name : str
        Registry name (``openvino``, ``onnxruntime``, ``litert``, ``edgetpu``, ``tensorrt``).
    files : mapping of str to str
        Precision -> the model-card file kind it runs; its keys are the precisions it supports.
    quality_key : str
        The ``backend`` part of the card's ``quantization`` key holding its measured loss
        (the Edge TPU runs the LiteRT int8 model bit for bit, so it shares ``litert``).
    probe : callable
        Raises :class:`BackendUnavailableError` when the runtime or device is absent (cheap).
    opener : callable
        ``opener(OpenRequest) -> Session``.
    measured_by_export : bool
        The export measures its quality on this machine's CPU and records it in the card.
    quality_on_device : bool
        Its quality can only be measured on its own device (TensorRT): ``auto`` trusts it
        without a card entry.
    fixed_tile : int or None
        Tile edge of fixed-shape engines built at load time (TensorRT), unless ``tile`` is given.
    speed_verdict : callable or None
        ``speed_verdict(precision)``: why ``auto`` should pass over this precision on this
        machine because it is not faster than the next one (OpenVINO bf16 without fast bf16
        kernels), or ``None``; called once the runtime is known to be present.
    preferred_files : mapping of str to str
        Precision -> a file kind run instead of ``files[precision]`` where the card lists
        one: the same function in the form this runtime runs fastest (ONNX Runtime reads
        ``onnx_resize``, the decoders as trained, where the ``onnx`` file has them fused).
    numerics : callable or None
        ``numerics(precision, card)``: the name of this machine's arithmetic at ``precision`` for
        the model of ``card`` (``None``: any model) where it differs from that of the machines
        the cards were measured on, or ``None`` (OpenVINO int8 on an x86 CPU without VNNI:
        ``"no-vnni"``, unless the model's IR has 7-bit weights throughout). Its losses are the
        card's own ``quantization`` entry (:meth:`quality_entry`).
    auto_before : str or None
        For a backend an installed package adds: the built-in backend whose precisions ``auto``
        tries just after this one's (``"openvino"``: before the CPU's). ``None``: tried only when
        asked for by name.
    """

    name: str
    files: Mapping[str, str]
    quality_key: str
    probe: Callable[[], None]
    opener: Callable[[OpenRequest], Session]
    measured_by_export: bool = False
    quality_on_device: bool = False
    fixed_tile: int | None = None
    speed_verdict: Callable[[str], str | None] | None = None
    preferred_files: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    numerics: Callable[[str, ModelCard | None], str | None] | None = None
    auto_before: str | None = None

    @property
    def precisions(self) -> tuple[str, ...]:
        return tuple(self.files)

    def quality_entry(self, precision: str, card: ModelCard | None = None) -> str:
        """The card's ``quantization`` key of this backend's loss at ``precision`` on this machine:
        ``openvino/int8``, or ``openvino/int8@no-vnni`` where :attr:`numerics` names a variant
        (for the model of ``card``; ``None``: a model without a 7-bit IR)."""
        variant = self.variant(precision, card)
        return f"{self.quality_key}/{precision}" + (f"@{variant}" if variant else "")

    def variant(self, precision: str, card: ModelCard | None = None) -> str | None:
        """:attr:`numerics` of ``precision`` for the model of ``card``: ``None`` where it is the cards' own."""
        return self.numerics(precision, card) if self.numerics is not None else None

    def file_kind(self, precision: str, card: ModelCard | None = None) -> str:
        """The card's file kind this backend runs at ``precision``: the preferred form where ``card`` lists it."""
        preferred = self.preferred_files.get(precision)
        if card is not None and preferred is not None and card.has(preferred):
            return preferred
        return self.files[precision]


# -- probes and openers (each imports its runtime only when called) ------------------------------


def _probe_openvino() -> None:
    from .backends.openvino import available

    if not available():
        raise BackendUnavailableError("openvino is not installed: pip install openvino")


def _probe_onnxruntime() -> None:
    from .backends.onnxruntime import available

    if not available():
        raise BackendUnavailableError("onnxruntime is not installed: pip install onnxruntime")


def _probe_litert() -> None:
    from .backends.litert import interpreter_module

    interpreter_module()


def _probe_edgetpu() -> None:
    from .backends.litert import require_edgetpu_runtime

    _probe_litert()
    require_edgetpu_runtime()


def _probe_tensorrt() -> None:
    from .backends.tensorrt import _import_tensorrt

    _import_tensorrt()


def _open_openvino(r: OpenRequest) -> Session:
    from .backends.openvino import OpenVINOSession

    # raw projections hold isolated spikes (zingers); slices' out-of-range pixels are streaks
    quantization = _int8_quantization(r.card) if r.precision == "int8" else {}
    input_range = quantization.get("input_range")  # the int8 calibration's, for an IR whose input is not quantised
    # the card's loss holds for the float parts it was measured with
    measured = r.card.quantization.get(REGISTRY["openvino"].quality_entry(r.precision, r.card), {})
    return OpenVINOSession(r.path, r.precision, r.threads, isolated_spikes=r.card.domain == "projection",
                           input_range=tuple(input_range) if input_range else None,
                           full_range_weights=quantization.get("overflow_fix") == "disable",
                           float_precision=measured.get("float_precision") if r.precision == "int8" else None)


def _open_onnxruntime(r: OpenRequest) -> Session:
    from .backends.onnxruntime import OnnxRuntimeSession

    return OnnxRuntimeSession(r.path, r.precision, r.threads)


def _open_litert(r: OpenRequest, edgetpu: bool = False) -> Session:
    from .backends.litert import LiteRTSession

    # raw projections hold isolated spikes (zingers); slices' out-of-range pixels are streaks
    return LiteRTSession(r.path, r.threads, edgetpu=edgetpu, isolated_spikes=r.card.domain == "projection")


def _open_edgetpu(r: OpenRequest) -> Session:
    return _open_litert(r, edgetpu=True)


def _open_tensorrt(r: OpenRequest) -> Session:
    from .backends.tensorrt import TensorRTSession

    tile = r.tile or REGISTRY["tensorrt"].fixed_tile
    assert tile is not None
    return TensorRTSession(r.path, r.precision, r.card, tile=tile)


def _openvino_speed(precision: str) -> str | None:
    from .backends.openvino import bf16_verdict

    return bf16_verdict(precision)


def _openvino_numerics(precision: str, card: ModelCard | None) -> str | None:
    from .backends.openvino import int8_numerics

    if precision != "int8" or (card is not None and _seven_bit_weights(card)):
        return None  # no 16-bit pair sum of 7-bit weights saturates: the same int8 on every x86 CPU
    return int8_numerics()


def _int8_quantization(card: ModelCard) -> Mapping[str, Any]:
    """The record of how the card's OpenVINO int8 IR was made (empty: none)."""
    return card.files["openvino_int8"].info.get("quantization", {}) if card.has("openvino_int8") else {}


def _seven_bit_weights(card: ModelCard) -> bool:
    """The IR's weights are 7-bit in every layer (NNCF's overflow fix, trained so: ``export --qat-weight-bits 7``)."""
    return _int8_quantization(card).get("overflow_fix") == "enable"


_BUILTIN: Mapping[str, BackendSpec] = MappingProxyType({s.name: s for s in (
    BackendSpec("tensorrt", {"int8": "onnx", "fp16": "onnx", "fp32": "onnx"}, "tensorrt", _probe_tensorrt,
                _open_tensorrt, quality_on_device=True, fixed_tile=TENSORRT_TILE),
    BackendSpec("edgetpu", {"int8": "edgetpu"}, "litert", _probe_edgetpu, _open_edgetpu),
    BackendSpec("openvino", {"int8": "openvino_int8", "bf16": "onnx", "fp32": "onnx"}, "openvino",
                _probe_openvino, _open_openvino, measured_by_export=True, speed_verdict=_openvino_speed,
                numerics=_openvino_numerics),
    BackendSpec("litert", {"int8": "tflite_int8"}, "litert", _probe_litert, _open_litert, measured_by_export=True),
    # ONNX Runtime's fp32 transposed convolution is slower than its resize and concatenation: the
    # light projection model through the Denoiser at 1024x1024, AMD EPYC Zen 5, 428 ms as trained
    # against 503 ms fused, interleaved (docs/backends.md); OpenVINO and TensorRT read the fused form
    BackendSpec("onnxruntime", {"fp32": "onnx"}, "onnxruntime", _probe_onnxruntime, _open_onnxruntime,
                preferred_files=MappingProxyType({"fp32": "onnx_resize"})),
)})

#: The built-in backends' (backend, precision) pairs, fastest first; ``auto`` takes the first of
#: :func:`auto_order` (these, with those of backends that packages add) that this machine, this model card
#: and the tolerance allow.
#: OpenVINO int8 is ahead of bf16 on every CPU measured once its float parts run in bf16
#: where bf16 is fast (:func:`~.backends.openvino.int8_float_precision`): Xeon with AMX, 1024x1024,
#: int8 179-267 ms against bf16 188-321 ms for the shipped models (2 threads, loaded CPU);
#: AMD Zen 5 int8 194 ms, bf16 237 ms (issue 20); AMD EPYC Zen 4, full projection model, int8
#: 360 ms against bf16 481 ms (docs/benchmarks.md, session 19).
# LiteRT int8 comes after OpenVINO fp32: on an x86 CPU the full-int8 form (the Edge TPU's input,
# fixed 256-pixel tiles) is no faster (slice model, Intel Xeon with AMX, 2 threads: 309 vs 210 ms
# per 512x512 frame, 852 vs 931 ms at 1024x1024) and costs quality. It stays ahead of ONNX Runtime
# fp32, which is what a host without OpenVINO (an ARM board) would otherwise run.
AUTO_ORDER: tuple[tuple[str, str], ...] = (
    ("tensorrt", "int8"), ("tensorrt", "fp16"), ("edgetpu", "int8"),
    ("openvino", "int8"), ("openvino", "bf16"), ("openvino", "fp32"),
    ("litert", "int8"), ("onnxruntime", "fp32"),
)


#: The names of the built-in backends (:data:`REGISTRY` adds those that installed packages announce).
BUILTIN_BACKENDS: tuple[str, ...] = tuple(_BUILTIN)

#: Why each backend that a package announces could not be had (its name -> the reason).
_unloadable: dict[str, str] = {}


@functools.cache
def _plugins() -> Mapping[str, BackendSpec]:
    """The backends installed packages announce (``bluesky_tomogan.backends`` entry points), loaded once."""
    found: dict[str, BackendSpec] = {}
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if ep.name in _BUILTIN or ep.name in ALIASES or ep.name == "auto" or ep.name in found:
            log.warning("entry point %r (%s) of group %s names a backend that exists already; not used",
                        ep.name, ep.value, ENTRY_POINT_GROUP)
            continue
        try:
            target = ep.load()
            made = target() if callable(target) and not isinstance(target, BackendSpec) else target
        except Exception as exc:  # any failure of someone else's package: its backend only
            _unloadable[ep.name] = f"its package failed to load ({ep.value}): {type(exc).__name__}: {exc}"
        else:
            if not isinstance(made, BackendSpec) or made.name != ep.name:
                _unloadable[ep.name] = (f"{ep.value} gives {type(made).__name__} "
                                        f"{getattr(made, 'name', '')!r}, not a BackendSpec named {ep.name!r}")
            elif made.auto_before is not None and made.auto_before not in _BUILTIN:
                _unloadable[ep.name] = (f"its auto_before {made.auto_before!r} is not a built-in backend "
                                        f"({', '.join(_BUILTIN)})")
            else:
                found[ep.name] = made
                continue
        log.warning("backend %r cannot be used: %s", ep.name, _unloadable[ep.name])
    return MappingProxyType(found)


class _Registry(Mapping[str, BackendSpec]):
    """The built-in backends, then those that installed packages add (found at the first use)."""

    def __getitem__(self, name: str) -> BackendSpec:
        if name in _BUILTIN:
            return _BUILTIN[name]
        return _plugins()[name]

    def __iter__(self) -> Iterator[str]:
        yield from _BUILTIN
        yield from _plugins()

    def __len__(self) -> int:
        return len(_BUILTIN) + len(_plugins())

    def __repr__(self) -> str:
        return f"<backend registry: {', '.join(self)}>"


#: Every backend by name: the built-in ones and those installed packages add.
REGISTRY: Mapping[str, BackendSpec] = _Registry()


def auto_order() -> tuple[tuple[str, str], ...]:
    """:data:`AUTO_ORDER` with the precisions of the backends packages add, each group just before the first
    entry of the built-in backend its ``auto_before`` names."""
    order = list(AUTO_ORDER)
    for added in _plugins().values():
        if added.auto_before is not None:
            at = next(i for i, (b, _) in enumerate(order) if b == added.auto_before)
            order[at:at] = [(added.name, p) for p in added.precisions]
    return tuple(order)


def _cpu() -> str:
    try:
        _probe_openvino()
    except BackendUnavailableError:
        return "onnxruntime"
    return "openvino"


#: Names that stand for a registry backend chosen on this machine.
ALIASES: Mapping[str, Callable[[], str]] = MappingProxyType({"cpu": _cpu})


def backend_names() -> tuple[str, ...]:
    """Every name ``load_denoiser(backend=...)`` accepts."""
    return ("auto", *ALIASES, *REGISTRY)


def resolve_alias(name: str) -> str:
    """``cpu`` -> ``openvino`` (or ``onnxruntime`` where OpenVINO is absent); other names unchanged."""
    return ALIASES[name]() if name in ALIASES else name


def spec(name: str) -> BackendSpec:
    """The spec of backend ``name``.

    Raises
    ------
    UnknownBackendError
        ``name`` is not a registry backend.
    """
    try:
        return REGISTRY[name]
    except KeyError:
        if name in _unloadable:
            raise BackendUnavailableError(f"backend {name!r}, which an installed package announces, cannot be "
                                          f"used: {_unloadable[name]}") from None
        raise UnknownBackendError(f"unknown backend {name!r}; choose from {', '.join(backend_names())}") from None


def configurations() -> list[tuple[str, str]]:
    """Every (backend, precision) pair the registry knows, in :func:`auto_order` first, then the rest."""
    order = auto_order()
    rest = [(s.name, p) for s in REGISTRY.values() for p in s.precisions if (s.name, p) not in order]
    return [*order, *rest]

