"""``bluesky-tomogan demo``: a live low-dose tomography scan, denoised while it runs, stored in Tiled.

What a beamline session does, end to end, on simulated hardware:

1. an embedded Tiled server (SQLite catalog and frame files under ``out``);
2. a RunEngine with the simulated camera, rotation stage and ring current;
3. ``TomoGANCallback`` between the RunEngine and ``TiledWriter``, denoising the
   ``primary`` projections with the shipped projection model (``policy="block"``:
   every frame by the full network, the scan waits when the queue is full) or with
   the All-in-One ladder (``policy="adaptive"``: lighter networks while the
   denoiser falls behind this CPU, so the scan never waits);
4. live QC: every frame's flags go to a ``QCMonitor`` whose ``beam_lost``
   flag a suspender watches, beside a ring-current suspender; suspensions are
   recorded in the run (``interruptions``);
5. ``tomo_scan``: darks, flats, then the projections, with a progress bar
   (``fly=True``: ``tomo_fly_scan`` of the simulated ophyd-async beamline,
   :mod:`bluesky_tomogan.devices.fly`, the sample turning while the camera takes
   frames); with ``faults=True`` the ring loses the beam for 2 s a third of the
   way in and three frames saturate two thirds of the way in;
6. afterwards, everything is read back *from Tiled* (as an analyst would):
   one slice is reconstructed from the raw and from the denoised projections
   (the last good frame of each angle) and compared with the noise-free answer;
   a PNG figure is written, with the QC timeline (flags and suspensions) of the scan.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .errors import InputValueError, OutputPathError
from .metrics import psnr, ssim
from .storage import stored_frames

__all__ = ["run_demo"]

log = logging.getLogger(__name__)
#: The data key of the simulated PandA's capture (``demo --fly --capture``), as ophyd-async's PandA names one.
CAPTURE_KEY = "panda-inenc-1-val"


#: The demo's frame sizes: the smallest that reconstructs three slices with neighbours, the largest whose
#: 180 frames the demo's store and this package's tests have held (2048 x 2048 is 1.5 GB raw).
DEMO_SIZES = (16, 2048)
#: Degrees a demo scan may turn the sample: half a turn, or a full one (an offset axis: ``axis_offset``).
TURNS = (180.0, 360.0)


def _check_settings(size: int, n_angles: int, photons: float, exposure: float, zingers: float = 0.0,
                    blur: float = 0.0, sample_width: float = 1.0, turn: float = 180.0,
                    axis_offset: float = 0.0) -> None:
    """Refuse settings the demo cannot run, before its store or server is made."""
    problems = []
    if not DEMO_SIZES[0] <= size <= DEMO_SIZES[1]:
        problems.append(f"size must be {DEMO_SIZES[0]}-{DEMO_SIZES[1]} pixels, got {size}")
    if n_angles < 3:
        problems.append(f"angles must be at least 3 (a slice needs them), got {n_angles}")
    if not (math.isfinite(photons) and photons > 0):
        problems.append(f"photons must be above 0 per pixel, got {photons} (0 is a lost beam: the scan "
                        "would stay suspended)")
    if not (math.isfinite(exposure) and exposure > 0):
        problems.append(f"exposure must be above 0 s, got {exposure}")
    if not 0 <= zingers < 0.1:
        problems.append(f"zingers must be a rate per pixel in [0, 0.1), got {zingers}")
    if not 0 <= blur <= 10:
        problems.append(f"blur must be a Gaussian's sigma in pixels in [0, 10], got {blur}")
    if not 1 <= sample_width <= 4:
        problems.append(f"sample width must be 1-4 fields of view, got {sample_width}")
    if turn not in TURNS:
        problems.append(f"turn must be one of {TURNS} degrees, got {turn}")
    if not (math.isfinite(axis_offset) and abs(axis_offset) < size / 2):
        problems.append(f"axis offset must put the axis on the detector (under {size / 2:g} px from its middle), "
                        f"got {axis_offset}")
    if problems:
        raise InputValueError("demo: " + "; ".join(problems))


def scan_angles(n_angles: int, turn: float = 180.0) -> np.ndarray:
    """The demo's ``n_angles`` projection angles, evenly spaced over ``[0, turn)`` degrees."""
    return np.linspace(0.0, float(turn), int(n_angles), endpoint=False)


def run_demo(
    out: Path,
    size: int = 512,
    n_angles: int = 180,
    photons: float = 500.0,
    backend: str = "auto",
    exposure: float = 0.1,
    seed: int = 7,
    faults: bool = False,
    policy: Literal["block", "adaptive"] = "block",
    report: Callable[[str], None] = log.info,
    live_view: bool = False,
    fly: bool = False,
    capture: bool = False,
    zingers: float = 0.0,
    blur: float = 0.0,
    sample_width: float = 1.0,
    turn: float = 180.0,
    axis_offset: float = 0.0,
) -> dict[str, Any]:
    """Run the demo scan and return its measured numbers; see the module docstring.

    Parameters
    ----------
    out : path
        Directory of the store (Tiled catalog and frames) and the figure.
    size : int
        Frame size (``size x size``).
    n_angles : int
        Projections over the ``turn``.
    photons : float
        Incident photons per pixel per frame in the open beam (the dose).
    backend : str
        Denoiser backend (see :func:`~bluesky_tomogan.load_denoiser`).
    exposure : float
        Simulated exposure time per frame in seconds.
    seed : int
        Seed of the sample and the noise.
    faults : bool
        Lose the beam for 2 s a third of the way in, saturate three frames two
        thirds of the way in (see the QC timeline in the figure).
    policy : {"block", "adaptive"}
        ``block``: the shipped projection model denoises every frame, and the scan waits
        for room in the callback's queue. ``adaptive``: every ratio of
        ``tomogan-projection-aio`` and then ``tomogan-projection-s2d-aio`` are loaded
        (warmed at the frame shape), and the callback steps down to a lighter one while
        the queue is long (docs/callback.md, "When the denoiser cannot keep up"); the
        summary counts the frames each network denoised.
    report : callable
        Receives the human-readable summary lines (the CLI passes ``print``).
    live_view : bool
        Show the newest raw and denoised projection and the newest middle slice in windows during
        the scan (:class:`~bluesky_tomogan.callbacks.LiveDenoisedView`,
        :class:`~bluesky_tomogan.callbacks.LiveSliceView`), and keep them open at the end until they
        are closed; where matplotlib can show no window (no display), say so and go on.
    fly : bool
        A fly scan instead (:func:`~bluesky_tomogan.plans.tomo_fly_scan` of the simulated ophyd-async beamline,
        :mod:`bluesky_tomogan.devices.fly`; needs the ``fly`` extra): the sample turns at constant speed while
        the camera takes a frame every ``exposure`` seconds, each blurred over its angular step; no angle is
        recorded per frame, so the reconstruction takes the plan's nominal ones.
    capture : bool
        With ``fly``: a simulated PandA (:class:`~bluesky_tomogan.devices.fly.SimPositionCapture`) records
        the angle at the middle of each exposure beside the frames, and the callback (context, QC) and the
        reconstruction take those (``angle_field="panda-inenc-1-val"``), as at a fly beamline with position
        capture; the projections QC finds unusable (with ``faults``: flown without beam) are flown again
        after the rotation (``tomo_fly_scan(..., feedback=...)``).
    zingers : float
        Zingers per pixel and frame (X-rays scattered into the scintillator: specks of 1-2 pixels, new in every
        frame; :class:`~bluesky_tomogan.devices.SimTomoDetector`'s ``zingers``), below 0.1.
    blur : float
        The camera's blur, a Gaussian's sigma in pixels (a scintillator's and its optics': correlated noise;
        ``SimTomoDetector``'s ``blur``), 0-10.
    sample_width : float
        The bead pack's width in fields of view, 1-4 (``SimTomoDetector``'s ``sample_width``): above 1 the camera
        sees the middle of a wider sample (local tomography), and the live reconstruction's slices fill their
        circle and rise towards its rim.
    turn : float
        Degrees the sample turns over the scan: 180 (default) or 360.
    axis_offset : float
        Where the rotation axis projects, in pixels right of the camera's middle (``SimTomoDetector``'s
        ``axis_offset``). With ``turn=360`` and a sample about twice the field of view across: an offset-axis
        (half-acquisition) scan, whose live slices span the doubled field of view (docs/callback.md, "An offset
        axis").
    """
    from bluesky import RunEngine
    from bluesky.suspenders import SuspendFloor
    from bluesky_tiled_plugins import TiledWriter

    from .callbacks import SCAN_STREAMS, LiveViewDuringTask, ScanProgress, TomoGANCallback, TomoReconstruction
    from .callbacks.live_view import draw_deferred
    from .devices import QCMonitor, SimBeamCurrent, SimTomoDetector, SimTomoStage
    from .inference import load_denoiser
    from .inference.ratios import load_ratios
    from .plans import tomo_scan
    from .qc import QCFeedback, QCPolicy
    from .storage import close_local_tiled, frames_directory, local_tiled

    if policy not in _POLICIES:
        raise ValueError(f"policy must be one of {_POLICIES}, got {policy!r}")
    _check_settings(size, n_angles, photons, exposure, zingers, blur, sample_width, turn, axis_offset)
    if capture and not fly:
        raise InputValueError("demo: a position capture (--capture) records a fly scan's angles: add --fly")
    fly_devices = _fly_devices() if fly else None  # before any store is made: a missing extra is said first
    root = Path(out).expanduser().resolve()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"cannot create demo directory {root}: {exc}") from exc
    report(f"starting an embedded Tiled server in {root} ...")
    client = local_tiled(root)
    try:
        beam = SimBeamCurrent()
        if policy == "adaptive":  # every network loaded and warmed now: no compile during the scan
            den: Any = load_ratios("tomogan-projection-aio", backend=backend,
                                   fallback="tomogan-projection-s2d-aio", warm_up=(size, size))
        else:
            den = load_denoiser("tomogan-projection", backend=backend)
        report(f"denoiser: {den!r}")

        # with Tk, GTK or wx windows the live views are drawn by the main thread while the plan runs (Qt: as bluesky)
        RE = RunEngine({}, during_task=LiveViewDuringTask())
        RE.record_interruptions = True
        md = {"sample": "glass beads (simulated)", "purpose": "bluesky-tomogan demo"}
        monitor = QCMonitor(name="qc", beam=beam, beam_ok=0.5 * beam.nominal)
        feedback = QCFeedback(QCPolicy(), monitor=monitor, RE=RE)  # the dark level from the run's darks
        if fly_devices is None:
            stage = SimTomoStage(name="stage")
            det: Any = SimTomoDetector(name="det", stage=stage, beam=beam, shape=(size, size),
                                       directory=frames_directory(root) / "raw", seed=seed, zingers=zingers,
                                       blur=blur, sample_width=sample_width, axis_offset=axis_offset)
            det.exposure_time.put(exposure)
            det.photon_flux.put(photons / exposure)
            camera, key = det, det.image_key
            plan = tomo_scan(det, stage, list(scan_angles(n_angles, turn)), md=md)
        else:  # ophyd-async devices connect in the RunEngine's event loop: made after it
            # with a capture, the frames QC finds unusable (flown without beam) are flown again after the rotation
            det, plan = _fly_beamline(fly_devices, root, size, photons, exposure, seed, beam, n_angles, md,
                                      feedback if capture else None, zingers, blur, sample_width, turn, axis_offset)
            camera, key = det.camera, det.name
        feedback.install_suspenders(RE, sleep=0.5)
        RE.install_suspender(SuspendFloor(beam, 0.25 * beam.nominal, resume_thresh=0.5 * beam.nominal, sleep=0.5))
        # Flats are denoised too: the flat's own noise is the strongest stripe in the sinogram.
        angle_field = CAPTURE_KEY if capture else None  # each frame's angle, where a PandA captures it
        cb = TomoGANCallback(den, streams=list(SCAN_STREAMS), directory=frames_directory(root), policy=policy,
                             feedback=feedback, angle_field=angle_field)
        live = TomoReconstruction(load_denoiser("tomogan-slice", backend=backend), every=max(n_angles // 3, 1),
                                  directory=frames_directory(root), angle_field=angle_field)
        cb.subscribe(live)
        live.subscribe(TiledWriter(client))
        views = _live_views(report) if live_view else None
        if views is not None:
            cb.subscribe(views[0])  # the newest raw and denoised projection
            live.subscribe(views[1])  # the newest middle slice, back-projected and denoised
        RE.subscribe(cb)
        RE.subscribe(ScanProgress())
        if faults:
            RE.subscribe(_fault_injector(camera, beam, n_angles, report))
        report(f"scanning{' on the fly' if fly else ''}: {n_angles} projections of {size}x{size} at {photons:g} "
               "photons/pixel" + (f", each frame's angle captured ({CAPTURE_KEY})" if capture else "") + " ...")
        t0 = time.perf_counter()
        result = RE(plan)
        (uid,) = result if isinstance(result, tuple) else result.run_start_uids
        wall = time.perf_counter() - t0
        live.wait()  # the final reconstruction finishes after the RunEngine returns
        if views is not None:
            draw_deferred()  # its slice, for windows drawn on the main thread only (Tk, GTK, wx)
        run = client[uid]
        # the angles each projection was reconstructed at: the stage's, a fly scan's captured or nominal ones
        angles = (np.ravel(run["primary"][CAPTURE_KEY].read()).astype(float) if capture
                  else np.asarray(run.metadata["start"]["angles"], float) if fly else scan_angles(n_angles, turn))
        metrics = _evaluate(run, camera, key, angles, photons, blur=turn / n_angles if fly else 0.0,
                            planned=n_angles)
        metrics |= {"uid": uid, "scan_seconds": wall, "dropped": cb.dropped, "qc_errors": len(cb.errors),
                    "denoiser": repr(den), "exit_status": run.metadata["stop"]["exit_status"],
                    "plan": run.metadata["start"]["plan_name"]}
        timeline = _qc_timeline(run, key)
        metrics |= {"suspensions": len(timeline["suspensions"]), "flagged_frames": len(timeline["flags"]),
                    "lagging_frames": sum(flag == "lagging" for _, flag in timeline["flags"]),
                    "networks": _networks(run, key),
                    "retaken_frames": (sum(str(a) == "retake" for a in run["qc_actions"]["qc_action"].read())
                                       if "qc_actions" in run else 0)}
        figure = root / "demo.png"
        _figure(figure, metrics.pop("_panels"), den, metrics, timeline)
        monitor.cancel_timers()
    finally:
        close_local_tiled(client)

    report(f"scan {uid} took {wall:.1f} s; {cb.dropped} frames dropped; "
           f"median latency {metrics['latency_median_s'] * 1e3:.0f} ms per frame")
    report(f"QC: {metrics['flagged_frames']} frames flagged, {metrics['suspensions']} suspensions"
           + (f", {metrics['retaken_frames']} frames taken again" if metrics["retaken_frames"] else "")
           + " (see the timeline in the figure)")
    m = metrics
    if policy == "adaptive":
        report("networks: " + ", ".join(f"{name} {n} frames" for name, n in m["networks"].items()))
    elif m["lagging_frames"]:
        report(f"the denoiser fell behind the detector on this CPU ({m['lagging_frames']} frames flagged "
               "lagging; with policy block the scan waited for it); other policies, such as --policy adaptive: "
               "docs/callback.md, 'When the denoiser cannot keep up'")
    report(f"projection PSNR {m['frame_psnr_raw']:.1f} -> {m['frame_psnr_denoised']:.1f} dB; "
           f"middle slice SSIM against the noise-free reconstruction: FBP of raw {m['slice_ssim_raw']:.3f}, "
           f"FBP of denoised {m['slice_ssim_denoised']:.3f}, live reconstruction {m['slice_ssim_live']:.3f}")
    report(f"stripe metric of the sinogram: raw {m['stripe_raw']:.4f}, denoised {m['stripe_denoised']:.4f} "
           f"(with the raw flats {m['stripe_denoised_raw_flats']:.4f}); rotation centre {m['center']:.2f} px")
    report(f"figure: {figure}")
    report(f"data:   {root}  (Tiled catalog in tiled/, frame files in frames/)")
    report("read it back in Python:")
    report("    from bluesky_tomogan.storage import local_tiled, stored_frames")
    report(f"    client = local_tiled({str(root)!r})")
    report(f"    run = client[{uid!r}]")
    k = min(10, n_angles - 1)  # a projection the run has
    lines = [(f"    stored_frames(run['primary']['{key}'])[{k}]", f"# raw projection {k} (uint16)"),
             (f"    run['denoised']['{key}_denoised'][{k}]", "# the same projection, denoised"),
             (f"    run['denoised']['{key}_qc_flags'].read()", "# per-frame QC flags (and _qc_snr, _qc_shift_px, ...)"),
             ("    run['reconstruction']['slice'][-2]", "# the middle slice, reconstructed and denoised live")]
    width = max(len(code) for code, _ in lines) + 1
    for code, comment in lines:
        report(code.ljust(width) + comment)
    report("denoise it again with another model (into a 'denoised_2' stream of the same run):")
    report(f"    bluesky-tomogan reprocess {str(root)!r} --uid {uid} --model tomogan-projection-light")
    report("or with the mean over 8 turned copies of every frame and slice, into a new run (8x the time):")
    report(f"    bluesky-tomogan reprocess {str(root)!r} --uid {uid} --into new --self-ensemble 8 --reconstruct")
    if views is not None:
        import matplotlib.pyplot as plt

        report("the live views stay open until their windows are closed")
        plt.show(block=True)
    return metrics


def _live_views(report: Callable[[str], None]) -> tuple[Any, Any] | None:
    """A :class:`~bluesky_tomogan.callbacks.LiveDenoisedView` and a :class:`~bluesky_tomogan.callbacks.LiveSliceView`
    where matplotlib can show windows; else ``None``, said."""
    import matplotlib

    from .callbacks import LiveDenoisedView, LiveSliceView
    from .callbacks.live_view import shows_windows

    if not shows_windows():
        report(f"live view: matplotlib's backend here ({matplotlib.get_backend()}) shows no window (no display?); "
               "the scan goes on without it")
        return None
    return LiveDenoisedView(), LiveSliceView()


def _fly_devices() -> Any:
    """:mod:`bluesky_tomogan.devices.fly`, or an error that says how to install what it needs."""
    try:
        from .devices import fly
    except ImportError as exc:
        raise InputValueError(f"demo --fly needs ophyd-async 0.21 or later ({exc}): pip install -e '.[fly]' "
                              "(or .venv/bin/pip install -e '.[fly]' beside `make demo`)") from exc
    return fly


def _fly_beamline(fly: Any, root: Path, size: int, photons: float, exposure: float, seed: int, beam: Any,
                  n_angles: int, md: dict[str, Any], retake: Any = None, zingers: float = 0.0,
                  blur: float = 0.0, sample_width: float = 1.0, turn: float = 180.0,
                  axis_offset: float = 0.0) -> tuple[Any, Any]:
    """The simulated ophyd-async beamline's camera and a ``tomo_fly_scan`` of it over ``turn`` degrees; with ``retake``
    (a QCFeedback), its simulated PandA flown beside the camera and the frames QC finds unusable flown again."""
    from ophyd_async.core import init_devices, soft_signal_rw
    from ophyd_async.sim import SimMotor

    from .plans import tomo_fly_scan
    from .storage import frames_directory

    with init_devices():
        rot = fly.SimFlyRotation(name="rot")
        x = SimMotor(name="x")
        shutter = soft_signal_rw(str, "open", name="shutter")
        det = fly.SimFlyTomoDetector(frames_directory(root) / "raw", rot, x, shutter, shape=(size, size),
                                     photon_flux=photons / exposure, beam=beam, seed=seed, zingers=zingers,
                                     blur=blur, sample_width=sample_width, axis_offset=axis_offset, name="det")
        panda = fly.SimPositionCapture(frames_directory(root) / "raw", det, name="panda") if retake else None
    return det, tomo_fly_scan(det, rot, 0.0, float(turn), n_angles, exposure=exposure, shutter=shutter, sample_x=x,
                              md=md, capture=[panda] if panda is not None else (), feedback=retake)


def _fault_injector(camera: Any, beam: Any, n_angles: int, report: Callable[[str], None]) -> Callable[[str, Any], None]:
    """A document callback that loses the beam a third of the way in and saturates frames two thirds in: at those
    projections' events (a step scan) or, in a fly scan, at the first StreamDatum that reaches them."""
    primary: set[str] = set()
    done: set[str] = set()

    def at(seq_nums: range) -> None:
        if n_angles // 3 in seq_nums and "dump" not in done:
            done.add("dump")
            report("fault: the ring loses the beam for 2 s")
            threading.Timer(0.0, beam.dump, args=(2.0,)).start()  # from the ring's side, not the RunEngine's
        if 2 * n_angles // 3 in seq_nums and "saturation" not in done:  # a fly scan's StreamDatum may reach both
            done.add("saturation")
            report("fault: three saturated frames")
            camera.inject_fault("saturation", frames=3)

    def inject(name: str, doc: Any) -> None:
        if name == "descriptor" and doc.get("name") == "primary":
            primary.add(doc["uid"])
        elif name == "event" and "stage_theta" in doc.get("data", {}):
            at(range(doc["seq_num"], doc["seq_num"] + 1))
        elif name == "stream_datum" and doc["descriptor"] in primary:
            at(range(doc["seq_nums"]["start"], doc["seq_nums"]["stop"]))

    return inject


#: Flags that disqualify a frame from the reconstruction when a better frame of its angle exists.
_BAD = ("beam_lost", "dead_pixels", "nonfinite", "saturated")


_POLICIES = ("block", "adaptive")


def _networks(run: Any, key: str) -> dict[str, int]:
    """How many projections each network denoised (its ``_model`` column; empty: not denoised)."""
    names = [str(n) or "(not denoised)" for n in run["denoised"][f"{key}_model"].read()]
    return {name: names.count(name) for name in dict.fromkeys(names)}


def _best_rows(run: Any, key: str, angles: np.ndarray) -> tuple[list[int], np.ndarray]:
    """The primary rows to reconstruct and their angles: for each angle, the last row without a disqualifying QC
    flag (else its last row); a fly scan's rows without such a flag (retaken frames, with their captured angles,
    are rows of their own after the first flight's)."""
    flags = [set(str(f).split(",")) for f in run["denoised"][f"{key}_qc_flags"].read()]
    if "stage_theta" not in run["primary"]:
        good = [i for i in range(len(angles)) if not set(_BAD) & flags[i]]
        return good, np.asarray(angles)[good]
    theta = np.asarray(run["primary"]["stage_theta"].read(), float)
    rows = []
    for a in angles:
        mine = [i for i in range(len(theta)) if abs(theta[i] - a) < 1e-6]
        good = [i for i in mine if not set(_BAD) & flags[i]]
        rows.append((good or mine)[-1])
    return rows, np.asarray(angles)


def _evaluate(run: Any, det: Any, key: str, angles: np.ndarray, photons: float, blur: float = 0.0,
              planned: int | None = None) -> dict[str, Any]:
    """Metrics read back from Tiled: one projection; the middle slice from the raw frames, and as reconstructed
    (and denoised) live; the stripe metric of the raw and the denoised sinogram. ``det`` is the camera's physics
    (:class:`~bluesky_tomogan.devices.SimTomoDetector`), ``key`` its frames' data key, ``angles`` those of the
    primary rows, ``blur`` the degrees a fly scan's sample turns in one exposure (its noise-free projection is
    their mean), ``planned`` the scan's projections (the first ``planned`` angles; the rows after them are
    retakes: the noise-free slice is of the planned ones)."""
    from .reconstruction import centered, corrected_sinogram, reconstruct, stripe_metric

    size = det.frame_shape[1]
    rows, used = _best_rows(run, key, angles)
    # the projection shown: a third of the way in, or the next one QC raised nothing on (a fly scan without a
    # capture cannot take again the frames it took without beam, and the frames beside those lack good neighbours)
    flags = [str(f) for f in run["denoised"][f"{key}_qc_flags"].read()]
    planned = len(angles) if planned is None else planned
    k = next((i for i, row in enumerate(rows) if row >= planned // 3 and not flags[row]), len(rows) // 3)
    z = size // 2
    raw = stored_frames(run["primary"][key])  # the detector declares [1, H, W] an event, as ophyd-async's do
    raw_k = raw[rows[k]].astype(np.float32)
    den_k = run["denoised"][f"{key}_denoised"][rows[k]]
    dark_level = det.model.dark_level
    turned = [float(used[k]) + blur * t for t in (-0.5, 0.0, 0.5)] if blur else [float(used[k])]
    transmission_k = np.mean([np.exp(-det.sample.line_integrals(a)) for a in turned], axis=0)
    clean_k = photons * det.gain * transmission_k + dark_level
    flat = stored_frames(run["flat"][key])[:, z, :].astype(np.float32).mean(0)
    flat_den = run["flat_denoised"][f"{key}_denoised"][:, z, :].mean(0)
    dark = stored_frames(run["dark"][key])[:, z, :].astype(np.float32).mean(0)
    raw_t = corrected_sinogram(raw[:, z, :].astype(np.float32)[rows], flat, dark)
    den_t = corrected_sinogram(run["denoised"][f"{key}_denoised"][:, z, :][rows], flat_den, dark)
    live = run["reconstruction"]
    last = [i for i, (r, f) in enumerate(zip(live["row"].read(), live["final"].read(), strict=True)) if f and r == z]
    center = float(live["center"].read()[last[-1]])
    # the slices of an offset axis over a full turn span the doubled field of view: so do the ones compared
    extend = live["slice"][last[-1]].shape[-1] > size
    rec = {"raw": reconstruct(raw_t, used, center, remove_stripes=False, extend=extend).slice,
           "fbp": live["slice_fbp"][last[-1]], "live": live["slice"][last[-1]],
           # the noise-free slice reconstructed as the live one is (algotom, Hann filter) about the simulated axis
           # (line integrals' u = 0). Until session 71 scikit-image's FBP, whose axis is column n // 2: its
           # slice matched algotom's about 256.3 px, not the axis at 255.5, and rewarded centres that far off
           "clean": reconstruct(np.exp(-det.sample.sinogram(z, angles[:planned])), angles[:planned],
                                (det.sample.shape[1] - 1) / 2 + det.sample.shift[0], remove_stripes=False,
                                extend=extend).slice}
    shape = rec["live"].shape  # a doubled view about a centre a little off is a column wider or narrower
    rec = {name: image if image.shape == shape else centered(image, shape) for name, image in rec.items()}
    stripes = {"raw": -np.log(raw_t), "denoised": -np.log(den_t)}
    # the denoised projections divided by the raw flats: how much of the stripe the flats' noise makes
    den_raw_flats = -np.log(corrected_sinogram(run["denoised"][f"{key}_denoised"][:, z, :][rows], flat, dark))
    latency = np.asarray(run["denoised"][f"{key}_qc_latency_s"].read())
    return {
        "frame_psnr_raw": psnr(clean_k, raw_k), "frame_psnr_denoised": psnr(clean_k, den_k),
        "frame_ssim_raw": ssim(clean_k, raw_k), "frame_ssim_denoised": ssim(clean_k, den_k),
        "slice_ssim_raw": ssim(rec["clean"], rec["raw"]), "slice_ssim_denoised": ssim(rec["clean"], rec["fbp"]),
        "slice_ssim_live": ssim(rec["clean"], rec["live"]), "center": center,
        "stripe_raw": stripe_metric(stripes["raw"]), "stripe_denoised": stripe_metric(stripes["denoised"]),
        "stripe_denoised_raw_flats": stripe_metric(den_raw_flats),
        "latency_median_s": float(np.median(latency)), "latency_p99_s": float(np.percentile(latency, 99)),
        "_panels": {"k": rows[k], "raw": raw_k, "denoised": den_k, "clean": clean_k, "rec": rec, "stripes": stripes},
    }


def _qc_timeline(run: Any, key: str) -> dict[str, Any]:
    """QC flags per derived row (seconds from the start) and the suspensions, read back from Tiled."""
    t0 = float(run.metadata["start"]["time"])
    times = np.asarray(run["denoised"]["time"].read(), float) - t0
    flags = [str(f) for f in run["denoised"][f"{key}_qc_flags"].read()]
    raised = [(float(t), flag) for t, fs in zip(times, flags, strict=True) for flag in fs.split(",") if flag]
    # bluesky records when a suspension starts (its justification) and when a pause is resumed, not
    # when a suspension ends: that is when the scan takes its next projection (a fly scan's frames have no
    # time of their own in the run: their denoised rows' times stand in).
    taken = run["primary"]["time"].read() if "time" in run["primary"] else run["denoised"]["time"].read()
    frames = np.sort(np.asarray(taken, float) - t0)
    end = float(max(times.max() if len(times) else 0.0, frames.max() if len(frames) else 0.0, 1e-3))
    spans: list[tuple[float, float, str]] = []
    try:  # the stream exists from the start of a run that records interruptions, its columns from the first
        what = [str(v) for v in run["interruptions"]["interruption"].read()]
        when = np.asarray(run["interruptions"]["time"].read(), float) - t0
    except KeyError:
        what, when = [], np.zeros(0)
    if what:
        for i, (t, w) in enumerate(zip(when, what, strict=True)):
            if w == "resume":
                continue
            later = [u for u, x in zip(when[i + 1 :], what[i + 1 :], strict=True) if x == "resume"]
            after = frames[frames > t]
            stop = later[0] if w == "pause" and later else (after[0] if len(after) else end)
            spans.append((float(t), float(stop), w))
    return {"flags": raised, "suspensions": spans, "end": end}


def _figure(path: Path, p: dict[str, Any], den: Any, m: dict[str, Any], timeline: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(17, 11), constrained_layout=True)
    grid = fig.add_gridspec(3, 4, height_ratios=[1, 1, 0.55])
    ax = np.array([[fig.add_subplot(grid[r, c]) for c in range(4)] for r in range(2)])
    lo, hi = np.percentile(p["clean"], [0.5, 99.5])
    slo, shi = np.percentile(p["rec"]["clean"], [0.5, 99.5])
    panels = [
        (p["raw"], f"raw projection {p['k']} (PSNR {m['frame_psnr_raw']:.1f} dB)", (lo, hi)),
        (p["denoised"], f"denoised (PSNR {m['frame_psnr_denoised']:.1f} dB)", (lo, hi)),
        (p["raw"] - p["denoised"], "raw - denoised (removed noise)", None),
        (p["rec"]["clean"], "slice from noise-free projections", (slo, shi)),
        (p["rec"]["raw"], f"FBP of raw (SSIM {m['slice_ssim_raw']:.3f})", (slo, shi)),
        (p["rec"]["fbp"], f"live: FBP of denoised (SSIM {m['slice_ssim_denoised']:.3f})", (slo, shi)),
        (p["rec"]["live"], f"live: + slice model (SSIM {m['slice_ssim_live']:.3f})", (slo, shi)),
    ]
    for a, (img, title, lim) in zip(list(ax.ravel()[:7]), panels, strict=True):
        a.imshow(img, cmap="gray", vmin=None if lim is None else lim[0], vmax=None if lim is None else lim[1])
        a.set_title(title, fontsize=10)
        a.axis("off")
    _draw_stripes(ax[1, 3], p["stripes"], m)
    _draw_timeline(fig.add_subplot(grid[2, :]), timeline)
    runs = ("adaptive ladder" if hasattr(den, "ladder") else f"on {den.backend}/{den.precision}")
    fig.suptitle(f"bluesky-tomogan demo: live {m['plan']}, {den.model_name} {runs}, "
                 f"median latency {m['latency_median_s'] * 1e3:.0f} ms/frame")
    try:
        fig.savefig(path, dpi=90)
    except OSError as exc:
        raise OutputPathError(f"cannot write the figure {path}: {exc}") from exc
    finally:
        plt.close(fig)


def _draw_timeline(ax: Any, timeline: dict[str, Any]) -> None:
    """QC flags over the scan, one row per flag, and the suspensions as shaded spans."""
    from .qc.policy import FLAGS

    names = list(FLAGS)
    for t, flag in timeline["flags"]:
        ax.plot(t, names.index(flag), "|", color="tab:red", markersize=12)
    for start, stop, _ in timeline["suspensions"]:
        ax.axvspan(start, stop, color="tab:orange", alpha=0.3)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_ylim(-0.5, len(names) - 0.5)
    ax.set_xlim(0, max(timeline["end"], 1e-3))
    ax.set_xlabel("seconds since the start of the run")
    ax.set_title(f"QC timeline: {len(timeline['flags'])} flags raised (red), "
                 f"{len(timeline['suspensions'])} interruptions (orange: suspended or paused)",
                 fontsize=10)


def _draw_stripes(ax: Any, sinograms: dict[str, np.ndarray], m: dict[str, Any]) -> None:
    """Column means of the raw and the denoised sinogram minus their local median: stripes, i.e. rings."""
    from scipy.ndimage import median_filter

    from .reconstruction import STRIPE_WINDOW

    for name, sino in sinograms.items():
        means = sino.mean(axis=0)
        ax.plot(means - median_filter(means, size=STRIPE_WINDOW, mode="nearest"), lw=0.8,
                label=f"{name} ({m['stripe_' + name]:.4f})")
    ax.set_title("stripes: column mean minus local median", fontsize=10)
    ax.set_xlabel("detector column")
    ax.legend(fontsize=8)
