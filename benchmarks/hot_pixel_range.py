"""Hot or dead pixels at a growing share of the pixels: does the frame's denoising hold?

A projection model's input is the frame mapped by its robust range (0.5th to 99.5th percentile,
``bluesky_tomogan.normalise``). Hot pixels far above the frame (``--kind hot``: 20x its top value, the
same pixels in every frame of the context) that cover more than 0.5 % of the pixels would set the top
of that range if they were not removed first (the host despike, ``bluesky_tomogan.despike``); dead
pixels (``--kind dead``: 0 in every frame) are holes that a full-precision network smears into their
neighbours. Held-out
projections (ordinary samples, 2 phantoms x 6 angles of 128x128 at ``--dose`` photons/pixel), SSIM
and PSNR against the noise-free frames judged where the pixels work, in fp32 (ONNX Runtime)
and in the precision ``auto`` picks here.

Usage::

    python benchmarks/hot_pixel_range.py [--kind hot|dead] [--model tomogan-projection] [--dose 1000]
        [--rates 0 0.002 0.004 0.006 0.01 0.02]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from bluesky_tomogan.bench import cpu_name
from bluesky_tomogan.frames import context_indices
from bluesky_tomogan.inference import load_denoiser
from bluesky_tomogan.metrics import psnr, ssim
from bluesky_tomogan.simulate.datasets import Recipe, simulate_pairs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tomogan-projection")
    p.add_argument("--dose", type=float, default=1000.0)
    p.add_argument("--rates", type=float, nargs="+", default=[0.0, 0.002, 0.004, 0.006, 0.01, 0.02])
    p.add_argument("--kind", choices=["hot", "dead"], default="hot")
    args = p.parse_args(argv)
    recipe = Recipe(domain="projection", size=128, photons=(args.dose, args.dose), max_attenuation=(1.2, 3.5),
                    frames_per_scan=6)
    pairs = simulate_pairs(recipe, 2, seed=91_000, workers=2)
    print(f"{cpu_name()}; {args.model} at {args.dose:g} photons/pixel")
    print(f"| {args.kind} pixels | model | SSIM | PSNR |")
    print("|---|---|---|---|")
    for backend, precision in (("onnxruntime", "fp32"), ("auto", "auto")):
        den = load_denoiser(args.model, backend=backend, precision=precision)
        rng = np.random.default_rng(1)
        for rate in args.rates:
            s, ps = [], []
            for i in range(len(pairs.ns)):
                context = pairs.ns[context_indices(pairs.group, i, den.depth)].copy()
                hot = rng.random(context.shape[-2:]) < rate
                context[:, hot] = 20 * context.max() if args.kind == "hot" else 0
                out = np.where(hot, pairs.gt[i], den.denoise_context(context))  # judged where there is data
                s.append(ssim(pairs.gt[i], out))
                ps.append(psnr(pairs.gt[i], out))
            print(f"| {100 * rate:.2g} % | {den.backend}/{den.precision} | {np.mean(s):.4f} | {np.mean(ps):.1f} dB |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
