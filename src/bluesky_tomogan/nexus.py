"""Where a NeXus file keeps a tomography scan: NXtomo, and the layout Diamond's beamlines write.

NeXus stores projections, flat fields and dark fields in one stack of frames and says which
is which in ``image_key`` (0 projection, 1 flat field, 2 dark field, 3 invalid), with each
frame's rotation angle beside it: NXtomo's ``entry/sample/rotation_angle`` (also linked into
its NXdata group), or in Diamond's files an axis of the NXdata group that holds the frames,
often an external link to another file of the scan (the DIAD beamline's: ``entry/imaging``
with the frames in ``k11-NNNNN/k11-NNNNN-imaging.h5`` and the measured angles as
``gts_theta_value``). Links into files that are not there are passed over, as a reader
of the scan would.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["IMAGE_KEY", "NexusScan", "find_nexus_scan", "missing_frame_files", "nexus_frames"]

log = logging.getLogger(__name__)

#: NXtomo's ``image_key`` values (3, an invalid frame, is neither and is left out).
IMAGE_KEY = {"projection": 0, "flat": 1, "dark": 2}
#: An axis of the frames' NXdata group is taken for the rotation angle only under such a name:
#: that group's other axes of the frame index are monitors (ring current, temperature).
_ANGLE_NAME = re.compile(r"theta|angle|rot|omega", re.IGNORECASE)


@dataclass(frozen=True)
class NexusScan:
    """What a NeXus file says about its frames.

    Attributes
    ----------
    frames : str
        Path of the stack of frames.
    image_key : numpy.ndarray or None
        Each frame's kind (:data:`IMAGE_KEY`); ``None``: all are projections.
    angles : str or None
        Path of each frame's rotation angle.
    """

    frames: str
    image_key: np.ndarray | None
    angles: str | None


def _nx_class(obj: Any) -> str:
    value = obj.attrs.get("NX_class", b"")
    return value.decode() if isinstance(value, bytes) else str(value)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _dataset(f: Any, path: str) -> Any | None:
    """The dataset at ``path``, or None where there is none (or a link into a file that is not there)."""
    import h5py

    try:
        obj = f[path]
    except (KeyError, OSError, ValueError):
        return None
    return obj if isinstance(obj, h5py.Dataset) else None


class _Walk:
    """What one walk through a file finds: its NXdata groups, and its datasets named ``image_key`` or
    ``rotation_angle`` (where NXtomo keeps them when they are not beside the frames)."""

    def __init__(self, f: Any) -> None:
        import h5py

        self.nxdata: list[str] = []
        self.named: dict[str, list[str]] = {"image_key": [], "rotation_angle": []}

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Group):
                if _nx_class(obj) == "NXdata":
                    self.nxdata.append(name)
            elif name.rsplit("/", 1)[-1] in self.named:
                self.named[name.rsplit("/", 1)[-1]].append(name)

        f.visititems(visit)


def _nxdata_signals(f: Any, walk: _Walk) -> list[tuple[str, str]]:
    """``(group, signal)`` of every NXdata group that names its signal, in name order; the signal's path
    is ``group/signal``, in this file (a linked dataset's own name is its own file's)."""
    return [(g, _text(f[g].attrs["signal"])) for g in walk.nxdata if f[g].attrs.get("signal") is not None]


def _nxdata_frames(f: Any, walk: _Walk) -> list[tuple[str, str]]:
    """``(group, frames)`` paths of every NXdata group whose signal is a stack of frames: first those
    that their parent names its ``default`` (NeXus's plot to show), then in name order."""
    found = []
    for group, signal in _nxdata_signals(f, walk):
        stack = _dataset(f, f"{group}/{signal}")
        if stack is not None and stack.ndim in (3, 4):
            found.append((group, f"{group}/{signal}"))

    def is_default(group: str) -> bool:
        parent, _, leaf = group.rpartition("/")
        return _text(f[parent or "/"].attrs.get("default", "")) == leaf

    return sorted(found, key=lambda item: not is_default(item[0]))


def _per_frame(f: Any, paths: list[str], n: int) -> str | None:
    """The first of ``paths`` that is a 1-D numeric dataset of ``n`` values."""
    for path in paths:
        ds = _dataset(f, path)
        if ds is not None and ds.shape == (n,) and np.issubdtype(ds.dtype, np.number):
            return path
    return None


def _angle_axes(f: Any, group: str) -> list[str]:
    """The NXdata group's axes along the frame index: its first ``axes`` entry, then any
    ``<name>_indices = 0`` whose name says it is an angle."""
    attrs = f[group].attrs
    axes = [_text(a) for a in np.atleast_1d(attrs.get("axes", []))]
    names = axes[:1] + [k[: -len("_indices")] for k in attrs
                        if k.endswith("_indices") and np.atleast_1d(attrs[k])[:1].tolist() == [0]]
    return [f"{group}/{name}" for name in names if name != "." and _ANGLE_NAME.search(name)]


def find_nexus_scan(f: Any, frames: str | None = None) -> NexusScan | None:
    """Where the open HDF5 file ``f`` keeps its frames, their ``image_key`` and angles.

    Parameters
    ----------
    f : h5py.File
        The file.
    frames : str, optional
        The frames' path, if known (``--key``); else the signal of the first NXdata group
        that is a stack of frames.

    Returns
    -------
    NexusScan or None
        ``None`` where ``frames`` is not given and no NXdata group holds frames.
    """
    walk = _Walk(f)  # one walk through the file's metadata for everything below
    candidates = _nxdata_frames(f, walk)
    if frames is None:
        if not candidates:
            return None
        group, frames = candidates[0]
    else:
        frames = frames.strip("/")
        group = next((g for g, path in candidates if path == frames), frames.rpartition("/")[0] or "/")
    n = int(f[frames].shape[0])
    parent = frames.rpartition("/")[0]  # "" at the root: "/image_key" below
    key_path = _image_key(f, walk, group, frames)
    angles = _per_frame(f, [f"{group}/rotation_angle", f"{parent}/rotation_angle", *walk.named["rotation_angle"],
                            *_angle_axes(f, group)], n)
    image_key = None if key_path is None else np.asarray(f[key_path][()]).astype(int)
    log.debug("NeXus lookup: frames %s, image_key %s, angles %s", frames, key_path, angles)
    return NexusScan(frames, image_key, angles)


def _image_key(f: Any, walk: _Walk, group: str, frames: str) -> str | None:
    """The path of the frames' ``image_key``: NXtomo keeps it beside the detector's frames and links it
    into its NXdata group; else any dataset of that name with a value per frame."""
    parent = frames.rpartition("/")[0]  # "" at the root: "/image_key"
    n = int(f[frames].shape[0])
    return _per_frame(f, [f"{parent}/image_key", f"{group}/image_key", *walk.named["image_key"]], n)


def nexus_frames(f: Any) -> tuple[str, bool] | None:
    """The path of the frames :func:`find_nexus_scan` would take, and whether an ``image_key`` says
    what each is (then they are a detector's frames: projections, flats, darks), without reading
    it or the angles (for denoising every frame as it is); ``None`` where no NXdata group holds frames."""
    walk = _Walk(f)
    candidates = _nxdata_frames(f, walk)
    if not candidates:
        return None
    group, frames = candidates[0]
    return frames, _image_key(f, walk, group, frames) is not None


def missing_frame_files(f: Any) -> list[str]:
    """``"<signal path> -> <file>"`` for every NXdata signal that links into a file that is not there
    (a scan's ``.nxs`` copied without the detector's files beside it)."""
    import h5py

    missing = []
    for group, signal in _nxdata_signals(f, _Walk(f)):
        link = f[group].get(signal, getlink=True)
        if isinstance(link, h5py.ExternalLink) and _dataset(f, f"{group}/{signal}") is None:
            missing.append(f"{group}/{signal} -> {link.filename}")
    return missing
