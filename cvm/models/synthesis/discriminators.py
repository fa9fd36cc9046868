"""PatchGAN discriminator (`defineD_n_layers` of pix2pix, as used by X-Fork / X-Seq / the CVUSA fork).

Isola et al., "Image-to-Image Translation with Conditional Adversarial Networks", CVPR 2017
(https://arxiv.org/abs/1611.07004); n_layers 3 (70x70 patches, conditional) in Regmi & Borji CVPR 2018
(https://arxiv.org/abs/1803.03396), n_layers 4 (142x142, unconditional) in Regmi & Shah ICCV 2019
(https://arxiv.org/abs/1904.11045).
"""

from __future__ import annotations

import keras

from cvm.models.synthesis.generators import batch_norm, conv_init


@keras.saving.register_keras_serializable(package="cvm")
class PatchDiscriminator(keras.Model):
    """Fully convolutional patch discriminator returning one logit per patch.

    conv 4x4 s2 (ndf) + LReLU(0.2); n_layers - 1 times conv 4x4 s2 (ndf * min(2^n, 8)) + BN + LReLU;
    conv 4x4 s1 pad 1 (ndf * min(2^n_layers, 8)) + BN + LReLU; conv 4x4 s1 pad 1 -> 1 channel.
    A 256x256 input gives a 30x30 map with n_layers 3; 512x512 gives 30x30 with n_layers 4.
    The original's final Sigmoid is folded into the loss (`cvm.losses.gan` takes logits: the same
    values, computed stably), so `call` returns float32 logits [B, h, w, 1].

    Args:
      input_size: (H, W) of the judged images.
      input_channels: channels of the judged tensor: 3 (unconditional) or 3 + condition channels
        (the conditional D sees concat(condition, image), e.g. 6).
      ndf: width of the first layer (64).
      n_layers: strided layers (3: 70x70 receptive field, 4: 142x142).
      edge_bias: give a bias to the first and the last conv (not followed by BN). False (default): the
        Torch originals zeroed every conv bias before each forward.

    Example:
      >>> d = PatchDiscriminator(input_size=(256, 256), input_channels=6, n_layers=3)
      >>> d.output_size, d.receptive_field()
      ((30, 30), 70)
    """

    def __init__(self, input_size=(256, 256), input_channels=6, ndf=64, n_layers=3, edge_bias=False, **kwargs):
        super().__init__(**kwargs)
        self.input_size = tuple(int(v) for v in input_size)
        self.input_channels = int(input_channels)
        self.ndf = int(ndf)
        self.n_layers = int(n_layers)
        self.edge_bias = bool(edge_bias)
        if self.n_layers < 1:
            raise ValueError(f"n_layers must be at least 1, got {n_layers}")
        # (padding layer or None, conv, bn or None, leaky relu?)
        self.stack = [(None, keras.layers.Conv2D(self.ndf, 4, strides=2, padding="same", use_bias=self.edge_bias,
                                                 kernel_initializer=conv_init(), name="conv1"), None, True)]
        for n in range(1, self.n_layers):
            self.stack.append((None, keras.layers.Conv2D(self.ndf * min(2 ** n, 8), 4, strides=2, padding="same",
                                                         use_bias=False, kernel_initializer=conv_init(),
                                                         name=f"conv{n + 1}"), batch_norm(f"bn{n + 1}"), True))
        # Torch's k4 s1 pad 1 shrinks the map by one; Keras "same" would pad 1 then 2, so pad explicitly.
        k = self.n_layers + 1
        self.stack.append((keras.layers.ZeroPadding2D(1, name=f"pad{k}"),
                           keras.layers.Conv2D(self.ndf * min(2 ** self.n_layers, 8), 4, strides=1, padding="valid",
                                               use_bias=False, kernel_initializer=conv_init(), name=f"conv{k}"),
                           batch_norm(f"bn{k}"), True))
        self.stack.append((keras.layers.ZeroPadding2D(1, name=f"pad{k + 1}"),
                           keras.layers.Conv2D(1, 4, strides=1, padding="valid", use_bias=self.edge_bias,
                                               kernel_initializer=conv_init(), name=f"conv{k + 1}"), None, False))
        self.build((None, *self.input_size, self.input_channels))

    def build(self, input_shape):
        shape = tuple(input_shape)
        for pad, conv, bn, _ in self.stack:
            if pad is not None:
                pad.build(shape)
                shape = pad.compute_output_shape(shape)
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            if bn is not None:
                bn.build(shape)
        self.output_size = tuple(int(s) for s in shape[1:3])
        self.built = True

    def receptive_field(self) -> int:
        """Side of the input patch one output logit sees, from the layer stack (kernel 4 everywhere)."""
        field = 1
        for _, conv, _, _ in reversed(self.stack):
            field = (field - 1) * conv.strides[0] + conv.kernel_size[0]
        return field

    def call(self, images, training=False):
        x = images
        for pad, conv, bn, lrelu in self.stack:
            if pad is not None:
                x = pad(x)
            x = conv(x)
            if bn is not None:
                x = bn(x, training=training)
            if lrelu:
                x = keras.ops.leaky_relu(x, 0.2)
        return keras.ops.cast(x, "float32")

    def get_config(self):
        config = super().get_config()
        config.update(input_size=self.input_size, input_channels=self.input_channels, ndf=self.ndf,
                      n_layers=self.n_layers, edge_bias=self.edge_bias)
        return config
