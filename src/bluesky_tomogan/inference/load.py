"""``load_denoiser``: resolve a model, a backend and a precision into a :class:`Denoiser`.

Which backends exist, what each runs and from which model-card file is the
registry's business (:mod:`.registry`); this module walks it. ``auto`` tries
the registry's :func:`~.registry.auto_order`, fastest first, and goes past any backend whose
model file, runtime or device is missing here.

Precision ``auto`` picks the fastest precision whose measured quality loss
(recorded in the model card's ``quantization`` section) is within
:data:`~.registry.SSIM_TOLERANCE` on average *and* within
:data:`~.registry.SSIM_TOLERANCE_WORST` on the worst measured frame, on the first
backend that can run it, and not a precision that this CPU runs no faster than the
next one (OpenVINO bf16 where it is measured slower than fp32); each precision it
passes over is logged with the reason.
"""

from __future__ import annotations

import logging
import numbers
import os
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

from ..errors import (
    BackendUnavailableError,
    ModelLoadError,
    PrecisionError,
    UnknownModelError,
)
from ..modelcard import ModelCard, card_in_directory
from .catalogue import find_model, installed_models, shipped_weights_dir
from .denoiser import DEFAULT_OVERLAP, Denoiser
from .registry import (
    ALIASES,
    BUILTIN_BACKENDS,
    PRECISIONS,
    SSIM_TOLERANCE,
    SSIM_TOLERANCE_WORST,
    BackendSpec,
    OpenRequest,
    auto_order,
    resolve_alias,
    spec,
)
from .self_ensemble import check_size

__all__ = ["load_denoiser", "load_card", "shipped_models", "shipped_weights_dir", "BACKENDS", "PRECISIONS",
           "DEFAULT_MODEL", "SSIM_TOLERANCE",
           "SSIM_TOLERANCE_WORST", "loss_beyond_tolerance", "precision_verdict"]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "tomogan-projection"
#: The built-in backends' names (``backend_names()`` adds those that installed packages announce).
BACKENDS = ("auto", *ALIASES, *BUILTIN_BACKENDS)


def shipped_models() -> list[str]:
    """Names of the models installed with the package."""
    return sorted(p.stem for p in shipped_weights_dir().glob("*.json"))


def load_card(model: str | os.PathLike[str] | None = None) -> ModelCard:
    """Find and read the model card of a model's name, a card file or a model directory.

    A name is looked up among the shipped models, then in the model directories of
    :mod:`.catalogue` (``$BLUESKY_TOMOGAN_MODELS``, the per-user directory that
    ``bluesky-tomogan models install`` fills, packages' entry points). A path that exists wins
    over a name.
    """
    name = DEFAULT_MODEL if model is None else model
    if not isinstance(name, (str, os.PathLike)):
        raise TypeError(f"model must be a model's name, a model card or its directory, got {name!r}")
    path = Path(name).expanduser()
    if path.suffix == ".json" and path.is_file():
        return ModelCard.read(path)
    if path.is_dir():
        try:
            return ModelCard.read(card_in_directory(path, UnknownModelError))
        except UnknownModelError:  # a directory of that name that is not a model (a sample's data): the name's model
            entry = find_model(str(name))
            if entry is None:
                raise
            log.info("%s is not a model directory: loading the model called %r (%s)", path, str(name), entry.card)
            return ModelCard.read(entry.card)
    if path.is_file():  # a network file (.onnx, .xml, .tflite, ...): its card says how to run it
        raise UnknownModelError(f"{path} is not a model card: give the model card (the .json that "
                                "`bluesky-tomogan export` writes beside the network files) or its directory")
    entry = find_model(str(name))
    if entry is not None:
        return ModelCard.read(entry.card)
    known = ", ".join(m.name for m in installed_models()) or "none installed"
    if path.suffix == ".json" or len(path.parts) > 1:  # a path, not a name: say which part is missing
        missing = next((p for p in reversed((path, *path.parents)) if not p.exists()), path)
        where = "" if missing == path else f" (there is no {str(missing)!r})"
        raise UnknownModelError(f"model card {str(path)!r} does not exist{where}; models by name: {known}")
    raise UnknownModelError(
        f"unknown model {str(name)!r}: no model of that name ({known}; `bluesky-tomogan models` says where each "
        "is) nor a model card file or directory"
    )


def precision_verdict(card: ModelCard, backend: BackendSpec, precision: str) -> str | None:
    """Why ``precision="auto"`` must not pick ``precision`` on ``backend`` for this model, or ``None``.

    The card must show a measured SSIM loss vs fp32 within :data:`SSIM_TOLERANCE` on
    average and within :data:`SSIM_TOLERANCE_WORST` on the worst frame; an unmeasured
    loss is not trusted. Where this machine's arithmetic differs from that of the machines
    the card was measured on (OpenVINO int8 on an x86 CPU without VNNI), the loss is that of
    its own entry (:meth:`~bluesky_tomogan.inference.registry.BackendSpec.quality_entry`).
    """
    if precision == "fp32" or backend.quality_on_device:
        return None
    key = backend.quality_entry(precision, card)
    mean, worst = card.ssim_drop(key), card.ssim_drop(key, "worst")
    if mean is None or worst is None:
        return f"the model card has no {'' if mean is None else 'worst-frame '}SSIM loss measured for {key}"
    beyond = loss_beyond_tolerance(precision, mean, worst)
    return f"{beyond} (model card, {key})" if beyond is not None else None


def loss_beyond_tolerance(precision: str, mean: float, worst: float) -> str | None:
    """Which of a measured mean and worst-frame SSIM loss vs fp32 is beyond ``auto``'s tolerance
    for ``precision`` (:data:`SSIM_TOLERANCE`, :data:`SSIM_TOLERANCE_WORST`), or ``None``."""
    tol, tol_worst = SSIM_TOLERANCE.get(precision, 0.0), SSIM_TOLERANCE_WORST.get(precision, 0.0)
    if mean > tol:
        return f"mean SSIM loss vs fp32 {mean:.4f} > {tol}"
    if worst > tol_worst:
        return f"worst-frame SSIM loss vs fp32 {worst:.4f} > {tol_worst}"
    return None


def _candidates(backend: str, precision: str) -> list[tuple[str, str]]:
    if backend == "auto":
        return [(b, p) for b, p in auto_order() if precision in ("auto", p)]
    s = spec(backend)
    if precision == "auto":
        return [(b, p) for b, p in auto_order() if b == backend] or [(backend, s.precisions[0])]
    if precision not in s.precisions:
        only = " only" if len(s.precisions) == 1 else ""
        raise PrecisionError(f"{backend} runs {', '.join(s.precisions)}{only}, not {precision}")
    return [(backend, precision)]


def _open(card: ModelCard, s: BackendSpec, precision: str, threads: int | None, tile: int | None,
          overlap: int, asked_for: str | None, self_ensemble: int = 1) -> Denoiser:
    """One candidate: the measured quality, the runtime or device (the likelier thing missing), the card's file.

    ``asked_for`` names what the user asked for that makes this precision run even beyond
    ``auto``'s tolerance (``"precision='int8'"``), and the WARNING says so; ``""`` runs it
    without a word (it is being measured); ``None`` holds it to the tolerance.
    """
    check_quality = asked_for is None
    reason = precision_verdict(card, s, precision)
    if reason is not None and check_quality:
        raise PrecisionError(f"{reason} (pass precision={precision!r} to use it anyway)")
    s.probe()
    slower = s.speed_verdict(precision) if check_quality and s.speed_verdict is not None else None
    if slower is not None:
        raise PrecisionError(f"{slower} (pass precision={precision!r} to use it anyway)")
    kind = s.file_kind(precision, card)
    if not card.has(kind):
        hint = " (compile the int8 .tflite with edgetpu_compiler)" if s.name == "edgetpu" else ""
        raise ModelLoadError(f"model {card.name!r} has no {kind!r} file for {s.name}/{precision}{hint}; "
                             f"it has {sorted(card.files)}")
    file = card.file(kind)
    try:
        path = file.verified(card.name)
    except ModelLoadError as exc:
        plain = s.files[precision]
        if kind == plain or not card.has(plain):
            raise
        # a preferred form is the same function as the plain file, only faster here: a missing or
        # damaged one costs speed, not the backend (the plain file is checked in its turn)
        log.warning("%s; %s/%s runs the card's %r file instead (the same network in another form)",
                    exc, s.name, precision, plain)
        file = card.file(plain)
        path = file.verified(card.name)
    session = s.opener(OpenRequest(path, precision, card, threads, tile))
    if reason is not None and asked_for:
        # run as asked, but never silently below what the card shows `auto` would accept
        variant = s.variant(precision, card)
        where = f" on this CPU ({variant})" if variant else ""
        log.warning("%s/%s%s: %s; using it because %s was asked for", s.name, precision, where, reason, asked_for)
    return Denoiser(session, card, model_sha256=file.sha256, tile=tile, overlap=overlap, self_ensemble=self_ensemble)


def load_unchecked(model: str | os.PathLike[str], backend: str, precision: str, *,
                   float_precision: str | None = None) -> Denoiser:
    """``backend``/``precision`` as they are, within ``auto``'s tolerance or not, without a warning.

    For measuring that tolerance: the SSIM losses of the export and of ``bluesky-tomogan
    quality``. Everything else loads with :func:`load_denoiser`. ``float_precision``
    (``"f32"`` or ``"bf16"``): what an OpenVINO int8 graph's float parts compute in, in place
    of the card's record or, without one, this CPU's choice.
    """
    ((b, p),) = _candidates(resolve_alias(backend), precision)
    card, s = load_card(model), spec(b)
    if float_precision is not None:
        # the session reads the float parts' precision from the entry it would be measured into
        key = s.quality_entry(p, card)
        entry = dict(card.quantization.get(key, {})) | {"float_precision": float_precision}
        card = replace(card, quantization=MappingProxyType(dict(card.quantization) | {key: entry}))
    return _open(card, s, p, None, None, DEFAULT_OVERLAP, asked_for="")


def load_denoiser(
    model: str | os.PathLike[str] | None = None,
    backend: str = "auto",
    precision: str = "auto",
    *,
    ratio: float | None = None,
    threads: int | None = None,
    tile: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    self_ensemble: int = 1,
) -> Denoiser:
    """Load a TomoGAN model on the best (or the requested) backend.

    Parameters
    ----------
    model : str or path, optional
        A model's name (shipped: ``tomogan-projection`` for detector frames, the
        default; ``tomogan-slice`` for reconstructed slices; or installed, see
        :mod:`.catalogue`), a model card ``.json``, or a directory holding one.
    backend : str
        One of :data:`BACKENDS`: ``auto``, ``cpu`` (OpenVINO, else ONNX
        Runtime), or a registry backend, built in or added by an installed package
        (:mod:`.registry`).
    precision : str
        One of :data:`PRECISIONS`; ``auto`` = fastest within tolerance. With a named
        ``backend`` none of whose precisions is within tolerance (LiteRT runs int8 only),
        ``auto`` runs its last precision and logs a WARNING saying so.
    ratio : float, optional
        Pruning ratio (percent of the MACs removed) of an All-in-One model
        (``tomogan-projection-aio``); default: the full network. Each ratio is an
        exported network of its own: ``auto`` goes past a backend that has no file
        for it. :func:`~bluesky_tomogan.inference.ratios.load_ratios` loads them all.
    threads : int, optional
        Runtime threads (default: the runtime's own choice).
    tile, overlap : int
        Tiling (see :class:`Denoiser`); ``tile`` also sets the engine shape of
        fixed-shape backends built at load time (TensorRT, default 512).
    self_ensemble : {1, 2, 4, 8}
        Run the network on that many mirrored and turned copies of each frame and average
        (see :class:`Denoiser`): ``n`` times the time a frame, for scans denoised after the
        fact or a live reconstruction's few slices.

    Returns
    -------
    Denoiser
        With ``backend``, ``precision`` and ``model_sha256`` set for provenance.

    Raises
    ------
    UnknownModelError, UnknownBackendError, PrecisionError
        A name that is not known, or a precision the backend does not run.
    RatioError
        A ratio the model does not have, or any ratio but 0 of a model without ratios.
    ModelLoadError
        A missing or corrupt model file (with ``auto``: on every backend).
    BackendUnavailableError
        The named backend's runtime or device is absent; with ``auto``: no
        backend can run the model here (the message lists why, per backend).
    ValueError
        ``threads`` below 1, or a ``self_ensemble`` not in (1, 2, 4, 8).
    """
    check_size(self_ensemble)
    if threads is not None and not (isinstance(threads, numbers.Integral) and threads >= 1):
        raise ValueError(f"threads must be a number of threads >= 1 (or None: the runtime's choice), got {threads!r}")
    if backend not in BACKENDS:
        spec(backend)  # a backend a package adds, or: unknown, or announced but unusable (each error says which)
    if precision not in PRECISIONS:
        raise PrecisionError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    card = load_card(model)
    if ratio is not None:
        card = card.ratio_card(ratio)
    backend = resolve_alias(backend)
    candidates = _candidates(backend, precision)
    errors: list[str] = []
    corrupt = False
    for b, p in candidates:
        try:
            den = _open(card, spec(b), p, threads, tile, overlap, self_ensemble=self_ensemble,
                        asked_for=None if precision == "auto" else f"precision={precision!r}")
        except PrecisionError as exc:
            if precision != "auto" and len(candidates) == 1:
                raise  # the precision named is one this runtime or CPU cannot run at all: nothing to use anyway
            if backend != "auto" and (b, p) == candidates[-1]:
                # The user named this backend: its last precision is what it runs, within tolerance or not.
                return _open(card, spec(b), p, threads, tile, overlap, asked_for=f"backend={backend!r}",
                             self_ensemble=self_ensemble)
            log.info("precision auto: not %s/%s: %s", b, p, exc)
            errors.append(f"{b}/{p}: {exc}")
            continue
        except (BackendUnavailableError, ModelLoadError) as exc:
            if len(candidates) == 1:
                raise
            if isinstance(exc, ModelLoadError) and card.has(spec(b).file_kind(p, card)):  # a corrupt file: say so
                corrupt = True
                log.warning("skipping %s/%s: %s", b, p, exc)
            else:
                log.debug("skipping %s/%s: %s", b, p, exc)
            errors.append(f"{b}/{p}: {exc}")
            continue
        log.info("TomoGAN model %s on %s/%s", card.name, b, p)
        return den
    error = ModelLoadError if corrupt else BackendUnavailableError
    raise error("no backend can run this model here:\n  " + "\n  ".join(errors))
