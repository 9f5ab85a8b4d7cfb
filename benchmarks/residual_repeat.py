"""QC's ``residual_repeat`` on simulated scans and on real frames: what the ``signal_removed`` flag sees.

Photon noise is new in every frame, so what a denoiser removes from consecutive frames should not
correlate; when it does, the denoiser flattened something the frames share (``qc.metrics``). For
each set, the correlation of each frame's residual (raw minus denoised) with the previous frame's
(``qc.metrics.PreviousResidual``), through ``Denoiser.denoise`` of the stack (fp32, ONNX Runtime):

- the 15 dose x sample cells of ``benchmarks/dose_sweep.py`` (held-out simulated projections,
  3 phantoms x 6 consecutive angles of 128x128 each): median and largest value per cell;
- ``--diad``: real projections of Diamond Light Source's DIAD beamline (K11) from HTTomo's test
  data (Apache-2.0 / GPL-3.0): 3001 projections of 22x26 pixels, about 38,000 counts, a fine
  sample texture (5 % of the signal after flat-field correction, 1.2 % photon noise) that stays
  from one projection to the next;
- ``--xrm``: TomoPy's seven 256x256 projections of a chip, 15 degrees apart (benchmarks/real_specks.py).

Fetch the DIAD files (or ``git show`` them from a clone of HTTomo at that commit)::

    base=https://github.com/DiamondLightSource/httomo/raw/6fb28a02a32bba96dde584b7b9afa4ed9805fbab/tests/test_data/k11_diad
    curl -L -o data/k11-18014-imaging.h5 $base/k11-18014/k11-18014-imaging.h5
    curl -L -o data/k11-18014.nxs $base/k11-18014.nxs
    python benchmarks/residual_repeat.py [--model tomogan-projection]
        [--diad data/k11-18014-imaging.h5 data/k11-18014.nxs] [--xrm data/txrm_test_chip_tomo.txrm] [--no-sweep]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from dose_sweep import DOSES, held_out

from bluesky_tomogan.bench import cpu_name
from bluesky_tomogan.inference import Denoiser, load_denoiser
from bluesky_tomogan.qc.metrics import FrameMetrics, PreviousResidual, fixed_pattern, residual_metrics

SAMPLES = {"ordinary": (1.2, 3.5), "medium": (0.4, 1.2), "faint": (0.1, 0.5)}


def repeats(den: Denoiser, frames: np.ndarray) -> list[float]:
    """``residual_repeat`` of each frame after the first of consecutive ``frames``, as the callback measures it."""
    return repeats_of(frames, den.denoise(frames))


def repeats_of(frames: np.ndarray, denoised: np.ndarray, pattern: np.ndarray | None = None) -> list[float]:
    """:func:`repeats` of frames already denoised; ``pattern``: the camera's fixed pattern, left out as the
    callback leaves it out where the run has flats (``qc.metrics.fixed_pattern``)."""
    previous = PreviousResidual()
    metrics = [residual_metrics(raw, out, FrameMetrics(), previous=previous, fixed_pattern=pattern)
               for raw, out in zip(frames, denoised, strict=True)]
    return [m.residual_repeat for m in metrics[1:]]


def read_diad(imaging: str, nxs: str, n: int, key_value: int = 0) -> np.ndarray:
    """The first ``n`` projections (raw counts) of HTTomo's DIAD test scan: its image keys are in the NeXus file
    (``key_value`` 1: its flats, 2: its darks)."""
    import h5py

    with h5py.File(imaging, "r") as f:
        frames = f["entry/detector/detector"][:]
    with h5py.File(nxs, "r") as f:
        key = f["entry/instrument/imaging/image_key"][:]
    return np.asarray(frames[key == key_value][:n])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tomogan-projection")
    ap.add_argument("--diad", nargs=2, metavar=("IMAGING_H5", "NXS"))
    ap.add_argument("--xrm")
    ap.add_argument("--frames", type=int, default=200, help="DIAD projections measured (the first N)")
    ap.add_argument("--no-sweep", action="store_true", help="skip the simulated dose cells")
    args = ap.parse_args(argv)
    den = load_denoiser(args.model, backend="onnxruntime", precision="fp32")
    print(f"CPU: {cpu_name()}; {args.model}, ONNX Runtime fp32\n")
    print("| frames | residual_repeat: median | largest |")
    print("|---|---|---|")
    if not args.no_sweep:
        for sample, opacity in SAMPLES.items():
            for dose in DOSES:
                pairs = held_out(dose, 3, 6, 128, opacity)
                values = [v for g in np.unique(pairs.group) for v in repeats(den, pairs.ns[pairs.group == g])]
                print(f"| simulated, {sample}, {dose:g} photons | {np.median(values):.3f} | {np.max(values):.3f} |",
                      flush=True)
    if args.diad:
        projections = read_diad(args.diad[0], args.diad[1], args.frames)
        denoised = den.denoise(projections)
        values = repeats_of(projections, denoised)
        print(f"| DIAD (K11), {len(projections)} projections of {projections.shape[1]}x{projections.shape[2]} | "
              f"{np.median(values):.3f} | {np.max(values):.3f} |")
        flats, darks = (read_diad(args.diad[0], args.diad[1], 1000, key) for key in (1, 2))
        pattern = fixed_pattern(flats.astype(np.float32).sum(axis=0), len(flats), float(darks.mean()))
        values = repeats_of(projections, denoised, pattern)
        print(f"| the same, the camera's fixed pattern from its {len(flats)} flats left out (rms "
              f"{float(np.std(pattern)):.3f}) | {np.median(values):.3f} | {np.max(values):.3f} |")
    if args.xrm:
        from real_specks import read_xrm

        values = repeats(den, read_xrm(args.xrm))
        print(f"| {args.xrm}, 15 degrees apart | {np.median(values):.3f} | {np.max(values):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
