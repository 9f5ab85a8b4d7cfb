"""``bluesky-tomogan view``: the live views of a 0MQ document stream, in windows or as PNG files.

For a control room or a status page beside ``bluesky-tomogan serve``: the worker's
republished stream (``serve --zmq-out``) carries its derived documents, so this shows the
newest denoised frame with its QC flags (:class:`~bluesky_tomogan.callbacks.LiveDenoisedView`;
the raw panel says "not available" unless the worker republishes the raw documents too,
``serve --republish all``) and, with ``serve --reconstruct``, each update of the live slice
(:class:`~bluesky_tomogan.callbacks.LiveSliceView`). The frame files are read where the
worker wrote them (``root_map`` where this machine mounts them elsewhere).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import TomoGANError

__all__ = ["run_viewer", "where_to_show", "FRAMES_PNG", "SLICES_PNG"]

log = logging.getLogger(__name__)

#: The files ``save`` writes, replaced after each draw.
FRAMES_PNG, SLICES_PNG = "frames.png", "slices.png"


def run_viewer(zmq_in: str | None = None, *, stream: str = "primary", row: int | None = None,
               root_map: Mapping[str, str] | None = None, save: str | os.PathLike[str] | None = None,
               interval: float = 0.5, kafka: Any = None, kafka_in: Sequence[str] = (),
               kafka_group: str | None = None) -> int:
    """Show the live views of the stream at ``zmq_in``, or in the Kafka topics ``kafka_in``, until SIGTERM/SIGINT.

    Parameters
    ----------
    zmq_in : str, optional
        ``host:port`` of a ``bluesky-0MQ-proxy`` out port (``serve --zmq-out``'s proxy).
    kafka, kafka_in, kafka_group : optional
        Instead of ``zmq_in``: the :class:`~bluesky_tomogan.serve.kafka.KafkaCluster`, the topics
        (``serve --kafka-out``'s) and a consumer group (default: one of its own, never committed).
    stream : str
        The raw stream whose denoised frames are shown.
    row : int, optional
        The detector row of the slice view (default: the middle one reconstructed).
    root_map : mapping, optional
        Where this machine sees the worker's files (``{"/there": "/here"}``).
    save : path-like, optional
        A directory: after each draw the views are written there as :data:`FRAMES_PNG` and
        :data:`SLICES_PNG` (replaced whole). Without a display this is the only output, so it is
        then required.
    interval : float
        Seconds between redraws of a view at the most.

    Raises
    ------
    TomoGANError
        No window can be shown here and no ``save`` directory was given, or it cannot be made.
    """
    import signal

    from ..callbacks.live_view import LiveDenoisedView, LiveSliceView
    from .transport import document_source

    windows, directory = where_to_show(save)
    source = document_source(zmq_in, kafka=kafka, kafka_in=kafka_in, group_id=kafka_group)
    # documents are dispatched on this (the main) thread, the one a GUI draws on: nothing to hand over
    views = (LiveDenoisedView(stream, interval=interval, root_map=root_map, use_teleporter=False,
                              save=None if directory is None else directory / FRAMES_PNG),
             LiveSliceView(row, interval=interval, root_map=root_map, use_teleporter=False,
                           save=None if directory is None else directory / SLICES_PNG))
    for view in views:
        source.subscribe(view)
    if windows:
        _kick_windows(source)
    previous = {s: signal.signal(s, lambda *_: source.stop()) for s in (signal.SIGTERM, signal.SIGINT)}
    log.info("viewing %s%s", zmq_in or source,
             f", writing {directory}/{FRAMES_PNG} and {SLICES_PNG}" if directory else "")
    try:
        source.start()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0


def where_to_show(save: str | os.PathLike[str] | None) -> tuple[bool, Path | None]:
    """Whether the views show in windows here, and the directory they are saved to (made now).

    Raises
    ------
    TomoGANError
        No window can be shown here and no ``save`` directory was given, or it cannot be made.
    """
    import matplotlib

    from ..callbacks.live_view import shows_windows

    windows = shows_windows()
    if not windows and save is None:
        raise TomoGANError(f"matplotlib's backend here ({matplotlib.get_backend()}) shows no window (no display?): "
                           "run it where a display is, or give --save DIR to write the views as PNG files")
    directory = None if save is None else Path(save).expanduser()
    if directory is not None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TomoGANError(f"cannot make the directory {directory} for the views: {exc}") from exc
    return windows, directory


def _kick_windows(source: Any, every: float = 0.05) -> None:
    """Let the windows' GUI (Qt, Tk, GTK, wx...) handle its events between the stream's documents: the stream's
    reader owns the thread, so without this a window would freeze between draws (bluesky's own kicker
    does this for Qt only)."""
    import matplotlib.pyplot as plt

    plt.ion()  # a figure shows when it is made

    def kick() -> None:
        for number in plt.get_fignums():
            plt.figure(number).canvas.flush_events()

    source.every(every, kick)
