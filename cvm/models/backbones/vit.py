"""DINOv2 ViT (Oquab et al., 2023, arXiv:2304.07193; ViT: Dosovitskiy et al., ICLR 2021) as a Keras layer.

The structure is timm's `VisionTransformer` as `timm.create_model("vit_{small,base,large}_patch14[_reg4]_dinov2",
num_classes=0, dynamic_img_size=True)` builds it (the models Sample4Geo's descendants swap in for ConvNeXt):

  patch_embed  14x14/14 conv, 3 -> C                                   (timm `patch_embed.proj`)
  tokens       [CLS, registers (reg4 variants only), patch tokens row-major]   (`cls_token`, `reg_token`)
  pos_embed    learned for a pos_grid x pos_grid patch grid (37 = 518 / 14), resampled to *each call's* patch
               grid (non-square allowed), so one instance embeds a 140x768 panorama and a 384x384 tile alike.
               Plain variants: [1, 1 + G*G, C], entry 0 added to CLS (timm `no_embed_class=False`); reg4
               variants: [1, G*G, C], CLS and registers get none (`no_embed_class=True`).
  blocks       pre-norm: x + ls1 * Attn(LN(x)), then x + ls2 * MLP(LN(x)); MLP C -> 4C -> exact GELU -> C;
               LayerScale gammas (init 1e-5)                            (`blocks.i.{norm1, attn.qkv, attn.proj,
                                                                         ls1.gamma, norm2, mlp.fc1, mlp.fc2,
                                                                         ls2.gamma}`)
  norm         final LayerNorm; the descriptor is the normed CLS token (timm `num_classes=0,
               global_pool="token"`: no fc_norm, no head)               (`norm`)

Every LayerNorm has epsilon 1e-6 (timm's ViT). Two details follow timm's `dynamic_img_size=True` path exactly:

* Resampling: timm's `_pos_embed` calls `resample_abs_pos_embed` with its default `antialias=True`, i.e.
  PyTorch's antialiased bicubic (Keys a = -0.5, kernel widened by the shrink factor when the grid shrinks,
  weights renormalised at the borders), size-based (scale = old / new, half-pixel centres). That is the
  default here (`pos_antialias=True`). `pos_antialias=False` is PyTorch's plain bicubic (a = -0.75, clamped
  borders), what `resample_abs_pos_embed(..., antialias=False)`, Hugging Face's and keras-hub's DINOv2 use.
  (The original DINOv2 hub code also interpolates by a scale factor offset by 0.1, not reproduced.) Both are
  weight matrices built per call from the grid sizes (`bicubic_resize_matrix`), so shapes may be dynamic.
* Sides that are not multiples of 14: timm with `dynamic_img_size=True` alone *asserts* divisibility. Here the
  default floors them, as a stride-14 VALID conv (and HF / keras-hub) does: the last H mod 14 rows and W mod 14
  columns are ignored, identical to timm on the top-left crop (a 140x768 panorama gives 10x54 patches).
  `dynamic_img_pad=True` is timm's `dynamic_img_pad=True`: zero-pad bottom / right to the next multiple (10x55).

Preprocessing is not part of the layer: it takes ImageNet-normalised RGB (`imagenet_normalize`), as DINOv2.
Pretrained weights come from local files only (`load_dinov2_weights`): these machines cannot download.
"""

from __future__ import annotations

import json
import os
import re
from typing import Optional

import numpy as np
import keras
from keras import ops

from cvm.errors import CvmError

# (width C, blocks, heads, register tokens) at width 1; every DINOv2 ViT has 64-d heads and patch 14.
VIT_VARIANTS = {
    "dinov2_small": (384, 12, 6, 0),
    "dinov2_base": (768, 12, 12, 0),
    "dinov2_large": (1024, 24, 16, 0),
    "dinov2_small_reg4": (384, 12, 6, 4),
    "dinov2_base_reg4": (768, 12, 12, 4),
    "dinov2_large_reg4": (1024, 24, 16, 4),
}
PATCH_SIZE = 14
PRETRAIN_GRID = 37  # 518 px / 14: the grid DINOv2's (and timm's *.lvd142m) position embeddings are learned for
LAYER_NORM_EPSILON = 1e-6
LAYER_SCALE_INIT = 1e-5
MLP_RATIO = 4

# Names that mean "download the pretrained weights": refused with an explanation, never faked.
_TIMM_NAMES = {
    "dinov2_small": "vit_small_patch14_dinov2.lvd142m", "dinov2_base": "vit_base_patch14_dinov2.lvd142m",
    "dinov2_large": "vit_large_patch14_dinov2.lvd142m", "dinov2_small_reg4": "vit_small_patch14_reg4_dinov2.lvd142m",
    "dinov2_base_reg4": "vit_base_patch14_reg4_dinov2.lvd142m",
    "dinov2_large_reg4": "vit_large_patch14_reg4_dinov2.lvd142m",
}
_PRESET_NAMES = set(VIT_VARIANTS) | set(_TIMM_NAMES.values()) | {n.split(".")[0] for n in _TIMM_NAMES.values()} | {
    "imagenet", "lvd142m", "dinov2_giant", "dinov2_with_registers_small", "dinov2_with_registers_base",
    "dinov2_with_registers_large", "dinov2_with_registers_giant", "dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14",
    "dinov2_vits14_reg", "dinov2_vitb14_reg", "dinov2_vitl14_reg"}


def vit_config(variant: str, width: float = 1.0, depth: Optional[int] = None, num_heads: Optional[int] = None) -> tuple:
    """(dim, depth, heads, registers) of `variant`, its width multiplied by `width`, optionally other depth / heads."""
    if variant not in VIT_VARIANTS:
        raise CvmError(f"unknown ViT variant {variant!r}; valid: {', '.join(VIT_VARIANTS)}")
    base_dim, base_depth, base_heads, registers = VIT_VARIANTS[variant]
    if not float(width) > 0:
        raise CvmError(f"backbone_width must be positive, got {width}")
    heads = base_heads if num_heads is None else int(num_heads)
    dim = max(1, int(round(base_dim * float(width))))
    if heads < 1 or dim % heads:
        raise CvmError(f"{variant} at width {width} has {dim} channels, not a multiple of its {heads} attention heads; "
                       f"pick a width giving a multiple of {heads} (e.g. {heads * 8 / base_dim:g})")
    depth = base_depth if depth is None else int(depth)
    if depth < 1:
        raise CvmError(f"a ViT needs at least one block, got depth {depth}")
    return dim, depth, heads, registers


# --- bicubic resampling of the position embeddings ------------------------------------------------------------
def _keys_cubic(x, a):
    """Keys' cubic convolution kernel W(x) with parameter a (PyTorch: a = -0.75 plain, -0.5 antialiased)."""
    x = ops.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    return ops.where(x <= 1.0, near, ops.where(x < 2.0, far, ops.zeros_like(x)))


def bicubic_resize_matrix(out_size, in_size: int, antialias: bool = True):
    """[out_size, in_size] float32 matrix M with resized = M @ signal: PyTorch's `F.interpolate(mode="bicubic",
    align_corners=False, size=...)` along one axis, `antialias` as there. `out_size` may be a traced scalar.

    PyTorch applies the 2-D resize separably, so two of these (rows, columns) reproduce it (up to float32
    rounding), except for PyTorch's antialiased path at an output width of 1, which it gets wrong.
    """
    n_in = int(in_size)
    n_out = ops.cast(out_size, "float32")
    scale = float(n_in) / n_out  # PyTorch's area_pixel_compute_scale: in / out
    out_index = ops.cast(ops.arange(out_size), "float32")
    columns = ops.cast(ops.arange(n_in), "float32")
    if not antialias:
        # Source coordinate of each output pixel centre; taps at floor - 1 .. floor + 2, clamped to the edge.
        source = scale * (out_index + 0.5) - 0.5
        first = ops.floor(source)
        t = source - first
        matrix = 0.0
        for k in range(4):
            index = ops.cast(ops.clip(first + (k - 1), 0, n_in - 1), "int32")
            matrix = matrix + _keys_cubic(t - (k - 1), -0.75)[:, None] * ops.one_hot(index, n_in, dtype="float32")
        return matrix
    # PIL-style: the kernel support grows with the shrink factor (low-pass when downsampling); taps are the
    # inputs within the support, weights normalised to sum 1 (which also handles the borders).
    stretch = ops.maximum(scale, 1.0)
    support = 2.0 * stretch
    centre = scale * (out_index + 0.5)
    low = ops.maximum(ops.floor(centre - support + 0.5), 0.0)
    high = ops.minimum(ops.floor(centre + support + 0.5), float(n_in))
    weights = _keys_cubic((columns[None, :] - centre[:, None] + 0.5) / stretch, -0.5)
    inside = ops.logical_and(columns[None, :] >= low[:, None], columns[None, :] < high[:, None])
    weights = ops.where(inside, weights, ops.zeros_like(weights))
    return weights / ops.sum(weights, axis=1, keepdims=True)


def resample_position_grid(grid, out_height, out_width, antialias: bool = True):
    """[G, G', C] learned embeddings -> [out_height, out_width, C], bicubic as timm's `resample_abs_pos_embed`."""
    rows = bicubic_resize_matrix(out_height, grid.shape[0], antialias)
    cols = bicubic_resize_matrix(out_width, grid.shape[1], antialias)
    grid = ops.einsum("ih,hwc->iwc", rows, grid)
    return ops.einsum("jw,iwc->ijc", cols, grid)


# --- layers ----------------------------------------------------------------------------------------------------
def _layer_norm(name):
    return keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name=name)


def _dense(units, name):
    return keras.layers.Dense(units, kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02), name=name)


@keras.saving.register_keras_serializable(package="cvm")
class ViTBlock(keras.layers.Layer):
    """One pre-norm ViT block (Dosovitskiy et al., ICLR 2021) with DINOv2's LayerScale (arXiv:2304.07193).

    Args:
      dim: token width C.
      num_heads: attention heads (C / heads channels each).
      drop_path_rate: stochastic-depth probability of dropping each residual branch (training only).
    """

    def __init__(self, dim, num_heads, drop_path_rate=0.0, **kwargs):
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.num_heads = int(num_heads)
        self.drop_path_rate = float(drop_path_rate)
        if self.dim % self.num_heads:
            raise CvmError(f"ViT width {self.dim} is not a multiple of {self.num_heads} heads")
        self.norm1 = _layer_norm("norm1")
        self.qkv = _dense(3 * self.dim, "qkv")  # output order (q|k|v, head, channel), as timm's `attn.qkv`
        self.proj = _dense(self.dim, "proj")
        self.norm2 = _layer_norm("norm2")
        self.fc1 = _dense(MLP_RATIO * self.dim, "fc1")
        self.fc2 = _dense(self.dim, "fc2")

    def build(self, input_shape=None):
        shape = (None, None, self.dim)
        for layer in (self.norm1, self.qkv, self.proj, self.norm2, self.fc1):
            layer.build(shape)
        self.fc2.build((None, None, MLP_RATIO * self.dim))
        scale = keras.initializers.Constant(LAYER_SCALE_INIT)
        self.gamma1 = self.add_weight(name="gamma1", shape=(self.dim,), initializer=scale)
        self.gamma2 = self.add_weight(name="gamma2", shape=(self.dim,), initializer=scale)
        self.built = True

    def _attention(self, x):
        batch, tokens = ops.shape(x)[0], ops.shape(x)[1]
        head_dim = self.dim // self.num_heads
        qkv = ops.reshape(self.qkv(x), (batch, tokens, 3, self.num_heads, head_dim))
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, N, heads, d]
        scores = ops.einsum("bqhd,bkhd->bhqk", q * (head_dim ** -0.5), k)
        # Softmax in float32 under mixed precision (bf16 logits over ~2000 tokens lose the small weights).
        attention = ops.cast(ops.softmax(ops.cast(scores, "float32"), axis=-1), v.dtype)
        out = ops.einsum("bhqk,bkhd->bqhd", attention, v)
        return self.proj(ops.reshape(out, (batch, tokens, self.dim)))

    def _drop_path(self, y, training):
        if not training or self.drop_path_rate <= 0:
            return y
        keep = 1.0 - self.drop_path_rate
        mask = ops.floor(keep + keras.random.uniform((ops.shape(y)[0], 1, 1), dtype=y.dtype))
        return y / keep * mask

    def call(self, x, training=False):
        y = self._attention(self.norm1(x)) * ops.cast(self.gamma1, x.dtype)
        x = x + self._drop_path(y, training)
        # Exact (erf) GELU, as torch.nn.GELU() in timm / DINOv2 (the tanh form moves descriptors by ~1e-4).
        y = self.fc2(keras.activations.gelu(self.fc1(self.norm2(x)), approximate=False))
        return x + self._drop_path(y * ops.cast(self.gamma2, x.dtype), training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(dim=self.dim, num_heads=self.num_heads, drop_path_rate=self.drop_path_rate)
        return config


@keras.saving.register_keras_serializable(package="cvm")
class ViTBackbone(keras.layers.Layer):
    """DINOv2 ViT/14 (arXiv:2304.07193; ViT: Dosovitskiy et al., ICLR 2021) -> final-normed CLS token, any size.

    `[B, H, W, 3]` ImageNet-normalised RGB -> `[B, C]`; H, W >= 14 and may differ per call (the position
    embeddings are resampled to each input's patch grid). Layout and conventions: the module docstring.

    Args:
      variant: "dinov2_small" (384, 12 blocks, 6 heads), "dinov2_base" (768, 12, 12), "dinov2_large" (1024, 24,
        16), or one of those with "_reg4" (4 register tokens, DINOv2 "with registers").
      width: multiplier of the token width (1.0 is the variant; e.g. 0.125 for CPU-sized experiments); the head
        count stays the variant's unless `num_heads` is given.
      depth: number of blocks, overriding the variant's.
      num_heads: attention heads, overriding the variant's.
      pos_grid: side of the learned position-embedding grid (37: DINOv2 pretrained at 518 px).
      dynamic_img_pad: False floors sides to multiples of 14; True zero-pads them up (timm's dynamic_img_pad).
      pos_antialias: resample the position embeddings with PyTorch's antialiased bicubic (timm's
        dynamic_img_size path) or, False, its plain bicubic (HF / keras-hub DINOv2).
      drop_path_rate: largest stochastic-depth rate, increasing linearly over the blocks as in timm.

    Example:
    ```python
    vit = ViTBackbone("dinov2_small", width=0.125, depth=2)
    vit(np.zeros((2, 140, 768, 3), "float32")).shape  # (2, 48): 10x54 patches
    vit(np.zeros((2, 384, 384, 3), "float32")).shape  # (2, 48): 27x27 patches, same weights
    ```
    """

    def __init__(self, variant="dinov2_base", width=1.0, depth=None, num_heads=None, pos_grid=PRETRAIN_GRID,
                 dynamic_img_pad=False, pos_antialias=True, drop_path_rate=0.0, **kwargs):
        super().__init__(**kwargs)
        self.variant = variant
        self.width = float(width)
        self.dim, self.depth, self.num_heads, self.num_registers = vit_config(variant, width, depth, num_heads)
        self.pos_grid = int(pos_grid)
        if self.pos_grid < 1:
            raise CvmError(f"pos_grid must be positive, got {pos_grid}")
        self.dynamic_img_pad = bool(dynamic_img_pad)
        self.pos_antialias = bool(pos_antialias)
        self.drop_path_rate = float(drop_path_rate)
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise CvmError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        # DINOv2 with registers is timm's no_embed_class=True: no position entry for the CLS token.
        self.embed_class = self.num_registers == 0
        self.patch_embed = keras.layers.Conv2D(
            self.dim, PATCH_SIZE, strides=PATCH_SIZE, name="patch_embed",
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02))
        rates = np.linspace(0.0, self.drop_path_rate, self.depth)
        self.blocks = [ViTBlock(self.dim, self.num_heads, float(rate), name=f"block_{i}")
                       for i, rate in enumerate(rates)]
        self.norm = _layer_norm("norm")

    @property
    def output_dim(self) -> int:
        return self.dim

    @property
    def num_prefix_tokens(self) -> int:
        return 1 + self.num_registers

    def build(self, input_shape=None):
        self.patch_embed.build((None, None, None, 3))
        tiny = keras.initializers.RandomNormal(stddev=1e-6)  # timm's init of cls / register tokens
        self.cls_token = self.add_weight(name="cls_token", shape=(1, 1, self.dim), initializer=tiny)
        self.reg_token = (self.add_weight(name="reg_token", shape=(1, self.num_registers, self.dim), initializer=tiny)
                          if self.num_registers else None)
        positions = self.pos_grid ** 2 + (1 if self.embed_class else 0)
        self.pos_embed = self.add_weight(name="pos_embed", shape=(1, positions, self.dim),
                                         initializer=keras.initializers.TruncatedNormal(stddev=0.02))
        for block in self.blocks:
            block.build((None, None, self.dim))
        self.norm.build((None, None, self.dim))
        self.built = True

    def _patch_grid_positions(self, height, width, dtype):
        """[1, height * width, C] position embeddings of the patch tokens for a height x width patch grid."""
        start = 1 if self.embed_class else 0
        grid = ops.reshape(ops.cast(self.pos_embed[0, start:], "float32"), (self.pos_grid, self.pos_grid, self.dim))
        resampled = resample_position_grid(grid, height, width, self.pos_antialias)  # float32 as timm
        return ops.cast(ops.reshape(resampled, (1, -1, self.dim)), dtype)

    def tokens(self, images, training=False):
        """[B, 1 + registers + h*w, C] final-normed tokens (timm's `forward_features`): CLS, registers, patches."""
        if self.dynamic_img_pad:
            # Zeros up to the next multiple of 14; the VALID conv drops the surplus of this fixed 13-pixel pad.
            pad = PATCH_SIZE - 1
            images = ops.pad(images, ((0, 0), (0, pad), (0, pad), (0, 0)))
        x = self.patch_embed(images)  # VALID stride 14: floor(H / 14) x floor(W / 14)
        batch, height, width = ops.shape(x)[0], ops.shape(x)[1], ops.shape(x)[2]
        x = ops.reshape(x, (batch, -1, self.dim)) + self._patch_grid_positions(height, width, x.dtype)
        cls = ops.cast(self.cls_token, x.dtype)
        if self.embed_class:
            cls = cls + ops.cast(self.pos_embed[:, :1], x.dtype)
        prefix = [ops.tile(cls, (batch, 1, 1))]
        if self.num_registers:
            prefix.append(ops.tile(ops.cast(self.reg_token, x.dtype), (batch, 1, 1)))
        x = ops.concatenate(prefix + [x], axis=1)
        for block in self.blocks:
            x = block(x, training=training)
        return self.norm(x)

    def call(self, images, training=False):
        return self.tokens(images, training=training)[:, 0]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.dim)

    def get_config(self):
        config = super().get_config()
        config.update(variant=self.variant, width=self.width, depth=self.depth, num_heads=self.num_heads,
                      pos_grid=self.pos_grid, dynamic_img_pad=self.dynamic_img_pad,
                      pos_antialias=self.pos_antialias, drop_path_rate=self.drop_path_rate)
        return config


# --- weights: timm / official DINOv2 state dicts, keras-hub presets ------------------------------------------
def timm_vit_targets(backbone: ViTBackbone, prefix: str = "") -> dict:
    """{timm key: (our variable, layout)} of a `ViTBackbone` (layouts as `cvm.export.torch_sample4geo`)."""
    if not backbone.built:
        backbone.build()
    targets = {}

    def add(key, variable, layout=None):
        targets[prefix + key] = (variable, layout)

    add("cls_token", backbone.cls_token)
    if backbone.num_registers:
        add("reg_token", backbone.reg_token)
    add("pos_embed", backbone.pos_embed)
    add("patch_embed.proj.weight", backbone.patch_embed.kernel, "conv")
    add("patch_embed.proj.bias", backbone.patch_embed.bias)
    for i, block in enumerate(backbone.blocks):
        name = f"blocks.{i}."
        for ours, theirs in ((block.norm1, "norm1"), (block.norm2, "norm2")):
            add(name + theirs + ".weight", ours.gamma)
            add(name + theirs + ".bias", ours.beta)
        for ours, theirs in ((block.qkv, "attn.qkv"), (block.proj, "attn.proj"), (block.fc1, "mlp.fc1"),
                             (block.fc2, "mlp.fc2")):
            add(name + theirs + ".weight", ours.kernel, "dense")
            add(name + theirs + ".bias", ours.bias)
        add(name + "ls1.gamma", block.gamma1)
        add(name + "ls2.gamma", block.gamma2)
    add("norm.weight", backbone.norm.gamma)
    add("norm.bias", backbone.norm.beta)
    return targets


def official_to_timm(state: dict) -> dict:
    """The facebookresearch/dinov2 layout (`dinov2_vits14[_reg4]_pretrain.pth`) -> timm's, as timm converts it.

    `mask_token` (iBOT's masked-patch embedding, unused at inference) is dropped; with registers,
    `register_tokens` becomes `reg_token` and the CLS position entry is folded into `cls_token` (timm's
    no_embed_class layout: the CLS position is a constant, so this is exact).
    """
    state = dict(state)
    state.pop("mask_token", None)
    if "register_tokens" in state:
        state["reg_token"] = state.pop("register_tokens")
        if "pos_embed" in state and "cls_token" in state:
            state["cls_token"] = state["cls_token"] + state["pos_embed"][:, :1]
            state["pos_embed"] = state["pos_embed"][:, 1:]
    return state


def _read_safetensors(path: str) -> dict:
    try:
        from safetensors.numpy import load_file
    except ImportError as error:
        raise CvmError(f"reading {path} needs safetensors (pip install safetensors), or pass a .pth state "
                       "dict") from error
    try:
        state = load_file(path)
    except Exception as error:
        raise CvmError(f"could not read {path} as a safetensors file: {error}") from error
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return {k: np.asarray(v, np.float32) for k, v in state.items()}


def _no_download_error(name: str, variant: str) -> CvmError:
    timm_name = _TIMM_NAMES.get(variant, "vit_base_patch14_dinov2.lvd142m")
    return CvmError(
        f"weights={name!r}: pretrained DINOv2 weights cannot be downloaded on these machines, and none are faked. "
        f"On a machine with internet access run `import timm, torch; torch.save(timm.create_model({timm_name!r}, "
        f"pretrained=True, num_classes=0).state_dict(), '{variant}.pth')` (or fetch the official "
        "dinov2_vit*14[_reg4]_pretrain.pth from https://dl.fbaipublicfiles.com/dinov2/, or save a keras-hub "
        "preset directory), copy the file here and pass its path as the weights")


def read_dinov2_state(path, variant: str = "dinov2_base") -> dict:
    """{timm key: float32 ndarray} of a local DINOv2 weights file: a timm or official state dict
    (`.pth` / `.pt` / `.bin` via torch.load(weights_only=True), or `.safetensors`)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        if path in _PRESET_NAMES or path.split(".")[0] in _PRESET_NAMES:
            raise _no_download_error(path, variant)
        raise CvmError(f"DINOv2 weights not found: {path}; pass None or the path of a local timm / official DINOv2 "
                       "state dict (.pth, .bin, .safetensors) or keras-hub preset directory")
    if path.endswith(".safetensors"):
        state = _read_safetensors(path)
    elif path.endswith((".pth", ".pt", ".bin")):
        from cvm.export.torch_sample4geo import read_torch_state_dict  # lazily: cvm.export imports cvm.models

        state = read_torch_state_dict(path)
    else:
        raise CvmError(f"DINOv2 weights must be a .pth / .pt / .bin / .safetensors state dict or a keras-hub preset "
                       f"directory: {path}")
    return official_to_timm(state)


def keras_hub_dinov2_state(preset_dir) -> tuple:
    """({timm key: ndarray}, its keras-hub config) of a local keras-hub `DINOV2Backbone` preset directory."""
    preset_dir = os.fspath(preset_dir)
    config_path = os.path.join(preset_dir, "config.json")
    try:
        with open(config_path) as f:
            config = json.load(f)
    except (OSError, ValueError) as error:
        raise CvmError(f"{preset_dir} is not a keras-hub preset directory (no readable config.json: {error})") from None
    if config.get("class_name") != "DINOV2Backbone":
        raise CvmError(f"{preset_dir} holds a keras-hub {config.get('class_name')!r}, not a DINOV2Backbone")
    try:
        import keras_hub
    except ImportError as error:
        raise CvmError("reading a keras-hub preset needs keras-hub (pip install 'cvm[hub]')") from error
    hub_config = config.get("config", {})
    if hub_config.get("use_swiglu_ffn") or int(hub_config.get("patch_size", PATCH_SIZE)) != PATCH_SIZE:
        raise CvmError(f"{preset_dir}: only patch-14 DINOv2 ViTs with a GELU MLP (small / base / large) are supported")
    hub = keras_hub.models.DINOV2Backbone.from_preset(preset_dir)  # a local directory: nothing is downloaded
    embeddings, dim = hub.embeddings, hub.hidden_dim
    state = {"cls_token": embeddings.cls_token.numpy(),
             "pos_embed": embeddings.position_embeddings.numpy(),  # the learned grid, not the resized copy
             # HWIO -> OIHW, so that every source goes through the same torch-layout assignment.
             "patch_embed.proj.weight": np.transpose(embeddings.patch_embeddings.projection.kernel.numpy(),
                                                     (3, 2, 0, 1)),
             "patch_embed.proj.bias": embeddings.patch_embeddings.projection.bias.numpy(),
             "norm.weight": hub.layernorm.gamma.numpy(), "norm.bias": hub.layernorm.beta.numpy()}
    if hub.num_register_tokens:
        state["register_tokens"] = embeddings.register_tokens.numpy()
    for i, layer in enumerate(hub.encoder.layers):
        name = f"blocks.{i}."
        mha = layer.attention.attention
        # EinsumDense kernels [C, heads, d] (q, k, v) and [heads, d, C] (output): heads-major, as timm's qkv.
        qkv = [mha._query_dense, mha._key_dense, mha._value_dense]
        state[name + "attn.qkv.weight"] = np.concatenate([d.kernel.numpy().reshape(dim, -1) for d in qkv], 1).T
        state[name + "attn.qkv.bias"] = np.concatenate([d.bias.numpy().reshape(-1) for d in qkv])
        state[name + "attn.proj.weight"] = mha._output_dense.kernel.numpy().reshape(-1, dim).T
        state[name + "attn.proj.bias"] = mha._output_dense.bias.numpy()
        for ours, norm in (("norm1", layer.norm1), ("norm2", layer.norm2)):
            state[name + ours + ".weight"], state[name + ours + ".bias"] = norm.gamma.numpy(), norm.beta.numpy()
        for ours, dense in (("mlp.fc1", layer.mlp.fc1), ("mlp.fc2", layer.mlp.fc2)):
            state[name + ours + ".weight"], state[name + ours + ".bias"] = dense.kernel.numpy().T, dense.bias.numpy()
        state[name + "ls1.gamma"] = layer.layer_scale1.lambda1.numpy()
        state[name + "ls2.gamma"] = layer.layer_scale2.lambda1.numpy()
    # keras-hub adds the CLS position before inserting registers, as the official code: same fold as there.
    return official_to_timm({k: np.asarray(v, np.float32) for k, v in state.items()}), hub_config


def load_dinov2_weights(backbone: ViTBackbone, source) -> None:
    """Loads DINOv2 weights into `backbone` strictly: every tensor used, none missing, every shape checked.

    `source`: a {timm key: array} dict; the path of a timm (`timm.create_model("vit_*_patch14[_reg4]_dinov2",
    num_classes=0).state_dict()`) or official DINOv2 state dict (`.pth` / `.pt` / `.bin` / `.safetensors`); or a
    keras-hub `DINOV2Backbone` preset directory. Preset names ("dinov2_small", "imagenet", ...) raise a
    CvmError: nothing can be downloaded here. On any mismatch nothing is assigned.
    """
    from cvm.export.torch_sample4geo import assign_strictly

    if isinstance(source, dict):
        state, where = official_to_timm(source), "the state dict"
    elif os.path.isdir(os.fspath(source)):
        state, hub_config = keras_hub_dinov2_state(source)
        where = os.fspath(source)
        if int(hub_config.get("num_heads", backbone.num_heads)) != backbone.num_heads:
            raise CvmError(f"{where}: {hub_config['num_heads']} attention heads, the backbone has {backbone.num_heads}")
    else:
        where = os.fspath(source)
        state = read_dinov2_state(where, backbone.variant)
    if "embeddings.cls_token" in state or any(k.startswith("encoder.layer.") for k in state):
        raise CvmError(f"{where} is a Hugging Face transformers Dinov2Model checkpoint; pass timm's "
                       f"({_TIMM_NAMES.get(backbone.variant)}) or the official DINOv2 state dict instead")
    hint = (f"is it a {backbone.variant} ({backbone.dim} wide, {backbone.depth} blocks, {backbone.num_registers} "
            f"registers, {backbone.pos_grid}x{backbone.pos_grid} position grid) DINOv2 state dict?")
    assign_strictly(timm_vit_targets(backbone), state, where, model_name=f"the {backbone.variant} ViT", hint=hint)


def vit_options_from_state(state: dict, prefix: str = "", source: str = "the checkpoint") -> dict:
    """Sample4Geo backbone options (backbone, backbone_width, backbone_depths, backbone_pos_grid) of the timm
    DINOv2 ViT whose tensors `state` holds under `prefix`. Heads cannot be read from shapes: a released width
    gets its variant's heads; any other width is taken as a scaled dinov2_small (6 heads)."""
    try:
        proj = state[prefix + "patch_embed.proj.weight"]
        pos = state[prefix + "pos_embed"]
    except KeyError as error:
        raise CvmError(f"{source} has no {error.args[0]}: not a timm DINOv2 ViT state dict") from None
    dim, patch = int(proj.shape[0]), tuple(int(s) for s in proj.shape[2:])
    if patch != (PATCH_SIZE, PATCH_SIZE) or int(proj.shape[1]) != 3:
        raise CvmError(f"{source}: patch embedding {tuple(proj.shape)}; only RGB patch-14 DINOv2 ViTs are supported")
    blocks = {int(m.group(1)) for k in state for m in [re.match(rf"{re.escape(prefix)}blocks\.(\d+)\.", k)] if m}
    if not blocks:
        raise CvmError(f"{source} has no {prefix}blocks.*: not a timm ViT state dict")
    depth = max(blocks) + 1
    registers = int(state[prefix + "reg_token"].shape[1]) if prefix + "reg_token" in state else 0
    if registers not in (0, 4):
        raise CvmError(f"{source}: {registers} register tokens; DINOv2 has 0 or 4")
    grid_positions = int(pos.shape[1]) - (0 if registers else 1)
    grid = int(round(grid_positions ** 0.5))
    if grid * grid != grid_positions:
        raise CvmError(f"{source}: {grid_positions} patch position embeddings are not a square grid")
    suffix = "_reg4" if registers else ""
    for variant in ("dinov2_small", "dinov2_base", "dinov2_large"):
        base_dim, base_depth = VIT_VARIANTS[variant][:2]
        if dim == base_dim:
            return {"backbone": variant + suffix, "backbone_width": 1.0,
                    "backbone_depths": None if depth == base_depth else (depth,),
                    "backbone_pos_grid": None if grid == PRETRAIN_GRID else grid}
    width = dim / VIT_VARIANTS["dinov2_small"][0]
    vit_config("dinov2_small", width)  # raises unless a multiple of 6 heads
    return {"backbone": "dinov2_small" + suffix, "backbone_width": width, "backbone_depths": (depth,),
            "backbone_pos_grid": None if grid == PRETRAIN_GRID else grid}
