"""Patch-based TomoGAN training on CPU with checkpoints, resume and early stopping.

One epoch is ``steps_per_epoch`` optimiser steps on random augmented patches,
then a validation pass over whole test frames (PSNR/SSIM against the clean
frames, in normalised units, which both metrics are invariant to). The best
generator by validation SSIM is kept. Training stops when SSIM has not
improved by ``min_delta`` for ``patience`` epochs, at ``max_epochs``, or when
the wall-clock budget runs out; a later run with ``resume=True`` continues
from ``checkpoint.pt`` exactly (optimiser, RNG and history included).

On CPUs with bf16 support (AVX-512 BF16 or AMX), bf16 autocast with
channels_last memory roughly doubles the step rate; master weights and the
optimiser stay fp32. Elsewhere torch emulates bf16 and autocast is several times
slower than fp32, so ``precision="auto"`` (the default) trains in fp32 there
(:func:`training_precision`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import __version__
from ..context import DEFAULT_NOISE_RATIO, DEFAULT_THRESHOLD
from ..cpu import dispatch_cpu_flags as current_cpu_flags
from ..errors import ModelLoadError, OutputPathError
from ..inference.tiling import pad_to
from ..metrics import psnr, ssim
from ..modelcard import sha256_of, write_card
from ..simulate.datasets import PairSet, read_dataset
from .allinone import PrunePlan, channel_importance, masked, plan_pruning, ratio_key
from .data import PatchSampler, check_context_dropout, normalised_frames
from .losses import (
    PixelLoss,
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    pixel_loss,
)
from .network import GeneratorConfig, TomoGANDiscriminator, TomoGANGenerator

__all__ = ["TrainConfig", "TrainResult", "train", "load_generator", "training_precision", "widened_context"]

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Settings of one training run (all stored in the model card).

    Parameters
    ----------
    data : str
        TomoGAN-style HDF5 file (``train_ns``, ``train_gt``, ``test_ns``, ``test_gt``).
    out_dir : str
        Where checkpoints, weights and the model card go.
    name : str
        Model name (file stem of the weights and card).
    domain : str
        ``slice`` or ``projection`` (or the user's own label), for the card.
    arch : GeneratorConfig
        Network options.
    patch, batch : int
        Training patch edge and batch size.
    steps_per_epoch, max_epochs, patience : int
        Epoch length, hard limit and early-stopping patience (epochs).
    min_delta : float
        Smallest validation-SSIM gain that counts as improvement.
    time_budget_s : float
        Seconds this run may take; 0 = none. It stops (with a checkpoint) after the epoch
        that leaves too little time for another as long as the longest so far, so it ends
        within the budget unless its first epoch alone is longer.
    lr : float
        Adam learning rate of the generator (halved on a plateau).
    pixel : {"l1", "mse", "l1+ssim"}
        Pixel loss (``"l1+ssim"``: the SSIM-aware mix, see :mod:`bluesky_tomogan.model.losses`).
    dose_balance : float
        Weight each patch's pixel loss by its noisy input's own loss to the power
        ``-dose_balance`` (:func:`~bluesky_tomogan.model.losses.pixel_loss`): above 0, high-dose
        patches, whose input is already close to the target, count for more; 0 = plain mean.
    context_dropout : float
        Share of training patches whose neighbours are withheld (:class:`~.data.PatchSampler`),
        so the network also denoises a frame without its context (a single frame, or
        neighbours that :func:`~bluesky_tomogan.context.gate_context` turned away); a
        teacher still reads every neighbour. 0: always the full context.
    adv_weight, feat_weight : float
        Weights of the adversarial and feature-matching terms (0 and 0 = no critic).
    gan_warmup_epochs : int
        Epochs of pixel-only training before the critic joins.
    precision : {"auto", "bf16", "fp32"}
        Autocast precision of forward/backward passes; ``auto``: bf16 where this CPU
        computes it natively, else fp32 (:func:`training_precision`). The card records
        the one that ran.
    threads : int
        torch intra-op threads (0 = torch's default).
    val_frames : int
        Test frames used for validation (evenly spaced).
    seed : int
        Seed of initialisation and sampling.
    qat_steps : int
        Quantisation-aware fine-tuning steps after the float training (0 = none);
        see :mod:`.qat`. The float weights are kept as ``<name>.float.pt``.
    qat_lr : float
        Learning rate of the fine-tuning.
    select_by : {"ssim", "psnr"}
        Validation metric that picks the best epoch and stops early. ``psnr`` when the
        targets are noisy (self-supervised pairs): its mean squared error to a noisy
        target ranks models as the error to the clean one would (the noise adds a
        constant), which SSIM does not.
    init_weights : str
        Start from these generator weights (a ``.pt`` written by :func:`train`, another
        run's ``checkpoint.pt`` for its last epoch, a model directory, or a shipped
        model's name) instead of a random initialisation; the architecture must match.
        Ignored when a run resumes from its checkpoint.
    ratios : tuple of float
        All-in-One pruning ratios (percent of the MACs removed, e.g. ``(0, 25, 50, 75)``):
        the channels of each are chosen once, at the start, from ``init_weights``
        (:mod:`.allinone`), and every step trains all of them. An All-in-One ``init_weights``
        trained at the same ratios keeps its own channels (fine-tuning it on new data).
        Empty: an ordinary network.
        Pixel loss only (the critic's weights must be 0).
    importance_batches : int
        Training batches that estimate the channels' importance for ``ratios``.
    teacher : str
        Weights of a larger network (what ``init_weights`` accepts: a shipped model's name,
        a model directory, a ``.pt``) whose output becomes a second target: the pixel loss is
        ``(1 - distill_weight)`` times the loss to the clean frame plus ``distill_weight``
        times the loss to the teacher's output, the teacher frozen (knowledge distillation).
        For a light network: at a few photons per pixel the clean frame is far from anything
        the input can tell, and the teacher's output is the estimate the student can reach.
        Empty: no teacher.
    distill_weight : float
        The teacher's share of the pixel loss, in [0, 1].
    ema_decay : float
        Keep an exponential moving average of the generator's weights, updated after every
        step with this decay (``torch.optim.swa_utils``), and validate, select and save the
        average instead of the last step's weights. Adam's steps keep moving the weights by
        about the learning rate each, so late in a run the validation SSIM of the raw weights
        swings from epoch to epoch; the average sits where they oscillate around. For
        fine-tuning from trained weights (``init_weights``); 0.999 averages over about 1,000
        steps. 0: none.
    """

    data: str
    out_dir: str
    name: str = "tomogan"
    domain: str = "slice"
    arch: GeneratorConfig = field(default_factory=GeneratorConfig)
    patch: int = 96
    batch: int = 16
    steps_per_epoch: int = 200
    max_epochs: int = 100
    patience: int = 4
    min_delta: float = 5e-4
    time_budget_s: float = 0.0
    lr: float = 1e-3
    pixel: PixelLoss = "l1"
    dose_balance: float = 0.0
    context_dropout: float = 0.0
    adv_weight: float = 1e-3
    feat_weight: float = 0.05
    gan_warmup_epochs: int = 3
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    threads: int = 0
    val_frames: int = 48
    seed: int = 0
    qat_steps: int = 0
    qat_lr: float = 1e-4
    init_weights: str = ""
    select_by: Literal["ssim", "psnr"] = "ssim"
    ratios: tuple[float, ...] = ()
    importance_batches: int = 16
    teacher: str = ""
    distill_weight: float = 0.5
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        self.ratios = tuple(sorted({float(r) for r in self.ratios}))
        if not 0 <= self.distill_weight <= 1:
            raise ValueError(f"distill_weight is the teacher's share of the loss, in [0, 1]; got {self.distill_weight}")
        check_context_dropout(self.context_dropout)
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay is the weight average's decay per step, in [0, 1); got {self.ema_decay}")
        if not self.min_delta >= 0:
            raise ValueError(f"min_delta is the smallest validation gain that counts, >= 0; got {self.min_delta}")
        if self.teacher and self.ratios:
            raise ValueError("a teacher (distillation) and All-in-One ratios cannot be combined")
        if self.ratios and (self.adv_weight > 0 or self.feat_weight > 0):
            raise ValueError("All-in-One training (ratios) uses the pixel loss only; set adv_weight=feat_weight=0")
        if any(not 0 <= r < 100 for r in self.ratios):
            raise ValueError(f"ratios are percent of the MACs removed, in [0, 100); got {list(self.ratios)}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["arch"] = self.arch.to_dict()
        d["ratios"] = list(self.ratios)
        return d


@dataclass
class TrainResult:
    """Files and numbers a training run produced."""

    weights: Path
    card: Path
    checkpoint: Path
    history: list[dict[str, float]]
    stopped: str
    best_epoch: int = -1  # the epoch whose weights are in ``weights`` (-1: no epoch ran)


def _validate(gen: TomoGANGenerator, pairs: PairSet, n_frames: int) -> dict[str, float]:
    idx = np.unique(np.linspace(0, len(pairs.ns) - 1, min(n_frames, len(pairs.ns))).astype(int))
    depth = gen.config.in_channels
    out: dict[str, list[float]] = {"psnr": [], "ssim": [], "raw_psnr": [], "raw_ssim": []}
    m = gen.config.size_multiple
    gen.eval()
    with torch.no_grad():
        for i in idx:
            x, y = normalised_frames(pairs, int(i), depth)
            # frames of any size (a fine-tune's half-resolution pairs of a 135-row detector are 67 rows):
            # padded by reflection to the network's multiple, as the inference tiles pad, and cropped back
            h, w = x.shape[-2:]
            padded = np.ascontiguousarray(pad_to(x, -(-h // m) * m, -(-w // m) * m))
            pred = gen(torch.from_numpy(padded[None]))[0, 0, :h, :w].numpy()
            out["psnr"].append(psnr(y[0], pred))
            out["ssim"].append(ssim(y[0], pred))
            out["raw_psnr"].append(psnr(y[0], x[depth // 2]))
            out["raw_ssim"].append(ssim(y[0], x[depth // 2]))
    gen.train()
    return {f"val_{k}": float(np.mean(v)) for k, v in out.items()}


def _validate_ratios(gen: TomoGANGenerator, pairs: PairSet, n_frames: int, plan: PrunePlan | None
                     ) -> dict[str, float]:
    """:func:`_validate`; for an All-in-One network, of every ratio, the headline numbers their mean."""
    if plan is None:
        return _validate(gen, pairs, n_frames)
    rows = {}
    with masked(gen) as set_masks:
        for r in plan.ratios:
            set_masks(plan.masks(r))
            rows[ratio_key(r)] = _validate(gen, pairs, n_frames)
    out = {k: float(np.mean([row[k] for row in rows.values()])) for k in next(iter(rows.values()))}
    for key, row in rows.items():
        out |= {f"val_ssim_r{key}": row["val_ssim"], f"val_psnr_r{key}": row["val_psnr"]}
    return out


def load_generator(path: str | os.PathLike[str], arch: GeneratorConfig | None = None) -> TomoGANGenerator:
    """Load a generator from a weights file written by :func:`train` (``.pt``)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    cfg = arch or GeneratorConfig.from_dict(state.get("arch", {}))
    gen = TomoGANGenerator(cfg)
    gen.load_state_dict(state["generator"])
    return gen.eval()


def resolve_weights(name_or_path: str) -> Path:
    """The ``.pt`` file of a model's name (shipped or installed), of a model directory (its card's), or the path
    itself.

    Raises
    ------
    ModelLoadError
        Neither a readable file, a model directory with PyTorch weights, nor a model's name.
    """
    from ..inference.catalogue import find_model
    from ..inference.load import load_card

    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        return load_card(path).path("pytorch")
    entry = find_model(name_or_path)
    if entry is not None:
        return load_card(entry.card).path("pytorch")
    raise ModelLoadError(f"no weights file {name_or_path!r} (neither a file nor a shipped or installed model's name)")


def _load_initial_weights(gen: TomoGANGenerator, name_or_path: str) -> PrunePlan | None:
    """Start from a weights file, a model directory, a shipped model, or another run's ``checkpoint.pt``.

    A checkpoint holds the run's *last* epoch (its weights file holds the best one), which is
    the better start when validation stopped rewarding what the next run is after. Of a run
    with a moving average of its weights (``ema_decay``) that is the average, which its last
    epoch validated: the raw weights beside it are the optimiser's last step, for ``--resume``
    only (single steps moved a light slice network's validation SSIM by up to 0.19). Checkpoints
    hold only tensors and plain values, so they load with ``weights_only=True`` like weights.

    Returns the All-in-One channel plan that the weights were trained with, if any.
    """
    path = resolve_weights(name_or_path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if "arch" not in state and "config" in state:  # a training checkpoint (masks are hooks, not weights)
            state = {"arch": state["config"].get("arch", {}), "generator": _last_validated(state),
                     "prune_plan": state.get("prune_plan")}
        arch = GeneratorConfig.from_dict(state.get("arch", {}))
        plan = PrunePlan.stored_in(state)
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint
        raise ModelLoadError(f"cannot read initial weights {path}: {exc}") from exc
    weights = state["generator"]
    if arch != gen.config:  # only a narrower context is taken, widened
        frames = gen.config.in_channels
        if arch.in_channels > frames or replace(arch, in_channels=frames) != gen.config:
            raise ModelLoadError(f"initial weights {path} are for architecture {arch.to_dict()}, "
                                 f"this run trains {gen.config.to_dict()}")
        weights = widened_context(weights, frames)
        log.info("initial weights read %d frames, this network %d: the outer frames start with zero weights",
                 arch.in_channels, frames)
    gen.load_state_dict(weights)
    log.info("initial weights from %s", path)
    return plan


def _last_validated(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The generator weights a training checkpoint's last epoch validated: its moving average, if it kept one."""
    average = checkpoint.get("generator_average")
    if average is None:
        return checkpoint["generator"]
    log.info("initial weights: the checkpoint's moving average of the weights, which its last epoch validated")
    # AveragedModel's state: the network's under "module.", and its count of updates
    return {k.removeprefix("module."): v for k, v in average.items() if k.startswith("module.")}


def widened_context(weights: dict[str, torch.Tensor], frames: int) -> dict[str, torch.Tensor]:
    """A generator's weights for a wider context of ``frames`` adjacent frames, computing the same function.

    The context frames meet only in the first layer (``stem.0``). Its weights for the
    frames it read stay on the middle input channels; the new outer frames get zero weights,
    so the widened network's output equals the original's until training teaches it to use them.

    Parameters
    ----------
    weights : dict of str to torch.Tensor
        A generator's ``state_dict``.
    frames : int
        The wider context, odd, at least the one the weights read.

    Returns
    -------
    dict of str to torch.Tensor
        The same weights, ``stem.0.weight`` padded with zeros for the new frames.

    Raises
    ------
    ModelLoadError
        ``frames`` is narrower than the weights' context, or not wider by an even number.
    """
    first = weights["stem.0.weight"]
    extra = frames - first.shape[1]
    if extra < 0 or extra % 2:
        raise ModelLoadError(f"cannot widen a context of {first.shape[1]} frames to {frames}")
    out = dict(weights)
    out["stem.0.weight"] = F.pad(first, (0, 0, 0, 0, extra // 2, extra // 2))
    return out


def _check_out_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputPathError(f"cannot write to output directory {out_dir}: {exc}") from exc


#: CPU flags of native bf16 arithmetic, which makes torch's bf16 autocast pay on a CPU.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def training_precision(requested: str = "auto", cpu_flags: frozenset[str] | None = None) -> Literal["bf16", "fp32"]:
    """The autocast precision a training run uses: ``requested``, or for ``auto`` bf16 where the CPU
    has native bf16 (AVX-512 BF16 or AMX: 2-3.4x the fp32 step rate) and fp32 elsewhere.

    Without native bf16 torch emulates it: on an AMD EPYC Zen 3 (avx2, no AVX-512) bf16 autocast
    ran 1.3 patches/s against fp32 15.7, 0.09x (``benchmarks/train_speed.py``, 96x96 patches,
    batch 16, 2 threads), so a fine-tune on a beamline workstation of that age would take eleven
    times as long in bf16.
    """
    if requested not in ("auto", "bf16", "fp32"):
        raise ValueError(f"training precision must be auto, bf16 or fp32, not {requested!r}")
    if requested != "auto":
        return "bf16" if requested == "bf16" else "fp32"
    flags = current_cpu_flags() if cpu_flags is None else cpu_flags
    return "bf16" if NATIVE_BF16_FLAGS & flags else "fp32"


def train(config: TrainConfig, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train a TomoGAN generator; see the module docstring for the schedule.

    Parameters
    ----------
    config : TrainConfig
        Everything about the run.
    resume : bool
        Continue from ``out_dir/checkpoint.pt`` if it exists.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    TrainResult
        Paths of the best weights, the model card and the checkpoint.
    """
    if config.precision == "auto":
        config = replace(config, precision=training_precision())
        log.info("training in %s autocast (precision auto, this CPU)", config.precision)
    out_dir = Path(config.out_dir)
    _check_out_dir(out_dir)
    dataset = read_dataset(config.data)
    train_pairs, test_pairs = dataset.split("train"), dataset.split("test")
    m = config.arch.size_multiple
    if config.patch % m:
        raise ValueError(f"patch {config.patch} must be a multiple of {m} for this architecture")
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)

    gen = TomoGANGenerator(config.arch).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    use_critic = config.adv_weight > 0 or config.feat_weight > 0
    disc = (
        TomoGANDiscriminator().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if use_critic
        else None
    )
    opt_g = torch.optim.Adam(gen.parameters(), lr=config.lr)
    opt_d = torch.optim.Adam(disc.parameters(), lr=config.lr * 0.5, betas=(0.5, 0.999)) if disc else None
    sampler = PatchSampler(train_pairs, config.patch, config.arch.in_channels, config.seed,
                           context_dropout=config.context_dropout)

    ckpt_path = out_dir / "checkpoint.pt"
    weights_path = out_dir / f"{config.name}.pt"
    history: list[dict[str, float]] = []
    best_score, best_epoch, epoch, elapsed_before = -math.inf, -1, 0, 0.0
    key = f"val_{config.select_by}"
    previous_stop = ""
    stored_average: dict[str, Any] | None = None
    if resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        gen.load_state_dict(ck["generator"])
        opt_g.load_state_dict(ck["opt_g"])
        if disc is not None and ck.get("discriminator"):
            disc.load_state_dict(ck["discriminator"])
            assert opt_d is not None
            opt_d.load_state_dict(ck["opt_d"])
        history, best_epoch = ck["history"], ck["best_epoch"]
        best_score = ck.get("best_score", ck.get("best_ssim"))  # "best_ssim": checkpoints before 0.4
        epoch, elapsed_before = ck["epoch"], ck["elapsed_s"]
        previous_stop = ck.get("stopped", "time budget reached")
        stored_average = ck.get("generator_average")
        sampler.rng.bit_generator.state = ck["sampler_rng"]
        torch.set_rng_state(ck["torch_rng"])
        plan = PrunePlan.stored_in(ck)
        log.info("resumed %s at epoch %d (best %s %.4f)", ckpt_path, epoch, key, best_score)
    else:
        initial_plan = _load_initial_weights(gen, config.init_weights) if config.init_weights else None
        plan = _initial_plan(gen, sampler, config, initial_plan) if config.ratios else None
    teacher = _teacher(config) if config.teacher else None
    average = _weight_average(gen, config.ema_decay, stored_average)
    # what is validated, kept as the best and fine-tuned for int8: the average where there is one
    evaluated = cast(TomoGANGenerator, average.module) if average is not None else gen
    saved: dict[str, Any] = {"arch": config.arch.to_dict()}
    if plan is not None:
        saved["prune_plan"] = plan.to_dict()

    dtype = torch.bfloat16 if config.precision == "bf16" else torch.float32
    autocast = config.precision == "bf16"
    t0 = time.perf_counter()
    # A resumed run with no epochs left (e.g. only int8-aware fine-tuning) keeps the old reason.
    stopped = previous_stop if epoch >= config.max_epochs and previous_stop else "max_epochs"
    # With a wall-clock budget the bar counts seconds of it: the step total of max_epochs would
    # promise hours for a run that stops at its budget (bluesky-tomogan finetune's 1000 epochs).
    timed = config.time_budget_s > 0
    bar = tqdm(total=round(config.time_budget_s) if timed else config.max_epochs * config.steps_per_epoch,
               initial=0 if timed else epoch * config.steps_per_epoch, disable=not progress,
               desc=config.name, unit="s" if timed else "step", dynamic_ncols=True)
    def advance(**postfix: str) -> None:
        """One step done: move the bar (by a step, or to the seconds spent) and show where the run is."""
        bar.update(min(round(time.perf_counter() - t0), bar.total) - bar.n if timed else 1)
        bar.set_postfix({"epoch": epoch + 1, **postfix, "best": f"{best_score:.4f}"})

    epoch_s = 0.0  # the longest epoch yet, validation included: one more would end past the budget
    while epoch < config.max_epochs:
        epoch_began = time.perf_counter()
        gan_on = disc is not None and epoch >= config.gan_warmup_epochs
        sums = {"loss": 0.0, "pixel": 0.0, "adv": 0.0, "feat": 0.0, "d": 0.0}
        for _ in range(config.steps_per_epoch):
            if teacher is not None:  # the teacher reads every neighbour, whatever the student was given
                xb, yb, full_b = sampler.batch_with_full_context(config.batch)
            else:
                xb, yb = sampler.batch(config.batch)
            x = torch.from_numpy(xb).to(memory_format=torch.channels_last)
            y = torch.from_numpy(yb).to(memory_format=torch.channels_last)
            if plan is not None:  # All-in-One: every ratio, one backward pass
                _ratio_step(gen, plan, x, y, opt_g, dtype, autocast, config, sums)
                if average is not None:
                    average.update_parameters(gen)
                advance()
                continue
            with torch.autocast("cpu", dtype=dtype, enabled=autocast):
                fake = gen(x)
            fake = fake.float()
            if gan_on:
                assert disc is not None and opt_d is not None
                with torch.autocast("cpu", dtype=dtype, enabled=autocast):
                    d_loss = discriminator_loss(disc(y).float(), disc(fake.detach()).float())
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
                sums["d"] += d_loss.item()
            loss_pix = pixel_loss(fake, y, config.pixel, _centre(x), config.dose_balance)
            if teacher is not None:
                with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=autocast):
                    taught = teacher(torch.from_numpy(full_b).to(memory_format=torch.channels_last)).float()
                loss_pix = ((1 - config.distill_weight) * loss_pix
                            + config.distill_weight * pixel_loss(fake, taught, config.pixel, _centre(x),
                                                                 config.dose_balance))
            loss = loss_pix
            if gan_on:
                assert disc is not None
                for p in disc.parameters():
                    p.requires_grad_(False)
                with torch.autocast("cpu", dtype=dtype, enabled=autocast):
                    fake_feats = disc.features(fake)
                    real_feats = disc.features(y)
                    logits = disc.logit(fake_feats[-1].mean(dim=(2, 3)))
                adv = generator_adversarial_loss(logits.float())
                feat = feature_matching_loss([f.float() for f in fake_feats], [r.float() for r in real_feats])
                loss = loss + config.adv_weight * adv + config.feat_weight * feat
                for p in disc.parameters():
                    p.requires_grad_(True)
                sums["adv"] += adv.item()
                sums["feat"] += feat.item()
            opt_g.zero_grad(set_to_none=True)
            loss.backward()
            opt_g.step()
            if average is not None:
                average.update_parameters(gen)
            sums["loss"] += loss.item()
            sums["pixel"] += loss_pix.item()
            advance(loss=f"{loss.item():.4f}")
        epoch += 1
        metrics = _validate_ratios(evaluated, test_pairs, config.val_frames, plan)
        elapsed = elapsed_before + time.perf_counter() - t0
        row = {"epoch": epoch, "elapsed_s": round(elapsed, 1), "lr": opt_g.param_groups[0]["lr"]}
        row |= {f"train_{k}": v / config.steps_per_epoch for k, v in sums.items()} | metrics
        history.append(row)
        log.info("epoch %d: val PSNR %.2f dB SSIM %.4f (raw %.2f/%.4f), %.0f s", epoch,
                 metrics["val_psnr"], metrics["val_ssim"], metrics["val_raw_psnr"],
                 metrics["val_raw_ssim"], elapsed)
        if metrics[key] > best_score + config.min_delta:
            best_score, best_epoch = metrics[key], epoch
            torch.save(saved | {"generator": evaluated.state_dict()}, weights_path)
        elif epoch - best_epoch >= 2:
            for g in opt_g.param_groups:  # plateau: halve the step size
                g["lr"] = max(g["lr"] * 0.5, config.lr / 16)
        epoch_s = max(epoch_s, time.perf_counter() - epoch_began)
        if epoch - best_epoch >= config.patience:
            stopped = f"validation {config.select_by.upper()} did not improve for {config.patience} epochs"
        elif config.time_budget_s and time.perf_counter() - t0 + epoch_s > config.time_budget_s:
            stopped = "time budget reached (resume to continue)"
        torch.save({
            "generator": gen.state_dict(), "opt_g": opt_g.state_dict(), "stopped": stopped,
            "generator_average": average.state_dict() if average is not None else None,
            "discriminator": disc.state_dict() if disc else None,
            "opt_d": opt_d.state_dict() if opt_d else None,
            "history": history, "best_score": best_score, "best_epoch": best_epoch,
            "epoch": epoch, "elapsed_s": elapsed, "config": config.to_dict(),
            "sampler_rng": sampler.rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
            "prune_plan": plan.to_dict() if plan is not None else None,
        }, ckpt_path)
        if stopped != "max_epochs":
            break
    bar.close()
    qat: dict[str, Any] = {}
    if config.qat_steps > 0:
        qat = _quantization_aware_finetune(config, weights_path, sampler, test_pairs, progress)
    card = _card(config, dataset.recipe, history, best_epoch, stopped, weights_path)
    if plan is not None:
        card["allinone"] = plan.to_dict() | {"importance": "first-order Taylor (squared mask gradient)",
                                             "importance_batches": config.importance_batches}
    if qat:
        card["training"]["qat"] = qat
    card_path = write_card(out_dir / f"{config.name}.json", card)
    return TrainResult(weights_path, card_path, ckpt_path, history, stopped, best_epoch)


def _initial_plan(gen: TomoGANGenerator, sampler: PatchSampler, config: TrainConfig,
                  inherited: PrunePlan | None) -> PrunePlan:
    """An All-in-One model fine-tuned at its own ratios keeps its channels; anything else plans anew.

    Re-ranking the channels of weights trained with nested masks would hand a light ratio
    channels that were trained only inside heavier ratios, and undo what the masks taught.
    """
    if inherited is not None and inherited.ratios == list(config.ratios):
        log.info("All-in-One ratios %s: keeping the channels of %s", list(config.ratios), config.init_weights)
        return inherited
    if inherited is not None:
        log.info("the initial weights were trained at ratios %s; choosing channels anew for %s",
                 inherited.ratios, list(config.ratios))
    return _plan(gen, sampler, config)


def _plan(gen: TomoGANGenerator, sampler: PatchSampler, config: TrainConfig) -> PrunePlan:
    """Each ratio's channels, from the importance of the starting weights' channels."""
    batches = [tuple(torch.from_numpy(a) for a in sampler.batch(config.batch))
               for _ in range(config.importance_batches)]
    importance = channel_importance(gen, batches, lambda p, t: pixel_loss(p, t, config.pixel))  # type: ignore[arg-type]
    plan = plan_pruning(gen, importance, config.ratios)
    log.info("All-in-One ratios %s: MAC fractions %s", list(config.ratios),
             {k: round(v, 3) for k, v in plan.mac_fraction.items()})
    return plan


def _weight_average(gen: TomoGANGenerator, decay: float, stored: dict[str, Any] | None
                    ) -> torch.optim.swa_utils.AveragedModel | None:
    """The exponential moving average of ``gen``'s weights (``decay`` 0: none), resumed from ``stored``.

    A new average starts from the weights the run starts with (``init_weights``, or those it
    resumes with where the checkpoint has no average), not from the first step's: from
    trained weights, the first steps of a fresh Adam move every weight by about the
    learning rate at once, which cost a light slice network 0.05 validation SSIM at 5e-5
    (session 49), and ``AveragedModel`` would otherwise copy those steps' weights whole.
    """
    if decay <= 0:
        return None
    average = torch.optim.swa_utils.AveragedModel(
        gen, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(decay), use_buffers=True)
    if stored is not None:
        average.load_state_dict(stored)
    else:
        average.update_parameters(gen)
    log.info("validating and keeping a moving average of the weights (decay %g per step)", decay)
    return average


def _teacher(config: TrainConfig) -> TomoGANGenerator:
    """The frozen network whose output the student also learns (``config.teacher``)."""
    try:
        path = resolve_weights(config.teacher)
        teacher = load_generator(path)
    except ModelLoadError as exc:
        raise ModelLoadError(f"cannot read the teacher's weights: {exc}") from exc
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint
        raise ModelLoadError(f"cannot read the teacher's weights {config.teacher}: {exc}") from exc
    if teacher.config.in_channels != config.arch.in_channels:
        raise ModelLoadError(f"the teacher {path} reads {teacher.config.in_channels} frames, "
                             f"the network trained here {config.arch.in_channels}")
    for p in teacher.parameters():
        p.requires_grad_(False)
    log.info("distillation: %.2f of the pixel loss against the output of %s", config.distill_weight, path)
    return teacher.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def _centre(x: torch.Tensor) -> torch.Tensor:
    """The centre frame of a batch of contexts (N, depth, H, W) as (N, 1, H, W): the noisy input."""
    c = x.shape[1] // 2
    return x[:, c:c + 1].float()


def _ratio_step(gen: TomoGANGenerator, plan: PrunePlan, x: torch.Tensor, y: torch.Tensor,
                opt: torch.optim.Optimizer, dtype: torch.dtype, autocast: bool, config: TrainConfig,
                sums: dict[str, float]) -> None:
    """One optimiser step on the mean pixel loss of every pruning ratio (masks nested, weights shared)."""
    losses = []
    with masked(gen) as set_masks:
        for r in plan.ratios:
            set_masks(plan.masks(r))
            with torch.autocast("cpu", dtype=dtype, enabled=autocast):
                fake = gen(x)
            losses.append(pixel_loss(fake.float(), y, config.pixel, _centre(x), config.dose_balance))
    loss = torch.stack(losses).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sums["loss"] += loss.item()
    sums["pixel"] += loss.item()


def _quantization_aware_finetune(
    config: TrainConfig, weights_path: Path, sampler: PatchSampler, test_pairs: PairSet, progress: bool
) -> dict[str, Any]:
    """Fine-tune the best float weights with int8 rounding simulated (see :mod:`.qat`)."""
    from ..int8 import OUTPUT_COPIES, int8_input_range
    from .qat import fake_quantized

    float_path = weights_path.with_suffix(".float.pt")
    if not float_path.exists():
        weights_path.replace(float_path)
    gen = load_generator(float_path).train()
    before = _validate(gen, test_pairs, config.val_frames)
    opt = torch.optim.Adam(gen.parameters(), lr=config.qat_lr)
    t0 = time.perf_counter()
    # The input's int8 range as the TFLite export calibrates it: percentiles, not outlier pixels.
    probe = np.concatenate([sampler.batch(config.batch)[0] for _ in range(16)])
    input_range = int8_input_range(probe)
    # Not equalised first (export/equalise.py): with Adam at lr 1e-4 that lost 0.002 float SSIM
    # in 400 steps; the export equalises afterwards, so the simulation errs on the safe side.
    with fake_quantized(gen, observer="minmax", input_range=input_range, output_copies=OUTPUT_COPIES):
        before_q = _validate(gen, test_pairs, config.val_frames)
        for _ in tqdm(range(config.qat_steps), disable=not progress, desc=f"{config.name} int8-aware"):
            xb, yb = sampler.batch(config.batch)
            x = torch.from_numpy(xb)
            loss = pixel_loss(gen(x), torch.from_numpy(yb), config.pixel, _centre(x), config.dose_balance)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        after_q = _validate(gen, test_pairs, config.val_frames)
    after = _validate(gen, test_pairs, config.val_frames)
    torch.save({"generator": gen.state_dict(), "arch": config.arch.to_dict()}, weights_path)
    log.info("int8-aware fine-tuning: simulated-int8 SSIM %.4f -> %.4f, float %.4f -> %.4f",
             before_q["val_ssim"], after_q["val_ssim"], before["val_ssim"], after["val_ssim"])
    return {
        "steps": config.qat_steps, "lr": config.qat_lr, "wall_time_s": round(time.perf_counter() - t0, 1),
        "observer": "minmax", "input_range": list(input_range), "output_copies": OUTPUT_COPIES,
        "float_weights": float_path.name,
        "val_ssim_float_before": before["val_ssim"], "val_ssim_float_after": after["val_ssim"],
        "val_ssim_int8_simulated_before": before_q["val_ssim"],
        "val_ssim_int8_simulated_after": after_q["val_ssim"],
    }


def _card(config: TrainConfig, recipe: dict[str, Any], history: list[dict[str, float]],
          best_epoch: int, stopped: str, weights: Path) -> dict[str, Any]:
    best = next((h for h in history if h["epoch"] == best_epoch), history[-1] if history else {})
    patches = len(history) * config.steps_per_epoch * config.batch
    gate = {"context_gate": {
        "threshold": DEFAULT_THRESHOLD,
        "noise_ratio": DEFAULT_NOISE_RATIO,
        "method": "neighbours whose 8/16-px block means differ from the centre frame's by more than this share "
                  "of its structure are withheld (bluesky_tomogan.context), as training withheld them, and those "
                  "whose change from it stands more than noise_ratio times above the photon noise of the two, "
                  "measured in time",
    }} if config.context_dropout > 0 and config.arch.in_channels > 1 else {}
    return gate | {
        "name": config.name,
        "domain": config.domain,
        "architecture": config.arch.to_dict(),
        "normalisation": {"method": "robust-percentile", "low": 0.5, "high": 99.5,
                          "reference": "centre frame of the context, applied to all frames"},
        "data": {"file": os.path.basename(config.data), "sha256": sha256_of(config.data), "recipe": recipe},
        "training": {
            "config": config.to_dict(), "epochs": len(history), "best_epoch": best_epoch,
            "patches_seen": patches, "wall_time_s": history[-1]["elapsed_s"] if history else 0.0,
            "stopped": stopped, "torch": torch.__version__, "bluesky_tomogan": __version__,
            "history": history,
        },
        "metrics": {k: best[k] for k in ("val_psnr", "val_ssim", "val_raw_psnr", "val_raw_ssim") if k in best},
        "files": {"pytorch": {"path": weights.name, "sha256": sha256_of(weights)}} if weights.exists() else {},
    }
