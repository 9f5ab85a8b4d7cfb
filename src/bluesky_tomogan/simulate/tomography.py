"""Parallel-beam forward projection, detector degradation and reconstruction.

Conventions: a volume is ``(z, y, x)`` with the rotation axis along ``z``;
projections are detector frames ``(n_angles, z, x_det)`` (``frame[row, col]`` as a
detector reads out); a sinogram of slice ``z`` is ``projections[:, z, :]``.
Angles are in degrees over [0, 180). Line integrals are in units of voxels, so
the attenuation of a phantom voxel is "per voxel length".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage, sparse
from skimage.transform import iradon, iradon_sart

__all__ = [
    "angles_deg",
    "project",
    "middle_columns",
    "scale_to_max_attenuation",
    "DetectorModel",
    "LowDoseScan",
    "simulate_scan",
    "gain_pattern",
    "pixel_gains",
    "expose",
    "flat_field_correct",
    "fbp",
    "sirt",
    "reconstruct",
]


def angles_deg(n_angles: int, view_fraction: float = 1.0) -> np.ndarray:
    """Evenly spaced angles over [0, 180); ``view_fraction`` keeps every k-th one.

    Parameters
    ----------
    n_angles : int
        Number of angles of the full scan.
    view_fraction : float
        Fraction of angles kept (1/4 to 1/32 for sparse view); rounded to
        ``1/k`` with integer ``k``.
    """
    if n_angles < 1:
        raise ValueError(f"n_angles must be >= 1, got {n_angles}")
    if not 0 < view_fraction <= 1:
        raise ValueError(f"view_fraction must be in (0, 1], got {view_fraction}")
    step = max(1, int(round(1 / view_fraction)))
    return (np.arange(n_angles) * 180.0 / n_angles)[::step].astype(np.float64)


def _projector(n: int, angle: float) -> sparse.csr_matrix:
    """Sparse ``(n_det, n*n)`` operator: rotate a slice by ``angle`` and sum its rows.

    Reproduces :func:`skimage.transform.radon` (``circle=True``) exactly: the same
    inverse map of the rotation, bilinear weights and zero outside the slice.
    """
    c = n // 2
    t = np.deg2rad(angle)
    cos, sin = np.cos(t), np.sin(t)
    rows, cols = np.mgrid[0:n, 0:n].astype(np.float64)
    src_x = cos * cols + sin * rows - c * (cos + sin - 1)
    src_y = -sin * cols + cos * rows - c * (cos - sin - 1)
    x0, y0 = np.floor(src_x), np.floor(src_y)
    fx, fy = src_x - x0, src_y - y0
    det = np.broadcast_to(np.arange(n), (n, n))
    data, ri, ci = [], [], []
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                      (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xs, ys = x0 + dx, y0 + dy
        ok = (xs >= 0) & (xs < n) & (ys >= 0) & (ys < n) & (w > 0)
        data.append(w[ok])
        ri.append(det[ok])
        ci.append((ys[ok] * n + xs[ok]).astype(np.int64))
    return sparse.csr_matrix(
        (np.concatenate(data), (np.concatenate(ri), np.concatenate(ci))), shape=(n, n * n)
    )


def project(volume: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Parallel-beam projections of ``volume`` at ``angles`` (degrees).

    Each slice is projected exactly as :func:`skimage.transform.radon` does, with
    one sparse operator per angle shared by all slices, so the sinograms
    reconstruct with :func:`fbp` and :func:`sirt`.

    Returns
    -------
    numpy.ndarray
        float32 line integrals ``(n_angles, z, x_det)``.
    """
    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim != 3 or vol.shape[1] != vol.shape[2]:
        raise ValueError(f"volume must be (z, n, n), got shape {vol.shape}")
    n = vol.shape[1]
    flat = vol.reshape(vol.shape[0], n * n).T  # (n*n, z)
    out = np.empty((len(angles), vol.shape[0], n), np.float32)
    for i, a in enumerate(angles):
        out[i] = (_projector(n, float(a)) @ flat).T
    return out


def middle_columns(line: np.ndarray, columns: int | None) -> np.ndarray:
    """The middle ``columns`` detector columns of projections ``(..., x_det)`` (all where ``None``): what a
    detector narrower than the sample sees of it."""
    if columns is None or columns >= line.shape[-1]:
        return line
    first = (line.shape[-1] - columns) // 2
    return line[..., first : first + columns]


def scale_to_max_attenuation(volume: np.ndarray, max_line_integral: float) -> np.ndarray:
    """Scale ``volume`` so that its largest line integral is ``max_line_integral``.

    Sets how opaque the sample is (2.0 leaves 13.5% transmission on the thickest ray).
    """
    peak = float(project(volume, np.array([0.0, 90.0])).max())
    if peak <= 0:
        return volume.astype(np.float32)
    return (volume * (max_line_integral / peak)).astype(np.float32)


@dataclass(frozen=True)
class DetectorModel:
    """A scintillator + camera detector with flat and dark fields.

    Parameters
    ----------
    photons : float
        Mean incident photons per pixel per frame in the open beam (the dose).
    gain_variation : float
        Relative RMS of the smooth flat-field (beam profile, scintillator) pattern.
    dark_level : float
        Dark offset in counts.
    read_noise : float
        Gaussian read noise in counts (RMS).
    n_flats : int
        Flat and dark frames averaged for flat-field correction.
    psf_sigma : float
        Gaussian point-spread function of scintillator and optics (pixels, 0 = none).
        It acts on the photons after their shot noise, so the noise becomes spatially
        correlated, as on a real indirect detector; the noise-free frame is blurred too.
    zinger_rate : float
        Probability per pixel and frame of a zinger (a scattered or cosmic hit: a
        bright speck of 1-2 pixels, 3-30x the open-beam level). Never in flats.
    fringes : float
        Strength (pixels squared) of propagation phase-contrast edge fringes: the
        transmission becomes ``T - fringes * laplacian(T)`` (the transport-of-intensity
        approximation), bright and dark bands at every edge. Part of the signal, so
        noise-free frames have them too.
    column_gain_error : float
        RMS of per-column gain errors that the flats do not correct (a drifting
        scintillator, a flat taken at another time), on 10% of the columns: stripes
        in sinograms, rings in slices. Noise-free frames do not have them.
    pixel_gain_error : float
        RMS of a fixed pixel-to-pixel gain (photo-response non-uniformity: scintillator
        grain, pixel response), before the detector blur. A pixel-scale texture that stays
        from frame to frame: in the flats too (flat-field correction divides it out) and in
        the noise-free frames, because it is what the detector records, not noise. Trained
        on it, a projection model learns to keep what repeats across its context instead of
        smoothing every pixel-scale detail (docs/models.md, "A texture that repeats").
    """

    photons: float = 2000.0
    gain_variation: float = 0.05
    dark_level: float = 100.0
    read_noise: float = 2.0
    n_flats: int = 20
    psf_sigma: float = 0.0
    zinger_rate: float = 0.0
    fringes: float = 0.0
    column_gain_error: float = 0.0
    pixel_gain_error: float = 0.0

    def __post_init__(self) -> None:
        if not self.photons > 0:
            raise ValueError(f"photons must be > 0, got {self.photons}")
        if self.psf_sigma < 0 or not 0 <= self.zinger_rate < 0.1:
            raise ValueError(
                f"psf_sigma must be >= 0 and zinger_rate in [0, 0.1), got {self.psf_sigma}, {self.zinger_rate}"
            )
        if not 0 <= self.pixel_gain_error < 0.5:
            raise ValueError(f"pixel_gain_error must be in [0, 0.5), got {self.pixel_gain_error}")


@dataclass
class LowDoseScan:
    """Result of :func:`simulate_scan`.

    Attributes
    ----------
    angles : numpy.ndarray
        Angles (degrees) of the frames.
    frames : numpy.ndarray
        Raw noisy detector frames ``(n_angles, z, x)``, float32 counts.
    expected : numpy.ndarray
        Noise-free expected counts at the same dose (the high-dose limit).
    flat, dark : numpy.ndarray
        Averaged flat and dark fields ``(z, x)`` as measured (noisy).
    sinogram_noisy : numpy.ndarray
        Flat-field corrected ``-log`` line integrals from ``frames``.
    sinogram_clean : numpy.ndarray
        Noise-free line integrals.
    """

    angles: np.ndarray
    frames: np.ndarray
    expected: np.ndarray
    flat: np.ndarray
    dark: np.ndarray
    sinogram_noisy: np.ndarray
    sinogram_clean: np.ndarray


def gain_pattern(shape: tuple[int, int], rel: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth flat-field pattern around 1: vertical beam profile times scintillator/optics variation."""
    g = ndimage.gaussian_filter(rng.standard_normal(shape), max(shape) / 12)
    g /= g.std() + 1e-12
    rows = np.linspace(-1, 1, shape[0])[:, None]
    beam = 1.0 - 0.15 * rows**2  # vertical beam profile
    return (beam * (1 + rel * g)).astype(np.float32)


def pixel_gains(shape: tuple[int, int], rel: float, rng: np.random.Generator) -> np.ndarray:
    """Fixed pixel-to-pixel gains around 1 with relative RMS ``rel`` (white, kept above 0.2)."""
    return np.clip(1.0 + rel * rng.standard_normal(shape), 0.2, None).astype(np.float32)


def simulate_scan(
    volume: np.ndarray,
    angles: np.ndarray,
    detector: DetectorModel,
    rng: np.random.Generator,
    columns: int | None = None,
) -> LowDoseScan:
    """Acquire a low-dose scan of ``volume``: Poisson photon noise, flat/dark, read noise.

    Parameters
    ----------
    volume : numpy.ndarray
        Attenuation volume ``(z, n, n)`` (see :func:`scale_to_max_attenuation`).
    angles : numpy.ndarray
        Projection angles in degrees.
    detector : DetectorModel
        Dose and detector parameters.
    rng : numpy.random.Generator
        Source of all noise.
    columns : int, optional
        Detector columns, the middle ones of the volume's projections (a sample wider than the
        field of view); default: the volume's width.
    """
    line = middle_columns(project(volume, angles), columns)
    shape = line.shape[1:]
    flat_true = detector.photons * gain_pattern(shape, detector.gain_variation, rng)
    if detector.pixel_gain_error > 0:  # drawn only when on: older scans are reproduced exactly
        flat_true = flat_true * pixel_gains(shape, detector.pixel_gain_error, rng)
    if detector.fringes > 0:
        line = -np.log(with_fringes(np.exp(-line), detector.fringes))
    photons = flat_true[None] * np.exp(-line)
    frames = expose(photons + detector.dark_level, detector, rng)
    if detector.column_gain_error > 0:
        columns = rng.random(shape[1]) < 0.1
        error = np.where(columns, 1.0 + rng.normal(0.0, detector.column_gain_error, shape[1]), 1.0)
        frames = (frames - detector.dark_level) * error.astype(np.float32) + detector.dark_level
    if detector.zinger_rate > 0:
        frames = add_zingers(frames, detector.photons, detector.zinger_rate, rng)
    expected = blur(photons, detector.psf_sigma) + detector.dark_level
    k = detector.n_flats
    flat = np.mean([expose(flat_true + detector.dark_level, detector, rng) for _ in range(k)], axis=0)
    dark = detector.dark_level + rng.normal(0.0, detector.read_noise / np.sqrt(k), shape)
    sino = flat_field_correct(frames, flat, dark)
    return LowDoseScan(
        angles=np.asarray(angles),
        frames=frames.astype(np.float32),
        expected=expected.astype(np.float32),
        flat=flat.astype(np.float32),
        dark=dark.astype(np.float32),
        sinogram_noisy=sino.astype(np.float32),
        sinogram_clean=line,
    )


def with_fringes(transmission: np.ndarray, strength: float) -> np.ndarray:
    """Propagation phase-contrast fringes on transmission frames: ``T - strength * laplacian(T)``, kept > 0."""
    if strength <= 0:
        return transmission
    t = np.asarray(transmission, np.float32)
    stack = t[None] if t.ndim == 2 else t
    lap = np.stack([ndimage.laplace(frame, mode="nearest") for frame in stack]).reshape(t.shape)
    return np.clip(t - strength * lap, 1e-3, None)


def blur(frames: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur over the last two axes of a frame or a stack (never across frames)."""
    if sigma <= 0:
        return frames
    sigmas = (0.0,) * (frames.ndim - 2) + (sigma, sigma)
    return ndimage.gaussian_filter(frames, sigmas, mode="nearest")


def add_zingers(frames: np.ndarray, level: float, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Add zingers to ``(n, H, W)`` counts: bright specks of 1-2 pixels, 3-30x ``level``."""
    out = frames.copy()
    hits = np.argwhere(rng.random(frames.shape) < rate)
    for n, r, c in hits:
        amp = level * float(rng.uniform(3.0, 30.0))
        out[n, r, c] += amp
        if rng.random() < 0.5:  # a second pixel along a random direction
            dr, dc = ((0, 1), (1, 0), (1, 1))[int(rng.integers(3))]
            out[n, min(r + dr, frames.shape[1] - 1), min(c + dc, frames.shape[2] - 1)] += 0.5 * amp
    return out


def expose(expected: np.ndarray, detector: DetectorModel, rng: np.random.Generator) -> np.ndarray:
    """A noisy frame or stack (float32 counts) of ``expected`` counts at the scintillator:
    Poisson photons above the dark level, blurred by the detector's PSF (so the noise is
    correlated and the mean is ``blur(expected)``), plus Gaussian read noise."""
    signal = blur(rng.poisson(np.maximum(expected - detector.dark_level, 0)).astype(np.float32),
                  detector.psf_sigma)
    noise = rng.normal(0.0, detector.read_noise, expected.shape).astype(np.float32)
    return signal + detector.dark_level + noise


def flat_field_correct(frames: np.ndarray, flat: np.ndarray, dark: np.ndarray) -> np.ndarray:
    """Line integrals ``-log((frames - dark) / (flat - dark))``, clipped against log(0)."""
    transmission = (frames - dark) / np.maximum(flat - dark, 1e-3)
    return -np.log(np.clip(transmission, 1e-4, None)).astype(np.float32)


def fbp(sinogram: np.ndarray, angles: np.ndarray, filter_name: str = "ramp") -> np.ndarray:
    """Filtered back-projection of one slice's sinogram ``(n_angles, n_det)`` -> ``(n, n)``."""
    return iradon(
        np.asarray(sinogram, np.float64).T, theta=angles, filter_name=filter_name, circle=True
    ).astype(np.float32)


def sirt(sinogram: np.ndarray, angles: np.ndarray, iterations: int = 10) -> np.ndarray:
    """Iterative reconstruction (SART iterations, non-negative) of one slice."""
    sino = np.asarray(sinogram, np.float64).T
    img = None
    for _ in range(iterations):
        img = iradon_sart(sino, theta=angles, image=img, clip=(0, np.inf), relaxation=0.15)
    assert img is not None
    return img.astype(np.float32)


def reconstruct(sinograms: np.ndarray, angles: np.ndarray, method: str = "fbp", **kwargs: Any) -> np.ndarray:
    """Reconstruct a stack ``(n_angles, z, n_det)`` into slices ``(z, n, n)``.

    Parameters
    ----------
    method : {"fbp", "sirt"}
        Filtered back-projection or iterative SIRT/SART.
    """
    if method not in ("fbp", "sirt"):
        raise ValueError(f"method must be 'fbp' or 'sirt', got {method!r}")
    fn = fbp if method == "fbp" else sirt
    return np.stack([fn(sinograms[:, z, :], angles, **kwargs) for z in range(sinograms.shape[1])])
