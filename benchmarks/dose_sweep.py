"""Projection denoising at fixed doses from 20 to 5000 photons/pixel, against tuned classical filters.

For every dose, held-out projections of three phantoms (seeds never used in training;
an ideal detector, so nothing the model saw in training is repeated) are denoised by

- the projection model through ``Denoiser.denoise`` in fp32 (ONNX Runtime) and in the
  precision ``precision="auto"`` picks on this machine;
- total variation (Chambolle) and BM3D, each with its strength tuned *per dose on the
  evaluated frames themselves* (an oracle: the most favourable setting a user could find),
  and total variation tuned *once* (the one strength with the best mean SSIM over all
  doses, as a user who tunes it once would have).

Prints a Markdown table of SSIM and PSNR per dose (against the noise-free frames) and the
model's SSIM margin over each classical filter.

Usage::

    python benchmarks/dose_sweep.py [--model tomogan-projection] [--frames 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from accuracy import classical, evaluate  # the same baselines as benchmarks/accuracy.py

from bluesky_tomogan.bench import cpu_name
from bluesky_tomogan.frames import context_indices
from bluesky_tomogan.inference import load_denoiser
from bluesky_tomogan.simulate.datasets import PairSet, Recipe, simulate_pairs

DOSES = (20.0, 60.0, 250.0, 1000.0, 5000.0)
HELD_OUT_SEED = 90_000
GRIDS = {"tv": [0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0], "bm3d": [0.5, 0.75, 1.0, 1.5, 2.0, 3.0]}


def held_out(dose: float, samples: int, frames: int, size: int,
             opacity: tuple[float, float] = (1.2, 3.5)) -> PairSet:
    recipe = Recipe(domain="projection", size=size, photons=(dose, dose), max_attenuation=opacity,
                    frames_per_scan=frames)
    return simulate_pairs(recipe, samples, seed=HELD_OUT_SEED + int(dose), workers=2)


def sweep(model: str, samples: int, frames: int, size: int, methods: list[str],
          opacity: tuple[float, float] = (1.2, 3.5), self_ensemble: int = 1) -> dict[str, dict[str, dict]]:
    fp32 = load_denoiser(model, backend="onnxruntime", precision="fp32", self_ensemble=self_ensemble)
    auto = load_denoiser(model, backend="auto", precision="auto", self_ensemble=self_ensemble)
    auto_label = f"model, auto ({auto.backend}/{auto.precision})"
    results: dict[str, dict[str, dict]] = {}
    grid_scores: dict[str, dict[str, dict[float, dict[str, float]]]] = {}
    for dose in DOSES:
        pairs = held_out(dose, samples, frames, size, opacity)
        # every frame of each scan; those near its ends with mirrored neighbours (context_indices)
        idx = np.arange(len(pairs.ns))
        rows: dict[str, dict] = {"raw": evaluate(lambda i, p=pairs: p.ns[i], pairs, idx)}
        for label, den in (("model fp32", fp32), (auto_label, auto)):
            rows[label] = evaluate(
                lambda i, d=den, p=pairs: d.denoise_context(p.ns[context_indices(p.group, i, d.depth)]), pairs, idx)
        for method in methods:
            scores = {k: evaluate(lambda i, k=k, m=method, p=pairs: classical(m, k)(p.ns[i]), pairs, idx)
                      for k in GRIDS[method]}
            best = max(scores, key=lambda k: scores[k]["ssim"])
            rows[f"{method} (tuned x{best:g})"] = scores[best]
            grid_scores.setdefault(method, {})[f"{dose:g}"] = scores
        results[f"{dose:g}"] = rows
        print(f"dose {dose:g}: " + ", ".join(f"{k} {v['ssim']:.4f}" for k, v in rows.items()),
              file=sys.stderr, flush=True)
    # A user tunes once, not per dose: the one strength with the best mean SSIM over all doses.
    for method, per_dose in grid_scores.items():
        once = max(GRIDS[method], key=lambda k: np.mean([per_dose[d][k]["ssim"] for d in per_dose]))
        for dose_key, scores in per_dose.items():
            results[dose_key][f"{method} once (x{once:g} at every dose)"] = scores[once]
    return results


def markdown(results: dict[str, dict[str, dict]]) -> str:
    lines = ["| photons/pixel | raw | model fp32 | model auto | TV (tuned per dose) | TV (tuned once) | "
             "BM3D (tuned per dose) | SSIM over TV per dose, fp32 / auto | over TV once | over BM3D, fp32 / auto |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for dose, rows in results.items():
        def cell(prefix: str, rows: dict[str, dict] = rows) -> tuple[str, float]:
            for k, v in rows.items():
                if k.startswith(prefix):
                    return f"{v['ssim']:.4f} / {v['psnr']:.1f} dB", v["ssim"]
            return "-", -np.inf

        fp32, s32 = cell("model fp32")
        auto, sauto = cell("model, auto")
        tv, stv = cell("tv (")
        tv1, stv1 = cell("tv once")
        bm, sbm = cell("bm3d (")
        def margin(ref: float, s32: float = s32, sauto: float = sauto) -> str:
            return f"{s32 - ref:+.4f} / {sauto - ref:+.4f}" if np.isfinite(ref) else "-"

        lines.append(f"| {dose} | {cell('raw')[0]} | {fp32} | {auto} | {tv} | {tv1} | {bm} | "
                     f"{margin(stv)} | {margin(stv1)} | {margin(sbm)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tomogan-projection", help="shipped name, card or model directory")
    ap.add_argument("--samples", type=int, default=3, help="held-out phantoms per dose")
    ap.add_argument("--frames", type=int, default=8, help="projections per phantom")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--methods", nargs="*", default=["tv", "bm3d"], choices=["tv", "bm3d"])
    ap.add_argument("--opacity", type=float, nargs=2, default=[1.2, 3.5], metavar=("LOW", "HIGH"),
                    help="range of the phantoms' largest line integral (low: faint samples, little contrast)")
    ap.add_argument("--self-ensemble", type=int, default=1, choices=[1, 2, 4, 8],
                    help="the model's rows with a self-ensemble of this many turned copies (load_denoiser's)")
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args(argv)
    results = sweep(args.model, args.samples, args.frames, args.size, args.methods, tuple(args.opacity),
                    args.self_ensemble)
    print(f"CPU: {cpu_name()}\n")
    print(markdown(results))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"cpu": cpu_name(), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
