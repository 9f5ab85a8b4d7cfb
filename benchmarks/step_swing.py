"""How far single optimiser steps move a trained network's validation SSIM.

From trained weights, a fresh Adam at a small learning rate moves every weight by about the
learning rate on its first steps. Where that moves the network's output a lot, the validation
SSIM of the raw weights swings from step to step and from epoch to epoch, and a moving average
of the weights (``bluesky-tomogan train --ema-decay``) is what a run should validate and keep
(docs/models.md, "Training"). This takes the steps training takes (random augmented patches,
the model's pixel loss, bf16 autocast where the CPU computes bf16) and prints the validation
SSIM after each, then per frame after the first.

Usage::

    python benchmarks/step_swing.py WEIGHTS DATA.h5 [--lr 5e-5] [--steps 3] [--frames 8]

``WEIGHTS``: a shipped model's name, a model directory or a ``.pt`` (as ``train --init``).
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import torch

from bluesky_tomogan.cpu import cpu_name
from bluesky_tomogan.metrics import ssim
from bluesky_tomogan.model.data import PatchSampler, normalised_frames
from bluesky_tomogan.model.losses import pixel_loss
from bluesky_tomogan.model.train import _centre, _validate, load_generator, resolve_weights, training_precision
from bluesky_tomogan.simulate.datasets import read_dataset


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights")
    ap.add_argument("data")
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--frames", type=int, default=8, help="validation frames, evenly spaced in the test split")
    ap.add_argument("--pixel", default="l1+ssim", choices=["l1", "mse", "l1+ssim"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dataset = read_dataset(args.data)
    test = dataset.split("test")
    start = load_generator(resolve_weights(args.weights)).eval()
    depth = start.config.in_channels
    sampler = PatchSampler(dataset.split("train"), 96, depth, args.seed)
    precision = training_precision()
    autocast = precision == "bf16"
    print(f"{cpu_name()}; {precision} autocast; Adam lr {args.lr:g}, batch 16 of 96x96")
    print(f"before: validation SSIM {_validate(start, test, args.frames)['val_ssim']:.4f} ({args.frames} frames)")

    gen = copy.deepcopy(start).train()
    opt = torch.optim.Adam(gen.parameters(), lr=args.lr)
    after_first = None
    for step in range(1, args.steps + 1):
        xb, yb = sampler.batch(16)
        x, y = torch.from_numpy(xb), torch.from_numpy(yb)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = gen(x)
        loss = pixel_loss(out.float(), y, args.pixel, _centre(x))  # type: ignore[arg-type]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        print(f"step {step}: validation SSIM {_validate(gen, test, args.frames)['val_ssim']:.4f}")
        if step == 1:
            after_first = copy.deepcopy(gen).eval()

    if after_first is not None:
        print("per frame, before -> after the first step (frame index, SSIM, the clean frame's std):")
        for i in np.unique(np.linspace(0, len(test.ns) - 1, args.frames).astype(int)):
            context, clean = normalised_frames(test, int(i), depth)
            with torch.no_grad():
                a = start(torch.from_numpy(context[None]))[0, 0].numpy()
                b = after_first(torch.from_numpy(context[None]))[0, 0].numpy()
            print(f"  {i:5d}  {ssim(clean[0], a):.4f} -> {ssim(clean[0], b):.4f}  (std {float(clean.std()):.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
