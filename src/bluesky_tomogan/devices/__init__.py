"""Beamline devices (ophyd v1): the simulated tomography detector, stage and ring current, and the QC monitor."""

from .detector import FAULTS, SimBeamCurrent, SimTomoDetector, SimTomoStage
from .qc_monitor import QCDecision, QCMonitor

__all__ = ["SimTomoDetector", "SimTomoStage", "SimBeamCurrent", "FAULTS", "QCMonitor", "QCDecision"]
