"""Bluesky callbacks: live denoising into a derived stream of the same run."""

from .progress import ScanProgress
from .queue import POLICIES, FrameQueue
from .reconstruction import TomoReconstruction
from .tomogan import TomoGANCallback, image_fields, tomogan_factory

__all__ = ["TomoGANCallback", "TomoReconstruction", "FrameQueue", "POLICIES", "image_fields", "tomogan_factory",
           "ScanProgress"]
