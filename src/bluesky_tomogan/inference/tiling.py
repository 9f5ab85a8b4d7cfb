"""Overlapping tiles with smooth blending, for frames of any size.

A frame is covered by tiles of one fixed shape (what Edge TPU and TensorRT
engines need, and what keeps compiled-model caches small). Neighbouring tiles
overlap by at least ``overlap`` pixels; tile starts are spread evenly so the
overlap is as large as the tile count allows. Each tile's output is weighted
by a window that is zero on a ``margin`` next to an interior tile edge (where
the network's zero padding distorts the result), then rises smoothly (a
raised cosine) across the rest of the overlap; edges on the frame border keep
full weight. Frames smaller than a tile are padded by reflection.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["TileGrid", "plan_axis", "pad_to", "blend_window"]


def plan_axis(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)`` with >= ``overlap``."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    if stride <= 0:
        raise ValueError(f"overlap {overlap} must be smaller than the tile {tile}")
    n = int(np.ceil((length - overlap) / stride))
    return [int(round(i * (length - tile) / (n - 1))) for i in range(n)]


def _ramp(n_tile: int, lead: int, trail: int, margin: int) -> np.ndarray:
    """1-D weight: rises over ``lead`` px at the start, falls over ``trail`` px at the end."""
    w = np.ones(n_tile, np.float32)
    for width, side in ((lead, 1), (trail, -1)):
        if width <= 0:
            continue
        m = min(margin, width // 2)
        ramp_len = width - m
        t = (np.arange(ramp_len, dtype=np.float32) + 0.5) / ramp_len
        ramp = np.concatenate([np.zeros(m, np.float32), 0.5 - 0.5 * np.cos(np.pi * t)])
        if side == 1:
            w[:width] = np.minimum(w[:width], ramp)
        else:
            w[n_tile - width :] = np.minimum(w[n_tile - width :], ramp[::-1])
    return np.maximum(w, 1e-6)  # never exactly zero: every pixel keeps a defined weight


def blend_window(tile: tuple[int, int], lead: tuple[int, int], trail: tuple[int, int], margin: int) -> np.ndarray:
    """2-D separable blending window for one tile (see the module docstring)."""
    wy = _ramp(tile[0], lead[0], trail[0], margin)
    wx = _ramp(tile[1], lead[1], trail[1], margin)
    return wy[:, None] * wx[None, :]


def pad_to(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pad the last two axes up to ``(height, width)`` by reflection (edge-repeat if tiny)."""
    h, w = frames.shape[-2:]
    ph, pw = max(0, height - h), max(0, width - w)
    if ph == 0 and pw == 0:
        return frames
    pad = [(0, 0)] * (frames.ndim - 2) + [(0, ph), (0, pw)]
    out = np.pad(frames, pad, mode="reflect") if ph < h and pw < w else np.pad(frames, pad, mode="symmetric")
    if out.shape[-2] < height or out.shape[-1] < width:  # symmetric pads at most one length
        return pad_to(out, height, width)
    return out


@dataclass(frozen=True)
class TileGrid:
    """Tile layout of one frame shape.

    Parameters
    ----------
    height, width : int
        Frame shape (after any padding to at least one tile).
    tile : tuple of int
        Tile shape.
    overlap : int
        Minimum overlap between neighbouring tiles.
    margin : int
        Pixels next to an interior tile edge that get zero weight.
    """

    height: int
    width: int
    tile: tuple[int, int]
    overlap: int = 32
    margin: int = 8

    @property
    def starts(self) -> list[tuple[int, int]]:
        ys = plan_axis(self.height, self.tile[0], self.overlap)
        xs = plan_axis(self.width, self.tile[1], self.overlap)
        return [(y, x) for y in ys for x in xs]

    def windows(self) -> list[np.ndarray]:
        """Blending window of each tile, in the order of :attr:`starts`."""
        ys = plan_axis(self.height, self.tile[0], self.overlap)
        xs = plan_axis(self.width, self.tile[1], self.overlap)
        th, tw = self.tile

        def leads(starts: list[int], t: int) -> list[tuple[int, int]]:
            out = []
            for i, s in enumerate(starts):
                lead = starts[i - 1] + t - s if i > 0 else 0
                trail = s + t - starts[i + 1] if i + 1 < len(starts) else 0
                out.append((lead, trail))
            return out

        ly, lx = leads(ys, th), leads(xs, tw)
        return [
            blend_window(self.tile, (ly[i][0], lx[j][0]), (ly[i][1], lx[j][1]), self.margin)
            for i in range(len(ys))
            for j in range(len(xs))
        ]

    @property
    def whole(self) -> bool:
        """One tile covers the frame exactly: nothing to cut out or blend."""
        return self.tile == (self.height, self.width)

    def split(self, frames: np.ndarray) -> np.ndarray:
        """``(C, H, W)`` -> ``(n_tiles, C, th, tw)`` (copies, or a view of a whole frame)."""
        if self.whole:
            return frames[None]
        th, tw = self.tile
        return np.stack([frames[:, y : y + th, x : x + tw] for y, x in self.starts])

    def merge(self, tiles: np.ndarray) -> np.ndarray:
        """``(n_tiles, C, th, tw)`` outputs -> blended ``(C, H, W)`` (a view of a whole frame's tile)."""
        if self.whole:
            return tiles[0]
        th, tw = self.tile
        acc = np.zeros((tiles.shape[1], self.height, self.width), np.float32)
        norm = np.zeros((self.height, self.width), np.float32)
        for (y, x), tile, win in zip(self.starts, tiles, self.windows(), strict=True):
            acc[:, y : y + th, x : x + tw] += tile * win
            norm[y : y + th, x : x + tw] += win
        return acc / norm
