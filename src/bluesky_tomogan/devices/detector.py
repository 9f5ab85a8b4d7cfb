"""``SimTomoDetector``: a simulated tomography camera that writes its frames to HDF5, like a real one.

An ophyd v1 device. Each ``trigger`` exposes one frame of an analytic bead-pack
sample (:class:`~bluesky_tomogan.simulate.spheres.SpherePack`) at the current
angle of a rotation stage: Beer-Lambert attenuation of a flat field scaled by
exposure time, photon flux and ring current, Poisson photon noise, dark
offset and read noise, saturation at the top of ``uint16``. A closed shutter
gives dark frames; the sample moved out of the beam gives flat frames. In
``slice`` mode each trigger returns the next reconstructed slice (filtered
back-projection of a low-dose sinogram), as a reconstruction pipeline would.

Frames go to an HDF5 file (:class:`~bluesky_tomogan.hdf5_frames.FrameFile`)
and are announced, as ophyd-async detectors do, by ``StreamResource`` and
``StreamDatum`` documents (data key ``external: "STREAM:"``, shape
``[1, H, W]``); ``asset_mode="resource"`` uses the legacy ``Resource``/``Datum``
documents of ophyd v1 area detectors instead. The frames never travel inside
events, so the same plans, callbacks and TiledWriter work as with hardware.
Each staging opens a new file with its own StreamResource. A StreamResource
belongs to one stream, so a run with several streams (darks, flats,
projections) stages the detector once per stream, as
:func:`~bluesky_tomogan.plans.tomo_scan` does.

Faults for tests and demos are injected with :meth:`SimTomoDetector.inject_fault`.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import event_model
import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, DeviceStatus, Signal
from ophyd.sim import SynAxis

from ..hdf5_frames import MIMETYPE, SPEC, FrameFile
from ..simulate.spheres import SpherePack
from ..simulate.tomography import DetectorModel, add_zingers, angles_deg, expose, fbp, flat_field_correct, gain_pattern

__all__ = ["SimTomoDetector", "SimTomoStage", "SimBeamCurrent", "FAULTS"]

log = logging.getLogger(__name__)

FAULTS = ("beam_dump", "saturation", "nan", "motion")
_UINT16_MAX = 65535


class SimBeamCurrent(Signal):
    """Storage-ring current in mA (a soft signal); :meth:`dump` loses the beam for a while.

    The detector's flux scales with it. Suspenders watch it as they watch the
    real PV, e.g. ``RE.install_suspender(SuspendFloor(ring_current, 50, resume_thresh=100))``.
    """

    def __init__(self, *, name: str = "ring_current", nominal: float = 200.0, **kwargs: Any) -> None:
        super().__init__(name=name, value=nominal, kind=kwargs.pop("kind", "hinted"), **kwargs)
        self.nominal = nominal
        self._refill: threading.Timer | None = None

    def dump(self, seconds: float) -> None:
        """Lose the beam now (0 mA) and get it back at nominal current after ``seconds``."""
        if self._refill is not None:
            self._refill.cancel()
        self.put(0.0)
        self._refill = threading.Timer(seconds, self.put, args=(self.nominal,))
        self._refill.daemon = True
        self._refill.start()

    def describe(self) -> OrderedDict:
        out = super().describe()
        out[self.name]["units"] = "mA"
        return out


class SimTomoStage(Device):
    """Rotation stage (``theta``, degrees) on a translation (``x``, mm) that moves the sample out for flats."""

    theta = Cpt(SynAxis, egu="deg", kind="hinted")
    x = Cpt(SynAxis, egu="mm", kind="normal")

    #: ``x`` position (mm) that takes the sample out of the beam.
    OUT = 10.0


class SimTomoDetector(Device):
    """Simulated tomography camera (projection or slice mode) writing frames to HDF5.

    Parameters
    ----------
    name : str
        Device name; the image data key is ``<name>_image``.
    stage : SimTomoStage, optional
        Where the angle (``theta``) and sample position (``x``) come from
        (default: a sample fixed at 0 degrees, in the beam).
    beam : SimBeamCurrent, optional
        Ring current scaling the flux (default: constant nominal current).
    mode : {"projection", "slice"}
        ``projection``: raw counts ``uint16`` of shape ``shape``.
        ``slice``: reconstructed slices ``float32`` of shape ``(width, width)``
        (a reconstruction is signed and fractional, so it is not stored as counts).
    shape : tuple of int
        Detector ``(height, width)``.
    directory : path-like, optional
        Where the HDF5 files go (default: a ``bluesky-tomogan`` folder in the
        system temporary directory). A Tiled server must be allowed to read it.
    asset_mode : {"stream", "resource"}
        ``StreamResource``/``StreamDatum`` (ophyd-async style, default) or
        legacy ``Resource``/``Datum`` (spec ``"hdf5"``, datum ``{"frame": i}``).
    dtype : str, optional
        Stored dtype of projections: ``uint16`` (default) or ``float32``
        (needed to inject the ``nan`` fault).
    seed : int
        Seed of the sample, the flat-field pattern and the noise.
    simulate_timing : bool
        A trigger takes the exposure time, as on a real camera. The frame is
        simulated during that time, so the simulation's own CPU cost only shows
        when it exceeds the exposure.
    exposures : int
        Frames per trigger (ophyd-async's ``exposures_per_event``): the image data key
        is ``[exposures, H, W]``, the frames are written one after the other and each
        event's ``StreamDatum`` covers one index. ``stream`` asset mode only.
    hot_pixels, dead_pixels : float
        Fractions of the pixels that are hot (stuck at 65535) or dead (0) in every frame,
        darks and flats included: an ageing camera's defects, a fixed map drawn from
        ``seed``. Projection mode only; below 0.1 each.
    zingers : float
        Probability per pixel and frame of a zinger (X-rays scattered into the scintillator: a
        speck of 1-2 pixels, 3-30x the open beam's photons; none in dark frames), new in every
        frame (``simulate.tomography.add_zingers``). Projection mode only; below 0.1.
    blur : float
        The camera's point-spread function, a Gaussian's sigma in pixels (a scintillator's and its
        optics' blur), which spreads each photon's light, and so its noise, over neighbouring pixels
        (``simulate.tomography.DetectorModel.psf_sigma``); 0: none.
    sample_width : float
        The sample's width in fields of view, 1 to 4 (default 1: a bead pack the camera sees whole, with
        open beam beside it). Above 1 the camera sees the middle of a wider pack at every angle (local
        tomography): its reconstructed slices fill the reconstruction circle and rise towards its rim
        (docs/models.md, "The rim of a sample wider than the field of view").
    axis_offset : float
        Where the rotation axis projects, in pixels right of the detector's middle (default 0; negative: left).
        With ``sample_width`` about 2 and an offset near half the width, a scan over a full turn sees each half
        of the sample on one side of the axis: an offset-axis (half-acquisition) scan, which doubles the field
        of view (docs/callback.md, "An offset axis").

    Attributes
    ----------
    sample : SpherePack
        The sample in the beam.
    gain : numpy.ndarray
        Flat-field pattern (beam profile times optics), mean about 0.9.
    hot_map, dead_map : numpy.ndarray
        Where the hot and dead pixels are (boolean, the frame's shape).
    """

    exposure_time = Cpt(Signal, value=0.01, kind="config")
    photon_flux = Cpt(Signal, value=5e4, kind="config")  # photons / pixel / s, open beam, nominal current
    shutter = Cpt(Signal, value="open", kind="config")  # "open" | "closed"
    slice_index = Cpt(Signal, value=0, kind="config")  # next slice (slice mode)
    slice_angles = Cpt(Signal, value=180, kind="config")  # projections per reconstructed slice (slice mode)

    def __init__(
        self,
        *,
        name: str,
        stage: SimTomoStage | None = None,
        beam: SimBeamCurrent | None = None,
        mode: Literal["projection", "slice"] = "projection",
        shape: tuple[int, int] = (256, 256),
        directory: str | os.PathLike[str] | None = None,
        asset_mode: Literal["stream", "resource"] = "stream",
        dtype: str | None = None,
        seed: int = 0,
        simulate_timing: bool = True,
        exposures: int = 1,
        hot_pixels: float = 0.0,
        dead_pixels: float = 0.0,
        zingers: float = 0.0,
        blur: float = 0.0,
        sample_width: float = 1.0,
        axis_offset: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        for what, fraction in (("hot_pixels", hot_pixels), ("dead_pixels", dead_pixels), ("zingers", zingers)):
            if not 0 <= fraction < 0.1:
                raise ValueError(f"{what} is a fraction of the pixels in [0, 0.1), got {fraction}")
        if (hot_pixels or dead_pixels or zingers) and mode != "projection":
            raise ValueError("hot and dead pixels and zingers are the camera's: projection mode only")
        if mode not in ("projection", "slice"):
            raise ValueError(f"mode must be 'projection' or 'slice', got {mode!r}")
        if asset_mode not in ("stream", "resource"):
            raise ValueError(f"asset_mode must be 'stream' or 'resource', got {asset_mode!r}")
        if int(exposures) < 1 or (int(exposures) > 1 and asset_mode != "stream"):
            raise ValueError(f"exposures must be >= 1, and 1 with asset_mode {asset_mode!r}; got {exposures}")
        self.exposures = int(exposures)
        h, w = (int(s) for s in shape)
        if h < 8 or w < 8:
            raise ValueError(f"shape must be at least 8x8, got {shape}")
        self.mode = mode
        self.asset_mode = asset_mode
        self.sample_stage = stage
        self.beam = beam
        self.frame_shape = (w, w) if mode == "slice" else (h, w)
        self.dtype = np.dtype(dtype or ("float32" if mode == "slice" else "uint16"))
        if mode == "projection" and self.dtype not in (np.uint16, np.float32):
            raise ValueError(f"projection frames are uint16 or float32, got {self.dtype}")
        self.directory = Path(directory or Path(tempfile.gettempdir()) / "bluesky-tomogan").expanduser()
        self.simulate_timing = simulate_timing
        if not 0 <= blur <= 10:
            raise ValueError(f"blur is a Gaussian's sigma in pixels in [0, 10], got {blur}")
        # dark level, read noise and blur; the dose is set per frame
        self.model = DetectorModel(photons=1.0, psf_sigma=float(blur))
        if not math.isfinite(axis_offset) or abs(axis_offset) >= w / 2:
            raise ValueError(f"axis_offset must put the axis on the detector (|offset| < {w / 2:g} px), got "
                             f"{axis_offset}")
        self.sample = SpherePack.random((h, w), seed, width=sample_width)
        if axis_offset:
            self.sample = self.sample.moved(float(axis_offset))
        self._last_attenuation: tuple[SpherePack, float, np.ndarray] | None = None
        self._rng = np.random.default_rng(seed + 1)
        self.gain = gain_pattern((h, w), self.model.gain_variation, np.random.default_rng(seed + 2))
        # the camera's own defects: the same pixels in every frame, darks and flats included (a stream of
        # their own, so that a detector without them gives the frames it gave before they existed)
        defects = np.random.default_rng(seed + 3).random((h, w)) if hot_pixels or dead_pixels else np.ones((h, w))
        self.hot_map = defects < hot_pixels
        self.dead_map = (defects >= hot_pixels) & (defects < hot_pixels + dead_pixels)
        self.zingers = float(zingers)
        self._zinger_rng = np.random.default_rng(seed + 4)  # its own: a camera without zingers gives the same frames
        self._faults: dict[str, int] = {}
        self._file: FrameFile | None = None
        self._pending: list[tuple[str, dict[str, Any]]] = []
        self._compose_datum: Any = None
        self._last_datum: str | None = None
        self._lock = threading.Lock()

    # -- ophyd interface ---------------------------------------------------------------------

    @property
    def image_key(self) -> str:
        return f"{self.name}_image"

    def describe(self) -> OrderedDict:
        out = super().describe()
        h, w = self.frame_shape
        stream = self.asset_mode == "stream"
        out[self.image_key] = {
            "source": f"SIM:{self.name}:image", "dtype": "array", "dtype_numpy": self.dtype.str,
            "shape": [self.exposures, h, w], "external": "STREAM:" if stream else "FILESTORE:",
        }
        return out

    def read(self) -> OrderedDict:
        out = super().read()
        if self.asset_mode == "resource" and self._last_datum is not None:
            out[self.image_key] = {"value": self._last_datum, "timestamp": time.time()}
        return out  # stream mode: the frame is announced by a StreamDatum, not in the event

    def stage(self) -> list[Any]:
        path = self.directory / f"{self.name}_{uuid.uuid4().hex[:12]}.h5"
        self._file = FrameFile(path, self.frame_shape, self.dtype)
        self._pending = []
        if self.asset_mode == "stream":
            stream = event_model.compose_stream_resource(
                mimetype=MIMETYPE, uri=self._file.uri, data_key=self.image_key,
                parameters={"dataset": self._file.dataset, "chunk_shape": [self.exposures, *self.frame_shape]},
            )
            self._pending.append(("stream_resource", dict(stream.stream_resource_doc)))
            self._compose_datum = stream.compose_stream_datum
        else:
            bundle = event_model.compose_resource(
                spec=SPEC, root="/", resource_path=str(self._file.path).lstrip("/"),
                resource_kwargs={"dataset": self._file.dataset},
            )
            self._pending.append(("resource", dict(bundle.resource_doc)))
            self._compose_datum = bundle.compose_datum
        return super().stage()

    def unstage(self) -> list[Any]:
        # under the exposure thread's lock: a run aborted mid-exposure unstages while that thread
        # may be appending, and closing the file under it failed the append in HDF5 ("identifier
        # is not of specified type"; tests/test_qc.py's abort and pause tests on a loaded machine)
        with self._lock:
            if self._file is not None:
                self._file.close()
                log.info("%s wrote %d frames to %s", self.name, self._file.count, self._file.path)
                self._file = None
        return super().unstage()

    def trigger(self) -> DeviceStatus:
        if self._file is None:
            raise RuntimeError(f"{self.name} is not staged; use it in a plan (stage_decorator) or call stage()")
        status = DeviceStatus(self)
        conditions = self._conditions()  # sampled now, when the exposure starts

        def expose_and_write() -> None:
            try:
                t0 = time.monotonic()
                frames = [self._frame(conditions) for _ in range(self.exposures)]  # each with its own noise
                frame = frames[0] if self.exposures == 1 else np.stack(frames)
                if self.simulate_timing:  # a camera takes the exposure time, however fast the simulation is
                    time.sleep(max(0.0, conditions["exposure"] - (time.monotonic() - t0)))
                with self._lock:
                    if self._file is None:  # unstaged during the exposure (the run was aborted): discard it
                        log.info("%s was unstaged during an exposure; the frame is discarded", self.name)
                        status.set_finished()
                        return
                    start, stop = self._file.append(frame)
                    if self.asset_mode == "stream":  # indices count events: exposures frames each
                        event = start // self.exposures
                        datum = self._compose_datum(indices={"start": event, "stop": event + 1})
                        self._pending.append(("stream_datum", dict(datum)))
                    else:
                        datum = self._compose_datum(datum_kwargs={"frame": start})
                        self._last_datum = datum["datum_id"]
                        self._pending.append(("datum", dict(datum)))
            except Exception as exc:
                log.exception("%s failed to acquire a frame", self.name)
                status.set_exception(exc)
            else:
                status.set_finished()

        threading.Thread(target=expose_and_write, name=f"{self.name}-exposure", daemon=True).start()
        return status

    def collect_asset_docs(self) -> Any:
        with self._lock:
            pending, self._pending = self._pending, []
        yield from pending

    # -- faults ------------------------------------------------------------------------------

    def inject_fault(self, kind: str, frames: int = 1, pixels: float = 6.0) -> None:
        """Make the next ``frames`` frames faulty.

        Parameters
        ----------
        kind : {"beam_dump", "saturation", "nan", "motion"}
            ``beam_dump``: no photons reach the camera for ``frames`` frames
            (beam lost upstream; only the frames show it). To lose the beam
            in the ring, where suspenders see it, use :meth:`SimBeamCurrent.dump`.
            ``saturation``: 300x the flux, and at least twice what fills the camera, so the open beam clips
            at 65535 at any dose (at 40 photons/pixel, 300x alone left it at 12,000 counts: not saturated).
            ``nan``: 2% of the pixels are NaN (``float32`` frames only).
            ``motion``: the sample slips sideways by ``pixels`` and stays there.
        frames : int
            How many frames are affected (not used by ``motion``, which is permanent).
        pixels : float
            Displacement of ``motion``.
        """
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; choose from {FAULTS}")
        if kind == "nan" and self.dtype == np.uint16:
            raise ValueError("uint16 frames cannot hold NaN; create the detector with dtype='float32'")
        if kind == "motion":
            self.sample = self.sample.moved(pixels)
            return
        self._faults[kind] = self._faults.get(kind, 0) + int(frames)

    def _take_fault(self, kind: str) -> bool:
        left = self._faults.get(kind, 0)
        if left <= 0:
            return False
        self._faults[kind] = left - 1
        return True

    # -- physics -----------------------------------------------------------------------------

    def open_beam_photons(self, exposure: float) -> float:
        """Photons per pixel of open beam in an exposure of ``exposure`` seconds that starts now: the flux times
        the ring current's share of its nominal one; none in a ``beam_dump`` fault's frames, 300 times as many
        in a ``saturation`` fault's, and at least twice the camera's top (each such frame takes one of the fault's
        frames)."""
        dumped = self._take_fault("beam_dump")
        current_ratio = 1.0 if self.beam is None else float(self.beam.get()) / self.beam.nominal
        photons = 0.0 if dumped else float(self.photon_flux.get()) * exposure * current_ratio
        if self._take_fault("saturation") and photons > 0:  # (the beam lost too: no light to saturate)
            photons = max(300.0 * photons, 2.0 * _UINT16_MAX / float(self.gain.min()))
        return photons

    def _conditions(self) -> dict[str, Any]:
        exposure = float(self.exposure_time.get())
        photons = self.open_beam_photons(exposure)
        x = 0.0 if self.sample_stage is None else float(self.sample_stage.x.readback.get())
        index = int(self.slice_index.get())
        if self.mode == "slice":
            self.slice_index.put(index + 1)
        return {
            "exposure": exposure,
            "photons": photons if self.shutter.get() == "open" else 0.0,
            "angle": 0.0 if self.sample_stage is None else float(self.sample_stage.theta.readback.get()),
            "sample_in": abs(x) < SimTomoStage.OUT / 2,
            "slice": index,
            "nan": self._take_fault("nan"),
        }

    def _frame(self, c: dict[str, Any]) -> np.ndarray:
        if self.mode == "slice":
            return self._slice(c)
        return self.projection([c["angle"]], c["photons"], c["sample_in"], nan=c["nan"])

    def projection(self, angles: Sequence[float], photons: float, sample_in: bool = True, *,
                   nan: bool = False) -> np.ndarray:
        """One projection frame as this camera exposes it, of the sample turning through ``angles`` (degrees)
        during the exposure: their mean transmission (a fly scan's motion blur; one angle for a step scan),
        ``photons`` per pixel of open beam, flat-field pattern, Poisson noise, dark offset, read noise and
        saturation, the camera's hot and dead pixels and zingers. ``sample_in`` False gives a flat frame,
        ``photons`` 0 a dark one; ``nan`` marks 2 % of a float frame's pixels NaN (the ``nan`` fault)."""
        dark = self.model.dark_level
        attenuation = np.mean([self._attenuation(a) for a in angles], axis=0) if sample_in else 1.0
        frame = expose(photons * self.gain * attenuation + dark, self.model, self._rng)
        if self.zingers and photons > 0:
            frame = add_zingers(frame[None], photons, self.zingers, self._zinger_rng)[0]
        if self.dtype == np.uint16:
            frame = np.clip(np.rint(frame), 0, _UINT16_MAX).astype(np.uint16)
        else:
            frame = np.minimum(frame, _UINT16_MAX).astype(np.float32)  # the camera saturates either way
            if nan:
                frame[self._rng.random(frame.shape) < 0.02] = np.nan
        frame[self.hot_map] = _UINT16_MAX
        frame[self.dead_map] = 0
        return frame

    def _attenuation(self, angle: float) -> np.ndarray:
        """The sample's transmission at ``angle``, kept for the next frame at the same angle
        and position: a count or a fly-scan's repeated angle then costs the camera thread only
        its noise, not the projection (which would take the CPU the denoiser is measured on)."""
        cached = self._last_attenuation
        if cached is not None and cached[0] is self.sample and cached[1] == angle:
            return cached[2]
        attenuation = np.exp(-self.sample.line_integrals(angle))
        self._last_attenuation = (self.sample, angle, attenuation)
        return attenuation

    def _slice(self, c: dict[str, Any]) -> np.ndarray:
        h, _ = self.sample.shape
        row = c["slice"] % h
        angles = angles_deg(int(self.slice_angles.get()))
        flat = max(c["photons"], 1e-3) * self.gain[row]
        counts = expose(flat * np.exp(-self.sample.sinogram(row, angles)) + self.model.dark_level,
                        self.model, self._rng)
        sino = flat_field_correct(counts, flat + self.model.dark_level, np.full_like(flat, self.model.dark_level))
        rec = fbp(sino, angles).astype(np.float32)
        if c["nan"]:
            rec[self._rng.random(rec.shape) < 0.02] = np.nan
        return rec
