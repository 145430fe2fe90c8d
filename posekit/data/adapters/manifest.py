"""Your own data: a folder of images plus one manifest file (JSON or CSV) with 3D and/or 2D labels.

``root`` is the manifest file; image paths in it are relative to the manifest's folder.

JSON::

    {"dataset": "my_lab", "skeleton": "h36m_17",          # any registered skeleton (posekit.skeletons.names())
     "examples": [
       {"image": "frames/cam1/000123.jpg",                 # relative to the manifest's folder
        "split": "train",                                  # train | val | test
        "box": [x, y, w, h],                               # px
        "joints3d": [[x, y, z], ...],                      # world frame, mm (optional; null entries = unknown)
        "joints2d": [[u, v], ...],                         # px of the image as stored (optional)
        "joint_valid": [1, 0, ...],                        # optional: default = the finite labels
        "camera": {"intrinsic_matrix": [[fx, s, cx], [0, fy, cy], [0, 0, 1]],
                   "rotation": [[...]], "translation": [tx, ty, tz],     # world -> camera, mm (default I, 0)
                   "distortion": [k1, k2, p1, p2, k3],                   # OpenCV (default none)
                   "world_up": [0, -1, 0]},                              # default: the camera's up (0, -1, 0)
        "image_size": [height, width],                     # needed when "camera" has no intrinsic_matrix:
                                                           # the default 55 degree camera is used then
        "subject": "p01", "sequence": "take3", "frame": 123, "mask": "masks/000123.png"}]}

CSV: one row per example with the columns ``dataset``, ``skeleton``, ``image``, ``split``, ``box`` and optionally
``joints3d``, ``joints2d``, ``joint_valid``, ``intrinsic_matrix`` (9 numbers, row-major), ``rotation`` (9),
``translation`` (3), ``distortion`` (5), ``world_up`` (3), ``image_size`` (2), ``subject``, ``sequence``,
``frame``, ``mask``; numbers inside a cell are separated by spaces (``nan`` = unknown); joint arrays are flattened
joint by joint (x y z x y z ...).

An example is 3D-labelled when it has finite ``joints3d`` (``is_3d``), else 2D-labelled.
"""
from __future__ import annotations

import csv
import os
from typing import Dict, List

import numpy as np

from posekit import skeletons
from posekit.data import examples as examples_lib
from posekit.data.adapters import _common

NAME = 'manifest'
SKELETON = None
SPLITS = ('train', 'val', 'test', 'all')
CSV_NUMBER_FIELDS = {'box': (4,), 'joints3d': (-1, 3), 'joints2d': (-1, 2), 'joint_valid': (-1,),
                     'intrinsic_matrix': (3, 3), 'rotation': (3, 3), 'translation': (3,), 'distortion': (-1,),
                     'world_up': (3,), 'image_size': (2,)}


def _read_csv(path: str) -> Dict:
    try:
        with open(path, newline='', encoding='utf-8') as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f'{path}: cannot read the manifest as CSV ({e})') from None
    if not rows:
        raise ValueError(f'{path}: the manifest has no rows')
    for column in ('dataset', 'skeleton', 'image', 'split', 'box'):
        if column not in rows[0]:
            raise ValueError(f'{path}: the manifest needs a column {column!r}; it has {list(rows[0])}')
    examples = []
    for line, row in enumerate(rows, start=2):
        example = {k: v for k, v in row.items() if v not in (None, '')}
        camera = {}
        for field, shape in CSV_NUMBER_FIELDS.items():
            if field in example:
                try:
                    value = np.array([float(x) for x in example[field].split()]).reshape(shape)
                except ValueError as e:
                    raise ValueError(f'{path}, line {line}: column {field!r}: {e}') from None
                target = camera if field in ('intrinsic_matrix', 'rotation', 'translation', 'distortion',
                                             'world_up') else example
                target[field] = value
        for field in camera:
            example.pop(field, None)
        if camera:
            example['camera'] = camera
        if 'frame' in example:
            example['frame'] = int(example['frame'])
        examples.append(example)
    datasets = {e['dataset'] for e in examples}
    skeleton_names = {e['skeleton'] for e in examples}
    if len(datasets) != 1 or len(skeleton_names) != 1:
        raise ValueError(f'{path}: a manifest holds one dataset and one skeleton, got {sorted(datasets)} and '
                         f'{sorted(skeleton_names)}')
    return dict(dataset=datasets.pop(), skeleton=skeleton_names.pop(), examples=examples)


def read_manifest(path: str) -> Dict:
    """The manifest as a dict {dataset, skeleton, examples: [...]} (JSON, or CSV by the file extension)."""
    _common.require_file(path, 'manifest')
    if path.lower().endswith('.csv'):
        return _read_csv(path)
    manifest = _common.read_json(path, 'manifest')
    for key in ('dataset', 'skeleton', 'examples'):
        if not isinstance(manifest, dict) or key not in manifest:
            raise ValueError(f'{path}: the manifest needs the keys dataset, skeleton and examples; missing {key!r}')
    return manifest


def _array(value, shape, name, where):
    if value is None:
        return None
    try:
        array = np.array([[np.nan if v is None else v for v in row] if isinstance(row, (list, tuple)) else
                          (np.nan if row is None else row) for row in value], np.float64)
        return array.reshape(shape)
    except (TypeError, ValueError) as e:
        raise ValueError(f'{where}: {name} must have shape {shape}: {e}') from None


def load(root: str, split: str = 'train') -> List[dict]:
    """The examples of ``split`` of the manifest file ``root`` (module docstring)."""
    manifest = read_manifest(root)
    folder = os.path.dirname(os.path.abspath(root))
    skeleton = manifest['skeleton']
    try:
        n = skeletons.get(skeleton).n_joints
    except KeyError as e:
        raise ValueError(f'{root}: {e.args[0]}') from None
    out = []
    for k, item in enumerate(manifest['examples']):
        where = f'{root}, example {k}'
        if split != 'all' and item.get('split', 'train') != split:
            continue
        if 'image' not in item or 'box' not in item:
            raise ValueError(f'{where}: needs "image" and "box"')
        camera = dict(item.get('camera') or {})
        k_matrix = camera.get('intrinsic_matrix')
        if k_matrix is None:
            size = item.get('image_size')
            if size is None:
                raise ValueError(f'{where}: needs camera.intrinsic_matrix or image_size (for the default camera)')
            k_matrix = examples_lib.default_camera(*np.asarray(size, np.float64).reshape(2))
        joints3d = _array(item.get('joints3d'), (n, 3), 'joints3d', where)
        joints2d = _array(item.get('joints2d'), (n, 2), 'joints2d', where)
        valid = item.get('joint_valid')
        is_3d = joints3d is not None and bool(np.isfinite(joints3d).all(axis=-1).any())
        try:
            out.append(examples_lib.make_example(
                skeleton=skeleton, dataset=str(manifest['dataset']), image_path=str(item['image']),
                intrinsics=k_matrix, rotation=camera.get('rotation'), translation=camera.get('translation'),
                distortion=camera.get('distortion'), world_up=camera.get('world_up', examples_lib.CAMERA_UP),
                box=item['box'], joints3d=joints3d, joints2d=joints2d,
                joint_valid=None if valid is None else np.asarray(valid).reshape(n) > 0, is_3d=is_3d,
                mask_path=str(item.get('mask', '')), subject=str(item.get('subject', '')),
                sequence=str(item.get('sequence', '')), frame=int(item.get('frame', -1))))
        except ValueError as e:
            raise ValueError(f'{where}: {e}') from None
    return out


def root_of(path: str) -> str:
    """The folder image paths of the manifest ``path`` are relative to."""
    return os.path.dirname(os.path.abspath(path))
