"""``bluesky-tomogan serve`` in real processes: a 0MQ proxy, the worker, the RunEngine here, Tiled here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from bluesky_tiled_plugins import TiledWriter

from bluesky_tomogan import TomoGANCallback, load_denoiser
from bluesky_tomogan.devices import SimTomoDetector, SimTomoStage
from bluesky_tomogan.plans import tomo_scan
from bluesky_tomogan.serve import RunShare
from bluesky_tomogan.simulate.tomography import angles_deg
from bluesky_tomogan.storage import close_local_tiled, frames_directory, local_tiled, server_of

zmq = pytest.importorskip("zmq", reason="the worker needs pyzmq (a core dependency)")
from bluesky.callbacks.zmq import Publisher  # noqa: E402

from .processes import free_port, listening, wait_until  # noqa: E402

BIN = Path(sys.executable).parent
ANGLES = 24





@pytest.fixture
def proxy():
    """``bluesky-0MQ-proxy`` in its own process: (in port, out port)."""
    ports = free_port(), free_port()
    process = subprocess.Popen([str(BIN / "bluesky-0MQ-proxy"), "--in-address", str(ports[0]),
                                "--out-address", str(ports[1])], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: listening(ports[1]) and listening(ports[0]), 20, "the 0MQ proxy")
        yield ports
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def tiled(tmp_path):
    client = local_tiled(tmp_path / "tiled-store")
    yield client, server_of(client).uri
    close_local_tiled(client)


WORKERS: list = []


@pytest.fixture(autouse=True)
def kill_workers_left():
    """A failed test must not leave a worker holding connections to the embedded Tiled server."""
    yield
    while WORKERS:
        process = WORKERS.pop().process
        if process.poll() is None:
            process.kill()
            process.wait(10)


class Worker:
    """``bluesky-tomogan serve`` as a subprocess; its log goes to a file the test can read."""

    def __init__(self, tmp_path: Path, out_port: int, uri: str, *extra: str) -> None:
        WORKERS.append(self)
        self.log = tmp_path / f"worker-{time.monotonic_ns()}.log"
        env = dict(os.environ, BLUESKY_TOMOGAN_DATA=str(tmp_path / "worker-data"))
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [str(BIN / "bluesky-tomogan"), "-v", "serve", "--zmq-in", f"localhost:{out_port}", "--tiled", uri,
                 "--backend", "onnxruntime", "--state-dir", str(tmp_path / "state"), "--grace", "30", *extra],
                stdout=log, stderr=subprocess.STDOUT, env=env)
        wait_until(lambda: "serving;" in self.text() or self.process.poll() is not None, 90, "the worker to start")
        assert self.process.poll() is None, self.text()
        time.sleep(1.0)  # 0MQ subscriptions propagate asynchronously ("slow joiner")

    def text(self) -> str:
        return self.log.read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)


def make_scan(tmp_path: Path, name: str, store: str = "tiled-store"):
    stage = SimTomoStage(name="stage")
    # raw frames where the embedded Tiled server may read them
    directory = frames_directory(tmp_path / store) / name
    det = SimTomoDetector(name="det", stage=stage, shape=(64, 64), directory=directory, seed=5, simulate_timing=False)
    det.photon_flux.put(2e4)
    return tomo_scan(det, stage, list(angles_deg(ANGLES)), n_darks=2, n_flats=2)


CLOSE: list = []


@pytest.fixture(autouse=True)
def close_connections():
    """The RunEngine host's publishers and Tiled clients of a test."""
    yield
    while CLOSE:
        CLOSE.pop()()


def publishing_RE(RE, uri: str | None, in_port: int):
    """The RunEngine host: publishes every document to the proxy, and stores its raw run in Tiled if ``uri``.

    The host's writer keeps TiledWriter's default batching, so its table rows go in at the stop: the
    embedded Tiled server (SQLite through ADBC) crashed with heap corruption when two processes appended
    to tables at the same moment (seen while writing these tests); a beamline's Tiled runs on PostgreSQL.
    """
    from tiled.client import from_uri

    if uri is not None:
        host_client = from_uri(uri)
        CLOSE.append(host_client.context.close)
        RE.subscribe(TiledWriter(host_client))
    publisher = Publisher(("localhost", in_port))
    CLOSE.append(publisher.close)
    RE.subscribe(publisher)
    time.sleep(0.5)  # the publisher's connection to the proxy
    return publisher


def derived_rows(client, uid: str, stream: str = "denoised") -> int:
    try:
        return len(client[uid][stream]["det_image_denoised"])
    except KeyError:
        return 0


def test_served_run_stores_the_same_raw_and_derived_arrays_as_the_in_process_callback(RE, proxy, tiled, tmp_path):
    client, uri = tiled
    worker = Worker(tmp_path, proxy[1], uri, "--store", "run")  # the host only publishes; the worker stores all
    try:
        publishing_RE(RE, None, proxy[0])
        (served,) = RE(make_scan(tmp_path, "served"))
        wait_until(lambda: derived_rows(client, served) == ANGLES, 90, "the worker's denoised stream")
        wait_until(lambda: derived_rows(client, served, "flat_denoised") == 2, 30, "the denoised flats")
    finally:
        assert worker.stop() == 0, worker.text()
    assert "stopped with" not in worker.text()  # nothing left in flight

    from bluesky import RunEngine

    RE2 = RunEngine({})
    cb = TomoGANCallback(load_denoiser("tomogan-projection", backend="onnxruntime"), streams=["primary", "flat"])
    cb.subscribe(TiledWriter(client))
    RE2.subscribe(cb)
    (local,) = RE2(make_scan(tmp_path, "local"))

    a, b = client[served], client[local]
    np.testing.assert_array_equal(a["primary"]["det_image"].read(), b["primary"]["det_image"].read())
    np.testing.assert_allclose(a["denoised"]["det_image_denoised"].read(), b["denoised"]["det_image_denoised"].read(),
                               rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(a["flat_denoised"]["det_image_denoised"].read(),
                               b["flat_denoised"]["det_image_denoised"].read(), rtol=1e-5, atol=1e-3)
    assert list(a["denoised"]["det_image_source_seq_num"].read()) == list(range(1, ANGLES + 1))
    assert a.metadata["stop"]["exit_status"] == "success"
    assert a.metadata["stop"]["num_events"]["denoised"] == ANGLES


def test_a_killed_worker_leaves_raw_data_complete_and_the_next_one_records_the_missing_frames(
        RE, proxy, tiled, tmp_path):
    client, uri = tiled
    worker = Worker(tmp_path, proxy[1], uri)
    publishing_RE(RE, uri, proxy[0])

    def kill_at_frame_8(name, doc):
        if name in ("event", "event_page") and worker.process.poll() is None:
            seq = doc["seq_num"] if name == "event" else doc["seq_num"][-1]
            if seq == 8 and client is not None:
                worker.process.send_signal(signal.SIGKILL)
                worker.process.wait(10)

    RE.subscribe(kill_at_frame_8, "event")
    (uid,) = RE(make_scan(tmp_path, "killed"))
    assert worker.process.returncode == -signal.SIGKILL
    run = client[uid]
    assert len(run["primary"]["det_image"]) == ANGLES and run.metadata["stop"]["exit_status"] == "success"
    assert np.isfinite(run["primary"]["det_image"].read()).all()

    restarted = Worker(tmp_path, proxy[1], uri)
    try:
        record = wait_until(lambda: client[uid].metadata.get("bluesky_tomogan"), 30, "the gap record")
    finally:
        assert restarted.stop() == 0, restarted.text()
    assert record["incomplete"] is True and "stopped before the run ended" in record["reason"]
    assert record["raw_rows"]["primary"] == ANGLES and record["derived_rows"].get("denoised", 0) < ANGLES
    assert "recorded missing derived frames" in restarted.text()


def test_sigterm_during_a_run_finishes_it_then_exits(RE, proxy, tiled, tmp_path):
    client, uri = tiled
    worker = Worker(tmp_path, proxy[1], uri, "--store", "run")
    publishing_RE(RE, None, proxy[0])

    def term_at_frame_4(name, doc):
        if doc["seq_num"] == 4 and worker.process.poll() is None:
            worker.process.send_signal(signal.SIGTERM)

    RE.subscribe(term_at_frame_4, "event")
    (uid,) = RE(make_scan(tmp_path, "terminated"))
    assert worker.process.wait(60) == 0, worker.text()
    wait_until(lambda: derived_rows(client, uid) == ANGLES, 30, "the stored run")  # finished before the exit
    assert "shutting down: 1 runs in flight" in worker.text()
    assert (tmp_path / "state" / "runs.json").read_text().strip() == "{}"


def test_a_malformed_message_is_logged_recorded_in_the_run_and_the_stream_goes_on(RE, proxy, tiled, tmp_path):
    client, uri = tiled
    worker = Worker(tmp_path, proxy[1], uri, "--store", "run")
    try:
        publisher = publishing_RE(RE, None, proxy[0])
        publisher._socket.send(b" start \x80\x04not-a-pickle")  # between runs: logged, nothing to record

        def garbage_at_frame_3(name, doc):
            if doc["seq_num"] == 3:
                publisher._socket.send(b" event_page \x80\x04not-a-pickle-either")  # the RE thread's own socket

        RE.subscribe(garbage_at_frame_3, "event")
        (uid,) = RE(make_scan(tmp_path, "after-garbage"))
        wait_until(lambda: derived_rows(client, uid) == ANGLES, 90, "the worker's denoised stream")
        record = wait_until(lambda: client[uid].metadata.get("bluesky_tomogan"), 30, "the recorded gap")
    finally:
        assert worker.stop() == 0, worker.text()
    assert worker.text().count("dropped a malformed message") == 2
    assert record["malformed_messages"] == 1 and "undecodable" in record["reason"]


@pytest.mark.parametrize("args, message", [
    (["--zmq-in", "localhost:{closed}", "--store", "none"], "nothing listens at localhost:"),
    (["--zmq-in", "localhost:{out}", "--tiled", "http://localhost:{closed}/api"], "refused"),
    (["--zmq-in", "not-an-address", "--store", "none"], "is not host:port"),
    (["--zmq-in", "localhost:{out}", "--share", "2/2", "--store", "none"], "need 0 <= index < count"),
    (["--zmq-in", "localhost:{out}", "--fallback", "tomogan-projection-s2d-aio", "--store", "none"],
     "is for policy 'adaptive'"),
    (["--zmq-in", "localhost:{out}", "--warm-up", "64", "64", "--store", "none"], "is for policy 'adaptive'"),
    (["--zmq-in", "localhost:{out}", "--abandon-after", "-5", "--store", "none"], "abandon_after must be"),
    (["--zmq-in", "localhost:{out}", "--slice-self-ensemble", "8", "--store", "none"], "is for the slices of"),
    (["--zmq-in", "localhost:{out}", "--slice-model", "my-slice", "--store", "none"], "is for the slices of"),
    (["--zmq-in", "localhost:{out}", "--center", "255.4", "--store", "none"], "(255.4 px) is for the slices of"),
    (["--zmq-in", "localhost:{out}", "--binning", "2", "--store", "none"], "a binning (2) is for the slices of"),
    (["--zmq-in", "localhost:{out}", "--reconstruct", "--binning", "0", "--store", "none"], "binning must be"),
    (["--zmq-in", "localhost:{out}", "--reconstruct", "--slice-model", "no-such-model", "--store", "none"],
     "no-such-model"),
    (["--zmq-in", "localhost:{out}", "--republish", "all", "--store", "none"], "needs --zmq-out"),
])
def test_bad_input_to_serve_is_a_clear_error_and_exit_status_2(proxy, tmp_path, args, message):
    closed = free_port()
    argv = [a.format(closed=closed, out=proxy[1]) for a in args]
    done = subprocess.run([str(BIN / "bluesky-tomogan"), "serve", *argv, "--state-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr, done.stderr


def test_run_shares_split_runs_between_workers():
    uids = [f"{i:08x}-run" for i in range(200)]
    shares = [RunShare.parse("0/2"), RunShare.parse("1/2")]
    served = [[u for u in uids if s.serves(u)] for s in shares]
    assert sorted(served[0] + served[1]) == sorted(uids) and not set(served[0]) & set(served[1])
    assert 60 < len(served[0]) < 140


def test_derived_streams_go_into_the_run_another_writer_stored(RE, tiled, tmp_path):
    """The split deployment's storage, in one process: the host's TiledWriter stores the raw run, then
    ``DerivedOnly(DerivedStreamsWriter)`` adds the derived streams to that same run."""
    from bluesky_tomogan.serve import DerivedOnly, DerivedStreamsWriter

    client, _ = tiled
    docs = []
    cb = TomoGANCallback(load_denoiser("tomogan-projection", backend="onnxruntime"), streams=["primary", "flat"])
    cb.subscribe(lambda name, doc: docs.append((name, doc)))
    RE.subscribe(cb)
    (uid,) = RE(make_scan(tmp_path, "split"))
    derived_descriptors = {d["uid"] for n, d in docs if n == "descriptor" and d["name"].endswith("denoised")}

    def is_derived(name, doc):
        if name == "descriptor":
            return doc["uid"] in derived_descriptors
        if name in ("event", "event_page", "stream_datum"):
            return doc["descriptor"] in derived_descriptors
        return name == "stream_resource" and doc["data_key"].endswith("_denoised")

    host = TiledWriter(client)
    for name, doc in docs:
        if not is_derived(name, doc):
            host(name, doc)  # the raw run, as the RunEngine host stores it
    assert sorted(client[uid]) == ["dark", "flat", "primary"]
    derived = DerivedOnly(DerivedStreamsWriter(client, attach_timeout=5))
    for name, doc in docs:
        derived(name, doc)
    run = client[uid]
    assert sorted(run) == ["dark", "denoised", "flat", "flat_denoised", "primary"]
    assert len(run["denoised"]["det_image_denoised"]) == ANGLES and np.isfinite(
        run["denoised"]["det_image_denoised"].read()).all()
    assert run["denoised"].metadata["bluesky_tomogan"]["rows"]["denoised"] == ANGLES
    assert run.metadata["stop"]["exit_status"] == "success"  # the host's stop, left alone


RE_HOST_WITH_REMOTE_SUSPENDERS = """
import json, sys, time
import ophyd
ophyd.set_cl("caproto")
from bluesky import RunEngine
from bluesky.callbacks.zmq import Publisher
from bluesky_tomogan.devices import SimTomoDetector, SimTomoStage
from bluesky_tomogan.plans import tomo_scan
from bluesky_tomogan.serve.ioc import install_qc_suspenders
from bluesky_tomogan.simulate.tomography import angles_deg

prefix, in_port, directory = sys.argv[1], int(sys.argv[2]), sys.argv[3]
RE = RunEngine({})
RE.record_interruptions = True
suspenders = install_qc_suspenders(RE, prefix)
publisher = Publisher(("localhost", in_port))
RE.subscribe(publisher)
time.sleep(0.5)
stage = SimTomoStage(name="stage")
det = SimTomoDetector(name="det", stage=stage, shape=(64, 64), directory=directory, seed=5)
# 0.2 s frames: the scan (about 6 s) outlasts the flag's way from the worker's QC through the IOC to the
# suspender here on a loaded machine (with 0.05 s frames a starved CI run saw the flag after the scan ended)
det.exposure_time.put(0.2)
det.photon_flux.put(2e4 / 0.2)
RE.subscribe(lambda name, doc: det.inject_fault("beam_dump", frames=2) if doc["seq_num"] == 8 else None, "event")
interruptions = []
RE.subscribe(lambda name, doc: interruptions.append(doc["data"].get("interruption")), "event")
stops = []
RE.subscribe(lambda name, doc: stops.append(doc), "stop")
(uid,) = RE(tomo_scan(det, stage, list(angles_deg(24)), n_darks=2, n_flats=2))
print("RESULT", json.dumps({"suspenders": [s._sig.name for s in suspenders],
                            "interruptions": [i for i in interruptions if isinstance(i, str)],
                            "exit_status": stops[-1]["exit_status"], "primary": stops[-1]["num_events"]["primary"]}))
publisher.close()
"""


@pytest.mark.parametrize("where", ["in the worker", "on its own"])
def test_a_qc_flag_of_the_workers_ioc_suspends_the_scan_in_the_runengine_process(proxy, tiled, tmp_path,
                                                                               monkeypatch, where):
    pytest.importorskip("caproto", reason="the QC IOC needs caproto (a core dependency)")
    _, uri = tiled
    port = free_port()  # Channel Access on localhost only, on a port of this test's own
    for key, value in {"EPICS_CA_AUTO_ADDR_LIST": "NO", "EPICS_CA_ADDR_LIST": "127.0.0.1",
                       "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1", "EPICS_CA_SERVER_PORT": str(port),
                       "EPICS_CAS_SERVER_PORT": str(port)}.items():
        monkeypatch.setenv(key, value)
    prefix = f"TOMOGAN{port}:QC:"
    extra: list[str] = []
    if where == "in the worker":
        worker = Worker(tmp_path, proxy[1], uri, "--store", "none", "--ioc-prefix", prefix, "--retry-after", "1")
    else:  # the worker republishes its documents; `bluesky-tomogan qc-ioc` serves the PVs from them
        out = free_port(), free_port()
        second = subprocess.Popen([str(BIN / "bluesky-0MQ-proxy"), "--in-address", str(out[0]),
                                   "--out-address", str(out[1])], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        wait_until(lambda: listening(out[0]) and listening(out[1]), 20, "the second proxy")
        with open(tmp_path / "ioc.log", "w") as ioc_log:  # the child keeps its own descriptor
            ioc = subprocess.Popen([str(BIN / "bluesky-tomogan"), "-v", "qc-ioc", "--zmq-in", f"localhost:{out[1]}",
                                    "--prefix", prefix, "--retry-after", "1"], stdout=ioc_log,
                                   stderr=subprocess.STDOUT)
        extra = ["--zmq-out", f"localhost:{out[0]}"]
        worker = Worker(tmp_path, proxy[1], uri, "--store", "none", *extra)
        wait_until(lambda: "QC IOC on its own" in (tmp_path / "ioc.log").read_text(), 60, "the IOC")
    try:
        host = subprocess.run([sys.executable, "-c", RE_HOST_WITH_REMOTE_SUSPENDERS, prefix, str(proxy[0]),
                               str(tmp_path / "frames")], capture_output=True, text=True, timeout=180)
    finally:
        assert worker.stop() == 0, worker.text()
        if extra:
            ioc.terminate()
            assert ioc.wait(30) == 0, (tmp_path / "ioc.log").read_text()
            second.terminate()
            second.wait(10)
    assert host.returncode == 0, host.stderr[-3000:]
    result = json.loads(host.stdout.split("RESULT", 1)[1])
    assert result["suspenders"] == ["tomogan_qc_beam_lost"]
    # the dark frames' flag, raised by QC in the worker, suspended the scan here; it resumed when the flag cleared
    assert any("tomogan_qc_beam_lost is high" in i for i in result["interruptions"])
    assert result["exit_status"] == "success" and result["primary"] == 24


def test_serve_with_an_embedded_tiled_server_stores_the_run(RE, proxy, tmp_path):
    from bluesky_tomogan.storage import local_tiled as open_store

    store = tmp_path / "worker-store"
    # a root map that matches nothing here: the frames are read where the documents say; the denoised frames
    # stored as the detector's counts, compressed
    worker = Worker(tmp_path, proxy[1], str(store), "--store", "run", "--root-map", "/ioc/data=/mnt/beamline",
                    "--frame-dtype", "source", "--compression", "lz4")
    publishing_RE(RE, None, proxy[0])
    (uid,) = RE(make_scan(tmp_path, "embedded", store="worker-store"))
    time.sleep(3)  # the worker's last rows
    assert worker.stop() == 0, worker.text()  # SIGTERM: it finishes what is in flight, then exits
    client = open_store(store)
    try:
        assert derived_rows(client, uid) == ANGLES and client[uid].metadata["stop"]["exit_status"] == "success"
        assert client[uid]["denoised"]["det_image_denoised"].read().dtype == np.uint16
    finally:
        close_local_tiled(client)


def test_a_bluesky_without_the_run_writer_the_derived_writer_extends_is_a_clear_start_up_error(monkeypatch):
    """The derived-streams writer extends bluesky-tiled-plugins' private per-run Tiled writer: if a release
    renames it, the worker must refuse to start with that said, not fail at the first run."""
    from bluesky_tiled_plugins.writing import tiled_writer

    from bluesky_tomogan.serve import DerivedStreamsWriter, tiled_derived

    monkeypatch.setattr(tiled_derived, "_CLASS", None)
    monkeypatch.delattr(tiled_writer._RunWriter, "_write_internal_data")

    class Client:
        def include_data_sources(self):
            return self

    with pytest.raises(ImportError, match="_RunWriter._write_internal_data.*pin bluesky-tiled-plugins"):
        DerivedStreamsWriter(Client())


class ReplaySource:
    """A document source that replays recorded documents, then waits for ``until()`` (or 30 s)."""

    def __init__(self, docs, until, late=()) -> None:
        self.docs, self.until, self.late = docs, until, list(late)
        self.subscribers: list = []

    def subscribe(self, func):
        self.subscribers.append(func)

    def _send(self, name, doc):
        for func in self.subscribers:
            func(name, doc)

    def start(self) -> None:
        for name, doc in self.docs:
            self._send(name, doc)
        wait_until(self.until, 30, "the worker to close the run")
        for name, doc in self.late:
            self._send(name, doc)

    def stop(self) -> None:
        pass


def test_a_run_whose_stop_never_comes_is_closed_after_abandon_after_and_says_why(RE, tiled, tmp_path, caplog):
    """The RunEngine host crashed mid-scan: the worker denoises what came, releases the run's thread and
    files, records why in the run, and warns about documents of that run that arrive later."""
    from bluesky_tomogan.serve import DenoisingWorker

    client, _ = tiled
    docs = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    (uid,) = RE(make_scan(tmp_path, "crashed"))
    host = TiledWriter(client)
    crashed = [(n, d) for n, d in docs if n != "stop"]
    for name, doc in crashed:
        host(name, doc)  # the host stored the run up to its crash: no stop
    cb = TomoGANCallback(load_denoiser("tomogan-projection", backend="onnxruntime"), streams=["primary", "flat"])
    late_event = next(d for n, d in reversed(docs) if n == "event")
    holder: dict = {}
    source = ReplaySource(crashed, lambda: holder["worker"].stats.runs_abandoned == 1, late=[("event", late_event)])
    # 1 s: generous, so that a starved CI machine between two documents does not look like a dead host
    holder["worker"] = worker = DenoisingWorker(source, cb, client=client, state_dir=tmp_path / "state",
                                                abandon_after=1.0)
    with caplog.at_level("WARNING", logger="bluesky_tomogan.serve.worker"):
        assert worker.run() == 0
    run = client[uid]
    assert len(run["denoised"]["det_image_denoised"]) == ANGLES  # every frame that came was denoised
    summary = run["denoised"].metadata["bluesky_tomogan"]
    assert "no document of this run" in summary["reason"] and summary["rows"]["denoised"] == ANGLES
    assert run.metadata["bluesky_tomogan"]["abandoned"] is True
    assert "stop" not in run.metadata  # the host never stopped it; the worker does not pretend it did
    assert json.loads((tmp_path / "state" / "runs.json").read_text()) == {}
    assert not [t for t in __import__("threading").enumerate() if t.name.startswith(f"tomogan-worker-{uid[:8]}")]
    assert "arrived after the worker closed that run as abandoned" in caplog.text


def test_abandon_after_is_refused_where_the_worker_stores_the_raw_run(tiled):
    from bluesky_tomogan.serve import DenoisingWorker

    client, _ = tiled
    with pytest.raises(ValueError, match="store='run'"):
        DenoisingWorker(ReplaySource([], lambda: True), lambda n, d: None, client=client, store="run",
                        abandon_after=60)
    with pytest.raises(ValueError, match="positive"):
        DenoisingWorker(ReplaySource([], lambda: True), lambda n, d: None, store="none", abandon_after=0)


def test_a_run_a_killed_worker_left_is_recorded_when_its_stop_has_not_come_within_abandon_after(RE, tiled, tmp_path):
    from bluesky_tomogan.serve import DenoisingWorker

    client, _ = tiled
    docs = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    (uid,) = RE(make_scan(tmp_path, "orphan"))
    host = TiledWriter(client)
    for name, doc in docs:
        if name != "stop":
            host(name, doc)  # the host died too: no stop
    state = tmp_path / "state"
    state.mkdir()
    (state / "runs.json").write_text(json.dumps({uid: {"started": time.time() - 10, "pid": 1, "malformed": 0}}))
    holder: dict = {}
    source = ReplaySource([], lambda: holder["worker"].stats.gaps_recorded == 1)
    cb = TomoGANCallback(load_denoiser("tomogan-projection", backend="onnxruntime"))
    holder["worker"] = worker = DenoisingWorker(source, cb, client=client, state_dir=state, abandon_after=5)
    assert worker.run() == 0
    record = client[uid].metadata["bluesky_tomogan"]
    assert record["incomplete"] is True and "stopped before the run ended" in record["reason"]
    assert json.loads((state / "runs.json").read_text()) == {}


@pytest.mark.parametrize("republish", ["derived", "all"])
def test_a_live_view_on_the_workers_republished_stream_shows_its_denoised_frames(RE, proxy, tiled, tmp_path,
                                                                                republish):
    """docs/deployment.md: a LiveDenoisedView on a RemoteDispatcher of the worker's ``--zmq-out`` stream."""
    import threading

    import matplotlib

    from bluesky_tomogan.callbacks import LiveDenoisedView
    from bluesky_tomogan.serve.transport import ZMQSource

    matplotlib.use("Agg")
    _, uri = tiled
    out = free_port(), free_port()
    second = subprocess.Popen([str(BIN / "bluesky-0MQ-proxy"), "--in-address", str(out[0]), "--out-address",
                               str(out[1])], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: listening(out[0]) and listening(out[1]), 20, "the second proxy")
    view = LiveDenoisedView(interval=0, use_teleporter=False)
    source = ZMQSource(f"localhost:{out[1]}")
    source.subscribe(view)
    viewer = threading.Thread(target=source.start, daemon=True)  # the view's own process, in a beamline
    viewer.start()
    worker = Worker(tmp_path, proxy[1], uri, "--store", "none", "--zmq-out", f"localhost:{out[0]}",
                    "--republish", republish)
    raw_docs = []
    try:
        publishing_RE(RE, None, proxy[0])
        RE.subscribe(lambda name, doc: raw_docs.append((name, doc)))
        RE(make_scan(tmp_path, "viewed"))
        wait_until(lambda: view.shown is not None and view.shown.seq_num == ANGLES, 90, "the view's last frame")
    finally:
        assert worker.stop() == 0, worker.text()
        source.stop()
        viewer.join(10)
        second.terminate()
        second.wait(10)
    shown = view.shown
    assert shown.denoised is not None and shown.denoised.shape == (64, 64) and np.isfinite(shown.denoised).all()
    assert shown.model == "tomogan-projection" and shown.error == ""
    if republish == "derived":
        assert shown.raw is None  # the worker republishes its derived documents only
    else:  # the raw documents too: the raw frame, read from the detector's file they name
        from bluesky_tomogan.hdf5_frames import StreamFrameReader

        primary = next(d["uid"] for n, d in raw_docs if n == "descriptor" and d["name"] == "primary")
        datum = next(d for n, d in raw_docs if n == "stream_datum" and d["descriptor"] == primary
                     and d["seq_nums"]["start"] <= ANGLES < d["seq_nums"]["stop"])
        sres = next(d for n, d in raw_docs if n == "stream_resource" and d["uid"] == datum["stream_resource"])
        index = datum["indices"]["start"] + ANGLES - datum["seq_nums"]["start"]
        np.testing.assert_array_equal(shown.raw, StreamFrameReader(sres)(index, index + 1)[0])


def test_bluesky_tomogan_view_writes_the_workers_frames_and_slices_as_pictures(RE, proxy, tiled, tmp_path):
    """A status page beside the worker: `view --save DIR` on its republished stream, with no display."""
    _, uri = tiled
    out = free_port(), free_port()
    second = subprocess.Popen([str(BIN / "bluesky-0MQ-proxy"), "--in-address", str(out[0]), "--out-address",
                               str(out[1])], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: listening(out[0]) and listening(out[1]), 20, "the second proxy")
    views = tmp_path / "views"
    with open(tmp_path / "view.log", "w") as log:
        viewer = subprocess.Popen([str(BIN / "bluesky-tomogan"), "-v", "view", "--zmq-in", f"localhost:{out[1]}",
                                   "--save", str(views), "--interval", "0"], stdout=log, stderr=subprocess.STDOUT,
                                  env=dict(os.environ, MPLBACKEND="Agg"))
    wait_until(lambda: "viewing" in (tmp_path / "view.log").read_text() or viewer.poll() is not None, 60,
               "the viewer to start")
    worker = Worker(tmp_path, proxy[1], uri, "--store", "none", "--reconstruct", "--every", "12",
                    "--zmq-out", f"localhost:{out[0]}")
    try:
        publishing_RE(RE, None, proxy[0])
        RE(make_scan(tmp_path, "viewed"))
        wait_until(lambda: (views / "frames.png").exists() and (views / "slices.png").exists(), 90, "both pictures")
    finally:
        assert worker.stop() == 0, worker.text()
        viewer.send_signal(signal.SIGINT)
        code = viewer.wait(30)
        second.terminate()
        second.wait(10)
    assert code == 0, (tmp_path / "view.log").read_text()
    for picture in ("frames.png", "slices.png"):
        assert (views / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(views.glob(".*.part"))  # each replaced whole
