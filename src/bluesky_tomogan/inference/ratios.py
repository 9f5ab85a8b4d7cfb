"""Every pruning ratio of an All-in-One model, loaded up front, and the rule that switches between them.

An All-in-One model (:mod:`bluesky_tomogan.model.allinone`) is exported as one
network per pruning ratio. :func:`load_ratios` opens all of them at once, so a
switch during a scan costs no load and no compile: it is a different
:class:`Denoiser` for the next frame. :class:`RatioController` is the policy
the callback's ``policy="adaptive"`` uses: a lighter ratio when its queue
passes a high-water mark, a heavier one again when the queue has drained.

A ladder may go on past the model's own lightest ratio into a *fallback* model
(``load_ratios(..., fallback="tomogan-projection-s2d-aio")``): on a CPU, pruning
channels hardly speeds up the layers that run at full resolution (they are bound
by memory traffic, not by multiply-accumulates; ``benchmarks/layer_profile.py``),
so a network that never runs at full resolution is the step that still buys time
when the lightest ratio is too slow. The derived stream records which network
denoised each frame (``<field>_model`` and ``<field>_ratio``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ..errors import RatioError
from ..frames import centred
from ..modelcard import ModelCard
from .denoiser import DEFAULT_OVERLAP, Denoiser, OutDType, takes_frame_keys
from .load import load_card, load_denoiser

__all__ = ["RatioDenoisers", "RatioController", "load_ratios", "network_name"]

log = logging.getLogger(__name__)


class RatioDenoisers:
    """One :class:`Denoiser` per pruning ratio of an All-in-One model; use as a Denoiser of ``ratio``.

    Build one with :func:`load_ratios`.

    Parameters
    ----------
    denoisers : mapping of float to Denoiser
        Ratio (percent of the MACs removed) -> its denoiser.
    ratio : float, optional
        The ratio :meth:`denoise` uses (default: the smallest, the best quality).
    fallback : RatioDenoisers, optional
        Lighter networks for ``policy="adaptive"`` to step down to after this model's
        lightest ratio (their steps follow this model's in :attr:`ladder`).
    """

    def __init__(self, denoisers: Mapping[float, Denoiser], ratio: float | None = None, *,
                 fallback: RatioDenoisers | None = None) -> None:
        if not denoisers:
            raise RatioError("RatioDenoisers needs at least one ratio")
        self._by_ratio = {float(r): d for r, d in sorted(denoisers.items())}
        self.ratios: tuple[float, ...] = tuple(self._by_ratio)
        self.fallback = fallback
        #: every network ``policy="adaptive"`` may use, heaviest first: this model's ratios, then the fallback's
        self.ladder: tuple[Denoiser, ...] = (*self._by_ratio.values(), *(fallback.ladder if fallback else ()))
        #: the context a stream gives this ladder: the deepest network's; a step that reads fewer frames
        #: gets the middle of it (:func:`~bluesky_tomogan.frames.centred`)
        self.depth = max(d.depth for d in self.ladder)
        self.ratio = self.ratios[0] if ratio is None else ratio
        self._costs: dict[tuple[int, int], list[float]] = {}  # frame shape -> seconds per frame of each step

    @property
    def ratio(self) -> float:
        """The ratio :meth:`denoise` and :meth:`denoise_context` use."""
        return self._ratio

    @ratio.setter
    def ratio(self, value: float) -> None:
        self._ratio = self._key(value)

    def _key(self, ratio: float) -> float:
        if float(ratio) not in self._by_ratio:
            raise RatioError(f"no pruning ratio {float(ratio):g} loaded; loaded: "
                             f"{', '.join(f'{r:g}' for r in self.ratios)}")
        return float(ratio)

    def at(self, ratio: float) -> Denoiser:
        """The denoiser of ``ratio``."""
        return self._by_ratio[self._key(ratio)]

    def warm_up(self, shape: tuple[int, int], *, again: bool = False) -> list[float]:
        """Run every network of the :attr:`ladder` on a frame of ``shape``, so that no switch during a
        scan waits for a runtime's first call at a new shape (OpenVINO and TensorRT compile or
        allocate there); returns each one's seconds per frame, timed on a second call.

        The result is kept per shape (``again=True`` measures anew): the callback warms the
        ladder at a run's first frame unless this was done before, and that first warm-up
        (about 1 s for seven networks at 512x512 on two cores) is time in which frames queue
        up. Warm the ladder at the detector's frame shape when loading it
        (``load_ratios(..., warm_up=(H, W))``) and no scan waits for it.
        """
        key = (int(shape[0]), int(shape[1]))
        if key in self._costs and not again:
            return list(self._costs[key])
        # frames with noise, as a scan's: a frame of one value everywhere comes back as it is, without the network
        # (Denoiser: nothing to denoise), so a context of ones neither compiled nor timed anything (since b17f69b
        # the ladder's costs read 3-4 ms for every network at 512x512, and each lighter one's first real call,
        # with its compile, fell in the scan)
        context = np.random.default_rng(0).standard_normal((self.depth, *key), dtype=np.float32)
        context *= np.float32(20.0)
        context += np.float32(500.0)
        seconds = []
        for d in self.ladder:
            own = centred(context, d.depth)
            d.denoise_context(own)
            began = time.perf_counter()
            d.denoise_context(own)
            seconds.append(time.perf_counter() - began)
        self._costs[key] = seconds
        return list(seconds)

    # Denoiser's interface, at the current ratio
    @property
    def card(self) -> ModelCard:
        return self.at(self.ratio).card

    @property
    def backend(self) -> str:
        return self.at(self.ratio).backend

    @property
    def precision(self) -> str:
        return self.at(self.ratio).precision

    @property
    def model_name(self) -> str:
        return self.at(self.ratios[0]).model_name

    @property
    def model_sha256(self) -> str:
        return self.at(self.ratio).model_sha256

    def denoise(self, frames: np.ndarray, *, out_dtype: OutDType = "float32", only: slice | None = None,
                angles: ArrayLike | None = None, groups: ArrayLike | None = None) -> np.ndarray:
        """:meth:`Denoiser.denoise` at the current :attr:`ratio` (a file denoised a chunk at a time, its frames'
        angles and groups: :func:`~bluesky_tomogan.frame_files.denoise_file`)."""
        return self.at(self.ratio).denoise(frames, out_dtype=out_dtype, only=only, angles=angles, groups=groups)

    def denoise_context(self, context: np.ndarray, *, out_dtype: OutDType = "float32",
                        frame_keys: Sequence[Hashable] | None = None) -> np.ndarray:
        """:meth:`Denoiser.denoise_context` at the current :attr:`ratio`; a ``(depth, H, W)`` context
        of this ladder's :attr:`depth`, whose middle frames (and their ``frame_keys``) a network that
        reads fewer gets."""
        den = self.at(self.ratio)
        own = centred(np.asarray(context), den.depth)
        if frame_keys is None or not takes_frame_keys(den):  # a step of the user's own takes the context alone
            return den.denoise_context(own, out_dtype=out_dtype)
        return den.denoise_context(own, out_dtype=out_dtype, frame_keys=centred(list(frame_keys), den.depth))

    def provenance(self) -> dict[str, Any]:
        """The heaviest ratio's provenance, plus every loaded ratio and what runs it."""
        prov = self.at(self.ratios[0]).provenance()
        prov["pruning_ratios"] = ",".join(f"{r:g}" for r in self.ratios)
        prov["pruning_ratio_runtimes"] = ",".join(
            f"{r:g}:{d.backend}/{d.precision}" for r, d in self._by_ratio.items())
        prov["pruning_ratio_sha256"] = ",".join(f"{r:g}:{d.model_sha256}" for r, d in self._by_ratio.items())
        if self.fallback is not None:  # the lighter networks of the adaptive ladder, in its order
            prov["fallback_ladder"] = ",".join(f"{d.model_name}:{d.backend}/{d.precision}"
                                               for d in self.fallback.ladder)
            prov["fallback_sha256"] = ",".join(f"{d.model_name}:{d.model_sha256}" for d in self.fallback.ladder)
        return prov

    def __repr__(self) -> str:
        runs = ", ".join(f"{r:g}%: {d.backend}/{d.precision}" for r, d in self._by_ratio.items())
        then = f", then {self.fallback!r}" if self.fallback is not None else ""
        return f"<RatioDenoisers {self.model_name} ({runs}), at {self.ratio:g}%{then}>"


def load_ratios(
    model: str | os.PathLike[str],
    backend: str = "auto",
    precision: str = "auto",
    *,
    ratios: list[float] | None = None,
    threads: int | None = None,
    tile: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    fallback: str | os.PathLike[str] | None = None,
    fallback_ratios: list[float] | None = None,
    warm_up: tuple[int, int] | None = None,
) -> RatioDenoisers:
    """Load every pruning ratio of an All-in-One model (or those in ``ratios``), each ready to run.

    Parameters
    ----------
    model : str or path
        An All-in-One model: a shipped name (``tomogan-projection-aio``), card or directory.
    backend, precision : str
        As for :func:`~bluesky_tomogan.load_denoiser`, for each ratio on its own: with
        ``auto``, a ratio whose file is missing for the fastest backend falls back to the
        next, and the precision is the fastest within the tolerance that ratio's card measured.
    ratios : list of float, optional
        A subset of the model's ratios (percent).
    threads, tile, overlap
        As for :func:`~bluesky_tomogan.load_denoiser`.
    fallback : str or path, optional
        A lighter model of the same domain (such as
        ``tomogan-projection-s2d-aio``, which never runs at full resolution) that
        ``policy="adaptive"`` steps down to after this model's lightest ratio: every ratio
        of an All-in-One model, or a plain model as one step.
    fallback_ratios : list of float, optional
        Which of an All-in-One fallback's ratios (default: all).
    warm_up : tuple of int, optional
        The detector's frame shape ``(H, W)``: run and time every network at it now
        (:meth:`RatioDenoisers.warm_up`), so that a scan's first frame does not wait for it.

    Raises
    ------
    RatioError
        The model has no ratios, or not one of ``ratios``; the fallback is of another domain.

    Examples
    --------
    >>> ladder = load_ratios("tomogan-projection-aio", fallback="tomogan-projection-s2d-aio",
    ...                      fallback_ratios=[0, 50])  # doctest: +SKIP
    >>> RE.subscribe(TomoGANCallback(ladder, policy="adaptive"))  # doctest: +SKIP
    """
    card = load_card(model)
    if not card.ratios:
        raise RatioError(f"model {card.name!r} has no pruning ratios (it was not trained All-in-One, "
                         "bluesky-tomogan train --ratios); load it with load_denoiser")
    wanted = sorted(float(k) for k in card.ratios) if ratios is None else sorted({float(r) for r in ratios})
    lighter = None
    if fallback is not None:
        fallback_card = load_card(fallback)
        if fallback_card.domain != card.domain:  # checked before anything is compiled
            raise RatioError(f"fallback {fallback_card.name!r} denoises {fallback_card.domain}s, "
                             f"{card.name!r} {card.domain}s")
        if fallback_card.ratios:
            lighter = load_ratios(fallback, backend, precision, ratios=fallback_ratios, threads=threads,
                                  tile=tile, overlap=overlap)
        else:  # a plain model: one step
            lighter = RatioDenoisers({0.0: load_denoiser(fallback, backend, precision, threads=threads, tile=tile,
                                                         overlap=overlap)})
    loaded = {r: load_denoiser(model, backend, precision, ratio=r, threads=threads, tile=tile, overlap=overlap)
              for r in wanted}
    out = RatioDenoisers(loaded, fallback=lighter)
    if warm_up is not None:
        costs = out.warm_up(warm_up)
        log.info("warmed up at %s: %s ms per frame", warm_up, ", ".join(f"{1000 * c:.1f}" for c in costs))
    log.info("loaded %r", out)
    return out


class RatioController:
    """Which network the next frame gets, from how many frames wait (the callback's ``policy="adaptive"``).

    It walks :attr:`RatioDenoisers.ladder` (the model's ratios, heaviest first, then a
    fallback's). When the queue holds ``high_water`` frames or more it goes lighter: to
    the heaviest step known to keep up (below), or, if none is known to, to the lightest;
    one step lighter while the frame rate or the costs are not known yet. A step heavier
    after ``calm`` consecutive frames found at most ``low_water`` waiting, and only if the
    heavier step keeps up. A step keeps up if its network, as measured on this scan
    (:meth:`record`; before its first frame, ``costs`` from the warm-up), denoises a
    frame, together with the rest of the worker's work per frame (reading, QC, writing:
    :meth:`record_cycle`), in less than ``headroom`` of the time between frames: a step
    known to fall behind is neither taken nor retried until the frames come slower, so
    the queue does not saw up and down and does not fill while steps that cannot help
    are tried one by one. After a switch the next one waits ``settle`` frames, so a
    step shows its effect before the next is taken.

    Parameters
    ----------
    denoisers : RatioDenoisers
        The loaded ratios (and fallback).
    high_water, low_water : int
        Queue lengths that move to a lighter / back to a heavier step.
    calm : int
        Frames in a row at or below ``low_water`` before a heavier step.
    settle : int
        Frames after a switch before another.
    headroom : float
        Fraction of the frame interval a step may take.
    costs : sequence of float, optional
        Seconds per frame of each step of the ladder, as :meth:`RatioDenoisers.warm_up`
        measured them (replaced by what the scan measures).
    """

    def __init__(self, denoisers: RatioDenoisers, high_water: int, low_water: int, calm: int = 4,
                 settle: int = 2, headroom: float = 0.9, costs: Sequence[float] | None = None) -> None:
        if not 0 <= low_water < high_water:
            raise ValueError(f"need 0 <= low_water < high_water, got {low_water} and {high_water}")
        self.ladder = denoisers.ladder
        self.high_water, self.low_water, self.calm, self.settle = high_water, low_water, calm, settle
        self.headroom = headroom
        self.step = 0  # index into the ladder: 0 is the full network
        self.switches = 0
        # step -> typical network seconds per frame on this scan (the warm-up's until it has run)
        self.seconds: dict[int, float] = dict(enumerate(costs)) if costs is not None else {}
        self._measured: set[int] = set()
        self.overhead = 0.0  # typical seconds per frame of the worker's other work
        self._network = 0.0  # network seconds within the current worker cycle
        self._quiet = 0
        self._since_switch = settle

    @property
    def current(self) -> Denoiser:
        """The network of the current step."""
        return self.ladder[self.step]

    def record(self, seconds: float) -> None:
        """Remember that the current step's network took ``seconds`` for a frame (a moving average)."""
        old = self.seconds.get(self.step) if self.step in self._measured else None
        self.seconds[self.step] = seconds if old is None else 0.8 * old + 0.2 * seconds
        self._measured.add(self.step)
        self._network += seconds

    def record_cycle(self, seconds: float) -> None:
        """Remember that the worker spent ``seconds`` on one incoming frame, the network
        included (a moving average of what is not the network)."""
        if self._network > 0:  # a cycle that denoised: the rest is the per-frame overhead
            rest = max(seconds - self._network, 0.0)
            self.overhead = rest if self.overhead == 0.0 else 0.8 * self.overhead + 0.2 * rest
        self._network = 0.0

    def next_denoiser(self, waiting: int, interval: float | None = None) -> Denoiser:
        """The network for the next frame, with ``waiting`` frames queued behind it and frames
        arriving every ``interval`` seconds (``None``: not known yet)."""
        self._since_switch += 1
        self._quiet = self._quiet + 1 if waiting <= self.low_water else 0
        new = self.step
        if self._since_switch >= self.settle:
            if waiting >= self.high_water:
                new = self._lighter(interval)
            elif self._quiet >= self.calm and self.step > 0 and self._keeps_up(self.step - 1, interval):
                new = self.step - 1
        if new != self.step:
            log.info("TomoGAN network %s -> %s (%d frames waiting)", network_name(self.current),
                     network_name(self.ladder[new]), waiting)
            self.step, self._since_switch, self._quiet = new, 0, 0
            self.switches += 1
        return self.current

    def _lighter(self, interval: float | None) -> int:
        """The step to take when the queue is high: the heaviest lighter step known to keep up,
        else the lightest; one step if that cannot be known yet."""
        lighter = range(self.step + 1, len(self.ladder))
        if not lighter:
            return self.step
        if interval is None or any(j not in self.seconds for j in lighter):
            return self.step + 1
        return next((j for j in lighter if self._keeps_up(j, interval)), lighter[-1])

    def _keeps_up(self, step: int, interval: float | None) -> bool:
        cost = self.seconds.get(step)
        return cost is None or interval is None or cost + self.overhead < self.headroom * interval


def network_name(den: Any) -> str:
    """The name of the network ``den`` runs (a pruning ratio's ends in ``-r<ratio>``); a denoiser
    of the user's own (duck-typed, without ``model_name``) is named by its class."""
    return str(getattr(den, "model_name", type(den).__name__))
