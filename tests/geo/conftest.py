"""Fixtures of the geo tests: a tiny random-weight model, its SavedModel, a small synthetic town."""

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def tiny_model():
    """(encoder, spec) of a random-init SAFA small enough to run in milliseconds."""
    from cvm.data.images import ImageSpec
    from cvm.models import build_model

    spec = ImageSpec(ground_size=(32, 128), aerial_size=(64, 64))
    model = build_model("safa", backbone_width=0.0625, spatial_maps=2, keep_prob=1.0, init="he",
                        ground_size=spec.ground_size, aerial_size=spec.aerial_size)
    return model, spec


@pytest.fixture(scope="session")
def saved_model(tiny_model, tmp_path_factory):
    from cvm.export.savedmodel import export_savedmodel

    model, spec = tiny_model
    out = str(tmp_path_factory.mktemp("sm") / "model")
    export_savedmodel(model, spec, out, metadata={"method": "safa", "checkpoint": "random init"})
    return out


@pytest.fixture(scope="session")
def town(tmp_path_factory):
    """A small geo-referenced synthetic town (400 m world, 3 panoramas, 2 photos)."""
    from cvm.data.synthetic.town import write_town

    out = str(tmp_path_factory.mktemp("town"))
    write_town(out, seed=3, size_m=400.0, panos=3, photos=2, pano_size=(64, 256), ortho_mpp=0.8, progress=False)
    return out
