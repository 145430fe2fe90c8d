"""HuMoR-like conditional VAE motion model: MLP encoder, conditional prior and decoder on pose states.

Rempe et al., "HuMoR: 3D Human Motion Model for Robust Pose Estimation", ICCV 2021. The model learns
the transition ``p(x_t | x_{t-1})`` between consecutive pose-state vectors through a latent
transition ``z`` (48-d in HuMoR):

- **posterior (encoder)** ``q(z | x_{t-1}, x_t)``: MLP ``[2D, h, h, h, h, 2L]`` -> mean and log-variance;
- **conditional prior** ``p(z | x_{t-1})``: MLP ``[D, h, h, h, h, 2L]``;
- **decoder** ``x_t = x_{t-1} + f(z, x_{t-1})``: MLP ``[D + L, h, h, h/2, D]`` with ``z`` concatenated to
  the input of every layer (HuMoR's skip connection of the latent); it predicts the change of state.

Each MLP is ``Dense`` followed by ``[GroupNorm(groups) - ReLU - Dense]`` per further layer, as HuMoR's
(hidden ``h = 1024`` and ``groups = 16`` in the paper; ``width`` multiplies ``h``: ``width=4`` is the
4x-wide model of the mixed-precision study). The state vector is whatever the data pipeline makes of a
pose (HuMoR: root translation and orientation, joint angles, joint positions and their velocities);
here ``state_dim`` is a hyperparameter. HuMoR's contact classification output and its state normalisation
are not included.

Training objective (:func:`motion_vae_loss`): reconstruction (squared error of the predicted next
state, summed over the state, mean over the batch) + ``kl_weight`` x KL(q || p) (summed over the
latent, mean over the batch), with ``z = mean_q + exp(logvar_q / 2) * noise``.

Pose states (:func:`motion_state_pairs`): HuMoR-style consecutive states of a clip, joint positions
relative to the previous frame's root on the floor (m) and joint velocities (m/s).

Precision: layers follow the Keras dtype policy they are built under, except the small output layers
(the two ``2L``-wide Gaussian heads and the decoder's last layer), which compute in float32 so that
means, log-variances, the predicted state and the losses are float32 whatever the policy; GroupNorm
statistics are computed in float32 by Keras. Inputs, outputs and losses are float32.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

#: Hidden units of HuMoR's MLPs at width 1.
HUMOR_HIDDEN = 1024
#: HuMoR's latent size.
HUMOR_LATENT_DIM = 48
#: GroupNorm groups of HuMoR's MLPs.
HUMOR_GROUPS = 16
#: Hidden layers of HuMoR's encoder and prior MLPs ([in, 1024, 1024, 1024, 1024, 2L]).
HUMOR_GAUSSIAN_LAYERS = 4
#: Decoder hidden widths relative to ``hidden`` ([in, 1024, 1024, 512, out] in HuMoR).
HUMOR_DECODER_FRACTIONS = (1.0, 1.0, 0.5)
#: Numerical-safety epsilon of GroupNorm (Keras' default).
GROUP_NORM_EPSILON = 1e-3
#: Output layers compute in this dtype whatever the policy.
OUTPUT_DTYPE = 'float32'
MM_PER_M = 1000.0


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f'{name} must be a positive int; received {name}={value!r}')
    return int(value)


@keras.saving.register_keras_serializable(package='posekit')
class MotionVAE(keras.Model):
    """Conditional VAE over pose-state transitions (HuMoR's architecture, module docstring).

    Args:
      state_dim: D, numbers per pose-state vector.
      latent_dim: L, size of the latent transition (48 in HuMoR).
      hidden: hidden units at width 1 (1024 in HuMoR).
      width: multiplier of every hidden width (1 = HuMoR; 4 = the 4x-wide model); the widths
        ``round(hidden * width)`` and half of it must be multiples of ``groups``.
      gaussian_layers: hidden layers of the encoder and prior MLPs (4 in HuMoR).
      decoder_fractions: decoder hidden widths relative to the hidden width ((1, 1, 0.5) in HuMoR).
      groups: GroupNorm groups (16 in HuMoR).
      **kwargs: ``keras.Model`` arguments (``name``, ``dtype``...).

    Call: ``model({'x_prev': [B, D], 'x_next': [B, D], 'noise': [B, L]}, training=...)`` (float32; the
    state's unit, e.g. m and m/s). ``noise`` (standard normal) is optional: without it ``z`` is the
    posterior mean (deterministic). Returns a dict of float32 tensors: ``x_pred`` [B, D] (predicted next
    state), ``z`` [B, L], ``q_mean``, ``q_logvar``, ``p_mean``, ``p_logvar`` [B, L] (posterior and prior).
    """

    def __init__(self, state_dim, latent_dim=HUMOR_LATENT_DIM, hidden=HUMOR_HIDDEN, width=1.0,
                 gaussian_layers=HUMOR_GAUSSIAN_LAYERS, decoder_fractions=HUMOR_DECODER_FRACTIONS,
                 groups=HUMOR_GROUPS, **kwargs):
        super().__init__(**kwargs)
        self.state_dim = _positive_int('state_dim', state_dim)
        self.latent_dim = _positive_int('latent_dim', latent_dim)
        self.hidden = _positive_int('hidden', hidden)
        self.gaussian_layers = _positive_int('gaussian_layers', gaussian_layers)
        self.groups = _positive_int('groups', groups)
        if isinstance(width, bool) or not isinstance(width, (int, float, np.integer, np.floating)) \
                or not width > 0:
            raise ValueError(f'width must be a positive number; received width={width!r}')
        self.width = float(width)
        fractions = tuple(float(f) for f in decoder_fractions)
        if not fractions or any(not f > 0 for f in fractions):
            raise ValueError(f'decoder_fractions must be non-empty positive numbers; received '
                             f'decoder_fractions={decoder_fractions!r}')
        self.decoder_fractions = fractions
        self.hidden_units = int(round(self.hidden * self.width))
        self.decoder_units = tuple(int(round(self.hidden_units * f)) for f in fractions)
        for units in (self.hidden_units,) + self.decoder_units:
            if units < self.groups or units % self.groups:
                raise ValueError(f'hidden widths must be multiples of groups={self.groups}; hidden={self.hidden}, '
                                 f'width={width!r} and decoder_fractions={decoder_fractions!r} give {units}')

        two_l = 2 * self.latent_dim
        self.encoder_layers = self._mlp('encoder', [self.hidden_units] * self.gaussian_layers, two_l)
        self.prior_layers = self._mlp('prior', [self.hidden_units] * self.gaussian_layers, two_l)
        self.decoder_layers = self._mlp('decoder', list(self.decoder_units), self.state_dim)

    def _mlp(self, prefix, widths, out_units):
        """[(norm or None, dense)] per layer: Dense, then GroupNorm-ReLU-Dense; the last Dense in float32."""
        policy = self.dtype_policy
        layers = [(None, keras.layers.Dense(widths[0], dtype=policy, name=f'{prefix}_dense0'))]
        for i, units in enumerate(list(widths[1:]) + [out_units], start=1):
            last = i == len(widths)
            norm = keras.layers.GroupNormalization(self.groups, epsilon=GROUP_NORM_EPSILON, dtype=policy,
                                                   name=f'{prefix}_norm{i}')
            dense = keras.layers.Dense(units, dtype=OUTPUT_DTYPE if last else policy, name=f'{prefix}_dense{i}')
            layers.append((norm, dense))
        return layers

    def build(self, input_shape=None):
        d, l = self.state_dim, self.latent_dim
        for layers, in_dim, skip in ((self.encoder_layers, 2 * d, 0), (self.prior_layers, d, 0),
                                     (self.decoder_layers, d + l, l)):
            width = in_dim
            for i, (norm, dense) in enumerate(layers):
                if norm is not None:
                    norm.build((None, width))
                dense.build((None, width + (skip if i else 0)))
                width = dense.units
        self.built = True

    def _run_mlp(self, layers, x, skip=None):
        for i, (norm, dense) in enumerate(layers):
            if norm is not None:
                x = tf.nn.relu(norm(x))
                if skip is not None:
                    x = tf.concat([x, tf.cast(skip, x.dtype)], axis=-1)
            x = dense(x)
        return x

    def _gaussian(self, layers, x):
        out = tf.cast(self._run_mlp(layers, x), tf.float32)
        return out[:, :self.latent_dim], out[:, self.latent_dim:]

    def posterior(self, x_prev, x_next):
        """(mean, logvar) [B, L] float32 of q(z | x_prev, x_next); states [B, D]."""
        return self._gaussian(self.encoder_layers, tf.concat([x_prev, x_next], axis=-1))

    def prior(self, x_prev):
        """(mean, logvar) [B, L] float32 of the conditional prior p(z | x_prev)."""
        return self._gaussian(self.prior_layers, x_prev)

    def decode(self, z, x_prev):
        """Predicted next state [B, D] float32 = x_prev + decoder(z, x_prev); z [B, L], x_prev [B, D]."""
        z_compute = tf.cast(z, self.compute_dtype)  # cast once, reused by every layer's skip input
        x = tf.concat([tf.cast(x_prev, self.compute_dtype), z_compute], axis=-1)
        delta = self._run_mlp(self.decoder_layers, x, skip=z_compute)
        return tf.cast(x_prev, tf.float32) + tf.cast(delta, tf.float32)

    def sample_next(self, x_prev, noise):
        """Next state [B, D] from the prior: ``z = mean_p + exp(logvar_p / 2) * noise`` (noise [B, L])."""
        p_mean, p_logvar = self.prior(x_prev)
        return self.decode(p_mean + tf.exp(0.5 * p_logvar) * tf.cast(noise, tf.float32), x_prev)

    def call(self, inputs, training=None):
        x_prev = tf.cast(inputs['x_prev'], tf.float32)
        x_next = tf.cast(inputs['x_next'], tf.float32)
        q_mean, q_logvar = self.posterior(x_prev, x_next)
        p_mean, p_logvar = self.prior(x_prev)
        noise = inputs.get('noise') if isinstance(inputs, dict) else None
        z = q_mean if noise is None else q_mean + tf.exp(0.5 * q_logvar) * tf.cast(noise, tf.float32)
        return {'x_pred': self.decode(z, x_prev), 'z': z, 'q_mean': q_mean, 'q_logvar': q_logvar,
                'p_mean': p_mean, 'p_logvar': p_logvar}

    def get_config(self):
        config = super().get_config()
        config.update(state_dim=self.state_dim, latent_dim=self.latent_dim, hidden=self.hidden, width=self.width,
                      gaussian_layers=self.gaussian_layers, decoder_fractions=list(self.decoder_fractions),
                      groups=self.groups)
        return config


def gaussian_kl(q_mean, q_logvar, p_mean, p_logvar):
    """KL(N(q_mean, exp(q_logvar)) || N(p_mean, exp(p_logvar))) per example, summed over the last axis.

    All arguments [..., L] (float32); returns [...].
    """
    return 0.5 * tf.reduce_sum(
        p_logvar - q_logvar + (tf.exp(q_logvar) + tf.square(q_mean - p_mean)) * tf.exp(-p_logvar) - 1.0,
        axis=-1)


def motion_vae_loss(outputs, x_next, kl_weight=1.0):
    """HuMoR's training objective for one batch: reconstruction + ``kl_weight`` * KL(q || p).

    Args:
      outputs: the dict returned by :class:`MotionVAE` (float32).
      x_next: [B, D] true next states (float32, the state's unit).
      kl_weight: weight of the KL term (>= 0).

    Returns:
      (loss, metrics): float32 scalar; dict with 'reconstruction' (squared error summed over the state,
      mean over the batch) and 'kl' (summed over the latent, mean over the batch).
    """
    if isinstance(kl_weight, bool) or not isinstance(kl_weight, (int, float)) or kl_weight < 0:
        raise ValueError(f'kl_weight must be a number >= 0; received kl_weight={kl_weight!r}')
    x_next = tf.cast(x_next, tf.float32)
    reconstruction = tf.reduce_mean(tf.reduce_sum(tf.square(outputs['x_pred'] - x_next), axis=-1))
    kl = tf.reduce_mean(gaussian_kl(outputs['q_mean'], outputs['q_logvar'], outputs['p_mean'],
                                    outputs['p_logvar']))
    return reconstruction + kl_weight * kl, {'reconstruction': reconstruction, 'kl': kl}


def motion_state_pairs(joints_mm, fps):
    """HuMoR-style consecutive pose states of one clip: ``(x_prev, x_next)``, each [T - 2, 6 J] float32.

    A state holds the joint positions relative to the previous frame's root on the floor (the root's x
    and z subtracted, height kept; m) and the joint velocities (m/s), both frames of a pair expressed
    relative to the same reference (the root of frame t - 1), as HuMoR canonicalizes each step. Pair k
    is (frame k + 1, frame k + 2); a velocity is the difference to the frame before times ``fps``.

    Args:
      joints_mm: [T, J, 3] world joints (mm, y up), joint 0 the root; T >= 3.
      fps: frame rate of the clip (> 0).

    Returns:
      (x_prev, x_next): [T - 2, 6 J] float32, positions (J x 3) then velocities (J x 3) per row.
    """
    joints = np.asarray(joints_mm, np.float64) / MM_PER_M
    if joints.ndim != 3 or joints.shape[0] < 3 or joints.shape[2] != 3:
        raise ValueError(f'joints_mm must be [T >= 3, J, 3]; received shape {joints.shape}')
    if isinstance(fps, bool) or not isinstance(fps, (int, float, np.integer, np.floating)) or not fps > 0:
        raise ValueError(f'fps must be a positive number; received fps={fps!r}')
    velocity = np.diff(joints, axis=0) * fps  # velocity[t - 1] = (joints[t] - joints[t - 1]) * fps
    reference = joints[1:-1, :1, :] * np.array([1.0, 0.0, 1.0])  # root of frame t - 1 on the floor

    def state(positions, velocities):
        return np.concatenate([(positions - reference).reshape(len(reference), -1),
                               velocities.reshape(len(reference), -1)], axis=1).astype(np.float32)

    return state(joints[1:-1], velocity[:-1]), state(joints[2:], velocity[1:])
