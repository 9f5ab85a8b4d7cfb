"""One run's denoising: everything of that run, and nothing of any other.

:class:`TomoGANCallback` (the facade) makes one :class:`RunDenoiser` per run
through an :class:`event_model.RunRouter`, as bluesky's ``TiledWriter`` makes
one ``_RunWriter`` per run. The run object owns its queue, worker thread,
frame readers, derived-frame writer, derived streams, context windows and
counters; its worker is given only this object, so a worker that outlives its
run (a slow model, a short ``flush_timeout``) can never read or write the next
run's state.

Threads: the RunEngine's callback thread queues frames (bounded, with a policy
when full) and emits documents; the worker denoises and writes derived frames.
Finished results wait in an outbox and are emitted from the callback thread at
the next document, so consumers are never called concurrently and see
documents in order. At ``stop`` the worker is flushed (with a timeout); every
frame that reached the callback gets a row in the derived stream, denoised or
with the reason it is not (``qc_error``).

Context: frame *k* is denoised when frame *k+1* of the same derived stream
arrives, with (k-1, k, k+1) as context (a network that reads 5 frames waits for
*k+2*); the first and last frames use mirrored neighbours
(``bluesky_tomogan.frames.context_indices``), and so do frames whose next frame
is overdue (their stream's phase ended). A flagged frame is
kept out of its neighbours' context. Rows are emitted in the raw frames' order.
In a stream whose events say what each frame is (an ``image_key`` or ``frame_type``
field: :mod:`bluesky_tomogan.frame_roles`), darks, flats and projections are each
denoised and judged among their own kind, and "next frame" means the next of that kind.

QC (:class:`~.run_qc.RunQC`, one per run): the worker measures every frame
(:mod:`bluesky_tomogan.qc.metrics`), the policy turns the metrics into flags, and a
third thread per run acts on them (:class:`~bluesky_tomogan.qc.QCFeedback`), never the
RunEngine's own thread.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import itertools
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import event_model
import numpy as np
from event_model.documents import EventDescriptor, EventPage, RunStart, RunStop

from ..errors import InputValueError, OutputPathError, TomoGANError
from ..frame_roles import DARK, FLAT, FRAME_ROLES, INVALID, FrameRoles
from ..frames import (
    cast_frames,
    centred,
    context_indices,
    context_offsets,
    mirror_stands_in,
    near_in_angle,
    usable_reach,
)
from ..handlers import fill_datum
from ..inference.denoiser import Denoiser, check_frames, takes_frame_keys
from ..inference.ratios import RatioController, RatioDenoisers, network_name
from ..qc.feedback import QCFeedback
from ..qc.metrics import DeadBefore, PhotonTransfer, residual_metrics
from ..qc.policy import QCPolicy
from ..stream_readers import FrameReader, reader_for, remapped, scalar_rows
from .consumers import Consumers
from .derived_stream import (
    DerivedStream,
    Dropped,
    FrameResult,
    QueuedFrame,
    derived_data_keys,
    derived_name,
    exposure_time,
    exposures_per_event,
    frame_shape,
    image_fields,
    made_by_us,
    not_a_frame,
    row_columns,
    shapeless_arrays,
    unsupported_image_fields,
    without_channel_axis,
)
from .frame_writer import DerivedFrameWriter, stored_dtype, stream_resource_directory
from .passthrough import PassThroughRun, Turn
from .queue import FrameQueue, Policy
from .run_qc import DROPPED, RunQC

__all__ = ["RunOptions", "RunDenoiser", "image_fields"]

log = logging.getLogger(__name__)
_END = "end-of-run"
#: Nice value of the denoising worker: the scan comes first, denoising takes the CPU left over.
WORKER_NICENESS = 10
#: Seconds a stream's newest frame waits for its next frame (its context) before it is denoised without it.
CONTEXT_WAIT = 2.0
#: Seconds the worker waits for the event (with its angle) of a frame in a context, where the stream's events carry
#: the angle: it comes right after the frame's StreamDatum, and the context must not depend on which came first.
ANGLE_WAIT = 1.0
#: Frames of a run with one problem (the same ``qc_error``) listed one by one in ``cb.errors`` and the
#: log; later ones are counted and summed up at the stop, so that a detector that is wrong for a whole
#: scan gives a few lines, not one per frame. Their rows say why, each.
FRAMES_LISTED_PER_PROBLEM = 5
#: Distinct problems listed per run; frames (and events lacking their image field) with others are counted together.
PROBLEMS_LISTED = 20
#: Frames of a dark or flat stream that the callback does not denoise (``streams=`` leaves it out) read per
#: field and run for QC alone (its dark level and open beam: :meth:`~.run_qc.RunQC.add_scan_frame`): a few
#: give the median; each is queued as a control item (never dropped), so they are bounded here.
SCAN_SAMPLES = 16
#: Events (seq_nums) whose StreamDatum frames may wait per stream for the event that says what they are
#: (:class:`~..frame_roles.FrameRoles`); beyond this (events that never come), those of earlier StreamDatums
#: are queued as their stream's default role, with a note.
PARKED_LIMIT = 256
#: Events whose role is kept (1 byte each) for StreamDatums that come after them (:meth:`RunDenoiser._match_streamed`).
SAID_LIMIT = 1 << 24


@dataclass
class _ScanSample:
    """A frame of a dark or flat stream that is not denoised, for QC (a queued control item)."""

    role: str  # "dark" or "flat" (frame_roles)
    field: str
    frame: Any  # the array, or a function that reads it (worker thread)
    exposure_s: float | None = None  # from its descriptor's configuration


@dataclass(frozen=True)
class RunOptions:
    """The facade's options, shared read-only by its runs."""

    denoisers: Mapping[str, Denoiser | RatioDenoisers] | None
    default: Denoiser | RatioDenoisers | None
    fields: list[str] | None
    streams: list[str] | None
    policy: Policy
    maxsize: int
    flush_timeout: float
    block_timeout: float
    directory: Path | None
    inline: bool
    handler_registry: Mapping[str, Any]
    root_map: Mapping[str, str]
    feedback: QCFeedback
    high_water: int = 8
    low_water: int = 1
    frame_dtype: str = "float32"  # how derived frames are stored (frame_writer.FRAME_DTYPES)
    compression: str | None = None  # of each derived frame (hdf5_frames.COMPRESSIONS)
    angle_field: str | None = None  # each frame's angle, where it is not the start document's first motor
    #: Where each field's last frame was NaN (None: nowhere), kept across runs because a detector's
    #: NaN mask outlives a run: QC tells a mask from a fault by it (:class:`~.run_qc.RunQC`).
    known_nan: dict[str, np.ndarray | None] = dataclasses.field(default_factory=dict)
    #: Each field's dark level from the last run's dark frames, for runs without darks of their own.
    dark_levels: dict[str, float] = dataclasses.field(default_factory=dict)
    #: Where each field's last frame with light was dead, kept across runs: a region dead frame after frame is where no
    #: photon falls (a photon counter beyond the beam's footprint), not a readout failure (:class:`~.run_qc.RunQC`).
    dead_before: dict[str, DeadBefore] = dataclasses.field(default_factory=dict)
    #: Each field's camera noise's lag-1 correlation (its blur) from the last run's flat fields, kept across runs:
    #: for runs without flats (:class:`~.run_qc.RunQC`, :func:`~bluesky_tomogan.qc.metrics.flat_noise_correlation`).
    noise_correlations: dict[str, float] = dataclasses.field(default_factory=dict)
    #: Each field's camera photon transfer curve (noise against signal) from the last run's flats and darks, kept
    #: across runs: the SNR of a camera that blurs, in runs without flats (:class:`~.run_qc.RunQC`).
    photon_transfers: dict[str, PhotonTransfer] = dataclasses.field(default_factory=dict)

    @property
    def qc(self) -> QCPolicy:
        return self.feedback.policy

    def denoiser_for(self, fieldname: str) -> Denoiser | RatioDenoisers:
        if self.denoisers is not None:
            return self.denoisers[fieldname]
        assert self.default is not None
        return self.default


class RunDenoiser(PassThroughRun):
    """Denoise the frames of one run into derived streams of that run (made by the facade's RunRouter).

    Parameters
    ----------
    options : RunOptions
        The facade's options.
    consumers : Consumers
        The facade's subscribers.
    turn : Turn
        The raw document being handled (see :class:`Turn`).
    """

    label = "TomoGAN"

    def __init__(self, options: RunOptions, consumers: Consumers, turn: Turn) -> None:
        super().__init__(consumers, turn)
        self.options = options
        self._start: RunStart | None = None
        self._compose_streams: dict[str, Any] = {}
        self._counters: dict[str, int] = {}
        self._by_name: dict[tuple[str, str, tuple[int, int]], DerivedStream] = {}  # (raw stream, field, shape)
        self._by_descriptor: dict[str, dict[str, DerivedStream]] = {}  # raw descriptor uid -> field -> stream
        self._stream_keys: dict[str, set[str]] = {}  # raw descriptor uid -> its "STREAM:" data keys
        self._exposures: dict[str, dict[str, float | None]] = {}  # raw descriptor uid -> field -> exposure (s)
        self._roles: dict[str, FrameRoles] = {}  # raw descriptor uid -> what its frames are (frame_roles)
        self._role_fields: dict[str, str] = {}  # raw stream -> the field that says what each frame is, if any
        # StreamDatum frames of a stream whose events say what each frame is wait for their event (bluesky
        # emits a frame's StreamDatum before its event): descriptor uid -> seq_num -> their _enqueue arguments
        self._parked: dict[str, dict[int, list[Callable[..., None]]]] = {}
        # ... and where the events came first (a stored run replayed: its StreamDatums follow all its events),
        # what each said, by seq_num (1 + its place in FRAME_ROLES; 0: not said): descriptor uid -> codes
        self._said: dict[str, bytearray] = {}
        self._unsupported_logged: set[tuple[str, str]] = set()  # (raw stream, field) said not to be denoised
        self._problems_listed: dict[tuple[str, str], int] = {}  # (field, problem) -> times noted (_note_repeated)
        self._problems_unlisted: dict[tuple[str, str], tuple[int, str]] = {}  # ... -> (times counted, summary)
        self._frames_unlisted = 0  # frames and events with a problem beyond PROBLEMS_LISTED
        # the run's raw streams so far (derived names avoid them) -> their 2-D image fields, whatever
        # the options (none for streams this package made)
        self._raw_streams: dict[str, set[str]] = {}
        self._queue = FrameQueue(options.maxsize, options.policy, tombstone=self._tombstone)
        self._breaker_open = False
        self._tokens = itertools.count()
        # names this run's frames to a denoiser's despiked-frame cache (with each frame's token): unique per run
        self._frame_keys = object()
        self._pending: dict[int, QueuedFrame] = {}  # queued, not yet emitted, in arrival order (callback thread only)
        self._ready: dict[int, FrameResult] = {}  # finished, waiting for earlier frames of their stream
        self._rows_taken: dict[int, int] = {}  # id of a derived stream -> rows of its file taken (_take_row)
        self._outbox: deque[FrameResult] = deque()
        self._lock = threading.Lock()  # guards _closed against the worker's writes
        self._compose_lock = threading.Lock()  # guards composing derived streams (both threads)
        self._closed = False  # set at stop: a late worker's results are discarded
        self._done = threading.Event()
        self._worker_error = ""  # why the worker thread ended early (a bug), if it did
        self._worker: threading.Thread | None = None
        self._writer: DerivedFrameWriter | None = None
        self._raw_directory: Path | None = None
        # Legacy Resource/Datum frames: the Filler sees descriptors, resources and datums
        # (cheap cache updates on this thread) and loads frames on the worker thread.
        self._handlers: dict[Any, Any] = {}
        self._filler = event_model.Filler(dict(options.handler_registry), inplace=False,
                                          root_map=dict(options.root_map), handler_cache=self._handlers,
                                          retry_intervals=[0.01, 0.05, 0.1, 0.25, 0.5, 1.0])
        self._stream_readers: dict[str, tuple[str, FrameReader]] = {}  # StreamResource uid -> (key, reader)
        # ... of a field that says what each frame is, written to a file (frame_roles: RoleKey.external); read on
        # this thread when its StreamDatum comes, never waiting for rows not written yet
        self._role_readers: dict[str, FrameReader] = {}
        # ... of each frame's angle, written to a file (a fly scan's position capture): located on this thread,
        # read on the worker's when a frame's angle is first asked for (RunQC.locate_angles)
        self._angle_readers: dict[str, FrameReader] = {}
        self._descriptor_names: dict[str, str] = {}  # descriptor uid -> its stream's name
        self._hinted = False  # warned that frames come without a known angle beside captured scalars
        # The frames of the last multi-frame event read (worker thread): its N rows read it once.
        self._last_event: tuple[Any, np.ndarray] | None = None
        self._qc = RunQC(options.feedback, options.known_nan, options.dark_levels, options.dead_before,
                         angle_field=options.angle_field, noise_correlations=options.noise_correlations,
                         photon_transfers=options.photon_transfers)
        # descriptor uid of a dark or flat stream not denoised -> (its role, its images), read for QC alone
        self._sampled: dict[str, tuple[str, list[str]]] = {}
        self._samples: dict[tuple[str, str], int] = {}  # (role, field) -> frames queued for QC
        self._controllers: dict[str, RatioController] = {}  # field -> ratio policy (policy "adaptive")
        # Seconds spent inside this run's document calls (the RunEngine, or the 0MQ dispatcher, waits on
        # them: subscribers such as a storage writer run there), and since when the current call runs.
        self._busy_s = 0.0
        self._busy_since: float | None = None
        self._deliveries = 0  # document calls so far: which delivery a frame came in

    # -- the router -------------------------------------------------------------------------

    def __call__(self, name: str, doc: dict, validate: bool = False) -> tuple[str, dict]:
        self._busy_since = time.time()
        self._deliveries += 1  # the frames this document brings are one delivery (ArrivalRate)
        try:
            return super().__call__(name, doc, validate)
        finally:  # added before the current call is cleared: the worker may overcount an instant, never undercount
            self._busy_s += time.time() - self._busy_since
            self._busy_since = None

    def busy_clock(self) -> float:
        """Seconds this run's document calls have taken so far, the current one included (any thread)."""
        since = self._busy_since
        return self._busy_s + (time.time() - since if since is not None else 0.0)

    def _before(self) -> None:
        self._emit_finished()

    def start(self, doc: RunStart) -> RunStart:
        self._start = doc
        self.summary.uid = doc["uid"]
        self._filler("start", dict(doc))
        self._worker = threading.Thread(target=self._work, name=f"tomogan-worker-{doc['uid'][:8]}", daemon=True)
        self._worker.start()
        self._qc.start(doc)
        return doc

    def descriptor(self, doc: EventDescriptor) -> EventDescriptor:
        self._filler("descriptor", dict(doc))
        self._stream_keys[doc["uid"]] = {k for k, dk in doc["data_keys"].items() if dk.get("external") == "STREAM:"}
        raw_name = self._descriptor_names[doc["uid"]] = doc.get("name", "primary")
        o = self.options
        first_of_name, ours, images = raw_name not in self._raw_streams, made_by_us(doc), image_fields(doc)
        if o.fields is not None and not ours:  # named, an array of no declared shape is taken at its frames' size
            images += [f for f in shapeless_arrays(doc) if f in o.fields]
        if first_of_name:
            self._check_name_is_free(doc, ours)
        self._raw_streams.setdefault(raw_name, set()).update(() if ours else images)
        roles = self._roles[doc["uid"]] = FrameRoles(doc)
        if roles.key is not None:
            self._role_fields[raw_name] = roles.key.name
        self._qc.take_angles(doc, roles)
        if self._start is None or (o.streams is not None and raw_name not in o.streams):
            role = None if roles.per_event else roles.default
            if (self._start is not None and role in (DARK, FLAT) and not ours
                    and not (role == DARK and o.qc.dark_level is not None)):  # a level set needs no darks
                # not denoised, but its frames are the camera's dark level or open beam for QC
                sampled = [f for f in images if o.fields is None or f in o.fields]
                self._sampled[doc["uid"]] = (role, sampled)
                self._exposures[doc["uid"]] = {f: exposure_time(doc, f) for f in sampled}
            return doc
        if o.streams is None and ours:  # not asked for by name: never denoise a derived stream
            if first_of_name:
                self._note(f"stream {raw_name!r} was made by bluesky-tomogan (a stored run replayed?); "
                           "it is not denoised again")
            return doc
        self._note_fields_not_denoised(raw_name, doc, images)
        wanted = [f for f in images if o.fields is None or f in o.fields]
        if not wanted:
            return doc
        fields: dict[str, DerivedStream] = {}
        self._exposures[doc["uid"]] = {f: exposure_time(doc, f) for f in wanted}
        for f in wanted:
            h, w = frame_shape(doc["data_keys"][f])
            stream = self._by_name.get((raw_name, f, (h, w)))
            if stream is None:  # new, or a re-emitted descriptor with another frame shape
                stream = self._new_stream(raw_name, f, len(wanted), (h, w), exposures_per_event(doc["data_keys"][f]),
                                          stored_dtype(o.frame_dtype, doc["data_keys"][f].get("dtype_numpy")).str)
            fields[f] = stream
        self._by_descriptor[doc["uid"]] = fields
        self._hint_at_captured_angles(raw_name, doc)
        return doc

    def _note_fields_not_denoised(self, raw_name: str, doc: EventDescriptor, images: list[str]) -> None:
        """Say, once per stream and field, why a field that may hold frames is not denoised: one whose shape is
        not a single-channel 2-D frame, one named in ``fields=`` that declares no frames, and an array of no
        declared shape that was not named (it may hold frames; a device that describes before it knows its frame
        size declares ``[]``)."""
        o = self.options
        reasons = {f: why for f, why in unsupported_image_fields(doc).items() if o.fields is None or f in o.fields}
        for f in sorted(set(o.fields or ()) & set(doc["data_keys"]) - set(images) - set(reasons)):
            reasons[f] = not_a_frame(doc["data_keys"][f])
        if o.fields is None:
            for f in shapeless_arrays(doc):
                reasons[f] = (f"it is an array of no declared shape ({doc['data_keys'][f].get('shape')}); if it holds "
                              f"frames, name it: TomoGANCallback(fields=[{f!r}]) (serve, reprocess: --fields {f})")
        for f, reason in reasons.items():
            if reason and (raw_name, f) not in self._unsupported_logged:
                self._unsupported_logged.add((raw_name, f))
                self._note(f"field {f!r} of stream {raw_name!r} is not denoised: {reason}")

    def _hint_at_captured_angles(self, name: str, doc: EventDescriptor) -> None:
        """Warn once per run where frames come without a known angle beside scalars written to a file: a fly scan
        whose position capture the callback was not told of (``angle_field``). Its frames' context is then taken by
        order, and QC's motion check allows no rotation between them."""
        if self._qc.knows_angles_of(name) or self._hinted:
            return
        roles = self._roles[doc["uid"]]
        captured = sorted(k for k, dk in doc["data_keys"].items() if dk.get("external") == "STREAM:"
                          and list(dk.get("shape") or []) in ([], [1])  # ophyd-async: [1], one a row
                          and (roles.key is None or k != roles.key.name))
        if captured:
            self._hinted = True
            log.warning("frames of stream %r come with no angle that the callback knows (%s), but with %s written "
                        "beside them: if one is each frame's rotation angle (a position capture), name it with "
                        "TomoGANCallback(angle_field=...) (serve/reprocess --angle-field); until then each frame's "
                        "neighbours are taken by order and QC's motion check allows no rotation", name,
                        f"angle_field {self.options.angle_field!r} is no data key of it" if self.options.angle_field
                        else "the start document names no motors", captured)

    def _new_stream(self, raw_name: str, f: str, n_fields: int, shape: tuple[int, int],
                    exposures: int = 1, dtype: str = "<f4") -> DerivedStream:
        # One derived stream per image field keeps every row complete; with a single image
        # field in "primary" (the common case) the stream is simply "denoised". A re-emitted
        # raw descriptor with the same shape reuses it (its configuration is the raw one's).
        # An event of N frames ([N, H, W]) gets N rows, one per frame, each with its own QC.
        base = derived_name(raw_name)
        name = wanted = base if n_fields == 1 else f"{base}_{f}"
        # a raw stream of the run already has that name: the stores key streams by name, so two
        # streams of one name would be mixed into one table
        copy = 2
        while name in self._raw_streams:
            name, copy = f"{wanted}_{copy}", copy + 1
        if name != wanted:
            self._note(f"the run has a stream named {wanted!r} already (the plan's, or denoised before); "
                       f"the derived stream of {raw_name!r} "
                       f"field {f!r} is named {name!r}")
        return self._compose_stream(raw_name, f, name, shape, exposures, dtype)

    def _compose_stream(self, raw_name: str, f: str, name: str, shape: tuple[int, int],
                        exposures: int, dtype: str) -> DerivedStream:
        """A derived stream and its descriptor, composed (either thread); the descriptor is published
        with the stream's first row (:meth:`_emit_rows`), or at the stop if no frame came."""
        keys = derived_data_keys(f, shape, external=not self.options.inline, exposures=exposures, dtype_numpy=dtype)
        assert self._start is not None
        with self._compose_lock:  # the worker composes streams too (frames of an undeclared shape)
            bundle = event_model.compose_descriptor(
                start=self._start, streams=self._compose_streams, event_counters=self._counters, name=name,
                data_keys=keys, object_keys={"tomogan": sorted(keys)},
                configuration=self._configuration(raw_name, f),
            )
            earlier = sum(s.bundle.descriptor_doc["name"] == name for s in self._by_name.values())
            stream = DerivedStream(raw_name, f, shape, bundle, name + (f"-{earlier}" if earlier else ""),
                                   exposures=exposures, dtype=dtype)
            self._by_name[(raw_name, f, shape)] = stream
            stream.unpublished.append(("descriptor", bundle.descriptor_doc))
        return stream

    def _stream_of_frame(self, item: QueuedFrame, shape: tuple[int, ...]) -> DerivedStream:
        """The derived stream for a frame of ``shape`` announced as ``item.origin`` (worker thread).

        Detectors do not always declare what they deliver: a plugin between an area detector's
        driver and its file writer (region of interest, binning, rotation) changes the frames but
        not the declared shape (ophyd-async issue 659), older ophyd declared ``[X, Y, 0]``, and some
        declare no size at all. Then the frames are what is denoised: a frame of another shape goes
        to a derived stream of its own shape (a second descriptor of the same name, as a re-described
        detector gets), made here and published before its first row. Once frames of the declared
        shape have come, one of another shape is a faulty frame instead: flagged, not denoised.
        """
        origin = item.origin
        if shape == origin.shape:
            origin.matched = True
        if len(shape) != 2 or shape == origin.shape or min(shape) == 0 or origin.matched:
            return origin
        key = (origin.raw_name, origin.field, (int(shape[0]), int(shape[1])))
        stream = self._by_name.get(key)
        if stream is None:
            stream = self._compose_stream(origin.raw_name, origin.field, origin.bundle.descriptor_doc["name"],
                                          key[2], origin.exposures, origin.dtype)
            origin.redirected = True
            declared = "no frame size" if 0 in origin.shape else f"frames of {origin.shape}"
            self._note(f"{origin.field} of stream {origin.raw_name!r} declares {declared} but delivers frames of "
                       f"{key[2]}; they are denoised as they come, into a derived stream of that shape")
        return stream

    def _check_name_is_free(self, doc: EventDescriptor, ours: bool) -> None:
        """Say so when a raw stream arrives with the name of a derived stream already described.

        Nothing can mend it then (the derived descriptor is out, the raw one must pass unchanged);
        a derived stream avoids the names of raw streams that came before it (:meth:`_new_stream`).
        """
        raw_name = doc.get("name", "primary")
        for stream in self._by_name.values():
            if stream.bundle.descriptor_doc["name"] == raw_name:
                fix = ("replay the stored run with `bluesky-tomogan reprocess`, which names the new streams "
                       "around the old ones" if ours else "give the plan's stream another name")
                self._note(f"raw stream {raw_name!r} arrived after this run's derived stream of that name (from "
                           f"{stream.raw_name!r}); stores that key streams by name will mix the two: {fix}")
                return

    def _configuration(self, raw_name: str, f: str) -> dict[str, Any]:
        """Provenance (model, sha256, backend, precision, tile, versions), the frames each result read
        (``context_frames``: a QC reader elsewhere knows from it how far behind judging runs) and the
        raw stream and field denoised (:func:`~.derived_stream.derived_from`) as descriptor configuration."""
        prov = {k: v if isinstance(v, (str, int, float)) else str(v)
                for k, v in self.options.denoiser_for(f).provenance().items()}
        prov |= {"context_frames": self._depth(f), "source_stream": raw_name, "source_field": f}
        now = time.time()
        return {"tomogan": {
            "data": prov,
            "timestamps": dict.fromkeys(prov, now),
            "data_keys": {k: {"source": "bluesky-tomogan", "shape": [],
                              "dtype": "string" if isinstance(v, str) else "number"} for k, v in prov.items()},
        }}

    def event_page(self, doc: EventPage) -> EventPage:
        if doc["descriptor"] in self._sampled:
            self._sample_events(doc)
            return doc
        fields = self._by_descriptor.get(doc["descriptor"], {})
        if fields:
            self._qc.keep_positions(next(iter(fields.values())).raw_name, doc)
        roles = self._roles[doc["descriptor"]].of_page(doc["data"], len(doc["seq_num"])) if fields else []
        for f, stream in fields.items():
            column = doc["data"].get(f)
            if column is None:
                if f in self._stream_keys.get(doc["descriptor"], ()):
                    continue  # STREAM: frames come in StreamDatum documents, not in events
                self._note_repeated((f, "lacks image field"), f"event page {doc['uid'][:8]} lacks image field {f!r}",
                                    f"{{n}} more event pages lack image field {f!r}")
                continue
            if len(column) != len(doc["seq_num"]):  # not a valid page: the frames it pairs with an event are taken
                events, page = len(doc["seq_num"]), str(doc["uid"][0])[:8] if doc["uid"] else "?"
                self._note_repeated((f, "column length"),
                                    f"event page {page}: image field {f!r} holds {len(column)} values for {events} "
                                    f"events; only the first {min(len(column), events)} are denoised",
                                    f"{{n}} more event pages whose image field {f!r} does not hold one value per event")
                column = column[:events]
            # a page of datum ids (a stored run replayed): references to frames in files, queued whole
            in_files = all(_a_reference(doc, f, i, value) for i, value in enumerate(column))
            with self._queue.delivery(len(column) * stream.exposures) if in_files else contextlib.nullcontext():
                for i, value in enumerate(column):
                    for k, frame in enumerate(self._frames_of_value(doc, f, i, value, stream.exposures)):
                        self._enqueue(stream, frame, doc["seq_num"][i], doc["uid"][i], exposure=k,
                                      exposure_s=self._exposures.get(doc["descriptor"], {}).get(f), role=roles[i])
        if fields and self._roles[doc["descriptor"]].in_events and self._stream_keys.get(doc["descriptor"]):
            self._match_streamed(doc["descriptor"], doc["seq_num"], roles)
        return doc

    def _frames_of_value(self, doc: EventPage, f: str, i: int, value: Any,
                         exposures: int) -> list[np.ndarray | Callable[[], np.ndarray]]:
        """The frames of row ``i`` of an event page's image field ``f`` (``exposures`` per event): arrays, or
        loaders of frames in files (a datum id: loaded on the worker)."""
        if _a_reference(doc, f, i, value):
            if exposures > 1:
                return [functools.partial(self._fill, doc["descriptor"], f, value, k) for k in range(exposures)]
            return [functools.partial(self._fill, doc["descriptor"], f, value)]
        try:
            array = np.asarray(value)
        except (ValueError, TypeError) as exc:  # ragged nested lists: the row records why, the scan goes on
            return [functools.partial(_unusable, f"the event's {f!r} is not an array ({exc})")]
        return list(array) if exposures > 1 and array.ndim == 3 else [array]

    def _match_streamed(self, descriptor: str, seq_nums: list[int], roles: list[str | None]) -> None:
        """Queue the StreamDatum frames that waited for these events, with the role each says; of the others,
        whose StreamDatums come later (a stored run replayed: its StreamDatums follow all its events), keep it."""
        parked = self._parked.setdefault(descriptor, {})
        said = self._said.setdefault(descriptor, bytearray())
        for seq, role in zip(seq_nums, roles, strict=True):
            if seq in parked:
                for enqueue in parked.pop(seq):
                    enqueue(role=role)
            elif 0 <= seq < SAID_LIMIT:
                said.extend(bytes(max(seq + 1 - len(said), 0)))
                said[seq] = FRAME_ROLES.index(role) + 1

    def _release_parked(self, before: float = math.inf) -> None:
        """Queue the StreamDatum frames still waiting for an event that says what they are (of events before
        seq_num ``before``; at the stop, all): as their stream's default role, with a note."""
        for descriptor, parked in self._parked.items():
            released = sorted(seq for seq in parked if seq < before)
            if not released:
                continue
            roles = self._roles[descriptor]
            said_by = "nothing in its file" if roles.in_file else "no event"
            self._note_repeated(("", f"{said_by} says what frames of {roles.stream!r} are"),
                                f"{len(released)} frames of stream {roles.stream!r} came with {said_by} saying what "
                                f"they are ({roles.key.name if roles.key else ''}); taken as "
                                f"{roles.default or 'projections'}",
                                f"{{n}} more times frames of stream {roles.stream!r} came with {said_by} saying what "
                                "they are")
            for seq in released:
                for enqueue in parked.pop(seq):
                    enqueue(role=roles.default)

    def _sample_events(self, doc: EventPage) -> None:
        """Queue the first ``SCAN_SAMPLES`` frames of each image field of a dark or flat stream not denoised."""
        role, fields = self._sampled[doc["descriptor"]]
        for f in fields:
            column = doc["data"].get(f)
            if column is None:
                continue  # STREAM: frames come in StreamDatum documents (stream_datum)
            for i, value in enumerate(column):
                frame = (functools.partial(self._fill, doc["descriptor"], f, value)
                         if _a_reference(doc, f, i, value) else value)
                if not self._queue_sample(role, f, frame, doc["descriptor"]):
                    break

    def _queue_sample(self, role: str, f: str, frame: Any, descriptor: str) -> bool:
        """Queue one dark or flat frame of ``f`` (of raw ``descriptor``) for QC; ``False`` once the field has had
        its share."""
        taken = self._samples.get((role, f), 0)
        if taken >= SCAN_SAMPLES:
            return False
        self._samples[(role, f)] = taken + 1
        self._queue.put_control(_ScanSample(role, f, frame, self._exposures.get(descriptor, {}).get(f)))
        return True

    def _fill(self, descriptor_uid: str, f: str, datum_id: str, exposure: int | None = None) -> np.ndarray:
        """Load a legacy-referenced frame through the Filler (worker thread); of a multi-frame
        event's datum, frame ``exposure`` (the datum is read once for all of them)."""
        def fill() -> np.ndarray:
            return fill_datum(self._filler, descriptor_uid, f, datum_id)

        if exposure is None:
            return fill()
        return _exposure(self._event_frames(("datum", datum_id), fill), exposure)

    def _event_frames(self, key: Any, load: Callable[[], np.ndarray]) -> np.ndarray:
        """The frames of one multi-frame event, loaded once for its N rows (worker thread)."""
        if self._last_event is None or self._last_event[0] != key:
            self._last_event = (key, load())
        return self._last_event[1]

    def resource(self, doc: Any) -> Any:
        if self._raw_directory is None and "resource_path" in doc:
            root = self.options.root_map.get(doc.get("root", ""), doc.get("root", ""))
            self._raw_directory = (Path(root) / doc["resource_path"]).parent
        return self._filler("resource", doc)[1]

    def datum(self, doc: Any) -> Any:
        return self._filler("datum", doc)[1]

    def datum_page(self, doc: Any) -> Any:
        return self._filler("datum_page", doc)[1]

    def stream_resource(self, doc: Any) -> Any:
        here = remapped(doc, self.options.root_map)  # the raw document passes on unchanged
        if self._raw_directory is None:  # None if not a local file: derived frames go to the default directory
            self._raw_directory = stream_resource_directory(here)
        if self._qc.is_angle_key(doc.get("data_key")):
            try:  # each frame's angle (a PandA's position capture): never waited for, the worker retries
                self._angle_readers[doc["uid"]] = reader_for(here, wait_s=0)
            except (ValueError, KeyError) as exc:
                self._note(f"StreamResource {doc.get('uid')} of the angles {doc.get('data_key')!r}: {exc}; the "
                           "frames' angles are not read from it (neighbours by order, QC without rotation)")
            return doc
        if any(r.in_file and r.key is not None and r.key.name == doc.get("data_key") for r in self._roles.values()):
            try:  # what each frame is: read as its StreamDatum comes (stream_datum), so never waited for
                self._role_readers[doc["uid"]] = reader_for(here, wait_s=0)
            except (ValueError, KeyError) as exc:
                self._note(f"StreamResource {doc.get('uid')} of {doc.get('data_key')!r}: {exc}; what each frame is "
                           "is not read from it")
            return doc
        wanted = {s.field for fields in self._by_descriptor.values() for s in fields.values()}
        wanted.update(*(fields for _, fields in self._sampled.values()))
        if doc.get("data_key") in wanted or self.options.fields is None:
            try:
                self._stream_readers[doc["uid"]] = (doc["data_key"], reader_for(here))
            except (ValueError, KeyError) as exc:
                self._note(f"StreamResource {doc.get('uid')}: {exc}; its frames are not denoised")
        return doc

    def stream_datum(self, doc: Any) -> Any:
        if doc["stream_resource"] in self._angle_readers:
            raw_name = self._descriptor_names.get(doc["descriptor"])
            if raw_name is not None:
                self._qc.locate_angles(raw_name, self._angle_readers[doc["stream_resource"]], doc)
            return doc
        if doc["stream_resource"] in self._role_readers:
            self._roles_from_file(doc, self._role_readers[doc["stream_resource"]])
            return doc
        reader = self._stream_readers.get(doc["stream_resource"])
        if reader is None:
            return doc
        key, read = reader
        role, sampled = self._sampled.get(doc["descriptor"], ("", []))
        if key in sampled:
            for i in range(doc["indices"]["start"], doc["indices"]["stop"]):
                if not self._queue_sample(role, key, functools.partial(_read_row, read, i), doc["descriptor"]):
                    break
            return doc
        stream = self._by_descriptor.get(doc["descriptor"], {}).get(key)
        if stream is None:
            return doc
        indices, seq_nums = doc["indices"], doc["seq_nums"]
        if seq_nums["stop"] - seq_nums["start"] != indices["stop"] - indices["start"]:
            self._note(f"StreamDatum {doc['uid']} has seq_nums {seq_nums} for indices {indices}; not denoised")
            return doc
        roles = self._roles[doc["descriptor"]]
        parked = self._parked.setdefault(doc["descriptor"], {}) if roles.per_event else None
        said = self._said.get(doc["descriptor"], b"")
        # references to frames in a file that came at once: queued whole (FrameQueue.delivery)
        with self._queue.delivery((indices["stop"] - indices["start"]) * stream.exposures):
            for i, seq in zip(range(indices["start"], indices["stop"]), range(seq_nums["start"], seq_nums["stop"]),
                              strict=True):
                for k in range(stream.exposures):
                    enqueue = functools.partial(
                        self._enqueue, stream, functools.partial(self._read_exposure, read, i, k, stream.exposures),
                        seq, doc["uid"], exposure=k, exposure_s=self._exposures.get(doc["descriptor"], {}).get(key))
                    if parked is None:
                        enqueue(role=roles.default)
                    elif 0 <= seq < len(said) and said[seq]:  # its event came first
                        enqueue(role=FRAME_ROLES[said[seq] - 1])
                    else:  # its event, which says what the frame is, comes next
                        parked.setdefault(seq, []).append(enqueue)
        if parked is not None and len(parked) > PARKED_LIMIT:  # events that never come: not for ever
            self._release_parked(before=seq_nums["start"])
        return doc

    def _roles_from_file(self, doc: Any, read: FrameReader) -> None:
        """What the frames of a StreamDatum of a role field written to a file are (an area detector's NDAttribute):
        read now, as the frames' events would say it (:meth:`_match_streamed`); rows not readable yet, or at all,
        are their stream's default role, with a note."""
        roles = self._roles.get(doc["descriptor"])
        if roles is None or doc["descriptor"] not in self._by_descriptor:
            return
        (first, stop), (seq, seq_stop) = ((doc["indices"]["start"], doc["indices"]["stop"]),
                                          (doc["seq_nums"]["start"], doc["seq_nums"]["stop"]))
        if stop - first != seq_stop - seq or roles.key is None:
            self._note(f"StreamDatum {doc['uid']} has seq_nums {doc['seq_nums']} for indices {doc['indices']}; "
                       "what its frames are is not read")
            return
        try:
            said = roles.of_page({roles.key.name: scalar_rows(read, first, stop)}, stop - first)
        except Exception as exc:  # a file not readable (yet): its frames count as the stream's
            self._note_repeated((roles.key.name, "not read"),
                                f"{roles.key.name} of frames {seq}-{seq_stop - 1} not read from its file "
                                f"({type(exc).__name__}: {exc}); they count as {roles.default or 'projections'}",
                                f"{{n}} more times {roles.key.name} was not read from its file")
            said = [roles.default] * (stop - first)
        self._match_streamed(doc["descriptor"], list(range(seq, seq_stop)), said)

    def _read_exposure(self, read: FrameReader, index: int, exposure: int, exposures: int) -> np.ndarray:
        """Frame ``exposure`` of StreamDatum row ``index`` (worker thread; a multi-frame row is read once)."""
        if exposures == 1:
            return read(index, index + 1)[0]
        return _exposure(self._event_frames((id(read), index), lambda: read.event(index, exposures)), exposure)

    def _note_options_that_matched_nothing(self) -> None:
        """A misspelt ``streams=`` or ``fields=`` must not look like a run with nothing to denoise."""
        o, seen = self.options, self._raw_streams
        if not any(seen.values()):
            return
        streams = sorted(s for s, fields in seen.items() if fields)
        if o.streams is not None and not set(o.streams) & set(streams):
            self._note(f"streams={sorted(o.streams)} names no stream of this run with images "
                       f"(its streams with images: {streams}); nothing was denoised")
        if o.fields is not None:
            fields = set().union(*(seen[s] for s in streams if o.streams is None or s in o.streams))
            explained = {f for _, f in self._unsupported_logged}  # said at its descriptor
            missing = sorted(set(o.fields) - fields - explained)
            if missing and fields:
                self._note(f"fields={missing} named no image field of the streams denoised "
                           f"(their image fields: {sorted(fields)})")

    def stop(self, doc: RunStop) -> RunStop:
        finished = self._wind_up(self.options.flush_timeout)
        if not finished:
            self._note(f"worker did not finish within {self.options.flush_timeout} s of the stop; "
                       f"{len(self._pending)} frames recorded as not denoised")
        self._account_for_every_frame(f"not denoised: the worker did not finish within {self.options.flush_timeout} "
                                      "s of the run's stop")
        if self.summary.dropped:
            log.warning("TomoGAN dropped %d frames (policy %s)", self.summary.dropped, self.options.policy)
        if finished and self._worker is not None:
            self._worker.join(timeout=self.options.flush_timeout)
        self._release()
        out = copy.deepcopy(doc)
        # event-model counters start at 1: num_events is counter - 1 (as compose_stop does)
        out.setdefault("num_events", {}).update({k: v - 1 for k, v in self._counters.items()})
        return out  # published by __call__, after the derived documents emitted above

    def _end_unstopped(self, why: str) -> None:
        """Without its stop (:meth:`abandon`): the rows of frames denoised by now, and of the others, each saying
        why it has no denoised frame. Waits for no frame to be denoised: a new run is starting on this thread
        (only, under ``block``, for room in the queue for frames parked waiting for their event, as at a stop)."""
        self._wind_up(None)
        if self._pending:
            self._note(f"{len(self._pending)} frames recorded as not denoised: the run ended without its stop")
        self._account_for_every_frame("not denoised: the run ended without its stop document")

    def _wind_up(self, wait_s: float | None) -> bool:
        """The first half of ending a run, with or without its stop: QC raises no more feedback, frames parked
        waiting for their event are queued, the worker is told to finish and given up to ``wait_s`` seconds
        (``None``: none), late results are discarded from here on, and the rows of frames denoised by then are
        published. Whether the worker finished."""
        self._qc.ended()  # before the last frames are judged: they must not suspend a run being closed
        self._note_options_that_matched_nothing()
        self._release_parked()  # frames whose event never came: queued, so that they get their rows
        self._queue.put_control(_END)
        finished = self._worker is None or (wait_s is not None and self._done.wait(wait_s))
        with self._lock:  # from here on a late worker's results are discarded
            self._closed = True
        self._emit_finished()
        if self._worker_error:
            self._note(f"the worker stopped early ({self._worker_error}); {len(self._pending)} frames recorded "
                       "as not denoised")
            self._record_unfinished(f"not denoised: the worker stopped early ({self._worker_error})")
        return finished

    def _account_for_every_frame(self, unfinished: str) -> None:
        """The second half: a row for each frame still without one (``unfinished``: why), the run's frame problems
        and unread angles summed up, and the descriptors of derived streams that got no row."""
        self._record_unfinished(unfinished)
        self._sum_up_frame_problems()
        unread, why = self._qc.unread_angles()
        if unread:
            self._note(f"the angles of {unread} frames were not read from their file ({why}); those frames' "
                       "neighbours were taken by order")
        self._publish_streams_without_rows()

    def _publish_streams_without_rows(self) -> None:
        """At the stop: the descriptor of each derived stream that got no row (its raw stream had no
        frames), as the raw stream has one; not of a stream whose frames all came in another shape."""
        for stream in list(self._by_name.values()):
            if stream.redirected:
                continue
            self._publish_owed(stream)

    def _publish_owed(self, stream: DerivedStream) -> None:
        """Publish the documents ``stream`` still owes (its descriptor, its StreamResource), once."""
        with self._lock:  # the worker adds a StreamResource under it
            owed, stream.unpublished = stream.unpublished, []
        for name, doc in owed:
            self._publish(name, doc)

    def _stop_reasons(self) -> list[str]:
        return [self.options.feedback.abort_reason(self.summary.uid)]

    # -- queueing (callback thread) ---------------------------------------------------------

    @staticmethod
    def _tombstone(item: QueuedFrame) -> Dropped:
        return Dropped(dataclasses.replace(item, frame=None))

    def _enqueue(self, stream: DerivedStream, frame: Any, seq_num: int, uid: str, exposure: int = 0,
                 exposure_s: float | None = None, role: str | None = None) -> None:
        item = QueuedFrame(stream, frame, seq_num, uid, time.time(), next(self._tokens), exposure,
                           exposure_s=exposure_s, role=role, busy_at_receipt=self.busy_clock())
        stream.of(role).latest_token = item.token
        stream.of(role).arrivals.add(item.received, self._deliveries)  # how often they come, known as they come
        self._pending[item.token] = item
        if self._worker_error:  # nobody will take frames off the queue: their rows say why, now
            self._record_unfinished(f"not denoised: the worker stopped early ({self._worker_error})")
            return
        if self.options.policy != "block":
            self._queue.put(item)
            return
        # Breaker: after one frame found no room within block_timeout (a hung or far too slow
        # runtime), stop waiting; frames are dropped (recorded) until the worker has caught up.
        if self._breaker_open and len(self._queue) == 0:
            self._breaker_open = False
            log.warning("TomoGAN worker caught up; policy block waits for room again")
        if not self._queue.put(item, timeout=0.0 if self._breaker_open else self.options.block_timeout):
            if self._worker_error:  # refused by a closed queue: the stop records it with the reason
                return
            if not self._breaker_open:
                self._breaker_open = True
                self._note(f"worker made no room within {self.options.block_timeout} s; dropping frames "
                           "(recorded) until it catches up")

    def _open_file(self, stream: DerivedStream) -> None:
        """Open the derived-frame file of ``stream`` at its first denoised frame (worker thread, holding
        ``_lock``); its StreamResource is published with the stream's rows."""
        try:
            if self._writer is None:
                self._writer = DerivedFrameWriter.for_run(self.options.directory, self._raw_directory, self._start,
                                                          compression=self.options.compression)
            stream.unpublished.append(("stream_resource", self._writer.add(stream.slot, f"{stream.field}_denoised",
                                                                           stream.shape, stream.dtype)))
            stream.resource_ready = True
            if self._writer.moved and self._writer.moved not in self.summary.errors:
                self._note(self._writer.moved)
        except (OutputPathError, OSError) as exc:
            stream.resource_error = f"cannot write the denoised frame: {exc}"
            self._note(f"derived frames of {stream.field} cannot be written ({exc}); each row records why")

    # -- worker ---------------------------------------------------------------------------

    def _work(self) -> None:
        """The worker thread: denoise this run's frames until the end-of-run marker.

        Nothing that goes wrong here may reach the RunEngine or keep the stop waiting: a
        frame whose handling raises gets a row that says why, and should the loop itself
        fail, the stop is released at once and the frames left get rows naming the failure.
        """
        _lower_priority()
        try:
            self._work_loop()
        except BaseException as exc:  # a bug in this package: record it, never hang the run's stop
            log.exception("the TomoGAN worker of run %s stopped", self.summary.uid)
            self._worker_error = f"{type(exc).__name__}: {exc}"
            self._queue.close()  # a frame waiting for room must not wait for nobody
        finally:
            self._done.set()
            _give_back_freed_memory()  # the loop's frames and contexts are free now

    def _work_loop(self) -> None:
        # (id of a derived stream, role) -> its context window: darks, flats and projections of a stream whose
        # events say what each frame is are each denoised among their own kind
        windows: dict[tuple[int, str | None], list[QueuedFrame]] = {}
        while True:
            got = self._queue.get(timeout=0.5)
            self._flush_stale(windows)
            if got is None:
                if self._closed:  # the stop gave up on this worker: nothing left to do
                    return
                continue
            if self._closed:  # the stop gave up on this worker: its rows are recorded, stop working
                return
            is_frame, item = got
            if isinstance(item, _ScanSample):
                self._measure_sample(item)
                continue
            if not is_frame and not isinstance(item, Dropped):  # end of run: each stream's last frame, mirrored
                for window in windows.values():
                    self._denoise_last(window)
                return
            try:
                self._handle(item, windows)
            except Exception as exc:  # a bug (QC of an odd frame, ...): this frame's row says so, the rest go on
                frame = item.item if isinstance(item, Dropped) else item
                log.exception("TomoGAN: handling %s seq %d failed", frame.stream.field, frame.seq_num)
                if not frame.recorded:
                    self._finish(FrameResult(frame, None, f"internal error: {type(exc).__name__}: {exc}",
                                             finished=time.time()), judge=False)

    def _measure_sample(self, sample: _ScanSample) -> None:
        """A dark or flat frame that is not denoised, into QC (worker thread); one that cannot be read is
        logged and left out."""
        try:
            frame = sample.frame() if callable(sample.frame) else sample.frame
            self._qc.add_scan_frame(sample.role, sample.field, np.asarray(frame), sample.exposure_s)
        except Exception as exc:  # an unreadable frame costs only its share of the dark level or open beam
            log.warning("QC: %s frame of %s not read: %s: %s", sample.role, sample.field, type(exc).__name__, exc)

    def _handle(self, item: QueuedFrame | Dropped, windows: dict[tuple[int, str | None], list[QueuedFrame]]) -> None:
        """One frame off the queue: record it if dropped or unusable, else denoise it once its context is in."""
        began = time.perf_counter()
        if isinstance(item, Dropped):  # recorded as a row with no frame, in its place
            why = "worker stalled, no room within block_timeout" if self.options.policy == "block" else "queue full"
            self._finish(FrameResult(item.item, None, f"{DROPPED}: {why} (policy {self.options.policy})",
                                     finished=time.time()))
            return
        try:
            item.frame = _as_frame(item.frame() if callable(item.frame) else item.frame)
        except Exception as exc:  # unreadable external frame: flag it, keep going without it
            log.warning("cannot read %s seq %d: %s", item.stream.field, item.seq_num, exc)
            self._finish(FrameResult(item, None, f"cannot read frame: {type(exc).__name__}: {exc}",
                                     finished=time.time()))
            return
        item.stream = self._stream_of_frame(item, np.shape(item.frame))
        self._take_row(item)  # now, in the order handled: it may finish after frames handled after it
        if item.role == INVALID:  # NXtomo's image_key 3: the plan says the frame is not to be used
            said_by = self._role_fields.get(item.stream.raw_name, "its event")
            self._finish(FrameResult(item, None, f"not denoised: {said_by} marks the frame invalid",
                                     finished=time.time()), judge=False)
            return
        problem = _frame_problem(item.frame, item.stream.shape)
        unusable = self._qc.measure(item)
        if problem or unusable:  # flagged, and kept out of its neighbours' context: they are denoised as usual
            self._finish(FrameResult(item, None, problem or f"not denoised: unusable frame ({', '.join(unusable)})",
                                     finished=time.time()))
            return
        window = windows.setdefault((id(item.stream), item.role), [])
        window.append(item)
        half = self._depth(item.stream.field) // 2
        self._qc.feedback.note_lookahead(item.stream.bundle.descriptor_doc["name"], half)  # what a plan can wait for
        ready = len(window) - 1 - half  # the frame whose last neighbour has just come
        if ready >= 0:  # at a stream's start, its missing earlier neighbours are mirrored
            self._denoise(window[ready], _context(window, ready, 2 * half + 1))
        del window[:max(len(window) - max(2 * half, 1), 0)]  # keep what the next frames' contexts need
        if item.stream.field in self._controllers:  # what a frame costs besides the network
            self._controllers[item.stream.field].record_cycle(time.perf_counter() - began)

    def _depth(self, field: str) -> int:
        """How many adjacent frames the network of ``field`` reads (a denoiser of the user's own: 3)."""
        return int(getattr(self.options.denoiser_for(field), "depth", 3))

    def _denoise_last(self, window: list[QueuedFrame]) -> None:
        """Denoise a stream's frames still waiting for later neighbours, those mirrored (they are not coming,
        or not yet)."""
        if not window:
            return
        depth = self._depth(window[-1].stream.field)
        for i, item in enumerate(window):
            if not item.done:
                self._denoise(item, _context(window, i, depth))

    def _flush_stale(self, windows: dict[tuple[int, str | None], list[QueuedFrame]]) -> None:
        """A stream whose next frame is overdue (``CONTEXT_WAIT`` s, or three of its usual intervals between
        deliveries if longer, so that the last frames of a fly scan's batch wait for the next batch:
        its phase ended, as the flats of a tomography scan do before the projections) gets its newest frame
        denoised now, with mirrored context, not at the stop. A next frame that has arrived but waits in the
        queue is not overdue: a worker that runs behind keeps the full context.

        A stream's first frame is never overdue on time alone: it waits for its next frame, for a
        frame of another stream or role (the run has moved on: from its darks to its flats) or for the
        stop (a stream whose events say what each frame is keeps a window per role). Its context would otherwise
        depend on how fast documents happen to arrive (a storage write on the callback thread, a
        loaded machine), and with no neighbour at all it is the worst context there is.

        Time in which the RunEngine waited on this callback (its subscribers, a storage write, run
        in the document call) does not count: no next frame can come meanwhile, so a slow storage
        write never gives a frame a mirrored context."""
        now, busy = time.time(), self.busy_clock()
        streams = list(self._by_name.values())  # a snapshot: the callback thread may add a stream
        for window in windows.values():
            if not window or window[-1].done or window[-1].origin.of(window[-1].role).latest_token > window[-1].token:
                continue
            first = window[0]
            if len(window) == 1 and not any(state.latest_token > first.token for s in streams
                                            for role, state in s.roles.items()
                                            if s is not first.origin or role != first.role):
                continue
            # three of the stream's usual waits for its next frame: between deliveries, where frames come in batches
            wait = max(CONTEXT_WAIT, 3 * (window[-1].stream.of(window[-1].role).arrivals.between_deliveries or 0.0))
            newest = window[-1]
            if (now - newest.received) - (busy - newest.busy_at_receipt) > wait:
                self._denoise_last(window)

    def _denoise(self, item: QueuedFrame, context: list[QueuedFrame]) -> None:
        if item.done:  # already denoised with mirrored context while its next frame was late
            return
        item.done = True
        try:
            den = self._network(item)
            began = time.perf_counter()
            # a lighter step of an adaptive ladder may read fewer frames than the stream's context
            frames = self._near_in_angle(item, centred(context, int(getattr(den, "depth", len(context)))))
            context_frames = np.stack([np.asarray(c.frame) for c in frames])
            if takes_frame_keys(den):  # each frame despiked once, not in each of the contexts that hold it
                out = den.denoise_context(context_frames, frame_keys=[(self._frame_keys, c.token) for c in frames])
            else:  # a denoiser of the user's own (or a subclass that overrides denoise_context) takes the context
                out = den.denoise_context(context_frames)
            if item.stream.field in self._controllers:
                self._controllers[item.stream.field].record(time.perf_counter() - began)
            self._qc.register(item)
            residual_metrics(np.asarray(item.frame), out, item.metrics,
                             previous=item.stream.of(item.role).previous_residual,
                             noise_correlation=self._qc.noise_correlation(item.stream.field),
                             fixed_pattern=self._qc.fixed_pattern(
                                 item.stream.field, leave_out=np.asarray(item.frame) if item.in_flat_sum else None))
            # a denoiser of the user's own (duck-typed) has no ratio: an unpruned network
            self._finish(FrameResult(item, out, "", time.time(), ratio=float(getattr(den, "ratio", 0.0)),
                                 model=network_name(den)))
        except (TomoGANError, ValueError) as exc:  # bad frame: flag it, keep going
            self._finish(FrameResult(item, None, f"{type(exc).__name__}: {exc}", finished=time.time()))
        except Exception as exc:  # a model/runtime failure must not kill the worker
            log.exception("denoising %s seq %d failed", item.stream.field, item.seq_num)
            self._finish(FrameResult(item, None, f"{type(exc).__name__}: {exc}", finished=time.time()))

    def _near_in_angle(self, item: QueuedFrame, context: list[QueuedFrame]) -> list[QueuedFrame]:
        """``context`` with the neighbours more than NEIGHBOUR_DEGREES (frames.py) from ``item``'s angle, and those
        beyond them, replaced by stand-ins (the rule of a scan's ends); a mirrored stand-in, here or at a scan's
        end, only where it lies near the view it stands for (``mirror_stands_in``), else the frame itself. Frames
        whose angle is not known (a count, a fly scan's capture in a file) are kept, as frames of the same view."""
        centre = self._qc.angle_of(item, wait=ANGLE_WAIT)
        half = len(context) // 2
        if centre is None or half == 0:
            return context

        angles: dict[int, float | None] = {}

        def angle(o: int) -> float | None:  # asked once per neighbour: a neighbour's angle may be waited for
            if o not in angles:
                angles[o] = self._qc.angle_of(context[half + o], wait=ANGLE_WAIT)
            return angles[o]

        def near(o: int) -> bool:
            # a neighbour taken before the centre frame stands before it (frames come in order): else it is a
            # stand-in that a stream's end put there (_context), to be judged as one
            token = context[half + o].token
            if not (token > item.token if o > 0 else token < item.token):
                return False
            a = angle(o)
            return a is None or near_in_angle(a, centre)

        def mirror(o: int) -> bool:
            a = angle(o)
            return a is None or mirror_stands_in(a, centre)

        left, right = usable_reach(half, near)
        if left == right == half:
            return context
        return [context[half + o] for o in context_offsets(len(context), left, right, mirror)]

    def _network(self, item: QueuedFrame) -> Denoiser:
        """The denoiser for ``item``: with ``policy="adaptive"``, at the ratio the queue's backlog and the frame
        rate of its stream call for (worker thread)."""
        stream = item.stream
        f = stream.field
        den = self.options.denoiser_for(f)
        if not isinstance(den, RatioDenoisers):
            return den
        if self.options.policy != "adaptive":
            return den.at(den.ratio)
        if f not in self._controllers:  # the first frame of this field: every network runs at its shape
            costs = den.warm_up(stream.shape)
            self._controllers[f] = RatioController(den, self.options.high_water, self.options.low_water,
                                                   costs=costs)
        return self._controllers[f].next_denoiser(self._queue.backlog(), stream.of(item.role).arrivals.interval)

    def _finish(self, result: FrameResult, *, after_stop: bool = False, judge: bool = True) -> None:
        """Write the result's frame (worker thread) and hand the result to the callback thread.

        A frame that could not be denoised is recorded (``qc_error``): inline as
        zeros, in a file as an unwritten (zero) row. Once the stop has given up
        on the worker (``_closed``), a late result is discarded: its row was
        already recorded as not denoised.
        """
        result.item.recorded = True
        if not after_stop and judge:
            try:
                self._qc.judge(result)
            except Exception as exc:  # the row is kept, with what went wrong in QC
                log.exception("TomoGAN: QC of %s seq %d failed", result.item.stream.field, result.item.seq_num)
                result.error = result.error or f"internal error in QC: {type(exc).__name__}: {exc}"
        stream = result.item.stream
        row = self._take_row(result.item)  # (taken when the worker handled it, unless it never did)
        if result.denoised is not None:  # as the derived stream stores it (QC has seen the float frame); not
            result.denoised = cast_frames(result.denoised, np.dtype(stream.dtype))  # under the lock the RE shares
        with self._lock:
            if self._closed and not after_stop:
                return
            if self.options.inline:
                if result.denoised is None:
                    result.denoised = np.zeros(stream.shape, stream.dtype)
                self._outbox.append(result)
                return
            if not (stream.resource_ready or stream.resource_error) and all(stream.shape):
                self._open_file(stream)  # at the stream's first row: failed and dropped rows have theirs too
            if stream.resource_error:
                result.error = result.error or stream.resource_error
                result.denoised = None
            elif self._writer is not None and stream.resource_ready:
                try:
                    result.index = self._writer.write_at(stream.slot, row, result.denoised)
                except Exception as exc:  # a full disk must not stop the scan
                    log.exception("writing the denoised %s seq %d failed", stream.field, result.item.seq_num)
                    result.error = result.error or f"cannot write the denoised frame: {type(exc).__name__}: {exc}"
                result.denoised = None  # on disk now (or lost, with the reason): keep the outbox small
            self._outbox.append(result)

    def _take_row(self, item: QueuedFrame) -> int:
        """``item``'s row in its derived stream's file: the next one, taken once.

        Rows are emitted in the raw frames' order (:meth:`_emit_finished`), and Tiled reads a derived stream's
        frames by file row; the worker handles frames in that order, but finishes them in another (a frame that
        waits for its next neighbour finishes after one flagged at once). So each frame takes its row when the
        worker handles it (or, never handled, when it is recorded), and is written there when it finishes.
        """
        with self._lock:
            if item.row is None:
                key = id(item.stream)
                item.row = self._rows_taken.get(key, 0)
                self._rows_taken[key] = item.row + 1
            return item.row

    # -- emitting (callback thread) ---------------------------------------------------------

    def _record_unfinished(self, reason: str) -> None:
        """Give every frame still pending at the stop its row, with ``reason``."""
        leftovers = sorted(self._pending.values(), key=lambda it: it.token)
        for item in leftovers:
            self._finish(FrameResult(dataclasses.replace(item, frame=None), None, reason, finished=time.time()),
                         after_stop=True)
        self._emit_finished()

    def _emit_finished(self) -> None:
        """Emit finished frames as event pages (one per derived stream), from the callback thread.

        Rows go out in the raw frames' order: a frame flagged at once (unusable, unreadable)
        waits for its neighbours that wait for their context, so row ``i`` of a derived
        stream is frame ``i`` of its raw stream.
        """
        while self._outbox:
            r = self._outbox.popleft()
            if r.item.token in self._pending:
                self._ready[r.item.token] = r
        groups: dict[int, list[FrameResult]] = {}
        blocked: set[int] = set()
        for token, item in list(self._pending.items()):
            sid = id(item.origin)
            if sid in blocked:
                continue
            if token not in self._ready:
                blocked.add(sid)  # an earlier frame of this stream is not finished: keep the order
                continue
            r = self._ready.pop(token)
            del self._pending[token]
            groups.setdefault(sid, []).append(r)
        for in_order in groups.values():
            for rows in _runs_by_stream(in_order):
                self._emit_rows(rows[0].item.stream, rows)

    def _emit_rows(self, stream: DerivedStream, rows: list[FrameResult]) -> None:
        """One event page of ``stream`` (and its StreamDatums), after the documents it still owes."""
        self._publish_owed(stream)
        f = stream.field
        for r in rows:
            if r.error.startswith(DROPPED):  # drops are counted, not repeated as errors
                self.summary.dropped += 1
            elif r.error:
                self._note_repeated((f, r.error), f"{f} seq {r.item.seq_num}: {r.error}",
                                    f"{f}: {{n}} more frames not denoised: {r.error}")
            if r.error:
                self.summary.missing += 1
        data = row_columns(f, rows, inline=self.options.inline)
        now = time.time()
        page = stream.bundle.compose_event_page(data=data, timestamps={k: [now] * len(rows) for k in data})
        self._publish("event_page", page)
        if self._writer is not None and stream.resource_ready:
            self._publish_stream_datums(stream, rows, list(page["seq_num"]))

    def _note_repeated(self, problem: tuple[str, str], message: str, summary: str) -> None:
        """Note ``message`` for the first :data:`FRAMES_LISTED_PER_PROBLEM` times of ``problem`` (and the first
        :data:`PROBLEMS_LISTED` problems); count the rest, summed up at the stop by ``summary`` (``{n}``: how many)."""
        listed = self._problems_listed.get(problem)
        if listed is None and len(self._problems_listed) >= PROBLEMS_LISTED:
            self._frames_unlisted += 1
        elif (listed or 0) < FRAMES_LISTED_PER_PROBLEM:
            self._problems_listed[problem] = (listed or 0) + 1
            self._note(message)
        else:
            n, _ = self._problems_unlisted.get(problem, (0, summary))
            self._problems_unlisted[problem] = (n + 1, summary)

    def _sum_up_frame_problems(self) -> None:
        """At the stop: one line per problem counted but not listed."""
        for n, summary in self._problems_unlisted.values():
            self._note(summary.format(n=n))
        if self._frames_unlisted:
            self._note(f"{self._frames_unlisted} more problems with frames or events, of other kinds (each row's "
                       "qc_error says why)")
        self._problems_unlisted.clear()
        self._frames_unlisted = 0

    def _publish_stream_datums(self, stream: DerivedStream, rows: list[FrameResult], seq_nums: list[int]) -> None:
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
            self._publish("stream_datum", self._writer.datum(stream.slot, start, start + count, seq,
                                                             stream.bundle.descriptor_doc))

    def _release(self) -> None:
        """End the run's worker (now, or when a hung call returns) and close its files; idempotent."""
        if self.summary.finished:
            return
        self.summary.finished = True
        with self._lock:
            self._closed = True
        self._queue.put_control(_END)
        self._qc.close()
        if self._writer is not None:
            self._writer.close()
        self._close_readers()

    def _close_readers(self) -> None:
        for _, reader in self._stream_readers.values():
            reader.close()
        self._stream_readers.clear()
        for role_reader in (*self._role_readers.values(), *self._angle_readers.values()):
            role_reader.close()
        self._role_readers.clear()
        self._angle_readers.clear()
        for handler in self._handlers.values():
            if hasattr(handler, "close"):
                handler.close()
        self._handlers.clear()


def _runs_by_stream(rows: list[FrameResult]) -> list[list[FrameResult]]:
    """Consecutive rows of one derived stream, in order (an origin's frames can go to several, by shape)."""
    runs: list[list[FrameResult]] = []
    for r in rows:
        if runs and runs[-1][0].item.stream is r.item.stream:
            runs[-1].append(r)
        else:
            runs.append([r])
    return runs


def _context(window: list[QueuedFrame], index: int, depth: int) -> list[QueuedFrame]:
    """The ``depth`` frames of ``window`` centred on ``window[index]``, missing neighbours mirrored (the rule
    of training and offline inference, :func:`~bluesky_tomogan.frames.context_indices`)."""
    return [window[j] for j in context_indices(np.zeros(len(window), np.int32), index, depth)]


def _lower_priority() -> None:
    """Make the calling (worker) thread yield the CPU to the RunEngine and the detectors.

    On Linux a thread is a task with its own nice value, and threads it starts
    (the inference runtime's pool) inherit it. Elsewhere this is a no-op.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICENESS)
    except (AttributeError, OSError):  # not Linux, or not permitted: run at normal priority
        log.debug("could not lower the worker's priority", exc_info=True)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or ``None`` where the C library is not glibc."""
    import ctypes

    try:  # the symbols the process has loaded (its C library's among them), without a search for the library
        return getattr(ctypes.CDLL(None), "malloc_trim", None)
    except (OSError, TypeError):  # Windows has no such namespace
        return None


def _give_back_freed_memory() -> None:
    """Return the C allocator's free pages to the system, at the end of a run's worker (glibc only).

    A run allocates and frees thousands of frame-sized buffers (frames, contexts, the runtime's
    tensors, HDF5's chunks) on threads that live for the run; glibc keeps what they freed in its
    arenas, so one callback's process grew by 5-25 MB a run: +53 MB RSS over nine runs of 200
    512x512 frames after a warm-up run (more than the 50 MB a long session may grow), and -15.5 MB
    (largest +8.1) with this at each worker's end (``python benchmarks/soak.py``, Intel Xeon with AMX;
    docs/benchmarks.md, "Soak"). It runs on the worker thread, after the stop was released.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _frame_problem(frame: np.ndarray, declared: tuple[int, int]) -> str:
    """Why ``frame`` cannot be denoised or serve as context (empty if it can)."""
    if all(declared) and frame.shape != declared:
        return f"frame shape {frame.shape} is not the declared {declared}"
    try:
        check_frames(frame)  # the Denoiser's own rules (dtype, inf, no data at all), checked before the neighbours
    except TomoGANError as exc:
        return f"{type(exc).__name__}: {exc}"
    return ""


def _a_reference(doc: EventPage, f: str, i: int, value: Any) -> bool:
    """Whether row ``i`` of event page ``doc`` holds a datum id for ``f`` (the frame is in a file), not the frame."""
    filled = doc.get("filled", {}).get(f, True)
    return filled is False or (isinstance(filled, list) and filled[i] is False) or isinstance(value, str)


def _read_row(read: FrameReader, index: int) -> np.ndarray:
    """Frame ``index`` of a StreamResource's frames (of a dark stream, any frame is a dark frame)."""
    return read(index, index + 1)[0]


def _unusable(reason: str) -> np.ndarray:
    """Stands in for an event's value that is no array: its frame's row records ``reason``."""
    raise InputValueError(reason)


def _as_frame(value: Any) -> np.ndarray:
    """An event's one frame as ``(H, W)``: without a leading exposure axis or a trailing channel axis of 1."""
    frame = without_channel_axis(np.asarray(value))
    return frame[0] if frame.ndim == 3 and frame.shape[0] == 1 else frame


def _exposure(frames: np.ndarray, exposure: int) -> np.ndarray:
    """Frame ``exposure`` of an event's ``(N, H, W)`` frames (a 2-D array is an event of one frame)."""
    if frames.ndim == 2:
        frames = frames[None]
    if exposure >= frames.shape[0]:
        raise IndexError(f"the event holds {frames.shape[0]} frames; frame {exposure} (0-based) is missing")
    return frames[exposure]
