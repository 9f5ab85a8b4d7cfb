"""The tables of an embedded Tiled server, used by one thread at a time.

An embedded server (:func:`~bluesky_tomogan.storage.local_tiled`, Tiled's ``SimpleTiledServer``: the demo's and
the profile's) keeps the table of every stream (the events' scalar columns: seq_num, time, the QC metrics) in one
DuckDB file, through one ADBC connection that Tiled lends to every thread of the server at once (a
``StaticPool``: Tiled gives DuckDB no pool). An ADBC connection is not thread-safe. A client reading a stream's
table while TiledWriter appended rows to it (a live view polling a running scan: ``bluesky-tomogan view
--tiled``) got "500 Internal Server Error" back, and once a segmentation fault in the connection's ``commit``
ended the process, the one the RunEngine runs in (the suite, ``tests/test_tiled_view.py``, under ``pytest -n 2``).
``python benchmarks/tiled_table_race.py --guard off`` shows the errors.

:func:`lend_one_at_a_time` puts a lock around the pool: a thread holds the connection from ``connect()`` until it
closes it, as every use in Tiled does (``with closing(storage.connect())``), so table creation, appends, reads
and deletions take turns. A Tiled server in a process of its own with PostgreSQL tables (a beamline's) pools
real connections and needs none of this.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["lend_one_at_a_time", "lends_one_at_a_time"]

log = logging.getLogger(__name__)


class _Lent:
    """A connection of the pool, lent under the pool's lock until it is closed."""

    def __init__(self, connection: Any, lock: threading.RLock) -> None:
        self._connection, self._lock, self._open = connection, lock, True

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        try:
            self._connection.close()  # back to the pool
        finally:
            self._lock.release()

    def __enter__(self) -> _Lent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


class _OneAtATime:
    """A connection pool that lends its connection to one thread at a time (re-entrant for that thread).

    The pool itself (and with it the DuckDB connection, which locks the file against other processes) is made
    at the first ``connect()``, as Tiled makes it: a process that never reads a table never holds the file.
    """

    def __init__(self, make_pool: Callable[[], Any]) -> None:
        self._make_pool, self._pool = make_pool, None
        self._lock = threading.RLock()

    @property
    def pool(self) -> Any:
        """Tiled's own pool (made now if it was not yet)."""
        with self._lock:
            if self._pool is None:
                self._pool = self._make_pool()
            return self._pool

    def connect(self) -> _Lent:
        self._lock.acquire()
        try:
            return _Lent(self.pool.connect(), self._lock)
        except BaseException:
            self._lock.release()
            raise

    def dispose(self) -> None:
        """Tiled's ``Storage.dispose``: a pool never made has nothing to dispose of."""
        if self._pool is not None:
            self._pool.dispose()

    def __getattr__(self, name: str) -> Any:  # status() and the rest: the pool's own
        return getattr(self.pool, name)


def lend_one_at_a_time(storage: Any) -> bool:
    """Make ``storage`` (an embedded server's ``SQLStorage``) lend its connection to one thread at a time.

    Returns
    -------
    bool
        Whether it now does (also where it already did); ``False``, with a warning, where this Tiled's storage
        has no connection pool of the kind that this knows (its reads and writes then go on unguarded).
    """
    if lends_one_at_a_time(storage):
        return True
    made = getattr(type(storage), "_connection_pool", None)  # Tiled's cached property: the pool, at its first use
    if not isinstance(made, functools.cached_property):
        log.warning("this Tiled's table storage has no connection pool that bluesky-tomogan knows: reads of a "
                    "stream's table during a scan may fail or crash the embedded server (tiled_tables)")
        return False
    existing = storage.__dict__.get("_connection_pool")  # where the cached property keeps its value
    # the pool as Tiled makes it, at the first connect(); or the one it has made already
    storage.__dict__["_connection_pool"] = _OneAtATime(
        (lambda: existing) if existing is not None else (lambda: made.func(storage)))
    return True


def lends_one_at_a_time(storage: Any) -> bool:
    """Whether ``storage`` lends its connection to one thread at a time (:func:`lend_one_at_a_time`)."""
    return isinstance(storage.__dict__.get("_connection_pool"), _OneAtATime)
