"""Bluesky callbacks: live denoising into a derived stream of the same run."""

from .live_view import LiveDenoisedView, LiveSliceView, LiveViewDuringTask
from .progress import ScanProgress
from .queue import POLICIES, FrameQueue
from .reconstruction import TomoReconstruction
from .tomogan import SCAN_STREAMS, TomoGANCallback, image_fields, tomogan_factory

__all__ = ["SCAN_STREAMS", "TomoGANCallback", "TomoReconstruction", "FrameQueue", "POLICIES", "image_fields",
           "tomogan_factory", "ScanProgress", "LiveDenoisedView", "LiveSliceView", "LiveViewDuringTask"]
