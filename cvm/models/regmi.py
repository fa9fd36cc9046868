"""Regmi & Shah, ICCV 2019: the multi-scale encoder, the two-stream baseline, joint feature learning, fusion.

Paper: "Bridging the Domain Gap for Ground-to-Aerial Image Matching", https://arxiv.org/abs/1904.11045
Original code: github.com/kregmi/cross-view-image-matching (two_stream/, joint_feature_learning/,
feature_fusion/; seeds.md §3). Variable names follow the original TF1 scopes (VGG_grd, VGG_sat,
VGG_grd_seg, dim_reduction/fc1, dim_reduction/fc2, fc/fc1, fc/fc2) so that `cvm.export.tf1_regmi`
can load the authors' checkpoints.

The fully connected layers take the flattened conv maps, so their input size depends on the image
size: every model here takes `ground_size` and `aerial_size` (defaults: the paper's 224x1232 panorama
and 512x512 aerial) and checks the images it is given against them.
"""

from __future__ import annotations

import math
import typing

import keras
from keras import ops

from cvm.errors import CvmError
from cvm.models.netvlad import l2_normalize
from cvm.models.registry import register
from cvm.models.two_tower import TwoTowerModel, checked_size, dropout_rate, keep_probability
from cvm.models.vgg import conv_initializers, scaled_channels

# Channels of conv1..conv8 at width 1 (VGG.py eight_layer_conv_multiscale).
CHANNELS = (64, 128, 256, 512, 512, 512, 512, 512)
# conv6, conv7 and conv8 are concatenated by the multi-scale encoder; conv8 alone otherwise.
MULTISCALE_LEVELS = (6, 7, 8)
PAPER_GROUND_SIZE = (224, 1232)
PAPER_AERIAL_SIZE = (512, 512)
INITS = ("original", "he")


def _flatten(x):
    """Row-major flatten of an NHWC map over (H, W, C), as tf.layers.flatten; static length when known."""
    dims = tuple(x.shape[1:])
    if all(d is not None for d in dims):
        return ops.reshape(x, (-1, math.prod(int(d) for d in dims)))
    return ops.reshape(x, (ops.shape(x)[0], -1))


def _fc_initializers(init: str, bias: float) -> dict:
    if init not in INITS:
        raise CvmError(f"init must be one of {INITS}, got {init!r}")
    if init == "original":  # siamese_fc.py fc_layer: truncated normal std 0.005, constant bias
        return dict(kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.005),
                    bias_initializer=keras.initializers.Constant(bias))
    return dict(kernel_initializer="glorot_uniform", bias_initializer="zeros")


@keras.saving.register_keras_serializable(package="cvm")
class RegmiEncoder(keras.layers.Layer):
    """The 8-layer multi-scale encoder of Regmi & Shah (ICCV 2019), trained from scratch.

    Paper: https://arxiv.org/abs/1904.11045 (Sec. 3.2, Fig. 3); code: `VGG.py`
    `eight_layer_conv_multiscale` (the class is misleadingly named VGG16 there).

    Eight 4x4 stride-2 SAME convolutions with ReLU, no batch normalisation, no pooling, channels
    64, 128, 256, 512 x 5 (times `width`); dropout after conv6, conv7 and conv8. The multi-scale
    output concatenates the NHWC-flattened conv6, conv7 and conv8 maps (43,008 values for a 512x512
    aerial, 53,760 for a 224x1232 panorama); `multiscale=False` returns the flattened conv8 map
    only (the paper's single-scale ablation; the original's single-scale function also used a 3x3
    conv7, which is not reproduced: the layers stay identical so that only the aggregation differs).

    Args:
        width: channel multiplier (1.0 is the paper).
        dropout_rate: 1 - keep_prob (0.5 in training in the original); active with training=True.
        multiscale: concatenate conv6-8 (True) or use conv8 alone.
        init: "original" (Xavier-uniform kernels *and* biases, as `tf.contrib.layers.xavier_initializer`
            on both) or "he" (He-normal kernels, zero biases).

    Example:
    ```python
    encoder = RegmiEncoder(width=0.0625)
    encoder.output_length((64, 64))  # 4*... flattened conv6-8 length at a 64x64 input
    ```
    """

    def __init__(self, width=1.0, dropout_rate=0.0, multiscale=True, init="original", **kwargs):
        super().__init__(**kwargs)
        self.width = float(width)
        self.dropout_rate = float(dropout_rate)
        self.multiscale = bool(multiscale)
        self.init = init
        initializers = conv_initializers(init)
        self.channels = tuple(scaled_channels(c, self.width) for c in CHANNELS)
        self.convs = [
            keras.layers.Conv2D(c, 4, strides=2, padding="same", activation="relu", name=f"conv{i + 1}",
                                **initializers)
            for i, c in enumerate(self.channels)
        ]
        # String keys: a SavedModel export cannot track a dict keyed by ints.
        self.dropouts = {f"conv{level}": keras.layers.Dropout(self.dropout_rate, name=f"conv{level}_dropout")
                         for level in (6, 7, 8)}

    @property
    def levels(self) -> tuple:
        return MULTISCALE_LEVELS if self.multiscale else (8,)

    def output_length(self, image_size) -> int:
        """Length of the flattened output for an input of `image_size` (height, width)."""
        h, w = checked_size(image_size, "image_size")
        total = 0
        for level in range(1, 9):
            h, w = math.ceil(h / 2), math.ceil(w / 2)  # SAME, stride 2
            if level in self.levels:
                total += h * w * self.channels[level - 1]
        return total

    def build(self, input_shape=None):
        channels = 3
        for conv in self.convs:
            conv.build((None, None, None, channels))
            channels = conv.filters
        self.built = True

    def call(self, images, training=None):
        x = images
        kept = []
        for level, conv in enumerate(self.convs, start=1):
            x = conv(x)
            if f"conv{level}" in self.dropouts:
                x = self.dropouts[f"conv{level}"](x, training=training)
            if level in self.levels:
                kept.append(_flatten(x))
        return kept[0] if len(kept) == 1 else ops.concatenate(kept, axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(width=self.width, dropout_rate=self.dropout_rate, multiscale=self.multiscale, init=self.init)
        return config


class _RegmiImageModel(TwoTowerModel):
    """What the two-stream and joint models share: options, the ground and aerial streams.

    Args:
        keep_prob: dropout keep probability after conv6-8 (0.5 in the original's training).
        output_dim: descriptor size (1000).
        backbone_width: channel multiplier of the encoders.
        multiscale: conv6-8 concatenated (True) or conv8 only (the ablation).
        init: "original" or "he" (see `RegmiEncoder`; "he" also gives the FCs Glorot weights, zero bias).
        ground_size, aerial_size: (height, width) of the images the FCs are built for.
    """

    def __init__(self, keep_prob: float = 0.5, output_dim: int = 1000, backbone_width: float = 1.0,
                 multiscale: bool = True, init: typing.Literal["original", "he"] = "original",
                 ground_size: tuple = PAPER_GROUND_SIZE, aerial_size: tuple = PAPER_AERIAL_SIZE, **kwargs):
        super().__init__(**kwargs)
        keep_prob = keep_probability(keep_prob)
        if int(output_dim) < 1:
            raise CvmError(f"output_dim must be positive, got {output_dim}")
        self.keep_prob = float(keep_prob)
        self.output_dim = int(output_dim)
        self.descriptor_dim = self.output_dim
        self.backbone_width = float(backbone_width)
        self.multiscale = bool(multiscale)
        self.init = init
        self.ground_size = checked_size(ground_size, "ground_size")
        self.aerial_size = checked_size(aerial_size, "aerial_size")
        encoder = dict(width=self.backbone_width, dropout_rate=dropout_rate(self.keep_prob),
                       multiscale=self.multiscale, init=init)
        self.ground_encoder = RegmiEncoder(name="VGG_grd", **encoder)
        self.aerial_encoder = RegmiEncoder(name="VGG_sat", **encoder)
        fc = _fc_initializers(init, 0.1)
        # siamese_fc.py: fc1 reduces the aerial stream, fc2 the ground stream (separate weights).
        self.aerial_fc = keras.layers.Dense(self.output_dim, name="fc1", **fc)
        self.ground_fc = keras.layers.Dense(self.output_dim, name="fc2", **fc)

    def build(self, input_shape=None):
        self.ground_encoder.build()
        self.aerial_encoder.build()
        self.ground_fc.build((None, self.ground_encoder.output_length(self.ground_size)))
        self.aerial_fc.build((None, self.aerial_encoder.output_length(self.aerial_size)))
        self.built = True

    def _check(self, images, expected, view, option):
        shape = tuple(images.shape[1:3])
        if None not in shape and tuple(int(s) for s in shape) != expected:
            raise CvmError(f"{type(self).__name__} was built for {view} images of {expected[0]}x{expected[1]} "
                           f"(its fully connected layer depends on the size) but got {shape[0]}x{shape[1]}: "
                           f"build it with {option}={tuple(int(s) for s in shape)} or resize the images")

    def _descriptor(self, features, fc):
        return l2_normalize(ops.cast(fc(features), "float32"), axis=-1)

    def encode_ground(self, images, training=False):
        """[B, Hg, Wg, 3] panoramas -> [B, output_dim] unit descriptors."""
        self._check(images, self.ground_size, "ground", "ground_size")
        return self._descriptor(self.ground_encoder(images, training=training), self.ground_fc)

    def encode_aerial(self, images, training=False):
        """[B, Ha, Wa, 3] aerial images -> [B, output_dim] unit descriptors."""
        self._check(images, self.aerial_size, "aerial", "aerial_size")
        return self._descriptor(self.aerial_encoder(images, training=training), self.aerial_fc)



@register("regmi_two_stream", fixed_name=True)
@keras.saving.register_keras_serializable(package="cvm")
class RegmiTwoStream(_RegmiImageModel):
    """The two-stream baseline of Regmi & Shah (ICCV 2019): one multi-scale encoder and FC per view.

    Paper: https://arxiv.org/abs/1904.11045 (Table 3, "two-stream"); code: `two_stream/src/my_net.py`.

    Ground panorama -> `VGG_grd` encoder -> fc2 -> L2; aerial -> `VGG_sat` encoder -> fc1 -> L2. The
    encoders and the FC layers are not shared. FCs: truncated-normal std 0.005 weights, bias 0.1
    (init="original"), linear.

    Args: as `_RegmiImageModel` (keep_prob, output_dim, backbone_width, multiscale, init, ground_size,
    aerial_size).

    Example:
    ```python
    model = RegmiTwoStream(backbone_width=0.0625, output_dim=16, ground_size=(32, 128), aerial_size=(64, 64))
    model({"ground": np.zeros((2, 32, 128, 3), "float32"), "aerial": np.zeros((2, 64, 64, 3), "float32")})
    ```
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.build()


@register("regmi_joint", fixed_name=True)
@keras.saving.register_keras_serializable(package="cvm")
class RegmiJoint(_RegmiImageModel):
    """Joint feature learning of Regmi & Shah (ICCV 2019): ground, aerial and synthesized-aerial streams.

    Paper: https://arxiv.org/abs/1904.11045 (Sec. 3.2, Fig. 3); code: `joint_feature_learning/src/my_net.py`.

    Three separate encoders (`VGG_grd`, `VGG_sat`, `VGG_grd_seg`); the synthesized aerial (the X-Fork
    output for the panorama) reuses the real aerial's fc1. The model maps {"ground", "aerial"} to
    their descriptors like every retrieval model; with an extra "synthesized" input [B, Ha, Wa, 3] it
    also returns the "synthesized" descriptor (used by the joint loss and by the descriptor dump).

    Args: as `RegmiTwoStream`.

    Example:
    ```python
    model = RegmiJoint(backbone_width=0.0625, output_dim=16, ground_size=(32, 128), aerial_size=(64, 64))
    out = model({"ground": g, "aerial": a, "synthesized": s})  # keys ground, aerial, synthesized
    ```
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        encoder = dict(width=self.backbone_width, dropout_rate=dropout_rate(self.keep_prob),
                       multiscale=self.multiscale, init=self.init)
        self.synthesized_encoder = RegmiEncoder(name="VGG_grd_seg", **encoder)
        self.build()

    def build(self, input_shape=None):
        super().build(input_shape)
        self.synthesized_encoder.build()

    def encode_synthesized(self, images, training=False):
        """[B, Ha, Wa, 3] synthesized aerial images -> [B, output_dim] unit descriptors (shares fc1)."""
        self._check(images, self.aerial_size, "synthesized aerial", "aerial_size")
        return self._descriptor(self.synthesized_encoder(images, training=training), self.aerial_fc)

    def call(self, inputs, training=None):
        out = super().call(inputs, training=training)
        if "synthesized" in inputs:
            out["synthesized"] = self.encode_synthesized(inputs["synthesized"], training=training)
        return out


@register("regmi_fusion", fixed_name=True)
@keras.saving.register_keras_serializable(package="cvm")
class RegmiFusion(TwoTowerModel):
    """Feature fusion of Regmi & Shah (ICCV 2019): one linear layer per view on the joint descriptors.

    Paper: https://arxiv.org/abs/1904.11045 (Sec. 3.3); code: `feature_fusion/src/siamese_fc.py`
    `one_layer_siamese_fc`.

    Inputs are *descriptors*, not images: "ground" is concat(ground descriptor, synthesized-aerial
    descriptor) [B, 2 * input_dim] (in that order, as `input_data.py`), "aerial" is the aerial
    descriptor [B, input_dim], both produced by a trained `RegmiJoint` (`cvm.training.fusion` dumps
    them). ground -> fc2 (2000 -> 1000) -> L2; aerial -> fc1 (1000 -> 1000) -> L2; truncated-normal
    std 0.005 weights, bias 0.01 (init="original").

    Args:
        input_dim: size of each joint descriptor (1000).
        output_dim: fused descriptor size (1000).
        init: "original" or "he" (Glorot weights, zero bias).

    Example:
    ```python
    model = RegmiFusion(input_dim=16, output_dim=16)
    model({"ground": np.zeros((4, 32), "float32"), "aerial": np.zeros((4, 16), "float32")})["ground"].shape
    ```
    """

    def __init__(self, input_dim: int = 1000, output_dim: int = 1000,
                 init: typing.Literal["original", "he"] = "original", **kwargs):
        super().__init__(**kwargs)
        if int(input_dim) < 1 or int(output_dim) < 1:
            raise CvmError(f"input_dim and output_dim must be positive, got {input_dim} and {output_dim}")
        self.input_dim = int(input_dim)
        self.output_dim = int(output_dim)
        self.descriptor_dim = self.output_dim
        self.init = init
        fc = _fc_initializers(init, 0.01)
        self.aerial_fc = keras.layers.Dense(self.output_dim, name="fc1", **fc)
        self.ground_fc = keras.layers.Dense(self.output_dim, name="fc2", **fc)
        self.build()

    def build(self, input_shape=None):
        self.aerial_fc.build((None, self.input_dim))
        self.ground_fc.build((None, 2 * self.input_dim))
        self.built = True

    def _check(self, x, expected, view):
        if x.shape[-1] is not None and int(x.shape[-1]) != expected:
            raise CvmError(f"RegmiFusion with input_dim={self.input_dim} takes {view} descriptors of "
                           f"{expected} values, got {int(x.shape[-1])}: set input_dim to the joint model's "
                           "output_dim (ground = concat(ground, synthesized))")

    def encode_ground(self, descriptors, training=False):
        """[B, 2 * input_dim] concat(ground, synthesized) joint descriptors -> [B, output_dim] unit rows."""
        self._check(descriptors, 2 * self.input_dim, "ground")
        return l2_normalize(ops.cast(self.ground_fc(descriptors), "float32"), axis=-1)

    def encode_aerial(self, descriptors, training=False):
        """[B, input_dim] aerial joint descriptors -> [B, output_dim] unit rows."""
        self._check(descriptors, self.input_dim, "aerial")
        return l2_normalize(ops.cast(self.aerial_fc(descriptors), "float32"), axis=-1)
