"""What a photon counter's masked pixels do to denoising, with and without the nearest-pixel fill.

Usage::

    python benchmarks/masked_pixels.py [--fraction 0.001] [--size 256] [--backends onnxruntime openvino litert]

A context of Poisson counts (as many frames as the model takes) (a disc absorbing 55 % in a 1000-photon beam), as
``uint32``, with a random ``fraction`` of its pixels and one 3-pixel column set to
``2**32 - 1`` (an Eiger-type mask). For each backend (precision ``auto``), SSIM against the
noise-free frame on the unmasked pixels: the context without a mask, the masked context as
the ``Denoiser`` gets it (masked pixels filled from their nearest unmasked neighbours), and
the same values as ``float32`` (no mask is recognised in floats: the gap values reach the
network, as before ``bluesky_tomogan.masked``); and the largest difference from the unmasked
result 8 pixels or more away from any masked pixel, and right beside the lone masked pixels (a
bad pixel's eight neighbours, none masked: those get the median of their neighbours, the gap the
nearest value). The CPU is named in the output.
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import ndimage

from bluesky_tomogan import load_denoiser
from bluesky_tomogan.bench import cpu_name
from bluesky_tomogan.metrics import ssim


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fraction", type=float, default=0.001)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--backends", nargs="+", default=["onnxruntime", "openvino", "litert"])
    args = ap.parse_args(argv)

    rng = np.random.default_rng(0)
    n = args.size
    yy, xx = np.mgrid[:n, :n]
    clean = 1000 * np.exp(-0.8 * (((xx - n / 2) ** 2 + (yy - n / 2) ** 2) < (0.3 * n) ** 2))
    plain = np.stack([rng.poisson(clean) for _ in range(5)]).astype(np.uint32)
    mask = rng.random((n, n)) < args.fraction
    mask[:, n // 3 : n // 3 + 3] = True
    masked = plain.copy()
    masked[:, mask] = np.iinfo(np.uint32).max
    far = ~ndimage.binary_dilation(mask, iterations=8)
    lone = mask & ~(ndimage.convolve(mask.astype(int), np.ones((3, 3), int), mode="constant") > 1)
    beside_lone = ndimage.binary_dilation(lone, np.ones((3, 3), bool)) & ~mask
    truth = np.where(mask, 0, clean)

    print(f"CPU: {cpu_name()}; {n}x{n}, {mask.mean():.2%} of the pixels masked")
    print("| backend / precision | SSIM without a mask | masked, filled | masked values as float32 (no fill) "
          "| max difference 8+ px from the mask (counts) | beside a lone masked pixel |")
    print("|---|---|---|---|---|---|")
    for backend in args.backends:
        den = load_denoiser("tomogan-projection", backend=backend)
        depth = slice(5 // 2 - den.depth // 2, 5 // 2 + den.depth // 2 + 1)  # the middle frames
        without = den.denoise_context(plain[depth])
        filled = den.denoise_context(masked[depth])
        unfilled = den.denoise_context(masked[depth].astype(np.float32))
        scores = [ssim(truth, np.where(mask, 0, out)) for out in (without, filled, unfilled)]
        worst = float(np.abs(filled - without)[far].max())
        near = float(np.abs(filled - without)[beside_lone].max()) if beside_lone.any() else float("nan")
        row = " | ".join(f"{s:.4f}" for s in scores)
        print(f"| {den.backend} / {den.precision} | {row} | {worst:.1f} | {near:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
