"""Readers of the frames a ``StreamResource`` announces, by its mimetype.

Detectors write frames in one of two ways, and both reach the callback as
``StreamResource``/``StreamDatum`` documents:

* one HDF5 file (``application/x-hdf5``): :class:`~.hdf5_frames.StreamFrameReader`;
* one file per frame (or per few frames) in a directory: area detector TIFF, JPEG and
  NumPy file plugins as ophyd-async's ``ADTIFFWriter``/``ADJPEGWriter`` announce them
  (``multipart/related;type=image/tiff``, ``...;type=image/jpeg``,
  ``...;type=application/x-npy``): :class:`FileSequenceReader`. The StreamResource's
  ``uri`` is the directory, ``parameters["template"]`` the file name of frame ``i``
  (``"scan_{:06d}.tiff"``, or the area detector's own ``"%s%s_%6.6d.tiff"`` with
  ``parameters["filename"]``; NumPy files are always ``"<filename>_<i>.npy"``),
  ``parameters["chunk_shape"][0]`` the frames per file.
  These are the conventions of bluesky's ``TiledWriter`` consolidators, so what Tiled
  serves and what is denoised are the same frames.

:func:`reader_for` picks the reader; both have the same three methods.
"""

from __future__ import annotations

import re
import struct
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .hdf5_frames import ANNOUNCED_FRAMES_WAIT_S, MIMETYPE, StreamFrameReader, path_from_uri

__all__ = ["FrameReader", "FileSequenceReader", "SEQUENCE_MIMETYPES", "reader_for", "remapped", "scalar_rows"]

#: Mimetypes of a directory of files, one (or a few) frames each.
SEQUENCE_MIMETYPES = ("multipart/related;type=image/tiff", "multipart/related;type=image/jpeg",
                      "multipart/related;type=application/x-npy")
_POLL_S = 0.05


class FrameReader(Protocol):
    """What the callback reads frames through."""

    def __call__(self, start: int, stop: int) -> np.ndarray: ...

    def event(self, index: int, exposures: int) -> np.ndarray: ...

    def close(self) -> None: ...


def remapped(stream_resource: dict[str, Any], root_map: Mapping[str, str]) -> dict[str, Any]:
    """The StreamResource as this machine reads it: the longest ``root_map`` key that leads its ``uri``'s
    path replaced by that key's value (a detector's IOC writes under a path that is mounted elsewhere
    here). A copy: the document itself passes on unchanged. Without a match, the document itself."""
    try:
        path = path_from_uri(stream_resource["uri"])
    except (KeyError, ValueError):
        return stream_resource
    for root in sorted(root_map, key=len, reverse=True):
        if root and path.is_relative_to(root):
            local = Path(root_map[root]) / path.relative_to(root)
            uri = local.as_uri() + ("/" if str(stream_resource["uri"]).endswith("/") else "")
            return dict(stream_resource, uri=uri)
    return stream_resource


def reader_for(stream_resource: dict[str, Any], wait_s: float = ANNOUNCED_FRAMES_WAIT_S) -> FrameReader:
    """The reader of a StreamResource's frames, by its mimetype; ``wait_s``: how long it may wait for
    frames announced but not in the file yet (0 for a reader that must never hold up its thread, a
    live display's).

    Raises
    ------
    ValueError
        A mimetype no reader here knows, or a file sequence without a usable ``template``.
    KeyError
        An HDF5 StreamResource without ``parameters["dataset"]``.
    """
    mimetype = stream_resource.get("mimetype")
    if mimetype in SEQUENCE_MIMETYPES:
        return FileSequenceReader(stream_resource, wait_s)
    if mimetype == MIMETYPE:
        return StreamFrameReader(stream_resource, wait_s)
    raise ValueError(f"no reader for mimetype {mimetype!r} (StreamResource {stream_resource.get('uid')}); "
                     f"supported: {', '.join([MIMETYPE, *SEQUENCE_MIMETYPES])}")


def scalar_rows(read: FrameReader, start: int, stop: int) -> list[Any]:
    """Rows ``[start, stop)`` of a StreamResource of one scalar per row (an encoder's angle, an NDAttribute such
    as an ``image_key``), as Python values (a row stored as ``[v]`` gives ``v``)."""
    return list(np.asarray(read(start, stop)).reshape(stop - start, -1)[:, 0].tolist())


def new_style_template(template: str, filename: str = "") -> str:
    """A file-name template as ``str.format`` takes it: the area detector's ``"%s%s_%6.6d.tif"``
    (directory, file name, number) becomes ``"<filename>_{:06d}.tif"``; ``"{:06d}"`` stays."""
    out = template.replace("%s", "\0", 1).replace("%s", "").replace("\0", filename, 1)

    def number(match: re.Match[str]) -> str:
        flags, width, precision = match.group(1), match.group(2), match.group(3)
        digits = max(int(width or 0), int(precision or 0))
        pad = "0" if "0" in flags or precision else ""
        return "{:" + (pad + str(digits) if digits else "") + "d}"

    return re.sub(r"%([-+#0 ]*)(\d+)?(?:\.(\d+))?d", number, out)


class FileSequenceReader:
    """Frames of a directory of files, one (or ``chunk_shape[0]``) per file.

    Parameters
    ----------
    stream_resource : dict
        The StreamResource document (a mimetype of :data:`SEQUENCE_MIMETYPES`).
    wait_s : float
        Seconds to wait for a file announced but not written yet (see :meth:`_frame`).
    """

    def __init__(self, stream_resource: dict[str, Any], wait_s: float = ANNOUNCED_FRAMES_WAIT_S) -> None:
        self.wait_s = wait_s
        self.mimetype = stream_resource["mimetype"]
        params = dict(stream_resource.get("parameters") or {})
        if self.mimetype.endswith("x-npy"):  # ophyd.sim's NPY_SEQ: "<filename>_<i>.npy", as Tiled reads them
            params["template"] = "%s_%d.npy"
        if not params.get("template"):
            raise ValueError(f"StreamResource {stream_resource.get('uid')} ({self.mimetype}) has no "
                             "parameters['template'] naming its files")
        self.directory = path_from_uri(stream_resource["uri"])
        self.template = new_style_template(str(params["template"]), str(params.get("filename", "")))
        try:
            self.template.format(0)
        except (IndexError, KeyError, ValueError) as exc:
            raise ValueError(f"cannot name the files of StreamResource {stream_resource.get('uid')} from "
                             f"template {params['template']!r}: {exc}") from exc
        chunk = params.get("chunk_shape") or (1,)
        self.frames_per_file = max(int(chunk[0] or 1), 1)
        # a wait for a file ran out: later missing files are not waited for until a file is read (files
        # that never come must not cost the wait each)
        self._waited_in_vain = False

    def path(self, file_index: int) -> Path:
        """The file of number ``file_index`` (frames ``[file_index * per_file, ...)``)."""
        return self.directory / self.template.format(file_index)

    def _load(self, path: Path, page: int) -> np.ndarray:
        if self.mimetype.endswith("tiff"):
            import tifffile

            return np.asarray(tifffile.imread(path, key=page))
        if self.mimetype.endswith("x-npy"):
            frames = np.load(path, allow_pickle=False)
            return frames[page] if frames.ndim == 3 else frames
        from PIL import Image

        with Image.open(path) as image:
            image.seek(page)
            return np.asarray(image)

    def _frame(self, index: int) -> np.ndarray:
        """Frame ``index``, waiting up to ``wait_s`` (:data:`~.hdf5_frames.ANNOUNCED_FRAMES_WAIT_S`) for a
        file that is announced but not written (or not whole) yet: a detector's file plugin may write
        after the counter that the StreamDatum follows has moved on."""
        path = self.path(index // self.frames_per_file)
        waits = not self._waited_in_vain and self.directory.is_dir()  # no directory: nothing is on its way
        deadline = time.monotonic() + (self.wait_s if waits else 0.0)
        while True:
            try:
                frame = self._load(path, index % self.frames_per_file)
                if frame.size == 0:  # a TIFF whose header is written and its image not yet reads as no pixels
                    raise ValueError(f"no pixels in it yet (shape {frame.shape})")
                self._waited_in_vain = False
                return frame
            except (OSError, ValueError, IndexError, EOFError, struct.error) as exc:  # missing, half-written, too
                # few pages (a TIFF cut short raises any of these, struct.error where a tag's bytes are missing)
                if time.monotonic() >= deadline:
                    self._waited_in_vain = True
                    raise FileNotFoundError(f"cannot read frame {index} from {path}: {exc}") from exc
            time.sleep(_POLL_S)

    def __call__(self, start: int, stop: int) -> np.ndarray:
        """Frames ``[start, stop)`` as ``(N, H, W)``."""
        return np.stack([self._frame(i) for i in range(start, stop)])

    def event(self, index: int, exposures: int) -> np.ndarray:
        """The ``exposures`` frames of StreamDatum row ``index`` (frames ``[index * N, (index + 1) * N)``)."""
        return self(index * exposures, (index + 1) * exposures)

    def close(self) -> None:
        """Nothing stays open between reads."""
