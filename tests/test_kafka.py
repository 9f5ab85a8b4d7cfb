"""Kafka in and out of the worker, on librdkafka's own mock cluster (no broker installs here).

The mock cluster is a real Kafka protocol endpoint that librdkafka starts inside the client that
asks for it (``test.mock.num.brokers``); other clients, in this process or in the worker's, reach it
over TCP at the address its metadata gives. It makes a topic when something is first produced to
it (it has no controller to ask), so the tests make theirs that way before anyone reads them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

confluent_kafka = pytest.importorskip("confluent_kafka", reason="Kafka needs the kafka extra (in the test extras)")
bluesky_kafka = pytest.importorskip("bluesky_kafka", reason="the RunEngine side is bluesky-kafka (a test extra)")

from bluesky_tomogan.serve.kafka import (  # noqa: E402
    KafkaCluster,
    KafkaConfigError,
    KafkaPublisher,
    KafkaSource,
    decode,
    encode,
)
from bluesky_tomogan.serve.transport import Unreachable  # noqa: E402
from bluesky_tomogan.storage import close_local_tiled, local_tiled, server_of  # noqa: E402

from .processes import free_port, wait_until  # noqa: E402
from .test_serve import ANGLES, derived_rows, make_scan  # noqa: E402

BIN = Path(sys.executable).parent


@pytest.fixture
def tiled(tmp_path):
    """An embedded Tiled server for the worker's runs: (client, uri)."""
    client = local_tiled(tmp_path / "tiled-store")  # where make_scan's detector writes
    yield client, server_of(client).uri
    close_local_tiled(client)


@pytest.fixture
def broker():
    """A mock Kafka cluster of one broker: its ``host:port``, and a producer that can make topics."""
    owner = confluent_kafka.Producer({"test.mock.num.brokers": 1, "log_level": 0})
    (meta,) = owner.list_topics(timeout=10).brokers.values()
    yield f"{meta.host}:{meta.port}", owner
    owner.flush(5)


def re_publisher(topic: str, address: str):
    """The RunEngine host's publisher, as at NSLS-II (quiet once the mock cluster is gone)."""
    return bluesky_kafka.Publisher(topic, address, key="re-host", flush_on_stop_doc=True,
                                   producer_config={"log_level": 0})


def make_topics(owner, *names: str) -> None:
    """The mock cluster makes a topic at its first message: one that no reader starting later will see."""
    for name in names:
        owner.produce(name, b"made")
    assert owner.flush(10) == 0


def collect(source: KafkaSource) -> tuple[list, threading.Thread]:
    """Read ``source`` on a thread into a list of ``(name, doc)``, from once its partitions are placed."""
    got: list = []
    source.subscribe(lambda name, doc: got.append((name, doc)))
    thread = threading.Thread(target=source.start, daemon=True)
    thread.start()
    wait_until(lambda: source.assigned, 30, "the reader's partitions")
    return got, thread


def one_run_through(source: KafkaSource, address: str, topic: str) -> list[str]:
    """Publish a small run to ``topic`` as the RunEngine host does, read it with ``source``: the names read."""
    got, thread = collect(source)
    publish = re_publisher(topic, address)
    for name, doc in run_documents("r"):
        publish(name, doc)
    wait_until(lambda: len(got) == 5, 30, "the run's documents")
    source.stop()
    thread.join(10)
    return [name for name, _ in got]


def run_documents(uid: str, frames: int = 2):
    """A small run's documents, with an array in each event, as a RunEngine would emit them."""
    yield "start", {"uid": uid, "time": 1.0, "scan_id": 1}
    yield "descriptor", {"uid": f"{uid}-d", "run_start": uid, "time": 1.0, "name": "primary",
                         "data_keys": {"x": {"dtype": "array", "shape": [2, 3], "source": "sim"}}}
    for seq in range(1, frames + 1):
        yield "event", {"uid": f"{uid}-e{seq}", "descriptor": f"{uid}-d", "seq_num": seq, "time": 1.0,
                        "data": {"x": np.full((2, 3), seq, np.float32)}, "timestamps": {"x": 1.0}}
    yield "stop", {"uid": f"{uid}-s", "run_start": uid, "time": 2.0, "exit_status": "success"}


def test_documents_of_bluesky_kafka_reach_the_reader_and_ours_reach_bluesky_kafka(broker):
    """The wire format both ways: bluesky_kafka.Publisher -> KafkaSource; KafkaPublisher -> bluesky_kafka."""
    address, owner = broker
    make_topics(owner, "raw", "ours")
    cluster = KafkaCluster(address)
    source = KafkaSource(cluster, ["raw"], "reader")
    got, thread = collect(source)
    theirs = re_publisher("raw", address)
    for name, doc in run_documents("run-a"):
        theirs(name, doc)
    theirs.flush()
    wait_until(lambda: len(got) == 5, 30, "the run's documents")
    source.stop()
    thread.join(10)
    assert [name for name, _ in got] == ["start", "descriptor", "event", "event", "stop"]
    np.testing.assert_array_equal(got[3][1]["data"]["x"], np.full((2, 3), 2, np.float32))
    assert got[3][1]["data"]["x"].dtype == np.float32

    received: list = []
    dispatcher = bluesky_kafka.RemoteDispatcher(["ours"], address, "bluesky-kafka-reader",
                                                consumer_config={"auto.offset.reset": "earliest"})
    dispatcher.subscribe(lambda name, doc: received.append((name, doc)))
    ours = KafkaPublisher(cluster, "ours")
    for name, doc in run_documents("run-b"):
        ours(name, doc)  # the stop flushes
    deadline = time.monotonic() + 30
    dispatcher.start(continue_polling=lambda: len(received) < 5 and time.monotonic() < deadline)
    assert [name for name, _ in received] == ["start", "descriptor", "event", "event", "stop"]
    np.testing.assert_array_equal(received[2][1]["data"]["x"], np.full((2, 3), 1, np.float32))
    assert ours.dropped == ours.failed == 0


def test_every_document_of_a_run_is_keyed_by_its_start_uid(broker):
    """One partition per run, in order, however many partitions the topic has (the NSLS-II convention)."""
    address, owner = broker
    make_topics(owner, "keyed")
    ours = KafkaPublisher(KafkaCluster(address), "keyed")
    for uid in ("run-a", "run-b"):
        for name, doc in run_documents(uid, frames=3):
            ours(name, doc)
    consumer = confluent_kafka.Consumer({"bootstrap.servers": address, "group.id": "keys",
                                         "auto.offset.reset": "earliest"})
    consumer.subscribe(["keyed"])
    keys: dict[str, list[str]] = {}
    deadline = time.monotonic() + 30
    while sum(map(len, keys.values())) < 12 and time.monotonic() < deadline:
        message = consumer.poll(0.2)
        if message is None or message.error() or message.value() == b"made":
            continue
        name, doc = decode(message.value())
        keys.setdefault(message.key().decode(), []).append(name)
    consumer.close()
    expected = ["start", "descriptor", "event", "event", "event", "stop"]
    assert keys == {"run-a": expected, "run-b": expected}


def test_a_document_too_large_for_the_cluster_is_dropped_counted_and_the_run_goes_on(broker, caplog):
    address, owner = broker
    make_topics(owner, "small")
    ours = KafkaPublisher(KafkaCluster(address), "small")
    documents = list(run_documents("big"))
    documents[2][1]["data"]["x"] = np.zeros((1024, 1024), np.uint16)  # 2 MB inline: over the 1 MB default
    for name, doc in documents:
        ours(name, doc)  # never raises
    assert ours.dropped == 1 and ours.failed == 0
    assert any("event document of" in r.getMessage() and "refused" in r.getMessage() for r in caplog.records)


def test_a_reader_that_resumes_goes_on_after_the_last_run_it_finished(broker):
    """A worker restarted in the same group gets the runs that started while it was down; a reader that
    does not resume (QC IOC, viewer) starts at the newest documents."""
    address, owner = broker
    make_topics(owner, "runs")
    # the mock cluster waited out the departed member's session (45 s by default) before it gave its partitions
    # to the restarted one; a short session keeps the test short
    cluster = KafkaCluster(address, consumer={"session.timeout.ms": 6000, "heartbeat.interval.ms": 500})
    publish = re_publisher("runs", address)

    first = KafkaSource(cluster, ["runs"], "worker")
    got, thread = collect(first)
    for name, doc in run_documents("finished"):
        publish(name, doc)
    wait_until(lambda: len(got) == 5, 30, "the first run")
    first.stop()
    thread.join(10)

    for name, doc in run_documents("while-down"):  # nobody reads now
        publish(name, doc)

    again = KafkaSource(cluster, ["runs"], "worker")
    fresh = KafkaSource(cluster, ["runs"], "viewer", resume=False)
    got_again, thread_again = collect(again)
    got_fresh, thread_fresh = collect(fresh)
    for name, doc in run_documents("after"):
        publish(name, doc)
    wait_until(lambda: len(got_again) == 10 and len(got_fresh) == 5, 30, "both readers")
    for source, thread in ((again, thread_again), (fresh, thread_fresh)):
        source.stop()
        thread.join(10)
    runs = [doc["uid"] for name, doc in got_again if name == "start"]
    assert runs == ["while-down", "after"]  # not "finished" again
    assert [doc["uid"] for name, doc in got_fresh if name == "start"] == ["after"]


def test_a_cooperative_assignor_gets_its_partitions_added_and_reads_from_their_end(broker):
    """With ``partition.assignment.strategy: cooperative-sticky`` (a beamline's consumer_config) partitions
    are added to what the reader has, not set, and where reading starts is still fixed when they come."""
    address, owner = broker
    make_topics(owner, "coop")
    cluster = KafkaCluster(address, consumer={"partition.assignment.strategy": "cooperative-sticky"})
    source = KafkaSource(cluster, ["coop"], "reader")
    assert one_run_through(source, address, "coop") == ["start", "descriptor", "event", "event", "stop"]


def test_a_malformed_message_is_counted_and_the_stream_goes_on(broker, caplog):
    address, owner = broker
    make_topics(owner, "mixed")
    source = KafkaSource(KafkaCluster(address), ["mixed"], "reader")
    got, thread = collect(source)
    pickled_object_array = encode("event", {"uid": "e", "data": {"x": np.array([object()], dtype=object)}})
    for payload in (b"\x00 not msgpack", encode("not-a-document", {}), b"\x92\xa5start\x01",  # ["start", 1]
                    pickled_object_array, encode(*next(run_documents("good")))):
        owner.produce("mixed", payload, key="k")
    owner.flush(10)
    wait_until(lambda: got, 30, "the good document")
    time.sleep(0.5)
    source.stop()
    thread.join(10)
    assert [name for name, _ in got] == ["start"] and source.malformed == 4
    reasons = " ".join(r.getMessage() for r in caplog.records if "malformed" in r.getMessage())
    assert "not msgpack" in reasons and "unknown document name" in reasons and "must be a dict" in reasons
    assert "object array" in reasons


def test_a_fatal_client_error_ends_reading_and_says_why_and_a_passing_one_does_not(broker):
    address, owner = broker
    make_topics(owner, "docs")
    source = KafkaSource(KafkaCluster(address), ["docs"], "reader")

    class Failed:  # what poll() returns for a client error (librdkafka's fatal ones cannot be caused here)
        def __init__(self, fatal):
            self.fatal = fatal

        def error(self):
            fatal = self.fatal
            return type("KafkaError", (), {"fatal": lambda _: fatal, "__str__": lambda _: "fenced"})()

    source._handle(Failed(False))
    assert source.fatal_error is None
    source._handle(Failed(True))
    assert source.fatal_error == "fenced"
    source.start()  # returns at once: reading has ended, and the consumer leaves its group


def test_a_subscriber_that_raises_costs_only_its_own_call(broker):
    address, owner = broker
    make_topics(owner, "docs")
    source = KafkaSource(KafkaCluster(address), ["docs"], "reader")

    def broken(name, doc):
        raise RuntimeError("a viewer bug")

    source.subscribe(broken)
    assert len(one_run_through(source, address, "docs")) == 5  # every document reached the next subscriber


def test_the_cluster_settings_read_a_beamline_kafka_yml_and_hide_secrets(tmp_path):
    config = tmp_path / "kafka.yml"
    config.write_text("abort_run_on_kafka_exception: true\n"
                      "bootstrap_servers:\n  - kafka1:9092\n  - kafka2:9092\n"
                      "producer_consumer_security_config:\n  security.protocol: SASL_SSL\n"
                      "  sasl.mechanisms: SCRAM-SHA-512\n  sasl.username: beamline\n  sasl.password: hunter2\n"
                      "runengine_producer_config:\n  acks: 0\n  compression.codec: snappy\n")
    cluster = KafkaCluster.from_file(config)
    assert cluster.bootstrap_servers == "kafka1:9092,kafka2:9092"
    consumer, producer = cluster.client_config("consumer"), cluster.client_config("producer")
    assert consumer["sasl.password"] == producer["sasl.password"] == "hunter2"
    assert producer["compression.codec"] == "snappy" and "compression.codec" not in consumer
    assert "hunter2" not in repr(cluster)
    assert KafkaCluster.from_file(config, bootstrap_servers="here:9092").bootstrap_servers == "here:9092"

    for text, message in (("bootstrap_servers: [a:1]\nconsumer_config: 3\n", "'consumer_config' must be a mapping"),
                          ("acks: 1\n", "names no bootstrap_servers"),
                          ("bootstrap_servers: [a:1\n", "not valid YAML"),
                          ("bootstrap_servers: [nohost]\n", "is not host:port")):
        config.write_text(text)
        with pytest.raises(KafkaConfigError, match=message):
            KafkaCluster.from_file(config)
    with pytest.raises(KafkaConfigError, match="cannot read"):
        KafkaCluster.from_file(tmp_path / "missing.yml")


def test_no_broker_is_a_clear_error_naming_the_address_and_the_wait():
    with pytest.raises(Unreachable, match=r"no Kafka broker answers at 127\.0\.0\.1:\d+ within 2 s"):
        KafkaCluster(f"127.0.0.1:{free_port()}").check_reachable(timeout=2)


@pytest.mark.parametrize("args, message", [
    (["--kafka-in", "docs"], "need the brokers"),
    (["--kafka-in", "docs", "--kafka-bootstrap", "127.0.0.1:{port}"], "no Kafka broker answers"),
    (["--kafka-in", "docs", "--kafka-config", "{tmp}/missing.yml"], "cannot read the Kafka configuration"),
    (["--kafka-in", "docs", "--kafka-bootstrap", "nohost"], "is not host:port"),
    (["--zmq-in", "localhost:{port}", "--kafka-in", "docs"], "not allowed with argument"),
    (["--zmq-in", "localhost:{port}", "--kafka-out", "derived"], "needs the brokers"),
    (["--kafka-in", "docs", "--kafka-bootstrap", "127.0.0.1:{port}", "--prefix", "tomo"], "0MQ setting"),
])
def test_bad_kafka_input_to_serve_is_a_clear_error_and_exit_status_2(tmp_path, args, message):
    port = free_port()
    args = [a.format(port=port, tmp=tmp_path) for a in args]
    result = subprocess.run([str(BIN / "bluesky-tomogan"), "serve", *args, "--store", "none"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


@pytest.mark.parametrize("command", ["qc-ioc", "view"])
def test_the_other_readers_say_the_same_about_a_missing_broker(tmp_path, command):
    extra = ["--save", str(tmp_path)] if command == "view" else []
    result = subprocess.run([str(BIN / "bluesky-tomogan"), command, "--kafka-in", "docs", "--kafka-bootstrap",
                             f"127.0.0.1:{free_port()}", *extra], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "no Kafka broker answers" in result.stderr


def test_a_run_published_to_kafka_is_denoised_stored_and_republished_and_view_draws_it(RE, broker, tiled, tmp_path):
    """As at an NSLS-II beamline: the RunEngine publishes with bluesky-kafka; `serve --kafka-in` denoises,
    stores the run in Tiled and republishes the derived documents to a topic; `view --kafka-in` on that
    topic writes the pictures."""
    address, owner = broker
    client, uri = tiled
    make_topics(owner, "tst.bluesky.runengine.documents", "tst.tomogan.derived")
    views = tmp_path / "views"
    logs = {name: tmp_path / f"{name}.log" for name in ("worker", "view")}
    common = ["--kafka-bootstrap", address]
    commands = {
        "worker": ["serve", "--kafka-in", "tst.bluesky.runengine.documents", *common, "--kafka-out",
                   "tst.tomogan.derived", "--tiled", uri, "--store", "run", "--backend", "onnxruntime",
                   "--state-dir", str(tmp_path / "state"), "--grace", "30"],
        "view": ["view", "--kafka-in", "tst.tomogan.derived", *common, "--save", str(views), "--interval", "0"],
    }
    processes = {}
    env = dict(os.environ, BLUESKY_TOMOGAN_DATA=str(tmp_path / "worker-data"), MPLBACKEND="Agg")
    try:
        for name, command in commands.items():
            with open(logs[name], "w") as log:
                processes[name] = subprocess.Popen([str(BIN / "bluesky-tomogan"), "-v", *command], stdout=log,
                                                   stderr=subprocess.STDOUT, env=env)
        for name, process in processes.items():
            wait_until(lambda log=logs[name], process=process: "Kafka: reading" in log.read_text()
                       or process.poll() is not None, 120, f"the {name} to read its topic")
            assert process.poll() is None, logs[name].read_text()
        RE.subscribe(re_publisher("tst.bluesky.runengine.documents", address))
        (uid,) = RE(make_scan(tmp_path, "kafka"))
        wait_until(lambda: derived_rows(client, uid) == ANGLES, 120, "the worker's denoised stream")
        wait_until(lambda: (views / "frames.png").exists(), 60, "the viewer's picture")
    finally:
        codes = {}
        for name, process in processes.items():
            process.send_signal(signal.SIGTERM)
            codes[name] = process.wait(60)
    assert codes == {"worker": 0, "view": 0}, {n: p.read_text()[-3000:] for n, p in logs.items()}
    run = client[uid]
    assert run.metadata["stop"]["exit_status"] == "success" and run.metadata["stop"]["num_events"]["denoised"] == ANGLES
    assert (views / "frames.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    worker_log = logs["worker"].read_text()
    assert "malformed" not in worker_log and "Traceback" not in worker_log
