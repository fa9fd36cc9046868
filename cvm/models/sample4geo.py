"""Sample4Geo (Deuser et al., ICCV 2023), the model of Skyy93/Sample4Geo `sample4geo/model.py` (`TimmModel`).

One timm ConvNeXt with `num_classes=0` (global average pool, then `head.norm`) embeds both views (or, as in
Sample4Geo's descendants, a DINOv2 ViT whose final-normed CLS token is the descriptor); a scalar
`logit_scale` (initialised to log(1/0.07)) is a parameter of the model, and the InfoNCE loss uses its exp
(`cvm.losses.infonce`). The authors normalise the features inside the loss and at evaluation; here the model
returns them L2-normalised (the cvm contract) which gives the same logits and similarities.
"""

from __future__ import annotations

import math
import typing
from typing import Optional

import keras
from keras import ops

from cvm.errors import CvmError
from cvm.models.backbones.convnext import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    POOLINGS,
    VARIANTS,
    ConvNeXtBackbone,
    imagenet_normalize,
    load_keras_convnext_weights,
)
from cvm.models.backbones.dinov3 import DINOV3_VARIANTS, DINOv3Backbone, load_dinov3_weights
from cvm.models.backbones.vit import VIT_VARIANTS, ViTBackbone, load_dinov2_weights
from cvm.models.netvlad import l2_normalize
from cvm.models.registry import register
from cvm.models.two_tower import TwoTowerModel

# log(1 / 0.07): CLIP's initial temperature, as `TimmModel.logit_scale`.
LOGIT_SCALE_INIT = math.log(1.0 / 0.07)

# Input sizes of the released configurations (height, width): aerial 384x384; CVUSA / CVACT ground 140x768
# (the whole panorama squashed); VIGOR ground 384x768.
AERIAL_SIZE = (384, 384)
GROUND_SIZE_CVUSA = (140, 768)
GROUND_SIZE_VIGOR = (384, 768)

__all__ = ["Sample4Geo", "LOGIT_SCALE_INIT", "IMAGENET_MEAN", "IMAGENET_STD", "imagenet_normalize"]


@register("sample4geo")
@keras.saving.register_keras_serializable(package="cvm")
class Sample4Geo(TwoTowerModel):
    """Sample4Geo retrieval model: a ConvNeXt (or DINOv2 ViT) shared by both views, unit descriptors.

    Paper: "Sample4Geo: Hard Negative Sampling For Cross-View Geo-Localisation", Deuser, Habel and Oswald,
    ICCV 2023, https://arxiv.org/abs/2303.11851 (code: https://github.com/Skyy93/Sample4Geo).

    `{"ground": [B, Hg, Wg, 3], "aerial": [B, Ha, Wa, 3]}` -> `{"ground": [B, D], "aerial": [B, D]}`, D the
    last stage's width (1024 for ConvNeXt-Base; the ViT's width for DINOv2: 384 / 768 / 1024). Inputs are RGB
    images normalised with the ImageNet mean and std (`imagenet_normalize` of 0-255 images), any size of at
    least 32 px a side (ViT: 14; paper: aerial 384x384, panorama 140x768, which a ViT/14 sees as 27x27 and
    10x54 patches, one shared ViT resampling its position embeddings per view: cvm.models.backbones.vit). The
    model owns the learnable `logit_scale` (log of the InfoNCE logit multiplier, initialised to log(1/0.07) =
    2.659) that `cvm.losses.SymmetricInfoNCE` takes; it is saved with the model.
    Descriptors leave in float32 under mixed precision.

    Args:
        backbone: "convnext_tiny", "convnext_small" or "convnext_base" (the paper's, at 384 px); or a DINOv2
            ViT/14: "dinov2_small", "dinov2_base", "dinov2_large", each also with "_reg4" (4 register tokens); or a
            DINOv3 ViT/16 (keras-hub's DINOV3Backbone, RoPE positions): "dinov3_vit_small", "dinov3_vit_base",
            "dinov3_vit_large".
        weights: None (random init). ConvNeXt: "imagenet" (Keras' ImageNet ConvNeXt of `backbone`, downloaded
            at 224 px pretraining; the paper's 384 px timm weights come in through `cvm convert
            --torch_checkpoint`) or the path of a local Keras ConvNeXt notop `.h5` / `.weights.h5` / `.keras`
            file. DINOv2: the path of a local timm or official DINOv2 state dict (`.pth` / `.bin` /
            `.safetensors`) or keras-hub DINOV2Backbone preset directory, loaded strictly; DINOv3: a local
            keras-hub DINOV3Backbone preset directory. Preset names cannot be downloaded here and raise an error
            saying how to get the file.
        backbone_width: channel multiplier of the ConvNeXt stages / ViT width (1.0 is the variant; 0.125-0.25
            trains on a CPU; needs weights=None otherwise).
        backbone_depths: blocks per stage (e.g. (1, 1, 2, 1)); None keeps the variant's (3, 3, 27, 3) for base.
            A ViT has one stage: (blocks,), e.g. (2,).
        share_towers: one backbone for both views, as Sample4Geo (False: one per view).
        drop_path_rate: stochastic-depth rate of the last block (0 as the paper's timm default).
        backbone_pos_grid: DINOv2 only: side of the learned position-embedding grid (None: 37, DINOv2's 518 px
            pretraining; a timm model made with img_size=384 has 27); `cvm convert` reads it from checkpoints.
        pooling: ConvNeXt only: "avg" (Sample4Geo's pooled head) or "flatten" (the head's LayerNorm at every
            position of the last map, flattened: keeps the layout that a polar aerial shares with the panorama,
            as SAFA does; both views must give maps of one size).
        ground_size: the panorama's input size (set by the run); with pooling="flatten" it fixes the descriptor
            size.
        aerial_size: the aerial's input size (set by the run); with pooling="flatten" its map must equal the
            panorama's.

    Example:
    ```python
    model = Sample4Geo(backbone="convnext_tiny", backbone_width=0.25, backbone_depths=(1, 1, 1, 1))
    out = model({"ground": np.zeros((2, 64, 256, 3), "float32"),
                 "aerial": np.zeros((2, 96, 96, 3), "float32")})
    out["ground"].shape  # (2, 192), unit rows
    float(ops.exp(model.logit_scale))  # 14.29 = 1 / 0.07
    ```
    """

    l2_normalized = True
    infonce = True  # trained with the symmetric InfoNCE on its own logit_scale (cvm.losses.infonce)

    def __init__(self, backbone: typing.Literal["convnext_tiny", "convnext_small", "convnext_base", "dinov2_small",
                                                "dinov2_base", "dinov2_large", "dinov2_small_reg4", "dinov2_base_reg4",
                                                "dinov2_large_reg4", "dinov3_vit_small", "dinov3_vit_base",
                                                "dinov3_vit_large"] = "convnext_base",
                 weights: Optional[str] = None, backbone_width: float = 1.0, backbone_depths: Optional[tuple] = None,
                 share_towers: bool = True, drop_path_rate: float = 0.0, backbone_pos_grid: Optional[int] = None,
                 pooling: typing.Literal["avg", "flatten"] = "avg", ground_size: Optional[tuple] = None,
                 aerial_size: Optional[tuple] = None, **kwargs):
        super().__init__(**kwargs)
        if pooling not in POOLINGS:
            raise CvmError(f"Sample4Geo pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        if pooling != "avg" and (backbone in VIT_VARIANTS or backbone in DINOV3_VARIANTS):
            raise CvmError(f"pooling={pooling!r} keeps a ConvNeXt's last map; a ViT backbone ({backbone}) gives its "
                           "CLS token: use pooling='avg'")
        self.pooling = pooling
        self.ground_size = None if ground_size is None else tuple(int(v) for v in ground_size)
        self.aerial_size = None if aerial_size is None else tuple(int(v) for v in aerial_size)
        if backbone not in VARIANTS and backbone not in VIT_VARIANTS and backbone not in DINOV3_VARIANTS:
            raise CvmError(f"unknown Sample4Geo backbone {backbone!r}; valid: "
                           f"{', '.join([*VARIANTS, *VIT_VARIANTS, *DINOV3_VARIANTS])}")
        is_dinov3 = backbone in DINOV3_VARIANTS
        is_vit = backbone in VIT_VARIANTS or is_dinov3
        if is_vit and backbone_depths is not None and len(tuple(backbone_depths)) != 1:
            raise CvmError(f"a ViT backbone has one stage: backbone_depths must be (blocks,), got {backbone_depths}")
        if backbone_pos_grid is not None and (not is_vit or is_dinov3):
            raise CvmError(f"backbone_pos_grid is a DINOv2 option; {backbone} has no position embeddings")
        if weights is not None and (float(backbone_width) != 1.0 or backbone_depths is not None):
            raise CvmError(f"weights={weights!r} needs backbone_width=1.0 and backbone_depths=None (got "
                           f"{backbone_width}, {backbone_depths}); pass weights=None")
        self.backbone = backbone
        self.weights_source = None if weights is None else str(weights)
        self.backbone_width = float(backbone_width)
        self.backbone_depths = None if backbone_depths is None else tuple(int(d) for d in backbone_depths)
        self.share_towers = bool(share_towers)
        self.drop_path_rate = float(drop_path_rate)
        self.backbone_pos_grid = None if backbone_pos_grid is None else int(backbone_pos_grid)
        if is_dinov3:
            # keras-hub's DINOv3 (cvm.models.backbones.dinov3): RoPE positions, any view size, no pos grid.
            tower_class, load_weights = DINOv3Backbone, load_dinov3_weights
            tower = dict(variant=backbone, width=self.backbone_width, drop_path_rate=self.drop_path_rate,
                         depth=None if self.backbone_depths is None else self.backbone_depths[0])
        elif is_vit:
            # One ViT serves both view sizes: its position embeddings are resampled per call.
            tower_class, load_weights = ViTBackbone, load_dinov2_weights
            tower = dict(variant=backbone, width=self.backbone_width, drop_path_rate=self.drop_path_rate,
                         depth=None if self.backbone_depths is None else self.backbone_depths[0])
            if self.backbone_pos_grid is not None:
                tower["pos_grid"] = self.backbone_pos_grid
        else:
            tower_class, load_weights = ConvNeXtBackbone, load_keras_convnext_weights
            tower = dict(variant=backbone, width=self.backbone_width, depths=self.backbone_depths,
                         drop_path_rate=self.drop_path_rate, pooling=pooling)
        if self.share_towers:
            self.ground_backbone = tower_class(name="backbone", **tower)
            self.aerial_backbone = self.ground_backbone
        else:
            self.ground_backbone = tower_class(name="ground_backbone", **tower)
            self.aerial_backbone = tower_class(name="aerial_backbone", **tower)
        self.descriptor_dim = self.ground_backbone.output_dim
        if pooling == "flatten":
            self.descriptor_dim = self._flat_dim()
        self.build()
        if self.weights_source is not None:
            for backbone_layer in self.backbones:
                load_weights(backbone_layer, self.weights_source)

    def _flat_dim(self) -> Optional[int]:
        """h * w * C of the flattened maps, which must be equal for both views (None while the sizes are unknown)."""
        if self.ground_size is None or self.aerial_size is None:
            return None
        ground, aerial = ConvNeXtBackbone.map_size(self.ground_size), ConvNeXtBackbone.map_size(self.aerial_size)
        if ground != aerial or min(ground) < 1:
            raise CvmError(f"pooling='flatten' compares the views' last maps position by position, so they must have "
                           f"one size: the ground {self.ground_size} gives {ground}, the aerial {self.aerial_size} "
                           f"gives {aerial}; use equal view sizes (a polar aerial: --aerial_polar --aerial_size equal "
                           "to --ground_size) or pooling='avg'")
        return ground[0] * ground[1] * self.ground_backbone.output_dim

    @property
    def backbones(self) -> list:
        """The distinct backbone layers (one when the towers are shared)."""
        return [self.ground_backbone] if self.share_towers else [self.ground_backbone, self.aerial_backbone]

    def build(self, input_shape=None):
        for backbone_layer in self.backbones:
            backbone_layer.build()
        # A weight of the model, so that optimizers train it and .keras files / checkpoints carry it.
        self.logit_scale = self.add_weight(name="logit_scale", shape=(),
                                           initializer=keras.initializers.Constant(LOGIT_SCALE_INIT))
        self.built = True

    def _encode(self, images, backbone_layer, training):
        if images.shape[-1] is not None and images.shape[-1] != 3:
            raise CvmError(f"Sample4Geo takes RGB images (3 channels), got {images.shape[-1]} channels")
        descriptor = ops.cast(backbone_layer(images, training=training), "float32")
        return l2_normalize(descriptor, axis=-1)

    def encode_ground(self, images, training=False):
        """[B, Hg, Wg, 3] ImageNet-normalised RGB panoramas -> [B, D] unit descriptors."""
        return self._encode(images, self.ground_backbone, training)

    def encode_aerial(self, images, training=False):
        """[B, Ha, Wa, 3] ImageNet-normalised RGB aerial images -> [B, D] unit descriptors."""
        return self._encode(images, self.aerial_backbone, training)

    def get_config(self):
        config = super().get_config()
        if config.get("backbone_depths") is not None:
            config["backbone_depths"] = list(config["backbone_depths"])
        return config
