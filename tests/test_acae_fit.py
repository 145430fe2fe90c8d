"""Tests of posekit.acae: fitting, evaluation figures, save and load of the ACAE."""
import numpy as np
import pytest
import tensorflow as tf

from posekit import skeletons
from posekit.acae import (MM_PER_M, SPARSITY_THRESHOLD, _projected_error_m, fit_acae, load_acae,
                          reconstruction_error, save_acae, weight_stats)
from posekit.layers import AffineCombiningAutoencoder

H36M = skeletons.get('h36m_17')
NOISE_MM = 3.0
CAMERA_DISTANCE_MM = 4000.0
SMALL_FIT = dict(n_latents=20, steps=1500, batch_size=64, learning_rate=3e-2, log_every=500)


class _TwoFormats:
    """Joint space of two formats on the h36m_17 body: names 'lsho_a', ..., 'lsho_b', ..."""

    def __init__(self):
        self.names = [f'{n}_{f}' for f in 'ab' for n in H36M.names]
        self.mirror = H36M.mirror + [m + 17 for m in H36M.mirror]


TWO = _TwoFormats()


def _two_format_poses(seed, n):
    """[n, 34, 3] mm: format a random around a template; format b joints are mixtures of a joint
    and its parent (plus NOISE_MM noise), like two datasets' different joint placements."""
    rng = np.random.default_rng(seed)
    template = np.random.default_rng(123).normal(size=(17, 3)) * 300
    a = template + rng.normal(size=(n, 17, 3)) * 80
    angle = rng.uniform(-np.pi, np.pi, size=n)
    c, s = np.cos(angle), np.sin(angle)
    rot = np.zeros((n, 3, 3))
    rot[:, 0, 0], rot[:, 0, 2], rot[:, 1, 1], rot[:, 2, 0], rot[:, 2, 2] = c, s, 1, -s, c
    a = np.einsum('nij,nkj->nki', rot, a)
    parents = [p if p >= 0 else i for i, p in enumerate(H36M.parents)]
    b = 0.6 * a + 0.4 * a[:, parents] + rng.normal(size=a.shape) * NOISE_MM
    return np.concatenate([a, b], axis=1).astype(np.float32)


@pytest.fixture(scope='module')
def data():
    return _two_format_poses(0, 3000), _two_format_poses(1, 500)


@pytest.fixture(scope='module')
def base_fit(data):
    train, _ = data
    return fit_acae(train, TWO, l1=0.3, seed=0, **SMALL_FIT)


# ---------------------------------------------------------------------------------------- fitting
def test_fit_reconstructs_held_out_poses(data, base_fit):
    train, test = data
    layer, history = base_fit
    assert isinstance(layer, AffineCombiningAutoencoder) and layer.n_latents == 20
    assert list(history['step']) == [500, 1000, 1500]
    assert history['loss_mm'][-1] < 0.5 * history['loss_mm'][0]
    assert list(history['learning_rate']) == [3e-2, 3e-2, 3e-3]  # decays at 900 and 1275
    err = reconstruction_error(layer, test)
    assert err.shape == (500,)
    # Spread of the joints around the pose centre, for scale: the fit is far better than that.
    spread = np.mean(np.linalg.norm(test - test.mean(axis=1, keepdims=True), axis=-1))
    assert np.mean(err) < 0.05 * spread
    assert np.mean(err) == pytest.approx(history['loss_mm'][-1], rel=0.5)
    for w in (layer.encoder_weights(), layer.decoder_weights()):
        assert np.max(np.abs(w.sum(axis=0) - 1)) < 1e-6


def test_fit_is_deterministic_by_seed(data, base_fit):
    train, _ = data
    layer, history = base_fit
    again, history_again = fit_acae(train, TWO, l1=0.3, seed=0, **SMALL_FIT)
    np.testing.assert_array_equal(again.encoder_weights(), layer.encoder_weights())
    np.testing.assert_array_equal(again.decoder_weights(), layer.decoder_weights())
    np.testing.assert_array_equal(history_again['loss_mm'], history['loss_mm'])
    other, _ = fit_acae(train, TWO, l1=0.3, seed=1, **dict(SMALL_FIT, steps=200))
    assert np.max(np.abs(other.encoder_weights() - layer.encoder_weights())) > 1e-3


def test_raising_l1_lowers_negative_mass_and_raises_sparsity(data, base_fit):
    train, _ = data
    stats = {0.0: weight_stats(fit_acae(train, TWO, l1=0.0, seed=0, **SMALL_FIT)[0]),
             0.3: weight_stats(base_fit[0]),
             3.0: weight_stats(fit_acae(train, TWO, l1=3.0, seed=0, **SMALL_FIT)[0])}
    neg = [stats[k]['negative_mass'] for k in sorted(stats)]
    sparsity = [stats[k]['sparsity'] for k in sorted(stats)]
    support = [stats[k]['effective_support'] for k in sorted(stats)]
    assert neg[0] > neg[1] > neg[2]
    assert sparsity[0] < sparsity[1] < sparsity[2]
    assert support[0] > support[2]


def test_weight_stats_formulas():
    layer = AffineCombiningAutoencoder(2, chiral=False, n_joints=3)
    enc = np.array([[1.5, 0.0], [-0.5, 0.5], [0.0, 0.5]])
    dec = np.array([[1.0, 0.5, 0.0], [0.0, 0.5, 1.0]])
    layer.set_normalized_weights(enc, dec)
    stats = weight_stats(layer)
    assert stats['encoder_negative_mass'] == pytest.approx(0.25)  # (0.5 + 0) / 2 columns
    assert stats['decoder_negative_mass'] == pytest.approx(0.0)
    assert stats['negative_mass'] == pytest.approx(0.5 / 5)
    assert stats['sparsity'] == pytest.approx(4 / 12)  # zeros below SPARSITY_THRESHOLD
    assert SPARSITY_THRESHOLD < 0.5
    # (sum|w|)^2 / sum w^2 per column: encoder 4/2.5, 1/0.5; decoder 1, 1/0.5, 1.
    expected = np.mean([4 / 2.5, 1 / 0.5, 1, 1 / 0.5, 1])
    assert stats['effective_support'] == pytest.approx(expected)


def test_fit_with_valid_mask_ignores_missing_joints(data):
    train, test = data
    rng = np.random.default_rng(5)
    valid = rng.random(train.shape[:2]) > 0.1
    corrupted = train.copy()
    corrupted[~valid] = np.nan  # missing joints must not leak into the fit
    layer, history = fit_acae(corrupted, TWO, l1=0.3, seed=0, valid=valid, **SMALL_FIT)
    assert np.all(np.isfinite(history['loss_mm']))
    spread = np.mean(np.linalg.norm(test - test.mean(axis=1, keepdims=True), axis=-1))
    assert np.mean(reconstruction_error(layer, test)) < 0.1 * spread
    test_valid = np.random.default_rng(6).random(test.shape[:2]) > 0.1
    masked = reconstruction_error(layer, np.where(test_valid[..., None], test, np.nan))
    assert np.all(np.isfinite(masked))


def test_projected_fit(data):
    train, test = data
    offset = np.float32([0, 0, CAMERA_DISTANCE_MM])
    k = np.float32([[1500, 0, 500], [0, 1400, 480], [0, 0, 1]])
    layer, history = fit_acae(train + offset, TWO, l1=0.3, projected=True, intrinsics=k, seed=0,
                              **SMALL_FIT)
    assert history['loss_mm'][-1] < 0.5 * history['loss_mm'][0]
    spread = np.mean(np.linalg.norm(test - test.mean(axis=1, keepdims=True), axis=-1))
    # Equivariance makes the 3D fit follow from the image-plane fit.
    assert np.mean(reconstruction_error(layer, test + offset)) < 0.1 * spread


def test_projected_error_formula():
    gt = np.zeros((1, 2, 3), np.float32)
    gt[0, :, 2] = [2.0, 4.0]  # m; mean depth 3 m
    pred = gt.copy()
    pred[0, 0, 0] = 0.1      # 0.1 m sideways at 2 m depth -> 0.05 in normalised coordinates
    focal = tf.constant([[1000.0, 1200.0]])
    err = _projected_error_m(tf.constant(gt), tf.constant(pred), focal, tf.ones((1, 2))).numpy()
    np.testing.assert_allclose(err[0], [0.05 * 3.0, 0.0], atol=1e-5)
    err_no_k = _projected_error_m(tf.constant(gt), tf.constant(pred), tf.ones((1, 2)),
                                  tf.ones((1, 2))).numpy()
    np.testing.assert_allclose(err_no_k, err, atol=1e-6)  # focal lengths cancel


def test_fit_argument_errors(data):
    train, _ = data
    with pytest.raises(ValueError, match=r'poses must have shape \[N, 34, 3\]'):
        fit_acae(train[:, :17], TWO)
    with pytest.raises(ValueError, match='steps must be a positive int; got 0'):
        fit_acae(train, TWO, steps=0)
    with pytest.raises(ValueError, match=r'valid must have shape \(3000, 34\)'):
        fit_acae(train, TWO, valid=np.ones((3000, 17), bool))
    with pytest.raises(ValueError, match='intrinsics are only used with projected=True'):
        fit_acae(train, TWO, intrinsics=np.eye(3))
    with pytest.raises(ValueError, match='projected=True needs camera-frame poses'):
        fit_acae(train, TWO, projected=True)
    with pytest.raises(ValueError, match=r'intrinsics must have shape \[3, 3\]'):
        fit_acae(train + [0, 0, CAMERA_DISTANCE_MM], TWO, projected=True, intrinsics=np.eye(2))
    with pytest.raises(ValueError, match='learning_rate_decay_steps must be increasing'):
        fit_acae(train, TWO, learning_rate_decay_steps=[500, 100])
    valid = np.ones(train.shape[:2], bool)
    valid[:, 3] = False
    with pytest.raises(ValueError, match=r"joints \['rank_a'\] are never valid"):
        fit_acae(train, TWO, valid=valid)


# ------------------------------------------------------------------------------------ save / load
def test_save_load_round_trip(tmp_path, base_fit, data):
    layer, _ = base_fit
    path = tmp_path / 'acae.npz'
    save_acae(path, layer, TWO.names)
    loaded = load_acae(path, expected_joint_names=TWO.names)
    assert loaded.get_config() == layer.get_config() | {'name': loaded.name, 'seed': None}
    np.testing.assert_allclose(loaded.encoder_weights(), layer.encoder_weights(), atol=1e-7)
    np.testing.assert_allclose(loaded.decoder_weights(), layer.decoder_weights(), atol=1e-7)
    x = data[1][:8]
    np.testing.assert_allclose(loaded(x).numpy(), layer(x).numpy(), atol=1e-3)
    with np.load(path) as f:
        assert list(f['joint_names']) == TWO.names
        assert int(f['n_latents']) == 20 and bool(f['chiral'])
        assert float(f['l1']) == pytest.approx(0.3)


def test_save_load_non_chiral_layer_without_names(tmp_path):
    layer = AffineCombiningAutoencoder(4, chiral=False, n_joints=6, seed=0)
    save_acae(tmp_path / 'a.npz', layer, [f'j{i}' for i in range(6)])
    loaded = load_acae(tmp_path / 'a.npz')
    assert not loaded.chiral and loaded.n_joints == 6
    np.testing.assert_allclose(loaded.encoder_weights(), layer.encoder_weights(), atol=1e-7)


def test_load_with_different_joint_names_names_the_differences(tmp_path, base_fit):
    layer, _ = base_fit
    path = tmp_path / 'acae.npz'
    save_acae(path, layer, TWO.names)
    other = TWO.names[:-1] + ['extra_b']
    with pytest.raises(ValueError, match=r"missing \['extra_b'\].*unexpected \['rwri_b'\]"):
        load_acae(path, expected_joint_names=other)
    swapped = TWO.names[:]
    swapped[1], swapped[2] = swapped[2], swapped[1]
    with pytest.raises(ValueError, match="different order; first difference at index 1"):
        load_acae(path, expected_joint_names=swapped)
    with pytest.raises(ValueError, match='joint_names differ from the layer'):
        save_acae(path, layer, swapped)
    with pytest.raises(ValueError, match='joint_names must have 34 names'):
        save_acae(path, layer, TWO.names[:5])


def test_load_corrupt_or_foreign_files_raise_naming_the_file(tmp_path):
    corrupt = tmp_path / 'corrupt.npz'
    corrupt.write_bytes(b'PK\x03\x04 this is not really a zip archive')
    with pytest.raises(ValueError, match='corrupt.npz.*not a readable posekit ACAE file'):
        load_acae(corrupt)
    text = tmp_path / 'text.npz'
    text.write_text('hello')
    with pytest.raises(ValueError, match='text.npz.*not a readable posekit ACAE file'):
        load_acae(text)
    foreign = tmp_path / 'foreign.npz'
    np.savez(foreign, w1=np.eye(3), w2=np.eye(3))
    with pytest.raises(ValueError, match=r"foreign.npz.*missing entries \['format'"):
        load_acae(foreign)
    with pytest.raises(FileNotFoundError, match='absent.npz'):
        load_acae(tmp_path / 'absent.npz')


def test_load_inconsistent_file_raises(tmp_path):
    layer = AffineCombiningAutoencoder(8, H36M, seed=0)
    path = tmp_path / 'bad.npz'
    save_acae(path, layer, H36M.names)
    with np.load(path) as f:
        entries = dict(f)
    entries['encoder_weights'] = entries['encoder_weights'][:, :5]
    np.savez(path, **entries)
    with pytest.raises(ValueError, match=r'bad.npz.*inconsistent ACAE.*encoder_weights'):
        load_acae(path)
    assert MM_PER_M == 1000.0
