"""Image quality metrics used by training, benchmarks and tests."""

from __future__ import annotations

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

__all__ = ["psnr", "ssim"]


def _range(reference: np.ndarray) -> float:
    r = float(np.max(reference) - np.min(reference))
    return r if r > 0 else 1.0


def psnr(reference: np.ndarray, image: np.ndarray) -> float:
    """PSNR in dB with the reference frame's own dynamic range."""
    ref = np.asarray(reference, np.float64)
    return float(peak_signal_noise_ratio(ref, np.asarray(image, np.float64), data_range=_range(ref)))


def ssim(reference: np.ndarray, image: np.ndarray) -> float:
    """SSIM (7x7 window) with the reference frame's own dynamic range."""
    ref = np.asarray(reference, np.float64)
    return float(structural_similarity(ref, np.asarray(image, np.float64), data_range=_range(ref)))
