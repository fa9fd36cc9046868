"""Symmetric InfoNCE with label smoothing and a learnable logit scale (Sample4Geo, Deuser et al., ICCV 2023).

As Skyy93/Sample4Geo `sample4geo/loss.py` (`InfoNCE` with `nn.CrossEntropyLoss(label_smoothing=0.1)`), for B
aligned pairs with L2-normalised ground g_i and aerial a_j descriptors and the model's `logit_scale` weight s
(a log: Sample4Geo passes `logit_scale.exp()` to its loss):

  L_ij = exp(s) <g_i, a_j>                                         [B, B] logits, rows = ground queries
  CE_eps(row l, target y) = (1 - eps) (-log p_y) + eps mean_k (-log p_k),  p = softmax(l)   (torch's smoothing)
  loss = ( mean_i CE_eps(L_i., i) + mean_j CE_eps(L_.j, j) ) / 2   (ground->aerial and aerial->ground)

Always computed in float32 (descriptors may be float16 / bfloat16 under mixed precision; the authors' autocast
computed the logits in float16). Nothing clamps exp(s) (CLIP clamps at 100; Sample4Geo does not).

Global batch: under tf.distribute the trainer all-gathers both views' descriptors (and locations) across
replicas, as `cvm.training.retrieval.RetrievalTrainer.global_loss` does for the triplet loss, and passes the
gathered [B_global, D] tensors here: every pair's negatives are then the whole global batch (as Sample4Geo's
`gather_features` with torch.distributed). The loss itself is a plain function of what it is given.

False-negative mask (GeoDTR+ / statewide style; off by default, Sample4Geo has none): with `mask_radius_m` and
per-pair locations, logit (i, j), i != j, of two pairs taken less than the radius apart is removed from the
softmax of its row and its column, and from the smoothing average (which then spreads eps over the remaining
classes); the positive (i, i) always stays. Locations are planar metres ("metres": UTM easting / northing, or a
synthetic world) or degrees ("latlon": (lat, lon), great-circle distance on a 6,371,008.8 m sphere).
"""

from __future__ import annotations

import math
from typing import Optional

import keras
from keras import ops

from cvm.errors import CvmError

LOCATION_KINDS = ("metres", "latlon")
EARTH_RADIUS_M = 6371008.8  # mean Earth radius (IUGG)
# A finite "minus infinity" for masked logits: exp underflows to exactly 0 in float32 and gradients stay finite.
_MASKED_LOGIT = -1e9


def pairwise_distance_m(locations, kind: str = "metres"):
    """[B, B] distances in metres between the rows of `locations` [B, 2] (planar metres or (lat, lon) degrees).

    Computed in the locations' dtype (pass float64 UTM: float32 resolves ~0.5 m at northings of 6e6 m).
    """
    if kind not in LOCATION_KINDS:
        raise CvmError(f"location kind must be one of {LOCATION_KINDS}, got {kind!r}")
    locations = ops.convert_to_tensor(locations)
    if not keras.backend.standardize_dtype(locations.dtype).startswith("float"):
        locations = ops.cast(locations, "float64")
    if kind == "metres":
        diff = ops.expand_dims(locations, 1) - ops.expand_dims(locations, 0)
        return ops.sqrt(ops.sum(ops.square(diff), axis=-1))
    lat = locations[:, 0] * (math.pi / 180.0)
    lon = locations[:, 1] * (math.pi / 180.0)
    dlat = ops.expand_dims(lat, 1) - ops.expand_dims(lat, 0)
    dlon = ops.expand_dims(lon, 1) - ops.expand_dims(lon, 0)
    # Haversine: stable for the short distances the mask is about.
    h = ops.square(ops.sin(dlat / 2.0)) + ops.expand_dims(ops.cos(lat), 1) * ops.expand_dims(ops.cos(lat), 0) * \
        ops.square(ops.sin(dlon / 2.0))
    h = ops.clip(h, 0.0, 1.0)
    return 2.0 * EARTH_RADIUS_M * ops.arcsin(ops.sqrt(h))


def false_negative_mask(locations, radius_m: float, kind: str = "metres"):
    """[B, B] bool: True where logit (i, j) stays (pairs >= radius apart, and every diagonal (i, i))."""
    distance = pairwise_distance_m(locations, kind)
    keep = ops.greater_equal(distance, ops.cast(float(radius_m), distance.dtype))
    return ops.logical_or(keep, ops.cast(ops.eye(ops.shape(distance)[0]), "bool"))


def _smoothed_cross_entropy_rows(logits, keep, label_smoothing: float):
    """mean_i CE_eps(logits[i], i) over the kept classes of each row (torch's label smoothing when all kept)."""
    if keep is not None:
        logits = ops.where(keep, logits, ops.cast(_MASKED_LOGIT, logits.dtype))
    log_p = ops.log_softmax(logits, axis=-1)
    nll = -ops.diagonal(log_p)
    if keep is None:
        smooth = -ops.mean(log_p, axis=-1)
    else:
        kept = ops.cast(keep, log_p.dtype)
        smooth = -ops.sum(log_p * kept, axis=-1) / ops.sum(kept, axis=-1)
    return ops.mean((1.0 - label_smoothing) * nll + label_smoothing * smooth)


def symmetric_infonce(ground, aerial, logit_scale, label_smoothing: float = 0.1, keep=None):
    """Symmetric InfoNCE of Sample4Geo (`sample4geo/loss.py`): CE_eps over rows and columns of exp(s) G A^T, averaged.

    Args:
      ground: [B, D] L2-normalised ground descriptors (pair i = ground i with aerial i).
      aerial: [B, D] L2-normalised aerial descriptors.
      logit_scale: the model's scalar `logit_scale` s (the logits are multiplied by exp(s)).
      label_smoothing: eps of torch's `CrossEntropyLoss(label_smoothing=eps)` (0.1 in Sample4Geo).
      keep: optional [B, B] bool of the logits that stay (`false_negative_mask`); None = all.

    Returns:
      A float32 scalar.
    """
    ground = ops.cast(ground, "float32")
    aerial = ops.cast(aerial, "float32")
    scale = ops.exp(ops.cast(logit_scale, "float32"))
    logits = scale * ops.matmul(ground, ops.transpose(aerial))  # [B, B], rows = ground queries
    keep_t = None if keep is None else ops.transpose(keep)
    return 0.5 * (_smoothed_cross_entropy_rows(logits, keep, label_smoothing)
                  + _smoothed_cross_entropy_rows(ops.transpose(logits), keep_t, label_smoothing))


@keras.saving.register_keras_serializable(package="cvm")
class SymmetricInfoNCE:
    """Callable holding the loss's settings: `loss(ground, aerial, locations=None, logit_scale=None)` -> scalar.

    The trainer passes the (all-gathered) descriptors and the model's `logit_scale` weight, or binds the weight
    once (`SymmetricInfoNCE(logit_scale=model.logit_scale)`): gradients then flow into it, as Sample4Geo trains it.

    Args:
      label_smoothing: eps of the smoothed cross-entropy (0.1 in Sample4Geo).
      mask_radius_m: None (no mask, Sample4Geo) or the radius in metres within which in-batch pairs are not
        negatives of each other (25 m for CVACT as GeoDTR+); `locations` [B, 2] must then be passed.
      location_kind: "metres" (planar: UTM, synthetic world) or "latlon" (degrees: VIGOR, CVUSA's csv).
      logit_scale: optional variable (or float) used when a call passes none.
    """

    def __init__(self, label_smoothing: float = 0.1, mask_radius_m: Optional[float] = None,
                 location_kind: str = "metres", logit_scale=None):
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise CvmError(f"InfoNCE label_smoothing must be in [0, 1), got {label_smoothing}")
        if mask_radius_m is not None and float(mask_radius_m) < 0:
            raise CvmError(f"InfoNCE mask radius must be >= 0 metres, got {mask_radius_m}")
        if location_kind not in LOCATION_KINDS:
            raise CvmError(f"InfoNCE location_kind must be one of {LOCATION_KINDS}, got {location_kind!r}")
        self.label_smoothing = float(label_smoothing)
        self.mask_radius_m = None if mask_radius_m is None else float(mask_radius_m)
        self.location_kind = location_kind
        self.logit_scale = logit_scale

    def __call__(self, ground, aerial, locations=None, logit_scale=None):
        scale = self.logit_scale if logit_scale is None else logit_scale
        if scale is None:
            raise CvmError("the InfoNCE loss needs the model's logit_scale: pass logit_scale=model.logit_scale "
                           "(a Sample4Geo-class model owns it)")
        keep = None
        if self.mask_radius_m is not None:
            if locations is None:
                raise CvmError(f"the InfoNCE loss masks pairs closer than {self.mask_radius_m} m but got no "
                               "locations: use a dataset with locations or set no mask radius")
            keep = false_negative_mask(locations, self.mask_radius_m, self.location_kind)
        return symmetric_infonce(ground, aerial, scale, self.label_smoothing, keep)

    def get_config(self) -> dict:
        return {"label_smoothing": self.label_smoothing, "mask_radius_m": self.mask_radius_m,
                "location_kind": self.location_kind}

    @classmethod
    def from_config(cls, config: dict) -> "SymmetricInfoNCE":
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"
