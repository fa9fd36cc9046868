"""Losses: the weighted soft-margin triplet loss of the CVM-Net lineage (GAN losses live in gan.py)."""

from cvm.losses.triplet import (  # noqa: F401
    MASK_MODES,
    WeightedSoftMarginTripletLoss,
    utm_mask,
    weighted_soft_margin_triplet,
)
