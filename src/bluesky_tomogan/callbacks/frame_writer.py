"""Write derived frames to HDF5 and describe them with StreamResource/StreamDatum documents.

Large frames never travel inside documents to storage (TiledWriter stores
inline event data as a table; a 2-D array per row does not fit). Like an
area detector, the callback writes the denoised frames to a file
(:class:`~bluesky_tomogan.hdf5_frames.FrameFile`: SWMR, one frame per chunk)
and emits a ``StreamResource`` (``application/x-hdf5``, ``parameters={"dataset":
..., "chunk_shape": [1, H, W]}``) once per data key and a ``StreamDatum`` per
batch of frames, both composed with event-model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import event_model
import numpy as np

from ..hdf5_frames import MIMETYPE, FrameFile

__all__ = ["DerivedFrameWriter"]


class DerivedFrameWriter:
    """HDF5 files of one run's derived frames, one file per data key.

    Parameters
    ----------
    directory : path-like
        Root directory; files go to ``<directory>/<run uid>/<data_key>.h5``.
    start : dict
        The run's start document.
    """

    def __init__(self, directory: str | os.PathLike[str], start: Any) -> None:
        self.root = Path(directory).expanduser().resolve() / start["uid"]
        self.start = start
        self._files: dict[str, FrameFile] = {}
        self._bundles: dict[str, Any] = {}

    def add(self, data_key: str, shape: tuple[int, int]) -> dict[str, Any]:
        """Create the file for ``data_key`` and return its StreamResource document."""
        f = FrameFile(self.root / f"{data_key}.h5", shape, "<f4", dataset="/data")
        self._files[data_key] = f
        bundle = event_model.compose_stream_resource(
            mimetype=MIMETYPE, uri=f.uri, data_key=data_key,
            parameters={"dataset": f.dataset, "chunk_shape": [1, *f.shape]}, start=self.start,
        )
        self._bundles[data_key] = bundle
        return dict(bundle.stream_resource_doc)

    def write(self, data_key: str, frames: np.ndarray | None) -> tuple[int, int]:
        """Append ``frames`` ``(N, H, W)`` or one ``(H, W)`` frame; return their ``[start, stop)`` rows.

        ``None`` appends one row of zeros without writing it (a frame that was
        dropped or failed). Called from the callback's worker thread, so the
        RunEngine's thread never writes.
        """
        if frames is None:
            return self._files[data_key].skip(1)
        return self._files[data_key].append(frames)

    def datum(self, data_key: str, start: int, stop: int, first_seq_num: int, descriptor: Any) -> dict[str, Any]:
        """The StreamDatum of rows ``[start, stop)``, for events from ``first_seq_num`` on."""
        doc = self._bundles[data_key].compose_stream_datum(
            indices={"start": start, "stop": stop},
            seq_nums={"start": first_seq_num, "stop": first_seq_num + stop - start},
            descriptor=descriptor,
        )
        return dict(doc)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
