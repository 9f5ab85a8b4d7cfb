"""Where models are found by name, and how a model of your own gets a name.

A beamline fine-tunes the shipped model on its own scans (``bluesky-tomogan
finetune``) and then wants the IPython profile, the queue server and the
``serve`` worker to load it by a name, not by the path of a training run.
Names are looked up, in this order:

1. the models installed with the package (``weights/``): their names are reserved,
   so nothing installed later changes what ``load_denoiser()`` loads by default;
2. each directory of ``$BLUESKY_TOMOGAN_MODELS`` (``os.pathsep``-separated), the
   beamline's shared models;
3. the per-user model directory (``~/.local/share/bluesky-tomogan/models`` on Linux,
   from platformdirs), where :func:`install_model` puts models by default;
4. the directories that installed packages announce as ``bluesky_tomogan.models``
   entry points (a facility's package of models).

In every directory a model is either ``<name>.json`` beside its files (the layout
of ``weights/``) or a sub-directory ``<name>/`` holding exactly one model card (the
layout :func:`install_model` and ``export`` write). The first source that has a
name wins; a later model of the same name is passed over with a warning.

:func:`install_model` copies only what a card lists (network files, OpenVINO
weights, the cards of an All-in-One model's ratios), after checking each file
against its sha256, and names the copy's card after the name it is installed
under, so that the derived stream's provenance shows the name the user typed.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from types import ModuleType

import platformdirs

from ..errors import ModelLoadError, OutputPathError, UnknownModelError
from ..modelcard import ModelCard, card_in_directory, read_card, write_card

__all__ = ["ModelEntry", "MODELS_ENV", "ENTRY_POINT_GROUP", "shipped_weights_dir", "user_models_dir",
           "model_directories", "installed_models", "find_model", "install_model", "remove_model", "check_name",
           "check_install"]

log = logging.getLogger(__name__)

#: Environment variable: directories of shared models, searched after the shipped ones (``os.pathsep``-separated).
MODELS_ENV = "BLUESKY_TOMOGAN_MODELS"
#: Entry-point group through which an installed package announces a directory of models.
ENTRY_POINT_GROUP = "bluesky_tomogan.models"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")
_warned: set[str] = set()  # broken entry points and missing directories: said once per process


@dataclass(frozen=True)
class ModelEntry:
    """A model that can be loaded by name.

    Attributes
    ----------
    name : str
        The name to load it by.
    card : pathlib.Path
        Its model card.
    source : str
        Where it was found: ``shipped``, ``$BLUESKY_TOMOGAN_MODELS``, ``user`` or ``entry point <name>``.
    """

    name: str
    card: Path
    source: str


def shipped_weights_dir() -> Path:
    """Directory of the model files installed with the package."""
    return Path(str(resources.files("bluesky_tomogan") / "weights"))


def user_models_dir() -> Path:
    """The per-user model directory, where :func:`install_model` installs by default (need not exist yet)."""
    return platformdirs.user_data_path("bluesky-tomogan") / "models"


def _warn_once(key: str, message: str, *args: object) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message, *args)


def _entry_point_directory(ep: EntryPoint) -> Path | None:
    """The directory an entry point announces (a package, a path, or a ``Traversable``), or None, logged, when
    it cannot be had: a broken package of models costs only its own models."""
    try:
        target = ep.load()
    except Exception as exc:  # any import-time failure of someone else's package
        _warn_once(f"ep:{ep.value}", "cannot load the models of entry point %r (%s): %s: %s",
                   ep.name, ep.value, type(exc).__name__, exc)
        return None
    if isinstance(target, ModuleType):
        target = resources.files(target) if target.__spec__ and target.__spec__.submodule_search_locations \
            else Path(target.__file__ or "").parent
    if isinstance(target, (str, os.PathLike)) or hasattr(target, "joinpath"):
        return Path(str(target))
    _warn_once(f"ep:{ep.value}", "entry point %r (%s) of group %s gives %s, not a directory of models",
               ep.name, ep.value, ENTRY_POINT_GROUP, type(target).__name__)
    return None


def model_directories() -> list[tuple[str, Path]]:
    """The directories searched for models after the shipped ones, in order, as ``(source, directory)``.

    A directory of ``$BLUESKY_TOMOGAN_MODELS`` that does not exist is left out with a warning
    (a mistyped path would otherwise look like a missing model).
    """
    found: list[tuple[str, Path]] = []
    for part in os.environ.get(MODELS_ENV, "").split(os.pathsep):
        if not part.strip():
            continue
        path = Path(part.strip()).expanduser()
        if path.is_dir():
            found.append((f"${MODELS_ENV}", path))
        else:
            _warn_once(f"env:{path}", "%s names %s, which is not a directory", MODELS_ENV, path)
    found.append(("user", user_models_dir()))
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        directory = _entry_point_directory(ep)
        if directory is not None:
            found.append((f"entry point {ep.name}", directory))
    return found


def _sources() -> list[tuple[str, Path]]:
    return [("shipped", shipped_weights_dir()), *model_directories()]


def _card_of(directory: Path, name: str) -> Path | None:
    """The card of model ``name`` in ``directory``: ``<name>.json``, or the one card of ``<name>/``."""
    flat = directory / f"{name}.json"
    if flat.is_file():
        return flat
    nested = directory / name
    if nested.is_dir():
        try:
            return card_in_directory(nested)
        except ModelLoadError:
            return None
    return None


def _models_in(directory: Path) -> Iterator[tuple[str, Path]]:
    if not directory.is_dir():
        return
    for child in sorted(directory.iterdir()):
        if child.name.startswith(".") or not _NAME.fullmatch(child.stem if child.is_file() else child.name):
            continue  # an install under way (".<name>.partial-..."), or no name that find_model would take
        if child.suffix == ".json" and child.is_file():
            yield child.stem, child
        elif child.is_dir() and (card := _card_of(directory, child.name)) is not None:
            yield child.name, card


def installed_models() -> list[ModelEntry]:
    """Every model that can be loaded by name: the shipped ones first, then each source in search order.

    A name already found in an earlier source is passed over, with a warning naming both.
    """
    seen: dict[str, ModelEntry] = {}
    for source, directory in _sources():
        for name, card in _models_in(directory):
            if name in seen:
                _warn_once(f"shadow:{card}", "model %r of %s (%s) is hidden by the %s one (%s)",
                           name, source, card, seen[name].source, seen[name].card)
                continue
            seen[name] = ModelEntry(name, card, source)
    return list(seen.values())


def find_model(name: str) -> ModelEntry | None:
    """The model called ``name`` in the first source that has one, or None."""
    if not _NAME.fullmatch(name):
        return None
    for source, directory in _sources():
        card = _card_of(directory, name)
        if card is not None:
            return ModelEntry(name, card, source)
    return None


def check_name(name: str) -> str:
    """``name`` if a model may be installed under it.

    Raises
    ------
    UnknownModelError
        Not a plain name (letters, digits, ``._+-``, at most 100, no path), or the name of a shipped model.
    """
    if not _NAME.fullmatch(name) or name.endswith(".json"):
        raise UnknownModelError(f"{name!r} cannot name a model: use letters, digits and . _ + - (at most 100, "
                                "starting with a letter or digit, no path)")
    if (shipped_weights_dir() / f"{name}.json").is_file():
        raise UnknownModelError(f"{name!r} is the name of a shipped model; shipped names are reserved, "
                                "so pick another (e.g. '<beamline>-<sample>')")
    return name


def check_install(name: str, *, into: str | os.PathLike[str] | None = None, force: bool = False) -> Path:
    """Where :func:`install_model` would put a model called ``name``, after checking that it may.

    Raises
    ------
    UnknownModelError
        ``name`` cannot be used (:func:`check_name`).
    OutputPathError
        A model of that name is installed there already (without ``force``), or, installing into the
        per-user directory, one in ``$BLUESKY_TOMOGAN_MODELS`` would hide it.
    """
    check_name(name)
    root = Path(into).expanduser() if into is not None else user_models_dir()
    target = root / name
    if target.exists() and not force:
        raise OutputPathError(f"a model {name!r} is installed in {root} already; remove it first "
                              "(bluesky-tomogan models remove) or replace it (--force)")
    existing = find_model(name)
    if into is None and existing is not None and existing.source == f"${MODELS_ENV}":
        raise OutputPathError(f"a model {name!r} in ${MODELS_ENV} ({existing.card}) would hide the one installed "
                              f"in {root}: pick another name")
    return target


def _files_of(card: ModelCard, card_path: Path) -> list[Path]:
    """Every file a model needs, its cards included, each checked against the sha256 its card records."""
    files = [card_path]
    for kind in card.files:
        path = card.path(kind)  # raises ModelLoadError on a missing or changed file
        files.append(path)
        companion = path.with_suffix(".bin")
        if path.suffix == ".xml" and companion.is_file():  # an OpenVINO IR's weights (checked when the card has it)
            files.append(companion)
    for ratio_card in card.ratio_cards().values():
        if ratio_card.directory != card.directory:
            files += _files_of(ratio_card, card_in_directory(ratio_card.directory))
    return files


def install_model(model: str | os.PathLike[str], name: str | None = None, *,
                  into: str | os.PathLike[str] | None = None, force: bool = False) -> ModelEntry:
    """Copy a model under a name into a model directory, so that ``load_denoiser(name)`` finds it.

    Parameters
    ----------
    model : str or path-like
        What ``load_card`` takes: a model directory (the ``--out`` of ``finetune``, ``train`` or
        ``export``), its card, or a model's name.
    name : str, optional
        The name to install it under (default: the name in its card); see :func:`check_name`.
    into : path-like, optional
        The model directory (default :func:`user_models_dir`; a directory of ``$BLUESKY_TOMOGAN_MODELS``
        shares it with the beamline).
    force : bool
        Replace a model already installed there under that name.

    Returns
    -------
    ModelEntry
        The installed model.

    Raises
    ------
    UnknownModelError
        ``model`` is not found, or ``name`` cannot be used.
    ModelLoadError
        A file of the model is missing, does not match its sha256, or lies outside the model's directory.
    OutputPathError
        A model of that name is installed there already (without ``force``), or the directory
        cannot be written.
    """
    from .load import load_card

    card = load_card(model)
    name = name if name is not None else card.name
    target = check_install(name, into=into, force=force)
    root = target.parent
    card_path = _card_path(card)
    files = _files_of(card, card_path)
    copies = [(path, _inside(path, card.directory, card.name)) for path in files[1:]]
    partial = root / f".{name}.partial-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
        for path, relative in copies:
            (partial / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, partial / relative)
        data = read_card(card_path)
        data["installed"] = {"name": name, "from": str(card_path), "card_name": card.name,
                             "at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
        data["name"] = name
        write_card(partial / f"{name}.json", data)
        _replace(partial, target)
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(exc, OutputPathError):
            raise
        raise OutputPathError(f"cannot install model {name!r} into {root}: {exc}") from exc
    log.info("installed model %r (%s, %d files) into %s", name, card_path, len(files), target)
    return ModelEntry(name, target / f"{name}.json", "user" if into is None else str(root))


def _card_path(card: ModelCard) -> Path:
    """The file a card was read from (cards are named after their model)."""
    named = card.directory / f"{card.name}.json"
    return named if named.is_file() else card_in_directory(card.directory)


def _inside(path: Path, directory: Path, model: str) -> Path:
    try:
        return path.resolve().relative_to(directory.resolve())
    except ValueError:
        raise ModelLoadError(f"cannot install model {model!r}: its file {path} lies outside the model's "
                             f"directory {directory}") from None


def _replace(partial: Path, target: Path) -> None:
    """Put the finished copy in place; a model it replaces is moved aside first, so a failure keeps one of them."""
    if not target.exists():
        partial.rename(target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    target.rename(old)
    try:
        partial.rename(target)
    except OSError:
        old.rename(target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def remove_model(name: str, *, into: str | os.PathLike[str] | None = None) -> Path:
    """Remove a model that :func:`install_model` installed under ``name`` (from ``into``, default the user's).

    Returns
    -------
    pathlib.Path
        The directory removed.

    Raises
    ------
    UnknownModelError
        No model of that name was installed there (shipped models and those of packages cannot be removed).
    """
    root = Path(into).expanduser() if into is not None else user_models_dir()
    target = root / name
    if not _NAME.fullmatch(name) or _card_of(root, name) is None or not target.is_dir():
        raise UnknownModelError(f"no model {name!r} is installed in {root}")
    shutil.rmtree(target)
    log.info("removed model %r from %s", name, root)
    return target
