"""Wall time of ``export_model`` for frames of several sizes, as ``bluesky-tomogan finetune`` exports.

The shipped slice model is exported (ONNX, full-int8 TFLite, OpenVINO int8, and the quality
measurement of every backend and precision) with the fine-tune's 64 calibration samples, from
a dataset of 96 training and 48 test slices of each size: ``data/sim_slice.h5``'s 128x128
slices scaled up (the time depends on the frames' size, not on what they show).

Usage::

    python benchmarks/export_time.py [--sizes 256 512 1024 2048] [--work /tmp/export_time]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from scipy.ndimage import zoom

from bluesky_tomogan.bench import cpu_name
from bluesky_tomogan.export.pipeline import export_model
from bluesky_tomogan.finetune import CALIBRATION_SAMPLES
from bluesky_tomogan.inference import load_card
from bluesky_tomogan.simulate.datasets import PairSet, read_dataset, write_dataset


def scaled(pairs: PairSet, n: int, size: int) -> PairSet:
    f = size / pairs.ns.shape[-1]
    return PairSet(zoom(pairs.ns[:n], (1, f, f), order=1).astype(np.float32),
                   zoom(pairs.gt[:n], (1, f, f), order=1).astype(np.float32), pairs.group[:n])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    ap.add_argument("--data", default="data/sim_slice.h5")
    ap.add_argument("--work", default="/tmp/export_time")
    args = ap.parse_args(argv)
    source = read_dataset(args.data)
    shipped = load_card("tomogan-slice").directory
    results = {"cpu": cpu_name(), "seconds": {}}
    for size in args.sizes:
        work = Path(args.work) / str(size)
        shutil.rmtree(work, ignore_errors=True)
        (work / "model").mkdir(parents=True)
        train, test = scaled(source.split("train"), 96, size), scaled(source.split("test"), 48, size)
        write_dataset(work / "pairs.h5", train, test, {"domain": "slice"})
        for suffix in (".pt", ".json"):
            shutil.copy2(shipped / f"tomogan-slice{suffix}", work / "model")
        t0 = time.perf_counter()
        export_model(work / "model", work / "model", work / "pairs.h5", n_calibration=CALIBRATION_SAMPLES)
        results["seconds"][size] = round(time.perf_counter() - t0, 1)
        print(f"{size}x{size}: {results['seconds'][size]} s", file=sys.stderr, flush=True)
        shutil.rmtree(work)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
