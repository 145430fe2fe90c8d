"""Tests of posekit.layers.GraphNonLocal: identity at initialisation, global receptive field, formula, config."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from posekit.layers.nonlocal_block import GraphNonLocal, non_local_param_count
from tests.layer_testing import run_layer_test

GROUPS = [[0, 1], [2, 3], [4, 5]]


def test_layer_contract(rng):
    x = rng.normal(size=(4, 6, 8)).astype(np.float32)

    def make():
        keras.utils.set_random_seed(1)
        return GraphNonLocal(inter_channels=4, groups=GROUPS)
    run_layer_test(make, x, (4, 6, 8))


def test_starts_as_identity_and_counts_parameters(rng):
    x = rng.normal(size=(2, 6, 8)).astype(np.float32)
    layer = GraphNonLocal(groups=GROUPS)
    np.testing.assert_allclose(layer(x, training=False).numpy(), x, atol=1e-6)
    assert sum(int(np.prod(w.shape)) for w in layer.trainable_weights) == non_local_param_count(8)
    assert sum(int(np.prod(w.shape)) for w in layer.weights) == non_local_param_count(8, trainable_only=False)


def test_every_output_node_depends_on_every_input_node(rng):
    x = tf.constant(rng.normal(size=(1, 6, 8)).astype(np.float32))
    keras.utils.set_random_seed(2)
    layer = GraphNonLocal(inter_channels=4)
    layer(x)
    # Make the block non-trivial: a non-zero BN scale.
    for w in layer.weights:
        if 'gamma' in w.path:
            w.assign(tf.ones_like(w))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=False)[0, 0]  # node 0's output
    grad = tape.gradient(y, x).numpy()[0]
    assert np.all(np.abs(grad).sum(axis=-1) > 0)  # every input node influences node 0 (a graph conv would not)


def test_pooling_groups_and_errors(rng):
    x = rng.normal(size=(2, 6, 8)).astype(np.float32)
    pooled = GraphNonLocal(inter_channels=4, groups=GROUPS)
    assert pooled(x).shape == (2, 6, 8)
    with pytest.raises(ValueError, match='inter_channels'):
        GraphNonLocal(inter_channels=0)
    with pytest.raises(ValueError):
        GraphNonLocal(groups=[[0, 1], [2]])(x)  # unequal group sizes
    with pytest.raises(ValueError):
        GraphNonLocal(groups=[[0, 9]])(x)  # index out of range
