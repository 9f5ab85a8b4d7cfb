"""The rotation centre of a parallel-beam scan, from flat-corrected sinogram rows.

Three ways, each where it holds:

- the centre of mass of each projection fits a sinusoid around the axis (:func:`estimate_center`): microseconds,
  from 60 degrees of rotation on, unbiased while the sample stays inside the field of view; the centre of the
  progressive reconstructions and the fallback;
- Vo's Fourier method (algotom) over 180 degrees: the sinogram and its mirror image make a 360-degree sinogram
  whose spectrum is empty in a double wedge at the right centre. The centre of a sample inside the field of view;
- the 180-degree seam (:func:`seam_center`): the projection at ``theta + 180`` is the one at ``theta`` mirrored
  about the axis, so where the scan's first and last projections meet, the right centre makes them agree. It
  compares only what both see, so it holds for a sample wider than the field of view (local tomography), whose
  rows end in the sample at every angle and mislead Vo's metric (off by up to 21 px at 2.5 fields of view even
  on rows extended by their ends; ``python benchmarks/center_wider.py``).
- over a full turn (360 degrees), every projection has its mirror image in the scan, and the seam is searched
  over the whole detector (:func:`turn_center`): the centre of an offset-axis scan (half acquisition: the axis
  near one edge of the detector, the field of view doubled), which lies outside the middle half that
  :func:`seam_center` searches.

:func:`find_center` picks between the last three. No bluesky here; :mod:`bluesky_tomogan.reconstruction` and the
live reconstruction (:mod:`bluesky_tomogan.callbacks.reconstruction`) use it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
from scipy.ndimage import gaussian_filter, gaussian_filter1d

__all__ = ["estimate_center", "fallback_center", "find_center", "search_center", "seam_center", "turn_center",
           "full_turn", "VO", "SEAM", "TURN", "VO_EXTENDED"]

log = logging.getLogger(__name__)
#: Smallest angular span (degrees) over which a centre-of-mass sinusoid is fitted.
MIN_SPAN_FOR_ESTIMATE = 60.0
#: How :func:`search_center` found a centre: Vo's method on the rows as they are ...
VO = "Vo's method"
#: ... the 180-degree seam (a sample wider than the field of view) ...
SEAM = "the projections 180 degrees apart"
#: ... the projections 180 degrees apart over a full turn, searched over the whole detector (an offset axis) ...
TURN = "the projections 180 degrees apart over the full turn"
#: ... or, where the seam is not in the scan, Vo's method on rows extended by their end values.
VO_EXTENDED = "Vo's method on rows extended by their ends"
#: Gaussian smoothing (pixels, along the rows) of the seam's projections: noise adds the same to every
#: candidate centre but makes false minima; structure is wider than this.
SEAM_SMOOTH = 2.0
#: How far (in the scan's median steps) a projection's neighbours in the seam may be: 2.5, so that a scan whose
#: first or last projection is missing (flagged unusable, a beam lost) still has its seam.
SEAM_REACH = 2.5
#: Columns the seam's coarse search works on: wider rows are averaged down to this.
SEAM_COARSE_COLUMNS = 512
#: Fewest columns that a candidate centre of :func:`turn_center` must have seen by both projections of a pair (and
#: at least this share of the detector's width): fewer make false minima of noise.
TURN_MIN_OVERLAP = 8
TURN_MIN_OVERLAP_SHARE = 1 / 32
#: Pairs :func:`turn_center` compares, evenly spread over the turn (a 3,600-projection scan has 1,800).
TURN_PAIRS = 64
#: A candidate whose compared columns hold less structure (variance) than this share of the most any candidate's
#: hold is no candidate: open beam beside the sample matches open beam at any centre.
TURN_MIN_STRUCTURE = 1e-4
#: A seam comparison (:func:`_seam_pairs`): projection, its two neighbours (index, mirrored), the weight of the second.
_Pair = tuple[int, tuple[int, bool], tuple[int, bool], float]


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


def find_center(transmission: np.ndarray, angles_deg: np.ndarray, *,
                other_rows: Sequence[np.ndarray] = ()) -> float:
    """Rotation centre (column) of a 180-degree transmission sinogram; NaN if it is not found.

    ``transmission`` is one flat-corrected row ``(angles, columns)``; ``other_rows``, more rows of the same scan
    (the same angles), which the 180-degree seam adds up where it is used. See :func:`search_center`, which also
    says how the centre was found.
    """
    return search_center(transmission, angles_deg, other_rows=other_rows)[0]


def search_center(transmission: np.ndarray, angles_deg: np.ndarray, *, other_rows: Sequence[np.ndarray] = (),
                  turn: bool | None = None) -> tuple[float, str]:
    """Rotation centre (column) of a 180-degree transmission sinogram and how it was found (:data:`VO`,
    :data:`SEAM` or :data:`VO_EXTENDED`); NaN if it is not found.

    A sample inside the field of view (its rows' outer columns clear at every angle): Vo's method
    (:func:`_vo_center`). A sample wider than it: over a full turn the seam over the whole detector (:data:`TURN`,
    :func:`turn_center`: an offset axis too), else the 180-degree seam over ``transmission`` and ``other_rows``
    (:func:`seam_center`), where the angles hold it (they reach 180 degrees from the first within 2.5 steps);
    else Vo's method on the rows extended by their end values, which is off by up to 21 px on exact rows of a
    bead pack 2.5 fields of view across (the seam: under 1 px; ``python benchmarks/center_wider.py``).
    ``turn``: whether the scan is a full turn; ``None``: whether ``angles_deg`` cover one (a scan still turning
    passes True to search over the whole detector with the pairs it has so far: NaN while it has none). Where the
    whole-detector search finds nothing over a full turn, the 180-degree seam and Vo's method are tried as above.
    """
    if _inside_field_of_view(transmission):
        return _vo_center(transmission, angles_deg, inside=True), VO
    covers = full_turn(angles_deg)
    if covers or turn:  # the axis may be anywhere: over a full turn, look everywhere
        center = turn_center([transmission, *other_rows], angles_deg)
        if math.isfinite(center) or not covers:  # a turn still under way without pairs yet: no centre yet
            return center, TURN
    center = seam_center([transmission, *other_rows], angles_deg)
    if math.isfinite(center):
        return center, SEAM
    return _vo_center(transmission, angles_deg, inside=False), VO_EXTENDED


def seam_center(rows: Sequence[np.ndarray], angles_deg: np.ndarray, smooth: float = SEAM_SMOOTH) -> float:
    """Rotation centre (column) where the projections 180 degrees apart agree; NaN if the angles hold no such
    pair or the best agreement lies at the edge of the search (the middle quarter of the detector, then its middle
    half).

    In parallel-beam geometry ``p(theta + 180, x) = p(theta, 2c - x)``. Each projection whose angle has a mirror
    image (another projection at +-180 degrees, flipped about a candidate centre ``c``) beside it is compared
    with the interpolation, along the angle, of its two nearest neighbours among the projections and the mirror
    images (or with a mirror image at its very angle, where the scan holds both ends of 180 degrees): for a scan
    over [0, 180) the first projection against the mirrored last one and the second, the last against the
    one before it and the mirrored first. The variance of the difference (of ``-log`` transmission: a beam
    brighter at one end adds a constant) over the columns both see, pooled over the comparisons and ``rows``
    (flat-corrected rows of the same scan, each ``(angles, columns)``), is least at the axis. Only
    those columns count, so the detector's edges, which cut a wider sample, do not matter: within 0.7 px on
    exact rows of bead packs 1.8-3.5 fields of view across at 180 angles, where Vo's metric is off by up to
    21 px (``python benchmarks/center_wider.py``). A coarse search (rows averaged down to at most
    :data:`SEAM_COARSE_COLUMNS` columns, half-column steps) over the middle quarter, and where its lowest point is
    at its edge over the middle half, then a quarter-pixel search, refined by a parabola fitted to the points
    within a pixel of its lowest.
    """
    pairs = _seam_pairs(angles_deg)
    if not pairs or not len(rows):
        return math.nan
    # only the projections the seam compares (a handful of a scan's hundreds), renumbered
    used = sorted({j for i, lo, hi, _ in pairs for j in (i, lo[0], hi[0])})
    at = {j: k for k, j in enumerate(used)}
    pairs = [(at[i], (at[lo[0]], lo[1]), (at[hi[0]], hi[1]), w) for i, lo, hi, w in pairs]
    sinos = [gaussian_filter1d(-np.log(np.clip(np.asarray(r, np.float64)[used], 1e-6, None)), smooth, axis=1)
             for r in rows]
    ncol = sinos[0].shape[1]
    factor = max(1, -(-ncol // SEAM_COARSE_COLUMNS))
    binned = [s[:, : ncol // factor * factor].reshape(len(s), -1, factor).mean(axis=2) for s in sinos]
    nbin = binned[0].shape[1]
    # the middle quarter first, then the middle half: near the edges of the search fewer columns are seen by
    # both projections, and noise makes false minima there (a row of 100 photons/pixel, 2.5 fields of view: 64 px off)
    for lo, hi in ((3 * nbin / 8, 5 * nbin / 8), (nbin / 4, 3 * nbin / 4)):
        coarse = np.arange(lo, hi + 0.25, 0.5)
        best = int(np.argmin(_seam_metric(binned, pairs, coarse)))
        if best not in (0, len(coarse) - 1):
            break
    else:
        return math.nan
    start = coarse[best] * factor + (factor - 1) / 2  # a binned column's centre in full columns
    fine = start + np.arange(-(factor + 1), factor + 1 + 1e-9, 0.25)
    metric = _seam_metric(sinos, pairs, fine)
    low = int(np.argmin(metric))
    near = np.abs(fine - fine[low]) <= 1.0 + 1e-9
    curvature, slope, _ = np.polyfit(fine[near] - fine[low], metric[near], 2)
    offset = -slope / (2 * curvature) if curvature > 0 else 0.0
    return float(fine[low] + np.clip(offset, -0.5, 0.5))


def full_turn(angles_deg: np.ndarray) -> bool:
    """Whether the angles cover a full turn: their span and one step reach 360 degrees, within half a step (a fly
    scan's captured angles are not quite evenly spaced)."""
    a = np.unique(np.asarray(angles_deg, np.float64))
    if len(a) < 3:
        return False
    span = float(a[-1] - a[0])
    step = span / (len(a) - 1)
    return span + step >= 360.0 - 0.5 * step


def turn_center(rows: Sequence[np.ndarray], angles_deg: np.ndarray, smooth: float = SEAM_SMOOTH) -> float:
    """Rotation centre (column) of a scan over a full turn where the projections 180 degrees apart agree, searched
    over the whole detector; NaN if the angles hold no such pair or no candidate sees enough of the sample.

    Over a full turn every projection has its mirror image in the scan (where no projection lies exactly 180 degrees
    on, the interpolation along the angle of the two about it: :func:`_turn_pairs`), so the axis may lie anywhere on
    the detector: near one of its edges in an offset-axis scan (half acquisition), which doubles the field of view
    of a sample wider than the detector. A candidate ``c`` compares the columns both projections of a pair see
    (``2c - x`` on the detector too: a narrow band about ``c`` near an edge), so unlike :func:`seam_center`, whose
    candidates all share most columns, the metric is normalised: the variance of the differences over the sum of the
    two projections' variances over those columns (0 where they agree, about 1 for unrelated ones), pooled over up
    to :data:`TURN_PAIRS` pairs spread over the turn and the sum of ``rows`` (line integrals add up, the axis is the
    same). Candidates see at least :data:`TURN_MIN_OVERLAP` columns (and :data:`TURN_MIN_OVERLAP_SHARE` of the
    detector) and some of the sample (:data:`TURN_MIN_STRUCTURE`): open beam matches open beam at any centre. A
    coarse search in half-column steps on rows averaged down to at most :data:`SEAM_COARSE_COLUMNS` columns, then
    quarter-pixel steps with a parabola, as :func:`seam_center`.
    """
    pairs = _turn_pairs(angles_deg)
    if not pairs or not len(rows):
        return math.nan
    pairs = [pairs[k] for k in np.unique(np.linspace(0, len(pairs) - 1, min(TURN_PAIRS, len(pairs))).round()
                                         .astype(int))]
    used = sorted({j for i, lo, hi, _ in pairs for j in (i, lo, hi)})
    at = {j: k for k, j in enumerate(used)}
    compared = [(at[i], at[lo], at[hi], w) for i, lo, hi, w in pairs]
    total = sum(-np.log(np.clip(np.asarray(r, np.float64)[used], 1e-6, None)) for r in rows)
    sino = gaussian_filter1d(np.nan_to_num(np.asarray(total), nan=0.0), smooth, axis=1)
    ncol = sino.shape[1]
    margin = max(TURN_MIN_OVERLAP, math.ceil(TURN_MIN_OVERLAP_SHARE * ncol)) / 2
    if ncol - 1 - 2 * margin < 2:
        return math.nan
    factor = max(1, -(-ncol // SEAM_COARSE_COLUMNS))
    binned = sino[:, : ncol // factor * factor].reshape(len(sino), -1, factor).mean(axis=2)
    nbin = binned.shape[1]
    coarse = np.arange(margin / factor, nbin - 1 - margin / factor + 1e-9, 0.5)
    if len(coarse) < 3:
        return math.nan
    metric = _turn_metric(binned, compared, coarse, guard=2 * smooth / factor)
    if not np.isfinite(metric).any():
        return math.nan
    best = int(np.argmin(metric))
    start = coarse[best] * factor + (factor - 1) / 2
    fine = np.clip(start + np.arange(-(factor + 1), factor + 1 + 1e-9, 0.25), margin, ncol - 1 - margin)
    fine = np.unique(fine)
    metric = _turn_metric(sino, compared, fine, guard=2 * smooth)
    if not np.isfinite(metric).any():
        return float(start)
    low = int(np.argmin(metric))
    near = (np.abs(fine - fine[low]) <= 1.0 + 1e-9) & np.isfinite(metric)
    if near.sum() < 3:
        return float(fine[low])
    curvature, slope, _ = np.polyfit(fine[near] - fine[low], metric[near], 2)
    offset = -slope / (2 * curvature) if curvature > 0 else 0.0
    return float(fine[low] + np.clip(offset, -0.5, 0.5))


def _turn_pairs(angles_deg: np.ndarray) -> list[tuple[int, int, int, float]]:
    """:func:`turn_center`'s comparisons ``(i, lo, hi, w)``: projection ``i`` against ``(1 - w) * lo + w * hi``
    mirrored, ``lo`` and ``hi`` the projections on either side of its angle + 180 degrees (at most
    :data:`SEAM_REACH` steps apart; ``w = 0``, ``lo = hi`` where one is within a hundredth of a step of it): a fly
    scan's angles need not hold exact pairs."""
    a = np.asarray(angles_deg, np.float64)
    order = np.argsort(a)
    s = a[order]
    gaps = np.diff(np.unique(s))
    if len(s) < 3 or not len(gaps):
        return []
    step = float(np.median(gaps))
    pairs = []
    for k, angle in enumerate(s):
        target = angle + 180.0
        hi = int(np.searchsorted(s, target))
        if hi < len(s) and abs(s[hi] - target) <= 0.01 * step:
            pairs.append((int(order[k]), int(order[hi]), int(order[hi]), 0.0))
        elif hi > 0 and abs(s[hi - 1] - target) <= 0.01 * step:
            pairs.append((int(order[k]), int(order[hi - 1]), int(order[hi - 1]), 0.0))
        elif 0 < hi < len(s) and s[hi] - s[hi - 1] <= SEAM_REACH * step:
            pairs.append((int(order[k]), int(order[hi - 1]), int(order[hi]),
                          float((target - s[hi - 1]) / (s[hi] - s[hi - 1]))))
    return pairs


def _turn_metric(sino: np.ndarray, pairs: Sequence[tuple[int, int, int, float]], candidates: np.ndarray,
                 guard: float) -> np.ndarray:
    """:func:`turn_center`'s normalised metric of each candidate centre (inf where it sees too little structure):
    pooled variance of ``p_i(x) - p_j(2c - x)`` over pooled ``var p_i + var p_j`` on the columns both see (``p_j``
    interpolated along the angle between two projections, :func:`_turn_pairs`), less
    ``guard`` columns at each edge of the detector (where the smoothing met the edge: it biased an axis 12 px from
    an edge by 2 px)."""
    ncol = sino.shape[1]
    x = np.arange(ncol, dtype=np.float64)
    source = 2.0 * np.asarray(candidates, np.float64)[:, None] - x[None, :]
    inner = (x >= guard) & (x <= ncol - 1 - guard)
    seen = (source >= guard) & (source <= ncol - 1 - guard) & inner[None, :]
    n = np.maximum(seen.sum(axis=1), 1)
    left = np.clip(np.floor(source).astype(np.intp), 0, max(ncol - 2, 0))
    frac = np.clip(source - left, 0.0, 1.0)
    right = np.minimum(left + 1, ncol - 1)

    def variance(v: np.ndarray) -> np.ndarray:
        return (v**2).sum(axis=1) - v.sum(axis=1) ** 2 / n

    differences = np.zeros(len(candidates))
    structure = np.zeros(len(candidates))
    for i, lo, hi, w in pairs:
        row = sino[lo] if w == 0.0 else (1 - w) * sino[lo] + w * sino[hi]
        direct = np.where(seen, sino[i][None, :], 0.0)
        mirrored = np.where(seen, row[left] * (1 - frac) + row[right] * frac, 0.0)
        differences += variance(direct - mirrored)
        structure += variance(direct) + variance(mirrored)
    per_column = structure / n
    valid = per_column >= TURN_MIN_STRUCTURE * per_column.max() if per_column.max() > 0 else np.zeros_like(n, bool)
    return np.where(valid, differences / np.maximum(structure, 1e-30), np.inf)


def _seam_pairs(angles_deg: np.ndarray) -> list[_Pair]:
    """The seam's comparisons: ``(i, lo, hi, w)``, projection ``i`` against ``(1 - w) * lo + w * hi``, each of
    ``lo`` and ``hi`` a projection's index and whether it is mirrored (at its angle +-180 degrees).

    ``lo`` and ``hi`` are the nearest on either side of projection ``i``'s angle among the other projections and
    all mirror images, each at most :data:`SEAM_REACH` steps away; at least one is mirrored (else the comparison
    does not depend on the centre). A mirror image within a hundredth of a step of the angle is compared alone.
    """
    a = np.asarray(angles_deg, np.float64)
    gaps = np.diff(np.unique(a))
    if len(a) < 3 or not len(gaps):
        return []
    step = float(np.median(gaps))
    same, reach = 0.01 * step, SEAM_REACH * step
    # every projection (not mirrored) and its mirror images, by angle
    angle = np.concatenate([a, a - 180.0, a + 180.0])
    index = np.concatenate([np.arange(len(a))] * 3)
    mirrored = np.repeat([False, True, True], len(a))
    pairs: list[_Pair] = []
    for i in range(len(a)):
        d = angle - a[i]
        twin = np.flatnonzero(mirrored & (np.abs(d) <= same))
        if len(twin):
            j = int(index[twin[0]])
            pairs.append((i, (j, True), (j, True), 0.0))
            continue
        below = np.flatnonzero((d < -same) & (d >= -reach))
        above = np.flatnonzero((d > same) & (d <= reach))
        if not len(below) or not len(above):
            continue
        lo, hi = below[np.argmax(d[below])], above[np.argmin(d[above])]
        if mirrored[lo] or mirrored[hi]:
            w = float(-d[lo] / (d[hi] - d[lo]))
            pairs.append((i, (int(index[lo]), bool(mirrored[lo])), (int(index[hi]), bool(mirrored[hi])), w))
    return pairs


def _seam_metric(sinos: Sequence[np.ndarray], pairs: Sequence[_Pair], candidates: np.ndarray) -> np.ndarray:
    """The seam's pooled variance of the differences at each candidate centre, over the columns each comparison
    sees (each comparison's mean difference taken out)."""
    ncol = sinos[0].shape[1]
    x = np.arange(ncol, dtype=np.float64)
    source = 2.0 * np.asarray(candidates, np.float64)[:, None] - x[None, :]  # (candidates, columns)
    seen = (source >= 0) & (source <= ncol - 1)
    left = np.clip(np.floor(source).astype(np.intp), 0, max(ncol - 2, 0))
    frac = np.clip(source - left, 0.0, 1.0)
    right = np.minimum(left + 1, ncol - 1)
    total = np.zeros(len(candidates))
    count = np.zeros(len(candidates))
    for sino in sinos:
        def projection(which: tuple[int, bool], sino: np.ndarray = sino) -> np.ndarray:
            j, mirror = which
            row = sino[j]
            return row[left] * (1 - frac) + row[right] * frac if mirror else np.broadcast_to(row, source.shape)

        for i, lo, hi, w in pairs:
            predicted = projection(lo) if w == 0.0 else (1 - w) * projection(lo) + w * projection(hi)
            residual = sino[i][None, :] - predicted
            ok = seen & np.isfinite(residual)
            residual = np.where(ok, residual, 0.0)
            n = ok.sum(axis=1)
            # each comparison's mean difference taken out: a beam that is brighter or dimmer at one end of the scan
            # (decay, a shutter still opening) adds a constant to it, which would pull the minimum towards where
            # the structure's difference happens to offset it (a first projection 30 % dimmer: 0.55 px)
            total += (residual**2).sum(axis=1) - residual.sum(axis=1) ** 2 / np.maximum(n, 1)
            count += n
    return np.where(count > 0, total / np.maximum(count, 1), np.inf)


def _vo_center(transmission: np.ndarray, angles_deg: np.ndarray, inside: bool) -> float:
    """Vo's method in algotom on one 180-degree transmission sinogram; NaN if its search finds no minimum
    inside any of its windows.

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
    if radius > 2:
        # a wide detector's coarse search is 8x downsampled (2048 columns: +-8 px to search): whole pixels first,
        # then quarters within 1.5 px of the best, 30 metrics instead of 65 (each a 2D FFT of the doubled
        # sinogram; python benchmarks/reconstruction_steps.py --width 2048 --angles 720)
        whole = np.clip(start + np.arange(-round(radius), round(radius) + 1), 0.0, smooth.shape[1] - 1.0)
        start, radius = float(whole[int(np.argmin(_vo_metric(smooth, whole)))]), 1.5
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
