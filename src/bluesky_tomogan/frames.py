"""Which neighbouring frames form a frame's context (shared by training, inference, callback)."""

from __future__ import annotations

import numpy as np

__all__ = ["context_indices"]


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
