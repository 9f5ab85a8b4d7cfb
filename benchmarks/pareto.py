"""Quality against speed: held-out SSIM vs ms per 1024x1024 frame, every model on every backend and precision.

For each model (shipped names or model directories; their domain from the card; every
pruning ratio of an All-in-One model as a model of its own), every
(backend, precision) the registry knows and this machine runs is timed at 1024x1024
through the full ``Denoiser`` path (``bluesky_tomogan.bench.run``: a fresh process per
configuration, the same warm-up rule for all) and scored on the held-out frames of
``benchmarks/accuracy.py`` for its domain (SSIM against the clean frames). The reference
is the full network in TensorFlow/Keras fp32 in the same run (``benchmarks/speed.py``;
needs the ``export`` extra). Prints a Markdown table with the speed-up over Keras fp32,
names the CPU and its instruction sets, and plots SSIM against ms per frame.

On a shared machine the speed of the same command moves by 15-25 % between runs, and a
slow spell that hits a configuration but not the Keras reference moves its ratio with it.
``--rounds N`` times the reference and every configuration N times in turn (reference
first in each round) and reports each configuration's median ms and the median of its N
per-round ratios, with their range.

Usage::

    python benchmarks/pareto.py [--models tomogan-projection tomogan-projection-light tomogan-projection-aio
                                 tomogan-projection-s2d-aio tomogan-slice tomogan-slice-light
                                 tomogan-slice-aio] [--repeats 5]
                                [--rounds 3] [--configs openvino:int8 ...] [--json out.json]
                                [--plot docs/pareto.png]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from accuracy import evaluate, held_out
from speed import keras_reference_in_process

from bluesky_tomogan.bench import CONFIGS, run
from bluesky_tomogan.cpu import SPEED_FLAGS, cpu_name
from bluesky_tomogan.cpu import cpu_flags as current_cpu_flags
from bluesky_tomogan.errors import TomoGANError
from bluesky_tomogan.frames import context_indices
from bluesky_tomogan.inference import load_card, load_denoiser

SIZE = 1024


def cpu_flags() -> list[str]:
    have = current_cpu_flags()
    return [f for f in SPEED_FLAGS if f in have]


def quality(model: str, frames: int) -> dict[tuple[str, str], float]:
    """Held-out SSIM of every configuration that loads here."""
    pairs = held_out(load_card(model).domain or "projection", 4)
    idx = np.unique(np.linspace(0, len(pairs.ns) - 1, frames).astype(int))
    out = {}
    for backend, precision in CONFIGS:
        try:
            den = load_denoiser(model, backend=backend, precision=precision)
        except TomoGANError:
            continue
        run_one = lambda i, d=den: d.denoise_context(pairs.ns[context_indices(pairs.group, i, d.depth)])  # noqa: E731
        out[(backend, precision)] = evaluate(run_one, pairs, idx)["ssim"]
    return out


def spread(row: dict[str, Any]) -> str:
    """`` (lo-hi)``: the range of a configuration's per-round ratios, when it was timed more than once."""
    lo, hi = row["speedup_range"]
    return f" ({lo:.1f}-{hi:.1f})" if row["rounds"] > 1 else ""


def expand_ratios(models: list[str]) -> list[tuple[str, str, float]]:
    """``(label, model directory or name, pruning ratio)`` of every model, each ratio of an All-in-One one."""
    out = []
    for model in models:
        card = load_card(model)
        for ratio, sub in card.ratio_cards().items():
            label = f"{model} r{ratio:g}" if card.ratios else model
            out.append((label, model if sub is card else str(sub.directory), ratio))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["tomogan-projection", "tomogan-projection-light",
                                                    "tomogan-projection-aio", "tomogan-projection-s2d-aio",
                                                    "tomogan-slice", "tomogan-slice-light", "tomogan-slice-aio"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--frames", type=int, default=24, help="held-out frames scored per model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1,
                    help="time the Keras reference and every configuration this many times in turn")
    ap.add_argument("--configs", nargs="+", metavar="BACKEND:PRECISION",
                    help="time only these configurations (all are still scored), e.g. openvino:int8")
    ap.add_argument("--json")
    ap.add_argument("--plot")
    args = ap.parse_args(argv)
    configs = CONFIGS if not args.configs else [tuple(c.split(":", 1)) for c in args.configs]
    unknown = [":".join(c) for c in configs if c not in CONFIGS]
    if unknown:
        ap.error(f"unknown configuration {', '.join(unknown)}; known: {', '.join(':'.join(c) for c in CONFIGS)}")
    rows: list[dict[str, Any]] = []
    full_fp32: dict[str, float] = {}  # domain -> held-out SSIM of the first (full) model on ONNX Runtime fp32
    models = expand_ratios(args.models)
    ssim_of: dict[str, dict[tuple[str, str], float]] = {}
    domain_of: dict[str, str] = {}
    for label, model, _ in models:
        ssim_of[label] = quality(model, args.frames)
        domain = domain_of[label] = load_card(model).domain or "projection"
        if ("onnxruntime", "fp32") in ssim_of[label]:
            full_fp32.setdefault(domain, ssim_of[label][("onnxruntime", "fp32")])
    keras_rounds: list[float] = []
    timed: dict[tuple[str, str, str], list[tuple[float, float]]] = {}  # (label, backend, precision) -> (ms, ratio)
    for _ in range(args.rounds):
        keras_ms = keras_reference_in_process(SIZE, args.repeats, args.threads)[0]
        keras_rounds.append(keras_ms)
        for label, model, _ in models:
            for r in run(model, [SIZE], args.repeats, args.threads, configs):
                if "skipped" not in r and (r["backend"], r["precision"]) in ssim_of[label]:
                    timed.setdefault((label, r["backend"], r["precision"]), []).append(
                        (r["median_ms"], keras_ms / r["median_ms"]))
    ratio_of = {label: ratio for label, _, ratio in models}
    for (label, backend, precision), per_round in timed.items():
        ratio, domain = ratio_of[label], domain_of[label]
        ssim_r = ssim_of[label][(backend, precision)]
        ratios = [x for _, x in per_round]
        rows.append({"model": label, "ratio": ratio, "domain": domain, "backend": backend,
                     "precision": precision, "ssim": ssim_r,
                     "ssim_loss_vs_full_fp32": full_fp32.get(domain, float("nan")) - ssim_r,
                     "median_ms": float(np.median([ms for ms, _ in per_round])),
                     "speedup_vs_keras_fp32": float(np.median(ratios)),
                     "speedup_range": [min(ratios), max(ratios)], "rounds": len(per_round)})
    keras_ms = float(np.median(keras_rounds))
    print(f"CPU: {cpu_name()} ({', '.join(cpu_flags())}); {args.threads} threads; {SIZE}x{SIZE} frames")
    print(f"Keras fp32, full network: {keras_ms:.0f} ms per frame (median of {args.repeats}"
          + (f"; rounds: {', '.join(f'{k:.0f}' for k in keras_rounds)})\n" if args.rounds > 1 else ")\n"))
    print("SSIM loss: against the first model of the same domain on ONNX Runtime fp32 (the full network)\n")
    print("| model | backend | precision | held-out SSIM | SSIM loss | ms / frame | x Keras fp32 |")
    print("|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["domain"], r["model"], r["median_ms"])):
        print(f"| {r['model']} | {r['backend']} | {r['precision']} | {r['ssim']:.4f} | "
              f"{r['ssim_loss_vs_full_fp32']:+.4f} | {r['median_ms']:.0f} | "
              f"{r['speedup_vs_keras_fp32']:.1f}{spread(r)} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"cpu": cpu_name(), "flags": cpu_flags(), "keras_fp32_ms": keras_ms,
                                               "keras_fp32_ms_rounds": keras_rounds, "rows": rows}, indent=2))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
        for label in dict.fromkeys(r["model"] for r in rows):
            mine = [r for r in rows if r["model"] == label]
            ax.scatter([r["median_ms"] for r in mine], [r["ssim"] for r in mine], label=label, s=14)
            for r in mine:
                ax.annotate(f"{r['backend']} {r['precision']}", (r["median_ms"], r["ssim"]), fontsize=5)
        if np.isfinite(keras_ms):
            ax.axvline(keras_ms, color="grey", ls="--", label="Keras fp32 (full network)")
        ax.set_xscale("log")
        ax.set_xlabel(f"ms per {SIZE}x{SIZE} frame (log)")
        ax.set_ylabel("held-out SSIM")
        ax.set_title(f"{cpu_name()}, {args.threads} threads", fontsize=9)
        ax.legend(fontsize=6, ncol=2)
        fig.savefig(args.plot, dpi=90)
    return 0


if __name__ == "__main__":
    sys.exit(main())
