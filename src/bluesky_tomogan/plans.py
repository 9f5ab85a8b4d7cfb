"""Tomography plans: darks, flats, then projections over the rotation, in one run.

Written against bluesky's protocols, not the simulated classes: any detector with
a shutter signal and any stage with ``theta`` and ``x`` positioners works,
so the same plan runs on the simulated beamline and on hardware.
:func:`tomo_fly_scan` flies the rotation instead: an ophyd-async detector takes
frames at a fixed rate while a flyable motor turns at constant speed.

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
from typing import Any, cast

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.protocols import Collectable, Flyable, Movable, Preparable, Readable
from bluesky.utils import Msg, short_uid

from .devices.qc_monitor import QCDecision
from .qc.feedback import QCFeedback, Recommendation

__all__ = ["tomo_scan", "tomo_fly_scan", "tomo_fly_scan_with", "qc_tomo_scan", "qc_tomo_scan_with", "QCDecision"]

log = logging.getLogger(__name__)


def tomo_scan(
    detector: Readable,
    stage: Readable,
    angles: Sequence[float],
    *,
    n_darks: int = 10,
    n_flats: int = 10,
    out_position: float = 10.0,
    shutter: Movable | None = None,
    shutter_open: Any = "open",
    shutter_closed: Any = "closed",
    md: dict[str, Any] | None = None,
) -> Generator[Msg, Any, None]:
    """Acquire darks (``dark`` stream), flats (``flat``) and projections (``primary``).

    Parameters
    ----------
    detector : ophyd device
        Triggerable camera (with a ``shutter`` signal where no ``shutter`` is given).
    stage : ophyd device
        With ``theta`` (degrees) and ``x`` (moves the sample out of the beam; needed for flats).
    angles : sequence of float
        Projection angles in degrees, in acquisition order.
    n_darks, n_flats : int
        Dark frames (shutter closed) and flat frames (sample out) before the projections;
        0 takes none (and needs no shutter, or no ``x``).
    out_position : float
        ``x`` position that takes the sample out of the beam.
    shutter : movable, optional
        The beamline's shutter, set to ``shutter_closed`` for the darks and ``shutter_open``
        after them (default: the detector's ``shutter`` signal, as the simulated camera has).
    shutter_open, shutter_closed : object
        The shutter's values (``"open"``/``"closed"``; an EPICS shutter may take 1 and 0).
    md : dict, optional
        Extra start-document metadata.

    Raises
    ------
    TypeError
        Darks without a shutter, flats without a stage ``x``, a stage without ``theta``;
        raised before any run is opened.

    Examples
    --------
    >>> RE(tomo_scan(det, stage, np.linspace(0, 180, 180, endpoint=False)))  # doctest: +SKIP
    """
    closer = _require(detector, stage, "tomo_scan", shutter, n_darks, n_flats)
    angles = [float(a) for a in angles]

    @bpp.run_decorator(md=_metadata("tomo_scan", detector, stage, angles, n_darks, n_flats, md))
    def inner() -> Generator[Msg, Any, None]:
        yield from _darks_and_flats(detector, stage, n_darks, n_flats, out_position,
                                    (closer, shutter_open, shutter_closed))
        yield from bpp.stage_wrapper(_points(detector, stage, "primary", angles), [detector])

    yield from inner()


def tomo_fly_scan(
    detector: Flyable,
    motor: Flyable,
    start: float,
    stop: float,
    num: int,
    *,
    exposure: float,
    deadtime: float = 0.0,
    shutter: Movable | None = None,
    sample_x: Movable | None = None,
    out_position: float = 10.0,
    n_darks: int = 10,
    n_flats: int = 10,
    shutter_open: Any = "open",
    shutter_closed: Any = "closed",
    capture: Sequence[Flyable] = (),
    flush_period: float = 0.5,
    feedback: QCFeedback | None = None,
    max_retakes: int = 1,
    final_wait: float = 30.0,
    stream: str = "denoised",
    md: dict[str, Any] | None = None,
) -> Generator[Msg, Any, None]:
    """Fly the rotation: darks (``dark`` stream), flats (``flat``), then ``num`` projections (``primary``)
    taken while ``motor`` turns from ``start`` to ``stop`` at constant speed; with ``feedback``, fly again
    over the projections QC found unusable.

    Each stream is flown: the detector is prepared for its number of frames at a fixed
    period (``exposure + deadtime``), kicked off, and its frames collected while it runs
    (every ``flush_period``), as ophyd-async records them: frames in a file,
    announced by StreamResource/StreamDatum, no event per frame. For the projections the
    motor is prepared to reach its speed before ``start`` (its run-up), kicked off, and the
    detector kicked off when it is at speed, so that frame ``i`` is exposed over
    ``start + i * (stop - start) / num`` onwards. Those nominal angles (each exposure's
    middle) are the start document's ``angles``; the live reconstruction uses them when no
    angle is recorded per frame.

    A position capture (a PandA's encoder and HDF writer) records each frame's real angle:
    pass it in ``capture``; it is prepared with the detector's trigger information, flown
    beside it and collected into the same stream, and its encoder's data key is what
    ``TomoReconstruction(angle_field=...)`` and ``serve --angle-field`` name.

    Parameters
    ----------
    detector : ophyd-async StandardDetector
        Preparable with ``TriggerInfo``, flyable and collectable (an area detector with an
        HDF writer, ``ophyd_async.sim.SimBlobDetector``).
    motor : flyable motor
        Preparable with ``FlyMotorInfo`` (``ophyd_async.epics.motor.Motor``,
        ``ophyd_async.sim.SimMotor``), moving in degrees.
    start, stop : float
        Rotation range of the projections in degrees: 0 and 180 for a parallel-beam scan
        (the frames' nominal angles then cover it without its end, like
        ``np.linspace(0, 180, num, endpoint=False)``).
    num : int
        Projections in the rotation.
    exposure : float
        Exposure of each frame in seconds (``TriggerInfo.livetime``).
    deadtime : float
        Time between the end of one exposure and the start of the next, in seconds. Where the
        detector says it needs more (ophyd-async's ``get_trigger_deadtime``: a camera's readout),
        that is used, so that the motor turns as long as the frames take.
    shutter : movable, optional
        Set to ``shutter_closed`` for the darks and to ``shutter_open`` after them. Needed
        for ``n_darks > 0``.
    sample_x : movable, optional
        Moved to ``out_position`` for the flats and back after them. Needed for ``n_flats > 0``.
    out_position : float
        ``sample_x`` position that takes the sample out of the beam.
    n_darks, n_flats : int
        Dark and flat frames before the projections, each flown as one stream.
    shutter_open, shutter_closed : object
        The shutter's values for open and closed (``"open"``/``"closed"`` by default; an
        EPICS shutter may take 1 and 0).
    capture : sequence of flyable devices
        Devices flown and collected beside the detector during the projections (position
        capture).
    flush_period : float
        Seconds between two collections while a stream is flown: how often StreamDatums reach
        the callbacks, and so how live the denoising of a fly scan is.
    feedback : QCFeedback, optional
        The callback's QC feedback (``TomoGANCallback(..., feedback=feedback)``). After the
        projections' flight the plan waits (at most ``final_wait`` s) until QC has judged every
        projection but the last, then flies the motor again over each run of neighbouring
        projections QC found unusable (``beam_lost``, ``dead_pixels``, ``nonfinite``: its
        ``reacquire`` recommendations), as many frames at the same period, into ``primary``
        (seq_nums after the first flight's), at most ``max_retakes`` times per angle. Each
        retaken frame is a row of the ``qc_actions`` stream (``retake``, or ``give-up`` when its
        retakes are used). Needs ``capture``: a retaken frame's angle is known only from its
        capture (the start document's nominal ``angles`` are the first flight's), and the
        callback and the reconstruction must take the captured angles (``angle_field=``); the
        reconstruction leaves the unusable frames out and takes the retaken ones.
    max_retakes : int
        Flights again over one angle at most.
    final_wait : float
        Longest wait for QC after a flight, in seconds.
    stream : str
        Derived stream whose recommendations count (``denoised`` for ``primary``).
    md : dict, optional
        Extra start-document metadata.

    Raises
    ------
    TypeError
        Darks without a ``shutter``, flats without a ``sample_x``, or a detector or motor that
        cannot be flown; raised before any run is opened.
    ValueError
        ``num`` below 1, ``exposure`` not above 0, ``deadtime`` below 0, ``start == stop``, or
        ``feedback`` without ``capture``.

    Notes
    -----
    A flight cannot be rewound: each stream starts at a checkpoint (a suspension while the
    shutter or the sample moves rewinds to it, as in :func:`tomo_scan`), and is flown not
    rewindable, so a suspender (beam lost) that trips during a flight holds the plan where it
    is while the motor and detector fly on; when it releases, every frame is collected and the
    scan goes on. QC flags the frames taken without beam (``beam_lost``): with ``feedback`` (and
    ``capture``) the plan flies that range again. Give the detector a path provider that names a new file
    for each staging (``UUIDFilenameProvider``): each stream is a staging.

    Examples
    --------
    >>> RE(tomo_fly_scan(det, rot, 0, 180, 900, exposure=0.02, shutter=shutter, sample_x=x))  # doctest: +SKIP
    """
    _require_flyable(detector, motor, shutter, sample_x, n_darks, n_flats, capture)
    if num < 1 or not exposure > 0 or deadtime < 0 or start == stop:
        raise ValueError(f"tomo_fly_scan: needs num >= 1, exposure > 0, deadtime >= 0 and start != stop; got "
                         f"num={num}, exposure={exposure}, deadtime={deadtime}, start={start}, stop={stop}")
    if feedback is not None and not capture:
        raise ValueError("tomo_fly_scan: retaking unusable projections (feedback=...) needs each frame's angle "
                         "captured (capture=[panda]): a retaken frame has no nominal angle")
    if max_retakes < 0:
        raise ValueError(f"tomo_fly_scan: max_retakes must be >= 0, got {max_retakes}")
    trigger_info, fly_info = _fly_types()
    # A camera that reads out between frames needs that time: the motor must take as long as the frames do.
    needed = yield from _least_deadtime(detector)
    if needed > deadtime:
        log.info("tomo_fly_scan: %s needs %g s between exposures; deadtime %g s -> %g s", detector.name,  # type: ignore[attr-defined]
                 needed, deadtime, needed)
        deadtime = needed
    period = exposure + deadtime
    step = (stop - start) / num
    middle = exposure / 2 / period  # of each exposure, in periods from its start
    angles = [start + (i + middle) * step for i in range(num)]
    _md = {
        "plan_name": "tomo_fly_scan",
        "detectors": [detector.name],  # type: ignore[attr-defined]
        "motors": [motor.name],  # type: ignore[attr-defined]
        "num_points": num,
        "num_intervals": max(num - 1, 0),
        "plan_args": {"start": start, "stop": stop, "num": num, "exposure": exposure, "deadtime": deadtime,
                      "n_darks": n_darks, "n_flats": n_flats,
                      "capture": [getattr(c, "name", repr(c)) for c in capture],
                      "max_retakes": max_retakes if feedback is not None else 0},
        "angles": angles,
        **(md or {}),
    }

    def fly(name: str, n: int, flyers: Sequence[Any] = (), first: int = 0,
            declare: bool = True) -> Generator[Msg, Any, None]:
        # ``n`` frames into stream ``name``; with the motor (``flyers``), over projections first .. first + n - 1
        # Any: bluesky's message stubs take one capability each (Preparable, Readable or Collectable, ...),
        # and a fly scan's camera, position capture and motor have several (bluesky 1.16 checks them)
        collected: list[Any] = [detector, *capture] if flyers else [detector]
        info = trigger_info(number_of_events=n, livetime=exposure, deadtime=deadtime)
        group = short_uid("prepare")
        for device in collected:
            yield from bps.prepare(device, info, group=group)
        if flyers:
            yield from bps.prepare(cast(Any, motor), fly_info(start_position=start + first * step,
                                                   end_position=start + (first + n) * step,
                                                   time_for_move=n * period), group=group)
        yield from bps.wait(group=group)
        if declare:
            yield from bps.declare_stream(*collected, name=name, collect=True)
        if flyers:
            yield from bps.kickoff(motor, wait=True)  # done when the motor is at speed, at ``start``
        yield from bps.kickoff_all(*collected, wait=True)
        yield from _collect_until_complete([*flyers, *collected], collected, name, flush_period)

    decision = QCDecision(name="qc") if feedback is not None else None  # the qc_actions stream's rows
    flown: list[int] = []  # the projection (index of ``angles``) of each frame of ``primary``, in order

    def record(action: str, rec: Recommendation, index: int) -> Generator[Msg, Any, None]:
        assert decision is not None
        for sig, value in ((decision.action, action), (decision.flag, rec.flag), (decision.reason, rec.reason),
                           (decision.angle, angles[index]), (decision.exposure_time, exposure),
                           (decision.source_seq_num, rec.seq_num)):
            sig.put(value)
        yield from bps.trigger_and_read([decision], name="qc_actions")

    def retake_unusable(judged_before: int) -> Generator[Msg, Any, None]:
        # judged_before: QC's count of ``stream`` before this run's projections
        assert feedback is not None
        retakes: Counter[int] = Counter()
        while True:
            deadline = time.monotonic() + final_wait  # every projection judged but the last (denoised at the stop)
            while feedback.judged(stream) - judged_before < len(flown) - 1 and time.monotonic() < deadline:
                yield from bps.sleep(0.05)
            lost: dict[int, Recommendation] = {}
            for rec in feedback.take_recommendations():
                if rec.stream == stream and rec.kind == "reacquire" and 0 < rec.seq_num <= len(flown):
                    lost.setdefault(flown[rec.seq_num - 1], rec)
            again = []
            for index, rec in sorted(lost.items()):
                if retakes[index] >= max_retakes:
                    yield from record("give-up", replace(rec, reason=f"{rec.reason}; {max_retakes} retakes used"),
                                      index)
                    continue
                retakes[index] += 1
                again.append(index)
                yield from record("retake", rec, index)
            if not again:
                return
            for first, n in _runs_of(again):
                log.info("tomo_fly_scan: flying projections %d-%d again (%d frames QC found unusable)", first,
                         first + n - 1, n)
                yield from fly("primary", n, [motor], first=first, declare=False)
                flown.extend(range(first, first + n))

    def projections() -> Generator[Msg, Any, None]:
        judged_before = feedback.judged(stream) if feedback is not None else 0
        if feedback is not None:
            feedback.take_recommendations()  # an earlier run's, not this one's
        yield from fly("primary", num, [motor])
        flown.extend(range(num))
        if feedback is not None:
            yield from retake_unusable(judged_before)

    def staged(flights: Generator[Msg, Any, None], devices: Sequence[Any]) -> Generator[Msg, Any, None]:
        # One staging per stream, as tomo_scan: a staging is one file (one StreamResource per data key), and
        # a StreamResource belongs to one stream. A suspension before the flight rewinds to the checkpoint; one
        # during it waits where the plan is (not rewindable: a flight cannot be taken again from its middle,
        # and without a checkpoint at all bluesky would fail the run) while the devices fly on.
        yield from bps.checkpoint()
        yield from bpp.stage_wrapper(bpp.rewindable_wrapper(flights, False), devices)

    @bpp.run_decorator(md=_md)
    def inner() -> Generator[Msg, Any, None]:
        if n_darks:
            yield from bps.mv(shutter, shutter_closed)
            yield from staged(fly("dark", n_darks), [detector])
        if shutter is not None:  # open for the flats and projections, darks or not
            yield from bps.mv(shutter, shutter_open)
        if n_flats:
            x0 = yield from bps.rd(cast(Any, sample_x))  # a motor: Movable and Readable
            yield from bps.mv(sample_x, out_position)
            yield from staged(fly("flat", n_flats), [detector])
            yield from bps.mv(sample_x, x0)
        yield from staged(projections(), [detector, *capture])

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
    shutter: Movable | None = None,
    shutter_open: Any = "open",
    shutter_closed: Any = "closed",
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
    detector, stage, angles, n_darks, n_flats, out_position, shutter, shutter_open, shutter_closed, md
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
    closer = _require(detector, stage, "qc_tomo_scan", shutter, n_darks, n_flats)
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
        yield from _darks_and_flats(detector, stage, n_darks, n_flats, out_position,
                                    (closer, shutter_open, shutter_closed))
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


def tomo_fly_scan_with(feedback: QCFeedback) -> Callable[..., Generator[Msg, Any, None]]:
    """:func:`tomo_fly_scan` bound to a session's ``feedback``, as a plan the queue server can run: it flies
    again over the projections QC found unusable (needs ``capture``), as ``qc_tomo_scan_with`` does for
    :func:`qc_tomo_scan`.

    Examples
    --------
    >>> fly_scan_with_qc = tomo_fly_scan_with(feedback)  # doctest: +SKIP
    >>> RM.item_add(BPlan("fly_scan_with_qc", "fly_det", "rot", 0, 180, 900, exposure=0.02,
    ...                   capture=["panda"], shutter="shutter", sample_x="sample_x"))  # doctest: +SKIP
    """

    def fly_scan_with_qc(detector: Flyable, motor: Flyable, start: float, stop: float, num: int,
                         **kwargs: Any) -> Generator[Msg, Any, None]:
        """:func:`bluesky_tomogan.plans.tomo_fly_scan` with the session's QC feedback (see its parameters)."""
        yield from tomo_fly_scan(detector, motor, start, stop, num, feedback=feedback, **kwargs)

    # The queue server validates an item's arguments against the plan's signature: show it tomo_fly_scan's
    # (its devices annotated by their protocols already), less the feedback this binding gives.
    signature = inspect.signature(tomo_fly_scan)
    parameters = [p for p in signature.parameters.values() if p.name != "feedback"]
    fly_scan_with_qc.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    return fly_scan_with_qc


def _require(detector: Any, stage: Any, plan: str, shutter: Any, n_darks: int, n_flats: int) -> Any:
    """Refuse devices that lack what ``plan`` moves or reads, before any run is opened (a plan that failed
    half way would leave a run of darks only, and the stage out of the beam); return the shutter the darks
    close and open (``shutter``, else the detector's, else None)."""
    closer = shutter if shutter is not None else getattr(detector, "shutter", None)
    missing = []
    if n_darks and closer is None:
        missing.append(f"detector {getattr(detector, 'name', detector)!r} has no 'shutter' and none is given "
                       "(shutter=...)")
    missing += [f"stage {getattr(stage, 'name', stage)!r} has no {attr!r}"
                for attr in ("theta", "x") if not hasattr(stage, attr) and (attr == "theta" or n_flats)]
    if missing:
        raise TypeError(f"{plan}: {'; '.join(missing)}. Darks need a shutter (shutter=..., or the detector's "
                        "'shutter' signal), flats a stage 'x' that takes the sample out, and every projection "
                        "the stage's 'theta' (degrees): give the devices those components (an ophyd Device "
                        "subclass, or Signals that alias the existing ones), or n_darks=0 / n_flats=0")
    return closer


def _runs_of(indices: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted ``indices`` as runs of neighbours: ``(first, count)`` each (``[3, 4, 5, 9]``: ``[(3, 3), (9, 1)]``)."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and i == runs[-1][0] + runs[-1][1]:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((i, 1))
    return runs


def _collect_until_complete(flyers: Sequence[Any], collected: Sequence[Any], stream: str,
                            flush_period: float) -> Generator[Msg, Any, None]:
    """``bps.collect_while_completing``, that a suspension does not cut short.

    bluesky's waits on its ``complete`` group, and a suspension that interrupts that wait drops
    the group's statuses: after it the wait finds nothing to wait for, one last collect runs and
    the frames taken after it are never collected. Here the statuses are kept and polled, and
    the group is waited on once they are done (which raises a failed one's error).
    """
    group = short_uid("complete")
    statuses = []
    for device in flyers:
        statuses.append((yield from bps.complete(device, group=group, wait=False)))
    while not all(status.done for status in statuses):
        yield from bps.sleep(flush_period)
        yield from bps.collect(*collected, name=stream)
    yield from bps.wait(group=group)
    yield from bps.collect(*collected, name=stream)


def _least_deadtime(detector: Any) -> Generator[Msg, Any, float]:
    """The least time (s) the detector needs between two exposures, where it says (ophyd-async's
    ``StandardDetector.get_trigger_deadtime``), else 0."""
    ask = getattr(detector, "get_trigger_deadtime", None)
    if not callable(ask):
        return 0.0
    try:
        (done,) = yield from bps.wait_for([ask])
        _, needed = done.result()
    except Exception as exc:  # a detector that cannot say: the deadtime given stands
        log.warning("tomo_fly_scan: %s did not say its deadtime (%s: %s); the deadtime given is used",
                    getattr(detector, "name", detector), type(exc).__name__, exc)
        return 0.0
    return float(needed or 0.0)


def _require_flyable(detector: Any, motor: Any, shutter: Any, sample_x: Any, n_darks: int, n_flats: int,
                     capture: Sequence[Any]) -> None:
    missing = [f"{role} {getattr(device, 'name', device)!r} is not {kind} (no {method!r})"
               for role, device, kind, methods in (("detector", detector, "a flyable, collectable detector",
                                                    (Preparable, Flyable, Collectable)),
                                                   ("motor", motor, "a flyable motor", (Preparable, Flyable)),
                                                   *(("capture device", c, "flyable and collectable",
                                                      (Preparable, Flyable, Collectable)) for c in capture))
               for method in _missing_methods(device, methods)]
    if n_darks and shutter is None:
        missing.append(f"{n_darks} darks need a shutter (shutter=...), or n_darks=0")
    if n_flats and sample_x is None:
        missing.append(f"{n_flats} flats need a sample_x that takes the sample out of the beam, or n_flats=0")
    if missing:
        raise TypeError("tomo_fly_scan: " + "; ".join(missing))


def _missing_methods(device: Any, protocols: Sequence[type]) -> list[str]:
    # The protocols' methods the device lacks (bluesky's protocols are runtime-checkable, but an isinstance
    # says no more than "no"; a user needs to know which method).
    methods = {"Preparable": ("prepare",), "Flyable": ("kickoff", "complete"),
               "Collectable": ("describe_collect",)}
    return [m for p in protocols for m in methods[p.__name__] if not callable(getattr(device, m, None))]


def _fly_types() -> tuple[Any, Any]:
    """ophyd-async's ``TriggerInfo`` and ``FlyMotorInfo``: what its detectors and motors are prepared with."""
    try:
        from ophyd_async.core import FlyMotorInfo, TriggerInfo
    except ImportError as err:  # a core dependency it is not: only fly scans need it
        raise ImportError("tomo_fly_scan flies ophyd-async devices: install ophyd-async "
                          "(pip install 'bluesky-tomogan[fly]')") from err
    return TriggerInfo, FlyMotorInfo


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


def _darks_and_flats(detector: Any, stage: Any, n_darks: int, n_flats: int, out_position: float,
                     shutter: tuple[Any, Any, Any]) -> Generator[Msg, Any, None]:
    # One staging per stream: a detector opens one file (one StreamResource) per staging,
    # and a StreamResource belongs to one stream (TiledWriter stores it under that stream).
    closer, opened, closed = shutter
    if n_darks:
        yield from bps.mv(closer, closed)
        yield from bpp.stage_wrapper(_points(detector, stage, "dark", [None] * n_darks), [detector])
    if closer is not None:  # open for the flats and projections, darks or not
        yield from bps.mv(closer, opened)
    if n_flats:
        x0 = yield from bps.rd(stage.x)
        yield from bps.mv(stage.x, out_position)
        yield from bpp.stage_wrapper(_points(detector, stage, "flat", [None] * n_flats), [detector])
        yield from bps.mv(stage.x, x0)
