"""Training tasks: a model kind with its loss and its batch stream, in the training loop's contract.

A task builds its model (call :meth:`Task.build` inside ``posekit.train.precision.policy_scope``: layers
read the dtype policy when they are built), computes its loss in float32 whatever the policy, and turns
aligned in-memory arrays into the loop's batch stream (:meth:`Task.batches`, stateless: batch ``k`` is a
pure function of ``k``, see ``posekit.data.pipeline.stateless_batches``). :meth:`Task.forward` and
:meth:`Task.loss` run inside ``tf.function``; :meth:`Task.loss_fn` is ``posekit.train.loop.train``'s
``loss_fn(model, batch, step, training) -> (loss, metrics)``. One class per model kind of the
mixed-precision study (``experiments.mixed_precision``, ``tools/benchmark_precision.py``):

- :class:`LifterTask`: the residual GCN lifter; arrays ``(inputs [N, J, 2] normalized screen coordinates,
  targets [N, J, 3] mm root-relative camera frame)``; loss: MPJPE (mm).
- :class:`MotionVAETask`: the HuMoR-like motion VAE; arrays ``(x_prev, x_next)`` [N, D] pose states
  (``motion_vae.motion_state_pairs``); loss: ``motion_vae_loss``, reparameterization noise drawn
  statelessly from ``(seed, step)`` (the same for every policy and every re-run).
- :class:`BackboneTask`: a MeTRAbs backbone with a ``MetrabsHead`` (``BackboneWithHead``); arrays
  ``(images uint8 [N, S, S, 3], coords2d [N, J, 2] px, coords3d [N, J, 3] mm camera frame)``; loss:
  mean-relative 3D L1 (m) + 2D L1 (px scaled to m by the metric box over the crop side).

:func:`profile_in_turns` builds a task's model under a precision policy, trains it with the loop while
other worker processes take turns (``posekit.train.timing``) and measures it: step times, losses, model size
and the forward/loss/backward/optimizer breakdown; :func:`compare_policies` compares the results of one model
under two policies (speed-up overall and per interleaved round, loss differences, ``precision.decide_policy``).
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from posekit import skeletons
from posekit.data.pipeline import stateless_batches
from posekit.models.backbone_head import BackboneWithHead
from posekit.models.backbones import build_backbone
from posekit.models.lifting import build_gcn_lifter
from posekit.models.metrabs import BOX_SIZE_MM, MetrabsHead
from posekit.models.motion_vae import MotionVAE, motion_vae_loss
from posekit.train import loop, precision, timing
from posekit.train.losses_metrabs import masked_mean, mean_relative_loss

MM_PER_M = 1000.0
PIXEL_MAX = 255.0
#: Added under the square root of the squared joint errors (mm^2): finite gradients at zero error.
ERROR_EPSILON_MM2 = 1e-6
#: The lifter's output layer (``build_gcn_lifter``), kept in float32 by ``LifterTask(float32_outputs=True)``.
LIFTER_OUTPUT_LAYER = 'output_gconv'


def _positive(name, value, kind=int):
    numbers = (int, np.integer) if kind is int else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, numbers) or not value > 0:
        raise ValueError(f'{name} must be a positive {"int" if kind is int else "number"}; received {name}={value!r}')
    return kind(value)


class Task:
    """Base class: subclasses set ``n_arrays`` and implement ``_build`` and ``loss`` (module docstring).

    Attributes:
      learning_rate: the task's Adam learning rate.
      model: the model of the last :meth:`build` (None before).
      float32_layers: names of layers kept in float32 under a mixed policy.
    """
    n_arrays = 0
    transform = None

    def __init__(self, learning_rate):
        self.learning_rate = _positive('learning_rate', learning_rate, float)
        self.model = None
        self.float32_layers = ()

    def build(self):
        """Builds (and returns) the model under the current Keras dtype policy; it becomes ``self.model``."""
        self.model = self._build()
        return self.model

    def batches(self, arrays, batch_size, seed=0, start_step=0):
        """The endless stateless batch stream of ``arrays`` (``n_arrays`` aligned arrays), from batch ``start_step``."""
        arrays = tuple(arrays)
        if len(arrays) != self.n_arrays:
            raise ValueError(f'arrays must hold {self.n_arrays} arrays for {type(self).__name__}; '
                             f'received {len(arrays)}')
        return stateless_batches(arrays, batch_size, seed, start_step, self.transform)

    def example_inputs(self, batch):
        """The model's inputs in ``batch`` (for ``precision.gemm_sizes``)."""
        return batch[0]

    def forward(self, batch, step, training):
        """The model's outputs on ``batch`` (``step``: int64 scalar, the batch index)."""
        return self.model(batch[0], training=training)

    def loss_fn(self, model, batch, step, training):
        """``posekit.train.loop.train``'s contract: (float32 loss, metrics) of ``self.model`` (``model``)."""
        if model is not self.model:
            raise ValueError(f'model must be the model this task built; received {getattr(model, "name", model)!r}')
        return self.loss(self.forward(batch, step, training), batch)


class LifterTask(Task):
    """The residual GCN lifter with an MPJPE loss.

    Args:
      channels: features per joint of the hidden layers (128 in Liu et al.'s Table 3).
      skeleton: the joints' skeleton (its adjacency).
      float32_outputs: keep the 3-unit output layer in float32 (``precision.keep_float32``; a bfloat16 output
        would be rounded to about 4 mm at 1 m).
      learning_rate: Adam learning rate.
    """
    n_arrays = 2

    def __init__(self, channels=128, skeleton='h36m_17', float32_outputs=True, learning_rate=1e-3):
        super().__init__(learning_rate)
        self.channels = _positive('channels', channels)
        self.joint_info = skeletons.get(skeleton)
        self.float32_outputs = bool(float32_outputs)

    def _build(self):
        model = build_gcn_lifter(self.joint_info.adjacency(), channels=self.channels)
        if self.float32_outputs:
            precision.keep_float32(model, [LIFTER_OUTPUT_LAYER])
            self.float32_layers = (LIFTER_OUTPUT_LAYER,)
        return model

    def loss(self, outputs, batch):
        """Mean per-joint position error (mm) of outputs [B, J, 3] against ``batch[1]`` [B, J, 3] mm."""
        error = tf.cast(outputs, tf.float32) - tf.cast(batch[1], tf.float32)
        return tf.reduce_mean(tf.sqrt(tf.reduce_sum(tf.square(error), axis=-1) + ERROR_EPSILON_MM2)), {}


class MotionVAETask(Task):
    """The HuMoR-like motion VAE (``MotionVAE``) with HuMoR's loss.

    Args:
      state_dim: numbers per pose state (6 per joint for ``motion_state_pairs``).
      hidden, width: hidden units at width 1 (1024 in HuMoR) and the width multiplier.
      kl_weight: weight of the KL term.
      seed: key of the reparameterization noise (with the batch index).
      learning_rate: Adam learning rate (1e-4: HuMoR's).
    """
    n_arrays = 2

    def __init__(self, state_dim, hidden=1024, width=1, kl_weight=1.0, seed=0, learning_rate=1e-4):
        super().__init__(learning_rate)
        self.state_dim, self.hidden = _positive('state_dim', state_dim), _positive('hidden', hidden)
        self.width = _positive('width', width, float)
        if isinstance(kl_weight, bool) or not isinstance(kl_weight, (int, float)) or not kl_weight >= 0:
            raise ValueError(f'kl_weight must be a number >= 0; received kl_weight={kl_weight!r}')
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f'seed must be an int >= 0; received seed={seed!r}')
        self.kl_weight, self.seed = float(kl_weight), int(seed)

    def _build(self):
        model = MotionVAE(self.state_dim, hidden=self.hidden, width=self.width)
        model.build()
        return model

    def noise(self, batch_size, step):
        """[B, L] standard normal noise, a pure function of (seed, step)."""
        key = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(step, tf.int64)])
        return tf.random.stateless_normal([batch_size, self.model.latent_dim], seed=key)

    def example_inputs(self, batch):
        return {'x_prev': batch[0], 'x_next': batch[1], 'noise': self.noise(tf.shape(batch[0])[0], 0)}

    def forward(self, batch, step, training):
        noise = self.noise(tf.shape(batch[0])[0], step)
        return self.model({'x_prev': batch[0], 'x_next': batch[1], 'noise': noise}, training=training)

    def loss(self, outputs, batch):
        return motion_vae_loss(outputs, batch[1], kl_weight=self.kl_weight)


class BackboneTask(Task):
    """A MeTRAbs backbone with a ``MetrabsHead`` on person crops (``BackboneWithHead``).

    Args:
      n_points: J, points predicted by the head.
      backbone: ``build_backbone`` name; image_size: crop side S (px).
      learning_rate: Adam learning rate.
    """
    n_arrays = 3

    def __init__(self, n_points, backbone='mobile_small', image_size=128, learning_rate=1e-3):
        super().__init__(learning_rate)
        self.n_points, self.image_size = _positive('n_points', n_points), _positive('image_size', image_size)
        self.backbone = backbone

    @staticmethod
    def transform(batch):
        """uint8 images to float32 in [0, 1]; the labels unchanged."""
        return (tf.cast(batch[0], tf.float32) / PIXEL_MAX,) + tuple(batch[1:])

    def _build(self):
        size = self.image_size
        backbone = build_backbone(self.backbone, input_shape=(size, size, 3))
        head = MetrabsHead(self.n_points, stride=size // backbone.output_shape[1], name='metrabs_head')
        model = BackboneWithHead(backbone, head, name=f'{self.backbone}_metrabs')
        model.build((None, size, size, 3))
        return model

    def loss(self, outputs, batch):
        """Mean-relative 3D L1 (m) + 2D L1 (px x metric box / crop side, m); metrics ``loss3d`` and ``loss2d``."""
        loss3d = mean_relative_loss(outputs['coords3d_rel'], batch[2])
        scale = (BOX_SIZE_MM / MM_PER_M) / float(self.image_size)
        loss2d = masked_mean(tf.abs(tf.cast(outputs['coords2d'], tf.float32) - batch[1]) * scale)
        return loss3d + loss2d, {'loss3d': loss3d, 'loss2d': loss2d}


def profile_in_turns(task: Task, arrays, batch_size: int, policy: str, steps: int, turn, *, seed: int = 0,
                     turn_seconds: float = 1.0, timing_warmup: int = 0, loss_window: int = 1, eval_batches: int = 1,
                     breakdown_repeats: int = 1, data_batches: int = 16, jit_compile: bool = False) -> dict:
    """Builds ``task``'s model under ``policy``, trains it ``steps`` steps in turns and measures it.

    In order: seeds Keras (``seed``: the same initial weights under every policy) and builds the model in
    ``precision.policy_scope(policy)``; measures its size; traces the evaluation step and the
    ``timing.step_part_functions`` on the first training batch (while other workers set up: tracing runs
    nothing); trains with ``posekit.train.loop.train`` (Adam at ``task.learning_rate``) and a
    ``timing.StepRecorder`` that hands ``turn`` over every ``turn_seconds``; evaluates the loss on the first
    ``eval_batches`` batches of each evaluation split (batch ``k`` with step ``k``: deterministic noise); times
    the step parts (``timing.time_step_parts``, ``breakdown_repeats`` turns) and, per turn, the input stream
    alone (``timing.seconds_per_batch``). Evaluation and breakdown run under the Keras policy ``policy``.

    Args:
      task: the task (its model is built here).
      arrays: ``{'train': (array, ...), split: (array, ...), ...}``, the task's arrays per split; splits
        other than 'train' are evaluated (stream seed ``seed + 1``).
      batch_size, policy, steps: of the training (``policy``: a resolved name, ``precision.POLICIES``).
      turn: this worker's ``timing.Turn`` (or an object with ``hand_over(message)``).
      seed: Keras seed, batch-stream seed and the loop's seed.
      turn_seconds, timing_warmup: ``timing.StepRecorder``'s turn length; timed steps dropped before the statistics.
      loss_window: last training steps averaged into ``final_loss``.
      eval_batches, breakdown_repeats, data_batches: batches per evaluation split; turns of the breakdown;
        batches of the input stream timed per turn.
      jit_compile: XLA for the training step, the evaluation and the breakdown.

    Returns:
      dict: ``params``, ``trainable_params``, ``gemm_dim_typical`` and ``forward_macs_per_step``
      (``precision.gemm_sizes``), ``float32_layers``, ``compute_dtype``; ``completed_steps``; ``step_ms``
      (every timed iteration), ``step_rounds`` (the interleaved round of each), ``step_ms_median``,
      ``step_ms_spread`` (p10, p90) and ``step_ms_iqr`` (p25, p75) without the first ``timing_warmup``;
      ``train_losses``; ``final_loss``; ``'{split}_loss'`` per evaluation split; ``breakdown``: ``timing.step_parts_ms`` plus ``data_ms`` (median over turns),
      ``loop_overhead_ms`` (loop median minus the full step) and ``functions_ms`` (each function's minimum).
    """
    if policy not in precision.POLICIES:
        raise ValueError(f'policy must be one of {precision.POLICIES}; received policy={policy!r}')
    if 'train' not in arrays:
        raise ValueError(f"arrays must have a 'train' split; received splits {sorted(arrays)}")
    keras.utils.set_random_seed(seed)
    with precision.policy_scope(policy):
        model = task.build()

    def dataset_fn(start_step):
        return task.batches(arrays['train'], batch_size, seed, start_step)

    batch, step0 = next(iter(dataset_fn(0))), tf.constant(0, tf.int64)
    sizes = precision.gemm_sizes(model, task.example_inputs(batch))
    result = dict(params=loop.count_params(model), trainable_params=loop.count_params(model, trainable_only=True),
                  gemm_dim_typical=precision.typical_gemm_dim(sizes),
                  forward_macs_per_step=float(sum(size.macs for size in sizes)),
                  float32_layers=list(task.float32_layers), compute_dtype=precision.compute_dtype(policy))
    optimizer = keras.optimizers.Adam(task.learning_rate)
    optimizer.build(model.trainable_variables)

    @tf.function(jit_compile=jit_compile)
    def eval_step(batch, step):
        return task.loss(task.forward(batch, step, False), batch)[0]

    parts = timing.step_part_functions(lambda: task.forward(batch, step0, True), lambda out: task.loss(out, batch)[0],
                                       model.trainable_variables, optimizer, jit_compile)
    with precision.global_policy(policy):
        evaluation = {split: list(task.batches(split_arrays, batch_size, seed + 1).take(eval_batches))
                      for split, split_arrays in arrays.items() if split != 'train'}
        for batches in evaluation.values():
            eval_step.get_concrete_function(batches[0], tf.TensorSpec([], tf.int64))
        for function in parts.values():
            function.get_concrete_function()
    recorder = timing.StepRecorder(turn, turn_seconds, steps)
    train_config = loop.TrainConfig(total_steps=steps, precision=policy, log_every=steps, checkpoint_every=steps,
                                    jit_compile=jit_compile, seed=seed, progress=False, raise_on_nonfinite=False)
    trained = loop.train(model, task.loss_fn, dataset_fn, optimizer, train_config, callbacks=[recorder])
    stats = timing.summarize(recorder.durations_s[timing_warmup:])
    result.update(completed_steps=trained.final_step, step_ms=[d * timing.MS_PER_S for d in recorder.durations_s],
                  step_rounds=list(recorder.rounds),
                  step_ms_median=stats.median_ms, step_ms_spread=list(stats.spread_ms), step_ms_iqr=list(stats.iqr_ms),
                  train_losses=recorder.losses, final_loss=float(np.mean(recorder.losses[-loss_window:])))
    data_s = []

    def after_repeat(r):  # the input stream alone (a fresh iterator), then another worker's turn
        data_s.append(timing.seconds_per_batch(dataset_fn(0), data_batches))
        if r < breakdown_repeats - 1:
            turn.hand_over(timing.YIELD)

    with precision.global_policy(policy):
        for split, batches in evaluation.items():
            losses = [float(eval_step(b, tf.constant(k, tf.int64))) for k, b in enumerate(batches)]
            result[f'{split}_loss'] = float(np.mean(losses))
        seconds = timing.time_step_parts(parts, breakdown_repeats, after_repeat)
    ms = {name: value * timing.MS_PER_S for name, value in seconds.items()}
    result['breakdown'] = dict(timing.step_parts_ms(seconds), data_ms=float(np.median(data_s)) * timing.MS_PER_S,
                               loop_overhead_ms=stats.median_ms - ms['full_step'], functions_ms=ms)
    return result


def compare_policies(results, reference: str, candidate: str, timing_warmup: int = 0):
    """Records of one model under two policies (:func:`profile_in_turns` results with ``'policy'`` and ``'ok'``)
    compared with the reference policy's record.

    Each record gets ``speedup_vs_fp32`` (the reference's median step over the record's), ``speedup_rounds``
    (the same ratio per interleaved round after ``timing_warmup`` steps, ``timing.round_speedups``) and
    ``speedup_spread`` (their min and max), ``auto_choice`` (``precision.decide_policy``: ``candidate`` only if
    at least ``precision.MIN_SPEEDUP`` times faster) and ``loss_rel_diff``, ``val_loss_rel_diff``,
    ``test_loss_rel_diff`` (|loss - reference loss| / |reference loss| of ``final_loss``, ``val_loss``,
    ``test_loss`` where both have them). When either policy failed, the records are returned unchanged (copies).
    """
    by_policy = {r['policy']: r for r in results}
    ref, cand = by_policy.get(reference), by_policy.get(candidate)
    if not (ref and cand and ref.get('ok') and cand.get('ok')):
        return [dict(r) for r in results]
    choice = precision.decide_policy(ref['step_ms_median'], cand['step_ms_median'], candidate)
    diffs = {'final_loss': 'loss_rel_diff', 'val_loss': 'val_loss_rel_diff', 'test_loss': 'test_loss_rel_diff'}
    out = []
    for r in results:
        rounds = timing.round_speedups(ref['step_ms'][timing_warmup:], ref['step_rounds'][timing_warmup:],
                                       r['step_ms'][timing_warmup:], r['step_rounds'][timing_warmup:]).tolist()
        out.append(dict(r, speedup_vs_fp32=ref['step_ms_median'] / r['step_ms_median'], auto_choice=choice,
                        speedup_rounds=rounds, speedup_spread=[min(rounds), max(rounds)] if rounds else [],
                        **{diff: abs(r[key] - ref[key]) / abs(ref[key]) if ref[key] else float('nan')
                           for key, diff in diffs.items() if key in r and key in ref}))
    return out
