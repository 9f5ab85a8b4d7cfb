"""Tomography plans: darks, flats, then projections over the rotation, in one run.

Written against ophyd's protocols, not the simulated classes: any detector with
a shutter signal and any stage with ``theta`` and ``x`` positioners works,
so the same plan runs on the simulated beamline and on hardware.

Every point starts at a checkpoint, so a suspender (beam lost) rewinds to the
point it interrupted and takes it again. :func:`qc_tomo_scan` also reads the
live QC's recommendations between points: it re-acquires flagged angles and
adjusts the exposure, and records every decision in a ``qc_actions`` stream.
"""

# No ``from __future__ import annotations`` here: bluesky-queueserver validates a queued plan's
# arguments against its signature's annotations, which must be objects, not strings; and it turns
# device names into devices for parameters annotated with bluesky's protocols (``Readable``).
import inspect
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Generator, Sequence
from dataclasses import replace
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.protocols import Readable
from bluesky.utils import Msg

from .devices.qc_monitor import QCDecision
from .qc.feedback import QCFeedback, Recommendation

__all__ = ["tomo_scan", "qc_tomo_scan", "qc_tomo_scan_with", "QCDecision"]

log = logging.getLogger(__name__)


def tomo_scan(
    detector: Readable,
    stage: Readable,
    angles: Sequence[float],
    *,
    n_darks: int = 10,
    n_flats: int = 10,
    out_position: float = 10.0,
    md: dict[str, Any] | None = None,
) -> Generator[Msg, Any, None]:
    """Acquire darks (``dark`` stream), flats (``flat``) and projections (``primary``).

    Parameters
    ----------
    detector : ophyd device
        Triggerable camera with a ``shutter`` signal (``"open"``/``"closed"``).
    stage : ophyd device
        With ``theta`` (degrees) and ``x`` (moves the sample out of the beam).
    angles : sequence of float
        Projection angles in degrees, in acquisition order.
    n_darks, n_flats : int
        Dark frames (shutter closed) and flat frames (sample out) before the projections.
    out_position : float
        ``x`` position that takes the sample out of the beam.
    md : dict, optional
        Extra start-document metadata.

    Raises
    ------
    TypeError
        The detector has no ``shutter`` or the stage no ``theta`` or ``x``; raised before
        any run is opened.

    Examples
    --------
    >>> RE(tomo_scan(det, stage, np.linspace(0, 180, 180, endpoint=False)))  # doctest: +SKIP
    """
    _require(detector, stage, "tomo_scan")
    angles = [float(a) for a in angles]

    @bpp.run_decorator(md=_metadata("tomo_scan", detector, stage, angles, n_darks, n_flats, md))
    def inner() -> Generator[Msg, Any, None]:
        yield from _darks_and_flats(detector, stage, n_darks, n_flats, out_position)
        yield from bpp.stage_wrapper(_points(detector, stage, "primary", angles), [detector])

    yield from inner()


def qc_tomo_scan(
    detector: Any,
    stage: Any,
    angles: Sequence[float],
    feedback: QCFeedback,
    *,
    n_darks: int = 10,
    n_flats: int = 10,
    out_position: float = 10.0,
    max_retries: int = 2,
    exposure_limits: tuple[float, float] = (1e-4, 10.0),
    stream: str = "denoised",
    final_wait: float = 30.0,
    max_qc_lag: int | None = None,
    md: dict[str, Any] | None = None,
) -> Generator[Msg, Any, None]:
    """:func:`tomo_scan` that acts on the live QC between points.

    After each projection it takes the recommendations of ``feedback`` (the
    :class:`~bluesky_tomogan.qc.QCFeedback` given to the ``TomoGANCallback``):

    * ``reacquire``: move back to the flagged frame's angle and take it again,
      at most ``max_retries`` times per angle;
    * ``exposure``: multiply ``detector.exposure_time`` by the recommended
      factor, within ``exposure_limits``; this re-describes the detector, so the
      raw stream gets a new descriptor in the same run. Recommendations about
      frames taken before the change are dropped (they saw the old exposure).

    After the last angle it waits (at most ``final_wait`` s) until QC has judged
    every projection but the last (which the denoiser finishes at the stop),
    and re-acquires what is still flagged (exposure recommendations are dropped
    then: no projection is left to take at a new exposure). Every decision is a row of the ``qc_actions`` stream
    (:class:`~bluesky_tomogan.devices.QCDecision`): action, flag, reason, angle,
    exposure time, source ``seq_num``. Suspensions are recorded by the
    RunEngine itself with ``RunEngine(record_interruptions=True)``.

    Parameters
    ----------
    detector, stage, angles, n_darks, n_flats, out_position, md
        As for :func:`tomo_scan`. Without an ``exposure_time`` signal on ``detector``,
        exposure recommendations are recorded as ``hold`` and the exposure is left alone.
    feedback : QCFeedback
        The callback's feedback (``TomoGANCallback(..., feedback=feedback)``).
    max_retries : int
        Re-acquisitions per angle at most.
    exposure_limits : (float, float)
        Shortest and longest exposure time the plan may set, in seconds.
    stream : str
        Derived stream whose recommendations count (``denoised`` for ``primary``).
    final_wait : float
        Longest wait for QC at the end, in seconds; also the longest wait at one point for ``max_qc_lag``.
    max_qc_lag : int, optional
        Before the next angle, wait until QC has judged every projection but the newest
        ``max_qc_lag``, besides those the denoiser cannot judge yet (its look-ahead, half its
        context: 2 frames for the shipped projection models). ``0`` acts on each frame as soon as it
        can be judged, so a saturated open beam changes the exposure within three frames however
        slow the denoiser; the scan then goes at the denoiser's pace. ``None`` (default): never
        wait; recommendations are taken as they come, and a worker far behind the detector acts late.
        A wait that times out is logged, and the plan stops waiting for the rest of the scan (QC
        is stuck or the worker far too slow; the scan must not crawl at ``final_wait`` per point).

    Raises
    ------
    TypeError
        As :func:`tomo_scan`, before any run is opened.
    """
    _require(detector, stage, "qc_tomo_scan")
    has_exposure = _exposure_signal(detector) is not None
    angles = [float(a) for a in angles]
    decision = QCDecision(name="qc")
    theta_key = stage.theta.name
    lo, hi = exposure_limits
    retries: Counter[float] = Counter()
    # primary frames taken; frames taken before the last exposure change; frames QC judged before the projections
    state = {"taken": 0, "changed_at": 0, "judged_before": 0}

    def take(angle: float) -> Generator[Msg, Any, None]:
        yield from bps.checkpoint()
        yield from bps.mv(stage.theta, angle)
        yield from bps.trigger_and_read([detector, stage.theta])
        state["taken"] += 1

    def record(action: str, rec: Recommendation, angle: float = math.nan) -> Generator[Msg, Any, None]:
        exposure = (yield from bps.rd(detector.exposure_time)) if has_exposure else math.nan
        for sig, value in ((decision.action, action), (decision.flag, rec.flag), (decision.reason, rec.reason),
                           (decision.angle, angle), (decision.exposure_time, float(exposure)),
                           (decision.source_seq_num, rec.seq_num)):
            sig.put(value)
        yield from bps.trigger_and_read([decision], name="qc_actions")

    def act(adjust: bool = True) -> Generator[Msg, Any, None]:
        # One exposure decision per batch (the newest recommendation), before any other record: bluesky 1.15
        # re-describes the detector's streams on ``configure`` from the cache of the stream read last, which
        # must not be ``qc_actions`` (no detector in it).
        recs = [r for r in feedback.take_recommendations() if r.stream == stream]
        exposure = [r for r in recs if r.kind == "exposure"][-1:] if adjust else []
        for rec in exposure + [r for r in recs if r.kind != "exposure"]:
            if rec.kind == "exposure":
                if rec.seq_num <= state["changed_at"]:
                    continue  # measured at the old exposure
                if not has_exposure:
                    yield from record("hold", replace(rec, reason=f"{rec.reason}; the detector has no exposure_time"))
                    continue
                old = float((yield from bps.rd(detector.exposure_time)))
                new = min(max(old * rec.factor, lo), hi)
                if math.isclose(new, old, rel_tol=1e-6):
                    yield from record("hold", replace(rec, reason=f"{rec.reason}; exposure at its limit {old:g} s"))
                    continue
                yield from bps.configure(detector, {"exposure_time": new})
                state["changed_at"] = state["taken"]
                yield from record("adjust", replace(rec, reason=f"{rec.reason}; exposure {old:g} -> {new:g} s"))
            else:
                angle = rec.position.get(theta_key)
                if angle is None:
                    continue  # not a projection of this plan
                angle = float(angle)
                if retries[angle] >= max_retries:
                    yield from record("give-up", replace(rec, reason=f"{rec.reason}; {max_retries} retries used"),
                                      angle)
                    continue
                retries[angle] += 1
                yield from take(angle)
                yield from record("reacquire", rec, angle)

    def catch_up(behind: Callable[[], int], adjust: bool) -> Generator[Msg, Any, bool]:
        # Acts on recommendations while it waits until QC is at most ``behind()`` projections behind.
        deadline = time.monotonic() + final_wait
        while feedback.judged(stream) - state["judged_before"] < state["taken"] - behind():
            if time.monotonic() >= deadline:
                return False
            yield from bps.sleep(0.05)
            yield from act(adjust)
        yield from act(adjust)
        return True

    def projections() -> Generator[Msg, Any, None]:
        state["judged_before"] = feedback.judged(stream)
        pace = max_qc_lag is not None
        for angle in angles:
            yield from take(angle)
            if not pace:
                yield from act()
            elif not (yield from catch_up(lambda: feedback.lookahead(stream) + int(max_qc_lag or 0), adjust=True)):
                log.warning("qc_tomo_scan: QC of %r stayed more than %s frames behind for %g s; the scan goes on "
                            "without waiting for it", stream, max_qc_lag, final_wait)
                pace = False
        # After the last angle only re-acquisitions are left to do: no exposure change for no more frames.
        yield from catch_up(lambda: 1, adjust=False)

    _md = _metadata("qc_tomo_scan", detector, stage, angles, n_darks, n_flats, md)
    _md["plan_args"] |= {"max_retries": max_retries, "exposure_limits": list(exposure_limits),
                         "max_qc_lag": max_qc_lag}

    @bpp.run_decorator(md=_md)
    def inner() -> Generator[Msg, Any, None]:
        yield from _darks_and_flats(detector, stage, n_darks, n_flats, out_position)
        yield from bpp.stage_wrapper(projections(), [detector])

    yield from inner()


def qc_tomo_scan_with(feedback: QCFeedback) -> Callable[..., Generator[Msg, Any, None]]:
    """:func:`qc_tomo_scan` bound to a session's ``feedback``, as a plan the queue server can run.

    A queued item names its arguments (``"det"``, a list of angles); it cannot name a
    :class:`~bluesky_tomogan.qc.QCFeedback`. A startup file that makes the callback's
    feedback also makes this plan (the profile's ``tomo_scan_with_qc``), and a queued
    ``BPlan("tomo_scan_with_qc", "det", "stage", angles)`` then steers the scan with the
    live QC as ``qc_tomo_scan(det, stage, angles, feedback)`` does in IPython.

    Examples
    --------
    >>> tomo_scan_with_qc = qc_tomo_scan_with(feedback)  # doctest: +SKIP
    >>> RM.item_add(BPlan("tomo_scan_with_qc", "det", "stage", [0, 1, 2]))  # doctest: +SKIP
    """

    def tomo_scan_with_qc(detector: Readable, stage: Readable, angles: Sequence[float],
                          **kwargs: Any) -> Generator[Msg, Any, None]:
        """:func:`bluesky_tomogan.plans.qc_tomo_scan` with the session's QC feedback (see its parameters)."""
        yield from qc_tomo_scan(detector, stage, angles, feedback, **kwargs)

    # The queue server validates an item's arguments against the plan's signature: show it
    # qc_tomo_scan's keywords (kept in step with it), with the devices annotated as Readable
    # so that their names in a queued item become the devices.
    signature = inspect.signature(qc_tomo_scan)
    parameters = [p.replace(annotation=Readable) if p.name in ("detector", "stage") else p
                  for p in signature.parameters.values() if p.name != "feedback"]
    tomo_scan_with_qc.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    return tomo_scan_with_qc


def _require(detector: Any, stage: Any, plan: str, *detector_signals: str) -> None:
    """Refuse devices that lack what ``plan`` moves or reads, before any run is opened (a plan that failed
    half way would leave a run of darks only, and the stage out of the beam)."""
    missing = [f"detector {getattr(detector, 'name', detector)!r} has no {attr!r}"
               for attr in ("shutter", *detector_signals) if not hasattr(detector, attr)]
    missing += [f"stage {getattr(stage, 'name', stage)!r} has no {attr!r}"
                for attr in ("theta", "x") if not hasattr(stage, attr)]
    if missing:
        raise TypeError(f"{plan}: {'; '.join(missing)}. It needs a detector with a 'shutter' signal "
                        "('open'/'closed')" + (f" and {', '.join(repr(a) for a in detector_signals)}"
                                              if detector_signals else "")
                        + " and a stage with 'theta' (degrees) and 'x' positioners: give the device those "
                        "components (an ophyd Device subclass, or Signals that alias the existing ones)")


def _exposure_signal(detector: Any) -> Any:
    """The detector's ``exposure_time`` signal, or None."""
    return getattr(detector, "exposure_time", None)


def _metadata(plan: str, detector: Any, stage: Any, angles: list[float], n_darks: int, n_flats: int,
              md: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "plan_name": plan,
        "detectors": [detector.name],
        "motors": [stage.theta.name],
        "num_points": len(angles),
        "num_intervals": max(len(angles) - 1, 0),
        "plan_args": {"angles": f"{len(angles)} angles from {min(angles, default=0):g} to {max(angles, default=0):g}",
                      "n_darks": n_darks, "n_flats": n_flats},
        "hints": {"dimensions": [([stage.theta.readback.name], "primary")]},
        "angles": angles,
        **(md or {}),
    }


def _points(detector: Any, stage: Any, stream: str, points: Sequence[float | None]) -> Generator[Msg, Any, None]:
    for angle in points:
        yield from bps.checkpoint()  # a suspension re-takes this point
        if angle is not None:
            yield from bps.mv(stage.theta, angle)
        yield from bps.trigger_and_read([detector] if angle is None else [detector, stage.theta], name=stream)


def _darks_and_flats(detector: Any, stage: Any, n_darks: int, n_flats: int,
                     out_position: float) -> Generator[Msg, Any, None]:
    # One staging per stream: a detector opens one file (one StreamResource) per staging,
    # and a StreamResource belongs to one stream (TiledWriter stores it under that stream).
    x0 = yield from bps.rd(stage.x)
    yield from bps.mv(detector.shutter, "closed")
    yield from bpp.stage_wrapper(_points(detector, stage, "dark", [None] * n_darks), [detector])
    yield from bps.mv(detector.shutter, "open", stage.x, out_position)
    yield from bpp.stage_wrapper(_points(detector, stage, "flat", [None] * n_flats), [detector])
    yield from bps.mv(stage.x, x0)
