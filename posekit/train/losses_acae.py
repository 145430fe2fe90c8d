"""Training losses built on a frozen affine-combining autoencoder (ACAE).

Pure functions on tensors; they compute in float32 (inputs of other float dtypes, e.g. bfloat16
under mixed precision, are cast) and return float32 scalars. Each works eagerly and inside
``tf.function``.

The ACAE is frozen in all of them: its normalised weights enter through ``tf.stop_gradient``, so no
gradient reaches the autoencoder's variables whatever their ``trainable`` flag, while gradients do
flow to the predictions (through both the prediction and its reconstruction, as in the paper; the
reconstruction is a fixed linear map of the prediction).

Distances are per-joint L1 norms (sum over coordinates of the absolute differences), averaged over
joints (or latents) and examples; they are in the unit of the inputs (mm, m, px, ...): choose that
unit as for the main losses so the weights are comparable.
"""

from __future__ import annotations

import tensorflow as tf

# Step from which the hybrid student-teacher loss is switched on (paper: after 5000 steps).
HYBRID_START_STEP = 5000
# Weight of the 2D term of the consistency loss relative to the 3D term (paper: 0.2).
CONSISTENCY_WEIGHT_2D = 0.2


def _frozen_matrices(acae):
    return (tf.stop_gradient(acae.encoder_matrix()), tf.stop_gradient(acae.decoder_matrix()))


def _check_joints(name, x, n, axis_name='joints'):
    if x.shape.rank != 3:
        raise ValueError(f'{name} must have shape [B, {axis_name}, C]; got shape {x.shape}')
    if x.shape[1] is not None and x.shape[1] != n:
        raise ValueError(f'{name} must have {n} {axis_name} (the ACAE\'s); got shape {x.shape}')


def _masked_mean(per_point, valid):
    """Mean of [B, P] values over the points with valid [B, P] (all if None; 0 if none is valid), global over
    the replicas of a tf.distribute step (:func:`posekit.train.losses_metrabs.masked_mean`)."""
    from posekit.train.losses_metrabs import masked_mean
    return masked_mean(per_point, valid)


def reconstruct(points, acae) -> tf.Tensor:
    """The frozen ACAE's reconstruction ``decode(encode(points))``.

    Args:
      points: [B, J, C] float (any unit/frame; C = 3 for 3D points, 2 for image points).
      acae: an ``AffineCombiningAutoencoder`` over J joints.

    Returns:
      [B, J, C] float32, same unit and frame. Gradients flow to ``points``, not to the ACAE.
    """
    points = tf.cast(points, tf.float32)
    _check_joints('points', points, acae.n_joints)
    w_enc, w_dec = _frozen_matrices(acae)
    # recon_k = sum_l W_dec[l, k] sum_j W_enc[j, l] x_j = sum_j (W_enc W_dec)[j, k] x_j
    return tf.einsum('bjc,jk->bkc', points, tf.matmul(w_enc, w_dec))


def consistency_loss(pred3d, acae, pred2d=None, weight_2d: float = CONSISTENCY_WEIGHT_2D,
                     valid=None) -> tf.Tensor:
    """Consistency regularization: predictions vs their own ACAE reconstruction.

    ``mean_{b,j} |pred3d - R(pred3d)|_1 + weight_2d * mean_{b,j} |pred2d - R(pred2d)|_1``, where
    ``R`` is the frozen autoencoder; the 2D predictions are reconstructed with the same affine
    weights (the paper applies the autoencoder to the 2D coordinates too).

    Args:
      pred3d: [B, J, 3] predicted 3D points of the all-joints space (e.g. mm or m, camera frame).
      acae: a (frozen) ``AffineCombiningAutoencoder`` over the J joints.
      pred2d: optional [B, J, 2] predicted image points (e.g. px or normalised image coordinates).
      weight_2d: factor of the 2D term.
      valid: optional [B, J] mask of the joints to average over (e.g. to drop padded examples);
        the reconstruction itself always uses all J predicted joints.

    Returns:
      float32 scalar in the inputs' units. Zero exactly when each prediction is a fixed point of
      the autoencoder (e.g. ``decode(z)`` when the encoder inverts the decoder). Gradients flow into
      ``pred3d``/``pred2d`` through both the prediction and its reconstruction, none into the ACAE.
    """
    pred3d = tf.cast(pred3d, tf.float32)
    loss = _masked_mean(tf.reduce_sum(tf.abs(pred3d - reconstruct(pred3d, acae)), axis=-1), valid)
    if pred2d is not None:
        pred2d = tf.cast(pred2d, tf.float32)
        loss_2d = _masked_mean(
            tf.reduce_sum(tf.abs(pred2d - reconstruct(pred2d, acae)), axis=-1), valid)
        loss = loss + weight_2d * loss_2d
    return loss


def decode_latents(latents, acae) -> tf.Tensor:
    """All joints of every format from directly predicted latent points (the latent head).

    Args:
      latents: [B, L, C] latent points (any unit/frame, e.g. mm camera frame or px).
      acae: a (frozen) ``AffineCombiningAutoencoder`` with L latents.

    Returns:
      [B, J, C] float32 joints in the unit and frame of ``latents``; apply the per-format losses
      to (subsets of) them. Gradients flow to ``latents``, not to the ACAE.
    """
    latents = tf.cast(latents, tf.float32)
    _check_joints('latents', latents, acae.n_latents, axis_name='latents')
    _, w_dec = _frozen_matrices(acae)
    return tf.einsum('blc,lj->bjc', latents, w_dec)


def hybrid_teacher_loss(latent_pred, all_joints_pred, acae, step,
                        start_step: int = HYBRID_START_STEP) -> tf.Tensor:
    """Hybrid student-teacher loss: the latent head learns the encoded all-joints head.

    ``mean_{b,l} |latent_pred - stop_gradient(encode(all_joints_pred))|_1`` from ``start_step``
    on, exactly 0 before.

    Args:
      latent_pred: [B, L, C] latent points predicted by the latent head (student).
      all_joints_pred: [B, J, C] all-joints head's prediction (teacher; receives no gradient).
      acae: a (frozen) ``AffineCombiningAutoencoder`` with J joints and L latents.
      step: current training step, python int or integer/float scalar tensor (works inside
        ``tf.function``).
      start_step: first step at which the loss is on.

    Returns:
      float32 scalar in the inputs' unit.
    """
    latent_pred = tf.cast(latent_pred, tf.float32)
    all_joints_pred = tf.cast(all_joints_pred, tf.float32)
    _check_joints('latent_pred', latent_pred, acae.n_latents, axis_name='latents')
    _check_joints('all_joints_pred', all_joints_pred, acae.n_joints)
    w_enc, _ = _frozen_matrices(acae)
    teacher = tf.stop_gradient(tf.einsum('bjc,jl->blc', all_joints_pred, w_enc))
    loss = tf.reduce_mean(tf.reduce_sum(tf.abs(latent_pred - teacher), axis=-1))
    on = tf.cast(step, tf.int64) >= tf.cast(start_step, tf.int64)
    # where (not multiplication) so that a non-finite loss before start_step still gives 0.
    return tf.where(on, loss, tf.zeros_like(loss))
