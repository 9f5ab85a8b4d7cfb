"""Would less (or more) of the projection model's correction help? ``raw + a * (model - raw)`` per dose.

For the 15 dose x sample cells of ``benchmarks/dose_sweep.py`` (3 phantoms x 6 consecutive projections of
128x128, fp32 through ONNX Runtime), the mean SSIM of the model's frame scaled back toward (a < 1) or past
(a > 1) the raw frame, on a calibration set (seeds 80,000 + dose) and on the held-out set the sweep uses
(90,000 + dose). A strength below 1 that helped at high doses would be a cheap way past tuned TV there.

Usage::

    python benchmarks/residual_strength.py [--model tomogan-projection] [--strengths 0.9 0.95 1 1.05]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from dose_sweep import DOSES, HELD_OUT_SEED
from residual_repeat import SAMPLES

from bluesky_tomogan.bench import cpu_name
from bluesky_tomogan.frames import context_indices
from bluesky_tomogan.inference import load_denoiser
from bluesky_tomogan.metrics import ssim
from bluesky_tomogan.simulate.datasets import Recipe, simulate_pairs

CALIBRATION_SEED = 80_000


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tomogan-projection")
    p.add_argument("--strengths", type=float, nargs="+", default=[0.7, 0.8, 0.85, 0.9, 0.95, 1.0, 1.05])
    args = p.parse_args(argv)
    den = load_denoiser(args.model, backend="onnxruntime", precision="fp32")
    print(f"{args.model} fp32, {cpu_name()}")
    print("| seeds | samples | photons/pixel | SSIM at a=1 | best a | its SSIM | gain |")
    print("|---|---|---|---|---|---|---|")
    for base, label in ((CALIBRATION_SEED, "calibration"), (HELD_OUT_SEED, "held out")):
        for name, opacity in SAMPLES.items():
            for dose in DOSES:
                recipe = Recipe(domain="projection", size=128, photons=(dose, dose), max_attenuation=opacity,
                                frames_per_scan=6)
                pairs = simulate_pairs(recipe, 3, seed=base + int(dose), workers=2)
                scores: dict[float, list[float]] = {a: [] for a in args.strengths}
                for i in range(len(pairs.ns)):
                    raw = pairs.ns[i]
                    net = den.denoise_context(pairs.ns[context_indices(pairs.group, i, den.depth)])
                    for a in args.strengths:
                        scores[a].append(ssim(pairs.gt[i], raw + a * (net - raw)))
                mean = {a: float(np.mean(v)) for a, v in scores.items()}
                best = max(mean, key=lambda a: mean[a])
                at_one = mean.get(1.0, float("nan"))
                print(f"| {label} | {name} | {dose:g} | {at_one:.4f} | {best:g} | {mean[best]:.4f} | "
                      f"{mean[best] - at_one:+.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
