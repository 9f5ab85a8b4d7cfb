"""How fast can a network of a given shape be on this CPU? Untrained networks, plain OpenVINO.

Quality aside, which architectures could run a 1024x1024 frame 6x (issue 20, no AMX) or 20x
(AMX) faster than the full network in Keras fp32? For each candidate (the full network, the
space-to-depth network, and space-to-depth networks widened by a channel multiplier or at
their top level only) this exports the untrained network's correction to ONNX and times it
in OpenVINO fp32, bf16 and int8 with every convolution quantised (NNCF, random calibration:
the speed does not depend on the weights; int8's float parts in bf16 where this CPU runs
bf16 faster, :func:`~bluesky_tomogan.inference.backends.openvino.int8_float_precision`),
2 threads, median of 5 after 3 warm-up calls, each network in a fresh process. Keras fp32 of
the full network is measured first, in the same run. This is the network alone, without
the ``Denoiser`` path around it (normalisation, despike: 10-15 ms per frame here).

Usage::

    python benchmarks/architecture_speed.py [--names full s2d "s2d w1.25"] [--size 1024]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from typing import Any

import numpy as np
from speed import keras_reference_in_process

from bluesky_tomogan.cpu import SPEED_FLAGS, cpu_flags, cpu_name

S2D: dict[str, Any] = {"input_downscale": 2, "downscale": "space-to-depth"}
TOP = ("stem.0", "enc1.0", "enc1.2", "dec1.0", "dec1.2")
CANDIDATES: dict[str, dict[str, Any]] = {
    "full": {},
    "s2d": S2D,
    "s2d w1.25": S2D | {"width": 1.25},
    "s2d w1.5": S2D | {"width": 1.5},
    "s2d top64": S2D | {"channels_override": dict.fromkeys(TOP, 64)},
}


def _timed(model: Any, x: np.ndarray, repeats: int = 5) -> float:
    for _ in range(3):
        model(x)
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - began)
    return 1e3 * float(np.median(times))


def measure(name: str, size: int, queue: Any) -> None:
    import nncf
    import openvino as ov
    import torch

    from bluesky_tomogan.export.onnx import export_onnx
    from bluesky_tomogan.inference.backends.openvino import int8_float_precision
    from bluesky_tomogan.model.network import GeneratorConfig, TomoGANGenerator

    torch.manual_seed(0)
    net = TomoGANGenerator(GeneratorConfig(**CANDIDATES[name])).eval()
    core, threads = ov.Core(), {"INFERENCE_NUM_THREADS": 2}
    x = np.random.default_rng(0).random((1, 3, size, size), np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(export_onnx(net.correction_network(), f"{tmp}/m.onnx"))
        out = {"name": name, "macs_per_pixel": net.macs_per_pixel()}
        for precision in ("f32", "bf16"):
            model = core.compile_model(core.read_model(path), "CPU", threads | {"INFERENCE_PRECISION_HINT": precision})
            out[precision] = _timed(model, x)
        calibration = [np.random.default_rng(i).random((1, 3, 128, 128), np.float32) for i in range(8)]
        int8 = nncf.quantize(core.read_model(path), nncf.Dataset(calibration), subset_size=8)
        float_parts = int8_float_precision()
        model = core.compile_model(int8, "CPU", threads | {"INFERENCE_PRECISION_HINT": float_parts})
        out["int8"] = _timed(model, x)
    queue.put(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--names", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    ap.add_argument("--size", type=int, default=1024)
    args = ap.parse_args(argv)
    keras = keras_reference_in_process(args.size, 5, 2)[0]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    flags = [f for f in SPEED_FLAGS if f in cpu_flags()]
    print(f"CPU: {cpu_name()} ({', '.join(flags)}); 2 threads; {args.size}x{args.size}; "
          f"Keras fp32 of the full network {keras:.0f} ms\n")
    print("| network | MACs / pixel | fp32 ms | bf16 ms | int8 ms | x Keras fp32 (bf16 / int8) |")
    print("|---|---|---|---|---|---|")
    for name in args.names:
        process = ctx.Process(target=measure, args=(name, args.size, queue))
        process.start()
        process.join()
        r = queue.get(timeout=900)  # a crashed measurement must not hang the benchmark
        print(f"| {name} | {r['macs_per_pixel']:,.0f} | {r['f32']:.0f} | {r['bf16']:.0f} | {r['int8']:.0f} | "
              f"{keras / r['bf16']:.1f} / {keras / r['int8']:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
