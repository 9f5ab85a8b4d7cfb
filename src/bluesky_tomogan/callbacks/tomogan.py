"""``TomoGANCallback``: denoise detector frames during a run into a derived stream of that run.

An :class:`event_model.DocumentRouter` that sits between the RunEngine and
storage. It passes every document through to its own subscribers unchanged
and adds, for each stream that carries 2-D image fields, a derived stream
(``denoised`` for ``primary``, ``<stream>_denoised`` otherwise) in the same
run, composed with event-model so uids, times and counters are right.

Threads: the RunEngine's callback thread only queues frames (bounded, with a
policy when full) and emits documents; one worker thread denoises. Finished
frames wait in an outbox and are emitted from the callback thread at the next
document, so downstream consumers are never called concurrently and see
documents in order. At ``stop`` the worker is flushed (with a timeout), the
derived events are emitted, and the stop document's ``num_events`` counts the
derived streams.

Context: frame *k* is denoised when frame *k+1* arrives, with (k-1, k, k+1)
as context; the first and last frames of a run use mirrored neighbours, the
same rule as training (``bluesky_tomogan.frames.context_indices``).

Frames arrive three ways, as detectors deliver them: inline arrays in
``event``/``event_page``; legacy ``Resource``/``Datum`` references, loaded with
:class:`event_model.Filler` and a handler registry; and ``StreamResource``/
``StreamDatum`` (ophyd-async style, ``external: "STREAM:"``), read with
:class:`~bluesky_tomogan.hdf5_frames.StreamFrameReader`. External frames are
loaded on the worker thread, so the RunEngine's thread never waits for disk.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import event_model
import numpy as np
from event_model.documents import EventDescriptor, EventPage, RunStart, RunStop

from ..errors import TomoGANError
from ..hdf5_frames import HANDLER_REGISTRY, StreamFrameReader
from ..inference.denoiser import Denoiser, check_frames
from .frame_writer import DerivedFrameWriter
from .queue import FrameQueue, Policy

__all__ = ["TomoGANCallback", "image_fields", "tomogan_factory"]

log = logging.getLogger(__name__)
Subscriber = Callable[[str, Any], Any]
_END = "end-of-run"
_DROPPED = "dropped"  # qc_error of a frame the queue policy dropped
#: Nice value of the denoising worker: the scan comes first, denoising takes the CPU left over.
WORKER_NICENESS = 10


def image_fields(descriptor: Mapping[str, Any]) -> list[str]:
    """Data keys of a descriptor that hold single 2-D frames (shape ``[H, W]`` or ``[1, H, W]``)."""
    out = []
    for key, dk in descriptor.get("data_keys", {}).items():
        shape = [s for s in (dk.get("shape") or []) if s is not None]
        if dk.get("dtype") == "array" and (len(shape) == 2 or (len(shape) == 3 and shape[0] == 1)):
            out.append(key)
    return out


@dataclass
class _Frame:
    stream: str  # raw descriptor uid
    field: str
    frame: np.ndarray | Callable[[], np.ndarray] | None  # external frames are loaded by the worker
    seq_num: int
    uid: str  # the document that delivered the frame: event, or StreamDatum
    received: float


@dataclass
class _Dropped:
    """What a frame dropped by the queue policy leaves for the worker: its identity, no pixels."""

    item: _Frame


def _tombstone(item: _Frame) -> _Dropped:
    return _Dropped(dataclasses.replace(item, frame=None))


@dataclass
class _Result:
    item: _Frame
    denoised: np.ndarray | None
    error: str = ""
    removed_sigma: float = float("nan")
    finished: float = 0.0
    index: int = -1  # row in the derived-frame file, when frames are written to one


class TomoGANCallback(event_model.DocumentRouter):
    """Denoise every 2-D detector frame of a run into a derived stream of the same run.

    Parameters
    ----------
    denoiser : Denoiser or mapping of field name to Denoiser
        One denoiser for every image field, or one per field (projections and
        reconstructed slices need different models).
    fields : list of str, optional
        Image fields to denoise (default: every 2-D field, or the mapping's keys).
    streams : list of str, optional
        Streams whose frames are denoised (default: every stream). A tomography
        scan usually wants ``["primary"]``, leaving its ``dark`` and ``flat`` alone.
    policy : {"block", "drop-oldest", "latest-only"}
        What to do when ``maxsize`` frames are waiting (see :mod:`.queue`).
        Dropped frames are counted in ``dropped`` and logged, never silent.
    maxsize : int
        Queue bound.
    flush_timeout : float
        Seconds ``stop`` waits for the worker before passing the stop document on.
    directory : path-like, optional
        Where derived frames are written as HDF5 (``<directory>/<run uid>/``) and
        described by StreamResource/StreamDatum documents: required for storage
        with TiledWriter. Without it, frames travel inline in the derived events
        (fine for live plots and small tests).
    handler_registry : dict, optional
        Spec -> handler class for legacy ``Resource``/``Datum`` frames, as for
        :class:`event_model.Filler` (default: the ``"hdf5"`` handler of the
        simulated detector; add e.g. ``area_detector_handlers`` for real ones).
    root_map : dict, optional
        Resource roots remapped when reading (``event_model.Filler``'s ``root_map``).

    Examples
    --------
    >>> cb = TomoGANCallback(load_denoiser())          # doctest: +SKIP
    >>> cb.subscribe(TiledWriter(client))              # doctest: +SKIP
    >>> RE.subscribe(cb)                               # doctest: +SKIP
    """

    def __init__(
        self,
        denoiser: Denoiser | Mapping[str, Denoiser],
        fields: list[str] | None = None,
        *,
        streams: list[str] | None = None,
        policy: Policy = "block",
        maxsize: int = 16,
        flush_timeout: float = 60.0,
        directory: str | os.PathLike[str] | None = None,
        handler_registry: Mapping[str, Any] | None = None,
        root_map: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.directory = directory
        self.stream_names = None if streams is None else list(streams)
        self.handler_registry = dict(HANDLER_REGISTRY if handler_registry is None else handler_registry)
        self.root_map = dict(root_map or {})
        self._denoisers = dict(denoiser) if isinstance(denoiser, Mapping) else None
        self._default = None if isinstance(denoiser, Mapping) else denoiser
        self._fields = fields if fields is not None else (list(denoiser) if isinstance(denoiser, Mapping) else None)
        self._policy: Policy = policy
        self._maxsize = maxsize
        self.flush_timeout = flush_timeout
        self._subscribers: dict[int, Subscriber] = {}
        self._next_token = 0
        self._reset()

    # -- subscribers ------------------------------------------------------------------------

    def subscribe(self, func: Subscriber) -> int:
        """Send every document (raw and derived) to ``func(name, doc)``; returns a token."""
        self._next_token += 1
        self._subscribers[self._next_token] = func
        return self._next_token

    def unsubscribe(self, token: int) -> None:
        self._subscribers.pop(token, None)

    def _publish(self, name: str, doc: Mapping[str, Any]) -> None:
        for func in list(self._subscribers.values()):
            try:
                func(name, doc)
            except Exception:  # a consumer's failure must not stop the scan or other consumers
                self.consumer_errors += 1
                log.exception("subscriber %r raised on a %s document; continuing", func, name)

    # -- per-run state ----------------------------------------------------------------------

    def _reset(self) -> None:
        self._start: RunStart | None = None
        self._streams: dict[str, Any] = {}
        self._counters: dict[str, int] = {}
        self._derived: dict[tuple[str, str], Any] = {}  # (raw descriptor uid, field) -> descriptor bundle
        self._queue = FrameQueue(self._maxsize, self._policy, tombstone=_tombstone)
        self._outbox: deque[_Result] = deque()
        self._done = threading.Event()
        self._worker: threading.Thread | None = None
        self.errors: list[str] = []
        self.consumer_errors = 0
        self._writer: DerivedFrameWriter | None = None
        self._follow: list[tuple[str, Any]] = []
        self._shapes: dict[tuple[str, str], tuple[int, int]] = {}  # (raw descriptor uid, field) -> frame shape
        # Legacy Resource/Datum frames: the Filler sees start, descriptors, resources and datums
        # (cheap cache updates on this thread) and loads frames on the worker thread.
        self._handlers: dict[Any, Any] = {}
        self._filler = event_model.Filler(self.handler_registry, inplace=False, root_map=self.root_map,
                                          handler_cache=self._handlers,
                                          retry_intervals=[0.01, 0.05, 0.1, 0.25, 0.5, 1.0])
        self._stream_readers: dict[str, tuple[str, StreamFrameReader]] = {}  # StreamResource uid -> (key, reader)
        self._stream_keys: dict[str, set[str]] = {}  # raw descriptor uid -> its "STREAM:" data keys

    @property
    def dropped(self) -> int:
        """Frames dropped by the queue policy in the current (or last) run."""
        return len(self._queue.dropped)

    def _denoiser_for(self, fieldname: str) -> Denoiser:
        if self._denoisers is not None:
            return self._denoisers[fieldname]
        assert self._default is not None
        return self._default

    # -- the router -------------------------------------------------------------------------

    def __call__(self, name: str, doc: dict, validate: bool = False) -> tuple[str, dict]:
        # Each raw document is published exactly once, here; handlers only queue the
        # derived documents that must follow it (``_follow``).
        self._follow = []
        try:
            self._emit_finished()
            name, out = super().__call__(name, doc, validate)
        except Exception:  # never let the plugin stop the RunEngine or lose a raw document
            log.exception("TomoGAN callback failed on a %s document; passing it through", name)
            self.errors.append(f"internal error on {name}")
            out, self._follow = doc, []
        self._publish(name, out)
        for follow_name, follow_doc in self._follow:
            self._publish(follow_name, follow_doc)
        return name, out

    def start(self, doc: RunStart) -> RunStart:
        self._shutdown_worker()
        self._reset()
        self._start = doc
        self._filler("start", dict(doc))
        if self.directory is not None:
            self._writer = DerivedFrameWriter(self.directory, doc)
        self._worker = threading.Thread(target=self._work, args=(self._queue, self._outbox, self._done, self._writer),
                                        name="tomogan-worker", daemon=True)
        self._worker.start()
        return doc

    def descriptor(self, doc: EventDescriptor) -> EventDescriptor:
        self._filler("descriptor", dict(doc))
        self._stream_keys[doc["uid"]] = {k for k, dk in doc["data_keys"].items() if dk.get("external") == "STREAM:"}
        stream = doc.get("name", "primary")
        wanted = [f for f in image_fields(doc) if self._fields is None or f in self._fields]
        if not wanted or self._start is None or (self.stream_names is not None and stream not in self.stream_names):
            return doc
        for f in wanted:
            # One derived stream per image field keeps every row complete; with a single
            # image field in "primary" (the common case) the stream is simply "denoised".
            base = "denoised" if stream == "primary" else f"{stream}_denoised"
            name = base if len(wanted) == 1 else f"{base}_{f}"
            data_keys = self._data_keys(doc, f, external=self._writer is not None)
            bundle = event_model.compose_descriptor(
                start=self._start, streams=self._streams, event_counters=self._counters, name=name,
                data_keys=data_keys, object_keys={"tomogan": sorted(data_keys)}, configuration=self._configuration(f),
            )
            self._derived[(doc["uid"], f)] = bundle
            h, w = (int(v or 0) for v in data_keys[f"{f}_denoised"]["shape"][-2:])
            self._shapes[(doc["uid"], f)] = (h, w)
            self._follow.append(("descriptor", bundle.descriptor_doc))
            if self._writer is not None:
                self._follow.append(("stream_resource", self._writer.add(f"{f}_denoised", (h, w))))
        return doc

    @staticmethod
    def _data_keys(raw: EventDescriptor, f: str, external: bool = False) -> dict[str, Any]:
        shape = [s for s in raw["data_keys"][f]["shape"] if s is not None][-2:]
        frame_key: dict[str, Any] = {"source": "bluesky-tomogan", "dtype": "array", "shape": shape,
                                     "dtype_numpy": "<f4", "object_name": "tomogan"}
        if external:  # written to HDF5, described by StreamResource/StreamDatum (ophyd-async convention)
            frame_key |= {"external": "STREAM:", "shape": [1, *shape]}
        keys: dict[str, Any] = {f"{f}_denoised": frame_key}
        for qc, dtype in (("qc_latency_s", "number"), ("qc_removed_sigma", "number"), ("qc_error", "string"),
                          ("source_seq_num", "integer"), ("source_uid", "string")):
            keys[f"{f}_{qc}"] = {"source": "bluesky-tomogan", "dtype": dtype, "shape": [], "object_name": "tomogan"}
        return keys

    def _configuration(self, f: str) -> dict[str, Any]:
        """Provenance (model, sha256, backend, precision, tile, versions) as descriptor configuration."""
        prov = {k: v if isinstance(v, (str, int, float)) else str(v)
                for k, v in self._denoiser_for(f).provenance().items()}
        now = time.time()
        return {"tomogan": {
            "data": prov,
            "timestamps": dict.fromkeys(prov, now),
            "data_keys": {k: {"source": "bluesky-tomogan", "shape": [],
                              "dtype": "string" if isinstance(v, str) else "number"} for k, v in prov.items()},
        }}

    def event_page(self, doc: EventPage) -> EventPage:
        fields = [f for (uid, f) in self._derived if uid == doc["descriptor"]]
        for f in fields:
            column = doc["data"].get(f)
            if column is None:
                if self._shapes.get((doc["descriptor"], f)) and self._is_stream(doc["descriptor"], f):
                    continue  # STREAM: frames come in StreamDatum documents, not in events
                self._note(f"event page {doc['uid'][:8]} lacks image field {f!r}")
                continue
            filled = doc.get("filled", {}).get(f, True)
            for i, value in enumerate(column):
                unfilled = filled is False or (isinstance(filled, list) and filled[i] is False)
                frame: np.ndarray | Callable[[], np.ndarray]
                if unfilled or isinstance(value, str):  # a datum id: load it on the worker
                    frame = functools.partial(self._fill, doc["descriptor"], f, value)
                else:
                    frame = np.asarray(value)
                self._enqueue(_Frame(doc["descriptor"], f, frame, doc["seq_num"][i], doc["uid"][i], time.time()))
        return doc

    def _is_stream(self, descriptor_uid: str, f: str) -> bool:
        return f in self._stream_keys.get(descriptor_uid, ())

    def _fill(self, descriptor_uid: str, f: str, datum_id: str) -> np.ndarray:
        """Load one legacy-referenced frame through the Filler (worker thread)."""
        event = {"descriptor": descriptor_uid, "uid": "", "time": 0.0, "seq_num": 0,
                 "data": {f: datum_id}, "timestamps": {f: 0.0}, "filled": {f: False}}
        return np.asarray(self._filler.fill_event(event, include=[f], inplace=False)["data"][f])

    def resource(self, doc: Any) -> Any:
        return self._filler("resource", doc)[1]

    def datum(self, doc: Any) -> Any:
        return self._filler("datum", doc)[1]

    def datum_page(self, doc: Any) -> Any:
        return self._filler("datum_page", doc)[1]

    def stream_resource(self, doc: Any) -> Any:
        if any(f == doc.get("data_key") for (_, f) in self._derived) or self._fields is None:
            try:
                self._stream_readers[doc["uid"]] = (doc["data_key"], StreamFrameReader(doc))
            except (ValueError, KeyError) as exc:
                self._note(f"StreamResource {doc.get('uid')}: {exc}; its frames are not denoised")
        return doc

    def stream_datum(self, doc: Any) -> Any:
        reader = self._stream_readers.get(doc["stream_resource"])
        if reader is None:
            return doc
        key, read = reader
        if (doc["descriptor"], key) not in self._derived:
            return doc
        indices, seq_nums = doc["indices"], doc["seq_nums"]
        if seq_nums["stop"] - seq_nums["start"] != indices["stop"] - indices["start"]:
            self._note(f"StreamDatum {doc['uid']} has seq_nums {seq_nums} for indices {indices}; not denoised")
            return doc
        for i, seq in zip(range(indices["start"], indices["stop"]), range(seq_nums["start"], seq_nums["stop"]),
                          strict=True):
            frame = functools.partial(_first_frame, read, i)
            self._enqueue(_Frame(doc["descriptor"], key, frame, seq, doc["uid"], time.time()))
        return doc

    def _enqueue(self, item: _Frame) -> None:
        if not self._queue.put(item, timeout=self.flush_timeout):
            self._note(f"worker stuck for {self.flush_timeout} s; {item.field} seq {item.seq_num} dropped")

    def stop(self, doc: RunStop) -> RunStop:
        self._queue.put_control(_END)
        if self._worker is not None and not self._done.wait(self.flush_timeout):
            self._note(f"worker did not finish within {self.flush_timeout} s; stop passed on without the rest")
        self._emit_finished()
        if self.dropped:
            log.warning("TomoGAN dropped %d frames (policy %s)", self.dropped, self._policy)
        self._shutdown_worker()
        if self._writer is not None:
            self._writer.close()
        self._close_readers()
        out = copy.deepcopy(doc)
        # event-model counters start at 1: num_events is counter - 1 (as compose_stop does)
        out.setdefault("num_events", {}).update({k: v - 1 for k, v in self._counters.items()})
        return out  # published by __call__, after the derived events emitted above

    # -- worker ---------------------------------------------------------------------------

    def _note(self, message: str) -> None:
        if message not in self.errors:
            log.warning("TomoGAN: %s", message)
        self.errors.append(message)

    def _work(self, queue: FrameQueue, outbox: deque[_Result], done: threading.Event,
              writer: DerivedFrameWriter | None) -> None:
        """Worker loop of one run. It gets that run's queue, outbox, done-event and
        writer explicitly, so a worker outliving its run can never touch the next run's state."""
        _lower_priority()
        finish = functools.partial(self._finish, outbox=outbox, writer=writer)
        windows: dict[tuple[str, str], list[_Frame]] = {}
        while True:
            got = queue.get(timeout=0.5)
            if got is None:
                continue
            is_frame, item = got
            if isinstance(item, _Dropped):  # recorded as a row with no frame, in its place
                finish(_Result(item.item, None, f"{_DROPPED}: queue full (policy {self._policy})",
                               finished=time.time()))
                continue
            if not is_frame:  # end of run: mirrored context for each field's last frame
                for window in windows.values():
                    if len(window) == 1:
                        self._denoise(window[0], [window[0]] * 3, finish)
                    elif len(window) == 2:
                        self._denoise(window[1], [window[0], window[1], window[0]], finish)
                done.set()
                return
            try:
                item.frame = _as_frame(item.frame() if callable(item.frame) else item.frame)
            except Exception as exc:  # unreadable external frame: flag it, keep going without it
                log.warning("cannot read %s seq %d: %s", item.field, item.seq_num, exc)
                finish(_Result(item, None, f"cannot read frame: {type(exc).__name__}: {exc}", finished=time.time()))
                continue
            problem = _frame_problem(item.frame, self._shapes.get((item.stream, item.field), (0, 0)))
            if problem:  # flagged, and kept out of its neighbours' context so they are denoised as usual
                finish(_Result(item, None, problem, finished=time.time()))
                continue
            window = windows.setdefault((item.stream, item.field), [])
            window.append(item)
            if len(window) == 2:  # first frame: mirrored context
                self._denoise(window[0], [window[1], window[0], window[1]], finish)
            elif len(window) == 3:
                self._denoise(window[1], window, finish)
                window.pop(0)

    def _denoise(self, item: _Frame, context: list[_Frame], finish: Callable[[_Result], None]) -> None:
        try:
            den = self._denoiser_for(item.field)
            out = den.denoise_context(np.stack([np.asarray(c.frame) for c in context]))
            removed = float(np.std(np.asarray(item.frame, np.float32) - out))
            finish(_Result(item, out, "", removed, time.time()))
        except (TomoGANError, ValueError) as exc:  # bad frame: flag it, keep going
            finish(_Result(item, None, f"{type(exc).__name__}: {exc}", finished=time.time()))
        except Exception as exc:  # a model/runtime failure must not kill the worker
            log.exception("denoising %s seq %d failed", item.field, item.seq_num)
            finish(_Result(item, None, f"{type(exc).__name__}: {exc}", finished=time.time()))

    def _finish(self, result: _Result, outbox: deque[_Result], writer: DerivedFrameWriter | None) -> None:
        """Hand a result to the caller's thread; with a writer, write its frame first (off the RunEngine's
        thread). A frame that could not be denoised is recorded (``qc_error``) as zeros, never skipped."""
        if writer is None:
            if result.denoised is None:
                result.denoised = np.zeros(self._shapes[(result.item.stream, result.item.field)], np.float32)
        else:  # a missing frame becomes an unwritten (zero) row
            try:
                result.index, _ = writer.write(f"{result.item.field}_denoised", result.denoised)
                result.denoised = None  # on disk now; keep the outbox small
            except Exception as exc:  # a full disk must not stop the scan
                log.exception("writing the denoised %s seq %d failed", result.item.field, result.item.seq_num)
                result.error = result.error or f"cannot write the denoised frame: {type(exc).__name__}: {exc}"
        outbox.append(result)

    def _emit_finished(self) -> None:
        """Emit finished frames as event pages (one per derived stream), from the caller's thread."""
        groups: dict[tuple[str, str], list[_Result]] = {}
        while self._outbox:
            r = self._outbox.popleft()
            groups.setdefault((r.item.stream, r.item.field), []).append(r)
        for (stream, f), rows in groups.items():
            for r in rows:
                if r.error and not r.error.startswith(_DROPPED):  # drops are counted in ``dropped``
                    self._note(f"{f} seq {r.item.seq_num}: {r.error}")
            data: dict[str, list[Any]] = {
                f"{f}_qc_latency_s": [r.finished - r.item.received for r in rows],
                f"{f}_qc_removed_sigma": [r.removed_sigma for r in rows],
                f"{f}_qc_error": [r.error for r in rows],
                f"{f}_source_seq_num": [r.item.seq_num for r in rows],
                f"{f}_source_uid": [r.item.uid for r in rows],
            }
            if self._writer is None:
                data[f"{f}_denoised"] = [r.denoised for r in rows]
            now = time.time()
            bundle = self._derived[(stream, f)]
            page = bundle.compose_event_page(data=data, timestamps={k: [now] * len(rows) for k in data})
            self._publish("event_page", page)
            if self._writer is not None:
                self._publish_stream_datums(f"{f}_denoised", rows, list(page["seq_num"]), bundle.descriptor_doc)

    def _publish_stream_datums(self, key: str, rows: list[_Result], seq_nums: list[int], descriptor: Any) -> None:
        """One StreamDatum per run of consecutive file rows (a frame whose write failed has none)."""
        assert self._writer is not None
        runs: list[tuple[int, int, int]] = []  # (first file row, first seq_num, count)
        for r, seq in zip(rows, seq_nums, strict=True):
            if r.index < 0:
                continue
            if runs and runs[-1][0] + runs[-1][2] == r.index and runs[-1][1] + runs[-1][2] == seq:
                runs[-1] = (runs[-1][0], runs[-1][1], runs[-1][2] + 1)
            else:
                runs.append((r.index, seq, 1))
        for start, seq, count in runs:
            self._publish("stream_datum", self._writer.datum(key, start, start + count, seq, descriptor))

    def _close_readers(self) -> None:
        for _, reader in self._stream_readers.values():
            reader.close()
        self._stream_readers.clear()
        for handler in self._handlers.values():
            if hasattr(handler, "close"):
                handler.close()
        self._handlers.clear()

    def _shutdown_worker(self) -> None:
        """Ask this run's worker to finish; never wait on a stuck one (it only holds its own run's state)."""
        if self._worker is not None and not self._done.is_set():
            self._queue.put_control(_END)
        self._worker = None


def _lower_priority() -> None:
    """Make the calling (worker) thread yield the CPU to the RunEngine and the detectors.

    On Linux a thread is a task with its own nice value, and threads it starts
    (the inference runtime's pool) inherit it. Elsewhere this is a no-op.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICENESS)
    except (AttributeError, OSError):  # not Linux, or not permitted: run at normal priority
        log.debug("could not lower the worker's priority", exc_info=True)


def _frame_problem(frame: np.ndarray, declared: tuple[int, int]) -> str:
    """Why ``frame`` cannot be denoised or serve as context (empty if it can)."""
    if all(declared) and frame.shape != declared:
        return f"frame shape {frame.shape} is not the declared {declared}"
    try:
        check_frames(frame)  # the Denoiser's own rules (dtype, NaN/inf), checked before it meets the neighbours
    except TomoGANError as exc:
        return f"{type(exc).__name__}: {exc}"
    return ""


def _as_frame(value: Any) -> np.ndarray:
    frame = np.asarray(value)
    return frame[0] if frame.ndim == 3 and frame.shape[0] == 1 else frame


def _first_frame(read: StreamFrameReader, index: int) -> np.ndarray:
    return read(index, index + 1)[0]


def tomogan_factory(
    denoiser: Denoiser | Mapping[str, Denoiser],
    subscribers: list[Subscriber] | None = None,
    **options: Any,
) -> Callable[[str, Any], tuple[list[TomoGANCallback], list[Any]]]:
    """A factory for :class:`event_model.RunRouter`: one ``TomoGANCallback`` per run.

    Runs never share state (queue, worker, counters), so overlapping or
    back-to-back runs cannot mix frames. ``subscribers`` receive the documents of
    every run (TiledWriter routes runs itself); ``options`` go to the callback.

    Examples
    --------
    >>> from event_model import RunRouter                                   # doctest: +SKIP
    >>> RE.subscribe(RunRouter([tomogan_factory(load_denoiser(), [writer])]))  # doctest: +SKIP
    """

    def factory(name: str, start_doc: Any) -> tuple[list[TomoGANCallback], list[Any]]:
        cb = TomoGANCallback(denoiser, **options)
        for sub in subscribers or []:
            cb.subscribe(sub)
        return [cb], []

    return factory
