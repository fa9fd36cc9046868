"""Weighted soft-margin triplet (ranking) loss of CVM-Net (Hu et al., CVPR 2018), as coded in every TF repo.

Written in `keras.ops` so it runs on any Keras backend; the math is always float32 (descriptors may
arrive as float16/bfloat16 under mixed precision).

Notation: aerial descriptors s_i, ground descriptors g_j (L2-normalised, B aligned pairs),
d_ij = 2 - 2 <s_i, g_j> (squared Euclidean distance between unit vectors).

  ground->aerial: sum_ij softplus(alpha (d_jj - d_ij))   anchor = ground j, candidates = aerial i
  aerial->ground: sum_ij softplus(alpha (d_ii - d_ij))   anchor = aerial i, candidates = ground j
  loss = (g2a / B(B-1) + a2g / B(B-1)) / 2

Deviations from the originals, all deliberate:
  * B is the dynamic batch size (the originals used the Python constant `batch_size`, which would
    mis-normalise a partial batch);
  * softplus instead of log(1 + exp(x)), so alpha * d beyond ~88 neither overflows nor NaNs.

The diagonal (i == j) is included by default, as in the originals: each sum gets B log 2 (a constant
with no gradient), so the loss is offset by log(2) / (B - 1). `include_diagonal=False` drops it.

CVACT variant (CVFT / SAFA `train_cvact.py`): a [B, B] mask m_ij = [|loc_i - loc_j|^2 >= radius^2]
removes pairs taken less than `radius` metres apart (the same place seen twice is no negative). Two ways
to apply it:
  * mask_mode="inside" (the original): the softplus *argument* is multiplied by m_ij, so a masked pair
    still contributes softplus(0) = log 2 (constant, no gradient); the normaliser is sum(m_ij).
  * mask_mode="outside": the softplus *output* is multiplied by m_ij, so masked pairs contribute 0;
    same normaliser sum(m_ij). Gradients are identical to "inside"; only the value differs.
With a mask, the diagonal is always masked (distance 0 < radius) unless radius is 0.
"""

from __future__ import annotations

from typing import Optional

import keras
from keras import ops

from cvm.errors import CvmError

MASK_MODES = ("inside", "outside")


def utm_mask(locations, radius_m: float = 25.0):
    """[B, B] float32 mask of pairs at least `radius_m` apart: m_ij = [|loc_i - loc_j|^2 >= radius_m^2].

    `locations` are planar coordinates in metres (UTM easting/northing), shape [B, 2]. The differences
    are taken in the input dtype before any cast: pass float64 UTM coordinates (float32 resolves only
    ~0.5 m at northings of 6e6 m), as the originals computed this mask in NumPy float64.
    """
    locations = ops.convert_to_tensor(locations)
    if not keras.backend.standardize_dtype(locations.dtype).startswith("float"):
        locations = ops.cast(locations, "float32")
    diff = ops.expand_dims(locations, 1) - ops.expand_dims(locations, 0)  # [B, B, 2]
    squared = ops.sum(ops.square(diff), axis=-1)
    radius_sq = ops.cast(float(radius_m) ** 2, squared.dtype)
    return ops.cast(ops.greater_equal(squared, radius_sq), "float32")


def weighted_soft_margin_triplet(
    ground,
    aerial,
    alpha: float = 10.0,
    include_diagonal: bool = True,
    mask=None,
    mask_mode: str = "inside",
):
    """Weighted soft-margin ranking loss of CVM-Net (Hu et al., CVPR 2018): mean_ij softplus(alpha (d_pos - d_ij)).

    Args:
      ground: [B, D] L2-normalised ground descriptors (pair i = ground i with aerial i).
      aerial: [B, D] L2-normalised aerial descriptors.
      alpha: the weight inside the soft margin (`loss_weight` = 10 in the originals).
      include_diagonal: keep the i == j terms (constant log 2 each), as the originals do.
      mask: optional [B, B] {0, 1} matrix (see `utm_mask`), symmetric; None = every pair counts.
      mask_mode: "inside" (original: mask the softplus argument) or "outside" (mask its output).

    Returns:
      A float32 scalar.
    """
    ground = ops.cast(ground, "float32")
    aerial = ops.cast(aerial, "float32")
    dist = 2.0 - 2.0 * ops.matmul(aerial, ops.transpose(ground))  # d_ij, rows = aerial i, cols = ground j
    return soft_margin_triplet_from_distance(dist, alpha, include_diagonal, mask, mask_mode)


def soft_margin_triplet_from_distance(dist, alpha: float = 10.0, include_diagonal: bool = True, mask=None,
                                      mask_mode: str = "inside"):
    """The same loss on a [B, B] distance matrix whose diagonal holds the positives (any distance: DSM's
    correlation distance too). The two anchor terms make it symmetric: rows and columns may be either view."""
    if mask_mode not in MASK_MODES:
        raise CvmError(f"triplet loss mask_mode must be one of {MASK_MODES}, got {mask_mode!r}")
    dist = ops.cast(dist, "float32")
    pos = ops.diagonal(dist)  # d_ii
    # g2a[i, j] = d_jj - d_ij (anchor ground j); a2g[i, j] = d_ii - d_ij (anchor aerial i).
    g2a = ops.expand_dims(pos, 0) - dist
    a2g = ops.expand_dims(pos, 1) - dist

    batch = ops.cast(ops.shape(dist)[0], "float32")  # dynamic: a partial batch is normalised correctly
    if mask is None:
        normaliser = batch * (batch - 1.0)
        weight = None
    else:
        mask = ops.cast(mask, "float32")
        # Guard an all-masked batch (the originals divide by 0 there); the loss is then constant.
        normaliser = ops.maximum(ops.sum(mask), 1.0)
        if mask_mode == "inside":
            g2a = g2a * mask
            a2g = a2g * mask
            weight = None
        else:
            weight = mask
    if not include_diagonal:
        off_diagonal = 1.0 - ops.eye(ops.shape(dist)[0], dtype="float32")
        weight = off_diagonal if weight is None else weight * off_diagonal

    g2a_terms = ops.softplus(alpha * g2a)
    a2g_terms = ops.softplus(alpha * a2g)
    if weight is not None:
        g2a_terms = g2a_terms * weight
        a2g_terms = a2g_terms * weight
    return 0.5 * (ops.sum(g2a_terms) + ops.sum(a2g_terms)) / normaliser


@keras.saving.register_keras_serializable(package="cvm")
class WeightedSoftMarginTripletLoss:
    """Callable holding the loss's settings; `loss(ground, aerial, locations=None)` -> float32 scalar.

    Args:
      alpha: soft-margin weight (10 in the originals).
      include_diagonal: keep the constant i == j terms (original behaviour).
      mask_radius_m: None for no mask (CVUSA), or the CVACT "same place" radius in metres (25 in
        CVFT/SAFA); then `locations` [B, 2] (UTM metres) must be passed to each call.
      mask_mode: "inside" (original) or "outside"; see the module docstring.
    """

    def __init__(
        self,
        alpha: float = 10.0,
        include_diagonal: bool = True,
        mask_radius_m: Optional[float] = None,
        mask_mode: str = "inside",
    ):
        if mask_mode not in MASK_MODES:
            raise CvmError(f"triplet loss mask_mode must be one of {MASK_MODES}, got {mask_mode!r}")
        if mask_radius_m is not None and mask_radius_m < 0:
            raise CvmError(f"triplet loss mask radius must be >= 0 metres, got {mask_radius_m}")
        self.alpha = float(alpha)
        self.include_diagonal = bool(include_diagonal)
        self.mask_radius_m = None if mask_radius_m is None else float(mask_radius_m)
        self.mask_mode = mask_mode

    def __call__(self, ground, aerial, locations=None):
        mask = None
        if self.mask_radius_m is not None:
            if locations is None:
                raise CvmError(
                    f"the triplet loss masks pairs closer than {self.mask_radius_m} m but got no locations: "
                    "use a dataset with UTM locations (CVACT) or set no mask radius"
                )
            mask = utm_mask(locations, self.mask_radius_m)
        return weighted_soft_margin_triplet(
            ground,
            aerial,
            alpha=self.alpha,
            include_diagonal=self.include_diagonal,
            mask=mask,
            mask_mode=self.mask_mode,
        )

    def get_config(self) -> dict:
        return {
            "alpha": self.alpha,
            "include_diagonal": self.include_diagonal,
            "mask_radius_m": self.mask_radius_m,
            "mask_mode": self.mask_mode,
        }

    @classmethod
    def from_config(cls, config: dict) -> "WeightedSoftMarginTripletLoss":
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"
