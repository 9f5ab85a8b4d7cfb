"""Cost of the live reconstruction's steps at the demo's size, against algotom's defaults, in one run.

Usage::

    python benchmarks/reconstruction_steps.py [--width 512] [--angles 180] [--repeats 5] [--binning B]

On one transmission sinogram of the simulated bead pack (``--angles`` over 180 degrees,
``--width`` columns, 500 photons per pixel): the rotation centre by algotom's
``find_center_vo`` with its defaults and by :func:`bluesky_tomogan.reconstruction.find_center`
(both centres printed), and the final reconstruction's nine rows (three slices and their
neighbours) on one and on two threads; with ``--binning B`` also on two threads with the columns binned by ``B``
(``TomoReconstruction(binning=B)``). Medians of ``--repeats``; the first call of each
is a warm-up (numba compiles).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bluesky_tomogan import reconstruction as recon
from bluesky_tomogan.bench import cpu_name
from bluesky_tomogan.center import _sorted_180
from bluesky_tomogan.devices import SimTomoDetector, SimTomoStage
from bluesky_tomogan.simulate.tomography import angles_deg


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    result = fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--angles", type=int, default=180)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--binning", type=int, default=1, help="also the nine rows with columns binned by this")
    args = ap.parse_args(argv)
    from algotom.prep.calculation import find_center_vo

    det = SimTomoDetector(name="det", stage=SimTomoStage(name="stage"), shape=(args.width, args.width),
                          simulate_timing=False, seed=7)
    angles = np.asarray(angles_deg(args.angles))
    rng = np.random.default_rng(0)
    rows = [args.width // 2 + d for d in (-1, 0, 1)]
    rows = [r + q for q in (-args.width // 4, 0, args.width // 4) for r in rows]
    transmission = {r: np.clip(rng.poisson(500 * np.exp(-det.sample.sinogram(r, angles))) / 500, 1e-3, 2)
                    .astype(np.float32) for r in rows}
    middle = transmission[args.width // 2]

    vo_s, vo = timed(lambda: float(find_center_vo(_sorted_180(-np.log(middle), angles), ncore=1)),
                     args.repeats)
    ours_s, ours = timed(lambda: recon.find_center(middle, angles), args.repeats)
    one_s, _ = timed(lambda: recon.reconstruct_rows(transmission, angles, ours, threads=1), args.repeats)
    two_s, _ = timed(lambda: recon.reconstruct_rows(transmission, angles, ours, threads=2), args.repeats)
    print(f"{args.angles} angles x {args.width} columns; CPU: {cpu_name()}")
    print(f"rotation centre: algotom find_center_vo (defaults) {vo_s:.3f} s -> {vo:.2f} px; "
          f"reconstruction.find_center {ours_s:.3f} s -> {ours:.2f} px ({vo_s / ours_s:.1f}x faster)")
    print(f"nine rows (stripe removal + FBP): one thread {one_s:.3f} s, two threads {two_s:.3f} s "
          f"({one_s / two_s:.2f}x)")
    if args.binning > 1:
        b = args.binning
        binned = {r: recon.bin_columns(t, b) for r, t in transmission.items()}
        binned_s, _ = timed(lambda: recon.reconstruct_rows(binned, angles, (ours - (b - 1) / 2) / b, threads=2),
                            args.repeats)
        print(f"nine rows, columns binned by {b}: two threads {binned_s:.3f} s ({two_s / binned_s:.1f}x faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
