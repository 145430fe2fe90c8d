"""Tests of posekit.train.losses_video: the heatmap loss, latency alignment and distillation."""
import numpy as np
import pytest
import tensorflow as tf

from posekit.train.losses_video import (align_to_latency, distillation_loss, heatmap_loss, latency_heatmap_loss,
                                        normalized_squared_distance)


def test_heatmap_loss_formula():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    targets = (rng.uniform(size=(2, 3, 4, 5)) > 0.8).astype(np.float32)
    ce = np.maximum(logits, 0) - logits * targets + np.log1p(np.exp(-np.abs(logits)))
    weights = np.where(targets > 0, 10.0, 1.0)
    np.testing.assert_allclose(heatmap_loss(tf.constant(logits), targets), np.mean(weights * ce), rtol=1e-5)
    np.testing.assert_allclose(heatmap_loss(tf.constant(logits), targets, positive_weight=1.0), np.mean(ce),
                               rtol=1e-5)
    with pytest.raises(ValueError, match='positive_weight=0'):
        heatmap_loss(tf.constant(logits), targets, positive_weight=0)


def test_latency_alignment():
    outputs = tf.reshape(tf.range(2 * 5, dtype=tf.float32), (2, 5))
    out, tgt = align_to_latency(outputs, outputs * 10, 2)
    np.testing.assert_array_equal(out, outputs[:, 2:])
    np.testing.assert_array_equal(tgt, outputs[:, :3] * 10)
    logits = tf.random.stateless_normal((1, 4, 2, 2, 3), seed=(0, 1))
    targets = tf.cast(tf.random.stateless_uniform((1, 4, 2, 2, 3), seed=(0, 2)) > 0.5, tf.float32)
    np.testing.assert_allclose(latency_heatmap_loss(logits, targets, 1),
                               heatmap_loss(logits[:, 1:], targets[:, :3]), rtol=1e-6)
    with pytest.raises(ValueError, match='latency=5'):
        align_to_latency(outputs, outputs, 5)


def test_normalized_squared_distance_and_distillation():
    a = tf.constant([[1.0, 0.0], [1.0, 0.0]])
    b = tf.constant([[3.0, 0.0], [0.0, 2.0]])
    np.testing.assert_allclose(normalized_squared_distance(a, b), [0.0, 2.0], atol=1e-6)
    np.testing.assert_allclose(normalized_squared_distance(a, -a), [4.0, 4.0], atol=1e-6)
    student = tf.Variable(tf.random.stateless_normal((2, 3, 3, 4), seed=(3, 4)))
    teacher = tf.Variable(tf.random.stateless_normal((2, 3, 3, 4), seed=(5, 6)))
    with tf.GradientTape() as tape:
        loss = distillation_loss([student, student], [teacher, teacher], weight=0.5)
    grad_s, grad_t = tape.gradient(loss, [student, teacher])
    np.testing.assert_allclose(loss, tf.reduce_mean(normalized_squared_distance(student, teacher)), rtol=1e-6)
    assert grad_s is not None and grad_t is None
    with pytest.raises(ValueError, match='received 1 and 2'):
        distillation_loss([a], [a, a])
