"""SimTomoDetector, SimTomoStage and SimBeamCurrent in real RunEngine scans."""

from __future__ import annotations

import time

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import bluesky.preprocessors as bpp
import event_model
import h5py
import numpy as np
import pytest

from bluesky_tomogan.devices import SimBeamCurrent, SimTomoDetector, SimTomoStage
from bluesky_tomogan.hdf5_frames import HDF5FrameHandler, StreamFrameReader


@pytest.fixture
def rig(tmp_path):
    stage = SimTomoStage(name="stage")
    beam = SimBeamCurrent()
    det = SimTomoDetector(name="det", stage=stage, beam=beam, shape=(48, 64), directory=tmp_path,
                          simulate_timing=False)
    return det, stage, beam


def scan(RE, plan):
    docs = []
    RE(plan, lambda name, doc: docs.append((name, doc)))
    for name, doc in docs:
        event_model.schema_validators[event_model.DocumentNames(name)].validate(doc)
    return docs


def frames_of(docs):
    """Read the frames back through the documents, as any consumer would."""
    (sres,) = [d for n, d in docs if n == "stream_resource"]
    read = StreamFrameReader(sres)
    try:
        return np.concatenate([read(d["indices"]["start"], d["indices"]["stop"])
                               for n, d in docs if n == "stream_datum"])
    finally:
        read.close()


def test_stream_mode_announces_uint16_frames_like_ophyd_async(RE, rig):
    det, stage, _ = rig
    docs = scan(RE, bp.scan([det], stage.theta, 0, 90, 4))
    (desc,) = [d for n, d in docs if n == "descriptor"]
    key = desc["data_keys"]["det_image"]
    assert key["external"] == "STREAM:" and key["shape"] == [1, 48, 64] and key["dtype_numpy"] == "<u2"
    events = [d for n, d in docs if n == "event"]
    assert all("det_image" not in e["data"] for e in events)  # STREAM: data is never inline
    datums = [d for n, d in docs if n == "stream_datum"]
    assert [d["seq_nums"] for d in datums] == [{"start": i, "stop": i + 1} for i in range(1, 5)]
    frames = frames_of(docs)
    assert frames.shape == (4, 48, 64) and frames.dtype == np.uint16
    assert not np.array_equal(frames[0], frames[3])  # the sample rotated


def test_legacy_resource_mode_reads_through_the_handler(RE, tmp_path):
    det = SimTomoDetector(name="det", shape=(32, 32), directory=tmp_path, asset_mode="resource",
                          simulate_timing=False)
    docs = scan(RE, bp.count([det], num=3))
    (res,) = [d for n, d in docs if n == "resource"]
    assert res["spec"] == "hdf5"
    events = [d for n, d in docs if n == "event"]
    assert all(e["filled"] == {"det_image": False} for e in events)
    handler = HDF5FrameHandler("/" + res["resource_path"], **res["resource_kwargs"])
    datums = {d["datum_id"]: d for n, d in docs if n == "datum"}
    frames = [handler(**datums[e["data"]["det_image"]]["datum_kwargs"]) for e in events]
    handler.close()
    assert all(f.shape == (1, 32, 32) and f.dtype == np.uint16 for f in frames)


def test_shutter_and_sample_position_give_darks_and_flats(RE, rig):
    det, stage, _ = rig

    @bpp.stage_decorator([det])
    @bpp.run_decorator()
    def plan():
        yield from bps.mv(det.shutter, "closed")
        yield from bps.trigger_and_read([det], name="dark")
        yield from bps.mv(det.shutter, "open", stage.x, SimTomoStage.OUT)
        yield from bps.trigger_and_read([det], name="flat")
        yield from bps.mv(stage.x, 0)
        yield from bps.trigger_and_read([det])

    dark, flat, sample = frames_of(scan(RE, plan())).astype(float)
    assert abs(dark.mean() - det.model.dark_level) < 1
    expected_flat = det.photon_flux.get() * det.exposure_time.get() * det.gain.mean() + det.model.dark_level
    assert abs(flat.mean() - expected_flat) / expected_flat < 0.05
    assert sample.mean() < flat.mean() - 50  # the sample absorbs


def test_faults_beam_dump_saturation_motion(RE, rig):
    det, stage, beam = rig
    det.inject_fault("beam_dump", frames=2)
    frames = frames_of(scan(RE, bp.count([det], num=3))).astype(float)
    assert frames[0].mean() < det.model.dark_level + 1 and frames[1].mean() < det.model.dark_level + 1
    assert frames[2].mean() > det.model.dark_level + 100

    beam.dump(0.3)  # the ring loses its beam: the camera sees it, and so would a suspender
    assert beam.get() == 0.0
    dark = frames_of(scan(RE, bp.count([det], num=1)))[0].astype(float)
    assert dark.mean() < det.model.dark_level + 1
    time.sleep(1.0)
    assert beam.get() == beam.nominal

    det.inject_fault("saturation")
    saturated = frames_of(scan(RE, bp.count([det], num=1)))[0]
    assert (saturated == 65535).mean() > 0.1

    before = det.sample.line_integrals(0.0)
    det.inject_fault("motion", pixels=8)
    after = det.sample.line_integrals(0.0)
    np.testing.assert_allclose(after[:, 8:], before[:, :-8], atol=1e-5)  # the whole sample slid 8 pixels


@pytest.mark.parametrize("photons", [20.0, 40.0, 500.0])
def test_the_saturation_fault_saturates_at_any_dose(RE, rig, photons):
    """``demo --photons 40 --faults`` announced three saturated frames that reached 12,000 counts: 300x the flux
    of a low dose does not fill the camera. The open beam clips now at any dose, and a lost beam stays dark."""
    det, stage, beam = rig
    det.photon_flux.put(photons / det.exposure_time.get())
    det.inject_fault("saturation", frames=2)
    stage.x.set(SimTomoStage.OUT).wait()  # open beam
    saturated, after = frames_of(scan(RE, bp.count([det], num=3)))[1:]
    assert (saturated == 65535).mean() > 0.9 and (after == 65535).mean() == 0
    det.inject_fault("beam_dump")
    det.inject_fault("saturation")
    assert frames_of(scan(RE, bp.count([det], num=1)))[0].astype(float).mean() < det.model.dark_level + 1


def test_hot_and_dead_pixels_are_the_same_pixels_in_every_frame_darks_included(RE, tmp_path):
    det = SimTomoDetector(name="det", shape=(48, 64), directory=tmp_path / "a", simulate_timing=False,
                          hot_pixels=0.02, dead_pixels=0.01)
    plain = SimTomoDetector(name="det", shape=(48, 64), directory=tmp_path / "b", simulate_timing=False)
    assert det.hot_map.mean() == pytest.approx(0.02, abs=0.01) and det.dead_map.mean() == pytest.approx(0.01, abs=0.006)
    assert not (det.hot_map & det.dead_map).any()
    lit = frames_of(scan(RE, bp.count([det], num=2)))
    det.shutter.put("closed")
    dark = frames_of(scan(RE, bp.count([det], num=1)))
    for frame in (*lit, *dark):
        assert (frame[det.hot_map] == 65535).all() and (frame[det.dead_map] == 0).all()
    working = ~(det.hot_map | det.dead_map)
    # the defects take nothing from the noise: the other pixels are the frames a camera without them gives
    np.testing.assert_array_equal(lit[:, working], frames_of(scan(RE, bp.count([plain], num=2)))[:, working])
    for bad in ({"hot_pixels": 0.2}, {"dead_pixels": -0.1}):
        with pytest.raises(ValueError, match="fraction of the pixels"):
            SimTomoDetector(name="x", **bad)
    with pytest.raises(ValueError, match="projection mode only"):
        SimTomoDetector(name="x", mode="slice", hot_pixels=0.01)


def test_zingers_are_new_bright_specks_in_every_lit_frame_and_leave_the_rest_alone(RE, tmp_path):
    det = SimTomoDetector(name="det", shape=(64, 64), directory=tmp_path / "a", simulate_timing=False, zingers=5e-3)
    plain = SimTomoDetector(name="det", shape=(64, 64), directory=tmp_path / "b", simulate_timing=False)
    for camera in (det, plain):
        camera.exposure_time.put(0.1)
        camera.photon_flux.put(5000.0)
    lit, without = (frames_of(scan(RE, bp.count([camera], num=3))).astype(np.int64) for camera in (det, plain))
    hit = lit != without
    # 3-30x the open beam's 500 photons above the frame a camera without zingers gives, elsewhere the same
    assert all(0 < n < 0.02 * 64 * 64 for n in hit.sum(axis=(1, 2)))
    assert ((lit - without)[hit] >= 0.5 * 3 * 500 * 0.5).all()
    assert not (hit[0] == hit[1]).all()  # new specks in every frame
    det.shutter.put("closed")
    plain.shutter.put("closed")
    np.testing.assert_array_equal(*(frames_of(scan(RE, bp.count([c], num=1))) for c in (det, plain)))  # none in darks
    with pytest.raises(ValueError, match="fraction of the pixels"):
        SimTomoDetector(name="x", zingers=0.5)
    with pytest.raises(ValueError, match="projection mode only"):
        SimTomoDetector(name="x", mode="slice", zingers=1e-3)


def test_frames_at_one_angle_reuse_the_projection_until_the_sample_moves(RE, rig):
    det, _, _ = rig
    first, second = frames_of(scan(RE, bp.count([det], num=2))).astype(float)
    assert det._last_attenuation is not None and det._last_attenuation[0] is det.sample
    assert 0 < np.abs(first - second).mean() < 0.2 * first.mean()  # new noise, same projection
    det.inject_fault("motion", pixels=8)
    moved = frames_of(scan(RE, bp.count([det], num=1)))[0].astype(float)
    expected = det.photon_flux.get() * det.exposure_time.get() * det.gain * np.exp(-det.sample.line_integrals(0.0))
    assert abs(moved - expected).mean() < abs(first - expected).mean()  # the moved sample, not the cached one


def test_nan_fault_needs_float_frames(tmp_path, RE):
    det = SimTomoDetector(name="det", shape=(32, 32), directory=tmp_path, simulate_timing=False)
    with pytest.raises(ValueError, match="uint16 frames cannot hold NaN"):
        det.inject_fault("nan")
    with pytest.raises(ValueError, match="unknown fault"):
        det.inject_fault("gremlins")
    det = SimTomoDetector(name="det", shape=(32, 32), directory=tmp_path, dtype="float32", simulate_timing=False)
    det.inject_fault("nan")
    frame = frames_of(scan(RE, bp.count([det], num=1)))[0]
    assert frame.dtype == np.float32 and 0 < np.isnan(frame).mean() < 0.1


def test_slice_mode_gives_reconstructed_float_slices(RE, tmp_path):
    det = SimTomoDetector(name="det", mode="slice", shape=(16, 40), directory=tmp_path, simulate_timing=False)
    det.slice_angles.put(60)
    frames = frames_of(scan(RE, bp.count([det], num=3)))
    assert frames.shape == (3, 40, 40) and frames.dtype == np.float32
    assert det.slice_index.get() == 3
    assert not np.allclose(frames[0], frames[2])  # consecutive heights differ


def test_bad_construction_is_refused(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        SimTomoDetector(name="d", mode="movie", directory=tmp_path)
    with pytest.raises(ValueError, match="asset_mode"):
        SimTomoDetector(name="d", asset_mode="tiff", directory=tmp_path)
    with pytest.raises(RuntimeError, match="not staged"):
        SimTomoDetector(name="d", directory=tmp_path).trigger()


def test_tomo_scan_takes_darks_flats_then_projections(RE, rig):
    from bluesky_tomogan.plans import tomo_scan

    det, stage, _ = rig
    docs = scan(RE, tomo_scan(det, stage, [0, 45, 90], n_darks=2, n_flats=2, md={"sample": "beads"}))
    start = docs[0][1]
    assert start["plan_name"] == "tomo_scan" and start["sample"] == "beads" and start["num_points"] == 3
    streams = {d["uid"]: d["name"] for n, d in docs if n == "descriptor"}
    assert sorted(streams.values()) == ["dark", "flat", "primary"]
    # one StreamResource per stream (a StreamResource belongs to one stream)
    sres = [d for n, d in docs if n == "stream_resource"]
    per_stream = {streams[d["descriptor"]]: d["stream_resource"] for n, d in docs if n == "stream_datum"}
    assert len(sres) == 3 and len(set(per_stream.values())) == 3
    assert docs[-1][1]["num_events"] == {"dark": 2, "flat": 2, "primary": 3}
    thetas = [d["data"]["stage_theta"] for n, d in docs if n == "event" and streams[d["descriptor"]] == "primary"]
    assert thetas == [0, 45, 90] and stage.x.position == 0


def test_plans_refuse_devices_without_what_they_move_before_any_run(RE):
    """A camera without a shutter, a plain motor for a stage: a TypeError that names each missing
    part, and no run opened."""
    from ophyd.sim import SynSignal, motor

    from bluesky_tomogan.plans import qc_tomo_scan, tomo_scan
    from bluesky_tomogan.qc.feedback import QCFeedback

    names = []
    RE.subscribe(lambda name, doc: names.append(name))
    cam = SynSignal(func=lambda: np.zeros((8, 8)), name="cam")
    with pytest.raises(TypeError, match=r"detector 'cam' has no 'shutter' and none is given \(shutter=...\); "
                                        "stage 'motor' has no 'theta'"):
        RE(tomo_scan(cam, motor, [0, 90]))
    with pytest.raises(TypeError, match="qc_tomo_scan: .*stage 'motor' has no 'x'"):
        RE(qc_tomo_scan(cam, motor, [0, 90], QCFeedback()))
    assert names == []


def test_a_beamline_shutter_of_its_own_closes_for_the_darks_and_opens_for_the_rest(RE, tmp_path):
    """A camera without a shutter signal (an area detector) and the beamline's shutter given as ``shutter=``, with
    its own values: closed for the darks only. Without darks no shutter is needed, without flats no stage ``x``;
    a shutter that is known is opened all the same (a scan must not take its projections behind it)."""
    from ophyd import Component, Device, Signal
    from ophyd.sim import SynAxis

    from bluesky_tomogan.plans import tomo_scan

    class Rotation(Device):  # a stage with a rotation only: no way out of the beam
        theta = Component(SynAxis)

    stage = SimTomoStage(name="stage")
    det = SimTomoDetector(name="det", stage=stage, shape=(8, 8), directory=tmp_path, simulate_timing=False)
    shutter = Signal(name="fe_shutter", value=1)
    moves = []
    RE.msg_hook = lambda msg: moves.append(msg.args[0]) if msg.command == "set" and msg.obj is shutter else None
    docs = []
    RE(tomo_scan(det, stage, [0, 90], n_darks=2, n_flats=1, shutter=shutter, shutter_open=1, shutter_closed=0),
       lambda name, doc: docs.append((name, doc)))
    assert moves == [0, 1] and det.shutter.get() == "open"  # the camera's own signal left alone
    assert docs[-1][1]["num_events"] == {"dark": 2, "flat": 1, "primary": 2}
    shutter.put(0)
    moves.clear()
    RE(tomo_scan(det, Rotation(name="rot"), [0, 90], n_darks=0, n_flats=0, shutter=shutter, shutter_open=1),
       lambda name, doc: docs.append((name, doc)))
    assert moves == [1] and shutter.get() == 1
    assert docs[-1][1]["num_events"] == {"primary": 2}


def test_unstaging_during_a_write_waits_for_it_instead_of_closing_the_file_under_it(tmp_path, monkeypatch):
    """A run aborted mid-exposure unstages while the exposure thread may be appending its frame:
    closing the HDF5 file under that append failed it ("identifier is not of specified type")."""
    import threading

    from bluesky_tomogan.hdf5_frames import FrameFile

    det = SimTomoDetector(name="det", shape=(16, 16), directory=tmp_path, simulate_timing=False)
    det.stage()
    entered, original = threading.Event(), FrameFile.append

    def slow_append(self, frames):
        entered.set()
        time.sleep(0.3)  # the unstage below comes while this append holds the file
        return original(self, frames)

    monkeypatch.setattr(FrameFile, "append", slow_append)
    status = det.trigger()
    assert entered.wait(5)
    det.unstage()
    status.wait(5)
    assert status.success
    with h5py.File(next(tmp_path.glob("det_*.h5")), "r") as f:
        assert f["/entry/data/data"].shape == (1, 16, 16)  # the frame was written, then the file closed
