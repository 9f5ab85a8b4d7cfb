"""QC of a low-dose scan behind a camera's offset: what the dark frames change.

A simulated ``tomo_scan`` (128x128, 3 darks, 3 flats, 12 projections) through ``TomoGANCallback`` with the
default ``QCPolicy()``; the beam is lost on projections 6 and 7 (no photons reach the camera). Printed per
frame: flags, ``intensity_ratio`` and ``snr``, for a camera with a 100-count offset and 2 counts of read noise
(the simulated camera) and for a photon counter (no offset, no read noise), with the darks denoised too
(``streams=None``) or left out (``streams=["primary"]``: QC reads them for the dark level alone).

    python benchmarks/qc_dark_level.py [--photons 50]

Before session 55 QC took the dark level as 0 unless ``QCPolicy(dark_level=...)`` was set: the offset camera's
frames without beam read a ratio of 0.81 and no ``beam_lost``, and the photon counter's all-zero darks raised
``dead_pixels`` (docs/qc.md, "Dark frames").
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

from bluesky import RunEngine
from scratch import scratch_directory

from bluesky_tomogan import TomoGANCallback, load_denoiser
from bluesky_tomogan.bench import cpu_name
from bluesky_tomogan.devices import SimTomoDetector, SimTomoStage
from bluesky_tomogan.plans import tomo_scan
from bluesky_tomogan.qc import QCFeedback, QCPolicy

LOST = (6, 7)  # projections (1-based seq_num) taken without beam


def scan(denoiser, camera: str, streams: list[str] | None, photons: float) -> dict[str, list]:
    stage = SimTomoStage(name="stage")
    det = SimTomoDetector(name="det", stage=stage, shape=(128, 128), directory=scratch_directory(),
                          simulate_timing=False)
    if camera == "counter":
        det.model = dataclasses.replace(det.model, dark_level=0.0, read_noise=0.0)
    det.photon_flux.put(photons / det.exposure_time.get())
    conditions, taken = det._conditions, []

    def beam_lost_on_two_projections():
        c = conditions()
        taken.append(c)
        if len(taken) - 6 in LOST:  # after 3 darks and 3 flats
            c["photons"] = 0.0
        return c

    det._conditions = beam_lost_on_two_projections
    RE = RunEngine({})
    cb = TomoGANCallback(denoiser, streams=streams, feedback=QCFeedback(QCPolicy(), RE=RE))
    docs: list[tuple[str, dict]] = []
    cb.subscribe(lambda name, doc: docs.append((name, doc)))
    RE.subscribe(cb)
    RE(tomo_scan(det, stage, list(range(12)), n_darks=3, n_flats=3))
    names = {d["uid"]: d["name"] for n, d in docs if n == "descriptor"}
    rows: dict[str, list] = {}
    for n, d in docs:
        if n == "event_page" and "det_image_qc_flags" in d["data"]:
            rows.setdefault(names[d["descriptor"]], []).extend(zip(
                d["data"]["det_image_qc_flags"], d["data"]["det_image_qc_intensity_ratio"],
                d["data"]["det_image_qc_snr"], strict=True))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photons", type=float, default=50, help="photons/pixel of the open beam per frame")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    print(f"CPU: {cpu_name()}; beam lost on projections {LOST}")
    denoiser = load_denoiser("tomogan-projection")
    for camera in ("offset", "counter"):
        for streams in (None, ["primary"]):
            rows = scan(denoiser, camera, streams, args.photons)
            print(f"\n{camera} camera, streams={streams}")
            for stream, values in rows.items():
                flags = [f or "-" for f, _, _ in values]
                ratios = " ".join(f"{r:.2f}" for _, r, _ in values)
                snrs = " ".join(f"{s:.1f}" for _, _, s in values)
                print(f"  {stream}: flags {flags}\n    ratio {ratios}\n    snr   {snrs}")


if __name__ == "__main__":
    main()
