"""Live views: the newest denoised frame beside its raw one (``LiveDenoisedView``), and the newest slice of
the live reconstruction beside its filtered back-projection (``LiveSliceView``), while the scan runs.

A matplotlib display made like bluesky's own live plots (a ``QtAwareCallback``: with a Qt
backend its documents are handed to the Qt thread, so it may be fed from any thread, a
``serve`` worker's included; made safe with bluesky's ``make_class_safe``, so a display that
fails is logged and never touches the scan). It reads documents only: subscribe it to a
``TomoGANCallback`` (``cb.subscribe(LiveDenoisedView())``) or to anything that relays that
callback's documents (bluesky's 0MQ ``RemoteDispatcher`` beside ``bluesky-tomogan serve``).

The derived stream names its raw stream and field (its ``tomogan`` configuration) and each row
its raw frame (``<field>_source_seq_num``); the denoised frame is read from the file its
``StreamDatum`` names, and the raw one from its event (inline), its ``StreamResource`` file or
its legacy ``Resource`` (through ``event_model.Filler``). Nothing is read for a row that is not
drawn: at most one redraw per ``interval`` seconds, always the newest row, and the run's last
row at its stop, so the cost does not grow with the frame rate. Memory is bounded: of the raw
frames that travel inside events, only the newest ``keep`` are held (a derived row comes a few
frames after its raw one); of files, only where each frame is.

Windows of a GUI toolkit may be touched only from the main thread. With Qt, bluesky's teleporter
hands the documents to it. Tk, GTK, wx and macOS windows have no such hand-over, so a view fed
from another thread (the RunEngine's, the callback's worker) keeps its newest picture and leaves
the drawing to the main thread: to :class:`LiveViewDuringTask` while a scan runs (give it to the
RunEngine: ``RunEngine(during_task=LiveViewDuringTask())``), and to a timer on its window when the
GUI's event loop runs (at the IPython prompt, in ``plt.pause``).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import event_model
import numpy as np
from bluesky.callbacks.core import make_class_safe
from bluesky.callbacks.mpl_plotting import QtAwareCallback
from bluesky.run_engine import DefaultDuringTask

from ..frame_roles import FrameRoles
from ..handlers import default_handler_registry, fill_datum
from ..stream_readers import FrameReader, reader_for, remapped, scalar_rows
from .derived_stream import SOURCE, derived_from, exposures_per_event, image_fields
from .reconstruction import STREAM as RECONSTRUCTION

__all__ = ["LiveDenoisedView", "LiveSliceView", "LiveViewDuringTask", "ShownFrame", "ShownSlice", "shows_windows",
           "draw_deferred"]

log = logging.getLogger(__name__)

#: The reconstruction stream's two slices of a row: the denoised one and its filtered back-projection.
SLICE_KEYS = ("slice", "slice_fbp")


def shows_windows() -> bool:
    """Whether matplotlib's backend here draws in a window that updates live (Qt, Tk, GTK, wx, macOS, a
    notebook's ``nbagg``): not ``agg`` (no display, a queue server's worker) nor an inline backend, which
    shows a figure only once its cell has finished."""
    import matplotlib

    backend = matplotlib.get_backend().lower()
    try:
        from matplotlib.backends import BackendFilter, backend_registry
    except ImportError:  # matplotlib before 3.9
        from matplotlib.rcsetup import interactive_bk as interactive  # type: ignore[attr-defined]
    else:
        interactive = backend_registry.list_builtin(BackendFilter.INTERACTIVE)
    return backend in {b.lower() for b in interactive}


def _drawn_by_main_thread_only() -> bool:
    """Windows of a GUI toolkit other than Qt (Tk, GTK, wx, macOS): no teleporter brings them their documents,
    so the main thread draws them (:func:`draw_deferred`)."""
    import matplotlib

    return "qt" not in matplotlib.get_backend().lower() and shows_windows()


def _needs_main_thread() -> bool:
    """Whether drawing here must wait for the main thread: a window of a GUI toolkit, drawn from another thread
    (Qt's are handed over by bluesky's teleporter before they get here)."""
    return threading.current_thread() is not threading.main_thread() and shows_windows()


#: Panels with a picture waiting for the main thread, and whether anything on the main thread has drawn them.
_deferred: weakref.WeakSet[Panels] = weakref.WeakSet()
_deferred_lock = threading.Lock()
_pumped = threading.Event()
_told_no_pump = threading.Event()


def draw_deferred() -> int:
    """Draw every live view's picture that waits for the main thread; call it on the main thread.

    :class:`LiveViewDuringTask` calls it while a scan runs and each view's window timer while the
    GUI's event loop runs; a program with a loop of its own may call it there.

    Returns
    -------
    int
        How many pictures were drawn.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("draw_deferred() draws windows: call it on the main thread")
    _pumped.set()
    with _deferred_lock:
        waiting = list(_deferred)
        _deferred.clear()
    drawn = 0
    for panels in waiting:
        drawn += panels.draw_waiting()
    return drawn


#: Set while a window's timer draws: that draw runs inside the toolkit's own event loop, which shows it when
#: the timer returns, so it does not run the loop again from inside itself (re-entrantly).
_in_event_loop = threading.local()


def _draw_deferred_safely() -> None:
    """:func:`draw_deferred`, its failure logged: a display's failure never reaches a plan or a timer."""
    try:
        draw_deferred()
    except Exception:  # any failure of a display
        log.exception("live view: drawing on the main thread failed")


def _draw_deferred_by_timer() -> None:
    """:func:`draw_deferred` for a matplotlib timer (which drops a callback that returns 0), inside its loop."""
    _in_event_loop.active = True
    try:
        _draw_deferred_safely()
    finally:
        _in_event_loop.active = False


def _process_gui_events() -> None:
    """Let every window of pyplot handle its events (moves, resizes, redraws) without blocking, and without
    making any of them the current figure (the session's own ``plt.plot`` must not land in a live view)."""
    from matplotlib._pylab_helpers import Gcf

    for manager in Gcf.get_all_fig_managers():
        try:
            manager.canvas.flush_events()
        except Exception:  # a window closed meanwhile: the next call sees it gone
            log.debug("live view: events of figure %s", manager.num, exc_info=True)


class LiveViewDuringTask(DefaultDuringTask):
    """What the main thread does while the RunEngine runs a plan: keep the live views' windows drawn.

    With Qt it is bluesky's :class:`~bluesky.run_engine.DefaultDuringTask` (its teleporter hands the
    documents to the main thread). With any other GUI backend (Tk, GTK, wx, macOS) it draws the views'
    waiting pictures (:func:`draw_deferred`) and handles the windows' events every ``poll`` seconds
    until the plan is done. Without matplotlib, or with a backend without windows, it just waits.

    Parameters
    ----------
    poll : float
        Seconds between two rounds of drawing and window events.

    Examples
    --------
    >>> RE = RunEngine({}, during_task=LiveViewDuringTask())   # doctest: +SKIP
    """

    def __init__(self, poll: float = 0.05) -> None:
        if not poll > 0:
            raise ValueError(f"poll must be > 0 seconds, got {poll}")
        super().__init__()
        self.poll = poll

    def block(self, blocking_event: threading.Event) -> None:
        """Wait for ``blocking_event`` (the plan is done), drawing the live views meanwhile."""
        if ("matplotlib" not in sys.modules or threading.current_thread() is not threading.main_thread()
                or not _drawn_by_main_thread_only()):
            return super().block(blocking_event)
        while not blocking_event.wait(self.poll):
            self._round()
        self._round()  # what the plan's last documents left
        return None

    @staticmethod
    def _round() -> None:
        _draw_deferred_safely()
        _process_gui_events()  # each window's failure is its own, logged


def _is_open(fig: Any) -> bool:
    """Whether pyplot still manages ``fig`` (its window has not been closed)."""
    import matplotlib.pyplot as plt

    return bool(plt.fignum_exists(fig.number))


@dataclass(frozen=True)
class ShownFrame:
    """What the view shows now: one derived row and its frames (``raw`` is ``None`` where it could not be had)."""

    seq_num: int  # the raw frame's
    raw: np.ndarray | None
    denoised: np.ndarray | None
    flags: str  # comma-separated QC flags
    error: str  # why the frame was not denoised (empty if it was)
    model: str
    role: str | None = None  # "dark", "flat", "invalid" where the raw event says so (frame_roles); else None


@dataclass(frozen=True)
class ShownSlice:
    """What the slice view shows now: one update of one row (a slice is ``None`` where it could not be read)."""

    seq_num: int  # the reconstruction stream's
    row: int  # the detector row
    projections: int  # how many it was reconstructed from
    final: bool
    note: str  # what the reconstruction said of it (a rotation centre probably wrong, ...)
    fbp: np.ndarray | None
    slice: np.ndarray | None  # denoised


class _Bounded(OrderedDict[Any, Any]):
    """An insertion-ordered dict that forgets its oldest entries beyond ``limit``."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


def _from_file(where: tuple[FrameReader, int]) -> np.ndarray:
    """Row ``index`` of a file, ``where`` being ``(reader, index)``."""
    read, index = where
    return np.asarray(read(index, index + 1)[0])


def _read_or_none(read: Callable[[], np.ndarray | None], what: str, run: str, told: set[str]) -> np.ndarray | None:
    """``read()``, or ``None`` where the file cannot be read (a moved file, another machine's path): a view then
    shows what it has, and says why once a run for each ``what`` (``told``: those said)."""
    try:
        return read()
    except Exception as exc:  # any reader's failure: the display goes on without this frame
        if what not in told:
            told.add(what)
            cause: BaseException = exc
            while cause.__cause__ is not None:  # event_model wraps a handler's own error: say that one
                cause = cause.__cause__
            log.warning("live view: the %s of %s cannot be read (%s: %s); shown without them",
                        what, run, type(cause).__name__, cause)
        return None


def _close(readers: Mapping[str, tuple[str, FrameReader]]) -> None:
    """Close a run's frame readers (a file already gone has nothing to close)."""
    for _, read in readers.values():
        try:
            read.close()
        except Exception:  # any reader's failure to close: the view goes on
            log.debug("live view: closing a reader failed", exc_info=True)


#: The most pixels a side of a frame as it is drawn: a window shows no more, and a redraw then costs the
#: same at any frame size (about 0.1 s; every pixel of a 4096x4096 pair: 2.3 s; benchmarks/live_view_draw.py).
DISPLAY_PIXELS = 768


def _for_display(frame: np.ndarray) -> np.ndarray:
    """``frame`` with every k-th pixel a side, k the least that leaves at most :data:`DISPLAY_PIXELS` a side."""
    step = -(-max(frame.shape) // DISPLAY_PIXELS)
    return frame[::step, ::step] if step > 1 else frame


class Panels:
    """Two images side by side on one intensity scale, with a title over both: what both views draw.

    The figure is made at the first draw (or is the one given); one it made and whose window was
    closed is made again at the next :meth:`new_run`."""

    def __init__(self, fig: Any, names: tuple[str, str], save: str | os.PathLike[str] | None = None) -> None:
        self.fig, self.names = fig, names
        self.save = None if save is None else Path(save)
        self._own = fig is None
        self._images: list[Any] = []
        self._waiting: tuple[Any, ...] | None = None  # the newest picture, off the main thread (under the lock)
        self._timer: Any = None
        self._reopen = False

    def new_run(self) -> None:
        """A new run: a window of its own that was closed since the last run opens again at the next draw (on
        the thread that draws: the figure is never touched from another)."""
        self._reopen = True

    def _reopen_if_closed(self) -> None:
        self._reopen = False
        if self._own and self.fig is not None and not _is_open(self.fig):
            if self._timer is not None:
                self._timer.stop()
            self.fig, self._images, self._timer = None, [], None

    def draw(self, frames: list[np.ndarray | None], scale: np.ndarray | None, title: str, alarm: bool) -> None:
        """Show ``frames`` (``None``: "not available") on the robust range (1st-99th percentile) of ``scale``;
        off the main thread with a GUI toolkit's windows, keep them for it (:func:`draw_deferred`)."""
        if _needs_main_thread():
            with _deferred_lock:
                self._waiting = (frames, scale, title, alarm)  # the newest picture only: memory stays bounded
                _deferred.add(self)
            if not _pumped.is_set() and not _told_no_pump.is_set():
                _told_no_pump.set()
                log.warning("live view: windows of this matplotlib backend are drawn on the main thread only; "
                            "give the RunEngine during_task=LiveViewDuringTask() to see them during the scan "
                            "(bluesky_tomogan.callbacks.live_view), or use a Qt backend (%%matplotlib qt)")
            return
        self._draw_now(frames, scale, title, alarm)

    def draw_waiting(self) -> int:
        """Draw the picture kept for the main thread, if any (main thread); 1 if one was drawn."""
        with _deferred_lock:
            waiting, self._waiting = self._waiting, None
        if waiting is None:
            return 0
        self._draw_now(*waiting)
        return 1

    def _draw_now(self, frames: list[np.ndarray | None], scale: np.ndarray | None, title: str, alarm: bool) -> None:
        import matplotlib.pyplot as plt

        if self._reopen:
            self._reopen_if_closed()
        if self.fig is None:
            self.fig = plt.figure(figsize=(10, 5))
            if _drawn_by_main_thread_only():
                # pictures that come when no plan runs (a reconstruction's last update) are drawn by the window's
                # own timer, whenever its toolkit's event loop runs (the IPython prompt's input hook, plt.pause)
                self._timer = self.fig.canvas.new_timer(interval=250)
                self._timer.add_callback(_draw_deferred_by_timer)
                self._timer.start()
        lo, hi = (0.0, 1.0)
        if scale is not None and np.isfinite(scale).any():
            lo, hi = np.nanpercentile(_for_display(scale), [1, 99])
        hi = hi if hi > lo else lo + 1
        if not self._images:
            axes = self.fig.subplots(1, 2, sharex=True, sharey=True)
            for ax in axes:
                ax.set_axis_off()
            self._images = [ax.imshow(np.zeros((2, 2)), cmap="gray") for ax in axes]
        for image, frame, name in zip(self._images, frames, self.names, strict=True):
            shown = frame if frame is not None else np.full((2, 2), np.nan)
            image.set_data(_for_display(shown))
            image.set_extent((-0.5, shown.shape[1] - 0.5, shown.shape[0] - 0.5, -0.5))  # in detector pixels
            image.set_clim(lo, hi)
            image.axes.set_title(name if frame is not None else f"{name}: not available")
        self.fig.suptitle(title, color="red" if alarm else "black")
        self.fig.canvas.draw_idle()
        if not getattr(_in_event_loop, "active", False):  # the loop that called the timer draws it when it returns
            self.fig.canvas.flush_events()
        if self.save is not None:
            self._write_png(self.save)

    def _write_png(self, path: Path) -> None:
        """The figure as ``path``, replaced whole: a web page or logbook that shows it never reads half a file."""
        part = path.with_name(f".{path.name}.part")
        try:
            self.fig.savefig(part, format="png", dpi=80)
            os.replace(part, path)
        except OSError as exc:  # a full disk, a directory gone: the view goes on without its file
            log.warning("live view: cannot write %s: %s", path, exc)


def draw_frame(panels: Panels, shown: ShownFrame, run: str, what: str) -> None:
    """Draw a denoised frame beside its raw one, titled with the run, ``what`` (``stream/field``), the frame,
    the network and its QC flags (red where flagged or not denoised)."""
    # one intensity scale for both, the raw frame's: what denoising removed shows
    state = shown.error or (f"QC: {shown.flags}" if shown.flags else "QC: no flags")
    panels.draw([shown.raw, shown.denoised], shown.raw if shown.raw is not None else shown.denoised,
                f"{run}  {what} frame {shown.seq_num}{f' ({shown.role})' if shown.role else ''}  {shown.model}\n"
                f"{state}", alarm=bool(shown.error or shown.flags))


def draw_slice(panels: Panels, shown: ShownSlice, run: str) -> None:
    """Draw a live slice beside its filtered back-projection, titled with the run, the row, how many
    projections it was made from and whether it is the final one (red where the reconstruction noted
    something)."""
    state = "final" if shown.final else "so far"
    note = f"\n{shown.note}" if shown.note else ""
    # one intensity scale for both, the denoised slice's: the back-projection's noise and streaks show
    panels.draw([shown.fbp, shown.slice], shown.slice if shown.slice is not None else shown.fbp,
                f"{run}  slice of row {shown.row} from {shown.projections} projections ({state}){note}",
                alarm=bool(shown.note))


@make_class_safe(logger=log)
class LiveDenoisedView(QtAwareCallback):
    """Show the newest denoised frame of a run beside its raw frame, with its QC flags, during the scan.

    Parameters
    ----------
    stream : str
        The raw stream whose derived stream is shown (``"primary"``: the projections).
    field : str, optional
        The image field (default: the first one the derived streams of ``stream`` denoise).
    interval : float
        Seconds between redraws at the most; rows in between are skipped, not read.
    keep : int
        Raw frames that travel inside events, held until their derived row comes (the newest
        ones). A row whose raw frame was let go shows the denoised frame alone.
    fig : matplotlib Figure, optional
        Where to draw (default: a new figure).
    root_map : dict, optional
        Where this machine sees the files of other machines, as for ``TomoGANCallback``.
    handler_registry : dict, optional
        Spec -> handler for raw frames in legacy ``Resource``/``Datum`` files (default:
        :func:`~bluesky_tomogan.handlers.default_handler_registry`).
    use_teleporter : bool, optional
        As for bluesky's live plots (default: with a Qt backend).
    save : path-like, optional
        Also write the figure to this PNG file after each draw, replaced whole (for a status web
        page or a logbook; without a display, with matplotlib's ``agg`` backend).

    Examples
    --------
    >>> cb = TomoGANCallback(load_denoiser(), streams=["primary"])   # doctest: +SKIP
    >>> cb.subscribe(LiveDenoisedView())                              # doctest: +SKIP
    """

    def __init__(self, stream: str = "primary", field: str | None = None, *, interval: float = 0.5,
                 keep: int = 16, fig: Any = None, root_map: Mapping[str, str] | None = None,
                 handler_registry: Mapping[str, Any] | None = None, use_teleporter: bool | None = None,
                 save: str | os.PathLike[str] | None = None) -> None:
        if interval < 0:
            raise ValueError(f"interval must be >= 0 seconds, got {interval}")
        if keep < 1:
            raise ValueError(f"keep must be >= 1 frame, got {keep}")
        super().__init__(use_teleporter=use_teleporter)
        self.stream, self.interval, self.keep = stream, interval, keep
        self._asked_field = field
        self.field = field  # the field shown in this run: the one asked for, else the first derived one
        self.root_map = dict(root_map or {})
        self._registry = dict(handler_registry) if handler_registry is not None else None
        self._panels = Panels(fig, ("raw", "denoised"), save)
        self.shown: ShownFrame | None = None
        self.frames_shown = 0
        self._reset()

    def _reset(self) -> None:
        self._run = ""
        self.field = self._asked_field
        self._derived: dict[str, str] = {}  # derived descriptor uid -> field
        self._raw: set[str] = set()  # raw descriptor uids of the stream
        self._readers: dict[str, tuple[str, FrameReader]] = {}  # StreamResource uid -> (data key, reader)
        self._denoised_at = _Bounded(4 * self.keep)  # seq_num of a derived row -> (reader, index)
        self._raw_at = _Bounded(4 * self.keep)  # (field, raw seq_num) -> (reader, index) in a file
        # (field, raw seq_num) -> frame that came inside its event, or its legacy datum id; of every
        # image field until the derived stream (described before its first row) says which is shown
        self._raw_inline = _Bounded(self.keep)
        self._raw_datum = _Bounded(4 * self.keep)
        self._raw_fields: set[str] = set()
        self._raw_descriptor = ""
        self._raw_keys: dict[str, Any] = {}  # the raw stream's data keys
        self._raw_roles: dict[str, FrameRoles] = {}  # raw descriptor uid -> what its frames are (frame_roles)
        self._role_of = _Bounded(4 * self.keep)  # raw seq_num -> "dark", "flat" or "invalid", where an event says
        self._filler: event_model.Filler | None = None  # made at each start: it must see the run's descriptors
        self._unreadable: set[str] = set()  # what could not be read, said once a run
        self._pending: dict[str, Any] | None = None  # the newest row not drawn yet
        self._drawn_at = -np.inf

    # -- documents -------------------------------------------------------------------------

    def start(self, doc: Any) -> Any:
        self._close_readers()
        self._reset()
        self._panels.new_run()
        self._run = f"scan {doc.get('scan_id', '?')} ({str(doc.get('uid', ''))[:8]})"
        registry = self._registry if self._registry is not None else default_handler_registry()
        # one try, no waiting: a display never holds up the documents behind it
        self._filler = event_model.Filler(registry, root_map=self.root_map, inplace=False, retry_intervals=[0])
        self._filler("start", doc)
        return doc

    def descriptor(self, doc: Any) -> Any:
        if self._filler is not None:
            self._filler("descriptor", doc)
        source = derived_from(doc)
        if source is not None:
            raw_stream, field = source
            if raw_stream == self.stream and (self.field is None or field == self.field):
                self.field = self.field or field
                self._derived[doc["uid"]] = field
        elif doc.get("name") == self.stream and image_fields(doc):
            self._raw_fields.update(image_fields(doc) if self._asked_field is None else [self._asked_field])
            self._raw.add(doc["uid"])
            self._raw_descriptor, self._raw_keys = doc["uid"], dict(doc["data_keys"])
            self._raw_roles[doc["uid"]] = FrameRoles(doc)
        return doc

    def stream_resource(self, doc: Any) -> Any:
        try:
            self._readers[doc["uid"]] = (doc.get("data_key", ""), reader_for(remapped(doc, self.root_map), wait_s=0))
        except (ValueError, KeyError) as exc:  # a file this view cannot read: its frames are not shown
            log.warning("live view: StreamResource %s: %s", doc.get("uid"), exc)
        return doc

    def stream_datum(self, doc: Any) -> Any:
        reader = self._readers.get(doc.get("stream_resource", ""))
        if reader is None:
            return doc
        key, read = reader
        first, seq = doc["indices"]["start"], doc["seq_nums"]["start"]
        rows = range(doc["indices"]["stop"] - first)
        if doc.get("descriptor") in self._derived:
            for k in rows:
                self._denoised_at.put(seq + k, (read, first + k))
            if self._pending is not None and self._pending["row"] in self._denoised_at:
                self._maybe_draw()  # a derived row's StreamDatum comes right after its event page
        elif doc.get("descriptor") in self._raw and key in self._raw_fields:
            for k in rows:  # of every image field: the derived descriptor may come after these
                self._raw_at.put((key, seq + k), (read, first + k))
        elif doc.get("descriptor") in self._raw:
            self._take_roles_in_file(self._raw_roles[doc["descriptor"]], key, read, first, seq, len(rows))
        return doc

    def _take_roles_in_file(self, roles: FrameRoles, key: str, read: FrameReader, first: int, seq: int,
                            n: int) -> None:
        """What ``n`` frames from ``seq`` are, where a fly scan writes it to a file (``key``, from row ``first``):
        read now, a few values, for their titles; rows not in the file yet are left untitled."""
        if not roles.in_file or roles.key is None or key != roles.key.name:
            return
        try:
            values = scalar_rows(read, first, first + n)
        except Exception as exc:  # the frames are still drawn, without "(dark)" or "(flat)"
            log.debug("live view: %s not read: %s", key, exc)
            return
        for k, role in enumerate(roles.of_page({key: values}, n)):
            if role is not None:
                self._role_of.put(seq + k, role)

    def _to_filler(self, name: str, doc: Any) -> Any:
        """Legacy ``Resource``/``Datum`` documents go to the run's Filler, which reads a raw frame if it is drawn."""
        if self._filler is not None:
            self._filler(name, doc)
        return doc

    def resource(self, doc: Any) -> Any:
        return self._to_filler("resource", doc)

    def datum(self, doc: Any) -> Any:
        return self._to_filler("datum", doc)

    def datum_page(self, doc: Any) -> Any:
        return self._to_filler("datum_page", doc)

    def event_page(self, doc: Any) -> Any:
        if doc["descriptor"] in self._raw:
            roles = self._raw_roles[doc["descriptor"]]
            if roles.in_events:  # darks and flats among the projections: the title says which a frame is
                for seq, role in zip(doc["seq_num"], roles.of_page(doc["data"], len(doc["seq_num"])), strict=True):
                    if role is not None:
                        self._role_of.put(seq, role)
            for f in self._raw_fields if self.field is None else {self.field}:
                for seq, value in zip(doc["seq_num"], doc["data"].get(f, ()), strict=False):
                    if isinstance(value, str):  # a legacy datum id: read only if its row is drawn
                        self._raw_datum.put((f, seq), value)
                    else:
                        self._raw_inline.put((f, seq), value)
        field = self._derived.get(doc["descriptor"])
        if field is not None and doc["seq_num"]:
            data, i = doc["data"], len(doc["seq_num"]) - 1  # the newest row of the page
            def column(name: str, default: Any = "") -> Any:
                return data.get(f"{field}_{name}", [default] * (i + 1))[i]

            self._pending = {"row": doc["seq_num"][i], "seq_num": int(column("source_seq_num")),
                             "exposure": int(column("source_exposure", 0)), "flags": str(column("qc_flags")),
                             "error": str(column("qc_error")), "model": str(column("model")),
                             "inline": column("denoised", None)}
            # a frame in a file is drawn when its StreamDatum (just after this page) says where it is;
            # one inside the event, or a row without a frame (dropped, failed), now
            if self._pending["inline"] is not None or self._pending["error"]:
                self._maybe_draw()
        return doc

    def event(self, doc: Any) -> Any:
        self.event_page(event_model.pack_event_page(doc))
        return doc

    def stop(self, doc: Any) -> Any:
        self._draw_pending()  # the run's last row, however soon after the one before
        self._close_readers()
        return doc

    # -- drawing ---------------------------------------------------------------------------

    def _maybe_draw(self) -> None:
        if time.monotonic() - self._drawn_at >= self.interval:
            self._draw_pending()

    def _draw_pending(self) -> None:
        row, self._pending = self._pending, None
        if row is None:
            return
        denoised = row["inline"]
        if denoised is None and row["row"] in self._denoised_at:
            denoised = _read_or_none(lambda: _from_file(self._denoised_at[row["row"]]), "denoised frames",
                                     self._run, self._unreadable)
        raw = _read_or_none(lambda: self._raw_frame(row["seq_num"], row["exposure"]), "raw frames", self._run,
                            self._unreadable)
        self.shown = ShownFrame(row["seq_num"], raw, None if denoised is None else np.asarray(denoised),
                                row["flags"], row["error"], row["model"], self._role_of.get(row["seq_num"]))
        self._draw(self.shown)
        self._drawn_at = time.monotonic()
        self.frames_shown += 1

    def _raw_frame(self, seq_num: int, exposure: int) -> np.ndarray | None:
        f = self.field or ""
        if (f, seq_num) in self._raw_inline:
            frame = self._raw_inline[f, seq_num]
        elif (f, seq_num) in self._raw_at:
            read, index = self._raw_at[f, seq_num]  # an event of N exposures is N frames of the file
            key = self._raw_keys.get(f)
            frame = read.event(index, exposures_per_event(key) if key else 1)
        elif (f, seq_num) in self._raw_datum and self._filler is not None:
            frame = fill_datum(self._filler, self._raw_descriptor, f, self._raw_datum[f, seq_num])
        else:
            return None
        frame = np.asarray(frame)
        if frame.ndim == 3:  # an event of several exposures (or [1, H, W]): the row's own
            frame = frame[exposure] if exposure < len(frame) else frame[0]
        return np.squeeze(frame) if frame.ndim >= 2 else None

    def _draw(self, shown: ShownFrame) -> None:
        draw_frame(self._panels, shown, self._run, f"{self.stream}/{self.field}")

    @property
    def figure(self) -> Any:
        """The matplotlib figure drawn on (``None`` before the first draw)."""
        return self._panels.fig

    # -- files -----------------------------------------------------------------------------

    def _close_readers(self) -> None:
        _close(self._readers)
        self._readers = {}
        if self._filler is not None:
            self._filler.close()
            self._filler = None


@make_class_safe(logger=log)
class LiveSliceView(QtAwareCallback):
    """Show the newest slice of the live reconstruction: its filtered back-projection beside the denoised slice.

    Subscribe it to a :class:`~bluesky_tomogan.callbacks.TomoReconstruction`
    (``rec.subscribe(LiveSliceView())``), or to anything that relays its documents. Each update of the
    ``reconstruction`` stream (every ``every`` projections, and the final one) is drawn, at most one per
    ``interval`` seconds, and the last at the run's stop; the title says the detector row, how many
    projections it was reconstructed from and whether it is the final one.

    Parameters
    ----------
    row : int, optional
        The detector row shown (default: the middle one of the rows reconstructed).
    interval : float
        Seconds between redraws at the most.
    fig : matplotlib Figure, optional
        Where to draw (default: a new figure).
    root_map : dict, optional
        Where this machine sees the files of other machines, as for ``TomoGANCallback``.
    use_teleporter : bool, optional
        As for bluesky's live plots (default: with a Qt backend).
    save : path-like, optional
        Also write the figure to this PNG file after each draw, as ``LiveDenoisedView`` does.
    """

    def __init__(self, row: int | None = None, *, interval: float = 0.5, fig: Any = None,
                 root_map: Mapping[str, str] | None = None, use_teleporter: bool | None = None,
                 save: str | os.PathLike[str] | None = None) -> None:
        if interval < 0:
            raise ValueError(f"interval must be >= 0 seconds, got {interval}")
        super().__init__(use_teleporter=use_teleporter)
        self.row, self.interval = row, interval
        self.root_map = dict(root_map or {})
        self._panels = Panels(fig, ("filtered back-projection", "denoised"), save)
        self.shown: ShownSlice | None = None
        self.slices_shown = 0
        self._reset()

    @property
    def figure(self) -> Any:
        """The matplotlib figure drawn on (``None`` before the first draw)."""
        return self._panels.fig

    def _reset(self) -> None:
        self._run = ""
        self._descriptor = ""
        self._readers: dict[str, tuple[str, FrameReader]] = {}  # StreamResource uid -> (slice | slice_fbp, reader)
        self._at = _Bounded(96)  # (slice key, seq_num) -> (reader, index): the newest updates' only
        self._pending: dict[str, Any] | None = None
        self._drawn_at = -np.inf
        self._unreadable: set[str] = set()  # what could not be read, said once a run

    def start(self, doc: Any) -> Any:
        self._close_readers()
        self._reset()
        self._panels.new_run()
        self._run = f"scan {doc.get('scan_id', '?')} ({str(doc.get('uid', ''))[:8]})"
        return doc

    def descriptor(self, doc: Any) -> Any:
        keys = doc.get("data_keys") or {}
        if doc.get("name") == RECONSTRUCTION and all(keys.get(k, {}).get("source") == SOURCE for k in SLICE_KEYS):
            self._descriptor = doc["uid"]
        return doc

    def stream_resource(self, doc: Any) -> Any:
        if doc.get("data_key") in SLICE_KEYS:
            try:
                self._readers[doc["uid"]] = (doc["data_key"], reader_for(remapped(doc, self.root_map), wait_s=0))
            except (ValueError, KeyError) as exc:
                log.warning("live slice view: StreamResource %s: %s", doc.get("uid"), exc)
        return doc

    def stream_datum(self, doc: Any) -> Any:
        reader = self._readers.get(doc.get("stream_resource", ""))
        if reader is None or doc.get("descriptor") != self._descriptor:
            return doc
        key, read = reader
        first, seq = doc["indices"]["start"], doc["seq_nums"]["start"]
        for k in range(doc["indices"]["stop"] - first):
            self._at.put((key, seq + k), (read, first + k))
        if self._pending is not None and all((k, self._pending["seq_num"]) in self._at for k in SLICE_KEYS):
            if time.monotonic() - self._drawn_at >= self.interval:
                self._draw_pending()
        return doc

    def event_page(self, doc: Any) -> Any:
        if doc["descriptor"] != self._descriptor or not doc["seq_num"]:
            return doc
        rows = [int(r) for r in doc["data"]["row"]]
        if self.row is not None and self.row not in rows:
            return doc  # an update of other rows
        i = len(rows) // 2 if self.row is None else rows.index(self.row)  # default: the middle row of those made
        data = doc["data"]
        self._pending = {"seq_num": int(doc["seq_num"][i]), "row": rows[i],
                         "projections": int(data.get("projections", [0] * len(rows))[i]),
                         "final": bool(data.get("final", [False] * len(rows))[i]),
                         "note": str(data.get("note", [""] * len(rows))[i])}
        return doc

    def event(self, doc: Any) -> Any:
        self.event_page(event_model.pack_event_page(doc))
        return doc

    def stop(self, doc: Any) -> Any:
        self._draw_pending()
        self._close_readers()
        return doc

    def _read(self, key: str, seq_num: int) -> np.ndarray | None:
        where = self._at.get((key, seq_num))
        return None if where is None else _read_or_none(lambda: _from_file(where), "slices", self._run,
                                                        self._unreadable)

    def _draw_pending(self) -> None:
        row, self._pending = self._pending, None
        if row is None:
            return
        fbp, denoised = self._read("slice_fbp", row["seq_num"]), self._read("slice", row["seq_num"])
        self.shown = ShownSlice(**row, fbp=fbp, slice=denoised)
        draw_slice(self._panels, self.shown, self._run)
        self._drawn_at = time.monotonic()
        self.slices_shown += 1

    def _close_readers(self) -> None:
        _close(self._readers)
        self._readers = {}
