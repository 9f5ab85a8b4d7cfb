"""Reads of a stream's table from an embedded Tiled server while TiledWriter appends rows to it.

Usage::

    python benchmarks/tiled_table_race.py [--seconds 30] [--guard on|off]

The RunEngine counts a scalar signal (200 events a run, one run after another) into an embedded Tiled server
(``storage.local_tiled``) through ``TiledWriter(client, batch_size=1)``, each row written as it comes, while a
second client reads the newest row of the newest run's column again and again (a live view polling:
``bluesky-tomogan view --tiled``). Prints the reads that returned, those that failed (and how), and the rows
written. ``--guard off`` takes away ``tiled_tables.lend_one_at_a_time`` (Tiled's own pool: one DuckDB connection
lent to every server thread at once), what the embedded server did before: appends then fail ("500 Internal
Server Error", "No active transaction, cannot commit"; TiledWriter retries them and warns that rows may be
duplicated), and the process may end in a segmentation fault (exit status 139) or hang, which is the point of the guard.
"""

from __future__ import annotations

import argparse
import collections
import sys
import threading
import time

import bluesky.plans as bp
import numpy as np
from bluesky import RunEngine
from bluesky_tiled_plugins import TiledWriter
from ophyd.sim import SynSignal
from scratch import scratch_directory
from tiled.client import from_uri

from bluesky_tomogan import storage


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--guard", choices=["on", "off"], default="on")
    args = ap.parse_args(argv)
    client = storage.local_tiled(scratch_directory("tomogan-table-race-"))
    server = storage.server_of(client)
    if args.guard == "off":
        del server.storage.__dict__["_connection_pool"]  # Tiled's own cached property again
    reader = from_uri(server.uri)
    RE = RunEngine({})
    RE.subscribe(TiledWriter(client, batch_size=1))
    rng = np.random.default_rng(0)
    signal = SynSignal(func=lambda: float(rng.random()), name="x")
    done = threading.Event()
    reads, failures = [0], collections.Counter[str]()

    def read() -> None:
        while not done.is_set():
            try:
                runs = reader.values()
                run = runs.last() if len(runs) else None
                if run is not None and "primary" in run and "x" in run["primary"]:
                    column = run["primary"]["x"]
                    column[column.shape[0] - 1]  # the newest row, as the live view reads it
                    reads[0] += 1
            except Exception as exc:  # what a client gets back: count each kind
                failures[f"{type(exc).__name__}: {str(exc)[:60]}"] += 1

    thread = threading.Thread(target=read)
    thread.start()
    runs, stop = 0, time.monotonic() + args.seconds
    try:
        while time.monotonic() < stop:
            RE(bp.count([signal], num=200))
            runs += 1
    finally:
        done.set()
        thread.join()
        storage.close_local_tiled(client)
    print(f"guard {args.guard}, {args.seconds:g} s: {runs * 200} rows written in {runs} runs; {reads[0]} reads "
          f"returned, {sum(failures.values())} failed")
    for what, n in failures.most_common(5):
        print(f"  {n} x {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
