"""GlobalBatchDropout: keras Dropout with the mask of the global batch (data-parallel equality is tested end to
end in tests/experiments/test_distributed.py)."""
import keras
import numpy as np
import tensorflow as tf

from posekit.layers import GlobalBatchDropout
from tests.layer_testing import run_layer_test


def test_layer_contract():
    run_layer_test(lambda: GlobalBatchDropout(0.3, noise_shape=(None, 1, 1, 1), seed=4),
                   np.random.default_rng(0).normal(size=(6, 4, 4, 3)).astype(np.float32), (6, 4, 4, 3), train=False)


def test_one_replica_equals_keras_dropout():
    x = tf.constant(np.random.default_rng(1).normal(size=(16, 3, 3, 2)).astype(np.float32))
    ours = GlobalBatchDropout(0.4, noise_shape=(None, 1, 1, 1), seed=7)
    theirs = keras.layers.Dropout(0.4, noise_shape=(None, 1, 1, 1), seed=7)
    a, b = ours(x, training=True), theirs(x, training=True)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    dropped = np.all(a.numpy() == 0, axis=(1, 2, 3))
    assert 0 < dropped.sum() < 16  # whole examples dropped (stochastic depth), not all
    np.testing.assert_allclose(a.numpy()[~dropped], x.numpy()[~dropped] / 0.6, rtol=1e-6)
    np.testing.assert_array_equal(ours(x, training=False).numpy(), x.numpy())
    config = ours.get_config()
    assert GlobalBatchDropout.from_config(config).get_config() == config
