"""Read a user's scan to fine-tune on: an HDF5 file (Data Exchange, NeXus or plain keys), a Zeiss Xradia
``.txrm``, frames stored alone (a ``.npy`` stack, a multi-page TIFF or a directory of TIFF files, with their
angles, flats and darks in files of their own) or a run stored in Tiled.

Everything a fine-tune needs is checked here, before any reconstruction or training:
the projections exist and are a finite 3-D stack (events of several exposures each are
unstacked, one projection per exposure at the event's angle), the angles match them,
and darks and flats (optional) have the frames' shape.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from ..errors import ScanError, TomoGANError
from ..frame_files import (
    ANGLE_KEYS,
    FLAT_KEYS,
    NPY,
    PROJECTION_KEYS,
    TIFF,
    first_dataset,
    hdf5_datasets,
    is_file_pattern,
    open_frames,
    read_angles,
)
from ..frame_roles import DARK, FLAT, FrameRoles, scan_role
from ..masked import fill_masked, missing_pixels
from ..nexus import IMAGE_KEY, NexusScan, find_nexus_scan, missing_frame_files
from ..reconstruction import angles_in_degrees, degrees_per_unit
from ..storage import StoredFrames, rows_axis
from ..xradia import XradiaFile, is_xradia

__all__ = ["Scan", "RowChoice", "read_scan", "read_scan_frames", "read_scan_hdf5", "read_scan_tiled",
           "read_scan_xradia"]

log = logging.getLogger(__name__)

#: Where darks and angles are looked for (projections and flats: ``frame_files.PROJECTION_KEYS`` and
#: ``FLAT_KEYS``, which ``denoise`` reads too), first match wins: the APS Data Exchange layout
#: (``/exchange/...``, read by tomopy and dxchange), then plain names.
DARK_KEYS = ("exchange/data_dark", "darks", "dark", "data_dark")

#: Given the stored projections' ``(frames, rows, columns)``, the detector rows to read (``None``: all).
RowChoice = Callable[[tuple[int, int, int]], "slice | None"]


@dataclass
class Scan:
    """Projections of one scan, sorted by angle, with what flat-field correction needs.

    Attributes
    ----------
    projections : numpy.ndarray
        ``(n_angles, rows, columns)`` raw detector frames (float32).
    angles : numpy.ndarray
        Rotation angles, degrees, ascending.
    flats, darks : numpy.ndarray or None
        ``(rows, columns)`` averages of the open-beam and dark frames.
    source : str
        Where the scan came from (recorded in the model card).
    rows : (int, int) or None
        The detector rows read, ``[first, stop)``, where not all of them were.
    """

    projections: np.ndarray
    angles: np.ndarray
    flats: np.ndarray | None
    darks: np.ndarray | None
    source: str
    rows: tuple[int, int] | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        n, z, x = self.projections.shape
        return int(n), int(z), int(x)


def _unmasked(frames: np.ndarray) -> np.ndarray:
    """float32 frames with pixels without data (a photon counter's masked pixels, NaN) filled from their
    nearest neighbours with data (:mod:`bluesky_tomogan.masked`): training pairs must not hold gap values."""
    mask = missing_pixels(frames) if frames.ndim >= 2 else None
    return np.asarray(frames, np.float32) if mask is None else fill_masked(frames, mask)


def _frames_stack(stack: Any) -> np.ndarray:
    """``(k, rows, columns)`` frames of a stored stack (:class:`~bluesky_tomogan.storage.StoredFrames`: events
    of several exposures each become one frame per exposure, in order; a grey camera's trailing channel axis is
    dropped); any other array as it is."""
    arr = np.asarray(stack)
    return StoredFrames(arr).read() if arr.ndim in (3, 4) else arr


def _stored_shape(stack: Any) -> tuple[int, int, int] | None:
    """``(frames, rows, columns)`` of a stored stack (an h5py dataset, a Tiled array) from its metadata,
    without reading it; ``None`` for one that is not a stack of frames (:func:`_assemble` names the problem)."""
    return StoredFrames(stack).shape if len(stack.shape) in (3, 4) else None


def _read(stack: Any, rows: slice | None) -> Any:
    """A stored stack (h5py dataset, Tiled array) read whole, or only detector rows ``rows`` of each frame."""
    if stack is None:
        return None
    if rows is None:
        return stack.read() if hasattr(stack, "read") else stack[()]
    index = [slice(None)] * len(stack.shape)
    index[rows_axis(tuple(stack.shape))] = rows
    return stack[tuple(index)]


def _mean_frame(stack: Any, shape: tuple[int, int], what: str, where: str) -> np.ndarray | None:
    if stack is None:
        return None
    arr = _unmasked(_frames_stack(stack))
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != shape or len(arr) == 0:
        raise ScanError(f"{where}: {what} have shape {arr.shape}, expected (k, {shape[0]}, {shape[1]})")
    return arr.mean(axis=0)


def _angles_in_degrees(angles: Any, n: int, where: str, per_unit: float | None = None) -> np.ndarray:
    """The angles in degrees: ``per_unit`` degrees per unit where their units are known, else radians where they
    span no more than a turn in radians."""
    if angles is None:
        log.warning("%s: no rotation angles stored; assuming %d angles evenly over [0, 180) degrees", where, n)
        return np.arange(n) * (180.0 / n)
    a = np.asarray(angles, float).ravel()
    if len(a) != n:
        raise ScanError(f"{where}: {len(a)} angles for {n} projections")
    if not np.isfinite(a).all():
        raise ScanError(f"{where}: the rotation angles hold NaN/inf")
    if per_unit is not None:
        return a * per_unit
    degrees = angles_in_degrees(a)
    if not np.array_equal(degrees, a):
        log.info("%s: angles span %.3f, taken as radians", where, float(a.max() - a.min()))
    return degrees


def _choose_rows(stack: Any, choose: RowChoice | None) -> slice | None:
    """The rows ``choose`` picks for the stored projections ``stack`` (before any frame is read), as
    ``slice(first, stop)`` within the detector; ``None`` for all."""
    shape = None if choose is None else _stored_shape(stack)
    picked = None if shape is None or choose is None else choose(shape)
    if picked is None or shape is None:
        return None
    first, stop, step = picked.indices(shape[1])
    if step != 1 or stop <= first:
        raise ScanError(f"rows {picked} pick no band of the detector's {shape[1]} rows")
    return slice(first, stop)


def _assemble(projections: Any, angles: Any, flats: Any, darks: Any, where: str, exposures: int = 1,
              rows: slice | None = None, per_unit: float | None = None) -> Scan:
    stored = np.asarray(projections)
    proj = _frames_stack(stored)
    if proj.ndim != 3:
        raise ScanError(f"{where}: projections must be a (n_angles, rows, columns) stack, got shape {proj.shape}")
    if stored.ndim == 4 and len(proj) != len(stored):
        exposures = len(proj) // len(stored)
    if exposures > 1 and angles is not None and np.size(angles) * exposures == len(proj):
        # several exposures per event, all at the event's angle: each is a projection of its own
        # (independent noise, as the live callback denoises them), so each keeps that angle
        angles = np.repeat(np.asarray(angles, float).ravel(), exposures)
    if not np.issubdtype(proj.dtype, np.number):
        raise ScanError(f"{where}: projections have non-numeric dtype {proj.dtype}")
    if proj.dtype.kind == "f" and not np.isfinite(proj).all():
        # NaN in the same pixels of every projection is the detector's mask (pixels without data), filled
        # below like a photon counter's gaps; NaN in some frames only, or inf, is a fault in those frames
        nan = np.isnan(proj)
        bad_pixels = ~np.isfinite(proj) & ~nan.all(axis=0)
        if bad_pixels.any():
            bad = np.unique(np.nonzero(bad_pixels)[0])[:5].tolist()
            raise ScanError(f"{where}: projections hold NaN/inf (first frames: {bad}); drop those frames first")
        if nan.all():
            raise ScanError(f"{where}: projections are NaN everywhere")
    proj = _unmasked(proj)
    shape = proj.shape[1:]
    a = _angles_in_degrees(angles, len(proj), where, per_unit)
    order = np.argsort(a, kind="stable")
    return Scan(proj[order], a[order], _mean_frame(flats, shape, "flats", where),
                _mean_frame(darks, shape, "darks", where), where,
                None if rows is None else (int(rows.start), int(rows.start) + shape[0]))


def read_scan_hdf5(path: str | Path, key: str | None = None, rows: RowChoice | None = None) -> Scan:
    """Read a scan from HDF5: Data Exchange, NeXus (NXtomo, :mod:`bluesky_tomogan.nexus`) or plain
    ``projections``/``angles``/``flats``/``darks``.

    Parameters
    ----------
    path : str or Path
        The file.
    key : str, optional
        Dataset of the projections (default: the first of :data:`PROJECTION_KEYS`, else the
        frames of the first NeXus NXdata group that holds a stack of them). Where a NeXus
        ``image_key`` of one value per frame is found, it says which frames are projections,
        flats and darks.
    rows : callable, optional
        Given the stored projections' ``(frames, rows, columns)``, the detector rows to read
        (a ``slice``, or ``None`` for all); only those are read, of flats and darks too.

    Raises
    ------
    ScanError
        Missing or unreadable file, no projections, inconsistent shapes or angles.
    """
    from ..hdf5_frames import open_for_reading

    p = Path(path).expanduser()
    with open_for_reading(p, ScanError, "scan") as f:
        def first(keys: tuple[str, ...]) -> Any:
            found = first_dataset(f, keys)
            return None if found is None else f[found]

        if key is not None and key not in f:
            raise ScanError(f"{p} has no dataset {key!r}")
        proj = f[key] if key is not None else first(PROJECTION_KEYS)
        if proj is not None and not hasattr(proj, "shape"):
            raise ScanError(f"{p}: {key!r} is a group, not a dataset of projections")
        nexus = find_nexus_scan(f, key) if key is not None or proj is None else None
        # frames named by --key are NeXus's only where an image_key says what each is: a Data Exchange
        # file's flats, darks and angles are in datasets of their own
        if nexus is not None and (proj is None or nexus.image_key is not None):
            return _nexus_scan(f, nexus, str(p), rows)
        if proj is None:
            missing = missing_frame_files(f)
            if missing:
                raise ScanError(f"{p}: its frames are in files that are not beside it ({'; '.join(missing)}): "
                                "copy the scan's directory whole")
            raise ScanError(f"{p} holds no projections: none of {', '.join(PROJECTION_KEYS)} and no NeXus NXdata "
                            f"group of frames (datasets found: {', '.join(hdf5_datasets(f)[:12]) or 'none'}); "
                            "name one with --key")
        picked = _choose_rows(proj, rows)
        return _assemble(_read(proj, picked), _read(first(ANGLE_KEYS), None), _read(first(FLAT_KEYS), picked),
                         _read(first(DARK_KEYS), picked), str(p), rows=picked)


def _nexus_scan(f: Any, nexus: NexusScan, where: str, rows: RowChoice | None) -> Scan:
    """The scan of a NeXus file: one stack of frames whose ``image_key`` says which are projections,
    flats and darks (:mod:`bluesky_tomogan.nexus`)."""
    stack = f[nexus.frames]
    picked = _choose_rows(stack, rows)
    frames = _read(stack, picked)
    angles = None if nexus.angles is None else np.asarray(f[nexus.angles][()], float)
    if nexus.image_key is None:
        return _assemble(frames, angles, None, None, where, rows=picked)
    kind = nexus.image_key
    if not (kind == IMAGE_KEY["projection"]).any():
        values, counts = np.unique(kind, return_counts=True)
        held = ", ".join(f"{int(c)} of {int(k)}" for k, c in zip(values, counts, strict=True))
        raise ScanError(f"{where}: the image_key of {nexus.frames} marks no frame as a projection (0); "
                        f"it holds {held}")

    def of(name: str) -> Any:
        chosen = kind == IMAGE_KEY[name]
        return frames[chosen] if chosen.any() else None

    return _assemble(of("projection"), None if angles is None else angles[kind == IMAGE_KEY["projection"]],
                     of("flat"), of("dark"), where, rows=picked)


def _image_field(stream: Any, field: str | None, where: str) -> str:
    # (events, rows, columns), or (events, exposures, rows, columns) for detectors taking several per event
    fields = [k for k in stream if len(getattr(stream[k], "shape", ())) in (3, 4)]
    if field is not None:
        if field not in stream:
            raise ScanError(f"{where}: no field {field!r} in the primary stream (image fields: {fields or 'none'})")
        return field
    if not fields:
        raise ScanError(f"{where}: the primary stream has no image field (a stack of 2-D frames)")
    if len(fields) > 1:
        raise ScanError(f"{where}: several image fields {fields}; name one with --field")
    return str(fields[0])


def read_scan_tiled(uri: str, uid: str, field: str | None = None, rows: RowChoice | None = None,
                    angle_field: str | None = None) -> Scan:
    """Read a scan from a run stored in Tiled (bluesky's TiledWriter layout).

    Projections are the run's ``primary`` stream image field, angles the column ``angle_field``
    names (a fly scan's encoder capture, ``panda-inenc-1-val``), else that of the plan's first
    dimension hint (``stage_theta`` for :func:`~bluesky_tomogan.plans.tomo_scan`) or of the start
    document's first ``motors`` entry, else the start document's ``angles``; flats and darks come
    from the run's dark and flat streams (``dark``, ``flat``, or any name
    :data:`~bluesky_tomogan.frame_roles.SCAN_ROLE_NAMES` lists), or from ``primary`` itself where its
    events say what each frame is (an ``image_key`` or ``frame_type`` field: :mod:`bluesky_tomogan.frame_roles`).
    ``rows`` as for :func:`read_scan_hdf5`: only those rows are fetched from the server.

    Raises
    ------
    ScanError
        Tiled unreachable, no such run, no primary stream or image field, an ``angle_field`` it does not have.
    """
    from ..storage import close_tiled, open_tiled

    where = f"run {uid} at {uri.split('?')[0]}"  # no API key in messages
    client = open_tiled(uri, ScanError, create=False)
    try:
        return _scan_of_run(client, uid, field, where, rows, angle_field)
    finally:
        close_tiled(client)


def _scan_of_run(client: Any, uid: str, field: str | None, where: str, rows: RowChoice | None = None,
                 angle_field: str | None = None) -> Scan:
    from ..storage import stored_run

    run = stored_run(client, uid, ScanError, where)
    if "primary" not in run:
        raise ScanError(f"{where}: the run has no primary stream (streams: {list(run)})")
    primary = run["primary"]
    name = _image_field(primary, field, where)
    start = dict(run.metadata.get("start", {}))
    angles, per_unit = None, None
    keys = primary.metadata.get("data_keys") or {}
    if angle_field is not None and angle_field not in primary:
        raise ScanError(f"{where}: the primary stream has no {angle_field!r} (its fields: {sorted(primary)})")
    try:
        dims = start.get("hints", {}).get("dimensions", [])
        motors = start.get("motors") or []
        axis = angle_field or (dims[0][0][0] if dims else None) or (motors[0] if motors else None)
        if axis is not None and axis in primary:
            angles = primary[axis].read()
            per_unit = degrees_per_unit((keys.get(axis) or {}).get("units"))  # an EPICS motor's EGU: deg, rad
    except (IndexError, TypeError):
        pass
    if angles is None and "angles" in start:
        angles = start["angles"]

    picked = _choose_rows(primary[name], rows)

    def stream_frames(role: str) -> Any:  # a stream of darks or flats, by any name plans give it (frame_roles)
        stream = next((s for s in run if scan_role(s) == role and name in run[s]), None)
        return None if stream is None else _read(run[stream][name], picked)

    # a key declared [N, rows, columns] holds N exposures per event; TiledWriter may store them as one
    # flat stack of frames (ophyd-async writes them one after the other)
    shape = [s for s in primary.metadata.get("data_keys", {}).get(name, {}).get("shape") or [] if s]
    exposures = int(shape[0]) if len(shape) == 3 and shape[-1] != 1 else 1
    frames, flats, darks = _read(primary[name], picked), stream_frames("flat"), stream_frames("dark")
    roles = FrameRoles({"name": "primary", "data_keys": keys})
    if roles.key is not None and roles.key.name in primary:  # darks and flats among the projections (NXtomo's way)
        frames, angles, flats, darks = _split_by_role(frames, angles, flats, darks, roles,
                                                      primary[roles.key.name].read(), where)
    return _assemble(frames, angles, flats, darks, where, exposures=exposures, rows=picked, per_unit=per_unit)


def _split_by_role(frames: Any, angles: Any, flats: Any, darks: Any, roles: FrameRoles, values: Any,
                   where: str) -> tuple[np.ndarray, Any, Any, Any]:
    """The projections, their angles, flats and darks of a stream whose events say what each frame is
    (``values``: its role field, one per event); the run's own dark and flat streams where the stream holds
    none. Invalid frames (NXtomo's ``image_key`` 3) are left out."""
    assert roles.key is not None
    key = roles.key.name
    of_event = roles.of_page({key: list(np.asarray(values))}, len(values))
    frames = np.asarray(frames)
    exposures = len(frames) // len(of_event) if len(of_event) and len(frames) % len(of_event) == 0 else 0
    if not exposures:
        raise ScanError(f"{where}: {len(of_event)} values of {key} for {len(frames)} frames")
    per_frame = [r for r in of_event for _ in range(exposures)]  # a flat stack of N exposures per event
    if all(r is not None for r in per_frame):
        held = ", ".join(f"{of_event.count(r)} {r}" for r in dict.fromkeys(of_event))
        raise ScanError(f"{where}: the primary stream's {key} marks no frame as a projection ({held})")
    if angles is not None and np.size(angles) == len(of_event):  # read with every event: the projections' own
        angles = np.asarray(angles, float).ravel()[[r is None for r in of_event]]

    def of(role: str | None, elsewhere: Any = None) -> Any:
        chosen = np.array([r == role for r in per_frame])
        return frames[chosen] if chosen.any() else elsewhere

    return of(None), angles, of(FLAT, flats), of(DARK, darks)


def read_scan_xradia(path: str | Path, rows: RowChoice | None = None) -> Scan:
    """Read a Zeiss Xradia ``.txrm`` scan (:mod:`bluesky_tomogan.xradia`): its images are the projections,
    ``ImageInfo/Angles`` their angles and its reference image, where it has one, the flat field; ``rows``
    as for :func:`read_scan_hdf5` (each image is read whole, then cut to them).

    Raises
    ------
    ScanError
        Missing or unreadable file, images missing or of another size than the file says.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise ScanError(f"scan file {p} does not exist")
    try:
        with XradiaFile(p) as xrm:
            picked = _choose_rows(SimpleNamespace(shape=xrm.shape), rows)  # from its shape, as of a dataset
            band = slice(None) if picked is None else picked
            projections = np.stack([xrm.image(i)[band] for i in range(xrm.shape[0])])
            flats = None if xrm.reference is None else xrm.reference[band]
            return _assemble(projections, xrm.angles, flats, None, str(p), rows=picked)
    except ScanError:
        raise
    except TomoGANError as exc:  # the file's own errors, as the scan's
        raise ScanError(str(exc)) from exc


def read_scan_frames(path: str | Path, angles: str | Path | None = None, flats: str | Path | None = None,
                     darks: str | Path | None = None, rows: RowChoice | None = None) -> Scan:
    """Read a scan stored as frames alone: a ``.npy`` stack, a multi-page TIFF, or TIFF files of one projection
    each, in the order of the numbers in their names (how many beamlines and area detector TIFF plugins store a
    scan): a directory that holds the projections only, or a pattern of their names (``scan/proj_*.tif``) where
    flats and darks lie beside them (``flats="scan/flat_*.tif"``).

    Parameters
    ----------
    path : str or Path
        The projections.
    angles : str or Path, optional
        Their rotation angles in degrees, one per projection in their order: a text file (one a line, or
        separated by spaces or commas) or a ``.npy``. Without it, ``n`` angles evenly over [0, 180) degrees,
        with a warning (as for an HDF5 file without angles).
    flats, darks : str or Path, optional
        Open-beam and dark frames, each a file, directory or pattern as ``path`` (averaged).
    rows : callable, optional
        As for :func:`read_scan_hdf5`.

    Raises
    ------
    ScanError
        Missing or unreadable files, frames that are not a stack of grey frames, angles that are not one per
        projection, flats or darks of another frame size.
    """
    p = Path(path).expanduser()
    if not p.exists() and not is_file_pattern(p):
        raise ScanError(f"scan file {p} does not exist")
    try:
        with open_frames(p) as source:
            picked = _choose_rows(SimpleNamespace(shape=source.shape), rows)
            band = slice(None) if picked is None else picked
            # a chunk at a time, each cut to the rows: a memory-mapped .npy is never read whole for a band
            step = 16
            projections = np.concatenate([source.read(i, min(i + step, source.shape[0]))[:, band]
                                          for i in range(0, source.shape[0], step)])
            stored_angles = source.angles
        degrees = read_angles(angles, len(projections)) if angles is not None else stored_angles
        flat, dark = (_frames_of(f, band) for f in (flats, darks))
    except ScanError:
        raise
    except TomoGANError as exc:  # the files' own errors, as the scan's
        raise ScanError(str(exc)) from exc
    return _assemble(projections, degrees, flat, dark, str(p), rows=picked,
                     per_unit=1.0 if degrees is not None else None)  # angles given in files are degrees


def _frames_of(path: str | Path | None, band: slice) -> np.ndarray | None:
    """The frames of a flats' or darks' file or directory (:func:`read_scan_frames`), cut to ``band``."""
    if path is None:
        return None
    with open_frames(Path(path).expanduser()) as source:
        return source.read(0, source.shape[0])[:, band]


def is_frame_file(source: str) -> bool:
    """Whether ``source`` is frames stored alone (:func:`read_scan_frames`): a ``.npy`` or TIFF file, a pattern
    of TIFF file names (``scan/proj_*.tif``), or a directory (that is not an embedded Tiled store)."""
    p = Path(source).expanduser()
    if p.is_dir():
        return not (p / "tiled").is_dir()
    return p.suffix.lower() in NPY + TIFF or is_file_pattern(p)


def read_scan(source: str, uid: str | None = None, field: str | None = None, key: str | None = None,
              rows: RowChoice | None = None, angle_field: str | None = None, *, angles: str | None = None,
              flats: str | None = None, darks: str | None = None) -> Scan:
    """A scan from an HDF5 path or a Zeiss Xradia file, from frames stored alone (a ``.npy``, TIFF, or a
    directory of TIFF files, with ``angles``, ``flats`` and ``darks`` files of their own: :func:`read_scan_frames`),
    or from a Tiled URI (``http://`` or ``https://``) or the directory of an embedded Tiled store (as the demo and
    the profile make) and a run ``uid`` (``angle_field``: the data key of its angles, :func:`read_scan_tiled`);
    ``rows`` picks the detector rows to read (:func:`read_scan_hdf5`)."""
    store = Path(source).expanduser().is_dir() and (Path(source).expanduser() / "tiled").is_dir()
    beside = {k: v for k, v in (("angles", angles), ("flats", flats), ("darks", darks)) if v is not None}
    if source.startswith(("http://", "https://")) or store or (uid is not None and Path(source).is_dir()):
        if not uid:
            raise ScanError(f"{source} is a Tiled {'store' if store else 'URI'}: name the run with its uid (--uid)")
        if beside:
            raise ScanError(f"{source}: {', '.join(beside)} files are for frames stored alone (.npy, TIFF); a "
                            "stored run's are found in it")
        return read_scan_tiled(source, uid, field, rows, angle_field)
    if angle_field is not None:
        raise ScanError(f"{source}: an angle field ({angle_field}) is for a run stored in Tiled; a file's angles "
                        "are found in it")
    if is_frame_file(source):
        if key is not None:
            raise ScanError(f"{source}: a dataset key ({key}) is for an HDF5 file")
        return read_scan_frames(source, angles, flats, darks, rows)
    if beside:
        raise ScanError(f"{source}: {', '.join(beside)} files are for frames stored alone (.npy, TIFF, a directory "
                        "of TIFF files); an HDF5 or Zeiss file's are found in it")
    if is_xradia(source):
        return read_scan_xradia(source, rows)
    return read_scan_hdf5(source, key, rows)
