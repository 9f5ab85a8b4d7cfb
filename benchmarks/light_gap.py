"""How far a light model is from the full model's fp32 at every dose, faint samples included.

Issue 20 holds a light model to 0.005 mean SSIM of the full network's fp32 "low doses
included". ``pareto.py``'s held-out frames span 200-4000 photons/pixel; this script scores
each model on the 15 cells of ``dose_sweep.py`` instead: 20, 60, 250, 1000 and 5000
photons/pixel on ordinary (largest line integral 1.2-3.5), medium (0.4-1.2) and faint
(0.1-0.5) samples, the same held-out phantoms and seeds, every model on the same frames.

A model is ``NAME[:BACKEND[:PRECISION]]`` (a shipped name, card or model directory; backend
and precision ``auto`` by default), run through ``Denoiser.denoise_context``. The first one is
the reference (default: the full projection model in fp32 through ONNX Runtime); the table
gives each model's SSIM per cell (a column each) and its mean and largest distance below the reference.

Usage::

    python benchmarks/light_gap.py tomogan-projection-light:openvino:int8 runs/light8-src:onnxruntime:fp32 \
        [--reference tomogan-projection:onnxruntime:fp32] [--frames 6] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from accuracy import evaluate
from dose_sweep import DOSES, held_out

from bluesky_tomogan.cpu import cpu_name
from bluesky_tomogan.frames import context_indices
from bluesky_tomogan.inference import Denoiser, load_denoiser

SAMPLE_SETS = {"ordinary": (1.2, 3.5), "medium": (0.4, 1.2), "faint": (0.1, 0.5)}


def load(spec: str, backend: str = "auto") -> Denoiser:
    """The denoiser of ``NAME[:BACKEND[:PRECISION]]`` (``backend`` where the spec names none; precision ``auto``)."""
    model, _, rest = spec.partition(":")
    named, _, precision = rest.partition(":")
    return load_denoiser(model, backend=named or backend, precision=precision or "auto")


def scores(specs: list[str], samples: int, frames: int, size: int) -> dict[str, dict[str, float]]:
    """SSIM of every model in every cell (``"faint 20"``), each cell's frames simulated once."""
    denoisers = {spec: load(spec) for spec in specs}
    table: dict[str, dict[str, float]] = {spec: {} for spec in specs}
    for set_name, opacity in SAMPLE_SETS.items():
        for dose in DOSES:
            pairs = held_out(dose, samples, frames, size, opacity)
            idx = np.arange(len(pairs.ns))
            cell = f"{set_name} {dose:g}"
            for spec, den in denoisers.items():
                table[spec][cell] = evaluate(
                    lambda i, d=den, p=pairs: d.denoise_context(p.ns[context_indices(p.group, i, d.depth)]),
                    pairs, idx)["ssim"]
            print(cell + ": " + ", ".join(f"{s} {table[s][cell]:.4f}" for s in specs), file=sys.stderr, flush=True)
    return table


def markdown(table: dict[str, dict[str, float]], reference: str) -> str:
    specs, cells = list(table), list(table[reference])
    gaps = {spec: [table[reference][c] - table[spec][c] for c in cells] for spec in specs}
    lines = ["| cell (samples, photons/pixel) | " + " | ".join(specs) + " |", "|---|" + "---|" * len(specs)]
    lines += [f"| {c} | " + " | ".join(f"{table[s][c]:.4f}" for s in specs) + " |" for c in cells]
    lines.append("| **mean below the reference** | " + " | ".join(f"{np.mean(gaps[s]):+.4f}" for s in specs) + " |")
    lines.append("| most below (cell) | " + " | ".join(
        f"{max(gaps[s]):+.4f} ({cells[int(np.argmax(gaps[s]))]})" for s in specs) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="NAME[:BACKEND[:PRECISION]]")
    ap.add_argument("--reference", default="tomogan-projection:onnxruntime:fp32")
    ap.add_argument("--samples", type=int, default=3, help="held-out phantoms per cell")
    ap.add_argument("--frames", type=int, default=6, help="projections per phantom")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--json", help="write the scores here too")
    args = ap.parse_args(argv)
    table = scores([args.reference, *args.models], args.samples, args.frames, args.size)
    print(f"CPU: {cpu_name()}\n")
    print(markdown(table, args.reference))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"cpu": cpu_name(), "reference": args.reference, "ssim": table},
                                              indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
