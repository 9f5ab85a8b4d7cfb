"""Bluesky documents over Kafka, for beamlines whose RunEngine publishes there (as NSLS-II's do).

The worker reads documents from a topic (:class:`KafkaSource`) and may republish what it makes
to another (:class:`KafkaPublisher`). Both speak the wire format of ``bluesky_kafka.Publisher``,
the RunEngine side at such beamlines: one message per document, its value
``msgpack.packb((name, doc))`` with numpy arrays and scalars encoded by ``msgpack-numpy``, its key
the run's start uid (NSLS-II's publisher keys each run so; it keeps a run's documents in one
partition, in order). Only ``confluent-kafka`` and ``msgpack-numpy`` are needed here
(``pip install 'bluesky-tomogan[kafka]'``); the suite checks the format against
``bluesky_kafka`` itself.

Where the worker resumes (:class:`KafkaSource`, ``resume=True``): its consumer group's offset is
committed after each stop document it has handled, and nothing else is committed. A restarted
worker (same group) therefore reads on from the end of the last run it finished: runs that
started while it was down are denoised late rather than lost, and a run it was in the middle of
is handled as with 0MQ (its start is not served again; its missing frames are recorded, see
:class:`~bluesky_tomogan.serve.worker.DenoisingWorker`). A group that has committed nothing
starts at the topic's end, as a 0MQ subscriber does. Readers of QC flags and viewers
(``resume=False``) never commit: after a restart they start at the end, not at stale flags.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TomoGANError
from .transport import Subscriber, Unreachable

__all__ = ["KafkaCluster", "KafkaSource", "KafkaPublisher", "KafkaConfigError", "group_id_for", "encode", "decode"]

log = logging.getLogger(__name__)

#: The document names a message may carry (event-model's); anything else is malformed.
DOCUMENT_NAMES = frozenset({"start", "descriptor", "event", "event_page", "bulk_events", "resource", "datum",
                            "datum_page", "bulk_datum", "stream_resource", "stream_datum", "stop"})
INSTALL_HINT = "Kafka needs confluent-kafka and msgpack-numpy: pip install 'bluesky-tomogan[kafka]'"


class KafkaConfigError(TomoGANError, ValueError):
    """A Kafka configuration file or setting is missing, unreadable or wrong (the message says which)."""


@functools.cache
def _modules() -> tuple[Any, Any, Any]:
    """confluent_kafka, msgpack and msgpack_numpy, or a :class:`KafkaConfigError` saying how to install them."""
    try:
        import confluent_kafka
        import msgpack
        import msgpack_numpy
    except ImportError as exc:
        raise KafkaConfigError(f"{INSTALL_HINT} ({exc})") from exc
    return confluent_kafka, msgpack, msgpack_numpy


@functools.cache
def _unpackb() -> Callable[..., Any]:
    """msgpack's own ``unpackb``: importing bluesky_kafka patches ``msgpack.unpackb`` to run msgpack-numpy's
    decoding (which unpickles) before any hook of ours; the original is taken once, whatever is imported later."""
    _, msgpack, msgpack_numpy = _modules()
    unpackb: Callable[..., Any] = getattr(msgpack_numpy, "_unpackb", msgpack.unpackb)
    if getattr(unpackb, "__module__", "") == "msgpack_numpy":
        unpackb = msgpack.fallback.unpackb
    return unpackb


def _numpy_or_dict(obj: dict[Any, Any]) -> Any:
    """msgpack-numpy's decoding of a map, except of an object array: it would unpickle code from the network."""
    if obj.get(b"nd") is True and obj.get(b"kind") == b"O":
        raise ValueError("an object array (msgpack-numpy would unpickle it) is refused")
    return _modules()[2].decode(obj)


def encode(name: str, doc: Mapping[str, Any]) -> bytes:
    """One document as ``bluesky_kafka.Publisher`` writes it."""
    _, msgpack, msgpack_numpy = _modules()
    payload: bytes = msgpack.packb((name, doc), default=msgpack_numpy.encode)
    return payload


def decode(payload: bytes) -> tuple[str, dict[str, Any]]:
    """``(name, doc)`` from a message's value; ValueError says what is wrong with it.

    Arrays of Python objects are refused: msgpack-numpy stores them pickled, and unpickling a
    message from the network would run whatever code it names.
    """
    try:
        message = _unpackb()(payload, object_hook=_numpy_or_dict, strict_map_key=False)
    except Exception as exc:
        raise ValueError(f"not msgpack: {type(exc).__name__}: {exc}") from exc
    if not isinstance(message, (list, tuple)) or len(message) != 2:
        raise ValueError(f"not a (name, document) pair but a {type(message).__name__}")
    name, doc = message
    if name not in DOCUMENT_NAMES:
        raise ValueError(f"unknown document name {name!r}")
    if not isinstance(doc, dict):
        raise ValueError(f"a {name} document must be a dict, got {type(doc).__name__}")
    return name, doc


@dataclass(frozen=True)
class KafkaCluster:
    """Where a Kafka cluster is and how to talk to it.

    Parameters
    ----------
    bootstrap_servers : str
        ``host:port[,host:port...]`` of one or more brokers.
    common : mapping
        librdkafka properties for every client (``security.protocol``, ``sasl.*``, ``ssl.*``...).
    producer : mapping
        librdkafka properties for the republishing producer only (``acks``, ``compression.codec``...).
    consumer : mapping
        librdkafka properties for the consumers only.
    """

    bootstrap_servers: str
    common: Mapping[str, Any] = field(default_factory=dict)
    producer: Mapping[str, Any] = field(default_factory=dict)
    consumer: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        servers = [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()]
        if not servers:
            raise KafkaConfigError("no Kafka bootstrap server given (host:port[,host:port...])")
        for server in servers:
            host, _, port = server.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise KafkaConfigError(f"Kafka bootstrap server {server!r} is not host:port")

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], bootstrap_servers: str | None = None) -> KafkaCluster:
        """Read a YAML file in the layout of a beamline's ``/etc/bluesky/kafka.yml`` (NSLS-II's).

        Keys read (others are ignored): ``bootstrap_servers`` (a list or a comma-separated string;
        ``bootstrap_servers`` given here wins), ``producer_consumer_security_config`` (properties of
        every client), ``runengine_producer_config`` (properties of the producer) and
        ``consumer_config`` (properties of the consumers).

        Raises
        ------
        KafkaConfigError
            The file cannot be read or parsed, a section is not a mapping, or no bootstrap server
            is given anywhere.
        """
        import yaml

        path = Path(path).expanduser()
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise KafkaConfigError(f"cannot read the Kafka configuration {path}: {exc}") from exc
        except yaml.YAMLError as exc:
            raise KafkaConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise KafkaConfigError(f"{path}: a Kafka configuration must be a mapping, got {type(data).__name__}")
        sections = {}
        for key in ("producer_consumer_security_config", "runengine_producer_config", "consumer_config"):
            section = data.get(key) or {}
            if not isinstance(section, dict):
                raise KafkaConfigError(f"{path}: '{key}' must be a mapping of librdkafka properties, "
                                       f"got {type(section).__name__}")
            sections[key] = section
        servers = bootstrap_servers or data.get("bootstrap_servers")
        if isinstance(servers, (list, tuple)):
            servers = ",".join(str(s) for s in servers)
        if not servers:
            raise KafkaConfigError(f"{path} names no bootstrap_servers, and none were given")
        return cls(str(servers), common=sections["producer_consumer_security_config"],
                   producer=sections["runengine_producer_config"], consumer=sections["consumer_config"])

    def __repr__(self) -> str:  # the properties may hold secrets
        return f"KafkaCluster({self.bootstrap_servers!r})"

    def client_config(self, kind: str) -> dict[str, Any]:
        """librdkafka properties of a ``"consumer"`` or ``"producer"`` of this cluster."""
        own = self.consumer if kind == "consumer" else self.producer
        return {**self.common, **own, "bootstrap.servers": self.bootstrap_servers}

    def check_reachable(self, topics: Iterable[str] = (), timeout: float = 5.0) -> None:
        """Raise :class:`~bluesky_tomogan.serve.transport.Unreachable` unless a broker answers within
        ``timeout`` s; log a WARNING for each of ``topics`` the cluster does not have (yet)."""
        confluent_kafka, _, _ = _modules()
        from confluent_kafka.admin import AdminClient

        config = {key: value for key, value in self.client_config("consumer").items()
                  if key not in ("auto.offset.reset", "enable.auto.commit", "group.id")}
        config["log_level"] = 2  # each refused connection is logged otherwise; the exception says it once
        try:
            metadata = AdminClient(config, logger=log).list_topics(timeout=timeout)
        except confluent_kafka.KafkaException as exc:
            raise Unreachable(f"no Kafka broker answers at {self.bootstrap_servers} within {timeout:g} s "
                              f"({exc.args[0] if exc.args else exc})") from exc
        for topic in topics:
            if topic not in metadata.topics:
                log.warning("Kafka topic %r does not exist (yet) on %s: waiting for it to be made",
                            topic, self.bootstrap_servers)


def group_id_for(role: str, share: str | None = None) -> str:
    """A consumer group id: ``bluesky-tomogan-serve-K-of-N`` for a worker serving share K/N (each share
    reads every run, so each needs a group of its own), else a fresh one (``role`` plus a random tail) for
    a reader that wants every document and nothing stale (QC IOC, viewer)."""
    if share is not None:
        index, _, count = share.partition("/")
        return f"bluesky-tomogan-{role}-{index}-of-{count}"
    return f"bluesky-tomogan-{role}-{uuid.uuid4().hex[:12]}"


class KafkaSource:
    """Documents from Kafka topics, for :class:`~bluesky_tomogan.serve.worker.DenoisingWorker` and the
    other readers (the same ``subscribe``/``start``/``stop`` as
    :class:`~bluesky_tomogan.serve.transport.ZMQSource`).

    Parameters
    ----------
    cluster : KafkaCluster
        The brokers and client properties.
    topics : sequence of str
        Topics to read (e.g. ``"tst.bluesky.runengine.documents"``).
    group_id : str
        The consumer group (:func:`group_id_for`).
    resume : bool
        Commit the group's offset after each stop document handled, so that a restarted reader goes
        on after the last finished run (see the module docstring); False: never commit.
    poll_interval : float
        Seconds one poll waits for a message: how soon :meth:`stop` and :meth:`every` act.

    A message that cannot be decoded is logged (topic, partition, offset, size and why) and counted
    in :attr:`malformed`, and the stream goes on. A fatal client error (librdkafka's word: the client
    cannot go on, e.g. a fenced or unauthorised consumer) ends :meth:`start`, and is kept in
    :attr:`fatal_error`.
    """

    def __init__(self, cluster: KafkaCluster, topics: Sequence[str], group_id: str, *, resume: bool = True,
                 poll_interval: float = 0.1) -> None:
        confluent_kafka, _, _ = _modules()
        if not topics:
            raise KafkaConfigError("no Kafka topic to read")
        self.cluster = cluster
        self.topics = list(topics)
        self.group_id = group_id
        self.resume = resume
        self.poll_interval = poll_interval
        self.malformed = 0
        self.fatal_error: str | None = None  # why reading stopped on its own (the client cannot go on)
        self.assigned: list[tuple[str, int]] = []  # (topic, partition) pairs this reader has been given
        self._subscribers: list[Subscriber] = []
        self._timers: list[list[Any]] = []  # [period, next due (monotonic), func]
        self._stopped = threading.Event()
        self._kafka = confluent_kafka
        config = {**cluster.client_config("consumer"), "group.id": group_id, "enable.auto.commit": False}
        config.setdefault("auto.offset.reset", "latest")
        self._reset = str(config["auto.offset.reset"])
        # a cooperative assignor hands out partitions a few at a time: they are added, not set
        self._cooperative = "cooperative" in str(config.get("partition.assignment.strategy", ""))
        self._consumer = confluent_kafka.Consumer(config, logger=logging.getLogger(f"{__name__}.librdkafka"))
        self._consumer.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke)

    def __repr__(self) -> str:
        return f"KafkaSource({self.cluster.bootstrap_servers!r}, {self.topics}, group {self.group_id!r})"

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        # Fix where each partition starts now: after its committed offset, or (none committed) at its
        # end as it is at this moment. Left to librdkafka, "the end" is looked up a moment later, and a
        # document published in between (a run started right after the worker said it reads) is skipped.
        try:
            committed = consumer.committed(partitions, timeout=10)
            for partition, done in zip(partitions, committed, strict=True):
                if done.offset >= 0:
                    partition.offset = done.offset
                elif self._reset == "earliest":
                    partition.offset = consumer.get_watermark_offsets(partition, timeout=10)[0]
                else:
                    partition.offset = consumer.get_watermark_offsets(partition, timeout=10)[1]
            (consumer.incremental_assign if self._cooperative else consumer.assign)(partitions)
        except self._kafka.KafkaException as exc:  # librdkafka then places them itself
            log.warning("Kafka: could not fix where group %s starts reading (%s); librdkafka places it", self.group_id,
                        exc)
        given = [(p.topic, p.partition) for p in partitions]
        self.assigned = [*self.assigned, *given] if self._cooperative else given
        log.info("Kafka: reading %s as group %s", ", ".join(f"{t}[{p}]" for t, p in self.assigned) or "nothing",
                 self.group_id)

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        log.info("Kafka: partitions revoked from group %s: %s", self.group_id,
                 ", ".join(f"{p.topic}[{p.partition}]" for p in partitions))
        gone = {(p.topic, p.partition) for p in partitions}
        self.assigned = [tp for tp in self.assigned if tp not in gone]

    def subscribe(self, func: Subscriber) -> int:
        """Call ``func(name, doc)`` for every document; returns a token (its position)."""
        self._subscribers.append(func)
        return len(self._subscribers) - 1

    def every(self, seconds: float, func: Callable[[], Any]) -> None:
        """Call ``func()`` about every ``seconds`` on the reading thread, between documents (a GUI's events)."""
        self._timers.append([seconds, time.monotonic(), func])

    def start(self) -> None:
        """Read and dispatch documents until :meth:`stop` (blocks); the consumer leaves its group at the end."""
        try:
            while not self._stopped.is_set():
                message = self._consumer.poll(self.poll_interval)
                if message is not None:
                    self._handle(message)
                self._run_timers()
        finally:
            try:
                self._consumer.close()  # leave the group now, not after its session times out
            except RuntimeError:  # already closed
                pass

    def stop(self) -> None:
        """End :meth:`start` from another thread or a signal handler (within ``poll_interval``)."""
        self._stopped.set()

    def _handle(self, message: Any) -> None:
        error = message.error()
        if error is not None:
            if error.fatal():
                log.error("Kafka consumer error (fatal; reading stops): %s", error)
                self.fatal_error = str(error)
                self._stopped.set()
            else:
                log.warning("Kafka consumer: %s", error)
            return
        payload = message.value() or b""
        try:
            name, doc = decode(payload)
        except ValueError as exc:
            self.malformed += 1
            log.error("dropped a malformed message of %d bytes from Kafka %s[%d] at offset %d: %s", len(payload),
                      message.topic(), message.partition(), message.offset(), exc)
            return
        for func in self._subscribers:
            try:
                func(name, doc)
            except Exception:  # one reader's failure must not end the stream for the others
                log.exception("a subscriber raised on a %s document from Kafka", name)
        if name == "stop" and self.resume:
            try:
                self._consumer.commit(asynchronous=False)
            except self._kafka.KafkaException as exc:  # the next stop commits again
                log.warning("Kafka: could not commit the offset after run %s's stop: %s", doc.get("run_start"), exc)

    def _run_timers(self) -> None:
        now = time.monotonic()
        for timer in self._timers:
            if now >= timer[1]:
                timer[1] = now + timer[0]
                try:
                    timer[2]()
                except Exception:
                    log.exception("a periodic task of the Kafka reader raised")


class KafkaPublisher:
    """``(name, doc)`` to a Kafka topic, as ``bluesky_kafka.Publisher`` writes them, each run under its start
    uid as key (its documents stay in one partition, in order).

    Never blocks the caller for long, and never raises: a document that finds the producer's local
    queue full after one short wait, or that the producer refuses (larger than ``message.max.bytes``,
    1 MB by default), is dropped and counted (:attr:`dropped`), and a delivery that fails is counted
    (:attr:`failed`); both are logged, the first and then every 100th. At each stop document the
    producer is flushed for at most ``flush_timeout`` seconds.
    """

    def __init__(self, cluster: KafkaCluster, topic: str, *, flush_timeout: float = 10.0) -> None:
        confluent_kafka, _, _ = _modules()
        self.cluster = cluster
        self.topic = topic
        self.flush_timeout = flush_timeout
        self.dropped = 0
        self.failed = 0
        self._kafka = confluent_kafka
        self._producer = confluent_kafka.Producer(cluster.client_config("producer"),
                                                  logger=logging.getLogger(f"{__name__}.librdkafka"))
        self._run_of: dict[str, str] = {}  # descriptor, resource and stream resource uids -> run uid
        # the raw documents (the reading thread) and the derived ones (the callback's worker) may come at once
        self._keys_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"KafkaPublisher({self.cluster.bootstrap_servers!r}, {self.topic!r})"

    def _key(self, name: str, doc: Mapping[str, Any]) -> str:
        if name == "start":
            return str(doc.get("uid", ""))
        if name in ("descriptor", "resource", "stream_resource"):
            run = str(doc.get("run_start", ""))
            self._run_of[str(doc.get("uid", ""))] = run
            return run
        if name == "stop":
            run = str(doc.get("run_start", ""))
            self._run_of = {k: v for k, v in self._run_of.items() if v != run}
            return run
        parent = {"event": "descriptor", "event_page": "descriptor", "datum": "resource", "datum_page": "resource",
                  "stream_datum": "stream_resource"}.get(name)
        return self._run_of.get(str(doc.get(parent, "")), "") if parent else ""

    def __call__(self, name: str, doc: Mapping[str, Any]) -> None:
        try:
            value = encode(name, doc)
        except Exception as exc:
            self._count("dropped", f"a {name} document could not be encoded ({type(exc).__name__}: {exc})")
            return
        with self._keys_lock:
            key = self._key(name, doc) or None
        for attempt in range(2):
            try:
                self._producer.produce(self.topic, value=value, key=key, on_delivery=self._delivered)
                break
            except BufferError:  # the local queue is full: let it drain once, briefly
                if attempt:
                    self._count("dropped", f"the producer's queue to {self.topic} is full")
                    return
                self._producer.poll(0.5)
            except self._kafka.KafkaException as exc:  # refused at once: too large for the cluster, ...
                self._count("dropped", f"a {name} document of {len(value)} bytes was refused: {exc.args[0]}")
                return
        self._producer.poll(0)
        if name == "stop":
            self.flush()

    def flush(self) -> None:
        """Deliver what is queued, waiting at most ``flush_timeout`` seconds."""
        left = self._producer.flush(self.flush_timeout)
        if left:
            log.warning("Kafka: %d messages to %s still undelivered after %g s", left, self.topic,
                        self.flush_timeout)

    def close(self) -> None:
        """Flush, as at a stop."""
        self.flush()

    def _delivered(self, error: Any, message: Any) -> None:
        if error is not None:
            self._count("failed", f"a message to {self.topic} was not delivered: {error}")

    def _count(self, what: str, why: str) -> None:
        count = getattr(self, what) + 1
        setattr(self, what, count)
        if count == 1 or count % 100 == 0:
            log.error("Kafka publisher: %s (%d %s so far)", why, count, what)
