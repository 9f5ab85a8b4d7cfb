"""Zeiss Xradia ``.txrm`` (a tomography scan) and ``.xrm`` (one image or a few) files.

Transmission X-ray microscopes at synchrotrons (and Zeiss lab micro-CT) store their scans
as OLE2 compound files: one stream per image (``ImageData<k>/Image<i>``, a hundred to a
storage), the image size, count and pixel type in ``ImageInfo``, each image's rotation angle
in degrees in ``ImageInfo/Angles``, and the open-beam reference (the flat field) in
``ReferenceData/Image`` where the instrument took one. :class:`XradiaFile` reads them with
``olefile``, one image at a time, so a scan larger than memory can be denoised a chunk at a
time as an HDF5 one is (``bluesky-tomogan denoise``) and fine-tuned on
(``bluesky-tomogan finetune``).
"""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path
from types import TracebackType

import numpy as np

from .errors import TomoGANError

__all__ = ["XRADIA", "XradiaFile", "is_xradia"]

log = logging.getLogger(__name__)

#: The suffixes of Zeiss Xradia files.
XRADIA = (".txrm", ".xrm")
#: ``ImageInfo/DataType`` (and ``ReferenceData/DataType``) -> the pixels' dtype, as Zeiss writes them.
DATA_TYPES: dict[int, np.dtype] = {5: np.dtype("<u2"), 10: np.dtype("<f4")}
#: Images per ``ImageData<k>`` storage.
PER_STORAGE = 100
_OLE_MAGIC = bytes.fromhex("D0CF11E0A1B11AE1")


def is_xradia(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an Xradia file: its suffix, or an OLE2 compound file's first bytes."""
    p = Path(path)
    if p.suffix.lower() in XRADIA:
        return True
    try:
        with p.open("rb") as f:
            return f.read(len(_OLE_MAGIC)) == _OLE_MAGIC
    except OSError:
        return False


class XradiaFile:
    """The images of one Xradia file, read lazily; a context manager that closes it.

    Attributes
    ----------
    shape : tuple of int
        ``(n_images, height, width)``.
    dtype : numpy.dtype
        The pixels' type (``uint16`` or ``float32``).
    angles : numpy.ndarray or None
        Each image's rotation angle, degrees (``None`` where the file has none for every image).
    reference : numpy.ndarray or None
        The open-beam reference image (the flat field), ``(height, width)`` float32, where stored;
        scaled to the images' exposure (``ImageInfo/ExpTimes``) where it was taken with another
        (``ReferenceData/ExpTime``).

    Raises
    ------
    TomoGANError
        Not a compound file, no ``ImageInfo`` of the sizes, a pixel type other than 16-bit or
        float32, or no images.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        try:
            import olefile
        except ImportError as exc:  # a core dependency; an environment without it says so, not a traceback
            raise TomoGANError("reading Zeiss .txrm/.xrm files needs olefile: pip install olefile") from exc
        self.path = Path(path)
        if not self.path.is_file():
            raise TomoGANError(f"{self.path} does not exist")
        if not olefile.isOleFile(str(self.path)):
            raise TomoGANError(f"{self.path} is not a Zeiss Xradia file (not an OLE2 compound file)")
        try:
            self._ole = olefile.OleFileIO(str(self.path))
        except Exception as exc:  # olefile's own errors for a damaged structure (OSError, others)
            raise TomoGANError(f"{self.path} is damaged: it cannot be read as a compound file ({exc})") from exc
        try:
            width, height = self._int("ImageInfo/ImageWidth"), self._int("ImageInfo/ImageHeight")
            n = self._int("ImageInfo/NoOfImages", required=False)
            taken = self._int("ImageInfo/ImagesTaken", required=False)
            n = taken if taken and (not n or taken < n) else n  # a scan stopped early took fewer than planned
            self.dtype = self._data_type("ImageInfo/DataType")
            if width <= 0 or height <= 0 or not n or n < 0:
                raise TomoGANError(f"{self.path} holds no images (ImageInfo says {n} of {width}x{height})")
            self.shape = (int(n), int(height), int(width))
            self.angles = self._angles()
            self.reference = self._reference()
        except BaseException:
            self._ole.close()
            raise

    def _int(self, stream: str, *, required: bool = True) -> int:
        if not self._ole.exists(stream):
            if required:
                raise TomoGANError(f"{self.path} has no {stream}: not an Xradia image file")
            return 0
        raw = self._stream(stream)[:4]
        if len(raw) < 4:
            raise TomoGANError(f"{self.path}: {stream} is {len(raw)} bytes, not a 4-byte integer")
        return int(struct.unpack("<i", raw)[0])

    def _data_type(self, stream: str) -> np.dtype:
        code = self._int(stream, required=False) or 5  # files without it are 16-bit
        if code not in DATA_TYPES:
            raise TomoGANError(f"{self.path}: {stream} {code} is not a pixel type read here (5: 16-bit, "
                               "10: float32)")
        return DATA_TYPES[code]

    def _angles(self) -> np.ndarray | None:
        if not self._ole.exists("ImageInfo/Angles"):
            return None
        values = self._floats("ImageInfo/Angles")
        if len(values) < self.shape[0]:
            log.warning("%s: %d angles for %d images; the angles are not used", self.path, len(values), self.shape[0])
            return None
        return values[: self.shape[0]]

    def _reference(self) -> np.ndarray | None:
        stream = "ReferenceData/Image"
        if not self._ole.exists(stream):
            return None
        dtype = self._data_type("ReferenceData/DataType")
        raw = self._stream(stream)
        h, w = self.shape[1:]
        if len(raw) != h * w * dtype.itemsize:
            log.warning("%s: its reference image is %d bytes, not one %dx%d %s image; not used",
                        self.path, len(raw), h, w, dtype)
            return None
        reference = np.frombuffer(raw, dtype).reshape(h, w).astype(np.float32)
        # a reference taken with another exposure than the images (shorter, not to saturate) is scaled to
        # theirs, so that the flat-field correction divides like by like
        images, taken = self._floats("ImageInfo/ExpTimes"), self._floats("ReferenceData/ExpTime")
        exposure = float(np.median(images[: self.shape[0]])) if len(images) else 0.0
        if len(taken) and taken[0] > 0 and exposure > 0 and not np.isclose(exposure, taken[0], rtol=1e-3):
            log.info("%s: reference taken with %.4g s, images with %.4g s: reference scaled to the images'",
                     self.path, taken[0], exposure)
            reference *= np.float32(exposure / taken[0])
        return reference

    def _floats(self, stream: str) -> np.ndarray:
        if not self._ole.exists(stream):
            return np.empty(0)
        raw = self._stream(stream)
        return np.frombuffer(raw[: len(raw) // 4 * 4], "<f4").astype(np.float64)

    def _stream(self, stream: str) -> bytes:
        """The bytes of ``stream``; a damaged file (a stream past its end, a broken sector chain) is one error."""
        try:
            data: bytes = self._ole.openstream(stream).read()
        except Exception as exc:  # olefile's errors for a damaged structure
            raise TomoGANError(f"{self.path} is damaged: {stream} cannot be read ({exc})") from exc
        return data

    def image(self, i: int) -> np.ndarray:
        """Image ``i`` (0-based) as ``(height, width)``."""
        stream = f"ImageData{i // PER_STORAGE + 1}/Image{i + 1}"
        if not self._ole.exists(stream):
            raise TomoGANError(f"{self.path} has no {stream}: the file holds fewer images than its "
                               f"ImageInfo says ({self.shape[0]})")
        raw = self._stream(stream)
        h, w = self.shape[1:]
        if len(raw) != h * w * self.dtype.itemsize:
            raise TomoGANError(f"{self.path}: {stream} is {len(raw)} bytes, not one {h}x{w} {self.dtype} image "
                               f"({h * w * self.dtype.itemsize} bytes): the file is damaged or cut short")
        return np.frombuffer(raw, self.dtype).reshape(h, w)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Images ``[start, stop)`` as ``(stop - start, height, width)``."""
        return np.stack([self.image(i) for i in range(start, stop)]) if stop > start else \
            np.empty((0, *self.shape[1:]), self.dtype)

    def close(self) -> None:
        """Close the file."""
        self._ole.close()

    def __enter__(self) -> XradiaFile:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<XradiaFile {self.path.name}: {self.shape[0]} images of {self.shape[1]}x{self.shape[2]} {self.dtype}>"
