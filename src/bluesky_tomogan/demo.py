"""``bluesky-tomogan demo``: a live low-dose tomography scan, denoised while it runs, stored in Tiled.

What a beamline session does, end to end, on simulated hardware:

1. an embedded Tiled server (SQLite catalog and frame files under ``out``);
2. a RunEngine with the simulated camera, rotation stage and ring current;
3. ``TomoGANCallback`` between the RunEngine and ``TiledWriter``, denoising the
   ``primary`` projections with the shipped projection model;
4. ``tomo_scan``: darks, flats, then the projections, with a progress bar;
5. afterwards, everything is read back *from Tiled* (as an analyst would):
   one slice is reconstructed from the raw and from the denoised projections
   and compared with the noise-free answer; a PNG figure is written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import OutputPathError
from .metrics import psnr, ssim

__all__ = ["run_demo"]

log = logging.getLogger(__name__)


def run_demo(
    out: Path,
    size: int = 512,
    n_angles: int = 180,
    photons: float = 500.0,
    backend: str = "auto",
    exposure: float = 0.1,
    seed: int = 7,
    report: Callable[[str], None] = log.info,
) -> dict[str, Any]:
    """Run the demo scan and return its measured numbers; see the module docstring.

    Parameters
    ----------
    out : path
        Directory of the store (Tiled catalog and frames) and the figure.
    size : int
        Frame size (``size x size``).
    n_angles : int
        Projections over 180 degrees.
    photons : float
        Incident photons per pixel per frame in the open beam (the dose).
    backend : str
        Denoiser backend (see :func:`~bluesky_tomogan.load_denoiser`).
    exposure : float
        Simulated exposure time per frame in seconds.
    seed : int
        Seed of the sample and the noise.
    report : callable
        Receives the human-readable summary lines (the CLI passes ``print``).
    """
    from bluesky import RunEngine
    from bluesky.callbacks.tiled_writer import TiledWriter

    from .callbacks import ScanProgress, TomoGANCallback
    from .devices import SimBeamCurrent, SimTomoDetector, SimTomoStage
    from .inference import load_denoiser
    from .plans import tomo_scan
    from .simulate.tomography import angles_deg
    from .storage import close_local_tiled, frames_directory, local_tiled

    root = Path(out).expanduser().resolve()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"cannot create demo directory {root}: {exc}") from exc
    report(f"starting an embedded Tiled server in {root} ...")
    client = local_tiled(root)
    try:
        stage, beam = SimTomoStage(name="stage"), SimBeamCurrent()
        det = SimTomoDetector(name="det", stage=stage, beam=beam, shape=(size, size),
                              directory=frames_directory(root) / "raw", seed=seed)
        det.exposure_time.put(exposure)
        det.photon_flux.put(photons / exposure)
        den = load_denoiser("tomogan-projection", backend=backend)
        report(f"denoiser: {den!r}")

        RE = RunEngine({})
        cb = TomoGANCallback(den, streams=["primary"], directory=frames_directory(root), policy="block")
        cb.subscribe(TiledWriter(client))
        RE.subscribe(cb)
        RE.subscribe(ScanProgress())
        angles = angles_deg(n_angles)
        report(f"scanning: {n_angles} projections of {size}x{size} at {photons:g} photons/pixel ...")
        t0 = time.perf_counter()
        result = RE(tomo_scan(det, stage, list(angles), md={"sample": "glass beads (simulated)",
                                                            "purpose": "bluesky-tomogan demo"}))
        (uid,) = result if isinstance(result, tuple) else result.run_start_uids
        wall = time.perf_counter() - t0
        metrics = _evaluate(client[uid], det, angles, photons)
        metrics |= {"uid": uid, "scan_seconds": wall, "dropped": cb.dropped, "qc_errors": len(cb.errors),
                    "denoiser": repr(den)}
        figure = root / "demo.png"
        _figure(figure, metrics.pop("_panels"), den, metrics)
    finally:
        close_local_tiled(client)

    report(f"scan {uid} took {wall:.1f} s; {cb.dropped} frames dropped; "
           f"median latency {metrics['latency_median_s'] * 1e3:.0f} ms per frame")
    report(f"projection PSNR {metrics['frame_psnr_raw']:.1f} -> {metrics['frame_psnr_denoised']:.1f} dB; "
           f"slice SSIM {metrics['slice_ssim_raw']:.3f} -> {metrics['slice_ssim_denoised']:.3f} "
           f"(against the noise-free reconstruction)")
    report(f"figure: {figure}")
    report(f"data:   {root}  (Tiled catalog in tiled/, frame files in frames/)")
    report("read it back in Python:")
    report("    from bluesky_tomogan.storage import local_tiled")
    report(f"    client = local_tiled({str(root)!r})")
    report(f"    run = client[{uid!r}]")
    report("    run['primary']['det_image'][10]             # raw projection 10 (uint16)")
    report("    run['denoised']['det_image_denoised'][10]   # the same projection, denoised")
    report("    run['denoised']['det_image_qc_error'].read()  # per-frame QC (also _qc_latency_s, _qc_removed_sigma)")
    return metrics


def _evaluate(run: Any, det: Any, angles: np.ndarray, photons: float) -> dict[str, Any]:
    """Metrics read back from Tiled: one projection, and one reconstructed slice."""
    from .simulate.tomography import fbp, flat_field_correct

    size = det.frame_shape[1]
    k, z = len(angles) // 3, size // 2
    raw_k = run["primary"]["det_image"][k].astype(np.float32)
    den_k = run["denoised"]["det_image_denoised"][k]
    dark_level = det.model.dark_level
    clean_k = photons * det.gain * np.exp(-det.sample.line_integrals(float(angles[k]))) + dark_level
    flat = run["flat"]["det_image"][:, z, :].astype(np.float32).mean(0)
    dark = run["dark"]["det_image"][:, z, :].astype(np.float32).mean(0)
    sino_raw = flat_field_correct(run["primary"]["det_image"][:, z, :].astype(np.float32), flat, dark)
    sino_den = flat_field_correct(run["denoised"]["det_image_denoised"][:, z, :], flat, dark)
    rec = {"raw": fbp(sino_raw, angles), "denoised": fbp(sino_den, angles),
           "clean": fbp(det.sample.sinogram(z, angles), angles)}
    latency = np.asarray(run["denoised"]["det_image_qc_latency_s"].read())
    return {
        "frame_psnr_raw": psnr(clean_k, raw_k), "frame_psnr_denoised": psnr(clean_k, den_k),
        "frame_ssim_raw": ssim(clean_k, raw_k), "frame_ssim_denoised": ssim(clean_k, den_k),
        "slice_psnr_raw": psnr(rec["clean"], rec["raw"]), "slice_psnr_denoised": psnr(rec["clean"], rec["denoised"]),
        "slice_ssim_raw": ssim(rec["clean"], rec["raw"]), "slice_ssim_denoised": ssim(rec["clean"], rec["denoised"]),
        "latency_median_s": float(np.median(latency)), "latency_p99_s": float(np.percentile(latency, 99)),
        "_panels": {"k": k, "raw": raw_k, "denoised": den_k, "clean": clean_k, "rec": rec},
    }


def _figure(path: Path, p: dict[str, Any], den: Any, m: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 3, figsize=(13, 8.5), constrained_layout=True)
    lo, hi = np.percentile(p["clean"], [0.5, 99.5])
    slo, shi = np.percentile(p["rec"]["clean"], [0.5, 99.5])
    panels = [
        (p["raw"], f"raw projection {p['k']} (PSNR {m['frame_psnr_raw']:.1f} dB)", (lo, hi)),
        (p["denoised"], f"denoised (PSNR {m['frame_psnr_denoised']:.1f} dB)", (lo, hi)),
        (p["raw"] - p["denoised"], "raw - denoised (removed noise)", None),
        (p["rec"]["raw"], f"slice from raw (SSIM {m['slice_ssim_raw']:.3f})", (slo, shi)),
        (p["rec"]["denoised"], f"slice from denoised (SSIM {m['slice_ssim_denoised']:.3f})", (slo, shi)),
        (p["rec"]["clean"], "slice from noise-free projections", (slo, shi)),
    ]
    for a, (img, title, lim) in zip(ax.ravel(), panels, strict=True):
        a.imshow(img, cmap="gray", vmin=None if lim is None else lim[0], vmax=None if lim is None else lim[1])
        a.set_title(title, fontsize=10)
        a.axis("off")
    fig.suptitle(f"bluesky-tomogan demo: live scan, {den.model_name} on {den.backend}/{den.precision}, "
                 f"median latency {m['latency_median_s'] * 1e3:.0f} ms/frame")
    try:
        fig.savefig(path, dpi=90)
    except OSError as exc:
        raise OutputPathError(f"cannot write the figure {path}: {exc}") from exc
    finally:
        plt.close(fig)
