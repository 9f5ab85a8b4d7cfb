# Usage: bench_irs.py IR.xml ...: median / min ms of each IR alone at 1024x1024, 2 threads, fp32 float parts,
# timed in turn (interleaved, so that the machine drifting hits all alike); N=15 runs each (session 23).
import sys, time, numpy as np, openvino as ov
core = ov.Core()
reqs = {}
for xml in sys.argv[1:]:
    cm = core.compile_model(core.read_model(xml), "CPU", {"INFERENCE_NUM_THREADS": 2, "INFERENCE_PRECISION_HINT": "f32"})
    reqs[xml] = cm.create_infer_request()
x = np.random.rand(1, 3, 1024, 1024).astype(np.float32)
for r in reqs.values():
    for _ in range(3): r.infer({0: x})
ts = {k: [] for k in reqs}
for _ in range(int(__import__("os").environ.get("N", 9))):
    for k, r in reqs.items():  # interleaved so that drifts hit all alike
        t = time.perf_counter(); r.infer({0: x}); ts[k].append(time.perf_counter() - t)
for k, v in ts.items():
    print(f"{k}: median {1e3*np.median(v):.1f} ms  min {1e3*min(v):.1f}")
