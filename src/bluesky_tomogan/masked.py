"""Masked pixels: integer values that photon-counting detectors write where there is no measurement.

Photon-counting detectors write the largest value of their integer type (``2**N - 1``,
Eiger) or, in ``int32``, a negative one (Pilatus: -1, -2) where a pixel has no data: gaps
between modules, dead and flagged pixels. A camera whose ADC fills its type writes its top
value where a pixel clipped. Either way the value is not an intensity, and fed to a network
it is an outlier millions of times the frame's range that spoils every pixel in the
receptive field around it (``benchmarks/masked_pixels.py``: with 1.3 % of its pixels at
``2**32 - 1`` a projection came out at SSIM 0.0000 instead of 0.995). The denoiser gives the network each masked
pixel's nearest unmasked value instead (a lone masked pixel, the median of its eight
neighbours: :func:`fill_masked`) and returns the raw value there, so the derived
frame has the same mask as the raw one; QC leaves masked pixels out of its intensity and
noise metrics. NaN plays the same part in floating-point frames (:func:`missing_pixels`).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np
from scipy import ndimage

__all__ = ["SIGNED_MASK_VALUES", "masked_pixels", "missing_pixels", "fill_masked"]

#: The negative values a 32-bit photon counter writes where a pixel has no data (Pilatus: -1 in the
#: gaps between modules, -2 at bad pixels).
SIGNED_MASK_VALUES = (-1, -2)


def masked_pixels(frames: np.ndarray, raw_dtype: np.dtype | str | None = None) -> np.ndarray | None:
    """Where ``frames`` hold their integer type's largest value, or in ``int32`` one of
    :data:`SIGNED_MASK_VALUES` (Pilatus: -1 in gaps, -2 at bad pixels); ``None`` if nowhere (or not
    integer).

    Negative values are a mask only where they are nothing else: an ``int32`` frame with other
    negative values is dark-subtracted data, negative where the noise is (an areaDetector
    background subtraction, a processing step), and none of its pixels is masked for being
    negative; nor is any negative pixel of an ``int16`` or ``int64`` frame.

    ``raw_dtype``: the detector's integer type when ``frames`` are a float copy of its frames
    (a derived frame keeps the raw value where the detector has no data), e.g. ``"<u4"``; in a
    copy of ``int32`` frames the pixels at exactly -1 or -2 are masked (denoised values are not
    whole numbers).
    """
    dtype = frames.dtype if raw_dtype is None else np.dtype(raw_dtype)
    if dtype.kind not in "ui":
        return None
    # compared in the frames' own type: float32(2**32 - 1) is 2**32, and so is the derived copy of it
    top = frames.dtype.type(np.iinfo(dtype).max)
    signed_mask = dtype.kind == "i" and dtype.itemsize == 4
    if frames.max() < top and not (signed_mask and frames.min() < 0):  # the common case: no mask array
        return None
    at_top = frames == top
    if not signed_mask:
        return at_top
    flagged = np.isin(frames, SIGNED_MASK_VALUES)
    if frames.dtype.kind in "ui" and np.count_nonzero(flagged) < np.count_nonzero(frames < 0):
        flagged[...] = False  # other negative values too: dark-subtracted data, not a detector's mask
    mask = at_top | flagged
    return mask if mask.any() else None


def missing_pixels(frames: np.ndarray) -> np.ndarray | None:
    """Pixels without data: :func:`masked_pixels` of integer frames, NaN in floating-point ones.

    Floating-point data mark pixels without a measurement with NaN (a detector's mask
    applied by its IOC or a processing step); ``None`` if there are none.
    """
    if frames.dtype.kind != "f":
        return masked_pixels(frames)
    nan = np.isnan(frames)
    return nan if nan.any() else None


def fill_masked(frames: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``frames`` as float32 with each masked pixel replaced by the nearest unmasked pixel of its own frame,
    or, for a masked pixel alone among eight unmasked neighbours (a bad or hot pixel, not a gap), by their
    median.

    One neighbour's value is one noisy sample, which the network then sees twice side by side; the
    median of eight is close to what the pixel would have read (a camera with 0.6 % hot pixels at its
    top value: the denoised values beside them moved by up to 1.3 sigma of the photon noise with the
    nearest value, ``tests/test_callback_external.py``). A frame that is masked everywhere keeps its
    values (there is nothing to take them from).
    """
    out = np.asarray(frames, np.float32).copy()
    flat_out, flat_mask = out.reshape(-1, *out.shape[-2:]), mask.reshape(-1, *mask.shape[-2:])
    for frame, where in zip(flat_out, flat_mask, strict=True):
        if where.any() and not where.all():
            nearest, (rows, cols) = _fill_plan(where)
            frame[where] = frame[nearest]
            if rows.size:
                around = np.stack([frame[rows + dy, cols + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx])
                frame[rows, cols] = np.median(around, axis=0)
    return out


#: Masks whose fill plans are kept: a detector's mask is the same in every frame, and the distance
#: transform that finds the nearest unmasked pixels costs ~90 ms at 1024x1024, for every frame of a context.
MASKS_KEPT = 8
_Plan = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
_plans: OrderedDict[tuple[tuple[int, ...], bytes], _Plan] = OrderedDict()
_plans_lock = threading.Lock()


def mask_key(mask: np.ndarray) -> tuple[tuple[int, ...], bytes]:
    """A boolean mask's shape and digest: the key of what is kept per mask (here and in :mod:`.circle`)."""
    return mask.shape, hashlib.blake2b(np.packbits(mask).tobytes(), digest_size=16).digest()


def _fill_plan(where: np.ndarray) -> _Plan:
    """Row and column of the nearest unmasked pixel of each masked pixel of ``where`` (in mask order), and
    the rows and columns of the lone masked pixels: no masked pixel among their eight neighbours, not on the
    frame's edge."""
    key = mask_key(where)
    with _plans_lock:
        if key in _plans:
            _plans.move_to_end(key)
            return _plans[key]
    rows, cols = ndimage.distance_transform_edt(where, return_distances=False, return_indices=True)
    h, w = where.shape
    padded = np.pad(where, 1)
    crowded = np.zeros_like(where)
    for dy in range(3):
        for dx in range(3):
            if dy != 1 or dx != 1:
                crowded |= padded[dy:dy + h, dx:dx + w]
    lone = where & ~crowded
    lone[0], lone[-1], lone[:, 0], lone[:, -1] = False, False, False, False
    lone_rows, lone_cols = np.nonzero(lone)
    plan = ((rows[where], cols[where]), (lone_rows, lone_cols))
    with _plans_lock:
        _plans[key] = plan
        while len(_plans) > MASKS_KEPT:
            _plans.popitem(last=False)
    return plan
