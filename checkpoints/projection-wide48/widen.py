"""Widen the full-resolution layers of the shipped projection model (enc1, dec1: 32 -> 48 channels)
without changing its function: new channels read the old ones through fresh weights and feed
zero weights to every reader, so training starts from the shipped model's output exactly.

    .venv/bin/python checkpoints/projection-wide48/widen.py /tmp/wide48.pt   # prints "max diff 0.0"
"""
import sys

import torch

from bluesky_tomogan.model.network import GeneratorConfig, TomoGANGenerator
from bluesky_tomogan.model.train import resolve_weights

WIDTHS = {"enc1.0": 48, "enc1.2": 48, "dec1.0": 48, "dec1.2": 48}

state = torch.load(resolve_weights("tomogan-projection"), map_location="cpu", weights_only=True)
old_cfg = GeneratorConfig.from_dict(state["arch"])
old = TomoGANGenerator(old_cfg)
old.load_state_dict(state["generator"])
new_cfg = GeneratorConfig.from_dict(old_cfg.to_dict() | {"channels_override": WIDTHS})
torch.manual_seed(0)
new = TomoGANGenerator(new_cfg)
widened = new.state_dict()
for key, value in old.state_dict().items():
    fresh = widened[key]
    if fresh.shape == value.shape:
        widened[key] = value.clone()
    elif value.ndim == 4:  # (out, in, kh, kw): old outputs keep their weights and read no new input
        out_old, in_old = value.shape[:2]
        fresh = fresh.clone() * 0.5
        fresh[:out_old, in_old:] = 0
        fresh[:out_old, :in_old] = value
        widened[key] = fresh
    else:  # biases
        fresh = torch.zeros_like(fresh)
        fresh[: value.shape[0]] = value
        widened[key] = fresh
new.load_state_dict(widened)
x = torch.rand(2, 3, 64, 64) * 2
with torch.no_grad():
    print("max diff", (old.eval()(x) - new.eval()(x)).abs().max().item())
torch.save({"arch": new_cfg.to_dict(), "generator": new.state_dict()}, sys.argv[1])
