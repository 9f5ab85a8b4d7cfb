"""What each frame of a tomography scan is: a projection, a dark field or a flat (open-beam) field.

Plans say it in one of three ways, and the callback, its QC, the live reconstruction and ``finetune``
(a stored run) read all three:

- **by stream name**: darks and flats in streams of their own (``tomo_scan``'s ``dark`` and ``flat``;
  ``darks``, ``flat_field``, ``white``, ... elsewhere: :data:`SCAN_ROLE_NAMES`);
- **event by event**: every frame in one stream, with a scalar field that says what each is, as NXtomo
  files do: an ``image_key`` (NXtomo's numbers: 0 projection, 1 flat, 2 dark, 3 invalid) or an
  area detector's ``frame_type`` (``cam.frame_type`` read with the frame: its enum strings where the
  descriptor gives them, such as APS's ``/exchange/data_dark``, else areaDetector's numbers: 0 Normal,
  1 Background, 2 FlatField); in its events, or written to a file beside the frames (``STREAM:``: an
  area detector's NDAttribute in a fly scan's HDF5 file, announced by StreamDatum like the frames);
- **run by run**: the same field in the detector's configuration, for plans that take darks, flats
  and projections as separate runs (the configuration is read afresh at each run's first event).

An event's field outranks its stream's name, which outranks the configuration (a camera reports
``Normal`` there unless the plan set it). A value that says nothing known is a projection, as a frame
of a stream without such a field is.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .nexus import IMAGE_KEY

__all__ = ["DARK", "FLAT", "FRAME_ROLES", "INVALID", "ROLE_KEY_ENDINGS", "SCAN_ROLE_NAMES", "FrameRoles", "RoleKey",
           "find_role_key", "role_of_text", "scan_role"]

log = logging.getLogger(__name__)

DARK, FLAT, INVALID = "dark", "flat", "invalid"
#: The roles a frame can have (``None``: a projection).
FRAME_ROLES: tuple[str | None, ...] = (None, DARK, FLAT, INVALID)

#: What tomography plans name their dark- and flat-field streams (``tomo_scan``: ``dark``, ``flat``), by role.
SCAN_ROLE_NAMES: dict[str, frozenset[str]] = {
    DARK: frozenset({"dark", "darks", "dark_field", "dark_fields", "darkfield", "darkfields", "dark_frames"}),
    FLAT: frozenset({"flat", "flats", "flat_field", "flat_fields", "flatfield", "flatfields", "flat_frames",
                     "white", "whites", "white_field", "white_fields", "bright", "bright_field"}),
}

#: Scalar fields that say what a frame is, by how their names end (any case): ophyd's ``det_cam_frame_type``,
#: ophyd-async's ``det-image_key``, a plan's own ``image_key``.
ROLE_KEY_ENDINGS = ("image_key", "imagekey", "frame_type", "frametype")
#: NXtomo's ``image_key`` numbers (as :mod:`bluesky_tomogan.nexus` reads them in files; 3 is an invalid frame).
NXTOMO_KEYS: dict[int, str | None] = {number: None if kind == "projection" else kind
                                      for kind, number in IMAGE_KEY.items()} | {3: INVALID}
#: areaDetector's ``FrameType`` numbers (``ADFrameType``: Normal, Background, FlatField, DblCorrelation).
AREA_DETECTOR_FRAME_TYPES: dict[int, str | None] = {0: None, 1: DARK, 2: FLAT, 3: None}
#: Words in a frame type's text, by the role they mean; checked in this order (``/exchange/data_white``
#: is a flat, ``/exchange/data_dark`` a dark, ``/exchange/data`` a projection).
_ROLE_WORDS = ((INVALID, ("invalid",)), (DARK, ("dark", "background")), (FLAT, ("flat", "white", "bright")))


def scan_role(stream: str) -> str | None:
    """``"dark"`` or ``"flat"`` for a raw stream of dark or flat fields by its name (any case: ``darks``,
    ``flat_field``, ``white``, ...: :data:`SCAN_ROLE_NAMES`), ``None`` for the others."""
    name = stream.lower()
    return next((role for role, names in SCAN_ROLE_NAMES.items() if name in names), None)


def role_of_text(text: str) -> str | None:
    """The role a frame type's text names (``Background``, ``FlatField``, ``/exchange/data_dark``, ``invalid``);
    ``None`` (a projection) for the others (``Normal``, ``Projection``, ``/exchange/data``)."""
    lowered = text.lower()
    return next((role for role, words in _ROLE_WORDS if any(w in lowered for w in words)), None)


@dataclass(frozen=True)
class RoleKey:
    """A scalar field that says what each frame is (:data:`ROLE_KEY_ENDINGS`), and how to read its values.

    Parameters
    ----------
    name : str
        The data key (or configuration key).
    choices : tuple of str
        Its enum strings where its description lists them (ophyd's ``enum_strs``, ophyd-async's ``choices``):
        a number is read as the string at that index.
    nxtomo : bool
        Numbers are NXtomo's ``image_key`` (else areaDetector's ``FrameType``).
    external : bool
        Its values are written to a file (``STREAM:``) and announced by StreamDatum, not carried by events.
    """

    name: str
    choices: tuple[str, ...] = ()
    nxtomo: bool = True
    external: bool = False

    def role_of(self, value: Any) -> str | None:
        """``"dark"``, ``"flat"``, ``"invalid"`` or ``None`` (a projection) for one value of the field.

        Raises
        ------
        ValueError
            A value that says nothing known (a number outside the table, no number or text at all).
        """
        if isinstance(value, (list, tuple, np.ndarray)) and np.size(value) == 1:  # a field of shape [1]
            value = np.asarray(value).reshape(-1)[0].item()
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        if isinstance(value, str):
            text = value.strip()
            if not text.lstrip("+-").isdigit():
                return role_of_text(text)
            value = int(text)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)) \
                or float(value) != round(float(value)):
            raise ValueError(f"{self.name} = {value!r} is not a frame type")
        number = round(float(value))
        if self.choices:
            if 0 <= number < len(self.choices):
                return role_of_text(self.choices[number])
            raise ValueError(f"{self.name} = {number} is beyond its {len(self.choices)} choices {list(self.choices)}")
        table = NXTOMO_KEYS if self.nxtomo else AREA_DETECTOR_FRAME_TYPES
        if number not in table:
            convention = "NXtomo image_key" if self.nxtomo else "areaDetector FrameType"
            raise ValueError(f"{self.name} = {number} is none of {convention}'s values {sorted(table)}")
        return table[number]


def find_role_key(data_keys: Mapping[str, Any]) -> RoleKey | None:
    """The first scalar field among ``data_keys`` (a descriptor's, or a device's configuration's) whose name
    ends in one of :data:`ROLE_KEY_ENDINGS`; ``None`` if there is none.

    A field written to a file beside the frames (``external: "STREAM:"``, such as an area detector's
    NDAttribute in a fly scan's HDF5 file) is read from there (``RoleKey.external``); one announced otherwise
    (a legacy ``FILESTORE:`` Resource) is not, with a warning, and the stream's frames are what its name says."""
    for name, key in data_keys.items():
        lowered = name.lower()
        ending = next((e for e in ROLE_KEY_ENDINGS if lowered.endswith(e)), None)
        if ending is None or not isinstance(key, Mapping) or [s for s in key.get("shape") or [] if s != 1]:
            continue
        external = key.get("external")
        if external and external != "STREAM:":
            log.warning("%s says what each frame is but is written to a file through a Resource (external %r), "
                        "which is not read for it: the stream's frames count as what its name says", name, external)
            continue
        choices = key.get("choices") or key.get("enum_strs") or ()
        return RoleKey(name, tuple(str(c) for c in choices), nxtomo=ending.startswith("image"), external=bool(external))
    return None


class FrameRoles:
    """What the frames of one raw stream (one descriptor) are: its event field, its name, its configuration.

    Parameters
    ----------
    descriptor : dict
        The raw stream's event descriptor.
    """

    def __init__(self, descriptor: Mapping[str, Any]) -> None:
        self.stream = str(descriptor.get("name", "primary"))
        #: The field of its events that says what each frame is (``None``: the stream has none).
        self.key = find_role_key(descriptor.get("data_keys") or {})
        named = scan_role(self.stream)
        #: The role of a frame whose event does not say: by the stream's name, else, in a stream without such a
        #: field, by its configuration (a signal read with every event reports its first value there too).
        self.default = named if named is not None or self.key is not None else _configured_role(descriptor)
        self._warned = 0  # values that said nothing known, logged (the first five; those frames count as default)

    @property
    def per_event(self) -> bool:
        """Whether each frame is said to be what it is, one by one: by its event, or in a file (:attr:`in_file`)."""
        return self.key is not None

    @property
    def in_file(self) -> bool:
        """Whether what each frame is is written to a file (``STREAM:``), not carried by its event."""
        return self.key is not None and self.key.external

    @property
    def in_events(self) -> bool:
        """Whether each event says what its frame is."""
        return self.key is not None and not self.key.external

    def of_page(self, data: Mapping[str, Sequence[Any]], n: int) -> list[str | None]:
        """The role of each of the ``n`` events of an event page's ``data``."""
        column = data.get(self.key.name) if self.key is not None else None
        if column is None:
            return [self.default] * n
        if len(column) != n:  # a malformed page: its frames count as the stream's
            log.warning("stream %r: an event page of %d events holds %d values of %s; its frames count as %s",
                        self.stream, n, len(column), self.key.name if self.key else "", self.default or "projections")
            return [self.default] * n
        return [self.of_value(v) for v in column]

    def of_value(self, value: Any) -> str | None:
        """The role of one event by its field's value (the stream's default where it says nothing known)."""
        assert self.key is not None
        try:
            return self.key.role_of(value)
        except (ValueError, TypeError) as exc:
            if self._warned < 5:
                self._warned += 1
                log.warning("stream %r: %s; the frame counts as %s", self.stream, exc, self.default or "a projection")
            return self.default


def _configured_role(descriptor: Mapping[str, Any]) -> str | None:
    """The role the descriptor's configuration gives (a device's ``frame_type`` or ``image_key`` there), if any."""
    for config in (descriptor.get("configuration") or {}).values():
        key = find_role_key((config or {}).get("data_keys") or {})
        value = ((config or {}).get("data") or {}).get(key.name) if key is not None else None
        if key is None or value is None:
            continue
        try:
            return key.role_of(value)
        except (ValueError, TypeError):
            log.warning("stream %r: configuration %s = %r is not a frame type; ignored",
                        descriptor.get("name", "primary"), key.name, value)
    return None
