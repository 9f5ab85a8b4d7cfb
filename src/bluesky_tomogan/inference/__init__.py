"""Torch-free inference: :func:`load_denoiser` and the :class:`Denoiser` it returns."""

from .denoiser import Denoiser
from .load import BACKENDS, DEFAULT_MODEL, PRECISIONS, load_card, load_denoiser, shipped_models

__all__ = ["Denoiser", "load_denoiser", "load_card", "shipped_models", "BACKENDS", "PRECISIONS", "DEFAULT_MODEL"]
