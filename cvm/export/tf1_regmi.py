"""TF1 variable names of Regmi & Shah's matching code (kregmi/cross-view-image-matching) -> our layers.

`cvm.export.tf1.convert_tf1_checkpoint` dispatches here for "regmi_two_stream", "regmi_joint" and
"regmi_fusion". The original graphs name their variables:
    VGG_grd/conv1/weights, VGG_grd/conv1/biases, ... VGG_grd/conv8/biases   ground encoder (VGG.py)
    VGG_sat/conv1/weights, ...                                              aerial encoder
    VGG_grd_seg/conv1/weights, ...                                          synthesized-aerial encoder (joint)
    dim_reduction/fc1/{weights,biases}   aerial FC, 43,008 -> 1,000 (shared by the synthesized aerial)
    dim_reduction/fc2/{weights,biases}   ground FC, 53,760 -> 1,000             (siamese_fc.py)
    fc/fc1/{weights,biases}              fusion: aerial 1,000 -> 1,000
    fc/fc2/{weights,biases}              fusion: ground concat(ground, synthesized) 2,000 -> 1,000
Kernels are HWIO and FC weights [in, out] in both frameworks and both flatten NHWC maps, so every
value copies unchanged.
"""

from __future__ import annotations

from cvm.errors import CvmError
from cvm.models.regmi import PAPER_AERIAL_SIZE, RegmiEncoder, RegmiFusion, RegmiJoint, RegmiTwoStream


def tf1_variable_map(model) -> dict:
    """{TF1 variable name: (our variable, shape in the TF1 checkpoint)} for a Regmi model."""
    targets = {}

    def add_dense(scope, dense):
        targets[f"{scope}/weights"] = (dense.kernel, tuple(dense.kernel.shape))
        targets[f"{scope}/biases"] = (dense.bias, tuple(dense.bias.shape))

    if isinstance(model, RegmiFusion):
        add_dense("fc/fc1", model.aerial_fc)
        add_dense("fc/fc2", model.ground_fc)
        return targets
    if not isinstance(model, (RegmiTwoStream, RegmiJoint)):
        raise CvmError(f"no Regmi TF1 variable mapping for {type(model).__name__}")
    encoders = [("VGG_grd", model.ground_encoder), ("VGG_sat", model.aerial_encoder)]
    if isinstance(model, RegmiJoint):
        encoders.append(("VGG_grd_seg", model.synthesized_encoder))
    for scope, encoder in encoders:
        for conv in encoder.convs:
            add_dense(f"{scope}/{conv.name}", conv)
    add_dense("dim_reduction/fc1", model.aerial_fc)
    add_dense("dim_reduction/fc2", model.ground_fc)
    return targets


def _square_size_for(length: int, width: float, multiscale: bool):
    """The canonical square size (64 x conv6 side) whose flattened encoder output has `length` values."""
    encoder = RegmiEncoder(width=width, multiscale=multiscale)
    for side6 in range(1, 257):
        size = 64 * side6
        if encoder.output_length((size, size)) == length:
            return (size, size)
    return None


def infer_model_options(method: str, shapes: dict) -> dict:
    """Options implied by the checkpoint's shapes: backbone_width, output_dim, aerial_size; fusion input_dim.

    The ground size cannot be recovered from the flattened length alone: it stays at the paper's
    224x1232 unless given (`convert_tf1_checkpoint(..., ground_size=(H, W))`); a mismatch is reported
    by the converter with both shapes. The aerial (square) size defaults to the paper's 512x512 and is
    otherwise taken as the canonical square giving fc1's input length.
    """
    options = {}
    if method == "regmi_fusion":
        aerial_w = shapes.get("fc/fc1/weights")
        if aerial_w is not None and len(aerial_w) == 2:
            options["input_dim"] = int(aerial_w[0])
            options["output_dim"] = int(aerial_w[1])
        return options
    first = shapes.get("VGG_grd/conv1/weights")
    width = 1.0
    if first is not None and len(first) == 4:
        width = first[-1] / 64.0
        options["backbone_width"] = width
    aerial_w = shapes.get("dim_reduction/fc1/weights")
    if aerial_w is not None and len(aerial_w) == 2:
        options["output_dim"] = int(aerial_w[1])
        multiscale = True
        paper = RegmiEncoder(width=width).output_length(PAPER_AERIAL_SIZE)
        if int(aerial_w[0]) != paper:
            size = _square_size_for(int(aerial_w[0]), width, multiscale)
            if size is not None:
                options["aerial_size"] = size
    return options
