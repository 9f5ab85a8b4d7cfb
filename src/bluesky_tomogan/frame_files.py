"""Frames in and out of .npy, HDF5 and TIFF files, a chunk at a time (``bluesky-tomogan denoise``).

A beamline scan is often larger than memory (1500 projections of 2048 x 2048 are
12 GB as uint16, 24 GB denoised in float32), so a file is never read or written
whole: :func:`denoise_file` reads a chunk of frames plus the neighbours that its
first and last frames need as context, denoises it, and appends the result, so each
frame gets the same context as if the whole stack had been denoised at once: its
neighbours in the file, but (as the live callback does) not those more than
:data:`~bluesky_tomogan.frames.NEIGHBOUR_DEGREES` away in angle where the file stores
each frame's angle (a golden-angle or interlaced scan stored in the order taken), nor
those of another ``image_key`` in a NeXus stack of darks, flats and projections.

Inputs: ``.npy`` (memory-mapped), HDF5 (``key``, else Data Exchange's
``exchange/data`` or another usual name for projections, else the file's only
dataset), TIFF (one frame per page, or one page holding the stack), a directory of TIFF
files, one frame each, in the order of the numbers in their names, and a Zeiss Xradia
``.txrm``/``.xrm`` file (:mod:`~bluesky_tomogan.xradia`). Outputs:
``.npy``, HDF5 (dataset ``denoised`` with the provenance as attributes), TIFF
(one page per frame, the provenance as the first page's description) and a new or empty
directory: one TIFF file per frame, named as the input directory's files (else
``frame_00000.tif`` ...), each with the provenance as its description.

HDF5 to HDF5 keeps the input's layout: the output is a copy of the input file with the
frames denoised where they were (``exchange/data`` of a Data Exchange file, beside its
flats, darks and angles, so a reconstruction reads it as it reads the scan), and
``denoised`` a link to them; ``frames_only`` writes just ``denoised``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import TomoGANError
from .frames import has_channel_axis, looks_like_colour, without_channel_axis
from .nexus import find_nexus_scan, missing_frame_files, nexus_frames
from .reconstruction import angles_in_degrees
from .xradia import XRADIA, XradiaFile, is_xradia

log = logging.getLogger(__name__)

__all__ = ["NPY", "HDF5", "TIFF", "PROJECTION_KEYS", "FLAT_KEYS", "ANGLE_KEYS", "DENOISED_KEY", "FrameSource",
           "open_frames", "read_angles", "check_output", "denoise_file", "first_dataset", "hdf5_datasets",
           "is_file_pattern", "pattern_files"]

NPY, HDF5, TIFF = (".npy",), (".h5", ".hdf5", ".hdf", ".nxs"), (".tif", ".tiff")
#: Where the projections are in an HDF5 file when no key is given: Data Exchange first, as APS writes it
#: (``bluesky-tomogan finetune`` looks in the same places).
PROJECTION_KEYS = ("exchange/data", "projections", "data", "proj")
#: Where a file of projections keeps its flat fields (Data Exchange's first).
FLAT_KEYS = ("exchange/data_white", "flats", "flat", "data_white")
#: Where a file of projections keeps their rotation angles, one per frame (Data Exchange's first; a NeXus
#: file's are found by :func:`~bluesky_tomogan.nexus.find_nexus_scan`).
ANGLE_KEYS = ("exchange/theta", "angles", "theta")
#: Frames denoised per chunk (plus the neighbours its edge frames need, read but not denoised):
#: 16 float32 frames of 2048 x 2048 are 256 MB.
CHUNK = 16
NPY_MAGIC = b"\x93NUMPY"


class _Denoiser(Protocol):
    depth: int

    def denoise(self, frames: np.ndarray, *, out_dtype: Any = ..., only: slice | None = ..., angles: Any = ...,
                groups: Any = ...) -> np.ndarray: ...

    def provenance(self) -> dict[str, Any]: ...


@dataclass
class FrameSource:
    """Frames of one file: ``shape`` ``(N, H, W)`` (``single``: the file holds one ``(H, W)`` frame),
    ``dtype``, and ``read(start, stop)``; ``names``: a directory's file names, frame by frame;
    ``origin``: the file or directory read (an output there is refused); ``hdf5_key``: the
    dataset read, in an HDF5 file; ``projections``: see below."""

    shape: tuple[int, ...]
    dtype: np.dtype
    read: Callable[[int, int], np.ndarray]
    single: bool = False
    names: tuple[str, ...] | None = None
    origin: Path | None = None
    hdf5_key: str | None = None
    #: The file says these are a detector's frames, not slices: flat fields beside them, or an ``image_key``.
    projections: bool = False
    #: Arrays of a file that is not HDF5, for an HDF5 output in the Data Exchange layout beside the denoised
    #: frames (``exchange/data``): its angles (``exchange/theta``, degrees) and flat field (``exchange/data_white``).
    beside: dict[str, np.ndarray] | None = None
    #: Each frame's rotation angle in degrees, where the file stores one per frame (Data Exchange's
    #: ``exchange/theta``, a NeXus scan's, a Zeiss scan's): a neighbour more than
    #: :data:`~bluesky_tomogan.frames.NEIGHBOUR_DEGREES` away is no context (a golden-angle scan in the order taken).
    angles: np.ndarray | None = None
    #: Each frame's NXtomo ``image_key`` (projections, flats, darks in one stack): a neighbour of another kind is
    #: no context.
    groups: np.ndarray | None = None

    def __post_init__(self) -> None:
        # one a frame, or none: a count that is not would be the wrong frames' angles, or ignored without a word
        for what in ("angles", "groups"):
            given = getattr(self, what)
            if given is not None and np.shape(given) != (self.shape[0],):
                raise ValueError(f"FrameSource {what} must hold one value per frame ({self.shape[0]}), "
                                 f"got shape {np.shape(given)}")


def _source(array: Any) -> FrameSource:
    """A source over an array-like that slices lazily (a memory map, an HDF5 dataset)."""
    if looks_like_colour(array.shape):
        raise TomoGANError(f"frames of shape {tuple(array.shape)} look like one colour image (H, W, "
                           f"{array.shape[-1]}); only grey frames are denoised: convert it to grey first")
    if has_channel_axis(array.shape):  # one grey frame (H, W, 1)
        return FrameSource((1, *array.shape[:2]), np.dtype(array.dtype),
                           lambda a, b: np.asarray(array)[None, ..., 0], True)
    if array.ndim not in (2, 3) or 0 in array.shape:
        raise TomoGANError(f"frames must be (H, W) or (N, H, W) and not empty, got shape {tuple(array.shape)}")
    if array.ndim == 2:
        return FrameSource((1, *array.shape), np.dtype(array.dtype), lambda a, b: np.asarray(array)[None], True)
    return FrameSource(tuple(array.shape), np.dtype(array.dtype), lambda a, b: np.asarray(array[a:b]))


@contextlib.contextmanager
def open_frames(path: str | os.PathLike[str], key: str | None = None) -> Iterator[FrameSource]:
    """The frames of a .npy, HDF5 or TIFF file, or of a directory of TIFF files, read a chunk at a time.

    Raises
    ------
    TomoGANError
        A missing file, another kind of file, a damaged one, no such dataset, or frames
        that are not ``(H, W)`` or ``(N, H, W)``.
    """
    p = Path(path)
    if p.is_dir():
        yield dataclasses.replace(_directory(p), origin=p)
        return
    if is_file_pattern(path):
        yield dataclasses.replace(_tiff_stack(pattern_files(path), f"pattern {path}"), origin=p)
        return
    if not p.is_file():
        raise TomoGANError(f"input file {p} does not exist")
    with contextlib.ExitStack() as stack:
        try:
            source = _open(p, key, stack)
        except (OSError, ValueError) as exc:  # a damaged file: say which, not a traceback
            raise TomoGANError(f"cannot read frames from {p}: {exc}") from exc
        yield dataclasses.replace(source, origin=p)


def _open(p: Path, key: str | None, stack: contextlib.ExitStack) -> FrameSource:
    import h5py

    suffix = p.suffix.lower()
    if suffix in NPY:
        with p.open("rb") as head:  # else NumPy calls any other file "pickled (object) data"
            if head.read(len(NPY_MAGIC)) != NPY_MAGIC:
                raise TomoGANError(f"{p} is not a NumPy .npy file (it lacks the .npy header); "
                                   f"give frames as {', '.join(NPY + HDF5 + TIFF + XRADIA)}")
        return _source(np.load(p, mmap_mode="r", allow_pickle=False))
    if suffix in TIFF:
        import tifffile

        tif = stack.enter_context(tifffile.TiffFile(p))
        if len(tif.pages) == 1:
            return _source(tif.asarray())
        first = tif.pages[0]  # one frame per page: a chunk reads only its pages
        shape = tuple(first.shape)
        if looks_like_colour(shape):
            raise TomoGANError(f"{p} holds colour pages ({shape}); only grey frames are denoised: "
                               f"convert them to grey first")
        if len(shape) != 2 or any(tuple(page.shape) != shape for page in tif.pages):
            raise TomoGANError(f"{p} is not a stack of frames: its pages are not all 2-D of one shape "
                               f"(the first is {shape})")
        return FrameSource((len(tif.pages), *shape), np.dtype(first.dtype),
                           lambda a, b: np.asarray(tif.asarray(key=range(a, b))).reshape(b - a, *shape))
    if is_xradia(p):  # a Zeiss TXM scan: every image a projection, read one at a time
        xrm = stack.enter_context(XradiaFile(p))
        beside = {"exchange/theta": xrm.angles, "exchange/data_white": None if xrm.reference is None else
                  xrm.reference[None]}
        return FrameSource(xrm.shape, xrm.dtype, xrm.read, single=xrm.shape[0] == 1 and suffix == ".xrm",
                           projections=True, beside={k: v for k, v in beside.items() if v is not None},
                           angles=xrm.angles if xrm.angles is not None and len(xrm.angles) == xrm.shape[0] else None)
    if h5py.is_hdf5(p):
        f = stack.enter_context(h5py.File(p, "r"))
        frames_key, keyed = _frames_key(f, p, key)
        source = _source(f[frames_key])
        try:
            angles, groups = _frame_order(f, frames_key, source.shape[0])
        except Exception as exc:  # what serves the context only: never a reason not to denoise the frames
            log.warning("%s: the frames' angles and image_key not read (%s: %s); neighbours by order", p,
                        type(exc).__name__, exc)
            angles, groups = None, None
        # the path in this file: a dataset reached through an external link (NeXus) has its own file's name
        return dataclasses.replace(source, hdf5_key="/" + frames_key.lstrip("/"),
                                   projections=keyed or first_dataset(f, FLAT_KEYS) is not None,
                                   angles=angles, groups=groups)
    raise TomoGANError(f"{p} is not a .npy, TIFF, HDF5 or Xradia file (its suffix {suffix!r} and its contents "
                       f"say neither): give frames as {', '.join(NPY + HDF5 + TIFF + XRADIA)}")


def _natural_key(path: Path) -> list[Any]:
    """``proj_2.tif`` before ``proj_10.tif``: the numbers in a name compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def is_file_pattern(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a pattern of file names (``scan/proj_*.tif``: ``*``, ``?`` or ``[``) and not a file or
    directory of that name: the TIFF files it matches are the frames (a directory that holds projections,
    flats and darks side by side, told apart by their names)."""
    text = os.fspath(path)
    return any(c in Path(text).name for c in "*?[") and not Path(text).exists()


def pattern_files(path: str | os.PathLike[str]) -> list[Path]:
    """The TIFF files a file name pattern (:func:`is_file_pattern`) matches, in the order of the numbers in
    their names. Only the last part of ``path`` may be a pattern."""
    p = Path(os.fspath(path)).expanduser()
    if not p.parent.is_dir():
        raise TomoGANError(f"directory {p.parent} of the pattern {p.name!r} does not exist")
    return sorted((f for f in p.parent.glob(p.name) if f.suffix.lower() in TIFF and f.is_file()), key=_natural_key)


def _directory(p: Path) -> FrameSource:
    """The frames of a directory of TIFF files, one grey frame each (how many beamlines and area
    detector TIFF plugins store a scan), in the order of the numbers in their names."""
    files = sorted((f for f in p.iterdir() if f.suffix.lower() in TIFF and f.is_file()), key=_natural_key)
    return _tiff_stack(files, f"directory {p}")


def _tiff_stack(files: list[Path], where: str) -> FrameSource:
    """The frames of TIFF ``files``, one grey frame each, in their order (``where``: what they are, for errors)."""
    if not files:
        raise TomoGANError(f"{where} holds no TIFF files ({', '.join(TIFF)}); give a directory of one frame per "
                           "file, a pattern of their names (quoted: 'scan/proj_*.tif'), or a file")
    first = _tiff_frame(files[0])
    if first.ndim != 2 or 0 in first.shape:
        raise TomoGANError(f"{files[0]} holds an array of {first.shape}, not one grey frame (a colour image?); "
                           f"the files of a {where.split()[0]} must hold one grey frame each")

    def read(a: int, b: int) -> np.ndarray:
        frames = [_tiff_frame(f) for f in files[a:b]]
        for f, frame in zip(files[a:b], frames, strict=True):
            if frame.shape != first.shape:
                raise TomoGANError(f"{f} holds a frame of {frame.shape}, not {first.shape} as {files[0].name}: "
                                   f"the files of a {where.split()[0]} must be frames of one shape")
        return np.stack(frames)

    return FrameSource((len(files), *first.shape), np.dtype(first.dtype), read, names=tuple(f.name for f in files))


def _tiff_frame(f: Path) -> np.ndarray:
    """The one frame of a TIFF file (``(H, W, 1)`` as ``(H, W)``)."""
    import tifffile

    try:
        with tifffile.TiffFile(f) as tif:
            if len(tif.pages) != 1:
                raise TomoGANError(f"{f} holds {len(tif.pages)} pages; the files of a directory must hold one "
                                   "frame each")
            return without_channel_axis(tif.asarray())
    except (OSError, ValueError) as exc:  # not a TIFF, or damaged
        raise TomoGANError(f"cannot read frames from {f}: {exc}") from exc


def _frames_key(f: Any, path: Path, key: str | None) -> tuple[str, bool]:
    """The frames' dataset, and whether a NeXus ``image_key`` says what each frame is."""
    import h5py

    if key is not None:
        if key not in f or not isinstance(f[key], h5py.Dataset):
            raise TomoGANError(f"{path} has no dataset {key!r} "
                               f"(its datasets: {', '.join(hdf5_datasets(f)[:12]) or 'none'})")
        return key, False
    usual = first_dataset(f, PROJECTION_KEYS)
    if usual is not None:
        return usual, False
    nexus = nexus_frames(f)
    if nexus is not None:  # every frame, flats and darks too: each is denoised as the callback denoises them
        return nexus
    missing = missing_frame_files(f)
    if missing:
        raise TomoGANError(f"{path}: its frames are in files that are not beside it ({'; '.join(missing)}): "
                           "copy the scan's directory whole")
    found = hdf5_datasets(f)
    if len(found) != 1:
        raise TomoGANError(f"{path} holds {len(found)} datasets {found[:12]} and none of the usual names for "
                           f"projections ({', '.join(PROJECTION_KEYS)}); choose one with --key")
    return found[0], False


def read_angles(path: str | os.PathLike[str], n: int) -> np.ndarray:
    """Each of ``n`` frames' rotation angle in degrees from ``path``: a ``.npy`` array, or text (one a line, or
    separated by spaces or commas; ``#`` starts a comment).

    Raises
    ------
    TomoGANError
        A missing or unreadable file, values that are not numbers, or not ``n`` of them.
    """
    p = Path(path)
    if not p.is_file():
        raise TomoGANError(f"angles file {p} does not exist")
    try:
        if p.suffix.lower() in NPY:
            values = np.load(p, allow_pickle=False)
        else:
            lines = (line.split("#", 1)[0].replace(",", " ") for line in p.read_text().splitlines())
            values = np.array([float(v) for line in lines for v in line.split()], dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise TomoGANError(f"cannot read angles from {p}: {exc}") from exc
    values = np.asarray(values)
    if values.dtype.kind not in "uif":
        raise TomoGANError(f"{p} holds {values.dtype} values, not angles in degrees")
    values = values.astype(np.float64).ravel()
    if len(values) != n:
        raise TomoGANError(f"{p} holds {len(values)} angles for {n} frames: give one per frame, in their order")
    return values


def _frame_order(f: Any, frames_key: str, n: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Each frame's rotation angle (degrees) and NXtomo ``image_key``, where the open HDF5 file ``f`` stores
    one of each per frame of ``frames_key`` (``n`` frames); ``None`` for what it does not (then the frames
    are neighbours in the order stored, as before)."""
    nexus = find_nexus_scan(f, frames_key)
    where = nexus.angles if nexus is not None and nexus.angles is not None else first_dataset(f, ANGLE_KEYS)
    angles = None
    if where is not None:
        stored = f[where]
        if stored.shape != (n,) or stored.dtype.kind not in "uif":
            log.info("%s holds %s of shape %s, not an angle per frame (%d): neighbours by order", where,
                     stored.dtype, stored.shape, n)
        else:
            angles = angles_in_degrees(stored[()], stored.attrs.get("units"))
    groups = nexus.image_key if nexus is not None and nexus.image_key is not None else None
    groups = groups if groups is not None and groups.shape == (n,) else None
    log.info("%s: %d frames; angles %s; image_key %s", frames_key, n,
             f"from {where}" if angles is not None else "none (neighbours by order)",
             "from the NeXus tree" if groups is not None else "none (every frame a projection)")
    return angles, groups


def first_dataset(f: Any, keys: tuple[str, ...]) -> str | None:
    """The first of ``keys`` that is a dataset of the open HDF5 file ``f``, or None."""
    import h5py

    return next((k for k in keys if k in f and isinstance(f[k], h5py.Dataset)), None)


def hdf5_datasets(f: Any) -> list[str]:
    """Every dataset of the open HDF5 file ``f``, by path (walks the file: for error messages)."""
    import h5py

    found: list[str] = []
    f.visit(lambda name: found.append(name) if isinstance(f[name], h5py.Dataset) else None)
    return found


def is_directory_output(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a directory to write one TIFF per frame into: an existing
    directory, a name ending in a separator, or a name without a suffix."""
    p = Path(path)
    return p.is_dir() or os.fspath(path).endswith(("/", os.sep)) or not p.suffix


def _is_source(output: Path, source: Path) -> bool:
    """Whether writing ``output`` would replace ``source`` or, for a directory, one of its files
    (links and other spellings of the same file included)."""
    if not output.exists():
        return False
    if is_file_pattern(source):
        read = pattern_files(source) if source.parent.is_dir() else []
    else:
        read = [f for f in source.iterdir() if f.is_file()] if source.is_dir() else [source]
    return any(output.samefile(f) for f in read if f.exists())


def check_output(path: str | os.PathLike[str], source: str | os.PathLike[str] | None = None) -> Path:
    """``path`` if this module can write it (by its suffix, or a new or empty directory), before any work is done.

    A directory that holds anything is refused: its files could be the raw frames
    themselves (the input directory given twice), and a denoised frame must never replace one.
    So is a file that is the ``source`` (the file or directory of frames read) or one of its files.
    A new directory is made here, so that the returned path names a directory however it was
    spelled (``out.v2/`` loses its separator as a :class:`~pathlib.Path`).
    """
    p = Path(path)
    if source is not None and _is_source(p, Path(source)):
        several = Path(source).is_dir() or is_file_pattern(source)
        raise TomoGANError(f"output {p} is the input {'or one of its files ' if several else ''}"
                           f"({source}); give another output: raw frames are never overwritten")
    if is_directory_output(path):
        if p.is_dir() and any(p.iterdir()):
            raise TomoGANError(f"output directory {p} is not empty; give a new or empty directory (its files "
                               "could be the raw frames, which are never overwritten)")
        if p.exists() and not p.is_dir():
            raise TomoGANError(f"output {p} is a file, not a directory")
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TomoGANError(f"cannot make the output directory {p}: {exc}") from exc
        return p
    if p.suffix.lower() not in NPY + HDF5 + TIFF:
        raise TomoGANError(f"output {p} must end in one of {', '.join(NPY + HDF5 + TIFF)}, or be a directory "
                           "(one TIFF file per frame)")
    return p


def _frame_names(n: int, names: tuple[str, ...] | None) -> list[str]:
    """Each frame's file in a directory output: the input directory's names, else numbered."""
    if names is not None:
        return list(names)
    width = max(5, len(str(n - 1)))
    return [f"frame_{i:0{width}d}.tif" for i in range(n)]


#: The dataset an HDF5 output always has, the denoised frames (a link where the input's layout is kept).
DENOISED_KEY = "denoised"


def _has_reference(dtype: np.dtype) -> bool:
    """Whether values of ``dtype`` hold HDF5 object or region references (alone or in a compound)."""
    import h5py

    if dtype.names:
        return any(_has_reference(dtype[n]) for n in dtype.names)
    base = h5py.check_dtype(vlen=dtype)  # a variable-length sequence (a dimension list) of its base type
    if base is not None and base not in (str, bytes):
        return _has_reference(np.dtype(base))
    return h5py.check_dtype(ref=dtype) is not None


def _copy_attrs(src: Any, dst: Any) -> None:
    """Copy the attributes of an HDF5 object that mean the same in another file, with their own types
    (a dimension scale's fixed-length ``CLASS`` among them): not references, which point into their
    own file (dimension scales' lists among them; :func:`_attach_scales` remakes those)."""
    for key in src.attrs:
        dtype = src.attrs.get_id(key).dtype
        if not _has_reference(dtype):
            dst.attrs.create(key, src.attrs[key], dtype=dtype)


def _copy_hdf5_layout(src: Any, dst: Any, frames: Any, made: dict[int, str] | None = None) -> list[str]:
    """Copy every object of the open HDF5 group ``src`` into ``dst`` but the ``frames`` dataset,
    attributes included; returns the paths (in ``dst``) where ``frames`` was, to be linked to the
    denoised frames. An object met again (a hard link; ``made``: its first copy's path by object) is
    linked, not copied twice; soft and external links are copied as links; a root ``denoised`` is not
    copied; attributes holding references are left out (:func:`_copy_attrs`)."""
    import h5py

    made = {hash(src.id): dst.name} if made is None else made
    _copy_attrs(src, dst)
    places = []
    for name in src:
        link = src.get(name, getlink=True)
        here = f"{dst.name.rstrip('/')}/{name}"
        if isinstance(link, h5py.ExternalLink):
            if _resolves_to(src, name, frames):
                places.append(here)  # NeXus keeps the detector's frames in a file of their own
            else:  # still found from wherever the copy is written
                dst[name] = h5py.ExternalLink(str(Path(src.file.filename).resolve().parent / link.filename),
                                              link.path)
            continue
        if isinstance(link, h5py.SoftLink):
            dst[name] = link
            continue
        if src.name == "/" and name == DENOISED_KEY:
            continue  # the output's `denoised` is this run's frames
        obj = src[name]
        if obj == frames:  # the frames, here or at another hard link (NeXus links detector data)
            places.append(here)
        elif hash(obj.id) in made:
            dst[name] = dst.file[made[hash(obj.id)]]
        elif isinstance(obj, h5py.Group):  # walked, not copied whole: it may hold a link to the frames
            made[hash(obj.id)] = here
            places += _copy_hdf5_layout(obj, dst.create_group(name), frames, made)
        else:
            made[hash(obj.id)] = here
            src.copy(obj, dst, name=name, without_attrs=True)
            _copy_attrs(obj, dst[name])
    return places


def _resolves_to(group: Any, name: str, frames: Any) -> bool:
    """Whether ``group[name]`` (a link) leads to the dataset ``frames``; a link into a missing file does not."""
    try:
        obj = group[name]
    except (KeyError, OSError):
        return False
    return bool(obj == frames)


def _attach_scales(src: Any, dst: Any) -> None:
    """Attach in ``dst`` the dimension scales that ``src``'s datasets have (the files' objects at the
    same paths, the frames included), which :func:`_copy_hdf5_layout` could not copy as references."""
    import h5py

    def attach(name: str, obj: Any) -> None:
        if not isinstance(obj, h5py.Dataset) or "DIMENSION_LIST" not in obj.attrs or obj.name not in dst:
            return
        for i, dim in enumerate(obj.dims):
            for scale in dim.values():
                there = dst.get(scale.name)
                if isinstance(there, h5py.Dataset):
                    if not there.is_scale:
                        there.make_scale(scale.attrs.get("NAME", b"").decode() if scale.is_scale else "")
                    dst[obj.name].dims[i].attach_scale(there)

    src.visititems(attach)


@contextlib.contextmanager
def _sink(path: Path, shape: tuple[int, ...], dtype: np.dtype, provenance: dict[str, Any],
          names: tuple[str, ...] | None = None, layout: tuple[Path, str] | None = None,
          beside: dict[str, np.ndarray] | None = None,
          compression: str | None = None) -> Iterator[Callable[[int, np.ndarray], None]]:
    """``write(start, frames)`` into a new file of ``shape`` (``(N, H, W)``, or ``(H, W)`` for one frame),
    or into a directory, one TIFF file per frame (``names``: the input directory's). An HDF5
    output with ``layout`` (the input HDF5 file and its frames' dataset) is a copy of that
    file with the frames at their place; with ``beside`` (``FrameSource.beside``), a Data Exchange
    file: the frames in ``exchange/data`` and those arrays beside them. ``compression``: of each frame of an
    HDF5 output (:data:`~bluesky_tomogan.hdf5_frames.COMPRESSIONS`)."""
    import h5py

    from .hdf5_frames import compression_filter

    with contextlib.ExitStack() as stack:
        try:
            if path.is_dir():  # made by check_output
                import tifffile

                files = _frame_names(1 if len(shape) == 2 else shape[0], names)
                description = json.dumps(provenance)

                def put(start: int, frames: np.ndarray) -> None:
                    for i, frame in enumerate(frames):
                        tifffile.imwrite(path / files[start + i], frame, photometric="minisblack", metadata=None,
                                         description=description)
            elif path.suffix.lower() in TIFF:
                import tifffile

                tif = stack.enter_context(
                    tifffile.TiffWriter(path, bigtiff=int(np.prod(shape)) * dtype.itemsize > 2**31))

                def put(start: int, frames: np.ndarray) -> None:
                    for i, frame in enumerate(frames):  # one page per frame, so that any TIFF reader shows a stack
                        tif.write(frame, photometric="minisblack", metadata=None,
                                  description=json.dumps(provenance) if start + i == 0 else None)
            else:
                if path.suffix.lower() in NPY:
                    target: Any = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
                    stack.callback(target.flush)
                else:
                    f = stack.enter_context(h5py.File(path, "w"))
                    places = [f"/{DENOISED_KEY}"]
                    src, raw = None, None
                    if layout is not None:
                        src = stack.enter_context(h5py.File(layout[0], "r"))
                        raw = src[layout[1]]
                        places = _copy_hdf5_layout(src, f, raw) + places
                    elif beside:  # what a reconstruction reads (tomopy, dxchange, `finetune`)
                        places = [f"/{PROJECTION_KEYS[0]}", *places]
                        for key, value in beside.items():
                            f.create_dataset(key, data=value)
                        if "exchange/theta" in f:
                            f["exchange/theta"].attrs["units"] = "degrees"
                    # a chunk per frame (one frame: itself, where it is compressed)
                    chunks = (1, *shape[-2:]) if len(shape) == 3 else (shape if compression else None)
                    target = f.create_dataset(places[0], shape=shape, dtype=dtype, chunks=chunks,
                                              **compression_filter(compression))
                    if raw is not None:
                        _copy_attrs(raw, target)  # the raw frames' own (units, axes, ...)
                    target.attrs.update({k: json.dumps(v) for k, v in provenance.items()})
                    for place in places[1:]:
                        f[place] = target  # hard links: the same frames under every name
                    if src is not None:
                        _attach_scales(src, f)

                def put(start: int, frames: np.ndarray) -> None:
                    if len(shape) == 3:
                        target[start:start + len(frames)] = frames
                    else:
                        target[...] = frames[0]
        except OSError as exc:
            raise TomoGANError(f"cannot write {path}: {exc}") from exc

        def write(start: int, frames: np.ndarray) -> None:
            try:
                put(start, frames)
            except OSError as exc:  # a full disk
                raise TomoGANError(f"cannot write {path}: {exc}") from exc

        yield write


def _order_of(source: FrameSource, lo: int, hi: int) -> dict[str, np.ndarray]:
    """The angles and groups of frames ``[lo, hi)`` of ``source`` that it knows, as :meth:`Denoiser.denoise`
    takes them."""
    known = {"angles": source.angles, "groups": source.groups}  # one a frame where given (FrameSource checks)
    return {k: v[lo:hi] for k, v in known.items() if v is not None}


def denoise_file(denoiser: _Denoiser, source: FrameSource, dest: str | os.PathLike[str], *,
                 keep_dtype: bool = False, chunk: int = CHUNK, frames_only: bool = False,
                 progress: Callable[[int], Any] | None = None, compression: str | None = None) -> Path:
    """Denoise every frame of ``source`` into ``dest`` (.npy, HDF5 or TIFF), ``chunk`` frames at a time.

    Each chunk is read with the neighbours its edge frames need (``denoiser.depth // 2`` on
    each side), so every frame has the context it would have in the whole stack.

    Parameters
    ----------
    denoiser : Denoiser
        What :func:`~bluesky_tomogan.load_denoiser` returns.
    source : FrameSource
        From :func:`open_frames`.
    dest : path-like
        Output file, its suffix says the kind; or a new or empty directory (a name without a
        suffix): one TIFF file per frame, named as ``source``'s files where it is a directory.
    keep_dtype : bool
        Cast the result back to the input's dtype (default float32).
    chunk : int
        Frames per chunk.
    frames_only : bool
        Into HDF5, write only the ``denoised`` dataset; by default the output is a copy of an
        HDF5 input (flats, darks, angles, metadata) with the frames denoised at their place and
        ``denoised`` a link to them, and from a Zeiss Xradia scan a Data Exchange file (the
        denoised frames in ``exchange/data``, its angles and reference image beside them).
    progress : callable, optional
        Called with the number of frames finished after each chunk.
    compression : {None, "lz4", "zstd", "gzip"}
        Lossless compression of each denoised frame, into HDF5 only
        (:data:`~bluesky_tomogan.hdf5_frames.COMPRESSIONS`).

    Returns
    -------
    Path
        ``dest``.

    Raises
    ------
    TomoGANError
        ``dest`` cannot be written, or ``compression`` asked of an output that is not HDF5.
    """
    path = check_output(dest, source.origin)
    if compression is not None and (path.is_dir() or path.suffix.lower() not in HDF5):
        raise TomoGANError(f"compression ({compression}) is for an HDF5 output ({', '.join(HDF5)}), not {path}")
    n, h, w = source.shape
    halo = denoiser.depth // 2
    dtype = source.dtype if keep_dtype else np.dtype(np.float32)
    layout = None
    if source.hdf5_key is not None and source.origin is not None and not frames_only:
        layout = (source.origin, source.hdf5_key)
    with _sink(path, (h, w) if source.single else (n, h, w), dtype, denoiser.provenance(), source.names,
               layout, None if frames_only else source.beside, compression) as write:
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            lo, hi = max(start - halo, 0), min(stop + halo, n)
            out = denoiser.denoise(source.read(lo, hi), out_dtype="source" if keep_dtype else "float32",
                                   only=slice(start - lo, stop - lo), **_order_of(source, lo, hi))
            write(start, out)
            if progress is not None:
                progress(stop - start)
    return path
