"""A scan stored in files, replayed through the live callback as its camera would deliver it: QC flags on real data.

Usage::

    python benchmarks/real_scan_replay.py SOURCE [--angles FILE] [--flats PATH] [--darks PATH] [--key KEY]
                                          [--model NAME] [--json out.json]

``SOURCE`` is anything ``bluesky-tomogan finetune`` reads (an HDF5/NeXus file, a Zeiss file, a directory of
TIFF files with ``--angles/--flats/--darks``; :func:`bluesky_tomogan.finetune.sources.read_scan`). A
``tomo_scan`` on a RunEngine takes one dark (the darks' mean), one flat (the flats' mean) and every projection
at its angle, from a camera that returns the stored frames (as ``uint16`` where they are whole counts in its
range), through ``TomoGANCallback`` with its default QC. A scan a beamline took as it should be should raise
no flag; prints the flags raised, the frames that raised them with the metric and threshold, and the spread of
the residual metrics.

For example Diamond I12's scan in Savu's test data (91 projections of 135x160 pixels, 2-degree steps; the
angles of its ``full_field_corrected/24737_processed.nxs``, ``entry/final_result_tomo/rotation_angle``, as
a text file)::

    python benchmarks/real_scan_replay.py image_test/tiffs --angles angles91.txt \\
        --flats image_test/flat_00001.tiff --darks image_test/dark_00001.tiff
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from bluesky import RunEngine
from ophyd import Signal
from ophyd.sim import SynSignal

from bluesky_tomogan import TomoGANCallback, load_denoiser
from bluesky_tomogan.bench import cpu_name
from bluesky_tomogan.devices import SimTomoStage
from bluesky_tomogan.finetune.sources import read_scan
from bluesky_tomogan.plans import tomo_scan


def as_camera_gives(frames: np.ndarray) -> np.ndarray:
    """``frames`` as ``uint16`` where they are whole counts within its range, else as they are."""
    f = np.asarray(frames)
    finite = f[np.isfinite(f)]
    if finite.size and np.all(finite == np.round(finite)) and finite.min() >= 0 and finite.max() <= 65535:
        return np.nan_to_num(f).astype(np.uint16)
    return f


def replay(source: str, args: argparse.Namespace) -> dict[str, Any]:
    scan = read_scan(source, key=args.key, angles=args.angles, flats=args.flats, darks=args.darks)
    projections = as_camera_gives(scan.projections)
    dark = as_camera_gives(scan.darks) if scan.darks is not None else None
    flat = as_camera_gives(scan.flats) if scan.flats is not None else None
    shutter = Signal(name="shutter", value="open")
    stage = SimTomoStage(name="stage")

    def image() -> np.ndarray:
        if shutter.get() == "closed" and dark is not None:
            return dark
        if abs(stage.x.position - SimTomoStage.OUT) < 1e-6 and flat is not None:
            return flat
        return projections[int(np.argmin(np.abs(scan.angles - stage.theta.position)))]

    camera = SynSignal(func=image, name="cam")
    cb = TomoGANCallback(load_denoiser(args.model), policy="block")
    docs: list[tuple[str, dict]] = []
    cb.subscribe(lambda name, doc: docs.append((name, doc)))
    RE = RunEngine()
    RE.subscribe(cb)
    RE(tomo_scan(camera, stage, [float(a) for a in scan.angles], shutter=shutter,
                 n_darks=int(dark is not None), n_flats=int(flat is not None)))
    names = {d["uid"]: d["name"] for n, d in docs if n == "descriptor"}
    rows: dict[str, list[Any]] = collections.defaultdict(list)
    for name, doc in docs:
        if name == "event_page" and names[doc["descriptor"]] == "denoised":
            for key, values in doc["data"].items():
                rows[key.removeprefix("cam_")].extend(values)
    flags = collections.Counter(f for row in rows["qc_flags"] for f in (row.split(",") if row else []))
    flagged = [{"projection": int(s) - 1, "angle": float(scan.angles[int(s) - 1]), "flags": row}
               for s, row in zip(rows["source_seq_num"], rows["qc_flags"], strict=True) if row]
    numeric = {k: np.asarray(v, float) for k, v in rows.items()
               if k.startswith("qc_") and np.asarray(v).dtype.kind in "fiu"}
    spread = {k.removeprefix("qc_"): [float(np.nanpercentile(v, q)) for q in (0, 50, 95, 100)]
              for k, v in numeric.items() if np.isfinite(v).any()}
    for item in flagged:
        item["residual_structure"] = float(rows["qc_residual_structure"][item["projection"]])
    return {"source": source, "projections": len(projections), "shape": list(projections.shape[1:]),
            "dtype": str(projections.dtype), "errors": cb.errors, "flags": dict(flags), "flagged": flagged,
            "metrics (min, median, 95th percentile, max)": spread}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source")
    ap.add_argument("--angles")
    ap.add_argument("--flats")
    ap.add_argument("--darks")
    ap.add_argument("--key")
    ap.add_argument("--model", default="tomogan-projection")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result = replay(args.source, args) | {"cpu": cpu_name()}
    print(f"{result['projections']} projections of {result['shape']} ({result['dtype']}); "
          f"errors: {result['errors'] or 'none'}")
    print(f"flags: {result['flags'] or 'none'}")
    for item in result["flagged"]:
        print(f"  projection {item['projection']} at {item['angle']:g} deg: {item['flags']} "
              f"(residual_structure {item['residual_structure']:.3f})")
    for name, (lo, mid, p95, hi) in result["metrics (min, median, 95th percentile, max)"].items():
        print(f"  {name:22s} {lo:10.4g} {mid:10.4g} {p95:10.4g} {hi:10.4g}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
