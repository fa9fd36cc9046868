"""The released Sample4Geo PyTorch checkpoints (Skyy93/Sample4Geo) -> `cvm.models.Sample4Geo`, strictly.

`cvm convert --torch_checkpoint weights_e40_98.6830.pth --method sample4geo --out s4g_cvusa.keras`.

The authors save `torch.save(model.state_dict())` of their `TimmModel`: a timm ConvNeXt
(`convnext_base.fb_in22k_ft_in1k_384`, `num_classes=0`) under `model.` and the scalar `logit_scale`, with a
`module.` prefix on every key when saved from DataParallel. timm names and our layers:

  model.stem.0.{weight [C0, 3, 4, 4], bias}          -> backbone.stem_conv {kernel [4, 4, 3, C0], bias}
  model.stem.1.{weight, bias}                        -> backbone.stem_norm {gamma, beta}
  model.stages.i.downsample.0.{weight, bias}  (i>0)  -> backbone.downsample_norm_i {gamma, beta}
  model.stages.i.downsample.1.{weight [C, C', 2, 2], bias} -> backbone.downsample_conv_i {kernel [2, 2, C', C]}
  model.stages.i.blocks.j.conv_dw.{weight [C, 1, 7, 7], bias} -> stage_i_block_j.conv_dw {kernel [7, 7, C, 1]}
  model.stages.i.blocks.j.norm.{weight, bias}        -> stage_i_block_j.norm {gamma, beta}
  model.stages.i.blocks.j.mlp.fc{1,2}.{weight [out, in], bias} -> stage_i_block_j.fc{1,2} {kernel [in, out]}
  model.stages.i.blocks.j.gamma [C]                  -> stage_i_block_j.gamma
  model.head.norm.{weight, bias}                     -> backbone.head_norm {gamma, beta}
  logit_scale []                                     -> logit_scale

The file is read with `torch.load(..., weights_only=True)`: tensors only, never arbitrary pickled code, and the
authors' code is never imported. The load is strict (Sample4Geo's own `strict=False` evaluation load silently
kept ImageNet weights, their issue #45): every key must be used, none may be missing, every shape must match;
otherwise a CvmError names the missing, unexpected and mis-shaped keys. The backbone's size (variant, width,
blocks per stage) is read from the shapes, so a ConvNeXt-Tiny/Small/Base checkpoint converts without options.

A Sample4Geo-style checkpoint whose `model.*` is a timm DINOv2 ViT (`model.patch_embed.proj.weight`,
`model.cls_token`, `model.pos_embed`, `model.blocks.i.*`, `model.norm.*`; `model.reg_token` for reg4) is detected
by its keys and converted the same way into a `dinov2_*` Sample4Geo (`cvm.models.backbones.vit.timm_vit_targets`);
its width, depth, registers and position grid come from the shapes.
"""

from __future__ import annotations

import os
import re

import numpy as np

from cvm.errors import CvmError

SUPPORTED_METHODS = ("sample4geo",)
_DATA_PARALLEL_PREFIX = "module."
# Our kernel layout from PyTorch's: conv OIHW -> HWIO; depthwise [C, 1, kh, kw] -> [kh, kw, C, 1]; Linear .T.
_TO_KERAS = {"conv": (2, 3, 1, 0), "depthwise": (2, 3, 0, 1), "dense": (1, 0), None: None}
_TO_TORCH = {"conv": (3, 2, 0, 1), "depthwise": (2, 3, 0, 1), "dense": (1, 0), None: None}


def read_torch_state_dict(path) -> dict:
    """{key: float32 ndarray} of a PyTorch state_dict file, loaded with weights_only=True, `module.` stripped."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CvmError(f"PyTorch checkpoint not found: {path}")
    try:
        import torch
    except ImportError as error:
        raise CvmError("reading a PyTorch checkpoint needs torch (pip install torch, CPU build is enough)") from error
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a pickle with code in it, a truncated file, not a torch file
        raise CvmError(f"could not read {path} as a PyTorch state_dict with torch.load(weights_only=True): "
                       f"{error}") from error
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CvmError(f"{path} is not a state_dict (a dict of tensors, as torch.save(model.state_dict()) writes); "
                       "extract the model's state_dict first")
    keys = list(state)
    if all(k.startswith(_DATA_PARALLEL_PREFIX) for k in keys):
        state = {k[len(_DATA_PARALLEL_PREFIX):]: v for k, v in state.items()}
    return {k: v.detach().to(torch.float32).cpu().numpy() for k, v in state.items()}


def timm_convnext_targets(backbone, prefix: str = "") -> dict:
    """{timm key: (our variable, layout)} of a `ConvNeXtBackbone` (layout: "conv", "depthwise", "dense" or None)."""
    targets = {}

    def add(key, variable, layout=None):
        targets[prefix + key] = (variable, layout)

    add("stem.0.weight", backbone.stem_conv.kernel, "conv")
    add("stem.0.bias", backbone.stem_conv.bias)
    add("stem.1.weight", backbone.stem_norm.gamma)
    add("stem.1.bias", backbone.stem_norm.beta)
    for i, blocks in enumerate(backbone.stages):
        if i > 0:
            norm, conv = backbone.downsample_norms[i - 1], backbone.downsample_convs[i - 1]
            add(f"stages.{i}.downsample.0.weight", norm.gamma)
            add(f"stages.{i}.downsample.0.bias", norm.beta)
            add(f"stages.{i}.downsample.1.weight", conv.kernel, "conv")
            add(f"stages.{i}.downsample.1.bias", conv.bias)
        for j, block in enumerate(blocks):
            name = f"stages.{i}.blocks.{j}."
            add(name + "conv_dw.weight", block.conv_dw.kernel, "depthwise")
            add(name + "conv_dw.bias", block.conv_dw.bias)
            add(name + "norm.weight", block.norm.gamma)
            add(name + "norm.bias", block.norm.beta)
            add(name + "mlp.fc1.weight", block.fc1.kernel, "dense")
            add(name + "mlp.fc1.bias", block.fc1.bias)
            add(name + "mlp.fc2.weight", block.fc2.kernel, "dense")
            add(name + "mlp.fc2.bias", block.fc2.bias)
            add(name + "gamma", block.gamma)
    add("head.norm.weight", backbone.head_norm.gamma)
    add("head.norm.bias", backbone.head_norm.beta)
    return targets


def torch_shape(variable, layout) -> tuple:
    """The shape the PyTorch tensor of `variable` has."""
    shape = tuple(int(s) for s in variable.shape)
    order = _TO_TORCH[layout]
    return shape if order is None else tuple(shape[a] for a in order)


def to_keras(value: np.ndarray, layout) -> np.ndarray:
    order = _TO_KERAS[layout]
    return value if order is None else np.transpose(value, order)


def to_torch(value: np.ndarray, layout) -> np.ndarray:
    order = _TO_TORCH[layout]
    return value if order is None else np.transpose(value, order)


def assign_strictly(targets: dict, state: dict, source: str, model_name: str = "the Sample4Geo model",
                    hint: str = "is it a Sample4Geo checkpoint (model.* + logit_scale)?") -> None:
    """Assigns state[key] to each target after checking that the keys match exactly and every shape fits."""
    missing = sorted(set(targets) - set(state))
    unexpected = sorted(set(state) - set(targets))
    wrong = [f"{k} {tuple(state[k].shape)} (expected {torch_shape(*targets[k])})"
             for k in sorted(set(targets) & set(state)) if tuple(state[k].shape) != torch_shape(*targets[k])]
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(_abbreviate(missing))}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(_abbreviate(unexpected))}")
    if wrong:
        problems.append(f"wrong shapes: {', '.join(_abbreviate(wrong))}")
    if problems:
        raise CvmError(f"{source} does not match {model_name} ({len(targets)} tensors): {'; '.join(problems)}. "
                       f"Nothing was loaded; {hint}")
    for key, (variable, layout) in targets.items():
        variable.assign(to_keras(state[key], layout).astype(np.float32))


def _abbreviate(items, limit: int = 12) -> list:
    return items if len(items) <= limit else items[:limit] + [f"... ({len(items) - limit} more)"]


def infer_backbone_options(state: dict, source: str = "the checkpoint") -> dict:
    """backbone, backbone_width and backbone_depths of the timm ConvNeXt whose tensors `state` holds (or, for a
    timm DINOv2 ViT under model.*, those and backbone_pos_grid: cvm.models.backbones.vit)."""
    from cvm.models.backbones.convnext import VARIANTS, variant_config

    if "model.patch_embed.proj.weight" in state:  # a ViT: ConvNeXt has stem.0 instead of patch_embed
        from cvm.models.backbones.vit import vit_options_from_state

        return vit_options_from_state(state, prefix="model.", source=source)
    try:
        dims = [int(state["model.stem.0.weight"].shape[0])]
    except KeyError:
        raise CvmError(f"{source} has no model.stem.0.weight: not a Sample4Geo ConvNeXt state_dict "
                       f"(first keys: {', '.join(sorted(state)[:5])})") from None
    depths = []
    for i in range(4):
        blocks = {int(m.group(1)) for k in state for m in [re.match(rf"model\.stages\.{i}\.blocks\.(\d+)\.", k)] if m}
        key = f"model.stages.{i}.blocks.0.conv_dw.weight"
        if not blocks or key not in state:
            raise CvmError(f"{source} has no {key}: not a 4-stage timm ConvNeXt")
        depths.append(max(blocks) + 1)
        if i > 0:
            dims.append(int(state[key].shape[0]))
    depths, dims = tuple(depths), tuple(dims)
    for variant, (base_depths, base_dims) in VARIANTS.items():  # a released variant exactly
        if dims == base_dims and depths == base_depths:
            return {"backbone": variant, "backbone_width": 1.0, "backbone_depths": None}
    for variant in ("convnext_tiny", "convnext_base"):  # else a scaled one (small = tiny's widths, deeper)
        width = dims[0] / VARIANTS[variant][1][0]
        if variant_config(variant, width, depths)[1] == dims:
            return {"backbone": variant, "backbone_width": width, "backbone_depths": depths}
    raise CvmError(f"{source}: ConvNeXt stage widths {dims} are not a multiple of the tiny/small/base widths")


def load_sample4geo_state(model, state: dict, source: str = "the checkpoint") -> None:
    """Copies a Sample4Geo state_dict ({key: ndarray}, `module.` already stripped) into `model`, strictly."""
    if not model.share_towers:
        raise CvmError("Sample4Geo checkpoints hold one network for both views: build the model with share_towers=True")
    from cvm.models.backbones.vit import ViTBackbone, timm_vit_targets

    if isinstance(model.ground_backbone, ViTBackbone):
        targets = timm_vit_targets(model.ground_backbone, prefix="model.")
    else:
        targets = timm_convnext_targets(model.ground_backbone, prefix="model.")
    targets["logit_scale"] = (model.logit_scale, None)
    assign_strictly(targets, state, source)


def convert_torch_checkpoint(checkpoint_path, method: str = "sample4geo", out_path=None, **model_options):
    """Builds the model of a released PyTorch checkpoint and loads it strictly (see the module docstring).

    Args:
        checkpoint_path: the `.pth` state_dict file (e.g. `weights_e40_98.6830.pth`).
        method: "sample4geo".
        out_path: optional `.keras` file to save the converted model to.
        **model_options: Sample4Geo options overriding those read from the shapes (e.g. drop_path_rate).

    Returns:
        The converted `Sample4Geo` model.
    """
    if method not in SUPPORTED_METHODS:
        raise CvmError(f"--method {method!r} has no PyTorch mapping; supported: {', '.join(SUPPORTED_METHODS)}")
    if out_path is not None and not os.fspath(out_path).endswith(".keras"):
        raise CvmError(f"the converted model is saved as a .keras file; got --out {out_path}")
    from cvm.models.sample4geo import Sample4Geo

    source = os.fspath(checkpoint_path)
    state = read_torch_state_dict(source)
    options = {**infer_backbone_options(state, source), **model_options}
    options["weights"] = None
    model = Sample4Geo(**options)
    load_sample4geo_state(model, state, source)
    if out_path is not None:
        model.save(os.fspath(out_path))
    return model
