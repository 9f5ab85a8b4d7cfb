"""Per-pixel cost of one OpenVINO call at several tile sizes (batch 1): does cutting a frame into
cache-sized tiles pay on this CPU?

Each size runs the model's session directly (no normalisation, no overlap), 3 warm-up calls, then
at least 5 calls and 2 s; prints the median ms per call and per 1024x1024 worth of pixels.

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
        x = rng.normal(0, 1, (1, den.depth, size, size)).astype(np.float32)
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
