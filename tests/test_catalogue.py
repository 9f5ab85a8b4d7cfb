"""Models by name: installed under a name of the user's, in shared directories, announced by packages."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from bluesky_tomogan import load_denoiser
from bluesky_tomogan.cli import main
from bluesky_tomogan.errors import ModelLoadError, OutputPathError, UnknownModelError
from bluesky_tomogan.inference.catalogue import (
    ENTRY_POINT_GROUP,
    MODELS_ENV,
    find_model,
    install_model,
    installed_models,
    remove_model,
)
from bluesky_tomogan.inference.load import load_card
from bluesky_tomogan.model.train import resolve_weights

from .conftest import copy_of_shipped_model, installed_package

LIGHT = "tomogan-projection-light"


def a_training_run(directory):
    """A model directory as ``finetune`` leaves it: the card and its files, and what training left beside them."""
    copy_of_shipped_model(LIGHT, directory)
    (directory / "pairs.h5").write_bytes(b"\0" * 1024)
    (directory / "checkpoint.pt").write_bytes(b"\0" * 1024)
    return directory


def test_a_model_installed_under_a_name_loads_by_that_name_with_only_its_own_files(tmp_path, user_models_in_tmp):
    run = a_training_run(tmp_path / "run")
    entry = install_model(run, "bm2-glass-beads")
    assert entry.card == user_models_in_tmp / "bm2-glass-beads" / "bm2-glass-beads.json"
    copied = {p.name for p in entry.card.parent.iterdir()}
    assert "pairs.h5" not in copied and "checkpoint.pt" not in copied
    card = json.loads(entry.card.read_text())
    assert card["name"] == "bm2-glass-beads"
    assert card["installed"]["card_name"] == LIGHT and card["installed"]["from"] == str(run / f"{LIGHT}.json")

    den = load_denoiser("bm2-glass-beads", backend="onnxruntime")
    assert den.provenance()["model"] == "bm2-glass-beads"  # what the derived stream records: the name typed
    frames = np.random.default_rng(0).poisson(300, (5, 64, 64)).astype(np.float32)
    shipped = load_denoiser(LIGHT, backend="onnxruntime")
    np.testing.assert_array_equal(den.denoise_context(frames), shipped.denoise_context(frames))
    assert resolve_weights("bm2-glass-beads") == entry.card.parent / f"{LIGHT}.pt"  # finetune --model NAME
    assert [m.source for m in installed_models() if m.name == "bm2-glass-beads"] == ["user"]


def test_an_all_in_one_model_is_installed_with_every_ratio():
    install_model("tomogan-projection-aio", "my-ladder")
    card = load_card("my-ladder")
    assert sorted(card.ratios, key=float) == ["0", "25", "50", "75"]
    assert load_denoiser("my-ladder", backend="onnxruntime", ratio=75).provenance()["pruning_ratio"] == 75.0


@pytest.mark.parametrize("name, why", [
    ("tomogan-projection", "shipped names are reserved"),
    ("../elsewhere", "cannot name a model"),
    ("a/b", "cannot name a model"),
    (".hidden", "cannot name a model"),
    ("x.json", "cannot name a model"),
    ("", "cannot name a model"),
])
def test_a_name_that_cannot_be_used_is_refused_before_anything_is_copied(tmp_path, user_models_in_tmp, name, why):
    with pytest.raises(UnknownModelError, match=why):
        install_model(LIGHT, name)
    assert not user_models_in_tmp.exists()


def test_a_second_install_under_a_name_needs_force_and_then_replaces_it(tmp_path):
    install_model(LIGHT, "beads")
    with pytest.raises(OutputPathError, match="installed in .* already.*--force"):
        install_model("tomogan-slice-light", "beads")
    assert load_card("beads").domain == "projection"
    install_model("tomogan-slice-light", "beads", force=True)
    assert load_card("beads").domain == "slice"
    assert [p.name for p in find_model("beads").card.parent.parent.iterdir()] == ["beads"]  # nothing left aside


def test_a_corrupt_model_is_not_installed(tmp_path, user_models_in_tmp):
    run = a_training_run(tmp_path / "run")
    onnx = run / f"{LIGHT}.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-10])
    with pytest.raises(ModelLoadError, match="does not match the sha256"):
        install_model(run, "damaged")
    assert find_model("damaged") is None
    assert not user_models_in_tmp.exists() or not any(user_models_in_tmp.iterdir())


def test_a_file_outside_the_models_directory_is_refused(tmp_path):
    run = a_training_run(tmp_path / "run")
    card_path = run / f"{LIGHT}.json"
    card = json.loads(card_path.read_text())
    shutil.move(run / f"{LIGHT}.pt", tmp_path / "elsewhere.pt")
    card["files"]["pytorch"]["path"] = "../elsewhere.pt"
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match="lies outside the model's directory"):
        install_model(run, "outside")


def test_shared_directories_come_before_the_users_own(tmp_path, monkeypatch, caplog):
    shared = tmp_path / "beamline-models"
    install_model("tomogan-slice-light", "beads", into=shared)
    install_model(LIGHT, "beads")  # the user's own, of the same name
    monkeypatch.setenv(MODELS_ENV, f"{tmp_path / 'mistyped'}:{shared}")
    with caplog.at_level(logging.WARNING, logger="bluesky_tomogan.inference.catalogue"):
        entry = find_model("beads")
        listed = installed_models()
    assert entry is not None and entry.source == f"${MODELS_ENV}" and load_card("beads").domain == "slice"
    assert [m.source for m in listed if m.name == "beads"] == [f"${MODELS_ENV}"]
    assert "mistyped, which is not a directory" in caplog.text
    assert "is hidden by the $BLUESKY_TOMOGAN_MODELS one" in caplog.text
    with pytest.raises(OutputPathError, match="would hide the one installed"):
        install_model(LIGHT, "beads", force=True)  # the user's copy could never be loaded


def test_a_package_announces_its_models_through_an_entry_point(tmp_path, monkeypatch, caplog):
    site = installed_package(tmp_path / "site", "facility-models", {
        ENTRY_POINT_GROUP: {"facility": "facility_models", "broken": "no_such_package_of_models"}},
        {"facility_models/__init__.py": ""})
    copy_of_shipped_model(LIGHT, site / "facility_models" / "bm2-foam")
    monkeypatch.syspath_prepend(str(site))
    with caplog.at_level(logging.WARNING, logger="bluesky_tomogan.inference.catalogue"):
        entry = find_model("bm2-foam")
    assert entry is not None and entry.source == "entry point facility"
    assert load_denoiser("bm2-foam", backend="onnxruntime").provenance()["model"] == LIGHT  # its card's own name
    assert "cannot load the models of entry point 'broken'" in caplog.text  # and the others still load
    with pytest.raises(UnknownModelError, match="no model 'bm2-foam' is installed"):
        remove_model("bm2-foam")  # a package's models are the package's


def test_an_unknown_name_lists_every_model_that_has_one():
    install_model(LIGHT, "beads")
    with pytest.raises(UnknownModelError, match=r"unknown model 'bead': no model of that name \(.*beads.*tomogan"):
        load_denoiser("bead")


def test_models_install_list_and_remove_on_the_command_line(tmp_path, capsys, user_models_in_tmp):
    run = a_training_run(tmp_path / "run")
    assert main(["models", "install", str(run), "--name", "bm2-beads"]) == 0
    assert "installed 'bm2-beads'" in capsys.readouterr().out
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "bm2-beads: projection domain" in out and f"[user: {user_models_in_tmp / 'bm2-beads'}]" in out
    assert f"looked up in: the shipped weights, then user ({user_models_in_tmp})" in out
    assert main(["models", "install", str(run), "--name", "bm2-beads"]) == 1
    assert "--force" in capsys.readouterr().err
    assert main(["models", "remove", "bm2-beads"]) == 0
    assert main(["models", "remove", "bm2-beads"]) == 1
    assert "no model 'bm2-beads' is installed" in capsys.readouterr().err
    assert main(["models", "remove", "tomogan-projection"]) == 1  # shipped models stay


def test_finetune_refuses_a_name_it_could_not_install_before_training(tmp_path, capsys):
    out = tmp_path / "ft"
    assert main(["finetune", str(tmp_path / "scan.h5"), "--out", str(out), "--install", "tomogan-slice"]) == 1
    assert "shipped names are reserved" in capsys.readouterr().err
    install_model(LIGHT, "taken")
    assert main(["finetune", str(tmp_path / "scan.h5"), "--out", str(out), "--install", "taken"]) == 1
    assert "installed in" in capsys.readouterr().err
    assert not out.exists()


def test_a_directory_that_is_not_a_model_does_not_hide_the_model_of_its_name(tmp_path, monkeypatch):
    install_model(LIGHT, "beads")
    (tmp_path / "beads").mkdir()  # the sample's data, in the directory the session runs in
    monkeypatch.chdir(tmp_path)
    assert load_card("beads").name == "beads"
    with pytest.raises(UnknownModelError, match="must hold exactly one model card"):
        load_card("./beads/")  # ... but a path that names it is that path: a model directory's card is missing
