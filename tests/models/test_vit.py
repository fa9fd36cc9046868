"""DINOv2 ViT backbone: against timm's VisionTransformer (random weights, dynamic_img_size=True), loading, Sample4Geo."""

import math

import numpy as np
import pytest

from tests.timm_import import import_timm_convnext

torch = pytest.importorskip("torch")
import_timm_convnext()  # timm imports torchvision: the quirk handled there
timm = pytest.importorskip("timm")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from cvm.errors import CvmError  # noqa: E402
from cvm.export.torch_sample4geo import convert_torch_checkpoint  # noqa: E402
from cvm.models.backbones.vit import (  # noqa: E402
    ViTBackbone,
    bicubic_resize_matrix,
    load_dinov2_weights,
    vit_config,
)
from cvm.models.sample4geo import Sample4Geo  # noqa: E402

# A tiny DINOv2: width 48, 2 blocks, 3 heads, patch 14; position embeddings learned for a 7x7 grid (98 px)
# instead of 37x37 (518 px), so that 56x112 (4x8 patches) shrinks one axis and grows the other.
TINY = dict(embed_dim=48, depth=2, num_heads=3, img_size=98)
OURS = dict(width=48 / 384, depth=2, num_heads=3, pos_grid=7)
# Error analysis (float32): two blocks of sums of <= 4C = 192 products (relative error ~1e-7 * sqrt(192) each,
# the orders of summation differ between oneDNN and PyTorch), softmax over <= 50 tokens, LayerNorms keeping
# values O(1); the normed CLS token has entries up to ~3. Measured max |difference| <= 9e-7 (AMD EPYC, oneDNN
# on). atol 1e-5 + rtol 1e-5 (<= 4e-5 here) leaves >10x for other CPUs, and still fails plausible slips: a tanh
# GELU moves the descriptors by 2.7e-4, the plain instead of the antialiased bicubic by 0.18 (tested below).
RTOL, ATOL = 1e-5, 1e-5


def randomised_timm_vit(registers=False, seed=0, dynamic_img_pad=False, **overrides):
    """timm's DINOv2 ViT/14 as `timm.create_model(..., dynamic_img_size=True)`, every tensor drawn, eval mode.

    timm's init leaves LayerScale at 1e-5 (blocks ~identity) and the CLS token ~0; here weights are unit-gain,
    gammas in [0.5, 1], tokens and position embeddings N(0, 1), so that every tensor shows in the output.
    """
    torch.manual_seed(seed)
    name = "vit_small_patch14_reg4_dinov2" if registers else "vit_small_patch14_dinov2"
    model = timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True,
                              dynamic_img_pad=dynamic_img_pad, **{**TINY, **overrides}).eval()
    with torch.no_grad():
        for key, p in model.named_parameters():
            if key.endswith("gamma"):
                p.copy_(0.5 + 0.5 * torch.rand_like(p))
            elif key in ("cls_token", "reg_token", "pos_embed"):
                p.copy_(torch.randn_like(p))
            elif p.ndim >= 2:
                p.copy_(torch.randn_like(p) / math.sqrt(p[0].numel()))
            elif key.endswith("weight"):  # LayerNorms
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    return model


def images(seed, n, h, w):
    return np.random.default_rng(seed).standard_normal((n, h, w, 3)).astype(np.float32)


def timm_forward(model, x, features=False):
    with torch.no_grad():
        t = torch.from_numpy(x).permute(0, 3, 1, 2)
        return (model.forward_features(t) if features else model(t)).numpy()


def state_of(model):
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "reg4"])
def timm_and_ours(request, tmp_path_factory):
    """A timm DINOv2 saved as a .pth state dict and converted into ONE Keras instance."""
    registers = request.param
    timm_model = randomised_timm_vit(registers)
    path = str(tmp_path_factory.mktemp("vit") / "dinov2.pth")
    torch.save(timm_model.state_dict(), path)
    ours = ViTBackbone("dinov2_small_reg4" if registers else "dinov2_small", **OURS)
    load_dinov2_weights(ours, path)
    return timm_model, ours


def test_position_resampling_is_pytorchs_bicubic():
    """The per-axis matrices reproduce F.interpolate(bicubic, size=...) with and without antialiasing."""
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    for grid in (7, 37):
        emb = rng.standard_normal((4, grid, grid)).astype(np.float32)
        for size in [(4, 8), (10, 54), (27, 27), (5, 3), (grid, grid)]:
            for antialias in (True, False):
                want = F.interpolate(torch.from_numpy(emb[None]), size=size, mode="bicubic", align_corners=False,
                                     antialias=antialias)[0].numpy()
                rows = np.asarray(bicubic_resize_matrix(size[0], grid, antialias))
                cols = np.asarray(bicubic_resize_matrix(size[1], grid, antialias))
                got = np.einsum("ih,jw,chw->cij", rows, cols, emb)
                # float32 source coordinates (up to 37 * 1.0) carry ~4e-6 error into the cubic weights.
                np.testing.assert_allclose(got, want, atol=2e-5, err_msg=f"{grid}->{size} antialias={antialias}")
    assert np.array_equal(np.asarray(bicubic_resize_matrix(7, 7, True)), np.eye(7))  # same grid: untouched


def test_descriptors_match_timm_at_two_non_square_sizes(timm_and_ours):
    timm_model, ours = timm_and_ours
    for h, w in [(56, 112), (70, 42)]:  # patch grids 4x8 and 5x3 from the 7x7 learned one, one instance
        x = images(h, 2, h, w)
        want = timm_forward(timm_model, x)
        np.testing.assert_allclose(np.asarray(ours(x)), want, rtol=RTOL, atol=ATOL, err_msg=f"{h}x{w}")
        assert np.abs(want[0] - want[1]).max() > 0.1  # the images differ, so do their descriptors
    x = images(1, 1, 56, 112)
    np.testing.assert_allclose(np.asarray(ours.tokens(x)), timm_forward(timm_model, x, features=True),
                               rtol=RTOL, atol=ATOL)  # every token: CLS, registers, patches in timm's order
    assert ours.tokens(x).shape[1] == 1 + ours.num_registers + 4 * 8


def test_plain_bicubic_would_not_match_timm(timm_and_ours):
    """timm's dynamic_img_size path resamples with antialias=True: the plain kernel is measurably different."""
    timm_model, ours = timm_and_ours
    plain = ViTBackbone(ours.variant, pos_antialias=False, **OURS)
    plain.build()
    for mine, theirs in zip(plain.weights, ours.weights):
        mine.assign(theirs)
    x = images(3, 2, 56, 112)
    assert np.abs(np.asarray(plain(x)) - timm_forward(timm_model, x)).max() > 100 * ATOL


def test_sides_not_multiple_of_14_floor_or_pad_as_timm(timm_and_ours):
    timm_model, ours = timm_and_ours
    x = images(4, 2, 61, 100)  # 4.4 x 7.1 patches
    # Default: floor, i.e. timm (which asserts divisibility) on the top-left 56x98 crop.
    np.testing.assert_allclose(np.asarray(ours(x)), timm_forward(timm_model, x[:, :56, :98]), rtol=RTOL, atol=ATOL)
    padded_timm = randomised_timm_vit(ours.num_registers > 0, dynamic_img_pad=True)
    padded_timm.load_state_dict(timm_model.state_dict())
    padded = ViTBackbone(ours.variant, dynamic_img_pad=True, **OURS)
    load_dinov2_weights(padded, state_of(timm_model))
    want = timm_forward(padded_timm, x)  # 5x8 patches, zero-padded bottom / right
    np.testing.assert_allclose(np.asarray(padded(x)), want, rtol=RTOL, atol=ATOL)
    assert np.abs(want - np.asarray(ours(x))).max() > 0.01


def test_official_layout_with_registers_loads_as_timm_converts_it():
    """facebookresearch/dinov2 keys: register_tokens, mask_token, and a CLS entry in pos_embed (reg models)."""
    timm_model = randomised_timm_vit(registers=True, seed=5)
    state = state_of(timm_model)
    cls_position = np.random.default_rng(5).standard_normal((1, 1, 48)).astype(np.float32)
    state["pos_embed"] = np.concatenate([cls_position, state["pos_embed"]], axis=1)
    state["cls_token"] = state["cls_token"] - cls_position
    state["register_tokens"] = state.pop("reg_token")
    state["mask_token"] = np.zeros((1, 48), np.float32)
    ours = ViTBackbone("dinov2_small_reg4", **OURS)
    load_dinov2_weights(ours, state)
    x = images(6, 2, 42, 84)
    np.testing.assert_allclose(np.asarray(ours(x)), timm_forward(timm_model, x), rtol=RTOL, atol=ATOL)


def test_strict_loader_names_missing_leftover_and_misshaped_keys(tmp_path):
    good = state_of(randomised_timm_vit(seed=2))
    ours = ViTBackbone("dinov2_small", **OURS)
    ours.build()
    before = [np.asarray(w).copy() for w in ours.weights]
    with pytest.raises(CvmError, match=r"missing keys: blocks\.1\.ls2\.gamma"):
        load_dinov2_weights(ours, {k: v for k, v in good.items() if k != "blocks.1.ls2.gamma"})
    with pytest.raises(CvmError, match=r"unexpected keys: head\.weight"):
        load_dinov2_weights(ours, {**good, "head.weight": np.zeros((10, 48), np.float32)})
    with pytest.raises(CvmError, match=r"wrong shapes: pos_embed \(1, 50, 48\) \(expected \(1, 1370, 48\)\)"):
        load_dinov2_weights(ViTBackbone("dinov2_small", width=0.125, depth=2, num_heads=3), good)  # 37x37 grid
    assert all(np.array_equal(a, np.asarray(w)) for a, w in zip(before, ours.weights))  # nothing half-loaded
    path = str(tmp_path / "leftover.pth")
    torch.save({k: torch.from_numpy(v) for k, v in {**good, "fc_norm.weight": np.ones(48, np.float32)}.items()},
               path)
    with pytest.raises(CvmError, match=r"unexpected keys: fc_norm\.weight"):
        load_dinov2_weights(ours, path)


def test_preset_names_give_the_no_download_error(tmp_path):
    vit = ViTBackbone("dinov2_small", **OURS)
    for name in ("dinov2_small", "vit_small_patch14_dinov2.lvd142m", "imagenet"):
        with pytest.raises(CvmError, match="cannot be downloaded on these machines.*pass its path"):
            load_dinov2_weights(vit, name)
    with pytest.raises(CvmError, match="cannot be downloaded"):
        Sample4Geo(backbone="dinov2_small", weights="dinov2_small", backbone_depths=None)
    with pytest.raises(CvmError, match="not found"):
        load_dinov2_weights(vit, str(tmp_path / "absent.pth"))
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(CvmError, match=r"\.safetensors"):
        load_dinov2_weights(vit, str(tmp_path / "w.npz"))


def test_sample4geo_dinov2_shares_one_vit_across_view_sizes_and_reloads(tmp_path):
    model = Sample4Geo(backbone="dinov2_small", backbone_width=0.125, backbone_depths=(2,))
    assert len(model.backbones) == 1 and model.descriptor_dim == 48 and model.ground_backbone.num_heads == 6
    data = {"ground": images(7, 2, 56, 224), "aerial": images(8, 2, 112, 112)}  # 4x16 and 8x8 patches
    out = model(data)
    for view in ("ground", "aerial"):
        assert out[view].shape == (2, 48) and out[view].dtype == "float32"
        np.testing.assert_allclose(np.linalg.norm(np.asarray(out[view]), axis=1), 1.0, atol=1e-6)
    path = str(tmp_path / "s4g_dinov2.keras")
    model.save(path)
    again = keras.saving.load_model(path)
    assert again.get_config()["backbone_depths"] == [2] and again.backbone == "dinov2_small"
    for view in ("ground", "aerial"):
        np.testing.assert_array_equal(np.asarray(again(data)[view]), np.asarray(out[view]))
    # Unknown sizes in one traced graph (the trainer / exporters trace with None dims).
    encode = tf.function(model.ground_backbone.call, input_signature=[tf.TensorSpec([None, None, None, 3])])
    np.testing.assert_allclose(encode(data["aerial"]).numpy(), np.asarray(model.ground_backbone(data["aerial"])),
                               atol=1e-6)


def test_convert_sample4geo_style_dinov2_checkpoint(tmp_path):
    """`cvm convert --torch_checkpoint`: a `model.*` timm DINOv2 + logit_scale file, detected by its keys."""
    timm_model = randomised_timm_vit(registers=True, seed=3, num_heads=6)  # 6 heads: dinov2_small's, scaled
    state = {"module.model." + k: v for k, v in timm_model.state_dict().items()}  # saved from DataParallel
    state["module.logit_scale"] = torch.tensor(3.1)
    path = str(tmp_path / "weights_e40_dinov2.pth")
    torch.save(state, path)
    model = convert_torch_checkpoint(path, "sample4geo")
    assert (model.backbone, model.backbone_width, model.backbone_depths, model.backbone_pos_grid) == (
        "dinov2_small_reg4", 0.125, (2,), 7)
    assert float(model.logit_scale.numpy()) == pytest.approx(3.1)
    x = images(9, 2, 70, 140)
    want = timm_forward(timm_model, x)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(model.encode_ground(x)), want, rtol=RTOL, atol=ATOL)
    del state["module.model.blocks.1.mlp.fc2.bias"]
    torch.save(state, path)
    with pytest.raises(CvmError, match=r"missing keys: model\.blocks\.1\.mlp\.fc2\.bias"):
        convert_torch_checkpoint(path, "sample4geo")


def test_keras_hub_preset_directory(tmp_path):
    """A keras-hub DINOV2Backbone preset (random, saved locally) loads into the same numbers as keras-hub's model."""
    keras_hub = pytest.importorskip("keras_hub")
    hub = keras_hub.models.DINOV2Backbone(
        patch_size=14, num_layers=2, hidden_dim=48, num_heads=3, intermediate_dim=192, num_register_tokens=4,
        image_shape=(98, 98, 3), position_embedding_shape=(98, 98, 3))
    rng = np.random.default_rng(4)
    for w in hub.weights:
        scale = 1.0 / np.sqrt(np.prod(w.shape[:-1])) if len(w.shape) > 1 else 0.3
        w.assign(rng.standard_normal(w.shape).astype("float32") * scale + (1.0 if "gamma" in w.path else 0.0))
    embeddings = hub.embeddings  # 98 px = the learned grid: keras-hub's resized copy is the grid itself
    embeddings.interpolated_position_embeddings.assign(embeddings.position_embeddings)
    hub.save_to_preset(str(tmp_path / "preset"))
    ours = ViTBackbone("dinov2_small_reg4", **OURS)
    load_dinov2_weights(ours, str(tmp_path / "preset"))
    x = images(10, 2, 98, 98)
    np.testing.assert_allclose(np.asarray(ours.tokens(x)), np.asarray(hub({"images": x})), atol=1e-5)
    with pytest.raises(CvmError, match="6 attention heads|3 attention heads"):
        load_dinov2_weights(ViTBackbone("dinov2_small_reg4", width=0.125, depth=2, pos_grid=7), str(tmp_path / "preset"))


def test_variants_options_and_config():
    assert vit_config("dinov2_small") == (384, 12, 6, 0)
    assert vit_config("dinov2_base") == (768, 12, 12, 0)
    assert vit_config("dinov2_large_reg4") == (1024, 24, 16, 4)
    assert vit_config("dinov2_base", 0.125, depth=3) == (96, 3, 12, 0)
    with pytest.raises(CvmError, match="multiple of its 6 attention heads"):
        vit_config("dinov2_small", 0.1)
    with pytest.raises(CvmError, match="unknown ViT variant"):
        vit_config("dinov2_giant")
    layer = ViTBackbone("dinov2_base_reg4", width=0.125, depth=1, pos_grid=5, dynamic_img_pad=True,
                        drop_path_rate=0.1)
    clone = ViTBackbone.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config() and clone.num_registers == 4 and clone.dim == 96
