"""Weight sharing in graph networks for 2D-to-3D pose lifting (Liu et al., ECCV 2020), Tables 2-4.

    python -m experiments.gcn_weight_sharing --preset=default --out runs/gcn_ws \\
        [--mocap-dir ../shared/data/cmu_mocap] [--test-mocap-dir ../shared/data/cmu_mocap_test] \\
        [--seeds 0,1,2] [--camera-dir ../shared/data/real_samples/h36m] \\
        [--dataset cmu|h36m --data-dir DIR [--h36m-cameras cams.json]] [--set key=value ...]

Trains residual GCN lifters (``posekit.models.lifting``, Fig. 5) that differ only in how the
graph convolutions share weights, under the paper's controlled settings:

* Table 2: decoupling off/on for full, pre_agg and post_agg sharing, at the same channel count
  (``2_same_channels``) and at matched parameter count (``2_matched_params``: the non-decoupled
  variant is widened with ``channels_for_budget`` to the decoupled one's size);
* Table 3: the 8 variants at 128 channels;
* Table 4: the variants at parameter budgets of about 4.2M, 2.1M and 1.05M.

Every row is the mean ± std over the seeds (``seeds``, ``--seeds``); a finding of the paper is
reported as reproduced only where the difference of the means exceeds that spread.

Data: ``--dataset cmu`` makes lifting sets from motion capture (:mod:`posekit.data.lifting`:
subject-wise train/val split of ``--mocap-dir``; test = all of ``--test-mocap-dir``; procedural
motion when there is no motion folder) on the paper's 16 joints, seen by the real Human3.6M cameras
of ``--camera-dir`` (S1 S5 S6 S7 S8 for train/val, S9 S11 for test, lens distortion applied; the
synthetic rig when the camera file is absent, said in the output, or with ``cameras=rig``); ``--dataset h36m`` reads Human3.6M in the common npz layout
from ``--data-dir`` (:mod:`posekit.data.h36m`, S1 S5 S6 S7 S8 / S9 S11). Training goes through the
shared loop (:func:`posekit.train.loop.train`): Adam, learning rate 1e-3 with exponential decay, MSE on
root-relative 3D in metres (the model predicts metres; metrics are in mm), optional gradient-norm
clipping as SemGCN. Validation curves come from the val split (training subjects held out); the
final model of each run is evaluated on val and, once at the end, on the external test set, which
never influences any choice.

Outputs in ``--out``: ``results.json`` (a list of records: table, variant, sharing, decouple,
channels, params, seed, mpjpe, pa_mpjpe (test, or val when there is no test set), val_mpjpe,
val_pa_mpjpe, train_loss, steps_per_s, test_set, ...; plus a ``mean_pose`` baseline record per
seed), ``results.md`` (the tables in the paper's layout, the paper's numbers beside ours, and the
findings checked), ``curves.png`` (training and validation MPJPE), and ``runs/<run>/`` (per-run
record and, with ``checkpoint=True``, checkpoints; finished runs are skipped when the command is
repeated).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

from absl import flags

import numpy as np

from experiments import common

EXPERIMENT = 'gcn_weight_sharing'
TABLES = ('2', '3', '4')
LOSSES = ('mse', 'mpjpe')
DATASETS = ('cmu', 'h36m')
DECOUPLING_PAIRS = (('full', 'full_dec'), ('pre_agg', 'pre_agg_dec'), ('post_agg', 'post_agg_dec'))
MM_PER_M = 1000.0
"""The model predicts metres; targets and metrics are mm."""
EVAL_BATCH = 2048
BASELINE_VARIANT = 'mean_pose'
CAMERAS = ('h36m', 'rig')
# Paper numbers: Liu et al. 2020, Human3.6M with ground-truth 2D input, 16 joints. MPJPE (mm) and
# parameters (millions, as printed) per (our table, variant, channels). The paper's Table 2 pairs
# non-decoupled models at 180 channels with decoupled ones at 128 (our '2_matched_params'); its
# Table 3 "Full-sharing", "Pre-agg" and "Post-agg" are the decoupled variants. Our rows without a
# paper counterpart (e.g. plain variants at 128 channels) stay blank.
PAPER_TABLE2_MPJPE_MM = {'full': 53.53, 'full_dec': 41.96, 'pre_agg': 40.34, 'pre_agg_dec': 37.83,
                         'post_agg': 41.39, 'post_agg_dec': 38.92}  # paper, Table 2
PAPER_TABLE3_MPJPE_MM = {'full_dec': 41.96, 'conv_style': 42.85, 'pre_agg_dec': 37.83,
                         'post_agg_dec': 38.92, 'no_sharing': 39.88}  # paper, Table 3
PAPER_PARAMS_M = {('full', 180): 0.27, ('full_dec', 128): 0.27, ('conv_style', 128): 0.40,
                  ('pre_agg', 180): 4.17, ('pre_agg_dec', 128): 4.22, ('post_agg', 180): 4.17,
                  ('post_agg_dec', 128): 4.22, ('no_sharing', 128): 6.86}  # paper, Tables 2-3
PAPER_TABLE4_CHANNELS_4_2M = {'full_dec': 512, 'conv_style': 415, 'pre_agg_dec': 128,
                              'post_agg_dec': 128, 'no_sharing': 100}  # paper, Sec. 4.2 (Table 4)
TABLE_NAMES = {'2_same_channels': 'Table 2 (same channels)',
               '2_matched_params': 'Table 2 (matched parameters)', '3': 'Table 3', '4': 'Table 4'}


@dataclasses.dataclass(frozen=True)
class Config:
    """Experiment settings (frozen; unknown keys are errors in ``--set``).

    Attributes:
      tables: which tables to train ('2', '3', '4').
      variants: variants (keys of ``SHARING_VARIANTS``) of Tables 3 and 4.
      channels: channels of Tables 2 and 3 (128 in the paper).
      budgets: parameter budgets of Table 4.
      n_blocks, normalization, non_local, dropout: lifter architecture (all variants).
      steps, batch_size: training length.
      learning_rate, learning_rate_decay, learning_rate_decay_steps, learning_rate_staircase: Adam learning rate ``lr * rate^(s / steps)``
        (``learning_rate_decay_steps`` 0 = the run's length).
      weight_decay: > 0 uses AdamW.
      loss: 'mse' (the paper's, on metres) or 'mpjpe'.
      clip_norm: global gradient-norm clipping (SemGCN: 1), or None.
      precision, jit_compile: passed to the training loop.
      eval_every: steps between validation points of the curves.
      val_curve_examples: val examples (evenly spread) used for the curves; the final val metrics
        use all.
      log_every: training-loop logging.
      checkpoint, checkpoint_every: keep resumable checkpoints (and TensorBoard logs) in each run's
        folder (worth it for long runs; a repeated command always skips finished runs).
      joints: 'h36m_16' (the paper's: Human3.6M without the nose) or 'h36m_17'.
      budget_rounding: how Table 4 widths meet a budget (``channels_for_budget``): 'at_least' (the
        paper's 512 / 128 / 128 at 4.2M) or 'nearest'.
      seeds: training seeds (``--seeds`` overrides); every table row reports mean ± std over them.
      cameras: 'h36m' (Human3.6M's real calibrations from ``--camera-dir``; the rig when the file is
        absent, said in the output) or 'rig' (the synthetic Human3.6M-like rig); ``--dataset=h36m``
        always uses the dataset's own cameras.
      fps, n_random_cameras, max_frames_per_clip, procedural_subjects, procedural_clips,
        procedural_seconds: lifting sets from motion (``LiftingSpec``).
      data_seed: seed of the val-subject choice and the random cameras (fixed across training seeds).
      h36m_keypoints, h36m_frame_step, h36m_test_frame_step, h36m_val_subjects: Human3.6M data.
    """

    tables: Tuple[str, ...] = ('2', '3')
    variants: Tuple[str, ...] = ('full', 'full_dec', 'conv_style', 'pre_agg', 'pre_agg_dec',
                                 'post_agg', 'post_agg_dec', 'no_sharing')
    channels: int = 128
    budgets: Tuple[int, ...] = (4_200_000, 2_100_000, 1_050_000)
    n_blocks: int = 4
    normalization: str = 'symmetric'
    non_local: bool = False
    dropout: float = 0.0
    steps: int = 600
    batch_size: int = 256
    learning_rate: float = 1e-3
    learning_rate_decay: float = 0.1
    learning_rate_decay_steps: int = 0
    learning_rate_staircase: bool = False
    weight_decay: float = 0.0
    loss: str = 'mse'
    clip_norm: Optional[float] = None
    precision: str = 'float32'
    jit_compile: bool = True
    eval_every: int = 150
    val_curve_examples: int = 4096
    log_every: int = 50
    checkpoint: bool = False
    checkpoint_every: int = 5000
    joints: str = 'h36m_16'
    budget_rounding: str = 'at_least'
    seeds: Tuple[int, ...] = (0,)
    cameras: str = 'h36m'
    fps: float = 20.0
    n_random_cameras: int = 1
    max_frames_per_clip: Optional[int] = None
    procedural_subjects: int = 8
    procedural_clips: int = 4
    procedural_seconds: float = 6.0
    data_seed: int = 0
    h36m_keypoints: str = 'gt'
    h36m_frame_step: int = 1
    h36m_test_frame_step: int = 1
    h36m_val_subjects: Tuple[str, ...] = ()

    def __post_init__(self):
        from posekit.models.lifting import SHARING_VARIANTS
        bad = [t for t in self.tables if t not in TABLES]
        if bad or not self.tables:
            raise ValueError(f'tables must be a non-empty subset of {TABLES}, received {self.tables!r}')
        bad = [v for v in self.variants if v not in SHARING_VARIANTS]
        if bad or not self.variants:
            raise ValueError(f'variants must be a non-empty subset of {tuple(SHARING_VARIANTS)}, '
                             f'received {self.variants!r}')
        if self.cameras not in CAMERAS:
            raise ValueError(f'cameras must be one of {CAMERAS}, received {self.cameras!r}')
        from posekit.models.lifting import BUDGET_ROUNDINGS
        if self.budget_rounding not in BUDGET_ROUNDINGS:
            raise ValueError(f'budget_rounding must be one of {BUDGET_ROUNDINGS}, received '
                             f'{self.budget_rounding!r}')
        if (not self.seeds or len(set(self.seeds)) != len(self.seeds)
                or any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in self.seeds)):
            raise ValueError(f'seeds must be distinct ints >= 0, received {self.seeds!r}')
        if self.loss not in LOSSES:
            raise ValueError(f'loss must be one of {LOSSES}, received {self.loss!r}')
        for name in ('channels', 'steps', 'batch_size', 'eval_every', 'val_curve_examples',
                     'log_every', 'checkpoint_every', 'h36m_frame_step', 'h36m_test_frame_step'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'{name} must be an int >= 1, received {value!r}')
        if not self.learning_rate > 0 or not 0 < self.learning_rate_decay <= 1:
            raise ValueError(f'learning_rate must be > 0 and learning_rate_decay in (0, 1], received '
                             f'learning_rate={self.learning_rate!r}, learning_rate_decay={self.learning_rate_decay!r}')


PRESETS = {
    # < 60 s end to end on procedural motion: every Table 2/3 run, tiny networks, a higher rate.
    # (jit_compile off: XLA compiles would cost more than the 150 steps). The synthetic rig, whose
    # cameras follow the subject: on Human3.6M's fixed cameras (the subject anywhere in the image)
    # the 32-channel decoupled full GCN is still worse than the mean pose after 150 steps.
    'smoke': Config(channels=32, n_blocks=1, steps=150, batch_size=128, learning_rate=3e-3, eval_every=75,
                    cameras='rig',
                    val_curve_examples=1024, log_every=25, jit_compile=False, fps=10.0,
                    procedural_subjects=5, procedural_clips=2, procedural_seconds=4.0),
    # The 8 Table 3 variants and the Table 2 pairs (11 runs) x 3 seeds, sized to stay under an hour on
    # 2 cores: one seed of 800 steps took 50 min, so each seed is shrunk to 300 steps (measured: 21-29
    # min for the 33 models with other work beside them, 18-52 s per model; README).
    # On Human3.6M it uses every 5th frame (10 fps) for training and testing; paper: every frame.
    'default': Config(steps=300, batch_size=128, eval_every=100, val_curve_examples=2048, seeds=(0, 1, 2),
                      h36m_frame_step=5, h36m_test_frame_step=5),
    # The paper's controlled settings (SemGCN's recipe: Adam 1e-3, x0.96 every 100k steps, batch
    # 64, gradient norm clipped to 1) with all three tables; for a GPU or a long CPU run.
    'paper': Config(tables=('2', '3', '4'), steps=200_000, batch_size=64, learning_rate_decay=0.96,
                    learning_rate_decay_steps=100_000, learning_rate_staircase=True, clip_norm=1.0, eval_every=5000,
                    log_every=500, checkpoint=True, precision='auto', fps=25.0, seeds=(0, 1, 2)),
}


# ----------------------------------------------------------------------------------------------
# Plan
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Run:
    """One model to train: a variant at a channel count (shared by every table that uses it)."""

    variant: str
    channels: int

    @property
    def key(self) -> str:
        return f'{self.variant}_c{self.channels}'


def plan(config: Config, adjacency) -> Tuple[List[Run], List[Tuple[str, Run]]]:
    """The unique runs and the (table, run) rows of every configured table, in table order."""
    from posekit.models.lifting import SHARING_VARIANTS, channels_for_budget, gcn_lifter_param_count
    arch = dict(n_blocks=config.n_blocks, normalization=config.normalization,
                non_local=config.non_local)
    rows: List[Tuple[str, Run]] = []
    if '2' in config.tables:
        for plain, decoupled in DECOUPLING_PAIRS:
            rows.append(('2_same_channels', Run(plain, config.channels)))
            rows.append(('2_same_channels', Run(decoupled, config.channels)))
        for plain, decoupled in DECOUPLING_PAIRS:
            target = gcn_lifter_param_count(adjacency, config.channels,
                                            **SHARING_VARIANTS[decoupled], **arch)
            widened = channels_for_budget(target, adjacency, **SHARING_VARIANTS[plain], **arch)
            rows.append(('2_matched_params', Run(plain, widened)))
            rows.append(('2_matched_params', Run(decoupled, config.channels)))
    if '3' in config.tables:
        rows += [('3', Run(v, config.channels)) for v in config.variants]
    if '4' in config.tables:
        for budget in config.budgets:
            for v in config.variants:
                c = channels_for_budget(budget, adjacency, rounding=config.budget_rounding,
                                        **SHARING_VARIANTS[v], **arch)
                rows.append(('4', Run(v, c)))
    runs = list(dict.fromkeys(run for _, run in rows))
    return runs, rows


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------

def default_camera_dir() -> Optional[str]:
    """``shared/data/real_samples/h36m`` beside the repository if it holds cameras.json, else None."""
    from posekit.data import mocap
    cmu = mocap.default_mocap_dir()
    candidate = (os.path.join(os.path.dirname(cmu), 'real_samples', 'h36m') if cmu else
                 os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                              'shared', 'data', 'real_samples', 'h36m'))
    return candidate if os.path.isfile(os.path.join(candidate, 'cameras.json')) else None


def resolve_cameras(config: Config, camera_dir: Optional[str] = 'auto') -> Tuple[Optional[str], str]:
    """(folder of Human3.6M's cameras.json or None for the rig, a sentence saying which cameras).

    ``camera_dir``: 'auto' (:func:`default_camera_dir`) or a folder. With ``config.cameras ==
    'h36m'`` and no camera file there, falls back to the synthetic rig and says so.
    """
    if config.cameras == 'rig':
        return None, 'synthetic Human3.6M-like rig (cameras=rig)'
    folder = default_camera_dir() if camera_dir in (None, '', 'auto') else camera_dir
    if folder and (os.path.isfile(os.path.join(folder, 'cameras.json'))
                   or os.path.isfile(os.path.join(folder, 'cameras.pkl'))):
        return folder, f'real Human3.6M cameras from {folder} (S1 S5 S6 S7 S8 train/val, S9 S11 test)'
    return None, (f'FALLBACK: no Human3.6M cameras.json in {camera_dir!r} (resolved {folder!r}); '
                  'using the synthetic Human3.6M-like rig')


def load_sets(config: Config, dataset: str = 'cmu', mocap_dir: Optional[str] = None,
              test_mocap_dir: Optional[str] = None, data_dir: Optional[str] = None,
              cameras_file: Optional[str] = None, camera_dir: Optional[str] = None):
    """(dict of LiftingSets with 'train', 'val'/'test' when available, test-set name).

    ``camera_dir``: Human3.6M's camera folder for the motion sets (None: the synthetic rig); see
    :func:`resolve_cameras`."""
    if dataset == 'h36m':
        from posekit.data import h36m
        if not data_dir:
            raise ValueError('--dataset=h36m needs --data-dir (the folder with data_3d_h36m.npz '
                             'and data_2d_h36m_<keypoints>.npz)')
        sets = h36m.h36m_splits(data_dir, keypoints=config.h36m_keypoints, joints=config.joints,
                                val_subjects=config.h36m_val_subjects,
                                frame_step=config.h36m_frame_step,
                                test_frame_step=config.h36m_test_frame_step,
                                cameras_file=cameras_file)
        return sets, f'h36m:S9,S11 ({config.h36m_keypoints} 2D)'
    if dataset != 'cmu':
        raise ValueError(f'dataset must be one of {DATASETS}, received {dataset!r}')
    from posekit.data import lifting
    spec = lifting.LiftingSpec(
        joints=config.joints, fps=config.fps, max_frames_per_clip=config.max_frames_per_clip,
        n_random_cameras=config.n_random_cameras, procedural_subjects=config.procedural_subjects,
        procedural_clips=config.procedural_clips, procedural_seconds=config.procedural_seconds,
        h36m_cameras=camera_dir)
    sets = lifting.lifting_splits(mocap_dir, test_mocap_dir, spec, seed=config.data_seed)
    if test_mocap_dir:
        name = f'mocap:{os.path.basename(os.path.normpath(test_mocap_dir))}'
    elif 'test' in sets:
        name = 'procedural_test_subjects'
    else:
        name = 'none'
    return sets, name


# ----------------------------------------------------------------------------------------------
# Training and evaluation
# ----------------------------------------------------------------------------------------------

def predict_mm(model, inputs: np.ndarray, batch: int = EVAL_BATCH, predict_fn=None) -> np.ndarray:
    """Model predictions in mm (float64 [N, J, 3]) for normalized 2D inputs [N, J, 2]."""
    import tensorflow as tf
    if predict_fn is None:
        predict_fn = make_predict_fn(model, inputs.shape[1])
    out = [predict_fn(tf.constant(inputs[i:i + batch])).numpy()
           for i in range(0, len(inputs), batch)]
    return np.concatenate(out).astype(np.float64) * MM_PER_M


def make_predict_fn(model, n_joints: int):
    """A traced-once ``f(inputs [B, J, 2]) -> float32 model output`` (inference mode)."""
    import tensorflow as tf
    return tf.function(lambda x: tf.cast(model(x, training=False), tf.float32),
                       input_signature=[tf.TensorSpec([None, n_joints, 2], tf.float32)])


def evaluate_set(model, lifting_set, predict_fn=None) -> Dict[str, float]:
    """posekit.eval.metrics.evaluate of the model on a lifting set (root-relative, mm)."""
    from posekit.eval import metrics
    pred = predict_mm(model, lifting_set.inputs, predict_fn=predict_fn)
    return metrics.evaluate(pred, lifting_set.targets.astype(np.float64))


def mean_pose_metrics(train_set, eval_set) -> Dict[str, float]:
    """Metrics of always predicting the training set's mean root-relative pose."""
    from posekit.eval import baselines, metrics
    pred = baselines.mean_pose_predictions(train_set.targets, len(eval_set.targets))
    return metrics.evaluate(pred, eval_set.targets.astype(np.float64))


def _loss_fn(loss: str):
    import tensorflow as tf

    def loss_fn(model, batch, step, training):
        del step
        inputs, targets_mm = batch
        pred = tf.cast(model(inputs, training=training), tf.float32)
        targets = targets_mm / MM_PER_M
        error = tf.norm(pred - targets, axis=-1)  # [B, J] metres
        if loss == 'mse':
            value = tf.reduce_mean(tf.square(pred - targets))
        else:
            value = tf.reduce_mean(error)
        return value, {'mpjpe_mm': tf.reduce_mean(error) * MM_PER_M}

    return loss_fn


def train_run(run: Run, sets, config: Config, seed: int, run_dir: Optional[str],
              progress: bool = False, strategy=None, evaluate: bool = True):
    """Trains one run under ``strategy`` (None: the default); returns (metrics dict, curves dict).

    ``evaluate=False`` (a non-chief worker): no validation curve and no val/test metrics.
    """
    import keras
    import tensorflow as tf
    from posekit.data import lifting
    from posekit.eval import metrics
    from posekit.models.lifting import SHARING_VARIANTS, build_gcn_lifter, gcn_lifter_param_count
    from posekit.train import loop
    from posekit.train.precision import policy_scope

    adjacency = sets['train'].joint_info.adjacency()
    arch = dict(channels=run.channels, n_blocks=config.n_blocks, normalization=config.normalization,
                non_local=config.non_local, dropout=config.dropout, **SHARING_VARIANTS[run.variant])
    strategy = strategy or tf.distribute.get_strategy()
    keras.utils.set_random_seed(seed)
    with strategy.scope(), policy_scope(config.precision):
        model = build_gcn_lifter(adjacency, name=f'gcn_{run.key}', **arch)
        schedule = keras.optimizers.schedules.ExponentialDecay(
            config.learning_rate, config.learning_rate_decay_steps or config.steps, config.learning_rate_decay,
            staircase=config.learning_rate_staircase)
        if config.weight_decay > 0:
            optimizer = keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay)
        else:
            optimizer = keras.optimizers.Adam(schedule)
    if strategy is not tf.distribute.get_strategy():  # the initial weights of a one-process run
        keras.utils.set_random_seed(seed)
        with policy_scope(config.precision):
            reference = build_gcn_lifter(adjacency, name=f'gcn_{run.key}_init', **arch)
        with strategy.scope():
            for variable, value in zip(model.variables, reference.variables):
                variable.assign(value)
    params = loop.count_params(model, trainable_only=True)
    expected = gcn_lifter_param_count(adjacency, **arch)
    if params != expected:
        raise RuntimeError(f'{run.key}: model has {params} trainable parameters, '
                           f'gcn_lifter_param_count says {expected}')

    predict_fn = make_predict_fn(model, adjacency.shape[0])
    val = sets.get('val') if evaluate else None
    curve_set = None
    if val is not None:
        idx = np.unique(np.linspace(0, len(val) - 1, min(config.val_curve_examples, len(val)))
                        .round().astype(int))
        curve_set = val.subset(idx)
    val_curve = {'step': [], 'mpjpe': []}

    def validate(step, logs):
        del logs
        if curve_set is not None and (step % config.eval_every == 0 or step == config.steps):
            pred = predict_mm(model, curve_set.inputs, predict_fn=predict_fn)
            val_curve['step'].append(step)
            val_curve['mpjpe'].append(float(np.mean(metrics.mpjpe(pred, curve_set.targets))))

    train_config = loop.TrainConfig(
        total_steps=config.steps, precision=config.precision, checkpoint_every=config.checkpoint_every,
        keep_last=1, log_every=config.log_every, jit_compile=config.jit_compile, seed=seed,
        clip_norm=config.clip_norm, progress=progress)
    result = loop.train(
        model, _loss_fn(config.loss),
        lambda start: lifting.lifting_dataset(sets['train'], config.batch_size, seed, start),
        optimizer, train_config, out_dir=run_dir if config.checkpoint else None,
        callbacks=[validate], strategy=strategy)
    history = result.history
    out = dict(params=params, train_loss=history['loss'][-1],
               train_mpjpe=history['mpjpe_mm'][-1], steps_per_s=result.steps_per_s,
               train_time_s=result.wall_time_s, steps=result.final_step, policy=result.policy)
    for split in ('val', 'test'):
        if split in sets and evaluate:
            scores = evaluate_set(model, sets[split], predict_fn)
            out.update({f'{split}_{k}': v for k, v in scores.items()})
    curves = dict(train_step=history['step'], train_mpjpe=history['mpjpe_mm'],
                  train_loss=history['loss'], val_step=val_curve['step'],
                  val_mpjpe=val_curve['mpjpe'])
    return out, curves


# ----------------------------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------------------------

def _stats(values: Sequence[float]) -> Tuple[float, float, int]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return math.nan, math.nan, 0
    return float(np.mean(values)), float(np.std(values)), len(values)


def _mean_spread(values: Sequence[float]) -> str:
    """Mean (± std over seeds) of the finite values, or '' when there are none."""
    mean, std, n = _stats(values)
    if n == 0:
        return ''
    return common.format_number(mean) if n == 1 else f'{common.format_number(mean)} ± {common.format_number(std)}'


def _grouped(records, table):
    """(variant, channels) -> records of ``table``, in first-appearance order."""
    groups: Dict[Tuple[str, int], list] = {}
    for r in records:
        if r['table'] == table:
            groups.setdefault((r['variant'], r['channels']), []).append(r)
    return groups


def lower_beyond_spread(better: Sequence[float], worse: Sequence[float],
                        min_gap: float = 0.0) -> Tuple[bool, str]:
    """Whether mean(better) < mean(worse) by more than the seeds' spread (std(better) + std(worse))
    and by more than ``min_gap``; and the evidence 'a ± s vs b ± s mm (gap g, spread s, n seeds)'.
    False when either side has no finite value."""
    a, sa, na = _stats(better)
    b, sb, nb = _stats(worse)
    if na == 0 or nb == 0:
        return False, 'no finite values'
    gap, spread = b - a, sa + sb
    holds = bool(gap > max(spread, min_gap))
    seeds = f'{min(na, nb)} seed' + ('s' if min(na, nb) > 1 else ', spread unknown')
    return holds, (f'{_mean_spread(better)} vs {_mean_spread(worse)} mm (difference {gap:.1f}, '
                   f'spread {spread:.1f}; {seeds})')


def findings(records) -> List[common.Check]:
    """The paper's findings checked on the records: each holds only where the difference of the
    means exceeds the spread over seeds (sum of the two standard deviations)."""
    out = []

    def mpjpes(group):
        return [r['mpjpe'] for r in group]

    for table in ('2_same_channels', '2_matched_params'):
        by_variant = {v: g for (v, _), g in _grouped(records, table).items()}
        for plain, decoupled in DECOUPLING_PAIRS:
            if plain in by_variant and decoupled in by_variant:
                holds, evidence = lower_beyond_spread(mpjpes(by_variant[decoupled]), mpjpes(by_variant[plain]))
                out.append(common.Check(f'decoupling lowers MPJPE for {plain} ({TABLE_NAMES[table]})', holds,
                                        evidence))
    groups = {v: g for (v, _), g in _grouped(records, '3').items()}
    if 'pre_agg_dec' in groups and 'full' in groups:
        a, _, _ = _stats(mpjpes(groups['full']))
        # "clearly": by more than the seeds' spread and by at least 5 % of the vanilla error.
        holds, evidence = lower_beyond_spread(mpjpes(groups['pre_agg_dec']), mpjpes(groups['full']),
                                              min_gap=0.05 * a if math.isfinite(a) else 0.0)
        out.append(common.Check('decoupled pre_agg beats vanilla (full, not decoupled) GCN clearly '
                                '(paper: 37.8 vs 53.5 mm)', holds, evidence))
    if 'pre_agg_dec' in groups and 'no_sharing' in groups:
        holds, evidence = lower_beyond_spread(mpjpes(groups['pre_agg_dec']), mpjpes(groups['no_sharing']))
        out.append(common.Check('decoupled pre_agg beats no_sharing (paper, Table 3: 37.83 vs 39.88 mm)',
                                holds, evidence))
    decoupled = [v for v in ('full_dec', 'conv_style', 'post_agg_dec', 'no_sharing') if v in groups]
    if 'pre_agg_dec' in groups and decoupled:
        results = [lower_beyond_spread(mpjpes(groups['pre_agg_dec']), mpjpes(groups[v])) for v in decoupled]
        out.append(common.Check(f'decoupled pre_agg is the best of the decoupled variants ({", ".join(decoupled)}; '
                                'paper, Table 3)', all(h for h, _ in results),
                                '; '.join(f'vs {v}: {e}' for v, (_, e) in zip(decoupled, results))))
    return out


def paper_params_m(table: str, variant: str) -> Optional[float]:
    """The paper's printed parameter count (millions) of the row matching ours, or None: Table 2 pairs
    plain variants at 180 channels with decoupled ones at 128; Table 3 is at 128 channels."""
    if table == '2_matched_params':
        return PAPER_PARAMS_M.get((variant, 128 if variant.endswith('_dec') else 180))
    if table == '3':
        return PAPER_PARAMS_M.get((variant, 128))
    return None


def markdown_report(records, context: Dict[str, object]) -> str:
    """results.md: the tables in the paper's layout, findings and the setup."""
    seeds = sorted({r['seed'] for r in records})
    lines = ['# Weight sharing in graph networks for 3D pose lifting (Liu et al., ECCV 2020)', '']
    test_set = context.get('test_set', 'none')
    metric_src = 'the external test set' if test_set != 'none' else 'the validation split'
    lines += [f'MPJPE / PA-MPJPE in mm on {metric_src} ({test_set}); val = held-out training '
              f'subjects. Seeds {seeds}: values are mean ± std over seeds. Paper: Human3.6M, '
              'ground-truth 2D input, 16 joints (paper, Tables 2-3; blanks: no counterpart in the paper). '
              f'Cameras: {context.get("cameras", "unknown")}.', '']
    baseline = [r for r in records if r['table'] == 'baseline']
    if baseline:
        val = _mean_spread([r.get('val_mpjpe') for r in baseline])
        lines += [f'Mean-pose baseline: MPJPE {_mean_spread([r["mpjpe"] for r in baseline])} mm'
                  + (f' (val {val} mm).' if val else '.'), '']

    def table_rows(table, paper=None):
        rows = []
        for (variant, channels), group in _grouped(records, table).items():
            paper_params = paper_params_m(table, variant) if paper and variant in paper else None
            rows.append({
                'variant': variant, 'sharing': group[0]['sharing'],
                'decouple': 'yes' if group[0]['decouple'] else 'no',
                'channels': channels, 'params': f'{group[0]["params"] / 1e6:.3f}M',
                'mpjpe': _mean_spread([r['mpjpe'] for r in group]),
                'pa_mpjpe': _mean_spread([r['pa_mpjpe'] for r in group]),
                'val_mpjpe': _mean_spread([r['val_mpjpe'] for r in group]),
                'paper': '' if paper is None or variant not in paper else f'{paper[variant]:.2f}',
                'paper_params': '' if paper_params is None else f'{paper_params:.2f}M',
                'steps_per_s': f'{np.mean([r["steps_per_s"] for r in group]):.1f}'})
        return rows

    columns = ['variant', 'sharing', 'decouple', 'channels', 'params', 'paper_params', 'mpjpe', 'pa_mpjpe',
               'val_mpjpe', 'paper', 'steps_per_s']
    headers = ['variant', 'sharing', 'decoupled', 'channels', 'params', 'paper params', 'MPJPE', 'PA-MPJPE',
               'val MPJPE', 'paper MPJPE (H36M)', 'steps/s']
    # Paper, Table 2 = our matched-parameter pairs; paper, Table 3 = our Table 3 (its decoupled rows).
    # Our same-channel pairs have no paper counterpart; Table 4's MPJPE is per budget (blank here).
    for table, paper in (('2_same_channels', None), ('2_matched_params', PAPER_TABLE2_MPJPE_MM),
                         ('3', PAPER_TABLE3_MPJPE_MM), ('4', None)):
        rows = table_rows(table, paper)
        if rows:
            lines += [f'## {TABLE_NAMES[table]}', '', common.markdown_table(rows, columns, headers)]
    found = findings(records)
    if found:
        lines += ['## Findings of the paper, checked', '']
        for check in found:
            lines.append(f'- {"REPRODUCED" if check.holds else "NOT reproduced"}: {check.claim}: '
                         f'{check.evidence}')
        lines.append('')
    lines += ['## Setup', '', '```', json.dumps(context, indent=1, default=str), '```', '']
    return '\n'.join(lines)


def plot_curves(curves: Dict[str, Dict[str, list]], path: str) -> None:
    """curves.png: training (left) and validation (right) MPJPE per run (first seed); dashed =
    variants without a separate self-connection transform (full, pre_agg, post_agg)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(13, 5))
    for i, (name, c) in enumerate(curves.items()):
        style = dict(color=plt.cm.tab20(i % 20), label=name,
                     linestyle='-' if '_dec' in name or 'sharing' in name or 'conv' in name else '--')
        ax_train.plot(c['train_step'], c['train_mpjpe'], **style)
        if c['val_step']:
            ax_val.plot(c['val_step'], c['val_mpjpe'], marker='o', **style)
    for ax, title in ((ax_train, 'training MPJPE (mm, window means)'),
                      (ax_val, 'validation MPJPE (mm, held-out training subjects)')):
        ax.set_xlabel('step')
        ax.set_ylabel('MPJPE (mm)')
        ax.set_title(title)
        ax.set_yscale('log')
        ax.grid(True, which='both', alpha=0.3)
    if any(c['val_step'] for c in curves.values()):
        ax_val.legend(fontsize=7, ncol=2)
    else:
        ax_val.text(0.5, 0.5, 'no validation split', ha='center', transform=ax_val.transAxes)
    ax_train.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------

def run_experiment(config: Config, out: str, seeds: Optional[Sequence[int]] = None, dataset: str = 'cmu',
                   mocap_dir: Optional[str] = None, test_mocap_dir: Optional[str] = None,
                   data_dir: Optional[str] = None, cameras_file: Optional[str] = None,
                   progress: bool = False, log=print, preset: str = 'default',
                   camera_dir: Optional[str] = 'auto', strategy: str = 'default', replicas: int = 0) -> List[dict]:
    """Trains every planned run for every seed; writes results.json, results.md, curves.png.

    ``seeds`` None: ``config.seeds``. ``camera_dir``: Human3.6M's camera folder for the motion
    sets (:func:`resolve_cameras`). Finished runs (``out/runs/<run>_s<seed>/record.json``) are
    reused, unfinished ones resume from their checkpoints. Returns the records. ``strategy``/``replicas``:
    ``common.make_strategy``; with ``multi_worker`` only the chief evaluates and writes (the records, results,
    plots and checkpoints in ``out``), the other workers train every run with it and return [].
    """
    if seeds is not None:  # the run's config records the seeds it trains
        config = dataclasses.replace(config, seeds=tuple(int(x) for x in seeds))
    seeds = list(config.seeds)
    if dataset == 'h36m':
        camera_folder, cameras = None, 'the Human3.6M npz files\' own cameras (--dataset=h36m)'
    else:
        camera_folder, cameras = resolve_cameras(config, camera_dir)
    log(f'cameras: {cameras}')
    chief = common.is_chief_process(strategy)
    local = common.worker_scratch(out, strategy)
    data = dict(dataset=dataset, mocap=common.folder_fingerprint(mocap_dir),
                test_mocap=common.folder_fingerprint(test_mocap_dir), data_dir=data_dir, cameras_file=cameras_file,
                camera_dir=camera_folder)
    with common.run_directory(local, EXPERIMENT, config, seeds, data, chief=chief):
        return _run_experiment(config, out, seeds, dataset, mocap_dir, test_mocap_dir, data_dir, cameras_file,
                               progress, log, preset, camera_folder, cameras,
                               common.make_strategy(strategy, replicas), chief)


def _run_experiment(config, out, seeds, dataset, mocap_dir, test_mocap_dir, data_dir, cameras_file, progress, log,
                    preset, camera_folder, cameras, strategy=None, chief=True):
    clock = common.PhaseClock()
    with clock.phase('data'):
        sets, test_set = load_sets(config, dataset, mocap_dir, test_mocap_dir, data_dir, cameras_file,
                                   camera_folder)
    load_s = clock.wall['data']
    for name, s in sets.items():
        log(f'{name}: {s.summary()} ({s.description})')
    adjacency = sets['train'].joint_info.adjacency()
    runs, rows = plan(config, adjacency)
    log(f'{len(runs)} runs x {len(seeds)} seeds; data loaded in {load_s:.1f} s')
    metric_split = 'test' if 'test' in sets else 'val'
    records, curves = [], {}
    for seed in seeds:
        baseline = {f'{split}_{k}': v for split in ('val', 'test') if split in sets
                    for k, v in mean_pose_metrics(sets['train'], sets[split]).items()}
        records.append(dict(
            table='baseline', variant=BASELINE_VARIANT, sharing=None, decouple=None, channels=0,
            params=0, seed=seed, test_set=test_set, mpjpe=baseline[f'{metric_split}_mpjpe'],
            pa_mpjpe=baseline[f'{metric_split}_pa_mpjpe'], train_loss=math.nan,
            steps_per_s=math.nan, **baseline))
        results: Dict[Run, dict] = {}
        for i, run in enumerate(runs):
            run_dir = os.path.join(out, 'runs', f'{run.key}_s{seed}')
            record_path = os.path.join(run_dir, 'record.json')
            if os.path.isfile(record_path):
                with open(record_path, encoding='utf-8') as f:
                    saved = json.load(f)
                results[run], run_curves = saved['metrics'], saved['curves']
                log(f'[{i + 1}/{len(runs)}] {run.key} seed {seed}: reused {record_path}')
            else:
                t = time.perf_counter()
                results[run], run_curves = train_run(run, sets, config, seed, run_dir, progress, strategy,
                                                     evaluate=chief)
                if not chief:
                    continue
                common.write_json(record_path, dict(metrics=results[run], curves=run_curves))
                m = results[run]
                log(f'[{i + 1}/{len(runs)}] {run.key} seed {seed}: {m["params"]} params, '
                    f'val MPJPE {m.get("val_mpjpe", math.nan):.1f}, '
                    f'{metric_split} MPJPE {m[f"{metric_split}_mpjpe"]:.1f} mm, '
                    f'{m["steps_per_s"]:.1f} steps/s, {time.perf_counter() - t:.0f} s')
            if seed == seeds[0]:
                curves[run.key] = run_curves
        if not chief:
            continue
        from posekit.models.lifting import SHARING_VARIANTS
        for table, run in rows:
            m = results[run]
            variant = SHARING_VARIANTS[run.variant]
            records.append(dict(
                table=table, variant=run.variant, sharing=variant['sharing'],
                decouple=variant['decouple'], channels=run.channels, params=m['params'],
                seed=seed, test_set=test_set, mpjpe=m[f'{metric_split}_mpjpe'],
                pa_mpjpe=m[f'{metric_split}_pa_mpjpe'], val_mpjpe=m.get('val_mpjpe', math.nan),
                val_pa_mpjpe=m.get('val_pa_mpjpe', math.nan), train_loss=m['train_loss'],
                train_mpjpe=m['train_mpjpe'], steps_per_s=m['steps_per_s'], run=f'{run.key}_s{seed}',
                **{k: v for k, v in m.items() if k.startswith(('test_', 'val_')) and
                   k not in ('val_mpjpe', 'val_pa_mpjpe')}))
    if not chief:
        log('training done; the chief evaluates and writes the results')
        return []
    context = dict(dataset=dataset, cameras=cameras, mocap_dir=mocap_dir or 'procedural', test_mocap_dir=test_mocap_dir,
                   data_dir=data_dir, test_set=test_set, metric_split=metric_split, n_runs=len(runs),
                   sets={k: s.summary() for k, s in sets.items()}, data_load_s=round(load_s, 1))
    common.write_results(out, EXPERIMENT, preset, config, seeds, dict(records=records), findings(records),
                         context, clock)
    common.atomic_write_text(os.path.join(out, 'results.md'),
                             markdown_report(records, dict(context, config=dataclasses.asdict(config),
                                                           seeds=list(seeds), timings=clock.summary())))
    plot_curves(curves, os.path.join(out, 'curves.png'))
    log(f'wrote {out}/results.json, results.md, curves.png in {clock.total_wall():.0f} s')
    return records


FLAGS = flags.FLAGS


def define_flags():
    common.define_common_flags('runs/gcn_weight_sharing')
    flags.DEFINE_string('seeds', None, "Comma-separated training seeds (default: the preset's seeds, or --seed "
                        'when given).')
    flags.DEFINE_string('camera-dir', 'auto',
                        "Folder with Human3.6M's cameras.json for the motion sets (cameras=h36m). 'auto': "
                        '../shared/data/real_samples/h36m beside the repository; without the file the synthetic '
                        'rig is used and the output says so.')
    flags.DEFINE_enum('dataset', 'cmu', list(DATASETS),
                      "'cmu': lifting sets from motion capture (--mocap-dir); 'h36m': Human3.6M npz "
                      'files in --data-dir.')
    flags.DEFINE_string('data-dir', None, 'Human3.6M folder (data_3d_h36m.npz, data_2d_h36m_*.npz).')
    flags.DEFINE_string('h36m-cameras', None,
                        'Optional Human3.6M cameras JSON (posekit.data.h36m.load_cameras_file); '
                        'default: extrinsics fitted by PnP.')
    flags.DEFINE_bool('progress', False, 'Show the training loop progress bar.')


def parse_seeds(value: Optional[str], default: int) -> List[int]:
    """``--seeds`` '0,1,2' -> [0, 1, 2] (None: [default]); ValueError naming the flag otherwise."""
    if not value:
        return [default]
    try:
        seeds = [int(s) for s in value.split(',') if s.strip()]
    except ValueError:
        raise ValueError(f'--seeds must be comma-separated non-negative ints, got {value!r}') from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise ValueError(f'--seeds must be distinct non-negative ints, got {value!r}')
    return seeds


def main(argv):
    del argv
    config = common.resolve_config(PRESETS, FLAGS.preset, FLAGS.set)
    if FLAGS.seeds:
        seeds = parse_seeds(FLAGS.seeds, FLAGS.seed)
    elif FLAGS['seed'].present:
        seeds = [FLAGS.seed]
    else:
        seeds = list(config.seeds)
    run_experiment(config, FLAGS.out, seeds, dataset=FLAGS.dataset, camera_dir=FLAGS['camera-dir'].value,
                   mocap_dir=common.resolve_mocap_dir(FLAGS['mocap-dir'].value),
                   test_mocap_dir=common.test_mocap_dir(FLAGS['test-mocap-dir'].value),
                   data_dir=FLAGS['data-dir'].value, cameras_file=FLAGS['h36m-cameras'].value,
                   progress=FLAGS.progress, log=common.stderr_log, preset=FLAGS.preset, strategy=FLAGS.strategy,
                   replicas=FLAGS.replicas)


if __name__ == '__main__':
    define_flags()
    common.run_main(main, EXPERIMENT)
