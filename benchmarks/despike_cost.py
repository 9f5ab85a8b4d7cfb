"""What the host despike of the space-to-depth model costs per context, against a whole-frame median.

Usage::

    python benchmarks/despike_cost.py [--sizes 512 1024] [--repeats 20]
                                      [--data data/sim_projection_dose.h5 --models tomogan-projection-s2d-aio ...]

For each size, a (3, H, W) context of Poisson counts (500 photons) with a few zingers:
median ms of ``bluesky_tomogan.despike.remove_isolated_spikes`` (what the ``Denoiser``
runs for a card with ``input_despike``) and of the plain rule with
``scipy.ndimage.median_filter`` on every frame, on this CPU (named in the output).

With ``--data``: mean SSIM / PSNR of each model through ``Denoiser.denoise_context``
(ONNX Runtime fp32) on every 8th test frame of that dataset, with the despike off and
on (``Denoiser.despike_sigmas``), whatever the model's card asks for.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
from scipy.ndimage import median_filter

from bluesky_tomogan.bench import cpu_name
from bluesky_tomogan.despike import remove_isolated_spikes


def whole_frame_rule(frames: np.ndarray, sigmas: float = 12.0) -> np.ndarray:
    """The same rule with the 3x3 median of every pixel (the reference the despike avoids)."""
    for frame in frames:
        median = median_filter(frame, 3, mode="nearest")
        sigma = 1.4826 * float(np.median(np.abs(frame - median)))
        spike = frame - median > sigmas * max(sigma, 1e-6)
        frame[spike] = median[spike]
    return frames


def time_ms(fn: Callable[[np.ndarray], object], context: np.ndarray, repeats: int) -> float:
    fn(context.copy())
    times = []
    for _ in range(repeats):
        work = context.copy()
        t0 = time.perf_counter()
        fn(work)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def quality(model: str, data: str, sigmas: float | None) -> tuple[float, float]:
    """Mean SSIM and PSNR of ``model`` on every 8th test frame of ``data`` (context within each scan)."""
    from bluesky_tomogan import load_denoiser
    from bluesky_tomogan.frames import context_indices
    from bluesky_tomogan.metrics import psnr, ssim
    from bluesky_tomogan.simulate.datasets import read_dataset

    test = read_dataset(data).split("test")
    den = load_denoiser(model, backend="onnxruntime")
    den.despike_sigmas = sigmas
    scores = []
    for i in range(1, len(test.gt), 8):
        out = den.denoise_context(test.ns[context_indices(test.group, i, den.depth)])
        scores.append((ssim(test.gt[i], out), psnr(test.gt[i], out)))
    s, p = np.mean(scores, axis=0)
    return float(s), float(p)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--data", help="a TomoGAN-style HDF5 whose test frames score the models")
    ap.add_argument("--models", nargs="+", default=["tomogan-projection-s2d-aio", "tomogan-projection-aio"])
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    print(f"CPU: {cpu_name()}; one thread (numpy); median of {args.repeats}\n")
    print("| context | despike (candidates only) | whole-frame 3x3 median |")
    print("|---|---|---|")
    for size in args.sizes:
        context = rng.poisson(500, (3, size, size)).astype(np.float32)
        hits = rng.integers(0, size, (3, 20, 2))
        for f, pixels in enumerate(hits):
            context[f, pixels[:, 0], pixels[:, 1]] += 10_000
        fast = time_ms(lambda c: remove_isolated_spikes(c, 12.0), context, args.repeats)
        plain = time_ms(whole_frame_rule, context, args.repeats)
        print(f"| 3x{size}x{size} | {fast:.1f} ms | {plain:.1f} ms |")
    if args.data:
        print("\n| model | SSIM / PSNR, despike off | despike on (12 sigmas) |")
        print("|---|---|---|")
        for model in args.models:
            off, on = quality(model, args.data, None), quality(model, args.data, 12.0)
            print(f"| {model} | {off[0]:.4f} / {off[1]:.2f} dB | {on[0]:.4f} / {on[1]:.2f} dB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
