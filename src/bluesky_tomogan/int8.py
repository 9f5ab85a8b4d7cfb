"""The int8 rules that the exports, int8-aware training, the int8 simulation and the int8 sessions share.

Each rule lives here once, so the simulation in training and the benchmarks
quantise exactly as the exported model does, and the LiteRT and OpenVINO int8
sessions treat the pixels that saturate a model's input alike (:class:`InputGrid`).
NumPy only at import; the torch helpers import torch when called (inference never
needs it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["LEVELS", "TFLITE_INPUT_PERCENTILES", "OUTPUT_COPIES", "ACTIVATION_COPIES", "SLICE_ACTIVATION_COPIES",
           "InputGrid", "int8_step", "widened_step", "int8_input_range", "copy_fractions", "copy_offsets"]

#: Steps between the ends of an int8 range (256 levels).
LEVELS = 255
#: Calibration values outside these percentiles do not widen the int8 input range.
TFLITE_INPUT_PERCENTILES = (0.01, 99.99)
#: Offset copies of the output the TFLite model returns (the host averages them).
OUTPUT_COPIES = 4
#: Offset copies of the full-resolution layers' outputs (:mod:`bluesky_tomogan.export.copies`).
ACTIVATION_COPIES: dict[str, int] = {"stem.0": 4, "head.0": 4}
#: The same for slice models: their fine detail also runs through the first encoder's and the
#: last decoder's convolutions. Without copies of those the full slice model's full-int8 form
#: lost 0.0036 SSIM instead of 0.0025 on its validation frames, and ``tomogan-slice-fast``'s
#: 0.0191 instead of 0.0097 on its card's (docs/models.md, "Offset activation copies").
SLICE_ACTIVATION_COPIES: dict[str, int] = ACTIVATION_COPIES | {"enc1.0": 2, "dec1.0": 2, "dec1.2": 2}


def int8_step(lo: Any, hi: Any) -> Any:
    """The int8 step of the range ``[lo, hi]`` (floats, arrays or torch tensors)."""
    return (hi - lo) / LEVELS


def widened_step(lo: float, hi: float, copies: int) -> float:
    """The step of ``[lo, hi]`` once ``copies`` offset copies widen it by a fraction of one step."""
    return float((hi - lo + int8_step(lo, hi) * (copies - 1) / copies) / LEVELS)


def int8_input_range(values: np.ndarray,
                     percentiles: tuple[float, float] = TFLITE_INPUT_PERCENTILES) -> tuple[float, float]:
    """The int8 input range the export calibrates from ``values``: their ``percentiles``.

    Int8-aware training uses the same rule, so that it simulates the exported model.
    """
    lo, hi = np.percentile(np.asarray(values), percentiles)
    return float(lo), float(hi)


def copy_fractions(copies: int) -> np.ndarray:
    """``copies`` fractions of one step, symmetric around zero: the offsets of the copies in steps."""
    return (np.arange(copies, dtype=np.float32) - (copies - 1) / 2) / copies


def copy_offsets(step: Any, copies: int) -> Any:
    """Offsets of ``copies`` copies of a tensor whose int8 step is ``step`` (a float or torch tensor).

    Returns a float32 torch tensor; the export and int8-aware training
    (:func:`bluesky_tomogan.model.qat.fake_quant_copies`) both use it.
    """
    import torch

    return torch.from_numpy(copy_fractions(copies)) * step


@dataclass(frozen=True)
class InputGrid:
    """The int8 grid of a model's input: ``value = (q - zero) * scale`` for codes ``qmin..qmax``.

    A full-int8 model saturates its input at the grid's ends. The host adds the
    centre frame to the network's correction, so it must add the frame *as the
    model saw it* (:meth:`as_seen`), and a zinger (an isolated spike far beyond
    the range) must reach both the network and that sum as its neighbourhood's
    median (:meth:`despiked`): otherwise the network corrects the clipped value
    and the host adds the spike back. The LiteRT backend (codes -128..127) and
    OpenVINO's int8 IR (its input ``FakeQuantize``, codes 0..255) share this.

    Parameters
    ----------
    scale : float
        Input units per code.
    zero : float
        The code of the value 0.
    qmin, qmax : int
        The lowest and highest code; a value at either is beyond the range.
    """

    scale: float
    zero: float
    qmin: int = -128
    qmax: int = 127

    @classmethod
    def from_range(cls, lo: float, hi: float, levels: int = LEVELS + 1) -> InputGrid:
        """The grid of a ``FakeQuantize`` from ``lo`` to ``hi`` with ``levels`` levels (codes ``0..levels-1``)."""
        scale = (hi - lo) / (levels - 1)
        return cls(scale, -lo / scale, 0, levels - 1)

    def quantise(self, x: np.ndarray) -> np.ndarray:
        """The codes of ``x`` (float, clipped to ``qmin..qmax``)."""
        return np.clip(self._unclipped_codes(x), self.qmin, self.qmax)

    def _unclipped_codes(self, x: np.ndarray) -> np.ndarray:
        """``rint(x / scale + zero)`` in a new array, computed in place (a code at or past either end
        means the same as the clipped one to every caller's test of ``qmin < q < qmax``)."""
        q = np.asarray(x / self.scale)  # 0-d for a scalar, so that the steps below work in place
        q += self.zero
        return np.rint(q, out=q)

    def _ends(self) -> tuple[float, float]:
        """The highest value that quantises to ``qmin`` and the lowest that quantises to ``qmax``."""
        return (self.qmin + 0.5 - self.zero) * self.scale, (self.qmax - 0.5 - self.zero) * self.scale

    def beyond(self, x: np.ndarray) -> np.ndarray:
        """Where ``x`` quantises to ``qmin`` or ``qmax`` (at or beyond the range's ends)."""
        low, high = self._ends()
        return (x <= low) | (x >= high)

    def despiked(self, x: np.ndarray, q: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """``x`` (and its codes ``q``, if given) with each pixel beyond the range whose 3x3 median
        is inside it set to that median (over the last two axes).

        Measured on the projection model's dose test set (LiteRT): PSNR 30.8 -> 43.8 dB
        (fp32 43.0). Not for slices, whose out-of-range pixels are thin streaks (it cost
        0.008 SSIM there).
        """
        if q is None:
            low, high = self._ends()
            # the common case, nothing beyond: two reductions without temporaries, 1.3 ms per 5x1024x1024
            # context where the mask and its any() took 4.5 ms (a NaN fails both tests and goes on)
            if float(x.min()) > low and float(x.max()) < high:
                return x, q
            beyond = self.beyond(x)
        else:
            beyond = (q <= self.qmin) | (q >= self.qmax)
        if not beyond.any():  # nonzero costs 5 ms more
            return x, q
        where = np.nonzero(beyond)
        # medians at those pixels only: a whole-frame median filter costs 235 ms per 3x1024x1024
        # context on two cores, for the handful of pixels a zinger or two saturate
        median = _medians_3x3(x, where)
        spike = ~self.beyond(median)
        at = tuple(i[spike] for i in where)
        despiked = np.array(x, copy=True)
        despiked[at] = median[spike]
        despiked_q = None
        if q is not None:
            despiked_q = np.array(q, copy=True)
            despiked_q[at] = self.quantise(median[spike])
        return despiked, despiked_q

    def as_seen(self, x: np.ndarray, isolated_spikes: bool = False) -> np.ndarray:
        """``x`` rounded to the grid; values beyond its range keep their float value (isolated
        spikes their 3x3 median, with ``isolated_spikes``).

        The network cannot undo the clipping of those rare pixels, and adding the clipped
        value back cost 0.7 dB of PSNR on the slice model; inside the range, adding the
        rounded value keeps the rounding out of the result (simulated on the slice model,
        input rounding alone: 0.0020 of SSIM with the exact frame added, 0.0005 with the
        rounded one).
        """
        # worked in place: 0.8 ms per 1024x1024 frame where quantise, where() and a cast took 3-9 ms,
        # the same values
        q = self._unclipped_codes(x)
        inside = (q > self.qmin) & (q < self.qmax)
        beyond = self.despiked(x, q)[0] if isolated_spikes else x
        q -= self.zero
        q *= self.scale
        np.copyto(q, beyond, where=~inside, casting="same_kind")
        return q.astype(np.float32, copy=False)


def _medians_3x3(x: np.ndarray, where: tuple[np.ndarray, ...]) -> np.ndarray:
    """The 3x3 medians (over the last two axes, edges repeated) of ``x`` at the indices ``where``.

    The same values as ``scipy.ndimage.median_filter(x, size=(1, ..., 3, 3), mode="nearest")[where]``.
    """
    *lead, rows, cols = where
    h, w = x.shape[-2:]
    # clipped indices repeat the edges, as padding would, without copying the frame
    neighbours = np.stack([x[(*lead, np.clip(rows + dr, 0, h - 1), np.clip(cols + dc, 0, w - 1))]
                           for dr in (-1, 0, 1) for dc in (-1, 0, 1)])
    return np.median(neighbours, axis=0).astype(x.dtype, copy=False)
