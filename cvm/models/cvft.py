"""CVFT (Shi et al., AAAI 2020) and its two baselines, ported from YujiaoShi/cross_view_localization_CVFT.

`script/ot_net.py` defines three networks, registered here as
    cvft            `CVFT`:     VGG16 towers, per-view 3x3/2 conv 512 -> 64, ground map resized to the
                                aerial map, optimal feature transport on the ground branch, flatten, L2;
    cvft_vgg_conv   `VGG_conv`: the same without the transport;
    cvft_vgg_gp     `VGG_gp`:   global max-pool of conv5_3 (512-d), L2.
"""

from __future__ import annotations

import typing

import keras
import numpy as np
from keras import ops

from cvm.errors import CvmError
from cvm.models.netvlad import l2_normalize
from cvm.models.registry import register
from cvm.models.sinkhorn import Sinkhorn, transport_map
from cvm.models.two_tower import VGGTwoTower
from cvm.models.vgg import conv_initializers

RESIZE_MODES = ("legacy", "half_pixel")
PAPER_AERIAL_SIZE = (256, 256)


def vgg_map_size(size: int) -> int:
    """Spatial size of the VGG16Tower output (four SAME 2x2/2 pools: ceil(size / 2) four times)."""
    for _ in range(4):
        size = (size + 1) // 2
    return size


def ot_map_size(size: int) -> int:
    """Spatial size after the tower and the 3x3 stride-2 SAME conv (256 -> 16 -> 8, 616 -> 39 -> 20)."""
    return (vgg_map_size(size) + 1) // 2


def _resize_coordinates(in_size, out_size: int, mode: str):
    """(lower index, upper index, fraction) of each output row/column of a bilinear resize."""
    in_float = ops.cast(in_size, "float32")
    scale = in_float / float(out_size)
    target = ops.arange(out_size, dtype="float32")
    if mode == "legacy":
        # TF1 resize_bilinear(align_corners=False, half_pixel_centers=False): source = target * in / out.
        source = target * scale
    else:
        # tf.image.resize (TF2) / half_pixel_centers=True: pixel centres aligned, clamped at the border.
        source = (target + 0.5) * scale - 0.5
    floor = ops.floor(source)
    fraction = source - floor
    last = in_float - 1.0
    lower = ops.cast(ops.clip(floor, 0.0, last), "int32")
    upper = ops.cast(ops.clip(floor + 1.0, 0.0, last), "int32")
    return lower, upper, fraction


def resize_bilinear(images, size, mode="legacy"):
    """Bilinear resize of NHWC `images` to `size` = (height, width), TF1 or TF2 pixel convention.

    mode "legacy" equals tf.compat.v1.image.resize_bilinear(align_corners=False), what CVFT's
    ot_net.py calls (source coordinate = target * in / out: the image shifts by half a pixel);
    "half_pixel" equals tf.image.resize(method="bilinear", antialias=False). Interpolates along the
    width first, then the height, in the order of TF's kernel, so results agree to float32 rounding.
    """
    if mode not in RESIZE_MODES:
        raise CvmError(f"resize_mode must be one of {RESIZE_MODES}, got {mode!r}")
    out_h, out_w = int(size[0]), int(size[1])
    shape = ops.shape(images)
    y0, y1, y_frac = _resize_coordinates(shape[1], out_h, mode)
    x0, x1, x_frac = _resize_coordinates(shape[2], out_w, mode)
    dtype = images.dtype
    y_frac = ops.cast(ops.reshape(y_frac, (1, out_h, 1, 1)), dtype)
    x_frac = ops.cast(ops.reshape(x_frac, (1, 1, out_w, 1)), dtype)
    top = ops.take(images, y0, axis=1)
    bottom = ops.take(images, y1, axis=1)
    top = ops.take(top, x0, axis=2) + (ops.take(top, x1, axis=2) - ops.take(top, x0, axis=2)) * x_frac
    bottom = ops.take(bottom, x0, axis=2) + (ops.take(bottom, x1, axis=2) - ops.take(bottom, x0, axis=2)) * x_frac
    return top + (bottom - top) * y_frac


class _CVFTBase(VGGTwoTower):
    """Options and towers shared by the three networks of ot_net.py.

    Args:
        aerial_size: (height, width) of the aerial input (an int: square); sets the map size the ground
            map is resized to, the OT matrix size and `descriptor_dim`.
    """

    def __init__(self, aerial_size: tuple = PAPER_AERIAL_SIZE, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(aerial_size, (tuple, list)):
            aerial_size = (aerial_size, aerial_size)
        aerial_size = tuple(int(v) for v in aerial_size)
        if len(aerial_size) != 2 or min(aerial_size) < 1:
            raise CvmError(f"aerial_size must be (height, width) of the aerial input, got {aerial_size}")
        self.aerial_size = aerial_size

    def _check_aerial(self, images):
        # The ground branch is sized for the aerial map of `aerial_size` (the OT matrix, the resize):
        # other aerial sizes would give descriptors of another length than the ground's.
        height, width = images.shape[1], images.shape[2]
        if height is None or width is None:
            return
        got = (ot_map_size(height), ot_map_size(width))
        want = (ot_map_size(self.aerial_size[0]), ot_map_size(self.aerial_size[1]))
        if got != want:
            raise CvmError(
                f"{self.name} was built for aerial_size={self.aerial_size} (a {want[0]}x{want[1]} map) but got "
                f"{height}x{width} aerial images; build it with aerial_size=({height}, {width}) (--aerial_size)"
            )


class _CVFTConvBase(_CVFTBase):
    """What `CVFTVGGConv` and `CVFT` share: the towers, the 3x3/2 reducing convs, resize and flatten.

    Args:
        ot_channels: output channels of `grd_conv` / `sat_conv` (64 in the original).
        resize_mode: "legacy" (TF1 `resize_bilinear`, the original) or "half_pixel" (tf.image.resize).
    """

    l2_normalized = True

    def __init__(self, ot_channels: int = 64, resize_mode: typing.Literal["legacy", "half_pixel"] = "legacy",
                 **kwargs):
        super().__init__(**kwargs)
        if resize_mode not in RESIZE_MODES:
            raise CvmError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
        if int(ot_channels) < 1:
            raise CvmError(f"ot_channels must be positive, got {ot_channels}")
        self.ot_channels = int(ot_channels)
        self.resize_mode = resize_mode
        self.map_size = (ot_map_size(self.aerial_size[0]), ot_map_size(self.aerial_size[1]))
        self.positions = self.map_size[0] * self.map_size[1]
        self.descriptor_dim = self.positions * self.ot_channels

        def reduce_conv(name):
            return keras.layers.Conv2D(self.ot_channels, 3, strides=2, padding="same", activation="relu", name=name,
                                       **conv_initializers(self.init))

        self.ground_conv = reduce_conv("grd_conv")
        self.aerial_conv = reduce_conv("sat_conv")

    def build(self, input_shape=None):
        shape = (None, None, None, self.ground_tower.output_channels)
        for tower, conv in ((self.ground_tower, self.ground_conv), (self.aerial_tower, self.aerial_conv)):
            tower.build()
            conv.build(shape)

    def _ground_map(self, images, training):
        local = self.ground_conv(self.ground_tower(images, training=training))
        return resize_bilinear(ops.cast(local, "float32"), self.map_size, self.resize_mode)

    def _flatten(self, feature_map):
        # Descriptors leave in float32 under mixed precision: the loss and ranking compare them closely.
        return l2_normalize(ops.reshape(ops.cast(feature_map, "float32"), (-1, self.descriptor_dim)), axis=-1)

    def encode_ground(self, images, training=False):
        """[B, Hg, Wg, 3] ground images -> [B, descriptor_dim] unit descriptors."""
        return self._flatten(self._ground_map(images, training))

    def encode_aerial(self, images, training=False):
        """[B, Ha, Wa, 3] aerial images (Ha, Wa as `aerial_size`) -> [B, descriptor_dim] unit descriptors."""
        self._check_aerial(images)
        return self._flatten(self.aerial_conv(self.aerial_tower(images, training=training)))



@register("cvft_vgg_conv")
@keras.saving.register_keras_serializable(package="cvm")
class CVFTVGGConv(_CVFTConvBase):
    """CVFT's `VGG_conv` baseline: CVFT without optimal feature transport (Shi et al., AAAI 2020).

    Paper: https://arxiv.org/abs/1907.05021 (code: YujiaoShi/cross_view_localization_CVFT, `ot_net.py`).

    Per view: VGG16 tower (conv1-3 frozen, dropout after conv4/conv5, no pool after conv5_3), a 3x3
    stride-2 SAME conv to `ot_channels` (64) with ReLU (`grd_conv` / `sat_conv`, Glorot kernel and
    bias as the original's Xavier). The ground map is bilinearly resized to the aerial map's size;
    both maps are flattened (row-major H, W, C) and L2-normalised. At the paper's sizes (ground
    112x616 -> 4x20, aerial 256x256 -> 8x8) the descriptor is 8 * 8 * 64 = 4096-d.

    Args:
        keep_prob: dropout keep probability (rate = 1 - keep_prob), used with `training=True`.
        weights: None, "imagenet" or a local Keras VGG16 notop `.h5`/`.weights.h5` path (both towers).
        backbone_width: channel multiplier of the VGG towers (1.0 is VGG16).
        freeze_blocks: leading VGG blocks kept frozen (3 as the original).
        init: "original" (Glorot kernels and biases) or "he" (He-normal kernels, zero biases).
        aerial_size: (height, width) of the aerial input; sets the map size the ground map is resized
            to, the OT matrix size and `descriptor_dim`.
        ot_channels: output channels of `grd_conv` / `sat_conv` (64 in the original).
        resize_mode: "legacy" (TF1 `resize_bilinear`, the original) or "half_pixel" (tf.image.resize).

    Example:
    ```python
    model = CVFTVGGConv(backbone_width=0.125, aerial_size=(64, 64))
    model({"ground": np.zeros((1, 32, 128, 3), "float32"),
           "aerial": np.zeros((1, 64, 64, 3), "float32")})["ground"].shape  # (1, 256)
    ```
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.build()
        self.load_pretrained_backbones()


@register("cvft")
@keras.saving.register_keras_serializable(package="cvm")
class CVFT(_CVFTConvBase):
    """CVFT: Cross-View Feature Transport (Shi, Yu, Liu, Zhang, Li; AAAI 2020).

    Paper: https://arxiv.org/abs/1907.05021 (code: YujiaoShi/cross_view_localization_CVFT, `ot_net.py`).

    `CVFTVGGConv` plus an optimal-transport module on the ground branch only (the aerial branch is
    untouched, as in the original). On the resized ground map F [B, h, w, C] with N = h * w:
      1. cost generation: 1x1 conv C -> 1 + ReLU, flattened to [B, N];
      2. a dense layer N -> N^2 (weights truncated-normal std 0.005, bias the flattened N x N
         identity), reshaped row-major to the cost C[b, i, o];
      3. P = `Sinkhorn(sinkhorn_iterations, sinkhorn_scale)`(C) (log space, rows then columns);
      4. transport Y[b, o, :] = sum_i P[b, i, o] F[b, i, :], flattened and L2-normalised.
    The original's L2 regulariser (0.01) on the dense layer is declared but never added to its loss;
    it is not applied here either. With the identity bias and scale -100 the initial plan is the
    "anti-identity" described in `Sinkhorn`. The cost conv has a single output unit behind a ReLU with
    a Glorot-uniform bias (|b| up to 1.7, as the original's Xavier bias): for many random inits the
    unit is negative at every position, the cost is exactly the FC bias, the plan starts as the
    anti-identity for every image, and no gradient reaches the cost conv or the FC weights (a dead
    ReLU, seen on 3 of 4 seeds at 1/8 width): only the FC bias learns, i.e. one plan for all images.
    The original starts from its Initial_model checkpoint, whose values decide this; `init="he"`
    (zero bias) gave a live cost unit on each of the 4 seeds tried.

    Args:
        sinkhorn_iterations: Sinkhorn row/column normalisation pairs (20 in the original).
        sinkhorn_scale: log_alpha = scale * cost (-100 in the original).
        **kwargs: the options of `CVFTVGGConv` (keep_prob, weights, backbone_width, freeze_blocks,
            init, aerial_size, ot_channels, resize_mode).

    Example:
    ```python
    model = CVFT(backbone_width=0.125, aerial_size=(64, 64))  # 2x2 aerial map: N = 4
    model.encode_ground(np.zeros((1, 32, 128, 3), "float32")).shape  # (1, 256)
    ```
    """

    def __init__(self, sinkhorn_iterations: int = 20, sinkhorn_scale: float = -100.0, **kwargs):
        super().__init__(**kwargs)
        if int(sinkhorn_iterations) < 1:
            raise CvmError(f"sinkhorn_iterations must be at least 1, got {sinkhorn_iterations}")
        self.sinkhorn_iterations = int(sinkhorn_iterations)
        self.sinkhorn_scale = float(sinkhorn_scale)
        n = self.positions
        # Layer names are the original's variable scopes (name + 'ot_conv' with name='ot_grd_branch').
        self.cost_conv = keras.layers.Conv2D(1, 1, activation="relu", name="ot_grd_branchot_conv",
                                             **conv_initializers(self.init))
        self.cost_fc = keras.layers.Dense(
            n * n,
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.005),
            bias_initializer=keras.initializers.Constant(np.eye(n, dtype="float32").reshape(-1)),
            name="ot_grd_branchot_fc",
            dtype="float32",  # the cost is multiplied by -100 next: keep float32 under mixed precision
        )
        self.sinkhorn = Sinkhorn(self.sinkhorn_iterations, self.sinkhorn_scale, name="sinkhorn", dtype="float32")
        self.build()
        self.load_pretrained_backbones()

    def build(self, input_shape=None):
        super().build(input_shape)
        self.cost_conv.build((None, None, None, self.ot_channels))
        self.cost_fc.build((None, self.positions))

    def transport_plan(self, ground_map):
        """[B, h, w, C] resized ground map -> [B, N, N] transport plan P[b, i, o] (CVFT eq. 5-6)."""
        cost = ops.reshape(ops.cast(self.cost_conv(ground_map), "float32"), (-1, self.positions))
        cost = ops.reshape(self.cost_fc(cost), (-1, self.positions, self.positions))
        return self.sinkhorn(cost)

    def encode_ground(self, images, training=False):
        """[B, Hg, Wg, 3] ground images -> [B, descriptor_dim] unit descriptors (after transport)."""
        ground_map = self._ground_map(images, training)
        return self._flatten(transport_map(ground_map, self.transport_plan(ground_map)))



@register("cvft_vgg_gp")
@keras.saving.register_keras_serializable(package="cvm")
class CVFTVGGGP(_CVFTBase):
    """CVFT's `VGG_gp` baseline: global max-pooling of each view's conv5_3 (Shi et al., AAAI 2020).

    Paper: https://arxiv.org/abs/1907.05021 (code: YujiaoShi/cross_view_localization_CVFT, `ot_net.py`).

    Per view: VGG16 tower (as in `CVFT`), max over all positions -> 512 * backbone_width values,
    L2-normalised. Any input size.

    Options: those of `VGGTwoTower` and `aerial_size`, as `CVFTVGGConv` (`aerial_size` is only recorded
    here: the descriptor does not depend on it).

    Example:
    ```python
    model = CVFTVGGGP(backbone_width=0.125)
    model.encode_aerial(np.zeros((1, 64, 64, 3), "float32")).shape  # (1, 64)
    ```
    """

    l2_normalized = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.descriptor_dim = self.ground_tower.output_channels
        self.build()
        self.load_pretrained_backbones()

    def build(self, input_shape=None):
        self.ground_tower.build()
        self.aerial_tower.build()

    def _encode(self, images, tower, training):
        pooled = ops.max(ops.cast(tower(images, training=training), "float32"), axis=(1, 2))
        return l2_normalize(pooled, axis=-1)

    def encode_ground(self, images, training=False):
        """[B, Hg, Wg, 3] ground images -> [B, 512 * backbone_width] unit descriptors."""
        return self._encode(images, self.ground_tower, training)

    def encode_aerial(self, images, training=False):
        """[B, Ha, Wa, 3] aerial images -> [B, 512 * backbone_width] unit descriptors."""
        return self._encode(images, self.aerial_tower, training)
