"""Denoise a run already stored in Tiled (``bluesky-tomogan reprocess``).

A scan taken without the callback, or one to denoise again with another model (one
fine-tuned on it, ``bluesky-tomogan finetune``), is replayed from storage: the stored
run's documents (``run.documents()``, bluesky-tiled-plugins) go through a
:class:`~bluesky_tomogan.TomoGANCallback`, as the RunEngine's did during the scan. Raw data
are never changed or copied. The result goes

- ``into="run"`` (default): into the stored run itself, as the live callback would have put
  it: a ``denoised`` stream beside ``primary`` (``denoised_2`` where the run has one already;
  :func:`~bluesky_tomogan.storage.derived_streams` tells them apart), written by the worker's
  :class:`~bluesky_tomogan.serve.DerivedStreamsWriter`, which adds streams to a run another
  writer stored and leaves its documents as they are;
- ``into="new"``: into a new run with its own uids, the same metadata, the raw streams
  referring to the same raw files, only this model's derived streams (the stored run's are
  left out), and ``tomogan_reprocessed_from`` in its start document, so
  ``client.search(Key("start.tomogan_reprocessed_from") == uid)`` finds every reprocessing of a scan.

The server must export runs as documents: :func:`~bluesky_tomogan.storage.local_tiled` does;
another Tiled server needs bluesky-tiled-plugins' exporter in its ``media_types``
(docs/callback.md, "Denoising a stored run afterwards").
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

from .callbacks.derived_stream import made_by_us
from .callbacks.reconstruction import STREAM as RECONSTRUCTION
from .callbacks.tomogan import SCAN_STREAMS
from .errors import TomoGANError
from .qc.policy import QCPolicy, Rule

__all__ = ["ReprocessError", "REPROCESSED_FROM", "as_new_run", "derived_first", "read_run", "replay", "reprocess",
           "stored_documents"]

log = logging.getLogger(__name__)

#: Start-document key of a reprocessed run: the uid of the stored run it was made from.
REPROCESSED_FROM = "tomogan_reprocessed_from"
#: Seconds a replayed frame may wait for room in the queue, and the stop for the worker: offline, no frame is dropped.
OFFLINE_TIMEOUT_S = 3600.0


def replay_qc_policy() -> QCPolicy:
    """The QC policy of a replay: the live defaults, except ``lagging``, which is never raised. A stored
    run is fed as fast as the queue takes it, so a frame's latency is its wait in that queue, not a
    detector outrunning the denoiser; ``latency_s`` is still recorded, for what it is."""
    return QCPolicy({"lagging": Rule(math.inf, "ignore")})


#: The stop document's ``reason`` of a replayed run that had none stored.
_NO_STOP = "the stored run has no stop document"


class ReprocessError(TomoGANError, RuntimeError):
    """A stored run that cannot be replayed (missing, unreadable, a server that does not export
    documents), or a result that could not be written."""


def stored_documents(run: Any, where: str = "") -> list[tuple[str, dict[str, Any]]]:
    """The documents of a run stored in Tiled, as plain (mutable) dicts, in their stored order.

    Raises
    ------
    ReprocessError
        The server does not export runs as documents, or reading them failed.
    """
    where = where or f"run {run.metadata.get('start', {}).get('uid', '?')}"
    try:
        return [(name, doc.to_dict() if hasattr(doc, "to_dict") else dict(doc)) for name, doc in run.documents()]
    except Exception as exc:  # tiled raises transport, HTTP and parsing errors of many types
        # only "406 Not Acceptable" says the format is not served: a server failing to read the
        # run's files answers 500 to the same json-seq request
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status == 406 or (status is None and "406" in str(exc) and "media type" in str(exc)):
            raise ReprocessError(
                f"{where}: the Tiled server does not export runs as documents (application/json-seq); add "
                "bluesky_tiled_plugins.exporters:json_seq_exporter to its media_types for BlueskyRun "
                "(docs/callback.md)") from exc
        raise ReprocessError(f"{where}: cannot read its documents: {type(exc).__name__}: {exc}") from exc


Documents = Sequence[tuple[str, Mapping[str, Any]]]


def _own_derived(documents: Documents) -> tuple[set[str], set[str]]:
    """The uids of a stored run's own derived descriptors (made by this package) and of their stream
    resources (those of data keys no raw descriptor has), and those streams' names."""
    derived = [d for n, d in documents if n == "descriptor" and made_by_us(d)]
    raw_keys = {k for n, d in documents if n == "descriptor" and not made_by_us(d) for k in d.get("data_keys", {})}
    derived_keys = {k for d in derived for k in d.get("data_keys", {})} - raw_keys
    uids = {d["uid"] for d in derived} | {
        d["uid"] for n, d in documents if n == "stream_resource" and d.get("data_key") in derived_keys}
    return uids, {d.get("name", "") for d in derived}


def _is_one_of(name: str, doc: Mapping[str, Any], uids: set[str]) -> bool:
    """Whether ``doc`` is, or belongs to, one of the descriptors or stream resources ``uids``."""
    return doc["uid"] in uids if name in ("descriptor", "stream_resource") else doc.get("descriptor") in uids


def as_new_run(documents: Documents, *,
               extra_start: Mapping[str, Any] | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """The documents of a stored run as those of a new run: every uid new, ``run_start`` and each
    reference to a descriptor or stream resource following it, ``tomogan_reprocessed_from`` (and
    ``extra_start``) in the start document, and the run's own derived streams (descriptors made by
    this package, with their events, stream resources and datums) left out.

    Legacy ``Resource``/``Datum`` keep their uids: events name their datums by them.
    """
    left_out, left_out_streams = _own_derived(documents)
    new: dict[str, str] = {}  # old descriptor or stream resource uid -> new uid
    run_start = ""
    for name, original in documents:
        if _is_one_of(name, original, left_out):
            continue
        doc = dict(original)
        if name == "start":
            run_start = str(uuid.uuid4())
            doc.update({REPROCESSED_FROM: doc["uid"], **(extra_start or {})}, uid=run_start)
        elif name in ("descriptor", "stream_resource"):
            new[doc["uid"]] = doc["uid"] = str(uuid.uuid4())
        elif name in ("event", "event_page", "stream_datum"):
            doc["descriptor"] = new.get(doc["descriptor"], doc["descriptor"])
            if name == "event_page":
                doc["uid"] = [str(uuid.uuid4()) for _ in doc["uid"]]
            elif name == "event":
                doc["uid"] = str(uuid.uuid4())
            else:
                resource = new.get(doc["stream_resource"], doc["stream_resource"])
                doc["stream_resource"] = resource
                doc["uid"] = f"{resource}/{str(doc['uid']).rpartition('/')[2] or uuid.uuid4()}"
        elif name == "stop":
            doc["uid"] = str(uuid.uuid4())
            doc["num_events"] = {k: v for k, v in (doc.get("num_events") or {}).items() if k not in left_out_streams}
        if "run_start" in doc:
            doc["run_start"] = run_start
        yield name, doc


def derived_first(documents: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """The stored documents with the run's derived descriptors (made by this package) right after its
    start: the callback then knows every stream name the run has before it names its own
    (``denoised_2`` where ``denoised`` is taken), whatever order the store lists streams in."""
    derived = [(n, d) for n, d in documents if n == "descriptor" and made_by_us(d)]
    moved = {id(d) for _, d in derived}
    rest = [(n, d) for n, d in documents if id(d) not in moved]
    return rest[:1] + derived + rest[1:]


class _WithoutStoredDerived:
    """Pass on every document but the stored run's own derived streams (replayed with the rest so that
    the callback names its streams around them), so that what follows the callback (a reconstruction,
    the writer) sees the raw streams and this model's only."""

    def __init__(self, sink: Callable[[str, Any], Any], stored: Documents) -> None:
        self._sink = sink
        self.__name__ = getattr(sink, "__name__", type(sink).__name__)
        self._stored, _ = _own_derived(stored)

    def __call__(self, name: str, doc: Any) -> None:
        if not _is_one_of(name, doc, self._stored):
            self._sink(name, doc)


def read_run(client: Any, uid: str) -> list[tuple[str, dict[str, Any]]]:
    """The documents of the run ``uid`` stored at ``client`` (:func:`stored_documents`).

    Raises
    ------
    ReprocessError
        No such run, or its documents cannot be read.
    """
    from .storage import stored_run

    where = f"run {uid}"
    documents = stored_documents(stored_run(client, uid, ReprocessError, where), where)
    if not documents or documents[0][0] != "start" or not documents[0][1].get("uid"):
        raise ReprocessError(f"{where}: its stored documents do not begin with a start document")
    if documents[-1][0] == "stop" and not documents[-1][1]:  # the exporter's stand-in for a stop never stored
        documents.pop()
    if documents[-1][0] != "stop":  # the scan did not finish, or its writer stopped: the callback needs a stop
        log.warning("%s has no stop document; replayed with one that says so", where)
        documents.append(("stop", {"uid": str(uuid.uuid4()), "time": time.time(), "run_start": documents[0][1]["uid"],
                                   "exit_status": "fail", "num_events": {},
                                   "reason": f"{_NO_STOP} (the scan did not finish, or its writer stopped); "
                                             "replayed without one"}))
    return documents


def _has_events(documents: Documents, streams: Sequence[str] | None) -> bool:
    """Whether any event (or page of events) of ``streams`` (``None``: any stream) is among ``documents``, or
    a StreamDatum of theirs (a fly scan's stream may have nothing else)."""
    descriptors = {d["uid"] for n, d in documents
                   if n == "descriptor" and (streams is None or d.get("name") in streams)}
    return any(n in ("event", "event_page", "stream_datum") and d.get("descriptor") in descriptors
               for n, d in documents)


def replay(documents: list[tuple[str, dict[str, Any]]], callback: Callable[[str, Any], Any], *,
           into: Literal["run", "new"] = "new", extra_start: Mapping[str, Any] | None = None,
           progress: Callable[[int, int], Any] | None = None) -> str:
    """Replay a stored run's ``documents`` into ``callback``; return the uid of the run written.

    ``callback`` is what the RunEngine would have fed: a :class:`~bluesky_tomogan.TomoGANCallback`
    with a writer subscribed to it (:func:`reprocess` builds that). ``into="new"``: the documents
    of a new run (:func:`as_new_run`, with ``extra_start``); ``into="run"``: the stored documents
    as they are, the run's derived descriptors first (:func:`derived_first`). ``progress`` is
    called with the number of documents replayed and their total after each.
    """
    stream = as_new_run(documents, extra_start=extra_start) if into == "new" else iter(derived_first(documents))
    written = ""
    for done, (name, doc) in enumerate(stream, 1):
        if name == "start":
            written = doc["uid"]
        callback(name, doc)
        if progress is not None:
            progress(done, len(documents))
    return written


def reprocess(client: Any, uid: str, denoiser: Any, *, into: Literal["run", "new"] = "run",
              streams: Sequence[str] | None = SCAN_STREAMS, fields: list[str] | None = None, directory: Any = None,
              root_map: Mapping[str, str] | None = None, reconstruct: Any = None,
              progress: Callable[[int, int], Any] | None = None, frame_dtype: str = "float32",
              compression: str | None = None, angle_field: str | None = None,
              center: float | None = None, binning: int | None = None) -> tuple[str, Any]:
    """Denoise the stored run ``uid`` with ``denoiser``, into that run or a new one of the same catalog.

    Parameters
    ----------
    client : tiled client
        The catalog holding the run (``tiled.client.from_uri``, ``storage.local_tiled``); the result
        is written there.
    uid : str
        The stored run.
    denoiser : Denoiser
        What :func:`~bluesky_tomogan.load_denoiser` returns.
    into : {"run", "new"}
        ``"run"``: add the derived streams to the stored run (its documents stay as they are);
        ``"new"``: write a new run (see the module docstring).
    streams, fields : list of str, optional
        As for :class:`~bluesky_tomogan.TomoGANCallback`; by default the projections and flats
        (:data:`~bluesky_tomogan.callbacks.SCAN_STREAMS`, as the demo, the profile and ``serve``
        denoise live) and every image field; ``streams=None``: every stream with images.
    directory : path-like, optional
        Where the derived frames' files go (default: next to the raw frames' files); the Tiled
        server must be able to read it.
    root_map : dict, optional
        Where this machine sees the raw frames' files, as for the callback.
    reconstruct : Denoiser, optional
        Also reconstruct three slices and denoise them with this slice model (``load_denoiser(
        "tomogan-slice")``) into a ``reconstruction`` stream, as
        :class:`~bluesky_tomogan.TomoReconstruction` does live.
    center : float, optional
        With ``reconstruct``: the rotation centre in pixels (default: found, as
        :class:`~bluesky_tomogan.TomoReconstruction` finds it; ``bluesky-tomogan center`` prints it).
    binning : int, optional
        With ``reconstruct``: columns averaged before reconstructing (default: none up to 2048 columns, else to
        2048; :class:`~bluesky_tomogan.TomoReconstruction`'s ``binning``).
    angle_field : str, optional
        The data key of each frame's angle, where it is not the start document's first ``motors``
        entry (a fly scan's encoder capture): for the denoising context and QC, as for the
        callback, and the slices of ``reconstruct``.
    progress : callable, optional
        Called with the number of documents replayed and their total, after each.
    frame_dtype, compression : str, optional
        How the derived frames are stored, as :class:`~bluesky_tomogan.TomoGANCallback` takes them.

    Returns
    -------
    (str, RunSummary)
        The uid of the run written (``uid`` itself with ``into="run"``), and the callback's
        summary of it (``errors``, ``dropped``, ...).

    Raises
    ------
    ReprocessError
        No such run, its documents cannot be read, ``into`` is neither, or writing the result failed.
    """
    from bluesky_tiled_plugins import TiledWriter

    from .callbacks import TomoGANCallback

    if into not in ("run", "new"):
        raise ReprocessError(f"into must be 'run' (the stored run) or 'new' (a new run), got {into!r}")
    if center is not None and reconstruct is None:
        raise ReprocessError(f"a rotation centre ({center:g} px) is for the slices of reconstruct (--reconstruct)")
    if binning is not None and reconstruct is None:
        raise ReprocessError(f"a binning ({binning}) is for the slices of reconstruct (--reconstruct)")
    if binning is not None and binning < 1:
        raise ReprocessError(f"binning must be a whole number of columns, at least 1; got {binning}")
    documents = read_run(client, uid)
    no_stop = documents[-1][1].get("exit_status") == "fail" and _NO_STOP in documents[-1][1]["reason"]
    if into == "run" and no_stop:
        raise ReprocessError(f"run {uid} has no stop document: it is still running, or it was interrupted; "
                             "reprocess it into a new run (into='new', --into new)")
    if not _has_events(documents, streams):
        # a new run without a frame would look like a result; a writer that batches events (TiledWriter,
        # 10,000 a batch) stores the last batch with the stop, which a live TomoReconstruction passes on
        # after its final slices
        raise ReprocessError(f"run {uid} holds no events in {'any stream' if streams is None else list(streams)}: "
                             "nothing to denoise" + ("; it has no stop either: if it has just run, its writer may "
                                                     "not have stored it yet (a live TomoReconstruction passes "
                                                     "the stop on after its final slices: rec.wait() first)"
                                                     if no_stop else ""))
    callback = TomoGANCallback(denoiser, fields=fields, streams=None if streams is None else list(streams),
                               policy="block", directory=directory, root_map=root_map, qc=replay_qc_policy(),
                               block_timeout=OFFLINE_TIMEOUT_S, flush_timeout=OFFLINE_TIMEOUT_S,
                               frame_dtype=frame_dtype, compression=compression, angle_field=angle_field)
    if into == "new":
        writer: Any = TiledWriter(client)
    else:
        from .serve.tiled_derived import DerivedStreamsWriter
        from .serve.worker import DerivedOnly

        if reconstruct is not None and any(n == "descriptor" and d.get("name") == RECONSTRUCTION
                                           for n, d in documents):
            raise ReprocessError(f"run {uid} has a {RECONSTRUCTION!r} stream already; reconstruct into a new run "
                                 "(into='new', --into new)")
        writer = DerivedOnly(DerivedStreamsWriter(client))  # adds this model's streams to the stored run
    outlet: Any = callback  # what the writer reads: the callback, or the reconstruction after it
    if reconstruct is not None:
        from .callbacks import TomoReconstruction

        outlet = TomoReconstruction(reconstruct, directory=directory, root_map=root_map, timeout=OFFLINE_TIMEOUT_S,
                                    background=False, angle_field=angle_field, center=center, binning=binning)
        callback.subscribe(_WithoutStoredDerived(outlet, documents))
        outlet.subscribe(writer, storage=True)
    else:
        callback.subscribe(_WithoutStoredDerived(writer, documents), storage=True)
    extra = {"tomogan_reprocessed_at": time.time()}
    written = replay(documents, callback, into=into, extra_start=extra, progress=progress)
    summary = callback.last_run
    failed = [run.consumers.reason() for run in (summary, outlet.last_run) if run is not None and run.consumers.total]
    if failed:
        raise ReprocessError(f"run {uid}: {'; '.join(dict.fromkeys(failed))} (the log has each error)")
    log.info("run %s denoised into %s (%s)", uid, "itself" if into == "run" else f"the new run {written}", denoiser)
    return written, summary
