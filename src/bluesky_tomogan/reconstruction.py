"""Slices from sinogram rows, with algotom: flat/dark correction, stripe removal, rotation centre, FBP.

Why algotom: it installs from the package index with NumPy/SciPy/numba wheels (no
CUDA, no compiler), it is maintained at Diamond Light Source for exactly this data
(synchrotron parallel-beam tomography), and it has the three methods a live
reconstruction needs: stripe removal (Vo et al. 2018, the sorting-based filter),
the rotation centre from a 180-degree sinogram (Vo et al. 2014, Fourier-based),
and filtered back-projection that runs on the CPU.

Everything here works on a few rows at a time, cheaply enough to run while a
scan is still going. No bluesky here; the callback is
:mod:`bluesky_tomogan.callbacks.reconstruction`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import median_filter

__all__ = ["stripe_metric", "corrected_sinogram", "find_center", "reconstruct", "check_angles", "SliceResult"]

log = logging.getLogger(__name__)
#: Width (columns) of the median filter that separates a stripe from the object's own column profile.
STRIPE_WINDOW = 21


def stripe_metric(sinogram: np.ndarray) -> float:
    """Stripe energy of a sinogram ``(angles, columns)``: RMS of its column means minus their local median.

    A per-column error that repeats in every frame (a detector defect, or a
    denoiser's systematic error) survives the mean over angles and stands out
    of its neighbours; it becomes a ring in the slice. Noise averages out.
    """
    s = np.asarray(sinogram, np.float64)
    means = s.mean(axis=0)
    residual = means - median_filter(means, size=STRIPE_WINDOW, mode="nearest")
    return float(np.sqrt(np.mean(residual**2)))


def corrected_sinogram(rows: np.ndarray, flat: np.ndarray | None, dark: np.ndarray | None) -> np.ndarray:
    """Transmission ``(rows - dark) / (flat - dark)``, clipped to (0, 2]: what FBP with ``apply_log`` takes.

    Without darks the dark is 0; without flats the flat is each column's largest
    value over the angles (the open beam beside the sample), a fallback the
    caller reports.
    """
    r = np.asarray(rows, np.float32)
    d = np.zeros(r.shape[1], np.float32) if dark is None else np.asarray(dark, np.float32)
    f = r.max(axis=0) if flat is None else np.asarray(flat, np.float32)
    return np.clip((r - d) / np.maximum(f - d, 1e-3), 1e-4, 2.0)


def check_angles(angles_deg: np.ndarray) -> str:
    """Why these angles cannot make a good parallel-beam slice (empty if they can)."""
    a = np.asarray(angles_deg, float)
    if len(a) < 3:
        return f"only {len(a)} projections"
    span = float(a.max() - a.min())
    step = span / max(len(np.unique(a)) - 1, 1)
    if span + step < 180 - 1e-6:
        return f"the angles cover {span + step:.1f} degrees, not 180: the slice has missing-wedge artefacts"
    return ""


def find_center(transmission: np.ndarray, angles_deg: np.ndarray) -> float:
    """Rotation centre (column) of a 180-degree transmission sinogram, by algotom's ``find_center_vo``."""
    from algotom.prep.calculation import find_center_vo

    sino = _sorted_180(-np.log(transmission), angles_deg)
    return float(find_center_vo(sino, ncore=1))


def _sorted_180(sino: np.ndarray, angles_deg: np.ndarray) -> np.ndarray:
    order = np.argsort(angles_deg)
    a, s = np.asarray(angles_deg)[order], sino[order]
    return s[a < a[0] + 180.0]


@dataclass
class SliceResult:
    """One reconstructed row: the slice, the centre used, and the stripe metric before and after removal."""

    row: int
    slice: np.ndarray
    center: float
    stripe_raw: float
    stripe_after: float


def reconstruct(transmission: np.ndarray, angles_deg: np.ndarray, center: float, *, row: int = 0,
                remove_stripes: bool = True) -> SliceResult:
    """Filtered back-projection of one transmission sinogram ``(angles, columns)`` at ``center``.

    Stripes are removed first (algotom's sorting-based filter) unless
    ``remove_stripes`` is false; the result is cropped to the field of view.
    """
    from algotom.prep.removal import remove_stripe_based_sorting
    from algotom.rec.reconstruction import fbp_reconstruction

    order = np.argsort(angles_deg)
    a = np.deg2rad(np.asarray(angles_deg, float)[order])
    sino = -np.log(np.asarray(transmission, np.float32)[order])
    before = stripe_metric(sino)
    if remove_stripes:
        sino = remove_stripe_based_sorting(sino, size=STRIPE_WINDOW, dim=1)
    after = stripe_metric(sino)
    if not math.isfinite(center) or not 0 < center < sino.shape[1]:
        raise ValueError(f"rotation centre {center} is outside the detector (0..{sino.shape[1]})")
    rec = fbp_reconstruction(sino, center, angles=a, apply_log=False, gpu=False, ncore=1)
    return SliceResult(row, np.asarray(rec, np.float32), float(center), before, after)
