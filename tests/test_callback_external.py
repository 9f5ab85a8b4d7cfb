"""TomoGANCallback on detectors that write frames to files, and storage in an embedded Tiled."""

from __future__ import annotations

import subprocess
import sys
import time

import bluesky.plans as bp
import event_model
import h5py
import numpy as np
import pytest
from bluesky_tiled_plugins import TiledWriter
from tiled.queries import Key

from bluesky_tomogan import TomoGANCallback
from bluesky_tomogan.devices import SimTomoDetector, SimTomoStage
from bluesky_tomogan.frames import context_indices
from bluesky_tomogan.hdf5_frames import StreamFrameReader
from bluesky_tomogan.storage import derived_streams, frames_directory, server_of, stored_frames


def detector(directory, asset_mode="stream", seed=0):
    return SimTomoDetector(name="det", stage=SimTomoStage(name="stage"), shape=(40, 48), directory=directory,
                           asset_mode=asset_mode, seed=seed, simulate_timing=False)


def collect(cb):
    docs = []
    cb.subscribe(lambda name, doc: docs.append((name, doc)))
    return docs


def raw_frames(docs):
    """All raw frames of the run, read through whichever documents announced them."""
    sres = [d for n, d in docs if n == "stream_resource" and d["data_key"] == "det_image"]
    if sres:
        read = StreamFrameReader(sres[0])
        return np.concatenate([read(d["indices"]["start"], d["indices"]["stop"])
                               for n, d in docs if n == "stream_datum" and d["stream_resource"] == sres[0]["uid"]])
    (res,) = [d for n, d in docs if n == "resource"]
    read = StreamFrameReader({"mimetype": "application/x-hdf5", "uri": "file:///" + res["resource_path"],
                              "parameters": res["resource_kwargs"]})
    return read(0, sum(n == "datum" for n, _ in docs))


@pytest.mark.usefixtures("patient_waits")
@pytest.mark.parametrize("asset_mode", ["stream", "resource"])
def test_external_frames_are_read_and_denoised_with_their_neighbours(RE, denoiser, tmp_path, asset_mode):
    det = detector(tmp_path, asset_mode)
    cb = TomoGANCallback(denoiser, inline=True)
    docs = collect(cb)
    RE.subscribe(cb)
    RE(bp.scan([det], det.sample_stage.theta, 0, 4, 5))  # 1 degree apart: every neighbour is near
    for name, doc in docs:
        event_model.schema_validators[event_model.DocumentNames(name)].validate(doc)
    assert cb.errors == []
    raw = raw_frames(docs).astype(np.float32)
    pages = [d for n, d in docs if n == "event_page"]
    got = np.stack([f for p in pages for f in p["data"]["det_image_denoised"]])
    assert [s for p in pages for s in p["data"]["det_image_source_seq_num"]] == [1, 2, 3, 4, 5]
    group = np.zeros(len(raw), np.int32)
    for k in range(len(raw)):  # the same frames, the same mirrored context, the same numbers
        want = denoiser.denoise_context(raw[context_indices(group, k, denoiser.depth)])
        np.testing.assert_allclose(got[k], want, rtol=1e-5, atol=1e-3)


class BrokenHandler:
    def __init__(self, path, **kwargs):
        raise OSError(f"disk unplugged: {path}")


def test_unreadable_external_frames_are_flagged_and_the_scan_goes_on(RE, denoiser, tmp_path):
    det = detector(tmp_path, "resource")
    cb = TomoGANCallback(denoiser, handler_registry={"hdf5": BrokenHandler})
    docs = collect(cb)
    RE.subscribe(cb)
    (uid,) = RE(bp.count([det], num=3))
    errors = [e for n, d in docs if n == "event_page" for e in d["data"]["det_image_qc_error"]]
    assert len(errors) == 3 and all("cannot read frame" in e for e in errors)
    assert [n for n, _ in docs].count("event") == 3 and docs[-1][0] == "stop"


def test_frames_announced_before_the_file_shows_them_are_waited_for(denoiser, tmp_path):
    """An area detector's file writer that flushes for SWMR readers a moment after its frame counter (which
    ophyd-async's StreamDatum follows) has moved on: the frames are read when they come, not flagged."""
    import threading

    from bluesky_tomogan.hdf5_frames import ANNOUNCED_FRAMES_WAIT_S, FrameFile

    frames = np.random.default_rng(0).poisson(300, (3, 16, 24)).astype(np.uint16)
    file = FrameFile(tmp_path / "det.h5", (16, 24), np.uint16)
    file.append(frames[:1])
    run_bundle = event_model.compose_run()
    desc = run_bundle.compose_descriptor(name="primary", data_keys={"det": {
        "source": "sim", "dtype": "array", "shape": [16, 24], "external": "STREAM:", "dtype_numpy": "<u2"}})
    resource = run_bundle.compose_stream_resource(mimetype="application/x-hdf5", uri=file.uri, data_key="det",
                                                  parameters={"dataset": file.dataset, "chunk_shape": [1, 16, 24]})
    cb = TomoGANCallback(denoiser, inline=True)
    out = collect(cb)
    for name, doc in (("start", run_bundle.start_doc), ("descriptor", desc.descriptor_doc),
                      ("stream_resource", resource.stream_resource_doc)):
        cb(name, doc)
    late = threading.Timer(0.3 * ANNOUNCED_FRAMES_WAIT_S, file.append, (frames[1:],))
    late.start()
    cb("stream_datum", resource.compose_stream_datum(indices={"start": 0, "stop": 3},
                                                     seq_nums={"start": 1, "stop": 4}, descriptor=desc.descriptor_doc))
    cb("stop", run_bundle.compose_stop())
    late.join()
    file.close()
    rows = [d["data"] for n, d in out if n == "event_page" and "det_denoised" in d["data"]]
    assert [e for r in rows for e in r["det_qc_error"]] == ["", "", ""]
    got = np.stack([f for r in rows for f in r["det_denoised"]])
    assert abs(float(got.mean()) - 300) < 10


def test_run_stored_in_tiled_has_denoised_frames_and_qc_columns(RE, denoiser, store, tmp_path):
    frames_dir = frames_directory(tmp_path / "store")
    det = detector(frames_dir / "raw")
    cb = TomoGANCallback(denoiser, directory=frames_dir)
    cb.subscribe(TiledWriter(store))
    token = RE.subscribe(cb)
    (uid,) = RE(bp.scan([det], det.sample_stage.theta, 0, 90, 4), sample="glass beads", operator="test")
    run = store[uid]
    assert set(run) == {"primary", "denoised"}
    denoised = run["denoised"]
    frames = denoised["det_image_denoised"].read()
    assert frames.shape == (4, 40, 48) and frames.dtype == np.float32
    assert list(denoised["det_image_source_seq_num"].read()) == [1, 2, 3, 4]
    assert list(denoised["det_image_qc_error"].read()) == [""] * 4
    assert np.all(denoised["det_image_qc_latency_s"].read() > 0)
    raw = stored_frames(run["primary"]["det_image"]).read()
    assert raw.shape == (4, 40, 48) and raw.dtype == np.uint16
    assert uid in store.search(Key("start.sample") == "glass beads")
    assert run.metadata["stop"]["num_events"] == {"primary": 4, "denoised": 4}
    RE.unsubscribe(token)
    RE.subscribe(TiledWriter(store))
    (plain,) = RE(bp.count([det], num=1))  # a run stored without the callback
    assert store[plain].metadata["stop"]["num_events"] == {"primary": 1}
    # every run with denoised projections, by its stop document (docs/callback.md, "Reading the results")
    assert list(store.search(Key("stop.num_events.denoised") > 0)) == [uid]
    assert derived_streams(run) == {("primary", "det_image"): "denoised"}  # found by what it denoises


def test_each_stored_denoised_row_holds_its_own_frame_when_frames_finish_out_of_order(RE, denoiser, store, tmp_path):
    """Two frames without beam mid-scan are flagged at once, while the frame before them waits for its next
    neighbour: frames finish out of order. Tiled reads a derived stream's frames by file row, so each row must be
    where its frame's row is emitted: every stored denoised frame is the one the callback denoised for that row
    (the same as frames kept inside events), and the unusable frames' rows are zeros. Before, the file's rows
    followed the order frames finished: the two frames before the fault read as zeros, and the unusable frames'
    rows held their neighbours' denoised frames."""
    from bluesky_tomogan.plans import tomo_scan

    frames_dir = frames_directory(tmp_path / "store")
    stage = SimTomoStage(name="stage")
    det = SimTomoDetector(name="det", stage=stage, shape=(48, 48), directory=frames_dir / "raw",
                          simulate_timing=False)
    docs = []

    def lose_the_beam(name, doc):
        if name == "event" and doc["seq_num"] == 5 and "stage_theta" in doc["data"]:
            det.inject_fault("beam_dump", frames=2)

    RE.subscribe(lose_the_beam)
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    cb = TomoGANCallback(denoiser, streams=["primary"], directory=frames_dir)
    cb.subscribe(TiledWriter(store))
    RE.subscribe(cb)
    (uid,) = RE(tomo_scan(det, stage, list(range(0, 36, 3)), n_darks=1, n_flats=1))
    denoised = store[uid]["denoised"]
    errors = list(denoised["det_image_qc_error"].read())
    assert [i for i, e in enumerate(errors) if e] == [5, 6]  # seq 6 and 7: no beam
    inline = TomoGANCallback(denoiser, streams=["primary"], inline=True)
    rows = []
    inline.subscribe(lambda name, doc: rows.extend(doc["data"]["det_image_denoised"])
                     if name == "event_page" and "det_image_denoised" in doc["data"] else None)
    for name, doc in docs:
        inline(name, doc)
    stored = denoised["det_image_denoised"].read()
    assert len(rows) == len(stored) == 12
    for i, (mine, theirs) in enumerate(zip(stored, rows, strict=True)):
        np.testing.assert_allclose(mine, np.asarray(theirs), atol=1e-3, err_msg=f"row {i}")
    assert not stored[5].any() and not stored[6].any() and stored[4].mean() > 100


def test_raw_stream_is_byte_identical_with_and_without_the_callback(RE, denoiser, store, tmp_path):
    """The same scan (same seeds) stored once directly and once through the callback."""
    frames_dir = frames_directory(tmp_path / "store")
    direct = TiledWriter(store)
    token = RE.subscribe(direct)
    det = detector(frames_dir / "raw", seed=3)
    (plain,) = RE(bp.scan([det], det.sample_stage.theta, 0, 90, 3))
    RE.unsubscribe(token)
    cb = TomoGANCallback(denoiser, directory=frames_dir)
    cb.subscribe(TiledWriter(store))
    RE.subscribe(cb)
    det = detector(frames_dir / "raw", seed=3)
    (denoised,) = RE(bp.scan([det], det.sample_stage.theta, 0, 90, 3))
    a, b = store[plain]["primary"], store[denoised]["primary"]
    assert set(store[denoised]) == {"primary", "denoised"}
    assert a.metadata["data_keys"] == b.metadata["data_keys"]
    keys = [k for k in a if k != "time" and not k.startswith("ts_")]  # clocks differ between two scans
    assert "det_image" in keys
    for key in keys:
        x, y = a[key].read(), b[key].read()
        assert x.dtype == y.dtype and np.asarray(x).tobytes() == np.asarray(y).tobytes(), key


@pytest.mark.usefixtures("patient_waits")
@pytest.mark.parametrize("frame_dtype, compression", [("source", "lz4"), ("uint16", "zstd"), ("float32", "gzip")])
def test_derived_frames_stored_as_counts_or_compressed_are_the_float_ones_rounded_and_qc_is_the_same(
        RE, denoiser, store, tmp_path, frame_dtype, compression):
    """The same scan (same seeds) through a callback storing float32 and one storing counts or compressed
    frames: the stored frames are the float ones rounded to the raw type, read back through Tiled; QC measured
    the float frame either way."""
    from bluesky_tomogan.frames import cast_frames

    frames_dir = frames_directory(tmp_path / "store")
    runs = {}
    for options in ({}, {"frame_dtype": frame_dtype, "compression": compression}):
        cb = TomoGANCallback(denoiser, directory=frames_dir, **options)
        cb.subscribe(TiledWriter(store))
        token = RE.subscribe(cb)
        det = detector(frames_dir / "raw", seed=3)
        (runs[bool(options)],) = RE(bp.scan([det], det.sample_stage.theta, 0, 90, 4))
        RE.unsubscribe(token)
    plain, stored = store[runs[False]]["denoised"], store[runs[True]]["denoised"]
    floats, kept = plain["det_image_denoised"].read(), stored["det_image_denoised"].read()
    expected = np.dtype(np.float32) if frame_dtype == "float32" else np.dtype(np.uint16)  # the detector's
    assert kept.dtype == expected and stored.metadata["data_keys"]["det_image_denoised"]["dtype_numpy"] == expected.str
    np.testing.assert_array_equal(kept, cast_frames(floats, expected))
    for column in ("det_image_qc_snr", "det_image_qc_noise_sigma", "det_image_qc_flags"):
        np.testing.assert_array_equal(stored[column].read(), plain[column].read())
    (path,) = (frames_dir / runs[True]).glob("denoised*.h5")
    with h5py.File(path) as f:  # what any HDF5 reader sees: each frame a chunk, through one filter
        assert f["/data"].chunks == (1, 40, 48) and f["/data"].id.get_create_plist().get_nfilters() >= 1


def test_counts_round_clip_and_mark_pixels_without_data_with_the_types_top():
    from bluesky_tomogan.callbacks.frame_writer import stored_dtype
    from bluesky_tomogan.frames import cast_frames

    frames = np.array([[-3.2, 0.49, 0.5, 1.5], [70000.0, np.nan, 65534.6, 12.0]], np.float32)
    np.testing.assert_array_equal(cast_frames(frames, np.dtype(np.uint16)), [[0, 0, 0, 2], [65535, 65535, 65535, 12]])
    np.testing.assert_array_equal(cast_frames(frames, np.dtype(np.float32)), frames)  # NaN kept as NaN
    assert stored_dtype("source", "<u2") == np.uint16 and stored_dtype("source", "<i4") == np.int32
    assert stored_dtype("source", "<f8") == np.float32 and stored_dtype("source", None) == np.float32
    assert stored_dtype("source", [("a", "<u2")]) == np.float32  # a structured type is no count
    assert stored_dtype("source", "<u8") == np.float32  # wider than a float32 frame needs
    assert stored_dtype("uint8", None) == np.uint8


@pytest.mark.parametrize("options, message", [
    ({"frame_dtype": "float64"}, "unknown frame_dtype 'float64'; choose from float32, source"),
    ({"compression": "bz2"}, "unknown compression 'bz2'; choose from lz4, zstd, gzip or None"),
    ({"compression": "lz4", "inline": True}, "inline=True writes none"),
])
def test_storage_options_it_cannot_use_are_refused_before_any_run(denoiser, options, message):
    with pytest.raises(ValueError, match=message):
        TomoGANCallback(denoiser, **options)


def test_a_camera_with_hot_and_dead_pixels_is_denoised_as_one_without_them_and_never_saturated(RE, tmp_path):
    """0.6 % hot pixels stuck at 65535 and 0.3 % dead ones, in every frame: the working pixels' denoised values
    are those of the same camera without defects (the same noise: within half its sigma), and no frame is
    flagged ``saturated`` (whose ``adjust`` would shorten the exposure for nothing)."""
    from bluesky import RunEngine

    from bluesky_tomogan import load_denoiser

    denoised = {}
    for label, defects in (("plain", {}), ("defective", {"hot_pixels": 0.006, "dead_pixels": 0.003})):
        det = SimTomoDetector(name="det", stage=SimTomoStage(name="stage"), shape=(64, 64), seed=3,
                              directory=tmp_path / label, simulate_timing=False, **defects)
        det.photon_flux.put(2e5)  # 2000 photons per pixel: a dead pixel stands far below its neighbours
        cb = TomoGANCallback(load_denoiser("tomogan-projection", backend="auto"), inline=True)
        docs = collect(cb)
        engine = RunEngine({})
        engine.subscribe(cb)
        engine(bp.scan([det], det.sample_stage.theta, 0, 4, 5))  # 1 degree apart: denoised with its neighbours
        pages = [d for n, d in docs if n == "event_page" and "det_image_denoised" in d["data"]]
        denoised[label] = np.stack([f for p in pages for f in p["data"]["det_image_denoised"]])
        flags = [f for p in pages for f in p["data"]["det_image_qc_flags"]]
        assert len(flags) == 5 and not any("saturated" in f for f in flags), (label, flags)
    working = ~(det.hot_map | det.dead_map)
    difference = np.abs(denoised["defective"] - denoised["plain"])[:, working]
    assert difference.max() < np.sqrt(2000) / 2, difference.max()


def test_streams_option_leaves_darks_and_flats_alone(RE, denoiser, tmp_path):
    from bluesky_tomogan.plans import tomo_scan

    det = detector(tmp_path)
    cb = TomoGANCallback(denoiser, streams=["primary"])
    docs = collect(cb)
    RE.subscribe(cb)
    RE(tomo_scan(det, det.sample_stage, [0, 60, 120], n_darks=2, n_flats=2))
    names = sorted(d["name"] for n, d in docs if n == "descriptor")
    assert names == ["dark", "denoised", "flat", "primary"]
    assert docs[-1][1]["num_events"] == {"dark": 2, "flat": 2, "primary": 3, "denoised": 3}


def test_databroker_2_reads_the_denoised_stream(RE, denoiser, store, tmp_path):
    """Analysts' existing databroker code: v1 ``Broker`` and the v2 API on the same Tiled server.

    In a subprocess: databroker 2.0.2's v1 ``Broker`` switches every Tiled client of the
    process to its v2 run classes (bluesky-tiled-plugins 2.0.12), which would leak into
    the other tests.
    """
    frames_dir = frames_directory(tmp_path / "store")
    det = detector(frames_dir / "raw")
    cb = TomoGANCallback(denoiser, directory=frames_dir)
    cb.subscribe(TiledWriter(store))
    RE.subscribe(cb)
    (uid,) = RE(bp.scan([det], det.sample_stage.theta, 0, 90, 3), sample="foam")
    expected = store[uid]["denoised"]["det_image_denoised"].read()
    np.save(tmp_path / "expected.npy", expected)
    script = f"""
import numpy as np
from databroker import Broker
from tiled.client import from_uri
db = Broker(from_uri({server_of(store).uri!r}))
header = db[{uid!r}]
assert header.start["sample"] == "foam" and set(header.stream_names) == {{"primary", "denoised"}}
table = header.table("denoised")
assert list(table["det_image_source_seq_num"]) == [1, 2, 3], table
assert list(table["det_image_qc_error"]) == [""] * 3, table
dataset = db.v2[{uid!r}]["denoised"].read()
assert np.array_equal(dataset["det_image_denoised"].values, np.load({str(tmp_path / "expected.npy")!r}))
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_ophyd_sim_image_detector_is_read_through_its_entry_point_handler(RE, denoiser):
    """ophyd's simulated ``img`` writes ``NPY_SEQ`` files, whose handler ophyd announces as a
    ``databroker.handlers`` entry point: no registry has to be given."""
    from ophyd.sim import img, motor

    cb = TomoGANCallback(denoiser, inline=True)
    docs = collect(cb)
    RE.subscribe(cb)
    RE(bp.scan([img], motor, -1, 1, 3))
    pages = [d for n, d in docs if n == "event_page" and "img_denoised" in d["data"]]
    assert [e for p in pages for e in p["data"]["img_qc_error"]] == [""] * 3
    got = np.stack([f for p in pages for f in p["data"]["img_denoised"]])
    assert got.shape == (3, 10, 10) and np.isfinite(got).all()


def ophyd_v1_area_detector_run(tmp_path, spec, frames_per_point, points=2, shape=(24, 32), compression=None):
    """The documents an ophyd v1 area detector with a file plugin emits: data key shape
    ``(num_images, y, x)`` (``DetectorBase.make_data_key``), ``frame_per_point`` in the resource
    and ``point_number`` in each datum; frames written as the IOC would (``compression``: the
    keyword arguments of an ``hdf5plugin`` filter)."""
    frames = np.random.default_rng(3).poisson(400, (points * frames_per_point, *shape)).astype(np.uint16)
    if spec == "AD_HDF5":
        import h5py

        with h5py.File(tmp_path / "scan_000.h5", "w") as f:
            f.create_dataset("/entry/data/data", data=frames, chunks=(1, *shape), **(compression or {}))
        path, kwargs = "scan_000.h5", {"frame_per_point": frames_per_point}
    else:
        import tifffile

        for j, frame in enumerate(frames):
            tifffile.imwrite(tmp_path / f"scan_{j:06d}.tiff", frame)
        path, kwargs = "", {"template": "%s%s_%6.6d.tiff", "filename": "scan", "frame_per_point": frames_per_point}
    run_bundle = event_model.compose_run()
    desc = run_bundle.compose_descriptor(name="primary", data_keys={"cam_image": {
        "source": "PV:XF:CAM1:", "dtype": "array", "shape": [frames_per_point, *shape], "external": "FILESTORE:"}})
    resource = run_bundle.compose_resource(spec=spec, root=str(tmp_path), resource_path=path,
                                           resource_kwargs=kwargs)
    docs = [("start", run_bundle.start_doc), ("descriptor", desc.descriptor_doc),
            ("resource", resource.resource_doc)]
    for i in range(points):
        datum = resource.compose_datum(datum_kwargs={"point_number": i})
        docs += [("datum", datum), ("event", desc.compose_event(data={"cam_image": datum["datum_id"]},
                                                                timestamps={"cam_image": 0.0},
                                                                filled={"cam_image": False}))]
    return frames, docs + [("stop", run_bundle.compose_stop())]


def _compressed(name):
    import hdf5plugin

    return {None: None, "bitshuffle-lz4": hdf5plugin.Bitshuffle(nelems=0, cname="lz4"),
            "blosc-zstd": hdf5plugin.Blosc(cname="zstd", clevel=5)}[name]


@pytest.mark.parametrize(("spec", "frames_per_point", "compression"), [
    ("AD_HDF5", 1, None), ("AD_HDF5", 3, None), ("AD_TIFF", 2, None),
    ("AD_HDF5", 1, "bitshuffle-lz4"),  # as Eiger and other Dectris detectors write
    ("AD_HDF5", 2, "blosc-zstd"),
])
def test_ophyd_v1_area_detector_files_are_read_with_area_detector_handlers(denoiser, tmp_path, spec,
                                                                            frames_per_point, compression):
    frames, raw = ophyd_v1_area_detector_run(tmp_path, spec, frames_per_point, compression=_compressed(compression))
    cb = TomoGANCallback(denoiser, inline=True)
    out = collect(cb)
    for name, doc in raw:
        cb(name, doc)
    pages = [d for n, d in out if n == "event_page" and "cam_image_denoised" in d["data"]]
    assert [e for p in pages for e in p["data"]["cam_image_qc_error"]] == [""] * len(frames)
    got = np.stack([f for p in pages for f in p["data"]["cam_image_denoised"]])
    assert got.shape == frames.shape
    # each row is its own frame: denoised frames correlate with the raw frame they came from
    for k in range(len(frames)):
        corr = [np.corrcoef(got[k].ravel(), f.ravel())[0, 1] for f in frames.astype(np.float32)]
        assert int(np.argmax(corr)) == k


def test_a_handler_package_that_fails_to_import_costs_only_its_own_spec(denoiser, tmp_path, monkeypatch):
    from importlib.metadata import EntryPoint

    from bluesky_tomogan import handlers

    fake = [EntryPoint("AD_HDF5", "no_such_package_xyz.handlers:Handler", handlers.ENTRY_POINT_GROUP),
            EntryPoint("NPY_SEQ", "ophyd.sim:NumpySeqHandler", handlers.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(handlers, "entry_points", lambda group: fake)
    handlers._discovered.cache_clear()
    try:
        registry = handlers.default_handler_registry()
    finally:
        handlers._discovered.cache_clear()
    assert sorted(registry) == ["AD_HDF5", "NPY_SEQ", "hdf5"]  # nothing imported yet
    frames, raw = ophyd_v1_area_detector_run(tmp_path, "AD_HDF5", 1)
    cb = TomoGANCallback(denoiser, inline=True, handler_registry=registry)
    out = collect(cb)
    for name, doc in raw:
        cb(name, doc)
    errors = [e for n, d in out if n == "event_page" for e in d["data"].get("cam_image_qc_error", [])]
    assert len(errors) == len(frames)
    assert all("cannot load the handler of spec 'AD_HDF5' (no_such_package_xyz.handlers:Handler)" in e
               for e in errors)
    assert out[-1][0] == "stop"


def test_an_ophyd_async_detector_is_denoised_and_stored_with_its_raw_frames(RE, denoiser, store, tmp_path):
    """ophyd-async's simulated camera (its HDF writer, StreamResource/StreamDatum, data key ``[1, H, W]``
    of uint8 frames, a second ``STREAM:`` key of sums that is not an image) into an embedded Tiled."""
    ophyd_async_core = pytest.importorskip("ophyd_async.core")
    ophyd_async_sim = pytest.importorskip("ophyd_async.sim")

    frames_dir = frames_directory(tmp_path / "store")
    generator = ophyd_async_sim.PatternGenerator()
    with ophyd_async_core.init_devices():
        path = ophyd_async_core.StaticPathProvider(ophyd_async_core.StaticFilenameProvider("blob"), frames_dir)
        det = ophyd_async_sim.SimBlobDetector(path, generator, name="blob")
        stage = ophyd_async_sim.SimStage(generator, name="stage")
    cb = TomoGANCallback(denoiser)
    cb.subscribe(TiledWriter(store))
    RE.subscribe(cb)
    (uid,) = RE(bp.scan([det], stage.x, -1, 1, 4))
    run = store[uid]
    raw = run["primary"]["blob"].read()
    denoised = run["denoised"]
    frames = denoised["blob_denoised"].read()
    assert frames.shape[0] == 4 and frames.shape[-2:] == raw.shape[-2:] and frames.dtype == np.float32
    assert list(denoised["blob_source_seq_num"].read()) == [1, 2, 3, 4]
    usable = [i for i, e in enumerate(denoised["blob_qc_error"].read()) if not e]
    assert usable  # frames the QC did not find unusable (an empty blob frame is "beam lost") are denoised
    for i in usable:  # each denoised frame is its own raw frame's
        assert np.corrcoef(frames[i].ravel(), raw[i].astype(np.float32).ravel())[0, 1] > 0.9
    assert "blob-sum" not in {k[: -len("_denoised")] for k in denoised if k.endswith("_denoised")}


def test_importing_the_frame_reader_registers_the_detectors_compression_filters(tmp_path):
    """In a fresh process, h5py alone cannot read bitshuffle/LZ4 frames (an Eiger's); after importing the
    package's frame reader, any reader in the process can (the handlers of other packages, Tiled)."""
    import subprocess
    import sys

    import h5py

    path = tmp_path / "eiger.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("entry/data/data", data=np.arange(2 * 16 * 16, dtype=np.uint16).reshape(2, 16, 16),
                         chunks=(1, 16, 16), **_compressed("bitshuffle-lz4"))
    read = f"import h5py; print(int(h5py.File({str(path)!r})['entry/data/data'][1].sum()))"
    plain = subprocess.run([sys.executable, "-c", read], capture_output=True, text=True)
    assert plain.returncode != 0  # the filter is not built into HDF5: the test means something
    ours = subprocess.run([sys.executable, "-c", "import bluesky_tomogan.hdf5_frames; " + read],
                          capture_output=True, text=True)
    assert ours.returncode == 0 and int(ours.stdout) == int(np.arange(256, 512).sum()), ours.stderr


def derived_frames(docs, key="det_image_denoised"):
    """The derived frames of the run, read through their StreamResource and StreamDatum documents."""
    frames = []
    for sres in (d for n, d in docs if n == "stream_resource" and d["data_key"] == key):
        read = StreamFrameReader(sres)
        frames += [read(d["indices"]["start"], d["indices"]["stop"])
                   for n, d in docs if n == "stream_datum" and d["stream_resource"] == sres["uid"]]
    return np.concatenate(frames)


@pytest.mark.parametrize("declared", [[1, 32, 40], [None, None], [48, 40, 0]],
                         ids=["cropped by a plugin", "no size", "ophyd before 1.4"])
def test_frames_of_another_shape_than_declared_are_denoised_and_stored(RE, denoiser, store, tmp_path, declared):
    """A detector that declares what it does not deliver (a region-of-interest plugin before the file
    writer, ophyd-async issue 659; no size; old ophyd's ``[X, Y, 0]``): the frames are denoised as
    they come, into a derived stream that declares their shape, with one line saying so."""
    frames_dir = frames_directory(tmp_path / "store")
    det = detector(frames_dir / "raw")
    describe = det.describe

    def declaring() -> dict:
        out = describe()
        out["det_image"]["shape"] = declared
        return out

    det.describe = declaring
    cb = TomoGANCallback(denoiser, directory=frames_dir)
    cb.subscribe(TiledWriter(store))  # it cannot store raw frames of no declared size; the derived ones, yes
    docs = collect(cb)
    RE.subscribe(cb)
    (uid,) = RE(bp.scan([det], det.sample_stage.theta, 0, 90, 4))
    for name, doc in docs:
        event_model.schema_validators[event_model.DocumentNames(name)].validate(doc)
    derived = [d for n, d in docs if n == "descriptor" and d["name"] == "denoised"]
    assert [d["data_keys"]["det_image_denoised"]["shape"] for d in derived] == [[40, 48]]
    assert [e for e in cb.errors if "storage consumer" not in e] == [
        "det_image of stream 'primary' declares " + ("frames of (32, 40)" if declared[0] == 1 else "no frame size")
        + " but delivers frames of (40, 48); they are denoised as they come, into a derived stream of that shape"]
    assert docs[-1][1]["num_events"]["denoised"] == 4
    errors = [e for n, d in docs if n == "event_page" for e in d["data"].get("det_image_qc_error", [])]
    assert errors == [""] * 4
    frames, raw = derived_frames(docs), raw_frames(docs)
    assert frames.shape == (4, 40, 48) and np.all(frames.std(axis=(1, 2)) < raw.std(axis=(1, 2)))
    if declared[0] == 1:  # a raw shape TiledWriter takes: the run is stored and read back
        np.testing.assert_array_equal(store[uid]["denoised"]["det_image_denoised"].read(), frames)


@pytest.mark.parametrize("kind, template", [
    ("tiff", "scan_{:06d}.tiff"),                    # ophyd-async's ADTIFFWriter
    ("tiff", "%s%s_%6.6d.tiff"),                     # the area detector's own template, with "filename"
    ("jpeg", "scan_{:06d}.jpg"),                     # ADJPEGWriter: 8-bit, lossy
    ("x-npy", "%s_%d.npy"),                          # ophyd.sim's NPY_SEQ: "<filename>_<i>.npy" whatever the template
])
def test_a_detector_writing_a_file_per_frame_is_denoised_and_stored(denoiser, store, tmp_path, kind, template):
    """A TIFF, JPEG or NumPy file plugin announces a directory and a file-name template (StreamResource
    ``multipart/related;type=...``): its frames are read as ``TiledWriter`` reads them, denoised, and the
    derived frames go next to them, stored in the same run."""
    import tifffile
    from PIL import Image

    rng = np.random.default_rng(0)
    frames = rng.poisson(120 if kind == "jpeg" else 600, (5, 32, 40)).astype(np.uint8 if kind == "jpeg" else np.uint16)
    raw_dir = frames_directory(tmp_path / "store") / "raw" / "cam"
    raw_dir.mkdir(parents=True)
    for i, frame in enumerate(frames):
        name = template.replace("%s%s", "scan").replace("%s", "scan").replace("%6.6d", "{:06d}").replace(
            "%d", "{:d}").format(i)
        if kind == "tiff":
            tifffile.imwrite(raw_dir / name, frame, photometric="minisblack")
        elif kind == "jpeg":
            Image.fromarray(frame).save(raw_dir / name, quality=100)
        else:
            np.save(raw_dir / name, frame)
    run_bundle = event_model.compose_run()
    desc = run_bundle.compose_descriptor(name="primary", data_keys={"cam": {
        "source": "sim", "dtype": "array", "shape": [1, 32, 40], "external": "STREAM:",
        "dtype_numpy": frames.dtype.str}})
    params = {"template": template, "chunk_shape": [1, 32, 40]} | ({"filename": "scan"} if "%s" in template else {})
    mimetype = f"multipart/related;type={'application' if kind == 'x-npy' else 'image'}/{kind}"
    resource = run_bundle.compose_stream_resource(mimetype=mimetype, uri=raw_dir.as_uri() + "/", data_key="cam",
                                                  parameters=params)
    cb = TomoGANCallback(denoiser)
    cb.subscribe(TiledWriter(store))
    out = collect(cb)
    for name, doc in (("start", run_bundle.start_doc), ("descriptor", desc.descriptor_doc),
                      ("stream_resource", resource.stream_resource_doc)):
        cb(name, doc)
    for i in range(5):
        cb("stream_datum", resource.compose_stream_datum(indices={"start": i, "stop": i + 1},
                                                         seq_nums={"start": i + 1, "stop": i + 2},
                                                         descriptor=desc.descriptor_doc))
    cb("stop", run_bundle.compose_stop())
    assert cb.errors == [] and cb.consumer_errors == 0
    errors = [e for n, d in out if n == "event_page" for e in d["data"]["cam_qc_error"]]
    assert errors == [""] * 5
    (derived_resource,) = [d for n, d in out if n == "stream_resource" and d["data_key"] == "cam_denoised"]
    assert derived_resource["uri"].startswith((raw_dir / run_bundle.start_doc["uid"]).as_uri())  # next to the raw files
    run = store[run_bundle.start_doc["uid"]]
    if kind == "jpeg":  # lossy: what the files hold
        frames = np.stack([np.asarray(Image.open(raw_dir / f"scan_{i:06d}.jpg")) for i in range(5)])
    stored = run["primary"]["cam"].read()  # Tiled reads what was denoised (NumPy files: stacked as [N, 1, H, W])
    np.testing.assert_array_equal(stored.reshape(frames.shape), frames)
    got = run["denoised"]["cam_denoised"].read()
    assert got.shape == (5, 32, 40) and np.all(got.std(axis=(1, 2)) < frames.std(axis=(1, 2)))


def test_a_file_sequence_without_a_template_or_of_another_mimetype_is_said_not_to_be_read(denoiser, tmp_path):
    from bluesky_tomogan.stream_readers import new_style_template, reader_for

    assert new_style_template("%s%s_%6.6d.tiff", "scan") == "scan_{:06d}.tiff"
    assert new_style_template("%s%s_%d.tif", "a") == "a_{:d}.tif"
    with pytest.raises(ValueError, match="has no parameters\\['template'\\]"):
        reader_for({"uid": "x", "mimetype": "multipart/related;type=image/tiff", "uri": "file:///d/",
                    "parameters": {}})
    with pytest.raises(ValueError, match="no reader for mimetype 'image/png'"):
        reader_for({"uid": "x", "mimetype": "image/png", "uri": "file:///d/", "parameters": {}})


def test_a_tiff_read_while_it_is_written_is_waited_for_wherever_the_write_stands(tmp_path):
    """A TIFF cut short reads as an error tifffile raises (waited for), but at a few cuts as ``struct.error``
    or as an image of no pixels: those came back at once, a frame lost or of shape (0,) (a suite run under
    load failed so). Each such cut, completed while the reader waits, now gives the whole frame."""
    import io
    import struct
    import threading

    import tifffile

    from bluesky_tomogan.stream_readers import reader_for

    frame = np.arange(1, 13, dtype=np.uint16).reshape(3, 4)
    whole = io.BytesIO()
    tifffile.imwrite(whole, frame)
    data = whole.getvalue()

    def reads_as(cut: bytes) -> str:
        (tmp_path / "probe.tif").write_bytes(cut)
        try:
            return "empty" if np.asarray(tifffile.imread(tmp_path / "probe.tif")).size == 0 else "read"
        except struct.error:
            return "struct.error"
        except (OSError, ValueError, IndexError, EOFError):
            return "waited for before"

    odd = [n for n in range(len(data)) if reads_as(data[:n]) in ("empty", "struct.error")]
    assert odd  # (tifffile 2026.3.3: 6 of its 280 cuts raise struct.error, 1 reads as no pixels)
    for n in odd:
        where = tmp_path / f"cut{n}"
        where.mkdir()
        (where / "f_000.tif").write_bytes(data[:n])
        read = reader_for({"uid": "x", "mimetype": "multipart/related;type=image/tiff", "uri": where.as_uri() + "/",
                           "parameters": {"template": "f_{:03d}.tif", "chunk_shape": [1, 3, 4]}}, wait_s=5.0)
        rest = threading.Timer(0.05, (where / "f_000.tif").write_bytes, (data,))
        rest.start()
        np.testing.assert_array_equal(read(0, 1), frame[None])
        rest.join()


def test_a_frame_file_written_after_its_announcement_is_waited_for(tmp_path):
    import threading

    import tifffile

    from bluesky_tomogan.hdf5_frames import ANNOUNCED_FRAMES_WAIT_S
    from bluesky_tomogan.stream_readers import reader_for

    frame = np.arange(12, dtype=np.uint16).reshape(3, 4)
    read = reader_for({"uid": "x", "mimetype": "multipart/related;type=image/tiff", "uri": tmp_path.as_uri() + "/",
                       "parameters": {"template": "f_{:03d}.tif", "chunk_shape": [1, 3, 4]}})
    late = threading.Timer(0.3 * ANNOUNCED_FRAMES_WAIT_S, tifffile.imwrite, (tmp_path / "f_000.tif", frame))
    late.start()
    np.testing.assert_array_equal(read(0, 1), frame[None])
    late.join()
    with pytest.raises(FileNotFoundError, match="cannot read frame 1 from .*f_001.tif"):
        read(1, 2)


def feed_three_frame_run(cb, file, uri=None, run_bundle=None):
    """A run of three frames of 16x24 in the HDF5 ``file``, announced at ``uri`` (default: the file's own),
    composed by hand and sent through ``cb``; returns the run's bundle."""
    run_bundle = run_bundle or event_model.compose_run()
    desc = run_bundle.compose_descriptor(name="primary", data_keys={"det": {
        "source": "sim", "dtype": "array", "shape": [1, 16, 24], "external": "STREAM:", "dtype_numpy": "<u2"}})
    resource = run_bundle.compose_stream_resource(mimetype="application/x-hdf5", uri=uri or file.uri, data_key="det",
                                                  parameters={"dataset": file.dataset})
    for name, doc in (("start", run_bundle.start_doc), ("descriptor", desc.descriptor_doc),
                      ("stream_resource", resource.stream_resource_doc),
                      ("stream_datum", resource.compose_stream_datum(indices={"start": 0, "stop": 3},
                                                                     seq_nums={"start": 1, "stop": 4},
                                                                     descriptor=desc.descriptor_doc)),
                      ("stop", run_bundle.compose_stop())):
        cb(name, doc)
    return run_bundle


def test_frames_written_under_another_machines_path_are_read_through_root_map(denoiser, tmp_path):
    """The detector's IOC writes under its own path (here ``/ioc/data``), mounted elsewhere on this
    machine: ``root_map`` says where; the raw StreamResource passes on unchanged, and the derived
    frames go next to the raw file as this machine sees it."""
    from bluesky_tomogan.hdf5_frames import FrameFile

    frames = np.random.default_rng(0).poisson(300, (3, 16, 24)).astype(np.uint16)
    file = FrameFile(tmp_path / "mnt" / "scan" / "det.h5", (16, 24), np.uint16)
    file.append(frames)
    file.close()
    cb = TomoGANCallback(denoiser, root_map={"/ioc": "/nowhere", "/ioc/data": str(tmp_path / "mnt")})
    out = collect(cb)
    uri = "file://localhost/ioc/data/scan/det.h5"
    feed_three_frame_run(cb, file, uri)
    assert cb.errors == []
    assert [e for n, d in out if n == "event_page" for e in d["data"].get("det_qc_error", [])] == [""] * 3
    raw = [d for n, d in out if n == "stream_resource" and d["data_key"] == "det"]
    assert [d["uri"] for d in raw] == [uri]  # passed on unchanged
    (derived,) = [d for n, d in out if n == "stream_resource" and d["data_key"] == "det_denoised"]
    assert derived["uri"].startswith((tmp_path / "mnt" / "scan").as_uri())
    assert derived_frames(out, "det_denoised").shape == (3, 16, 24)


def test_files_that_never_come_cost_the_wait_once(tmp_path):
    from bluesky_tomogan.hdf5_frames import ANNOUNCED_FRAMES_WAIT_S
    from bluesky_tomogan.stream_readers import reader_for

    read = reader_for({"uid": "x", "mimetype": "multipart/related;type=image/tiff", "uri": tmp_path.as_uri() + "/",
                       "parameters": {"template": "f_{:03d}.tif"}})
    began = time.monotonic()
    for i in range(4):
        with pytest.raises(FileNotFoundError):
            read(i, i + 1)
    assert time.monotonic() - began < 2 * ANNOUNCED_FRAMES_WAIT_S  # once, not four times
    elsewhere = reader_for({"uid": "y", "mimetype": "multipart/related;type=image/tiff",
                            "uri": (tmp_path / "not-mounted").as_uri() + "/",
                            "parameters": {"template": "f_{:03d}.tif"}})
    began = time.monotonic()
    with pytest.raises(FileNotFoundError, match="not-mounted"):
        elsewhere(0, 1)
    assert time.monotonic() - began < 0.5 * ANNOUNCED_FRAMES_WAIT_S  # no directory: nothing to wait for


def test_derived_frames_go_to_the_data_directory_when_the_raw_ones_cannot_have_them(denoiser, tmp_path, monkeypatch):
    """Raw data on a read-only mount (here: a file where the run's directory would go, as root ignores
    permissions): the derived frames go to the per-user data directory, said once, none lost."""
    from bluesky_tomogan.callbacks.frame_writer import DATA_ENV
    from bluesky_tomogan.hdf5_frames import FrameFile

    monkeypatch.setenv(DATA_ENV, str(tmp_path / "data"))
    frames = np.random.default_rng(0).poisson(300, (3, 16, 24)).astype(np.uint16)
    file = FrameFile(tmp_path / "raw" / "det.h5", (16, 24), np.uint16)
    file.append(frames)
    file.close()
    run_bundle = event_model.compose_run()
    (tmp_path / "raw" / run_bundle.start_doc["uid"]).write_text("in the way")
    cb = TomoGANCallback(denoiser)
    out = collect(cb)
    feed_three_frame_run(cb, file, run_bundle=run_bundle)
    assert len(cb.errors) == 1 and "cannot be written next to the raw frames" in cb.errors[0]
    assert [e for n, d in out if n == "event_page" for e in d["data"].get("det_qc_error", [])] == [""] * 3
    (derived,) = [d for n, d in out if n == "stream_resource" and d["data_key"] == "det_denoised"]
    assert derived["uri"].startswith((tmp_path / "data").as_uri())
    assert derived_frames(out, "det_denoised").shape == (3, 16, 24)


def test_frames_announced_before_the_event_that_says_what_they_are_wait_for_it(denoiser, tmp_path):
    """bluesky emits a frame's StreamDatum before its event: in a stream whose events carry an ``image_key``,
    the frames wait for the event that says what they are (darks, then flats, then projections, one of them
    invalid: the darks give QC its dark level). A stored run replayed (``reprocess``) brings all its events
    first and its StreamDatums after them: the same rows. Events that never come cost a note, not the
    rows: every frame gets its row."""
    from bluesky_tomogan.hdf5_frames import FrameFile
    from bluesky_tomogan.qc import QCFeedback, QCPolicy

    rng = np.random.default_rng(0)
    levels = [100] * 2 + [1000] * 2 + [600] * 96  # darks, flats, projections
    frames = np.stack([rng.poisson(v, (16, 24)) for v in levels]).astype(np.uint16)
    file = FrameFile(tmp_path / "det.h5", (16, 24), np.uint16)
    file.append(frames)
    file.close()
    keys = [2, 2, 1, 1, 0, 3, 0, 0]

    def run(order: str):
        run_bundle = event_model.compose_run()
        desc = run_bundle.compose_descriptor(name="primary", data_keys={
            "det": {"source": "sim", "dtype": "array", "shape": [16, 24], "external": "STREAM:", "dtype_numpy": "<u2"},
            "image_key": {"source": "sim", "dtype": "integer", "shape": []}})
        resource = run_bundle.compose_stream_resource(mimetype="application/x-hdf5", uri=file.uri, data_key="det",
                                                      parameters={"dataset": file.dataset,
                                                                  "chunk_shape": [1, 16, 24]})
        cb = TomoGANCallback(denoiser, inline=True, feedback=QCFeedback(QCPolicy()))
        out = collect(cb)
        for name, doc in (("start", run_bundle.start_doc), ("descriptor", desc.descriptor_doc),
                          ("stream_resource", resource.stream_resource_doc)):
            cb(name, doc)

        def datum(start, stop, index=0):
            return "stream_datum", resource.compose_stream_datum(
                indices={"start": index, "stop": index + stop - start},
                seq_nums={"start": start + 1, "stop": stop + 1}, descriptor=desc.descriptor_doc)

        def events(start, stop):
            return "event_page", desc.compose_event_page(
                data={"image_key": keys[start:stop]}, timestamps={"image_key": [0.0] * (stop - start)},
                seq_num=list(range(start + 1, stop + 1)), time=[0.0] * (stop - start))

        docs = {"live": [datum(0, 4, 0), events(0, 4), datum(4, 8, 4), events(4, 8)],
                "replayed": [events(0, 4), events(4, 8), datum(0, 4, 0), datum(4, 8, 4)],
                "no events": [datum(0, 100), datum(100, 200), datum(200, 300)]}[order]
        for name, doc in docs:
            cb(name, doc)
        cb("stop", run_bundle.compose_stop())
        return cb, [r for n_, d in out if n_ == "event_page" and "det_qc_flags" in d["data"]
                    for r in zip(d["data"]["det_source_seq_num"], d["data"]["det_qc_flags"], strict=True)]

    for order in ("live", "replayed"):
        cb, rows = run(order)
        assert rows == [(i, "") for i in range(1, 9)], order  # no dark is beam_lost
        assert cb.errors == ["det seq 6: not denoised: image_key marks the frame invalid"]  # NXtomo's image_key 3
        assert cb.options.dark_levels["det"] == pytest.approx(100, abs=2)
    cb, rows = run("no events")
    assert [seq for seq, _ in rows] == list(range(1, 301))
    notes = [e for e in cb.errors if "came with no event" in e]  # (and the darks, taken as projections, beam_lost)
    assert notes == [f"{n} frames of stream 'primary' came with no event saying what they are (image_key); taken "
                     "as projections" for n in (200, 100)]


@pytest.mark.parametrize("order", ["frames first", "keys first"])
def test_what_each_frame_is_written_beside_it_in_a_fly_scans_file_is_read_from_there(denoiser, tmp_path, order):
    """A fly scan whose ``image_key`` is an area detector's NDAttribute, written to the HDF5 file beside the
    frames and announced by StreamDatum (ophyd-async's way), with no event at all: what each frame is is read
    from the file, so the darks give QC its dark level and are not beam_lost, and the invalid frame is said
    so, whichever StreamDatum comes first. A key that cannot be read costs a note, and its frames count as
    projections."""
    from bluesky_tomogan.hdf5_frames import FrameFile
    from bluesky_tomogan.qc import QCFeedback, QCPolicy

    rng = np.random.default_rng(0)
    keys = [2, 2, 1, 1, 0, 3, 0, 0]
    levels = {2: 100, 1: 1000, 0: 600, 3: 600}
    frames = np.stack([rng.poisson(levels[k], (16, 24)) for k in keys]).astype(np.uint16)
    file = FrameFile(tmp_path / "det.h5", (16, 24), np.uint16)
    file.append(frames)
    file.close()
    with h5py.File(tmp_path / "det.h5", "a") as f:
        f["entry/instrument/NDAttributes/det-image_key"] = np.asarray(keys, np.int32)

    def run(dataset):
        bundle = event_model.compose_run()
        desc = bundle.compose_descriptor(name="primary", data_keys={
            "det": {"source": "sim", "dtype": "array", "shape": [1, 16, 24], "external": "STREAM:",
                    "dtype_numpy": "<u2"},
            "det-image_key": {"source": "sim", "dtype": "integer", "shape": [], "external": "STREAM:",
                              "dtype_numpy": "<i4"}})
        image = bundle.compose_stream_resource(mimetype="application/x-hdf5", uri=file.uri, data_key="det",
                                               parameters={"dataset": file.dataset, "chunk_shape": [1, 16, 24]})
        key = bundle.compose_stream_resource(mimetype="application/x-hdf5", uri=file.uri, data_key="det-image_key",
                                             parameters={"dataset": dataset, "chunk_shape": [16384]})
        cb = TomoGANCallback(denoiser, inline=True, feedback=QCFeedback(QCPolicy()))
        out = collect(cb)
        for name, doc in (("start", bundle.start_doc), ("descriptor", desc.descriptor_doc),
                          ("stream_resource", image.stream_resource_doc), ("stream_resource", key.stream_resource_doc)):
            cb(name, doc)
        for start, stop in ((0, 4), (4, 8)):
            datums = [resource.compose_stream_datum(indices={"start": start, "stop": stop},
                                                    seq_nums={"start": start + 1, "stop": stop + 1},
                                                    descriptor=desc.descriptor_doc) for resource in (image, key)]
            for datum in datums if order == "frames first" else datums[::-1]:
                cb("stream_datum", datum)
        cb("stop", bundle.compose_stop())
        return cb, [r for n, d in out if n == "event_page" and "det_qc_flags" in d["data"]
                    for r in zip(d["data"]["det_source_seq_num"], d["data"]["det_qc_flags"], strict=True)]

    cb, rows = run("entry/instrument/NDAttributes/det-image_key")
    assert rows == [(i, "") for i in range(1, 9)]  # no dark is beam_lost
    assert cb.errors == ["det seq 6: not denoised: det-image_key marks the frame invalid"]
    assert cb.options.dark_levels["det"] == pytest.approx(100, abs=2)
    cb, rows = run("entry/instrument/NDAttributes/no-such-key")
    assert [seq for seq, _ in rows] == list(range(1, 9))
    assert any("det-image_key of frames 1-4 not read from its file (KeyError" in e for e in cb.errors), cb.errors
    assert "det" not in cb.options.dark_levels  # no frame was taken for a dark
