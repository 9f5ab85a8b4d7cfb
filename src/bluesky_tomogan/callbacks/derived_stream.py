"""The derived streams' layout: which raw fields are frames, and what each derived row holds.

:mod:`.run` makes one derived stream per (raw stream, image field, frame shape). Its data
keys (:func:`derived_data_keys`) and the columns of its rows (:func:`row_columns`) are
defined here side by side, so that a column added to one is added to the other. The
frames on their way through a run's queue and worker (:class:`QueuedFrame`,
:class:`Dropped`) and what the worker makes of them (:class:`FrameResult`) are the rows'
raw material.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..frame_roles import FRAME_ROLES, SCAN_ROLE_NAMES, scan_role
from ..frames import has_channel_axis, looks_like_colour, without_channel_axis
from ..qc.metrics import SIDEWAYS_HISTORY, UNITS, FrameMetrics, IntensityReference, PreviousResidual
from ..qc.policy import Action

__all__ = ["DerivedStream", "Dropped", "RoleState", "FrameResult", "QueuedFrame", "declared_shape",
           "derived_data_keys",
           "derived_from", "derived_name", "exposure_time", "made_by_us", "scan_role", "SCAN_ROLE_NAMES",
           "exposures_per_event", "frame_shape", "image_fields", "not_a_frame", "row_columns", "shapeless_arrays",
           "unsupported_image_fields", "without_channel_axis"]

#: Recent usable frames per stream (binned) among which registration looks for a neighbouring angle.
REGISTRATION_HISTORY = 8


def declared_shape(data_key: Mapping[str, Any]) -> list[int]:
    """A data key's shape as the callback reads it, 0 for a size it leaves unknown.

    A frame count left unknown (``[None, H, W]``) is dropped; other unknown (``None``) sizes
    are 0. ophyd's area detectors before 1.4 declared ``[X, Y, 0]`` (the frame's width first, and
    a depth of 0; ophyd PR 746): read as one frame of unknown size, ``[0, 0]``. A frame whose size
    is unknown gets it from the frames themselves (:class:`~.run.RunDenoiser`).
    """
    raw = list(data_key.get("shape") or [])
    if len(raw) == 3 and raw[0] is None:
        raw = raw[1:]
    shape = [0 if s is None else int(s) for s in raw]
    if len(shape) == 3 and shape[-1] == 0 and shape[0] > 0 and shape[1] > 0:
        return [0, 0]
    return shape


def _an_array(data_key: Mapping[str, Any], shape: list[int]) -> bool:
    """Whether a data key declares arrays: dtype ``"array"``, or a number type (the elements' type, as some
    devices declare it) with a shape of two or more dimensions, which no scalar has."""
    dtype = data_key.get("dtype")
    return dtype == "array" or (dtype in ("integer", "number") and len(shape) >= 2)


def image_fields(descriptor: Mapping[str, Any]) -> list[str]:
    """Data keys of a descriptor that hold 2-D frames: one per event (shape ``[H, W]``, ``[1, H, W]`` or
    ``[H, W, 1]``) or several (``[N, H, W]``: a detector taking N exposures per event,
    :func:`exposures_per_event`)."""
    out = []
    for key, dk in descriptor.get("data_keys", {}).items():
        shape = declared_shape(dk)
        if _an_array(dk, shape) and (len(shape) == 2 or (len(shape) == 3 and not looks_like_colour(shape))):
            out.append(key)
    return out


def shapeless_arrays(descriptor: Mapping[str, Any]) -> list[str]:
    """Data keys of a descriptor whose dtype is ``"array"`` but whose shape is ``[]`` (event-model's scalar), as a
    device may declare before it knows its frame size. They may hold frames: the callback denoises one when asked
    to by name (``fields=``), at the size its frames come in. (A 1-D array of unknown length, ``[None]`` or
    ophyd-async's ``[0]`` for an ``Array1D`` signal, declares what it is: not frames.)"""
    return [key for key, dk in descriptor.get("data_keys", {}).items()
            if dk.get("dtype") == "array" and declared_shape(dk) == []]


def not_a_frame(data_key: Mapping[str, Any]) -> str:
    """Why a data key named to be denoised does not declare frames (empty if it does, or may: an array of no
    declared shape, :func:`shapeless_arrays`)."""
    shape, dtype = declared_shape(data_key), data_key.get("dtype")
    if not _an_array(data_key, shape):
        return f"its data key declares dtype {dtype!r} with shape {list(data_key.get('shape') or [])}, not an image"
    if len(shape) == 1:
        values = f"{shape[0]} values" if shape[0] else "values (of no declared length)"
        return (f"its data key declares a 1-D array of {values}, not a 2-D frame; a flattened image (an area "
                "detector's ArrayData waveform) is denoised once its device declares [height, width]")
    return ""


def frame_shape(data_key: Mapping[str, Any]) -> tuple[int, int]:
    """``(H, W)`` of an image data key's frames (0 where the key leaves a dimension unknown, both where it
    declares no shape: :func:`shapeless_arrays`)."""
    shape = declared_shape(data_key)
    if len(shape) < 2:
        return (0, 0)
    return (shape[0], shape[1]) if has_channel_axis(shape) else (shape[-2], shape[-1])


def exposures_per_event(data_key: Mapping[str, Any]) -> int:
    """How many frames one event of an image data key holds: N of ``[N, H, W]``, else 1."""
    shape = declared_shape(data_key)
    return max(int(shape[0]), 1) if len(shape) == 3 and not has_channel_axis(shape) else 1


def unsupported_image_fields(descriptor: Mapping[str, Any]) -> dict[str, str]:
    """Array data keys that look like images but are not 2-D frames, with the reason.

    Colour and higher-rank images are not denoised; the callback says so instead of
    leaving the user to wonder why no derived stream appeared.
    """
    out = {}
    for key, dk in descriptor.get("data_keys", {}).items():
        shape = declared_shape(dk)
        if not _an_array(dk, shape) or len(shape) < 3:
            continue
        if looks_like_colour(shape):
            out[key] = f"shape {shape} looks like a colour image; only single-channel frames are denoised"
        elif len(shape) > 3:
            out[key] = f"shape {shape} has more than three dimensions"
    return out


class ArrivalRate:
    """How often a stream's frames come: the time between frames over its last :attr:`DELIVERIES` deliveries.

    A delivery is the document that brought frames (an event, an event page, a StreamDatum). A fly scan's camera
    writes its frames to a file and announces them every flush period, tens at once: the gaps between frames are
    0 within a delivery and the whole period between deliveries, so their moving average swung with the phase of
    the batch and mostly read a rate several times the real one (``policy="adaptive"`` then took every network
    for too slow). Frames per second between the first and the last delivery of the window is the rate whatever
    the batches."""

    DELIVERIES = 9  # a window of as many frames one at a time as the moving average of weight 0.2 it replaces

    def __init__(self) -> None:
        self._deliveries: deque[list[float]] = deque(maxlen=self.DELIVERIES)  # [received, delivery id, frames]
        self._lock = threading.Lock()  # added to by the RunEngine's thread as frames come, read by the worker

    def add(self, received: float, delivery: int) -> None:
        """A frame received at ``received`` (seconds) in delivery ``delivery``."""
        with self._lock:
            last = self._deliveries[-1] if self._deliveries else None
            if last is not None and last[1] == delivery:
                last[2] += 1
            else:
                self._deliveries.append([received, float(delivery), 1.0])

    @property
    def interval(self) -> float | None:
        """Seconds between frames; ``None`` until frames of two deliveries have come."""
        with self._lock:
            if len(self._deliveries) < 2:
                return None
            after_first = sum(d[2] for d in list(self._deliveries)[1:])
            return max(self._deliveries[-1][0] - self._deliveries[0][0], 0.0) / after_first

    @property
    def between_deliveries(self) -> float | None:
        """Seconds between deliveries (:attr:`interval` where frames come one at a time): how long a frame at
        the end of a batch waits for its next neighbour. ``None`` until two deliveries have come."""
        with self._lock:
            if len(self._deliveries) < 2:
                return None
            return max(self._deliveries[-1][0] - self._deliveries[0][0], 0.0) / (len(self._deliveries) - 1)


@dataclass
class RoleState:
    """What a derived stream keeps of one kind of its frames (projections, darks or flats)."""

    reference: IntensityReference = dataclasses.field(default_factory=IntensityReference)  # worker only
    # Recent usable frames as (angle or None, registration image, its noise: registration_noise), and angular
    # steps seen (worker only)
    history: deque[tuple[float | None, np.ndarray, float]] = dataclasses.field(
        default_factory=lambda: deque(maxlen=REGISTRATION_HISTORY))
    steps: deque[float] = dataclasses.field(default_factory=lambda: deque(maxlen=32))
    # Recent sideways shifts between neighbouring frames, in pixels: what rotation does on this scan (worker only)
    sideways: deque[float] = dataclasses.field(default_factory=lambda: deque(maxlen=SIDEWAYS_HISTORY))
    # What the denoiser removed from the last frame: signal if the next repeats it (worker only)
    previous_residual: PreviousResidual = dataclasses.field(default_factory=PreviousResidual)
    # Token of the newest frame of this role handed to the queue (set by the RunEngine's thread): a frame
    # whose successor is already queued waits for it, however far behind the worker runs.
    latest_token: int = -1
    # How often frames of this role come, as they reach the queue (the RunEngine's thread; a worker that runs
    # behind knows the rate as soon as the second delivery comes): the adaptive policy's frame rate, and how long
    # a frame waits for its next neighbour
    arrivals: ArrivalRate = dataclasses.field(default_factory=ArrivalRate)


@dataclass
class DerivedStream:
    """One derived stream (raw stream name, image field, frame shape) and its composed descriptor."""

    raw_name: str
    field: str
    shape: tuple[int, int]
    bundle: Any  # event_model.ComposeDescriptorBundle
    slot: str  # file name (data key, plus a suffix for a second shape)
    exposures: int = 1  # frames per raw event ([N, H, W]); each is denoised and gets a row of its own
    dtype: str = "<f4"  # how its frames are stored (TomoGANCallback's frame_dtype)
    resource_error: str = ""  # why its frames cannot be written, once that is known
    resource_ready: bool = False
    # What QC and the context windows keep of each kind of frame: a stream whose events say what each
    # frame is (frame_roles) holds darks, flats and projections, each judged and denoised among its own
    roles: dict[str | None, RoleState] = dataclasses.field(
        default_factory=lambda: {role: RoleState() for role in FRAME_ROLES})  # fixed keys: read by both threads
    matched: bool = False  # a frame of the declared shape has come (worker only)
    redirected: bool = False  # frames came in another shape and went to a stream of their own (worker only)
    # Its descriptor and StreamResource, composed but not yet published: the RunEngine's thread publishes
    # them before the stream's first rows (or, for a stream that got none, its descriptor at the stop)
    unpublished: list[tuple[str, Any]] = dataclasses.field(default_factory=list)

    def of(self, role: str | None) -> RoleState:
        """What this stream keeps of its frames of ``role``."""
        return self.roles[role]


@dataclass
class QueuedFrame:
    """A raw frame on its way through a run's queue and worker, with its identity and QC metrics."""

    stream: DerivedStream
    frame: np.ndarray | Callable[[], np.ndarray] | None  # external frames are loaded by the worker
    seq_num: int
    uid: str  # the document that delivered the frame: event, or StreamDatum
    received: float
    token: int
    exposure: int = 0  # which of its event's frames (events of an [N, H, W] field hold N)
    exposure_s: float | None = None  # its exposure time, from its descriptor's configuration (exposure_time)
    role: str | None = None  # "dark", "flat", "invalid" or None (a projection): frame_roles
    # The derived stream of the raw descriptor that announced it (``stream`` until the worker finds the
    # frame's shape to differ from the declared one; it then moves to the stream of its real shape).
    # Frames are emitted in their origin's order. Always a stream: __post_init__ sets it to ``stream``.
    origin: DerivedStream = None  # type: ignore[assignment]
    # the run's busy clock when it came (RunDenoiser.busy_clock): time the RunEngine spent waiting on
    # this callback since then is not time in which its next frame could have come
    busy_at_receipt: float = 0.0
    metrics: FrameMetrics = field(default_factory=FrameMetrics)
    done: bool = False  # denoised (its row is on its way)
    recorded: bool = False  # its result was handed to the row writer (denoised or not)
    # its row in its derived stream's file, taken in the order frames are handled (RunDenoiser._take_row), so that
    # file rows follow the rows emitted whatever order frames finish in
    row: int | None = None
    # a flat taken into its run's sum of flats (the camera's fixed pattern, RunQC.fixed_pattern): its own
    # residual is fitted by the pattern of the others, which does not hold its own noise
    in_flat_sum: bool = False

    def __post_init__(self) -> None:
        if self.origin is None:
            self.origin = self.stream


@dataclass
class Dropped:
    """What a frame dropped by the queue policy leaves for the worker: its identity, no pixels."""

    item: QueuedFrame


@dataclass
class FrameResult:
    """What the worker made of a frame: the denoised frame (or why there is none), its network and flags."""

    item: QueuedFrame
    denoised: np.ndarray | None
    error: str = ""
    finished: float = 0.0
    index: int = -1  # row in the derived-frame file, when frames are written to one
    ratio: float = math.nan  # pruning ratio of the network that denoised it (percent of MACs removed)
    model: str = ""  # name of the network that denoised it (an adaptive ladder may hold two models)
    flags: dict[str, Action] = field(default_factory=dict)  # QC flag -> action


#: The ``source`` of every data key this package makes (derived frames, QC columns, reconstructions).
SOURCE = "bluesky-tomogan"


def made_by_us(descriptor: Mapping[str, Any]) -> bool:
    """Whether a descriptor is one this package made: every data key has ``source`` :data:`SOURCE`."""
    keys = descriptor.get("data_keys") or {}
    return bool(keys) and all(k.get("source") == SOURCE for k in keys.values())


#: Configuration keys that hold a camera's exposure time, by how they end: ophyd's ``det_cam_acquire_time``,
#: ophyd-async's ``det-driver-acquire_time``, this package's ``det_exposure_time``.
EXPOSURE_KEYS = ("acquire_time", "exposure_time", "exposure")


def exposure_time(descriptor: Mapping[str, Any], field_name: str) -> float | None:
    """The exposure time (s) of the device that gives ``field_name``, from the descriptor's configuration
    (a key ending in one of :data:`EXPOSURE_KEYS`); ``None`` where it does not say."""
    owner = next((obj for obj, keys in (descriptor.get("object_keys") or {}).items() if field_name in keys), None)
    configuration = (descriptor.get("configuration") or {}).get(owner) or {}
    data = configuration.get("data") or {}
    for ending in EXPOSURE_KEYS:
        for key, value in data.items():
            if (key.lower().endswith(ending) and isinstance(value, (int, float)) and not isinstance(value, bool)
                    and value > 0 and math.isfinite(value)):
                return float(value)
    return None


def derived_name(raw_stream: str) -> str:
    """The name of the derived stream of ``raw_stream`` (one image field, no clash): ``denoised`` for
    ``primary``, ``<raw>_denoised`` for the others. :func:`derived_from` reads it back for old runs."""
    return "denoised" if raw_stream == "primary" else f"{raw_stream}_denoised"


def derived_from(descriptor: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(raw stream, image field)`` that a derived stream of this package denoises; ``None`` for others.

    Read from the descriptor's ``tomogan`` configuration (``source_stream``, ``source_field``),
    so that a derived stream renamed to avoid a raw stream's name (``denoised_2``) is still
    found. Runs written before that configuration existed are read by their names
    (``denoised`` from ``primary``, ``<raw>_denoised`` from ``<raw>``).
    """
    if not made_by_us(descriptor):
        return None
    data = ((descriptor.get("configuration") or {}).get("tomogan") or {}).get("data") or {}
    fields = [k[: -len("_denoised")] for k in descriptor.get("data_keys", {}) if k.endswith("_denoised")]
    if "source_stream" in data:
        return str(data["source_stream"]), str(data.get("source_field") or (fields[0] if fields else ""))
    name = str(descriptor.get("name", ""))
    if not fields or not name.endswith("denoised"):
        return None
    return ("primary" if name == "denoised" else name[: -len("_denoised")]), fields[0]


def derived_data_keys(f: str, shape: tuple[int, int], external: bool, exposures: int = 1,
                      dtype_numpy: str = "<f4") -> dict[str, Any]:
    """Data keys of the derived stream of image field ``f``: the frame (inline, or ``external`` in a file; stored
    as ``dtype_numpy``), the network that made it, its QC metrics, flags and error, and the raw frame it came
    from (with ``exposures`` > 1, one row per frame of an event: which one, ``source_exposure``)."""
    frame_key: dict[str, Any] = {"source": SOURCE, "dtype": "array", "shape": list(shape),
                                 "dtype_numpy": dtype_numpy, "object_name": "tomogan"}
    if external:  # written to HDF5, described by StreamResource/StreamDatum (DerivedFrameWriter: one frame a row)
        frame_key |= {"external": "STREAM:"}
    keys: dict[str, Any] = {f"{f}_denoised": frame_key}
    keys[f"{f}_ratio"] = {"source": SOURCE, "dtype": "number", "shape": [], "units": "%",
                          "object_name": "tomogan",
                          "description": "pruning ratio of the network that denoised the frame (percent of "
                                         "the full network's MACs removed; NaN: not denoised)"}
    keys[f"{f}_model"] = {"source": SOURCE, "dtype": "string", "shape": [], "object_name": "tomogan",
                          "description": "the network that denoised the frame (model name, with -r<ratio> for a "
                                         "pruning ratio; empty: not denoised)"}
    for metric, units in UNITS.items():
        keys[f"{f}_qc_{metric}"] = {"source": SOURCE, "dtype": "number", "shape": [],
                                    "object_name": "tomogan", "units": units}
    for qc, dtype in (("qc_flags", "string"), ("qc_actions", "string"), ("qc_error", "string"),
                      ("source_seq_num", "integer"), ("source_uid", "string")):
        keys[f"{f}_{qc}"] = {"source": SOURCE, "dtype": dtype, "shape": [], "object_name": "tomogan"}
    if exposures > 1:
        keys[f"{f}_source_exposure"] = {
            "source": SOURCE, "dtype": "integer", "shape": [], "object_name": "tomogan",
            "description": f"which of the raw event's {exposures} frames this row is (0-based)"}
    return keys


def row_columns(f: str, rows: list[FrameResult], *, inline: bool) -> dict[str, list[Any]]:
    """The columns of derived rows of image field ``f``, one value per result (see :func:`derived_data_keys`)."""
    data: dict[str, list[Any]] = {f"{f}_qc_{m}": [getattr(r.item.metrics, m) for r in rows] for m in UNITS}
    data |= {
        f"{f}_qc_latency_s": [r.finished - r.item.received for r in rows],
        f"{f}_qc_flags": [",".join(sorted(r.flags)) for r in rows],
        f"{f}_qc_actions": [",".join(sorted({a for a in r.flags.values() if a != "ignore"})) for r in rows],
        f"{f}_qc_error": [r.error for r in rows],
        f"{f}_ratio": [r.ratio for r in rows],
        f"{f}_model": [r.model for r in rows],
        f"{f}_source_seq_num": [r.item.seq_num for r in rows],
        f"{f}_source_uid": [r.item.uid for r in rows],
    }
    if rows and rows[0].item.stream.exposures > 1:
        data[f"{f}_source_exposure"] = [r.item.exposure for r in rows]
    if inline:
        data[f"{f}_denoised"] = [r.denoised for r in rows]
    return data
