"""How far apart the context gate puts real neighbours and views of other samples, and what it costs.

For simulated scans (128x128, detector blur and zingers, the held-out seeds of ``dose_sweep.py``)
at 20, 250 and 5000 photons/pixel on ordinary, medium and faint samples, and angular steps of
0.94-15 degrees, prints ``bluesky_tomogan.context.context_distance`` of the neighbours one and two
frames away (largest) and of frames of other phantoms (smallest and median), against the gate's
threshold, and the same for ``change_to_noise`` against its ``noise_ratio`` (session 73; of the frames
despiked as the ``Denoiser`` gives them to the gate, 12 robust sigmas, the shipped projection cards'
``input_despike``), and the largest ratio of the noise measured in time to the centre's fine-scale estimate over the
scans' five-frame windows (``bluesky_tomogan.context._NOISE_CAP`` caps it at 3); then the time
``gate_context`` takes for one 1024x1024 five-frame uint16 context
(median of 50, with the centre's robust range given, as the ``Denoiser`` gives it).

Usage::

    python benchmarks/context_gate.py
"""

from __future__ import annotations

import sys
import time

import numpy as np
from dose_sweep import HELD_OUT_SEED
from light_gap import SAMPLE_SETS

from bluesky_tomogan.context import (
    DEFAULT_NOISE_RATIO,
    DEFAULT_THRESHOLD,
    _fine_noise,
    _frame_noise,
    _normalised_context,
    change_to_noise,
    context_distance,
    gate_context,
)
from bluesky_tomogan.cpu import cpu_name
from bluesky_tomogan.despike import remove_isolated_spikes
from bluesky_tomogan.normalise import robust_range
from bluesky_tomogan.simulate.datasets import Recipe, simulate_pairs

DOSES = (20.0, 250.0, 5000.0)
ANGLES = (192, 48, 24, 12)  # 0.94, 3.75, 7.5 and 15 degrees between frames


def distances() -> None:
    print(f"threshold {DEFAULT_THRESHOLD}, noise_ratio {DEFAULT_NOISE_RATIO}; each cell: distance / change to noise")
    print("| samples | photons | step (deg) | next frame, largest | two frames on, largest | other phantoms, "
          "smallest | median | noise in time / fine-scale, largest |\n|---|---|---|---|---|---|---|---|")
    for set_name, opacity in SAMPLE_SETS.items():
        for dose in DOSES:
            for n_angles in ANGLES:
                recipe = Recipe(domain="projection", size=128, photons=(dose, dose), max_attenuation=opacity,
                                frames_per_scan=6, n_angles=n_angles, psf_sigma=(0, 1.5), zinger_rate=5e-5)
                p = simulate_pairs(recipe, 3, seed=HELD_OUT_SEED + int(dose), workers=2)
                n = len(p.ns)
                despiked = remove_isolated_spikes(p.ns.astype(np.float32), 12.0)
                # five frames in a row of a scan (the centre and two each side); a frame of another phantom beside
                # two of the centre's own neighbours on the other side (whose second differences measure the noise)
                fives = [list(range(i - 2, i + 3)) for i in range(2, n - 2) if len(set(p.group[i - 2:i + 3])) == 1]
                ratios = [change_to_noise(despiked[f]) for f in fives]
                others_at = [(i, j) for i in range(0, n, 3) for j in range(0, n, 3) if p.group[i] != p.group[j]]
                mixed = []
                for i, j in others_at:
                    after = i + 2 < n and p.group[i + 2] == p.group[i]
                    context = despiked[[j, j, i, i + 1, i + 2] if after else [i - 2, i - 1, i, j, j]]
                    mixed.append(change_to_noise(context)[1 if after else 3])
                distances = ([context_distance(p.ns[f[3]], p.ns[f[2]]) for f in fives],
                             [context_distance(p.ns[f[4]], p.ns[f[2]]) for f in fives],
                             [context_distance(p.ns[j], p.ns[i]) for i, j in others_at])
                cells = [(max(distances[0]), max(distances[1]), min(distances[2]), float(np.median(distances[2]))),
                         (max(r[3] for r in ratios), max(r[4] for r in ratios), min(mixed), float(np.median(mixed)))]
                print(f"| {set_name} | {dose:g} | {180 / n_angles:.2f} | "
                      + " | ".join(f"{a:.3f} / {b:.3f}" for a, b in zip(*cells, strict=True))
                      + f" | {max(_noise_in_time(despiked[f]) for f in fives):.2f} |", flush=True)


def _noise_in_time(context: np.ndarray) -> float:
    """The noise measured in time over the centre's fine-scale estimate (the gate's cap on it is 3)."""
    centre, frames = _normalised_context(context, None)
    return (_frame_noise(frames, centre.x) or 0.0) / _fine_noise(centre.x)


def cost() -> float:
    rng = np.random.default_rng(0)
    context = rng.poisson(500, (5, 1024, 1024)).astype(np.uint16)
    centre_range = robust_range(context[2])
    gate_context(context, centre_range=centre_range)
    times = []
    for _ in range(50):
        t0 = time.perf_counter()
        gate_context(context, centre_range=centre_range)
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def main() -> int:
    print(f"CPU: {cpu_name()}\n")
    distances()
    print(f"\ngate_context, one 1024x1024 five-frame uint16 context: {cost():.2f} ms (median of 50)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
