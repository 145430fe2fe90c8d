"""Tests of posekit.models.backbones: ghost BN substitution, max-norm kernels, weight transfer, strides."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from posekit.layers import GhostBatchNormalization
from posekit.models import backbones
from posekit.models.backbones import build_backbone
from posekit.train.precision import policy_scope

# Tiny EfficientNetV2 for fast tests (keras.applications requires inputs of at least 32 px).
TINY = dict(name='efficientnetv2-b0', input_shape=(32, 32, 3), width=0.25, depth=0.25)


def _is_plain_bn(layer):
    return isinstance(layer, keras.layers.BatchNormalization) and not isinstance(layer, GhostBatchNormalization)


def _conv_layers(model):
    return [layer for layer in model.layers
            if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))]


def _filter_norms(layer):
    """L2 norm of each filter: over spatial+input axes (Conv2D) or spatial axes (depthwise)."""
    w = np.asarray(layer.kernel.numpy(), np.float64)
    axes = (0, 1) if isinstance(layer, keras.layers.DepthwiseConv2D) else (0, 1, 2)
    return np.sqrt(np.sum(w ** 2, axis=axes))


@pytest.mark.parametrize('kwargs', [TINY, dict(name='resnet50', input_shape=(32, 32, 3))])
def test_no_batchnorm_left_and_every_conv_constrained(kwargs):
    keras.utils.set_random_seed(0)
    model = build_backbone(**kwargs, ghost_batch_size=4, max_norm=3.0)
    ghosts = [layer for layer in model.layers if isinstance(layer, GhostBatchNormalization)]
    assert not any(_is_plain_bn(layer) for layer in model.layers)
    assert len(ghosts) > 10
    assert all(g.virtual_batch_size == 4 and g.groups is None for g in ghosts)
    convs = _conv_layers(model)
    assert len(convs) > 10
    for layer in convs:
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            constraint, axes = layer.depthwise_constraint, [0, 1]
        else:
            constraint, axes = layer.kernel_constraint, [0, 1, 2]
        assert isinstance(constraint, keras.constraints.MaxNorm), layer.name
        assert constraint.max_value == 3.0 and list(constraint.axis) == axes


def test_ghost_groups_and_bn_hyperparameters_carried_over():
    model = build_backbone(**TINY, ghost_groups=[6, 2])
    ghosts = [layer for layer in model.layers if isinstance(layer, GhostBatchNormalization)]
    assert all(g.groups == [6, 2] for g in ghosts)
    # keras.applications' EfficientNetV2 uses momentum 0.9 and epsilon 1e-3.
    assert all(g.momentum == pytest.approx(0.9) and g.epsilon == pytest.approx(1e-3) for g in ghosts)
    features = model(tf.random.uniform([8, 32, 32, 3], seed=1), training=True)
    assert features.shape == (8, 1, 1, model.output_shape[-1])


def test_checkpoint_weights_transfer_to_ghost_bn_model(tmp_path):
    """A checkpoint of the keras.applications network loads and every weight reaches the new layers."""
    keras.utils.set_random_seed(1)
    source = backbones._build_keras_application('efficientnetv2-b0', (32, 32, 3), 0.25, 0.25, None)
    rng = np.random.default_rng(0)
    for w in source.weights:  # distinctive values, also for the BN moving statistics
        w.assign(rng.uniform(0.5, 1.5, w.shape).astype(np.float32))
    path = str(tmp_path / 'source.weights.h5')
    source.save_weights(path)
    model = build_backbone(**TINY, checkpoint=path, max_norm=None)
    n_checked = 0
    for layer in source.layers:
        for w in layer.weights:
            new = {v.name: v for v in model.get_layer(layer.name).weights}[w.name]
            np.testing.assert_array_equal(new.numpy(), w.numpy())
            n_checked += 1
    assert n_checked == len(model.weights) > 50
    # Same function in inference mode (ghost BN with moving statistics == BN).
    images = tf.random.uniform([2, 32, 32, 3], seed=2)
    np.testing.assert_allclose(model(images, training=False), source(images, training=False),
                               rtol=1e-4, atol=1e-4)


def test_max_norm_holds_after_large_optimizer_step():
    keras.utils.set_random_seed(2)
    limit = 0.5
    model = build_backbone(**TINY, max_norm=limit, ghost_batch_size=4)
    optimizer = keras.optimizers.SGD(learning_rate=1e3)
    images = tf.random.uniform([4, 32, 32, 3], seed=3)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(tf.cast(model(images, training=True), tf.float32)))
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    norms = np.concatenate([_filter_norms(layer).ravel() for layer in _conv_layers(model)])
    assert np.all(norms <= limit * (1 + 1e-5))
    # The constraint was active: the huge step pushed many filters to the bound.
    assert np.mean(norms > limit * 0.999) > 0.5


@pytest.mark.parametrize('name, size, stride', [('mobile_small', 128, 16), ('efficientnetv2-b0', 64, 32),
                                                ('resnet50', 64, 16)])
def test_output_stride(name, size, stride):
    kwargs = {} if name != 'efficientnetv2-b0' else dict(width=0.25, depth=0.25)
    if name == 'resnet50':
        kwargs['output_stride'] = 16
    model = build_backbone(name, input_shape=(size, size, 3), **kwargs)
    assert model.output_shape[1:3] == (size // stride, size // stride)
    assert model.name == name


def test_default_is_small_and_variable_input_size():
    assert backbones.DEFAULT_BACKBONE == 'mobile_small'
    model = build_backbone(input_shape=(None, None, 3))
    out = model(tf.zeros([1, 96, 64, 3]), training=False)
    assert out.shape[1:3] == (6, 4)
    assert model.count_params() < 300_000


def test_mixed_bfloat16_policy():
    with policy_scope('mixed_bfloat16'):
        model = build_backbone(**TINY, ghost_batch_size=2)
    features = model(tf.random.uniform([2, 32, 32, 3], seed=4), training=True)
    assert features.dtype == tf.bfloat16
    assert all(v.dtype == 'float32' for v in model.weights)
    assert np.all(np.isfinite(tf.cast(features, tf.float32).numpy()))
    # The explicit argument does the same without a global scope.
    explicit = build_backbone(**TINY, dtype_policy='mixed_bfloat16')
    assert explicit(tf.zeros([2, 32, 32, 3])).dtype == tf.bfloat16


@pytest.mark.parametrize('kwargs, match', [
    (dict(name='vgg16'), 'name must be one of'),
    (dict(output_stride=8), 'output_stride must be one of'),
    (dict(max_norm=0.0), 'max_norm must be a positive number'),
    (dict(width=-1.0), 'width must be a positive number'),
    (dict(input_shape=(32, 32)), r'input_shape must be \(H, W, 3\)'),
    (dict(name='resnet50', width=0.5), 'resnet50 supports only width=1'),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_backbone(**kwargs)
