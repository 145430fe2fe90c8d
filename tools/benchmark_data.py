"""Throughput of the training data pipeline: read + decode + augment + batch, in examples/s.

Usage::

    python -m tools.benchmark_data --seconds 10 --sides 128,256 --train-steps-per-s 0.5 --batch-size 32
    python -m tools.benchmark_data --shards data/synth      # shards made by tools/make_datasets.py

For each crop side the full training pipeline of
:func:`posekit.data.pipeline.interleave_by_composition` (default augmentation, default
composition) runs for ``--seconds`` after a warm-up, and a table of examples/s is printed.

Sources (``--source``; the table says which was used):

- ``shards`` (default when :mod:`posekit.data.storage` is importable): ``--examples-per-dataset``
  examples of each synthetic dataset are rendered once into HDF5 shards in a temporary folder
  (``storage.ensure_datasets``) and read back through :func:`~posekit.data.pipeline.stream_from_shards`
  (memory-mapped images, so the files sit in the OS page cache as a small dataset would);
- ``synth``: the same renderings held in memory (:func:`~posekit.data.pipeline.stream_from_arrays`);
- ``arrays``: random arrays (:func:`~posekit.data.pipeline.synthetic_arrays`), no rendering needed.

``--shards DIR`` reads existing shards (train split) at their own crop size instead.
With ``--train-steps-per-s`` and ``--batch-size`` the training step's consumption
(steps/s x batch size) is printed with the ratio the acceptance asks for (>= 3x).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import flags  # noqa: E402

from tools import _cli  # noqa: E402

REQUIRED_SPEEDUP = 3.0
"""The pipeline must deliver at least this multiple of what the training step consumes."""

WARMUP_BATCHES = 3
SOURCES = ('auto', 'shards', 'synth', 'arrays')


def _default_formats():
    try:
        from posekit.data.bodies import DEFAULT_FORMATS
    except ImportError:
        DEFAULT_FORMATS = ('h36m_17', 'smpl_24', 'coco_19', 'mpi_inf_3dhp_17')
    return DEFAULT_FORMATS


def _array_streams(composition, side, examples_per_dataset, seed, workdir):
    from posekit.data import pipeline
    from posekit.skeletons import JointSpace
    space = JointSpace(_default_formats())
    streams = {}
    for i, name in enumerate(composition):
        valid = space.format_mask(space.formats[i % len(space.formats)])
        arrays = pipeline.synthetic_arrays(examples_per_dataset, side, valid, seed=seed + i,
                                           is_3d=name not in pipeline.DATASETS_2D)
        streams[name] = pipeline.stream_from_arrays(arrays)
    return streams, space.mirror, side, f'random arrays in memory ({examples_per_dataset}/dataset)'


def _specs(composition, side, examples_per_dataset):
    from posekit.data import synth
    return [dataclasses.replace(spec, n_train=examples_per_dataset, n_val=0, n_test=0)
            for spec in synth.preset_specs('smoke', list(composition), crop_size=side)]


def _synth_streams(composition, side, examples_per_dataset, seed, workdir):
    from posekit.data import pipeline, synth
    splits = synth.load_motion_splits(seed=seed, n_subjects=2, clips_per_subject=2, seconds=2.0)
    motion = synth.PreparedMotion(splits.train)
    streams = {}
    specs = _specs(composition, side, examples_per_dataset)
    for spec in specs:
        arrays = synth.generate_examples(spec, motion, 'train', 0, examples_per_dataset, seed=seed)
        streams[spec.name] = pipeline.stream_from_arrays(arrays)
    return (streams, specs[0].joint_space.mirror, side,
            f'posekit.data.synth renderings in memory ({examples_per_dataset}/dataset)')


def _generated_shard_streams(composition, side, examples_per_dataset, seed, workdir):
    from posekit.data import pipeline, storage
    specs = _specs(composition, side, examples_per_dataset)
    folder = os.path.join(workdir, f'side{side}')
    paths = storage.ensure_datasets(folder, specs, seed=seed, splits=('train',), progress=False)
    streams = {name: pipeline.stream_from_shards(p['train']) for name, p in paths.items()}
    return (streams, specs[0].joint_space.mirror, side,
            f'HDF5 shards of posekit.data.synth renderings ({examples_per_dataset}/dataset, memory-mapped)')


def _existing_shard_streams(composition, shard_dir):
    from posekit.data import pipeline
    from posekit.skeletons import JointSpace
    streams = {name: pipeline.stream_from_shards(shard_dir, name=name, split='train') for name in composition}
    first = next(iter(streams.values()))
    space = JointSpace(first.metadata['joint_space'])
    side = int(first.metadata['crop_size'])
    return streams, space.mirror, side, f'HDF5 shards in {shard_dir}'


def measure(streams, composition, mirror, seconds, num_parallel_calls=0, augment=True, warp_backend='opencv'):
    """Examples/s of the full pipeline over ``seconds`` (after a warm-up of WARMUP_BATCHES)."""
    import tensorflow as tf
    from posekit.data import pipeline
    from posekit.data.augment import AugmentConfig
    config = AugmentConfig(warp_backend=warp_backend) if augment else None
    parallel = tf.data.AUTOTUNE if num_parallel_calls <= 0 else num_parallel_calls
    dataset = pipeline.interleave_by_composition(streams, composition, seed=0, augment=config, mirror=mirror,
                                                 num_parallel_calls=parallel)
    iterator = iter(dataset)
    for _ in range(WARMUP_BATCHES):
        next(iterator)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        count += int(next(iterator)['image'].shape[0])
    return count / (time.perf_counter() - start)


def _resolve_source(source):
    if source != 'auto':
        return source
    for module, choice in (('posekit.data.storage', 'shards'), ('posekit.data.synth', 'synth')):
        try:
            __import__(module)
            return choice
        except ImportError:
            continue
    return 'arrays'


def define_flags(fv):
    flags.DEFINE_float('seconds', 10.0, 'measuring time per crop side', flag_values=fv)
    flags.DEFINE_list('sides', ['128', '256'], 'crop sides (px), comma-separated', flag_values=fv)
    flags.DEFINE_string('preset', 'default', 'batch composition (pipeline.COMPOSITIONS)', flag_values=fv)
    flags.DEFINE_enum('source', 'auto', list(SOURCES), 'where examples come from', flag_values=fv)
    flags.DEFINE_string('shards', None, 'folder of existing shards (tools/make_datasets.py)', flag_values=fv)
    flags.DEFINE_integer('examples-per-dataset', 64, 'examples made per dataset', flag_values=fv)
    flags.DEFINE_integer('num-parallel-calls', 0, '0: tf.data.AUTOTUNE', flag_values=fv)
    flags.DEFINE_bool('no-augment', False, 'measure read + batch only', flag_values=fv)
    flags.DEFINE_enum('warp-backend', 'opencv', ['opencv', 'tensorflow'], 'AugmentConfig.warp_backend',
                      flag_values=fv)
    flags.DEFINE_float('train-steps-per-s', None, 'training steps/s to compare with', flag_values=fv)
    flags.DEFINE_integer('batch-size', None, 'training batch size to compare with', flag_values=fv)


def main(argv=None):
    args, _ = _cli.parse(define_flags, argv, 'benchmark_data')
    from posekit.data import pipeline
    try:
        args.sides = [int(v) for v in args.sides]
    except ValueError:
        raise _cli.UsageError(f'--sides must be comma-separated ints, got {args.sides}') from None
    if args.preset not in pipeline.COMPOSITIONS:
        raise _cli.UsageError(f'--preset must be one of {sorted(pipeline.COMPOSITIONS)}, got {args.preset!r}')
    if (args.train_steps_per_s is None) != (args.batch_size is None):
        raise _cli.UsageError('give both --train-steps-per-s and --batch-size, or neither')
    if args.seconds <= 0 or args.examples_per_dataset <= 0:
        raise _cli.UsageError('--seconds and --examples-per-dataset must be positive')
    composition = pipeline.COMPOSITIONS[args.preset]
    batch = sum(composition.values())
    makers = {'shards': _generated_shard_streams, 'synth': _synth_streams, 'arrays': _array_streams}
    rows, sources = [], set()
    with tempfile.TemporaryDirectory(prefix='posekit-benchmark-') as workdir:
        if args.shards:
            configs = [lambda: _existing_shard_streams(composition, args.shards)]
        else:
            maker = makers[_resolve_source(args.source)]
            configs = [lambda side=side: maker(composition, side, args.examples_per_dataset, 0, workdir)
                       for side in args.sides]
        for make in configs:
            streams, mirror, side, source = make()
            sources.add(source)
            rate = measure(streams, composition, mirror, args.seconds, args.num_parallel_calls,
                           augment=not args.no_augment, warp_backend=args.warp_backend)
            rows.append((side, rate))
    augmentation = 'no augmentation' if args.no_augment else f'full augmentation ({args.warp_backend} warp)'
    print(f'source: {"; ".join(sorted(sources))}')
    print(f'preset {args.preset!r} (batch {batch}), {augmentation}, {os.cpu_count()} CPUs, '
          f'{args.seconds:g} s per side')
    print(f'{"side (px)":>10} {"examples/s":>12} {"batches/s":>10}')
    for side, rate in rows:
        print(f'{side:>10} {rate:>12.1f} {rate / batch:>10.2f}')
    if args.train_steps_per_s is not None:
        consumption = args.train_steps_per_s * args.batch_size
        print(f'training step consumes {consumption:.1f} examples/s '
              f'({args.train_steps_per_s:g} steps/s x batch {args.batch_size})')
        for side, rate in rows:
            ratio = rate / consumption
            verdict = 'ok' if ratio >= REQUIRED_SPEEDUP else f'below the required {REQUIRED_SPEEDUP:g}x'
            print(f'  {side} px: pipeline / training = {ratio:.1f}x ({verdict})')
    return 0


if __name__ == '__main__':
    _cli.run(main, 'benchmark_data')
