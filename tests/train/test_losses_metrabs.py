"""Tests of posekit.train.losses_metrabs on hand-computed examples (losses in metres)."""
import numpy as np
import pytest
import tensorflow as tf

from posekit import skeletons
from posekit.train import losses_metrabs as L

CROP = 64
BOX_M = 2.2
F_PX = 100.0


def _k(batch=1):
    """Crop camera: focal 100 px, principal point at the crop centre (31.5, 31.5)."""
    return tf.constant([[[F_PX, 0, 31.5], [0, F_PX, 31.5], [0, 0, 1]]] * batch)


def test_mean_relative_loss_hand_computed():
    true = tf.constant([[[0.0, 0, 0], [1000, 0, 0], [7, 7, 7]]])
    # Prediction: same first joint, second joint 600 mm lower, translated by (5 m, 0, 3 m);
    # the third joint is unlabelled garbage.
    pred = tf.constant([[[0.0, 0, 0], [1000, 600, 0], [1e6, -1e6, 1e6]]]) + [5000.0, 0, 3000]
    valid = tf.constant([[True, True, False]])
    # Mean-relative: true +-500 in x; pred +-500 in x, +-300 in y -> |diff| 300 in y for both joints.
    assert float(L.mean_relative_loss(pred, true, valid)) == pytest.approx(2 * 300 / 6 / 1000)


def test_absolute_loss_hand_computed_with_far_depth_scaling():
    true = tf.constant([[[0.0, 0, 20000], [0, 0, 5000], [0, 0, 200]]])
    pred = tf.constant([[[30.0, -60, 21000], [0, 0, 5300], [900, 900, 900]]])
    # Joint 0 at 20 m: depth error 1000 mm scaled by 10 m / 20 m -> 500; joint 1: 300;
    # joint 2 is closer than MIN_TRUE_DEPTH_MM and left out.
    expected = (30 + 60 + 500 + 0 + 0 + 300) / 6 / 1000
    assert float(L.absolute_loss(pred, true)) == pytest.approx(expected)
    assert float(L.absolute_loss(pred, true, tf.constant([[False, True, True]]))) == pytest.approx(0.1)


def test_projection_loss_hand_computed():
    true = tf.constant([[[0.0, 0, 5000], [0, 0, 5000], [0, 0, 100]]])
    # Joint 0 projects 2 px right and 1 px up of the truth; joint 1's prediction falls outside the crop
    # (excluded); joint 2 has true depth 10 cm (excluded).
    pred = tf.constant([[[100.0, -50, 5000], [5000, 0, 5000], [10, 10, 100]]])
    expected = (2 + 1) / 2 / CROP * BOX_M
    assert float(L.projection_loss(pred, true, _k(), CROP)) == pytest.approx(expected, rel=1e-5)


def test_weak_2d_loss_compares_with_format_average():
    # Projections of the predictions: (30, 30), (34, 30), (20, 40) px (depth 5 m, f = 100 px).
    proj = np.array([[30.0, 30], [34, 30], [20, 40]])
    pred = np.concatenate([(proj - 31.5) * 5000 / F_PX, np.full((3, 1), 5000.0)], axis=1)[None]
    averaging = np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]], np.float32)  # label k vs mean of its joints
    true2d = tf.constant([[[33.0, 30], [20, 42]]])
    expected = (1 + 0 + 0 + 2) / 4 / CROP * BOX_M
    got = L.weak_2d_loss(tf.constant(pred, tf.float32), true2d, _k(), CROP, averaging)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    only_second = L.weak_2d_loss(tf.constant(pred, tf.float32), true2d, _k(), CROP, averaging,
                                 tf.constant([[False, True]]))
    assert float(only_second) == pytest.approx(2 / 2 / CROP * BOX_M, rel=1e-5)


def test_per_joint_averaging_matrix():
    space = skeletons.JointSpace(('h36m_17', 'smpl_24'))
    matrix = L.per_joint_averaging_matrix(space)
    assert matrix.shape == (41, 41)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0)
    lsho_h36m, lsho_smpl = space.names.index('lsho_h36m_17'), space.names.index('lsho_smpl_24')
    assert matrix[lsho_h36m, lsho_h36m] == matrix[lsho_h36m, lsho_smpl] == 0.5
    htop = space.names.index('htop_h36m_17')  # only in h36m: averages itself
    assert matrix[htop, htop] == 1.0


def test_abs_loss_factor_schedule():
    factors = [float(L.abs_loss_factor(s)) for s in (0, 4999, 5000, 5001, 10 ** 6)]
    np.testing.assert_allclose(factors, [0, 0, 0, 0.1, 0.1], rtol=1e-7)
    assert float(L.abs_loss_factor(tf.constant(7000, tf.int64), lambda_abs=0.5)) == 0.5


def _mixed_batch(rng, n3d=3, n2d=2, n_joints=5):
    batch = n3d + n2d
    rel = rng.normal(0, 250, (batch, n_joints, 3))
    true = rel + np.array([0.0, 0, 4000])
    coords2d = np.einsum('bjk,bik->bji', true / true[..., 2:], _k(batch).numpy())[..., :2]
    valid = rng.uniform(size=(batch, n_joints)) > 0.2
    pred = true + rng.normal(0, 60, true.shape) + np.array([40.0, -30, 300])
    return dict(intrinsics=_k(batch), coords3d=tf.constant(true, tf.float32),
                coords2d=tf.constant(coords2d, tf.float32), joint_valid=tf.constant(valid),
                is_3d=tf.constant([True] * n3d + [False] * n2d),
                image=tf.zeros([batch, CROP, CROP, 3], tf.uint8)), dict(coords3d_abs=tf.constant(pred, tf.float32))


def test_metrabs_loss_combines_parts_and_abs_is_off_before_5000(rng):
    batch, predictions = _mixed_batch(rng)
    valid = batch['joint_valid'].numpy()
    valid3d, valid2d = valid.copy(), valid.copy()
    valid3d[3:] = False
    valid2d[:3] = False
    pred, true = predictions['coords3d_abs'], batch['coords3d']
    meanrel = L.mean_relative_loss(pred, true, valid3d)
    proj = L.projection_loss(pred, true, batch['intrinsics'], CROP, valid3d)
    absl = L.absolute_loss(pred, true, valid3d)
    weak = L.weak_2d_loss(pred, batch['coords2d'], batch['intrinsics'], CROP, np.eye(5), valid2d)
    # The parts, recomputed in numpy from their documented formulas (metres; every true depth < 10 m).
    p, t = pred.numpy().astype(np.float64), true.numpy().astype(np.float64)

    def centred(x, v):
        return x - (x * v[..., None]).sum(1, keepdims=True) / np.maximum(v.sum(1), 1)[:, None, None]

    rel = np.abs(centred(t, valid3d) - centred(p, valid3d)) / 1000.0
    assert float(meanrel) == pytest.approx(rel[valid3d].mean(), rel=1e-5)
    assert float(absl) == pytest.approx((np.abs(t - p) / 1000.0)[valid3d].mean(), rel=1e-5)
    k = batch['intrinsics'].numpy().astype(np.float64)
    def project(x):
        h = np.einsum('bij,bkj->bki', k, x)
        return h[..., :2] / h[..., 2:]
    inside = (project(p) >= 0).all(-1) & (project(p) <= CROP - 1).all(-1)  # predictions inside the crop count
    scale = 2.2 / CROP  # BOX_SIZE_MM in metres per crop pixel
    expected_proj = (np.abs(project(p) - project(t)) * scale)[valid3d & inside].mean()
    assert float(proj) == pytest.approx(expected_proj, rel=1e-5)
    assert float(weak) > 0 and np.isfinite(float(weak))  # hand-computed in test_weak_2d_loss_compares_with_format_average
    for step, factor in ((0, 0.0), (5000, 0.0), (5001, 0.1)):
        loss, parts = L.metrabs_loss(predictions, batch, step)
        assert float(parts['abs_factor']) == pytest.approx(factor)
        assert float(parts['abs3d']) == pytest.approx(float(absl))
        expected = float(meanrel) + float(proj) + factor * float(absl) + 0.2 * float(weak)
        assert float(loss) == pytest.approx(expected, rel=1e-6)
    # A perfect prediction has zero loss.
    loss, _ = L.metrabs_loss(dict(coords3d_abs=true), batch, 6000)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)


def test_metrabs_loss_is_finite_for_bf16_and_empty_masks_and_xla(rng):
    batch, predictions = _mixed_batch(rng)
    bf16 = {'coords3d_abs': tf.cast(predictions['coords3d_abs'], tf.bfloat16)}
    loss, parts = L.metrabs_loss(bf16, batch, 6000)
    assert loss.dtype == tf.float32 and np.isfinite(float(loss))
    assert all(np.isfinite(float(v)) for v in parts.values())
    empty = dict(batch, joint_valid=tf.zeros_like(batch['joint_valid']))
    loss, parts = L.metrabs_loss(predictions, empty, 6000)
    assert float(loss) == 0.0
    compiled = tf.function(lambda p, b, s: L.metrabs_loss(p, b, s)[0], jit_compile=True)
    for step in (10, 6000):
        np.testing.assert_allclose(float(compiled(predictions, batch, tf.constant(step))),
                                   float(L.metrabs_loss(predictions, batch, step)[0]), rtol=1e-5)


def test_metrabs_loss_gradient_is_finite_and_output_key(rng):
    batch, predictions = _mixed_batch(rng)
    pred = tf.Variable(predictions['coords3d_abs'])
    with tf.GradientTape() as tape:
        loss, _ = L.metrabs_loss(dict(direct_coords3d_abs=pred), batch, 6000, output_key='direct_coords3d_abs')
    grad = tape.gradient(loss, pred).numpy()
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)
    # Unlabelled joints get no gradient.
    assert np.all(grad[~batch['joint_valid'].numpy()] == 0)


def test_metrabs_loss_needs_crop_size(rng):
    batch, predictions = _mixed_batch(rng)
    del batch['image']
    with pytest.raises(ValueError, match='crop_size_px must be given'):
        L.metrabs_loss(predictions, batch, 0)
    loss, _ = L.metrabs_loss(predictions, batch, 0, crop_size_px=CROP)
    assert np.isfinite(float(loss))
