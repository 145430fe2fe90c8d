"""Mixed-precision study: where reduced precision pays off, by model size, measured side by side.

Reproduces the question of "Improving the Efficiency of 3D Pose Estimation Model" (FP16 training of
HuMoR: 4 % faster at the original size, about 2x on the 4x-wide MLPs, loss unchanged) on this
project's models and machine::

    python -m experiments.mixed_precision --preset default --out runs/mixed_precision

Models (``Config.models``, widths ``Config.widths``): the residual GCN lifter
(``posekit.models.lifting.build_gcn_lifter``, 128 channels at 1x), the HuMoR-like conditional VAE
(``posekit.models.motion_vae.MotionVAE``, hidden 1024 at 1x) and the MeTRAbs backbone
(``posekit.models.backbones.build_backbone``, its default network, with a ``MetrabsHead`` and a small
mean-relative 3D + 2D L1 loss). Each model is trained from the same initial weights on the same batch
stream for the same number of steps in float32 and in the machine's automatic mixed policy
(``posekit.train.precision.auto_policy()``: mixed_bfloat16 on CPUs with AVX512-BF16/AMX,
mixed_float16 with loss scaling on GPUs; float16 is never used on a CPU), through the one training
loop (``posekit.train.loop.train``), with ``jit_compile`` set alike for both policies.

Method
------
- **Paired, interleaved runs.** The two policies of a model run in two subprocesses (so their peak
  memory is measured apart: ``ru_maxrss`` of each child from ``os.wait4``) that are alive at the same
  time but compute in turns: the parent passes a token, each worker trains for ``turn_seconds`` (at
  least one step; or one breakdown repeat) and hands it back. A change of machine load (the machine is
  shared) thus hits both policies alike. Set-up (imports, data, model build, tracing of the validation and breakdown
  functions) and the first (tracing) training step run concurrently, before the turns start.
- **Step time**: wall time of whole training-loop iterations (data, step, host sync), measured by a
  loop callback, without the first ``1 + timing_warmup`` steps; median and p10-p90 spread.
  ``speedup_vs_fp32 = step_ms_median(float32) / step_ms_median(mixed)``.
- **Losses**: ``final_loss`` is the mean training loss over the last ``loss_window`` steps (identical
  batches for both policies), ``val_loss`` the loss on ``val_batches`` fixed validation batches after
  training (deterministic noise); ``loss_rel_diff = |mixed - float32| / float32``.
- **Breakdown** (the paper's Table 2 analogue): separate ``tf.function``\\ s on one fixed batch --
  forward only, forward + loss, forward + loss + gradients, full step (+ optimizer update) -- timed
  (minimum over ``breakdown_repeats`` turns of one or more calls: contention only adds time) and
  differenced into forward, loss, backward and optimizer ms;
  ``data_ms`` is the time per batch of iterating the input stream alone (it is prefetched in
  parallel with the step, so it is not additive); ``loop_overhead_ms`` is the loop's median step time
  minus the full step.
- **Size**: parameters, forward multiply-accumulates per step and the typical matrix-product width
  (``posekit.train.precision.typical_gemm_dim``). ``auto_choice`` is what the size-aware
  ``posekit.train.precision.choose_policy`` (which measures the same way) decides from the step times.

Outputs in ``--out``: ``results.json`` (one record per model and policy), ``results.md`` (table, paper
comparison, findings) and ``speedup.png`` (speed-up vs model size).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import os
import pathlib
import select
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from absl import flags

from experiments import common

MODEL_KINDS = ('gcn_lifter', 'motion_vae', 'metrabs_backbone')
FLOAT32 = 'float32'
#: Skeleton of the lifting and image sets, and of the MeTRAbs head's joints.
LIFTING_JOINTS = 'h36m_17'
#: Skeleton of the motion model's pose states (SMPL's 24 joints, as HuMoR's SMPL body).
MOTION_JOINTS = 'smpl_24'
MM_PER_M = 1000.0
#: The person's 2D box side is this many times its largest extent in the rendered crops.
CROP_MARGIN = 1.3
#: Limb thickness in the rendered crops, as a fraction of the crop side.
LIMB_THICKNESS_FRACTION = 1.0 / 32.0
PIXEL_MAX = 255.0
#: Epsilon under the square root of the joint errors (finite gradients at zero error), mm^2.
ERROR_EPSILON_MM2 = 1e-6
#: Worker protocol messages (one line each) on the worker -> parent pipe; the parent answers GO.
READY, YIELD, DONE, GO = b'ready', b'yield', b'done', b'go'
BYTES_PER_MIB = 1024.0  # ru_maxrss is in KiB on Linux
#: Batches pulled from the input stream to time the data part of the breakdown.
DATA_TIMING_BATCHES = 16
#: Breakdown functions faster than this are called several times per turn (at most BREAKDOWN_MAX_CALLS).
BREAKDOWN_TURN_S = 0.25
BREAKDOWN_MAX_CALLS = 4
MS_PER_S = 1000.0

#: The paper's findings (issue text): FP16 training of HuMoR on a GPU.
PAPER_FINDINGS = (
    ('HuMoR, original size (hidden 1024)', '1.04x (4 % faster)', 'unchanged'),
    ('HuMoR, 4x-wide MLPs', 'about 2x', 'unchanged'),
)


@dataclasses.dataclass(frozen=True)
class Config:
    """Study settings (frozen; unknown keys are errors in ``--set``).

    Attributes:
      models: which model kinds (``MODEL_KINDS``) to measure.
      widths: width multipliers of the GCN lifter and the motion VAE (the backbone runs once).
      gcn_channels, gcn_batch: lifter channels at width 1 (128: Liu et al.'s Table 3) and batch size.
      mvae_hidden, mvae_batch, kl_weight: motion VAE hidden units at width 1 (1024: HuMoR), batch
        size and KL weight.
      backbone, image_size, backbone_batch: MeTRAbs backbone name (``build_backbone``), crop side (px)
        and batch size.
      steps, wide_steps: training steps of width-1 models and the backbone / of wider models (the same
        for both policies of a model).
      turn_seconds: a worker hands the token to the other policy after the first step that ends this long
        after its turn began (short turns: a change of machine load hits both policies alike).
      timing_warmup: timed steps dropped (after the tracing step) before the statistics.
      loss_window: training steps at the end averaged into ``final_loss``.
      val_batches: validation batches of ``val_loss``.
      breakdown_repeats: timed calls of each breakdown function.
      learning_rate: Adam learning rate of the lifter and the backbone.
      mvae_learning_rate: Adam learning rate of the motion VAE (1e-4, HuMoR's).
      jit_compile: XLA for the training step (both policies alike; off by default: see the precision
        module docstring).
      float32_outputs: compute the lifter's output layer in float32 (``precision.keep_float32``).
      mixed_policy: the reduced-precision policy measured: 'auto' (the machine's) or a policy name.
      fps, max_frames_per_clip, procedural_subjects, procedural_clips, procedural_seconds: motion data.
      n_images, n_val_images: rendered crops for the backbone.
      pair_timeout_s: a pair of workers still running after this is killed.
      parallel_pairs: pairs (models) measured at the same time; 1 for any timing worth reading (the smoke
        test uses 2 to check the plumbing quickly).
    """

    models: Tuple[str, ...] = MODEL_KINDS
    widths: Tuple[int, ...] = (1, 4)
    gcn_channels: int = 128
    gcn_batch: int = 256
    mvae_hidden: int = 1024
    mvae_batch: int = 256
    kl_weight: float = 1.0
    backbone: str = 'mobile_small'
    image_size: int = 128
    backbone_batch: int = 32
    steps: int = 60
    wide_steps: int = 12
    turn_seconds: float = 1.0
    timing_warmup: int = 2
    loss_window: int = 8
    val_batches: int = 4
    breakdown_repeats: int = 3
    learning_rate: float = 1e-3
    mvae_learning_rate: float = 1e-4
    jit_compile: bool = False
    float32_outputs: bool = True
    mixed_policy: str = 'auto'
    fps: float = 20.0
    max_frames_per_clip: int = 200
    procedural_subjects: int = 8
    procedural_clips: int = 4
    procedural_seconds: float = 6.0
    n_images: int = 512
    n_val_images: int = 128
    pair_timeout_s: float = 1800.0
    parallel_pairs: int = 1

    def __post_init__(self):
        bad = [m for m in self.models if m not in MODEL_KINDS]
        if bad or not self.models:
            raise ValueError(f'models must be a non-empty subset of {MODEL_KINDS}; received models={self.models!r}')
        if not self.widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in self.widths):
            raise ValueError(f'widths must be positive ints; received widths={self.widths!r}')
        for name in ('gcn_channels', 'gcn_batch', 'mvae_hidden', 'mvae_batch', 'image_size', 'backbone_batch',
                     'steps', 'wide_steps', 'loss_window', 'val_batches', 'breakdown_repeats',
                     'max_frames_per_clip', 'procedural_subjects', 'procedural_clips', 'n_images',
                     'n_val_images', 'parallel_pairs'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'{name} must be an int >= 1; received {name}={value!r}')
        if isinstance(self.timing_warmup, bool) or not isinstance(self.timing_warmup, int) or self.timing_warmup < 0:
            raise ValueError(f'timing_warmup must be an int >= 0; received timing_warmup={self.timing_warmup!r}')
        for name in ('steps', 'wide_steps'):
            if getattr(self, name) < self.timing_warmup + 3:
                raise ValueError(f'{name} must be >= timing_warmup + 3 (at least 2 timed steps); received '
                                 f'{name}={getattr(self, name)!r}, timing_warmup={self.timing_warmup!r}')
        if self.mixed_policy not in ('auto', 'mixed_bfloat16', 'mixed_float16'):
            raise ValueError(f"mixed_policy must be 'auto', 'mixed_bfloat16' or 'mixed_float16'; received "
                             f'mixed_policy={self.mixed_policy!r}')
        for name in ('learning_rate', 'mvae_learning_rate', 'pair_timeout_s', 'turn_seconds'):
            if not getattr(self, name) > 0:
                raise ValueError(f'{name} must be > 0; received {name}={getattr(self, name)!r}')
        if not self.kl_weight >= 0:
            raise ValueError(f'kl_weight must be >= 0; received kl_weight={self.kl_weight!r}')


PRESETS = {
    # < 60 s end to end: two tiny models at width 1, a handful of steps, procedural motion.
    'smoke': Config(models=('gcn_lifter', 'motion_vae'), widths=(1,), gcn_channels=16, gcn_batch=64,
                    mvae_hidden=64, mvae_batch=64, steps=8, wide_steps=8, turn_seconds=0.05, timing_warmup=1,
                    loss_window=2, val_batches=1, breakdown_repeats=1, max_frames_per_clip=40,
                    procedural_subjects=4, procedural_clips=1, procedural_seconds=2.0, n_images=16,
                    n_val_images=8, pair_timeout_s=300.0, parallel_pairs=2),
    # All five models (1x/4x GCN and motion VAE, the backbone) in <= 15 min on 2 shared cores.
    'default': Config(),
    # Longer runs and more repeats for a quiet machine (about an hour on 2 cores).
    'paper': Config(widths=(1, 2, 4), steps=200, wide_steps=60, timing_warmup=3, loss_window=20,
                    val_batches=8, breakdown_repeats=7, max_frames_per_clip=600, n_images=2048, n_val_images=256,
                    pair_timeout_s=7200.0),
}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One model of the study: kind, width multiplier, batch size and steps."""
    kind: str
    width: int
    batch: int
    steps: int

    @property
    def name(self) -> str:
        return f'{self.kind}@{self.width}x'


def plan(config: Config) -> List[ModelSpec]:
    """The models to measure, in order."""
    specs = []
    for kind in config.models:
        if kind == 'metrabs_backbone':
            specs.append(ModelSpec(kind, 1, config.backbone_batch, config.steps))
            continue
        batch = config.gcn_batch if kind == 'gcn_lifter' else config.mvae_batch
        for width in config.widths:
            specs.append(ModelSpec(kind, width, batch, config.steps if width == 1 else config.wide_steps))
    return specs


# ----------------------------------------------------------------------------------------------
# Data (made once by the parent, stored as npz, read by every worker)
# ----------------------------------------------------------------------------------------------

def motion_state_pairs(joints_mm: np.ndarray, fps: float) -> Tuple[np.ndarray, np.ndarray]:
    """HuMoR-style consecutive pose states of one clip: (x_prev, x_next), each [T - 2, 6 J] float32.

    A state holds the joint positions relative to the previous frame's root on the floor (the root's x
    and z subtracted, height kept; metres) and the joint velocities (m/s), both frames expressed
    relative to the same reference (frame t - 1), as HuMoR canonicalizes each step.

    Args:
      joints_mm: [T, J, 3] world joints (mm, y up), joint 0 the root; T >= 3.
      fps: frame rate of the clip.
    """
    joints = np.asarray(joints_mm, np.float64) / MM_PER_M
    if joints.ndim != 3 or joints.shape[0] < 3 or joints.shape[2] != 3:
        raise ValueError(f'joints_mm must be [T >= 3, J, 3]; received shape {joints.shape}')
    velocity = np.diff(joints, axis=0) * fps  # velocity[t - 1] = (joints[t] - joints[t - 1]) * fps
    reference = joints[1:-1, :1, :] * np.array([1.0, 0.0, 1.0])  # root of frame t-1 on the floor

    def state(positions, velocities):
        return np.concatenate([(positions - reference).reshape(len(reference), -1),
                               velocities.reshape(len(reference), -1)], axis=1).astype(np.float32)

    return state(joints[1:-1], velocity[:-1]), state(joints[2:], velocity[1:])


def render_crops(inputs2d: np.ndarray, edges: Sequence[Tuple[int, int]], size: int, seed: int):
    """Stick-figure person crops from 2D poses: (images uint8 [N, S, S, 3], coords2d float32 [N, J, 2] px).

    Each pose (any 2D unit) is centred in its crop with its largest extent ``1 / CROP_MARGIN`` of the
    side; limbs are drawn in per-limb colours over a random smooth background with noise.
    """
    import cv2
    rng = np.random.default_rng(seed)
    poses = np.asarray(inputs2d, np.float64)
    low, high = poses.min(axis=1), poses.max(axis=1)
    centre = (low + high) / 2.0
    side = (high - low).max(axis=1) * CROP_MARGIN
    coords = (poses - centre[:, None]) / side[:, None, None] * size + (size - 1) / 2.0
    thickness = max(1, int(round(size * LIMB_THICKNESS_FRACTION)))
    colours = rng.integers(64, 256, (len(edges), 3))
    ramp = np.linspace(0.0, 1.0, size)
    images = np.empty((len(poses), size, size, 3), np.uint8)
    for i, points in enumerate(coords):
        a, b = rng.uniform(0, PIXEL_MAX, (2, 3))
        background = a + (b - a) * ramp[:, None, None] * rng.uniform(0.3, 1.0)
        background = background + rng.normal(0.0, 12.0, (size, size, 3))
        image = np.ascontiguousarray(np.clip(np.broadcast_to(background, (size, size, 3)), 0, PIXEL_MAX)
                                     .astype(np.uint8))
        for (j, k), colour in zip(edges, colours):
            p, q = np.round(points[[j, k]]).astype(int)
            cv2.line(image, tuple(int(v) for v in p), tuple(int(v) for v in q),
                     tuple(int(c) for c in colour), thickness, cv2.LINE_AA)
        images[i] = image
    return images, coords.astype(np.float32)


def make_data(config: Config, mocap_dir: Optional[str], seed: int, log=print) -> Dict[str, np.ndarray]:
    """Every array the workers need (lifting sets, motion states, rendered crops), from one motion load."""
    from posekit import skeletons
    from posekit.data import bodies, lifting, mocap

    start = time.perf_counter()
    clips = mocap.load_motions(mocap_dir, fps=config.fps, seed=seed,
                               max_frames_per_clip=config.max_frames_per_clip,
                               n_subjects=config.procedural_subjects,
                               clips_per_subject=config.procedural_clips,
                               seconds=config.procedural_seconds)
    spec = lifting.LiftingSpec(joints=LIFTING_JOINTS, fps=config.fps, max_frames_per_clip=config.max_frames_per_clip)
    train_clips, val_clips = mocap.split_by_subject(clips, test_fraction=spec.val_fraction, seed=seed)
    data = {}
    for split, split_clips in (('train', train_clips), ('val', val_clips)):
        lift = lifting.make_lifting_set(split_clips, spec, split, seed)
        data[f'lift_{split}_inputs'] = lift.inputs
        data[f'lift_{split}_targets'] = lift.targets
        prev, nxt = [], []
        for clip in split_clips:
            joints = bodies.format_joints(clip.motion, MOTION_JOINTS, subject=clip.subject)
            if len(joints) >= 3:
                p, n = motion_state_pairs(joints, clip.motion.fps)
                prev.append(p)
                nxt.append(n)
        data[f'motion_{split}_prev'] = np.concatenate(prev)
        data[f'motion_{split}_next'] = np.concatenate(nxt)
        n_images = config.n_images if split == 'train' else config.n_val_images
        rng = np.random.default_rng([seed, 1 if split == 'train' else 2])
        pick = rng.choice(len(lift), size=min(n_images, len(lift)), replace=False)
        images, coords2d = render_crops(lift.inputs[pick], skeletons.get(LIFTING_JOINTS).edges, config.image_size,
                                        seed=seed + (0 if split == 'train' else 1))
        data[f'image_{split}_images'] = images
        data[f'image_{split}_coords2d'] = coords2d
        data[f'image_{split}_coords3d'] = lift.targets[pick]
    log(f'data: {len(clips)} clips ({"procedural" if not mocap_dir else mocap_dir}); '
        + ', '.join(f'{k} {v.shape}' for k, v in data.items() if k.endswith(('inputs', 'prev', 'images')))
        + f' ({time.perf_counter() - start:.1f} s)')
    return data


# ----------------------------------------------------------------------------------------------
# Worker: one (model, policy) in its own process
# ----------------------------------------------------------------------------------------------

class _Baton:
    """The worker's side of the token protocol (one line per message over two pipes)."""

    def __init__(self, read_fd: int, write_fd: int):
        self._read = os.fdopen(read_fd, 'rb', buffering=0)
        self._write = os.fdopen(write_fd, 'wb', buffering=0)

    def send(self, message: bytes):
        self._write.write(message + b'\n')

    def wait(self):
        line = b''
        while not line.endswith(b'\n'):
            chunk = self._read.read(1)
            if not chunk:
                raise SystemExit('the parent closed the token pipe')
            line += chunk
        if line.strip() != GO:
            raise SystemExit(f'unexpected token message {line!r}')

    def hand_over(self, message: bytes = YIELD):
        """Gives the token back and blocks until it returns."""
        self.send(message)
        self.wait()


class _StepTimer:
    """Training-loop callback: per-iteration wall times and losses; hands the token over every ``turn_seconds``."""

    def __init__(self, baton: _Baton, turn_seconds: float, total_steps: int):
        self.baton = baton
        self.turn_seconds = turn_seconds
        self.total_steps = total_steps
        self.durations_s: List[float] = []
        self.losses: List[float] = []
        self._start = None
        self._turn_start = None

    def __call__(self, step, logs):
        now = time.perf_counter()
        self.losses.append(float(logs['loss']))
        if self._start is not None:
            self.durations_s.append(now - self._start)
        if step == 1:
            self.baton.hand_over(READY)  # set-up and tracing are over; timing starts with the token
            self._turn_start = time.perf_counter()
        elif step < self.total_steps and now - self._turn_start >= self.turn_seconds:
            self.baton.hand_over(YIELD)
            self._turn_start = time.perf_counter()
        self._start = time.perf_counter()


def _stream(arrays, batch, seed, start_step, transform=None):
    """Endless batches k = start_step, ...: ``batch_indices(n, batch, seed, k)`` gathered from ``arrays``."""
    import tensorflow as tf
    from posekit.data.lifting import batch_indices
    constants = [tf.constant(a) for a in arrays]
    n = len(arrays[0])

    def make(step):
        idx = batch_indices(n, batch, seed, step)
        values = tuple(tf.gather(c, idx) for c in constants)
        return transform(values) if transform is not None else values

    return (tf.data.Dataset.range(start_step, np.iinfo(np.int64).max)
            .map(make, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE))


def _backbone_with_head_class():
    import keras

    class BackboneWithHead(keras.Model):
        """images [B, S, S, 3] in [0, 1] -> {'coords2d' [B, J, 2] px, 'coords3d_rel' [B, J, 3] mm} (float32)."""

        def __init__(self, backbone, head, **kwargs):
            super().__init__(**kwargs)
            self.backbone, self.head = backbone, head

        def build(self, input_shape):
            self.head.build((None, None, None, self.backbone.output_shape[-1]))
            self.built = True

        def call(self, images, training=None):
            coords2d, coords3d = self.head(self.backbone(images, training=training))
            return {'coords2d': coords2d, 'coords3d_rel': coords3d}

    return BackboneWithHead


def _backbone_with_head(backbone, head, **kwargs):
    """The MeTRAbs backbone followed by a MetrabsHead (a small Keras model, built on first use)."""
    return _backbone_with_head_class()(backbone, head, **kwargs)


class _Task:
    """Model, loss and data of one ModelSpec (built inside the policy scope by the worker)."""

    def __init__(self, spec: ModelSpec, config: Config, data, seed: int):
        import tensorflow as tf
        from posekit.train import precision
        self.spec, self.config, self.seed = spec, config, seed
        self.float32_output_layers = []
        if spec.kind == 'gcn_lifter':
            from posekit import skeletons
            from posekit.data import lifting
            from posekit.models.lifting import build_gcn_lifter
            self.model = build_gcn_lifter(skeletons.get(LIFTING_JOINTS).adjacency(),
                                          channels=config.gcn_channels * spec.width)
            if config.float32_outputs:
                precision.keep_float32(self.model)
                self.float32_output_layers = ['output_gconv']

            def as_set(split):
                n = len(data[f'lift_{split}_inputs'])
                return lifting.LiftingSet(
                    inputs=data[f'lift_{split}_inputs'], targets=data[f'lift_{split}_targets'],
                    camera_ids=np.zeros(n, np.int32), subjects=np.full(n, 'x'), clip_ids=np.zeros(n, np.int32),
                    frame_ids=np.zeros(n, np.int32), clip_names=['x'], joints=LIFTING_JOINTS)

            train_set, val_set = as_set('train'), as_set('val')
            self.dataset_fn = lambda start: lifting.lifting_dataset(train_set, spec.batch, seed, start)
            self.val_dataset = lifting.lifting_dataset(val_set, spec.batch, seed + 1, 0)
        elif spec.kind == 'motion_vae':
            from posekit.models.motion_vae import MotionVAE
            state_dim = data['motion_train_prev'].shape[1]
            self.model = MotionVAE(state_dim, hidden=config.mvae_hidden, width=spec.width)
            self.model.build()
            arrays = {split: (data[f'motion_{split}_prev'], data[f'motion_{split}_next'])
                      for split in ('train', 'val')}
            self.dataset_fn = lambda start: _stream(arrays['train'], spec.batch, seed, start)
            self.val_dataset = _stream(arrays['val'], spec.batch, seed + 1, 0)
        else:
            from posekit.models.backbones import build_backbone
            from posekit.models.metrabs import MetrabsHead
            size = config.image_size
            backbone = build_backbone(config.backbone, input_shape=(size, size, 3))
            head = MetrabsHead(data['image_train_coords2d'].shape[1], stride=size // backbone.output_shape[1],
                               name='metrabs_head')
            self.model = _backbone_with_head(backbone, head, name=f'{config.backbone}_metrabs')
            self.model.build((None, size, size, 3))

            def to_float(values):
                image, c2d, c3d = values
                return tf.cast(image, tf.float32) / PIXEL_MAX, c2d, c3d

            arrays = {split: (data[f'image_{split}_images'], data[f'image_{split}_coords2d'],
                              data[f'image_{split}_coords3d']) for split in ('train', 'val')}
            self.dataset_fn = lambda start: _stream(arrays['train'], spec.batch, seed, start, to_float)
            self.val_dataset = _stream(arrays['val'], spec.batch, seed + 1, 0, to_float)
        self.example_batch = next(iter(self.dataset_fn(0)))

    # The three functions below run inside tf.function.
    def forward(self, batch, step, training):
        import tensorflow as tf
        if self.spec.kind == 'motion_vae':
            x_prev, x_next = batch
            noise = tf.random.stateless_normal([tf.shape(x_prev)[0], self.model.latent_dim],
                                               seed=tf.stack([tf.constant(self.seed, tf.int64),
                                                              tf.cast(step, tf.int64)]))
            return self.model({'x_prev': x_prev, 'x_next': x_next, 'noise': noise}, training=training)
        return self.model(batch[0], training=training)

    def loss(self, outputs, batch):
        import tensorflow as tf
        if self.spec.kind == 'gcn_lifter':
            error = tf.cast(outputs, tf.float32) - batch[1]
            mpjpe = tf.reduce_mean(tf.sqrt(tf.reduce_sum(tf.square(error), axis=-1) + ERROR_EPSILON_MM2))
            return mpjpe, {}
        if self.spec.kind == 'motion_vae':
            from posekit.models.motion_vae import motion_vae_loss
            return motion_vae_loss(outputs, batch[1], kl_weight=self.config.kl_weight)
        from posekit.models.metrabs import BOX_SIZE_MM
        from posekit.train.losses_metrabs import masked_mean, mean_relative_loss
        loss3d = mean_relative_loss(outputs['coords3d_rel'], batch[2])
        scale = (BOX_SIZE_MM / MM_PER_M) / float(self.config.image_size)
        loss2d = masked_mean(tf.abs(tf.cast(outputs['coords2d'], tf.float32) - batch[1]) * scale)
        return loss3d + loss2d, {'loss3d': loss3d, 'loss2d': loss2d}

    def loss_fn(self, model, batch, step, training):
        del model
        return self.loss(self.forward(batch, step, training), batch)


def _median_ms(seconds):
    return float(np.median(seconds) * MS_PER_S)


def run_worker(spec_path: str):
    """Trains and measures one (model, policy); writes the result JSON named in the spec file."""
    with open(spec_path) as f:
        job = json.load(f)
    config = Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in job['config'].items()})
    spec = ModelSpec(**job['spec'])
    policy, seed = job['policy'], job['seed']
    baton = _Baton(job['read_fd'], job['write_fd'])
    result = {'model': spec.name, 'kind': spec.kind, 'width': spec.width, 'policy': policy,
              'batch_size': spec.batch, 'steps': spec.steps, 'ok': False}
    try:
        _measure(job, config, spec, policy, seed, baton, result)
        result['ok'] = True
    except BaseException as error:  # reported in the record; the parent marks the pair failed
        import traceback
        result['error'] = f'{type(error).__name__}: {error}'
        traceback.print_exc()
    finally:
        common.write_json(job['result_path'], result)
        try:
            baton.send(DONE)
        except OSError:
            pass


def _phase(name, start=[None]):
    """Prints the time since the previous phase to the worker's log."""
    now = time.perf_counter()
    if start[0] is not None:
        print(f'[worker] {name}: {now - start[0]:.1f} s', file=sys.stderr, flush=True)
    start[0] = now


def _measure(job, config, spec, policy, seed, baton, result):
    _phase('start')
    import keras
    import tensorflow as tf
    from posekit.train import loop, precision

    data = dict(np.load(job['data_path']))
    _phase('import and data')
    keras.utils.set_random_seed(seed)
    with precision.policy_scope(policy):
        task = _Task(spec, config, data, seed)
    model = task.model
    if spec.kind == 'motion_vae':
        example_inputs = {'x_prev': task.example_batch[0], 'x_next': task.example_batch[1],
                          'noise': tf.zeros([spec.batch, model.latent_dim])}
    else:
        example_inputs = task.example_batch[0]
    _phase('build')
    sizes = precision.gemm_sizes(model, example_inputs)
    _phase('gemm sizes')
    result.update(params=loop.count_params(model), trainable_params=loop.count_params(model, trainable_only=True),
                  gemm_dim_typical=precision.typical_gemm_dim(sizes),
                  forward_macs_per_step=float(sum(size.macs for size in sizes)),
                  float32_layers=task.float32_output_layers,
                  compute_dtype=precision.compute_dtype(policy))
    optimizer = keras.optimizers.Adam(config.mvae_learning_rate if spec.kind == 'motion_vae' else
                                      config.learning_rate)
    optimizer.build(model.trainable_variables)

    # Validation: fixed batches, deterministic noise (step index of the batch), compiled like the step.
    @tf.function(jit_compile=config.jit_compile)
    def val_step(batch, step):
        return task.loss(task.forward(batch, step, False), batch)[0]

    # Trace the validation and breakdown functions now, while both workers set up concurrently (tracing
    # runs nothing: the weights stay untouched until training).
    functions = _breakdown_functions(task, optimizer, config.jit_compile)
    with precision.global_policy(policy):
        val_batches = [batch for _, batch in zip(range(config.val_batches), task.val_dataset)]
        val_step.get_concrete_function(val_batches[0], tf.TensorSpec([], tf.int64))
        for function in functions.values():
            function.get_concrete_function()
    _phase('tracing validation and breakdown')
    timer = _StepTimer(baton, config.turn_seconds, spec.steps)
    train_config = loop.TrainConfig(total_steps=spec.steps, precision=policy, log_every=spec.steps,
                                    checkpoint_every=spec.steps, jit_compile=config.jit_compile, seed=seed,
                                    progress=False, raise_on_nonfinite=False)
    trained = loop.train(model, task.loss_fn, task.dataset_fn, optimizer, train_config, callbacks=[timer])
    _phase('train')
    durations = np.array(timer.durations_s[config.timing_warmup:])
    result.update(
        completed_steps=trained.final_step, step_ms=[float(d * MS_PER_S) for d in timer.durations_s],
        step_ms_median=_median_ms(durations),
        step_ms_spread=[float(np.percentile(durations, 10) * MS_PER_S),
                        float(np.percentile(durations, 90) * MS_PER_S)],
        step_ms_iqr=[float(np.percentile(durations, 25) * MS_PER_S),
                     float(np.percentile(durations, 75) * MS_PER_S)],
        train_losses=timer.losses, final_loss=float(np.mean(timer.losses[-config.loss_window:])),
        load_average=list(os.getloadavg()))

    with precision.global_policy(policy):
        val = [float(val_step(batch, tf.constant(k, tf.int64))) for k, batch in enumerate(val_batches)]
    result['val_loss'] = float(np.mean(val))
    _phase('validation')
    result['breakdown'] = _breakdown(functions, task, config, policy, baton, result['step_ms_median'])


def _breakdown_functions(task, optimizer, jit):
    """The four tf.functions of the breakdown (module docstring), on the task's fixed example batch."""
    import tensorflow as tf

    model, batch = task.model, task.example_batch
    variables = model.trainable_variables
    step = tf.constant(0, tf.int64)

    @tf.function(jit_compile=jit)
    def forward_only():
        outputs = tf.nest.flatten(task.forward(batch, step, True))
        return tf.add_n([tf.reduce_sum(tf.cast(o, tf.float32)) for o in outputs])

    @tf.function(jit_compile=jit)
    def forward_loss():
        return task.loss_fn(model, batch, step, True)[0]

    @tf.function(jit_compile=jit)
    def forward_loss_gradients():
        with tf.GradientTape() as tape:
            loss = task.loss_fn(model, batch, step, True)[0]
        return loss, tape.gradient(loss, variables)  # returning the gradients keeps them computed

    @tf.function(jit_compile=jit)
    def full_step():
        with tf.GradientTape() as tape:
            loss = task.loss_fn(model, batch, step, True)[0]
        optimizer.apply(tape.gradient(loss, variables), variables)
        return loss

    return {'forward': forward_only, 'forward_loss': forward_loss, 'forward_loss_gradients': forward_loss_gradients,
            'full_step': full_step}


def _breakdown(functions, task, config, policy, baton, loop_step_ms):
    """Forward / loss / backward / optimizer / data ms of one step on a fixed batch (module docstring)."""
    import tensorflow as tf
    from posekit.train import precision

    times = {name: [] for name in functions}
    data_times = []

    def timed_call(function):
        start = time.perf_counter()
        out = function()
        (out[0] if isinstance(out, tuple) else out).numpy()
        return time.perf_counter() - start

    with precision.global_policy(policy):
        for function in functions.values():  # warm up (traced before training; holding the token)
            tf.nest.map_structure(lambda t: t.numpy(), function())
        # Cheap functions are called several times per turn (the minimum is kept: noise only adds time).
        calls = {name: int(min(BREAKDOWN_MAX_CALLS, max(1, BREAKDOWN_TURN_S / timed_call(function))))
                 for name, function in functions.items()}
        _phase('breakdown warm-up')
        for repeat in range(config.breakdown_repeats):
            for name, function in functions.items():
                times[name].extend(timed_call(function) for _ in range(calls[name]))
            iterator = iter(task.dataset_fn(0))  # fresh: its prefetch buffer filled while waiting for the token
            next(iterator)
            start = time.perf_counter()
            for _ in range(DATA_TIMING_BATCHES):
                next(iterator)
            data_times.append((time.perf_counter() - start) / DATA_TIMING_BATCHES)
            if repeat < config.breakdown_repeats - 1:
                baton.hand_over(YIELD)
    _phase('breakdown timing')
    ms = {name: float(np.min(values) * MS_PER_S) for name, values in times.items()}
    return {
        'data_ms': _median_ms(data_times),
        'forward_ms': ms['forward'],
        'loss_ms': ms['forward_loss'] - ms['forward'],
        'backward_ms': ms['forward_loss_gradients'] - ms['forward_loss'],
        'optimizer_ms': ms['full_step'] - ms['forward_loss_gradients'],
        'full_step_ms': ms['full_step'],
        'loop_overhead_ms': loop_step_ms - ms['full_step'],
        'functions_ms': ms,
    }


# ----------------------------------------------------------------------------------------------
# Parent: pairs of workers taking turns
# ----------------------------------------------------------------------------------------------

class _Worker:
    def __init__(self, process, read_fd, write_fd, log_file, result_path, policy):
        self.process, self.read_fd, self.write_fd = process, read_fd, write_fd
        self.log_file, self.result_path, self.policy = log_file, result_path, policy
        self.buffer = b''
        self.state = 'setup'  # setup -> waiting <-> running -> done
        self.peak_mem_mb = math.nan
        self.returncode = None

    def messages(self):
        chunk = os.read(self.read_fd, 4096)
        if not chunk:
            return None
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b'\n')
        return [line.strip() for line in lines if line.strip()]

    def reap(self):
        if self.returncode is None:
            _, status, usage = os.wait4(self.process.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
            self.process.returncode = self.returncode
            self.peak_mem_mb = usage.ru_maxrss / BYTES_PER_MIB
            os.close(self.read_fd)
            os.close(self.write_fd)
            self.log_file.close()


def _start_worker(job: dict, work_dir: pathlib.Path, tag: str) -> _Worker:
    to_worker_r, to_worker_w = os.pipe()
    from_worker_r, from_worker_w = os.pipe()
    job = dict(job, read_fd=to_worker_r, write_fd=from_worker_w,
               result_path=str(work_dir / f'{tag}.result.json'))
    spec_path = work_dir / f'{tag}.job.json'
    common.write_json(spec_path, job)
    if os.path.exists(job['result_path']):
        os.unlink(job['result_path'])
    log_file = open(work_dir / f'{tag}.log', 'w')
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get('TF_CPP_MIN_LOG_LEVEL', '2'))
    process = subprocess.Popen([sys.executable, '-m', 'experiments.mixed_precision', f'--worker={spec_path}'],
                               cwd=pathlib.Path(__file__).resolve().parents[1], stdout=log_file,
                               stderr=subprocess.STDOUT, pass_fds=(to_worker_r, from_worker_w), env=env)
    os.close(to_worker_r)
    os.close(from_worker_w)
    return _Worker(process, from_worker_r, to_worker_w, log_file, job['result_path'], job['policy'])


def run_pair(spec: ModelSpec, config: Config, policies: Sequence[str], data_path: str, work_dir: pathlib.Path,
             seed: int) -> List[dict]:
    """Runs one worker per policy, passing the token between them; returns their result dicts."""
    base = {'config': dataclasses.asdict(config), 'spec': dataclasses.asdict(spec), 'seed': seed,
            'data_path': data_path}
    workers = [_start_worker(dict(base, policy=p), work_dir, f'{spec.kind}_{spec.width}x_{p}') for p in policies]
    queue: List[_Worker] = []
    running: Optional[_Worker] = None
    deadline = time.monotonic() + config.pair_timeout_s
    try:
        while any(w.state != 'done' for w in workers):
            alive = {w.read_fd: w for w in workers if w.state != 'done'}
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                raise TimeoutError(f'{spec.name}: workers still running after {config.pair_timeout_s} s')
            readable, _, _ = select.select(list(alive), [], [], min(timeout, 5.0))
            for fd in readable:
                worker = alive[fd]
                messages = worker.messages()
                if messages is None:  # EOF: the worker exited
                    messages = [DONE]
                for message in messages:
                    if message in (READY, YIELD):
                        worker.state = 'waiting'
                        queue.append(worker)
                    elif message == DONE:
                        worker.state = 'done'
                    if worker is running and worker.state != 'running':
                        running = None
                if worker.state == 'done':
                    worker.reap()
                    if worker in queue:
                        queue.remove(worker)
            # Grant the token once nobody computes and every live worker waits for it (FIFO: alternation).
            if running is None and queue and all(w.state in ('waiting', 'done') for w in workers):
                running = queue.pop(0)
                running.state = 'running'
                os.write(running.write_fd, GO + b'\n')
    finally:
        for worker in workers:
            if worker.returncode is None:
                if worker.process.poll() is None:
                    worker.process.kill()
                worker.reap()
    results = []
    for worker in workers:
        try:
            with open(worker.result_path) as f:
                result = json.load(f)
        except (OSError, ValueError):
            result = {'model': spec.name, 'kind': spec.kind, 'width': spec.width, 'policy': worker.policy,
                      'ok': False, 'error': f'no result (exit code {worker.returncode})'}
        result['peak_mem_mb'] = worker.peak_mem_mb
        result['exit_code'] = worker.returncode
        results.append(result)
    return results


def pair_records(results: Sequence[dict], mixed_policy: str) -> List[dict]:
    """Adds speed-up, loss differences (versus the float32 record) and the size-aware choice to the records.

    ``auto_choice`` is what ``posekit.train.precision.choose_policy`` decides from these step times
    (the mixed policy if at least ``MIN_SPEEDUP`` times faster, else float32).
    """
    from posekit.train.precision import decide_policy
    by_policy = {r['policy']: r for r in results}
    fp32, mixed = by_policy.get(FLOAT32), by_policy.get(mixed_policy)
    records = []
    for record in results:
        record = dict(record)
        if fp32 is not None and mixed is not None and fp32.get('ok') and mixed.get('ok'):
            record['speedup_vs_fp32'] = fp32['step_ms_median'] / record['step_ms_median']
            record['auto_choice'] = decide_policy(fp32['step_ms_median'], mixed['step_ms_median'], mixed_policy)
            for key, diff_key in (('final_loss', 'loss_rel_diff'), ('val_loss', 'val_loss_rel_diff')):
                record[diff_key] = abs(record[key] - fp32[key]) / abs(fp32[key]) if fp32[key] else math.nan
        records.append(record)
    return records


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------

def findings(records: Sequence[dict], mixed_policy: str) -> List[Tuple[str, bool, str]]:
    """(claim, holds, evidence) for the acceptance criteria."""
    mixed = sorted([r for r in records if r['policy'] == mixed_policy and r.get('ok')],
                   key=lambda r: r['forward_macs_per_step'])
    out = []
    if not mixed:
        return [('measurements complete', False, 'no successful mixed-precision record')]
    for kind in sorted({r['kind'] for r in mixed}):
        family = sorted([r for r in mixed if r['kind'] == kind], key=lambda r: r['width'])
        if len(family) > 1:
            speedups = [r['speedup_vs_fp32'] for r in family]
            grows = all(b > a for a, b in zip(speedups, speedups[1:]))
            out.append((f'{kind}: speed-up grows with width', grows,
                        ', '.join(f'{r["width"]}x {r["speedup_vs_fp32"]:.2f}' for r in family)))
    largest = max(mixed, key=lambda r: r['params'])
    out.append((f'largest model ({largest["model"]}, {largest["params"] / 1e6:.0f}M params) >= 1.3x faster',
                largest['speedup_vs_fp32'] >= 1.3, f'{largest["speedup_vs_fp32"]:.2f}x'))
    worst = max(mixed, key=lambda r: r.get('loss_rel_diff', math.inf))
    out.append(('final losses within 5 % of float32', worst.get('loss_rel_diff', math.inf) <= 0.05,
                f'largest relative difference {100 * worst.get("loss_rel_diff", math.inf):.1f} % ({worst["model"]})'))
    worst_val = max(mixed, key=lambda r: r.get('val_loss_rel_diff', math.inf))
    out.append(('(informative) validation losses within 5 % of float32',
                worst_val.get('val_loss_rel_diff', math.inf) <= 0.05,
                f'largest relative difference {100 * worst_val.get("val_loss_rel_diff", math.inf):.1f} % '
                f'({worst_val["model"]}; after a few steps, BatchNorm moving statistics of the backbone are far from '
                'converged and inference-mode losses are sensitive to them)'))
    return out


def markdown_report(records: Sequence[dict], context: dict) -> str:
    mixed_policy = context['mixed_policy']
    lines = ['# Mixed-precision study', '',
             f'Command: `{context["command"]}`  ', f'Machine: {context["machine"]}; load average during the runs '
             f'{context["load"]}; wall time {context["wall_time_s"]:.0f} s.  ',
             'The machine was shared with other jobs: absolute times are inflated and noisy; the two policies of '
             'a model ran interleaved (token passing), so their ratio is less affected. Re-run on a quiet '
             'machine for final numbers.', '',
             f'float32 vs `{mixed_policy}` (the machine\'s automatic mixed policy), same seeds, batches and steps, '
             f'jit_compile={context["jit_compile"]} for both.', '',
             '| model | params | fwd GMAC/step | GEMM width | batch | policy | step ms (median) | '
             'p10-p90 ms | speed-up | final loss | val loss | loss diff | val diff | peak MB | auto choice |',
             '|' + '---|' * 15]
    for r in records:
        if not r.get('ok'):
            error = ' '.join(str(r.get('error', '?')).split())[:200].replace('|', '/')
            lines.append(f'| {r["model"]} | | | | | {r["policy"]} | failed: {error} |' + ' |' * 8)
            continue
        lines.append(
            f'| {r["model"]} | {r["params"] / 1e6:.2f}M | {r["forward_macs_per_step"] / 1e9:.2f} | '
            f'{r["gemm_dim_typical"]:.0f} | {r["batch_size"]} | {r["policy"]} | {r["step_ms_median"]:.1f} | '
            f'{r["step_ms_spread"][0]:.0f}-{r["step_ms_spread"][1]:.0f} | {common.format_number(r.get("speedup_vs_fp32"), ".2f")} | '
            f'{r["final_loss"]:.4g} | {r["val_loss"]:.4g} | {common.format_number(100 * r.get("loss_rel_diff", math.nan))} % | '
            f'{common.format_number(100 * r.get("val_loss_rel_diff", math.nan))} % | {common.format_number(r["peak_mem_mb"], ".0f")} | '
            f'{r.get("auto_choice", "-")} |')
    lines += ['', '## Step breakdown (ms; Table 2 analogue)', '',
              'Separate tf.functions on one fixed batch: forward, +loss, +gradients, +optimizer (minimum time over '
              'the repeats); differences give each part. Data = iterating the input stream alone (prefetched in '
              'parallel with the step, not '
              'additive); loop overhead = loop median step minus the full step (negative values are noise).', '',
              '| model | policy | data | forward | loss | backward | optimizer | full step | loop overhead |',
              '|' + '---|' * 9]
    for r in records:
        if r.get('ok'):
            b = r['breakdown']
            lines.append(f'| {r["model"]} | {r["policy"]} | {b["data_ms"]:.1f} | {b["forward_ms"]:.1f} | '
                         f'{b["loss_ms"]:.1f} | {b["backward_ms"]:.1f} | {b["optimizer_ms"]:.1f} | '
                         f'{b["full_step_ms"]:.1f} | {b["loop_overhead_ms"]:.1f} |')
    lines += ['', 'GEMM width: MAC-weighted median of min(M, K, N) over the forward pass\'s matrix products '
              '(`precision.typical_gemm_dim`). Auto choice: what `precision.choose_policy` decides from these step '
              'times (the mixed policy only if >= 1.05x faster).', '', '## Acceptance', '']
    lines += [f'- [{"x" if ok else " "}] {claim}: {evidence}'
              for claim, ok, evidence in findings(records, mixed_policy)]
    lines += ['', '## Comparison with the paper', '',
              '"Improving the Efficiency of 3D Pose Estimation Model" trained HuMoR with FP16 on a GPU:', '',
              '| model | paper speed-up (FP16, GPU) | paper loss | here (`' + mixed_policy + '`, CPU) '
              '| loss diff here |',
              '|---|---|---|---|---|']
    here = {r['model']: r for r in records if r['policy'] == mixed_policy and r.get('ok')}
    for (label, speedup, loss), key in zip(PAPER_FINDINGS, ('motion_vae@1x', 'motion_vae@4x')):
        r = here.get(key)
        lines.append(f'| {label} | {speedup} | {loss} | '
                     f'{common.format_number(r and r.get("speedup_vs_fp32"), ".2f")}x ({key}) | '
                     f'{common.format_number(r and 100 * r.get("loss_rel_diff", math.nan))} % |')
    lines += ['', context['discussion'], '']
    return '\n'.join(lines)


LOSS_AGREEMENT = 0.05
"""Final training losses of the mixed policy within this relative difference of float32 count as unchanged."""


def checks(records: Sequence[dict], mixed_policy: str) -> List[common.Check]:
    """The paper's findings on the measurements: the gain grows with model size; the losses are unchanged."""
    here = {r['model']: r for r in records if r['policy'] == mixed_policy and r.get('ok')}
    out = []
    for kind in MODEL_KINDS:
        widths = sorted((r['width'], r) for r in here.values() if r['kind'] == kind)
        if len(widths) >= 2:
            (w0, small), (w1, large) = widths[0], widths[-1]
            out.append(common.Check(f'{kind}: the {mixed_policy} speed-up grows with model size ({w0}x -> {w1}x width)',
                                    large['speedup_vs_fp32'] > small['speedup_vs_fp32'],
                                    f'{small["speedup_vs_fp32"]:.2f}x -> {large["speedup_vs_fp32"]:.2f}x'))
    diffs = [abs(r['loss_rel_diff']) for r in here.values() if math.isfinite(r.get('loss_rel_diff', math.nan))]
    if diffs:
        out.append(common.Check(f'final training losses of {mixed_policy} within {LOSS_AGREEMENT:.0%} of float32',
                                max(diffs) <= LOSS_AGREEMENT, f'largest relative difference {100 * max(diffs):.2f} %'))
    return out


def discussion(records: Sequence[dict], mixed_policy: str) -> str:
    """A short reading of the measurements against the paper (generated from the numbers)."""
    here = {r['model']: r for r in records if r['policy'] == mixed_policy and r.get('ok')}
    parts = []
    small, wide = here.get('motion_vae@1x'), here.get('motion_vae@4x')
    if small and wide:
        parts.append(
            f'As in the paper, the gain grows with width: the HuMoR-like model gets '
            f'{small["speedup_vs_fp32"]:.2f}x at the original size (paper: 1.04x) and '
            f'{wide["speedup_vs_fp32"]:.2f}x at 4x width (paper: about 2x), '
            f'with training losses within {100 * max(small["loss_rel_diff"], wide["loss_rel_diff"]):.1f} % of '
            f'float32 (paper: unchanged). The mechanism differs: here bfloat16 runs on the CPU\'s AMX units '
            f'through oneDNN (no loss scaling needed) and already pays at the original width, where the paper '
            f'measured 4 % on a GPU; at 4x the CPU run is held back by the float32 optimizer update.')
    if wide:
        b = wide['breakdown']
        parts.append(
            f'At 4x the optimizer update, which stays float32 (master weights), takes {b["optimizer_ms"]:.0f} ms '
            f'of the {b["full_step_ms"]:.0f} ms mixed step: it bounds the speed-up (Amdahl), as does any '
            f'fixed per-step cost for the small models.')
    gcn_small = here.get('gcn_lifter@1x')
    if gcn_small:
        parts.append(
            f'The GCN lifter at 128 channels (typical GEMM width {gcn_small["gemm_dim_typical"]:.0f}) gets '
            f'{gcn_small["speedup_vs_fp32"]:.2f}x.')
    backbone = here.get('metrabs_backbone@1x')
    if backbone:
        parts.append(
            f'The MeTRAbs backbone (narrow depthwise-separable convolutions, GEMM width '
            f'{backbone["gemm_dim_typical"]:.0f}) gets {backbone["speedup_vs_fp32"]:.2f}x: `precision.choose_policy` '
            f'keeps such models in float32.')
    return ' '.join(parts)


def plot_speedups(records: Sequence[dict], mixed_policy: str, path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    mixed = [r for r in records if r['policy'] == mixed_policy and r.get('ok')]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    markers = {'gcn_lifter': 'o', 'motion_vae': 's', 'metrabs_backbone': '^'}
    for ax, key, label in ((axes[0], 'params', 'parameters'),
                           (axes[1], 'forward_macs_per_step', 'forward multiply-accumulates per step')):
        for kind in MODEL_KINDS:
            family = sorted([r for r in mixed if r['kind'] == kind], key=lambda r: r[key])
            if family:
                ax.plot([r[key] for r in family], [r['speedup_vs_fp32'] for r in family],
                        marker=markers[kind], label=kind)
                for r in family:
                    ax.annotate(f'{r["width"]}x', (r[key], r['speedup_vs_fp32']), textcoords='offset points',
                                xytext=(4, 4), fontsize=8)
        ax.axhline(1.0, color='grey', lw=0.8)
        ax.axhline(1.3, color='grey', lw=0.8, ls='--')
        ax.set_xscale('log')
        ax.set_xlabel(label)
        ax.set_ylabel(f'speed-up of {mixed_policy} vs float32')
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle('Mixed precision: training step speed-up vs model size (shared 2-core CPU)')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_experiment(config: Config, out: str, seed: int = 0, mocap_dir: Optional[str] = None, log=print,
                   command: str = '', preset: str = 'default') -> List[dict]:
    """Measures every model of ``plan(config)`` and writes results.json, results.md and speedup.png to ``out``."""
    with common.run_directory(out, EXPERIMENT, config, [seed], dict(mocap=common.folder_fingerprint(mocap_dir))):
        return _run_experiment(config, out, seed, mocap_dir, log, command, preset)


def _run_experiment(config: Config, out: str, seed: int, mocap_dir: Optional[str], log, command: str,
                    preset: str) -> List[dict]:
    from posekit.train import precision

    start = time.perf_counter()
    clock = common.PhaseClock()
    mixed_policy = precision.auto_policy() if config.mixed_policy == 'auto' else config.mixed_policy
    mixed_policy = precision.resolve_policy(mixed_policy)  # refuses float16 on a CPU
    if mixed_policy == FLOAT32:
        raise ValueError('this machine has no reduced-precision policy (auto_policy() is float32): '
                         'nothing to compare')
    out_dir = pathlib.Path(out)
    work_dir = out_dir / 'workers'
    work_dir.mkdir(parents=True, exist_ok=True)
    data_path = work_dir / 'data.npz'
    np.savez(data_path, **make_data(config, mocap_dir, seed, log=log))
    def measure(spec):
        pair_start = time.perf_counter()
        results = run_pair(spec, config, (FLOAT32, mixed_policy), str(data_path), work_dir, seed)
        summary = ', '.join(f'{r["policy"]} {r["step_ms_median"]:.1f} ms' if r.get('ok')
                            else f'{r["policy"]} FAILED ({r.get("error")})' for r in results)
        log(f'{spec.name}: {summary} ({time.perf_counter() - pair_start:.0f} s)')
        return results

    try:
        with concurrent.futures.ThreadPoolExecutor(config.parallel_pairs) as pool:
            all_results = list(pool.map(measure, plan(config)))
    finally:
        data_path.unlink(missing_ok=True)
    records = [record for results in all_results for record in pair_records(results, mixed_policy)]
    loads = [r['load_average'][0] for r in records if 'load_average' in r]
    wall = time.perf_counter() - start
    columns = ('model', 'kind', 'width', 'params', 'policy', 'batch_size', 'steps', 'completed_steps',
               'step_ms_median', 'step_ms_spread', 'step_ms_iqr', 'speedup_vs_fp32', 'final_loss', 'val_loss',
               'loss_rel_diff', 'val_loss_rel_diff', 'peak_mem_mb', 'breakdown', 'auto_choice', 'gemm_dim_typical',
               'forward_macs_per_step', 'trainable_params', 'compute_dtype', 'float32_layers', 'load_average',
               'step_ms', 'train_losses', 'ok', 'error', 'exit_code')
    ordered = [{k: r[k] for k in columns if k in r} for r in records]
    flags_found = sorted(precision.BF16_CPU_FLAGS & precision.cpu_flags())
    machine = (f'{os.cpu_count()} CPUs, bfloat16 CPU flags {flags_found}, '
               f'GPU {precision.gpu_available()}')
    context = dict(command=command, machine=machine, mixed_policy=mixed_policy, jit_compile=config.jit_compile,
                   wall_time_s=wall, load=f'{min(loads):.1f}-{max(loads):.1f}' if loads else '?',
                   discussion=discussion(ordered, mixed_policy))
    common.write_results(out_dir, EXPERIMENT, preset, config, [seed],
                         dict(mixed_policy=mixed_policy, records=ordered), checks(ordered, mixed_policy),
                         dict(command=command, bf16_machine=machine), clock)
    common.atomic_write_text(out_dir / 'results.md', markdown_report(ordered, context))
    if any(r.get('ok') and r['policy'] == mixed_policy for r in ordered):
        plot_speedups(ordered, mixed_policy, out_dir / 'speedup.png')
    log(f'wrote {out_dir}/results.json, results.md, speedup.png ({wall:.0f} s)')
    return ordered


FLAGS = flags.FLAGS
EXPERIMENT = 'mixed_precision'


def define_flags():
    # One device: the study times single-device steps under two policies (no --strategy).
    common.define_common_flags('runs/mixed_precision', test_mocap=False, strategy=False)
    flags.DEFINE_string('worker', None, 'Internal: run one (model, policy) worker from this job file.')


def main(argv):
    del argv
    if FLAGS.worker:
        run_worker(FLAGS.worker)
        return
    config = common.resolve_config(PRESETS, FLAGS.preset, FLAGS.set)
    command = 'python -m experiments.mixed_precision ' + ' '.join(sys.argv[1:])
    run_experiment(config, FLAGS.out, seed=FLAGS.seed, mocap_dir=common.resolve_mocap_dir(FLAGS['mocap-dir'].value),
                   command=command, log=common.stderr_log, preset=FLAGS.preset)


if __name__ == '__main__':
    define_flags()
    common.run_main(main, EXPERIMENT)
