"""Losses: the weighted soft-margin triplet loss of the CVM-Net lineage, Sample4Geo's symmetric InfoNCE (GAN losses
live in gan.py)."""

from cvm.losses.infonce import SymmetricInfoNCE, false_negative_mask, symmetric_infonce  # noqa: F401

from cvm.losses.triplet import (  # noqa: F401
    MASK_MODES,
    WeightedSoftMarginTripletLoss,
    utm_mask,
    weighted_soft_margin_triplet,
)
from cvm.losses.gan import (  # noqa: F401,E402
    binary_cross_entropy_with_logits,
    discriminator_loss,
    generator_gan_loss,
    l1_loss,
)
