"""Speed of every available backend and precision through the full ``Denoiser`` path.

Each configuration runs in its own subprocess, so its peak RSS is its own.
Latency is one context (as many frames as the network reads) -> one denoised
frame (normalisation, tiling, inference, blending); throughput streams
consecutive frames. Used by
``bluesky-tomogan bench`` and ``benchmarks/speed.py`` (which adds the
TensorFlow/Keras fp32 reference).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .cpu import cpu_name
from .inference.registry import configurations

__all__ = ["CONFIGS", "measure", "run", "table", "main", "warm_up", "cpu_name"]

#: Warm-up before timing: a scan runs hundreds of frames, so steady state is what counts.
#: On the AMX machine OpenVINO int8 at 1024x1024 took ~220 ms per frame for its first
#: ~5 runs after compiling, then ~100 ms; two warm-up runs timed the slow phase.
WARM_UP_RUNS = 3
WARM_UP_SECONDS = 3.0

#: Every (backend, precision) the registry knows; one that cannot run here is reported as skipped.
CONFIGS: list[tuple[str, str]] = configurations()


def _frames(size: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(size)
    yy, xx = np.mgrid[:size, :size] / size
    base = 800 + 600 * np.sin(9 * xx) * np.cos(7 * yy)
    return rng.poisson(np.broadcast_to(base, (n, size, size))).astype(np.uint16)


def warm_up(step: Callable[[], object], runs: int = WARM_UP_RUNS, seconds: float = WARM_UP_SECONDS) -> None:
    """Call ``step()`` at least ``runs`` times and for at least ``seconds`` (same rule for every runtime)."""
    t_end = time.perf_counter() + seconds
    for i in range(10_000):
        step()
        if i + 1 >= runs and time.perf_counter() >= t_end:
            break


def measure(model: str, backend: str, precision: str, size: int, repeats: int, threads: int | None) -> dict[str, Any]:
    """Latency/throughput/RSS of one configuration (call in a fresh process for a clean RSS)."""
    from .errors import TomoGANError
    from .inference import load_denoiser

    try:
        den = load_denoiser(model, backend=backend, precision=precision, threads=threads)
    except TomoGANError as exc:
        return {"backend": backend, "precision": precision, "size": size, "skipped": str(exc).splitlines()[0]}
    depth = den.depth
    frames = _frames(size, max(repeats, 4) + depth - 1)
    warm_up(lambda: den.denoise_context(frames[:depth]))  # compile per shape, allocate, reach steady state
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        den.denoise_context(frames[i : i + depth])
        times.append(time.perf_counter() - t0)
    n_stream = min(8, len(frames))
    t0 = time.perf_counter()
    den.denoise(frames[:n_stream])
    stream = n_stream / (time.perf_counter() - t0)
    t = np.array(times) * 1e3
    return {
        "backend": den.backend, "precision": den.precision, "size": size,
        "min_ms": float(t.min()), "median_ms": float(np.median(t)), "p99_ms": float(np.percentile(t, 99)),
        "frames_per_s": float(stream),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _child(queue: Any, args: tuple[Any, ...]) -> None:
    queue.put(measure(*args))


def run(model: str, sizes: Sequence[int], repeats: int, threads: int | None = None,
        configs: Sequence[tuple[str, str]] = tuple(CONFIGS)) -> list[dict[str, Any]]:
    """Measure every configuration at every size, each in a spawned subprocess."""
    ctx = mp.get_context("spawn")
    results = []
    for size in sizes:
        for backend, precision in configs:
            q = ctx.Queue()
            p = ctx.Process(target=_child, args=(q, (model, backend, precision, size, repeats, threads)))
            p.start()
            results.append(q.get())
            p.join()
    return results


def table(results: list[dict[str, Any]], reference: dict[int, float] | None = None,
          reference_min: dict[int, float] | None = None) -> str:
    """Markdown table; ``reference`` maps size -> reference median ms for the speed-up column.

    With ``reference_min`` (size -> reference min ms), the column also gives the ratio of
    the minima, which neighbours on a shared machine disturb less than the medians.
    """
    head = "| size | backend | precision | min ms | median ms | p99 ms | p99/p50 | frames/s | peak RSS MB |"
    cols = "|---|---|---|---|---|---|---|---|---|"
    if reference:
        head += " vs Keras fp32: median (min) |" if reference_min else " vs Keras fp32 |"
        cols += "---|"
    lines = [head, cols]
    for r in results:
        if "skipped" in r:
            continue
        row = (f"| {r['size']} | {r['backend']} | {r['precision']} | {r['min_ms']:.1f} | {r['median_ms']:.1f} | "
               f"{r['p99_ms']:.1f} | {r['p99_ms'] / r['median_ms']:.2f} | {r['frames_per_s']:.2f} | "
               f"{r['peak_rss_mb']:.0f} |")
        if reference:
            ref = reference.get(r["size"])
            best = (reference_min or {}).get(r["size"])
            ratio = f" {ref / r['median_ms']:.1f}x" if ref else ""
            row += (ratio + (f" ({best / r['min_ms']:.1f}x)" if best else "")) + " |"
        lines.append(row)
    skipped = sorted({f"{r['backend']}/{r['precision']}: {r['skipped']}" for r in results if "skipped" in r})
    return "\n".join(lines + ([""] + [f"- skipped {s}" for s in skipped] if skipped else []))


def main(argv: Sequence[str] | None = None) -> int:
    from .cli import count

    ap = argparse.ArgumentParser(prog="bluesky-tomogan bench", description=__doc__)
    ap.add_argument("--model", default="tomogan-projection")
    ap.add_argument("--sizes", type=count(8), nargs="+", default=[512, 1024, 2048])
    ap.add_argument("--repeats", type=count(1), default=10)
    ap.add_argument("--threads", type=count(1), default=None)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    results = run(args.model, args.sizes, args.repeats, args.threads)
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
