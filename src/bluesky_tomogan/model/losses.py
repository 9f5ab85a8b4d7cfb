"""Generator and discriminator losses.

Pixel loss (L1 or MSE) carries most of the weight; the adversarial term
(non-saturating GAN) and a feature-matching term sharpen textures that pixel
losses blur, as in TomoGAN.

Why feature matching instead of VGG perceptual loss: TomoGAN used ImageNet
VGG-19 features, which need downloaded weights (impossible here, and trained
on RGB photographs, not attenuation maps). Matching the *discriminator's*
intermediate features (Salimans et al. 2016) gives a perceptual distance that
is learned on the tomography data itself and needs no external weights.

Why an SSIM term: the project judges denoisers by SSIM, and an L1-trained
network stops improving SSIM where smoothing away fine, low-contrast structure
costs little L1 (high doses, faint samples). ``"l1+ssim"`` is the mix of Zhao et
al. 2017 ("Loss Functions for Image Restoration with Neural Networks"):
0.84 (1 - SSIM) + 0.16 L1, with SSIM computed as :func:`bluesky_tomogan.metrics.ssim`
computes it (7x7 uniform window, each target's min-max range mapped to [0, 1], a patch's
range taken as at least the normalised frame's: see ``_canonical``).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F

__all__ = ["pixel_loss", "ssim_loss", "generator_adversarial_loss", "discriminator_loss", "feature_matching_loss"]


PixelLoss = Literal["l1", "mse", "l1+ssim"]
PIXEL_LOSSES: tuple[str, ...] = get_args(PixelLoss)

# Zhao et al. 2017's weights of the SSIM and L1 terms.
_SSIM_WEIGHT = 0.84


def pixel_loss(pred: torch.Tensor, target: torch.Tensor, kind: PixelLoss = "l1",
               noisy: torch.Tensor | None = None, balance: float = 0.0) -> torch.Tensor:
    """Mean absolute or squared error, or the L1 + SSIM mix (see the module docstring).

    Parameters
    ----------
    pred, target : torch.Tensor
        (N, 1, H, W) network output and clean target.
    kind : {"l1", "mse", "l1+ssim"}
        The loss.
    noisy : torch.Tensor, optional
        (N, 1, H, W) the noisy input's centre frame, for ``balance``.
    balance : float
        Weight each sample's loss by ``(its input's own loss / the batch's mean) ** -balance``
        (weights normalised to a mean of 1, no gradient through them). A patch of a few
        photons per pixel starts with a loss tens of times that of a patch of thousands, so
        a plain mean spends the network's capacity on low doses; ``balance=1`` asks each
        patch for the same *relative* improvement, 0 (the default) is the plain mean.
    """
    if kind not in PIXEL_LOSSES:
        raise ValueError(f"pixel loss must be one of {', '.join(PIXEL_LOSSES)}, got {kind!r}")
    losses = _per_sample(pred, target, kind)
    if balance == 0 or noisy is None:
        return losses.mean()
    with torch.no_grad():
        start = _per_sample(noisy.float(), target, kind).clamp_min(1e-6)
        weights = (start / start.mean()) ** -balance
        weights = weights / weights.mean()
    return (weights * losses).mean()


def _per_sample(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "l1":
        return (pred - target).abs().mean(dim=(1, 2, 3))
    if kind == "mse":
        return ((pred - target) ** 2).mean(dim=(1, 2, 3))
    pred_c, target_c = _canonical(pred, target)
    return (_SSIM_WEIGHT * ssim_loss(pred_c, target_c, per_sample=True)
            + (1 - _SSIM_WEIGHT) * (pred_c - target_c).abs().mean(dim=(1, 2, 3)))


# Training patches are cut from frames normalised to their robust range (``normalise``: 0.5-99.5
# percentiles -> [0, 1]), so a whole frame spans about 1: the range the metric maps to [0, 1].
_FRAME_RANGE = 1.0


def _canonical(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Map each sample of both tensors by the affine map taking the target's range to [0, 1], with the
    range at least a normalised frame's.

    The metric maps a *frame's* range to [0, 1]; a patch is a part of a frame. Mapping a flat patch
    (the empty space around a slice's sample, the open beam beside a projection) by its own tiny
    range scaled its noise up by orders of magnitude (session 12: single batches with losses of
    50-75 in a slice fine-tune).
    """
    lo = target.amin(dim=(1, 2, 3), keepdim=True)
    scale = (target.amax(dim=(1, 2, 3), keepdim=True) - lo).clamp_min(_FRAME_RANGE)
    return (pred - lo) / scale, (target - lo) / scale


def ssim_loss(pred: torch.Tensor, target: torch.Tensor, window: int = 7, per_sample: bool = False) -> torch.Tensor:
    """``1 - SSIM`` of (N, 1, H, W) images on [0, 1]: uniform window, sample covariances, valid region
    (the batch's mean, or one value per sample with ``per_sample``).

    The same definition as scikit-image's ``structural_similarity`` with its
    defaults (so the loss and the metric agree to float precision).
    """
    c1, c2 = 0.01**2, 0.03**2
    pred, target = pred.float(), target.float()

    def mean(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, window, stride=1)

    mu_p, mu_t = mean(pred), mean(target)
    unbias = window * window / (window * window - 1)  # sample, not population, covariance
    var_p = (mean(pred * pred) - mu_p * mu_p) * unbias
    var_t = (mean(target * target) - mu_t * mu_t) * unbias
    cov = (mean(pred * target) - mu_p * mu_t) * unbias
    ssim_map = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2))
    return 1 - (ssim_map.mean(dim=(1, 2, 3)) if per_sample else ssim_map.mean())


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss: make the critic call fakes real."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the critic on real (1) and generated (0) images."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return 0.5 * (real + fake)


def feature_matching_loss(fake_feats: list[torch.Tensor], real_feats: list[torch.Tensor]) -> torch.Tensor:
    """Mean L1 distance between critic features of generated and clean images."""
    terms = [F.l1_loss(f, r.detach()) for f, r in zip(fake_feats, real_feats, strict=True)]
    return torch.stack(terms).mean()
