"""Write derived frames to HDF5 and describe them with StreamResource/StreamDatum documents.

Large frames never travel inside documents to storage (TiledWriter stores
inline event data as a table; a 2-D array per row does not fit). Like an
area detector, the callback writes the denoised frames to a file, chunked one
frame per chunk and opened in SWMR mode so readers can follow a running scan,
and emits a ``StreamResource`` (``application/x-hdf5``, ``parameters={"dataset":
..., "chunk_shape": [1, H, W]}``) once per data key and a ``StreamDatum`` per
batch of frames, both composed with event-model.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import event_model
import h5py
import numpy as np

from ..errors import OutputPathError

__all__ = ["DerivedFrameWriter", "MIMETYPE"]

log = logging.getLogger(__name__)
MIMETYPE = "application/x-hdf5"


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
        self._files: dict[str, h5py.File] = {}
        self._bundles: dict[str, Any] = {}
        self._written: dict[str, int] = {}

    def add(self, data_key: str, shape: tuple[int, int]) -> dict[str, Any]:
        """Create the file for ``data_key`` and return its StreamResource document."""
        path = self.root / f"{data_key}.h5"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            f = h5py.File(path, "w", libver="latest")
            f.create_dataset("data", shape=(0, *shape), maxshape=(None, *shape), chunks=(1, *shape), dtype="<f4")
            f.swmr_mode = True
        except OSError as exc:
            raise OutputPathError(f"cannot write derived frames to {path}: {exc}") from exc
        self._files[data_key] = f
        self._written[data_key] = 0
        bundle = event_model.compose_stream_resource(
            mimetype=MIMETYPE, uri=path.as_uri(), data_key=data_key,
            parameters={"dataset": "/data", "chunk_shape": [1, *shape]}, start=self.start,
        )
        self._bundles[data_key] = bundle
        return dict(bundle.stream_resource_doc)

    def append(self, data_key: str, frames: np.ndarray, seq_nums: list[int], descriptor: Any) -> dict[str, Any]:
        """Append ``frames`` (N, H, W) and return the StreamDatum covering them."""
        f = self._files[data_key]
        dset = f["data"]
        i0 = self._written[data_key]
        dset.resize(i0 + len(frames), axis=0)
        dset[i0:] = frames.astype("<f4", copy=False)
        dset.flush()
        self._written[data_key] = i0 + len(frames)
        datum = self._bundles[data_key].compose_stream_datum(
            indices={"start": i0, "stop": i0 + len(frames)},
            seq_nums={"start": seq_nums[0], "stop": seq_nums[-1] + 1},
            descriptor=descriptor,
        )
        return dict(datum)

    def close(self) -> None:
        for f in self._files.values():
            try:
                f.close()
            except Exception:  # closing must never raise into the RunEngine
                log.exception("closing %s failed", f.filename)
        self._files.clear()
