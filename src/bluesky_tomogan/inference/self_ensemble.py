"""Geometric self-ensemble: the network run on mirrored and turned copies of its input, averaged.

A denoiser trained with every flip and quarter turn of its patches (as this package's
training does, :mod:`bluesky_tomogan.model.data`) makes errors that are partly its own
per orientation: the blotchy texture it paints into a slice is not the same in a mirrored
copy, while the structure is. Running the network on ``n`` of the eight symmetries of a
square, undoing each on its output and averaging, keeps the structure and averages that
texture away, for ``n`` times the compute (the "self-ensemble" of Lim et al. 2017, EDSR;
"test-time augmentation" in CAREamics). Worth it where time is not short: a scan denoised
after the fact (``bluesky-tomogan denoise``/``reprocess --self-ensemble 8``) or the few
slices of a live reconstruction. docs/models.md, "Self-ensemble", has what it gains per dose.

The first ``n`` of :data:`TRANSFORMS` are used: 2 adds a left-right mirror, 4 the up-down
flips (every transform that keeps a frame's shape), 8 the four transposed forms. Each copy
of the whole frame (with its context) is padded and tiled as a frame of its shape would be,
so every member is exactly the denoiser's output for that copy.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SELF_ENSEMBLE_SIZES", "TRANSFORMS", "apply", "check_size", "undo"]

#: The symmetries of a square as (quarter turns, mirrored), in the order a self-ensemble takes them.
TRANSFORMS: tuple[tuple[int, bool], ...] = (
    (0, False), (0, True), (2, False), (2, True), (1, False), (1, True), (3, False), (3, True))

#: The self-ensemble sizes that are a whole group of symmetries (so the average has no favoured direction).
SELF_ENSEMBLE_SIZES = (1, 2, 4, 8)


def check_size(n: int) -> int:
    """``n`` if it is one of :data:`SELF_ENSEMBLE_SIZES`, else a ``ValueError`` saying what is."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or int(n) not in SELF_ENSEMBLE_SIZES:
        raise ValueError(f"self_ensemble must be one of {SELF_ENSEMBLE_SIZES} (the network runs that many times a "
                         f"frame, on mirrored and turned copies), got {n!r}")
    return int(n)


def apply(frames: np.ndarray, turns: int, mirrored: bool) -> np.ndarray:
    """``frames`` (..., H, W) turned ``turns`` quarter turns, then mirrored left-right; C-contiguous."""
    out = np.rot90(frames, turns, axes=(-2, -1)) if turns else frames
    return np.ascontiguousarray(out[..., ::-1] if mirrored else out)


def undo(outputs: np.ndarray, turns: int, mirrored: bool) -> np.ndarray:
    """The inverse of :func:`apply` on the network's outputs (a view)."""
    out = outputs[..., ::-1] if mirrored else outputs
    return np.rot90(out, -turns, axes=(-2, -1)) if turns else out
