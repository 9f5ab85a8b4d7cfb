"""The TomoGAN generator rebuilt in Keras, with weights copied from PyTorch.

Used for two things: the TFLite converter (full-int8, the Edge TPU compiler's
input) and the TensorFlow/Keras fp32 reference of the speed benchmark (the
original TomoGAN's stack). The layer graph mirrors
:class:`bluesky_tomogan.model.network.TomoGANGenerator` one to one; NHWC layout.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["build_keras_generator", "keras_from_torch"]


def build_keras_generator(arch: dict[str, Any], height: int | None, width: int | None,
                          out_channels: int = 1, filters: dict[str, int] | None = None) -> Any:
    """Build an untrained Keras generator for ``arch`` (a ``GeneratorConfig`` dict).

    ``height``/``width`` may be ``None`` for a dynamic shape (Keras inference);
    the TFLite export needs them fixed. ``out_channels`` > 1 is the TFLite
    export's offset output copies; ``filters`` overrides the output channels of
    layers by name (the offset activation copies of :mod:`.copies`).
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
            return layers.Conv2DTranspose(c, 2, strides=2, activation="relu", name=f"{name}.deconv")(x)
        return layers.UpSampling2D(2, interpolation="bilinear", name=name)(x)

    inp = keras.Input((height, width, cfg.in_channels), name="frames")
    x = inp
    if cfg.input_downscale > 1:
        x = layers.AveragePooling2D(cfg.input_downscale, name="downscale")(x)
    s = conv(x, c8, 1, "stem.0")
    e1 = double(s, c32, "enc1")
    e2 = double(layers.MaxPooling2D(2)(e1), c64, "enc2")
    e3 = double(layers.MaxPooling2D(2)(e2), c128, "enc3")
    b = conv(layers.MaxPooling2D(2)(e3), c128, 3, "bottleneck.0")
    d3 = double(layers.Concatenate()([up(b, c128, "up3"), e3]), c64, "dec3")
    d2 = double(layers.Concatenate()([up(d3, c64, "up2"), e2]), c32, "dec2")
    d1 = double(layers.Concatenate()([up(d2, c32, "up1"), e1]), c32, "dec1")
    for i in range(int(np.log2(cfg.input_downscale))):
        d1 = conv(up(d1, c32, f"sr.{i}.0"), c32, 3, f"sr.{i}.1")
    out = conv(conv(d1, c16, 1, "head.0"), out_channels, 1, "head.2", act=None)
    if cfg.residual and cfg.input_downscale == 1:
        mid = cfg.in_channels // 2
        centre = layers.Lambda(lambda t: t[..., mid : mid + 1], name="centre")(inp)
        out = layers.Add(name="residual")([out, centre])
    return keras.Model(inp, out, name="tomogan_generator")


def keras_from_torch(gen: Any, height: int | None = None, width: int | None = None) -> Any:
    """Keras copy of a PyTorch :class:`TomoGANGenerator` (weights transposed to HWIO)."""
    state = {k: v.detach().float().numpy() for k, v in gen.state_dict().items()}
    filters = {k.removesuffix(".weight"): v.shape[0] for k, v in state.items()
               if k.endswith(".weight") and ".deconv" not in k}
    model = build_keras_generator(gen.config.to_dict(), height, width, gen.head[2].out_channels, filters)
    for layer in model.layers:
        name = layer.name
        if name.endswith(".deconv"):
            prefix = name  # torch: up3.deconv.weight (in, out, kh, kw) -> (kh, kw, out, in)
            w = state[f"{prefix}.weight"].transpose(2, 3, 1, 0)
            layer.set_weights([w, state[f"{prefix}.bias"]])
        elif f"{name}.weight" in state:
            w = state[f"{name}.weight"].transpose(2, 3, 1, 0)  # (out, in, kh, kw) -> (kh, kw, in, out)
            layer.set_weights([w, state[f"{name}.bias"]])
    copied = sum(1 for k in state if k.endswith(".weight"))
    keras_weights = sum(1 for lyr in model.layers if lyr.get_weights())
    if copied != keras_weights:
        raise RuntimeError(f"copied weights of {keras_weights} Keras layers but torch has {copied}")
    return model
