import numpy as np
import pytest

from posekit.eval import baselines, metrics


def test_mean_pose_is_the_mpjpe_minimiser_of_a_constant_prediction(rng):
    poses = rng.normal(0, 100, (200, 17, 3))
    mean = baselines.mean_pose(poses)
    np.testing.assert_allclose(mean, poses.mean(axis=0))
    best = metrics.mpjpe(np.broadcast_to(mean, poses.shape), poses).mean()
    for delta in (5.0, -5.0):  # moving the constant prediction raises the squared error (and here the MPJPE)
        moved = np.broadcast_to(mean + delta, poses.shape)
        assert ((moved - poses) ** 2).sum() > ((mean - poses) ** 2).sum()
    assert best > 0
    valid = np.arange(200) < 50
    np.testing.assert_allclose(baselines.mean_pose(poses, valid), poses[:50].mean(axis=0))
    pred = baselines.mean_pose_predictions(poses, 7)
    assert pred.shape == (7, 17, 3) and np.all(pred == mean)


def test_mean_pose_errors():
    with pytest.raises(ValueError, match=r'poses must have shape \[N, J, C\], got \(17, 3\)'):
        baselines.mean_pose(np.zeros((17, 3)))
    with pytest.raises(ValueError, match='needs at least one pose'):
        baselines.mean_pose(np.zeros((3, 17, 3)), np.zeros(3, bool))
