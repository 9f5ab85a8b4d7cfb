"""Training pairs (slice and projection domain) and TomoGAN-style HDF5 files.

File layout (compatible with the original TomoGAN's ``train_ns/train_gt/
test_ns/test_gt``): each key is a float32 ``(N, H, W)`` stack whose consecutive
frames are adjacent slices or angles. Optional ``train_group`` / ``test_group``
int arrays say which scan each frame belongs to, so that 3-frame context
never crosses from one sample to the next; without them a file is one scan.
The recipe that made a file is stored as JSON in the root attribute ``recipe``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import h5py
import numpy as np

from ..errors import DatasetError, OutputPathError
from .phantoms import FAMILIES, HELD_OUT_FAMILIES, make_phantom, with_grain
from .tomography import (
    DetectorModel,
    angles_deg,
    fbp,
    middle_columns,
    project,
    scale_to_max_attenuation,
    simulate_scan,
    with_fringes,
)

__all__ = [
    "Domain",
    "Recipe",
    "PairSet",
    "TomoDataset",
    "simulate_pairs",
    "write_dataset",
    "read_dataset",
    "make_dataset",
    "merge_datasets",
    "write_scan_file",
]

log = logging.getLogger(__name__)
Domain = Literal["slice", "projection"]
SPLITS = ("train", "test")
FILTERS = ("ramp", "shepp-logan", "cosine", "hamming", "hann")


@dataclass(frozen=True)
class Recipe:
    """How a simulated dataset is made; stored in the file and in model cards.

    Parameters
    ----------
    domain : {"slice", "projection"}
        Reconstructed slices (noise + sparse-view streaks) or detector frames
        (photon noise).
    size : int
        Phantom edge length; frames are ``size x size``.
    families : tuple of str
        Phantom families to cycle through.
    photons : tuple of float
        Range (log-uniform) of incident photons per pixel per frame.
    view_fractions : tuple of float
        Sparse-view fractions drawn per phantom (slice domain only).
    n_angles : int
        Angles of the full scan over 180 degrees.
    max_attenuation : tuple of float
        Range of the thickest ray's line integral (sample opacity).
    frames_per_scan : int
        Projection domain: consecutive angles kept per scan (0 = all).
    psf_sigma : tuple of float
        Range (uniform) of the detector's point-spread function, pixels; see
        :class:`~.tomography.DetectorModel`. ``(0, 0)``: an ideal detector.
    zinger_rate : float
        Zingers per pixel and frame (a zinger-free target teaches their removal).
    fringes : tuple of float
        Range (uniform) of phase-contrast fringe strength, pixels squared (signal: in the
        targets too).
    column_gain_error : tuple of float
        Range (uniform) of the RMS of uncorrected column gains: stripes and rings that the
        targets do not have.
    pixel_gain_error : tuple of float
        Range (uniform) of the RMS of a fixed pixel-to-pixel gain (a pixel-scale texture
        that stays from frame to frame; signal: in the targets too).
    sample_grain : tuple of float
        Range (uniform) of the relative RMS of a fine density variation inside the sample
        (:func:`~.phantoms.with_grain`): a pixel-scale texture that turns with the sample, shared
        in part by neighbouring projections and drifting between them; signal: in the targets
        too.
    filters : tuple of str
        Slice domain: FBP filters drawn per scan (``ramp``, ``shepp-logan``, ``cosine``,
        ``hamming``, ``hann``); the target uses the same filter, so the model denoises
        and does not sharpen.
    eight_bit : float
        Slice domain: fraction of scans stored as people store images, 8-bit after
        clipping at the 0.1 and 99.9 percentiles (the target gets the same affine map,
        unclipped and unrounded).
    realistic_fraction : float
        Fraction of scans that get ``psf_sigma``, ``zinger_rate``, ``fringes``,
        ``column_gain_error``, ``pixel_gain_error``, ``sample_grain`` and ``eight_bit``; the others are
        ideal, so one dataset teaches both.
    beyond_view : float
        Fraction of scans whose sample is wider than the detector's field of view at every angle
        (local or interior tomography: a beamline imaging part of a larger sample). Drawn for every
        scan, ideal or not. The detector sees the middle ``size`` columns of the sample's
        projections, so no column is open beam; a slice reconstructed from them fills the
        reconstruction circle and rises towards its rim (truncation), in the targets too: the
        model denoises, it does not undo the truncation.
    beyond_width : tuple of float
        Range (uniform) of such a sample's phantom width over the field of view; the sample
        fills 0.92 of its phantom's width, so 1.3-2.2 makes it 1.2-2 fields of view across.
    """

    domain: Domain = "slice"
    size: int = 128
    families: tuple[str, ...] = tuple(FAMILIES)
    photons: tuple[float, float] = (300.0, 3000.0)
    view_fractions: tuple[float, ...] = (1 / 2, 1 / 4, 1 / 8)
    n_angles: int = 192
    max_attenuation: tuple[float, float] = (1.5, 3.0)
    frames_per_scan: int = 0
    psf_sigma: tuple[float, float] = (0.0, 0.0)
    zinger_rate: float = 0.0
    fringes: tuple[float, float] = (0.0, 0.0)
    column_gain_error: tuple[float, float] = (0.0, 0.0)
    pixel_gain_error: tuple[float, float] = (0.0, 0.0)
    sample_grain: tuple[float, float] = (0.0, 0.0)
    filters: tuple[str, ...] = ("ramp",)
    eight_bit: float = 0.0
    realistic_fraction: float = 1.0
    beyond_view: float = 0.0
    beyond_width: tuple[float, float] = (1.3, 2.2)

    def __post_init__(self) -> None:
        if self.domain not in ("slice", "projection"):
            raise ValueError(f"domain must be 'slice' or 'projection', got {self.domain!r}")
        unknown = set(self.families) - set(FAMILIES) - set(HELD_OUT_FAMILIES)
        if unknown:
            raise ValueError(
                f"unknown phantom families {sorted(unknown)}; known: {sorted(FAMILIES | HELD_OUT_FAMILIES)}")
        if self.size % 8:
            raise ValueError(f"size must be a multiple of 8, got {self.size}")
        if not 0 < self.photons[0] <= self.photons[1]:
            raise ValueError(f"photons must be a range 0 < low <= high, got {self.photons}")
        for name in ("psf_sigma", "fringes", "column_gain_error", "pixel_gain_error", "sample_grain"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"{name} must be a range 0 <= low <= high, got {(lo, hi)}")
        if self.sample_grain[1] > 0.5:
            raise ValueError(f"sample_grain is a relative RMS of at most 0.5, got {self.sample_grain}")
        bad = set(self.filters) - set(FILTERS)
        if bad or not self.filters:
            raise ValueError(f"unknown FBP filters {sorted(bad)}; choose from {FILTERS}")
        if not (0 <= self.eight_bit <= 1 and 0 <= self.realistic_fraction <= 1 and 0 <= self.beyond_view <= 1):
            raise ValueError("eight_bit, realistic_fraction and beyond_view are fractions in [0, 1]")
        if not 1.1 <= self.beyond_width[0] <= self.beyond_width[1] <= 4:
            raise ValueError(f"beyond_width must be a range 1.1 <= low <= high <= 4, got {self.beyond_width}")


@dataclass
class PairSet:
    """Degraded/clean frame pairs with their scan grouping."""

    ns: np.ndarray
    gt: np.ndarray
    group: np.ndarray


def _wider_phantom(family: str, size: int, width: float, seed: int) -> np.ndarray:
    """A phantom ``width`` times the field of view across, its middle ``size`` rows: ``(size, m, m)`` (width 1:
    the ``(size, size, size)`` phantom itself)."""
    m = size + 2 * int(round(size * (width - 1) / 2))  # the same margin on both sides
    first = (m - size) // 2
    return np.ascontiguousarray(make_phantom(family, m, seed=seed)[first : first + size])


def _one_scan(recipe: Recipe, seed: int, index: int) -> PairSet:
    rng = np.random.default_rng([seed, index])
    family = recipe.families[index % len(recipe.families)]
    phantom_seed = int(rng.integers(2**31))
    max_attenuation = float(rng.uniform(*recipe.max_attenuation))
    lo, hi = np.log(recipe.photons[0]), np.log(recipe.photons[1])
    photons = float(np.exp(rng.uniform(lo, hi)))
    # Extra draws only when an option is on, so datasets of older recipes are reproduced exactly.
    realistic = recipe.realistic_fraction >= 1 or bool(rng.random() < recipe.realistic_fraction)
    width = 1.0
    if recipe.beyond_view > 0 and rng.random() < recipe.beyond_view:
        width = float(rng.uniform(*recipe.beyond_width))
    vol = scale_to_max_attenuation(_wider_phantom(family, recipe.size, width, phantom_seed), max_attenuation)

    def draw(bounds: tuple[float, float]) -> float:
        return float(rng.uniform(*bounds)) if realistic and bounds[1] > 0 else 0.0

    detector = DetectorModel(
        photons=photons, psf_sigma=draw(recipe.psf_sigma), zinger_rate=recipe.zinger_rate if realistic else 0.0,
        fringes=draw(recipe.fringes), column_gain_error=draw(recipe.column_gain_error),
        pixel_gain_error=draw(recipe.pixel_gain_error),
    )
    grain = draw(recipe.sample_grain)
    if grain > 0:
        vol = with_grain(vol, grain, rng)
    if recipe.domain == "projection":
        angles = angles_deg(recipe.n_angles)
        k = recipe.frames_per_scan
        if k and k < len(angles):
            start = int(rng.integers(0, len(angles) - k + 1))
            angles = angles[start : start + k]
        scan = simulate_scan(vol, angles, detector, rng, columns=recipe.size)
        ns, gt = scan.frames, scan.expected
    else:
        frac = float(rng.choice(recipe.view_fractions))
        filt = str(rng.choice(recipe.filters)) if len(recipe.filters) > 1 else recipe.filters[0]
        sparse_angles = angles_deg(recipe.n_angles, frac)
        scan = simulate_scan(vol, sparse_angles, detector, rng, columns=recipe.size)
        full = angles_deg(recipe.n_angles)
        clean = -np.log(with_fringes(np.exp(-middle_columns(project(vol, full), recipe.size)), detector.fringes))
        ns = np.stack([fbp(scan.sinogram_noisy[:, z], sparse_angles, filt) for z in range(recipe.size)])
        gt = np.stack([fbp(clean[:, z], full, filt) for z in range(recipe.size)])
        if recipe.eight_bit > 0 and realistic and rng.random() < recipe.eight_bit:
            ns, gt = stored_as_8bit(ns, gt)
    log.debug("scan %d: %s, %.0f photons, sample grain %.3f, %.2f fields of view wide", index, family,
              detector.photons, grain, width)
    group = np.full(len(ns), index, np.int32)
    return PairSet(ns.astype(np.float32), gt.astype(np.float32), group)


def stored_as_8bit(ns: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``ns`` as an 8-bit image stack clipped at its 0.1/99.9 percentiles, and ``gt`` in the same units."""
    lo, hi = np.percentile(ns, [0.1, 99.9])
    scale = 255.0 / max(float(hi - lo), 1e-12)
    stored = np.rint(np.clip((ns - lo) * scale, 0, 255))
    return stored.astype(np.float32), ((gt - lo) * scale).astype(np.float32)


def simulate_pairs(recipe: Recipe, n_scans: int, seed: int, workers: int = 1) -> PairSet:
    """Simulate ``n_scans`` phantoms and return their degraded/clean frames.

    Parameters
    ----------
    recipe : Recipe
        What to simulate.
    n_scans : int
        Number of phantoms (families cycle in order).
    seed : int
        Master seed: the same seed gives the same data, whatever ``workers``.
    workers : int
        Processes to use.
    """
    if n_scans < 1:
        raise ValueError(f"n_scans must be >= 1, got {n_scans}")
    args = [(recipe, seed, i) for i in range(n_scans)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_one_scan, *zip(*args, strict=True)))
    else:
        parts = [_one_scan(*a) for a in args]
    return PairSet(
        np.concatenate([p.ns for p in parts]),
        np.concatenate([p.gt for p in parts]),
        np.concatenate([p.group for p in parts]),
    )


@dataclass
class TomoDataset:
    """Arrays of a TomoGAN-style file (see the module docstring)."""

    train_ns: np.ndarray
    train_gt: np.ndarray
    test_ns: np.ndarray
    test_gt: np.ndarray
    train_group: np.ndarray
    test_group: np.ndarray
    recipe: dict[str, object] = field(default_factory=dict)

    def split(self, name: str) -> PairSet:
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return PairSet(
            getattr(self, f"{name}_ns"), getattr(self, f"{name}_gt"), getattr(self, f"{name}_group")
        )


def write_dataset(
    path: str | os.PathLike[str], train: PairSet, test: PairSet, recipe: dict[str, object] | None = None
) -> Path:
    """Write a TomoGAN-style HDF5 file (chunked per frame, gzip-compressed)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(path, "w") as f:
            for name, pairs in (("train", train), ("test", test)):
                for key, arr in (("ns", pairs.ns), ("gt", pairs.gt)):
                    f.create_dataset(
                        f"{name}_{key}", data=np.asarray(arr, np.float32),  # no copy of float32 frames
                        chunks=(1, *arr.shape[1:]), compression="gzip", compression_opts=1,
                    )
                f.create_dataset(f"{name}_group", data=pairs.group.astype(np.int32))
            f.attrs["recipe"] = json.dumps(recipe or {})
    except OSError as exc:
        raise OutputPathError(f"cannot write dataset to {path}: {exc}") from exc
    return path


def _check_split(f: h5py.File, path: Path, split: str) -> tuple[np.ndarray, ...]:
    missing = [k for k in (f"{split}_ns", f"{split}_gt") if k not in f]
    if missing:
        raise DatasetError(
            f"{path} has no {' or '.join(missing)}; a TomoGAN dataset needs the keys "
            f"train_ns, train_gt, test_ns, test_gt (found: {sorted(f.keys())})"
        )
    ns, gt = f[f"{split}_ns"][()], f[f"{split}_gt"][()]
    for key, arr in ((f"{split}_ns", ns), (f"{split}_gt", gt)):
        if arr.ndim != 3:
            raise DatasetError(f"{path}:{key} must be a (N, H, W) stack, got shape {arr.shape}")
        if arr.shape[0] == 0:
            raise DatasetError(f"{path}:{key} is empty")
        if not np.issubdtype(arr.dtype, np.number):
            raise DatasetError(f"{path}:{key} has non-numeric dtype {arr.dtype}")
    if ns.shape != gt.shape:
        raise DatasetError(
            f"{path}: {split}_ns {ns.shape} and {split}_gt {gt.shape} must have the same shape"
        )
    for key, arr in ((f"{split}_ns", ns), (f"{split}_gt", gt)):
        if np.issubdtype(arr.dtype, np.integer) or np.isfinite(arr).all():
            continue  # one boolean temporary for the usual, finite stack (a fine-tune's largest arrays)
        bad = ~np.isfinite(arr)
        frames = np.unique(np.nonzero(bad)[0])[:5].tolist()
        raise DatasetError(
            f"{path}:{key} holds {int(bad.sum())} NaN/inf values (first frames: {frames}); "
            "clean or drop those frames"
        )
    gkey = f"{split}_group"
    group = f[gkey][()] if gkey in f else np.zeros(len(ns), np.int32)
    if group.shape != (len(ns),):
        raise DatasetError(f"{path}:{gkey} must have shape ({len(ns)},), got {group.shape}")
    # asarray, not astype: float32 frames (what write_dataset stores) are not copied; astype copied both
    # stacks while they were held, 7.9 GB at the peak to read a fine-tune's 4.3 GB of pairs
    return np.asarray(ns, np.float32), np.asarray(gt, np.float32), np.asarray(group, np.int32)


def read_dataset(path: str | os.PathLike[str]) -> TomoDataset:
    """Read and validate a TomoGAN-style HDF5 file.

    Raises
    ------
    DatasetError
        Missing keys, wrong shapes, mismatched pairs, NaN/inf, or not HDF5.
    ModelLoadError
        Never; listed for symmetry with model loading.
    """
    from ..hdf5_frames import open_for_reading

    path = Path(path)
    with open_for_reading(path, DatasetError, "dataset") as f:
        train = _check_split(f, path, "train")
        test = _check_split(f, path, "test")
        if train[0].shape[1:] != test[0].shape[1:] and min(test[0].shape[1:]) < 8:
            raise DatasetError(f"{path}: test frames {test[0].shape[1:]} are too small")
        recipe = json.loads(f.attrs.get("recipe", "{}"))
    return TomoDataset(
        train_ns=train[0], train_gt=train[1], test_ns=test[0], test_gt=test[1],
        train_group=train[2], test_group=test[2], recipe=recipe,
    )


def merge_datasets(path: str | os.PathLike[str], sources: Sequence[str | os.PathLike[str]]) -> Path:
    """Write one dataset holding every frame of ``sources`` (to train on several recipes at once).

    Each split is the sources' frames in order; a source's scan groups are renumbered after
    the previous source's, so no context window spans two sources. The recipe attribute
    lists the sources' recipes (``{"domain": ..., "merged": [...]}``).

    Raises
    ------
    DatasetError
        Fewer than two sources, a source that is not a valid dataset, or sources of
        different domains or frame shapes.
    """
    if len(sources) < 2:
        raise DatasetError(f"merging needs two or more datasets, got {len(sources)}")
    parts = [read_dataset(s) for s in sources]
    domains = {str(p.recipe.get("domain", "")) for p in parts}
    shapes = {p.train_ns.shape[1:] for p in parts}
    if len(domains) > 1 or len(shapes) > 1:
        raise DatasetError(f"cannot merge datasets of domains {sorted(domains)} and frame shapes {sorted(shapes)}")
    splits = {}
    for name in SPLITS:
        sets = [p.split(name) for p in parts]
        offsets = np.cumsum([0] + [int(s.group.max()) + 1 if s.group.size else 0 for s in sets[:-1]])
        splits[name] = PairSet(np.concatenate([s.ns for s in sets]), np.concatenate([s.gt for s in sets]),
                               np.concatenate([s.group + off for s, off in zip(sets, offsets, strict=True)]))
    recipe: dict[str, object] = {"domain": domains.pop(), "merged": [p.recipe for p in parts],
                                 "sources": [Path(s).name for s in sources]}
    return write_dataset(path, splits["train"], splits["test"], recipe)


def make_dataset(
    path: str | os.PathLike[str],
    recipe: Recipe,
    n_train: int,
    n_test: int,
    seed: int = 0,
    workers: int = 1,
) -> Path:
    """Simulate train and held-out test scans and write them to ``path``.

    The test scans use a different seed stream (``seed + 1_000_003``), so no
    phantom or noise realisation is shared with training.
    """
    train = simulate_pairs(recipe, n_train, seed, workers)
    test = simulate_pairs(recipe, n_test, seed + 1_000_003, workers)
    meta = asdict(recipe) | {"n_train_scans": n_train, "n_test_scans": n_test, "seed": seed}
    return write_dataset(path, train, test, meta)


def write_scan_file(
    path: str | os.PathLike[str],
    family: str = "grains",
    size: int = 128,
    n_angles: int = 192,
    photons: float = 300.0,
    seed: int = 0,
    max_attenuation: float = 2.5,
    width: float = 1.0,
) -> tuple[Path, np.ndarray]:
    """Simulate one low-dose scan and write it as an APS Data Exchange HDF5 file.

    The file holds what a beamline writes: ``/exchange/data`` (uint16 counts, one frame
    per angle), ``/exchange/data_white`` and ``/exchange/data_dark`` (one averaged frame
    each) and ``/exchange/theta`` (degrees). Used to try ``bluesky-tomogan finetune``.
    ``width`` > 1: a sample that many times the field of view across, of which the detector
    sees the middle ``size`` columns (local tomography, as ``simulate --beyond-view`` makes them).

    Returns
    -------
    path : Path
        The file.
    clean_line_integrals : numpy.ndarray
        ``(n_angles, size, size)`` noise-free line integrals, the reference a real scan lacks.
    """
    if not 1.0 <= width <= 4.0:
        raise ValueError(f"width is the sample's width in fields of view, 1 to 4; got {width}")
    rng = np.random.default_rng(seed)
    vol = scale_to_max_attenuation(_wider_phantom(family, size, width, seed), max_attenuation)
    angles = angles_deg(n_angles)
    scan = simulate_scan(vol, angles, DetectorModel(photons=photons), rng, columns=size)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(path, "w") as f:
            counts = np.clip(np.rint(scan.frames), 0, 65535).astype(np.uint16)
            f.create_dataset("exchange/data", data=counts, chunks=(1, *counts.shape[1:]))
            f.create_dataset("exchange/data_white", data=scan.flat[None])
            f.create_dataset("exchange/data_dark", data=scan.dark[None])
            f.create_dataset("exchange/theta", data=angles)
            f.attrs["simulated"] = json.dumps({"family": family, "size": size, "photons": photons, "seed": seed})
    except OSError as exc:
        raise OutputPathError(f"cannot write scan to {path}: {exc}") from exc
    return path, scan.sinogram_clean
