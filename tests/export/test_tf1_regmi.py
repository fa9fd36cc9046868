"""Regmi & Shah TF1 checkpoints (two-stream, joint, fusion) against a tf.compat.v1 restatement of the originals.

The graphs restate VGG.py `eight_layer_conv_multiscale`, siamese_fc.py (`my_siamese_fc_multiscale`,
`three_stream_joint_feat_learning`, `one_layer_siamese_fc`) and my_net.py / my_networks.py at 1/16
width, 16-d descriptors and small images; one Adam step fills optimizer slots as in the authors' files.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from cvm.errors import CvmError
from cvm.export import convert_tf1_checkpoint
from cvm.export.tf1_regmi import infer_model_options

v1 = tf.compat.v1
WIDTH, DIM = 0.0625, 16
CHANNELS = [4, 8, 16, 32, 32, 32, 32, 32]
GROUND, AERIAL = (32, 192), (128, 128)
OPTIONS = dict(ground_size=GROUND, aerial_size=AERIAL)


def tf1_encoder(x, keep_prob, scope):
    """VGG.py eight_layer_conv_multiscale: 8 x (4x4 stride-2 SAME conv + ReLU), dropout 6-8, concat 6-8."""
    flats = []
    c_in = 3
    with v1.variable_scope(scope):
        for level, c_out in enumerate(CHANNELS, start=1):
            with v1.variable_scope(f"conv{level}"):
                init = v1.glorot_uniform_initializer()  # xavier_initializer, on the biases too
                w = v1.get_variable("weights", [4, 4, c_in, c_out], initializer=init)
                b = v1.get_variable("biases", [c_out], initializer=init)
            x = tf.nn.relu(tf.nn.conv2d(x, w, strides=[1, 2, 2, 1], padding="SAME") + b)
            if level >= 6:
                x = tf.nn.dropout(x, rate=1 - keep_prob)
                # tf.layers.flatten: row-major over (H, W, C) of the NHWC map.
                flats.append(tf.reshape(x, [-1, int(np.prod(x.shape[1:]))]))
            c_in = c_out
    return tf.concat(flats, 1)


def tf1_fc(x, name, in_dim, out_dim, bias):
    with v1.variable_scope(name):
        w = v1.get_variable("weights", [in_dim, out_dim], initializer=v1.truncated_normal_initializer(stddev=0.005))
        b = v1.get_variable("biases", [out_dim], initializer=v1.constant_initializer(bias))
    return tf.nn.l2_normalize(tf.compat.v1.nn.xw_plus_b(x, w, b), 1)


def original_graph(kind, placeholders, keep_prob):
    if kind == "regmi_fusion":
        with v1.variable_scope("fc"):
            sat = tf1_fc(placeholders["aerial"], "fc1", DIM, DIM, 0.01)
            grd = tf1_fc(placeholders["ground"], "fc2", 2 * DIM, DIM, 0.01)
        return {"aerial": sat, "ground": grd}
    grd_local = tf1_encoder(placeholders["ground"], keep_prob, "VGG_grd")
    sat_local = tf1_encoder(placeholders["aerial"], keep_prob, "VGG_sat")
    gan_local = tf1_encoder(placeholders["synthesized"], keep_prob, "VGG_grd_seg") if kind == "regmi_joint" else None
    out = {}
    with v1.variable_scope("dim_reduction") as scope:
        out["ground"] = tf1_fc(grd_local, "fc2", int(grd_local.shape[1]), DIM, 0.1)
        out["aerial"] = tf1_fc(sat_local, "fc1", int(sat_local.shape[1]), DIM, 0.1)
        if gan_local is not None:
            scope.reuse_variables()  # the synthesized aerial shares fc1
            out["synthesized"] = tf1_fc(gan_local, "fc1", int(gan_local.shape[1]), DIM, 0.1)
    return out


@pytest.fixture(scope="module", params=["regmi_two_stream", "regmi_joint", "regmi_fusion"])
def original(request, tmp_path_factory):
    kind = request.param
    rng = np.random.default_rng(1)
    if kind == "regmi_fusion":
        inputs = {"ground": rng.normal(0, 0.05, (5, 2 * DIM)).astype("float32"),
                  "aerial": rng.normal(0, 0.05, (5, DIM)).astype("float32")}
    else:
        inputs = {"ground": rng.uniform(-100, 100, (2, *GROUND, 3)).astype("float32"),
                  "aerial": rng.uniform(-100, 100, (2, *AERIAL, 3)).astype("float32")}
        if kind == "regmi_joint":
            inputs["synthesized"] = rng.uniform(-100, 100, (2, *AERIAL, 3)).astype("float32")
    prefix = str(tmp_path_factory.mktemp(kind) / "model.ckpt")
    with tf.Graph().as_default():
        v1.set_random_seed(0)
        placeholders = {k: v1.placeholder(tf.float32, [None, *v.shape[1:]]) for k, v in inputs.items()}
        keep_prob = v1.placeholder(tf.float32)
        out = original_graph(kind, placeholders, keep_prob)
        model_variables = v1.global_variables()
        loss = tf.reduce_sum(tf.matmul(out["aerial"], out["ground"], transpose_b=True))
        global_step = tf.Variable(0, trainable=False)
        train_step = v1.train.AdamOptimizer(1e-3).minimize(loss, global_step=global_step)
        with v1.Session() as session:
            session.run(v1.global_variables_initializer())
            # Perturb every weight: at the original init the 0.1 FC bias dominates the descriptor.
            for variable in model_variables:
                session.run(variable.assign_add(rng.normal(0.0, 0.05, variable.shape).astype("float32")))
            feed = {placeholders[k]: v for k, v in inputs.items()}
            session.run(train_step, {**feed, keep_prob: 0.5})
            expected = session.run(out, {**feed, keep_prob: 1.0})
            v1.train.Saver(v1.global_variables()).save(session, prefix)
    return kind, prefix, inputs, expected


def test_converted_models_reproduce_the_original_graphs(original, tmp_path):
    kind, prefix, inputs, expected = original
    options = {} if kind == "regmi_fusion" else OPTIONS
    out_path = str(tmp_path / f"{kind}.keras")
    model = convert_tf1_checkpoint(prefix, kind, out_path=out_path, **options)
    assert model.descriptor_dim == DIM
    got = model(inputs)
    assert set(got) == set(expected)
    for view in expected:
        np.testing.assert_allclose(np.asarray(got[view]), expected[view], atol=1e-5, rtol=1e-4)
    reloaded = keras.models.load_model(out_path)
    np.testing.assert_allclose(np.asarray(reloaded(inputs)["aerial"]), expected["aerial"], atol=1e-5, rtol=1e-4)


def test_options_inferred_from_shapes(original):
    kind, prefix, inputs, expected = original
    shapes = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    options = infer_model_options(kind, shapes)
    if kind == "regmi_fusion":
        assert options == {"input_dim": DIM, "output_dim": DIM}
        return
    assert options == {"backbone_width": WIDTH, "output_dim": DIM, "aerial_size": AERIAL}
    # The ground size is not recoverable from the flattened length: the converter names the mismatch.
    with pytest.raises(CvmError, match=r"dim_reduction/fc2/weights \(checkpoint \[\d+, 16\], model \[\d+, 16\]\)"):
        convert_tf1_checkpoint(prefix, kind)
    model = convert_tf1_checkpoint(prefix, kind, ground_size=GROUND)
    np.testing.assert_allclose(np.asarray(model.encode_aerial(inputs["aerial"])), expected["aerial"], atol=1e-5)


def test_joint_checkpoint_is_not_a_two_stream_one(original):
    kind, prefix, *_ = original
    if kind != "regmi_joint":
        pytest.skip("joint checkpoint only")
    with pytest.raises(CvmError) as error:
        convert_tf1_checkpoint(prefix, "regmi_two_stream", **OPTIONS)
    assert "VGG_grd_seg/conv1/weights" in str(error.value) and "not in regmi_two_stream" in str(error.value)
