"""What every callback here shares: a facade over ``event_model.RunRouter``, and a run that passes documents on.

The shape is bluesky's ``TiledWriter``: the facade holds the subscribers and a
``RunRouter`` that makes one run object per run; the run object owns all of its
run's state. Here the run objects also *produce* documents (derived streams in the
same run), so they publish: each raw document exactly once, under the name it came
with, and their own documents before or after it.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import event_model

from .consumers import ConsumerFailures, Consumers

__all__ = ["Turn", "RunSummary", "PassThroughRun", "RunRouterFacade", "KEEP_RUNS", "MAX_OPEN_RUNS", "ABANDON_IDLE_S"]

log = logging.getLogger(__name__)
Subscriber = Callable[[str, Any], Any]
#: Summaries of this many recent runs are kept (``runs``).
KEEP_RUNS = 32
#: Runs open at once (started, not stopped). A RunEngine runs one run at a time, or a few nested ones (run keys);
#: a RunEngine killed during a run (a kernel that died, a process stopped) never sends that run's stop, and a
#: callback that lives on (``serve``, one fed by a ``RemoteDispatcher``) would keep its worker thread, files and
#: frames for ever. At a start beyond this many, the open run that has had no document for longest is ended
#: without its stop (:meth:`PassThroughRun.abandon`), if it has had none for :data:`ABANDON_IDLE_S`.
MAX_OPEN_RUNS = 4
#: Seconds without a document before an open run may be ended for a new one (:data:`MAX_OPEN_RUNS`): a live run
#: sends a document per frame, so several RunEngines' live runs served by one callback are not ended; a dead
#: one sends none again.
ABANDON_IDLE_S = 60.0


@dataclass
class Turn:
    """The raw document being handled, shared by the facade and its runs on the callback thread.

    The facade publishes the raw document itself only if no run did (a
    document of no known run, or a routing failure), so it is published
    exactly once, under the name it came with (``RunRouter`` turns an
    ``event`` into an ``event_page`` before its callbacks see it).
    """

    name: str = ""
    doc: Any = None
    passed: bool = True

    def begin(self, name: str, doc: Any) -> None:
        self.name, self.doc, self.passed = name, doc, False


@dataclass
class RunSummary:
    """What happened in one run: readable after (and during) the run."""

    uid: str
    errors: list[str] = field(default_factory=list)
    dropped: int = 0
    missing: int = 0  # frames with a row but no result, for any reason
    consumers: ConsumerFailures = field(default_factory=ConsumerFailures)
    finished: bool = False


class PassThroughRun(event_model.DocumentRouter):
    """A run object that passes every raw document on and adds its own documents around it.

    Subclasses handle documents with the ``DocumentRouter`` methods; they put
    documents that must follow the raw one in ``self._follow``, emit earlier
    results in :meth:`_before`, may extend the stop in :meth:`_stop_reasons`,
    and release their threads and files in :meth:`_release` (called after the
    stop, however its handling went).
    """

    #: Prefix of this callback's log messages.
    label = "bluesky-tomogan"

    def __init__(self, consumers: Consumers, turn: Turn) -> None:
        super().__init__()
        self._consumers = consumers
        self._turn = turn
        self.summary = RunSummary(uid="")
        self._follow: list[tuple[str, Any]] = []
        #: When this run last had a document (``time.monotonic()``).
        self.last_document = time.monotonic()
        self._abandoned = False

    def __call__(self, name: str, doc: dict, validate: bool = False) -> tuple[str, dict]:
        if self._abandoned:  # ended without its stop: the RunRouter's own stop for it, or a late document
            return name, doc
        self.last_document = time.monotonic()
        self._follow = []
        try:
            self._before()
            name, out = super().__call__(name, doc, validate)
        except Exception:  # never let the plugin stop the RunEngine or lose a raw document
            log.exception("%s failed on a %s document; passing it through", self.label, name)
            self._note(f"internal error on {name}")
            out, self._follow = doc, []
        finally:
            if name == "stop":  # however the stop went, nothing of this run may outlive it
                self._release()
        if not self._turn.passed:
            self._turn.passed = True
            raw = self._stop_with_reason(out) if self._turn.name == "stop" else self._turn.doc
            self._publish(self._turn.name, raw)
        for follow_name, follow_doc in self._follow:
            self._publish(follow_name, follow_doc)
        return name, out

    def _publish(self, name: str, doc: Mapping[str, Any]) -> None:
        self._consumers.publish(name, doc, self.summary.consumers)

    def _note(self, message: str) -> None:
        if message not in self.summary.errors:
            log.warning("%s: %s", self.label, message)
        self.summary.errors.append(message)

    def _before(self) -> None:
        """Emit what is ready before the next raw document (callback thread)."""

    def _release(self) -> None:
        """End the run's threads and close its files; idempotent."""
        self.summary.finished = True

    def abandon(self, why: str) -> None:
        """End a run whose stop document will not come (``why``): publish what it owes (:meth:`_end_unstopped`),
        end its threads and close its files. Its documents from here on, if any, pass through unprocessed."""
        self._note(f"run ended without its stop document: {why}")
        try:
            self._end_unstopped(why)
        except Exception:
            log.exception("%s failed to end run %s", self.label, self.summary.uid)
        finally:
            self._abandoned = True
            self._release()

    def _end_unstopped(self, why: str) -> None:
        """Publish what the run owes its subscribers when it ends without a stop (callback thread)."""

    def _stop_reasons(self) -> list[str]:
        """Sentences this run adds to its stop document's ``reason``."""
        return []

    def _stop_with_reason(self, doc: dict[str, Any]) -> dict[str, Any]:
        """The stop document as published: ``reason`` gains this run's sentences and its failed consumers."""
        reasons = [doc.get("reason", ""), *self._stop_reasons(), self.summary.consumers.reason()]
        reason = "; ".join(dict.fromkeys(r for r in reasons if r))
        return dict(doc, reason=reason) if reason != doc.get("reason", "") else doc


class RunRouterFacade:
    """Subscribers, and an ``event_model.RunRouter`` that makes one run object per run (:meth:`_make_run`)."""

    def __init__(self) -> None:
        self._consumers = Consumers()
        self._turn = Turn()
        self._orphans = ConsumerFailures()  # consumer failures on documents of no known run
        self._unknown: OrderedDict[str, None] = OrderedDict()  # starts/descriptors of no known run, said once
        self.runs: deque[RunSummary] = deque(maxlen=KEEP_RUNS)
        self._open: dict[str, PassThroughRun] = {}  # by start uid, until their stop (or abandon)
        self._runs_abandoned = 0
        self._router = event_model.RunRouter([self._factory], filler_class=_NoFill)  # type: ignore[arg-type]

    def subscribe(self, func: Subscriber, *, storage: bool | None = None) -> int:
        """Send every document (raw and derived) to ``func(name, doc)``; returns a token.

        Parameters
        ----------
        func : callable
            The consumer.
        storage : bool, optional
            Whether ``func`` stores the documents: its failures then say that the
            stored run is incomplete. Default: recognised for bluesky's ``TiledWriter``.
        """
        return self._consumers.add(func, storage)

    def unsubscribe(self, token: int) -> None:
        """Stop sending documents to the subscriber of ``token``."""
        self._consumers.remove(token)

    def __call__(self, name: str, doc: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if name == "start":
            self._end_runs_beyond(MAX_OPEN_RUNS - 1)
        self._turn.begin(name, doc)
        try:
            self._router(name, doc)
        except KeyError as exc:  # a document of no known run: the callback was subscribed during that run
            self._unknown_run(name, str(exc))
        except Exception:  # a routing failure
            log.exception("could not route a %s document; passing it through", name)
        if not self._turn.passed:
            self._turn.passed = True
            self._consumers.publish(name, doc, self._orphans)
        return name, doc

    def _unknown_run(self, name: str, key: str) -> None:
        """Say once per unknown start or descriptor (not once per frame) that its documents pass through as they are."""
        if key in self._unknown:
            return
        if len(self._unknown) >= KEEP_RUNS:
            self._unknown.popitem(last=False)
        self._unknown[key] = None
        ended = " (or one it ended without its stop, as logged before)" if self._runs_abandoned else ""
        log.warning("%s document refers to %s, which this callback has not seen: a run whose start came "
                    "before it was subscribed%s; its documents are passed on as they are, not processed",
                    name.capitalize().replace("_", " "), key, ended)

    def _factory(self, name: str, start_doc: Any) -> tuple[list[PassThroughRun], list[Any]]:
        run = self._make_run(start_doc)
        self.runs.append(run.summary)
        self._open[start_doc["uid"]] = run
        return [run], []

    def _end_runs_beyond(self, keep: int) -> None:
        """Abandon the open runs that have had no document for longest, until ``keep`` are left open (before a
        start; :data:`MAX_OPEN_RUNS`); only runs without a document for :data:`ABANDON_IDLE_S`."""
        for uid, run in list(self._open.items()):
            if run.summary.finished:  # stopped (or released) since
                del self._open[uid]
        while len(self._open) > keep:
            uid, run = min(self._open.items(), key=lambda item: item[1].last_document)
            idle = time.monotonic() - run.last_document
            if idle < ABANDON_IDLE_S:  # every open run is live: more runs open at once than usual, not dead ones
                return
            del self._open[uid]
            self._runs_abandoned += 1
            run.abandon(f"{len(self._open) + 1} runs were open when another started, and this one had had no "
                        f"document for {idle:.0f} s: its RunEngine stopped without a stop document?")
            try:  # the RunRouter forgets the run on its stop; the abandoned run ignores it, and nobody else sees it
                self._router("stop", {"run_start": uid, "uid": f"abandoned-{uid}", "time": time.time(),
                                      "exit_status": "abort", "reason": "abandoned"})
            except Exception:
                log.exception("could not drop abandoned run %s from the router", uid)

    def _make_run(self, start_doc: Any) -> PassThroughRun:
        raise NotImplementedError

    @property
    def last_run(self) -> RunSummary | None:
        """Summary of the current or most recent run."""
        return self.runs[-1] if self.runs else None

    @property
    def errors(self) -> list[str]:
        """Problems noted in the current or most recent run (each also logged)."""
        return self.last_run.errors if self.last_run else []

    @property
    def consumer_errors(self) -> int:
        """Documents a consumer raised on, in the current or most recent run."""
        return self.last_run.consumers.total if self.last_run else 0


class _NoFill(event_model.DocumentRouter):
    """The RunRouter's per-run filler, doing nothing: each run reads its own frames on its own threads."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def event_page(self, doc: Any) -> Any:
        return doc
