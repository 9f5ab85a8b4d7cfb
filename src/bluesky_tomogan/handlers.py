"""Handlers for legacy ``Resource``/``Datum`` frames: this package's own plus every installed package's.

Ophyd v1 detectors do not put their frames in the events; a ``Resource`` names a
file and its ``spec`` (``"AD_HDF5"``, ``"AD_TIFF"``, ``"NPY_SEQ"``, ...), and a
handler class for that spec reads a frame back. Packages announce their
handlers as entry points of the group ``databroker.handlers`` (ophyd's
simulated ``img`` detector announces ``NPY_SEQ``; ``area-detector-handlers``
the area detector file plugins), the same registry databroker builds, so a
beamline's detectors work here without configuration once their handler
package is installed.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import numpy as np

from .hdf5_frames import HANDLER_REGISTRY

__all__ = ["ENTRY_POINT_GROUP", "AnnouncedHandler", "default_handler_registry", "fill_datum"]

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "databroker.handlers"


class AnnouncedHandler:
    """A handler class announced by an entry point, imported when the first resource of its spec
    arrives (importing every installed handler package up front costs seconds and threads).

    Called as the handler class would be (``handler(resource_path, **resource_kwargs)``);
    :class:`event_model.Filler` does so on the worker thread when it fills a frame.
    """

    def __init__(self, entry_point: EntryPoint) -> None:
        self.entry_point = entry_point
        self._class: Any = None

    def load(self) -> Any:
        """The handler class.

        Raises
        ------
        ImportError
            Its package cannot be imported; the message names the spec and the entry point.
        """
        if self._class is None:
            try:
                self._class = self.entry_point.load()
            except Exception as exc:  # a broken third-party package: its own frames say so, nothing else
                raise ImportError(f"cannot load the handler of spec {self.entry_point.name!r} "
                                  f"({self.entry_point.value}): {type(exc).__name__}: {exc}") from exc
        return self._class

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.load()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<AnnouncedHandler {self.entry_point.name}: {self.entry_point.value}>"


@functools.cache
def _discovered() -> Mapping[str, AnnouncedHandler]:
    found: dict[str, AnnouncedHandler] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in found:
            log.warning("two handlers announce spec %r; keeping %s, not %s", ep.name,
                        found[ep.name].entry_point.value, ep.value)
            continue
        found[ep.name] = AnnouncedHandler(ep)
    return found


def default_handler_registry() -> dict[str, Any]:
    """Spec -> handler class: every ``databroker.handlers`` entry point, then this package's own.

    This package's ``"hdf5"`` handler (the simulated detector's files) wins over an
    entry point of the same spec. Announced handlers are imported when a resource of
    their spec first needs them (:class:`AnnouncedHandler`); one whose package fails to
    import costs only the frames of its own spec, each flagged with the reason.

    Returns
    -------
    dict
        A new dictionary, for :class:`event_model.Filler`'s ``handler_registry``.
    """
    return {**_discovered(), **HANDLER_REGISTRY}


def fill_datum(filler: Any, descriptor_uid: str, field: str, datum_id: str) -> np.ndarray:
    """What the legacy datum ``datum_id`` of ``field`` holds, read by an :class:`event_model.Filler` that has
    seen the run's descriptor, resource and datum (the event of one field it fills stands in for the real one)."""
    event = {"descriptor": descriptor_uid, "uid": "", "time": 0.0, "seq_num": 0, "data": {field: datum_id},
             "timestamps": {field: 0.0}, "filled": {field: False}}
    return np.asarray(filler.fill_event(event, include=[field], inplace=False)["data"][field])
