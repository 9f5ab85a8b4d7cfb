"""Widen layers of a model without changing its function: new channels read the old ones
through fresh weights and feed zero weights to every reader, so training starts from the
model's output exactly.

    .venv/bin/python checkpoints/projection-wide48/widen.py /tmp/wide48.pt   # prints "max diff 0.0"
    .venv/bin/python checkpoints/projection-wide48/widen.py OUT --from tomogan-projection-light stem.0=8

Session 22 widened the shipped projection model's full-resolution layers (enc1, dec1: 32 -> 48
channels, the default); session 32 the 5-frame light model's stem (4 -> 8: its 4 channels are
all that five frames meet in).
"""
import sys

import torch

from bluesky_tomogan.model.network import GeneratorConfig, TomoGANGenerator
from bluesky_tomogan.model.train import resolve_weights

args = sys.argv[1:]
source = "tomogan-projection"
if "--from" in args:
    source = args.pop(args.index("--from") + 1)
    args.remove("--from")
out, pairs = args[0], args[1:]
widths = ({name: int(width) for name, width in (pair.split("=") for pair in pairs)} if pairs
          else {"enc1.0": 48, "enc1.2": 48, "dec1.0": 48, "dec1.2": 48})

state = torch.load(resolve_weights(source), map_location="cpu", weights_only=True)
old_cfg = GeneratorConfig.from_dict(state["arch"])
old = TomoGANGenerator(old_cfg)
old.load_state_dict(state["generator"])
new_cfg = GeneratorConfig.from_dict(old_cfg.to_dict() | {
    "channels_override": dict(old_cfg.channels_override or {}) | widths})
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
x = torch.rand(2, old_cfg.in_channels, 64, 64) * 2
with torch.no_grad():
    print("max diff", (old.eval()(x) - new.eval()(x)).abs().max().item())
torch.save({"arch": new_cfg.to_dict(), "generator": new.state_dict()}, out)
