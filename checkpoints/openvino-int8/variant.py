"""All-int8 OpenVINO IR of a ratio, built like the full-int8 TFLite model: clipped input range,
equalised activations, offset copies; variants of NNCF options."""
import json, shutil, sys
from pathlib import Path
import numpy as np
import nncf, openvino as ov
from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
from nncf.quantization.range_estimator import RangeEstimatorParametersSet
from bluesky_tomogan.export.pipeline import calibration_frames
from bluesky_tomogan.export.onnx import export_onnx
from bluesky_tomogan.export.equalise import equalise_activations
from bluesky_tomogan.export.copies import offset_activation_copies
from bluesky_tomogan.int8 import int8_input_range
from bluesky_tomogan.model.train import load_generator
from bluesky_tomogan.simulate.datasets import read_dataset
from bluesky_tomogan.modelcard import sha256_of
src = Path(sys.argv[1]); out = Path(sys.argv[2]); opts = set(sys.argv[3].split(","))
copies = {k: int(v) for k, v in (a.split("=") for a in sys.argv[4:])}
if out.exists(): shutil.rmtree(out)
shutil.copytree(src, out)
card_path = next(out.glob("*.json")); card = json.loads(card_path.read_text()); name = card["name"]
import os
train = read_dataset(os.environ.get("DATA", "data/sim_projection_dose.h5")).split("train")  # DATA: another calibration set
m = 8 * card["architecture"].get("input_downscale", 1)
size = min(train.ns.shape[1:]); size -= size % m
calib = calibration_frames(train, 200, size, 3)
if "clip" in opts:
    lo, hi = int8_input_range(calib); calib = np.clip(calib, lo, hi).astype(np.float32); print("input range", lo, hi)
gen = load_generator(out / f"{name}.pt").correction_network()
if "eq" in opts:
    gen = equalise_activations(gen, calib)
if copies:
    gen = offset_activation_copies(gen, calib, copies)
onnx = export_onnx(gen, out / "int8src.onnx")
model = ov.Core().read_model(str(onnx))
convs = [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() in ("Convolution", "ConvolutionBackpropData")]
ignored = (convs[:1] if "first" in opts else []) + (convs[-1:] if "last" in opts else [])
ignored += [convs[int(i)] for i in os.environ.get("FLOAT", "").split(",") if i]  # FLOAT: more convolutions (indices) in float
kw = {}
if "quantile" in opts: kw["activations_range_estimator_params"] = RangeEstimatorParametersSet.MEAN_QUANTILE
if "nobias" in opts: kw["disable_bias_correction"] = True
if "minmax" in opts: kw["activations_range_estimator_params"] = RangeEstimatorParametersSet.MINMAX
if "nooverflow" in opts:  # 8-bit weights in the first layer too (NNCF default: 7-bit there)
    from nncf.quantization.advanced_parameters import OverflowFix
    kw["overflow_fix"] = OverflowFix.DISABLE
adv = AdvancedQuantizationParameters(**kw) if kw else None
preset = nncf.QuantizationPreset.PERFORMANCE if "perf" in opts else nncf.QuantizationPreset.MIXED
q = nncf.quantize(model, nncf.Dataset([x[None] for x in calib]), subset_size=len(calib), preset=preset,
                  ignored_scope=nncf.IgnoredScope(names=ignored) if ignored else None,
                  fast_bias_correction="slowbias" not in opts, advanced_parameters=adv)
xml = out / f"{name}.int8.xml"
ov.save_model(q, str(xml), compress_to_fp16=False)
card["files"].setdefault("openvino_int8", {"path": xml.name}).update({"sha256": sha256_of(xml), "bin_sha256": sha256_of(xml.with_suffix(".bin"))})
card_path.write_text(json.dumps(card, indent=2))
print(opts, copies, "ignored", ignored, "->", card_path)
