"""A stepped scan's documents as a fly scan records them (ophyd-async's way): each projection's angle is an
encoder's capture (a PandA's) written to an HDF5 file and announced by StreamResource/StreamDatum, like the
frames; the projections' stream has no event and the start document no ``motors``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import event_model
import h5py
import numpy as np

#: The data key of the angles: how ophyd-async names a PandA's position capture.
ANGLE_KEY = "panda-inenc-1-val"


Documents = list[tuple[str, dict[str, Any]]]


def as_fly_scan(docs: Documents, directory: Path, angle: str = "stage_theta", key: str = ANGLE_KEY,
                units: str | None = None, per_degree: float = 1.0) -> Documents:
    """The documents ``docs`` of a ``tomo_scan`` (its ``primary`` events carry ``angle``, in degrees) with the
    angles written to ``directory/panda.h5`` (in ``units``, ``per_degree`` of them a degree) and the ``primary``
    events replaced by their StreamDatums."""
    start = next(d for n, d in docs if n == "start")
    (primary,) = [d for n, d in docs if n == "descriptor" and d["name"] == "primary"]
    angles = [d["data"][angle] for n, d in docs if n == "event" and d["descriptor"] == primary["uid"]]
    path = Path(directory) / "panda.h5"
    with h5py.File(path, "w") as f:
        f["INENC1.VAL"] = np.asarray(angles, dtype=np.float64) * per_degree
    resource = event_model.compose_stream_resource(mimetype="application/x-hdf5", uri=path.as_uri(), data_key=key,
                                                   parameters={"dataset": "INENC1.VAL", "chunk_shape": [16384]},
                                                   start=start)
    flown = dict(primary, data_keys={k: v for k, v in primary["data_keys"].items() if not k.startswith(angle)}
                 | {key: {"source": "PANDA:INENC1:VAL", "dtype": "number", "shape": [], "dtype_numpy": "<f8",
                          "external": "STREAM:"} | ({"units": units} if units else {})},
                 object_keys={k: [f for f in v if not f.startswith(angle)] for k, v in primary["object_keys"].items()})
    out: Documents = []
    for name, doc in docs:
        if name == "start":
            out.append((name, {k: v for k, v in doc.items() if k != "motors"}))
        elif doc is primary:
            out += [(name, flown), ("stream_resource", resource.stream_resource_doc)]
        elif name == "event" and doc["descriptor"] == primary["uid"]:  # a fly scan has no such event
            i = doc["seq_num"] - 1
            out.append(("stream_datum", resource.compose_stream_datum(
                indices={"start": i, "stop": i + 1}, seq_nums={"start": i + 1, "stop": i + 2}, descriptor=flown)))
        else:
            out.append((name, doc))
    return out
