"""Model cards: the JSON that travels with every trained model.

A card records what a model is (architecture, normalisation, domain), how it
was made (data recipe, training settings and time, validation metrics) and the
sha256 of each of its files, so the callback can put provenance into the
derived descriptor and loading can refuse a corrupted file. No torch here.

Two views of a card: the JSON dict that training and export build and write
(:func:`read_card`, :func:`write_card`), and the typed, read-only
:class:`ModelCard` that inference uses, whose file paths are checked against
their sha256 when asked for.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .errors import ModelLoadError, OutputPathError, RatioError

__all__ = ["sha256_of", "read_card", "write_card", "card_in_directory", "ModelCard", "CardFile"]

CARD_VERSION = 1


def sha256_of(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_card(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a model card, raising :class:`ModelLoadError` with the reason if it is unusable."""
    path = Path(path)
    try:
        card = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"model card {path} does not exist") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"model card {path} is not readable JSON: {exc}") from exc
    if not isinstance(card, dict) or "name" not in card or "files" not in card:
        raise ModelLoadError(f"model card {path} lacks the 'name' and 'files' entries")
    return card


def card_in_directory(directory: Path, error: type[Exception] = ModelLoadError) -> Path:
    """The one model card (``*.json``) of a model directory; ``error`` (with the count) if it holds none or several,
    or if there is no such directory."""
    if not directory.is_dir():
        raise error(f"model directory {directory} does not exist")
    cards = sorted(directory.glob("*.json"))
    if len(cards) != 1:
        raise error(f"{directory} must hold exactly one model card (*.json), found {len(cards)}")
    return cards[0]


def write_card(path: str | os.PathLike[str], card: dict[str, Any]) -> Path:
    """Write a model card (sorted keys, stable diff), dropping private ``_`` keys."""
    path = Path(path)
    data = {k: v for k, v in card.items() if not k.startswith("_")}
    data.setdefault("card_version", CARD_VERSION)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        raise OutputPathError(f"cannot write model card {path}: {exc}") from exc
    return path


@dataclass(frozen=True)
class CardFile:
    """One file of a model card: where it is, its sha256, and what the card says about it.

    Attributes
    ----------
    kind : str
        Its role (``onnx``, ``openvino_int8``, ``tflite_int8``, ``edgetpu``, ``pytorch``).
    path : pathlib.Path
        Absolute path (the card's directory joined with the card's relative path).
    sha256 : str
        Expected sha256 of the file's bytes (empty when the card records none).
    info : mapping
        The card's whole entry (tile shape, output copies, quantisation details...).
    """

    kind: str
    path: Path
    sha256: str
    info: Mapping[str, Any] = field(default_factory=dict)

    def verified(self, model: str) -> Path:
        """The path, after checking the file (and an OpenVINO ``.bin`` beside it) against the card.

        Raises
        ------
        ModelLoadError
            The file is missing or its bytes changed.
        """
        companions = [(self.path, self.sha256)]
        if self.info.get("bin_sha256"):  # an OpenVINO IR: the weights live in the .bin beside the .xml
            companions.append((self.path.with_suffix(".bin"), str(self.info["bin_sha256"])))
        for path, expected in companions:
            if not path.is_file():
                raise ModelLoadError(f"model file {path} is missing (listed in the model card of {model!r})")
            if expected and sha256_of(path) != expected:
                raise ModelLoadError(
                    f"model file {path} does not match the sha256 in its model card: the file is corrupt "
                    "or was replaced; reinstall bluesky-tomogan or re-export the model"
                )
        return self.path


@dataclass(frozen=True)
class ModelCard:
    """A model card as inference reads it: typed, read-only, with checksum-verified file paths.

    Attributes
    ----------
    name, domain : str
        Model name and the images it was trained on (``projection`` or ``slice``).
    architecture : mapping
        Network hyper-parameters (``in_channels``, ``input_downscale``, ...).
    output : str
        ``correction`` (the network returns a correction added to the centre
        frame on the host) or ``frame``.
    files : mapping of str to CardFile
        The model's files by kind.
    quantization : mapping
        Measured quality per ``backend/precision`` (``ssim_drop`` vs fp32...).
    metrics : mapping
        Validation metrics of the fp32 model.
    directory : pathlib.Path
        Where the card lives; file paths are relative to it.
    source : mapping
        The whole JSON, for tools that read other sections (training, data recipe).
    """

    name: str
    domain: str
    architecture: Mapping[str, Any]
    output: str
    files: Mapping[str, CardFile]
    quantization: Mapping[str, Mapping[str, Any]]
    metrics: Mapping[str, Any]
    directory: Path
    source: Mapping[str, Any]

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> ModelCard:
        """Read the card at ``path``, raising :class:`ModelLoadError` with the reason if it is unusable."""
        path = Path(path).expanduser().resolve()
        card = read_card(path)
        files = card["files"]
        if not isinstance(files, dict) or not all(isinstance(e, dict) and "path" in e for e in files.values()):
            raise ModelLoadError(f"model card {path}: every entry of 'files' needs a 'path'")
        return cls(
            name=str(card["name"]),
            domain=str(card.get("domain", "")),
            architecture=MappingProxyType(dict(card.get("architecture", {}))),
            output=str(card.get("output", "frame")),
            files=MappingProxyType({k: CardFile(k, path.parent / e["path"], str(e.get("sha256", "")),
                                                MappingProxyType(dict(e))) for k, e in files.items()}),
            quantization=MappingProxyType(dict(card.get("quantization", {}))),
            metrics=MappingProxyType(dict(card.get("metrics", {}))),
            directory=path.parent,
            source=MappingProxyType(card),
        )

    @property
    def in_channels(self) -> int:
        """Frames of context the network reads (3 for the paper's TomoGAN, 5 for the shipped projection models)."""
        return int(self.architecture.get("in_channels", 3))

    def has(self, kind: str) -> bool:
        """Whether the card lists a file of ``kind``."""
        return kind in self.files

    def file(self, kind: str) -> CardFile:
        """The card's file of ``kind``.

        Raises
        ------
        ModelLoadError
            The card lists no such file.
        """
        if kind not in self.files:
            raise ModelLoadError(f"model {self.name!r} has no {kind!r} file; available: {sorted(self.files)}")
        return self.files[kind]

    def path(self, kind: str) -> Path:
        """Path of the card's file of ``kind``, verified against its sha256 (see :meth:`CardFile.verified`)."""
        return self.file(kind).verified(self.name)

    @property
    def trained_wider_than_view(self) -> bool:
        """Whether the training data held samples wider than the field of view (a simulated recipe with
        ``beyond_view``, :class:`~bluesky_tomogan.simulate.datasets.Recipe`, or one merged into it)."""

        def held(recipe: Any) -> bool:
            if not isinstance(recipe, Mapping):
                return False
            return float(recipe.get("beyond_view", 0) or 0) > 0 or any(held(r) for r in recipe.get("merged", ()))

        return held(self.source.get("data", {}).get("recipe"))

    @property
    def ratio(self) -> float:
        """Pruning ratio of this network: percent of the full network's MACs removed (0 = unpruned)."""
        return float(self.source.get("pruning", {}).get("ratio", 0.0))

    @property
    def ratios(self) -> Mapping[str, Mapping[str, Any]]:
        """An All-in-One model's pruning ratios (:func:`~bluesky_tomogan.model.allinone.ratio_key`) -> entry.

        Each entry names the ratio's own model directory (``model``, relative to this card; ``"."``
        is this card) and what the export measured (``mac_fraction``, ``ssim_drop_vs_full``...).
        Empty for a model trained without ratios.
        """
        ratios = self.source.get("ratios", {})
        return MappingProxyType(dict(ratios)) if isinstance(ratios, dict) else MappingProxyType({})

    def ratio_cards(self) -> dict[float, ModelCard]:
        """The card of every pruning ratio, lightest last (ratio 0 is this card); ``{0.0: self}``
        for a model trained without ratios."""
        if not self.ratios:
            return {0.0: self}
        return {float(k): self.ratio_card(float(k)) for k in sorted(self.ratios, key=float)}

    def ratio_card(self, ratio: float) -> ModelCard:
        """The model card of pruning ratio ``ratio`` (percent) of this All-in-One model.

        Ratio 0 of a model without ratios is the model itself.

        Raises
        ------
        RatioError
            The model has no ratios, or not this one.
        ModelLoadError
            The ratio's card is missing or unreadable.
        """
        key = f"{float(ratio):g}"
        if not self.ratios:
            if float(ratio) == 0:
                return self
            raise RatioError(f"model {self.name!r} has no pruning ratios (it was not trained All-in-One, "
                             f"bluesky-tomogan train --ratios); ask for ratio 0 or none")
        if key not in self.ratios:
            raise RatioError(f"model {self.name!r} has no pruning ratio {key}; it has "
                             f"{', '.join(sorted(self.ratios, key=float))}")
        where = self.directory / str(self.ratios[key].get("model", "."))
        if where.resolve() == self.directory.resolve():
            return self
        return ModelCard.read(card_in_directory(where))  # "<name>.ratios/r<k>" names the ratio in the error

    def ssim_drop(self, key: str, which: str = "mean") -> float | None:
        """Measured SSIM loss vs fp32 of ``backend/precision`` ``key``, or ``None`` if not measured.

        ``which="mean"``: the mean over the measured frames; ``"worst"``: the loss on the
        frame that lost most (cards written before version 0.4 do not have it).
        """
        field = {"mean": "ssim_drop", "worst": "ssim_drop_worst"}[which]
        value = self.quantization.get(key, {}).get(field)
        return None if value is None else float(value)
