"""What a frame is: which neighbouring frames form its context, and which array shapes hold one
grey frame (shared by training, inference, the callback and the file reader)."""

from __future__ import annotations

from typing import Any, TypeVar, overload

import numpy as np

__all__ = ["centred", "context_indices", "has_channel_axis", "looks_like_colour", "without_channel_axis"]

T = TypeVar("T")


def context_indices(group: np.ndarray, index: int, depth: int = 3) -> list[int]:
    """Indices of the ``depth`` frames centred on ``index`` within its scan.

    A neighbour that does not exist (first or last frame) or belongs to another
    scan (``group`` differs) is replaced by its mirror image about ``index``, or
    by ``index`` itself when the mirror is missing too. Training, offline
    inference and the live callback all use this rule, so edge frames look the
    same to the network everywhere.
    """
    half = depth // 2
    n = len(group)

    def usable(j: int) -> bool:
        return 0 <= j < n and group[j] == group[index]

    out = []
    for k in range(index - half, index + half + 1):
        if usable(k):
            out.append(k)
        elif usable(2 * index - k):
            out.append(2 * index - k)
        else:
            out.append(index)
    return out


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


def looks_like_colour(shape: tuple[int, ...] | list[int]) -> bool:
    """``(H, W, 3)`` or ``(H, W, 4)``: an RGB(A) image, not H frames of ``W x 3`` pixels."""
    return len(shape) == 3 and shape[-1] in (3, 4) and shape[0] > 4


def has_channel_axis(shape: tuple[int, ...] | list[int]) -> bool:
    """``(H, W, 1)``: one grey frame with a trailing single channel (how some cameras, PIL and
    TIFF readers give a grey image), not H frames of ``W x 1`` pixels."""
    return len(shape) == 3 and shape[-1] == 1 and shape[0] > 1 and shape[1] > 1


def without_channel_axis(frame: np.ndarray) -> np.ndarray:
    """A frame that came as ``(H, W, 1)`` as ``(H, W)``; other arrays unchanged."""
    return frame[..., 0] if has_channel_axis(frame.shape) else frame
