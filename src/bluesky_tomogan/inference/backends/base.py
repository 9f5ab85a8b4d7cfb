"""What every backend adapter provides."""

from __future__ import annotations

from typing import Protocol

import numpy as np

__all__ = ["Session"]


class Session(Protocol):
    """A compiled model ready to run normalised ``(N, C, H, W)`` float32 batches.

    Attributes
    ----------
    backend : str
        Registry name of the runtime (``openvino``, ``onnxruntime``, ``litert``...).
    precision : str
        ``fp32``, ``bf16``, ``fp16`` or ``int8``.
    fixed_shape : tuple of int or None
        The only ``(H, W)`` the model accepts, or ``None`` when any multiple of
        the size multiple works.
    max_batch : int
        Largest batch :meth:`run` accepts at once.
    """

    backend: str
    precision: str
    fixed_shape: tuple[int, int] | None
    max_batch: int

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Denoise ``(N, C, H, W)`` normalised frames into ``(N, 1, H, W)`` float32."""
        ...

    def input_as_seen(self, x: np.ndarray) -> np.ndarray:
        """Normalised input values as the model computes with them (rounded to its input precision).

        The exported networks return a correction that removes the noise of the
        input they saw, its rounding included, so the :class:`Denoiser` adds the
        centre frame back as the model saw it; adding the exact frame would put
        the rounding back into the result. Full-precision backends return ``x``.
        """
        ...
