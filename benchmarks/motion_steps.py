"""Rotation against motion: the ``motion`` flag on scans with coarse and fine angular steps.

Usage::

    python benchmarks/motion_steps.py [--size 512] [--photons 500] [--frames 24] [--blur 0] [--flats 0]
                                      [--json out.json]

For each angular step, a ``tomo_scan`` of the simulated bead pack (no darks or flats by default)
through ``TomoGANCallback``; after the 16th projection the sample slips sideways by 6
pixels (the detector's ``motion`` fault), and in a second scan at the same step it slips
6 pixels up instead. Reported per step, read from the derived stream: the largest
``shift_px`` of the frames before the slip (what rotation alone does), the frames flagged
``motion`` other than the slip's (false flags), and ``motion_px`` at the slip. ``--blur``: the
camera's blur (a Gaussian's sigma in pixels), which correlates neighbouring pixels' noise; ``--flats N``:
N darks and N flats before the projections (QC fits the camera's photon transfer curve from them).
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
from bluesky_tomogan.cpu import cpu_name
from bluesky_tomogan.devices import SimTomoDetector, SimTomoStage
from bluesky_tomogan.plans import tomo_scan

SLIP_AT = 16  # projections before the slip
SLIP_PX = 6.0


def scan(step: float, size: int, photons: float, frames: int, direction: str, den: Any,
         blur: float = 0.0, flats: int = 0) -> dict[str, Any]:
    """One scan at ``step`` degrees with a slip (``sideways`` or ``up``); the derived stream's columns."""
    with tempfile.TemporaryDirectory() as tmp:
        stage = SimTomoStage(name="stage")
        det = SimTomoDetector(name="det", stage=stage, shape=(size, size), directory=Path(tmp), seed=7,
                              simulate_timing=False, blur=blur)
        det.exposure_time.put(0.1)
        det.photon_flux.put(photons / 0.1)
        cb = TomoGANCallback(den, directory=Path(tmp) / "derived", policy="block", streams=["primary"])
        rows: dict[str, list[Any]] = {"flags": [], "shift": [], "motion": []}

        def collect(name: str, doc: Any) -> None:
            if name == "event_page" and "det_image_qc_flags" in doc["data"]:
                rows["flags"] += doc["data"]["det_image_qc_flags"]
                rows["shift"] += doc["data"]["det_image_qc_shift_px"]
                rows["motion"] += doc["data"]["det_image_qc_motion_px"]

        seen: dict[str, Any] = {"n": 0, "primary": None}

        def slip(name: str, doc: Any) -> None:
            if name == "descriptor" and doc["name"] == "primary":
                seen["primary"] = doc["uid"]
            if name == "event" and doc["descriptor"] == seen["primary"]:  # a projection
                seen["n"] += 1
                if seen["n"] == SLIP_AT:
                    det.sample = det.sample.moved(*((SLIP_PX, 0.0) if direction == "sideways" else (0.0, -SLIP_PX)))

        RE = RunEngine({})
        cb.subscribe(collect)
        RE.subscribe(cb)
        RE.subscribe(slip)
        RE(tomo_scan(det, stage, list(30.0 + step * np.arange(frames)), n_darks=flats, n_flats=flats))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--photons", type=float, default=500.0)
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--steps", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0, 4.0])
    p.add_argument("--blur", type=float, default=0.0, help="the camera's blur, sigma in pixels")
    p.add_argument("--flats", type=int, default=0, help="darks and flats before the projections")
    p.add_argument("--json")
    args = p.parse_args(argv)
    den = load_denoiser("tomogan-projection")
    results = []
    blur = f", camera blur {args.blur:g} px" if args.blur else ""
    blur += f", {args.flats} darks and flats first" if args.flats else ""
    print(f"CPU: {cpu_name()}; {args.size}x{args.size}, {args.photons:g} photons/pixel, {args.frames} projections, "
          f"{SLIP_PX:g}-pixel slip after projection {SLIP_AT}{blur}")
    print("step (deg) | largest shift_px before the slip | false motion flags | motion_px at a sideways slip "
          "| at an upward slip")
    for step in args.steps:
        side = scan(step, args.size, args.photons, args.frames, "sideways", den, args.blur, args.flats)
        up = scan(step, args.size, args.photons, args.frames, "up", den, args.blur, args.flats)
        before = [s for s in side["shift"][:SLIP_AT] if np.isfinite(s)]
        false = sum("motion" in f for i, f in enumerate(side["flags"] + up["flags"])
                    if i % args.frames != SLIP_AT)
        row = {"step_deg": step, "rotation_shift_max": max(before, default=float("nan")), "false_flags": false,
               "sideways_motion_px": side["motion"][SLIP_AT], "sideways_flagged": "motion" in side["flags"][SLIP_AT],
               "up_motion_px": up["motion"][SLIP_AT], "up_flagged": "motion" in up["flags"][SLIP_AT]}
        results.append(row)
        print(f"{step:g} | {row['rotation_shift_max']:.1f} | {false} | {row['sideways_motion_px']:.1f} "
              f"({'flagged' if row['sideways_flagged'] else 'not flagged'}) | {row['up_motion_px']:.1f} "
              f"({'flagged' if row['up_flagged'] else 'not flagged'})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
