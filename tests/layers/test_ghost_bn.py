"""GhostBatchNormalization: equals keras BatchNormalization per ghost group; moving statistics; errors."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from posekit.layers import GhostBatchNormalization
from posekit.train.precision import policy_scope

MOMENTUM = 0.9
EPSILON = 1e-3


def _init_affine(layer, rng, channels):
    layer.gamma.assign(rng.uniform(0.5, 1.5, channels).astype('float32'))
    layer.beta.assign(rng.normal(size=channels).astype('float32'))


def _reference(x, sizes, gamma, beta):
    """Applies a fresh keras BatchNormalization (training mode) to each group separately."""
    outs, means, variances = [], [], []
    start = 0
    for size in sizes:
        part = x[start:start + size]
        start += size
        bn = keras.layers.BatchNormalization(momentum=0.0, epsilon=EPSILON)
        bn.build(part.shape)
        bn.gamma.assign(gamma)
        bn.beta.assign(beta)
        outs.append(bn(part, training=True).numpy())
        # momentum 0 -> moving statistics = this group's batch statistics
        means.append(bn.moving_mean.numpy())
        variances.append(bn.moving_variance.numpy())
    return np.concatenate(outs), np.mean(means, axis=0), np.mean(variances, axis=0)


@pytest.mark.parametrize('shape,kwargs,sizes', [
    ((12, 5), dict(virtual_batch_size=4), [4, 4, 4]),
    ((8, 3, 4, 6), dict(virtual_batch_size=2), [2, 2, 2, 2]),
    ((8, 3, 4, 6), dict(groups=[3, 5]), [3, 5]),
    ((6, 5), dict(virtual_batch_size=None), [6]),
])
def test_equals_batchnorm_per_group(rng, shape, kwargs, sizes):
    x = (rng.normal(size=shape) * 3 + 1).astype('float32')
    layer = GhostBatchNormalization(momentum=MOMENTUM, epsilon=EPSILON, **kwargs)
    layer.build(x.shape)
    _init_affine(layer, rng, shape[-1])
    old_mean = rng.normal(size=shape[-1]).astype('float32')
    old_var = rng.uniform(0.5, 2, shape[-1]).astype('float32')
    layer.moving_mean.assign(old_mean)
    layer.moving_variance.assign(old_var)

    out = layer(x, training=True).numpy()
    expected, group_mean, group_var = _reference(x, sizes, layer.gamma.numpy(), layer.beta.numpy())
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)
    # moving statistics: momentum update towards the unweighted mean over groups of the group statistics
    np.testing.assert_allclose(layer.moving_mean.numpy(), MOMENTUM * old_mean + (1 - MOMENTUM) * group_mean,
                               atol=1e-6)
    np.testing.assert_allclose(layer.moving_variance.numpy(), MOMENTUM * old_var + (1 - MOMENTUM) * group_var,
                               atol=1e-6)


def test_inference_uses_moving_statistics(rng):
    x = rng.normal(size=(8, 4)).astype('float32')
    layer = GhostBatchNormalization(virtual_batch_size=4, epsilon=EPSILON)
    layer.build(x.shape)
    _init_affine(layer, rng, 4)
    mean = rng.normal(size=4).astype('float32')
    var = rng.uniform(0.5, 2, 4).astype('float32')
    layer.moving_mean.assign(mean)
    layer.moving_variance.assign(var)
    expected = (x - mean) / np.sqrt(var + EPSILON) * layer.gamma.numpy() + layer.beta.numpy()
    np.testing.assert_allclose(layer(x, training=False).numpy(), expected, atol=1e-5)
    # trainable=False also means inference mode (as for keras BatchNormalization), and stats stay put
    layer.trainable = False
    np.testing.assert_allclose(layer(x, training=True).numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(layer.moving_mean.numpy(), mean)
    np.testing.assert_array_equal(layer.moving_variance.numpy(), var)


def test_unknown_batch_inside_tf_function(rng):
    x = rng.normal(size=(8, 2, 2, 3)).astype('float32')
    layer = GhostBatchNormalization(virtual_batch_size=4, momentum=MOMENTUM, epsilon=EPSILON)
    layer.build(x.shape)
    fn = tf.function(lambda t: layer(t, training=True),
                     input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    expected, _, _ = _reference(x, [4, 4], layer.gamma.numpy(), layer.beta.numpy())
    np.testing.assert_allclose(fn(x).numpy(), expected, atol=1e-5)


def test_mixed_bfloat16_statistics_in_float32(rng):
    x = (rng.normal(size=(8, 6)) * 2 + 3).astype('float32')
    with policy_scope('mixed_bfloat16'):
        layer = GhostBatchNormalization(virtual_batch_size=4, momentum=MOMENTUM, epsilon=EPSILON)
        layer.build(x.shape)
    out = layer(tf.cast(x, tf.bfloat16), training=True)
    assert out.dtype == tf.bfloat16
    assert layer.moving_mean.dtype == 'float32' and layer.gamma.dtype == 'float32'
    expected, group_mean, _ = _reference(x.astype(tf.bfloat16.as_numpy_dtype).astype('float32'), [4, 4],
                                         layer.gamma.numpy(), layer.beta.numpy())
    np.testing.assert_allclose(out.numpy().astype('float32'), expected, atol=2e-2)
    np.testing.assert_allclose(layer.moving_mean.numpy(), (1 - MOMENTUM) * group_mean, rtol=1e-5)


def test_config_round_trip():
    layer = GhostBatchNormalization(virtual_batch_size=None, groups=[3, 5], momentum=0.5, epsilon=1e-4,
                                    center=False, scale=True, name='gbn')
    config = layer.get_config()
    clone = GhostBatchNormalization.from_config(config)
    assert clone.get_config() == config
    assert (clone.groups, clone.virtual_batch_size, clone.momentum, clone.epsilon, clone.center) == \
        ([3, 5], None, 0.5, 1e-4, False)
    # and through Keras serialization (registered class)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(again, GhostBatchNormalization) and again.groups == [3, 5]


def test_is_a_batchnormalization_with_same_weights():
    layer = GhostBatchNormalization()
    layer.build((16, 4))
    assert isinstance(layer, keras.layers.BatchNormalization)
    assert [w.name for w in layer.weights] == ['gamma', 'beta', 'moving_mean', 'moving_variance']


def test_batch_errors(rng):
    layer = GhostBatchNormalization(virtual_batch_size=4)
    with pytest.raises(ValueError, match='multiple of virtual_batch_size=4.*batch of 6'):
        layer(rng.normal(size=(6, 3)).astype('float32'), training=True)
    layer = GhostBatchNormalization(groups=[3, 4])
    with pytest.raises(ValueError, match=r'groups=\[3, 4\] must sum to the batch size.*batch of 8'):
        layer(rng.normal(size=(8, 3)).astype('float32'), training=True)


@pytest.mark.parametrize('kwargs,match', [
    (dict(virtual_batch_size=0), 'virtual_batch_size=0'),
    (dict(virtual_batch_size=2.5), 'virtual_batch_size=2.5'),
    (dict(groups=[]), r'groups=\[\]'),
    (dict(groups=[2, -1]), r'groups=\[2, -1\]'),
    (dict(axis=1), 'axis=1'),
    (dict(renorm=True), 'renorm=True'),
    (dict(synchronized=True), 'synchronized=True'),
])
def test_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GhostBatchNormalization(**kwargs)


def test_layer_contract(rng):
    from tests.layer_testing import run_layer_test
    x = rng.normal(1.0, 2.0, size=(8, 6)).astype(np.float32)
    run_layer_test(lambda: GhostBatchNormalization(virtual_batch_size=4), x, (8, 6))
