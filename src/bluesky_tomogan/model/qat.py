"""Quantisation-aware fine-tuning for the int8 exports (TFLite/Edge TPU, OpenVINO).

Post-training int8 quantisation of a U-Net loses more than the 0.005 SSIM
budget: each per-tensor activation scale adds rounding noise, and a denoiser's
output is exactly the fine detail that noise hides. Fine-tuning with the int8
rounding simulated in the forward pass (and straight-through gradients in the
backward pass) teaches the weights to tolerate it, as the seed paper did.

What is simulated matches the exports: weights per output channel,
symmetric; activations per tensor, asymmetric, at the network's input, after
every ReLU (TFLite fuses ReLU into the convolution, so that is the tensor it
quantises), at every concatenation (one scale shared by its inputs) and at
the head's output, the correction. The exports add the centre frame on the
host in float, as the int8 model saw it: rounded, except where it saturates
(see :meth:`~bluesky_tomogan.inference.backends.litert.LiteRTSession.input_as_seen`), and
the TFLite model's output is ``output_copies`` offset copies averaged on the
host (:func:`bluesky_tomogan.export.tflite.offset_output_copies`). Ranges
are what calibration measures: the running min and max
(``observer="minmax"``; ``"ema"`` follows a moving average instead), and the
input range can be fixed to the export's (``input_range``; the TFLite export
clips its calibration inputs to percentiles). With both, the simulation
predicts the real full-int8 TFLite model (``benchmarks/int8_simulation.py``).
The fake quantisation is removed afterwards: the result is an ordinary float
generator to export.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..int8 import copy_offsets, int8_step
from .network import TomoGANGenerator, _Concat

__all__ = ["fake_quantized", "fake_quant_activation", "fake_quant_copies", "fake_quant_weight",
           "round_unsaturated"]

log = logging.getLogger(__name__)


def _ste_round(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """Symmetric per-output-channel int8 rounding of a conv weight (STE gradient)."""
    dims = tuple(range(1, w.ndim))
    scale = w.detach().abs().amax(dim=dims, keepdim=True).clamp_min(1e-8) / 127.0
    return torch.clamp(_ste_round(w / scale), -127, 127) * scale


def _int8_grid(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lo = torch.minimum(lo, torch.zeros_like(lo))  # zero must be exactly representable
    scale = int8_step(lo, hi).clamp_min(int8_step(0.0, 1e-8))
    return scale, torch.round(-lo / scale) - 128


def fake_quant_activation(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Asymmetric per-tensor int8 rounding of ``x`` over ``[lo, hi]`` (STE gradient)."""
    scale, zero = _int8_grid(lo, hi)
    q = torch.clamp(_ste_round(x / scale) + zero, -128, 127)
    return (q - zero) * scale


def fake_quant_copies(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, copies: int) -> torch.Tensor:
    """Mean of the int8 roundings of ``copies`` copies of ``x`` offset by fractions of a step."""
    if copies == 1:
        return fake_quant_activation(x, lo, hi)
    scale, _ = _int8_grid(lo, hi)
    offsets = copy_offsets(scale, copies).to(x.dtype)  # the export's offsets, so the simulation matches it
    return torch.stack([fake_quant_activation(x + o, lo, hi) - o for o in offsets]).mean(0)


def round_unsaturated(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``x`` rounded to the int8 grid of ``[lo, hi]`` where it lies inside, unchanged where it saturates."""
    scale, zero = _int8_grid(lo, hi)
    q = torch.round(x / scale) + zero
    inside = (q > -128) & (q < 127)
    return torch.where(inside, x + ((q - zero) * scale - x).detach(), x)


class _WeightFakeQuant(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return fake_quant_weight(w)


class _RangeTracker:
    """A tensor's range as calibration observes it: running min/max, or their moving average."""

    def __init__(self, observer: str = "minmax", momentum: float = 0.05,
                 fixed: tuple[float, float] | None = None) -> None:
        if observer not in ("minmax", "ema"):
            raise ValueError(f"observer must be 'minmax' or 'ema', got {observer!r}")
        self.observer = observer
        self.momentum = momentum
        self.lo: torch.Tensor | None = None if fixed is None else torch.tensor(float(fixed[0]))
        self.hi: torch.Tensor | None = None if fixed is None else torch.tensor(float(fixed[1]))
        self.fixed = fixed is not None

    def update(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.fixed:
            assert self.lo is not None and self.hi is not None
            return self.lo, self.hi
        lo, hi = x.detach().amin().float(), x.detach().amax().float()
        if self.lo is None or self.hi is None:
            self.lo, self.hi = lo, hi
        elif self.observer == "minmax":
            self.lo, self.hi = torch.minimum(self.lo, lo), torch.maximum(self.hi, hi)
        else:
            self.lo = self.lo + self.momentum * (lo - self.lo)
            self.hi = self.hi + self.momentum * (hi - self.hi)
        return self.lo, self.hi


@contextmanager
def fake_quantized(gen: TomoGANGenerator, *, observer: str = "minmax",
                   input_range: tuple[float, float] | None = None,
                   output_copies: int = 1) -> Iterator[TomoGANGenerator]:
    """Within the block, ``gen`` computes as its int8 export would (approximately).

    Weights stay float parameters (the optimiser updates them); the rounding
    is applied on the fly and disappears when the block exits.

    Parameters
    ----------
    gen : TomoGANGenerator
        The network, modified in place for the duration of the block.
    observer : {"minmax", "ema"}
        How activation ranges follow the data (see the module docstring).
    input_range : (float, float), optional
        Fixed int8 range of the network input, as the export calibrates it.
    output_copies : int
        Offset copies of the output that the host averages (the TFLite export's
        ``output_copies``; 1 for OpenVINO).
    """
    handles = []
    trackers: list[_RangeTracker] = []

    def act_hook(_mod: nn.Module, _inp: object, out: torch.Tensor) -> torch.Tensor:
        return fake_quant_activation(out, *tracker_for(_mod).update(out))

    by_module: dict[int, _RangeTracker] = {}

    def tracker_for(mod: nn.Module) -> _RangeTracker:
        t = by_module.get(id(mod))
        if t is None:
            t = by_module[id(mod)] = _RangeTracker(observer)
            trackers.append(t)
        return t

    convs = [m for m in gen.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    for mod in gen.modules():
        if isinstance(mod, (nn.ReLU, _Concat)):
            handles.append(mod.register_forward_hook(act_hook))
    for conv in convs:
        parametrize.register_parametrization(conv, "weight", _WeightFakeQuant())
    in_tracker, out_tracker = _RangeTracker(observer, fixed=input_range), _RangeTracker(observer)

    def input_as_seen(_mod: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        # what both the network and the host's residual add get: the int8 input where it is in range
        x = args[0]
        return (round_unsaturated(x, *in_tracker.update(x)),)

    def clip_input(_mod: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        assert in_tracker.lo is not None and in_tracker.hi is not None
        return (fake_quant_activation(args[0], in_tracker.lo, in_tracker.hi),)  # saturates the rest

    def quant_output(_mod: nn.Module, _inp: object, out: torch.Tensor) -> torch.Tensor:
        return fake_quant_copies(out, *out_tracker.update(out), output_copies)

    handles.append(gen.register_forward_pre_hook(input_as_seen))
    handles.append(gen.stem.register_forward_pre_hook(clip_input))
    handles.append(gen.head.register_forward_hook(quant_output))
    try:
        yield gen
    finally:
        for h in handles:
            h.remove()
        for conv in convs:  # keep the float weights, drop the rounding
            parametrize.remove_parametrizations(conv, "weight", leave_parametrized=False)
