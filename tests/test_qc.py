"""QC: metrics with known answers, the policy and its file, and flags that act on a real RunEngine."""

from __future__ import annotations

import functools
import itertools
import logging
import math
import threading
import time
from types import SimpleNamespace

import bluesky.plans as bp
import numpy as np
import pytest
from bluesky.suspenders import SuspendFloor
from bluesky.utils import RunEngineInterrupted
from bluesky_tiled_plugins import TiledWriter
from ophyd.sim import SynSignal

from bluesky_tomogan import TomoGANCallback
from bluesky_tomogan.callbacks.derived_stream import RoleState
from bluesky_tomogan.devices import QCMonitor, SimBeamCurrent, SimTomoDetector, SimTomoStage
from bluesky_tomogan.plans import qc_tomo_scan, tomo_scan
from bluesky_tomogan.qc import QCFeedback, QCPolicy, QCPolicyError, Rule
from bluesky_tomogan.qc.feedback import Verdict
from bluesky_tomogan.qc.metrics import (
    REGISTRATION_BIN,
    FrameMetrics,
    IntensityReference,
    PhotonTransfer,
    PreviousResidual,
    flat_noise_correlation,
    frame_metrics,
    large_scale_noise,
    motion_px,
    noise_sigma,
    registered_offset,
    registration_image,
    registration_noise,
    residual_metrics,
    residual_specks,
    rotation_allowance,
    shift_px,
    white_noise_variance,
)
from bluesky_tomogan.storage import frames_directory

from .keyed_scan import keyed_tomo_scan

# -- metrics with known answers ----------------------------------------------------------------


def ramp(shape=(128, 160)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (1000 + 2 * xx + yy).astype(np.float32)


def test_noise_sigma_of_gaussian_noise_on_a_ramp(rng):
    frame = ramp() + rng.normal(0, 10, ramp().shape).astype(np.float32)
    assert noise_sigma(frame) == pytest.approx(10, rel=0.05)
    assert noise_sigma(ramp()) == pytest.approx(0, abs=1e-3)  # smooth structure is not noise


def test_snr_saturation_dead_and_nonfinite_fractions(rng):
    frame = rng.poisson(400, (100, 100)).astype(np.uint16)
    frame[:10, 50:60] = 65535  # 1 % saturated, in a patch as light saturates (not a lone stuck row: below)
    frame[10:30, 10:20] = 0  # 2 % dead, in a block as a failed readout leaves them
    m = frame_metrics(frame, IntensityReference(), None, 65535)
    assert m.saturated_fraction == pytest.approx(0.01) and m.dead_fraction == pytest.approx(0.02)
    # A photon counter at 20 photons/pixel behind a sample absorbing 97 % reads zeros in over half
    # of the sample's pixels: photon statistics, not dead pixels (they almost never fill a 3x3 block)
    yy, xx = np.mgrid[:200, :200]
    low_dose = rng.poisson(np.where((xx - 100) ** 2 + (yy - 100) ** 2 < 80**2, 20 * np.exp(-3.5), 20))
    assert (low_dose == 0).mean() > 0.25
    assert frame_metrics(low_dose.astype(np.uint32), IntensityReference(), None, 2.0**32 - 1).dead_fraction < 0.05
    assert m.nonfinite_fraction == 0
    clean = rng.poisson(400, (100, 100)).astype(np.uint16)
    assert frame_metrics(clean, IntensityReference(), None, 65535).snr == pytest.approx(20, rel=0.1)
    nan = rng.normal(400, 20, (100, 100)).astype(np.float32)
    nan.flat[::50] = np.nan
    assert frame_metrics(nan, IntensityReference(), None, 65535).nonfinite_fraction == pytest.approx(0.02)


def test_nan_where_the_previous_frame_was_nan_is_the_detectors_mask_not_a_fault(rng):
    """A detector that marks pixels without data with NaN does so in every frame: with the previous
    frame's NaN known, those pixels are left out like masked ones; new NaN still count."""
    frame = rng.normal(400, 20, (100, 100)).astype(np.float32)
    frame[:, 40:42] = np.nan
    known = np.isnan(frame)
    m = frame_metrics(frame, IntensityReference(), None, 65535, known_nan=known)
    assert m.nonfinite_fraction == 0 and m.mean == pytest.approx(400, abs=2) and m.snr == pytest.approx(20, rel=0.1)
    frame[5, 5] = np.nan  # a new NaN beside the mask: a fault
    assert frame_metrics(frame, IntensityReference(), None, 65535, known_nan=known).nonfinite_fraction == 1e-4
    everywhere = np.full((100, 100), np.nan, np.float32)  # no data at all is never a mask
    assert frame_metrics(everywhere, IntensityReference(), None, 65535,
                         known_nan=np.ones((100, 100), bool)).nonfinite_fraction == 1.0


def test_masked_detector_pixels_are_neither_saturated_nor_noise(rng):
    """A photon counter writes 2**32 - 1 in module gaps and flagged pixels: not saturation (that would
    ask for a shorter exposure on every frame), not noise, not intensity."""
    clean = rng.poisson(400, (100, 100)).astype(np.uint32)
    gaps = clean.copy()
    gaps[:, 40:43] = np.iinfo(np.uint32).max  # a module gap, 3 % of the pixels
    ref = IntensityReference()
    ref.add(400.0)
    m, plain = frame_metrics(gaps, ref, None, QCPolicy().saturation_for(gaps.dtype)), frame_metrics(
        clean, ref, None, QCPolicy().saturation_for(clean.dtype))
    assert m.saturated_fraction == 0 and m.intensity_ratio == pytest.approx(plain.intensity_ratio, rel=0.01)
    assert m.noise_sigma == pytest.approx(plain.noise_sigma, rel=0.1) and m.snr == pytest.approx(20, rel=0.15)
    assert "saturated" not in QCPolicy().evaluate(m) and "noisy" not in QCPolicy().evaluate(m)
    dark = np.zeros_like(gaps)
    dark[:, 40:43] = np.iinfo(np.uint32).max
    assert "beam_lost" in QCPolicy().evaluate(frame_metrics(dark, ref, None, 2.0**32 - 1))  # gaps hide no beam loss
    # 16 bits: at the default level the top value may be a clipped reading, so it counts as saturated;
    # with the camera's real level given (a 12-bit camera), it is a mask again
    clipped = gaps.astype(np.uint16)
    clipped[:, 40:43] = 65535
    assert frame_metrics(clipped, ref, None, 65535).saturated_fraction == pytest.approx(0.03)
    assert frame_metrics(clipped, ref, None, 4095).saturated_fraction == 0


def test_a_camera_narrower_than_its_integer_type_saturates_at_its_own_top(rng):
    """A 12-bit camera in ``uint16`` reads 4095 where it saturates; with no level set, QC finds that top
    in the frame (a flat of readings at ``2**k - 1``), so an over-exposed frame is flagged ``saturated``
    (whose ``adjust`` shortens the exposure), while frames that merely reach such a value on a pixel or
    two, hot pixels at it, and a level the user set stay as they were."""
    from bluesky_tomogan.callbacks.run_qc import RunQC

    ref = IntensityReference()
    ref.add(2000.0)
    frame = rng.poisson(2000, (100, 100)).astype(np.uint16)
    over = frame.copy()
    over[:, :20] = 4095  # the open beam beside the sample, clipped: a fifth of the frame
    at_top = frame.copy()
    at_top.flat[rng.choice(frame.size, 30, replace=False)] = 4095  # hot pixels at the camera's top, alone
    at_top[50, 50] = 4095
    gaps = over.copy()
    gaps[:, 60:62] = 65535  # and a 16-bit photon counter's gap value: a mask, not a reading, for a 12-bit camera

    def saturated(f, **policy):
        qc = RunQC(QCFeedback(QCPolicy(**policy)))
        stream = SimpleNamespace(of={None: RoleState(reference=ref)}.get, shape=f.shape, field="cam",
                                 raw_name="primary")
        item = SimpleNamespace(stream=stream, frame=f, metrics=None, exposure_s=None, role=None)
        qc.measure(item)
        return item.metrics.saturated_fraction, "saturated" in QCPolicy(**policy).evaluate(item.metrics)

    assert saturated(over) == (pytest.approx(0.2), True)
    assert saturated(gaps) == (pytest.approx(0.2), True)
    assert saturated(frame) == (0.0, False) and saturated(at_top) == (0.0, False)
    assert saturated(over, saturation_level=65535) == (0.0, False)  # the user's level is the level
    assert saturated(over.astype(np.float32)) == (0.0, False)  # floats have no camera top to find
    assert frame_metrics(over, ref, None, 65535).saturated_fraction == 0  # only where asked (no level set)


def test_a_frame_with_no_intensities_leaves_the_beam_loss_reference_alone():
    """A frame masked everywhere has no mean: kept out of the reference, whose median a NaN would poison
    (no beam loss could be seen after it)."""
    from bluesky_tomogan.callbacks.run_qc import RunQC

    qc = RunQC(QCFeedback())
    stream = SimpleNamespace(of={None: RoleState()}.get, shape=(8, 8), field="cam", raw_name="primary")
    for value in (np.iinfo(np.uint32).max, 500, 500, 20):
        item = SimpleNamespace(stream=stream, frame=np.full((8, 8), value, np.uint32), metrics=None,
                               exposure_s=None, role=None)
        unusable = qc.measure(item)
    assert list(stream.of(None).reference.means) == [500.0, 500.0] and unusable == ["beam_lost"]


def test_registration_is_not_pinned_by_detector_gaps(rng):
    base = np.zeros((128, 128), np.float32)
    for _ in range(30):
        y, x = rng.integers(10, 118, 2)
        base[y - 4 : y + 4, x - 4 : x + 4] += rng.uniform(50, 200)
    frames = [np.rint(f + 100).astype(np.uint32) for f in (base, np.roll(base, (3, 4), axis=(0, 1)))]
    for f in frames:
        f[:, 60:64] = np.iinfo(np.uint32).max  # the same gap in both: it does not move with the sample
    assert shift_px(*[registration_image(f) for f in frames]) * REGISTRATION_BIN == pytest.approx(5.0, abs=1.0)


def test_intensity_ratio_against_the_running_reference_above_the_dark_offset():
    ref = IntensityReference()
    for _ in range(5):
        ref.add(500.0)
    frame = np.full((20, 20), 140.0, np.float32)
    assert frame_metrics(frame, ref, None, 65535).intensity_ratio == pytest.approx(0.28)
    assert frame_metrics(frame, ref, None, 65535, dark_level=100).intensity_ratio == pytest.approx(0.1)
    assert IntensityReference().ratio(7.0) == 1.0  # no reference yet: nothing to compare with


def test_all_zero_frame_is_dead_and_dark():
    ref = IntensityReference()
    ref.add(500.0)
    m = frame_metrics(np.zeros((32, 32), np.uint16), ref, None, 65535)
    assert m.dead_fraction == 1.0 and m.intensity_ratio == 0.0
    assert {"dead_pixels", "beam_lost"} <= set(QCPolicy().evaluate(m))


def test_registration_measures_a_known_shift(rng):
    base = np.zeros((128, 128), np.float32)
    for _ in range(30):
        y, x = rng.integers(10, 118, 2)
        base[y - 4 : y + 4, x - 4 : x + 4] += rng.uniform(50, 200)
    moved = np.roll(base, (3, 4), axis=(0, 1))
    assert shift_px(base, moved) == pytest.approx(5.0, abs=0.5)
    assert shift_px(base, base) == pytest.approx(0.0, abs=0.2)


@pytest.mark.parametrize("photons", [10, 25])
def test_low_dose_projections_register_and_a_slip_among_them_is_seen(tmp_path, photons):
    # At tens of photons per pixel the high spatial frequencies are noise alone. Weighed like the sample's,
    # they hid the match (most neighbouring pairs unregistered: a slip went unseen) or moved its peak
    # (`demo --photons 25`: shifts of 3-6 pixels on a sample standing still).
    det = SimTomoDetector(name="det", shape=(256, 256), directory=tmp_path, seed=3, simulate_timing=False)
    frames = [det.projection([30.0 + i], photons) for i in range(40)]
    det.sample = det.sample.moved(0.0, -6.0)  # slips 6 pixels up
    frames += [det.projection([70.0 + i], photons) for i in range(5)]
    images = [registration_image(f) for f in frames]
    sideways, motion = [], []
    for a, b in itertools.pairwise(images):
        down, right = registered_offset(a, b)
        motion.append(motion_px(down, right, rotation_allowance(sideways[-16:], 1.0, 256)))
        sideways.append(abs(right))
    assert not any(math.isnan(m) for m in motion)  # every pair registered
    slip = 39  # the pair of the last frame before the slip and the first after it
    assert motion[slip] == pytest.approx(6.0, abs=1.0)
    assert max(m for i, m in enumerate(motion) if i != slip) < 2.0  # well under the flag's 3 pixels


def test_registration_takes_the_photon_transfer_noise_of_a_blurring_camera_only(rng):
    image, metrics = rng.normal(100, 3, (64, 64)).astype(np.float32), FrameMetrics(camera_noise_sigma=8.0)
    blurring, white = PhotonTransfer(4.0, 1.0, noise_correlation=0.3), PhotonTransfer(4.0, 1.0, noise_correlation=0.01)
    assert registration_noise(image, metrics, blurring) == 8.0 / REGISTRATION_BIN
    assert registration_noise(image, metrics, white) == large_scale_noise(image) == pytest.approx(3.0, rel=0.05)
    assert registration_noise(image, metrics, None) == large_scale_noise(image)  # no flats: no curve
    assert registration_noise(image, FrameMetrics(), blurring) == large_scale_noise(image)  # darks not trusted


def test_the_large_scale_noise_of_a_blurring_camera_reads_more_of_it_than_noise_sigma(rng):
    from scipy.ndimage import gaussian_filter

    # White noise of sigma 4 blurred by a Gaussian keeps its power at large scales (the filter's gain at 0 is 1)
    # and loses it at small ones, where Immerkaer's filter looks. Binned 2x2 the noise is whiter: more of it is
    # seen, never more than there is.
    for blur in (0.4, 0.5, 0.6):
        image = gaussian_filter(rng.normal(0, 4, (256, 256)), blur).astype(np.float32)
        assert noise_sigma(image) * 1.1 < large_scale_noise(image) < 4.0
    white = rng.normal(0, 4, (256, 256)).astype(np.float32)
    assert large_scale_noise(white) == pytest.approx(noise_sigma(white), rel=0.05) == pytest.approx(4.0, rel=0.05)
    assert large_scale_noise(white[:5]) == noise_sigma(white[:5])  # too few rows to bin
    assert math.isnan(large_scale_noise(np.full((8, 8), np.nan, np.float32)))


def blurring_camera_slip(RE, denoiser, tmp_path, seed, n_darks_flats):
    """A 256x256 scan at 4-degree steps on a camera blurring by 0.8 pixel, 25 photons per pixel, ``n_darks_flats``
    darks and flats first; the sample slips 6 pixels up after the 16th projection. The derived stream's
    ``motion_px`` and flags."""
    stage = SimTomoStage(name="stage")
    det = SimTomoDetector(name="det", stage=stage, shape=(256, 256), directory=tmp_path, seed=seed,
                          simulate_timing=False, blur=0.8)
    det.exposure_time.put(0.1)
    det.photon_flux.put(25 / 0.1)
    cb, docs = TomoGANCallback(denoiser, streams=["primary"]), []
    cb.subscribe(lambda name, doc: docs.append((name, doc)))
    RE.subscribe(cb)
    primary, events = set(), itertools.count(1)

    def slip(name, doc):
        if name == "descriptor" and doc["name"] == "primary":
            primary.add(doc["uid"])
        if name == "event" and doc["descriptor"] in primary and next(events) == 16:
            det.sample = det.sample.moved(0.0, -6.0)

    RE.subscribe(slip)
    RE(tomo_scan(det, stage, list(30.0 + 4.0 * np.arange(19)), n_darks=n_darks_flats, n_flats=n_darks_flats))
    return column(docs, "det_image_qc_motion_px"), column(docs, "det_image_qc_flags")


@pytest.mark.parametrize("seed", [6, 7, 9])
def test_a_blurring_cameras_noise_from_its_flats_keeps_low_dose_registration_honest(RE, denoiser, tmp_path, seed):
    # A camera's blur takes the high frequencies out of its noise, where Immerkaer's noise_sigma looks: it reads
    # the noise low, and frequencies where noise is all there is kept their weight in the registration. The
    # photon transfer curve from the run's darks and flats gives the noise at large scales. (With noise_sigma
    # alone these scans read 1.2-1.8 px of motion on a sample standing still, and the slip 5.2-7.4.)
    motion, flags = blurring_camera_slip(RE, denoiser, tmp_path, seed, 2)
    assert len(flags) == 19 and [i for i, f in enumerate(flags) if "motion" in f] == [16], motion
    assert motion[16] == pytest.approx(6.0, abs=0.5)
    assert max(m for i, m in enumerate(motion) if i not in (0, 16)) < 1.0


@pytest.mark.parametrize("seed", [6, 7, 9])
def test_a_blurring_camera_without_flats_registers_on_its_noise_at_large_scales(RE, denoiser, tmp_path, seed):
    # Without darks and flats there is no photon transfer curve: large_scale_noise reads the blurred noise from
    # the image binned 2x2 again, where it is whiter, and more of it than noise_sigma does. (With noise_sigma
    # 4-6 of the 17 pairs of these scans read more than 1 px of motion on a sample standing still, up to 2.8.)
    motion, flags = blurring_camera_slip(RE, denoiser, tmp_path, seed, 0)
    assert len(flags) == 19 and [i for i, f in enumerate(flags) if "motion" in f] == [16], motion
    assert motion[16] == pytest.approx(6.0, abs=1.1)
    assert sum(m > 1.0 for i, m in enumerate(motion) if i not in (0, 16)) <= 1, motion


def test_residual_correlation_tells_removed_noise_from_removed_structure(rng):
    structure = ramp((128, 128)) + 300 * (np.indices((128, 128)).sum(0) // 16 % 2)
    noise = rng.normal(0, 10, structure.shape).astype(np.float32)
    good = residual_metrics(structure + noise, structure, FrameMetrics())  # removed exactly the noise
    assert abs(good.residual_correlation) < 0.05 and good.removed_sigma == pytest.approx(10, rel=0.05)
    assert good.denoised_noise_sigma == pytest.approx(noise_sigma(structure))  # no noise left beyond the edges
    from scipy.ndimage import uniform_filter

    blurred = uniform_filter(structure, 9)  # a "denoiser" that also removes the edges
    bad = residual_metrics(structure + noise, blurred, FrameMetrics())
    assert bad.residual_correlation > QCPolicy().rules["out_of_distribution"].threshold


def test_a_residual_that_repeats_in_the_next_frame_is_signal_even_when_it_is_white(rng):
    """Photon noise is new in every frame; a fine texture the frames share is not, however white it looks
    (a real synchrotron camera's projections: the denoiser flattened a 5 % pixel-scale texture, spatial
    correlation -0.01, repeat 0.99)."""
    structure = ramp((96, 96))
    texture = rng.normal(0, 30, structure.shape).astype(np.float32)  # white, the same in every frame
    frames = [structure + texture + rng.normal(0, 10, structure.shape).astype(np.float32) for _ in range(3)]

    def measured(denoised):
        previous = PreviousResidual()  # as each derived stream keeps one
        return [residual_metrics(frame, denoised, FrameMetrics(), previous=previous) for frame in frames], previous

    (keeps, _), (flattens, last) = measured(structure + texture), measured(structure)
    threshold = QCPolicy().rules["signal_removed"].threshold
    assert math.isnan(keeps[0].residual_repeat)  # a stream's first frame has nothing to repeat
    assert all(abs(m.residual_repeat) < 0.1 for m in keeps[1:])  # removed exactly the noise
    assert all(m.residual_repeat > threshold for m in flattens[1:])  # removed the texture too
    assert all(abs(m.residual_correlation) < 0.05 for m in flattens)  # which lag-1 correlation cannot see
    other = FrameMetrics()
    residual_metrics(frames[0][:50], structure[:50], other, previous=last)
    assert math.isnan(other.residual_repeat)  # a frame of another shape repeats nothing


def test_the_noise_correlation_of_two_flats_is_the_cameras_blur_whatever_their_intensity(rng):
    from scipy.ndimage import gaussian_filter

    profile = 900 + 300 * np.cos(np.indices((256, 256))[1] / 40.0)  # a beam's profile, the same in both

    def flat(scale, sigma):
        return gaussian_filter(rng.poisson(profile * scale).astype(np.float32), sigma) if sigma else \
            rng.poisson(profile * scale).astype(np.float32)

    assert abs(flat_noise_correlation(flat(1.0, 0), flat(1.0, 0))) < 0.02  # white noise
    # photon noise blurred by a Gaussian of sigma s correlates exp(-1 / (4 s**2)) with its neighbour
    for sigma in (0.7, 1.0):
        measured = flat_noise_correlation(flat(1.03, sigma), flat(1.0, sigma))  # the ring current moved 3 %
        assert measured == pytest.approx(math.exp(-1 / (4 * sigma**2)), abs=0.03)
    with_zingers = flat(1.0, 1.0)
    with_zingers[rng.random(with_zingers.shape) < 1e-3] += 20000
    assert flat_noise_correlation(with_zingers, flat(1.0, 1.0)) == pytest.approx(math.exp(-0.25), abs=0.05)
    gapped = np.clip(flat(1.0, 1.0), 0, 60000).astype(np.uint16)
    gapped[:, 100:104] = 65535  # a photon counter's gap between modules: no data
    assert flat_noise_correlation(gapped, np.clip(flat(1.0, 1.0), 0, 60000).astype(np.uint16)) == \
        pytest.approx(math.exp(-0.25), abs=0.04)
    assert math.isnan(flat_noise_correlation(flat(1.0, 0), flat(1.0, 0)[:128]))  # not a pair
    assert math.isnan(flat_noise_correlation(np.zeros((64, 64)), np.zeros((64, 64))))  # no light


def camera_scan(RE, denoiser, tmp_path, photons, *, blur=0.0, n_darks=1, n_flats=3, angles=6, camera=None,
                streams=("primary",)):
    """The documents of a ``tomo_scan`` (``angles`` projections 0.5 degrees apart) of a 128x128 simulated camera
    with a blur of ``blur`` pixel at ``photons`` per pixel of open beam, its ``streams`` denoised; ``camera``
    (optional) changes the detector first."""
    stage = SimTomoStage(name="stage")
    det = SimTomoDetector(name="det", stage=stage, shape=(128, 128), directory=tmp_path, seed=3,
                          simulate_timing=False, blur=blur)
    if camera is not None:
        camera(det)
    det.exposure_time.put(0.1)
    det.photon_flux.put(photons / 0.1)
    cb, docs = TomoGANCallback(denoiser, streams=list(streams)), []
    cb.subscribe(lambda name, doc: docs.append((name, doc)))
    token = RE.subscribe(cb)
    RE(tomo_scan(det, stage, [0.5 * i for i in range(angles)], n_darks=n_darks, n_flats=n_flats))
    RE.unsubscribe(token)
    return docs


def test_the_white_noise_variance_of_two_flats_is_their_photons_whatever_the_cameras_blur(rng):
    """A blur spreads each photon's noise over neighbouring pixels: their own variance falls (what Immerkaer's
    ``noise_sigma`` reads), the noise's power at large scales does not. Two flats tell it per camera, two
    darks its read noise; zingers and pixels without data are left out."""
    from scipy.ndimage import gaussian_filter

    profile = 900 + 300 * np.cos(np.indices((256, 256))[1] / 40.0)  # a beam's profile, the same in both
    photons = float(profile.mean())

    def flat(scale, sigma, dark=100.0):
        counts = rng.poisson(profile * scale).astype(np.float32)
        return (gaussian_filter(counts, sigma) if sigma else counts) + np.float32(dark)

    def median_of_pairs(make, offset=100.0):  # as a run's QC takes it: one pair scatters by about 5 %
        return float(np.median([white_noise_variance(make(1.0), make(1.03), offset) for _ in range(5)]))

    for sigma in (0.0, 0.8, 1.2):  # (the ring current moved 3 % between the two flats of each pair)
        assert median_of_pairs(functools.partial(flat, sigma=sigma)) == pytest.approx(photons, rel=0.08)
        if sigma:  # what the pixels show of it: a fraction
            assert noise_sigma(flat(1.0, sigma)) ** 2 < 0.25 * photons

    def with_zingers(scale):
        frame = flat(scale, 1.0)
        frame[rng.random(frame.shape) < 1e-3] += 20000
        return frame

    def gapped(scale):
        frame = np.clip(flat(scale, 1.0), 0, 60000).astype(np.uint16)
        frame[:, 100:104] = 65535  # a photon counter's gap between modules: no data
        return frame

    assert median_of_pairs(with_zingers) == pytest.approx(photons, rel=0.08)
    assert median_of_pairs(gapped) == pytest.approx(photons, rel=0.08)
    read = median_of_pairs(lambda _: np.float32(100) + rng.normal(0, 2.0, (256, 256)).astype(np.float32), None)
    assert read == pytest.approx(4.0, rel=0.08)  # two darks: the read noise, 2 counts
    darks = [np.float32(100) + rng.normal(0, 2.0, (64, 64)).astype(np.float32) for _ in range(2)]
    assert math.isnan(white_noise_variance(darks[0], darks[1], 100.0))  # no light above the offset to scale by
    assert math.isnan(white_noise_variance(darks[0], darks[1][:32]))  # not a pair


def test_a_photon_transfer_curve_is_the_read_noise_plus_the_photons():
    curve = PhotonTransfer.from_levels(flat_signal=1000.0, flat_variance=1004.0, read_variance=4.0,
                                       noise_correlation=0.6)
    assert curve is not None and curve.gain == pytest.approx(1.0) and curve.blurs
    assert curve.noise_sigma(21.0) == pytest.approx(5.0) and curve.noise_sigma(-3.0) == pytest.approx(2.0)
    assert not PhotonTransfer.from_levels(1000.0, 1004.0, 4.0, 0.01).blurs  # white noise
    assert not PhotonTransfer.from_levels(1000.0, 1004.0, 4.0).blurs  # not known: as white
    assert PhotonTransfer.from_levels(0.0, 10.0, 4.0) is None  # flats no brighter than the darks
    assert PhotonTransfer.from_levels(1000.0, 3.0, 4.0) is None  # flats no noisier
    assert PhotonTransfer.from_levels(1000.0, math.nan, 4.0) is None


@pytest.mark.parametrize("blur", [0.0, 0.8])
def test_a_blurring_cameras_low_dose_frames_are_noisy_as_a_white_cameras_are(RE, denoiser, tmp_path, blur):
    """Immerkaer's ``noise_sigma`` reads little more than the read noise on a camera whose scintillator blurs (2.0
    counts of 4.7 at 40 photons per pixel): its SNR came out twice too high, and a low-dose scan was never
    ``noisy``. The run's flats and darks give the camera's photon transfer curve, and the SNR its noise."""

    low, high = (camera_scan(RE, denoiser, tmp_path, photons, blur=blur, n_darks=3) for photons in (40, 1000))
    assert all("noisy" in f for f in column(low, "det_image_qc_flags"))
    assert not any("noisy" in f for f in column(high, "det_image_qc_flags"))
    snr = column(low, "det_image_qc_snr")
    assert len(snr) == 6 and all(2.5 < v < 5 for v in snr), snr
    camera = column(low, "det_image_qc_camera_noise_sigma")  # the curve's noise at each frame's mean
    assert all(4.0 < v < 6.0 for v in camera), camera
    if blur:
        assert all(n < 0.6 * c for n, c in zip(column(low, "det_image_qc_noise_sigma"), camera, strict=True))


@pytest.mark.parametrize("blur", [0.0, 0.8])
def test_a_blurring_cameras_noise_is_not_taken_for_structure_and_a_denoiser_out_of_its_depth_still_is(
        RE, denoiser, tmp_path, blur):
    # A scintillator spreads light over neighbouring pixels: the residual of noise alone correlates (0.6 here),
    # and before, every frame of such a camera was flagged out_of_distribution. The run's flats say how much.
    good, bad = (camera_scan(RE, den, tmp_path, 1000, blur=blur) for den in (denoiser, Boxed(denoiser)))
    noise = column(good, "det_image_qc_noise_correlation")
    assert len(noise) == 6 and all(n == pytest.approx(noise[0]) for n in noise)  # from the flats, before
    assert noise[0] == (pytest.approx(0.0, abs=0.03) if blur == 0 else pytest.approx(0.64, abs=0.06))
    assert (min(column(good, "det_image_qc_residual_correlation")) > 0.4) == (blur > 0)
    assert not any("out_of_distribution" in f for f in column(good, "det_image_qc_flags"))
    assert all("out_of_distribution" in f for f in column(bad, "det_image_qc_flags"))


def test_a_cameras_despiked_specks_leave_the_residual_metrics_as_without_them(rng):
    """Hot and dead pixels (1 %, some side by side), which the despike takes out, are thousands of counts in
    raw minus denoised: counted, they made every residual look white (a blurring denoiser on such a camera read
    ``residual_correlation`` 0.00, against 0.38 without the defects: ``benchmarks/residual_specks.py``)."""
    from scipy.ndimage import uniform_filter

    structure = ramp((128, 128)) + 300 * (np.indices((128, 128)).sum(0) // 16 % 2)
    raw = structure + rng.normal(0, 10, structure.shape).astype(np.float32)
    defective = raw.copy()
    defects = rng.random(raw.shape)
    defective[defects < 0.006] = 65535  # hot
    defective[defects > 0.996] = 0  # dead
    defective[60, 60:63] = 65535  # three side by side
    for denoised in (structure, uniform_filter(structure, 9)):  # the noise removed; the edges removed too
        plain = residual_metrics(raw, denoised, FrameMetrics())
        specks = residual_metrics(defective, denoised, FrameMetrics())
        assert specks.residual_correlation == pytest.approx(plain.residual_correlation, abs=0.01)
        assert specks.removed_sigma == pytest.approx(plain.removed_sigma, rel=0.02)
    assert specks.residual_correlation > QCPolicy().rules["out_of_distribution"].threshold
    edges = np.flatnonzero(np.abs(raw - uniform_filter(structure, 9)) > 80)
    assert edges.size and residual_specks(raw - uniform_filter(structure, 9)).size < edges.size / 20  # runs stay


def test_residual_correlation_does_not_shrink_with_pixels_without_data(rng):
    """NaN-masked pixels (kept NaN in the derived frame) are left out of the lag-1 pairs and of
    their count alike: a detector's mask does not make a structured residual look like noise."""
    from scipy.ndimage import gaussian_filter

    residual = gaussian_filter(rng.normal(0, 10, (128, 128)), 1.5).astype(np.float32)
    whole = residual_metrics(residual, np.zeros_like(residual), FrameMetrics()).residual_correlation
    holed = residual.copy()
    holed[rng.random(holed.shape) < 0.3] = np.nan  # 30 % of the pixels: half of the pairs
    masked = residual_metrics(holed, np.zeros_like(holed), FrameMetrics()).residual_correlation
    assert whole > 0.5 and masked == pytest.approx(whole, abs=0.03)


# -- the policy -------------------------------------------------------------------------------


def test_default_policy_and_rules_in_code():
    policy = QCPolicy({"motion": Rule(1.5, "pause")})
    assert policy.rules["motion"] == Rule(1.5, "pause") and policy.rules["beam_lost"].action == "suspend"
    m = FrameMetrics(shift_px=2.0, motion_px=2.0, snr=30, intensity_ratio=1.0)
    assert policy.evaluate(m) == {"motion": "pause"}
    assert QCPolicy().evaluate(m) == {}
    with pytest.raises(QCPolicyError, match="unknown action 'explode'"):
        Rule(1.0, "explode")  # type: ignore[arg-type]
    with pytest.raises(QCPolicyError, match="unknown QC flags"):
        QCPolicy({"sunspots": Rule(1.0, "warn")})


def test_policy_file_changes_only_what_it_sets(tmp_path):
    path = tmp_path / "qc.toml"
    path.write_text('[motion]\nthreshold = 1.0\naction = "pause"\n\n[options]\ndark_level = 100\n')
    policy = QCPolicy.from_file(path)
    assert policy.rules["motion"] == Rule(1.0, "pause") and policy.dark_level == 100
    assert policy.rules["saturated"] == QCPolicy().rules["saturated"]


@pytest.mark.parametrize("text, message", [
    ('[motion]\nthreshold = 1.0\naction = "explode"\n', r"qc.toml:3: 'motion.action': unknown action 'explode'"),
    ('[motion]\nthreshold = "big"\n', r"qc.toml:2: 'motion.threshold': threshold must be a number"),
    ('\n[sunspots]\naction = "warn"\n', r"qc.toml:2: unknown QC flag \[sunspots\]"),
    ('[motion]\nthreshold = 1.0\nwhen = "always"\n', r"qc.toml:3: unknown key 'motion.when'"),
    ('[options]\nsaturation = 4095\n', r"qc.toml:2: unknown option 'options.saturation'"),
    ('[motion\nthreshold = 1.0\n', r"qc.toml: not valid TOML: .*line 1"),
])
def test_a_malformed_policy_file_names_the_key_and_line(tmp_path, text, message):
    path = tmp_path / "qc.toml"
    path.write_text(text)
    with pytest.raises(QCPolicyError, match=message):
        QCPolicy.from_file(path)


# -- flags in the derived stream, with a plain plan ------------------------------------------


def scripted_camera(frames):
    """An ophyd.sim camera that returns ``frames`` in order (inline arrays), then repeats the last."""
    it = itertools.chain(frames[:1], frames, itertools.repeat(frames[-1]))  # SynSignal calls func once when made
    return SynSignal(func=lambda: next(it), name="cam")


def collect(RE, cb):
    docs = []
    cb.subscribe(lambda name, doc: docs.append((name, doc)))
    RE.subscribe(cb)
    return docs


def column(docs, key):
    return [v for n, d in docs if n == "event_page" and key in d["data"] for v in d["data"][key]]


def stream_column(docs, stream, key):
    """Column ``key`` of the (derived) stream named ``stream``, over all its event pages."""
    names = {d["uid"]: d["name"] for n, d in docs if n == "descriptor"}
    return [v for n, d in docs if n == "event_page" and names[d["descriptor"]] == stream for v in d["data"][key]]


def test_nan_zero_and_dead_frames_are_flagged_and_kept_by_a_plain_plan(RE, denoiser, rng):
    good = [rng.poisson(500, (32, 40)).astype(np.float32) for _ in range(7)]
    nan, zero, dead = good[2].copy(), np.zeros((32, 40), np.float32), good[5].copy()
    nan[::4, ::4] = np.nan
    dead[:20] = 0
    frames = [good[0], good[1], nan, zero, good[4], dead, good[6]]
    cb = TomoGANCallback(denoiser)
    docs = collect(RE, cb)
    RE(bp.count([scripted_camera(frames)], num=7))
    flags = column(docs, "cam_qc_flags")
    assert len(flags) == 7 and RE.state == "idle"
    assert "nonfinite" in flags[2] and {"beam_lost", "dead_pixels"} <= set(flags[3].split(","))
    assert "dead_pixels" in flags[5]
    assert [flags[i] for i in (0, 1, 4, 6)] == ["", "", "", ""]
    errors = column(docs, "cam_qc_error")
    assert errors[3].startswith("not denoised: unusable frame") and errors[4] == ""
    desc = next(d for n, d in docs if n == "descriptor" and d["name"] == "denoised")
    assert desc["data_keys"]["cam_qc_shift_px"]["units"] == "pixel"
    assert desc["data_keys"]["cam_qc_latency_s"]["units"] == "s"


class Flattening:
    """A denoiser that smooths every pixel-scale detail away (a 5x5 box over the real model's output), as
    a network trained without any fine texture does: what the flag is for."""

    def __init__(self, inner):
        self.inner, self.depth = inner, inner.depth

    def denoise_context(self, context):
        from scipy.ndimage import uniform_filter

        return uniform_filter(self.inner.denoise_context(context), 5, mode="nearest")

    def provenance(self):
        return self.inner.provenance()


def textured_plain_and_hot_frames(rng):
    """Five frames that share a fine pixel texture (10 % of the signal, twice its photon noise), five
    plain ones and five with hot pixels (1 %, the same in every frame), 64x80 at 500 photons."""
    texture = 1 + 0.1 * rng.standard_normal((64, 80))
    textured = [rng.poisson(500 * texture).astype(np.float32) for _ in range(5)]
    plain = [rng.poisson(500, (64, 80)).astype(np.float32) for _ in range(5)]
    hot = np.where(rng.random((64, 80)) < 0.01, np.float32(1500), np.float32(0))
    hot_pixels = [rng.poisson(500, (64, 80)).astype(np.float32) + hot for _ in range(5)]
    return textured + plain + hot_pixels


class Boxed(Flattening):
    """A denoiser out of its depth: a 9x9 box over the real model's output, which removes edges."""

    def denoise_context(self, context):
        from scipy.ndimage import uniform_filter

        return uniform_filter(self.inner.denoise_context(context), 9, mode="nearest")


def test_a_detector_texture_the_denoiser_flattens_is_flagged_as_signal_removed(RE, denoiser, rng):
    """Each textured frame after the first says that the texture went; plain frames say nothing, and
    nor do frames with hot pixels, which the despike takes out of each."""
    frames = textured_plain_and_hot_frames(rng)
    cb = TomoGANCallback(Flattening(denoiser))
    docs = collect(RE, cb)
    RE(bp.count([scripted_camera(frames)], num=15))
    flags, repeats = column(docs, "cam_qc_flags"), column(docs, "cam_qc_residual_repeat")
    assert all("signal_removed" in f for f in flags[1:5]) and math.isnan(repeats[0])
    assert all(r > 0.5 for r in repeats[1:5])
    assert not any("signal_removed" in f for f in flags[6:]) and all(abs(r) < 0.2 for r in repeats[6:])
    desc = next(d for n, d in docs if n == "descriptor" and d["name"] == "denoised")
    assert desc["data_keys"]["cam_qc_residual_repeat"]["units"] == ""


@pytest.mark.parametrize("pattern_of", ["camera", "camera with gaps", "sample"])
def test_a_cameras_fixed_pattern_in_its_flats_is_no_signal_removed_and_a_samples_texture_still_is(
        RE, denoiser, tmp_path, pattern_of):
    """A scintillator's grain, a 2 % pixel gain pattern, is in every frame, flats included: on well-exposed frames
    (20,000 photons per pixel, photon noise 0.7 %) it outweighs the noise, the denoiser removes it, and QC
    flagged ``signal_removed`` on 9 of 14 frames. The run's flats show it, so it is the camera's: left out of the
    residual's repeat, also where the detector has gaps between its modules (columns without data). The same
    pattern in the sample (not in the flats) is still flagged."""
    def grainy(det):
        pattern = (1 + 0.02 * np.random.default_rng(5).standard_normal(det.gain.shape)).astype(np.float32)
        if pattern_of.startswith("camera"):
            det.gain = det.gain * pattern
            if pattern_of == "camera with gaps":
                det.hot_map[:, 60:63] = True  # read at the type's top in every frame: no data
        else:
            attenuation = det._attenuation
            det._attenuation = lambda angle: attenuation(angle) * pattern

    docs = camera_scan(RE, denoiser, tmp_path, 20000, n_darks=3, n_flats=10, angles=8, camera=grainy,
                       streams=("primary", "flat"))
    rows = functools.partial(stream_column, docs)
    flags, repeats = rows("denoised", "det_image_qc_flags"), rows("denoised", "det_image_qc_residual_repeat")
    assert len(flags) == 8 and math.isnan(repeats[0])
    if pattern_of.startswith("camera"):
        assert not any("signal_removed" in f for f in flags) and all(r < 0.5 for r in repeats[1:]), repeats
    else:
        assert all("signal_removed" in f for f in flags[1:]) and all(r > 0.5 for r in repeats[1:]), repeats
    # the flats, denoised too: each one's residual is fitted by the pattern of the others (its own noise is not in it)
    flat_repeats = rows("flat_denoised", "det_image_qc_residual_repeat")
    assert len(flat_repeats) == 10 and all(abs(r) < 0.5 for r in flat_repeats[1:]), flat_repeats
    assert not any("signal_removed" in f for f in rows("flat_denoised", "det_image_qc_flags"))


def test_a_flat_field_that_moves_is_no_sample_motion(RE, denoiser, tmp_path):
    # Flats are registered among themselves (shift_px), but no sample is in the beam to move: the beam's
    # profile, with the shadows of specks on a window in it, drifting 5 rows per flat is no `motion`.
    def drifting_beam(det):
        project, flats = det.projection, itertools.count()
        specks = np.ones(det.gain.shape, np.float32)
        for y, x in np.random.default_rng(5).integers(8, 120, (30, 2)):
            specks[y - 2 : y + 2, x - 2 : x + 2] = 0.7
        beam = det.gain * specks

        def projection(angles, photons, sample_in=True, **kwargs):
            if sample_in or not photons:
                return project(angles, photons, sample_in, **kwargs)
            gain, det.gain = det.gain, np.roll(beam, 5 * next(flats), axis=0)
            try:
                return project(angles, photons, sample_in, **kwargs)
            finally:
                det.gain = gain

        det.projection = projection

    docs = camera_scan(RE, denoiser, tmp_path, 500, n_darks=2, n_flats=6, angles=4, camera=drifting_beam,
                       streams=("primary", "flat", "dark"))
    rows = functools.partial(stream_column, docs)
    shifts = rows("flat_denoised", "det_image_qc_shift_px")
    assert len(shifts) == 6 and all(s == pytest.approx(5.0, abs=1.0) for s in shifts[1:]), shifts
    for stream in ("flat_denoised", "dark_denoised"):
        assert all(math.isnan(m) for m in rows(stream, "det_image_qc_motion_px"))
        assert not any("motion" in f for f in rows(stream, "det_image_qc_flags"))
    assert not any("motion" in f for f in rows("denoised", "det_image_qc_flags"))


def test_motion_is_flagged_with_the_measured_shift(RE, denoiser, tmp_path):
    det = SimTomoDetector(name="det", stage=SimTomoStage(name="stage"), shape=(64, 96), directory=tmp_path,
                          simulate_timing=False)
    cb = TomoGANCallback(denoiser)
    docs = collect(RE, cb)
    RE.subscribe(lambda name, doc: det.inject_fault("motion", pixels=6.0)
                 if name == "event" and doc["seq_num"] == 3 else None)
    RE(bp.count([det], num=6))
    flags, shifts = column(docs, "det_image_qc_flags"), column(docs, "det_image_qc_shift_px")
    moved = [i for i, f in enumerate(flags) if "motion" in f]
    assert moved == [3]  # frame 4 (index 3) is the first after the slip
    assert shifts[3] == pytest.approx(6.0, abs=0.7)
    assert all(s < 1.0 for i, s in enumerate(shifts) if i != 3 and not math.isnan(s))


@pytest.mark.parametrize("zingers", [1e-3, 1e-2])
def test_zingers_are_neither_motion_nor_noise_and_a_slip_among_them_is_seen(RE, denoiser, tmp_path, zingers):
    # Phase correlation weighs every spatial frequency alike: before the specks were taken out of the
    # registration image, frames of a sample standing still matched wherever two pairs of zingers lay
    # equally far apart (motion on every frame), and the zingers' responses doubled noise_sigma.
    def scan(rate: float) -> list:
        det = SimTomoDetector(name="det", stage=SimTomoStage(name="stage"), shape=(128, 128),
                              directory=tmp_path, simulate_timing=False, zingers=rate)
        det.exposure_time.put(0.1)
        det.photon_flux.put(5000.0)
        cb, docs = TomoGANCallback(denoiser), []
        cb.subscribe(lambda name, doc: docs.append((name, doc)))
        tokens = [RE.subscribe(cb), RE.subscribe(lambda name, doc: det.inject_fault("motion", pixels=6.0)
                                                 if name == "event" and doc["seq_num"] == 5 else None)]
        RE(bp.count([det], num=8))
        for token in tokens:
            RE.unsubscribe(token)
        return docs

    with_zingers, without = scan(zingers), scan(0.0)
    flags, shifts = column(with_zingers, "det_image_qc_flags"), column(with_zingers, "det_image_qc_shift_px")
    assert [i for i, f in enumerate(flags) if f] == [5]  # the first frame after the slip, nothing else
    assert "motion" in flags[5] and shifts[5] == pytest.approx(6.0, abs=0.7)
    assert all(s < 1.0 for i, s in enumerate(shifts) if i != 5 and not math.isnan(s))
    noise, plain = column(with_zingers, "det_image_qc_noise_sigma"), column(without, "det_image_qc_noise_sigma")
    assert noise == pytest.approx(plain, rel=0.05)


def test_rotation_allowance_learns_what_rotation_does_on_the_scan():
    # no history: half of what rotation moves a point at the frame's edge, nothing without an angle
    assert rotation_allowance([], 2.0, 512) == pytest.approx(0.5 * 256 * math.radians(2.0))
    assert rotation_allowance([], None, 512) == 0.0
    assert rotation_allowance([3.0, 2.0, 4.0, 3.5], 0.0, 512) == 0.0  # a re-acquired angle does not rotate
    # four or more recent sideways shifts: three times their median, a slip among them does not count
    assert rotation_allowance([1.0, 2.0, 1.5, 6.0, 1.2], 2.0, 512) == pytest.approx(3 * 1.5)
    assert motion_px(4.0, 3.0, allowance=5.0) == pytest.approx(4.0)  # the vertical part always counts
    assert motion_px(0.0, -7.0, allowance=5.0) == pytest.approx(2.0)
    assert math.isnan(motion_px(math.nan, math.nan, allowance=1.0))  # no match: no motion measured


def in_radians(cb, axis="stage_theta"):
    """``cb`` behind a stage that reports its angle in radians (its data key's ``units``, as an EPICS motor's EGU)."""
    def convert(name, doc):
        if name == "descriptor" and axis in doc["data_keys"]:
            doc = dict(doc, data_keys=doc["data_keys"] | {axis: dict(doc["data_keys"][axis], units="rad")})
        elif name == "event" and axis in doc["data"]:
            doc = dict(doc, data=dict(doc["data"], **{axis: math.radians(doc["data"][axis])}))
        return cb(name, doc)
    return convert


def without_angles(cb, axis="stage_theta"):
    """``cb`` behind a fly scan without position capture: no stream records the angle, the start document keeps the
    nominal ``angles`` (as ``tomo_fly_scan`` writes them)."""
    def strip(name, doc):
        if name == "descriptor" and axis in doc["data_keys"]:
            doc = dict(doc, data_keys={k: v for k, v in doc["data_keys"].items() if not k.startswith(axis)},
                       object_keys={k: [f for f in v if not f.startswith(axis)] for k, v in doc["object_keys"].items()})
        elif name == "event" and axis in doc["data"]:
            doc = dict(doc, data={k: v for k, v in doc["data"].items() if not k.startswith(axis)},
                       timestamps={k: v for k, v in doc["timestamps"].items() if not k.startswith(axis)})
        return cb(name, doc)
    return strip


@pytest.mark.parametrize("exposures, units", [(1, "deg"), (3, "deg"), (1, "rad"), (1, "nominal")])
def test_rotation_at_coarse_steps_is_not_motion_but_a_vertical_slip_is(RE, denoiser, tmp_path, exposures, units):
    # At 8 degrees per projection, rotation shifts these projections sideways by more than the
    # 3-pixel threshold (shift_px); only the sample slipping 6 pixels up is motion. (At 4 degrees it did
    # too while registration weighed every spatial frequency alike; weighed by their coherence, the
    # resin cylinder that holds the beads, which rotation does not move, keeps the shift under 1 pixel.) With several
    # exposures per angle, the frames of one angle do not teach the rotation allowance anything. A stage
    # reporting radians rotates as far. A scan that records no angle (a fly scan without position capture)
    # rotates by its plan's nominal angles (before, its first frames were judged as a count's: motion).
    stage = SimTomoStage(name="stage")
    det = SimTomoDetector(name="det", stage=stage, shape=(192, 192), directory=tmp_path, seed=7,
                          simulate_timing=False, exposures=exposures)
    det.exposure_time.put(0.1)
    det.photon_flux.put(5000.0)
    cb = TomoGANCallback(denoiser)
    docs = []
    cb.subscribe(lambda name, doc: docs.append((name, doc)))
    RE.subscribe({"deg": cb, "rad": in_radians(cb), "nominal": without_angles(cb)}[units])
    events = itertools.count(1)
    RE.subscribe(lambda name, doc: setattr(det, "sample", det.sample.moved(0.0, -6.0))
                 if name == "event" and next(events) == 12 else None)
    RE(tomo_scan(det, stage, list(30.0 + 8.0 * np.arange(16)), n_darks=0, n_flats=0))
    flags, shifts = column(docs, "det_image_qc_flags"), column(docs, "det_image_qc_shift_px")
    motion = column(docs, "det_image_qc_motion_px")
    slip = 12 * exposures  # the first frame after the slip
    assert len(flags) == 16 * exposures
    # rotation alone: over the fixed threshold (one exposure), or at least over the 1.5 px that motion_px
    # stays under below (three: so the allowance must not have learnt "no shift" from same-angle pairs)
    assert max(s for s in shifts[:slip] if not math.isnan(s)) > (3.0 if exposures == 1 else 1.5)
    assert [i for i, f in enumerate(flags) if "motion" in f] == [slip]
    assert motion[slip] == pytest.approx(6.0, abs=0.7)
    assert all(m < 1.5 for i, m in enumerate(motion) if i != slip and not math.isnan(m))


def test_a_warn_flag_that_comes_and_goes_every_frame_is_logged_once_per_interval(caplog, monkeypatch):
    """While frames are dropped ``lagging`` flaps frame by frame: one warning, then a count, not one per frame."""
    from bluesky_tomogan.qc import feedback as feedback_module

    feedback = QCFeedback(QCPolicy({"lagging": Rule(0.1, "warn")}))
    caplog.set_level(logging.WARNING, logger="bluesky_tomogan")

    def frames(first, n):
        for seq in range(first, first + n):
            flags = {"lagging": "warn"} if seq % 2 else {}
            feedback.act(Verdict("run", "denoised", seq, {"latency_s": 1.0 if seq % 2 else 0.0}, flags))

    frames(1, 40)  # raised 20 times, cleared in between
    warnings = [r.getMessage() for r in caplog.records if "QC: lagging" in r.getMessage()]
    assert len(warnings) == 1 and "seq 1 " in warnings[0]
    monkeypatch.setattr(feedback_module, "WARN_INTERVAL_S", 0.0)  # the interval has passed
    frames(41, 2)
    warnings = [r.getMessage() for r in caplog.records if "QC: lagging" in r.getMessage()]
    assert len(warnings) == 2 and "seq 41 " in warnings[1] and "raised 19 more times" in warnings[1]
    assert sum(flag == "lagging" for _, _, flag, _ in feedback.log) == 21  # every raise is in the log


def test_a_lagging_denoiser_is_flagged_and_its_drops_recorded(RE, denoiser, caplog):
    class Slow:
        depth = denoiser.depth

        def denoise_context(self, context):
            time.sleep(0.15)
            return denoiser.denoise_context(context)

        def provenance(self):
            return denoiser.provenance()

    verdicts = []

    class Recording(QCFeedback):
        def act(self, verdict):
            verdicts.append(verdict)
            super().act(verdict)

    monitor = QCMonitor(name="qc")
    feedback = Recording(QCPolicy({"lagging": Rule(0.1, "warn")}), monitor=monitor, RE=RE)
    cb = TomoGANCallback(Slow(), policy="drop-oldest", maxsize=1, feedback=feedback)
    docs = collect(RE, cb)
    seen = []
    monitor.lagging.subscribe(lambda value, **kw: seen.append(value), run=False)
    RE(bp.count([scripted_camera([np.full((32, 40), 500, np.uint16)] * 8)], num=8))
    flags, errors = column(docs, "cam_qc_flags"), column(docs, "cam_qc_error")
    dropped = [f for f, e in zip(flags, errors, strict=True) if e.startswith("dropped")]
    assert dropped and all("lagging" in f for f in dropped)
    # a dropped frame's verdict says why it lags, not "latency_s 0.3 above 0.1" (its latency did not flag it)
    deadline = time.monotonic() + 5  # verdicts reach the feedback thread asynchronously
    while len(verdicts) < len(flags) and time.monotonic() < deadline:
        time.sleep(0.05)
    reasons = [v.reasons.get("lagging", "") for v in verdicts]
    assert sum(r.startswith("dropped: queue full") for r in reasons) == len(dropped)
    caplog.set_level(logging.WARNING, logger="bluesky_tomogan")
    QCFeedback(QCPolicy({"lagging": Rule(0.1, "warn")})).act(next(v for v in verdicts if v.reasons))
    assert any("QC: lagging" in r.getMessage() and "(dropped: queue full" in r.getMessage() for r in caplog.records)
    assert any("lagging" in f for f, e in zip(flags, errors, strict=True) if not e)  # late, not dropped
    assert 1 in seen


# -- flags that act on the RunEngine ----------------------------------------------------------


def test_a_suspending_flag_judged_after_the_runs_stop_trips_no_suspender(RE):
    """The last frames of a scan are denoised and judged while the callback handles the run's stop: their
    ``suspend`` flags raise no signal (nothing is left to suspend, and bluesky's RunEngine failed with "Cannot
    transit from 'suspending' to 'idle'" when a suspender tripped while it closed the run: ``demo --fly --faults``,
    1 run in 6 on a loaded machine). Before the stop, and in the next run, they do."""
    monitor = QCMonitor(name="qc")
    feedback = QCFeedback(QCPolicy({"saturated": Rule(0.001, "suspend")}), monitor=monitor)
    seen = []
    monitor.saturated.subscribe(lambda value, **kw: seen.append(value), run=False)

    def saturated(run, seq):
        feedback.act(Verdict(run, "denoised", seq, {"saturated_fraction": 0.2}, {"saturated": "suspend"}))

    saturated("one", 1)
    assert seen == [1]
    monitor.clear_flag("saturated")
    feedback.run_ended("one")
    saturated("one", 2)  # the run's last frame, judged after its stop
    assert seen == [1, 0] and monitor.saturated.get() == 0
    saturated("two", 1)
    assert seen == [1, 0, 1]
    monitor.cancel_timers()


def test_a_suspension_that_reaches_the_event_loop_after_the_runs_stop_is_not_requested(RE, monkeypatch):
    """A suspender trips while the run is open, but its request reaches the RunEngine's event loop only after the
    stop (the loop was busy delivering it): the QC suspenders do not pass it on (bluesky would fail the run
    while closing it); a request while the run is open is passed on."""
    monitor = QCMonitor(name="qc")
    feedback = QCFeedback(QCPolicy({"saturated": Rule(0.001, "suspend")}), monitor=monitor)
    (suspender,) = [s for s in feedback.install_suspenders(RE) if s._sig is monitor.saturated]
    asked = []
    monkeypatch.setattr(RE, "request_suspend", lambda fut, **kwargs: asked.append(kwargs.get("justification")))
    feedback.run_started("one")
    suspender.RE.request_suspend(None, justification="while open")
    feedback.run_ended("one")
    suspender.RE.request_suspend(None, justification="after the stop")
    feedback.run_started("two")
    suspender.RE.request_suspend(None, justification="the next run")
    assert asked == ["while open", "the next run"]
    assert suspender.RE.state == RE.state and suspender.RE._loop is RE._loop  # the rest is the RunEngine's
    RE.clear_suspenders()


def sim_rig(tmp_path, shape=(48, 64), **kw):
    """A small simulated beamline whose camera takes its 0.03 s exposure, as a real one does: QC acts
    while the scan runs, not after a scan that took no time at all."""
    stage = SimTomoStage(name="stage")
    beam = SimBeamCurrent(name="ring_current")
    det = SimTomoDetector(name="det", stage=stage, beam=beam, shape=shape, directory=tmp_path / "raw", **kw)
    det.exposure_time.put(0.03)
    det.photon_flux.put(500 / 0.03)
    return det, stage, beam


def test_a_late_beam_lost_verdict_after_the_refill_raises_nothing():
    """A frame exposed in the dark can be judged after the beam is back: its flag would never clear."""
    beam = SimBeamCurrent(name="ring")
    monitor = QCMonitor(name="qc", beam=beam, beam_ok=100)
    beam.put(0.0)
    monitor.raise_flag("beam_lost", suspending=True)
    assert monitor.beam_lost.get() == 1  # the beam is gone: suspend
    beam.put(200.0)
    assert monitor.beam_lost.get() == 0  # back: resume
    monitor.raise_flag("beam_lost", suspending=True)  # a late verdict of a frame taken in the dark
    assert monitor.beam_lost.get() == 0
    monitor.raise_flag("saturated")  # other flags are not about the beam
    assert monitor.saturated.get() == 1


def test_a_beam_back_between_qcs_reading_and_its_raise_still_clears_beam_lost():
    """QC reads the ring current (no beam), and the ring refills before it raises ``beam_lost``: the refill's
    callback found nothing to clear, so the flag, raised after it, would hold the scan suspended for good."""
    beam = SimBeamCurrent(name="ring")
    monitor = QCMonitor(name="qc", beam=beam, beam_ok=100)
    beam.put(0.0)
    read = beam.get

    def read_then_refill(*args, **kwargs):
        value = read(*args, **kwargs)
        beam.put(200.0)  # the refill lands after QC's reading
        return value

    beam.get = read_then_refill
    monitor.raise_flag("beam_lost", suspending=True)
    beam.get = read
    assert beam.get() == 200.0 and monitor.beam_lost.get() == 0


@pytest.mark.parametrize("cleared_by", ["beam", "retry_after"])
def test_a_flag_cleared_while_qc_waits_for_a_busy_event_loop_is_not_raised_again(monkeypatch, cleared_by):
    """The event loop is too busy to take the suspenders' request, so QC raises the flag again every 0.1 s;
    meanwhile the beam comes back (or ``retry_after`` passes) and clears it. QC must not raise it once more:
    nothing would clear it again, and the scan would stay suspended (``demo --fly --faults`` timed out so
    in CI, its last frames taken without beam)."""
    import bluesky_tomogan.qc.feedback as feedback_module

    monkeypatch.setattr(feedback_module, "TRIP_RETRY_S", 1.0)
    beam = SimBeamCurrent(name="ring")
    beam.put(0.0)
    monitor = (QCMonitor(name="qc", beam=beam, beam_ok=100) if cleared_by == "beam"
               else QCMonitor(name="qc", retry_after=0.3))
    feedback = QCFeedback(QCPolicy(), monitor=monitor)
    feedback.RE = SimpleNamespace(state=SimpleNamespace(is_running=True))
    busy = SimpleNamespace(_sig=monitor.beam_lost, _ev=None)  # a suspender that never got its event
    feedback.suspenders.append(busy)
    if cleared_by == "beam":
        threading.Timer(0.3, beam.put, args=(200.0,)).start()
    feedback.act(Verdict("one", "denoised", 5, {"intensity_ratio": 0.0}, {"beam_lost": "suspend"}))
    assert monitor.beam_lost.get() == 0
    monitor.cancel_timers()


def test_beam_dump_suspends_and_resumes_and_every_angle_has_a_good_frame(RE, denoiser, tmp_path):
    RE.record_interruptions = True
    det, stage, beam = sim_rig(tmp_path)
    monitor = QCMonitor(name="qc", beam=beam, beam_ok=100)
    feedback = QCFeedback(QCPolicy(dark_level=100), monitor=monitor, RE=RE)
    feedback.install_suspenders(RE)
    RE.install_suspender(SuspendFloor(beam, 50, resume_thresh=100, sleep=0.2))
    puts = []
    monitor.beam_lost.subscribe(lambda value, **kw: puts.append((value, threading.current_thread().name)),
                                run=False)
    cb = TomoGANCallback(denoiser, streams=["primary"], feedback=feedback)
    docs = collect(RE, cb)
    # The ring loses the beam for 1.5 s during the exposure of the fourth projection, from its own thread.
    RE.subscribe(lambda name, doc: threading.Timer(0.0, beam.dump, args=(1.5,)).start()
                 if name == "event" and doc.get("seq_num") == 3 and "stage_theta" in doc["data"] else None)
    angles = list(range(0, 16, 2))
    RE(tomo_scan(det, stage, angles, n_darks=2, n_flats=2))
    assert [d["exit_status"] for n, d in docs if n == "stop"] == ["success"]
    assert any(n == "descriptor" and d["name"] == "interruptions" for n, d in docs)  # the suspension, recorded
    # A suspension can land between a frame's StreamDatum and its event (the point is then taken again),
    # so rows are matched to angles through their source seq_num, not by position.
    primary = {d["uid"] for n, d in docs if n == "descriptor" and d["name"] == "primary"}
    events = [(d["seq_num"], d["data"]["stage_theta"]) for n, d in docs if n == "event" and d["descriptor"] in primary]
    rows = list(zip(column(docs, "det_image_source_seq_num"), column(docs, "det_image_qc_flags"), strict=True))
    good = {theta for seq, theta in events if any(s == seq and "beam_lost" not in f for s, f in rows)}
    assert good == set(map(float, angles))
    assert all(name != "bluesky-run-engine" for _, name in puts)  # flags are never set on the RunEngine's loop


@pytest.mark.parametrize("camera", ["offset", "counter"])
@pytest.mark.parametrize("streams", [None, ["primary"]])
def test_the_cameras_dark_level_comes_from_the_runs_darks(RE, denoiser, tmp_path, camera, streams):
    """No ``dark_level`` set: a camera's offset (100 counts) is most of a low-dose frame's mean, and a frame
    without beam still reads it (intensity ratio 0.8: no ``beam_lost`` before). QC takes the offset from
    the run's dark frames, read for that alone where ``streams=`` leaves them out; and a photon counter's
    dark frames, all zeros, are not ``dead_pixels`` or ``noisy``: they are dark by design."""
    import dataclasses

    det, stage, _ = sim_rig(tmp_path, simulate_timing=False)
    if camera == "counter":
        det.model = dataclasses.replace(det.model, dark_level=0.0, read_noise=0.0)
    det.photon_flux.put(80 / 0.03)  # 80 photons/pixel in the open beam
    cb = TomoGANCallback(denoiser, streams=streams, feedback=QCFeedback(QCPolicy(), RE=RE))
    docs = collect(RE, cb)
    RE.subscribe(lambda name, doc: det.inject_fault("beam_dump", frames=1)
                 if name == "event" and doc.get("seq_num") == 3 and "stage_theta" in doc["data"] else None)
    RE(tomo_scan(det, stage, range(0, 16, 2), n_darks=3, n_flats=2))
    names = {d["uid"]: d["name"] for n, d in docs if n == "descriptor"}
    rows: dict[str, list[tuple[str, float]]] = {}
    for n, d in docs:
        if n == "event_page" and "det_image_qc_flags" in d["data"]:
            rows.setdefault(names[d["descriptor"]], []).extend(
                zip(d["data"]["det_image_qc_flags"], d["data"]["det_image_qc_intensity_ratio"], strict=True))
    projections = rows["denoised"]
    lost = [i for i, (flags, _) in enumerate(projections) if "beam_lost" in flags]
    assert lost == [3] and projections[3][1] < 0.05, projections  # the frame without beam, and no other
    assert all(ratio > 0.5 for i, (_, ratio) in enumerate(projections) if i != 3)
    if streams is None:  # the darks denoised too: their rows raise nothing that presumes a beam
        assert [flags for flags, _ in rows["dark_denoised"]] == [""] * 3


@pytest.mark.parametrize("streams", [None, ["primary"]])
def test_a_scan_that_starts_without_beam_is_flagged_from_its_first_projection(RE, denoiser, tmp_path, streams):
    """The beam is gone when the projections start (a shutter that did not open again after the flats, a
    beam still dumped): frames compared with each other read an intensity ratio of 1. Against the run's
    flats (the open beam, read for this alone where ``streams=`` leaves them out) they read under 1 %:
    ``beam_lost`` from the first projection on, and none once the beam is back. (These frames at the dark
    level make QC doubt the darks, so the camera's offset counts as signal: 100 counts under flats of
    20,000 photons/pixel.)"""
    det, stage, _ = sim_rig(tmp_path, simulate_timing=False)
    det.photon_flux.put(20000 / 0.03)
    conditions, taken = det._conditions, []

    def no_beam_at_first():  # 3 darks, 2 flats, then the first 3 projections without photons
        c = conditions()
        taken.append(c)
        if 6 <= len(taken) <= 8:
            c["photons"] = 0.0
        return c

    det._conditions = no_beam_at_first
    cb = TomoGANCallback(denoiser, streams=streams, feedback=QCFeedback(QCPolicy(), RE=RE))
    docs = collect(RE, cb)
    RE(tomo_scan(det, stage, range(0, 16, 2), n_darks=3, n_flats=2))
    names = {d["uid"]: d["name"] for n, d in docs if n == "descriptor"}
    flags = [f for n, d in docs if n == "event_page" and names[d["descriptor"]] == "denoised"
             for f in d["data"]["det_image_qc_flags"]]
    assert ["beam_lost" in f for f in flags] == [True] * 3 + [False] * 5, flags


def test_darks_taken_with_the_shutter_open_are_not_taken_for_the_dark_level(RE, denoiser, tmp_path, caplog):
    """A shutter that did not close makes dark frames as bright as the projections: taken for the dark
    level, every projection would read an intensity ratio of noise around 0 (``beam_lost``: the scan
    suspended frame after frame). QC keeps 0 for them, as without darks, and says why."""
    det, stage, _ = sim_rig(tmp_path, simulate_timing=False)
    det.photon_flux.put(80 / 0.03)
    conditions = det._conditions

    def leaky_shutter():
        c = conditions()
        c["photons"] = float(det.photon_flux.get()) * float(det.exposure_time.get())
        return c

    det._conditions = leaky_shutter
    cb = TomoGANCallback(denoiser, streams=["primary"], feedback=QCFeedback(QCPolicy(), RE=RE))
    docs = collect(RE, cb)
    with caplog.at_level(logging.WARNING, logger="bluesky_tomogan.callbacks.run_qc"):
        RE(tomo_scan(det, stage, range(0, 16, 2), n_darks=3, n_flats=2))
    assert column(docs, "det_image_qc_flags") == [""] * 8
    assert min(column(docs, "det_image_qc_intensity_ratio")) > 0.5
    assert "not darker than its 'primary' frames" in caplog.text


def test_a_frame_only_beam_loss_suspends_through_the_qc_monitor(RE, denoiser, tmp_path):
    RE.record_interruptions = True
    det, stage, _ = sim_rig(tmp_path)
    monitor = QCMonitor(name="qc", retry_after=0.5)  # no beam signal: resume and test the next frame
    feedback = QCFeedback(QCPolicy(dark_level=100), monitor=monitor, RE=RE)
    feedback.install_suspenders(RE)
    threads = []
    monitor.beam_lost.subscribe(lambda value, **kw: threads.append(threading.current_thread().name), run=False)
    cb = TomoGANCallback(denoiser, streams=["primary"], feedback=feedback)
    docs = collect(RE, cb)
    RE.subscribe(lambda name, doc: det.inject_fault("beam_dump", frames=1)
                 if name == "event" and doc.get("seq_num") == 2 and "stage_theta" in doc["data"] else None)
    RE(tomo_scan(det, stage, range(0, 40, 2), n_darks=1, n_flats=1))
    interruptions = [d for n, d in docs if n == "event" and "interruption" in d["data"]]
    assert any("qc_beam_lost is high" in d["data"]["interruption"] for d in interruptions)  # suspended, recorded
    assert "beam_lost" in ",".join(column(docs, "det_image_qc_flags"))
    assert threads and "bluesky-run-engine" not in threads
    assert [d["exit_status"] for n, d in docs if n == "stop"] == ["success"]


def test_a_policy_file_that_pauses_on_motion(RE, denoiser, tmp_path):
    path = tmp_path / "qc.toml"
    path.write_text('[motion]\nthreshold = 2.0\naction = "pause"\n')
    det, stage, _ = sim_rig(tmp_path, shape=(64, 96))
    feedback = QCFeedback(QCPolicy.from_file(path), RE=RE)
    cb = TomoGANCallback(denoiser, streams=["primary"], feedback=feedback)
    docs = collect(RE, cb)
    RE.subscribe(lambda name, doc: det.inject_fault("motion", pixels=6.0)
                 if name == "event" and doc.get("seq_num") == 2 and "stage_theta" in doc["data"] else None)
    with pytest.raises(RunEngineInterrupted):
        RE(tomo_scan(det, stage, [0.5 * i for i in range(20)], n_darks=1, n_flats=1))
    assert RE.state == "paused"
    RE.resume()
    assert [d["exit_status"] for n, d in docs if n == "stop"] == ["success"]
    assert any("motion" in f for f in column(docs, "det_image_qc_flags"))


def test_abort_ends_the_run_cleanly_with_the_reason(RE, denoiser, tmp_path):
    det, stage, _ = sim_rig(tmp_path, dtype="float32")
    feedback = QCFeedback(QCPolicy({"nonfinite": Rule(0.0, "abort")}), RE=RE)
    cb = TomoGANCallback(denoiser, streams=["primary"], feedback=feedback)
    docs = collect(RE, cb)
    RE.subscribe(lambda name, doc: det.inject_fault("nan")
                 if name == "event" and doc.get("seq_num") == 2 and "stage_theta" in doc["data"] else None)
    try:
        RE(tomo_scan(det, stage, range(0, 40, 2), n_darks=1, n_flats=1))
    except RunEngineInterrupted:
        pass
    (stop,) = [d for n, d in docs if n == "stop"]
    assert stop["exit_status"] == "abort" and "QC: nonfinite" in stop["reason"]
    assert stop["num_events"]["primary"] < 20
    assert RE.state == "idle"


# -- the adaptive plan ------------------------------------------------------------------------


@pytest.mark.parametrize("fault, flag", [("nan", "nonfinite"), ("zero", "dead_pixels"), ("dead", "dead_pixels")])
def test_adaptive_plan_reacquires_an_unusable_frame_and_records_it(RE, denoiser, tmp_path, fault, flag):
    det, stage, _ = sim_rig(tmp_path, dtype="float32")
    make_frame = det._frame
    bad = {"armed": False}

    def frame(conditions):  # the camera's readout fails for one frame: all zeros, or a dead half
        out = make_frame(conditions)
        if bad["armed"]:
            bad["armed"] = False
            if fault == "zero":
                out = np.zeros_like(out)
            else:
                out[: out.shape[0] // 2] = 0
        return out

    det._frame = frame
    feedback = QCFeedback(QCPolicy(dark_level=100), RE=RE)
    cb = TomoGANCallback(denoiser, streams=["primary"], feedback=feedback)
    docs = collect(RE, cb)

    def arm(name, doc):
        if name == "event" and doc.get("seq_num") == 3 and "stage_theta" in doc["data"]:
            if fault == "nan":
                det.inject_fault("nan")
            else:
                bad["armed"] = True

    RE.subscribe(arm)
    angles = [float(a) for a in range(0, 16, 2)]
    RE(qc_tomo_scan(det, stage, angles, feedback, n_darks=1, n_flats=1))
    actions = [d["data"] for n, d in docs if n == "event" and "qc_action" in d["data"]]
    assert [(a["qc_action"], a["qc_flag"], a["qc_angle"]) for a in actions] == [("reacquire", flag, 6.0)]
    primary = {d["uid"] for n, d in docs if n == "descriptor" and d["name"] == "primary"}
    theta = [d["data"]["stage_theta"] for n, d in docs if n == "event" and d["descriptor"] in primary]
    flags = column(docs, "det_image_qc_flags")
    assert theta.count(6.0) == 2 and len(flags) == len(angles) + 1
    assert flag in flags[theta.index(6.0)]
    assert {t for t, f in zip(theta, flags, strict=True) if not f} == set(angles)  # a good frame at every angle


def test_adaptive_plan_lowers_the_exposure_on_saturation_and_the_store_keeps_it(RE, denoiser, store, tmp_path):
    stage = SimTomoStage(name="stage")
    det = SimTomoDetector(name="det", stage=stage, shape=(48, 64), directory=frames_directory(tmp_path / "store"),
                          simulate_timing=False)
    det.photon_flux.put(2e7)  # 200,000 photons per pixel at 0.01 s: the open beam clips at 65535
    feedback = QCFeedback(QCPolicy(dark_level=100), RE=RE)
    cb = TomoGANCallback(denoiser, streams=["primary"], feedback=feedback)
    cb.subscribe(TiledWriter(store))
    docs = collect(RE, cb)
    # max_qc_lag=0: the plan waits for QC at each point, so the exposure changes however slow the worker is
    (uid,) = RE(qc_tomo_scan(det, stage, [float(a) for a in range(0, 24, 2)], feedback, n_darks=1, n_flats=1,
                             exposure_limits=(1e-3, 0.1), max_qc_lag=0))
    actions = store[uid]["qc_actions"].read()
    adjusted = [i for i, a in enumerate(actions["qc_action"].values) if a == "adjust"]
    assert adjusted, "the exposure was not lowered"
    assert "saturated_fraction" in str(actions["qc_reason"].values[adjusted[0]])
    assert float(actions["qc_exposure_time"].values[adjusted[0]]) < 0.01
    assert det.exposure_time.get() < 0.01
    primary_descriptors = [d for n, d in docs if n == "descriptor" and d["name"] == "primary"]
    assert len(primary_descriptors) >= 2  # the exposure change re-described the detector
    assert [d["exit_status"] for n, d in docs if n == "stop"] == ["success"]
    assert store[uid]["denoised"]["det_image_denoised"].shape[0] == len(column(docs, "det_image_qc_flags"))


def test_the_intensity_ratio_is_per_second_of_exposure_so_lowering_it_is_no_beam_loss(RE, denoiser, tmp_path):
    """Each ``adjust`` halves the exposure of a saturating scan; against a reference of frames taken at the
    exposures before, the ratio fell to 0.37 after five halvings (0.2 is ``beam_lost``). The reference is per
    second of exposure (the detector's ``exposure_time`` in each descriptor's configuration)."""
    stage = SimTomoStage(name="stage")
    det = SimTomoDetector(name="det", stage=stage, shape=(48, 64), directory=tmp_path, simulate_timing=False)
    det.photon_flux.put(2e8)  # 2,000,000 photons per pixel at 0.01 s: six halvings to come below 65535
    feedback = QCFeedback(QCPolicy(), RE=RE)
    cb = TomoGANCallback(denoiser, streams=["primary"], feedback=feedback)
    docs = collect(RE, cb)
    RE(qc_tomo_scan(det, stage, [float(a) for a in range(0, 40, 2)], feedback, n_darks=2, n_flats=1,
                    exposure_limits=(1e-5, 0.1), max_qc_lag=0))
    assert det.exposure_time.get() <= 0.01 / 2**5
    ratios = [r for r in column(docs, "det_image_qc_intensity_ratio") if math.isfinite(r)]
    assert len(ratios) > 10 and min(ratios) > 0.9, ratios
    assert "beam_lost" not in ",".join(column(docs, "det_image_qc_flags"))


def test_the_intensity_reference_and_exposure_times_from_descriptors():
    ref = IntensityReference()
    for _ in range(5):
        ref.add(1100.0, 0.01)
    assert ref.ratio(225.0, 100.0, 0.01 / 8) == pytest.approx(1.0)  # an eighth of the exposure, the same beam
    assert ref.ratio(225.0, 100.0, 0.01) == pytest.approx(0.125)  # the same exposure: a beam loss
    plain = IntensityReference()
    plain.add(1100.0)
    assert plain.ratio(225.0, 100.0) == pytest.approx(0.125)  # exposure not known: as before

    from bluesky_tomogan.callbacks.derived_stream import exposure_time

    def descriptor(config):
        return {"object_keys": {"det": ["det_image"], "other": ["x"]},
                "configuration": {"det": {"data": config}, "other": {"data": {"other_exposure_time": 9.0}}}}

    assert exposure_time(descriptor({"det_exposure_time": 0.01, "det_photon_flux": 5e4}), "det_image") == 0.01
    assert exposure_time(descriptor({"det_cam_acquire_period": 0.2, "det_cam_acquire_time": 0.1}), "det_image") == 0.1
    assert exposure_time(descriptor({"det-driver-acquire_time": 0.05}), "det_image") == 0.05
    assert exposure_time(descriptor({"det_cam_num_images": 1}), "det_image") is None  # not another device's
    assert exposure_time(descriptor({"det_exposure_time": 0}), "det_image") is None
    assert exposure_time({}, "det_image") is None


def test_the_plan_paced_by_qc_acts_within_the_lag_it_was_given(RE, denoiser, tmp_path):
    """With ``max_qc_lag=0`` each decision comes before the projection after the frames the denoiser must see."""
    stage = SimTomoStage(name="stage")
    det = SimTomoDetector(name="det", stage=stage, shape=(48, 64), directory=tmp_path, simulate_timing=False)
    det.photon_flux.put(2e7)  # every open-beam frame saturates

    class Slow:  # a worker far slower than the detector: unpaced, the plan would act after its last angle
        depth = denoiser.depth

        def denoise_context(self, context):
            time.sleep(0.1)
            return denoiser.denoise_context(context)

        def provenance(self):
            return denoiser.provenance()

    feedback = QCFeedback(QCPolicy(dark_level=100), RE=RE)
    cb = TomoGANCallback(Slow(), streams=["primary"], feedback=feedback)
    docs = collect(RE, cb)
    RE(qc_tomo_scan(det, stage, [float(a) for a in range(0, 20, 2)], feedback, n_darks=1, n_flats=1,
                    exposure_limits=(1e-3, 0.1), max_qc_lag=0))
    assert [d["plan_args"]["max_qc_lag"] for n, d in docs if n == "start"] == [0]  # the analyst sees the pacing
    primary = {d["uid"] for n, d in docs if n == "descriptor" and d["name"] == "primary"}
    taken = 0
    for name, doc in docs:
        if name == "event" and doc["descriptor"] in primary:
            taken += 1
        elif name == "event" and doc["data"].get("qc_action") == "adjust":
            # frame n is judged once frames n+1 and n+2 (the 5-frame model's look-ahead) are in
            assert taken - doc["data"]["qc_source_seq_num"] <= feedback.lookahead() == 2
            break
    else:
        raise AssertionError("the exposure was never adjusted")


def test_a_plan_paced_by_a_stuck_qc_stops_waiting_and_completes(RE, denoiser, tmp_path, caplog):
    stage = SimTomoStage(name="stage")
    det = SimTomoDetector(name="det", stage=stage, shape=(48, 64), directory=tmp_path, simulate_timing=False)
    feedback = QCFeedback(QCPolicy(dark_level=100), RE=RE)
    docs = collect(RE, TomoGANCallback(denoiser, streams=["primary"], feedback=feedback))
    # QC never judges a stream of this name, and final_wait=0 times every wait out at once (no clock in the
    # test): the first wait that times out ends the pacing, so it is the only one logged, not one per point
    RE(qc_tomo_scan(det, stage, [float(a) for a in range(0, 12, 2)], feedback, n_darks=1, n_flats=1,
                    stream="never_judged", max_qc_lag=0, final_wait=0))
    assert [d["exit_status"] for n, d in docs if n == "stop"] == ["success"]
    assert len([r for r in caplog.records if "stayed more than 0 frames behind" in r.getMessage()]) == 1


def test_registration_of_pure_noise_is_no_shift_not_a_random_one(rng):
    assert math.isnan(shift_px(rng.poisson(500, (256, 256)), rng.poisson(500, (256, 256))))


def test_a_detector_without_an_exposure_time_holds_the_exposure_and_the_scan_completes(RE, denoiser, tmp_path,
                                                                                       monkeypatch):
    """An ophyd v1 area detector keeps its exposure in ``cam.acquire_time``: the plan records each exposure
    recommendation as held, with the reason, re-acquires as usual and completes."""
    import bluesky_tomogan.plans as plans

    monkeypatch.setattr(plans, "_exposure_signal", lambda detector: None)
    stage = SimTomoStage(name="stage")
    # max_qc_lag=0: QC judges frames while the scan runs (its recommendations about the last frames come
    # after the last angle, when no exposure change is made any more)
    det = SimTomoDetector(name="det", stage=stage, shape=(48, 64), directory=tmp_path, simulate_timing=False)
    det.photon_flux.put(2e7)  # the open beam clips at 65535: QC recommends a shorter exposure
    feedback = QCFeedback(QCPolicy(dark_level=100), RE=RE)
    cb = TomoGANCallback(denoiser, streams=["primary"], feedback=feedback)
    docs = collect(RE, cb)
    exposure = det.exposure_time.get()
    RE(qc_tomo_scan(det, stage, [float(a) for a in range(0, 48, 2)], feedback, n_darks=1, n_flats=1,
                    max_qc_lag=0))
    rows = [d["data"] for n, d in docs if n == "event" and "qc_action" in d["data"]]
    held = [r["qc_reason"] for r in rows if r["qc_action"] == "hold"]
    assert held and all("the detector has no exposure_time" in r for r in held)
    assert "adjust" not in [r["qc_action"] for r in rows] and det.exposure_time.get() == exposure
    assert all(math.isnan(r["qc_exposure_time"]) for r in rows)
    assert [d["exit_status"] for n, d in docs if n == "stop"] == ["success"]


@pytest.mark.usefixtures("patient_waits")
@pytest.mark.parametrize("kind", ["image_key", "frame_type"])
def test_darks_flats_and_projections_in_one_stream_are_told_apart_by_their_events(RE, denoiser, tmp_path, kind):
    """A plan that takes every frame in ``primary``, each event saying what its frame is (NXtomo's
    ``image_key``, or an area detector's ``frame_type`` with a beamline's own state names): its darks are
    not ``beam_lost`` (they would suspend the scan at its start), they give QC the camera's dark level,
    and darks, flats and projections are each denoised among their own kind. Frame for frame the same
    denoised frames and flags as ``tomo_scan``'s three streams, in one derived stream in the raw order."""
    results = {}
    for plan in ("tomo_scan", kind):
        det, stage, _ = sim_rig(tmp_path / plan, simulate_timing=False, seed=3)
        det.photon_flux.put(80 / 0.03)  # low dose: the camera's offset (100 counts) is most of a frame
        cb = TomoGANCallback(denoiser, inline=True, feedback=QCFeedback(QCPolicy(), RE=RE))
        docs = []
        cb.subscribe(lambda name, doc, docs=docs: docs.append((name, doc)))
        before = 3 if plan == "tomo_scan" else 8  # the third projection: the beam is lost for the fourth
        tokens = [RE.subscribe(cb), RE.subscribe(
            lambda name, doc, det=det, seq=before: det.inject_fault("beam_dump", frames=1)
            if name == "event" and doc["seq_num"] == seq and "stage_theta" in doc["data"] else None)]
        angles = range(0, 16, 2)
        RE(tomo_scan(det, stage, angles, n_darks=3, n_flats=2) if plan == "tomo_scan"
           else keyed_tomo_scan(det, stage, angles, kind))
        for token in tokens:
            RE.unsubscribe(token)
        names = {d["uid"]: d["name"] for n, d in docs if n == "descriptor"}
        rows = {}
        for n, d in docs:
            if n == "event_page" and "det_image_qc_flags" in d["data"]:
                stream = rows.setdefault(names[d["descriptor"]], {})
                for k in ("det_image_denoised", "det_image_qc_flags", "det_image_source_seq_num"):
                    stream.setdefault(k, []).extend(d["data"][k])
        results[plan] = rows, cb.options.dark_levels["det_image"]
        assert len(cb.errors) == 1 and cb.errors[0].endswith("not denoised: unusable frame (beam_lost)")

    (three, level), (one, keyed_level) = results["tomo_scan"], results[kind]
    assert list(one) == ["denoised"] and list(one["denoised"]["det_image_source_seq_num"]) == list(range(1, 14))
    expected = {k: [v for s in ("dark_denoised", "flat_denoised", "denoised") for v in three[s][k]]
                for k in ("det_image_denoised", "det_image_qc_flags")}
    assert one["denoised"]["det_image_qc_flags"] == expected["det_image_qc_flags"]
    assert ["beam_lost" in f for f in expected["det_image_qc_flags"]] == [False] * 8 + [True] + [False] * 4
    np.testing.assert_allclose(np.array(one["denoised"]["det_image_denoised"]),
                               np.array(expected["det_image_denoised"]), rtol=1e-5, atol=1e-3)
    assert keyed_level == level == pytest.approx(100, abs=2)


def test_a_run_of_darks_known_by_the_cameras_frame_type_gives_the_next_run_its_dark_level(RE, denoiser, tmp_path):
    """A plan that takes darks, flats and projections as runs of their own sets the camera's frame type for
    each (areaDetector's ``FrameType``, a configuration signal): the run of darks is known as darks by its
    configuration (no ``beam_lost`` on it) and its dark level serves the next run, whose frame without
    beam is then ``beam_lost`` (read against 0, the camera's offset would keep it at 0.8 of the others)."""
    from ophyd import Component, Signal

    class FrameTypeCamera(SimTomoDetector):
        frame_type = Component(Signal, value=0, kind="config")

    stage = SimTomoStage(name="stage")
    det = FrameTypeCamera(name="det", stage=stage, shape=(48, 64), directory=tmp_path / "raw",
                          simulate_timing=False)
    det.photon_flux.put(80 / 0.03)
    det.exposure_time.put(0.03)
    cb = TomoGANCallback(denoiser, inline=True, feedback=QCFeedback(QCPolicy(), RE=RE))
    docs = collect(RE, cb)
    det.shutter.put("closed")
    det.frame_type.put(1)  # Background
    RE(bp.count([det], num=3))
    assert column(docs, "det_image_qc_flags") == [""] * 3
    assert cb.options.dark_levels["det_image"] == pytest.approx(100, abs=2)
    del docs[:]
    det.shutter.put("open")
    det.frame_type.put(0)  # Normal
    RE.subscribe(lambda name, doc: det.inject_fault("beam_dump", frames=1)
                 if name == "event" and doc.get("seq_num") == 3 else None)
    RE(bp.count([det], num=6))
    assert ["beam_lost" in f for f in column(docs, "det_image_qc_flags")] == [False] * 3 + [True] + [False] * 2


def test_float_frames_saturate_only_on_a_clipped_plateau_not_above_a_number(rng):
    """Float frames have no type's top: with no level set, 65535 was the level, so a sum of four exposures
    (or counts scaled by a gain) read as saturated wherever it was bright. Now only a plateau at exactly
    the frame's highest reading saturates: a 16-bit camera's clipped counts as floats, or any float
    detector clipping at 65535 or above."""
    ref = IntensityReference()
    summed = rng.poisson(30000, (64, 64)).astype(np.float32) * 4  # four exposures summed: up to ~121,000
    clipped = rng.poisson(30000, (64, 64)).astype(np.float32)  # a 16-bit camera's counts as floats,
    clipped[:, :16] = np.minimum(rng.poisson(90000, (64, 16)), 65535)  # a quarter of the frame clipped
    high = np.minimum(summed, 120500.0)  # a float detector clipping at its own level

    def saturated(f, level=None):
        m = frame_metrics(f, ref, None, QCPolicy(saturation_level=level).saturation_for(f.dtype),
                          narrower_camera=level is None)
        return m.saturated_fraction

    assert summed.max() > 110000 and saturated(summed) == 0
    assert saturated(clipped) == pytest.approx(0.25)
    assert 0 < saturated(high) < 0.5 and saturated(summed, level=100000) > 0.5  # a level set is a level


def test_a_photon_counter_beyond_the_beams_footprint_is_not_dead_but_a_readout_that_fails_is(RE, denoiser, rng):
    """A fan beam 40 rows tall on a 96-row photon counter: 59 % of its pixels never get a photon. Read as
    ``dead_pixels`` (a readout failure, a quarter of the frame) every frame was unusable: not denoised, and
    re-acquisition asked for at every angle. A region dead in the detector's frame before too is where no
    photon falls; only the first frame of a session has none before it. A readout that zeroes half of
    the beam (a fifth of the detector) is ``dead_pixels``: half of the pixels that had light are dead
    now; so is the same failure again (a failed frame is not where the light falls). The frame after
    them is not."""
    yy, xx = np.mgrid[:96, :128]
    clean = 300 * (np.abs(yy - 48) < 20) * np.exp(-1.0 * (((yy - 48) ** 2 + (xx - 64) ** 2) < 15 ** 2))
    frames = [rng.poisson(clean).astype(np.uint32) for _ in range(7)]
    frames[4][:, :64] = frames[5][:, :64] = 0  # half the detector read out as zeros, twice
    cb = TomoGANCallback(denoiser, feedback=QCFeedback(QCPolicy()))
    docs = collect(RE, cb)
    RE(bp.count([scripted_camera(frames)], num=7))
    dead = column(docs, "cam_qc_dead_fraction")
    assert dead[0] == pytest.approx(0.59, abs=0.01) and dead[1:4] == [0.0] * 3 and dead[6] == 0.0
    assert column(docs, "cam_qc_flags") == ["dead_pixels", "", "", "", "dead_pixels", "dead_pixels", ""]
    assert dead[4] == dead[5] == pytest.approx(0.5, abs=0.02)  # half of the pixels that see the beam: dead
    RE(bp.count([scripted_camera(frames[1:3])], num=2))  # the next run: the footprint is known
    assert column(docs, "cam_qc_flags")[7:] == ["", ""]


def test_a_dark_frame_does_not_hide_where_the_light_falls():
    """A photon counter's dark frame is all zeros: the frame after it is compared with the last frame with
    light, so a scan's first flat after its darks does not read its beam's footprint as dead."""
    from bluesky_tomogan.qc.metrics import DeadBefore, dead_fraction

    footprint = np.zeros((32, 32), np.uint32)
    footprint[8:24] = 50
    broken = footprint.copy()
    broken[8:24, :16] = 0
    before = DeadBefore()

    def judged(frame):
        fraction = dead_fraction(frame, before)
        before.accept()  # as RunQC does for a frame that is not dead_pixels
        return fraction

    assert judged(footprint) == 0.5  # a session's first frame: of all pixels
    assert judged(np.zeros_like(footprint)) == 1.0  # a dark (judged without dead_pixels)
    assert judged(footprint) == 0.0 and judged(broken) == 0.5


def test_a_stuck_column_or_row_is_a_defect_not_too_much_light(rng):
    """A CCD column (or a CMOS row) stuck at the top reads it from edge to edge, one pixel wide: 0.2 % of a
    512-pixel-wide frame, over the ``saturated`` threshold, so every frame asked for a shorter exposure.
    Light saturates areas: a band of the open beam still counts, and so do two stuck lines side by side."""
    ref = IntensityReference()
    level = QCPolicy().saturation_for(np.uint16)

    def saturated(f):
        return frame_metrics(f, ref, None, level, narrower_camera=True).saturated_fraction

    frame = rng.poisson(2000, (512, 512)).astype(np.uint16)
    column, row, band = frame.copy(), frame.copy(), frame.copy()
    column[:, 100] = 65535
    row[300] = 65535
    band[:, :8] = 65535
    assert saturated(frame) == saturated(column) == saturated(row) == 0
    assert saturated(band) == pytest.approx(8 / 512)
    column[:, 101] = 65535
    assert saturated(column) == pytest.approx(2 / 512)
