"""``QCFeedback``: act on QC flags while the scan runs, off the RunEngine's thread.

The callback's worker measures each frame and asks the :class:`QCPolicy` which
flags it raises; it hands that verdict to the run's feedback thread, which
calls :meth:`QCFeedback.act`. Acting there, never on the RunEngine's
event-loop thread (where the callback runs) nor on the worker (which must not
wait for the RunEngine), is what makes it safe: a suspender that trips, and
``RE.request_pause``, both need the event loop to take their request.

What each action does:

``ignore``
    the flag is recorded in the derived stream, nothing else.
``warn``
    a warning is logged when the flag goes up (not again while it stays up).
``suspend``
    the flag's signal on the :class:`~bluesky_tomogan.devices.QCMonitor` goes
    to 1; the suspenders :meth:`install_suspenders` put on the RunEngine
    suspend the scan until it clears (see ``QCMonitor`` for what clears it).
``pause``
    ``RE.request_pause(defer=True)``: the scan pauses at its next checkpoint
    and waits for the user (``RE.resume()``, ``RE.abort()``).
``abort``
    ``RE.abort(reason)``: the run ends cleanly, its stop document says why.
``reacquire``, ``adjust``
    a :class:`Recommendation` that :func:`~bluesky_tomogan.plans.qc_tomo_scan`
    takes between points: take the frame's angle again (bounded retries), or
    change the exposure time by the policy's ``exposure_step`` (shorter for
    ``saturated``, longer for ``noisy``), within the plan's limits.

A frame that is unusable (``beam_lost``, ``dead_pixels``, ``nonfinite``) is
always offered for re-acquisition too, whatever its flag's action, so that an
adaptive plan ends with a good frame at every angle.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from .policy import FLAGS, UNUSABLE, Action, QCPolicy

__all__ = ["QCFeedback", "Recommendation", "Verdict"]

log = logging.getLogger(__name__)
#: How long a suspending flag is re-raised while the event loop is too busy to take the suspender's request.
TRIP_RETRY_S = 30.0
#: A ``warn`` flag raised again within this many seconds of its last warning (a flag that comes and
#: goes frame by frame, as ``lagging`` does while frames are dropped) is counted, and the count is
#: given with its next warning; every frame's flags are in the derived stream.
WARN_INTERVAL_S = 10.0
#: (run, stream, flag) warning times kept; the oldest is forgotten first.
WARNED_KEPT = 256
#: Uids of ended runs kept (:meth:`QCFeedback.run_ended`); the oldest is forgotten first.
RUNS_KEPT = 64


@dataclass(frozen=True)
class Verdict:
    """What QC found in one frame: its metrics, and the flags it raised with their actions."""

    run_uid: str
    stream: str  # name of the derived stream
    seq_num: int  # of the raw event
    metrics: Mapping[str, float]
    flags: Mapping[str, Action]
    position: Callable[[], Mapping[str, Any]] = field(default=dict, compare=False, repr=False)
    #: Why a flag was raised where its metric does not say (a dropped frame is ``lagging``).
    reasons: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def unusable(self) -> bool:
        return bool(UNUSABLE & set(self.flags))


@dataclass(frozen=True)
class Recommendation:
    """A change the adaptive plan may make between points.

    Attributes
    ----------
    kind : {"reacquire", "exposure"}
        Take the frame of ``seq_num`` again, or multiply the exposure time by ``factor``.
    stream : str
        The derived stream whose frame raised it (``denoised`` for ``primary``).
    seq_num : int
        The raw event the recommendation is about.
    flag : str
        The QC flag behind it.
    reason : str
        One sentence for the record.
    factor : float
        Exposure factor (``exposure`` only).
    position : mapping
        The raw event's scalar readings (e.g. ``stage_theta``): where to re-acquire.
    """

    kind: Literal["reacquire", "exposure"]
    stream: str
    seq_num: int
    flag: str
    reason: str
    factor: float = 1.0
    position: Mapping[str, Any] = field(default_factory=dict)
    _position: Callable[[], Mapping[str, Any]] = field(default=dict, compare=False, repr=False)


class QCFeedback:
    """Turn QC verdicts into actions on the QC monitor, the RunEngine and the adaptive plan.

    Parameters
    ----------
    policy : QCPolicy, optional
        Thresholds and actions (default: :class:`QCPolicy` defaults).
    monitor : QCMonitor, optional
        Whose signals carry the flags to suspenders (needed for ``suspend``).
    RE : RunEngine, optional
        For ``pause`` and ``abort``.
    max_recommendations : int
        Bound of the recommendation queue; when full the oldest is dropped (logged).

    Examples
    --------
    >>> feedback = QCFeedback(QCPolicy.from_file("qc.toml"), monitor=qc, RE=RE)  # doctest: +SKIP
    >>> feedback.install_suspenders(RE)                                            # doctest: +SKIP
    >>> cb = TomoGANCallback(load_denoiser(), feedback=feedback)                   # doctest: +SKIP
    """

    def __init__(self, policy: QCPolicy | None = None, monitor: Any = None, RE: Any = None,
                 max_recommendations: int = 1000) -> None:
        self.policy = policy or QCPolicy()
        self.monitor = monitor
        self.RE = RE
        self.suspenders: list[Any] = []
        self._recs: deque[Recommendation] = deque(maxlen=max_recommendations)
        self._lock = threading.Lock()
        self._up: dict[tuple[str, str], set[str]] = {}  # (run, stream) -> flags raised on its last frame
        self._aborted: dict[str, str] = {}  # run uid -> why QC aborted it
        self._ended: dict[str, None] = {}  # uids of runs whose stop has come (the newest RUNS_KEPT), see run_ended
        self._newest: str | None = None  # uid of the run that started last
        self.log: deque[tuple[float, int, str, str]] = deque(maxlen=10_000)  # (time, seq_num, flag, action) done
        self._judged: Counter[str] = Counter()  # verdicts acted on, per derived stream name
        self._lookahead: dict[str, int] = {}  # derived stream name -> later frames its denoiser waits for
        # (run, stream, flag) -> (when it was last logged, raises since then not logged): see WARN_INTERVAL_S
        self._warned: dict[tuple[str, str, str], tuple[float, int]] = {}

    def install_suspenders(self, RE: Any, sleep: float = 0.0) -> list[Any]:
        """Install a ``SuspendBoolHigh`` on the monitor's signal of every flag whose action is ``suspend``."""
        from bluesky.suspenders import SuspendBoolHigh

        if self.monitor is None:
            raise ValueError("suspenders need a QCMonitor: QCFeedback(policy, monitor=QCMonitor(...))")
        self.RE = self.RE or RE
        for flag, rule in self.policy.rules.items():
            if rule.action == "suspend":
                s = SuspendBoolHigh(self.monitor.flag(flag), sleep=sleep,
                                    tripped_message=f"QC flag {flag}: {rule.action} until it clears")
                RE.install_suspender(s)
                s.RE = _WhileTheRunIsOpen(RE, self)  # what the suspender asks of the RunEngine, guarded
                self.suspenders.append(s)
        return list(self.suspenders)

    @property
    def closing(self) -> bool:
        """Whether the newest run this feedback saw start has had its stop (see :meth:`run_ended`)."""
        with self._lock:
            return self._newest is not None and self._newest in self._ended

    def run_started(self, run_uid: str) -> None:
        """A run whose frames this feedback will judge has started (its start document has come)."""
        with self._lock:
            self._newest = run_uid

    # -- called on a run's feedback thread ----------------------------------------------------

    def run_ended(self, run_uid: str) -> None:
        """The run's stop has come (its plan is over, or the RunEngine is closing it): a ``suspend`` flag on its frames
        judged from now on (the last frames, denoised while the callback handles the stop) trips no suspender.
        Nothing is left to suspend, and a suspension that bluesky's RunEngine gets while it closes a run fails
        it ("Cannot transit from 'suspending' to 'idle'": the run's last documents not stored; `demo --fly
        --faults`, beam lost on its last frames, failed so 1 run in 6 on a loaded machine). The flags are in the
        derived stream all the same. A suspension that a suspender asked for earlier but that reaches the
        RunEngine's event loop only now (it was busy with the stop) is not requested either
        (:class:`_WhileTheRunIsOpen`)."""
        with self._lock:
            self._ended[run_uid] = None
            while len(self._ended) > RUNS_KEPT:
                del self._ended[next(iter(self._ended))]

    def act(self, v: Verdict) -> None:
        """Carry out the actions of ``v`` (on the run's feedback thread; never raises)."""
        try:
            self._act(v)
        except Exception:  # feedback must never take the scan down
            log.exception("QC feedback failed on %s seq %d", v.stream, v.seq_num)

    def _act(self, v: Verdict) -> None:
        with self._lock:
            self._judged[v.stream] += 1
        key = (v.run_uid, v.stream)
        before = self._up.get(key, set())
        self._up[key] = set(v.flags)
        if self.monitor is not None:
            self.monitor.update(dict(v.metrics), v.seq_num)
            with self._lock:
                ended = v.run_uid in self._ended
            for flag in self.monitor.FLAGS:
                if flag in v.flags and ended and v.flags[flag] == "suspend":
                    log.info("QC: %s on %s seq %d, judged after the run's stop: no suspension", flag, v.stream,
                             v.seq_num)
                elif flag in v.flags:
                    self._raise(flag, v.flags[flag] == "suspend")
                elif self.policy.rules[flag].action != "suspend" or flag in before:
                    self.monitor.clear_flag(flag)  # a good frame clears what the last frame raised
        for flag, action in v.flags.items():
            new = flag not in before
            if action == "warn" and new:
                self._warn(v, flag)
            elif action == "pause" and new:
                self._pause(v, flag)
            elif action == "abort":
                self._abort(v, flag)
            elif action == "reacquire":
                self._recommend(Recommendation("reacquire", v.stream, v.seq_num, flag, self._why(v, flag),
                                               _position=v.position))
            elif action == "adjust":
                step = self.policy.exposure_step
                factor = 1 / step if flag == "saturated" else step if flag == "noisy" else 1.0
                if factor != 1.0:
                    self._recommend(Recommendation("exposure", v.stream, v.seq_num, flag, self._why(v, flag),
                                                   factor))
            if action != "ignore":
                self.log.append((time.time(), v.seq_num, flag, action))
        if v.unusable and "reacquire" not in v.flags.values():
            flag = sorted(UNUSABLE & set(v.flags))[0]
            self._recommend(Recommendation("reacquire", v.stream, v.seq_num, flag, self._why(v, flag),
                                           _position=v.position))

    def _warn(self, v: Verdict, flag: str) -> None:
        """Log a ``warn`` flag, at most once per :data:`WARN_INTERVAL_S` for a run's stream."""
        key, now = (v.run_uid, v.stream, flag), time.monotonic()
        last, since = self._warned.pop(key, (-WARN_INTERVAL_S, 0))
        if now - last < WARN_INTERVAL_S:
            self._warned[key] = (last, since + 1)
            return
        more = f"; raised {since} more times since its last warning" if since else ""
        log.warning("QC: %s on %s seq %d (%s)%s", flag, v.stream, v.seq_num, self._why(v, flag), more)
        self._warned[key] = (now, 0)
        while len(self._warned) > WARNED_KEPT:
            del self._warned[next(iter(self._warned))]

    def _why(self, v: Verdict, flag: str) -> str:
        if flag in v.reasons:
            return v.reasons[flag]
        metric, direction = FLAGS[flag]
        return (f"{metric} {v.metrics.get(metric, float('nan')):.4g} {direction} "
                f"{self.policy.rules[flag].threshold:g}")

    def _raise(self, flag: str, suspending: bool) -> None:
        self.monitor.raise_flag(flag, suspending=suspending)
        if not suspending:
            return
        # A suspender asks the event loop for an asyncio.Event and gives up after 0.1 s when the loop is
        # busy (e.g. in the callback, waiting for room in a full queue). Raise the flag again until every
        # suspender watching it holds its event, the flag has cleared (the beam came back: raised again, nothing
        # would clear it, and the scan would stay suspended), or the scan is no longer running.
        watching = [s for s in self.suspenders if getattr(s, "_sig", None) is self.monitor.flag(flag)]
        deadline = time.monotonic() + TRIP_RETRY_S
        while watching and any(getattr(s, "_ev", True) is None for s in watching) and time.monotonic() < deadline:
            if self.RE is None or not self.RE.state.is_running:
                return
            time.sleep(0.1)
            if not self.monitor.raise_again(flag):
                return

    def _pause(self, v: Verdict, flag: str) -> None:
        if self.RE is None:
            log.warning("QC: %s on %s seq %d asks for a pause, but no RunEngine was given", flag, v.stream,
                        v.seq_num)
            return
        if self.RE.state != "running":
            return
        log.warning("QC: %s on %s seq %d (%s); pausing at the next checkpoint", flag, v.stream, v.seq_num,
                    self._why(v, flag))
        try:
            self.RE.request_pause(defer=True)
        except Exception as exc:  # the run ended meanwhile
            log.info("QC pause not taken: %s", exc)

    def _abort(self, v: Verdict, flag: str) -> None:
        if self.RE is None or v.run_uid in self._aborted or not self.RE.state.is_running:
            return
        reason = f"QC: {flag} on {v.stream} seq {v.seq_num} ({self._why(v, flag)})"
        self._aborted[v.run_uid] = reason
        log.error("%s; aborting the run", reason)
        try:
            self.RE.abort(reason=reason)
        except Exception as exc:  # the run ended meanwhile
            log.info("QC abort not taken: %s", exc)

    def abort_reason(self, run_uid: str) -> str:
        """Why QC aborted run ``run_uid`` (empty if it did not).

        bluesky 1.15's ``run_decorator`` closes an aborted run without the reason
        given to ``RE.abort``, so the callback adds this to the stop document.
        """
        return self._aborted.get(run_uid, "")

    def _recommend(self, rec: Recommendation) -> None:
        with self._lock:
            if len(self._recs) == self._recs.maxlen:
                log.warning("QC recommendation queue full (%d); dropping the oldest", self._recs.maxlen)
            self._recs.append(rec)

    # -- called by plans, between points -------------------------------------------------------

    def take_recommendations(self) -> list[Recommendation]:
        """Remove and return the pending recommendations, each with the raw event's readings resolved."""
        with self._lock:
            recs, self._recs = list(self._recs), deque(maxlen=self._recs.maxlen)
        return [replace(r, position=dict(r._position())) for r in recs]

    def pending(self) -> int:
        """Recommendations waiting."""
        with self._lock:
            return len(self._recs)

    def judged(self, stream: str = "denoised") -> int:
        """Frames of derived stream ``stream`` acted on so far (all runs): a plan waits on it at its end."""
        with self._lock:
            return self._judged[stream]

    def lookahead(self, stream: str = "denoised") -> int:
        """How many later frames of derived stream ``stream`` the denoiser reads before a frame can be judged.

        Half the denoiser's context (``depth // 2``: 2 for the shipped 5-frame projection models); 1
        until the stream's first frame has been seen.
        """
        with self._lock:
            return self._lookahead.get(stream, 1)

    def note_lookahead(self, stream: str, frames: int) -> None:
        """Called by the run's worker: derived stream ``stream`` judges a frame once ``frames`` later ones came."""
        with self._lock:
            self._lookahead[stream] = frames


class _WhileTheRunIsOpen:
    """The RunEngine as a QC suspender sees it: every attribute the RunEngine's, but a suspension asked for once
    the run's stop has come (:attr:`QCFeedback.closing`) is logged and not requested. bluesky's suspender checks
    that the RunEngine runs when its signal trips, but the request reaches the event loop later; if the plan has
    ended by then, the RunEngine fails the run while it closes it ("Cannot transit from 'suspending' to
    'idle'"). The check here runs in the event loop's thread, which also delivers the stop."""

    def __init__(self, RE: Any, feedback: QCFeedback) -> None:
        self._RE = RE
        self._feedback = feedback

    def __getattr__(self, name: str) -> Any:
        return getattr(self._RE, name)

    def request_suspend(self, fut: Any, **kwargs: Any) -> None:
        if self._feedback.closing:
            log.info("QC: a suspension asked for after the run's stop is not requested (%s)",
                     kwargs.get("justification") or "no reason given")
            return
        self._RE.request_suspend(fut, **kwargs)
