"""Which neighbours serve as a frame's context: the shared stand-in rule, the distance that
tells a nearby view from another sample, training's context dropout and the Denoiser's gate."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from bluesky_tomogan.context import (
    DEFAULT_NOISE_RATIO,
    DEFAULT_THRESHOLD,
    change_to_noise,
    context_distance,
    context_gains,
    gate_context,
    neighbour_gains,
    usable_neighbours,
)
from bluesky_tomogan.frames import context_indices, context_offsets
from bluesky_tomogan.simulate.datasets import Recipe, simulate_pairs

from .conftest import copy_of_shipped_model


@pytest.fixture(scope="module")
def scans():
    """Two simulated scans of different phantoms, 6 consecutive angles each, 20 photons/pixel
    (the hardest case for telling structure from noise), detector blur and zingers."""
    recipe = Recipe(domain="projection", size=128, photons=(20, 20), max_attenuation=(0.4, 1.2),
                    frames_per_scan=6, psf_sigma=(1.0, 1.5), zinger_rate=1e-3)
    return simulate_pairs(recipe, 2, seed=4242, workers=1)


def test_context_offsets_stand_in_with_the_mirror_then_the_centre():
    assert context_offsets(5, 2, 2) == [-2, -1, 0, 1, 2]
    assert context_offsets(5, 0, 0) == [0, 0, 0, 0, 0]  # a single frame is its own context
    assert context_offsets(5, 1, 0) == [0, -1, 0, -1, 0]
    assert context_offsets(5, 2, 1) == [-2, -1, 0, 1, -2]
    assert context_offsets(3, 0, 1) == [1, 0, 1]
    # a scan's ends follow the same rule
    group = np.array([0, 0, 0, 1, 1])
    assert context_indices(group, 0, 5) == [2, 1, 0, 1, 2]
    assert context_indices(group, 2, 5) == [0, 1, 2, 1, 0]
    assert context_indices(group, 3, 3) == [4, 3, 4]


def test_a_mirror_stands_in_only_near_the_view_it_stands_for():
    """Under rotation a mirrored neighbour moves the wrong way: it stands for a view twice as far from the missing
    one as from the centre. Given angles, a mirror stands in only within half of NEIGHBOUR_DEGREES, else the frame
    itself (``benchmarks/stand_ins.py``: at steps of 1.9 degrees and more the ends scored higher so)."""
    from bluesky_tomogan.frames import NEIGHBOUR_DEGREES, context_offsets, mirror_stands_in

    group = np.zeros(6, np.int32)
    fine, two, four = np.arange(6) * 0.9, np.arange(6) * 2.0, np.arange(6) * 3.75
    assert context_indices(group, 0, 5, fine) == [2, 1, 0, 1, 2]  # as without angles: mirrors near enough
    assert context_indices(group, 0, 5, two) == [0, 1, 0, 1, 2]  # the mirror 4 degrees out is too far
    assert context_indices(group, 0, 5, four) == [0, 0, 0, 1, 0]  # the +2 neighbour 7.5 degrees away is no context
    assert context_indices(group, 5, 5, two) == [3, 4, 5, 4, 5]
    assert context_offsets(5, 2, 1, mirror=lambda o: abs(o) < 2) == [-2, -1, 0, 1, 0]
    assert context_offsets(5, 2, 1) == [-2, -1, 0, 1, -2]
    assert mirror_stands_in(NEIGHBOUR_DEGREES / 2, 0.0) and not mirror_stands_in(NEIGHBOUR_DEGREES / 2 + 0.1, 0.0)
    # recorded angles jitter: a real scan of 2-degree steps recorded 43.7999 and 47.8 (4.0001 apart)
    jittered = np.array([39.8, 41.8, 43.7999, 45.8, 47.8, 49.8])
    assert context_indices(group, 2, 5, jittered) == [0, 1, 2, 3, 4]
    assert context_indices(group, 0, 5, jittered - 0.0001 * np.arange(6)) == [0, 1, 0, 1, 2]  # mirror 1.9999 out
    assert context_indices(group, 0, 5, np.full(6, np.nan)) == [2, 1, 0, 1, 2]  # angles not known: mirrored


def test_a_nearby_view_is_close_and_another_sample_is_far(scans):
    a, b = scans.ns[:6], scans.ns[6:]
    for scan in (a, b):
        for i in range(4):
            assert context_distance(scan[i + 1], scan[i]) < DEFAULT_THRESHOLD
            assert context_distance(scan[i + 2], scan[i]) < DEFAULT_THRESHOLD
    assert context_distance(b[0], a[0]) > 1.5 * DEFAULT_THRESHOLD
    assert context_distance(a[0], b[0]) > 1.5 * DEFAULT_THRESHOLD
    assert context_distance(a[0], a[0]) == 0.0
    # a change of gain (beam decay) is not a change of picture; a closed shutter is
    assert context_distance(a[1] * 0.97, a[0]) < DEFAULT_THRESHOLD / 2
    assert context_distance(np.zeros_like(a[1]), a[0]) > 1.5 * DEFAULT_THRESHOLD
    # too small to judge: kept
    assert context_distance(a[0, :64, :64], b[0, :64, :64]) == 0.0


def test_the_distance_does_not_depend_on_the_noise_level():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:128, :128]
    clean = 1000 * np.exp(-0.8 * ((xx - 60) ** 2 + (yy - 70) ** 2 < 900))
    for photons in (20, 200, 20_000):
        scale = photons / 1000
        f0, f1 = (rng.poisson(clean * scale).astype(np.float32) for _ in range(2))
        assert context_distance(f1, f0) < 0.15, photons


def test_gate_context_withholds_from_the_first_far_neighbour_outwards(scans):
    a, b = scans.ns[:6], scans.ns[6:]
    same = a[:5]
    out, kept = gate_context(same)
    assert kept == (2, 2) and out is same
    mixed = np.stack([a[0], b[1], a[2], a[3], b[4]])  # far: -1 (so -2 too) and +2
    assert usable_neighbours(mixed) == (0, 1)
    out, kept = gate_context(mixed)
    assert kept == (0, 1)
    np.testing.assert_array_equal(out, mixed[[2 + o for o in context_offsets(5, 0, 1)]])
    assert not np.shares_memory(out, mixed)
    assert gate_context(mixed, np.inf)[1] == (2, 2)
    nan_neighbour = mixed.copy()
    nan_neighbour[3] = np.nan
    assert usable_neighbours(nan_neighbour)[1] == 0  # a neighbour it cannot judge is not used


def test_context_dropout_withholds_neighbours_at_its_rate_and_keeps_the_full_context_for_a_teacher(scans):
    from bluesky_tomogan.model.data import PatchSampler

    plain = PatchSampler(scans, 32, depth=5, seed=1).batch(8)
    same = PatchSampler(scans, 32, depth=5, seed=1, context_dropout=0.0).batch_with_full_context(8)
    np.testing.assert_array_equal(plain[0], same[0])  # no dropout: the batches of before
    np.testing.assert_array_equal(same[0], same[2])
    sampler = PatchSampler(scans, 32, depth=5, seed=1, context_dropout=0.5)
    x, _, full = sampler.batch_with_full_context(400)
    withheld = np.array([not np.array_equal(x[i], full[i]) for i in range(len(x))])
    single = np.array([all(np.array_equal(x[i, k], x[i, 2]) for k in range(5)) for i in range(len(x))])
    np.testing.assert_array_equal(x[:, 2], full[:, 2])  # the centre is always the frame itself
    assert 0.35 < withheld.mean() < 0.65
    assert 0.15 < single.mean() < 0.45  # half of the withheld ones get no neighbour at all
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        PatchSampler(scans, 32, depth=5, context_dropout=1.5)


def test_neighbours_the_beam_lit_brighter_or_dimmer_are_denoised_on_the_frames_intensity(scans, denoiser,
                                                                                         tmp_path):
    """A projection network reads its neighbours' intensities as evidence of the frame's: neighbours 5 %
    brighter (a top-up, a flickering monochromator) made the denoised frame 3.1 % brighter
    (``benchmarks/beam_flicker.py``). Such neighbours are scaled to the frame's intensity first; neighbouring
    projections without a change of the beam are left as they are."""
    from bluesky_tomogan.devices import SimTomoDetector

    det = SimTomoDetector(name="det", shape=(128, 128), directory=tmp_path, seed=5, simulate_timing=False)
    angles = [0.5 * i for i in range(5)]
    clean = 1000 * det.gain * np.exp(-det.sample.line_integrals(angles[2]))  # above the dark offset (100)
    centre = det.projection([angles[2]], 1000).astype(np.float32)

    def context(beam):
        return np.stack([centre if i == 2 else det.projection([a], 1000 * beam).astype(np.float32)
                         for i, a in enumerate(angles)])

    def bias(out):
        return float((out - 100).mean() / clean.mean()) - 1

    steady, brighter, dimmer = context(1.0), context(1.05), context(0.95)
    assert context_gains(steady) is None
    rescaled = denoiser.contexts_rescaled  # (a fixture other tests share)
    gains = context_gains(brighter)
    assert gains[2] == 1.0 and all(1 / 1.05 - 0.01 < g < 1 / 1.05 + 0.01 for g in np.delete(gains, 2))
    assert abs(bias(denoiser.denoise_context(steady))) < 0.003
    assert abs(bias(denoiser.denoise_context(brighter))) < 0.005 and abs(bias(denoiser.denoise_context(dimmer))) < 0.005
    assert denoiser.contexts_rescaled == rescaled + 2
    # neighbouring views of a scan without a change of the beam, 20 photons/pixel with blur and zingers: none
    denoiser.denoise(scans.ns, groups=scans.group)
    assert denoiser.contexts_rescaled == rescaled + 2
    assert neighbour_gains(np.stack([centre - 500] * 3)) is None  # a slice's values at or below 0: no gain


@pytest.fixture(scope="module")
def gated_and_plain(tmp_path_factory):
    from bluesky_tomogan import load_denoiser

    plain_dir = copy_of_shipped_model("tomogan-projection", tmp_path_factory.mktemp("plain"))
    gated_dir = copy_of_shipped_model("tomogan-projection", tmp_path_factory.mktemp("gated"))
    card_path = gated_dir / "tomogan-projection.json"
    card = json.loads(card_path.read_text())
    card.pop("context_gate", None)
    (plain_dir / "tomogan-projection.json").write_text(json.dumps(card))
    card["context_gate"] = {"threshold": DEFAULT_THRESHOLD}
    card_path.write_text(json.dumps(card))
    load = {"backend": "onnxruntime", "precision": "fp32"}
    return load_denoiser(str(gated_dir), **load), load_denoiser(str(plain_dir), **load)


def test_the_denoiser_gives_a_frame_only_neighbours_that_show_the_same_thing(scans, gated_and_plain):
    gated, plain = gated_and_plain
    assert gated.context_gate == DEFAULT_THRESHOLD and plain.context_gate == np.inf
    a, b = scans.ns[:6], scans.ns[6:]
    # a real scan: every neighbour kept, the same result as without the gate
    np.testing.assert_array_equal(gated.denoise(a), plain.denoise(a))
    assert gated.contexts_gated == 0
    # one frame of each of three samples: each frame is denoised on its own, as a single frame is
    c = scans.ns[3:4] * 0 + np.flipud(a[2])
    stack = np.stack([a[0], b[0], c[0]])
    out = gated.denoise(stack)
    assert gated.contexts_gated == 3
    for i in range(3):
        np.testing.assert_array_equal(out[i], gated.denoise(stack[i]))
    assert not np.allclose(plain.denoise(stack)[1], out[1])  # without the gate, the others' structure leaks in


def _projections_in_the_order_taken(RE, tmp_path, angles):
    """``tomo_scan`` of the simulated camera (128 px, 500 photons) at ``angles`` in that order, through the callback
    (frames inline): each projection's raw frame and denoised frame, by its angle, and its QC flags."""
    from bluesky_tomogan.callbacks import TomoGANCallback
    from bluesky_tomogan.devices import SimTomoDetector, SimTomoStage
    from bluesky_tomogan.inference import load_denoiser
    from bluesky_tomogan.plans import tomo_scan

    stage = SimTomoStage(name="stage")
    det = SimTomoDetector(name="det", stage=stage, shape=(128, 128), directory=tmp_path, simulate_timing=False, seed=7)
    det.exposure_time.put(0.1)
    det.photon_flux.put(5000.0)
    den = load_denoiser("tomogan-projection", backend="onnxruntime")
    cb = TomoGANCallback(den, inline=True, maxsize=len(angles) + 8)
    docs = []
    cb.subscribe(lambda name, doc: docs.append((name, doc)))
    RE.subscribe(cb)
    RE(tomo_scan(det, stage, angles, n_darks=2, n_flats=2))
    (derived,) = [d["uid"] for n, d in docs if n == "descriptor" and d["name"] == "denoised"]
    *_, projections = [d for n, d in docs if n == "stream_resource"]  # a file per stream: the last is primary's
    with h5py.File(projections["uri"].removeprefix("file://"), "r") as f:
        frames = f[projections["parameters"]["dataset"]][()]
    out = {}
    for name, doc in docs:
        if name == "event_page" and doc["descriptor"] == derived:
            for seq, frame, flags in zip(doc["data"]["det_image_source_seq_num"], doc["data"]["det_image_denoised"],
                                         doc["data"]["det_image_qc_flags"], strict=True):
                out[angles[int(seq) - 1]] = (frames[int(seq) - 1], np.asarray(frame), flags)
    return den, out


def test_neighbours_far_in_angle_are_left_out_of_a_projections_context(RE, tmp_path):
    """A golden-angle scan in the order taken: a frame's neighbours are views 30-70 degrees away, which the
    network paints in (SSIM 0.87 against 0.96 alone on the demo's sample at 256 px, 500 photons; QC then flags
    ``out_of_distribution``). The callback leaves a neighbour more than ``NEIGHBOUR_DEGREES`` away out, as at a
    scan's end: each frame is denoised as it would be alone. In a fine regular scan the neighbours stay."""
    from bluesky_tomogan.frames import NEIGHBOUR_DEGREES

    golden = [float(a) for a in (np.arange(12) * 111.246117975) % 180]
    den, out = _projections_in_the_order_taken(RE, tmp_path / "golden", golden)
    assert len(out) == 12
    for raw, denoised, flags in out.values():
        alone = den.denoise_context(np.stack([raw] * den.depth))
        assert np.allclose(denoised, alone, atol=1e-3), np.abs(denoised - alone).max()
        assert "out_of_distribution" not in flags
    fine = [2.0 * i for i in range(8)]
    assert 2 * fine[1] <= NEIGHBOUR_DEGREES  # both neighbours on each side are near
    den, out = _projections_in_the_order_taken(RE, tmp_path / "fine", fine)
    raw, denoised, _ = out[fine[4]]
    assert not np.allclose(denoised, den.denoise_context(np.stack([raw] * den.depth)), atol=1e-3)


def test_live_a_mirror_stands_in_only_near_the_view_it_stands_for_and_angles_may_jitter(RE, tmp_path):
    """The callback's stand-ins at a stream's start follow ``context_indices`` given the angles: with 2-degree steps
    the first projection's farther neighbours' stand-ins are the frame itself (mirrored, before: on a real I12 scan
    of 2-degree steps the first and last frames were flagged ``out_of_distribution``). A neighbour 4.0001 degrees
    away, as recorded angles jitter, is context as one 4 degrees away is (before: left out, its mirror in)."""
    angles = [0.0, 2.0, 4.0, 6.0, 8.0001, 10.0, 12.0]
    den, out = _projections_in_the_order_taken(RE, tmp_path, angles)
    raw = np.stack([out[a][0] for a in angles])
    first = den.denoise_context(raw[[0, 1, 0, 1, 2]])
    np.testing.assert_allclose(out[0.0][1], first, atol=1e-3)
    assert not np.allclose(first, den.denoise_context(raw[[2, 1, 0, 1, 2]]), atol=1e-3)
    np.testing.assert_allclose(out[4.0][1], den.denoise_context(raw[[0, 1, 2, 3, 4]]), atol=1e-3)
    np.testing.assert_allclose(out[12.0][1], den.denoise_context(raw[[4, 5, 6, 5, 6]]), atol=1e-3)

def test_each_neighbours_angle_is_asked_once_per_context(RE, tmp_path, monkeypatch):
    """The worker may wait up to a second for a neighbour's angle; the stand-in rule reads the angles the
    neighbour rule read, without asking (and waiting) again."""
    import threading

    from bluesky_tomogan.callbacks import run, run_qc

    contexts: list[list[int]] = []
    inside = threading.local()  # the worker's questions while it builds a context, not QC's on other threads
    angle_of, near_in_angle = run_qc.RunQC.angle_of, run.RunDenoiser._near_in_angle

    def counting_angle_of(self, item, wait=0.0):
        if getattr(inside, "calls", None) is not None:
            inside.calls.append(item.seq_num)
        return angle_of(self, item, wait)

    def one_context(self, item, context):
        inside.calls = []
        try:
            return near_in_angle(self, item, context)
        finally:
            contexts.append(inside.calls)
            inside.calls = None

    monkeypatch.setattr(run_qc.RunQC, "angle_of", counting_angle_of)
    monkeypatch.setattr(run.RunDenoiser, "_near_in_angle", one_context)
    _projections_in_the_order_taken(RE, tmp_path, [0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0])
    assert any(len(c) > 3 for c in contexts)  # the ends asked about stand-ins too
    for calls in contexts:
        assert len(calls) == len(set(calls)), calls

def test_the_angle_rule_does_not_depend_on_when_the_events_come(RE, tmp_path, monkeypatch):
    """bluesky emits a frame's StreamDatum before its event, and the worker may take the frame before the callback
    thread has seen the event with its angle. Events seen late (50 ms each) give the same denoised frames: the
    worker waits for a neighbour's angle where its stream's events carry one (3 degrees apart, the neighbour after
    next is the first far one; before, it was kept whenever its angle was not known yet: up to 13 counts apart)."""
    import time

    from bluesky_tomogan.callbacks import run_qc

    angles = [3.0 * i for i in range(7)]
    _, prompt = _projections_in_the_order_taken(RE, tmp_path / "prompt", angles)
    keep = run_qc.RunQC.keep_positions

    def late(self, raw_name, doc):
        time.sleep(0.05)
        keep(self, raw_name, doc)

    monkeypatch.setattr(run_qc.RunQC, "keep_positions", late)
    _, delayed = _projections_in_the_order_taken(RE, tmp_path / "late", angles)
    for a in angles:
        np.testing.assert_allclose(delayed[a][1], prompt[a][1], atol=1e-3)


def test_offline_a_stack_gets_the_live_rule_by_its_angles_and_groups(denoiser):
    """``Denoiser.denoise`` of a stack told each frame's angle (``bluesky-tomogan denoise`` of a file that stores
    them) leaves neighbours more than ``NEIGHBOUR_DEGREES`` away out, as the live callback does: a golden-angle
    scan in the order taken gives each frame as it is alone, a fine regular one the stack's own context. Told
    each frame's group (an NXtomo ``image_key``), a neighbour of another group is no context."""
    from bluesky_tomogan.errors import InputValueError

    frames = np.random.default_rng(5).poisson(600, (7, 64, 64)).astype(np.float32)
    golden = (np.arange(7) * 111.246117975) % 180
    out = denoiser.denoise(frames, angles=golden)
    for k in range(7):
        alone = denoiser.denoise_context(np.stack([frames[k]] * denoiser.depth))
        np.testing.assert_allclose(out[k], alone, atol=1e-3)
    np.testing.assert_array_equal(denoiser.denoise(frames, angles=np.arange(7.0)), denoiser.denoise(frames))
    unknown = np.full(7, np.nan)  # angles not known: neighbours by order
    np.testing.assert_array_equal(denoiser.denoise(frames, angles=unknown), denoiser.denoise(frames))
    groups = np.array([2, 2, 1, 1, 0, 0, 0])  # darks, flats, projections
    out = denoiser.denoise(frames, groups=groups)
    for k in range(7):
        own = denoiser.denoise_context(frames[context_indices(groups, k, denoiser.depth)])
        np.testing.assert_allclose(out[k], own, atol=1e-3)
    assert context_indices(groups, 4, 5) == [6, 5, 4, 5, 6]  # the first projection: mirrored, no flat
    with pytest.raises(InputValueError, match=r"angles must be one number per frame \(7\)"):
        denoiser.denoise(frames, angles=[0.0, 1.0])
    with pytest.raises(InputValueError, match=r"groups must be one number per frame \(7\)"):
        denoiser.denoise(frames, groups=["dark"] * 7)


def test_a_ladder_of_pruning_ratios_denoises_a_file_by_the_same_rule(tmp_path):
    """``denoise_file`` with the networks of several pruning ratios (``load_ratios``, what the adaptive policy
    runs): the file is denoised a chunk at a time with its frames' angles, as one network does it (before, the
    ladder took neither the chunk's bounds nor the angles: a TypeError)."""
    from bluesky_tomogan.frame_files import denoise_file, open_frames
    from bluesky_tomogan.inference.ratios import load_ratios

    ratios = load_ratios("tomogan-projection-aio", backend="onnxruntime")
    frames = np.random.default_rng(8).poisson(600, (7, 64, 64)).astype(np.uint16)
    golden = (np.arange(7) * 111.246117975) % 180
    src, out = tmp_path / "golden.h5", tmp_path / "out.npy"
    with h5py.File(src, "w") as f:
        f["exchange/data"] = frames
        f["exchange/theta"] = golden
    with open_frames(src) as source:
        denoise_file(ratios, source, out, chunk=3)
    expected = ratios.at(ratios.ratio).denoise(frames.astype(np.float32), angles=golden)
    np.testing.assert_allclose(np.load(out), expected, atol=1e-3)


def test_a_frame_source_takes_angles_and_image_keys_only_one_a_frame():
    """A FrameSource made by hand (``denoise_file``'s input) with angles or groups that are not one per frame is an
    error where it is made: before, they were left out without a word, and the frames denoised by order."""
    from bluesky_tomogan.frame_files import FrameSource

    stack = np.zeros((4, 8, 8), np.float32)
    made = FrameSource(stack.shape, stack.dtype, lambda a, b: stack[a:b], angles=np.arange(4.0), groups=np.zeros(4))
    assert made.angles is not None and made.groups is not None
    for wrong in ({"angles": np.arange(3.0)}, {"groups": np.zeros((4, 1))}):
        with pytest.raises(ValueError, match="one value per frame"):
            FrameSource(stack.shape, stack.dtype, lambda a, b: stack[a:b], **wrong)


def test_a_file_whose_angles_cannot_be_read_is_denoised_by_order_with_a_warning(tmp_path, monkeypatch, caplog):
    """The angles and image_key only shape the context: a failure reading them (a file laid out in a way the
    NeXus reader trips on) is a warning, and the frames are denoised with their neighbours in the order stored."""
    import logging

    from bluesky_tomogan import frame_files

    def broken(f, key, n):
        raise ValueError("an image_key of strings")

    monkeypatch.setattr(frame_files, "_frame_order", broken)
    src = tmp_path / "scan.h5"
    with h5py.File(src, "w") as f:
        f["exchange/data"] = np.ones((3, 16, 16), np.uint16)
        f["exchange/theta"] = [0.0, 120.0, 240.0]
    caplog.set_level(logging.WARNING, logger="bluesky_tomogan")
    with frame_files.open_frames(src) as source:
        assert source.angles is None and source.groups is None and source.shape == (3, 16, 16)
    assert any("angles and image_key not read (ValueError: an image_key of strings); neighbours by order"
               in r.getMessage() for r in caplog.records)


def _golden_angle_scan(RE, tmp_path, n=10):
    """The raw documents of a golden-angle ``tomo_scan`` of the simulated camera (128 px, 500 photons, frames in
    files) in the order taken, and its angles."""
    from bluesky_tomogan.devices import SimTomoDetector, SimTomoStage
    from bluesky_tomogan.plans import tomo_scan

    angles = [float(a) for a in (np.arange(n) * 111.246117975) % 180]
    stage = SimTomoStage(name="stage")
    det = SimTomoDetector(name="det", stage=stage, shape=(128, 128), directory=tmp_path, simulate_timing=False, seed=7)
    det.exposure_time.put(0.1)
    det.photon_flux.put(5000.0)
    raw = []
    token = RE.subscribe(lambda name, doc: raw.append((name, doc)))
    RE(tomo_scan(det, stage, angles, n_darks=2, n_flats=2))
    RE.unsubscribe(token)
    return raw, angles


def _denoised_projections(docs, **options):
    """``docs`` replayed through a TomoGANCallback (frames inline): each projection's denoised frame and QC flags by
    seq_num, and the run's summary. As ``reprocess`` replays, ``lagging`` is never raised: a replayed frame's
    latency is its wait in the queue, longer on a busy machine, not a detector outrunning the denoiser."""
    from bluesky_tomogan.callbacks import TomoGANCallback
    from bluesky_tomogan.inference import load_denoiser
    from bluesky_tomogan.reprocess import replay_qc_policy

    cb = TomoGANCallback(load_denoiser("tomogan-projection", backend="onnxruntime"), streams=["primary"],
                         inline=True, maxsize=64, qc=replay_qc_policy(), **options)
    out = []
    cb.subscribe(lambda name, doc: out.append((name, doc)))
    for name, doc in docs:
        cb(name, doc)
    (derived,) = [d["uid"] for n, d in out if n == "descriptor" and d["name"] == "denoised"]
    frames = {}
    for name, doc in out:
        if name == "event_page" and doc["descriptor"] == derived:
            for seq, frame, flags in zip(doc["data"]["det_image_source_seq_num"], doc["data"]["det_image_denoised"],
                                         doc["data"]["det_image_qc_flags"], strict=True):
                frames[int(seq)] = (np.asarray(frame), flags)
    return frames, cb.last_run


@pytest.mark.usefixtures("patient_waits")
@pytest.mark.parametrize(("units", "per_degree"), [(None, 1.0), ("mrad", 1000 * np.pi / 180)])
def test_a_fly_scans_captured_angles_are_read_from_their_file_for_each_frames_context(RE, tmp_path, caplog,
                                                                                      units, per_degree):
    """A golden-angle fly scan as ophyd-async records one (tests/fly_scan.py: each frame's angle a PandA's encoder
    capture written to a file and announced by StreamDatum, no event, no ``motors`` in the start document).
    ``angle_field`` names the capture: the callback reads the angles from their file (on its worker thread, in
    their ``units``) and denoises every frame as the same scan stepped, far neighbours left out, no
    ``out_of_distribution``. Without it (before, the only way), a warning names the captured key, the neighbours
    come by order, 30-70 degrees away, and QC flags the frames."""
    from .fly_scan import ANGLE_KEY, as_fly_scan

    raw, _ = _golden_angle_scan(RE, tmp_path)
    fly = as_fly_scan(raw, tmp_path, units=units, per_degree=per_degree)
    stepped, _ = _denoised_projections(raw)
    flown, run = _denoised_projections(fly, angle_field=ANGLE_KEY)
    assert sorted(flown) == sorted(stepped) == list(range(1, 11)) and run.errors == []
    for seq, (frame, flags) in stepped.items():
        np.testing.assert_allclose(flown[seq][0], frame, atol=1e-5)
        assert flown[seq][1] == flags and "out_of_distribution" not in flags
    assert "warning" not in caplog.text.lower()
    blind, run = _denoised_projections(fly)
    assert run.errors == []
    assert f"with ['{ANGLE_KEY}'] written beside them" in caplog.text and "angle_field=" in caplog.text
    assert sum("out_of_distribution" in flags for _, flags in blind.values()) >= 5
    assert not np.allclose(blind[5][0], stepped[5][0], atol=1e-3)


def test_angles_in_a_file_that_cannot_be_read_are_noted_and_every_frame_is_denoised(RE, tmp_path):
    """The capture's file gone (or short of the rows announced): each frame is still denoised, its neighbours by
    order; the run's summary says how many frames' angles were not read, and why."""
    from .fly_scan import ANGLE_KEY, as_fly_scan

    raw, _ = _golden_angle_scan(RE, tmp_path, n=6)
    fly = as_fly_scan(raw, tmp_path)
    (tmp_path / "panda.h5").unlink()
    frames, run = _denoised_projections(fly, angle_field=ANGLE_KEY)
    assert sorted(frames) == list(range(1, 7))
    (note,) = run.errors
    assert note.startswith("the angles of ") and "were not read from their file" in note and "panda.h5" in note


def test_one_angle_field_for_fly_scans_leaves_step_scans_their_motors_angles(RE, tmp_path, caplog):
    """One ``angle_field`` for a beamline's fly scans leaves its step scans their motor's angles (the stepped golden
    scan is denoised as without it, and nothing is said); a fly scan whose capture has another data key (and no
    nominal ``angles``) gets a warning that names both."""
    from .fly_scan import as_fly_scan

    raw, _ = _golden_angle_scan(RE, tmp_path, n=6)
    plain, _ = _denoised_projections(raw)
    with_field, run = _denoised_projections(raw, angle_field="panda-inenc-2-val")
    assert run.errors == []
    for seq, (frame, flags) in plain.items():
        assert with_field[seq][1] == flags
        np.testing.assert_allclose(with_field[seq][0], frame, atol=1e-5)
    fly = [(n, {k: v for k, v in d.items() if k != "angles"} if n == "start" else d)
           for n, d in as_fly_scan(raw, tmp_path)]
    assert "angle" not in caplog.text
    _, run = _denoised_projections(fly, angle_field="panda-inenc-2-val")
    assert run.errors == []
    assert ("(angle_field 'panda-inenc-2-val' is no data key of it), but with ['panda-inenc-1-val'] written beside "
            "them" in caplog.text)


def test_a_stream_datum_of_thousands_of_captured_angles_gives_every_frame_its_angle():
    """A PandA flushed seldom (a fast camera: one StreamDatum of 6,000 rows) and then StreamDatums of a few rows:
    every frame's angle is found in its StreamDatum's rows (read once per StreamDatum), in the data key's units;
    a frame whose StreamDatum has not come has none."""
    from types import SimpleNamespace

    from bluesky_tomogan.callbacks.run_qc import RunQC
    from bluesky_tomogan.frame_roles import FrameRoles
    from bluesky_tomogan.qc import QCFeedback

    angles = np.linspace(0, np.pi, 6010)  # radians, as the data key's units say
    reads = []

    def read(start, stop):
        reads.append((start, stop))
        return angles[start:stop]

    descriptor = {"uid": "d", "name": "primary", "data_keys": {
        "det": {"shape": [1, 8, 8], "dtype": "array", "source": "", "external": "STREAM:"},
        "enc": {"shape": [1], "dtype": "number", "source": "", "external": "STREAM:", "units": "rad"}}}
    qc = RunQC(QCFeedback(), angle_field="enc")
    qc.start({"uid": "run", "time": 0.0})
    try:
        qc.take_angles(descriptor, FrameRoles(descriptor))
        for first, stop in ((0, 6000), (6000, 6004), (6004, 6010)):
            qc.locate_angles("primary", read, {"uid": f"sd{first}", "indices": {"start": first, "stop": stop},
                                               "seq_nums": {"start": first + 1, "stop": stop + 1}})
        found = [qc.angle_of(SimpleNamespace(stream=SimpleNamespace(raw_name="primary"), seq_num=s))
                 for s in range(1, 6011)]
        np.testing.assert_allclose(found, np.rad2deg(angles))
        assert sorted(reads) == [(0, 6000), (6000, 6004), (6004, 6010)]
        assert qc.angle_of(SimpleNamespace(stream=SimpleNamespace(raw_name="primary"), seq_num=6011)) is None
    finally:
        qc.close()


def test_a_captured_angle_that_is_not_a_number_is_not_waited_for(monkeypatch):
    """A capture's row read and found NaN (an encoder that lost count) is an answer: the frame has no angle, and
    the worker does not wait ``ANGLE_WAIT`` for one that will not come (it polls every millisecond while it waits)."""
    from types import SimpleNamespace

    from bluesky_tomogan.callbacks import run_qc
    from bluesky_tomogan.frame_roles import FrameRoles
    from bluesky_tomogan.qc import QCFeedback

    descriptor = {"uid": "d", "name": "primary", "data_keys": {
        "enc": {"shape": [1], "dtype": "number", "source": "", "external": "STREAM:"}}}
    qc = run_qc.RunQC(QCFeedback(), angle_field="enc")
    qc.start({"uid": "run", "time": 0.0})
    naps = []
    monkeypatch.setattr(run_qc.time, "sleep", lambda s: naps.append(s))
    try:
        qc.take_angles(descriptor, FrameRoles(descriptor))
        qc.locate_angles("primary", lambda a, b: np.array([10.0, np.nan, 12.0])[a:b],
                         {"uid": "sd", "indices": {"start": 0, "stop": 3}, "seq_nums": {"start": 1, "stop": 4}})
        frame = SimpleNamespace(stream=SimpleNamespace(raw_name="primary"), seq_num=2)
        assert qc.angle_of(frame, wait=60.0) is None and naps == []
        assert qc.angle_of(SimpleNamespace(stream=frame.stream, seq_num=3), wait=60.0) == 12.0
    finally:
        qc.close()


def test_the_gate_withholds_neighbours_the_rotation_has_moved_and_the_frame_comes_out_closer():
    """Session 72: a camera seeing the middle of a bead pack 1.8 fields of view across, 4-degree steps: its
    features far from the axis move 13 px a step, the nearest neighbours lie 0.26-0.28 from the frame by the gate's
    measure (views of the same sample inside the view: below 0.1). With the gate at 0.2 they are withheld and the
    denoised frame is closer to the noise-free one than with every neighbour (0.35, the gate before; 0.944 against
    0.874 mean SSIM in ``benchmarks/context_motion.py``)."""
    from bluesky_tomogan.devices import SimTomoDetector, SimTomoStage
    from bluesky_tomogan.inference import load_denoiser
    from bluesky_tomogan.metrics import ssim

    den = load_denoiser("tomogan-projection", backend="onnxruntime", precision="fp32")
    assert den.context_gate == DEFAULT_THRESHOLD == 0.2
    det = SimTomoDetector(name="det", stage=SimTomoStage(name="stage"), shape=(256, 256), seed=11, sample_width=1.8,
                          simulate_timing=False, dtype="float32")
    angles = 61.0 + 4.0 * np.arange(-2, 3)
    raw = np.stack([det.projection([a], 1000.0) for a in angles]).astype(np.float32)
    clean = 1000.0 * det.gain * np.exp(-det.sample.line_integrals(angles[2])) + det.model.dark_level
    assert context_distance(raw[1], raw[2]) > DEFAULT_THRESHOLD
    gated = ssim(clean, den.denoise_context(raw))
    den.context_gate, den.context_noise_ratio = 0.35, np.inf  # the gate before sessions 72 and 73
    assert ssim(clean, den.denoise_context(raw)) < gated - 0.02


def _inside_sample_views(photons: float, angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Views of a bead pack inside a 256 x 256 camera's view at ``angles``, and the noise-free middle one."""
    from bluesky_tomogan.devices import SimTomoDetector, SimTomoStage

    det = SimTomoDetector(name="det", stage=SimTomoStage(name="stage"), shape=(256, 256), seed=11,
                          simulate_timing=False, dtype="float32")
    raw = np.stack([det.projection([a], photons) for a in angles]).astype(np.float32)
    middle = angles[len(angles) // 2]
    return raw, photons * det.gain * np.exp(-det.sample.line_integrals(middle)) + det.model.dark_level


def test_the_change_to_noise_is_nil_for_the_same_view_and_grows_with_the_dose_for_a_turned_one():
    """Session 73: exposures of one view differ by their photon noise alone, at any dose; views 4 degrees apart
    differ by their moved features too, which the noise hides at 30 photons/pixel and not at 10,000. The noise is
    measured in time (second differences of three distinct frames in a row): a context of stand-ins has no measure
    (NaN), a frame under 128 x 128 pixels is not judged (0), a frame twice as bright is no neighbour (inf)."""
    for photons in (30.0, 10_000.0):
        same, _ = _inside_sample_views(photons, np.array([61.0, 61.0, 61.0]))
        assert np.all(np.abs(change_to_noise(same)) < 0.03)
    angles = 61.0 + 4.0 * np.arange(-2, 3)
    low, _ = _inside_sample_views(30.0, angles)
    high, _ = _inside_sample_views(10_000.0, angles)
    assert np.all(change_to_noise(low) < 0.2 * DEFAULT_NOISE_RATIO)
    ratios = change_to_noise(high)
    assert np.all(ratios[[1, 3]] > DEFAULT_NOISE_RATIO) and np.all(ratios[[0, 4]] > 4 * DEFAULT_NOISE_RATIO)
    assert context_distance(high[3], high[2]) < 0.1  # the structural distance alone cannot tell
    assert np.all(change_to_noise(high[:, :100, :100]) == 0.0)
    stand_ins = change_to_noise(high[[2, 2, 3]])
    assert stand_ins[1] == 0.0 and np.isnan(stand_ins[[0, 2]]).all()
    brighter = high.copy()
    brighter[3] *= 2.5
    assert change_to_noise(brighter)[3] == np.inf


def test_a_detectors_blur_does_not_pass_for_a_change():
    """Session 73: a camera whose blur (1.5 px) correlates the noise of neighbouring pixels, at 250 and 1000
    photons/pixel, steps of 0.94 degrees: the nearest neighbours' change stays within what the noise hides (a
    measure of the noise by its finest spatial scale alone takes blurred noise for change)."""
    for photons in (250.0, 1000.0):
        recipe = Recipe(domain="projection", size=128, photons=(photons, photons), max_attenuation=(0.4, 1.2),
                        frames_per_scan=5, n_angles=192, psf_sigma=(1.5, 1.5))
        pairs = simulate_pairs(recipe, 3, seed=90_100, workers=1)
        for scan in range(3):
            ratios = change_to_noise(pairs.ns[5 * scan:5 * scan + 5])
            assert np.all(ratios[[1, 3]] < DEFAULT_NOISE_RATIO), (photons, ratios)


def test_at_a_high_dose_the_gate_withholds_neighbours_whose_change_the_noise_does_not_hide():
    """Session 73: a bead pack inside the view at 4-degree steps. At 10,000 photons/pixel the neighbours' moved
    features cost more than their averaged noise gains: the gate withholds them and the frame comes out closer to
    the noise-free one (``benchmarks/context_motion.py``: 0.9950 against 0.9681 with them). At 100 photons the
    neighbours help, and are kept."""
    from bluesky_tomogan.inference import load_denoiser
    from bluesky_tomogan.metrics import ssim

    den = load_denoiser("tomogan-projection", backend="onnxruntime", precision="fp32")
    assert den.context_noise_ratio == DEFAULT_NOISE_RATIO
    angles = 61.0 + 4.0 * np.arange(-2, 3)
    raw, clean = _inside_sample_views(10_000.0, angles)
    gated = ssim(clean, den.denoise_context(raw))
    assert den.contexts_gated == 1
    den.context_noise_ratio = np.inf
    assert ssim(clean, den.denoise_context(raw)) < gated - 0.01
    den.context_noise_ratio = DEFAULT_NOISE_RATIO
    raw, _ = _inside_sample_views(100.0, angles)
    den.denoise_context(raw)
    assert den.contexts_gated == 1  # all four kept


def test_a_card_may_set_its_own_noise_ratio_and_a_model_without_a_gate_has_none(tmp_path):
    """The card's ``context_gate.noise_ratio`` where it has one; cards of gated models written before session 73
    get the default; a model without a gate keeps every neighbour."""
    from bluesky_tomogan import load_denoiser

    model = copy_of_shipped_model("tomogan-projection", tmp_path)
    card_path = model / "tomogan-projection.json"
    card = json.loads(card_path.read_text())
    load = {"backend": "onnxruntime", "precision": "fp32"}
    card["context_gate"] = {"threshold": DEFAULT_THRESHOLD}
    card_path.write_text(json.dumps(card))
    assert load_denoiser(str(model), **load).context_noise_ratio == DEFAULT_NOISE_RATIO
    card["context_gate"]["noise_ratio"] = 0.5
    card_path.write_text(json.dumps(card))
    assert load_denoiser(str(model), **load).context_noise_ratio == 0.5
    card.pop("context_gate")
    card_path.write_text(json.dumps(card))
    plain = load_denoiser(str(model), **load)
    assert plain.context_gate == plain.context_noise_ratio == np.inf
