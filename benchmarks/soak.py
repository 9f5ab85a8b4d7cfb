"""Soak: many frames through one TomoGANCallback, over several runs; memory, threads and files must stay flat.

Usage::

    python benchmarks/soak.py [--runs 10] [--frames 200] [--size 512] [--backend auto] [--tiled] [--json out.json]

Runs ``--runs`` scans of ``--frames`` frames of the simulated detector (frames
written to HDF5, as an area detector does) through *one* callback in policy
``block``. After every run it records the process's RSS, the number of live
``tomogan-worker`` threads and of open file descriptors, and how many frames
were derived, dropped or flagged. The first run is the warm-up (runtime
compilation, allocator pools); growth is measured from its end. Each run's
files are deleted after it, so the disk does not fill. ``--tiled`` stores
everything through TiledWriter into an embedded Tiled server too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

import bluesky.plans as bp
import psutil
from bluesky import RunEngine
from bluesky_tiled_plugins import TiledWriter
from scratch import scratch_directory

from bluesky_tomogan import TomoGANCallback, load_denoiser
from bluesky_tomogan.bench import cpu_name
from bluesky_tomogan.devices import SimTomoDetector
from bluesky_tomogan.storage import close_local_tiled, frames_directory, local_tiled


def workers() -> int:
    return sum(t.name.startswith("tomogan-worker") and t.is_alive() for t in threading.enumerate())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--tiled", action="store_true", help="store through TiledWriter into an embedded Tiled")
    ap.add_argument("--json", help="write the results as JSON")
    args = ap.parse_args(argv)

    proc = psutil.Process()
    root = scratch_directory("tomogan-soak-")
    client = local_tiled(root / "store") if args.tiled else None
    den = load_denoiser(backend=args.backend)
    cb = TomoGANCallback(den, streams=["primary"], policy="block")
    derived: list[int] = []  # seq_nums of the derived rows of the current run
    denoised_descriptors: set[str] = set()

    def count_derived(name: str, doc: dict[str, Any]) -> None:
        if name == "descriptor" and doc["name"] == "denoised":
            denoised_descriptors.add(doc["uid"])
        elif name == "event_page" and doc["descriptor"] in denoised_descriptors:
            derived.extend(doc["seq_num"])

    cb.subscribe(count_derived)
    if client is not None:
        cb.subscribe(TiledWriter(client))
    RE = RunEngine({})
    RE.subscribe(cb)
    rows: list[dict[str, Any]] = []
    print(f"{den!r}, {args.runs} runs x {args.frames} frames of {args.size}x{args.size}, policy block, "
          f"{'TiledWriter' if client else 'no storage'}; CPU: {cpu_name()}, {os.cpu_count()} cores")
    print(f"{'run':>4} {'frames':>7} {'derived':>8} {'dropped':>8} {'flagged':>8} {'s':>7} {'RSS MB':>8} "
          f"{'workers':>8} {'fds':>5}")
    for run in range(args.runs):
        raw_dir = frames_directory(root) / f"raw-{run}"
        det = SimTomoDetector(name="det", shape=(args.size, args.size), directory=raw_dir, seed=run,
                              simulate_timing=False)
        derived.clear()
        t0 = time.perf_counter()
        RE(bp.count([det], num=args.frames))
        wall = time.perf_counter() - t0
        summary = cb.last_run
        assert summary is not None
        row = {"run": run, "frames": args.frames, "derived": len(derived), "dropped": summary.dropped,
               "flagged": summary.missing, "seconds": wall, "rss_mb": proc.memory_info().rss / 2**20,
               "workers": workers(), "fds": proc.num_fds()}
        rows.append(row)
        print(f"{run:>4} {row['frames']:>7} {row['derived']:>8} {row['dropped']:>8} {row['flagged']:>8} "
              f"{wall:>7.1f} {row['rss_mb']:>8.1f} {row['workers']:>8} {row['fds']:>5}")
        if client is None:  # stored runs must keep their files; the rest go, so the disk does not fill
            shutil.rmtree(raw_dir, ignore_errors=True)
    warm = rows[0]
    total = sum(r["frames"] for r in rows)
    result = {
        "cpu": cpu_name(), "cores": os.cpu_count(), "model": repr(den), "size": args.size, "frames": total,
        "derived": sum(r["derived"] for r in rows), "dropped": sum(r["dropped"] for r in rows),
        "flagged": sum(r["flagged"] for r in rows), "tiled": bool(client),
        "rss_growth_after_warm_up_mb": rows[-1]["rss_mb"] - warm["rss_mb"],
        "rss_max_growth_after_warm_up_mb": max(r["rss_mb"] for r in rows) - warm["rss_mb"],
        "workers_left": rows[-1]["workers"], "fd_growth_after_warm_up": rows[-1]["fds"] - warm["fds"],
        "runs": rows,
    }
    print(f"\n{result['derived']}/{total} frames derived, {result['dropped']} dropped, {result['flagged']} flagged; "
          f"RSS growth after the warm-up run: {result['rss_growth_after_warm_up_mb']:+.1f} MB "
          f"(max {result['rss_max_growth_after_warm_up_mb']:+.1f}); worker threads left: {result['workers_left']}; "
          f"file descriptors: {result['fd_growth_after_warm_up']:+d}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if client is not None:
        close_local_tiled(client)
    shutil.rmtree(root, ignore_errors=True)
    ok = result["derived"] == total and result["dropped"] == 0 and result["workers_left"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
