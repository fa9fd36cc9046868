"""Converts the authors' TF1 CVM-Net checkpoints (crossview_localisation) into our Keras models.

The original graph names its variables by `tf.variable_scope`:
    VGG_grd/conv1_1/weights, VGG_grd/conv1_1/biases, ... VGG_sat/conv5_3/biases    (both methods)
    netvlad_grd/cluster_weights, .../cluster_biases, .../cluster_weights2           (CVM-Net-I, per view)
    netvlad_sat/...,  dim_reduction/fc1/weights, dim_reduction/fc1/biases          (CVM-Net-I)
    transformation_trans/{grd,sat}_trans_conv1/{weights,biases}                    (CVM-Net-II)
    transformation_trans_shared/trans_conv{1,2}/{weights,biases}                   (CVM-Net-II)
    netvlad/cluster_weights, ..., netvlad/hidden1_weights                          (CVM-Net-II)
Kernels are HWIO and dense weights [in, out] in both frameworks, so values copy unchanged except
`cluster_weights2`, stored [1, D, K] by the original and [D, K] here.
"""

from __future__ import annotations

import importlib
import os
import re

import numpy as np
import tensorflow as tf

from cvm.errors import CvmError
from cvm.models import CVMNetI, CVMNetII, build_model

# method -> module defining `tf1_variable_map(model)` and `infer_model_options(method, shapes)` for
# the original repository's variable names (one module per original repository).
MAPPINGS = {
    "cvm_net_i": "cvm.export.tf1",
    "cvm_net_ii": "cvm.export.tf1",
    "cvft": "cvm.export.tf1_cvft",
    "cvft_vgg_conv": "cvm.export.tf1_cvft",
    "cvft_vgg_gp": "cvm.export.tf1_cvft",
    "safa": "cvm.export.tf1_safa",
    "regmi_two_stream": "cvm.export.tf1_regmi",
    "regmi_joint": "cvm.export.tf1_regmi",
    "regmi_fusion": "cvm.export.tf1_regmi",
    "dsm": "cvm.export.tf1_dsm",
}
SUPPORTED_METHODS = tuple(MAPPINGS)

# Optimizer state that the original train.py saves with the model (tf.train.Saver(tf.global_variables())).
_OPTIMIZER_SLOT = re.compile(r"/Adam(_\d+)?$")
_OPTIMIZER_SCALAR = re.compile(r"(^|/)(beta1_power|beta2_power|global_step)(_\d+)?$")
# train.py's global step is an unnamed `tf.Variable(0)`, saved as "Variable".
_UNNAMED_STEP = re.compile(r"^Variable(_\d+)?$")


def convert_tf1_checkpoint(checkpoint_path, method, out_path=None, **model_options):
    """Builds `method` and loads every variable of a TF1 CVM-Net checkpoint into it.

    Args:
        checkpoint_path: checkpoint prefix (".../model.ckpt") or a folder holding a `checkpoint` file.
        method: "cvm_net_i" or "cvm_net_ii".
        out_path: optional `.keras` file to save the converted model to.
        **model_options: options of the method's builder (see `cvm.models.build_model`);
            `clusters`, `output_dim` and `backbone_width` default to the values the checkpoint's
            shapes imply.

    Returns:
        The converted keras.Model.

    Raises CvmError when the checkpoint cannot be read, when its variables (optimizer state
    aside) differ from the model's (all missing and unexpected names listed), or on a shape
    mismatch (every mismatched variable named with both shapes).

    Example:
    ```python
    model = convert_tf1_checkpoint("Model/CVM-Net-I/1/model.ckpt", "cvm_net_i", "cvm_net_i.keras")
    ```
    """
    if method not in SUPPORTED_METHODS:
        raise CvmError(f"no TF1 checkpoint mapping for method {method!r}; supported: {', '.join(SUPPORTED_METHODS)}")
    if model_options.get("weights") is not None:
        raise CvmError("convert_tf1_checkpoint takes every weight from the checkpoint: do not pass `weights`")
    if out_path is not None and not os.fspath(out_path).endswith(".keras"):
        raise CvmError(f"the converted model is saved as a .keras file; got out_path={out_path}")
    reader = _open_checkpoint(checkpoint_path)
    shapes = reader.get_variable_to_shape_map()
    dtypes = reader.get_variable_to_dtype_map()
    stored = {name for name in shapes if not is_optimizer_state(name, shapes[name], dtypes[name])}

    mapping = importlib.import_module(MAPPINGS[method])
    options = {**mapping.infer_model_options(method, shapes), **model_options}
    model = build_model(method, **options)
    targets = mapping.tf1_variable_map(model)

    missing = sorted(set(targets) - stored)
    unexpected = sorted(stored - set(targets))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing from the checkpoint: {', '.join(missing)}")
        if unexpected:
            parts.append(f"not in {method}: {', '.join(unexpected)}")
        raise CvmError(f"checkpoint {checkpoint_path} does not match {method}; " + "; ".join(parts))

    mismatched = [
        f"{name} (checkpoint {list(shapes[name])}, model {list(tf1_shape)})"
        for name, (_, tf1_shape) in sorted(targets.items())
        if tuple(shapes[name]) != tuple(tf1_shape)
    ]
    if mismatched:
        raise CvmError(
            f"checkpoint {checkpoint_path} has shapes that do not fit {method} with options {options}: "
            + "; ".join(mismatched)
        )

    for name, (variable, _) in targets.items():
        value = np.asarray(reader.get_tensor(name))
        variable.assign(value.reshape(tuple(variable.shape)).astype(variable.dtype))

    if out_path is not None:
        folder = os.path.dirname(os.fspath(out_path))
        if folder:
            os.makedirs(folder, exist_ok=True)
        model.save(out_path)
    return model


def is_optimizer_state(name: str, shape=None, dtype=None) -> bool:
    """True for Adam slots, beta powers, the global step: saved by train.py, not part of the model."""
    if _OPTIMIZER_SLOT.search(name) or _OPTIMIZER_SCALAR.search(name):
        return True
    # Only an integer scalar named "Variable" is the step; anything else is reported.
    return bool(_UNNAMED_STEP.match(name)) and list(shape or []) == [] and dtype is not None and dtype.is_integer


def tf1_variable_map(model) -> dict:
    """{TF1 variable name: (our variable, shape in the TF1 checkpoint)} for a CVM-Net model."""
    targets = {}

    def add(name, variable, tf1_shape=None):
        targets[name] = (variable, tuple(variable.shape) if tf1_shape is None else tuple(tf1_shape))

    def add_conv(scope, conv):
        add(f"{scope}/weights", conv.kernel)
        add(f"{scope}/biases", conv.bias)

    def add_netvlad(scope, netvlad):
        add(f"{scope}/cluster_weights", netvlad.cluster_weights)
        add(f"{scope}/cluster_biases", netvlad.cluster_biases)
        add(f"{scope}/cluster_weights2", netvlad.cluster_weights2, (1, *netvlad.cluster_weights2.shape))
        if netvlad.output_dim is not None:
            add(f"{scope}/hidden1_weights", netvlad.hidden1_weights)

    for scope, tower in (("VGG_grd", model.ground_tower), ("VGG_sat", model.aerial_tower)):
        for conv in tower.convs:
            add_conv(f"{scope}/{conv.name}", conv)
    if isinstance(model, CVMNetI):
        add_netvlad("netvlad_grd", model.ground_netvlad)
        add_netvlad("netvlad_sat", model.aerial_netvlad)
        add("dim_reduction/fc1/weights", model.dim_reduction.kernel)
        add("dim_reduction/fc1/biases", model.dim_reduction.bias)
    elif isinstance(model, CVMNetII):
        add_conv("transformation_trans/grd_trans_conv1", model.ground_trans_conv)
        add_conv("transformation_trans/sat_trans_conv1", model.aerial_trans_conv)
        add_conv("transformation_trans_shared/trans_conv1", model.shared_trans_conv1)
        add_conv("transformation_trans_shared/trans_conv2", model.shared_trans_conv2)
        add_netvlad("netvlad", model.netvlad)
    else:
        raise CvmError(f"no TF1 variable mapping for {type(model).__name__}")
    return targets


def infer_model_options(method: str, shapes: dict) -> dict:
    """clusters, output_dim and backbone_width implied by the checkpoint's shapes (where present)."""
    options = {}
    first_conv = shapes.get("VGG_grd/conv1_1/weights")
    if first_conv is not None and len(first_conv) == 4:
        options["backbone_width"] = first_conv[-1] / 64.0
    if method == "cvm_net_i":
        biases = shapes.get("netvlad_grd/cluster_biases")
        reduction = shapes.get("dim_reduction/fc1/biases")
    else:
        biases = shapes.get("netvlad/cluster_biases")
        reduction = shapes.get("netvlad/hidden1_weights", [None])[-1:]
    if biases is not None and len(biases) == 1:
        options["clusters"] = int(biases[0])
    if reduction is not None and len(reduction) == 1 and reduction[0] is not None:
        options["output_dim"] = int(reduction[0])
    return options


def _open_checkpoint(checkpoint_path):
    path = os.fspath(checkpoint_path)
    try:
        return tf.train.load_checkpoint(path)
    except (ValueError, tf.errors.OpError) as error:
        raise CvmError(
            f"cannot read a TF1 checkpoint at {path}: {str(error).splitlines()[0]}; pass the checkpoint prefix "
            "(e.g. Model/CVM-Net-I/1/model.ckpt, next to model.ckpt.index) or its folder"
        ) from error
