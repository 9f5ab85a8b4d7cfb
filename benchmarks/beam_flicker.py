"""Denoised projections whose neighbours the beam lit brighter or dimmer (a top-up, a flickering monochromator).

A projection network reads five adjacent frames and takes their intensities as evidence of the centre
frame's. This measures what a change of the beam's intensity between the frames does to the centre's
denoised intensity, and how far neighbouring projections' intensities differ without one.

    python benchmarks/beam_flicker.py [--model tomogan-projection] [--size 256] [--doses 100 1000]

Part 1: how far neighbours' gains (``context.neighbour_gains``: the median ratio of the centre's block means
to a neighbour's) stand from 1 without a change of the beam, on the held-out scans of the dose sweeps
(``dose_sweep.held_out``: 15 cells, 3 phantoms x 6 projections of 128x128 each) and on the card test set
(``data/sim_projection_dose.h5``, where it is), despiked as the projection models' input is: the largest per
cell. Part 2: for each dose, five projections 0.5 degrees apart of the
simulated camera (``SimTomoDetector``, a dark offset of 100 counts); the four neighbours are taken with the
beam ``--gains`` times as bright (each a fresh exposure; the centre is the same frame throughout), and the
centre is denoised (``Denoiser.denoise_context``, ``auto``). Prints the denoised centre's mean signal (above
the dark offset) against the noise-free frame's, less 1, and its SSIM and PSNR against it. Run at two
commits to compare (``PYTHONPATH=<worktree>/src``; part 1 needs this commit's ``context.neighbour_gains``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import h5py
import numpy as np
from dose_sweep import DOSES, held_out
from scratch import scratch_directory

from bluesky_tomogan import load_denoiser
from bluesky_tomogan.cpu import cpu_name
from bluesky_tomogan.despike import PROJECTION_DESPIKE_SIGMAS, remove_isolated_spikes
from bluesky_tomogan.devices import SimTomoDetector
from bluesky_tomogan.frames import context_indices
from bluesky_tomogan.metrics import psnr, ssim

SAMPLE_SETS = (((1.2, 3.5), "ordinary"), ((0.4, 1.2), "medium"), ((0.1, 0.5), "faint"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tomogan-projection")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--doses", type=float, nargs="+", default=[100.0, 1000.0])
    p.add_argument("--gains", type=float, nargs="+", default=[1.0, 1.01, 1.02, 1.05, 0.95, 1.1])
    args = p.parse_args()
    print(f"CPU: {cpu_name()}")
    spread()
    flicker(args)


def spread() -> None:
    """Part 1 (at a commit without ``context.neighbour_gains``, before session 62: left out)."""
    try:
        from bluesky_tomogan.context import GAIN_TOLERANCE, neighbour_gains
    except ImportError:
        print("part 1 left out: this commit has no context.neighbour_gains")
        return
    print(f"without a change of the beam, the largest |gain - 1| of a neighbour (GAIN_TOLERANCE "
          f"{100 * GAIN_TOLERANCE:g} %):")
    for opacity, label in SAMPLE_SETS:
        worst = []
        for dose in DOSES:
            pairs = held_out(dose, 3, 6, 128, opacity)
            frames = remove_isolated_spikes(pairs.ns.astype(np.float32), PROJECTION_DESPIKE_SIGMAS)
            gains = [neighbour_gains(frames[context_indices(pairs.group, i, 5)]) for i in range(len(frames))]
            worst.append(max(float(np.max(np.abs(g - 1))) for g in gains if g is not None))
        print(f"  {label} samples, {' / '.join(f'{d:g}' for d in DOSES)} photons: "
              f"{' / '.join(f'{100 * w:.2f} %' for w in worst)}")
    cards = Path("data/sim_projection_dose.h5")  # the projection models' card test set (docs/models.md)
    if cards.exists():
        with h5py.File(cards, "r") as f:
            frames = remove_isolated_spikes(f["test_ns"][:].astype(np.float32), PROJECTION_DESPIKE_SIGMAS)
            group = f["test_group"][:]
        gains = [neighbour_gains(frames[context_indices(group, i, 5)]) for i in range(len(frames))]
        print(f"  the card test set ({cards}, {len(frames)} frames): "
              f"{100 * max(float(np.max(np.abs(g - 1))) for g in gains if g is not None):.2f} %")


def flicker(args: argparse.Namespace) -> None:
    """Part 2."""
    det = SimTomoDetector(name="det", shape=(args.size, args.size), directory=scratch_directory(), seed=5,
                          simulate_timing=False)
    dark = det.model.dark_level
    den = load_denoiser(args.model, backend="auto")
    print(f"\n{den!r}; {args.size}x{args.size}")
    print("| photons | neighbours' beam | denoised signal / noise-free - 1 | SSIM | PSNR (dB) |")
    print("|---|---|---|---|---|")
    angles = [0.5 * i for i in range(5)]
    for dose in args.doses:
        clean = dose * det.gain * np.exp(-det.sample.line_integrals(angles[2])) + dark
        centre = det.projection([angles[2]], dose).astype(np.float32)
        for gain in args.gains:
            context = np.stack([centre if i == 2 else det.projection([a], dose * gain).astype(np.float32)
                                for i, a in enumerate(angles)])
            out = den.denoise_context(context)
            bias = float((out - dark).mean(dtype=np.float64) / (clean - dark).mean(dtype=np.float64)) - 1
            print(f"| {dose:g} | x{gain:g} | {100 * bias:+.2f} % | {ssim(clean, out):.4f} | {psnr(clean, out):.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
