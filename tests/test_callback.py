"""TomoGANCallback with a real RunEngine and ophyd.sim detectors."""

from __future__ import annotations

import itertools
import threading
import time

import bluesky.plans as bp
import event_model
import numpy as np
import pytest
from ophyd.sim import SynSignal

from bluesky_tomogan.callbacks import FrameQueue, TomoGANCallback, image_fields
from bluesky_tomogan.callbacks.derived_stream import derived_from
from bluesky_tomogan.frames import context_indices
from bluesky_tomogan.qc.feedback import QCFeedback
from bluesky_tomogan.serve.ioc import QCFromDocuments


def camera(name="cam", shape=(48, 64), seed=0):
    rng = np.random.default_rng(seed)
    return SynSignal(func=lambda: rng.poisson(500, shape).astype(np.uint16), name=name)


def run(RE, cb, detectors, num=5):
    docs = []
    cb.subscribe(lambda name, doc: docs.append((name, doc)))
    RE.subscribe(cb)
    RE(bp.count(detectors, num=num))
    return docs


def through(cb, docs):
    """Feed ``docs`` to ``cb`` by hand (no RunEngine); what it passed on and emitted, in order."""
    out = []
    cb.subscribe(lambda name, doc: out.append((name, doc)))
    for name, doc in docs:
        cb(name, doc)
    return out


def validate(docs):
    for name, doc in docs:
        event_model.schema_validators[getattr(event_model.DocumentNames, name)].validate(doc)


def test_denoised_stream_in_the_same_run_with_valid_documents(RE, denoiser):
    docs = run(RE, TomoGANCallback(denoiser, inline=True), [camera()])
    validate(docs)
    descriptors = {d["name"]: d for n, d in docs if n == "descriptor"}
    assert set(descriptors) == {"primary", "denoised"}
    start = next(d for n, d in docs if n == "start")
    assert descriptors["denoised"]["run_start"] == start["uid"]
    assert descriptors["denoised"]["configuration"]["tomogan"]["data"]["backend"] == "onnxruntime"
    assert len(descriptors["denoised"]["configuration"]["tomogan"]["data"]["model_sha256"]) == 64
    pages = [d for n, d in docs if n == "event_page" and d["descriptor"] == descriptors["denoised"]["uid"]]
    raw = [d for n, d in docs if n == "event"]
    seq = [s for p in pages for s in p["data"]["cam_source_seq_num"]]
    uids = [u for p in pages for u in p["data"]["cam_source_uid"]]
    assert seq == [e["seq_num"] for e in raw] and uids == [e["uid"] for e in raw]
    frames = [f for p in pages for f in p["data"]["cam_denoised"]]
    assert all(np.asarray(f).shape == (48, 64) for f in frames)
    assert docs[-1][0] == "stop" and docs[-1][1]["num_events"] == {"primary": 5, "denoised": 5}


def test_raw_documents_pass_through_unchanged(RE, denoiser):
    plain = []
    RE.subscribe(lambda name, doc: plain.append((name, doc)))
    docs = run(RE, TomoGANCallback(denoiser), [camera()])
    raw_events = [d for n, d in plain if n == "event"]
    passed = [d for n, d in docs if n == "event"]
    assert len(raw_events) == len(passed) == 5
    for a, b in zip(raw_events, passed, strict=True):
        assert a["uid"] == b["uid"] and np.array_equal(a["data"]["cam"], b["data"]["cam"])


def test_block_policy_drops_nothing(RE, denoiser):
    cb = TomoGANCallback(denoiser, policy="block", maxsize=1)
    docs = run(RE, cb, [camera()], num=12)
    assert cb.dropped == 0 and docs[-1][1]["num_events"]["denoised"] == 12


def test_drop_oldest_counts_every_dropped_frame():
    q = FrameQueue(maxsize=2, policy="drop-oldest")
    for i in range(5):
        q.put(i)
    assert len(q) == 2 and q.dropped == [0, 1, 2]
    latest = FrameQueue(maxsize=4, policy="latest-only")
    for i in range(3):
        latest.put(i)
    assert len(latest) == 1 and latest.dropped == [0, 1]
    with pytest.raises(ValueError, match="unknown queue policy"):
        FrameQueue(policy="sometimes")  # type: ignore[arg-type]


def test_a_delivery_of_frames_in_a_file_is_queued_whole_beyond_maxsize():
    """At most maxsize frames wait besides the delivery being put; the backlog is what waits beyond it."""
    q = FrameQueue(maxsize=4, policy="drop-oldest")
    q.put("single")
    with q.delivery(10):
        for i in range(10):
            q.put(i)
    assert len(q) == 11 and q.dropped == [] and q.backlog() == 1  # the frame before it is what is behind
    for _ in range(8):
        q.get()
    with q.delivery(10):  # 3 left of the last one: within maxsize besides this one
        for i in range(10, 20):
            q.put(i)
    assert len(q) == 13 and q.dropped == [] and q.backlog() == 3
    with q.delivery(10):  # 13 waiting: more than maxsize besides this delivery, the oldest go
        for i in range(20, 30):
            q.put(i)
    assert q.dropped == list(range(7, 17)) and len(q) == 13 and q.backlog() == 3
    q.put("alone")  # on its own: one frame in, the oldest out, and all that waits is behind
    assert q.dropped[-1] == 17 and len(q) == 13 and q.backlog() == 13
    latest = FrameQueue(maxsize=4, policy="latest-only")
    with latest.delivery(3):
        for i in range(3):
            latest.put(i)
    assert len(latest) == 1  # live display: one frame, deliveries or not
    block = FrameQueue(maxsize=2, policy="block")  # paces the producer at maxsize, deliveries or not
    with block.delivery(3):
        assert [block.put(i, timeout=0.01) for i in range(3)] == [True, True, False]


def test_the_frame_rate_of_deliveries_is_frames_per_second_between_them():
    from bluesky_tomogan.callbacks.derived_stream import ArrivalRate

    rate = ArrivalRate()
    assert rate.interval is None
    for delivery in range(4):  # 20 frames every 0.6 s: 30 ms per frame, whatever the gaps within a batch
        for _ in range(20):
            rate.add(0.6 * delivery, delivery)
    assert rate.interval == pytest.approx(0.030) and rate.between_deliveries == pytest.approx(0.6)
    single = ArrivalRate()
    for k in range(30):  # one at a time, 100 ms apart: the last DELIVERIES of them
        single.add(0.1 * k, k)
    assert single.interval == pytest.approx(0.1) == single.between_deliveries


def test_a_raising_subscriber_does_not_stop_the_scan_or_other_subscribers(RE, denoiser):
    cb = TomoGANCallback(denoiser)

    def broken(name, doc):
        raise RuntimeError("disk full")

    cb.subscribe(broken)
    docs = run(RE, cb, [camera()])
    assert docs[-1][0] == "stop" and docs[-1][1]["num_events"]["denoised"] == 5
    assert cb.consumer_errors > 0


def test_bad_frames_are_flagged_not_fatal(RE, denoiser):
    rng = np.random.default_rng(0)
    calls = iter(range(100))

    def frame():
        f = rng.poisson(500, (32, 32)).astype(np.float32)
        if next(calls) == 2:
            f[3, 3] = np.nan
        return f

    cb = TomoGANCallback(denoiser)
    docs = run(RE, cb, [SynSignal(func=frame, name="cam")])
    errors = [e for n, d in docs if n == "event_page" for e in d["data"].get("cam_qc_error", [])]
    # QC calls it unusable (a NaN that its previous frame did not have); its neighbours are fine
    assert sum(bool(e) for e in errors) == 1 and any("nonfinite" in e for e in errors)
    assert docs[-1][1]["num_events"]["denoised"] == 5


def test_a_float_detector_that_marks_pixels_without_data_with_nan_is_denoised_around_them(RE, denoiser):
    """NaN in the same pixels of every frame (a mask applied upstream) is the detector's mask: only the
    first frame that shows it is flagged, in this run and none in the next; the derived frames keep NaN
    there and are denoised elsewhere."""
    rng = np.random.default_rng(4)

    def frame():
        f = rng.poisson(500, (48, 64)).astype(np.float32)
        f[:, 30:32] = np.nan
        return f

    cb = TomoGANCallback(denoiser, inline=True)
    docs = run(RE, cb, [SynSignal(func=frame, name="cam")], num=5)
    RE(bp.count([SynSignal(func=frame, name="cam")], num=3))
    rows = [d["data"] for n, d in docs if n == "event_page" and "cam_denoised" in d["data"]]
    flags = [f for r in rows for f in r["cam_qc_flags"]]
    assert len(flags) == 8 and flags[0] == "nonfinite" and not any(flags[1:]), flags
    denoised = np.stack([np.asarray(f) for r in rows for f in r["cam_denoised"]][1:])
    assert np.isnan(denoised[:, :, 30:32]).all()
    rest = np.delete(denoised, [30, 31], axis=2)
    assert np.isfinite(rest).all() and abs(float(rest.mean()) - 500) < 10 and rest.std() < 0.5 * np.sqrt(500)


def test_a_photon_counter_with_module_gaps_is_denoised_without_false_flags(RE, denoiser):
    """uint32 frames with a masked gap column (2**32 - 1), as Eiger/Pilatus write them: no "saturated"
    (which would ask for a shorter exposure on every frame), no "noisy", and the derived frames are
    denoised around the gap, which keeps its raw value."""
    rng = np.random.default_rng(3)
    top = np.iinfo(np.uint32).max

    def frame():
        f = rng.poisson(500, (48, 64)).astype(np.uint32)
        f[:, 30:32] = top
        return f

    cb = TomoGANCallback(denoiser, inline=True)
    docs = run(RE, cb, [SynSignal(func=frame, name="cam")])
    rows = [d["data"] for n, d in docs if n == "event_page" and "cam_denoised" in d["data"]]
    flags = [f for r in rows for f in r["cam_qc_flags"]]
    assert len(flags) == 5 and not any(flags), flags
    denoised = np.stack([np.asarray(f) for r in rows for f in r["cam_denoised"]])
    assert (denoised[:, :, 30:32] == np.float32(top)).all()
    rest = np.delete(denoised, [30, 31], axis=2)
    assert abs(float(rest.mean()) - 500) < 10 and rest.std() < 0.5 * np.sqrt(500)  # denoised, in the raw scale


def test_two_detectors_get_one_derived_stream_each(RE, denoiser):
    docs = run(RE, TomoGANCallback(denoiser), [camera("cam1"), camera("cam2", (32, 40), 1)])
    validate(docs)
    names = sorted(d["name"] for n, d in docs if n == "descriptor")
    assert names == ["denoised_cam1", "denoised_cam2", "primary"]


def test_many_runs_in_one_session(RE, denoiser):
    cb = TomoGANCallback(denoiser)
    docs = run(RE, cb, [camera()], num=3)
    RE(bp.count([camera()], num=2))
    stops = [d for n, d in docs if n == "stop"]
    assert [s["num_events"]["denoised"] for s in stops] == [3, 2]


def test_its_repr_says_what_it_denoises_with_and_how_it_stores(denoiser):
    cb = TomoGANCallback(denoiser, streams=["primary", "flat"], frame_dtype="source", compression="lz4")
    assert repr(cb) == (f"<TomoGANCallback {denoiser!r} streams=['primary', 'flat'] policy=block maxsize=16 "
                        "frames source+lz4>")
    assert repr(TomoGANCallback({"cam": denoiser}, inline=True)) == (
        f"<TomoGANCallback cam: {denoiser!r} streams=all fields=['cam'] policy=block maxsize=16 frames inline>")


def test_image_fields_finds_2d_frames_only():
    desc = {"data_keys": {"img": {"dtype": "array", "shape": [1, 8, 8]}, "x": {"dtype": "number", "shape": []},
                          "line": {"dtype": "array", "shape": [8]}, "img2": {"dtype": "array", "shape": [4, 5]},
                          # the elements' type, as some devices declare it: the shape says it is an array
                          "counts": {"dtype": "integer", "shape": [4, 5]}, "n": {"dtype": "integer", "shape": [3]}}}
    assert image_fields(desc) == ["img", "img2", "counts"]


def test_colour_and_higher_rank_images_are_said_not_to_be_denoised(RE, denoiser, caplog):
    """Colour frames and 4-D arrays: no derived stream, and a warning that says why, once per run."""
    from bluesky_tomogan.callbacks.derived_stream import unsupported_image_fields

    desc = {"data_keys": {"burst": {"dtype": "array", "shape": [4, 8, 8]},
                          "one": {"dtype": "array", "shape": [1, 8, 8]},
                          "rgb": {"dtype": "array", "shape": [480, 640, 3]},
                          "vol": {"dtype": "array", "shape": [2, 3, 8, 8]}}}
    reasons = unsupported_image_fields(desc)
    assert sorted(reasons) == ["rgb", "vol"]
    assert "colour" in reasons["rgb"] and "more than three dimensions" in reasons["vol"]
    assert image_fields(desc) == ["burst", "one"]

    rgb = SynSignal(func=lambda: np.ones((40, 48, 3), np.float32), name="rgb")
    cb = TomoGANCallback(denoiser)
    with caplog.at_level("WARNING"):
        docs = run(RE, cb, [rgb], num=3)
    said = [r.getMessage() for r in caplog.records if "not denoised" in r.getMessage()]
    assert len(said) == 1 and "'rgb'" in said[0] and "colour" in said[0]
    assert [d["name"] for n, d in docs if n == "descriptor"] == ["primary"]  # raw only: nothing invented


def _scan_of(data_key, values, fields=None):
    """A run whose primary stream's field ``cam`` is declared as ``data_key`` and holds ``values``."""
    bundle = event_model.compose_run()
    desc = bundle.compose_descriptor(name="primary", data_keys={"cam": {"source": "X", **data_key}})
    events = [desc.compose_event(data={"cam": v}, timestamps={"cam": 0.0}, seq_num=i + 1) for i, v in enumerate(values)]
    return [("start", bundle.start_doc), ("descriptor", desc.descriptor_doc), *[("event", e) for e in events],
            ("stop", bundle.compose_stop())]


def test_which_fields_may_hold_frames_and_why_a_named_one_does_not():
    from bluesky_tomogan.callbacks.derived_stream import frame_shape, not_a_frame, shapeless_arrays

    keys = {"none": {"dtype": "array", "shape": []}, "unknown": {"dtype": "array", "shape": [None]},
            "line": {"dtype": "array", "shape": [4096]}, "x": {"dtype": "number", "shape": []},
            "img": {"dtype": "array", "shape": [4, 5]}}
    assert shapeless_arrays({"data_keys": keys}) == ["none"]  # [None]: a 1-D array (ophyd-async's Array1D: [0])
    assert frame_shape(keys["none"]) == (0, 0)
    assert not_a_frame(keys["none"]) == not_a_frame(keys["img"]) == ""
    assert "1-D array of 4096 values" in not_a_frame(keys["line"])
    assert "1-D array of values (of no declared length)" in not_a_frame(keys["unknown"])
    assert "dtype 'number'" in not_a_frame(keys["x"])


def test_an_array_of_no_declared_shape_is_denoised_when_named_and_said_of_when_not(denoiser, tmp_path):
    """A device that describes before it knows its frame size may declare ``"array"`` of shape ``[]``
    (event-model's scalar): not taken for frames unasked (a spectrum may be such an array), but the callback says
    how to ask; named in ``fields=``, its frames are denoised at the size they come in. A 1-D array of unknown
    length (ophyd-async's ``Array1D``: ``[0]``) is not said of: it declares what it is."""
    shape: list = []
    frames = [np.random.default_rng(i).poisson(400, (32, 40)).astype(np.uint16) for i in range(3)]
    unasked = TomoGANCallback(denoiser, inline=True)
    out = through(unasked, _scan_of({"dtype": "array", "shape": shape}, frames))
    assert [d["name"] for n, d in out if n == "descriptor"] == ["primary"]
    assert unasked.errors == [f"field 'cam' of stream 'primary' is not denoised: it is an array of no declared "
                              f"shape ({shape}); if it holds frames, name it: TomoGANCallback(fields=['cam']) "
                              "(serve, reprocess: --fields cam)"]

    asked = TomoGANCallback(denoiser, inline=True, fields=["cam"], directory=tmp_path)
    out = through(asked, _scan_of({"dtype": "array", "shape": shape}, frames))
    validate(out)
    (desc,) = [d for n, d in out if n == "descriptor" and d["name"] == "denoised"]
    assert desc["data_keys"]["cam_denoised"]["shape"] == [32, 40]
    rows = [d for n, d in out if n == "event_page" and d["descriptor"] == desc["uid"]]
    assert [s for p in rows for s in p["data"]["cam_source_seq_num"]] == [1, 2, 3]
    assert [e for p in rows for e in p["data"]["cam_qc_error"]] == [""] * 3
    assert next(d for n, d in out if n == "stop")["num_events"]["denoised"] == 3
    for line in ([0], [None]):
        quiet = TomoGANCallback(denoiser, inline=True)
        through(quiet, _scan_of({"dtype": "array", "shape": line}, [np.arange(5.0)] * 2))
        assert quiet.errors == []


def test_a_field_named_to_be_denoised_that_declares_no_frames_is_said_why(denoiser):
    """``fields=`` naming a flattened image (an area detector's ArrayData waveform, 1-D) or a scalar: no derived
    stream, and one note naming what the field declares (it was silent: the run had no image field)."""
    flat = [np.full(4096, 400, np.uint16)] * 2
    cb = TomoGANCallback(denoiser, inline=True, fields=["cam"])
    out = through(cb, _scan_of({"dtype": "array", "shape": [4096]}, flat))
    assert [d["name"] for n, d in out if n == "descriptor"] == ["primary"]
    assert cb.errors == ["field 'cam' of stream 'primary' is not denoised: its data key declares a 1-D array of 4096 "
                         "values, not a 2-D frame; a flattened image (an area detector's ArrayData waveform) is "
                         "denoised once its device declares [height, width]"]
    cb = TomoGANCallback(denoiser, inline=True, fields=["cam"])
    through(cb, _scan_of({"dtype": "number", "shape": []}, [1.0, 2.0]))
    assert cb.errors == ["field 'cam' of stream 'primary' is not denoised: its data key declares dtype 'number' with "
                         "shape [], not an image"]


def test_several_frames_per_event_get_a_row_each(RE, denoiser):
    """A detector taking 4 exposures per point gives [4, H, W] per event: each frame is denoised
    (its neighbours are the event's other frames) and gets its own row, in order."""
    rng = np.random.default_rng(3)
    marked = np.full((4, 32, 40), 500.0)
    for k in range(4):  # exposure k has a bright block in columns 10k..10k+6: the rows' order shows
        marked[k, 12:20, 10 * k : 10 * k + 6] = 3000.0

    burst = SynSignal(func=lambda: rng.poisson(marked).astype(np.uint16), name="burst")
    cb = TomoGANCallback(denoiser, inline=True)
    docs = run(RE, cb, [burst], num=3)
    validate(docs)
    desc = next(d for n, d in docs if n == "descriptor" and d["name"] == "denoised")
    assert desc["data_keys"]["burst_denoised"]["shape"] == [32, 40]
    assert desc["data_keys"]["burst_source_exposure"]["dtype"] == "integer"
    rows = {k: [v for n, d in docs if n == "event_page" and d["descriptor"] == desc["uid"] for v in d["data"][k]]
            for k in ("burst_denoised", "burst_source_seq_num", "burst_source_exposure", "burst_qc_error")}
    assert rows["burst_source_seq_num"] == [1] * 4 + [2] * 4 + [3] * 4
    assert rows["burst_source_exposure"] == [0, 1, 2, 3] * 3
    assert rows["burst_qc_error"] == [""] * 12 and cb.errors == []
    brightest = [int(np.argmax(np.asarray(f)[12:20].mean(0))) // 10 for f in rows["burst_denoised"]]
    assert brightest == [0, 1, 2, 3] * 3
    stop = next(d for n, d in docs if n == "stop")
    assert stop["num_events"]["denoised"] == 12 and stop["num_events"]["primary"] == 3


def test_an_event_with_fewer_frames_than_declared_is_flagged_and_the_scan_goes_on(denoiser, tmp_path):
    """StreamDatum rows of a [3, H, W] key (ophyd-async ``exposures_per_event=3``): the file holds the
    frames one after the other; a file cut short flags the frames it lacks."""
    import h5py

    frames = np.random.default_rng(0).poisson(300, (8, 16, 24)).astype(np.uint16)  # 3 events need 9
    path = tmp_path / "det.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("/entry/data/data", data=frames)
    run_bundle = event_model.compose_run()
    desc = run_bundle.compose_descriptor(name="primary", data_keys={"det": {
        "source": "sim", "dtype": "array", "shape": [3, 16, 24], "external": "STREAM:", "dtype_numpy": "<u2"}})
    resource = run_bundle.compose_stream_resource(
        mimetype="application/x-hdf5", uri=path.as_uri(), data_key="det",
        parameters={"dataset": "/entry/data/data", "chunk_shape": [3, 16, 24]})
    cb = TomoGANCallback(denoiser, directory=tmp_path / "derived")
    out = []
    cb.subscribe(lambda name, doc: out.append((name, doc)))
    cb("start", run_bundle.start_doc)
    cb("descriptor", desc.descriptor_doc)
    cb("stream_resource", resource.stream_resource_doc)
    cb("stream_datum", resource.compose_stream_datum(indices={"start": 0, "stop": 3}, seq_nums={"start": 1, "stop": 4},
                                                     descriptor=desc.descriptor_doc))
    cb("stop", run_bundle.compose_stop())
    ddesc = next(d for n, d in out if n == "descriptor" and d["name"] == "denoised")
    pages = [d for n, d in out if n == "event_page" and d["descriptor"] == ddesc["uid"]]
    errors = [e for p in pages for e in p["data"]["det_qc_error"]]
    exposure = [e for p in pages for e in p["data"]["det_source_exposure"]]
    assert exposure == [0, 1, 2] * 3
    assert errors[:8] == [""] * 8 and "the event holds 2 frames; frame 2 (0-based) is missing" in errors[8]
    datums = [d for n, d in out if n == "stream_datum" and d["descriptor"] == ddesc["uid"]]
    assert sum(d["indices"]["stop"] - d["indices"]["start"] for d in datums) == 9  # a file row for every row
    from bluesky_tomogan.hdf5_frames import StreamFrameReader

    (written,) = [d for n, d in out if n == "stream_resource" and d["data_key"] == "det_denoised"]
    reader = StreamFrameReader(written)
    try:
        rows_written = reader(0, 9)
    finally:
        reader.close()
    assert rows_written.shape == (9, 16, 24)
    # file rows are in the order frames finished (the StreamDatums map them): the missing frame's is zeros
    assert sum(not r.any() for r in rows_written) == 1 and sum(r.mean() > 100 for r in rows_written) == 8


def test_worker_finishes_before_stop_is_passed_on(RE, denoiser):
    cb = TomoGANCallback(denoiser, flush_timeout=30)
    docs = run(RE, cb, [camera(shape=(128, 128))], num=4)
    assert not any("did not finish" in e for e in cb.errors)  # flushed within flush_timeout, not cut off
    assert docs[-1][1]["num_events"]["denoised"] == 4
    assert [n for n, _ in docs].index("stop") == len(docs) - 1


def test_external_mode_writes_frames_to_hdf5_described_by_stream_documents(RE, denoiser, tmp_path):
    import h5py

    cb = TomoGANCallback(denoiser, directory=tmp_path)
    docs = run(RE, cb, [camera()], num=4)
    validate(docs)
    desc = next(d for n, d in docs if n == "descriptor" and d["name"] == "denoised")
    assert desc["data_keys"]["cam_denoised"]["external"] == "STREAM:"
    assert desc["data_keys"]["cam_denoised"]["shape"] == [48, 64]  # one frame a row, stacked
    (resource,) = [d for n, d in docs if n == "stream_resource"]
    assert resource["parameters"]["join_method"] == "stack" and resource["parameters"]["chunk_shape"] == [1, 48, 64]
    datums = [d for n, d in docs if n == "stream_datum"]
    assert resource["mimetype"] == "application/x-hdf5" and resource["parameters"]["dataset"] == "/data"
    assert sum(d["indices"]["stop"] - d["indices"]["start"] for d in datums) == 4
    assert all(d["descriptor"] == desc["uid"] for d in datums)
    pages = [d for n, d in docs if n == "event_page" and d["descriptor"] == desc["uid"]]
    assert all("cam_denoised" not in p["data"] for p in pages)  # frames are external, QC columns inline
    path = resource["uri"].removeprefix("file://")
    with h5py.File(path, "r", swmr=True) as f:
        frames = f["data"][()]
    assert frames.shape == (4, 48, 64) and frames.dtype == np.float32 and np.isfinite(frames).all()
    assert docs[-1][1]["num_events"]["denoised"] == 4


def test_local_tiled_starts_an_embedded_server(tmp_path):
    """Also a second one in the same process, on the same store (a notebook cell run twice) or another:
    every client keeps working (tiled keeps a server's API key process-wide)."""
    from bluesky_tomogan.storage import close_local_tiled, frames_directory, local_tiled

    client = local_tiled(tmp_path / "store")
    try:
        assert list(client) == []
        assert frames_directory(tmp_path / "store").is_dir()
        for again in (tmp_path / "store", tmp_path / "other"):
            second = local_tiled(again)
            assert list(second) == list(client) == []  # neither is refused ("401: Invalid API key")
            close_local_tiled(second)
            assert list(client) == []
    finally:
        close_local_tiled(client)


def test_run_router_factory_gives_each_run_its_own_callback(RE, denoiser):
    from event_model import RunRouter

    from bluesky_tomogan.callbacks import tomogan_factory

    docs = []
    RE.subscribe(RunRouter([tomogan_factory(denoiser, [lambda name, doc: docs.append((name, doc))])]))
    RE(bp.count([camera()], num=3))
    RE(bp.count([camera(shape=(32, 32))], num=2))
    validate(docs)
    stops = [d for n, d in docs if n == "stop"]
    assert [s["num_events"] for s in stops] == [{"primary": 3, "denoised": 3}, {"primary": 2, "denoised": 2}]
    starts = [d["uid"] for n, d in docs if n == "start"]
    derived = [d for n, d in docs if n == "descriptor" and d["name"] == "denoised"]
    assert [d["run_start"] for d in derived] == starts


def test_block_policy_never_hangs_the_producer_on_a_stuck_consumer():
    q = FrameQueue(maxsize=1, policy="block")
    assert q.put("a") is True
    assert q.put("b", timeout=0.01) is False  # nobody consumes: the frame is dropped, recorded
    assert q.dropped == ["b"] and len(q) == 1
    tombs = FrameQueue(maxsize=1, policy="drop-oldest", tombstone=lambda item: f"lost {item}")
    tombs.put("a")
    tombs.put("b")  # "a" is dropped; its tombstone stays in its place for the consumer
    assert tombs.dropped == ["lost a"]
    assert [tombs.get(0), tombs.get(0)] == [(False, "lost a"), (True, "b")]


def test_closing_the_queue_wakes_a_waiting_put_and_refuses_frames():
    import threading

    q = FrameQueue(maxsize=1, policy="block")
    q.put("a")
    answers = []
    waiting = threading.Thread(target=lambda: answers.append(q.put("b", timeout=60)))
    waiting.start()
    q.close()  # the consumer died: the producer must not wait 60 s for it
    waiting.join(timeout=5)
    assert not waiting.is_alive() and answers == [False]
    assert FrameQueue(policy="drop-oldest").put("c") is True
    closed = FrameQueue(policy="drop-oldest")
    closed.close()
    assert closed.put("c") is False and closed.dropped == [] and len(closed) == 0


def test_a_failing_stop_handler_still_passes_the_raw_stop_on(RE, denoiser, monkeypatch):
    from bluesky_tomogan.callbacks.run import RunDenoiser

    def broken(self, doc):
        raise RuntimeError("boom")

    monkeypatch.setattr(RunDenoiser, "stop", broken)
    cb = TomoGANCallback(denoiser)
    docs = run(RE, cb, [camera()], num=2)
    names = [n for n, _ in docs]
    assert names.count("stop") == 1 and names[-1] == "stop"
    # the raw descriptor exactly once; the derived stream is announced with its first row, and the
    # failed stop emitted none
    assert [d["name"] for n, d in docs if n == "descriptor"] == ["primary"]
    import threading

    worker = f"tomogan-worker-{cb.last_run.uid[:8]}"  # released anyway: nothing of the run outlives its stop
    deadline = time.monotonic() + 5
    while any(t.name == worker for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name == worker for t in threading.enumerate())


class SlowDenoiser:
    """A real denoiser that takes ``delay`` seconds per frame, to make the queue overflow."""

    def __init__(self, inner, delay):
        self.inner, self.delay, self.depth = inner, delay, inner.depth

    def denoise_context(self, context):
        time.sleep(self.delay)
        return self.inner.denoise_context(context)

    def provenance(self):
        return self.inner.provenance()


@pytest.mark.parametrize("external", [False, True], ids=["inline", "hdf5"])
def test_dropped_frames_are_recorded_as_rows_in_their_place(RE, denoiser, tmp_path, external):
    cb = TomoGANCallback(SlowDenoiser(denoiser, 0.1), policy="drop-oldest", maxsize=1,
                         directory=tmp_path if external else None)
    docs = run(RE, cb, [camera(shape=(32, 32))], num=12)
    validate(docs)
    pages = [d for n, d in docs if n == "event_page"]
    errors = [e for p in pages for e in p["data"]["cam_qc_error"]]
    seq = sorted(s for p in pages for s in p["data"]["cam_source_seq_num"])
    assert seq == list(range(1, 13))  # every raw frame has its row, dropped or not
    assert cb.dropped > 0 and sum(e.startswith("dropped: queue full") for e in errors) == cb.dropped
    assert cb.errors == []  # drops are counted in ``dropped``, not repeated as errors
    if external:
        datums = [d for n, d in docs if n == "stream_datum"]
        assert sum(d["indices"]["stop"] - d["indices"]["start"] for d in datums) == 12


def test_a_grey_frame_with_a_trailing_channel_axis_is_one_frame(RE, denoiser):
    """``[H, W, 1]`` (how some cameras and PIL declare a grey image) is one frame per event, not H
    exposures of ``W x 1``."""
    from bluesky_tomogan.callbacks.derived_stream import exposures_per_event, frame_shape

    key = {"dtype": "array", "shape": [40, 48, 1]}
    assert exposures_per_event(key) == 1 and frame_shape(key) == (40, 48)
    assert frame_shape({"dtype": "array", "shape": [3, 40, 48]}) == (40, 48)
    rng = np.random.default_rng(0)
    cam = SynSignal(func=lambda: rng.poisson(500, (40, 48, 1)).astype(np.uint16), name="cam")
    cb = TomoGANCallback(denoiser, inline=True)
    docs = run(RE, cb, [cam], num=3)
    pages = [d for n, d in docs if n == "event_page" and "cam_denoised" in d["data"]]
    frames = [np.asarray(f) for p in pages for f in p["data"]["cam_denoised"]]
    assert [f.shape for f in frames] == [(40, 48)] * 3
    assert [e for p in pages for e in p["data"]["cam_qc_error"]] == [""] * 3


def test_float16_frames_are_denoised_without_numpy_warnings(RE, denoiser):
    import warnings

    rng = np.random.default_rng(0)
    cam = SynSignal(func=lambda: rng.poisson(500, (40, 48)).astype(np.float16), name="cam")
    cb = TomoGANCallback(denoiser, inline=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a warning in the worker would become a row's error
        docs = run(RE, cb, [cam], num=3)
    pages = [d for n, d in docs if n == "event_page" and "cam_denoised" in d["data"]]
    assert [e for p in pages for e in p["data"]["cam_qc_error"]] == [""] * 3


@pytest.mark.parametrize("scale", [3e38, 1e300])
def test_frames_near_or_beyond_float32s_top_are_judged_without_numpy_warnings(RE, denoiser, scale):
    # their sums overflow in QC (noise, registration) and in the despike: the metrics say inf or NaN,
    # and a RuntimeWarning from the worker would only reach the user's console (here: the row's error)
    import warnings

    rng = np.random.default_rng(0)
    frames = [rng.poisson(500, (40, 48)).astype(np.float64) * (scale / 500 if i in (1, 2) else 1.0) for i in range(4)]
    it = itertools.chain(frames[:1], frames, itertools.repeat(frames[-1]))  # SynSignal calls func once when made
    cam = SynSignal(func=lambda: next(it), name="cam")
    cb = TomoGANCallback(denoiser, inline=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        docs = run(RE, cb, [cam], num=4)
    page = next(d for n, d in docs if n == "event_page" and "cam_denoised" in d["data"])
    assert not any("RuntimeWarning" in e for e in page["data"]["cam_qc_error"])
    assert page["data"]["cam_qc_error"][0] == "" and page["data"]["cam_qc_flags"][0] == ""
    assert all(page["data"]["cam_qc_flags"][i] or page["data"]["cam_qc_error"][i] for i in (1, 2))  # said, not silent


def test_a_frame_of_another_shape_is_flagged_and_kept_out_of_the_context(RE, denoiser):
    rng = np.random.default_rng(0)
    calls = iter(range(100))

    def frame():
        shape = (40, 64) if next(calls) == 2 else (48, 64)
        return rng.poisson(500, shape).astype(np.uint16)

    cb = TomoGANCallback(denoiser, inline=True)
    docs = run(RE, cb, [SynSignal(func=frame, name="cam")])
    pages = [d for n, d in docs if n == "event_page"]
    errors = [e for p in pages for e in p["data"]["cam_qc_error"]]
    assert [bool(e) for e in errors].count(True) == 1
    assert "frame shape (40, 64) is not the declared (48, 64)" in next(e for e in errors if e)
    frames = [np.asarray(f) for p in pages for f in p["data"]["cam_denoised"]]
    assert all(f.shape == (48, 64) for f in frames) and docs[-1][1]["num_events"]["denoised"] == 5


def test_a_detector_wrong_for_the_whole_scan_gives_a_few_lines_not_one_per_frame(RE, denoiser, caplog):
    """Every frame but the first has another shape than declared (an ROI plugin the describe() does not
    know of): every row says why, ``cb.errors`` and the log list five frames and count the rest."""
    rng = np.random.default_rng(0)
    calls = iter(range(100))

    def frame():
        return rng.poisson(500, (48, 64) if next(calls) < 2 else (40, 64)).astype(np.uint16)

    cb = TomoGANCallback(denoiser, inline=True)
    with caplog.at_level("WARNING"):
        docs = run(RE, cb, [SynSignal(func=frame, name="cam")], num=40)
    errors = [e for _, d in docs if _ == "event_page" for e in d["data"].get("cam_qc_error", [])]
    assert len(errors) == 40 and sum("is not the declared (48, 64)" in e for e in errors) == 39
    listed = [e for e in cb.errors if "is not the declared" in e]
    assert len(listed) == 6 and "cam: 34 more frames not denoised: frame shape (40, 64)" in listed[-1]
    assert sum("is not the declared" in r.getMessage() for r in caplog.records) == 6
    assert docs[-1][1]["exit_status"] == "success"


def test_a_field_that_disappears_mid_run_is_noted_and_the_run_goes_on(denoiser):
    run_bundle = event_model.compose_run()
    desc = run_bundle.compose_descriptor(
        name="primary", data_keys={"cam": {"source": "sim", "dtype": "array", "shape": [16, 16]},
                                   "x": {"source": "sim", "dtype": "number", "shape": []}})
    frame = np.full((16, 16), 100, np.uint16)
    raw = [("start", run_bundle.start_doc), ("descriptor", desc.descriptor_doc)]
    raw += [("event", desc.compose_event(data={"cam": frame, "x": i}, timestamps={"cam": 0, "x": 0}))
            for i in range(3)]
    for i in range(3, 15):  # the detector stopped sending frames
        broken = desc.compose_event(data={"cam": frame, "x": i}, timestamps={"cam": 0, "x": 0})
        del broken["data"]["cam"], broken["timestamps"]["cam"]
        raw.append(("event", broken))
    raw.append(("stop", run_bundle.compose_stop()))

    cb = TomoGANCallback(denoiser)
    out = through(cb, raw)
    assert [d["uid"] for n, d in out if n == "event"] == [d["uid"] for n, d in raw if n == "event"]
    assert out[-1][0] == "stop" and out[-1][1]["num_events"]["denoised"] == 3
    assert sum("lacks image field 'cam'" in e for e in cb.errors) == 5  # five listed, then counted
    assert "7 more event pages lack image field 'cam'" in cb.errors


@pytest.mark.parametrize("values", [2, 6])
def test_an_event_page_whose_image_column_does_not_match_its_events_is_noted(denoiser, values):
    """Not a valid page: a column of 2 values for 4 events went without a word (2 rows), one of 6 raised an
    IndexError, logged with its traceback as an internal error. The frames paired with an event are denoised, and
    cb.errors says what the page held."""
    run_bundle = event_model.compose_run()
    desc = run_bundle.compose_descriptor(name="primary", data_keys={"cam": {"source": "sim", "dtype": "array",
                                                                            "shape": [16, 16]}})
    rng = np.random.default_rng(0)
    events = [desc.compose_event(data={"cam": rng.poisson(400, (16, 16)).astype(np.uint16)}, timestamps={"cam": 0})
              for _ in range(4)]
    page = event_model.pack_event_page(*events)
    page["data"]["cam"] = [rng.poisson(400, (16, 16)).astype(np.uint16) for _ in range(values)]
    cb = TomoGANCallback(denoiser, inline=True)
    out = through(cb, [("start", run_bundle.start_doc), ("descriptor", desc.descriptor_doc), ("event_page", page),
                       ("stop", run_bundle.compose_stop())])
    assert out[-1][0] == "stop" and out[-1][1]["num_events"]["denoised"] == min(values, 4)
    assert [e for e in cb.errors if "holds" in e] == [
        f"event page {page['uid'][0][:8]}: image field 'cam' holds {values} values for 4 events; only the first "
        f"{min(values, 4)} are denoised"]
    assert not any("internal error" in e for e in cb.errors)


def test_documents_that_crossed_a_wire_are_denoised_and_a_ragged_value_costs_only_its_row(denoiser):
    """Documents decoded from JSON or msgpack carry frames as nested lists; a value that is not even an
    array (ragged lists) gets its row with the reason, and tiny frames (3 x 3) are frames, not a colour image."""
    rng = np.random.default_rng(1)
    run_bundle = event_model.compose_run()
    raw = [("start", run_bundle.start_doc)]
    for name, shape in (("big", [16, 16]), ("tiny", [3, 3])):
        desc = run_bundle.compose_descriptor(name=name, data_keys={name: {"source": "sim", "dtype": "array",
                                                                          "shape": shape}})
        raw.append(("descriptor", desc.descriptor_doc))
        values = [rng.poisson(300, shape).tolist() for _ in range(4)]
        if name == "big":
            values[2] = [[1, 2], [3]]
        raw += [("event", desc.compose_event(data={name: v}, timestamps={name: 0}, seq_num=i + 1))
                for i, v in enumerate(values)]
    raw.append(("stop", run_bundle.compose_stop()))

    cb = TomoGANCallback(denoiser)
    out = through(cb, raw)
    validate(out)
    stop = out[-1][1]
    assert stop["num_events"]["big_denoised"] == 4 and stop["num_events"]["tiny_denoised"] == 4
    errors = {}
    for name, doc in out:
        if name == "event_page":
            for key, column in doc["data"].items():
                if key.endswith("_qc_error"):
                    errors.setdefault(key, []).extend(column)
    assert errors["tiny_qc_error"] == ["", "", "", ""]
    assert errors["big_qc_error"][2].startswith("cannot read frame: InputValueError: the event's 'big' is not an array")
    assert [e for i, e in enumerate(errors["big_qc_error"]) if i != 2] == ["", "", ""]


class FailingDenoiser(SlowDenoiser):
    """A model whose runtime fails on every ``every``-th frame (a device reset, a driver error)."""

    def __init__(self, inner, every):
        super().__init__(inner, 0.0)
        self.every, self.calls = every, 0

    def denoise_context(self, context):
        self.calls += 1
        if self.calls % self.every == 0:
            raise RuntimeError("Edge TPU: device reset")
        return self.inner.denoise_context(context)


def test_a_failing_model_is_flagged_per_frame_and_the_scan_goes_on(RE, denoiser, tmp_path):
    cb = TomoGANCallback(FailingDenoiser(denoiser, every=2), directory=tmp_path)
    docs = run(RE, cb, [camera()], num=6)
    validate(docs)
    errors = [e for n, d in docs if n == "event_page" for e in d["data"]["cam_qc_error"]]
    assert len(errors) == 6 and errors.count("RuntimeError: Edge TPU: device reset") == 3
    assert [n for n, _ in docs].count("event") == 6 and docs[-1][1]["num_events"]["denoised"] == 6


def test_frames_of_an_unusable_dtype_are_flagged(RE, denoiser):
    rng = np.random.default_rng(0)
    calls = iter(range(100))

    def frame():
        f = rng.poisson(500, (32, 32))
        return (f > 500) if next(calls) == 1 else f.astype(np.uint16)

    docs = run(RE, TomoGANCallback(denoiser), [SynSignal(func=frame, name="cam")], num=4)
    errors = [e for n, d in docs if n == "event_page" for e in d["data"]["cam_qc_error"]]
    assert sum(bool(e) for e in errors) == 1 and "bool" in next(e for e in errors if e)
    assert docs[-1][1]["num_events"]["denoised"] == 4


def test_a_streams_first_frame_waits_for_its_neighbour_however_slow_the_run(RE, denoiser, monkeypatch):
    """The first frame's context does not depend on timing: a next frame that comes long after the
    wait for context still becomes its neighbour (a stream's later frames keep the timed rule)."""
    import bluesky.plan_stubs as bps

    from bluesky_tomogan.callbacks import run as run_module

    monkeypatch.setattr(run_module, "CONTEXT_WAIT", 0.05)
    cam = camera(seed=4)

    def slow_start():
        yield from bps.open_run()
        yield from bps.trigger_and_read([cam])
        yield from bps.sleep(1.5)  # thirty times the wait for context, three of the worker's polls
        for _ in range(2):
            yield from bps.trigger_and_read([cam])
        yield from bps.close_run()

    docs = []
    cb = TomoGANCallback(denoiser, inline=True)
    cb.subscribe(lambda name, doc: docs.append((name, doc)))
    RE.subscribe(cb)
    RE(slow_start())
    raw = [np.asarray(d["data"]["cam"]) for n, d in docs if n == "event"]
    out = [np.asarray(f) for n, d in docs if n == "event_page" and "cam_denoised" in d["data"]
           for f in d["data"]["cam_denoised"]]
    assert len(raw) == len(out) == 3
    first = [raw[j] for j in context_indices(np.zeros(3, np.int32), 0, denoiser.depth)]  # neighbours mirrored
    np.testing.assert_allclose(out[0], denoiser.denoise_context(np.stack(first)), atol=1e-3)


def test_a_worker_running_behind_keeps_every_frame_full_context(RE, denoiser, monkeypatch):
    """Frames whose next frame already waits in the queue are not 'overdue', however late the worker is."""
    from bluesky_tomogan.callbacks import run as run_module

    monkeypatch.setattr(run_module, "CONTEXT_WAIT", 0.05)

    class Slow:  # a denoiser that takes longer per frame than the wait for a next frame
        def __getattr__(self, name):
            return getattr(denoiser, name)

        def denoise_context(self, context, **kwargs):
            time.sleep(0.2)
            return denoiser.denoise_context(context, **kwargs)

    cb = TomoGANCallback(Slow(), policy="block", inline=True)
    docs = run(RE, cb, [camera(seed=3)], num=6)
    raw = [np.asarray(d["data"]["cam"]) for n, d in docs if n == "event"]
    out = [np.asarray(f) for n, d in docs if n == "event_page" and "cam_denoised" in d["data"]
           for f in d["data"]["cam_denoised"]]
    assert len(raw) == len(out) == 6
    half = denoiser.depth // 2
    for k in range(half, 6 - half):  # every inner frame with its real neighbours, none with mirrored context
        expected = denoiser.denoise_context(np.stack(raw[k - half : k + half + 1]))
        np.testing.assert_allclose(out[k], expected, atol=1e-3)


@pytest.mark.parametrize("depth", [1, 5, 7])
def test_a_network_of_another_context_depth_gets_that_many_neighbours_mirrored_at_both_ends(RE, denoiser, depth):
    """A network that reads 5 (or 7, or 1) adjacent frames gets them, in the rule of training and offline
    inference (``context_indices``); the frames at the end of the run are denoised at the stop."""
    seen: list[np.ndarray] = []

    class Wide:  # the shipped network on the middle three frames, recording the whole context
        def __getattr__(self, name):
            return getattr(denoiser, name)

        depth = 0  # set below; a class attribute wins over __getattr__

        def denoise_context(self, context, **kwargs):
            seen.append(np.asarray(context).copy())
            half = len(context) // 2
            return denoiser.denoise_context(np.stack([context[max(half - 1, 0)], context[half],
                                                      context[min(half + 1, len(context) - 1)]]), **kwargs)

    Wide.depth = depth
    docs = run(RE, TomoGANCallback(Wide(), policy="block", inline=True), [camera(seed=5)], num=6)
    raw = [np.asarray(d["data"]["cam"]) for n, d in docs if n == "event"]
    rows = [f for n, d in docs if n == "event_page" and "cam_denoised" in d["data"] for f in d["data"]["cam_denoised"]]
    assert len(raw) == len(rows) == 6 and len(seen) == 6
    for context in seen:
        assert context.shape == (depth, *raw[0].shape)
        index = [next(i for i, r in enumerate(raw) if np.array_equal(r, c)) for c in context]
        centre = index[depth // 2]
        assert index == context_indices(np.zeros(6, np.int32), centre, depth)
    centres = [next(i for i, r in enumerate(raw) if np.array_equal(r, c[depth // 2])) for c in seen]
    assert sorted(centres) == list(range(6))


def _streams(docs):
    descriptors = {d["uid"]: d["name"] for n, d in docs if n == "descriptor"}
    rows: dict = {}
    for name, doc in docs:
        if name in ("event", "event_page"):
            stream = descriptors[doc["descriptor"]]
            rows[stream] = rows.get(stream, 0) + (len(doc["seq_num"]) if name == "event_page" else 1)
    return rows


def test_a_derived_stream_never_takes_the_name_of_a_raw_stream_that_came_before(RE, denoiser):
    import bluesky.plan_stubs as bps

    cam = camera()

    def plan():  # the plan's own stream "denoised" comes first
        yield from bps.open_run()
        for _ in range(3):
            yield from bps.trigger_and_read([cam], name="denoised")
            yield from bps.trigger_and_read([cam])
        yield from bps.close_run()

    cb = TomoGANCallback(denoiser, inline=True, streams=["primary"])
    docs = []
    cb.subscribe(lambda name, doc: docs.append((name, doc)))
    RE.subscribe(cb)
    RE(plan())
    assert _streams(docs) == {"denoised": 3, "primary": 3, "denoised_2": 3}
    assert docs[-1][1]["num_events"] == {"denoised": 3, "primary": 3, "denoised_2": 3}
    assert any("is named 'denoised_2'" in e for e in cb.errors)
    (renamed,) = [d for n, d in docs if n == "descriptor" and d["name"] == "denoised_2"]
    assert derived_from(renamed) == ("primary", "cam")  # found by what it denoises, not by its name

    # the QC IOC of a split deployment reads the verdicts from the derived stream, whatever its name
    feedback = QCFeedback()
    reader = QCFromDocuments(feedback)
    for name, doc in docs:
        reader(name, doc)
    assert (feedback.judged("denoised_2"), feedback.judged("denoised")) == (3, 0)
    # and what a paced plan (max_qc_lag) may wait for: the model reads 5 frames, 2 after the one it denoises
    assert renamed["configuration"]["tomogan"]["data"]["context_frames"] == denoiser.depth == 5
    assert feedback.lookahead("denoised_2") == 2


def test_a_raw_stream_that_takes_a_derived_streams_name_later_is_said_to_clash(RE, denoiser):
    import bluesky.plan_stubs as bps

    cam = camera()

    def plan():
        yield from bps.open_run()
        for _ in range(3):
            yield from bps.trigger_and_read([cam])
            yield from bps.trigger_and_read([cam], name="denoised")
        yield from bps.close_run()

    cb = TomoGANCallback(denoiser, inline=True, streams=["primary"])
    RE.subscribe(cb)
    RE(plan())
    assert any("stores that key streams by name will mix the two: give the plan's stream another name" in e
               for e in cb.errors)


def test_replaying_a_denoised_run_does_not_denoise_its_derived_streams_again(RE, denoiser):
    first = TomoGANCallback(denoiser, inline=True)
    stored = run(RE, first, [camera()], num=3)  # the run as a store holds it: raw and derived streams
    again = TomoGANCallback(denoiser, inline=True)
    out = through(again, stored)
    assert "denoised_denoised" not in _streams(out)
    assert any("made by bluesky-tomogan" in e and "not denoised again" in e for e in again.errors)
    assert any("replay the stored run with `bluesky-tomogan reprocess`" in e for e in again.errors)


@pytest.mark.parametrize("given, message", [
    ("tomogan-projection", "got str 'tomogan-projection'; load it first: load_denoiser('tomogan-projection')"),
    (None, "got NoneType None (a Denoiser from load_denoiser"),
    ({"cam": object()}, "needs a denoiser for field 'cam', got object"),
])
def test_what_cannot_denoise_is_refused_before_the_scan(given, message):
    with pytest.raises(TypeError) as info:
        TomoGANCallback(given)
    assert message in str(info.value)


def test_a_model_trained_on_the_other_kind_of_image_is_warned_about(caplog):
    """A slice model given to denoise projections (a fine-tuned slice model where its projection model
    belongs), or a projection model to denoise slices: it runs, with a warning that names the fix."""
    from bluesky_tomogan import TomoReconstruction, load_denoiser

    slices = load_denoiser("tomogan-slice", backend="onnxruntime")
    projections = load_denoiser("tomogan-projection", backend="onnxruntime")
    TomoGANCallback(projections), TomoReconstruction(slices)
    assert "model (trained on" not in caplog.text
    TomoGANCallback(slices)
    assert "is a slice model (trained on slices); use a projection model" in caplog.text
    TomoReconstruction(projections)
    assert "is a projection model (trained on projections); use a slice model" in caplog.text


@pytest.mark.parametrize("option, message", [
    ({"fields": ["cma"]}, "fields=['cma'] named no image field of the streams denoised (their image fields: ['cam'])"),
    ({"streams": ["primry"]}, "streams=['primry'] names no stream of this run with images (its streams with "
                              "images: ['primary']); nothing was denoised"),
])
def test_a_misspelt_stream_or_field_is_said_not_to_match(RE, denoiser, option, message):
    cb = TomoGANCallback(denoiser, inline=True, **option)
    docs = run(RE, cb, [camera()], num=2)
    assert not [d for n, d in docs if n == "descriptor" and d["name"] != "primary"]
    assert message in cb.errors


def test_a_scan_without_images_says_nothing_about_the_options(RE, denoiser):
    from ophyd.sim import det

    cb = TomoGANCallback(denoiser, fields=["cam"], streams=["primary"])
    run(RE, cb, [det], num=2)
    assert cb.errors == []


def test_a_run_that_began_before_the_callback_was_subscribed_passes_through_with_one_warning(denoiser, caplog):
    """Subscribed in the middle of a run: its documents go on unchanged, and the log says why once, not once
    per frame with a traceback (a 1000-frame scan gave 1000 tracebacks)."""
    run_bundle = event_model.compose_run()
    desc = run_bundle.compose_descriptor(name="primary", data_keys={"cam": {
        "source": "X", "dtype": "array", "shape": [16, 16], "dtype_numpy": "<u2"}})
    events = [desc.compose_event(data={"cam": np.full((16, 16), 400, np.uint16)}, timestamps={"cam": 0.0})
              for _ in range(20)]
    cb = TomoGANCallback(denoiser, inline=True)
    out = []
    cb.subscribe(lambda name, doc: out.append((name, doc)))
    with caplog.at_level("WARNING"):
        for name, doc in [("descriptor", desc.descriptor_doc), *[("event", e) for e in events],
                          ("stop", run_bundle.compose_stop())]:
            cb(name, doc)
    assert [n for n, _ in out] == ["descriptor"] + ["event"] * 20 + ["stop"]
    assert all(a is b for (_, a), b in zip(out[1:-1], events, strict=True))
    said = [r for r in caplog.records if "has not seen" in r.getMessage()]
    assert 1 <= len(said) <= 3 and not any(r.exc_info for r in caplog.records)


@pytest.mark.parametrize("idle_s", [0.0, 3600.0])
def test_runs_without_their_stop_are_ended_when_too_many_are_open(denoiser, caplog, monkeypatch, idle_s):
    """A RunEngine killed during a run never sends its stop; a callback that lives on (``serve``) kept each such
    run's worker thread and frames for ever (two threads per run). Beyond MAX_OPEN_RUNS open runs, the one
    idle longest is ended, once it has had no document for ABANDON_IDLE_S: every frame gets its row, no stop is
    made up, and the runs after it go on. Runs that sent a document more recently are all kept (live ones)."""
    import bluesky_tomogan.callbacks.passthrough as passthrough
    from bluesky_tomogan.callbacks.passthrough import MAX_OPEN_RUNS

    monkeypatch.setattr(passthrough, "ABANDON_IDLE_S", idle_s)  # replayed at once: 0 s stands for a dead run

    def unstopped_run(seed):
        bundle = event_model.compose_run()
        desc = bundle.compose_descriptor(name="primary", data_keys={"cam": {
            "source": "X", "dtype": "array", "shape": [16, 16], "dtype_numpy": "<u2"}})
        rng = np.random.default_rng(seed)
        events = [desc.compose_event(data={"cam": rng.poisson(400, (16, 16)).astype(np.uint16)},
                                     timestamps={"cam": 0.0}) for _ in range(3)]
        return bundle, [("start", bundle.start_doc), ("descriptor", desc.descriptor_doc),
                        *[("event", e) for e in events]]

    runs = [unstopped_run(seed) for seed in range(MAX_OPEN_RUNS + 3)]
    last_bundle, last_docs = runs[-1]
    fed = [d for _, docs in runs for d in docs] + [("stop", last_bundle.compose_stop())]
    cb = TomoGANCallback(denoiser, inline=True)
    with caplog.at_level("WARNING"):
        out = through(cb, fed)
    fed_ids = {id(d) for _, d in fed}
    assert [id(d) for _, d in out if id(d) in fed_ids] == [id(d) for _, d in fed[:-1]]  # each raw document once
    stops = [d for n, d in out if n == "stop"]
    assert len(stops) == 1 and stops[0]["run_start"] == last_bundle.start_doc["uid"]  # no stop made up
    derived_runs = {d["uid"]: d["run_start"] for n, d in out if n == "descriptor" and d["name"] == "denoised"}
    rows: dict[str, list[str]] = {}
    for n, d in out:
        if n in ("event", "event_page") and d["descriptor"] in derived_runs:
            errors = d["data"]["cam_qc_error"]
            rows.setdefault(derived_runs[d["descriptor"]], []).extend(errors if n == "event_page" else [errors])
    if idle_s:  # none idle long enough: all kept, each run whole at its stop
        assert not any("without its stop" in r.getMessage() for r in caplog.records)
        assert not any(s.finished for s in list(cb.runs)[:-1]) and stops[0]["num_events"]["denoised"] == 3
        later = [through(cb, [("stop", bundle.compose_stop())])[-1][1] for bundle, _ in runs[:-1]]
        assert [stop["num_events"]["denoised"] for stop in later] == [3] * (len(runs) - 1)
        assert all(s.finished and not s.errors for s in cb.runs)
        return
    late_stop = runs[0][0].compose_stop()
    with caplog.at_level("WARNING"):
        assert through(cb, [("stop", late_stop)])[-1] == ("stop", late_stop)  # passed on as it is
    ended = [b.start_doc["uid"] for b, _ in runs[:3]]  # idle longest when runs 5, 6 and 7 started
    # every frame of the ended runs and of the stopped one has its row; the open ones get theirs at their next document
    assert [len(rows.get(uid, [])) for uid in [*ended, last_bundle.start_doc["uid"]]] == [3] * 4
    summaries = {s.uid: s for s in cb.runs}
    for uid in ended:
        assert summaries[uid].finished and any("without its stop" in e for e in summaries[uid].errors)
        assert all(e in ("", "not denoised: the run ended without its stop document") for e in rows[uid])
    assert all(e == "" for e in rows[runs[-1][0].start_doc["uid"]])
    assert stops[0]["num_events"]["denoised"] == 3  # the run with a stop: whole
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and sum(t.name.startswith("tomogan-worker-") for t in threading.enumerate()) > (
            MAX_OPEN_RUNS - 1):
        time.sleep(0.05)
    # the open runs (4 to 6) keep their workers until their stop; the ended ones and the stopped one do not
    assert sum(t.name.startswith("tomogan-worker-") for t in threading.enumerate()) <= MAX_OPEN_RUNS - 1
    assert sum("ended without its stop" in r.getMessage() for r in caplog.records) >= 3
    assert not any(r.exc_info for r in caplog.records)


def test_one_stream_or_field_name_is_a_name_not_its_letters(RE, denoiser):
    """``streams="primary"`` (a common slip for ``["primary"]``) denoises the primary stream; it matched
    nothing before (the letters 'p', 'r', ...). Timeouts below 0 and names that are not strings are refused."""
    cb = TomoGANCallback(denoiser, streams="primary", fields="cam", inline=True)
    assert cb.options.streams == ["primary"] and cb.options.fields == ["cam"]
    docs = run(RE, cb, [camera()], num=3)
    assert docs[-1][1]["num_events"]["denoised"] == 3
    with pytest.raises(ValueError, match="flush_timeout must be a number of seconds >= 0, got -1"):
        TomoGANCallback(denoiser, flush_timeout=-1)
    with pytest.raises(TypeError, match="streams must be a name or a list of names"):
        TomoGANCallback(denoiser, streams=[1])  # type: ignore[list-item]


def test_a_slow_storage_write_never_gives_a_frame_a_mirrored_context(RE, denoiser, monkeypatch):
    """A subscriber that takes longer than the context wait on one document (a storage write under load):
    the RunEngine waits on the callback meanwhile, so the next frame is not overdue, and every frame is
    denoised with its real neighbours, as in a run without the slow subscriber."""
    import bluesky_tomogan.callbacks.run as run_module

    monkeypatch.setattr(run_module, "CONTEXT_WAIT", 0.3)

    def frames_of(slow: bool) -> np.ndarray:
        cam = camera(seed=11)
        cb = TomoGANCallback(denoiser, inline=True)
        events = iter(range(100))

        def storage(name, doc):
            if slow and name == "event" and next(events) == 2:
                time.sleep(1.0)  # > CONTEXT_WAIT, inside the document call

        cb.subscribe(storage)
        docs = run(RE, cb, [cam], num=6)
        pages = [d["data"] for n, d in docs if n == "event_page" and "cam_denoised" in d["data"]]
        return np.stack([np.asarray(f) for page in pages for f in page["cam_denoised"]])

    np.testing.assert_array_equal(frames_of(slow=True), frames_of(slow=False))


def test_the_progress_bar_draws_on_a_terminal_not_into_a_log(RE):
    import io

    from bluesky_tomogan.callbacks import ScanProgress

    log_file, forced = io.StringIO(), io.StringIO()  # not terminals
    docs = []
    RE.subscribe(ScanProgress(file=log_file))
    RE.subscribe(ScanProgress(file=forced, disable=False))
    RE.subscribe(lambda name, doc: docs.append(name))
    RE(bp.count([camera()], num=5))
    assert log_file.getvalue() == ""  # a queue server's log gets no line per frame
    assert "5/5" in forced.getvalue() and docs.count("event") == 5


def test_each_frame_of_a_live_scan_is_despiked_once_and_denoised_as_a_stack_would_be(RE, monkeypatch):
    """A frame is in five contexts of the shipped projection model; the callback names its frames to the
    denoiser, which despikes each one once (benchmarks/stream_cost.py), and the frames come out as
    ``Denoiser.denoise`` of the whole stack."""
    import bluesky_tomogan.inference.denoiser as denoiser_module
    from bluesky_tomogan import load_denoiser

    den = load_denoiser("tomogan-projection", backend="onnxruntime")
    calls = []
    real = denoiser_module.remove_isolated_spikes
    monkeypatch.setattr(denoiser_module, "remove_isolated_spikes",
                        lambda frames, sigmas: calls.append(len(frames)) or real(frames, sigmas))
    docs = run(RE, TomoGANCallback(den, inline=True), [camera()], num=7)
    raw = np.stack([d["data"]["cam"] for n, d in docs if n == "event"])
    derived = np.stack([f for n, d in docs if n == "event_page" for f in d["data"].get("cam_denoised", [])])
    assert sum(calls) == 7
    calls.clear()
    np.testing.assert_array_equal(derived, den.denoise(raw))
    assert sum(calls) == 7


def test_each_runs_worker_gives_the_memory_it_freed_back_at_its_end(RE, denoiser, monkeypatch):
    """glibc keeps what a run's threads freed; a long session's RSS grew 5-25 MB a run without the trim
    (benchmarks/soak.py). Where the C library has no malloc_trim, nothing is called."""
    import bluesky_tomogan.callbacks.run as run_module

    if run_module._malloc_trim() is None:
        pytest.skip("the C library here is not glibc: nothing to trim")
    trims = []
    monkeypatch.setattr(run_module, "_give_back_freed_memory", lambda: trims.append(1))
    cb = TomoGANCallback(denoiser)
    RE.subscribe(cb)
    for _ in range(2):
        RE(bp.count([camera()], num=3))
    for worker in [t for t in threading.enumerate() if t.name.startswith("tomogan-worker")]:
        worker.join(10)  # the trim comes after the stop was released
    assert len(trims) == 2


def test_a_denoiser_subclass_whose_denoise_context_takes_no_frame_keys_still_denoises(RE):
    """A subclass written against an earlier ``denoise_context(context, *, out_dtype)`` is called as it was."""
    from bluesky_tomogan import load_denoiser
    from bluesky_tomogan.inference.denoiser import Denoiser

    class Mine(Denoiser):
        def denoise_context(self, context, *, out_dtype="float32"):
            return super().denoise_context(context, out_dtype=out_dtype)

    from bluesky_tomogan.inference.ratios import RatioDenoisers

    base = load_denoiser("tomogan-projection", backend="onnxruntime")
    den = Mine(base.session, base.card, base.model_sha256)
    for given in (den, RatioDenoisers({0.0: den})):  # alone, and as the step of a ladder
        cb = TomoGANCallback(given, inline=True)
        docs = run(RE, cb, [camera()], num=5)
        raw = np.stack([d["data"]["cam"] for n, d in docs if n == "event"])
        derived = np.stack([f for n, d in docs if n == "event_page" for f in d["data"].get("cam_denoised", [])])
        assert not cb.errors
        np.testing.assert_array_equal(derived, base.denoise(raw))
