"""Simulated beamline devices (ophyd v1): tomography detector, rotation/translation stage, ring current."""

from .detector import FAULTS, SimBeamCurrent, SimTomoDetector, SimTomoStage

__all__ = ["SimTomoDetector", "SimTomoStage", "SimBeamCurrent", "FAULTS"]
