"""Resize-convolution trained, one transposed convolution deployed: the decoders of an ``"edge"`` network.

A decoder of :class:`~bluesky_tomogan.model.network.TomoGANGenerator` upsamples its input
``x`` (bilinear x2), concatenates the skip input and runs a 3x3 convolution. The convolution
of a concatenation is the sum of a convolution of each part, and a 3x3 convolution behind a
fixed bilinear x2 resize is one 6x6 stride-2 transposed convolution of ``x`` itself: per axis,
``x[i]`` reaches upsampled pixel ``2i + t`` (``t = -1 .. 2``) with the resize's weight
``B[t]`` (:data:`~.keras_model.BILINEAR_X2_TAPS`) and output pixel ``p`` reads upsampled pixels
``p - 1 .. p + 1``, so ``x[i]`` reaches output ``p`` through the kernel
``G[p - 2i] = sum_dy W[dy] B[p - 2i + dy]``, six taps. The deployed decoder is then
``conv3x3(skip) + conv_transpose6x6_stride2(edge-padded x)``: no resize op, no concatenation,
and no full-resolution copy of the upsampled map, the three things of the decoder that int8
runtimes run slowest (OpenVINO keeps a bilinear resize in float and concatenates in a
reference kernel).

It equals the trained decoder only where the trained convolution pads the upsampled map by
replication (``GeneratorConfig(upsampled_padding="edge")``): padding ``x`` by replication is
the resize's clamping, and a zero-padded upsampled map has no such form (its outermost row
of zeros is not an upsampled row). The export checks the match on random input.
Measured on the light projection network (AMD EPYC, family 26 model 2, 2 threads,
1024x1024, the same plain NNCF int8 quantisation of both forms, IR alone,
``checkpoints/fused-decoder/``): 82-85 ms against 101-104 ms.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..model.network import TomoGANGenerator
from .keras_model import BILINEAR_X2_TAPS

__all__ = ["DECODER_LEVELS", "FusedDecoderGenerator", "FusedUpConv", "fuse_decoders", "fused_kernel",
           "fused_sum_patterns"]


def fused_kernel(weight: torch.Tensor) -> torch.Tensor:
    """The ``(C, O, 6, 6)`` transposed-convolution kernel (stride 2, padding 4, on the input padded
    by one pixel) of the ``(O, C, 3, 3)`` convolution ``weight`` behind a bilinear x2 resize."""
    # taps[k, dy + 1]: the resize's weight for kernel tap k, B[t] with t = k - 2 + dy (B is indexed from t = -1)
    taps = torch.zeros(6, 3, dtype=weight.dtype)
    for k in range(6):
        for dy in (-1, 0, 1):
            if 0 <= k - 1 + dy < len(BILINEAR_X2_TAPS):
                taps[k, dy + 1] = float(BILINEAR_X2_TAPS[k - 1 + dy])
    # G[c, o, ky, kx] = sum_{dy, dx} taps[ky, dy] taps[kx, dx] W[o, c, dy, dx]
    return torch.einsum("ya,xb,ocab->coyx", taps, taps, weight)


class FusedUpConv(nn.Module):
    """``conv(cat(up(x), skip))`` of an ``"edge"`` decoder as ``conv(skip) + conv_transpose(pad(x))``.

    It takes ``(x, skip)`` as one tuple, so that it can stand first in the decoder's
    ``nn.Sequential`` in place of the convolution it replaces: the decoder keeps its module
    path (``dec1.0.up``, ``dec1.2``), which NNCF's names and ignored scopes follow.
    """

    def __init__(self, conv: nn.Conv2d, up_channels: int) -> None:
        super().__init__()
        w = conv.weight.detach()
        self.skip = nn.Conv2d(w.shape[1] - up_channels, w.shape[0], 3, padding=1)
        self.up = nn.ConvTranspose2d(up_channels, w.shape[0], 6, stride=2, padding=4, bias=False)
        with torch.no_grad():
            self.skip.weight.copy_(w[:, up_channels:])
            assert conv.bias is not None and self.skip.bias is not None
            self.skip.bias.copy_(conv.bias.detach())
            self.up.weight.copy_(fused_kernel(w[:, :up_channels]))

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, skip = inputs
        return torch.add(self.skip(skip), self.up(F.pad(x, (1, 1, 1, 1), mode="replicate")))


#: The decoders' levels: 1 at full resolution, 3 the deepest.
DECODER_LEVELS: tuple[int, ...] = (1, 2, 3)


def fused_sum_patterns(levels: Sequence[int]) -> list[str]:
    """NNCF's names (PyTorch graph) of the fused decoders' sums at ``levels``: ``torch.add`` in ``dec<level>.0``.

    Quantised, each sum's two inputs are signed pre-activation maps on one int8 grid each, which the
    trained form never rounds; see :func:`~.openvino_int8.quantisation_aware_ir`.

    Raises
    ------
    ValueError
        A level that is not one of :data:`DECODER_LEVELS`.
    """
    unknown = sorted(set(levels) - set(DECODER_LEVELS))
    if unknown:
        raise ValueError(f"no decoder level {unknown}; the levels are {list(DECODER_LEVELS)} (1: full resolution)")
    return [rf"dec{level}/0/add/\d+" for level in sorted(set(levels))]


class FusedDecoderGenerator(TomoGANGenerator):
    """A :class:`TomoGANGenerator` whose decoders run fused (:func:`fuse_decoders` makes one).

    Each ``dec<level>[0]`` is a :class:`FusedUpConv`; the rest of the decoder is as trained.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError("FusedDecoderGenerator is made from a trained network: fuse_decoders(gen)")

    def _decoder(self, level: int, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return getattr(self, f"dec{level}")((x, skip))


def _out_channels(conv: nn.Module) -> int:
    assert isinstance(conv, nn.Conv2d)
    return conv.out_channels


def fuse_decoders(gen: TomoGANGenerator) -> FusedDecoderGenerator:
    """A copy of ``gen`` (an ``upsampled_padding="edge"`` network) that computes the same function with
    each decoder's resize and first convolution fused into a transposed convolution: the form to export.

    ``gen`` may be a network the int8 export transformed (equalised, with offset activation
    copies: :mod:`.copies`), whose layers are wider than its config says: the copy keeps its
    modules as they are. ``gen`` is not modified.

    Raises
    ------
    ValueError
        ``gen`` pads its upsampled maps with zeros, or does not upsample bilinearly.
    """
    if gen.config.upsampled_padding != "edge":
        raise ValueError("only a network with upsampled_padding='edge' has a fused form; "
                         f"this one has {gen.config.upsampled_padding!r}")
    fused = copy.deepcopy(gen).eval()
    fused.__class__ = FusedDecoderGenerator  # the same modules; only _decoder differs
    # the upsampled input's channels come first in each decoder's concatenation; their number is
    # what the layer before the resize puts out (wider than the config says after offset copies)
    up_channels = {3: _out_channels(fused.bottleneck[0]), 2: _out_channels(fused.dec3[2]),
                   1: _out_channels(fused.dec2[2])}
    for level in (1, 2, 3):
        dec = getattr(fused, f"dec{level}")
        dec[0] = FusedUpConv(dec[0], up_channels[level])
    assert isinstance(fused, FusedDecoderGenerator)
    return fused
