"""Quantisation-aware fine-tuning for the int8 exports (TFLite/Edge TPU, OpenVINO).

Post-training int8 quantisation of a U-Net loses more than the 0.005 SSIM
budget: each per-tensor activation scale adds rounding noise, and a denoiser's
output is exactly the fine detail that noise hides. Fine-tuning with the int8
rounding simulated in the forward pass (and straight-through gradients in the
backward pass) teaches the weights to tolerate it, as the seed paper did.

What is simulated matches the exports: weights per output channel,
symmetric; activations per tensor, asymmetric, at the input of the
convolution path, after every ReLU (TFLite fuses ReLU into the convolution,
so that is the tensor it quantises), at every concatenation (one scale shared
by its inputs) and at the head's output, the correction (the exports add the
centre frame on the host in float, so neither the residual nor its input is
rounded). Ranges are what calibration measures: the running min and max
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

from .network import TomoGANGenerator, _Concat

__all__ = ["fake_quantized", "fake_quant_activation", "fake_quant_weight"]

log = logging.getLogger(__name__)


def _ste_round(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """Symmetric per-output-channel int8 rounding of a conv weight (STE gradient)."""
    dims = tuple(range(1, w.ndim))
    scale = w.detach().abs().amax(dim=dims, keepdim=True).clamp_min(1e-8) / 127.0
    return torch.clamp(_ste_round(w / scale), -127, 127) * scale


def fake_quant_activation(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Asymmetric per-tensor int8 rounding of ``x`` over ``[lo, hi]`` (STE gradient)."""
    lo = torch.minimum(lo, torch.zeros_like(lo))  # zero must be exactly representable
    scale = (hi - lo).clamp_min(1e-8) / 255.0
    zero = torch.round(-lo / scale) - 128
    q = torch.clamp(_ste_round(x / scale) + zero, -128, 127)
    return (q - zero) * scale


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
                   input_range: tuple[float, float] | None = None) -> Iterator[TomoGANGenerator]:
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

    def quant_input(_mod: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        x = args[0]
        return (fake_quant_activation(x, *in_tracker.update(x)),)

    def quant_output(_mod: nn.Module, _inp: object, out: torch.Tensor) -> torch.Tensor:
        return fake_quant_activation(out, *out_tracker.update(out))

    # The convolution path's input and the head's output: the residual add stays float, as in the exports.
    handles.append(gen.stem.register_forward_pre_hook(quant_input))
    handles.append(gen.head.register_forward_hook(quant_output))
    try:
        yield gen
    finally:
        for h in handles:
            h.remove()
        for conv in convs:  # keep the float weights, drop the rounding
            parametrize.remove_parametrizations(conv, "weight", leave_parametrized=False)
