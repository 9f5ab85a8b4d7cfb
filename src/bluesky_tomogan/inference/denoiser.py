"""The :class:`Denoiser`: frames in, denoised frames out, on any backend.

Everything that is the same for every runtime lives here, once: input checks,
3-frame context, per-frame normalisation, padding and tiling, batching, and
mapping the result back to the source intensity scale. Backends only run
normalised float32 batches (see :mod:`.backends.base`).
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from ..circle import outside_to_fill
from ..context import DEFAULT_NOISE_RATIO, context_gains, gate_context
from ..cpu import cpu_name
from ..despike import remove_isolated_spikes
from ..errors import InputShapeError, InputValueError
from ..frames import cast_frames, context_indices, has_channel_axis, looks_like_colour
from ..masked import fill_masked, missing_pixels
from ..modelcard import ModelCard
from ..normalise import no_spread_scale, normalise, robust_range
from . import self_ensemble as ensemble
from .backends.base import Session
from .tiling import TileGrid, pad_to

__all__ = ["CONDITIONED_BYTES", "CONDITIONED_FRAMES", "DEFAULT_OVERLAP", "Denoiser", "check_frames",
           "takes_frame_keys"]

#: Minimum overlap of neighbouring tiles, in pixels (:class:`Denoiser`, :func:`~bluesky_tomogan.load_denoiser`).
DEFAULT_OVERLAP = 64

log = logging.getLogger(__name__)

OutDType = Literal["float32", "source"]

#: Despiked frames kept for the contexts that follow (``denoise_context(..., frame_keys=...)`` and
#: :meth:`Denoiser.denoise`), shared by every :class:`Denoiser` of the process (the steps of an adaptive ladder
#: despike alike, and a switch finds the frames despiked), the oldest going first: at most this many frames
#: (a 5-frame context needs the 4 frames before it; 16 leave room for a second stream, darks or flats) ...
CONDITIONED_FRAMES = 16
#: ... and at most this many bytes: 16 frames of 1024x1024 (64 MB), 8 of 2048x2048.
CONDITIONED_BYTES = 128 * 2**20

# Largest side a dynamic-shape backend runs in one piece; beyond it, tiles keep
# activation memory bounded (a 4096^2 frame would need ~10 GB of activations).
MAX_WHOLE_FRAME = 2048


def whole_or_fewest_tiles(length: int, multiple: int, overlap: int, cap: int | None = None) -> int:
    """The tile side for one axis of a dynamic-shape backend: the whole axis up to ``cap``, beyond it
    the smallest side (a multiple of ``multiple``, at most ``cap``) that covers the axis with the
    fewest tiles overlapping by ``overlap``.

    Tiles of the full ``cap`` would cost nearly twice the axis for an axis just above it: a
    2560x2160 sCMOS frame took four 2048x2048 tiles, 3.0x its own pixels, and 7.0 s where a
    2048x2048 frame took 1.9 s (``tomogan-projection``, OpenVINO int8, 2 cores of an AMD
    EPYC); two tiles of 1112 and 1312 pixels a side cost 1.06x its pixels, and 2.2 s.
    """
    cap = MAX_WHOLE_FRAME if cap is None else cap
    whole = -(-length // multiple) * multiple
    if whole <= cap:
        return whole
    overlap = min(overlap, cap // 2)  # as the tiling caps it: more than half a tile lets an edge through
    n = -(-(length - overlap) // (cap - overlap))  # the fewest tiles of side cap that cover the axis
    side = -(-(length + (n - 1) * overlap) // n)  # the smallest side that n tiles cover it with
    return min(-(-side // multiple) * multiple, cap)


def tiles_per_call(max_batch: int, tile: tuple[int, int], n_tiles: int, equal: bool = True) -> int:
    """How many of a frame's ``n_tiles`` tiles of shape ``tile`` one backend call takes.

    At most the backend's ``max_batch``, and no more pixels than the largest whole frame
    (:data:`MAX_WHOLE_FRAME` squared), so that tiling keeps the activation memory of the
    largest whole frame: nine 1408x1408 tiles of a 4096x4096 frame in one call took 5.9 GB of
    memory (OpenVINO int8), the tiles of a 6000x6000 frame 17 GB. With ``equal`` (for a
    dynamic-shape backend), a divisor of ``n_tiles``, so that every call of the frame has one
    input shape: a backend that compiles per shape (OpenVINO) then holds one compiled model
    per frame size, not two. A fixed-shape backend (TensorRT: one engine for batches 1 to
    its ``max_batch``) fills its batches instead.
    """
    cap = max(1, min(max_batch, MAX_WHOLE_FRAME**2 // (tile[0] * tile[1]), n_tiles))
    return next(b for b in range(cap, 0, -1) if n_tiles % b == 0) if equal else cap


class Denoiser:
    """Denoise tomography frames with a trained TomoGAN model.

    Build one with :func:`bluesky_tomogan.load_denoiser`.

    Parameters
    ----------
    session : Session
        Backend adapter running the network.
    card : ModelCard
        The model card (architecture, output form, provenance).
    model_sha256 : str
        sha256 of the model file the session runs (for provenance).
    tile : int, optional
        Tile edge for dynamic-shape backends (default: whole frame up to
        2048 px). Fixed-shape backends always use their own shape.
    overlap : int
        Minimum overlap between tiles, in pixels (at most half the tile: beyond that three
        tiles cover a pixel, and the blend, made for two, lets a tile's edge through).
        The default, 64, keeps a tiled frame within 0.1 % of the whole-frame result
        (0.05 % at 128-pixel tiles for the shipped projection model; 32 pixels left 1 %);
        frames of 512 or 1024 pixels need no more 256-pixel tiles for it than for 32.
    self_ensemble : {1, 2, 4, 8}
        How many mirrored and turned copies of each frame the network runs on, its outputs turned
        back and averaged (:mod:`.self_ensemble`): that many times the compute, for less of the
        texture a network paints in (most on slices and at low doses; docs/models.md,
        "Self-ensemble"). Default 1: the network once.

    Notes
    -----
    The exported networks return a correction to the centre frame; the
    Denoiser adds the centre frame in float32 (model card ``"output":
    "correction"``), so reduced precision never rounds the signal itself. It
    adds the frame as the model saw it (``Session.input_as_seen``): the
    correction removes the input's rounding along with its noise.
    Output is float32 in the *source* intensity scale: each frame is normalised
    by its own robust range and the network's output is mapped back through the
    same affine map, so a uint16 detector frame of counts comes back as counts.
    ``out_dtype="source"`` rounds and clips back to the input dtype.

    A model whose card has a ``context_gate`` (trained with ``--context-dropout``) is given
    only the neighbours that show the same thing as the frame it denoises
    (:func:`bluesky_tomogan.context.gate_context`): a stack of different samples, an
    interleaved scan or a frame after a jump is denoised without the frames that do not
    belong to it, instead of with their structure painted in; and, since session 73, neighbours
    whose change from the frame stands out of their photon noise (high doses, coarse steps:
    :func:`bluesky_tomogan.context.change_to_noise`). :attr:`context_gate` holds the distance's
    threshold (``inf``: every neighbour is used), :attr:`context_noise_ratio` the largest change
    to noise (``inf``: by the distance alone), and :attr:`contexts_gated` counts the frames
    denoised with neighbours withheld.

    A projection model's neighbours whose mean intensity stands more than 1 % from the frame's
    (the beam brighter or dimmer for them: a top-up, a flickering monochromator) are brought to
    the frame's intensity first (:func:`bluesky_tomogan.context.context_gains`), since the network
    reads theirs as evidence of its own; :attr:`contexts_rescaled` counts such frames.

    A slice model is given a slice whose reconstruction circle ends in a step from its rim (a
    sample wider than the field of view) with the slice's nearest values outside the circle
    instead of the stored value, which its output keeps there (:mod:`bluesky_tomogan.circle`;
    held-out simulated slices of such samples: SSIM 0.8463 -> 0.8608, docs/models.md);
    :attr:`fill_outside_circle` switches it (``True`` for slice models), and
    :attr:`slices_rim_filled` counts such slices.
    """

    def __init__(self, session: Session, card: ModelCard, model_sha256: str = "", tile: int | None = None,
                 overlap: int = DEFAULT_OVERLAP, self_ensemble: int = 1) -> None:
        self.session = session
        self.card = card
        self._model_sha256 = model_sha256
        self.depth = card.in_channels
        self.size_multiple = 8 * int(card.architecture.get("input_downscale", 1))
        if tile is not None and (tile <= 0 or tile % self.size_multiple):
            raise InputShapeError(f"tile must be a positive multiple of {self.size_multiple}, got {tile}")
        if overlap < 0:
            raise InputShapeError(f"overlap must be >= 0, got {overlap}")
        self.tile = tile
        self.overlap = overlap
        self._self_ensemble = ensemble.check_size(self_ensemble)
        # Exported models compute the correction; the centre frame is added here in
        # float32, so int8/bf16/fp16 rounding never touches the pass-through signal.
        self.residual_on_host = card.output == "correction"
        # a network that does not remove zingers itself gets them taken out of its input (its card says so)
        self.despike_sigmas: float | None = card.source.get("input_despike", {}).get("sigmas")
        # A network trained to denoise without its neighbours (train --context-dropout) is not
        # given neighbours that are not views of the same thing (bluesky_tomogan.context): the
        # largest distance its card allows; inf (keep every neighbour) for the others.
        gate = card.source.get("context_gate", {})
        self.context_gate: float = float(gate.get("threshold", np.inf))
        # and, where it has a gate, no neighbour that changed by more than the photon noise hides (a card may set
        # its own limit; cards written before session 73 get the default)
        self.context_noise_ratio: float = float(gate.get("noise_ratio", DEFAULT_NOISE_RATIO)) if gate else np.inf
        self.contexts_gated = 0  # frames denoised with some neighbours withheld
        self.contexts_rescaled = 0  # frames denoised with some neighbours brought to their intensity
        # a slice whose rim steps to the value outside its reconstruction circle (bluesky_tomogan.circle)
        self.fill_outside_circle: bool = card.domain == "slice"
        self.slices_rim_filled = 0  # slices denoised with the outside of their circle filled
        self._lock = threading.Lock()  # runtimes' requests are not re-entrant

    # -- provenance -----------------------------------------------------------------------

    @property
    def backend(self) -> str:
        """Runtime actually used (``openvino``, ``onnxruntime``, ``litert``, ``edgetpu``...)."""
        return self.session.backend

    @property
    def precision(self) -> str:
        """Arithmetic precision of the network (``fp32``, ``bf16``, ``fp16``, ``int8``)."""
        return self.session.precision

    @property
    def model_name(self) -> str:
        return self.card.name

    @property
    def ratio(self) -> float:
        """Pruning ratio of the network (percent of the full network's MACs removed; 0 = unpruned)."""
        return self.card.ratio

    @property
    def self_ensemble(self) -> int:
        """How many turned copies of each frame the network runs on (1: the network once)."""
        return self._self_ensemble

    @property
    def model_sha256(self) -> str:
        """sha256 of the model file this denoiser runs (from the verified model card)."""
        return self._model_sha256

    def provenance(self) -> dict[str, Any]:
        """Flat description for a Bluesky descriptor's configuration."""
        from .. import __version__

        runtime = _RUNTIME_DISTRIBUTIONS.get(self.backend, self.backend)
        # int8 and bf16 numbers differ slightly between CPUs (AMX tiles or AVX-512 kernels) and,
        # in OpenVINO int8, with the precision of the graph's float parts: both are provenance
        extra = {"float_precision": self.session.float_precision} if hasattr(self.session, "float_precision") else {}
        return {
            "model": self.model_name,
            "model_sha256": self.model_sha256,
            "model_domain": self.card.domain,
            "pruning_ratio": self.ratio,
            "backend": self.backend,
            "precision": self.precision,
            "tile": list(self.session.fixed_shape or (self.tile or 0, self.tile or 0)),
            "overlap": self.overlap,
            "self_ensemble": self.self_ensemble,
            "bluesky_tomogan": __version__,
            "runtime": runtime,
            "runtime_version": _distribution_version(runtime),
            "host_cpu": cpu_name(),
        } | extra

    def __repr__(self) -> str:
        ensemble = f", self-ensemble of {self.self_ensemble}" if self.self_ensemble > 1 else ""
        return f"<Denoiser {self.model_name} on {self.backend}/{self.precision}{ensemble}>"

    # -- public API -----------------------------------------------------------------------

    def denoise(self, frames: np.ndarray, *, out_dtype: OutDType = "float32", only: slice | None = None,
                angles: ArrayLike | None = None, groups: ArrayLike | None = None) -> np.ndarray:
        """Denoise one frame ``(H, W)`` or a stack of consecutive frames ``(N, H, W)``.

        In a stack, each frame's context is its neighbours (adjacent angles or
        slices); the first and last frames use mirrored neighbours. A single
        frame is its own context. Neighbours that do not show the same thing are
        withheld the same way where the card asks for it (see the class notes),
        and so are, given the frames' angles, neighbours more than
        :data:`~bluesky_tomogan.frames.NEIGHBOUR_DEGREES` away in angle (and a mirror stands in
        only near the view it stands for: :func:`~bluesky_tomogan.frames.mirror_stands_in`), and,
        given their groups, neighbours of another group (the rule of the live callback).

        Parameters
        ----------
        frames : numpy.ndarray
            uint8/uint16/int/float frames, finite, at least 1x1. One grey frame with a trailing
            channel, ``(H, W, 1)`` (as some cameras and image readers give it), is denoised as
            ``(H, W)`` and returned as ``(H, W, 1)``.
        out_dtype : {"float32", "source"}
            float32 in the source scale, or cast back to the input dtype.
        only : slice, optional
            Of a stack, denoise only ``frames[only]``; the frames around them still serve as their
            context (a long scan denoised a chunk at a time, each chunk read with its neighbours).
        angles : array_like, optional
            Each frame's rotation angle in degrees (NaN: not known), ``N`` of them: projections of a
            golden-angle, interlaced or sparse scan stored in the order taken.
        groups : array_like, optional
            Each frame's group, ``N`` of them (an NXtomo ``image_key``: darks, flats and projections
            in one stack): a neighbour of another group never serves as context.

        Returns
        -------
        numpy.ndarray
            Same shape as ``frames`` (as ``frames[only]`` with ``only``).

        Raises
        ------
        InputShapeError
            Not 2-D or 3-D, empty, or one colour image ``(H, W, 3)`` / ``(H, W, 4)``.
        InputValueError
            Non-numeric dtype, or NaN/inf values; ``angles`` or ``groups`` not one per frame.
        """
        if has_channel_axis(np.shape(frames)):
            return self.denoise(np.asarray(frames)[..., 0], out_dtype=out_dtype)[..., None]
        arr = check_frames(frames)
        stack = arr[None] if arr.ndim == 2 else arr
        group = np.zeros(len(stack), np.int32) if groups is None else _per_frame(groups, len(stack), "groups")
        angle = None if angles is None else _per_frame(angles, len(stack), "angles").astype(np.float64)
        wanted = range(len(stack))[only] if only is not None and arr.ndim == 3 else range(len(stack))
        out = np.empty((len(wanted), *stack.shape[1:]), np.float32)
        call = object()  # names this call's frames, so each is despiked once however many contexts hold it

        def prepare(i: int) -> _Prepared:
            idx = context_indices(group, i, self.depth, angle)
            return self._prepare(stack[idx], stack[i], [(call, int(j)) for j in idx])

        if len(wanted) == 1:
            out[0] = self._infer(prepare(wanted[0]))
        elif len(wanted):
            # Normalise and tile the next frame while this one runs (runtimes release the GIL).
            with ThreadPoolExecutor(1, thread_name_prefix="tomogan-prep") as pool:
                pending = pool.submit(prepare, wanted[0])
                for k in range(len(wanted)):
                    prep = pending.result()
                    if k + 1 < len(wanted):
                        pending = pool.submit(prepare, wanted[k + 1])
                    out[k] = self._infer(prep)
        result = out[0] if arr.ndim == 2 else out
        return self._cast(result, arr.dtype) if out_dtype == "source" else result

    def denoise_context(self, context: np.ndarray, *, out_dtype: OutDType = "float32",
                        frame_keys: Sequence[Hashable] | None = None) -> np.ndarray:
        """Denoise the centre frame of an explicit context ``(depth, H, W)``.

        ``depth`` is the network's (:attr:`depth`: 3 for the paper's TomoGAN, 5 for the
        shipped projection models). This is what a live stream uses: the caller keeps the
        ``depth // 2`` frames on each side of the current one and asks for the current one.

        ``frame_keys``, one per frame of the context, name the frames (the live callback:
        its run and each frame's place in it) for a model whose card asks for its input
        despiked (:mod:`bluesky_tomogan.despike`, every shipped projection model): a frame
        whose key was in one of the last calls is not despiked again, its despiked copy is
        kept (the newest, :data:`CONDITIONED_FRAMES` and :data:`CONDITIONED_BYTES` at most, for
        every denoiser of the process). A key must name one frame's pixels, in this process: make it of an object
        made for the stream (the callback: ``(object made for the run, frame number)``); the
        same key with other pixels gets the first ones' copy. Without keys every frame is
        despiked in every context that holds it.
        """
        arr = check_frames(context)
        if arr.ndim != 3 or arr.shape[0] != self.depth:
            raise InputShapeError(f"context must be ({self.depth}, H, W), got shape {arr.shape}")
        if frame_keys is not None and len(frame_keys) != len(arr):
            raise InputValueError(f"frame_keys must be one per frame of the context ({len(arr)}), "
                                  f"got {len(frame_keys)}")
        result = self._infer(self._prepare(arr, arr[self.depth // 2], frame_keys))
        return self._cast(result, arr.dtype) if out_dtype == "source" else result

    # -- internals ------------------------------------------------------------------------

    @staticmethod
    def _cast(result: np.ndarray, dtype: np.dtype) -> np.ndarray:
        return cast_frames(result, dtype)

    def _tile_shape(self, h: int, w: int) -> tuple[int, int]:
        if self.session.fixed_shape is not None:
            return self.session.fixed_shape
        m = self.size_multiple
        if self.tile is not None:
            return self.tile, self.tile
        return whole_or_fewest_tiles(h, m, self.overlap), whole_or_fewest_tiles(w, m, self.overlap)

    def _prepare(self, context: np.ndarray, centre: np.ndarray,
                 keys: Sequence[Hashable] | None = None) -> _Prepared:
        """Normalise and tile one context (CPU work that can overlap another frame's inference)."""
        mask = missing_pixels(context)
        outside = outside_to_fill(context, self.depth // 2) if self.fill_outside_circle else None
        if outside is not None:  # a sample wider than the field of view: see bluesky_tomogan.circle
            mask = outside if mask is None else mask | outside
            self.slices_rim_filled += 1
            log.log(logging.INFO if self.slices_rim_filled == 1 else logging.DEBUG,
                    "%s: the slice steps at the rim of its reconstruction circle (as a sample wider than the "
                    "field of view makes it); the network is given the slice's nearest values outside the circle, "
                    "the output keeps the stored ones (bluesky_tomogan.circle; %d slice(s) so far)", self.card.name,
                    self.slices_rim_filled)
        raw_masked = None
        if mask is not None:  # detector gaps, flagged pixels, NaN, outside the circle: see bluesky_tomogan.masked
            centre_mask = mask[self.depth // 2]
            raw_masked = (centre_mask, centre[centre_mask].astype(np.float32)) if centre_mask.any() else None
        if self.despike_sigmas is not None:
            # spikes out before the frame's range is taken (the rule is the same in any units): from 0.5 % of
            # the pixels on, hot pixels or zingers set the top percentile, the frame's real range is squashed
            # to a sliver of the network's input and int8 loses it (held-out projections at 1000 photons with
            # 0.6 % hot pixels: SSIM 0.98 -> 0.70 in OpenVINO int8, 0.95 in fp32; benchmarks/hot_pixel_range.py)
            context = self._conditioned(context, mask, keys)
            centre = context[self.depth // 2]
        elif mask is not None:
            context = fill_masked(context, mask)
            centre = context[self.depth // 2]
        offset, scale = robust_range(centre)
        if self.depth > 1 and self.context_gate < np.inf:
            context, kept = gate_context(context, self.context_gate, (offset, scale), self.context_noise_ratio)
            if kept != (self.depth // 2, self.depth // 2):
                self.contexts_gated += 1
                log.log(logging.INFO if self.contexts_gated == 1 else logging.DEBUG,
                        "%s: %d of %d neighbours are not views of the same thing (bluesky_tomogan.context); the "
                        "frame is denoised without them (%d frame(s) so far)", self.card.name,
                        self.depth - 1 - sum(kept), self.depth - 1, self.contexts_gated)
        # only a frame without spread can be one value everywhere: the full check only then
        if scale == no_spread_scale(offset) and centre.min() == centre.max():
            # a closed shutter, a saturated or blank detector: nothing to denoise, and the
            # network would add its own faint pattern to it
            flat = np.broadcast_to(np.float32(0), centre.shape)
            return _Prepared(None, np.empty((0,)), flat, float(centre.flat[0]), 1.0, raw_masked)
        gains = context_gains(context) if self.card.domain == "projection" else None
        if self.despike_sigmas is None:
            x = normalise(context, offset, scale)
        else:  # a float32 copy of our own already (despiked): normalised in place
            x = context
            x -= np.float32(offset)
            x /= np.float32(scale)
        if gains is not None:  # neighbours the beam lit brighter or dimmer, on the centre's intensity
            self.contexts_rescaled += 1
            log.log(logging.INFO if self.contexts_rescaled == 1 else logging.DEBUG,
                    "%s: neighbours brighter or dimmer than the frame by up to %.1f %% (the beam's intensity "
                    "changed) are brought to its intensity (bluesky_tomogan.context; %d frame(s) so far)",
                    self.card.name, 100 * float(np.max(np.abs(1 / gains - 1))), self.contexts_rescaled)
            for frame, gain in zip(x, gains, strict=True):
                if gain != 1.0:  # (c * g - o) / s = g * (c - o) / s + (g - 1) * o / s
                    frame *= np.float32(gain)
                    frame += np.float32((gain - 1) * offset / scale)
        grid, tiles = self._tiles(x)
        centre = x[self.depth // 2]
        if self.residual_on_host:
            centre = self.session.input_as_seen(centre)
        # a self-ensemble tiles each turned copy of the whole context when it runs it (one copy's tiles at a time)
        return _Prepared(grid, tiles, centre, offset, scale, raw_masked, x if self.self_ensemble > 1 else None)

    def _conditioned(self, context: np.ndarray, mask: np.ndarray | None,
                     keys: Sequence[Hashable] | None) -> np.ndarray:
        """A float32 copy of ``context`` with each frame's masked pixels filled and its isolated spikes removed;
        a frame whose key was despiked in one of the last calls is taken from then (each frame of a stream is in
        ``depth`` contexts: the light projection model at 1024x1024, OpenVINO int8, Intel Xeon with AMX, took 141
        ms per frame with every context despiked anew and 120 ms so, ``benchmarks/stream_cost.py``)."""
        sigmas = self.despike_sigmas
        assert sigmas is not None
        out = np.empty(context.shape, np.float32)
        for j, key in enumerate(keys if keys is not None else [None] * len(context)):
            done = _despiked.get((sigmas, key)) if key is not None else None
            if done is None:
                own = context[j : j + 1]
                done = (fill_masked(own, mask[j : j + 1]) if mask is not None else own.astype(np.float32))[0]
                remove_isolated_spikes(done[None], sigmas)
                if key is not None:
                    _despiked.put((sigmas, key), done)
            out[j] = done
        return out

    def _tiles(self, x: np.ndarray) -> tuple[TileGrid, np.ndarray]:
        """The normalised context ``x`` padded to the tile grid, and split into its tiles."""
        h, w = x.shape[-2:]
        th, tw = self._tile_shape(h, w)
        padded = pad_to(x, max(h, th), max(w, tw))
        overlap = min(self.overlap, th // 2, tw // 2)
        grid = TileGrid(padded.shape[-2], padded.shape[-1], (th, tw), overlap, margin=overlap // 4)
        return grid, grid.split(padded)

    def _infer(self, prep: _Prepared) -> np.ndarray:
        """Run the tiles through the backend, blend, add the centre frame, map back."""
        if prep.grid is None:  # a flat frame: its own value everywhere
            out = np.full(prep.centre.shape, np.float32(prep.offset))
        else:
            out = self._run_tiles(prep, prep.grid)
        if prep.raw_masked is not None:  # the raw value where the detector has no data: the same mask
            where, values = prep.raw_masked
            out[where] = values
        return out

    def _run_tiles(self, prep: _Prepared, grid: TileGrid) -> np.ndarray:
        h, w = prep.centre.shape
        if self.self_ensemble == 1:
            merged = self._run_grid(grid, prep.tiles)[0, :h, :w]
        else:
            # each turned and mirrored copy of the frame is padded and tiled as the frame itself
            # would be, so every member is this denoiser's output for that copy, turned back
            assert prep.context is not None  # _prepare keeps it for a self-ensemble
            merged = np.zeros((h, w), np.float32)
            for turns, mirrored in ensemble.TRANSFORMS[: self.self_ensemble]:
                g, tiles = (grid, prep.tiles) if (turns, mirrored) == (0, False) else \
                    self._tiles(ensemble.apply(prep.context, turns, mirrored))
                hh, ww = (w, h) if turns % 2 else (h, w)
                merged += ensemble.undo(self._run_grid(g, tiles)[0, :hh, :ww], turns, mirrored)
            merged *= np.float32(1 / self.self_ensemble)
        # a fresh array either way, so the mapping back runs in place (two passes fewer per frame)
        out = merged + prep.centre if self.residual_on_host else np.array(merged, np.float32)
        out *= np.float32(prep.scale)
        out += np.float32(prep.offset)
        return out

    def _run_grid(self, grid: TileGrid, tiles: np.ndarray) -> np.ndarray:
        """The network's output for ``tiles``, batched as the backend takes them, merged on ``grid``."""
        batch = tiles_per_call(self.session.max_batch, tiles.shape[-2:], len(tiles),
                               equal=self.session.fixed_shape is None)
        with self._lock:
            outs = [self.session.run(tiles[i : i + batch]) for i in range(0, len(tiles), batch)]
        return grid.merge(outs[0] if len(outs) == 1 else np.concatenate(outs))


class _FrameCache:
    """The newest frames put in, by key: at most ``frames`` of them and ``budget`` bytes in all (thread-safe)."""

    def __init__(self, frames: int, budget: int) -> None:
        self.frames, self.budget = frames, budget
        self._frames: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> np.ndarray | None:
        with self._lock:
            frame = self._frames.get(key)
            if frame is not None:
                self._frames.move_to_end(key)
            return frame

    def put(self, key: Hashable, frame: np.ndarray) -> None:
        with self._lock:
            old = self._frames.pop(key, None)
            self._bytes -= 0 if old is None else old.nbytes
            self._frames[key] = frame
            self._bytes += frame.nbytes
            while (self._bytes > self.budget or len(self._frames) > self.frames) and self._frames:
                self._bytes -= self._frames.popitem(last=False)[1].nbytes

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def nbytes(self) -> int:
        return self._bytes


#: The despiked frames of the process's streams (:meth:`Denoiser._conditioned`), by (sigmas, caller's key).
_despiked = _FrameCache(CONDITIONED_FRAMES, CONDITIONED_BYTES)


class _Prepared(NamedTuple):
    grid: TileGrid | None  # None: a flat frame, returned as it is
    tiles: np.ndarray
    centre: np.ndarray  # normalised centre frame as the model saw it, for the host-side residual
    offset: float
    scale: float
    raw_masked: tuple[np.ndarray, np.ndarray] | None = None  # the centre's masked pixels and raw values
    context: np.ndarray | None = None  # the normalised context, unpadded: for a self-ensemble's turned copies


def check_frames(frames: Any) -> np.ndarray:
    """``frames`` as an array, if they can be denoised: ``(H, W)`` or ``(N, H, W)``, not empty,
    integer or floating point, no infinite values, and each frame with data somewhere.

    NaN marks a pixel without data (:func:`~bluesky_tomogan.masked.missing_pixels`): the
    network gets its nearest pixel with data, and the output keeps NaN there. So do the
    masked pixels of a :class:`numpy.ma.MaskedArray`: it becomes a floating-point array with
    NaN where it is masked (its values there are not data).

    Raises
    ------
    InputValueError
        Another dtype (bool, complex, object), infinite values or values beyond float32's range, or a frame
        that is NaN everywhere.
    InputShapeError
        Another number of dimensions, no pixels, or the shape of one colour image (``(H, W, 3)``
        or ``(H, W, 4)``: an RGB(A) picture, not ``H`` frames of ``W x 3`` pixels).
    """
    arr = _nan_where_masked(frames) if isinstance(frames, np.ma.MaskedArray) else np.asarray(frames)
    if arr.dtype.kind not in "uif":
        raise InputValueError(f"frames must be integer or floating point, got dtype {arr.dtype}")
    if arr.ndim not in (2, 3):
        raise InputShapeError(f"frames must be (H, W) or (N, H, W), got {arr.ndim}-D shape {arr.shape}")
    if arr.size == 0:
        raise InputShapeError(f"frames are empty (shape {arr.shape})")
    if looks_like_colour(arr.shape):
        raise InputShapeError(f"frames of shape {arr.shape} look like one colour image (H, W, {arr.shape[-1]}), not "
                              f"{arr.shape[0]} frames of {arr.shape[1]} x {arr.shape[2]} pixels; only grey frames are "
                              "denoised: convert it to grey first")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        infinite = int(np.isinf(arr).sum())
        if infinite:
            raise InputValueError(f"frames hold {infinite} inf values; replace them (NaN marks a pixel without data)")
        empty = np.flatnonzero(np.isnan(arr).reshape(-1, arr.shape[-2] * arr.shape[-1]).all(axis=1))
        if empty.size:
            raise InputValueError(f"frame {int(empty[0])} is NaN in all {arr.shape[-2] * arr.shape[-1]} pixels: "
                                  "no data to denoise")
    if arr.dtype.kind == "f" and arr.dtype.itemsize > 4:  # the network and the host's steps compute in float32
        top = float(np.finfo(np.float32).max)
        beyond = int(np.count_nonzero((arr > top) | (arr < -top)))  # (NaN compares False)
        if beyond:
            raise InputValueError(f"frames hold {beyond} values beyond float32's range (|x| > {top:.3g}), which "
                                  "the network computes in; scale them")
    return arr


def takes_frame_keys(den: object) -> bool:
    """Whether ``den.denoise_context`` takes ``frame_keys`` (:class:`Denoiser`'s does; a denoiser of the user's
    own, or a subclass whose ``denoise_context`` was written for an earlier version, may not). 12 us for a
    :class:`Denoiser` (timeit, Intel Xeon with AMX): asked per frame, beside its milliseconds of denoising."""
    try:
        parameters = inspect.signature(den.denoise_context).parameters  # type: ignore[attr-defined]
    except (AttributeError, TypeError, ValueError):
        return False
    return "frame_keys" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def _per_frame(values: ArrayLike, n: int, name: str) -> np.ndarray:
    """``values`` as one number per frame of a stack of ``n``, or :class:`InputValueError` saying why not."""
    arr = np.asarray(values)
    if arr.shape != (n,) or arr.dtype.kind not in "uifb":
        raise InputValueError(f"{name} must be one number per frame ({n}), got {arr.dtype} of shape {arr.shape}")
    return arr


def _nan_where_masked(frames: np.ma.MaskedArray) -> np.ndarray:
    data, mask = np.asarray(frames.data), np.ma.getmaskarray(frames)
    if not mask.any() or data.dtype.kind not in "uif":
        return data
    arr = data.astype(np.float64 if data.dtype.itemsize > 4 else np.float32)
    arr[mask] = np.nan
    return arr


#: The installed package that runs each backend (its version goes into the provenance).
_RUNTIME_DISTRIBUTIONS = {"onnxruntime": "onnxruntime", "openvino": "openvino", "litert": "ai-edge-litert",
                          "edgetpu": "ai-edge-litert", "tensorrt": "tensorrt"}


def _distribution_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:  # a backend object supplied by the caller, not an installed runtime
        return ""
