"""Evaluation of multi-format predictions: per-format metrics and cross-format consistency.

A multi-format model (``posekit.models.metrabs.Metrabs`` over a ``posekit.skeletons.JointSpace``)
predicts the joints of several skeleton formats for each person. Inputs here are joint-space poses
``[N, J_all, 3]`` in mm, camera frame (x right, y down, z forward), absolute (the model's
``coords3d_abs``) or any translation.

Per format (:func:`per_format_metrics`): the metrics of :func:`posekit.eval.metrics.evaluate` on
root-relative poses (each format's ``pelv`` joint, :func:`root_index`, is subtracted from both
prediction and ground truth), plus the absolute MPJPE without re-centring (``abs_mpjpe``).

Cross-format consistency (Sárándi et al., WACV 2023): formats disagree slightly on where "the same"
joint is (a ``lsho`` of h36m_17 is not the ``lsho`` of smpl_24), so predictions of different formats
should differ exactly as the ground truths do. Two measures, both in mm:

- :func:`offset_errors`: for every pair of same-named joints of two formats (:func:`same_name_pairs`),
  the Euclidean error of the predicted offset ``pred[i] - pred[j]`` against the true offset
  ``gt[i] - gt[j]``, averaged over the pairs (per pose). 0 when the formats are mutually consistent,
  whatever the overall error.
- the ACAE residual (:func:`acae_residuals`): the mean distance between the prediction and its
  reconstruction through an affine-combining autoencoder fitted to (pseudo) ground truth of all
  formats (``posekit.acae``): how far the prediction is from the learned manifold of consistent
  multi-format skeletons. Residuals of the ground truth give the measure's floor.

Pure numpy except :func:`acae_residuals` (imports TensorFlow through ``posekit.acae``).
"""
from __future__ import annotations

import itertools
from typing import Dict, Optional, Sequence

import numpy as np

from posekit import skeletons
from posekit.eval import metrics

ROOT_JOINT = 'pelv'
"""Joint subtracted for root-relative metrics (the format's tree root when it has no such joint)."""


def root_index(skeleton: str) -> int:
    """Index of the root joint of format ``skeleton`` (``ROOT_JOINT``, else its tree root)."""
    info = skeletons.get(skeleton)
    if ROOT_JOINT in info.names:
        return list(info.names).index(ROOT_JOINT)
    return list(info.parents).index(-1)


def _check_poses(name, value, n_joints=None) -> np.ndarray:
    arr = np.asarray(value, np.float64)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f'{name} must have shape [N, J, 3] (mm), got shape {arr.shape}')
    if n_joints is not None and arr.shape[1] != n_joints:
        raise ValueError(f'{name} must have the {n_joints} joints of the joint space, got shape {arr.shape}')
    return arr


def _check_pair(pred, gt, joint_space):
    if not isinstance(joint_space, skeletons.JointSpace):
        raise ValueError(f'joint_space must be a posekit.skeletons.JointSpace, got {type(joint_space).__name__}')
    pred = _check_poses('pred', pred, joint_space.n_joints)
    gt = _check_poses('gt', gt, joint_space.n_joints)
    if pred.shape != gt.shape:
        raise ValueError(f'pred and gt must have the same shape, got {pred.shape} and {gt.shape}')
    return pred, gt


def per_format_metrics(pred, gt, joint_space: skeletons.JointSpace,
                       formats: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, float]]:
    """Metrics of each format's joints.

    Args:
      pred, gt: [N, J_all, 3] joint-space poses, mm, camera frame.
      joint_space: the ``JointSpace`` of the poses.
      formats: formats to evaluate (default: all of the joint space).

    Returns:
      {format: {'mpjpe', 'pa_mpjpe', 'n_mpjpe', 'pck@100', 'auc', 'cps@200' (root-relative, see
      :func:`posekit.eval.metrics.evaluate`), 'abs_mpjpe' (mm, no re-centring)}}.
    """
    pred, gt = _check_pair(pred, gt, joint_space)
    formats = joint_space.formats if formats is None else tuple(formats)
    out = {}
    for skeleton in formats:
        if skeleton not in joint_space.slices:
            raise ValueError(f'formats must be formats of {joint_space!r}, got {skeleton!r}')
        sl = joint_space.slices[skeleton]
        p, g = pred[:, sl], gt[:, sl]
        r = root_index(skeleton)
        scores = metrics.evaluate(p - p[:, r:r + 1], g - g[:, r:r + 1])
        scores['abs_mpjpe'] = float(np.mean(metrics.mpjpe(p, g)))
        out[skeleton] = scores
    return out


def same_name_pairs(joint_space: skeletons.JointSpace) -> np.ndarray:
    """[P, 2] int64 joint-space index pairs (i, j), i < j, of same-named joints of different formats.

    Every pair of formats that both have a joint of a given base name contributes one pair (so a
    name present in four formats gives six pairs). Sorted by (i, j).
    """
    pairs = []
    for indices in joint_space.name_groups().values():
        for i, j in itertools.combinations(sorted(indices), 2):
            if joint_space.format_of(i) != joint_space.format_of(j):
                pairs.append((i, j))
    return np.array(sorted(pairs), np.int64).reshape(-1, 2)


def offset_errors(pred, gt, pairs) -> np.ndarray:
    """Per-pose mean error (mm) of the predicted offsets between paired joints.

    Args:
      pred, gt: [N, J, 3] poses, mm (same frame; translations cancel).
      pairs: [P, 2] joint index pairs (e.g. :func:`same_name_pairs`), P >= 1.

    Returns:
      [N] float64: mean over pairs (i, j) of ``|(pred_i - pred_j) - (gt_i - gt_j)|`` (mm).
    """
    pred = _check_poses('pred', pred)
    gt = _check_poses('gt', gt)
    if pred.shape != gt.shape:
        raise ValueError(f'pred and gt must have the same shape, got {pred.shape} and {gt.shape}')
    pairs = np.asarray(pairs)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or len(pairs) == 0 or pairs.dtype.kind not in 'iu':
        raise ValueError(f'pairs must be a non-empty [P, 2] integer array, got shape {pairs.shape}')
    if pairs.min() < 0 or pairs.max() >= pred.shape[1]:
        raise ValueError(f'pairs must index the {pred.shape[1]} joints, got indices in '
                         f'[{pairs.min()}, {pairs.max()}]')
    pred_offsets = pred[:, pairs[:, 0]] - pred[:, pairs[:, 1]]
    true_offsets = gt[:, pairs[:, 0]] - gt[:, pairs[:, 1]]
    return np.mean(np.linalg.norm(pred_offsets - true_offsets, axis=-1), axis=-1)


def offset_errors_by_format_pair(pred, gt, joint_space: skeletons.JointSpace) -> Dict[str, float]:
    """{'skeleton_a/skeleton_b': mean offset error (mm) over poses and that format pair's same-named joints}."""
    pred, gt = _check_pair(pred, gt, joint_space)
    pairs = same_name_pairs(joint_space)
    groups: Dict[str, list] = {}
    for i, j in pairs:
        a, b = joint_space.format_of(int(i)), joint_space.format_of(int(j))
        key = '/'.join(sorted((a, b), key=joint_space.formats.index))
        groups.setdefault(key, []).append((i, j))
    return {key: float(np.mean(offset_errors(pred, gt, np.array(p)))) for key, p in groups.items()}


def acae_residuals(pred, acae) -> np.ndarray:
    """[N] float64 mean distance (mm) between each pose and its reconstruction by ``acae``.

    Args:
      pred: [N, J, 3] joint-space poses, mm.
      acae: a fitted ``posekit.layers.AffineCombiningAutoencoder`` over the J joints.
    """
    from posekit import acae as acae_lib  # TensorFlow only when needed
    pred = _check_poses('pred', pred, acae.n_joints)
    return acae_lib.reconstruction_error(acae, pred)


def consistency_metrics(pred, gt, joint_space: skeletons.JointSpace, acae=None) -> Dict[str, object]:
    """The cross-format consistency measures of a set of predictions.

    Returns:
      dict with ``offset_error_mm`` (mean of :func:`offset_errors` over poses and same-named pairs),
      ``offset_error_by_pair`` (:func:`offset_errors_by_format_pair`) and, when ``acae`` is given,
      ``acae_residual_mm`` (mean of :func:`acae_residuals`).
    """
    pred, gt = _check_pair(pred, gt, joint_space)
    out = {'offset_error_mm': float(np.mean(offset_errors(pred, gt, same_name_pairs(joint_space)))),
           'offset_error_by_pair': offset_errors_by_format_pair(pred, gt, joint_space)}
    if acae is not None:
        out['acae_residual_mm'] = float(np.mean(acae_residuals(pred, acae)))
    return out
