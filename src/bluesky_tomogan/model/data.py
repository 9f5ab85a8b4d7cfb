"""Patch sampling from TomoGAN-style datasets for training."""

from __future__ import annotations

import numpy as np

from ..errors import DatasetError
from ..frames import context_indices, context_offsets
from ..normalise import normalise, robust_range
from ..simulate.datasets import PairSet

__all__ = ["PatchSampler", "check_context_dropout", "normalised_frames"]


def normalised_frames(pairs: PairSet, index: int, depth: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Normalised ``(depth, H, W)`` context and ``(1, H, W)`` target for frame ``index``."""
    idx = context_indices(pairs.group, index, depth)
    offset, scale = robust_range(pairs.ns[index])
    return normalise(pairs.ns[idx], offset, scale), normalise(pairs.gt[index : index + 1], offset, scale)


def check_context_dropout(share: float) -> None:
    """Refuse a ``context_dropout`` that is not a share of the patches (``ValueError``)."""
    if not 0 <= share <= 1:
        raise ValueError(f"context_dropout is a share of the patches, in [0, 1]; got {share}")


class PatchSampler:
    """Random, augmented training patches with their context of adjacent frames.

    Parameters
    ----------
    pairs : PairSet
        Training frames.
    patch : int
        Patch edge length (a multiple of the network's size multiple).
    depth : int
        Context frames (the network's ``in_channels``).
    seed : int
        Seed of the sampling; fixed seed, same batches.
    context_dropout : float
        Share of patches whose neighbours are (partly) withheld, as inference withholds
        neighbours that do not show the same thing (:func:`bluesky_tomogan.context.gate_context`):
        half of those get no neighbour at all (the frame is its own context, as a single
        frame is), the other half keep a random number of the nearest ones on each side.
        The stand-ins follow :func:`~bluesky_tomogan.frames.context_offsets`. 0 (the
        default): every patch has its full context.
    """

    def __init__(self, pairs: PairSet, patch: int, depth: int = 3, seed: int = 0,
                 context_dropout: float = 0.0) -> None:
        check_context_dropout(context_dropout)
        h, w = pairs.ns.shape[1:]
        if patch > min(h, w):
            raise DatasetError(f"patch size {patch} is larger than the frames ({h}x{w})")
        self.pairs = pairs
        self.patch = patch
        self.depth = depth
        self.context_dropout = context_dropout
        self.rng = np.random.default_rng(seed)
        # per-frame normalisation, computed once on the whole frame as inference does
        self.ranges = np.array([robust_range(f) for f in pairs.ns], np.float32)
        self.context = np.array([context_indices(pairs.group, i, depth) for i in range(len(pairs.ns))])

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(size, depth, P, P)`` inputs and ``(size, 1, P, P)`` targets (float32)."""
        x, y, _ = self._batch(size, with_full=False)
        return x, y

    def batch_with_full_context(self, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`batch` plus the same patches with every neighbour: a teacher's input
        (distillation), whose output is then a target for the student in every case."""
        x, y, full = self._batch(size, with_full=True)
        assert full is not None
        return x, y, full

    def _batch(self, size: int, with_full: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The patches of :meth:`batch` (the same random draws either way), and with ``with_full``
        their full contexts too."""
        p = self.patch
        h, w = self.pairs.ns.shape[1:]
        x = np.empty((size, self.depth, p, p), np.float32)
        y = np.empty((size, 1, p, p), np.float32)
        full = np.empty_like(x) if with_full else None
        for b in range(size):
            i = int(self.rng.integers(len(self.pairs.ns)))
            r, c = int(self.rng.integers(h - p + 1)), int(self.rng.integers(w - p + 1))
            off, scale = self.ranges[i]
            xi = normalise(self.pairs.ns[self.context[i], r : r + p, c : c + p], off, scale)
            yi = normalise(self.pairs.gt[i, r : r + p, c : c + p], off, scale)[None]
            kept = self._kept()
            k = int(self.rng.integers(4))
            flip = bool(self.rng.integers(2))
            xi, yi = np.rot90(xi, k, axes=(1, 2)), np.rot90(yi, k, axes=(1, 2))
            if flip:
                xi, yi = xi[:, :, ::-1], yi[:, :, ::-1]
            x[b], y[b] = (xi if kept is None else xi[kept]), yi
            if full is not None:
                full[b] = xi
        return x, y, full

    def _kept(self) -> list[int] | None:
        """Positions of the full context that stand in for each input frame: ``None`` for all of
        them, or (at the rate of ``context_dropout``) some neighbours withheld."""
        half = self.depth // 2
        if self.depth == 1 or not self.context_dropout or self.rng.random() >= self.context_dropout:
            return None
        if self.rng.random() < 0.5:
            left = right = 0
        else:
            left, right = (int(k) for k in self.rng.integers(0, half + 1, size=2))
        return [half + o for o in context_offsets(self.depth, left, right)]
