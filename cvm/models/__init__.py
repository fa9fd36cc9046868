"""Retrieval models by method name; importing this package registers them and their custom layers.

```python
from cvm.models import build_model
model = build_model("cvm_net_i", backbone_width=0.125, clusters=8, output_dim=32)
model.descriptor_dim, model.l2_normalized  # (32, True)
model_options("safa")  # {option: inspect.Parameter}: the model constructor's options
```
"""

from cvm.models.registry import available_methods, build_model, builder_options, model_class, model_options, register
from cvm.models.two_tower import TwoTowerModel, VGGTwoTower
from cvm.models.vgg import VGG16Tower, load_vgg16_weights
from cvm.models.netvlad import NetVLAD
from cvm.models.cvm_net import CVMNetI, CVMNetII
from cvm.models import synthesis  # noqa: F401  (registers the synthesis GAN layers)
from cvm.models.safa import SAFA, SpatialAwareImportance
from cvm.models.regmi import RegmiEncoder, RegmiFusion, RegmiJoint, RegmiTwoStream
from cvm.models.sinkhorn import Sinkhorn
from cvm.models.cvft import CVFT, CVFTVGGConv, CVFTVGGGP
from cvm.models.dsm import DSM, DSMReduction
from cvm.models import backbones  # noqa: F401  (registers the ConvNeXt layers)
from cvm.models.sample4geo import Sample4Geo

__all__ = [
    "available_methods",
    "build_model",
    "builder_options",
    "model_class",
    "model_options",
    "TwoTowerModel",
    "VGGTwoTower",
    "register",
    "VGG16Tower",
    "load_vgg16_weights",
    "NetVLAD",
    "CVMNetI",
    "CVMNetII",
    "SAFA",
    "SpatialAwareImportance",
    "RegmiEncoder",
    "RegmiTwoStream",
    "RegmiJoint",
    "RegmiFusion",
    "Sinkhorn",
    "CVFT",
    "CVFTVGGConv",
    "CVFTVGGGP",
    "DSM",
    "DSMReduction",
    "Sample4Geo",
]
