"""What a self-ensemble costs: ``Denoiser.denoise`` of one frame with 1, 2, 4 and 8 turned copies.

The whole path (normalisation, padding, tiling, the runtime, the blend and the mapping back),
one model on the backend and precision ``load_denoiser`` picks (or those given), rounds
interleaved so that a slower minute of a shared machine hits every size alike; prints the
median ms per frame and its ratio to the plain network's in the same run.

Usage::

    python benchmarks/self_ensemble_cost.py [--model tomogan-projection] [--size 1024] [--rounds 5]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from bluesky_tomogan.cpu import cpu_name
from bluesky_tomogan.inference import load_denoiser
from bluesky_tomogan.inference.self_ensemble import SELF_ENSEMBLE_SIZES


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tomogan-projection")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    dens = {n: load_denoiser(args.model, backend=args.backend, precision=args.precision, self_ensemble=n)
            for n in SELF_ENSEMBLE_SIZES}
    frames = np.random.default_rng(0).poisson(300, (dens[1].depth, args.size, args.size)).astype(np.uint16)
    for den in dens.values():  # compile and warm every shape (a transposed copy is another shape)
        den.denoise_context(frames)
    times: dict[int, list[float]] = {n: [] for n in dens}
    for _ in range(args.rounds):
        for n, den in dens.items():
            t0 = time.perf_counter()
            den.denoise_context(frames)
            times[n].append(time.perf_counter() - t0)
    base = float(np.median(times[1]))
    print(f"CPU: {cpu_name()}; {dens[1]!r}; {args.size}x{args.size}, median of {args.rounds} rounds")
    for n, t in times.items():
        median = float(np.median(t))
        print(f"self_ensemble={n}: {median * 1e3:7.1f} ms per frame, {median / base:4.2f}x the plain network")
    return 0


if __name__ == "__main__":
    sys.exit(main())
