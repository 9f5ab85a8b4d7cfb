"""Where the time goes inside one network: OpenVINO's own per-layer counters.

Usage::

    python benchmarks/layer_profile.py MODEL.onnx|MODEL.int8.xml [...] [--size 512] [--precision bf16]
        [--top 12] [--sub-pixel]

Compiles each model for one ``(1, frames, size, size)`` input with ``PERF_COUNT`` on (2 threads,
latency hint), runs it 5 times to warm up and 10 times timed, and prints the wall time
per call and the layers that took longest (mean ms, layer type, the kernel OpenVINO chose),
with every convolution's weight shape. Use it to compare a pruned ratio with the full
network: a layer whose time does not shrink with its channels is bound by memory traffic.
``--precision`` is OpenVINO's ``INFERENCE_PRECISION_HINT`` (``bf16`` or ``f32``; for an int8
IR it is the precision of the graph's float parts). ``--sub-pixel`` profiles an int8 IR as the
session runs it on a CPU without AVX-512: its transposed convolutions rewritten as convolutions
and pixel shuffles (``bluesky_tomogan.inference.backends.sub_pixel``).
"""

from __future__ import annotations

import argparse
import collections
import sys
import time

import numpy as np

from bluesky_tomogan.cpu import cpu_name


def conv_shapes(model: object) -> dict[str, str]:
    """``node name -> "out x in x k x k"`` of every (transposed) convolution of an OpenVINO model."""
    shapes = {}
    for op in model.get_ordered_ops():  # type: ignore[attr-defined]
        if op.get_type_name() in ("Convolution", "ConvolutionBackpropData", "GroupConvolution"):
            shape = op.input(1).get_partial_shape()
            shapes[op.get_friendly_name()] = " x ".join(str(d) for d in shape)
    return shapes


def profile(path: str, size: int, precision: str, top: int, sub_pixel: bool = False) -> None:
    import openvino as ov

    from bluesky_tomogan.inference.backends.sub_pixel import sub_pixel_transposed_convolutions

    core = ov.Core()
    model = core.read_model(path)
    if sub_pixel:
        print(f"{path}: {sub_pixel_transposed_convolutions(model)} transposed convolutions rewritten")
    shapes = conv_shapes(model)
    frames = model.input(0).get_partial_shape()[1].get_length()  # the context the network reads
    model.reshape([1, frames, size, size])
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision, "PERF_COUNT": "YES",
                                                 "INFERENCE_NUM_THREADS": 2, "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    x = np.random.default_rng(0).random((1, frames, size, size), dtype=np.float32)
    for _ in range(5):
        request.infer({0: x})
    per_layer: collections.Counter[tuple[str, str, str]] = collections.Counter()
    runs, t0 = 10, time.perf_counter()
    for _ in range(runs):
        request.infer({0: x})
        for p in request.profiling_info:
            per_layer[(p.node_name, p.node_type, p.exec_type)] += p.real_time.total_seconds() * 1e3 / runs
    wall = (time.perf_counter() - t0) * 1e3 / runs
    print(f"\n{path}: {wall:.1f} ms per call (layers: {sum(per_layer.values()):.1f} ms)")
    for (name, kind, kernel), ms in per_layer.most_common(top):
        weights = next((s for n, s in shapes.items() if name.startswith(n)), "")
        print(f"  {ms:6.2f} ms  {kind:12s} {kernel:28s} {name} {weights}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--precision", default="bf16", choices=["bf16", "f32"])
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--sub-pixel", action="store_true", help="rewrite an int8 IR's transposed convolutions first")
    args = ap.parse_args(argv)
    print(f"CPU: {cpu_name()}; {args.size}x{args.size}; float precision {args.precision}; 2 threads")
    for path in args.models:
        profile(path, args.size, args.precision, args.top, args.sub_pixel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
