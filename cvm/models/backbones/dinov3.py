"""DINOv3 ViT/16 (Simeoni et al., 2025, arXiv:2508.10104) as a Keras layer, through keras-hub's `DINOV3Backbone`.

The network is keras-hub's own (`keras_hub.models.DINOV3Backbone`, keras-hub >= 0.32; the Hugging Face
`DINOv3ViTModel` layout its presets are converted from):

  embeddings      16x16/16 conv patch embedding; tokens [CLS, 4 registers, patch tokens row-major]; no
                  absolute position embedding
  rope_embedding  2-D rotary position embedding (theta 100) of the patch centres, normalised to [-1, 1] per
                  axis of *each call's* patch grid, so any H x W (non-square included) needs no resampling
  encoder         pre-norm blocks with LayerScale; q / v biases, no k bias; MLP C -> 4C -> GELU -> C
  layernorm       final LayerNorm (eps 1e-5); the descriptor is its CLS token (HF's `pooler_output`,
                  timm's `global_pool="token"`)

keras-hub builds `DINOV3Backbone` as a functional model with a fixed `image_shape` (its input spec then
refuses every other size, and `image_shape=(None, None, 3)` fails at construction: its RoPE layer floors a
symbolic `None` side). The layers themselves take any size, so `DINOv3Backbone` here runs the keras-hub
instance's own sub-layers in the functional graph's order (embeddings -> encoder with the RoPE of the input ->
layernorm), which is the functional model's computation for every size it accepts. One exception: the RoPE
(cos, sin) are computed by `DINOv3Backbone.rope`, keras-hub's formula and frequencies with a float cast that
keras-hub lacks (its layer fails to trace with unknown H / W in TensorFlow, as SavedModel export does). Sides that are not
multiples of 16 are floored (VALID conv, `side // 16` RoPE grid), as keras-hub / HF do.

Training-time RoPE augmentation of the original (coordinate shift / jitter / rescale) is not in keras-hub and
not here. Preprocessing is not part of the layer: it takes ImageNet-normalised RGB (`imagenet_normalize`).
Pretrained weights come from local keras-hub preset directories only: these machines cannot download.
"""

from __future__ import annotations

import json
import math
import os
from typing import Optional

import keras
from keras import ops

from cvm.errors import CvmError

# (width C, blocks, heads) at width 1, as keras-hub's dinov3_vit_{small,base,large}_* presets (converted from
# facebook/dinov3-vit{s,b,l}16-pretrain-*; timm vit_{small,base,large}_patch16_dinov3): patch 16, 4 registers,
# MLP 4C (GELU, not gated), q / v biases without a k bias, LayerNorm eps 1e-5, RoPE theta 100.
DINOV3_VARIANTS = {
    "dinov3_vit_small": (384, 12, 6),
    "dinov3_vit_base": (768, 12, 12),
    "dinov3_vit_large": (1024, 24, 16),
}
PATCH_SIZE = 16
NUM_REGISTERS = 4
MLP_RATIO = 4
LAYER_NORM_EPSILON = 1e-5
ROPE_THETA = 100.0
LAYER_SCALE_INIT = 1e-5  # DINOv3's training init (timm init_values); pretrained presets carry the trained values

# keras-hub preset names (and the upstream / timm spellings) that would mean "download": refused, never faked.
DINOV3_PRESETS = {
    "dinov3_vit_small": "dinov3_vit_small_lvd1689m",
    "dinov3_vit_base": "dinov3_vit_base_lvd1689m",
    "dinov3_vit_large": "dinov3_vit_large_lvd1689m",
}
_PRESET_NAMES = set(DINOV3_VARIANTS) | set(DINOV3_PRESETS.values()) | {
    "dinov3_vit_small_plus_lvd1689m", "dinov3_vit_huge_plus_lvd1689m", "dinov3_vit_7b_lvd1689m",
    "dinov3_vit_large_sat493m", "dinov3_vit_7b_sat493m", "lvd1689m", "sat493m", "imagenet",
    "dinov3_vits16", "dinov3_vitb16", "dinov3_vitl16", "vit_small_patch16_dinov3.lvd1689m",
    "vit_base_patch16_dinov3.lvd1689m", "vit_large_patch16_dinov3.lvd1689m", "vit_large_patch16_dinov3.sat493m"}

# keras-hub config keys that fix the computation (not image_shape, not init values or dropout rates).
_ARCHITECTURE_KEYS = ("patch_size", "num_layers", "hidden_dim", "num_heads", "intermediate_dim",
                      "num_register_tokens", "hidden_activation", "use_gated_mlp", "use_query_bias", "use_key_bias",
                      "use_value_bias", "use_proj_bias", "use_mlp_bias", "layer_norm_eps", "rope_theta")


def dinov3_config(variant: str, width: float = 1.0, depth: Optional[int] = None,
                  num_heads: Optional[int] = None) -> tuple:
    """(dim, depth, heads) of `variant`, its width multiplied by `width`, optionally other depth / heads."""
    if variant not in DINOV3_VARIANTS:
        raise CvmError(f"unknown DINOv3 variant {variant!r}; valid: {', '.join(DINOV3_VARIANTS)}")
    base_dim, base_depth, base_heads = DINOV3_VARIANTS[variant]
    if not float(width) > 0:
        raise CvmError(f"backbone_width must be positive, got {width}")
    heads = base_heads if num_heads is None else int(num_heads)
    dim = max(1, int(round(base_dim * float(width))))
    # keras-hub's 2-D RoPE splits each head into 4 equal parts (sin / cos of two axes): 4 * heads | dim.
    if heads < 1 or dim % (4 * heads):
        raise CvmError(f"{variant} at width {width} has {dim} channels; DINOv3's 2-D RoPE needs a multiple of "
                       f"4 x its {heads} heads = {4 * heads} (e.g. width {4 * heads * 2 / base_dim:g})")
    depth = base_depth if depth is None else int(depth)
    if depth < 1:
        raise CvmError(f"a ViT needs at least one block, got depth {depth}")
    return dim, depth, heads


def _hub():
    try:
        import keras_hub
    except ImportError as error:
        raise CvmError("DINOv3 backbones are keras-hub's DINOV3Backbone: pip install 'keras-hub>=0.32'") from error
    if not hasattr(keras_hub.models, "DINOV3Backbone"):
        raise CvmError(f"keras-hub {keras_hub.__version__} has no DINOV3Backbone; DINOv3 needs keras-hub >= 0.32")
    return keras_hub


def _no_download_error(name: str, variant: str) -> CvmError:
    preset = DINOV3_PRESETS.get(variant, "dinov3_vit_base_lvd1689m")
    return CvmError(
        f"weights={name!r}: pretrained DINOv3 weights cannot be downloaded on these machines, and none are faked. "
        f"On a machine with internet access run `import keras_hub; keras_hub.models.DINOV3Backbone.from_preset("
        f"{preset!r}).save_to_preset('{preset}')` (keras-hub >= 0.32, Kaggle access), copy that folder here and "
        "pass its path as the weights (a local keras-hub DINOV3Backbone preset directory, holding config.json "
        "and model.weights.h5)")


def read_dinov3_preset_config(preset_dir, variant: str = "dinov3_vit_base") -> dict:
    """The keras-hub `DINOV3Backbone` config of a local preset directory (CvmError for anything else)."""
    preset_dir = os.fspath(preset_dir)
    if not os.path.isdir(preset_dir):
        if preset_dir in _PRESET_NAMES or preset_dir.startswith(("kaggle://", "hf://")) or \
                preset_dir.split(".")[0] in _PRESET_NAMES:
            raise _no_download_error(preset_dir, variant)
        raise CvmError(f"DINOv3 weights not found: {preset_dir}; pass None or the path of a local keras-hub "
                       "DINOV3Backbone preset directory (made with `.save_to_preset(dir)`)")
    try:
        with open(os.path.join(preset_dir, "config.json")) as f:
            config = json.load(f)
    except (OSError, ValueError) as error:
        raise CvmError(f"{preset_dir} is not a keras-hub preset directory (no readable config.json: {error})") from None
    if config.get("class_name") != "DINOV3Backbone":
        raise CvmError(f"{preset_dir} holds a keras-hub {config.get('class_name')!r}, not a DINOV3Backbone")
    return config.get("config", {})


@keras.saving.register_keras_serializable(package="cvm")
class DINOv3Backbone(keras.layers.Layer):
    """DINOv3 ViT/16 (arXiv:2508.10104), keras-hub's `DINOV3Backbone` -> final-normed CLS token, any input size.

    `[B, H, W, 3]` ImageNet-normalised RGB -> `[B, C]`; H, W >= 16 and may differ per call (RoPE positions are
    computed from each input's patch grid). Layout and conventions: the module docstring.

    Args:
      variant: "dinov3_vit_small" (384, 12 blocks, 6 heads), "dinov3_vit_base" (768, 12, 12) or
        "dinov3_vit_large" (1024, 24, 16); all patch 16 with 4 register tokens, as keras-hub's presets.
      width: multiplier of the token width (1.0 is the variant; e.g. 0.125 for CPU-sized experiments); the head
        count stays the variant's unless `num_heads` is given.
      depth: number of blocks, overriding the variant's.
      num_heads: attention heads, overriding the variant's.
      drop_path_rate: stochastic-depth rate (keras-hub's, training only).
      weights: None (random init) or a local keras-hub `DINOV3Backbone` preset directory, loaded with
        `from_preset` and checked against this architecture. Preset names raise a CvmError (no download here).
        Not part of the config: a saved `.keras` file carries the weights.

    Example:
    ```python
    dino = DINOv3Backbone("dinov3_vit_small", width=0.125, depth=2)
    dino(np.zeros((2, 64, 256, 3), "float32")).shape  # (2, 48): 4x16 patches
    dino(np.zeros((2, 112, 112, 3), "float32")).shape  # (2, 48): 7x7 patches, same weights
    ```
    """

    def __init__(self, variant="dinov3_vit_base", width=1.0, depth=None, num_heads=None, drop_path_rate=0.0,
                 weights=None, **kwargs):
        super().__init__(**kwargs)
        self.variant = variant
        self.width = float(width)
        self.dim, self.depth, self.num_heads = dinov3_config(variant, width, depth, num_heads)
        self.drop_path_rate = float(drop_path_rate)
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise CvmError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        self.hub = _hub().models.DINOV3Backbone(**self.hub_config(), dtype=self.dtype_policy, name="dinov3")
        self.num_registers = NUM_REGISTERS
        if weights is not None:
            load_dinov3_weights(self, weights)

    def hub_config(self) -> dict:
        """keras-hub `DINOV3Backbone` arguments of this layer (image_shape only builds the unused functional graph)."""
        return dict(patch_size=PATCH_SIZE, num_layers=self.depth, hidden_dim=self.dim, num_heads=self.num_heads,
                    intermediate_dim=MLP_RATIO * self.dim, layer_scale_init_value=LAYER_SCALE_INIT,
                    num_register_tokens=NUM_REGISTERS, use_mask_token=True, hidden_activation="gelu",
                    use_gated_mlp=False, use_query_bias=True, use_key_bias=False, use_value_bias=True,
                    use_proj_bias=True, use_mlp_bias=True, drop_path_rate=self.drop_path_rate,
                    layer_norm_eps=LAYER_NORM_EPSILON, image_shape=(224, 224, 3), rope_theta=ROPE_THETA,
                    data_format="channels_last")

    @property
    def output_dim(self) -> int:
        return self.dim

    @property
    def num_prefix_tokens(self) -> int:
        return 1 + self.num_registers

    def build(self, input_shape=None):
        # The keras-hub model was built at construction (functional); nothing else owns weights here.
        self.built = True

    def tokens(self, images, training=False):
        """[B, 1 + 4 + h*w, C] final-normed tokens (CLS, registers, patches): keras-hub's DINOV3Backbone graph."""
        hub = self.hub
        x = hub.embeddings(images, training=training)
        position_embeddings = self.rope(images)
        x, _ = hub.encoder(x, position_embeddings=position_embeddings,
                           num_prefix_tokens=self.num_prefix_tokens, training=training)
        return hub.layernorm(x)

    def rope(self, images):
        """(cos, sin), each [h*w, head_dim]: keras-hub's `DINOV3RopePositionEmbedding.call` (its `inv_freq`), with
        the patch counts cast to float. keras-hub divides float32 coordinates by the int32 patch count, which
        TensorFlow refuses when H or W is unknown at trace time (a `tf.function` / SavedModel with None sides);
        eager or static shapes give the same numbers as `hub.rope_embedding(images)` (tested)."""
        layer = self.hub.rope_embedding
        shape = ops.shape(images)
        counts = [shape[1] // PATCH_SIZE, shape[2] // PATCH_SIZE]
        rows, cols = [(ops.cast(ops.arange(n), "float32") + 0.5) / ops.cast(n, "float32") for n in counts]
        coords = ops.stack([ops.repeat(rows[:, None], counts[1], axis=1),
                            ops.repeat(cols[None, :], counts[0], axis=0)], axis=-1)
        coords = 2.0 * ops.reshape(coords, (-1, 2)) - 1.0  # [h*w, 2] patch centres in [-1, 1], row-major
        angles = 2.0 * math.pi * coords[:, :, None] * ops.cast(layer.inv_freq, "float32")[None, None, :]
        angles = ops.tile(ops.reshape(angles, (-1, 2 * ops.shape(layer.inv_freq)[0])), (1, 2))
        return ops.cast(ops.cos(angles), images.dtype), ops.cast(ops.sin(angles), images.dtype)

    def call(self, images, training=False):
        return self.tokens(images, training=training)[:, 0]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.dim)

    def get_config(self):
        config = super().get_config()
        config.update(variant=self.variant, width=self.width, depth=self.depth, num_heads=self.num_heads,
                      drop_path_rate=self.drop_path_rate)
        return config


def load_dinov3_weights(backbone: DINOv3Backbone, source) -> None:
    """Loads a local keras-hub `DINOV3Backbone` preset directory into `backbone` strictly.

    The preset's architecture (patch, width, depth, heads, MLP, registers, biases, norm eps, RoPE theta) must be
    the backbone's; every weight is copied, shapes checked; on any mismatch nothing is assigned. Preset names
    ("dinov3_vit_small_lvd1689m", ...) raise a CvmError: nothing can be downloaded here.
    """
    where = os.fspath(source)
    preset_config = read_dinov3_preset_config(where, backbone.variant)
    ours = backbone.hub_config()
    mismatched = [f"{key}={preset_config.get(key)!r} (backbone: {ours[key]!r})" for key in _ARCHITECTURE_KEYS
                  if key in preset_config and preset_config[key] != ours[key]]
    if mismatched:
        raise CvmError(f"{where} is not a {backbone.variant} ({backbone.dim} wide, {backbone.depth} blocks, "
                       f"{backbone.num_heads} heads) DINOv3: {', '.join(mismatched)}")
    if preset_config.get("data_format", "channels_last") != "channels_last":
        raise CvmError(f"{where}: a channels_first DINOV3Backbone preset is not supported")
    loaded = _hub().models.DINOV3Backbone.from_preset(where)  # a local directory: nothing is downloaded
    source_weights, target = loaded.weights, backbone.hub.weights
    if len(source_weights) != len(target):
        raise CvmError(f"{where}: {len(source_weights)} weights, the {backbone.variant} backbone has {len(target)}")
    for theirs, mine in zip(source_weights, target):
        if tuple(theirs.shape) != tuple(mine.shape) or theirs.path.split("/")[-1] != mine.path.split("/")[-1]:
            raise CvmError(f"{where}: weight {theirs.path} {tuple(theirs.shape)} does not match {mine.path} "
                           f"{tuple(mine.shape)} of the {backbone.variant} backbone")
    for theirs, mine in zip(source_weights, target):
        mine.assign(ops.cast(theirs.value, mine.dtype))
