# Usage: see README.md in this directory (an experiment script, as run in session 20).
import sys, numpy as np
sys.path.insert(0, "benchmarks")
from accuracy import evaluate, held_out
from bluesky_tomogan.frames import context_indices
from bluesky_tomogan.inference import load_denoiser
from bluesky_tomogan.simulate.datasets import read_dataset
frames = 24
import os
if os.environ.get("SLICE"):  # SLICE=1: the slice models' held-out slices and data/hard_slice.h5's test split
    sets = {"held-out": held_out("slice", 4), "hard-test": read_dataset("data/hard_slice.h5").split("test")}
else:
    sets = {"held-out": held_out("projection", 4), "dose-test": read_dataset("data/sim_projection_dose.h5").split("test")}
if os.environ.get("ALL2"): sets["all2-test"] = read_dataset("data/sim_projection_all2.h5").split("test")
if os.environ.get("REAL2"): sets["real2-test"] = read_dataset("data/sim_slice_real2.h5").split("test")  # beamline-like slices (session 23)
for model, backend, precision in [a.split(":") for a in sys.argv[1:]]:
    den = load_denoiser(model, backend=backend, precision=precision)
    res = []
    for nm, pairs in sets.items():
        idx = np.unique(np.linspace(0, len(pairs.ns) - 1, frames if nm == "held-out" else 48).astype(int))
        f = lambda i, d=den, p=pairs: d.denoise_context(p.ns[context_indices(p.group, i, d.depth)])
        e = evaluate(f, pairs, idx); res.append(f"{nm} {e['ssim']:.4f} {e['psnr']:.2f}dB")
    print(model, backend, precision, *res, flush=True)
