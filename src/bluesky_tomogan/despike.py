"""Isolated spikes (zingers, hot pixels, dead pixels) out of a projection network's input, on the host.

A zinger is a cosmic ray or a scattered X-ray that lights one or two detector
pixels far above their neighbours; a hot pixel does so in every frame. The
space-to-depth networks do not learn to remove them: a spike lands in one channel
of a 2x2 block and comes out as a bright, smeared 2x2 patch (PSNR 27 dB instead of
42 dB on the dose test set, ``benchmarks/space_to_depth.py``). The full-resolution
networks remove them only in part: at 1e-3 zingers per pixel (twenty times their
training data's rate) the full projection model's SSIM on held-out projections fell
from 0.9747 to 0.9497 in fp32, a neighbouring frame's zinger leaks into the output,
and on a real X-ray camera's image the light model turned 226 of 1882 bright specks
into dark dots (``benchmarks/zinger_sweep.py``, ``benchmarks/real_specks.py``;
docs/models.md, "Zingers and hot pixels"). So a model whose card asks for it
(``"input_despike": {"sigmas": k}``, every shipped projection model) gets its input
with every pixel more than ``k`` robust sigmas above the median of its 3x3
neighbourhood replaced by that median, in every frame of the context (so the centre
frame added back to the network's correction has no spike either).

The 3x3 median of a whole frame (scipy) costs more than the space-to-depth
network itself (101 ms per 3x512x512 context, ``benchmarks/despike_cost.py``),
so it is computed only where it can matter: a pixel can be a spike only if it stands
well above the mean of its four direct neighbours. A spike of two pixels (the second
at half the height or less) raises that mean for its brighter pixel by at most an
eighth of its height, and for the dimmer one by a quarter of the brighter one's,
which is half its own: the test keeps every pixel above half the threshold, so both
are found whenever the median rule would find them. A dimmer spike beside a far
brighter one (two independent hits side by side) fails that test, so the direct
neighbours of every spike found are judged by the median rule as well.

Dead pixels (0, or far below their neighbours, in every frame) are holes that a full-precision
network smears into their neighbours (held-out projections with 0.4 % of them: SSIM 0.984 -> 0.958
in fp32, ``benchmarks/hot_pixel_range.py --kind dead``). A dark pixel is taken out by the same
rule, mirrored, with one more condition: it must lie that far below all but one of its eight
neighbours (a dead pixel, or two side by side), not only below their median, because the corner
pixels of a small dense particle and the pixels of a thin wire lie below the median of their
neighbourhood too, but beside dark neighbours of their own.
"""

from __future__ import annotations

import threading

import numpy as np

__all__ = ["PROJECTION_DESPIKE_SIGMAS", "remove_isolated_spikes"]

PROJECTION_DESPIKE_SIGMAS = 12.0
"""What a projection model's card asks for unless it says otherwise (``export_model``): far enough
above the noise that no pixel of a frame without specks changes (held-out projections at 20-5000
photons/pixel: the same SSIM to four decimals, ``benchmarks/zinger_sweep.py``)."""

# Robust sigma from a subsample of the frame: the same answer (to about 1 %) for far less work.
_SIGMA_SAMPLES = 16384


def remove_isolated_spikes(frames: np.ndarray, sigmas: float) -> np.ndarray:
    """Replace pixels far above their 3x3 median (or far below all but one of their neighbours) by that median,
    in each frame of ``(n, H, W)`` (in place).

    Parameters
    ----------
    frames : numpy.ndarray
        Float32 frames ``(n, H, W)``, changed in place.
    sigmas : float
        How far above its 3x3 median, in robust sigmas of the frame's fine-scale
        variation (1.4826 times the median absolute difference between each pixel and the
        mean of its four direct neighbours), a pixel must be to count as a spike.

    Returns
    -------
    numpy.ndarray
        ``frames``, despiked.
    """
    with np.errstate(over="ignore", invalid="ignore"):  # values near float32's top: inf sums, no spike found there
        return _remove_isolated_spikes(frames, sigmas)


def _remove_isolated_spikes(frames: np.ndarray, sigmas: float) -> np.ndarray:
    height, width = frames.shape[-2:]
    # one frame at a time through two reused buffers: the whole context's padded copy and excess
    # did not stay in cache (3 x 1024 x 1024: 12.2 -> 9.6 ms, benchmarks/despike_cost.py on an AMD EPYC
    # Zen 3; the same output)
    pad, excess = _scratch((height, width), frames.dtype)
    for frame in frames:
        _pad_edge(frame, pad)
        # each pixel minus the mean of its four direct neighbours
        np.add(pad[:-2, 1:-1], pad[2:, 1:-1], out=excess)
        excess += pad[1:-1, :-2]
        excess += pad[1:-1, 2:]
        excess *= np.float32(-0.25)
        excess += frame
        sample = excess.reshape(-1)[:: max(1, excess.size // _SIGMA_SAMPLES)]
        sigma = 1.4826 * float(np.median(np.abs(sample)))
        if not np.isfinite(sigma) or sigma <= 0:
            continue  # a flat frame has nothing to stand out from
        replaced, values = [], []
        for sign in (1, -1):  # bright spikes, then dark ones (dead pixels), both judged on the frame as it was
            # flatnonzero: a tenth of nonzero's time on a mostly-False 2-D mask; compared without `sign * excess`
            # (a frame-sized temporary each: the two tests took 2.5 ms per 1024x1024 frame with them, 1.7 without)
            bound = np.float32(0.5 * sigmas * sigma)
            candidates = np.flatnonzero(excess > bound if sign > 0 else excess < -bound)
            if candidates.size == 0:
                continue
            found, median = _spikes_among(candidates, frame, pad, sigmas * sigma, sign)
            # the test above compares a pixel with the mean of its four direct neighbours, which a far
            # brighter spike beside it raises (two zingers side by side, dense hot pixels): the direct
            # neighbours of every spike found are judged by the median rule too
            # (a pixel judged twice is judged the same, on the frame as it was: no need to drop repeats)
            if found.size:
                more, more_median = _spikes_among(_direct_neighbours(found, height, width), frame, pad,
                                                  sigmas * sigma, sign)
                replaced += [found, more]
                values += [median, more_median]
        if replaced:  # (2-D indices: a strided frame is changed in place too)
            frame[np.divmod(np.concatenate(replaced), width)] = np.concatenate(values)
    return frames


_buffers = threading.local()
#: Frame shapes whose buffers a thread keeps (the most recently used): the live callback's worker despikes each
#: frame for the network and a binned copy of it for QC's registration (``qc.metrics.registration_image``).
SCRATCH_SHAPES = 3


def _scratch(shape: tuple[int, int], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """This thread's padded-frame and excess buffers for frames of ``shape``, kept between calls: a stream
    despikes one frame per call, and with two fresh frame-sized buffers each time (new pages for the allocator
    to map and the kernel to zero) a 1024x1024 frame took 10.2 ms, 5.2 ms with these (this function timed
    inside ``benchmarks/stream_cost.py``'s stream, Intel Xeon with AMX). Up to :data:`SCRATCH_SHAPES` shapes
    per thread are kept, each at most two frames' worth."""
    key = (shape, np.dtype(dtype))
    kept: dict[tuple[tuple[int, int], np.dtype], tuple[np.ndarray, np.ndarray]] | None = getattr(_buffers, "kept", None)
    if kept is None:
        kept = _buffers.kept = {}
    found = kept.pop(key, None)
    if found is None:
        found = (np.empty((shape[0] + 2, shape[1] + 2), dtype), np.empty(shape, dtype))
        while len(kept) >= SCRATCH_SHAPES:
            del kept[next(iter(kept))]  # the least recently used
    kept[key] = found  # now the most recently used
    return found


def _spikes_among(pixels: np.ndarray, frame: np.ndarray, pad: np.ndarray,
                  threshold: float, sign: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Of the flat indices ``pixels`` of ``frame``, those more than ``threshold`` above (``sign`` 1) or below
    (-1) the median of their 3x3 neighbourhood in ``pad`` (the frame as it was, edge-padded), and those
    medians."""
    rows, cols = np.divmod(pixels, frame.shape[1])
    # each pixel's 3x3 neighbourhood (padded coordinates are offset by one)
    patches = np.stack([pad[rows + dr, cols + dc] for dr in range(3) for dc in range(3)])
    ordered = np.partition(patches, (2, 4), axis=0)
    median = ordered[4]  # the 5th of 9 values (np.median's checks cost more)
    # A dark pixel must lie below all but one of its eight neighbours (a dead pixel, or two side by side), not
    # just below their median: a small dense particle's corner pixels, a thin wire's, lie below the median of
    # their neighbourhood too, but beside dark neighbours of their own.
    reference = median if sign > 0 else ordered[2]
    spike = sign * (frame[rows, cols] - reference) > threshold
    return pixels[spike], median[spike]


def _direct_neighbours(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """The flat indices of the pixels above, below, left and right of ``pixels``, inside the frame."""
    rows, cols = np.divmod(pixels, width)
    rows = np.concatenate([rows - 1, rows + 1, rows, rows])
    cols = np.concatenate([cols, cols, cols - 1, cols + 1])
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    return rows[inside] * width + cols[inside]


def _pad_edge(frame: np.ndarray, out: np.ndarray) -> None:
    """``np.pad(frame, 1, mode="edge")`` into ``out``, without allocating."""
    out[1:-1, 1:-1] = frame
    out[0, 1:-1] = frame[0]
    out[-1, 1:-1] = frame[-1]
    out[:, 0] = out[:, 1]
    out[:, -1] = out[:, -2]
