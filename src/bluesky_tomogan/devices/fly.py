"""A simulated fly-scan tomography beamline in ophyd-async: a rotation axis and a camera that exposes while it turns.

:class:`SimFlyRotation` is a flyable rotation axis (prepared with ``FlyMotorInfo``, kicked off, completed)
whose angle is known at every instant, and :class:`SimFlyTomoDetector` an ophyd-async ``StandardDetector``
that takes frames at a fixed period once kicked off, each of the bead pack at the angles the axis passes
through during its exposure (the motion blur of a fly scan), dark with the shutter closed and flat with the
sample out of the beam, with the photon noise, flat-field pattern and dark offset of
:class:`~bluesky_tomogan.devices.SimTomoDetector` (the same physics, ``projection``). Frames go to an HDF5
file per staging, announced by StreamResource/StreamDatum as ophyd-async's area detectors do, so
:func:`~bluesky_tomogan.plans.tomo_fly_scan`, the callback and TiledWriter see what they see at a beamline.

Needs ophyd-async 0.21 or later (its detector logics); ``bluesky-tomogan demo --fly`` runs a fly scan of them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ophyd_async.core import (
    AsyncStatus,
    DetectorAcquireLogic,
    DetectorDataLogic,
    DetectorTriggerLogic,
    FlyMotorInfo,
    SignalR,
    StandardDetector,
    StandardReadable,
    StreamableDataProvider,
    StreamResourceDataProvider,
    StreamResourceInfo,
    TriggerInfo,
    soft_signal_r_and_setter,
    soft_signal_rw,
)
from ophyd_async.core import StandardReadableFormat as Format

from ..hdf5_frames import MIMETYPE, FrameFile
from .detector import SimBeamCurrent, SimTomoDetector, SimTomoStage

__all__ = ["SimFlyRotation", "SimFlyTomoDetector", "SimPositionCapture"]

log = logging.getLogger(__name__)

#: How often (s) the rotation's readback follows its angle while it flies: for live plots only; the camera
#: asks the axis for the angle at each instant it needs.
READBACK_PERIOD = 0.05
#: Angles averaged over one exposure while the sample turns (its motion blur).
BLUR_SAMPLES = 3


class SimFlyRotation(StandardReadable):
    """A flyable rotation axis (degrees) whose angle is known at every instant (:meth:`angle_at`).

    ``prepare(FlyMotorInfo(start_position, end_position, time_for_move))`` moves it to its run-up
    position; ``kickoff`` starts it and is done when it passes ``start_position`` at speed;
    ``complete`` is done when it stops after ``end_position`` (its run-down). Its speed is constant
    from the run-up position on (a simulation's simplification of the acceleration ramp). ``set``
    moves it at once.

    Parameters
    ----------
    name : str
        Device name; its readback's data key.
    acceleration_time : float
        Seconds a real axis takes to reach its speed: the run-up and run-down distances are speed x
        ``acceleration_time`` / 2 (as ``FlyMotorInfo`` computes them), which this one covers at speed.
    """

    def __init__(self, name: str = "", acceleration_time: float = 0.05) -> None:
        with self.add_children_as_readables(Format.HINTED_SIGNAL):
            self.user_readback, self._set_readback = soft_signal_r_and_setter(float, 0.0, units="deg")
        with self.add_children_as_readables(Format.CONFIG_SIGNAL):
            self.acceleration_time = soft_signal_rw(float, acceleration_time, units="s")
        self._position = 0.0
        self._flight: tuple[float, float, float, float] | None = None  # t0, angle at t0, speed, t_end
        self._fly_info: FlyMotorInfo | None = None
        self._flying: asyncio.Task[None] | None = None
        super().__init__(name=name)

    def angle_at(self, when: float | None = None) -> float:
        """The angle (degrees) at ``when`` (``time.monotonic()``; default: now)."""
        if self._flight is None:
            return self._position
        t0, a0, speed, t_end = self._flight
        t = min(max(time.monotonic() if when is None else when, t0), t_end)
        return a0 + speed * (t - t0)

    @AsyncStatus.wrap
    async def set(self, value: float) -> None:
        """Move to ``value`` degrees at once (ends a flight)."""
        await self._land()
        self._position = float(value)
        self._set_readback(self._position)

    @AsyncStatus.wrap
    async def prepare(self, value: FlyMotorInfo) -> None:
        """Take the flight ``value`` and move to its run-up position."""
        self._fly_info = value
        await self.set(value.ramp_up_start_pos(await self.acceleration_time.get_value()))

    @AsyncStatus.wrap
    async def kickoff(self) -> None:
        """Start turning; done when the axis passes ``start_position`` at speed."""
        if self._fly_info is None:
            raise RuntimeError(f"{self.name} must be prepared with a FlyMotorInfo before kickoff")
        info, accel = self._fly_info, await self.acceleration_time.get_value()
        speed = math.copysign(info.speed, info.end_position - info.start_position)
        start, end = info.ramp_up_start_pos(accel), info.ramp_down_end_pos(accel)
        now = time.monotonic()
        self._flight = (now, start, speed, now + (end - start) / speed)
        self._flying = asyncio.create_task(self._follow())
        await asyncio.sleep(max(0.0, (info.start_position - start) / speed))

    def complete(self) -> AsyncStatus:
        """Done when the flight has ended (after its run-down)."""
        flying = self._flying
        if flying is None:
            raise RuntimeError(f"{self.name} was not kicked off")

        async def landed() -> None:
            await asyncio.shield(flying)

        return AsyncStatus(landed())

    async def stop(self, success: bool = True) -> None:
        """Stop where it is now."""
        await self._land()

    async def _follow(self) -> None:
        assert self._flight is not None
        t_end = self._flight[3]
        while time.monotonic() < t_end:
            self._set_readback(self.angle_at())
            await asyncio.sleep(min(READBACK_PERIOD, max(0.0, t_end - time.monotonic())))
        self._set_readback(self.angle_at(t_end))

    async def _land(self) -> None:
        """End a flight where the axis is now."""
        if self._flight is not None:
            self._position = self.angle_at()
            self._flight = None
        if self._flying is not None and not self._flying.done():
            self._flying.cancel()
        self._set_readback(self._position)


class _Exposures:
    """What the camera takes next: set by the trigger logic, run by the acquire logic, written by the data logic."""

    def __init__(self, camera: SimTomoDetector, rotation: SimFlyRotation, sample_x: Any, shutter: SignalR) -> None:
        self.camera, self.rotation, self.sample_x, self.shutter = camera, rotation, sample_x, shutter
        self.number, self.exposure, self.period = 1, 0.01, 0.01
        self.file: FrameFile | None = None
        self.written, self._set_written = soft_signal_r_and_setter(int, 0)
        self.angles: list[float] = []  # the angle at the middle of each exposure written to ``file``
        # called with the angle at the middle of each exposure as its frame is written: a position capture's
        self.listeners: list[Callable[[float], None]] = []
        self.takes_done = 0  # acquisitions ended (done, cancelled or failed): a capture waits for no more

    def open(self, path: Path) -> FrameFile:
        self.close()
        self.file = FrameFile(path, self.camera.frame_shape, np.uint16)
        self.angles = []
        self._set_written(0)
        return self.file

    def close(self) -> None:
        if self.file is not None:
            log.info("%s wrote %d frames to %s", self.camera.name, self.file.count, self.file.path)
            self.file.close()
            self.file = None

    async def take(self) -> None:
        """The frames, one each period from now, each exposed over the angles it passes through."""
        try:
            await self._take()
        finally:
            self.takes_done += 1

    async def _take(self) -> None:
        t0 = time.monotonic()
        for i in range(self.number):
            begin = t0 + i * self.period
            await asyncio.sleep(max(0.0, begin + self.exposure - time.monotonic()))
            angles = [self.rotation.angle_at(begin + self.exposure * k / (BLUR_SAMPLES - 1))
                      for k in range(BLUR_SAMPLES)]
            shutter, x = await asyncio.gather(self.shutter.get_value(), self.sample_x.get_value())
            photons = self.camera.open_beam_photons(self.exposure) if shutter == "open" else 0.0
            sample_in = abs(float(x)) < SimTomoStage.OUT / 2
            # off the event loop: a projection of a few hundred pixels square takes milliseconds
            frame = await asyncio.to_thread(self.camera.projection, angles, photons, sample_in)
            if self.file is None:  # unstaged meanwhile (the run was aborted): the frame is discarded
                return
            _, count = self.file.append(frame)
            middle = self.rotation.angle_at(begin + self.exposure / 2)
            self.angles.append(middle)
            for listener in self.listeners:  # the capture's row before the frame's: a PandA's is written first
                try:
                    listener(middle)
                except Exception:  # a capture that fails must not stop the camera: its rows stay short
                    log.exception("%s: a position capture failed to record %.4g degrees", self.camera.name, middle)
            self._set_written(count)
            await asyncio.sleep(max(0.0, begin + self.period - time.monotonic()))


class _TriggerLogic(DetectorTriggerLogic):
    def __init__(self, exposures: _Exposures) -> None:
        self.exposures = exposures

    async def prepare_internal(self, num: int, livetime: float, deadtime: float) -> None:
        e = self.exposures
        e.number, e.exposure = num, livetime or e.exposure
        e.period = e.exposure + deadtime

    async def default_trigger_info(self) -> TriggerInfo:
        return TriggerInfo(livetime=self.exposures.exposure)


class _AcquireLogic(DetectorAcquireLogic):
    def __init__(self, exposures: _Exposures) -> None:
        self.exposures = exposures
        self.task: asyncio.Task[None] | None = None

    async def start_acquiring(self) -> None:
        self.task = asyncio.create_task(self.exposures.take())

    async def wait_for_idle(self) -> None:
        if self.task is not None:
            await self.task

    async def ensure_stopped(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
            self.task = None


class _DataLogic(DetectorDataLogic):
    """A new HDF5 file of ``source`` (the camera's frames, or a capture's angles) per staging, its rows announced by
    StreamResource/StreamDatum as ``source.written`` counts them."""

    def __init__(self, source: _Exposures | _Capture, directory: Path) -> None:
        self.source = source
        self.directory = directory

    async def prepare_unbounded(self, datakey_name: str) -> StreamableDataProvider:
        rows = self.source.open(self.directory / f"{datakey_name}_{uuid.uuid4().hex[:12]}.h5")
        return StreamResourceDataProvider(
            uri=rows.uri, mimetype=MIMETYPE, collections_written_signal=self.source.written,
            resources=[StreamResourceInfo(data_key=datakey_name, shape=rows.shape, chunk_shape=(1, *rows.shape),
                                          dtype_numpy=rows.dtype.str, parameters={"dataset": rows.dataset})])

    async def stop(self) -> None:
        self.source.close()

    def get_hinted_fields(self, datakey_name: str) -> Sequence[str]:
        return [datakey_name]


class SimFlyTomoDetector(StandardDetector):
    """A simulated tomography camera for fly scans (ophyd-async; see the module docstring).

    Parameters
    ----------
    directory : path-like
        Where its HDF5 files go (one per staging, a new name each time).
    rotation : SimFlyRotation
        The axis whose angles each exposure sees.
    sample_x : ophyd-async signal or device with ``get_value``
        The sample's translation: beyond ``SimTomoStage.OUT / 2`` from 0 the frames are flats.
    shutter : ophyd-async signal
        ``"open"`` or anything else (closed: dark frames).
    shape : tuple of int
        Detector ``(height, width)``.
    photon_flux : float
        Photons per pixel per second of open beam (at the nominal ring current).
    beam : SimBeamCurrent, optional
        Ring current scaling the flux (its ``dump`` loses the beam; default: constant nominal current).
    seed : int
        Seed of the sample, the flat-field pattern and the noise (as :class:`SimTomoDetector`'s).
    zingers, blur, sample_width, axis_offset : float
        Zingers per pixel and frame, the camera's blur, the sample's width in fields of view and where the axis
        projects, right of the middle (as :class:`SimTomoDetector`'s).
    name : str
        Device name; the frames' data key.

    Attributes
    ----------
    camera : SimTomoDetector
        Its physics: the sample (``camera.sample``), flat-field pattern, noise model and faults
        (``camera.inject_fault("saturation", frames=3)``, ``"beam_dump"``, ``"motion"``).
    """

    def __init__(self, directory: str | Path, rotation: SimFlyRotation, sample_x: Any, shutter: SignalR, *,
                 shape: tuple[int, int] = (256, 256), photon_flux: float = 5e4, beam: SimBeamCurrent | None = None,
                 seed: int = 0, zingers: float = 0.0, blur: float = 0.0, sample_width: float = 1.0,
                 axis_offset: float = 0.0, name: str = "") -> None:
        self.camera = SimTomoDetector(name=f"{name or 'det'}_physics", shape=shape, beam=beam, seed=seed,
                                      simulate_timing=False, zingers=zingers, blur=blur, sample_width=sample_width,
                                      axis_offset=axis_offset)
        self.camera.photon_flux.put(photon_flux)
        self._exposures = _Exposures(self.camera, rotation, getattr(sample_x, "user_readback", sample_x), shutter)
        self.add_detector_logics(_TriggerLogic(self._exposures), _AcquireLogic(self._exposures),
                                 _DataLogic(self._exposures, Path(directory)))
        super().__init__(name=name)

    @property
    def angles_taken(self) -> list[float]:
        """The true angle (degrees) at the middle of each exposure of the last staging's frames: what a position
        capture would have recorded, to compare with a plan's nominal angles."""
        return list(self._exposures.angles)


class _Capture:
    """What a position capture records: the angle at the middle of each of a camera's exposures, to its file."""

    def __init__(self, exposures: _Exposures) -> None:
        self.exposures = exposures
        self.number = 1
        self.file: FrameFile | None = None
        self.written, self._set_written = soft_signal_r_and_setter(int, 0)
        self._takes_before = 0
        self._first = 0  # rows of the file before this flight's: a staging may fly more than once
        exposures.listeners.append(self.record)

    def open(self, path: Path) -> FrameFile:
        self.close()
        self.file = FrameFile(path, (), np.float64, dataset="/entry/inenc1")
        self._first = 0
        self._set_written(0)
        return self.file

    def prepare(self, number: int) -> None:
        """The next flight's ``number`` exposures, recorded after the rows already in the file (set before the
        kickoff, so that the camera's first exposure never comes before it)."""
        self.number = number
        self._first = self.file.count if self.file is not None else 0

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def record(self, angle: float) -> None:
        if self.file is not None and self.file.count - self._first < self.number:
            _, count = self.file.append(np.asarray([angle]))
            self._set_written(count)

    def started(self) -> None:
        self._takes_before = self.exposures.takes_done

    async def wait_for_idle(self) -> None:
        """Until every exposure asked for is recorded, or the camera's acquisition has ended (aborted)."""
        while ((self.file is not None and self.file.count - self._first < self.number)
               and self.exposures.takes_done == self._takes_before):
            await asyncio.sleep(0.005)


class _CaptureTriggerLogic(DetectorTriggerLogic):
    def __init__(self, capture: _Capture) -> None:
        self.capture = capture

    async def prepare_internal(self, num: int, livetime: float, deadtime: float) -> None:
        self.capture.prepare(num)

    async def default_trigger_info(self) -> TriggerInfo:
        return TriggerInfo(livetime=self.capture.exposures.exposure)


class _CaptureAcquireLogic(DetectorAcquireLogic):
    def __init__(self, capture: _Capture) -> None:
        self.capture = capture

    async def start_acquiring(self) -> None:
        self.capture.started()

    async def wait_for_idle(self) -> None:
        await self.capture.wait_for_idle()

    async def ensure_stopped(self) -> None:
        return None


class _CaptureDataLogic(_DataLogic):
    datakey_suffix = "-inenc-1-val"  # a PandA's first encoder, as ophyd-async's PandA names its capture


class SimPositionCapture(StandardDetector):
    """A simulated PandA's position capture for :func:`~bluesky_tomogan.plans.tomo_fly_scan` (``capture=``).

    It records the rotation's angle (degrees) at the middle of each exposure of ``detector``, as a PandA
    captures its encoder on the camera's trigger, into an HDF5 file per staging (one float a row), announced by
    StreamResource/StreamDatum as a PandA's HDF writer announces its datasets. Its data key is
    ``<name>-inenc-1-val`` (``panda-inenc-1-val``): what ``TomoGANCallback(angle_field=...)`` and
    ``TomoReconstruction(angle_field=...)`` take, so that each frame has the angle it was taken at, not the
    plan's nominal one.

    Parameters
    ----------
    directory : path-like
        Where its HDF5 files go (one per staging, a new name each time).
    detector : SimFlyTomoDetector
        The camera whose exposures it records the angle of.
    name : str
        Device name (``panda``).
    """

    def __init__(self, directory: str | Path, detector: SimFlyTomoDetector, *, name: str = "") -> None:
        capture = _Capture(detector._exposures)
        self.add_detector_logics(_CaptureTriggerLogic(capture), _CaptureAcquireLogic(capture),
                                 _CaptureDataLogic(capture, Path(directory)))
        super().__init__(name=name)
