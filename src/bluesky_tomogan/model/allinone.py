"""All-in-One pruning: one set of weights, several pruning ratios, switched at run time.

After Gong et al. (2022), "All-in-One: a highly representative DNN pruning
framework for edge devices with dynamic power management": one generator is
trained with nested channel masks, so that each pruning ratio is a subset of
the channels of the next lighter one and every ratio is good on its own. A
scan that falls behind moves to a lighter ratio without loading other weights
(:mod:`bluesky_tomogan.inference.ratios`).

How the channels are chosen (the method, not a hand-written width table):

1. **Importance.** Every ReLU-activated layer's output channel gets a first-order
   Taylor estimate of the loss increase if it were removed (Molchanov et al.
   2019): the squared gradient of the loss with respect to a mask of ones on
   that channel, summed over a few training batches.
2. **Cost.** Removing one output channel of a layer saves its own multiply-
   accumulates for that channel and those of every layer reading it
   (:meth:`TomoGANGenerator.activation_links`), per output pixel.
3. **Global ranking.** Channels are removed cheapest-first by importance per
   MAC saved, across all layers at once, until the pruned fraction of the
   network's MACs reaches the ratio; every layer keeps at least
   :data:`MIN_KEEP` of its channels. Widths are rounded up to multiples of
   :data:`CHANNEL_MULTIPLE`, which vector units and int8 kernels prefer.

Because a channel's rank is fixed, a lighter ratio keeps a subset of a heavier
ratio's channels: the masks are nested, and one weight set serves all ratios.
During training (:func:`~bluesky_tomogan.model.train.train` with ``ratios``)
each step runs every ratio and sums their losses (the "sandwich" of slimmable
networks, here with all ratios). For deployment :func:`prune` cuts the masked
channels out, so each ratio is an ordinary, smaller network that every
exporter handles.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .network import ConvLayer, GeneratorConfig, TomoGANGenerator, conv_taps

__all__ = ["CHANNEL_MULTIPLE", "MIN_KEEP", "PrunePlan", "plan_pruning", "channel_importance", "masked", "prune",
           "ratio_key", "widen"]

#: Pruned layer widths are multiples of this (or the layer's full width).
CHANNEL_MULTIPLE = 4
#: Every layer keeps at least this fraction of its channels (and at least ``CHANNEL_MULTIPLE``).
MIN_KEEP = 0.125


def ratio_key(ratio: float) -> str:
    """The card's key of a pruning ratio given in percent: ``25`` -> ``"25"``, ``12.5`` -> ``"12.5"``."""
    return f"{float(ratio):g}"


def _producers(gen: TomoGANGenerator) -> dict[str, tuple[ConvLayer, list[tuple[str, int]]]]:
    """Prunable layers by module name, with the (consumer name, first input channel) pairs reading them."""
    names = {id(m): n for n, m in gen.named_modules()}
    return {names[id(p)]: (p, [(names[id(c)], off) for c, off in consumers])
            for p, consumers in gen.activation_links()}


def _out_axis(layer: ConvLayer) -> int:
    return 1 if isinstance(layer, nn.ConvTranspose2d) else 0


def _channel_cost(gen: TomoGANGenerator) -> dict[str, float]:
    """MACs per output pixel saved by removing one output channel of each prunable layer."""
    pixels = gen.layer_pixels()
    modules = dict(gen.named_modules())
    cost: dict[str, float] = {}
    for name, (layer, consumers) in _producers(gen).items():
        own = layer.in_channels * conv_taps(layer) * pixels[name]
        reads = 0.0
        for cname, _ in consumers:
            c = modules[cname]
            assert isinstance(c, (nn.Conv2d, nn.ConvTranspose2d))
            reads += c.out_channels * conv_taps(c) * pixels[cname]
        cost[name] = own + reads
    return cost


@contextlib.contextmanager
def masked(gen: TomoGANGenerator, masks: Mapping[str, torch.Tensor] | None = None) -> Iterator[
        Callable[[Mapping[str, torch.Tensor] | None], None]]:
    """Multiply prunable layers' outputs by per-channel masks while the context is open.

    Yields a setter: ``set_masks(m)`` switches to another mask set (``None``: all channels).
    A masked channel is zero after its ReLU, so the network computes what :func:`prune`'s
    smaller network computes.
    """
    current: dict[str, torch.Tensor | None] = {}
    modules = dict(gen.named_modules())
    producers = list(_producers(gen))

    def set_masks(m: Mapping[str, torch.Tensor] | None) -> None:
        current.clear()
        current.update(m or {})

    def hook(name: str) -> Callable[..., torch.Tensor | None]:
        def apply(_mod: nn.Module, _inp: Any, out: torch.Tensor) -> torch.Tensor | None:
            mask = current.get(name)
            if mask is None:
                return None
            return out * mask.to(out.dtype).view(1, -1, 1, 1)
        return apply

    set_masks(masks)
    handles = [modules[n].register_forward_hook(hook(n)) for n in producers]
    try:
        yield set_masks
    finally:
        for h in handles:
            h.remove()


def channel_importance(gen: TomoGANGenerator, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                       loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
    """First-order Taylor importance of every prunable output channel (see the module docstring)."""
    names = list(_producers(gen))
    modules = dict(gen.named_modules())
    probes = {n: torch.ones(_width(modules[n]), requires_grad=True) for n in names}
    scores = {n: torch.zeros(_width(modules[n])) for n in names}
    was_training = gen.training
    gen.eval()
    with masked(gen, probes):
        for x, y in batches:
            gen.zero_grad(set_to_none=True)
            loss = loss_fn(gen(x), y)
            grads = torch.autograd.grad(loss, [probes[n] for n in names])
            for n, g in zip(names, grads, strict=True):
                scores[n] += g.detach() ** 2
    gen.train(was_training)
    return scores


def _width(layer: nn.Module) -> int:
    assert isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d))
    return int(layer.out_channels)


@dataclass(frozen=True)
class PrunePlan:
    """Which channels each pruning ratio keeps.

    Attributes
    ----------
    order : dict of str to list of int
        Each prunable layer's output channels, most important first.
    widths : dict of str to dict of str to int
        Ratio key (percent of the MACs removed, :func:`ratio_key`) -> layer -> channels kept
        (the first ones of ``order``).
    mac_fraction : dict of str to float
        Ratio key -> the pruned network's MACs per pixel over the full network's.
    """

    order: dict[str, list[int]]
    widths: dict[str, dict[str, int]]
    mac_fraction: dict[str, float]

    @property
    def ratios(self) -> list[float]:
        """Pruning ratios in percent, lightest last."""
        return sorted(float(k) for k in self.widths)

    def kept(self, ratio: float) -> dict[str, list[int]]:
        """Layer -> indices of the channels kept at ``ratio`` (in the network's channel order).

        Raises
        ------
        KeyError
            ``ratio`` is not one of :attr:`ratios`.
        """
        widths = self.widths[ratio_key(ratio)]
        return {n: sorted(self.order[n][: widths[n]]) for n in self.order}

    def masks(self, ratio: float) -> dict[str, torch.Tensor]:
        """Layer -> 0/1 mask of its output channels at ``ratio`` (for :func:`masked`)."""
        out = {}
        for n, idx in self.kept(ratio).items():
            m = torch.zeros(len(self.order[n]))
            m[idx] = 1.0
            out[n] = m
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"order": self.order, "widths": self.widths, "mac_fraction": self.mac_fraction}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrunePlan:
        return cls({str(k): [int(i) for i in v] for k, v in data["order"].items()},
                   {str(r): {str(k): int(v) for k, v in w.items()} for r, w in data["widths"].items()},
                   {str(k): float(v) for k, v in data["mac_fraction"].items()})

    @classmethod
    def stored_in(cls, state: Mapping[str, Any]) -> PrunePlan | None:
        """The plan a weights file or training checkpoint holds (``"prune_plan"``), or None."""
        return cls.from_dict(state["prune_plan"]) if state.get("prune_plan") else None


def plan_pruning(gen: TomoGANGenerator, importance: Mapping[str, torch.Tensor],
                 ratios: Iterable[float]) -> PrunePlan:
    """Choose each ratio's channels by global importance per MAC saved (see the module docstring).

    Parameters
    ----------
    gen : TomoGANGenerator
        The full network.
    importance : mapping of str to tensor
        :func:`channel_importance`'s scores.
    ratios : iterable of float
        Percent of the network's MACs to remove, each in [0, 100).
    """
    ratios = sorted({float(r) for r in ratios})
    if any(not 0 <= r < 100 for r in ratios):
        raise ValueError(f"pruning ratios are percent of the MACs removed, in [0, 100); got {ratios}")
    modules = dict(gen.named_modules())
    cost = _channel_cost(gen)
    full = {n: _width(modules[n]) for n in cost}
    order = {n: [int(i) for i in torch.argsort(importance[n], descending=True, stable=True)] for n in cost}
    floor = {n: min(full[n], max(CHANNEL_MULTIPLE, math.ceil(MIN_KEEP * full[n]))) for n in cost}
    # Candidates for removal: each layer's least important channels first, scored per MAC saved.
    # The score is normalised per layer (importance over the layer's total) so that layers whose
    # gradients are simply larger in magnitude are not protected for that reason alone.
    total = {n: float(importance[n].sum()) or 1.0 for n in cost}
    removable = []
    for n in cost:
        for rank in range(full[n] - 1, floor[n] - 1, -1):
            channel = order[n][rank]
            removable.append((float(importance[n][channel]) / total[n] / cost[n], n))
    removable.sort()
    macs = _MacCounter(gen)
    full_macs = macs(full)
    widths: dict[str, dict[str, int]] = {}
    fractions: dict[str, float] = {}
    for r in ratios:
        kept = dict(full)
        target = full_macs * (1 - r / 100)
        for _, n in removable:
            if macs(_rounded(kept, full)) <= target:
                break
            kept[n] -= 1
        w = _rounded(kept, full)
        widths[ratio_key(r)] = w
        fractions[ratio_key(r)] = macs(w) / full_macs
    return PrunePlan(order, widths, fractions)


def _rounded(kept: Mapping[str, int], full: Mapping[str, int]) -> dict[str, int]:
    return {n: min(full[n], CHANNEL_MULTIPLE * math.ceil(k / CHANNEL_MULTIPLE)) for n, k in kept.items()}


class _MacCounter:
    """MACs per output pixel of ``gen`` with its prunable layers at other widths, in closed form."""

    def __init__(self, gen: TomoGANGenerator) -> None:
        self.pixels = gen.layer_pixels()
        self.layers = {n: m for n, m in gen.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))}
        self.sources: dict[str, list[str]] = {}
        for n, (_, consumers) in _producers(gen).items():
            for cname, _ in consumers:
                self.sources.setdefault(cname, []).append(n)

    def __call__(self, widths: Mapping[str, int]) -> float:
        total = 0.0
        for n, m in self.layers.items():
            out = widths.get(n, m.out_channels)
            cin = sum(widths[p] for p in self.sources[n]) if n in self.sources else m.in_channels
            total += out * cin * conv_taps(m) * self.pixels[n]
        return total


def _pruned_config(cfg: GeneratorConfig, widths: Mapping[str, int]) -> GeneratorConfig:
    return GeneratorConfig.from_dict(cfg.to_dict() | {"channels_override": dict(widths)})


def prune(gen: TomoGANGenerator, kept: Mapping[str, list[int]]) -> TomoGANGenerator:
    """A smaller network computing what ``gen`` computes with only the ``kept`` channels.

    Parameters
    ----------
    gen : TomoGANGenerator
        The (masked-trained) full network.
    kept : mapping of str to list of int
        Layer -> output channels to keep (:meth:`PrunePlan.kept`); layers not named keep all.
    """
    producers = _producers(gen)
    modules = dict(gen.named_modules())
    widths = {n: len(kept.get(n, range(_width(modules[n])))) for n in producers}
    small = TomoGANGenerator(_pruned_config(gen.config, widths))
    # input channels each layer keeps: its producers' kept channels, at their offsets in the concatenation
    reads: dict[str, list[int]] = {}
    for n, (layer, consumers) in producers.items():
        idx = kept.get(n, list(range(_width(layer))))
        for cname, offset in consumers:
            reads.setdefault(cname, []).extend(offset + i for i in idx)
    state = {}
    for name, mod in gen.named_modules():
        if not isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d)):
            continue
        w, b = mod.weight.detach(), mod.bias.detach() if mod.bias is not None else None
        out_axis, in_axis = _out_axis(mod), 1 - _out_axis(mod)
        if name in producers:
            keep = torch.tensor(kept.get(name, list(range(_width(mod)))))
            w = w.index_select(out_axis, keep)
            b = b.index_select(0, keep) if b is not None else None
        if name in reads:
            w = w.index_select(in_axis, torch.tensor(sorted(reads[name])))
        state[f"{name}.weight"] = w.clone()
        if b is not None:
            state[f"{name}.bias"] = b.clone()
    small.load_state_dict(state)
    return small.eval()


def widen(small: TomoGANGenerator, config: GeneratorConfig, seed: int = 0) -> TomoGANGenerator:
    """A wider network computing exactly what ``small`` computes: :func:`prune`'s inverse (Net2Net-style).

    Every layer of ``config`` must be at least as wide as ``small``'s. The first channels of each
    layer take ``small``'s weights; the new channels get a fresh initialisation, and the weights
    with which the old channels read them are zero, so the function is unchanged until training
    gives the new channels something to add. Lets a wider architecture start from a trained one.
    """
    torch.manual_seed(seed)
    big = TomoGANGenerator(config)
    small_modules = dict(small.named_modules())
    kept = {n: list(range(_width(small_modules[n]))) for n in _producers(big)}
    reads: dict[str, list[int]] = {}
    for n, (_layer, consumers) in _producers(big).items():
        for cname, offset in consumers:
            reads.setdefault(cname, []).extend(offset + i for i in kept[n])
    with torch.no_grad():
        for name, mod in big.named_modules():
            if not isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d)):
                continue
            old = small_modules[name]
            assert isinstance(old, (nn.Conv2d, nn.ConvTranspose2d))
            out_axis = _out_axis(mod)
            outs = torch.tensor(kept.get(name, list(range(_width(mod)))))
            ins = torch.tensor(sorted(reads[name])) if name in reads else torch.arange(mod.weight.shape[1 - out_axis])
            w = mod.weight.movedim(out_axis, 0)  # (out, in, kh, kw) view of either layer type
            if (ins.numel() != old.weight.shape[1 - out_axis] or outs.numel() != old.weight.shape[out_axis]
                    or int(ins.max()) >= w.shape[1] or int(outs.max()) >= w.shape[0]):
                raise ValueError(f"layer {name}: {tuple(old.weight.shape)} does not fit in {tuple(mod.weight.shape)}")
            w[outs] = 0.0  # the old channels read nothing new ...
            w[outs.unsqueeze(1), ins.unsqueeze(0)] = old.weight.movedim(out_axis, 0)  # ... and what they read before
            if mod.bias is not None and old.bias is not None:
                mod.bias[outs] = old.bias
    return big.eval()
