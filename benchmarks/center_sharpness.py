"""How sharp a real scan's full-view slices are about each candidate rotation centre, and the centres found.

For a scan without a known axis: the filtered back-projection of every projection of ``--rows`` (every 8th of
64-128 by default: Diamond I12's sample rows) about each centre of ``--centers START STOP STEP``, scored by the
mean gradient magnitude inside the reconstruction circle over the slice's standard deviation (a centre off the
axis doubles edges into arcs: more gradient). Then the centres each method finds: ``search_center`` on the middle
row with the others (as ``bluesky-tomogan finetune``), Vo's method on each of ``--single-rows`` rows extended by
their ends (session 70's search for a sample wider than the view), and the 180-degree seam on each alone.

Usage::

    python benchmarks/center_sharpness.py SCAN [--angles FILE --flats FILE --darks FILE] [--rows 64 128 8]
        [--centers 85 86.5 0.25] [--single-rows 0 16]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from bluesky_tomogan.center import _vo_center, seam_center, search_center
from bluesky_tomogan.finetune import read_scan
from bluesky_tomogan.reconstruction import corrected_sinogram, reconstruct


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scan")
    ap.add_argument("--angles")
    ap.add_argument("--flats")
    ap.add_argument("--darks")
    ap.add_argument("--rows", type=int, nargs=3, default=[64, 128, 8], metavar=("FIRST", "LAST", "STEP"))
    ap.add_argument("--centers", type=float, nargs=3, default=[85.0, 86.5, 0.25], metavar=("START", "STOP", "STEP"))
    ap.add_argument("--single-rows", type=int, nargs="*", default=[0, 16])
    args = ap.parse_args(argv)
    scan = read_scan(args.scan, angles=args.angles, flats=args.flats, darks=args.darks)
    angles = np.asarray(scan.angles)

    def row(r: int) -> np.ndarray:
        return corrected_sinogram(scan.projections[:, r, :], scan.flats[r], scan.darks[r])

    rows = list(range(args.rows[0], args.rows[1] + 1, args.rows[2]))
    transmission = [row(r) for r in rows]
    start, stop, step = args.centers
    print("| centre (px) | mean gradient / standard deviation |")
    print("|---|---|")
    for center in np.arange(start, stop + step / 2, step):
        score = []
        for t in transmission:
            s = reconstruct(t, angles, center).slice
            n = s.shape[0]
            yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
            inside = yy**2 + xx**2 < (0.45 * n) ** 2
            gy, gx = np.gradient(s)
            score.append(np.mean(np.hypot(gx, gy)[inside]) / np.std(s[inside]))
        print(f"| {center:.2f} | {np.mean(score):.5f} |")
    middle = len(rows) // 2
    others = transmission[:middle] + transmission[middle + 1:]
    found, how = search_center(transmission[middle], angles, other_rows=others)
    print(f"search_center over rows {rows}: {found:.2f} px ({how})")
    for r in args.single_rows:
        t = row(r)
        print(f"row {r}: Vo's method, row extended {_vo_center(t, angles, inside=False):.2f} px; "
              f"the seam {seam_center([t], angles):.2f} px")
    return 0


if __name__ == "__main__":
    sys.exit(main())
