"""Weight averaging: one model between two fine-tunings of the same network (a "model soup").

A network fine-tuned on new data (samples wider than the field of view, a user's own scan) gains there and
can lose a little where the network it started from was good. Averaging the two sets of weights, parameter by
parameter, often keeps most of both: fine-tuning from trained weights stays in the same basin of the loss, so
the straight line between them runs through good networks (WiSE-FT: Wortsman et al. 2022, "Robust fine-tuning
of zero-shot models"; Wortsman et al. 2022, "Model soups"). Nothing is trained; the averaged weights are
measured and exported like any other (``bluesky-tomogan export``).

Only networks of one architecture average (the same tensors, the same shapes, the same All-in-One channel
plan, if any), of one domain and one input normalisation; anything else is a :class:`ModelLoadError` before
anything is written.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelLoadError, OutputPathError
from ..modelcard import ModelCard, sha256_of, write_card

__all__ = ["average_models", "CARD_SECTIONS_DROPPED"]

log = logging.getLogger(__name__)

#: Sections of the second model's card that describe its own files or measurements, not the average's: they
#: are left out of the average's card (``bluesky-tomogan export`` and ``quality`` write them anew).
CARD_SECTIONS_DROPPED = ("files", "metrics", "quantization", "quantization_measured_on", "ratios", "training")

#: Card sections that decide how frames reach the network and come back: the two models must agree on them.
_INFERENCE_SECTIONS = ("domain", "normalisation", "output", "input_despike")


def average_models(first: str | Path, second: str | Path, out_dir: str | Path, weight: float = 0.5,
                   name: str | None = None) -> Path:
    """Write the weights ``(1 - weight) * first + weight * second`` and their model card.

    Parameters
    ----------
    first, second : str or path
        Models whose weights are averaged: a shipped or installed model's name, a model directory or a card
        (what :func:`~bluesky_tomogan.inference.load.load_card` takes), each with PyTorch weights. Typically
        ``first`` is the model a fine-tuning started from and ``second`` the fine-tuned one.
    out_dir : str or path
        Directory written: ``<name>.pt`` and ``<name>.json``, ready for ``bluesky-tomogan export``.
    weight : float
        The second model's share, in [0, 1]: 0 gives the first model's weights, 1 the second's.
    name : str, optional
        The new model's name (default: the second model's name with ``-avg`` added).

    Returns
    -------
    Path
        The card written.

    Raises
    ------
    ModelLoadError
        A model has no readable PyTorch weights, or the two differ in architecture, tensors, All-in-One
        channel plan, domain or input normalisation.
    ValueError
        ``weight`` is not a number in [0, 1].
    OutputPathError
        ``out_dir`` cannot be written.
    """
    from ..inference.load import load_card

    if not (isinstance(weight, (int, float)) and math.isfinite(weight) and 0.0 <= weight <= 1.0):
        raise ValueError(f"weight is the second model's share, a number in [0, 1]; got {weight!r}")
    cards = [load_card(first), load_card(second)]
    states = [_weights(card) for card in cards]
    _check_compatible(cards, states)
    averaged = {key: _mix(states[0]["generator"][key], states[1]["generator"][key], weight)
                for key in states[0]["generator"]}
    name = name or f"{cards[1].name}-avg"
    out = Path(out_dir).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
        weights_path = out / f"{name}.pt"
        torch.save({key: value for key, value in states[1].items() if key != "generator"} | {"generator": averaged},
                   weights_path)
    except OSError as exc:
        raise OutputPathError(f"cannot write the averaged model to {out}: {exc}") from exc
    card = _card(cards, weight, name, weights_path)
    path = write_card(out / f"{name}.json", card)
    log.info("wrote %s: %.2f x %s + %.2f x %s", path, 1.0 - weight, cards[0].name, weight, cards[1].name)
    return path


def _weights(card: ModelCard) -> dict[str, Any]:
    if not card.has("pytorch"):
        raise ModelLoadError(f"model {card.name!r} ({card.directory}) has no PyTorch weights to average: "
                             "average the training or fine-tuning output directories, which hold them")
    path = card.file("pytorch").verified(card.name)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a file that is not a weights file
        raise ModelLoadError(f"cannot read the weights of {card.name!r} ({path}): {exc}") from exc
    if not isinstance(state, Mapping) or not isinstance(state.get("generator"), Mapping):
        raise ModelLoadError(f"{path} holds no generator weights (a file `bluesky-tomogan train` writes)")
    return dict(state)


def _check_compatible(cards: list[ModelCard], states: list[dict[str, Any]]) -> None:
    a, b = cards
    if states[0].get("arch") != states[1].get("arch"):
        raise ModelLoadError(f"{a.name!r} and {b.name!r} are different networks (architecture "
                             f"{states[0].get('arch')} and {states[1].get('arch')}): only fine-tunings of one "
                             "network average")
    if states[0].get("prune_plan") != states[1].get("prune_plan"):
        raise ModelLoadError(f"{a.name!r} and {b.name!r} keep different All-in-One channels: their ratios are "
                             "different networks")
    ga, gb = states[0]["generator"], states[1]["generator"]
    if set(ga) != set(gb):
        raise ModelLoadError(f"{a.name!r} and {b.name!r} hold different tensors "
                             f"({sorted(set(ga) ^ set(gb))[:4]}...): only fine-tunings of one network average")
    shapes = [key for key in ga if tuple(ga[key].shape) != tuple(gb[key].shape)]
    if shapes:
        raise ModelLoadError(f"{a.name!r} and {b.name!r} differ in the shapes of {shapes[:4]}: only fine-tunings "
                             "of one network average")
    for section in _INFERENCE_SECTIONS:
        # a training run's own card leaves out what export derives from the weights (output, input despike):
        # only a section both cards state can disagree
        if section in a.source and section in b.source and a.source[section] != b.source[section]:
            raise ModelLoadError(f"{a.name!r} and {b.name!r} differ in their cards' {section!r} "
                                 f"({a.source.get(section)!r} and {b.source.get(section)!r}): their networks read "
                                 "different inputs")


def _mix(x: torch.Tensor, y: torch.Tensor, weight: float) -> torch.Tensor:
    if not x.is_floating_point():  # counters and indices are not averaged
        return y.clone()
    return ((1.0 - weight) * x.double() + weight * y.double()).to(x.dtype)


def _card(cards: list[ModelCard], weight: float, name: str, weights_path: Path) -> dict[str, Any]:
    """The second model's card, less what describes its own files and measurements, with the average's
    ingredients beside its training settings and the two models' training data merged."""
    a, b = cards
    card = {key: value for key, value in b.source.items() if key not in CARD_SECTIONS_DROPPED}
    card["name"] = name
    card["data"] = _merged_data(a.source.get("data"), b.source.get("data"))
    # the second model's training settings stay where export's int8-aware steps read them (batch, patch, loss,
    # context dropout: a network trained to denoise without its neighbours keeps learning both)
    card["training"] = {"config": _plain(b.source.get("training", {}).get("config", {})), "weight_average": {
        "method": "(1 - w) * first + w * second, parameter by parameter (bluesky_tomogan.model.average)",
        "models": [
            {"name": c.name, "share": share, "pytorch_sha256": c.file("pytorch").sha256,
             "training": _plain(c.source.get("training", {}).get("config", {}))}
            for c, share in ((a, 1.0 - weight), (b, weight))
        ],
    }}
    card["files"] = {"pytorch": {"path": weights_path.name, "sha256": sha256_of(weights_path)}}
    return card


def _plain(section: Any) -> Any:
    """A card section as plain JSON values (a copy, not the read-only card's own)."""
    return json.loads(json.dumps(section))


def _merged_data(first: Any, second: Any) -> dict[str, Any]:
    """One card's ``data`` for weights that learnt from both models' data (a recipe merged from both, as
    ``bluesky-tomogan merge`` writes one), or the one data section where both are the same."""
    if first == second or not first:
        return dict(second or {})
    if not second:
        return dict(first)
    sections = [d for d in (first, second) if isinstance(d, Mapping)]
    recipes = [d["recipe"] for d in sections if isinstance(d.get("recipe"), Mapping)]
    files = [str(d["file"]) for d in sections if d.get("file")]
    merged: dict[str, Any] = {"file": " + ".join(files)} if files else {}
    if recipes:
        merged["recipe"] = {"domain": recipes[-1].get("domain"), "merged": recipes}
    return merged
