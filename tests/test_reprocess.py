"""A run stored in Tiled, denoised afterwards into that run or a new one (``bluesky-tomogan reprocess``)."""

from __future__ import annotations

import importlib

import bluesky
import numpy as np
import pytest
from bluesky_tiled_plugins import TiledWriter
from packaging.version import Version
from tiled.queries import Key

from bluesky_tomogan import TomoGANCallback, load_denoiser
from bluesky_tomogan.cli import main
from bluesky_tomogan.devices import SimTomoDetector, SimTomoStage
from bluesky_tomogan.plans import tomo_scan
from bluesky_tomogan.reprocess import REPROCESSED_FROM, ReprocessError, as_new_run, reprocess, stored_documents
from bluesky_tomogan.storage import (
    close_local_tiled,
    derived_streams,
    frames_directory,
    local_tiled,
    server_of,
    stored_frames,
)

from .fly_scan import ANGLE_KEY, as_fly_scan


def scan(RE, client, directory, writer=TiledWriter):
    """A short scan stored in ``client`` by ``writer`` without the callback, raw frames under ``directory``; its
    uid."""
    stage = SimTomoStage(name="stage")
    det = SimTomoDetector(name="det", stage=stage, shape=(40, 48), directory=directory, simulate_timing=False)
    token = RE.subscribe(writer(client))
    try:
        (uid,) = RE(tomo_scan(det, stage, angles=range(0, 180, 30), n_darks=2, n_flats=2), sample="beads")
    finally:
        RE.unsubscribe(token)  # a later scan of the same test may go to another store
    return uid


def test_a_stored_scan_gets_its_denoised_stream_and_another_models_then_a_new_run_that_search_finds(
        RE, denoiser, store, tmp_path, capsys):
    """A scan stored without the callback, reprocessed from the command line (the Tiled server's URI):
    ``denoised`` added to the run as the live callback adds it, then ``denoised_2`` by another model;
    then into a new run, which holds only that model's stream."""
    client = store
    uid = scan(RE, client, frames_directory(tmp_path / "store") / "raw")
    stored_stop = dict(client[uid].metadata["stop"])
    raw = np.asarray(client[uid]["primary"]["det_image"].read())
    assert main(["reprocess", server_of(client).uri, "--uid", uid, "--backend", "onnxruntime"]) == 0
    assert "streams added to it: ['denoised', 'flat_denoised']" in capsys.readouterr().out  # as live: not the darks
    run = client[uid]
    assert sorted(run) == ["dark", "denoised", "flat", "flat_denoised", "primary"]
    assert dict(run.metadata["stop"]) == stored_stop  # the run's own documents stay as they were
    np.testing.assert_array_equal(np.asarray(run["primary"]["det_image"].read()), raw)
    frames = np.asarray(run["denoised"]["det_image_denoised"].read())
    assert frames.shape == (6, 40, 48) and frames.std() < raw.std()
    assert list(run["denoised"]["det_image_qc_error"].read()) == [""] * 6
    raw = raw.reshape(6, 40, 48)
    for k in range(6):  # as the live callback denoises it: 30 degrees apart no neighbour is near, each frame alone
        want = denoiser.denoise_context(np.stack([raw[k]] * denoiser.depth))
        np.testing.assert_allclose(frames[k], want, atol=1e-3)

    assert main(["reprocess", server_of(client).uri, "--uid", uid, "--model", "tomogan-projection-light",
                 "--backend", "onnxruntime", "--streams", "primary"]) == 0
    assert "streams added to it: ['denoised_2']" in capsys.readouterr().out
    assert derived_streams(client[uid]) == {("primary", "det_image"): "denoised_2",  # the latest
                                            ("flat", "det_image"): "flat_denoised"}
    assert set(client[uid]["denoised_2"]["det_image_model"].read()) == {"tomogan-projection-light"}

    light = load_denoiser("tomogan-projection-light", backend="onnxruntime")
    slices = load_denoiser("tomogan-slice", backend="onnxruntime")
    new_uid, summary = reprocess(client, uid, light, into="new", streams=["primary"], reconstruct=slices)
    assert summary.errors == []
    assert list(client.search(Key(f"start.{REPROCESSED_FROM}") == uid)) == [new_uid]
    new = client[new_uid]
    # the stored run's derived streams left out; slices reconstructed from this model's frames
    assert sorted(new) == ["dark", "denoised", "flat", "primary", "reconstruction"]
    assert np.asarray(new["reconstruction"]["slice"].read()).shape == (3, 48, 48)
    with pytest.raises(ReprocessError, match="has a 'reconstruction' stream already; reconstruct into a new run"):
        reprocess(client, new_uid, light, reconstruct=slices)  # into that run, beside its reconstruction
    assert new.metadata["start"]["sample"] == "beads" and new.metadata["stop"]["exit_status"] == "success"
    assert new.metadata["stop"]["num_events"]["denoised"] == 6
    np.testing.assert_array_equal(np.asarray(new["primary"]["det_image"].read()).reshape(raw.shape), raw)
    np.testing.assert_allclose(np.asarray(new["denoised"]["det_image_denoised"].read()),
                               np.asarray(client[uid]["denoised_2"]["det_image_denoised"].read()), atol=1e-5)
    with pytest.raises(ReprocessError, match="run no-such-run: no such run"):
        reprocess(client, "no-such-run", light)


#: bluesky 1.14-1.15's own Tiled writer, which RunEngine hosts not yet on bluesky 1.16 store with
BLUESKY_OWN_WRITER = pytest.param("bluesky", marks=pytest.mark.skipif(
    Version(bluesky.__version__) >= Version("1.16"),
    reason=f"bluesky {bluesky.__version__} has no Tiled writer of its own: bluesky.callbacks.tiled_writer "
           "re-exports bluesky-tiled-plugins'"))


@pytest.mark.parametrize("host_writer", ["bluesky-tiled-plugins", BLUESKY_OWN_WRITER])
def test_derived_streams_are_served_frame_by_frame_whichever_tiled_writer_stores_the_run(
        RE, store, tmp_path, denoiser, host_writer):
    """A RunEngine host stores with bluesky-tiled-plugins' ``TiledWriter`` (bluesky 1.16's) or bluesky 1.14-1.15's
    own, whose default joins of a row's frames differ (stack, concatenate). The live callback's frames, stored by
    that writer, and reprocess's frames and slices, added to the stored run by the derived-streams writer (serve's),
    read back from Tiled as one frame a row: ``(N, H, W)``."""
    if host_writer == "bluesky":
        writer = importlib.import_module("bluesky.callbacks.tiled_writer").TiledWriter
    else:
        writer = TiledWriter
    stage = SimTomoStage(name="stage")
    det = SimTomoDetector(name="det", stage=stage, shape=(40, 48), simulate_timing=False,
                          directory=frames_directory(tmp_path / "store") / "live")
    cb = TomoGANCallback(denoiser)
    cb.subscribe(writer(store))
    token = RE.subscribe(cb)
    try:
        (live,) = RE(tomo_scan(det, stage, angles=range(0, 180, 30), n_darks=1, n_flats=1))
    finally:
        RE.unsubscribe(token)
    assert cb.errors == []
    frames = store[live]["denoised"]["det_image_denoised"]
    assert frames.shape == (6, 40, 48) and np.isfinite(np.asarray(frames.read())).all()

    stored = scan(RE, store, frames_directory(tmp_path / "store") / "raw", writer=writer)
    slices = load_denoiser("tomogan-slice", backend="onnxruntime")
    _, summary = reprocess(store, stored, denoiser, streams=["primary"], reconstruct=slices)
    assert summary.errors == []
    run = store[stored]
    assert run["denoised"]["det_image_denoised"].shape == (6, 40, 48)
    assert run["reconstruction"]["slice"].shape == (3, 48, 48)
    raw = stored_frames(run["primary"]["det_image"])  # the detector declares [1, H, W] an event
    assert raw.shape == (6, 40, 48) and raw[2].shape == (40, 48) and raw[:, 20, :].shape == (6, 48)
    np.testing.assert_array_equal(raw[-1], np.asarray(raw)[5])


class Node:
    """A stored field as a Tiled array client gives it: indexed, or read whole; counts what it is asked for."""

    def __init__(self, array):
        self.array, self.shape, self.asked = array, array.shape, []

    def __getitem__(self, index):
        self.asked.append(index)
        return self.array[index]

    def read(self):
        self.asked.append("all")
        return self.array


def test_stored_frames_are_one_stack_whichever_way_the_events_were_joined():
    frames = np.arange(6 * 4 * 5, dtype=np.uint16).reshape(6, 4, 5)
    # concatenated; stacked, 1 or 2 an event; a grey camera's channel axis
    for stored in (frames, frames[:, None], frames.reshape(3, 2, 4, 5), frames[..., None]):
        node = Node(stored)
        view = stored_frames(node)
        assert view.shape == (6, 4, 5) and len(view) == 6
        np.testing.assert_array_equal(view[3], frames[3])
        np.testing.assert_array_equal(view[-1, 2, :], frames[5, 2])
        np.testing.assert_array_equal(view[:, 1, :], frames[:, 1])
        np.testing.assert_array_equal(view[1:4], frames[1:4])
        np.testing.assert_array_equal(view[5:0:-2, :, 3], frames[5:0:-2, :, 3])
        assert "all" not in node.asked  # only what was indexed: the events that hold it
        np.testing.assert_array_equal(view[..., 0], frames[..., 0])
        np.testing.assert_array_equal(np.asarray(view, dtype=float), frames)
        with pytest.raises(IndexError):
            view[6]
    with pytest.raises(ValueError, match=r"\(N, H, W\) or \(N, k, H, W\), not \(6, 20\)"):
        stored_frames(Node(frames.reshape(6, 20)))


def test_a_replayed_run_has_new_uids_throughout_and_leaves_out_its_derived_streams():
    import event_model

    run = event_model.compose_run()
    raw = run.compose_descriptor(name="primary", data_keys={
        "det_image": {"source": "SIM:det", "dtype": "array", "shape": [1, 8, 8], "external": "STREAM:"}})
    derived = run.compose_descriptor(name="denoised", data_keys={
        "det_image_denoised": {"source": "bluesky-tomogan", "dtype": "array", "shape": [1, 8, 8],
                               "external": "STREAM:"}})
    resources = [run.compose_stream_resource(mimetype="application/x-hdf5", uri="file:///d/raw.h5",
                                             data_key=key, parameters={"dataset": "/d"})
                 for key in ("det_image", "det_image_denoised")]
    docs = [("start", run.start_doc), ("descriptor", raw.descriptor_doc), ("descriptor", derived.descriptor_doc),
            ("event", raw.compose_event(data={}, timestamps={}, seq_num=1)),
            ("event", derived.compose_event(data={}, timestamps={}, seq_num=1)),
            ("stream_resource", resources[0].stream_resource_doc),
            ("stream_resource", resources[1].stream_resource_doc),
            *(("stream_datum", r.compose_stream_datum(indices={"start": 0, "stop": 1},
                                                      seq_nums={"start": 1, "stop": 2}, descriptor=d))
              for r, d in zip(resources, (raw.descriptor_doc, derived.descriptor_doc), strict=True)),
            ("stop", run.compose_stop())]
    docs[-1][1]["num_events"] = {"primary": 1, "denoised": 1}
    out = list(as_new_run(docs, extra_start={"note": "again"}))
    assert [n for n, _ in out] == ["start", "descriptor", "event", "stream_resource", "stream_datum", "stop"]
    (start, descriptor, event, resource, datum, stop) = (d for _, d in out)
    old = {d.get("uid") for _, d in docs}
    assert not {start["uid"], descriptor["uid"], event["uid"], resource["uid"], datum["uid"], stop["uid"]} & old
    assert start[REPROCESSED_FROM] == run.start_doc["uid"] and start["note"] == "again"
    assert descriptor["run_start"] == resource["run_start"] == stop["run_start"] == start["uid"]
    assert event["descriptor"] == datum["descriptor"] == descriptor["uid"]
    assert datum["stream_resource"] == resource["uid"] and datum["uid"].startswith(f"{resource['uid']}/")
    assert stop["num_events"] == {"primary": 1}
    assert docs[0][1]["uid"] == run.start_doc["uid"]  # the stored documents are not touched


class _RunOfAServerWithoutTheExporter:
    metadata = {"start": {"uid": "abc"}}

    def documents(self):
        raise RuntimeError("406: None of the media types requested by the client are supported. "
                           "Requested: application/json-seq.")
        yield  # pragma: no cover


def test_a_server_that_does_not_export_documents_is_one_clear_error():
    with pytest.raises(ReprocessError, match="does not export runs as documents .*json_seq_exporter"):
        stored_documents(_RunOfAServerWithoutTheExporter())


def test_a_server_that_fails_to_read_a_run_is_not_said_to_lack_the_exporter():
    import httpx

    class RunWhoseFilesTheServerCannotRead:
        metadata = {"start": {"uid": "abc"}}

        def documents(self):
            url = "http://127.0.0.1:1/api/v1/container/full/abc?format=application%2Fjson-seq"
            request = httpx.Request("GET", url)
            raise httpx.HTTPStatusError(f"Server error '500 Internal Server Error' for url '{url}'", request=request,
                                        response=httpx.Response(500, request=request))
            yield  # pragma: no cover

    with pytest.raises(ReprocessError, match="run abc: cannot read its documents: HTTPStatusError: Server error '500"):
        stored_documents(RunWhoseFilesTheServerCannotRead())


def test_a_stored_run_without_a_stop_is_replayed_with_one_that_says_so(store, denoiser, caplog):
    """A scan that never finished (or whose writer stopped) is stored without a stop; the exporter
    then gives an empty one. The replay closes the new run with a stop that says why; into the stored
    run itself (perhaps still being written) it is refused."""
    import event_model

    from bluesky_tomogan.reprocess import read_run

    writer, run = TiledWriter(store, batch_size=1), event_model.compose_run()  # each event stored as it comes
    writer("start", run.start_doc)
    keys = {"x": {"source": "s", "dtype": "number", "shape": []}}
    descriptor = run.compose_descriptor(name="primary", data_keys=keys)
    writer("descriptor", descriptor.descriptor_doc)
    writer("event", descriptor.compose_event(data={"x": 1.0}, timestamps={"x": 0.0}, seq_num=1))  # what it took
    stop = read_run(store, run.start_doc["uid"])[-1]
    assert stop[0] == "stop" and stop[1]["exit_status"] == "fail" and "has no stop document" in stop[1]["reason"]
    assert "has no stop document; replayed with one that says so" in caplog.text
    new_uid, _ = reprocess(store, run.start_doc["uid"], denoiser, into="new")
    assert store[new_uid].metadata["stop"]["exit_status"] == "fail"
    with pytest.raises(ReprocessError, match="has no stop document: it is still running, or it was interrupted"):
        reprocess(store, run.start_doc["uid"], denoiser)  # into a run that may still be written: refused


def test_reprocess_with_a_self_ensemble_records_it_in_both_streams_configuration(RE, store, tmp_path, capsys):
    client = store
    uid = scan(RE, client, frames_directory(tmp_path / "store") / "raw")
    assert main(["reprocess", server_of(client).uri, "--uid", uid, "--backend", "onnxruntime", "--into", "new",
                 "--streams", "primary", "--reconstruct", "--self-ensemble", "2", "--center", "23.75",
                 "--binning", "2"]) == 0
    assert "self-ensemble of 2" in capsys.readouterr().out
    (new_uid,) = client.search(Key(f"start.{REPROCESSED_FROM}") == uid)
    new = client[new_uid]
    denoised = new["denoised"].metadata["configuration"]["tomogan"]["data"]  # the descriptor's, as Tiled keeps it
    assert denoised["self_ensemble"] == 2
    rec = new["reconstruction"].metadata["configuration"]["reconstruction"]["data"]
    assert rec["slice_self_ensemble"] == "2"
    # --center (session 71): the given rotation centre, recorded and used for every slice
    assert rec["center_given"] == "23.75" and set(np.asarray(new["reconstruction"]["center"].read())) == {23.75}
    # --binning (session 72): 48 columns averaged in pairs, the centre still in detector pixels
    assert rec["binning"] == "2" and new["reconstruction"]["slice"].shape[1:] == (24, 24)
    plain = load_denoiser(backend="onnxruntime")
    with pytest.raises(ReprocessError, match=r"a rotation centre \(23.75 px\) is for the slices of reconstruct"):
        reprocess(client, uid, plain, into="new", center=23.75)  # without reconstruct: said, nothing written
    with pytest.raises(ReprocessError, match=r"a binning \(2\) is for the slices of reconstruct"):
        reprocess(client, uid, plain, into="new", binning=2)
    with pytest.raises(ReprocessError, match="binning must be a whole number of columns, at least 1; got 0"):
        reprocess(client, uid, plain, into="new", reconstruct=plain, binning=0)
    raw = np.asarray(new["primary"]["det_image"].read()).reshape(6, 40, 48)
    ensemble = load_denoiser(backend="onnxruntime", self_ensemble=2)
    alone = np.stack([raw[3]] * ensemble.depth)  # 30 degrees from its neighbours: denoised alone, as live
    np.testing.assert_allclose(np.asarray(new["denoised"]["det_image_denoised"].read())[3],
                               ensemble.denoise_context(alone), atol=1e-3)
    assert not np.allclose(ensemble.denoise_context(alone), plain.denoise_context(alone), atol=0.1)


def test_reprocess_stores_counts_compressed_where_asked(RE, store, tmp_path):
    uid = scan(RE, store, frames_directory(tmp_path / "store") / "raw")
    assert main(["reprocess", server_of(store).uri, "--uid", uid, "--backend", "onnxruntime", "--streams", "primary",
                 "--frame-dtype", "source", "--compression", "zstd"]) == 0
    frames = store[uid]["denoised"]["det_image_denoised"].read()
    assert frames.dtype == np.uint16 and frames.shape == (6, 40, 48) and frames.mean() > 0


def test_a_store_moved_whole_opens_where_it_is_now_with_every_frame_and_goes_on(RE, tmp_path, caplog):
    """Tiled's catalog names its files by absolute paths: a store moved to another disk (or copied
    to another machine) is pointed at them where they are now, raw and derived frames alike."""
    import shutil

    first = tmp_path / "first"
    client = local_tiled(first)
    try:
        uid = scan(RE, client, frames_directory(first) / "raw")
        reprocess(client, uid, load_denoiser(backend="onnxruntime"))  # derived frames in files of the store
        raw = np.asarray(client[uid]["primary"]["det_image"].read())
        denoised = np.asarray(client[uid]["denoised"]["det_image_denoised"].read())
    finally:
        close_local_tiled(client)
    moved = tmp_path / "other-disk" / "store"
    moved.parent.mkdir()
    shutil.move(first, moved)
    client = local_tiled(moved)
    try:
        assert f"was written at {first}" in caplog.text
        run = client[uid]
        np.testing.assert_array_equal(np.asarray(run["primary"]["det_image"].read()), raw)
        np.testing.assert_array_equal(np.asarray(run["denoised"]["det_image_denoised"].read()), denoised)
        assert len(stored_documents(run)) > 20  # replayable: reprocess reads it so
        later = scan(RE, client, frames_directory(moved) / "raw")  # and the moved store takes new runs
        assert np.asarray(client[later]["primary"]["det_image"].read()).shape == raw.shape
    finally:
        close_local_tiled(client)
    caplog.clear()
    close_local_tiled(local_tiled(moved))  # where it was written: nothing to point anywhere
    assert "was written at" not in caplog.text


def test_a_replay_never_calls_its_frames_lagging(RE, store, tmp_path, monkeypatch):
    """Replayed as fast as the queue takes it, a frame's latency is its wait in the queue: no detector
    lagged. Every other flag keeps its live rule."""
    import bluesky_tomogan.callbacks as callbacks
    from bluesky_tomogan.qc.metrics import FrameMetrics
    from bluesky_tomogan.qc.policy import QCPolicy
    from bluesky_tomogan.reprocess import replay_qc_policy

    used = []

    class Recording(callbacks.TomoGANCallback):
        def __init__(self, *args, **kwargs):
            used.append(kwargs.get("qc"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(callbacks, "TomoGANCallback", Recording)
    uid = scan(RE, store, frames_directory(tmp_path / "store") / "raw")
    reprocess(store, uid, load_denoiser(backend="onnxruntime"), into="new")
    (policy,) = used
    assert policy == replay_qc_policy()
    late = FrameMetrics(latency_s=1e6, snr=1.0)
    assert "lagging" not in policy.evaluate(late) and "noisy" in policy.evaluate(late)
    assert "lagging" in QCPolicy().evaluate(late)  # live, it would be
    assert {k: v for k, v in policy.rules.items() if k != "lagging"} == \
        {k: v for k, v in QCPolicy().rules.items() if k != "lagging"}


def test_a_store_whose_catalog_cannot_be_pointed_elsewhere_is_said_so_not_a_crash(tmp_path, caplog):
    import sqlite3

    from bluesky_tomogan.storage import _follow_a_moved_store

    catalog = tmp_path / "store" / "tiled" / "catalog.db"
    catalog.parent.mkdir(parents=True)
    sqlite3.connect(catalog).close()  # a catalog of another schema: no assets table
    _follow_a_moved_store(tmp_path / "store")
    assert "could not point the catalog" in caplog.text and "no such table: assets" in caplog.text


def test_a_stored_fly_scan_is_denoised_and_reconstructed_with_its_angles_from_their_file(RE, store, tmp_path,
                                                                                         capsys):
    """A fly scan (tests/fly_scan.py: frames and angles only in files, announced by StreamDatum; no event in
    ``primary``) stored by TiledWriter: every frame is denoised into a new run and the slices reconstructed
    with the angles read from their file (``--angle-field``). Before, such a run was refused as holding no
    events. The angles give the denoising its context too, reconstruction or not: 15 degrees apart, each frame
    is denoised alone (by order, with its neighbours, before)."""
    stage = SimTomoStage(name="stage")
    det = SimTomoDetector(name="det", stage=stage, shape=(40, 48), directory=frames_directory(tmp_path / "store"),
                          simulate_timing=False)
    raw = []
    token = RE.subscribe(lambda name, doc: raw.append((name, doc)))
    RE(tomo_scan(det, stage, angles=range(0, 180, 15), n_darks=2, n_flats=2))
    RE.unsubscribe(token)
    writer = TiledWriter(store)
    for name, doc in as_fly_scan(raw, det.directory):  # where the store may read it
        writer(name, doc)
    uid = raw[0][1]["uid"]
    assert main(["reprocess", server_of(store).uri, "--uid", uid, "--backend", "onnxruntime", "--into", "new",
                 "--reconstruct", "--angle-field", ANGLE_KEY]) == 0
    new_uid = capsys.readouterr().out.split("into the new run ")[1].split()[0]
    den = load_denoiser(backend="onnxruntime")
    by_angle, _ = reprocess(store, uid, den, into="new", angle_field=ANGLE_KEY)
    by_order, _ = reprocess(store, uid, den, into="new")
    new = store[new_uid]
    assert list(new["denoised"]["det_image_qc_error"].read()) == [""] * 12
    denoised = np.asarray(new["denoised"]["det_image_denoised"].read())
    assert denoised.shape == (12, 40, 48)
    np.testing.assert_allclose(np.asarray(store[by_angle]["denoised"]["det_image_denoised"].read()), denoised,
                               atol=1e-5)
    raw_frames = stored_frames(store[uid]["primary"]["det_image"]).read()
    np.testing.assert_allclose(denoised[5], den.denoise_context(np.stack([raw_frames[5]] * den.depth)), atol=1e-3)
    assert not np.allclose(np.asarray(store[by_order]["denoised"]["det_image_denoised"].read())[5], denoised[5],
                           atol=1e-3)
    assert int(new["reconstruction"]["projections"].read()[-1]) == 12
    assert list(new["reconstruction"]["note"].read()) == [""] * 3


def test_a_run_stored_without_a_frame_is_refused_not_replayed_into_an_empty_one(store, denoiser):
    """A writer that batches events stores them with the stop (bluesky's TiledWriter), and a live
    TomoReconstruction passes the stop on after its final slices: read right after RE(...) returns,
    the run has a start and descriptors only. A new run without a frame would look like a result."""
    import event_model

    run = event_model.compose_run()
    primary = run.compose_descriptor(name="primary", data_keys={
        "det_image": {"source": "SIM:det", "dtype": "array", "shape": [8, 8], "dtype_numpy": "<u2"}})
    writer = TiledWriter(store)
    writer("start", run.start_doc)
    writer("descriptor", primary.descriptor_doc)
    uid = run.start_doc["uid"]
    with pytest.raises(ReprocessError, match=r"holds no events in \['primary', 'flat'\]: nothing to denoise; it has "
                                             r"no stop either: .* rec.wait\(\) first"):
        reprocess(store, uid, denoiser, into="new")
    assert list(store.search(Key(f"start.{REPROCESSED_FROM}") == uid)) == []  # no empty run left behind
