"""Per-pixel cost of one OpenVINO call at several tile sizes (batch 1): does cutting a frame into
cache-sized tiles pay on this CPU?

Each size runs the model's session directly (no overlap), 3 warm-up calls, then at least 5 calls
and 2 s; prints the median ms per call and per 1024x1024 worth of pixels. The input is what the
session sees in use: noisy frames normalised to the model's range (0..1 between the 0.5th and 99.5th
percentiles). Not Gaussian noise around 0: half of its pixels lie beyond an int8 IR's input grid, and
the host's isolated-spike rule then looks up each one's 3x3 median (2.2 s per 1024x1024 call instead
of 90 ms with the light projection model on an Intel Xeon with AMX).

Usage::

    python benchmarks/tile_cost.py [--model tomogan-projection] [--precision int8] [--ratio 50]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from bluesky_tomogan.cpu import cpu_name
from bluesky_tomogan.inference import load_denoiser
from bluesky_tomogan.normalise import normalise, robust_range


def _normalised_frames(rng: np.random.Generator, depth: int, size: int) -> np.ndarray:
    """``depth`` noisy frames of a disc of sample in a beam (500 photons/pixel in air), normalised as
    :func:`~bluesky_tomogan.normalise.normalise` does: (1, depth, size, size) float32."""
    y, x = np.mgrid[:size, :size]
    clean = 500 * np.exp(-1.2 * ((x - size / 2) ** 2 + (y - size / 2) ** 2 < (0.35 * size) ** 2))
    frames = rng.poisson(clean, (depth, size, size)).astype(np.float32)
    offset, scale = robust_range(frames[depth // 2])
    return normalise(frames, offset, scale)[None].astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tomogan-projection")
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--ratio", type=float)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 512, 384, 256, 192, 128])
    args = ap.parse_args(argv)
    den = load_denoiser(args.model, backend="openvino", precision=args.precision, threads=2, ratio=args.ratio)
    rng = np.random.default_rng(0)
    print(f"CPU: {cpu_name()}; {den!r}, 2 threads")
    for size in args.sizes:
        x = _normalised_frames(rng, den.depth, size)
        for _ in range(3):
            den.session.run(x)
        times: list[float] = []
        t_end = time.perf_counter() + 2.0
        while time.perf_counter() < t_end or len(times) < 5:
            t = time.perf_counter()
            den.session.run(x)
            times.append(time.perf_counter() - t)
        ms = 1000 * float(np.median(times))
        print(f"{size}x{size}: {ms:8.2f} ms per call, {ms * (1024 / size) ** 2:7.1f} ms per 1024x1024 of pixels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
