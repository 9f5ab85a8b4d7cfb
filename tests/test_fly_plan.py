"""``tomo_fly_scan`` on ophyd-async's simulated detector and motor: what it flies, in which order, what the
callback, the live reconstruction and Tiled make of it, and what it refuses before any run."""

from __future__ import annotations

import bluesky.plan_stubs as bps
import numpy as np
import pytest
from bluesky_tiled_plugins import TiledWriter

from bluesky_tomogan.callbacks import TomoGANCallback, TomoReconstruction
from bluesky_tomogan.devices import SimTomoDetector, SimTomoStage
from bluesky_tomogan.plans import tomo_fly_scan
from bluesky_tomogan.storage import frames_directory

ophyd_async_core = pytest.importorskip("ophyd_async.core")
ophyd_async_sim = pytest.importorskip("ophyd_async.sim")


class _BrightPattern(ophyd_async_sim.PatternGenerator):
    """ophyd-async's blob at 80 % of the camera's range whatever the exposure (its own scales with the exposure:
    at a fly scan's 10 ms its frames are all but zero, which QC calls dead pixels)."""

    def generate_point(self, channel: int = 1, high_energy: bool = False) -> float:
        return 0.8 / self._exposure


@pytest.fixture
def beamline(RE, tmp_path):
    """ophyd-async's simulated camera (a new file per staging), a rotation motor that moves at its speed, a sample
    stage and a soft shutter."""
    frames = frames_directory(tmp_path / "store")
    frames.mkdir(parents=True, exist_ok=True)
    with ophyd_async_core.init_devices():
        path = ophyd_async_core.StaticPathProvider(ophyd_async_core.UUIDFilenameProvider(), frames)
        det = ophyd_async_sim.SimBlobDetector(path, _BrightPattern(), name="det")
        rot = ophyd_async_sim.SimMotor(name="rot", instant=False, units="deg")
        x = ophyd_async_sim.SimMotor(name="x", initial_value=1.5)
        shutter = ophyd_async_core.soft_signal_rw(str, "open", name="shutter")
    RE(bps.mv(rot.acceleration_time, 0.01))
    return det, rot, x, shutter


def test_darks_flats_and_projections_are_flown_denoised_reconstructed_and_stored(RE, denoiser, store, beamline):
    """Darks with the shutter closed, flats with the sample out, then the projections while the motor turns at
    speed from start to stop (the motor kicked off first: its kickoff is done when it is at speed): three streams
    of StreamDatums, no event. The callback denoises every frame, the reconstruction uses the nominal angles of
    the start document (no position capture), and Tiled serves the raw and denoised frames."""
    det, rot, x, shutter = beamline
    messages = []
    RE.msg_hook = lambda msg: messages.append(msg)
    cb = TomoGANCallback(denoiser, streams=["primary", "flat"])
    rec = TomoReconstruction()
    docs = []
    cb.subscribe(rec)
    rec.subscribe(TiledWriter(store))
    rec.subscribe(lambda name, doc: docs.append((name, doc)))
    RE.subscribe(cb)
    (uid,) = RE(tomo_fly_scan(det, rot, 0, 180, 20, exposure=0.01, shutter=shutter, sample_x=x, n_darks=3,
                              n_flats=4, flush_period=0.05, md={"sample": "blob"}))
    assert rec.wait(timeout=60)

    start = next(d for n, d in docs if n == "start")
    assert start["plan_name"] == "tomo_fly_scan" and start["motors"] == ["rot"] and start["sample"] == "blob"
    assert start["angles"] == pytest.approx([4.5 + 9 * i for i in range(20)])  # each exposure's middle
    assert not any(n == "event" and d["descriptor"] in {dd["uid"] for nn, dd in docs if nn == "descriptor"
                                                       and dd["name"] in ("dark", "flat", "primary")}
                   for n, d in docs)
    steps = [(m.command, m.obj.name, *m.args) if m.command == "set" else (m.command, m.obj.name)
             for m in messages if m.command in ("set", "kickoff") and m.obj.name in ("det", "rot", "x", "shutter")]
    assert steps == [("set", "shutter", "closed"), ("kickoff", "det"),  # darks
                     ("set", "shutter", "open"), ("set", "x", 10.0), ("kickoff", "det"), ("set", "x", 1.5),  # flats
                     ("kickoff", "rot"), ("kickoff", "det")]  # the motor at speed before the detector starts
    (info,) = [m.args[0] for m in messages if m.command == "prepare" and m.obj is rot]
    assert (info.start_position, info.end_position, info.time_for_move) == (0, 180, pytest.approx(0.2))

    run = store[uid]
    assert {"dark", "flat", "primary", "denoised", "flat_denoised", "reconstruction"} <= set(run)
    raw = run["primary"]["det"].read()
    assert raw.shape[0] == 20 and run["dark"]["det"].read().shape[0] == 3 and run["flat"]["det"].read().shape[0] == 4
    denoised = run["denoised"]
    assert list(denoised["det_source_seq_num"].read()) == list(range(1, 21))
    assert denoised["det_denoised"].read().shape == (20, *raw.shape[-2:])
    reconstruction = run["reconstruction"]
    assert bool(reconstruction["final"].read()[-1]) and int(reconstruction["projections"].read()[-1]) == 20
    assert "the plan's nominal angle" in str(reconstruction["note"].read()[-1])
    assert np.isfinite(reconstruction["slice"].read()).all()


def test_a_position_capture_is_flown_beside_the_detector_into_the_same_stream(RE, denoiser, beamline, tmp_path):
    """A second flyable, collectable device in ``capture`` (a PandA in the field; here a second simulated camera)
    is prepared with the detector's trigger information, kicked off after the motor and collected into the
    projections' stream, not into the darks' or flats'."""
    det, rot, x, shutter = beamline
    with ophyd_async_core.init_devices():
        path = ophyd_async_core.StaticPathProvider(ophyd_async_core.UUIDFilenameProvider(), tmp_path)
        panda = ophyd_async_sim.SimBlobDetector(path, ophyd_async_sim.PatternGenerator(), name="panda")
    docs = []
    RE(tomo_fly_scan(det, rot, 0, 180, 6, exposure=0.01, shutter=shutter, sample_x=x, n_darks=2, n_flats=2,
                     capture=[panda], flush_period=0.05), lambda name, doc: docs.append((name, doc)))
    keys = {d["name"]: set(d["data_keys"]) for n, d in docs if n == "descriptor"}
    assert "panda" in keys["primary"] and "det" in keys["primary"]
    assert not any(k.startswith("panda") for k in keys["dark"] | keys["flat"])
    rows = {}
    for n, d in docs:
        if n == "stream_resource":
            rows[d["uid"]] = d["data_key"]
    counted = {}
    for n, d in docs:
        if n == "stream_datum":
            key = rows[d["stream_resource"]]
            counted[key] = counted.get(key, 0) + d["indices"]["stop"] - d["indices"]["start"]
    assert counted["panda"] == 6 and counted["det"] == 2 + 2 + 6
    start = next(d for n, d in docs if n == "start")
    assert start["plan_args"]["capture"] == ["panda"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n_darks": 2, "shutter": None}, "2 darks need a shutter"),
    ({"n_flats": 3, "sample_x": None}, "3 flats need a sample_x"),
    ({"detector": "v1"}, "detector 'det' is not a flyable, collectable detector (no 'prepare')"),
    ({"motor": "v1"}, "motor 'stage_theta' is not a flyable motor (no 'prepare')"),
])
def test_what_cannot_be_flown_is_refused_before_any_run(RE, beamline, kwargs, message):
    """Darks without a shutter, flats without a way out of the beam, an ophyd v1 step-scan camera or motor: a
    TypeError that says what is missing, before the run opens."""
    det, rot, x, shutter = beamline
    stage = SimTomoStage(name="stage")
    v1 = {"detector": SimTomoDetector(name="det", stage=stage, shape=(8, 8), simulate_timing=False),
          "motor": stage.theta}
    args = {"detector": det, "motor": rot, "shutter": shutter, "sample_x": x}
    args |= {k: v1[k] if v == "v1" else v for k, v in kwargs.items()}
    docs = []
    with pytest.raises(TypeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RE(tomo_fly_scan(args.pop("detector"), args.pop("motor"), 0, 180, 10, exposure=0.01, **args),
           lambda name, doc: docs.append(name))
    assert docs == []


@pytest.mark.parametrize("kwargs", [{"num": 0}, {"exposure": 0.0}, {"deadtime": -1.0}, {"stop": 0.0}])
def test_a_scan_that_cannot_be_flown_is_a_value_error_before_any_run(RE, beamline, kwargs):
    det, rot, x, shutter = beamline
    args = {"start": 0.0, "stop": 180.0, "num": 10, "exposure": 0.01} | kwargs
    docs = []
    with pytest.raises(ValueError, match="tomo_fly_scan: needs num >= 1"):
        RE(tomo_fly_scan(det, rot, args.pop("start"), args.pop("stop"), args.pop("num"), shutter=shutter,
                         sample_x=x, **args), lambda name, doc: docs.append(name))
    assert docs == []


def test_a_suspension_during_the_flight_holds_the_plan_and_every_frame_is_collected(RE, beamline):
    """A beam dump while the projections fly: the plan waits where it is (a flight cannot be rewound) while the
    devices fly on, and when the beam is back every frame is collected and the run ends in success (bluesky's
    ``collect_while_completing`` forgets what it waited on when a suspension interrupts it, and would end the
    stream at the frames collected by then)."""
    import threading
    import time

    from bluesky.suspenders import SuspendBoolHigh
    from ophyd import Signal

    det, rot, x, shutter = beamline
    beam_dump = Signal(name="beam_dump", value=0)
    RE.install_suspender(SuspendBoolHigh(beam_dump, sleep=0.1))
    RE.record_interruptions = True

    def dump() -> None:
        beam_dump.put(1)
        time.sleep(0.3)
        beam_dump.put(0)

    collects = []

    def hook(msg):  # the beam goes while the projections fly, after their second collect
        if msg.command == "collect" and msg.kwargs.get("name") == "primary":
            collects.append(msg)
            if len(collects) == 2:
                threading.Thread(target=dump).start()

    RE.msg_hook = hook
    docs = []
    (uid,) = RE(tomo_fly_scan(det, rot, 0, 180, 60, exposure=0.01, shutter=shutter, sample_x=x, n_darks=2,
                              n_flats=2, flush_period=0.05), lambda name, doc: docs.append((name, doc)))
    stop = next(d for n, d in docs if n == "stop")
    assert stop["exit_status"] == "success"
    assert stop["num_events"]["primary"] == 60
    assert stop["num_events"].get("interruptions") == 1  # the suspension was recorded


def test_a_detector_that_needs_time_between_frames_slows_the_motor_to_its_period(RE, beamline):
    """A camera that reads out for 5 ms between exposures (what ophyd-async's ``get_trigger_deadtime`` says): its
    frames come every 15 ms, not 10, so the motor takes 10 x 15 ms over the range and the nominal angles are
    those of that period."""
    det, rot, x, shutter = beamline

    async def readout(settings=None):
        return {ophyd_async_core.DetectorTrigger.INTERNAL}, 0.005

    det.get_trigger_deadtime = readout
    messages, docs = [], []
    RE.msg_hook = messages.append
    RE(tomo_fly_scan(det, rot, 0, 180, 10, exposure=0.01, shutter=shutter, sample_x=x, n_darks=0, n_flats=0,
                     flush_period=0.05), lambda name, doc: docs.append((name, doc)))
    (motion,) = [m.args[0] for m in messages if m.command == "prepare" and m.obj is rot]
    (trigger,) = [m.args[0] for m in messages if m.command == "prepare" and m.obj is det]
    assert motion.time_for_move == pytest.approx(10 * 0.015) and trigger.deadtime == pytest.approx(0.005)
    start = next(d for n, d in docs if n == "start")
    assert start["angles"][0] == pytest.approx(18 * 0.01 / 2 / 0.015) and start["plan_args"]["deadtime"] == 0.005
