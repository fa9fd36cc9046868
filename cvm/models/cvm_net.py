"""CVM-Net-I and CVM-Net-II (Hu et al., CVPR 2018), ported from david-husx/crossview_localisation."""

from __future__ import annotations

import keras
from keras import ops

from cvm.errors import CvmError
from cvm.models.netvlad import NetVLAD, l2_normalize
from cvm.models.registry import register
from cvm.models.two_tower import VGGTwoTower
from cvm.models.vgg import conv_initializers


class _CVMNet(VGGTwoTower):
    """What CVM-Net-I and -II share: the VGG16 towers and the NetVLAD sizes.

    Args:
        clusters: NetVLAD clusters K.
        output_dim: descriptor size (`descriptor_dim`).
    """

    def __init__(self, clusters: int = 64, output_dim: int = 4096, **kwargs):
        super().__init__(**kwargs)
        if int(clusters) < 1 or int(output_dim) < 1:
            raise CvmError(f"clusters and output_dim must be positive, got {clusters} and {output_dim}")
        self.clusters = int(clusters)
        self.output_dim = int(output_dim)
        self.descriptor_dim = self.output_dim


@register("cvm_net_i")
@keras.saving.register_keras_serializable(package="cvm")
class CVMNetI(_CVMNet):
    """CVM-Net-I: VGG16 + NetVLAD per view and a shared FC (Hu et al., CVPR 2018).

    Paper: https://openaccess.thecvf.com/content_cvpr_2018/html/Hu_CVM-Net_Cross-View_Matching_CVPR_2018_paper.html

    Each view has its own VGG16 tower (conv1-3 frozen, dropout after conv4/conv5) and its own
    NetVLAD (64 clusters, 512 x 64 = 32,768-d). A fully connected layer *shared* by both views
    (truncated-normal std 0.005 weights, bias 0.1, no activation) reduces to `output_dim` and the
    result is L2-normalised. Inputs are BGR images minus the Caffe mean, any size
    (512x512 aerial -> 32x32x512 local features; 224x1232 ground -> 14x77x512).

    Args:
        keep_prob: dropout keep probability of the original (rate = 1 - keep_prob), used only
            with `training=True`.
        weights: None (Glorot init), "imagenet" (Keras' VGG16, downloaded) or the path of a
            local Keras VGG16 notop `.h5`/`.weights.h5` file, copied into both towers.
        clusters: NetVLAD clusters K.
        output_dim: descriptor size (`descriptor_dim`).
        backbone_width: channel multiplier of the VGG towers (1.0 is VGG16; needs weights=None
            otherwise).
        freeze_blocks: leading VGG blocks kept frozen (3 as the paper; 0 trains everything).
        init: "original" (the TF1 initialisers) or "he" (He-normal convs with zero biases and a
            Glorot FC with zero bias: from-scratch training without ImageNet weights; with the
            original's 0.1 FC bias and random towers every descriptor starts almost identical).

    Example:
    ```python
    model = CVMNetI(backbone_width=0.125, clusters=8, output_dim=32)
    out = model({"ground": np.zeros((2, 32, 128, 3), "float32"),
                 "aerial": np.zeros((2, 64, 64, 3), "float32")})
    out["ground"].shape  # (2, 32), unit rows
    ```
    """

    l2_normalized = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.ground_netvlad = NetVLAD(self.clusters, name="netvlad_grd")
        self.aerial_netvlad = NetVLAD(self.clusters, name="netvlad_sat")
        if self.init == "original":
            fc_init = dict(kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.005),
                           bias_initializer=keras.initializers.Constant(0.1))
        else:
            fc_init = dict(kernel_initializer="glorot_uniform", bias_initializer="zeros")
        self.dim_reduction = keras.layers.Dense(self.output_dim, name="dim_reduction", **fc_init)
        self.build()
        self.load_pretrained_backbones()

    def build(self, input_shape=None):
        channels = self.ground_tower.output_channels
        for tower, netvlad in ((self.ground_tower, self.ground_netvlad), (self.aerial_tower, self.aerial_netvlad)):
            tower.build()
            netvlad.build((None, None, None, channels))
        self.dim_reduction.build((None, channels * self.clusters))

    def _encode(self, images, tower, netvlad, training):
        local = tower(images, training=training)
        # Descriptors leave in float32 under mixed precision: the loss and ranking compare them closely.
        descriptor = ops.cast(self.dim_reduction(netvlad(local)), "float32")
        return l2_normalize(descriptor, axis=-1)

    def call(self, inputs, training=None):
        # The shared FC runs once on both views stacked: the same result as two passes, but its
        # 32768 x 4096 weight is read once and its gradient is not summed from two halves (the
        # bench/train_step.py measurement: this is most of a training step's memory traffic).
        ground = self.ground_netvlad(self.ground_tower(inputs["ground"], training=training))
        aerial = self.aerial_netvlad(self.aerial_tower(inputs["aerial"], training=training))
        batch = ops.shape(ground)[0]
        both = ops.cast(self.dim_reduction(ops.concatenate([ground, aerial], axis=0)), "float32")
        both = l2_normalize(both, axis=-1)
        return {"ground": both[:batch], "aerial": both[batch:]}

    def encode_ground(self, images, training=False):
        """[B, Hg, Wg, 3] ground images -> [B, output_dim] unit descriptors."""
        return self._encode(images, self.ground_tower, self.ground_netvlad, training)

    def encode_aerial(self, images, training=False):
        """[B, Ha, Wa, 3] aerial images -> [B, output_dim] unit descriptors."""
        return self._encode(images, self.aerial_tower, self.aerial_netvlad, training)


@register("cvm_net_ii")
@keras.saving.register_keras_serializable(package="cvm")
class CVMNetII(_CVMNet):
    """CVM-Net-II: VGG16 towers, a partly shared TransNet and one shared NetVLAD (Hu et al., CVPR 2018).

    Paper: https://openaccess.thecvf.com/content_cvpr_2018/html/Hu_CVM-Net_Cross-View_Matching_CVPR_2018_paper.html

    After each view's VGG16 tower, TransNet (`transnet_v2.py`) applies a per-view 1x1 conv
    (`grd_trans_conv1` / `sat_trans_conv1`), then a 3x3 conv (`trans_conv1`) and a 1x1 conv
    (`trans_conv2`) shared by both views; each conv keeps the 512 channels and is followed by
    ReLU and dropout. Conv kernels and biases are Glorot-uniform initialised (the original
    Xavier-initialised biases too). One NetVLAD shared by both views pools the maps and reduces
    them to `output_dim` with its internal bias-free projection.

    Deviation: the original CVM-Net-II descriptor is *not* L2-normalised although its triplet
    loss and evaluation (2 - 2 <s, g>) assume unit vectors. `normalize_output=True` (default)
    L2-normalises it; `normalize_output=False` keeps the original (and `l2_normalized` is False).

    Args:
        keep_prob: dropout keep probability of the original (rate = 1 - keep_prob), used only
            with `training=True`.
        weights: None, "imagenet" or a local Keras VGG16 notop `.h5`/`.weights.h5` path.
        clusters: NetVLAD clusters K.
        output_dim: descriptor size (`descriptor_dim`).
        backbone_width: channel multiplier of the VGG towers and TransNet.
        freeze_blocks: leading VGG blocks kept frozen (3 as the paper).
        normalize_output: L2-normalise the descriptors (the original did not, though its loss assumes unit
            norm; False keeps the original).

    Example:
    ```python
    model = CVMNetII(backbone_width=0.125, clusters=8, output_dim=32)
    model.encode_aerial(np.zeros((1, 64, 64, 3), "float32")).shape  # (1, 32)
    ```
    """

    def __init__(self, normalize_output: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.normalize_output = bool(normalize_output)
        self.l2_normalized = self.normalize_output
        channels = self.ground_tower.output_channels

        def trans_conv(kernel_size, name):
            return keras.layers.Conv2D(
                channels,
                kernel_size,
                padding="same",
                activation="relu",
                name=name,
                **conv_initializers(self.init),
            )

        self.ground_trans_conv = trans_conv(1, "grd_trans_conv1")
        self.aerial_trans_conv = trans_conv(1, "sat_trans_conv1")
        self.shared_trans_conv1 = trans_conv(3, "trans_conv1")
        self.shared_trans_conv2 = trans_conv(1, "trans_conv2")
        self.trans_dropouts = [keras.layers.Dropout(self.dropout_rate, name=f"trans_dropout{i}") for i in range(3)]
        self.netvlad = NetVLAD(self.clusters, output_dim=self.output_dim, name="netvlad")
        self.build()
        self.load_pretrained_backbones()

    def build(self, input_shape=None):
        shape = (None, None, None, self.ground_tower.output_channels)
        self.ground_tower.build()
        self.aerial_tower.build()
        for conv in (self.ground_trans_conv, self.aerial_trans_conv, self.shared_trans_conv1, self.shared_trans_conv2):
            conv.build(shape)
        self.netvlad.build(shape)

    def _encode(self, images, tower, view_conv, training):
        x = tower(images, training=training)
        for conv, dropout in zip((view_conv, self.shared_trans_conv1, self.shared_trans_conv2), self.trans_dropouts):
            x = dropout(conv(x), training=training)
        descriptor = ops.cast(self.netvlad(x), "float32")  # float32 out under mixed precision
        return l2_normalize(descriptor, axis=-1) if self.normalize_output else descriptor

    def encode_ground(self, images, training=False):
        """[B, Hg, Wg, 3] ground images -> [B, output_dim] descriptors."""
        return self._encode(images, self.ground_tower, self.ground_trans_conv, training)

    def encode_aerial(self, images, training=False):
        """[B, Ha, Wa, 3] aerial images -> [B, output_dim] descriptors."""
        return self._encode(images, self.aerial_tower, self.aerial_trans_conv, training)
