"""Zingers and hot pixels out of a projection network's input: what is a spike, what is not, and who gets it."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import median_filter

from bluesky_tomogan import load_denoiser
from bluesky_tomogan.despike import remove_isolated_spikes
from bluesky_tomogan.errors import InputValueError

from .conftest import copy_of_shipped_model


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


def test_a_dim_spike_beside_a_far_brighter_one_is_found_too(rng):
    """Two independent hits side by side (dense zingers, hot pixels): the brighter one raises the dimmer
    one's neighbour mean above it, yet the median rule finds both, and so must the despike."""
    frames = _frames(rng, n=1)
    clean = frames.copy()
    frames[0, 40, 40] += 30 * 800
    frames[0, 40, 41] += 2 * 800  # 57 sigmas of photon noise above its neighbourhood, under a quarter of 30x
    frames[0, 70, 20] += 30 * 800
    frames[0, 71, 20] += 1 * 800
    out = remove_isolated_spikes(frames, 12.0)
    for r, c in ((40, 40), (40, 41), (70, 20), (71, 20)):
        assert abs(out[0, r, c] - clean[0, r, c]) < 6 * np.sqrt(800), (r, c)


def _cross_mean(frame):
    p = np.pad(frame, 1, mode="edge")
    h, w = frame.shape
    return (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:]) / 4


@pytest.mark.parametrize("name", ["tomogan-projection", "tomogan-projection-light", "tomogan-projection-aio",
                                  "tomogan-projection-s2d-aio"])
def test_every_shipped_projection_model_despikes_its_input(rng, name):
    den = load_denoiser(name, backend="onnxruntime")
    assert den.despike_sigmas == 12.0
    if den.card.ratios:
        assert load_denoiser(name, backend="onnxruntime", ratio=50).despike_sigmas == 12.0
    clean = _frames(rng, n=den.depth, size=64)
    context = clean.copy()
    context[den.depth // 2, 32, 32] += 30 * 800
    context[0, 10, 50] += 30 * 800
    out = den.denoise_context(context)
    reference = den.denoise_context(clean)
    den.despike_sigmas = None  # what the network alone makes of it, and of the frames despiked beforehand
    despiked_first = den.denoise_context(remove_isolated_spikes(context.copy(), 12.0))
    # the rule is the same in counts as in the network's normalised units (it scales with the frame)
    np.testing.assert_allclose(out, despiked_first, rtol=1e-3)
    # the frame as if the zingers had not been there (at the zinger the centre frame's 3x3 median
    # stands in for its value, which the output keeps: within the noise)
    assert np.abs(out - reference).max() < 4 * np.sqrt(800)


@pytest.mark.parametrize("name", ["tomogan-slice", "tomogan-slice-light"])
def test_slice_models_do_not_despike(name):
    """A zinger becomes a streak after reconstruction, not a speck: nothing for the rule to find."""
    assert load_denoiser(name, backend="onnxruntime").despike_sigmas is None


@pytest.mark.parametrize("name", ["tomogan-projection", "tomogan-projection-light"])
def test_dense_specks_in_every_frame_of_the_context_leave_no_trace(rng, name):
    """Zingers and hot pixels at 0.5 % of the pixels of every frame (a lab camera over a long exposure
    has 0.7 %; the training data 0.005 %): the output is the one without them, where without the
    despike the full-resolution networks leave specks, turn some into dark dots, and leak the
    neighbours' into the frame (benchmarks/zinger_sweep.py, benchmarks/real_specks.py)."""
    den = load_denoiser(name, backend="onnxruntime", precision="fp32")
    clean = _frames(rng, n=den.depth, size=96)
    specked = clean.copy()
    hits = rng.random(clean.shape) < 5e-3
    specked[hits] += 800 * rng.uniform(1, 30, int(hits.sum())).astype(np.float32)
    reference = den.denoise_context(clean)
    despiked = den.denoise_context(specked)
    den.despike_sigmas = None
    alone = den.denoise_context(specked)
    noise = np.sqrt(800)
    # a despiked pixel keeps its 3x3 median where the frame had its own noisy value: within the noise
    assert np.abs(despiked - reference).max() < 4 * noise
    assert np.abs(alone - reference).max() > 10 * noise  # what the test guards against is there to see
    # a neighbour's speck that lands nowhere near one of the centre frame's still comes through without it
    neighbours_only = hits.any(axis=0) & ~hits[den.depth // 2]
    assert np.abs(alone - reference)[neighbours_only].max() > 2 * noise


@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_hot_pixels_above_half_a_percent_leave_the_frames_range_and_its_denoising_alone(rng, precision):
    """Hot pixels at 1 % of a 16-bit detector's pixels, at its top value in every frame: spikes come out before
    the frame's range is taken. Taken with them, the top percentile was the hot pixels' value, the real
    range a sliver of the network's input, and int8 lost it (SSIM 0.98 -> 0.70 at 1000 photons)."""
    den = load_denoiser("tomogan-projection", backend="auto" if precision == "auto" else "onnxruntime",
                        precision=precision)
    clean = _frames(rng, n=den.depth, size=96)
    hot = rng.random(clean.shape[-2:]) < 0.01
    with_hot = clean.copy()
    with_hot[:, hot] = 65535.0
    reference, out = den.denoise_context(clean), den.denoise_context(with_hot)
    assert np.abs(out - reference)[~hot].max() < 2 * np.sqrt(800)  # the noise is ~28 counts
    assert out[hot].max() < 2 * 1100  # each hot pixel its neighbourhood's median, denoised


def test_dead_pixels_are_taken_out_and_a_small_dense_particles_corners_are_not(rng):
    """Dead pixels (0 in every frame) where they stand out, 0.3 % of the pixels: the full-precision network smeared
    each into its neighbours (held-out projections, 0.4 %: SSIM 0.984 -> 0.958 in fp32). A dark pixel counts only
    below all but one of its eight neighbours: the corners of the small dense disc of ``_frames`` (radius 3) lie
    below their neighbourhood's median but beside dark neighbours, and stay."""
    den = load_denoiser("tomogan-projection", backend="onnxruntime", precision="fp32")
    clean = _frames(rng, n=den.depth, size=96)
    bright = clean.min(axis=0) > 600  # where 0 is far below the neighbours (12 robust sigmas)
    dead = bright & (rng.random(bright.shape) < 0.003)
    with_dead = clean.copy()
    with_dead[:, dead] = 0.0
    reference, out = den.denoise_context(clean), den.denoise_context(with_dead)
    assert dead.sum() >= 10
    assert np.abs(out - reference)[~dead].max() < 2 * np.sqrt(800)
    den.despike_sigmas = None
    assert np.abs(den.denoise_context(with_dead) - reference)[~dead].max() > 4 * np.sqrt(800)  # what it guards against
    assert np.array_equal(remove_isolated_spikes(clean.copy(), 12.0), clean)  # the disc's corners included


def test_a_projection_model_is_exported_despiking_its_input_and_a_slice_model_is_not(tmp_path, tiny_dataset):
    import json

    from bluesky_tomogan.export.pipeline import export_model

    src = copy_of_shipped_model("tomogan-projection", tmp_path / "src")
    card_path = src / "tomogan-projection.json"
    card = json.loads(card_path.read_text())
    del card["input_despike"]  # a projection model trained anew: its card says nothing
    card_path.write_text(json.dumps(card))
    out = export_model(src, tmp_path / "out", tiny_dataset, formats=("onnx",), measure=False)
    assert json.loads(out.read_text())["input_despike"]["sigmas"] == 12.0
    assert load_denoiser(out.parent, backend="onnxruntime").despike_sigmas == 12.0
    slice_src = copy_of_shipped_model("tomogan-slice", tmp_path / "slice")
    out = export_model(slice_src, tmp_path / "slice-out", tiny_dataset, formats=("onnx",), measure=False)
    assert "input_despike" not in json.loads(out.read_text())


@pytest.mark.parametrize("sigmas", [6.0, 12.0])
def test_despiking_changes_only_float32_values_in_place_and_keeps_the_shape(rng, sigmas):
    frames = _frames(rng, n=2, size=40)
    before = frames.shape, frames.dtype
    remove_isolated_spikes(frames, sigmas)
    assert (frames.shape, frames.dtype) == before


def test_a_stream_despikes_each_frame_once_and_gets_what_each_context_alone_gets(rng, monkeypatch):
    """Each frame of a stream is in ``depth`` contexts; named by ``frame_keys`` (the live callback) or
    in a stack (``denoise``), it is despiked once, and the output is the same as despiking every
    context anew, masked pixels (a 16-bit detector's top value) included."""
    import bluesky_tomogan.inference.denoiser as denoiser_module

    den = load_denoiser("tomogan-projection-light", backend="onnxruntime")
    n, depth = 9, den.depth
    stack = _frames(rng, n=n, size=64)
    stack[rng.random(stack.shape) < 3e-3] += 20 * 800  # zingers
    stack = np.round(stack).astype(np.uint16)
    stack[:, 5, 7] = np.iinfo(np.uint16).max  # a masked pixel in every frame
    calls = []
    real = denoiser_module.remove_isolated_spikes
    monkeypatch.setattr(denoiser_module, "remove_isolated_spikes",
                        lambda frames, sigmas: calls.append(len(frames)) or real(frames, sigmas))
    half = depth // 2
    windows = [np.clip(np.arange(i - half, i + half + 1), 0, n - 1) for i in range(half, n - half)]
    alone = [den.denoise_context(stack[w]) for w in windows]
    assert sum(calls) == depth * len(windows)
    calls.clear()
    run = object()  # keys are the process's: unique to this stream
    keyed = [den.denoise_context(stack[w], frame_keys=[(run, int(j)) for j in w]) for w in windows]
    assert sum(calls) == n  # each frame once
    for a, k in zip(alone, keyed, strict=True):
        np.testing.assert_array_equal(a, k)
    assert keyed[0][5, 7] == np.iinfo(np.uint16).max  # the raw value where the detector has no data
    assert 0 < len(denoiser_module._despiked) <= denoiser_module.CONDITIONED_FRAMES  # bounded
    frame_bytes = stack[0].astype(np.float32).nbytes
    for frames, budget in ((3, 10 * frame_bytes), (10, 3 * frame_bytes)):  # by count, and by bytes
        small = denoiser_module._FrameCache(frames, budget)
        for j in range(5):
            small.put(j, stack[j].astype(np.float32))
        assert len(small) == 3 and small.nbytes == 3 * frame_bytes
        assert small.get(1) is None and small.get(2) is not None  # the oldest went first
    calls.clear()
    whole = den.denoise(stack)
    assert sum(calls) == n
    np.testing.assert_array_equal(whole[half : n - half], np.stack(alone))
    with pytest.raises(InputValueError, match="one per frame of the context"):
        den.denoise_context(stack[:depth], frame_keys=[1, 2])


def test_a_thread_keeps_its_buffers_for_the_frames_and_the_binned_copies_it_despikes_in_turn(rng):
    # the live worker despikes each frame for the network and a binned copy of it for QC's registration:
    # a thread that kept one shape's buffers made fresh frame-sized ones at every turn
    from bluesky_tomogan import despike

    frames = [rng.poisson(300, (1, h, w)).astype(np.float32) for h, w in ((64, 96), (32, 48), (64, 96))]
    expected = [remove_isolated_spikes(f.copy(), 12) for f in frames]
    first = despike._scratch((64, 96), np.dtype(np.float32))
    for f, want in zip(frames, expected, strict=True):
        np.testing.assert_array_equal(remove_isolated_spikes(f, 12), want)
    assert all(a is b for a, b in zip(despike._scratch((64, 96), np.dtype(np.float32)), first, strict=True))
    for shape in [(8 + k, 8) for k in range(despike.SCRATCH_SHAPES)]:  # as many other shapes as it keeps
        despike._scratch(shape, np.dtype(np.float32))
    assert despike._scratch((64, 96), np.dtype(np.float32))[0] is not first[0]  # the least recently used went
