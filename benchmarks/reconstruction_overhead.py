"""Wall time of a tomography scan with live denoising *and* live reconstruction, against the plain scan.

Usage::

    python benchmarks/reconstruction_overhead.py [--angles 180] [--size 512] [--exposure 0.1] [--repeats 2]
                                                 [--every 30] [--json out.json]

``tomo_scan`` (5 darks, 5 flats, ``--angles`` projections; the simulated camera takes
``--exposure`` s per frame, computed during the exposure) stored through TiledWriter into an
embedded Tiled: once with nothing else subscribed, once through ``TomoGANCallback(streams=
["primary", "flat"])`` and ``TomoReconstruction(slice model, every=--every)``. Arms are
interleaved and repeated; medians; the ratio is measured within one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bluesky import RunEngine
from bluesky_tiled_plugins import TiledWriter
from scratch import scratch_directory

from bluesky_tomogan import TomoGANCallback, TomoReconstruction, load_denoiser
from bluesky_tomogan.bench import cpu_name
from bluesky_tomogan.devices import SimTomoDetector, SimTomoStage
from bluesky_tomogan.plans import tomo_scan
from bluesky_tomogan.simulate.tomography import angles_deg
from bluesky_tomogan.storage import close_local_tiled, frames_directory, local_tiled


def one_scan(arm: str, args: argparse.Namespace, models: tuple[Any, Any], root: Path,
             client: Any) -> tuple[float, float]:
    RE = RunEngine({})
    stage = SimTomoStage(name="stage")
    det = SimTomoDetector(name="det", stage=stage, shape=(args.size, args.size),
                          directory=frames_directory(root) / "raw")
    det.exposure_time.put(args.exposure)
    det.photon_flux.put(500 / args.exposure)
    rec = None
    if arm == "without":
        RE.subscribe(TiledWriter(client))
    else:
        cb = TomoGANCallback(models[0], streams=["primary", "flat"], directory=frames_directory(root))
        rec = TomoReconstruction(models[1], every=args.every, directory=frames_directory(root))
        cb.subscribe(rec)
        rec.subscribe(TiledWriter(client))
        RE.subscribe(cb)
    t0 = time.perf_counter()
    RE(tomo_scan(det, stage, list(angles_deg(args.angles)), n_darks=5, n_flats=5))
    returned = time.perf_counter() - t0
    if rec is not None:
        rec.wait()
    return returned, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--angles", type=int, default=180)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--exposure", type=float, default=0.1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--every", type=int, default=30)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    models = (load_denoiser(), load_denoiser("tomogan-slice"))
    root = scratch_directory("tomogan-recon-bench-")
    client = local_tiled(root)
    walls: dict[str, list[float]] = {"without": [], "denoise+reconstruct": []}
    stored: dict[str, list[float]] = {"without": [], "denoise+reconstruct": []}
    try:
        for _ in range(args.repeats):
            for arm in walls:
                returned, complete = one_scan(arm, args, models, root, client)
                walls[arm].append(returned)
                stored[arm].append(complete)
    finally:
        close_local_tiled(client)
    base = statistics.median(walls["without"])
    print(f"tomo_scan of {args.angles} projections of {args.size}x{args.size}, {args.exposure} s exposure, "
          f"{models[0]!r} + {models[1]!r}, reconstruction every {args.every}; CPU: {cpu_name()}")
    print(f"{'arm':<22}{'RE returned s':>14}{'ratio':>8}{'run stored s':>14}{'ratio':>8}")
    for arm in walls:
        w, c = statistics.median(walls[arm]), statistics.median(stored[arm])
        print(f"{arm:<22}{w:>14.2f}{w / base:>8.3f}{c:>14.2f}{c / base:>8.3f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"cpu": cpu_name(), "every": args.every, "walls": walls,
                                               "stored": stored}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
