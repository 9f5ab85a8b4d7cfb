"""How well int8-aware training's simulation predicts the real full-int8 TFLite model.

Usage::

    python benchmarks/int8_simulation.py --model tomogan-slice --data data/sim_slice.h5

Needs the ``train`` extra (torch) and a dataset made with the model card's recipe
(``bluesky-tomogan simulate``). On the dataset's test frames (48, evenly spaced,
as the export measures them) it prints the SSIM of: the float network; the same
network as the TFLite export prepares it (activations equalised,
:mod:`bluesky_tomogan.export.equalise`, and the full-resolution layers' offset
copies, :mod:`bluesky_tomogan.export.copies`) under
:func:`bluesky_tomogan.model.qat.fake_quantized` with the export's ranges (input
fixed at the TFLite calibration percentiles, activations' running min/max over
the export's calibration tiles, the output's offset copies); and the shipped
full-int8 TFLite model run by LiteRT. The centre frame is added on the host,
as the Denoiser does: in float for the float network, as the int8 model saw it
for the other two.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from bluesky_tomogan.export.copies import offset_activation_copies
from bluesky_tomogan.export.equalise import equalise_activations
from bluesky_tomogan.export.pipeline import calibration_frames
from bluesky_tomogan.inference.backends.litert import LiteRTSession
from bluesky_tomogan.inference.load import load_card
from bluesky_tomogan.inference.tiling import pad_to
from bluesky_tomogan.int8 import int8_input_range
from bluesky_tomogan.metrics import ssim
from bluesky_tomogan.model.data import normalised_frames
from bluesky_tomogan.model.qat import fake_quantized
from bluesky_tomogan.model.train import load_generator
from bluesky_tomogan.simulate.datasets import read_dataset


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tomogan-slice")
    ap.add_argument("--data", required=True)
    args = ap.parse_args(argv)

    card = load_card(args.model)
    tflite = card.file("tflite_int8").info
    tile = int(tflite["tile"][0])
    gen = load_generator(card.path("pytorch")).eval()
    dataset = read_dataset(args.data)
    train, test = dataset.split("train"), dataset.split("test")
    depth, mid = gen.config.in_channels, gen.config.in_channels // 2
    frames = [normalised_frames(test, int(i), depth)
              for i in np.unique(np.linspace(0, len(test.ns) - 1, 48).astype(int))]
    calib = calibration_frames(train, 200, tile, depth)  # what the export calibrates on
    lo, hi = int8_input_range(calib)

    def score(correction) -> float:  # correction: (depth, H, W) -> (H, W), residual added here in float
        return float(np.mean([ssim(y[0], x[mid] + correction(x)) for x, y in frames]))

    def torch_correction(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(x[None])
        return (gen(t) - t[:, mid : mid + 1])[0, 0].numpy()

    copies = int(tflite.get("output_copies", 1))
    with torch.no_grad():
        fp32 = score(torch_correction)
        clipped = np.clip(calib, lo, hi)
        if tflite.get("equalised", False):
            gen = equalise_activations(gen, clipped)
        gen = offset_activation_copies(gen, clipped, tflite.get("activation_copies", {}))
        with fake_quantized(gen, observer="minmax", input_range=(lo, hi), output_copies=copies):
            for k in range(0, len(calib), 10):  # calibration pass, as the converter's
                gen(torch.from_numpy(clipped[k : k + 10]))
            simulated = score(torch_correction)

    session = LiteRTSession(card.path("tflite_int8"), threads=2)

    def tflite_correction(x: np.ndarray) -> np.ndarray:  # plus the centre as the model saw it, as the Denoiser adds
        h, w = x.shape[-2:]
        return session.run(pad_to(x, tile, tile)[None])[0, 0, :h, :w] + session.input_as_seen(x[mid]) - x[mid]

    real = score(tflite_correction)
    print(f"{args.model}: {len(frames)} test frames of {args.data}; int8 input range {lo:.3f}..{hi:.3f} "
          f"(calibration extremes {calib.min():.3f}..{calib.max():.3f})")
    print(f"{'':<34}{'SSIM':>8}{'loss vs fp32':>14}")
    print(f"{'fp32 (PyTorch)':<34}{fp32:>8.4f}")
    print(f"{'simulated int8 (model/qat.py)':<34}{simulated:>8.4f}{fp32 - simulated:>14.4f}")
    print(f"{'full-int8 TFLite (LiteRT)':<34}{real:>8.4f}{fp32 - real:>14.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
