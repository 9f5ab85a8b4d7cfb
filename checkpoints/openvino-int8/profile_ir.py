# Usage: see README.md in this directory (an experiment script, as run in session 20).
import sys, time, numpy as np, openvino as ov
from bluesky_tomogan.inference.backends.openvino import int8_float_precision
core = ov.Core()
xml = sys.argv[1]
prec = sys.argv[2] if len(sys.argv) > 2 else "bf16"
cm = core.compile_model(core.read_model(xml), "CPU", {"INFERENCE_NUM_THREADS": 2, "PERF_COUNT": True, "INFERENCE_PRECISION_HINT": prec})
req = cm.create_infer_request()
x = np.random.rand(1, 3, 1024, 1024).astype(np.float32)
for _ in range(3): req.infer({0: x})
ts = []
for _ in range(5):
    t = time.perf_counter(); req.infer({0: x}); ts.append(time.perf_counter() - t)
print("median ms", 1e3 * np.median(ts))
pc = sorted(req.get_profiling_info(), key=lambda p: -p.real_time.total_seconds())
tot = sum(p.real_time.total_seconds() for p in pc)
for p in pc[:25]:
    print(f"{p.real_time.total_seconds()*1e3:7.2f} ms {p.node_type:14s} {p.exec_type:28s} {p.node_name}")
print("total", tot * 1e3)
