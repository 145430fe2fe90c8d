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

import argparse
import json
import sys
from typing import List, Optional

from posekit.data import mocap, storage, synth


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument('--preset', default='default', choices=sorted(synth.SIZE_PRESETS),
                        help='split sizes (default: %(default)s)')
    parser.add_argument('--datasets', default=','.join(synth.PRESETS),
                        help='comma-separated dataset names (default: all presets)')
    parser.add_argument('--mocap-dir', default=None,
                        help="BVH folder for train/val motion; 'auto' = ../shared/data/cmu_mocap if present; "
                             'default: procedural motion')
    parser.add_argument('--test-mocap-dir', default=None, help='BVH folder used whole for the test split')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--crop-size', type=int, default=128)
    parser.add_argument('--splits', default=','.join(synth.SPLITS))
    parser.add_argument('--shard-size', type=int, default=storage.DEFAULT_SHARD_SIZE)
    parser.add_argument('--workers', type=int, default=1, help='parallel generator processes')
    parser.add_argument('--max-frames-per-clip', type=int, default=None)
    parser.add_argument('--overwrite', action='store_true',
                        help='regenerate every shard, replacing any file in the way')
    parser.add_argument('--quiet', action='store_true', help='no progress output')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
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
    sys.exit(main())
