"""Which neighbours a projection is denoised with, by scan order: SSIM against the noise-free frame.

Usage::

    python benchmarks/angle_context.py [--size 256] [--angles 90] [--photons 500] [--json out.json]

A ``tomo_scan`` of the simulated camera (the demo's bead pack) through ``TomoGANCallback`` (the shipped
projection model on ONNX Runtime fp32, the same numbers on every CPU), its angles in four orders: a regular
scan (``--angles`` over 180 degrees), a sparse one (a third as many), a golden-angle scan (111.25 degrees
between frames) and one interlaced in four passes, each taken in that order. Each is run twice: with the
callback's rule (a neighbour more than ``NEIGHBOUR_DEGREES`` from the frame's angle is left out of its context)
and with every neighbour in the order taken (the rule before, set by a limit of 1000 degrees). Prints each
scan's mean and lowest SSIM of the denoised projections and how many QC flagged ``out_of_distribution``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from bluesky import RunEngine

from bluesky_tomogan import TomoGANCallback, load_denoiser
from bluesky_tomogan.callbacks import run as callback_run
from bluesky_tomogan.devices import SimTomoDetector, SimTomoStage
from bluesky_tomogan.metrics import ssim
from bluesky_tomogan.plans import tomo_scan


def orders(n: int) -> dict[str, list[float]]:
    """The scans' angles, degrees, in the order each takes them."""
    passes = 4
    per_pass = n // passes
    return {
        "regular": [180.0 * i / n for i in range(n)],
        "sparse": [180.0 * i / (n // 3) for i in range(n // 3)],
        "golden-angle": [float(a) for a in (np.arange(n) * 111.246117975) % 180.0],
        "interlaced x4": [180.0 * (p + passes * i) / (passes * per_pass)
                          for p in range(passes) for i in range(per_pass)],
    }


def one_scan(angles: list[float], args: argparse.Namespace, den: Any, limit: float) -> dict[str, float]:
    callback_run.NEIGHBOUR_DEGREES = limit
    RE = RunEngine({})
    stage = SimTomoStage(name="stage")
    det = SimTomoDetector(name="det", stage=stage, shape=(args.size, args.size), seed=7, simulate_timing=False,
                          directory=Path(tempfile.mkdtemp(prefix="tomogan-angle-context-")))
    det.exposure_time.put(0.1)
    det.photon_flux.put(args.photons / 0.1)
    cb = TomoGANCallback(den, inline=True, maxsize=len(angles) + 8)
    docs: list[tuple[str, Any]] = []
    cb.subscribe(lambda name, doc: docs.append((name, doc)))
    RE.subscribe(cb)
    RE(tomo_scan(det, stage, angles, n_darks=2, n_flats=2))
    (derived,) = [d["uid"] for n, d in docs if n == "descriptor" and d["name"] == "denoised"]
    scores, ood = [], 0
    for name, doc in docs:
        if name == "event_page" and doc["descriptor"] == derived:
            for seq, frame, flags in zip(doc["data"]["det_image_source_seq_num"], doc["data"]["det_image_denoised"],
                                         doc["data"]["det_image_qc_flags"], strict=True):
                angle = angles[int(seq) - 1]
                clean = args.photons * det.gain * np.exp(-det.sample.line_integrals(angle)) + det.model.dark_level
                scores.append(ssim(clean, np.asarray(frame)))
                ood += "out_of_distribution" in str(flags)
    return {"mean": float(np.mean(scores)), "lowest": float(np.min(scores)), "out_of_distribution": ood,
            "frames": len(scores)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--angles", type=int, default=90)
    ap.add_argument("--photons", type=float, default=500.0)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    den = load_denoiser("tomogan-projection", backend="onnxruntime")
    rule = callback_run.NEIGHBOUR_DEGREES
    rows = []
    print(f"{args.size}x{args.size}, {args.photons:g} photons/pixel, {den!r}; SSIM mean (lowest), "
          "frames flagged out_of_distribution")
    print(f"{'scan':<16}{'frames':>7}  {'neighbours in order taken':>28}  {f'within {rule:g} degrees':>28}")
    for label, angles in orders(args.angles).items():
        before, after = one_scan(angles, args, den, 1000.0), one_scan(angles, args, den, rule)
        rows.append({"scan": label, "frames": len(angles), "every_neighbour": before, "near_in_angle": after})
        cell = "{mean:.4f} ({lowest:.4f}), {out_of_distribution} flagged"
        print(f"{label:<16}{len(angles):>7}  {cell.format(**before):>28}  {cell.format(**after):>28}")
    callback_run.NEIGHBOUR_DEGREES = rule
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "neighbour_degrees": rule, "scans": rows},
                                              indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
