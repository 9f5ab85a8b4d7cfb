"""``bluesky-tomogan view --tiled``: the live views of runs as a Tiled server stores them, while they are written.

For an office, a laptop or a status page that reaches the data through Tiled only (no 0MQ or Kafka from the
beamline's network, no mount of its files): the newest denoised frame (with its raw one and its QC flags) and
the newest update of the live slice, read back from the run during the scan. :class:`TiledLiveViews` asks the
server every ``interval`` seconds for what is new, and reads one frame a panel, only when a row is new: what a
poll costs does not grow with the run (a few small requests, and the run's short ``row`` column for the slice
view).

A run is seen as it is written only where its writer stores each row as it comes: bluesky-tiled-plugins'
``TiledWriter(client, batch_size=1)``, as ``serve --store`` makes it. Its default batches 10,000 rows and
writes the rest at the stop, so a view sees such a run at its end (and says why, once, after
:data:`NOTHING_STORED_HINT_S`). Writing each row costs the writer a request a row, on the RunEngine's thread
where the RunEngine feeds it: docs/callback.md, "Watching a run through Tiled", has the measured cost.

It polls rather than subscribes: Tiled's live subscriptions (bluesky-tiled-plugins' ``subscribe_to_streams``)
need a server configured with a streaming cache, which many are not; a poll works with any server, and a
frame a second is what a person watching can take in. A server that stops answering is said once and asked
again at the next poll; the views show what they had.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..callbacks.derived_stream import exposures_per_event
from ..callbacks.live_view import Panels, ShownFrame, ShownSlice, draw_frame, draw_slice
from ..callbacks.reconstruction import STREAM as RECONSTRUCTION
from ..errors import TomoGANError
from ..storage import derived_streams, stored_frames
from .viewer import FRAMES_PNG, SLICES_PNG, where_to_show

__all__ = ["TiledLiveViews", "run_tiled_viewer"]

log = logging.getLogger(__name__)

#: Seconds a running run may show no denoised row before the view says why that may be (a batching writer).
NOTHING_STORED_HINT_S = 10.0


def _label(run: Any) -> str:
    """``scan 12 (1a2b3c4d)``: how the views name a run, as the document-fed ones do."""
    start = run.metadata.get("start") or {}
    return f"scan {start.get('scan_id', '?')} ({str(start.get('uid', ''))[:8]})"


def _ended(run: Any) -> bool:
    return bool(run.metadata.get("stop"))


class TiledLiveViews:
    """The newest denoised frame and the newest live slice of a run stored in Tiled, polled.

    Parameters
    ----------
    client : tiled Container
        The catalog the runs are written to (``tiled.client.from_uri(...)``).
    run : str, optional
        The uid (or scan id, as the catalog takes it) of the run to show; default: the newest run of
        the catalog at each poll, so the views follow each new scan.
    stream : str
        The raw stream whose denoised frames are shown.
    field : str, optional
        Its image field (default: the first one denoised).
    row : int, optional
        The detector row of the slice view (default: the middle one of the rows reconstructed).
    frames_fig, slices_fig : matplotlib Figure, optional
        Where to draw (default: new figures, made at the first draw).
    save : path-like, optional
        A directory: the views are also written there as ``frames.png`` and ``slices.png`` after each draw.

    Attributes
    ----------
    shown : ShownFrame or None
        The frame the view shows now.
    shown_slice : ShownSlice or None
        The slice the view shows now.

    Examples
    --------
    >>> views = TiledLiveViews(from_uri("http://tiled:8000/api/v1/metadata/raw"))  # doctest: +SKIP
    >>> while True:                                                            # doctest: +SKIP
    ...     views.poll(); plt.pause(1.0)
    """

    def __init__(self, client: Any, run: str | None = None, *, stream: str = "primary", field: str | None = None,
                 row: int | None = None, frames_fig: Any = None, slices_fig: Any = None,
                 save: str | os.PathLike[str] | None = None) -> None:
        self.client, self.run, self.stream, self.field, self.row = client, run, stream, field, row
        directory = None if save is None else Path(save)
        self._frames = Panels(frames_fig, ("raw", "denoised"), None if directory is None else directory / FRAMES_PNG)
        self._slices = Panels(slices_fig, ("filtered back-projection", "denoised"),
                              None if directory is None else directory / SLICES_PNG)
        self.shown: ShownFrame | None = None
        self.shown_slice: ShownSlice | None = None
        self._uid = ""  # the run shown now
        self._rows_seen = 0  # of its derived stream
        self._slice_seen = 0  # of its reconstruction stream
        self._unreachable = False
        self._told: set[str] = set()  # what could not be read this run, said once
        self._seen_at = 0.0  # when the run shown now was first seen

    @property
    def figures(self) -> tuple[Any, Any]:
        """The frames' and the slices' matplotlib figures (``None`` before their first draw)."""
        return self._frames.fig, self._slices.fig

    def poll(self) -> bool:
        """Draw what was stored since the last poll.

        Returns
        -------
        bool
            Whether the run asked for (``run``) has ended and everything of it is drawn; always ``False``
            while following the newest run.
        """
        try:
            run = self.client[self.run] if self.run is not None else self._newest()
        except KeyError:
            raise TomoGANError(f"the catalog has no run {self.run}") from None
        except Exception as exc:  # transport and HTTP errors of many types: ask again at the next poll
            self._say_unreachable(exc)
            return False
        if self._unreachable:
            log.info("live view: Tiled answers again")
            self._unreachable = False
        if run is None:
            return False
        # the stop document first: a run that had ended before this poll read its rows has them all
        ended = _ended(run)
        try:
            self._follow(run, ended)
        except Exception as exc:  # a request refused, a node the server cannot give: the next poll tries again
            self._say_once("run", f"cannot read run {self._uid[:8]} ({type(exc).__name__}: {exc}); trying again "
                                  "at each poll")
            return False
        return self.run is not None and ended

    def _newest(self) -> Any:
        runs = self.client.values()
        return runs.last() if len(runs) else None

    def _say_unreachable(self, exc: BaseException) -> None:
        if not self._unreachable:
            log.warning("live view: Tiled does not answer (%s: %s); asking again at each poll", type(exc).__name__,
                        exc)
        self._unreachable = True

    def _follow(self, run: Any, ended: bool) -> None:
        uid = str((run.metadata.get("start") or {}).get("uid", ""))
        if uid != self._uid:
            self._uid, self._rows_seen, self._slice_seen, self._told = uid, 0, 0, set()
            self._seen_at = time.monotonic()
            self._frames.new_run()
            self._slices.new_run()
            log.info("live view: showing %s", _label(run))
        self._newest_frame(run)
        self._newest_slice(run)
        if not self._rows_seen and not ended and time.monotonic() - self._seen_at > NOTHING_STORED_HINT_S:
            self._say_once("nothing stored", (
                f"no denoised frame of {_label(run)} is stored after {NOTHING_STORED_HINT_S:.0f} s: nothing denoises "
                f"its {self.stream!r} stream, or its TiledWriter writes rows in batches (bluesky-tiled-plugins: "
                "10,000 at a time, the rest at the run's stop); one made with batch_size=1 stores each row as it "
                "comes (serve --store does)"))

    def _newest_frame(self, run: Any) -> None:
        derived = {field: name for (stream, field), name in derived_streams(run).items() if stream == self.stream}
        field = self.field if self.field is not None else next(iter(sorted(derived)), None)
        if field not in derived:
            return
        rows = run[derived[field]]
        if f"{field}_denoised" not in rows:  # described, no frame stored yet
            return
        denoised = rows[f"{field}_denoised"]
        n = int(denoised.shape[0])
        if f"{field}_source_seq_num" in rows:  # the rows' columns and their frames are written apart: both there
            n = min(n, int(rows[f"{field}_source_seq_num"].shape[0]))
        if n <= self._rows_seen:
            return
        self._rows_seen = n
        last = n - 1

        def cell(column: str, default: Any = "") -> Any:
            return rows[column][last] if column in rows else default

        seq_num = int(cell(f"{field}_source_seq_num", 0))
        exposure = int(cell(f"{field}_source_exposure", 0))
        raw = self._read(lambda: self._raw_frame(run, field, seq_num, exposure), "raw frames")
        frame = self._read(lambda: np.asarray(denoised[last]), "denoised frames")
        self.shown = ShownFrame(seq_num, raw, frame, str(cell(f"{field}_qc_flags")), str(cell(f"{field}_qc_error")),
                                str(cell(f"{field}_model")))
        draw_frame(self._frames, self.shown, _label(run), f"{self.stream}/{field}")

    def _raw_frame(self, run: Any, field: str, seq_num: int, exposure: int) -> np.ndarray | None:
        """The raw frame of a derived row: event ``seq_num`` of the raw stream (its ``exposure``-th frame); a
        stream's seq_nums count its events from 1."""
        if seq_num < 1 or self.stream not in run:
            return None
        raw = run[self.stream]
        key = (raw.metadata.get("data_keys") or {}).get(field)
        if key is None or field not in raw:
            return None
        frames = stored_frames(raw[field])
        index = (seq_num - 1) * exposures_per_event(key) + exposure
        return np.asarray(frames[index]) if index < len(frames) else None

    def _newest_slice(self, run: Any) -> None:
        if RECONSTRUCTION not in run:
            return
        stream = run[RECONSTRUCTION]
        if "slice" not in stream or "row" not in stream:  # described, no slice stored yet
            return
        n = int(stream["slice"].shape[0])
        if n <= self._slice_seen:
            return
        self._slice_seen = n
        rows = np.asarray(stream["row"].read()).astype(int)[:n]
        made = np.unique(rows)
        row = self.row if self.row is not None else int(made[len(made) // 2])
        where = np.flatnonzero(rows == row)
        if not len(where):
            return
        i = int(where[-1])

        def cell(column: str, default: Any) -> Any:
            return stream[column][i] if column in stream else default

        fbp = self._read(lambda: np.asarray(stream["slice_fbp"][i]) if "slice_fbp" in stream else None, "slices")
        denoised = self._read(lambda: np.asarray(stream["slice"][i]), "slices")
        self.shown_slice = ShownSlice(i + 1, row, int(cell("projections", 0)), bool(cell("final", False)),
                                      str(cell("note", "")), fbp, denoised)
        draw_slice(self._slices, self.shown_slice, _label(run))

    def _read(self, read: Callable[[], np.ndarray | None], what: str) -> np.ndarray | None:
        """``read()``, or ``None`` where Tiled cannot give it (a frame file it cannot read): the view shows
        what it has and says why once a run."""
        try:
            return read()
        except Exception as exc:  # any read's failure: the panel says "not available"
            self._say_once(what, f"Tiled cannot give the {what} of run {self._uid[:8]} ({type(exc).__name__}: "
                                 f"{exc}); shown without them")
            return None

    def _say_once(self, what: str, message: str) -> None:
        """Warn of ``what`` once a run: a poll a second must not fill the log with the same failure."""
        if what not in self._told:
            self._told.add(what)
            log.warning("live view: %s", message)


def run_tiled_viewer(where: str, *, run: str | None = None, stream: str = "primary", row: int | None = None,
                     save: str | os.PathLike[str] | None = None, interval: float = 1.0,
                     stop: Callable[[], bool] | None = None) -> int:
    """Show the live views of the runs in the Tiled catalog at ``where`` until SIGTERM/SIGINT (or ``run`` ends).

    Parameters
    ----------
    where : str
        A Tiled server's URI (``?api_key=`` where it needs one): a beamline's, or the embedded server of the
        session that writes the runs (``storage.server_of(client).uri`` there). Not a store's directory: see
        Raises.
    run : str, optional
        The run to show (its uid); the viewer ends once it has ended and its last rows are drawn.
        Default: always the newest run, until stopped.
    stream, row, save
        As for :func:`~bluesky_tomogan.serve.viewer.run_viewer`.
    interval : float
        Seconds between polls of the server.
    stop : callable, optional
        Asked after each poll; the viewer ends when it returns true (for tests and embedding).

    Raises
    ------
    TomoGANError
        No window can be shown here and no ``save`` directory was given; the server cannot be reached at
        the start; ``run`` is not in the catalog; ``where`` is a directory (an embedded store's tables are one
        DuckDB file that the first process to use it locks: a viewer would lock out the session writing it).
    """
    import signal

    from ..storage import close_tiled, open_tiled, stored_run

    if interval <= 0:
        raise TomoGANError(f"interval must be > 0 seconds, got {interval}")
    if "://" not in where:
        # an embedded store's tables are one DuckDB file, locked by the first process that reads or writes them:
        # a viewer that opened it (reading an older run, say) would stop a session started later from storing rows
        raise TomoGANError(
            f"{where} is a directory: watch a running server instead, by its URI (the session's embedded one: "
            "bluesky_tomogan.storage.server_of(client).uri there; the profile prints it). A viewer of the store "
            "itself would lock its tables against the session that writes them")
    windows, directory = where_to_show(save)
    client = open_tiled(where, TomoGANError)
    if run is not None:
        try:
            stored_run(client, run, TomoGANError, f"run {run} in {where.split('?')[0]}")
        except TomoGANError:
            close_tiled(client)
            raise
    stopping = False

    def ask_to_stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, ask_to_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    log.info("viewing %s every %.1f s%s", where.split("?")[0], interval,
             f", writing {directory}/{FRAMES_PNG} and {SLICES_PNG}" if directory else "")
    try:
        views = TiledLiveViews(client, run, stream=stream, row=row, save=directory)
        if windows:
            import matplotlib.pyplot as plt

            plt.ion()
        while not stopping:
            if views.poll() or (stop is not None and stop()):
                break
            _wait(interval, windows)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        close_tiled(client)
    return 0


def _wait(seconds: float, windows: bool) -> None:
    """Sleep, letting open windows handle their events meanwhile (a window must not freeze between polls)."""
    if not windows:
        time.sleep(seconds)
        return
    import matplotlib.pyplot as plt

    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if plt.get_fignums():
            plt.pause(min(0.05, left))
        else:
            time.sleep(min(0.05, left))
