"""Tomography plans: darks, flats, then projections over the rotation, in one run.

Written against ophyd's protocols, not the simulated classes: any detector with
a shutter signal and any stage with ``theta`` and ``x`` positioners works,
so the same plan runs on the simulated beamline and on hardware.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.utils import Msg

__all__ = ["tomo_scan"]


def tomo_scan(
    detector: Any,
    stage: Any,
    angles: Sequence[float],
    *,
    n_darks: int = 10,
    n_flats: int = 10,
    out_position: float = 10.0,
    md: dict[str, Any] | None = None,
) -> Generator[Msg, Any, None]:
    """Acquire darks (``dark`` stream), flats (``flat``) and projections (``primary``).

    Parameters
    ----------
    detector : ophyd device
        Triggerable camera with a ``shutter`` signal (``"open"``/``"closed"``).
    stage : ophyd device
        With ``theta`` (degrees) and ``x`` (moves the sample out of the beam).
    angles : sequence of float
        Projection angles in degrees, in acquisition order.
    n_darks, n_flats : int
        Dark frames (shutter closed) and flat frames (sample out) before the projections.
    out_position : float
        ``x`` position that takes the sample out of the beam.
    md : dict, optional
        Extra start-document metadata.

    Examples
    --------
    >>> RE(tomo_scan(det, stage, np.linspace(0, 180, 180, endpoint=False)))  # doctest: +SKIP
    """
    angles = [float(a) for a in angles]
    _md = {
        "plan_name": "tomo_scan",
        "detectors": [detector.name],
        "motors": [stage.theta.name],
        "num_points": len(angles),
        "num_intervals": max(len(angles) - 1, 0),
        "plan_args": {"angles": f"{len(angles)} angles from {min(angles, default=0):g} to {max(angles, default=0):g}",
                      "n_darks": n_darks, "n_flats": n_flats},
        "hints": {"dimensions": [([stage.theta.readback.name], "primary")]},
        "angles": angles,
        **(md or {}),
    }

    def phase(stream: str, points: Sequence[float | None]) -> Generator[Msg, Any, None]:
        for angle in points:
            if angle is not None:
                yield from bps.mv(stage.theta, angle)
            yield from bps.trigger_and_read([detector] if angle is None else [detector, stage.theta], name=stream)

    @bpp.run_decorator(md=_md)
    def inner() -> Generator[Msg, Any, None]:
        # One staging per stream: a detector opens one file (one StreamResource) per staging,
        # and a StreamResource belongs to one stream (TiledWriter stores it under that stream).
        x0 = yield from bps.rd(stage.x)
        yield from bps.mv(detector.shutter, "closed")
        yield from bpp.stage_wrapper(phase("dark", [None] * n_darks), [detector])
        yield from bps.mv(detector.shutter, "open", stage.x, out_position)
        yield from bpp.stage_wrapper(phase("flat", [None] * n_flats), [detector])
        yield from bps.mv(stage.x, x0)
        yield from bpp.stage_wrapper(phase("primary", angles), [detector])

    yield from inner()
