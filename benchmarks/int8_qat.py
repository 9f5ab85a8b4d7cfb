"""Every layer in OpenVINO int8, with NNCF quantisation-aware training of the float weights and ranges.

``benchmarks/int8_every_layer.py`` showed that post-training quantisation of every layer
runs 2.1-2.3x faster than the shipped accuracy-controlled IR on a CPU without AMX but loses
0.008-0.26 SSIM. This script asks whether int8-aware fine-tuning recovers that: it inserts
NNCF's fake quantisers into the PyTorch generator (``nncf.quantize``: per-channel weights,
per-tensor activations, the ranges then trainable), fine-tunes weights and ranges on the
training patches with the model's own loss, converts the result to an OpenVINO IR (the
fake quantisers become int8 kernels) and compares it with the shipped int8 IR exactly as
``int8_every_layer.py`` does: mean and worst-frame SSIM loss against ONNX Runtime fp32 on 48
frames of the dose test set, ms per 1024x1024 frame through ``Denoiser.denoise_context``.

NNCF compiles a small C++ extension for its PyTorch fake quantisers at first use (a few
minutes on 2 cores; cached in ``~/.cache/torch_extensions``).

Usage::

    NNCF_EXTENSION_LOAD_TIMEOUT=0 python benchmarks/int8_qat.py src/bluesky_tomogan/weights/tomogan-projection.json \\
        --out /tmp/qat --steps 600 [--float stem head] [--no-speed]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from bluesky_tomogan.simulate.datasets import read_dataset

sys.path.insert(0, str(Path(__file__).parent))
from int8_every_layer import compare  # noqa: E402


def quantisation_aware(card: Path, out: Path, train_data: str, steps: int, lr: float, keep_float: list[str],
                       threads: int) -> Path:
    """A copy of ``card``'s model directory in ``out`` whose int8 IR comes from NNCF QAT; returns its card."""
    import nncf
    import openvino as ov
    import torch
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    from bluesky_tomogan.export.pipeline import calibration_frames
    from bluesky_tomogan.model.data import PatchSampler
    from bluesky_tomogan.model.losses import pixel_loss
    from bluesky_tomogan.model.train import _validate, load_generator

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    for f in card.parent.iterdir():
        if f.is_file():
            shutil.copy(f, out / f.name)
    meta = json.loads(card.read_text())
    # every export computes the correction; the Denoiser adds the centre frame in float (card "output")
    full = load_generator(card.parent / meta["files"]["pytorch"]["path"])
    gen = full.correction_network() if meta.get("output") == "correction" else full
    pairs = read_dataset(train_data)
    train, test = pairs.split("train"), pairs.split("test")
    size = min(train.ns.shape[1:]) // 8 * 8
    calib = calibration_frames(train, 200, min(size, 128), gen.config.in_channels)
    scope = nncf.IgnoredScope(patterns=[f"{name}/.*" for name in keep_float]) if keep_float else None
    # quantile ranges to start from: min/max ranges stretch to zingers and lose most of the image
    quantile = RangeEstimatorParametersSet.MEAN_QUANTILE
    advanced = AdvancedQuantizationParameters(activations_range_estimator_params=quantile)
    qgen = nncf.quantize(gen, nncf.Dataset([torch.from_numpy(x[None]) for x in calib]), subset_size=len(calib),
                         preset=nncf.QuantizationPreset.MIXED, ignored_scope=scope, advanced_parameters=advanced)
    centre = gen.config.in_channels // 2
    add = centre if gen is not full else None

    class AsTrained(torch.nn.Module):  # the network as the Denoiser runs it, for validation and the loss
        config = gen.config

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = qgen(x)
            return y if add is None else y + x[:, add:add + 1]

    net = AsTrained()
    before = _validate(net, test, 24)["val_ssim"]
    sampler = PatchSampler(train, 96, gen.config.in_channels, 0)
    opt = torch.optim.Adam(qgen.parameters(), lr=lr)
    t0 = time.perf_counter()
    net.train()
    for step in range(steps):
        xb, yb = sampler.batch(16)
        x = torch.from_numpy(xb)
        loss = pixel_loss(net(x), torch.from_numpy(yb), "l1+ssim", x[:, centre:centre + 1])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0:
            print(f"  step {step + 1}: loss {loss.item():.5f}, {time.perf_counter() - t0:.0f} s", flush=True)
        if (step + 1) % 500 == 0 and step + 1 < steps:
            print(f"  step {step + 1}: simulated int8 validation SSIM {_validate(net, test, 24)['val_ssim']:.4f}",
                  flush=True)
            net.train()
    after = _validate(net, test, 24)["val_ssim"]
    print(f"simulated int8 validation SSIM (24 frames of {train_data}): {before:.4f} -> {after:.4f} "
          f"after {steps} steps ({time.perf_counter() - t0:.0f} s)")
    net.eval()
    model = ov.convert_model(qgen, example_input=torch.zeros(1, gen.config.in_channels, 64, 64),
                             input=[ov.PartialShape([-1, gen.config.in_channels, -1, -1])])
    ov.save_model(model, str(out / meta["files"]["openvino_int8"]["path"]), compress_to_fp16=False)
    for key in ("sha256", "bin_sha256"):  # the files changed
        meta["files"]["openvino_int8"].pop(key, None)
    (out / card.name).write_text(json.dumps(meta))
    return out / card.name


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("card", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", default="data/sim_projection_dose.h5", help="test frames")
    ap.add_argument("--train-data", default="data/sim_projection_all2.h5", help="calibration and training patches")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--float", nargs="*", default=[], dest="keep_float",
                    help="modules kept in float (PyTorch names, e.g. stem head)")
    ap.add_argument("--no-speed", action="store_true")
    args = ap.parse_args(argv)
    card = args.card.resolve()
    qat = quantisation_aware(card, args.out, args.train_data, args.steps, args.lr, args.keep_float, args.threads)
    compare(card, {"every layer int8, QAT": qat}, args.data, f"{args.steps} QAT steps at lr {args.lr}",
            args.keep_float, not args.no_speed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
