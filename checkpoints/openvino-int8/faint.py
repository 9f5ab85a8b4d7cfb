# Usage: see README.md in this directory (an experiment script, as run in session 20).
import sys, numpy as np
sys.path.insert(0, "benchmarks")
from dose_sweep import held_out
from accuracy import evaluate
from bluesky_tomogan.frames import context_indices
from bluesky_tomogan.inference import load_denoiser
from bluesky_tomogan.model.data import normalised_frames
dose = float(sys.argv[1])
pairs = held_out(dose, 3, 6, 128, (0.1, 0.5))
idx = np.arange(len(pairs.ns))
for a in sys.argv[2:]:
    m, b, p = a.split(":")
    d = load_denoiser(m, backend=b, precision=p)
    e = evaluate(lambda i: d.denoise_context(pairs.ns[context_indices(pairs.group, i, d.depth)]), pairs, idx)
    g = getattr(d.session, "input_grid", None)
    beyond = np.mean([g.beyond(normalised_frames(pairs, int(i))[0]).mean() for i in idx]) if g else float("nan")
    print(f"{a}: {e['ssim']:.4f} beyond {beyond:.4f}", flush=True)
