"""Neighbours that the rotation has moved: the context gate's threshold against the frame alone.

A projection model denoises each frame with its neighbours as context; under rotation a neighbour shows the sample
turned by a step, and the features far from the axis have moved by ``radius x step``. Close enough, the neighbours'
photon noise is what the network averages away; too far, it paints their moved features in. The context gate
(``bluesky_tomogan.context``) measures each neighbour's structural change against the frame; neighbours beyond its
``threshold`` get stand-ins (the frame itself, here in the middle of a scan).

For each camera size (``--sizes``), sample width (1: the bead pack inside the view; 1.8: wider than the view, the
camera seeing its middle, where features 1.5x farther from the axis pass through the view), angular step and
dose, three places of a simulated scan (``SimTomoDetector``'s physics, seed 11; angles 17, 61, 133 degrees) are
denoised by the shipped projection model (ONNX Runtime fp32) with its five-frame context gated at each of
``--thresholds`` and alone; mean SSIM against the noise-free frame, and the gate's distances of the nearest and
second neighbours (mean). Prints one line per setting.

Usage::

    python benchmarks/context_motion.py [--sizes 128 256 512] [--thresholds 0.05 0.1 0.15 0.2 0.25 0.35]
"""

from __future__ import annotations

import argparse
import itertools
import sys

import numpy as np

from bluesky_tomogan import load_denoiser
from bluesky_tomogan.bench import cpu_name
from bluesky_tomogan.context import context_distance
from bluesky_tomogan.devices import SimTomoDetector, SimTomoStage
from bluesky_tomogan.metrics import ssim


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.05, 0.1, 0.15, 0.2, 0.25, 0.35])
    ap.add_argument("--steps", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0], help="degrees")
    ap.add_argument("--photons", type=float, nargs="+", default=[100.0, 1000.0])
    ap.add_argument("--model", default="tomogan-projection")
    args = ap.parse_args(argv)
    den = load_denoiser(args.model, backend="onnxruntime", precision="fp32")
    print(f"{args.model}, ONNX Runtime fp32; CPU: {cpu_name()}")
    print("| px | sample width | step (deg) | photons | gate distance: nearest / second | "
          + " | ".join(f"gate {t:g}" for t in args.thresholds) + " | alone |")
    print("|---" * (6 + len(args.thresholds)) + "|")
    totals = {t: [] for t in [*args.thresholds, "alone"]}
    for size, width, step, photons in itertools.product(args.sizes, (1.0, 1.8), args.steps, args.photons):
        det = SimTomoDetector(name="det", stage=SimTomoStage(name="stage"), shape=(size, size), seed=11,
                              sample_width=width, simulate_timing=False, dtype="float32")
        scores: dict[float | str, list[float]] = {t: [] for t in [*args.thresholds, "alone"]}
        near, second = [], []
        for start in (17.0, 61.0, 133.0):
            angles = start + step * np.arange(-2, 3)
            raw = np.stack([det.projection([a], photons) for a in angles]).astype(np.float32)
            clean = photons * det.gain * np.exp(-det.sample.line_integrals(angles[2])) + det.model.dark_level
            near.append(context_distance(raw[1], raw[2]))
            second.append(context_distance(raw[0], raw[2]))
            for t in args.thresholds:
                den.context_gate = t
                scores[t].append(ssim(clean, den.denoise_context(raw)))
            scores["alone"].append(ssim(clean, den.denoise_context(np.stack([raw[2]] * den.depth))))
        means = {t: float(np.mean(v)) for t, v in scores.items()}
        for t, v in means.items():
            totals[t].append(v)
        best = max(means.values())
        cells = " | ".join(f"**{v:.4f}**" if v == best else f"{v:.4f}" for v in means.values())
        print(f"| {size} | {width:g} | {step:g} | {photons:g} | {np.mean(near):.3f} / {np.mean(second):.3f} | "
              f"{cells} |", flush=True)
    print("mean over the settings: " + ", ".join(f"{t}: {np.mean(v):.4f}" for t, v in totals.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
