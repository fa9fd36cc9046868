"""The two-tower shell: a model's constructor is the one place its options live (cvm.models.two_tower)."""

import typing

import keras
import numpy as np
import pytest
from keras import ops

import cvm.models
from cvm.errors import CvmError
from cvm.models import available_methods, build_model, builder_options, model_class
from cvm.models.two_tower import TwoTowerModel, VGGTwoTower, docstring_args

# Small options per method, so every registered model builds in a second.
SMALL = {
    "cvm_net_i": dict(backbone_width=0.125, clusters=4, output_dim=8),
    "cvm_net_ii": dict(backbone_width=0.125, clusters=4, output_dim=8, normalize_output=False),
    "cvft": dict(backbone_width=0.125, aerial_size=(64, 64), sinkhorn_iterations=3, ot_channels=8),
    "cvft_vgg_conv": dict(backbone_width=0.125, aerial_size=(64, 64), resize_mode="half_pixel"),
    "cvft_vgg_gp": dict(backbone_width=0.125),
    "safa": dict(backbone_width=0.125, ground_size=(32, 128), aerial_size=(32, 128), spatial_maps=2),
    "regmi_two_stream": dict(backbone_width=0.0625, output_dim=8, ground_size=(32, 128), aerial_size=(64, 64)),
    "regmi_joint": dict(backbone_width=0.0625, output_dim=8, ground_size=(32, 128), aerial_size=(64, 64)),
    "regmi_fusion": dict(input_dim=6, output_dim=4),
    "dsm": dict(backbone_width=0.125, map_channels=4, aerial_size=(32, 64)),
    "sample4geo": dict(backbone="convnext_tiny", backbone_width=0.25, backbone_depths=(1, 1, 1, 1)),
}


def inputs_for(method, seed=0):
    rng = np.random.default_rng(seed)
    if method == "regmi_fusion":
        return {"ground": rng.normal(size=(2, 12)).astype("float32"), "aerial": rng.normal(size=(2, 6)).astype("float32")}
    aerial = {"safa": (32, 128), "dsm": (32, 64)}.get(method, (64, 64))
    ground = (32, 64) if method == "dsm" else (32, 128)
    return {"ground": rng.uniform(-100, 100, (2, *ground, 3)).astype("float32"),
            "aerial": rng.uniform(-100, 100, (2, *aerial, 3)).astype("float32")}


class Toy(TwoTowerModel):
    """A toy two-tower model: a mean colour per view, scaled.

    Args:
        scale: multiplies the descriptors.
        mode: "plain" or "squared".
        weights: where initial weights would come from (never read back by from_config).
    """

    def __init__(self, scale: float = 2.0, mode: typing.Literal["plain", "squared"] = "plain",
                 weights: typing.Optional[str] = None, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)
        self.mode = mode
        self.weights_source = weights
        self.descriptor_dim = 3

    def encode_ground(self, images, training=False):
        mean = ops.mean(images, axis=(1, 2)) * self.scale
        return mean * mean if self.mode == "squared" else mean

    encode_aerial = encode_ground


class ToyChild(Toy):
    """The toy with an offset.

    Args:
        offset: added to the ground descriptor.
        scale: the child's own default.
    """

    def __init__(self, offset: int = 1, scale: float = 5.0, **kwargs):
        super().__init__(scale=scale, **kwargs)
        self.offset = int(offset)

    def encode_ground(self, images, training=False):
        return super().encode_ground(images) + self.offset


def test_options_come_from_the_constructors_along_the_hierarchy():
    parameters = ToyChild.option_parameters()
    assert set(parameters) == {"offset", "scale", "mode", "weights"}
    assert ToyChild.option_defaults() == {"offset": 1, "scale": 5.0, "mode": "plain", "weights": None}
    assert typing.get_args(parameters["mode"].annotation) == ("plain", "squared")
    helps = ToyChild.option_help()
    assert helps["offset"] == "added to the ground descriptor."
    assert helps["scale"] == "the child's own default."  # the declaring class's text wins
    assert helps["mode"] == '"plain" or "squared".'


def test_config_round_trip_keeps_options_and_drops_weights():
    model = ToyChild(offset=3, mode="squared", weights="/nowhere/vgg.h5")
    config = model.get_config()
    assert {k: config[k] for k in ("offset", "scale", "mode", "weights")} == {
        "offset": 3, "scale": 5.0, "mode": "squared", "weights": "/nowhere/vgg.h5"}
    again = ToyChild.from_config(config)
    assert again.weights_source is None and again.offset == 3 and again.mode == "squared"
    images = np.full((1, 2, 2, 3), 2.0, "float32")
    out = again({"ground": images, "aerial": images})
    np.testing.assert_allclose(np.asarray(out["ground"]), (2.0 * 5.0) ** 2 + 3)  # scale 5, squared, offset 3
    np.testing.assert_allclose(np.asarray(out["aerial"]), (2.0 * 5.0) ** 2)


def test_docstring_args_parses_google_style_sections():
    doc = """Title.

    Args:
        a: first line
            continued.
        b, c: shared text.
        **kwargs: not an option
            nor this.

    Example:
        x: not an arg
    """
    assert docstring_args(doc) == {"a": "first line continued.", "b": "shared text.", "c": "shared text."}


def test_registered_classes_are_two_tower_models_with_documented_options():
    for method in available_methods():
        cls = model_class(method)
        assert issubclass(cls, TwoTowerModel), method
        missing = [name for name, text in cls.option_help().items() if not text]
        assert not missing, f"{method}: options without an Args: line in a docstring: {missing}"


@pytest.mark.parametrize("method", sorted(SMALL))
def test_every_method_reloads_from_its_config_with_equal_outputs(method, tmp_path):
    assert set(SMALL) == set(available_methods())
    model = build_model(method, **SMALL[method])
    config = model.get_config()
    for name, value in SMALL[method].items():
        assert config[name] == (list(value) if isinstance(value, tuple) else value), (method, name)
    assert set(builder_options(method)) <= set(config)
    path = str(tmp_path / f"{method}.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    assert type(reloaded) is type(model) and reloaded.get_config() == config
    batch = inputs_for(method)
    for view in ("ground", "aerial"):
        np.testing.assert_allclose(np.asarray(reloaded(batch)[view]), np.asarray(model(batch)[view]), atol=1e-6)


def test_unknown_option_is_refused_naming_it_and_the_valid_ones():
    with pytest.raises(CvmError, match=r"unknown option\(s\) clusters for method 'safa'.*spatial_maps"):
        build_model("safa", clusters=4)


def test_vgg_two_tower_checks_its_shared_options():
    with pytest.raises(CvmError, match="keep_prob must be in"):
        build_model("cvft_vgg_gp", keep_prob=1.5, backbone_width=0.125)
    with pytest.raises(CvmError, match="needs backbone_width=1.0"):
        build_model("cvft_vgg_gp", weights="imagenet", backbone_width=0.125)
    assert issubclass(model_class("safa"), VGGTwoTower) and builder_options("safa")["freeze_blocks"] == 0
    assert builder_options("cvm_net_i")["freeze_blocks"] == 3


@pytest.mark.parametrize("method", ["cvm_net_i", "cvft_vgg_gp", "safa"])
def test_share_towers_one_vgg_for_both_views(method, tmp_path):
    """The option added in one place (VGGTwoTower's constructor) reaches every VGG method, its config and flag."""
    from cvm.training.config import TrainConfig, model_option_table

    assert "share_towers" in builder_options(method) and not TrainConfig().share_towers
    # Every VGG method takes it, and Sample4Geo, whose option of that name shares its ConvNeXt.
    assert set(model_option_table()["share_towers"].methods) == {
        m for m in available_methods() if issubclass(model_class(m), VGGTwoTower)} | {"sample4geo"}
    two = build_model(method, **SMALL[method])
    one = build_model(method, share_towers=True, **SMALL[method])
    assert one.aerial_tower is one.ground_tower and two.aerial_tower is not two.ground_tower
    tower_size = sum(int(np.prod(w.shape)) for w in two.ground_tower.weights)
    assert one.count_params() == two.count_params() - tower_size
    batch = inputs_for(method)
    if method == "cvft_vgg_gp":  # no per-view layers after the tower: equal views give equal descriptors
        same = {"ground": batch["aerial"], "aerial": batch["aerial"]}
        out = one(same)
        np.testing.assert_allclose(np.asarray(out["ground"]), np.asarray(out["aerial"]), atol=1e-6)
    path = str(tmp_path / "shared.keras")
    one.save(path)
    again = keras.models.load_model(path)
    assert again.share_towers and again.aerial_tower is again.ground_tower
    np.testing.assert_allclose(np.asarray(again(batch)["ground"]), np.asarray(one(batch)["ground"]), atol=1e-6)
