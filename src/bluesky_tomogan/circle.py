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

import numpy as np

from .normalise import robust_range

__all__ = ["RIM_STEP", "outside_circle", "rim_step", "outside_to_fill"]

#: The rim's level minus the outside value, as a share of the slice's robust range, from which the outside is
#: filled. Simulated slices of samples inside the field of view step by at most 0.019 (8-bit storage, rings,
#: sparse views: ``data/sim_slice_real2.h5``), those of samples wider than it by 0.15-0.62 for most.
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

    A slice has a reconstruction circle where every pixel beyond the inscribed circle (more than a
    pixel out, for the rounding of the rim) holds the value of its corner, and the slice inside is
    not that value for the most part; the mask is those pixels plus the ones at the rim that hold
    the value too. ``None`` where any slice has no such circle, or is not square (a projection, a
    cropped slice), or smaller than 16 pixels.
    """
    h, w = slices.shape[-2:]
    if h != w or h < 16 or not np.issubdtype(slices.dtype, np.number):
        return None
    frames = slices.reshape(-1, h, w)
    radius = _radius(h, w)
    beyond, inside = radius > h / 2 + 1.0, radius < h / 2 - 1.5
    masks = np.empty(frames.shape, bool)
    for frame, mask in zip(frames, masks, strict=True):
        np.equal(frame, frame[0, 0], out=mask)
        if not mask[beyond].all() or mask[inside].mean() > 0.5:
            return None
        mask &= ~inside
    return masks.reshape(slices.shape)


def rim_step(frame: np.ndarray, outside: np.ndarray) -> float:
    """How far the rim of ``frame`` (the median of the band just inside its circle) stands from the value
    outside it, as a share of the frame's robust range (:func:`bluesky_tomogan.normalise.robust_range`)."""
    h, w = frame.shape
    band = (_radius(h, w) > h / 2 - RIM_WIDTH) & ~outside
    values = frame[band]
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
