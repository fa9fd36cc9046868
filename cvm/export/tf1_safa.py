"""TF1 variable names of SAFA's `script/spatial_net.py` (YujiaoShi/cross_view_localization_SAFA) -> our layers.

Used by `cvm.export.convert_tf1_checkpoint(prefix, "safa")`. The original names its variables by
`tf.variable_scope` (VGG.py `VGG16_conv` and spatial_net.py `spatial_aware`):
    VGG_grd/conv1_1/weights, VGG_grd/conv1_1/biases, ... VGG_grd/conv5_3/biases   (ground tower)
    VGG_sat/conv1_1/weights, ... VGG_sat/conv5_3/biases                          (aerial tower)
    spatial_grd/weights1 [N, N/2, d], spatial_grd/biases1 [1, N/2, d]             (ground importance,
    spatial_grd/weights2 [N/2, N, d], spatial_grd/biases2 [1, N, d]                N = H*W of its map)
    spatial_sat/weights1, .../biases1, .../weights2, .../biases2                  (aerial importance)
Kernels are HWIO in both frameworks and the importance weights keep their layout: values copy
unchanged. The released checkpoints also hold Adam slots, beta powers and the unnamed global step,
which the converter ignores.
"""

from __future__ import annotations

from cvm.errors import CvmError
from cvm.models.safa import PANORAMA_SIZE, PLAIN_AERIAL_SIZE, POLAR_SIZE, SAFA, feature_map_size

SPATIAL_VARIABLES = ("weights1", "biases1", "weights2", "biases2")


def tf1_variable_map(model) -> dict:
    """{TF1 variable name: (our variable, shape in the TF1 checkpoint)} for a SAFA model."""
    if not isinstance(model, SAFA):
        raise CvmError(f"no SAFA TF1 variable mapping for {type(model).__name__}")
    targets = {}

    def add(name, variable):
        targets[name] = (variable, tuple(variable.shape))

    for scope, tower in (("VGG_grd", model.ground_tower), ("VGG_sat", model.aerial_tower)):
        for conv in tower.convs:
            add(f"{scope}/{conv.name}/weights", conv.kernel)
            add(f"{scope}/{conv.name}/biases", conv.bias)
    for scope, layer in (("spatial_grd", model.ground_importance), ("spatial_sat", model.aerial_importance)):
        for name in SPATIAL_VARIABLES:
            add(f"{scope}/{name}", getattr(layer, name))
    return targets


def _paper_size(positions: int, candidates) -> tuple:
    """The paper input size whose aggregated map has `positions` cells, or None."""
    for size in candidates:
        h, w = feature_map_size(size)
        if h * w == positions:
            return size
    return None


def infer_model_options(method: str, shapes: dict) -> dict:
    """backbone_width, spatial_maps and the input sizes implied by the checkpoint's shapes.

    The importance weights fix only the number N = H*W of map cells of each view; N = 80 is read as
    the paper's 112x616 input (4x20 map) and N = 64 as the 256x256 plain aerial (8x8). For another N
    pass `ground_size` / `aerial_size` to `convert_tf1_checkpoint`; the shape check names the variables.
    """
    options = {}
    first_conv = shapes.get("VGG_grd/conv1_1/weights")
    if first_conv is not None and len(first_conv) == 4:
        options["backbone_width"] = first_conv[-1] / 64.0
    ground = shapes.get("spatial_grd/weights1")
    if ground is not None and len(ground) == 3:
        options["spatial_maps"] = int(ground[-1])
        size = _paper_size(int(ground[0]), (PANORAMA_SIZE,))
        if size is not None:
            options["ground_size"] = size
    aerial = shapes.get("spatial_sat/weights1")
    if aerial is not None and len(aerial) == 3:
        size = _paper_size(int(aerial[0]), (POLAR_SIZE, PLAIN_AERIAL_SIZE))
        if size is not None:
            options["aerial_size"] = size
    return options
