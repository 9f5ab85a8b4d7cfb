"""Zeiss Xradia .txrm/.xrm scans into ``denoise`` and ``finetune``, written here as real ones are laid out."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest

from bluesky_tomogan.cli import main
from bluesky_tomogan.errors import ScanError, TomoGANError
from bluesky_tomogan.finetune.sources import read_scan
from bluesky_tomogan.frame_files import open_frames
from bluesky_tomogan.xradia import XradiaFile, is_xradia

from .compound_file import write_compound_file

DATA = Path(__file__).resolve().parents[1] / "data"


def int32(value: int) -> bytes:
    return struct.pack("<i", value)


def xradia_streams(frames: np.ndarray, angles: np.ndarray | None = None, reference: np.ndarray | None = None,
                   data_type: int = 5) -> dict[str, bytes]:
    """The streams of a Zeiss file holding ``frames``: ``ImageInfo``, a hundred images per ``ImageData<k>``."""
    n, h, w = frames.shape
    streams = {"ImageInfo/ImageWidth": int32(w), "ImageInfo/ImageHeight": int32(h),
               "ImageInfo/NoOfImages": int32(n), "ImageInfo/ImagesTaken": int32(n),
               "ImageInfo/DataType": int32(data_type), "ImageInfo/PixelSize": struct.pack("<f", 0.65)}
    dtype = "<u2" if data_type == 5 else "<f4"
    for i, frame in enumerate(frames):
        streams[f"ImageData{i // 100 + 1}/Image{i + 1}"] = frame.astype(dtype).tobytes()
    if angles is not None:
        streams["ImageInfo/Angles"] = np.asarray(angles, "<f4").tobytes()
    if reference is not None:
        streams["ReferenceData/Image"] = reference.astype(dtype).tobytes()
        streams["ReferenceData/DataType"] = int32(data_type)
    return streams


def scan(n: int = 9, shape: tuple[int, int] = (24, 32), seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.linspace(-1, 1, shape[1])
    frames = np.stack([rng.poisson(800 * np.exp(-np.maximum(0, 0.6 - (x - 0.2 * np.sin(a)) ** 2) * 2)
                                   * np.ones((shape[0], 1))) for a in np.linspace(0, np.pi, n)])
    angles = np.linspace(-90, 90, n)[::-1].copy()  # a TXM often turns from + to -
    return frames.astype(np.uint16), angles, np.full(shape, 810.0)


def test_a_txrm_scan_reads_as_its_images_angles_and_reference(tmp_path):
    frames, angles, reference = scan(n=103, shape=(8, 12))  # past the first ImageData storage's hundred
    path = tmp_path / "scan.txrm"
    write_compound_file(path, xradia_streams(frames, angles, reference))
    assert is_xradia(path) and is_xradia(path.rename(tmp_path / "scan.bin"))  # by its first bytes too
    with XradiaFile(tmp_path / "scan.bin") as xrm:
        assert xrm.shape == (103, 8, 12) and xrm.dtype == np.uint16
        np.testing.assert_array_equal(xrm.read(0, 103), frames)
        np.testing.assert_array_equal(xrm.image(101), frames[101])  # ImageData2/Image102
        np.testing.assert_allclose(xrm.angles, angles, atol=1e-5)
        np.testing.assert_array_equal(xrm.reference, reference)


def test_denoise_a_txrm_into_a_data_exchange_file_with_its_angles_and_reference(tmp_path, capsys, denoiser):
    frames, angles, reference = scan()
    src, out = tmp_path / "scan.txrm", tmp_path / "scan_dn.h5"
    write_compound_file(src, xradia_streams(frames, angles, reference))
    assert main(["denoise", str(src), str(out), "--backend", "onnxruntime", "--precision", "fp32"]) == 0
    with h5py.File(out) as f:
        got = f["exchange/data"][()]
        assert f["denoised"] == f["exchange/data"]  # one dataset, two names
        np.testing.assert_allclose(f["exchange/theta"][()], angles, atol=1e-5)
        assert f["exchange/theta"].attrs["units"] == "degrees"
        np.testing.assert_array_equal(f["exchange/data_white"][()], reference[None])
    # each frame with the neighbours its angle allows (22.5 degrees apart: none), as the live callback gives them
    np.testing.assert_allclose(got, denoiser.denoise(frames.astype(np.float32), angles=angles), rtol=1e-5, atol=1e-2)
    # and what a reconstruction (or a fine-tune) reads back from it: the denoised scan, in angle order
    back = read_scan(str(out))
    np.testing.assert_allclose(back.angles, np.sort(angles), atol=1e-5)
    np.testing.assert_array_equal(back.flats, reference)


def test_finetune_reads_a_txrm_scan_sorted_by_angle_with_its_reference_as_flats(tmp_path):
    frames, angles, reference = scan()
    path = tmp_path / "scan.txrm"
    write_compound_file(path, xradia_streams(frames, angles, reference))
    got = read_scan(str(path))
    order = np.argsort(angles)
    np.testing.assert_array_equal(got.projections, frames[order].astype(np.float32))
    np.testing.assert_allclose(got.angles, angles[order], atol=1e-5)
    np.testing.assert_array_equal(got.flats, reference)
    assert got.darks is None and got.source == str(path)
    band = read_scan(str(path), rows=lambda shape: slice(4, 12))  # only some detector rows
    assert band.projections.shape == (9, 8, 32) and band.rows == (4, 12) and band.flats.shape == (8, 32)


def test_float32_images_and_a_file_without_angles_or_reference(tmp_path):
    frames = np.random.default_rng(1).random((4, 8, 8)).astype(np.float32)
    path = tmp_path / "floats.xrm"
    write_compound_file(path, xradia_streams(frames, data_type=10))
    with open_frames(path) as source:
        assert source.shape == (4, 8, 8) and source.dtype == np.float32 and source.projections
        np.testing.assert_array_equal(source.read(1, 3), frames[1:3])
        assert source.beside == {}


def broken(frames: np.ndarray, case: str) -> dict[str, bytes]:
    streams = xradia_streams(frames)
    if case == "no ImageInfo":
        return {"Other/Thing": int32(1)}
    if case == "pixel type":
        streams["ImageInfo/DataType"] = int32(7)
    elif case == "short image":
        streams["ImageData1/Image2"] = streams["ImageData1/Image2"][:-2]
    elif case == "missing image":
        streams["ImageInfo/NoOfImages"] = streams["ImageInfo/ImagesTaken"] = int32(len(frames) + 1)
    return streams


@pytest.mark.parametrize(("case", "message"), [
    ("no ImageInfo", "has no ImageInfo/ImageWidth: not an Xradia image file"),
    ("pixel type", "ImageInfo/DataType 7 is not a pixel type read here"),
    ("short image", "ImageData1/Image2 is 94 bytes, not one 6x8 uint16 image (96 bytes)"),
    ("missing image", "has no ImageData1/Image4: the file holds fewer images than its ImageInfo says (4)"),
])
def test_a_damaged_or_foreign_file_is_one_clear_error_in_denoise_and_finetune(tmp_path, capsys, case, message):
    path = tmp_path / "bad.txrm"
    write_compound_file(path, broken(np.ones((3, 6, 8), np.uint16), case))
    assert main(["denoise", str(path), str(tmp_path / "out.h5")]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    with pytest.raises(ScanError, match=re.escape(message)):
        read_scan(str(path))


def test_a_file_that_is_not_a_compound_file_is_named(tmp_path):
    path = tmp_path / "scan.txrm"
    path.write_bytes(b"not a Zeiss file at all")
    with pytest.raises(TomoGANError, match="not an OLE2 compound file"):
        XradiaFile(path)
    with pytest.raises(ScanError, match="does not exist"):
        read_scan(str(tmp_path / "missing.txrm"))


@pytest.mark.skipif(not (DATA / "txrm_test_chip_tomo.txrm").exists(),
                    reason="TomoPy's Zeiss test scan is not in data/ (docs/models.md says how to get it)")
def test_tomopys_real_zeiss_scan_reads_as_tomopy_reads_it():
    with XradiaFile(DATA / "txrm_test_chip_tomo.txrm") as xrm:
        assert xrm.shape == (7, 256, 256) and xrm.dtype == np.uint16
        np.testing.assert_allclose(xrm.angles, [-45.018, -30.014, -15.014, -0.014, 14.986, 29.986, 44.986],
                                   atol=1e-3)
        assert xrm.reference is None and xrm.read(0, 7).std() > 0


def test_a_reference_taken_with_another_exposure_is_scaled_to_the_images(tmp_path):
    frames, angles, _ = scan(n=3)
    reference = np.full(frames.shape[1:], 800.0)
    streams = xradia_streams(frames, angles, reference / 4)  # a quarter of the exposure: a quarter of the counts
    streams["ImageInfo/ExpTimes"] = np.full(3, 2.0, "<f4").tobytes()
    streams["ReferenceData/ExpTime"] = np.float32(0.5).tobytes()
    write_compound_file(tmp_path / "scan.txrm", streams)
    with XradiaFile(tmp_path / "scan.txrm") as xrm:
        np.testing.assert_allclose(xrm.reference, reference, rtol=1e-6)


def test_a_truncated_file_is_one_clear_error_in_denoise_and_finetune(tmp_path, capsys):
    frames, angles, reference = scan(n=20, shape=(64, 64))  # images large enough to sit in sectors of their own
    whole = tmp_path / "whole.txrm"
    write_compound_file(whole, xradia_streams(frames, angles, reference))
    cut = tmp_path / "cut.txrm"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 3])  # a copy that stopped part way
    assert main(["denoise", str(cut), str(tmp_path / "out.h5")]) == 1
    err = capsys.readouterr().err
    assert str(cut) in err and "damaged" in err and "Traceback" not in err
    with pytest.raises(ScanError, match="damaged"):
        read_scan(str(cut))
