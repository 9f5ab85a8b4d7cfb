"""``TomoGANCallback``: denoise detector frames during a run into a derived stream of that run.

A thin facade, shaped like bluesky's ``TiledWriter``: it holds the options, the
subscribers and an :class:`event_model.RunRouter` that makes one
:class:`~bluesky_tomogan.callbacks.run.RunDenoiser` per run. Each run object
owns everything of its run (queue, worker, readers, writer, derived streams),
so runs never share state and a late worker can only touch its own run.

It sits between the RunEngine and storage: every document passes through to
its subscribers unchanged (the stop document gains ``num_events`` for the
derived streams), and each stream with 2-D image fields gets a derived stream
(``denoised`` for ``primary``, ``<stream>_denoised`` otherwise) in the same
run, composed with event-model.

Derived frames are never put inside documents for storage: they are written to
HDF5 and described by StreamResource/StreamDatum documents, in ``directory``
if given, else next to the raw frames' own files (if that directory can be
written), else in the per-user data directory
(:func:`~bluesky_tomogan.callbacks.frame_writer.default_directory`).
``inline=True`` puts them in the events instead, for live displays only; it
refuses storage consumers.

Frames arrive three ways, as detectors deliver them: inline arrays in
``event``/``event_page``; legacy ``Resource``/``Datum`` references, loaded with
:class:`event_model.Filler` and a handler registry; and ``StreamResource``/
``StreamDatum`` (ophyd-async style, ``external: "STREAM:"``). External frames
are loaded on the worker thread, so the RunEngine's thread never waits for disk.
A field of N frames per event (``[N, H, W]``) gets a derived row per frame.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..handlers import default_handler_registry
from ..hdf5_frames import compression_filter
from ..inference.denoiser import Denoiser
from ..inference.ratios import RatioDenoisers
from ..qc.feedback import QCFeedback
from ..qc.policy import QCPolicy
from .frame_writer import stored_dtype
from .passthrough import RunRouterFacade
from .queue import POLICIES, Policy
from .run import RunDenoiser, RunOptions, image_fields

__all__ = ["TomoGANCallback", "image_fields", "tomogan_factory", "SCAN_STREAMS"]

log = logging.getLogger(__name__)
#: The streams of a tomography scan that the demo, the profile, ``serve`` and ``reprocess`` denoise:
#: the projections and the flats (a flat-field correction of denoised projections wants denoised
#: flats: docs/reconstruction.md); darks carry no image worth denoising.
SCAN_STREAMS: tuple[str, ...] = ("primary", "flat")
Subscriber = Callable[[str, Any], Any]


class TomoGANCallback(RunRouterFacade):
    """Denoise every 2-D detector frame of a run into a derived stream of the same run.

    Parameters
    ----------
    denoiser : Denoiser, RatioDenoisers, or mapping of field name to either
        One denoiser for every image field, or one per field (projections and
        reconstructed slices need different models). A
        :class:`~bluesky_tomogan.inference.ratios.RatioDenoisers` (every pruning ratio of an
        All-in-One model, :func:`~bluesky_tomogan.inference.ratios.load_ratios`) runs its
        current ratio, or with ``policy="adaptive"`` the ratio the queue calls for. An object of
        your own works too: ``denoise_context(context)``, ``provenance()`` and ``depth``, the
        number of adjacent frames in its context (3 if it has none); a ``denoise_context`` that
        takes ``frame_keys`` is given them (a name for each frame, as
        :meth:`~bluesky_tomogan.inference.denoiser.Denoiser.denoise_context` takes).
    fields : str or list of str, optional
        Image fields to denoise (default: every 2-D field, or the mapping's keys); one
        name is one field.
    streams : str or list of str, optional
        Streams whose frames are denoised (default: every stream); one name is one stream.
        A tomography scan usually wants ``["primary"]``, leaving its ``dark`` and ``flat`` alone.
    policy : {"block", "drop-oldest", "latest-only", "adaptive"}
        What to do when ``maxsize`` frames are waiting (see :mod:`.queue`).
        Every dropped frame keeps its row in the derived stream, with the reason.
        ``adaptive`` needs a ``RatioDenoisers`` of two or more ratios for every field:
        when ``high_water`` frames wait (beyond the latest batch of frames in a file that
        came at once: a fly scan's StreamDatum), the next frames are denoised at a lighter
        pruning ratio, and at a heavier one again once the queue has drained to
        ``low_water``; the scan is never blocked (a full queue drops its oldest frame,
        which happens only if the lightest ratio cannot keep up). After the lightest
        ratio come the ratios of the ``RatioDenoisers``' fallback model, if it has one
        (``load_ratios(..., fallback=...)``). The network that denoised each frame is
        the ``<field>_model`` column, its pruning ratio ``<field>_ratio`` (percent of
        MACs removed).
    maxsize : int
        Queue bound: frames waiting; under ``drop-oldest`` and ``adaptive``, besides a batch of frames
        in a file announced at once (a StreamDatum, a page of datum ids), which is queued whole
        (references, not pixels).
    flush_timeout : float
        Seconds ``stop`` waits for the worker before passing the stop document
        on; frames not denoised by then get rows that say so.
    block_timeout : float
        With ``policy="block"``: seconds to wait for room for one frame. If none
        comes (a hung runtime), a breaker opens: frames are dropped (recorded)
        without waiting until the worker has emptied the queue.
    directory : path-like, optional
        Where derived frames are written as HDF5 (``<directory>/<run uid>/``).
        Default: the directory of the raw frames' files, or
        :func:`~bluesky_tomogan.callbacks.frame_writer.default_directory` when
        the raw frames travel inside the events or their directory cannot be written.
    inline : bool
        Put the derived frames inside the event documents instead of files: for
        live displays only. Storage consumers are refused, since they cannot
        store 2-D arrays from events.
    handler_registry : dict, optional
        Spec -> handler class for legacy ``Resource``/``Datum`` frames, as for
        :class:`event_model.Filler` (default:
        :func:`~bluesky_tomogan.handlers.default_handler_registry`, every handler
        that installed packages announce as ``databroker.handlers`` entry points,
        such as ophyd's ``NPY_SEQ`` or ``area-detector-handlers``' ``AD_HDF5`` and
        ``AD_TIFF``, and the simulated detector's ``"hdf5"``). A frame whose spec
        has no handler gets a row flagged unreadable that names the spec.
    root_map : dict, optional
        Where this machine sees what the detector wrote elsewhere: ``Resource`` roots remapped
        when reading (``event_model.Filler``'s ``root_map``), and the leading part of a
        ``StreamResource``'s file path (``{"/ioc/data": "/mnt/beamline"}``; the longest match).
        The raw documents pass on unchanged.
    qc : QCPolicy or path, optional
        Thresholds and actions of the QC flags (a :class:`~bluesky_tomogan.qc.QCPolicy`
        or a TOML file for :meth:`~bluesky_tomogan.qc.QCPolicy.from_file`); default
        :class:`~bluesky_tomogan.qc.QCPolicy` defaults. Every frame's metrics and
        flags are columns of the derived stream whatever the policy says.
    feedback : QCFeedback, optional
        Acts on the flags: a QC monitor for suspenders, the RunEngine for
        ``pause``/``abort``, recommendations for adaptive plans. Without it,
        ``warn`` still logs and the rest is only recorded. Its policy is used
        when ``qc`` is not given.
    high_water, low_water : int, optional
        Backlogs of ``policy="adaptive"`` (default ``maxsize // 2`` and ``maxsize // 8``): frames waiting
        beyond the latest batch (:meth:`~bluesky_tomogan.callbacks.queue.FrameQueue.backlog`).
    frame_dtype : str
        How derived frames are stored: ``"float32"`` (as denoised; the default), ``"source"``
        (the raw field's integer type, from its data key's ``dtype_numpy``; float32 for float
        frames or a field that declares none), or an integer type (``"uint16"``, ...). Integer
        frames are rounded to the nearest count and clipped to the type's range, pixels without
        data (NaN) stored as its largest value. QC measures the float frame. A 16-bit detector's
        frames take half the space of float32 and compress far better (docs/callback.md).
    compression : {None, "lz4", "zstd", "gzip"}
        Lossless compression of each derived frame in its HDF5 file (bit shuffle with LZ4 or
        Zstandard, as Eiger detectors write theirs, read wherever ``hdf5plugin`` is, Tiled
        included; or HDF5's gzip, read by any HDF5 reader, slower). Default: none.
    angle_field : str, optional
        The data key of each frame's rotation angle, in the streams that have it; in the others
        (and by default) the start document's first ``motors`` entry, as bluesky's step plans and
        ``tomo_scan`` write it, so one setting serves a beamline's fly and step scans. In degrees
        unless its ``units`` say ``rad`` or ``mrad``. A fly scan's angles are often another device's
        reading, written to a file beside the frames (a PandA's encoder capture,
        ``panda-inenc-1-val``, ``external: "STREAM:"``): name it here, as for
        :class:`~.reconstruction.TomoReconstruction`; the file is read on the worker thread.
        The angles decide which neighbours a frame's context keeps (those within
        :data:`~bluesky_tomogan.frames.NEIGHBOUR_DEGREES`) and how much sideways shift QC's motion
        check puts down to rotation. Where a run gives none (a fly scan without position capture
        whose start document lists its nominal ``angles`` uses those), neighbours are taken by order.

    Examples
    --------
    >>> cb = TomoGANCallback(load_denoiser())          # doctest: +SKIP
    >>> cb.subscribe(TiledWriter(client))              # doctest: +SKIP
    >>> RE.subscribe(cb)                               # doctest: +SKIP
    """

    def __init__(
        self,
        denoiser: Denoiser | RatioDenoisers | Mapping[str, Denoiser | RatioDenoisers],
        fields: str | list[str] | None = None,
        *,
        streams: str | list[str] | None = None,
        policy: Policy = "block",
        maxsize: int = 16,
        flush_timeout: float = 60.0,
        block_timeout: float = 10.0,
        directory: str | os.PathLike[str] | None = None,
        inline: bool = False,
        handler_registry: Mapping[str, Any] | None = None,
        root_map: Mapping[str, str] | None = None,
        qc: QCPolicy | str | os.PathLike[str] | None = None,
        feedback: QCFeedback | None = None,
        high_water: int | None = None,
        low_water: int | None = None,
        frame_dtype: str = "float32",
        compression: str | None = None,
        angle_field: str | None = None,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown queue policy {policy!r}; choose from {', '.join(POLICIES)}")
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        for name, seconds in (("flush_timeout", flush_timeout), ("block_timeout", block_timeout)):
            if not seconds >= 0:  # NaN too
                raise ValueError(f"{name} must be a number of seconds >= 0, got {seconds}")
        fields, streams = _names("fields", fields), _names("streams", streams)
        stored_dtype(frame_dtype, None)  # each raises ValueError, naming the choices, before any run
        compression_filter(compression)
        if inline and compression is not None:
            raise ValueError("compression applies to the derived frames' files; inline=True writes none")
        if angle_field is not None and (not isinstance(angle_field, str) or not angle_field):
            raise ValueError(f"angle_field must be a data key's name, got {angle_field!r}")
        _check_denoisers(denoiser)
        high = max(1, maxsize // 2) if high_water is None else high_water
        low = min(high - 1, max(0, maxsize // 8)) if low_water is None else low_water
        if not 0 <= low < high <= maxsize:
            raise ValueError(f"need 0 <= low_water < high_water <= maxsize, got {low}, {high}, {maxsize}")
        if policy == "adaptive":
            denoisers = denoiser.values() if isinstance(denoiser, Mapping) else [denoiser]
            if not all(isinstance(d, RatioDenoisers) and len(d.ladder) > 1 for d in denoisers):
                raise ValueError("policy='adaptive' switches pruning ratios: give a RatioDenoisers of two or "
                                 "more ratios for every field (bluesky_tomogan.inference.ratios.load_ratios "
                                 "of an All-in-One model such as 'tomogan-projection-aio')")
        qc_policy = QCPolicy.from_file(qc) if isinstance(qc, (str, os.PathLike)) else qc
        if feedback is None:
            feedback = QCFeedback(qc_policy)
        elif qc_policy is not None and qc_policy != feedback.policy:
            raise ValueError("qc and feedback.policy differ; give the policy to QCFeedback only")
        per_field = dict(denoiser) if isinstance(denoiser, Mapping) else None
        self.options = RunOptions(
            denoisers=per_field,
            default=None if isinstance(denoiser, Mapping) else denoiser,
            fields=fields if fields is not None else (None if per_field is None else list(per_field)),
            streams=None if streams is None else list(streams),
            policy=policy, maxsize=maxsize, flush_timeout=flush_timeout, block_timeout=block_timeout,
            directory=None if directory is None else Path(directory).expanduser().resolve(),
            inline=inline,
            handler_registry=default_handler_registry() if handler_registry is None else dict(handler_registry),
            root_map=dict(root_map or {}),
            feedback=feedback, high_water=high, low_water=low, frame_dtype=frame_dtype, compression=compression,
            angle_field=angle_field,
        )
        super().__init__()

    @property
    def feedback(self) -> QCFeedback:
        """What acts on the QC flags (see :class:`~bluesky_tomogan.qc.QCFeedback`)."""
        return self.options.feedback

    def __repr__(self) -> str:
        o = self.options
        what = (", ".join(f"{f}: {d!r}" for f, d in o.denoisers.items()) if o.denoisers is not None
                else repr(o.default))
        parts = [what, f"streams={o.streams if o.streams is not None else 'all'}"]
        if o.fields is not None:
            parts.append(f"fields={o.fields}")
        parts.append(f"policy={o.policy} maxsize={o.maxsize}")
        parts.append("frames inline" if o.inline else
                     f"frames {o.frame_dtype}" + (f"+{o.compression}" if o.compression else ""))
        if o.angle_field is not None:
            parts.append(f"angle_field={o.angle_field}")
        return f"<TomoGANCallback {' '.join(parts)}>"

    def subscribe(self, func: Subscriber, *, storage: bool | None = None) -> int:
        """As :meth:`RunRouterFacade.subscribe <bluesky_tomogan.callbacks.passthrough.RunRouterFacade.subscribe>`.

        Raises
        ------
        ValueError
            A storage consumer on a callback made with ``inline=True``.
        """
        token = super().subscribe(func, storage=storage)
        if self.options.inline and any(c.func is func for c in self._consumers.storage):
            self._consumers.remove(token)
            raise ValueError(f"{func!r} stores documents, and this callback puts derived frames inside events "
                             "(inline=True), which storage cannot hold; make the callback without inline=True")
        return token

    def _make_run(self, start_doc: Any) -> RunDenoiser:
        return RunDenoiser(self.options, self._consumers, self._turn)

    @property
    def dropped(self) -> int:
        """Frames dropped by the queue policy in the current or most recent run."""
        return self.last_run.dropped if self.last_run else 0


def tomogan_factory(
    denoiser: Denoiser | RatioDenoisers | Mapping[str, Denoiser | RatioDenoisers],
    subscribers: list[Subscriber] | None = None,
    **options: Any,
) -> Callable[[str, Any], tuple[list[TomoGANCallback], list[Any]]]:
    """A factory for an :class:`event_model.RunRouter` of your own: one ``TomoGANCallback`` per run.

    ``TomoGANCallback`` already keeps runs apart; this is for code that
    composes RunRouters itself. ``subscribers`` receive the documents of
    every run; ``options`` go to the callback.

    Examples
    --------
    >>> from event_model import RunRouter                                   # doctest: +SKIP
    >>> RE.subscribe(RunRouter([tomogan_factory(load_denoiser(), [writer])]))  # doctest: +SKIP
    """

    def factory(name: str, start_doc: Any) -> tuple[list[TomoGANCallback], list[Any]]:
        cb = TomoGANCallback(denoiser, **options)
        for sub in subscribers or []:
            cb.subscribe(sub)
        return [cb], []

    return factory


def _check_denoisers(denoiser: Any) -> None:
    """Refuse, before any scan, what cannot denoise: a model's name instead of a loaded denoiser,
    None, a mapping with such values. What the run calls is ``denoise_context`` and ``provenance``
    (a denoiser of the user's own needs only those two, and ``depth``, the number of adjacent frames
    its context holds, where that is not 3)."""
    given = denoiser.items() if isinstance(denoiser, Mapping) else [(None, denoiser)]
    for field_name, den in given:
        if not all(callable(getattr(den, m, None)) for m in ("denoise_context", "provenance")):
            where = "" if field_name is None else f" for field {field_name!r}"
            hint = (f"; load it first: load_denoiser({den!r})" if isinstance(den, (str, os.PathLike))
                    else " (a Denoiser from load_denoiser, a RatioDenoisers from load_ratios, or an object "
                         "with denoise_context(context), provenance() and, unless it reads 3 frames, depth)")
            raise TypeError(f"TomoGANCallback needs a denoiser{where}, got {type(den).__name__} {den!r:.80}{hint}")
        warn_if_domain_is_not(den, "projection", "TomoGANCallback denoises detector frames (projections)")


def warn_if_domain_is_not(denoiser: Any, domain: str, what: str) -> None:
    """Log a warning where ``denoiser``'s model was trained on the other kind of image (its card's
    ``domain``): a slice model on projections, or the other way round, runs, but paints what it learnt
    (a fine-tuned slice model given where its projection model belongs is an easy slip)."""
    try:
        trained_on = denoiser.provenance().get("model_domain")
    except Exception:  # a denoiser of the user's own: it says what it says
        return
    if trained_on is not None and trained_on != domain:
        log.warning("%s, but %r is a %s model (trained on %ss); use a %s model (tomogan-%s, or one "
                    "fine-tuned with --domain %s)", what, denoiser, trained_on, trained_on, domain, domain, domain)


def _names(option: str, names: str | Sequence[str] | None) -> list[str] | None:
    """``streams=``/``fields=`` as a list: one name is one name, not its letters."""
    if names is None:
        return None
    if isinstance(names, str):
        return [names]
    out = list(names)
    if not all(isinstance(n, str) for n in out):
        raise TypeError(f"{option} must be a name or a list of names, got {names!r}")
    return out
