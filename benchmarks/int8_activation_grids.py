"""Which activation grids of a quantisation-aware int8 IR cost its SSIM: each read in float in turn.

A quantisation-aware IR (``bluesky-tomogan export --openvino-qat-steps``) rounds every
ReLU-activated layer's output to 256 levels for the layers reading it. This script scores the
card's frames (``export.pipeline.quality_frames`` of the data's test split, as the card's
``openvino/int8`` entry is measured) through ``Denoiser.denoise_context``: the IR as exported,
then with one layer's output read in float (``export.openvino_int8.float_activations``, the
rounding left out, the clipping kept) for every such layer, then with all of ``--together``.
Each line: mean and worst-frame SSIM loss against the model's ONNX Runtime fp32, and the mean
loss per scan (the test split's groups), so that a loss that lives on a few scans (low
contrast, 8-bit) shows where.

Usage::

    python benchmarks/int8_activation_grids.py src/bluesky_tomogan/weights/tomogan-slice-light.json \
        data/sim_slice_mix2.h5 [--together stem.0 enc1.0 enc1.2 dec1.0]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import openvino as ov
from scratch import scratch_directory

from bluesky_tomogan.cpu import cpu_name
from bluesky_tomogan.export.openvino_int8 import activation_grids, float_activations
from bluesky_tomogan.export.pipeline import quality_frames
from bluesky_tomogan.frames import context_indices
from bluesky_tomogan.inference import load_denoiser
from bluesky_tomogan.inference.backends.openvino import openvino_core
from bluesky_tomogan.metrics import ssim
from bluesky_tomogan.simulate.datasets import read_dataset


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("card", type=Path, help="the model card of a quantisation-aware IR")
    ap.add_argument("data", help="the data set whose test split the card was measured on")
    ap.add_argument("--together", nargs="+", default=[], metavar="LAYER", help="also read all of these in float")
    args = ap.parse_args(argv)
    pairs = read_dataset(args.data).split("test")
    frames = list(quality_frames(pairs))
    fp32 = load_denoiser(str(args.card), backend="onnxruntime", precision="fp32")
    contexts = {i: pairs.ns[context_indices(pairs.group, i, fp32.depth)] for i in frames}
    reference = {i: ssim(pairs.gt[i], fp32.denoise_context(contexts[i])) for i in frames}
    card = json.loads(args.card.read_text())
    entry = card["files"]["openvino_int8"]
    ir = args.card.parent / entry["path"]
    work = scratch_directory()
    for path in args.card.parent.glob(card["name"] + "*"):
        if path.is_file():
            shutil.copy(path, work / path.name)
    core = openvino_core()

    def score(layers: list[str]) -> str:
        model = core.read_model(str(ir))
        float_activations(model, layers)
        xml = work / ir.name
        ov.save_model(model, str(xml), compress_to_fp16=False)
        entry["sha256"] = hashlib.sha256(xml.read_bytes()).hexdigest()  # the card checks what it loads
        entry["bin_sha256"] = hashlib.sha256(xml.with_suffix(".bin").read_bytes()).hexdigest()
        (work / args.card.name).write_text(json.dumps(card))
        den = load_denoiser(str(work / args.card.name), backend="openvino", precision="int8")
        loss = np.array([reference[i] - ssim(pairs.gt[i], den.denoise_context(contexts[i])) for i in frames])
        group = pairs.group[frames]
        per_scan = " ".join(f"{loss[group == g].mean():+.4f}" for g in np.unique(group))
        return f"{loss.mean():+.4f} | {loss.max():+.4f} | {per_scan} |"

    print(f"CPU: {cpu_name()}; {args.card} on {len(frames)} frames of {args.data} (test split)\n")
    print("| read in float | mean loss | worst frame | mean loss per scan |")
    print("|---|---|---|---|")
    print(f"| nothing (as exported) | {score([])}", flush=True)
    for layer in dict.fromkeys(name for name, _ in activation_grids(core.read_model(str(ir)))):
        print(f"| {layer} | {score([layer])}", flush=True)
    if args.together:
        print(f"| {' '.join(args.together)} | {score(args.together)}", flush=True)
    shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
