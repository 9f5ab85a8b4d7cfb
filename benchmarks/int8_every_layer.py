"""What the shipped OpenVINO int8 IR leaves in float, and what quantising every layer would cost and give.

The shipped int8 IRs come from NNCF's accuracy control, which returns the layers that lose
most to float until the SSIM drop is within tolerance: for the projection models these are
the full-resolution convolutions. On a CPU with AMX the float parts run in bf16 tiles; on one
without AMX they run in fp32, and they are most of the time. This script re-quantises a
model's ONNX file with plain ``nncf.quantize`` (every convolution int8 except those named),
optionally with quantile activation ranges instead of min/max, and compares it with the
shipped IR: mean and worst-frame SSIM loss against ONNX Runtime fp32 on 48 frames of the
dose test set, and ms per 1024x1024 frame through ``Denoiser.denoise_context`` (2 threads).

Usage::

    python benchmarks/int8_every_layer.py src/bluesky_tomogan/weights/tomogan-projection.json \\
        --out /tmp/every-layer [--float node_conv2d node_conv2d_14 node_conv2d_15] [--ranges quantile] [--no-speed]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from bluesky_tomogan.cpu import cpu_name
from bluesky_tomogan.export.pipeline import calibration_frames
from bluesky_tomogan.frames import context_indices
from bluesky_tomogan.inference import load_denoiser
from bluesky_tomogan.metrics import ssim
from bluesky_tomogan.simulate.datasets import read_dataset


def requantise(card: Path, out: Path, data: str, keep_float: list[str], ranges: str) -> Path:
    """A copy of ``card``'s model directory in ``out`` whose int8 IR quantises every convolution
    but those whose names start with one of ``keep_float``; returns the copied card."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    out.mkdir(parents=True, exist_ok=True)
    for f in card.parent.iterdir():
        if f.is_file():
            shutil.copy(f, out / f.name)
    meta = json.loads(card.read_text())
    model = ov.Core().read_model(str(out / meta["files"]["onnx"]["path"]))
    train = read_dataset(data).split("train")
    size = min(train.ns.shape[1:]) // 8 * 8
    calib = calibration_frames(train, 200, size, int(meta["architecture"]["in_channels"]))
    convs = [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"]
    scope = nncf.IgnoredScope(names=[n for n in convs if n.split("/")[0] in keep_float])
    quantile = RangeEstimatorParametersSet.MEAN_QUANTILE
    advanced = (AdvancedQuantizationParameters(activations_range_estimator_params=quantile)
                if ranges == "quantile" else None)
    quantised = nncf.quantize(model, nncf.Dataset([x[None] for x in calib]), subset_size=len(calib),
                              preset=nncf.QuantizationPreset.MIXED, ignored_scope=scope,
                              advanced_parameters=advanced)
    ov.save_model(quantised, str(out / meta["files"]["openvino_int8"]["path"]), compress_to_fp16=False)
    for key in ("sha256", "bin_sha256"):  # the files changed
        meta["files"]["openvino_int8"].pop(key, None)
    (out / card.name).write_text(json.dumps(meta))
    return out / card.name


def losses(card: Path, reference: np.ndarray, data: str, idx: np.ndarray) -> tuple[float, float, float]:
    test = read_dataset(data).split("test")
    den = load_denoiser(card, backend="openvino", precision="int8", threads=2)
    s = np.array([ssim(test.gt[i], den.denoise_context(test.ns[context_indices(test.group, int(i), den.depth)]))
                  for i in idx])
    return float(s.mean()), float((reference - s).mean()), float((reference - s).max())


def speed(card: Path) -> float:
    den = load_denoiser(card, backend="openvino", precision="int8", threads=2)
    x = np.random.default_rng(0).poisson(800, (den.depth, 1024, 1024)).astype(np.uint16)
    for _ in range(3):
        den.denoise_context(x)
    times: list[float] = []
    t_end = time.perf_counter() + 4.0
    while time.perf_counter() < t_end or len(times) < 5:
        t = time.perf_counter()
        den.denoise_context(x)
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("card", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", default="data/sim_projection_dose.h5")
    ap.add_argument("--float", nargs="*", default=[], dest="keep_float",
                    help="convolutions (OpenVINO node names, e.g. node_conv2d_14) kept in float")
    ap.add_argument("--ranges", choices=["minmax", "quantile"], default="minmax")
    ap.add_argument("--no-speed", action="store_true")
    args = ap.parse_args(argv)
    card = args.card.resolve()
    every = requantise(card, args.out, args.data, args.keep_float, args.ranges)
    compare(card, {"every layer int8": every}, args.data, f"activation ranges: {args.ranges}", args.keep_float,
            not args.no_speed)
    return 0


def compare(card: Path, candidates: dict[str, Path], data: str, recipe: str, keep_float: list[str],
            timed: bool = True) -> None:
    """Print the SSIM loss (mean, worst frame) against ONNX Runtime fp32 on 48 test frames of ``data``,
    and the ms per 1024x1024 frame, of ``card``'s shipped int8 IR and of each candidate's."""
    test = read_dataset(data).split("test")
    idx = np.unique(np.linspace(0, len(test.ns) - 1, 48).astype(int))
    fp32 = load_denoiser(card, backend="onnxruntime", precision="fp32")
    reference = np.array([ssim(test.gt[i], fp32.denoise_context(test.ns[context_indices(test.group, int(i),
                                                                                         fp32.depth)]))
                          for i in idx])
    print(f"CPU: {cpu_name()}; fp32 SSIM {reference.mean():.4f} on {len(idx)} frames of {data}")
    print(f"kept in float: {keep_float or 'nothing'}; {recipe}")
    for label, c in {"shipped int8 IR": card, **candidates}.items():
        mean, loss, worst = losses(c, reference, data, idx)
        ms = f", {speed(c):.0f} ms per 1024x1024 frame" if timed else ""
        print(f"{label}: SSIM {mean:.4f}, loss mean {loss:.4f} worst {worst:.4f}{ms}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
