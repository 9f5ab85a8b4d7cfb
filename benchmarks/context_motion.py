"""Neighbours that the rotation has moved: the context gate's threshold against the frame alone.

A projection model denoises each frame with its neighbours as context; under rotation a neighbour shows the sample
turned by a step, and the features far from the axis have moved by ``radius x step``. Close enough, the neighbours'
photon noise is what the network averages away; too far, it paints their moved features in. The context gate
(``bluesky_tomogan.context``) measures each neighbour's structural change against the frame's structure (its
``threshold``) and against the photon noise of their difference (its ``noise_ratio``, session 73); neighbours beyond
either get stand-ins (the frame itself, here in the middle of a scan).

For each camera size (``--sizes``), sample width (1: the bead pack inside the view; 1.8: wider than the view, the
camera seeing its middle, where features 1.5x farther from the axis pass through the view), angular step and
dose, three places of a simulated scan (``SimTomoDetector``'s physics, seed 11; angles 17, 61, 133 degrees) are
denoised by the shipped projection model (ONNX Runtime fp32) with its five-frame context gated at each of
``--thresholds`` by the structural distance alone (the gate before session 73), at the default threshold with each
of ``--noise-ratios``, and alone; mean SSIM against the noise-free frame, and the gate's distances and
change-to-noise ratios of the nearest and second neighbours (mean). Prints one line per setting and the means over
all settings and per dose.

Usage::

    python benchmarks/context_motion.py [--sizes 128 256 512] [--thresholds 0.1 0.2 0.35] \\
        [--noise-ratios 0.15 0.3 0.5 1 2] [--photons 30 100 1000 10000]
"""

from __future__ import annotations

import argparse
import itertools
import sys

import numpy as np

from bluesky_tomogan import load_denoiser
from bluesky_tomogan.bench import cpu_name
from bluesky_tomogan.context import DEFAULT_THRESHOLD, change_to_noise, context_distance
from bluesky_tomogan.devices import SimTomoDetector, SimTomoStage
from bluesky_tomogan.metrics import ssim


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.1, 0.2, 0.35])
    ap.add_argument("--noise-ratios", type=float, nargs="+", default=[0.15, 0.3, 0.5, 1.0, 2.0])
    ap.add_argument("--steps", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0], help="degrees")
    ap.add_argument("--photons", type=float, nargs="+", default=[30.0, 100.0, 1000.0, 10000.0])
    ap.add_argument("--model", default="tomogan-projection")
    args = ap.parse_args(argv)
    den = load_denoiser(args.model, backend="onnxruntime", precision="fp32")
    print(f"{args.model}, ONNX Runtime fp32; CPU: {cpu_name()}")
    columns = ([(f"gate {t:g}", t, np.inf) for t in args.thresholds]
               + [(f"{DEFAULT_THRESHOLD:g}, noise {r:g}", DEFAULT_THRESHOLD, r) for r in args.noise_ratios])
    print("| px | sample width | step (deg) | photons | distance: nearest / second | change to noise: nearest / "
          "second | " + " | ".join(label for label, _, _ in columns) + " | alone |")
    print("|---" * (7 + len(columns)) + "|")
    totals: dict[str, list[float]] = {label: [] for label, _, _ in [*columns, ("alone", 0, 0)]}
    by_dose: dict[float, dict[str, list[float]]] = {p: {label: [] for label in totals} for p in args.photons}
    for size, width, step, photons in itertools.product(args.sizes, (1.0, 1.8), args.steps, args.photons):
        det = SimTomoDetector(name="det", stage=SimTomoStage(name="stage"), shape=(size, size), seed=11,
                              sample_width=width, simulate_timing=False, dtype="float32")
        scores: dict[str, list[float]] = {label: [] for label in totals}
        near, second, near_noise, second_noise = [], [], [], []
        for start in (17.0, 61.0, 133.0):
            angles = start + step * np.arange(-2, 3)
            raw = np.stack([det.projection([a], photons) for a in angles]).astype(np.float32)
            clean = photons * det.gain * np.exp(-det.sample.line_integrals(angles[2])) + det.model.dark_level
            near.append(context_distance(raw[1], raw[2]))
            second.append(context_distance(raw[0], raw[2]))
            ratios = change_to_noise(raw)
            near_noise.append(ratios[1])
            second_noise.append(ratios[0])
            for label, threshold, ratio in columns:
                den.context_gate, den.context_noise_ratio = threshold, ratio
                scores[label].append(ssim(clean, den.denoise_context(raw)))
            scores["alone"].append(ssim(clean, den.denoise_context(np.stack([raw[2]] * den.depth))))
        means = {label: float(np.mean(v)) for label, v in scores.items()}
        for label, v in means.items():
            totals[label].append(v)
            by_dose[photons][label].append(v)
        best = max(means.values())
        cells = " | ".join(f"**{v:.4f}**" if v == best else f"{v:.4f}" for v in means.values())
        print(f"| {size} | {width:g} | {step:g} | {photons:g} | {np.mean(near):.3f} / {np.mean(second):.3f} | "
              f"{np.mean(near_noise):.3f} / {np.mean(second_noise):.3f} | {cells} |", flush=True)
    print("\n| mean SSIM | " + " | ".join(totals) + " |")
    print("|---" * (1 + len(totals)) + "|")
    for photons, table in by_dose.items():
        print(f"| {photons:g} photons | " + " | ".join(f"{np.mean(v):.4f}" for v in table.values()) + " |")
    print("| all | " + " | ".join(f"{np.mean(v):.4f}" for v in totals.values()) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
