"""Writes the synthetic multi-format datasets as HDF5 shards (train/val/test per dataset).

Usage::

    python -m tools.make_datasets --out data/synth --preset smoke
    python -m tools.make_datasets --out data/synth --preset default \\
        --mocap-dir ../shared/data/cmu_mocap --test-mocap-dir ../shared/data/cmu_mocap_test --workers 2

Generation is deterministic in ``--seed`` (same seed -> identical arrays); shards that exist with
the same generation parameters are reused, so re-running is cheap. Progress goes to stderr; the
last line on stdout is a JSON summary {dataset: {split: [paths]}}.
"""

from __future__ import annotations

import json
import sys
from typing import List, Optional

from absl import flags

from posekit.data import mocap, storage, synth
from tools import _cli


def define_flags(fv):
    flags.DEFINE_string('out', None, 'output folder', flag_values=fv)
    flags.DEFINE_enum('preset', 'default', sorted(synth.SIZE_PRESETS), 'split sizes', flag_values=fv)
    flags.DEFINE_string('datasets', ','.join(synth.PRESETS), 'comma-separated dataset names (default: all presets)',
                        flag_values=fv)
    flags.DEFINE_string('mocap-dir', None, "BVH folder for train/val motion; 'auto' = ../shared/data/cmu_mocap if "
                        'present; default: procedural motion', flag_values=fv)
    flags.DEFINE_string('test-mocap-dir', None, 'BVH folder used whole for the test split', flag_values=fv)
    flags.DEFINE_integer('seed', 0, 'generation seed', lower_bound=0, flag_values=fv)
    flags.DEFINE_integer('crop-size', 128, 'crop side (px)', flag_values=fv)
    flags.DEFINE_string('splits', ','.join(synth.SPLITS), 'comma-separated splits', flag_values=fv)
    flags.DEFINE_integer('shard-size', storage.DEFAULT_SHARD_SIZE, 'examples per shard', lower_bound=1, flag_values=fv)
    flags.DEFINE_integer('workers', 1, 'parallel generator processes', lower_bound=1, flag_values=fv)
    flags.DEFINE_integer('max-frames-per-clip', None, 'subsample long clips (default: all frames)', lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_bool('overwrite', False, 'regenerate every shard, replacing any file in the way', flag_values=fv)
    flags.DEFINE_bool('quiet', False, 'no progress output', flag_values=fv)


def parse_args(argv: Optional[List[str]] = None):
    return _cli.parse(define_flags, argv, 'make_datasets', required=('out',))[0]


def main(argv: Optional[List[str]] = None) -> int:
    try:
        args = parse_args(argv)
    except _cli.UsageError as e:
        print(f'make_datasets: error: {e}', file=sys.stderr)
        return 2
    mocap_dir = args.mocap_dir
    if mocap_dir == 'auto':
        mocap_dir = mocap.default_mocap_dir()
    names = [n for n in args.datasets.split(',') if n]
    try:
        specs = synth.preset_specs(args.preset, names, crop_size=args.crop_size)
        paths = storage.ensure_datasets(
            args.out, specs, seed=args.seed, mocap_dir=mocap_dir, test_mocap_dir=args.test_mocap_dir,
            splits=[s for s in args.splits.split(',') if s], shard_size=args.shard_size,
            workers=args.workers, progress=not args.quiet, overwrite=args.overwrite,
            max_frames_per_clip=args.max_frames_per_clip)
    except (ValueError, FileNotFoundError) as e:
        print(f'make_datasets: error: {e}', file=sys.stderr)
        return 2
    print(json.dumps(paths))
    return 0


if __name__ == '__main__':
    _cli.run(main, 'make_datasets')
