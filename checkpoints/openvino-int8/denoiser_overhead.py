# Usage: see README.md in this directory (an experiment script, as run in session 20).
import time, numpy as np, cProfile, pstats
from bluesky_tomogan.inference import load_denoiser
import sys
d = load_denoiser(sys.argv[1] if len(sys.argv) > 1 else "tomogan-projection-light", backend="openvino", precision="int8", threads=2)
fr = np.random.default_rng(0).poisson(500, (3, 1024, 1024)).astype(np.float32)
for _ in range(5): d.denoise_context(fr)
x = np.random.default_rng(0).random((1, 3, 1024, 1024)).astype(np.float32)
def t(f, n=7):
    ts = []
    for _ in range(n):
        a = time.perf_counter(); f(); ts.append(time.perf_counter() - a)
    return 1e3 * np.median(ts)
print("denoise_context", t(lambda: d.denoise_context(fr)))
s = d.session
req = s._request(x.shape)
print("plain infer", t(lambda: req.infer({0: x})))
print("session.run", t(lambda: s.run(x)))
print("as_seen centre", t(lambda: s.input_as_seen(x[0, 1])))
pr = cProfile.Profile(); pr.enable()
for _ in range(5): d.denoise_context(fr)
pr.disable(); pstats.Stats(pr).sort_stats("tottime").print_stats(12)
