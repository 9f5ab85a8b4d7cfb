"""Slice models side by side on the test splits of simulated files: fp32 SSIM / PSNR against the clean slices.

Each model runs in ONNX Runtime fp32 through the full ``Denoiser`` path on the same evenly spaced test frames
of each file, with the neighbouring slices of its own scan as context
(:func:`bluesky_tomogan.export.pipeline.measure_quality`, as ``bluesky-tomogan quality`` measures a card,
without writing to any card). The sets of docs/models.md::

    python benchmarks/slice_sets.py tomogan-slice tomogan-slice-local --data data/hard_slice.h5 \\
        data/sim_slice.h5 data/sim_slice_real2.h5 data/sim_slice_beyond.h5 data/heldout_beyond.h5

``--rim-steps`` prints, per file, how far the rim of those test slices steps from the value outside their
reconstruction circle (:func:`bluesky_tomogan.circle.rim_step`, in shares of each slice's range), which decides
whether the denoiser fills the outside (from :data:`bluesky_tomogan.circle.RIM_STEP` on).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from bluesky_tomogan.circle import RIM_STEP, outside_circle, rim_step
from bluesky_tomogan.export.pipeline import centre_crop, measure_quality, quality_frames
from bluesky_tomogan.inference.load import load_card
from bluesky_tomogan.simulate.datasets import read_dataset


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="shipped names, cards or directories")
    ap.add_argument("--data", nargs="+", required=True, help="HDF5 files whose test splits are measured")
    ap.add_argument("--frames", type=int, default=48, help="test frames per file (default 48)")
    ap.add_argument("--rim-steps", action="store_true", help="print the distribution of the slices' rim steps")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    cards = {model: load_card(model) for model in args.models}
    results: dict[str, dict[str, dict[str, float]]] = {}
    print("| file | raw | " + " | ".join(args.models) + " |")
    print("|---|---|" + "---|" * len(args.models))
    for path in args.data:
        test = read_dataset(path).split("test")
        row: dict[str, dict[str, float]] = {}
        for model, card in cards.items():
            quality = measure_quality(card.directory / f"{card.name}.json", test, args.frames, only=[])
            row["raw"] = quality["raw"]
            row[model] = quality["onnxruntime/fp32"]
        results[path] = row
        cells = [f"{row[m]['ssim']:.4f} / {row[m]['psnr']:.2f} dB" for m in ("raw", *args.models)]
        print(f"| {path} | " + " | ".join(cells) + " |", flush=True)
        if args.rim_steps:
            print(f"|   rim steps of {path}: {_rim_steps(test, args.frames)} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


def _rim_steps(test, frames: int) -> str:
    steps = []
    for i in quality_frames(centre_crop(test), frames):
        outside = outside_circle(test.ns[i][None])
        steps.append(np.nan if outside is None else rim_step(test.ns[i], outside[0]))
    values = np.asarray(steps)
    found = values[np.isfinite(values)]
    if not found.size:
        return f"no reconstruction circle in {values.size} slices"
    quartiles = " / ".join(f"{q:.3f}" for q in np.percentile(found, [0, 25, 50, 75, 100]))
    return (f"min / quartiles / max {quartiles}; {np.count_nonzero(found >= RIM_STEP)} of {values.size} slices "
            f"at {RIM_STEP} or more, {values.size - found.size} without a circle")


if __name__ == "__main__":
    sys.exit(main())
