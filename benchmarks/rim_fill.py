"""The rim of a sample wider than the field of view: a slice model's output with and without the outside of the
reconstruction circle filled (``bluesky_tomogan.circle``), on a real scan.

Each ``--rows`` detector row is reconstructed from every ``--every``-th projection (sparse view) and denoised by
``--model`` twice: as the slice is stored (the value 0 outside the circle) and as ``Denoiser`` gives it by default
(where the slice's rim steps to that value, each outside pixel takes its nearest value inside). The figure shows
the full-view reconstruction, the sparse one and both outputs; the rows whose outside was filled are printed.
Any scan ``bluesky-tomogan finetune`` reads, for example Diamond I12's in Savu's test data (docs/benchmarks.md,
"Real data: a Diamond I12 scan")::

    python benchmarks/rim_fill.py $D/image_test/tiffs --angles $D/image_test/angles91.txt \\
        --flats $D/image_test/flat_00001.tiff --darks $D/image_test/dark_00001.tiff --rows 8 48 \\
        --figure docs/rim_fill.png
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from bluesky_tomogan.finetune import read_scan
from bluesky_tomogan.finetune.pairs import rotation_center
from bluesky_tomogan.inference import load_denoiser
from bluesky_tomogan.reconstruction import corrected_sinogram, reconstruct


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path")
    ap.add_argument("--rows", type=int, nargs="+", required=True, help="detector rows to reconstruct")
    ap.add_argument("--every", type=int, default=4, help="keep every k-th projection (default 4)")
    ap.add_argument("--model", default="tomogan-slice")
    ap.add_argument("--angles")
    ap.add_argument("--flats")
    ap.add_argument("--darks")
    ap.add_argument("--key")
    ap.add_argument("--figure", required=True)
    args = ap.parse_args(argv)
    scan = read_scan(args.path, key=args.key, angles=args.angles, flats=args.flats, darks=args.darks)
    center = rotation_center(scan)
    sparse = np.arange(0, len(scan.angles), args.every)
    den = load_denoiser(args.model, backend="onnxruntime")
    panels = []
    for row in args.rows:
        t = corrected_sinogram(scan.projections[:, row, :], scan.flats[row], scan.darks[row])
        reference = reconstruct(t, scan.angles, center).slice
        noisy = reconstruct(t[sparse], scan.angles[sparse], center).slice
        context = np.stack([noisy] * den.depth)
        den.fill_outside_circle = False
        as_stored = den.denoise_context(context)
        den.fill_outside_circle, filled_before = True, den.slices_rim_filled
        filled = den.denoise_context(context)
        print(f"row {row}: outside {'filled' if den.slices_rim_filled > filled_before else 'as stored (no step)'}")
        panels.append((row, [reference, noisy, as_stored, filled]))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = [f"{len(scan.angles)}-view FBP", f"{len(sparse)}-view FBP", f"{args.model}, outside as stored",
              f"{args.model}, outside filled"]
    fig, axes = plt.subplots(len(panels), 4, figsize=(12, 3 * len(panels)), squeeze=False)
    for ax_row, (row, images) in zip(axes, panels, strict=True):
        lo, hi = np.percentile(images[0], [1, 99])
        for ax, image, title in zip(ax_row, images, titles, strict=True):
            ax.imshow(image, cmap="gray", vmin=lo, vmax=hi)
            ax.set_title(f"row {row}: {title}", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(args.figure, dpi=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
