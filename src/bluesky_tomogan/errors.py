"""Exception hierarchy of bluesky-tomogan.

Every error the package raises on purpose is a :class:`TomoGANError`, and also
inherits the builtin a caller would naturally catch (``ValueError`` for bad
input, ``OSError`` for files), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = [
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
    "ExportOptionError",
    "QCPolicyError",
    "ScanError",
]


class TomoGANError(Exception):
    """Base class of every error raised by bluesky-tomogan."""


class InputShapeError(TomoGANError, ValueError):
    """An array has the wrong number of dimensions, shape or size."""


class InputValueError(TomoGANError, ValueError):
    """An array holds values the denoiser cannot use (NaN, inf, wrong dtype)."""


class DatasetError(TomoGANError, ValueError):
    """A training/test HDF5 file lacks the TomoGAN keys or has inconsistent shapes."""


class ModelLoadError(TomoGANError, OSError):
    """A model file is missing, corrupt, or does not match its model card."""


class BackendUnavailableError(TomoGANError, RuntimeError):
    """The requested backend's runtime, library or device is not present here."""


class UnknownBackendError(TomoGANError, ValueError):
    """The backend name is not one bluesky-tomogan knows."""


class UnknownModelError(TomoGANError, ValueError):
    """The model name is neither a shipped model nor an existing path."""


class RatioError(TomoGANError, ValueError):
    """A pruning ratio the model does not have, or a ratio asked of a model trained without ratios."""


class PrecisionError(TomoGANError, ValueError):
    """The precision is unknown or not available for this model and backend."""


class OutputPathError(TomoGANError, OSError):
    """An output file or directory cannot be written."""


class ExportOptionError(TomoGANError, ValueError):
    """An export option names something the model does not have (e.g. a layer to copy)."""


class QCPolicyError(TomoGANError, ValueError):
    """A QC policy (in code or in a file) names an unknown flag, action or option, or a bad value."""


class ScanError(TomoGANError, ValueError):
    """A scan to fine-tune on cannot be used: missing, unreadable, no projections, too few angles, too small."""
