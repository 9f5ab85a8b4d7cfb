"""``TomoReconstruction``: slices reconstructed (and denoised) while a tomography scan runs.

Subscribe it downstream of :class:`~bluesky_tomogan.callbacks.TomoGANCallback`
(so that it sees the denoised stream) and upstream of storage::

    cb = TomoGANCallback(load_denoiser(), streams=["primary", "flat"])   # denoised flats too
    rec = TomoReconstruction(load_denoiser("tomogan-slice"))
    cb.subscribe(rec)
    rec.subscribe(TiledWriter(client))
    RE.subscribe(cb)

For a run with a rotation axis (the start document's first ``motors`` entry, or
the field ``angle_field`` names) it collects a few sinogram rows (default: the
centre and the quarters, each with its neighbours as the slice model's context) from the ``denoised``
frames (or the raw ones), flat/dark-corrects them with the run's ``flat`` and
``dark`` streams (denoised flats when the callback made them: the flat's
noise is otherwise the strongest stripe in the sinogram), removes stripes,
finds the rotation centre and reconstructs with algotom
(:mod:`bluesky_tomogan.reconstruction`), denoises each slice with the slice
model, and emits a ``reconstruction`` stream in the same run, before its stop:
every ``every`` projections while the scan runs (on a worker thread, emitted
at the next document), and once more at the end. Each projection's angle comes
in its event (a step scan) or, in a fly scan, from the file it was written to
(``STREAM:``: a PandA's or the detector's HDF5 dataset, read on the worker
thread), in degrees or the ``rad``/``mrad`` its data key's ``units`` say; a fly
scan that records none (no position capture) uses the nominal angles its plan
wrote to the start document (``tomo_fly_scan``'s ``angles``). Slices
are written to HDF5 and announced by StreamResource/StreamDatum, like the
denoised frames.

The final reconstruction does not hold the RunEngine: the stop returns at
once, and a thread finishes the reconstruction and then passes the stop on, so
subscribers still see the ``reconstruction`` rows before the stop. Documents
that come meanwhile (the next scan's) wait in a backlog (at most
``BACKLOG_LIMIT`` documents; when full, the RunEngine waits) and that thread
passes them on after the stop: every subscriber gets every run's documents in
order, from one thread at a time. A script that reads the run back right after
``RE(...)`` calls :meth:`TomoReconstruction.wait` first (``background=False``
makes the stop wait instead).

Problems (no rotation axis, no darks or flats, angles that do not cover 180
degrees, a given centre far from the found one) are noted in the stream's
``note`` column and logged; the scan and its raw data are never touched.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import warnings
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import event_model
import numpy as np

from .. import reconstruction as recon
from ..center import SEAM, TURN
from ..errors import OutputPathError
from ..frame_roles import FrameRoles
from ..frames import context_indices
from ..inference.denoiser import Denoiser
from ..masked import masked_pixels
from ..qc.policy import UNUSABLE
from ..stream_readers import FrameReader, reader_for, remapped, scalar_rows
from .consumers import Consumers
from .derived_stream import (
    SOURCE,
    derived_from,
    derived_name,
    exposures_per_event,
    frame_shape,
    made_by_us,
    scan_role,
    without_channel_axis,
)
from .frame_writer import DerivedFrameWriter, stream_resource_directory
from .passthrough import PassThroughRun, RunRouterFacade, Turn
from .run import image_fields

__all__ = ["TomoReconstruction"]

log = logging.getLogger(__name__)
#: A given centre further than this (pixels) from the one found is noted as probably wrong.
CENTER_TOLERANCE = 5.0
STREAM = "reconstruction"
#: Documents that may wait behind a run's final reconstruction; when full, the RunEngine waits.
BACKLOG_LIMIT = 10_000


def _raw_role(stream: str) -> str | None:
    """``primary``, ``dark`` or ``flat`` for the raw streams a reconstruction reads (darks and flats by any of
    the names plans give them: ``darks``, ``flat_field``, ``white``, ...), ``None`` for the others."""
    return "primary" if stream == "primary" else scan_role(stream)


class TomoReconstruction(RunRouterFacade):
    """Reconstruct and denoise a few slices of a tomography run while it runs (see the module docstring).

    Parameters
    ----------
    slice_denoiser : Denoiser, optional
        The slice model (``load_denoiser("tomogan-slice")``); without it the
        stream holds the filtered back-projections only.
    rows : sequence of int, optional
        Detector rows to reconstruct, 0 the top one (default: the quarter, centre and
        three-quarter rows). A row beyond the detector is noted and skipped; at the detector's
        edges the slice model's context is mirrored.
    source : {"denoised", "raw"}
        Which projections: the ``denoised`` stream (default) or the raw ``primary`` frames.
    center : float, optional
        Rotation centre in pixels (default: found with algotom's ``find_center_vo``, or for a sample wider
        than the field of view where the projections 180 degrees apart agree: :mod:`bluesky_tomogan.center`).
    angle_field : str, optional
        The data key of each projection's rotation angle, in a run whose ``primary`` stream has it;
        otherwise (and by default) the start document's first ``motors`` entry, as bluesky's step
        plans and ``tomo_scan`` write it, so that one setting serves a beamline's fly and step
        scans. In degrees unless its ``units`` say ``rad`` or ``mrad``. A fly scan's
        angles are often another device's reading (a PandA's encoder capture, ``panda-inenc-1-val``),
        which may come in events or be written to a file beside the frames (``STREAM:``). Where no
        projection comes with its angle, the start document's ``angles`` (degrees, one per projection
        in order, as ``tomo_fly_scan`` writes each exposure's nominal angle) stand in, noted.
    remove_stripes : bool
        Remove stripes (algotom's sorting-based filter) before back-projecting.
    every : int
        Reconstruct every ``every`` projections while the scan runs (0: only at the end).
    directory : path-like, optional
        Where slice files go (default: next to the raw frames if that directory can be written, else
        the per-user data directory).
    timeout : float
        Seconds the final reconstruction may take; after that the stop goes on without it, noted.
    background : bool
        Finish the final reconstruction after the RunEngine's stop returns (default; see :meth:`wait`).
        False: the stop waits for it, and the RunEngine with it.
    root_map : dict, optional
        Where this machine sees the raw frames' files that the detector wrote elsewhere: the leading
        part of a ``StreamResource``'s file path, as for :class:`~.tomogan.TomoGANCallback`.
    binning : int, optional
        Average this many adjacent detector columns before reconstructing: slices ``binning`` times smaller
        each way, in a ``binning**2``-th of the time. Default: none up to 2048 columns, else the smallest power of
        two that brings the detector to 2048 (:func:`~bluesky_tomogan.reconstruction.auto_binning`), so that a
        4096-column camera's slices come in the time of a 2048-column one's. The centre is in detector pixels.
    """

    def __init__(self, slice_denoiser: Denoiser | None = None, *, rows: Sequence[int] | None = None,
                 source: Literal["denoised", "raw"] = "denoised", center: float | None = None,
                 angle_field: str | None = None, remove_stripes: bool = True, every: int = 0,
                 directory: str | os.PathLike[str] | None = None, timeout: float = 120.0,
                 background: bool = True, root_map: Mapping[str, str] | None = None,
                 binning: int | None = None) -> None:
        if source not in ("denoised", "raw"):
            raise ValueError(f"source must be 'denoised' or 'raw', got {source!r}")
        # now, not in the final reconstruction, which may run while the interpreter shuts down
        recon.import_algotom()
        if rows is not None and (not len(rows) or min(rows) < 0):
            raise ValueError(f"rows must be detector rows (0 is the top one), at least one, got {list(rows)}")
        if center is not None and not math.isfinite(center):
            raise ValueError(f"center must be a finite column position in pixels, got {center}")
        super().__init__()
        self.slice_denoiser = slice_denoiser
        if slice_denoiser is not None:
            from .tomogan import warn_if_domain_is_not

            warn_if_domain_is_not(slice_denoiser, "slice", "TomoReconstruction denoises reconstructed slices")
        self.rows = None if rows is None else [int(r) for r in rows]
        self.source = source
        self.center = None if center is None else float(center)
        if angle_field is not None and (not isinstance(angle_field, str) or not angle_field):
            raise ValueError(f"angle_field must be a data key's name, got {angle_field!r}")
        self.angle_field = angle_field
        self.remove_stripes = remove_stripes
        self.every = int(every)
        self.directory = None if directory is None else Path(directory).expanduser().resolve()
        self.timeout = timeout
        self.background = background
        self.root_map = dict(root_map or {})
        if binning is not None and (isinstance(binning, bool) or not isinstance(binning, int) or binning < 1):
            raise ValueError(f"binning must be a whole number of columns, at least 1, or None (automatic); got "
                             f"{binning!r}")
        self.binning = binning
        self._finishing: list[threading.Thread] = []  # threads finishing a run's stop
        # While a finishing thread owns delivery, later documents wait in the backlog, in order, and it
        # routes them after the stop it finished: subscribers get every run's documents in order and
        # the RunEngine goes on with the next scan.
        self._delivery = threading.Condition()
        self._backlog: deque[tuple[str, dict[str, Any]]] = deque()
        self._owner: threading.Thread | None = None
        self._routing = threading.Lock()  # one routing call at a time (RunEngine thread or finishing thread)

    def __call__(self, name: str, doc: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        with self._delivery:
            while self._owner is not None and len(self._backlog) >= BACKLOG_LIMIT:
                self._delivery.wait()  # full: the RunEngine waits for the final reconstruction after all
            if self._owner is not None:
                self._backlog.append((name, doc))
                return name, doc
        with self._routing:
            return super().__call__(name, doc)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until finished runs' final reconstructions, stops and later documents reached the subscribers.

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait at most (default: as long as it takes; each run's final
            reconstruction is bounded by the ``timeout`` given at construction).

        Returns
        -------
        bool
            True when nothing is left to deliver.

        Examples
        --------
        >>> (uid,) = RE(tomo_scan(det, stage, angles))  # doctest: +SKIP
        >>> rec.wait()                                   # doctest: +SKIP
        True
        >>> client[uid]["reconstruction"]                # doctest: +SKIP
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._delivery:
                alive = [t for t in self._finishing if t.is_alive()]
                self._finishing = alive
            if not alive:
                return True
            alive[0].join(None if deadline is None else max(deadline - time.monotonic(), 0.0))
            if deadline is not None and time.monotonic() >= deadline and alive[0].is_alive():
                return False

    def _hand_over(self, thread: threading.Thread) -> None:
        """``thread`` finishes a stop and then delivers the backlog (called while routing that stop)."""
        with self._delivery:
            self._owner = thread
            self._finishing.append(thread)

    def _deliver_backlog(self) -> None:
        """Route the documents that waited behind a finished stop (on its finishing thread)."""
        me = threading.current_thread()
        while True:
            with self._delivery:
                if self._owner is not me:
                    return  # a later stop in the backlog handed delivery to its own finishing thread
                if not self._backlog:
                    self._owner = None
                    self._delivery.notify_all()
                    return
                name, doc = self._backlog.popleft()
                self._delivery.notify_all()
            with self._routing:  # also waits until the call that routed our stop has returned
                RunRouterFacade.__call__(self, name, doc)

    def _make_run(self, start_doc: Any) -> PassThroughRun:
        return _RunReconstruction(self, self._consumers, self._turn)


class _Frames:
    """Where the frames of one stream are: (seq_num -> (reader, index)) or inline rows.

    Rows are kept as float32 with NaN where the detector has no data (masked pixels,
    :mod:`bluesky_tomogan.masked`): found by value in the raw integer frames, and in a derived
    (float) stream by the raw value it keeps there, given the detector's type.
    """

    def __init__(self, exposures: int = 1) -> None:
        self.exposures = exposures  # frames per event of the stream's image field ([N, H, W])
        self.located: dict[int, tuple[FrameReader, int]] = {}
        # The wanted rows of each frame, once read (or as they came inline): an update reads only new frames,
        # and an inline frame keeps only its rows.
        self._rows: dict[int, np.ndarray] = {}

    @property
    def seqs(self) -> set[int]:
        return set(self.located) | set(self._rows)

    def __len__(self) -> int:
        return len(self.seqs)

    def add_inline(self, seq: int, frame: Any, rows: Sequence[int], raw_dtype: np.dtype | None) -> None:
        """Keep the ``rows`` of a frame that came inside its event."""
        self._rows[seq] = _picked_rows(frame, rows, raw_dtype)

    def rows(self, seqs: Sequence[int], rows: Sequence[int], raw_dtype: np.dtype | None) -> np.ndarray:
        """``(len(seqs), len(rows), W)`` of the frames ``seqs`` (worker thread); ``rows`` are the run's rows."""
        out = []
        for s in seqs:
            if s not in self._rows:
                reader, i = self.located[s]
                frame = reader(i, i + 1)[0] if self.exposures == 1 else reader.event(i, self.exposures)
                self._rows[s] = _picked_rows(frame, rows, raw_dtype)
            out.append(self._rows[s])
        return np.stack(out)


def _picked_rows(frame: Any, rows: Sequence[int], raw_dtype: np.dtype | None) -> np.ndarray:
    """``rows`` of ``frame`` as float32, NaN where masked (the frame's own integer type says, else ``raw_dtype``).

    An event of several frames (``[N, H, W]``: exposures at one angle) gives their mean, pixel by
    pixel over the exposures that hold data there.
    """
    arr = without_channel_axis(np.asarray(frame))
    picked = arr.reshape(-1, *arr.shape[-2:])[:, list(rows)]
    mask = masked_pixels(picked, None if picked.dtype.kind in "ui" else raw_dtype)
    out = picked.astype(np.float32)
    if mask is not None:
        out[mask] = np.nan
    if len(out) == 1:
        return out[0]
    with warnings.catch_warnings():  # a pixel without data in every exposure stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(out, axis=0)


def _corrected_rows(sino: np.ndarray, wanted: Sequence[int], flat: np.ndarray | None, dark: np.ndarray | None,
                    binning: int) -> dict[int, np.ndarray]:
    """Each detector row of ``wanted`` (the rows ``(angles, rows, W)`` of ``sino`` hold, in that order) as
    flat-corrected transmission (with the mean ``flat`` and ``dark`` rows where there are), columns binned."""
    return {r: recon.bin_columns(recon.corrected_sinogram(sino[:, i], None if flat is None else flat[i],
                                                          None if dark is None else dark[i]), binning)
            for i, r in enumerate(wanted)}


def _runs(seqs: Sequence[int], located: Mapping[int, tuple[FrameReader, int]]) -> list[tuple[int, int]]:
    """``[start, stop)`` positions in ``seqs`` whose rows lie one after the other in one reader: one read each."""
    runs: list[tuple[int, int]] = []
    start = 0
    for i in range(1, len(seqs) + 1):
        if i == len(seqs) or located[seqs[i]][0] is not located[seqs[i - 1]][0] \
                or located[seqs[i]][1] != located[seqs[i - 1]][1] + 1:
            runs.append((start, i))
            start = i
    return runs


def _numpy_dtype(text: Any) -> np.dtype | None:
    """The descriptor's ``dtype_numpy`` as a dtype (``None`` where it has none or it is not a plain type)."""
    try:
        return np.dtype(text) if isinstance(text, str) and text else None
    except TypeError:
        return None


class _RunReconstruction(PassThroughRun):
    label = "TomoReconstruction"

    def __init__(self, options: TomoReconstruction, consumers: Consumers, turn: Turn) -> None:
        super().__init__(consumers, turn)
        self.o = options
        self._start: Any = None
        self._axis: str | None = None  # the data key of each projection's angle
        self._motor: str | None = None  # the start document's first ``motors`` entry
        self._nominal: list[float] = []  # the plan's angle of each projection, in order (the start's ``angles``)
        self._degrees_per_unit = 1.0  # of its readings, by the units its data key gives (rad, mrad: converted)
        self._units_noted = False  # units that are not an angle's were said
        self._names: dict[str, str] = {}  # descriptor uid -> the stream's role (:meth:`_role`)
        self._role_stream: dict[str, str] = {}  # derived role -> the name of the stream that has it
        self._image_key: dict[str, str] = {}  # role -> its frame data key
        self._shape: tuple[int, int] | None = None
        # the detector's raw type: where it is an integer type, its mask value marks pixels without data, also
        # in the derived (float) frames, which keep the raw value there
        self._raw_dtype: np.dtype | None = None
        self._frames: dict[str, _Frames] = {}  # role -> frames
        self._readers: dict[str, tuple[str, FrameReader]] = {}  # StreamResource uid -> (data key, reader)
        self._angles: dict[int, float] = {}  # primary seq_num -> angle, from its event
        # a fly scan's angles, written to a file (STREAM:): StreamResource uid -> reader, primary seq_num -> where
        # its angle is, and (worker thread) the readings read so far (in the units of its data key)
        self._angle_readers: dict[str, FrameReader] = {}
        self._angle_rows: dict[int, tuple[FrameReader, int]] = {}
        self._angles_read: dict[int, Any] = {}
        # ... and the same of a field that says what each frame is, written to a file (an NDAttribute: frame_roles)
        self._role_readers: dict[str, FrameReader] = {}
        self._role_rows: dict[int, tuple[FrameReader, int]] = {}
        self._roles_read: dict[int, Any] = {}
        self._source_seq: dict[int, int] = {}  # denoised seq_num -> primary seq_num
        # primary seq_num -> "dark", "flat" or "invalid", where the primary stream's events say what each frame
        # is (an image_key or frame_type field: frame_roles); its projections are the others
        self._seq_roles: dict[int, str] = {}
        self._frame_roles: dict[str, FrameRoles] = {}  # primary descriptor uid -> what its frames are
        self._unusable: set[int] = set()  # primary seq_nums whose frame QC called unusable
        self._raw_directory: Path | None = None
        # a background thread: progressive updates use the CPU that the RunEngine and the denoiser leave
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="tomogan-recon", initializer=recon.background_thread)
        self._pending: Future[dict[str, Any] | str | None] | None = None
        self._last_update = 0
        self._writer: DerivedFrameWriter | None = None
        self._bundle: Any = None
        self._streams: dict[str, Any] = {}
        self._counters: dict[str, int] = {}
        self._found_center = float("nan")  # from the last reconstruction that covered 180 degrees
        self._found_at = 0  # with how many projections it was found
        self._found_how = ""  # and how (bluesky_tomogan.center: VO, SEAM, TURN or VO_EXTENDED)
        self._slice_shape: tuple[int, ...] = ()  # of the stream's slices: the first ones emitted

    def __call__(self, name: str, doc: dict, validate: bool = False) -> tuple[str, dict]:
        if name == "stop" and self.o.background and self._axis is not None and not self.summary.finished:
            self._turn.passed = True  # published by the finishing thread, after the reconstruction rows
            # not a daemon (threads inherit it from the RunEngine's daemon loop thread): a script that ends
            # right after its scan still stores the final reconstruction and the stop before Python exits
            thread = threading.Thread(target=self._finish, args=(doc,), name="tomogan-recon-stop", daemon=False)
            self.o._hand_over(thread)
            thread.start()
            return name, doc
        return super().__call__(name, doc, validate)

    def _finish(self, doc: dict[str, Any]) -> None:
        """The stop, handled after the RunEngine moved on (finishing thread; the facade publishes nothing
        until this returns, so the subscribers are called from one thread at a time)."""
        # The facade's turn has moved on to later documents: this run, which gets no more of them, takes a
        # turn of its own, so that the shared handling (errors noted, release, the stop published once with
        # its reasons) is the one every document goes through.
        self._turn = Turn()
        self._turn.begin("stop", doc)
        super().__call__("stop", doc)
        self.o._deliver_backlog()

    # -- documents ---------------------------------------------------------------------------

    def start(self, doc: Any) -> Any:
        self._start = doc
        self.summary.uid = doc["uid"]
        motors = list(doc.get("motors") or [])
        self._motor = str(motors[0]) if motors else None
        self._axis = self.o.angle_field or self._motor
        self._nominal = recon.nominal_angles(doc)
        return doc

    def _role(self, doc: Any) -> str | None:
        """What a stream is to the reconstruction: ``primary``, ``dark``, ``flat`` (raw) or ``denoised``,
        ``dark_denoised``, ``flat_denoised`` (the callback's, found by what they denoise, not by their
        names: a plan's own stream called ``denoised`` is not ours, and ours may be ``denoised_2``);
        ``None`` for the rest."""
        source = derived_from(doc)
        if source is None:
            role = _raw_role(doc.get("name", "primary"))
            return role if role is not None and not made_by_us(doc) else None
        raw_stream, raw_field = source
        raw_role = _raw_role(raw_stream)
        if raw_role is None or raw_field != self._image_key.get(raw_role, raw_field):
            return None  # another stream, or the derived stream of another detector's field
        role = derived_name(raw_role)  # the name it has when nothing clashes
        taken = self._role_stream.setdefault(role, doc.get("name", ""))
        return role if taken == doc.get("name", "") else None

    def descriptor(self, doc: Any) -> Any:
        role = self._role(doc)
        if role is None:
            return doc
        self._names[doc["uid"]] = role
        if role == "primary":
            self._frame_roles[doc["uid"]] = FrameRoles(doc)
            self._take_angle_units(doc)
        keys = image_fields(doc)
        if role.endswith("denoised"):
            keys = [k for k in keys if k.endswith("_denoised")]
        if keys and role not in self._image_key:
            self._image_key[role] = keys[0]
            self._frames.setdefault(role, _Frames(exposures_per_event(doc["data_keys"][keys[0]])))
            if self._raw_dtype is None and not role.endswith("denoised"):
                self._raw_dtype = _numpy_dtype(doc["data_keys"][keys[0]].get("dtype_numpy"))
        if keys and self._shape is None:  # one detector: its first image stream (the darks, in tomo_scan) says,
            shape = frame_shape(doc["data_keys"][keys[0]])  # or, of frames of no declared size, the derived stream
            self._shape = shape if all(shape) else None
        return doc

    def stream_resource(self, doc: Any) -> Any:
        here = remapped(doc, self.o.root_map)  # the document itself passes on unchanged
        if self._raw_directory is None:
            self._raw_directory = stream_resource_directory(here)
        key = doc.get("data_key")  # a fly scan's angles, or what its frames are, in a file
        role_keys = {r.key.name for r in self._frame_roles.values() if r.in_file and r.key is not None}
        readers = self._angle_readers if key == self._axis else self._role_readers if key in role_keys else None
        if key is not None and readers is not None:
            try:
                readers[doc["uid"]] = reader_for(here)
            except (ValueError, KeyError) as exc:
                self._note(f"StreamResource {doc.get('uid')} of {key!r}: {exc}; not read")
        if doc.get("data_key") in self._image_key.values():
            try:
                self._readers[doc["uid"]] = (doc["data_key"], reader_for(here))
            except (ValueError, KeyError) as exc:
                self._note(f"StreamResource {doc.get('uid')}: {exc}; its frames are not reconstructed")
        return doc

    def stream_datum(self, doc: Any) -> Any:
        for readers, rows in ((self._angle_readers, self._angle_rows), (self._role_readers, self._role_rows)):
            values = readers.get(doc["stream_resource"])
            if values is None:
                continue
            if self._names.get(doc["descriptor"]) == "primary":  # read on the worker thread (_read_from_files)
                start, stop = doc["indices"]["start"], doc["indices"]["stop"]
                for i, seq in zip(range(start, stop), range(doc["seq_nums"]["start"], doc["seq_nums"]["stop"]),
                                  strict=True):
                    rows[seq] = (values, i)
                self._update_now_and_then()
            return doc
        found = self._readers.get(doc["stream_resource"])
        name = self._names.get(doc["descriptor"])
        if found is None or name is None or name not in self._frames:
            return doc
        _, reader = found
        start, stop = doc["indices"]["start"], doc["indices"]["stop"]
        for i, seq in zip(range(start, stop), range(doc["seq_nums"]["start"], doc["seq_nums"]["stop"]), strict=True):
            self._frames[name].located[seq] = (reader, i)
        if name == "primary":  # a fly scan's frames may be all that comes of it
            self._update_now_and_then()
        return doc

    def event_page(self, doc: Any) -> Any:
        name = self._names.get(doc["descriptor"])
        if name is None:
            return doc
        data = doc["data"]
        if name == "primary":
            roles = self._frame_roles[doc["descriptor"]].of_page(data, len(doc["seq_num"]))
            self._seq_roles.update((seq, role) for seq, role in zip(doc["seq_num"], roles, strict=True) if role)
            if self._axis is not None and self._axis in data:  # the angles of its projections
                self._angles.update((seq, float(angle) * self._degrees_per_unit) for seq, angle, role
                                    in zip(doc["seq_num"], data[self._axis], roles, strict=True) if role is None)
        if name == "denoised":
            key = self._image_key.get(name, "")
            field = key[: -len("_denoised")]
            sources = data.get(f"{field}_source_seq_num", [])
            flags = data.get(f"{field}_qc_flags", [""] * len(sources))
            errors = data.get(f"{field}_qc_error", [""] * len(sources))
            for seq, src, flag, err in zip(doc["seq_num"], sources, flags, errors, strict=True):
                self._source_seq[seq] = int(src)
                if err or UNUSABLE & set(str(flag).split(",")):
                    self._unusable.add(int(src))
        frame_key = self._image_key.get(name)
        if frame_key is not None and frame_key in data:  # inline frames
            for seq, frame in zip(doc["seq_num"], data[frame_key], strict=True):
                if self._raw_dtype is None and not name.endswith("denoised"):  # a descriptor without dtype_numpy
                    self._raw_dtype = np.asarray(frame).dtype
                self._frames[name].add_inline(seq, frame, self._wanted(), self._raw_dtype)
        if name == "primary":
            self._update_now_and_then()
        return doc

    def _take_angle_units(self, doc: Any) -> None:
        """Degrees per unit of the angles, by the units ``primary``'s descriptor gives them (degrees where it gives
        none; units it cannot convert are noted, once, and taken as degrees)."""
        keys = doc.get("data_keys") or {}
        # angle_field where primary has it, else the plan's motor: one setting for a beamline's fly and step scans
        self._axis = next((k for k in (self.o.angle_field, self._motor) if k is not None and k in keys), self._axis)
        key = keys.get(self._axis or "")
        if key is None:
            return
        units = key.get("units")
        per_unit = recon.degrees_per_unit(units)
        if per_unit is None and units and not self._units_noted:
            self._units_noted = True
            self._note(f"the angles {self._axis!r} are in {units!r}, which is not an angle's unit: taken as degrees")
        self._degrees_per_unit = per_unit or 1.0

    def _update_now_and_then(self) -> None:
        """Reconstruct while the scan runs, every ``every`` projections with an angle (not at the last one: the
        final reconstruction follows it)."""
        seen = self._angles_seen()
        if self.o.every and seen - self._last_update >= self.o.every and seen < self._expected():
            self._submit(final=False)

    def _angles_seen(self) -> int:
        """Frames of ``primary`` whose angle came so far: in their events or, in a fly scan, announced in a file;
        without either, its frames, where the start document has their nominal angles."""
        seen = len(self._angles) + len(self._angle_rows)
        if not seen and self._nominal and "primary" in self._frames:  # one a frame
            return len(self._frames["primary"])
        return seen

    def stop(self, doc: Any) -> Any:
        if self._axis is None:
            self._note("not a tomography scan (the start document names no rotation axis in 'motors', and "
                       "TomoReconstruction(angle_field=...) names none); nothing reconstructed")
            return doc
        if self._pending is not None:
            self._collect(wait=self.o.timeout)
        self._submit(final=True)
        self._collect(wait=self.o.timeout)
        if not self._counters:
            return doc
        out = dict(doc, num_events=dict(doc.get("num_events") or {}))
        out["num_events"].update({k: v - 1 for k, v in self._counters.items()})  # counters start at 1
        return out

    # -- reconstruction (worker thread) --------------------------------------------------------

    def _submit(self, final: bool) -> None:
        if self._pending is not None and not self._pending.done():
            return  # one at a time: an update waits for the one before it
        self._collect(wait=0)
        self._last_update = self._angles_seen()
        try:
            self._pending = self._pool.submit(self._reconstruct, final)
        except RuntimeError:  # the interpreter is exiting (a scan, then exit): finish on this thread instead
            if not final:
                return
            self._pending = Future()
            try:
                self._pending.set_result(self._reconstruct(final))
            except Exception as exc:
                self._pending.set_exception(exc)

    def _before(self) -> None:
        if self._pending is not None and self._pending.done():
            self._collect(wait=0)

    def _collect(self, wait: float) -> None:
        future, self._pending = self._pending, None
        if future is None:
            return
        try:
            result = future.result(timeout=wait)
        except TimeoutError:
            self._note(f"the reconstruction took longer than {wait} s; the run goes on without it")
            return
        except Exception as exc:  # a library failure must not stop the scan
            log.exception("reconstruction failed")
            self._note(f"reconstruction failed: {type(exc).__name__}: {exc}")
            return
        if isinstance(result, str):  # the final reconstruction could make no slice: why
            self._note(result)
        elif result is not None:
            self._emit(result)

    def _expected(self) -> float:
        """Projections the plan announced (the start document's ``num_points``), else infinity."""
        n = self._start.get("num_points") if self._start is not None else None
        return float(n) if isinstance(n, int) and n > 0 else math.inf

    def _rows(self) -> list[int]:
        """The rows to reconstruct: the given ones that the detector has (see :meth:`_rows_missing`)."""
        assert self._shape is not None
        h = self._shape[0]
        if self.o.rows is None:
            return sorted({h // 4, h // 2, (3 * h) // 4})
        return sorted({r for r in self.o.rows if r < h})

    def _rows_missing(self) -> str:
        """Why some of the given rows are not reconstructed (empty if all are)."""
        assert self._shape is not None
        h = self._shape[0]
        beyond = sorted({r for r in self.o.rows or () if r >= h})
        if not beyond:
            return ""
        return f"rows {beyond} are beyond the detector's {h} rows (0..{h - 1}): not reconstructed"

    def _context_rows(self, r: int) -> list[int]:
        """Row ``r`` and the rows around it that the slice model reads as its context (as many as its
        depth), mirrored at the detector's edges by the rule of training."""
        assert self._shape is not None
        depth = int(getattr(self.o.slice_denoiser, "depth", 3)) if self.o.slice_denoiser is not None else 1
        return context_indices(np.zeros(self._shape[0], np.int32), r, depth)

    def _wanted(self) -> list[int]:
        """The rows to read: each row to reconstruct and its neighbours (the slice model's context)."""
        return sorted({n for r in self._rows() for n in self._context_rows(r)})

    def _reconstruct(self, final: bool) -> dict[str, Any] | str | None:
        """Read the rows, correct, reconstruct and denoise (worker thread). ``None`` if nothing to do yet;
        for the final one, why no slice could be made."""
        if self._shape is None:
            return None
        notes: list[str] = []
        rows, wanted, missing = self._rows(), self._wanted(), self._rows_missing()
        if missing and final:
            notes.append(missing)
        if not rows:
            return "; ".join(notes) if final else None
        source = "denoised" if self.o.source == "denoised" and "denoised" in self._frames else "primary"
        if source != self.o.source and final:
            notes.append("no denoised stream: reconstructed from the raw frames")
        frames = self._frames.get(source)
        if frames is None or len(frames) < 3:
            return (f"projections: {0 if frames is None else len(frames)}, at least 3 needed: "
                    "nothing reconstructed") if final else None
        # the last usable frame of each angle
        by_angle: dict[float, int] = {}
        roles = self._primary_roles(notes if final else [])
        projection_angles = self._projection_angles(roles, notes if final else [])
        for seq in sorted(frames.seqs):
            raw_seq = self._source_seq.get(seq, seq) if source == "denoised" else seq
            if raw_seq in projection_angles and raw_seq not in self._unusable:
                by_angle[projection_angles[raw_seq]] = seq
        if len(by_angle) < 3 and not final:
            return None
        if not projection_angles:
            return "; ".join([*notes, f"no projection came with its angle {self._axis!r} (in its event, or in a file "
                              "announced for it): nothing reconstructed (TomoReconstruction(angle_field=...) names "
                              "the field that holds it)"])
        if len(by_angle) < 3:  # no slice can be made of fewer
            return "; ".join([*notes, f"projection angles: {len(by_angle)} usable in {len(frames)} frames (frames "
                              "flagged unusable are left out, a repeated angle counts once), at least 3 needed: "
                              "nothing reconstructed"])
        angles = np.array(sorted(by_angle))
        seqs = [by_angle[a] for a in angles]
        sino = frames.rows(seqs, wanted, self._raw_dtype)  # (angles, rows, W), NaN where masked
        flat_name = "flat_denoised" if source == "denoised" and self._of_role("flat_denoised", roles)[1] else "flat"
        flat, dark = self._mean_rows(flat_name, wanted, roles), self._mean_rows("dark", wanted, roles)
        if flat is None:
            notes.append("no flat frames: flat field taken as each column's brightest value")
        if dark is None:
            notes.append("no dark frames: dark taken as 0")
        masked = np.isnan(sino[:, [wanted.index(r) for r in rows]]).any(axis=0).sum()
        if masked:
            notes.append(f"{masked} detector pixels of the reconstructed rows hold no data (module gaps, flagged "
                         "pixels): filled from their neighbours along the row")
        # dead and hot pixels, judged on the raw flats and darks (the denoised ones have them despiked)
        raw_flat = flat if flat_name == "flat" else self._mean_rows("flat", wanted, roles)
        bad = recon.defective_pixels(raw_flat, dark)
        if bad is not None:
            sino = np.where(bad[None], np.float32(np.nan), sino)
            count = int(bad[[wanted.index(r) for r in rows]].sum())
            if count:
                notes.append(f"{count} detector pixels of the reconstructed rows are dead or hot in the flats and "
                             "darks: filled from their neighbours along the row")
        angle_problem = recon.check_angles(angles)
        if angle_problem and final:  # while the scan runs, a partial rotation is expected
            notes.append(angle_problem)
        # a wide detector's columns binned (TomoReconstruction(binning=)): centres are searched and slices made in
        # binned columns; the centres recorded and noted are detector pixels
        b = self.o.binning or recon.auto_binning(self._shape[1])
        if b > 1 and final:
            notes.append(f"columns binned by {b} (the detector's {self._shape[1]}): slices of "
                         f"{self._shape[1] // b} px across; TomoReconstruction(binning=1) makes them at full width")
        transmission = _corrected_rows(sino, wanted, flat, dark, b)
        # with real flats only: without them every column's brightest value is its open beam
        wider_than_view = flat is not None and recon.wider_than_view(list(transmission.values()))
        wider = final and wider_than_view
        # a full turn, or a scan planned as one still turning: the centre may lie anywhere on the detector (an
        # offset axis), and a sample wider than the view is made over the doubled field of view
        turn = recon.full_turn(angles) or recon.full_turn(np.asarray(self._nominal))
        middle, seeing = self._center_rows(rows, transmission)
        found = self._found_center
        if not angle_problem and (found != found or self._found_at != len(angles)):
            raw = self._raw_transmission(seqs, wanted, raw_flat, dark, bad, b) if source == "denoised" else None
            rows_for_center = transmission if raw is None else raw
            # the other rows that see the sample: the 180-degree seam (a wider sample) adds them up
            found, self._found_how = recon.search_center(
                rows_for_center[middle], angles, other_rows=[rows_for_center[r] for r in seeing if r != middle],
                turn=turn)
            found = b * found + (b - 1) / 2  # binned column -> detector pixel (NaN stays NaN)
            self._found_center, self._found_at = found, len(angles)
        center = self.o.center if self.o.center is not None else found
        if not final and turn and wider_than_view and center != center:
            return None  # a turn about an axis that may be offset: no slice before its centre (and width) is known
        width = transmission[middle].shape[1]
        extend = recon.offset_axis(turn, (center - (b - 1) / 2) / b, width, wider_than_view)
        if extend and final:
            notes.append(f"a full turn about an axis {abs(center - (self._shape[1] - 1) / 2):.1f} px off the "
                         "detector's middle (an offset axis, half acquisition): slices over the doubled field of "
                         "view")
        # the doubled view of an offset axis holds the whole sample unless the detector's far edge never sees past it
        if wider and (not extend or recon.wider_than_view(
                list(transmission.values()), edge="left" if center > (self._shape[1] - 1) / 2 else "right")):
            notes.extend(self._model_for_the_sample())
        if center != center:  # less than 180 degrees (yet): the centre-of-mass estimate, else the detector centre
            center, how = recon.fallback_center(transmission[middle], angles)
            center = b * center + (b - 1) / 2
            if final:
                why = angle_problem or f"{self._found_how} found no minimum inside its search windows"
                notes.append(f"rotation centre not found ({why}); using {how} {center:.2f}")
        elif wider and self.o.center is None and self._found_how in (SEAM, TURN):
            notes.append(f"rotation centre {found:.2f} px, found where the projections 180 degrees apart agree"
                         f"{' over the full turn' if self._found_how == TURN else ''} (the sample is wider than the "
                         "field of view, which misleads Vo's method)")
        elif wider and self.o.center is None:
            # the seam not in the scan (or no minimum there), and Vo's method on rows that never show the sample's
            # edges: off by up to 21 px on simulated ones 2.5 fields of view across, even on rows extended by their
            # ends (python benchmarks/center_wider.py)
            notes.append(f"the rotation centre found ({found:.2f} px, by {self._found_how}) is uncertain for a sample "
                         "wider than the field of view; give TomoReconstruction(center=...) where it is known")
        elif self.o.center is not None and found == found and abs(found - self.o.center) > CENTER_TOLERANCE:
            # the seam is within 3.3 px on 15 rows of 100 photons/pixel up to 3.5 fields of view; Vo's method on the
            # extended rows of such a sample is off by up to 21 px (python benchmarks/center_wider.py)
            doubt = (", which is uncertain for a sample wider than the field of view"
                     if wider and self._found_how not in (SEAM, TURN) else ": probably wrong")
            notes.append(f"the given rotation centre {self.o.center:g} is {abs(found - self.o.center):.1f} px from "
                         f"the one found ({found:.2f}){doubt}")
        # the final reconstruction is what the stop (and wait()) waits for: it takes both cores
        slices = recon.reconstruct_rows({r: transmission[r] for r in wanted}, angles, (center - (b - 1) / 2) / b,
                                        remove_stripes=self.o.remove_stripes, threads=2 if final else 1,
                                        extend=extend)
        out_fbp, out_den, stripes = [], [], []
        for r in rows:
            out_fbp.append(slices[r].slice)
            stripes.append(slices[r].stripe_raw)
            if self.o.slice_denoiser is not None:
                context = np.stack([slices[n].slice for n in self._context_rows(r)])
                out_den.append(self.o.slice_denoiser.denoise_context(context))
            else:
                out_den.append(slices[r].slice)
        return {"rows": rows, "fbp": out_fbp, "slice": out_den, "center": float(center), "found": found, "binning": b,
                "projections": len(angles), "stripe": stripes, "note": "; ".join(notes), "final": final,
                "source": source}

    def _model_for_the_sample(self) -> list[str]:
        """A note, for a sample wider than the field of view, where the slice model was not trained on such
        slices (worker thread): they fill the reconstruction circle and rise towards its rim, where such a model
        paints blobs (docs/models.md, "tomogan-slice-local")."""
        card = getattr(self.o.slice_denoiser, "card", None)
        # a model fine-tuned on a scan (bluesky-tomogan finetune) learnt that scan's slices, truncated or not
        if card is None or card.domain != "slice" or card.trained_wider_than_view or "finetune" in card.source:
            return []
        return [f"the sample is wider than the field of view (no open beam at the rows' edges): the slice model "
                f"{card.name} was not trained on such slices, tomogan-slice-local was"]

    def _primary_roles(self, notes: list[str]) -> dict[int, str]:
        """What the frames of ``primary`` that are no projections are, by seq_num (worker thread): as their events
        said, or as the file a fly scan wrote it to says, read here."""
        roles = dict(self._seq_roles)  # a copy made at once: the callback thread adds to it meanwhile
        in_file = [r for r in self._frame_roles.values() if r.in_file and r.key is not None]
        if in_file:  # (a descriptor re-emitted: the latest says how to read them)
            primary = in_file[-1]
            self._read_from_files(self._role_rows, self._roles_read, repr(primary.key.name if primary.key else ""),
                                  notes)
            said = ((s, primary.of_value(v)) for s, v in list(self._roles_read.items()))
            roles.update((s, r) for s, r in said if r is not None)
        return roles

    def _projection_angles(self, roles: Mapping[int, str], notes: list[str]) -> dict[int, float]:
        """The angle of each projection (no seq_num of ``roles``) by its ``primary`` seq_num, in degrees (worker
        thread): those of their events, and those a fly scan wrote to a file, read here."""
        self._read_from_files(self._angle_rows, self._angles_read, f"the angles {self._axis!r}", notes)
        angles = {s: float(a) * self._degrees_per_unit for s, a in self._angles_read.items() if s not in roles}
        angles = {s: a for s, a in angles.items() if math.isfinite(a)}
        angles.update(self._angles)
        if not angles and not self._angle_rows:  # no angle recorded with any frame: the plan's, if it said them
            return self._nominal_angles(roles, notes)
        return angles

    def _nominal_angles(self, roles: Mapping[int, str], notes: list[str]) -> dict[int, float]:
        """A fly scan without position capture: the plan's nominal angle of each projection of ``primary``, in the
        order they were taken (worker thread)."""
        nominal, frames = self._nominal, self._frames.get("primary")
        if not nominal or frames is None:
            return {}
        seqs = sorted(s for s in frames.seqs if s not in roles)
        notes.append(f"no projection came with its angle {self._axis!r}: each took the plan's nominal angle (the "
                     "start document's 'angles', in order)"
                     + ("" if len(seqs) == len(nominal) else f"; {len(seqs)} projections for {len(nominal)} angles"
                        + (": those beyond the last angle left out" if len(seqs) > len(nominal) else "")))
        return dict(zip(seqs, nominal, strict=False))

    @staticmethod
    def _read_from_files(located: Mapping[int, tuple[FrameReader, int]], into: dict[int, Any], what: str,
                         notes: list[str]) -> None:
        """Read into ``into`` the values of the seq_nums ``located`` in files that it lacks (worker thread; one read
        per run of rows that lie one after the other); rows that cannot be read are added to ``notes``."""
        located = dict(located)  # a copy made at once: the callback thread adds to it meanwhile
        unread = sorted(s for s in located if s not in into)
        failed: list[str] = []
        for start, stop in _runs(unread, located):
            reader, first = located[unread[start]]
            try:
                values = scalar_rows(reader, first, first + stop - start)
            except Exception as exc:  # a missing or short file: those values stay unknown, the rest count
                failed.append(f"{stop - start} from row {first} ({type(exc).__name__}: {exc})")
                continue
            into.update(zip(unread[start:stop], values, strict=True))
        if failed:
            notes.append(f"{what} not read: {'; '.join(failed[:3])}"
                         + (f" and {len(failed) - 3} more" if len(failed) > 3 else ""))

    @staticmethod
    def _center_rows(rows: Sequence[int], transmission: dict[int, np.ndarray]) -> tuple[int, list[int]]:
        """The row the rotation centre is searched on, and every row of ``transmission`` that sees the sample
        (at least a tenth of the most that one sees). The first is the middle one of ``rows``, unless it sees
        little of the sample (an edge row above or below it), then the one that sees the most."""
        seen = {r: float(np.sum(-np.log(np.clip(t, 1e-6, 1.0)))) for r, t in transmission.items()}
        most = max(seen.values())
        middle = rows[len(rows) // 2]
        if seen[middle] < 0.1 * most:
            middle = max(rows, key=seen.__getitem__)
        return middle, [r for r, amount in seen.items() if amount >= 0.1 * most]

    def _of_role(self, name: str, roles: Mapping[int, str]) -> tuple[_Frames | None, list[int]]:
        """The frames of ``name`` (``dark``, ``flat``, ``flat_denoised``) and their seq_nums: its own stream's,
        else those of ``primary`` (``denoised``) that ``roles`` (:meth:`_primary_roles`) says are darks or flats."""
        frames = self._frames.get(name)
        if frames is not None and len(frames):
            return frames, sorted(frames.seqs)
        role = name.removesuffix("_denoised")
        if name == role:
            mixed, seqs = self._frames.get("primary"), [s for s, r in roles.items() if r == role]
        else:
            mixed = self._frames.get("denoised")
            seqs = [s for s, raw in list(self._source_seq.items()) if roles.get(raw) == role]
        if mixed is None:
            return None, []
        known = mixed.seqs
        return mixed, sorted(s for s in seqs if s in known)

    def _raw_transmission(self, seqs: Sequence[int], wanted: Sequence[int], flat: np.ndarray | None,
                          dark: np.ndarray | None, bad: np.ndarray | None,
                          binning: int = 1) -> dict[int, np.ndarray] | None:
        """The raw frames' rows of the denoised projections ``seqs``, corrected with the raw ``flat`` and ``dark``
        (the mean rows :meth:`_reconstruct` read) and with the ``bad`` pixels left out, columns binned by
        ``binning``; None where ``primary`` does not hold every one of them.

        The rotation centre is found on these: a centre is the scan's geometry, and a denoiser changes each frame a
        little, most the first and last ones of a scan, whose neighbours on one side are stand-ins, and those are
        the very ones the 180-degree seam compares (``bluesky-tomogan demo --sample-width 1.8 --size 256 --angles
        90``, axis at 127.5 px: 127.58 px from the raw frames, 126.53 from the denoised ones; the plain demo,
        Vo's method, axis at 255.5 px: 255.31 and 256.21).
        """
        primary = self._frames.get("primary")
        raw_seqs = [self._source_seq.get(s, s) for s in seqs]
        if primary is None or not set(raw_seqs) <= primary.seqs:
            return None
        sino = primary.rows(raw_seqs, wanted, self._raw_dtype)
        if bad is not None:
            sino = np.where(bad[None], np.float32(np.nan), sino)
        return _corrected_rows(sino, wanted, flat, dark, binning)

    def _mean_rows(self, name: str, rows: Sequence[int], roles: Mapping[int, str]) -> np.ndarray | None:
        frames, seqs = self._of_role(name, roles)
        if frames is None or not seqs:
            return None
        stack = frames.rows(seqs, rows, self._raw_dtype)
        with warnings.catch_warnings():  # a pixel masked in every frame stays NaN (filled in the transmission)
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(stack, axis=0)

    # -- emitting (callback thread) ---------------------------------------------------------

    def _emit(self, r: dict[str, Any]) -> None:
        n = len(r["rows"])
        w = r["slice"][0].shape
        if self._bundle is not None and w != self._slice_shape:
            # the stream's slices keep the shape of its first ones: an update emitted before an offset axis was
            # known (an axis given, a full turn reached) was as wide as the detector; both are centred on the axis
            if r["final"] and max(abs(a - b) for a, b in zip(w, self._slice_shape, strict=True)) > 2:
                r["note"] = "; ".join(filter(None, [r["note"], (
                    f"slices of {w[0]} x {w[1]} px cut or padded about the axis to the {self._slice_shape[0]} x "
                    f"{self._slice_shape[1]} px of this stream's first ones (TomoReconstruction(every=0), or "
                    "center= for an offset axis, keeps them whole)")]))
            r = dict(r, slice=[recon.centered(a, self._slice_shape) for a in r["slice"]],
                     fbp=[recon.centered(a, self._slice_shape) for a in r["fbp"]])
            w = self._slice_shape
        if self._bundle is None:
            self._slice_shape = w
            data_keys: dict[str, Any] = {
                key: {"source": SOURCE, "dtype": "array", "shape": list(w), "dtype_numpy": "<f4",
                      "external": "STREAM:", "object_name": "reconstruction"} for key in ("slice", "slice_fbp")}
            for key, dtype, units in (("row", "integer", "pixel"), ("center", "number", "pixel"),
                                      ("projections", "integer", ""), ("stripe_metric", "number", ""),
                                      ("final", "boolean", ""), ("note", "string", "")):
                data_keys[key] = {"source": SOURCE, "dtype": dtype, "shape": [], "units": units,
                                  "object_name": "reconstruction"}
            config = {"algorithm": "algotom fbp_reconstruction (hann); centre: find_center_vo, or where the "
                                   "sample is wider than the field of view the 180-degree seam "
                                   "(bluesky_tomogan.center; centre-of-mass fit before 180 degrees); a full turn "
                                   "about an offset axis over the doubled field of view "
                                   "(bluesky_tomogan.reconstruction.extended_sinogram)",
                      "stripe_removal": "algotom remove_stripe_based_sorting" if self.o.remove_stripes else "none",
                      "source": r["source"], "center_given": "" if self.o.center is None else str(self.o.center),
                      "binning": str(r["binning"])}
            if self.o.slice_denoiser is not None:
                config |= {f"slice_{k}": str(v) for k, v in self.o.slice_denoiser.provenance().items()}
            now = time.time()
            self._bundle = event_model.compose_descriptor(
                start=self._start, streams=self._streams, event_counters=self._counters, name=STREAM,
                data_keys=data_keys, object_keys={"reconstruction": sorted(data_keys)},
                configuration={"reconstruction": {
                    "data": config, "timestamps": dict.fromkeys(config, now),
                    "data_keys": {k: {"source": SOURCE, "dtype": "string", "shape": []} for k in config}}},
            )
            self._publish("descriptor", self._bundle.descriptor_doc)
            try:
                self._writer = DerivedFrameWriter.for_run(self.o.directory, self._raw_directory, self._start)
                for key in ("slice", "slice_fbp"):
                    self._publish("stream_resource", self._writer.add(f"{STREAM}-{key}", key, w))
                if self._writer.moved:
                    self._note(self._writer.moved.replace("derived frames", "slices"))
            except (OutputPathError, OSError) as exc:
                self._note(f"slices cannot be written ({exc}); the stream records the rest")
                self._writer = None
        indices = {}
        if self._writer is not None:
            for key, arrays in (("slice", r["slice"]), ("slice_fbp", r["fbp"])):
                indices[key] = self._writer.write(f"{STREAM}-{key}", np.stack(arrays))
        data = {"row": r["rows"], "center": [r["center"]] * n, "projections": [r["projections"]] * n,
                "stripe_metric": r["stripe"], "final": [r["final"]] * n, "note": [r["note"]] * n}
        now = time.time()
        page = self._bundle.compose_event_page(data=data, timestamps={k: [now] * n for k in data})
        self._publish("event_page", page)
        if r["note"] and r["final"]:
            self._note(r["note"])
        first = int(page["seq_num"][0])
        for key, (start, stop) in indices.items():
            assert self._writer is not None
            self._publish("stream_datum", self._writer.datum(f"{STREAM}-{key}", start, stop, first,
                                                             self._bundle.descriptor_doc))

    def _release(self) -> None:
        if self.summary.finished:
            return
        super()._release()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._writer is not None:
            self._writer.close()
        for _, reader in self._readers.values():
            reader.close()
        for reader in [*self._angle_readers.values(), *self._role_readers.values()]:
            reader.close()
        self._readers.clear()
        self._angle_readers.clear()
        self._role_readers.clear()
