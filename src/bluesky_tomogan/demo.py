"""``bluesky-tomogan demo``: a simulated low-dose scan denoised with the shipped model.

Simulates a glass-bead sample, acquires low-dose projections (Poisson noise,
flat and dark fields), denoises every projection with the shipped
projection-domain model, reconstructs one slice from the raw and from the
denoised projections, and writes a figure and an HDF5 file with everything.
(The live RunEngine scan with the Bluesky callback arrives with the callback.)
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import h5py
import numpy as np

from .errors import OutputPathError
from .metrics import psnr, ssim

__all__ = ["run_demo"]

log = logging.getLogger(__name__)


def run_demo(out: Path, size: int = 256, n_angles: int = 180, photons: float = 500.0,
             backend: str = "auto", seed: int = 7) -> dict[str, float]:
    """Run the demo and return its measured numbers; see the module docstring."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tqdm.auto import tqdm

    from .frames import context_indices
    from .inference import load_denoiser
    from .simulate.phantoms import make_phantom
    from .simulate.tomography import (
        DetectorModel,
        angles_deg,
        fbp,
        flat_field_correct,
        scale_to_max_attenuation,
        simulate_scan,
    )

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"cannot create demo directory {out}: {exc}") from exc
    rng = np.random.default_rng(seed)
    print(f"simulating a {size}^3 bead pack, {n_angles} projections at {photons:g} photons/pixel ...")
    vol = scale_to_max_attenuation(make_phantom("bead_pack", size, seed), 2.0)
    angles = angles_deg(n_angles)
    scan = simulate_scan(vol, angles, DetectorModel(photons=photons), rng)

    den = load_denoiser("tomogan-projection", backend=backend)
    print(f"denoising with {den!r}")
    denoised = np.empty_like(scan.frames)
    t0 = time.perf_counter()
    # Stream as the live callback will: previous, current, next frame.
    group = np.zeros(n_angles, np.int32)
    for i in tqdm(range(n_angles), desc="denoise", unit="frame"):
        denoised[i] = den.denoise_context(scan.frames[context_indices(group, i, den.depth)])
    per_frame = (time.perf_counter() - t0) / n_angles

    z = size // 2
    sino = {name: flat_field_correct(f[:, z], scan.flat[z], scan.dark[z])
            for name, f in (("raw", scan.frames), ("denoised", denoised))}
    sino["clean"] = scan.sinogram_clean[:, z]
    rec = {k: fbp(v, angles) for k, v in sino.items()}
    k = n_angles // 3
    metrics = {
        "frame_psnr_raw": psnr(scan.expected[k], scan.frames[k]),
        "frame_psnr_denoised": psnr(scan.expected[k], denoised[k]),
        "frame_ssim_raw": ssim(scan.expected[k], scan.frames[k]),
        "frame_ssim_denoised": ssim(scan.expected[k], denoised[k]),
        "slice_psnr_raw": psnr(rec["clean"], rec["raw"]),
        "slice_psnr_denoised": psnr(rec["clean"], rec["denoised"]),
        "slice_ssim_raw": ssim(rec["clean"], rec["raw"]),
        "slice_ssim_denoised": ssim(rec["clean"], rec["denoised"]),
        "seconds_per_frame": per_frame,
    }

    fig, ax = plt.subplots(2, 3, figsize=(13, 8.5), constrained_layout=True)
    lo, hi = np.percentile(scan.expected[k], [0.5, 99.5])
    panels = [
        (scan.frames[k], f"raw projection {k} (PSNR {metrics['frame_psnr_raw']:.1f} dB)", (lo, hi)),
        (denoised[k], f"denoised (PSNR {metrics['frame_psnr_denoised']:.1f} dB)", (lo, hi)),
        (scan.frames[k] - denoised[k], "raw - denoised (removed noise)", None),
        (rec["raw"], f"slice from raw (SSIM {metrics['slice_ssim_raw']:.3f})", None),
        (rec["denoised"], f"slice from denoised (SSIM {metrics['slice_ssim_denoised']:.3f})", None),
        (rec["clean"], "slice from noise-free projections", None),
    ]
    slo, shi = np.percentile(rec["clean"], [0.5, 99.5])
    for a, (img, title, lim) in zip(ax.ravel(), panels, strict=True):
        if lim is None and "slice" in title:
            lim = (slo, shi)
        a.imshow(img, cmap="gray", vmin=None if lim is None else lim[0], vmax=None if lim is None else lim[1])
        a.set_title(title, fontsize=10)
        a.axis("off")
    fig.suptitle(f"bluesky-tomogan demo: {den.model_name} on {den.backend}/{den.precision}, "
                 f"{per_frame * 1e3:.0f} ms/frame")
    figure = out / "demo.png"
    fig.savefig(figure, dpi=90)
    plt.close(fig)

    data = out / "demo.h5"
    with h5py.File(data, "w") as f:
        f.create_dataset("raw", data=scan.frames.astype(np.uint16), chunks=(1, size, size))
        f.create_dataset("denoised", data=denoised, chunks=(1, size, size))
        f.create_dataset("angles", data=angles)
        f.attrs["provenance"] = json.dumps(den.provenance())
        f.attrs["metrics"] = json.dumps(metrics)
    print(f"frame PSNR {metrics['frame_psnr_raw']:.2f} -> {metrics['frame_psnr_denoised']:.2f} dB; "
          f"slice SSIM {metrics['slice_ssim_raw']:.3f} -> {metrics['slice_ssim_denoised']:.3f}")
    print(f"figure: {figure.resolve()}")
    print(f"data:   {data.resolve()}  (datasets raw, denoised, angles; attrs provenance, metrics)")
    return metrics
