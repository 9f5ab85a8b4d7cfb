# Usage: perframe.py CARD [H5]: the card frames (export.pipeline.quality_frames) per scan, fp32 vs OpenVINO int8 SSIM loss.
import sys, numpy as np
from bluesky_tomogan.export.pipeline import quality_frames
from bluesky_tomogan.frames import context_indices
from bluesky_tomogan.inference import load_denoiser
from bluesky_tomogan.metrics import ssim
from bluesky_tomogan.simulate.datasets import read_dataset
pairs = read_dataset(sys.argv[2] if len(sys.argv) > 2 else "data/hard_slice.h5").split("test")
card = sys.argv[1]
f32 = load_denoiser(card, backend="onnxruntime", precision="fp32")
i8 = load_denoiser(card, backend="openvino", precision="int8")
rows = []
for i in quality_frames(pairs):
    ctx = pairs.ns[context_indices(pairs.group, i, 3)]
    a, b = ssim(pairs.gt[i], f32.denoise_context(ctx)), ssim(pairs.gt[i], i8.denoise_context(ctx))
    rows.append((pairs.group[i], i, a, a - b))
rows = np.array(rows)
for g in np.unique(rows[:, 0]):
    r = rows[rows[:, 0] == g]
    print(f"scan {int(g)}: fp32 {r[:,2].mean():.4f} loss mean {r[:,3].mean():.4f} worst {r[:,3].max():.4f}")
print("all: mean", rows[:, 3].mean(), "worst", rows[:, 3].max())
