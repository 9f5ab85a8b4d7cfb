"""QC's ``out_of_distribution`` on cameras whose light spreads over neighbouring pixels (a PSF).

A scintillator and its optics spread each photon's light over a few pixels, so the noise of a
real camera correlates between neighbours, and so does a residual (raw minus denoised) of noise
alone. ``residual_correlation`` (the residual's lag-1 autocorrelation) then reads the camera's
blur, not structure the denoiser removed. ``residual_structure`` (the flag's metric since session
62) is what it reads beyond ``noise_correlation``, the camera noise's own lag-1 autocorrelation
from two consecutive flat fields (``qc.metrics.flat_noise_correlation``).

    python benchmarks/qc_camera_blur.py [--size 256] [--frames 8] [--step 0.5] [--blurs 0 0.5 0.8 1.2]
                                        [--doses 100 1000]

For each camera blur (``SimTomoDetector(blur=...)``, a Gaussian's sigma in pixels) and dose (photons per
pixel of open beam), two flats and ``--frames`` projections ``--step`` degrees apart are taken; the
projections are denoised by the shipped projection model (``Denoiser.denoise``: each frame with its
neighbours) and by a "denoiser" out of its depth (a 9x9 box blur, which removes edges), and
``residual_metrics`` runs on each as the live callback's QC does. Prints, per camera, dose and
denoiser, the ranges of ``residual_correlation`` and ``residual_structure`` over the frames, the
flats' ``noise_correlation``, and how many frames each metric flags at the policy's threshold:
``residual_correlation`` (the flag's metric before) and ``residual_structure`` (now). Then, per camera and
dose, a projection's SNR: on ``noise_sigma`` alone (Immerkaer's estimator, which assumes white noise and reads
low on a camera that blurs) and with the camera's photon transfer curve from ten darks and ten flats
(``qc.metrics.PhotonTransfer``, as the callback's QC takes it since session 63), and how much one pair of
flats' ``white_noise_variance`` scatters (standard deviation over mean, of the nine pairs).
"""

from __future__ import annotations

import argparse
from itertools import pairwise

import numpy as np
from scipy.ndimage import uniform_filter
from scratch import scratch_directory

from bluesky_tomogan import load_denoiser
from bluesky_tomogan.bench import cpu_name
from bluesky_tomogan.despike import PROJECTION_DESPIKE_SIGMAS, remove_isolated_spikes
from bluesky_tomogan.devices import SimTomoDetector, SimTomoStage
from bluesky_tomogan.qc.metrics import (
    FrameMetrics,
    IntensityReference,
    PhotonTransfer,
    PreviousResidual,
    flat_noise_correlation,
    frame_metrics,
    residual_metrics,
    white_noise_variance,
)
from bluesky_tomogan.qc.policy import QCPolicy


def scan(size: int, n: int, step: float, photons: float, blur: float) -> tuple[np.ndarray, float]:
    """``n`` projections, and the noise correlation of the camera's two flats taken before them."""
    stage = SimTomoStage(name="stage")
    det = SimTomoDetector(name="det", stage=stage, shape=(size, size), directory=scratch_directory(), seed=3,
                          simulate_timing=False, blur=blur)
    flats = [det.projection([0.0], photons, sample_in=False) for _ in range(2)]
    out = []
    for i in range(n):
        stage.theta.set(i * step).wait()
        out.append(det.projection([i * step], photons).astype(np.float32))
    return np.stack(out), flat_noise_correlation(flats[1], flats[0])


def span(values: list[float]) -> str:
    return f"{min(values):.2f} to {max(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--step", type=float, default=0.5, help="degrees between projections")
    parser.add_argument("--blurs", type=float, nargs="+", default=[0.0, 0.5, 0.8, 1.2])
    parser.add_argument("--doses", type=float, nargs="+", default=[100.0, 1000.0])
    args = parser.parse_args()
    denoiser = load_denoiser("tomogan-projection", backend="auto")
    threshold = QCPolicy().rules["out_of_distribution"].threshold
    print(f"CPU: {cpu_name()}; {denoiser!r}; {args.frames} projections of {args.size}x{args.size}, "
          f"{args.step} degrees apart; out_of_distribution above {threshold}")
    print("| camera blur (px) | photons | flats' `noise_correlation` | denoiser | `residual_correlation` | "
          "`residual_structure` | flagged by `residual_correlation` / by `residual_structure` |")
    print("|---|---|---|---|---|---|---|")
    for blur in args.blurs:
        for dose in args.doses:
            stack, noise = scan(args.size, args.frames, args.step, dose, blur)
            boxed = uniform_filter(remove_isolated_spikes(stack.copy(), PROJECTION_DESPIKE_SIGMAS), (1, 9, 9))
            for name, out in (("network", denoiser.denoise(stack)), ("9x9 blur", boxed)):
                previous = PreviousResidual()
                ms = [residual_metrics(raw, d, FrameMetrics(), previous=previous, noise_correlation=noise)
                      for raw, d in zip(stack, out, strict=True)]
                corr = [m.residual_correlation for m in ms]
                structure = [m.residual_structure for m in ms]
                before = sum(c > threshold for c in corr)
                now = sum(s > threshold for s in structure)
                print(f"| {blur:g} | {dose:g} | {noise:.2f} | {name} | {span(corr)} | {span(structure)} | "
                      f"{before} / {now} of {len(ms)} |", flush=True)
    print(f"\n{TRANSFER_FRAMES} darks and {TRANSFER_FRAMES} flats, then a projection at 30 degrees (dark level "
          "100, read noise 2 counts); `snr` before: on `noise_sigma` alone; now: with the camera's photon transfer "
          "curve from the flats' and darks' pairs (`qc.metrics.PhotonTransfer`), as the callback's QC takes it")
    print("| camera blur (px) | photons | flats' `noise_correlation` | `noise_sigma` | `camera_noise_sigma` | "
          "`snr` before | `snr` now | a flat pair's variance: scatter |")
    print("|---|---|---|---|---|---|---|---|")
    for blur in args.blurs:
        for dose in (25.0, *args.doses):
            print(transfer_row(args.size, blur, dose), flush=True)


#: Darks and flats a run takes before its projections (``tomo_scan``'s default).
TRANSFER_FRAMES = 10


def transfer_row(size: int, blur: float, dose: float) -> str:
    """One row of the second table: a projection's SNR before and with the camera's photon transfer curve."""
    stage = SimTomoStage(name="stage")
    det = SimTomoDetector(name="det", stage=stage, shape=(size, size), directory=scratch_directory(), seed=3,
                          simulate_timing=False, blur=blur)
    dark = det.model.dark_level
    darks = [det.projection([0.0], 0.0, sample_in=False) for _ in range(TRANSFER_FRAMES)]
    flats = [det.projection([0.0], dose, sample_in=False) for _ in range(TRANSFER_FRAMES)]
    read = float(np.median([white_noise_variance(b, a) for a, b in pairwise(darks)]))
    powers = [white_noise_variance(b, a, dark) for a, b in pairwise(flats)]
    correlation = float(np.median([flat_noise_correlation(b, a) for a, b in pairwise(flats)]))
    signal = float(np.median([f.mean() for f in flats[1:]])) - dark
    curve = PhotonTransfer.from_levels(signal, float(np.median(powers)), read, correlation)
    stage.theta.set(30.0).wait()
    frame = det.projection([30.0], dose)
    level = QCPolicy().saturation_for(frame.dtype)
    before = frame_metrics(frame, IntensityReference(), None, level, dark)
    now = frame_metrics(frame, IntensityReference(), None, level, dark, transfer=curve)
    scatter = float(np.std(powers) / np.mean(powers))
    return (f"| {blur:g} | {dose:g} | {correlation:.2f} | {now.noise_sigma:.1f} | {now.camera_noise_sigma:.1f} | "
            f"{before.snr:.1f} | {now.snr:.1f} | {100 * scatter:.0f} % |")

if __name__ == "__main__":
    main()
