"""VGG16 convolutional tower as CVM-Net and CVFT use it (no last pool, dropout after conv4/conv5)."""

from __future__ import annotations

import os

import keras
from keras import ops

from cvm.errors import CvmError

# Initialisations: "original" as the TF1 code (Xavier kernels *and* biases); "he" (He-normal kernels,
# zero biases) keeps the signal alive through a randomly initialised tower, so that a from-scratch
# run (no ImageNet weights, e.g. the quickstart) gives input-dependent descriptors from step one.
INITS = ("original", "he")


def conv_initializers(init: str) -> dict:
    if init not in INITS:
        raise CvmError(f"init must be one of {INITS}, got {init!r}")
    if init == "he":
        return {"kernel_initializer": "he_normal", "bias_initializer": "zeros"}
    return {"kernel_initializer": "glorot_uniform", "bias_initializer": "glorot_uniform"}


# (block, number of convs, channels at width 1): VGG16 configuration "D".
VGG16_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))


def pad_azimuth(x, n: int = 1):
    """Circular padding of n columns along the width (azimuth) and zero padding of n rows (DSM, `VGG_cir.py`).

    [B, H, W, C] -> [B, H + 2n, W + 2n, C]: the last n columns are put before the first and the first n after
    the last (`warp_pad_columns`), so that a VALID 3x3 conv sees a polar map as the closed ring it is.
    """
    if n == 0:
        return x
    x = ops.concatenate([x[:, :, -n:], x, x[:, :, :n]], axis=2)
    return ops.pad(x, [[0, 0], [n, n], [0, 0], [0, 0]])


def scaled_channels(channels: int, width: float) -> int:
    """Channel count of a conv layer in a tower whose widths are multiplied by `width`."""
    return max(1, int(round(channels * width)))


@keras.saving.register_keras_serializable(package="cvm")
class VGG16Tower(keras.layers.Layer):
    """VGG16 conv1_1..conv5_3 feature extractor (Simonyan & Zisserman, https://arxiv.org/abs/1409.1556).

    3x3 stride-1 SAME convolutions with ReLU; 2x2/2 SAME max-pooling after conv1_2, conv2_2,
    conv3_3 and conv4_3 and *not* after conv5_3, so the output has stride 16 (a 512x512 aerial
    gives a 32x32x512 map). As in CVM-Net (`VGG.py`), dropout follows each of conv4_1..conv5_3
    and the first `freeze_blocks` blocks are not trainable. Conv kernels and biases are
    Glorot-uniform initialised: the original Xavier-initialised the biases too.

    Args:
        width: channel multiplier (1.0 is VGG16; 0.125 gives 8, 16, 32, 64, 64 channels).
        freeze_blocks: number of leading blocks (0..5) whose convs are frozen.
        dropout_rate: dropout rate after each conv4_x and conv5_x (1 - keep_prob of the original).
        input_channels: channels of the input image.
        init: "original" (Glorot kernels and biases, as the TF1 code) or "he" (He-normal, zero bias).
        blocks: number of VGG blocks (5; DSM stops at conv4_3: 4). No pool follows the last block.
        circular: pad circularly along the width and by zeros along the height, then VALID convs
            (DSM's `VGG16_cir` for polar aerial maps); False keeps SAME convs.

    Example:
    ```python
    tower = VGG16Tower(width=0.125)
    tower(np.zeros((1, 64, 64, 3), "float32")).shape  # (1, 4, 4, 64)
    ```
    """

    def __init__(self, width=1.0, freeze_blocks=3, dropout_rate=0.2, input_channels=3, init="original", blocks=5,
                 circular=False, **kwargs):
        super().__init__(**kwargs)
        if not 1 <= int(blocks) <= len(VGG16_BLOCKS):
            raise CvmError(f"blocks must be between 1 and 5, got {blocks}")
        if not 0 <= int(freeze_blocks) <= len(VGG16_BLOCKS):
            raise CvmError(f"freeze_blocks must be between 0 and 5, got {freeze_blocks}")
        if not width > 0:
            raise CvmError(f"backbone width must be positive, got {width}")
        self.width = float(width)
        self.freeze_blocks = int(freeze_blocks)
        self.dropout_rate = float(dropout_rate)
        self.input_channels = int(input_channels)
        self.init = init
        self.blocks = int(blocks)
        self.circular = bool(circular)
        initializers = conv_initializers(init)
        self.convs = []
        self._stages = []  # (conv, dropout or None, pool or None) in call order
        for block, count, channels in VGG16_BLOCKS[:self.blocks]:
            for index in range(1, count + 1):
                conv = keras.layers.Conv2D(
                    scaled_channels(channels, self.width),
                    3,
                    padding="valid" if self.circular else "same",
                    activation="relu",
                    trainable=block > self.freeze_blocks,
                    **initializers,
                    name=f"conv{block}_{index}",
                )
                dropout = (
                    keras.layers.Dropout(self.dropout_rate, name=f"conv{block}_{index}_dropout") if block >= 4 else None
                )
                pool = (
                    keras.layers.MaxPooling2D(2, 2, padding="same", name=f"pool{block}")
                    if index == count and block < self.blocks
                    else None
                )
                self.convs.append(conv)
                self._stages.append((conv, dropout, pool))

    @property
    def output_channels(self) -> int:
        return scaled_channels(VGG16_BLOCKS[self.blocks - 1][2], self.width)

    def build(self, input_shape=None):
        if self.built:  # a tower shared by both views (share_towers) is built once
            return
        channels = self.input_channels
        for conv, _, _ in self._stages:
            conv.build((None, None, None, channels))
            channels = conv.filters

    def call(self, images, training=None):
        x = images
        for conv, dropout, pool in self._stages:
            x = conv(pad_azimuth(x) if self.circular else x)
            if dropout is not None:
                x = dropout(x, training=training)
            if pool is not None:
                x = pool(x)
        return x

    def compute_output_shape(self, input_shape):
        def pooled(size):  # blocks - 1 SAME 2x2/2 pools: ceil(size / 2) each time
            if size is None:
                return None
            for _ in range(self.blocks - 1):
                size = (size + 1) // 2
            return size

        return (input_shape[0], pooled(input_shape[1]), pooled(input_shape[2]), self.output_channels)

    def get_config(self):
        config = super().get_config()
        config.update(
            width=self.width,
            freeze_blocks=self.freeze_blocks,
            dropout_rate=self.dropout_rate,
            input_channels=self.input_channels,
            init=self.init,
        )
        if self.blocks != 5 or self.circular:  # absent for the plain tower: its config is unchanged
            config.update(blocks=self.blocks, circular=self.circular)
        return config


def load_vgg16_weights(towers, weights: str) -> None:
    """Copies Keras' VGG16 (include_top=False) `blockK_convM` kernels and biases onto `convK_M`.

    `towers` is a VGG16Tower or a list of them (the reference network is built once).
    `weights` is "imagenet" (downloaded by Keras, or read from its cache ~/.keras/models) or the
    path of a local `.weights.h5` / `.h5` file of Keras' VGG16 without top. Raises CvmError when
    the weights cannot be had; nothing is ever substituted for them.
    """
    towers = [towers] if isinstance(towers, VGG16Tower) else list(towers)
    for tower in towers:
        if tower.width != 1.0 or tower.input_channels != 3:
            raise CvmError(
                f"pretrained VGG16 weights need backbone_width=1.0 and 3 input channels "
                f"(got width {tower.width}, {tower.input_channels} channels); pass weights=None"
            )
    reference = _keras_vgg16(weights)
    for tower in towers:
        if not tower.built:
            tower.build()
        for conv in tower.convs:
            block, index = conv.name[len("conv"):].split("_")
            kernel, bias = reference.get_layer(f"block{block}_conv{index}").get_weights()
            conv.kernel.assign(kernel)
            conv.bias.assign(bias)


def _keras_vgg16(weights: str) -> keras.Model:
    """keras.applications.VGG16 without top, holding the requested pretrained weights."""
    if weights == "imagenet":
        try:
            return keras.applications.VGG16(include_top=False, weights="imagenet", input_shape=(None, None, 3))
        except Exception as error:  # Keras raises a bare Exception for a failed URL fetch
            raise CvmError(
                f"could not download the ImageNet VGG16 weights ({error}); download "
                "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 on a machine with internet access "
                "and pass its path instead of 'imagenet' (or put it in ~/.keras/models/)"
            ) from error
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise CvmError(f"VGG16 weights file not found: {path}; pass None, 'imagenet' or an existing .h5 file")
    if not path.endswith(".h5"):
        raise CvmError(f"VGG16 weights file must be a Keras .weights.h5 or .h5 file: {path}")
    reference = keras.applications.VGG16(include_top=False, weights=None, input_shape=(None, None, 3))
    try:
        reference.load_weights(path)
    except Exception as error:
        raise CvmError(
            f"could not load {path} into Keras' VGG16 (include_top=False): {error}; "
            "the file must hold the weights of keras.applications.VGG16(include_top=False)"
        ) from error
    return reference
