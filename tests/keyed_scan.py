"""A tomography plan that takes darks, flats and projections in one stream, each event with a field that says
what its frame is (NXtomo's ``image_key``, or an area detector's ``frame_type`` as APS beamlines name its
states), as :func:`bluesky_tomogan.plans.tomo_scan` takes them in three streams."""

from __future__ import annotations

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from ophyd import Signal
from ophyd.sim import EnumSignal

#: APS's FrameType states (renamed after the Data Exchange datasets the frames go to), in their order.
APS_FRAME_TYPES = ("/exchange/data_white_pre", "/exchange/data", "/exchange/data_white_post", "/exchange/data_dark")


def keyed_tomo_scan(det, stage, angles, kind="image_key", n_darks=3, n_flats=2, out_position=10.0):
    """``tomo_scan``'s frames, in ``tomo_scan``'s order, all in ``primary``, each event with a field ``kind``
    (``image_key``: NXtomo's numbers, ``frame_type``: APS's FrameType strings) set before each phase."""
    if kind == "image_key":
        key = Signal(name="image_key", value=0)
        dark, flat, projection = 2, 1, 0
    else:
        key = EnumSignal(name="det_cam_frame_type", value=1, enum_strings=APS_FRAME_TYPES)
        dark, flat, projection = APS_FRAME_TYPES[3], APS_FRAME_TYPES[0], APS_FRAME_TYPES[1]
    angles = [float(a) for a in angles]
    md = {"plan_name": "keyed_tomo_scan", "detectors": [det.name], "motors": [stage.theta.name],
          "num_points": len(angles) + n_darks + n_flats, "angles": angles}

    def points(n, angle_list=None):
        for i in range(n):
            yield from bps.checkpoint()
            if angle_list is not None:
                yield from bps.mv(stage.theta, angle_list[i])
            yield from bps.trigger_and_read([det, key, stage.theta], name="primary")

    @bpp.stage_decorator([det])
    @bpp.run_decorator(md=md)
    def inner():
        x0 = yield from bps.rd(stage.x)
        yield from bps.mv(det.shutter, "closed", key, dark)
        yield from points(n_darks)
        yield from bps.mv(det.shutter, "open", stage.x, out_position, key, flat)
        yield from points(n_flats)
        yield from bps.mv(stage.x, x0, key, projection)
        yield from points(len(angles), angles)

    yield from inner()
