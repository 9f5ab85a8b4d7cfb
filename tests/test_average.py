"""Weight averaging (``bluesky-tomogan average``): the weights between two fine-tunings, a card that exports."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="averaging weights needs the train extra (torch)")

from bluesky_tomogan.cli import main  # noqa: E402
from bluesky_tomogan.errors import ModelLoadError  # noqa: E402
from bluesky_tomogan.inference.load import load_card  # noqa: E402
from bluesky_tomogan.model.average import average_models  # noqa: E402
from bluesky_tomogan.model.network import GeneratorConfig, TomoGANGenerator  # noqa: E402
from bluesky_tomogan.model.train import load_generator  # noqa: E402
from bluesky_tomogan.modelcard import sha256_of  # noqa: E402


def _model(directory, name, seed, width=0.25, domain="slice", recipe=None):
    """A model directory as `bluesky-tomogan train` writes one: weights and a card."""
    torch.manual_seed(seed)
    arch = GeneratorConfig(width=width)
    directory.mkdir(parents=True)
    weights = directory / f"{name}.pt"
    torch.save({"arch": arch.to_dict(), "generator": TomoGANGenerator(arch).state_dict()}, weights)
    card = {"name": name, "domain": domain, "architecture": arch.to_dict(), "output": "correction",
            "normalisation": {"method": "robust-percentile", "low": 0.5, "high": 99.5},
            "data": {"file": f"{name}.h5", "recipe": recipe or {"domain": domain, "beyond_view": 0.0}},
            "training": {"config": {"lr": 1e-4, "seed": seed}},
            "metrics": {"val_ssim": 0.9}, "quantization": {"onnxruntime/fp32": {"ssim": 0.9}},
            "files": {"pytorch": {"path": weights.name, "sha256": sha256_of(weights)}}}
    (directory / f"{name}.json").write_text(json.dumps(card))
    return directory


def test_the_average_holds_the_weights_between_the_two_models_and_a_card_of_both(tmp_path):
    start = _model(tmp_path / "start", "tomogan-slice", seed=1)
    tuned = _model(tmp_path / "tuned", "tomogan-slice-local", seed=2,
                   recipe={"domain": "slice", "merged": [{"domain": "slice", "beyond_view": 1.0}]})
    card_path = average_models(start, tuned, tmp_path / "avg", weight=0.25)

    a, b = load_generator(start / "tomogan-slice.pt"), load_generator(tuned / "tomogan-slice-local.pt")
    card = load_card(card_path)
    mixed = load_generator(card.file("pytorch").verified(card.name))  # the card's sha256 holds
    b_state, mixed_state = b.state_dict(), mixed.state_dict()
    for key, x in a.state_dict().items():
        torch.testing.assert_close(mixed_state[key], 0.75 * x + 0.25 * b_state[key], rtol=0, atol=1e-6, msg=key)
    assert card.name == "tomogan-slice-local-avg" and card.domain == "slice" and card.output == "correction"
    shares = {m["name"]: m["share"] for m in card.source["training"]["weight_average"]["models"]}
    assert shares == {"tomogan-slice": 0.75, "tomogan-slice-local": 0.25}
    assert card.source["training"]["config"] == {"lr": 1e-4, "seed": 2}  # what export's int8-aware steps read
    assert not card.quantization and not card.metrics  # the second model's measurements are not the average's
    assert card.trained_wider_than_view  # the fine-tuning's data are in the average's card
    assert card.source["data"]["file"] == "tomogan-slice.h5 + tomogan-slice-local.h5"

    same = load_card(average_models(start, tuned, tmp_path / "zero", weight=0.0, name="again"))
    zero = load_generator(same.path("pytorch")).state_dict()
    assert all(torch.equal(x, zero[key]) for key, x in a.state_dict().items())


def test_the_command_line_writes_an_average_that_exports_and_denoises(tiny_dataset, tmp_path, capsys):
    from bluesky_tomogan import load_denoiser
    from bluesky_tomogan.export.pipeline import export_model
    from bluesky_tomogan.simulate.datasets import read_dataset

    start = _model(tmp_path / "start", "first", seed=1)
    tuned = _model(tmp_path / "tuned", "second", seed=2)
    assert main(["average", str(start), str(tuned), "--out", str(tmp_path / "avg"), "--name", "mid"]) == 0
    assert "wrote" in capsys.readouterr().out
    exported = export_model(tmp_path / "avg", tmp_path / "export", tiny_dataset, formats=("onnx",))
    den = load_denoiser(exported, backend="onnxruntime")
    frames = read_dataset(tiny_dataset).split("test").ns[:3]
    out = den.denoise_context(frames)
    assert out.shape == frames.shape[1:] and bool(np.isfinite(out).all())
    assert load_card(exported).quantization["onnxruntime/fp32"]["frames"] > 0  # measured anew at export


@pytest.mark.parametrize("weight", [-0.1, 1.5, math.nan, "half"])
def test_a_share_outside_zero_to_one_is_refused(tmp_path, weight):
    start, tuned = _model(tmp_path / "a", "a", seed=1), _model(tmp_path / "b", "b", seed=2)
    with pytest.raises(ValueError, match=r"share, a number in \[0, 1\]"):
        average_models(start, tuned, tmp_path / "avg", weight=weight)
    assert not (tmp_path / "avg").exists()


def test_a_training_runs_card_without_the_sections_export_derives_averages_with_an_exported_one(tmp_path):
    """`train` writes no 'output' or 'input_despike' (export derives them from the weights), so a run's own card
    (a checkpoint kept to continue from) and an exported card of the same network agree; a stated conflict
    is still refused."""
    run = _model(tmp_path / "run", "run", seed=1)
    exported = _model(tmp_path / "exported", "exported", seed=2)
    card = json.loads((run / "run.json").read_text())
    del card["output"]
    (run / "run.json").write_text(json.dumps(card))
    card = json.loads((exported / "exported.json").read_text())
    card["input_despike"] = {"sigmas": 12.0}
    (exported / "exported.json").write_text(json.dumps(card))
    written = json.loads(average_models(run, exported, tmp_path / "avg").read_text())
    assert written["output"] == "correction" and written["input_despike"] == {"sigmas": 12.0}
    card["output"] = "frame"
    (exported / "exported.json").write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match="'output'"):
        average_models(tmp_path / "avg", exported, tmp_path / "avg2")


def test_models_that_are_not_fine_tunings_of_one_network_are_refused_before_anything_is_written(tmp_path):
    start = _model(tmp_path / "start", "start", seed=1)
    wider = _model(tmp_path / "wider", "wider", seed=2, width=0.5)
    projection = _model(tmp_path / "projection", "projection", seed=3, domain="projection")
    with pytest.raises(ModelLoadError, match="different networks"):
        average_models(start, wider, tmp_path / "avg")
    with pytest.raises(ModelLoadError, match="'domain'"):
        average_models(start, projection, tmp_path / "avg")
    card = json.loads((start / "start.json").read_text())
    (tmp_path / "onnx-only").mkdir()
    (tmp_path / "onnx-only" / "model.onnx").write_bytes(b"not used")
    card["files"] = {"onnx": {"path": "model.onnx"}}
    (tmp_path / "onnx-only" / "start.json").write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match="no PyTorch weights"):
        average_models(tmp_path / "onnx-only", start, tmp_path / "avg")
    (start / "start.pt").write_bytes(b"corrupt")
    with pytest.raises(ModelLoadError, match="does not match the sha256"):
        average_models(start, projection, tmp_path / "avg")
    assert not (tmp_path / "avg").exists()
