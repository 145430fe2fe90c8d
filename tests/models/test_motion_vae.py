"""Tests of posekit.models.motion_vae: the HuMoR-like conditional VAE and its loss."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from posekit.models.motion_vae import MotionVAE, gaussian_kl, motion_state_pairs, motion_vae_loss
from posekit.train.precision import policy_scope

D, L = 12, 4  # small state and latent for fast tests


def _model(**kwargs):
    keras.utils.set_random_seed(0)
    kwargs = dict(dict(state_dim=D, latent_dim=L, hidden=32, groups=4), **kwargs)
    model = MotionVAE(**kwargs)
    model.build()
    return model


def _inputs(rng, batch=5, noise=True):
    inputs = {'x_prev': rng.normal(size=(batch, D)).astype(np.float32),
              'x_next': rng.normal(size=(batch, D)).astype(np.float32)}
    if noise:
        inputs['noise'] = rng.normal(size=(batch, L)).astype(np.float32)
    return inputs


def _dense_params(n_in, n_out):
    return n_in * n_out + n_out


def test_humor_layout_and_exact_parameter_count():
    model = _model()
    h = 32
    gaussian = lambda n_in: (_dense_params(n_in, h) + 3 * (2 * h + _dense_params(h, h))
                             + 2 * h + _dense_params(h, 2 * L))
    # decoder [D + L, h, h, h/2, D] with z concatenated to the input of every later layer
    decoder = (_dense_params(D + L, h) + 2 * h + _dense_params(h + L, h) + 2 * h + _dense_params(h + L, h // 2)
               + 2 * (h // 2) + _dense_params(h // 2 + L, D))
    assert model.count_params() == gaussian(2 * D) + gaussian(D) + decoder
    assert model.decoder_units == (32, 32, 16)
    wide = MotionVAE(339, width=4)  # HuMoR's sizes, 4x wide (not built: no weights allocated)
    assert wide.hidden_units == 4096 and wide.decoder_units == (4096, 4096, 2048) and wide.latent_dim == 48


def test_outputs_float32_under_mixed_policy_with_bfloat16_hidden_layers(rng):
    with policy_scope('mixed_bfloat16'):
        model = _model()
    outputs = model(_inputs(rng))
    assert set(outputs) == {'x_pred', 'z', 'q_mean', 'q_logvar', 'p_mean', 'p_logvar'}
    assert all(v.dtype == tf.float32 for v in outputs.values())
    assert outputs['x_pred'].shape == (5, D) and outputs['z'].shape == (5, L)
    hidden = model.encoder_layers[1][1]
    assert hidden.compute_dtype == 'bfloat16' and hidden.kernel.dtype == 'float32'
    assert model.encoder_layers[-1][1].compute_dtype == 'float32'  # the Gaussian head
    assert model.decoder_layers[-1][1].compute_dtype == 'float32'  # the state output
    assert all(v.dtype == 'float32' for v in model.trainable_variables)


def test_mixed_policy_values_match_float32_within_bfloat16_rounding(rng):
    # The same weights under both policies: bfloat16 keeps 8 significant bits (relative rounding 2^-9), so the
    # mixed outputs follow float32 to about a percent of their scale, but are not bit-equal (they do run in bf16).
    reference = _model()
    with policy_scope('mixed_bfloat16'):
        mixed = _model()
    mixed.set_weights(reference.get_weights())
    inputs = _inputs(rng, batch=64)
    expected, got = reference(inputs), mixed(inputs)
    for key in ('x_pred', 'q_mean', 'q_logvar', 'p_mean', 'p_logvar', 'z'):
        scale = float(np.max(np.abs(expected[key])))
        error = float(np.max(np.abs(got[key].numpy() - expected[key].numpy())))
        assert error <= 0.03 * scale, (key, error, scale)
        assert error > 0.0, key  # computed in bfloat16, not silently in float32
    loss32 = float(motion_vae_loss(expected, inputs['x_next'])[0])
    loss16 = float(motion_vae_loss(got, inputs['x_next'])[0])
    assert abs(loss16 - loss32) <= 0.01 * abs(loss32)
    assert got['x_pred'].dtype == expected['x_pred'].dtype == tf.float32


def test_motion_state_pairs_positions_relative_to_previous_root_and_velocities():
    fps = 10.0
    t = np.arange(5, dtype=np.float64)
    joints = np.zeros((5, 2, 3))
    joints[:, 0] = np.stack([100 * t, 900 + 0 * t, 50 * t], axis=1)  # root walks along x and z (mm)
    joints[:, 1] = joints[:, 0] + [0.0, 500.0, 20.0]
    prev, nxt = motion_state_pairs(joints, fps)
    assert prev.shape == nxt.shape == (3, 12) and prev.dtype == np.float32
    # pair k: frames (k + 1, k + 2), reference = root of frame k + 1 on the floor
    np.testing.assert_allclose(prev[0, :6], [0, 0.9, 0, 0, 1.4, 0.02], atol=1e-6)
    np.testing.assert_allclose(nxt[0, :6], [0.1, 0.9, 0.05, 0.1, 1.4, 0.07], atol=1e-6)
    velocity = np.array([0.1, 0.0, 0.05]) * fps  # m/s
    np.testing.assert_allclose(prev[:, 6:9], np.tile(velocity, (3, 1)), atol=1e-5)
    np.testing.assert_allclose(nxt[:, 9:12], np.tile(velocity, (3, 1)), atol=1e-5)
    with pytest.raises(ValueError, match='joints_mm must be'):
        motion_state_pairs(joints[:2], fps)
    with pytest.raises(ValueError, match='fps=0'):
        motion_state_pairs(joints, 0)


def test_reparameterization_and_posterior_mean_without_noise(rng):
    model = _model()
    inputs = _inputs(rng)
    out = model(inputs)
    expected = out['q_mean'] + np.exp(0.5 * out['q_logvar']) * inputs['noise']
    np.testing.assert_allclose(out['z'], expected, rtol=1e-6, atol=1e-6)
    no_noise = model({k: v for k, v in inputs.items() if k != 'noise'})
    np.testing.assert_allclose(no_noise['z'], no_noise['q_mean'])
    np.testing.assert_allclose(no_noise['q_mean'], out['q_mean'], rtol=1e-6)


def test_decoder_predicts_the_change_of_state(rng):
    model = _model()
    last = model.decoder_layers[-1][1]
    last.kernel.assign(np.zeros(last.kernel.shape, np.float32))
    last.bias.assign(np.full(last.bias.shape, 0.5, np.float32))
    inputs = _inputs(rng)
    np.testing.assert_allclose(model(inputs)['x_pred'], inputs['x_prev'] + 0.5, rtol=1e-6)
    # the prior path: sample_next decodes p_mean + exp(p_logvar / 2) * noise
    p_mean, p_logvar = model.prior(inputs['x_prev'])
    z = p_mean + tf.exp(0.5 * p_logvar) * inputs['noise']
    np.testing.assert_allclose(model.sample_next(inputs['x_prev'], inputs['noise']),
                               model.decode(z, inputs['x_prev']), rtol=1e-6)


def test_latent_is_fed_to_every_decoder_layer(rng):
    model = _model()
    kernels = [dense.kernel.shape[0] for _, dense in model.decoder_layers]
    assert kernels == [D + L, 32 + L, 32 + L, 16 + L]


def test_config_round_trip(rng):
    model = _model(width=2.0)
    config = model.get_config()
    assert {k: config[k] for k in ('state_dim', 'latent_dim', 'hidden', 'width', 'gaussian_layers', 'groups')} == \
        dict(state_dim=D, latent_dim=L, hidden=32, width=2.0, gaussian_layers=4, groups=4)
    clone = MotionVAE.from_config(config)
    clone.build()
    clone.set_weights(model.get_weights())
    inputs = _inputs(rng)
    for key, value in model(inputs).items():
        np.testing.assert_allclose(clone(inputs)[key], value, rtol=1e-6)


def test_gaussian_kl_closed_form():
    # KL(N(0, 1) || N(1, 4)) = log 2 + (1 + 1) / 8 - 1/2 per dimension
    q = (tf.zeros([1, 2]), tf.zeros([1, 2]))
    p = (tf.ones([1, 2]), tf.fill([1, 2], math.log(4.0)))
    np.testing.assert_allclose(gaussian_kl(*q, *p), [2 * (math.log(2.0) + 0.25 - 0.5)], rtol=1e-6)
    np.testing.assert_allclose(gaussian_kl(*p, *p), [0.0], atol=1e-6)


def test_loss_is_reconstruction_plus_weighted_kl(rng):
    model = _model()
    inputs = _inputs(rng)
    out = model(inputs)
    loss, metrics = motion_vae_loss(out, inputs['x_next'], kl_weight=0.25)
    recon = np.mean(np.sum((out['x_pred'].numpy() - inputs['x_next']) ** 2, axis=-1))
    kl = np.mean(gaussian_kl(out['q_mean'], out['q_logvar'], out['p_mean'], out['p_logvar']))
    np.testing.assert_allclose(metrics['reconstruction'], recon, rtol=1e-5)
    np.testing.assert_allclose(metrics['kl'], kl, rtol=1e-5)
    np.testing.assert_allclose(loss, recon + 0.25 * kl, rtol=1e-5)
    with pytest.raises(ValueError, match='kl_weight=-1'):
        motion_vae_loss(out, inputs['x_next'], kl_weight=-1)


def test_a_few_adam_steps_reduce_the_loss(rng):
    model = _model()
    inputs = _inputs(rng, batch=32)
    inputs['x_next'] = inputs['x_prev'] + 0.1  # a learnable transition
    optimizer = keras.optimizers.Adam(3e-3)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = motion_vae_loss(model(inputs, training=True), inputs['x_next'])[0]
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return loss

    first = float(step())
    for _ in range(30):
        last = float(step())
    assert last < 0.5 * first


@pytest.mark.parametrize('kwargs, match', [
    (dict(state_dim=0), 'state_dim=0'),
    (dict(width=0), 'width=0'),
    (dict(width=True), 'width=True'),
    (dict(groups=5), 'multiples of groups=5'),
    (dict(decoder_fractions=()), r'decoder_fractions=\(\)'),
    (dict(latent_dim=2.5), 'latent_dim=2.5'),
])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MotionVAE(**dict(dict(state_dim=D, latent_dim=L, hidden=32, groups=4), **kwargs))
