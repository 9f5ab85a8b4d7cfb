"""Tiled's HDF5 adapters for a Tiled server embedded in the process that reads and writes the frame files.

HDF5 (1.14.6 here) gives wrong data, silently, when a file is open more than once in one process and one handle
reads while another is refreshed or opened: this package's readers share one SWMR handle per file and take
:data:`~bluesky_tomogan.hdf5_frames.HDF5_LOCK` (see there), but an embedded Tiled server
(:func:`~bluesky_tomogan.storage.local_tiled`, the demo's and the profile's) opens each file again for every
request, on its own threads. A client reading a run from it while a scan runs (a second process, a viewer) made
the callback read wrong frames, and got wrong frames itself (``python benchmarks/tiled_hdf5_race.py --adapter
tiled``: 331 of 71,580 reads by a reader of ours in 20 s, 5 of 267 by the client; 0 and 0 with these adapters).
The adapters here are Tiled's own, with their construction and each read one step under that lock. A Tiled
server in a process of its own (``tiled serve``) needs none of this: HDF5 keeps processes apart.
"""

from __future__ import annotations

import math
from typing import Any

from tiled.adapters.hdf5 import HDF5Adapter, HDF5ArrayAdapter
from tiled.structures.core import StructureFamily

from .hdf5_frames import HDF5_LOCK

__all__ = ["SerialHDF5Adapter", "SerialHDF5ArrayAdapter"]


class SerialHDF5ArrayAdapter(HDF5ArrayAdapter):
    """Tiled's :class:`~tiled.adapters.hdf5.HDF5ArrayAdapter`, its files opened and read under ``HDF5_LOCK``.

    A read computes its Dask graph (each task opens, reads and closes the file) while the lock is held, so this
    process's frame readers and writers wait for it, and it for them. A file that holds more frames than the
    catalog has recorded yet (a detector still writing) is served as far as recorded: :func:`_as_recorded`.
    """

    @classmethod
    def from_catalog(cls, *args: Any, **kwargs: Any) -> HDF5ArrayAdapter:
        with HDF5_LOCK:
            return _as_recorded(super().from_catalog(*args, **kwargs))

    @classmethod
    def from_uris(cls, *args: Any, **kwargs: Any) -> HDF5ArrayAdapter:
        with HDF5_LOCK:
            return _as_recorded(super().from_uris(*args, **kwargs))

    def read(self, *args: Any, **kwargs: Any) -> Any:
        with HDF5_LOCK:
            return super().read(*args, **kwargs)

    def read_block(self, *args: Any, **kwargs: Any) -> Any:
        with HDF5_LOCK:
            return super().read_block(*args, **kwargs)


def _as_recorded(adapter: HDF5ArrayAdapter) -> HDF5ArrayAdapter:
    """``adapter`` with the frames its file holds beyond those the catalog records left out.

    While a scan runs, the detector writes frames before their events are stored. Tiled serves a file that
    has grown beyond its recorded shape by cutting the extra frames off, but only where the two have the same
    rank: an ophyd-async detector's events of ``[1, H, W]``, stacked into ``(N, 1, H, W)`` by
    bluesky-tiled-plugins' TiledWriter, lie in the file as ``(M, H, W)``, and with ``M > N`` every read of the
    field failed ("Can not reshape (6, 64, 64) array data to (5, 1, 64, 64)", tiled 0.2.20) until the scan
    ended. Here the file's leading axis is cut to the recorded frames first; Tiled then reshapes them.
    """
    array, structure = getattr(adapter, "_array", None), getattr(adapter, "_structure", None)
    if array is None or structure is None or not array.ndim:
        return adapter
    shape, frame = tuple(structure.shape), tuple(array.shape[1:])
    lead = len(shape) - len(frame)
    if lead < 1 or shape[lead:] != frame:
        return adapter
    recorded = math.prod(shape[:lead])
    if array.shape[0] > recorded:
        adapter._array = array[:recorded]
    return adapter


class SerialHDF5Adapter(HDF5Adapter):
    """Tiled's adapter of the ``application/x-hdf5`` mimetype: a dataset (the frames of a stream, what TiledWriter
    registers) through :class:`SerialHDF5ArrayAdapter`, a whole file's tree read under ``HDF5_LOCK``."""

    @classmethod
    def from_catalog(cls, data_source: Any, node: Any, /, *args: Any, **kwargs: Any) -> Any:
        if data_source.structure_family == StructureFamily.array:
            dataset = kwargs.pop("dataset", "/")
            if not isinstance(dataset, str):
                dataset = "/".join(dataset)
            return SerialHDF5ArrayAdapter.from_catalog(data_source, node, *args, dataset=dataset, **kwargs)
        with HDF5_LOCK:
            return super().from_catalog(data_source, node, *args, **kwargs)
