"""Wall time of a scan with and without TomoGANCallback, as ratios measured in one run.

Usage::

    python benchmarks/scan_overhead.py [--frames 180] [--size 512] [--exposure 0.1] [--repeats 2]
                                       [--backend auto] [--tiled] [--fly] [--json out.json]

The same ``bp.count`` of the simulated camera (which takes ``--exposure`` seconds
per frame, as a camera does) runs without the callback, with it in
``drop-oldest`` and ``latest-only`` (non-blocking), and in ``block``. Arms are
interleaved and repeated; each arm's median wall time is divided by the
plain scan's. ``--tiled`` stores every arm through TiledWriter into an
embedded Tiled server. ``--fly``: a ``tomo_fly_scan`` of the simulated ophyd-async
beamline instead (``devices.fly``: a frame every ``--exposure`` seconds while the
sample turns, no darks or flats; the ``fly`` extra). Prints a table; ``--json``
writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bluesky.plans as bp
from bluesky import RunEngine
from bluesky_tiled_plugins import TiledWriter

from bluesky_tomogan import TomoGANCallback, load_denoiser
from bluesky_tomogan.devices import SimTomoDetector
from bluesky_tomogan.storage import close_local_tiled, frames_directory, local_tiled

ARMS = ("without", "drop-oldest", "latest-only", "block")


def one_scan(arm: str, args: argparse.Namespace, den: Any, root: Path, client: Any) -> dict[str, float]:
    RE = RunEngine({})
    det = SimTomoDetector(name="det", shape=(args.size, args.size), directory=frames_directory(root) / "raw")
    det.exposure_time.put(args.exposure)
    det.photon_flux.put(500 / args.exposure)
    sink = TiledWriter(client) if client is not None else (lambda name, doc: None)
    cb = None
    if arm == "without":
        RE.subscribe(sink)
    else:
        cb = TomoGANCallback(den, policy=arm, directory=frames_directory(root) if client is not None else None)
        cb.subscribe(sink)
        RE.subscribe(cb)
    plan = fly_scan(args, root) if args.fly else bp.count([det], num=args.frames)
    t0 = time.perf_counter()
    RE(plan)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "dropped": float(cb.dropped if cb else 0), "errors": float(len(cb.errors) if cb else 0)}


def fly_scan(args: argparse.Namespace, root: Path) -> Any:
    """``tomo_fly_scan`` of a fresh simulated fly beamline (made in the newest RunEngine's event loop)."""
    from ophyd_async.core import init_devices, soft_signal_rw

    from bluesky_tomogan.devices.fly import SimFlyRotation, SimFlyTomoDetector
    from bluesky_tomogan.plans import tomo_fly_scan

    with init_devices():
        rot = SimFlyRotation(name="rot")
        shutter = soft_signal_rw(str, "open", name="shutter")
        det = SimFlyTomoDetector(frames_directory(root) / "raw", rot, soft_signal_rw(float, 0.0, name="x"),
                                 shutter, shape=(args.size, args.size), photon_flux=500 / args.exposure, name="det")
    return tomo_fly_scan(det, rot, 0, 180, args.frames, exposure=args.exposure, n_darks=0, n_flats=0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=180)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--exposure", type=float, default=0.1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--tiled", action="store_true", help="store through TiledWriter in an embedded Tiled")
    ap.add_argument("--fly", action="store_true", help="a tomo_fly_scan of the simulated ophyd-async beamline")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)

    den = load_denoiser(backend=args.backend)
    root = Path(tempfile.mkdtemp(prefix="tomogan-overhead-"))
    client = local_tiled(root) if args.tiled else None
    runs: dict[str, list[dict[str, float]]] = {arm: [] for arm in ARMS}
    try:
        one_scan("drop-oldest", args, den, root, client)  # warm-up: compiled models, file system, server
        for _ in range(args.repeats):
            for arm in ARMS:
                runs[arm].append(one_scan(arm, args, den, root, client))
    finally:
        if client is not None:
            close_local_tiled(client)

    base = statistics.median(r["wall_s"] for r in runs["without"])
    rows = []
    print(f"{'tomo_fly_scan' if args.fly else 'count'}: {args.frames} frames of {args.size}x{args.size}, "
          f"{args.exposure:g} s exposure, {den!r}, storage: {'embedded Tiled' if args.tiled else 'none'}")
    print(f"{'arm':<13}{'wall s':>9}{'ratio':>8}{'dropped':>9}")
    for arm in ARMS:
        wall = statistics.median(r["wall_s"] for r in runs[arm])
        dropped = max(r["dropped"] for r in runs[arm])
        rows.append({"arm": arm, "wall_s": wall, "ratio": wall / base, "dropped_max": dropped,
                     "errors_max": max(r["errors"] for r in runs[arm])})
        print(f"{arm:<13}{wall:>9.2f}{wall / base:>8.3f}{dropped:>9.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "denoiser": repr(den), "arms": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
