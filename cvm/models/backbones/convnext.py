"""ConvNeXt (Liu et al., "A ConvNet for the 2020s", CVPR 2022, https://arxiv.org/abs/2201.03545) as a Keras layer.

The structure is timm's `ConvNeXt` with `conv_mlp=False` (the `convnext_{tiny,small,base}` models Sample4Geo
starts from) and equally `keras.applications.ConvNeXt*` (whose layers line up one to one with these; see
`load_keras_convnext_weights`):

  stem      4x4/4 conv -> LayerNorm                                  (timm `stem.0`, `stem.1`)
  stage i   [i > 0: LayerNorm -> 2x2/2 conv]  (timm `stages.i.downsample.0/1`)
            depths[i] blocks: depthwise 7x7 -> LayerNorm -> Dense 4C -> exact GELU -> Dense C -> layer scale
            gamma (init 1e-6) -> (stochastic depth) + residual      (`stages.i.blocks.j.{conv_dw, norm, mlp.fc1,
                                                                      mlp.fc2, gamma}`)
  head      global average pool -> LayerNorm                         (timm `head.norm` with num_classes=0,
                                                                      Keras `include_top=False, pooling="avg"`)

Every LayerNorm has epsilon 1e-6 (Keras' default is 1e-3). Convolutions are VALID with floor division of odd
sizes, as PyTorch's padding-0 convs (a 140x768 panorama gives 35x192, 17x96, 8x48, 4x24 maps); the 7x7
depthwise conv pads 3 on each side ("same").

Preprocessing is *not* part of the layer: it takes RGB images normalised with the ImageNet mean and std
(`imagenet_normalize`), as timm's models and Sample4Geo's loaders. Keras' applications model has a
`Normalization` layer for 0-255 input unless `include_preprocessing=False`; here that step belongs to the data
spec so that every cvm model takes already-normalised float input (the uint8 pipeline normalises on the device).
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
import keras
from keras import ops

from cvm.errors import CvmError

# (depths, dims) of the Keras / timm variants at width 1.
VARIANTS = {
    "convnext_tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "convnext_small": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "convnext_base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
}
_KERAS_APPLICATIONS = {
    "convnext_tiny": "ConvNeXtTiny",
    "convnext_small": "ConvNeXtSmall",
    "convnext_base": "ConvNeXtBase",
}
POOLINGS = ("avg", "flatten")
LAYER_NORM_EPSILON = 1e-6
LAYER_SCALE_INIT = 1e-6

# ImageNet statistics of timm's / torchvision's convention (RGB, images in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalize(images_0_255):
    """RGB images in [0, 255] -> (x / 255 - mean) / std with ImageNet's mean and std (timm, Sample4Geo)."""
    x = ops.cast(images_0_255, "float32") / 255.0
    mean = ops.convert_to_tensor(np.asarray(IMAGENET_MEAN, np.float32))
    std = ops.convert_to_tensor(np.asarray(IMAGENET_STD, np.float32))
    return (x - mean) / std


def variant_config(variant: str, width: float = 1.0, depths: Optional[Sequence[int]] = None) -> tuple:
    """(depths, dims) of `variant` with channels multiplied by `width` and optionally other depths."""
    if variant not in VARIANTS:
        raise CvmError(f"unknown ConvNeXt variant {variant!r}; valid: {', '.join(VARIANTS)}")
    base_depths, base_dims = VARIANTS[variant]
    if not float(width) > 0:
        raise CvmError(f"backbone_width must be positive, got {width}")
    dims = tuple(max(1, int(round(d * float(width)))) for d in base_dims)
    if depths is None:
        depths = base_depths
    depths = tuple(int(d) for d in depths)
    if len(depths) != 4 or min(depths) < 1:
        raise CvmError(f"ConvNeXt depths must be 4 positive block counts (one per stage), got {depths!r}")
    return depths, dims


def _layer_norm(name):
    return keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name=name)


@keras.saving.register_keras_serializable(package="cvm")
class ConvNeXtBlock(keras.layers.Layer):
    """One ConvNeXt block (Liu et al., CVPR 2022, Fig. 4): dw7x7 -> LN -> 4C -> GELU -> C -> gamma, + residual.

    Args:
      dim: channels C.
      drop_path_rate: stochastic-depth probability of dropping the residual branch (training only).
    """

    def __init__(self, dim, drop_path_rate=0.0, **kwargs):
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.drop_path_rate = float(drop_path_rate)
        self.conv_dw = keras.layers.DepthwiseConv2D(7, padding="same", name="conv_dw")
        self.norm = _layer_norm("norm")
        self.fc1 = keras.layers.Dense(4 * self.dim, name="fc1")
        self.fc2 = keras.layers.Dense(self.dim, name="fc2")

    def build(self, input_shape):
        shape = (None, None, None, self.dim)
        self.conv_dw.build(shape)
        self.norm.build(shape)
        self.fc1.build(shape)
        self.fc2.build((None, None, None, 4 * self.dim))
        self.gamma = self.add_weight(name="gamma", shape=(self.dim,),
                                     initializer=keras.initializers.Constant(LAYER_SCALE_INIT))
        self.built = True

    def call(self, x, training=False):
        y = self.conv_dw(x)
        y = self.norm(y)
        # Exact (erf) GELU as torch.nn.GELU() in timm and Keras' "gelu" activation.
        y = keras.activations.gelu(self.fc1(y), approximate=False)
        y = self.fc2(y) * ops.cast(self.gamma, y.dtype)
        if training and self.drop_path_rate > 0:
            keep = 1.0 - self.drop_path_rate
            mask = ops.floor(keep + keras.random.uniform((ops.shape(y)[0], 1, 1, 1), dtype=y.dtype))
            y = y / keep * mask
        return x + y

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(dim=self.dim, drop_path_rate=self.drop_path_rate)
        return config


@keras.saving.register_keras_serializable(package="cvm")
class ConvNeXtBackbone(keras.layers.Layer):
    """ConvNeXt feature extractor ending in timm's pooled head (global average pool + LayerNorm), no classifier.

    Paper: https://arxiv.org/abs/2201.03545 (ConvNeXt); layer layout of timm's `ConvNeXt` / Keras' ConvNeXt.

    Args:
      variant: "convnext_tiny", "convnext_small" or "convnext_base".
      width: channel multiplier of every stage (1.0 is the variant; e.g. 0.25 for CPU-sized experiments).
      depths: blocks per stage, overriding the variant's (e.g. (1, 1, 2, 1)).
      drop_path_rate: largest stochastic-depth rate, linearly increasing over the blocks as in timm / Keras.
      pooling: "avg" (timm's head: global average pool, then the LayerNorm) or "flatten" (the LayerNorm at every
        position of the last map, then the map flattened row by row: [B, h * w * C]). "flatten" keeps the spatial
        layout, which is what matches when both views are aligned by azimuth (a panorama and a polar aerial: SAFA,
        Shi et al., NeurIPS 2019, keeps it with its spatial-aware attention); the input size then fixes the
        descriptor size (`map_size`).

    Example:
    ```python
    backbone = ConvNeXtBackbone("convnext_tiny", width=0.25, depths=(1, 1, 1, 1))
    backbone(np.zeros((2, 64, 96, 3), "float32")).shape  # (2, 192)
    ```
    """

    def __init__(self, variant="convnext_base", width=1.0, depths=None, drop_path_rate=0.0, pooling="avg", **kwargs):
        super().__init__(**kwargs)
        if pooling not in POOLINGS:
            raise CvmError(f"ConvNeXt pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        self.pooling = pooling
        self.variant = variant
        self.width = float(width)
        self.depths, self.dims = variant_config(variant, width, depths)
        self.drop_path_rate = float(drop_path_rate)
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise CvmError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        self.stem_conv = keras.layers.Conv2D(self.dims[0], 4, strides=4, name="stem_conv")
        self.stem_norm = _layer_norm("stem_norm")
        self.downsample_norms, self.downsample_convs, self.stages = [], [], []
        rates = np.linspace(0.0, self.drop_path_rate, sum(self.depths))
        block = 0
        for i, (depth, dim) in enumerate(zip(self.depths, self.dims)):
            if i > 0:
                self.downsample_norms.append(_layer_norm(f"downsample_norm_{i}"))
                self.downsample_convs.append(keras.layers.Conv2D(dim, 2, strides=2, name=f"downsample_conv_{i}"))
            blocks = []
            for j in range(depth):
                blocks.append(ConvNeXtBlock(dim, float(rates[block]), name=f"stage_{i}_block_{j}"))
                block += 1
            self.stages.append(blocks)
        self.head_norm = _layer_norm("head_norm")

    @property
    def output_dim(self) -> int:
        return self.dims[-1]

    def build(self, input_shape=None):
        self.stem_conv.build((None, None, None, 3))
        self.stem_norm.build((None, None, None, self.dims[0]))
        for i, blocks in enumerate(self.stages):
            if i > 0:
                self.downsample_norms[i - 1].build((None, None, None, self.dims[i - 1]))
                self.downsample_convs[i - 1].build((None, None, None, self.dims[i - 1]))
            for block in blocks:
                block.build((None, None, None, self.dims[i]))
        self.head_norm.build((None, self.dims[-1]))
        self.built = True

    def stage_outputs(self, images, training=False) -> list:
        """[stem output, stage 0 .. stage 3 outputs] (NHWC maps), for inspection and layer-by-layer checks."""
        x = self.stem_norm(self.stem_conv(images))
        outputs = [x]
        for i, blocks in enumerate(self.stages):
            if i > 0:
                x = self.downsample_convs[i - 1](self.downsample_norms[i - 1](x))
            for block in blocks:
                x = block(x, training=training)
            outputs.append(x)
        return outputs

    @staticmethod
    def map_size(image_size) -> tuple:
        """(h, w) of the last stage's map for an (H, W) input: the 4x4/4 stem, then three 2x2/2 downsamplings,
        each a VALID conv (floor division, as PyTorch's)."""
        h, w = (int(v) // 4 for v in image_size)
        for _ in range(3):
            h, w = h // 2, w // 2
        return h, w

    def call(self, images, training=False):
        features = self.stage_outputs(images, training=training)[-1]
        if self.pooling == "flatten":
            x = self.head_norm(features)
            return ops.reshape(x, (ops.shape(x)[0], -1))
        return self.head_norm(ops.mean(features, axis=(1, 2)))

    def compute_output_shape(self, input_shape):
        if self.pooling == "flatten":
            if input_shape[1] is None or input_shape[2] is None:
                return (input_shape[0], None)
            h, w = self.map_size(input_shape[1:3])
            return (input_shape[0], h * w * self.dims[-1])
        return (input_shape[0], self.dims[-1])

    def get_config(self):
        config = super().get_config()
        config.update(variant=self.variant, width=self.width, depths=list(self.depths),
                      drop_path_rate=self.drop_path_rate, pooling=self.pooling)
        return config


# --- Keras applications weights --------------------------------------------------------------------------------
def keras_convnext(variant: str, weights):
    """keras.applications.ConvNeXt{Tiny,Small,Base}(include_top=False, pooling="avg") holding `weights`.

    `weights` is "imagenet" (Keras downloads its FB ImageNet-22k->1k 224 px weights, or reads its cache
    ~/.keras/models), a local Keras `.h5` / `.weights.h5` file of that model (e.g. `convnext_base_notop.h5`),
    or a `.keras` file of a saved Keras ConvNeXt model. Nothing is ever substituted for missing weights.
    """
    if variant not in _KERAS_APPLICATIONS:
        raise CvmError(f"no Keras ConvNeXt for {variant!r}; valid: {', '.join(_KERAS_APPLICATIONS)}")
    application = getattr(keras.applications, _KERAS_APPLICATIONS[variant])
    kwargs = dict(include_top=False, pooling="avg", input_shape=(None, None, 3))
    if weights == "imagenet":
        try:
            return application(weights="imagenet", **kwargs)
        except Exception as error:  # Keras raises a bare Exception for a failed URL fetch
            raise CvmError(
                f"could not download Keras' ImageNet {variant} weights ({error}); download {variant}_notop.h5 "
                "(https://storage.googleapis.com/tensorflow/keras-applications/convnext/) on a machine with "
                "internet access and pass its path instead of 'imagenet' (or put it in ~/.keras/models/)"
            ) from error
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise CvmError(f"ConvNeXt weights file not found: {path}; pass None, 'imagenet' or an existing file")
    if path.endswith(".keras"):
        try:
            model = keras.saving.load_model(path, compile=False)
        except Exception as error:
            raise CvmError(f"could not load {path} as a Keras model: {error}") from error
        return model
    if not path.endswith(".h5"):
        raise CvmError(f"ConvNeXt weights must be a Keras .h5 / .weights.h5 or .keras file: {path}")
    model = application(weights=None, **kwargs)
    try:
        model.load_weights(path)
    except Exception as error:
        raise CvmError(
            f"could not load {path} into keras.applications.{_KERAS_APPLICATIONS[variant]}(include_top=False): "
            f"{error}; the file must hold that model's weights"
        ) from error
    return model


def _keras_layer(model, name):
    """The layer called `name` in a Keras ConvNeXt, looking inside its stem / downsampling Sequentials."""
    for layer in model.layers:
        if layer.name == name:
            return layer
        if isinstance(layer, keras.Sequential):
            for inner in layer.layers:
                if inner.name == name:
                    return inner
    raise KeyError(name)


def _has_layer(model, name) -> bool:
    try:
        _keras_layer(model, name)
    except KeyError:
        return False
    return True


def load_keras_convnext_weights(backbone: ConvNeXtBackbone, reference) -> None:
    """Copies a Keras ConvNeXt (`include_top=False`, `pooling="avg"`) into `backbone`, layer by layer.

    `reference` is a Keras model, or anything `keras_convnext` accepts together with the backbone's variant.
    Keras names its layers `<prefix>_stem_conv`, `<prefix>_stage_<i>_block_<j>_{depthwise_conv, layernorm,
    pointwise_conv_1, pointwise_conv_2, layer_scale}`, `<prefix>_downsampling_{layernorm,conv}_<i-1>` and an
    unnamed final LayerNorm; its depthwise conv is a grouped Conv2D with kernel [7, 7, 1, C] (ours: [7, 7, C, 1]).
    Every shape is checked; a missing layer or a mismatch raises CvmError naming it.
    """
    if not isinstance(reference, keras.Model):
        if backbone.width != 1.0 or backbone.depths != VARIANTS[backbone.variant][0]:
            raise CvmError(f"pretrained {backbone.variant} weights need backbone_width=1.0 and the variant's depths "
                           f"(got width {backbone.width}, depths {backbone.depths}); pass weights=None")
        reference = keras_convnext(backbone.variant, reference)
    if not backbone.built:
        backbone.build()
    prefix = reference.name
    final_norm = reference.layers[-1]
    if not isinstance(final_norm, keras.layers.LayerNormalization):
        raise CvmError(f"{prefix} does not end in a LayerNormalization: build it with include_top=False, pooling='avg'")
    pairs = [(backbone.stem_conv, f"{prefix}_stem_conv"), (backbone.stem_norm, f"{prefix}_stem_layernorm")]
    for i, blocks in enumerate(backbone.stages):
        if i > 0:
            pairs.append((backbone.downsample_norms[i - 1], f"{prefix}_downsampling_layernorm_{i - 1}"))
            pairs.append((backbone.downsample_convs[i - 1], f"{prefix}_downsampling_conv_{i - 1}"))
        for j, block in enumerate(blocks):
            name = f"{prefix}_stage_{i}_block_{j}"
            pairs += [(block.conv_dw, f"{name}_depthwise_conv"), (block.norm, f"{name}_layernorm"),
                      (block.fc1, f"{name}_pointwise_conv_1"), (block.fc2, f"{name}_pointwise_conv_2"),
                      (block, f"{name}_layer_scale")]
    for i, depth in enumerate(backbone.depths):
        extra = f"{prefix}_stage_{i}_block_{depth}_depthwise_conv"
        if _has_layer(reference, extra):
            raise CvmError(f"{prefix} has more blocks than the backbone (found {extra}); build the backbone "
                           "with the Keras model's depths")
    assignments = []
    for ours, keras_name in pairs:
        try:
            source = _keras_layer(reference, keras_name).get_weights()
        except KeyError:
            raise CvmError(f"{prefix} has no layer {keras_name}: it is not a Keras ConvNeXt of the backbone's "
                           f"depths {backbone.depths}") from None
        targets = [ours.gamma] if isinstance(ours, ConvNeXtBlock) else ours.weights
        if len(source) != len(targets):
            raise CvmError(f"{keras_name}: {len(source)} weights in the Keras model, {len(targets)} expected")
        for variable, value in zip(targets, source):
            if isinstance(ours, keras.layers.DepthwiseConv2D) and value.ndim == 4:
                value = value.reshape(value.shape[0], value.shape[1], value.shape[3], 1)  # [7,7,1,C] -> [7,7,C,1]
            if tuple(value.shape) != tuple(variable.shape):
                raise CvmError(f"{keras_name}: shape {tuple(value.shape)} in the Keras model, "
                               f"{tuple(variable.shape)} in the backbone (width {backbone.width})")
            assignments.append((variable, value))
    head = final_norm.get_weights()
    for variable, value in zip(backbone.head_norm.weights, head):
        if tuple(value.shape) != tuple(variable.shape):
            raise CvmError(f"final LayerNorm: shape {tuple(value.shape)} in the Keras model, {tuple(variable.shape)} "
                           "in the backbone")
        assignments.append((variable, value))
    for variable, value in assignments:  # only once everything matched: never a half-loaded backbone
        variable.assign(value)
