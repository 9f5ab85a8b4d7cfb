"""Fault suite: the callback under interruptions, failures and slow or hung workers, with the real RunEngine.

For every fault: the scan ends as the RunEngine says, the raw documents reach the
subscribers unchanged and in order, every frame that reached the callback has a row
in the derived stream (stored, or recorded as missing with the reason), and no
worker thread or file handle is left after the last stop.
"""

from __future__ import annotations

import copy
import errno
import importlib
import logging
import os
import signal
import threading
import time

import bluesky
import bluesky.plan_stubs as bps
import bluesky.plans as bp
import bluesky.preprocessors as bpp
import event_model
import numpy as np
import pytest
from bluesky.utils import RunEngineInterrupted
from bluesky_tiled_plugins import TiledWriter
from ophyd.sim import SynSignal
from packaging.version import Version

from bluesky_tomogan import TomoGANCallback, load_denoiser
from bluesky_tomogan.devices import SimTomoDetector, SimTomoStage
from bluesky_tomogan.hdf5_frames import FrameFile
from bluesky_tomogan.storage import frames_directory


class Slow:
    """A real denoiser that sleeps ``delay`` seconds before frames ``frames`` (all when None)."""

    def __init__(self, inner, delay, frames=None):
        self.inner, self.delay, self.frames, self.calls = inner, delay, frames, 0

    def denoise_context(self, context):
        self.calls += 1
        if self.frames is None or self.calls in self.frames:
            time.sleep(self.delay)
        return self.inner.denoise_context(context)

    def provenance(self):
        return self.inner.provenance()


class Recorder:
    """What the RunEngine emitted (deep copies, subscribed before the callback) and what came out of it."""

    def __init__(self, RE, cb):
        self.raw: list[tuple[str, dict]] = []
        self.out: list[tuple[str, dict]] = []
        RE.subscribe(lambda name, doc: self.raw.append((name, copy.deepcopy(doc))))
        cb.subscribe(lambda name, doc: self.out.append((name, copy.deepcopy(doc))))
        RE.subscribe(cb)

    def derived_descriptors(self) -> dict[str, dict]:
        raw_uids = {d["uid"] for n, d in self.raw if n == "descriptor"}
        return {d["uid"]: d for n, d in self.out if n == "descriptor" and d["uid"] not in raw_uids}

    def check(self) -> None:
        """Raw documents unchanged and in order; every raw frame has a row; every row stored or explained."""
        for name, doc in self.out:
            event_model.schema_validators[getattr(event_model.DocumentNames, name)].validate(doc)
        derived = self.derived_descriptors()
        raw_uids = {_uid(d) for _, d in self.raw}
        passed = [(n, d) for n, d in self.out if _uid(d) in raw_uids]
        assert [n for n, _ in passed] == [n for n, _ in self.raw]
        for (name, got), (_, sent) in zip(passed, self.raw, strict=True):
            if name == "stop":  # the stop gains the derived streams' num_events (and a reason on storage failure)
                assert {k: v for k, v in got.items() if k not in ("num_events", "reason")} == \
                       {k: v for k, v in sent.items() if k not in ("num_events", "reason")}
                assert {k: v for k, v in got["num_events"].items() if k in sent["num_events"]} == sent["num_events"]
            else:
                np.testing.assert_equal(got, sent)
        pages = [d for n, d in self.out if n == "event_page" and d["descriptor"] in derived]
        datums = [d for n, d in self.out if n == "stream_datum" and d["descriptor"] in derived]
        stored = {s for d in datums for s in range(d["seq_nums"]["start"], d["seq_nums"]["stop"])}
        for page in pages:
            (field,) = {k[: -len("_qc_error")] for k in page["data"] if k.endswith("_qc_error")}
            for seq, error in zip(page["seq_num"], page["data"][f"{field}_qc_error"], strict=True):
                assert seq in stored or error, f"row {seq} is neither stored nor explained"
        n_frames = sum(len(d["seq_num"]) if n == "event_page" else 1 for n, d in self.raw
                       if n in ("event", "event_page") and _is_image_stream(self.raw, d["descriptor"]))
        n_frames += sum(d["indices"]["stop"] - d["indices"]["start"] for n, d in self.raw if n == "stream_datum")
        assert sum(len(p["seq_num"]) for p in pages) == n_frames

    def column(self, key: str) -> list:
        """One column of the derived stream, in row order."""
        return [v for n, d in self.out if n == "event_page" and key in d["data"] for v in d["data"][key]]

    def stop(self) -> dict:
        (stop,) = [d for n, d in self.out if n == "stop"]
        return stop


def _uid(doc):
    return tuple(doc["uid"]) if isinstance(doc["uid"], list) else doc["uid"]


def _is_image_stream(raw, descriptor_uid) -> bool:
    (desc,) = [d for n, d in raw if n == "descriptor" and d["uid"] == descriptor_uid]
    return any(dk.get("dtype") == "array" and not dk.get("external") for dk in desc["data_keys"].values())


def no_leftovers(tmp_path, cb, wait=5.0) -> None:
    """No worker of ``cb``'s runs alive (waiting up to ``wait`` s for a hung one to return), no file open
    under tmp_path."""
    names = {f"tomogan-worker-{run.uid[:8]}" for run in cb.runs}

    def alive():
        return [t.name for t in threading.enumerate() if t.name in names]

    deadline = time.monotonic() + wait
    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alive() == []
    open_files = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            open_files.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue
    assert [f for f in open_files if f.startswith(str(tmp_path)) and "store" not in f] == []


def camera(shape=(32, 40), seed=0):
    rng = np.random.default_rng(seed)
    return SynSignal(func=lambda: rng.poisson(500, shape).astype(np.uint16), name="cam")


def detector(directory, seed=0):
    return SimTomoDetector(name="det", stage=SimTomoStage(name="stage"), shape=(32, 40), directory=directory,
                           seed=seed, simulate_timing=False)


def interrupted_count(det, num, at, action):
    """A count that runs the plan ``action()`` before point ``at``, with checkpoints to pause at."""

    @bpp.run_decorator()
    @bpp.stage_decorator([det])
    def inner():
        for i in range(num):
            if i == at:
                yield from action()
            yield from bps.checkpoint()
            yield from bps.trigger_and_read([det])

    return inner()


# -- the reproductions ----------------------------------------------------------------


def test_default_callback_with_tiledwriter_stores_every_derived_frame(RE, denoiser, store, tmp_path):
    det = detector(frames_directory(tmp_path / "store") / "raw")  # where the embedded Tiled may read
    cb = TomoGANCallback(denoiser)  # no directory: derived frames go next to the raw files
    cb.subscribe(TiledWriter(store))
    rec = Recorder(RE, cb)
    (uid,) = RE(bp.count([det], num=6))
    rec.check()
    assert cb.consumer_errors == 0 and cb.errors == []
    frames = store[uid]["denoised"]["det_image_denoised"].read()
    assert frames.shape == (6, 32, 40) and np.isfinite(frames).all() and frames.std() > 0
    (sres,) = [d for n, d in rec.out if n == "stream_resource" and d["data_key"] == "det_image_denoised"]
    assert sres["uri"].startswith((frames_directory(tmp_path / "store") / "raw").as_uri())
    no_leftovers(tmp_path, cb)


def test_inline_raw_frames_put_derived_frames_in_the_user_data_directory(RE, denoiser, derived_frames_in_tmp,
                                                                         tmp_path):
    cb = TomoGANCallback(denoiser)
    rec = Recorder(RE, cb)
    RE(bp.count([camera()], num=4))
    rec.check()
    (sres,) = [d for n, d in rec.out if n == "stream_resource"]
    assert sres["uri"].startswith(derived_frames_in_tmp.resolve().as_uri())
    assert not any("cam_denoised" in d["data"] for n, d in rec.out if n == "event_page")  # never inline
    no_leftovers(tmp_path, cb)


def test_inline_frames_refuse_a_storage_consumer(denoiser, store):
    cb = TomoGANCallback(denoiser, inline=True)
    with pytest.raises(ValueError, match="inline=True"):
        cb.subscribe(TiledWriter(store))


def test_every_tiled_writer_is_storage(denoiser, store):
    """bluesky-tiled-plugins' TiledWriter (what bluesky 1.16 tells users to import), bluesky 1.14-1.15's own and
    bluesky-tiled-plugins' TiledInserter (databroker's insert) are storage consumers: inline frames refuse them, a
    failure of one says the stored run is incomplete (sessions 73-74)."""
    from bluesky_tiled_plugins import TiledInserter

    from bluesky_tomogan.callbacks.consumers import is_storage

    writers = [TiledWriter(store), TiledInserter(store, "test")]
    if Version(bluesky.__version__) < Version("1.16"):  # 1.16's bluesky.callbacks.tiled_writer re-exports the above
        writers.append(importlib.import_module("bluesky.callbacks.tiled_writer").TiledWriter(store))
    assert all(is_storage(w) for w in writers) and len({type(w) for w in writers}) == len(writers)
    assert not is_storage(lambda name, doc: None)
    for writer in writers:
        with pytest.raises(ValueError, match="inline=True"):
            TomoGANCallback(denoiser, inline=True).subscribe(writer)


def test_a_late_worker_never_touches_the_next_run(RE, denoiser, tmp_path):
    cb = TomoGANCallback(Slow(denoiser, 0.3), flush_timeout=0.2)
    rec = Recorder(RE, cb)
    RE(bp.count([camera()], num=4))
    first = cb.last_run
    RE(bp.count([camera((24, 32), seed=1)], num=3))  # another shape: run 1's worker would fail on it
    rec.check()
    stops = [d for n, d in rec.out if n == "stop"]
    assert [s["num_events"]["denoised"] for s in stops] == [4, 3]  # every frame has its row in its own run
    assert first is not None and first.missing > 0
    assert any("did not finish" in e for e in first.errors)
    assert not any("KeyError" in e for e in first.errors + cb.errors)
    no_leftovers(tmp_path, cb)


# -- RunEngine interruptions ----------------------------------------------------------------


@pytest.mark.parametrize("ending", ["abort", "stop", "resume"])
def test_pause_then_abort_stop_or_resume(RE, denoiser, tmp_path, ending):
    cb = TomoGANCallback(denoiser)
    rec = Recorder(RE, cb)
    with pytest.raises(RunEngineInterrupted):
        RE(interrupted_count(camera(), 6, 3, bps.pause))
    assert RE.state == "paused"
    if ending == "abort":
        RE.abort(reason="sample fell off")
    elif ending == "stop":
        RE.stop()
    else:
        RE.resume()
    rec.check()
    stop = rec.stop()
    assert stop["exit_status"] == {"abort": "abort", "stop": "success", "resume": "success"}[ending]
    # one derived row per raw event delivered: a resume re-takes the point after the last checkpoint
    assert stop["num_events"]["denoised"] == sum(n == "event" for n, _ in rec.raw)
    no_leftovers(tmp_path, cb)


def test_ctrl_c_during_a_scan(RE, denoiser, tmp_path):
    cb = TomoGANCallback(denoiser)
    rec = Recorder(RE, cb)
    def ctrl_c():
        os.kill(os.getpid(), signal.SIGINT)  # what the terminal sends; the RunEngine's handler pauses
        yield from bps.sleep(0.5)

    with pytest.raises(RunEngineInterrupted):
        RE(interrupted_count(camera(), 6, 2, ctrl_c))
    assert RE.state == "paused"
    RE.abort()
    rec.check()
    assert rec.stop()["exit_status"] == "abort"
    no_leftovers(tmp_path, cb)


# -- consumers ------------------------------------------------------------------------------


def test_a_storage_consumer_that_raises_is_reported_and_recorded_in_the_stop(RE, denoiser, tmp_path, caplog):
    def broken_storage(name, doc):
        if name == "event_page":
            raise OSError("database is gone")

    cb = TomoGANCallback(denoiser)
    cb.subscribe(broken_storage, storage=True)
    rec = Recorder(RE, cb)
    with caplog.at_level(logging.ERROR, logger="bluesky_tomogan"):
        RE(bp.count([camera()], num=3))
    rec.check()
    assert cb.last_run is not None and cb.last_run.consumers.counts["broken_storage"] >= 1
    assert "broken_storage" in rec.stop()["reason"] and "event_page" in rec.stop()["reason"]
    assert any(r.levelno == logging.ERROR and "event_page" in r.getMessage() for r in caplog.records)


def test_a_live_consumer_that_raises_is_named_in_the_stop_without_calling_the_run_incomplete(RE, denoiser,
                                                                                          tmp_path):
    def live_plot(name, doc):
        raise ZeroDivisionError("division by zero")

    cb = TomoGANCallback(denoiser)
    cb.subscribe(live_plot)
    rec = Recorder(RE, cb)
    RE(bp.count([camera()], num=3))
    rec.check()
    reason = rec.stop()["reason"]
    assert cb.consumer_errors > 0 and "consumer live_plot failed on" in reason
    assert "incomplete" not in reason and "storage" not in reason


# -- workers and models ---------------------------------------------------------------------


def test_a_hung_worker_trips_the_breaker_instead_of_stalling_every_frame(RE, denoiser, tmp_path):
    cb = TomoGANCallback(Slow(denoiser, 2.0, frames={1}), policy="block", maxsize=1, block_timeout=0.2)
    rec = Recorder(RE, cb)
    t0 = time.monotonic()
    RE(bp.count([camera()], num=12))
    scan = time.monotonic() - t0
    rec.check()
    assert cb.dropped > 0 and any("no room within 0.2 s" in e for e in cb.errors)
    assert sum("no room" in e for e in cb.errors) == 1  # the breaker opened once, it did not wait per frame
    assert scan < 2.0 + 60  # generous: the point is that it finishes, not how fast
    no_leftovers(tmp_path, cb)


def test_a_model_file_corrupted_after_loading(RE, tmp_path):
    import shutil

    from bluesky_tomogan.errors import ModelLoadError
    from bluesky_tomogan.inference.load import load_card

    card = load_card("tomogan-projection")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for f in ("tomogan-projection.json", "tomogan-projection.onnx"):
        shutil.copy(card.directory / f, model_dir / f)
    den = load_denoiser(model_dir, backend="onnxruntime")
    (model_dir / "tomogan-projection.onnx").write_bytes(b"garbage")
    cb = TomoGANCallback(den)
    rec = Recorder(RE, cb)
    RE(bp.count([camera()], num=3))  # the model in memory still runs
    rec.check()
    assert cb.errors == []
    with pytest.raises(ModelLoadError, match="sha256"):
        load_denoiser(model_dir, backend="onnxruntime")


def test_an_unwritable_directory_records_every_row_and_the_scan_goes_on(RE, denoiser, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cb = TomoGANCallback(denoiser, directory=blocker / "frames")
    rec = Recorder(RE, cb)
    RE(bp.count([camera()], num=3))
    rec.check()
    errors = rec.column("cam_qc_error")
    assert len(errors) == 3 and all(e.startswith("cannot write the denoised frame") for e in errors)
    assert rec.stop()["exit_status"] == "success"
    no_leftovers(tmp_path, cb)


def test_a_full_disk_records_the_frames_it_could_not_write(RE, denoiser, tmp_path, monkeypatch):
    real_put = FrameFile.put  # how the callback writes each derived frame, at its row

    def put(self, index, frame):
        if index >= 2 and self.dtype == np.float32:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_put(self, index, frame)

    monkeypatch.setattr(FrameFile, "put", put)
    cb = TomoGANCallback(denoiser, directory=tmp_path / "frames")
    rec = Recorder(RE, cb)
    RE(bp.count([camera()], num=5))
    rec.check()
    errors = rec.column("cam_qc_error")
    assert errors[:2] == ["", ""] and all("No space left" in e for e in errors[2:])
    no_leftovers(tmp_path, cb)


# -- descriptors -----------------------------------------------------------------------------


def test_a_descriptor_re_emitted_mid_run_keeps_one_derived_stream(RE, denoiser, store, tmp_path):
    det = detector(frames_directory(tmp_path / "store") / "raw")  # where the embedded Tiled may read
    cb = TomoGANCallback(denoiser)
    cb.subscribe(TiledWriter(store))
    rec = Recorder(RE, cb)

    @bpp.run_decorator()
    @bpp.stage_decorator([det])
    def plan():
        for i in range(6):
            if i == 3:
                yield from bps.configure(det, {"exposure_time": 0.02})  # a new raw descriptor
            yield from bps.trigger_and_read([det])

    (uid,) = RE(plan())
    rec.check()
    raw_descriptors = [d for n, d in rec.raw if n == "descriptor"]
    assert len(raw_descriptors) == 2
    assert [d["name"] for d in rec.derived_descriptors().values()] == ["denoised"]
    assert rec.stop()["num_events"] == {"primary": 6, "denoised": 6}
    assert store[uid]["denoised"]["det_image_denoised"].read().shape == (6, 32, 40)
    assert cb.consumer_errors == 0
    no_leftovers(tmp_path, cb)


def test_a_re_emitted_descriptor_with_another_shape_gets_its_own_file(denoiser, tmp_path):
    # bluesky 1.15 re-describes after ``configure`` from its describe cache, so a shape change
    # mid-run (binning) is composed here as a detector would send it.
    rng = np.random.default_rng(0)
    cb = TomoGANCallback(denoiser, directory=tmp_path / "frames")
    out = []
    cb.subscribe(lambda name, doc: out.append((name, doc)))
    run = event_model.compose_run()
    cb("start", run.start_doc)
    seq = 0
    for shape in [(32, 40), (24, 32)]:
        desc = run.compose_descriptor(name="primary", data_keys={
            "cam": {"source": "sim", "dtype": "array", "shape": list(shape), "dtype_numpy": "<u2"}})
        cb("descriptor", desc.descriptor_doc)
        for _ in range(3):
            seq += 1
            cb("event", desc.compose_event(data={"cam": rng.poisson(500, shape).astype(np.uint16)},
                                           timestamps={"cam": time.time()}, seq_num=seq))
    cb("stop", run.compose_stop())
    for name, doc in out:
        event_model.schema_validators[getattr(event_model.DocumentNames, name)].validate(doc)
    derived = [d for n, d in out if n == "descriptor" and d["name"] == "denoised"]
    assert [d["data_keys"]["cam_denoised"]["shape"] for d in derived] == [[32, 40], [24, 32]]
    assert len({d["uri"] for n, d in out if n == "stream_resource"}) == 2
    assert out[-1][1]["num_events"]["denoised"] == 6
    datums = [d for n, d in out if n == "stream_datum"]
    assert sum(d["indices"]["stop"] - d["indices"]["start"] for d in datums) == 6
    assert cb.errors == []
    no_leftovers(tmp_path, cb)


def test_a_bug_in_qc_of_one_frame_costs_only_that_frame(RE, denoiser, tmp_path, monkeypatch):
    """An unexpected exception while handling one frame (here: QC raising on its 3rd frame) gets that
    frame a row naming it; the worker goes on with the next frames."""
    from bluesky_tomogan.callbacks import run_qc

    real, calls = run_qc.frame_metrics, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise ZeroDivisionError("a bug")
        return real(*args, **kwargs)

    monkeypatch.setattr(run_qc, "frame_metrics", flaky)
    cb = TomoGANCallback(denoiser, flush_timeout=60)
    rec = Recorder(RE, cb)
    RE(bp.count([camera()], num=6))
    rec.check()
    errors = rec.column("cam_qc_error")
    assert errors[2] == "internal error: ZeroDivisionError: a bug"
    assert errors[:2] == ["", ""] and errors[3:] == ["", "", ""]
    no_leftovers(tmp_path, cb)


def test_a_worker_that_dies_releases_the_stop_at_once_and_names_why(RE, denoiser, tmp_path, monkeypatch):
    """Should the worker loop itself fail, the stop does not wait ``flush_timeout`` for it, later
    frames are not queued for nobody, and every row says what happened."""
    from bluesky_tomogan.callbacks.run import RunDenoiser

    def broken(self, windows):
        raise RuntimeError("loop bug")

    monkeypatch.setattr(RunDenoiser, "_flush_stale", broken)
    cb = TomoGANCallback(denoiser, policy="block", maxsize=1, block_timeout=30, flush_timeout=600)
    rec = Recorder(RE, cb)
    RE(bp.count([camera()], num=5))  # with a dead worker and maxsize 1 each frame would wait 30 s
    rec.check()
    errors = rec.column("cam_qc_error")
    assert len(errors) == 5
    assert all(e == "not denoised: the worker stopped early (RuntimeError: loop bug)" for e in errors)
    assert "the worker stopped early" in " ".join(cb.errors)
    no_leftovers(tmp_path, cb)


def test_a_run_ended_without_its_stop_sums_up_the_frames_it_did_not_list(denoiser, tmp_path, monkeypatch):
    """A run ended for want of its stop (too many runs open, :mod:`~bluesky_tomogan.callbacks.passthrough`) lists
    the first frames of each problem one by one, as a stopped run does, and then, as a stopped run does, sums up
    the rest in one line (before, they were counted and never said)."""
    import bluesky_tomogan.callbacks.passthrough as passthrough

    monkeypatch.setattr(passthrough, "ABANDON_IDLE_S", 0)  # replayed at once: 0 s stands for a dead run

    def unstopped_run(frames):
        bundle = event_model.compose_run()
        desc = bundle.compose_descriptor(name="primary", data_keys={"cam": {
            "source": "X", "dtype": "array", "shape": [32, 40], "dtype_numpy": "<u2"}})
        rng = np.random.default_rng(frames)
        return bundle, [("start", bundle.start_doc), ("descriptor", desc.descriptor_doc),
                        *[("event", desc.compose_event(data={"cam": rng.poisson(400, (32, 40)).astype(np.uint16)},
                                                       timestamps={"cam": 0.0}, seq_num=i + 1))
                          for i in range(frames)]]

    runs = [unstopped_run(12), *[unstopped_run(1) for _ in range(passthrough.MAX_OPEN_RUNS)]]
    cb = TomoGANCallback(Slow(denoiser, 0.5), directory=tmp_path, inline=True)  # the first run's frames wait
    out = []
    cb.subscribe(lambda name, doc: out.append((name, doc)))
    for _, docs in runs:  # the last start ends the first run
        for name, doc in docs:
            cb(name, doc)
    first = runs[0][0].start_doc["uid"]
    (summary,) = [s for s in cb.runs if s.uid == first]
    (desc,) = [d for n, d in out if n == "descriptor" and d["name"] == "denoised" and d["run_start"] == first]
    pages = [d for n, d in out if n == "event_page" and d["descriptor"] == desc["uid"]]
    errors = [e for page in pages for e in page["data"]["cam_qc_error"]]
    unfinished = "not denoised: the run ended without its stop document"
    more = f"more frames not denoised: {unfinished}"
    assert len(errors) == 12 and errors.count(unfinished) > 5  # at most a frame or two denoised in time
    listed = [e for e in summary.errors if e.startswith("cam seq ") and e.endswith(unfinished)]
    summed = [e for e in summary.errors if e.startswith("cam: ") and e.endswith(more)]
    assert len(listed) == 5 and summed == [f"cam: {errors.count(unfinished) - 5} {more}"]
    for bundle, _ in runs[1:]:
        cb("stop", bundle.compose_stop())
    no_leftovers(tmp_path, cb)
