"""The reconstruction circle of a slice, and what a slice model is given outside it.

Reconstruction codes write one value outside the circle that every projection saw (algotom,
TomoPy's ``circ_mask``, scikit-image's ``iradon(circle=True)``: 0; a slice stored as an 8-bit
image: the grey level of 0). For a sample inside the field of view the slice just inside the
rim is air, at that same value, and nothing happens at the rim. For a sample wider than the field
of view (local tomography: no open beam beside it) filtered back-projection fills the circle and
rises towards its rim, and the circle ends in a step from the rim's level down to the outside
value. The slice models read that step as structure and paint bright blobs along it (Diamond
I12's scan, docs/models.md "The rim of a sample wider than the field of view").

:func:`outside_to_fill` finds such a step; the denoiser then gives the network each outside pixel's
nearest value inside the circle (the slice extended outwards, as reconstruction codes pad a
truncated sinogram) and puts the stored outside value back in its output, as it does for a
detector's masked pixels (:mod:`bluesky_tomogan.masked`). Slices whose rim is at the outside
value are given to the network as they are: that is what it was trained on.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from .masked import mask_key
from .normalise import robust_range

__all__ = ["RIM_STEP", "outside_circle", "rim_step", "outside_to_fill"]

#: The rim's level minus the outside value, as a share of the slice's robust range, from which the outside is
#: filled. Simulated slices of samples inside the field of view step by at most 0.016 (8-bit storage, rings,
#: sparse views: ``data/sim_slice_real2.h5``), three in four of those wider than it by 0.03-0.61
#: (``python benchmarks/slice_sets.py --rim-steps``).
RIM_STEP = 0.05

#: Width of the band just inside the circle whose median is the rim's level, in pixels.
RIM_WIDTH = 5


@functools.lru_cache(maxsize=8)
def _radius(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    radius = np.hypot(yy - (h - 1) / 2, xx - (w - 1) / 2)
    radius.setflags(write=False)
    return radius


def outside_circle(slices: np.ndarray) -> np.ndarray | None:
    """Where each of ``slices`` (``(..., n, n)``) lies outside its reconstruction circle, or ``None``.

    A slice has a reconstruction circle where the pixels at its corner's value that connect to its edge
    cover everything beyond the inscribed circle (more than a pixel out, for the rounding of the rim) and
    leave at least a quarter of the slice inside: the circle of algotom or scikit-image, or a smaller one
    (TomoPy's ``circ_mask(ratio=0.95)``). The mask is those pixels. ``None`` where any slice has no such
    circle, or is not square (a projection, a cropped slice), or is smaller than 16 pixels.
    """
    h, w = slices.shape[-2:]
    if h != w or h < 16 or not np.issubdtype(slices.dtype, np.number):
        return None
    frames = slices.reshape(-1, h, w)
    beyond = _radius(h, w) > h / 2 + 1.0
    masks = np.empty(frames.shape, bool)
    for frame, mask in zip(frames, masks, strict=True):
        corner = frame[0, 0]
        if not (frame[beyond] == corner).all():  # the cheap test first: most frames have values in their corners
            return None
        known = _known_circle(frame)
        if known is not None:
            mask[...] = known
            continue
        mask[...] = ~ndimage.binary_fill_holes(frame != corner)  # the corner's value, connected to the edge
        if mask.mean() > 0.75:
            return None
        _remember(mask)
    return masks.reshape(slices.shape)


#: Circles kept (~4 MB for a 1024x1024 slice's): a reconstruction's is the same in every slice, and finding one
#: anew (a hole fill) costs ~30 ms per 1024x1024 slice, where checking a known one costs ~1 ms.
CIRCLES_KEPT = 4


class _Circle(NamedTuple):
    mask: np.ndarray  # the outside, read-only
    outside: np.ndarray  # its flat indices
    edge: np.ndarray  # flat indices of the pixels beside it, as the hole fill connects them (edges, not corners)
    band: np.ndarray  # the rim band: RIM_WIDTH pixels inside it


_circles: OrderedDict[tuple[tuple[int, ...], bytes], _Circle] = OrderedDict()
_circles_lock = threading.Lock()


def _known_circle(frame: np.ndarray) -> np.ndarray | None:
    """A remembered circle that is exactly this frame's: its outside all at the corner's value, and no pixel at
    that value beside it (else the frame's outside would reach further)."""
    with _circles_lock:
        circles = [c for c in _circles.values() if c.mask.shape == frame.shape]
    corner, flat = frame[0, 0], frame.reshape(-1)
    for circle in circles:
        if (flat[circle.outside] == corner).all() and not (flat[circle.edge] == corner).any():
            return circle.mask
    return None


def _remember(mask: np.ndarray) -> _Circle:
    """The circle of ``mask`` (an outside), kept for the next slices."""
    key = mask_key(mask)
    with _circles_lock:
        if key in _circles:
            _circles.move_to_end(key)
            return _circles[key]
    kept = mask.copy()
    kept.setflags(write=False)
    edge = ndimage.binary_dilation(mask) & ~mask
    band = ~mask & (ndimage.distance_transform_edt(~mask) <= RIM_WIDTH)
    circle = _Circle(kept, np.flatnonzero(mask), np.flatnonzero(edge), band)
    with _circles_lock:
        _circles[key] = circle
        while len(_circles) > CIRCLES_KEPT:
            _circles.popitem(last=False)
    return circle


def rim_step(frame: np.ndarray, outside: np.ndarray) -> float:
    """How far the rim of ``frame`` (the median of the band of :data:`RIM_WIDTH` pixels just inside its circle)
    stands from the value outside it, as a share of the frame's robust range
    (:func:`bluesky_tomogan.normalise.robust_range`)."""
    values = frame[_remember(outside).band]
    values = values[np.isfinite(values)]
    if not values.size:
        return 0.0
    _, scale = robust_range(frame)
    return float(abs(np.median(values) - frame[outside].flat[0]) / scale)


def outside_to_fill(context: np.ndarray, centre: int) -> np.ndarray | None:
    """The pixels of a slice model's ``context`` (``(depth, n, n)``) to give the network a value from inside
    the circle: each slice's outside where the centre slice's rim steps down or up to the outside value by
    :data:`RIM_STEP` of its range or more; ``None`` where there is no circle or no such step."""
    outside = outside_circle(context)
    if outside is None or rim_step(context[centre], outside[centre]) < RIM_STEP:
        return None
    return outside
