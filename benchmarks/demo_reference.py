"""Where the demo's noise-free reference slice puts the rotation axis.

The simulated camera's bead pack projects its axis onto column ``(n - 1) / 2`` (the line integrals' ``u = 0``).
Its noise-free middle row reconstructed as the demo reconstructed its reference until session 71 (scikit-image's
filtered back-projection, ``simulate.tomography.fbp``) and as the live reconstruction does (algotom, Hann filter)
about each candidate centre: the SSIM of each algotom slice against each reference says which centre a reference
rewards. Also the centre Vo's method finds on the noise-free row.

Usage::

    python benchmarks/demo_reference.py [--size 512] [--angles 180] [--centers 255 256.5 0.25]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from bluesky_tomogan.center import find_center
from bluesky_tomogan.devices import SimTomoDetector, SimTomoStage
from bluesky_tomogan.metrics import ssim
from bluesky_tomogan.reconstruction import reconstruct
from bluesky_tomogan.simulate.tomography import fbp


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--angles", type=int, default=180)
    ap.add_argument("--centers", type=float, nargs=3, default=[255.0, 256.5, 0.25], metavar=("START", "STOP", "STEP"))
    args = ap.parse_args(argv)
    det = SimTomoDetector(name="det", stage=SimTomoStage(name="stage"), shape=(args.size, args.size),
                          simulate_timing=False)
    angles = np.linspace(0.0, 180.0, args.angles, endpoint=False)
    sino = det.sample.sinogram(args.size // 2, angles)
    axis = (args.size - 1) / 2 + det.sample.shift[0]
    references = {"scikit-image FBP (the demo's until session 71)": fbp(sino, angles),
                  f"algotom about the axis {axis:g} (since)": reconstruct(np.exp(-sino), angles, axis,
                                                                         remove_stripes=False).slice}
    print(f"Vo's method on the noise-free row: {find_center(np.exp(-sino), angles):.2f} px (axis {axis:g})")
    print("| centre (px) | " + " | ".join(f"SSIM against {k}" for k in references) + " |")
    print("|---" * (len(references) + 1) + "|")
    start, stop, step = args.centers
    for center in np.arange(start, stop + step / 2, step):
        rec = reconstruct(np.exp(-sino), angles, center, remove_stripes=False).slice
        print(f"| {center:.2f} | " + " | ".join(f"{ssim(ref, rec):.4f}" for ref in references.values()) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
