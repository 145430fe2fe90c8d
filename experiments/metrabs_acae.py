"""MeTRAbs with an affine-combining autoencoder (Sárándi et al., WACV 2023), end to end.

    python -m experiments.metrabs_acae --preset=default --out runs/metrabs_acae \\
        [--mocap-dir auto|procedural|DIR] [--test-mocap-dir DIR] [--seed 0] [--resume] \\
        [--variant consistency|latent|hybrid|separate|all|v1,v2] [--set key=value ...]

The paper's recipe on posekit's synthetic multi-dataset data (:mod:`posekit.data.synth`: three 3D
datasets, h36m_like / mpi_like / smpl_like, and the 2D-only coco_like, each labelling its own
skeleton format of the joint space ``DEFAULT_FORMATS``):

1. **data**: the datasets rendered once into HDF5 shards (``storage.ensure_datasets``, reused when
   the parameters match) from the motion of ``--mocap-dir`` (subject-wise train/val split) and, for
   the test split, ``--test-mocap-dir`` (external, used whole) if given;
2. **stage 1**: a MeTRAbs model (``posekit.models.metrabs.Metrabs``, separate heads for the joints
   of every format) trained on fixed-composition multi-dataset batches
   (``pipeline.interleave_by_composition``, augmentation, own-format masking) with the losses of
   supplement S2 (``posekit.train.losses.metrabs_loss``), AdamW and the MeTRAbs schedule;
3. **pseudo ground truth**: the stage-1 model's predictions of every format on unlabeled images
   (the training images of all datasets, without their labels);
4. **ACAE**: an affine-combining autoencoder fitted to them (``posekit.acae.fit_acae``);
5. **stage 2**: fine-tuning from stage 1 with two optimizers (head and backbone,
   ``finetune_lr``), per ``--variant``:

   - ``consistency``: separate heads + consistency regularization (prediction vs its own ACAE
     reconstruction, 3D and 2D; ``losses.consistency_loss``);
   - ``latent``: a head predicting the ACAE's latent points, decoded to all joints;
   - ``hybrid``: latent and all-joints heads, the latent head also taught by the encoded
     all-joints head (``losses.hybrid_teacher_loss``); the output is the decoded latent head;
   - ``separate``: plain continued fine-tuning (the fair reference for the other three).

   The new heads of ``latent``/``hybrid`` start from the stage-1 head: the heatmap logits of latent
   ``l`` are the affine combination ``sum_j W_enc[j, l] logit_j`` (for log-heatmaps that are
   quadratic around their peak this puts the latent's peak exactly at the encoded position).
   The last ``bn_inference_steps`` steps run with BatchNorm in inference mode;
6. **evaluation** (:mod:`experiments.metrabs_acae_eval`): ``results.json`` and ``results.md``;
7. **export**: the first ``--variant``'s model as a SavedModel in ``<out>/saved_model``
   (``posekit.export.export_model``).

``--resume`` continues every stage from its checkpoints (a killed run picks up where it
stopped; finished stages are restored, cached predictions and the ACAE reused); without it an
``--out`` that holds checkpoints is refused. ``--variant`` accepts a comma-separated list (or
``all``); the first variant is exported. Outputs in ``--out``: ``data/`` (shards, unless
``data_dir`` is set), ``stage1/``, ``stage2_<variant>/`` (checkpoints, TensorBoard logs,
predictions), ``pseudo_gt.npz``, ``acae.npz``, ``results.json``, ``results.md``, ``saved_model/``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from absl import flags
from absl import logging as absl_logging

from experiments import common

EXPERIMENT = 'metrabs_acae'
VARIANTS = ('consistency', 'latent', 'hybrid', 'separate')
PRECISIONS = ('auto', 'float32', 'mixed_bfloat16', 'mixed_float16')
MM_PER_M = 1000.0
"""Losses are in metres, labels and predictions in mm."""
STAGE_SEED_OFFSET = 1000
"""Stage 2 draws its per-example random numbers from seed + this (stage 1 from seed)."""
SPLIT_VAL, SPLIT_TEST = 'val', 'test'
STOP_POINTS = ('', 'stage1')


@dataclasses.dataclass(frozen=True)
class Config:
    """Experiment settings (frozen; ``--set key=value`` overrides, unknown keys are errors).

    Data:
      datasets: the training datasets (``--datasets``; empty: the four synthetic ones, ``synth.PRESETS``): each
        a synthetic name (``h36m_like``...), ``adapter=root`` for a dataset adapter of
        :mod:`posekit.data.adapters` (``h36m=/data/h36m``), ``name=manifest.json|.csv`` (your own data, see the
        manifest adapter) or ``name=index.h5`` (an index written by ``tools.make_index``); adapter options as
        ``adapter=root;key=value;key=value``.
      composition: examples per dataset per batch: '' (the 3D part ``batch_3d`` and the 2D part ``batch_2d``
        split evenly), ``table_s1_small|medium|full`` (supplement Table S1 scaled to those parts, for the
        datasets given) or ``name=count,name=count``.
      backbone_weights: '' (random initialisation), a Keras weights file of the backbone's keras.applications
        network, or ``imagenet`` (an explicit opt-in: Keras downloads the ImageNet weights).
      n_train, n_val, n_test: examples per dataset and split (the test split is generated only when
        it differs from val: procedural motion or an external ``--test-mocap-dir``).
      crop_size: S, side of the square person crops (px).
      batch_3d, batch_2d: examples per batch of the 3D datasets and of the 2D dataset (split evenly,
        ``pipeline.make_composition``).
      data_dir: shard folder ('' = ``<out>/data``); reused across runs when the parameters match.
      data_seed: seed of the rendering (fixed across training seeds).
      data_workers: processes rendering shards.
      max_frames_per_clip: subsample long BVH clips (None: all frames).
      augment: geometric and photometric augmentation (``AugmentConfig()`` defaults).
    Model:
      backbone, backbone_width, backbone_depth: ``build_backbone`` name and multipliers (None: the
        backbone's own).
      ghost_batch_size: examples per ghost batch of Ghost BN; 0 = one group per batch part (3D, 2D) of each
        batch split.
      batch_splits: the batch is arranged as this many chunks of the same composition (``pipeline.replica_order``),
        one per replica of the tf.distribute strategy; Ghost BN groups and the loss are per chunk. 0 = the number
        of replicas (1 without ``--strategy``). A single-process run with ``batch_splits=R`` trains on the same
        batches, groups and losses as an R-replica run.
      depth_bins: depth bins of the 3D heatmaps; max_norm: max-norm limit of every kernel.
      precision: training-loop precision ('auto', 'float32', 'mixed_bfloat16', 'mixed_float16'); 'auto' is
        resolved by the precision module's rules (:func:`resolve_precision`).
      jit_compile: XLA-compile the training step.
      deterministic: ``tf.config.experimental.enable_op_determinism()`` before training (bit-identical
        runs for a seed; see the README for what it costs).
    Stage 1:
      stage1_steps, base_learning_rate, weight_decay (AdamW, decoupled), abs_loss_start_step (the absolute
      loss is on for steps > this).
    Pseudo ground truth and ACAE:
      pseudo_gt_per_dataset: unlabeled training images per dataset predicted by the stage-1 model;
      acae_latents, acae_steps, acae_l1, acae_projected: ``fit_acae`` settings.
    Stage 2:
      variants: default ``--variant`` list (the first is exported).
      stage2_steps, stage2_base_learning_rate: fine-tuning length and the base of ``finetune_lr`` (head: warm
        restart at this rate, backbone: this / 30).
      stage2_abs_loss_start_step: as abs_loss_start_step, counted in stage-2 steps (-1: on).
      consistency_weight: weight of the consistency loss (metres, 3D + 0.2 x 2D).
      hybrid_teacher_weight, hybrid_start_step: the hybrid student-teacher loss.
      bn_inference_steps: final steps with BatchNorm in inference mode (counted on top).
    Bookkeeping:
      eval_batch, log_every, checkpoint_every, export.
      stop_after: '' (every stage) or 'stage1' (train stage 1, write results.json with the training summary and
        stop: to test distribution and resumption quickly).
    """

    datasets: Tuple[str, ...] = ()
    composition: str = ''
    backbone_weights: str = ''
    n_train: int = 4000
    n_val: int = 400
    n_test: int = 400
    crop_size: int = 128
    batch_3d: int = 24
    batch_2d: int = 8
    data_dir: str = ''
    data_seed: int = 0
    data_workers: int = 2
    max_frames_per_clip: Optional[int] = None
    augment: bool = True
    backbone: str = 'mobile_small'
    backbone_width: Optional[float] = None
    backbone_depth: Optional[float] = None
    ghost_batch_size: int = 0
    batch_splits: int = 0
    depth_bins: int = 8
    max_norm: float = 20.0
    precision: str = 'auto'
    jit_compile: bool = False
    deterministic: bool = True
    stage1_steps: int = 3000
    base_learning_rate: float = 1e-2
    weight_decay: float = 1e-4
    abs_loss_start_step: int = 200
    pseudo_gt_per_dataset: int = 1000
    acae_latents: int = 32
    acae_steps: int = 3000
    acae_l1: float = 0.3
    acae_projected: bool = False
    variants: Tuple[str, ...] = ('consistency', 'separate')
    stage2_steps: int = 400
    stage2_base_learning_rate: float = 3e-3
    stage2_abs_loss_start_step: int = -1
    consistency_weight: float = 1.0
    hybrid_teacher_weight: float = 1.0
    hybrid_start_step: int = 50
    bn_inference_steps: int = 25
    eval_batch: int = 64
    log_every: int = 50
    checkpoint_every: int = 500
    export: bool = True
    stop_after: str = ''

    def __post_init__(self):
        for name in ('n_train', 'n_val', 'crop_size', 'batch_3d', 'depth_bins', 'stage1_steps',
                     'pseudo_gt_per_dataset', 'acae_latents', 'acae_steps', 'stage2_steps', 'eval_batch',
                     'log_every', 'checkpoint_every', 'data_workers'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'{name} must be an int >= 1, received {name}={value!r}')
        for name in ('n_test', 'batch_2d', 'ghost_batch_size', 'bn_inference_steps', 'data_seed', 'batch_splits'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f'{name} must be an int >= 0, received {name}={value!r}')
        for name in ('base_learning_rate', 'stage2_base_learning_rate', 'max_norm'):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f'{name} must be a positive number, received {name}={value!r}')
        for name in ('weight_decay', 'consistency_weight', 'hybrid_teacher_weight', 'acae_l1'):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f'{name} must be a number >= 0, received {name}={value!r}')
        if self.stop_after not in STOP_POINTS:
            raise ValueError(f'stop_after must be one of {STOP_POINTS}, received stop_after={self.stop_after!r}')
        if self.precision not in PRECISIONS:
            raise ValueError(f'precision must be one of {PRECISIONS}, received precision={self.precision!r}')
        variants = tuple(self.variants)
        bad = [v for v in variants if v not in VARIANTS]
        if bad or not variants or len(set(variants)) != len(variants):
            raise ValueError(f'variants must be distinct names among {VARIANTS}, received variants={self.variants!r}')
        object.__setattr__(self, 'variants', variants)
        object.__setattr__(self, 'datasets', tuple(self.datasets))
        if self.datasets:
            parse_datasets(self.datasets)  # raises ValueError naming a malformed entry

    @property
    def batch_size(self) -> int:
        return self.batch_3d + self.batch_2d


PRESETS: Dict[str, Config] = {
    # About a minute and a half on 2 cores: tiny data, a few dozen steps per stage (checks the
    # machinery end to end, not accuracy).
    'smoke': Config(n_train=96, n_val=24, n_test=24, crop_size=64, batch_3d=6, batch_2d=2, precision='float32',
                    stage1_steps=40, abs_loss_start_step=20, pseudo_gt_per_dataset=48, acae_latents=16,
                    acae_steps=300, variants=('consistency',), stage2_steps=20, hybrid_start_step=5,
                    bn_inference_steps=4,
                    eval_batch=48, log_every=10, checkpoint_every=20),
    # The project's main run (`make demo`): < 20 min on 2 CPU cores (17.4 min measured). Without
    # augmentation: on the default data (rendered with random cameras, appearance and occluders) it gave
    # the same validation error at 4000 steps (115.3 vs 117.1 mm, 3D-labelled formats) for 12 % less
    # time; the other presets keep it. 8000 rendered training images per dataset (about 1.7 GB of shards
    # with val and test) instead of 4000: validation 110.4 vs 113.1 mm for 25 s more rendering.
    'default': Config(n_train=8000, stage1_steps=4000, augment=False),
    # The paper's sizes (Table S1 composition of 96 3D + 32 2D examples, 400k + 40k steps,
    # EfficientNetV2-S at 256 px, the published learning rate); for GPU users.
    'paper': Config(n_train=50000, n_val=2000, n_test=5000, crop_size=256, batch_3d=96, batch_2d=32,
                    data_workers=8, backbone='efficientnetv2-s', ghost_batch_size=16, precision='auto',
                    stage1_steps=400_000, base_learning_rate=2.12e-4, weight_decay=3e-3, abs_loss_start_step=5000,
                    pseudo_gt_per_dataset=20000, acae_steps=6000, stage2_steps=40_000, stage2_base_learning_rate=2.12e-4,
                    stage2_abs_loss_start_step=5000, hybrid_start_step=5000, bn_inference_steps=1000,
                    eval_batch=128, log_every=500, checkpoint_every=5000),
}


def parse_variants(value: Optional[str], default: Sequence[str]) -> Tuple[str, ...]:
    """``--variant`` -> tuple of variants ('all', a name, or a comma-separated list; None: ``default``)."""
    if value is None or value == '':
        return tuple(default)
    if value == 'all':
        return VARIANTS
    names = tuple(v.strip() for v in value.split(',') if v.strip())
    bad = [v for v in names if v not in VARIANTS]
    if bad or not names:
        raise ValueError(f'--variant must be "all" or names among {VARIANTS}, received {value!r}')
    return names


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------

SYNTHETIC_STAND_INS = {'h36m_like': 'h36m', 'mpi_like': 'mpi_inf_3dhp', 'smpl_like': 'surreal', 'coco_like': 'coco'}
"""The Table S1 dataset each synthetic dataset stands in for (``--composition=table_s1_*``)."""


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
    """One training dataset of ``--datasets``: synthetic (rendered shards) or full images (adapter, manifest,
    index), with its skeleton and label kind once loaded."""
    name: str
    kind: str  # 'synthetic' | 'adapter' | 'manifest' | 'index'
    root: str = ''
    options: Tuple[Tuple[str, str], ...] = ()


def parse_datasets(items: Sequence[str]) -> List[DatasetEntry]:
    """``--datasets`` entries (see :class:`Config`) -> :class:`DatasetEntry` list (default: synthetic)."""
    from posekit.data import adapters, synth
    entries = []
    for item in items or tuple(synth.PRESETS):
        item = item.strip()
        head, *option_items = item.split(';')
        options = []
        for option in option_items:
            if '=' not in option:
                raise ValueError(f'--datasets {item!r}: options must be key=value, got {option!r}')
            key, value = option.split('=', 1)
            options.append((key.strip(), value))
        name, _, root = head.partition('=')
        name, root = name.strip(), root.strip()
        if name in synth.PRESETS:
            if root or options:
                raise ValueError(f'--datasets {item!r}: the synthetic dataset {name!r} takes no root or options')
            entries.append(DatasetEntry(name, 'synthetic'))
        elif name in adapters.names() and name != 'manifest':
            if not root:
                raise ValueError(f'--datasets {item!r}: the adapter {name!r} needs a root, e.g. {name}=/data/{name}')
            entries.append(DatasetEntry(name, 'adapter', root, tuple(options)))
        elif root.lower().endswith(('.json', '.csv')) or (not root and name.lower().endswith(('.json', '.csv'))):
            path = root or name
            label = name if root else os.path.splitext(os.path.basename(path))[0]
            entries.append(DatasetEntry(label, 'manifest', path, tuple(options)))
        elif root.lower().endswith('.h5'):
            entries.append(DatasetEntry(name, 'index', root))
        else:
            raise ValueError(f'--datasets {item!r}: not a synthetic dataset {tuple(synth.PRESETS)}, an adapter '
                             f'{tuple(n for n in adapters.names() if n != "manifest")}=root, a manifest (.json/.csv) '
                             'or an index (.h5)')
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ValueError(f'--datasets names must be distinct, got {names}')
    return entries


def dataset_specs(config: Config):
    """The synthetic datasets of the run (``synth.PRESETS`` specs) with this config's sizes and crop."""
    from posekit.data import synth
    names = [e.name for e in parse_datasets(config.datasets) if e.kind == 'synthetic']
    return [dataclasses.replace(spec, n_train=config.n_train, n_val=config.n_val, n_test=config.n_test)
            for spec in synth.preset_specs('default', names=names, crop_size=config.crop_size)] if names else []


def composition(config: Config, kinds: Optional[Mapping[str, str]] = None) -> Dict[str, int]:
    """Examples per dataset per batch ({name: count}, batch order: 3D datasets first).

    ``kinds``: {dataset name: '3d' | '2d'} of the loaded datasets (default: the synthetic datasets' kinds).
    """
    from posekit.data import pipeline, synth
    if kinds is None and '=' in config.composition:  # already resolved (resolve_composition): the given order
        return {n.strip(): int(c) for n, _, c in (p.partition('=') for p in config.composition.split(','))}
    if kinds is None:
        kinds = {spec.name: spec.label_kind for spec in dataset_specs(config)}
    names_3d = [n for n, k in kinds.items() if k == '3d']
    names_2d = [n for n, k in kinds.items() if k == '2d']
    spec = config.composition.strip()
    if not spec:
        return pipeline.make_composition(names_3d, names_2d, config.batch_3d if names_3d else 0,
                                         config.batch_2d if names_2d else 0)
    if spec.startswith('table_s1_'):
        return pipeline.table_s1_composition(spec[len('table_s1_'):], names_3d + names_2d,
                                             config.batch_3d if names_3d else 0, config.batch_2d if names_2d else 0,
                                             aliases=SYNTHETIC_STAND_INS)
    counts = {}
    for part in spec.split(','):
        name, _, count = part.partition('=')
        if not count.strip().isdigit() or int(count) < 1 or name.strip() not in kinds:
            raise ValueError(f'--composition {spec!r}: {part!r} must be dataset=count with a dataset of '
                             f'{list(kinds)} and count >= 1')
        counts[name.strip()] = int(count)
    missing = [n for n in kinds if n not in counts]
    if missing:
        raise ValueError(f'--composition {spec!r} lacks the datasets {missing}')
    return {n: counts[n] for n in names_3d + names_2d}


def resolve_composition(config: Config, kinds: Mapping[str, str]) -> Config:
    """The config with its composition written out (``name=count,...``, 3D datasets first) and ``batch_3d`` /
    ``batch_2d`` the sums of its 3D and 2D parts (the ghost-BN groups), for the loaded datasets' ``kinds``."""
    counts = composition(config, kinds)
    return dataclasses.replace(
        config, composition=','.join(f'{n}={c}' for n, c in counts.items()),
        batch_3d=sum(c for n, c in counts.items() if kinds[n] == '3d'),
        batch_2d=sum(c for n, c in counts.items() if kinds[n] == '2d'))


def eval_splits(mocap_dir: Optional[str], test_mocap_dir: Optional[str]) -> Dict[str, str]:
    """{split: description} of the evaluation sets.

    val = held-out subjects of the training motion (tuning happens here). test = the external BVH set
    when given; else, for procedural motion, procedural test subjects (new people and motion); with a
    BVH folder and no test folder the synthetic test split would repeat the val subjects, so it is
    left out.
    """
    splits = {SPLIT_VAL: 'val: held-out subjects of the training motion'}
    if test_mocap_dir:
        splits[SPLIT_TEST] = f'test: external motion {os.path.basename(os.path.normpath(test_mocap_dir))}'
    elif not mocap_dir:
        splits[SPLIT_TEST] = 'test: procedural test subjects (unseen people and motion)'
    return splits


def prepare_data(config: Config, data_dir: str, mocap_dir, test_mocap_dir, log) -> Dict[str, Dict[str, List[str]]]:
    """Renders (or reuses) the synthetic shards; returns {dataset: {split: [paths]}}. Call before TensorFlow
    works (rendering forks worker processes)."""
    from posekit.data import storage
    specs = dataset_specs(config)
    if not specs:
        return {}
    splits = ('train',) + tuple(eval_splits(mocap_dir, test_mocap_dir))
    return storage.ensure_datasets(
        data_dir, specs, seed=config.data_seed, mocap_dir=mocap_dir,
        test_mocap_dir=test_mocap_dir, splits=splits, workers=config.data_workers, progress=True,
        max_frames_per_clip=config.max_frames_per_clip, log=log)


def full_image_indices(config: Config, data_dir: str, log) -> Dict[str, str]:
    """{name: index file} of the full-image training datasets: adapter and manifest entries are indexed once
    (``<data_dir>/index/<name>_train.h5``, rebuilt when the entry changes), index entries used as given."""
    from posekit.data import adapters, examples
    out = {}
    for entry in parse_datasets(config.datasets):
        if entry.kind == 'synthetic':
            continue
        if entry.kind == 'index':
            out[entry.name] = entry.root
            continue
        path = os.path.join(data_dir, 'index', f'{entry.name}_train.h5')
        key = json.dumps(dict(kind=entry.kind, root=os.path.abspath(entry.root), options=entry.options))
        key_path = path + '.key'
        if os.path.isfile(path) and os.path.isfile(key_path):
            with open(key_path, encoding='utf-8') as f:
                if f.read() == key:
                    log(f'{entry.name}: index {path} up to date (reused)')
                    out[entry.name] = path
                    continue
        adapter = 'manifest' if entry.kind == 'manifest' else entry.name
        items = adapters.load(adapter, entry.root, 'train', **dict(entry.options))
        if not items:
            raise ValueError(f'--datasets {entry.name}: the {adapter} adapter found no training examples in '
                             f'{entry.root!r}')
        examples.write_index(path, items, 'train', root=adapters.image_root(adapter, entry.root))
        common.atomic_write_text(key_path, key)
        log(f'{entry.name}: indexed {len(items)} training examples of {entry.root} -> {path}')
        out[entry.name] = path
    return out


def joint_space(config: Optional[Config] = None, index_skeletons: Optional[Mapping[str, str]] = None):
    """The model's joint space: the synthetic datasets' formats (``bodies.DEFAULT_FORMATS``) when any synthetic
    dataset is used, then the skeletons of the full-image datasets in ``--datasets`` order."""
    from posekit.data.bodies import DEFAULT_FORMATS
    from posekit.skeletons import JointSpace
    formats = list(DEFAULT_FORMATS) if config is None or dataset_specs(config) else []
    for skeleton in (index_skeletons or {}).values():
        if skeleton not in formats:
            formats.append(skeleton)
    return JointSpace(formats)


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------

def ghost_groups(config: Config, replicas: int = 1):
    """Ghost BN groups of one replica's batch when ``ghost_batch_size`` is 0: the 3D and the 2D part of each of
    the ``batch_splits / replicas`` chunks it holds (``batch_splits`` 0 means ``replicas``)."""
    splits = config.batch_splits or replicas
    if splits % replicas:
        raise ValueError(f'batch_splits={config.batch_splits} must be a multiple of the {replicas} replicas')
    parts = [n // splits for n in (config.batch_3d, config.batch_2d) if n]
    return parts * (splits // replicas)


def build_backbone(config: Config):
    """The backbone (call inside the strategy's scope: the Ghost BN groups are those of one replica)."""
    import tensorflow as tf
    from posekit.models import backbones
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    groups = None if config.ghost_batch_size else ghost_groups(config, replicas)
    weights = config.backbone_weights or None
    if weights not in (None, 'imagenet') and not os.path.isfile(weights):
        raise FileNotFoundError(f'--backbone-weights {weights!r} is not a file (a Keras weights file of the '
                                f'{config.backbone} backbone, or "imagenet" to download the ImageNet weights)')
    return backbones.build_backbone(
        config.backbone, input_shape=(config.crop_size, config.crop_size, 3), width=config.backbone_width,
        depth=config.backbone_depth, ghost_batch_size=config.ghost_batch_size or None, ghost_groups=groups,
        max_norm=config.max_norm, checkpoint=weights)


def resolve_precision(config: Config, space, streams, seed: int, log=None) -> str:
    """The policy to train with: ``config.precision``, or for 'auto' ``posekit.train.precision.choose_policy``.

    'auto' builds the stage-1 model under float32 and under ``auto_policy()`` and times a few interleaved
    training steps on the first training batch (about a minute on 2 cores); the choice is a measurement, so
    :func:`run_experiment` records it in ``<out>/precision.json`` and reuses it.
    """
    import keras
    from posekit.train import precision
    if config.precision != 'auto':
        return precision.resolve_policy(config.precision)
    batch = next(iter(make_dataset_fn(config, streams, space, seed)(0)))
    choice = precision.choose_policy(
        lambda: build_model(config, space), make_loss_fn(config, space, seed, stage=1), batch,
        make_optimizer=lambda: keras.optimizers.AdamW(config.base_learning_rate, weight_decay=config.weight_decay),
        jit_compile=config.jit_compile, seed=seed)
    if log is not None:
        log(f"precision 'auto' -> {choice.policy} (posekit.train.precision.choose_policy: float32 "
            f"{choice.float32_ms:.0f} ms/step, {choice.candidate} {choice.candidate_ms:.0f} ms/step)")
    return choice.policy


def build_model(config: Config, space, head_mode: str = 'separate', acae=None, backbone=None):
    """A built Metrabs model over ``space`` (call inside ``policy_scope(config.precision)``).

    ``backbone``: reuse this backbone (stage 2); None builds a new one.
    """
    import tensorflow as tf
    from posekit.models.metrabs import Metrabs
    if backbone is None:
        backbone = build_backbone(config)
    model = Metrabs(backbone, space.n_joints, head_mode=head_mode, acae=acae, depth_bins=config.depth_bins,
                    kernel_max_norm=config.max_norm,
                    format_slices={f: (s.start, s.stop) for f, s in space.slices.items()},
                    name=f'metrabs_{head_mode}')
    size = config.crop_size
    intrinsics = tf.constant([[[float(size), 0.0, (size - 1) / 2], [0.0, float(size), (size - 1) / 2],
                               [0.0, 0.0, 1.0]]])
    model(tf.zeros([1, size, size, 3]), intrinsics, training=False)
    return model


def init_head_from_separate(head, separate_head, n_joints: int, acae=None, offset_joints: bool = False):
    """Initialises a latent/hybrid head from a trained separate (all-joints) head.

    Head channels are P 2D heatmaps then D x P 3D heatmaps ordered (depth bin, point). With
    ``acae`` the first L points get the affine combinations ``sum_j W_enc[j, l] (kernel, bias)_j`` of
    the joints' channels; with ``offset_joints`` (hybrid) the J joint channels after the L latents
    are copied.
    """
    old_kernel, old_bias = [np.asarray(w) for w in separate_head.conv.get_weights()]
    kernel, bias = [np.asarray(w).copy() for w in head.conv.get_weights()]
    depth = separate_head.depth_bins
    n_points = head.n_points

    def blocks(array, n):  # [..., n (1 + D)] -> [1 + D] list of [..., n]
        return [array[..., k * n:(k + 1) * n] for k in range(1 + depth)]

    old_k, old_b = blocks(old_kernel, n_joints), blocks(old_bias, n_joints)
    new_k, new_b = blocks(kernel, n_points), blocks(bias, n_points)
    n_latents = 0
    if acae is not None:
        weights = np.asarray(acae.encoder_weights(), np.float64)  # [J, L]
        n_latents = weights.shape[1]
        for k in range(1 + depth):
            new_k[k][..., :n_latents] = old_k[k] @ weights
            new_b[k][:n_latents] = old_b[k] @ weights
    if offset_joints:
        for k in range(1 + depth):
            new_k[k][..., n_latents:n_latents + n_joints] = old_k[k]
            new_b[k][n_latents:n_latents + n_joints] = old_b[k]
    head.conv.set_weights([np.concatenate(new_k, axis=-1).astype(kernel.dtype),
                           np.concatenate(new_b, axis=-1).astype(bias.dtype)])


# ----------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------

def make_loss_fn(config: Config, space, seed: int, stage: int = 1, variant: str = 'separate', acae=None):
    """``loss_fn(model, batch, step, training)`` of the training loop for a stage and variant.

    Every variant trains the absolute output with ``metrabs_loss`` (metres). The per-example weight
    of the 3D head in the absolute output, ``mix_3d_in_view``, is drawn uniformly in [0, 1] from a
    stateless generator seeded by (seed, step), so resumed runs draw the same numbers.
    """
    import tensorflow as tf
    from posekit.data import pipeline
    from posekit.models.metrabs import BOX_SIZE_MM
    from posekit.train import losses

    if variant not in VARIANTS:
        raise ValueError(f'variant must be one of {VARIANTS}, received variant={variant!r}')
    if variant != 'separate' and stage == 2 and acae is None:
        raise ValueError(f'variant={variant!r} needs the fitted acae, received acae=None')
    averaging = losses.per_joint_averaging_matrix(space)
    crop = config.crop_size
    abs_start = config.abs_loss_start_step if stage == 1 else config.stage2_abs_loss_start_step
    px_to_box_m = BOX_SIZE_MM / MM_PER_M / crop
    mix_seed = int(seed) + (0 if stage == 1 else STAGE_SEED_OFFSET)
    variant = 'separate' if stage == 1 else variant

    def supervised(pred, batch, step, key='coords3d_abs'):
        return losses.metrabs_loss(pred, batch, step, crop_size_px=crop, averaging_matrix=averaging,
                                   output_key=key, abs_loss_start_step=abs_start)

    def loss_fn(model, batch, step, training):
        images = pipeline.to_unit_range(batch['image'])
        seed_pair = tf.stack([tf.constant(mix_seed, tf.int64), tf.cast(step, tf.int64)])
        # One draw for the global batch, this replica's slice of it: the same numbers as one process.
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync if context is not None else 1
        replica = context.replica_id_in_sync_group if context is not None else 0
        local = tf.shape(images)[0]
        mix = tf.random.stateless_uniform([local * replicas], seed=seed_pair)
        mix = mix[tf.cast(replica, tf.int32) * local:][:local]
        pred = model(images, batch['intrinsics'], training=training, mix_3d_in_view=mix)
        if variant == 'hybrid':
            loss, parts = supervised(pred, batch, step, 'direct_coords3d_abs')
            latent_loss, _ = supervised(pred, batch, step)
            teacher = losses.hybrid_teacher_loss(pred['latents3d_abs'] / MM_PER_M,
                                                 pred['direct_coords3d_abs'] / MM_PER_M, acae, step,
                                                 start_step=config.hybrid_start_step)
            loss = loss + latent_loss + config.hybrid_teacher_weight * teacher
            parts.update(latent_loss=latent_loss, teacher=teacher)
        else:
            loss, parts = supervised(pred, batch, step)
        if variant == 'consistency':
            consistency = losses.consistency_loss(pred['coords3d_abs'] / MM_PER_M, acae,
                                                  pred2d=pred['coords2d'] * px_to_box_m)
            loss = loss + config.consistency_weight * consistency
            parts['consistency'] = consistency
        return loss, parts

    return loss_fn


# ----------------------------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------------------------

def _optimizer(schedule, config: Config):
    import keras
    return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=config.weight_decay)


def train_config(config: Config, steps: int, seed: int, bn_inference_steps: int = 0):
    from posekit.train import loop
    return loop.TrainConfig(total_steps=steps, precision=config.precision, checkpoint_every=config.checkpoint_every,
                            keep_last=2, log_every=config.log_every, bn_inference_steps=bn_inference_steps,
                            jit_compile=config.jit_compile, deterministic=config.deterministic, seed=seed,
                            progress=True)


def make_dataset_fn(config: Config, streams, space, seed: int):
    """``dataset_fn(start_step)`` of the multi-dataset training batches (augmented, own-format masked)."""
    from posekit.data import pipeline
    from posekit.data.augment import AugmentConfig
    import tensorflow as tf
    augment = AugmentConfig() if config.augment else None
    comp = composition(config)
    splits = config.batch_splits or 1  # resolved from the strategy by run_experiment
    order = tf.constant(pipeline.replica_order(comp, splits)) if splits > 1 else None

    def dataset_fn(start_step):
        batches = pipeline.interleave_by_composition(streams, comp, seed=seed, start_step=start_step,
                                                     augment=augment, mirror=space.mirror, mask_to_own_format=True)
        if order is None:
            return batches
        return batches.map(lambda batch: {k: tf.gather(v, order) for k, v in batch.items()},
                           num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset_fn


def run_stage1(config: Config, space, streams, out: str, seed: int, resume: bool, log, strategy=None):
    """Trains (or restores) stage 1 under ``strategy`` (None: the default); returns (model, TrainResult)."""
    import tensorflow as tf
    from posekit.train import loop, schedules
    from posekit.train.precision import policy_scope
    import keras
    strategy = strategy or tf.distribute.get_strategy()
    keras.utils.set_random_seed(seed)
    with strategy.scope(), policy_scope(config.precision):
        model = build_model(config, space)
        optimizer = _optimizer(schedules.MetrabsSchedule(config.stage1_steps, base=config.base_learning_rate), config)
    if strategy is not tf.distribute.get_strategy():
        # Keras initializers draw other numbers inside a strategy's scope: start from the weights a
        # one-process run with this seed starts from (every worker computes the same ones).
        keras.utils.set_random_seed(seed)
        with policy_scope(config.precision):
            reference = build_model(config, space)
        with strategy.scope():  # every variable, the dropout seed-generator states included
            for variable, value in zip(model.variables, reference.variables):
                variable.assign(value)
    log(f'stage 1: {loop.count_params(model, trainable_only=True)} trainable parameters, '
        f'{config.stage1_steps} steps of batch {config.batch_size} {composition(config)}')
    result = loop.train(model, make_loss_fn(config, space, seed, stage=1),
                        make_dataset_fn(config, streams, space, seed), optimizer,
                        train_config(config, config.stage1_steps, seed), out_dir=os.path.join(out, 'stage1'),
                        strategy=strategy, resume=resume)
    return model, result


def run_stage2(config: Config, variant: str, space, streams, stage1_model, acae, out: str, seed: int,
               resume: bool, log, strategy=None):
    """Fine-tunes a copy of the stage-1 weights with ``variant`` under ``strategy``; returns (model,
    TrainResult)."""
    import keras
    import tensorflow as tf
    from posekit.train import loop, schedules
    from posekit.train.precision import policy_scope
    strategy = strategy or tf.distribute.get_strategy()
    keras.utils.set_random_seed(seed + STAGE_SEED_OFFSET)
    with strategy.scope(), policy_scope(config.precision):
        backbone = build_backbone(config)
        backbone.set_weights(stage1_model.backbone.get_weights())
        head_mode = {'latent': 'latent', 'hybrid': 'hybrid'}.get(variant, 'separate')
        if head_mode != 'separate':
            acae.trainable = False
        model = build_model(config, space, head_mode=head_mode, acae=acae if head_mode != 'separate' else None,
                            backbone=backbone)
        if head_mode == 'separate':
            model.head.set_weights(stage1_model.head.get_weights())
        else:
            init_head_from_separate(model.head, stage1_model.head, space.n_joints, acae=acae,
                                    offset_joints=head_mode == 'hybrid')
        steps = config.stage2_steps
        head_ids = {id(v) for v in model.head.trainable_variables}
        optimizers = [
            (_optimizer(schedules.FinetuneSchedule(steps, 'head', base=config.stage2_base_learning_rate), config),
             lambda v: id(v) in head_ids),
            (_optimizer(schedules.FinetuneSchedule(steps, 'backbone', base=config.stage2_base_learning_rate), config),
             lambda v: id(v) not in head_ids)]
    log(f'stage 2 ({variant}): {steps} steps + {config.bn_inference_steps} with BatchNorm in inference mode')
    result = loop.train(model, make_loss_fn(config, space, seed, stage=2, variant=variant, acae=acae),
                        make_dataset_fn(config, streams, space, seed + STAGE_SEED_OFFSET), optimizers,
                        train_config(config, steps, seed + STAGE_SEED_OFFSET, config.bn_inference_steps),
                        out_dir=os.path.join(out, f'stage2_{variant}'), strategy=strategy, resume=resume)
    return model, result


def fit_or_load_acae(config: Config, space, pseudo_gt: Dict[str, np.ndarray], out: str, seed: int, log):
    """The ACAE fitted to the pseudo ground truth (cached in ``<out>/acae.npz``); (layer, info dict)."""
    from posekit import acae as acae_lib
    path = os.path.join(out, 'acae.npz')
    info_path = os.path.join(out, 'acae.json')
    poses = pseudo_gt['coords3d_abs']
    key = f'{np.sum(poses, dtype=np.float64):.9e}/{len(poses)}/{config.acae_latents}/{config.acae_steps}'
    if os.path.isfile(path) and os.path.isfile(info_path):
        with open(info_path, encoding='utf-8') as f:
            info = json.load(f)
        if info.get('pseudo_gt_key') == key:
            log(f'ACAE: reused {path}')
            return acae_lib.load_acae(path, expected_joint_names=space.names), info
    start = time.perf_counter()
    intrinsics = pseudo_gt['intrinsics'] if config.acae_projected else None
    layer, history = acae_lib.fit_acae(poses, space, n_latents=config.acae_latents, l1=config.acae_l1,
                                       steps=config.acae_steps, projected=config.acae_projected,
                                       intrinsics=intrinsics, seed=seed)
    acae_lib.save_acae(path, layer, space.names)
    info = dict(pseudo_gt_key=key, n_latents=config.acae_latents, n_poses=int(len(poses)), steps=config.acae_steps,
                final_loss_mm=float(history['loss_mm'][-1]),
                pseudo_gt_residual_mm=float(np.mean(acae_lib.reconstruction_error(layer, poses))),
                weight_stats=acae_lib.weight_stats(layer), fit_s=round(time.perf_counter() - start, 1))
    common.write_json(info_path, info)
    log(f'ACAE: {config.acae_latents} latents fitted to {len(poses)} pseudo-GT poses in {info["fit_s"]} s, '
        f'residual {info["pseudo_gt_residual_mm"]:.1f} mm')
    return layer, info


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------

def _has_checkpoints(out: str) -> bool:
    if not os.path.isdir(out):
        return False
    for name in os.listdir(out):
        folder = os.path.join(out, name, 'checkpoints')
        if (name == 'stage1' or name.startswith('stage2_')) and os.path.isdir(folder) and os.listdir(folder):
            return True
    return False


def run_experiment(config: Config, out: str, seed: int = 0, mocap_dir: Optional[str] = None,
                   test_mocap_dir: Optional[str] = None, resume: bool = False,
                   log: Callable[[str], None] = print, preset: str = 'default', strategy: str = 'default',
                   replicas: int = 0) -> Dict:
    """Runs every stage (module docstring); writes results.json (the schema of :mod:`experiments.common`),
    results.md and saved_model/. Returns the results.json record.

    ``strategy`` (``common.STRATEGIES``) and ``replicas``: see ``common.make_strategy``. With ``multi_worker``
    every process of ``TF_CONFIG`` runs this function; all read the training checkpoints in ``out`` (a folder
    they share), only the chief writes there; the other workers prepare their data and artefacts in a scratch
    folder of their own (``common.worker_scratch``), train, and return ``{}`` after the last training stage.
    """
    chief = common.is_chief_process(strategy)
    local = common.worker_scratch(out, strategy)
    data = dict(mocap=common.folder_fingerprint(mocap_dir), test_mocap=common.folder_fingerprint(test_mocap_dir))
    with common.run_directory(local, EXPERIMENT, config, [seed], data, chief=chief):
        if chief and _has_checkpoints(out) and not resume:
            raise ValueError(f'--out {out!r} already holds checkpoints of a run; pass --resume to continue it '
                             'or choose a new --out')
        return _run_experiment(config, out, seed, mocap_dir, test_mocap_dir, resume, log, preset,
                               strategy, replicas, local, chief)


def _run_experiment(config: Config, out: str, seed: int, mocap_dir: Optional[str], test_mocap_dir: Optional[str],
                    resume: bool, log: Callable[[str], None], preset: str, strategy_name: str = 'default',
                    replicas: int = 0, local: Optional[str] = None, chief: bool = True) -> Dict:
    clock = common.PhaseClock()
    local = local or out  # this process's files (the chief's: out)
    data_dir = config.data_dir or os.path.join(local, 'data')
    with clock.phase('data'):
        paths = prepare_data(config, data_dir, mocap_dir, test_mocap_dir, log)  # before TensorFlow starts
        indices = full_image_indices(config, data_dir, log)
    common.configure_determinism(config.deterministic, log)  # before any TensorFlow op runs
    strategy = common.make_strategy(strategy_name, replicas)
    config = dataclasses.replace(config, batch_splits=config.batch_splits or strategy.num_replicas_in_sync)
    if strategy.num_replicas_in_sync > 1:
        log(f'{strategy_name} strategy: {strategy.num_replicas_in_sync} replicas, global batch '
            f'{config.batch_size} in {config.batch_splits} chunks of the same composition')

    from experiments import metrabs_acae_eval as evaluation
    from posekit.data import examples, full_image, pipeline
    from posekit.data.bodies import DEFAULT_FORMATS
    from posekit.eval import baselines

    sources = {name: examples.open_index(path) for name, path in indices.items()}
    space = joint_space(config, {name: source.skeleton for name, source in sources.items()})
    kinds = {}
    for entry in parse_datasets(config.datasets):
        if entry.kind == 'synthetic':
            kinds[entry.name] = next(spec.label_kind for spec in dataset_specs(config) if spec.name == entry.name)
        else:
            kinds[entry.name] = '3d' if np.any(sources[entry.name].field('is_3d')) else '2d'
    config = resolve_composition(config, kinds)
    pipeline.replica_order(composition(config), config.batch_splits)  # ValueError unless every count divides
    splits = eval_splits(mocap_dir, test_mocap_dir) if paths else {}

    def widened(source):
        if tuple(space.formats) == tuple(DEFAULT_FORMATS):
            return source
        return pipeline.JointSpaceSource(source, DEFAULT_FORMATS, space)

    synthetic = {name: pipeline.stream_from_shards(p['train']) for name, p in paths.items()}
    streams = {}
    for name in composition(config):
        if name in synthetic:
            streams[name] = widened(synthetic[name])
        else:
            streams[name] = full_image.FullImageStream(sources[name], space, sources[name].skeleton, config.crop_size)
    with clock.phase('precision'):  # decided once per --out: a resumed or repeated run keeps its policy
        precision_path = os.path.join(local, 'precision.json')
        saved = None
        if os.path.isfile(precision_path):
            with open(precision_path, encoding='utf-8') as f:
                saved = json.load(f)
        if saved is not None and saved.get('requested') == config.precision:
            policy = saved['policy']
            log(f"precision {config.precision!r} -> {policy} (recorded in {precision_path})")
        elif config.precision == 'auto' and strategy_name != 'default':
            # Timings differ between workers: every replica must choose the same policy without measuring.
            from posekit.train import precision
            policy = precision.resolve_policy('auto')
            log(f"precision 'auto' -> {policy} (device rule; no timing under --strategy={strategy_name})")
        else:
            policy = resolve_precision(config, space, streams, seed, log)
        if saved is None or saved.get('requested') != config.precision:
            common.write_json(precision_path, dict(requested=config.precision, policy=policy))
        config = dataclasses.replace(config, precision=policy)
    eval_sources = {split: {name: pipeline.stream_from_shards(p[split]) for name, p in paths.items()}
                    for split in splits}
    motion = next(iter(synthetic.values())).metadata['motion_source'] if synthetic else 'none (full images only)'

    with clock.phase('stage1'):
        stage1_model, stage1_result = run_stage1(config, space, streams, out, seed, resume, log, strategy)
    if config.stop_after == 'stage1':
        return _stop_after_stage1(config, local, seed, preset, stage1_result, clock, chief, log)
    predictions = {}
    with clock.phase('predict'):
        predict = evaluation.make_predict_fn(stage1_model, config.crop_size)
        if chief:
            predictions['stage1'] = evaluation.predict_splits(stage1_model, eval_sources, config,
                                                              os.path.join(local, 'stage1'), predict)
    with clock.phase('pseudo_gt'):
        pseudo_gt = evaluation.pseudo_ground_truth(stage1_model, streams, config,
                                                   os.path.join(local, 'pseudo_gt.npz'), predict)
    with clock.phase('acae'):
        acae, acae_info = fit_or_load_acae(config, space, pseudo_gt, local, seed, log)

    stage2 = {}
    for variant in config.variants:
        with clock.phase(f'stage2_{variant}'):
            model, result = run_stage2(config, variant, space, streams, stage1_model, acae, out, seed, resume, log,
                                       strategy)
        if chief:
            with clock.phase('predict'):
                predictions[variant] = evaluation.predict_splits(model, eval_sources, config,
                                                                 os.path.join(local, f'stage2_{variant}'))
        stage2[variant] = dict(model=model, result=result)
    if not chief:  # the chief evaluates, exports and writes the results
        log('training done; the chief evaluates and writes the results')
        return {}

    with clock.phase('evaluation'):
        if splits:  # the synthetic datasets' evaluation sets (all formats of DEFAULT_FORMATS labelled)
            train_poses = [s.arrays(['coords3d', 'is_3d']) for s in synthetic.values()]
            baseline = baselines.mean_pose(np.concatenate([a['coords3d'][a['is_3d']] for a in train_poses]))
            formats_3d = [spec.skeleton for spec in dataset_specs(config) if spec.label_kind == '3d']
            results, checks = evaluation.evaluate_all(predictions, eval_sources, baseline, space, acae, splits,
                                                      formats_3d, eval_formats=DEFAULT_FORMATS)
        else:
            results, checks = evaluation.no_evaluation(), []

    exported = None
    if config.export:
        with clock.phase('export'):
            exported = export(stage2[config.variants[0]]['model'], space, os.path.join(out, 'saved_model'), log)

    training = {'stage1': _training_summary(stage1_result)}
    training.update({f'stage2_{v}': _training_summary(s['result']) for v, s in stage2.items()})
    context = dict(mocap_dir=mocap_dir or 'procedural', test_mocap_dir=test_mocap_dir, motion=motion,
                   data_dir=data_dir, composition=composition(config), joint_space=list(space.formats),
                   acae=acae_info, training=training, saved_model=exported)
    record = common.write_results(out, EXPERIMENT, preset, config, [seed], results, checks, context, clock)
    common.atomic_write_text(os.path.join(out, 'results.md'), evaluation.markdown_report(record))
    timings = record['context']['timings']
    log(f'wrote {out}/results.json and results.md in {timings["wall_s"]["total"]:.0f} s '
        f'({timings["cpu_s"]["total"]:.0f} CPU s)')
    return record


def _stop_after_stage1(config: Config, out: str, seed: int, preset: str, result, clock, chief: bool, log) -> Dict:
    """``stop_after='stage1'``: results.json with the stage-1 training summary only (chief)."""
    if not chief:
        return {}
    record = common.write_results(out, EXPERIMENT, preset, config, [seed], {}, [],
                                  dict(training={'stage1': _training_summary(result)}, stopped_after='stage1'),
                                  clock)
    log(f'stopped after stage 1 (stop_after=stage1); wrote {out}/results.json')
    return record


def _training_summary(result) -> Dict:
    history = result.history
    last = {k: v[-1] for k, v in history.items() if v}
    return dict(steps=result.final_step, start_step=result.start_step, steps_per_s=result.steps_per_s, wall_time_s=round(result.wall_time_s, 1),
                policy=result.policy, final=last)


def export(model, space, out_dir: str, log) -> Optional[str]:
    """``posekit.export.export_model`` of ``model`` to ``out_dir``.

    An existing export of the same weights (fingerprint in ``<out_dir>.key``) is kept; any other is replaced.
    """
    import shutil
    from experiments.metrabs_acae_eval import weights_fingerprint
    from posekit import export as export_lib
    key_path = out_dir.rstrip(os.sep) + '.key'
    key = weights_fingerprint(model)
    if os.path.isfile(os.path.join(out_dir, 'saved_model.pb')) and os.path.isfile(key_path):
        with open(key_path, encoding='utf-8') as f:
            if f.read().strip() == key:
                log(f'SavedModel in {out_dir} is up to date (reused)')
                return out_dir
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    if os.path.exists(key_path):
        os.remove(key_path)
    path = export_lib.export_model(model, space, out_dir)
    common.atomic_write_text(key_path, key + '\n')
    log(f'exported the SavedModel to {path}')
    return path


FLAGS = flags.FLAGS


def define_flags():
    common.define_common_flags('runs/metrabs_acae')
    flags.DEFINE_string('variant', None,
                        f'Stage-2 variant(s): one of {VARIANTS}, a comma-separated list or "all" '
                        "(default: the preset's; the first one is exported).")
    flags.DEFINE_bool('resume', False, 'Continue every stage from its checkpoints in --out.')
    flags.DEFINE_string('datasets', None,
                        'Training datasets, comma-separated (default: the synthetic h36m_like, mpi_like, smpl_like, '
                        'coco_like): a synthetic name, adapter=root (h36m, mpi_inf_3dhp, coco, mpii, panoptic; '
                        'options as adapter=root;key=value), name=manifest.json|.csv, or name=index.h5.')
    flags.DEFINE_string('composition', None,
                        'Examples per dataset per batch: name=count,... or table_s1_small|medium|full (supplement '
                        'Table S1 scaled to batch_3d + batch_2d); default: an even split.')
    flags.DEFINE_string('backbone-weights', None,
                        'Keras weights file for the backbone, or "imagenet" (explicit opt-in: downloads the '
                        'ImageNet weights). Default: random initialisation, nothing downloaded.')


def main(argv):
    del argv
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    absl_logging.set_verbosity(absl_logging.WARNING)  # TensorFlow's INFO lines while saving the model
    config = common.resolve_config(PRESETS, FLAGS.preset, FLAGS.set)
    config = dataclasses.replace(config, variants=parse_variants(FLAGS.variant, config.variants))
    changes = {}
    if FLAGS.datasets is not None:
        changes['datasets'] = tuple(item for item in FLAGS.datasets.split(',') if item.strip())
    if FLAGS.composition is not None:
        changes['composition'] = FLAGS.composition
    if FLAGS['backbone-weights'].value is not None:
        changes['backbone_weights'] = FLAGS['backbone-weights'].value
    config = dataclasses.replace(config, **changes)
    record = run_experiment(config, FLAGS.out, seed=FLAGS.seed,
                            mocap_dir=common.resolve_mocap_dir(FLAGS['mocap-dir'].value),
                            test_mocap_dir=common.test_mocap_dir(FLAGS['test-mocap-dir'].value),
                            resume=FLAGS.resume, log=common.stderr_log, preset=FLAGS.preset,
                            strategy=FLAGS.strategy, replicas=FLAGS.replicas)
    from experiments import metrabs_acae_eval as evaluation
    if record and record['results']:
        print(evaluation.summary_table(record))


if __name__ == '__main__':
    define_flags()
    common.run_main(main, EXPERIMENT)
