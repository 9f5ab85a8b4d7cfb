"""Training: a tiny real run lowers the loss, writes a card, resumes, and rejects bad paths."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs the train extra (torch)")

from bluesky_tomogan.errors import ModelLoadError, OutputPathError  # noqa: E402
from bluesky_tomogan.model.data import PatchSampler  # noqa: E402
from bluesky_tomogan.model.losses import pixel_loss  # noqa: E402
from bluesky_tomogan.model.network import GeneratorConfig, TomoGANGenerator  # noqa: E402
from bluesky_tomogan.model.train import TrainConfig, load_generator, train  # noqa: E402
from bluesky_tomogan.simulate.datasets import read_dataset, write_dataset  # noqa: E402

from .conftest import pairs_of  # noqa: E402


def _config(data, out, **kw):
    base = {"data": str(data), "out_dir": str(out), "name": "tiny", "patch": 32, "batch": 4,
            "steps_per_epoch": 12, "max_epochs": 2, "patience": 10, "lr": 2e-3, "adv_weight": 0.0,
            "feat_weight": 0.0, "precision": "fp32", "threads": 1, "val_frames": 4, "seed": 0,
            "arch": GeneratorConfig(width=0.25)}
    base.update(kw)
    return TrainConfig(**base)


def _fixed_batch_loss(gen, data):
    x, y = PatchSampler(read_dataset(data).split("train"), 32, seed=123).batch(16)
    with torch.no_grad():
        return float(pixel_loss(gen(torch.from_numpy(x)), torch.from_numpy(y)))


def test_training_runs_bf16_autocast_only_where_the_cpu_computes_bf16_natively():
    from bluesky_tomogan.model.train import training_precision

    assert training_precision("auto", frozenset({"avx2", "avx512f", "avx512_bf16"})) == "bf16"  # Zen 4/5
    assert training_precision("auto", frozenset({"avx512f", "amx_tile", "amx_bf16"})) == "bf16"  # Xeon with AMX
    assert training_precision("auto", frozenset({"avx2", "fma"})) == "fp32"  # Zen 3: bf16 emulated, 0.09x
    assert training_precision("auto", frozenset()) == "fp32"  # unknown: the safe one
    assert training_precision("bf16", frozenset({"avx2"})) == "bf16"  # asked for by name
    assert TrainConfig(data="d.h5", out_dir="o").precision == "auto"
    with pytest.raises(ValueError, match="auto, bf16 or fp32"):
        training_precision("fp16")


def test_tiny_training_run_lowers_the_loss_and_writes_a_model_card(tiny_dataset, tmp_path):
    torch.manual_seed(0)
    untrained = _fixed_batch_loss(TomoGANGenerator(GeneratorConfig(width=0.25)).eval(), tiny_dataset)
    result = train(_config(tiny_dataset, tmp_path), progress=False)
    trained = _fixed_batch_loss(load_generator(result.weights), tiny_dataset)
    assert trained < 0.8 * untrained
    card = json.loads(result.card.read_text())
    assert card["name"] == "tiny"
    assert card["architecture"]["width"] == 0.25
    assert card["files"]["pytorch"]["sha256"]
    assert card["data"]["sha256"] and card["training"]["epochs"] == 2
    assert {"val_psnr", "val_ssim"} <= set(card["metrics"])
    assert result.best_epoch == card["training"]["best_epoch"] >= 1  # the epoch whose weights were written


def test_fine_tuning_a_shipped_model_with_the_command_line_defaults_loads_its_weights():
    """`train --init tomogan-projection` without --input-downscale: the CLI's default `downscale`
    ("space-to-depth") means nothing at input_downscale 1 and must not make another architecture."""
    from bluesky_tomogan.inference import load_card
    from bluesky_tomogan.model.network import GeneratorConfig, TomoGANGenerator
    from bluesky_tomogan.model.train import _load_initial_weights

    frames = load_card("tomogan-projection").in_channels
    cfg = GeneratorConfig(input_downscale=1, downscale="space-to-depth", in_channels=frames)
    assert cfg == GeneratorConfig(in_channels=frames) and "downscale" not in cfg.to_dict()
    _load_initial_weights(TomoGANGenerator(cfg), "tomogan-projection")  # raised "are for architecture ..."


@pytest.mark.parametrize("downscale", [1, 2])
def test_a_wider_context_starts_from_narrower_weights_as_the_same_function(downscale, tmp_path):
    """`train --context 5 --init tomogan-projection`: the two outer frames start with zero weights, so the
    network computes what the 3-frame one did; a narrower context, or any other difference, is refused."""
    import torch

    from bluesky_tomogan.model.train import _load_initial_weights

    arch = {"input_downscale": downscale, "downscale": "space-to-depth"} if downscale > 1 else {}
    three = TomoGANGenerator(GeneratorConfig(**arch)).eval()
    five = TomoGANGenerator(GeneratorConfig(in_channels=5, **arch)).eval()
    path = str(tmp_path / "weights.pt")
    torch.save({"arch": three.config.to_dict(), "generator": three.state_dict()}, path)
    _load_initial_weights(five, path)
    x = torch.randn(2, 5, 32, 32)
    with torch.no_grad():
        assert torch.equal(five(x), three(x[:, 1:4]))
    with pytest.raises(ModelLoadError, match="architecture"):
        _load_initial_weights(TomoGANGenerator(GeneratorConfig(in_channels=5, width=0.5, **arch)), path)
    torch.save({"arch": five.config.to_dict(), "generator": five.state_dict()}, path)
    with pytest.raises(ModelLoadError, match="architecture"):
        _load_initial_weights(TomoGANGenerator(GeneratorConfig(**arch)), path)


def test_a_run_starts_from_another_runs_last_epoch_through_its_checkpoint(tiny_dataset, tmp_path):
    """`--init runs/x/checkpoint.pt`: the last epoch's generator, not the kept best weights."""
    from bluesky_tomogan.model.train import _load_initial_weights

    first = train(_config(tiny_dataset, tmp_path / "first", max_epochs=2), progress=False)
    last = torch.load(first.checkpoint, weights_only=True)["generator"]
    gen = TomoGANGenerator(GeneratorConfig(width=0.25))
    _load_initial_weights(gen, str(first.checkpoint))
    assert all(torch.equal(gen.state_dict()[k], v) for k, v in last.items())

    second = train(_config(tiny_dataset, tmp_path / "second", max_epochs=1, init_weights=str(first.checkpoint)),
                   progress=False)
    assert second.history[0]["epoch"] == 1
    with pytest.raises(ModelLoadError, match="are for architecture"):
        _load_initial_weights(TomoGANGenerator(GeneratorConfig(width=0.5)), str(first.checkpoint))


def test_the_ssim_loss_is_the_ssim_the_project_scores_with():
    from bluesky_tomogan.metrics import ssim
    from bluesky_tomogan.model.losses import ssim_loss

    rng = np.random.default_rng(0)
    clean = rng.random((2, 1, 40, 40)).astype(np.float32) * 3 + 5  # not on [0, 1]: the loss maps it as ssim() does
    noisy = clean + rng.normal(0, 0.4, clean.shape).astype(np.float32)
    mixed = pixel_loss(torch.from_numpy(noisy), torch.from_numpy(clean), "l1+ssim")
    expected = np.mean([1 - ssim(c[0], n[0]) for c, n in zip(clean, noisy, strict=True)])
    assert float(ssim_loss(*[torch.from_numpy((a - clean.min()) / np.ptp(clean)) for a in (noisy, clean)])) > 0
    assert 0.84 * expected < float(mixed) < 0.84 * expected + 0.16 * 0.2  # SSIM term plus a small L1 term
    assert float(pixel_loss(torch.from_numpy(clean), torch.from_numpy(clean), "l1+ssim")) == pytest.approx(0, abs=1e-6)
    with pytest.raises(ValueError, match="l1\\+ssim"):
        pixel_loss(torch.from_numpy(clean), torch.from_numpy(clean), "ssim")  # type: ignore[arg-type]


def test_dose_balance_weights_each_patch_by_how_noisy_its_input_was():
    """With balance 1 every patch is asked for the same relative gain: a patch whose input is 10x
    closer to the target counts 10x more; balance 0 is the plain mean, as before."""
    rng = np.random.default_rng(2)
    target = torch.from_numpy(rng.random((2, 1, 24, 24)).astype(np.float32))
    noise = torch.from_numpy(rng.normal(0, 1, (2, 1, 24, 24)).astype(np.float32))
    noisy = target + noise * torch.tensor([0.5, 0.05]).view(2, 1, 1, 1)  # a low-dose and a high-dose patch
    pred = target + noise * 0.01  # the same residual error on both
    for kind in ("l1", "mse", "l1+ssim"):
        plain = pixel_loss(pred, target, kind)
        assert float(pixel_loss(pred, target, kind, noisy, 0.0)) == pytest.approx(float(plain))
        per = [float(pixel_loss(pred[i:i + 1], target[i:i + 1], kind)) for i in range(2)]
        start = [float(pixel_loss(noisy[i:i + 1], target[i:i + 1], kind)) for i in range(2)]
        w = np.array(start) ** -1.0
        expected = float(np.mean(w / w.mean() * np.array(per)))
        assert float(pixel_loss(pred, target, kind, noisy, 1.0)) == pytest.approx(expected, rel=1e-4)
        assert w[1] > 5 * w[0]  # the high-dose patch weighs more


def test_training_with_the_ssim_loss_runs(tiny_dataset, tmp_path):
    result = train(_config(tiny_dataset, tmp_path, pixel="l1+ssim", dose_balance=0.5, max_epochs=1), progress=False)
    config = json.loads(result.card.read_text())["training"]["config"]
    assert config["pixel"] == "l1+ssim" and config["dose_balance"] == 0.5
    assert np.isfinite(result.history[-1]["train_pixel"])


def test_resume_continues_from_the_checkpoint(tiny_dataset, tmp_path):
    train(_config(tiny_dataset, tmp_path, max_epochs=1), progress=False)
    result = train(_config(tiny_dataset, tmp_path, max_epochs=2), resume=True, progress=False)
    assert [h["epoch"] for h in result.history] == [1, 2]


def test_a_moving_average_of_the_weights_is_what_is_validated_kept_and_resumed(tiny_dataset, tmp_path):
    from bluesky_tomogan.model.train import _validate

    first = train(_config(tiny_dataset, tmp_path, max_epochs=1, ema_decay=0.9),
                  progress=False)
    ck = torch.load(first.checkpoint, weights_only=False)
    kept = torch.load(first.weights, weights_only=True)["generator"]
    averaged = {k.removeprefix("module."): v for k, v in ck["generator_average"].items() if k.startswith("module.")}
    assert ck["generator_average"]["n_averaged"] == 1 + 12  # the starting weights, then every step
    assert all(torch.equal(kept[k], averaged[k]) for k in kept)
    assert any(not torch.equal(kept[k], ck["generator"][k]) for k in kept)  # not the last step's weights
    # the history's validation is the kept (averaged) weights'
    again = _validate(load_generator(first.weights), read_dataset(tiny_dataset).split("test"), 4)
    assert again["val_ssim"] == pytest.approx(first.history[0]["val_ssim"], abs=1e-6)
    resumed = train(_config(tiny_dataset, tmp_path, max_epochs=2, ema_decay=0.9), resume=True, progress=False)
    assert torch.load(resumed.checkpoint, weights_only=False)["generator_average"]["n_averaged"] == 1 + 24
    assert json.loads(resumed.card.read_text())["training"]["config"]["ema_decay"] == 0.9
    with pytest.raises(ValueError, match="ema_decay"):
        _config(tiny_dataset, tmp_path, ema_decay=1.0)


def test_a_moving_average_starts_from_the_starting_weights_not_the_first_steps(tiny_dataset, tmp_path):
    first = train(_config(tiny_dataset, tmp_path / "first", max_epochs=1), progress=False)
    start = torch.load(first.weights, weights_only=True)["generator"]
    slow = train(_config(tiny_dataset, tmp_path / "slow", max_epochs=1, init_weights=str(first.weights),
                         ema_decay=1 - 1e-7), progress=False)
    kept = torch.load(slow.weights, weights_only=True)["generator"]
    moved = torch.load(slow.checkpoint, weights_only=False)["generator"]
    assert max((kept[k] - start[k]).abs().max().item() for k in start) < 1e-6
    assert max((moved[k] - start[k]).abs().max().item() for k in start) > 1e-4


def test_starting_from_an_averaging_runs_checkpoint_takes_its_average_not_its_last_step(tiny_dataset, tmp_path):
    from bluesky_tomogan.model.train import _load_initial_weights

    first = train(_config(tiny_dataset, tmp_path / "first", max_epochs=1, ema_decay=0.9), progress=False)
    ck = torch.load(first.checkpoint, weights_only=False)
    average = {k.removeprefix("module."): v for k, v in ck["generator_average"].items() if k.startswith("module.")}
    gen = TomoGANGenerator(GeneratorConfig.from_dict(ck["config"]["arch"]))
    _load_initial_weights(gen, str(first.checkpoint))
    assert all(torch.equal(v, average[k]) for k, v in gen.state_dict().items())
    assert any(not torch.equal(v, ck["generator"][k]) for k, v in gen.state_dict().items())
    # a run without an average: its last step's weights, as before
    plain = train(_config(tiny_dataset, tmp_path / "plain", max_epochs=1), progress=False)
    _load_initial_weights(gen, str(plain.checkpoint))
    last = torch.load(plain.checkpoint, weights_only=False)["generator"]
    assert all(torch.equal(v, last[k]) for k, v in gen.state_dict().items())


def test_training_with_the_critic_runs(tiny_dataset, tmp_path):
    result = train(_config(tiny_dataset, tmp_path, adv_weight=1e-3, feat_weight=0.05, gan_warmup_epochs=1),
                   progress=False)
    assert result.history[-1]["train_adv"] > 0 and result.history[-1]["train_feat"] > 0


def test_int8_aware_fine_tuning_keeps_float_weights_and_records_itself(tiny_dataset, tmp_path):
    result = train(_config(tiny_dataset, tmp_path, max_epochs=1, qat_steps=5), progress=False)
    assert (tmp_path / "tiny.float.pt").exists()
    qat = json.loads(result.card.read_text())["training"]["qat"]
    assert qat["steps"] == 5 and "val_ssim_int8_simulated_after" in qat


def test_fake_quantisation_is_removed_after_the_block():
    from bluesky_tomogan.model.qat import fake_quantized

    gen = TomoGANGenerator(GeneratorConfig(width=0.25)).eval()
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        before = gen(x)
        with fake_quantized(gen):
            rounded = gen(x)
        after = gen(x)
    assert torch.equal(before, after)
    assert not torch.equal(before, rounded)


def test_frames_of_any_size_are_validated_whole(tmp_path):
    """A fine-tune's pairs are half a detector's size (67x80 from 135x160 frames): validation pads them to the
    network's multiple of 8, as inference does, instead of failing after the first epoch."""
    data = write_dataset(tmp_path / "odd.h5", pairs_of(12, 36, 44), pairs_of(4, 37, 45))
    result = train(_config(data, tmp_path / "out", max_epochs=1, steps_per_epoch=2), progress=False)
    (epoch,) = result.history
    assert np.isfinite([epoch["val_psnr"], epoch["val_ssim"]]).all()
    gen = load_generator(result.weights)
    x = torch.from_numpy(np.stack([read_dataset(data).split("test").ns[i] for i in (0, 0, 1)]))[None]
    with pytest.raises(ValueError, match="multiples of 8"):  # what validation met before
        gen(x)


def test_unwritable_output_directory_is_a_clear_error(tiny_dataset, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutputPathError, match="cannot write to output directory"):
        train(_config(tiny_dataset, blocker / "out"), progress=False)


def test_patch_larger_than_the_frames_is_a_clear_error(tiny_dataset, tmp_path):
    from bluesky_tomogan.errors import DatasetError

    with pytest.raises(DatasetError, match="larger than the frames"):
        train(_config(tiny_dataset, tmp_path, patch=64), progress=False)


def test_patches_are_normalised_by_their_whole_frame_like_inference(tiny_dataset):
    from bluesky_tomogan.normalise import robust_range

    pairs = read_dataset(tiny_dataset).split("train")
    sampler = PatchSampler(pairs, 32, seed=0)  # patch == frame: the patch is the whole frame
    x, y = sampler.batch(4)
    assert x.shape == (4, 3, 32, 32) and y.shape == (4, 1, 32, 32)
    lo, hi = np.percentile(x[:, 1], [0.5, 99.5], axis=(1, 2))
    np.testing.assert_allclose(lo, 0.0, atol=1e-5)
    np.testing.assert_allclose(hi, 1.0, atol=1e-5)
    assert sampler.ranges[0] == pytest.approx(robust_range(pairs.ns[0]))


def test_fake_quantisation_saturates_the_input_at_the_export_range_and_keeps_the_residual_float():
    from bluesky_tomogan.model.qat import fake_quantized

    torch.manual_seed(0)
    gen = TomoGANGenerator(GeneratorConfig(width=0.25, residual=True)).eval()
    x = torch.rand(1, 3, 16, 16)
    spiked = x.clone()
    spiked[0, :, 4, 4] = 5.0  # a streak pixel far beyond the calibrated range
    with torch.no_grad(), fake_quantized(gen, input_range=(0.0, 1.0)):
        gen(x)  # calibrate the activation ranges
        clipped = spiked.clamp(0, 1)
        correction = gen(clipped) - clipped[:, 1:2]
        spiked_correction = gen(spiked) - spiked[:, 1:2]
    # the convolution path saw 5.0 as 1.0 (int8 saturation); the residual added the float 5.0
    assert torch.allclose(correction, spiked_correction, atol=1e-6)


def test_int8_simulation_rounds_the_residual_input_like_the_host_and_averages_output_copies():
    from bluesky_tomogan.model.qat import fake_quant_activation, fake_quant_copies, round_unsaturated

    lo, hi = torch.tensor(0.0), torch.tensor(1.0)
    x = torch.tensor([0.3001, 0.7003, 5.0, -2.0])
    seen = round_unsaturated(x, lo, hi)
    step = 1.0 / 255
    assert torch.allclose(seen[:2], torch.round(x[:2] / step) * step)  # on the int8 grid
    assert torch.equal(seen[2:], x[2:])  # saturated pixels keep their float value
    ramp = torch.linspace(0.1, 0.9, 10001)
    plain = (fake_quant_activation(ramp, lo, hi) - ramp).abs().mean()
    four = (fake_quant_copies(ramp, lo, hi, 4) - ramp).abs().mean()
    assert four < 0.3 * plain  # four offset copies: about a quarter of the rounding error


def test_export_to_onnx_writes_a_card_that_loads_and_records_measured_quality(tiny_dataset, tmp_path):
    from bluesky_tomogan import load_denoiser
    from bluesky_tomogan.export.pipeline import export_model, measure_quality
    from bluesky_tomogan.inference.load import load_card

    result = train(_config(tiny_dataset, tmp_path / "train", max_epochs=1), progress=False)
    card_path = export_model(result.weights.parent, tmp_path / "export", tiny_dataset, formats=("onnx",))
    card = load_card(card_path)
    assert card.output == "correction" and card.path("onnx").is_file()
    assert {"onnxruntime/fp32", "openvino/fp32"} <= set(card.quantization)
    assert abs(card.ssim_drop("openvino/fp32")) < 1e-3  # the same fp32 network on another runtime
    den = load_denoiser(card_path, backend="onnxruntime")
    assert den.model_sha256 == card.file("onnx").sha256
    quality = measure_quality(card_path, read_dataset(tiny_dataset).split("test"), n_frames=4)
    ref = quality["onnxruntime/fp32"]
    assert ref["frames"] == 4 and 0 < ref["ssim"] <= 1 and np.isfinite(ref["psnr"])
    assert quality["openvino/fp32"]["ssim_drop"] == pytest.approx(0, abs=1e-3)
    assert "litert/int8" not in quality  # no int8 TFLite file was exported: not measured, not invented


def test_an_edge_network_is_exported_in_both_forms_and_onnx_runtime_runs_the_trained_one(tiny_dataset, tmp_path):
    import onnx

    from bluesky_tomogan import load_denoiser
    from bluesky_tomogan.export.pipeline import export_model
    from bluesky_tomogan.inference.load import load_card

    result = train(_config(tiny_dataset, tmp_path / "train", max_epochs=1,
                           arch=GeneratorConfig(width=0.25, upsampled_padding="edge")), progress=False)
    card_path = export_model(result.weights.parent, tmp_path / "export", tiny_dataset, formats=("onnx",))
    card = load_card(card_path)
    ops = {kind: [n.op_type for n in onnx.load(str(card.path(kind))).graph.node] for kind in ("onnx", "onnx_resize")}
    assert ops["onnx"].count("ConvTranspose") == 3 and "Resize" not in ops["onnx"]
    assert ops["onnx_resize"].count("Resize") == 3 and "ConvTranspose" not in ops["onnx_resize"]
    ort_den = load_denoiser(card_path, backend="onnxruntime")
    ov_den = load_denoiser(card_path, backend="openvino", precision="fp32")
    assert ort_den.model_sha256 == card.file("onnx_resize").sha256  # the form it runs faster
    assert ov_den.model_sha256 == card.file("onnx").sha256  # OpenVINO (and TensorRT) read the fused one
    frames = read_dataset(tiny_dataset).split("test").ns[:3]
    a, b = ort_den.denoise_context(frames), ov_den.denoise_context(frames)
    assert np.abs(a - b).max() <= 1e-4 * max(1.0, float(np.abs(b).max()))
    assert abs(card.ssim_drop("openvino/fp32")) < 1e-3

    # exported again as a zero-padded network, the card keeps no resize form behind
    plain = train(_config(tiny_dataset, tmp_path / "plain", max_epochs=1), progress=False)
    card_path = export_model(plain.weights.parent, tmp_path / "export", tiny_dataset, formats=("onnx",), measure=False)
    assert not load_card(card_path).has("onnx_resize")


def test_export_can_ship_the_float_weights_from_before_the_int8_aware_steps(tiny_dataset, tmp_path):
    from bluesky_tomogan.errors import ExportOptionError
    from bluesky_tomogan.export.pipeline import export_model

    plain = train(_config(tiny_dataset, tmp_path / "plain", max_epochs=1), progress=False)
    with pytest.raises(ExportOptionError, match="no int8-aware steps"):
        export_model(plain.weights.parent, tmp_path / "x", tiny_dataset, formats=("onnx",), float_weights=True)

    run = train(_config(tiny_dataset, tmp_path / "run", max_epochs=1, qat_steps=3), progress=False)
    float_state = torch.load(run.weights.with_suffix(".float.pt"), weights_only=True)["generator"]
    qat_state = torch.load(run.weights, weights_only=True)["generator"]
    for out in (tmp_path / "shipped", run.weights.parent):  # another directory, then in place
        card_path = export_model(run.weights.parent, out, tiny_dataset, formats=("onnx",), measure=False,
                                 float_weights=True)
        card = json.loads(card_path.read_text())
        shipped = torch.load(out / "tiny.pt", weights_only=True)["generator"]
        assert all(torch.equal(shipped[k], v) for k, v in float_state.items())
        kept = torch.load(out / "tiny.qat.pt", weights_only=True)["generator"]
        assert all(torch.equal(kept[k], v) for k, v in qat_state.items())
        assert "qat" not in card["training"] and card["training"]["qat_tried"]["shipped"] is False
        assert card["training"]["qat_tried"]["steps"] == 3


def test_the_ssim_loss_of_a_flat_patch_is_measured_on_the_frames_range():
    """A patch of empty space (flat target) is judged on the normalised frame's range, not its own:
    mapped by its own tiny range, its noise was scaled up by orders of magnitude."""
    rng = np.random.default_rng(1)
    flat = (0.3 + rng.normal(0, 1e-4, (4, 1, 32, 32))).astype(np.float32)  # background around a sample
    pred = flat + rng.normal(0, 0.01, flat.shape).astype(np.float32)
    loss = float(pixel_loss(torch.from_numpy(pred), torch.from_numpy(flat), "l1+ssim"))
    assert 0 < loss < 0.2  # 0.10; mapped by its own range (~8e-4) it was 2.76


def test_a_student_learns_the_teachers_output_with_distillation(tiny_dataset, tmp_path):
    first = train(_config(tiny_dataset, tmp_path / "teacher", max_epochs=1), progress=False)
    # a student that starts as the teacher and learns only its output has nothing to learn
    taught = train(_config(tiny_dataset, tmp_path / "same", max_epochs=1, init_weights=str(first.weights),
                           teacher=str(first.weights), distill_weight=1.0, lr=1e-9), progress=False)
    plain = train(_config(tiny_dataset, tmp_path / "plain", max_epochs=1, init_weights=str(first.weights),
                          lr=1e-9), progress=False)
    assert taught.history[0]["train_pixel"] < 1e-4 < plain.history[0]["train_pixel"]
    card = json.loads(taught.card.read_text())
    assert card["training"]["config"]["teacher"] == str(first.weights)
    half = train(_config(tiny_dataset, tmp_path / "half", max_epochs=1, init_weights=str(first.weights),
                         teacher=str(first.weights), distill_weight=0.5, lr=1e-9), progress=False)
    assert half.history[0]["train_pixel"] == pytest.approx(0.5 * plain.history[0]["train_pixel"], rel=1e-3)


def test_a_teacher_that_cannot_teach_is_a_clear_error_before_training(tiny_dataset, tmp_path):
    with pytest.raises(ModelLoadError, match="cannot read the teacher"):
        train(_config(tiny_dataset, tmp_path / "a", teacher=str(tmp_path / "missing.pt")), progress=False)
    five = tmp_path / "five.pt"
    torch.save({"generator": TomoGANGenerator(GeneratorConfig(width=0.25, in_channels=5)).state_dict(),
                "arch": GeneratorConfig(width=0.25, in_channels=5).to_dict()}, five)
    with pytest.raises(ModelLoadError, match="reads 5 frames"):
        train(_config(tiny_dataset, tmp_path / "b", teacher=str(five)), progress=False)
    with pytest.raises(ValueError, match="cannot be combined"):
        _config(tiny_dataset, tmp_path / "c", teacher=str(five), ratios=(0, 50))
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        _config(tiny_dataset, tmp_path / "d", teacher=str(five), distill_weight=1.5)


def test_context_dropout_is_learnt_with_a_teacher_that_sees_every_neighbour_and_asks_for_the_gate(tiny_dataset,
                                                                                                   tmp_path):
    from bluesky_tomogan.context import DEFAULT_NOISE_RATIO, DEFAULT_THRESHOLD

    plain = train(_config(tiny_dataset, tmp_path / "plain", max_epochs=1), progress=False)
    assert "context_gate" not in json.loads(plain.card.read_text())
    dropped = train(_config(tiny_dataset, tmp_path / "dropped", max_epochs=1, context_dropout=0.5,
                            teacher=str(plain.weights)), progress=False)
    card = json.loads(dropped.card.read_text())
    assert card["context_gate"]["threshold"] == DEFAULT_THRESHOLD
    assert card["context_gate"]["noise_ratio"] == DEFAULT_NOISE_RATIO
    assert card["training"]["config"]["context_dropout"] == 0.5
    with pytest.raises(ValueError, match="context_dropout is a share of the patches"):
        _config(tiny_dataset, tmp_path / "bad", context_dropout=-0.1)
