"""Memory (process RSS) and time of the Denoiser over many frame shapes and very large frames.

Three measurements, each in one process, in the order given (RSS is the whole process's):

- ``--shapes N``: RSS after each of N frame shapes 1024-8k x 1024 (k = 0..N-1), OpenVINO int8,
  with the shapes the session holds compiled (``OpenVINOSession.compiled_shapes``);
- ``--large``: seconds and RSS for one frame each of 2048x2048, 4096x4096, 2160x2560 and
  6000x6000 pixels (tiled above 2048 pixels a side), with the compiled shapes;
- ``--ort-arena``: ONNX Runtime's RSS over 24 random shapes of 800-1024 pixels a side, and its
  median time at 1024x1024, with and without its memory arena (a fresh session each).

Usage::

    python benchmarks/frame_memory.py [--model tomogan-projection] [--shapes 12] [--large] [--ort-arena]
"""

from __future__ import annotations

import argparse
import gc
import time

import numpy as np
import psutil

from bluesky_tomogan.cpu import cpu_name
from bluesky_tomogan.inference import load_card, load_denoiser


def rss_mb() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


def shapes(model: str, n: int) -> None:
    den = load_denoiser(model, backend="openvino", precision="int8")
    rng = np.random.default_rng(0)
    base = rss_mb()
    for k in range(n):
        h, w = 1024 - 8 * k, 1024
        den.denoise(rng.poisson(500, (h, w)).astype(np.uint16))
        print(f"{h}x{w}: RSS +{rss_mb() - base:.0f} MB, {len(den.session.compiled_shapes)} compiled shapes held",
              flush=True)


def large(model: str) -> None:
    den = load_denoiser(model, backend="openvino", precision="int8")
    rng = np.random.default_rng(0)
    for h, w in [(2048, 2048), (4096, 4096), (2160, 2560), (6000, 6000)]:
        frame = rng.poisson(800, (h, w)).astype(np.uint16)
        began = time.perf_counter()
        den.denoise(frame)
        seconds = time.perf_counter() - began
        print(f"{h}x{w}: {seconds:.1f} s, RSS {rss_mb() / 1024:.1f} GB, compiled {den.session.compiled_shapes}",
              flush=True)


def ort_arena(model: str) -> None:
    import onnxruntime as ort

    card = load_card(model)
    path, frames = str(card.path("onnx")), card.in_channels
    for arena in (True, False):
        opts = ort.SessionOptions()
        opts.enable_cpu_mem_arena = arena
        session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        rng = np.random.default_rng(0)
        base = rss_mb()
        for _ in range(24):
            h, w = 8 * rng.integers(100, 129), 8 * rng.integers(100, 129)
            session.run(None, {name: rng.random((1, frames, h, w), np.float32)})
        grown = rss_mb() - base
        x = rng.random((1, frames, 1024, 1024), np.float32)
        times = []
        for _ in range(5):
            began = time.perf_counter()
            session.run(None, {name: x})
            times.append(time.perf_counter() - began)
        print(f"arena {'on' if arena else 'off'}: RSS +{grown:.0f} MB after 24 shapes; "
              f"1024x1024 median {1e3 * np.median(times):.0f} ms", flush=True)
        del session


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tomogan-projection")
    ap.add_argument("--shapes", type=int, default=0, help="frame shapes to run one after another")
    ap.add_argument("--large", action="store_true")
    ap.add_argument("--ort-arena", action="store_true")
    args = ap.parse_args(argv)
    print(f"CPU: {cpu_name()}; model {args.model}")
    if args.shapes:
        shapes(args.model, args.shapes)
    if args.large:
        large(args.model)
    if args.ort_arena:
        ort_arena(args.model)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
