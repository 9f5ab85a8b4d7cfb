"""Per-frame QC metrics: cheap enough for every frame (a few ms on a 512x512 frame, see docs/qc.md).

Raw-frame metrics (:func:`frame_metrics`) say whether the frame is worth
keeping: noise and SNR, intensity against a running reference (beam loss, a
closed shutter), saturated, dead and non-finite pixels, and the shift against
the previous good frame (sample motion). Residual metrics
(:func:`residual_metrics`) say whether the denoiser removed noise or signal:
the noise it removed should be white, so a residual (raw minus denoised) with
spatial structure means the frame is outside what the model learned; and photon
noise is new in every frame, so a residual that repeats in the next frame is
signal too, even when it is white (a sample's fine texture, a detector's fixed
pattern: the denoiser flattened them as if they were noise).
"""

from __future__ import annotations

import functools
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import numpy as np
import scipy.fft
from scipy.ndimage import label, uniform_filter

from ..despike import PROJECTION_DESPIKE_SIGMAS, remove_isolated_spikes
from ..masked import fill_masked, masked_pixels, missing_pixels

__all__ = ["DeadBefore", "FrameMetrics", "IntensityReference", "beside_another", "dead_fraction", "dead_pixels",
           "frame_metrics", "residual_metrics", "flat_noise_correlation", "white_noise_variance", "PhotonTransfer",
           "fixed_pattern", "registration_noise", "large_scale_noise",
           "noise_sigma", "shift_px", "registration_image", "registered_shift", "registered_offset",
           "rotation_allowance", "motion_px", "PreviousResidual", "residual_specks", "narrower_top", "signal_to_noise",
           "UNITS"]

#: Units of each metric, for the data keys of the derived stream.
UNITS: dict[str, str] = {
    "noise_sigma": "counts", "snr": "", "intensity_ratio": "", "saturated_fraction": "", "dead_fraction": "",
    "nonfinite_fraction": "", "shift_px": "pixel", "motion_px": "pixel", "removed_sigma": "counts",
    "residual_correlation": "", "noise_correlation": "", "residual_structure": "", "residual_repeat": "",
    "denoised_noise_sigma": "counts", "camera_noise_sigma": "counts", "latency_s": "s",
}
#: ``residual_repeat`` clips each residual at so many robust sigmas (hot pixels: :class:`PreviousResidual`).
REPEAT_CLIP = 3.0
_REPEAT_SAMPLES = 65536  # the median and robust sigma of a residual from a subsample: the same to about 1 %
#: A residual pixel this many robust sigmas off its median (photon noise: about once in 10**15 pixels), in a
#: group of at most ``SPECK_PIXELS`` such pixels, is a despiked speck (:func:`residual_specks`).
SPECK_SIGMAS = 8.0
SPECK_PIXELS = 4
# Far pixels above this share of a frame are not specks but what the denoiser removed: all kept.
_SPECK_SHARE = 0.05
_SPECK_SAMPLES = 16384
#: :func:`noise_sigma` leaves out responses this many robust sigmas from 0: specks (zingers, hot pixels), not noise.
NOISE_OUTLIER_SIGMAS = 8.0
_NOISE_SAMPLES = 16384
#: :func:`white_noise_variance` sums a camera noise's autocovariance over lags up to this many pixels each way: a
#: scintillator's blur spreads each photon's light over a few pixels (a Gaussian of sigma 1.2 pixel correlates
#: the noise over a Gaussian of sigma 1.7, all but 0.3 % of it within 5 pixels each way).
NOISE_LAGS = 5
#: :func:`white_noise_variance` reads at most this many rows and columns, from the middle of the frames.
_TRANSFER_CROP = 512
#: A camera whose noise correlates this much between neighbouring pixels (lag 1, :func:`flat_noise_correlation`)
#: blurs: :func:`noise_sigma` reads its noise low, and the SNR takes the photon transfer's too (white noise reads
#: -0.01 to 0.01 on simulated 64x64 flats; a blur of sigma 0.4 pixel 0.07-0.09 at 25-1000 photons per pixel, one
#: of 0.35 pixel 0.03-0.04, where :func:`noise_sigma` reads up to 15 % low: ``benchmarks/qc_camera_blur.py``).
BLURRING_CORRELATION = 0.05
#: :func:`fixed_pattern` takes a flat's local mean over this many pixels square: the pixel-scale pattern is what
#: stands out of it.
PATTERN_WINDOW = 5
#: :func:`fixed_pattern` clips the pattern at this share of the local mean either way: a hot or dead pixel is no gain.
PATTERN_CLIP = 0.5
#: Mean intensity of so many recent good frames is the reference for beam loss.
REFERENCE_FRAMES = 10
#: Frames are binned by this factor before registration: a fraction of the cost, sub-pixel shifts still seen.
REGISTRATION_BIN = 2
#: Rings of spatial frequency (from 0 to the Nyquist frequency along an axis) over which registration averages
#: two images' power to weigh each frequency by the coherence their signal allows.
REGISTRATION_RINGS = 64
#: Standard deviations above the noise maximum a correlation peak needs to count as a match.
PEAK_MARGIN = 3.5
#: Recent sideways shifts between neighbouring frames that :func:`rotation_allowance` learns from.
SIDEWAYS_HISTORY = 16
#: A sideways shift up to this many times the median of the recent ones is what rotation does on this scan.
ROTATION_SPREAD = 3.0
#: A frame with fewer pixels alive than this share of the detector (a photon counter's dark frame) says nothing
#: of where the light falls: :func:`dead_fraction` keeps the last frame with light to compare with.
LIVE_FLOOR = 0.01


_F = TypeVar("_F", bound=Callable[..., Any])


def _quiet(func: _F) -> _F:
    """``func`` without numpy's overflow and invalid-value warnings: frames near or beyond float32's top (a float
    detector's 3e38 counts) overflow its sums and leave NaN in FFTs, and their metrics say so (inf, NaN: flagged);
    the warnings would only reach the user's console. (A fresh ``np.errstate`` per call: numpy 1.x keeps a shared
    one's state on the instance, which nested calls and threads would overwrite.)"""

    @functools.wraps(func)
    def quiet(*args: Any, **kwargs: Any) -> Any:
        with np.errstate(over="ignore", invalid="ignore"):
            return func(*args, **kwargs)

    return cast(_F, quiet)


@dataclass
class FrameMetrics:
    """QC metrics of one frame (NaN where a metric could not be computed)."""

    noise_sigma: float = math.nan
    snr: float = math.nan
    intensity_ratio: float = math.nan
    saturated_fraction: float = math.nan
    dead_fraction: float = math.nan
    nonfinite_fraction: float = math.nan
    shift_px: float = math.nan
    motion_px: float = math.nan
    removed_sigma: float = math.nan
    residual_correlation: float = math.nan
    noise_correlation: float = math.nan
    residual_structure: float = math.nan
    residual_repeat: float = math.nan
    denoised_noise_sigma: float = math.nan
    #: The noise a frame of this mean has on this camera, from its flats' and darks' photon transfer
    #: (:class:`PhotonTransfer`); NaN where the run gave none.
    camera_noise_sigma: float = math.nan
    latency_s: float = math.nan
    #: Mean of the pixels that hold intensities (finite, not masked): what the beam-loss reference
    #: keeps. Not a column of the derived stream (not in :data:`UNITS`).
    mean: float = math.nan

    def as_dict(self) -> dict[str, float]:
        """The metrics that are columns of the derived stream (:data:`UNITS`)."""
        return {k: getattr(self, k) for k in UNITS}


@dataclass
class IntensityReference:
    """Median mean intensity of the last good frames of one stream (the beam-loss reference), per second of
    exposure where the frames' exposure times are known: a plan that halves the exposure of a saturated
    frame (``adjust``) three times over does not make the next frame look like a beam loss."""

    size: int = REFERENCE_FRAMES
    means: deque[float] = field(default_factory=deque)
    exposures: deque[float] = field(default_factory=deque)  # each mean's exposure time (1.0: not known)

    def ratio(self, mean: float, dark: float = 0.0, exposure: float | None = None) -> float:
        """``mean`` over the reference, both above the dark offset ``dark`` and per unit of exposure time
        (``exposure``, s; ``None``: not known); 1.0 while there is no reference."""
        if not self.means:
            return 1.0
        rates = [(m - dark) / t for m, t in zip(self.means, self.exposures, strict=True)]
        ref = float(np.median(rates))
        return (mean - dark) / (exposure or 1.0) / ref if ref > 0 else 1.0

    def add(self, mean: float, exposure: float | None = None) -> None:
        self.means.append(mean)
        self.exposures.append(exposure or 1.0)
        while len(self.means) > self.size:
            self.means.popleft()
            self.exposures.popleft()


@dataclass(frozen=True)
class PhotonTransfer:
    """A camera's noise against its signal (its photon transfer curve), from pairs of flats and of darks.

    The variance is that of white noise of the same power at large scales (:func:`white_noise_variance`):
    ``read_variance + gain * signal``, ``signal`` in counts above the dark level. On a camera whose
    scintillator blurs, the pixel-to-pixel noise that :func:`noise_sigma` reads is a fraction of it (a
    sigma of 0.8 pixel: 2.4 counts of 21.4 on a projection at 1000 photons per pixel, docs/qc.md), while
    what sets how well a frame can be denoised, and how long to expose, is the photons behind it.

    Parameters
    ----------
    read_variance : float
        The darks' variance (counts squared): the camera's read noise; 0 where no darks were seen.
    gain : float
        Variance per count of signal: 1 for a camera that counts each photon once.
    noise_correlation : float
        The lag-1 autocorrelation of the flats' noise (:func:`flat_noise_correlation`); NaN if not known.
    """

    read_variance: float
    gain: float
    noise_correlation: float = math.nan

    @classmethod
    def from_levels(cls, flat_signal: float, flat_variance: float, read_variance: float,
                    noise_correlation: float = math.nan) -> PhotonTransfer | None:
        """The curve through the darks' variance and the flats' (``flat_variance`` at ``flat_signal`` counts
        above the dark level); None where they do not make one (flats no brighter than the darks, or no
        noisier)."""
        values = (flat_signal, flat_variance, read_variance)
        if not all(math.isfinite(v) for v in values) or flat_signal <= 0 or flat_variance <= read_variance:
            return None
        read = max(read_variance, 0.0)
        return cls(read, (flat_variance - read) / flat_signal, noise_correlation)

    @property
    def blurs(self) -> bool:
        """Whether the camera's noise correlates between neighbours (:data:`BLURRING_CORRELATION`)."""
        return self.noise_correlation >= BLURRING_CORRELATION  # (NaN compares False)

    def noise_sigma(self, signal: float) -> float:
        """The noise sigma (counts) of a frame ``signal`` counts above the dark level."""
        return math.sqrt(self.read_variance + self.gain * max(signal, 0.0)) if math.isfinite(signal) else math.nan


@_quiet
def noise_sigma(frame: np.ndarray) -> float:
    """Noise standard deviation of ``frame`` by Immerkaer's method (1996).

    The frame is convolved with the difference of two Laplacians, which
    cancels smooth structure; the mean absolute response of white noise of
    standard deviation ``s`` is ``6 s sqrt(2/pi)``. Edges add a little, so it is
    an upper estimate on very busy frames. Responses beyond :data:`NOISE_OUTLIER_SIGMAS`
    robust sigmas (from their median) are left out: zingers and hot pixels, not noise
    (simulated 512x512 frames with zingers at 1e-3 per pixel read 1.8x, 2.9x and 5.5x their
    noise at 100, 500 and 5000 photons/pixel with them in, 1.00x so; ``benchmarks/qc_specks.py``);
    white noise reaches that far once in 10**15 responses.
    """
    f = np.asarray(frame, np.float32)
    if f.shape[0] < 3 or f.shape[1] < 3:
        return math.nan
    # The response at every other pixel in each direction: a quarter of the work, the same statistics.
    k = 2 if min(f.shape) >= 64 else 1
    h, w_ = f.shape[0] - 2, f.shape[1] - 2

    def at(dy: int, dx: int) -> np.ndarray:
        return f[dy : dy + h : k, dx : dx + w_ : k]

    # corners - 2 x edges + 4 x centre, summed in place: two temporaries, not one per term
    response = at(0, 0) + at(0, 2)
    response += at(2, 0)
    response += at(2, 2)
    edges = at(0, 1) + at(2, 1)
    edges += at(1, 0)
    edges += at(1, 2)
    edges *= np.float32(-2)
    response += edges
    response += np.multiply(at(1, 1), np.float32(4), out=edges)
    valid = np.isfinite(response)
    if not valid.all():
        if not valid.any():
            return math.nan
        response = response[valid]
    magnitude = np.abs(response, out=response)
    total, count = float(magnitude.sum(dtype=np.float64)), magnitude.size
    # a robust sigma of the response (its median magnitude is 0.6745 of it for white noise), from a subsample
    typical = float(np.median(magnitude.ravel()[:: max(1, magnitude.size // _NOISE_SAMPLES)])) / 0.6745
    if typical > 0:  # (0: a frame of a few photons, mostly zeros; nothing stands out of such a median)
        outliers = magnitude[magnitude > np.float32(NOISE_OUTLIER_SIGMAS * typical)]
        if outliers.size:
            total, count = total - float(outliers.sum(dtype=np.float64)), count - outliers.size
    return total / count * math.sqrt(math.pi / 2) / 6


def _bin(frame: np.ndarray, k: int) -> np.ndarray:
    h, w = (frame.shape[0] // k) * k, (frame.shape[1] // k) * k
    out = np.zeros((h // k, w // k), np.float32)
    for dy in range(k):
        for dx in range(k):
            out += frame[dy:h:k, dx:w:k]
    return out / (k * k)


@_quiet
def registration_image(frame: np.ndarray) -> np.ndarray:
    """``frame`` as registration uses it: NaN-free, float32, binned by :data:`REGISTRATION_BIN`, without
    isolated spikes.

    A quarter of the frame's pixels: the callback keeps a few of these per stream
    to find a neighbouring angle to register against.

    Zingers, and hot or dead pixels short of the type's top, are taken out of the binned image
    (:func:`~bluesky_tomogan.despike.remove_isolated_spikes`, at the projection models' threshold):
    phase correlation weighs every spatial frequency that stands above the noise alike, and a few dozen
    sharp specks per frame outweigh a sample's structure, so two frames of a sample standing still matched wherever two
    pairs of zingers lay the same distance apart (simulated 512x512 scans at 100-5000 photons/pixel
    with zingers at 1e-4 or 1e-3 per pixel: ``motion`` on 15 of 15 frames, ``motion_px`` up to 96-189,
    a real 6-pixel slip among them not told apart; with the specks out, as without zingers: at most
    1.6 off the slip, 5.6-6.5 at it; ``benchmarks/qc_specks.py``), and a camera's fixed specks would
    pin the shift at 0.
    """
    f = np.asarray(frame)
    f = f.astype(np.float32) if f.dtype.kind == "f" else f
    missing = missing_pixels(f)
    if missing is not None:  # detector gaps do not move with the sample: they would pin the shift at 0
        f = fill_masked(f, missing) if not missing.all() else np.zeros(f.shape, np.float32)
    f = np.nan_to_num(f) if f.dtype.kind == "f" else f  # +-inf: a frame QC flags anyway
    binned = _bin(f, REGISTRATION_BIN)
    if min(binned.shape) >= 3:
        remove_isolated_spikes(binned[None], PROJECTION_DESPIKE_SIGMAS)
    return binned


def shift_px(previous: np.ndarray, frame: np.ndarray) -> float:
    """Length in pixels of the translation that best maps ``previous`` onto ``frame`` (phase correlation).

    Both are binned by :data:`REGISTRATION_BIN` and their means removed; the
    peak of the normalised cross-power spectrum, each frequency weighted by the
    coherence the two frames' signal and noise allow there (:func:`registered_offset`),
    is refined to a fraction of a binned pixel by a parabola through its neighbours. NaN when the frames have
    no common structure to register (the peak does not stand out of the noise).
    """
    return registered_shift(registration_image(previous), registration_image(frame))


def registered_shift(a: np.ndarray, b: np.ndarray) -> float:
    """:func:`shift_px` of two :func:`registration_image` results, in pixels of the full frame."""
    return math.hypot(*registered_offset(a, b))


@_quiet
def registered_offset(a: np.ndarray, b: np.ndarray,
                      noise: tuple[float | None, float | None] = (None, None)) -> tuple[float, float]:
    """Translation ``(down, right)`` that maps registration image ``a`` onto ``b``, in pixels of the full
    frame; NaN when they have no common structure to register (see :func:`shift_px`).

    ``noise``: each image's noise sigma (:func:`registration_noise`, which knows a blurring camera's from its
    photon transfer curve), where known; else :func:`large_scale_noise` of the image.

    Phase correlation, each spatial frequency weighted by the coherence the two images can have there
    (:func:`_expected_coherence`). Plain phase correlation weighs every frequency alike; at low dose the
    high ones are noise alone, so the true peak sank into the surface (no match: at 25 photons per pixel
    most neighbouring projections of ``make demo``'s scan read NaN) or became a cluster a few binned pixels
    wide whose highest point noise picked (a few spurious shifts of 3-6 pixels per scan). Where every
    frequency stands well above the noise the weights are about 1: phase correlation as before
    (``benchmarks/motion_steps.py``, docs/qc.md).
    """
    if a.shape != b.shape or min(a.shape) < 4:
        return math.nan, math.nan
    window = _hann(a.shape)
    # scipy's FFTs in single precision (numpy's work in double, at several times the cost): with them, QC costs per
    # frame what it cost before the registration image was despiked (benchmarks/qc_feedback.py, docs/benchmarks.md)
    fa = scipy.fft.rfft2((a - np.float32(a.mean())) * window, workers=1)
    fb = scipy.fft.rfft2((b - np.float32(b.mean())) * window, workers=1)
    power_a = np.square(fa.real) + np.square(fa.imag)
    power_b = np.square(fb.real) + np.square(fb.imag)
    scale = np.reciprocal(np.maximum(np.sqrt(power_a * power_b), np.float32(1e-12)))  # whitened: phase only
    sigma_a = noise[0] if noise[0] is not None else large_scale_noise(a)
    sigma_b = noise[1] if noise[1] is not None else large_scale_noise(b)
    weight = _expected_coherence(power_a, power_b, sigma_a, sigma_b, a.shape)
    if weight is not None:
        scale *= weight
    cross = fb * np.conj(fa)
    cross *= scale
    corr = scipy.fft.irfft2(cross, s=a.shape, workers=1)
    peak = np.unravel_index(int(np.argmax(corr)), corr.shape)
    # Two frames of pure noise also have a highest correlation; it is only a match when it stands
    # out from the surface by more than the largest of N normal samples would (~sqrt(2 ln N) sigma).
    spread = float(corr.std())
    if not spread > 0 or float(corr[peak]) < spread * (math.sqrt(2 * math.log(corr.size)) + PEAK_MARGIN):
        return math.nan, math.nan
    offsets = []
    for axis, p in enumerate(peak):
        n = corr.shape[axis]
        idx = list(peak)
        values = []
        for d in (-1, 0, 1):
            idx[axis] = (p + d) % n
            values.append(float(corr[tuple(idx)]))
        denom = values[0] - 2 * values[1] + values[2]
        sub = 0.5 * (values[0] - values[2]) / denom if denom != 0 else 0.0
        q = p + sub
        offsets.append((q - n if q > n / 2 else q) * REGISTRATION_BIN)
    return offsets[0], offsets[1]


def registration_noise(image: np.ndarray, metrics: FrameMetrics, transfer: PhotonTransfer | None) -> float:
    """The noise sigma of a frame's :func:`registration_image` ``image``, for :func:`registered_offset`.

    On a camera that blurs (``transfer.blurs``, its photon transfer curve known), the white noise of the same
    power at large scales (``metrics.camera_noise_sigma``), binned by :data:`REGISTRATION_BIN`: Immerkaer's
    :func:`noise_sigma` reads such noise low (it sees the high frequencies, which the blur takes out), so
    frequencies where noise is all there is kept their weight (``benchmarks/motion_steps.py --photons 25
    --blur 0.8 --flats 5``, docs/qc.md). Elsewhere (no darks and flats, or not yet) :func:`large_scale_noise`
    of the image. Computed once per frame: the callback keeps it beside the image for the next frame's
    registration.
    """
    if transfer is not None and transfer.blurs and math.isfinite(metrics.camera_noise_sigma):
        return metrics.camera_noise_sigma / REGISTRATION_BIN
    return large_scale_noise(image)


def large_scale_noise(image: np.ndarray) -> float:
    """The sigma of white noise with ``image``'s noise power at large scales, without a photon transfer curve.

    The larger of :func:`noise_sigma` of the image and twice that of the image binned 2x2. A camera's blur
    correlates neighbouring pixels' noise and takes it out of the high frequencies that Immerkaer's filter
    sees, so :func:`noise_sigma` reads it low; two pixels apart, beyond most of a blur's reach, the noise is
    whiter, and binning 2x2 halves white noise's sigma. Structure adds more to the coarser reading (an upper
    estimate, as :func:`noise_sigma` is on busy frames); on white noise the two agree and the finer one is
    the steadier. Without darks and flats, on a camera with a blur of 0.8 pixel at 25 photons per pixel:
    4 false ``motion`` flags at 4-degree steps and 8 of 10 slips flagged with :func:`noise_sigma`, none
    and 9 of 10 with this (``benchmarks/motion_steps.py --photons 25 --blur 0.8``, docs/qc.md); without
    blur the same shifts as with :func:`noise_sigma`, to 0.1 pixel.
    """
    fine = noise_sigma(image)
    if min(image.shape) < 6:  # (noise_sigma needs 3x3 pixels)
        return fine
    coarse = 2.0 * noise_sigma(_bin(image, 2))
    return coarse if math.isfinite(coarse) and not coarse <= fine else fine


def _expected_coherence(power_a: np.ndarray, power_b: np.ndarray, sigma_a: float, sigma_b: float,
                        shape: tuple[int, int]) -> np.ndarray | None:
    """Per frequency of two windowed images' spectra (``rfft2`` powers), the coherence their signal allows.

    White noise of sigma ``s`` (``sigma_a``, ``sigma_b``: :func:`registration_noise`) has the same power at every
    frequency, ``s**2`` times the window's energy; a sample's power falls with the frequency's radius. Averaged over
    rings of :data:`REGISTRATION_RINGS` radii, what each image's power exceeds its noise's by is its signal, and
    ``(S / (S + N))**2`` (``S`` the two signals' geometric mean, ``N`` the noises') the magnitude-squared coherence
    of two images of one scene with independent noise: near 1 where the sample stands out, 0 where noise is all
    there is. (Not its square root, the Wiener weight: on a camera that blurs, :func:`noise_sigma` reads the noise
    low, and the square leaves less weight where the noise is near the signal.) None (weigh every frequency alike)
    without a noise estimate or where no noise shows.
    """
    if not (math.isfinite(sigma_a) and math.isfinite(sigma_b)) or sigma_a <= 0 or sigma_b <= 0:
        return None
    rings, counts, energy = _frequency_rings(shape)
    flat_rings = rings.ravel()
    ring_a = np.bincount(flat_rings, power_a.ravel(), counts.size) / counts
    ring_b = np.bincount(flat_rings, power_b.ravel(), counts.size) / counts
    noise_a, noise_b = sigma_a * sigma_a * energy, sigma_b * sigma_b * energy
    signal = np.sqrt(np.maximum(ring_a - noise_a, 0.0) * np.maximum(ring_b - noise_b, 0.0))
    coherence = np.square(signal / (signal + math.sqrt(noise_a * noise_b)))
    return coherence.astype(np.float32)[rings]


@functools.lru_cache(maxsize=4)
def _frequency_rings(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, float]:
    """For ``rfft2`` spectra of images of ``shape``: each frequency's ring, the frequencies per ring (at least
    1) and the energy of the registration window (the power of unit white noise behind it)."""
    radius = np.hypot(np.fft.fftfreq(shape[0])[:, None], np.fft.rfftfreq(shape[1])[None, :])
    rings = (radius * (2 * REGISTRATION_RINGS)).astype(np.intp)  # the corners' rings go on past the axes' last
    rings.flags.writeable = False
    counts = np.maximum(np.bincount(rings.ravel(), minlength=int(rings.max()) + 1), 1).astype(np.float64)
    energy = float(np.square(_hann(shape), dtype=np.float64).sum())
    return rings, counts, energy


@functools.lru_cache(maxsize=4)
def _hann(shape: tuple[int, int]) -> np.ndarray:
    """The 2-D Hann window of registration images of ``shape`` (float32, read only)."""
    window = np.outer(np.hanning(shape[0]), np.hanning(shape[1])).astype(np.float32)
    window.flags.writeable = False
    return window


def rotation_allowance(sideways: Sequence[float], step_deg: float | None, width: int) -> float:
    """How far (pixels) a projection may shift sideways between neighbouring angles by rotation alone.

    Rotation about the vertical axis moves each feature along the rows, by up to its distance
    from the axis times the angular step: a whole-frame registration of two neighbouring
    projections finds a sideways shift that grows with the step and depends on the sample
    (measured on the simulated bead pack at 512 px: up to 0.2 px at 0.5 degrees, 1.5 at 1, 3.8
    at 2, 8.9 at 4), and never a vertical one. With four or more recent sideways shifts
    (``sideways``, absolute values) the allowance is :data:`ROTATION_SPREAD` times their median:
    what rotation does on this scan, robust to a slip among them. Before that, half of what
    rotation moves a point at the frame's edge (``width / 2 * step``), or nothing without an
    angle (``step_deg`` None: frames of a plain count are not rotated). Two frames at the same
    angle (a re-acquired angle, the exposures of one event) are allowed nothing.
    """
    if step_deg is not None and step_deg == 0:
        return 0.0
    if len(sideways) >= 4:
        return ROTATION_SPREAD * float(np.median(np.asarray(sideways, np.float64)))
    if step_deg is None:
        return 0.0
    return 0.5 * width / 2 * math.radians(abs(step_deg))


def motion_px(down: float, right: float, allowance: float) -> float:
    """The part of a registered shift that rotation cannot explain: all of the vertical part, and
    the sideways part beyond ``allowance`` (:func:`rotation_allowance`)."""
    return math.hypot(down, max(0.0, abs(right) - allowance))


@_quiet
def frame_metrics(frame: np.ndarray, reference: IntensityReference, previous: np.ndarray | None,
                  saturation_level: float, dark_level: float = 0.0, *,
                  known_nan: np.ndarray | None = None, narrower_camera: bool = False,
                  exposure: float | None = None, dead_before: DeadBefore | None = None,
                  transfer: PhotonTransfer | None = None) -> FrameMetrics:
    """Raw-frame metrics of ``frame``; ``previous`` is the last good frame of the same stream (or ``None``).

    ``dark_level`` is the camera's dark offset: the intensity ratio and the SNR take the signal above it.
    ``known_nan``: where the detector's previous frame was NaN. A NaN pixel there too is the
    detector's mask (pixels without data, the same in every frame), not a fault: it is left
    out of the metrics like a masked pixel and does not count in ``nonfinite_fraction``
    (unless the frame has no finite pixel at all).
    ``narrower_camera``: ``saturation_level`` is only the integer type's top, not the camera's
    (no level was set): where the frame's highest reading is the top of a narrower camera
    (:func:`narrower_top`: 4095 for a 12-bit camera in ``uint16``), that is the level. A float
    frame (whose type has no top) saturates then only on a plateau at exactly its highest reading,
    from the level up: summed or scaled frames pass 65535 without saturating.
    ``exposure``: the frame's exposure time (s), where known: the intensity ratio is per unit of it.
    ``dead_before``: where the detector's last frame with light was dead; regions dead there too do not
    count in ``dead_fraction`` (:class:`DeadBefore`: this frame's map is left pending, for the caller to
    accept).
    ``transfer``: the camera's photon transfer curve, where the run's flats and darks gave it; it gives
    ``camera_noise_sigma``, the noise of a frame of this mean. On a camera that blurs (``transfer.blurs``)
    the SNR takes the larger of that and the noise the frame shows (:func:`noise_sigma`, which reads low
    there); on one with white noise, :func:`noise_sigma` alone: the frame's own noise, right for white noise,
    where the curve takes a projection's uneven light as its mean (5-6 % more noise on simulated projections)
    and one pair of flats scatters (3-7 % of the variance on 256x256 flats, more on smaller ones): frames
    would cross the ``noisy`` threshold that did not before (``benchmarks/qc_camera_blur.py``).
    """
    f = np.asarray(frame)
    m = FrameMetrics()
    if f.ndim != 2 or f.size == 0 or f.dtype.kind not in "uif":
        return m
    valid, n_finite, masked = _valid_pixels(f)
    nonfinite = f.size - n_finite
    if nonfinite and n_finite and known_nan is not None and known_nan.shape == f.shape:
        nonfinite -= int(np.count_nonzero(known_nan & np.isnan(f)))
    m.nonfinite_fraction = nonfinite / f.size
    n_valid = int(valid.sum())
    values = (f[valid] if n_valid < f.size else f.ravel()) if n_valid else None
    if narrower_camera and values is not None:
        saturation_level = narrower_top(values, f.dtype) or saturation_level
    # Masked pixels count as saturated only where the top value can be a clipped reading: at the
    # default level of a type narrower than 32 bits (no detector fills 32 bits; a photon
    # counter's saturation is set with saturation_level, below the mask value).
    clipped = masked if masked and saturation_level >= np.iinfo(f.dtype).max and f.dtype.itemsize < 4 else 0
    if clipped:  # hot pixels stuck at the top are alone: not too much light (beside_another)
        top = masked_pixels(f)
        clipped = int(np.count_nonzero(beside_another(top))) if top is not None else 0
    if values is None:
        m.saturated_fraction = clipped / f.size if n_finite else math.nan
        return m
    m.mean = mean = float(values.mean(dtype=np.float64))
    # a level beyond a narrow float type's range (float16 frames) saturates nothing, and casting it would overflow
    beyond_type = f.dtype.kind == "f" and saturation_level > float(np.finfo(f.dtype).max)
    above = 0 if beyond_type else int(np.count_nonzero(values >= saturation_level))
    if above:  # isolated pixels at the top are hot pixels or zingers, not too much light: not counted
        at_top = f >= saturation_level
        if narrower_camera and f.dtype.kind == "f":  # no level set, and a float type has no top of its own:
            at_top = f == values.max()  # only a clipped reading saturates (a plateau at exactly the highest)
        above = int(np.count_nonzero(beside_another(at_top & valid)))
    m.saturated_fraction = float(clipped + above) / f.size
    m.dead_fraction = dead_fraction(np.where(valid, f, 1) if n_valid < f.size else f, dead_before)
    m.intensity_ratio = reference.ratio(mean, dark_level, exposure)
    m.noise_sigma = noise_sigma(np.where(valid, f, mean) if n_valid < f.size else f)
    noise = m.noise_sigma
    if transfer is not None:
        m.camera_noise_sigma = transfer.noise_sigma(mean - dark_level)
        if transfer.blurs and math.isfinite(noise):
            noise = max(noise, m.camera_noise_sigma)
    m.snr = signal_to_noise(mean, noise, dark_level)
    if previous is not None:  # no angle known here: all of the shift counts as motion
        m.shift_px = m.motion_px = shift_px(previous, f)
    return m


def signal_to_noise(mean: float, noise: float, dark_level: float = 0.0) -> float:
    """A frame's SNR: its mean above the dark level over its noise sigma (a camera's offset is no signal:
    at low dose it is most of the mean); infinite for a noiseless frame with signal, 0 without."""
    signal = mean - dark_level
    return signal / noise if noise > 0 else (math.inf if signal > 0 else 0.0)


def beside_another(mask: np.ndarray) -> np.ndarray:
    """The pixels of a 2-D ``mask`` with another of its pixels directly above, below, left or right of them,
    leaving out a whole row or column of the detector in the mask alone (neither line beside it is).

    Too much light saturates areas (the open beam, a bright edge), and a row or a column of pixels at
    the least; a hot pixel stuck at the camera's top value, or a zinger, is one pixel alone (or two).
    Counting only these keeps a detector's hot pixels (0.5 % is not rare on an old camera) from
    raising ``saturated`` on every frame, whose ``adjust`` would shorten the exposure for nothing. A
    CCD's stuck column (or a CMOS's row) is at the top from one edge of the detector to the other, one
    pixel wide, which no light gives (0.2 % of a 512-pixel-wide frame: over the ``saturated`` threshold).
    """
    mask = _without_lone_lines(mask)
    near = np.zeros_like(mask)
    near[1:] |= mask[:-1]
    near[:-1] |= mask[1:]
    near[:, 1:] |= mask[:, :-1]
    near[:, :-1] |= mask[:, 1:]
    return mask & near


def _without_lone_lines(mask: np.ndarray) -> np.ndarray:
    """``mask`` without its whole rows and columns that lie alone (the lines beside them are not whole)."""
    if mask.ndim != 2 or min(mask.shape) < 3:
        return mask
    out = mask
    for axis in (0, 1):
        whole = np.asarray(mask.all(axis=axis))  # axis 0: whole columns
        if not whole.any():
            continue
        beside = np.zeros_like(whole)
        beside[1:] |= whole[:-1]
        beside[:-1] |= whole[1:]
        lone = whole & ~beside
        if lone.any():
            out = out.copy() if out is mask else out
            if axis == 0:
                out[:, lone] = False
            else:
                out[lone, :] = False
    return out


def dead_pixels(frame: np.ndarray) -> np.ndarray:
    """Pixels at or below 0 that lie in a 3x3 block of such pixels (a boolean map).

    A failed readout or a dropped frame zeroes whole regions; a photon-counting detector
    at a few photons per pixel reads isolated zeros everywhere the sample absorbs (at
    0.6 photons, 55 % of those pixels), which is the low-dose data this package is for,
    not a fault. Isolated zeros almost never fill a 3x3 block (0.55 ** 9 = 0.5 %).
    """
    zero = np.asarray(frame) <= 0
    h, w = zero.shape
    if h < 3 or w < 3 or not zero.any():
        return zero
    # A morphological opening by a 3x3 square, separable on booleans (the same result as scipy's
    # binary_opening, about 3x faster: 9 against 33 ms at 1024x1024 with half the pixels zero):
    # the top-left corners of all-zero blocks, then every pixel they cover.
    rows = zero[:, :-2] & zero[:, 1:-1] & zero[:, 2:]
    corners = rows[:-2] & rows[1:-1] & rows[2:]
    across = np.zeros((h - 2, w), bool)
    for dx in range(3):
        across[:, dx:dx + w - 2] |= corners
    covered = np.zeros((h, w), bool)
    for dy in range(3):
        covered[dy:dy + h - 2] |= across
    return covered


class DeadBefore:
    """Where a detector's last frame with light was dead (:func:`dead_pixels`), for :func:`dead_fraction`: a
    region dead in that frame too is where no photon falls (a photon counter beyond the beam's footprint,
    outside an aperture, a dead module), not a readout that failed now. One per image field, kept across
    runs. :func:`dead_fraction` leaves each frame's map ``pending``; the caller :meth:`accept` s it unless
    the frame was judged a readout failure, so that a failure that repeats is flagged again."""

    def __init__(self) -> None:
        self.mask: np.ndarray | None = None
        self.pending: np.ndarray | None = None

    def accept(self) -> None:
        """Take the last frame's map (if it had light) as the one the next frame is compared with."""
        if self.pending is not None:
            self.mask, self.pending = self.pending, None


def dead_fraction(frame: np.ndarray, before: DeadBefore | None = None) -> float:
    """Fraction of the pixels that had light in the detector's last frame with light (``before``; this frame's
    dead pixels are left ``pending`` there, unless it has hardly any light: under :data:`LIVE_FLOOR` of its
    pixels alive, a photon counter's dark frame) that are dead now (:func:`dead_pixels`): a readout that zeroes
    half of a fan beam is half dead, however little of the detector the beam covers. Without such a frame
    before (of this shape), of all pixels."""
    frame = np.asarray(frame)
    if frame.size == 0:
        return math.nan
    dead = dead_pixels(frame)
    known = before.mask if before is not None else None
    if before is not None:
        before.pending = dead if dead.size - np.count_nonzero(dead) >= LIVE_FLOOR * dead.size else None
    if known is None or known.shape != dead.shape:
        return float(np.count_nonzero(dead)) / dead.size
    live = ~known
    return float(np.count_nonzero(dead & live)) / max(int(np.count_nonzero(live)), 1)


def narrower_top(values: np.ndarray, dtype: np.dtype) -> float | None:
    """The top reading of a camera narrower than its integer type, where ``values`` (the frame's pixels
    with data) reach it: their highest value, when that is ``2**k - 1`` (k from 8 up) below the type's
    own top; else ``None``.

    Many cameras digitise 10, 12 or 14 bits and store them in ``uint16``: a 12-bit camera reads 4095
    where it saturates, and a level at 65535 never sees that. A frame that does not saturate has its
    highest value on a pixel or two, and it is rarely such a number; when it is, only pixels at it
    with another beside them count (:func:`beside_another`), which photon noise does not give.
    """
    if dtype.kind not in "ui" or dtype.itemsize < 2 or values.size == 0:
        return None
    top = int(values.max())
    if top < 255 or top >= np.iinfo(dtype).max or (top + 1) & top:
        return None
    return float(top)


def _valid_pixels(f: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Pixels that hold intensities (finite, and not masked: :mod:`bluesky_tomogan.masked`), how many
    are finite, and how many are masked."""
    finite = np.isfinite(f) if f.dtype.kind == "f" else np.ones(f.shape, bool)
    n_finite = int(finite.sum())
    masked = masked_pixels(f)
    if masked is None:
        return finite, n_finite, 0
    return finite & ~masked, n_finite, int(masked.sum())


@_quiet
def residual_metrics(raw: np.ndarray, denoised: np.ndarray, m: FrameMetrics,
                     previous: PreviousResidual | None = None, noise_correlation: float = math.nan,
                     fixed_pattern: np.ndarray | None = None) -> FrameMetrics:
    """Add what the denoiser removed (its standard deviation and its structure) and the noise it left.

    ``residual_correlation`` is the mean lag-1 autocorrelation of the residual
    (raw minus denoised) along both axes: about 0 for removed white noise,
    towards 1 when the denoiser removed edges and texture (signal).
    ``residual_repeat`` is the correlation of the residual with the one ``previous``
    holds, the stream's previous frame's (:class:`PreviousResidual`, which then holds
    this one): about 0 for photon noise, which is new in every frame, towards 1 when
    the denoiser removed something that both frames show (docs/qc.md).

    The residual's specks (:func:`residual_specks`: the zingers, hot and dead pixels that the host's
    despike took out) are left out of all three, as pixels without data are: they are not what the
    network removed, and a camera's hot pixels, thousands of counts each, would otherwise make any
    residual look white and its standard deviation that of the specks.

    ``noise_correlation`` is the camera's noise's own lag-1 autocorrelation, where known (the argument:
    :func:`flat_noise_correlation` of the run's flat fields). A scintillator and its optics spread each photon's
    light over neighbouring pixels, so a real camera's noise correlates, and so does a residual of noise
    alone: ``residual_structure``, the flag ``out_of_distribution``'s metric, is how far
    ``residual_correlation`` goes beyond it towards 1, as a share of that way (``(c - n) / (1 - n)``; ``n``
    taken as 0 where it is below 0 or not known: then ``residual_correlation`` itself).

    ``fixed_pattern`` is the camera's pixel-to-pixel gain pattern, where known (:func:`fixed_pattern` of the
    run's flats). A scintillator's grain and the pixels' own response make every frame, flats included, a few
    per cent brighter or darker pixel by pixel; the denoiser takes that pattern for noise, and on a
    well-exposed frame, where it outweighs the photon noise, it is most of the residual and the same in every
    frame. The part of the residual it explains (the pattern times the denoised frame, fitted) is left out of
    ``residual_correlation`` and ``residual_repeat``: it is the camera's, not the sample's, and flat-field
    correction takes it out of the raw frames (denoised flats have it taken out too). ``removed_sigma`` keeps
    it: it is what the denoiser removed.
    """
    m.denoised_noise_sigma = noise_sigma(denoised)
    r = np.asarray(raw, np.float32) - np.asarray(denoised, np.float32)
    finite = np.isfinite(r)
    all_finite = bool(finite.all())
    if not all_finite and not finite.any():
        if previous is not None:
            previous.repeat(None)  # a frame without data: the next one has nothing to repeat
        return m
    specks = residual_specks(r, None if all_finite else finite)
    if specks.size:
        finite = finite.copy() if not all_finite else np.ones(r.shape, bool)
        finite.flat[specks] = False
        all_finite = False
    if all_finite:
        r = r - r.mean()
    else:  # NaN where the detector has no data (kept in the derived frame), specks: out of the sums
        r = np.where(finite, r - r[finite].mean(), np.float32(0))
    m.noise_correlation = noise_correlation
    count = max(int(np.count_nonzero(finite)), 1)
    m.removed_sigma = math.sqrt(float(np.sum(r * r)) / count)
    if fixed_pattern is not None and fixed_pattern.shape == r.shape:
        r = _without_fixed_pattern(r, fixed_pattern, denoised, None if all_finite else finite)
    if previous is not None:
        m.residual_repeat = previous.repeat(r)
    var = float(np.sum(r * r)) / count
    if var <= 0 or r.shape[0] < 2 or r.shape[1] < 2:
        m.residual_correlation = m.residual_structure = 0.0
        return m
    # a pixel without data is 0 in r, so the sums hold only pairs of two pixels with data; each is
    # divided by the number of such pairs (the mean over all pairs would shrink it by the masked share)
    pairs_x = r[:, 1:].size if all_finite else max(int(np.count_nonzero(finite[:, 1:] & finite[:, :-1])), 1)
    pairs_y = r[1:, :].size if all_finite else max(int(np.count_nonzero(finite[1:, :] & finite[:-1, :])), 1)
    rx = float(np.sum(r[:, 1:] * r[:, :-1])) / pairs_x / var
    ry = float(np.sum(r[1:, :] * r[:-1, :])) / pairs_y / var
    m.residual_correlation = 0.5 * (rx + ry)
    m.residual_structure = _beyond(m.residual_correlation, m.noise_correlation)
    return m


def _without_fixed_pattern(residual: np.ndarray, pattern: np.ndarray, denoised: np.ndarray,
                           valid: np.ndarray | None) -> np.ndarray:
    """``residual`` (centred, 0 where ``valid`` is False) less its least-squares fit by ``pattern`` times
    ``denoised``: what a camera's fixed pattern leaves in it, at this frame's light. (The pattern averages 0 over
    any few pixels, so its product with the frame needs no centring of its own.)"""
    expected = np.multiply(pattern, np.asarray(denoised, np.float32), dtype=np.float32)
    if valid is not None:
        expected[~valid] = 0
    flat = expected.ravel()
    power = float(np.dot(flat, flat))
    if not power > 0 or not math.isfinite(power):
        return residual
    fit = float(np.dot(np.ascontiguousarray(residual).ravel(), flat)) / power
    expected *= np.float32(-fit)
    expected += residual
    return expected


def fixed_pattern(flat_sum: np.ndarray, count: int, dark_level: float,
                  missing: np.ndarray | None = None) -> np.ndarray | None:
    """A camera's pixel-to-pixel gain pattern (photo-response non-uniformity: a scintillator's grain, its pixels'
    own response) from ``count`` flats summed into ``flat_sum``: their mean above ``dark_level``, over its local
    mean (:data:`PATTERN_WINDOW` pixels square), less 1; clipped at :data:`PATTERN_CLIP` (a hot or dead pixel is
    a speck, not a gain). Pixels without data in any of the flats (``missing``: a detector's module gaps, its
    mask) and pixels without light are 0 and left out of their neighbours' local means. None without light
    above the dark level. Each flat's photon noise is in it too, divided by the square root of ``count``.
    """
    if count < 1 or flat_sum.ndim != 2:
        return None
    signal = np.asarray(flat_sum, np.float64) / count - dark_level
    lit = np.isfinite(signal) & (signal > 0)
    if missing is not None and missing.shape == signal.shape:
        lit &= ~missing
    if not lit.any():
        return None
    signal = np.where(lit, signal, 0.0)
    # the local mean of the lit pixels alone (a normalised convolution): a gap does not darken its neighbours'
    weight = uniform_filter(lit.astype(np.float64), PATTERN_WINDOW, mode="nearest")
    local = uniform_filter(signal, PATTERN_WINDOW, mode="nearest")
    with np.errstate(divide="ignore", invalid="ignore"):
        pattern = signal * weight / local - 1.0
    pattern = np.where(lit & np.isfinite(pattern), pattern, 0.0)
    return np.clip(pattern, -PATTERN_CLIP, PATTERN_CLIP).astype(np.float32)


def _beyond(correlation: float, noise: float) -> float:
    """How far ``correlation`` goes from the noise's own correlation ``noise`` (taken as 0 below 0 or unknown,
    at most 0.95) towards 1, as a share of that way: noise alone reads 0 however much it correlates, and a
    residual holding structure reads as high on a blurring camera as on one with white noise."""
    base = min(max(noise, 0.0), 0.95) if math.isfinite(noise) else 0.0
    return (correlation - base) / (1.0 - base)


def residual_specks(residual: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """The flat indices of the specks of a 2-D ``residual``: pixels more than ``SPECK_SIGMAS`` robust
    sigmas off its median, in 8-connected groups of at most ``SPECK_PIXELS`` such pixels.

    A despiked zinger, hot or dead pixel leaves one such pixel (or two or three, where defects lie
    side by side) in the residual; an edge or a texture that the denoiser removed leaves longer runs of
    them, which stay. ``valid`` (optional) marks the pixels that hold data; the others are never specks.
    """
    values = residual if valid is None else residual[valid]
    if values.size == 0:
        return np.empty(0, np.intp)
    # a coarser subsample than residual_repeat's: an 8-sigma cut does not need the sigma to 1 %
    centre, sigma = _median_and_sigma(values, _SPECK_SAMPLES)
    if not sigma > 0:
        return np.empty(0, np.intp)
    # two comparisons, no temporary of |residual - centre|; NaN compares False
    far = residual > np.float32(centre + SPECK_SIGMAS * sigma)
    far |= residual < np.float32(centre - SPECK_SIGMAS * sigma)
    candidates = np.flatnonzero(far)
    if candidates.size == 0 or candidates.size > _SPECK_SHARE * far.size:
        return np.empty(0, np.intp)  # none, or so many that they are what the denoiser removed: all kept
    groups, _ = label(far, structure=np.ones((3, 3), bool))  # 3 ms at 1024x1024 with 0.9 % specks
    group_of = groups.ravel()[candidates]
    size = np.bincount(group_of)
    return candidates[size[group_of] <= SPECK_PIXELS]


class PreviousResidual:
    """What the denoiser removed from a stream's last frame, for :func:`residual_metrics`'s
    ``residual_repeat`` (one per derived stream: a frame of float32).

    Each residual is centred on its median and clipped at ``REPEAT_CLIP`` robust sigmas once, when
    it comes. A detector's hot pixels are in every frame, and the despike takes them out of every
    frame: left as they are, their residuals (thousands of counts) would make any two frames look
    alike, and would shift a plain mean off the noise's centre by the same amount in both.
    """

    def __init__(self) -> None:
        self._last: np.ndarray | None = None

    def repeat(self, residual: np.ndarray | None) -> float:
        """The correlation of ``residual`` (mean-subtracted, 0 where it has no data) with the last one
        given, NaN without one of the same shape or where either has no spread; then holds ``residual``."""
        robust = None if residual is None else _robust(residual)
        last, self._last = self._last, robust
        if robust is None or last is None or last.shape != robust.shape:
            return math.nan
        a, b = robust.ravel(), last.ravel()
        norm = math.sqrt(float(np.dot(a, a)) * float(np.dot(b, b)))
        return float(np.dot(a, b)) / norm if norm > 0 else math.nan


#: :func:`flat_noise_correlation` reads every so many pairs of rows of a frame this many rows high or more.
_NOISE_ROWS = 256


@_quiet
def flat_noise_correlation(flat: np.ndarray, previous_flat: np.ndarray) -> float:
    """The lag-1 autocorrelation of a camera's noise (the mean of its horizontal and vertical ones), from two
    consecutive flat fields (open beam, no sample) of the same shape; NaN where they cannot tell it.

    A scintillator and its optics spread each photon's light over neighbouring pixels, so a real camera's
    noise correlates (a Gaussian blur of sigma 0.8 pixel: 0.64 at 1000 photons/pixel, 0.50 at 100, where the
    camera's white read noise weighs more; ``benchmarks/qc_camera_blur.py``). The difference of two flats, the
    second scaled to the first's mean (the ring current moves), is that noise alone: the beam's profile is the
    same in both. It is centred on its median and clipped at :data:`REPEAT_CLIP` robust sigmas (zingers), pixels
    without data left out; every pair of neighbouring rows is read up to :data:`_NOISE_ROWS` rows, evenly
    spread pairs beyond.
    """
    found = _scene_difference(flat, previous_flat, 0.0)
    if found is None:
        return math.nan
    difference, valid, _ = found
    noise = _robust(difference)
    if valid is not None:
        noise[~valid] = 0  # no pairs with a pixel without data
    h = noise.shape[0]
    step = max(1, h // _NOISE_ROWS)
    upper, lower = noise[0 : h - 1 : step], noise[1:h:step]
    var_upper, var_lower = float(np.mean(upper * upper)), float(np.mean(lower * lower))
    if not (var_upper > 0 and var_lower > 0):
        return math.nan
    across = float(np.mean(upper[:, 1:] * upper[:, :-1])) / var_upper
    down = float(np.mean(upper * lower)) / math.sqrt(var_upper * var_lower)
    return 0.5 * (across + down)


@_quiet
def white_noise_variance(frame: np.ndarray, previous: np.ndarray, offset: float | None = None) -> float:
    """The variance of a camera's noise, per pixel of one frame, as white noise of the same power at large scales,
    from two consecutive frames of one scene (two flats, or two darks); NaN where they cannot tell it.

    A camera that blurs (a scintillator) spreads each photon's noise over its neighbours: the pixel-to-pixel
    variance falls, the noise's power at large scales does not. That power is the sum of the noise's
    autocovariance over all lags (the noise power spectrum at zero frequency), summed here up to
    :data:`NOISE_LAGS` pixels each way; for white noise it is the variance itself. The noise is the two frames'
    difference, the second scaled to the first's level above ``offset`` (flats: the dark level; the ring
    current moves) or not scaled (``None``: darks), with pixels without data and specks beyond
    :data:`NOISE_OUTLIER_SIGMAS` robust sigmas (zingers) left out; at most :data:`_TRANSFER_CROP` rows and
    columns from the middle are read.
    """
    found = _scene_difference(frame, previous, offset)
    if found is None:
        return math.nan
    difference, valid, scale = found
    h, w = difference.shape
    top, left = max(0, (h - _TRANSFER_CROP) // 2), max(0, (w - _TRANSFER_CROP) // 2)
    rows, cols = slice(top, top + _TRANSFER_CROP), slice(left, left + _TRANSFER_CROP)
    noise = difference[rows, cols]
    keep = np.ones(noise.shape, bool) if valid is None else valid[rows, cols].copy()
    centre, sigma = _median_and_sigma(noise[keep] if valid is not None else noise, _REPEAT_SAMPLES)
    noise = noise - np.float32(centre)
    if sigma > 0:
        keep &= np.abs(noise) <= np.float32(NOISE_OUTLIER_SIGMAS * sigma)
    noise[~keep] = 0
    lags = min(NOISE_LAGS, noise.shape[0] - 1, noise.shape[1] - 1)
    if lags < 1 or not keep.any():
        return math.nan
    # autocovariance by FFT, padded against wrap-around, over the pairs of pixels both kept (the mask's own)
    padded = (noise.shape[0] + lags, noise.shape[1] + lags)

    def autocorrelation(x: np.ndarray) -> np.ndarray:
        spectrum = scipy.fft.rfft2(x, s=padded)
        return scipy.fft.irfft2(spectrum * spectrum.conj(), s=padded)

    products, pairs = autocorrelation(noise), autocorrelation(keep.astype(np.float32))
    window = np.r_[0 : lags + 1, -lags:0]
    products, pairs = products[np.ix_(window, window)], np.rint(pairs[np.ix_(window, window)])
    if pairs.min() < 1:
        return math.nan
    power = float(np.sum(products / pairs))
    return power / (1.0 + scale * scale) if power > 0 else math.nan


def _scene_difference(frame: np.ndarray, previous: np.ndarray,
                      offset: float | None) -> tuple[np.ndarray, np.ndarray | None, float] | None:
    """``frame`` minus ``previous`` scaled to its mean above ``offset`` (``None``: not scaled), pixels without data
    in either set to the difference's median; with where the pixels hold data (``None``: all) and the scale. None
    where the two are not 2-D frames of one shape, or a mean is not above ``offset``."""
    a, b = np.asarray(frame, np.float32), np.asarray(previous, np.float32)
    if a.shape != b.shape or a.ndim != 2 or min(a.shape) < 2:
        return None
    gaps = [m for m in (missing_pixels(np.asarray(frame)), missing_pixels(np.asarray(previous))) if m is not None]
    valid = ~np.logical_or.reduce(gaps) if gaps else None
    scale = 1.0
    if offset is not None:
        mean_a = float(a[valid].mean()) if valid is not None and valid.any() else float(a.mean())
        mean_b = float(b[valid].mean()) if valid is not None and valid.any() else float(b.mean())
        above_a, above_b = mean_a - offset, mean_b - offset
        if not (above_a > 0 and above_b > 0 and math.isfinite(above_a) and math.isfinite(above_b)):
            return None
        scale = above_a / above_b
    difference = a - b * np.float32(scale) if scale != 1.0 else a - b
    if valid is not None:
        difference[~valid] = np.float32(np.median(difference[valid])) if valid.any() else np.float32(0)
    return difference, valid, scale


def _robust(residual: np.ndarray) -> np.ndarray:
    """``residual`` minus its median, clipped at ``REPEAT_CLIP`` robust sigmas (from a subsample)."""
    centre, sigma = _median_and_sigma(residual, _REPEAT_SAMPLES)
    out = residual - np.float32(centre)
    if sigma > 0:
        np.clip(out, -REPEAT_CLIP * sigma, REPEAT_CLIP * sigma, out=out)
    return out


def _median_and_sigma(values: np.ndarray, samples: int) -> tuple[float, float]:
    """The median of ``values`` (not empty) and their robust sigma (1.4826 times the median absolute
    deviation), from an even subsample of about ``samples`` of them."""
    sample = values.ravel()[:: max(1, values.size // samples)]
    centre = float(np.median(sample))
    return centre, 1.4826 * float(np.median(np.abs(sample - centre)))
