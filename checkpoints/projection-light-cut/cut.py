"""Cut channels from a trained network: the starting point of a lighter light model (session 35).

    .venv/bin/python checkpoints/projection-light-cut/cut.py tomogan-projection-light runs/cut-init enc1.0=16 dec2.2=16

Keeps, in each named layer, the output channels that matter most by weight magnitude: the L1
norm of the channel's filter times the L1 norm of the weights every consumer reads it with (a
channel that is large but read with small weights, or read strongly but near zero, matters
little). Writes ``<name>.pt`` and the parent's card, its architecture updated, into OUT, ready for
``train_wide.py`` (as ``--init``) and ``bluesky-tomogan export``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

from bluesky_tomogan.model.allinone import _out_axis, _producers, prune
from bluesky_tomogan.model.train import load_generator, resolve_weights


def importance(gen: nn.Module, layer: str) -> torch.Tensor:
    producers = _producers(gen)
    own, consumers = producers[layer]
    w = own.weight.detach()
    out_axis = _out_axis(own)
    score = w.abs().sum(dim=[d for d in range(w.dim()) if d != out_axis])
    modules = dict(gen.named_modules())
    read = torch.zeros_like(score)
    for name, offset in consumers:
        cw = modules[name].weight.detach()
        in_axis = 1 - _out_axis(modules[name])
        per_in = cw.abs().sum(dim=[d for d in range(cw.dim()) if d != in_axis])
        read += per_in[offset: offset + len(score)]
    return score * read


def main() -> None:
    parent, out, cuts = sys.argv[1], Path(sys.argv[2]), dict(a.split("=") for a in sys.argv[3:])
    weights = resolve_weights(parent)
    gen = load_generator(weights)
    kept = {n: sorted(torch.argsort(importance(gen, n), descending=True)[: int(k)].tolist()) for n, k in cuts.items()}
    small = prune(gen, kept)
    card = json.loads(Path(weights).with_suffix(".json").read_text())
    card["architecture"] = small.config.to_dict()
    out.mkdir(parents=True, exist_ok=True)
    name = card["name"]
    torch.save({"generator": small.state_dict(), "arch": small.config.to_dict()}, out / f"{name}.pt")
    (out / f"{name}.json").write_text(json.dumps(card, indent=2))
    macs, parent_macs = small.macs_per_pixel(), gen.macs_per_pixel()
    print(f"{out / name}.pt: {macs:.0f} MACs per pixel (parent {parent_macs:.0f}), kept {kept}")


if __name__ == "__main__":
    main()
