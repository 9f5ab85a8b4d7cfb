"""The rotation centre that the live reconstruction finds for a sample wider than the field of view.

A bead pack (``SpherePack.random(..., width=W)``, the simulated camera's sample) ``W`` fields of view across, its
line integrals at ``--angles`` angles over [0, 180) on a detector of ``--columns`` columns whose axis lies
``--offset`` px right of its middle (the pack is projected onto a wider detector and cut), ``--photons`` per
pixel of open beam (Poisson noise; none by default), at three places (rows 64, 128, 192 of 256), each with
``--rows`` adjacent rows (the live reconstruction has 5 around each of its 3 rows). Local tomography: no
projection shows the sample's edges, the rows never reach open beam.

Two searches on the same rows: Vo's method on the middle row extended by its end values (session 70's, what
``search_center`` still does where the scan does not hold the 180-degree seam) and ``search_center`` (the
seam over all the rows for a sample wider than the view, Vo's method for one inside it).

Usage::

    python benchmarks/center_wider.py [--widths 1 1.4 1.8 2.5 3.5] [--angles 90] [--photons 0] [--offset 0] [--rows 1]
        [--without first|last]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from bluesky_tomogan.center import _vo_center, search_center
from bluesky_tomogan.simulate.spheres import SpherePack, camera_rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", type=float, nargs="+", default=[1.0, 1.4, 1.8, 2.5, 3.5])
    ap.add_argument("--angles", type=int, default=90)
    ap.add_argument("--columns", type=int, default=256)
    ap.add_argument("--offset", type=float, default=0.0, help="the axis's distance right of the middle (px)")
    ap.add_argument("--photons", type=float, default=0.0, help="photons per pixel of open beam (0: exact rows)")
    ap.add_argument("--rows", type=int, default=1, help="adjacent rows per search")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--without", choices=["first", "last"], help="leave out the scan's first or last projection")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    angles = np.linspace(0.0, 180.0, args.angles, endpoint=False)
    angles = {"first": angles[1:], "last": angles[:-1]}.get(args.without or "", angles)
    shift = int(round(args.offset))
    wide = args.columns + 2 * abs(shift)  # the detector the pack is projected on, cut to --columns
    start = (wide - args.columns) // 2 - shift
    axis = (wide - 1) / 2 - start
    print(f"| sample width (fields of view) | Vo, row extended: rows 64 / 128 / 192 | largest error | now | "
          f"largest error | how (axis {axis:g} px) |")
    print("|---|---|---|---|---|---|")
    for width in args.widths:
        pack = SpherePack.random((256, wide), args.seed, width=min(4.0, width * wide / args.columns))
        before, now, how = [], [], set()
        for middle in (64, 128, 192):
            rows = [middle + d - args.rows // 2 for d in range(args.rows)]
            transmission = camera_rows(pack, start, args.columns, rows, angles, args.photons, rng)
            center_row = transmission[args.rows // 2]
            before.append(_vo_center(center_row, angles, inside=False))
            found, method = search_center(center_row, angles, other_rows=transmission[:args.rows // 2]
                                          + transmission[args.rows // 2 + 1:])
            now.append(found)
            how.add(method)

        def largest(found: list[float]) -> str:
            return f"{max(abs(c - axis) if np.isfinite(c) else np.inf for c in found):.1f}"

        print(f"| {width:g} | " + " / ".join(f"{c:.2f}" for c in before) + f" | {largest(before)} | "
              + " / ".join(f"{c:.2f}" for c in now) + f" | {largest(now)} | {', '.join(sorted(how))} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
