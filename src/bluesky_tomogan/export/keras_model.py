"""The TomoGAN generator rebuilt in Keras, with weights copied from PyTorch.

Used for two things: the TFLite converter (full-int8, the Edge TPU compiler's
input) and the TensorFlow/Keras fp32 reference of the speed benchmark (the
original TomoGAN's stack). The layer graph mirrors
:class:`bluesky_tomogan.model.network.TomoGANGenerator` one to one; NHWC layout.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["build_keras_generator", "keras_from_torch", "bilinear_x2_as_transposed_conv", "replicate_edges"]

#: Taps of x2 bilinear upsampling with half-pixel centres along one axis: output 2j is
#: 0.75 x[j] + 0.25 x[j-1], output 2j+1 is 0.75 x[j] + 0.25 x[j+1].
BILINEAR_X2_TAPS = np.array([0.25, 0.75, 0.75, 0.25], np.float32)


def int8_tap_gain() -> float:
    """What per-channel int8 rounding does to the bilinear taps: their sum per output pixel (1 in float).

    The largest tap (0.5625) becomes 127 and the others 42 and 14 steps instead of 42.33 and
    14.11, so every upsampled pixel would come out 0.35% dark, three times over in the decoder.
    """
    k2 = np.outer(BILINEAR_X2_TAPS, BILINEAR_X2_TAPS)
    step = k2.max() / 127
    return float((np.round(k2 / step) * step)[0::2, 0::2].sum())


def bilinear_x2_kernel(channels: int, int8_compensated: bool = False) -> np.ndarray:
    """``(4, 4, channels, channels)`` transposed-convolution kernel (HWOI) of per-channel x2 bilinear upsampling.

    ``int8_compensated`` divides it by :func:`int8_tap_gain`: the converter's per-channel
    int8 weights then sum to 1 exactly (the float kernel is 0.35% bright, so only for int8).
    """
    k2 = np.outer(BILINEAR_X2_TAPS, BILINEAR_X2_TAPS)
    if int8_compensated:
        k2 = k2 / int8_tap_gain()
    kernel = np.zeros((4, 4, channels, channels), np.float32)
    idx = np.arange(channels)
    kernel[:, :, idx, idx] = k2[:, :, None]
    return kernel


def replicate_edges(x: Any, name: str) -> Any:
    """``x`` (NHWC) padded by one pixel that repeats its edge, in ops every converter and the Edge TPU
    map (slices and concatenations: TFLite's ``MIRROR_PAD`` cannot repeat the edge pixel itself)."""
    from keras import layers

    rows = layers.Concatenate(axis=1, name=f"{name}.pad_rows")(
        [layers.Lambda(lambda t: t[:, :1], name=f"{name}.top")(x), x,
         layers.Lambda(lambda t: t[:, -1:], name=f"{name}.bottom")(x)])
    return layers.Concatenate(axis=2, name=f"{name}.pad_cols")(
        [layers.Lambda(lambda t: t[:, :, :1], name=f"{name}.left")(rows), rows,
         layers.Lambda(lambda t: t[:, :, -1:], name=f"{name}.right")(rows)])


def bilinear_x2_as_transposed_conv(x: Any, channels: int, name: str, int8_compensated: bool = False) -> Any:
    """Keras ops equal to ``UpSampling2D(2, interpolation="bilinear")`` without a resize op.

    Resize-convolution is what the network was trained with; accelerators prefer a
    transposed convolution, and the Edge TPU compiler rejects TensorFlow 2's resize with
    half-pixel centres. Edges are replicated by one pixel (slices and concatenations,
    as the resize clamps at the border), a stride-2 4x4 transposed convolution with the
    fixed bilinear taps (:func:`bilinear_x2_kernel`) interpolates, and the result is
    cropped to ``2H x 2W``: output ``m`` of the transposed convolution on the padded
    input is upsampled pixel ``m - 3``. Exact in float; ``tests/test_export.py``
    compares it with the resize.
    """
    from keras import layers

    padded = replicate_edges(x, name)
    deconv = layers.Conv2DTranspose(channels, 4, strides=2, padding="valid", use_bias=False,
                                    name=f"{name}.bilinear", trainable=False)
    up = deconv(padded)
    deconv.set_weights([bilinear_x2_kernel(channels, int8_compensated)])
    return layers.Cropping2D(((3, 3), (3, 3)), name=f"{name}.crop")(up)


def build_keras_generator(arch: dict[str, Any], height: int | None, width: int | None,
                          out_channels: int = 1, filters: dict[str, int] | None = None,
                          edgetpu: bool = False, int8_taps: bool = False) -> Any:
    """Build an untrained Keras generator for ``arch`` (a ``GeneratorConfig`` dict).

    ``height``/``width`` may be ``None`` for a dynamic shape (Keras inference);
    the TFLite export needs them fixed. ``out_channels`` > 1 is the TFLite
    export's offset output copies; ``filters`` overrides the output channels of
    layers by name (the offset activation copies of :mod:`.copies`). ``edgetpu``
    fixes the batch at 1 and replaces bilinear resizes by equivalent transposed
    convolutions (:func:`bilinear_x2_as_transposed_conv`), so that every op maps
    onto the Edge TPU (:mod:`.edgetpu_check`); ``int8_taps`` compensates those
    convolutions' int8 weight rounding (:func:`int8_tap_gain`), for the int8 converter.
    """
    import keras
    from keras import layers

    from ..model.network import GeneratorConfig

    cfg = GeneratorConfig.from_dict(arch)
    c8, c16, c32, c64, c128 = (cfg.channels(c) for c in (8, 16, 32, 64, 128))

    widths = filters or {}

    def conv(x: Any, c: int, k: int, name: str, act: str | None = "relu") -> Any:
        return layers.Conv2D(widths.get(name, c), k, padding="same", activation=act, name=name)(x)

    def double(x: Any, c: int, name: str) -> Any:
        return conv(conv(x, c, 3, f"{name}.0"), c, 3, f"{name}.2")

    def up(x: Any, c: int, name: str) -> Any:
        if cfg.upsample == "transposed":
            return layers.Conv2DTranspose(widths.get(f"{name}.deconv", c), 2, strides=2, activation="relu",
                                          name=f"{name}.deconv")(x)
        if edgetpu:
            return bilinear_x2_as_transposed_conv(x, int(x.shape[-1]), name, int8_taps)
        return layers.UpSampling2D(2, interpolation="bilinear", name=name)(x)

    inp = keras.Input((height, width, cfg.in_channels), batch_size=1 if edgetpu else None, name="frames")
    x = inp
    f = cfg.input_downscale
    if f > 1 and not cfg.space_to_depth:
        x = layers.AveragePooling2D(f, name="downscale")(x)
    if cfg.space_to_depth:  # space-to-depth + 1x1 convolution, as one strided convolution
        s = layers.Conv2D(widths.get("stem.0", c32), f, strides=f, padding="valid", activation="relu",
                          name="stem.0")(x)
    else:
        s = conv(x, c8, 1, "stem.0")
    e1 = double(s, c32, "enc1")
    e2 = double(layers.MaxPooling2D(2)(e1), c64, "enc2")
    e3 = double(layers.MaxPooling2D(2)(e2), c128, "enc3")
    b = conv(layers.MaxPooling2D(2)(e3), c128, 3, "bottleneck.0")

    def decoder(x: Any, skip: Any, c_up: int, c: int, level: int) -> Any:
        upsampled = up(x, c_up, f"up{level}")
        if cfg.upsampled_padding == "zeros":
            return double(layers.Concatenate()([upsampled, skip]), c, f"dec{level}")
        # the upsampled map padded by replication, the skip input with zeros (GeneratorConfig.upsampled_padding)
        both = layers.Concatenate()([replicate_edges(upsampled, f"dec{level}.up_pad"),
                                     layers.ZeroPadding2D(1, name=f"dec{level}.skip_pad")(skip)])
        first = layers.Conv2D(widths.get(f"dec{level}.0", c), 3, padding="valid", activation="relu",
                              name=f"dec{level}.0")(both)
        return conv(first, c, 3, f"dec{level}.2")

    d3 = decoder(b, e3, c128, c64, 3)
    d2 = decoder(d3, e2, c64, c32, 2)
    d1 = decoder(d2, e1, c32, c32, 1)
    for i in range(0 if cfg.space_to_depth else int(np.log2(f))):
        d1 = conv(up(d1, c32, f"sr.{i}.0"), c32, 3, f"sr.{i}.1")
    h = conv(d1, c16, 1, "head.0")
    if cfg.space_to_depth:  # sub-pixel convolution back to full resolution
        out = layers.Conv2DTranspose(out_channels, f, strides=f, padding="valid", name="head.2")(h)
    else:
        out = conv(h, out_channels, 1, "head.2", act=None)
    if cfg.adds_residual:
        mid = cfg.in_channels // 2
        centre = layers.Lambda(lambda t: t[..., mid : mid + 1], name="centre")(inp)
        out = layers.Add(name="residual")([out, centre])
    return keras.Model(inp, out, name="tomogan_generator")


def keras_from_torch(gen: Any, height: int | None = None, width: int | None = None, edgetpu: bool = False,
                     int8_taps: bool = False) -> Any:
    """Keras copy of a PyTorch :class:`TomoGANGenerator` (weights transposed to HWIO); ``edgetpu``: see
    :func:`build_keras_generator`."""
    state = {k: v.detach().float().numpy() for k, v in gen.state_dict().items()}
    # output channels of every layer (a pruned network's differ per layer); torch stores a
    # transposed convolution's weight as (in, out, kh, kw)
    transposed = {n for n, m in gen.named_modules() if type(m).__name__ == "ConvTranspose2d"}
    filters = {k.removesuffix(".weight"): v.shape[1 if k.removesuffix(".weight") in transposed else 0]
               for k, v in state.items() if k.endswith(".weight")}
    model = build_keras_generator(gen.config.to_dict(), height, width, gen.head[2].out_channels, filters, edgetpu,
                                  int8_taps)
    for layer in model.layers:
        name = layer.name
        if name in transposed:
            prefix = name  # torch: up3.deconv.weight (in, out, kh, kw) -> (kh, kw, out, in)
            w = state[f"{prefix}.weight"].transpose(2, 3, 1, 0)
            layer.set_weights([w, state[f"{prefix}.bias"]])
        elif f"{name}.weight" in state:
            w = state[f"{name}.weight"].transpose(2, 3, 1, 0)  # (out, in, kh, kw) -> (kh, kw, in, out)
            layer.set_weights([w, state[f"{name}.bias"]])
    copied = sum(1 for k in state if k.endswith(".weight"))
    keras_weights = sum(1 for lyr in model.layers if lyr.get_weights() and not lyr.name.endswith(".bilinear"))
    if copied != keras_weights:
        raise RuntimeError(f"copied weights of {keras_weights} Keras layers but torch has {copied}")
    return model
