"""TomoGAN generator and discriminator (PyTorch).

The generator follows the architecture described by Liu et al. (2019), "TomoGAN:
low-dose synchrotron X-ray tomography with generative adversarial networks":
a U-Net without batch normalisation that maps three adjacent slices (or
projections) to one denoised image. ``GeneratorConfig.in_channels`` reads more (any odd
number: the shipped projection models read five); the frames meet only in the 1x1 stem.

```
3 -> 1x1 conv -> 8
  -> [3x3 32, 3x3 32]  ----------------------------------skip1-------.
  -> maxpool -> [3x3 64, 3x3 64]  --------------------skip2------.   |
  -> maxpool -> [3x3 128, 3x3 128]  ---------------skip3----.    |   |
  -> maxpool -> 3x3 128 (bottleneck)                        |    |   |
  -> up x2 -> concat(skip3) -> [3x3 64, 3x3 64]  <----------'    |   |
  -> up x2 -> concat(skip2) -> [3x3 32, 3x3 32]  <---------------'   |
  -> up x2 -> concat(skip1) -> [3x3 32, 3x3 32]  <-------------------'
  -> 1x1 conv -> 16 -> 1x1 conv -> 1 (linear)
```

Options beyond the paper, each motivated by edge deployment:

``upsample``
    ``"bilinear"`` (resize, as in the paper) or ``"transposed"`` (a learned 2x2
    stride-2 transposed convolution, which accelerators run natively).
``input_downscale``
    1, 2 or 4. The U-Net runs at ``1/input_downscale`` of the frame's resolution and
    returns the full resolution, trained against full-resolution targets.
    ``forward`` takes the *full-resolution* input, so callers never change. How
    the input gets there is ``downscale``:

    ``"space-to-depth"`` (the one to use)
        The stem is a ``f x f`` convolution of stride ``f`` (``f = input_downscale``):
        exactly space-to-depth (each ``f x f`` block of every input frame becomes
        ``f**2`` channels) followed by a 1x1 convolution, so no pixel is averaged
        away. The head ends in a ``f x f`` transposed convolution of stride ``f``
        (sub-pixel convolution, Shi et al. 2016) back to full resolution, and the
        residual add is at full resolution. Every level of the U-Net costs
        ``1/f**2`` of its MACs; both ends are plain (transposed) convolutions,
        which every exporter and the Edge TPU map.
    ``"area"``
        The input is area-averaged and extra x2 upsampling stages (with a 3x3
        convolution each) are appended to the decoder. The averaging removes the
        fine detail the targets hold; kept for comparison and old cards.
``width``
    Channel multiplier (e.g. 0.5 halves every layer: about 1/4 of the MACs); the
    pruned, lighter variant with a more stable latency on small accelerators.
``upsampled_padding``
    How the first convolution of each decoder pads the upsampled map at the frame's
    edge: ``"zeros"`` (every model before session 27) or ``"edge"`` (replicated, as
    the bilinear resize clamps; the skip input is zero-padded either way). With
    ``"edge"`` the resize and the part of that convolution that reads the upsampled
    map are one 6x6 stride-2 transposed convolution of the low-resolution map, which
    the export writes instead (:mod:`bluesky_tomogan.export.fused_decoder`): no resize,
    no concatenation and no full-resolution copy of the upsampled map at inference.
    Bilinear upsampling only.
``residual``
    Adds the centre input channel to the output, so the network learns the
    correction. This converges several times faster on short CPU budgets and
    costs one element-wise add. Not used with ``input_downscale > 1`` and ``downscale="area"``.

Spatial sizes must be multiples of ``8 * input_downscale`` (three 2x2 poolings);
the inference layer pads and tiles so callers never see this constraint.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputShapeError

__all__ = ["ConvLayer", "GeneratorConfig", "TomoGANGenerator", "TomoGANDiscriminator", "conv_taps"]

Upsample = Literal["bilinear", "transposed"]
Downscale = Literal["area", "space-to-depth"]
UpsampledPadding = Literal["zeros", "edge"]
ConvLayer = nn.Conv2d | nn.ConvTranspose2d


@dataclass(frozen=True)
class GeneratorConfig:
    """Architecture options of :class:`TomoGANGenerator`.

    Parameters
    ----------
    in_channels : int
        Number of adjacent slices/frames given as context (3 in TomoGAN).
    upsample : {"bilinear", "transposed"}
        Decoder upsampling.
    input_downscale : int
        1, 2 or 4; see the module docstring.
    downscale : {"area", "space-to-depth"}
        How the input reaches the lower resolution; see the module docstring.
    width : float
        Channel multiplier applied to every layer.
    residual : bool
        Add the centre input channel to the output.
    upsampled_padding : {"zeros", "edge"}
        How each decoder's first convolution pads the upsampled map; see the module docstring.
    channels_override : dict of str to int
        Output channels of individual layers by module name (``"enc1.0"``), over
        ``width``: the per-layer widths of a pruned network
        (:func:`bluesky_tomogan.model.allinone.prune`).
    """

    in_channels: int = 3
    upsample: Upsample = "bilinear"
    input_downscale: int = 1
    downscale: Downscale = "area"
    width: float = 1.0
    residual: bool = True
    channels_override: dict[str, int] = field(default_factory=dict, hash=False)
    upsampled_padding: UpsampledPadding = "zeros"

    def __post_init__(self) -> None:
        if self.in_channels < 1 or self.in_channels % 2 == 0:
            raise ValueError(f"in_channels must be odd and >= 1, got {self.in_channels}")
        if self.upsample not in ("bilinear", "transposed"):
            raise ValueError(f"upsample must be 'bilinear' or 'transposed', got {self.upsample!r}")
        if self.upsampled_padding not in ("zeros", "edge"):
            raise ValueError(f"upsampled_padding must be 'zeros' or 'edge', got {self.upsampled_padding!r}")
        if self.upsampled_padding == "edge" and self.upsample != "bilinear":
            raise ValueError("upsampled_padding='edge' needs upsample='bilinear' (the resize it fuses with)")
        if self.input_downscale not in (1, 2, 4):
            raise ValueError(f"input_downscale must be 1, 2 or 4, got {self.input_downscale}")
        if self.downscale not in ("area", "space-to-depth"):
            raise ValueError(f"downscale must be 'area' or 'space-to-depth', got {self.downscale!r}")
        if self.input_downscale == 1:  # nothing is downscaled: one network, one config (and one card)
            object.__setattr__(self, "downscale", "area")
        if not 0.125 <= self.width <= 4:
            raise ValueError(f"width must be in [0.125, 4], got {self.width}")
        bad = {k: v for k, v in self.channels_override.items() if not (isinstance(v, int) and v >= 1)}
        if bad:
            raise ValueError(f"channels_override needs positive integer widths, got {bad}")

    @property
    def space_to_depth(self) -> bool:
        """Whether the U-Net runs at lower resolution behind a strided stem (see the module docstring)."""
        return self.input_downscale > 1 and self.downscale == "space-to-depth"

    @property
    def adds_residual(self) -> bool:
        """Whether the network adds its centre input frame to its output (at full resolution)."""
        return self.residual and (self.input_downscale == 1 or self.space_to_depth)

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this."""
        return 8 * self.input_downscale

    def channels(self, base: int) -> int:
        """Scale a paper channel count by ``width`` (at least 4 channels)."""
        return max(4, int(round(base * self.width)))

    def width_of(self, layer: str, base: int) -> int:
        """Output channels of ``layer`` (a module name): its override, else ``base`` scaled by ``width``."""
        return int(self.channels_override.get(layer, self.channels(base)))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not d["channels_override"]:  # cards of unpruned networks stay as they were
            del d["channels_override"]
        if d["input_downscale"] == 1:  # no downscaling: nothing to say
            del d["downscale"]
        if d["upsampled_padding"] == "zeros":  # cards written before the option stay as they were
            del d["upsampled_padding"]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GeneratorConfig:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        if "channels_override" in known:
            known["channels_override"] = {str(k): int(v) for k, v in dict(known["channels_override"]).items()}
        return cls(**known)


def _conv(cin: int, cout: int, k: int = 3) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2)


class _DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int, cout2: int | None = None) -> None:
        last = cout if cout2 is None else cout2
        super().__init__(_conv(cin, cout), nn.ReLU(inplace=True), _conv(cout, last), nn.ReLU(inplace=True))


class _Up(nn.Module):
    """x2 upsampling: bilinear resize, or a 2x2 stride-2 transposed convolution."""

    def __init__(self, channels: int, mode: Upsample, out_channels: int | None = None) -> None:
        super().__init__()
        self.mode = mode
        self.out_channels = channels if mode == "bilinear" or out_channels is None else out_channels
        self.deconv = (
            nn.ConvTranspose2d(channels, self.out_channels, 2, stride=2) if mode == "transposed" else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deconv is not None:
            return F.relu(self.deconv(x))
        # align_corners=False == TF/Keras half_pixel_centers: the TFLite export matches.
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class _Concat(nn.Module):
    """Channel concatenation as a module, so int8-aware training can observe its range.

    Int8 converters give a concatenation one per-tensor scale for all its inputs;
    :mod:`.qat` hooks this module to simulate that.
    """

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=1)


class TomoGANGenerator(nn.Module):
    """TomoGAN U-Net generator: ``(N, C, H, W) -> (N, 1, H, W)``.

    Parameters
    ----------
    config : GeneratorConfig, optional
        Architecture options; the paper's network by default.
    """

    def __init__(self, config: GeneratorConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or GeneratorConfig()
        w = cfg.width_of
        f = cfg.input_downscale
        stem = w("stem.0", 32 if cfg.space_to_depth else 8)  # f*f*3 values per position need room
        e1a, e1b = w("enc1.0", 32), w("enc1.2", 32)
        e2a, e2b = w("enc2.0", 64), w("enc2.2", 64)
        e3a, e3b = w("enc3.0", 128), w("enc3.2", 128)
        bott = w("bottleneck.0", 128)
        first = (nn.Conv2d(cfg.in_channels, stem, f, stride=f) if cfg.space_to_depth
                 else _conv(cfg.in_channels, stem, 1))
        self.stem = nn.Sequential(first, nn.ReLU(inplace=True))
        self.enc1 = _DoubleConv(stem, e1a, e1b)
        self.enc2 = _DoubleConv(e1b, e2a, e2b)
        self.enc3 = _DoubleConv(e2b, e3a, e3b)
        self.bottleneck = nn.Sequential(_conv(e3b, bott), nn.ReLU(inplace=True))
        self.up3 = _Up(bott, cfg.upsample, w("up3.deconv", bott))
        self.dec3 = _DoubleConv(self.up3.out_channels + e3b, w("dec3.0", 64), w("dec3.2", 64))
        d3 = w("dec3.2", 64)
        self.up2 = _Up(d3, cfg.upsample, w("up2.deconv", d3))
        self.dec2 = _DoubleConv(self.up2.out_channels + e2b, w("dec2.0", 32), w("dec2.2", 32))
        d2 = w("dec2.2", 32)
        self.up1 = _Up(d2, cfg.upsample, w("up1.deconv", d2))
        self.dec1 = _DoubleConv(self.up1.out_channels + e1b, w("dec1.0", 32), w("dec1.2", 32))
        self.cat3, self.cat2, self.cat1 = _Concat(), _Concat(), _Concat()
        if cfg.upsampled_padding == "edge":  # _decoder pads their inputs
            for dec in (self.dec3, self.dec2, self.dec1):
                reads_padded = dec[0]
                assert isinstance(reads_padded, nn.Conv2d)
                reads_padded.padding = (0, 0)
        # Super-resolution tail when trained on low-resolution input.
        n_extra = 0 if cfg.space_to_depth else int(math.log2(cfg.input_downscale))
        last = w("dec1.2", 32)
        sr = []
        for i in range(n_extra):
            up = _Up(last, cfg.upsample, w(f"sr.{i}.0.deconv", last))
            width = w(f"sr.{i}.1", 32)
            sr.append(nn.Sequential(up, _conv(up.out_channels, width), nn.ReLU(inplace=True)))
            last = width
        self.sr = nn.ModuleList(sr)
        head = _conv(last, w("head.0", 16), 1)  # created first: the same initialisation as before for a seed
        last_layer: ConvLayer = (nn.ConvTranspose2d(w("head.0", 16), 1, f, stride=f) if cfg.space_to_depth
                                 else _conv(w("head.0", 16), 1, 1))
        self.head = nn.Sequential(head, nn.ReLU(inplace=True), last_layer)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise :class:`InputShapeError` unless ``x`` fits the network."""
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise InputShapeError(
                f"expected a (N, {cfg.in_channels}, H, W) tensor, got shape {tuple(x.shape)}"
            )
        h, w = x.shape[-2:]
        m = cfg.size_multiple
        if h % m or w % m or h == 0 or w == 0:
            raise InputShapeError(
                f"H and W must be positive multiples of {m} for this network, got {h}x{w}; "
                "pad the frame or use bluesky_tomogan.load_denoiser, which tiles any size"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        cfg = self.config
        centre = x[:, cfg.in_channels // 2 : cfg.in_channels // 2 + 1]
        if cfg.input_downscale > 1 and not cfg.space_to_depth:
            x = F.avg_pool2d(x, cfg.input_downscale)
        s = self.stem(x)
        e1 = self.enc1(s)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        e3 = self.enc3(F.max_pool2d(e2, 2))
        b = self.bottleneck(F.max_pool2d(e3, 2))
        d1 = self._decoder(1, self._decoder(2, self._decoder(3, b, e3), e2), e1)
        for stage in self.sr:
            d1 = stage(d1)
        out = self.head(d1)
        if cfg.adds_residual:
            out = out + centre
        return out

    def _decoder(self, level: int, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Decoder ``level`` (3: the deepest): ``x`` upsampled, concatenated with ``skip``, two convolutions."""
        up, cat, dec = getattr(self, f"up{level}"), getattr(self, f"cat{level}"), getattr(self, f"dec{level}")
        if self.config.upsampled_padding == "zeros":
            return dec(cat(up(x), skip))
        # each input padded as the first convolution (built without padding) reads it: the upsampled map
        # by replication, the skip input with zeros
        return dec(cat(F.pad(up(x), (1, 1, 1, 1), mode="replicate"), F.pad(skip, (1, 1, 1, 1))))

    def correction_network(self) -> TomoGANGenerator:
        """A copy (shared weights) that returns only the correction, without the residual add.

        Int8 exports use it: adding the centre frame on the host in float keeps
        the input's int8 rounding out of the output (the largest single int8
        error, measured with TFLite's quantisation debugger).
        """
        if not self.config.adds_residual:
            return self
        twin = TomoGANGenerator(GeneratorConfig.from_dict(self.config.to_dict() | {"residual": False}))
        twin.load_state_dict(self.state_dict())
        return twin.eval()

    def activation_links(self) -> list[tuple[ConvLayer, list[tuple[ConvLayer, int]]]]:
        """Every ReLU-activated layer and the layers that read its output channels.

        Each entry is ``(producer, [(consumer, first_input_channel), ...])``. A
        producer's output passes only through per-channel positive-homogeneous
        operations (ReLU, max-pooling, bilinear resize, concatenation) before its
        consumers, so scaling output channel ``c`` by ``s > 0`` and the consumers'
        input channel ``c`` by ``1 / s`` leaves the network's function unchanged
        (used by :mod:`bluesky_tomogan.export.equalise`). Mirrors :meth:`forward`.
        """

        def conv(seq: nn.Module, i: int = 0) -> ConvLayer:
            layer = seq[i]  # type: ignore[index]
            assert isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d))
            return layer

        def via(up: _Up, consumer: ConvLayer, offset: int = 0) -> list[tuple[ConvLayer, int]]:
            # a transposed convolution is itself a ReLU-activated producer in between
            return [(up.deconv, 0)] if up.deconv is not None else [(consumer, offset)]

        links: list[tuple[ConvLayer, list[tuple[ConvLayer, int]]]] = [(conv(self.stem), [(conv(self.enc1), 0)])]
        encoders = [self.enc1, self.enc2, self.enc3]
        after_pool = [conv(self.enc2), conv(self.enc3), conv(self.bottleneck)]
        for block, after, dec in zip(encoders, after_pool, [self.dec1, self.dec2, self.dec3], strict=True):
            links.append((conv(block), [(conv(block, 2), 0)]))
            # concatenations put the upsampled decoder path first, the skip second
            skip_offset = conv(dec).in_channels - conv(block, 2).out_channels
            links.append((conv(block, 2), [(after, 0), (conv(dec), skip_offset)]))
        upstream = [(conv(self.bottleneck), self.up3, self.dec3), (conv(self.dec3, 2), self.up2, self.dec2),
                    (conv(self.dec2, 2), self.up1, self.dec1)]
        for producer, up, dec in upstream:
            links.append((producer, via(up, conv(dec))))
            if up.deconv is not None:
                links.append((up.deconv, [(conv(dec), 0)]))
            links.append((conv(dec), [(conv(dec, 2), 0)]))
        last = conv(self.dec1, 2)
        for stage in self.sr:
            up, sr_conv = stage[0], conv(stage, 1)  # type: ignore[index]
            assert isinstance(up, _Up)
            links.append((last, via(up, sr_conv)))
            if up.deconv is not None:
                links.append((up.deconv, [(sr_conv, 0)]))
            last = sr_conv
        links.append((last, [(conv(self.head), 0)]))
        links.append((conv(self.head), [(conv(self.head, 2), 0)]))
        return links

    @property
    def adds_residual(self) -> bool:
        """Whether ``forward`` adds the centre input frame to the network output."""
        return self.config.adds_residual

    def layer_pixels(self, size: int = 64) -> dict[str, float]:
        """Output pixels of every (transposed) convolution per output pixel of the network, by module name.

        1 at full resolution, 1/4 one level down...; counted on a ``size`` x ``size`` input.
        """
        seen: dict[str, float] = {}

        def hook(name: str) -> Any:
            return lambda _m, _i, out: seen.__setitem__(name, out.shape[-1] * out.shape[-2] / size**2)

        handles = [m.register_forward_hook(hook(n)) for n, m in self.named_modules()
                   if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        try:
            with torch.no_grad():
                self(torch.zeros(1, self.config.in_channels, size, size))
        finally:
            for h in handles:
                h.remove()
        return seen

    def macs_per_pixel(self, size: int = 64) -> float:
        """Multiply-accumulates per *output* pixel, counted on a ``size`` x ``size`` input.

        Documents how ``width`` and ``input_downscale`` change the cost.
        """
        pixels = self.layer_pixels(size)
        return sum(m.out_channels * m.in_channels * conv_taps(m) * pixels[n] for n, m in self.named_modules()
                   if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)))


def conv_taps(layer: ConvLayer) -> int:
    """Multiply-accumulates per output value and input channel: the kernel's taps, or 1 for a
    transposed convolution whose kernel equals its stride (each output pixel gets one tap)."""
    if isinstance(layer, nn.ConvTranspose2d):
        return 1
    kh, kw = layer.kernel_size
    return int(kh * kw)


class TomoGANDiscriminator(nn.Module):
    """Small convolutional critic used for the adversarial and feature losses.

    Strided 3x3 convolutions with LeakyReLU (no normalisation, like the
    generator), global average pooling and a linear logit. ``features`` returns
    the intermediate activations for the feature-matching (perceptual) loss.
    """

    def __init__(self, in_channels: int = 1, base: int = 32) -> None:
        super().__init__()
        chans = [in_channels, base, base, base * 2, base * 2, base * 4, base * 4]
        layers = []
        for i in range(len(chans) - 1):
            stride = 2 if i % 2 else 1
            layers.append(
                nn.Sequential(
                    nn.Conv2d(chans[i], chans[i + 1], 3, stride=stride, padding=1),
                    nn.LeakyReLU(0.2, inplace=True),
                )
            )
        self.blocks = nn.ModuleList(layers)
        self.logit = nn.Linear(chans[-1], 1)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logit(self.features(x)[-1].mean(dim=(2, 3)))
