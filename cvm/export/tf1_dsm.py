"""TF1 variable names of DSM's `script/cir_net_FOV.py` (YujiaoShi/cross_view_localization_DSM) -> our layers.

Used by `cvm.export.convert_tf1_checkpoint(prefix, "dsm")`. `VGG_13_conv_v2_cir` builds the towers inside
`tf.variable_scope(name)` (VGG.py `VGG16`, VGG_cir.py `VGG16_cir`) and calls `conv2(x, 'grd' | 'sat')` *after*
that scope has closed, so the reduction convs sit at the top level:
    VGG_grd/conv1_1/weights, VGG_grd/conv1_1/biases, ... VGG_grd/conv4_3/biases   (ground tower, to conv4_3)
    VGG_sat/conv1_1/weights, ... VGG_sat/conv4_3/biases                           (aerial tower, circular)
    grd/conv_dim_reduct_1/{weights,biases}, grd/conv5_dim_reduct_2/..., grd/conv5_dim_reduct_3/...
    sat/conv_dim_reduct_1/{weights,biases}, sat/conv5_dim_reduct_2/..., sat/conv5_dim_reduct_3/...
Kernels are HWIO in both frameworks: values copy unchanged. Adam slots, beta powers and the unnamed global
step of the released checkpoints are ignored by the converter.
"""

from __future__ import annotations

from cvm.errors import CvmError
from cvm.models.dsm import DSM  # importing registers method "dsm"


def tf1_variable_map(model) -> dict:
    """{TF1 variable name: (our variable, shape in the TF1 checkpoint)} for a DSM model."""
    if not isinstance(model, DSM):
        raise CvmError(f"no DSM TF1 variable mapping for {type(model).__name__}")
    targets = {}
    for scope, tower in (("VGG_grd", model.ground_tower), ("VGG_sat", model.aerial_tower)):
        for conv in tower.convs:
            targets[f"{scope}/{conv.name}/weights"] = (conv.kernel, tuple(conv.kernel.shape))
            targets[f"{scope}/{conv.name}/biases"] = (conv.bias, tuple(conv.bias.shape))
    for scope, reduction in (("grd", model.ground_reduction), ("sat", model.aerial_reduction)):
        for conv in reduction.convs:
            targets[f"{scope}/{conv.name}/weights"] = (conv.kernel, tuple(conv.kernel.shape))
            targets[f"{scope}/{conv.name}/biases"] = (conv.bias, tuple(conv.bias.shape))
    return targets


def infer_model_options(method: str, shapes: dict) -> dict:
    """backbone_width and map_channels implied by the checkpoint's shapes (the input size is not in them:
    the convolutions take any size; the aerial size defaults to the paper's 128x512)."""
    options = {}
    first_conv = shapes.get("VGG_grd/conv1_1/weights")
    if first_conv is not None and len(first_conv) == 4:
        options["backbone_width"] = first_conv[-1] / 64.0
    last = shapes.get("grd/conv5_dim_reduct_3/biases")
    if last is not None and len(last) == 1:
        options["map_channels"] = int(last[0])
    return options
