"""How much a fine-tune helped, on a simulated scan whose clean reference is known.

A real scan has no clean reference, which is why fine-tuning is self-supervised; a
simulated one (:func:`~bluesky_tomogan.simulate.datasets.write_scan_file`) does, so the
gain can be measured: slices of the held-out slab (the rows the fine-tune did not train
on) reconstructed from all noisy projections, denoised by each model, against the same
rows reconstructed from the noise-free projections.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..frames import context_indices
from ..inference import Denoiser, load_denoiser
from ..metrics import psnr, ssim
from ..reconstruction import corrected_sinogram, reconstruct
from .pairs import HOLDOUT_DEFAULT, _row, rotation_center
from .sources import Scan

__all__ = ["held_out_rows", "slice_quality"]


def held_out_rows(scan: Scan, fraction: float = HOLDOUT_DEFAULT) -> list[int]:
    """Detector rows of the held-out slab: the last ``fraction`` of the rows, as :func:`.pairs.holdout_split`."""
    z = scan.shape[1]
    return list(range(z - max(3, int(round(z * fraction))), z))


def slice_quality(scan: Scan, clean_line_integrals: np.ndarray, models: Mapping[str, str | Denoiser],
                  rows: Sequence[int] | None = None) -> dict[str, dict[str, float]]:
    """Mean SSIM/PSNR over ``rows`` of the raw slices and of each model's denoised slices vs the clean slices.

    Parameters
    ----------
    scan : Scan
        The noisy scan (as the fine-tune read it).
    clean_line_integrals : numpy.ndarray
        ``(n_angles, rows, columns)`` noise-free line integrals of the same scan.
    models : mapping of str to str or Denoiser
        Label -> model (shipped name, card or directory), each run in fp32 on ONNX Runtime, or a denoiser
        loaded as the caller wants it (another precision, or with one of its switches set).
    rows : sequence of int, optional
        Rows to score (default :func:`held_out_rows`); each needs its neighbours for context.
    """
    rows = list(rows if rows is not None else held_out_rows(scan))
    center = rotation_center(scan)
    denoisers = {label: load_denoiser(model, backend="onnxruntime", precision="fp32") if isinstance(model, str)
                 else model for label, model in models.items()}
    one_scan = np.zeros(scan.shape[1], np.int32)

    def context(r: int, depth: int) -> list[int]:
        return context_indices(one_scan, r, depth)  # the rule of training and inference

    needed = sorted({i for r in rows for den in denoisers.values() for i in context(r, den.depth)} | set(rows))

    def noisy(r: int) -> np.ndarray:
        t = corrected_sinogram(scan.projections[:, r, :], _row(scan.flats, r), _row(scan.darks, r))
        return reconstruct(t, scan.angles, center, row=r).slice

    slices = {r: noisy(r) for r in needed}
    clean = {r: reconstruct(np.exp(-clean_line_integrals[:, r, :]), scan.angles, center, row=r,
                            remove_stripes=False).slice for r in rows}

    def score(outputs: Mapping[int, np.ndarray]) -> dict[str, float]:
        return {"ssim": float(np.mean([ssim(clean[r], outputs[r]) for r in rows])),
                "psnr": float(np.mean([psnr(clean[r], outputs[r]) for r in rows]))}

    result = {"raw": score(slices)}
    for label, den in denoisers.items():
        out = {r: den.denoise_context(np.stack([slices[i] for i in context(r, den.depth)])) for r in rows}
        result[label] = score(out)
    return result
