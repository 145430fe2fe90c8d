"""MeTRAbs training losses (Sárándi et al., WACV 2023, supplement S2), all on the absolute output.

Every loss supervises the absolute camera-frame prediction ``coords3d_abs`` of
:class:`posekit.models.metrabs.Metrabs` ("single absolute-output supervision"): the 3D heads are
trained only through the pose reconstructed from them. Losses are in **metres** (inputs in mm are
divided by ``MM_PER_M``), so the weights match the paper's:

``loss = L_meanrel + LAMBDA_PROJ * L_proj + lambda_abs(step) * L_abs + LAMBDA_WEAK_2D * L_weak2d``

- ``L_meanrel`` (:func:`mean_relative_loss`): L1 between the predicted and true poses after each is made
  relative to the mean of its valid joints; mean over the valid joints and the 3 coordinates.
- ``L_proj`` (:func:`projection_loss`): L1 between the projections (px) of the predicted and the true
  absolute pose; 2D coordinates normalised by the crop side and expressed at the scale of the 2.2 m box
  (``px / crop_size_px * box_size_m``, so one crop width counts as 2.2 m, the metric size the crop
  covers at the box's depth). Only joints whose prediction projects inside the crop (in front of
  the camera) count: out-of-view predictions are not pulled by their projection.
- ``L_abs`` (:func:`absolute_loss`): L1 of the absolute camera-frame error, with the depth error of a
  joint at true depth z > 10 m scaled by ``10 m / z`` (an "effective 10 m cap": far joints' depth
  error counts as if they were 10 m away, since depth errors grow with distance). Weight
  ``LAMBDA_ABS = 0.1``, only after step ``ABS_LOSS_START_STEP = 5000`` (strictly greater), when the
  relative pose is roughly right.
- ``L_weak2d`` (:func:`weak_2d_loss`): for 2D-labelled examples, each labelled 2D joint against the
  average of the projected predictions of the same-named joints of all formats (an averaging matrix),
  with the normalisation of ``L_proj``; weight ``LAMBDA_WEAK_2D = 0.2``.

Joints with true depth below ``MIN_TRUE_DEPTH_MM`` (300 mm) are excluded from ``L_abs`` and ``L_proj``.

Reading of the paper: the supplement states the loss terms and weights above; the details (per-
coordinate L1 means, the depth scaling ``min(1, 10 m / |z_true|)``, the 300 mm depth guard, the in-crop
mask of the projection loss and the box-scale normalisation of 2D errors) follow the authors' released
MeTRAbs-ACAE training code, which we read to resolve what the text leaves open.

All functions are pure, compute in float32 (inputs of other dtypes, e.g. bfloat16, are cast), take boolean
validity masks and return scalars; a mean over no valid entries is 0. They trace in ``tf.function`` and
compile with XLA (static shapes, no Python-side state).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from posekit import geometry
from posekit.geometry import BOX_SIZE_MM

MM_PER_M = 1000.0
#: Weight of the projection loss.
LAMBDA_PROJ = 1.0
#: Weight of the absolute loss once it is on.
LAMBDA_ABS = 0.1
#: The absolute loss is on only for steps > ABS_LOSS_START_STEP.
ABS_LOSS_START_STEP = 5000
#: Weight of the weak 2D loss of the 2D-labelled examples.
LAMBDA_WEAK_2D = 0.2
#: Depth errors of joints farther than this are scaled by ABS_DEPTH_CAP_MM / z_true, mm.
ABS_DEPTH_CAP_MM = 10_000.0
#: Joints with true depth below this are left out of the absolute and projection losses, mm.
MIN_TRUE_DEPTH_MM = 300.0
#: Predicted points must lie at least this far in front of the camera to count in the 2D losses, mm.
MIN_PRED_DEPTH_MM = 1.0


def masked_mean(values, mask=None):
    """Mean of ``values`` [...] over the entries where ``mask`` (broadcast to values) is True; 0 if none.

    Data parallel: called in the replica context of a tf.distribute strategy with R > 1 replicas, the number
    of masked entries is summed over the replicas (an all-reduce) and the result is ``R * local sum / global
    count``. The training loop divides each replica's loss by R and sums the gradients, so the update is that
    of the mean over the global batch even when replicas hold different numbers of valid entries (a local
    mean would weight them equally instead). Outside a replica context, or with one replica: the plain mean.
    """
    values = tf.cast(values, tf.float32)
    weights = (tf.ones_like(values) if mask is None
               else tf.broadcast_to(tf.cast(mask, tf.float32), tf.shape(values)))
    total = tf.reduce_sum(values * weights)
    count = tf.stop_gradient(tf.reduce_sum(weights))
    context = tf.distribute.get_replica_context()
    replicas = context.num_replicas_in_sync if context is not None else 1
    if replicas > 1:
        count = context.all_reduce(tf.distribute.ReduceOp.SUM, count)
        return tf.math.divide_no_nan(total, count) * float(replicas)
    return tf.math.divide_no_nan(total, count)


def _joint_mask(mask, values):
    """[B, J] bool mask -> [B, J, 1] for coordinate arrays [B, J, C]."""
    return tf.cast(mask, tf.bool)[..., tf.newaxis] if mask is not None else tf.ones_like(values[..., :1], tf.bool)


def mean_relative(coords, is_valid=None):
    """Coordinates [B, J, C] minus the mean of each example's valid joints ([B, J] bool; None: all)."""
    coords = tf.cast(coords, tf.float32)
    weights = tf.cast(_joint_mask(is_valid, coords), tf.float32)
    centre = tf.math.divide_no_nan(tf.reduce_sum(coords * weights, axis=1, keepdims=True),
                                   tf.reduce_sum(weights, axis=1, keepdims=True))
    return coords - centre


def mean_relative_loss(pred_mm, true_mm, is_valid=None):
    """Mean-relative 3D L1 loss, metres.

    Args:
      pred_mm, true_mm: [B, J, 3] camera-frame poses, mm (any translation).
      is_valid: [B, J] bool, the labelled joints (None: all).

    Returns:
      Scalar float32: mean over valid joints and coordinates of
      ``|mean_relative(true) - mean_relative(pred)| / MM_PER_M``.
    """
    diff = mean_relative(true_mm, is_valid) - mean_relative(pred_mm, is_valid)
    return masked_mean(tf.abs(diff) / MM_PER_M, _joint_mask(is_valid, diff))


def absolute_loss(pred_mm, true_mm, is_valid=None, depth_cap_mm=ABS_DEPTH_CAP_MM,
                  min_true_depth_mm=MIN_TRUE_DEPTH_MM):
    """Absolute camera-frame L1 loss with the far-depth scaling, metres.

    Args:
      pred_mm, true_mm: [B, J, 3] absolute camera-frame poses, mm.
      is_valid: [B, J] bool (None: all). Joints with true depth < ``min_true_depth_mm`` are left out.
      depth_cap_mm: the z error of a joint at true depth |z| > depth_cap_mm is scaled by depth_cap_mm / |z|.

    Returns:
      Scalar float32: mean over valid joints of ``(|dx| + |dy| + s |dz|) / 3 / MM_PER_M``,
      ``s = min(1, depth_cap_mm / |z_true|)``.
    """
    pred_mm = tf.cast(pred_mm, tf.float32)
    true_mm = tf.cast(true_mm, tf.float32)
    absdiff = tf.abs(true_mm - pred_mm)
    depth_scale = tf.minimum(1.0, tf.math.divide_no_nan(depth_cap_mm, tf.abs(true_mm[..., 2:])))
    absdiff = tf.concat([absdiff[..., :2], absdiff[..., 2:] * depth_scale], axis=-1)
    valid = tf.logical_and(_joint_mask(is_valid, true_mm), true_mm[..., 2:] >= min_true_depth_mm)
    return masked_mean(absdiff / MM_PER_M, valid)


def _project(points_mm, intrinsics):
    """[B, J, 3] camera-frame mm -> [B, J, 2] px, depths clamped to ``MIN_PROJECTION_DEPTH_MM``."""
    return geometry.project_tf(points_mm, intrinsics, min_depth=geometry.MIN_PROJECTION_DEPTH_MM)


def _normalized_2d_l1(pred_px, true_px, valid, crop_size_px, box_size_mm):
    """Mean L1 of 2D errors [B, J, 2] px, in crop sides times the box size in metres, over valid [B, J, 1]."""
    scale = (box_size_mm / MM_PER_M) / tf.cast(crop_size_px, tf.float32)
    return masked_mean(tf.abs(true_px - pred_px) * scale, valid)


def projection_loss(pred_mm, true_mm, intrinsics, crop_size_px, is_valid=None, box_size_mm=BOX_SIZE_MM,
                    min_true_depth_mm=MIN_TRUE_DEPTH_MM):
    """2D projection loss of the absolute prediction (box-scale metres, see the module docstring).

    Args:
      pred_mm, true_mm: [B, J, 3] absolute camera-frame poses, mm.
      intrinsics: [B, 3, 3] crop camera matrices, px.
      crop_size_px: side of the (square) input crop, px.
      is_valid: [B, J] bool (None: all).
      box_size_mm: metric size one crop side stands for (``BOX_SIZE_MM``).

    Returns:
      Scalar float32: mean over coordinates of the valid joints (true depth >= min_true_depth_mm,
      prediction in front of the camera and projecting inside the crop) of
      ``|proj(true) - proj(pred)| / crop_size_px * box_size_mm / MM_PER_M``.
    """
    pred_mm = tf.cast(pred_mm, tf.float32)
    true_mm = tf.cast(true_mm, tf.float32)
    intrinsics = tf.cast(intrinsics, tf.float32)
    pred_px = _project(pred_mm, intrinsics)
    true_px = _project(true_mm, intrinsics)
    in_crop = geometry.points_in_image(pred_px, (crop_size_px, crop_size_px), 0.0)[..., tf.newaxis]
    valid = tf.logical_and(_joint_mask(is_valid, true_mm), true_mm[..., 2:] >= min_true_depth_mm)
    valid = tf.logical_and(valid, tf.logical_and(in_crop, pred_mm[..., 2:] >= MIN_PRED_DEPTH_MM))
    return _normalized_2d_l1(pred_px, true_px, valid, crop_size_px, box_size_mm)


def weak_2d_loss(pred_mm, true2d_px, intrinsics, crop_size_px, averaging_matrix, is_valid=None,
                 box_size_mm=BOX_SIZE_MM):
    """Weak 2D loss for 2D-labelled examples (box-scale metres, as :func:`projection_loss`).

    Args:
      pred_mm: [B, J_all, 3] absolute camera-frame predictions of all formats' joints, mm.
      true2d_px: [B, J2, 2] 2D labels, px in the crop.
      intrinsics: [B, 3, 3] crop camera matrices, px.
      crop_size_px: side of the input crop, px.
      averaging_matrix: [J2, J_all]; row k averages the predicted joints corresponding to label k
        (e.g. the same-named joints of all formats, :func:`per_joint_averaging_matrix`).
      is_valid: [B, J2] bool, the labelled joints (None: all).

    Returns:
      Scalar float32: mean over the valid labels whose averaged prediction projects inside the crop of
      ``|true2d - A @ proj(pred)| / crop_size_px * box_size_mm / MM_PER_M``.
    """
    pred_mm = tf.cast(pred_mm, tf.float32)
    true2d_px = tf.cast(true2d_px, tf.float32)
    pred_px = _project(pred_mm, tf.cast(intrinsics, tf.float32))
    averaged = tf.einsum('kj,bjc->bkc', tf.cast(averaging_matrix, tf.float32), pred_px)
    in_crop = geometry.points_in_image(averaged, (crop_size_px, crop_size_px), 0.0)[..., tf.newaxis]
    valid = tf.logical_and(_joint_mask(is_valid, true2d_px), in_crop)
    return _normalized_2d_l1(averaged, true2d_px, valid, crop_size_px, box_size_mm)


def per_joint_averaging_matrix(joint_space) -> np.ndarray:
    """[J_all, J_all] float32: row j averages all formats' joints with the base name of joint j.

    ``joint_space`` is a ``posekit.skeletons.JointSpace`` (uses ``averaging_matrix()`` and
    ``base_name(j)``). Use it with 2D labels given in the all-formats joint space (the data contract).
    """
    names, matrix = joint_space.averaging_matrix()
    row_of = {name: i for i, name in enumerate(names)}
    rows = [row_of[joint_space.base_name(j)] for j in range(joint_space.n_joints)]
    return np.asarray(matrix, np.float32)[rows]


def abs_loss_factor(step, lambda_abs=LAMBDA_ABS, start_step=ABS_LOSS_START_STEP):
    """Weight of the absolute loss at ``step`` (int or scalar tensor): lambda_abs if step > start_step else 0."""
    step = tf.cast(step, tf.int64)
    return tf.where(step > start_step, tf.constant(lambda_abs, tf.float32), tf.constant(0.0, tf.float32))


def metrabs_loss(predictions, batch, step, *, crop_size_px=None, averaging_matrix=None,
                 output_key='coords3d_abs', box_size_mm=BOX_SIZE_MM, lambda_proj=LAMBDA_PROJ,
                 lambda_abs=LAMBDA_ABS, abs_loss_start_step=ABS_LOSS_START_STEP, lambda_weak_2d=LAMBDA_WEAK_2D):
    """The MeTRAbs loss of a mixed batch (3D- and 2D-labelled examples), metres.

    Args:
      predictions: dict with ``output_key`` (default ``'coords3d_abs'``): [B, J_all, 3] mm camera frame.
      batch: dict in the data contract's layout: ``intrinsics`` [B, 3, 3] px, ``coords3d`` [B, J_all, 3]
        mm (used for 3D examples), ``coords2d`` [B, J_all, 2] px (used for 2D examples), ``joint_valid``
        [B, J_all] bool, ``is_3d`` [B] bool (missing: all examples are 3D), and ``image`` [B, S, S, 3]
        when ``crop_size_px`` is None.
      step: training step (int or scalar tensor), for the absolute loss schedule.
      crop_size_px: side S of the input crop, px (None: ``batch['image'].shape[1]``).
      averaging_matrix: [J_all, J_all] weak-2D averaging (:func:`per_joint_averaging_matrix`);
        None: each 2D label is compared with the same joint's prediction.
      output_key: which prediction to supervise (e.g. ``'direct_coords3d_abs'`` for a hybrid model's
        all-joints head).

    Returns:
      (loss, parts): scalar float32 total; dict of float32 scalars ``meanrel3d``, ``proj2d``, ``abs3d``
      (unweighted), ``abs_factor`` (its weight at this step) and ``weak2d`` (unweighted).
    """
    pred = tf.cast(predictions[output_key], tf.float32)
    if crop_size_px is None:
        if 'image' not in batch or batch['image'].shape[1] is None:
            raise ValueError('crop_size_px must be given when batch has no image of static size; '
                             f'received crop_size_px={crop_size_px!r}')
        crop_size_px = int(batch['image'].shape[1])
    valid = tf.cast(batch['joint_valid'], tf.bool)
    is_3d = (tf.ones_like(valid[:, 0]) if batch.get('is_3d') is None
             else tf.cast(batch['is_3d'], tf.bool))
    valid3d = tf.logical_and(valid, is_3d[:, tf.newaxis])
    valid2d = tf.logical_and(valid, tf.logical_not(is_3d)[:, tf.newaxis])
    true3d = tf.cast(batch['coords3d'], tf.float32)
    intrinsics = tf.cast(batch['intrinsics'], tf.float32)

    parts = dict(
        meanrel3d=mean_relative_loss(pred, true3d, valid3d),
        proj2d=projection_loss(pred, true3d, intrinsics, crop_size_px, valid3d, box_size_mm),
        abs3d=absolute_loss(pred, true3d, valid3d),
        abs_factor=abs_loss_factor(step, lambda_abs, abs_loss_start_step))
    if 'coords2d' in batch:
        matrix = (np.eye(pred.shape[1], dtype=np.float32) if averaging_matrix is None else averaging_matrix)
        parts['weak2d'] = weak_2d_loss(pred, batch['coords2d'], intrinsics, crop_size_px, matrix, valid2d,
                                       box_size_mm)
    else:
        parts['weak2d'] = tf.constant(0.0, tf.float32)
    loss = (parts['meanrel3d'] + lambda_proj * parts['proj2d'] + parts['abs_factor'] * parts['abs3d']
            + lambda_weak_2d * parts['weak2d'])
    return loss, parts
