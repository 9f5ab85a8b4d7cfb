"""A scan faster than the full network can follow: ``policy="adaptive"`` against dropping frames.

Usage::

    python benchmarks/adaptive_scan.py [--model tomogan-projection-aio] [--size 512] [--frames 150]
                                       [--speed 1.5] [--backend auto] [--json out.json]
                                       [--fallback tomogan-projection-s2d-aio [--fallback-ratios 0 50]]
                                       [--batch 20]

1. Loads every pruning ratio of the All-in-One model (``load_ratios``) and measures each
   one's time per frame at ``--size`` through ``Denoiser.denoise_context`` (median of 15
   after warm-up), on this machine, in this run.
2. Measures what the full network (ratio 0) sustains through the whole callback (reading,
   QC, denoising and writing each frame): a scan with ``policy="block"`` and no exposure,
   wall time per frame. Sets the simulated camera's exposure so that frames come
   ``--speed`` times faster than that (calibrated on the camera alone, which computes a
   frame while it exposes; the table reports the rate each scan really had).
3. Runs the same ``bp.count`` of ``SimTomoDetector`` (projections of a sphere pack, 500
   photons) twice: with ``policy="adaptive"`` (every ratio loaded) and with the full
   network alone under ``policy="drop-oldest"``. Reports dropped frames, how many frames
   each network denoised (the derived stream's ``<field>_model`` column) and the latency.
   With ``--fallback``, the adaptive ladder goes on into that lighter model's ratios.
   With ``--batch N``, the frames come as a fly scan's camera delivers them: written to an HDF5
   file and announced N at a time in one StreamDatum (ophyd-async, every flush period), every N
   frame periods, fed to the callback by hand at that pace (the same frames, from the simulated
   camera).

All numbers are of this CPU, named in the output.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bluesky.plans as bp
import numpy as np
from bluesky import RunEngine

from bluesky_tomogan import TomoGANCallback
from bluesky_tomogan.bench import cpu_name
from bluesky_tomogan.devices import SimTomoDetector
from bluesky_tomogan.inference.ratios import load_ratios


def time_per_frame(den: Any, size: int, repeats: int = 15) -> float:
    rng = np.random.default_rng(0)
    ctx = rng.poisson(500, (den.depth, size, size)).astype(np.float32)
    for _ in range(3):
        den.denoise_context(ctx)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        den.denoise_context(ctx)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def camera_only(args: argparse.Namespace, root: Path, exposure: float = 0.001) -> float:
    """Seconds per frame of the simulated camera alone at ``exposure``."""
    RE = RunEngine({})
    det = SimTomoDetector(name="det", shape=(args.size, args.size), directory=root / "raw")
    det.exposure_time.put(exposure)
    det.photon_flux.put(500 / exposure)
    RE(bp.count([det], num=2))  # the first frame projects the sample (then reused): not a per-frame cost
    t0 = time.perf_counter()
    RE(bp.count([det], num=args.frames // 3))
    return (time.perf_counter() - t0) / (args.frames // 3)


def exposure_for(period: float, args: argparse.Namespace, root: Path) -> float:
    """The exposure at which the camera alone delivers a frame every ``period`` seconds.

    The camera computes a frame while it exposes, so its period is not exposure plus a
    fixed cost: three corrections against the measured period."""
    exposure = period
    for i in range(3):
        exposure = max(0.001, exposure + period - camera_only(args, root / f"calibrate{i}", exposure))
    return exposure


def scan(den: Any, policy: str, args: argparse.Namespace, exposure: float, root: Path,
         frames: int | None = None) -> dict[str, Any]:
    RE = RunEngine({})
    det = SimTomoDetector(name="det", shape=(args.size, args.size), directory=root / "raw")
    det.exposure_time.put(exposure)
    det.photon_flux.put(500 / exposure)
    RE(bp.count([det], num=1))  # the sample's projection, reused by every later frame, before the timed scan
    cb, rows = recording_callback(den, policy, args, root)
    RE.subscribe(cb)
    t0 = time.perf_counter()
    RE(bp.count([det], num=frames or args.frames))
    return summary(policy, cb, rows, time.perf_counter() - t0)


def recording_callback(den: Any, policy: str, args: argparse.Namespace,
                       root: Path) -> tuple[TomoGANCallback, dict[str, list[Any]]]:
    """The callback of a scan, and the derived stream's columns it fills as its rows come."""
    cb = TomoGANCallback(den, policy=policy, maxsize=args.maxsize, directory=root / "derived")
    rows: dict[str, list[Any]] = collections.defaultdict(list)

    def collect(name: str, doc: dict[str, Any]) -> None:
        if name == "event_page":
            for key, values in doc["data"].items():
                rows[key].extend(values)

    cb.subscribe(collect)
    return cb, rows


def summary(policy: str, cb: TomoGANCallback, rows: dict[str, list[Any]], wall: float) -> dict[str, Any]:
    """Frames, drops, the network of each frame denoised and its latency, of a scan that took ``wall`` seconds."""
    field = next(k.removesuffix("_source_uid") for k in rows if k.endswith("_source_uid"))
    ratios = [r for r, e in zip(rows[f"{field}_model"], rows[f"{field}_qc_error"], strict=True) if not e]
    latency = [x for x, e in zip(rows[f"{field}_qc_latency_s"], rows[f"{field}_qc_error"], strict=True) if not e]
    return {"policy": policy, "frames": len(rows[f"{field}_ratio"]), "dropped": cb.dropped, "wall_s": wall,
            "s_per_frame": wall / len(rows[f"{field}_ratio"]),
            "frames_per_network": dict(sorted(collections.Counter(ratios).items())),
            "median_latency_s": statistics.median(latency) if latency else None,
            "max_latency_s": max(latency) if latency else None}


def batched_scan(den: Any, policy: str, args: argparse.Namespace, period: float, root: Path) -> dict[str, Any]:
    """As :func:`scan`, the frames written to a file first and announced ``args.batch`` at a time, one StreamDatum
    every ``args.batch * period`` seconds."""
    import event_model
    import h5py

    root.mkdir(parents=True, exist_ok=True)
    det = SimTomoDetector(name="det", shape=(args.size, args.size), directory=root / "raw")
    angles = np.linspace(0.0, 180.0, args.frames, endpoint=False)
    path = root / "fly.h5"
    with h5py.File(path, "w") as f:
        data = f.create_dataset("/entry/data/data", (args.frames, args.size, args.size), np.uint16)
        for i, angle in enumerate(angles):
            data[i] = det.projection([angle], 500.0)
    bundle = event_model.compose_run()
    desc = bundle.compose_descriptor(name="primary", data_keys={"det_image": {
        "source": "sim", "dtype": "array", "shape": [args.size, args.size], "external": "STREAM:",
        "dtype_numpy": "<u2"}})
    resource = bundle.compose_stream_resource(mimetype="application/x-hdf5", uri=path.as_uri(), data_key="det_image",
                                              parameters={"dataset": "/entry/data/data"})
    cb, rows = recording_callback(den, policy, args, root)
    t0 = time.perf_counter()
    for name, doc in (("start", bundle.start_doc), ("descriptor", desc.descriptor_doc),
                      ("stream_resource", resource.stream_resource_doc)):
        cb(name, doc)
    for first in range(0, args.frames, args.batch):
        last = min(first + args.batch, args.frames)
        time.sleep(max(t0 + last * period - time.perf_counter(), 0.0))  # the camera has taken them
        cb("stream_datum", resource.compose_stream_datum(indices={"start": first, "stop": last},
                                                         seq_nums={"start": first + 1, "stop": last + 1},
                                                         descriptor=desc.descriptor_doc))
    cb("stop", bundle.compose_stop())
    return {**summary(policy, cb, rows, time.perf_counter() - t0), "batch": args.batch}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tomogan-projection-aio")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--speed", type=float, default=1.5, help="frame rate over what the full network sustains")
    ap.add_argument("--maxsize", type=int, default=16)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--fallback", help="a lighter All-in-One model the adaptive ladder steps down to")
    ap.add_argument("--fallback-ratios", type=float, nargs="+", help="which of the fallback's ratios")
    ap.add_argument("--batch", type=int, default=0,
                    help="frames per StreamDatum, as a fly scan's camera delivers them (default: one event per frame)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    # warmed at the frame shape when loaded, as a profile does (docs/callback.md): the scan's first
    # frame does not wait for every network's first call
    ratios = load_ratios(args.model, backend=args.backend, fallback=args.fallback,
                         fallback_ratios=args.fallback_ratios)
    began = time.perf_counter()
    ratios.warm_up((args.size, args.size))
    print(f"warm-up of {len(ratios.ladder)} networks at {args.size}x{args.size}: {time.perf_counter() - began:.2f} s")
    full = ratios.at(ratios.ratios[0])
    per_frame = {d.model_name: time_per_frame(d, args.size) for d in ratios.ladder}
    print(f"CPU: {cpu_name()}; {args.size}x{args.size} frames; {ratios!r}")
    for name, t in per_frame.items():
        speedup = per_frame[full.model_name] / t
        print(f"  {name}: {1000 * t:.1f} ms per denoise_context ({speedup:.2f}x the full network)")
    with tempfile.TemporaryDirectory() as tmp:
        camera = camera_only(args, Path(tmp) / "camera")
        sustained = scan(full, "block", args, 0.001, Path(tmp) / "sustained", frames=args.frames // 3)["s_per_frame"]
        if args.batch:
            exposure = sustained / args.speed  # the period between frames; they come args.batch at a time
            print(f"the full network sustains {1000 * sustained:.1f} ms per frame through the callback (policy "
                  f"block); {args.frames} frames written to a file and announced {args.batch} at a time, one every "
                  f"{1000 * exposure:.1f} ms on average ({args.speed}x that rate)\n")
            results = [batched_scan(ratios, "adaptive", args, exposure, Path(tmp) / "adaptive"),
                       batched_scan(full, "drop-oldest", args, exposure, Path(tmp) / "full")]
        else:
            exposure = exposure_for(sustained / args.speed, args, Path(tmp))
            print(f"camera alone {1000 * camera:.1f} ms per frame; the full network sustains "
                  f"{1000 * sustained:.1f} ms per frame through the callback (policy block); exposure "
                  f"{1000 * exposure:.1f} ms for {args.speed}x that rate, {args.frames} frames\n")
            results = [scan(ratios, "adaptive", args, exposure, Path(tmp) / "adaptive"),
                       scan(full, "drop-oldest", args, exposure, Path(tmp) / "full")]
    print("| policy | networks | frames | frame rate / full network's | dropped | frames per network "
          "| median / max latency (s) |")
    print("|---|---|---|---|---|---|---|")
    ladder = "every ratio" + (f", then {args.fallback}" if args.fallback else "")
    for res, nets in zip(results, [ladder, "full network"], strict=True):
        print(f"| {res['policy']} | {nets} | {res['frames']} | {sustained / res['s_per_frame']:.2f} | "
              f"{res['dropped']} | {res['frames_per_network']} | "
              f"{res['median_latency_s']:.2f} / {res['max_latency_s']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_name(), "size": args.size, "exposure_s": exposure,
                                               "camera_s_per_frame": camera, "sustained_s_per_frame": sustained,
                                               "ms_per_frame": {k: 1000 * t for k, t in per_frame.items()},
                                               "runs": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
