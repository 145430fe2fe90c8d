"""Tests of posekit.eval.consistency: per-format metrics and cross-format consistency measures."""
import itertools

import numpy as np
import pytest

from posekit import skeletons
from posekit.eval import consistency, metrics

FORMATS = ('h36m_17', 'smpl_24', 'coco_19', 'mpi_inf_3dhp_17')


@pytest.fixture
def space():
    return skeletons.JointSpace(FORMATS)


def _poses(space, rng, n=5):
    poses = rng.normal(0.0, 300.0, (n, space.n_joints, 3))
    poses[..., 2] += 4000.0
    return poses


def test_root_index_is_the_pelvis_or_the_tree_root():
    for skeleton in FORMATS:
        assert skeletons.get(skeleton).names[consistency.root_index(skeleton)] == 'pelv'
    info = skeletons.get('cmu_31')
    expected = info.names.index('pelv') if 'pelv' in info.names else list(info.parents).index(-1)
    assert consistency.root_index('cmu_31') == expected


def test_same_name_pairs_cover_every_cross_format_pair(space):
    pairs = consistency.same_name_pairs(space)
    groups = space.name_groups()
    expected = sum(len(v) * (len(v) - 1) // 2 for v in groups.values())  # formats never repeat a name
    assert pairs.shape == (expected, 2)
    for i, j in pairs:
        assert i < j and space.base_name(i) == space.base_name(j)
        assert space.format_of(i) != space.format_of(j)
    # e.g. 'lsho' exists in all four formats: six pairs.
    lsho = [p for p in pairs if space.base_name(p[0]) == 'lsho']
    assert len(lsho) == 6


def test_offset_errors_ignore_translation_and_measure_pair_disagreement(space, rng):
    gt = _poses(space, rng)
    pairs = consistency.same_name_pairs(space)
    np.testing.assert_allclose(consistency.offset_errors(gt + [10.0, -20.0, 300.0], gt, pairs), 0.0, atol=1e-9)
    # Moving one joint by d changes each offset it takes part in by |d|.
    pred = gt.copy()
    j = space.names.index('lsho_h36m_17')
    pred[:, j] += [30.0, 40.0, 0.0]  # 50 mm
    n_pairs_with_j = np.sum(np.any(pairs == j, axis=1))
    np.testing.assert_allclose(consistency.offset_errors(pred, gt, pairs), 50.0 * n_pairs_with_j / len(pairs))
    by_pair = consistency.offset_errors_by_format_pair(pred, gt, space)
    assert set(by_pair) == {f'{a}/{b}' for a, b in itertools.combinations(FORMATS, 2)}
    assert by_pair['smpl_24/coco_19'] == pytest.approx(0.0, abs=1e-9)
    assert by_pair['h36m_17/smpl_24'] > 0


def test_per_format_metrics_are_root_relative_except_abs_mpjpe(space, rng):
    gt = _poses(space, rng)
    pred = gt + rng.normal(0.0, 20.0, gt.shape)
    shifted = pred + [100.0, 0.0, 500.0]
    a = consistency.per_format_metrics(pred, gt, space)
    b = consistency.per_format_metrics(shifted, gt, space)
    assert set(a) == set(FORMATS)
    for skeleton in FORMATS:
        assert set(a[skeleton]) == {'mpjpe', 'pa_mpjpe', 'n_mpjpe', 'pck@100', 'auc', 'cps@200', 'abs_mpjpe'}
        assert a[skeleton]['mpjpe'] == pytest.approx(b[skeleton]['mpjpe'])
        assert b[skeleton]['abs_mpjpe'] > a[skeleton]['abs_mpjpe'] + 400.0
        sl, r = space.slices[skeleton], consistency.root_index(skeleton)
        p, g = pred[:, sl], gt[:, sl]
        expected = np.mean(metrics.mpjpe(p - p[:, r:r + 1], g - g[:, r:r + 1]))
        assert a[skeleton]['mpjpe'] == pytest.approx(expected)
    only = consistency.per_format_metrics(pred, gt, space, formats=['coco_19'])
    assert list(only) == ['coco_19']


def test_consistency_metrics_without_acae(space, rng):
    gt = _poses(space, rng)
    out = consistency.consistency_metrics(gt, gt, space)
    assert out['offset_error_mm'] == pytest.approx(0.0, abs=1e-9)
    assert 'acae_residual_mm' not in out
    assert len(out['offset_error_by_pair']) == 6


def test_bad_arguments(space, rng):
    gt = _poses(space, rng)
    with pytest.raises(ValueError, match='pred must have the 77 joints'):
        consistency.per_format_metrics(gt[:, :10], gt, space)
    with pytest.raises(ValueError, match='joint_space must be a posekit.skeletons.JointSpace'):
        consistency.per_format_metrics(gt, gt, FORMATS)
    with pytest.raises(ValueError, match="formats must be formats of .*'cmu_31'"):
        consistency.per_format_metrics(gt, gt, space, formats=['cmu_31'])
    with pytest.raises(ValueError, match=r'pairs must be a non-empty \[P, 2\] integer array'):
        consistency.offset_errors(gt, gt, np.zeros((0, 2), int))
    with pytest.raises(ValueError, match=r'pairs must index the 77 joints, got indices in \[0, 80\]'):
        consistency.offset_errors(gt, gt, np.array([[0, 80]]))
    with pytest.raises(ValueError, match=r'gt must have shape \[N, J, 3\]'):
        consistency.offset_errors(gt, gt[..., :2], np.array([[0, 1]]))
