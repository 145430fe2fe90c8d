"""Throughput of load-time cropping from full images (JPEG decode + crop + augmentation) against training.

Usage::

    python -m tools.benchmark_full_image                       # 256 and 128 px crops, 10 s each
    python -m tools.benchmark_full_image --sides=256 --seconds=20 --images=128

The real-dataset path of the input pipeline: full frames (640 x 480 JPEGs of posekit's renderer with their
cameras, a stand-in for Human3.6M-sized frames) are written to a temporary folder with a manifest, indexed
(:mod:`posekit.data.adapters.manifest`, :func:`posekit.data.examples.write_index`) and read by
:class:`posekit.data.full_image.FullImageStream` through
:func:`posekit.data.pipeline.interleave_by_composition` with the default augmentation: every example's JPEG is
decoded, undistorted and cut into its crop at load time. In the same run the default MeTRAbs training step
(float32, ``tools.benchmark_training``) is timed, and the table gives the pipeline's examples/s as a multiple of
what the step consumes (steps/s x batch size). Measurements alternate between the pipeline and the step.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import flags  # noqa: E402

from tools import _cli  # noqa: E402

WARMUP_BATCHES = 3
IMAGE_SHAPE = (480, 640)


def write_frames(folder: str, n_images: int, seed: int = 0) -> str:
    """Renders ``n_images`` full frames as JPEGs with a manifest in ``folder``; returns the manifest path."""
    import cv2
    from posekit.data import synth
    spec = [s for s in synth.preset_specs('smoke', crop_size=64) if s.name == 'h36m_like'][0]
    motion = synth.PreparedMotion(synth.load_motion_splits(None, seed=seed, max_frames_per_clip=60).train)
    items = []
    for i in range(n_images):
        frame = synth.render_full_frame(spec, motion, 'train', i, seed=seed, image_shape=IMAGE_SHAPE,
                                        distortion_coeffs=[-0.1, 0.02, 0, 0, 0] if i % 2 else None)
        cv2.imwrite(os.path.join(folder, f'frame{i:05d}.jpg'), cv2.cvtColor(frame['image'], cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 90])
        items.append({'image': f'frame{i:05d}.jpg', 'split': 'train', 'box': frame['box'].tolist(),
                      'joints3d': frame['joints3d'].tolist(), 'subject': frame['subject'],
                      'camera': {'intrinsic_matrix': frame['intrinsics'].tolist(),
                                 'rotation': frame['rotation'].tolist(), 'translation': frame['translation'].tolist(),
                                 'distortion': frame['distortion'].tolist(), 'world_up': frame['world_up'].tolist()}})
    path = os.path.join(folder, 'labels.json')
    with open(path, 'w', encoding='utf-8') as f:
        json.dump({'dataset': 'frames', 'skeleton': frame['skeleton'], 'examples': items}, f)
    return path


def make_pipeline(index_path: str, side: int, batch_size: int, seed: int = 0):
    """The augmented training batches of crops of ``side`` px cut from the indexed full frames."""
    from posekit.data import examples, full_image, pipeline
    from posekit.data.augment import AugmentConfig
    from posekit.skeletons import JointSpace
    source = examples.open_index(index_path)
    space = JointSpace([source.skeleton])
    stream = full_image.FullImageStream(source, space, source.skeleton, side)
    return pipeline.interleave_by_composition({'frames': stream}, {'frames': batch_size}, seed=seed,
                                              augment=AugmentConfig(), mirror=space.mirror)


def time_pipeline(iterator, seconds: float, batch_size: int) -> float:
    """Examples/s of ``iterator`` over ``seconds``."""
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        next(iterator)
        count += batch_size
    return count / (time.perf_counter() - start)


def define_flags(fv):
    flags.DEFINE_list('sides', ['256', '128'], 'Crop sides (px).', flag_values=fv)
    flags.DEFINE_float('seconds', 10.0, 'Seconds per pipeline measurement.', flag_values=fv)
    flags.DEFINE_integer('rounds', 3, 'Alternating rounds of pipeline and training-step measurements.',
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_integer('images', 64, 'Full frames rendered and indexed.', lower_bound=1, flag_values=fv)
    flags.DEFINE_integer('train-steps', 10, 'Training steps per round (0: no training-step measurement).',
                         lower_bound=0, flag_values=fv)


def main(argv=None) -> int:
    args, _ = _cli.parse(define_flags, argv, 'benchmark_full_image')
    try:
        sides = [int(s) for s in args.sides]
    except ValueError:
        raise ValueError(f'--sides must be comma-separated ints, got {args.sides}') from None
    if not sides or min(sides) < 16:
        raise ValueError(f'--sides must be ints >= 16, got {sides}')
    from posekit.data import examples
    from posekit.data.adapters import manifest
    with tempfile.TemporaryDirectory(prefix='posekit-full-image-') as folder:
        start = time.perf_counter()
        manifest_path = write_frames(folder, args.images)
        index_path = examples.write_index(os.path.join(folder, 'frames.h5'), manifest.load(manifest_path, 'train'),
                                          'train', root=manifest.root_of(manifest_path))
        print(f'{args.images} frames {IMAGE_SHAPE[1]}x{IMAGE_SHAPE[0]} px written as JPEG and indexed in '
              f'{time.perf_counter() - start:.1f} s', file=sys.stderr)
        bench = None
        batch_size = 32
        if args.train_steps:
            from tools import benchmark_training
            import dataclasses
            from experiments import metrabs_acae
            config = metrabs_acae.PRESETS['default']
            space = metrabs_acae.joint_space()
            bench = benchmark_training.PolicyBench('float32', config, space,
                                                   benchmark_training.synthetic_batch(config, space), 0)
            bench.run(2)
            batch_size = bench.batch_size
        iterators = {}
        for side in sides:
            iterators[side] = iter(make_pipeline(index_path, side, batch_size))
            for _ in range(WARMUP_BATCHES):
                next(iterators[side])
        rates = {side: [] for side in sides}
        steps = []
        for r in range(args.rounds):
            for side in sides:
                rates[side].append(time_pipeline(iterators[side], args.seconds, batch_size))
            if bench is not None:
                steps.append(bench.run(args.train_steps))
            print(f'round {r + 1}/{args.rounds}: ' + ', '.join(f'{s} px {rates[s][-1]:.0f} ex/s' for s in sides)
                  + (f', training {steps[-1]:.2f} steps/s' if steps else ''), file=sys.stderr)
    consumed = statistics.median(steps) * batch_size if steps else None
    print(f'| crop side | examples/s (median of {args.rounds}) | range |'
          + (' training consumes (ex/s) | pipeline / training |' if consumed else ''))
    print('|---|---|---|' + ('---|---|' if consumed else ''))
    for side in sides:
        median = statistics.median(rates[side])
        row = f'| {side} px | {median:.0f} | {min(rates[side]):.0f}-{max(rates[side]):.0f} |'
        if consumed:
            row += f' {consumed:.0f} | {median / consumed:.1f}x |'
        print(row)
    if consumed:
        print(f'training step: default MeTRAbs preset, float32, batch {batch_size}, '
              f'{statistics.median(steps):.2f} steps/s (median)')
    return 0


if __name__ == '__main__':
    _cli.run(main, 'benchmark_full_image')
