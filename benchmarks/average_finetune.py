"""After a fine-tune on your own scan: the fine-tuned model, the shipped one and their averages, on that scan
and on the next sample.

Simulates two low-dose scans, the user's (a ``grains`` phantom, a family no shipped model saw) and the next
sample's (a ``bead_pack``, a family the shipped slice model learnt from), fine-tunes the shipped slice model on
the first as a user would (``bluesky-tomogan finetune``, ONNX only), averages it with the shipped weights
(``bluesky-tomogan average``, the second model's share ``--weights``), and scores every model on the held-out
slab of both scans against their clean slices (ONNX Runtime fp32). The question it answers: does a model
fine-tuned on one sample still serve the next one, and does the average keep both?

Usage::

    python benchmarks/average_finetune.py [--size 128] [--angles 192] [--photons 200] [--minutes 3] \\
        [--weights 0.25 0.5 0.75] [--out runs/average-finetune] [--json result.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bluesky_tomogan.bench import cpu_name
from bluesky_tomogan.export.pipeline import export_model
from bluesky_tomogan.finetune import PAIRS_FILE, read_scan
from bluesky_tomogan.finetune.evaluate import slice_quality
from bluesky_tomogan.model.average import average_models
from bluesky_tomogan.simulate.datasets import write_scan_file


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--angles", type=int, default=192)
    ap.add_argument("--photons", type=float, default=200.0)
    ap.add_argument("--minutes", type=float, default=3.0, help="the fine-tune's budget (default 3)")
    ap.add_argument("--weights", type=float, nargs="+", default=[0.25, 0.5, 0.75],
                    help="the fine-tuned model's shares in the averages")
    ap.add_argument("--out", default="runs/average-finetune")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    out = Path(args.out)
    scans = {family: write_scan_file(out / f"{family}_scan.h5", family, args.size, args.angles, args.photons,
                                     seed=21 + k)
             for k, family in enumerate(("grains", "bead_pack"))}
    tuned = out / "finetuned"
    subprocess.run([sys.executable, "-m", "bluesky_tomogan.cli", "finetune", str(scans["grains"][0]), "--out",
                    str(tuned), "--minutes", str(args.minutes), "--format", "onnx", "--no-progress"], check=True)
    models = {"shipped": "tomogan-slice", "fine-tuned (share 1)": str(tuned)}
    for weight in args.weights:
        source = average_models("tomogan-slice", tuned, out / f"avg{weight:g}-src", weight=weight, name="averaged")
        exported = export_model(source.parent, out / f"avg{weight:g}", tuned / PAIRS_FILE, formats=("onnx",),
                                measure=False)
        models[f"average, share {weight:g}"] = str(exported)
    result: dict[str, Any] = {"cpu": cpu_name(), "scan": f"{args.angles} x {args.size} x {args.size}",
                                 "photons": args.photons}
    for family, (path, clean) in scans.items():
        result[family] = slice_quality(read_scan(str(path)), clean, models)
    print(f"held-out slab SSIM / PSNR against the clean slices ({result['cpu']}; fine-tuned on the grains scan)")
    print("| model | grains (the scan fine-tuned on) | bead pack (the next sample) |")
    print("|---|---|---|")
    for label in ["raw", *models]:
        cells = [result[family][label] for family in scans]
        print(f"| {label} | " + " | ".join(f"{c['ssim']:.4f} / {c['psnr']:.2f} dB" for c in cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
