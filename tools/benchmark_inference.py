"""Inference speed of the exported pose estimator and its converted crop models, side by side.

Usage::

    python -m tools.benchmark_inference                                   # default backbone, modest settings
    python -m tools.benchmark_inference --backbones mobile_small:128,efficientnetv2-s:256 --people 1,8,32

For each backbone (``name:crop_size``; random weights: speed does not depend on them) the tool builds a
``Metrabs`` in float32 and one in ``mixed_bfloat16`` (same weights), exports both
(``posekit.export.export_model``), and converts the float32 crop model (``posekit.convert``: TFLite
float32, TFLite float16 weights, ONNX). It then times, interleaved in rounds (every case once per round,
``--calls`` calls each, so machine-load changes hit all cases alike; median over rounds):

- ``estimate_poses`` of each SavedModel on one 480x640 image with 1, 8, 32 boxes (``--people``),
  ``--num-aug`` test-time augmentations and ``--internal-batch-size`` chunk sizes (warping + network +
  back-transformation);
- the raw crop model (``crop_model`` signature, TFLite, ONNX Runtime) on batches of the same numbers of
  crops.

Columns: crops/s (people x num_aug / time) and latency per image (ms per call). TF, LiteRT and ONNX
Runtime are limited to ``--threads`` threads.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

import numpy as np
from absl import flags

from tools import _cli

IMAGE_SHAPE = (480, 640, 3)
MS_PER_S = 1000.0


def define_flags(fv):
    flags.DEFINE_list('backbones', ['mobile_small:128'], 'name:crop_size of each backbone '
                      '(posekit.models.backbones; paper-size: efficientnetv2-s:256)', flag_values=fv)
    flags.DEFINE_list('people', ['1', '8', '32'], 'people (boxes) per image', flag_values=fv)
    flags.DEFINE_list('num-aug', ['1', '5'], 'test-time augmentations of estimate_poses', flag_values=fv)
    flags.DEFINE_list('internal-batch-size', ['64', '8', '0'],
                      'internal_batch_size values of estimate_poses (crops per network call, 0 = all in one); '
                      'every value is timed on the float32 export, the first also on mixed_bfloat16', flag_values=fv)
    flags.DEFINE_list('converted', ['tflite_float32', 'tflite_float16', 'onnx'],
                      'converted crop models to time (posekit.convert.FORMATS)', flag_values=fv)
    flags.DEFINE_boolean('bfloat16', True, 'also time a mixed_bfloat16 export', flag_values=fv)
    flags.DEFINE_integer('rounds', 3, 'interleaved rounds', lower_bound=1, flag_values=fv)
    flags.DEFINE_integer('calls', 3, 'calls per case per round', lower_bound=1, flag_values=fv)
    flags.DEFINE_integer('threads', 1, 'threads of every runtime', lower_bound=1, flag_values=fv)
    flags.DEFINE_string('work-dir', None, 'where the exports go (default: a temporary directory)', flag_values=fv)


def _ints(values, name, minimum=1):
    kind = 'positive' if minimum == 1 else 'non-negative'
    try:
        out = [int(v) for v in values]
    except ValueError:
        raise _cli.UsageError(f'--{name} must be comma-separated {kind} ints, got {values}') from None
    if not out or any(v < minimum for v in out):
        raise _cli.UsageError(f'--{name} must be comma-separated {kind} ints, got {values}')
    return out


def _backbones(values):
    out = []
    for value in values:
        name, _, size = value.partition(':')
        if not size.isdigit() or int(size) < 32:
            raise _cli.UsageError(f'--backbones entries must be name:crop_size (crop_size >= 32), got {value!r}')
        out.append((name, int(size)))
    return out


def build_models(name, crop_size, bfloat16, seed=0):
    """{policy: built Metrabs} with identical weights."""
    import keras
    import tensorflow as tf
    from posekit.data import bodies
    from posekit.models.backbones import build_backbone
    from posekit.models.metrabs import Metrabs
    from posekit.skeletons import JointSpace
    from posekit.train import precision
    space = JointSpace(bodies.DEFAULT_FORMATS)
    models = {}
    for policy in ('float32', 'mixed_bfloat16') if bfloat16 else ('float32',):
        keras.utils.set_random_seed(seed)
        with precision.policy_scope(policy):
            net = Metrabs(build_backbone(name, input_shape=(crop_size, crop_size, 3)), space.n_joints)
            net(tf.zeros([1, crop_size, crop_size, 3]), tf.eye(3)[tf.newaxis], training=False)
        if models:
            net.set_weights(models['float32'].get_weights())
        models[policy] = net
    return models, space


def boxes_for(people, rng):
    """[people, 4] boxes (x, y, w, h px) of person-like size inside the image."""
    h, w = IMAGE_SHAPE[:2]
    bw = rng.uniform(40, 120, people)
    bh = bw * rng.uniform(2.0, 3.0, people)
    return np.stack([rng.uniform(0, w - bw), rng.uniform(0, h - bh), bw, bh], -1).astype(np.float32)


def make_cases(name, crop_size, args, work_dir):
    """[(label, n_crops, callable)] for one backbone."""
    import tensorflow as tf
    from posekit import convert, export
    models, space = build_models(name, crop_size, args.bfloat16)
    rng = np.random.default_rng(0)
    image = tf.constant(rng.integers(0, 256, IMAGE_SHAPE, dtype=np.uint8))
    cases = []
    saved = {}
    for policy, net in models.items():
        path = os.path.join(work_dir, f'{name}_{policy}')
        t0 = time.perf_counter()
        export.export_model(net, space, path, crop_size=crop_size)
        print(f'{name}: exported {policy} in {time.perf_counter() - t0:.0f} s', file=sys.stderr, flush=True)
        saved[policy] = path
        loaded = tf.saved_model.load(path)
        chunks = args.internal_batch_size if policy == 'float32' else args.internal_batch_size[:1]
        for people in args.people:
            boxes = tf.constant(boxes_for(people, rng))
            for num_aug in args.num_aug:
                for chunk in chunks:
                    fn = (lambda m=loaded, b=boxes, a=num_aug, c=chunk:
                          m.estimate_poses(image, b, num_aug=a, internal_batch_size=c)['poses3d'].numpy())
                    cases.append((f'SavedModel {policy} estimate_poses num_aug={num_aug} internal_batch_size={chunk}',
                                  people, people * num_aug, fn))
    loaded = tf.saved_model.load(saved['float32'])
    signature = loaded.signatures['crop_model']
    crops = {p: rng.uniform(0, 1, (p, crop_size, crop_size, 3)).astype(np.float32) for p in args.people}
    ks = {p: np.tile(np.array([[2.0 * crop_size, 0, crop_size / 2], [0, 2.0 * crop_size, crop_size / 2], [0, 0, 1]],
                              np.float32), [p, 1, 1]) for p in args.people}
    for people in args.people:
        fn = (lambda c=tf.constant(crops[people]), k=tf.constant(ks[people]):
              signature(images=c, intrinsics=k)['poses3d'].numpy())
        cases.append(('crop_model SavedModel float32', people, people, fn))
    for fmt in args.converted:
        t0 = time.perf_counter()
        path = convert.convert(saved['float32'], os.path.join(work_dir, f'{name}_converted'), [fmt])[fmt]
        print(f'{name}: converted {fmt} in {time.perf_counter() - t0:.0f} s', file=sys.stderr, flush=True)
        for people in args.people:
            # One runner per batch size (LiteRT's signature runner resizes its inputs on the first call).
            runner = (convert.OnnxRunner if fmt == 'onnx' else convert.TFLiteRunner)(path, num_threads=args.threads)
            fn = lambda r=runner, c=crops[people], k=ks[people]: r(c, k)
            cases.append((f'crop_model {fmt}', people, people, fn))
    return cases


def benchmark(cases, rounds, calls):
    """{index: median seconds per call} over interleaved rounds (one warm-up call per case first)."""
    for _, _, _, fn in cases:
        fn()
    times = {i: [] for i in range(len(cases))}
    for _ in range(rounds):
        for i, (_, _, _, fn) in enumerate(cases):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            times[i].append((time.perf_counter() - t0) / calls)
    return {i: statistics.median(v) for i, v in times.items()}


def format_table(rows):
    lines = ['| backbone | runtime / variant | people | crops | crops/s | ms per image |', '|---|---|---|---|---|---|']
    for backbone, label, people, n_crops, seconds in rows:
        lines.append(f'| {backbone} | {label} | {people} | {n_crops} | {n_crops / seconds:.1f} | '
                     f'{seconds * MS_PER_S:.1f} |')
    return '\n'.join(lines)


def main(argv=None):
    args, _ = _cli.parse(define_flags, argv, 'benchmark_inference')
    args.people = _ints(args.people, 'people')
    args.num_aug = _ints(args.num_aug, 'num-aug')
    args.internal_batch_size = _ints(args.internal_batch_size, 'internal-batch-size', minimum=0)
    backbones = _backbones(args.backbones)
    from posekit import convert
    unknown = [f for f in args.converted if f not in convert.FORMATS]
    if unknown:
        raise _cli.UsageError(f'--converted must be a subset of {",".join(convert.FORMATS)}, got {unknown}')
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.work_dir) as work_dir:
        for name, crop_size in backbones:
            cases = make_cases(name, crop_size, args, work_dir)
            medians = benchmark(cases, args.rounds, args.calls)
            rows += [(f'{name} {crop_size}px', label, people, n_crops, medians[i])
                     for i, (label, people, n_crops, _) in enumerate(cases)]
            print(f'{name}: timed {len(cases)} cases', file=sys.stderr, flush=True)
    print(format_table(rows))
    return 0


if __name__ == '__main__':
    _cli.run(main, 'benchmark_inference')
