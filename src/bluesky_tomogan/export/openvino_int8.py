"""What every OpenVINO int8 IR of a generator shares, and its quantisation-aware form.

:func:`bluesky_tomogan.export.pipeline._export_openvino_int8` quantises after training
(NNCF post-training quantisation, with accuracy control for the shipped models).
:func:`quantisation_aware_ir` starts from exactly the same quantisers and then fine-tunes
the weights and the quantisers' ranges with the int8 rounding in the forward pass (NNCF's
PyTorch fake quantisers, straight-through gradients), for the networks whose full-resolution
layers post-training quantisation cannot hold: on slices, the light slice network lost
0.0142 SSIM with every convolution in int8 (held-out slices, 0.9285 -> 0.9143; docs/models.md).

Both prepare the network the same way (:func:`prepared_for_int8`): calibration inputs clipped
to the TFLite export's percentiles, activations equalised, offset copies of the stem's output,
min/max activation ranges, 8-bit weights in the first layer too, the output layer in float.
"""

from __future__ import annotations

import copy
import logging
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..int8 import TFLITE_INPUT_PERCENTILES, int8_input_range
from ..model.network import TomoGANGenerator
from ..simulate.datasets import PairSet
from .copies import offset_activation_copies
from .equalise import equalise_activations
from .fused_decoder import DECODER_LEVELS, fuse_decoders, fused_sum_patterns

__all__ = ["OPENVINO_ACTIVATION_COPIES", "activation_grids", "convolutions_in_float", "float_activations",
           "ir_record", "nncf_parameters", "overflow_fix", "prepared_for_int8", "quantisation_aware_ir"]

log = logging.getLogger(__name__)

#: Offset copies in the OpenVINO int8 IR: the stem's only (its output layer stays in float).
OPENVINO_ACTIVATION_COPIES: dict[str, int] = {"stem.0": 4}


def prepared_for_int8(net: TomoGANGenerator, calib: np.ndarray, copies: Mapping[str, int] | None = None,
                      weight_bits: int = 8) -> tuple[TomoGANGenerator, np.ndarray, tuple[float, float], dict[str, Any]]:
    """The network and calibration frames as NNCF should see them, the input range, and their record.

    The calibration frames are clipped to the TFLite export's input percentiles (one zinger
    otherwise sets the input's int8 range), the activations equalised (:mod:`.equalise`) and
    the named layers' outputs given offset copies (``copies``, default
    :data:`OPENVINO_ACTIVATION_COPIES`; :mod:`.copies`): the same function in float, a finer
    int8 grid, and as many times the input channels for the layers that read them.
    ``weight_bits`` (:func:`nncf_parameters`) is recorded as NNCF's ``overflow_fix``.
    """
    copies = dict(OPENVINO_ACTIVATION_COPIES if copies is None else copies)
    lo, hi = int8_input_range(calib)
    calib = np.clip(calib, lo, hi).astype(np.float32)
    net = offset_activation_copies(equalise_activations(net, calib), calib, copies)
    record: dict[str, Any] = {"preset": "mixed", "activation_ranges": "min-max",
                              "overflow_fix": overflow_fix(weight_bits),
                              "input_range": [lo, hi], "input_percentiles": list(TFLITE_INPUT_PERCENTILES),
                              "equalised": True, "activation_copies": copies,
                              "output_layer_in_float": True}
    return net, calib, (lo, hi), record


def nncf_parameters(weight_bits: int = 8) -> Any:
    """NNCF's advanced parameters of every int8 IR: min/max activation ranges, 8-bit weights everywhere.

    The extremes over all calibration frames, as TFLite calibrates: NNCF's default (the mean
    of each frame's extremes) gives narrower ranges that the hardest frames overflow. NNCF's
    default ``overflow_fix`` would give the first layer 7-bit weights, which cost the light
    projection model most where frames are faint and noisy (docs/backends.md); on an x86 CPU
    without VNNI the OpenVINO session halves that layer's weights at load instead
    (:func:`~bluesky_tomogan.inference.backends.openvino.seven_bit_first_layer`).

    ``weight_bits=7`` gives *every* convolution 7-bit weights (NNCF's ``OverflowFix.ENABLE``),
    for a quantisation-aware IR trained on that grid: no 16-bit pair sum of such an IR can
    saturate on a CPU without VNNI, so its int8 numerics, and its measured loss, are the same
    on every x86 CPU.

    Raises
    ------
    ValueError
        ``weight_bits`` is neither 7 nor 8.
    """
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    return AdvancedQuantizationParameters(activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX,
                                          overflow_fix=OverflowFix[overflow_fix(weight_bits).upper()])


def overflow_fix(weight_bits: int) -> str:
    """NNCF's ``overflow_fix`` for weights of ``weight_bits`` (:func:`nncf_parameters`), as the card records
    it: ``"disable"`` (8) or ``"enable"`` (7). Checked without NNCF, before any slow step.

    Raises
    ------
    ValueError
        ``weight_bits`` is neither 7 nor 8.
    """
    if weight_bits not in (7, 8):
        raise ValueError(f"int8 IR weights are 8 or 7 bits (7: none of their sums saturates without VNNI), "
                         f"got {weight_bits}")
    return "disable" if weight_bits == 8 else "enable"


def ir_record(model: Any) -> dict[str, Any]:
    """What an int8 OpenVINO model holds: its ``FakeQuantize`` operations and its convolutions, all and in float."""
    from ..inference.backends.openvino import CONVOLUTIONS, float_convolutions

    return {"fake_quantize_ops": sum(1 for op in model.get_ops() if op.get_type_name() == "FakeQuantize"),
            "convolutions": sum(1 for op in model.get_ops() if op.get_type_name() in CONVOLUTIONS),
            "convolutions_in_float": float_convolutions(model)}


def activation_grids(model: Any) -> list[tuple[str, Any]]:
    """The activation ``FakeQuantize`` operations of an int8 IR converted from the PyTorch network,
    in graph order, each with the module whose output it rounds (``"enc1.0"``); weights' grids
    (on constants) are left out."""
    grids = []
    for op in model.get_ordered_ops():
        if op.get_type_name() == "FakeQuantize" and op.input_value(0).get_node().get_type_name() != "Constant":
            # OpenVINO names a converted PyTorch module's operations "__module.<path>/<op>/..."
            producer = str(op.input_value(0).get_node().get_friendly_name())
            grids.append((producer.split("/", 1)[0].removeprefix("__module."), op))
    return grids


def float_activations(model: Any, layers: Sequence[str]) -> list[str]:
    """Let the convolutions that read the named layers' outputs read them in float, in place.

    Each such output passes an activation ``FakeQuantize`` (its int8 grid, with the ReLU fused
    in). The convolutions reading it read it clamped to the same range instead (the ReLU and the
    clipping kept, the rounding gone), with their kernels dequantised to float constants, so they
    run in float and count as float (:func:`~bluesky_tomogan.inference.backends.openvino.float_mac_share`);
    other readers (a max-pool into the next level) keep the int8 grid. No training: it tells what
    an int8 IR loses to each grid (``benchmarks/int8_activation_grids.py``). The light slice
    model's IR lost 0.0081 mean / 0.0321 worst-frame SSIM on its card's frames, mostly on
    low-contrast and 8-bit scans, and -0.0001 / 0.0076 with the outputs of ``stem.0 enc1.0 enc1.2
    dec1.0`` read in float; an IR trained so from the start keeps those convolutions in float
    (``export --qat-float``; docs/backends.md, "Full-resolution convolutions in float").

    Parameters
    ----------
    model : openvino.Model
        An int8 IR converted from the PyTorch network (its operations named by module).
    layers : sequence of str
        Module names of ReLU-activated layers (``"enc1.0"``).

    Returns
    -------
    list of str
        The convolutions (friendly names) that now read a float input.
    """
    from openvino import opset13

    from ..inference.backends.ir_weights import int8_weights
    from ..inference.backends.openvino import CONVOLUTIONS

    wanted, changed, matched = set(layers), [], set()
    for layer, fq in activation_grids(model):
        if layer not in wanted:
            continue
        readers = [t for t in fq.output(0).get_target_inputs() if t.get_node().get_type_name() in CONVOLUTIONS]
        if not readers:
            continue
        matched.add(layer)
        # the grid's own (per-tensor or per-channel) bounds, as the rounding clipped
        clamped = opset13.maximum(opset13.minimum(fq.input_value(0), fq.input_value(2)), fq.input_value(1))
        for reader in readers:
            conv = reader.get_node()
            reader.replace_source_output(clamped.output(0))
            weights = int8_weights(conv)
            if weights is not None:
                conv.input(1).replace_source_output(opset13.constant(weights.dequantised()).output(0))
            changed.append(conv.get_friendly_name())
    missing = [layer for layer in layers if layer not in matched]
    if missing:  # already read in float, or named otherwise in this IR
        log.warning("no convolution of the IR reads %s through an int8 grid; nothing to change there", missing)
    model.validate_nodes_and_infer_types()
    return changed


def convolutions_in_float(net: TomoGANGenerator, keep_float: Sequence[str] = ()) -> list[str]:
    """The convolutions a quantisation-aware IR keeps in float: the output layer and those of ``keep_float``.

    For an ``"edge"`` network the names are those of the fused form the IR is made of
    (:func:`~.fused_decoder.fuse_decoders`): a decoder's ``dec1.0`` is its two halves, ``dec1.0.skip`` (the
    skip input's convolution, at full resolution for level 1) and ``dec1.0.up`` (the transposed
    convolution of the level below), and either can be named alone.

    Raises
    ------
    ValueError
        A name of ``keep_float`` that is no module holding a convolution of ``net``.
    """
    from torch import nn

    form = fuse_decoders(net) if net.config.upsampled_padding == "edge" else net
    convs = [name for name, mod in form.named_modules() if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d))]
    unknown = [k for k in keep_float if not any(c == k or c.startswith(k + ".") for c in convs)]
    if unknown:
        raise ValueError(f"no convolution named {unknown} in the network; it has {convs}")
    return [c for c in convs if c == convs[-1] or any(c == k or c.startswith(k + ".") for k in keep_float)]


def quantisation_aware_ir(
    net: TomoGANGenerator, xml_path: Path, calib: np.ndarray, train: PairSet, steps: int, *,
    lr: float = 2e-5, batch: int = 16, patch: int = 96, pixel: str = "l1+ssim", add_centre: bool = True,
    validation: PairSet | None = None, keep_float: Sequence[str] = (), copies: Mapping[str, int] | None = None,
    distill: float = 0.0, seed: int = 0, progress: bool = False, context_dropout: float = 0.0,
    float_sums: Sequence[int] = DECODER_LEVELS, weight_bits: int = 8,
) -> tuple[Path, dict[str, Any]]:
    """An OpenVINO int8 IR of ``net`` fine-tuned with its int8 rounding simulated.

    NNCF places its quantisers in the PyTorch network as it places them in the post-training
    IR (:func:`prepared_for_int8`, :func:`nncf_parameters`) and calibrates them on ``calib``;
    then ``steps`` batches of training patches fine-tune the weights and the quantisers'
    ranges with the model's loss, on the output as the Denoiser makes it (the input saturated
    by the input quantiser, the centre frame added in float and unclipped, as
    :meth:`~bluesky_tomogan.int8.InputGrid.as_seen` adds it). The converted IR carries
    the fine-tuned weights; the model's float forms (ONNX, PyTorch) keep the trained ones,
    so the card's int8 loss is measured against the float network as trained.

    Parameters
    ----------
    net : TomoGANGenerator
        The network the ONNX export wrote (the correction network for a residual model).
        Not modified.
    xml_path : Path
        Where the IR goes (``.bin`` beside it).
    calib : numpy.ndarray
        ``(n, depth, h, w)`` calibration frames (:func:`~.pipeline.calibration_frames`).
    train : PairSet
        Training pairs for the fine-tuning patches.
    steps : int
        Batches of fine-tuning (positive).
    lr : float
        Adam's first learning rate (small: the weights start trained), decayed to zero over
        the steps along a cosine.
    batch, patch : int
        Patches per batch and their edge.
    pixel : str
        The pixel loss (:func:`~bluesky_tomogan.model.losses.pixel_loss`): the model's own.
    add_centre : bool
        The network computes a correction that the Denoiser adds to the centre frame.
    validation : PairSet, optional
        Frames whose SSIM in simulated int8 is logged and recorded before and after.
    keep_float : sequence of str
        Module names (``"dec1.2"``, ``"head"``) whose convolutions stay in float, besides
        the output layer.
    copies : mapping of str to int, optional
        Offset copies of layers' outputs (default: the post-training IR's,
        :data:`OPENVINO_ACTIVATION_COPIES`; ``{}``: none). Each copy adds the input channels
        of the layers that read it to their int8 work; the fine-tuning trains the quantisers'
        ranges, so it may need fewer copies than post-training quantisation does.
    distill : float
        Share of the loss, in [0, 1], taken against the float network's own output instead of
        the clean target: the card measures the int8 IR against that output, and it is what
        the int8 rounding should not change (0: the clean target only).
    seed : int
        Seed of the patches and of torch.
    progress : bool
        Show a progress bar.
    context_dropout : float
        Share of patches with neighbours withheld (:class:`~bluesky_tomogan.model.data.PatchSampler`),
        as the network was trained: the IR keeps denoising frames without their context.
    float_sums : sequence of int
        For an ``"edge"`` network (whose decoders the IR runs fused): the decoder levels (1 at
        full resolution, 3 the deepest) whose sum of the two halves stays in float; the others'
        inputs are rounded to int8, which is faster. All three by default.
    weight_bits : {8, 7}
        7: every convolution's weights on a 7-bit grid (:func:`nncf_parameters`), trained so, for an
        IR whose sums cannot saturate on an x86 CPU without VNNI.

    Returns
    -------
    (Path, dict)
        The IR and the card's record of how it was made.
    """
    import nncf
    import openvino as ov
    import torch
    from tqdm.auto import tqdm

    from ..inference.backends.openvino import input_fake_quantize_grid
    from ..model.data import PatchSampler
    from ..model.losses import pixel_loss
    from ..model.train import _validate
    from .onnx import fused_form

    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    if not 0.0 <= distill <= 1.0:
        raise ValueError(f"distill is a share of the loss, in [0, 1]; got {distill}")
    in_float = convolutions_in_float(net, keep_float)  # before the slow steps
    sum_patterns = fused_sum_patterns(float_sums)
    torch.manual_seed(seed)
    teacher = copy.deepcopy(net).eval() if distill else None
    # offset_activation_copies checks the copies' layer names before NNCF and the training start
    overflow_fix(weight_bits)  # an unknown width fails before the slow steps
    net, calib, (lo, hi), record = prepared_for_int8(net, calib, copies, weight_bits)
    sums_in_float: list[str] = []
    if net.config.upsampled_padding == "edge":
        # the form the ONNX export writes, so the IR is as fast as the post-training one. Each fused
        # decoder's sum stays in float: NNCF would quantise both of its inputs, signed maps before the
        # ReLU that the trained form never rounds, and with them the light slice network's IR lost
        # 0.0231 mean SSIM on its card, without them 0.0079 (session 28, docs/models.md). The deeper
        # sums cost the most time in float and the least quality in int8: the light projection
        # model's IR with only the full-resolution sum in float ran 115 ms against 121 ms with
        # all three, at the same quality (session 34, docs/models.md)
        net = fused_form(net)
        sums_in_float = sum_patterns
    # NNCF compiles a C++ extension for its PyTorch quantisers at first use (a few minutes on 2 cores,
    # then cached); its default limit of 60 s can kill that build and leave a lock behind
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "900")
    # NNCF's PyTorch graph names a module's operations "<module path with />/<op>/<n>"
    # the names as given (a whole decoder's "dec2.0" keeps its sum in float too, as its halves' names
    # would not), and the output layer
    scope = nncf.IgnoredScope(patterns=[c.replace(".", "/") + "/.*" for c in (*keep_float, in_float[-1])]
                              + sums_in_float)
    qnet = nncf.quantize(net.eval(), nncf.Dataset([torch.from_numpy(x[None]) for x in calib]),
                         subset_size=len(calib), preset=nncf.QuantizationPreset.MIXED,
                         advanced_parameters=nncf_parameters(weight_bits), ignored_scope=scope)
    centre = net.config.in_channels // 2

    def with_centre(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return y + x[:, centre:centre + 1] if add_centre else y

    class AsRun(torch.nn.Module):
        """The output as the Denoiser makes it."""

        config = net.config

        def __init__(self) -> None:
            super().__init__()
            self.qnet = qnet

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # the input quantiser saturates the network's input at its (trainable) range, and the
            # session adds the centre frame beyond that range unclipped (int8.InputGrid.as_seen):
            # clamping before the network as well taught it a frame the session never makes, and
            # kept the range from widening (light slice model, worst card frame 0.0105)
            return with_centre(self.qnet(x), x)

    as_run = AsRun()
    # _validate reads only `config` and calls the module, which AsRun provides
    before = _validate(as_run, validation, 24)["val_ssim"] if validation is not None else None  # type: ignore[arg-type]
    sampler = PatchSampler(train, patch, net.config.in_channels, seed, context_dropout=context_dropout)
    opt = torch.optim.Adam(qnet.parameters(), lr=lr)
    # at a constant 2e-5 the light slice model's simulated int8 SSIM stopped rising after 400 of
    # 2,100 steps, moving by +-0.0005 around its level; the steps end at a learning rate of zero
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    t0 = time.perf_counter()
    as_run.train()
    for _ in tqdm(range(steps), disable=not progress, desc="int8-aware (OpenVINO)"):
        xb, yb = sampler.batch(batch)
        x = torch.from_numpy(xb)
        out = as_run(x)
        loss = pixel_loss(out, torch.from_numpy(yb), pixel)  # type: ignore[arg-type]
        if teacher is not None:
            with torch.no_grad():
                target = with_centre(teacher(x), x)
            loss = (1 - distill) * loss + distill * pixel_loss(out, target, pixel)  # type: ignore[arg-type]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
    wall = time.perf_counter() - t0
    after = _validate(as_run, validation, 24)["val_ssim"] if validation is not None else None  # type: ignore[arg-type]
    qnet.eval()
    with warnings.catch_warnings():  # the tracer's notes on NNCF's range constants
        warnings.simplefilter("ignore")
        model = ov.convert_model(qnet, example_input=torch.from_numpy(calib[:1]),
                                 input=[ov.PartialShape([-1, net.config.in_channels, -1, -1])])
    ov.save_model(model, str(xml_path), compress_to_fp16=False)
    grid = input_fake_quantize_grid(model)
    if grid is not None:  # the trained range, which the session reads from the IR
        record["input_range"] = [float((q - grid.zero) * grid.scale) for q in (grid.qmin, grid.qmax)]
        record["input_range_calibrated"] = [lo, hi]
    record |= {"method": "nncf quantization-aware training", "steps": steps, "lr": lr, "lr_schedule": "cosine",
               "batch": batch, "patch": patch, "pixel_loss": pixel, "distill": distill, "weight_bits": weight_bits,
               "wall_time_s": round(wall, 1),
               "kept_in_float": in_float}
    if net.config.upsampled_padding == "edge":
        levels = sorted(set(float_sums))
        record["decoders"] = ("fused into transposed convolutions, "
                              + (f"the sums of decoders {levels} in float (1: full resolution)" if levels
                                 else "every sum in int8"))
        record["decoder_sums_in_float"] = levels
    if validation is not None:
        record |= {"val_ssim_int8_simulated_before": before, "val_ssim_int8_simulated_after": after}
        log.info("int8-aware fine-tuning of the OpenVINO IR: simulated int8 SSIM %.4f -> %.4f in %d steps (%.0f s)",
                 before, after, steps, wall)
    return xml_path, record | ir_record(model)
