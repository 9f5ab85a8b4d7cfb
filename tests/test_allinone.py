"""All-in-One pruning: nested masks, exact pruning, training, export per ratio, loading and the adaptive policy."""

from __future__ import annotations

import collections
import json
import shutil
import time

import bluesky.plans as bp
import event_model
import h5py
import numpy as np
import pytest
import torch
from ophyd.sim import SynSignal

from bluesky_tomogan import TomoGANCallback, load_denoiser
from bluesky_tomogan.errors import ModelLoadError, RatioError
from bluesky_tomogan.export.pipeline import export_model
from bluesky_tomogan.frames import context_indices
from bluesky_tomogan.inference.ratios import RatioController, RatioDenoisers, load_ratios
from bluesky_tomogan.model.allinone import channel_importance, masked, plan_pruning, prune, widen
from bluesky_tomogan.model.network import GeneratorConfig, TomoGANGenerator
from bluesky_tomogan.model.train import TrainConfig, train

RATIOS = (0, 25, 50, 75)


def _importance(gen, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 3, 32, 32, generator=g)
    return channel_importance(gen, [(x, x[:, 1:2])], lambda p, t: (p - t).abs().mean())


@pytest.mark.parametrize("upsample", ["bilinear", "transposed"])
def test_each_ratio_prunes_to_a_smaller_network_that_computes_what_the_masked_one_does(upsample):
    torch.manual_seed(0)
    gen = TomoGANGenerator(GeneratorConfig(upsample=upsample)).eval()
    plan = plan_pruning(gen, _importance(gen), RATIOS)
    x = torch.rand(1, 3, 48, 64)
    full = gen.macs_per_pixel()
    for r in RATIOS:
        small = prune(gen, plan.kept(r))
        with torch.no_grad(), masked(gen, plan.masks(r)):
            expected = gen(x)
        assert torch.allclose(small(x), expected, atol=1e-5)
        # the method removes about the asked fraction of the MACs (widths rounded to multiples of 4)
        assert small.macs_per_pixel() / full == pytest.approx(plan.mac_fraction[str(r)], rel=1e-6)
        assert abs(plan.mac_fraction[str(r)] - (1 - r / 100)) < 0.06


@pytest.mark.parametrize("arch", [{"upsample": "transposed"},
                                  {"input_downscale": 2, "downscale": "space-to-depth"}])
def test_a_widened_network_computes_what_the_narrow_one_does_and_its_new_channels_learn(arch):
    torch.manual_seed(2)
    small = TomoGANGenerator(GeneratorConfig(**arch)).eval()
    wide_config = GeneratorConfig(**arch, width=1.5)
    big = widen(small, wide_config)
    x = torch.rand(2, 3, 32, 64)
    with torch.no_grad():
        assert torch.allclose(big(x), small(x), atol=1e-5)
    assert big.macs_per_pixel() > 2 * small.macs_per_pixel()
    # the new channels are not dead: the zero weights with which old channels read them get gradients
    big.train()
    (big(x) - x[:, 1:2]).abs().mean().backward()
    narrow, wide = small.dec1[2].weight.shape[1], big.dec1[2].weight.shape[1]
    assert wide > narrow and big.dec1[2].weight.grad[:, narrow:].abs().sum() > 0
    with pytest.raises(ValueError, match="does not fit"):
        widen(big, GeneratorConfig(**arch))


def test_lighter_ratios_keep_subsets_of_heavier_ratios_channels():
    torch.manual_seed(1)
    gen = TomoGANGenerator()
    plan = plan_pruning(gen, _importance(gen), RATIOS)
    for heavy, light in zip(RATIOS, RATIOS[1:], strict=False):
        kept_heavy, kept_light = plan.kept(heavy), plan.kept(light)
        assert all(set(kept_light[n]) <= set(kept_heavy[n]) for n in kept_heavy)
    widths = plan.widths["75"]
    assert len(set(widths.values())) > 3  # per-layer widths chosen by the method, not one multiplier
    assert all(w % 4 == 0 and w >= 4 for w in widths.values())


def test_ratios_out_of_range_are_refused():
    gen = TomoGANGenerator()
    with pytest.raises(ValueError, match="in \\[0, 100\\)"):
        plan_pruning(gen, _importance(gen), [100])
    with pytest.raises(ValueError, match="pixel loss only"):
        TrainConfig(data="x.h5", out_dir="o", ratios=(0, 50))
    with pytest.raises(ValueError, match="in \\[0, 100\\)"):
        TrainConfig(data="x.h5", out_dir="o", ratios=(-5,), adv_weight=0, feat_weight=0)


@pytest.fixture(scope="module")
def aio_model(tiny_dataset, tmp_path_factory):
    """A tiny All-in-One model trained (briefly) and exported to ONNX for every ratio."""
    root = tmp_path_factory.mktemp("aio")
    cfg = TrainConfig(data=str(tiny_dataset), out_dir=str(root / "train"), name="tiny-aio", patch=32, batch=4,
                      steps_per_epoch=3, max_epochs=1, adv_weight=0, feat_weight=0, val_frames=4, threads=1,
                      ratios=RATIOS, importance_batches=2)
    result = train(cfg, progress=False)
    card = export_model(result.weights.parent, root / "model", tiny_dataset, formats=("onnx",))
    return card.parent, result


def test_training_records_every_ratio_and_the_plan(aio_model):
    model_dir, result = aio_model
    row = result.history[-1]
    assert all(f"val_ssim_r{r}" in row for r in RATIOS)
    card = json.loads(result.card.read_text())
    assert sorted(card["allinone"]["widths"], key=float) == [str(r) for r in RATIOS]
    assert card["training"]["config"]["ratios"] == list(map(float, RATIOS))


def test_fine_tuning_an_all_in_one_model_at_its_ratios_keeps_its_channels(aio_model, tiny_dataset, tmp_path,
                                                                         caplog):
    _, result = aio_model
    trained = json.loads(result.card.read_text())["allinone"]
    common = {"data": str(tiny_dataset), "patch": 32, "batch": 4, "steps_per_epoch": 2, "max_epochs": 1,
              "adv_weight": 0, "feat_weight": 0, "val_frames": 4, "threads": 1, "importance_batches": 2, "seed": 5,
              "init_weights": str(result.weights)}
    with caplog.at_level("INFO", logger="bluesky_tomogan.model.train"):
        same = train(TrainConfig(out_dir=str(tmp_path / "same"), name="same", ratios=RATIOS, **common),
                     progress=False)
    kept = json.loads(same.card.read_text())["allinone"]
    assert (kept["order"], kept["widths"]) == (trained["order"], trained["widths"])
    assert "keeping the channels" in caplog.text
    # Other ratios cannot reuse the plan: their channels are chosen anew from the weights.
    other = train(TrainConfig(out_dir=str(tmp_path / "other"), name="other", ratios=(0, 50), **common),
                  progress=False)
    assert sorted(json.loads(other.card.read_text())["allinone"]["widths"], key=float) == ["0", "50"]


def test_every_ratio_is_exported_and_listed_in_one_card(aio_model):
    model_dir, _ = aio_model
    card = json.loads((model_dir / "tiny-aio.json").read_text())
    assert sorted(card["ratios"], key=float) == [str(r) for r in RATIOS]
    fractions = [card["ratios"][str(r)]["mac_fraction"] for r in RATIOS]
    assert fractions == sorted(fractions, reverse=True) and fractions[0] == 1.0
    for r in RATIOS[1:]:
        entry = card["ratios"][str(r)]
        sub = json.loads(next((model_dir / entry["model"]).glob("*.json")).read_text())
        assert sub["pruning"]["ratio"] == r and "onnx" in sub["files"]
        assert entry["ssim_drop_vs_full"] == pytest.approx(card["metrics"]["val_ssim"] - sub["metrics"]["val_ssim"])
        assert entry["macs_per_pixel"] < card["ratios"]["0"]["macs_per_pixel"]


def test_load_ratios_opens_every_ratio_up_front(aio_model, rng):
    model_dir, _ = aio_model
    ratios = load_ratios(model_dir, backend="onnxruntime")
    assert ratios.ratios == tuple(map(float, RATIOS)) and ratios.ratio == 0
    frames = rng.poisson(300, (3, 32, 32)).astype(np.float32)
    outs = {r: ratios.at(r).denoise_context(frames) for r in ratios.ratios}
    assert all(o.shape == (32, 32) and np.isfinite(o).all() for o in outs.values())
    assert ratios.at(50).ratio == 50 and ratios.at(50).model_name == "tiny-aio-r50"
    ratios.ratio = 50
    np.testing.assert_array_equal(ratios.denoise_context(frames), outs[50.0])
    prov = ratios.provenance()
    assert prov["pruning_ratios"] == "0,25,50,75" and prov["pruning_ratio_runtimes"].count("onnxruntime") == 4
    assert load_denoiser(model_dir, backend="onnxruntime", ratio=25).provenance()["pruning_ratio"] == 25


def test_a_ladder_warmed_when_loaded_is_not_warmed_again_at_a_scans_first_frame(aio_model):
    """The first warm-up runs every network twice (about 1 s for seven at 512x512): done at load, the
    scan's first frame reuses its timings instead of letting frames queue up behind it."""
    model_dir, _ = aio_model
    ratios = load_ratios(model_dir, backend="onnxruntime", warm_up=(32, 40))
    calls = []
    for d in ratios.ladder:
        d.denoise_context = lambda context, _f=d.denoise_context: calls.append(1) or _f(context)
    costs = ratios.warm_up((32, 40))
    assert len(costs) == len(ratios.ladder) and all(c > 0 for c in costs) and not calls
    ratios.warm_up((32, 40), again=True)
    assert len(calls) == 2 * len(ratios.ladder)


def test_an_unknown_ratio_and_a_model_without_ratios_are_specific_errors(aio_model):
    model_dir, _ = aio_model
    with pytest.raises(RatioError, match="no pruning ratio 33; it has 0, 25, 50, 75"):
        load_denoiser(model_dir, ratio=33)
    with pytest.raises(RatioError, match="no pruning ratio 30"):
        load_ratios(model_dir, ratios=[0, 30])
    with pytest.raises(RatioError, match="'tomogan-projection' has no pruning ratios"):
        load_denoiser("tomogan-projection", ratio=50)
    with pytest.raises(RatioError, match="has no pruning ratios"):
        load_ratios("tomogan-projection")
    assert load_denoiser("tomogan-projection", backend="onnxruntime", ratio=0).ratio == 0  # the model itself


def test_quality_remeasures_every_ratio_card_of_an_all_in_one_model(aio_model, tiny_dataset, tmp_path, capsys):
    from bluesky_tomogan.cli import main

    model_dir, _ = aio_model
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    assert main(["quality", str(copy), "--data", str(tiny_dataset), "--frames", "3"]) == 0
    cards = [copy / "tiny-aio.json", *(next((copy / "tiny-aio.ratios" / f"r{r}").glob("*.json")) for r in RATIOS[1:])]
    for path in cards:
        card = json.loads(path.read_text())
        assert card["quantization"]["onnxruntime/fp32"]["frames"] == 3 and "cpu" in card["quantization_measured_on"]
    assert capsys.readouterr().out.count("model card:") == len(RATIOS)
    # the model's summary of its ratios holds what was just measured, each against ratio 0
    summary, full = json.loads(cards[0].read_text())["ratios"], json.loads(cards[0].read_text())["metrics"]["val_ssim"]
    for r, path in zip(RATIOS, cards, strict=True):
        measured = json.loads(path.read_text())["metrics"]["val_ssim"]
        assert summary[str(r)]["ssim"] == measured
        assert summary[str(r)]["ssim_drop_vs_full"] == pytest.approx(full - measured)


def test_export_records_the_input_despike_in_every_ratios_card(aio_model, tiny_dataset, tmp_path):
    """What the space-to-depth models need (they do not remove zingers themselves): asked for at export,
    not written into the cards by hand, and every ratio's network gets its input despiked."""
    from bluesky_tomogan.errors import ExportOptionError

    _, result = aio_model
    with pytest.raises(ExportOptionError, match="positive number of sigmas"):
        export_model(result.weights.parent, tmp_path / "bad", tiny_dataset, formats=("onnx",), input_despike=0)
    card = export_model(result.weights.parent, tmp_path / "model", tiny_dataset, formats=("onnx",), measure=False,
                        input_despike=12)
    assert json.loads(card.read_text())["input_despike"] == {"sigmas": 12.0}
    for r in RATIOS:
        assert load_denoiser(card.parent, backend="onnxruntime", ratio=r).despike_sigmas == 12.0


def test_a_ratio_missing_for_one_backend_is_named_and_auto_falls_back(aio_model, tmp_path):
    model_dir, _ = aio_model
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    sub = next((copy / "tiny-aio.ratios" / "r50").glob("*.json"))
    card = json.loads(sub.read_text())
    card["files"]["tflite_int8"] = {"path": "gone.int8.tflite", "sha256": ""}  # listed, not there
    sub.write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match="gone.int8.tflite is missing"):
        load_denoiser(copy, backend="litert", ratio=50)
    card["files"].pop("tflite_int8")
    sub.write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match="'tiny-aio-r50' has no 'tflite_int8' file for litert"):
        load_denoiser(copy, backend="litert", precision="int8", ratio=50)
    den = load_denoiser(copy, ratio=50)  # auto: the next backend that has the ratio's file
    assert den.ratio == 50 and den.backend in ("openvino", "onnxruntime")


def test_the_command_line_trains_ratios_and_denoises_at_one(tiny_dataset, aio_model, tmp_path, capsys):
    from bluesky_tomogan.cli import main

    out = tmp_path / "run"
    assert main(["train", str(tiny_dataset), "--out", str(out), "--name", "cli-aio", "--patch", "32", "--batch", "2",
                 "--steps-per-epoch", "2", "--epochs", "1", "--ratios", "0", "50", "--no-progress"]) == 0
    assert json.loads((out / "cli-aio.json").read_text())["training"]["config"]["ratios"] == [0.0, 50.0]
    assert main(["train", str(tiny_dataset), "--out", str(out), "--ratios", "0", "50", "--adv-weight", "0.1"]) == 2
    assert "pixel loss only" in capsys.readouterr().err
    frames = tmp_path / "f.npy"
    np.save(frames, np.random.default_rng(0).poisson(300, (3, 32, 32)).astype(np.float32))
    assert main(["denoise", str(frames), str(tmp_path / "o.npy"), "--model", str(aio_model[0]), "--ratio", "75",
                 "--backend", "onnxruntime"]) == 0
    assert "tiny-aio-r75" in capsys.readouterr().out
    assert main(["denoise", str(frames), str(tmp_path / "o.npy"), "--model", str(aio_model[0]), "--ratio", "10"]) == 1
    assert "no pruning ratio 10" in capsys.readouterr().err


class Timed:
    """A real denoiser that takes ``delay`` seconds per frame, as a network of that cost would."""

    def __init__(self, inner, delay, ratio, model="timed"):
        self.inner, self.delay, self.ratio, self.depth = inner, delay, ratio, inner.depth
        self.model_name = f"{model}-r{ratio}"

    def denoise_context(self, context):
        time.sleep(self.delay)
        return self.inner.denoise_context(context)

    def provenance(self):
        return self.inner.provenance()

    backend, precision, model_sha256 = "onnxruntime", "fp32", ""


class Counting(RatioDenoisers):
    """Remembers the shape every ratio was warmed up at."""

    def warm_up(self, shape):
        self.warmed = shape
        return super().warm_up(shape)


def test_the_warm_up_runs_every_network_of_the_ladder_and_times_it(denoiser, monkeypatch):
    """Each network runs (compiles at the shape, allocates) and is timed at the warm-up: its context is frames
    with noise. A context of ones came back as it was without the network (a frame of one value has nothing to
    denoise), so the warm-up compiled nothing and timed 3-4 ms for every network."""
    from bluesky_tomogan.inference.denoiser import Denoiser

    runs: list[int] = []
    real = Denoiser._run_tiles

    def counted(self, *args, **kwargs):  # the network itself: a frame of one value never gets here
        runs.append(id(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Denoiser, "_run_tiles", counted)
    other = load_denoiser("tomogan-projection-light", backend="onnxruntime")
    ladder = RatioDenoisers({0: denoiser, 50: other})
    costs = ladder.warm_up((64, 48))
    assert runs.count(id(denoiser)) == 2 and runs.count(id(other)) == 2  # each ran, twice: the second one timed
    assert len(costs) == 2 and all(c > 0 for c in costs)
    assert ladder.warm_up((64, 48)) == costs and len(runs) == 4  # kept per shape


def test_the_controller_steps_lighter_above_high_water_and_back_after_calm(denoiser):
    ratios = RatioDenoisers({r: Timed(denoiser, 0, r) for r in RATIOS})
    c = RatioController(ratios, high_water=4, low_water=1, calm=3, settle=2)
    seen = [c.next_denoiser(w).ratio for w in [0, 5, 5, 5, 5, 5, 5, 3, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0]]
    assert seen[:2] == [0, 25] and max(seen) == 75  # one step at a time, settling between steps
    assert seen[seen.index(75):].count(75) >= 2 and seen[-1] < 75  # back to heavier ratios once drained
    assert all(abs(RATIOS.index(a) - RATIOS.index(b)) <= 1 for a, b in zip(seen, seen[1:], strict=False))


def test_the_controller_counts_the_workers_other_work_before_stepping_heavier(denoiser):
    ratios = RatioDenoisers({r: Timed(denoiser, 0, r) for r in RATIOS})
    c = RatioController(ratios, high_water=4, low_water=1, calm=2, settle=1)
    assert c.next_denoiser(5, 0.1).ratio == 25
    c.record(0.05)  # the network alone fits 90 % of the 100 ms between frames...
    c.record_cycle(0.12)  # ...but reading, QC and writing take another 70 ms per frame
    assert c.overhead == pytest.approx(0.07)
    assert c.next_denoiser(5, 0.1).ratio == 50
    assert [c.next_denoiser(0, 0.1).ratio for _ in range(5)] == [50] * 5  # so 25 % is not retried
    assert c.next_denoiser(0, 0.2).ratio == 25  # frames twice as far apart: it fits


def test_the_controller_steps_on_into_the_fallback_after_the_lightest_ratio_and_back(denoiser):
    light = RatioDenoisers({r: Timed(denoiser, 0, r, "light") for r in (0, 50)})
    ladder = RatioDenoisers({r: Timed(denoiser, 0, r) for r in RATIOS}, fallback=light)
    assert [d.model_name for d in ladder.ladder] == ["timed-r0", "timed-r25", "timed-r50", "timed-r75",
                                                     "light-r0", "light-r50"]
    assert ladder.ratios == tuple(map(float, RATIOS))  # the model's own ratios; at() and denoise() use them
    c = RatioController(ladder, high_water=4, low_water=1, calm=1, settle=1)
    down = [c.next_denoiser(9).model_name for _ in range(7)]
    assert down == ["timed-r25", "timed-r50", "timed-r75", "light-r0", "light-r50", "light-r50", "light-r50"]
    up = [c.next_denoiser(0).model_name for _ in range(6)]
    assert up == ["light-r0", "timed-r75", "timed-r50", "timed-r25", "timed-r0", "timed-r0"]
    prov = ladder.provenance()
    assert prov["fallback_ladder"].startswith("light-r0:onnxruntime/fp32,light-r50")
    # with each step's cost known (the warm-up's), a high queue goes straight to the heaviest step that keeps up
    costs = [0.15, 0.14, 0.13, 0.12, 0.05, 0.02]
    c = RatioController(ladder, high_water=4, low_water=1, calm=1, settle=1, costs=costs)
    assert c.next_denoiser(5, 0.1).model_name == "light-r0"  # 50 ms of 100 fits; every ratio of the model is slower
    assert c.next_denoiser(0, 0.1).model_name == "light-r0"  # and it does not climb back into a step too slow
    c = RatioController(ladder, high_water=4, low_water=1, calm=1, settle=1, costs=costs)
    assert c.next_denoiser(5, 0.03).model_name == "light-r50"  # none keeps up: the lightest


def test_a_fallback_must_denoise_the_same_domain_and_may_read_a_narrower_context(RE, denoiser, aio_model):
    """The 5-frame full projection model above the 3-frame All-in-One model: the stream's context is the
    deeper one, and each step that reads fewer frames gets the middle of it (mirrored ends included)."""
    shallow = load_denoiser("tomogan-projection-aio", backend="onnxruntime")
    seen: list[np.ndarray] = []

    class Recording(Timed):
        def denoise_context(self, context, **kwargs):
            seen.append(np.asarray(context).copy())
            return self.inner.denoise_context(context, **kwargs)

    assert (denoiser.depth, shallow.depth) == (5, 3)
    ladder = RatioDenoisers({0: denoiser}, fallback=RatioDenoisers({0: Recording(shallow, 0, 50, "aio")}))
    assert ladder.depth == 5 and len(ladder.warm_up((32, 32))) == 2
    context = np.random.default_rng(0).poisson(300, (5, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(ladder.fallback.denoise_context(context), shallow.denoise_context(context[1:4]))
    # in a run: a ladder held at its 3-frame step gets, for each frame, the middle of the 5-frame context
    seen.clear()
    mixed = RatioDenoisers({0: denoiser, 50: Recording(shallow, 0, 50, "aio")}, ratio=50)
    rng = np.random.default_rng(1)
    docs = []
    cb = TomoGANCallback(mixed, policy="block", inline=True)
    cb.subscribe(lambda name, doc: docs.append((name, doc)))
    RE.subscribe(cb)
    RE(bp.count([SynSignal(func=lambda: rng.poisson(300, (24, 32)).astype(np.uint16), name="cam")], num=5))
    raw = [np.asarray(d["data"]["cam"]) for n, d in docs if n == "event"]
    assert len(seen) == 5 and all(c.shape == (3, 24, 32) for c in seen)
    for k, context3 in enumerate(sorted(seen, key=lambda c: [np.array_equal(c[1], r) for r in raw].index(True))):
        expected = [raw[j] for j in context_indices(np.zeros(5, np.int32), k, 3)]
        np.testing.assert_array_equal(context3, np.stack(expected))
    model_dir, _ = aio_model
    with pytest.raises(RatioError, match="fallback 'tomogan-projection-aio' denoises projections"):
        load_ratios(model_dir / "tiny-aio.json", backend="onnxruntime", fallback="tomogan-projection-aio")
    ladder = load_ratios(model_dir / "tiny-aio.json", backend="onnxruntime", ratios=[0, 75],
                         fallback=model_dir / "tiny-aio.json", fallback_ratios=[50])
    assert [d.model_name for d in ladder.ladder] == ["tiny-aio", "tiny-aio-r75", "tiny-aio-r50"]
    # a plain model is one step
    ladder = load_ratios("tomogan-projection-aio", backend="onnxruntime", ratios=[0, 75], fallback="tomogan-projection")
    assert [d.model_name for d in ladder.ladder] == ["tomogan-projection-aio", "tomogan-projection-aio-r75",
                                                     "tomogan-projection"]


def test_adaptive_needs_ratio_denoisers(denoiser):
    with pytest.raises(ValueError, match="RatioDenoisers of two or more ratios"):
        TomoGANCallback(denoiser, policy="adaptive")
    with pytest.raises(ValueError, match="low_water < high_water"):
        TomoGANCallback(RatioDenoisers({0: denoiser, 50: denoiser}), policy="adaptive", high_water=2, low_water=2)


def _scan_every_100_ms(RE, policy, den, frames=60, maxsize=16):
    """A 60-frame count whose camera delivers a frame every 100 ms; the derived stream's columns.

    (The adaptive policy warms every network of the ladder up at the first frame, twice, to
    time it: with these slow fakes that is up to 1.1 s of frames, which a queue of 16 holds.)"""
    rng = np.random.default_rng(0)

    def frame():
        time.sleep(0.100)
        return rng.poisson(500, (32, 32)).astype(np.uint16)

    docs = []
    cb = TomoGANCallback(den, policy=policy, maxsize=maxsize, inline=True)
    cb.subscribe(lambda name, doc: docs.append((name, doc)))
    token = RE.subscribe(cb)
    RE(bp.count([SynSignal(func=frame, name="cam")], num=frames))
    RE.unsubscribe(token)
    pages = [d for n, d in docs if n == "event_page" and "cam_ratio" in d["data"]]
    return cb, {key: [v for p in pages for v in p["data"][key]] for key in pages[0]["data"]}


def test_adaptive_policy_keeps_up_with_a_scan_faster_than_the_full_model(RE, denoiser):
    """Frames come every 100 ms; the full network needs 150 ms (1.5x too slow), the lightest 20 ms.

    (The sleeps dominate the real denoising of 32x32 frames, so a busy CI machine does not
    change the outcome; benchmarks/adaptive_scan.py measures it with the real networks.)"""
    costs = {0: 0.150, 25: 0.110, 50: 0.060, 75: 0.020}
    ratios = Counting({r: Timed(denoiser, costs[r], r) for r in RATIOS})
    cb, rows = _scan_every_100_ms(RE, "adaptive", ratios)
    used = rows["cam_ratio"]
    assert cb.dropped == 0 and rows["cam_qc_error"] == [""] * 60
    assert len(used) == 60 and set(used) <= set(map(float, RATIOS)) and len(set(used)) > 1
    # once the warm-up's backlog has drained, no frame goes to a ratio known to be too slow (0 and 25 %)
    assert set(used[20:]) <= {50.0, 75.0}
    assert rows["cam_model"] == [f"timed-r{r:g}" for r in used]  # which network denoised each frame
    assert ratios.warmed == (32, 32)  # every ratio ran once at the frame shape before the first switch
    # the same scan with the full network alone cannot keep up
    cb, rows = _scan_every_100_ms(RE, "drop-oldest", Timed(denoiser, costs[0], 0), maxsize=8)
    denoised = {u for u, e in zip(rows["cam_ratio"], rows["cam_qc_error"], strict=True) if not e}
    assert cb.dropped > 0 and denoised == {0.0}


def test_adaptive_policy_keeps_up_through_the_fallback_where_pruning_does_not_buy_time(RE, denoiser):
    """As on a CPU, where pruning hardly speeds up the full-resolution layers: every ratio is too
    slow for frames every 100 ms (150 to 120 ms); the fallback network (20 ms) keeps up."""
    costs = {0: 0.150, 25: 0.140, 50: 0.130, 75: 0.120}
    light = RatioDenoisers({0: Timed(denoiser, 0.020, 0, "light")})
    ladder = Counting({r: Timed(denoiser, costs[r], r) for r in RATIOS}, fallback=light)
    cb, rows = _scan_every_100_ms(RE, "adaptive", ladder)
    assert cb.dropped == 0 and rows["cam_qc_error"] == [""] * 60
    assert rows["cam_model"].count("light-r0") > 30 and set(rows["cam_model"][20:]) == {"light-r0"}
    assert ladder.warmed == (32, 32)  # the fallback too: warm_up runs the whole ladder


def _fly_scan_in_batches(tmp_path, policy, den, batches=5, batch=20, period=1.0, maxsize=16):
    """Frames written to a file and announced as ophyd-async announces them: one StreamDatum of ``batch`` frames
    every ``period`` seconds (its flush period), not one frame at a time. The derived stream's columns."""
    import h5py

    n = batches * batch
    path = tmp_path / f"fly-{policy}.h5"
    with h5py.File(path, "w") as f:
        f["/entry/data/data"] = np.random.default_rng(0).poisson(500, (n, 32, 32)).astype(np.uint16)
    bundle = event_model.compose_run()
    desc = bundle.compose_descriptor(name="primary", data_keys={"cam": {
        "source": "sim", "dtype": "array", "shape": [32, 32], "external": "STREAM:", "dtype_numpy": "<u2"}})
    resource = bundle.compose_stream_resource(mimetype="application/x-hdf5", uri=path.as_uri(), data_key="cam",
                                              parameters={"dataset": "/entry/data/data"})
    docs = []
    cb = TomoGANCallback(den, policy=policy, maxsize=maxsize, directory=tmp_path / f"derived-{policy}")
    cb.subscribe(lambda name, doc: docs.append((name, doc)))
    cb("start", bundle.start_doc)
    cb("descriptor", desc.descriptor_doc)
    cb("stream_resource", resource.stream_resource_doc)
    for b in range(batches):
        time.sleep(period)  # the camera exposes the next batch
        cb("stream_datum", resource.compose_stream_datum(
            indices={"start": b * batch, "stop": (b + 1) * batch},
            seq_nums={"start": b * batch + 1, "stop": (b + 1) * batch + 1}, descriptor=desc.descriptor_doc))
    cb("stop", bundle.compose_stop())
    pages = [d for n_, d in docs if n_ == "event_page" and "cam_qc_error" in d["data"]]
    return cb, {key: [v for p in pages for v in p["data"][key]] for key in ("cam_qc_error", "cam_model")}


def test_frames_delivered_in_batches_are_not_dropped_by_a_worker_that_keeps_up_on_average(tmp_path, denoiser):
    """A fly scan's camera writes frames to a file and announces them every flush period (ophyd-async's
    StreamDatum): 20 frames at once every 2 s, 100 ms per frame on average, which a 5-ms network follows
    (with a wide margin: the worker's other work per frame, on a machine loaded by other tests too; at 50 ms per
    frame a busy machine made it fall behind). A queue of 16 dropped 4 of each batch on arrival (drop-oldest,
    adaptive), and the adaptive policy took the gaps within a batch (0 s) for the frame rate and went to lighter
    networks. A batch of frames in a file is queued whole (references, no pixels), and the frame rate is frames
    per second between deliveries."""
    cb, rows = _fly_scan_in_batches(tmp_path, "drop-oldest", Timed(denoiser, 0.005, 0), batches=3, period=2.0)
    assert cb.dropped == 0 and rows["cam_qc_error"] == [""] * 60
    costs = {0: 0.005, 25: 0.004, 50: 0.003, 75: 0.002}
    ratios = RatioDenoisers({r: Timed(denoiser, costs[r], r) for r in RATIOS})
    cb, rows = _fly_scan_in_batches(tmp_path, "adaptive", ratios, batches=3, period=2.0)
    assert cb.dropped == 0 and rows["cam_qc_error"] == [""] * 60
    assert rows["cam_model"].count("timed-r0") >= 54, collections.Counter(rows["cam_model"])


class Mirrored:
    """A real denoiser that keeps the centre frames of the contexts whose later neighbours were all mirrored."""

    def __init__(self, inner):
        self.inner, self.depth, self.mirrored = inner, inner.depth, []

    def denoise_context(self, context):
        half = len(context) // 2
        if all(np.array_equal(context[half + k], context[half - k]) for k in range(1, half + 1)):
            self.mirrored.append(np.array(context[half]))
        return self.inner.denoise_context(context)

    def provenance(self):
        return self.inner.provenance()


def test_the_last_frames_of_a_batch_wait_for_the_next_batch_not_for_a_mirrored_context(tmp_path, denoiser,
                                                                                       monkeypatch):
    """A frame's next neighbours of a fly scan's batch come with the next batch, a flush period later: a frame is
    overdue after three of the stream's usual waits between deliveries, not between frames (120 ms here, within
    a batch), else the last frames of every batch were denoised with mirrored neighbours."""
    import bluesky_tomogan.callbacks.run as run

    monkeypatch.setattr(run, "CONTEXT_WAIT", 0.2)  # shorter than the 1.2 s between batches, as 2 s is than 5 s
    den = Mirrored(denoiser)
    cb, rows = _fly_scan_in_batches(tmp_path, "block", den, batches=4, batch=10, period=1.2)
    assert rows["cam_qc_error"] == [""] * 40
    with h5py.File(tmp_path / "fly-block.h5") as f:
        frames = f["/entry/data/data"][()]
    mirrored = {next(i for i, f in enumerate(frames) if np.array_equal(f, centre)) for centre in den.mirrored}
    # the scan's first and last frames, and perhaps the last of the first batch, which waits CONTEXT_WAIT while the
    # time between deliveries is not known yet; never the last of a later batch (at 77eb44f, three times the time
    # between frames: the last of every batch, 9, 19, 29 too)
    assert {0, 39} <= mirrored <= {0, 9, 39}, sorted(mirrored)


def test_every_ratio_of_the_shipped_projection_model_has_an_int8_ir_that_auto_accepts():
    """Re-exported in session 20: input range from the calibration percentiles, the worst frame guarded."""
    from bluesky_tomogan.inference import load_card
    from bluesky_tomogan.inference.registry import SSIM_TOLERANCE, SSIM_TOLERANCE_WORST

    for ratio, card in load_card("tomogan-projection-aio").ratio_cards().items():
        quantization = card.files["openvino_int8"].info["quantization"]
        # at most one convolution in float besides the output layer (which stays in float by design)
        in_float = quantization["convolutions_in_float"] - quantization.get("output_layer_in_float", False)
        assert quantization["input_range"][1] < 2.0 and in_float <= 1, ratio
        measured = card.source["quantization"]["openvino/int8"]
        assert measured["ssim_drop"] <= SSIM_TOLERANCE["int8"], ratio
        assert measured["ssim_drop_worst"] <= SSIM_TOLERANCE_WORST["int8"], ratio


def test_the_shipped_light_projection_model_is_lighter_than_ratio_50_in_every_format(rng):
    from bluesky_tomogan.inference import load_card
    from bluesky_tomogan.inference.registry import SSIM_TOLERANCE, SSIM_TOLERANCE_WORST

    card = load_card("tomogan-projection-light")
    aio = load_card("tomogan-projection-aio")
    assert card.domain == "projection" and all(card.has(k) for k in ("pytorch", "onnx", "openvino_int8", "tflite_int8"))
    assert card.source["pruning"]["mac_fraction"] < aio.ratios["50"]["mac_fraction"]
    # the frames' ratio column: the percent of the full network's MACs it removed
    assert card.ratio == pytest.approx(100 * (1 - card.source["pruning"]["mac_fraction"]), abs=0.1)
    measured = card.source["quantization"]["openvino/int8"]
    assert measured["ssim_drop"] <= SSIM_TOLERANCE["int8"]
    assert measured["ssim_drop_worst"] <= SSIM_TOLERANCE_WORST["int8"]
    # as good as ratio 50 on the same test frames, in fp32
    assert card.source["metrics"]["val_ssim"] >= aio.ratios["50"]["ssim"] - 0.001
    den = load_denoiser("tomogan-projection-light", backend="onnxruntime")
    frames = rng.poisson(300, (den.depth, 64, 64)).astype(np.float32)
    assert np.isfinite(den.denoise_context(frames)).all() and den.ratio == card.ratio
    # the step after ratio 50 of an adaptive ladder (docs/callback.md)
    ladder = load_ratios("tomogan-projection-aio", ratios=[0, 25, 50], fallback="tomogan-projection-light",
                         backend="onnxruntime")
    assert [d.ratio for d in ladder.ladder] == [0, 25, 50, card.ratio]
    assert ladder.ladder[-1].model_name == "tomogan-projection-light"


@pytest.mark.parametrize("name", ["tomogan-projection-aio", "tomogan-slice-aio"])
def test_shipped_all_in_one_models_hold_every_ratio_with_its_cost_and_quality(name, rng):
    from bluesky_tomogan.inference import load_card

    card = load_card(name)
    assert sorted(card.ratios, key=float) == ["0", "25", "50", "75"]
    macs = [card.ratios[k]["macs_per_pixel"] for k in ("0", "25", "50", "75")]
    assert macs == sorted(macs, reverse=True) and macs[-1] < 0.3 * macs[0]
    # measured at export on the card's test frames: half the MACs within 0.005 SSIM of ratio 0
    assert card.ratios["50"]["ssim_drop_vs_full"] < 0.005
    assert set(card.source["ratio_speed"]["ms_per_frame"]) == {"0", "25", "50", "75"}
    ratios = load_ratios(name, backend="onnxruntime")
    frames = rng.poisson(300, (3, 64, 64)).astype(np.float32)
    for r in ratios.ratios:
        den = ratios.at(r)
        assert den.ratio == r and np.isfinite(den.denoise_context(frames)).all()
        assert den.card.has("tflite_int8") and den.card.has("openvino_int8")  # every format, every ratio
