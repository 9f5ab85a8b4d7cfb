"""``DenoisingWorker``: the callback, run out of the RunEngine's process on a document stream.

::

    RunEngine host                 bluesky-0MQ-proxy            worker host (beside the detector)
    RE.subscribe(TiledWriter)  ->  in port ... out port   ->   bluesky-tomogan serve
    RE.subscribe(Publisher)                                      TomoGANCallback (+ TomoReconstruction)
                                                                 -> derived streams into the same Tiled run
                                                                 -> Publisher to a second proxy (live plots)

What it guarantees:

* The RunEngine never waits for the worker: 0MQ publishing does not block, and
  raw data are stored by the host's own writer (``store="derived"``, the default)
  whether or not a worker runs. ``store="run"`` makes the worker the only writer
  of the whole run (raw and derived), for hosts that only publish.
* A journal (``state_dir/runs.json``) lists the runs in flight, written when a
  run starts and removed at its stop. A worker that died (SIGKILL, power) leaves
  its runs there; the next one records in each of those runs, in Tiled, which
  derived frames are missing and why, when the run's stop arrives or at once
  when the run already ended.
* SIGTERM: no new runs are served; runs in flight finish (their frames denoised
  and stored) until their stop, or for at most ``grace`` seconds, then the worker
  exits; runs it had to leave stay in the journal (and are recorded as above).
* Runs that started before the worker are not served (their descriptors are
  unknown); their documents are counted and logged once.
* A run that sends no document for ``abandon_after`` seconds (its RunEngine host
  crashed or lost its connection, so its stop will never come) is closed as if
  its stop had arrived with ``exit_status="fail"``: its queued frames are
  denoised and stored, its thread and files are released, and the reason is
  recorded on the run. Off with ``store="run"``, where the worker is the only
  writer of the raw run and must not close a run that may yet resume.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..callbacks.derived_stream import made_by_us
from ..storage import derived_streams
from .tiled_derived import DerivedStreamsWriter, record_on_run
from .transport import DocumentSource

__all__ = ["DenoisingWorker", "DerivedOnly", "RunShare", "WorkerStats"]

log = logging.getLogger(__name__)
Subscriber = Callable[[str, Any], Any]
Store = Literal["derived", "run", "none"]
#: Foreign runs/descriptors remembered for logging once; the memory is cleared past this size.
FOREIGN_LOGGED_LIMIT = 1000


@dataclass(frozen=True)
class RunShare:
    """Serve run ``index`` of every ``count``: several workers split the runs (by a hash of the run uid)."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"run share {self.index}/{self.count}: need 0 <= index < count")

    @classmethod
    def parse(cls, text: str) -> RunShare:
        """``"K/N"``: this worker serves share K (0-based) of N."""
        try:
            index, count = (int(p) for p in text.split("/"))
        except ValueError:
            raise ValueError(f"run share {text!r} is not K/N (e.g. 0/2)") from None
        return cls(index, count)

    def serves(self, uid: str) -> bool:
        return zlib.crc32(uid.encode()) % self.count == self.index


@dataclass
class WorkerStats:
    """What the worker has done since it started."""

    runs_served: int = 0
    runs_skipped: int = 0  # another worker's share, or started during shutdown
    foreign_documents: int = 0  # of runs that started before this worker (or are skipped)
    gaps_recorded: int = 0
    runs_abandoned: int = 0  # closed after abandon_after seconds without a document


class DenoisingWorker:
    """Serve a document stream: denoise (and reconstruct) runs, store and republish what is made.

    Parameters
    ----------
    source : DocumentSource
        Where documents come from (:class:`~bluesky_tomogan.serve.transport.ZMQSource`).
    callback : callable
        The pipeline, usually ``TomoGANCallback`` (with a ``TomoReconstruction``
        subscribed to it); the worker subscribes storage and republishing to
        ``outlet`` (default: ``callback``).
    outlet : object with ``subscribe``, optional
        The last stage of the pipeline, whose documents are stored and republished.
    client : tiled client, optional
        Where runs are stored (required unless ``store="none"``).
    store : {"derived", "run", "none"}
        ``derived``: add the derived streams to the run the RunEngine host
        stores; ``run``: store the whole run (raw and derived) here.
    republish : callable, optional
        Gets every derived document (with the runs' start and stop), e.g.
        :func:`~bluesky_tomogan.serve.transport.zmq_publisher`.
    republish_raw : bool
        Republish the raw documents too, in their order among the derived ones: one stream
        that a viewer (``bluesky-tomogan view``) shows whole, raw frames included.
    state_dir : path-like
        Where the journal of runs in flight is kept.
    share : RunShare
        Which runs this worker serves.
    grace : float
        Seconds runs in flight may take to finish after SIGTERM.
    abandon_after : float, optional
        Close a served run that has sent no document for this many seconds (see the
        module docstring); None: never. Not with ``store="run"``.
    """

    def __init__(self, source: DocumentSource, callback: Subscriber, *, outlet: Any = None, client: Any = None,
                 store: Store = "derived", republish: Subscriber | None = None, republish_raw: bool = False,
                 state_dir: str | os.PathLike[str] = ".", share: RunShare = RunShare(), grace: float = 60.0,
                 wait: Callable[[], Any] | None = None, abandon_after: float | None = None) -> None:
        if store not in ("derived", "run", "none"):
            raise ValueError(f"store must be 'derived', 'run' or 'none', got {store!r}")
        if abandon_after is not None and not abandon_after > 0:
            raise ValueError(f"abandon_after must be a positive number of seconds or None, got {abandon_after!r}")
        if abandon_after is not None and store == "run":
            raise ValueError("abandon_after cannot be used with store='run': the worker is the only writer of the "
                             "raw run there, and a run it closed would lose the raw documents of a late resume")
        if store != "none" and client is None:
            raise ValueError(f"store={store!r} needs a Tiled client")
        self.source = source
        self.callback = callback
        self.client = client
        self.store = store
        self.share = share
        self.grace = grace
        self.abandon_after = abandon_after
        self.stats = WorkerStats()
        self._wait = wait
        self._journal = Journal(Path(state_dir) / "runs.json")
        self._orphans = self._journal.load()  # runs a previous worker left unfinished: uid -> entry
        self._open: dict[str, dict[str, Any]] = {}  # run uid -> journal entry
        self._descriptors: dict[str, str] = {}  # descriptor uid -> run uid, of served runs
        self._resources: dict[str, str] = {}  # legacy Resource uid -> run uid, of served runs
        self._foreign_logged: set[str] = set()
        self._last_document: dict[str, float] = {}  # run uid -> time.monotonic() of its last document
        self._abandoned: dict[str, str] = {}  # run, descriptor and resource uids of abandoned runs -> run uid
        self._stopping = False
        self._lock = threading.Lock()
        # documents and the abandoned-run watch reach the pipeline one at a time, from two threads
        self._dispatch = threading.Lock()
        self._watch_ended = threading.Event()
        outlet = callback if outlet is None else outlet
        sinks: list[Subscriber] = []
        if store == "run":
            from bluesky_tiled_plugins import TiledWriter

            sinks.append(TiledWriter(client, batch_size=1))
        elif store == "derived":
            sinks.append(DerivedOnly(DerivedStreamsWriter(client)))
        if republish is not None:
            sinks.append(republish if republish_raw else DerivedOnly(republish))
        for sink in sinks:
            outlet.subscribe(sink, storage=sink is sinks[0] and store != "none")
        source.subscribe(self._on_document)

    # -- running ------------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (or :meth:`shutdown`); the process exit status."""
        self._record_orphans_that_ended()
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        log.info("serving; runs left by a previous worker: %d", len(self._orphans))
        if self.abandon_after is not None:
            threading.Thread(target=self._watch_abandoned, name="abandoned-run-watch", daemon=True).start()
        try:
            self.source.start()
        finally:
            self._watch_ended.set()
            for s, handler in previous.items():
                signal.signal(s, handler)
        if self._wait is not None:
            self._wait()
        left = list(self._open)
        if left:
            log.warning("stopped with %d runs in flight (%s); the next worker records their missing frames",
                        len(left), ", ".join(left))
        return 0

    def shutdown(self) -> None:
        """Stop taking new runs; end when the runs in flight have stopped, or after ``grace`` seconds."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            in_flight = len(self._open)
        log.info("shutting down: %d runs in flight, %g s grace", in_flight, self.grace)
        if in_flight == 0:
            self.source.stop()
            return
        timer = threading.Timer(self.grace, self._grace_over)
        timer.daemon = True
        timer.start()

    def _grace_over(self) -> None:
        log.warning("grace of %g s over with %d runs in flight; leaving them to the journal", self.grace,
                    len(self._open))
        self.source.stop()

    def _on_signal(self, signum: int, frame: Any) -> None:
        log.info("received %s", signal.Signals(signum).name)
        if self._stopping:  # a second signal: leave now
            self.source.stop()
        else:
            self.shutdown()

    # -- documents ----------------------------------------------------------------------------

    def _on_document(self, name: str, doc: dict[str, Any]) -> None:
        with self._dispatch:
            run = self._run_of(name, doc)
            if run is None:
                return
            self._dispatch_to_pipeline(run, name, doc)
            if run in self._open:  # silence counts from the end of its last document's handling
                self._last_document[run] = time.monotonic()

    def _dispatch_to_pipeline(self, run: str, name: str, doc: dict[str, Any]) -> None:
        try:
            self.callback(name, doc)
        except Exception:  # the callback never raises by design; a worker must not die of one document
            log.exception("the pipeline raised on a %s document of run %s", name, run)
        if name == "stop":
            self._finished(run, doc)

    def _run_of(self, name: str, doc: dict[str, Any]) -> str | None:
        """The served run a document belongs to, or None (not ours: counted, logged once)."""
        if name == "start":
            uid = doc["uid"]
            if uid in self._orphans:
                return None
            if self._stopping or not self.share.serves(uid):
                self.stats.runs_skipped += 1
                log.info("run %s not served (%s)", uid, "shutting down" if self._stopping else "another share")
                return None
            self._open[uid] = {"started": time.time(), "pid": os.getpid(), "malformed": self._malformed()}
            self._journal.save({**self._orphans, **self._open})
            self.stats.runs_served += 1
            return uid
        if name == "descriptor":
            run = doc.get("run_start")
            if run in self._open:
                self._descriptors[doc["uid"]] = run
                return run
            return self._foreign(name, run)
        if name in ("event", "event_page", "stream_datum"):
            run = self._descriptors.get(doc.get("descriptor", ""))
            return run if run is not None else self._foreign(name, doc.get("descriptor"))
        if name in ("datum", "datum_page"):  # legacy frames: a datum names its resource
            resource = doc.get("resource")
            resource = resource[0] if isinstance(resource, list) and resource else resource
            run = self._resources.get(str(resource))
            return run if run is not None else self._foreign(name, str(resource))
        if name in ("stream_resource", "resource", "stop"):
            run = doc.get("run_start")
            if run in self._open:
                if name == "resource":
                    self._resources[doc["uid"]] = run
                return run
            if name == "stop" and run in self._orphans:
                self._record_orphan(run)
            return self._foreign(name, run)
        return self._foreign(name, None)

    def _foreign(self, name: str, key: str | None) -> str | None:
        self.stats.foreign_documents += 1
        if len(self._foreign_logged) > FOREIGN_LOGGED_LIMIT:  # bounded: a long-running worker sees many runs
            self._foreign_logged.clear()
        if key not in self._foreign_logged:
            self._foreign_logged.add(str(key))
            abandoned = self._abandoned.get(str(key))
            if abandoned is not None:
                log.warning("a %s document of run %s arrived after the worker closed that run as abandoned; its "
                            "frames from here on are not denoised (raw data are the host's to store)", name, abandoned)
            else:
                log.info("ignoring %s documents of a run this worker does not serve (%s)", name, key)
        return None

    def _malformed(self) -> int:
        """Messages the source could not decode so far (0 for a source that does not count them)."""
        return int(getattr(self.source, "malformed", 0))

    def _finished(self, run: str, stop: dict[str, Any]) -> None:
        entry = self._open.pop(run, {})
        self._last_document.pop(run, None)
        lost = self._malformed() - int(entry.get("malformed", 0))
        if lost > 0:  # undecodable messages arrived while this run was open: some of its documents may be gone
            log.error("run %s: %d malformed messages arrived during the run; its derived data may be incomplete",
                      run, lost)
            if self.client is not None and self.store != "none":
                record = {"malformed_messages": lost,
                          "reason": f"{lost} undecodable messages arrived on the stream during this run; documents "
                                    "of this run may have been among them"}
                # after the stop is stored by whichever writer stores it (both update the run's metadata)
                threading.Timer(2.0, self._record, args=(run, record)).start()
        self._descriptors = {d: r for d, r in self._descriptors.items() if r != run}
        self._resources = {d: r for d, r in self._resources.items() if r != run}
        self._journal.save({**self._orphans, **self._open})
        if self._stopping and not self._open:
            self.source.stop()

    def _record(self, uid: str, record: dict[str, Any]) -> bool:
        """Merge ``record`` into the run's metadata in Tiled; False (logged) if that failed."""
        try:
            record_on_run(self.client, uid, record)
        except Exception as exc:
            log.error("run %s: could not record %s: %s", uid, sorted(record), exc)
            return False
        self.stats.gaps_recorded += 1
        return True

    # -- runs whose stop never comes --------------------------------------------------------------

    def _watch_abandoned(self) -> None:
        assert self.abandon_after is not None
        period = min(60.0, self.abandon_after / 4)
        while not self._watch_ended.wait(period):
            try:
                self.close_abandoned_runs()
            except Exception:  # the watch must outlive any one failure
                log.exception("closing abandoned runs failed")

    def close_abandoned_runs(self, now: float | None = None) -> list[str]:
        """Close every served run that has sent no document for ``abandon_after`` seconds.

        Called periodically while :meth:`run` serves; ``now`` is a ``time.monotonic()``
        value (for tests). Each run gets the stop its RunEngine never sent
        (``exit_status="fail"``), so its frames are denoised and stored, and the reason
        is recorded on the run in Tiled. A run that a previous worker left in the journal
        is recorded as incomplete once ``abandon_after`` seconds have passed since it
        started without its stop.

        Returns
        -------
        list of str
            The uids of the runs closed or recorded.
        """
        if self.abandon_after is None:
            return []
        with self._dispatch:
            now = time.monotonic() if now is None else now
            idle = {run: now - seen for run, seen in self._last_document.items()
                    if run in self._open and now - seen >= self.abandon_after}
            for run, silent in idle.items():
                self._abandon(run, silent)
            # a previous worker's run whose stop has not come within the limit of its start: its
            # last document's time is not known, so the start's is what counts
            stale = [uid for uid, entry in self._orphans.items()
                     if time.time() - float(entry.get("started", 0)) >= self.abandon_after]
            for uid in stale:
                log.warning("run %s, left by a previous worker, has had no stop for %g s since it started; "
                            "recording its missing derived frames now", uid, self.abandon_after)
                self._record_orphan(uid, delay=0.0)
        return [*idle, *stale]

    def _abandon(self, run: str, silent: float) -> None:
        reason = (f"bluesky-tomogan serve: no document of this run for {silent:.0f} s (abandon_after "
                  f"{self.abandon_after:g} s); its RunEngine stopped sending before the stop, so the worker "
                  "closed the run: frames received were denoised, later ones are not")
        log.error("run %s: %s", run, reason)
        if len(self._abandoned) > FOREIGN_LOGGED_LIMIT:
            self._abandoned.clear()
        self._abandoned[run] = run
        self._abandoned.update({k: run for k, r in (*self._descriptors.items(), *self._resources.items())
                                if r == run})
        stop = {"uid": str(uuid.uuid4()), "time": time.time(), "run_start": run, "exit_status": "fail",
                "reason": reason}
        self._dispatch_to_pipeline(run, "stop", stop)
        self.stats.runs_abandoned += 1
        if self.client is not None and self.store != "none":
            self._record(run, {"abandoned": True, "reason": reason})

    # -- runs a previous worker left ------------------------------------------------------------

    def _record_orphans_that_ended(self) -> None:
        for uid in list(self._orphans):
            try:
                ended = self.client is not None and "stop" in dict(self.client[uid].metadata)
            except KeyError:
                ended = False
            except Exception as exc:
                log.warning("cannot look up run %s left by a previous worker: %s", uid, exc)
                continue
            if ended:
                self._record_orphan(uid, delay=0.0)

    def _record_orphan(self, uid: str, *, delay: float = 2.0) -> None:
        entry = self._orphans.pop(uid, {})
        self._journal.save({**self._orphans, **self._open})
        if self.client is None:
            log.error("run %s: derived frames missing (the worker serving it stopped); no Tiled to record it in", uid)
            return
        if delay:  # let the host's writer store the stop first: both writers update the run's metadata
            threading.Timer(delay, self._write_gap, args=(uid, entry)).start()
        else:
            self._write_gap(uid, entry)

    def _write_gap(self, uid: str, entry: dict[str, Any]) -> None:
        try:
            run = self.client[uid]
            # a stream's metadata in Tiled is its descriptor's data keys and configuration
            raw = {name: _rows(run, name) for name in run if not made_by_us(run[name].metadata)}
            derived = {name: _rows(run, name) for name in derived_streams(run).values()}
        except Exception as exc:
            log.error("run %s: could not read it to record its missing derived frames: %s", uid, exc)
            return
        started = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(entry.get("started", 0)))
        reason = (f"the denoising worker serving this run (pid {entry.get('pid', '?')}, run started {started}) "
                  f"stopped before the run ended (killed or crashed); frames it had not stored were not "
                  f"denoised; a new worker found this at {time.strftime('%Y-%m-%dT%H:%M:%S')}")
        if self._record(uid, {"incomplete": True, "reason": reason, "raw_rows": raw, "derived_rows": derived}):
            log.warning("run %s: recorded missing derived frames (raw %s, derived %s)", uid, raw, derived)


def _rows(run: Any, stream: str) -> int:
    try:
        node = run[stream]
        return int(max((len(node[k]) for k in node), default=0))
    except Exception:
        return 0


class DerivedOnly:
    """Pass on what the pipeline made (and each run's start and stop), not the raw documents.

    Derived descriptors are the ones whose every data key has ``source``
    ``"bluesky-tomogan"``; their events, event pages and stream datums follow
    them, and so do stream resources of their data keys (the callbacks emit a
    derived descriptor before its first stream resource).
    """

    def __init__(self, sink: Subscriber) -> None:
        self._sink = sink
        self._descriptors: dict[str, str] = {}  # derived descriptor uid -> run uid
        self._keys: dict[str, set[str]] = {}  # run uid -> derived data keys
        self.__name__ = getattr(sink, "__name__", type(sink).__name__)

    def __call__(self, name: str, doc: Any) -> None:
        if name == "descriptor":
            if not made_by_us(doc):
                return
            self._descriptors[doc["uid"]] = doc["run_start"]
            self._keys.setdefault(doc["run_start"], set()).update(doc["data_keys"])
        elif name in ("event", "event_page", "stream_datum"):
            if doc.get("descriptor") not in self._descriptors:
                return
        elif name == "stream_resource":
            if doc.get("data_key") not in self._keys.get(doc.get("run_start", ""), ()):
                return
        elif name == "stop":
            run = doc.get("run_start")
            self._descriptors = {d: r for d, r in self._descriptors.items() if r != run}
            self._keys.pop(run, None)
        elif name != "start":
            return
        self._sink(name, doc)


class Journal:
    """A small JSON file of the runs in flight, replaced atomically on every change."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("journal %s unreadable (%s); starting without it", self.path, exc)
            return {}
        return {str(k): dict(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def save(self, runs: dict[str, dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(runs, indent=1))
        os.replace(tmp, self.path)
