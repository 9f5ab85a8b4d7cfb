"""Self-supervised fine-tuning on the user's own scan (``bluesky-tomogan finetune``)."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest

pytest.importorskip("torch")

from bluesky_tomogan.cli import main  # noqa: E402
from bluesky_tomogan.errors import ScanError  # noqa: E402
from bluesky_tomogan.finetune import FinetuneConfig, finetune, read_scan  # noqa: E402
from bluesky_tomogan.finetune.evaluate import slice_quality  # noqa: E402
from bluesky_tomogan.finetune.pairs import neighbour_pairs, noise2inverse_pairs  # noqa: E402
from bluesky_tomogan.finetune.sources import Scan  # noqa: E402
from bluesky_tomogan.model.train import training_precision  # noqa: E402
from bluesky_tomogan.simulate.datasets import write_scan_file  # noqa: E402


@pytest.fixture(scope="module")
def grains_scan(tmp_path_factory):
    """A low-dose scan of a phantom family no shipped model was trained on, with its clean reference."""
    path = tmp_path_factory.mktemp("scan") / "grains.h5"
    return write_scan_file(path, family="grains", size=64, n_angles=128, photons=150.0, seed=5)


def test_fine_tuning_raises_held_out_ssim_on_an_unseen_family_without_clean_data(grains_scan, tmp_path):
    path, clean = grains_scan
    out = tmp_path / "ft"
    result = finetune(FinetuneConfig(source=str(path), out_dir=str(out), minutes=1.8, formats=("onnx",),
                                     threads=2), progress=False)
    card = result.card
    import json

    data = json.loads(card.read_text())
    assert data["finetune"]["clean_data_used"] is False
    assert data["training"]["config"]["precision"] == training_precision()  # bf16 only where the CPU has it
    assert data["finetune"]["self_supervised"]["method"] == "noise2inverse"
    assert {"pytorch", "onnx"} <= set(data["files"])
    # scored on the held-out slab against the clean slices the fine-tune never saw
    quality = slice_quality(read_scan(str(path)), clean, {"shipped": "tomogan-slice", "fine-tuned": str(out)})
    assert quality["fine-tuned"]["ssim"] > quality["shipped"]["ssim"] + 0.01, quality
    assert quality["fine-tuned"]["ssim"] > quality["raw"]["ssim"]


def test_an_interrupted_fine_tune_resumes_from_its_checkpoint(grains_scan, tmp_path, monkeypatch):
    from bluesky_tomogan.model import data as model_data
    from bluesky_tomogan.model.train import TrainResult

    path, _ = grains_scan
    out = tmp_path / "ft"
    cfg = FinetuneConfig(source=str(path), out_dir=str(out), minutes=1.0, formats=("onnx",), threads=2)
    long = FinetuneConfig(source=str(path), out_dir=str(out), minutes=10.0, formats=("onnx",), threads=2)
    original = model_data.PatchSampler.batch
    calls = {"n": 0}

    def interrupted(self, size):
        calls["n"] += 1
        if calls["n"] > 60:  # an epoch and a half of 40 steps
            raise KeyboardInterrupt
        return original(self, size)

    monkeypatch.setattr(model_data.PatchSampler, "batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        finetune(long, progress=False)
    import torch

    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ck["epoch"] == 1
    monkeypatch.setattr(model_data.PatchSampler, "batch", original)

    def no_rereading(*args, **kwargs):
        raise AssertionError("a resumed fine-tune must not rebuild its pairs")

    monkeypatch.setattr("bluesky_tomogan.finetune.read_scan", no_rereading)
    seen: dict[str, TrainResult] = {}
    from bluesky_tomogan.model import train as train_module

    real_train = train_module.train

    def spy(config, resume=False, progress=True):
        assert resume
        seen["result"] = real_train(config, resume=resume, progress=progress)
        return seen["result"]

    monkeypatch.setattr(train_module, "train", spy)
    finetune(cfg, resume=True, progress=False)
    history = seen["result"].history
    assert [h["epoch"] for h in history[:2]] == [1, 2]
    assert history[0] == ck["history"][0]


def test_pairs_made_before_a_budget_too_small_to_train_are_used_again_with_resume(grains_scan, tmp_path,
                                                                                 monkeypatch):
    """A large scan's pairs take minutes: a first try with too small a budget must not waste them."""
    from dataclasses import replace

    from bluesky_tomogan.model import train as train_module

    path, _ = grains_scan
    out = tmp_path / "ft"
    # the ONNX export's 30 s and 20 s of training, and a millisecond: they fit before the pairs are made, not after
    small = FinetuneConfig(source=str(path), out_dir=str(out), minutes=50.001 / 60, formats=("onnx",), threads=2)
    with pytest.raises(ScanError, match=r"raise --minutes \(with --resume the pairs in .*pairs.h5 are used again\)"):
        finetune(small, progress=False)
    assert (out / "pairs.h5").is_file() and not (out / "pairs.h5.partial").exists()

    def no_rereading(*args, **kwargs):
        raise AssertionError("a resumed fine-tune must not rebuild its pairs")

    class Started(Exception):
        pass

    def started(config, resume=False, progress=True):
        assert resume and config.data == str(out / "pairs.h5")
        raise Started

    monkeypatch.setattr("bluesky_tomogan.finetune.read_scan", no_rereading)
    monkeypatch.setattr(train_module, "train", started)
    with pytest.raises(ScanError, match=r"holds pairs made with seed 0 \(asked: 1\): give another --out"):
        finetune(replace(small, minutes=5, seed=1), resume=True, progress=False)
    with pytest.raises(Started):
        finetune(replace(small, minutes=5), resume=True, progress=False)


@pytest.mark.parametrize("case", ["missing", "not-hdf5", "no-projections", "few-angles", "too-small", "nan",
                                  "angles-mismatch", "key-is-a-group", "rows-outside"])
def test_bad_scans_are_clear_errors_before_any_training(case, tmp_path):
    path = tmp_path / "scan.h5"
    rng = np.random.default_rng(0)
    frames = rng.poisson(100, (128, 32, 32)).astype(np.uint16)
    if case == "not-hdf5":
        path.write_text("not a scan")
    elif case != "missing":
        with h5py.File(path, "w") as f:
            if case == "no-projections":
                f["exchange/theta"] = np.arange(128.0)
            elif case == "few-angles":
                f["exchange/data"] = frames[:40]
            elif case == "too-small":
                f["exchange/data"] = frames[:, :8]
            elif case == "nan":  # NaN in some frames only: a fault (in every frame it is the detector's mask)
                f["exchange/data"] = np.where((np.arange(128) == 7)[:, None, None] & (np.arange(32) == 5), np.nan,
                                              frames.astype(np.float32))
            elif case == "angles-mismatch":
                f["exchange/data"] = frames
                f["exchange/theta"] = np.arange(100.0)
            elif case == "key-is-a-group":
                f["exchange/data"] = frames
            elif case == "rows-outside":
                f["exchange/data"] = frames
    expected = {"missing": "does not exist", "not-hdf5": "not a readable HDF5", "no-projections": "no projections",
                "few-angles": "too few to split", "too-small": "too few to split into training",
                "nan": "NaN", "angles-mismatch": "100 angles for 128 projections",
                "key-is-a-group": "'exchange' is a group, not a dataset",
                "rows-outside": "lie outside the detector's 32 rows"}[case]
    out = tmp_path / "out"
    options = {"key-is-a-group": {"key": "exchange"}, "rows-outside": {"rows": (16, 40)}}.get(case, {})
    with pytest.raises(ScanError, match=expected):
        finetune(FinetuneConfig(source=str(path), out_dir=str(out), formats=("onnx",), **options), progress=False)
    assert not (out / "checkpoint.pt").exists() and not (out / "pairs.h5").exists()


def test_finetune_command_reports_a_bad_scan_in_one_line(tmp_path, capsys):
    # --format onnx: the suite's environment has no TensorFlow, whose absence is reported first otherwise
    code = main(["finetune", str(tmp_path / "nope.h5"), "--out", str(tmp_path / "o"), "--no-progress",
                 "--format", "onnx"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "finetune: error:" in err[0] and "does not exist" in err[0]
    assert main(["finetune", "http://localhost:1", "--out", str(tmp_path / "o"), "--format", "onnx"]) == 1
    assert "--uid" in capsys.readouterr().err


def test_a_projection_scan_of_another_name_and_radian_angles_is_read(tmp_path):
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f["projections"] = np.ones((64, 16, 16), np.float32)
        f["angles"] = np.linspace(0, np.pi, 64, endpoint=False)[::-1]
    scan = read_scan(str(path))
    assert scan.angles[0] == 0 and scan.angles[-1] == pytest.approx(180 - 180 / 64)
    assert scan.flats is None and scan.darks is None


def _nexus_frames(n_proj: int = 70):
    """Darks, flats, projections and one invalid frame in one stack, as NeXus files keep them."""
    rng = np.random.default_rng(0)
    key = np.array([2] * 3 + [1] * 4 + [0] * n_proj + [3], np.int32)
    frames = np.where(key[:, None, None] == 2, 100.0, 1000.0 + 10.0 * key[:, None, None])
    frames = (frames + rng.normal(0, 1, (len(key), 20, 24))).astype(np.float32)
    angles = np.concatenate([np.zeros(7), np.linspace(0, np.pi, n_proj, endpoint=False)[::-1], [0.0]])
    return key, frames, angles


def test_an_nxtomo_file_is_read_by_its_image_key_and_rotation_angles(tmp_path):
    key, frames, angles = _nexus_frames()
    path = tmp_path / "scan.nx"
    with h5py.File(path, "w") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"], entry["definition"] = "NXentry", "NXtomo"
        detector = entry.create_group("instrument/detector")
        detector["data"], detector["image_key"] = frames, key
        sample = entry.create_group("sample")
        sample["rotation_angle"] = angles
        sample["rotation_angle"].attrs["units"] = "rad"
        data = entry.create_group("data")
        data.attrs.update({"NX_class": "NXdata", "signal": "data"})
        data["data"] = h5py.SoftLink("/entry/instrument/detector/data")
        data["image_key"] = h5py.SoftLink("/entry/instrument/detector/image_key")
        entry.attrs["default"] = "data"  # before "binned", a stack of another shape that sorts first by name
        binned = entry.create_group("binned")
        binned.attrs.update({"NX_class": "NXdata", "signal": "data"})
        binned["data"] = frames[:, ::2, ::2]
    for key_option in (None, "entry/instrument/detector/data"):
        scan = read_scan(str(path), key=key_option)
        assert scan.shape == (70, 20, 24)  # the invalid frame (3) left out
        np.testing.assert_allclose(scan.angles, np.sort(np.rad2deg(angles[7:77])), atol=1e-9)
        np.testing.assert_allclose(scan.flats, frames[3:7].mean(0), rtol=1e-6)
        np.testing.assert_allclose(scan.darks, frames[:3].mean(0), rtol=1e-6)
        np.testing.assert_allclose(scan.projections[0], frames[76], rtol=1e-6)  # angle 0 was stored last


def test_projections_named_by_key_in_a_data_exchange_file_keep_its_flats_darks_and_angles(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "dx.h5"
    with h5py.File(path, "w") as f:
        f["exchange/data"] = rng.poisson(800, (8, 16, 20)).astype(np.uint16)
        f["exchange/data_white"] = np.full((2, 16, 20), 900, np.uint16)
        f["exchange/data_dark"] = np.full((2, 16, 20), 10, np.uint16)
        f["exchange/theta"] = np.linspace(0, 175, 8)
    scan = read_scan(str(path), key="exchange/data")
    assert scan.flats is not None and scan.darks is not None and scan.flats.mean() == 900
    np.testing.assert_allclose(scan.angles, np.linspace(0, 175, 8))
    with h5py.File(path, "a") as f:
        f["mine"] = f["exchange/data"][()]  # at the root, under a name of the user's
    assert read_scan(str(path), key="mine").shape == (8, 16, 20)


def _stored_alone(tmp_path, rng, n=24):
    """Projections as one TIFF per angle (in an order their names' numbers give, not the angles'), their angles in a
    text file, flats as a directory of TIFF files and darks as a .npy; the same scan in a Data Exchange file."""
    import tifffile

    frames = rng.poisson(800, (n, 16, 20)).astype(np.uint16)
    angles = rng.permutation(np.linspace(0, 180, n, endpoint=False))
    flats, darks = rng.poisson(900, (3, 16, 20)).astype(np.uint16), rng.poisson(10, (2, 16, 20)).astype(np.uint16)
    (tmp_path / "proj").mkdir()
    (tmp_path / "flat").mkdir()
    for i, frame in enumerate(frames):
        tifffile.imwrite(tmp_path / "proj" / f"proj_{i}.tif", frame)  # proj_2 before proj_10
    for i, frame in enumerate(flats):
        tifffile.imwrite(tmp_path / "flat" / f"flat_{i}.tif", frame)
    np.save(tmp_path / "darks.npy", darks)
    (tmp_path / "angles.txt").write_text("# degrees\n" + "\n".join(f"{a:.6f}" for a in angles) + "\n")
    with h5py.File(tmp_path / "dx.h5", "w") as f:
        f["exchange/data"], f["exchange/theta"] = frames, np.round(angles, 6)
        f["exchange/data_white"], f["exchange/data_dark"] = flats, darks
    return tmp_path / "dx.h5"


def test_projections_stored_alone_are_read_with_their_angles_flats_and_darks_files(tmp_path):
    """A directory of TIFF files (how many beamlines store a scan) and a .npy stack: the scan a Data Exchange file
    of the same frames gives, sorted by angle, with the averaged flats and darks."""
    dx = read_scan(str(_stored_alone(tmp_path, np.random.default_rng(3))))
    kind = {"angles": str(tmp_path / "angles.txt"), "flats": str(tmp_path / "flat"),
            "darks": str(tmp_path / "darks.npy")}
    scan = read_scan(str(tmp_path / "proj"), **kind)
    for got, want in ((scan.projections, dx.projections), (scan.angles, dx.angles), (scan.flats, dx.flats),
                      (scan.darks, dx.darks)):
        np.testing.assert_array_equal(got, want)
    assert scan.source == str(tmp_path / "proj")
    with h5py.File(tmp_path / "dx.h5") as f:
        np.save(tmp_path / "proj.npy", f["exchange/data"][()])
    np.testing.assert_array_equal(read_scan(str(tmp_path / "proj.npy"), **kind).projections, dx.projections)
    band = read_scan(str(tmp_path / "proj.npy"), rows=lambda shape: slice(4, 12), **kind)
    assert band.rows == (4, 12) and band.flats.shape == band.darks.shape == (8, 20)
    np.testing.assert_array_equal(band.projections, dx.projections[:, 4:12])


def test_projections_flats_and_darks_side_by_side_in_one_directory_are_told_apart_by_patterns(tmp_path):
    import tifffile

    dx = read_scan(str(_stored_alone(tmp_path, np.random.default_rng(5))))
    mixed = tmp_path / "proj"  # the projections' directory gets the flats and darks too
    for i, frame in enumerate(read_scan_h5_stack(tmp_path / "dx.h5", "exchange/data_white")):
        tifffile.imwrite(mixed / f"flat_{i}.tif", frame)
    for i, frame in enumerate(read_scan_h5_stack(tmp_path / "dx.h5", "exchange/data_dark")):
        tifffile.imwrite(mixed / f"dark_{i}.tif", frame)
    scan = read_scan(f"{mixed}/proj_*.tif", angles=str(tmp_path / "angles.txt"), flats=f"{mixed}/flat_*.tif",
                     darks=f"{mixed}/dark_*.tif")
    for got, want in ((scan.projections, dx.projections), (scan.angles, dx.angles), (scan.flats, dx.flats),
                      (scan.darks, dx.darks)):
        np.testing.assert_array_equal(got, want)


def read_scan_h5_stack(path, key):
    with h5py.File(path) as f:
        return f[key][()]


def test_projections_stored_alone_without_angles_are_taken_evenly_over_half_a_turn(tmp_path, caplog):
    np.save(tmp_path / "proj.npy", np.random.default_rng(0).poisson(500, (64, 8, 8)).astype(np.uint16))
    with caplog.at_level("WARNING"):
        scan = read_scan(str(tmp_path / "proj.npy"))
    np.testing.assert_allclose(scan.angles, np.arange(64) * 180 / 64)
    assert "no rotation angles stored; assuming 64 angles evenly over [0, 180) degrees" in caplog.text


@pytest.mark.parametrize("case, expected", [
    ("angles-count", "holds 23 angles for 24 frames"),
    ("angles-text", "cannot read angles"),
    ("flats-shape", "flats have shape (1, 16, 10), expected (k, 16, 20)"),
    ("no-tiffs", "holds no TIFF files"),
    ("missing", "does not exist"),
    ("hdf5-with-angles", "angles files are for frames stored alone"),
    ("key", "a dataset key (exchange/data) is for an HDF5 file"),
])
def test_bad_files_beside_projections_stored_alone_are_clear_errors_before_any_training(tmp_path, case, expected):
    dx = _stored_alone(tmp_path, np.random.default_rng(4))
    source, options = str(tmp_path / "proj"), {"angles": str(tmp_path / "angles.txt")}
    if case == "angles-count":
        (tmp_path / "angles.txt").write_text("\n".join(map(str, range(23))))
    elif case == "angles-text":
        (tmp_path / "angles.txt").write_text("0\n1\nninety\n")
    elif case == "flats-shape":
        np.save(tmp_path / "narrow.npy", np.ones((16, 10), np.uint16))
        options["flats"] = str(tmp_path / "narrow.npy")
    elif case == "no-tiffs":
        source = str(tmp_path / "empty")
        (tmp_path / "empty").mkdir()
    elif case == "missing":
        source = str(tmp_path / "nope.npy")
    elif case == "hdf5-with-angles":
        source = str(dx)
    elif case == "key":
        options["key"] = "exchange/data"
    out = tmp_path / "out"
    with pytest.raises(ScanError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        finetune(FinetuneConfig(source=source, out_dir=str(out), formats=("onnx",), **options), progress=False)
    assert not (out / "pairs.h5").exists()


def test_a_diamond_nexus_file_with_frames_and_angles_in_linked_files_is_read(tmp_path):
    """As DIAD (Diamond K11) writes: the frames and angles in files beside the .nxs, an axis whose file is absent."""
    key, frames, angles = _nexus_frames()
    (tmp_path / "k11-1").mkdir()
    with h5py.File(tmp_path / "k11-1" / "k11-1-imaging.h5", "w") as f:
        f["entry/detector/detector"] = frames
    with h5py.File(tmp_path / "k11-1" / "k11-1-pcompPanda.h5", "w") as f:
        f["entry/gts_theta.value/gts_theta.value"] = np.rad2deg(angles) + 90
    path = tmp_path / "k11-1.nxs"
    with h5py.File(path, "w") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        imaging = entry.create_group("imaging")
        imaging.attrs.update({"NX_class": "NXdata", "signal": "data", "axes": ["gts_theta_value_set", ".", "."],
                              "gts_theta_value_set_indices": [0], "gts_theta_value_indices": [0],
                              "RingCurrent_indices": [0]})
        imaging["data"] = h5py.ExternalLink("k11-1/k11-1-imaging.h5", "/entry/detector/detector")
        imaging["gts_theta_value_set"] = h5py.ExternalLink("k11-1/k11-1-EtherCAT.h5", "/entry/set")  # not there
        imaging["gts_theta_value"] = h5py.ExternalLink("k11-1/k11-1-pcompPanda.h5",
                                                       "/entry/gts_theta.value/gts_theta.value")
        imaging["RingCurrent"] = np.full(len(key), 300.0)  # a monitor along the frames: not an angle
        entry["instrument/imaging/image_key"] = key
    scan = read_scan(str(path))
    assert scan.shape == (70, 20, 24) and scan.flats is not None and scan.darks is not None
    np.testing.assert_allclose(scan.angles, np.sort(np.rad2deg(angles[7:77]) + 90), atol=1e-9)
    # the .nxs alone, copied without its directory: said so, with the file it misses
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "k11-1.nxs").write_bytes(path.read_bytes())
    with pytest.raises(ScanError, match=r"entry/imaging/data -> k11-1/k11-1-imaging.h5\): copy the scan's directory"):
        read_scan(str(alone / "k11-1.nxs"))


def test_a_nexus_image_key_without_projections_is_a_clear_error(tmp_path):
    key, frames, _ = _nexus_frames()
    path = tmp_path / "flats.nx"
    with h5py.File(path, "w") as f:
        data = f.create_group("entry/data")
        data.attrs.update({"NX_class": "NXdata", "signal": "data"})
        data["data"], data["image_key"] = frames[:7], key[:7]
    with pytest.raises(ScanError, match=r"marks no frame as a projection \(0\); it holds 4 of 1, 3 of 2"):
        read_scan(str(path))


def test_a_stack_of_several_exposures_per_angle_is_unstacked(tmp_path):
    path = tmp_path / "bursts.h5"
    proj = np.arange(20 * 2 * 8 * 8, dtype=np.float32).reshape(20, 2, 8, 8)
    with h5py.File(path, "w") as f:
        f["projections"] = proj
        f["angles"] = np.arange(20) * 9.0
        f["flats"] = np.full((3, 2, 8, 8), 5.0, np.float32)
    scan = read_scan(str(path))
    assert scan.shape == (40, 8, 8) and scan.flats.shape == (8, 8)
    np.testing.assert_allclose(scan.angles, np.repeat(np.arange(20) * 9.0, 2))
    np.testing.assert_array_equal(scan.projections[2:4], proj[1])
    seen = []
    band = read_scan(str(path), rows=lambda shape: seen.append(shape) or slice(2, 5))
    assert seen == [(40, 8, 8)] and band.shape == (40, 3, 8) and band.flats.shape == (3, 8)
    np.testing.assert_array_equal(band.projections[2:4], proj[1][:, 2:5])


def test_a_photon_counters_masked_gaps_never_reach_the_training_pairs(tmp_path):
    """Gap columns at 2**32 - 1 in projections and flats: read as their nearest unmasked neighbours."""
    top = np.iinfo(np.uint32).max
    proj = np.full((64, 16, 16), 300, np.uint32)
    proj[:, :, 7] = top
    flats = np.full((4, 16, 16), 1000, np.uint32)
    flats[:, :, 7] = top
    path = tmp_path / "eiger.h5"
    with h5py.File(path, "w") as f:
        f["projections"], f["flats"] = proj, flats
    scan = read_scan(str(path))
    assert scan.projections.max() == 300 and scan.flats is not None and scan.flats.max() == 1000


def test_nan_in_the_same_pixels_of_every_frame_is_filled_like_a_gap(tmp_path):
    """A float scan whose detector marks pixels without data with NaN (the same pixels in every
    projection and flat): read as their nearest neighbours, not refused."""
    proj = np.full((64, 16, 16), 300, np.float32)
    proj[:, :, 7] = np.nan
    flats = np.full((4, 16, 16), 1000, np.float32)
    flats[:, :, 7] = np.nan
    path = tmp_path / "masked.h5"
    with h5py.File(path, "w") as f:
        f["projections"], f["flats"] = proj, flats
    scan = read_scan(str(path))
    assert np.isfinite(scan.projections).all() and scan.projections.max() == 300
    assert scan.flats is not None and np.isfinite(scan.flats).all() and scan.flats.max() == 1000


def test_neighbour_pairs_have_independent_noise_at_half_resolution():
    rng = np.random.default_rng(1)
    frames = rng.poisson(200.0, (24, 96, 96)).astype(np.float32)  # a flat field: all structure is noise
    pairs, info = neighbour_pairs(Scan(frames, np.arange(24.0), None, None, "test"))
    assert pairs.ns.shape == (24, 48, 48) and info["half_size"] == 48
    a, b = pairs.ns - 200.0, pairs.gt - 200.0
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.02  # different pixels of each 2x2 cell
    assert not np.array_equal(pairs.ns, pairs.gt)


def test_neighbour_pairs_hold_no_hot_or_dead_pixel_and_keep_the_frames_range():
    """A camera with 1 % hot pixels at 65535 and 0.3 % dead ones: the pairs are made of what the network sees at
    inference (despiked), so no pair holds a defect and each frame's robust range is the camera's, not the hot
    pixels' (which, from 0.5 % on, would set its top)."""
    from bluesky_tomogan.normalise import robust_range

    rng = np.random.default_rng(2)
    frames = rng.poisson(800.0, (24, 96, 96)).astype(np.float32)
    defects = rng.random((96, 96))
    frames[:, defects < 0.01] = 65535.0
    frames[:, (defects >= 0.01) & (defects < 0.013)] = 0.0
    pairs, _ = neighbour_pairs(Scan(frames, np.arange(24.0), None, None, "test"))
    for half in (pairs.ns, pairs.gt):
        assert half.max() < 800 + 8 * np.sqrt(800) and half.min() > 800 - 8 * np.sqrt(800)
        offset, scale = robust_range(half[0])
        assert scale < 10 * np.sqrt(800)


def test_noise2inverse_targets_are_subsets_and_inputs_their_complements(grains_scan):
    path, _ = grains_scan
    pairs, info = noise2inverse_pairs(read_scan(str(path)), splits=4, rows=slice(20, 40), progress=False)
    assert pairs.ns.shape[0] == 4 * 20 and info["angles_per_split"] == 32
    sub = pairs.gt.reshape(4, 20, *pairs.gt.shape[1:])
    np.testing.assert_allclose(pairs.ns[:20], (sub[1] + sub[2] + sub[3]) / 3, atol=1e-5)
    assert list(np.unique(pairs.group)) == [0, 1, 2, 3]


def test_the_split_noise2inverse_pairs_are_those_of_the_held_out_split_bit_for_bit(grains_scan):
    """make_pairs lays the held-out slab out while it reconstructs (no copy of the largest arrays): the same
    pairs, in the same order, as splitting all of them afterwards."""
    from bluesky_tomogan.finetune.pairs import holdout_split, noise2inverse_split

    path, _ = grains_scan
    band = read_scan(str(path), rows=lambda shape: slice(16, 56))
    train, test, info = noise2inverse_split(band, splits=4, progress=False)
    expected = holdout_split(noise2inverse_pairs(band, splits=4, progress=False)[0])
    for got, want in zip((train, test), expected, strict=True):
        for a, b in ((got.ns, want.ns), (got.gt, want.gt), (got.group, want.group)):
            np.testing.assert_array_equal(a, b)
    assert len(test.ns) == 4 * 5 and info["rows"] == 40


def test_a_scan_stored_in_tiled_is_read_with_its_angles_flats_and_darks(RE, store, tmp_path):
    from bluesky_tiled_plugins import TiledWriter

    from bluesky_tomogan.devices import SimTomoDetector, SimTomoStage
    from bluesky_tomogan.plans import tomo_scan
    from bluesky_tomogan.simulate.tomography import angles_deg
    from bluesky_tomogan.storage import frames_directory, server_of

    stage = SimTomoStage(name="stage")
    det = SimTomoDetector(name="det", stage=stage, shape=(32, 48), seed=1, simulate_timing=False,
                          directory=frames_directory(tmp_path / "store") / "ft")
    RE.subscribe(TiledWriter(store))
    angles = list(angles_deg(40))[::-1]  # stored in any order: the scan comes back sorted
    (uid,) = RE(tomo_scan(det, stage, angles, n_darks=2, n_flats=3))
    uri = server_of(store).uri
    scan = read_scan(uri, uid)
    assert "api_key" in uri and scan.source == f"run {uid} at {uri.split('?')[0]}"  # the key stays out of cards
    assert scan.shape == (40, 32, 48)
    np.testing.assert_allclose(scan.angles, sorted(angles))
    assert scan.flats.shape == scan.darks.shape == (32, 48) and scan.flats.mean() > scan.darks.mean()
    with pytest.raises(ScanError, match="no such run"):
        read_scan(uri, "not-a-uid")
    with pytest.raises(ScanError, match="no field 'nope'"):
        read_scan(uri, uid, field="nope")
    band = read_scan(uri, uid, rows=lambda shape: slice(8, 24))  # only those rows are fetched
    assert band.rows == (8, 24) and scan.rows is None
    np.testing.assert_array_equal(band.projections, scan.projections[:, 8:24])
    np.testing.assert_allclose(band.flats, scan.flats[8:24])
    np.testing.assert_allclose(band.darks, scan.darks[8:24])
    # the embedded store's directory, as the demo and the profile name it, is read as its URI is
    assert read_scan(str(tmp_path / "store"), uid).shape == (40, 32, 48)
    with pytest.raises(ScanError, match="holds no embedded Tiled store"):
        read_scan(str(tmp_path), uid)
    with pytest.raises(ScanError, match="is a Tiled store: name the run with its uid"):
        read_scan(str(tmp_path / "store"))


def test_a_fly_scan_stored_in_tiled_is_read_with_the_angles_its_angle_field_names(RE, store, tmp_path):
    """A fly scan's angles are another device's capture written to a file (tests/fly_scan.py), here in
    milliradians (its data key's ``units``): ``angle_field`` (``--angle-field``) names them; the scan read is
    the same as stepped (its start document has no angles, no hints). A field the run lacks, or one given
    for a file, is refused before any work."""
    from bluesky_tiled_plugins import TiledWriter

    from bluesky_tomogan.devices import SimTomoDetector, SimTomoStage
    from bluesky_tomogan.hdf5_frames import path_from_uri
    from bluesky_tomogan.plans import tomo_scan
    from bluesky_tomogan.simulate.tomography import angles_deg
    from bluesky_tomogan.storage import frames_directory, server_of

    from .fly_scan import ANGLE_KEY, as_fly_scan

    stage = SimTomoStage(name="stage")
    det = SimTomoDetector(name="det", stage=stage, shape=(32, 48), seed=1, simulate_timing=False,
                          directory=frames_directory(tmp_path / "store") / "fly")
    raw = []
    RE.subscribe(lambda name, doc: raw.append((name, doc)))
    angles = list(angles_deg(40))[::-1]  # in any order: the scan comes back sorted by the angles read
    RE(tomo_scan(det, stage, angles, n_darks=2, n_flats=3))
    fly = [(n, {k: v for k, v in d.items() if k not in ("angles", "hints")} if n == "start" else d)
           for n, d in as_fly_scan(raw, det.directory, units="mrad", per_degree=1000 * math.pi / 180)]
    writer = TiledWriter(store)
    for name, doc in fly:
        writer(name, doc)
    uri, uid = server_of(store).uri, raw[0][1]["uid"]
    flown = read_scan(uri, uid, angle_field=ANGLE_KEY)
    np.testing.assert_allclose(flown.angles, sorted(angles))
    (primary,) = [d["uid"] for n, d in raw if n == "descriptor" and d["name"] == "primary"]
    (resource,) = {d["stream_resource"] for n, d in raw if n == "stream_datum" and d["descriptor"] == primary}
    (file,) = [d for n, d in raw if n == "stream_resource" and d["uid"] == resource]
    with h5py.File(path_from_uri(file["uri"]), "r") as f:
        frames = f[file["parameters"]["dataset"]][()].reshape(40, 32, 48)
    np.testing.assert_array_equal(flown.projections, frames[::-1].astype(np.float32))  # sorted by angle
    assert flown.flats.shape == flown.darks.shape == (32, 48) and flown.flats.mean() > flown.darks.mean()
    with pytest.raises(ScanError, match="the primary stream has no 'stage_theta'"):
        read_scan(uri, uid, angle_field="stage_theta")
    with pytest.raises(ScanError, match="is for a run stored in Tiled"):
        read_scan(str(det.directory / "panda.h5"), angle_field=ANGLE_KEY)


def test_a_stored_fly_scan_whose_image_key_is_written_beside_its_frames_is_split_by_it(RE, store, tmp_path):
    """Darks, flats and projections in one fly-scan stream, the ``image_key`` an NDAttribute written to a file
    (tests/fly_scan.py): Tiled serves it as a column, and the run is split by it as by the key in events."""
    from bluesky_tiled_plugins import TiledWriter

    from bluesky_tomogan.devices import SimTomoDetector, SimTomoStage
    from bluesky_tomogan.simulate.tomography import angles_deg
    from bluesky_tomogan.storage import frames_directory, server_of

    from .fly_scan import ANGLE_KEY, as_fly_scan
    from .keyed_scan import keyed_tomo_scan

    stage = SimTomoStage(name="stage")
    det = SimTomoDetector(name="det", stage=stage, shape=(16, 24), seed=1, simulate_timing=False,
                          directory=frames_directory(tmp_path / "store") / "keyed-fly")
    raw = []
    RE.subscribe(lambda name, doc: raw.append((name, doc)))
    angles = list(angles_deg(12))
    RE(keyed_tomo_scan(det, stage, angles, n_darks=2, n_flats=3))
    writer = TiledWriter(store)
    for name, doc in as_fly_scan(raw, det.directory, moved={"image_key": "det-image_key"}):
        writer(name, doc)
    scan = read_scan(server_of(store).uri, raw[0][1]["uid"], angle_field=ANGLE_KEY)
    assert scan.shape == (12, 16, 24)
    np.testing.assert_allclose(scan.angles, angles)
    assert scan.flats.mean() > 2 * scan.darks.mean() and scan.projections.mean() > 2 * scan.darks.mean()


def test_a_run_of_several_exposures_per_event_gives_one_projection_per_exposure(RE, store, tmp_path):
    """ophyd-async's ``exposures_per_event`` (data key ``[N, rows, columns]``): each exposure
    is a projection at its event's angle (as the live callback denoises them), flats and darks averaged."""
    from bluesky_tiled_plugins import TiledWriter

    from bluesky_tomogan.devices import SimTomoDetector, SimTomoStage
    from bluesky_tomogan.plans import tomo_scan
    from bluesky_tomogan.simulate.tomography import angles_deg
    from bluesky_tomogan.storage import frames_directory, server_of

    stage = SimTomoStage(name="stage")
    det = SimTomoDetector(name="det", stage=stage, shape=(32, 48), seed=1, simulate_timing=False, exposures=3,
                          directory=frames_directory(tmp_path / "store") / "ft3")
    RE.subscribe(TiledWriter(store))
    angles = list(angles_deg(12))
    (uid,) = RE(tomo_scan(det, stage, angles, n_darks=2, n_flats=2))
    stored = store[uid]["primary"]["det_image"].read()
    stored = stored.reshape(12, 3, 32, 48)  # TiledWriter keeps ophyd-async's flat stack: (36, 32, 48)
    scan = read_scan(server_of(store).uri, uid)
    assert scan.shape == (36, 32, 48)
    np.testing.assert_allclose(scan.angles, np.repeat(angles, 3))
    np.testing.assert_array_equal(scan.projections[3:6], stored[1].astype(np.float32))  # exposures in order
    assert scan.flats.shape == scan.darks.shape == (32, 48) and scan.flats.mean() > scan.darks.mean()


def test_starting_weights_are_found_by_name_model_directory_or_file(tmp_path):
    import shutil

    from bluesky_tomogan.errors import ModelLoadError
    from bluesky_tomogan.model.train import resolve_weights

    shipped = resolve_weights("tomogan-slice")
    assert shipped.name == "tomogan-slice.pt"
    for suffix in (".pt", ".json"):  # a model directory, as finetune and export write them
        shutil.copy2(shipped.with_suffix(suffix), tmp_path)
    assert resolve_weights(str(tmp_path)) == tmp_path / "tomogan-slice.pt"
    assert resolve_weights(str(tmp_path / "tomogan-slice.pt")) == tmp_path / "tomogan-slice.pt"
    with pytest.raises(ModelLoadError, match="neither a file nor a shipped or installed model"):
        resolve_weights("no-such-model")


def test_a_missing_export_tool_is_reported_before_any_work(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorflow" else real(name, *a))
    with pytest.raises(ImportError, match=r"tflite export needs tensorflow .*bluesky-tomogan\[export\]"):
        finetune(FinetuneConfig(source=str(tmp_path / "nope.h5"), out_dir=str(tmp_path / "out")), progress=False)
    assert not (tmp_path / "out").exists()


def test_the_export_reserve_is_each_formats_share():
    from bluesky_tomogan.finetune import EXPORT_RESERVE_S, export_reserve_s

    assert export_reserve_s(["onnx"]) == EXPORT_RESERVE_S["onnx"]
    assert export_reserve_s(["onnx", "tflite"]) == EXPORT_RESERVE_S["onnx"] + EXPORT_RESERVE_S["tflite"]


def test_a_grey_cameras_channel_axis_is_not_taken_for_the_rows(tmp_path):
    path = tmp_path / "grey.h5"
    proj = np.arange(64 * 8 * 6, dtype=np.float32).reshape(64, 8, 6, 1)
    with h5py.File(path, "w") as f:
        f["projections"] = proj
        f["flats"] = np.ones((2, 8, 6, 1), np.float32)
    band = read_scan(str(path), rows=lambda shape: slice(1, 4) if shape == (64, 8, 6) else None)
    assert band.shape == (64, 3, 6) and band.flats.shape == (3, 6) and band.rows == (1, 4)
    np.testing.assert_array_equal(band.projections[5], proj[5, 1:4, :, 0])


def test_rows_whose_pairs_do_not_fit_in_memory_are_a_clear_error_and_by_default_a_centred_slab():
    """A 2048-wide detector's Noise2Inverse pairs need about 350 GB for all its rows: without a choice of rows
    the fine-tune would read them all and end in the kernel's out-of-memory kill."""
    from bluesky_tomogan.finetune import pairs_bytes, row_choice

    def big(**kw):
        return FinetuneConfig(source="big.h5", out_dir="o", **kw)

    def instant(shape):  # pairs that take no time: memory alone decides
        return 0.0

    shape = (1500, 2048, 2048)
    per_row = pairs_bytes("slice", (1500, 1, 2048))
    assert pairs_bytes("slice", shape) == 2048 * per_row > 3.4e11
    config = big()
    memory = 100 * per_row  # 80 rows fit in 80 % of it
    chosen = row_choice(config, memory, instant)(shape)
    assert (chosen.start, chosen.stop) == ((2048 - 80) // 2, (2048 - 80) // 2 + 80)
    assert row_choice(config, 10 ** 15, instant)(shape) is None  # all rows fit
    assert row_choice(big(rows=(0, 64)), memory, instant)(shape) == slice(0, 64)
    with pytest.raises(ScanError, match=r"rows 0:512 needs about .* GB, .* GB are available: give at most 80 rows"):
        row_choice(big(rows=(0, 512)), memory, instant)(shape)
    with pytest.raises(ScanError, match="lie outside the detector's 2048 rows"):
        row_choice(big(rows=(2000, 2100)), memory, instant)(shape)
    with pytest.raises(ScanError, match="too large to fine-tune on here"):
        row_choice(config, 10 * per_row, instant)(shape)
    with pytest.raises(ScanError, match="0 <= first < stop"):
        big(rows=(5, 5))


def test_a_large_detectors_slice_pairs_are_made_of_the_centred_rows_they_have_time_for(caplog):
    """All 2048 rows of a 2048-wide detector with 1500 angles: about 6 s a row on 2 cores, 3.5 hours for the
    pairs alone. By default the slab whose pairs take their share of the budget; rows given are kept."""
    from bluesky_tomogan.finetune import EXPORT_RESERVE_S, PAIRS_TIME_SHARE, row_choice

    shape = (1500, 2048, 2048)
    config = FinetuneConfig(source="big.h5", out_dir="o")  # 15 minutes, the three formats
    share = PAIRS_TIME_SHARE * (15 * 60 - sum(EXPORT_RESERVE_S.values()))
    keep = int(share // 6.0)
    chosen = row_choice(config, 10 ** 15, lambda sh: 6.0)(shape)
    assert (chosen.start, chosen.stop) == ((2048 - keep) // 2, (2048 - keep) // 2 + keep)
    assert "would take about 12288 s here" in caplog.text and "--rows" in caplog.text
    # less memory than time: memory decides; rows given, or projections (cheap pairs): no time limit
    from bluesky_tomogan.finetune import pairs_bytes

    small_memory = int((keep // 2) * pairs_bytes("slice", (1500, 1, 2048)) / 0.8) + 1
    by_memory = row_choice(config, small_memory, lambda sh: 6.0)(shape)
    assert by_memory.stop - by_memory.start == keep // 2
    given = FinetuneConfig(source="big.h5", out_dir="o", rows=(0, 512))
    assert row_choice(given, 10 ** 15, lambda sh: 6.0)(shape) == slice(0, 512)
    projections = FinetuneConfig(source="big.h5", out_dir="o", domain="projection")
    assert row_choice(projections, 10 ** 15, lambda sh: 6.0)(shape) is None
    # a scan whose pairs take less than their share: every row (the demo's 512 rows: about 0.07 s each here)
    assert row_choice(config, 10 ** 15, lambda sh: 0.07)((180, 512, 512)) is None


def test_a_budget_that_the_export_would_use_up_is_refused_before_the_scan_is_read():
    from bluesky_tomogan.finetune import row_choice

    with pytest.raises(ScanError, match=r"exporting onnx, tflite, openvino takes about 300 s, .* raise --minutes"):
        row_choice(FinetuneConfig(source="big.h5", out_dir="o", minutes=5), 10 ** 15)((180, 256, 256))
    # the export measures and calibrates on 256x256 of each frame: a 2048-wide detector's fine-tune keeps the
    # default 15 minutes (its export took 201 s), where a reserve that grew with the frames refused it
    everything = row_choice(FinetuneConfig(source="big.h5", out_dir="o"), 10 ** 15, lambda sh: 0.0)
    assert everything((1500, 2048, 2048)) is None
    assert row_choice(FinetuneConfig(source="big.h5", out_dir="o", minutes=5, formats=("onnx",)),
                      10 ** 15, lambda sh: 0.0)((180, 256, 256)) is None


def test_the_finetune_command_takes_detector_rows(tmp_path, capsys):
    from bluesky_tomogan.cli import main

    with pytest.raises(SystemExit):
        main(["finetune", "scan.h5", "--out", str(tmp_path / "o"), "--rows", "10-20"])
    assert "expected detector rows FIRST:STOP" in capsys.readouterr().err
    # a well-formed but empty range is the config's to refuse, before the scan is opened
    assert main(["finetune", "scan.h5", "--out", str(tmp_path / "o"), "--rows", "20:10"]) == 1
    assert "rows must be first:stop with 0 <= first < stop, got 20:10" in capsys.readouterr().err


def test_the_rows_fine_tuned_on_are_recorded_with_the_pairs(tmp_path):
    from bluesky_tomogan.finetune import make_pairs

    path = tmp_path / "scan.h5"
    with h5py.File(path, "w") as f:
        f["projections"] = np.random.default_rng(0).poisson(100, (32, 96, 80)).astype(np.uint16)
    _, _, info = make_pairs(read_scan(str(path), rows=lambda shape: slice(8, 72)), "projection")
    assert info["detector_rows"] == [8, 72] and info["half_size"] == 32
    assert "detector_rows" not in make_pairs(read_scan(str(path)), "projection")[2]


@pytest.mark.parametrize("kind", ["image_key", "frame_type"])
def test_a_stored_run_of_darks_flats_and_projections_in_one_stream_is_read_by_its_key(RE, store, tmp_path, kind):
    """A run that took every frame in ``primary``, each event saying what its frame is: the same projections,
    angles, flats and darks as ``tomo_scan``'s three streams give; one that marks no projection is refused."""
    from bluesky_tiled_plugins import TiledWriter

    from bluesky_tomogan.devices import SimTomoDetector, SimTomoStage
    from bluesky_tomogan.plans import tomo_scan
    from bluesky_tomogan.simulate.tomography import angles_deg
    from bluesky_tomogan.storage import frames_directory, server_of

    from .keyed_scan import keyed_tomo_scan

    RE.subscribe(TiledWriter(store))
    angles, scans = list(angles_deg(12)), {}
    for plan in ("tomo_scan", kind, "darks only"):
        stage = SimTomoStage(name="stage")
        det = SimTomoDetector(name="det", stage=stage, shape=(16, 24), seed=1, simulate_timing=False,
                              directory=frames_directory(tmp_path / "store") / plan.replace(" ", "_"))
        (uid,) = RE(tomo_scan(det, stage, angles, n_darks=2, n_flats=3) if plan == "tomo_scan" else
                    keyed_tomo_scan(det, stage, angles if plan == kind else [], kind, n_darks=2, n_flats=3))
        if plan == "darks only":
            with pytest.raises(ScanError, match=f"primary stream's .*{kind}.* marks no frame as a projection "
                                                r"\(2 dark, 3 flat\)"):
                read_scan(server_of(store).uri, uid)
        else:
            scans[plan] = read_scan(server_of(store).uri, uid)
    three, one = scans["tomo_scan"], scans[kind]
    for got, want in ((one.projections, three.projections), (one.angles, three.angles),
                      (one.flats, three.flats), (one.darks, three.darks)):
        np.testing.assert_allclose(got, want)


def test_noise2inverse_slices_of_an_offset_axis_scan_take_the_doubled_field_of_view(tmp_path):
    """Session 72: each angle subset of a full turn about an offset axis is a full turn too, reconstructed over
    the doubled field of view about the scan's centre (as the live reconstruction does); the info says so."""
    from bluesky_tomogan.finetune.pairs import noise2inverse_pairs
    from bluesky_tomogan.finetune.sources import read_scan_hdf5

    from .test_cli import _offset_axis_scan_file

    path, axis = _offset_axis_scan_file(tmp_path / "half.h5")
    scan = read_scan_hdf5(path)
    pairs, info = noise2inverse_pairs(scan, splits=2, progress=False)
    assert info["offset_axis"] == 1.0 and abs(info["center"] - axis) < 1.0
    assert pairs.ns.shape[-2:] == pairs.gt.shape[-2:] == (104, 104)
