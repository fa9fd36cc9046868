"""SAFA: spatial-aware feature aggregation (Shi et al., NeurIPS 2019), ported from
YujiaoShi/cross_view_localization_SAFA `script/spatial_net.py` (function `SAFA`, network "SAFA_8").

Per view: VGG16 conv1_1..conv5_3 (all layers trainable, dropout after conv4_x/conv5_x), one more
2x2/2 SAME max-pool, then `SpatialAwareImportance` turns the pooled map into `spatial_maps` importance
maps over its H*W positions and `spatial_aware_aggregate` pools the local features with each of them.
The descriptor is the d-major flattening of [d, C] (8 x 512 = 4096 at paper sizes), L2-normalised.
"""

from __future__ import annotations

import keras
from keras import ops

from cvm.errors import CvmError
from cvm.models.netvlad import l2_normalize
from cvm.models.registry import register
from cvm.models.two_tower import VGGTwoTower

# Input sizes of the original (the tensor shapes SAFA's `train_cvusa.py` feeds): 112x616 panorama and polar aerial;
# the non-polar aerial is 256x256.
PANORAMA_SIZE = (112, 616)
POLAR_SIZE = (112, 616)
PLAIN_AERIAL_SIZE = (256, 256)


def feature_map_size(size) -> tuple:
    """(H, W) of the map SAFA aggregates for an input image of `size`: five SAME 2x2/2 pools, ceil each time."""
    h, w = int(size[0]), int(size[1])
    for _ in range(5):  # four pools inside VGG16Tower, one extra in SAFA
        h, w = (h + 1) // 2, (w + 1) // 2
    return h, w


def spatial_aware_aggregate(local, importance):
    """SAFA eq. (3): global[b, d, c] = sum_i local[b, i, c] w[b, i, d], flattened d-major to [B, d*C].

    Args:
      local: [B, H, W, C] (or [B, H*W, C]) local features.
      importance: [B, H*W, d] importance weights.
    """
    channels = ops.shape(local)[-1]
    local = ops.reshape(local, (ops.shape(local)[0], -1, channels))
    pooled = ops.einsum("bic,bid->bdc", local, importance)
    return ops.reshape(pooled, (ops.shape(pooled)[0], -1))


@keras.saving.register_keras_serializable(package="cvm")
class SpatialAwareImportance(keras.layers.Layer):
    """SAFA's spatial-aware importance generator (Shi et al., NeurIPS 2019, Sec. 3.2, eqs. (1)-(2)).

    Paper: https://papers.nips.cc/paper/9199-spatial-aware-feature-aggregation-for-image-based-cross-view-geo-localization

    The channel mean of a [B, H, W, C] map gives a vector of the N = H*W positions; for each of the
    `maps` embeddings d, two linear maps with their own weights take it N -> floor(N/2) -> N, with
    no nonlinearity between them (as `spatial_aware` in spatial_net.py; the paper's figure draws
    an MLP but the code has none). Weights are truncated-normal (std 0.005), biases 0.1. The
    original declares L2/L1 regularizers (0.01) on them but never adds them to the loss (author,
    issue #7), so none is applied here either. N is read from the input shape when the layer is
    built, so the spatial size of the map must be static.

    Args:
      maps: number of importance maps d (8 in SAFA_8).

    Example:
    ```python
    layer = SpatialAwareImportance(maps=8)
    layer(np.zeros((2, 4, 20, 64), "float32")).shape  # (2, 80, 8)
    ```
    """

    def __init__(self, maps=8, **kwargs):
        super().__init__(**kwargs)
        if int(maps) < 1:
            raise CvmError(f"spatial_maps must be at least 1, got {maps}")
        self.maps = int(maps)

    def build(self, input_shape):
        height, width = input_shape[1], input_shape[2]
        if height is None or width is None:
            raise CvmError("SAFA's importance generator needs a feature map of known height and width "
                           "(its weights are [H*W, H*W/2, d]); build the model for fixed input sizes")
        positions = int(height) * int(width)
        half = positions // 2  # int(height * width / 2) in the original
        if half < 1:
            raise CvmError(f"SAFA needs a feature map of at least 2 positions, got {height}x{width}; "
                           "use larger input images (at least 33 pixels on one side)")
        self.positions, self.half = positions, half
        weight_init = keras.initializers.TruncatedNormal(mean=0.0, stddev=0.005)
        bias_init = keras.initializers.Constant(0.1)
        self.weights1 = self.add_weight(name="weights1", shape=(positions, half, self.maps), initializer=weight_init)
        self.biases1 = self.add_weight(name="biases1", shape=(1, half, self.maps), initializer=bias_init)
        self.weights2 = self.add_weight(name="weights2", shape=(half, positions, self.maps), initializer=weight_init)
        self.biases2 = self.add_weight(name="biases2", shape=(1, positions, self.maps), initializer=bias_init)

    def call(self, local):
        """[B, H, W, C] -> [B, H*W, maps] importance weights (SAFA eqs. (1)-(2))."""
        vec1 = ops.reshape(ops.mean(local, axis=-1), (-1, self.positions))
        vec2 = ops.einsum("bi,ijd->bjd", vec1, self.weights1) + self.biases1
        return ops.einsum("bjd,jid->bid", vec2, self.weights2) + self.biases2

    def compute_output_shape(self, input_shape):
        return (input_shape[0], int(input_shape[1]) * int(input_shape[2]), self.maps)

    def get_config(self):
        config = super().get_config()
        config.update(maps=self.maps)
        return config


@register("safa")
@keras.saving.register_keras_serializable(package="cvm")
class SAFA(VGGTwoTower):
    """SAFA retrieval model (Shi et al., NeurIPS 2019), `network_type="SAFA_8"` of spatial_net.py.

    Paper: https://papers.nips.cc/paper/9199-spatial-aware-feature-aggregation-for-image-based-cross-view-geo-localization

    Each view has its own VGG16 tower (scope VGG_grd / VGG_sat; every layer trainable, dropout
    1 - keep_prob after conv4_1..conv5_3), an extra 2x2/2 SAME max-pool and its own
    `SpatialAwareImportance` (spatial_grd / spatial_sat). The local features are pooled with each
    importance map and the [d, C] result is flattened d-major and L2-normalised: d * C = 4096 at
    full width with 8 maps. The importance weights have H*W inputs, so the model is built for fixed
    input sizes: 112x616 panorama and polar aerial (4x20 = 80 positions) or a 256x256 plain aerial
    (8x8 = 64 positions). Inputs are BGR minus the Caffe mean, as the original loaders.

    Args:
      keep_prob: dropout keep probability (rate = 1 - keep_prob), only with `training=True`.
      weights: None, "imagenet" or a local Keras VGG16 notop `.h5` file, copied into both towers
        (the original started from an "Initialize" checkpoint whose VGG16 part was ImageNet).
      backbone_width: channel multiplier of the VGG towers (1.0 is VGG16).
      freeze_blocks: leading VGG blocks kept frozen (0 as SAFA: every layer trains).
      init: VGG conv initialisation, "original" (Glorot kernels and biases) or "he"; the
        importance generator always uses the original's truncated-normal / 0.1 initialisers.
      spatial_maps: number of importance maps d (8 in SAFA_8).
      ground_size: (height, width) of the ground input the model is built for.
      aerial_size: (height, width) of the aerial input: (112, 616) polar, (256, 256) plain.

    Example:
    ```python
    model = SAFA(backbone_width=0.125, ground_size=(64, 256), aerial_size=(64, 64))
    out = model({"ground": np.zeros((2, 64, 256, 3), "float32"),
                 "aerial": np.zeros((2, 64, 64, 3), "float32")})
    out["aerial"].shape  # (2, 512) = 8 maps x 64 channels, unit rows
    ```
    """

    l2_normalized = True

    def __init__(self, freeze_blocks: int = 0, spatial_maps: int = 8, ground_size: tuple = PANORAMA_SIZE,
                 aerial_size: tuple = POLAR_SIZE, **kwargs):
        super().__init__(freeze_blocks=freeze_blocks, **kwargs)
        for name, size in (("ground_size", ground_size), ("aerial_size", aerial_size)):
            if size is None or len(size) != 2 or min(int(s) for s in size) <= 0:
                raise CvmError(f"SAFA needs a fixed {name} (height, width) to size its importance weights, "
                               f"got {size!r}")
        self.spatial_maps = int(spatial_maps)
        self.ground_size = tuple(int(s) for s in ground_size)
        self.aerial_size = tuple(int(s) for s in aerial_size)
        self.extra_pool = keras.layers.MaxPooling2D(2, 2, padding="same", name="extra_pool")
        self.ground_importance = SpatialAwareImportance(self.spatial_maps, name="spatial_grd")
        self.aerial_importance = SpatialAwareImportance(self.spatial_maps, name="spatial_sat")
        self.descriptor_dim = self.spatial_maps * self.ground_tower.output_channels
        self.build()
        self.load_pretrained_backbones()

    def build(self, input_shape=None):
        channels = self.ground_tower.output_channels
        for tower, importance, size in ((self.ground_tower, self.ground_importance, self.ground_size),
                                        (self.aerial_tower, self.aerial_importance, self.aerial_size)):
            tower.build()
            importance.build((None, *feature_map_size(size), channels))
        self.built = True

    def _encode(self, images, tower, importance, size_name, training):
        expected = getattr(self, size_name)
        got = tuple(images.shape[1:3])
        if None not in got and feature_map_size(got) != feature_map_size(expected):
            raise CvmError(f"SAFA was built for {size_name}={expected} (importance weights over "
                           f"{feature_map_size(expected)} positions) but got images of {got}; build it with "
                           f"{size_name}={got} (cvm train passes the image sizes of --preset/--{size_name})")
        local = self.extra_pool(tower(images, training=training))
        weights = importance(local)
        # Descriptors leave in float32 under mixed precision: the loss and ranking compare them closely.
        descriptor = ops.cast(spatial_aware_aggregate(local, weights), "float32")
        return l2_normalize(descriptor, axis=-1)

    def encode_ground(self, images, training=False):
        """[B, Hg, Wg, 3] ground panoramas -> [B, spatial_maps * C] unit descriptors."""
        return self._encode(images, self.ground_tower, self.ground_importance, "ground_size", training)

    def encode_aerial(self, images, training=False):
        """[B, Ha, Wa, 3] aerial images (polar or plain) -> [B, spatial_maps * C] unit descriptors."""
        return self._encode(images, self.aerial_tower, self.aerial_importance, "aerial_size", training)
