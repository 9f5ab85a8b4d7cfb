"""Host cost of a stream: each frame despiked in every context that holds it, or once.

Usage::

    python benchmarks/stream_cost.py [--models tomogan-projection-light tomogan-projection]
                                     [--backend openvino] [--precision int8] [--size 1024]
                                     [--frames 12] [--rounds 3]

For each model, a stream of ``--frames`` frames (Poisson counts of a smooth sample, a few
zingers) is denoised frame by frame through ``Denoiser.denoise_context`` as the live callback
does, three ways, interleaved in each round so a slow spell of a shared machine hits all of
them: every context anew (no ``frame_keys``: each frame despiked in each of the ``depth``
contexts that hold it), with ``frame_keys`` (each frame despiked once; what the callback does
since session 61), and the whole stack through ``Denoiser.denoise`` (the next frame prepared while the
current one runs). Prints the median ms per frame of each and the keyed stream's speed-up over
the unkeyed one, on this CPU (named in the output), and checks that the three give the same
frames.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from bluesky_tomogan import load_denoiser
from bluesky_tomogan.bench import cpu_name, warm_up
from bluesky_tomogan.frames import context_indices


def stream(size: int, n: int, seed: int = 0) -> np.ndarray:
    """``n`` uint16 frames of a smooth sample at about 800 counts, with zingers at 1e-4 of the pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    base = 800 + 600 * np.sin(9 * xx) * np.cos(7 * yy)
    frames = rng.poisson(np.broadcast_to(base, (n, size, size))).astype(np.float64)
    frames[rng.random(frames.shape) < 1e-4] += 20 * 800
    return np.clip(frames, 0, 65534).astype(np.uint16)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["tomogan-projection-light", "tomogan-projection"])
    ap.add_argument("--backend", default="openvino")
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    frames = stream(args.size, args.frames)
    print(f"CPU: {cpu_name()}; {args.size}x{args.size}, {args.frames} frames per stream, "
          f"{args.backend}/{args.precision}, median of {args.rounds} rounds\n")
    print("| model | each context anew (ms / frame) | frame_keys (ms / frame) | denoise(stack) (ms / frame) "
          "| keyed speed-up |")
    print("|---|---|---|---|---|")
    for model in args.models:
        den = load_denoiser(model, backend=args.backend, precision=args.precision)
        group = np.zeros(len(frames), np.int32)
        contexts = [context_indices(group, i, den.depth) for i in range(len(frames))]
        warm_up(lambda d=den, first=frames[contexts[0]]: d.denoise_context(first))
        times: dict[str, list[float]] = {"anew": [], "keyed": [], "stack": []}
        outputs: dict[str, np.ndarray] = {}
        for _ in range(args.rounds):
            run = object()  # keys unique to this round's stream
            t0 = time.perf_counter()
            outputs["anew"] = np.stack([den.denoise_context(frames[c]) for c in contexts])
            times["anew"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            outputs["keyed"] = np.stack([den.denoise_context(frames[c], frame_keys=[(run, int(j)) for j in c])
                                         for c in contexts])
            times["keyed"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            outputs["stack"] = den.denoise(frames)
            times["stack"].append(time.perf_counter() - t0)
        same = all(np.array_equal(outputs["anew"], outputs[k]) for k in ("keyed", "stack"))
        ms = {k: 1e3 * statistics.median(v) / len(frames) for k, v in times.items()}
        print(f"| {model} | {ms['anew']:.1f} | {ms['keyed']:.1f} | {ms['stack']:.1f} | "
              f"{ms['anew'] / ms['keyed']:.2f}x |" + ("" if same else " (outputs differ!)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
