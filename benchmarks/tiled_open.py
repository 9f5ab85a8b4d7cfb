"""How long an embedded store takes to open: a new one, and one made before.

Usage::

    python benchmarks/tiled_open.py [--repeat 3]

Times ``storage.local_tiled`` (start the embedded Tiled server, return a client; then closed) on a new store
and on the same store again, the median of ``--repeat`` each, in this process (its imports paid by one opening
before the timing), with the catalog checked and made in this process (``tiled_catalog.catalogs_made_here``,
what ``local_tiled`` does) and the way Tiled's ``SimpleTiledServer`` does it alone (``python -m tiled catalog
init --if-not-exists`` in a subprocess at every start). Prints one line for each and their ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable

from scratch import scratch_directory

from bluesky_tomogan import storage, tiled_catalog


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    made_here = tiled_catalog.catalogs_made_here
    root = scratch_directory("tomogan-open-")
    storage.close_local_tiled(storage.local_tiled(root / "warm-up"))  # the imports, not timed
    times: dict[str, list[float]] = {}
    for i in range(args.repeat):
        for way, replace in [("in this process", made_here), ("Tiled's subprocess", contextlib.nullcontext)]:
            tiled_catalog.catalogs_made_here = replace  # local_tiled looks it up at each call
            try:
                store = root / f"{way.split()[0]}-{i}"
                times.setdefault(f"new store, {way}", []).append(_seconds(lambda s=store: _open_close(s)))
                times.setdefault(f"again, {way}", []).append(_seconds(lambda s=store: _open_close(s)))
            finally:
                tiled_catalog.catalogs_made_here = made_here
    for name, seconds in times.items():
        print(f"{name:32s} median {statistics.median(seconds):5.2f} s  ({', '.join(f'{s:.2f}' for s in seconds)})")
    for which in ("new store", "again"):
        ratio = (statistics.median(times[f"{which}, Tiled's subprocess"])
                 / statistics.median(times[f"{which}, in this process"]))
        print(f"{which}: {ratio:.1f}x faster in this process")
    return 0


def _open_close(store: object) -> None:
    storage.close_local_tiled(storage.local_tiled(store))  # type: ignore[arg-type]


def _seconds(call: Callable[[], None]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


if __name__ == "__main__":
    raise SystemExit(main())
