"""The original CVM-Net-I training graph (david-husx/crossview_localisation, src/CVM-Net) in tf.compat.v1.

Restates VGG.py (VGG16_conv), loupe.py (NetVLAD.forward without the reduction, as cvm_net_I uses it),
siamese_fc.py (the shared dim_reduction/fc1), train.py (compute_loss with batch_hard_count=0 and
Adam) at full width, with the original variable names. `tf.compat.v1.layers` is gone with Keras 3, so
everything is tf.nn / tf.matmul on `get_variable`s, as the original code was anyway.

    graph, ops = build_train_graph(batch=8, ground_hw=(64, 256), aerial_hw=(128, 128))
    ops["train"], ops["loss"], ops["grd_x"], ops["sat_x"], ops["keep_prob"], ops["learning_rate"]
"""

from __future__ import annotations

import math

import tensorflow as tf

v1 = tf.compat.v1

# (block, convs, channels) of VGG16-D; blocks 1-3 are created with trainable=False, as VGG.py does.
VGG16_LAYOUT = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))


def conv_layer(x, name, c_in, c_out, trainable):
    """VGG.py conv_layer: Xavier weights *and* biases, SAME 3x3 conv, ReLU."""
    with v1.variable_scope(name):
        init = v1.glorot_uniform_initializer()
        w = v1.get_variable("weights", [3, 3, c_in, c_out], initializer=init, trainable=trainable)
        b = v1.get_variable("biases", [c_out], initializer=init, trainable=trainable)
        return tf.nn.relu(tf.nn.conv2d(x, w, strides=[1, 1, 1, 1], padding="SAME") + b)


def vgg16_conv(x, keep_prob, scope):
    """VGG.py VGG16_conv: no pool after conv5_3; dropout(keep_prob) after every conv4_x / conv5_x."""
    c_in = 3
    with v1.variable_scope(scope):
        for block, count, c_out in VGG16_LAYOUT:
            for i in range(1, count + 1):
                x = conv_layer(x, f"conv{block}_{i}", c_in, c_out, trainable=block > 3)
                if block >= 4:
                    x = tf.nn.dropout(x, rate=1.0 - keep_prob, name=f"conv{block}_{i}_dropout")
                c_in = c_out
            if block < 5:
                x = tf.nn.max_pool2d(x, 2, 2, "SAME")
    return x


def netvlad(x, features=512, clusters=64):
    """loupe.py NetVLAD.forward (gating/reduction unused by CVM-Net-I): [B, H, W, D] -> [B, D*K]."""
    normal = v1.random_normal_initializer(stddev=1 / math.sqrt(features))
    x = tf.nn.l2_normalize(x, axis=3)
    samples = tf.shape(x)[1] * tf.shape(x)[2]
    flat = tf.reshape(x, [-1, features])
    weights = v1.get_variable("cluster_weights", [features, clusters], initializer=normal)
    biases = v1.get_variable("cluster_biases", [clusters], initializer=normal)
    activation = tf.reshape(tf.nn.softmax(tf.matmul(flat, weights) + biases), [-1, samples, clusters])
    a_sum = tf.reduce_sum(activation, -2, keepdims=True)
    centroids = v1.get_variable("cluster_weights2", [1, features, clusters], initializer=normal)
    vlad = tf.matmul(tf.transpose(activation, [0, 2, 1]), tf.reshape(flat, [-1, samples, features]))
    vlad = tf.transpose(vlad, [0, 2, 1]) - a_sum * centroids
    vlad = tf.nn.l2_normalize(vlad, 1)
    return tf.nn.l2_normalize(tf.reshape(vlad, [-1, clusters * features]), 1)


def cvm_net_i(sat, grd, keep_prob, clusters=64, output_dim=4096):
    """cvm_net.py cvm_net_I -> (sat_global, grd_global), both L2-normalised [B, output_dim]."""
    grd_local = vgg16_conv(grd, keep_prob, "VGG_grd")
    with v1.variable_scope("netvlad_grd"):
        grd_vlad = netvlad(grd_local, clusters=clusters)
    sat_local = vgg16_conv(sat, keep_prob, "VGG_sat")
    with v1.variable_scope("netvlad_sat"):
        sat_vlad = netvlad(sat_local, clusters=clusters)
    outputs = []
    with v1.variable_scope("dim_reduction") as scope:  # siamese_fc: one fc1 shared by both views
        for vlad in (sat_vlad, grd_vlad):
            with v1.variable_scope("fc1"):
                w = v1.get_variable("weights", [512 * clusters, output_dim],
                                    initializer=v1.truncated_normal_initializer(stddev=0.005))
                b = v1.get_variable("biases", [output_dim], initializer=v1.constant_initializer(0.1))
            outputs.append(tf.nn.l2_normalize(tf.compat.v1.nn.xw_plus_b(vlad, w, b), 1))
            scope.reuse_variables()
    return outputs


def compute_loss(sat_global, grd_global, batch_size, loss_weight=10.0):
    """train.py compute_loss(batch_hard_count=0): log(1 + exp(.)) and the constant batch_size, as written."""
    dist = 2 - 2 * tf.matmul(sat_global, grd_global, transpose_b=True)
    pos = tf.linalg.diag_part(dist)
    pair_n = batch_size * (batch_size - 1.0)
    loss_g2s = tf.reduce_sum(tf.math.log(1 + tf.exp((pos - dist) * loss_weight))) / pair_n
    loss_s2g = tf.reduce_sum(tf.math.log(1 + tf.exp((tf.expand_dims(pos, 1) - dist) * loss_weight))) / pair_n
    return (loss_g2s + loss_s2g) / 2.0


def build_train_graph(batch, ground_hw, aerial_hw, inputs=None, clusters=64, output_dim=4096, seed=0):
    """A tf.Graph with the training step of train.py; returns (graph, dict of tensors/ops).

    inputs=None gives placeholders (fed with numpy arrays, as train.py does); a pair of numpy arrays
    (ground, aerial) bakes them into the graph as constants instead.
    """
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(seed)
        if inputs is None:
            sat_x = v1.placeholder(tf.float32, [None, *aerial_hw, 3], name="sat_x")
            grd_x = v1.placeholder(tf.float32, [None, *ground_hw, 3], name="grd_x")
        else:
            grd_x, sat_x = (tf.constant(a) for a in inputs)
        keep_prob = v1.placeholder(tf.float32, name="keep_prob")
        learning_rate = v1.placeholder(tf.float32, name="learning_rate")
        sat_global, grd_global = cvm_net_i(sat_x, grd_x, keep_prob, clusters, output_dim)
        loss = compute_loss(sat_global, grd_global, batch)
        global_step = tf.Variable(0, trainable=False)
        with tf.name_scope("train"):
            train = v1.train.AdamOptimizer(learning_rate, 0.9, 0.999).minimize(loss, global_step=global_step)
        init = v1.global_variables_initializer()
    ops = dict(train=train, loss=loss, init=init, sat_x=sat_x, grd_x=grd_x, keep_prob=keep_prob,
               learning_rate=learning_rate)
    return graph, ops
