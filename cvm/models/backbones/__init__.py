"""Backbones that methods are built from: ConvNeXt (timm / Keras layout), DINOv2 ViTs (timm layout) and DINOv3
ViTs (keras-hub's) for Sample4Geo-class models."""

from cvm.models.backbones.convnext import (  # noqa: F401
    IMAGENET_MEAN,
    IMAGENET_STD,
    VARIANTS,
    ConvNeXtBackbone,
    ConvNeXtBlock,
    imagenet_normalize,
    keras_convnext,
    load_keras_convnext_weights,
    variant_config,
)
from cvm.models.backbones.dinov3 import DINOV3_VARIANTS, DINOv3Backbone, load_dinov3_weights  # noqa: F401
from cvm.models.backbones.vit import (  # noqa: F401
    VIT_VARIANTS,
    ViTBackbone,
    ViTBlock,
    load_dinov2_weights,
    timm_vit_targets,
    vit_config,
)
