"""Model cards: the JSON that travels with every trained model.

A card records what a model is (architecture, normalisation, domain), how it
was made (data recipe, training settings and time, validation metrics) and the
sha256 of each of its files, so the callback can put provenance into the
derived descriptor and loading can refuse a corrupted file. No torch here.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .errors import ModelLoadError, OutputPathError

__all__ = ["sha256_of", "read_card", "write_card", "card_file_path"]

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
    card["_dir"] = str(path.parent)
    return card


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


def card_file_path(card: dict[str, Any], kind: str) -> Path:
    """Path of the card's file of ``kind`` (e.g. ``"onnx"``), verified against its sha256.

    Raises
    ------
    ModelLoadError
        The card lists no such file, the file is missing, or its bytes changed.
    """
    entry = card.get("files", {}).get(kind)
    if not entry:
        raise ModelLoadError(
            f"model {card.get('name')!r} has no {kind!r} file; available: {sorted(card.get('files', {}))}"
        )
    path = Path(card.get("_dir", ".")) / entry["path"]
    if not path.is_file():
        raise ModelLoadError(f"model file {path} is missing (listed in the model card of {card['name']!r})")
    expected = entry.get("sha256")
    if expected and sha256_of(path) != expected:
        raise ModelLoadError(
            f"model file {path} does not match the sha256 in its model card: the file is corrupt "
            "or was replaced; reinstall bluesky-tomogan or re-export the model"
        )
    return path
