"""Quantisation-aware fine-tuning of a model's OpenVINO int8 IR, starting from the export's own PTQ.

    NNCF_EXTENSION_LOAD_TIMEOUT=0 .venv/bin/python -u checkpoints/slice-qat/qat_ov.py SRC OUT MINUTES LR \
        [--float dec1.2 head] [--train data/sim_slice.h5] [--calib data/hard_slice.h5]

SRC: a model directory (card + .pt). The network is prepared exactly as
``export.pipeline._export_openvino_int8`` prepares it (input clipped to the TFLite percentiles,
activations equalised, offset copies of the stem, min/max ranges, 8-bit first layer, output
layer in float), NNCF's PyTorch fake quantisers are inserted (their ranges trainable), and
weights and ranges are fine-tuned with the model's loss. OUT gets a copy of SRC whose
OpenVINO int8 IR is the fine-tuned one.
"""
import json, shutil, sys, time
from pathlib import Path

import numpy as np
import torch

import nncf
import openvino as ov
from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
from nncf.quantization.range_estimator import RangeEstimatorParametersSet

from bluesky_tomogan.export.copies import offset_activation_copies
from bluesky_tomogan.export.equalise import equalise_activations
from bluesky_tomogan.export.pipeline import OPENVINO_ACTIVATION_COPIES, calibration_frames
from bluesky_tomogan.int8 import int8_input_range
from bluesky_tomogan.model.data import PatchSampler
from bluesky_tomogan.model.losses import pixel_loss
from bluesky_tomogan.model.train import _validate, load_generator
from bluesky_tomogan.modelcard import sha256_of
from bluesky_tomogan.simulate.datasets import read_dataset


def arg(flag, default):
    return sys.argv[sys.argv.index(flag) + 1] if flag in sys.argv else default


src, out, minutes, lr = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
keep_float = []
if "--float" in sys.argv:
    for a in sys.argv[sys.argv.index("--float") + 1:]:
        if a.startswith("--"):
            break
        keep_float.append(a)
torch.set_num_threads(int(arg("--threads", "2")))
torch.manual_seed(0)
if out.exists():
    shutil.rmtree(out)
shutil.copytree(src, out)
card_path = next(out.glob("*.json"))
card = json.loads(card_path.read_text())
name = card["name"]
full = load_generator(out / f"{name}.pt")
gen = full.correction_network()
calib_pairs = read_dataset(arg("--calib", "data/hard_slice.h5")).split("train")
size = min(calib_pairs.ns.shape[1:]) // 8 * 8
calib = calibration_frames(calib_pairs, 200, size, 3)
lo, hi = int8_input_range(calib)
calib = np.clip(calib, lo, hi).astype(np.float32)
gen = offset_activation_copies(equalise_activations(gen, calib), calib, OPENVINO_ACTIVATION_COPIES)
convs = [n for n, m in gen.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
print("convolutions", convs, flush=True)
ignored = [convs[-1]] + [c for c in convs if any(c.startswith(k + ".") or c == k for k in keep_float)]
adv = AdvancedQuantizationParameters(activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX,
                                     overflow_fix=OverflowFix.DISABLE)
example = torch.from_numpy(calib[:1])
qgen = nncf.quantize(gen, nncf.Dataset([torch.from_numpy(x[None]) for x in calib]), subset_size=len(calib),
                     preset=nncf.QuantizationPreset.MIXED, advanced_parameters=adv,
                     ignored_scope=nncf.IgnoredScope(patterns=[f"{c}/.*" for c in ignored] + [f"{c}" for c in ignored],
                                                     validate=False))
centre = gen.config.in_channels // 2


class AsRun(torch.nn.Module):  # the network as the Denoiser runs it: correction + centre frame
    config = gen.config

    def forward(self, x):
        x = torch.clamp(x, lo, hi)  # the session saturates the input at the IR's input range
        return qgen(x) + x[:, centre:centre + 1]


net = AsRun()
train_pairs = read_dataset(arg("--train", "data/sim_slice.h5"))
tr, te = train_pairs.split("train"), train_pairs.split("test")
hard_te = calib_pairs if False else read_dataset(arg("--calib", "data/hard_slice.h5")).split("test")
print(f"before: simulated int8 val {_validate(net, te, 24)['val_ssim']:.4f}, hard {_validate(net, hard_te, 24)['val_ssim']:.4f}",
      flush=True)
sampler = PatchSampler(tr, 96, gen.config.in_channels, 0)
opt = torch.optim.Adam(qgen.parameters(), lr=lr)
t0 = time.perf_counter()
step = 0
net.train()
while time.perf_counter() - t0 < minutes * 60:
    xb, yb = sampler.batch(16)
    x = torch.from_numpy(xb)
    loss = pixel_loss(net(x), torch.from_numpy(yb), "l1+ssim", x[:, centre:centre + 1])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    step += 1
    if step % 100 == 0:
        print(f"step {step}: loss {loss.item():.5f} {time.perf_counter() - t0:.0f} s", flush=True)
    if step % 400 == 0:
        print(f"step {step}: simulated int8 val {_validate(net, te, 24)['val_ssim']:.4f}", flush=True)
        net.train()
    if step % 1000 == 0:  # a snapshot of the state dict, to convert later
        torch.save(qgen.state_dict(), out / f"qat-step{step}.pt")
net.eval()
print(f"after {step} steps: simulated int8 val {_validate(net, te, 24)['val_ssim']:.4f}, hard {_validate(net, hard_te, 24)['val_ssim']:.4f}",
      flush=True)
model = ov.convert_model(qgen, example_input=example, input=[ov.PartialShape([-1, gen.config.in_channels, -1, -1])])
xml = out / f"{name}.int8.xml"
ov.save_model(model, str(xml), compress_to_fp16=False)
card["files"].setdefault("openvino_int8", {"path": xml.name}).update(
    {"sha256": sha256_of(xml), "bin_sha256": sha256_of(xml.with_suffix(".bin"))})
card_path.write_text(json.dumps(card, indent=2))
print("wrote", xml, flush=True)
