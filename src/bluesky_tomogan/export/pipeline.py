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
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OutputPathError
from ..metrics import psnr, ssim
from ..model.train import load_generator
from ..modelcard import read_card, sha256_of, write_card
from ..normalise import normalise, robust_range
from ..simulate.datasets import PairSet, read_dataset
from .onnx import export_onnx
from .tflite import DEFAULT_TILE, export_tflite_int8

__all__ = ["FORMATS", "calibration_frames", "export_model", "measure_quality"]

log = logging.getLogger(__name__)
FORMATS = ("onnx", "tflite", "openvino")


def calibration_frames(pairs: PairSet, n: int, size: int, depth: int = 3, seed: int = 0) -> np.ndarray:
    """``(n, depth, size, size)`` normalised context frames for int8 calibration.

    Frames smaller than ``size`` are reflection-padded exactly as inference pads them.
    """
    from ..frames import context_indices
    from ..inference.tiling import pad_to

    rng = np.random.default_rng(seed)
    idx = rng.choice(len(pairs.ns), size=min(n, len(pairs.ns)), replace=False)
    out = []
    for i in idx:
        off, scale = robust_range(pairs.ns[i])
        x = normalise(pairs.ns[context_indices(pairs.group, int(i), depth)], off, scale)
        x = pad_to(x, size, size)
        h, w = x.shape[-2:]
        r, c = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
        out.append(x[:, r : r + size, c : c + size])
    return np.stack(out).astype(np.float32)


def _export_openvino_int8(onnx_path: Path, xml_path: Path, calib: np.ndarray) -> Path:
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(onnx_path))
    dataset = nncf.Dataset([x[None] for x in calib])
    quantized = nncf.quantize(model, dataset, subset_size=len(calib), preset=nncf.QuantizationPreset.MIXED)
    ov.save_model(quantized, str(xml_path), compress_to_fp16=False)
    return xml_path


def measure_quality(card_path: Path, pairs: PairSet, n_frames: int = 48) -> dict[str, Any]:
    """SSIM/PSNR of every available backend/precision vs the clean frames, and drop vs fp32."""
    from ..errors import TomoGANError
    from ..inference.load import load_denoiser

    idx = np.unique(np.linspace(0, len(pairs.ns) - 1, min(n_frames, len(pairs.ns))).astype(int))
    from ..frames import context_indices

    def score(backend: str, precision: str) -> dict[str, float] | None:
        try:
            den = load_denoiser(card_path, backend=backend, precision=precision)
        except TomoGANError as exc:
            log.info("not measured: %s/%s (%s)", backend, precision, exc)
            return None
        s, p = [], []
        for i in idx:
            ctx = pairs.ns[context_indices(pairs.group, int(i), den.depth)]
            out = den.denoise_context(ctx)
            s.append(ssim(pairs.gt[i], out))
            p.append(psnr(pairs.gt[i], out))
        return {"ssim": float(np.mean(s)), "psnr": float(np.mean(p)), "frames": len(idx)}

    ref = score("onnxruntime", "fp32")
    assert ref is not None, "the fp32 ONNX model must load"
    result: dict[str, Any] = {"onnxruntime/fp32": ref}
    for backend, precision in (("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8"), ("litert", "int8")):
        r = score(backend, precision)
        if r is not None:
            r["ssim_drop"] = ref["ssim"] - r["ssim"]
            r["psnr_drop"] = ref["psnr"] - r["psnr"]
            result[f"{backend}/{precision}"] = r
    return result


def export_model(
    training_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    data: str | os.PathLike[str],
    formats: tuple[str, ...] = FORMATS,
    tile: int = DEFAULT_TILE,
    n_calibration: int = 200,
    measure: bool = True,
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
    """
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"unknown export formats {unknown}; choose from {FORMATS}")
    src = Path(training_dir)
    cards = sorted(src.glob("*.json"))
    if len(cards) != 1:
        raise OutputPathError(f"{src} must hold exactly one model card (*.json), found {len(cards)}")
    card = read_card(cards[0])
    name = card["name"]
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"cannot create {out}: {exc}") from exc
    pt = src / f"{name}.pt"
    if out.resolve() != src.resolve():
        shutil.copy2(pt, out / pt.name)
    gen = load_generator(pt)
    dataset = read_dataset(data)
    train, test = dataset.split("train"), dataset.split("test")
    files = dict(card.get("files", {}))
    files["pytorch"] = {"path": pt.name, "sha256": sha256_of(pt)}

    if "onnx" in formats or "openvino" in formats:
        onnx_path = export_onnx(gen, out / f"{name}.onnx")
        files["onnx"] = {"path": onnx_path.name, "sha256": sha256_of(onnx_path), "dynamic_shape": True}
    if "tflite" in formats:
        calib = calibration_frames(train, n_calibration, tile, gen.config.in_channels)
        tfl = export_tflite_int8(gen, out / f"{name}.int8.tflite", calib, tile)
        files["tflite_int8"] = {"path": tfl.name, "sha256": sha256_of(tfl), "tile": [tile, tile],
                                "calibration_samples": len(calib)}
    if "openvino" in formats:
        size = min(train.ns.shape[1:])
        size -= size % gen.config.size_multiple
        calib = calibration_frames(train, n_calibration, size, gen.config.in_channels)
        xml = _export_openvino_int8(out / f"{name}.onnx", out / f"{name}.int8.xml", calib)
        files["openvino_int8"] = {"path": xml.name, "sha256": sha256_of(xml),
                                  "bin_sha256": sha256_of(xml.with_suffix(".bin")),
                                  "calibration_samples": len(calib)}
    card["files"] = files
    card.pop("quantization", None)
    card_path = write_card(out / f"{name}.json", card)
    if measure:
        card["quantization"] = measure_quality(card_path, test)
        card_path = write_card(card_path, card)
    return card_path
