"""The one seam between the denoising worker and the document stream it serves.

The worker needs a *source* of documents (``subscribe``, a blocking ``start``,
``stop`` from another thread or a signal) and optionally a *sink* that
republishes what it makes. Here both are bluesky's own 0MQ pieces:
``bluesky.callbacks.zmq.RemoteDispatcher`` behind ``bluesky-0MQ-proxy``, and
``bluesky.callbacks.zmq.Publisher``.

Kafka (:mod:`.kafka`, the wire format of ``bluesky_kafka``) plugs in at the same
seam: :class:`~.kafka.KafkaSource` has the same ``subscribe``/``start``/``stop``
and :class:`~.kafka.KafkaPublisher` is a ``(name, doc)`` callable.
:func:`document_source` opens either for the commands (docs/deployment.md).
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import socket
from collections.abc import Callable, Sequence
from typing import Any, Protocol

__all__ = ["DocumentSource", "ZMQSource", "zmq_publisher", "parse_address", "check_reachable", "Unreachable",
           "document_source"]

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

    def every(self, seconds: float, func: Callable[[], Any]) -> None:
        """Call ``func()`` about every ``seconds`` on the dispatching thread, between documents (a GUI's events)."""
        loop = self.loop

        def tick() -> None:
            try:
                func()
            except Exception:
                log.exception("a periodic task of the 0MQ reader raised")
            loop.call_later(seconds, tick)

        loop.call_soon(tick)

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


def document_source(zmq_in: str | None = None, *, kafka: Any = None, kafka_in: Sequence[str] = (),
                    group_id: str | None = None, resume: bool = False, prefix: bytes = b"") -> Any:
    """The stream a command reads: a 0MQ proxy's out port (``zmq_in``), or Kafka topics (``kafka_in`` on the
    :class:`~.kafka.KafkaCluster` ``kafka``), checked to answer first.

    ``group_id`` and ``resume`` are the Kafka reader's (:class:`~.kafka.KafkaSource`); a fresh group of
    its own when not given. ``prefix`` is the 0MQ publisher's. Both sources also have ``every(seconds,
    func)``, for work between documents on the reading thread (a GUI's events).

    Raises
    ------
    Unreachable
        Nothing answers where the stream should be.
    ValueError
        Neither or both streams named, or an address or setting is wrong.
    """
    if (zmq_in is None) == (not kafka_in):
        raise ValueError("read documents from one stream: a 0MQ proxy (--zmq-in) or Kafka topics (--kafka-in)")
    if zmq_in is not None:
        check_reachable(zmq_in)
        return ZMQSource(zmq_in, prefix=prefix)
    from .kafka import KafkaConfigError, KafkaSource, group_id_for

    if kafka is None:
        raise KafkaConfigError("Kafka topics need the brokers: --kafka-bootstrap HOST:PORT or --kafka-config FILE")
    if prefix:
        raise ValueError("a publisher prefix is a 0MQ setting; Kafka topics separate streams")
    kafka.check_reachable(kafka_in)
    return KafkaSource(kafka, kafka_in, group_id or group_id_for("reader"), resume=resume)
