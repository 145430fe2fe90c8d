"""Tests of posekit.train.losses_acae: consistency, latent-head decoding and hybrid teacher losses."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from posekit import skeletons
from posekit.layers import AffineCombiningAutoencoder
from posekit.train.losses_acae import (CONSISTENCY_WEIGHT_2D, HYBRID_START_STEP, consistency_loss,
                                       decode_latents, hybrid_teacher_loss, reconstruct)

H36M = skeletons.get('h36m_17')
N_LATENTS = 8
SCALE_MM = 500.0


def _acae(seed=0, invertible=False):
    """A frozen ACAE; with ``invertible`` its encoder is a right inverse of the decoder, so every
    decoded pose decode(z) is a fixed point of the reconstruction."""
    layer = AffineCombiningAutoencoder(N_LATENTS, H36M, seed=seed)
    layer.trainable = False
    if invertible:
        dec = layer.decoder_weights()                # [L, J], columns sum to 1
        enc = np.linalg.pinv(dec)                    # [J, L] with dec @ enc = I_L
        # 1^T enc = 1^T dec enc = 1^T: the right inverse is affine too (and keeps the mirror ties).
        layer.set_normalized_weights(enc, dec)
    return layer


def _points(rng, shape):
    return tf.constant(rng.normal(size=shape) * SCALE_MM, tf.float32)


def _matrix(acae):
    """[J, J] reconstruction matrix M with recon_k = sum_j M[j, k] x_j."""
    return acae.encoder_weights() @ acae.decoder_weights()


# ------------------------------------------------------------------------------------ consistency
def test_consistency_loss_is_zero_for_poses_in_range(rng):
    acae = _acae(invertible=True)
    x3 = acae.decode(_points(rng, (4, N_LATENTS, 3)))
    x2 = acae.decode(_points(rng, (4, N_LATENTS, 2)))
    loss = consistency_loss(x3, acae, pred2d=x2)
    assert loss.dtype == tf.float32 and loss.shape == ()
    assert float(loss) < 1e-6 * SCALE_MM * 10
    # ... and clearly positive for poses off the range.
    assert float(consistency_loss(_points(rng, (4, 17, 3)), acae)) > 0.1 * SCALE_MM


def test_consistency_loss_formula_with_2d_and_valid(rng):
    acae = _acae(seed=1)
    x3 = _points(rng, (3, 17, 3))
    x2 = _points(rng, (3, 17, 2))
    valid = rng.random((3, 17)) > 0.3
    m = _matrix(acae)

    def term(x):
        x = x.numpy().astype(np.float64)
        per_joint = np.abs(x - np.einsum('bjc,jk->bkc', x, m)).sum(-1)
        return (per_joint * valid).sum() / valid.sum()

    expected = term(x3) + CONSISTENCY_WEIGHT_2D * term(x2)
    got = float(consistency_loss(x3, acae, pred2d=x2, valid=valid))
    assert got == pytest.approx(expected, rel=1e-4)
    assert float(consistency_loss(x3, acae, pred2d=x2, weight_2d=0.0, valid=valid)) == \
        pytest.approx(term(x3), rel=1e-4)
    np.testing.assert_allclose(reconstruct(x3, acae).numpy(), acae(x3).numpy(), atol=1e-2)


def test_consistency_gradient_flows_through_prediction_and_reconstruction_not_acae(rng):
    acae = _acae(seed=2)
    x = tf.Variable(_points(rng, (2, 17, 3)))
    with tf.GradientTape(persistent=True) as tape:
        loss = consistency_loss(x, acae)
    grad = tape.gradient(loss, x).numpy()
    # loss = mean_{b,k} sum_c |x_k - sum_j M[j,k] x_j|  ->  grad_j = (s_j - sum_k M[j,k] s_k) / (B J)
    m = _matrix(acae)
    xn = x.numpy().astype(np.float64)
    s = np.sign(xn - np.einsum('bjc,jk->bkc', xn, m))
    expected = (s - np.einsum('jk,bkc->bjc', m, s)) / (2 * 17)
    np.testing.assert_allclose(grad, expected, atol=1e-6)
    # The ACAE is frozen: no gradient reaches its variables even when they are trainable.
    acae.trainable = True
    with tf.GradientTape() as tape2:
        loss2 = consistency_loss(x, acae)
    assert all(g is None for g in tape2.gradient(loss2, acae.trainable_variables))


def test_consistency_loss_under_mixed_precision_inputs(rng):
    acae = _acae(seed=3)
    x = _points(rng, (2, 17, 3))
    loss_bf16 = consistency_loss(tf.cast(x, tf.bfloat16), acae)
    assert loss_bf16.dtype == tf.float32
    ref = consistency_loss(tf.cast(tf.cast(x, tf.bfloat16), tf.float32), acae)
    assert float(loss_bf16) == pytest.approx(float(ref), rel=1e-6)


# ---------------------------------------------------------------------------------- latent head
def test_decode_latents_matches_decoder_and_passes_gradient(rng):
    acae = _acae(seed=4)
    z = tf.Variable(_points(rng, (3, N_LATENTS, 3)))
    with tf.GradientTape() as tape:
        joints = decode_latents(z, acae)
        loss = tf.reduce_sum(joints[:, 0, 0])
    assert joints.shape == (3, 17, 3) and joints.dtype == tf.float32
    np.testing.assert_allclose(joints.numpy(), acae.decode(z).numpy(), atol=1e-3)
    # d joints[:, 0, 0] / d z[:, l, 0] = W_dec[l, 0]
    np.testing.assert_allclose(tape.gradient(loss, z).numpy()[0, :, 0],
                               acae.decoder_weights()[:, 0], atol=1e-6)
    with pytest.raises(ValueError, match=r'latents must have 8 latents'):
        decode_latents(_points(rng, (3, 5, 3)), acae)


# ---------------------------------------------------------------------------------- hybrid
def test_hybrid_loss_is_zero_before_start_step_and_formula_after(rng):
    acae = _acae(seed=5)
    student = _points(rng, (4, N_LATENTS, 3))
    teacher = _points(rng, (4, 17, 3))
    assert HYBRID_START_STEP == 5000
    assert float(hybrid_teacher_loss(student, teacher, acae, step=0)) == 0.0
    assert float(hybrid_teacher_loss(student, teacher, acae, step=tf.constant(4999))) == 0.0
    encoded = np.einsum('bjc,jl->blc', teacher.numpy(), acae.encoder_weights())
    expected = np.mean(np.abs(student.numpy() - encoded).sum(-1))
    for step in (5000, tf.constant(5000, tf.int64), tf.constant(12000.0)):
        assert float(hybrid_teacher_loss(student, teacher, acae, step)) == \
            pytest.approx(expected, rel=1e-5)
    assert float(hybrid_teacher_loss(student, teacher, acae, step=10, start_step=10)) > 0


def test_hybrid_loss_inside_tf_function_and_teacher_gets_no_gradient(rng):
    acae = _acae(seed=6)
    student = tf.Variable(_points(rng, (2, N_LATENTS, 3)))
    teacher = tf.Variable(_points(rng, (2, 17, 3)))

    @tf.function
    def grads(step):
        with tf.GradientTape() as tape:
            loss = hybrid_teacher_loss(student, teacher, acae, step)
        g_student, g_teacher = tape.gradient(loss, [student, teacher])
        return loss, g_student, g_teacher

    loss, g_student, g_teacher = grads(tf.constant(4000))
    assert float(loss) == 0.0 and g_teacher is None
    assert np.all(g_student.numpy() == 0)
    loss, g_student, g_teacher = grads(tf.constant(6000))
    assert float(loss) > 0 and g_teacher is None
    assert np.any(g_student.numpy() != 0)
    # Student gradient of the mean L1: sign(student - teacher_encoded) / (B * L).
    encoded = np.einsum('bjc,jl->blc', teacher.numpy(), acae.encoder_weights())
    np.testing.assert_allclose(g_student.numpy(),
                               np.sign(student.numpy() - encoded) / (2 * N_LATENTS), atol=1e-7)


def test_loss_shape_errors(rng):
    acae = _acae(seed=7)
    with pytest.raises(ValueError, match=r'all_joints_pred must have 17 joints'):
        hybrid_teacher_loss(_points(rng, (2, N_LATENTS, 3)), _points(rng, (2, 16, 3)), acae, 6000)
    with pytest.raises(ValueError, match=r'points must have shape \[B, joints, C\]'):
        consistency_loss(_points(rng, (17, 3)), acae)
