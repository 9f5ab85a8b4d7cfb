"""Runs whose stop never comes (a RunEngine killed during them), through one long-lived TomoGANCallback.

Usage::

    python benchmarks/unstopped_runs.py [--runs 40] [--frames 5] [--size 256]

Records one scan of the simulated detector (frames in HDF5 files, as an area detector writes them),
then replays its documents ``--runs`` times, each under new uids and without its stop, into one
callback, as ``bluesky-tomogan serve`` would receive them from RunEngines that died mid-scan (replayed at
once, so ``ABANDON_IDLE_S`` is set to 0: runs that die minutes apart have been idle that long). Every
10 runs, once no more than ``MAX_OPEN_RUNS`` workers are left (or 10 s have passed), it prints the
process's live threads, its ``tomogan-worker`` threads and its peak RSS.
"""

from __future__ import annotations

import argparse
import copy
import logging
import resource
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bluesky import RunEngine

from bluesky_tomogan import TomoGANCallback, load_denoiser
from bluesky_tomogan.callbacks import passthrough
from bluesky_tomogan.callbacks.passthrough import MAX_OPEN_RUNS
from bluesky_tomogan.devices import SimTomoDetector, SimTomoStage
from bluesky_tomogan.plans import tomo_scan


def _renamed(obj: Any, uids: dict[str, str]) -> Any:
    """``obj`` (a document) with every uid in ``uids`` replaced, wherever it appears."""
    if isinstance(obj, dict):
        return {k: _renamed(v, uids) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_renamed(v, uids) for v in obj]
    return uids.get(obj, obj) if isinstance(obj, str) else obj


def _workers() -> int:
    return sum(t.name.startswith("tomogan-worker-") for t in threading.enumerate())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--frames", type=int, default=5)
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # each ended run logs a warning: not the point here
    passthrough.ABANDON_IDLE_S = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        stage = SimTomoStage(name="stage")
        det = SimTomoDetector(name="det", stage=stage, shape=(args.size, args.size), directory=Path(tmp),
                              simulate_timing=False)
        recorded: list[tuple[str, dict[str, Any]]] = []
        RE = RunEngine()
        RE.subscribe(lambda name, doc: recorded.append((name, doc)))
        RE(tomo_scan(det, stage, angles=range(args.frames), n_darks=0, n_flats=0))
        uids = {doc[k] for _, doc in recorded for k in ("uid", "run_start", "descriptor", "stream_resource")
                if isinstance(doc.get(k), str)}
        cb = TomoGANCallback(load_denoiser(), streams=["primary"], directory=Path(tmp) / "derived")
        print(f"{args.runs} runs of {args.frames} {args.size}x{args.size} frames without their stops; "
              f"threads at the start: {threading.active_count()}")
        starts = []
        for n in range(1, args.runs + 1):
            renamed = {u: str(uuid.uuid4()) for u in uids}
            starts.append(renamed[next(doc["uid"] for name, doc in recorded if name == "start")])
            for name, doc in recorded:
                if name == "stop":
                    continue
                doc = _renamed(copy.deepcopy(doc), renamed)
                if name == "stream_datum":
                    doc["uid"] = str(uuid.uuid4())
                cb(name, doc)
            if n % 10 == 0:
                deadline = time.monotonic() + 10  # ended workers first finish the frame they hold
                while (workers := _workers()) > MAX_OPEN_RUNS and time.monotonic() < deadline:
                    time.sleep(0.1)
                rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
                print(f"after {n} runs: {threading.active_count()} threads, {workers} tomogan workers, "
                      f"peak RSS {rss} MB")
        for uid in starts[-MAX_OPEN_RUNS:]:  # the runs still open stop at last, so that their files close
            cb("stop", {"uid": str(uuid.uuid4()), "time": time.time(), "run_start": uid, "exit_status": "abort",
                        "reason": "benchmark over"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
