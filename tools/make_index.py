"""Builds a full-image index (posekit.data.examples) of one dataset split with a dataset adapter.

Usage::

    python -m tools.make_index --adapter h36m --root /data/h36m --split train --out indices/h36m_train.h5
    python -m tools.make_index --adapter coco --root /data/coco --split val --out indices/coco_val.h5
    python -m tools.make_index --adapter manifest --root my_lab/labels.json --split train --out my_lab_train.h5
    python -m tools.make_index --adapter mpii --root /data/mpii --split valid --option annotation_file=annot/valid.json

``--option key=value`` passes adapter options (``annotations``, ``annotation_file``, ``image_dir``,
``sequences``, ``cameras``; comma-separated values become lists). The index records the dataset root, so
training reads the images from there. User errors print one line and exit with status 2.
"""
from __future__ import annotations

import sys

from absl import flags

from tools import _cli

def define_flags(fv):
    flags.DEFINE_string('adapter', None, 'Dataset adapter (posekit.data.adapters.names()).', flag_values=fv)
    flags.DEFINE_string('root', None, 'Dataset root folder (for manifest: the manifest file).', flag_values=fv)
    flags.DEFINE_string('split', 'train', 'Split of the dataset.', flag_values=fv)
    flags.DEFINE_string('out', None, 'Output index file (.h5).', flag_values=fv)
    flags.DEFINE_multi_string('option', [], 'Adapter option key=value (repeatable).', flag_values=fv)


LIST_OPTIONS = ('annotations', 'sequences', 'cameras')


def parse_options(items):
    options = {}
    for item in items:
        if '=' not in item:
            raise ValueError(f'--option expects key=value, got {item!r}')
        key, value = item.split('=', 1)
        options[key.strip()] = value.split(',') if key.strip() in LIST_OPTIONS else value
    return options


def build(adapter: str, root: str, split: str, out: str, options=None) -> str:
    """Loads the split with the adapter and writes the index; returns its path."""
    from posekit.data import adapters, examples
    items = adapters.load(adapter, root, split, **(options or {}))
    if not items:
        raise ValueError(f'adapter {adapter!r} found no examples of split {split!r} in {root!r}')
    return examples.write_index(out, items, split, root=adapters.image_root(adapter, root))


def main(argv=None) -> int:
    try:
        args, _ = _cli.parse(define_flags, argv, 'make_index', required=('adapter', 'root', 'out'))
        path = build(args.adapter, args.root, args.split, args.out, parse_options(args.option))
    except (ValueError, KeyError, OSError) as e:
        print(f'make_index: error: {e}', file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == '__main__':
    _cli.run(main, 'make_index')
