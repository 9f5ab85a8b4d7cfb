"""Image quality metrics used by training, export, benchmarks and tests.

Both metrics first map reference and image through the same affine map that
sends the reference's min-max range onto [0, 1]. PSNR is invariant to that map
anyway, but SSIM's luminance term is not invariant to offsets: without a
canonical scale the same denoised frame would score differently in detector
counts, attenuation units or normalised network units.
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

__all__ = ["psnr", "ssim", "canonical"]


def canonical(reference: np.ndarray, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map both arrays by the affine map taking ``reference`` to [0, 1] (float64)."""
    ref = np.asarray(reference, np.float64)
    lo, hi = float(ref.min()), float(ref.max())
    scale = hi - lo if hi > lo else 1.0
    return (ref - lo) / scale, (np.asarray(image, np.float64) - lo) / scale


def psnr(reference: np.ndarray, image: np.ndarray) -> float:
    """PSNR in dB, peak = the reference's dynamic range."""
    ref, img = canonical(reference, image)
    return float(peak_signal_noise_ratio(ref, img, data_range=1.0))


def ssim(reference: np.ndarray, image: np.ndarray) -> float:
    """SSIM (7x7 window) in the canonical scale (see the module docstring)."""
    ref, img = canonical(reference, image)
    return float(structural_similarity(ref, img, data_range=1.0))
