"""Speed of every backend/precision vs the same network in TensorFlow/Keras fp32.

The Keras reference (the original TomoGAN's stack) is the same architecture
built by ``bluesky_tomogan.export.keras_model`` and timed with
``predict_on_batch`` on one (1, H, W, frames) input in the same run, so the ratios
compare like with like on this machine. Needs the ``export`` extra
(TensorFlow); users never do.

Usage::

    python benchmarks/speed.py [--sizes 512 1024 2048] [--repeats 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bluesky_tomogan.bench import run, table, warm_up


def keras_reference(size: int, repeats: int, threads: int, queue: Any) -> None:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    from bluesky_tomogan.export.keras_model import build_keras_generator
    from bluesky_tomogan.inference.load import load_card

    arch = dict(load_card("tomogan-projection").architecture)
    model = build_keras_generator(arch, size, size)
    x = np.random.default_rng(0).random((1, size, size, int(arch.get("in_channels", 3))), np.float32)
    warm_up(lambda: model.predict_on_batch(x))  # the same warm-up rule as every backend
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.predict_on_batch(x)
        times.append(time.perf_counter() - t0)
    queue.put((float(np.median(times) * 1e3), float(np.min(times) * 1e3)))



def keras_reference_in_process(size: int, repeats: int, threads: int) -> tuple[float, float]:
    """:func:`keras_reference` in a spawned process of its own: ``(median ms, min ms)``, nan if it failed
    (no TensorFlow: the ``export`` extra)."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=keras_reference, args=(size, repeats, threads, q))
    p.start()
    p.join()
    return q.get() if p.exitcode == 0 and not q.empty() else (float("nan"), float("nan"))

def plot(reference: dict[int, float], results: list[dict[str, Any]], path: Path) -> None:
    """Bar chart: median ms per frame per configuration and size, Keras fp32 as the reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if "skipped" not in r]
    labels = ["Keras fp32 (reference)"] + sorted({f"{r['backend']} {r['precision']}" for r in ok})
    sizes = sorted(reference)
    fig, ax = plt.subplots(figsize=(9, 4.5), constrained_layout=True)
    width = 0.8 / len(labels)
    for j, label in enumerate(labels):
        values = []
        for size in sizes:
            if j == 0:
                values.append(reference[size])
            else:
                match = [r["median_ms"] for r in ok
                         if f"{r['backend']} {r['precision']}" == label and r["size"] == size]
                values.append(match[0] if match else np.nan)
        ax.bar(np.arange(len(sizes)) + j * width, values, width, label=label)
    ax.set_xticks(np.arange(len(sizes)) + 0.4 - width / 2, [f"{s}x{s}" for s in sizes])
    ax.set_yscale("log")
    ax.set_ylabel("ms per frame (median, full Denoiser path)")
    ax.set_title("TomoGAN denoising on 2 CPU cores")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tomogan-projection")
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    ap.add_argument("--plot", help="write a PNG bar chart here")
    args = ap.parse_args(argv)
    reference, reference_min = {}, {}
    for size in args.sizes:
        reference[size], reference_min[size] = keras_reference_in_process(size, args.repeats, args.threads)
        print(f"Keras fp32 {size}x{size}: {reference[size]:.1f} ms median, {reference_min[size]:.1f} ms min "
              f"of {args.repeats}", flush=True)
    results = run(args.model, args.sizes, args.repeats, args.threads)
    print(table(results, reference, reference_min))
    if args.plot:
        plot(reference, results, Path(args.plot))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"keras_fp32_median_ms": reference, "keras_fp32_min_ms": reference_min,
                                               "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
