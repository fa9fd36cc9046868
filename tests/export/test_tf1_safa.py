"""SAFA TF1 checkpoint conversion against a real TF1 graph with spatial_net.py's variable names.

The graph restates the original (VGG.py `VGG16_conv`, spatial_net.py `spatial_aware` and `SAFA`) with
tf.compat.v1 at 1/8 width, 4 importance maps and small inputs (ground 64x256 -> 2x8 map, aerial 64x64
-> 2x2 map), trains one Adam step so the checkpoint carries optimizer slots like the authors' files,
and records its inference outputs (keep_prob 1).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from cvm.errors import CvmError
from cvm.export import convert_tf1_checkpoint
from cvm.export.tf1_safa import infer_model_options

v1 = tf.compat.v1
CHANNELS = (8, 16, 32, 64, 64)  # VGG16 at width 0.125
MAPS = 4
GROUND, AERIAL = (64, 256), (64, 64)
OPTIONS = dict(ground_size=GROUND, aerial_size=AERIAL)


def tf1_conv(x, name, c_in, c_out):
    with v1.variable_scope(name):
        init = v1.glorot_uniform_initializer()  # tf.contrib.layers.xavier_initializer, weights and biases
        w = v1.get_variable("weights", [3, 3, c_in, c_out], initializer=init)
        b = v1.get_variable("biases", [c_out], initializer=init)
        return tf.nn.relu(tf.nn.conv2d(x, w, strides=[1, 1, 1, 1], padding="SAME") + b)


def tf1_vgg(x, keep_prob, scope):
    """VGG16_conv: every conv trainable, dropout after conv4_1 .. conv5_3, no pool after block 5."""
    layout = [(1, 2), (2, 2), (3, 3), (4, 3), (5, 3)]
    c_in = 3
    with v1.variable_scope(scope, reuse=v1.AUTO_REUSE):
        for (block, count), c_out in zip(layout, CHANNELS):
            for i in range(1, count + 1):
                x = tf1_conv(x, f"conv{block}_{i}", c_in, c_out)
                if block >= 4:
                    x = tf.nn.dropout(x, rate=1 - keep_prob)
                c_in = c_out
            if block < 5:
                x = tf.nn.max_pool2d(x, 2, 2, "SAME")
    return x


def tf1_spatial_aware(feature, dimension, name):
    _, height, width, _ = feature.get_shape().as_list()
    n = height * width
    vec1 = tf.reshape(tf.reduce_mean(feature, axis=-1), [-1, n])
    with v1.variable_scope(name):
        normal = v1.truncated_normal_initializer(mean=0.0, stddev=0.005)
        w1 = v1.get_variable("weights1", [n, int(n / 2), dimension], initializer=normal)
        b1 = v1.get_variable("biases1", [1, int(n / 2), dimension], initializer=v1.constant_initializer(0.1))
        vec2 = tf.einsum("bi,ijd->bjd", vec1, w1) + b1
        w2 = v1.get_variable("weights2", [int(n / 2), n, dimension], initializer=normal)
        b2 = v1.get_variable("biases2", [1, n, dimension], initializer=v1.constant_initializer(0.1))
        return tf.einsum("bjd,jid->bid", vec2, w2) + b2


def tf1_safa(x_sat, x_grd, keep_prob):
    outputs = []
    for x, vgg_scope, spatial_scope in ((x_sat, "VGG_sat", "spatial_sat"), (x_grd, "VGG_grd", "spatial_grd")):
        local = tf.nn.max_pool2d(tf1_vgg(x, keep_prob, vgg_scope), 2, 2, "SAME")
        _, h, w, c = local.get_shape().as_list()
        weights = tf1_spatial_aware(local, MAPS, spatial_scope)
        pooled = tf.einsum("bic,bid->bdc", tf.reshape(local, [-1, h * w, c]), weights)
        outputs.append(tf.nn.l2_normalize(tf.reshape(pooled, [-1, MAPS * c]), 1))
    return outputs  # sat_global, grd_global


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """(checkpoint prefix, inputs, TF1 outputs, all checkpoint tensors) of the original graph."""
    rng = np.random.default_rng(0)
    inputs = {
        "ground": rng.uniform(-100, 100, (2, *GROUND, 3)).astype("float32"),
        "aerial": rng.uniform(-100, 100, (2, *AERIAL, 3)).astype("float32"),
    }
    prefix = str(tmp_path_factory.mktemp("safa") / "model.ckpt")
    with tf.Graph().as_default():
        v1.set_random_seed(0)
        sat = v1.placeholder(tf.float32, [None, *AERIAL, 3])
        grd = v1.placeholder(tf.float32, [None, *GROUND, 3])
        keep_prob = v1.placeholder(tf.float32)
        sat_global, grd_global = tf1_safa(sat, grd, keep_prob)
        model_variables = v1.global_variables()
        loss = tf.reduce_sum(tf.matmul(sat_global, grd_global, transpose_b=True))
        global_step = tf.Variable(0, trainable=False)  # unnamed, as in train_cvusa.py
        train_step = v1.train.AdamOptimizer(1e-3, 0.9, 0.999).minimize(loss, global_step=global_step)
        with v1.Session() as session:
            session.run(v1.global_variables_initializer())
            # Perturb every weight: at the original init the importance maps are all ~0.1 (bias-dominated),
            # which would hide a swapped or transposed importance weight.
            for variable in model_variables:
                session.run(variable.assign_add(rng.normal(0.0, 0.05, variable.shape).astype("float32")))
            session.run(train_step, {sat: inputs["aerial"], grd: inputs["ground"], keep_prob: 0.8})
            feed = {sat: inputs["aerial"], grd: inputs["ground"], keep_prob: 1.0}
            aerial_out, ground_out = session.run([sat_global, grd_global], feed)
            v1.train.Saver(v1.global_variables()).save(session, prefix)
    reader = tf.train.load_checkpoint(prefix)
    tensors = {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}
    return prefix, inputs, {"ground": ground_out, "aerial": aerial_out}, tensors


def test_checkpoint_has_the_original_names(original):
    *_, tensors = original
    assert tensors["spatial_grd/weights1"].shape == (16, 8, MAPS)  # ground map 2x8
    assert tensors["spatial_sat/biases2"].shape == (1, 4, MAPS)  # aerial map 2x2
    assert "VGG_sat/conv5_3/biases" in tensors and any(n.endswith("/Adam_1") for n in tensors)


def test_converted_model_reproduces_the_tf1_graph(original, tmp_path):
    prefix, inputs, expected, _ = original
    out_path = str(tmp_path / "safa.keras")
    model = convert_tf1_checkpoint(prefix, "safa", out_path=out_path, **OPTIONS)
    assert (model.backbone_width, model.spatial_maps, model.descriptor_dim) == (0.125, MAPS, MAPS * 64)
    for view, encode in (("ground", model.encode_ground), ("aerial", model.encode_aerial)):
        np.testing.assert_allclose(np.asarray(encode(inputs[view])), expected[view], atol=1e-5, rtol=1e-4)
    reloaded = keras.models.load_model(out_path)
    np.testing.assert_allclose(np.asarray(reloaded.encode_aerial(inputs["aerial"])), expected["aerial"],
                               atol=1e-5, rtol=1e-4)


def test_wrong_input_size_is_a_named_shape_mismatch(original):
    prefix, *_ = original
    with pytest.raises(CvmError) as error:
        convert_tf1_checkpoint(prefix, "safa", ground_size=GROUND, aerial_size=(128, 128))
    assert "spatial_sat/weights1 (checkpoint [4, 2, 4], model [16, 8, 4])" in str(error.value)


def test_missing_variables_are_listed(original, tmp_path):
    from tests.export.test_tf1 import write_checkpoint

    *_, tensors = original
    tensors = {k: v for k, v in tensors.items() if k not in ("spatial_grd/biases2", "VGG_grd/conv3_1/weights")}
    prefix = write_checkpoint(str(tmp_path / "broken.ckpt"), tensors)
    with pytest.raises(CvmError) as error:
        convert_tf1_checkpoint(prefix, "safa", **OPTIONS)
    assert "spatial_grd/biases2" in str(error.value) and "VGG_grd/conv3_1/weights" in str(error.value)


def test_paper_sizes_are_inferred_from_the_shapes():
    shapes = {"VGG_grd/conv1_1/weights": [3, 3, 3, 64], "spatial_grd/weights1": [80, 40, 8],
              "spatial_sat/weights1": [64, 32, 8]}
    assert infer_model_options("safa", shapes) == dict(backbone_width=1.0, spatial_maps=8, ground_size=(112, 616),
                                                       aerial_size=(256, 256))
    polar = dict(shapes, **{"spatial_sat/weights1": [80, 40, 8]})
    assert infer_model_options("safa", polar)["aerial_size"] == (112, 616)
