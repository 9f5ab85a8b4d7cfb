"""The embedded server's catalog, checked and made in this process instead of in a new Python.

Tiled's ``SimpleTiledServer`` opens its SQLite catalog with ``catalog.from_uri(..., init_if_not_exists=True)``,
which runs ``python -m tiled catalog init --if-not-exists`` in a subprocess every time, for a store made
before as for a new one: a Python started and Tiled imported only to find the tables there already. That was
most of the time an embedded store took to open (:func:`~bluesky_tomogan.storage.local_tiled`: the profile's,
the demo's, ``serve --store``'s, ``reprocess``'s, each reopening of a store in an IPython session). On an
Intel Xeon with 2 cores, median of 5 (``python benchmarks/tiled_open.py --repeat 5``): a new store 5.3 s with
the subprocess, 1.2 s without it; a store made before 5.6 s and 1.4 s.

:func:`catalogs_made_here` does, while a server is made, what that subprocess does, in this process: a catalog
at Tiled's required revision is used as it is; a new (empty) one gets Tiled's tables and its revision stamp, by
Tiled's own functions (``initialize_database``, ``stamp_head``), as ``tiled catalog init`` makes them (the same
tables and rows; ``tiled catalog init`` then finds it initialised). A catalog of another Tiled version, or a
file that is no SQLite database, is an :class:`~bluesky_tomogan.errors.OutputPathError` that says what to do
(Tiled says either in a traceback of its subprocess); anything else that fails goes the subprocess's way, so
its error is Tiled's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import OutputPathError

__all__ = ["catalogs_made_here", "prepare_catalog"]

log = logging.getLogger(__name__)

#: one server made at a time under the replaced ``tiled.catalog.from_uri`` (it is a module attribute)
_REPLACING = threading.Lock()


def prepare_catalog(uri: str) -> bool:
    """Make the catalog at ``uri`` ready to serve as ``tiled catalog init --if-not-exists`` would, in this process.

    Parameters
    ----------
    uri : str
        The catalog: a file path or an SQLAlchemy URI (``sqlite+aiosqlite:///...``).

    Returns
    -------
    bool
        True where the catalog is ready: it was at Tiled's required revision, or it was empty and now has
        Tiled's tables stamped with that revision. False where something else failed (a catalog file this
        process may not create, say): Tiled's own initialisation is to say what is wrong.

    Raises
    ------
    OutputPathError
        The catalog was written by another version of Tiled and needs ``tiled catalog upgrade-database``, or
        it is no database SQLite can read (Tiled's own message for either is a traceback of its subprocess).

    Notes
    -----
    Runs an event loop of its own (``asyncio.run``), so it must be called from a thread without one, as
    :func:`~bluesky_tomogan.storage.local_tiled` does (its server is made on a thread of its own).
    """
    import sqlalchemy.exc
    from sqlalchemy.ext.asyncio import create_async_engine
    from tiled.alembic_utils import DatabaseUpgradeNeeded, UninitializedDatabase, check_database, stamp_head
    from tiled.catalog.alembic_constants import ALEMBIC_DIR, ALEMBIC_INI_TEMPLATE_PATH
    from tiled.catalog.core import ALL_REVISIONS, REQUIRED_REVISION, initialize_database
    from tiled.utils import ensure_specified_sql_driver

    uri = ensure_specified_sql_driver(str(uri))
    file = _file_of(uri)
    new_file = file is not None and not file.exists()

    async def ready_or_made() -> str:
        engine = create_async_engine(uri)
        try:
            await check_database(engine, REQUIRED_REVISION, ALL_REVISIONS)
            return "ready"
        except UninitializedDatabase:
            await initialize_database(engine)
            return "made"
        finally:
            await engine.dispose()

    try:
        state = asyncio.run(ready_or_made())
        if state == "made":
            with warnings.catch_warnings():  # Alembic's deprecation of Tiled's alembic.ini, not ours to fix
                warnings.filterwarnings("ignore", "No path_separator found", DeprecationWarning)
                stamp_head(ALEMBIC_INI_TEMPLATE_PATH, ALEMBIC_DIR, uri)
            log.info("made a new Tiled catalog at %s", uri)
    except DatabaseUpgradeNeeded as exc:
        raise OutputPathError(f"{exc} (it was written by another version of Tiled): back it up, then run "
                              f"`tiled catalog upgrade-database {uri}`") from exc
    except sqlalchemy.exc.DatabaseError as exc:
        if isinstance(exc, sqlalchemy.exc.OperationalError):  # locked, unreachable: nothing wrong with the file
            return _left_to_tiled(uri, exc, file if new_file else None)
        # not a database, or a damaged one: Tiled would fail the same way
        raise OutputPathError(f"cannot open the Tiled catalog {file or uri}: {exc.orig} (a damaged or foreign "
                              "file: restore it from a backup, or move it away to start an empty catalog)"
                              ) from exc
    except Exception as exc:  # Tiled's own subprocess says what is wrong with it, in Tiled's words
        return _left_to_tiled(uri, exc, file if new_file else None)
    return True


def _left_to_tiled(uri: str, exc: Exception, made: Path | None) -> bool:
    """Log why the catalog goes to Tiled's own initialisation; remove the file this process began (``made``):
    tables without their revision stamp would fail Tiled's own initialisation too."""
    log.warning("the catalog at %s is left to Tiled's own initialisation (%s: %s)", uri, type(exc).__name__, exc)
    if made is not None:
        for path in (made, made.with_name(made.name + "-wal"), made.with_name(made.name + "-shm")):
            path.unlink(missing_ok=True)
    return False


def _file_of(uri: str) -> Path | None:
    """The file of a catalog on this machine (a path, or an ``sqlite`` URI: ``sqlite+aiosqlite:////a/b.db`` is
    ``/a/b.db``): the embedded server's. None for any other: a PostgreSQL catalog is a beamline's server's to
    initialise, with its credentials, and is left to Tiled."""
    from tiled.utils import ensure_specified_sql_driver

    uri = ensure_specified_sql_driver(uri)
    if not uri.startswith("sqlite") or ":memory:" in uri:
        return None
    return Path(uri.split(":///", 1)[1]) if ":///" in uri else None


@contextlib.contextmanager
def catalogs_made_here() -> Iterator[None]:
    """While inside, Tiled servers made in this process open their SQLite catalogs through :func:`prepare_catalog`.

    ``tiled.catalog.from_uri`` (which ``SimpleTiledServer`` looks up as it is made) is replaced, for the
    process, by one that prepares the catalog in this process and then asks Tiled for it without its init
    subprocess; a catalog :func:`prepare_catalog` could not make ready is handed to Tiled as asked, subprocess
    and all. One such block at a time (a lock): another thread's server made meanwhile gets the same treatment.
    """
    import tiled.catalog

    with _REPLACING:
        original: Callable[..., Any] = tiled.catalog.from_uri

        def from_uri(uri: Any, *args: Any, init_if_not_exists: bool = False, **kwargs: Any) -> Any:
            if init_if_not_exists and _file_of(str(uri)) is not None and prepare_catalog(str(uri)):
                init_if_not_exists = False
            return original(uri, *args, init_if_not_exists=init_if_not_exists, **kwargs)

        tiled.catalog.from_uri = from_uri
        try:
            yield
        finally:
            tiled.catalog.from_uri = original

