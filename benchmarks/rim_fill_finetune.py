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

import numpy as np

from bluesky_tomogan.bench import cpu_name
from bluesky_tomogan.finetune import read_scan
from bluesky_tomogan.finetune.evaluate import held_out_rows
from bluesky_tomogan.finetune.pairs import _row, rotation_center
from bluesky_tomogan.frames import context_indices
from bluesky_tomogan.inference import load_denoiser
from bluesky_tomogan.metrics import ssim
from bluesky_tomogan.reconstruction import corrected_sinogram, reconstruct
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
    rows, center = held_out_rows(scan), rotation_center(scan)
    one_scan = np.zeros(scan.shape[1], np.int32)
    noisy = {r: reconstruct(corrected_sinogram(scan.projections[:, r, :], _row(scan.flats, r), _row(scan.darks, r)),
                            scan.angles, center, row=r).slice for r in range(scan.shape[1])}
    truth = {r: reconstruct(np.exp(-clean[:, r, :]), scan.angles, center, row=r, remove_stripes=False).slice
             for r in rows}
    print(f"{len(rows)} held-out rows of a {args.width:g}x wide sample, SSIM against the clean slices ({cpu_name()}); "
          f"sparse FBP {np.mean([ssim(truth[r], noisy[r]) for r in rows]):.4f}")
    print("| model | outside as stored | outside filled |\n|---|---|---|")
    for label, model in (("tomogan-slice", "tomogan-slice"), ("tomogan-slice-local", "tomogan-slice-local"),
                         ("fine-tuned on this scan", str(tuned))):
        den = load_denoiser(model, backend="onnxruntime", precision="fp32")
        scores = []
        for fill in (False, True):
            den.fill_outside_circle = fill
            scores.append(np.mean([ssim(truth[r], den.denoise_context(np.stack(
                [noisy[i] for i in context_indices(one_scan, r, den.depth)]))) for r in rows]))
        print(f"| {label} | {scores[0]:.4f} | {scores[1]:.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
