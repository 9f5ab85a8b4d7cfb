"""bluesky-tomogan beamline session: a simulated tomography beamline with live denoising.

Start it with ``ipython --profile-dir=profiles/profile_tomogan`` (from a checkout)
or copy ``profile_tomogan`` into ``~/.ipython/``. Settings come from the
environment:

TOMOGAN_DATA       embedded store directory (default ~/tomogan-data)
TOMOGAN_TILED_URI  use this Tiled server instead of the embedded one
                   (it must be able to read TOMOGAN_DATA/frames)
TOMOGAN_TILED_BATCH  rows the TiledWriter gathers before it writes them (default: bluesky-tiled-plugins' 10,000,
                   the rest at each run's stop); 1 stores each row as it comes, so `bluesky-tomogan view --tiled`
                   shows a run while it runs (a request a row on the RunEngine's thread: docs/callback.md)
TOMOGAN_BACKEND    denoiser backend (default auto)
TOMOGAN_MODEL      projection model: a name (`bluesky-tomogan models` lists them), a model card or
                   its directory (default tomogan-projection)
TOMOGAN_SLICE_MODEL  slice model of the live reconstruction, the same way (default tomogan-slice)
TOMOGAN_FRAME_DTYPE  how denoised frames are stored: float32 (default), source (the detector's counts), ...
TOMOGAN_COMPRESSION  lossless compression of each denoised frame: lz4, zstd or gzip (default none)
TOMOGAN_QC_POLICY  a QC policy file (TOML, see docs/qc.md; default: the built-in policy)
TOMOGAN_ANGLE_FIELD  the data key of each frame's angle where it is not the plan's motor: a fly scan's
                   encoder capture written beside the frames (default panda-inenc-1-val, the simulated
                   PandA's; step scans keep their motor's angles)
"""

import os

import bluesky.plan_stubs as bps  # noqa: F401  (for the user)
import bluesky.plans as bp  # noqa: F401
import numpy as np  # noqa: F401
from bluesky import RunEngine
from bluesky.suspenders import SuspendFloor
from bluesky_tiled_plugins import TiledWriter

from bluesky_tomogan import TomoGANCallback, TomoReconstruction, load_denoiser
from bluesky_tomogan.callbacks import LiveDenoisedView, LiveSliceView, LiveViewDuringTask, ScanProgress
from bluesky_tomogan.callbacks.live_view import shows_windows
from bluesky_tomogan.devices import QCMonitor, SimBeamCurrent, SimTomoDetector, SimTomoStage
from bluesky_tomogan.plans import (  # noqa: F401
    qc_tomo_scan,
    qc_tomo_scan_with,
    tomo_fly_scan,
    tomo_fly_scan_with,
    tomo_scan,
)
from bluesky_tomogan.qc import QCFeedback, QCPolicy
from bluesky_tomogan.reprocess import reprocess  # noqa: F401  (a stored run denoised afterwards)
from bluesky_tomogan.storage import frames_directory, local_tiled, server_of  # noqa: F401

DATA = os.path.expanduser(os.environ.get("TOMOGAN_DATA", "~/tomogan-data"))
if os.environ.get("TOMOGAN_TILED_URI"):
    from tiled.client import from_uri

    client = from_uri(os.environ["TOMOGAN_TILED_URI"])
else:
    client = local_tiled(DATA)

# Tk, GTK or wx windows of the live views are drawn by the main thread while a plan runs (with Qt: as bluesky does)
RE = RunEngine({}, during_task=LiveViewDuringTask())
RE.record_interruptions = True  # suspensions and pauses become an "interruptions" stream of the run

stage = SimTomoStage(name="stage")
ring_current = SimBeamCurrent(name="ring_current")
det = SimTomoDetector(name="det", stage=stage, beam=ring_current, shape=(512, 512),
                      directory=frames_directory(DATA) / "raw")
det.exposure_time.put(0.05)
det.photon_flux.put(1e4)  # 500 photons per pixel per frame: low dose

# A fly-scan beamline too, in ophyd-async (the `fly` extra): tomo_fly_scan turns `rot` at constant speed while
# `fly_det` takes a frame every exposure. Its devices connect in the RunEngine's event loop, so after RE.
try:
    from ophyd_async.core import init_devices, soft_signal_rw
    from ophyd_async.sim import SimMotor

    from bluesky_tomogan.devices.fly import SimFlyRotation, SimFlyTomoDetector, SimPositionCapture
except ImportError as exc:  # ophyd-async missing, or older than the simulated beamline needs
    FLY = f"no fly-scan devices ({exc}; pip install 'bluesky-tomogan[fly]')"
else:
    with init_devices():
        rot = SimFlyRotation(name="rot")
        sample_x = SimMotor(name="sample_x")
        shutter = soft_signal_rw(str, "open", name="shutter")
        fly_det = SimFlyTomoDetector(frames_directory(DATA) / "raw", rot, sample_x, shutter, shape=(512, 512),
                                     photon_flux=1e4, beam=ring_current, name="fly_det")
        # a PandA's encoder capture: each frame's angle, written beside the frames (tomo_fly_scan(capture=[panda]))
        panda = SimPositionCapture(frames_directory(DATA) / "raw", fly_det, name="panda")
    FLY = ("fly_det (ophyd-async camera, 512x512), rot, sample_x, shutter, panda (position capture): "
           "tomo_fly_scan")

# QC: flags on the QC monitor's signals, suspenders on the "suspend" flags. beam_lost clears from the
# ring current, which keeps updating while the scan is suspended (no frames are taken then).
if os.environ.get("TOMOGAN_QC_POLICY"):
    policy = QCPolicy.from_file(os.environ["TOMOGAN_QC_POLICY"])
else:
    policy = QCPolicy()  # the camera's dark level from each run's darks (tomo_scan's "dark" stream)
qc = QCMonitor(name="qc", beam=ring_current, beam_ok=100)
feedback = QCFeedback(policy, monitor=qc, RE=RE)
feedback.install_suspenders(RE, sleep=1)
# qc_tomo_scan with this session's feedback: the plan to queue (a queued item cannot name the feedback object)
tomo_scan_with_qc = qc_tomo_scan_with(feedback)
# tomo_fly_scan with it: flies again over the projections QC found unusable (needs capture=[panda])
fly_scan_with_qc = tomo_fly_scan_with(feedback)

BACKEND = os.environ.get("TOMOGAN_BACKEND", "auto")
denoiser = load_denoiser(os.environ.get("TOMOGAN_MODEL") or None, backend=BACKEND)
# each frame's angle where the scan captures it (a fly scan's PandA); step scans still take theirs from the motor
ANGLE_FIELD = os.environ.get("TOMOGAN_ANGLE_FIELD") or "panda-inenc-1-val"
# Flats are denoised too: their noise is otherwise the strongest stripe (ring) in the live slices.
tomogan = TomoGANCallback(denoiser, streams=["primary", "flat"], directory=frames_directory(DATA),
                          feedback=feedback, frame_dtype=os.environ.get("TOMOGAN_FRAME_DTYPE") or "float32",
                          compression=os.environ.get("TOMOGAN_COMPRESSION") or None, angle_field=ANGLE_FIELD)
# Three slices reconstructed with algotom and denoised with the slice model, every 30 projections and at the end
# (the final one finishes a second or two after RE returns; reconstruction.wait() waits for it).
reconstruction = TomoReconstruction(load_denoiser(os.environ.get("TOMOGAN_SLICE_MODEL") or "tomogan-slice",
                                                  backend=BACKEND), every=30, directory=frames_directory(DATA),
                                   angle_field=ANGLE_FIELD)
tomogan.subscribe(reconstruction)
try:  # 0 or unset: the writer's own batch (rows written at each stop); 1: each row as it comes
    TILED_BATCH = int(os.environ.get("TOMOGAN_TILED_BATCH") or 0)
    if TILED_BATCH < 0:
        raise ValueError
except ValueError:
    raise SystemExit(f"TOMOGAN_TILED_BATCH={os.environ['TOMOGAN_TILED_BATCH']!r}: give a whole number of rows, "
                     "1 to store each row as it comes, 0 for the writer's default") from None
reconstruction.subscribe(TiledWriter(client, **({"batch_size": TILED_BATCH} if TILED_BATCH else {})))
RE.subscribe(tomogan)
RE.subscribe(ScanProgress())
# The newest denoised projection beside its raw one, with its QC flags, in a window: where this session can
# show one (not in a queue server's worker, nor without a display). A view made before `%matplotlib qt` would
# draw from the RunEngine's thread, which Qt forbids: after it, subscribe a new one (the banner says how).
live_view, slice_view = LiveDenoisedView(), LiveSliceView()  # the second: the newest middle slice, live
LIVE_VIEW_SHOWN = shows_windows()
if LIVE_VIEW_SHOWN:
    tomogan.subscribe(live_view)
    reconstruction.subscribe(slice_view)
# No beam, no data worth taking: suspend below 50 mA, resume 5 s after it is back.
RE.install_suspender(SuspendFloor(ring_current, 50, resume_thresh=100, sleep=5))

print(f"""bluesky-tomogan session
  storage   client  ({'Tiled at ' + os.environ['TOMOGAN_TILED_URI'] if 'TOMOGAN_TILED_URI' in os.environ
                      else 'embedded Tiled in ' + DATA}; {'each row stored as it comes' if TILED_BATCH == 1
                      else 'rows stored at each stop' if not TILED_BATCH else f'rows stored {TILED_BATCH} at a time'}){
            '' if 'TOMOGAN_TILED_URI' in os.environ else chr(10) + 12 * ' ' + 'other processes '
            '(bluesky-tomogan view --tiled URI) reach it at server_of(client).uri'}
  devices   det (simulated camera, {det.frame_shape[0]}x{det.frame_shape[1]}), stage.theta / stage.x, ring_current
            {FLY}
  denoiser  {denoiser!r}, subscribed as `tomogan` (policy block)
  live      `reconstruction`: 3 slices, algotom + slice model, every 30 projections
            `live_view`, `slice_view`: the newest raw and denoised frame, the newest slice, {'in windows'
                if LIVE_VIEW_SHOWN else 'not shown (no window here; %matplotlib qt, then '
                'tomogan.subscribe(LiveDenoisedView()), reconstruction.subscribe(LiveSliceView()))'}
  QC        qc (QCMonitor; suspenders on {', '.join(f for f, r in policy.rules.items() if r.action == 'suspend')}),
            feedback (QCFeedback), interruptions recorded
  try       uid, = RE(tomo_scan(det, stage, np.linspace(0, 180, 90, endpoint=False)))
            client[uid]["denoised"]["det_image_denoised"][0]
            reconstruction.wait(); client[uid]["reconstruction"]["slice"][-2]  # the middle slice, live
            ring_current.dump(10)                     # lose the beam: the scan suspends
            det.inject_fault("saturation", frames=3)  # or "beam_dump", "motion"
            uid, = RE(qc_tomo_scan(det, stage, np.linspace(0, 180, 90, endpoint=False), feedback))
            client[uid]["qc_actions"].read()          # what the adaptive scan decided, and why
            reconstruction.wait()                     # the run is stored whole once its final slices are
            reprocess(client, uid, load_denoiser("tomogan-projection-light"))  # again: a denoised_2 stream
            reprocess(client, uid, load_denoiser(self_ensemble=8), into="new",  # 8 turned copies averaged:
                      reconstruct=load_denoiser("tomogan-slice", self_ensemble=8))  # 8x the time, a new run
            (queue server: BPlan("tomo_scan_with_qc", "det", "stage", angles) is the same scan)
            uid, = RE(tomo_fly_scan(fly_det, rot, 0, 180, 90, exposure=0.05, shutter=shutter, sample_x=sample_x,
                                    capture=[panda]))  # each frame's angle captured (angle_field {ANGLE_FIELD})
            (fly_scan_with_qc(...): the same, flying again over the frames QC found unusable; queue it by name)
""")
