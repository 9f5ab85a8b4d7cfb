"""Milliseconds per 1024x1024 frame of several models or forms on one backend, interleaved.

Each round runs every model once in turn, so that a slow spell of a shared machine slows them
alike; the medians of the rounds are compared within this one run. A model is a shipped name,
a card or a model directory, optionally ``:BACKEND`` (default ``litert``) and ``:PRECISION``
(default ``auto``: a model directory exported with ``--no-measure`` has no measured int8 loss,
so ``auto`` runs it in fp32), run through ``Denoiser.denoise_context``.

Usage::

    python benchmarks/interleaved_speed.py tomogan-slice-light runs/slt-copies tomogan-slice [--rounds 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from light_gap import load  # the same NAME[:BACKEND[:PRECISION]] specs

from bluesky_tomogan.cpu import cpu_name
from bluesky_tomogan.frames import centred


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="MODEL[:BACKEND[:PRECISION]], backend litert by default")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", type=int, default=1024)
    args = ap.parse_args(argv)
    denoisers = {}
    for spec in args.models:
        denoisers[spec] = load(spec, backend="litert")
    # one context for all, as deep as the deepest network reads; each gets its middle frames
    depth = max(den.depth for den in denoisers.values())
    frames = np.random.default_rng(0).normal(1000, 50, (depth, args.size, args.size)).astype(np.float32)
    contexts = {spec: centred(frames, den.depth) for spec, den in denoisers.items()}
    for spec, den in denoisers.items():
        den.denoise_context(contexts[spec])  # compile and warm up
    times: dict[str, list[float]] = {spec: [] for spec in denoisers}
    for _ in range(args.rounds):
        for spec, den in denoisers.items():
            began = time.perf_counter()
            den.denoise_context(contexts[spec])
            times[spec].append(time.perf_counter() - began)
    print(f"CPU: {cpu_name()}; {args.size}x{args.size}, medians of {args.rounds} interleaved rounds")
    for spec, t in times.items():
        print(f"{spec:40s} {denoisers[spec].session.backend}/{denoisers[spec].precision}, "
              f"{denoisers[spec].depth} frames: "
              f"{1e3 * np.median(t):.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
