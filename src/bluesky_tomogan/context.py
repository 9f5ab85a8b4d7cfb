"""Which neighbours of a frame may serve as its context.

A network that reads adjacent frames (projections at neighbouring angles, neighbouring
slices) averages what they share with the frame it denoises. Given frames that are not
views of the same thing (a stack of projections of different samples, a golden-angle or
interlaced scan stored in acquisition order, a sample that jumped, a closed shutter) it
would paint their structure into the output: frames of three different phantoms, stacked,
came out at SSIM 0.45 (medium samples, 20 photons/pixel) and 0.46 (ordinary samples, 5000
photons, where the raw frames score 0.96); each frame on its own, with a network trained for
it, scores 0.77 and 0.99 (docs/models.md, "Context that is not a neighbour").

:func:`gate_context` compares each neighbour with the centre frame on coarse grids (means of
8x8 and 16x16 blocks: the two scales tell structure from noise, see :class:`_Centre`) and
keeps, on each side, the nearest neighbours up to the first whose structure differs from the
centre's by more than ``threshold`` of the centre's own, or whose change from the centre stands more
than ``noise_ratio`` times above the photon noise of the two, measured in time (:func:`change_to_noise`:
a change the noise does not hide, which at high doses costs more than the neighbour's noise gains). The
rest are replaced as at a scan's ends (:func:`~bluesky_tomogan.frames.context_offsets`). Training
withholds neighbours the same way (``TrainConfig.context_dropout``), so the network has
learnt what to do with the stand-ins.
"""

from __future__ import annotations

import numpy as np

from .frames import context_offsets, usable_reach
from .normalise import robust_range

__all__ = ["BLOCK", "DEFAULT_NOISE_RATIO", "DEFAULT_THRESHOLD", "GAIN_TOLERANCE", "change_to_noise",
           "context_distance", "context_gains", "gate_context", "neighbour_gains", "usable_neighbours"]

BLOCK = 8
"""Edge of the small blocks whose means are compared (pixels); the large ones are twice as wide."""

DEFAULT_THRESHOLD = 0.2
"""Largest structural difference, as a share of the centre frame's own structure, that a
neighbour may have. Views of other samples lie above 0.36 on simulated scans (docs/models.md, "Context that is
not a neighbour", session 33, which set 0.35). Under rotation a neighbour's features far from the axis move by
their radius times the step, and beyond about 0.2 the moved features cost more than the averaged noise gains:
0.35 -> 0.2 raised the shipped projection model's mean SSIM over 48 simulated settings from 0.9423 to 0.9456
(samples 1.8 fields of view across at 2-4 degree steps by up to 0.07), left every setting whose neighbours lie
below 0.1 as it was (samples inside the view) and the 15 cells of ``benchmarks/dose_sweep.py`` to the last digit
(``python benchmarks/context_motion.py``; docs/models.md, "Neighbours the rotation has moved", session 72)."""

DEFAULT_NOISE_RATIO = 0.5
"""Largest change of a neighbour from the centre frame, over the photon noise of the two (:func:`change_to_noise`),
that a kept neighbour may have. The network gains from a neighbour's noise and pays for its moved features; the
structural distance (:data:`DEFAULT_THRESHOLD`) measures the second only, as a share of the frame's structure, and
so kept neighbours at high doses whose every change stands out of the little noise there (a sample inside the view
at 4-degree steps and 10,000 photons/pixel: 0.9697 SSIM with them, 0.9951 alone). With this second limit the
shipped projection model's mean SSIM over 96 simulated settings (30-10,000 photons/pixel, steps 0.5-4 degrees,
samples inside and 1.8 fields of view across) rose from 0.9322 to 0.9362 (1000 photons 0.9636 -> 0.9675, 10,000
0.9763 -> 0.9885; 30 and 100 unchanged); 0.15 / 0.3 / 1 / 2 gave 0.9360 / 0.9364 / 0.9339 / 0.9338
(``python benchmarks/context_motion.py``). 0.5 rather than 0.3: on the dose sweep's ordinary samples at 250
photons/pixel 0.3 cost 0.0020 SSIM, 0.5 0.0004 (docs/models.md, "Neighbours whose change the noise does not hide",
session 73)."""

GAIN_TOLERANCE = 0.01
"""How far a neighbour's gain (:func:`neighbour_gains`) may stand from 1 before :func:`context_gains` brings it
to the centre's intensity: in the held-out scans of the dose sweeps (15 cells, 20-5000 photons/pixel, up to
strongly absorbing samples) it stays within 0.35 % (``benchmarks/beam_flicker.py``), so only a change of the
beam (a top-up, a flickering monochromator) goes beyond it."""

_MIN_LARGE_BLOCKS = 64  # fewer (a frame under 128 x 128 pixels) give too unsteady an estimate to judge by
_BANDS = 8  # bands of large blocks compared: an eighth of a 1024-row frame, 512 blocks, enough to decide


def _sampled_bands(frame: np.ndarray) -> np.ndarray:
    """A view of the bands of large blocks that are compared: about ``_BANDS`` of them, evenly spread."""
    big = 2 * BLOCK
    n_bands, w = frame.shape[0] // big, (frame.shape[1] // big) * big
    bands = frame[: n_bands * big, :w].reshape(n_bands, big, w)
    return bands[:: max(1, n_bands // _BANDS)]


def _normalised(bands: np.ndarray, offset: float, scale: float, gain: float = 1.0) -> np.ndarray:
    """The ``bands`` times ``gain``, in units of the robust range ``(offset, scale)``, float32; pixels far outside it
    (zingers, hot pixels) clipped."""
    x = bands.astype(np.float32)
    x *= np.float32(gain / scale)
    x -= np.float32(offset / scale)
    np.clip(x, -0.5, 1.5, out=x)
    return x


def _block_means(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Means of ``BLOCK``- and ``2 * BLOCK``-wide blocks of the :func:`_normalised` bands ``x``."""
    n, big, w = x.shape
    # rows first, then columns: two reductions numpy vectorises, 6x faster than one mean over the
    # block's two axes (1024-wide bands); float32 sums of 8 values of at most 1.5 lose nothing here
    rows = x.reshape(2 * n, BLOCK, w).sum(axis=1)
    small = rows.reshape(2 * n, w // BLOCK, BLOCK).sum(axis=2, dtype=np.float64) / BLOCK**2
    large = small.reshape(n, 2, w // big, 2).mean(axis=(1, 3))
    return small, large


def _variance(x: np.ndarray) -> float:
    """The variance of ``x`` (float32), as mean square minus squared mean: a dot product, no centred copy."""
    flat = x.reshape(-1)
    mean = float(flat.mean(dtype=np.float64))
    return float(np.dot(flat, flat)) / flat.size - mean**2


def _fine_noise(x: np.ndarray) -> float:
    """A frame's noise variance by its finest scale (:func:`_normalised` bands): white noise averaged over 2 x 2
    pixels keeps a quarter of its variance, structure coarser than that all of it. Too low where a detector's blur
    correlates the noise across pixels, too high where the frame has edges sharper than two pixels."""
    n, h, w = x.shape
    d = x[:, : h // 2 * 2, : w // 2 * 2]
    pairs = d[:, 0::2, 0::2] + d[:, 1::2, 0::2] + d[:, 0::2, 1::2] + d[:, 1::2, 1::2]  # 4x the 2 x 2 means
    return max(4 * (_variance(d) - _variance(pairs) / 16) / 3, 0.0)


_NOISE_CAP = 3.0
"""How far above the centre frame's :func:`_fine_noise` the noise measured in time may stand. On simulated scans
(blur up to 1.5 px, 20-5000 photons/pixel, every sample set) it stood at most 1.67x above it at steps up to 3.75
degrees and 2.5x at 7.5 degrees; at 15 degrees (beyond the 4 degrees within which the callback keeps neighbours
where it knows the angles) the second differences hold the views' changes and reach the cap (``python
benchmarks/context_gate.py``, its last column). Views that are not neighbours at all raise the second differences
without bound; the cap keeps their changes from passing for noise."""


def _frame_noise(frames: list[np.ndarray | None], centre: np.ndarray) -> float | None:
    """The photon noise variance of one frame of a context (:func:`_normalised` bands in order of angle; ``None``
    for a frame too unlike the centre to compare; ``centre`` the middle one's), from its second differences in
    time: for three views in a row ``a - 2 b + c`` holds six times a frame's noise and, for steady motion, little
    else; whatever the noise's correlation across pixels (a detector's blur), since no scale is assumed. The
    smallest over each three in a row that are distinct frames (a stand-in repeats a frame), at most
    :data:`_NOISE_CAP` times the centre's :func:`_fine_noise`; ``None`` where there are no such three."""
    best = None
    for a, b, c in zip(frames, frames[1:], frames[2:], strict=False):
        if a is None or b is None or c is None or _same(a, b) or _same(b, c) or _same(a, c):
            continue
        second = np.subtract(a, b)  # a - 2 b + c without a temporary for 2 b
        second -= b
        second += c
        noise = _variance(second) / 6
        best = noise if best is None else min(best, noise)
    return None if best is None else min(best, _NOISE_CAP * _fine_noise(centre))


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two frames' bands are one frame (a stand-in); their first rows tell almost every pair apart."""
    return np.array_equal(a[0, 0], b[0, 0]) and np.array_equal(a, b)


def _change_to_noise(difference: np.ndarray, noise: float | None) -> float:
    """How much of a ``difference`` of a neighbour and the centre (:func:`_normalised` bands) is a change of the
    picture rather than photon noise, the two frames' ``noise`` (each frame's variance, :func:`_frame_noise`):
    the variance left beyond the noise, over the noise. NaN without a noise estimate."""
    if noise is None:
        return np.nan
    change = _variance(difference) - 2 * noise
    if change <= 0:
        return 0.0
    return change / (2 * noise) if noise > 0 else np.inf


def context_distance(neighbour: np.ndarray, centre: np.ndarray) -> float:
    """How unlike ``centre`` a ``neighbour`` is: the structural difference of their block means
    as a share of the centre's own structure, the part that noise explains taken off.

    About 0 for a frame and itself or a nearby view of the same object; about 1 or more for
    a view of something else. Both frames in the units of the centre's robust range, so a
    change of gain (beam decay) counts only as far as it changes the picture. A frame with
    fewer than 64 blocks of 16 x 16 pixels (under 128 x 128) is too small to judge: 0.
    """
    return _Centre(centre).distance(neighbour)


class _Centre:
    """The centre frame's block means and structure, computed once for all its neighbours.

    Noise is told from structure by its scale: averaged over a block four times larger, white
    noise keeps a quarter of its variance and structure (coarser than a block) all of it. So
    for two variances ``v`` (small blocks) and ``V`` (large), ``(4 V - v) / 3`` is the
    structure's part whatever the noise level, photon statistics, gain or detector blur
    (a blur of a pixel or two leaves block means of noise uncorrelated).
    """

    def __init__(self, centre: np.ndarray, offset: float | None = None, scale: float | None = None) -> None:
        big = 2 * BLOCK
        self.small_frame = (centre.shape[0] // big) * (centre.shape[1] // big) < _MIN_LARGE_BLOCKS
        if self.small_frame:
            return
        self.offset, self.scale = robust_range(centre) if offset is None or scale is None else (offset, scale)
        bands = _sampled_bands(centre)
        self.mean = float(np.mean(bands, dtype=np.float64))
        self.x = _normalised(bands, self.offset, self.scale)
        self.small, self.large = _block_means(self.x)
        # a frame with almost no structure of its own (open beam): its neighbours cannot differ much
        self.structure = max(_structure(float(self.small.var()), float(self.large.var())), 1e-4)

    def distance(self, neighbour: np.ndarray) -> float:
        return 0.0 if self.small_frame else self.distance_of(self.normalised(neighbour))

    def normalised(self, neighbour: np.ndarray) -> np.ndarray | None:
        """The sampled bands of ``neighbour`` in the centre's units and on its gain; ``None`` for a frame half or
        twice as bright (a closed shutter, a beam dump) or NaN."""
        bands = _sampled_bands(neighbour)
        # the neighbour on the centre's gain (beam decay, top-up, a brighter flat): the gate asks
        # whether it shows the same thing, not whether it is as bright
        # (intensities only: a reconstructed slice's mean can be 0 or below)
        gain = 1.0
        if self.mean > 0:
            mean = float(np.mean(bands, dtype=np.float64))
            if not 0.5 * self.mean < mean < 2 * self.mean:
                return None
            gain = self.mean / mean
        return _normalised(bands, self.offset, self.scale, gain)

    def distance_of(self, x: np.ndarray | None) -> float:
        """:func:`context_distance` of a :meth:`normalised` neighbour."""
        if x is None:
            return np.inf
        small, large = _block_means(x)
        change = _structure(float(np.mean((small - self.small) ** 2)), float(np.mean((large - self.large) ** 2)))
        return float(np.sqrt(max(change, 0.0) / self.structure)) if np.isfinite(change) else np.inf


def _structure(small: float, large: float) -> float:
    """The structural part of a variance measured over small (``small``) and large (``large``) blocks."""
    return (4 * large - small) / 3


def _normalised_context(context: np.ndarray,
                        centre_range: tuple[float, float] | None) -> tuple[_Centre, list[np.ndarray | None]]:
    """The centre of ``context`` ``(depth, H, W)`` and every frame's :meth:`_Centre.normalised` bands (the centre's
    own for it); no frames for a frame too small to judge."""
    half = context.shape[0] // 2
    centre = _Centre(context[half], *(centre_range or (None, None)))
    if centre.small_frame:
        return centre, []
    return centre, [centre.x if o == half else centre.normalised(context[o]) for o in range(context.shape[0])]


def change_to_noise(context: np.ndarray, centre_range: tuple[float, float] | None = None) -> np.ndarray:
    """For each frame of ``context`` ``(depth, H, W)``, how far it has changed from the centre frame against the
    photon noise: the variance of their difference beyond what the two frames' noise explains, over that noise.

    The noise is measured in time, from second differences of frames in a row (views of a scan at steady steps),
    so a detector's blur, which correlates the noise across pixels, does not pass for a change. About 0 for
    exposures of the same view at any dose; it grows with the dose for a view that has moved, whose change the
    noise hides less and less. 0 for the centre and for every frame of a context under 128 x 128 pixels; NaN
    where the context holds no three distinct frames in a row to measure the noise by (stand-ins repeat frames),
    and inf for a frame half or twice as bright as the centre.
    """
    centre, frames = _normalised_context(context, centre_range)
    if centre.small_frame:
        return np.zeros(context.shape[0])
    noise, half = _frame_noise(frames, centre.x), context.shape[0] // 2
    return np.array([0.0 if o == half else np.inf if x is None else _change_to_noise(x - centre.x, noise)
                     for o, x in enumerate(frames)])


def usable_neighbours(context: np.ndarray, threshold: float = DEFAULT_THRESHOLD,
                      centre_range: tuple[float, float] | None = None,
                      noise_ratio: float = DEFAULT_NOISE_RATIO) -> tuple[int, int]:
    """How many neighbours before and after the centre of ``context`` ``(depth, H, W)`` are
    close enough to it (:func:`context_distance` at most ``threshold`` and :func:`change_to_noise` at most
    ``noise_ratio``, where the context lets the noise be measured), counting outwards and stopping at the first
    that is not. ``centre_range``: the centre's robust range, if known."""
    half = context.shape[0] // 2
    centre, frames = _normalised_context(context, centre_range)
    if centre.small_frame:
        return half, half
    noise = _frame_noise(frames, centre.x) if noise_ratio < np.inf else None

    def close(offset: int) -> bool:
        x = frames[half + offset]
        if centre.distance_of(x) > threshold:  # (inf for a frame too unlike the centre to normalise: x None)
            return False
        # without a measure of the noise (fewer than three distinct frames in a row) the distance alone decides
        return noise is None or x is None or not _change_to_noise(x - centre.x, noise) > noise_ratio

    return usable_reach(half, close)


def gate_context(context: np.ndarray, threshold: float = DEFAULT_THRESHOLD,
                 centre_range: tuple[float, float] | None = None,
                 noise_ratio: float = DEFAULT_NOISE_RATIO) -> tuple[np.ndarray, tuple[int, int]]:
    """``context`` with the neighbours that are not views of the same thing replaced.

    Parameters
    ----------
    context : numpy.ndarray
        ``(depth, H, W)`` frames without NaN, the one to denoise in the middle.
    threshold : float
        Largest :func:`context_distance` a kept neighbour may have (``inf``: keep all).
    centre_range : tuple of float, optional
        The centre frame's :func:`~bluesky_tomogan.normalise.robust_range`, when the caller has it.
    noise_ratio : float
        Largest :func:`change_to_noise` a kept neighbour may have (``inf``: by ``threshold`` alone).

    Returns
    -------
    numpy.ndarray
        The context to give the network: ``context`` itself when every neighbour is kept,
        else a new array whose withheld neighbours are stand-ins
        (:func:`~bluesky_tomogan.frames.context_offsets`).
    tuple of int
        Neighbours kept before and after the centre.
    """
    depth = context.shape[0]
    half = depth // 2
    if depth == 1 or threshold == np.inf:
        return context, (half, half)
    left, right = usable_neighbours(context, threshold, centre_range, noise_ratio)
    if left == right == half:
        return context, (left, right)
    return context[[half + o for o in context_offsets(depth, left, right)]], (left, right)


def neighbour_gains(context: np.ndarray) -> np.ndarray | None:
    """Per frame of ``context`` ``(depth, H, W)``, the factor by which the centre frame is brighter: the median,
    over the large blocks :func:`gate_context` compares, of the ratio of the centre's block mean to the frame's
    (the beam scales every block alike, while rotation brightens some and darkens others). ``None`` where a
    block mean is not above 0 (a reconstructed slice, a dark frame)."""
    blocks = [_large_block_means(frame) for frame in context]
    centre = blocks[context.shape[0] // 2]
    if not all(np.all(b > 0) for b in blocks):
        return None
    return np.array([float(np.median(centre / b)) for b in blocks])


def context_gains(context: np.ndarray) -> np.ndarray | None:
    """:func:`neighbour_gains`, where a neighbour's differs from 1 by more than :data:`GAIN_TOLERANCE` (the
    others set to 1); ``None`` where none does.

    A projection network reads its neighbours' intensities as evidence of the centre's: given neighbours 5 %
    brighter (the beam brighter for them), the shipped projection model returned the centre 3.1-3.4 % brighter
    (``benchmarks/beam_flicker.py``). The beam's intensity scales a whole frame, so each such neighbour is
    scaled by its gain. The camera's dark offset is scaled too, and it holds the blocks behind a dense sample
    near their offset: at a low dose the gain measured falls short of the beam's change (at 100
    photons/pixel over an offset of 100 counts, 3.4 % of bias is left at 0.4 %, and a 2 % change is not seen).
    """
    if context.shape[0] == 1:
        return None
    gains = neighbour_gains(context)
    if gains is None or np.all(np.abs(gains - 1) <= GAIN_TOLERANCE):
        return None
    gains[np.abs(gains - 1) <= GAIN_TOLERANCE] = 1.0
    return gains


def _large_block_means(frame: np.ndarray) -> np.ndarray:
    """Means of the ``2 * BLOCK``-wide blocks of :func:`_sampled_bands` (of the whole frame, one block, if it is
    smaller), float64."""
    big = 2 * BLOCK
    if min(frame.shape) < big:
        return np.array([float(np.mean(frame, dtype=np.float64))])
    bands = _sampled_bands(frame)
    n, _, w = bands.shape
    return bands.reshape(n, big, w // big, big).mean(axis=(1, 3), dtype=np.float64).ravel()
