"""Projection denoising with the context a user actually gives: neighbours, none, or other samples.

A network that reads adjacent frames is scored in ``dose_sweep.py`` on scans in angle order,
each frame with its real neighbours. Users also give it

- **one frame** (a radiograph, ``bluesky-tomogan denoise frame.tif``, the first frame of a
  stream): the frame is its own context;
- **a stack whose neighbours are other samples** (projections of several samples collected
  together, an interleaved or golden-angle scan in acquisition order, a sample that moved):
  here one frame of each of the three phantoms in turn, so every neighbour is another
  phantom.

For each model (``NAME[:BACKEND[:PRECISION]]``, as ``light_gap.py``; default ONNX Runtime fp32)
and each of the 15 cells of the dose sweeps (20-5000 photons/pixel x ordinary, medium and faint
samples; the same held-out phantoms and seeds) this prints the mean SSIM in each case, with
total variation tuned per cell on the frames themselves (an oracle) and the raw frames.

Usage::

    python benchmarks/context_robustness.py tomogan-projection [runs/x:onnxruntime:fp32 ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from accuracy import classical, evaluate
from dose_sweep import DOSES, GRIDS, held_out
from light_gap import SAMPLE_SETS, load

from bluesky_tomogan.cpu import cpu_name
from bluesky_tomogan.frames import context_indices

CASES = ("context", "single", "others")


def interleaved(group: np.ndarray) -> np.ndarray:
    """Frame order that takes one frame of each scan in turn: every neighbour is another scan."""
    scans = [np.flatnonzero(group == g) for g in np.unique(group)]
    depth = min(len(s) for s in scans)
    return np.stack([s[:depth] for s in scans], axis=1).ravel()


def scores(specs: list[str], samples: int, frames: int, size: int) -> dict[str, dict[str, dict[str, float]]]:
    """``{cell: {row: {case: SSIM}}}``, rows ``raw``, ``tv`` and each model."""
    denoisers = {spec: load(spec, backend="onnxruntime") for spec in specs}
    table: dict[str, dict[str, dict[str, float]]] = {}
    for set_name, opacity in SAMPLE_SETS.items():
        for dose in DOSES:
            pairs = held_out(dose, samples, frames, size, opacity)
            idx = np.arange(len(pairs.ns))
            cell = f"{set_name} {dose:g}"
            rows: dict[str, dict[str, float]] = {
                "raw": {"ssim": evaluate(lambda i, p=pairs: p.ns[i], pairs, idx)["ssim"]},
                "tv": {"ssim": max(evaluate(lambda i, k=k, p=pairs: classical("tv", k)(p.ns[i]), pairs, idx)["ssim"]
                                   for k in GRIDS["tv"])},
            }
            order = interleaved(pairs.group)
            for spec, den in denoisers.items():
                mixed = den.denoise(pairs.ns[order])
                out_of_order = {int(j): mixed[k] for k, j in enumerate(order)}
                rows[spec] = {
                    "context": evaluate(lambda i, d=den, p=pairs: d.denoise_context(
                        p.ns[context_indices(p.group, i, d.depth)]), pairs, idx)["ssim"],
                    "single": evaluate(lambda i, d=den, p=pairs: d.denoise(p.ns[i]), pairs, idx)["ssim"],
                    "others": evaluate(lambda i, m=out_of_order: m[i], pairs, order)["ssim"],
                }
            table[cell] = rows
            print(f"{cell}: TV {rows['tv']['ssim']:.4f}; " + "; ".join(
                f"{s} " + " / ".join(f"{rows[s][c]:.4f}" for c in CASES) for s in specs), file=sys.stderr, flush=True)
    return table


def markdown(table: dict[str, dict[str, dict[str, float]]], specs: list[str]) -> str:
    lines = ["| cell (samples, photons/pixel) | raw | TV (tuned) | " + " | ".join(
        f"{s}: context / single / others" for s in specs) + " |", "|---|---|---|" + "---|" * len(specs)]
    for cell, rows in table.items():
        lines.append(f"| {cell} | {rows['raw']['ssim']:.4f} | {rows['tv']['ssim']:.4f} | " + " | ".join(
            " / ".join(f"{rows[s][c]:.4f}" for c in CASES) for s in specs) + " |")
    for label, fn in (("mean", np.mean), ("lowest", np.min)):
        lines.append(f"| **{label}** | | | " + " | ".join(" / ".join(
            f"{fn([rows[s][c] for rows in table.values()]):.4f}" for c in CASES) for s in specs) + " |")
    beats = {s: {c: sum(rows[s][c] > rows["tv"]["ssim"] for rows in table.values()) for c in CASES} for s in specs}
    lines.append(f"| cells above TV (of {len(table)}) | | | " + " | ".join(
        " / ".join(str(beats[s][c]) for c in CASES) for s in specs) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="NAME[:BACKEND[:PRECISION]] (backend default: onnxruntime)")
    ap.add_argument("--samples", type=int, default=3, help="held-out phantoms per cell")
    ap.add_argument("--frames", type=int, default=6, help="projections per phantom")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--json", help="write the scores here too")
    args = ap.parse_args(argv)
    table = scores(args.models, args.samples, args.frames, args.size)
    print(f"CPU: {cpu_name()}\n")
    print(markdown(table, args.models))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"cpu": cpu_name(), "ssim": table}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
