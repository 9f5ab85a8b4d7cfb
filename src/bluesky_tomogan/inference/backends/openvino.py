"""OpenVINO adapter: fp32, bf16 (AMX/AVX-512 BF16) and int8 (exact with VNNI/AMX) on x86 CPUs.

The fastest CPU runtime measured here. fp32 and bf16 compile the fp32 ONNX
model (bf16 through ``INFERENCE_PRECISION_HINT``); int8 loads the NNCF-quantised
IR shipped beside it, whose float parts (the operations between the quantised
convolutions, and any convolution NNCF kept in float) run in bf16 on CPUs with AMX
or with a measured bf16 gain, and in fp32 elsewhere (:func:`int8_float_precision`). Compiled models are cached
per input shape: OpenVINO runs static shapes fastest, and a scan has one or two
frame shapes. ``precision="auto"`` takes bf16 only where it is faster than fp32
on this CPU (:func:`bf16_speedup`, measured).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

from ...cpu import dispatch_cpu_flags as current_cpu_flags
from ...cpu import is_x86
from ...errors import BackendUnavailableError, ModelLoadError, PrecisionError
from ...int8 import InputGrid
from .ir_weights import int8_weights
from .sub_pixel import int8_transposed_convolutions_native, sub_pixel_transposed_convolutions

log = logging.getLogger(__name__)

__all__ = ["COMPILED_PIXEL_BUDGET", "OpenVINOSession", "available", "bf16_speedup", "int8_float_precision",
           "int8_numerics", "int8_sums_exact", "ir_float_precision", "openvino_core", "round_to_bf16",
           "seven_bit_first_layer", "supports_bf16"]

#: ``precision="auto"`` takes OpenVINO bf16 only where it is at least this much faster than fp32.
BF16_MIN_SPEEDUP = 1.1

#: Input pixels (batch x height x width) of the compiled models a session keeps, one model per input
#: shape, the least recently used dropped first (the newest always kept). Each holds its activation
#: buffers: process RSS grew 270-330 MB per new 1024x1024 shape (projection model, OpenVINO int8), so
#: a beamline session that changes the detector's region of interest or binning now and then grew
#: by that much per shape it ever met. This budget, one 2048x2048 frame's worth (about 1.2 GB for
#: the full network), keeps four 1024x1024 shapes, or the one shape of a tiled large frame (the
#: Denoiser gives every call of a frame one shape). A dropped shape costs a compile (about a
#: second) when it comes back; a run's frames keep one shape.
COMPILED_PIXEL_BUDGET = 2048 * 2048

#: x86 instruction sets whose 8-bit dot products sum in 32 bits (VNNI; AMX tiles).
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})

#: The card's ``quantization`` variant of OpenVINO int8 losses measured on an x86 CPU without VNNI
#: (key ``openvino/int8@no-vnni``): int8 sums there are not those of the CPUs with VNNI.
NO_VNNI = "no-vnni"

#: Largest weight magnitude whose products with two unsigned 8-bit activations fit the 16-bit
#: sum of ``vpmaddubsw``: 2 x 255 x 64 = 32,640 <= 32,767 (7-bit weights).
SEVEN_BIT_WEIGHT_MAX = 64


def available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


_CORE: list[Any] = []  # the one Core, once made
_CORE_LOCK = threading.Lock()


def openvino_core() -> Any:
    """The process's one ``openvino.Core``, shared by every session, probe and export step.

    One Core is what OpenVINO recommends (it loads and configures its device plugins once),
    and here it is also what keeps Ctrl-C from crashing the session. The CPU plugin of
    OpenVINO (2026.4) installs an alternate signal stack on the thread that creates it and, when
    it is destroyed, unmaps that stack and puts back the one it found. With two Cores alive
    and the older one destroyed first, the thread is left with an unmapped alternate stack,
    and the next signal delivered there (Python's SIGINT handler runs on it) kills the
    process with SIGSEGV: a RunEngine paused with Ctrl-C took the whole process down (the
    suite's Ctrl-C test, run after an OpenVINO test). Never destroyed, the one Core never restores.
    Made under a lock: two threads loading denoisers at once must not make a second one.
    """
    with _CORE_LOCK:
        if not _CORE:
            import openvino as ov

            _CORE.append(ov.Core())
        return _CORE[0]


def supports_bf16() -> bool:
    """Whether this CPU has native bf16 (OpenVINO reports it as an optimisation capability)."""
    try:
        caps = openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # no openvino, or no CPU plugin
        return False
    return "BF16" in caps


@functools.cache
def bf16_speedup() -> float:
    """How much faster OpenVINO runs convolutions in bf16 than in fp32 on this CPU (fp32 time over bf16).

    Having bf16 instructions is not being fast in them: measured on the shipped models at
    512x512 (2 threads, ``Denoiser.denoise_context``), bf16 took 0.4-0.7x the speed of fp32
    on an Intel Xeon whose AVX-512 BF16 is exposed without AMX, while with AMX it ran about
    4x faster than fp32 and on an AMD Zen 5 2.1x (issue 20). So it is measured, once per process (about
    1 s): three 3x3 convolutions of 16-32 channels at 256x256, the kind of layer that
    dominates the network, compiled in each precision and timed (the fastest of 7 runs after 2,
    the two precisions alternating, so that a load from another process slows both alike).
    0.0 where OpenVINO cannot run them in bf16.
    """
    if not supports_bf16():
        return 0.0
    import openvino as ov
    from openvino import opset13 as ops

    rng = np.random.default_rng(0)
    x = ops.parameter([1, 16, 256, 256], np.float32, name="x")
    h = x
    for cin, cout in ((16, 32), (32, 32), (32, 16)):
        w = ops.constant((rng.standard_normal((cout, cin, 3, 3)) * 0.1).astype(np.float32))
        h = ops.relu(ops.convolution(h, w, [1, 1], [1, 1], [1, 1], [1, 1]))
    model, core = ov.Model([h], [x]), openvino_core()
    data = rng.random((1, 16, 256, 256), np.float32)
    requests = {p: core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": p, "PERFORMANCE_HINT": "LATENCY"})
                .create_infer_request() for p in ("f32", "bf16")}
    times: dict[str, list[float]] = {p: [] for p in requests}
    # alternated, and the fastest of each kept: another process loading the cores for a while
    # slows both alike, not one precision's block of runs
    for i in range(9):
        for precision, request in requests.items():
            began = time.perf_counter()
            request.infer({0: data})
            if i >= 2:
                times[precision].append(time.perf_counter() - began)
    seconds = {p: float(np.min(t)) for p, t in times.items()}
    speedup = seconds["f32"] / seconds["bf16"]
    log.info("OpenVINO bf16 on this CPU: %.2fx the speed of fp32 (%.1f vs %.1f ms, 3 convolutions at 256x256)",
             speedup, seconds["bf16"] * 1e3, seconds["f32"] * 1e3)
    return speedup


def bf16_verdict(precision: str) -> str | None:
    """Why ``precision="auto"`` should not take OpenVINO ``precision`` on this CPU for speed, or ``None``."""
    if precision != "bf16":
        return None
    speedup = bf16_speedup()
    if speedup >= BF16_MIN_SPEEDUP:
        return None
    return (f"bf16 runs {speedup:.2f}x the speed of fp32 on this CPU (measured: bf16_speedup), "
            f"not faster by {BF16_MIN_SPEEDUP}x; fp32 is as fast and exact")


#: OpenVINO's convolution operations.
CONVOLUTIONS = ("Convolution", "GroupConvolution", "ConvolutionBackpropData")


#: Without AMX, an int8 IR's float parts run in fp32 where its float convolutions are at most
#: this share of its multiply-accumulates (:func:`int8_float_precision`).
FLOAT_MAC_SHARE_FOR_F32 = 0.02


def _is_float_convolution(op: Any) -> bool:
    # NNCF stores an int8 convolution's weights as int8 constants behind a dequantisation;
    # a float one reads a float constant
    return bool(op.input(1).get_source_output().get_node().get_type_name() == "Constant")


def float_convolutions(model: Any) -> int:
    """How many convolutions of an OpenVINO model run in float."""
    return sum(1 for op in model.get_ops() if op.get_type_name() in CONVOLUTIONS and _is_float_convolution(op))


def float_mac_share(model: Any, size: int = 64) -> float:
    """The share of an OpenVINO model's convolution multiply-accumulates that run in float
    (counted on a ``size`` x ``size`` input: the share does not depend on the size)."""
    static = model.clone()
    shape = static.inputs[0].get_partial_shape()
    channels = shape[1].get_length() if shape[1].is_static else 3
    static.reshape({static.inputs[0].any_name: [1, channels, size, size]})
    total = in_float = 0
    for op in static.get_ops():
        if op.get_type_name() not in CONVOLUTIONS:
            continue
        weights, out = op.get_input_shape(1), op.get_output_shape(0)
        # each output value: one MAC per weight of its output channel (weights over the channels)
        macs = int(np.prod(list(out))) * int(np.prod(list(weights))) // max(int(out[1]), 1)
        total += macs
        in_float += macs if _is_float_convolution(op) else 0
    return in_float / total if total else 0.0


def int8_float_precision(cpu_flags: Collection[str] | None = None, speedup: float | None = None,
                         float_share: float | None = None) -> str:
    """Precision of an int8 graph's float parts on this CPU (or one with ``cpu_flags`` and bf16 ``speedup``).

    ``"bf16"`` with AMX bf16 tiles (``amx_bf16``), or with AVX-512 BF16 where bf16 is measured
    faster than fp32 (:func:`bf16_speedup` >= :data:`BF16_MIN_SPEEDUP`) and the graph's float
    convolutions are more than :data:`FLOAT_MAC_SHARE_FOR_F32` of its multiply-accumulates
    (``float_share``, :func:`float_mac_share`; ``None``: unknown, taken as more), else
    ``"f32"``. Where every convolution but the output layer (and perhaps a 1x1 head) is int8,
    the float parts are the upsampling, the concatenations and those small layers, a few
    percent of the time, and bf16 there rounds the network's output to 8 significant bits:
    the light projection model's IR on its card's 48 frames (AMD EPYC) lost 0.0014 mean /
    0.0116 worst-frame SSIM with bf16 float parts and 0.0004 / 0.0061 with fp32 ones, for 5 %
    more time (the IR alone at 1024x1024, ``checkpoints/openvino-int8/profile_ir.py``: 299
    against 316 ms, the cores shared with a training run). Where more stays in float (the
    layout changes, upsampling and concatenations between the int8 convolutions, and the
    convolutions NNCF's accuracy control kept in float) the float parts are most of the time:
    on a Xeon with AMX at 512x512 (All-in-One projection model, 2 threads,
    ``benchmarks/layer_profile.py --precision bf16|f32``) the int8 IR ran 32.5-38.2 ms with bf16
    float parts and 118.8-121.7 ms with fp32 ones; on an AMD EPYC (Zen 4, AVX-512 BF16, no
    AMX) at 1024x1024 82.6 against 135.9 ms (space-to-depth ratio 50, the same command), and
    through ``Denoiser.denoise_context`` (``benchmarks/pareto.py``, two runs) 260 against 459 ms
    (All-in-One ratio 50), 360 against 612 ms (full projection model). On an Intel Xeon whose
    AVX-512 BF16 comes without AMX, bf16 is slower than fp32 (:func:`bf16_speedup` 0.4-0.7) and
    the float parts stay fp32. The shipped cards' int8 losses were measured with bf16 float
    parts (``quantization_measured_on``).
    """
    flags = current_cpu_flags() if cpu_flags is None else cpu_flags
    if "amx_bf16" in flags:
        return "bf16"
    if "avx512_bf16" not in flags or (float_share is not None and float_share <= FLOAT_MAC_SHARE_FOR_F32):
        return "f32"
    return "bf16" if (bf16_speedup() if speedup is None else speedup) >= BF16_MIN_SPEEDUP else "f32"


def ir_float_precision(model: Any) -> str:
    """What the float parts of the int8 OpenVINO ``model`` compute in on this CPU
    (:func:`int8_float_precision` of its :func:`float_mac_share`)."""
    return int8_float_precision(float_share=float_mac_share(model))


def int8_sums_exact(cpu_flags: Collection[str] | None = None, machine: str | None = None) -> bool:
    """Whether int8 weights that use their whole range are safe on this CPU (or one with ``cpu_flags``).

    Without VNNI, x86 CPUs multiply 8-bit numbers with ``vpmaddubsw``, which sums pairs of
    products into 16 bits and saturates when both are large; NNCF's ``overflow_fix`` avoids
    it in the first layer by giving it 7-bit weights. IRs exported without it (``overflow_fix:
    "disable"`` on the card, every IR since session 21) get that at load on such a CPU
    (:func:`seven_bit_first_layer`); hidden layers can saturate all the same, so their int8 loss
    there is measured on such a CPU (:func:`int8_numerics`). VNNI or AMX: every Xeon since
    Cascade Lake, AMD since Zen 4. Other architectures do not have this instruction.
    """
    if not is_x86(machine):
        return True
    flags = current_cpu_flags() if cpu_flags is None else cpu_flags
    return bool(VNNI_FLAGS & set(flags))


def int8_numerics(cpu_flags: Collection[str] | None = None, machine: str | None = None) -> str | None:
    """Which int8 numerics this CPU has, as a card ``quantization`` variant: :data:`NO_VNNI` or ``None``.

    On an x86 CPU without VNNI every int8 convolution's sums pass through saturating 16-bit
    pairs (:func:`int8_sums_exact`), in hidden layers too, not only the first one that NNCF's
    overflow fix protects. On an AMD EPYC Zen 3 (avx2, no VNNI; ``bluesky-tomogan quality
    tomogan-projection-light --data data/sim_projection_dose.h5 --only openvino/int8``, the card's
    48 frames) the light projection model's IR lost 0.0166 mean / 0.0531 worst-frame SSIM with a
    7-bit first layer (0.0355 / 0.1383 without it), against 0.0002 / 0.0031 on a CPU with VNNI;
    the full model's lost 0.0008 / 0.0029, as with VNNI. So a loss measured with VNNI says
    nothing about a CPU without it, and ``precision="auto"`` reads this variant's own entry.
    """
    return None if int8_sums_exact(cpu_flags, machine) else NO_VNNI


def seven_bit_first_layer(model: Any) -> bool:
    """Give the first convolution of an int8 OpenVINO ``model`` 7-bit weights, in place (NNCF's overflow fix).

    Each int8 weight ``q`` becomes ``round(q / 2)`` (within :data:`SEVEN_BIT_WEIGHT_MAX`) and its
    channel's scale doubles, so the dequantised weights move by at most one original step and
    the layer's 8-bit products can no longer saturate a 16-bit pair sum on an x86 CPU without
    VNNI. The first layer reads the input frames, dense and bright, where saturation is all but
    certain. Returns ``False`` where the first convolution runs in float, or there is none
    (nothing to do).

    Raises
    ------
    PrecisionError
        The first convolution's weights are not an int8 constant behind a per-channel scale,
        the form NNCF saves; nothing is changed.
    """
    from openvino import opset13

    conv = next((op for op in model.get_ordered_ops() if op.get_type_name() in CONVOLUTIONS), None)
    if conv is None or _is_float_convolution(conv):
        return False
    weights = int8_weights(conv)
    if weights is None:
        raise PrecisionError(f"the first convolution's weights ({conv.get_friendly_name()}) are not an int8 "
                             "constant behind a scale: their 8-bit range cannot be halved")
    halved = np.clip(np.round(weights.q.astype(np.float32) / 2), -SEVEN_BIT_WEIGHT_MAX,
                     SEVEN_BIT_WEIGHT_MAX).astype(np.int8)
    weights.convert.input(0).replace_source_output(opset13.constant(halved).output(0))
    weights.multiply.input(1).replace_source_output(opset13.constant(weights.scale * 2).output(0))
    model.validate_nodes_and_infer_types()
    return True


class OpenVINOSession:
    """Run a TomoGAN model with OpenVINO on the CPU.

    Parameters
    ----------
    model_path : path-like
        The fp32 ONNX model (fp32, bf16) or the NNCF int8 IR (int8).
    precision : {"fp32", "bf16", "int8"}
        Arithmetic precision.
    threads : int, optional
        Inference threads.
    isolated_spikes : bool
        The frames may hold isolated spikes (zingers in raw projections). An int8 IR
        then gets each pixel beyond its input range whose 3x3 median is inside it as that
        median, like the full-int8 LiteRT model (:class:`bluesky_tomogan.int8.InputGrid`).
    input_range : (float, float), optional
        The int8 calibration's input range (the card's
        ``files.openvino_int8.quantization.input_range``), for an IR whose first
        convolution stayed in float: its input is not quantised, but the stem's int8
        output clips a zinger all the same, so ``isolated_spikes`` applies to pixels
        beyond this range (the export's accuracy control measured it so).
    full_range_weights : bool
        An int8 IR whose first layer also has 8-bit weights (the card's
        ``overflow_fix: "disable"``): on an x86 CPU without VNNI (:func:`int8_sums_exact`),
        where its sums would saturate, that layer gets 7-bit weights at load
        (:func:`seven_bit_first_layer`). Hidden layers can still saturate there, which is
        why ``precision="auto"`` trusts int8 on such a CPU only by losses measured on one
        (:func:`int8_numerics`).
    float_precision : {"f32", "bf16"}, optional
        What an int8 IR's float parts computed in when its card's loss was measured (the
        entry's ``float_precision``). ``"f32"`` keeps them in fp32 where this CPU would run them
        in bf16 (:func:`int8_float_precision`): an IR that keeps its full-resolution
        convolutions in float for precision (the light slice model's) holds its measured loss
        only so. ``None`` or ``"bf16"``: the CPU's choice.
    """

    backend = "openvino"
    fixed_shape: tuple[int, int] | None = None
    max_batch = 16

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        precision: str = "fp32",
        threads: int | None = None,
        isolated_spikes: bool = False,
        input_range: tuple[float, float] | None = None,
        full_range_weights: bool = False,
        float_precision: str | None = None,
    ) -> None:
        if not available():
            raise BackendUnavailableError("openvino is not installed: pip install openvino")
        if precision not in ("fp32", "bf16", "int8"):
            raise PrecisionError(f"openvino backend supports fp32, bf16, int8; not {precision!r}")
        if precision == "bf16" and not supports_bf16():
            raise PrecisionError("this CPU has no native bf16 (needs AVX-512 BF16 or AMX)")
        self._core = openvino_core()
        try:
            self._model = self._core.read_model(str(Path(model_path)))
        except Exception as exc:  # openvino raises RuntimeError subclasses on bad files
            raise ModelLoadError(f"OpenVINO cannot read {model_path}: {exc}") from exc
        #: The int8 numerics of this CPU (:func:`int8_numerics`): ``"no-vnni"`` or ``None``.
        self.int8_numerics = int8_numerics() if precision == "int8" else None
        if self.int8_numerics == NO_VNNI and full_range_weights and seven_bit_first_layer(self._model):
            log.info("%s: first layer's weights halved to 7 bits (NNCF's overflow fix, at load): this x86 CPU "
                     "has no VNNI, and its 8-bit sums saturate a 16-bit pair on bright input frames",
                     Path(model_path).name)
        #: Transposed convolutions rewritten as convolutions and pixel shuffles at load (:mod:`.sub_pixel`).
        self.sub_pixel_rewrites = 0
        if precision == "int8" and not int8_transposed_convolutions_native():
            self.sub_pixel_rewrites = sub_pixel_transposed_convolutions(self._model)
            if self.sub_pixel_rewrites:
                log.info("%s: %d transposed convolutions run as convolutions and pixel shuffles (the same int8 "
                         "weights): OpenVINO has no int8 transposed convolution on this CPU (no AVX-512)",
                         Path(model_path).name, self.sub_pixel_rewrites)
        self.precision = precision
        self.isolated_spikes = isolated_spikes
        #: The int8 grid of the IR's input, or ``None`` where the input is not quantised (fp32, bf16,
        #: and int8 IRs whose first convolution stayed in float).
        self.input_grid = input_fake_quantize_grid(self._model) if precision == "int8" else None
        self._spike_grid = self.input_grid
        if self._spike_grid is None and precision == "int8" and input_range is not None:
            self._spike_grid = InputGrid.from_range(*input_range)
        #: What the graph's float operations compute in ("f32" or "bf16").
        self.float_precision = "bf16" if precision == "bf16" else "f32"
        if precision == "int8":
            self.float_precision = ir_float_precision(self._model)
            if float_precision == "f32" and self.float_precision != "f32":
                # the card's loss was measured with fp32 float parts; bf16 ones would round the
                # float convolutions' inputs and weights to 8 significant bits, unmeasured
                log.info("%s: float parts in fp32, as its int8 loss was measured (bf16 is not measured)",
                         Path(model_path).name)
                self.float_precision = "f32"
        self._config: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": self.float_precision,
        }
        if threads:
            self._config["INFERENCE_NUM_THREADS"] = int(threads)
        self._compiled: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        self._lock = threading.Lock()

    def _request(self, shape: tuple[int, ...]) -> Any:
        """The infer request compiled for ``shape``: one per input shape, the most recently used kept
        within :data:`COMPILED_PIXEL_BUDGET` (each holds its activations: about 300 MB at 1024x1024)."""
        with self._lock:
            req = self._compiled.get(shape)
            if req is not None:
                self._compiled.move_to_end(shape)
                return req
            model = self._model.clone()
            model.reshape({model.inputs[0].any_name: list(shape)})
            compiled = self._core.compile_model(model, "CPU", self._config)
            req = self._compiled[shape] = compiled.create_infer_request()
            while len(self._compiled) > 1 and sum(b * h * w for b, _, h, w in self._compiled) > COMPILED_PIXEL_BUDGET:
                dropped, _ = self._compiled.popitem(last=False)
                log.debug("compiled shape %s dropped: the least recently used", dropped)
            return req

    @property
    def compiled_shapes(self) -> list[tuple[int, ...]]:
        """Input shapes with a compiled model held, least recently used first."""
        with self._lock:
            return list(self._compiled)

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, np.float32)
        if self._spike_grid is not None and self.isolated_spikes:
            batch = np.ascontiguousarray(self._spike_grid.despiked(batch)[0], np.float32)
        req = self._request(batch.shape)
        # the request reads the batch where it lies (a contiguous float32 array that outlives this
        # synchronous call): OpenVINO's default copy into its own tensor cost 2 ms per 5x1024x1024 context
        req.infer({0: batch}, share_inputs=True)
        return np.array(req.get_output_tensor(0).data, copy=True)

    def input_as_seen(self, x: np.ndarray) -> np.ndarray:
        # bf16 rounds the network's input; an int8 IR with a quantised input rounds and clips it
        if self.input_grid is not None:
            return self.input_grid.as_seen(x, self.isolated_spikes)
        if self._spike_grid is not None and self.isolated_spikes:
            return self._spike_grid.despiked(x)[0]
        return round_to_bf16(x) if self.precision == "bf16" else x


def input_fake_quantize_grid(model: Any) -> InputGrid | None:
    """The grid of the ``FakeQuantize`` that reads an OpenVINO model's input directly, or ``None``.

    NNCF quantises the input of an IR whose first convolution runs in int8 with one
    per-tensor ``FakeQuantize`` (constant ranges, input range = output range).
    """
    for target in model.inputs[0].get_target_inputs():
        node = target.get_node()
        if node.get_type_name() != "FakeQuantize":
            continue
        bounds = [node.input(i).get_source_output().get_node() for i in (1, 2)]
        if any(b.get_type_name() != "Constant" for b in bounds):
            return None
        lo, hi = (float(np.asarray(b.get_data()).reshape(-1)[0]) for b in bounds)
        return InputGrid.from_range(lo, hi, int(node.get_levels())) if hi > lo else None
    return None


def round_to_bf16(x: np.ndarray) -> np.ndarray:
    """``x`` (float32, finite) rounded to the nearest bfloat16, ties to even, as float32."""
    bits = np.array(x, np.float32).view(np.uint32)  # a copy, rounded in place
    lsb = bits >> np.uint32(16)
    lsb &= np.uint32(1)
    bits += np.uint32(0x7FFF)
    bits += lsb
    bits &= np.uint32(0xFFFF0000)
    return bits.view(np.float32)
