"""QC cost per frame, and how fast each QC action reaches the plan, in one run.

Usage::

    python benchmarks/qc_feedback.py [--size 512] [--angles 24] [--exposure 0.05] [--json out.json]

Part 1, cost: the QC metrics of one frame (raw metrics with registration, and
the residual metrics) against ``Denoiser.denoise_context`` of the same frame,
as a ratio measured in the same process.

Part 2, feedback latency: for each action (suspend, pause, reacquire, adjust,
abort) a ``qc_tomo_scan`` of the simulated detector (exposure ``--exposure``,
timing simulated) gets one bad frame at the fourth projection (a dark frame,
a NaN frame, a saturated frame or a motion of the sample, with a policy that
maps its flag to the action). Latency is from the bad frame's raw event to the
first document that shows the plan reacting: the ``interruptions`` event
(suspend, pause), the ``qc_actions`` event (reacquire, adjust) or the stop
document (abort); frames are the projections taken in between.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from bluesky import RunEngine
from bluesky.utils import RunEngineInterrupted
from scratch import scratch_directory

from bluesky_tomogan import TomoGANCallback, load_denoiser
from bluesky_tomogan.bench import cpu_name
from bluesky_tomogan.devices import QCMonitor, SimTomoDetector, SimTomoStage
from bluesky_tomogan.plans import qc_tomo_scan
from bluesky_tomogan.qc import QCFeedback, QCPolicy, Rule
from bluesky_tomogan.qc.metrics import (
    IntensityReference,
    PhotonTransfer,
    PreviousResidual,
    fixed_pattern,
    frame_metrics,
    residual_metrics,
    white_noise_variance,
)

#: action -> (fault to inject, policy rule that maps its flag to the action)
CASES: dict[str, tuple[str, dict[str, Rule]]] = {
    "suspend": ("beam_dump", {}),
    "pause": ("motion", {"motion": Rule(2.0, "pause")}),
    "reacquire": ("nan", {}),
    "adjust": ("saturation", {}),
    "abort": ("nan", {"nonfinite": Rule(0.0, "abort")}),
}
BAD_AT = 4  # the fourth projection is bad


def cost(size: int, repeats: int = 20) -> dict[str, float]:
    den = load_denoiser()
    stage = SimTomoStage(name="stage")
    det = SimTomoDetector(name="det", stage=stage, shape=(size, size), directory=scratch_directory(),
                          simulate_timing=False)
    frames = []
    for angle in range(den.depth + 1):  # two contexts of the network's depth, one frame apart
        stage.theta.set(float(angle)).wait()
        frames.append(det._frame(det._conditions()))
    # the camera's fixed pattern and photon transfer curve, from flats, as the callback's QC takes them
    stage.x.set(SimTomoStage.OUT).wait()
    flats = [det._frame(det._conditions()) for _ in range(3)]
    stage.x.set(0.0).wait()
    dark = det.model.dark_level
    pattern = fixed_pattern(np.sum(flats, axis=0, dtype=np.float32), len(flats), dark)
    transfer = PhotonTransfer.from_levels(float(flats[1].mean()) - dark,
                                          white_noise_variance(flats[1], flats[0], dark), 0.0, 0.5)
    first, second = np.stack(frames[:-1]), np.stack(frames[1:])
    ref = IntensityReference()
    ref.add(float(frames[0].mean()))
    out = den.denoise_context(first)
    for _ in range(3):  # warm up
        den.denoise_context(first)
    t_qc, t_den = [], []
    previous = PreviousResidual()
    centre = den.depth // 2  # the frame ``out`` denoised, and the one before it
    for _ in range(repeats):
        t0 = time.perf_counter()
        m = frame_metrics(frames[centre], ref, frames[centre - 1] if centre else None, 65535.0, dark,
                          transfer=transfer)
        residual_metrics(frames[centre], out, m, previous=previous, fixed_pattern=pattern)
        t_qc.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        den.denoise_context(second)
        t_den.append(time.perf_counter() - t0)
    qc_ms, den_ms = statistics.median(t_qc) * 1e3, statistics.median(t_den) * 1e3
    return {"size": size, "qc_ms": qc_ms, "denoise_ms": den_ms, "ratio": qc_ms / den_ms, "denoiser": repr(den)}


def latency(action: str, args: argparse.Namespace, den: Any) -> dict[str, Any]:
    fault, rules = CASES[action]
    RE = RunEngine({})
    RE.record_interruptions = True
    stage = SimTomoStage(name="stage")
    det = SimTomoDetector(name="det", stage=stage, shape=(args.size, args.size), directory=scratch_directory(),
                          dtype="float32" if fault == "nan" else None)
    det.exposure_time.put(args.exposure)
    det.photon_flux.put(500 / args.exposure)
    monitor = QCMonitor(name="qc", retry_after=1.0)
    feedback = QCFeedback(QCPolicy(rules, dark_level=100), monitor=monitor, RE=RE)
    feedback.install_suspenders(RE)
    cb = TomoGANCallback(den, streams=["primary"], feedback=feedback)
    docs: list[tuple[str, dict[str, Any], float]] = []
    cb.subscribe(lambda name, doc: docs.append((name, doc, time.time())))
    RE.subscribe(cb)

    def inject(name: str, doc: dict[str, Any]) -> None:
        if name == "event" and doc.get("seq_num") == BAD_AT - 1 and "stage_theta" in doc["data"]:
            det.inject_fault(fault, frames=1, pixels=8.0)

    RE.subscribe(inject)
    try:
        RE(qc_tomo_scan(det, stage, [float(a) for a in range(args.angles)], feedback, n_darks=1, n_flats=1))
    except RunEngineInterrupted:
        if RE.state == "paused":
            RE.resume()
    descriptors = {d["uid"]: d["name"] for n, d, _ in docs if n == "descriptor"}
    events = [(d, t) for n, d, t in docs if n == "event"]
    primary = [(d, t) for d, t in events if descriptors.get(d["descriptor"]) == "primary"]
    bad_doc, _ = next((d, t) for d, t in primary if d["seq_num"] == BAD_AT)
    reaction = None
    for name, doc, _ in docs:
        if name == "event" and descriptors.get(doc["descriptor"]) == "interruptions" and action in ("suspend", "pause"):
            if doc["time"] >= bad_doc["time"]:
                reaction = doc
                break
        if name == "event" and descriptors.get(doc["descriptor"]) == "qc_actions" and action in ("reacquire",
                                                                                                "adjust"):
            reaction = doc
            break
        if name == "stop" and action == "abort":
            reaction = doc
            break
    if reaction is None:
        return {"action": action, "fault": fault, "reacted": False}
    frames_between = sum(1 for d, _ in primary if bad_doc["time"] < d["time"] < reaction["time"])
    monitor.cancel_timers()
    return {"action": action, "fault": fault, "reacted": True,
            "latency_ms": (reaction["time"] - bad_doc["time"]) * 1e3, "frames": frames_between}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--angles", type=int, default=24)
    ap.add_argument("--exposure", type=float, default=0.05)
    ap.add_argument("--json", help="write the results as JSON")
    args = ap.parse_args(argv)
    print(f"CPU: {cpu_name()}")
    costs = [cost(s) for s in (512, 1024)]
    print(f"{'frame':>10} {'QC ms':>8} {'denoise ms':>11} {'QC/denoise':>11}   ({costs[0]['denoiser']})")
    for c in costs:
        print(f"{c['size']:>5}x{c['size']:<4} {c['qc_ms']:>8.1f} {c['denoise_ms']:>11.1f} {c['ratio']:>11.2f}")
    den = load_denoiser()
    rows = [latency(action, args, den) for action in CASES]
    print(f"\n{'action':>10} {'fault':>11} {'latency ms':>11} {'frames':>7}   ({args.size}x{args.size}, "
          f"exposure {args.exposure} s)")
    for r in rows:
        if r["reacted"]:
            print(f"{r['action']:>10} {r['fault']:>11} {r['latency_ms']:>11.0f} {r['frames']:>7}")
        else:
            print(f"{r['action']:>10} {r['fault']:>11} {'no reaction':>11}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"cpu": cpu_name(), "cost": costs, "latency": rows}, indent=2) + "\n")
    return 0 if all(r["reacted"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
