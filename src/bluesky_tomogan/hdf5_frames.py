"""Frames in HDF5 files, as area detectors store them: write, and read back from documents.

One file holds one data key as a ``(N, H, W)`` dataset chunked one frame per
chunk, opened in SWMR mode so readers (the callback, Tiled) can follow while
frames are appended. Both the simulated detector (raw frames) and the callback
(denoised frames) write through :class:`FrameFile`.

Reading goes through the documents, never by guessing paths:

* ``StreamResource``/``StreamDatum`` (mimetype ``application/x-hdf5``,
  ``parameters["dataset"]``): :class:`StreamFrameReader`.
* ``Resource``/``Datum`` (legacy ophyd v1): the handler registry that
  :class:`event_model.Filler` uses; :class:`HDF5FrameHandler` is registered as
  spec ``"hdf5"``, which ``TiledWriter`` maps to ``application/x-hdf5`` too.

Importing this module imports ``hdf5plugin``, which registers the compression
filters of detector files (bitshuffle/LZ4 from Eiger and other Dectris
detectors, Blosc, Zstd, LZ4) with HDF5 for the whole process: the handlers of
other packages and an embedded Tiled server read them too.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import h5py
import hdf5plugin  # registers the compression filters detector files use (bitshuffle/LZ4, Blosc, ...)
import numpy as np

from .errors import OutputPathError

__all__ = ["MIMETYPE", "SPEC", "COMPRESSIONS", "compression_filter",
           "FrameFile", "HDF5FrameHandler", "StreamFrameReader", "HANDLER_REGISTRY",
           "path_from_uri", "open_for_reading", "HDF5_LOCK"]

log = logging.getLogger(__name__)
MIMETYPE = "application/x-hdf5"
SPEC = "hdf5"
#: Seconds a reader waits for frames that a document announced but the file does not show yet: an
#: area detector's file writer may flush for SWMR readers (``NumFramesFlush``) after its frame counter,
#: which ophyd-async's StreamDatum follows, has moved on. A file that stays short is waited for once.
ANNOUNCED_FRAMES_WAIT_S = 2.0
_POLL_S = 0.05

#: Taken by every HDF5 call of this module's writers and readers of frames. HDF5 (1.14.6 here) gives wrong
#: frames, silently, when a file open for SWMR reading more than once in a process (the callback's reader of
#: the raw frames, the reconstruction's of the darks and flats, each on its own thread) is refreshed through one
#: handle while another reads: 16-251 wrong frames in 14,000 reads from two threads (file written by
#: :class:`FrameFile`), and with two live objects of one dataset wrong frames even from one thread
#: (``tests/test_hdf5_frames.py``). h5py's own lock covers one call, not a refresh and the read after it. So
#: readers of a file share one handle and one object per dataset (:class:`_SharedFile`), and a refresh and its
#: read, or a writer's append and flush, are one step under this lock.
HDF5_LOCK = threading.RLock()


def open_for_reading(path: str | os.PathLike[str], error: type[Exception], what: str) -> h5py.File:
    """Open an HDF5 file read-only, or raise ``error`` saying the ``what`` file is missing or not HDF5."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise error(f"{what} file {p} does not exist")
    try:
        return h5py.File(p, "r")
    except OSError as exc:
        raise error(f"{p} is not a readable HDF5 file: {exc}") from exc


#: Lossless compressions of :class:`FrameFile` (each frame a chunk): name -> h5py dataset options
#: (the names also in :data:`bluesky_tomogan.frames.COMPRESSION_NAMES`, which the command line offers).
COMPRESSIONS: dict[str, Callable[[], Mapping[str, Any]]] = {
    "lz4": lambda: dict(hdf5plugin.Bitshuffle(cname="lz4")),
    "zstd": lambda: dict(hdf5plugin.Bitshuffle(cname="zstd")),
    "gzip": lambda: {"compression": "gzip", "compression_opts": 4},
}


def compression_filter(compression: str | None) -> Mapping[str, Any]:
    """The h5py dataset options of ``compression`` (``None``: uncompressed).

    Raises
    ------
    ValueError
        An unknown compression.
    """
    if compression is None:
        return {}
    if compression not in COMPRESSIONS:
        raise ValueError(f"unknown compression {compression!r}; choose from {', '.join(COMPRESSIONS)} or None")
    return COMPRESSIONS[compression]()


class FrameFile:
    """An HDF5 file of frames that grows one batch at a time (SWMR, one frame per chunk).

    Parameters
    ----------
    path : path-like
        File to create (parent directories are created).
    shape : tuple of int
        Frame ``(H, W)``, or ``()`` for a file of one number a row (a position capture's).
    dtype : numpy dtype
        Stored dtype (``uint16`` for raw counts, ``float32`` for derived frames).
    dataset : str
        Path of the dataset inside the file.
    compression : {None, "lz4", "zstd", "gzip"}
        How each frame (chunk) is compressed, losslessly: ``lz4`` and ``zstd`` after a bit
        shuffle (hdf5plugin's Bitshuffle filter, as Dectris' Eiger writes its frames; any reader
        that imports ``hdf5plugin``, Tiled's included, reads them), ``gzip`` with HDF5's own
        filter (level 4: any HDF5 reader, slower). See :data:`COMPRESSIONS`.
    """

    def __init__(self, path: str | os.PathLike[str], shape: tuple[int, ...], dtype: Any,
                 dataset: str = "/entry/data/data", compression: str | None = None) -> None:
        self.path = Path(path).expanduser().resolve()
        self.dataset = dataset
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        filters = compression_filter(compression)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with HDF5_LOCK:
                self._file, self._dset = self._create(dataset, filters)
        except OSError as exc:
            raise OutputPathError(f"cannot write frames to {self.path}: {exc}") from exc
        self.count = 0

    def _create(self, dataset: str, filters: Mapping[str, Any]) -> tuple[h5py.File, h5py.Dataset]:
        f = h5py.File(self.path, "w", libver="latest")
        try:
            dset = f.create_dataset(dataset, shape=(0, *self.shape), maxshape=(None, *self.shape),
                                    chunks=(1, *self.shape), dtype=self.dtype, **filters)
            f.swmr_mode = True
        except BaseException:
            f.close()
            raise
        return f, dset

    @property
    def uri(self) -> str:
        return self.path.as_uri()

    def append(self, frames: np.ndarray) -> tuple[int, int]:
        """Append ``frames`` ``(N, H, W)`` (or one ``(H, W)`` frame); return their ``[start, stop)`` indices."""
        frames = np.asarray(frames)
        if frames.ndim == 2:
            frames = frames[None]
        if frames.shape[1:] != self.shape:
            raise ValueError(f"frames of shape {frames.shape[1:]} do not fit {self.path} ({self.shape})")
        start = self.count
        with HDF5_LOCK:
            self._dset.resize(start + len(frames), axis=0)
            self._dset[start:] = frames.astype(self.dtype, copy=False)
            self._dset.flush()  # SWMR readers see the frames as soon as the document announcing them is out
        self.count = start + len(frames)
        return start, self.count

    def put(self, index: int, frame: np.ndarray | None) -> int:
        """Write ``frame`` ``(H, W)`` at row ``index``, the file grown to hold it (rows between stay zeros until
        written); ``None`` writes nothing (a frame dropped or failed: its row holds the fill value, zeros, and HDF5
        leaves its chunk unallocated, so it costs no disk space). Returns ``index``.

        For rows taken in one order and finished in another (a frame that waits for its neighbours finishes after
        one flagged at once): each frame keeps the row of its place.
        """
        if index < 0:
            raise ValueError(f"row index must be >= 0, got {index}")
        with HDF5_LOCK:
            if index >= self.count:
                self._dset.resize(index + 1, axis=0)
                self.count = index + 1
            if frame is not None:
                frame = np.asarray(frame)
                if frame.shape != self.shape:
                    raise ValueError(f"a frame of shape {frame.shape} does not fit {self.path} ({self.shape})")
                self._dset[index] = frame.astype(self.dtype, copy=False)
            self._dset.flush()
        return index

    def close(self) -> None:
        """Close the file; never raises (it runs at the end of scans)."""
        try:
            with HDF5_LOCK:
                self._file.close()
        except Exception:
            log.exception("closing %s failed", self.path)


def path_from_uri(uri: str) -> Path:
    """Local path of a ``file://`` URI (``file://localhost/...`` too, as TiledWriter writes them)."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        raise ValueError(f"cannot read frames from {uri!r}: only local file URIs are supported")
    return Path(unquote(parsed.path))


class _SharedFile:
    """The one read-only SWMR handle of a file of frames in this process, and one object per dataset of it, for
    every :class:`StreamFrameReader` of the file (see :data:`HDF5_LOCK`); closed when its last reader closes."""

    _open: dict[Path, _SharedFile] = {}  # guarded by HDF5_LOCK

    def __init__(self, path: Path) -> None:
        self.path = path  # resolved: one handle whatever the spelling of the path
        try:
            self.file = h5py.File(path, "r", swmr=True)
        except OSError as exc:
            raise FileNotFoundError(f"cannot open frame file {path}: {exc}") from exc
        self.datasets: dict[str, h5py.Dataset] = {}
        self.readers = 0

    @classmethod
    def acquire(cls, path: Path) -> _SharedFile:
        """The file's shared handle, opened if no reader has it open (call with :data:`HDF5_LOCK` held)."""
        key = path.resolve()
        shared = cls._open.get(key)
        if shared is None:
            shared = cls._open[key] = cls(key)
        shared.readers += 1
        return shared

    def dataset(self, name: str) -> h5py.Dataset:
        """The dataset ``name``, refreshed: the frames appended since (call with :data:`HDF5_LOCK` held)."""
        dset = self.datasets.get(name)
        if dset is None:
            dset = self.datasets[name] = self.file[name]
        dset.refresh()
        return dset

    def release(self) -> None:
        """One reader fewer; the last closes the file (call with :data:`HDF5_LOCK` held)."""
        self.readers -= 1
        if self.readers <= 0:
            self._open.pop(self.path, None)
            self.datasets.clear()
            self.file.close()


class StreamFrameReader:
    """Read the frames a ``StreamDatum`` points at, through its ``StreamResource``.

    Parameters
    ----------
    stream_resource : dict
        The StreamResource document (mimetype ``application/x-hdf5``).
    wait_s : float
        Seconds to wait for frames announced but not in the file yet (see :meth:`_dataset`).
    """

    def __init__(self, stream_resource: dict[str, Any], wait_s: float = ANNOUNCED_FRAMES_WAIT_S) -> None:
        self.wait_s = wait_s
        if stream_resource.get("mimetype") != MIMETYPE:
            raise ValueError(f"no reader for mimetype {stream_resource.get('mimetype')!r} "
                             f"(StreamResource {stream_resource.get('uid')}); only {MIMETYPE} is supported")
        self.path = path_from_uri(stream_resource["uri"])
        self.dataset = stream_resource["parameters"]["dataset"]
        self._file: _SharedFile | None = None
        self._waited_in_vain: int | None = None  # the length the file had when a wait for more ran out

    def _read(self, need: Callable[[h5py.Dataset], int], read: Callable[[h5py.Dataset], np.ndarray]) -> np.ndarray:
        """``read(dataset)`` of the dataset, refreshed and holding at least ``need(dataset)`` frames if they come within
        ``wait_s`` (:data:`ANNOUNCED_FRAMES_WAIT_S`; a file that stayed short before is not waited for again
        until it grows). The refresh and the read are one step under :data:`HDF5_LOCK`; the wait is not."""
        deadline = time.monotonic() + self.wait_s
        while True:
            with HDF5_LOCK:
                if self._file is None:
                    self._file = _SharedFile.acquire(self.path)
                dset = self._file.dataset(self.dataset)
                n, frames = dset.shape[0], need(dset)
                if n >= frames or n == self._waited_in_vain or time.monotonic() >= deadline:
                    if n < frames:
                        self._waited_in_vain = n
                    return read(dset)
            time.sleep(_POLL_S)

    def _frames(self, dset: h5py.Dataset, start: int, stop: int) -> np.ndarray:
        if stop > dset.shape[0]:
            raise IndexError(f"{self.path}:{self.dataset} has {dset.shape[0]} frames; frames up to {stop} requested")
        return np.asarray(dset[start:stop])

    def __call__(self, start: int, stop: int) -> np.ndarray:
        """Frames ``[start, stop)`` as ``(N, H, W)``."""
        return self._read(lambda dset: stop, lambda dset: self._frames(dset, start, stop))

    def event(self, index: int, exposures: int) -> np.ndarray:
        """The ``exposures`` frames of StreamDatum row ``index`` of a multi-frame data key (``[N, H, W]``),
        as ``(N, H, W)``: row ``index`` of a 4-D dataset, or frames ``[index * N, (index + 1) * N)`` of a
        3-D one (how ophyd-async writes ``exposures_per_event`` frames: one after the other). Of a
        3-D dataset cut short, the frames it holds (the caller flags the missing ones)."""
        first = index * exposures

        def rows(dset: h5py.Dataset) -> np.ndarray:
            if dset.ndim == 4:
                return self._frames(dset, index, index + 1)[0]
            stop = max(min(first + exposures, dset.shape[0]), first + 1)
            # one frame (one chunk) per read: a read across chunks of a file that this process also has
            # open for SWMR writing failed in HDF5 ("can't insert duplicate key"); single frames do not
            return np.stack([self._frames(dset, i, i + 1)[0] for i in range(first, stop)])

        return self._read(lambda dset: index + 1 if dset.ndim == 4 else first + exposures, rows)

    def close(self) -> None:
        with HDF5_LOCK:
            if self._file is not None:
                self._file.release()
                self._file = None


class HDF5FrameHandler:
    """Legacy ``Resource``/``Datum`` handler (spec ``"hdf5"``): ``handler(frame=i)`` returns frame ``i``
    as ``(1, H, W)``, the shape the data key declares (so Tiled stacks frames to ``(N, H, W)``).

    Parameters
    ----------
    path : str
        Full path of the file (``root`` joined with ``resource_path``).
    dataset : str
        Dataset inside the file (``resource_kwargs["dataset"]``).
    """

    def __init__(self, path: str, dataset: str = "/entry/data/data") -> None:
        self._reader = StreamFrameReader({"mimetype": MIMETYPE, "uri": Path(path).as_uri(),
                                          "parameters": {"dataset": dataset}})

    def __call__(self, frame: int) -> np.ndarray:
        return self._reader(frame, frame + 1)

    def close(self) -> None:
        self._reader.close()


HANDLER_REGISTRY: dict[str, Any] = {SPEC: HDF5FrameHandler}
