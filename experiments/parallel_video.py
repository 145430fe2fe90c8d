"""Massively parallel video networks (Carreira et al., ECCV 2018) for keypoint heatmaps: Table 2 and Fig. 10.

    python -m experiments.parallel_video --preset=default --out runs/parallel_video \\
        [--mocap-dir ../shared/data/cmu_mocap] [--test-mocap-dir ../shared/data/cmu_mocap_test] [--seed 0] \\
        [--set key=value ...]

For each family (Par-DenseNet with 1, 2, 4, 7, 14 subnetworks; Par-Inception with 1, 5, 10), with and without
multi-rate clocks, plus temporal-filter, feedback and sequential-to-parallel distillation variants:

1. data: synthetic videos (``posekit.data.video``: person-centred crops of motion-capture or procedural motion
   seen by an orbiting camera, h36m_17 keypoints), cached as HDF5 in ``--out/data``;
2. training through the one loop (``posekit.train.loop.train``) with back-propagation through time
   (``posekit.train.video.make_bptt_loss``): clips of ``fill_steps()`` + ``train_frames`` frames from zero states
   (the first ``fill_steps() - latency`` frames a burn-in without gradients), the output at step t >=
   ``fill_steps()`` trained against the heatmaps of frame t - latency (weighted sigmoid cross-entropy, keypoint
   pixels x10). Each family first trains its sequential model (1 subnetwork, no clocks) from scratch for
   ``teacher_steps``; every configuration (the sequential one included) then starts from those weights and trains
   ``finetune_steps`` more; ``distilled`` configurations add the distillation term against that frozen
   sequential teacher (m = 3 units, weight ``distill_weight``);
3. evaluation on the test clips streamed from zero states: test loss and PCK (heatmap argmax within 5 % of the
   frame side) over steps >= ``eval_warmup`` (default: the largest ``fill_steps()``), against a constant mean-heatmap
   baseline; the normalised distance of the students' activations to the teacher's;
4. costs: unit and miniblock executions per 16 frames counted inside the compiled step (``ExecutionCounter``)
   next to the analytic counts, FLOPs per frame, sequential depth per frame, and the measured streaming speed
   (compiled ``step``, batch 1, ``timing_size`` px, warm; all configurations of a family interleaved round by
   round; medians of per-round ratios give the speed-ups).

Outputs in ``--out``: ``results.json`` (``records``: one per configuration plus the baselines; ``context``),
``results.md`` (the table beside the paper's Table 2 numbers we know, checks, honest notes) and
``loss_vs_speed.png`` (Fig. 10 style).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Dict, List, Optional, Tuple

from absl import flags

import numpy as np

from experiments import common

EXPERIMENT = 'parallel_video'
FAMILIES = ('densenet', 'inception')
VARIANTS = ('temporal', 'feedback')
FRAMES_PER_COUNT = 16  # the paper counts executions per 16 frames
FLOPS_PER_MFLOP = 1e6
MS_PER_S = 1000.0
CLOCK_SPEEDUP_TARGET = 0.95  # measured clock speed-up must reach this fraction of the FLOP-count speed-up
CLOCKED_PARALLEL_SUBNETS = 4  # the clocked parallel model whose test loss is compared with the clocked sequential
CLOCKED_PARALLEL_LOSS_RATIO = 1.5  # ...and must stay within this factor of it
# Paper numbers we know (Carreira et al. 2018, Par-DenseNet keypoints, per 16 frames; measured speed-up of the
# clocks on 48 CPU cores). Everything else of their Table 2 is left blank rather than guessed.
PAPER_MINIBLOCKS = {('densenet', False): 416, ('densenet', True): 86}
PAPER_CLOCK_SPEEDUP = 2.6


@dataclasses.dataclass(frozen=True)
class Config:
    """Experiment settings (frozen; ``--set key=value`` overrides a field, unknown keys are errors)."""
    families: Tuple[str, ...] = FAMILIES
    crop_size: int = 64  # px, training and test frames
    densenet_width: float = 0.25
    densenet_block_sizes: Tuple[int, ...] = (4, 8, 8, 6)
    densenet_miniblocks_per_unit: int = 2
    densenet_subnets: Tuple[int, ...] = (1, 2, 4, 7, 14)
    inception_width: float = 0.25
    inception_inflate: bool = False
    inception_subnets: Tuple[int, ...] = (1, 5, 10)
    clock_settings: Tuple[bool, ...] = (False, True)
    variants: Tuple[str, ...] = VARIANTS  # Par-DenseNet variants (no clocks) at variant_subnets
    variant_subnets: int = 4
    distill_densenet_subnets: Tuple[int, ...] = (4, 14)  # distilled Par-DenseNet students (no clocks)
    distill_inception_subnets: Tuple[int, ...] = ()
    distill_weight: float = 0.1  # lambda
    distill_units: int = 3  # m
    dataset: str = 'h36m_like'  # synth preset whose camera/appearance distributions are used
    frame_stride: int = 2  # motion frames between video frames
    max_frames_per_clip: Optional[int] = None  # None: whole motion clips
    n_train_clips: int = 96
    n_test_clips: int = 16
    train_frames: int = 8  # supervised steps per training clip (clips are fill_steps() + train_frames long)
    eval_frames: int = 16  # scored steps per test clip
    eval_warmup: int = -1  # first scored test step; -1: the largest fill_steps() of the configurations
    eval_batch: int = 8
    heatmap_sigma: float = 2.0  # px
    batch_size: int = 4
    teacher_steps: int = 150
    finetune_steps: int = 30
    learning_rate: float = 1e-3
    precision: str = 'float32'
    timing_size: int = 128  # px, frames of the speed measurement
    timing_rounds: int = 7
    timing_steps: int = 16  # steps per timed block
    timing_warmup: int = 16


PRESETS = {
    'default': Config(),
    'smoke': Config(families=('densenet',), crop_size=32, densenet_width=0.125, densenet_block_sizes=(1, 1, 1, 1),
                    densenet_miniblocks_per_unit=1, densenet_subnets=(1, 4), inception_width=0.125,
                    variants=('feedback',), variant_subnets=2,
                    distill_densenet_subnets=(4,), n_train_clips=4, n_test_clips=2, train_frames=2,
                    eval_frames=2, eval_batch=2, batch_size=2, teacher_steps=2, finetune_steps=1,
                    timing_size=32, timing_rounds=2, timing_steps=4, timing_warmup=2, max_frames_per_clip=200),
    'paper': Config(crop_size=224, densenet_width=1.0, inception_width=1.0, inception_inflate=True,
                    n_train_clips=2000, n_test_clips=200, train_frames=16, eval_frames=32, batch_size=8,
                    teacher_steps=50_000, finetune_steps=20_000, timing_size=224, timing_rounds=15,
                    timing_steps=32),
}


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One configuration."""
    family: str
    subnets: int
    clocks: bool = False
    temporal: bool = False
    feedback: bool = False
    distilled: bool = False

    @property
    def name(self):
        parts = [f'{self.family}_s{self.subnets}'] + [flag for flag in ('clocks', 'temporal', 'feedback', 'distilled')
                                                      if getattr(self, flag)]
        return '_'.join(parts)

    @property
    def is_sequential(self):
        return self.subnets == 1 and not (self.clocks or self.temporal or self.feedback or self.distilled)


def plan(config: Config) -> List[RunSpec]:
    """Every configuration of the config, in table order (each family's sequential model first)."""
    specs = []
    for family in config.families:
        if family not in FAMILIES:
            raise ValueError(f'families must be among {FAMILIES}; received {family!r}')
        subnets = config.densenet_subnets if family == 'densenet' else config.inception_subnets
        if 1 not in subnets:
            raise ValueError(f'{family}_subnets must include 1 (the sequential reference); received {subnets}')
        for clocks in sorted(set(config.clock_settings)):
            for k in subnets:
                specs.append(RunSpec(family, k, clocks=clocks))
        if family == 'densenet':
            for variant in config.variants:
                if variant not in VARIANTS:
                    raise ValueError(f'variants must be among {VARIANTS}; received {variant!r}')
                specs.append(RunSpec(family, config.variant_subnets, **{variant: True}))
        distilled = config.distill_densenet_subnets if family == 'densenet' else config.distill_inception_subnets
        for k in distilled:
            if k == 1:
                raise ValueError('distilled students must be parallel (subnets > 1); received 1')
            specs.append(RunSpec(family, k, distilled=True))
    specs.sort(key=lambda s: (config.families.index(s.family), not s.is_sequential))
    return specs


def build_network(config: Config, spec: RunSpec):
    """The network of a configuration (built)."""
    from posekit.models.par_densenet import ParDenseNet
    from posekit.models.par_inception import ParInception
    common_args = dict(num_subnets=spec.subnets, clocks=spec.clocks, temporal_filters=spec.temporal,
                       feedback=spec.feedback, name=spec.name)
    if spec.family == 'densenet':
        network = ParDenseNet(width=config.densenet_width, block_sizes=config.densenet_block_sizes,
                              miniblocks_per_unit=config.densenet_miniblocks_per_unit, **common_args)
    else:
        network = ParInception(width=config.inception_width, inflate=config.inception_inflate, **common_args)
    network.build((None, None, None, 3))
    return network


def heatmap_stride(network):
    """Output stride (px per heatmap cell) of a network's head."""
    return network.state_specs()[network.output_state_key(network.pipeline_units[-1].name)][0]


# ------------------------------------------------------------------------------------------------ data
def prepare_data(config: Config, seed: int, mocap_dir: Optional[str], test_mocap_dir: Optional[str],
                 train_length: int, test_length: int, data_dir: str, log):
    """(train clips, test clips) of the given lengths, cached in data_dir (see posekit.data.video)."""
    from posekit.data import synth, video
    spec = dataclasses.replace(synth.PRESETS[config.dataset], crop_size=config.crop_size)
    max_frames = config.max_frames_per_clip
    cache = {}

    def motion(split):
        if 'splits' not in cache:
            start = time.perf_counter()
            cache['splits'] = synth.load_motion_splits(mocap_dir, test_mocap_dir, seed=seed,
                                                       max_frames_per_clip=max_frames)
            log(f'motion: {cache["splits"].description} ({time.perf_counter() - start:.0f} s)')
        return synth.PreparedMotion(cache['splits'].clips(split))

    key = f'{mocap_dir or "procedural"}|{test_mocap_dir}|max{max_frames}'
    train = video.ensure_clips(os.path.join(data_dir, 'train.h5'), spec, lambda: motion('train'),
                               config.n_train_clips, train_length, seed=seed, split='train',
                               frame_stride=config.frame_stride, motion_key=key)
    test = video.ensure_clips(os.path.join(data_dir, 'test.h5'), spec, lambda: motion('test'),
                              config.n_test_clips, test_length, seed=seed, split='test',
                              frame_stride=config.frame_stride, motion_key=key)
    return train, test


def mean_train_heatmap_logits(train_clips, config: Config, stride: int):
    """Logits (h, w, K) of the mean training heatmap (accumulated in chunks): the constant baseline."""
    from posekit.data import video
    from posekit.eval import video as eval_video
    fn = video.make_example_fn(train_clips, stride, config.heatmap_sigma)
    n = len(train_clips['frames'])
    total, count = 0.0, 0
    for i in range(0, n, config.eval_batch):
        maps = fn(np.arange(i, min(n, i + config.eval_batch)))['heatmaps'].numpy()
        total = total + maps.reshape((-1,) + maps.shape[-3:]).sum(0, dtype=np.float64)
        count += int(np.prod(maps.shape[:-3]))
    return eval_video.mean_heatmap_logits((total / count)[None])


def eval_batches(test_clips, config: Config, stride: int):
    """Generator of the test clips in fixed order, as batch dicts with heatmaps at the given stride."""
    from posekit.data import video
    fn = video.make_example_fn(test_clips, stride, config.heatmap_sigma)
    n = len(test_clips['frames'])
    for i in range(0, n, config.eval_batch):
        yield {k: v.numpy() for k, v in fn(np.arange(i, min(n, i + config.eval_batch))).items()}


# -------------------------------------------------------------------------------------------- training
def burn_in_frames(network) -> int:
    """Frames at the start of a training clip that only advance the states, without gradients: the part of the
    pipeline-filling transient (``fill_steps()``) beyond the latency. Training clips are ``fill_steps() +
    train_frames`` long and supervised from step ``fill_steps()`` on, so every supervised output is computed from
    frames alone (not from zero initial states), and back-propagation through time still covers the latency +
    ``train_frames`` frames that reach the supervised outputs through the pipeline. 0 without clocks or temporal
    filters."""
    return network.fill_steps() - network.latency


def train_network(network, config: Config, spec: RunSpec, train_clips, seed: int, steps: int, teacher=None,
                  distill_units=(), callbacks=None, strategy=None):
    """Trains with BPTT through posekit.train.loop.train under ``strategy`` (None: the default; the network
    built in its scope); returns (final train loss, steps/s)."""
    import keras
    from posekit.data import video
    from posekit.train import loop
    from posekit.train import video as train_video
    latency, fill = network.latency, network.fill_steps()
    loss_fn = train_video.make_bptt_loss(latency, first_supervised_step=fill, burn_in=burn_in_frames(network),
                                         teacher=teacher if spec.distilled else None,
                                         distill_units=distill_units if spec.distilled else (),
                                         distill_weight=config.distill_weight)
    stride = heatmap_stride(network)
    n_frames = fill + config.train_frames

    def dataset_fn(start_step):
        return video.video_dataset(train_clips, config.batch_size, seed=seed, start_step=start_step,
                                   heatmap_stride=stride, sigma=config.heatmap_sigma, n_frames=n_frames)

    import tensorflow as tf
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        optimizer = keras.optimizers.Adam(config.learning_rate)
    train_config = loop.TrainConfig(total_steps=steps, precision=config.precision, log_every=max(1, steps // 4),
                                    checkpoint_every=steps, seed=seed, progress=False)
    result = loop.train(network, loss_fn, dataset_fn, optimizer, train_config, out_dir=None, callbacks=callbacks,
                        strategy=strategy)
    losses = result.history.get('loss', [math.nan])
    return float(losses[-1]), float(result.steps_per_s)


# ------------------------------------------------------------------------------------------ measuring
def count_executions(network, size: int):
    """Executions counted inside the compiled step over 16 frames from t = 0 at size x size px."""
    import tensorflow as tf
    from posekit.layers.pipeline import ExecutionCounter
    counter = ExecutionCounter(network)
    step = tf.function(lambda f, s: network.step(f, s, counter=counter))
    states = network.init_states(1, size, size)
    frame = tf.zeros((1, size, size, network.frame_channels))
    for _ in range(FRAMES_PER_COUNT):
        _, states = step(frame, states)
    return {'unit_executions_per_16_frames': int(sum(counter.as_dict().values())),
            'miniblock_executions_per_16_frames': counter.miniblocks(),
            'measured_flops_per_frame': counter.flops(size, size) / FRAMES_PER_COUNT,
            'analytic_unit_executions_per_16_frames': int(sum(network.unit_executions(FRAMES_PER_COUNT).values())),
            'analytic_miniblock_executions_per_16_frames': network.miniblock_executions(FRAMES_PER_COUNT)}


def time_streaming(networks: Dict[str, object], size: int, rounds: int, steps: int, warmup: int, seed: int = 0):
    """Measured streaming speed of each network: compiled ``step``, batch 1, size x size px frames, warm.

    Every round times one block of ``steps`` consecutive steps of every network (the order rotates from round
    to round), so slow drifts of the machine's load affect all networks alike. Returns
    {name: list of per-round seconds per frame}.
    """
    import tensorflow as tf
    rng = np.random.default_rng(seed)
    frame = tf.constant(rng.uniform(size=(1, size, size, 3)).astype(np.float32))
    fns, states = {}, {}
    for name, network in networks.items():
        init = network.init_states(1, size, size)
        signature = {k: tf.TensorSpec(v.shape, v.dtype) for k, v in init.items()}
        fns[name] = tf.function(lambda f, s, network=network: network.step(f, s),
                                input_signature=[tf.TensorSpec((1, size, size, 3), tf.float32), signature])
        state = init
        for _ in range(warmup):
            heatmaps, state = fns[name](frame, state)
        heatmaps.numpy()
        states[name] = state
    names = list(networks)
    seconds = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            fn, state = fns[name], states[name]
            start = time.perf_counter()
            for _ in range(steps):
                heatmaps, state = fn(frame, state)
            heatmaps.numpy()
            seconds[name].append((time.perf_counter() - start) / steps)
            states[name] = state
    return seconds


def median_ratio(reference, values):
    """Median over rounds of reference[r] / values[r]."""
    return float(np.median(np.asarray(reference) / np.asarray(values)))


# ------------------------------------------------------------------------------------------- reporting
def _num(value, spec='.3f'):
    return common.format_number(value, spec)


def markdown_report(records: List[dict], context: dict) -> str:
    rows = [r for r in records if r['kind'] == 'model']
    baselines = [r for r in records if r['kind'] == 'baseline']
    lines = ['# Massively parallel video networks: keypoint heatmaps (Table 2 / Fig. 10 style)', '',
             f"Preset `{context['preset']}`, seed {context['seed']}; motion: {context['motion']}. "
             f"Frames {context['crop_size']} px for training/testing; speed measured at {context['timing_size']} px "
             f"(compiled `step`, batch 1, warm, {context['timing_rounds']} interleaved rounds of "
             f"{context['timing_steps']} steps; medians). Wall time {context['wall_time_s']:.0f} s on "
             f"{context['cpu_count']} CPU cores (shared machine: timings are indicative).", '']
    header = ('| model | subnets | clocks | temp. filt. | feedback | distilled | params | latency (frames) | '
              'filled after (frames) | '
              'seq. depth / frame | unit exec. / 16 fr | miniblock exec. / 16 fr | paper miniblocks / 16 fr | '
              'MFLOP / frame | FLOP speed-up | frames/s | measured speed-up | paper speed-up | test loss | PCK | '
              'dist. to teacher |')
    lines += [header, '|' + '---|' * (header.count('|') - 1)]
    for r in rows:
        paper_mb = PAPER_MINIBLOCKS.get((r['model_family'], r['clocks'])) if (
            r['subnets'] == 1 and not (r['temporal'] or r['feedback'] or r['distilled'])) else None
        paper_speed = PAPER_CLOCK_SPEEDUP if (r['model_family'] == 'densenet' and r['clocks'] and r['subnets'] == 1) \
            else None
        cells = [r['model'], r['subnets'], 'yes' if r['clocks'] else '', 'yes' if r['temporal'] else '',
                 'yes' if r['feedback'] else '', 'yes' if r['distilled'] else '', f"{r['params']:,}", r['latency'],
                 r['fill_steps'], r['sequential_depth_per_frame'], r['unit_executions_per_16_frames'],
                 r['miniblock_executions_per_16_frames'], _num(paper_mb, 'd'),
                 _num(r['flops_per_frame'] / FLOPS_PER_MFLOP, '.1f'), _num(r['flop_speedup_vs_sequential'], '.2f'),
                 _num(r['frames_per_s'], '.1f'), _num(r['speedup_vs_sequential_no_clocks'], '.2f'),
                 _num(paper_speed, '.1f'), _num(r['test_loss'], '.4f'), _num(r['pck'], '.3f'),
                 _num(r.get('distance_to_teacher'), '.3f')]
        lines.append('| ' + ' | '.join(str(c) for c in cells) + ' |')
    for b in baselines:
        lines.append(f"| {b['model']} (constant mean heatmap, stride {b['stride']}) | | | | | | 0 | | | | | | | | | | | | "
                     f"{_num(b['test_loss'], '.4f')} | {_num(b['pck'], '.3f')} | |")
    lines += ['', 'Paper column: the miniblock counts (416 without, 86 with clocks) and the 2.6x clock speed-up '
              'Carreira et al. measured for Par-DenseNet on 48 CPU cores (against 4.8x from miniblock counts); the '
              'other entries of their Table 2 are not reproduced here (left blank rather than guessed).', '']
    lines += ['## Checks', '']
    lines += [check.markdown() for check in context['checks']]
    lines += ['', '## Notes', '']
    lines += [f'- {depth_parallelism_note(rows)}'] + [f'- {note}' for note in NOTES]
    return '\n'.join(lines) + '\n'


def depth_parallelism_note(rows: List[dict]) -> str:
    """What the measured speeds of the unclocked parallel models say about depth parallelism on this machine."""
    text = ('Depth parallelism: the k subnetworks of a parallel model only need the previous step\'s outputs of the '
            'other subnetworks, so with one processor (or device) per subnetwork they run concurrently and the time '
            'per frame is set by the *sequential depth per frame* (the longest chain of convolutions computed within '
            'one step, the column above). Without clocks a parallel model does the same FLOPs per frame as the '
            'sequential one, so its measured speed-up shows how much of that concurrency this machine '
            f'({os.cpu_count()} CPU cores; TensorFlow runs independent ops of one step at the same time) realises: ')
    parallel = [r for r in rows if r['subnets'] > 1 and not (r['clocks'] or r['temporal'] or r['feedback'] or
                                                             r['distilled']) and r.get('speedup_vs_sequential_no_clocks')]
    if not parallel:
        return text + 'no unclocked parallel model was timed.'
    return (text + ', '.join(f"{r['model']} {r['speedup_vs_sequential_no_clocks']:.2f}x (sequential depth "
                             f"{r['sequential_depth_per_frame']})" for r in parallel)
            + '. Clocks instead skip units (executions counted inside the compiled step, first check). The latency in '
            'frames grows with the number of subnetworks (the output predicts frame t - latency).')


NOTES = (
    'The clock gain in FLOPs is smaller than the miniblock count suggests (416/86 = 4.8x for the paper\'s '
    'Par-DenseNet): block 1\'s miniblocks are the most expensive and already run at half rate, and the stem and '
    'the head run every frame.',
    'Training protocol (our reading of section 3.3): each family\'s '
    'sequential model is trained first; every configuration starts from its weights (weights whose shapes differ, '
    'i.e. the temporal filters\' and feedback\'s extra input channels, keep their initialisation) and is trained '
    'for the same number of steps; distilled students add lambda x the normalised squared distance of m = 3 '
    'activations to the frozen teacher\'s for the frame each activation was computed from. Training clips start '
    'from zero states and are fill_steps + train_frames long (the "filled after" column: the first step whose '
    'output no longer depends on the zero initial states; the latency without clocks, far more with them, since a '
    'slow unit that ran at t = 0 on zero inputs holds that output until its next tick); the first fill_steps - '
    'latency frames only advance the states (burn-in, no gradients) and the outputs are supervised from '
    'fill_steps on, so every model is trained on filled pipelines; the test clips are scored from eval_warmup '
    '(default: the largest fill_steps) on.',
    'Synthetic data (rendered capsule bodies, h36m_17 keypoints) and short CPU training: absolute losses are not '
    'comparable with the paper\'s PoseTrack numbers; only the comparisons between rows are meaningful.',
)


def plot_loss_vs_speed(records: List[dict], path: str):
    """Fig. 10 style: test loss against measured speed-up, one marker per configuration."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {'densenet': 'o', 'inception': 's'}
    colors = {'densenet': 'tab:blue', 'inception': 'tab:orange'}
    for r in records:
        if r['kind'] != 'model':
            continue
        filled = r['clocks']
        ax.scatter(r['speedup_vs_sequential_no_clocks'], r['test_loss'], marker=markers[r['model_family']],
                   facecolors=colors[r['model_family']] if filled else 'none', edgecolors=colors[r['model_family']],
                   s=50)
        tag = f"{r['subnets']}" + ('t' if r['temporal'] else '') + ('f' if r['feedback'] else '') + (
            'd' if r['distilled'] else '')
        ax.annotate(tag, (r['speedup_vs_sequential_no_clocks'], r['test_loss']), fontsize=7,
                    xytext=(3, 3), textcoords='offset points')
    for r in records:
        if r['kind'] == 'baseline':
            ax.axhline(r['test_loss'], color=colors.get(r['model_family'], 'grey'), linestyle=':', linewidth=1)
    ax.set_xlabel('measured speed-up vs sequential model without clocks (this CPU, batch 1)')
    ax.set_ylabel('test loss (weighted sigmoid cross-entropy)')
    ax.set_title('Loss vs speed (o Par-DenseNet, s Par-Inception; filled: clocks;\n'
                 'label: subnetworks, t temporal, f feedback, d distilled; dotted: mean-heatmap baseline)',
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- main
def run_experiment(config: Config, out: str, seed: int = 0, preset: str = 'default', mocap_dir=None,
                   test_mocap_dir=None, log=print, strategy: str = 'default', replicas: int = 0):
    """Trains, distils, times and evaluates every configuration; writes results.json, results.md, a plot.

    ``strategy``/``replicas``: ``common.make_strategy`` (data-parallel training of every network; the
    experiment writes no checkpoints). With ``multi_worker`` the other workers write their copy of the
    results into their scratch folder (``common.worker_scratch``), only the chief into ``out``.
    """
    chief = common.is_chief_process(strategy)
    local = common.worker_scratch(out, strategy)
    data = dict(mocap=common.folder_fingerprint(mocap_dir), test_mocap=common.folder_fingerprint(test_mocap_dir))
    with common.run_directory(local, EXPERIMENT, config, [seed], data, chief=chief):
        return _run_experiment(config, local, seed, preset, mocap_dir, test_mocap_dir, log,
                               common.make_strategy(strategy, replicas))


def _run_experiment(config: Config, out: str, seed: int, preset: str, mocap_dir, test_mocap_dir, log,
                    strategy=None):
    import keras
    import tensorflow as tf
    from posekit.train import precision as precision_lib
    from posekit.eval import video as eval_video
    from posekit.train import video as train_video
    from posekit.train.loop import count_params

    strategy = strategy or tf.distribute.get_strategy()
    if config.batch_size % strategy.num_replicas_in_sync:
        raise ValueError(f'batch_size={config.batch_size} must be a multiple of the '
                         f'{strategy.num_replicas_in_sync} replicas')
    start = time.perf_counter()
    clock = common.PhaseClock()
    specs = plan(config)
    policy = precision_lib.resolve_policy(config.precision)
    with precision_lib.policy_scope(policy):
        probes = {s.name: build_network(config, s) for s in specs}
    max_latency = max(n.latency for n in probes.values())
    max_fill = max(n.fill_steps() for n in probes.values())  # >= every latency; larger with clocks
    eval_warmup = max_fill if config.eval_warmup < 0 else config.eval_warmup
    train_length = max_fill + config.train_frames
    test_length = max(eval_warmup, max_latency) + config.eval_frames
    train_clips, test_clips = prepare_data(config, seed, mocap_dir, test_mocap_dir, train_length, test_length,
                                           os.path.join(out, 'data'), log)
    log(f'data: {len(train_clips["frames"])} train clips x {train_length} frames, {len(test_clips["frames"])} test '
        f'clips x {test_length} frames ({time.perf_counter() - start:.0f} s)')
    del probes

    records, checks = [], []
    for family in config.families:
        family_specs = [s for s in specs if s.family == family]
        networks, teacher = {}, None
        stride = None
        for spec in family_specs:
            run_start = time.perf_counter()
            keras.utils.set_random_seed(seed)
            with strategy.scope(), precision_lib.policy_scope(policy):
                network = build_network(config, spec)
            stride = heatmap_stride(network)
            if teacher is None:
                # The family's sequential model, trained from scratch for teacher_steps + finetune_steps; its
                # weights after teacher_steps are copied into the frozen teacher (a snapshot, via a callback).
                if not spec.is_sequential:
                    raise ValueError('the first configuration of a family must be its sequential model')
                with strategy.scope(), precision_lib.policy_scope(policy):
                    teacher = build_network(config, spec)
                teacher.trainable = False
                distill_units = train_video.default_distill_units(teacher, config.distill_units)

                def snapshot(step, logs, network=network, teacher=teacher):
                    if step == config.teacher_steps:
                        train_video.init_from_teacher(teacher, network)

                snapshot(0, {}) if config.teacher_steps == 0 else None
                train_loss, steps_per_s = train_network(network, config, spec, train_clips, seed,
                                                        config.teacher_steps + config.finetune_steps,
                                                        callbacks=[snapshot], strategy=strategy)
            else:
                train_video.init_from_teacher(network, teacher, partial=True)
                train_loss, steps_per_s = train_network(network, config, spec, train_clips, seed,
                                                        config.finetune_steps, teacher=teacher,
                                                        distill_units=distill_units, strategy=strategy)
            metrics = eval_video.evaluate_stream(network, eval_batches(test_clips, config, stride), network.latency,
                                                  eval_warmup, stride=stride,
                                                  teacher=teacher, distill_units=distill_units)
            distance = metrics['distance_to_teacher']
            counts = count_executions(network, config.timing_size)
            record = dict(kind='model', model=spec.name, model_family=family, subnets=spec.subnets,
                          clocks=spec.clocks, temporal=spec.temporal, feedback=spec.feedback,
                          distilled=spec.distilled, params=count_params(network), latency=network.latency,
                          fill_steps=network.fill_steps(), burn_in=burn_in_frames(network), eval_warmup=eval_warmup,
                          rates=list(network.rates), sequential_depth_per_frame=network.sequential_depth_per_frame(),
                          flops_per_frame=network.flops_per_frame(config.timing_size, config.timing_size),
                          flops_per_frame_train_size=network.flops_per_frame(config.crop_size, config.crop_size),
                          timing_size=config.timing_size, train_loss=train_loss, train_steps_per_s=steps_per_s,
                          test_loss=metrics['test_loss'], pck=metrics['pck'], distance_to_teacher=distance,
                          distill_units=list(distill_units) if spec.distilled else [],
                          distill_weight=config.distill_weight if spec.distilled else 0.0,
                          train_steps=config.finetune_steps + (config.teacher_steps if spec.is_sequential else 0),
                          teacher_steps=config.teacher_steps,
                          init='sequential', **counts)
            records.append(record)
            networks[spec.name] = network
            log(f'{spec.name}: test loss {metrics["test_loss"]:.4f}, PCK {metrics["pck"]:.3f}, '
                f'dist {distance:.3f} ({time.perf_counter() - run_start:.0f} s)')
        # Constant mean-heatmap baseline at this family's stride.
        constant = mean_train_heatmap_logits(train_clips, config, stride)
        base = eval_video.evaluate_stream(None, eval_batches(test_clips, config, stride), 0, eval_warmup,
                                           stride=stride, constant_logits=constant)
        records.append(dict(kind='baseline', model=f'{family}_mean_heatmap', model_family=family, stride=stride,
                            test_loss=base['test_loss'], pck=base['pck']))
        # Speed: all configurations of the family, interleaved.
        timing_start = time.perf_counter()
        seconds = time_streaming(networks, config.timing_size, config.timing_rounds, config.timing_steps,
                                 config.timing_warmup, seed)
        reference = next(s.name for s in family_specs if s.is_sequential)
        family_records = [r for r in records if r['kind'] == 'model' and r['model_family'] == family]
        ref_flops = next(r['flops_per_frame'] for r in family_records if r['model'] == reference)
        for r in family_records:
            r['frames_per_s'] = 1.0 / float(np.median(seconds[r['model']]))
            r['ms_per_frame_rounds'] = [MS_PER_S * s for s in seconds[r['model']]]
            r['speedup_vs_sequential_no_clocks'] = median_ratio(seconds[reference], seconds[r['model']])
            r['speedup_rounds'] = (np.asarray(seconds[reference]) / np.asarray(seconds[r['model']])).tolist()
            r['flop_speedup_vs_sequential'] = ref_flops / r['flops_per_frame']
        log(f'{family}: timing done ({time.perf_counter() - timing_start:.0f} s)')
        checks += family_checks(family, family_records, records)
    wall = time.perf_counter() - start
    context = dict(preset=preset, seed=seed, config=dataclasses.asdict(config), motion=mocap_dir or 'procedural',
                   test_motion=test_mocap_dir, crop_size=config.crop_size, timing_size=config.timing_size,
                   timing_rounds=config.timing_rounds, timing_steps=config.timing_steps, eval_warmup=eval_warmup,
                   train_clip_frames=train_length, test_clip_frames=test_length, cpu_count=os.cpu_count(),
                   wall_time_s=wall, checks=checks)
    os.makedirs(out, exist_ok=True)
    saved = {k: v for k, v in context.items() if k not in ('checks', 'config', 'preset', 'seed')}
    common.write_results(out, EXPERIMENT, preset, config, [seed], dict(records=records), checks, saved, clock)
    common.atomic_write_text(os.path.join(out, 'results.md'), markdown_report(records, context))
    plot_loss_vs_speed(records, os.path.join(out, 'loss_vs_speed.png'))
    log(f'wrote {out}/results.json, results.md, loss_vs_speed.png in {wall:.0f} s')
    return records, context


def family_checks(family, rows, records) -> List[common.Check]:
    """The acceptance checks of one family."""
    checks = []
    by = {(r['subnets'], r['clocks'], r['temporal'], r['feedback'], r['distilled']): r for r in rows}
    seq, clk = by.get((1, False, False, False, False)), by.get((1, True, False, False, False))
    name = {'densenet': 'Par-DenseNet', 'inception': 'Par-Inception'}[family]
    exact = all(r['unit_executions_per_16_frames'] == r['analytic_unit_executions_per_16_frames'] and
                r['miniblock_executions_per_16_frames'] == r['analytic_miniblock_executions_per_16_frames'] and
                math.isclose(r['measured_flops_per_frame'], r['flops_per_frame'], rel_tol=1e-9) for r in rows)
    checks.append(common.Check(f'{name}: executions and FLOPs counted inside the compiled step equal the '
                               'analytic counts for every configuration', exact,
                               f'{len(rows)} configurations compared'))
    if seq and clk:
        measured, theory = clk['speedup_vs_sequential_no_clocks'], clk['flop_speedup_vs_sequential']
        fraction = measured / theory
        rounds = clk.get('speedup_rounds') or [measured]
        checks.append(common.Check(
            f'{name} clock speed-up (1 subnetwork) reaches {100 * CLOCK_SPEEDUP_TARGET:.0f} % of the FLOP speed-up',
            fraction >= CLOCK_SPEEDUP_TARGET,
            f'{measured:.2f}x measured (median over {len(rounds)} interleaved rounds; per round '
            f'{min(rounds):.2f}-{max(rounds):.2f}x) vs {theory:.2f}x from FLOPs '
            f'({clk["miniblock_executions_per_16_frames"]} vs {seq["miniblock_executions_per_16_frames"]} miniblock '
            f'executions per 16 frames) = {100 * fraction:.0f} % ({100 * min(rounds) / theory:.0f}-'
            f'{100 * max(rounds) / theory:.0f} % per round)'))
    parallel_clk = by.get((CLOCKED_PARALLEL_SUBNETS, True, False, False, False))
    if clk and parallel_clk:
        ratio = parallel_clk['test_loss'] / clk['test_loss']
        checks.append(common.Check(
            f'{name}: the clocked model with {CLOCKED_PARALLEL_SUBNETS} subnetworks stays within '
            f'{CLOCKED_PARALLEL_LOSS_RATIO}x the test loss of the clocked sequential model',
            ratio <= CLOCKED_PARALLEL_LOSS_RATIO,
            f'{parallel_clk["test_loss"]:.4f} vs {clk["test_loss"]:.4f} = {ratio:.2f}x (trained past its '
            f'{parallel_clk["fill_steps"]}-frame pipeline-filling transient, scored from step '
            f'{parallel_clk["eval_warmup"]})'))
    base = next(r for r in records if r['kind'] == 'baseline' and r['model_family'] == family)
    beat = [r['model'] for r in rows if r['test_loss'] < base['test_loss']]
    checks.append(common.Check(f'{name}: every trained configuration beats the constant mean-heatmap baseline '
                               'on test loss', len(beat) == len(rows),
                               f'{len(beat)} of {len(rows)}; baseline test loss {base["test_loss"]:.4f}, '
                               f'PCK {base["pck"]:.3f}'))
    for r in rows:
        if not r['distilled']:
            continue
        plain = by.get((r['subnets'], False, False, False, False))
        if plain is None or seq is None:
            continue
        closer_acts = r['distance_to_teacher'] < plain['distance_to_teacher']
        closer_loss = abs(r['test_loss'] - seq['test_loss']) < abs(plain['test_loss'] - seq['test_loss'])
        checks.append(common.Check(
            f'{name} with {r["subnets"]} subnetworks: distillation brings the activations closer to the '
            'sequential teacher', closer_acts,
            f'distance {r["distance_to_teacher"]:.3f} vs {plain["distance_to_teacher"]:.3f} undistilled; test loss '
            f'{r["test_loss"]:.4f} vs {plain["test_loss"]:.4f}, sequential {seq["test_loss"]:.4f} '
            f'({"closer" if closer_loss else "not closer"} to the sequential model\'s loss)'))
    return checks


FLAGS = flags.FLAGS


def define_flags():
    common.define_common_flags('runs/parallel_video')


def main(argv):
    del argv
    config = common.resolve_config(PRESETS, FLAGS.preset, FLAGS.set)
    run_experiment(config, FLAGS.out, FLAGS.seed, preset=FLAGS.preset,
                   mocap_dir=common.resolve_mocap_dir(FLAGS['mocap-dir'].value),
                   test_mocap_dir=common.test_mocap_dir(FLAGS['test-mocap-dir'].value), log=common.stderr_log,
                   strategy=FLAGS.strategy, replicas=FLAGS.replicas)


if __name__ == '__main__':
    define_flags()
    common.run_main(main, EXPERIMENT)
