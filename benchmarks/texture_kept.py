"""How much of a fine texture that every frame shares a projection model keeps.

Photon noise is new in every frame; a detector's pixel gains (scintillator grain, pixel
response) or a sample's fine structure are not. A projection model that sees five
neighbouring frames can tell the two apart; one that never saw such a texture in training
smooths it away with the noise (real DIAD projections: ``benchmarks/residual_repeat.py``).

For each case, consecutive frames ``gain * Poisson(photons * (1 + texture)) + 100`` (dark
level) with one white texture of relative RMS ``rel`` for all of them, denoised through
``Denoiser.denoise`` (host despike, context gate: what a user runs). Printed per case, over
the frames after the first two and before the last two (full contexts):

- ``kept``: the share of the texture's pixel-scale amplitude in the output (the regression
  slope of the output's high-pass on the noise-free frame's; 1: kept, 0: smoothed away);
- ``corr``: the correlation of those high-passes (how faithfully what is left follows it);
- ``residual_repeat``: the QC metric (median; ``signal_removed`` above 0.5).

What keeping textures may cost on frames without any: ``benchmarks/dose_sweep.py``.

``--grain`` adds a texture of the sample itself, which turns with it: a foam phantom with a fine
density variation (``simulate --sample-grain``, :func:`~bluesky_tomogan.simulate.phantoms.with_grain`)
scanned over consecutive angles of 384 (0.47 degrees apart: neighbouring projections share most
of the texture, and it drifts across the scan). There ``kept`` is the slope of the high-pass of
the output minus the noise-free projection of the same sample without grain, on the high-pass of
the grain's own part of the noise-free projection.

The case of a DIAD-like camera: 1500 photons at a gain of 25 counts each (38,000 counts, 2.7 %
noise), an 8 % texture, 26x22 frames and 128x128 ones. ``--diad`` adds the real DIAD
projections (``benchmarks/residual_repeat.py`` says how to fetch them): there the reference
is the mean of 40 consecutive projections, whose fine texture drifts slowly as the sample
turns (the high-passes of projections 1 and 2 correlate at 0.91, of 1 and 21 at 0.31).

Usage::

    python benchmarks/texture_kept.py [--models tomogan-projection ...] [--backend onnxruntime]
        [--precision fp32] [--frames 9] [--diad IMAGING_H5 NXS] [--grain] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from residual_repeat import read_diad, repeats_of
from scipy.ndimage import uniform_filter

from bluesky_tomogan.bench import cpu_name
from bluesky_tomogan.inference import Denoiser, load_denoiser
from bluesky_tomogan.simulate.phantoms import make_phantom, with_grain
from bluesky_tomogan.simulate.tomography import DetectorModel, angles_deg, scale_to_max_attenuation, simulate_scan

#: A sample's grain (``--grain``): (photons, density RMS); one foam phantom, line integrals up to 2.
GRAIN_CASES = [(500, 0.3), (2000, 0.3), (5000, 0.3), (5000, 0.15)]

#: (photons, texture RMS, counts per photon, height, width)
CASES = [
    (1500, 0.08, 25, 22, 26),
    (1500, 0.08, 25, 128, 128),
    (100, 0.10, 1, 128, 128),
    (500, 0.10, 1, 128, 128),
    (5000, 0.03, 1, 128, 128),
    (5000, 0.01, 1, 128, 128),
]


def high_pass(a: np.ndarray) -> np.ndarray:
    """The pixel-scale part of a frame (minus its 5x5 mean), without the 2 edge pixels the mean pads."""
    return (a - uniform_filter(a, 5, mode="nearest"))[2:-2, 2:-2]


def measure(den: Denoiser, photons: float, rel: float, gain: float, shape: tuple[int, int], n: int,
            seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    texture = 1 + rel * rng.standard_normal(shape)
    clean = gain * photons * texture + 100
    frames = np.stack([gain * rng.poisson(photons * texture) + 100 for _ in range(n)]).astype(np.float32)
    out = den.denoise(frames)
    full = range(2, n - 2)  # frames with their whole context
    ref = high_pass(clean).ravel()
    kept = [float(high_pass(out[i]).ravel() @ ref / (ref @ ref)) for i in full]
    corr = [float(np.corrcoef(high_pass(out[i]).ravel(), ref)[0, 1]) for i in full]
    return {"kept": float(np.median(kept)), "corr": float(np.median(corr)),
            "residual_repeat": float(np.median(repeats_of(frames, out)))}


def measure_grain(den: Denoiser, photons: float, rms: float, n: int, seed: int) -> dict[str, float]:
    """``kept``, ``corr``, ``residual_repeat`` and the texture's RMS for a sample's grain, which turns with it."""
    vol = scale_to_max_attenuation(make_phantom("foam", 128, 100), 2.0)  # one sample at every dose
    grained = with_grain(vol, rms, np.random.default_rng(100))
    angles = angles_deg(384)[:n]
    detector = DetectorModel(photons=photons)
    plain = simulate_scan(vol, angles, detector, np.random.default_rng(seed)).expected
    scan = simulate_scan(grained, angles, detector, np.random.default_rng(seed))
    out = den.denoise(scan.frames.astype(np.float32))
    full = range(2, n - 2)
    refs = [high_pass(scan.expected[i] - plain[i]).ravel() for i in full]
    seen = [high_pass(out[i] - plain[i]).ravel() for i in full]
    inside = plain[0] < 0.95 * plain[0].max()  # behind the sample, where the grain is
    # its RMS in the transmitted photons (the dark level left out)
    texture = float(np.median([((scan.expected[i] - plain[i]) / (plain[i] - detector.dark_level))[inside].std()
                               for i in full]))
    return {"kept": float(np.median([o @ r / (r @ r) for o, r in zip(seen, refs, strict=True)])),
            "corr": float(np.median([np.corrcoef(o, r)[0, 1] for o, r in zip(seen, refs, strict=True)])),
            "residual_repeat": float(np.median(repeats_of(scan.frames.astype(np.float32), out))),
            "texture_rms": texture}


def measure_diad(den: Denoiser, projections: np.ndarray) -> dict[str, float]:
    """``kept``, ``corr`` and ``residual_repeat`` on real projections, against their mean as the texture."""
    frames = projections.astype(np.float32)
    ref = high_pass(frames.mean(axis=0)).ravel()
    out = den.denoise(frames)
    full = range(2, len(frames) - 2)
    return {"kept": float(np.median([high_pass(out[i]).ravel() @ ref / (ref @ ref) for i in full])),
            "corr": float(np.median([np.corrcoef(high_pass(out[i]).ravel(), ref)[0, 1] for i in full])),
            "residual_repeat": float(np.median(repeats_of(frames, out)))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["tomogan-projection"], help="shipped names, cards or directories")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--frames", type=int, default=9, help="frames per case (the first and last two: context)")
    ap.add_argument("--diad", nargs=2, metavar=("IMAGING_H5", "NXS"), help="also the first 40 DIAD projections")
    ap.add_argument("--grain", action="store_true", help="also a sample's grain, which turns with it")
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args(argv)
    print(f"CPU: {cpu_name()}; {args.backend} {args.precision}\n")
    print("| model | photons x counts each | texture | frame | kept | corr | residual_repeat |")
    print("|---|---|---|---|---|---|---|")
    results, notes = [], []
    for model in args.models:
        den = load_denoiser(model, backend=args.backend, precision=args.precision)
        for k, (photons, rel, gain, h, w) in enumerate(CASES):
            r = measure(den, photons, rel, gain, (h, w), args.frames, seed=k)
            results.append({"model": model, "photons": photons, "texture": rel, "gain": gain, "shape": [h, w]} | r)
            print(f"| {model} | {photons:g} x {gain:g} | {100 * rel:g} % | {h}x{w} | {r['kept']:.2f} | "
                  f"{r['corr']:.2f} | {r['residual_repeat']:.3f} |", flush=True)
        if args.grain:
            for k, (photons, rms) in enumerate(GRAIN_CASES):
                r = measure_grain(den, photons, rms, args.frames, seed=100 + k)
                results.append({"model": model, "case": "sample grain", "photons": photons, "grain": rms} | r)
                print(f"| {model} | {photons:g} x 1, sample grain {100 * rms:g} % | {100 * r['texture_rms']:.1f} % | "
                      f"128x128 | {r['kept']:.2f} | {r['corr']:.2f} | {r['residual_repeat']:.3f} |", flush=True)
        if args.diad:
            projections = read_diad(args.diad[0], args.diad[1], 40)
            r = measure_diad(den, projections)
            drift = [float(np.corrcoef(high_pass(projections[0].astype(np.float32)).ravel(),
                                       high_pass(projections[k].astype(np.float32)).ravel())[0, 1]) for k in (1, 20)]
            r |= {"highpass_corr_1_2": drift[0], "highpass_corr_1_21": drift[1]}
            results.append({"model": model, "case": "DIAD"} | r)
            h, w = projections.shape[1:]
            print(f"| {model} | DIAD (K11), real | - | {h}x{w} | {r['kept']:.2f} | {r['corr']:.2f} | "
                  f"{r['residual_repeat']:.3f} |", flush=True)
            notes.append(f"DIAD: the high-passes of projections 1 and 2 correlate at {drift[0]:.2f}, "
                         f"of 1 and 21 at {drift[1]:.2f} (its texture drifts as the sample turns)")
    for note in sorted(set(notes)):
        print(f"\n{note}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu_name(), "backend": args.backend, "precision": args.precision,
                       "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
