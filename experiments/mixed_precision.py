"""Mixed-precision study: where reduced precision pays off, by model size, measured side by side.

Reproduces the question of "Improving the Efficiency of 3D Pose Estimation Model" (FP16 training of HuMoR:
4 % faster at the original size, about 2x on the 4x-wide MLPs, loss unchanged) on this project's models::

    python -m experiments.mixed_precision --preset default --out runs/mixed_precision

Models (``posekit.train.tasks``): the GCN lifter (128 channels at 1x) and the HuMoR-like motion VAE (hidden
1024 at 1x) at ``Config.widths``, and the MeTRAbs backbone with its heatmap head (``BackboneWithHead``) on
``posekit.data.synth`` h36m_like crops, trained from the same weights on the same batches in float32 and in the
machine's mixed policy by the one loop, in two worker processes computing in turns (``timing.run_jobs_in_turns``:
load changes hit both alike; peak memory apart), profiled by ``tasks.profile_in_turns`` (step times, losses,
size, the Table 2 analogue breakdown) and compared by ``tasks.compare_policies`` (speed-up overall and per round,
loss differences; ``--test-mocap-dir``: also on that external motion). Writes results.json, results.md, speedup.png.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import os
import pathlib
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from absl import flags

from experiments import common
from posekit.train import precision, tasks, timing

MODEL_KINDS = ('gcn_lifter', 'motion_vae', 'metrabs_backbone')
FLOAT32 = 'float32'
LIFTING_JOINTS = 'h36m_17'  # skeleton of the lifting sets and of the MeTRAbs head's points
MOTION_JOINTS = 'smpl_24'  # skeleton of the motion model's pose states (HuMoR's SMPL body)
IMAGE_DATASET = 'h36m_like'  # posekit.data.synth preset of the backbone's crops
EVAL_SPLITS = ('val', 'test')
DATA_TIMING_BATCHES = 16  # batches of the input stream timed per breakdown turn
LARGEST_MODEL_MIN_SPEEDUP = 1.3  # acceptance: the largest model is at least this much faster
LOSS_AGREEMENT = 0.05  # acceptance: mixed-policy losses within this relative difference of float32's are unchanged
OPTIMIZER_SHARE_LIMITS = 0.25  # discussion: an optimizer update this share of the mixed step bounds the speed-up
PAPER_SPEEDUPS = ('1.04x', 'about 2x')  # the paper's FP16 speed-ups of HuMoR at the original and 4x width (GPU)


@dataclasses.dataclass(frozen=True)
class Config:
    """Study settings (frozen; unknown keys are errors in ``--set``).

    ``widths`` multiply the lifter's ``gcn_channels`` (128: Liu et al.'s Table 3) and the VAE's ``mvae_hidden``
    (1024: HuMoR); ``steps`` trains the 1x models and the backbone, ``wide_steps`` the wider ones, both policies
    alike. A worker hands the token over after the first step ending ``turn_seconds`` after its turn began;
    ``timing_warmup`` timed steps are dropped; ``final_loss`` averages ``loss_window`` steps; ``val_batches``
    batches give ``val_loss`` and ``test_loss``. ``jit_compile`` applies to both policies (off: see
    ``posekit.train.precision``); ``float32_outputs`` keeps the lifter's output layer in float32; ``mixed_policy``
    'auto' is the machine's. ``parallel_pairs`` > 1 only to test the plumbing (timings interfere).
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
        if not self.models or any(m not in MODEL_KINDS for m in self.models) or not self.widths or any(
                isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in self.widths):
            raise ValueError(f'models must be a non-empty subset of {MODEL_KINDS} and widths positive ints; received '
                             f'models={self.models!r}, widths={self.widths!r}')
        if self.mixed_policy not in ('auto', 'mixed_bfloat16', 'mixed_float16'):
            raise ValueError(f"mixed_policy must be 'auto', 'mixed_bfloat16' or 'mixed_float16'; received "
                             f'mixed_policy={self.mixed_policy!r}')
        minimum = dict(timing_warmup=0, steps=self.timing_warmup + 3, wide_steps=self.timing_warmup + 3)
        for field in dataclasses.fields(self):  # (steps: at least 2 timed steps after timing_warmup)
            value, name = getattr(self, field.name), field.name
            if field.type == 'int' and (isinstance(value, bool) or not isinstance(value, int)
                                        or value < minimum.get(name, 1)):
                raise ValueError(f'{name} must be an int >= {minimum.get(name, 1)}; received {name}={value!r}'
                                 + (f', timing_warmup={self.timing_warmup!r}' if name in minimum else ''))
            if field.type == 'float' and (isinstance(value, bool) or not isinstance(value, (int, float))
                                          or not (value >= 0 if name == 'kl_weight' else value > 0)):
                raise ValueError(f'{name} must be a number {">=" if name == "kl_weight" else ">"} 0; '
                                 f'received {name}={value!r}')


PRESETS = {
    # < 60 s end to end: two tiny models at width 1, a handful of steps, procedural motion.
    'smoke': Config(models=('gcn_lifter', 'motion_vae'), widths=(1,), gcn_channels=16, gcn_batch=64,
                    mvae_hidden=64, mvae_batch=64, steps=8, wide_steps=8, turn_seconds=0.05, timing_warmup=1,
                    loss_window=2, val_batches=1, breakdown_repeats=1, max_frames_per_clip=40,
                    procedural_subjects=4, procedural_clips=1, procedural_seconds=2.0, n_images=16,
                    n_val_images=8, pair_timeout_s=600.0, parallel_pairs=2),
    # All five models (1x/4x GCN and motion VAE, the backbone) in <= 15 min on 2 shared cores.
    'default': Config(),
    # Longer runs and more repeats for a quiet machine (about an hour on 2 cores).
    'paper': Config(widths=(1, 2, 4), steps=200, wide_steps=60, timing_warmup=3, loss_window=20,
                    val_batches=8, breakdown_repeats=7, max_frames_per_clip=600, n_images=2048, n_val_images=256,
                    pair_timeout_s=7200.0),
}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One model of the study: kind, width multiplier, batch size and steps; ``name``: e.g. 'gcn_lifter@4x'."""
    kind: str
    width: int
    batch: int
    steps: int
    name = property(lambda self: f'{self.kind}@{self.width}x')


def plan(config: Config) -> List[ModelSpec]:
    """The models to measure, in order (the backbone at width 1 only)."""
    batch = {'gcn_lifter': config.gcn_batch, 'motion_vae': config.mvae_batch, 'metrabs_backbone': config.backbone_batch}
    return [ModelSpec(kind, width, batch[kind], config.steps if width == 1 else config.wide_steps)
            for kind in config.models for width in ((1,) if kind == 'metrabs_backbone' else config.widths)]


def make_data(config: Config, mocap_dir: Optional[str], test_mocap_dir: Optional[str], seed: int,
              log=print) -> Dict[str, np.ndarray]:
    """Every array of every model kind, ``'{kind}.{split}.{i}'`` (its task's i-th array), from one motion load:
    'train' and 'val' (by subject) of ``mocap_dir`` (None: procedural), 'test' all of ``test_mocap_dir`` if given."""
    from posekit.data import bodies, lifting, mocap, synth
    from posekit.models.motion_vae import motion_state_pairs
    load = dict(fps=config.fps, max_frames_per_clip=config.max_frames_per_clip)
    clips = mocap.load_motions(mocap_dir, seed=seed, n_subjects=config.procedural_subjects,
                               clips_per_subject=config.procedural_clips, seconds=config.procedural_seconds, **load)
    spec = lifting.LiftingSpec(joints=LIFTING_JOINTS, **load)
    splits = dict(zip(('train', 'val'), mocap.split_by_subject(clips, test_fraction=spec.val_fraction, seed=seed)))
    if test_mocap_dir:
        splits['test'] = mocap.load_mocap_folder(test_mocap_dir, **load)
    images = dataclasses.replace(synth.PRESETS[IMAGE_DATASET], formats=(LIFTING_JOINTS,), crop_size=config.image_size)
    data = {}
    for split, split_clips in splits.items():
        lift = lifting.make_lifting_set(split_clips, spec, split, seed)
        joints = [bodies.format_joints(c.motion, MOTION_JOINTS, subject=c.subject) for c in split_clips]
        pairs = [motion_state_pairs(j, c.motion.fps) for j, c in zip(joints, split_clips) if len(j) >= 3]
        arrays = {'gcn_lifter': (lift.inputs, lift.targets),
                  'motion_vae': tuple(np.concatenate(a) for a in zip(*pairs))}
        if 'metrabs_backbone' in config.models:
            crops = synth.generate_examples(images, synth.PreparedMotion(split_clips, images.formats), split, 0,
                                            config.n_images if split == 'train' else config.n_val_images, seed)
            arrays['metrabs_backbone'] = (crops['image'], crops['coords2d'], crops['coords3d'])
        data.update({f'{kind}.{split}.{i}': a for kind, kind_arrays in arrays.items() if kind in config.models
                     for i, a in enumerate(kind_arrays)})
    log(f'data: {", ".join(f"{s} {len(c)} clips" for s, c in splits.items())} ({mocap_dir or "procedural"}); '
        + ', '.join(f'{k} {v.shape}' for k, v in data.items() if k.endswith('.0')))
    return data


def measure(job: dict, turn) -> dict:
    """One (model, policy) worker (``timing.work_in_turns``): the job's task, profiled in turns."""
    config = Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in job['config'].items()})
    spec, seed, data = ModelSpec(**job['spec']), job['seed'], np.load(job['data_path'])
    arrays = {split: tuple(data[f'{spec.kind}.{split}.{i}'] for i in range(3) if f'{spec.kind}.{split}.{i}' in data.files)
              for split in ('train',) + EVAL_SPLITS if f'{spec.kind}.{split}.0' in data.files}
    if spec.kind == 'gcn_lifter':
        task = tasks.LifterTask(config.gcn_channels * spec.width, LIFTING_JOINTS, config.float32_outputs,
                                config.learning_rate)
    elif spec.kind == 'motion_vae':
        task = tasks.MotionVAETask(arrays['train'][0].shape[1], config.mvae_hidden, spec.width, config.kl_weight,
                                   seed, config.mvae_learning_rate)
    else:
        task = tasks.BackboneTask(arrays['train'][1].shape[1], config.backbone, config.image_size, config.learning_rate)
    result = tasks.profile_in_turns(
        task, arrays, spec.batch, job['policy'], spec.steps, turn, seed=seed, turn_seconds=config.turn_seconds,
        timing_warmup=config.timing_warmup, loss_window=config.loss_window, eval_batches=config.val_batches,
        breakdown_repeats=config.breakdown_repeats, data_batches=DATA_TIMING_BATCHES, jit_compile=config.jit_compile)
    return dict(result, load_average=list(os.getloadavg()))


def _mixed(records: Sequence[dict], mixed_policy: str) -> Dict[str, dict]:
    return {r['model']: r for r in records if r['policy'] == mixed_policy and 'speedup_vs_fp32' in r}


def _speedup(r: dict) -> str:
    low_high = r.get('speedup_spread') or []
    return f'{r["speedup_vs_fp32"]:.2f}x' + (' ({:.2f}-{:.2f} over {} rounds)'.format(*low_high, len(r['speedup_rounds']))
                                             if low_high else '')


def checks(records: Sequence[dict], mixed_policy: str) -> List[common.Check]:
    """The paper's findings on the measurements: the gain grows with model size, the largest model gains at
    least ``LARGEST_MODEL_MIN_SPEEDUP``, the losses are unchanged (validation and test: informative)."""
    mixed = sorted(_mixed(records, mixed_policy).values(), key=lambda r: r['width'])
    if not mixed:
        return [common.Check('measurements complete', False, 'no successful mixed-precision record')]
    families, out = [[r for r in mixed if r['kind'] == k] for k in dict.fromkeys(r['kind'] for r in mixed)], []
    out += [common.Check(f'{f[0]["kind"]}: the {mixed_policy} speed-up grows with model size ({f[0]["width"]}x -> '
                         f'{f[-1]["width"]}x width)', all(b['speedup_vs_fp32'] > a['speedup_vs_fp32'] for a, b in zip(f, f[1:])),
                         ' -> '.join(f'{r["width"]}x {_speedup(r)}' for r in f)) for f in families if len(f) > 1]
    largest = max(mixed, key=lambda r: r['params'])
    out.append(common.Check(f'largest model ({largest["model"]}, {largest["params"] / 1e6:.1f}M params) >= '
                            f'{LARGEST_MODEL_MIN_SPEEDUP}x faster',
                            largest['speedup_vs_fp32'] >= LARGEST_MODEL_MIN_SPEEDUP, _speedup(largest)))
    for key, claim in (('loss_rel_diff', 'final training losses'), ('val_loss_rel_diff', '(informative) validation '
                       'losses'), ('test_loss_rel_diff', '(informative) losses on the external test motion')):
        values = [(r[key], r['model']) for r in mixed if math.isfinite(r.get(key, math.nan))]
        if values:
            worst, model = max(values)
            out.append(common.Check(f'{claim} of {mixed_policy} within {LOSS_AGREEMENT:.0%} of float32',
                                    worst <= LOSS_AGREEMENT, f'largest relative difference {100 * worst:.2f} % ({model})'))
    return out


def markdown_report(records: Sequence[dict], context: dict) -> str:
    mixed_policy, diffs = context['mixed_policy'], ('loss_rel_diff', 'val_loss_rel_diff', 'test_loss_rel_diff')
    lines = ['# Mixed-precision study', '', f'Command: `{context["command"]}`  ', f'Machine: {context["machine"]}; '
             f'load average {context["load"]}; wall time {context["wall_time_s"]:.0f} s; float32 vs `{mixed_policy}` '
             f'interleaved (same seeds, batches and steps; jit_compile={context["jit_compile"]}).', '',
             '| model | params | fwd GMAC/step | GEMM width | batch | policy | step ms (median) | p10-p90 ms | speed-up '
             '| speed-up over rounds | final loss | val loss | loss diff | val diff | test diff | peak MB | auto choice |',
             '|' + '---|' * 17]
    fmt = common.format_number
    for r in records:
        if not r.get('ok'):
            error = ' '.join(str(r.get('error', '?')).split())[:200].replace('|', '/')
            lines.append(f'| {r["model"]} | | | | | {r["policy"]} | failed: {error} |' + ' |' * 10)
            continue
        spread = r.get('speedup_spread') or []
        lines.append(f'| {r["model"]} | {r["params"] / 1e6:.2f}M | {r["forward_macs_per_step"] / 1e9:.2f} | '
                     f'{r["gemm_dim_typical"]:.0f} | {r["batch_size"]} | {r["policy"]} | {r["step_ms_median"]:.1f} | '
                     f'{r["step_ms_spread"][0]:.0f}-{r["step_ms_spread"][1]:.0f} | '
                     f'{fmt(r.get("speedup_vs_fp32"), ".2f", "-")} | '
                     + (f'{spread[0]:.2f}-{spread[1]:.2f} ({len(r["speedup_rounds"])}) | ' if spread else '- | ')
                     + f'{r["final_loss"]:.4g} | {r["val_loss"]:.4g} | '
                     + ''.join(f'{fmt(100 * r[k], ".1f") + " %" if k in r else "-"} | ' for k in diffs)
                     + f'{fmt(r.get("peak_mem_mb"), ".0f", "-")} | {r.get("auto_choice", "-")} |')
    parts = [f'{p}_ms' for p in ('data', 'forward', 'loss', 'backward', 'optimizer', 'full_step', 'loop_overhead')]
    lines += ['', '## Step breakdown (ms; Table 2 analogue)', '', 'Separate tf.functions on one fixed batch (minimum '
              'over the repeats), differenced into parts; data = the input stream alone (prefetched, not additive); '
              'loop overhead = loop median minus the full step.', '', common.markdown_table(
                  [dict(r['breakdown'], model=r['model'], policy=r['policy']) for r in records if r.get('ok')],
                  ['model', 'policy'] + parts)]
    lines += ['', f'Speed-up over rounds: min-max of the per-round ratio of median steps (rounds). Auto choice: the '
              f'mixed policy only if >= {precision.MIN_SPEEDUP}x faster (`precision.decide_policy`).', '',
              '## Acceptance', '']
    lines += [c.markdown() for c in checks(records, mixed_policy)]
    return '\n'.join(lines + ['', '## Comparison with the paper', '', context['discussion'], ''])


def discussion(records: Sequence[dict], mixed_policy: str) -> str:
    """A reading of the measurements against the paper: each sentence is chosen and filled by the numbers."""
    here, parts = _mixed(records, mixed_policy), []
    for kind, label, paper in (('motion_vae', 'the HuMoR-like model', PAPER_SPEEDUPS),
                               ('gcn_lifter', 'the GCN lifter', None)):
        small, wide = here.get(f'{kind}@1x'), here.get(f'{kind}@4x')
        s, w = (r and r['speedup_vs_fp32'] for r in (small, wide))
        if small and wide:
            verdict = (('As' if w > s else 'Unlike') + ' in the paper, the gain of ') if paper else 'The gain of '
            parts.append(f'{verdict}{label} {"grows" if w > s else "does not grow"} with width: {s:.2f}x at the '
                         f'original size{f" (paper: {paper[0]})" if paper else ""} and {w:.2f}x at 4x width'
                         f'{f" (paper: {paper[1]})" if paper else ""}.')
        if small:
            pays = s >= precision.MIN_SPEEDUP
            parts.append(f'At the original size {label} {"gains enough" if pays else "does not gain enough"} for '
                         f'`precision.choose_policy` to pick {mixed_policy} ({s:.2f}x {">=" if pays else "<"} '
                         f'{precision.MIN_SPEEDUP}x).')
    diffs = sorted((r['loss_rel_diff'], name) for name, r in here.items() if math.isfinite(r.get('loss_rel_diff', math.nan)))
    for worst, name in diffs[-1:]:
        parts.append(f'Training losses {"stay within" if worst <= LOSS_AGREEMENT else "differ by up to"} '
                     f'{100 * worst:.1f} % of float32 ({name}; the paper: unchanged).')
    largest = max(here.values(), key=lambda r: r['params'], default=None)
    fp32 = next((r for r in records if largest and r['model'] == largest['model'] and r['policy'] == FLOAT32), None)
    if largest and fp32:
        b, b32 = largest['breakdown'], fp32['breakdown']
        share = b['optimizer_ms'] / b['full_step_ms'] if b['full_step_ms'] > 0 else math.nan
        parts.append(f'In the largest model ({largest["model"]}) the optimizer update (float32 master weights) takes '
                     f'{b["optimizer_ms"]:.0f} of the {b["full_step_ms"]:.0f} ms mixed step ({100 * share:.0f} %; '
                     f'{b32["optimizer_ms"]:.0f} ms in float32): ' + (
                         f'it bounds the speed-up at {b32["full_step_ms"] / b["optimizer_ms"]:.1f}x even if the rest '
                         'took no time (Amdahl).' if share >= OPTIMIZER_SHARE_LIMITS else
                         'it is not what limits the speed-up.'))
    backbone = here.get('metrabs_backbone@1x')
    if backbone:
        parts.append(f'The MeTRAbs backbone (GEMM width {backbone["gemm_dim_typical"]:.0f}) gets '
                     f'{backbone["speedup_vs_fp32"]:.2f}x, so `precision.choose_policy` '
                     f'{"keeps it in float32" if backbone["auto_choice"] == FLOAT32 else "picks " + mixed_policy}.')
    return ' '.join(parts)


def plot_speedups(records: Sequence[dict], mixed_policy: str, path) -> None:
    """Speed-up vs parameters, one line per model kind, its points labelled with their widths."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for kind, marker in zip(MODEL_KINDS, 'os^'):
        family = sorted([r for r in _mixed(records, mixed_policy).values() if r['kind'] == kind], key=lambda r: r['params'])
        ax.plot([r['params'] for r in family], [r['speedup_vs_fp32'] for r in family], marker=marker, label=kind)
        for r in family:
            ax.annotate(f'{r["width"]}x', (r['params'], r['speedup_vs_fp32']), xytext=(4, 4), textcoords='offset points')
    for level, style in ((1.0, '-'), (LARGEST_MODEL_MIN_SPEEDUP, '--')):
        ax.axhline(level, color='grey', lw=0.8, ls=style)
    ax.set(xscale='log', xlabel='parameters', ylabel=f'training step speed-up of {mixed_policy} vs float32')
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_experiment(config: Config, out: str, seed: int = 0, mocap_dir: Optional[str] = None,
                   test_mocap_dir: Optional[str] = None, log=print, command: str = '',
                   preset: str = 'default') -> List[dict]:
    """Measures every model of ``plan(config)`` and writes results.json, results.md and speedup.png to ``out``."""
    start, clock = time.perf_counter(), common.PhaseClock()
    mixed_policy = precision.resolve_policy(precision.auto_policy() if config.mixed_policy == 'auto'
                                            else config.mixed_policy)  # refuses float16 on a CPU
    if mixed_policy == FLOAT32:
        raise ValueError('this machine has no reduced-precision policy (auto_policy() is float32): nothing to compare')
    out_dir, work_dir = pathlib.Path(out), pathlib.Path(out) / 'workers'
    data_path, env = work_dir / 'data.npz', dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get('TF_CPP_MIN_LOG_LEVEL', '2'))

    def measure_pair(spec):  # one worker per policy, computing in turns
        jobs = [{'tag': f'{spec.kind}_{spec.width}x_{policy}', 'config': dataclasses.asdict(config), 'policy': policy,
                 'spec': dataclasses.asdict(spec), 'seed': seed, 'data_path': str(data_path),
                 'record': {'model': spec.name, 'kind': spec.kind, 'width': spec.width, 'policy': policy,
                            'batch_size': spec.batch, 'steps': spec.steps}} for policy in (FLOAT32, mixed_policy)]
        results = timing.run_jobs_in_turns('experiments.mixed_precision', jobs, work_dir, config.pair_timeout_s,
                                           cwd=pathlib.Path(__file__).resolve().parents[1], env=env)
        log(f'{spec.name}: ' + ', '.join(f'{r["policy"]} {r["step_ms_median"]:.1f} ms' if r.get('ok') else
                                         f'{r["policy"]} FAILED ({r.get("error")})' for r in results))
        return tasks.compare_policies(results, FLOAT32, mixed_policy, config.timing_warmup)

    fingerprints = dict(mocap=common.folder_fingerprint(mocap_dir), test_mocap=common.folder_fingerprint(test_mocap_dir))
    with common.run_directory(out, EXPERIMENT, config, [seed], fingerprints):
        work_dir.mkdir(parents=True, exist_ok=True)
        with clock.phase('data'):
            np.savez(data_path, **make_data(config, mocap_dir, test_mocap_dir, seed, log=log))
        try:
            with clock.phase('measure'), concurrent.futures.ThreadPoolExecutor(config.parallel_pairs) as pool:
                records = [record for pair in pool.map(measure_pair, plan(config)) for record in pair]
        finally:
            data_path.unlink(missing_ok=True)
        loads, wall = [r['load_average'][0] for r in records if 'load_average' in r], time.perf_counter() - start
        machine = (f'{os.cpu_count()} CPUs, bfloat16 CPU flags '
                   f'{sorted(precision.BF16_CPU_FLAGS & precision.cpu_flags())}, GPU {precision.gpu_available()}')
        context = dict(command=command, machine=machine, mixed_policy=mixed_policy, jit_compile=config.jit_compile,
                       wall_time_s=wall, load=f'{min(loads):.1f}-{max(loads):.1f}' if loads else '?',
                       discussion=discussion(records, mixed_policy))
        common.write_results(out_dir, EXPERIMENT, preset, config, [seed], dict(mixed_policy=mixed_policy, records=records),
                             checks(records, mixed_policy), dict(command=command, bf16_machine=machine), clock)
        common.atomic_write_text(out_dir / 'results.md', markdown_report(records, context))
        if _mixed(records, mixed_policy):
            plot_speedups(records, mixed_policy, out_dir / 'speedup.png')
    log(f'wrote {out_dir}/results.json, results.md, speedup.png ({wall:.0f} s)')
    return records


FLAGS = flags.FLAGS
EXPERIMENT = 'mixed_precision'


def define_flags():
    common.define_common_flags('runs/mixed_precision', strategy=False)  # times one device: no --strategy
    flags.DEFINE_string('worker', None, 'Internal: run one (model, policy) worker from this job file.')


def main(argv):
    del argv
    if FLAGS.worker:
        timing.work_in_turns(FLAGS.worker, measure)
        return
    config = common.resolve_config(PRESETS, FLAGS.preset, FLAGS.set)
    run_experiment(config, FLAGS.out, FLAGS.seed, common.resolve_mocap_dir(FLAGS['mocap-dir'].value),
                   common.test_mocap_dir(FLAGS['test-mocap-dir'].value),
                   command='python -m experiments.mixed_precision ' + ' '.join(sys.argv[1:]),
                   log=common.stderr_log, preset=FLAGS.preset)


if __name__ == '__main__':
    define_flags()
    common.run_main(main, EXPERIMENT)
