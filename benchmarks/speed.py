"""Speed of every backend/precision vs the same network in TensorFlow/Keras fp32.

The Keras reference (the original TomoGAN's stack) is the same architecture
built by ``bluesky_tomogan.export.keras_model`` and timed with
``predict_on_batch`` on one (1, H, W, 3) input in the same run, so the ratios
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

from bluesky_tomogan.bench import run, table


def keras_reference(size: int, repeats: int, threads: int, queue: Any) -> None:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    from bluesky_tomogan.export.keras_model import build_keras_generator
    from bluesky_tomogan.inference.load import load_card

    model = build_keras_generator(load_card("tomogan-projection")["architecture"], size, size)
    x = np.random.default_rng(0).random((1, size, size, 3), np.float32)
    for _ in range(2):
        model.predict_on_batch(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.predict_on_batch(x)
        times.append(time.perf_counter() - t0)
    queue.put(float(np.median(times) * 1e3))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tomogan-projection")
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    ctx = mp.get_context("spawn")
    reference = {}
    for size in args.sizes:
        q = ctx.Queue()
        p = ctx.Process(target=keras_reference, args=(size, args.repeats, args.threads, q))
        p.start()
        reference[size] = q.get()
        p.join()
        print(f"Keras fp32 {size}x{size}: {reference[size]:.1f} ms (median of {args.repeats})", flush=True)
    results = run(args.model, args.sizes, args.repeats, args.threads)
    print(table(results, reference))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"keras_fp32_median_ms": reference, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
