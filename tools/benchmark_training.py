"""Training steps/s of the default MeTRAbs model under several precision policies, side by side.

Usage::

    python -m tools.benchmark_training                       # float32 vs auto, default preset
    python -m tools.benchmark_training --policies float32,mixed_bfloat16 --rounds 7 --steps 10
    python -m tools.benchmark_training --examples-per-s 900  # + the data pipeline's margin

The model, loss and optimizer are those of stage 1 of :mod:`experiments.metrabs_acae` for the
chosen ``--preset`` (default: mobile_small backbone at 128 px, separate heads for the 77 joints of
``DEFAULT_FORMATS``, batches of 24 3D + 8 2D examples, AdamW, ``metrabs_loss``). One model per
policy is built inside ``policy_scope``; the training step is the loop's step (gradient tape, the
loss in float32, ``optimizer.apply`` with the max-norm constraints) on a fixed in-memory batch that
follows the data contract (random images: compute only, no input pipeline). Measurements are
interleaved (``posekit.train.timing.interleave``): ``--warmup`` untimed steps each (the first traces),
then each round times ``--steps`` steps of every policy in turn, so a machine whose load changes affects
all policies alike; the table reports each policy's steps/s per round (steps over their summed time):
median and range over rounds.
``auto`` is ``posekit.train.precision.auto_policy()`` (mixed_bfloat16 on CPUs with AVX512-BF16/AMX).

With ``--examples-per-s`` (what ``tools/benchmark_data.py`` measured for the input pipeline) the
ratio of pipeline throughput to the step's consumption (steps/s x batch size) is printed.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Dict, List, Sequence

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import flags  # noqa: E402

from tools import _cli  # noqa: E402

DEFAULT_POLICIES = ('float32', 'auto')


def synthetic_batch(config, space, seed: int = 0):
    """A fixed batch of the experiment's composition (dict of tensors, data-contract fields)."""
    import numpy as np
    import tensorflow as tf
    from experiments import metrabs_acae
    from posekit.data import pipeline, synth

    skeleton_of = {spec.name: spec.skeleton for spec in synth.PRESETS.values()}
    parts = []
    for d, (name, count) in enumerate(metrabs_acae.composition(config).items()):
        arrays = pipeline.synthetic_arrays(count, config.crop_size, space.format_mask(skeleton_of[name]), seed=seed + d,
                                           is_3d=name not in pipeline.DATASETS_2D)
        arrays['dataset'] = np.full(count, d, np.int32)
        parts.append(arrays)
    return {k: tf.constant(np.concatenate([p[k] for p in parts])) for k in parts[0]}


class PolicyBench:
    """Model, optimizer and compiled training step of one precision policy."""

    def __init__(self, policy: str, config, space, batch, seed: int = 0):
        import keras
        import tensorflow as tf
        from experiments import metrabs_acae
        from posekit.train import precision, schedules

        self.requested = policy
        self.policy = precision.resolve_policy(policy)
        keras.utils.set_random_seed(seed)
        with precision.policy_scope(self.policy):
            self.model = metrabs_acae.build_model(config, space)
            self.optimizer = keras.optimizers.AdamW(schedules.MetrabsSchedule(config.stage1_steps, base=config.base_learning_rate),
                                                    weight_decay=config.weight_decay)
            self.optimizer.build(self.model.trainable_variables)
        loss_fn = metrabs_acae.make_loss_fn(config, space, seed, stage=1)
        model, optimizer = self.model, self.optimizer
        variables = model.trainable_variables

        def step(step_index):
            with tf.GradientTape() as tape:
                loss, _ = loss_fn(model, batch, step_index, True)
            grads = tape.gradient(loss, variables)
            optimizer.apply(grads, variables)
            return loss

        self._step = tf.function(step, jit_compile=config.jit_compile)
        self._index = 0
        self.batch_size = int(batch['image'].shape[0])

    def __call__(self):
        """One training step (the loss is fetched, as the loop does)."""
        import tensorflow as tf
        from posekit.train.precision import global_policy
        with global_policy(self.policy):
            float(self._step(tf.constant(self._index, tf.int64)))
        self._index += 1


def benchmark(policies: Sequence[str], preset: str = 'default', rounds: int = 5, steps: int = 10,
              warmup: int = 2, jit_compile: bool = False, seed: int = 0, log=print) -> List[Dict]:
    """[{policy, resolved, rates (steps/s per round), median, ...}] of each policy, measured interleaved."""
    import dataclasses
    from experiments import metrabs_acae
    config = dataclasses.replace(metrabs_acae.PRESETS[preset], jit_compile=jit_compile)
    space = metrabs_acae.joint_space()
    batch = synthetic_batch(config, space, seed)
    from posekit.train import timing
    benches = {}
    for k, policy in enumerate(policies):
        start = time.perf_counter()
        bench = PolicyBench(policy, config, space, batch, seed)
        bench()  # traces
        log(f'{policy} ({bench.policy}): built and traced in {time.perf_counter() - start:.1f} s')
        benches[f'{k}:{policy}'] = bench

    def progress(r, durations):
        log(f'round {r + 1}/{rounds}: ' + ', '.join(f'{b.requested} {steps / durations[key][r].sum():.2f}'
                                                    for key, b in benches.items()) + ' steps/s')

    durations = timing.interleave(benches, rounds, calls=steps, warmup=max(warmup - 1, 0), after_round=progress)
    rows = []
    for key, bench in benches.items():
        values = [steps / float(seconds.sum()) for seconds in durations[key]]
        median = statistics.median(values)
        rows.append(dict(policy=bench.requested, resolved=bench.policy, rates=values, median=median,
                         low=min(values), high=max(values), ms_per_step=1000.0 / median,
                         examples_per_s=median * bench.batch_size, batch_size=bench.batch_size))
    reference = rows[0]['median']
    for row in rows:
        row['speedup'] = row['median'] / reference
    return rows


def format_table(rows: Sequence[Dict], examples_per_s: float = None) -> str:
    header = ['policy', 'resolved', 'steps/s (median)', 'range', 'ms/step', 'examples/s', f'vs {rows[0]["policy"]}']
    if examples_per_s:
        header.append('pipeline / step')
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for row in rows:
        cells = [row['policy'], row['resolved'], f'{row["median"]:.2f}', f'{row["low"]:.2f}-{row["high"]:.2f}',
                 f'{row["ms_per_step"]:.0f}', f'{row["examples_per_s"]:.0f}', f'{row["speedup"]:.2f}x']
        if examples_per_s:
            cells.append(f'{examples_per_s / row["examples_per_s"]:.1f}x')
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def define_flags(fv):
    flags.DEFINE_list('policies', list(DEFAULT_POLICIES),
                      'comma-separated precision policies (auto, float32, mixed_bfloat16, mixed_float16); the first is '
                      'the reference of the speed-up column', flag_values=fv)
    flags.DEFINE_string('preset', 'default', 'experiments.metrabs_acae preset (model, batch)', flag_values=fv)
    flags.DEFINE_integer('rounds', 5, 'interleaved measurement rounds', lower_bound=1, flag_values=fv)
    flags.DEFINE_integer('steps', 10, 'timed steps per policy and round', lower_bound=1, flag_values=fv)
    flags.DEFINE_integer('warmup', 2, 'untimed steps per policy after tracing', lower_bound=0, flag_values=fv)
    flags.DEFINE_bool('jit', False, 'XLA-compile the step (jit_compile=True)', flag_values=fv)
    flags.DEFINE_integer('seed', 0, 'seed', lower_bound=0, flag_values=fv)
    flags.DEFINE_float('examples-per-s', None, 'input pipeline throughput (tools/benchmark_data.py) for the ratio '
                       'column', flag_values=fv)


def main(argv=None):
    args, _ = _cli.parse(define_flags, argv, 'benchmark_training')
    policies = [p.strip() for p in args.policies if p.strip()]
    if not policies:
        raise _cli.UsageError('--policies must name at least one policy')

    def log(message):
        print(message, file=sys.stderr, flush=True)

    rows = benchmark(policies, args.preset, args.rounds, args.steps, args.warmup, args.jit, args.seed, log)
    load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
    print(f'MeTRAbs training step, preset {args.preset!r}, batch {rows[0]["batch_size"]}, '
          f'{"XLA" if args.jit else "no XLA"}; median over {args.rounds} interleaved rounds of {args.steps} steps; '
          f'{os.cpu_count()} CPUs, load average {load:.1f}')
    print(format_table(rows, args.examples_per_s))
    if args.examples_per_s:
        print(f'pipeline / step: input pipeline examples/s ({args.examples_per_s:.0f}) over the examples/s the '
              'step consumes (>= 3x leaves the step input-bound never)')
    return 0


if __name__ == '__main__':
    _cli.run(main, 'benchmark_training')
