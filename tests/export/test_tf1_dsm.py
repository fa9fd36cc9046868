"""DSM TF1 checkpoint conversion against a real TF1 graph with cir_net_FOV.py's variable names.

The graph restates the original (VGG.py `VGG16` and VGG_cir.py `VGG16_cir` to conv4_3, their `conv2` reduction
convs, `corr`, `crop_sat` and `corr_crop_distance`) with tf.compat.v1 at 1/8 width and small inputs (polar
aerial 32x128 -> 1x16x16 map, ground 32x32 (FoV 90) -> 1x4x16), trains one Adam step so that the checkpoint
carries optimizer slots like the authors' files, and records its inference outputs (keep_prob 1): both maps,
the distance matrix and the orientations.

Tolerance: outputs are O(1..100) float32 maps through 13 convs; TF1 (explicit pad + conv) and Keras order the
same sums alike up to oneDNN blocking: atol 1e-4, rtol 1e-4 (the SAFA test uses 1e-5 on unit descriptors).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from cvm.errors import CvmError
from cvm.export import convert_tf1_checkpoint
from cvm.export.tf1_dsm import infer_model_options

v1 = tf.compat.v1
CHANNELS = (8, 16, 32, 64)  # VGG16 conv1..conv4 at width 0.125
REDUCTION = (32, 8, 16)  # 256 and 64 at width 0.125, then dimension 16
AERIAL, GROUND = (32, 128), (32, 32)


def ring_pad(x, n=1):
    """VGG_cir.py `warp_pad_columns`: n columns wrapped around each side, n zero rows above and below."""
    x = tf.concat([x[:, :, -n:, :], x, x[:, :, :n, :]], axis=2)
    return tf.pad(x, [[0, 0], [n, n], [0, 0], [0, 0]])


def tf1_conv(x, name, c_in, c_out, circular, trainable, relu=True, strides=(1, 1, 1, 1)):
    if circular:
        x = ring_pad(x)
    with v1.variable_scope(name):
        init = v1.glorot_uniform_initializer()  # xavier_initializer for weights and biases
        w = v1.get_variable("weights", [3, 3, c_in, c_out], initializer=init, trainable=trainable)
        b = v1.get_variable("biases", [c_out], initializer=init, trainable=trainable)
        y = tf.nn.conv2d(x, w, strides=list(strides), padding="VALID" if circular else "SAME") + b
        return tf.nn.relu(y) if relu else y


def tf1_vgg(x, keep_prob, scope, circular):
    """VGG16 / VGG16_cir to conv4_3: conv1-3 trainable=False, dropout after conv4_x, pools after blocks 1-3."""
    layout = [(1, 2), (2, 2), (3, 3), (4, 3)]
    c_in = 3
    with v1.variable_scope(scope):
        for (block, count), c_out in zip(layout, CHANNELS):
            for i in range(1, count + 1):
                x = tf1_conv(x, f"conv{block}_{i}", c_in, c_out, circular, trainable=block >= 4)
                if block == 4:
                    x = tf.nn.dropout(x, rate=1 - keep_prob)
                c_in = c_out
            if block < 4:
                x = tf.nn.max_pool2d(x, 2, 2, "SAME")
    return x


def tf1_reduce(x, scope, circular):
    """`conv2(x, scope_name, dimension=16)`: two stride-(2, 1) convs with ReLU, one without."""
    with v1.variable_scope(scope):
        x = tf1_conv(x, "conv_dim_reduct_1", CHANNELS[-1], REDUCTION[0], circular, True, strides=(1, 2, 1, 1))
        x = tf1_conv(x, "conv5_dim_reduct_2", REDUCTION[0], REDUCTION[1], circular, True, strides=(1, 2, 1, 1))
        return tf1_conv(x, "conv5_dim_reduct_3", REDUCTION[1], REDUCTION[2], circular, True, relu=False)


def tf1_corr_crop_distance(sat, grd):
    """`corr` (aerial padded by Wg - 1 columns, grounds as conv kernels), `crop_sat` (gather at the argmax),
    normalise the crop, distance 2 - 2 <crop, grd> [batch_grd, batch_sat]; orientation [batch_sat, batch_grd]."""
    _, h, w, c = sat.get_shape().as_list()
    wg = grd.get_shape().as_list()[2]
    padded = tf.concat([sat, sat[:, :, : wg - 1, :]], axis=2)
    out = tf.nn.conv2d(padded, tf.transpose(grd, [1, 2, 3, 0]), strides=[1, 1, 1, 1], padding="VALID")
    out = tf.reshape(out, [tf.shape(sat)[0], w, tf.shape(grd)[0]])
    orien = tf.cast(tf.argmax(out, axis=1), tf.int32)  # [batch_sat, batch_grd]
    columns = (tf.range(wg)[None, None, :] + orien[:, :, None]) % w  # [bs, bg, wg]
    sat_t = tf.transpose(sat, [0, 2, 1, 3])  # [bs, w, h, c]
    crop = tf.gather(sat_t, columns, axis=1, batch_dims=1)  # [bs, bg, wg, h, c]
    crop = tf.nn.l2_normalize(crop, axis=[2, 3, 4])
    grd_t = tf.transpose(grd, [0, 2, 1, 3])[None]  # [1, bg, wg, h, c]
    distance = 2 - 2 * tf.transpose(tf.reduce_sum(crop * grd_t, axis=[2, 3, 4]))
    return distance, orien


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """(checkpoint prefix, inputs, TF1 outputs, all checkpoint tensors) of the original graph."""
    rng = np.random.default_rng(0)
    inputs = {"ground": rng.uniform(-100, 100, (3, *GROUND, 3)).astype("float32"),
              "aerial": rng.uniform(-100, 100, (3, *AERIAL, 3)).astype("float32")}
    prefix = str(tmp_path_factory.mktemp("dsm") / "model.ckpt")
    with tf.Graph().as_default():
        v1.set_random_seed(0)
        sat_x = v1.placeholder(tf.float32, [None, *AERIAL, 3])
        grd_x = v1.placeholder(tf.float32, [None, *GROUND, 3])
        keep_prob = v1.placeholder(tf.float32)
        grd_vgg = tf1_reduce(tf1_vgg(grd_x, keep_prob, "VGG_grd", False), "grd", False)
        grd_vgg = tf.nn.l2_normalize(grd_vgg, axis=[1, 2, 3])
        sat_vgg = tf1_reduce(tf1_vgg(sat_x, keep_prob, "VGG_sat", True), "sat", True)
        distance, orien = tf1_corr_crop_distance(sat_vgg, grd_vgg)
        model_variables = v1.global_variables()
        pos = tf.linalg.diag_part(distance)
        loss = tf.reduce_mean(tf.math.softplus(10 * (pos[None] - distance)))
        global_step = tf.Variable(0, trainable=False)  # unnamed, as in train_cvusa_fov.py
        train = v1.train.AdamOptimizer(1e-3, 0.9, 0.999).minimize(loss, global_step=global_step)
        with v1.Session() as session:
            session.run(v1.global_variables_initializer())
            for variable in model_variables:  # perturb the Xavier biases too: a swapped bias must show
                session.run(variable.assign_add(rng.normal(0.0, 0.05, variable.shape).astype("float32")))
            session.run(train, {sat_x: inputs["aerial"], grd_x: inputs["ground"], keep_prob: 0.8})
            feed = {sat_x: inputs["aerial"], grd_x: inputs["ground"], keep_prob: 1.0}
            outputs = dict(zip(("aerial", "ground", "distance", "orientation"),
                               session.run([sat_vgg, grd_vgg, distance, orien], feed)))
            v1.train.Saver(v1.global_variables()).save(session, prefix)
    reader = tf.train.load_checkpoint(prefix)
    tensors = {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}
    return prefix, inputs, outputs, tensors


def test_checkpoint_has_the_original_names(original):
    *_, tensors = original
    assert tensors["grd/conv5_dim_reduct_3/weights"].shape == (3, 3, 8, 16)
    assert tensors["VGG_sat/conv4_3/biases"].shape == (64,) and "VGG_sat/conv5_1/weights" not in tensors
    assert any(n.endswith("/Adam_1") for n in tensors)


def test_converted_model_reproduces_the_tf1_graph(original, tmp_path):
    prefix, inputs, expected, _ = original
    assert expected["aerial"].shape == (3, 1, 16, 16) and expected["ground"].shape == (3, 1, 4, 16)
    out_path = str(tmp_path / "dsm.keras")
    model = convert_tf1_checkpoint(prefix, "dsm", out_path=out_path, aerial_size=AERIAL)
    assert (model.backbone_width, model.map_channels) == (0.125, 16)
    aerial = np.asarray(model.aerial_maps(inputs["aerial"]))
    ground = np.asarray(model.ground_maps(inputs["ground"]))
    np.testing.assert_allclose(aerial, expected["aerial"], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(ground, expected["ground"], atol=1e-5, rtol=1e-4)
    distance, orientation = model.match(model.encode_ground(inputs["ground"]), model.encode_aerial(inputs["aerial"]))
    np.testing.assert_allclose(np.asarray(distance), expected["distance"], atol=1e-5)
    np.testing.assert_array_equal(np.asarray(orientation), expected["orientation"].T)  # ours: [grd, sat]
    reloaded = keras.models.load_model(out_path)
    np.testing.assert_allclose(np.asarray(reloaded.aerial_maps(inputs["aerial"])), expected["aerial"],
                               atol=1e-4, rtol=1e-4)


def test_missing_variables_are_listed(original, tmp_path):
    from tests.export.test_tf1 import write_checkpoint

    *_, tensors = original
    dropped = ("sat/conv5_dim_reduct_2/biases", "VGG_grd/conv4_1/weights")
    tensors = {k: v for k, v in tensors.items() if k not in dropped}
    prefix = write_checkpoint(str(tmp_path / "broken.ckpt"), tensors)
    with pytest.raises(CvmError) as error:
        convert_tf1_checkpoint(prefix, "dsm", aerial_size=AERIAL)
    assert "sat/conv5_dim_reduct_2/biases" in str(error.value) and "VGG_grd/conv4_1/weights" in str(error.value)


def test_options_are_inferred_from_the_shapes():
    shapes = {"VGG_grd/conv1_1/weights": [3, 3, 3, 64], "grd/conv5_dim_reduct_3/biases": [16]}
    assert infer_model_options("dsm", shapes) == {"backbone_width": 1.0, "map_channels": 16}
