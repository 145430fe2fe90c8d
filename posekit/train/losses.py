"""Every training loss of posekit in one module (the ``train/losses.py`` of ARCHITECTURE.md).

The losses live in two topic modules; this module re-exports them so that experiments import one
place:

- :mod:`posekit.train.losses_metrabs`: the MeTRAbs losses of supplement S2 (Sárándi et al., WACV
  2023), all on the absolute output and in metres: :func:`metrabs_loss` (the weighted sum) and its
  parts :func:`mean_relative_loss`, :func:`projection_loss`, :func:`absolute_loss`,
  :func:`weak_2d_loss`, with :func:`per_joint_averaging_matrix` (weak 2D supervision across formats)
  and :func:`abs_loss_factor` (the absolute loss's schedule);
- :mod:`posekit.train.losses_acae`: the losses built on a frozen affine-combining autoencoder:
  :func:`consistency_loss` (consistency regularization), :func:`decode_latents` (latent head),
  :func:`hybrid_teacher_loss` (hybrid student-teacher) and :func:`reconstruct`.

Constants (weights and thresholds) are re-exported with them.
"""
from posekit.train.losses_acae import (CONSISTENCY_WEIGHT_2D, HYBRID_START_STEP, consistency_loss,
                                       decode_latents, hybrid_teacher_loss, reconstruct)
from posekit.train.losses_metrabs import (ABS_DEPTH_CAP_MM, ABS_LOSS_START_STEP, LAMBDA_ABS, LAMBDA_PROJ,
                                          LAMBDA_WEAK_2D, MIN_PRED_DEPTH_MM, MIN_TRUE_DEPTH_MM, MM_PER_M,
                                          abs_loss_factor, absolute_loss, masked_mean, mean_relative,
                                          mean_relative_loss, metrabs_loss, per_joint_averaging_matrix,
                                          projection_loss, weak_2d_loss)

__all__ = [
    'ABS_DEPTH_CAP_MM', 'ABS_LOSS_START_STEP', 'CONSISTENCY_WEIGHT_2D', 'HYBRID_START_STEP', 'LAMBDA_ABS',
    'LAMBDA_PROJ', 'LAMBDA_WEAK_2D', 'MIN_PRED_DEPTH_MM', 'MIN_TRUE_DEPTH_MM', 'MM_PER_M', 'abs_loss_factor',
    'absolute_loss', 'consistency_loss', 'decode_latents', 'hybrid_teacher_loss', 'masked_mean',
    'mean_relative', 'mean_relative_loss', 'metrabs_loss', 'per_joint_averaging_matrix', 'projection_loss',
    'reconstruct', 'weak_2d_loss',
]
