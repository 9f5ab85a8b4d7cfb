"""Offset-axis (half-acquisition) scans: the rotation centre over the whole detector, and the doubled field of view.

A bead pack (``SpherePack.random``, width 1: it fills 0.84 of the doubled view) is projected over a full turn onto a
detector twice as wide as from the axis to the far edge of a ``--columns`` wide camera, and cut to the camera: the
axis at each of ``--axes`` columns (near the right edge, off the middle, the middle, near the left edge),
``--photons`` per pixel of open beam (Poisson noise; 0: exact), ``--rows`` adjacent rows at each of three places.

For each axis: the largest error of three places of the centre that the live reconstruction used for a full turn of
a sample wider than the view before session 72 (the 180-degree seam's middle-half search, else Vo's method on rows
extended by their ends, else, where neither finds a minimum, the centre-of-mass estimate) and of ``turn_center``
(the whole detector, now). On exact rows, the middle row's slice at the centre found now against filtered
back-projection of the uncut rows over half the turn (algotom, the live reconstruction's filter; SSIM in
``bluesky_tomogan.metrics``' canonical scale): made as before (a square as wide as the camera about the axis) and
over the doubled field of view (``reconstruct(..., extend=True)``), both over that square, and the doubled view's
slice over all of it. (With noise, the SSIM of such unfiltered slices against a noise-free one measures their noise
more than their geometry: points outside the band that both halves see are in half the projections.)

``--time COLUMNS ANGLES`` instead times one row's ``reconstruct`` (one thread, as the live reconstruction's each)
of a full turn: as wide as the camera, and over the doubled view about an axis 20.5 px from the edge, with each
projection folded onto the one half a turn before it (what ``reconstruct(..., extend=True)`` does) and without.

Usage::

    python benchmarks/offset_axis.py [--columns 256] [--angles 360] [--photons 0 1000 100] [--rows 5]
        [--axes 250.5 235.5 199.5 160.5 127.5 39.5 11.5]
    python benchmarks/offset_axis.py --time 1024 720
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from bluesky_tomogan.center import _vo_center, fallback_center, seam_center, turn_center
from bluesky_tomogan.metrics import ssim
from bluesky_tomogan.reconstruction import offset_axis, reconstruct
from bluesky_tomogan.simulate.spheres import camera_rows, offset_axis_pack


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--columns", type=int, default=256)
    ap.add_argument("--angles", type=int, default=360, help="projections over the full turn")
    ap.add_argument("--photons", type=float, nargs="+", default=[0.0, 1000.0, 100.0])
    ap.add_argument("--rows", type=int, default=5, help="adjacent rows per search")
    ap.add_argument("--axes", type=float, nargs="+", default=[250.5, 235.5, 199.5, 160.5, 127.5, 39.5, 11.5])
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--time", type=int, nargs=2, metavar=("COLUMNS", "ANGLES"), help="time one row's reconstruction")
    args = ap.parse_args(argv)
    if args.time:
        return _time(*args.time)
    w = args.columns
    angles = np.linspace(0.0, 360.0, args.angles, endpoint=False)
    half = angles < 180.0
    print("| axis (overlap, px) | photons | centre error: before | now (ms) | slice SSIM over the camera's width: "
          "before / now | now, over the doubled view (px) |")
    print("|---|---|---|---|---|---|")
    for axis in args.axes:
        pack, start = offset_axis_pack(axis, w, seed=args.seed)
        wide = pack.shape[1]
        overlap = w - abs(2 * axis - (w - 1))
        for photons in args.photons:
            rng = np.random.default_rng(0)
            before, now, took = [], [], []
            slices = ""
            for middle in (32, 64, 96):
                rows = [middle + d - args.rows // 2 for d in range(args.rows)]
                transmission = camera_rows(pack, start, w, rows, angles, photons, rng)
                middle_row = transmission[args.rows // 2]
                old = seam_center(transmission, angles)
                old = old if np.isfinite(old) else _vo_center(middle_row, angles, False)
                before.append(old if np.isfinite(old) else fallback_center(middle_row, angles)[0])
                t0 = time.perf_counter()
                now.append(turn_center(transmission, angles))
                took.append(1e3 * (time.perf_counter() - t0))
                if middle == 64 and not photons:
                    uncut = pack.sinogram(64, angles[half])
                    reference = reconstruct(np.exp(-uncut), angles[half], (wide - 1) / 2, remove_stripes=False).slice
                    row = transmission[args.rows // 2]
                    plain = reconstruct(row, angles, now[-1], remove_stripes=False).slice
                    doubled = reconstruct(row, angles, now[-1], remove_stripes=False,
                                          extend=offset_axis(True, now[-1], w, wider=True)).slice
                    cut = (wide - w) // 2
                    square = reference[cut:cut + w, cut:cut + w]
                    inner = (doubled.shape[0] - w) // 2
                    n = min(doubled.shape[0], wide)
                    a, b = (wide - n) // 2, (doubled.shape[0] - n) // 2
                    middle_square = doubled[inner:inner + w, inner:inner + w]
                    whole = ssim(reference[a:a + n, a:a + n], doubled[b:b + n, b:b + n])
                    slices = (f"{ssim(square, plain):.3f} / {ssim(square, middle_square):.3f} | {whole:.3f} "
                              f"({doubled.shape[0]})")

            slices = slices or "|"
            print(f"| {axis:g} ({overlap:g}) | {photons:g} | {_largest(before, axis)} | {_largest(now, axis)} "
                  f"({np.median(took):.0f}) | {slices} |", flush=True)
    return 0


def _time(columns: int, n_angles: int, repeats: int = 3) -> int:
    from algotom.rec.reconstruction import fbp_reconstruction

    from bluesky_tomogan.reconstruction import extended_sinogram

    rng = np.random.default_rng(0)
    transmission = np.exp(-0.1 * rng.random((n_angles, columns))).astype(np.float32)
    angles = np.linspace(0.0, 360.0, n_angles, endpoint=False)
    axis = columns - 21.0 + 0.5

    def unfolded() -> None:
        sino, at = extended_sinogram(-np.log(transmission), axis)
        fbp_reconstruction(sino, at, angles=np.deg2rad(angles), apply_log=False, gpu=False, ncore=1)

    cases = {"as wide as the camera": lambda: reconstruct(transmission, angles, columns / 2, remove_stripes=False),
             "doubled view, folded": lambda: reconstruct(transmission, angles, axis, remove_stripes=False,
                                                         extend=True),
             "doubled view, not folded": unfolded}
    reconstruct(transmission[:8], angles[:8], columns / 2)  # numba compiles once
    for name, run in cases.items():
        took = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            took.append(time.perf_counter() - t0)
        print(f"{columns} columns x {n_angles} angles over a full turn, {name}: {np.median(took):.2f} s "
              f"(median of {repeats})", flush=True)
    return 0


def _largest(found: list[float], axis: float) -> str:
    return f"{max(abs(c - axis) if np.isfinite(c) else np.inf for c in found):.2f}"


if __name__ == "__main__":
    sys.exit(main())
