"""Wrong frames read from one HDF5 file by this package's reader and an embedded Tiled server in one process.

Usage::

    python benchmarks/tiled_hdf5_race.py [--seconds 20] [--adapter serial|tiled]

A ``tomo_scan`` of the simulated camera (64 x 64, 60 projections) is stored through an embedded Tiled server
(``storage.local_tiled``); then, for ``--seconds``, one thread reads every projection in a loop through a
``StreamFrameReader`` (what the callback's worker does during a scan) while the main thread reads them one by
one from the server (a client looking at a stored run meanwhile). Prints how many reads on each side returned
another frame than the one asked for. ``--adapter tiled`` puts Tiled's own HDF5 adapter back (the code before
``tiled_hdf5.SerialHDF5Adapter``); ``serial`` (default) is what ``local_tiled`` registers.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

import numpy as np
from bluesky import RunEngine
from bluesky_tiled_plugins import TiledWriter
from scratch import scratch_directory

from bluesky_tomogan import storage
from bluesky_tomogan.devices import SimTomoDetector, SimTomoStage
from bluesky_tomogan.hdf5_frames import MIMETYPE, StreamFrameReader
from bluesky_tomogan.plans import tomo_scan


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--adapter", choices=["serial", "tiled"], default="serial")
    args = ap.parse_args(argv)
    root = scratch_directory("tomogan-tiled-race-")
    client = storage.local_tiled(root)
    if args.adapter == "tiled":
        from tiled.adapters.hdf5 import HDF5Adapter

        storage.server_of(client).catalog.context.adapters_by_mimetype[MIMETYPE] = HDF5Adapter
    try:
        RE = RunEngine({})
        stage = SimTomoStage(name="stage")
        det = SimTomoDetector(name="det", stage=stage, shape=(64, 64), directory=storage.frames_directory(root),
                              simulate_timing=False)
        docs: list[tuple[str, dict]] = []
        RE.subscribe(TiledWriter(client))
        RE.subscribe(lambda name, doc: docs.append((name, doc)))
        (uid,) = RE(tomo_scan(det, stage, list(range(0, 180, 3)), n_darks=1, n_flats=1))
        *_, projections = [d for n, d in docs if n == "stream_resource"]
        reader = StreamFrameReader(projections)
        truth = reader(0, 60).copy()
        stop = time.monotonic() + args.seconds
        ours = [0, 0]  # reads, wrong

        def read() -> None:
            while time.monotonic() < stop:
                for i in range(60):
                    ours[0] += 1
                    ours[1] += not np.array_equal(reader(i, i + 1)[0], truth[i])

        thread = threading.Thread(target=read)
        thread.start()
        served, theirs = storage.stored_frames(client[uid]["primary"]["det_image"]), [0, 0]
        while time.monotonic() < stop:
            i = theirs[0] % 60
            theirs[0] += 1
            theirs[1] += not np.array_equal(np.asarray(served[i]), truth[i])
        thread.join()
        reader.close()
        print(f"adapter {args.adapter}, {args.seconds:g} s: this package's reader {ours[1]} wrong of {ours[0]} reads; "
              f"the Tiled client {theirs[1]} wrong of {theirs[0]}")
    finally:
        storage.close_local_tiled(client)
    return 0


if __name__ == "__main__":
    sys.exit(main())
