"""What the derived frames cost on disk, by how they are stored (``TomoGANCallback(frame_dtype=, compression=)``).

A simulated scan (the demo's sample and dose by default) is denoised live into float32 frames; those
frames are then written again, one frame per append as the callback writes them, as float32 and as the
detector's 16-bit counts, uncompressed and with each compression. Reported per frame: bytes on disk (and
against the raw 16-bit frame uncompressed), milliseconds to write and to read back, and the largest
difference from the float frame.

Usage::

    python benchmarks/derived_storage.py [--size 512] [--angles 60] [--photons 500]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
from bluesky import RunEngine

from bluesky_tomogan import TomoGANCallback, load_denoiser
from bluesky_tomogan.bench import cpu_name
from bluesky_tomogan.devices import SimTomoDetector, SimTomoStage
from bluesky_tomogan.frames import cast_frames
from bluesky_tomogan.hdf5_frames import COMPRESSIONS, FrameFile  # registers the compression filters
from bluesky_tomogan.metrics import psnr
from bluesky_tomogan.plans import tomo_scan
from bluesky_tomogan.simulate.tomography import angles_deg


def denoised_scan(directory: Path, size: int, angles: int, photons: float) -> tuple[np.ndarray, np.ndarray]:
    """The float32 denoised projections of a simulated scan, as the callback stored them, and the noise-free
    ones."""
    stage = SimTomoStage(name="stage")
    det = SimTomoDetector(name="det", stage=stage, shape=(size, size), directory=directory / "raw",
                          simulate_timing=False)
    det.exposure_time.put(0.1)
    det.photon_flux.put(photons / 0.1)
    RE = RunEngine({})
    RE.subscribe(TomoGANCallback(load_denoiser(), streams=["primary"], directory=directory))
    theta = list(angles_deg(angles))
    (uid,) = RE(tomo_scan(det, stage, theta, n_darks=1, n_flats=1))
    (path,) = (directory / uid).glob("denoised*.h5")
    clean = np.stack([photons * det.gain * np.exp(-det.sample.line_integrals(float(a))) + det.model.dark_level
                      for a in theta])
    with h5py.File(path, "r") as f:
        return np.asarray(f["/data"][:], np.float32), clean


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--angles", type=int, default=60)
    ap.add_argument("--photons", type=float, default=500.0)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        floats, clean = denoised_scan(root, args.size, args.angles, args.photons)
        raw_bytes = floats[0].size * 2
        print(f"CPU: {cpu_name()}; {len(floats)} denoised projections of {args.size}x{args.size} at "
              f"{args.photons:g} photons/pixel (values {floats.min():.0f}-{floats.max():.0f} counts)")
        print("PSNR against the noise-free projections: " + ", ".join(
            f"{dtype} {psnr(clean, cast_frames(floats, np.dtype(dtype))):.2f} dB" for dtype in ("float32", "uint16")))
        print("| frame_dtype | compression | KiB per frame | x smaller than raw uint16 | write ms | read ms "
              "| largest difference |\n|---|---|---|---|---|---|---|")
        for dtype in (np.dtype(np.float32), np.dtype(np.uint16)):
            frames = cast_frames(floats, dtype)
            for compression in (None, *COMPRESSIONS):
                path = root / f"{dtype.name}-{compression}.h5"
                file = FrameFile(path, frames.shape[1:], dtype, dataset="/data", compression=compression)
                t0 = time.perf_counter()
                for frame in frames:
                    file.append(frame)
                write = (time.perf_counter() - t0) / len(frames)
                file.close()
                t0 = time.perf_counter()
                with h5py.File(path, "r") as f:
                    back = np.asarray(f["/data"][:])
                read = (time.perf_counter() - t0) / len(frames)
                per_frame = path.stat().st_size / len(frames)
                diff = np.abs(back.astype(np.float64) - floats).max()
                print(f"| {dtype.name} | {compression or 'none'} | {per_frame / 1024:.0f} | "
                      f"{raw_bytes / per_frame:.2f} | {write * 1e3:.2f} | {read * 1e3:.2f} | {diff:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
