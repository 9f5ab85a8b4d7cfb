"""bluesky-tomogan beamline session: a simulated tomography beamline with live denoising.

Start it with ``ipython --profile-dir=profiles/profile_tomogan`` (from a checkout)
or copy ``profile_tomogan`` into ``~/.ipython/``. Settings come from the
environment:

TOMOGAN_DATA       embedded store directory (default ~/tomogan-data)
TOMOGAN_TILED_URI  use this Tiled server instead of the embedded one
                   (it must be able to read TOMOGAN_DATA/frames)
TOMOGAN_BACKEND    denoiser backend (default auto)
"""

import os

import bluesky.plan_stubs as bps  # noqa: F401  (for the user)
import bluesky.plans as bp  # noqa: F401
import numpy as np  # noqa: F401
from bluesky import RunEngine
from bluesky.callbacks.tiled_writer import TiledWriter
from bluesky.suspenders import SuspendFloor

from bluesky_tomogan import TomoGANCallback, load_denoiser
from bluesky_tomogan.callbacks import ScanProgress
from bluesky_tomogan.devices import SimBeamCurrent, SimTomoDetector, SimTomoStage
from bluesky_tomogan.plans import tomo_scan  # noqa: F401
from bluesky_tomogan.storage import frames_directory, local_tiled

DATA = os.path.expanduser(os.environ.get("TOMOGAN_DATA", "~/tomogan-data"))
if os.environ.get("TOMOGAN_TILED_URI"):
    from tiled.client import from_uri

    client = from_uri(os.environ["TOMOGAN_TILED_URI"])
else:
    client = local_tiled(DATA)

RE = RunEngine({})

stage = SimTomoStage(name="stage")
ring_current = SimBeamCurrent(name="ring_current")
det = SimTomoDetector(name="det", stage=stage, beam=ring_current, shape=(512, 512),
                      directory=frames_directory(DATA) / "raw")
det.exposure_time.put(0.05)
det.photon_flux.put(1e4)  # 500 photons per pixel per frame: low dose

denoiser = load_denoiser(backend=os.environ.get("TOMOGAN_BACKEND", "auto"))
tomogan = TomoGANCallback(denoiser, streams=["primary"], directory=frames_directory(DATA))
tomogan.subscribe(TiledWriter(client))
RE.subscribe(tomogan)
RE.subscribe(ScanProgress())
# No beam, no data worth taking: pause below 50 mA, resume 5 s after it is back.
RE.install_suspender(SuspendFloor(ring_current, 50, resume_thresh=100, sleep=5))

print(f"""bluesky-tomogan session
  storage   client  ({'Tiled at ' + os.environ['TOMOGAN_TILED_URI'] if 'TOMOGAN_TILED_URI' in os.environ
                      else 'embedded Tiled in ' + DATA})
  devices   det (simulated camera, {det.frame_shape[0]}x{det.frame_shape[1]}), stage.theta / stage.x, ring_current
  denoiser  {denoiser!r}, subscribed as `tomogan` (policy block)
  try       uid, = RE(tomo_scan(det, stage, np.linspace(0, 180, 90, endpoint=False)))
            client[uid]["denoised"]["det_image_denoised"][0]
            ring_current.dump(10)                     # lose the beam: the scan suspends
            det.inject_fault("saturation", frames=3)  # or "beam_dump", "motion"
""")
