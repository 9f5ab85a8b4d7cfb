"""The one seam between the denoising worker and the document stream it serves.

The worker needs a *source* of documents (``subscribe``, a blocking ``start``,
``stop`` from another thread or a signal) and optionally a *sink* that
republishes what it makes. Here both are bluesky's own 0MQ pieces:
``bluesky.callbacks.zmq.RemoteDispatcher`` behind ``bluesky-0MQ-proxy``, and
``bluesky.callbacks.zmq.Publisher``.

Kafka plugs in at the same seam: ``bluesky_kafka.RemoteDispatcher(topics,
bootstrap_servers, group_id)`` has the same ``subscribe``/``start``/``stop``
and ``bluesky_kafka.Publisher(topic, bootstrap_servers, key)`` is a
``(name, doc)`` callable, so a Kafka deployment passes those to
:class:`~bluesky_tomogan.serve.worker.DenoisingWorker` instead (docs/deployment.md).
No Kafka code ships here: no broker installs on the machines this is tested on.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import socket
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["DocumentSource", "ZMQSource", "zmq_publisher", "parse_address", "check_reachable", "Unreachable"]

log = logging.getLogger(__name__)
Subscriber = Callable[[str, Any], Any]


class Unreachable(ConnectionError):
    """Nothing listens at an address the worker needs."""


class DocumentSource(Protocol):
    """What the worker reads documents from (a 0MQ or Kafka ``RemoteDispatcher``)."""

    def subscribe(self, func: Subscriber) -> Any: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


def parse_address(address: str) -> tuple[str, int]:
    """``"host:port"`` (or ``"port"``, meaning localhost) as ``(host, port)``; ValueError names the problem."""
    host, _, port = address.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"0MQ address {address!r} is not host:port") from None
    if not 0 < number < 65536:
        raise ValueError(f"0MQ address {address!r}: port {number} is out of range")
    return (host or "localhost"), number


def check_reachable(address: str, timeout: float = 2.0) -> None:
    """Raise :class:`Unreachable` unless something accepts TCP connections at ``address``.

    A 0MQ socket connects lazily and never reports a missing peer, so a wrong
    proxy address would otherwise look like a quiet beamline forever.
    """
    host, port = parse_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise Unreachable(f"nothing listens at {host}:{port} ({exc}); is bluesky-0MQ-proxy running?") from exc


class ZMQSource:
    """Documents from ``bluesky-0MQ-proxy``'s out port, through bluesky's ``RemoteDispatcher``.

    A message that cannot be decoded is logged (with its size and the error)
    and counted in :attr:`malformed`, and the stream goes on; the worker records
    the gap in the run it belonged to when it can tell.
    """

    def __init__(self, address: str, *, prefix: bytes = b"") -> None:
        from bluesky.callbacks.zmq import RemoteDispatcher

        self.address = address
        self.malformed = 0
        self._dispatcher = RemoteDispatcher(parse_address(address), prefix=prefix, deserializer=self._loads)

    def _loads(self, payload: bytes) -> Any:
        try:
            doc = pickle.loads(payload)  # bluesky's Publisher serialises with pickle
            if not isinstance(doc, dict):
                raise TypeError(f"a document must be a dict, got {type(doc).__name__}")
            return doc
        except Exception as exc:
            self.malformed += 1
            log.error("dropped a malformed message of %d bytes from %s: %s: %s", len(payload), self.address,
                      type(exc).__name__, exc)
            raise

    def subscribe(self, func: Subscriber) -> Any:
        return self._dispatcher.subscribe(func)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop :meth:`start` runs (for a GUI's kicker)."""
        loop: asyncio.AbstractEventLoop = self._dispatcher.loop
        return loop

    def start(self) -> None:
        """Dispatch documents until :meth:`stop` (blocks; returns after a stop)."""
        try:
            self._dispatcher.start()
        except asyncio.CancelledError:  # stop() cancelled the poll: a normal end
            pass

    def stop(self) -> None:
        """End :meth:`start` from another thread or a signal handler."""
        cancel_loop(self._dispatcher.loop)


def cancel_loop(loop: asyncio.AbstractEventLoop | None) -> None:
    """Cancel every task of ``loop`` from any thread (its ``run_until_complete`` then returns); no-op if closed."""
    if loop is None or loop.is_closed():
        return

    def cancel() -> None:
        for task in asyncio.all_tasks(loop):
            task.cancel()

    loop.call_soon_threadsafe(cancel)


def zmq_publisher(address: str, *, prefix: bytes = b"") -> Subscriber:
    """bluesky's 0MQ ``Publisher`` to a proxy's in port: the worker's documents for live plots elsewhere."""
    from bluesky.callbacks.zmq import Publisher

    return Publisher(parse_address(address), prefix=prefix)
