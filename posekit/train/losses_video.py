"""Losses of the depth-parallel video networks (Carreira et al., ECCV 2018): per-frame keypoint heatmaps under
a prediction latency, and sequential-to-parallel distillation (section 3.3).

Shapes: heatmap logits and targets (batch, T, h, w, K) over T steps; activations (batch, ...).
"""
from __future__ import annotations

import tensorflow as tf

DEFAULT_POSITIVE_WEIGHT = 10.0
"""Weight of keypoint pixels in the heatmap loss (paper: 10)."""
_NORM_EPSILON = 1e-12


def align_to_latency(outputs, targets, latency):
    """Pairs outputs at step t with targets of frame t - latency along axis 1 (time).

    outputs, targets: (batch, T, ...) -> (outputs[:, latency:], targets[:, :T - latency]), each
    (batch, T - latency, ...).
    """
    steps = outputs.shape[1]
    if isinstance(latency, bool) or not isinstance(latency, int) or not 0 <= latency < (steps or latency + 1):
        raise ValueError(f'latency must be an int in [0, T) with T={steps} steps; received latency={latency!r}')
    if targets.shape[1] != steps:
        raise ValueError(f'outputs and targets must have the same number of steps; received shapes '
                         f'{tuple(outputs.shape)} and {tuple(targets.shape)}')
    return outputs[:, latency:], targets[:, :steps - latency]


def heatmap_loss(logits, targets, positive_weight=DEFAULT_POSITIVE_WEIGHT):
    """Weighted sigmoid cross-entropy, mean over all elements (scalar).

    logits: heatmap logits, any shape; targets: same shape, in [0, 1] (1 at keypoint pixels). Each element's
    cross-entropy is weighted by ``1 + (positive_weight - 1) * target``: positive_weight at keypoint pixels,
    1 on the background.
    """
    if not positive_weight > 0:
        raise ValueError(f'positive_weight must be > 0; received positive_weight={positive_weight!r}')
    targets = tf.cast(targets, logits.dtype)
    weights = 1.0 + (positive_weight - 1.0) * targets
    return tf.reduce_mean(weights * tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits))


def latency_heatmap_loss(logits, targets, latency, positive_weight=DEFAULT_POSITIVE_WEIGHT):
    """``heatmap_loss`` of logits (batch, T, h, w, K) at step t against targets (batch, T, h, w, K) of frame
    t - latency (the first ``latency`` outputs and last ``latency`` targets are unused)."""
    out, tgt = align_to_latency(logits, targets, latency)
    return heatmap_loss(out, tgt, positive_weight)


def normalized_squared_distance(student, teacher):
    """Per-example ``|| s / ||s|| - t / ||t|| ||^2`` (in [0, 4]) over all but axis 0; shape (batch,).

    Both activations are flattened per example and scaled to unit L2 norm, so layers of any size and
    magnitude contribute comparably. The teacher is not differentiated (stop_gradient).
    """
    batch = tf.shape(student)[0]
    s = tf.reshape(student, [batch, -1])
    t = tf.reshape(tf.stop_gradient(tf.cast(teacher, student.dtype)), [batch, -1])
    s = s / tf.sqrt(tf.reduce_sum(s * s, axis=1, keepdims=True) + _NORM_EPSILON)
    t = t / tf.sqrt(tf.reduce_sum(t * t, axis=1, keepdims=True) + _NORM_EPSILON)
    return tf.reduce_sum(tf.square(s - t), axis=1)


def distillation_loss(student_activations, teacher_activations, weight=1.0):
    """Sequential-to-parallel distillation (section 3.3): weight x sum over the m matched layers of the
    batch-mean normalised squared distance. Each argument: a list of m tensors (batch, ...) with equal shapes
    pairwise (e.g. ``unroll(..., capture=names)['activations']`` values of a student and a trained teacher).
    """
    student_activations, teacher_activations = list(student_activations), list(teacher_activations)
    if len(student_activations) != len(teacher_activations) or not student_activations:
        raise ValueError(f'need the same non-zero number of student and teacher activations; received '
                         f'{len(student_activations)} and {len(teacher_activations)}')
    total = 0.0
    for s, t in zip(student_activations, teacher_activations):
        if s.shape != t.shape:
            raise ValueError(f'student and teacher activations must have equal shapes; received '
                             f'{tuple(s.shape)} and {tuple(t.shape)}')
        total += tf.reduce_mean(normalized_squared_distance(s, t))
    return weight * total
