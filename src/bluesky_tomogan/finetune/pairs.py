"""Self-supervised training pairs from one noisy scan: no clean data anywhere.

Two methods, one per model domain; both give pairs whose input and target carry
*independent* noise on the same structure, so a network trained to predict the
target from the input learns the clean signal (Noise2Noise: the expected loss is
minimised by the noise-free mean).

Slices: Noise2Inverse (Hendriksen et al. 2020, "Noise2Inverse: self-supervised deep
convolutional denoising for tomography", IEEE TCI 6). The projections are split
into ``K`` interleaved angle subsets; each subset is reconstructed on its own. The
input is the mean of ``K - 1`` sub-reconstructions, the target the remaining one
(the paper's "X:1" strategy): photon noise of different projections is independent,
and the input is close to the full reconstruction a deployed model sees.

Projections: Neighbor2Neighbor (Huang et al. 2021, CVPR). Each frame is split into
two half-resolution images by taking, in every 2x2 cell, two different random
pixels; neighbouring pixels see almost the same structure and independent photon
noise. Detector blur correlates neighbouring pixels' noise and weakens this
assumption (say so to users whose detector has a wide point-spread function).
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm.auto import tqdm

from ..despike import PROJECTION_DESPIKE_SIGMAS, remove_isolated_spikes
from ..errors import ScanError
from ..reconstruction import (
    check_angles,
    corrected_sinogram,
    fallback_center,
    full_turn,
    offset_axis,
    reconstruct,
    search_center,
    wider_than_view,
)
from ..simulate.datasets import PairSet
from .sources import Scan

__all__ = ["HOLDOUT_DEFAULT", "MIN_ANGLES_PER_SPLIT", "noise2inverse_pairs", "noise2inverse_split", "neighbour_pairs",
           "rotation_center", "scan_center", "scan_offset_axis", "holdout_split"]

log = logging.getLogger(__name__)

#: Fewest projections a Noise2Inverse angle subset may have (fewer make streaks, not slices).
MIN_ANGLES_PER_SPLIT = 16
#: Fewest frames (slices or projections) a scan must give: training plus a held-out slab.
MIN_FRAMES = 16
#: Fraction of every group held out (a contiguous slab at the end) to rank epochs.
HOLDOUT_DEFAULT = 0.125


def holdout_split(pairs: PairSet, fraction: float = HOLDOUT_DEFAULT) -> tuple[PairSet, PairSet]:
    """Split ``pairs`` into training and a held-out contiguous slab (the last ``fraction`` of every group).

    A slab, not random frames: held-out frames must not be the training frames' neighbours,
    which share their structure through the 3-frame context.
    """
    train_idx: list[int] = []
    test_idx: list[int] = []
    for g in np.unique(pairs.group):
        members = np.flatnonzero(pairs.group == g)
        cut = len(members) - _held_out(len(members), fraction)
        train_idx += members[:cut].tolist()
        test_idx += members[cut:].tolist()

    def take(idx: list[int]) -> PairSet:
        return PairSet(pairs.ns[idx], pairs.gt[idx], pairs.group[idx])

    return take(train_idx), take(test_idx)


def _held_out(members: int, fraction: float) -> int:
    """How many of a group's ``members`` frames the held-out slab takes: ``fraction`` of them, at least 3."""
    return max(3, int(round(members * fraction)))


def rotation_center(scan: Scan) -> float:
    """The rotation centre (column) of ``scan``: :func:`scan_center`'s, without how it was found."""
    return scan_center(scan)[0]


def scan_center(scan: Scan) -> tuple[float, str]:
    """The rotation centre (column) of ``scan`` and how it was found.

    Over 180 degrees (:func:`~bluesky_tomogan.reconstruction.check_angles`),
    :func:`bluesky_tomogan.center.search_center` on the middle detector row (Vo's method; for a sample wider than
    the field of view the 180-degree seam, over 8 more rows of the middle half of the scan's rows); else, or where
    that finds none, the centre-of-mass estimate or the detector centre
    (:func:`~bluesky_tomogan.center.fallback_center`), logged as a warning.
    """
    z = scan.shape[1]

    def corrected(r: int) -> np.ndarray:
        return corrected_sinogram(scan.projections[:, r, :], _row(scan.flats, r), _row(scan.darks, r))

    row = corrected(z // 2)
    # 180 degrees as the live reconstruction counts them, with one step: until session 71 the angles had to span
    # 179, which a scan over [0, 180) in steps above 1 degree does not (90 angles: 178), and got the fallback
    too_few = check_angles(scan.angles)
    try:
        if not too_few:
            others = sorted({int(r) for r in np.linspace(z // 4, (3 * z) // 4, 9)} - {z // 2})
            center, how = search_center(row, scan.angles, other_rows=[corrected(r) for r in others])
            if math.isfinite(center):
                return center, how
            log.warning("the rotation centre search found no minimum inside its windows")
        else:
            log.warning("no rotation centre search: %s", too_few)
    except Exception as exc:  # algotom fails in many ways on odd data; the fallback still works
        log.warning("the rotation centre search failed (%s)", exc)
    center, how = fallback_center(row, scan.angles)
    log.warning("rotation centre: %s, %.2f", how, center)
    return center, how


def scan_offset_axis(scan: Scan, center: float) -> bool:
    """Whether ``scan`` is an offset-axis (half-acquisition) one about ``center``, whose slices are made over the
    doubled field of view (:func:`~bluesky_tomogan.reconstruction.offset_axis`: a full turn of a sample wider than
    the view, judged on the middle row with the scan's flats, its axis off the middle)."""
    if scan.flats is None or not full_turn(scan.angles):
        return False
    z = scan.shape[1] // 2
    row = corrected_sinogram(scan.projections[:, z, :], _row(scan.flats, z), _row(scan.darks, z))
    return offset_axis(True, center, scan.shape[2], wider_than_view([row]))


def _row(frame: np.ndarray | None, z: int) -> np.ndarray | None:
    return None if frame is None else frame[z]


def noise2inverse_pairs(scan: Scan, splits: int = 4, rows: slice | None = None, threads: int = 2,
                        progress: bool = True) -> tuple[PairSet, dict[str, float]]:
    """Noise2Inverse slice pairs, one group per split; see the module docstring.

    Parameters
    ----------
    scan : Scan
        The projections (flat-field corrected here with the scan's flats and darks).
    splits : int
        Angle subsets ``K`` (>= 2).
    rows : slice, optional
        Detector rows to reconstruct (default: all).
    threads : int
        Rows reconstructed at a time.
    progress : bool
        Show a progress bar.

    Returns
    -------
    pairs : PairSet
        ``K * n_rows`` input/target slices; group ``j`` holds the pairs whose target is subset ``j``.
    info : dict
        The rotation centre used and the angles per subset.
    """
    (pairs,), info = _noise2inverse(scan, splits, rows, threads, progress, holdout=None)
    return pairs, info


def noise2inverse_split(scan: Scan, splits: int = 4, fraction: float = HOLDOUT_DEFAULT, threads: int = 2,
                        progress: bool = True) -> tuple[PairSet, PairSet, dict[str, float]]:
    """:func:`noise2inverse_pairs` of every row, split as :func:`holdout_split` splits them (the same
    pairs in the same order), but laid out so from the start: the held-out split costs no copy
    (a 180 x 256 x 512 scan's pairs peaked at 2.60 GB instead of 4.59)."""
    (train, test), info = _noise2inverse(scan, splits, None, threads, progress, holdout=fraction)
    return train, test, info


def _noise2inverse(scan: Scan, splits: int, rows: slice | None, threads: int, progress: bool,
                   holdout: float | None) -> tuple[tuple[PairSet, ...], dict[str, float]]:
    """The pairs of the picked rows, as one PairSet, or with ``holdout`` two: the first rows of
    every group, and the last ``holdout`` of them (at least 3), as :func:`holdout_split` cuts."""
    n, z, x = scan.shape
    if splits < 2:
        raise ScanError(f"Noise2Inverse needs at least 2 angle subsets, got {splits}")
    if n // splits < MIN_ANGLES_PER_SPLIT:
        raise ScanError(f"{scan.source}: {n} projections are too few to split in {splits} subsets of at least "
                        f"{MIN_ANGLES_PER_SPLIT} angles (need >= {splits * MIN_ANGLES_PER_SPLIT})")
    if scan.angles.max() - scan.angles.min() < 170.0:
        raise ScanError(f"{scan.source}: the angles span {scan.angles.max() - scan.angles.min():.0f} degrees; "
                        "slices need about 180")
    picked = range(z)[rows or slice(None)]
    if len(picked) < MIN_FRAMES:
        raise ScanError(f"{scan.source}: {len(picked)} detector rows are too few to split into training and "
                        f"held-out slices (need >= {MIN_FRAMES})")
    center = rotation_center(scan)
    extend = scan_offset_axis(scan, center)  # each subset is a full turn too, thinned
    subsets = [np.arange(j, n, splits) for j in range(splits)]
    cut = len(picked) if holdout is None else len(picked) - _held_out(len(picked), holdout)
    parts = [(0, cut)] + ([] if holdout is None else [(cut, len(picked))])

    def one_row(r: int) -> np.ndarray:
        trans = corrected_sinogram(scan.projections[:, r, :], _row(scan.flats, r), _row(scan.darks, r))
        return np.stack([reconstruct(trans[s], scan.angles[s], center, row=r, extend=extend).slice for s in subsets])

    # Filled in place, one (K, rows of the part, n, n) array per part (training, held out), and the targets
    # are views of them: one copy of the sub-reconstructions and one of the inputs (for 512 rows of 512 x 512,
    # 2.1 GB each); stacking lists of them peaked at 14 GB, and splitting them afterwards copied both again.
    subs: list[np.ndarray] = []
    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="tomogan-n2i") as pool:
        for i, rec in enumerate(tqdm(pool.map(one_row, picked), total=len(picked), disable=not progress,
                                     desc="Noise2Inverse reconstructions", unit="row")):
            if not subs:
                subs = [np.empty((splits, stop - first, *rec.shape[1:]), np.float32) for first, stop in parts]
            part = 0 if i < cut else 1
            subs[part][:, i - parts[part][0]] = rec
    if not subs:  # not reached: picked holds MIN_FRAMES rows or more
        raise ScanError(f"{scan.source}: no detector row was reconstructed")
    info = {"center": float(center), "angles_per_split": float(n / splits), "rows": float(len(picked)),
            "offset_axis": float(extend)}
    return tuple(_complement_pairs(sub) for sub in subs), info


def _complement_pairs(sub: np.ndarray) -> PairSet:
    """Pairs of ``(K, rows, n, n)`` sub-reconstructions: target subset ``j``, input the mean of the
    other ``K - 1``; group ``j`` in order, the targets a view of ``sub``."""
    splits, rows = sub.shape[:2]
    total = sub.sum(axis=0)
    ns = np.empty_like(sub)
    for j in range(splits):
        np.subtract(total, sub[j], out=ns[j])
        ns[j] /= splits - 1
    group = np.repeat(np.arange(splits, dtype=np.int32), rows)
    return PairSet(ns.reshape(-1, *sub.shape[2:]), sub.reshape(-1, *sub.shape[2:]), group)


def neighbour_pairs(scan: Scan, seed: int = 0) -> tuple[PairSet, dict[str, float]]:
    """Neighbor2Neighbor projection pairs at half resolution, consecutive angles kept adjacent.

    Zingers, hot and dead pixels are taken out first, by the rule a projection model's input gets at
    inference (:func:`~bluesky_tomogan.despike.remove_isolated_spikes`): the network never sees them
    there, and in the pairs they would be targets that one half of a cell has and the other lacks, and
    from 0.5 % of the pixels on they would set the frames' intensity range (``tests/test_finetune.py``).
    """
    n, z, x = scan.shape
    if n < MIN_FRAMES:
        raise ScanError(f"{scan.source}: {n} projections are too few (need >= {MIN_FRAMES})")
    h, w = z // 2, x // 2
    if min(h, w) < 32:
        raise ScanError(f"{scan.source}: frames of {z}x{x} are too small to split into neighbour pairs "
                        "(need at least 64x64)")
    rng = np.random.default_rng(seed)
    frames = remove_isolated_spikes(np.array(scan.projections[:, : 2 * h, : 2 * w], np.float32),
                                    PROJECTION_DESPIKE_SIGMAS)
    cells = frames.reshape(n, h, 2, w, 2).transpose(0, 1, 3, 2, 4).reshape(n, h, w, 4)
    # two different positions of the 2x2 cell for every cell of every frame
    first = rng.integers(0, 4, (n, h, w))
    second = (first + rng.integers(1, 4, (n, h, w))) % 4
    ns = np.take_along_axis(cells, first[..., None], axis=-1)[..., 0]
    gt = np.take_along_axis(cells, second[..., None], axis=-1)[..., 0]
    return PairSet(ns.astype(np.float32), gt.astype(np.float32), np.zeros(n, np.int32)), {"half_size": float(h)}
