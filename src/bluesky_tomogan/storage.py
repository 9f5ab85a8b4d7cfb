"""Storage behind a Tiled URI; by default an embedded Tiled server on local disk.

``local_tiled(path)`` starts Tiled's ``SimpleTiledServer`` on a background
thread (SQLite catalog and files under ``path``), allows it to read the
derived-frame directory ``path/frames`` that ``TomoGANCallback(directory=...)``
writes to (and the callback's per-user default directory), and returns a
connected client. A production beamline passes the
URI of its own (PostgreSQL-backed) Tiled server to ``tiled.client.from_uri``
instead; everything downstream is the same.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from .errors import OutputPathError

__all__ = ["local_tiled", "frames_directory", "close_local_tiled", "derived_streams", "server_of"]

#: Embedded servers by ``id`` of the client that :func:`local_tiled` returned (kept alive until closed).
_SERVERS: dict[int, Any] = {}


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

    root = Path(path).expanduser().resolve()
    readable = [frames_directory(root), default_directory()]
    try:
        for d in readable:
            d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"cannot create the data directory {exc.filename}: {exc}") from exc
    server = _start_daemon(lambda: SimpleTiledServer(directory=root / "tiled", readable_storage=readable))
    client = from_uri(server.uri)  # the URI carries the generated API key
    _SERVERS[id(client)] = server
    return client


def derived_streams(run: Any) -> dict[tuple[str, str], str]:
    """The denoised streams of a run stored in Tiled: ``(raw stream, image field) -> derived stream name``.

    Found by what each stream denoises (its configuration, read from the stream's metadata), not
    by its name: a plan with its own stream called ``denoised`` gets ``denoised_2``.

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

    out = {}
    for name in run:
        # a stream's metadata in Tiled is its descriptor's data keys and configuration
        source = derived_from({**dict(run[name].metadata), "name": name})
        if source is not None:
            out[source] = str(name)
    return out


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


def close_local_tiled(client: Any) -> None:
    """Close a client returned by :func:`local_tiled` and stop its embedded server."""
    client.context.close()
    server = _SERVERS.pop(id(client), None)
    if server is not None:
        server.close()
