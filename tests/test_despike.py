"""Zingers out of a half-resolution network's input: what is a spike, what is not, and who gets it."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import median_filter

from bluesky_tomogan import load_denoiser
from bluesky_tomogan.despike import remove_isolated_spikes


def _frames(rng, n=3, size=96):
    """Poisson counts of a smooth sample with sharp-edged discs (structure that must survive)."""
    yy, xx = np.mgrid[:size, :size]
    sample = 800 + 300 * np.sin(xx / 9.0) * np.cos(yy / 13.0)
    for cy, cx, r in ((30, 30, 8), (60, 70, 12), (20, 75, 3)):
        sample[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] *= 0.4
    return rng.poisson(np.broadcast_to(sample, (n, size, size))).astype(np.float32)


def test_one_and_two_pixel_zingers_are_replaced_by_their_neighbourhood(rng):
    frames = _frames(rng)
    clean = frames.copy()
    frames[0, 40, 40] += 20 * 800  # one pixel
    frames[1, 50, 10] += 8 * 800  # two pixels, the second at half the height
    frames[1, 50, 11] += 4 * 800
    frames[2, 0, 95] += 10 * 800  # in a corner
    out = remove_isolated_spikes(frames, 12.0)
    assert out is frames  # in place
    for f, r, c in ((0, 40, 40), (1, 50, 10), (1, 50, 11), (2, 0, 95)):
        assert abs(out[f, r, c] - clean[f, r, c]) < 6 * np.sqrt(800), (f, r, c)
    changed = out != clean
    assert changed.sum() <= 4  # the spikes (each now its median) and nothing else


def test_noise_and_sharp_edges_are_not_spikes(rng):
    frames = _frames(rng)
    assert np.array_equal(remove_isolated_spikes(frames.copy(), 12.0), frames)
    flat = np.full((3, 32, 32), 7.0, np.float32)  # nothing to stand out from
    assert np.array_equal(remove_isolated_spikes(flat.copy(), 12.0), flat)


def test_it_finds_what_the_whole_frame_median_rule_finds(rng):
    frames = _frames(rng, n=4)
    hits = rng.integers(1, 95, (4, 12, 2))
    for f, pixels in enumerate(hits):
        frames[f, pixels[:, 0], pixels[:, 1]] += rng.uniform(3, 30, len(pixels)).astype(np.float32) * 800
    expected = frames.copy()
    for frame in expected:  # the plain rule: the whole frame's 3x3 median; sigma of pixel minus neighbours
        median = median_filter(frame, 3, mode="nearest")
        sigma = 1.4826 * np.median(np.abs(frame - _cross_mean(frame)))
        spike = frame - median > 12 * sigma
        frame[spike] = median[spike]
    assert np.array_equal(remove_isolated_spikes(frames, 12.0), expected)


def _cross_mean(frame):
    p = np.pad(frame, 1, mode="edge")
    h, w = frame.shape
    return (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:]) / 4


def test_the_space_to_depth_model_despikes_its_input_and_the_full_models_do_not(rng):
    s2d = load_denoiser("tomogan-projection-s2d-aio", backend="onnxruntime")
    assert s2d.despike_sigmas == 12.0
    assert load_denoiser("tomogan-projection-s2d-aio", backend="onnxruntime", ratio=50).despike_sigmas == 12.0
    assert load_denoiser("tomogan-projection", backend="onnxruntime").despike_sigmas is None
    context = _frames(rng, size=64)
    context[1, 32, 32] += 30 * 800
    context[0, 10, 50] += 30 * 800
    out = s2d.denoise_context(context)
    s2d.despike_sigmas = None  # what the network alone makes of it, and of the frames despiked beforehand
    alone = s2d.denoise_context(context)
    despiked_first = s2d.denoise_context(remove_isolated_spikes(context.copy(), 12.0))
    # the rule is the same in counts as in the network's normalised units (it scales with the frame)
    np.testing.assert_allclose(out, despiked_first, rtol=1e-3)
    assert np.abs(out - alone)[30:35, 30:35].max() > 5 * np.abs(out - alone)[:, :20].max()  # most change at the zinger


@pytest.mark.parametrize("sigmas", [6.0, 12.0])
def test_despiking_changes_only_float32_values_in_place_and_keeps_the_shape(rng, sigmas):
    frames = _frames(rng, n=2, size=40)
    before = frames.shape, frames.dtype
    remove_isolated_spikes(frames, sigmas)
    assert (frames.shape, frames.dtype) == before
