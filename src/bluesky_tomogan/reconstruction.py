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
import os
import threading
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter, median_filter

__all__ = ["stripe_metric", "corrected_sinogram", "defective_pixels", "fill_row_gaps", "estimate_center",
           "fallback_center", "find_center", "reconstruct", "reconstruct_rows", "check_angles", "wider_than_view",
           "SliceResult", "background_thread", "degrees_per_unit", "nominal_angles"]

log = logging.getLogger(__name__)
#: Width (columns) of the median filter that separates a stripe from the object's own column profile.
STRIPE_WINDOW = 21
#: Flat-corrected transmission below which a detector row's edge looks through the sample, not open beam.
OPEN_BEAM = 0.9
#: Share of the projections whose row edge looks through the sample, from which it is wider than the view.
TRUNCATED_SHARE = 0.9
#: Smallest angular span (degrees) over which a centre-of-mass sinusoid is fitted.
MIN_SPAN_FOR_ESTIMATE = 60.0
#: Degrees per unit of a rotation angle, by the units its data key gives (EPICS motors' EGU, ophyd's ``units``).
_DEGREES_PER_UNIT = {**dict.fromkeys(("deg", "degree", "degrees", "°"), 1.0),
                     **dict.fromkeys(("rad", "radian", "radians"), 180.0 / math.pi),
                     **dict.fromkeys(("mrad", "milliradian", "milliradians"), 0.18 / math.pi),
                     **dict.fromkeys(("urad", "µrad", "microradian", "microradians"), 1.8e-4 / math.pi)}


def degrees_per_unit(units: object) -> float | None:
    """Degrees per unit of an angle given in ``units`` (a data key's ``units``: ``deg``, ``rad``, ``mrad``,
    any case); ``None`` for units that are none of these (or none at all)."""
    return _DEGREES_PER_UNIT.get(units.strip().lower()) if isinstance(units, str) else None


def angles_in_degrees(values: Any, units: object = None) -> np.ndarray:
    """Stored rotation angles in degrees: by ``units`` where they name an angle's unit (``deg``, ``rad``,
    ``mrad``; bytes too, as HDF5 attributes hold them), else radians where more than 8 of them span no more than
    a turn in radians (a scan of a few degrees makes no tomogram), else degrees."""
    a = np.asarray(values, dtype=np.float64).ravel()
    per_unit = degrees_per_unit(units.decode(errors="replace") if isinstance(units, bytes) else units)
    if per_unit is not None:
        return a * per_unit
    finite = a[np.isfinite(a)]
    span = float(finite.max() - finite.min()) if len(finite) else 0.0
    return np.rad2deg(a) if 0 < span <= 2 * math.pi + 1e-6 and len(finite) > 8 else a


def nominal_angles(start: Mapping[str, Any]) -> list[float]:
    """The nominal angle of each projection, in the order taken, that a plan wrote to its start document's
    ``angles`` (degrees: :func:`~bluesky_tomogan.plans.tomo_fly_scan`, :func:`~bluesky_tomogan.plans.tomo_scan`);
    empty where it has none, or ``angles`` that are not a list of numbers (another plan's own meaning)."""
    nominal = start.get("angles")
    if not isinstance(nominal, list | tuple):
        return []
    try:
        return [float(a) for a in nominal]
    except (TypeError, ValueError):
        return []


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
    caller reports. NaN in any of them marks a pixel without data (a detector's
    module gap, a flagged pixel: :mod:`bluesky_tomogan.masked`); its transmission
    is interpolated along the detector row (:func:`fill_row_gaps`).
    """
    r = np.asarray(rows, np.float32)
    d = np.zeros(r.shape[1], np.float32) if dark is None else np.asarray(dark, np.float32)
    if flat is not None:
        f = np.asarray(flat, np.float32)
    else:
        with warnings.catch_warnings():  # a column without data at every angle: NaN, filled below
            warnings.simplefilter("ignore", RuntimeWarning)
            f = np.nanmax(r, axis=0)
    t = (r - d) / np.maximum(f - d, 1e-3)  # NaN stays NaN
    return np.clip(fill_row_gaps(t), 1e-4, 2.0)


#: A pixel whose dark stands this many robust sigmas of its row's darks away from them is hot (or cold).
DARK_OUTLIER_SIGMAS = 12.0
#: A pixel whose response to the open beam (flat minus dark) is below this share of its row's median is dead.
DEAD_RESPONSE = 0.1


def defective_pixels(flat: np.ndarray | None, dark: np.ndarray | None) -> np.ndarray | None:
    """Pixels of the raw mean ``flat`` and ``dark`` rows ``(rows, columns)`` that cannot be flat/dark-corrected.

    A dead pixel reads (about) nothing, open beam or not: its response, flat minus dark, is a small
    share of its row's (:data:`DEAD_RESPONSE`). A hot pixel reads far above its row in the dark
    (:data:`DARK_OUTLIER_SIGMAS` robust sigmas of the row's darks). Corrected as they are, both give a
    transmission that is wrong at every angle (a dead pixel's 0 / 0 is clipped to full attenuation):
    a ring in every slice. Their transmission is better interpolated along the row
    (:func:`fill_row_gaps`), as a masked pixel's is. ``None`` if there is nothing to judge or nothing
    defective; NaN pixels (masked already) are left out.
    """
    reference = flat if flat is not None else dark
    if reference is None:
        return None
    bad = np.zeros(np.shape(reference), bool)
    with warnings.catch_warnings():  # rows without data: NaN medians, nothing flagged
        warnings.simplefilter("ignore", RuntimeWarning)
        if dark is not None:
            d = np.asarray(dark, np.float64)
            centre = np.nanmedian(d, axis=-1, keepdims=True)
            sigma = 1.4826 * np.nanmedian(np.abs(d - centre), axis=-1, keepdims=True)
            bad |= np.abs(d - centre) > DARK_OUTLIER_SIGMAS * np.maximum(sigma, 1e-6)
        if flat is not None:
            response = np.asarray(flat, np.float64) - (0.0 if dark is None else np.asarray(dark, np.float64))
            bad |= response < DEAD_RESPONSE * np.nanmedian(response, axis=-1, keepdims=True)
    return bad if bad.any() else None


def fill_row_gaps(transmission: np.ndarray) -> np.ndarray:
    """``transmission`` ``(angles, columns)`` with its NaN interpolated linearly along each row.

    A masked column read as open beam (or as any fixed value) would be a ring in
    the slice; interpolated from its neighbours at each angle it follows the
    sample. A row without any data is set to 1 (no attenuation).
    """
    gaps = np.isnan(transmission)
    if not gaps.any():
        return transmission
    out = np.array(transmission, np.float32)
    columns = np.arange(out.shape[1])
    for i in np.flatnonzero(gaps.any(axis=1)):
        valid = ~gaps[i]
        out[i] = np.interp(columns, columns[valid], out[i, valid]) if valid.any() else 1.0
    return out


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


def wider_than_view(transmission: Sequence[np.ndarray]) -> bool:
    """Whether the sample is wider than the detector's field of view (local or region-of-interest tomography).

    ``transmission`` holds flat-corrected rows ``(angles, columns)`` (:func:`corrected_sinogram` with real
    flats: without them every column's brightest value is its open beam, and this cannot tell). It is, where
    in at least :data:`TRUNCATED_SHARE` of the projections an edge of the rows (their outer 2 % of columns, at
    least 2, the median over the rows) reads less than :data:`OPEN_BEAM`: no open beam beside the sample.
    Filtered back-projection of such rows fills the reconstruction circle and rises towards its rim.
    """
    if not transmission:
        return False
    width = transmission[0].shape[1]
    band = max(2, width // 50)
    if width < 2 * band + 1:
        return False
    rows = np.stack([np.asarray(t, np.float32) for t in transmission])  # (rows, angles, columns)
    with warnings.catch_warnings():  # a row edge without data (NaN) is no evidence either way
        warnings.simplefilter("ignore", RuntimeWarning)
        left = np.nanmedian(rows[:, :, :band], axis=(0, 2))
        right = np.nanmedian(rows[:, :, -band:], axis=(0, 2))
    covered = (left < OPEN_BEAM) | (right < OPEN_BEAM)
    return bool(covered.mean() >= TRUNCATED_SHARE)


def estimate_center(transmission: np.ndarray, angles_deg: np.ndarray) -> float:
    """Rotation centre (column) from the centre of mass of each projection row; NaN if it cannot be fitted.

    In parallel-beam geometry the centre of mass of the object projects to
    ``c + a cos(theta) + b sin(theta)``; a least-squares fit gives ``c`` from
    any span of at least 60 degrees, in microseconds: the centre of the
    progressive reconstructions before the rotation reaches 180 degrees. It is
    biased when the object leaves the field of view; :func:`find_center` is
    the one for a full rotation.
    """
    a = np.deg2rad(np.asarray(angles_deg, float))
    if len(a) < 3 or np.rad2deg(a.max() - a.min()) < MIN_SPAN_FOR_ESTIMATE:
        return float("nan")
    attenuation = np.clip(-np.log(np.asarray(transmission, np.float64)), 0.0, None)
    mass = attenuation.sum(axis=1)
    ok = mass > 1e-6 * max(float(mass.max()), 1e-30)
    if ok.sum() < 3:
        return float("nan")
    com = (attenuation[ok] @ np.arange(attenuation.shape[1])) / mass[ok]
    design = np.stack([np.ones(int(ok.sum())), np.cos(a[ok]), np.sin(a[ok])], axis=1)
    coef, *_ = np.linalg.lstsq(design, com, rcond=None)
    return float(coef[0])


def fallback_center(transmission: np.ndarray, angles_deg: np.ndarray) -> tuple[float, str]:
    """The centre where :func:`find_center` cannot run, and how it was had: the centre-of-mass
    estimate (:func:`estimate_center`), else the detector centre."""
    center = estimate_center(transmission, angles_deg)
    if math.isfinite(center):
        return center, "the centre-of-mass estimate"
    return (np.asarray(transmission).shape[1] - 1) / 2, "the detector centre"


def find_center(transmission: np.ndarray, angles_deg: np.ndarray) -> float:
    """Rotation centre (column) of a 180-degree transmission sinogram, by Vo's method in algotom; NaN if
    its search finds no minimum inside any of its windows.

    algotom's ``find_center_vo`` steps: a coarse search over a window an eighth
    of the detector wide, then a quarter-pixel search around its result. When
    the sample stays inside the field of view at every angle, the window is
    centred on the centre-of-mass estimate (:func:`estimate_center`, unbiased
    then), so that an axis outside the middle eighth is found too (Vo's metric
    has only false minima inside a window that misses the axis). Otherwise, or
    if the minimum lies at that window's edge, the middle eighth of the detector
    (``find_center_vo``'s), and then the middle half: a minimum at a window's
    edge is no minimum (algotom warns and returns the edge). Each window is at
    least 16 pixels wide. Rows whose sample is not inside the field of view are first extended by a
    quarter of their width at each end with their end values (see the comment below), and the
    windows are the extended rows'. The coarse search runs on a copy downsampled to about
    48 angles and 256 columns (``find_center_vo`` downsamples only above 900
    angles or 1000 columns), which makes the whole search 4x cheaper at
    180 x 512 with the same answer: the fine search on the full sinogram decides.
    The fine search is ``fine_search_cor``'s quarter-pixel grid, refined by a
    parabola through the lowest point and its two neighbours
    (:func:`_fine_search`).
    """
    from algotom.prep.calculation import downsample_cor

    inside = _inside_field_of_view(transmission)
    # A sample wider than the field of view (local tomography) fills every row to its ends, and Vo's metric reads
    # the rows' abrupt ends as inconsistency: off by up to 16 / 54 px on exact rows of a bead pack 1.8 / 2.5
    # fields of view across. Rows extended by their end values (as filtered back-projection pads them) leave
    # 2.6 / 21 px (python benchmarks/center_wider.py). A sample inside the field of view is searched as it is.
    pad = 0 if inside else np.asarray(transmission).shape[1] // 4
    if pad:
        transmission = np.pad(np.asarray(transmission), ((0, 0), (pad, pad)), mode="edge")
    sino = _sorted_180(-np.log(transmission), angles_deg)
    nrow, ncol = sino.shape
    dsp_row, dsp_col = max(nrow // 48, 1), max(ncol // 256, 1)
    coarse = gaussian_filter(sino, (3, 1), mode="reflect")
    coarse = downsample_cor(coarse, dsp_row, dsp_col)
    half = max(ncol // 16, 8)  # a few pixels' error of the estimate must not put the axis at the edge
    windows = [(ncol // 2 - half, ncol // 2 + half), (ncol // 4, ncol - ncol // 4)]
    estimate = estimate_center(transmission, angles_deg) if inside else math.nan
    if math.isfinite(estimate):
        start = int(np.clip(round(estimate) - half, 0, max(ncol - 1 - 2 * half, 0)))
        windows.insert(0, (start, start + 2 * half))
    for start, stop in windows:
        raw = _coarse_search(coarse, start // dsp_col, -(-stop // dsp_col))
        if raw is not None:
            return _fine_search(sino, raw * dsp_col + 0.5 * (dsp_col - 1), max(2, dsp_col)) - pad
    return float("nan")


def _fine_search(sino: np.ndarray, start: float, radius: float, step: float = 0.25) -> float:
    """algotom's ``fine_search_cor`` (smoothing, mask and metric as its defaults), with the minimum refined
    by a parabola through the lowest grid point and its two neighbours.

    Why refine: on a grid, the answer jumps a whole step where two grid points score alike, so a change
    of a few counts in a few columns (a filled detector gap, a retrained denoiser) moved a live slice by
    a quarter pixel, about twice the slice's standard deviation at the sample's edge. The vertex moves
    as little as the metric does. It stays within half a step of the grid point, where the metric is
    close enough to a parabola; at the search's edge the grid point is returned.
    """
    smooth = gaussian_filter(sino, (2, 2), mode="reflect")
    candidates = np.clip(start + np.arange(-radius, radius + step, step), 0.0, smooth.shape[1] - 1.0)
    metric = _vo_metric(smooth, candidates)
    best = int(np.argmin(metric))
    if best in (0, len(candidates) - 1) or candidates[best - 1] == candidates[best + 1]:
        return float(candidates[best])
    left, mid, right = metric[best - 1], metric[best], metric[best + 1]
    curvature = left - 2 * mid + right
    offset = 0.5 * (left - right) / curvature if curvature > 0 else 0.0
    return float(candidates[best] + step * np.clip(offset, -0.5, 0.5))


def _coarse_search(sino: np.ndarray, start: int, stop: int) -> int | None:
    """algotom's ``coarse_search_cor`` (integer shifts, its default mask), made of its public parts; None when
    the minimum lies at the window's edge, where algotom warns and returns the edge (a warning to match by
    its text, caught by changing the process's warnings filters from a worker thread)."""
    ncol = sino.shape[1]
    candidates = np.arange(int(np.clip(start, 0, ncol - 1)), int(np.clip(stop, 0, ncol - 1)) + 1)
    best = int(np.argmin(_vo_metric(sino, candidates)))
    return None if best in (0, len(candidates) - 1) else int(candidates[best])


def _vo_metric(sino: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Vo's metric (algotom's ``calculate_center_metric``, its default mask) of each candidate centre."""
    from algotom.prep.calculation import calculate_center_metric, make_inverse_double_wedge_mask

    nrow, ncol = sino.shape
    flipped, complement = np.fliplr(sino), np.flipud(sino)
    mask = make_inverse_double_wedge_mask(2 * nrow, ncol, 0.25 * ncol, None, None)  # ratio 0.5, as algotom's
    return np.array([calculate_center_metric(c, sino, flipped, complement, mask) for c in candidates])


def _inside_field_of_view(transmission: np.ndarray) -> bool:
    """Whether the sample leaves the outer columns of every projection clear (it stays in the field of view)."""
    attenuation = np.clip(-np.log(np.clip(np.asarray(transmission, np.float64), 1e-6, None)), 0.0, None)
    edge = max(2, attenuation.shape[1] // 50)
    strongest = float(np.median(attenuation.max(axis=1)))
    outer = max(float(np.percentile(attenuation[:, :edge].mean(axis=1), 95)),
                float(np.percentile(attenuation[:, -edge:].mean(axis=1), 95)))
    return strongest > 0 and outer < 0.05 * strongest


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
    ``remove_stripes`` is false; the result is cropped to the field of view. The
    calling thread is set to one numba thread (see :func:`_single_numba_thread`), so
    the same input gives the same slice on any thread; :func:`reconstruct_rows`
    reconstructs rows in parallel.
    """
    from algotom.prep.removal import remove_stripe_based_sorting
    from algotom.rec.reconstruction import fbp_reconstruction

    _single_numba_thread()
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


def reconstruct_rows(transmissions: Mapping[int, np.ndarray], angles_deg: np.ndarray, center: float, *,
                     remove_stripes: bool = True, threads: int = 1) -> dict[int, SliceResult]:
    """:func:`reconstruct` for several rows, on ``threads`` threads (algotom's filters and back-projection
    release the GIL, so two rows take the time of one on two cores)."""
    def one(item: tuple[int, np.ndarray]) -> SliceResult:
        return reconstruct(item[1], angles_deg, center, row=item[0], remove_stripes=remove_stripes)

    if threads > 1 and len(transmissions) > 1:
        try:
            with ThreadPoolExecutor(min(threads, len(transmissions)), thread_name_prefix="tomogan-fbp") as pool:
                return {result.row: result for result in pool.map(one, transmissions.items())}
        except RuntimeError as exc:  # no new threads while the interpreter exits: one thread it is
            log.debug("reconstructing rows on one thread: %s", exc)
    return {r: one((r, t)) for r, t in transmissions.items()}


def _single_numba_thread() -> None:
    # algotom's CPU back-projection is a numba prange over angles that adds into shared pixels: with
    # several numba threads it takes every core from the RunEngine and its sum depends on the schedule.
    # One numba thread per calling thread (numba's setting is thread-local) keeps it deterministic;
    # parallelism comes from reconstructing rows on separate threads instead.
    import numba

    numba.set_num_threads(1)


def background_thread(niceness: int = 10) -> None:
    """Make the calling thread a background one: lower CPU priority (Linux) and one numba thread.

    Used as the initializer of the reconstruction worker, so that progressive
    reconstructions take the CPU the RunEngine and the denoiser leave over.
    """
    _single_numba_thread()
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)  # per thread on Linux
    except (AttributeError, OSError) as exc:  # not Linux, or not permitted: run at normal priority
        log.debug("reconstruction thread keeps its priority: %s", exc)
