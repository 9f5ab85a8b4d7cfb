"""The host's work around the network for one frame, step by step, against the network itself.

For one 1024x1024 context of the benchmark frames (``bluesky_tomogan.bench``, uint16) through
``Denoiser.denoise_context`` of a model on one backend and precision: the median milliseconds of
the whole call, of ``Denoiser._prepare`` (missing pixels, robust range, context gate, normalise,
the centre frame as the network sees it, tiling), of the session's ``run`` alone, and of each
preparation step by itself. What the host adds is the whole call minus ``run``.

Usage::

    python benchmarks/host_overhead.py [MODEL[:BACKEND[:PRECISION]]] [--repeats 21]

(default ``tomogan-projection-light:openvino:int8``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from light_gap import load  # the same NAME[:BACKEND[:PRECISION]] specs

from bluesky_tomogan.bench import _frames, warm_up
from bluesky_tomogan.context import gate_context
from bluesky_tomogan.cpu import cpu_name
from bluesky_tomogan.masked import missing_pixels
from bluesky_tomogan.normalise import normalise, robust_range


def median_ms(step: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default="tomogan-projection-light:openvino:int8")
    ap.add_argument("--repeats", type=int, default=21)
    args = ap.parse_args(argv)
    den = load(args.model)
    context = _frames(1024, den.depth)
    centre = context[den.depth // 2]
    warm_up(lambda: den.denoise_context(context))
    prep = den._prepare(context, centre)
    offset, scale = robust_range(centre)
    x = normalise(context, offset, scale)
    steps: dict[str, Callable[[], object]] = {
        "denoise_context (whole call)": lambda: den.denoise_context(context),
        "session.run (the network)": lambda: den.session.run(prep.tiles),
        "_prepare (all host steps before the network)": lambda: den._prepare(context, centre),
        "  missing_pixels": lambda: missing_pixels(context),
        "  robust_range": lambda: robust_range(centre),
        "  gate_context": lambda: gate_context(context, den.context_gate, (offset, scale)),
        "  normalise": lambda: normalise(context, offset, scale),
        "  input_as_seen (centre frame)": lambda: den.session.input_as_seen(x[den.depth // 2]),
    }
    print(f"CPU: {cpu_name()}; {args.model} on {den.backend}/{den.precision}, {den.depth} frames of 1024x1024 uint16, "
          f"medians of {args.repeats}")
    for name, step in steps.items():
        print(f"{name:48s} {median_ms(step, args.repeats):7.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
