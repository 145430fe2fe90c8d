"""Fitting, evaluating, saving and loading the affine-combining autoencoder (ACAE).

Fit on poses covering the union of all formats' joints (e.g. a stage-1 model's predictions of every
format on the same images, or ground truth of every format derived from the same motion)::

    layer, history = fit_acae(poses_mm, joint_info, n_latents=32)
    err_mm = reconstruction_error(layer, held_out_mm)        # [N] MPJPE per pose, mm
    stats = weight_stats(layer)                               # negative mass, sparsity, ...
    save_acae('acae.npz', layer, joint_info.names)
    layer = load_acae('acae.npz', expected_joint_names=joint_info.names)

Loss of :func:`fit_acae`: mean over (valid) joints and poses of the Euclidean joint error, computed
in metres so that ``l1`` (the weight of the layer's regularization loss) is on the paper's scale; the
history reports it in mm. With ``projected=True`` the error is measured in the image plane instead
(the paper's projected loss): each point is projected to normalised image coordinates ``(x/z, y/z)``
and the difference is scaled to metres by the pose's mean ground-truth depth. With intrinsics the
pixel error is divided by the focal lengths before that scaling, which gives the same value; the
principal point and the focal lengths cancel, so intrinsics may be omitted.

Optimizer: Adam with a piecewise-constant learning rate, multiplied by ``learning_rate_decay_factor`` at each
of ``learning_rate_decay_steps``. Batches are drawn with a stateless RNG seeded by ``seed`` and the step, and the
weights are initialised from ``seed``, so the same seed gives the same weights (on the same machine
and TensorFlow build). The steps run in chunks inside one compiled ``tf.function`` (XLA).
"""

from __future__ import annotations

import os
import zipfile
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
import keras

from posekit import geometry
from posekit.layers.acae import DEFAULT_L1, AffineCombiningAutoencoder

MM_PER_M = 1000.0
# Defaults of fit_acae.
DEFAULT_STEPS = 6000
DEFAULT_BATCH_SIZE = 64
DEFAULT_LEARNING_RATE = 3e-2
DEFAULT_LEARNING_RATE_DECAY_FRACTIONS = (0.6, 0.85)  # decay points as fractions of `steps` when not given
DEFAULT_LEARNING_RATE_DECAY_FACTOR = 0.1
DEFAULT_LOG_EVERY = 250  # steps per compiled chunk and per history entry
# sqrt(|d|^2 + EPS) keeps the Euclidean error differentiable at 0; (1 micrometre)^2 in m^2.
EUCLIDEAN_EPS_M2 = 1e-12
# Points closer to the camera than this (mm) are rejected (projected loss needs z > 0).
MIN_DEPTH_MM = 1.0
# Weights with |w| below this count as zero for the sparsity of weight_stats.
SPARSITY_THRESHOLD = 1e-2

_FILE_FORMAT = 'posekit_acae'
_FILE_VERSION = 1
_FILE_KEYS = ('format', 'version', 'joint_names', 'mirror', 'n_latents', 'n_centre_latents',
              'chiral', 'l1', 'encoder_weights', 'decoder_weights')


# --------------------------------------------------------------------------------------- fitting
def _check_poses(poses, names, valid):
    poses = np.asarray(poses, np.float32)
    n_joints = len(names)
    if poses.ndim != 3 or poses.shape[1:] != (n_joints, 3):
        raise ValueError(f'poses must have shape [N, {n_joints}, 3] (joint_info has {n_joints} '
                         f'joints); got {poses.shape}')
    if len(poses) == 0:
        raise ValueError('poses must contain at least one pose; got 0')
    finite = np.isfinite(poses).all(axis=-1)
    if valid is None:
        valid = finite
    else:
        valid = np.asarray(valid)
        if valid.shape != poses.shape[:2]:
            raise ValueError(f'valid must have shape {poses.shape[:2]}; got {valid.shape}')
        valid = valid.astype(bool) & finite
    if not valid.any(axis=0).all():
        never = [names[j] for j in np.flatnonzero(~valid.any(axis=0))]
        raise ValueError(f'valid: joints {never} are never valid in poses')
    poses = np.where(valid[..., np.newaxis], poses, 0.0).astype(np.float32)
    return poses, valid


def _check_intrinsics(intrinsics, n_poses):
    if intrinsics is None:
        return np.tile(np.eye(3, dtype=np.float32), (n_poses, 1, 1))
    k = np.asarray(intrinsics, np.float32)
    if k.shape == (3, 3):
        k = np.tile(k, (n_poses, 1, 1))
    if k.shape != (n_poses, 3, 3):
        raise ValueError(f'intrinsics must have shape [3, 3] or [{n_poses}, 3, 3]; got '
                         f'{np.asarray(intrinsics).shape}')
    if not (np.all(k[:, 0, 0] > 0) and np.all(k[:, 1, 1] > 0)):
        raise ValueError('intrinsics must have positive focal lengths K[0, 0], K[1, 1]')
    return k


def _euclidean(diff):
    return tf.sqrt(tf.reduce_sum(tf.square(diff), axis=-1) + EUCLIDEAN_EPS_M2)


def _masked_mean(err, valid):
    return tf.reduce_sum(err * valid) / tf.maximum(tf.reduce_sum(valid), 1.0)


def _projected_error_m(gt_m, pred_m, focal, valid):
    """Image-plane error scaled to metres at the mean depth: [B, J] (see module docstring).

    gt_m, pred_m: [B, J, 3] camera frame, m. focal: [B, 2] (fx, fy), px. valid: [B, J] 0/1.
    """
    min_depth = MIN_DEPTH_MM / MM_PER_M
    zero = tf.zeros_like(focal[:, 0])
    # Pixel coordinates up to the principal point (which cancels in the difference).
    k = tf.stack([tf.stack([focal[:, 0], zero, zero], -1), tf.stack([zero, focal[:, 1], zero], -1),
                  tf.stack([zero, zero, zero + 1.0], -1)], -2)
    diff_px = (geometry.project_tf(pred_m, k, min_depth=min_depth)
               - geometry.project_tf(gt_m, k, min_depth=min_depth))
    f = focal[:, tf.newaxis, :]
    mean_depth = (tf.reduce_sum(gt_m[..., 2] * valid, axis=1, keepdims=True)
                  / tf.maximum(tf.reduce_sum(valid, axis=1, keepdims=True), 1.0))
    return _euclidean(diff_px / f * mean_depth[..., tf.newaxis])


def fit_acae(poses, joint_info, n_latents: int = 32, l1: float = DEFAULT_L1, chiral: bool = True,
             steps: int = DEFAULT_STEPS, batch_size: int = DEFAULT_BATCH_SIZE,
             learning_rate: float = DEFAULT_LEARNING_RATE,
             learning_rate_decay_steps: Optional[Sequence[int]] = None,
             learning_rate_decay_factor: float = DEFAULT_LEARNING_RATE_DECAY_FACTOR, projected: bool = False,
             intrinsics=None, seed: int = 0, valid=None, n_centre_latents: Optional[int] = None,
             log_every: int = DEFAULT_LOG_EVERY
             ) -> Tuple[AffineCombiningAutoencoder, Dict[str, np.ndarray]]:
    """Fits an ACAE to poses by Adam on the reconstruction error plus the L1 regularization.

    Args:
      poses: [N, J, 3] poses in mm (any frame; camera frame with z > 0 if ``projected``). NaN
        coordinates mark missing joints.
      joint_info: object with ``.names`` (J str) and ``.mirror`` (J int), e.g. a JointInfo or the
        multi-format "all joints" space, or a dict with keys ``names`` and ``mirror``.
      n_latents: number of latent points L.
      l1: weight of the layer's L1 regularization (relative to the loss in metres).
      chiral: mirror-tied weights (see ``posekit.layers.acae``).
      steps: optimizer steps.
      batch_size: poses per step (drawn uniformly with replacement).
      learning_rate: initial Adam learning rate.
      learning_rate_decay_steps: steps at which the learning rate is multiplied by ``learning_rate_decay_factor``; default
        ``DEFAULT_LEARNING_RATE_DECAY_FRACTIONS`` of ``steps``.
      learning_rate_decay_factor: factor of each decay.
      projected: use the projected (image-plane) loss instead of the 3D loss.
      intrinsics: [3, 3] or [N, 3, 3] camera matrices (px) of the poses' cameras; projected only.
      seed: seed of the initialisation and the batch sampling.
      valid: optional [N, J] bool mask of the joints present; missing joints are left out of the
        loss and of the encoding (see ``AffineCombiningAutoencoder.encode``).
      n_centre_latents: override of the chiral split rule.
      log_every: steps per history entry.

    Returns:
      (layer, history): the fitted layer (its ``encoder_weights()``/``decoder_weights()`` are the
      result) and a dict of numpy arrays, one entry per ``log_every`` steps: ``step`` (steps done),
      ``loss_mm`` (mean training reconstruction error over those steps, mm; image-plane error at
      the mean depth if projected), ``regularization`` (the L1 term, as added to the loss in m) and
      ``learning_rate``.
    """
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f'steps must be a positive int; got {steps!r}')
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f'batch_size must be a positive int; got {batch_size!r}')
    if not learning_rate > 0:
        raise ValueError(f'learning_rate must be positive; got {learning_rate!r}')
    if not isinstance(log_every, (int, np.integer)) or log_every < 1:
        raise ValueError(f'log_every must be a positive int; got {log_every!r}')
    if intrinsics is not None and not projected:
        raise ValueError('intrinsics are only used with projected=True; got projected=False')
    if learning_rate_decay_steps is None:
        learning_rate_decay_steps = [int(round(f * steps)) for f in DEFAULT_LEARNING_RATE_DECAY_FRACTIONS]
    learning_rate_decay_steps = [int(s) for s in learning_rate_decay_steps]
    if any(b <= a for a, b in zip(learning_rate_decay_steps, learning_rate_decay_steps[1:])) or \
            any(s < 0 for s in learning_rate_decay_steps):
        raise ValueError(f'learning_rate_decay_steps must be increasing non-negative ints; got '
                         f'{learning_rate_decay_steps}')

    layer = AffineCombiningAutoencoder(
        n_latents, joint_info=joint_info, chiral=chiral, l1=l1,
        n_centre_latents=n_centre_latents if chiral else None, seed=seed)
    layer.build((None, layer.n_joints, 3))
    poses_mm, valid_np = _check_poses(poses, layer.joint_names, valid)
    n_poses = len(poses_mm)
    if projected:
        depth_ok = (poses_mm[..., 2] >= MIN_DEPTH_MM) | ~valid_np
        if not depth_ok.all():
            raise ValueError(f'projected=True needs camera-frame poses with z >= {MIN_DEPTH_MM} mm '
                             f'at every valid joint; {int((~depth_ok).sum())} joints are closer')
        focal_np = _check_intrinsics(intrinsics, n_poses)[:, [0, 1], [0, 1]]
    else:
        focal_np = np.ones((n_poses, 2), np.float32)
    all_valid = bool(valid_np.all())

    boundaries = learning_rate_decay_steps
    values = [learning_rate * learning_rate_decay_factor ** i for i in range(len(boundaries) + 1)]
    schedule = (keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
                if boundaries else learning_rate)
    optimizer = keras.optimizers.Adam(learning_rate=schedule)
    variables = layer.trainable_variables
    optimizer.build(variables)

    poses_m = tf.constant(poses_mm / MM_PER_M)
    valid_t = tf.constant(valid_np.astype(np.float32))
    focal_t = tf.constant(focal_np)
    seed_t = tf.constant(int(seed), tf.int64)

    def step_fn(step):
        idx = tf.random.stateless_uniform(
            [batch_size], seed=tf.stack([seed_t, tf.cast(step, tf.int64)]), maxval=n_poses,
            dtype=tf.int64)
        x = tf.gather(poses_m, idx)
        v = tf.gather(valid_t, idx)
        with tf.GradientTape() as tape:
            y = layer(x) if all_valid else layer(x, valid=v)
            if projected:
                err = _projected_error_m(x, y, tf.gather(focal_t, idx), v)
            else:
                err = _euclidean(y - x)
            main = _masked_mean(err, v)
            reg = layer.regularization_loss()
            loss = main + reg
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables))
        return main, reg

    @tf.function(jit_compile=True)
    def run_chunk(start, n):
        def body(i, main_sum, reg_sum):
            main, reg = step_fn(start + i)
            return i + 1, main_sum + main, reg_sum + reg
        zero = tf.constant(0.0)
        _, main_sum, reg_sum = tf.while_loop(
            lambda i, *_: i < n, body, (tf.constant(0, tf.int32), zero, zero))
        n_f = tf.cast(n, tf.float32)
        return main_sum / n_f, reg_sum / n_f

    history = {'step': [], 'loss_mm': [], 'regularization': [], 'learning_rate': []}
    done = 0
    while done < steps:
        n = min(log_every, steps - done)
        lr_now = values[int(np.searchsorted(boundaries, done, side='right'))] if boundaries \
            else learning_rate
        main, reg = run_chunk(tf.constant(done, tf.int32), tf.constant(n, tf.int32))
        done += n
        history['step'].append(done)
        history['loss_mm'].append(float(main) * MM_PER_M)
        history['regularization'].append(float(reg))
        history['learning_rate'].append(lr_now)
    history = {k: np.asarray(v) for k, v in history.items()}
    return layer, history


# ------------------------------------------------------------------------------------ evaluation
def reconstruction_error(layer: AffineCombiningAutoencoder, poses, valid=None,
                         batch_size: int = 4096) -> np.ndarray:
    """Per-pose MPJPE (mm) between poses and their ACAE reconstruction.

    Args:
      layer: the autoencoder.
      poses: [N, J, 3] mm; NaN coordinates mark missing joints.
      valid: optional [N, J] bool mask; missing joints are left out of the encoding and the mean.

    Returns:
      [N] float64, mean over the valid joints of the Euclidean error, mm (NaN for a pose without
      valid joints).
    """
    poses = np.asarray(poses, np.float32)
    if poses.ndim != 3 or poses.shape[1:] != (layer.n_joints, 3):
        raise ValueError(f'poses must have shape [N, {layer.n_joints}, 3]; got {poses.shape}')
    finite = np.isfinite(poses).all(axis=-1)
    valid = finite if valid is None else (np.asarray(valid, bool) & finite)
    out = []
    for i in range(0, len(poses), batch_size):
        x = np.where(valid[i:i + batch_size, :, None], poses[i:i + batch_size], 0.0)
        v = valid[i:i + batch_size]
        y = layer(x, valid=None if v.all() else v).numpy()
        err = np.linalg.norm(y.astype(np.float64) - x, axis=-1)
        with np.errstate(invalid='ignore'):
            out.append(np.sum(err * v, axis=1) / np.sum(v, axis=1))
    return np.concatenate(out) if out else np.zeros([0])


def weight_stats(layer: AffineCombiningAutoencoder) -> Dict[str, float]:
    """Summary figures of the normalised weights (supplement S6 quantities).

    Returns a dict of floats:
      ``negative_mass``: sum of the negative weights' magnitudes per column (one output point),
        averaged over all columns of both matrices; 0 for convex combinations.
      ``encoder_negative_mass``, ``decoder_negative_mass``: the same per matrix.
      ``sparsity``: fraction of the weights of both matrices with ``|w| < SPARSITY_THRESHOLD``.
      ``effective_support``: mean over the columns of both matrices of ``(sum |w|)^2 / sum w^2``,
        the number of inputs an output point effectively combines (1 = copies one input).
    """
    mats = {'encoder': layer.encoder_weights().astype(np.float64),
            'decoder': layer.decoder_weights().astype(np.float64)}
    neg = {k: np.sum(np.maximum(-w, 0.0), axis=0) for k, w in mats.items()}
    support = np.concatenate([np.sum(np.abs(w), axis=0) ** 2 / np.sum(w ** 2, axis=0)
                              for w in mats.values()])
    all_w = np.concatenate([w.ravel() for w in mats.values()])
    return {
        'negative_mass': float(np.mean(np.concatenate(list(neg.values())))),
        'encoder_negative_mass': float(np.mean(neg['encoder'])),
        'decoder_negative_mass': float(np.mean(neg['decoder'])),
        'sparsity': float(np.mean(np.abs(all_w) < SPARSITY_THRESHOLD)),
        'effective_support': float(np.mean(support)),
    }


# ------------------------------------------------------------------------------------ save / load
def save_acae(path, layer: AffineCombiningAutoencoder, joint_names: Sequence[str]) -> None:
    """Writes the layer's normalised weights and settings to an npz file.

    Args:
      path: destination (``.npz`` is not appended: the file is written exactly at ``path``).
      layer: the autoencoder.
      joint_names: the J joint names of the layer's joint space (must equal the layer's own names
        when it has them).
    """
    joint_names = [str(n) for n in joint_names]
    if len(joint_names) != layer.n_joints:
        raise ValueError(f'joint_names must have {layer.n_joints} names (the layer\'s joints); got '
                         f'{len(joint_names)}')
    if layer.joint_names is not None and joint_names != layer.joint_names:
        raise ValueError('joint_names differ from the layer\'s joint names: '
                         + _describe_name_difference(layer.joint_names, joint_names))
    mirror = layer.joint_mirror
    arrays = {
        'format': np.array(_FILE_FORMAT),
        'version': np.array(_FILE_VERSION),
        'joint_names': np.array(joint_names, dtype=str),
        'mirror': np.array(mirror if mirror is not None else [], np.int64),
        'n_latents': np.array(layer.n_latents),
        'n_centre_latents': np.array(-1 if layer.n_centre_latents is None
                                     else layer.n_centre_latents),
        'chiral': np.array(layer.chiral),
        'l1': np.array(layer.l1),
        'encoder_weights': layer.encoder_weights(),
        'decoder_weights': layer.decoder_weights(),
    }
    with open(path, 'wb') as f:
        np.savez(f, **arrays)


def load_acae(path, expected_joint_names: Optional[Sequence[str]] = None
              ) -> AffineCombiningAutoencoder:
    """Reads a file written by :func:`save_acae` into a new layer.

    Args:
      path: the npz file.
      expected_joint_names: if given, the file's joint names must equal these (same order).

    Raises:
      FileNotFoundError: if ``path`` does not exist.
      ValueError: naming the file, if it is not a posekit ACAE file (corrupt, foreign, missing
        entries, inconsistent shapes), or naming the differences if its joint names are not
        ``expected_joint_names``.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f'ACAE file {path!r} does not exist')
    try:
        with np.load(path, allow_pickle=False) as f:
            if not hasattr(f, 'files'):
                raise ValueError('not an npz archive')
            missing = [k for k in _FILE_KEYS if k not in f.files]
            if missing:
                raise ValueError(f'missing entries {missing}')
            data = {k: f[k] for k in _FILE_KEYS}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as e:
        raise ValueError(f'{path!r} is not a readable posekit ACAE file: {e}') from None
    if str(data['format']) != _FILE_FORMAT or int(data['version']) != _FILE_VERSION:
        raise ValueError(f'{path!r} is not a posekit ACAE file of version {_FILE_VERSION} '
                         f'(format {str(data["format"])!r}, version {data["version"]})')
    names = [str(n) for n in data['joint_names']]
    if expected_joint_names is not None:
        expected = [str(n) for n in expected_joint_names]
        if names != expected:
            raise ValueError(f'joint names in {path!r} differ from expected_joint_names: '
                             + _describe_name_difference(expected, names))
    mirror = [int(m) for m in data['mirror']]
    n_centre = int(data['n_centre_latents'])
    chiral = bool(data['chiral'])
    try:
        joint_info = {'names': names, 'mirror': mirror} if mirror else None
        layer = AffineCombiningAutoencoder(
            int(data['n_latents']), joint_info=joint_info, chiral=chiral, l1=float(data['l1']),
            n_joints=len(names), n_centre_latents=n_centre if chiral else None)
        layer.set_normalized_weights(data['encoder_weights'], data['decoder_weights'])
    except ValueError as e:
        raise ValueError(f'{path!r} holds an inconsistent ACAE: {e}') from None
    return layer


def _describe_name_difference(expected: Sequence[str], got: Sequence[str]) -> str:
    expected, got = list(expected), list(got)
    missing = [n for n in expected if n not in got]
    extra = [n for n in got if n not in expected]
    if missing or extra:
        return (f'missing {missing} (expected but absent), unexpected {extra} '
                f'({len(got)} names vs {len(expected)} expected)')
    i = next(i for i, (a, b) in enumerate(zip(expected, got)) if a != b)
    return (f'same names in a different order; first difference at index {i}: '
            f'{got[i]!r} instead of {expected[i]!r}')
