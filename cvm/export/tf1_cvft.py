"""TF1 variable names of CVFT's `script/ot_net.py` (YujiaoShi/cross_view_localization_CVFT) -> our layers.

Used by `cvm.export.convert_tf1_checkpoint(prefix, "cvft" | "cvft_vgg_conv" | "cvft_vgg_gp")`.
The original names its variables by `tf.variable_scope`:
    VGG_grd/conv1_1/weights, VGG_grd/conv1_1/biases, ... VGG_sat/conv5_3/biases     (all three networks)
    grd_conv/weights, grd_conv/biases, sat_conv/weights, sat_conv/biases          (CVFT, VGG_conv)
    ot_grd_branchot_conv/weights [1, 1, 64, 1], ot_grd_branchot_conv/biases [1]   (CVFT; the scope is
    ot_grd_branchot_fc/weights [N, N^2], ot_grd_branchot_fc/biases [N^2]          name + 'ot_conv' with
                                                                                  name = 'ot_grd_branch')
Kernels are HWIO and dense weights [in, out] in both frameworks: values copy unchanged.
"""

from __future__ import annotations

import math

from cvm.errors import CvmError
from cvm.models.cvft import CVFT, CVFTVGGGP, _CVFTConvBase

OT_SCOPE = "ot_grd_branch"


def tf1_variable_map(model) -> dict:
    """{TF1 variable name: (our variable, shape in the TF1 checkpoint)} for a CVFT-family model."""
    if not isinstance(model, (_CVFTConvBase, CVFTVGGGP)):
        raise CvmError(f"no CVFT TF1 variable mapping for {type(model).__name__}")
    targets = {}

    def add_layer(scope, layer):
        targets[f"{scope}/weights"] = (layer.kernel, tuple(layer.kernel.shape))
        targets[f"{scope}/biases"] = (layer.bias, tuple(layer.bias.shape))

    for scope, tower in (("VGG_grd", model.ground_tower), ("VGG_sat", model.aerial_tower)):
        for conv in tower.convs:
            add_layer(f"{scope}/{conv.name}", conv)
    if isinstance(model, _CVFTConvBase):
        add_layer("grd_conv", model.ground_conv)
        add_layer("sat_conv", model.aerial_conv)
    if isinstance(model, CVFT):
        add_layer(f"{OT_SCOPE}ot_conv", model.cost_conv)
        add_layer(f"{OT_SCOPE}ot_fc", model.cost_fc)
    return targets


def infer_model_options(method: str, shapes: dict) -> dict:
    """backbone_width, ot_channels and (CVFT) aerial_size implied by the checkpoint's shapes.

    The OT matrix fixes only the number N of aerial-map cells; a square map is assumed
    (sqrt(N) cells a side, aerial input 32 * sqrt(N): 8x8 -> 256x256, the paper's size).
    Pass `aerial_size` explicitly for another shape.
    """
    options = {}
    first_conv = shapes.get("VGG_grd/conv1_1/weights")
    if first_conv is not None and len(first_conv) == 4:
        options["backbone_width"] = first_conv[-1] / 64.0
    reduce_conv = shapes.get("grd_conv/weights")
    if method in ("cvft", "cvft_vgg_conv") and reduce_conv is not None and len(reduce_conv) == 4:
        options["ot_channels"] = int(reduce_conv[-1])
    fc = shapes.get(f"{OT_SCOPE}ot_fc/weights")
    if method == "cvft" and fc is not None and len(fc) == 2:
        side = math.isqrt(int(fc[0]))
        if side * side == int(fc[0]):
            options["aerial_size"] = (32 * side, 32 * side)
    return options
