"""Tiny models of every retrieval method and a tiny trained model_dir, shared by test_onnx.py and test_litert.py."""

import os
import subprocess
import sys

import cv2
import numpy as np

from cvm.data.images import ImageSpec, normalise
from cvm.data.polar import polar_transform
from cvm.models import build_model

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")

# Small options per image method (each model builds and exports in seconds), with the ImageSpec it takes.
GROUND, AERIAL = (32, 128), (64, 64)
CASES = {
    "cvm_net_i": (dict(backbone_width=0.0625, clusters=4, output_dim=8, keep_prob=1.0), ImageSpec(GROUND, AERIAL)),
    "cvm_net_ii": (dict(backbone_width=0.0625, clusters=4, output_dim=8, keep_prob=1.0), ImageSpec(GROUND, AERIAL)),
    "cvft": (dict(backbone_width=0.0625, aerial_size=AERIAL, sinkhorn_iterations=3, ot_channels=8, keep_prob=1.0),
             ImageSpec(GROUND, AERIAL)),
    "cvft_vgg_conv": (dict(backbone_width=0.0625, aerial_size=AERIAL, resize_mode="half_pixel", keep_prob=1.0),
                      ImageSpec(GROUND, AERIAL)),
    "cvft_vgg_gp": (dict(backbone_width=0.0625, keep_prob=1.0), ImageSpec(GROUND, AERIAL)),
    # SAFA on polar aerials: the polar map of a 60 px square aerial is made inside the exported graph.
    "safa": (dict(backbone_width=0.0625, spatial_maps=2, keep_prob=1.0, init="he", ground_size=(16, 88),
                  aerial_size=(16, 88)),
             ImageSpec((16, 88), (16, 88), aerial_polar=True, polar_stretch=True)),
    "regmi_two_stream": (dict(backbone_width=0.0625, output_dim=8, ground_size=GROUND, aerial_size=AERIAL,
                              keep_prob=1.0), ImageSpec(GROUND, AERIAL)),
    "regmi_joint": (dict(backbone_width=0.0625, output_dim=8, ground_size=GROUND, aerial_size=AERIAL, keep_prob=1.0),
                    ImageSpec(GROUND, AERIAL)),
}
POLAR_SIDE = 60


def tiny(method):
    options, spec = CASES[method]
    return build_model(method, **options), spec


def keras_descriptors(model, spec, tower, images_rgb, size, rows=None):
    """The Keras model's unit descriptors of RGB uint8 images of any size, preprocessed here step by step as
    the training pipeline does (crop rows, OpenCV INTER_AREA, BGR, polar map, Caffe mean): the reference."""
    out = []
    for image in images_rgb:
        bgr = image[..., ::-1]
        if rows is not None:
            bgr = bgr[int(round(rows[0] * bgr.shape[0])):int(round(rows[1] * bgr.shape[0]))]
        if bgr.shape[:2] != tuple(size):
            bgr = cv2.resize(np.ascontiguousarray(bgr), (size[1], size[0]), interpolation=cv2.INTER_AREA)
        if tower == "aerial" and spec.aerial_polar:
            bgr = polar_transform(bgr, *spec.aerial_size, stretch=spec.polar_stretch)
        out.append(bgr)
    x = normalise(np.stack(out), spec)
    encode = model.encode_ground if tower == "ground" else model.encode_aerial
    d = np.asarray(encode(x, training=False), np.float64)
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def photos(shape, n=3, seed=0):
    """uint8 RGB images with structure (gradients and blobs) and noise."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    out = []
    for _ in range(n):
        f = rng.uniform(2, 9, 3)
        base = 128 + 90 * np.sin(f[None, None] * (xx[..., None] + 0.7 * yy[..., None]) + rng.uniform(0, 6, 3))
        out.append(np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8))
    return np.stack(out)


def cvm(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "cvm.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def trained_model_dir(path, **overrides):
    """A model_dir of a tiny run trained for two steps on the synthetic world (as tests/cli/test_cli.py)."""
    from cvm.training.config import TrainConfig
    from cvm.training.loop import Run

    options = dict(model_dir=str(path), synthetic_pairs=24, ground_size=(32, 128), aerial_size=(64, 64),
                   batch_size=4, output_dim=8, clusters=4, keep_prob=1.0, epochs=1, steps_per_epoch=2,
                   backbone_width=0.0625, jit_compile=False)
    options.update(overrides)
    Run(TrainConfig(**options), progress=False).train()
    return path
