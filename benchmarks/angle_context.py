"""Which neighbours a projection is denoised with, by scan order: SSIM against the noise-free frame.

Usage::

    python benchmarks/angle_context.py [--size 256] [--angles 90] [--photons 500] [--json out.json]
    python benchmarks/angle_context.py --spacing [--size 256] [--photons 500]
    python benchmarks/angle_context.py --offline [--size 256] [--angles 90] [--photons 500]
    python benchmarks/angle_context.py --fly [--size 256] [--angles 90] [--photons 500]

A ``tomo_scan`` of the simulated camera (the demo's bead pack) through ``TomoGANCallback`` (the shipped
projection model on ONNX Runtime fp32, the same numbers on every CPU), its angles in four orders: a regular
scan (``--angles`` over 180 degrees), a sparse one (a third as many), a golden-angle scan (111.25 degrees
between frames) and one interlaced in four passes, each taken in that order. Each is run twice: with the
callback's rule (a neighbour more than ``NEIGHBOUR_DEGREES`` from the frame's angle is left out of its context)
and with every neighbour in the order taken (the rule before, set by a limit of 1000 degrees). Prints each
scan's mean and lowest SSIM of the denoised projections and how many QC flagged ``out_of_distribution``.

``--spacing``: what the rule rests on. A projection denoised (``Denoiser.denoise_context``) with its four
neighbours 0.5 to 20 degrees apart, and alone (its own context), at three angles, mean SSIM against the
noise-free frame; and the content gate's distance (``context.context_distance``) of a view 2 to 171 degrees
away, which the gate withholds above ``DEFAULT_THRESHOLD`` (0.35 until session 72, 0.2 since).

``--offline``: the same four scans as stacks in the order taken, denoised by ``Denoiser.denoise`` (what
``bluesky-tomogan denoise`` does with a file) without and with each frame's angle (a file's ``exchange/theta``).

``--fly``: the same four scans recorded as a fly scan records them (``tests/fly_scan.py``: each frame's angle a
PandA's encoder capture written to a file, announced by StreamDatum; no event, no ``motors``), replayed through
the callback without and with ``angle_field`` naming the capture. Also counts ``motion`` flags.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from bluesky import RunEngine
from scratch import scratch_directory

from bluesky_tomogan import TomoGANCallback, frames, load_denoiser
from bluesky_tomogan.context import DEFAULT_THRESHOLD
from bluesky_tomogan.devices import SimTomoDetector, SimTomoStage
from bluesky_tomogan.metrics import ssim
from bluesky_tomogan.plans import tomo_scan


def orders(n: int) -> dict[str, list[float]]:
    """The scans' angles, degrees, in the order each takes them."""
    passes = 4
    per_pass = n // passes
    return {
        "regular": [180.0 * i / n for i in range(n)],
        "sparse": [180.0 * i / (n // 3) for i in range(n // 3)],
        "golden-angle": [float(a) for a in (np.arange(n) * 111.246117975) % 180.0],
        "interlaced x4": [180.0 * (p + passes * i) / (passes * per_pass)
                          for p in range(passes) for i in range(per_pass)],
    }


def one_scan(angles: list[float], args: argparse.Namespace, den: Any, limit: float) -> dict[str, float]:
    frames.NEIGHBOUR_DEGREES = limit
    RE = RunEngine({})
    stage = SimTomoStage(name="stage")
    det = SimTomoDetector(name="det", stage=stage, shape=(args.size, args.size), seed=7, simulate_timing=False,
                          directory=scratch_directory("tomogan-angle-context-"))
    det.exposure_time.put(0.1)
    det.photon_flux.put(args.photons / 0.1)
    cb = TomoGANCallback(den, inline=True, maxsize=len(angles) + 8)
    docs: list[tuple[str, Any]] = []
    cb.subscribe(lambda name, doc: docs.append((name, doc)))
    RE.subscribe(cb)
    RE(tomo_scan(det, stage, angles, n_darks=2, n_flats=2))
    (derived,) = [d["uid"] for n, d in docs if n == "descriptor" and d["name"] == "denoised"]
    scores, ood = [], 0
    for name, doc in docs:
        if name == "event_page" and doc["descriptor"] == derived:
            for seq, frame, flags in zip(doc["data"]["det_image_source_seq_num"], doc["data"]["det_image_denoised"],
                                         doc["data"]["det_image_qc_flags"], strict=True):
                angle = angles[int(seq) - 1]
                clean = args.photons * det.gain * np.exp(-det.sample.line_integrals(angle)) + det.model.dark_level
                scores.append(ssim(clean, np.asarray(frame)))
                ood += "out_of_distribution" in str(flags)
    return {"mean": float(np.mean(scores)), "lowest": float(np.min(scores)), "out_of_distribution": ood,
            "frames": len(scores)}


def spacing(args: argparse.Namespace, den: Any) -> dict[str, Any]:
    """SSIM of a frame denoised with neighbours ``d`` degrees apart (0: alone), and the gate's distance at ``d``."""
    from bluesky_tomogan.context import context_distance

    cam = SimTomoDetector(name="cam", shape=(args.size, args.size), seed=7, simulate_timing=False)

    def clean(a: float) -> np.ndarray:
        return args.photons * cam.gain * np.exp(-cam.sample.line_integrals(a)) + cam.model.dark_level

    def frame(a: float) -> np.ndarray:
        return cam.projection([a], args.photons).astype(np.float32)

    scores = {}
    for d in (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 12.0, 20.0):
        values = []
        for a0 in (30.0, 100.0, 150.0):
            context = np.stack([frame(a0 + d * k) for k in range(-2, 3)])
            if d == 0.0:
                context = np.stack([context[2]] * 5)
            values.append(ssim(clean(a0), den.denoise_context(context)))
        scores[d] = float(np.mean(values))
    centre = frame(60.0)
    distances = {d: context_distance(frame(60.0 + d), centre) for d in (2.0, 5.0, 10.0, 20.0, 45.0, 90.0, 111.0, 171.0)}
    print(f"{args.size}x{args.size}, {args.photons:g} photons/pixel, {den!r}")
    print("neighbours apart (degrees; 0: alone)  " + "  ".join(f"{d:>6g}" for d in scores))
    print("SSIM against the noise-free frame     " + "  ".join(f"{v:>6.4f}" for v in scores.values()))
    print("view apart (degrees)                  " + "  ".join(f"{d:>6g}" for d in distances))
    print(f"content gate's distance (limit {DEFAULT_THRESHOLD:g})   "
          + "  ".join(f"{v:>6.3f}" for v in distances.values()))
    return {"ssim_by_spacing": scores, "gate_distance_by_spacing": distances}


def offline(args: argparse.Namespace, den: Any) -> list[dict[str, Any]]:
    """Mean (lowest) SSIM of each scan's projections denoised as one stack in the order taken, by order and by
    angle."""
    cam = SimTomoDetector(name="cam", shape=(args.size, args.size), seed=7, simulate_timing=False)
    rows = []
    print(f"{args.size}x{args.size}, {args.photons:g} photons/pixel, {den!r}; Denoiser.denoise of the stack, "
          "SSIM mean (lowest)")
    print(f"{'scan':<16}{'frames':>7}  {'neighbours by order':>20}  {'by angle':>20}")
    for label, angles in orders(args.angles).items():
        stack = np.stack([cam.projection([a], args.photons) for a in angles]).astype(np.float32)
        clean = [args.photons * cam.gain * np.exp(-cam.sample.line_integrals(a)) + cam.model.dark_level
                 for a in angles]
        row: dict[str, Any] = {"scan": label, "frames": len(angles)}
        for how, given in (("by_order", None), ("by_angle", np.asarray(angles))):
            scores = [ssim(c, d) for c, d in zip(clean, den.denoise(stack, angles=given), strict=True)]
            row[how] = {"mean": float(np.mean(scores)), "lowest": float(np.min(scores))}
        rows.append(row)
        by_order, by_angle = ("{mean:.4f} ({lowest:.4f})".format(**row[k]) for k in ("by_order", "by_angle"))
        print(f"{label:<16}{len(angles):>7}  {by_order:>20}  {by_angle:>20}")
    return rows


def fly(args: argparse.Namespace, den: Any) -> list[dict[str, Any]]:
    """Mean (lowest) SSIM and flags of each scan's projections recorded as a fly scan with its angles captured to a
    file, through the callback without and with ``angle_field``."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.fly_scan import ANGLE_KEY, as_fly_scan

    rows = []
    print(f"{args.size}x{args.size}, {args.photons:g} photons/pixel, {den!r}; fly scan, angles in a PandA-like file; "
          "SSIM mean (lowest), frames flagged out_of_distribution / motion")
    print(f"{'scan':<16}{'frames':>7}  {'no angle_field':>36}  {'angle_field=' + ANGLE_KEY:>36}")
    for label, angles in orders(args.angles).items():
        directory = scratch_directory("tomogan-angle-context-fly-")
        stage = SimTomoStage(name="stage")
        det = SimTomoDetector(name="det", stage=stage, shape=(args.size, args.size), seed=7, simulate_timing=False,
                              directory=directory)
        det.exposure_time.put(0.1)
        det.photon_flux.put(args.photons / 0.1)
        raw: list[tuple[str, Any]] = []
        RunEngine({})(tomo_scan(det, stage, angles, n_darks=2, n_flats=2), lambda n, d, raw=raw: raw.append((n, d)))
        flown = as_fly_scan(raw, directory)
        row: dict[str, Any] = {"scan": label, "frames": len(angles)}
        for how, field in (("without", None), ("with", ANGLE_KEY)):
            cb = TomoGANCallback(den, inline=True, maxsize=len(angles) + 8, angle_field=field)
            out: list[tuple[str, Any]] = []
            cb.subscribe(lambda name, doc, out=out: out.append((name, doc)))
            for name, doc in flown:
                cb(name, doc)
            (derived,) = [d["uid"] for n, d in out if n == "descriptor" and d["name"] == "denoised"]
            scores, flagged = [], {"out_of_distribution": 0, "motion": 0}
            for name, doc in out:
                if name == "event_page" and doc["descriptor"] == derived:
                    for seq, frame, flags in zip(doc["data"]["det_image_source_seq_num"],
                                                 doc["data"]["det_image_denoised"], doc["data"]["det_image_qc_flags"],
                                                 strict=True):
                        angle = angles[int(seq) - 1]
                        clean = (args.photons * det.gain * np.exp(-det.sample.line_integrals(angle))
                                 + det.model.dark_level)
                        scores.append(ssim(clean, np.asarray(frame)))
                        for f in flagged:
                            flagged[f] += f in str(flags).split(",")
            row[how] = {"mean": float(np.mean(scores)), "lowest": float(np.min(scores)), **flagged}
        rows.append(row)
        cell = "{mean:.4f} ({lowest:.4f}), {out_of_distribution} / {motion} flagged"
        print(f"{label:<16}{len(angles):>7}  {cell.format(**row['without']):>36}  {cell.format(**row['with']):>36}")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--angles", type=int, default=90)
    ap.add_argument("--photons", type=float, default=500.0)
    ap.add_argument("--spacing", action="store_true", help="SSIM by the neighbours' spacing, and the gate's distance")
    ap.add_argument("--offline", action="store_true", help="stacks denoised by Denoiser.denoise, by order and by angle")
    ap.add_argument("--fly", action="store_true",
                    help="fly scans, angles captured to a file: the callback without and with angle_field")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    den = load_denoiser("tomogan-projection", backend="onnxruntime")
    if args.offline or args.fly:
        scans = offline(args, den) if args.offline else fly(args, den)
        if args.json:
            Path(args.json).write_text(json.dumps({"args": vars(args), "scans": scans}, indent=2))
        return 0
    if args.spacing:
        result = spacing(args, den)
        if args.json:
            Path(args.json).write_text(json.dumps({"args": vars(args), **result}, indent=2))
        return 0
    rule = frames.NEIGHBOUR_DEGREES
    rows = []
    print(f"{args.size}x{args.size}, {args.photons:g} photons/pixel, {den!r}; SSIM mean (lowest), "
          "frames flagged out_of_distribution")
    print(f"{'scan':<16}{'frames':>7}  {'neighbours in order taken':>28}  {f'within {rule:g} degrees':>28}")
    for label, angles in orders(args.angles).items():
        before, after = one_scan(angles, args, den, 1000.0), one_scan(angles, args, den, rule)
        rows.append({"scan": label, "frames": len(angles), "every_neighbour": before, "near_in_angle": after})
        cell = "{mean:.4f} ({lowest:.4f}), {out_of_distribution} flagged"
        print(f"{label:<16}{len(angles):>7}  {cell.format(**before):>28}  {cell.format(**after):>28}")
    frames.NEIGHBOUR_DEGREES = rule
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "neighbour_degrees": rule, "scans": rows},
                                              indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
