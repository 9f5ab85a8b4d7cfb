"""Write derived frames to HDF5 and describe them with StreamResource/StreamDatum documents.

Large frames never travel inside documents to storage (TiledWriter stores
inline event data as a table; a 2-D array per row does not fit). Like an
area detector, the callback writes the denoised frames to a file
(:class:`~bluesky_tomogan.hdf5_frames.FrameFile`: SWMR, one frame per chunk)
and emits a ``StreamResource`` (``application/x-hdf5``, ``parameters={"dataset":
..., "chunk_shape": [1, H, W], "join_method": "stack"}``) once per data key and a
``StreamDatum`` per batch of frames, both composed with event-model.

A row holds one frame, and its data key declares the frame's shape ``[H, W]``;
``join_method: "stack"`` says so to Tiled's writers, whose default differs between
releases (bluesky 1.14-1.15's own ``TiledWriter`` concatenates, bluesky-tiled-plugins'
stacks), so that Tiled serves a derived stream as ``(N, H, W)`` whichever wrote it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import event_model
import numpy as np
import platformdirs

from ..errors import OutputPathError
from ..frames import FRAME_DTYPES
from ..hdf5_frames import MIMETYPE, FrameFile, path_from_uri

__all__ = ["DerivedFrameWriter", "default_directory", "derived_directory", "DATA_ENV", "stored_dtype",
           "FRAME_DTYPES"]

#: Environment variable naming the directory for derived frames when the raw frames are not files.
DATA_ENV = "BLUESKY_TOMOGAN_DATA"


def default_directory() -> Path:
    """Where derived frames go when neither ``directory`` nor the raw frames' own files say.

    ``$BLUESKY_TOMOGAN_DATA`` if set, else the per-user data directory
    (``~/.local/share/bluesky-tomogan/derived`` on Linux, from platformdirs).
    The embedded Tiled server of :func:`bluesky_tomogan.storage.local_tiled` may read it.
    """
    env = os.environ.get(DATA_ENV)
    root = Path(env).expanduser() if env else platformdirs.user_data_path("bluesky-tomogan") / "derived"
    return root.resolve()


def stored_dtype(choice: str, declared: Any) -> np.dtype:
    """The dtype derived frames are stored in, for ``frame_dtype=choice`` and a raw field that declares
    ``declared`` (its data key's ``dtype_numpy``, or ``None``): ``"source"`` is the raw integer type, and
    float32 for float frames or a field that declares none.

    Raises
    ------
    ValueError
        ``choice`` is not one of :data:`FRAME_DTYPES`.
    """
    if choice not in FRAME_DTYPES:
        raise ValueError(f"unknown frame_dtype {choice!r}; choose from {', '.join(FRAME_DTYPES)}")
    if choice != "source":
        return np.dtype(choice)
    try:
        raw = np.dtype(declared) if declared else None
    except (TypeError, ValueError):  # a structured or unknown type: not counts
        raw = None
    return raw if raw is not None and raw.kind in "iu" and raw.itemsize <= 4 else np.dtype(np.float32)


def derived_directory(directory: Path | None, raw_directory: Path | None) -> Path:
    """Where a run's derived files go: ``directory`` if given, else next to the raw frames' files,
    else :func:`default_directory`."""
    if directory is not None:
        return directory
    return raw_directory if raw_directory is not None else default_directory()


def stream_resource_directory(doc: Any) -> Path | None:
    """The directory of a StreamResource's file or files (where :func:`derived_directory` puts derived files by
    default), or None when it is not a local file."""
    try:
        path = path_from_uri(doc["uri"])
    except (ValueError, KeyError):
        return None
    return path if str(doc["uri"]).endswith("/") else path.parent  # a directory of files (TIFF sequence): itself


class DerivedFrameWriter:
    """HDF5 files of one run's derived frames, one file per data key.

    Parameters
    ----------
    directory : path-like
        Root directory; files go to ``<directory>/<run uid>/<slot>.h5`` (see :meth:`add`).
    start : dict
        The run's start document.
    fallback : path-like, optional
        Where files go when ``directory`` cannot have them (see :meth:`for_run`).
    compression : str, optional
        Lossless compression of every frame (:data:`~bluesky_tomogan.hdf5_frames.COMPRESSIONS`).
    """

    def __init__(self, directory: str | os.PathLike[str], start: Any, *,
                 fallback: str | os.PathLike[str] | None = None, compression: str | None = None) -> None:
        self.root = Path(directory).expanduser().resolve() / start["uid"]
        self.start = start
        self.compression = compression
        self._fallback = None if fallback is None else Path(fallback).expanduser().resolve() / start["uid"]
        #: Why the files went to ``fallback`` instead (empty if they did not): for the run's notes.
        self.moved = ""
        self._files: dict[str, FrameFile] = {}
        self._bundles: dict[str, Any] = {}

    @classmethod
    def for_run(cls, directory: Path | None, raw_directory: Path | None, start: Any,
                compression: str | None = None) -> DerivedFrameWriter:
        """The writer of a run's derived files in :func:`derived_directory`. Next to the raw frames (no
        ``directory`` given), it falls back to :func:`default_directory` if that is not writable: raw
        data are often on a read-only mount, and the derived frames must not be lost for it."""
        fallback = default_directory() if directory is None and raw_directory is not None else None
        return cls(derived_directory(directory, raw_directory), start, fallback=fallback, compression=compression)

    def add(self, slot: str, data_key: str, shape: tuple[int, int], dtype: Any = "<f4") -> dict[str, Any]:
        """Create the file ``<slot>.h5`` for ``data_key`` frames of ``dtype`` and return its StreamResource document.

        ``slot`` names the file: usually the data key, with a suffix when a
        re-emitted descriptor changes the frame shape within a run.

        Raises
        ------
        OutputPathError
            The directory or file cannot be created (unwritable, disk full).
        """
        try:
            f = FrameFile(self.root / f"{slot}.h5", shape, dtype, dataset="/data", compression=self.compression)
        except OutputPathError as exc:
            if self._fallback is None or self._files:  # a directory chosen by the user, or files already there
                raise
            self.moved = (f"derived frames cannot be written next to the raw frames ({exc}); they go to "
                          f"{self._fallback} (directory= chooses where)")
            self.root, self._fallback = self._fallback, None
            f = FrameFile(self.root / f"{slot}.h5", shape, dtype, dataset="/data", compression=self.compression)
        self._files[slot] = f
        bundle = event_model.compose_stream_resource(
            mimetype=MIMETYPE, uri=f.uri, data_key=data_key,
            parameters={"dataset": f.dataset, "chunk_shape": [1, *f.shape], "join_method": "stack"},
            start=self.start,
        )
        self._bundles[slot] = bundle
        return dict(bundle.stream_resource_doc)

    def write(self, slot: str, frames: np.ndarray) -> tuple[int, int]:
        """Append ``frames`` ``(N, H, W)`` or one ``(H, W)`` frame; return their ``[start, stop)`` rows (the live
        reconstruction's slices: written in the order they are emitted)."""
        return self._files[slot].append(frames)

    def write_at(self, slot: str, index: int, frame: np.ndarray | None) -> int:
        """Write one ``(H, W)`` frame at row ``index`` of ``slot``'s file, growing it as needed; return ``index``.

        ``None`` writes nothing: the row of a frame that was dropped or failed holds zeros (HDF5 leaves unwritten
        chunks unallocated, so it costs no disk space). Called from the callback's worker thread, so the
        RunEngine's thread never writes.
        """
        return self._files[slot].put(index, frame)

    def datum(self, slot: str, start: int, stop: int, first_seq_num: int, descriptor: Any) -> dict[str, Any]:
        """The StreamDatum of rows ``[start, stop)``, for events from ``first_seq_num`` on."""
        doc = self._bundles[slot].compose_stream_datum(
            indices={"start": start, "stop": stop},
            seq_nums={"start": first_seq_num, "stop": first_seq_num + stop - start},
            descriptor=descriptor,
        )
        return dict(doc)

    def close(self) -> None:
        """Close every file (never raises)."""
        for f in self._files.values():
            f.close()
        self._files.clear()
