"""Encoder-decoder generators of the cross-view synthesis GANs (X-Fork, X-Seq, X-Pix2pix, CVUSA fork).

Regmi & Borji, "Cross-View Image Synthesis using Conditional GANs", CVPR 2018
(https://arxiv.org/abs/1803.03396), and the pano->aerial / aerial->pano fork of Regmi & Shah,
"Bridging the Domain Gap for Ground-to-Aerial Image Matching", ICCV 2019
(https://arxiv.org/abs/1904.11045). Ported from the Torch originals (`models.lua` of
kregmi/cross-view-image-synthesis and of kregmi/cross-view-image-matching/xview-synthesis).

One class covers every variant: a plain encoder-decoder (no U-Net skips, as `encoder_decoder`),
optionally forking its last two decoder layers into an image head and a segmentation head:

* encoder: conv 4x4 stride 2 down to `bottleneck_size`; the first conv has no BN, every other is
  preceded by LeakyReLU(0.2) and followed by BN; channels ngf * min(2^i, 8);
* bottleneck: ReLU, then (CVUSA) a per-channel reshape, e.g. each channel's 2x8 map to 4x4;
* decoder: ConvT 4x4 stride 2, BN, dropout in the first three layers, ReLU before each ConvT;
  channels ngf*8 ... ngf*4, ngf*2, ngf, out; the last two layers are the head(s); tanh.

Depth follows the sizes (log2 of input / bottleneck and of target / bottleneck), so the paper
networks and small test networks (e.g. 32x128 -> 64x64, ngf 8) come from the same code.
"""

from __future__ import annotations

import math

import keras
from keras import ops

BN_EPSILON = 1e-5  # Torch's default (Keras' is 1e-3)
BN_MOMENTUM = 0.9  # Torch's momentum 0.1 is the weight of the new batch: Keras' 0.9


def conv_init():
    """N(0, 0.02), the Torch `weights_init` of the originals."""
    return keras.initializers.RandomNormal(0.0, 0.02)


def batch_norm(name: str) -> keras.layers.BatchNormalization:
    """BatchNorm with Torch's epsilon / momentum and gamma ~ N(1, 0.02), beta = 0 (`weights_init`)."""
    return keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM,
                                           gamma_initializer=keras.initializers.RandomNormal(1.0, 0.02),
                                           name=name)


def _log2_ratio(big: int, small: int, what: str) -> int:
    ratio = big / small
    steps = int(round(math.log2(ratio))) if ratio >= 1 else -1
    if steps < 0 or 2 ** steps != ratio:
        raise ValueError(f"{what}: {big} is not {small} times a power of two")
    return steps


def _pair(value) -> tuple:
    return tuple(int(v) for v in value)


@keras.saving.register_keras_serializable(package="cvm")
class EncoderDecoderGenerator(keras.Model):
    """Encoder-decoder generator without skips; one or two (X-Fork) output heads.

    Regmi & Borji CVPR 2018 (https://arxiv.org/abs/1803.03396) Fig. 2; Regmi & Shah ICCV 2019 Fig. 3.

    Args:
      input_size: (H, W) of the input image.
      input_channels: 3, or 4 with the Canny edge map channel (ICCV19 `_with_edgemap` variant).
      target_size: (H, W) of the generated image(s).
      ngf: width of the first encoder layer (64 in the papers).
      bottleneck_size: (h, w) the encoder reduces the input to ((1, 1) for the 256x256 models,
        (2, 8) for a 256x1024 panorama, (4, 4) for a 512x512 aerial).
      reshape_to: (h', w') the bottleneck is reshaped to, per channel and row-major (NCHW memory order,
        as Torch's nn.Reshape), or None. (4, 4) for pano->aerial, (2, 8) for aerial->pano.
      heads: output names; ("image",) for a plain generator, ("image", "segmentation") for X-Fork.
      head_channels: channels of each head (3 and 3).
      fork_relu: apply the ReLU between the last shared BN and each head's first ConvT. True in the
        CVPR18 X-Fork; the ICCV19 `forkG_cvusa` lacks it (False keeps that original quirk).
      dropout: dropout rate of the first `dropout_layers` shared decoder layers (0.5, as the originals;
        never in the heads).
      dropout_layers: how many leading decoder layers have dropout (3).
      edge_bias: give a bias to the convs not followed by BN (first encoder conv, last head ConvT).
        False (default): the Torch originals zeroed every conv bias before each forward, so trained
        models had none; True is the ordinary choice. Convs followed by BN never have a bias.

    Returns from `call`: a dict {head name: float32 [B, Ht, Wt, C] in [-1, 1]}.

    Example:
      >>> g = EncoderDecoderGenerator(input_size=(32, 128), target_size=(64, 64), ngf=8,
      ...                             bottleneck_size=(2, 8), reshape_to=(4, 4),
      ...                             heads=("image", "segmentation"), fork_relu=False)
      >>> {k: tuple(v.shape) for k, v in g(np.zeros((1, 32, 128, 3), "float32")).items()}
      {'image': (1, 64, 64, 3), 'segmentation': (1, 64, 64, 3)}
    """

    def __init__(self, input_size=(256, 256), input_channels=3, target_size=(256, 256), ngf=64,
                 bottleneck_size=(1, 1), reshape_to=None, heads=("image",), head_channels=None,
                 fork_relu=True, dropout=0.5, dropout_layers=3, edge_bias=False, **kwargs):
        super().__init__(**kwargs)
        self.input_size = _pair(input_size)
        self.input_channels = int(input_channels)
        self.target_size = _pair(target_size)
        self.ngf = int(ngf)
        self.bottleneck_size = _pair(bottleneck_size)
        self.reshape_to = None if reshape_to is None else _pair(reshape_to)
        self.heads = tuple(heads)
        self.head_channels = tuple(int(c) for c in (head_channels or [3] * len(self.heads)))
        self.fork_relu = bool(fork_relu)
        self.dropout = float(dropout)
        self.dropout_layers = int(dropout_layers)
        self.edge_bias = bool(edge_bias)
        if len(self.head_channels) != len(self.heads) or not self.heads:
            raise ValueError(f"heads {self.heads} and head_channels {self.head_channels} must match")

        n_down = _log2_ratio(self.input_size[0], self.bottleneck_size[0], "input height / bottleneck")
        if _log2_ratio(self.input_size[1], self.bottleneck_size[1], "input width / bottleneck") != n_down:
            raise ValueError(f"input {self.input_size} and bottleneck {self.bottleneck_size} differ in aspect")
        start = self.reshape_to or self.bottleneck_size
        if start[0] * start[1] != self.bottleneck_size[0] * self.bottleneck_size[1]:
            raise ValueError(f"cannot reshape a {self.bottleneck_size} bottleneck to {start}")
        n_up = _log2_ratio(self.target_size[0], start[0], "target height / bottleneck")
        if _log2_ratio(self.target_size[1], start[1], "target width / bottleneck") != n_up:
            raise ValueError(f"target {self.target_size} and bottleneck {start} differ in aspect")
        if n_down < 1 or n_up < 2:
            raise ValueError(f"need at least 1 encoder and 2 decoder layers, got {n_down} and {n_up}")
        self.n_down, self.n_up = n_down, n_up

        ngf = self.ngf
        self.encoder = []  # (conv, bn or None)
        for i in range(n_down):
            filters = ngf * min(2 ** i, 8)
            conv = keras.layers.Conv2D(filters, 4, strides=2, padding="same", use_bias=self.edge_bias if i == 0
                                       else False, kernel_initializer=conv_init(), name=f"enc{i + 1}_conv")
            self.encoder.append((conv, batch_norm(f"enc{i + 1}_bn") if i > 0 else None))
        self.reshape = keras.layers.Reshape((*start, ngf * min(2 ** (n_down - 1), 8)), name="bottleneck_reshape") \
            if self.reshape_to else None

        def decoder_filters(j):  # ngf*8 ... ngf*4, ngf*2, ngf, then the output channels
            return ngf * min(8, 2 ** (n_up - 2 - j))

        n_trunk = n_up - 2
        self.trunk = []  # (deconv, bn, dropout or None)
        for j in range(n_trunk):
            drop = keras.layers.Dropout(self.dropout, name=f"dec{j + 1}_dropout") \
                if j < self.dropout_layers and self.dropout > 0 else None
            self.trunk.append((keras.layers.Conv2DTranspose(decoder_filters(j), 4, strides=2, padding="same",
                                                            use_bias=False, kernel_initializer=conv_init(),
                                                            name=f"dec{j + 1}_deconv"),
                               batch_norm(f"dec{j + 1}_bn"), drop))
        self.head_layers = {}
        for name, channels in zip(self.heads, self.head_channels):
            self.head_layers[name] = (
                keras.layers.Conv2DTranspose(decoder_filters(n_trunk), 4, strides=2, padding="same", use_bias=False,
                                             kernel_initializer=conv_init(), name=f"{name}_deconv1"),
                batch_norm(f"{name}_bn1"),
                keras.layers.Conv2DTranspose(channels, 4, strides=2, padding="same", use_bias=self.edge_bias,
                                             kernel_initializer=conv_init(), name=f"{name}_deconv2"),
                # float32 outputs under mixed precision: the L1 / GAN losses and the written images.
                keras.layers.Activation("tanh", dtype="float32", name=f"{name}_tanh"),
            )
        self.build((None, *self.input_size, self.input_channels))

    def build(self, input_shape):
        shape = tuple(input_shape)
        for conv, bn in self.encoder:
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            if bn is not None:
                bn.build(shape)
        if self.reshape is not None:
            self.reshape.build(shape)
            shape = self.reshape.compute_output_shape(shape)
        for deconv, bn, drop in self.trunk:
            deconv.build(shape)
            shape = deconv.compute_output_shape(shape)
            bn.build(shape)
            if drop is not None:
                drop.build(shape)
        for deconv1, bn1, deconv2, tanh in self.head_layers.values():
            deconv1.build(shape)
            inner = deconv1.compute_output_shape(shape)
            bn1.build(inner)
            deconv2.build(inner)
            tanh.build(deconv2.compute_output_shape(inner))
        self.built = True

    def encode(self, images, training=False):
        """The bottleneck features after the ReLU and reshape: [B, h', w', C]."""
        x = images
        for i, (conv, bn) in enumerate(self.encoder):
            if i > 0:
                x = ops.leaky_relu(x, 0.2)
            x = conv(x)
            if bn is not None:
                x = bn(x, training=training)
        x = ops.relu(x)
        return self.reshape(x) if self.reshape is not None else x

    def call(self, images, training=False):
        x = self.encode(images, training=training)
        for j, (deconv, bn, drop) in enumerate(self.trunk):
            if j > 0:
                x = ops.relu(x)
            x = bn(deconv(x), training=training)
            if drop is not None:
                x = drop(x, training=training)
        if self.trunk and self.fork_relu:
            x = ops.relu(x)
        outputs = {}
        for name, (deconv1, bn1, deconv2, tanh) in self.head_layers.items():
            y = bn1(deconv1(x), training=training)
            outputs[name] = tanh(deconv2(ops.relu(y)))
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(input_size=self.input_size, input_channels=self.input_channels, target_size=self.target_size,
                      ngf=self.ngf, bottleneck_size=self.bottleneck_size, reshape_to=self.reshape_to,
                      heads=self.heads, head_channels=self.head_channels, fork_relu=self.fork_relu,
                      dropout=self.dropout, dropout_layers=self.dropout_layers, edge_bias=self.edge_bias)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("heads", "head_channels"):
            if config.get(key) is not None:
                config[key] = tuple(config[key])
        return cls(**config)
