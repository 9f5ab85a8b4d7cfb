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
from importlib.metadata import entry_points
from typing import Any

from .hdf5_frames import HANDLER_REGISTRY

__all__ = ["ENTRY_POINT_GROUP", "default_handler_registry"]

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "databroker.handlers"


@functools.cache
def _discovered() -> Mapping[str, Any]:
    found: dict[str, Any] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in found:
            log.warning("two handlers announce spec %r; keeping the first, not %s", ep.name, ep.value)
            continue
        try:
            found[ep.name] = ep.load()
        except Exception as exc:  # a broken third-party package must not stop the callback
            log.warning("cannot load the handler of spec %r (%s): %s: %s; frames of that spec will be "
                        "flagged as unreadable", ep.name, ep.value, type(exc).__name__, exc)
    return found


def default_handler_registry() -> dict[str, Any]:
    """Spec -> handler class: every ``databroker.handlers`` entry point, then this package's own.

    This package's ``"hdf5"`` handler (the simulated detector's files) wins over an
    entry point of the same spec. An entry point that fails to import is logged and
    left out, so one broken package costs only the frames of its own spec.

    Returns
    -------
    dict
        A new dictionary, for :class:`event_model.Filler`'s ``handler_registry``.
    """
    return {**_discovered(), **HANDLER_REGISTRY}
