"""Accuracy of the shipped TomoGAN models against classical denoisers on held-out data.

The held-out scans differ from training in seeds *and* parameters: a wider
dose range (200-4000 photons/pixel vs 300-3000) and sample opacity (max line
integral 1.2-3.5 vs 1.5-3.0). Classical baselines (BM3D, non-local means,
total variation) get their strength parameter tuned on the training file's
validation frames, then run on the held-out frames like TomoGAN.

Usage::

    python benchmarks/accuracy.py [--frames 48] [--json results.json]
    python benchmarks/accuracy.py --domains slice --model runs/my-slice-model   # a candidate
    python benchmarks/accuracy.py --domains slice --test-data data/sim_slice_real2.h5  # another test set

Prints a Markdown table (PSNR/SSIM against the clean frames, ms per frame).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
from skimage.restoration import denoise_nl_means, denoise_tv_chambolle, estimate_sigma

from bluesky_tomogan.errors import TomoGANError
from bluesky_tomogan.frames import context_indices
from bluesky_tomogan.inference import load_denoiser
from bluesky_tomogan.metrics import psnr, ssim
from bluesky_tomogan.normalise import denormalise, normalise, robust_range
from bluesky_tomogan.simulate.datasets import PairSet, Recipe, simulate_pairs

HELD_OUT_SEED = 50_000
# Strength multipliers of the estimated noise sigma. The MAD estimate misses structured
# streak noise, so the grids reach far; an optimum on a grid edge is reported.
TUNING = {
    "bm3d": [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0],
    "nlm": [0.6, 1.0, 2.0, 4.0, 8.0, 16.0],
    "tv": [0.5, 1.0, 2.0, 4.0, 8.0, 16.0],
}


def held_out(domain: str, n_scans: int) -> PairSet:
    base = Recipe(domain=domain)  # type: ignore[arg-type]
    recipe = replace(base, photons=(200.0, 4000.0), max_attenuation=(1.2, 3.5))
    return simulate_pairs(recipe, n_scans, seed=HELD_OUT_SEED + (domain == "projection"), workers=2)


def classical(method: str, strength: float) -> Callable[[np.ndarray], np.ndarray]:
    """A 2-D denoiser working on the robust-normalised frame, like TomoGAN's input."""

    def run(frame: np.ndarray) -> np.ndarray:
        off, scale = robust_range(frame)
        x = normalise(frame, off, scale).astype(np.float64)
        sigma = float(estimate_sigma(x))
        if method == "bm3d":
            import bm3d

            y = bm3d.bm3d(x, sigma_psd=strength * sigma)
        elif method == "nlm":
            y = denoise_nl_means(x, h=0.8 * strength * sigma, sigma=sigma, patch_size=5,
                                 patch_distance=6, fast_mode=True)
        else:
            y = denoise_tv_chambolle(x, weight=strength * sigma)
        return denormalise(np.asarray(y, np.float32), off, scale)

    return run


def evaluate(fn: Callable[[int], np.ndarray], pairs: PairSet, idx: np.ndarray) -> dict[str, float]:
    s, p, t = [], [], []
    for i in idx:
        t0 = time.perf_counter()
        out = fn(int(i))
        t.append(time.perf_counter() - t0)
        s.append(ssim(pairs.gt[i], out))
        p.append(psnr(pairs.gt[i], out))
    return {"psnr": float(np.mean(p)), "ssim": float(np.mean(s)), "ms_per_frame": 1e3 * float(np.median(t))}


def run_domain(domain: str, n_scans: int, n_frames: int, tune_data: PairSet | None,
               model: str | None = None, test_data: PairSet | None = None,
               self_ensemble: int = 1) -> dict[str, dict[str, float]]:
    pairs = test_data if test_data is not None else held_out(domain, n_scans)
    idx = np.unique(np.linspace(0, len(pairs.ns) - 1, n_frames).astype(int))
    model = model or f"tomogan-{domain}"
    rows: dict[str, dict[str, float]] = {"raw": evaluate(lambda i: pairs.ns[i], pairs, idx)}

    def tomogan(backend: str, precision: str) -> Callable[[int], np.ndarray] | None:
        try:
            den = load_denoiser(model, backend=backend, precision=precision, self_ensemble=self_ensemble)
        except TomoGANError as exc:
            print(f"  skip {backend}/{precision}: {exc}", file=sys.stderr)
            return None
        return lambda i: den.denoise_context(pairs.ns[context_indices(pairs.group, i, den.depth)])

    for label, backend, precision in (
        ("TomoGAN fp32 (ONNX Runtime)", "onnxruntime", "fp32"),
        ("TomoGAN bf16 (OpenVINO)", "openvino", "bf16"),
        ("TomoGAN int8 (OpenVINO)", "openvino", "int8"),
        ("TomoGAN int8 (LiteRT full-int8 on the CPU; the Edge TPU compiler's input)", "litert", "int8"),
    ):
        fn = tomogan(backend, precision)
        if fn is not None:
            rows[label] = evaluate(fn, pairs, idx)

    tune = tune_data if tune_data is not None else pairs
    tune_idx = np.unique(np.linspace(0, len(tune.ns) - 1, 6).astype(int))
    for method, label in (("bm3d", "BM3D"), ("nlm", "non-local means"), ("tv", "total variation")):
        def tuned_score(k: float, method: str = method) -> float:
            return evaluate(lambda i: classical(method, k)(tune.ns[i]), tune, tune_idx)["ssim"]

        best = max(TUNING[method], key=tuned_score)
        if best in (TUNING[method][0], TUNING[method][-1]):
            print(f"  note: {label} tuned to the edge of its grid (x{best:g})", file=sys.stderr)
        run = classical(method, best)
        rows[f"{label} (strength x{best:g})"] = evaluate(lambda i, run=run: run(pairs.ns[i]), pairs, idx)
    return rows


def markdown(domain: str, rows: dict[str, dict[str, float]]) -> str:
    fp32 = rows.get("TomoGAN fp32 (ONNX Runtime)", {}).get("ssim")
    lines = [f"### {domain} domain", "", "| method | PSNR (dB) | SSIM | SSIM vs fp32 | ms/frame |",
             "|---|---|---|---|---|"]
    for name, r in rows.items():
        delta = f"{r['ssim'] - fp32:+.4f}" if fp32 is not None and name.startswith("TomoGAN") else ""
        lines.append(f"| {name} | {r['psnr']:.2f} | {r['ssim']:.4f} | {delta} | {r['ms_per_frame']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--domains", nargs="+", default=["slice", "projection"])
    ap.add_argument("--scans", type=int, default=4, help="held-out phantoms per domain (one per family)")
    ap.add_argument("--frames", type=int, default=48, help="frames evaluated per domain")
    ap.add_argument("--tune-data", help="HDF5 whose test split tunes the baselines (default: data/sim_<domain>.h5)")
    ap.add_argument("--model", help="model (name, card or directory) in place of the shipped tomogan-<domain>; "
                                    "with one domain only")
    ap.add_argument("--test-data", help="HDF5 whose test split is scored instead of the simulated held-out "
                                        "scans; with one domain only")
    ap.add_argument("--self-ensemble", type=int, default=1, choices=[1, 2, 4, 8],
                    help="the model's rows with a self-ensemble of this many turned copies (load_denoiser's)")
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args(argv)
    if (args.model or args.test_data) and len(args.domains) != 1:
        ap.error("--model and --test-data need exactly one --domains")
    from pathlib import Path

    from bluesky_tomogan.simulate.datasets import read_dataset

    results = {}
    for domain in args.domains:
        tune_path = Path(args.tune_data or f"data/sim_{domain}.h5")
        tune = read_dataset(tune_path).split("test") if tune_path.exists() else None
        test = read_dataset(Path(args.test_data)).split("test") if args.test_data else None
        results[domain] = run_domain(domain, args.scans, args.frames, tune, args.model, test, args.self_ensemble)
        print(markdown(domain, results[domain]), "\n", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
