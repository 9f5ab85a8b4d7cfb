"""TomoGAN-style HDF5: round trip, and a clear error for every kind of bad file."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from bluesky_tomogan.cli import main
from bluesky_tomogan.errors import DatasetError, OutputPathError
from bluesky_tomogan.simulate.datasets import merge_datasets, read_dataset, write_dataset

from .conftest import pairs_of


def _write(path, **arrays):
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f[k] = v
    return path


def _good(n=4, h=16, w=16):
    p = pairs_of(n, h, w)
    return {"train_ns": p.ns, "train_gt": p.gt, "test_ns": p.ns[:2], "test_gt": p.gt[:2]}


def test_round_trip_keeps_arrays_groups_and_recipe(tmp_path):
    train, test = pairs_of(6, 16, 24), pairs_of(2, 16, 24)
    train.group[3:] = 1
    path = write_dataset(tmp_path / "d.h5", train, test, {"domain": "slice", "seed": 3})
    ds = read_dataset(path)
    np.testing.assert_array_equal(ds.train_ns, train.ns)
    np.testing.assert_array_equal(ds.train_group, train.group)
    assert ds.recipe == {"domain": "slice", "seed": 3}


def test_merged_datasets_keep_every_frame_and_their_scans_apart(tmp_path, capsys):
    a_train, b_train = pairs_of(6, 16, 24), pairs_of(4, 16, 24)
    a_train.group[3:] = 1
    a = write_dataset(tmp_path / "a.h5", a_train, pairs_of(2, 16, 24), {"domain": "projection", "seed": 1})
    b = write_dataset(tmp_path / "b.h5", b_train, pairs_of(3, 16, 24), {"domain": "projection", "seed": 2})
    assert main(["merge", str(tmp_path / "ab.h5"), str(a), str(b)]) == 0
    assert "ab.h5" in capsys.readouterr().out
    ds = read_dataset(tmp_path / "ab.h5")
    np.testing.assert_array_equal(ds.train_ns, np.concatenate([a_train.ns, b_train.ns]))
    assert ds.train_group.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]  # b's scan follows a's two
    assert len(ds.test_ns) == 5 and ds.test_group.tolist() == [0, 0, 1, 1, 1]
    assert ds.recipe["domain"] == "projection" and [r["seed"] for r in ds.recipe["merged"]] == [1, 2]


def test_merging_needs_two_datasets_of_one_domain_and_shape(tmp_path):
    a = write_dataset(tmp_path / "a.h5", pairs_of(2, 16, 24), pairs_of(1, 16, 24), {"domain": "projection"})
    b = write_dataset(tmp_path / "b.h5", pairs_of(2, 16, 24), pairs_of(1, 16, 24), {"domain": "slice"})
    c = write_dataset(tmp_path / "c.h5", pairs_of(2, 8, 8), pairs_of(1, 8, 8), {"domain": "projection"})
    with pytest.raises(DatasetError, match="two or more"):
        merge_datasets(tmp_path / "o.h5", [a])
    with pytest.raises(DatasetError, match="domains"):
        merge_datasets(tmp_path / "o.h5", [a, b])
    with pytest.raises(DatasetError, match="frame shapes"):
        merge_datasets(tmp_path / "o.h5", [a, c])
    with pytest.raises(DatasetError, match="missing.h5"):
        merge_datasets(tmp_path / "o.h5", [a, tmp_path / "missing.h5"])
    assert main(["merge", str(tmp_path / "o.h5"), str(a), str(b)]) == 1  # the CLI says why, no traceback


def test_original_tomogan_files_without_groups_are_one_scan(tmp_path):
    ds = read_dataset(_write(tmp_path / "d.h5", **_good()))
    assert (ds.train_group == 0).all()


def test_missing_keys_are_named(tmp_path):
    arrays = _good()
    del arrays["test_gt"]
    with pytest.raises(DatasetError, match="has no test_gt.*train_ns, train_gt, test_ns, test_gt"):
        read_dataset(_write(tmp_path / "d.h5", **arrays))


def test_wrong_rank_is_named(tmp_path):
    arrays = _good() | {"train_ns": np.zeros((16, 16), np.float32)}
    with pytest.raises(DatasetError, match=r"train_ns must be a \(N, H, W\) stack, got shape \(16, 16\)"):
        read_dataset(_write(tmp_path / "d.h5", **arrays))


def test_mismatched_pairs_are_named(tmp_path):
    arrays = _good() | {"train_gt": np.zeros((4, 16, 8), np.float32)}
    with pytest.raises(DatasetError, match="train_ns .* and train_gt .* must have the same shape"):
        read_dataset(_write(tmp_path / "d.h5", **arrays))


def test_nan_values_are_counted_and_located(tmp_path):
    arrays = _good()
    arrays["train_gt"][2, 3, 3] = np.nan
    arrays["train_gt"][2, 4, 4] = np.inf
    with pytest.raises(DatasetError, match=r"train_gt holds 2 NaN/inf values \(first frames: \[2\]\)"):
        read_dataset(_write(tmp_path / "d.h5", **arrays))


def test_not_an_hdf5_file(tmp_path):
    path = tmp_path / "d.h5"
    path.write_text("hello")
    with pytest.raises(DatasetError, match="not a readable HDF5 file"):
        read_dataset(path)


def test_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        read_dataset(tmp_path / "nope.h5")


def test_unwritable_output_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutputPathError, match="cannot write dataset"):
        write_dataset(blocker / "d.h5", pairs_of(2, 8, 8), pairs_of(1, 8, 8))


def test_dataset_errors_are_value_errors_too(tmp_path):
    with pytest.raises(ValueError):
        read_dataset(tmp_path / "nope.h5")
