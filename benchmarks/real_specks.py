"""Bright specks of a real X-ray camera through the projection models, with their host despike off and on.

TomoPy's test data (BSD-3) hold raw images of a Zeiss Xradia X-ray microscope (a lab source, a
CCD): ``test_chip00.xrm`` is one 512x512 uint16 image of a chip, 40 s exposure, about 40 counts
per pixel, with some 1900 isolated bright pixels (hot pixels and scatter hits: 0.7 % of the
pixels, where the training data has zingers at 0.005 %); ``txrm_test_chip_tomo.txrm`` holds
seven 256x256 projections of a chip 15 degrees apart. No noise-free reference exists, so this
counts what a scientist would see:

- ``dark dots``: pixels the model put more than 3 robust sigmas below the 5x5 median of its own
  output, at a bright speck of the raw image (a speck turned into a hole: invented);
- ``specks left``: bright specks of the raw image still more than 3 robust sigmas above that
  median in the output;
- ``removed``: the standard deviation of raw minus denoised, and the raw image's own noise
  (``qc.metrics.noise_sigma``), and QC's ``residual_correlation`` (0.15 and above: the
  denoiser removed structure, flag ``out_of_distribution``).

Fetch the files (or ``git show`` them from a clone of tomopy at that commit)::

    for f in test_chip00.xrm txrm_test_chip_tomo.txrm; do curl -L -o data/$f \\
      https://github.com/tomopy/tomopy/raw/193151fd5ddb35f4523d975b12cf448a6b55c2fe/test/test_tomopy/test_data/$f; done
    python benchmarks/real_specks.py data/test_chip00.xrm data/txrm_test_chip_tomo.txrm [--figure out.png]

The files are read with :class:`bluesky_tomogan.xradia.XradiaFile`, as ``bluesky-tomogan denoise`` reads them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.ndimage import median_filter
from zinger_sweep import fp32_and_auto  # each model in fp32 and in auto

from bluesky_tomogan.bench import cpu_name
from bluesky_tomogan.qc.metrics import FrameMetrics, noise_sigma, residual_metrics
from bluesky_tomogan.xradia import XradiaFile

SIGMAS = 12.0


def read_xrm(path: str | Path) -> np.ndarray:
    """The images of a Zeiss XRM/TXRM file as ``(n, H, W)``."""
    with XradiaFile(path) as xrm:
        return xrm.read(0, xrm.shape[0])


def speck_counts(raw: np.ndarray, denoised: np.ndarray) -> dict[str, float]:
    """Dark dots made at the raw image's bright specks, specks left, and what was removed."""
    raw = raw.astype(np.float32)
    around = median_filter(raw, 5)
    sigma = 1.4826 * float(np.median(np.abs(raw - around)))
    specks = raw - around > 6 * sigma
    out_around = median_filter(denoised, 5)
    m = residual_metrics(raw, denoised, FrameMetrics())
    return {"specks": int(specks.sum()),
            "dark_dots": int((specks & (out_around - denoised > 3 * sigma)).sum()),
            "specks_left": int((specks & (denoised - out_around > 3 * sigma)).sum()),
            "removed_sigma": float(m.removed_sigma), "raw_noise_sigma": float(noise_sigma(raw)),
            "residual_correlation": float(m.residual_correlation)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+")
    ap.add_argument("--models", nargs="+", default=["tomogan-projection", "tomogan-projection-light"])
    ap.add_argument("--figure", help="write raw / denoised (despike off, on) crops of the first file here")
    args = ap.parse_args(argv)
    denoisers = fp32_and_auto(args.models)
    print(f"CPU: {cpu_name()}\n")
    print("| image | model | despike | specks | dark dots at specks | specks left | removed sigma (raw noise) | "
          "residual correlation |")
    print("|---|---|---|---|---|---|---|---|")
    crops = []
    for path in args.files:
        stack = read_xrm(path)
        # a tomography series is denoised as one (its neighbours the context); one image as itself
        frame_index = len(stack) // 2
        for label, den in denoisers.items():
            for sigmas in (None, SIGMAS):
                den.despike_sigmas = sigmas
                out = den.denoise(stack)[frame_index]
                c = speck_counts(stack[frame_index], out)
                print(f"| {Path(path).name} | {label} | {'off' if sigmas is None else f'{sigmas:g} sigmas'} | "
                      f"{c['specks']} | {c['dark_dots']} | {c['specks_left']} | {c['removed_sigma']:.2f} "
                      f"({c['raw_noise_sigma']:.2f}) | {c['residual_correlation']:.3f} |", flush=True)
                if args.figure and path == args.files[0] and label.endswith("fp32") and "light" in label:
                    crops.append((f"{label}, despike {'off' if sigmas is None else 'on'}", out))
        if args.figure and path == args.files[0]:
            crops.insert(0, ("raw", stack[frame_index].astype(np.float32)))
    if args.figure and crops:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        lo, hi = np.percentile(crops[0][1], [1, 99.5])
        fig, axes = plt.subplots(1, len(crops), figsize=(4 * len(crops), 4.3))
        for ax, (title, image) in zip(axes, crops, strict=True):
            h, w = image.shape
            ax.imshow(image[h // 3 : h // 3 + 128, w // 2 - 64 : w // 2 + 64], cmap="gray", vmin=lo, vmax=hi)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(args.figure, dpi=80)
        print(f"\nfigure: {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
