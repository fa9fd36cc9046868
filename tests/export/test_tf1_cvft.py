"""CVFT TF1 checkpoint conversion against a real tf.compat.v1 graph with ot_net.py's variable names.

The graph restates the original `script/ot_net.py` (CVFT, VGG_conv, VGG_gp) and `script/VGG.py` with
tf.compat.v1 ops (variable scopes, tf.compat.v1.image.resize_bilinear, the log-space sinkhorn loop,
the einsum transport) at 1/8 VGG width with 48x160 panoramas and 96x96 aerials (ground map 2x5 resized
to the 3x3 aerial map: N = 9, a 9 -> 81 cost FC). One Adam step fills the optimizer slots as the
authors' files have them; the converted Keras model must reproduce the graph's outputs.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from cvm.errors import CvmError
from cvm.export import convert_tf1_checkpoint

v1 = tf.compat.v1
CHANNELS = (8, 16, 32, 64, 64)  # VGG16 at width 0.125
GROUND, AERIAL = (48, 160), (96, 96)
N = 9  # 96 -> 6 (VGG) -> 3 (3x3/2 conv): a 3x3 aerial map


def tf1_conv(x, name, kernel, c_in, c_out, stride=1, trainable=True):
    """VGG.py / ot_net.py conv_layer: Xavier weights *and* biases, SAME, ReLU."""
    with v1.variable_scope(name, reuse=v1.AUTO_REUSE):
        init = v1.glorot_uniform_initializer()
        w = v1.get_variable("weights", [kernel, kernel, c_in, c_out], initializer=init, trainable=trainable)
        b = v1.get_variable("biases", [c_out], initializer=init, trainable=trainable)
        return tf.nn.relu(tf.nn.conv2d(x, w, strides=[1, stride, stride, 1], padding="SAME") + b)


def tf1_vgg(x, keep_prob, scope):
    layout = [(1, 2), (2, 2), (3, 3), (4, 3), (5, 3)]
    c_in = 3
    with v1.variable_scope(scope, reuse=v1.AUTO_REUSE):
        for (block, count), c_out in zip(layout, CHANNELS):
            for i in range(1, count + 1):
                x = tf1_conv(x, f"conv{block}_{i}", 3, c_in, c_out, trainable=block > 3)
                if block >= 4:
                    x = tf.nn.dropout(x, rate=1.0 - keep_prob)
                c_in = c_out
            if block < 5:
                x = tf.nn.max_pool2d(x, 2, 2, "SAME")
    return x


def tf1_sinkhorn(log_alpha, n_iters=20):
    n = log_alpha.shape[1]
    log_alpha = tf.reshape(log_alpha, [-1, n, n])
    for _ in range(n_iters):
        log_alpha -= tf.reshape(tf.reduce_logsumexp(log_alpha, axis=2), [-1, n, 1])
        log_alpha -= tf.reshape(tf.reduce_logsumexp(log_alpha, axis=1), [-1, 1, n])
    return tf.exp(log_alpha)


def tf1_ot(feature, name="ot_grd_branch"):
    height, width, channel = feature.shape[1:]
    cost = tf1_conv(feature, name + "ot_conv", 1, channel, 1)
    n = height * width
    with v1.variable_scope(name + "ot_fc"):
        w = v1.get_variable("weights", [n, n * n], initializer=v1.truncated_normal_initializer(stddev=0.005))
        b = v1.get_variable("biases", [n * n], initializer=v1.constant_initializer(np.eye(n).reshape(n * n)))
        cost = tf.reshape(tf.matmul(tf.reshape(cost, [-1, n]), w) + b, [-1, n, n])
    return tf1_sinkhorn(cost * -100.0)


def tf1_apply_ot(feature, plan):
    height, width, channel = feature.shape[1:]
    x = tf.transpose(tf.reshape(feature, [-1, plan.shape[1], channel]), [0, 2, 1])
    out = tf.einsum("bci,bio->bco", x, plan)
    return tf.reshape(tf.transpose(out, [0, 2, 1]), [-1, height, width, channel])


def tf1_network(kind, sat, grd, keep_prob):
    """(sat_global, grd_global) of ot_net.py's CVFT / VGG_conv / VGG_gp."""
    grd_vgg = tf1_vgg(grd, keep_prob, "VGG_grd")
    sat_vgg = tf1_vgg(sat, keep_prob, "VGG_sat")
    if kind == "cvft_vgg_gp":
        grd_global = tf.reduce_max(grd_vgg, axis=[1, 2])  # max_pool over the whole map, reshaped
        sat_global = tf.reduce_max(sat_vgg, axis=[1, 2])
        return tf.nn.l2_normalize(sat_global, 1), tf.nn.l2_normalize(grd_global, 1)
    grd_vgg = tf1_conv(grd_vgg, "grd_conv", 3, CHANNELS[-1], 64, stride=2)
    sat_vgg = tf1_conv(sat_vgg, "sat_conv", 3, CHANNELS[-1], 64, stride=2)
    height, width = sat_vgg.shape[1:3]
    grd_vgg = v1.image.resize_bilinear(grd_vgg, [height, width])
    if kind == "cvft":
        grd_vgg = tf1_apply_ot(grd_vgg, tf1_ot(grd_vgg))
    grd_global = tf.reshape(grd_vgg, [-1, int(np.prod(grd_vgg.shape[1:]))])
    sat_global = tf.reshape(sat_vgg, [-1, int(np.prod(sat_vgg.shape[1:]))])
    return tf.nn.l2_normalize(sat_global, 1), tf.nn.l2_normalize(grd_global, 1)


@pytest.fixture(scope="module", params=["cvft", "cvft_vgg_conv", "cvft_vgg_gp"])
def original(request, tmp_path_factory):
    """(method, checkpoint prefix, inputs, TF1 outputs, checkpoint tensors) of the original graph."""
    kind = request.param
    rng = np.random.default_rng(0)
    inputs = {
        "ground": rng.uniform(-100, 100, (2, *GROUND, 3)).astype("float32"),
        "aerial": rng.uniform(-100, 100, (2, *AERIAL, 3)).astype("float32"),
    }
    prefix = str(tmp_path_factory.mktemp(kind) / "model.ckpt")
    with tf.Graph().as_default():
        v1.set_random_seed(0)
        # Static sizes, as the original's placeholders: the OT module reads them from the graph.
        sat = v1.placeholder(tf.float32, [None, *AERIAL, 3])
        grd = v1.placeholder(tf.float32, [None, *GROUND, 3])
        keep_prob = v1.placeholder(tf.float32)
        sat_global, grd_global = tf1_network(kind, sat, grd, keep_prob)
        model_variables = v1.global_variables()
        loss = tf.reduce_sum(tf.matmul(sat_global, grd_global, transpose_b=True))
        global_step = tf.Variable(0, trainable=False)  # unnamed, as in train_cvusa.py
        train_step = v1.train.AdamOptimizer(1e-3).minimize(loss, global_step=global_step)
        with v1.Session() as session:
            session.run(v1.global_variables_initializer())
            # Perturb every weight (the cost FC most of all: at its init the plan is the same for
            # every input, which would hide a wrong mapping of the cost conv).
            for variable in model_variables:
                std = 0.02 if "ot_fc" in variable.name else 0.05
                session.run(variable.assign_add(rng.normal(0.0, std, variable.shape).astype("float32")))
            session.run(train_step, {sat: inputs["aerial"], grd: inputs["ground"], keep_prob: 0.8})
            aerial_out, ground_out = session.run(
                [sat_global, grd_global], {sat: inputs["aerial"], grd: inputs["ground"], keep_prob: 1.0}
            )
            v1.train.Saver(v1.global_variables()).save(session, prefix)
    reader = tf.train.load_checkpoint(prefix)
    tensors = {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}
    return kind, prefix, inputs, {"ground": ground_out, "aerial": aerial_out}, tensors


def test_the_checkpoint_has_the_original_names(original):
    kind, *_, tensors = original
    assert "VGG_grd/conv1_1/weights" in tensors and "VGG_sat/conv5_3/biases" in tensors
    assert any(name.endswith("/Adam_1") for name in tensors) and "beta1_power" in tensors
    if kind == "cvft":
        assert tensors["ot_grd_branchot_fc/weights"].shape == (N, N * N)
        assert tensors["ot_grd_branchot_conv/weights"].shape == (1, 1, 64, 1)
    if kind != "cvft_vgg_gp":
        assert tensors["grd_conv/weights"].shape == (3, 3, 64, 64)


def test_converted_model_reproduces_the_tf1_graph(original, tmp_path):
    kind, prefix, inputs, expected, _ = original
    out_path = str(tmp_path / "converted.keras")
    # Width, OT channels and (for cvft) the aerial size come from the checkpoint's shapes.
    options = {} if kind == "cvft" else {"aerial_size": AERIAL}
    model = convert_tf1_checkpoint(prefix, kind, out_path=out_path, **options)
    assert model.backbone_width == 0.125
    assert model.descriptor_dim == (64 if kind == "cvft_vgg_gp" else N * 64)
    if kind == "cvft":
        assert model.aerial_size == AERIAL and model.positions == N
        # The perturbed cost gives a plan far from the initial anti-identity: the test sees the OT.
        plan = np.asarray(model.transport_plan(model._ground_map(inputs["ground"], False)))
        assert np.abs(plan - (1 - np.eye(N)) / (N - 1)).max() > 0.1
    out = {"ground": np.asarray(model.encode_ground(inputs["ground"])),
           "aerial": np.asarray(model.encode_aerial(inputs["aerial"]))}
    for view in ("ground", "aerial"):
        np.testing.assert_allclose(out[view], expected[view], atol=1e-5, rtol=1e-4, err_msg=view)
    if kind != "cvft_vgg_gp":
        # TF2's half-pixel resize is a different function: the legacy mode is what the original needs.
        shifted = convert_tf1_checkpoint(prefix, kind, resize_mode="half_pixel", **options)
        assert np.abs(np.asarray(shifted.encode_ground(inputs["ground"])) - expected["ground"]).max() > 1e-3
    reloaded = keras.models.load_model(out_path)
    np.testing.assert_allclose(np.asarray(reloaded.encode_ground(inputs["ground"])), expected["ground"],
                               atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("original", ["cvft"], indirect=True)
def test_missing_and_extra_variables_are_listed(original, tmp_path):
    kind, _, _, _, tensors = original
    # A VGG_conv checkpoint lacks the OT variables; converting it as CVFT names them.
    tensors = {k: v for k, v in tensors.items() if "ot_grd_branch" not in k}
    tensors["extra/thing"] = np.zeros((2,), "float32")
    with tf.Graph().as_default():
        variables = {name: v1.Variable(value, name=f"v{i}") for i, (name, value) in enumerate(tensors.items())}
        with v1.Session() as session:
            session.run(v1.global_variables_initializer())
            prefix = v1.train.Saver(variables).save(session, str(tmp_path / "broken.ckpt"))
    with pytest.raises(CvmError) as error:
        convert_tf1_checkpoint(prefix, "cvft", aerial_size=AERIAL)
    message = str(error.value)
    for name in ("ot_grd_branchot_fc/weights", "ot_grd_branchot_conv/biases", "extra/thing"):
        assert name in message


@pytest.mark.parametrize("original", ["cvft"], indirect=True)
def test_wrong_aerial_size_is_a_shape_mismatch(original):
    kind, prefix, *_ = original
    with pytest.raises(CvmError) as error:
        convert_tf1_checkpoint(prefix, "cvft", aerial_size=(64, 64))  # a 2x2 map: N = 4
    assert f"ot_grd_branchot_fc/weights (checkpoint [{N}, {N * N}], model [4, 16])" in str(error.value)
