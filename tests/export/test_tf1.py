"""TF1 checkpoint conversion against a real TF1 graph built with the original variable names.

The graph restates the original code (VGG.py, loupe.py NetVLAD.forward, siamese_fc.py, transnet_v2.py,
cvm_net.py) with tf.compat.v1 at 1/8 width, 8 clusters and 32-d output, trains one Adam step so the
checkpoint carries optimizer slots like the authors' files, and records its inference outputs.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from cvm.errors import CvmError
from cvm.export import convert_tf1_checkpoint

v1 = tf.compat.v1
CHANNELS = (8, 16, 32, 64, 64)  # VGG16 at width 0.125
CLUSTERS, OUTPUT_DIM = 8, 32
FEATURES = CHANNELS[-1]
OPTIONS = dict(backbone_width=0.125, clusters=CLUSTERS, output_dim=OUTPUT_DIM)


def tf1_conv(x, name, kernel, c_in, c_out, trainable=True):
    with v1.variable_scope(name):
        init = v1.glorot_uniform_initializer()
        w = v1.get_variable("weights", [kernel, kernel, c_in, c_out], initializer=init, trainable=trainable)
        b = v1.get_variable("biases", [c_out], initializer=init, trainable=trainable)
        return tf.nn.relu(tf.nn.conv2d(x, w, strides=[1, 1, 1, 1], padding="SAME") + b)


def tf1_vgg(x, scope):
    layout = [(1, 2), (2, 2), (3, 3), (4, 3), (5, 3)]
    c_in = 3
    with v1.variable_scope(scope):
        for (block, count), c_out in zip(layout, CHANNELS):
            for i in range(1, count + 1):
                x = tf1_conv(x, f"conv{block}_{i}", 3, c_in, c_out, trainable=block > 3)
                c_in = c_out
            if block < 5:
                x = tf.nn.max_pool2d(x, 2, 2, "SAME")
    return x


def tf1_netvlad(x, reduce):
    normal = v1.random_normal_initializer(stddev=1 / math.sqrt(FEATURES))
    x = tf.nn.l2_normalize(x, axis=3)
    samples = tf.shape(x)[1] * tf.shape(x)[2]
    flat = tf.reshape(x, [-1, FEATURES])
    weights = v1.get_variable("cluster_weights", [FEATURES, CLUSTERS], initializer=normal)
    biases = v1.get_variable("cluster_biases", [CLUSTERS], initializer=normal)
    activation = tf.reshape(tf.nn.softmax(tf.matmul(flat, weights) + biases), [-1, samples, CLUSTERS])
    a_sum = tf.reduce_sum(activation, -2, keepdims=True)
    centroids = v1.get_variable("cluster_weights2", [1, FEATURES, CLUSTERS], initializer=normal)
    vlad = tf.matmul(tf.transpose(activation, [0, 2, 1]), tf.reshape(flat, [-1, samples, FEATURES]))
    vlad = tf.transpose(vlad, [0, 2, 1]) - a_sum * centroids
    vlad = tf.nn.l2_normalize(vlad, 1)
    vlad = tf.nn.l2_normalize(tf.reshape(vlad, [-1, CLUSTERS * FEATURES]), 1)
    if reduce:
        hidden = v1.get_variable(
            "hidden1_weights",
            [CLUSTERS * FEATURES, OUTPUT_DIM],
            initializer=v1.random_normal_initializer(stddev=1 / math.sqrt(CLUSTERS)),
        )
        vlad = tf.matmul(vlad, hidden)
    return vlad


def tf1_cvm_net(kind, sat, grd):
    grd_local = tf1_vgg(grd, "VGG_grd")
    sat_local = tf1_vgg(sat, "VGG_sat")
    if kind == "cvm_net_i":
        with v1.variable_scope("netvlad_grd"):
            grd_vlad = tf1_netvlad(grd_local, reduce=False)
        with v1.variable_scope("netvlad_sat"):
            sat_vlad = tf1_netvlad(sat_local, reduce=False)
        outputs = []
        with v1.variable_scope("dim_reduction") as scope:
            for vlad in (sat_vlad, grd_vlad):
                with v1.variable_scope("fc1"):
                    fc_init = v1.truncated_normal_initializer(stddev=0.005)
                    w = v1.get_variable("weights", [CLUSTERS * FEATURES, OUTPUT_DIM], initializer=fc_init)
                    b = v1.get_variable("biases", [OUTPUT_DIM], initializer=v1.constant_initializer(0.1))
                outputs.append(tf.nn.l2_normalize(tf.matmul(vlad, w) + b, 1))
                scope.reuse_variables()
        return outputs
    with v1.variable_scope("transformation_trans"):
        sat_t = tf1_conv(sat_local, "sat_trans_conv1", 1, FEATURES, FEATURES)
        grd_t = tf1_conv(grd_local, "grd_trans_conv1", 1, FEATURES, FEATURES)
    with v1.variable_scope("transformation_trans_shared") as scope:
        shared = []
        for t in (sat_t, grd_t):
            t = tf1_conv(t, "trans_conv1", 3, FEATURES, FEATURES)
            shared.append(tf1_conv(t, "trans_conv2", 1, FEATURES, FEATURES))
            scope.reuse_variables()
    with v1.variable_scope("netvlad") as scope:
        sat_global = tf1_netvlad(shared[0], reduce=True)
        scope.reuse_variables()
        grd_global = tf1_netvlad(shared[1], reduce=True)
    return [sat_global, grd_global]


def write_checkpoint(prefix, tensors):
    """A TF1 checkpoint holding exactly `tensors` ({name: array}) under their names."""
    with tf.Graph().as_default():
        variables = {name: v1.Variable(value, name=f"v{i}") for i, (name, value) in enumerate(tensors.items())}
        with v1.Session() as session:
            session.run(v1.global_variables_initializer())
            v1.train.Saver(variables).save(session, prefix)
    return prefix


@pytest.fixture(scope="module", params=["cvm_net_i", "cvm_net_ii"])
def original(request, tmp_path_factory):
    """(method, checkpoint prefix, inputs, TF1 outputs, all checkpoint tensors) of the original graph."""
    kind = request.param
    rng = np.random.default_rng(0)
    inputs = {
        "ground": rng.uniform(-100, 100, (2, 32, 96, 3)).astype("float32"),
        "aerial": rng.uniform(-100, 100, (2, 48, 48, 3)).astype("float32"),
    }
    prefix = str(tmp_path_factory.mktemp(kind) / "model.ckpt")
    with tf.Graph().as_default():
        v1.set_random_seed(0)
        sat = v1.placeholder(tf.float32, [None, None, None, 3])
        grd = v1.placeholder(tf.float32, [None, None, None, 3])
        sat_global, grd_global = tf1_cvm_net(kind, sat, grd)
        model_variables = v1.global_variables()
        loss = tf.reduce_sum(tf.matmul(sat_global, grd_global, transpose_b=True))
        global_step = tf.Variable(0, trainable=False)  # unnamed, as in train.py
        train_step = v1.train.AdamOptimizer(1e-3).minimize(loss, global_step=global_step)
        with v1.Session() as session:
            session.run(v1.global_variables_initializer())
            # Perturb every weight: at the original init CVM-Net-I's descriptor is dominated by the FC bias
            # (0.1 against weights of std 0.005), which would hide a wrong mapping upstream.
            for variable in model_variables:
                session.run(variable.assign_add(rng.normal(0.0, 0.05, variable.shape).astype("float32")))
            feed = {sat: inputs["aerial"], grd: inputs["ground"]}
            session.run(train_step, feed)  # fills Adam slots and changes the weights once
            aerial_out, ground_out = session.run([sat_global, grd_global], feed)
            v1.train.Saver(v1.global_variables()).save(session, prefix)
    reader = tf.train.load_checkpoint(prefix)
    tensors = {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}
    return kind, prefix, inputs, {"ground": ground_out, "aerial": aerial_out}, tensors


def test_checkpoint_holds_optimizer_state(original):
    *_, tensors = original
    assert any(name.endswith("/Adam_1") for name in tensors)
    assert "beta1_power" in tensors and "Variable" in tensors


def test_converted_model_reproduces_the_tf1_graph(original, tmp_path):
    kind, prefix, inputs, expected, _ = original
    out_path = str(tmp_path / "converted.keras")
    original_output = {"normalize_output": False} if kind == "cvm_net_ii" else {}
    model = convert_tf1_checkpoint(prefix, kind, out_path=out_path, **OPTIONS, **original_output)
    for view, encode in (("ground", model.encode_ground), ("aerial", model.encode_aerial)):
        np.testing.assert_allclose(np.asarray(encode(inputs[view])), expected[view], atol=1e-5, rtol=1e-4)
    # The saved file reloads to the same model.
    reloaded = keras.models.load_model(out_path)
    got = np.asarray(reloaded.encode_ground(inputs["ground"]))
    np.testing.assert_allclose(got, expected["ground"], atol=1e-5, rtol=1e-4)


def test_options_are_inferred_and_ii_normalises_by_default(original):
    kind, prefix, inputs, expected, _ = original
    model = convert_tf1_checkpoint(prefix, kind)  # width, clusters and output_dim from the shapes
    assert (model.backbone_width, model.clusters, model.descriptor_dim) == (0.125, CLUSTERS, OUTPUT_DIM)
    unit = expected["aerial"] / np.linalg.norm(expected["aerial"], axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(model.encode_aerial(inputs["aerial"])), unit, atol=1e-5, rtol=1e-4)


def test_missing_and_extra_variables_are_all_listed(original, tmp_path):
    kind, _, _, _, tensors = original
    tensors = dict(tensors)
    tensors.pop("VGG_sat/conv5_3/biases")
    tensors.pop("VGG_grd/conv1_1/weights")
    tensors["netvlad_grd/gating_weights"] = np.zeros((3, 3), "float32")
    tensors["extra/thing"] = np.zeros((2,), "float32")
    prefix = write_checkpoint(str(tmp_path / "broken.ckpt"), tensors)
    with pytest.raises(CvmError) as error:
        convert_tf1_checkpoint(prefix, kind, **OPTIONS)
    message = str(error.value)
    for name in ("VGG_sat/conv5_3/biases", "VGG_grd/conv1_1/weights", "netvlad_grd/gating_weights", "extra/thing"):
        assert name in message
    assert "Adam" not in message and "beta1_power" not in message


def test_shape_mismatch_names_variable_and_shapes(original):
    kind, prefix, *_ = original
    with pytest.raises(CvmError) as error:
        convert_tf1_checkpoint(prefix, kind, **{**OPTIONS, "clusters": 4})
    scope = "netvlad_grd" if kind == "cvm_net_i" else "netvlad"
    assert f"{scope}/cluster_biases (checkpoint [{CLUSTERS}], model [4])" in str(error.value)


def test_unreadable_checkpoint_and_unknown_method(tmp_path):
    with pytest.raises(CvmError, match="nothing.ckpt"):
        convert_tf1_checkpoint(str(tmp_path / "nothing.ckpt"), "cvm_net_i")
    with pytest.raises(CvmError, match="no TF1 checkpoint mapping"):
        convert_tf1_checkpoint(str(tmp_path / "nothing.ckpt"), "sample4geo")
