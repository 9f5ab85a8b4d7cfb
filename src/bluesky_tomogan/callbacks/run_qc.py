"""One run's QC: raw-frame metrics, registration against neighbouring angles, verdicts and their feedback thread.

:class:`~.run.RunDenoiser` owns one :class:`RunQC` per run. The worker thread measures
and registers frames and judges finished ones; the callback thread records each raw
event's scalar readings (the angle, where a recommendation re-acquires); a third thread
per run acts on the verdicts (:class:`~bluesky_tomogan.qc.QCFeedback`), never the
RunEngine's own thread.
"""

from __future__ import annotations

import functools
import logging
import math
import queue
import threading
from typing import Any

import numpy as np
from event_model.documents import EventPage, RunStart

from ..qc.feedback import QCFeedback, Verdict
from ..qc.metrics import frame_metrics, motion_px, registered_offset, registration_image, rotation_allowance
from ..qc.policy import UNUSABLE, QCPolicy
from .derived_stream import FrameResult, QueuedFrame

__all__ = ["RunQC", "DROPPED"]

log = logging.getLogger(__name__)
DROPPED = "dropped"  # start of the qc_error of a frame the queue policy dropped
#: Verdicts waiting for the feedback thread; when full the newest is dropped (logged): acting is fast.
FEEDBACK_QUEUE = 256
#: Scalar readings of so many recent raw events are kept, so a recommendation can say where to re-acquire.
POSITIONS_KEPT = 4096


class RunQC:
    """QC of one run's frames, and the thread that acts on its verdicts.

    Parameters
    ----------
    feedback : QCFeedback
        The session's feedback (its policy judges, its actions steer the scan).
    known_nan : dict, optional
        Field name -> where its last frame was NaN, shared with the facade's other runs (a
        detector that marks pixels without data with NaN does so in every frame: those pixels
        are its mask, not ``nonfinite``; the first frame that shows them is flagged).
    """

    def __init__(self, feedback: QCFeedback, known_nan: dict[str, np.ndarray | None] | None = None) -> None:
        self.feedback = feedback
        # field -> where its last frame was NaN: a NaN pixel that was NaN in the detector's previous frame
        # too (in any stream, in an earlier run) is its mask, not a fault. Shared by the facade's runs.
        self._known_nan = {} if known_nan is None else known_nan
        self.uid = ""
        self._motor: str | None = None
        self._positions: dict[tuple[str, int], dict[str, Any]] = {}  # (raw stream, seq_num) -> scalar readings
        self._verdicts: queue.Queue[Verdict | None] = queue.Queue(FEEDBACK_QUEUE)
        self._thread: threading.Thread | None = None

    @property
    def policy(self) -> QCPolicy:
        return self.feedback.policy

    def start(self, doc: RunStart) -> None:
        """Take the run's uid and scanned axis (the rotation in ``tomo_scan``) and start the feedback thread."""
        self.uid = doc["uid"]
        motors: list[Any] = list(doc.get("motors") or [])  # type: ignore[call-overload]
        self._motor = str(motors[0]) if motors else None
        self._thread = threading.Thread(target=self._feed, name=f"tomogan-qc-{self.uid[:8]}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """End the feedback thread after the verdicts before it; never waits for it (see :meth:`_feed`)."""
        try:
            self._verdicts.put(None, timeout=1.0)
        except queue.Full:
            log.warning("QC feedback of run %s is stuck; its thread is left to end on its own", self.uid)

    # -- callback thread --------------------------------------------------------------------

    def keep_positions(self, raw_name: str, doc: EventPage) -> None:
        """Scalar readings (angle, positions) of each raw event: where a recommendation re-acquires."""
        scalars = {k: v for k, v in doc["data"].items() if len(v) and np.isscalar(v[0])}
        for i, seq in enumerate(doc["seq_num"]):
            self._positions[(raw_name, seq)] = {k: v[i] for k, v in scalars.items()}
        while len(self._positions) > POSITIONS_KEPT:
            del self._positions[next(iter(self._positions))]

    # -- worker thread ----------------------------------------------------------------------

    def measure(self, item: QueuedFrame) -> list[str]:
        """Raw-frame QC metrics of ``item``; returns the flags that make it unusable."""
        stream, frame = item.stream, np.asarray(item.frame)
        try:
            level = self.policy.saturation_for(frame.dtype)
        except (TypeError, ValueError):  # not a number dtype: check_frames flags it
            return []
        nan = np.isnan(frame) if frame.dtype.kind == "f" and frame.ndim == 2 else None
        item.metrics = frame_metrics(frame, stream.reference, None, level, self.policy.dark_level,
                                     known_nan=self._known_nan.get(stream.field),
                                     narrower_camera=self.policy.saturation_level is None)
        self._known_nan[stream.field] = nan if nan is not None and nan.any() else None
        unusable = sorted(UNUSABLE & set(self.policy.evaluate(item.metrics)))
        mean = item.metrics.mean
        if not unusable and frame.shape == stream.shape and math.isfinite(mean):  # a NaN would poison the median
            stream.reference.add(mean)
        return unusable

    def register(self, item: QueuedFrame) -> None:
        """Shift of a usable frame against the last frame at the same or a neighbouring angle.

        Runs when the frame is denoised, one frame after it arrived, so its raw event (with
        the angle) has been seen. Without an angle (a plain count) the previous frame is the
        neighbour; with one, the nearest recent angle within 1.5 angular steps, so that a
        re-acquired or rewound angle is not compared with a far one. ``shift_px`` is the
        whole shift; ``motion_px`` (the ``motion`` flag's metric) leaves out the sideways
        shift that rotation makes between the two angles (:func:`~..qc.metrics.rotation_allowance`).
        """
        stream = item.stream
        frame = np.asarray(item.frame)
        angle = self._angle(stream.raw_name, item.seq_num)
        image = registration_image(frame)
        neighbour, step = None, None
        if angle is None:
            neighbour = stream.history[-1][1] if stream.history else None
        else:
            known = [(abs(a - angle), img) for a, img in stream.history if a is not None]
            if known:
                step, img = min(known, key=lambda t: t[0])
                tolerance = 1.5 * float(np.median(stream.steps)) if stream.steps else math.inf
                neighbour = img if step <= tolerance else None
            last = stream.history[-1][0] if stream.history else None
            if last is not None and abs(angle - last) > 0:
                stream.steps.append(abs(angle - last))
        if neighbour is not None:
            down, right = registered_offset(neighbour, image)
            item.metrics.shift_px = math.hypot(down, right)
            allowance = rotation_allowance(stream.sideways, step, frame.shape[-1])
            item.metrics.motion_px = motion_px(down, right, allowance)
            if math.isfinite(right) and step != 0:  # frames at one angle say nothing about rotation
                stream.sideways.append(abs(right))
        stream.history.append((angle, image))

    def judge(self, result: FrameResult) -> None:
        """Evaluate the QC policy on a finished frame and hand the verdict to the feedback thread."""
        item = result.item
        item.metrics.latency_s = result.finished - item.received
        result.flags = dict(self.policy.evaluate(item.metrics))
        reasons = {}
        if result.error.startswith(DROPPED):  # dropped means the denoiser fell behind
            result.flags["lagging"] = self.policy.rules["lagging"].action
            reasons["lagging"] = result.error
        verdict = Verdict(self.uid, item.stream.bundle.descriptor_doc["name"], item.seq_num,
                          item.metrics.as_dict(), result.flags,
                          functools.partial(self._position, item.stream.raw_name, item.seq_num), reasons)
        try:
            self._verdicts.put_nowait(verdict)
        except queue.Full:
            log.warning("QC feedback queue full (%d); verdict of %s seq %d dropped", FEEDBACK_QUEUE,
                        verdict.stream, verdict.seq_num)

    def _position(self, raw_name: str, seq_num: int) -> dict[str, Any]:
        return self._positions.get((raw_name, seq_num), {})

    def _angle(self, raw_name: str, seq_num: int) -> float | None:
        if self._motor is None:
            return None
        value = self._position(raw_name, seq_num).get(self._motor)
        return None if value is None else float(value)

    # -- feedback thread --------------------------------------------------------------------

    def _feed(self) -> None:
        """Act on verdicts, in order, off the worker and the RunEngine's thread.

        It is not joined at the stop: an action may wait for the RunEngine's event loop
        (``request_pause``), which is busy delivering that very stop.
        """
        while True:
            verdict = self._verdicts.get()
            if verdict is None:
                return
            self.feedback.act(verdict)
