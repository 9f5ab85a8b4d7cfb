"""Simulator: determinism, physics of the projector, and degradation that follows the dose."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.transform import radon

from bluesky_tomogan.metrics import psnr, ssim
from bluesky_tomogan.simulate.datasets import Recipe, simulate_pairs
from bluesky_tomogan.simulate.phantoms import FAMILIES, HELD_OUT_FAMILIES, make_phantom
from bluesky_tomogan.simulate.tomography import (
    DetectorModel,
    angles_deg,
    fbp,
    project,
    reconstruct,
    scale_to_max_attenuation,
    simulate_scan,
)


@pytest.mark.parametrize("family", sorted(FAMILIES | HELD_OUT_FAMILIES))
def test_same_seed_same_phantom_and_different_seed_differs(family):
    a, b, c = make_phantom(family, 32, 5), make_phantom(family, 32, 5), make_phantom(family, 32, 6)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.dtype == np.float32 and a.min() >= 0 and a.max() > 0


def test_unknown_family_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown phantom family 'glass'"):
        make_phantom("glass", 32)


def test_projector_equals_skimage_radon_slice_by_slice():
    vol = make_phantom("foam", 32, 1)
    ang = angles_deg(20)
    proj = project(vol, ang)
    assert proj.shape == (20, 32, 32)
    for z in (3, 16, 30):
        np.testing.assert_allclose(proj[:, z], radon(vol[z].astype(float), ang, circle=True).T, atol=1e-4)


def test_full_view_noise_free_fbp_recovers_the_phantom():
    vol = make_phantom("layered", 64, 2)
    ang = angles_deg(120)
    rec = reconstruct(project(vol, ang), ang)
    assert np.corrcoef(rec[32].ravel(), vol[32].ravel())[0, 1] > 0.95


def test_same_seed_same_scan():
    vol = scale_to_max_attenuation(make_phantom("bead_pack", 32, 0), 2.0)
    a = simulate_scan(vol, angles_deg(8), DetectorModel(photons=500), np.random.default_rng(3))
    b = simulate_scan(vol, angles_deg(8), DetectorModel(photons=500), np.random.default_rng(3))
    np.testing.assert_array_equal(a.frames, b.frames)


def test_photon_noise_follows_the_dose():
    vol = scale_to_max_attenuation(make_phantom("foam", 32, 0), 1.0)
    ang = angles_deg(16)
    rel = []
    for photons in (100, 400, 1600, 6400):
        scan = simulate_scan(vol, ang, DetectorModel(photons=photons, read_noise=0.0), np.random.default_rng(0))
        signal = scan.expected - 100.0
        rel.append(float(np.std((scan.frames - scan.expected) / signal)))
    # Poisson: relative noise ~ 1/sqrt(photons) -> halves with every 4x dose
    ratios = np.array(rel[:-1]) / np.array(rel[1:])
    np.testing.assert_allclose(ratios, 2.0, rtol=0.1)


def test_reconstruction_quality_follows_dose_and_view_fraction():
    vol = scale_to_max_attenuation(make_phantom("bead_pack", 64, 4), 2.0)
    full = angles_deg(96)
    reference = fbp(project(vol, full)[:, 32], full)

    def quality(photons: float, fraction: float) -> float:
        ang = angles_deg(96, fraction)
        scan = simulate_scan(vol, ang, DetectorModel(photons=photons), np.random.default_rng(0))
        return ssim(reference, fbp(scan.sinogram_noisy[:, 32], ang))

    by_dose = [quality(p, 1.0) for p in (100, 1000, 10000)]
    by_views = [quality(1e5, f) for f in (1 / 16, 1 / 4, 1.0)]
    assert by_dose == sorted(by_dose) and by_dose[-1] - by_dose[0] > 0.1
    assert by_views == sorted(by_views) and by_views[-1] - by_views[0] > 0.1


def test_pairs_are_deterministic_and_degraded(tiny_recipe):
    a = simulate_pairs(tiny_recipe, 2, seed=4)
    b = simulate_pairs(tiny_recipe, 2, seed=4)
    np.testing.assert_array_equal(a.ns, b.ns)
    np.testing.assert_array_equal(a.group, [0] * 32 + [1] * 32)
    assert psnr(a.gt[16], a.ns[16]) < 30


def test_projection_domain_pairs_are_frames_of_consecutive_angles():
    recipe = Recipe(domain="projection", size=32, n_angles=96, frames_per_scan=10)
    pairs = simulate_pairs(recipe, 1, seed=0)
    assert pairs.ns.shape == (10, 32, 32)
    # neighbouring angles look alike; the expected (clean) frames are noise-free
    def corr(i: int, j: int) -> float:
        return float(np.corrcoef(pairs.gt[i].ravel(), pairs.gt[j].ravel())[0, 1])

    assert corr(4, 5) > 0.9 and corr(4, 5) > corr(4, 9)
    # ns = Poisson(gt - dark) + dark: unbiased, variance equal to the expected photon count
    photons = pairs.gt - 100.0
    z = (pairs.ns - pairs.gt) / np.sqrt(photons)
    assert abs(float(z.mean())) < 0.05
    assert float(z.std()) == pytest.approx(1.0, rel=0.1)


def test_invalid_recipe_is_rejected():
    with pytest.raises(ValueError, match="domain"):
        Recipe(domain="sinogram")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="multiple of 8"):
        Recipe(size=30)


def _flat_scan(detector: DetectorModel, seed: int = 0):
    vol = np.zeros((32, 32, 32), np.float32)  # nothing in the beam: all structure is the detector's
    return simulate_scan(vol, angles_deg(16), detector, np.random.default_rng(seed))


def test_detector_blur_correlates_the_noise_and_keeps_the_mean():
    sharp, blurred = _flat_scan(DetectorModel(photons=400)), _flat_scan(DetectorModel(photons=400, psf_sigma=1.0))

    def neighbour_correlation(scan):
        r = scan.frames - scan.expected
        return np.corrcoef(r[:, :, :-1].ravel(), r[:, :, 1:].ravel())[0, 1]

    assert abs(neighbour_correlation(sharp)) < 0.05 and neighbour_correlation(blurred) > 0.5
    assert abs((blurred.frames - blurred.expected).mean()) < 1.0


def test_zingers_are_in_the_frames_only_and_column_errors_make_stripes():
    scan = _flat_scan(DetectorModel(photons=400, zinger_rate=1e-3, column_gain_error=0.05))
    assert (scan.frames - scan.expected).max() > 3 * 400  # a zinger, 3-30x the open beam
    assert scan.expected.max() < 2 * 400 + 100
    column_means = (scan.frames / scan.expected).mean(axis=(0, 1))
    assert column_means.std() > 0.01  # uncorrected column gains: stripes in every frame


def test_pixel_gains_are_a_fixed_texture_in_frames_targets_and_flats():
    plain = _flat_scan(DetectorModel(photons=1e5))
    textured = _flat_scan(DetectorModel(photons=1e5, pixel_gain_error=0.05))
    ratio = (textured.expected - 100) / (plain.expected - 100)
    assert 0.04 < float(ratio.std()) < 0.06  # the texture is in the noise-free frames: signal
    np.testing.assert_allclose(ratio[0], ratio[-1], rtol=1e-5)  # the same in every frame
    seen = (textured.frames - 100) / (plain.expected - 100)  # and in the noisy ones, well above photon noise
    assert np.corrcoef(seen[3].ravel(), ratio[3].ravel())[0, 1] > 0.9
    # the flats have it too, so flat-field correction divides it out of the line integrals
    assert float(textured.sinogram_noisy.std()) < 0.3 * float(ratio.std())
    with pytest.raises(ValueError, match="pixel_gain_error"):
        DetectorModel(pixel_gain_error=0.7)
    with pytest.raises(ValueError, match="pixel_gain_error"):
        Recipe(pixel_gain_error=(0.05, 0.01))


def test_sample_grain_is_a_texture_of_the_sample_that_turns_with_it():
    """Unlike pixel gains, the grain is in the volume: in the noise-free projections (signal), a
    pixel-scale texture that neighbouring angles share in part and distant ones do not."""
    from dataclasses import replace

    from scipy import ndimage

    from bluesky_tomogan.simulate.phantoms import with_grain

    vol = scale_to_max_attenuation(make_phantom("foam", 48, 2), 2.0)
    grained = with_grain(vol, 0.3, np.random.default_rng(0))
    assert not grained[vol == 0].any() and grained.min() >= 0  # inside the sample only, never negative
    ratio = grained[vol > 0] / vol[vol > 0]
    assert 0.25 < float(ratio.std()) < 0.35
    angles = angles_deg(96)[:12]
    texture = np.exp(project(vol, angles) - project(grained, angles)) - 1  # transmission ratio - 1
    fine = texture - ndimage.uniform_filter(texture, (1, 3, 3))
    inside = project(vol, angles[:1])[0] > 0.3

    def corr(a, b):
        return np.corrcoef(fine[a][inside], fine[b][inside])[0, 1]

    assert float(fine[0][inside].std()) > 0.01  # visible at the scale of a pixel
    assert corr(0, 1) > 0.6 and corr(0, 11) < 0.3  # shared by neighbours, drifting away with the angle
    with pytest.raises(ValueError, match="sample grain RMS"):
        with_grain(vol, 0.7, np.random.default_rng(0))
    with pytest.raises(ValueError, match="sample_grain"):
        Recipe(sample_grain=(0.1, 0.6))
    # in a dataset: the targets carry it (the noise-free frames differ), and older recipes are unchanged
    recipe = Recipe(domain="projection", size=32, n_angles=32, frames_per_scan=4, photons=(1e4, 1e4))
    plain = simulate_pairs(recipe, 1, seed=4)
    grainy = simulate_pairs(replace(recipe, sample_grain=(0.3, 0.3)), 1, seed=4)
    assert not np.allclose(plain.gt, grainy.gt)
    np.testing.assert_array_equal(plain.gt, simulate_pairs(replace(recipe, sample_grain=(0.0, 0.0)), 1, seed=4).gt)


def test_phase_fringes_are_signal_in_noisy_and_clean_frames_alike():
    vol = make_phantom("bead_pack", 32, 1)
    plain = simulate_scan(vol, angles_deg(4), DetectorModel(photons=1e6), np.random.default_rng(0))
    fringed = simulate_scan(vol, angles_deg(4), DetectorModel(photons=1e6, fringes=2.0), np.random.default_rng(0))
    diff = fringed.expected - plain.expected
    assert np.abs(diff).max() > 0.02 * plain.expected.max()  # bright and dark bands at edges
    assert diff.min() < 0 < diff.max()
    # the clean line integrals carry the fringes too: they are the sample's signal, not noise
    np.testing.assert_allclose(np.exp(plain.sinogram_clean - fringed.sinogram_clean),
                               (fringed.expected - 100) / (plain.expected - 100), rtol=1e-3)


def test_realistic_slice_recipe_stores_8bit_inputs_and_same_scale_targets():
    recipe = Recipe(domain="slice", size=32, n_angles=48, view_fractions=(1 / 4,), eight_bit=1.0,
                    filters=("hann", "cosine"), psf_sigma=(0.5, 1.0), fringes=(0.5, 1.0))
    pairs = simulate_pairs(recipe, 1, seed=3)
    assert set(np.unique(pairs.ns)) <= set(range(256)) and pairs.ns.max() == 255
    assert ssim(pairs.gt[16], pairs.ns[16]) > 0.2  # same affine scale, so still comparable


def test_older_recipes_still_give_the_same_data(tiny_recipe):
    # the new options draw random numbers only when on: a dataset of an older recipe is unchanged
    from dataclasses import replace

    a = simulate_pairs(tiny_recipe, 1, seed=9)
    b = simulate_pairs(replace(tiny_recipe, realistic_fraction=1.0, psf_sigma=(0.0, 0.0)), 1, seed=9)
    np.testing.assert_array_equal(a.ns, b.ns)


def test_a_sample_wider_than_the_field_of_view_leaves_no_column_of_open_beam():
    # local tomography: the detector sees the middle of a sample that is wider at every angle
    vol = make_phantom("foam", 64, 2)[30:34]
    rng = np.random.default_rng(0)
    whole = simulate_scan(vol, angles_deg(12), DetectorModel(photons=1e4), rng)
    middle = simulate_scan(vol, angles_deg(12), DetectorModel(photons=1e4), rng, columns=32)
    assert whole.frames.shape == (12, 4, 64) and middle.frames.shape == (12, 4, 32)
    assert whole.sinogram_clean[..., 0].max() == 0  # the sample's edge is in view: open beam beside it
    assert middle.sinogram_clean.min() > 0  # every column of every frame looks through the sample
    np.testing.assert_array_equal(middle.sinogram_clean, whole.sinogram_clean[..., 16:48])


def test_a_scan_file_of_a_sample_wider_than_the_field_of_view_is_one_as_a_beamline_writes_it(tmp_path):
    """``write_scan_file(width=...)``: a local-tomography scan to try ``finetune`` on; width 1 is the scan of before."""
    import h5py

    from bluesky_tomogan.reconstruction import wider_than_view
    from bluesky_tomogan.simulate.datasets import write_scan_file

    path, clean = write_scan_file(tmp_path / "wide.h5", "grains", 32, 24, 1000.0, seed=3, width=1.8)
    plain, _ = write_scan_file(tmp_path / "plain.h5", "grains", 32, 24, 1000.0, seed=3)
    assert clean.shape == (24, 32, 32) and clean.min() > 0  # every column looks through the sample
    for file, wider in ((path, True), (plain, False)):
        with h5py.File(file) as f:
            counts, flat, dark = f["exchange/data"][()], f["exchange/data_white"][0], f["exchange/data_dark"][0]
        transmission = (counts - dark) / (flat - dark)
        assert counts.shape == (24, 32, 32) and wider_than_view(list(transmission.transpose(1, 0, 2))) == wider
    with pytest.raises(ValueError, match="width"):
        write_scan_file(tmp_path / "x.h5", width=0.5)


def test_a_slice_of_a_sample_wider_than_the_field_of_view_fills_the_reconstruction_circle():
    from dataclasses import replace

    plain = Recipe(domain="slice", size=32, n_angles=48, view_fractions=(1 / 4,), families=("foam",))
    wide = replace(plain, beyond_view=1.0, beyond_width=(2.0, 2.0))
    a, b = simulate_pairs(plain, 1, seed=5), simulate_pairs(wide, 1, seed=5)
    assert a.gt.shape == b.gt.shape == (32, 32, 32)
    r = np.hypot(*(np.mgrid[:32, :32] - 15.5))
    rim, centre = (r > 0.95 * 16) & (r < 15.5), r < 8  # beyond the in-view sample's cylinder; its middle
    assert abs(a.gt[:, rim].mean()) < 0.1 * a.gt[:, centre].mean()
    assert b.gt[:, rim].mean() > 0.5 * b.gt[:, centre].mean()  # truncation: the rim rises, in the target too
    assert psnr(b.gt[16], b.ns[16]) < 30
    with pytest.raises(ValueError, match="beyond_view"):
        replace(plain, beyond_view=1.5)
    with pytest.raises(ValueError, match="beyond_width"):
        replace(plain, beyond_view=0.5, beyond_width=(0.8, 1.2))
