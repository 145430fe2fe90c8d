"""Training speed of the GCN lifters: steps/s for float32 vs mixed_bfloat16, with and without XLA.

    python -m tools.benchmark_gcn [--variants full,pre_agg_dec,no_sharing] [--channels 128]
        [--batch 256] [--steps 30] [--repeats 2] [--precisions float32,mixed_bfloat16] [--jit 0,1]

Each configuration trains through the shared loop (``posekit.train.loop.train``, the same path as
``experiments.gcn_weight_sharing``) on random lifting batches for ``--steps`` steps; the loop's
``steps_per_s`` excludes the tracing/compiling steps. Configurations are run round-robin
``--repeats`` times and the best rate is reported, which damps the noise of a shared machine
(the rate still depends on what else runs: say so when quoting numbers).
"""

from __future__ import annotations

import sys

from absl import app, flags

import numpy as np

FLAGS = flags.FLAGS
flags.DEFINE_string('variants', 'full,pre_agg_dec,post_agg_dec,no_sharing',
                    'Comma-separated SHARING_VARIANTS keys.')
flags.DEFINE_integer('channels', 128, 'Channels of the lifter.')
flags.DEFINE_integer('batch', 256, 'Batch size.')
flags.DEFINE_integer('steps', 30, 'Timed training steps per configuration and repeat.')
flags.DEFINE_integer('repeats', 2, 'Round-robin repeats; the best rate is reported.')
flags.DEFINE_string('precisions', 'float32,mixed_bfloat16', 'Comma-separated precision policies.')
flags.DEFINE_string('jit', '0,1', 'Comma-separated jit_compile values (0/1).')


def steps_per_s(variant: str, channels: int, batch: int, steps: int, precision: str,
                jit: bool, seed: int = 0) -> float:
    """Training rate (steps/s) of one lifter configuration through the shared training loop."""
    import keras
    import tensorflow as tf
    from posekit import skeletons
    from posekit.models.lifting import SHARING_VARIANTS, build_gcn_lifter
    from posekit.train import loop
    from posekit.train.precision import policy_scope

    adjacency = skeletons.get('h36m_17').adjacency()
    n = adjacency.shape[0]
    rng = np.random.default_rng(seed)
    inputs = tf.constant(rng.uniform(-1, 1, (batch, n, 2)).astype(np.float32))
    targets = tf.constant(rng.normal(0, 300, (batch, n, 3)).astype(np.float32))
    keras.utils.set_random_seed(seed)
    with policy_scope(precision):
        model = build_gcn_lifter(adjacency, channels, **SHARING_VARIANTS[variant])
        optimizer = keras.optimizers.Adam(1e-3)

    def loss_fn(model, data, step, training):
        x, y = data
        pred = tf.cast(model(x, training=training), tf.float32)
        return tf.reduce_mean(tf.square(pred - y / 1000.0)), {}

    def dataset_fn(start):
        del start
        return tf.data.Dataset.from_tensors((inputs, targets)).repeat()

    config = loop.TrainConfig(total_steps=steps + 1, precision=precision, jit_compile=jit,
                              log_every=steps + 1, progress=False)
    return loop.train(model, loss_fn, dataset_fn, optimizer, config).steps_per_s


def main(argv):
    del argv
    variants = [v for v in FLAGS.variants.split(',') if v]
    precisions = [p for p in FLAGS.precisions.split(',') if p]
    jits = [bool(int(j)) for j in FLAGS.jit.split(',') if j]
    configs = [(v, p, j) for v in variants for p in precisions for j in jits]
    best = {c: 0.0 for c in configs}
    for _ in range(FLAGS.repeats):
        for c in configs:
            rate = steps_per_s(c[0], FLAGS.channels, FLAGS.batch, FLAGS.steps, c[1], c[2])
            best[c] = max(best[c], rate)
            print(f'  {c[0]:14s} {c[1]:15s} jit={int(c[2])}: {rate:6.2f} steps/s', file=sys.stderr,
                  flush=True)
    print(f'| variant | precision | jit | steps/s (batch {FLAGS.batch}, {FLAGS.channels} ch) | '
          f'vs float32 no-jit |')
    print('|---|---|---|---|---|')
    for v in variants:
        ref = best.get((v, precisions[0], jits[0]), float('nan'))
        for p in precisions:
            for j in jits:
                rate = best[(v, p, j)]
                print(f'| {v} | {p} | {int(j)} | {rate:.2f} | {rate / ref:.2f}x |')


if __name__ == '__main__':
    app.run(main)
