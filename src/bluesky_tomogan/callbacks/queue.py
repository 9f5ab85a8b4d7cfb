"""A bounded, thread-safe frame queue with an explicit policy for when it is full.

Policies
--------
``block``
    ``put`` waits until the worker makes room: nothing is dropped, and the
    RunEngine's callback thread (so the scan) slows to the denoiser's pace. The
    wait is bounded by ``put``'s ``timeout``: a consumer stuck that long loses
    the frame (recorded in ``dropped``) rather than hanging the scan.
``drop-oldest``
    ``put`` never waits; the oldest queued frame is discarded and counted.
``latest-only``
    ``put`` never waits; every queued frame is discarded and counted, so the
    worker always takes the newest frame (live display at any cost).
``adaptive``
    The queue itself behaves as ``drop-oldest``; the callback keeps it from
    filling by moving to a lighter pruning ratio of an All-in-One model when
    the queue passes a high-water mark, and back when it drains
    (:class:`~bluesky_tomogan.inference.ratios.RatioController`). A frame is
    dropped only when even the lightest ratio cannot keep up.

Deliveries. A detector that writes its frames to a file announces them in batches (ophyd-async's
StreamDatum, every flush period of a fly scan: tens to hundreds of frames at once). Frames put within
:meth:`FrameQueue.delivery` are such a batch of references (no pixels: the worker reads each from the
file): under ``drop-oldest`` and ``adaptive`` the whole batch is queued beyond ``maxsize``, so that at
most ``maxsize`` frames wait besides the delivery being put. A full queue otherwise dropped part of
every batch larger than ``maxsize`` although a worker that keeps up on average clears it before the
next one. (``block`` drops nothing and keeps pacing the producer at ``maxsize``; ``latest-only`` keeps
one frame.) :meth:`FrameQueue.backlog` is what waits beyond the latest such delivery: what the worker
did not clear before it came.

Control items (end-of-stream markers) are never dropped. A dropped frame leaves a
*tombstone* (by default the item itself; the callback passes a function that keeps
the frame's identity without its pixels) both in ``dropped`` and in the queue at
the frame's place, so the consumer records the loss in order and memory stays
bounded by ``maxsize`` frames.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Literal

__all__ = ["FrameQueue", "POLICIES", "Policy", "MAX_DELIVERY"]

#: Most frames of one delivery queued beyond ``maxsize`` (references of about a kilobyte each, not frames).
MAX_DELIVERY = 4096

Policy = Literal["block", "drop-oldest", "latest-only", "adaptive"]
POLICIES: tuple[str, ...] = ("block", "drop-oldest", "latest-only", "adaptive")


class FrameQueue:
    """Bounded FIFO of work items; see the module docstring for the policies.

    Parameters
    ----------
    maxsize : int
        Most frames held at once (control items do not count).
    policy : {"block", "drop-oldest", "latest-only", "adaptive"}
        What ``put`` does when full (``adaptive``: as ``drop-oldest``).
    tombstone : callable, optional
        ``tombstone(item)`` is what a dropped frame leaves behind: recorded in
        ``dropped`` and handed to the consumer as a control item. ``None``
        keeps the item in ``dropped`` and tells the consumer nothing.
    """

    def __init__(self, maxsize: int = 16, policy: Policy = "block",
                 tombstone: Callable[[Any], Any] | None = None) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown queue policy {policy!r}; choose from {', '.join(POLICIES)}")
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self.policy = policy
        self._items: deque[tuple[bool, Any]] = deque()  # (is_frame, item)
        self._frames = 0
        self._cond = threading.Condition()
        self._tombstone = tombstone
        self._closed = False
        self._extra = 0  # room beyond maxsize while a delivery is put
        self.last_delivery = 1  # frames of the latest delivery (1: a frame put on its own)
        self.dropped: list[Any] = []  # a tombstone of every dropped frame, for the record

    def __len__(self) -> int:
        with self._cond:
            return self._frames

    def backlog(self) -> int:
        """Frames waiting beyond the latest delivery of several (:meth:`delivery`): what the consumer did not
        clear before it came. Without deliveries, every frame waiting."""
        with self._cond:
            return max(self._frames - (self.last_delivery if self.last_delivery > 1 else 0), 0)

    @contextlib.contextmanager
    def delivery(self, frames: int) -> Iterator[None]:
        """Put the ``frames`` frames of one delivery within: references to frames in a file that came at once
        (see the module docstring), queued whole beyond ``maxsize`` (up to :data:`MAX_DELIVERY` of them) under
        ``drop-oldest`` and ``adaptive``."""
        with self._cond:
            self._extra, self.last_delivery = min(max(frames, 1), MAX_DELIVERY) - 1, max(frames, 1)
        try:
            yield
        finally:
            with self._cond:
                self._extra = 0

    def put(self, item: Any, timeout: float | None = None) -> bool:
        """Queue a frame, applying the policy when full.

        With ``block``, wait at most ``timeout`` seconds for room; if none comes
        (the consumer is stuck), the frame is dropped, recorded, and ``False``
        returned, so a producer on the RunEngine's thread can never hang.
        """
        with self._cond:
            if self._closed:
                return False
            if not self._extra:  # a frame on its own
                self.last_delivery = 1
            # block loses nothing and paces the producer (a stored run replayed by hand, whose one StreamDatum may
            # hold a whole scan, must not be queued whole for a stop that waits flush_timeout): maxsize alone
            limit = self.maxsize + (self._extra if self.policy != "block" else 0)
            if self.policy == "block":
                if not self._cond.wait_for(lambda: self._closed or self._frames < limit, timeout):
                    tomb = self._drop(item)
                    if self._tombstone is not None:
                        self._items.append((False, tomb))
                        self._cond.notify_all()
                    return False
                if self._closed:
                    return False
            elif self.policy == "latest-only":
                self._drop_frames(self._frames)
            elif self._frames >= limit:
                self._drop_frames(1)
            self._items.append((True, item))
            self._frames += 1
            self._cond.notify_all()
            return True

    def close(self) -> None:
        """The consumer is gone: wake a ``put`` that waits for room; from now on ``put`` refuses frames
        (returns ``False``, records nothing: the producer accounts for them)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def put_control(self, item: Any) -> None:
        """Queue a control item (never dropped, never blocks)."""
        with self._cond:
            self._items.append((False, item))
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> tuple[bool, Any] | None:
        """Next ``(is_frame, item)``, or ``None`` after ``timeout`` seconds."""
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._items), timeout):
                return None
            is_frame, item = self._items.popleft()
            if is_frame:
                self._frames -= 1
                self._cond.notify_all()
            return is_frame, item

    def _drop_frames(self, n: int) -> None:
        kept: deque[tuple[bool, Any]] = deque()
        while self._items:
            is_frame, item = self._items.popleft()
            if is_frame and n > 0:
                tomb = self._drop(item)
                if self._tombstone is not None:  # the consumer learns of the loss in order
                    kept.append((False, tomb))
                self._frames -= 1
                n -= 1
            else:
                kept.append((is_frame, item))
        self._items = kept

    def _drop(self, item: Any) -> Any:
        tomb = item if self._tombstone is None else self._tombstone(item)
        self.dropped.append(tomb)
        return tomb
