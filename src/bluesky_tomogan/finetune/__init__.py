"""Self-supervised fine-tuning of a shipped model on the user's own scan (``bluesky-tomogan finetune``).

No clean data: :mod:`.pairs` makes input/target pairs with independent noise from the
scan itself (Noise2Inverse for the slice model, Neighbor2Neighbor for the projection
model), :func:`bluesky_tomogan.model.train.train` fine-tunes from the shipped weights
within a wall-clock budget, and :func:`bluesky_tomogan.export.pipeline.export_model`
writes every format and a model card that says how the model was made. Every check on
the scan runs before any reconstruction or training; an interrupted run resumes from
its checkpoint (``resume=True``) without rebuilding the pairs, and a run stopped before
its first checkpoint trains on the pairs it made.

Needs the ``export`` extra (torch, TensorFlow, NNCF); reading and pair-making need only
the core package.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import ScanError
from ..simulate.datasets import PairSet
from .pairs import HOLDOUT_DEFAULT, MIN_FRAMES, holdout_split, neighbour_pairs, noise2inverse_split
from .sources import Scan, read_scan

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "make_pairs", "Scan", "read_scan", "row_choice",
           "pairs_bytes", "available_memory", "export_reserve_s", "slice_row_seconds"]

log = logging.getLogger(__name__)

Domain = Literal["slice", "projection"]
#: Seconds kept back from the budget for each export format and the quality measurement that
#: follows. A 256^3 scan's export took about 250-290 s in all on 2 cores (Intel Xeon, one core
#: busy with another job; docs/models.md), so the three formats keep 300 s. The export measures
#: and calibrates on at most 256x256 of each frame (:data:`~bluesky_tomogan.export.pipeline.MEASURE_EDGE`),
#: so this holds for any frame size: the three formats took 161, 185, 174 and 201 s for frames of
#: 256, 512, 1024 and 2048 pixels a side (AMD EPYC Zen 4, 2 cores, session 50), where frames of
#: 512 had taken 369 s before, and a reserve that grew with their area refused the default
#: 15-minute fine-tune of slices more than 438 pixels wide.
EXPORT_RESERVE_S = {"onnx": 30.0, "tflite": 150.0, "openvino": 120.0}
PAIRS_FILE = "pairs.h5"
#: int8 calibration samples: fewer than a full export's 200, because TensorFlow's calibrator runs
#: reference kernels (minutes per hundred 256x256 tiles on 2 cores) and one scan varies less.
CALIBRATION_SAMPLES = 64


@dataclass
class FinetuneConfig:
    """Settings of one fine-tuning run (all stored in the model card).

    Parameters
    ----------
    source : str
        HDF5 file of projections, a Zeiss Xradia file, frames stored alone (a ``.npy`` stack, a multi-page
        TIFF, a directory of TIFF files or a pattern of their names), or a Tiled URI (then ``uid`` names the
        run).
    out_dir : str
        Where pairs, checkpoint, weights, exports and the card go.
    domain : {"slice", "projection"}
        Which model to fine-tune: ``slice`` (Noise2Inverse) or ``projection`` (Neighbor2Neighbor).
    uid, field, key : str, optional
        Run uid and image field (Tiled), or dataset key (HDF5) of the projections.
    angle_field : str, optional
        The data key of the projections' angles in a run stored in Tiled, where it is not the plan's
        rotation axis (a fly scan's encoder capture; :func:`~bluesky_tomogan.finetune.sources.read_scan_tiled`).
    model : str, optional
        Starting weights: a shipped model's name or a ``.pt`` (default ``tomogan-<domain>``).
    minutes : float
        Wall-clock budget of the whole run, pairs and export included.
    splits : int
        Noise2Inverse angle subsets.
    threads : int
        torch threads (0 = torch's default).
    lr : float
        Learning rate (small: the starting weights are already good).
    formats : tuple of str
        Export formats.
    seed : int
        Seed of the pair sampling and training.
    angles, flats, darks : str, optional
        For frames stored alone: a file of their rotation angles in degrees (text or ``.npy``, one per
        projection; default: evenly over [0, 180) degrees, with a warning), and files, directories or quoted
        patterns of TIFF names (``scan/flat_*.tif``) of open-beam and dark frames
        (:func:`~bluesky_tomogan.finetune.sources.read_scan_frames`).
    rows : (int, int), optional
        Detector rows ``[first, stop)`` to fine-tune on (slices of a slab for the slice model, a
        band of each projection for the projection model). By default all of them if the pairs
        fit in memory, else the centred slab that does (logged, and recorded in the card); rows
        that do not fit are refused before any work (:func:`pairs_bytes`).
    """

    source: str
    out_dir: str
    domain: Domain = "slice"
    uid: str | None = None
    field: str | None = None
    key: str | None = None
    angle_field: str | None = None
    model: str | None = None
    minutes: float = 15.0
    splits: int = 4
    threads: int = 0
    lr: float = 2e-4
    formats: tuple[str, ...] = ("onnx", "tflite", "openvino")
    seed: int = 0
    rows: tuple[int, int] | None = None
    angles: str | None = None
    flats: str | None = None
    darks: str | None = None

    def __post_init__(self) -> None:
        if self.rows is not None and not 0 <= self.rows[0] < self.rows[1]:
            raise ScanError(f"rows must be first:stop with 0 <= first < stop, got {self.rows[0]}:{self.rows[1]}")
        if self.domain not in ("slice", "projection"):
            raise ScanError(f"domain must be 'slice' or 'projection', got {self.domain!r}")
        if not self.minutes > 0:
            raise ScanError(f"the time budget must be > 0 minutes, got {self.minutes}")


@dataclass
class FinetuneResult:
    """What a fine-tune produced."""

    card: Path
    pairs: Path
    stopped: str
    wall_time_s: float


def make_pairs(scan: Scan, domain: Domain, splits: int = 4, seed: int = 0, progress: bool = True
               ) -> tuple[PairSet, PairSet, dict[str, Any]]:
    """Training and held-out pairs for ``domain`` from ``scan`` (see :mod:`.pairs`)."""
    if domain == "slice":  # laid out split from the start: no copy of the largest arrays of a fine-tune
        train, test, info = noise2inverse_split(scan, splits, HOLDOUT_DEFAULT, progress=progress)
        method = "noise2inverse"
    else:
        pairs, info = neighbour_pairs(scan, seed)
        train, test = holdout_split(pairs, HOLDOUT_DEFAULT)
        method = "neighbor2neighbor"
    rows = {} if scan.rows is None else {"detector_rows": list(scan.rows)}
    return train, test, {"method": method, **info, "held_out_fraction": HOLDOUT_DEFAULT, **rows}


#: The module each export format needs, and the extra that installs it.
_EXPORT_TOOLS = {"onnx": ("onnx", "train"), "tflite": ("tensorflow", "export"), "openvino": ("nncf", "export")}


def _check_export_tools(formats: tuple[str, ...]) -> None:
    """Raise ImportError naming the extra to install for a requested export format, before any work."""
    import importlib.util

    unknown = sorted(set(formats) - set(_EXPORT_TOOLS))
    if unknown:
        raise ScanError(f"unknown export formats {unknown}; choose from {sorted(_EXPORT_TOOLS)}")
    for fmt in formats:
        module, extra = _EXPORT_TOOLS[fmt]
        if importlib.util.find_spec(module) is None:
            raise ImportError(f"the {fmt} export needs {module} (pip install 'bluesky-tomogan[{extra}]'), "
                              f"or leave {fmt} out with --format")


#: Fewest seconds of training a budget must leave after the pairs and the export's reserve.
MIN_TRAINING_S = 20.0
#: Share of the memory available when a fine-tune starts that its pairs may take.
MEMORY_SHARE = 0.8
#: Share of the budget left after the export's reserve that making a slice scan's pairs may take
#: when the rows are not chosen (``--rows``): the rest trains. Each row gives slices of columns x
#: columns pixels, and training draws 96x96 patches of them, so a band of a large detector's rows
#: is data enough; all 2048 rows of a 2048-wide detector with 1500 angles would take hours here.
PAIRS_TIME_SHARE = 0.4


def pairs_bytes(domain: Domain, shape: tuple[int, int, int], splits: int = 4) -> int:
    """Peak memory of making a fine-tune's pairs from a scan of ``(frames, rows, columns)``, in bytes.

    Slices: ``splits`` sub-reconstructions of every row (columns x columns each, float32), as
    many inputs, and their sum; projections: the frames, their 2x2 cells, the cells' draws and
    the half-resolution pairs. A scan of 180 x 256 x 512 with 4 splits: 2.56 GB by this rule,
    2.60 GB measured (``make_pairs``, ``/usr/bin/time -v``, docs/models.md). Training reads
    the pairs whole, which takes less.
    """
    frames, rows, columns = shape
    scan = 6 * frames * rows * columns  # float32 frames and a 16-bit copy as read
    if domain == "slice":
        return scan + (8 * splits + 4) * rows * columns * columns
    return scan + 12 * frames * rows * columns


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def slice_row_seconds(shape: tuple[int, int, int], splits: int = 4, threads: int = 2) -> float:
    """Seconds making one detector row's Noise2Inverse pairs takes here, for a scan of
    ``(frames, rows, columns)``: its ``splits`` sub-reconstructions, timed on a random sinogram of
    that size (the second of two runs: the first pays for setting up), ``threads`` rows at a time."""
    from ..reconstruction import reconstruct

    frames, _, columns = shape
    angles = np.linspace(0.0, 180.0, frames, endpoint=False)[::splits]
    sinogram = np.random.default_rng(0).uniform(0.5, 1.0, (len(angles), columns)).astype(np.float32)
    took = 0.0
    for _ in range(2):
        t0 = time.perf_counter()
        reconstruct(sinogram, angles, columns / 2)
        took = time.perf_counter() - t0
    return splits * took / max(1, threads)


def row_choice(config: FinetuneConfig, available: int | None = None,
               row_seconds: Callable[[tuple[int, int, int]], float] | None = None
               ) -> Callable[[tuple[int, int, int]], slice | None]:
    """The detector rows to read from a scan of ``(frames, rows, columns)``: ``config.rows``, checked
    against the scan and the memory, or all rows, or the centred slab whose pairs fit in memory
    and, for slices, whose pairs take at most :data:`PAIRS_TIME_SHARE` of the budget left after
    the export (``row_seconds``: the seconds of one row's pairs, by default
    :func:`slice_row_seconds`). A budget that the export alone would use up
    (:func:`export_reserve_s`) is refused here too, before the scan is read.

    A 2048-wide detector's pairs (1500 angles) need 350 GB for all its rows; reading them would end in the
    kernel's out-of-memory kill, not in an error.
    """
    def choose(shape: tuple[int, int, int]) -> slice | None:
        # a budget the export alone would use up: refused before the pairs are made, not after
        reserve = export_reserve_s(config.formats)
        if reserve + MIN_TRAINING_S > config.minutes * 60:
            raise ScanError(f"{config.source}: exporting {', '.join(config.formats)} takes about {reserve:.0f} s, "
                            f"which leaves a budget of {config.minutes:g} min too little to train: raise --minutes "
                            "or export fewer formats")
        return band(shape)

    def in_time(shape: tuple[int, int, int]) -> tuple[int, str] | None:
        """The most rows whose slice pairs take their share of the budget, and why; None: no limit."""
        if config.rows is not None or config.domain != "slice":
            return None
        seconds = (row_seconds or (lambda sh: slice_row_seconds(sh, config.splits)))(shape)
        share = PAIRS_TIME_SHARE * (config.minutes * 60 - export_reserve_s(config.formats))
        keep = max(int(share // seconds), MIN_FRAMES) if seconds > 0 else shape[1]
        if keep >= shape[1]:
            return None
        return (keep,
                f"the pairs of all {shape[1]} detector rows would take about {shape[1] * seconds:.0f} s here, "
                f"{share:.0f} s of the {config.minutes:g}-minute budget are theirs")

    def band(shape: tuple[int, int, int]) -> slice | None:
        frames, rows, columns = shape
        if config.rows is not None and config.rows[1] > rows:
            raise ScanError(f"{config.source}: rows {config.rows[0]}:{config.rows[1]} lie outside the detector's "
                            f"{rows} rows")
        free = available_memory() if available is None else available
        timed = in_time(shape)
        if free is None:  # not Linux: no memory check
            if config.rows is not None:
                return slice(*config.rows)
            return None if timed is None else centred(rows, *timed)
        per_row = pairs_bytes(config.domain, (frames, 1, columns), config.splits)
        fit = int(MEMORY_SHARE * free // per_row)
        gb = 1e-9
        if config.rows is not None:
            first, stop = config.rows
            if stop - first > fit:
                raise ScanError(f"{config.source}: fine-tuning on rows {first}:{stop} needs about "
                                f"{(stop - first) * per_row * gb:.1f} GB, {free * gb:.1f} GB are available: "
                                f"give at most {fit} rows (--rows)")
            return slice(first, stop)
        if rows <= fit and timed is None:
            return None
        least = MIN_FRAMES if config.domain == "slice" else 64  # slices to split; projections' neighbour pairs
        if fit < least:
            raise ScanError(f"{config.source}: frames of {rows}x{columns} are too large to fine-tune on here: "
                            f"{least} rows need about {least * per_row * gb:.1f} GB, {free * gb:.1f} GB are available")
        if timed is not None and timed[0] <= fit:
            return centred(rows, *timed)
        return centred(rows, fit, f"all {rows} detector rows would need about {rows * per_row * gb:.1f} GB for the "
                                  f"pairs, {free * gb:.1f} GB are available")

    def centred(rows: int, keep: int, why: str) -> slice:
        first = (rows - keep) // 2
        log.warning("%s: %s: fine-tuning on the centred rows %d:%d (choose others with --rows)", config.source, why,
                    first, first + keep)
        return slice(first, first + keep)

    return choose


def _pairs_identity(config: FinetuneConfig) -> dict[str, Any]:
    """What makes a fine-tune's pairs: the scan (a URI without its query, where an API key may be), rows and split."""
    identity = {"source": config.source.split("?")[0], "uid": config.uid, "field": config.field, "key": config.key,
                "rows": list(config.rows) if config.rows is not None else None, "domain": config.domain,
                "splits": config.splits, "seed": config.seed}
    # files beside frames stored alone, where given (pairs made without them keep the identity they had)
    identity.update({k: v for k, v in (("angles", config.angles), ("flats", config.flats), ("darks", config.darks))
                     if v is not None})
    return identity


def _check_pairs_made_for(made_for: dict[str, Any] | None, config: FinetuneConfig, pairs_path: Path) -> None:
    """Raise :class:`ScanError` if pairs made for ``made_for`` (their recipe's) are of another scan or settings."""
    wanted = _pairs_identity(config)
    if made_for is not None and made_for != wanted:
        differ = ", ".join(f"{k} {made_for.get(k)!r} (asked: {v!r})" for k, v in wanted.items() if made_for.get(k) != v)
        raise ScanError(f"{pairs_path} holds pairs made with {differ}: give another --out, or leave out --resume "
                        "to make them again")


def export_reserve_s(formats: Sequence[str]) -> float:
    """Seconds to keep back for exporting ``formats`` and measuring them (:data:`EXPORT_RESERVE_S`)."""
    return sum(EXPORT_RESERVE_S[f] for f in formats)


def _patch_for(frame_shape: tuple[int, ...], multiple: int) -> int:
    edge = min(96, min(frame_shape))
    return edge - edge % multiple


def finetune(config: FinetuneConfig, resume: bool = False, progress: bool = True) -> FinetuneResult:
    """Fine-tune a shipped model on one scan, without clean data; see the module docstring.

    Parameters
    ----------
    config : FinetuneConfig
        The scan, the model, the budget and the export formats.
    resume : bool
        Continue the run in ``config.out_dir``: from its checkpoint, with the pairs it made
        (without a checkpoint, training starts afresh on those pairs).
    progress : bool
        Show progress bars.

    Raises
    ------
    ScanError
        The scan is missing, unreadable, without projections, has too few angles, or is too
        small to split; raised before any training. With ``resume``, pairs in ``out_dir``
        made from another scan or with other settings. A budget that leaves too little time
        to train after making the pairs.
    OutputPathError
        ``out_dir`` cannot be written.
    """
    from ..export.pipeline import export_model
    from ..hdf5_frames import open_for_reading
    from ..model.network import GeneratorConfig
    from ..model.train import TrainConfig, _check_out_dir, resolve_weights, train
    from ..modelcard import read_card, sha256_of, write_card
    from ..simulate.datasets import write_dataset

    t0 = time.perf_counter()
    _check_export_tools(config.formats)  # not after ten minutes of training
    out = Path(config.out_dir).expanduser()
    _check_out_dir(out)
    base = resolve_weights(config.model or f"tomogan-{config.domain}")
    name = f"{base.stem}-finetuned"
    pairs_path = out / PAIRS_FILE
    checkpoint = out / "checkpoint.pt"
    reused = resume and pairs_path.exists()
    if reused:
        # the pairs of a large scan take minutes: a run stopped before its first checkpoint (a budget
        # too small to train, an interruption) keeps them for the next (checked below, with their recipe)
        log.info("resuming %s with the pairs of %s, %s", name, pairs_path,
                 f"from {checkpoint}" if checkpoint.exists() else "training from the start (no checkpoint yet)")
    else:
        scan = read_scan(config.source, config.uid, config.field, config.key, row_choice(config),
                         config.angle_field, angles=config.angles, flats=config.flats, darks=config.darks)
        train_pairs, test_pairs, info = make_pairs(scan, config.domain, config.splits, config.seed, progress)
        partial = pairs_path.with_name(pairs_path.name + ".partial")  # an interrupted write is never taken for pairs
        write_dataset(partial, train_pairs, test_pairs, {"self_supervised": info, "source": scan.source,
                                                         "uid": config.uid, "scan_shape": list(scan.shape),
                                                         "made_for": _pairs_identity(config)})
        partial.replace(pairs_path)
        del scan, train_pairs, test_pairs  # training reads the pairs file: these would stay in memory throughout
    import torch

    arch = GeneratorConfig.from_dict(torch.load(base, map_location="cpu", weights_only=True).get("arch", {}))
    # the recipe and the frame shape only: train() reads the pairs themselves
    with open_for_reading(pairs_path, ScanError, "pairs") as f:
        try:
            recipe = json.loads(f.attrs["recipe"])
            frame_shape = f["train_ns"].shape[1:]
            patch = _patch_for(frame_shape, arch.size_multiple)
        except (KeyError, ValueError) as exc:
            raise ScanError(f"{pairs_path} is not a pairs file of bluesky-tomogan finetune ({exc}); "
                            "remove it to start again") from exc
    if reused:
        _check_pairs_made_for(recipe.get("made_for"), config, pairs_path)
    spent = time.perf_counter() - t0
    reserve = export_reserve_s(config.formats)
    budget = config.minutes * 60 - spent - reserve
    if budget < MIN_TRAINING_S:
        raise ScanError(f"a budget of {config.minutes:g} min leaves {budget:.0f} s to train after making the pairs "
                        f"({spent:.0f} s) and keeping {reserve:.0f} s for export; raise --minutes (with --resume "
                        f"the pairs in {pairs_path} are used again)")
    train_config = TrainConfig(
        data=str(pairs_path), out_dir=str(out), name=name, domain=config.domain, arch=arch, patch=patch,
        batch=8, steps_per_epoch=40, max_epochs=1000, patience=8, min_delta=0.005, time_budget_s=budget,
        lr=config.lr, adv_weight=0.0, feat_weight=0.0, threads=config.threads, val_frames=24, seed=config.seed,
        init_weights=str(base), select_by="psnr",
    )
    result = train(train_config, resume=resume, progress=progress)
    card = read_card(result.card)
    card["finetune"] = {
        # a Tiled URI's query may carry its API key: never into a card that is shared with the weights
        "config": asdict(config) | {"formats": list(config.formats), "source": config.source.split("?")[0]},
        "base_weights": {"path": base.name, "sha256": sha256_of(base)}, **recipe,
        "clean_data_used": False,
        "metric_note": "val_* metrics compare with an independent noisy copy of the held-out slab, "
                       "not with clean frames (there are none); they rank epochs, they are not a quality",
    }
    write_card(result.card, card)
    card_path = export_model(out, out, pairs_path, config.formats, n_calibration=CALIBRATION_SAMPLES)
    wall = time.perf_counter() - t0
    log.info("fine-tuned %s in %.0f s: %s", name, wall, card_path)
    return FinetuneResult(card_path, pairs_path, result.stopped, wall)
