"""Training step rate of the TomoGAN generator: fp32 vs bf16 autocast (channels_last).

Usage::

    python benchmarks/train_speed.py [--patch 96] [--batch 16] [--steps 6] [--threads 2]

Prints patches/s for each precision and their ratio, measured in one run.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from bluesky_tomogan.model.network import TomoGANGenerator


def rate(precision: str, patch: int, batch: int, steps: int) -> float:
    torch.manual_seed(0)
    gen = TomoGANGenerator().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    opt = torch.optim.Adam(gen.parameters(), 1e-3)
    x = torch.randn(batch, 3, patch, patch).to(memory_format=torch.channels_last)
    y = torch.randn(batch, 1, patch, patch)
    for i in range(steps + 2):  # two warm-up steps
        if i == 2:
            t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = ((gen(x).float() - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return batch * steps / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patch", type=int, default=96)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    fp32 = rate("fp32", args.patch, args.batch, args.steps)
    bf16 = rate("bf16", args.patch, args.batch, args.steps)
    print(f"fp32 {fp32:.1f} patches/s, bf16 autocast {bf16:.1f} patches/s, ratio {bf16 / fp32:.2f}x "
          f"({args.patch}x{args.patch}, batch {args.batch}, {args.threads} threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
