"""DSM: dynamic similarity matching for unknown orientation and limited FoV (Shi et al., CVPR 2020), ported from
YujiaoShi/cross_view_localization_DSM `script/cir_net_FOV.py` (`VGG_13_conv_v2_cir`), `VGG.py` and `VGG_cir.py`.

Per view a VGG16 tower to conv4_3 (no pool after it; conv1-3 frozen, dropout after conv4_x), then three
reduction convs (`conv2(..., dimension=16)`: 3x3 stride (2, 1) to 256 and 64 channels with ReLU, 3x3 to 16
without): a 128x512 polar aerial gives a 4x64x16 map, a 128 x (512 FoV/360) ground crop a 4 x ceil(64 FoV/360)
x 16 map. The aerial branch pads circularly along the width (azimuth) before every conv (`VGG_cir.py`); the
ground branch uses SAME convs. The ground map is L2-normalised over all of it; the aerial map is not.

Matching (`corr`, `crop_sat`, `corr_crop_distance`): the ground map slides circularly over the aerial map's
width, scores[k] = sum_{h, n, c} A[h, (n + k) mod Wa, c] G[h, n, c]; the orientation is argmax_k (one bin =
360 / Wa degrees: 5.625 at Wa = 64), the aerial map is cropped to the Wg columns starting at that shift,
L2-normalised, and distance = 2 - 2 <crop, G>. `correlation_distance` computes it as scores[k*] / ||crop_k*||,
with ||crop_k||^2 the circular window sum of the aerial columns' energies: the same function (and the same
gradient) as building the crops, without the [Ba, Bg, H, Wg, C] tensor. At test time `cvm.evaluation.correlation`
does the correlation by FFT over the whole gallery (`distance.py`), streamed.

The model keeps the two-tower contract with flattened maps (row-major [H, W, C]): `{"ground": [B, 4*Wg*16] unit
rows, "aerial": [B, 4*Wa*16] raw}`; `l2_normalized` is False and `correlation` True, so trainers use
`DSMTripletLoss` and evaluators `cvm.evaluation.correlation` instead of the plain inner product.

Deviations: the triplet normaliser uses the dynamic batch (as cvm.losses.triplet) and softplus replaces
log(1 + exp); `backbone_width` < 1 scales the reduction convs too (256, 64 channels); nothing else.
"""

from __future__ import annotations

import typing
from typing import Optional

import keras
from keras import ops

from cvm.errors import CvmError
from cvm.losses.triplet import (MASK_MODES, WeightedSoftMarginTripletLoss, soft_margin_triplet_from_distance,
                                 utm_mask)
from cvm.models.registry import register
from cvm.models.two_tower import VGGTwoTower, checked_size
from cvm.models.vgg import conv_initializers, pad_azimuth, scaled_channels

# Input sizes of the original (the tensor shapes of train_cvusa_fov.py): polar aerial 128x512; ground 128 x int(512 FoV/360).
POLAR_SIZE = (128, 512)
PANORAMA_SIZE = (128, 512)
MAP_CHANNELS = 16  # `dimension` of conv2()
REDUCTION_CHANNELS = (256, 64)  # conv_dim_reduct_1, conv5_dim_reduct_2
REDUCTION_NAMES = ("conv_dim_reduct_1", "conv5_dim_reduct_2", "conv5_dim_reduct_3")
_NORM_EPS = 1e-12  # tf.nn.l2_normalize's epsilon on the squared norm


def ground_map_width(input_width: int) -> int:
    """Width of the ground map for a ground crop of `input_width` columns: three SAME 2x2/2 pools (ceil each)."""
    w = int(input_width)
    for _ in range(3):
        w = (w + 1) // 2
    return w


def map_height(input_height: int) -> int:
    """Height after three pools and the two stride-2 reduction convs: ceil(h / 2) five times (SAME, and
    VALID after one zero row each side, give the same size: (h - 1) // 2 + 1 = ceil(h / 2))."""
    h = int(input_height)
    for _ in range(5):
        h = (h + 1) // 2
    return h


@keras.saving.register_keras_serializable(package="cvm")
class DSMReduction(keras.layers.Layer):
    """DSM's `conv2(x, scope, dimension=16)` (Shi et al., CVPR 2020, Sec. 3.2): conv4_3 map -> H/4 x W x 16.

    3x3 stride (2, 1) conv to 256 channels + ReLU (`conv_dim_reduct_1`), the same to 64 (`conv5_dim_reduct_2`),
    3x3 stride 1 to `channels` without activation (`conv5_dim_reduct_3`). `circular`: the aerial branch's
    VGG_cir padding (one column wrapped around each side, one zero row above and below, VALID convs); else SAME.

    Args:
      width: channel multiplier of the first two convs (1.0: 256 and 64).
      channels: output channels (16 in the paper).
      circular: circular padding along the width (aerial branch).
      init: "original" (Glorot kernels and biases, as the TF1 code) or "he".
    """

    def __init__(self, width=1.0, channels=MAP_CHANNELS, circular=False, init="original", **kwargs):
        super().__init__(**kwargs)
        if int(channels) < 1:
            raise CvmError(f"map_channels must be at least 1, got {channels}")
        self.width = float(width)
        self.channels = int(channels)
        self.circular = bool(circular)
        self.init = init
        initializers = conv_initializers(init)
        filters = [scaled_channels(c, self.width) for c in REDUCTION_CHANNELS] + [self.channels]
        strides = ((2, 1), (2, 1), (1, 1))
        activations = ("relu", "relu", None)
        self.convs = [
            keras.layers.Conv2D(f, 3, strides=s, padding="valid" if self.circular else "same", activation=a,
                                name=name, **initializers)
            for f, s, a, name in zip(filters, strides, activations, REDUCTION_NAMES)
        ]

    def build(self, input_shape):
        channels = input_shape[-1]
        for conv in self.convs:
            conv.build((None, None, None, channels))
            channels = conv.filters
        self.built = True

    def call(self, x):
        for conv in self.convs:
            x = conv(pad_azimuth(x) if self.circular else x)
        return x

    def compute_output_shape(self, input_shape):
        h, w = input_shape[1], input_shape[2]
        for stride in (2, 2, 1):
            if h is not None:
                h = -(-h // stride)  # SAME, or VALID after one zero row each side: ceil(h / stride)
        return (input_shape[0], h, w, self.channels)

    def get_config(self):
        config = super().get_config()
        config.update(width=self.width, channels=self.channels, circular=self.circular, init=self.init)
        return config


# --- matching (keras.ops; the training path) ----------------------------------------------------------------
def circular_correlation(aerial, ground):
    """DSM `corr`: scores[g, a, k] = sum_{h, n, c} A[a, h, (n + k) mod Wa, c] G[g, h, n, c].

    As the original: the aerial map gets its first Wg - 1 columns appended and the ground maps are the kernels
    of a VALID convolution. aerial [Ba, H, Wa, C], ground [Bg, H, Wg, C] (Wg <= Wa) -> [Bg, Ba, Wa].
    """
    aerial = ops.cast(aerial, "float32")
    ground = ops.cast(ground, "float32")
    wa, wg = aerial.shape[2], ground.shape[2]
    if wa is not None and wg is not None and wg > wa:
        raise CvmError(f"DSM needs a ground map no wider than the aerial map, got {wg} > {wa} columns")
    wg = ops.shape(ground)[2] if wg is None else wg
    x = ops.concatenate([aerial, aerial[:, :, : wg - 1]], axis=2)  # (an empty slice for wg = 1)
    kernel = ops.transpose(ground, (1, 2, 3, 0))  # [H, Wg, C, Bg]
    out = ops.conv(x, kernel, strides=1, padding="valid")  # [Ba, 1, Wa, Bg]
    out = ops.reshape(out, (ops.shape(out)[0], ops.shape(out)[2], ops.shape(out)[3]))
    return ops.transpose(out, (2, 0, 1))


def window_energy(aerial, ground_width: int):
    """||crop_k||^2 for every shift k: sum_{n < Wg} sum_{h, c} A[a, h, (n + k) mod Wa, c]^2 -> [Ba, Wa]."""
    aerial = ops.cast(aerial, "float32")
    columns = ops.sum(ops.square(aerial), axis=(1, 3))  # [Ba, Wa]
    wg = ground_width
    padded = ops.concatenate([columns, columns[:, : wg - 1]], axis=1)
    ones = ops.ones((wg, 1, 1), "float32")
    return ops.conv(ops.expand_dims(padded, -1), ones, strides=1, padding="valid")[..., 0]


def correlation_distance(aerial, ground):
    """DSM `corr_crop_distance`: (distance [Bg, Ba] = 2 - 2 <crop/||crop||, G>, orientation [Bg, Ba] int32).

    orientation = argmax_k of the raw correlation (as the original: the aerial map is not normalised before
    the argmax); the crop's norm comes from `window_energy` at that shift (eps 1e-12 as tf.nn.l2_normalize).
    """
    scores = circular_correlation(aerial, ground)  # [Bg, Ba, Wa]
    orientation = ops.cast(ops.argmax(scores, axis=-1), "int32")
    index = ops.expand_dims(orientation, -1)
    best = ops.take_along_axis(scores, index, axis=-1)[..., 0]
    wg = ground.shape[2] if ground.shape[2] is not None else ops.shape(ground)[2]
    energy = window_energy(aerial, wg)  # [Ba, Wa]
    energy = ops.broadcast_to(ops.expand_dims(energy, 0), ops.shape(scores))
    norm_sq = ops.take_along_axis(energy, index, axis=-1)[..., 0]
    similarity = best * ops.rsqrt(ops.maximum(norm_sq, _NORM_EPS))
    return 2.0 - 2.0 * similarity, orientation


def unflatten(descriptors, height: int, channels: int):
    """[B, H*W*C] row-major maps -> [B, H, W, C] (W from the descriptor size)."""
    return ops.reshape(descriptors, (ops.shape(descriptors)[0], int(height), -1, int(channels)))


@keras.saving.register_keras_serializable(package="cvm")
class DSMTripletLoss(WeightedSoftMarginTripletLoss):
    """The training loss of DSM: soft-margin triplet (alpha 10) on `correlation_distance` of the global batch.

    Called as the retrieval trainer calls its loss, `loss(ground, aerial, locations=None)`, with the flattened
    maps of `DSM` ([B, H*Wg*C] and [B, H*Wa*C]); `map_height` / `map_channels` unflatten them.

    Args:
      alpha: soft-margin weight (`loss_weight` = 10).
      include_diagonal: keep the constant i == j terms (original behaviour).
      mask_radius_m: None (DSM's train_cvact_fov.py applies no mask), or a "same place" radius in metres.
      mask_mode: "inside" or "outside" (cvm.losses.triplet).
      map_height: rows of the maps (4).
      map_channels: channels of the maps (16).
    """

    def __init__(self, alpha: float = 10.0, include_diagonal: bool = True, mask_radius_m: Optional[float] = None,
                 mask_mode: str = "inside", map_height: int = 4, map_channels: int = MAP_CHANNELS):
        super().__init__(alpha, include_diagonal, mask_radius_m, mask_mode)  # the settings, checked there
        self.map_height = int(map_height)
        self.map_channels = int(map_channels)

    @classmethod
    def for_model(cls, model, **settings) -> "DSMTripletLoss":
        """The loss for a `DSM` model (its map height and channels) with the given triplet settings."""
        return cls(map_height=model.map_height, map_channels=model.map_channels, **settings)

    def __call__(self, ground, aerial, locations=None):
        mask = None
        if self.mask_radius_m is not None:
            if locations is None:
                raise CvmError(f"the DSM loss masks pairs closer than {self.mask_radius_m} m but got no locations")
            mask = utm_mask(locations, self.mask_radius_m)
        g = unflatten(ops.cast(ground, "float32"), self.map_height, self.map_channels)
        a = unflatten(ops.cast(aerial, "float32"), self.map_height, self.map_channels)
        distance, _ = correlation_distance(a, g)
        return soft_margin_triplet_from_distance(distance, self.alpha, self.include_diagonal, mask, self.mask_mode)

    def get_config(self) -> dict:
        return {"alpha": self.alpha, "include_diagonal": self.include_diagonal, "mask_radius_m": self.mask_radius_m,
                "mask_mode": self.mask_mode, "map_height": self.map_height, "map_channels": self.map_channels}

    @classmethod
    def from_config(cls, config: dict) -> "DSMTripletLoss":
        return cls(**config)


@register("dsm")
@keras.saving.register_keras_serializable(package="cvm")
class DSM(VGGTwoTower):
    """DSM retrieval and orientation model (Shi et al., CVPR 2020), `VGG_13_conv_v2_cir` of cir_net_FOV.py.

    Paper: https://arxiv.org/abs/2005.03860

    Ground: VGG16 to conv4_3 (scope VGG_grd) + SAME reduction convs (scope grd), L2-normalised over the map.
    Aerial (polar): VGG16 to conv4_3 with circular padding (VGG_sat) + circular reduction convs (sat), raw.
    Outputs the flattened maps; see the module docstring for how they are compared (`DSMTripletLoss`,
    `cvm.evaluation.correlation`).

    Args:
      keep_prob: dropout keep probability after conv4_1..conv4_3 (rate = 1 - keep_prob), only when training.
      weights: None, "imagenet" or a local Keras VGG16 notop `.h5`, copied into both towers' conv1-conv4
        (the original started from an ImageNet-initialised checkpoint).
      backbone_width: channel multiplier of the towers and of the first two reduction convs (1.0 = paper).
      freeze_blocks: leading VGG blocks kept frozen (3 as the original: conv1-conv3 trainable=False).
      init: "original" (Glorot kernels and biases, the TF1 initialisers) or "he".
      map_channels: DSM: channels of the final feature maps (`dimension` = 16).
      aerial_size: DSM: (height, width) of the polar aerial input (128x512); the width must be a multiple of 8
        so that the 2x2 pools keep the azimuth circular.
    """

    l2_normalized = False  # the aerial map is normalised per shift, after the crop
    correlation = True  # compared by circular correlation, not by the inner product

    tower_blocks = 4  # VGG16 to conv4_3 (conv5 is commented out in cir_net_FOV.py)
    aerial_circular = True

    def __init__(self, map_channels: int = MAP_CHANNELS, aerial_size: tuple = POLAR_SIZE, **kwargs):
        if kwargs.get("share_towers"):
            raise CvmError("DSM cannot share its towers: the aerial one pads circularly along the polar azimuth, "
                           "the ground one does not; leave --share_towers off")
        super().__init__(**kwargs)
        self.map_channels = int(map_channels)
        self.aerial_size = checked_size(aerial_size, "aerial_size")
        if self.aerial_size[1] % 8:
            raise CvmError(f"DSM's polar aerial width must be a multiple of 8 (three 2x2 pools keep the azimuth "
                           f"circular), got aerial_size={self.aerial_size}; use 128,512 as the paper")
        reduction = dict(width=self.backbone_width, channels=self.map_channels, init=self.init)
        self.ground_reduction = DSMReduction(name="grd", **reduction)
        self.aerial_reduction = DSMReduction(name="sat", circular=True, **reduction)
        self.map_height = map_height(self.aerial_size[0])
        self.aerial_map_width = self.aerial_size[1] // 8
        self.descriptor_dim = self.map_height * self.aerial_map_width * self.map_channels
        self.build()
        self.load_pretrained_backbones()

    @property
    def orientation_bins(self) -> int:
        """Azimuth bins of the correlation (64 at 512 columns: 5.625 degrees each)."""
        return self.aerial_map_width

    def build(self, input_shape=None):
        for tower, reduction in ((self.ground_tower, self.ground_reduction),
                                 (self.aerial_tower, self.aerial_reduction)):
            tower.build()
            reduction.build((None, None, None, tower.output_channels))
        self.built = True

    def ground_maps(self, images, training=False):
        """[B, Hg, Wg, 3] ground crops -> [B, 4, ceil(Wg/8), C] maps, unit Frobenius norm per sample."""
        x = self.ground_reduction(self.ground_tower(images, training=training))
        x = ops.cast(x, "float32")
        norm_sq = ops.sum(ops.square(x), axis=(1, 2, 3), keepdims=True)
        return x * ops.rsqrt(ops.maximum(norm_sq, _NORM_EPS))

    def aerial_maps(self, images, training=False):
        """[B, 128, 512, 3] polar aerials -> [B, 4, 64, C] maps (not normalised)."""
        got = tuple(images.shape[1:3])
        if None not in got and got[1] % 8:
            raise CvmError(f"DSM's polar aerial width must be a multiple of 8, got images of {got}")
        return ops.cast(self.aerial_reduction(self.aerial_tower(images, training=training)), "float32")

    def encode_ground(self, images, training=False):
        """[B, Hg, Wg, 3] -> [B, 4 * ceil(Wg/8) * C] (the flattened unit map)."""
        x = self.ground_maps(images, training=training)
        return ops.reshape(x, (ops.shape(x)[0], -1))

    def encode_aerial(self, images, training=False):
        """[B, Ha, Wa, 3] -> [B, 4 * Wa/8 * C] (the flattened raw map)."""
        x = self.aerial_maps(images, training=training)
        return ops.reshape(x, (ops.shape(x)[0], -1))

    def retrieval_loss(self, **settings) -> DSMTripletLoss:
        """The loss a trainer must use with this model (instead of the inner-product triplet)."""
        return DSMTripletLoss.for_model(self, **settings)

    def match(self, ground_descriptors, aerial_descriptors):
        """(distance [Bg, Ba], orientation bin [Bg, Ba]) of flattened maps (`correlation_distance`)."""
        g = unflatten(ground_descriptors, self.map_height, self.map_channels)
        a = unflatten(aerial_descriptors, self.map_height, self.map_channels)
        return correlation_distance(a, g)


def orientation_bin_degrees(bins: int) -> float:
    """Degrees per correlation bin."""
    return 360.0 / int(bins)


__all__ = [
    "DSM", "DSMReduction", "DSMTripletLoss", "POLAR_SIZE", "PANORAMA_SIZE", "circular_correlation",
    "correlation_distance", "ground_map_width", "map_height", "soft_margin_triplet_from_distance", "unflatten",
    "window_energy", "orientation_bin_degrees",
]
