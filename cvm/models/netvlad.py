"""NetVLAD pooling as modified for CVM-Net (LOUPE's NetVLAD with decoupled centroids)."""

from __future__ import annotations

import math

import keras
from keras import ops

# tf.nn.l2_normalize's epsilon, on the squared norm.
L2_EPSILON = 1e-12


def l2_normalize(x, axis=-1):
    """x / sqrt(max(sum(x^2), 1e-12)) along `axis`, as tf.nn.l2_normalize."""
    squared = ops.sum(ops.square(x), axis=axis, keepdims=True)
    return x * ops.rsqrt(ops.maximum(squared, ops.cast(L2_EPSILON, x.dtype)))


@keras.saving.register_keras_serializable(package="cvm")
class NetVLAD(keras.layers.Layer):
    """NetVLAD, Arandjelovic et al. (https://arxiv.org/abs/1511.07247) eq. (4), LOUPE/CVM-Net variant.

    Follows CVM-Net's copy of LOUPE (Miech et al., https://arxiv.org/abs/1706.06905) `NetVLAD.forward`:
    for local descriptors x_i (the H*W positions of the input map, each L2-normalised),
        a_ik    = softmax_k(x_i . W_k + b_k)                       (soft assignment, no batch norm)
        V[d, k] = sum_i a_ik x_i[d] - (sum_i a_ik) c[d, k]          (centroids c separate from W)
    then each column V[:, k] is L2-normalised (intra-normalisation), V is flattened D-major
    (index d * K + k) and L2-normalised globally. With `output_dim`, the result is multiplied by a
    [D*K, output_dim] matrix without bias and *not* normalised again (as in CVM-Net-II).

    Weight names follow the TF1 variables: `cluster_weights` W [D, K], `cluster_biases` b [K],
    `cluster_weights2` c [D, K] (the original stores it as [1, D, K]) and `hidden1_weights`.

    Args:
        clusters: number of clusters K.
        output_dim: size of the optional linear reduction; None keeps the D*K-d descriptor.

    Example:
    ```python
    pool = NetVLAD(clusters=8)
    pool(np.random.rand(2, 5, 7, 16).astype("float32")).shape  # (2, 128): D * K
    ```
    """

    def __init__(self, clusters=64, output_dim=None, **kwargs):
        super().__init__(**kwargs)
        self.clusters = int(clusters)
        self.output_dim = None if output_dim is None else int(output_dim)

    def build(self, input_shape):
        features = int(input_shape[-1])
        self.features = features
        # The original draws W, b and c from N(0, 1/sqrt(D)) (untruncated).
        scale = keras.initializers.RandomNormal(stddev=1.0 / math.sqrt(features))
        self.cluster_weights = self.add_weight(
            name="cluster_weights", shape=(features, self.clusters), initializer=scale
        )
        self.cluster_biases = self.add_weight(name="cluster_biases", shape=(self.clusters,), initializer=scale)
        self.cluster_weights2 = self.add_weight(
            name="cluster_weights2", shape=(features, self.clusters), initializer=scale
        )
        if self.output_dim is not None:
            # LOUPE's reduction uses stddev 1/sqrt(K), not 1/sqrt(D*K).
            self.hidden1_weights = self.add_weight(
                name="hidden1_weights",
                shape=(features * self.clusters, self.output_dim),
                initializer=keras.initializers.RandomNormal(stddev=1.0 / math.sqrt(self.clusters)),
            )

    def call(self, feature_map):
        batch = ops.shape(feature_map)[0]
        x = l2_normalize(feature_map, axis=-1)
        x = ops.reshape(x, (batch, -1, self.features))  # [B, N, D]
        assignment = ops.softmax(ops.matmul(x, self.cluster_weights) + self.cluster_biases, axis=-1)  # [B, N, K]
        mass = ops.sum(assignment, axis=1)  # [B, K]
        vlad = ops.einsum("bnd,bnk->bdk", x, assignment) - mass[:, None, :] * self.cluster_weights2[None]
        vlad = l2_normalize(vlad, axis=1)  # intra-normalisation over D for each cluster
        vlad = ops.reshape(vlad, (batch, self.features * self.clusters))  # D-major: d * K + k
        vlad = l2_normalize(vlad, axis=-1)
        if self.output_dim is not None:
            vlad = ops.matmul(vlad, self.hidden1_weights)
        return vlad

    def compute_output_shape(self, input_shape):
        size = self.output_dim if self.output_dim is not None else int(input_shape[-1]) * self.clusters
        return (input_shape[0], size)

    def get_config(self):
        config = super().get_config()
        config.update(clusters=self.clusters, output_dim=self.output_dim)
        return config
