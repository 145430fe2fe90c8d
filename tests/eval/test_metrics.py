"""Tests of posekit.eval.metrics against independent reference implementations written here.

The references use different formulations on purpose: Horn's closed-form quaternion method for the
rotation (instead of the SVD of the library), ``scipy.linalg.orthogonal_procrustes`` where
reflections are allowed, least squares via ``np.linalg.lstsq`` for the scale, and plain loops.
"""
import numpy as np
import pytest
from scipy.linalg import orthogonal_procrustes

from posekit import geometry
from posekit.eval import metrics

MM_TOL = 1e-6
N_POSES, N_JOINTS = 12, 17


# --- independent references -------------------------------------------------------------------

def horn_rotation(p, g):
    """Proper rotation R maximizing sum g_j . R p_j for centred p, g [J, 3] (Horn 1987, quaternions)."""
    m = p.T @ g
    sxx, sxy, sxz, syx, syy, syz, szx, szy, szz = m.ravel()
    n = np.array([
        [sxx + syy + szz, syz - szy, szx - sxz, sxy - syx],
        [syz - szy, sxx - syy - szz, sxy + syx, szx + sxz],
        [szx - sxz, sxy + syx, -sxx + syy - szz, syz + szy],
        [sxy - syx, szx + sxz, syz + szy, -sxx - syy + szz]])
    w, x, y, z = np.linalg.eigh(n)[1][:, -1]
    return np.array([
        [w * w + x * x - y * y - z * z, 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), w * w - x * x + y * y - z * z, 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), w * w - x * x - y * y + z * z]])


def reference_aligned(pred, gt, allow_reflection=False):
    """Similarity-aligned pred [J, 3] onto gt [J, 3]."""
    p = pred - pred.mean(0)
    g = gt - gt.mean(0)
    if allow_reflection:
        r_right, _ = orthogonal_procrustes(p, g)  # minimizes |p @ r_right - g|, reflections allowed
        rotated = p @ r_right
    else:
        rotated = p @ horn_rotation(p, g).T
    s = np.sum(rotated * g) / np.sum(p * p)
    return s * rotated + gt.mean(0)


def reference_mpjpe(pred, gt):
    return np.array([np.mean([np.sqrt(np.sum((a - b) ** 2)) for a, b in zip(pp, gg)]) for pp, gg in zip(pred, gt)])


def reference_pa_mpjpe(pred, gt):
    return reference_mpjpe(np.stack([reference_aligned(p, g) for p, g in zip(pred, gt)]), gt)


def reference_n_mpjpe(pred, gt):
    out = []
    for p, g in zip(pred, gt):
        pc, gc = p - p.mean(0), g - g.mean(0)
        s = np.linalg.lstsq(pc.reshape(-1, 1), gc.reshape(-1), rcond=None)[0][0]
        out.append(np.mean(np.linalg.norm(s * pc - gc, axis=-1)))
    return np.array(out)


def random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q * np.linalg.det(q)


@pytest.fixture
def poses(rng):
    """gt [N, J, 3] and a mix of predictions: noisy, scaled, rotated+translated, mirrored."""
    gt = rng.normal(size=(N_POSES, N_JOINTS, 3)) * np.array([150.0, 400.0, 120.0])
    pred = gt + rng.normal(size=gt.shape) * 40.0
    pred[0:3] *= rng.uniform(0.6, 1.5, size=(3, 1, 1))
    for i in range(3, 8):
        pred[i] = pred[i] @ random_rotation(rng).T + rng.normal(size=3) * 300
    pred[8:] *= np.array([-1.0, 1.0, 1.0])
    return pred, gt


# --- agreement with the references --------------------------------------------------------------

def test_metrics_agree_with_independent_implementations(poses):
    pred, gt = poses
    np.testing.assert_allclose(metrics.mpjpe(pred, gt), reference_mpjpe(pred, gt), atol=MM_TOL, rtol=0)
    np.testing.assert_allclose(metrics.pa_mpjpe(pred, gt), reference_pa_mpjpe(pred, gt), atol=MM_TOL, rtol=0)
    np.testing.assert_allclose(metrics.n_mpjpe(pred, gt), reference_n_mpjpe(pred, gt), atol=MM_TOL, rtol=0)


def test_procrustes_with_reflection_agrees_with_scipy(poses):
    pred, gt = poses
    expected = np.stack([reference_aligned(p, g, allow_reflection=True) for p, g in zip(pred, gt)])
    np.testing.assert_allclose(geometry.procrustes(pred, gt, allow_reflection=True), expected, atol=MM_TOL)


def test_pa_mpjpe_invariances(rng, poses):
    _, gt = poses
    copy = np.stack([2.3 * g @ random_rotation(rng).T + rng.normal(size=3) * 1000 for g in gt])
    np.testing.assert_allclose(metrics.pa_mpjpe(copy, gt), 0.0, atol=MM_TOL)
    mirrored = gt * np.array([-1.0, 1.0, 1.0])
    assert np.all(metrics.pa_mpjpe(mirrored, gt) > 10.0)  # reflections are not aligned away
    np.testing.assert_allclose(metrics.pa_mpjpe(mirrored, gt), reference_pa_mpjpe(mirrored, gt), atol=MM_TOL)


def test_n_mpjpe_scale_only(rng, poses):
    _, gt = poses
    scaled = gt * 0.7 + np.array([100.0, -50.0, 4000.0])  # translation removed by centring
    np.testing.assert_allclose(metrics.n_mpjpe(scaled, gt), 0.0, atol=MM_TOL)
    rotated = gt @ geometry.axis_rotation('Y', 0.5).T
    assert np.all(metrics.n_mpjpe(rotated, gt) > 1.0)  # no rotation alignment
    # Root-centred variant equals the usual formula on root-relative poses.
    pred = gt + rng.normal(size=gt.shape) * 30.0
    p, g = pred - pred[:, :1], gt - gt[:, :1]
    s = np.sum(p * g, axis=(1, 2)) / np.sum(p * p, axis=(1, 2))
    expected = np.linalg.norm(s[:, None, None] * p - g, axis=-1).mean(-1)
    np.testing.assert_allclose(metrics.n_mpjpe(p, g, root_index=0), expected, atol=MM_TOL)


def test_pck_auc_cps_against_loops(poses):
    pred, gt = poses
    errors = np.linalg.norm(pred - gt, axis=-1)
    for threshold in (0.0, 50.0, 100.0):
        expected = np.array([sum(e <= threshold for e in row) / len(row) for row in errors])
        np.testing.assert_allclose(metrics.pck(pred, gt, threshold), expected, rtol=0, atol=1e-15)
    thresholds = np.linspace(0.0, 150.0, 31)
    expected_auc = np.mean([metrics.pck(pred, gt, t) for t in thresholds], axis=0)
    np.testing.assert_allclose(metrics.auc(pred, gt, thresholds), expected_auc, atol=1e-12)
    np.testing.assert_allclose(metrics.auc(pred, gt), expected_auc, atol=1e-12)
    aligned = np.stack([reference_aligned(p, g) for p, g in zip(pred, gt)])
    aligned_max = np.linalg.norm(aligned - gt, axis=-1).max(-1)
    for threshold in (np.median(aligned_max), 200.0):
        np.testing.assert_array_equal(metrics.cps(pred, gt, threshold), (aligned_max <= threshold).astype(float))
    # The joint exactly at the threshold counts as correct.
    at = np.zeros((1, 2, 3))
    np.testing.assert_array_equal(metrics.pck(at + [[[0, 0, 0], [3.0, 4.0, 0]]], at, 5.0), [1.0])


def test_cps_single_outlier_fails_pose(rng, poses):
    _, gt = poses
    pred = gt.copy()
    pred[0, 5] += [0.0, 0.0, 600.0]
    result = metrics.cps(pred, gt, 200.0)
    assert result.shape == (N_POSES,) and result.dtype == np.float64
    np.testing.assert_array_equal(result, [0.0] + [1.0] * (N_POSES - 1))


def test_valid_mask(rng, poses):
    pred, gt = poses
    valid = rng.uniform(size=gt.shape[:2]) > 0.3
    valid[:, :4] = True
    valid[-1] = False
    pred_nan = np.where(valid[..., None], pred, np.nan)  # invalid joints may be NaN
    for name in ('mpjpe', 'pa_mpjpe', 'n_mpjpe'):
        got = getattr(metrics, name)(pred_nan, gt, valid=valid)
        assert np.isnan(got[-1])
        reference = {'mpjpe': reference_mpjpe, 'pa_mpjpe': reference_pa_mpjpe, 'n_mpjpe': reference_n_mpjpe}[name]
        expected = [reference(pred[i:i + 1, valid[i]], gt[i:i + 1, valid[i]])[0] for i in range(N_POSES - 1)]
        np.testing.assert_allclose(got[:-1], expected, atol=MM_TOL, rtol=0)
    errors = np.linalg.norm(pred - gt, axis=-1)
    expected_pck = [np.mean(errors[i, valid[i]] <= 100.0) for i in range(N_POSES - 1)]
    np.testing.assert_allclose(metrics.pck(pred_nan, gt, 100.0, valid=valid)[:-1], expected_pck)
    assert np.isnan(metrics.cps(pred_nan, gt, 200.0, valid=valid)[-1])
    assert np.isnan(metrics.auc(pred_nan, gt, valid=valid)[-1])


def test_accepts_tf_tensors(poses):
    tf = pytest.importorskip('tensorflow')
    pred, gt = poses
    got = metrics.pa_mpjpe(tf.constant(pred, tf.float32), tf.constant(gt, tf.float32))
    assert isinstance(got, np.ndarray) and got.dtype == np.float64
    np.testing.assert_allclose(got, reference_pa_mpjpe(pred.astype(np.float32), gt.astype(np.float32)), atol=1e-3)


def test_evaluate_names_and_means(rng, poses):
    pred, gt = poses
    valid = np.ones(gt.shape[:2], bool)
    valid[0] = False  # a pose without valid joints is skipped in the means
    result = metrics.evaluate(pred, gt, valid=valid)
    assert list(result) == ['mpjpe', 'pa_mpjpe', 'n_mpjpe', 'pck@100', 'auc', 'cps@200']
    assert result['mpjpe'] == pytest.approx(reference_mpjpe(pred[1:], gt[1:]).mean(), abs=MM_TOL)
    assert result['pa_mpjpe'] == pytest.approx(reference_pa_mpjpe(pred[1:], gt[1:]).mean(), abs=MM_TOL)
    assert result['n_mpjpe'] == pytest.approx(reference_n_mpjpe(pred[1:], gt[1:]).mean(), abs=MM_TOL)
    assert result['pck@100'] == pytest.approx(metrics.pck(pred[1:], gt[1:], 100.0).mean())
    assert result['auc'] == pytest.approx(metrics.auc(pred[1:], gt[1:]).mean())
    assert result['cps@200'] == pytest.approx(metrics.cps(pred[1:], gt[1:], 200.0).mean())
    assert all(isinstance(v, float) for v in result.values())
    custom = metrics.evaluate(pred, gt, pck_threshold=150, cps_threshold=37.5, auc_thresholds=[0, 50, 100])
    assert {'pck@150', 'cps@37.5'} <= set(custom)
    assert custom['auc'] == pytest.approx(metrics.auc(pred, gt, [0, 50, 100]).mean())


def test_bad_inputs_raise(poses):
    pred, gt = poses
    with pytest.raises(ValueError, match=r'pred must have shape \[N, J, 3\], got shape \(17, 3\)'):
        metrics.mpjpe(pred[0], gt[0])
    with pytest.raises(ValueError, match='pred and gt must have the same shape'):
        metrics.pa_mpjpe(pred[:, :5], gt)
    bad = gt.copy()
    bad[2, 3, 1] = np.nan
    with pytest.raises(ValueError, match='gt must be finite at valid joints.*pose 2, joint 3'):
        metrics.n_mpjpe(pred, bad)
    with pytest.raises(ValueError, match=r'valid must have shape \(12, 17\)'):
        metrics.pck(pred, gt, 100.0, valid=np.ones((12, 16), bool))
    with pytest.raises(ValueError, match='valid must be boolean'):
        metrics.mpjpe(pred, gt, valid=np.full((12, 17), 0.5))
    with pytest.raises(ValueError, match='threshold must be a finite scalar >= 0'):
        metrics.cps(pred, gt, -1.0)
    with pytest.raises(ValueError, match='thresholds must be a non-empty 1-D sequence'):
        metrics.auc(pred, gt, [])
    with pytest.raises(ValueError, match='pck_threshold must be a finite scalar'):
        metrics.evaluate(pred, gt, pck_threshold=np.inf)
