"""A check on real synchrotron data: sparse-view slices of a tooth (APS), against the full-view slice.

The data: ``tooth.h5`` of TomoPy (BSD-3, UChicago Argonne), a Data Exchange file of 181
projections (0-180 degrees) of 2 detector rows x 640 columns with 10 flats and 10 darks,
measured at the Advanced Photon Source. Get it with::

    curl -L -o data/tooth.h5 https://github.com/tomopy/tomopy/raw/9e5f8617e614732d3dd3d22eb4c8fbca7b9dd40b/tomopy/data/tooth.h5

For each row, the filtered back-projection of every ``--every``-th projection (sparse view:
streaks and noise) is denoised by the slice models and by total variation and BM3D, and
compared with the filtered back-projection of all 181 projections (the reference; itself
not noise-free). TV and BM3D get their strength tuned on the reference (an oracle). SSIM
inside the reconstruction circle, in the reference's 1-99 percentile scale.

Usage::

    python benchmarks/real_tooth.py data/tooth.h5 [--every 4] [--models tomogan-slice before=runs/x] [--figure f.png]

Any other scan that ``bluesky-tomogan finetune`` reads is checked the same way (frames stored alone take
``--angles/--flats/--darks``; ``--row-step k`` reconstructs every k-th detector row), for example
Diamond I12's scan in Savu's test data (docs/benchmarks.md, "Real data: a Diamond I12 scan")::

    python benchmarks/real_tooth.py image_test/tiffs --angles angles91.txt --flats image_test/flat_00001.tiff \
        --darks image_test/dark_00001.tiff --row-step 8

A model runs in fp32 in ONNX Runtime; ``MODEL:PRECISION`` (``tomogan-slice-light:auto``,
``tomogan-slice:int8``) runs it as ``load_denoiser(MODEL, precision=PRECISION)`` does, on the
backend that picks; ``MODEL:PRECISION:N`` (``tomogan-slice:fp32:8``) with a self-ensemble of ``N``.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from accuracy import classical  # the same baselines as benchmarks/accuracy.py
from skimage.metrics import structural_similarity

from bluesky_tomogan.finetune import read_scan
from bluesky_tomogan.finetune.pairs import rotation_center
from bluesky_tomogan.inference import load_denoiser
from bluesky_tomogan.reconstruction import corrected_sinogram, reconstruct


def scaled_ssim(reference: np.ndarray, image: np.ndarray, mask: np.ndarray) -> float:
    lo, hi = np.percentile(reference[mask], [1, 99])
    a, b = (reference - lo) / (hi - lo), (image - lo) / (hi - lo)
    _, full = structural_similarity(a, b, data_range=1.0, full=True)
    return float(full[mask].mean())


def _denoiser(spec: str):
    model, _, rest = spec.partition(":")
    precision, _, copies = rest.partition(":")
    self_ensemble = int(copies or 1)
    if not precision:
        return load_denoiser(model, backend="onnxruntime", self_ensemble=self_ensemble)
    return load_denoiser(model, precision=precision, self_ensemble=self_ensemble)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path")
    ap.add_argument("--every", type=int, default=4, help="keep every k-th projection (default 4: 46 of 181)")
    ap.add_argument("--models", nargs="+", default=["tomogan-slice"],
                    help="shipped names, cards or directories; LABEL=MODEL names a model's row and panel; "
                         "MODEL:PRECISION (auto, int8, bf16, fp32) runs it on the backend load_denoiser picks "
                         "instead of ONNX Runtime fp32; MODEL:PRECISION:N with a self-ensemble of N (1, 2, 4, 8)")
    ap.add_argument("--angles", help="the projections' angles in degrees, a file (as `finetune --angles` reads)")
    ap.add_argument("--flats", help="flat fields: a file or directory (as `finetune --flats` reads)")
    ap.add_argument("--darks", help="dark fields: a file or directory (as `finetune --darks` reads)")
    ap.add_argument("--key", help="the projections' dataset in an HDF5 file")
    ap.add_argument("--row-step", type=int, default=1,
                    help="reconstruct every k-th detector row (default 1: all; the figure shows the first)")
    ap.add_argument("--reference-filter", metavar="METHOD:STRENGTH",
                    help="compare with the full-view slice denoised by a classical filter (tv or bm3d, strength in "
                         "multiples of its estimated noise, e.g. bm3d:1) instead of the full-view slice itself: a "
                         "reference denoiser's output, whose noise a filter tuned on it cannot be rewarded for keeping")
    ap.add_argument("--per-row", action="store_true", help="print each row's SSIM too")
    ap.add_argument("--figure")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    reference_filter = None
    if args.reference_filter:
        method, _, strength = args.reference_filter.partition(":")
        reference_filter = classical(method, float(strength or 1))
    scan = read_scan(args.path, key=args.key, angles=args.angles, flats=args.flats, darks=args.darks)
    center = rotation_center(scan)
    sparse = np.arange(0, len(scan.angles), args.every)
    named = dict(m.split("=", 1) if "=" in m else (m, m) for m in args.models)
    denoisers = {label: _denoiser(model) for label, model in named.items()}
    results: dict[str, list[float]] = {}
    images: dict[str, np.ndarray] = {}
    rows = list(range(0, scan.shape[1], args.row_step))
    for row in rows:
        t = corrected_sinogram(scan.projections[:, row, :], scan.flats[row], scan.darks[row])
        reference = reconstruct(t, scan.angles, center).slice
        if reference_filter is not None:
            reference = reference_filter(reference)
        noisy = reconstruct(t[sparse], scan.angles[sparse], center).slice
        n = reference.shape[0]
        yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
        mask = yy**2 + xx**2 < (0.45 * n) ** 2
        outputs = {"sparse FBP": noisy}
        for model, den in denoisers.items():
            outputs[model] = den.denoise_context(np.stack([noisy] * den.depth))
        # TV's SSIM is not monotonic in its strength here (91 views: 0.644 at 8, 0.640 at 16,
        # 0.654 at 24 times the noise estimate), so its oracle gets a fine grid, and a long one:
        # at 46 views it peaks near 96 (0.5779; 0.5103 at 40, where the grid ended until session 42);
        # BM3D near 96 and 64 (46 and 91 views: 0.4974 and 0.6415; 0.2328 and 0.5157 at 8, its old end)
        tv_grid = [0.5, 1, 2, 4, 6, 8, 12, 16, 20, 24, 28, 32, 40, 48, 64, 80, 96, 112, 128, 160]
        bm3d_grid = [0.5, 1, 2, 4, 8, 16, 32, 48, 64, 96, 128]
        for method, grid in (("tv", tv_grid), ("bm3d", bm3d_grid)):
            best = max((classical(method, k)(noisy) for k in grid), key=lambda y: scaled_ssim(reference, y, mask))
            outputs[f"{method} (oracle-tuned)"] = best
        for label, img in outputs.items():
            results.setdefault(label, []).append(scaled_ssim(reference, img, mask))
        if not images:
            images = outputs | {"full-view FBP (reference)": reference}
    summary = {k: float(np.mean(v)) for k, v in results.items()}
    print(f"rotation centre {center:.2f}; {len(sparse)} of {len(scan.angles)} projections")
    for k, v in summary.items():
        print(f"{k:45s} SSIM vs full view {v:.4f}")
    if args.per_row:
        print("| row | " + " | ".join(results) + " |")
        print("|---" * (len(results) + 1) + "|")
        for j, row in enumerate(rows):
            print(f"| {row} | " + " | ".join(f"{v[j]:.4f}" for v in results.values()) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    if args.figure:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ref = images["full-view FBP (reference)"]
        lo, hi = np.percentile(ref, [1, 99])
        c = ref.shape[0] // 2
        crop = slice(c - min(c, 160), c + min(c, 160))
        fig, axes = plt.subplots(1, len(images), figsize=(3.2 * len(images), 3.6))
        for ax, (label, img) in zip(axes, images.items(), strict=True):
            ax.imshow(img[crop, crop], cmap="gray", vmin=lo, vmax=hi)
            ax.set_title(label, fontsize=8)
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(args.figure, dpi=80)
    return 0


if __name__ == "__main__":
    sys.exit(main())
