"""NetVLAD against an explicit NumPy restatement of CVM-Net's modified LOUPE NetVLAD."""

import numpy as np
import pytest

from cvm.models import NetVLAD


def reference_netvlad(feature_map, weights, biases, centroids, reduction=None):
    """Loops over batch, clusters; feature_map [B, H, W, D], centroids [D, K]."""
    batch, height, width, features = feature_map.shape
    clusters = weights.shape[1]
    out = []
    for b in range(batch):
        x = feature_map[b].reshape(height * width, features).astype(np.float64)
        x = x / np.sqrt(np.maximum((x**2).sum(axis=1, keepdims=True), 1e-12))
        logits = x @ weights + biases
        logits -= logits.max(axis=1, keepdims=True)
        a = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)  # [N, K]
        v = np.zeros((features, clusters))
        for k in range(clusters):
            for i in range(height * width):
                v[:, k] += a[i, k] * (x[i] - centroids[:, k])
        v /= np.sqrt(np.maximum((v**2).sum(axis=0, keepdims=True), 1e-12))
        flat = np.array([v[d, k] for d in range(features) for k in range(clusters)])  # index d * K + k
        flat /= np.sqrt(max((flat**2).sum(), 1e-12))
        out.append(flat if reduction is None else flat @ reduction)
    return np.stack(out)


def random_layer(features, clusters, output_dim=None, seed=0):
    rng = np.random.default_rng(seed)
    layer = NetVLAD(clusters, output_dim=output_dim)
    layer.build((None, None, None, features))
    layer.cluster_weights.assign(rng.normal(size=(features, clusters)).astype("float32"))
    layer.cluster_biases.assign(rng.normal(size=(clusters,)).astype("float32"))
    layer.cluster_weights2.assign(rng.normal(scale=0.3, size=(features, clusters)).astype("float32"))
    if output_dim is not None:
        layer.hidden1_weights.assign(rng.normal(size=(features * clusters, output_dim)).astype("float32"))
    return layer


@pytest.mark.parametrize("output_dim", [None, 5])
def test_matches_reference_for_any_spatial_size(output_dim):
    features, clusters = 6, 4
    layer = random_layer(features, clusters, output_dim)
    weights = [np.asarray(w) for w in (layer.cluster_weights, layer.cluster_biases, layer.cluster_weights2)]
    reduction = None if output_dim is None else np.asarray(layer.hidden1_weights)
    rng = np.random.default_rng(1)
    for height, width in [(3, 5), (1, 1), (7, 2)]:
        x = rng.normal(size=(2, height, width, features)).astype("float32")
        got = np.asarray(layer(x))
        assert got.shape == (2, output_dim or features * clusters)
        np.testing.assert_allclose(got, reference_netvlad(x, *weights, reduction), rtol=1e-4, atol=1e-5)


def test_unreduced_output_is_unit_norm_and_zero_inputs_stay_finite():
    layer = random_layer(8, 3)
    x = np.random.default_rng(2).normal(size=(3, 4, 4, 8)).astype("float32")
    x[0] = 0.0  # all-zero descriptors: the 1e-12 epsilon must keep this finite
    out = np.asarray(layer(x))
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_weight_names_shapes_and_initialisers():
    features, clusters, output_dim = 64, 16, 64
    layer = NetVLAD(clusters, output_dim=output_dim)
    layer.build((None, None, None, features))
    shapes = {w.name: tuple(w.shape) for w in layer.weights}
    assert shapes == {
        "cluster_weights": (features, clusters),
        "cluster_biases": (clusters,),
        "cluster_weights2": (features, clusters),
        "hidden1_weights": (features * clusters, output_dim),
    }
    # LOUPE: N(0, 1/sqrt(D)) for assignment weights and centroids, N(0, 1/sqrt(K)) for the reduction.
    assert np.std(np.asarray(layer.cluster_weights)) == pytest.approx(1 / np.sqrt(features), rel=0.1)
    assert np.std(np.asarray(layer.cluster_weights2)) == pytest.approx(1 / np.sqrt(features), rel=0.1)
    assert np.std(np.asarray(layer.hidden1_weights)) == pytest.approx(1 / np.sqrt(clusters), rel=0.05)


def test_paper_size_output_shapes():
    assert NetVLAD(64).compute_output_shape((None, 32, 32, 512)) == (None, 32768)
    assert NetVLAD(64, output_dim=4096).compute_output_shape((None, 14, 77, 512)) == (None, 4096)


def test_config_round_trip():
    layer = NetVLAD(12, output_dim=7, name="netvlad_grd")
    clone = NetVLAD.from_config(layer.get_config())
    assert (clone.clusters, clone.output_dim, clone.name) == (12, 7, "netvlad_grd")
