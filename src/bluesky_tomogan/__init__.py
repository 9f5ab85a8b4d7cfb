"""Live TomoGAN denoising of tomography frames inside Bluesky runs."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bluesky-tomogan")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"

from .callbacks import TomoGANCallback, TomoReconstruction, tomogan_factory  # noqa: E402
from .errors import (  # noqa: E402
    BackendUnavailableError,
    DatasetError,
    InputShapeError,
    InputValueError,
    ModelLoadError,
    OutputPathError,
    PrecisionError,
    TomoGANError,
    UnknownBackendError,
    UnknownModelError,
)
from .inference import Denoiser, load_denoiser  # noqa: E402

__all__ = [
    "__version__",
    "Denoiser",
    "load_denoiser",
    "TomoGANCallback",
    "TomoReconstruction",
    "tomogan_factory",
    "TomoGANError",
    "InputShapeError",
    "InputValueError",
    "DatasetError",
    "ModelLoadError",
    "BackendUnavailableError",
    "UnknownBackendError",
    "UnknownModelError",
    "PrecisionError",
    "OutputPathError",
]
