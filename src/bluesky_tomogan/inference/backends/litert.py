"""LiteRT adapter: the full-int8 TFLite model on CPU, or on a Coral Edge TPU.

``ai-edge-litert`` is preferred; ``tflite-runtime`` or ``tensorflow.lite`` are
used where they are what is installed. The Edge TPU runs the same int8 model
after ``edgetpu_compiler`` (``*_edgetpu.tflite``), through the
``libedgetpu.so.1`` delegate; pycoral is not needed.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BackendUnavailableError, ModelLoadError
from ...int8 import InputGrid

__all__ = ["LiteRTSession", "interpreter_module", "load_edgetpu_delegate", "require_edgetpu_runtime", "EDGETPU_LIBRARY"]

EDGETPU_LIBRARY = "libedgetpu.so.1"


def interpreter_module() -> Any:
    """The first importable module providing ``Interpreter`` and ``load_delegate``."""
    try:
        from ai_edge_litert import interpreter

        return interpreter
    except ImportError:
        pass
    try:
        import tflite_runtime.interpreter as interpreter  # type: ignore[import-not-found]

        return interpreter
    except ImportError:
        pass
    try:
        import tensorflow.lite as interpreter  # type: ignore[import-not-found]

        return interpreter
    except ImportError as exc:
        raise BackendUnavailableError(
            "no TFLite interpreter: pip install ai-edge-litert (or tflite-runtime)"
        ) from exc


def require_edgetpu_runtime() -> None:
    """Raise :class:`BackendUnavailableError` unless ``libedgetpu.so.1`` can be loaded.

    Probed with ctypes: LiteRT's ``Delegate`` raises from its ``__del__`` when
    the library cannot be loaded at all, and opening a delegate claims the device.
    """
    try:
        ctypes.CDLL(EDGETPU_LIBRARY)
    except OSError as exc:
        raise BackendUnavailableError(
            f"Edge TPU runtime {EDGETPU_LIBRARY} is not installed ({exc}); install libedgetpu1-std "
            "from Coral's apt repository (https://coral.ai/software/)"
        ) from exc


def load_edgetpu_delegate(mod: Any) -> Any:
    """Load the Edge TPU delegate, or raise :class:`BackendUnavailableError` saying what is missing."""
    require_edgetpu_runtime()
    try:
        return mod.load_delegate(EDGETPU_LIBRARY)
    except (ValueError, OSError, RuntimeError) as exc:
        raise BackendUnavailableError(
            f"{EDGETPU_LIBRARY} is installed but no Edge TPU could be opened ({exc}); connect the device"
        ) from exc


class LiteRTSession:
    """Run a full-int8 TFLite model (fixed tile shape, NHWC, int8 in and out).

    Parameters
    ----------
    tflite_path : path-like
        The ``.tflite`` model (``*_edgetpu.tflite`` for the Edge TPU).
    threads : int, optional
        CPU threads of the interpreter.
    edgetpu : bool
        Run through the ``libedgetpu.so.1`` delegate.
    isolated_spikes : bool
        The frames may hold isolated spikes (zingers in raw projections): a pixel beyond
        the int8 input range whose 3x3 median is inside it is added back as that median
        (:meth:`input_as_seen`). Not for slices, whose out-of-range pixels are thin streaks.

    Notes
    -----
    A model with several output channels returns copies of one output offset
    by fractions of an int8 step (see :mod:`bluesky_tomogan.export.tflite`);
    their mean is the output at a finer step.
    """

    fixed_shape: tuple[int, int] | None
    max_batch = 1
    precision = "int8"

    def __init__(
        self,
        tflite_path: str | os.PathLike[str],
        threads: int | None = None,
        edgetpu: bool = False,
        isolated_spikes: bool = False,
    ) -> None:
        self.isolated_spikes = isolated_spikes
        mod = interpreter_module()
        delegates = []
        if edgetpu:
            delegates = [load_edgetpu_delegate(mod)]
        try:
            self._it = mod.Interpreter(
                model_path=str(Path(tflite_path)), experimental_delegates=delegates or None, num_threads=threads
            )
            self._it.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"LiteRT cannot load {tflite_path}: {exc}") from exc
        self.backend = "edgetpu" if edgetpu else "litert"
        inp, out = self._it.get_input_details()[0], self._it.get_output_details()[0]
        if inp["dtype"] != np.int8 or out["dtype"] != np.int8:
            raise ModelLoadError(
                f"{tflite_path} is not a full-int8 model (input {inp['dtype']}, output {out['dtype']})"
            )
        self._in, self._out = inp["index"], out["index"]
        self._in_q, self._out_q = inp["quantization"], out["quantization"]
        _, h, w, _ = (int(v) for v in inp["shape"])
        self.fixed_shape = (h, w)

    @property
    def input_quantization(self) -> tuple[float, int]:
        """``(scale, zero_point)`` of the int8 input: ``value = (q - zero_point) * scale``."""
        scale, zero = self._in_q
        return float(scale), int(zero)

    @property
    def input_grid(self) -> InputGrid:
        """The int8 input's grid (codes -128..127)."""
        scale, zero = self.input_quantization
        return InputGrid(scale, zero)

    def input_as_seen(self, x: np.ndarray) -> np.ndarray:
        """``x`` as the model saw it (:meth:`bluesky_tomogan.int8.InputGrid.as_seen`)."""
        return self.input_grid.as_seen(x, self.isolated_spikes)

    def run(self, batch: np.ndarray) -> np.ndarray:
        out_scale, out_zero = self._out_q
        grid = self.input_grid
        results = []
        for x in batch:  # (C, H, W) -> (1, H, W, C) int8
            q = grid.quantise(x)
            if self.isolated_spikes:
                despiked_q = grid.despiked(x, q)[1]
                assert despiked_q is not None  # given codes, it returns codes
                q = despiked_q
            self._it.set_tensor(self._in, q.transpose(1, 2, 0).astype(np.int8)[None])
            self._it.invoke()
            y = (self._it.get_tensor(self._out)[0].astype(np.float32) - out_zero) * out_scale
            results.append(y.mean(axis=-1)[None])  # offset copies -> one finer output
        return np.stack(results)
