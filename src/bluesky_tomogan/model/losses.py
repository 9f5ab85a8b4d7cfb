"""Generator and discriminator losses.

Pixel loss (L1 or MSE) carries most of the weight; the adversarial term
(non-saturating GAN) and a feature-matching term sharpen textures that pixel
losses blur, as in TomoGAN.

Why feature matching instead of VGG perceptual loss: TomoGAN used ImageNet
VGG-19 features, which need downloaded weights (impossible here, and trained
on RGB photographs, not attenuation maps). Matching the *discriminator's*
intermediate features (Salimans et al. 2016) gives a perceptual distance that
is learned on the tomography data itself and needs no external weights.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["pixel_loss", "generator_adversarial_loss", "discriminator_loss", "feature_matching_loss"]


def pixel_loss(pred: torch.Tensor, target: torch.Tensor, kind: Literal["l1", "mse"] = "l1") -> torch.Tensor:
    """Mean absolute or squared error."""
    if kind == "l1":
        return F.l1_loss(pred, target)
    if kind == "mse":
        return F.mse_loss(pred, target)
    raise ValueError(f"pixel loss must be 'l1' or 'mse', got {kind!r}")


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
