"""What storing each row as it comes costs a scan: TiledWriter's batch size, as ratios measured in one run.

Usage::

    python benchmarks/tiled_live_cost.py [--angles 120] [--size 512] [--exposure 0.05] [--repeats 2]
                                         [--batch-sizes 10000 8 1] [--json out.json]

A ``tomo_scan`` of the simulated camera (``--exposure`` seconds a frame), denoised by ``TomoGANCallback``
(``block``) and stored into an embedded Tiled server in this process through bluesky-tiled-plugins'
``TiledWriter(client, batch_size=B)``, for each ``B``: 10,000 is its default (rows written at the stop),
1 stores each row as it comes, which a view through Tiled needs to see the run while it runs
(``bluesky-tomogan view --tiled``). Arms are interleaved and repeated; each arm's median wall time (the
RunEngine's, until the stop is written) is divided by the default's. The embedded server shares this
process's cores and interpreter with the RunEngine: the costly case; a server on another machine costs
the RunEngine's thread a request a row only.
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

from bluesky_tomogan import TomoGANCallback, load_denoiser
from bluesky_tomogan.bench import cpu_name
from bluesky_tomogan.devices import SimTomoDetector, SimTomoStage
from bluesky_tomogan.plans import tomo_scan
from bluesky_tomogan.simulate.tomography import angles_deg
from bluesky_tomogan.storage import close_local_tiled, frames_directory, local_tiled


def one_scan(batch_size: int, args: argparse.Namespace, den: Any, root: Path, client: Any) -> float:
    RE = RunEngine({})
    stage = SimTomoStage(name="stage")
    det = SimTomoDetector(name="det", stage=stage, shape=(args.size, args.size),
                          directory=frames_directory(root) / "raw", seed=7)
    det.exposure_time.put(args.exposure)
    det.photon_flux.put(500 / args.exposure)
    cb = TomoGANCallback(den, streams=["primary", "flat"], policy="block")
    cb.subscribe(TiledWriter(client, batch_size=batch_size))
    RE.subscribe(cb)
    t0 = time.perf_counter()
    (uid,) = RE(tomo_scan(det, stage, list(angles_deg(args.angles)), n_darks=5, n_flats=5))
    wall = time.perf_counter() - t0
    rows = client[uid]["denoised"]["det_image_denoised"].shape[0]
    if rows != args.angles:
        raise RuntimeError(f"batch size {batch_size}: {rows} denoised rows stored, not {args.angles}")
    return wall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--angles", type=int, default=120)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--exposure", type=float, default=0.05)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[10_000, 8, 1])
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)

    root = scratch_directory("tomogan-tiled-live-")
    client = local_tiled(root)
    den = load_denoiser()
    walls: dict[int, list[float]] = {b: [] for b in args.batch_sizes}
    try:
        one_scan(args.batch_sizes[0], argparse.Namespace(**{**vars(args), "angles": 8}), den, root, client)  # warm
        for _ in range(args.repeats):
            for b in args.batch_sizes:
                walls[b].append(one_scan(b, args, den, root, client))
    finally:
        close_local_tiled(client)
    base = statistics.median(walls[args.batch_sizes[0]])
    nominal = (args.angles + 10) * args.exposure
    print(f"{cpu_name()}; {args.angles} angles + 5 darks + 5 flats of {args.size}x{args.size} at {args.exposure} s "
          f"({nominal:.1f} s of exposures), {args.repeats} repeats, {den.backend} {den.precision}")
    print(f"{'batch_size':>10}  {'wall s (median)':>16}  {'x the first':>11}  {'ms a frame more':>15}")
    results = []
    for b in args.batch_sizes:
        wall = statistics.median(walls[b])
        extra_ms = 1000 * (wall - base) / (args.angles + 10)
        print(f"{b:>10}  {wall:>16.1f}  {wall / base:>11.2f}  {extra_ms:>15.0f}")
        results.append({"batch_size": b, "wall_s": walls[b], "median_s": wall, "ratio": wall / base})
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_name(), "args": vars(args), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
