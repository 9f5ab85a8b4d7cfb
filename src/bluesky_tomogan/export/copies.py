"""Offset activation copies: a finer int8 grid for the layers whose rounding reaches the output.

A full-int8 model rounds every activation tensor to 256 levels. In a residual
denoiser the full-resolution tensors carry the frame's fine detail, and their
rounding noise lands on the output, where SSIM against a piecewise-constant
clean frame is very sensitive to it. This transform gives a ReLU-activated
layer ``k`` copies of each output channel, offset by ``-(k-1)/2k .. +(k-1)/2k``
of that tensor's int8 step (:func:`bluesky_tomogan.int8.copy_offsets`),
and makes every layer that reads the tensor average the copies (its weights
for those channels divided by ``k``). The offsets sum to zero, so the float
function is unchanged except within one step of ReLU's kink; the mean of the
``k`` roundings has a ``k`` times finer step. The network stays int8 end to end
(the Edge TPU runs all of it); the price is the consumers' extra input
channels (:meth:`TomoGANGenerator.macs_per_pixel` of the result counts it).

The same trick on the last layer is the TFLite export's ``output_copies``,
averaged on the host instead.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ExportOptionError
from ..int8 import ACTIVATION_COPIES, SLICE_ACTIVATION_COPIES, copy_offsets, int8_step
from ..model.network import ConvLayer, TomoGANGenerator
from .equalise import _output_axis, channel_maxima, shared_maxima

__all__ = ["check_activation_copies", "default_activation_copies", "int8_steps", "offset_activation_copies"]


def _names(gen: TomoGANGenerator) -> dict[int, str]:
    return {id(m): n for n, m in gen.named_modules()}


@torch.no_grad()
def int8_steps(gen: TomoGANGenerator, frames: np.ndarray) -> dict[str, float]:
    """The int8 step of every ReLU-activated layer's output as the TFLite converter calibrates it.

    The range is the output's largest value over ``frames``, shared across a
    concatenation (:func:`bluesky_tomogan.export.equalise.shared_maxima`).
    """
    names = _names(gen)
    return {names[id(p)]: int8_step(0.0, v) for p, v in shared_maxima(gen, channel_maxima(gen, frames)).items()}


def check_activation_copies(gen: TomoGANGenerator, copies: Mapping[str, int]) -> None:
    """Raise :class:`ExportOptionError` unless every key names a ReLU-activated ``Conv2d`` and ``k >= 1``."""
    names = _names(gen)
    producers = {names[id(p)]: p for p, _ in gen.activation_links()}
    choices = sorted(n for n, p in producers.items() if isinstance(p, nn.Conv2d))
    for name, k in copies.items():
        if name not in choices:
            raise ExportOptionError(f"cannot copy {name!r}: not a ReLU-activated Conv2d; choose from {choices}")
        if int(k) < 1:
            raise ExportOptionError(f"copies must be >= 1, got {k} for {name!r}")


def default_activation_copies(card: Mapping[str, Any]) -> dict[str, int]:
    """The offset activation copies of a full-int8 TFLite export that is not told which.

    Parameters
    ----------
    card : mapping
        The model card of the network to export.

    Returns
    -------
    dict of str to int
        The copies the card records for its TFLite model (``files.tflite_int8``), so that
        exporting a shipped or exported model again gives the form its card describes;
        otherwise the default of the card's domain, :data:`~bluesky_tomogan.int8.SLICE_ACTIVATION_COPIES`
        for slices and :data:`~bluesky_tomogan.int8.ACTIVATION_COPIES` else.
    """
    recorded = card.get("files", {}).get("tflite_int8", {}).get("activation_copies")
    if recorded is not None:
        return {str(k): int(v) for k, v in recorded.items()}
    return dict(SLICE_ACTIVATION_COPIES if card.get("domain") == "slice" else ACTIVATION_COPIES)


def _replace(gen: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(gen.get_submodule(parent) if parent else gen, leaf, new)


def _like(mod: ConvLayer, in_channels: int, out_channels: int) -> ConvLayer:
    if isinstance(mod, nn.ConvTranspose2d):
        return nn.ConvTranspose2d(in_channels, out_channels, mod.kernel_size, stride=mod.stride)  # type: ignore[arg-type]
    return nn.Conv2d(in_channels, out_channels, mod.kernel_size, stride=mod.stride,  # type: ignore[arg-type]
                     padding=mod.padding)  # type: ignore[arg-type]


@torch.no_grad()
def offset_activation_copies(gen: TomoGANGenerator, frames: np.ndarray,
                             copies: Mapping[str, int]) -> TomoGANGenerator:
    """A copy of ``gen`` in which the named layers output offset copies of their channels.

    Parameters
    ----------
    gen : TomoGANGenerator
        The network as it will be exported (equalise it first: copies keep ranges).
    frames : numpy.ndarray
        ``(N, C, H, W)`` calibration inputs, as the int8 converter sees them; they
        set each tensor's int8 step and so the offsets.
    copies : mapping of str to int
        Producer name (as in ``gen.named_modules()``, a ReLU-activated ``Conv2d``
        such as ``"stem.0"``) to number of copies.

    Returns
    -------
    TomoGANGenerator
        A transformed deep copy: the named layers' output channels and their
        consumers' input channels grow; ``gen`` is unchanged.
    """
    check_activation_copies(gen, copies)
    out = copy.deepcopy(gen).eval()
    steps = int8_steps(out, frames)
    for name, k in copies.items():
        if k == 1:
            continue
        names = _names(out)
        links = {names[id(p)]: cons for p, cons in out.activation_links()}
        producer = out.get_submodule(name)
        assert isinstance(producer, nn.Conv2d)
        n = producer.out_channels
        offsets = copy_offsets(steps[name], k)
        wide = _like(producer, producer.in_channels, n * k)
        assert producer.bias is not None and wide.bias is not None
        # Identical weights: offsetting each copy's weights by a fraction of their int8 step
        # shifts its pre-activation by that fraction times the sum of the layer's inputs, far
        # more than the bias offsets, and cost 0.0061 SSIM on the slice model (0.0025 -> 0.0086).
        wide.weight.copy_(producer.weight.repeat(k, 1, 1, 1))
        wide.bias.copy_(torch.cat([producer.bias + o for o in offsets]))
        for consumer, first in links[name]:
            in_axis = 1 - _output_axis(consumer)
            w = consumer.weight
            part = w.narrow(in_axis, first, n) / k
            parts = [w.narrow(in_axis, 0, first), *([part] * k),
                     w.narrow(in_axis, first + n, w.shape[in_axis] - first - n)]
            new_w = torch.cat(parts, dim=in_axis)
            grown = _like(consumer, new_w.shape[in_axis], consumer.out_channels)
            grown.weight.copy_(new_w)
            assert grown.bias is not None and consumer.bias is not None
            grown.bias.copy_(consumer.bias)
            _replace(out, names[id(consumer)], grown)
        _replace(out, name, wide)
    return out
