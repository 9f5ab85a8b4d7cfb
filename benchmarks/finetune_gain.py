"""Fine-tuning on a scan of a phantom family no shipped model saw: wall time and held-out gain, with a figure.

Simulates a low-dose scan of a ``grains`` phantom (rock-like polycrystal; the shipped
models were trained on bead packs, foams, fibres and layered samples), writes it as a
Data Exchange HDF5 file, runs ``bluesky-tomogan finetune`` on it as a user would (all
export formats, the default 15-minute budget), and scores the shipped and the
fine-tuned slice model on the held-out slab against the clean slices, which the
fine-tune never saw.

Usage::

    python benchmarks/finetune_gain.py [--size 256] [--angles 256] [--photons 200] [--out benchmarks/results/ft]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bluesky_tomogan.bench import cpu_name
from bluesky_tomogan.finetune import read_scan
from bluesky_tomogan.finetune.evaluate import held_out_rows, slice_quality
from bluesky_tomogan.simulate.datasets import write_scan_file


def figure(scan_path: Path, clean: np.ndarray, model_dir: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bluesky_tomogan.finetune.pairs import rotation_center
    from bluesky_tomogan.inference import load_denoiser
    from bluesky_tomogan.reconstruction import corrected_sinogram, reconstruct

    scan = read_scan(str(scan_path))
    held = held_out_rows(scan)
    r = held[len(held) // 2]
    center = rotation_center(scan)
    rows = [reconstruct(corrected_sinogram(scan.projections[:, k, :], scan.flats[k], scan.darks[k]),
                        scan.angles, center).slice for k in (r - 1, r, r + 1)]
    ref = reconstruct(np.exp(-clean[:, r, :]), scan.angles, center, remove_stripes=False).slice
    shipped = load_denoiser("tomogan-slice", backend="onnxruntime").denoise_context(np.stack(rows))
    tuned = load_denoiser(str(model_dir), backend="onnxruntime").denoise_context(np.stack(rows))
    lo, hi = np.percentile(ref, [1, 99])
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
    for ax, img, title in zip(axes, (rows[1], shipped, tuned, ref),
                              ("noisy FBP (held-out row)", "shipped slice model", "fine-tuned on this scan",
                               "clean reference (never used)"), strict=True):
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=80)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--angles", type=int, default=256)
    ap.add_argument("--photons", type=float, default=200.0)
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--out", default="benchmarks/results/finetune")
    ap.add_argument("--figure", default="docs/finetune.png")
    args = ap.parse_args(argv)
    out = Path(args.out)
    scan_path, clean = write_scan_file(out / "grains_scan.h5", "grains", args.size, args.angles, args.photons, seed=21)
    model_dir = out / "model"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bluesky_tomogan.cli", "finetune", str(scan_path), "--out", str(model_dir),
                    "--minutes", str(args.minutes)], check=True)
    wall = time.perf_counter() - t0
    models = {"shipped": "tomogan-slice", "fine-tuned": str(model_dir)}
    quality = slice_quality(read_scan(str(scan_path)), clean, models)
    figure(scan_path, clean, model_dir, Path(args.figure))
    result = {"cpu": cpu_name(), "scan": f"{args.angles} x {args.size} x {args.size}", "photons": args.photons,
              "finetune_wall_s": round(wall, 1), "held_out": quality}
    print(json.dumps(result, indent=2))
    (out / "result.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
