"""Storage behind a Tiled URI; by default an embedded Tiled server on local disk.

``local_tiled(path)`` starts Tiled's ``SimpleTiledServer`` on a background
thread (SQLite catalog and files under ``path``), allows it to read the
derived-frame directory ``path/frames`` that ``TomoGANCallback(directory=...)``
writes to (and the callback's per-user default directory), and returns a
connected client. A production beamline passes the
URI of its own (PostgreSQL-backed) Tiled server to ``tiled.client.from_uri``
instead; everything downstream is the same. The embedded server exports a run as its
documents (``client[uid].documents()``), as bluesky-tiled-plugins' exporter does when a
production server's ``media_types`` name it: replaying a stored run needs it
(:mod:`bluesky_tomogan.reprocess`).
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import threading
from pathlib import Path
from typing import Any

import numpy as np

from .errors import OutputPathError

__all__ = ["local_tiled", "open_tiled", "close_tiled", "stored_run", "frames_directory", "close_local_tiled",
           "derived_streams", "server_of", "stored_frames", "StoredFrames"]

log = logging.getLogger(__name__)

#: Embedded servers by ``id`` of the client that :func:`local_tiled` returned (kept alive until closed).
_SERVERS: dict[int, Any] = {}
#: The API key of every embedded server of this process. Tiled keeps a server's single-user key in
#: process-wide settings, so a second server with a key of its own made every earlier client of this
#: process fail with "401: Invalid API key" (measured with tiled 0.2.20: two local_tiled calls).
_PROCESS_API_KEY = secrets.token_hex(16)


def frames_directory(path: str | os.PathLike[str]) -> Path:
    """Where derived frames of the embedded store at ``path`` are written."""
    return Path(path).expanduser().resolve() / "frames"


def local_tiled(path: str | os.PathLike[str] = "~/tomogan-data") -> Any:
    """Start (or reopen) an embedded Tiled server at ``path`` and return a client.

    The server lives until :func:`close_local_tiled` shuts both down;
    :func:`server_of` returns it (its ``uri`` carries the API key).
    """
    from tiled.client import from_uri
    from tiled.server import SimpleTiledServer

    from .callbacks.frame_writer import default_directory
    from .hdf5_frames import MIMETYPE
    from .tiled_catalog import catalogs_made_here
    from .tiled_hdf5 import SerialHDF5Adapter
    from .tiled_tables import lend_one_at_a_time

    _export_runs_as_documents()
    root = Path(path).expanduser().resolve()
    _follow_a_moved_store(root)
    readable = [frames_directory(root), default_directory()]
    try:
        for d in readable:
            d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"cannot create the data directory {exc.filename}: {exc}") from exc

    def make() -> Any:  # its catalog checked (or made) in this process, not in a new Python (tiled_catalog)
        with catalogs_made_here():
            return SimpleTiledServer(directory=root / "tiled", readable_storage=readable, api_key=_PROCESS_API_KEY)

    server = _start_daemon(make)
    # its reads of the frame files share this process's HDF5 lock with the callback's (tiled_hdf5)
    server.catalog.context.adapters_by_mimetype[MIMETYPE] = SerialHDF5Adapter
    # its threads take turns with the one DuckDB connection of the streams' tables (tiled_tables)
    lend_one_at_a_time(server.storage)
    client = from_uri(server.uri)  # the URI carries the generated API key
    _SERVERS[id(client)] = server
    return client


def _follow_a_moved_store(root: Path) -> None:
    """A store moved or copied whole (to another disk, another machine) opens where it is now.

    Tiled's catalog names every file it reads by its absolute URI: its own tabular storage
    (``<store>/tiled/storage.duckdb``) and each frame file, raw or derived. Where that tabular
    storage's URI names another directory than ``root``, the store was written there; every URI
    under that directory is pointed at the same path under ``root`` (files outside it, such as a
    detector's, stay as they are). Without this, a moved store's reads fail (the old files are not
    readable storage) or, worse, a copy reads and writes the original's tables.
    """
    import sqlite3
    from contextlib import closing
    from urllib.parse import urlsplit, urlunsplit

    catalog = root / "tiled" / "catalog.db"
    if not catalog.is_file():
        return

    def path_of(uri: str) -> str:  # "duckdb://localhost//a/b" and "file://localhost/a/b": "/a/b"
        return "/" + urlsplit(uri).path.lstrip("/")

    try:
        with closing(sqlite3.connect(catalog)) as con:
            assets = con.execute("SELECT id, data_uri FROM assets").fetchall()
            own = [path_of(uri) for _, uri in assets
                   if uri.startswith("duckdb:") and uri.endswith("/tiled/storage.duckdb")]
            old = own[0][: -len("/tiled/storage.duckdb")] if own else None
            if old is None or Path(old) == root:
                return
            moved = []
            for asset_id, uri in assets:
                parts = urlsplit(uri)
                path = path_of(uri)
                if path.startswith(old + "/"):
                    lead = parts.path[: len(parts.path) - len(parts.path.lstrip("/"))]  # as many slashes as before
                    new_path = lead + (str(root) + path[len(old):]).lstrip("/")
                    moved.append((urlunsplit(parts._replace(path=new_path)), asset_id))
            with con:
                con.executemany("UPDATE assets SET data_uri = ? WHERE id = ?", moved)
    except sqlite3.Error as exc:  # a read-only copy, another schema: open it as it is, saying why reads may fail
        log.warning("could not point the catalog %s at where its files are now (%s); if the store was moved, its "
                    "files are read where they were written", catalog, exc)
        return
    log.warning("the store at %s was written at %s: %d file references in its catalog now point into %s",
                root, old, len(moved), root)


def _export_runs_as_documents() -> None:
    """Let Tiled servers built from here on serve ``run.documents()``: bluesky-tiled-plugins'
    ``application/json-seq`` exporter, which a production server names in its config's
    ``media_types``; ``SimpleTiledServer`` takes no config, so it goes into Tiled's default
    registry (idempotent: the same exporter under the same name)."""
    from bluesky_tiled_plugins.exporters import json_seq_exporter
    from tiled.media_type_registration import default_serialization_registry

    default_serialization_registry.register("BlueskyRun", "application/json-seq", json_seq_exporter)


def open_tiled(where: str, error: type[Exception] = OutputPathError, *, create: bool = True) -> Any:
    """A client of the Tiled server at the URI ``where`` (``?api_key=`` if it needs one), or of an
    embedded one in the directory ``where`` (:func:`local_tiled`; ``create=False``: only one that
    exists, as the demo and the profile make: a misspelt directory must not become an empty store).
    Close it with :func:`close_tiled`.

    Raises
    ------
    error
        The server cannot be reached or refuses (the message leaves out the API key), or, with
        ``create=False``, the directory holds no embedded store.
    """
    if "://" not in where:  # a directory: an embedded server in this process
        if not create and not (Path(where).expanduser() / "tiled").is_dir():
            raise error(f"{where} holds no embedded Tiled store (no tiled/ directory in it); give the directory "
                        "that the demo or the profile stored runs in, or a Tiled server's URI")
        client = local_tiled(where)
        log.info("embedded Tiled in %s at %s", where, server_of(client).uri)  # its key: how other clients connect
        return client
    from tiled.client import from_uri

    try:
        return from_uri(where)
    except Exception as exc:  # connection refused, 401, not a Tiled server...
        raise error(f"Tiled at {where.split('?')[0]} refused: {type(exc).__name__}: {exc}") from exc


def stored_run(client: Any, uid: str, error: type[Exception], where: str = "") -> Any:
    """The run ``uid`` of a Tiled catalog; ``error`` (its message begins with ``where``) where there is
    no such run or the server cannot give it."""
    where = where or f"run {uid}"
    try:
        return client[uid]
    except KeyError:
        raise error(f"{where}: no such run") from None
    except Exception as exc:  # tiled raises transport, HTTP and parsing errors of many types
        raise error(f"{where}: cannot read it: {type(exc).__name__}: {exc}") from exc


def derived_streams(run: Any) -> dict[tuple[str, str], str]:
    """The denoised streams of a run stored in Tiled: ``(raw stream, image field) -> derived stream name``.

    Found by what each stream denoises (its configuration, read from the stream's metadata), not
    by its name: a plan with its own stream called ``denoised`` gets ``denoised_2``. Where a
    stream was denoised more than once (``bluesky-tomogan reprocess``), the latest: the highest
    copy number (``denoised_3`` over ``denoised_2`` over ``denoised``).

    Parameters
    ----------
    run : tiled BlueskyRun
        A run as the Tiled client returns it (``client[uid]``).

    Returns
    -------
    dict of (str, str) to str
        ``(raw stream, image field) -> derived stream name``; empty for a run with none.

    Examples
    --------
    >>> derived_streams(client[uid])  # doctest: +SKIP
    {('primary', 'det_image'): 'denoised', ('flat', 'det_image'): 'flat_denoised'}
    """
    from .callbacks.derived_stream import derived_from

    def copy_number(name: str) -> int:
        head, _, tail = name.rpartition("_")
        return int(tail) if head and tail.isdigit() else 1

    out: dict[tuple[str, str], str] = {}
    for name in run:
        # a stream's metadata in Tiled is its descriptor's data keys and configuration
        source = derived_from({**dict(run[name].metadata), "name": name})
        if source is not None and (source not in out or copy_number(str(name)) > copy_number(out[source])):
            out[source] = str(name)
    return out


class StoredFrames:
    """The frames of a stored image field as one ``(N, H, W)`` stack, whichever Tiled writer stored them.

    ophyd-async detectors (and :class:`~bluesky_tomogan.devices.SimTomoDetector`) declare an event's frames as
    ``[k, H, W]``, ``k = 1`` for one frame an event. bluesky-tiled-plugins' ``TiledWriter`` (the one bluesky
    1.16 uses) stacks the events: Tiled serves ``(N, k, H, W)``; bluesky 1.14-1.15's own writer concatenated
    them into ``(N * k, H, W)``. A grey camera that declares a channel axis gives ``(N, H, W, 1)``. Indexed as
    the ``(N * k, H, W)`` stack, this reads from Tiled only the events that hold the frames asked for (an
    integer or a slice first, no ``...``); anything else reads the field whole.

    Parameters
    ----------
    node : tiled ArrayClient, h5py Dataset or array
        The field as the run gives it: ``run["primary"]["det_image"]``.

    Raises
    ------
    ValueError
        The field is not a stack of frames (not 3-D or 4-D).

    Examples
    --------
    >>> projections = stored_frames(run["primary"]["det_image"])  # doctest: +SKIP
    >>> projections.shape, projections[10].shape, projections[:, 256, :].shape  # doctest: +SKIP
    ((180, 512, 512), (512, 512), (180, 512))
    """

    def __init__(self, node: Any) -> None:
        shape = tuple(int(n) for n in node.shape)
        if len(shape) not in (3, 4):
            raise ValueError(f"a stored image field is (N, H, W) or (N, k, H, W), not {shape}")
        self.node = node
        #: the axis of the detector's rows in the stored array
        self.rows_axis = rows_axis(shape)
        self._grey = len(shape) == 4 and self.rows_axis == 1
        self._per_event = shape[1] if len(shape) == 4 and not self._grey else 0
        self.shape: tuple[int, int, int] = (math.prod(shape[:self.rows_axis]), shape[self.rows_axis],
                                            shape[self.rows_axis + 1])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        first, rest = index[0], index[1:]
        k = self._per_event
        if not (k or self._grey):  # stored as (N, H, W) already
            return np.asarray(self.node[index])
        if Ellipsis in index:
            return self.read()[index]
        if self._grey:
            return np.asarray(self.node[(*index, *[slice(None)] * (3 - len(index)), 0)])
        if isinstance(first, (int, np.integer)):
            if not -self.shape[0] <= first < self.shape[0]:
                raise IndexError(f"frame {first} of {self.shape[0]}")
            event, exposure = divmod(int(first) % self.shape[0], k)
            return np.asarray(self.node[(event, exposure, *rest)])
        if isinstance(first, slice) and k == 1:
            return np.asarray(self.node[(first, 0, *rest)])
        if isinstance(first, slice) and len(picked := range(*first.indices(self.shape[0]))):
            # the events that hold the frames asked for, every exposure of each, then those frames
            lo, hi = min(picked) // k, max(picked) // k + 1
            block = np.asarray(self.node[(slice(lo, hi), slice(None), *rest)])
            return block.reshape(-1, *block.shape[2:])[[i - lo * k for i in picked]]
        return self.read()[index]

    def read(self) -> np.ndarray:
        """Every frame: the ``(N * k, H, W)`` array."""
        data = np.asarray(self.node.read() if hasattr(self.node, "read") else self.node[()])
        return (data[..., 0] if self._grey else data).reshape(self.shape)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self.read() if dtype is None else self.read().astype(dtype)


def rows_axis(shape: tuple[int, ...]) -> int:
    """The axis of the detector's rows in a stored stack of frames (:class:`StoredFrames`): a grey camera's
    ``(events, rows, columns, 1)`` has its channel last; every other layout ends in rows and columns."""
    return 1 if len(shape) == 4 and shape[-1] == 1 and shape[1] > 1 else len(shape) - 2


def stored_frames(node: Any) -> StoredFrames:
    """The frames of a stored image field as an ``(N, H, W)`` stack: :class:`StoredFrames`."""
    return StoredFrames(node)


def server_of(client: Any) -> Any:
    """The embedded server behind a client from :func:`local_tiled` (``None`` for any other client)."""
    return _SERVERS.get(id(client))


def _start_daemon(make: Any) -> Any:
    """Call ``make`` on a daemon thread, so the threads it starts are daemons too (threads inherit it).

    An embedded server must not keep the Python process (an IPython session, a
    script) alive after its last line: non-daemon threads are joined before
    ``atexit`` handlers could stop them.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["server"] = make()
        except BaseException as exc:  # re-raised on the caller's thread
            box["error"] = exc

    t = threading.Thread(target=run, name="tiled-start", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["server"]


def close_tiled(client: Any) -> None:
    """Close a client of :func:`open_tiled`: its embedded server too, if it has one."""
    if server_of(client) is not None:
        close_local_tiled(client)
    else:
        client.context.close()  # the connection pool, not the server


def close_local_tiled(client: Any) -> None:
    """Close a client returned by :func:`local_tiled` and stop its embedded server."""
    client.context.close()
    server = _SERVERS.pop(id(client), None)
    if server is not None:
        server.close()
