"""What one redraw of a live view costs, by frame size: two frames drawn and rendered with matplotlib's agg.

A live view draws at most once per ``interval`` (0.5 s by default), so this is its cost per interval
(with a GUI backend the rendering happens in the GUI's thread). Frames are drawn with at most
``DISPLAY_PIXELS`` a side (every k-th pixel); ``--full`` draws every pixel, for comparison.

Usage::

    python benchmarks/live_view_draw.py [--sizes 512 1024 2048 4096] [--rounds 5] [--full]
"""

from __future__ import annotations

import argparse
import time

import matplotlib
import numpy as np

from bluesky_tomogan.bench import cpu_name
from bluesky_tomogan.callbacks import live_view


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--full", action="store_true", help="draw every pixel (no striding for the display)")
    args = ap.parse_args(argv)
    matplotlib.use("Agg")
    if args.full:
        live_view.DISPLAY_PIXELS = 1 << 30
    rng = np.random.default_rng(0)
    print(f"CPU: {cpu_name()}; {'every pixel' if args.full else f'at most {live_view.DISPLAY_PIXELS} a side'}")
    print("| frame | ms per redraw (two frames, rendered) |\n|---|---|")
    for n in args.sizes:
        panels = live_view.Panels(None, ("raw", "denoised"))
        a, b = rng.random((n, n), np.float32), rng.random((n, n), np.float32)
        panels.draw([a, b], a, "warm-up", False)
        t0 = time.perf_counter()
        for _ in range(args.rounds):
            panels.draw([a, b], a, "frame", False)
            panels.fig.canvas.draw()  # agg renders only when asked; a GUI does it after draw_idle
        print(f"| {n}x{n} | {(time.perf_counter() - t0) / args.rounds * 1e3:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
