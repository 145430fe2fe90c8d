"""Tests of posekit.layers.AffineCombiningAutoencoder (Sárándi et al., WACV 2023)."""
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from posekit import skeletons
from posekit.layers import AffineCombiningAutoencoder
from posekit.layers.acae import default_centre_latents

H36M = skeletons.get('h36m_17')
POSE_SCALE_MM = 500.0
# float32 tolerance relative to the pose size (a few ulps of the coordinates' magnitude).
REL_TOL = 2e-6


class _AllJoints:
    """A multi-format joint space like the lead's: names such as 'lsho_h36m', mirror from names."""

    def __init__(self, formats=('h36m_17', 'smpl_24', 'coco_19')):
        self.names = [f'{n}_{skeleton.split("_")[0]}' for skeleton in formats
                      for n in skeletons.get(skeleton).names]
        index = {n: i for i, n in enumerate(self.names)}
        self.mirror = [index.get({'l': 'r', 'r': 'l'}.get(n[0], '') + n[1:], i)
                       for i, n in enumerate(self.names)]


ALL = _AllJoints()


def _poses(rng, n_joints, batch=4, channels=3):
    return (rng.normal(size=(batch, n_joints, channels)) * POSE_SCALE_MM).astype(np.float32)


def _mirror(x, mirror):
    """Negates the x coordinate and swaps left/right joints (axis -2)."""
    flip = np.ones(x.shape[-1], np.float32)
    flip[0] = -1
    return x[..., mirror, :] * flip


def _random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q.astype(np.float32)


def _train(layer, x, steps=30, learning_rate=0.5):
    """A few Adam steps with a large learning rate on the reconstruction + L1 loss."""
    layer(x)  # builds the variables
    opt = keras.optimizers.Adam(learning_rate)
    opt.build(layer.trainable_variables)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.abs(layer(x) - x)) / 1000 + layer.regularization_loss()
        grads = tape.gradient(loss, layer.trainable_variables)
        opt.apply_gradients(zip(grads, layer.trainable_variables))

    for _ in range(steps):
        step()


def _max_col_err(w):
    return np.max(np.abs(np.asarray(w, np.float64).sum(axis=0) - 1.0))


# ------------------------------------------------------------------------------ shapes, weights
@pytest.mark.parametrize('channels', [2, 3])
def test_shapes_and_column_sums(rng, channels):
    layer = AffineCombiningAutoencoder(8, H36M, seed=0)
    x = _poses(rng, 17, channels=channels)
    z = layer.encode(x)
    assert z.shape == (4, 8, channels) and z.dtype == tf.float32
    assert layer.decode(z).shape == (4, 17, channels)
    np.testing.assert_allclose(layer(x).numpy(), layer.decode(layer.encode(x)).numpy(), atol=1e-3)
    enc, dec = layer.encoder_weights(), layer.decoder_weights()
    assert enc.shape == (17, 8) and dec.shape == (8, 17)
    assert _max_col_err(enc) < 1e-12 and _max_col_err(dec) < 1e-12
    # The applied float32 matrices: exact sums within one rounding per entry.
    assert _max_col_err(layer.encoder_matrix().numpy()) < 1e-6
    assert _max_col_err(layer.decoder_matrix().numpy()) < 1e-6
    # encode is the affine combination z_l = sum_j W[j, l] x_j.
    np.testing.assert_allclose(z.numpy(), np.einsum('bjc,jl->blc', x, enc), rtol=1e-5,
                               atol=REL_TOL * POSE_SCALE_MM)


@pytest.mark.parametrize('chiral', [True, False])
def test_column_sums_stay_one_after_large_lr_training(rng, chiral):
    layer = AffineCombiningAutoencoder(16, ALL, chiral=chiral, l1=0.3, seed=1)
    x = _poses(rng, len(ALL.names), batch=32)
    before = layer.encoder_weights()
    _train(layer, x, steps=40, learning_rate=0.5)
    assert np.max(np.abs(layer.encoder_weights() - before)) > 0.01  # training did move them
    for w in (layer.encoder_weights(), layer.decoder_weights(),
              layer.encoder_matrix().numpy(), layer.decoder_matrix().numpy()):
        assert np.all(np.isfinite(w))
        assert _max_col_err(w) < 1e-6


def test_column_sums_one_even_with_l1_zero_and_huge_lr(rng):
    layer = AffineCombiningAutoencoder(8, H36M, l1=0.0, seed=2)
    _train(layer, _poses(rng, 17, batch=16), steps=30, learning_rate=5.0)
    assert _max_col_err(layer.encoder_weights()) < 1e-9
    assert _max_col_err(layer.decoder_weights()) < 1e-9


# ---------------------------------------------------------------------------------- equivariance
@pytest.mark.parametrize('joint_space', ['h36m', 'all'])
def test_exact_equivariances(rng, joint_space):
    ji = H36M if joint_space == 'h36m' else ALL
    n = len(ji.names)
    layer = AffineCombiningAutoencoder(16, ji, seed=3)
    _train(layer, _poses(rng, n, batch=16), steps=5, learning_rate=0.1)  # break init symmetry
    x = _poses(rng, n)
    y = layer(x).numpy()
    tol = REL_TOL * POSE_SCALE_MM * 10
    t = rng.normal(size=(4, 1, 3)).astype(np.float32) * 1000
    np.testing.assert_allclose(layer(x + t).numpy(), y + t, atol=tol)
    rot = _random_rotation(rng)
    np.testing.assert_allclose(layer(x @ rot.T).numpy(), y @ rot.T, atol=tol)
    np.testing.assert_allclose(layer(x * 2.5).numpy(), y * 2.5, atol=2.5 * tol)
    np.testing.assert_allclose(layer(_mirror(x, ji.mirror)).numpy(), _mirror(y, ji.mirror),
                               atol=tol)
    # The latents mirror by latent_mirror().
    np.testing.assert_allclose(layer.encode(_mirror(x, ji.mirror)).numpy(),
                               _mirror(layer.encode(x).numpy(), layer.latent_mirror()), atol=tol)


def test_non_chiral_layer_does_not_commute_with_mirroring(rng):
    layer = AffineCombiningAutoencoder(8, H36M, chiral=False, seed=4)
    x = _poses(rng, 17)
    diff = layer(_mirror(x, H36M.mirror)).numpy() - _mirror(layer(x).numpy(), H36M.mirror)
    assert np.max(np.abs(diff)) > 1.0
    with pytest.raises(ValueError, match='chiral=False'):
        layer.latent_mirror()


def test_chiral_weight_blocks_are_tied():
    layer = AffineCombiningAutoencoder(8, H36M, seed=5)
    enc = layer.encoder_weights()
    lm = layer.latent_mirror()
    # W[mirror[j], mirror_latent[l]] == W[j, l]: left-to-left == right-to-right, etc.
    np.testing.assert_allclose(enc[np.ix_(H36M.mirror, lm)], enc, atol=1e-12)
    dec = layer.decoder_weights()
    np.testing.assert_allclose(dec[np.ix_(lm, H36M.mirror)], dec, atol=1e-12)
    # 5 free blocks per matrix: S, Q (sided pairs x latent pairs), X, K, Z.
    p, c = 6, 5
    lp, lc = layer.n_latent_pairs, layer.n_centre_latents
    assert layer.count_params() == 2 * (2 * p * lp + p * lc + c * lp + c * lc)


# ------------------------------------------------------------------------------- chiral split rule
@pytest.mark.parametrize('n_latents,expected_centre', [(16, 4), (32, 6), (48, 10)])
def test_split_rule_for_100_joints_with_20_centre(n_latents, expected_centre):
    c = default_centre_latents(n_latents, 100, 20)
    assert c == expected_centre
    assert (n_latents - c) % 2 == 0


@pytest.mark.parametrize('n_latents', [16, 32, 48])
def test_split_rule_on_multi_format_space(n_latents):
    layer = AffineCombiningAutoencoder(n_latents, ALL)
    n_centre = sum(i == m for i, m in enumerate(ALL.mirror))
    assert layer.n_centre_latents + 2 * layer.n_latent_pairs == n_latents
    assert abs(layer.n_centre_latents - n_latents * n_centre / len(ALL.names)) <= 1
    assert layer.encoder_weights().shape == (len(ALL.names), n_latents)


def test_split_rule_edge_cases():
    assert default_centre_latents(5, 10, 0) == 1      # odd L, no centre joints: one centre latent
    assert default_centre_latents(4, 10, 0) == 0
    assert default_centre_latents(7, 7, 7) == 7       # no sided joints: all latents centre
    assert default_centre_latents(3, 17, 5) == 1      # at least one centre and one pair
    with pytest.raises(ValueError, match='n_latents=2 is too small'):
        default_centre_latents(2, 17, 5)


def test_n_centre_latents_override():
    layer = AffineCombiningAutoencoder(16, H36M, n_centre_latents=6)
    assert (layer.n_centre_latents, layer.n_latent_pairs) == (6, 5)
    with pytest.raises(ValueError, match='n_centre_latents must be .* got 5'):
        AffineCombiningAutoencoder(16, H36M, n_centre_latents=5)


# ---------------------------------------------------------------------------------- valid masks
def test_encode_with_valid_mask(rng):
    layer = AffineCombiningAutoencoder(8, H36M, seed=6)
    x = _poses(rng, 17)
    np.testing.assert_allclose(layer.encode(x, valid=np.ones((4, 17), bool)).numpy(),
                               layer.encode(x).numpy(), atol=REL_TOL * POSE_SCALE_MM)
    valid = np.ones((4, 17), bool)
    valid[0, 3] = valid[2, [5, 11]] = False
    x_nan = x.copy()
    x_nan[~valid] = np.nan
    z = layer.encode(x_nan, valid=valid).numpy()
    assert np.all(np.isfinite(z))
    # Missing joints are ignored and the remaining weights still form affine combinations:
    t = np.float32([100, -200, 300])
    np.testing.assert_allclose(layer.encode(x_nan + t, valid=valid).numpy(), z + t,
                               atol=REL_TOL * POSE_SCALE_MM * 10)
    np.testing.assert_allclose(z[1], layer.encode(x[1:2]).numpy()[0], atol=1e-3)  # all valid


# ---------------------------------------------------------------------------------- regularization
def test_regularization_is_l1_of_normalized_weights_and_negative_mass(rng):
    layer = AffineCombiningAutoencoder(8, H36M, l1=0.7, seed=7)
    _train(layer, _poses(rng, 17, batch=16), steps=10, learning_rate=0.3)
    enc, dec = layer.encoder_weights(), layer.decoder_weights()
    reg = float(layer.regularization_loss())
    assert reg == pytest.approx(0.7 * (np.abs(enc).mean() + np.abs(dec).mean()), rel=1e-5)
    # Supplement S6: with columns summing to 1, sum |w| = n_columns + 2 * negative mass.
    neg_e, neg_d = np.maximum(-enc, 0).sum(), np.maximum(-dec, 0).sum()
    assert neg_e + neg_d > 0
    j, l = enc.shape
    assert reg == pytest.approx(0.7 * ((l + 2 * neg_e) + (j + 2 * neg_d)) / (j * l), rel=1e-5)
    assert layer.losses == []  # not registered as a layer loss


# ------------------------------------------------------------------------- precision, config, I/O
def test_computes_in_float32_under_mixed_precision(rng):
    x = _poses(rng, 17)
    keras.mixed_precision.set_global_policy('mixed_bfloat16')
    try:
        layer = AffineCombiningAutoencoder(8, H36M, seed=8)
        assert layer.compute_dtype == 'float32' and layer.variable_dtype == 'float32'
        y = layer(tf.constant(x, tf.bfloat16))
        assert y.dtype == tf.float32
        assert layer.encode(tf.constant(x, tf.bfloat16)).dtype == tf.float32
    finally:
        keras.mixed_precision.set_global_policy('float32')
    x_bf = tf.cast(tf.constant(x, tf.bfloat16), tf.float32).numpy()
    np.testing.assert_allclose(y.numpy(), layer(x_bf).numpy(), atol=1e-3)


def test_get_config_round_trip(rng):
    layer = AffineCombiningAutoencoder(12, ALL, l1=0.25, n_centre_latents=4, seed=9, name='ae')
    x = _poses(rng, len(ALL.names))
    y = layer(x)
    config = layer.get_config()
    json.dumps(config)  # serialisable: names and mirror, not the JointInfo object
    assert config['joint_info'] == {'names': ALL.names, 'mirror': ALL.mirror}
    clone = AffineCombiningAutoencoder.from_config(config)
    assert clone.get_config() == config
    clone.build((None, len(ALL.names), 3))
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(clone(x).numpy(), y.numpy())
    plain = AffineCombiningAutoencoder(5, chiral=False, n_joints=9, l1=0.0)
    assert AffineCombiningAutoencoder.from_config(plain.get_config()).get_config() == \
        plain.get_config()


def test_keras_serialization_round_trip():
    layer = AffineCombiningAutoencoder(8, H36M, seed=10)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(clone, AffineCombiningAutoencoder)
    assert clone.get_config() == layer.get_config()


def test_same_seed_same_init_and_different_seed_differs():
    a = AffineCombiningAutoencoder(8, H36M, seed=11).encoder_weights()
    b = AffineCombiningAutoencoder(8, H36M, seed=11).encoder_weights()
    c = AffineCombiningAutoencoder(8, H36M, seed=12).encoder_weights()
    np.testing.assert_array_equal(a, b)
    assert np.max(np.abs(a - c)) > 1e-3


def test_set_normalized_weights_round_trip_and_checks():
    src = AffineCombiningAutoencoder(8, H36M, seed=13)
    dst = AffineCombiningAutoencoder(8, H36M, seed=14)
    dst.set_normalized_weights(src.encoder_weights(), src.decoder_weights())
    np.testing.assert_allclose(dst.encoder_weights(), src.encoder_weights(), atol=1e-7)
    np.testing.assert_allclose(dst.decoder_weights(), src.decoder_weights(), atol=1e-7)
    enc = src.encoder_weights()
    with pytest.raises(ValueError, match=r'encoder_weights must have shape \(17, 8\)'):
        dst.set_normalized_weights(enc.T, src.decoder_weights())
    with pytest.raises(ValueError, match='encoder_weights columns must sum to 1'):
        dst.set_normalized_weights(enc * 2, src.decoder_weights())
    broken = enc.copy()
    broken[[0, 1], 0] += [0.1, -0.1]  # sums kept, mirror ties broken
    with pytest.raises(ValueError, match='chiral block structure'):
        dst.set_normalized_weights(broken, src.decoder_weights())


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="n_latents must be a positive int; got 0"):
        AffineCombiningAutoencoder(0, H36M)
    with pytest.raises(ValueError, match='l1 must be a non-negative number; got -1'):
        AffineCombiningAutoencoder(8, H36M, l1=-1)
    with pytest.raises(ValueError, match='joint_info .* is required when chiral=True'):
        AffineCombiningAutoencoder(8, n_joints=17)
    with pytest.raises(ValueError, match='n_joints must be given'):
        AffineCombiningAutoencoder(8, chiral=False)
    with pytest.raises(ValueError, match='n_joints=16 disagrees with joint_info'):
        AffineCombiningAutoencoder(8, H36M, n_joints=16)
    with pytest.raises(ValueError, match='must have .names and .mirror'):
        AffineCombiningAutoencoder(8, object())
    with pytest.raises(ValueError, match='mirror must be an involution'):
        AffineCombiningAutoencoder(8, {'names': ['a', 'b', 'c'], 'mirror': [1, 2, 0]})
    with pytest.raises(ValueError, match='dtype must be a float32 policy'):
        AffineCombiningAutoencoder(8, H36M, dtype='mixed_bfloat16')
    with pytest.raises(ValueError, match='n_centre_latents applies only when chiral=True'):
        AffineCombiningAutoencoder(8, H36M, chiral=False, n_centre_latents=2)
    with pytest.raises(ValueError, match='input has 16 joints but the layer was made for 17'):
        AffineCombiningAutoencoder(8, H36M)(np.zeros((1, 16, 3), np.float32))


def test_layer_contract(rng):
    from tests.layer_testing import run_layer_test
    x = _poses(rng, H36M.n_joints)
    run_layer_test(lambda: AffineCombiningAutoencoder(8, H36M, seed=8), x, x.shape, mixed_output_dtype='float32',
                   target_scale=300.0, learning_rate=1e-4)
