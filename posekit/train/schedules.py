"""Learning-rate schedules of MeTRAbs (Sárándi et al., WACV 2023, supplement S2).

Both schedules are two exponential phases: ``base * 3**(-s / (d T))`` until the drop at ``s = d T``, then a
drop by a factor of 30 followed by ``base / 30 * 3**(-(s - d T) / ((1 - d) T))`` to the end. Thus the rate
falls by 3x over each phase. ``s`` is the optimizer step, ``T`` the total number of steps.

- :func:`metrabs_lr`: training from scratch, drop at ``d = 0.92``.
- :func:`finetune_lr`: fine-tuning with two optimizers; ``part='head'`` is a warm restart of the same
  recipe with the drop at ``d = 0.5``; ``part='backbone'`` is the already-dropped rate
  ``base / 30 * 3**(-s / T)``.

The functions accept Python numbers (return a Python float), NumPy arrays (return float64 arrays) and
TensorFlow tensors (return float32 tensors; computed in float64; usable inside ``tf.function``).
:class:`MetrabsSchedule` and :class:`FinetuneSchedule` wrap them as Keras ``LearningRateSchedule``s.
Steps past ``T`` continue the last phase's decay.
"""
import keras
import numpy as np
import tensorflow as tf

METRABS_BASE_LR = 2.12e-4
#: Fraction of training after which the MeTRAbs schedule drops the rate.
METRABS_DROP_FRACTION = 0.92
#: Drop point of the head's warm restart when fine-tuning.
FINETUNE_HEAD_DROP_FRACTION = 0.5
#: Factor by which the rate falls at the drop.
DROP_FACTOR = 30.0
#: Factor by which the rate decays over each phase.
DECAY_FACTOR = 3.0
FINETUNE_PARTS = ('head', 'backbone')


def _check_total_steps(total_steps):
    if isinstance(total_steps, bool) or not isinstance(total_steps, (int, float, np.integer, np.floating)) \
            or not total_steps > 0:
        raise ValueError(f'total_steps must be a positive number; received total_steps={total_steps!r}')


def _check_base(base):
    if isinstance(base, bool) or not isinstance(base, (int, float, np.integer, np.floating)) or not base > 0:
        raise ValueError(f'base must be a positive number; received base={base!r}')


def _two_phase(step, total_steps, base, drop_fraction):
    """base * 3**(-s/(dT)) for s < dT, else base/30 * 3**(-(s - dT)/((1-d)T)), on any array kind."""
    drop = drop_fraction * float(total_steps)
    rest = (1.0 - drop_fraction) * float(total_steps)
    if tf.is_tensor(step):
        s = tf.cast(step, tf.float64)
        before = base * tf.pow(tf.constant(DECAY_FACTOR, tf.float64), -s / drop)
        after = base / DROP_FACTOR * tf.pow(tf.constant(DECAY_FACTOR, tf.float64), -(s - drop) / rest)
        return tf.cast(tf.where(s < drop, before, after), tf.float32)
    s = np.asarray(step, dtype=np.float64)
    if np.any(s < 0):
        raise ValueError(f'step must be >= 0; received step={step!r}')
    before = base * np.power(DECAY_FACTOR, -s / drop)
    after = base / DROP_FACTOR * np.power(DECAY_FACTOR, -(s - drop) / rest)
    out = np.where(s < drop, before, after)
    return float(out) if out.ndim == 0 and not isinstance(step, np.ndarray) else out


def _decay(step, total_steps, base):
    """base/30 * 3**(-s/T) on any array kind."""
    t = float(total_steps)
    if tf.is_tensor(step):
        s = tf.cast(step, tf.float64)
        return tf.cast(base / DROP_FACTOR * tf.pow(tf.constant(DECAY_FACTOR, tf.float64), -s / t), tf.float32)
    s = np.asarray(step, dtype=np.float64)
    if np.any(s < 0):
        raise ValueError(f'step must be >= 0; received step={step!r}')
    out = base / DROP_FACTOR * np.power(DECAY_FACTOR, -s / t)
    return float(out) if out.ndim == 0 and not isinstance(step, np.ndarray) else out


def metrabs_lr(step, total_steps, base=METRABS_BASE_LR):
    """MeTRAbs learning rate at ``step`` (0-based optimizer step) of ``total_steps``.

    ``base * 3**(-s/(0.92 T))`` for ``s < 0.92 T``, then ``base/30 * 3**(-(s - 0.92 T)/(0.08 T))``.
    """
    _check_total_steps(total_steps)
    _check_base(base)
    return _two_phase(step, total_steps, base, METRABS_DROP_FRACTION)


def finetune_lr(step, total_steps, part, base=METRABS_BASE_LR):
    """Fine-tuning learning rate of ``part`` ('head' or 'backbone') at ``step`` of ``total_steps``.

    head: ``base * 3**(-s/(0.5 T))`` for ``s < 0.5 T``, then ``base/30 * 3**(-(s - 0.5 T)/(0.5 T))``.
    backbone: ``base/30 * 3**(-s/T)``.
    """
    _check_total_steps(total_steps)
    _check_base(base)
    if part == 'head':
        return _two_phase(step, total_steps, base, FINETUNE_HEAD_DROP_FRACTION)
    if part == 'backbone':
        return _decay(step, total_steps, base)
    raise ValueError(f'part must be one of {FINETUNE_PARTS}; received part={part!r}')


@keras.saving.register_keras_serializable(package='posekit')
class MetrabsSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Keras schedule computing :func:`metrabs_lr` of the optimizer's step (float32 result)."""

    def __init__(self, total_steps, base=METRABS_BASE_LR):
        _check_total_steps(total_steps)
        _check_base(base)
        self.total_steps = total_steps
        self.base = base

    def __call__(self, step):
        return metrabs_lr(tf.convert_to_tensor(step), self.total_steps, self.base)

    def get_config(self):
        return {'total_steps': self.total_steps, 'base': self.base}


@keras.saving.register_keras_serializable(package='posekit')
class FinetuneSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Keras schedule computing :func:`finetune_lr` of the optimizer's step for ``part`` (float32 result)."""

    def __init__(self, total_steps, part, base=METRABS_BASE_LR):
        _check_total_steps(total_steps)
        _check_base(base)
        if part not in FINETUNE_PARTS:
            raise ValueError(f'part must be one of {FINETUNE_PARTS}; received part={part!r}')
        self.total_steps = total_steps
        self.part = part
        self.base = base

    def __call__(self, step):
        return finetune_lr(tf.convert_to_tensor(step), self.total_steps, self.part, self.base)

    def get_config(self):
        return {'total_steps': self.total_steps, 'part': self.part, 'base': self.base}
