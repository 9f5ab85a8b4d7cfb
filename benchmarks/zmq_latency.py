"""Throughput and end-to-end latency of the 0MQ worker against the in-process callback.

Usage::

    python benchmarks/zmq_latency.py [--sizes 512 1024] [--frames 60] [--exposure 0.05] [--json out.json]

Real processes on localhost: two ``bluesky-0MQ-proxy`` (RunEngine -> worker, worker -> listeners),
``bluesky-tomogan serve --store none --zmq-out ...`` and, in this process, the RunEngine
with bluesky's ``Publisher`` and a ``RemoteDispatcher`` on the worker's republished stream.
The in-process arm subscribes ``TomoGANCallback`` to the RunEngine. Same model and
backend in both (``load_denoiser()``: the best available, OpenVINO int8 on these CPUs).

* latency: from a raw event's ``time`` (the RunEngine made it) to the moment its
  denoised row reaches a listener (the callback's subscriber in process; a
  ``RemoteDispatcher`` behind the second proxy over 0MQ); median and 95th percentile,
  frames taken every ``--exposure`` s. Both include the wait for the next frame:
  rows are emitted when the next document arrives (the 3-frame context).
* throughput: frames made as fast as the simulated camera can (no exposure), from the
  first raw event to the last denoised row at the listener.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bluesky import RunEngine
from bluesky.callbacks.zmq import Publisher
from scratch import scratch_directory

from bluesky_tomogan import TomoGANCallback, load_denoiser
from bluesky_tomogan.bench import cpu_name
from bluesky_tomogan.devices import SimTomoDetector, SimTomoStage
from bluesky_tomogan.plans import tomo_scan
from bluesky_tomogan.serve import ZMQSource
from bluesky_tomogan.simulate.tomography import angles_deg

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("localhost", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens at {port}")


class Arrivals:
    """Arrival time of each denoised row, by the raw frame's seq_num."""

    def __init__(self) -> None:
        self.times: dict[int, float] = {}
        self._derived: set[str] = set()

    def __call__(self, name: str, doc: Any) -> None:
        now = time.time()
        if name == "descriptor" and doc.get("name") == "denoised":
            self._derived.add(doc["uid"])
        elif name in ("event", "event_page") and doc.get("descriptor") in self._derived:
            sources = doc["data"]["det_image_source_seq_num"]
            for src in sources if name == "event_page" else [sources]:
                self.times.setdefault(int(src), now)


class RawTimes:
    def __init__(self) -> None:
        self.times: dict[int, float] = {}

    def __call__(self, name: str, doc: Any) -> None:
        self.times[int(doc["seq_num"])] = float(doc["time"])


def scan(RE: RunEngine, size: int, frames: int, exposure: float, directory: Path) -> Any:
    stage = SimTomoStage(name="stage")
    det = SimTomoDetector(name="det", stage=stage, shape=(size, size), directory=directory,
                          simulate_timing=exposure > 0)
    if exposure > 0:
        det.exposure_time.put(exposure)
        det.photon_flux.put(500 / exposure)
    return tomo_scan(det, stage, list(angles_deg(frames)), n_darks=2, n_flats=2)


def measure(arm: str, size: int, frames: int, exposure: float, root: Path,
            ports: dict[str, int]) -> dict[str, float]:
    RE = RunEngine({})
    raw = RawTimes()
    RE.subscribe(raw, "event")
    arrivals = Arrivals()
    listener = None
    if arm == "in-process":
        cb = TomoGANCallback(load_denoiser(), streams=["primary"], directory=root / "derived")
        cb.subscribe(arrivals)
        RE.subscribe(cb)
    else:
        publisher = Publisher(("localhost", ports["a_in"]))
        RE.subscribe(publisher)
        listener = ZMQSource(f"localhost:{ports['b_out']}")
        listener.subscribe(arrivals)
        thread = threading.Thread(target=listener.start, daemon=True)
        thread.start()
        time.sleep(1.0)  # 0MQ connections and subscriptions
    t0 = time.time()
    RE(scan(RE, size, frames, exposure, root / f"raw-{arm}-{size}-{exposure}"))
    deadline = time.monotonic() + 120
    while len(arrivals.times) < frames and time.monotonic() < deadline:
        time.sleep(0.01)
    if listener is not None:
        listener.stop()
        publisher.close()
    latencies = [arrivals.times[s] - raw.times[s] for s in raw.times if s in arrivals.times]
    last = max(arrivals.times.values(), default=float("nan"))
    return {"frames": frames, "received": len(arrivals.times),
            "latency_median_s": statistics.median(latencies) if latencies else float("nan"),
            "latency_p95_s": sorted(latencies)[int(0.95 * (len(latencies) - 1))] if latencies else float("nan"),
            "frames_per_s": frames / (last - min(raw.times.values())) if raw.times else float("nan"),
            "wall_s": last - t0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--exposure", type=float, default=0.05, help="s per frame for the latency runs")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    root = scratch_directory("tomogan-zmq-bench-")
    ports = {k: free_port() for k in ("a_in", "a_out", "b_in", "b_out")}
    procs = [subprocess.Popen([str(BIN / "bluesky-0MQ-proxy"), "--in-address", str(ports[i]), "--out-address",
                               str(ports[o])], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for i, o in (("a_in", "a_out"), ("b_in", "b_out"))]
    results: dict[str, Any] = {"cpu": cpu_name(), "denoiser": repr(load_denoiser()), "runs": []}
    try:
        for p in ("a_out", "b_in", "b_out"):
            wait_listening(ports[p])
        log = open(root / "worker.log", "w")
        worker = subprocess.Popen([str(BIN / "bluesky-tomogan"), "-v", "serve",
                                   "--zmq-in", f"localhost:{ports['a_out']}", "--zmq-out", f"localhost:{ports['b_in']}",
                                   "--store", "none", "--streams", "primary",
                                   "--directory", str(root / "worker-derived"), "--state-dir", str(root / "state")],
                                  stdout=log, stderr=subprocess.STDOUT)
        procs.append(worker)
        deadline = time.monotonic() + 120
        while "serving;" not in (root / "worker.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
        for size in args.sizes:
            for exposure in (args.exposure, 0.0):
                for arm in ("in-process", "0MQ worker"):
                    r = measure(arm, size, args.frames, exposure, root, ports)
                    r |= {"arm": arm, "size": size, "exposure_s": exposure}
                    results["runs"].append(r)
                    print(f"{arm:<11} {size:>5} exposure {exposure:<5} received {r['received']:>3}/{r['frames']} "
                          f"latency median {r['latency_median_s'] * 1e3:7.0f} ms "
                          f"p95 {r['latency_p95_s'] * 1e3:7.0f} ms {r['frames_per_s']:6.1f} frames/s", flush=True)
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    print(f"CPU: {results['cpu']}; denoiser {results['denoiser']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
