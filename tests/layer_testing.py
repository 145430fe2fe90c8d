"""``run_layer_test``: the checks every posekit Keras layer passes, in the spirit of keras-hub's ``run_layer_test``.

1. ``from_config(get_config())`` round trip: the same config, and with the same weights the same outputs;
2. output shape and dtype (float32 under the float32 policy; the mixed policy's compute dtype, or float32 for layers
   that compute in float32 on purpose, under ``mixed_bfloat16``);
3. ``mixed_bfloat16`` outputs close to float32 ones with the same weights;
4. one training step (SGD on a squared loss) changes the trainable weights and lowers the loss.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from posekit.train.precision import policy_scope


def _outputs(layer, inputs, training=False):
    out = layer(inputs, training=training)
    return out[0] if isinstance(out, (tuple, list)) else out


def run_layer_test(make_layer, inputs, expected_output_shape, mixed_output_dtype='bfloat16', mixed_atol=0.05,
                   mixed_rtol=0.05, train=True, learning_rate=1e-2, target_scale=1.0):
    """Runs the four checks (module docstring) on ``make_layer()`` (a fresh layer per call) with ``inputs``.

    Args:
      make_layer: callable returning a new, unbuilt layer.
      inputs: a numpy array (or tensor), or a list of them, that the layer takes.
      expected_output_shape: the output's shape (tuple).
      mixed_output_dtype: the output dtype under ``mixed_bfloat16`` ('bfloat16', or 'float32' for layers that
        compute in float32).
      mixed_atol, mixed_rtol: tolerance of the bfloat16 outputs against float32 ones.
      train: run the training-step check (False for layers without trainable weights).
    """
    inputs = [tf.constant(x) for x in inputs] if isinstance(inputs, (list, tuple)) else tf.constant(inputs)
    layer = make_layer()
    out = _outputs(layer, inputs)
    assert tuple(out.shape) == tuple(expected_output_shape), (out.shape, expected_output_shape)
    assert out.dtype == tf.float32, out.dtype
    weights = layer.get_weights()

    # 1. config round trip
    config = layer.get_config()
    clone = layer.__class__.from_config(config)
    assert clone.get_config() == config
    _outputs(clone, inputs)
    clone.set_weights(weights)
    np.testing.assert_allclose(_outputs(clone, inputs).numpy(), out.numpy(), rtol=1e-6, atol=1e-6)

    # 2./3. mixed precision
    with policy_scope('mixed_bfloat16'):
        mixed = make_layer()
        mixed_out = _outputs(mixed, inputs)
    assert mixed_out.dtype == tf.as_dtype(mixed_output_dtype), mixed_out.dtype
    mixed.set_weights(weights)
    mixed_out = tf.cast(_outputs(mixed, inputs), tf.float32).numpy()
    scale = max(1.0, float(np.abs(out.numpy()).max()))
    np.testing.assert_allclose(mixed_out, out.numpy(), atol=mixed_atol * scale, rtol=mixed_rtol)

    # 4. one training step
    if train:
        trainee = make_layer()
        _outputs(trainee, inputs, training=True)
        trainee.set_weights(weights)
        target = tf.constant(np.random.default_rng(987654).normal(0.0, target_scale, tuple(expected_output_shape)),
                             tf.float32)
        before = [v.numpy().copy() for v in trainee.trainable_variables]
        assert before, 'the layer has no trainable weights'
        optimizer = keras.optimizers.SGD(learning_rate)

        def loss():
            return tf.reduce_mean(tf.square(tf.cast(_outputs(trainee, inputs, training=True), tf.float32) - target))

        with tf.GradientTape() as tape:
            first = loss()
        grads = tape.gradient(first, trainee.trainable_variables)
        optimizer.apply_gradients(zip(grads, trainee.trainable_variables))
        changed = [not np.array_equal(b, v.numpy()) for b, v in zip(before, trainee.trainable_variables)]
        assert any(changed), 'a training step changed no weight'
        assert float(loss()) < float(first), (float(loss()), float(first))
    return out
