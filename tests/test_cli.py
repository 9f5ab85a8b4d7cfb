"""The console script: help lists the commands, errors are one clear line."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from bluesky_tomogan.cli import main
from bluesky_tomogan.storage import stored_frames

from .conftest import copy_of_shipped_model

COMMANDS = ["demo", "merge", "simulate", "train", "average", "finetune", "export", "quality", "denoise", "reprocess",
            "center", "bench", "models", "serve", "qc-ioc", "view"]


def test_every_command_parses_and_has_its_own_help(capsys):
    import argparse

    from bluesky_tomogan.cli import build_parser

    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert sorted(sub.choices) == sorted(COMMANDS)
    for cmd in COMMANDS:
        with pytest.raises(SystemExit) as exit_:
            main([cmd, "--help"])
        assert exit_.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: bluesky-tomogan {cmd}")


def test_the_console_script_module_runs():
    out = subprocess.run([sys.executable, "-m", "bluesky_tomogan.cli", "models"], capture_output=True,
                         text=True, check=True).stdout
    assert "tomogan-projection: projection domain" in out


def test_view_without_a_display_wants_a_directory_for_its_pictures(tmp_path, capsys):
    import matplotlib

    matplotlib.use("Agg")
    assert main(["view", "--zmq-in", "localhost:1"]) == 2  # refused before it looks for the stream
    assert "shows no window (no display?)" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(["view", "--zmq-in", "localhost:1", "--save", str(tmp_path / "file" / "views")]) == 2
    assert "cannot make the directory" in capsys.readouterr().err


def test_version_names_the_package_python_the_cpu_and_every_runtime_installed_or_not(capsys):
    from bluesky_tomogan import __version__
    from bluesky_tomogan.cli import REPORTED_PACKAGES

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"bluesky-tomogan {__version__}\n")
    assert "\nPython 3." in out and "\nCPU: " in out
    for names in REPORTED_PACKAGES.values():
        for name in names:  # each with its version, or said to be missing (tensorrt on a machine without a GPU)
            assert re.search(rf"[:,] {re.escape(name)} (\d|\(not installed\))", out), name
    assert re.search(r"openvino \d{4}\.", out)  # a core dependency is always installed


def test_python_dash_m_runs_the_command_line():
    out = subprocess.run([sys.executable, "-m", "bluesky_tomogan", "--version"], capture_output=True,
                         text=True, check=True).stdout
    assert out.startswith("bluesky-tomogan ")


def test_models_lists_each_measured_loss_with_its_worst_frame_and_cpu_and_says_what_auto_runs_here(capsys):
    from bluesky_tomogan.inference.load import load_denoiser, shipped_models

    assert main(["models", "--here"]) == 0
    out = capsys.readouterr().out
    assert "openvino/int8@no-vnni  SSIM" in out and " worst frame  (AMD EPYC (family 25, model 1))" in out
    picks = [line.split("auto here: ")[1] for line in out.splitlines() if "auto here: " in line]
    assert len(picks) == len(shipped_models())
    den = load_denoiser("tomogan-projection")
    assert picks[0] == f"{den.backend}/{den.precision}"


def test_simulate_writes_a_dataset_the_trainer_reads(tmp_path, capsys):
    from bluesky_tomogan.simulate.datasets import read_dataset

    out = tmp_path / "d.h5"
    assert main(["simulate", str(out), "--size", "32", "--n-train", "1", "--n-test", "1"]) == 0
    assert read_dataset(out).train_ns.shape == (32, 32, 32)
    grain = tmp_path / "g.h5"
    assert main(["simulate", str(grain), "--size", "32", "--n-train", "1", "--n-test", "1",
                 "--sample-grain", "0.2", "0.3"]) == 0
    assert read_dataset(grain).recipe["sample_grain"] == [0.2, 0.3]
    assert main(["simulate", str(tmp_path / "x.h5"), "--sample-grain", "0.2", "0.9"]) == 2
    assert "sample_grain is a relative RMS of at most 0.5" in capsys.readouterr().err
    wide = tmp_path / "w.h5"
    assert main(["simulate", str(wide), "--size", "32", "--n-train", "1", "--n-test", "1",
                 "--beyond-view", "1", "--beyond-width", "1.5", "2"]) == 0
    assert read_dataset(wide).recipe["beyond_view"] == 1 and read_dataset(wide).recipe["beyond_width"] == [1.5, 2]


def test_train_on_a_bad_file_is_one_clear_error_line(tmp_path, capsys):
    pytest.importorskip("torch")
    bad = tmp_path / "bad.h5"
    bad.write_text("not hdf5")
    assert main(["train", str(bad), "--out", str(tmp_path / "o"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "bluesky-tomogan train: error:" in err and "not a readable HDF5 file" in err


def test_train_with_a_teacher_it_cannot_read_is_one_clear_error_line(tmp_path, capsys):
    pytest.importorskip("torch")
    data = tmp_path / "d.h5"
    assert main(["simulate", str(data), "--size", "32", "--n-train", "1", "--n-test", "1"]) == 0
    args = ["train", str(data), "--out", str(tmp_path / "o"), "--no-progress", "--patch", "32"]
    assert main([*args, "--teacher", str(tmp_path / "nope.pt")]) == 1
    assert "cannot read the teacher's weights" in capsys.readouterr().err
    assert main([*args, "--teacher", "tomogan-projection", "--distill-weight", "2"]) == 2
    assert "distill_weight is the teacher's share of the loss, in [0, 1]" in capsys.readouterr().err


@pytest.mark.parametrize("option, bad, message, good, key", [
    ("--min-delta", "-1e-4", "min_delta is the smallest validation gain that counts, >= 0; got -0.0001",
     "1e-4", "min_delta"),
    ("--ema-decay", "1", "ema_decay is the weight average's decay per step, in [0, 1); got 1.0", "0.99", "ema_decay"),
])
def test_a_training_option_reaches_the_run_and_a_value_outside_its_range_is_one_clear_error_line(
        tmp_path, capsys, option, bad, message, good, key):
    pytest.importorskip("torch")
    data = tmp_path / "d.h5"
    assert main(["simulate", str(data), "--size", "32", "--n-train", "1", "--n-test", "1"]) == 0
    args = ["train", str(data), "--no-progress", "--patch", "32", "--epochs", "1", "--steps-per-epoch", "2",
            "--width", "0.25", "--adv-weight", "0", "--feat-weight", "0"]
    assert main([*args, "--out", str(tmp_path / "bad"), f"{option}={bad}"]) == 2
    assert message in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "o"), option, good]) == 0
    card = json.loads((tmp_path / "o" / "tomogan.json").read_text())
    assert card["training"]["config"][key] == float(good)


def test_export_activation_copies_must_be_layer_equals_count(capsys):
    with pytest.raises(SystemExit):
        main(["export", "somewhere", "--data", "d.h5", "--activation-copies", "stem.0:4"])
    assert "expected LAYER=K with K >= 1 (e.g. stem.0=4), got 'stem.0:4'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["simulate", "x.h5", "--n-train", "0"], "argument --n-train: expected a whole number >= 1, got 0"),
    (["bench", "--sizes", "0"], "argument --sizes: expected a whole number >= 8, got 0"),
    (["bench", "--repeats", "ten"], "argument --repeats: expected a whole number, got 'ten'"),
    (["denoise", "a.npy", "b.npy", "--threads", "0"], "argument --threads: expected a whole number >= 1, got 0"),
    (["serve", "--zmq-in", "localhost:5578", "--root-map", "/ioc/data:/mnt"],
     "argument --root-map: expected THERE=HERE (two paths), got '/ioc/data:/mnt'"),
    (["train", "x.h5", "--out", "o", "--context", "4"], "argument --context: the context is the centre frame and "
                                                          "as many on each side: an odd number, got 4"),
    (["train", "x.h5", "--out", "o", "--context", "0"], "argument --context: expected a whole number >= 1, got 0"),
])
def test_counts_out_of_range_are_usage_errors_not_tracebacks(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_denoise_with_an_unknown_backend_is_one_clear_error_line(tmp_path, capsys):
    import numpy as np

    src = tmp_path / "f.npy"
    np.save(src, np.zeros((16, 16), np.float32))
    with pytest.raises(SystemExit) as exit_:
        main(["denoise", str(src), str(tmp_path / "o.npy"), "--backend", "quantum"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "invalid choice: 'quantum'" in err
    assert "edgetpu" in err and "tensorrt" in err  # the choices come from the backend registry


def test_a_grey_frame_with_a_trailing_channel_axis_is_denoised_as_one_frame(tmp_path, capsys):
    import numpy as np

    src, dest = tmp_path / "grey.npy", tmp_path / "out.npy"
    np.save(src, np.random.default_rng(0).poisson(100, (40, 24, 1)).astype(np.uint16))
    assert main(["denoise", str(src), str(dest), "--backend", "onnxruntime"]) == 0
    out = np.load(dest)
    assert out.shape == (40, 24) and out.std() < np.load(src).std()


def test_a_directory_of_tiff_files_is_denoised_as_one_stack_in_the_order_of_their_numbers(tmp_path, capsys):
    import numpy as np
    import tifffile

    frames = np.random.default_rng(0).poisson(300, (12, 24, 32)).astype(np.uint16)
    scan = tmp_path / "scan"
    scan.mkdir()
    for i, frame in enumerate(frames):  # proj_2 before proj_10, as the numbers say
        tifffile.imwrite(scan / f"proj_{i}.tif", frame, photometric="minisblack")
    (scan / "notes.txt").write_text("not a frame")
    np.save(tmp_path / "stack.npy", frames)
    for src, dest in ((scan, tmp_path / "from-dir.npy"), (tmp_path / "stack.npy", tmp_path / "from-npy.npy")):
        assert main(["denoise", str(src), str(dest), "--backend", "onnxruntime"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "from-dir.npy"), np.load(tmp_path / "from-npy.npy"))


def test_a_pattern_of_tiff_names_picks_the_projections_from_a_directory_that_holds_flats_and_darks_too(
        tmp_path, capsys):
    """Many beamlines write projections, flats and darks side by side (proj_0001.tif, flat_0001.tif, ...): a
    quoted pattern of names denoises the projections alone, in the order of their numbers, and an output that is
    one of the files it matches is refused."""
    import numpy as np
    import tifffile

    frames = np.random.default_rng(2).poisson(300, (10, 24, 32)).astype(np.uint16)
    scan = tmp_path / "scan"
    scan.mkdir()
    for i, frame in enumerate(frames):
        tifffile.imwrite(scan / f"proj_{i}.tif", frame, photometric="minisblack")
    for i in range(3):
        tifffile.imwrite(scan / f"flat_{i}.tif", np.full((24, 32), 900, np.uint16), photometric="minisblack")
        tifffile.imwrite(scan / f"dark_{i}.tif", np.full((24, 32), 10, np.uint16), photometric="minisblack")
    np.save(tmp_path / "stack.npy", frames)
    for src, dest in ((f"{scan}/proj_*.tif", tmp_path / "from-pattern.npy"),
                      (tmp_path / "stack.npy", tmp_path / "from-npy.npy")):
        assert main(["denoise", str(src), str(dest), "--backend", "onnxruntime"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "from-pattern.npy"), np.load(tmp_path / "from-npy.npy"))
    assert main(["denoise", f"{scan}/proj_*.tif", str(tmp_path / "dn"), "--backend", "onnxruntime"]) == 0
    assert sorted(p.name for p in (tmp_path / "dn").iterdir()) == sorted(f"proj_{i}.tif" for i in range(10))
    raw = (scan / "proj_3.tif").read_bytes()
    capsys.readouterr()
    assert main(["denoise", f"{scan}/proj_*.tif", str(scan / "proj_3.tif"), "--backend", "onnxruntime"]) == 1
    assert "is the input or one of its files" in capsys.readouterr().err
    assert (scan / "proj_3.tif").read_bytes() == raw
    assert main(["denoise", f"{scan}/proj_9*.tiff", str(tmp_path / "none.npy")]) == 1
    assert "holds no TIFF files" in capsys.readouterr().err
    assert main(["denoise", f"{tmp_path}/nowhere/proj_*.tif", str(tmp_path / "none.npy")]) == 1
    assert "nowhere of the pattern 'proj_*.tif' does not exist" in capsys.readouterr().err


def test_a_directory_of_tiff_files_is_denoised_into_a_directory_of_the_same_names_and_never_over_raw_files(
        tmp_path, capsys):
    import json

    import numpy as np
    import tifffile

    frames = np.random.default_rng(1).poisson(300, (11, 24, 32)).astype(np.uint16)
    scan = tmp_path / "scan"
    scan.mkdir()
    names = [f"proj_{i}.tif" for i in range(len(frames))]
    for name, frame in zip(names, frames, strict=True):
        tifffile.imwrite(scan / name, frame, photometric="minisblack")
    raw = {name: (scan / name).read_bytes() for name in names}
    assert main(["denoise", str(scan), str(tmp_path / "stack.npy"), "--backend", "onnxruntime"]) == 0
    assert main(["denoise", str(scan), str(tmp_path / "denoised"), "--backend", "onnxruntime"]) == 0
    assert sorted(p.name for p in (tmp_path / "denoised").iterdir()) == sorted(names)  # frame by frame, same names
    stack = np.load(tmp_path / "stack.npy")
    for i, name in enumerate(names):  # each frame with the context it has in the stack
        with tifffile.TiffFile(tmp_path / "denoised" / name) as t:
            np.testing.assert_array_equal(t.asarray(), stack[i])
            assert json.loads(t.pages[0].description)["model"] == "tomogan-projection"
    # a single .npy frame, into a directory named with a separator: numbered files
    np.save(tmp_path / "one.npy", frames[0])
    assert main(["denoise", str(tmp_path / "one.npy"), f"{tmp_path / 'single'}/", "--backend", "onnxruntime"]) == 0
    assert [p.name for p in (tmp_path / "single").iterdir()] == ["frame_00000.tif"]
    # a directory whose name has a dot says so by its separator
    assert main(["denoise", str(tmp_path / "one.npy"), f"{tmp_path / 'single.v2'}/", "--backend", "onnxruntime"]) == 0
    assert [p.name for p in (tmp_path / "single.v2").iterdir()] == ["frame_00000.tif"]
    capsys.readouterr()
    # the input directory as the output (or any directory that holds something) is refused before any work
    for dest in (scan, tmp_path / "denoised"):
        assert main(["denoise", str(scan), str(dest), "--backend", "onnxruntime"]) == 1
        assert "is not empty; give a new or empty directory" in capsys.readouterr().err
    assert {name: (scan / name).read_bytes() for name in names} == raw


@pytest.mark.parametrize("suffix", [".npy", ".tif", ".h5"])
def test_the_input_named_as_output_is_refused_and_the_raw_frames_stay_as_they_were(tmp_path, capsys, suffix):
    """``denoise scan.tif scan.tif`` (or through a link, or a file of the input directory) would
    replace raw frames with denoised ones: refused before any work, for every kind of file."""
    import h5py
    import numpy as np
    import tifffile

    from bluesky_tomogan.errors import TomoGANError
    from bluesky_tomogan.frame_files import denoise_file, open_frames

    frames = np.random.default_rng(2).poisson(300, (3, 16, 24)).astype(np.uint16)
    src = tmp_path / f"scan{suffix}"
    if suffix == ".npy":
        np.save(src, frames)
    elif suffix == ".tif":
        tifffile.imwrite(src, frames, photometric="minisblack")
    else:
        with h5py.File(src, "w") as f:
            f["exchange/data"] = frames
    (tmp_path / f"link{suffix}").symlink_to(src)
    scan = tmp_path / "scan"
    scan.mkdir()
    tifffile.imwrite(scan / "p_0.tif", frames[0], photometric="minisblack")
    raw = src.read_bytes(), (scan / "p_0.tif").read_bytes()
    for source, dest, what in ((src, src, "is the input ("), (src, tmp_path / f"link{suffix}", "is the input ("),
                               (scan, scan / "p_0.tif", "is the input or one of its files"),
                               (scan, scan / ".." / "scan" / "p_0.tif", "is the input or one of its files")):
        assert main(["denoise", str(source), str(dest), "--backend", "onnxruntime"]) == 1
        assert what in capsys.readouterr().err
    with open_frames(src) as source, pytest.raises(TomoGANError, match="raw frames are never overwritten"):
        denoise_file(object(), source, tmp_path / f"link{suffix}")  # the library refuses it too, before any work
    assert (src.read_bytes(), (scan / "p_0.tif").read_bytes()) == raw


@pytest.mark.parametrize("case, message", [
    ("empty", "holds no TIFF files"),
    ("two shapes", "holds a frame of (16, 8), not (8, 8) as a_0.tif"),
    ("a stack", "holds 2 pages; the files of a directory must hold one frame each"),
])
def test_a_directory_that_is_not_a_scan_is_one_clear_error(tmp_path, capsys, case, message):
    import numpy as np
    import tifffile

    scan = tmp_path / "scan"
    scan.mkdir()
    if case == "two shapes":
        tifffile.imwrite(scan / "a_0.tif", np.zeros((8, 8), np.uint16))
        tifffile.imwrite(scan / "a_1.tif", np.zeros((16, 8), np.uint16))
    elif case == "a stack":
        tifffile.imwrite(scan / "a_0.tif", np.zeros((2, 8, 8), np.uint16), photometric="minisblack")
    assert main(["denoise", str(scan), str(tmp_path / "out.npy")]) == 1
    assert message in capsys.readouterr().err


def test_denoise_an_hdf5_stack_keeps_dtype_and_records_provenance(tmp_path, capsys):
    import json

    import h5py
    import numpy as np

    src, dest = tmp_path / "in.h5", tmp_path / "out.h5"
    frames = np.random.default_rng(0).poisson(800, (4, 40, 56)).astype(np.uint16)
    with h5py.File(src, "w") as f:
        f["frames"] = frames
    assert main(["denoise", str(src), str(dest), "--key", "frames", "--backend", "onnxruntime", "--keep-dtype"]) == 0
    with h5py.File(dest, "r") as f:
        out = f["denoised"][()]
        assert json.loads(f["denoised"].attrs["backend"]) == "onnxruntime"
        assert len(json.loads(f["denoised"].attrs["model_sha256"])) == 64
    assert out.shape == frames.shape and out.dtype == np.uint16
    assert out.std() < frames.std()  # photon noise removed


def test_denoise_compresses_each_frame_of_an_hdf5_output_and_refuses_it_elsewhere(tmp_path, capsys):
    import h5py
    import numpy as np

    from bluesky_tomogan.frames import COMPRESSION_NAMES
    from bluesky_tomogan.hdf5_frames import COMPRESSIONS

    assert tuple(COMPRESSIONS) == COMPRESSION_NAMES  # what the command line offers is what the files can have
    src = tmp_path / "in.h5"
    frames = np.random.default_rng(0).poisson(800, (4, 40, 56)).astype(np.uint16)
    with h5py.File(src, "w") as f:
        f["frames"] = frames
    plain, packed = tmp_path / "plain.h5", tmp_path / "packed.h5"
    for dest, extra in ((plain, []), (packed, ["--compression", "lz4"])):
        assert main(["denoise", str(src), str(dest), "--key", "frames", "--backend", "onnxruntime", "--keep-dtype",
                     "--frames-only", *extra]) == 0
    with h5py.File(plain) as a, h5py.File(packed) as b:
        np.testing.assert_array_equal(a["denoised"][()], b["denoised"][()])  # lossless
        assert b["denoised"].chunks == (1, 40, 56) and b["denoised"].id.get_create_plist().get_nfilters() == 1
    assert main(["denoise", str(src), str(tmp_path / "out.tif"), "--key", "frames", "--compression", "lz4"]) == 1
    assert "compression (lz4) is for an HDF5 output" in capsys.readouterr().err
    assert not (tmp_path / "out.tif").exists()


def test_denoise_names_the_missing_dataset(tmp_path, capsys):
    import h5py

    src = tmp_path / "in.h5"
    with h5py.File(src, "w") as f:
        f["a"] = [[1.0]]
        f["b"] = [[1.0]]
    assert main(["denoise", str(src), str(tmp_path / "o.h5")]) == 1
    assert "holds 2 datasets ['a', 'b'] and none of the usual names for projections" in capsys.readouterr().err
    assert main(["denoise", str(src), str(tmp_path / "o.h5"), "--key", "c"]) == 1
    assert "has no dataset 'c' (its datasets: a, b)" in capsys.readouterr().err


def test_denoise_reads_data_exchange_and_tiff_and_writes_tiff(tmp_path, capsys):
    """The files a tomography beamline has: Data Exchange HDF5 (``exchange/data`` among flats and darks,
    found without --key) and multi-page TIFF stacks; a TIFF result has one page per frame and the
    provenance in its description."""
    import json

    import h5py
    import numpy as np
    import tifffile

    frames = np.random.default_rng(0).poisson(800, (3, 40, 56)).astype(np.uint16)
    dx, tif = tmp_path / "scan.h5", tmp_path / "scan.tif"
    with h5py.File(dx, "w") as f:
        f["exchange/data"] = frames
        f["exchange/data_white"] = frames[:2]
        f["exchange/data_dark"] = np.zeros_like(frames[:2])
    tifffile.imwrite(tif, frames, photometric="minisblack")
    for src in (dx, tif):
        dest = tmp_path / f"{src.stem}-{src.suffix[1:]}.tif"
        assert main(["denoise", str(src), str(dest), "--backend", "onnxruntime"]) == 0
        with tifffile.TiffFile(dest) as t:
            assert len(t.pages) == 3 and t.pages[0].shape == (40, 56)
            assert json.loads(t.pages[0].description)["backend"] == "onnxruntime"
        out = tifffile.imread(dest)
        assert out.dtype == np.float32 and out.std() < frames.std()


def test_an_hdf5_scan_denoised_into_hdf5_keeps_its_layout_for_reconstruction(tmp_path, capsys):
    """Data Exchange in, Data Exchange out: flats, darks, angles and metadata copied as they were, the
    projections denoised at ``exchange/data`` (and every other name the raw frames had: NeXus
    hard-links its detector data), ``denoised`` the same frames; ``--frames-only`` writes just those."""
    import h5py
    import numpy as np

    rng = np.random.default_rng(3)
    frames = rng.poisson(800, (5, 32, 48)).astype(np.uint16)
    src = tmp_path / "scan.h5"
    with h5py.File(src, "w") as f:
        f.attrs["facility"] = "APS"
        f["exchange/data"] = frames
        f["exchange/data"].attrs["units"] = "counts"
        f["exchange/data_white"] = frames[:2] + 100
        f["exchange/data_dark"] = np.zeros_like(frames[:2])
        f["exchange/theta"] = np.linspace(0, 180, 5)
        f["exchange/theta"].make_scale("theta")
        f["exchange/data"].dims[0].attach_scale(f["exchange/theta"])  # references into this file
        f["exchange/data"].attrs["flat_field"] = f["exchange/data_white"].ref
        f["entry/data/data"] = f["exchange/data"]  # a hard link, as NeXus writers make
        f["entry/soft"] = h5py.SoftLink("/exchange/theta")
        f["denoised"] = [0.0]  # an earlier result: the output's `denoised` is this run's
    raw = src.read_bytes()
    assert main(["denoise", str(src), str(tmp_path / "out.h5"), "--backend", "onnxruntime"]) == 0
    with h5py.File(tmp_path / "out.h5", "r") as out, h5py.File(src, "r") as f:
        assert out.attrs["facility"] == "APS"
        for key in ("exchange/data_white", "exchange/data_dark", "exchange/theta", "entry/soft"):
            np.testing.assert_array_equal(out[key][()], f[key][()])
        assert out["exchange/data"] == out["denoised"] == out["entry/data/data"]  # one dataset, three names
        assert out["exchange/data"].dtype == np.float32 and out["exchange/data"].shape == frames.shape
        assert out["exchange/data"].attrs["units"] == "counts"
        # references point into their own file: the dimension scale is attached anew, others left out
        assert [d.name for d in out["exchange/data"].dims[0].values()] == ["/exchange/theta"]
        assert out["exchange/theta"].is_scale and "flat_field" not in out["exchange/data"].attrs
        assert json.loads(out["exchange/data"].attrs["backend"]) == "onnxruntime"
        assert out["exchange/data"][()].std() < frames.std()
    assert main(["denoise", str(src), str(tmp_path / "only.h5"), "--frames-only", "--backend", "onnxruntime"]) == 0
    with h5py.File(tmp_path / "only.h5", "r") as out, h5py.File(tmp_path / "out.h5", "r") as full:
        assert list(out) == ["denoised"]
        np.testing.assert_array_equal(out["denoised"][()], full["denoised"][()])
    assert src.read_bytes() == raw


@pytest.mark.parametrize("stored", ["degrees", "radians", "units", "one short"])
def test_denoise_gives_a_scan_stored_in_the_order_taken_the_context_of_its_angles(tmp_path, capsys, denoiser, stored):
    """A golden-angle scan stored in the order taken, its angles in ``exchange/theta`` (in degrees, in radians
    told by their span or by a ``units`` attribute): each frame's neighbours in the file are views 30-70 degrees
    away, and each frame is denoised as it is alone, as the live callback does (before: with those views as
    context). Angles that are not one per frame are not used: neighbours by order, as before."""
    import h5py
    import numpy as np

    frames = np.random.default_rng(6).poisson(600, (9, 48, 48)).astype(np.uint16)
    golden = (np.arange(9) * 111.246117975) % 180
    theta = {"degrees": golden, "radians": np.deg2rad(golden), "units": np.deg2rad(golden) * 1000,
             "one short": golden[:-1]}[stored]
    src, dest = tmp_path / "golden.h5", tmp_path / "out.h5"
    with h5py.File(src, "w") as f:
        f["exchange/data"] = frames
        f["exchange/theta"] = theta
        if stored == "units":
            f["exchange/theta"].attrs["units"] = b"mrad"
    assert main(["denoise", str(src), str(dest), "--backend", "onnxruntime"]) == 0
    said = "neighbours in the order stored" if stored == "one short" else "neighbours within 4 degrees"
    assert f"context: {said}" in capsys.readouterr().out
    with h5py.File(dest, "r") as f:
        out = f["exchange/data"][()]
    x = frames.astype(np.float32)
    expected = (denoiser.denoise(x) if stored == "one short"
                else np.stack([denoiser.denoise_context(np.stack([x[k]] * denoiser.depth)) for k in range(9)]))
    np.testing.assert_allclose(out, expected, atol=1e-3)


def test_denoise_takes_the_angles_of_frames_stored_without_them_from_a_file(tmp_path, capsys, denoiser):
    """A TIFF stack of a golden-angle scan, its angles in a text file (``--angles``): each frame is denoised as
    it is alone, as from a Data Exchange file with ``exchange/theta``. A file that does not give one number per
    frame is a clear error before any work."""
    import numpy as np
    import tifffile

    frames = np.random.default_rng(7).poisson(600, (6, 48, 48)).astype(np.uint16)
    golden = (np.arange(6) * 111.246117975) % 180
    src, listed, dest = tmp_path / "golden.tif", tmp_path / "angles.txt", tmp_path / "out.npy"
    tifffile.imwrite(src, frames, photometric="minisblack")
    listed.write_text("# degrees, in the order taken\n" + "\n".join(f"{a:.6f}" for a in golden) + "\n")
    assert main(["denoise", str(src), str(dest), "--backend", "onnxruntime", "--angles", str(listed)]) == 0
    x = frames.astype(np.float32)
    alone = np.stack([denoiser.denoise_context(np.stack([x[k]] * denoiser.depth)) for k in range(6)])
    np.testing.assert_allclose(np.load(dest), alone, atol=1e-3)
    np.save(tmp_path / "angles.npy", golden)  # the same from .npy, commas too
    (tmp_path / "commas.txt").write_text(", ".join(f"{a:.6f}" for a in golden))
    for other in ("angles.npy", "commas.txt"):
        out = tmp_path / f"out-{other}.npy"
        assert main(["denoise", str(src), str(out), "--backend", "onnxruntime", "--angles", str(tmp_path / other)]) == 0
        np.testing.assert_allclose(np.load(out), alone, atol=1e-3)
    listed.write_text("\n".join(f"{a:.6f}" for a in golden[:5]))
    assert main(["denoise", str(src), str(tmp_path / "short.npy"), "--angles", str(listed)]) == 1
    assert "holds 5 angles for 6 frames: give one per frame" in capsys.readouterr().err
    listed.write_text("0 1 two")
    assert main(["denoise", str(src), str(tmp_path / "text.npy"), "--angles", str(listed)]) == 1
    assert f"cannot read angles from {listed}" in capsys.readouterr().err
    assert main(["denoise", str(src), str(tmp_path / "none.npy"), "--angles", str(tmp_path / "missing.txt")]) == 1
    assert "angles file" in capsys.readouterr().err and not (tmp_path / "none.npy").exists()


def test_a_nexus_scan_with_its_frames_in_a_linked_file_is_denoised_in_place_of_that_link(tmp_path, monkeypatch):
    """Diamond's .nxs: the frames are an external link into the detector's file, the angles another; the
    output's frames are the denoised ones, and its other links still resolve wherever it is written."""
    import h5py
    import numpy as np

    rng = np.random.default_rng(4)
    frames = rng.poisson(800, (6, 32, 40)).astype(np.uint16)
    scan = tmp_path / "scan"
    (scan / "k11-1").mkdir(parents=True)
    with h5py.File(scan / "k11-1" / "k11-1-imaging.h5", "w") as f:
        f["entry/detector/detector"] = frames
    with h5py.File(scan / "k11-1" / "k11-1-angles.h5", "w") as f:
        f["theta"] = np.linspace(0, 180, 6)
    with h5py.File(scan / "k11-1.nxs", "w") as f:
        imaging = f.create_group("entry/imaging")
        imaging.attrs.update({"NX_class": "NXdata", "signal": "data"})
        imaging["data"] = h5py.ExternalLink("k11-1/k11-1-imaging.h5", "/entry/detector/detector")
        imaging["theta"] = h5py.ExternalLink("k11-1/k11-1-angles.h5", "/theta")
        f["entry/instrument/imaging/image_key"] = np.zeros(6, np.int32)
    out = tmp_path / "elsewhere" / "out.h5"
    out.parent.mkdir()
    monkeypatch.chdir(tmp_path)  # the scan named by a relative path
    assert main(["denoise", "scan/k11-1.nxs", str(out), "--backend", "onnxruntime"]) == 0
    monkeypatch.chdir(out.parent)
    with h5py.File(out, "r") as f:
        assert f["entry/imaging/data"] == f["denoised"] and f["denoised"].dtype == np.float32
        assert f["denoised"].shape == frames.shape and f["denoised"][()].std() < frames.std()
        np.testing.assert_array_equal(f["entry/imaging/theta"][()], np.linspace(0, 180, 6))
        np.testing.assert_array_equal(f["entry/instrument/imaging/image_key"][()], np.zeros(6))


@pytest.mark.parametrize("case, message", [
    ("missing", "input file {src} does not exist"),
    ("text", "is not a .npy, TIFF, HDF5 or Xradia file"),
    ("bad output", "must end in one of .npy"),
    ("mixed tiff", "is not a stack of frames: its pages are not all 2-D of one shape"),
    ("colour tiff", "look like one colour image (H, W, 3); only grey frames are denoised"),
    ("colour tiff stack", "holds colour pages ((16, 12, 4)); only grey frames are denoised"),
    ("not npy", "is not a NumPy .npy file (it lacks the .npy header)"),
])
def test_denoise_says_what_is_wrong_with_its_files(tmp_path, capsys, case, message):
    src, dest = tmp_path / "in.npy", tmp_path / "out.npy"
    if case == "mixed tiff":
        import numpy as np
        import tifffile

        src = tmp_path / "mixed.tif"
        with tifffile.TiffWriter(src) as tif:
            tif.write(np.zeros((8, 8), np.uint16), photometric="minisblack")
            tif.write(np.zeros((16, 8), np.uint16), photometric="minisblack")
    elif case.startswith("colour tiff"):
        import numpy as np
        import tifffile

        src = tmp_path / "photo.tif"  # a stack of 16 frames of 12 x 3 pixels would be the other reading
        tifffile.imwrite(src, np.zeros((16, 12, 3) if case == "colour tiff" else (2, 16, 12, 4), np.uint8))
    elif case == "not npy":
        src.write_bytes(b"frames? no")
    elif case == "text":
        src = tmp_path / "notes.txt"
        src.write_text("not frames")
    elif case == "bad output":
        import numpy as np

        np.save(src, np.zeros((8, 8), np.float32))
        dest = tmp_path / "out.png"
    assert main(["denoise", str(src), str(dest)]) == 1
    assert message.format(src=src) in capsys.readouterr().err


def test_demo_runs_a_live_scan_stored_in_tiled_and_says_where(tmp_path):
    out = tmp_path / "demo"
    done = subprocess.run([sys.executable, "-m", "bluesky_tomogan.cli", "demo", "--out", str(out), "--size", "64",
                           "--angles", "24", "--exposure", "0.001", "--backend", "onnxruntime"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"figure: {out / 'demo.png'}" in done.stdout and (out / "demo.png").stat().st_size > 10_000
    assert f"client = local_tiled({str(out)!r})" in done.stdout
    assert "0 frames dropped" in done.stdout
    assert "QC: " in done.stdout and "suspensions" in done.stdout

    from bluesky_tomogan.storage import close_local_tiled, local_tiled

    client = local_tiled(out)  # reopens the demo's catalog, as the printed lines say
    try:
        (uid,) = list(client)
        run = client[uid]
        assert set(run) == {"dark", "flat", "primary", "denoised", "flat_denoised", "interruptions", "reconstruction"}
        assert run["primary"]["det_image"].shape == (24, 1, 64, 64)  # one frame an event, declared [1, H, W]
        assert stored_frames(run["primary"]["det_image"]).shape == (24, 64, 64)
        assert run["denoised"]["det_image_denoised"].shape == (24, 64, 64)
        assert run["reconstruction"]["slice"].shape[1:] == (64, 64)  # reconstructed live, stored in the run
        assert run.metadata["start"]["plan_name"] == "tomo_scan"
    finally:
        close_local_tiled(client)


@pytest.mark.parametrize("args, message", [
    (["--size", "7"], "size must be 16-2048 pixels, got 7"),
    (["--angles", "1"], "angles must be at least 3"),
    (["--photons", "0"], "photons must be above 0 per pixel"),  # a lost beam: the scan stayed suspended
    (["--exposure", "0"], "exposure must be above 0 s"),       # a ZeroDivisionError
    (["--zingers", "0.5"], "zingers must be a rate per pixel in [0, 0.1), got 0.5"),
    (["--blur", "-1"], "blur must be a Gaussian's sigma in pixels in [0, 10], got -1.0"),
    (["--sample-width", "0.5"], "sample width must be 1-4 fields of view, got 0.5"),
    (["--size", "64", "--axis-offset", "40"], "axis offset must put the axis on the detector (under 32 px from its "
                                              "middle), got 40.0"),
])
def test_demo_settings_it_cannot_run_are_one_error_line_before_anything_is_made(tmp_path, capsys, args, message):
    assert main(["demo", "--out", str(tmp_path / "demo"), *args]) == 1
    assert message in capsys.readouterr().err and not (tmp_path / "demo").exists()


def test_demo_of_an_offset_axis_over_a_full_turn_shows_the_whole_sample_in_its_slices(tmp_path):
    """Session 72: `demo --turn 360 --axis-offset ...` scans a sample 1.8 fields of view across about an axis 20 px
    right of the middle of 64 columns over a full turn (half acquisition): the live slices span the doubled field
    of view, about the centre found over the full turn, and are compared with the noise-free slice made so."""
    out = tmp_path / "demo"
    done = subprocess.run([sys.executable, "-m", "bluesky_tomogan.cli", "demo", "--out", str(out), "--size", "64",
                           "--angles", "120", "--exposure", "0.001", "--backend", "onnxruntime", "--turn", "360",
                           "--sample-width", "1.8", "--axis-offset", "20"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "an offset axis, half acquisition" in done.stdout + done.stderr
    center = float(re.search(r"rotation centre ([\d.]+) px", done.stdout)[1])
    assert abs(center - 51.5) < 1.0  # 31.5 + 20
    live = float(re.search(r"live reconstruction ([\d.]+)", done.stdout)[1])
    assert live > 0.5, done.stdout[-1500:]
    with the_demos_run(out) as run:
        assert run["reconstruction"]["slice"].shape[1:] == (104, 104)  # 2 x 51.5 + 1 columns, not 64
        assert len(run["primary"]["det_image"]) == 120


def test_demo_with_zingers_is_neither_motion_nor_noisy_to_qc_and_denoises_them_away(tmp_path):
    """Zingers in every frame (40 in each 128x128 projection) are neither motion nor noise to QC, and the despike
    takes them out of the denoised frames: before, every projection was flagged ``motion``."""
    import numpy as np

    out = tmp_path / "demo"
    done = subprocess.run([sys.executable, "-m", "bluesky_tomogan.cli", "demo", "--out", str(out), "--size", "128",
                           "--angles", "24", "--exposure", "0.001", "--backend", "onnxruntime", "--zingers", "2.5e-3"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    psnr = re.search(r"projection PSNR (-?[\d.]+) -> ([\d.]+) dB", done.stdout)
    assert psnr and float(psnr[2]) > float(psnr[1]) + 20, done.stdout[-1500:]  # the zingers, gone
    with the_demos_run(out) as run:
        flags = [str(f) for f in np.ravel(run["denoised"]["det_image_qc_flags"].read())]
        motion = np.ravel(run["denoised"]["det_image_qc_motion_px"].read())
    assert len(flags) == 24 and not any("motion" in f or "noisy" in f for f in flags), flags
    assert np.isfinite(motion).sum() >= 8, motion  # registered (7.5-degree steps: rotation, not motion)


def test_demo_with_the_live_view_shows_frames_where_a_window_can_show_and_says_so_where_not(tmp_path,
                                                                                           monkeypatch):
    import matplotlib
    import matplotlib.pyplot as plt

    from bluesky_tomogan.callbacks import live_view
    from bluesky_tomogan.demo import run_demo

    matplotlib.use("Agg")
    settings = {"size": 32, "n_angles": 12, "exposure": 0.001, "backend": "onnxruntime", "live_view": True}
    said: list[str] = []
    run_demo(tmp_path / "headless", report=said.append, **settings)
    assert any(line.startswith("live view: matplotlib's backend here (Agg) shows no window") for line in said)
    plt.close("all")
    monkeypatch.setattr(live_view, "shows_windows", lambda: True)  # as on a workstation with a display
    said.clear()
    metrics = run_demo(tmp_path / "shown", report=said.append, **settings)
    assert metrics["exit_status"] == "success" and "the live views stay open until their windows are closed" in said
    figures = {plt.figure(n).axes[0].get_title(): plt.figure(n) for n in plt.get_fignums()}  # made at first draws
    assert sorted(figures) == ["filtered back-projection", "raw"]
    frames, slices = figures["raw"], figures["filtered back-projection"]
    assert [ax.get_title() for ax in frames.axes] == ["raw", "denoised"]
    assert "frame 12" in frames._suptitle.get_text()  # the scan's last projection, drawn at its stop
    assert [ax.get_title() for ax in slices.axes] == ["filtered back-projection", "denoised"]
    assert "from 12 projections (final)" in slices._suptitle.get_text()
    plt.close("all")


def test_demo_with_the_adaptive_policy_counts_the_frames_of_each_network(tmp_path):
    out = tmp_path / "demo"
    done = subprocess.run([sys.executable, "-m", "bluesky_tomogan.cli", "demo", "--out", str(out), "--size", "64",
                           "--angles", "24", "--exposure", "0.001", "--backend", "onnxruntime", "--policy",
                           "adaptive"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "<RatioDenoisers tomogan-projection-aio" in done.stdout
    line = next((x for x in done.stdout.splitlines() if x.startswith("networks: ")), done.stdout[-500:])
    counts = dict(re.findall(r"(?:^networks: |, )(.+?) (\d+) frames", line))
    assert sum(map(int, counts.values())) == 24, line  # every projection, by one of the ladder's networks
    assert all(name.startswith(("tomogan-projection-aio", "tomogan-projection-s2d-aio"))
               or name == "(not denoised)" for name in counts), line


def test_demo_with_faults_suspends_on_the_beam_dump_and_shows_the_qc_timeline(tmp_path):
    out = tmp_path / "demo"
    done = subprocess.run([sys.executable, "-m", "bluesky_tomogan.cli", "demo", "--out", str(out), "--size", "64",
                           "--angles", "30", "--exposure", "0.02", "--backend", "onnxruntime", "--faults"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "fault: the ring loses the beam for 2 s" in done.stdout and "fault: three saturated frames" in done.stdout
    # The ring-current suspender suspends the scan. If a frame was already exposing when the beam went,
    # QC flags it beam_lost and its own suspender adds a second record (RunEngine.request_suspend records
    # every trip): a race between the two guards, both right, so one or two.
    qc_line = next((line for line in done.stdout.splitlines() if line.startswith("QC: ")), done.stdout[-500:])
    assert re.search(r"frames flagged, [12] suspensions", qc_line), qc_line
    assert (out / "demo.png").stat().st_size > 10_000


def test_demo_fly_capture_reconstructs_at_the_angles_a_simulated_panda_captured(tmp_path):
    """``demo --fly --capture``: a simulated PandA flown beside the camera records each exposure's angle into the
    run (``panda-inenc-1-val``), and the callback and the live reconstruction take those: no note of the plan's
    nominal angles. ``--capture`` without ``--fly`` is an error before any store is made."""
    import numpy as np

    pytest.importorskip("bluesky_tomogan.devices.fly", reason="demo --fly needs ophyd-async >= 0.21")
    done = demo_cli(tmp_path / "demo", "--size", "48", "--angles", "20", "--exposure", "0.05", "--fly", "--capture")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "each frame's angle captured (panda-inenc-1-val)" in done.stdout and "0 frames dropped" in done.stdout
    with the_demos_run(tmp_path / "demo") as run:
        captured = np.ravel(run["primary"]["panda-inenc-1-val"].read())
        nominal = np.asarray(run.metadata["start"]["angles"])
        assert captured.shape == (20,) and np.all(np.diff(captured) > 0)
        np.testing.assert_allclose(captured, nominal, atol=180 / 20)  # late by the kickoffs' little, within a step
        assert all("nominal" not in str(n) for n in run["reconstruction"]["note"].read())
    refused = demo_cli(tmp_path / "no", "--capture")
    assert refused.returncode != 0 and "add --fly" in refused.stderr and not (tmp_path / "no").exists()


def demo_cli(out, *args):
    """``bluesky-tomogan demo --out OUT --backend onnxruntime ARGS`` in a process of its own."""
    return subprocess.run([sys.executable, "-m", "bluesky_tomogan.cli", "demo", "--out", str(out), "--backend",
                           "onnxruntime", *args], capture_output=True, text=True, timeout=300)


@contextlib.contextmanager
def the_demos_run(out):
    """The one run of the demo's store ``out``, its server closed after."""
    from bluesky_tomogan.storage import close_local_tiled, local_tiled

    client = local_tiled(out)
    try:
        (uid,) = list(client)
        yield client[uid]
    finally:
        close_local_tiled(client)


def test_demo_fly_flies_the_simulated_ophyd_async_beamline_through_its_faults(tmp_path):
    """``demo --fly``: ``tomo_fly_scan`` of the simulated ophyd-async beamline, its frames (no event) denoised and
    reconstructed live at the plan's nominal angles, the faults injected as frames reach them, all stored."""
    pytest.importorskip("bluesky_tomogan.devices.fly", reason="demo --fly needs ophyd-async >= 0.21")
    done = demo_cli(tmp_path / "demo", "--size", "64", "--angles", "30", "--exposure", "0.1", "--fly", "--faults")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "scanning on the fly: 30 projections" in done.stdout and "0 frames dropped" in done.stdout
    assert "fault: the ring loses the beam for 2 s" in done.stdout and "fault: three saturated frames" in done.stdout
    assert "stored_frames(run['primary']['det'])[10]" in done.stdout
    with the_demos_run(tmp_path / "demo") as run:
        assert run.metadata["start"]["plan_name"] == "tomo_fly_scan" and len(run.metadata["start"]["angles"]) == 30
        assert stored_frames(run["primary"]["det"]).shape == (30, 64, 64)
        assert run["denoised"]["det_denoised"].shape == (30, 64, 64)
        assert "beam_lost" in ",".join(run["denoised"]["det_qc_flags"].read())  # frames flown without beam
        notes = [str(n) for n in run["reconstruction"]["note"].read()]
        assert "the plan's nominal angle" in notes[-1]


def test_quality_remeasures_mean_and_worst_frame_losses_into_a_copied_card(tmp_path, capsys):
    import json

    model = copy_of_shipped_model("tomogan-projection", tmp_path / "model")
    data = tmp_path / "hard.h5"
    assert main(["simulate", str(data), "--domain", "projection", "--size", "32", "--n-train", "1",
                 "--n-test", "1", "--photons", "20", "40", "--frames-per-scan", "8"]) == 0
    assert main(["quality", str(model), "--data", str(data), "--frames", "6"]) == 0
    assert "worst frame" in capsys.readouterr().out
    written = json.loads((model / "tomogan-projection.json").read_text())
    assert written["metrics"]["val_frames"] == 6 and written["metrics"]["frames_source"] == "hard.h5 (test split)"
    for key, q in written["quantization"].items():
        if not key.endswith("/fp32"):
            assert q["ssim_drop_worst"] >= q["ssim_drop"] - 1e-9  # the worst frame is at least the mean
    assert main(["quality", str(model), "--data", str(tmp_path / "missing.h5")]) == 1
    card = json.loads((model / "tomogan-projection.json").read_text())
    del card["files"]["onnx"]  # an export of another format alone: no fp32 reference to measure against
    (model / "tomogan-projection.json").write_text(json.dumps(card))
    capsys.readouterr()
    assert main(["quality", str(model), "--data", str(data), "--frames", "2"]) == 1
    assert "no fp32 ONNX model" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".npy", ".h5", ".tif"])
def test_a_file_denoised_chunk_by_chunk_equals_the_whole_stack_at_once(tmp_path, suffix):
    """A scan larger than memory is read and written a chunk at a time; each chunk takes the neighbours its
    edge frames need, so the frames are those of the whole stack denoised at once."""
    import h5py
    import numpy as np
    import tifffile

    from bluesky_tomogan import load_denoiser
    from bluesky_tomogan.frame_files import denoise_file, open_frames

    den = load_denoiser("tomogan-projection", backend="onnxruntime")
    rng = np.random.default_rng(2)
    frames = rng.poisson(np.linspace(200, 900, 11)[:, None, None] * np.ones((11, 24, 32))).astype(np.uint16)
    src = tmp_path / f"in{suffix}"
    if suffix == ".npy":
        np.save(src, frames)
    elif suffix == ".h5":
        with h5py.File(src, "w") as f:
            f["exchange/data"] = frames
    else:
        tifffile.imwrite(src, frames, photometric="minisblack")
    dest = tmp_path / f"out{suffix}"
    done = []
    with open_frames(src) as source:
        denoise_file(den, source, dest, chunk=4, progress=done.append)
    assert done == [4, 4, 3]
    with open_frames(dest, "denoised") as written:
        got = written.read(0, 11)
    np.testing.assert_allclose(got, den.denoise(frames), rtol=0, atol=1e-3)

    one = tmp_path / f"one{suffix}"  # a file of one (H, W) frame gives one frame back
    with open_frames(src) as source:
        single = type(source)((1, 24, 32), source.dtype, lambda a, b: frames[3:4], single=True)
        denoise_file(den, single, one, keep_dtype=True)
    with open_frames(one, "denoised") as written:
        assert written.single and written.dtype == np.uint16
        np.testing.assert_allclose(written.read(0, 1)[0], den.denoise(frames[3], out_dtype="source"), atol=1)


def test_denoise_with_a_self_ensemble_records_it_with_the_frames(tmp_path, capsys):
    import h5py
    import numpy as np

    src, dest = tmp_path / "frames.npy", tmp_path / "out.h5"
    frames = np.random.default_rng(0).poisson(200, (6, 32, 40)).astype(np.uint16)
    np.save(src, frames)
    assert main(["denoise", str(src), str(dest), "--backend", "onnxruntime", "--self-ensemble", "4"]) == 0
    with h5py.File(dest) as f:
        assert f["denoised"].attrs["self_ensemble"] == "4" and f["denoised"].shape == frames.shape  # as every attr
    assert "self-ensemble of 4" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["denoise", str(src), str(tmp_path / "o.npy"), "--self-ensemble", "3"])
    assert "invalid choice: 3" in capsys.readouterr().err


@pytest.mark.parametrize("layout, projections", [
    ("data exchange", True), ("nexus image_key", True), ("slices", False)])
def test_a_slice_model_given_a_files_projections_is_warned_about(tmp_path, caplog, layout, projections):
    """A file that says its frames are a detector's (flat fields, an image_key) denoised with a slice
    model: it runs, with the warning the live callback gives; a plain stack of slices gets none."""
    import h5py
    import numpy as np

    frames = np.random.default_rng(5).poisson(500, (5, 24, 32)).astype(np.uint16)
    src = tmp_path / "scan.h5"
    with h5py.File(src, "w") as f:
        if layout == "data exchange":
            f["exchange/data"], f["exchange/data_white"] = frames, frames[:2]
        elif layout == "nexus image_key":
            data = f.create_group("entry/data")
            data.attrs.update({"NX_class": "NXdata", "signal": "data"})
            data["data"], data["image_key"] = frames, np.zeros(5, np.int32)
        else:
            f["exchange/data"] = frames  # a reconstructed volume, as dxchange writes it too
    assert main(["denoise", str(src), str(tmp_path / "out.npy"), "--model", "tomogan-slice",
                 "--backend", "onnxruntime"]) == 0
    assert ("holds a detector's frames" in caplog.text and "is a slice model" in caplog.text) == projections
    caplog.clear()
    assert main(["denoise", str(src), str(tmp_path / "out2.npy"), "--backend", "onnxruntime"]) == 0
    assert "is a projection model" not in caplog.text and "holds a detector's frames" not in caplog.text


def test_center_finds_the_rotation_centre_of_a_stored_scan_and_says_how(tmp_path, capsys):
    """Session 71: `bluesky-tomogan center` on a simulated Data Exchange scan of a sample 1.8 fields of view across
    (axis at the middle of 64 columns): the centre where the projections 180 degrees apart agree; on one inside the
    view, Vo's method; a missing file and rows beyond the detector are one error line each."""
    from bluesky_tomogan.simulate.datasets import write_scan_file

    for width, how in ((1.8, "the projections 180 degrees apart"), (1.0, "Vo's method")):
        path, _ = write_scan_file(tmp_path / f"scan{width}.h5", "grains", 64, 96, 1000.0, seed=3, width=width)
        assert main(["center", str(path)]) == 0
        out = capsys.readouterr().out
        center = float(out.split("rotation centre ")[1].split(" px")[0])
        assert f"by {how}" in out and abs(center - 31.5) < 1.0, out
        assert f"TomoReconstruction(center={center:.2f})" in out
    assert main(["center", str(tmp_path / "none.h5")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["center", str(path), "--rows", "70:80"]) == 1
    assert "rows 70:80 hold none of the scan's 64 detector rows" in capsys.readouterr().err


def _offset_axis_scan_file(path, axis_offset: float = 20.0, columns: int = 64, rows: int = 16, n_angles: int = 240):
    """A Data Exchange file of a full turn about an axis ``axis_offset`` px right of the detector's middle: a bead
    pack 1.8 fields of view across, 2,000 photons per pixel (an offset-axis, half-acquisition scan)."""
    import h5py

    from bluesky_tomogan.simulate.spheres import SpherePack

    pack = SpherePack.random((rows, columns), 5, width=1.8).moved(axis_offset)
    angles = np.linspace(0, 360, n_angles, endpoint=False)
    rng = np.random.default_rng(1)
    flat = np.full((rows, columns), 2000.0)
    counts = np.stack([rng.poisson(flat * np.exp(-pack.line_integrals(a))) for a in angles]).astype(np.uint16)
    with h5py.File(path, "w") as f:
        f["exchange/data"] = counts
        f["exchange/data_white"] = flat[None].astype(np.uint16)
        f["exchange/data_dark"] = np.zeros((1, rows, columns), np.uint16)
        f["exchange/theta"] = angles
    return path, columns / 2 + axis_offset - 0.5


def test_center_of_an_offset_axis_scan_says_its_slices_take_the_doubled_field_of_view(tmp_path, capsys):
    """Session 72: a full turn about an axis 20 px right of the middle of 64 columns: the centre over the whole
    detector, and the width of the doubled field of view that the live reconstruction and finetune use."""
    path, axis = _offset_axis_scan_file(tmp_path / "half.h5")
    assert main(["center", str(path)]) == 0
    out = capsys.readouterr().out
    center = float(out.split("rotation centre ")[1].split(" px")[0])
    assert "over the full turn" in out and abs(center - axis) < 1.0, out
    assert "an offset axis (half acquisition)" in out and "doubled field of view, 104 px wide" in out
