"""Zingers and hot pixels in held-out projections: each model with its host despike off and on.

The held-out projections of ``benchmarks/dose_sweep.py`` (3 phantoms x 6 consecutive frames of
128x128, an ideal detector) get isolated bright pixels added to every frame of the context:

- ``zingers``: the simulator's zingers (3-30x the photon level; the training data has them at
  5e-5 per pixel and frame) at ``--zinger-rate``;
- ``hot``: weaker and denser specks (1-5x the photon level) at ``--hot-rate``, like the
  hot pixels and scatter hits of a lab or beamline camera over a long exposure;
- ``none``: no specks, so that the despike's cost on clean frames shows.

Each model runs through ``Denoiser.denoise_context`` in fp32 (ONNX Runtime) and in the precision
``precision="auto"`` picks here, with ``Denoiser.despike_sigmas`` off and at 12 (what the card asks
for). Prints a Markdown table of SSIM / PSNR against the noise-free frames.

Usage::

    python benchmarks/zinger_sweep.py [--models tomogan-projection tomogan-projection-light]
        [--doses 60 1000 5000] [--opacity 0.4 1.2] [--kinds none zingers hot] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from accuracy import evaluate  # the same SSIM / PSNR as the other benchmarks
from dose_sweep import held_out

from bluesky_tomogan.bench import cpu_name
from bluesky_tomogan.frames import context_indices
from bluesky_tomogan.inference import Denoiser, load_denoiser

SIGMAS = 12.0


def add_specks(frames: np.ndarray, rate: float, heights: tuple[float, float], level: float,
               rng: np.random.Generator) -> np.ndarray:
    """``frames`` with single bright pixels at ``rate`` per pixel, ``heights`` times ``level`` above."""
    out = frames.copy()
    hits = rng.random(frames.shape) < rate
    out[hits] += np.float32(level) * rng.uniform(*heights, int(hits.sum())).astype(np.float32)
    return out


def fp32_and_auto(models: list[str]) -> dict[str, Denoiser]:
    """Each model in fp32 (ONNX Runtime) and as ``precision="auto"`` picks here, by a label naming which."""
    denoisers: dict[str, Denoiser] = {}
    for model in models:
        denoisers[f"{model} fp32"] = load_denoiser(model, backend="onnxruntime", precision="fp32")
        auto = load_denoiser(model)
        denoisers[f"{model} auto ({auto.backend}/{auto.precision})"] = auto
    return denoisers


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["tomogan-projection", "tomogan-projection-light"])
    ap.add_argument("--doses", nargs="+", type=float, default=[60.0, 1000.0, 5000.0])
    ap.add_argument("--opacity", nargs=2, type=float, default=[0.4, 1.2], metavar=("LOW", "HIGH"))
    ap.add_argument("--zinger-rate", type=float, default=1e-3)
    ap.add_argument("--hot-rate", type=float, default=5e-3)
    ap.add_argument("--kinds", nargs="+", choices=["none", "zingers", "hot"], default=["none", "zingers", "hot"])
    ap.add_argument("--json", help="write the scores here")
    args = ap.parse_args(argv)
    denoisers = fp32_and_auto(args.models)
    specks = {"none": (0.0, (0.0, 0.0)), "zingers": (args.zinger_rate, (3.0, 30.0)), "hot": (args.hot_rate, (1.0, 5.0))}
    specks = {kind: specks[kind] for kind in args.kinds}
    results: dict[str, dict] = {}
    print(f"CPU: {cpu_name()}; opacity {args.opacity}; zingers {args.zinger_rate:g}, hot pixels {args.hot_rate:g} "
          "per pixel and frame\n")
    print("| photons | specks | model | despike off: SSIM / PSNR | despike on (12 sigmas) |")
    print("|---|---|---|---|---|")
    for dose in args.doses:
        pairs = held_out(dose, 3, 6, 128, tuple(args.opacity))
        clean = pairs.ns.copy()
        rng = np.random.default_rng(int(dose))
        for kind, (rate, heights) in specks.items():
            pairs.ns[:] = add_specks(clean, rate, heights, dose, rng) if rate else clean
            idx = np.arange(len(pairs.ns))
            for label, den in denoisers.items():
                cells = []
                for sigmas in (None, SIGMAS):
                    den.despike_sigmas = sigmas
                    score = evaluate(lambda i, d=den, p=pairs: d.denoise_context(
                        p.ns[context_indices(p.group, i, d.depth)]), pairs, idx)
                    results.setdefault(f"{dose:g}", {}).setdefault(kind, {}).setdefault(label, {})[str(sigmas)] = score
                    cells.append(f"{score['ssim']:.4f} / {score['psnr']:.2f} dB")
                print(f"| {dose:g} | {kind} | {label} | {cells[0]} | {cells[1]} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu_name(), "args": vars(args), "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
