"""A stepped scan's documents as a fly scan records them (ophyd-async's way): each projection's angle is an
encoder's capture (a PandA's), and what each frame is an area detector's NDAttribute, written to an HDF5 file
and announced by StreamResource/StreamDatum, like the frames; the projections' stream has no event and the
start document no ``motors``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import event_model
import h5py
import numpy as np

#: The data key of the angles: how ophyd-async names a PandA's position capture.
ANGLE_KEY = "panda-inenc-1-val"

Documents = list[tuple[str, dict[str, Any]]]


def as_fly_scan(docs: Documents, directory: Path, angle: str = "stage_theta", key: str | None = ANGLE_KEY,
                units: str | None = None, per_degree: float = 1.0, moved: dict[str, str] | None = None) -> Documents:
    """The documents ``docs`` of a ``tomo_scan`` (its ``primary`` events carry ``angle``, in degrees) with the
    angles written to ``directory/panda.h5`` as ``key`` (in ``units``, ``per_degree`` of them a degree), each
    other field of ``moved`` (event field -> its data key in the file: ``{"image_key": "det-image_key"}``)
    too, and the ``primary`` events replaced by their StreamDatums. ``key=None``: a fly scan without position
    capture, as ``tomo_fly_scan`` records one of a motor alone: no angle is recorded (the start document keeps
    ``motors`` and the nominal ``angles``)."""
    start = next(d for n, d in docs if n == "start")
    (primary,) = [d for n, d in docs if n == "descriptor" and d["name"] == "primary"]
    events = [d for n, d in docs if n == "event" and d["descriptor"] == primary["uid"]]
    fields = ({angle: key} if key else {}) | (moved or {})
    dropped = [angle, *fields]
    path = Path(directory) / "panda.h5"
    resources = {}
    with h5py.File(path, "w") as f:
        for field, name in fields.items():
            values = np.asarray([e["data"][field] for e in events])
            f[name] = values * per_degree if field == angle else values
            resources[name] = event_model.compose_stream_resource(
                mimetype="application/x-hdf5", uri=path.as_uri(), data_key=name,
                parameters={"dataset": name, "chunk_shape": [16384]}, start=start)
    flown_keys = {name: {"source": f"PANDA:{name}", "dtype": "number" if field == angle else "integer", "shape": [],
                         "dtype_numpy": "<f8" if field == angle else "<i8",
                         "external": "STREAM:"} | ({"units": units} if units and field == angle else {})
                  for field, name in fields.items()}
    flown = dict(primary, data_keys={k: v for k, v in primary["data_keys"].items()
                                     if not any(k.startswith(f) for f in dropped)} | flown_keys,
                 object_keys={k: [f for f in v if not any(f.startswith(g) for g in dropped)]
                              for k, v in primary["object_keys"].items()})
    out: Documents = []
    for name, doc in docs:
        if name == "start":
            out.append((name, {k: v for k, v in doc.items() if k != "motors" or not key}))
        elif doc is primary:
            out += [(name, flown), *(("stream_resource", r.stream_resource_doc) for r in resources.values())]
        elif name == "event" and doc["descriptor"] == primary["uid"]:  # a fly scan has no such event
            i = doc["seq_num"] - 1
            out += [("stream_datum", r.compose_stream_datum(indices={"start": i, "stop": i + 1},
                                                            seq_nums={"start": i + 1, "stop": i + 2},
                                                            descriptor=flown)) for r in resources.values()]
        else:
            out.append((name, doc))
    return out
