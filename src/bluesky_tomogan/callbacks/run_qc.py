"""One run's QC: raw-frame metrics, registration against neighbouring angles, verdicts and their feedback thread.

:class:`~.run.RunDenoiser` owns one :class:`RunQC` per run. The worker thread measures
and registers frames and judges finished ones; the callback thread records each raw
event's scalar readings (the angle, where a recommendation re-acquires) and where a fly scan's
angles lie in a file (read on the worker thread when a frame's angle is first asked for); a third thread
per run acts on the verdicts (:class:`~bluesky_tomogan.qc.QCFeedback`), never the
RunEngine's own thread.
"""

from __future__ import annotations

import bisect
import functools
import logging
import math
import queue
import threading
import time
from collections import deque
from typing import Any

import numpy as np
from event_model.documents import EventDescriptor, EventPage, RunStart

from ..frame_roles import DARK, FLAT, FrameRoles
from ..masked import missing_pixels
from ..qc.feedback import QCFeedback, Verdict
from ..qc.metrics import (
    DeadBefore,
    FrameMetrics,
    IntensityReference,
    PhotonTransfer,
    fixed_pattern,
    flat_noise_correlation,
    frame_metrics,
    motion_px,
    registered_offset,
    registration_image,
    registration_noise,
    rotation_allowance,
    signal_to_noise,
    white_noise_variance,
)
from ..qc.policy import UNUSABLE, Action, QCPolicy
from ..reconstruction import degrees_per_unit, nominal_angles
from ..stream_readers import FrameReader, scalar_rows
from .derived_stream import DerivedStream, FrameResult, QueuedFrame

__all__ = ["RunQC", "DROPPED", "BEAM_FLAGS", "OPEN_BEAM_FLOOR"]

log = logging.getLogger(__name__)
DROPPED = "dropped"  # start of the qc_error of a frame the queue policy dropped
#: Verdicts waiting for the feedback thread; when full the newest is dropped (logged): acting is fast.
FEEDBACK_QUEUE = 256
#: Scalar readings of so many recent raw events are kept, so a recommendation can say where to re-acquire.
POSITIONS_KEPT = 4096
#: Seconds between two tries to read angles announced in a file but not readable yet (not flushed): the worker asks
#: every millisecond while it waits for a frame's angle (:meth:`RunQC.angle_of`), and must not read the file as often.
FILED_RETRY_S = 0.02
#: StreamDatums of a fly scan's angles kept per stream (each any number of frames): a frame's angle is asked for
#: within a few frames of its StreamDatum, never thousands of StreamDatums later.
FILED_BLOCKS_KEPT = 1024
#: Flags that presume a beam: a dark frame (shutter closed) has none by design, and a photon counter's dark
#: frame is all zeros, which is not a readout failure.
BEAM_FLAGS = frozenset({"beam_lost", "noisy", "dead_pixels"})
#: The dark level (open beam) is the median of the means of a field's last so many dark (flat) frames.
SCAN_FRAMES_KEPT = 64
#: A frame whose intensity above the dark level, per second of exposure, is under this share of the run's
#: flats' (the open beam) had no beam, whatever the frames before it had: a scan that starts without beam
#: compares its frames with each other (ratio 1). No tomography sample stops 99 % of the beam over a frame.
OPEN_BEAM_FLOOR = 0.01
#: Dark frames are trusted only where a stream's frames stand at least this share of their level above them:
#: darks taken with the shutter open (as bright as the projections) would make every frame look beam-lost.
DARK_TRUST = 0.05


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
    dark_levels : dict, optional
        Field name -> its camera's dark level as the last run's dark frames gave it, shared with
        the facade's other runs (a run without darks of its own uses it): see :meth:`dark_level`.
    dead_before : dict, optional
        Field name -> where its last frame with light was dead (:class:`~bluesky_tomogan.qc.metrics.DeadBefore`;
        a frame flagged ``dead_pixels`` does not replace it), shared with the facade's other runs: a region
        dead there too (a photon counter beyond the beam's footprint) is not ``dead_pixels``; one that died
        now is.
    angle_field : str, optional
        The data key of each frame's rotation angle, in the streams that have it; in the others, the start
        document's first ``motors`` entry.
    noise_correlations : dict, optional
        Field name -> the lag-1 correlation of its camera's noise, from the last run's flats, shared with the
        facade's other runs (a run without flats uses it): see :meth:`noise_correlation`.
    photon_transfers : dict, optional
        Field name -> its camera's photon transfer curve from the last run's flats and darks, shared with the
        facade's other runs: see :meth:`photon_transfer`.
    """

    def __init__(self, feedback: QCFeedback, known_nan: dict[str, np.ndarray | None] | None = None,
                 dark_levels: dict[str, float] | None = None,
                 dead_before: dict[str, DeadBefore] | None = None, angle_field: str | None = None,
                 noise_correlations: dict[str, float] | None = None,
                 photon_transfers: dict[str, PhotonTransfer] | None = None) -> None:
        self.feedback = feedback
        # field -> where its last frame was NaN: a NaN pixel that was NaN in the detector's previous frame
        # too (in any stream, in an earlier run) is its mask, not a fault. Shared by the facade's runs.
        self._known_nan = {} if known_nan is None else known_nan
        self._dark_levels = {} if dark_levels is None else dark_levels
        self._dead_before = {} if dead_before is None else dead_before
        # field -> its camera noise's lag-1 correlation, from the median of this run's pairs of consecutive flats
        # (or an earlier run's): what a residual of noise alone correlates (out_of_distribution's baseline)
        self._noise_correlations = {} if noise_correlations is None else noise_correlations
        self._flat_noise: dict[str, deque[float]] = {}  # field -> this run's estimates from pairs of flats
        self._last_flat: dict[str, np.ndarray] = {}  # field -> this run's last usable flat (one frame each)
        # field -> its camera's noise against its signal, from this run's pairs of flats and darks (or an earlier
        # run's): the SNR of a camera that blurs
        self._photon_transfers = {} if photon_transfers is None else photon_transfers
        self._flat_powers: dict[str, deque[tuple[float, float]]] = {}  # field -> (mean, noise variance) per flat pair
        self._dark_powers: dict[str, deque[float]] = {}  # field -> noise variance per pair of this run's darks
        self._last_dark: dict[str, np.ndarray] = {}  # field -> this run's last usable dark
        # field -> this run's usable flats summed (float32) and counted: the camera's fixed pattern (fixed_pattern)
        self._flat_sums: dict[str, tuple[np.ndarray, int]] = {}
        self._flat_gaps: dict[str, np.ndarray] = {}  # field -> pixels without data in any of those flats
        self._patterns: dict[str, tuple[int, np.ndarray | None]] = {}  # field -> (flats in it, the pattern)
        self._dark_means: dict[str, deque[float]] = {}  # field -> means of this run's dark frames
        self._flats: dict[str, IntensityReference] = {}  # field -> this run's flats (the open beam), per second
        self._dark_said: set[str] = set()  # fields whose learnt dark level was logged
        self._dark_doubted: set[tuple[str, str]] = set()  # (raw stream, field) whose darks were not trusted
        self.uid = ""
        self._angle_field = angle_field
        self._motor: str | None = None  # the start document's first ``motors`` entry
        # raw stream -> the data key of its frames' angles (in its events or in a file); streams without one absent
        self._axis_keys: dict[str, str] = {}
        self._positions: dict[tuple[str, int], dict[str, Any]] = {}  # (raw stream, seq_num) -> scalar readings
        self._degrees_per_unit: dict[str, float] = {}  # raw stream -> of its angle readings (rad, mrad converted)
        # a fly scan without position capture records no angle: the nominal ones of its plan (the start document's
        # ``angles``, one per projection in order) stand in, in a ``primary`` stream of projections alone
        self._nominal: list[float] = []
        self._nominal_streams: set[str] = set()  # raw streams whose frame seq_num - 1 indexes ``_nominal``
        # raw stream -> where its frames' angles lie, a block per StreamDatum, in seq_num order
        self._filed: dict[str, list[_FiledAngles]] = {}
        self._angle_files: dict[FrameReader, _AngleFile] = {}  # a StreamResource's reader -> whether it fails
        self._verdicts: queue.Queue[Verdict | None] = queue.Queue(FEEDBACK_QUEUE)
        self._thread: threading.Thread | None = None

    @property
    def policy(self) -> QCPolicy:
        return self.feedback.policy

    def is_angle_key(self, data_key: str | None) -> bool:
        """Whether ``data_key`` holds the angles of a stream's frames (:meth:`take_angles`)."""
        return data_key is not None and data_key in self._axis_keys.values()

    def knows_angles_of(self, raw_name: str) -> bool:
        """Whether the frames of stream ``raw_name`` have angles: their own, or their plan's nominal ones."""
        return raw_name in self._axis_keys or raw_name in self._nominal_streams

    def start(self, doc: RunStart) -> None:
        """Take the run's uid and scanned axis (the rotation in ``tomo_scan``) and start the feedback thread."""
        self.uid = doc["uid"]
        self.feedback.run_started(self.uid)
        motors: list[Any] = list(doc.get("motors") or [])  # type: ignore[call-overload]
        self._motor = str(motors[0]) if motors else None
        self._nominal = nominal_angles(doc)
        self._thread = threading.Thread(target=self._feed, name=f"tomogan-qc-{self.uid[:8]}", daemon=True)
        self._thread.start()

    def ended(self) -> None:
        """The run's stop has come: verdicts acted on from now on trip no suspender (:meth:`QCFeedback.run_ended`)."""
        self.feedback.run_ended(self.uid)

    def close(self) -> None:
        """End the feedback thread after the verdicts before it; never waits for it (see :meth:`_feed`)."""
        try:
            self._verdicts.put(None, timeout=1.0)
        except queue.Full:
            log.warning("QC feedback of run %s is stuck; its thread is left to end on its own", self.uid)

    # -- callback thread --------------------------------------------------------------------

    def take_angles(self, descriptor: EventDescriptor, roles: FrameRoles) -> None:
        """How a raw stream gives its frames' angles, so that registration knows how far apart two are in degrees:
        the data key ``angle_field`` where the stream has it, else the start document's first ``motors`` entry, in
        events or in a file (``external: "STREAM:"``), in its ``units`` (``deg``, ``rad``, ``mrad``; degrees where
        it gives none); or, where the stream has neither, a ``primary`` stream of projections only (``roles`` says
        what its frames are), and the start document lists them: the plan's nominal angles."""
        name = descriptor.get("name", "primary")
        keys = descriptor.get("data_keys", {})
        axis = next((k for k in (self._angle_field, self._motor) if k is not None and k in keys), None)
        if axis is not None:
            self._axis_keys[name] = axis
            self._degrees_per_unit[name] = degrees_per_unit(keys[axis].get("units")) or 1.0
        else:
            self._axis_keys.pop(name, None)
        named = self._motor is not None or self._angle_field is not None  # the run says it turns something
        if (axis is None and named and name == "primary" and roles.key is None and roles.default is None
                and self._nominal):
            self._nominal_streams.add(name)
        else:
            self._nominal_streams.discard(name)

    def locate_angles(self, raw_name: str, read: FrameReader, doc: Any) -> None:
        """Where the angles of the frames of StreamDatum ``doc`` of stream ``raw_name`` lie: rows of the file
        ``read`` reads (a fly scan's position capture, ``external: "STREAM:"``). Read by the worker thread when
        first asked for, never here: the RunEngine's thread does not read files."""
        (row, stop), seq = (doc["indices"]["start"], doc["indices"]["stop"]), doc["seq_nums"]["start"]
        if doc["seq_nums"]["stop"] - seq != stop - row:
            log.warning("StreamDatum %s has seq_nums %s for indices %s; the angles in it are not read",
                        doc.get("uid"), doc["seq_nums"], doc["indices"])
            return
        source = self._angle_files.setdefault(read, _AngleFile(read))
        blocks = self._filed.setdefault(raw_name, [])
        bisect.insort(blocks, _FiledAngles(source, row, seq, stop - row), key=lambda b: b.seq)
        if len(blocks) > FILED_BLOCKS_KEPT:  # the oldest: their frames were denoised long ago
            del blocks[: len(blocks) - FILED_BLOCKS_KEPT]

    def unread_angles(self) -> tuple[int, str]:
        """Frames whose angle was asked for and could not be read from its file, and the last reason (callback
        thread, at the stop)."""
        failed = [b for blocks in list(self._filed.values()) for b in list(blocks) if b.error and b.values is None]
        return sum(b.count for b in failed), failed[-1].error if failed else ""

    def keep_positions(self, raw_name: str, doc: EventPage) -> None:
        """Scalar readings (angle, positions) of each raw event: where a recommendation re-acquires."""
        scalars = {k: v for k, v in doc["data"].items() if len(v) and np.isscalar(v[0])}
        for i, seq in enumerate(doc["seq_num"]):
            self._positions[(raw_name, seq)] = {k: v[i] for k, v in scalars.items()}
        while len(self._positions) > POSITIONS_KEPT:
            del self._positions[next(iter(self._positions))]

    # -- worker thread ----------------------------------------------------------------------

    def dark_level(self, field: str) -> float:
        """The dark level of ``field``'s camera: the policy's ``dark_level`` where it sets one, else the median
        mean of this run's dark frames (:mod:`~bluesky_tomogan.frame_roles`), else of the last run's that had
        any, else 0."""
        if self.policy.dark_level is not None:
            return float(self.policy.dark_level)
        level = self._dark_levels.get(field)
        if level is None:
            return 0.0
        if field not in self._dark_said:
            self._dark_said.add(field)
            log.info("QC: dark level of %s is %.4g counts, from %s dark frames (QCPolicy(dark_level=...) "
                     "sets it)", field, level,
                     f"this run's {len(self._dark_means[field])}" if field in self._dark_means else "an earlier run's")
        return level

    def _trust_darks(self, stream: DerivedStream, role: str | None, metrics: FrameMetrics, level: float) -> bool:
        """Whether the stream's frames of ``role`` (their intensity reference, else this frame) stand clearly above
        the dark level ``level`` learnt from dark frames; if not (a shutter open during the darks), warn once."""
        reference = stream.of(role).reference
        typical = float(np.median(reference.means)) if reference.means else metrics.mean
        if not math.isfinite(typical) or typical - level >= DARK_TRUST * abs(typical):
            return True
        if (stream.raw_name, stream.field) not in self._dark_doubted:
            self._dark_doubted.add((stream.raw_name, stream.field))
            log.warning("QC: the dark frames of %s (mean %.4g) are not darker than its %r frames (%.4g): a shutter "
                        "open during the darks, or no beam on those frames? QC takes the dark level as 0 for them "
                        "(QCPolicy(dark_level=...) sets it)", stream.field, level, stream.raw_name, typical)
        return False

    def add_scan_frame(self, role: str, field: str, frame: np.ndarray, exposure: float | None = None) -> None:
        """Take a dark frame of ``field`` into its dark level, or a flat one into its open beam (worker thread):
        a frame of a dark or flat stream that is not denoised (the callback's ``streams=`` leaves it out) comes
        here alone."""
        frame = np.asarray(frame)
        if frame.ndim == 3 and len(frame):  # several exposures per event: one is enough
            frame = frame[0]
        if frame.ndim != 2 or frame.dtype.kind not in "uif":
            return
        metrics = frame_metrics(frame, IntensityReference(), None, self.policy.saturation_for(frame.dtype))
        if UNUSABLE & self.evaluate(metrics, dark=role == DARK).keys():
            return
        if role == DARK:
            self._take_dark(field, metrics.mean, frame)
        elif role == FLAT:
            self._take_flat(field, metrics.mean, exposure, frame)

    def _take_flat(self, field: str, mean: float, exposure: float | None, frame: np.ndarray) -> None:
        if math.isfinite(mean):
            self._flats.setdefault(field, IntensityReference(SCAN_FRAMES_KEPT)).add(mean, exposure)
        summed = self._flat_sums.get(field)
        if summed is None or summed[0].shape != frame.shape:
            summed = (np.zeros(frame.shape, np.float32), 0)
            self._flat_gaps.pop(field, None)
        total, count = summed
        total += _flat_sum_term(frame)
        self._flat_sums[field] = (total, count + 1)
        gaps = missing_pixels(np.asarray(frame))
        if gaps is not None:  # pixels without data in any flat: out of the pattern
            self._flat_gaps[field] = gaps | self._flat_gaps[field] if field in self._flat_gaps else gaps
        last, self._last_flat[field] = self._last_flat.get(field), frame
        if last is None or last.shape != frame.shape:
            return
        estimate = flat_noise_correlation(frame, last)
        if math.isfinite(estimate):
            estimates = self._flat_noise.get(field)
            if estimates is None:  # this run's first pair: an earlier run's value no longer counts
                estimates = self._flat_noise[field] = deque(maxlen=SCAN_FRAMES_KEPT)
            estimates.append(estimate)
            self._noise_correlations[field] = float(np.median(estimates))
        power = white_noise_variance(frame, last, self.dark_level(field))
        if math.isfinite(power) and math.isfinite(mean):
            self._flat_powers.setdefault(field, deque(maxlen=SCAN_FRAMES_KEPT)).append((mean, power))
            self._fit_photon_transfer(field)

    def noise_correlation(self, field: str) -> float:
        """The lag-1 correlation of ``field``'s camera noise, from its flats (this run's, else an earlier run's);
        NaN where no flats were seen."""
        return self._noise_correlations.get(field, math.nan)

    def fixed_pattern(self, field: str, leave_out: np.ndarray | None = None) -> np.ndarray | None:
        """``field``'s camera's pixel-to-pixel gain pattern, from this run's usable flats (worker thread; computed
        again when a flat has come since); None before any. ``leave_out``: a flat in the sum, whose residual the
        pattern is for: the pattern of the others (each flat's noise is in the pattern it makes, and would be
        fitted away from its own residual)."""
        summed = self._flat_sums.get(field)
        if summed is None:
            return None
        if leave_out is not None:
            if summed[1] < 2 or leave_out.shape != summed[0].shape:
                return None
            others = summed[0] - _flat_sum_term(leave_out)
            return fixed_pattern(others, summed[1] - 1, self.dark_level(field), self._flat_gaps.get(field))
        cached = self._patterns.get(field)
        if cached is None or cached[0] != summed[1]:
            pattern = fixed_pattern(summed[0], summed[1], self.dark_level(field), self._flat_gaps.get(field))
            cached = self._patterns[field] = (summed[1], pattern)
        return cached[1]

    def photon_transfer(self, field: str) -> PhotonTransfer | None:
        """``field``'s camera noise against its signal, from pairs of consecutive flats and darks (this run's, else
        an earlier run's; the read noise 0 where no two darks were seen); None where no two flats were seen."""
        return self._photon_transfers.get(field)

    def _fit_photon_transfer(self, field: str) -> None:
        """The curve through the median of this run's pairs of flats and of darks (an earlier run's read noise
        where this run has no darks), at the dark level known now."""
        flats = self._flat_powers.get(field)
        if not flats:
            return
        darks = self._dark_powers.get(field)
        earlier = self._photon_transfers.get(field)
        read = float(np.median(darks)) if darks else earlier.read_variance if earlier is not None else 0.0
        means, powers = zip(*flats, strict=True)
        fitted = PhotonTransfer.from_levels(float(np.median(means)) - self.dark_level(field),
                                            float(np.median(powers)), read, self.noise_correlation(field))
        if fitted is None:  # flats no brighter or noisier than the darks: no curve, rather than an earlier run's
            self._photon_transfers.pop(field, None)
        else:
            self._photon_transfers[field] = fitted

    def open_beam_share(self, field: str, mean: float, exposure: float | None, dark: float) -> float:
        """A frame's intensity above ``dark`` per second of ``exposure``, over the median of this run's flats'
        (:meth:`IntensityReference.ratio`: 1.0 where they stand no higher than ``dark``; NaN without flats)."""
        flats = self._flats.get(field)
        return flats.ratio(mean, dark, exposure) if flats is not None else math.nan

    def _take_dark(self, field: str, mean: float, frame: np.ndarray) -> None:
        if not math.isfinite(mean):
            return
        means = self._dark_means.get(field)
        if means is None:  # this run's first dark frame: an earlier run's level no longer counts
            means = self._dark_means[field] = deque(maxlen=SCAN_FRAMES_KEPT)
        means.append(mean)
        self._dark_levels[field] = float(np.median(means))
        last, self._last_dark[field] = self._last_dark.get(field), frame
        if last is None or last.shape != frame.shape:
            return
        power = white_noise_variance(frame, last)  # the read noise (darks are not scaled: no beam to move)
        if math.isfinite(power):
            self._dark_powers.setdefault(field, deque(maxlen=SCAN_FRAMES_KEPT)).append(power)
            self._fit_photon_transfer(field)

    def evaluate(self, metrics: FrameMetrics, *, dark: bool) -> dict[str, Action]:
        """The flags ``metrics`` raise, with their actions; a dark frame's without those that presume a beam
        (``BEAM_FLAGS``)."""
        return {flag: action for flag, action in self.policy.evaluate(metrics).items()
                if not (dark and flag in BEAM_FLAGS)}

    def measure(self, item: QueuedFrame) -> list[str]:
        """Raw-frame QC metrics of ``item``; returns the flags that make it unusable."""
        stream, frame = item.stream, np.asarray(item.frame)
        try:
            level = self.policy.saturation_for(frame.dtype)
        except (TypeError, ValueError):  # not a number dtype: check_frames flags it
            return []
        role, state = item.role, stream.of(item.role)  # "dark", "flat" or None (projections): frame_roles
        dead_before = self._dead_before.setdefault(stream.field, DeadBefore())
        nan = np.isnan(frame) if frame.dtype.kind == "f" and frame.ndim == 2 else None
        dark_level = 0.0 if role == DARK else self.dark_level(stream.field)
        item.metrics = m = frame_metrics(frame, state.reference, None, level, dark_level,
                                         known_nan=self._known_nan.get(stream.field),
                                         narrower_camera=self.policy.saturation_level is None,
                                         exposure=item.exposure_s, dead_before=dead_before,
                                         transfer=None if role == DARK else self.photon_transfer(stream.field))
        self._known_nan[stream.field] = nan if nan is not None and nan.any() else None
        if dark_level and self.policy.dark_level is None and not self._trust_darks(stream, role, m, dark_level):
            m.intensity_ratio = state.reference.ratio(m.mean, 0.0, item.exposure_s)  # judged as without darks
            m.snr = signal_to_noise(m.mean, m.noise_sigma)  # (the photon transfer's read noise is of those darks)
            m.camera_noise_sigma = math.nan
            dark_level = 0.0
        if role is None:  # a projection: against the open beam too, where the run's flats give it
            share = self.open_beam_share(stream.field, m.mean, item.exposure_s, dark_level)
            if share < OPEN_BEAM_FLOOR:  # (NaN compares False)
                m.intensity_ratio = min(m.intensity_ratio, share)
        flags = self.evaluate(m, dark=role == DARK)
        unusable = sorted(UNUSABLE & flags.keys())
        if "dead_pixels" not in flags or dead_before.mask is None:  # a failed readout is not where light falls
            dead_before.accept()
        mean = item.metrics.mean
        if not unusable and frame.shape == stream.shape and math.isfinite(mean):  # a NaN would poison the median
            state.reference.add(mean, item.exposure_s)
            if role == DARK:
                self._take_dark(stream.field, mean, frame)
            elif role == FLAT:
                self._take_flat(stream.field, mean, item.exposure_s, frame)
                item.in_flat_sum = True
        return unusable

    def register(self, item: QueuedFrame) -> None:
        """Shift of a usable frame against the last frame at the same or a neighbouring angle.

        Runs when the frame is denoised, one frame after it arrived, so its raw event (with
        the angle) has been seen. Without an angle (a plain count) the previous frame is the
        neighbour; with one, the nearest recent angle within 1.5 angular steps, so that a
        re-acquired or rewound angle is not compared with a far one. ``shift_px`` is the
        whole shift; ``motion_px`` (the ``motion`` flag's metric) leaves out the sideways
        shift that rotation makes between the two angles (:func:`~..qc.metrics.rotation_allowance`), on
        projections only: a flat's shift is its beam profile's, whose few coarse features place a match no
        closer than a few pixels (shifts of 0.9-6.4 pixels between flats of the ``make demo`` scan).
        """
        stream = item.stream
        state = stream.of(item.role)  # darks and flats are registered among their own kind
        frame = np.asarray(item.frame)
        angle = self._angle(stream.raw_name, item.seq_num)
        image = registration_image(frame)
        noise = registration_noise(image, item.metrics, self.photon_transfer(stream.field))
        neighbour, step = None, None
        if angle is None:
            neighbour = state.history[-1] if state.history else None
        else:
            known = [(abs(kept[0] - angle), kept) for kept in state.history if kept[0] is not None]
            if known:
                step, kept = min(known, key=lambda t: t[0])
                tolerance = 1.5 * float(np.median(state.steps)) if state.steps else math.inf
                neighbour = kept if step <= tolerance else None
            last = state.history[-1][0] if state.history else None
            if last is not None and abs(angle - last) > 0:
                state.steps.append(abs(angle - last))
        if neighbour is not None:
            _, neighbour_image, neighbour_noise = neighbour
            down, right = registered_offset(neighbour_image, image, (neighbour_noise, noise))
            item.metrics.shift_px = math.hypot(down, right)
            if item.role is None:  # a flat has no sample in the beam to move, a dark no light
                allowance = rotation_allowance(state.sideways, step, frame.shape[-1])
                item.metrics.motion_px = motion_px(down, right, allowance)
                if math.isfinite(right) and step != 0:  # frames at one angle say nothing about rotation
                    state.sideways.append(abs(right))
        state.history.append((angle, image, noise))

    def judge(self, result: FrameResult) -> None:
        """Evaluate the QC policy on a finished frame and hand the verdict to the feedback thread."""
        item = result.item
        item.metrics.latency_s = result.finished - item.received
        result.flags = self.evaluate(item.metrics, dark=item.role == DARK)
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

    def angle_of(self, item: QueuedFrame, wait: float = 0.0) -> float | None:
        """The rotation angle of a frame in degrees (its event's reading of the scanned axis, the row of a file
        that a fly scan's position capture wrote it to, or its plan's nominal angle), or None where none is known.
        ``wait``: seconds to wait for the event (or StreamDatum) of a frame whose stream carries the axis (bluesky
        emits a frame's StreamDatum before its event, and the worker may take the frame first), so that the
        answer does not depend on which thread ran first."""
        angle = self._angle(item.stream.raw_name, item.seq_num)
        if angle is None and wait > 0 and item.stream.raw_name in self._axis_keys:
            deadline = time.monotonic() + wait
            while angle is None and (now := time.monotonic()) < deadline:
                block = self._block(item.stream.raw_name, item.seq_num)
                # read, and no angle (NaN), or its file fails: none will come
                if block is not None and (block.values is not None or block.source.failed_for(now) >= wait):
                    break
                time.sleep(0.001)
                angle = self._angle(item.stream.raw_name, item.seq_num)
        return angle

    def _block(self, raw_name: str, seq_num: int) -> _FiledAngles | None:
        """The StreamDatum whose rows hold the angle of frame ``seq_num`` of ``raw_name``, if one came."""
        blocks = list(self._filed.get(raw_name, ()))  # a copy: the callback thread adds to it
        i = bisect.bisect_right(blocks, seq_num, key=lambda b: b.seq) - 1
        return blocks[i] if i >= 0 and seq_num < blocks[i].seq + blocks[i].count else None

    def _position(self, raw_name: str, seq_num: int) -> dict[str, Any]:
        return self._positions.get((raw_name, seq_num), {})

    def _angle(self, raw_name: str, seq_num: int) -> float | None:
        axis = self._axis_keys.get(raw_name)
        value = None if axis is None else self._position(raw_name, seq_num).get(axis)
        if value is None:
            block = self._block(raw_name, seq_num)
            value = block.value(seq_num) if block is not None else None
        if value is not None:
            return float(value) * self._degrees_per_unit.get(raw_name, 1.0)
        if raw_name in self._nominal_streams and 0 < seq_num <= len(self._nominal):
            return self._nominal[seq_num - 1]
        return None

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


class _AngleFile:
    """A file of angles (one StreamResource's reader) and since when reading it fails: a frame's angle is not
    waited for in a file that has failed for as long as the wait (missing, unreadable), or every frame would wait."""

    def __init__(self, read: FrameReader) -> None:
        self.read = read
        self.failing_since: float | None = None

    def failed_for(self, now: float) -> float:
        return 0.0 if self.failing_since is None else now - self.failing_since


def _flat_sum_term(frame: np.ndarray) -> np.ndarray:
    """What a flat adds to its run's sum of flats (:meth:`RunQC.fixed_pattern`), and what leaving it out takes
    away: float32, a pixel without a finite value 0."""
    return np.nan_to_num(np.asarray(frame, np.float32), nan=0.0, posinf=0.0, neginf=0.0)


class _FiledAngles:
    """The angles of one StreamDatum's rows, in a file (a PandA's position capture): read all at once when the
    first is asked for (worker thread); a read that fails (rows announced, not flushed yet) is tried again, at
    most every ``FILED_RETRY_S``."""

    def __init__(self, source: _AngleFile, row: int, seq: int, count: int) -> None:
        self.source, self.row, self.seq, self.count = source, row, seq, count
        self.values: list[Any] | None = None
        self.error = ""
        self._tried = -math.inf

    def value(self, seq: int) -> float | None:
        if self.values is None:
            now = time.monotonic()
            if now - self._tried < FILED_RETRY_S:
                return None
            self._tried = now
            try:
                self.values = scalar_rows(self.source.read, self.row, self.row + self.count)
            except Exception as exc:  # a file short of these rows, gone or unreadable: no angle, the frame goes on
                self.error = f"{type(exc).__name__}: {exc}"
                if self.source.failing_since is None:
                    self.source.failing_since = now
                return None
            self.source.failing_since = None
        value = self.values[seq - self.seq]
        try:
            angle = float(value)
        except (TypeError, ValueError):
            return None
        return angle if math.isfinite(angle) else None
