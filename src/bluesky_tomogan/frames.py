"""What a frame is: which neighbouring frames form its context, which array shapes hold one
grey frame, and the types a denoised frame may be stored in (shared by training, inference, the
callback and the file reader)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, overload

import numpy as np

__all__ = ["centred", "context_indices", "context_offsets", "usable_reach", "near_in_angle", "mirror_stands_in",
           "NEIGHBOUR_DEGREES", "ANGLE_JITTER",
           "has_channel_axis", "looks_like_colour", "without_channel_axis", "cast_frames", "FRAME_DTYPES",
           "COMPRESSION_NAMES"]

T = TypeVar("T")

#: Degrees between a projection and a neighbour beyond which the neighbour is left out of its context (stand-ins
#: instead, :func:`context_offsets`), live (the callback) and offline (:func:`context_indices` given angles): the
#: shipped projection model denoises a frame better alone than with neighbours 5 degrees apart or more (SSIM
#: against the noise-free frame, bead pack at 500 photons, 256 px: alone 0.960; neighbours 3 degrees apart 0.973,
#: 5: 0.955, 20: 0.890; 60 photons and 512 px alike: ``python benchmarks/angle_context.py --spacing [--photons 60]
#: [--size 512]``), the neighbours of a golden-angle or interlaced scan in the order taken, of a sparse scan, or
#: of a coarse fly scan.
NEIGHBOUR_DEGREES = 4.0
#: Degrees by which two angles may pass a limit and still count as within it. Recorded angles jitter (an encoder's
#: readback, a list of angles rounded on its way): a real scan of 2-degree steps (Diamond I12, Savu's test data)
#: recorded 43.7999 and 47.8, so some frames lost their neighbours 4 degrees away and others kept them.
ANGLE_JITTER = 0.01


def near_in_angle(angle: float, centre: float, degrees: float = NEIGHBOUR_DEGREES) -> bool:
    """Whether a view at ``angle`` may serve as context of one at ``centre`` (degrees, either way round the
    circle): at most ``degrees`` (:data:`NEIGHBOUR_DEGREES`; give or take :data:`ANGLE_JITTER`) apart. A NaN
    angle (not known) is near: frames of one view."""
    return not abs((angle - centre + 180.0) % 360.0 - 180.0) > degrees + ANGLE_JITTER


def mirror_stands_in(angle: float, centre: float) -> bool:
    """Whether the view at ``angle`` may stand in, mirrored about the one at ``centre``, for the missing view on the
    other side (:func:`context_offsets`): the two lie twice as far apart as either from the centre, and a sample
    that turns moves the other way in the view stood in for, so the mirror must lie within half of
    :data:`NEIGHBOUR_DEGREES`. On held-out simulated scans (128 and 256 px, 60 and 1000 photons/pixel, the
    shipped projection model) a scan's first and last frames scored 0.0025-0.016 SSIM higher by this rule than
    with mirrors at steps of 1.9 degrees and 0.027-0.094 at 3.75 degrees, the same at 0.47 and 0.94 degrees
    (``python benchmarks/stand_ins.py``; docs/models.md, "Stand-ins under rotation")."""
    return near_in_angle(angle, centre, NEIGHBOUR_DEGREES / 2)


def context_offsets(depth: int, left: int, right: int, mirror: Callable[[int], bool] | None = None) -> list[int]:
    """Offsets from the centre frame that fill a ``depth``-frame context when only the ``left``
    nearest frames before it and the ``right`` nearest after it may be used.

    An unusable neighbour is replaced by its mirror image about the centre when that one is
    usable (and ``mirror`` of its offset is true, where given: :func:`mirror_stands_in` of its angle),
    else by the centre itself: the rule of :func:`context_indices` at a scan's ends,
    of :func:`bluesky_tomogan.context.gate_context` for neighbours that are not views of the
    same thing, and of training's context dropout, so the network sees one kind of stand-in.
    ``context_offsets(5, 0, 0)`` is ``[0, 0, 0, 0, 0]``: the frame is its own context.
    """
    half = depth // 2

    def usable(o: int) -> bool:
        return o == 0 or (o < 0 and -o <= left) or (o > 0 and o <= right)

    def stand_in(o: int) -> int:
        return -o if usable(-o) and (mirror is None or mirror(-o)) else 0

    return [o if usable(o) else stand_in(o) for o in range(-half, half + 1)]


def usable_reach(half: int, usable: Callable[[int], bool]) -> tuple[int, int]:
    """How many neighbours before and after a context's centre may serve (at most ``half`` a side): counting
    outwards on each side, up to the first at an offset ``o`` from the centre for which ``usable(o)`` is false.
    What :func:`context_offsets` takes as ``left`` and ``right``."""

    def reach(step: int) -> int:
        k = 0
        while k < half and usable(step * (k + 1)):
            k += 1
        return k

    return reach(-1), reach(1)


def context_indices(group: np.ndarray, index: int, depth: int = 3, angles: np.ndarray | None = None) -> list[int]:
    """Indices of the ``depth`` frames centred on ``index`` within its scan.

    A neighbour that does not exist (first or last frame), belongs to another
    scan (``group`` differs) or, given each frame's rotation angle (``angles``, degrees;
    NaN where not known), lies more than :data:`NEIGHBOUR_DEGREES` from ``index``'s (a
    golden-angle, interlaced or sparse scan in the order taken), is replaced with those
    beyond it by its mirror image about ``index``, or by ``index`` itself when the mirror
    is missing too or, given angles, too far from the view it would stand for
    (:func:`mirror_stands_in`). Training, offline inference and the live callback all use this rule,
    so edge frames look the same to the network everywhere.
    """
    n = len(group)

    def usable(o: int) -> bool:
        i = index + o
        return 0 <= i < n and group[i] == group[index] and (angles is None or near_in_angle(angles[i], angles[index]))

    def mirror(o: int) -> bool:
        return angles is None or mirror_stands_in(angles[index + o], angles[index])

    left, right = usable_reach(depth // 2, usable)
    return [index + o for o in context_offsets(depth, left, right, mirror)]


@overload
def centred(context: np.ndarray, depth: int) -> np.ndarray: ...


@overload
def centred(context: list[T], depth: int) -> list[T]: ...


def centred(context: Any, depth: int) -> Any:
    """The middle ``depth`` frames of a deeper ``context`` (all of it if it is not deeper).

    A network that reads fewer frames than the context a stream was given (a lighter step of
    an adaptive ladder) gets these: by the rule of :func:`context_indices`, the middle of a
    deeper context is the context of that depth, mirrored neighbours included.
    """
    cut = max((len(context) - depth) // 2, 0)
    return context[cut:len(context) - cut] if cut else context


#: How derived frames may be stored (``TomoGANCallback(frame_dtype=)``): float32 (as denoised), the raw frames'
#: own integer type (``"source"``), or a named integer type.
FRAME_DTYPES = ("float32", "source", "uint8", "uint16", "uint32", "int16", "int32")
#: Their lossless compressions, each frame a chunk (:data:`bluesky_tomogan.hdf5_frames.COMPRESSIONS` says how).
COMPRESSION_NAMES = ("lz4", "zstd", "gzip")


def cast_frames(frames: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``frames`` (float) as ``dtype``: converted to a float type; for an integer type rounded to the nearest
    count and clipped to its range, with pixels without data (NaN) at its largest value, as photon counters
    mark their module gaps."""
    if dtype.kind not in "ui":
        return np.asarray(frames).astype(dtype, copy=False)
    info = np.iinfo(dtype)
    # float32 holds every 8- and 16-bit count exactly, at a third of float64's cost (2048x2048: 10 against 33 ms)
    out = np.rint(np.asarray(frames, dtype=np.float32 if dtype.itemsize <= 2 else np.float64))
    np.clip(out, info.min, info.max, out=out)
    out[np.isnan(out)] = info.max
    return out.astype(dtype)


def looks_like_colour(shape: tuple[int, ...] | list[int]) -> bool:
    """``(H, W, 3)`` or ``(H, W, 4)``: an RGB(A) image, not H frames of ``W x 3`` pixels."""
    return len(shape) == 3 and shape[-1] in (3, 4) and shape[0] > 4 and shape[1] > 4  # 5 frames of 3 x 3: frames


def has_channel_axis(shape: tuple[int, ...] | list[int]) -> bool:
    """``(H, W, 1)``: one grey frame with a trailing single channel (how some cameras, PIL and
    TIFF readers give a grey image), not H frames of ``W x 1`` pixels."""
    return len(shape) == 3 and shape[-1] == 1 and shape[0] > 1 and shape[1] > 1


def without_channel_axis(frame: np.ndarray) -> np.ndarray:
    """A frame that came as ``(H, W, 1)`` as ``(H, W)``; other arrays unchanged."""
    return frame[..., 0] if has_channel_axis(frame.shape) else frame
