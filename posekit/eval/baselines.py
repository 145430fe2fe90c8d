"""Baselines every experiment compares with: the mean pose (and its predictions).

A model that has learnt nothing from the input can still predict the average training pose; every accuracy
claim in posekit is made against it.
"""
from __future__ import annotations

from typing import Optional

import numpy as np


def mean_pose(poses, valid: Optional[np.ndarray] = None) -> np.ndarray:
    """The mean of training poses: [N, J, C] (mm) -> [J, C] float64.

    Args:
      poses: [N, J, C] poses (any frame; root-relative metrics subtract each format's root from the mean too,
        which equals the mean of the root-relative poses because that map is linear).
      valid: optional [N] bool: the poses to average.

    Raises:
      ValueError: no pose to average, or shapes that do not match.
    """
    poses = np.asarray(poses, np.float64)
    if poses.ndim != 3:
        raise ValueError(f'poses must have shape [N, J, C], got {poses.shape}')
    if valid is not None:
        valid = np.asarray(valid, bool)
        if valid.shape != poses.shape[:1]:
            raise ValueError(f'valid must have shape {poses.shape[:1]}, got {valid.shape}')
        poses = poses[valid]
    if len(poses) == 0:
        raise ValueError('mean_pose needs at least one pose')
    return poses.mean(axis=0)


def mean_pose_predictions(train_poses, n: int) -> np.ndarray:
    """[n, J, C]: the mean training pose predicted for every one of ``n`` evaluation examples."""
    mean = mean_pose(train_poses)
    return np.broadcast_to(mean, (int(n),) + mean.shape)
