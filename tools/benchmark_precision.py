"""Speed-up of a mixed precision policy over float32 across model sizes (the evidence behind ``choose_policy``).

Usage::

    python -m tools.benchmark_precision                               # GCN lifter and motion VAE sweep
    python -m tools.benchmark_precision --gcn-channels 64,128,256 --mvae-hidden 256,1024 --batches 64,256

For each model size and batch size, one model per policy is built (same initial weights) and its
training step (gradient tape, float32 loss, Adam update; ``jit_compile`` off) is timed on a fixed batch.
Measurements are interleaved in rounds (``posekit.train.timing.interleave``: two untimed steps each, then
``--steps`` steps of every policy in turn, ``--rounds`` rounds) so a change of machine load hits both alike;
the table gives the median step time, the speed-up (ratio of medians) with its min-max over the rounds
(``timing.round_speedups``), the model's typical matrix-product width
(``posekit.train.precision.typical_gemm_dim``) and the policy ``choose_policy`` would pick from these
times (it measures the same way). Unlike ``experiments.mixed_precision`` it runs in one process (no
per-policy memory peaks) and trains nothing to convergence: it is a quick sweep.
"""
from __future__ import annotations

import sys
from typing import Dict, Sequence

import numpy as np
from absl import flags

from tools import _cli

#: Joints of the lifter's skeleton and of the motion model's states (smpl_24: 6 numbers per joint).
LIFTER_JOINTS = 'h36m_17'
MOTION_STATE_DIM = 144
#: Untimed steps of each case before the rounds (tracing, warm-up).
WARMUP_STEPS = 2


class _Case:
    """Model, optimizer and compiled training step of one (model, size, batch, policy)."""

    def __init__(self, kind: str, size: int, batch: int, policy: str, seed: int = 0):
        import keras
        import tensorflow as tf
        from posekit.train import precision

        keras.utils.set_random_seed(seed)
        rng = np.random.default_rng(seed)
        with precision.policy_scope(policy):
            if kind == 'gcn_lifter':
                from posekit import skeletons
                from posekit.models.lifting import build_gcn_lifter
                joints = skeletons.get(LIFTER_JOINTS)
                model = build_gcn_lifter(joints.adjacency(), channels=size)
                precision.keep_float32(model)
                inputs = tf.constant(rng.normal(size=(batch, joints.n_joints, 2)), tf.float32)
                targets = tf.constant(rng.normal(0.0, 300.0, (batch, joints.n_joints, 3)), tf.float32)
                self.example = inputs

                def loss_fn():
                    error = tf.cast(model(inputs, training=True), tf.float32) - targets
                    return tf.reduce_mean(tf.abs(error))
            else:
                from posekit.models.motion_vae import MotionVAE, motion_vae_loss
                model = MotionVAE(MOTION_STATE_DIM, hidden=size)
                model.build()
                batch_inputs = {name: tf.constant(rng.normal(size=(batch, dim)), tf.float32) for name, dim in
                                (('x_prev', MOTION_STATE_DIM), ('x_next', MOTION_STATE_DIM),
                                 ('noise', model.latent_dim))}
                self.example = batch_inputs

                def loss_fn():
                    return motion_vae_loss(model(batch_inputs, training=True), batch_inputs['x_next'])[0]
            optimizer = keras.optimizers.Adam(1e-4)
            optimizer.build(model.trainable_variables)
        self.model, self.policy = model, policy
        self.gemm_dim = precision.typical_gemm_dim(precision.gemm_sizes(model, self.example))

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = loss_fn()
            optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
            return loss

        self._step = step

    def __call__(self):
        """One training step (blocks until it is done)."""
        from posekit.train import precision
        with precision.global_policy(self.policy):
            self._step().numpy()


def benchmark(kind: str, size: int, batch: int, policies: Sequence[str], rounds: int, steps: int) -> Dict:
    """Interleaved timing of one model size under every policy; returns a table row (``ms``: median step ms per
    policy; ``speedup``: first policy's median over the last's; ``speedup_spread``: min and max per round)."""
    from posekit.train import timing
    from posekit.train.loop import count_params
    from posekit.train.precision import decide_policy
    cases = [_Case(kind, size, batch, policy) for policy in policies]
    durations = timing.interleave({case.policy: case for case in cases}, rounds, calls=steps, warmup=WARMUP_STEPS)
    ms = {policy: timing.summarize(seconds).median_ms for policy, seconds in durations.items()}
    reference, candidate = (durations[policies[0]], durations[policies[-1]])
    round_index = np.repeat(np.arange(rounds), steps)
    per_round = timing.round_speedups(reference, round_index, candidate, round_index)
    return dict(kind=kind, size=size, batch=batch, params=count_params(cases[0].model),
                gemm_dim=cases[0].gemm_dim, ms=ms, speedup=timing.speedups(ms, policies[0])[policies[-1]],
                speedup_spread=(float(per_round.min()), float(per_round.max())),
                choice=decide_policy(ms[policies[0]], ms[policies[-1]], policies[-1]))


def format_table(rows: Sequence[Dict], policies: Sequence[str]) -> str:
    lines = ['| model | size | batch | params | GEMM width | ' + ' | '.join(f'{p} ms' for p in policies)
             + ' | speed-up | over rounds | choice |', '|' + '---|' * (8 + len(policies))]
    for r in rows:
        lines.append(f'| {r["kind"]} | {r["size"]} | {r["batch"]} | {r["params"] / 1e6:.2f}M | '
                     f'{r["gemm_dim"]:.0f} | ' + ' | '.join(f'{r["ms"][p]:.1f}' for p in policies)
                     + f' | {r["speedup"]:.2f} | {r["speedup_spread"][0]:.2f}-{r["speedup_spread"][1]:.2f} | '
                     f'{r["choice"]} |')
    return '\n'.join(lines) + '\n'


def define_flags(fv):
    flags.DEFINE_list('gcn-channels', ['32', '64', '128', '256'], 'GCN lifter channel counts (empty to skip)',
                      flag_values=fv)
    flags.DEFINE_list('mvae-hidden', ['128', '256', '512', '1024'], 'motion VAE hidden widths (empty to skip)',
                      flag_values=fv)
    flags.DEFINE_list('batches', ['64', '256'], 'batch sizes', flag_values=fv)
    flags.DEFINE_string('policy', 'auto', "reduced-precision policy compared with float32 ('auto': the machine's)",
                        flag_values=fv)
    flags.DEFINE_integer('rounds', 3, 'interleaved rounds', lower_bound=1, flag_values=fv)
    flags.DEFINE_integer('steps', 5, 'steps per policy per round', lower_bound=1, flag_values=fv)


def _positive_ints(values, name):
    try:
        out = [int(v) for v in values]
    except ValueError:
        raise _cli.UsageError(f'--{name} must be comma-separated positive ints, got {values}') from None
    if any(v < 1 for v in out):
        raise _cli.UsageError(f'--{name} must be comma-separated positive ints, got {values}')
    return out


def main(argv=None):
    args, _ = _cli.parse(define_flags, argv, 'benchmark_precision')
    args.gcn_channels = _positive_ints(args.gcn_channels, 'gcn-channels')
    args.mvae_hidden = _positive_ints(args.mvae_hidden, 'mvae-hidden')
    args.batches = _positive_ints(args.batches, 'batches')
    from posekit.train import precision
    mixed = precision.resolve_policy(precision.auto_policy() if args.policy == 'auto' else args.policy)
    policies = ('float32', mixed)
    rows = []
    for kind, sizes in (('gcn_lifter', args.gcn_channels), ('motion_vae', args.mvae_hidden)):
        for size in sizes:
            for batch in args.batches:
                rows.append(benchmark(kind, size, batch, policies, args.rounds, args.steps))
                r = rows[-1]
                print(f'{kind} {size} batch {batch}: GEMM width {r["gemm_dim"]:.0f}, '
                      f'speed-up {r["speedup"]:.2f}', file=sys.stderr, flush=True)
    print(format_table(rows, policies))
    print(f'choice: what precision.choose_policy decides (the mixed policy if >= {precision.MIN_SPEEDUP}x faster).')
    return 0


if __name__ == '__main__':
    _cli.run(main, 'benchmark_precision')
