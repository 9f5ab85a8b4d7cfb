"""Decoder 'bilinear x2 -> concat(skip) -> 3x3 conv' rewritten for inference (session 27; README.md).

The conv over the concatenation is a conv over the skip input plus a conv over the upsampled
input, and a 3x3 conv behind a fixed bilinear x2 resize is one 6x6 stride-2 transposed
convolution of the low-resolution map (or, ``--subpixel``, a 3x3 conv to 4x the channels at
low resolution and a pixel shuffle). The resize, the concatenation and the full-resolution
copy of the upsampled map go. Exact inside the frame; on the outermost row and column of each
decoder's output it differs (the trained conv zero-pads the upsampled map, the rewrite sees it
extended by replication, since the low-resolution map is edge-padded as the resize clamps).

Writes ``OUT/orig.xml`` and ``OUT/fused.xml``: the network as trained and rewritten, each
through the same plain NNCF post-training quantisation (random calibration: for timing only).
Usage: ``build.py [MODEL] [OUT] [--subpixel]``, from the repository root with the export extra.
"""
import sys
from pathlib import Path

import nncf
import numpy as np
import openvino as ov
import torch
import torch.nn as nn
import torch.nn.functional as F

from bluesky_tomogan.model.train import load_generator

# bilinear x2 with half-pixel centres: b[i] contributes to U[2i + t] with weight TAPS[t]
TAPS = {-1: 0.25, 0: 0.75, 1: 0.75, 2: 0.25}


def transposed_kernel(w_up: torch.Tensor) -> torch.Tensor:
    """(O, C, 3, 3) conv behind the resize -> (C, O, 6, 6) stride-2 transposed conv (padding 4 on the
    edge-padded input): G[t] = sum_dy W[dy] TAPS[t - 2 + dy], per axis."""
    out, cin = w_up.shape[:2]
    g = torch.zeros(cin, out, 6, 6, dtype=w_up.dtype)
    for ky in range(6):
        for kx in range(6):
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    a, b = TAPS.get(ky - 2 + dy), TAPS.get(kx - 2 + dx)
                    if a is not None and b is not None:
                        g[:, :, ky, kx] += a * b * w_up[:, :, dy + 1, dx + 1].T
    return g


def subpixel_kernel(w_up: torch.Tensor) -> torch.Tensor:
    """(O, C, 3, 3) -> (4 O, C, 3, 3) low-resolution conv whose pixel shuffle is the conv behind the resize."""
    out, cin = w_up.shape[:2]
    k = torch.zeros(out, 2, 2, cin, 3, 3, dtype=w_up.dtype)
    for a in (0, 1):
        for b in (0, 1):
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    for di in (-1, 0, 1):
                        for dj in (-1, 0, 1):
                            wa, wb = TAPS.get(a + dy - 2 * di), TAPS.get(b + dx - 2 * dj)
                            if wa is not None and wb is not None:
                                k[:, a, b, :, di + 1, dj + 1] += wa * wb * w_up[:, :, dy + 1, dx + 1]
    return k.reshape(4 * out, cin, 3, 3)


class FusedUpConv(nn.Module):
    def __init__(self, conv: nn.Conv2d, up_channels: int, subpixel: bool) -> None:
        super().__init__()
        w = conv.weight.data
        self.skip = nn.Conv2d(w.shape[1] - up_channels, w.shape[0], 3, padding=1)
        self.skip.weight.data, self.skip.bias.data = w[:, up_channels:].clone(), conv.bias.data.clone()
        self.subpixel = subpixel
        if subpixel:
            self.low = nn.Conv2d(up_channels, 4 * w.shape[0], 3, bias=False)
            self.low.weight.data = subpixel_kernel(w[:, :up_channels])
        else:
            self.low = nn.ConvTranspose2d(up_channels, w.shape[0], 6, stride=2, padding=4, bias=False)
            self.low.weight.data = transposed_kernel(w[:, :up_channels])

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.low(F.pad(x, (1, 1, 1, 1), mode="replicate"))
        return self.skip(skip) + (F.pixel_shuffle(up, 2) if self.subpixel else up)


class Fused(nn.Module):
    def __init__(self, g: nn.Module, subpixel: bool) -> None:
        super().__init__()
        self.g = g
        self.f3 = FusedUpConv(g.dec3[0], g.up3.out_channels, subpixel)
        self.f2 = FusedUpConv(g.dec2[0], g.up2.out_channels, subpixel)
        self.f1 = FusedUpConv(g.dec1[0], g.up1.out_channels, subpixel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.g
        e1 = g.enc1(g.stem(x))
        e2 = g.enc2(F.max_pool2d(e1, 2))
        e3 = g.enc3(F.max_pool2d(e2, 2))
        b = g.bottleneck(F.max_pool2d(e3, 2))
        d3 = g.dec3[3](g.dec3[2](F.relu(self.f3(b, e3))))
        d2 = g.dec2[3](g.dec2[2](F.relu(self.f2(d3, e2))))
        d1 = g.dec1[3](g.dec1[2](F.relu(self.f1(d2, e1))))
        return g.head(d1)


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    name = args[0] if args else "tomogan-projection-light"
    out = Path(args[1] if len(args) > 1 else "/tmp/exp/fused")
    out.mkdir(parents=True, exist_ok=True)
    g = load_generator(f"src/bluesky_tomogan/weights/{name}.pt").correction_network().eval()
    f = Fused(g, "--subpixel" in sys.argv).eval()
    with torch.no_grad():
        x = torch.rand(1, 3, 128, 128)
        d = (g(x) - f(x)).abs()[0, 0]
    print(f"max |trained - rewritten|: {float(d.max()):.3g} in all, {float(d[16:-16, 16:-16].max()):.3g} "
          "more than 16 pixels from the edge")
    rng = np.random.default_rng(0)
    calib = [rng.random((1, 3, 256, 256)).astype(np.float32) for _ in range(16)]
    dims = {"x": {2: 8 * torch.export.Dim("kh", min=1, max=512), 3: 8 * torch.export.Dim("kw", min=1, max=512)}}
    for tag, net in (("orig", g), ("fused", f)):
        onnx = out / f"{tag}.onnx"
        torch.onnx.export(net, (torch.zeros(1, 3, 64, 64),), dynamo=True, opset_version=18, dynamic_shapes=dims,
                          input_names=["frames"], output_names=["denoised"], external_data=False).save(str(onnx))
        model = ov.Core().read_model(str(onnx))
        convs = [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"]
        q = nncf.quantize(model, nncf.Dataset(calib), subset_size=len(calib),
                          ignored_scope=nncf.IgnoredScope(names=convs[-1:]))  # output layer in float, as shipped
        ov.save_model(q, str(out / f"{tag}.xml"), compress_to_fp16=False)
        print("wrote", out / f"{tag}.xml")


if __name__ == "__main__":
    main()
