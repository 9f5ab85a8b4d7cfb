"""Slices from sinogram rows, with algotom: flat/dark correction, stripe removal, FBP (the rotation centre:
:mod:`bluesky_tomogan.center`, whose functions this module also offers).

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
from typing import Any, Literal

import numpy as np
from scipy.ndimage import median_filter

from .center import estimate_center, fallback_center, find_center, full_turn, search_center

__all__ = ["stripe_metric", "corrected_sinogram", "defective_pixels", "fill_row_gaps", "estimate_center",
           "fallback_center", "find_center", "search_center", "reconstruct", "reconstruct_rows", "check_angles",
           "wider_than_view", "SliceResult", "background_thread", "degrees_per_unit", "nominal_angles", "full_turn",
           "offset_axis", "extended_sinogram", "extended_width", "centered", "auto_binning", "bin_columns"]

log = logging.getLogger(__name__)
#: Width (columns) of the median filter that separates a stripe from the object's own column profile.
STRIPE_WINDOW = 21
#: Flat-corrected transmission below which a detector row's edge looks through the sample, not open beam.
OPEN_BEAM = 0.9
#: Share of the projections whose row edge looks through the sample, from which it is wider than the view.
TRUNCATED_SHARE = 0.9
#: Share of the detector's width by which the axis of a full turn must lie off its middle for the slice to be made
#: over the doubled field of view (:func:`offset_axis`).
OFFSET_AXIS_SHARE = 1 / 32
#: Widest detector (columns) the live reconstruction back-projects at full resolution by default: wider ones are
#: binned (:func:`auto_binning`), as filtered back-projection's work grows with the square of the width.
AUTO_BIN_WIDTH = 2048
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


def wider_than_view(transmission: Sequence[np.ndarray], edge: Literal["either", "left", "right"] = "either") -> bool:
    """Whether the sample is wider than the detector's field of view (local or region-of-interest tomography).

    ``transmission`` holds flat-corrected rows ``(angles, columns)`` (:func:`corrected_sinogram` with real
    flats: without them every column's brightest value is its open beam, and this cannot tell). It is, where
    in at least :data:`TRUNCATED_SHARE` of the projections an edge of the rows (their outer 2 % of columns, at
    least 2, the median over the rows) reads less than :data:`OPEN_BEAM`: no open beam beside the sample.
    Filtered back-projection of such rows fills the reconstruction circle and rises towards its rim. ``edge``:
    only that edge counts (the one far from an offset axis: whether the sample is wider than the doubled view).
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
    covered = {"either": (left < OPEN_BEAM) | (right < OPEN_BEAM), "left": left < OPEN_BEAM,
               "right": right < OPEN_BEAM}[edge]
    return bool(covered.mean() >= TRUNCATED_SHARE)


def auto_binning(width: int) -> int:
    """The column binning that brings a detector ``width`` columns wide to at most :data:`AUTO_BIN_WIDTH`: the
    smallest power of two that does (1 up to that width)."""
    factor = 1
    while width / factor > AUTO_BIN_WIDTH:
        factor *= 2
    return factor


def bin_columns(rows: np.ndarray, factor: int) -> np.ndarray:
    """The mean of each ``factor`` adjacent columns of ``rows`` (``(..., columns)``); columns left over at the right
    edge are dropped. Binned column ``k`` lies at detector column ``factor * k + (factor - 1) / 2``."""
    if factor == 1:
        return rows
    r = np.asarray(rows)
    keep = r.shape[-1] // factor * factor
    return r[..., :keep].reshape(*r.shape[:-1], keep // factor, factor).mean(axis=-1, dtype=np.float32)


def offset_axis(turn: bool, center: float, width: int, wider: bool) -> bool:
    """Whether a scan is an offset-axis (half-acquisition) one, whose slice is made over the doubled field of view
    (:func:`extended_sinogram`): a full ``turn`` (:func:`~bluesky_tomogan.center.full_turn`) of a sample ``wider``
    than the detector's ``width`` (:func:`wider_than_view`), its axis at ``center`` more than
    :data:`OFFSET_AXIS_SHARE` of the width off the middle. Over a full turn each half of the sample is seen on one
    side of the axis; a slice of the detector's width centred on the axis shows only the half nearer the middle."""
    return turn and wider and math.isfinite(center) and abs(center - (width - 1) / 2) > OFFSET_AXIS_SHARE * width


def extended_width(width: int, center: float) -> int:
    """Columns of the doubled field of view of a detector ``width`` wide with its axis at ``center``: twice the
    distance from the axis to the far edge, and one (:func:`extended_sinogram`)."""
    c = max(center, (width - 1) - center)
    return max(int(math.ceil(2 * c - 1e-3)) + 1, width)  # 2c a whole number: no column beyond it


def extended_sinogram(sinogram: np.ndarray, center: float) -> tuple[np.ndarray, float]:
    """A sinogram ``(angles, columns)`` of -log transmission over a full turn with its axis at ``center`` off the
    middle, widened to the doubled field of view: ``(sinogram, its centre)``, as wide as twice the distance from
    the axis to the far edge of the detector.

    Each projection is padded with zeros on the side of the axis the detector does not see and weighted across
    the band about the axis that both halves of the turn see (``2c - x`` on the detector too): the weight falls
    smoothly (cosine squared) from 1 at the band's inner edge to 0 at the detector's edge, so that the weights of
    a column and its mirror image add up to 1 and the padded edge is smooth (displaced-detector weighting; the
    stitching of algotom's ``convert_sinogram_360_to_180`` with a smooth ramp, for any angles). Back-projected over
    the full turn, each line of the doubled field of view counts once, in half the projections (:func:`reconstruct`
    folds each onto its partner half a turn before and scales for the rest).
    """
    s = np.asarray(sinogram, np.float32)
    width = s.shape[1]
    right = center > (width - 1) / 2  # the axis near the right edge: the missing half lies to the right
    c = center if right else (width - 1) - center  # work as if it were on the right
    far = 2 * c - (width - 1)  # the band both halves see: columns far .. width - 1
    x = np.arange(width, dtype=np.float64)
    ramp = np.clip((x - far) / max(width - 1 - far, 1e-6), 0.0, 1.0)
    weight = np.cos(0.5 * np.pi * ramp) ** 2
    pad = extended_width(width, center) - width
    rows = s if right else s[:, ::-1]
    extended = np.pad(rows * weight[None, :].astype(np.float32), ((0, 0), (0, pad)))
    if right:
        return extended, float(center)
    return np.ascontiguousarray(extended[:, ::-1]), float(center + pad)


def centered(image: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``image`` cut or padded (with zeros) to ``shape``, its middle kept in the middle: slices about an axis whose
    doubled field of view came out a column wider or narrower (:func:`extended_width` of a centre a little off)."""
    out = np.zeros(tuple(shape), np.float32)
    sizes = list(zip(image.shape, shape, strict=True))
    src = tuple(slice(max((n - m) // 2, 0), max((n - m) // 2, 0) + min(n, m)) for n, m in sizes)
    dst = tuple(slice(max((m - n) // 2, 0), max((m - n) // 2, 0) + min(n, m)) for n, m in sizes)
    out[dst] = image[src]
    return out


@dataclass
class SliceResult:
    """One reconstructed row: the slice, the centre used, and the stripe metric before and after removal."""

    row: int
    slice: np.ndarray
    center: float
    stripe_raw: float
    stripe_after: float


def reconstruct(transmission: np.ndarray, angles_deg: np.ndarray, center: float, *, row: int = 0,
                remove_stripes: bool = True, extend: bool = False) -> SliceResult:
    """Filtered back-projection of one transmission sinogram ``(angles, columns)`` at ``center``.

    Stripes are removed first (algotom's sorting-based filter) unless
    ``remove_stripes`` is false; the result is cropped to the field of view, a square as wide as the detector
    centred on the axis. ``extend``: a full turn about an axis off the middle (:func:`offset_axis`), made over the
    doubled field of view (:func:`extended_sinogram`), a square twice as wide as from the axis to the detector's
    far edge. The
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
    at, scale = center, 1.0
    if extend:
        sino, at = extended_sinogram(sino, center)
        taken = len(sino)
        sino, a = _fold_turn(sino, a, at)
        # algotom divides by the number of projections; each line of the doubled view is in half of those taken
        scale = 2.0 * len(sino) / taken
    rec = fbp_reconstruction(sino, at, angles=a, apply_log=False, gpu=False, ncore=1)
    return SliceResult(row, np.asarray(rec * scale, np.float32), float(center), before, after)


def _fold_turn(sinogram: np.ndarray, angles_rad: np.ndarray, center: float) -> tuple[np.ndarray, np.ndarray]:
    """The weighted projections of a full turn (:func:`extended_sinogram`, angles ascending) with each one 180
    degrees on from another (within a hundredth of a step) added, mirrored about ``center``, to that one: the same
    back-projection (the projection at ``theta + 180`` is the one at ``theta`` mirrored), from half the projections,
    so in half the time. Projections without such a partner (a scan with an odd number of them, one left out) stay."""
    n, width = sinogram.shape
    if n < 3:
        return sinogram, angles_rad
    step = float(np.median(np.diff(angles_rad)))
    before = angles_rad - math.pi
    above = np.clip(np.searchsorted(angles_rad, before), 0, n - 1)  # the projection half a turn before, if any
    below = np.clip(above - 1, 0, n - 1)
    partner = np.where(np.abs(angles_rad[below] - before) < np.abs(angles_rad[above] - before), below, above)
    near = np.abs(angles_rad[partner] - before) <= 0.01 * step
    x = np.arange(width, dtype=np.float64)
    out = sinogram.astype(np.float32, copy=True)
    folded = np.zeros(n, bool)
    for i in np.flatnonzero(near & (angles_rad >= angles_rad[0] + math.pi - 0.01 * step)):
        j = int(partner[i])
        if folded[j] or folded[i]:
            continue
        out[j] += np.interp(2 * center - x, x, sinogram[i], left=0.0, right=0.0).astype(np.float32)
        folded[i] = True
    return out[~folded], angles_rad[~folded]


def reconstruct_rows(transmissions: Mapping[int, np.ndarray], angles_deg: np.ndarray, center: float, *,
                     remove_stripes: bool = True, threads: int = 1, extend: bool = False) -> dict[int, SliceResult]:
    """:func:`reconstruct` for several rows, on ``threads`` threads (algotom's filters and back-projection
    release the GIL, so two rows take the time of one on two cores)."""
    def one(item: tuple[int, np.ndarray]) -> SliceResult:
        return reconstruct(item[1], angles_deg, center, row=item[0], remove_stripes=remove_stripes, extend=extend)

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


def import_algotom() -> None:
    """Import the parts of algotom that the centre search and the back-projection use, now.

    They are imported where first used, to keep ``import bluesky_tomogan`` light. A live reconstruction imports
    them when it is made: its final slices may be made while the interpreter shuts down (a script that ends right
    after its scan), and then algotom's joblib can no longer be imported (``concurrent.futures.process`` registers
    an exit hook, which Python refuses after shutdown has begun: "can't register atexit after shutdown").
    """
    import algotom.prep.calculation  # noqa: F401
    import algotom.prep.removal  # noqa: F401
    import algotom.rec.reconstruction  # noqa: F401


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
