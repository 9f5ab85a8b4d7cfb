"""Out of the RunEngine's process: a denoising worker on bluesky's 0MQ document stream.

``bluesky-tomogan serve`` (:func:`serve`) is the command; :class:`DenoisingWorker`
the object; :mod:`.transport` the one seam to the stream (bluesky's 0MQ, or Kafka
through :mod:`.kafka`); :mod:`.tiled_derived` writes derived streams into runs that
the RunEngine host stores. See docs/deployment.md.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .tiled_derived import DerivedStreamsWriter, record_on_run
from .transport import (
    DocumentSource,
    Unreachable,
    ZMQSource,
    check_reachable,
    document_source,
    parse_address,
    zmq_publisher,
)
from .worker import DenoisingWorker, DerivedOnly, RunShare, Store, WorkerStats

__all__ = ["serve", "DenoisingWorker", "DerivedOnly", "RunShare", "WorkerStats", "DocumentSource", "ZMQSource",
           "zmq_publisher", "check_reachable", "parse_address", "Unreachable", "DerivedStreamsWriter",
           "record_on_run", "ServeError", "document_source"]

log = logging.getLogger(__name__)


class ServeError(RuntimeError):
    """The worker cannot start: a proxy or Tiled server it needs is not there (the message says which)."""


def serve(zmq_in: str | None = None, *, kafka: Any = None, kafka_in: Sequence[str] = (),
          kafka_out: str | None = None, kafka_group: str | None = None,
          tiled: str | None = None, store: Store = "derived", zmq_out: str | None = None,
          republish_raw: bool = False,
          model: str = "tomogan-projection", backend: str = "auto", streams: list[str] | None = None,
          fields: list[str] | None = None, policy: str = "block", reconstruct: bool = False,
          reconstruct_every: int = 0, directory: str | os.PathLike[str] | None = None,
          state_dir: str | os.PathLike[str] = "~/.local/state/bluesky-tomogan", share: str = "0/1",
          grace: float = 60.0, prefix: bytes = b"", ioc_prefix: str | None = None,
          retry_after: float = 10.0, fallback: str | None = None,
          warm_up: tuple[int, int] | None = None, abandon_after: float | None = 86400.0,
          root_map: dict[str, str] | None = None, slice_model: str = "tomogan-slice",
          slice_self_ensemble: int = 1, frame_dtype: str = "float32", compression: str | None = None,
          angle_field: str | None = None, center: float | None = None, binning: int | None = None) -> int:
    """Serve the document stream at ``zmq_in`` (a ``bluesky-0MQ-proxy`` out port), or in the Kafka topics
    ``kafka_in``, until SIGTERM.

    Parameters
    ----------
    zmq_in : str, optional
        ``host:port`` of the proxy's out port, where the RunEngine's ``Publisher`` documents come from.
    kafka : KafkaCluster, optional
        The Kafka brokers (:class:`~bluesky_tomogan.serve.kafka.KafkaCluster`), for ``kafka_in`` and
        ``kafka_out``.
    kafka_in : sequence of str
        Kafka topics the RunEngine publishes to (``bluesky_kafka.Publisher``), instead of ``zmq_in``.
        The worker's consumer group commits after each run it finishes, so that a restarted
        worker goes on from there (:mod:`~bluesky_tomogan.serve.kafka`).
    kafka_out : str, optional
        A Kafka topic to republish the derived documents to (instead of ``zmq_out``).
    kafka_group : str, optional
        The Kafka consumer group (default ``bluesky-tomogan-serve-K-of-N`` for ``share`` K/N).
    tiled : str, optional
        Tiled URI (with ``?api_key=`` if the server needs one) where the runs are stored, or a
        directory: an embedded Tiled server (:func:`~bluesky_tomogan.storage.local_tiled`) in the worker.
    store : {"derived", "run", "none"}
        See :class:`DenoisingWorker`.
    zmq_out : str, optional
        ``host:port`` of a second proxy's in port: the derived documents are republished there.
    republish_raw : bool
        With ``zmq_out`` or ``kafka_out``: the raw documents too (see :class:`DenoisingWorker`).
    model, backend : str
        As :func:`~bluesky_tomogan.load_denoiser`.
    streams, fields, policy
        As :class:`~bluesky_tomogan.TomoGANCallback` (default streams: ``primary`` and ``flat``).
    reconstruct : bool
        Also reconstruct slices live (:class:`~bluesky_tomogan.TomoReconstruction`).
    reconstruct_every : int
        Progressive reconstruction every N projections (0: at the end only).
    center : float, optional
        With ``reconstruct``: the rotation centre in pixels of every run served (a beamline whose axis is
        aligned); default: found for each run, as :class:`~bluesky_tomogan.TomoReconstruction` finds it.
    binning : int, optional
        With ``reconstruct``: columns averaged before reconstructing (default: none up to 2048 columns, else
        to 2048; :class:`~bluesky_tomogan.TomoReconstruction`'s ``binning``).
    slice_model : str
        With ``reconstruct``: the slice model (a shipped name, or a card or directory, such as
        one ``bluesky-tomogan finetune`` wrote for this sample).
    slice_self_ensemble : {1, 2, 4, 8}
        With ``reconstruct``: the slice model runs on that many turned copies of each slice
        (:func:`~bluesky_tomogan.load_denoiser`'s ``self_ensemble``): that many times the
        cost of three slices, for less painted-in texture.
    angle_field : str, optional
        The data key of each frame's angle, where it is not the start document's first ``motors``
        entry (a fly scan's encoder capture, written to a file beside the frames): for the
        denoising context and QC (:class:`~bluesky_tomogan.TomoGANCallback`) and, with
        ``reconstruct``, the slices (:class:`~bluesky_tomogan.TomoReconstruction`).
    directory : path-like, optional
        Where derived frames are written (default: next to the raw frames).
    state_dir : path-like
        Where the journal of runs in flight is kept.
    share : str
        ``K/N``: serve share K of N (several workers split the runs).
    grace : float
        Seconds runs in flight may take to finish after SIGTERM.
    prefix : bytes
        The ``Publisher``'s prefix to listen to (default: every document).
    ioc_prefix : str, optional
        Publish the QC flags and metrics as EPICS PVs under this prefix (a caproto
        soft IOC, :class:`~bluesky_tomogan.serve.ioc.QCIOC`); the RunEngine host
        installs suspenders on them with :func:`~bluesky_tomogan.serve.ioc.install_qc_suspenders`.
    retry_after : float
        Seconds after which a suspending flag clears so that the scan resumes and
        tests the condition with its next frame (:class:`~bluesky_tomogan.devices.QCMonitor`).
    fallback : str, optional
        With ``policy="adaptive"``: a lighter model to step down to after the model's
        lightest ratio (``load_ratios(..., fallback=...)``).
    warm_up : tuple of int, optional
        With ``policy="adaptive"``: the detector's frame shape ``(H, W)``, at which every
        network is run and timed at start-up, so that the first scan does not wait for it.
    abandon_after : float, optional
        Close a run that has sent no document for this many seconds (its RunEngine host
        crashed before the stop): :class:`DenoisingWorker`. None: never. Ignored (logged)
        with ``store="run"``, where closing a run that resumes would lose its raw documents.
    root_map : dict, optional
        Where this machine sees the detector's files that its IOC wrote under another path
        (``{"/ioc/data": "/mnt/beamline"}``), as :class:`~bluesky_tomogan.TomoGANCallback` takes it.
    frame_dtype, compression : str, optional
        How the derived frames are stored, as :class:`~bluesky_tomogan.TomoGANCallback` takes them.

    Returns
    -------
    int
        The exit status: 0 after a clean shutdown, 1 when reading the stream failed for good (a
        fatal Kafka client error).

    Raises
    ------
    ServeError
        The proxy or Kafka broker is unreachable, the Tiled server refuses, or the options
        contradict each other.
    """
    from ..callbacks import SCAN_STREAMS, TomoGANCallback, TomoReconstruction
    from ..inference.load import load_denoiser
    from ..inference.ratios import load_ratios
    from .kafka import group_id_for

    if fallback is not None and policy != "adaptive":
        raise ServeError(f"a fallback model ({fallback}) is for policy 'adaptive', not {policy!r}")
    if slice_self_ensemble != 1 and not reconstruct:
        raise ServeError(f"a slice self-ensemble ({slice_self_ensemble}) is for the slices of --reconstruct")
    if slice_model != "tomogan-slice" and not reconstruct:
        raise ServeError(f"a slice model ({slice_model}) is for the slices of --reconstruct")
    if center is not None and not reconstruct:
        raise ServeError(f"a rotation centre ({center:g} px) is for the slices of --reconstruct")
    if binning is not None and not reconstruct:
        raise ServeError(f"a binning ({binning}) is for the slices of --reconstruct")
    if binning is not None and binning < 1:
        raise ServeError(f"binning must be a whole number of columns, at least 1; got {binning}")
    if zmq_out is not None and kafka_out is not None:
        raise ServeError("republish to one place: a 0MQ proxy (--zmq-out) or a Kafka topic (--kafka-out)")
    if kafka_out is not None and kafka is None:
        raise ServeError("a Kafka topic to republish to needs the brokers: --kafka-bootstrap or --kafka-config")
    if republish_raw and zmq_out is None and kafka_out is None:
        raise ServeError("republishing the raw documents too (--republish all) needs --zmq-out or --kafka-out: "
                         "where to republish")
    if warm_up is not None and policy != "adaptive":
        raise ServeError(f"--warm-up (a frame shape for the adaptive ladder) is for policy 'adaptive', not {policy!r}")
    run_share = RunShare.parse(share)
    if abandon_after is not None and not abandon_after > 0:
        raise ServeError(f"abandon_after must be a positive number of seconds (or None: never), got {abandon_after}")
    if abandon_after is not None and store == "run":
        log.info("store='run': runs without a stop are kept open (the worker is the only writer of their raw data)")
        abandon_after = None
    try:
        source = document_source(zmq_in, kafka=kafka, kafka_in=kafka_in, prefix=prefix, resume=True,
                                  group_id=kafka_group or (group_id_for("serve", share) if kafka_in else None))
        if zmq_out is not None:
            check_reachable(zmq_out)
        if kafka_out is not None:
            kafka.check_reachable([kafka_out])  # (again with --kafka-in: it warns if the topic is missing)
    except (Unreachable, ValueError) as exc:
        raise ServeError(str(exc)) from exc
    client = _tiled_client(tiled) if store != "none" else None
    # adaptive: every pruning ratio of an All-in-One model, loaded now so that a switch costs nothing
    denoiser: Any = (load_ratios(model, backend=backend, fallback=fallback, warm_up=warm_up)
                     if policy == "adaptive" else load_denoiser(model, backend=backend))
    feedback, ioc = None, None
    if ioc_prefix:
        from ..devices.qc_monitor import QCMonitor
        from ..qc.feedback import QCFeedback
        from .ioc import QCIOC

        monitor = QCMonitor(name="qc", retry_after=retry_after)
        feedback = QCFeedback(monitor=monitor)
        ioc = QCIOC(monitor, ioc_prefix)
    callback = TomoGANCallback(denoiser, fields=fields, streams=streams or list(SCAN_STREAMS),
                               policy=policy, directory=directory, feedback=feedback,  # type: ignore[arg-type]
                               root_map=root_map, frame_dtype=frame_dtype, compression=compression,
                               angle_field=angle_field)
    outlet: Any = callback
    wait = None
    if reconstruct:
        slices = load_denoiser(slice_model, backend=backend, self_ensemble=slice_self_ensemble)
        rec = TomoReconstruction(slices, every=reconstruct_every, directory=directory, root_map=root_map,
                                 angle_field=angle_field, center=center, binning=binning)
        callback.subscribe(rec)
        outlet, wait = rec, rec.wait
    republish: Any = None
    if zmq_out is not None:
        republish = zmq_publisher(zmq_out)
    elif kafka_out is not None:
        from .kafka import KafkaPublisher

        republish = KafkaPublisher(kafka, kafka_out)
    worker = DenoisingWorker(source, callback, outlet=outlet, client=client, store=store,
                             republish=republish, republish_raw=republish_raw,
                             state_dir=Path(state_dir).expanduser(), share=run_share, grace=grace, wait=wait,
                             abandon_after=abandon_after)
    if ioc is not None:
        ioc.start()
    log.info("bluesky-tomogan serve: %s from %s, store=%s%s, share %s%s", denoiser, zmq_in or source, store,
             f" in {tiled.split('?')[0]}" if tiled else "", share,  # no API key in logs
             f", QC PVs under {ioc_prefix}" if ioc_prefix else "")
    try:
        status = worker.run()
        fatal = getattr(source, "fatal_error", None)
        if fatal:  # not a clean shutdown: a service manager should restart the worker
            log.error("reading the stream failed: %s", fatal)
            return 1
        return status
    finally:
        if kafka_out is not None:
            republish.close()  # what is still queued for the topic
        if ioc is not None:
            ioc.stop()
            ioc.monitor.cancel_timers()


def _tiled_client(uri: str | None) -> Any:
    if not uri:
        raise ServeError("storing runs needs --tiled URI or DIR (or --store none)")
    from ..storage import open_tiled

    return open_tiled(uri, ServeError)
