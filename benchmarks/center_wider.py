"""The rotation centre that ``find_center`` (Vo's method, as the live reconstruction runs it) finds for a sample
wider than the field of view.

A bead pack (``SpherePack.random(..., width=W)``, the simulated camera's sample) ``W`` fields of view across, its
exact noise-free line integrals at 90 angles over 180 degrees on a 256-pixel detector whose middle column is the
axis (127.5 px), three rows each. Local tomography: no projection shows the sample's edges, the rows never
reach open beam, and the centre's search has less to go on.

Usage::

    python benchmarks/center_wider.py [--widths 1 1.4 1.8 2.5 3.5]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from bluesky_tomogan.reconstruction import find_center
from bluesky_tomogan.simulate.spheres import SpherePack
from bluesky_tomogan.simulate.tomography import angles_deg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", type=float, nargs="+", default=[1.0, 1.4, 1.8, 2.5, 3.5])
    args = ap.parse_args(argv)
    angles, rows, axis = angles_deg(90), (64, 128, 192), 127.5
    print("| sample width (fields of view) | centre found in rows 64 / 128 / 192 (px; axis 127.5) | largest error |")
    print("|---|---|---|")
    for width in args.widths:
        pack = SpherePack.random((256, 256), 7, width=width)
        found = [find_center(np.exp(-pack.sinogram(row, angles)), angles) for row in rows]
        errors = [abs(c - axis) if np.isfinite(c) else np.inf for c in found]
        print(f"| {width:g} | " + " / ".join(f"{c:.2f}" for c in found) + f" | {max(errors):.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
