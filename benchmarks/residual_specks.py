"""QC's residual metrics on a camera with hot and dead pixels against the same camera without them.

The host's despike takes a camera's hot and dead pixels out of a projection model's input, so
raw minus denoised holds each of them as a lone spike of thousands of counts. Counted, they
dominated the residual's variance and made any residual look white: ``residual_correlation``
(``out_of_distribution``) read 0.01-0.08 on such a camera where the same camera without defects
read 0.09-0.27 (session 54). ``residual_metrics`` now leaves lone spikes out
(``qc.metrics.lone_spikes``). This prints, per frame, ``residual_correlation`` and
``removed_sigma`` for both cameras (the same scene and noise, ``SimTomoDetector(seed=...)``), for
the shipped projection model and for a "denoiser" out of its depth (a 9x9 box blur after the
despike, which removes edges: should be flagged on both cameras).

    python benchmarks/residual_specks.py [--size 256] [--frames 8] [--hot 0.006] [--dead 0.003]

It then times ``residual_metrics`` on a 1024x1024 frame without specks and with 0.9 % of them (medians of
30, in this process), beside the CPU's name.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.ndimage import uniform_filter

from bluesky_tomogan import load_denoiser
from bluesky_tomogan.bench import cpu_name
from bluesky_tomogan.despike import PROJECTION_DESPIKE_SIGMAS, remove_isolated_spikes
from bluesky_tomogan.devices import SimTomoDetector, SimTomoStage
from bluesky_tomogan.qc.metrics import FrameMetrics, residual_metrics
from bluesky_tomogan.qc.policy import QCPolicy


def frames(size: int, n: int, photons: float, **defects: float) -> np.ndarray:
    stage = SimTomoStage(name="stage")
    det = SimTomoDetector(name="det", stage=stage, shape=(size, size), seed=3, simulate_timing=False, **defects)
    det.photon_flux.put(photons * 100)  # the simulated flux is per 0.01 s of exposure (SimTomoDetector)
    out = []
    for angle in np.arange(n, dtype=float):  # neighbours one degree apart: the model's context
        stage.theta.set(float(angle)).wait()
        out.append(det._frame(det._conditions()).astype(np.float32))  # what a trigger writes to the file
    return np.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--photons", type=float, default=2000)
    parser.add_argument("--hot", type=float, default=0.006)
    parser.add_argument("--dead", type=float, default=0.003)
    args = parser.parse_args()
    denoiser = load_denoiser("tomogan-projection", backend="auto")
    threshold = QCPolicy().rules["out_of_distribution"].threshold
    print(f"out_of_distribution: residual_correlation above {threshold}")
    for label, defects in (("plain", {}), ("defective", {"hot_pixels": args.hot, "dead_pixels": args.dead})):
        stack = frames(args.size, args.frames, args.photons, **defects)
        denoised = denoiser.denoise(stack)
        blurred = uniform_filter(remove_isolated_spikes(stack.copy(), PROJECTION_DESPIKE_SIGMAS), (1, 9, 9))
        for name, out in (("network", denoised), ("9x9 blur", blurred)):
            ms = [residual_metrics(raw, d, FrameMetrics()) for raw, d in zip(stack, out, strict=True)]
            corr = [m.residual_correlation for m in ms]
            sig = [m.removed_sigma for m in ms]
            flagged = sum(c > threshold for c in corr)
            print(f"{label:9s} {name:8s} residual_correlation {min(corr):.3f}-{max(corr):.3f} "
                  f"(flagged {flagged}/{len(corr)}), removed_sigma {min(sig):.1f}-{max(sig):.1f}")
    cost()


def cost() -> None:
    """Median time of ``residual_metrics`` at 1024x1024, without specks and with 0.6 % hot, 0.3 % dead pixels."""
    rng = np.random.default_rng(0)
    clean = (1000 + np.indices((1024, 1024)).sum(0)).astype(np.float32)
    raw = clean + rng.normal(0, 30, clean.shape).astype(np.float32)
    specks = raw.copy()
    draw = rng.random(clean.shape)
    specks[draw < 0.006] = 65535
    specks[draw > 0.997] = 0
    for name, frame in (("without specks", raw), ("0.9 % specks", specks)):
        times = []
        for _ in range(30):
            t0 = time.perf_counter()
            residual_metrics(frame, clean, FrameMetrics())
            times.append(time.perf_counter() - t0)
        print(f"residual_metrics, 1024x1024, {name}: {1e3 * float(np.median(times)):.2f} ms ({cpu_name()})")


if __name__ == "__main__":
    main()
