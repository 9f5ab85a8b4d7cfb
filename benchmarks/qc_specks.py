"""QC's motion and noise metrics on frames with zingers, against the same frames without them.

Usage::

    python benchmarks/qc_specks.py [--size 512] [--step 0.5] [--doses 100 500 5000]
                                   [--rates 0 1e-4 1e-3] [--json out.json]

For each dose (photons per pixel of open beam) the simulated camera (``SimTomoDetector``,
uint16) takes 16 projections of its sample ``--step`` degrees apart; the sample slips
6 pixels sideways before the 11th. Each zinger rate adds zingers (1-2 pixels, 3-30x the
dose: ``simulate.tomography.add_zingers``) to copies of the same frames. Registration and the
rotation allowance run as the live callback's QC runs them on a stream (``qc.metrics``:
each frame against the one before). Prints, per dose and rate, the largest ``motion_px``
of the 14 pairs without the slip, ``motion_px`` at the slip, how many frames would be
flagged ``motion`` at the default 3 pixels, and ``noise_sigma`` of the first frame over its
value without zingers. Run it at two commits to compare (``PYTHONPATH=<worktree>/src``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np
from scratch import scratch_directory

from bluesky_tomogan.cpu import cpu_name
from bluesky_tomogan.devices import SimTomoDetector, SimTomoStage
from bluesky_tomogan.qc import QCPolicy
from bluesky_tomogan.qc.metrics import motion_px, noise_sigma, registered_offset, registration_image, rotation_allowance
from bluesky_tomogan.simulate.tomography import add_zingers

FRAMES, SLIP = 16, 10  # the slip comes before frame SLIP (0-based)


def projections(size: int, step: float, photons: float) -> np.ndarray:
    stage = SimTomoStage(name="stage")
    det = SimTomoDetector(name="det", stage=stage, shape=(size, size), directory=scratch_directory(),
                          simulate_timing=False)
    det.exposure_time.put(0.1)
    det.photon_flux.put(photons / 0.1)
    frames = []
    for i in range(FRAMES):
        stage.theta.set(i * step).wait()
        if i == SLIP:
            det.inject_fault("motion", pixels=6.0)
        frames.append(det._frame(det._conditions()))
    return np.stack(frames)


def motions(frames: np.ndarray, step: float) -> list[float]:
    """``motion_px`` of each frame against the one before, as the callback's QC measures it."""
    images = [registration_image(f) for f in frames]
    sideways: list[float] = []
    out = []
    for i in range(1, len(images)):
        down, right = registered_offset(images[i - 1], images[i])
        out.append(motion_px(down, right, rotation_allowance(sideways, step, frames.shape[-1])))
        if math.isfinite(right):
            sideways.append(abs(right))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--step", type=float, default=0.5, help="degrees between projections")
    p.add_argument("--doses", type=float, nargs="+", default=[100.0, 500.0, 5000.0])
    p.add_argument("--rates", type=float, nargs="+", default=[0.0, 1e-4, 1e-3])
    p.add_argument("--json")
    args = p.parse_args(argv)
    threshold = QCPolicy().rules["motion"].threshold
    print(f"CPU: {cpu_name()}; {FRAMES} projections of {args.size}x{args.size}, {args.step} degrees apart, "
          f"a 6-pixel slip before frame {SLIP}")
    print("| photons | zingers per pixel | motion_px, largest without the slip | motion_px at the slip | "
          f"frames over {threshold:g} px | noise_sigma / without zingers |")
    print("|---|---|---|---|---|---|")
    rows = []
    for dose in args.doses:
        clean = projections(args.size, args.step, dose)
        sigma0 = noise_sigma(clean[0])
        for k, rate in enumerate(args.rates):
            frames = clean
            if rate > 0:
                noisy = add_zingers(clean.astype(np.float32), dose, rate, np.random.default_rng(k))
                frames = np.clip(np.rint(noisy), 0, 65535).astype(np.uint16)
            m = motions(frames, args.step)
            at_slip = m[SLIP - 1]
            others = [v for i, v in enumerate(m) if i != SLIP - 1 and math.isfinite(v)]
            flagged = sum(1 for v in m if v > threshold)
            row = {"photons": dose, "rate": rate, "largest_other": max(others, default=math.nan),
                   "at_slip": at_slip, "flagged": flagged, "noise_ratio": noise_sigma(frames[0]) / sigma0}
            rows.append(row)
            print(f"| {dose:g} | {rate:g} | {row['largest_other']:.1f} | {at_slip:.1f} | {flagged} of {len(m)} | "
                  f"{row['noise_ratio']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu_name(), "size": args.size, "step": args.step, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
