"""What stands in for a missing neighbour, by the scan's angular step: SSIM against the noise-free frame.

Usage::

    python benchmarks/stand_ins.py [--sizes 128 256] [--steps 384 192 96 48] [--photons 60 1000] [--json out.json]

A projection's context lacks neighbours at a scan's ends, and where a neighbour lies more than
``NEIGHBOUR_DEGREES`` away. A stand-in fills the place: the neighbour on the other side, mirrored, or the
frame itself. Under rotation a mirror moves the wrong way: it stands for a view twice as far from the
missing one as from the centre. For held-out simulated projection scans (8 consecutive angles of a scan
of ``--steps`` angles over 180 degrees; every phantom family, opacity 0.4-3.5; seeds never used in
training), the shipped projection model (ONNX Runtime fp32: the same numbers on every CPU) denoises:

- each scan's first and last frames with mirrored stand-ins (the rule before), with the rule of
  :func:`bluesky_tomogan.frames.context_indices` given the angles (a mirror only within half of
  ``NEIGHBOUR_DEGREES``, else the frame itself), and alone;
- a frame inside the scan with all its neighbours, by the rule (neighbours more than ``NEIGHBOUR_DEGREES``
  away left out), alone, and with its second neighbour after it missing (its stand-in mirrored, or the
  frame itself).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bluesky_tomogan.bench import cpu_name
from bluesky_tomogan.frames import context_indices
from bluesky_tomogan.inference import load_denoiser
from bluesky_tomogan.metrics import ssim
from bluesky_tomogan.simulate.datasets import Recipe, simulate_pairs

FRAMES = 8
HELD_OUT_SEED = 91_000


def one_case(den: Any, size: int, n_angles: int, photons: float, scans: int) -> dict[str, Any]:
    recipe = Recipe(domain="projection", size=size, photons=(photons, photons), max_attenuation=(0.4, 3.5),
                    frames_per_scan=FRAMES, n_angles=n_angles)
    pairs = simulate_pairs(recipe, scans, seed=HELD_OUT_SEED + size + n_angles + int(photons), workers=2)
    angles = np.arange(FRAMES) * 180.0 / n_angles  # the step is what matters here, not where the scan starts
    group = np.zeros(FRAMES, np.int32)
    mirrored = {0: [2, 1, 0, 1, 2], FRAMES - 1: [FRAMES - 3, FRAMES - 2, FRAMES - 1, FRAMES - 2, FRAMES - 3]}
    inside = FRAMES // 2 - 1
    contexts = {
        "ends, mirrored": list(mirrored.items()),
        "ends, by the rule": [(end, context_indices(group, end, den.depth, angles)) for end in mirrored],
        "ends, alone": [(end, [end] * den.depth) for end in mirrored],
        "inside, all neighbours": [(inside, list(range(inside - 2, inside + 3)))],
        "inside, by the rule": [(inside, context_indices(group, inside, den.depth, angles))],
        "inside, alone": [(inside, [inside] * den.depth)],
        "inside, +2 missing, mirrored": [(inside, [inside - 2, inside - 1, inside, inside + 1, inside - 2])],
        "inside, +2 missing, itself": [(inside, [inside - 2, inside - 1, inside, inside + 1, inside])],
    }
    out: dict[str, Any] = {}
    for label, cases in contexts.items():
        scores = []
        for s in range(scans):
            frames, clean = pairs.ns[s * FRAMES:(s + 1) * FRAMES], pairs.gt[s * FRAMES:(s + 1) * FRAMES]
            for centre, idx in cases:
                scores.append(ssim(clean[centre], den.denoise_context(frames[idx])))
        out[label] = float(np.mean(scores))
    out["rule at the ends"] = str(context_indices(group, 0, den.depth, angles))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--steps", type=int, nargs="+", default=[384, 192, 96, 48],
                    help="angles over 180 degrees: the angular step is 180 / this")
    ap.add_argument("--photons", type=float, nargs="+", default=[60.0, 1000.0])
    ap.add_argument("--scans", type=int, default=6, help="scans per case at 128 px (half as many at 256 px)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    den = load_denoiser("tomogan-projection", backend="onnxruntime", precision="fp32")
    rows = []
    for size in args.sizes:
        for n_angles in args.steps:
            for photons in args.photons:
                scans = max(2, args.scans * 128 // size)
                row = {"size": size, "step_deg": 180.0 / n_angles, "photons": photons, "scans": scans,
                       **one_case(den, size, n_angles, photons, scans)}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    labels = [k for k in rows[0] if k not in ("size", "step_deg", "photons", "scans", "rule at the ends")]
    print("| px | step (deg) | photons | " + " | ".join(labels) + " | the rule's first context |")
    print("|" + "---|" * (len(labels) + 4))
    for r in rows:
        print(f"| {r['size']} | {r['step_deg']:.2f} | {r['photons']:g} | "
              + " | ".join(f"{r[k]:.4f}" for k in labels) + f" | {r['rule at the ends']} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_name(), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
