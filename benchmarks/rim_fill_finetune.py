"""A simulated scan of a sample wider than the field of view: slice models with the outside of the reconstruction
circle as stored and filled (``bluesky_tomogan.circle``), a model fine-tuned on that very scan included.

Writes a low-dose scan of a ``grains`` phantom ``--width`` times the field of view across
(``write_scan_file(width=...)``), fine-tunes the shipped slice model on it as a user would (``bluesky-tomogan
finetune``, ONNX only; skipped where ``--out`` already holds the fine-tuned model), and scores each model on the
scan's held-out rows against their clean slices (ONNX Runtime fp32), with ``Denoiser.fill_outside_circle`` off
and on. The question: a fine-tuned model learnt the scan's slices with their step at the rim; is it still
better given them filled?

Usage::

    python benchmarks/rim_fill_finetune.py [--width 1.8] [--minutes 4] [--out runs/ft-wider]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from bluesky_tomogan.bench import cpu_name
from bluesky_tomogan.finetune import read_scan
from bluesky_tomogan.finetune.evaluate import held_out_rows, slice_quality
from bluesky_tomogan.inference import load_denoiser
from bluesky_tomogan.simulate.datasets import write_scan_file


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=float, default=1.8, help="the sample's width in fields of view")
    ap.add_argument("--minutes", type=float, default=4.0, help="the fine-tune's budget")
    ap.add_argument("--out", default="runs/ft-wider")
    args = ap.parse_args(argv)
    out = Path(args.out)
    path, clean = write_scan_file(out / "grains_wide.h5", "grains", 128, 192, 200.0, seed=21, width=args.width)
    tuned = out / "finetuned"
    if not list(tuned.glob("*.json")):
        subprocess.run([sys.executable, "-m", "bluesky_tomogan.cli", "finetune", str(path), "--out", str(tuned),
                        "--minutes", str(args.minutes), "--format", "onnx", "--no-progress"], check=True)
    scan = read_scan(str(path))
    labels = {"tomogan-slice": "tomogan-slice", "tomogan-slice-local": "tomogan-slice-local",
              "fine-tuned on this scan": str(tuned)}
    denoisers = {}
    for label, model in labels.items():
        for fill in (False, True):
            den = load_denoiser(model, backend="onnxruntime", precision="fp32")
            den.fill_outside_circle = fill
            denoisers[label, fill] = den
    quality = slice_quality(scan, clean, {f"{label} {fill}": den for (label, fill), den in denoisers.items()})
    print(f"{len(held_out_rows(scan))} held-out rows of a {args.width:g}x wide sample, SSIM against the clean "
          f"slices ({cpu_name()}); sparse FBP {quality['raw']['ssim']:.4f}")
    print("| model | outside as stored | outside filled |\n|---|---|---|")
    for label in labels:
        print(f"| {label} | {quality[f'{label} False']['ssim']:.4f} | {quality[f'{label} True']['ssim']:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
