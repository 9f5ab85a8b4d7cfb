"""Export a trained model to every deployable form and measure what each costs in quality.

``export_model`` reads a training output (``<name>.pt`` + ``<name>.json``),
writes the requested formats next to a copy of the card, calibrates the int8
models on normalised frames from the training data, and then measures every
(backend, precision) pair through the full :class:`Denoiser` path on the
dataset's test frames. The SSIM drop vs fp32 goes into the card's
``quantization`` section, which ``load_denoiser(precision="auto")`` reads.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..despike import PROJECTION_DESPIKE_SIGMAS
from ..errors import ExportOptionError, OutputPathError
from ..frames import context_indices
from ..inference.registry import REGISTRY, SSIM_TOLERANCE, SSIM_TOLERANCE_WORST, configurations
from ..inference.tiling import pad_to
from ..int8 import OUTPUT_COPIES, TFLITE_INPUT_PERCENTILES, InputGrid
from ..metrics import psnr, ssim
from ..model.allinone import PrunePlan, prune, ratio_key
from ..model.data import normalised_frames
from ..model.network import TomoGANGenerator
from ..model.train import load_generator
from ..modelcard import ModelCard, card_in_directory, read_card, sha256_of, write_card
from ..simulate.datasets import PairSet, read_dataset
from .copies import check_activation_copies, default_activation_copies, offset_activation_copies
from .fused_decoder import DECODER_LEVELS, fused_sum_patterns
from .onnx import export_onnx
from .openvino_int8 import (
    convolutions_in_float,
    ir_record,
    nncf_parameters,
    overflow_fix,
    prepared_for_int8,
    quantisation_aware_ir,
)
from .tensorrt_check import check_tensorrt_parsable
from .tflite import DEFAULT_TILE, export_tflite_int8

__all__ = ["FORMATS", "calibration_frames", "export_model", "measure_quality", "record_quality"]

log = logging.getLogger(__name__)
FORMATS = ("onnx", "tflite", "openvino")


def calibration_frames(pairs: PairSet, n: int, size: int, depth: int = 3, seed: int = 0) -> np.ndarray:
    """``(n, depth, size, size)`` normalised context frames for int8 calibration.

    Frames smaller than ``size`` are reflection-padded exactly as inference pads them.
    """
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(pairs.ns), size=min(n, len(pairs.ns)), replace=False)
    out = []
    for i in idx:
        x = pad_to(normalised_frames(pairs, int(i), depth)[0], size, size)
        h, w = x.shape[-2:]
        r, c = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
        out.append(x[:, r : r + size, c : c + size])
    return np.stack(out).astype(np.float32)


def _export_openvino_int8(
    net: TomoGANGenerator, xml_path: Path, calib: np.ndarray, validation: PairSet | None = None,
    max_drop: float = 0.004, add_centre: bool = True, isolated_spikes: bool = False,
    copies: Mapping[str, int] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """NNCF int8 IR of ``net`` (the network the ONNX export wrote), made as the full-int8 TFLite model is.

    Before NNCF places its quantisers, the calibration frames are clipped to the TFLite export's
    input percentiles (one zinger otherwise sets the input's int8 range and leaves the frame a
    handful of levels), the activations are equalised (:mod:`.equalise`) and the stem's output
    gets offset copies (:func:`.openvino_int8.prepared_for_int8`): the same function in float, a
    finer int8 grid. The output layer (one convolution to the one-channel correction) stays in
    float: its int8 rounding would land on the result unaveraged, and in float it needs no
    copies of the head's output, which cost more than they save (the light projection model at
    1024x1024 on an AMD EPYC: 169 ms with the head's copies and the output layer returned to
    float by the accuracy control, 134 ms without the copies, the same SSIM to 0.0001 on
    held-out and test frames). The input range is then the IR's input ``FakeQuantize`` (and
    ``input_range`` in the returned record, for an IR whose first convolution the accuracy
    control returned to float), which the OpenVINO session uses to treat saturated pixels as the
    LiteRT one does (:class:`~bluesky_tomogan.int8.InputGrid`). Activation ranges are the
    extremes over all calibration frames (as TFLite calibrates), not NNCF's default mean of each
    frame's extremes, which the hardest frames overflow. Measured on All-in-One ratio 50
    (held-out projections, 24 frames; SSIM 0.9728 in fp32): every convolution in int8 with
    NNCF's plain calibration 0.7094; with the clipped input range 0.9681, equalised 0.9694, with
    the copies 0.9705, and with the saturated pixels handled on the host 0.9713; faint samples
    at 20 photons/pixel (fp32 0.7487): 0.3612 with NNCF's default ranges, 0.7391 with the
    extremes. Every layer's weights use the whole int8 range, the first one's too: NNCF's
    default ``overflow_fix`` halves the first layer's (7-bit weights, for x86 CPUs without VNNI,
    whose 8-bit dot products can saturate a 16-bit sum), and on the stem, which mixes the three
    context frames, that cost the light projection model 0.0049 SSIM on faint samples at 20
    photons/pixel (0.7382 -> 0.7431, fp32 0.7487) and 0.0017-0.0032 at 20-60 photons on faint
    and medium ones. Such an IR is recorded (``overflow_fix: "disable"``) and the OpenVINO
    session refuses it in int8 on an x86 CPU without VNNI
    (:func:`~bluesky_tomogan.inference.backends.openvino.int8_sums_exact`), so ``auto`` goes on
    to bf16 or fp32 there.

    With ``validation`` frames (those :func:`measure_quality` scores for the card), NNCF's
    accuracy control measures SSIM against the clean frames and returns the most sensitive
    layers to full precision until the mean drop vs fp32 is at most ``max_drop`` and the
    worst frame's at most ``max_drop`` times the ratio of ``auto``'s two int8 tolerances
    (:data:`~bluesky_tomogan.inference.registry.SSIM_TOLERANCE_WORST` over
    :data:`~bluesky_tomogan.inference.registry.SSIM_TOLERANCE`: 0.008); everything else
    stays int8. Without the worst-frame condition All-in-One ratio 50 kept every layer in
    int8 at a mean drop of -0.0002 but 0.0140 on its worst frame, so ``auto`` passed it over.
    """
    import tempfile

    import nncf
    import openvino as ov

    from ..inference.backends.openvino import CONVOLUTIONS, openvino_core

    net, calib, (lo, hi), info = prepared_for_int8(net, calib, copies)
    grid = InputGrid.from_range(lo, hi)
    calibration = nncf.Dataset([x[None] for x in calib])
    ranges = nncf_parameters()
    info["method"] = "nncf post-training"
    with tempfile.TemporaryDirectory() as tmp:
        model = openvino_core().read_model(str(export_onnx(net, Path(tmp) / "int8-source.onnx")))
        conv_names = [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() in CONVOLUTIONS]
        output_layer = nncf.IgnoredScope(names=conv_names[-1:])
        if validation is None:
            quantized = nncf.quantize(model, calibration, subset_size=len(calib), ignored_scope=output_layer,
                                      preset=nncf.QuantizationPreset.MIXED, advanced_parameters=ranges)
        else:
            mid = calib.shape[1] // 2

            def denoised(compiled: Any, seen: np.ndarray) -> np.ndarray:
                # the centre added unrounded (conservative: the session adds it rounded)
                return np.asarray(compiled(seen)[0][0, 0] + (seen[0, mid] if add_centre else 0.0))

            # the card's loss is against fp32, and OpenVINO compiles in bf16 by default on CPUs
            # with bf16 (an AMD EPYC too), which understated the worst frame's drop by ~0.002
            reference = openvino_core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
            items = []
            for i in quality_frames(validation):
                x, y = normalised_frames(validation, i, calib.shape[1])
                # the input as the OpenVINO session gives it to the IR (saturated zingers at their
                # median), once per frame rather than once per model NNCF validates
                seen = grid.despiked(x[None])[0] if isolated_spikes else x[None]
                items.append((seen, y[0], ssim(y[0], denoised(reference, seen))))
            worst_factor = SSIM_TOLERANCE_WORST["int8"] / SSIM_TOLERANCE["int8"]

            def validate(compiled: Any, data: Any) -> float:
                # `auto` takes int8 only within a mean *and* a worst-frame tolerance; NNCF controls
                # one number, so the worst frame's drop counts at the ratio of the two tolerances
                data = list(data)
                drops = [fp32 - ssim(y, denoised(compiled, x)) for x, y, fp32 in data]
                reference_mean = float(np.mean([fp32 for _, _, fp32 in data]))
                return reference_mean - max(float(np.mean(drops)), max(drops) / worst_factor)

            quantized = nncf.quantize_with_accuracy_control(
                model, calibration, nncf.Dataset(items, lambda item: item), validation_fn=validate,
                max_drop=max_drop, drop_type=nncf.DropType.ABSOLUTE, subset_size=len(calib),
                preset=nncf.QuantizationPreset.MIXED, advanced_quantization_parameters=ranges,
                ignored_scope=output_layer,
            )
            info |= {"method": "nncf accuracy control", "max_ssim_drop": max_drop,
                     "max_ssim_drop_worst_frame": max_drop * worst_factor, "validation_frames": len(items)}
        ov.save_model(quantized, str(xml_path), compress_to_fp16=False)
    return xml_path, info | ir_record(quantized)


def _tflite_macs(net: TomoGANGenerator, calib: np.ndarray, copies: Mapping[str, int]) -> float:
    """Multiply-accumulates per pixel of ``net`` as the TFLite export widens it."""
    return offset_activation_copies(net, calib[:4], copies).macs_per_pixel()


#: Test frames the export scores each model on (spread evenly over the test split).
QUALITY_FRAMES = 48
#: Largest edge of what the export measures and calibrates OpenVINO on: larger test frames are
#: scored on their centre square of this edge, and calibrated on random crops of it. Scoring
#: 48 whole frames on every backend and NNCF's accuracy control on them grew with the frame's
#: area and made the export of a 512-wide fine-tune take longer than the fine-tune's default
#: 15 minutes; int8's loss is a property of the network's local arithmetic, which a 256x256
#: crop shows (the shipped cards were measured on 128x128 frames).
MEASURE_EDGE = 256


def centre_crop(pairs: PairSet, edge: int = MEASURE_EDGE, multiple: int = 1) -> PairSet:
    """``pairs`` with every frame cut to its centre ``edge`` x ``edge`` (views: nothing is copied).

    A side no longer than ``edge`` stays whole, but for its last pixels beyond a ``multiple`` (the
    network's :attr:`~bluesky_tomogan.model.network.GeneratorConfig.size_multiple`, for frames that
    a network's graph takes whole: a fine-tune's half-resolution pairs of a 135-row detector are 67
    rows).
    """
    h, w = pairs.ns.shape[1:]
    keep_h, keep_w = min(h, edge), min(w, edge)
    keep_h, keep_w = keep_h - keep_h % multiple, keep_w - keep_w % multiple
    r, c = (h - keep_h) // 2, (w - keep_w) // 2
    window = (slice(None), slice(r, r + keep_h), slice(c, c + keep_w))
    return PairSet(pairs.ns[window], pairs.gt[window], pairs.group)


def quality_frames(pairs: PairSet, n_frames: int = QUALITY_FRAMES) -> list[int]:
    """The indices of ``n_frames`` test frames spread evenly over ``pairs``: what the card's quality is measured on."""
    return [int(i) for i in np.unique(np.linspace(0, len(pairs.ns) - 1, min(n_frames, len(pairs.ns))).astype(int))]


def measure_quality(card_path: Path, pairs: PairSet, n_frames: int = QUALITY_FRAMES,
                    only: Sequence[str] | None = None) -> dict[str, Any]:
    """SSIM/PSNR of every available backend/precision vs the clean frames, and the loss vs fp32.

    Each reduced precision gets the mean SSIM loss over the frames (``ssim_drop``) and
    the loss on its worst frame (``ssim_drop_worst``): ``precision="auto"`` needs both
    (:func:`~bluesky_tomogan.inference.load.precision_verdict`), because int8 loses most
    on the noisiest frames and a mean over easy ones hides that. Measure on frames as hard
    as the hardest the model will see (the lowest dose, the sparsest view). Each entry is
    keyed as ``auto`` reads it on this machine
    (:meth:`~bluesky_tomogan.inference.registry.BackendSpec.quality_entry`: OpenVINO int8 on
    an x86 CPU without VNNI is ``openvino/int8@no-vnni``, unless the IR's weights are 7-bit
    throughout) and names the CPU it was measured on. An OpenVINO int8 entry names what the
    IR's float parts computed in (``float_precision``): this CPU's choice, or fp32 where bf16
    ones put the loss beyond ``auto``'s tolerance and fp32 ones do not (the session then keeps
    them fp32 on every CPU).
    ``only`` (``backend/precision`` names) measures those and fp32 alone. Frames larger than
    :data:`MEASURE_EDGE` are measured on their centre square (:func:`centre_crop`), so that the
    measurement takes as long for any detector.
    """
    from ..cpu import cpu_name
    from ..errors import TomoGANError
    from ..inference.load import load_unchecked

    pairs = centre_crop(pairs)
    idx = quality_frames(pairs, n_frames)
    card = ModelCard.read(card_path)

    def score(backend: str, precision: str, float_precision: str | None = None
              ) -> tuple[np.ndarray, np.ndarray, str | None] | None:
        # also what an int8 graph's float parts computed in (OpenVINO): a loss holds for that
        try:
            den = load_unchecked(card_path, backend, precision, float_precision=float_precision)
        except TomoGANError as exc:
            log.info("not measured: %s/%s (%s)", backend, precision, exc)
            return None
        s, p = [], []
        for i in idx:
            ctx = pairs.ns[context_indices(pairs.group, i, den.depth)]
            out = den.denoise_context(ctx)
            s.append(ssim(pairs.gt[i], out))
            p.append(psnr(pairs.gt[i], out))
        return np.array(s), np.array(p), getattr(den.session, "float_precision", None)

    def summary(s: np.ndarray, p: np.ndarray) -> dict[str, Any]:
        return {"ssim": float(s.mean()), "psnr": float(p.mean()), "ssim_min": float(s.min()), "frames": len(idx)}

    measured = score("onnxruntime", "fp32")
    if measured is None:  # every loss is against the fp32 network: nothing to measure without it
        from ..errors import ModelLoadError

        raise ModelLoadError(f"{card.name!r} ({card_path}) has no fp32 ONNX model that loads here, the reference "
                             "every precision's loss is measured against: export it with --format onnx too")
    ref = measured[:2]
    raw = (np.array([ssim(pairs.gt[i], pairs.ns[i]) for i in idx]),
           np.array([psnr(pairs.gt[i], pairs.ns[i]) for i in idx]))
    result: dict[str, Any] = {"raw": summary(*raw), "onnxruntime/fp32": summary(*ref)}
    for backend, precision in [(b, p) for b, p in configurations() if REGISTRY[b].measured_by_export]:
        if only is not None and f"{backend}/{precision}" not in only:
            continue
        r = score(backend, precision)
        if r is not None and r[2] == "bf16" and precision == "int8" and not _within_tolerance(ref[0], r[0], precision):
            # bf16 float parts (AMX, or AVX-512 BF16 measured faster) round the float layers'
            # inputs and weights to 8 significant bits: an IR that keeps its full-resolution
            # layers in float for precision can lose there what its int8 layers do not (the
            # light slice model's, session 45). With fp32 float parts within the tolerance, the
            # entry records those, and the session keeps them fp32 on every CPU
            f32 = score(backend, precision, "f32")
            if f32 is not None and _within_tolerance(ref[0], f32[0], precision):
                log.info("%s/int8: beyond auto's tolerance with bf16 float parts (mean / worst-frame SSIM loss "
                         "%.4f / %.4f), within it with fp32 ones (%.4f / %.4f): recorded with fp32 float parts",
                         backend, *_losses(ref[0], r[0]), *_losses(ref[0], f32[0]))
                r = f32
        if r is not None:
            s_r, p_r, float_precision = r
            mean, worst = _losses(ref[0], s_r)
            result[REGISTRY[backend].quality_entry(precision, card)] = summary(s_r, p_r) | {
                "ssim_drop": mean,
                "ssim_drop_worst": worst,
                "psnr_drop": float(np.mean(ref[1] - p_r)),
                "cpu": cpu_name(),
            } | ({"float_precision": float_precision} if float_precision and precision == "int8" else {})
    return result


def _losses(reference: np.ndarray, measured: np.ndarray) -> tuple[float, float]:
    """Mean and worst-frame SSIM loss of ``measured`` against ``reference``, frame by frame."""
    return float(np.mean(reference - measured)), float(np.max(reference - measured))


def _within_tolerance(reference: np.ndarray, measured: np.ndarray, precision: str) -> bool:
    """Whether ``precision="auto"`` would accept these losses (:func:`~..inference.load.loss_beyond_tolerance`)."""
    from ..inference.load import loss_beyond_tolerance

    return loss_beyond_tolerance(precision, *_losses(reference, measured)) is None


def _int8_float_precision_of(card_path: Path, card: Mapping[str, Any]) -> str:
    """What the float parts of the card's OpenVINO int8 IR compute in on this CPU: as its int8 entry
    was measured (:func:`measure_quality`), else this CPU's choice."""
    from ..inference.backends.openvino import int8_float_precision, ir_float_precision, openvino_core

    measured = card.get("quantization", {}).get("openvino/int8", {}).get("float_precision")
    if measured:
        return str(measured)
    entry = card.get("files", {}).get("openvino_int8")
    if not entry or not (card_path.parent / entry["path"]).is_file():
        return int8_float_precision()
    return ir_float_precision(openvino_core().read_model(str(card_path.parent / entry["path"])))


def record_quality(card_path: Path, pairs: PairSet, n_frames: int = QUALITY_FRAMES, source: str = "",
                   only: Sequence[str] | None = None) -> Path:
    """Measure (:func:`measure_quality`) and write the results into the card at ``card_path``.

    The card's headline ``metrics`` become the fp32 model's numbers through the full
    Denoiser path; ``source`` names the frames (a file) in the card. Entries this machine
    cannot measure (bf16 on a CPU without it; OpenVINO int8 with VNNI on one without, and
    the other way round) are kept, each naming the CPU it was measured on. With ``only``
    (``backend/precision`` names) just those entries are measured and replaced, on the same
    frames as the rest (pass the card's ``frames_source``); ``metrics`` stay as they are.
    """
    from ..cpu import cpu_name

    quality = measure_quality(card_path, pairs, n_frames, only)
    raw, fp32 = quality.pop("raw"), quality["onnxruntime/fp32"]
    card = read_card(card_path)
    if only is not None:  # the reference of these losses; the card's fp32 entry stays as measured
        quality.pop("onnxruntime/fp32")
    earlier_cpu = card.get("quantization_measured_on", {}).get("cpu")
    kept = {key: ({"cpu": earlier_cpu} if earlier_cpu else {}) | entry
            for key, entry in card.get("quantization", {}).items() if key not in quality}
    card["quantization"] = kept | quality
    if only is not None:
        measured_on = card.get("quantization_measured_on")
        if measured_on and quality.get("openvino/int8", {}).get("float_precision"):
            # the IR's float parts as its entry was measured again (fp32 where bf16 ones lost)
            measured_on["openvino_int8_float_precision"] = quality["openvino/int8"]["float_precision"]
        return write_card(card_path, card)
    # int8 and bf16 numerics depend on the CPU (OpenVINO's int8 float parts: bf16 with AMX)
    card["quantization_measured_on"] = {"cpu": cpu_name(),
                                        "openvino_int8_float_precision": _int8_float_precision_of(card_path, card)}
    card["metrics"] = {"val_ssim": fp32["ssim"], "val_psnr": fp32["psnr"], "val_raw_ssim": raw["ssim"],
                       "val_raw_psnr": raw["psnr"], "val_raw_ssim_min": raw["ssim_min"],
                       "val_frames": fp32["frames"], "val_frame_shape": list(centre_crop(pairs).ns.shape[1:]),
                       "frames_source": source,
                       "metric": f"mean over test frames (of larger ones their centre {MEASURE_EDGE}x{MEASURE_EDGE}); "
                                 "SSIM/PSNR in the clean frame's min-max scale"}
    return write_card(card_path, card)


def record_ratio_quality(card_path: Path) -> Path:
    """Copy each pruning ratio's measured fp32 SSIM (its own card's ``metrics``) into an
    All-in-One card's ``ratios`` summary, with the loss against ratio 0 (after
    :func:`record_quality` has re-measured every ratio's card on the same frames)."""
    measured = {f"{r:g}": c.source.get("metrics", {}).get("val_ssim")
                for r, c in ModelCard.read(card_path).ratio_cards().items()}
    card = read_card(card_path)
    full = card.get("metrics", {}).get("val_ssim")
    for key, entry in card.get("ratios", {}).items():
        ssim_r = measured[f"{float(key):g}"]
        entry["ssim"] = ssim_r
        entry["ssim_drop_vs_full"] = full - ssim_r if full is not None and ssim_r is not None else None
    return write_card(card_path, card)


def export_model(
    training_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    data: str | os.PathLike[str],
    formats: tuple[str, ...] = FORMATS,
    tile: int = DEFAULT_TILE,
    n_calibration: int = 200,
    measure: bool = True,
    activation_copies: Mapping[str, int] | None = None,
    openvino_copies: Mapping[str, int] | None = None,
    float_weights: bool = False,
    input_despike: float | None = None,
    openvino_qat_steps: int = 0,
    qat_data: str | os.PathLike[str] | None = None,
    qat_lr: float = 2e-5,
    qat_float: Sequence[str] = (),
    qat_copies: Mapping[str, int] | None = None,
    qat_distill: float = 0.0,
    qat_float_sums: Sequence[int] | None = None,
    qat_weight_bits: int = 8,
) -> Path:
    """Export ``<name>.pt`` from ``training_dir`` into ``out_dir``; returns the new card path.

    Parameters
    ----------
    training_dir : path-like
        Holds ``<name>.pt`` and ``<name>.json`` from ``bluesky-tomogan train``
        (or a shipped weights directory).
    out_dir : path-like
        Destination (created); may equal ``training_dir``.
    data : path-like
        TomoGAN-style HDF5: train frames calibrate int8, test frames measure quality.
    formats : tuple of str
        Subset of :data:`FORMATS`.
    tile : int
        Fixed tile edge of the TFLite model.
    n_calibration : int
        Calibration samples for int8.
    measure : bool
        Measure and record quality of every backend/precision.
    activation_copies : mapping of str to int, optional
        Offset copies of layers' outputs in the TFLite model (:mod:`.copies`); ``None`` for
        those the card records for its TFLite model, else its domain's default
        (:func:`.copies.default_activation_copies`).
    openvino_copies : mapping of str to int, optional
        Offset copies of layers' outputs in the post-training OpenVINO int8 IR; ``None`` for
        :data:`~.openvino_int8.OPENVINO_ACTIVATION_COPIES` (``stem.0=4``), ``{}`` for none.
        Each copy costs the layers reading it their input channels again: a stem twice as
        wide needs half the copies for the same cost (the 5-frame light projection model's
        8-channel stem, ``stem.0=2``; docs/models.md). The quantisation-aware IR's are ``qat_copies``.
    float_weights : bool
        Export the float weights from before the run's int8-aware steps
        (``<name>.float.pt``, ``train --qat-steps``) instead of the steps' result, for
        when the exported int8 forms did not gain from them. The card records the steps
        as tried, not applied (``training.qat_tried``), and the steps' weights are kept
        beside the float ones as ``<name>.qat.pt``.
    input_despike : float, optional
        Ask, in the card, for the input to be despiked on the host in every backend
        (:mod:`bluesky_tomogan.despike`: pixels more than this many robust sigmas above
        their 3x3 median take the median). Every ratio's card gets it too, and the quality
        measured at export includes it. Default: what the card says, else
        :data:`~bluesky_tomogan.despike.PROJECTION_DESPIKE_SIGMAS` for a projection model (no
        network removes every zinger and hot pixel itself, and one in a neighbouring frame
        leaks into the output: docs/models.md, "Zingers and hot pixels") and none for a slice
        model.
    openvino_qat_steps : int
        Make the OpenVINO int8 IR by quantisation-aware fine-tuning
        (:func:`.openvino_int8.quantisation_aware_ir`: this many batches, every convolution
        but the output layer in int8) instead of post-training quantisation with accuracy
        control; 0 (the default) for the latter.
    qat_data : path-like, optional
        Training pairs of that fine-tuning (its train split); ``data`` by default.
    qat_lr : float
        Its learning rate.
    qat_float : sequence of str
        Modules whose convolutions it keeps in float (``"head"``), besides the output layer.
    qat_copies : mapping of str to int, optional
        Offset copies of layers' outputs in that IR (default: the post-training IR's,
        ``stem.0=4``; ``{}``: none). Each costs the layers reading it their input channels again:
        the light slice model's stem copies were a tenth of its int8 time (docs/benchmarks.md).
    qat_distill : float
        Share of that fine-tuning's loss, in [0, 1], taken against the float network's output
        rather than the clean target (0: the clean target only).
    qat_float_sums : sequence of int, optional
        The decoder levels (1 at full resolution, 3 the deepest) whose fused sum that IR keeps
        in float, for a network with ``upsampled_padding="edge"`` (default: all three).
    qat_weight_bits : {8, 7}
        7: that IR's weights on a 7-bit grid in every convolution, trained so: none of its sums
        saturates on an x86 CPU without VNNI, so it runs in int8 there as it does elsewhere.

    Raises
    ------
    ExportOptionError
        ``float_weights`` for a run without int8-aware steps or without its float weights;
        ``input_despike`` not a positive number; ``openvino_qat_steps`` negative, without the
        ``openvino`` format, or for an All-in-One model (its ratios share weights that one
        ratio's fine-tuning would change: export the ratio as its own model); ``qat_float``
        naming no module with a convolution; ``qat_copies`` without ``openvino_qat_steps`` or
        naming a layer that cannot be copied; ``openvino_copies`` with ``openvino_qat_steps``,
        or naming a layer that cannot be copied; ``qat_distill`` outside [0, 1] or without
        ``openvino_qat_steps``; ``qat_float_sums`` without ``openvino_qat_steps``, or naming a
        level that is not 1, 2 or 3; ``qat_weight_bits`` other than 8 or 7, or 7 without
        ``openvino_qat_steps``.
    """
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"unknown export formats {unknown}; choose from {FORMATS}")
    if openvino_qat_steps < 0:
        raise ExportOptionError(f"openvino_qat_steps must be 0 or positive, got {openvino_qat_steps}")
    if openvino_qat_steps and "openvino" not in formats:
        raise ExportOptionError("openvino_qat_steps makes the OpenVINO int8 IR: add the 'openvino' format")
    if qat_distill and not openvino_qat_steps:
        raise ExportOptionError("qat_distill is the quantisation-aware IR's: give openvino_qat_steps too")
    if not 0.0 <= qat_distill <= 1.0:
        raise ExportOptionError(f"qat_distill is a share of the loss, in [0, 1]; got {qat_distill}")
    if qat_float_sums is not None:
        if not openvino_qat_steps:
            raise ExportOptionError("qat_float_sums are the quantisation-aware IR's: give openvino_qat_steps too")
        try:
            fused_sum_patterns(qat_float_sums)
        except ValueError as exc:
            raise ExportOptionError(f"qat_float_sums: {exc}") from exc
    try:
        overflow_fix(qat_weight_bits)
    except ValueError as exc:
        raise ExportOptionError(f"qat_weight_bits: {exc}") from exc
    if qat_weight_bits != 8 and not openvino_qat_steps:
        raise ExportOptionError("qat_weight_bits is the quantisation-aware IR's (7-bit weights need training on "
                                "that grid): give openvino_qat_steps too")
    if qat_copies is not None and not openvino_qat_steps:
        raise ExportOptionError("qat_copies are the quantisation-aware IR's: give openvino_qat_steps too "
                                "(the post-training IR's are openvino_copies)")
    if openvino_copies is not None and openvino_qat_steps:
        raise ExportOptionError("openvino_copies are the post-training IR's: the quantisation-aware IR's "
                                "are qat_copies")
    src = Path(training_dir)
    card = read_card(card_in_directory(src, OutputPathError))
    name = card["name"]
    if openvino_qat_steps and torch_plan(src / f"{name}.pt") is not None:
        raise ExportOptionError(f"{name} is an All-in-One model: its ratios share the weights that quantisation-aware "
                                "fine-tuning would change; export one ratio as its own model to fine-tune its IR")
    if input_despike is not None:
        if not input_despike > 0:
            raise ExportOptionError(f"input_despike must be a positive number of sigmas, got {input_despike}")
        card["input_despike"] = {"sigmas": float(input_despike)}
    elif "input_despike" not in card and card.get("domain") == "projection":
        card["input_despike"] = {"sigmas": PROJECTION_DESPIKE_SIGMAS,
                                 "why": "the projection models' default: zingers and hot pixels (docs/models.md)"}
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"cannot create {out}: {exc}") from exc
    pt = src / f"{name}.pt"
    if float_weights:
        pt = _float_weights(card, src, out)
    elif out.resolve() != src.resolve():
        shutil.copy2(pt, out / pt.name)
    gen = load_generator(pt)
    if openvino_qat_steps:
        try:
            convolutions_in_float(gen.correction_network(), qat_float)  # before the slow steps
        except ValueError as exc:
            raise ExportOptionError(f"qat_float: {exc}") from exc
        if qat_copies is not None:
            check_activation_copies(gen.correction_network(), qat_copies)
    copies = default_activation_copies(card) if activation_copies is None else dict(activation_copies)
    if "tflite" in formats:
        check_activation_copies(gen.correction_network(), copies)  # before the slow steps
    if openvino_copies is not None and "openvino" in formats:
        check_activation_copies(gen.correction_network(), openvino_copies)
    dataset = read_dataset(data)
    # the frames the card's quality is measured on, which NNCF's accuracy control validates on too
    # (NNCF runs the IR itself, on whole frames: cut to the network's multiple)
    train, test = dataset.split("train"), centre_crop(dataset.split("test"), multiple=gen.config.size_multiple)
    # the card lists what lies in `out`: the files this export leaves there from an earlier one (in
    # place: the source's own), never the source's entries for files that were not written
    files = _files_kept(out / f"{name}.json", formats)
    files["pytorch"] = {"path": pt.name, "sha256": sha256_of(pt)}
    measured = _quantization_kept(out / f"{name}.json", files)

    # Every exported file computes the correction; the Denoiser adds the centre frame
    # in float32 (measured: the residual add in int8/bf16 cost most of their SSIM loss).
    net = gen.correction_network()
    card["output"] = "correction" if gen.adds_residual else "frame"
    if "onnx" in formats or "openvino" in formats:
        onnx_path = export_onnx(net, out / f"{name}.onnx")
        files["onnx"] = {"path": onnx_path.name, "sha256": sha256_of(onnx_path), "dynamic_shape": True}
        files.pop("onnx_resize", None)
        _warn_unless_tensorrt_parses(onnx_path)
        if net.config.upsampled_padding == "edge":
            # the fused form serves OpenVINO and TensorRT; ONNX Runtime runs the trained form faster
            # (registry.REGISTRY["onnxruntime"].preferred_files)
            files["onnx"]["form"] = "fused decoders"
            resize = export_onnx(net, out / f"{name}.resize.onnx", fused=False)
            files["onnx_resize"] = {"path": resize.name, "sha256": sha256_of(resize), "dynamic_shape": True,
                                    "form": "resize, concatenation and convolution, as trained"}
    if "tflite" in formats:
        calib = calibration_frames(train, n_calibration, tile, gen.config.in_channels)
        bias: dict[str, float] = {}
        tfl = export_tflite_int8(net, out / f"{name}.int8.tflite", calib, tile, TFLITE_INPUT_PERCENTILES,
                                 equalise=True, output_copies=OUTPUT_COPIES, activation_copies=copies, info=bias)
        files["tflite_int8"] = {"path": tfl.name, "sha256": sha256_of(tfl), "tile": [tile, tile],
                                "calibration_samples": len(calib),
                                "calibration_input_percentiles": list(TFLITE_INPUT_PERCENTILES),
                                "equalised": True, "output_copies": OUTPUT_COPIES,
                                "activation_copies": copies, "output_bias_correction": bias,
                                "macs_per_pixel": _tflite_macs(net, calib, copies)}
    if "openvino" in formats:
        size = min(*train.ns.shape[1:], MEASURE_EDGE)
        size -= size % gen.config.size_multiple
        calib = calibration_frames(train, n_calibration, size, gen.config.in_channels)
        if openvino_qat_steps:
            qat_train = train if qat_data is None else read_dataset(qat_data).split("train")
            config = card.get("training", {}).get("config", {})
            xml, qinfo = quantisation_aware_ir(
                net, out / f"{name}.int8.xml", calib, qat_train, openvino_qat_steps, lr=qat_lr,
                batch=int(config.get("batch") or 16), patch=int(config.get("patch") or 96),
                pixel=str(config.get("pixel") or "l1+ssim"), add_centre=gen.adds_residual, validation=test,
                keep_float=qat_float, copies=qat_copies, distill=qat_distill, progress=True,
                float_sums=DECODER_LEVELS if qat_float_sums is None else tuple(qat_float_sums),
                weight_bits=qat_weight_bits,
                # a network trained to denoise without its neighbours keeps learning both
                context_dropout=float(config.get("context_dropout") or 0.0))
            qinfo["training_data"] = Path(qat_data if qat_data is not None else data).name
        else:
            xml, qinfo = _export_openvino_int8(net, out / f"{name}.int8.xml", calib, test,
                                               add_centre=gen.adds_residual,
                                               isolated_spikes=card.get("domain") == "projection",
                                               copies=openvino_copies)
        files["openvino_int8"] = {"path": xml.name, "sha256": sha256_of(xml),
                                  "bin_sha256": sha256_of(xml.with_suffix(".bin")),
                                  "calibration_samples": len(calib),
                                  "quantization": qinfo}
    card["files"] = files
    card.pop("quantization", None)
    if measured:
        card["quantization"] = measured
    card_path = write_card(out / f"{name}.json", card)
    if measure:
        card_path = record_quality(card_path, test, source=f"{Path(data).name} (test split)")
    plan = torch_plan(pt)
    if plan is not None:
        # every ratio gets the copies the full network got: their cards record none to default from
        card_path = _export_ratios(card_path, pt, plan, data, formats, tile, n_calibration, measure,
                                   copies, openvino_copies)
    return card_path


def _warn_unless_tensorrt_parses(onnx_path: Path) -> None:
    """TensorRT reads the ``.onnx`` on the GPU host: say here, not at the beamline, what it would refuse."""
    report = check_tensorrt_parsable(onnx_path)
    if not report.compatible:
        log.warning("TensorRT's ONNX parser would refuse %s: %s", onnx_path.name, "; ".join(report.problems))


def _float_weights(card: dict[str, Any], src: Path, out: Path) -> Path:
    """Put the float weights from before the int8-aware steps in ``out`` as ``<name>.pt``; edits ``card``."""
    name, training = card["name"], card.get("training", {})
    qat = training.get("qat") or training.get("qat_tried")
    if not qat:
        raise ExportOptionError(f"float weights asked of {name}, whose run had no int8-aware steps "
                                "(train --qat-steps); its weights are float already")
    float_pt = src / qat.get("float_weights", f"{name}.float.pt")
    if not float_pt.is_file():
        raise ExportOptionError(f"float weights {float_pt} not found (written by train --qat-steps)")
    qat_pt = out / f"{name}.qat.pt"
    current = src / f"{name}.pt"
    if "qat" in training and current.is_file() and not qat_pt.exists():
        shutil.copy2(current, qat_pt)  # the int8-aware result, kept: the next line may overwrite it
    shutil.copy2(float_pt, out / f"{name}.pt")
    training.pop("qat", None)
    training["qat_tried"] = qat | {"shipped": False, "weights": qat_pt.name if qat_pt.exists() else None}
    return out / f"{name}.pt"


def torch_plan(pt: Path) -> PrunePlan | None:
    """The All-in-One pruning plan saved with a ``.pt`` by training, or ``None`` for an ordinary network."""
    import torch

    state = torch.load(pt, map_location="cpu", weights_only=True)
    return PrunePlan.stored_in(state)


def _export_ratios(card_path: Path, pt: Path, plan: PrunePlan, data: str | os.PathLike[str],
                   formats: tuple[str, ...], tile: int, n_calibration: int, measure: bool,
                   activation_copies: Mapping[str, int] | None,
                   openvino_copies: Mapping[str, int] | None = None) -> Path:
    """Export every pruning ratio but 0 as a network of its own under ``<name>.ratios/r<ratio>/`` and list them all
    in the (ratio 0) card at ``card_path``, with each ratio's MACs and measured loss vs the full network."""
    import tempfile

    import torch

    out = card_path.parent
    card = read_card(card_path)
    name = card["name"]
    gen = load_generator(pt)
    full_macs = gen.macs_per_pixel()
    full_ssim = card.get("metrics", {}).get("val_ssim")
    ratios: dict[str, Any] = {}
    for r in plan.ratios:
        key = ratio_key(r)
        entry: dict[str, Any] = {"mac_fraction": plan.mac_fraction[key], "widths": plan.widths[key]}
        if r == 0:
            ratios[key] = entry | {"model": ".", "macs_per_pixel": full_macs, "ssim": full_ssim,
                                   "ssim_drop_vs_full": 0.0 if full_ssim is not None else None}
            continue
        small = prune(gen, plan.kept(r))
        sub_name = f"{name}-r{key}"
        sub_dir = out / f"{name}.ratios" / f"r{key}"
        with tempfile.TemporaryDirectory() as tmp:
            torch.save({"generator": small.state_dict(), "arch": small.config.to_dict()}, Path(tmp) / f"{sub_name}.pt")
            sub_card = {k: v for k, v in card.items() if k not in ("files", "quantization", "metrics", "ratios",
                                                                    "allinone", "ratio_speed")}
            sub_card |= {"name": sub_name, "architecture": small.config.to_dict(),
                         "files": _files_kept(sub_dir / f"{sub_name}.json", formats),
                         "pruning": {"ratio": r, "parent": name, "mac_fraction": plan.mac_fraction[key],
                                     "method": "All-in-One (bluesky_tomogan.model.allinone)"}}
            write_card(Path(tmp) / f"{sub_name}.json", sub_card)
            sub_path = export_model(tmp, sub_dir, data, formats, tile, n_calibration, measure, activation_copies,
                                    openvino_copies)
        sub = read_card(sub_path)
        ssim_r = sub.get("metrics", {}).get("val_ssim")
        loss = (full_ssim - ssim_r) if full_ssim is not None and ssim_r is not None else None
        ratios[key] = entry | {"model": f"{name}.ratios/r{key}", "macs_per_pixel": small.macs_per_pixel(),
                               "ssim": ssim_r, "ssim_drop_vs_full": loss}
        log.info("ratio %s%%: %.0f MACs/pixel (%.2f of the full network), SSIM loss vs full %s", key,
                 ratios[key]["macs_per_pixel"], plan.mac_fraction[key], ratios[key]["ssim_drop_vs_full"])
    card["ratios"] = ratios
    card["pruning"] = {"ratio": 0.0, "method": "All-in-One (bluesky_tomogan.model.allinone)"}
    card_path = write_card(card_path, card)
    if measure:
        card["ratio_speed"] = time_ratios(card_path)
        card_path = write_card(card_path, card)
    return card_path


#: The card's ``files`` entry each export format writes.
FORMAT_FILES = {"onnx": "onnx", "tflite": "tflite_int8", "openvino": "openvino_int8"}


def _files_kept(card_path: Path, formats: tuple[str, ...]) -> dict[str, Any]:
    """The ``files`` entries of an earlier export at ``card_path`` that an export of ``formats`` leaves in place.

    Exporting one format again (``--format openvino``) into a ratio's directory keeps
    its other files; their card entries must stay too, or ``auto`` no longer finds them.
    """
    if not card_path.is_file():
        return {}
    rewritten = {FORMAT_FILES[f] for f in formats} | {"pytorch"}
    if "openvino" in formats:
        rewritten.add("onnx")  # the int8 IR is made from a fresh ONNX export
    if "onnx" in rewritten:
        rewritten.add("onnx_resize")  # written beside it, for an edge network
    kept = read_card(card_path).get("files", {})
    return {k: v for k, v in kept.items() if k not in rewritten and (card_path.parent / v["path"]).is_file()}


def _quantization_kept(card_path: Path, files: Mapping[str, Any]) -> dict[str, Any]:
    """The measured ``quantization`` entries of an earlier export at ``card_path`` that still hold.

    An entry holds where the weights are those it was measured with (the same ``pytorch``
    sha256) and the file it ran was not written again (``files`` lists it with its sha256 of
    then): exporting ``--format tflite --no-measure`` keeps the OpenVINO int8 loss, so ``auto``
    still takes that IR. Every other entry goes; the fp32 reference holds while its ONNX does.
    """
    if not card_path.is_file():
        return {}
    earlier = read_card(card_path)
    then = earlier.get("files", {})
    if then.get("pytorch", {}).get("sha256") != files["pytorch"]["sha256"]:
        return {}

    def unchanged(kind: str) -> bool:
        return kind in files and files[kind].get("sha256") == then.get(kind, {}).get("sha256")

    kept = {}
    for key, entry in earlier.get("quantization", {}).items():
        backend, _, precision = key.partition("@")[0].partition("/")
        spec = REGISTRY.get(backend)
        if spec is None or precision not in spec.files:
            continue
        # the file it ran: its own, and the form it prefers where the earlier export had one
        preferred = spec.preferred_files.get(precision)
        if unchanged(spec.files[precision]) and (preferred is None or preferred not in then or unchanged(preferred)):
            kept[key] = entry
    return kept


def time_ratios(card_path: Path, size: int = 512, repeats: int = 7) -> dict[str, Any]:
    """Milliseconds per ``size`` x ``size`` frame of every ratio, each with ``precision="auto"`` on this machine.

    Rounds go through the ratios in turn, so a machine that slows down during the measurement
    slows every ratio alike; the median per ratio is recorded with the CPU's name.
    """
    import functools
    import time

    from ..bench import cpu_name, warm_up
    from ..inference.ratios import load_ratios

    ratios = load_ratios(card_path)
    frames = np.random.default_rng(0).poisson(500, (ratios.depth, size, size)).astype(np.float32)
    for r in ratios.ratios:
        den = ratios.at(r)
        warm_up(functools.partial(den.denoise_context, frames))
    times: dict[float, list[float]] = {r: [] for r in ratios.ratios}
    for _ in range(repeats):
        for r in ratios.ratios:
            t0 = time.perf_counter()
            ratios.at(r).denoise_context(frames)
            times[r].append(1e3 * (time.perf_counter() - t0))
    return {"cpu": cpu_name(), "frame": [size, size], "repeats": repeats, "note": "precision auto, this CPU",
            "ms_per_frame": {ratio_key(r): float(np.median(t)) for r, t in times.items()},
            "runs_on": {ratio_key(r): f"{ratios.at(r).backend}/{ratios.at(r).precision}" for r in ratios.ratios}}
