"""Shared pieces of the adapters: the SPIN/mmpose npz layout, a restricted unpickler, file checks."""
from __future__ import annotations

import glob
import io
import json
import os
import pickle
from typing import Dict, List, Sequence

import numpy as np

#: Box side = scale * this (px), the convention of the SPIN/mmpose npz and MPII's center/scale.
SCALE_TO_PX = 200.0
NPZ_FIELDS = ('imgname', 'center', 'scale', 'part', 'S')


def require_file(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{what} {path!r} does not exist')
    return path


def read_json(path: str, what: str):
    require_file(path, what)
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f'{path}: cannot read the {what} as JSON ({e})') from None


class _ArraysOnly(pickle.Unpickler):
    """Unpickles only numpy arrays, numpy scalars and Python builtins (no code from the file runs)."""

    _ALLOWED = {('numpy', 'ndarray'), ('numpy', 'dtype'), ('numpy.core.multiarray', '_reconstruct'),
                ('numpy._core.multiarray', '_reconstruct'), ('numpy.core.multiarray', 'scalar'),
                ('numpy._core.multiarray', 'scalar'), ('builtins', 'tuple'), ('builtins', 'list'),
                ('builtins', 'dict'), ('builtins', 'set'), ('builtins', 'frozenset'), ('builtins', 'bytes'),
                ('builtins', 'str'), ('builtins', 'int'), ('builtins', 'float'), ('builtins', 'complex'),
                ('_codecs', 'encode')}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f'refusing to load {module}.{name}: only numpy arrays and Python builtins '
                                     'are allowed in a camera file')


def load_arrays_pickle(path: str):
    """A pickle of numpy arrays and builtins (e.g. Human3.6M's cameras.pkl), refusing anything else."""
    require_file(path, 'camera file')
    with open(path, 'rb') as f:
        data = f.read()
    try:
        return _ArraysOnly(io.BytesIO(data), encoding='latin1').load()
    except pickle.UnpicklingError as e:
        raise ValueError(f'{path}: {e}') from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise ValueError(f'{path}: not a readable pickle of arrays ({e})') from None


def npz_files(root: str, n_joints: int, annotations=None) -> List[str]:
    """The SPIN/mmpose npz files of ``root`` with ``n_joints`` joints (or the given ``annotations`` files)."""
    if annotations:
        names = [annotations] if isinstance(annotations, str) else list(annotations)
        return [require_file(os.path.join(root, n), 'annotation file') for n in names]
    found = []
    for path in sorted(glob.glob(os.path.join(root, '*.npz'))):
        with np.load(path, allow_pickle=False) as data:
            if all(k in data.files for k in NPZ_FIELDS) and data['part'].shape[1:] == (n_joints, 3):
                found.append(path)
    if not found:
        raise FileNotFoundError(f'no annotation npz with the fields {NPZ_FIELDS} and {n_joints} joints in {root!r}')
    return found


def read_npz(path: str, n_joints: int) -> Dict[str, np.ndarray]:
    """The arrays of one SPIN/mmpose npz, checked (``imgname`` [N], ``center`` [N, 2], ``scale`` [N],
    ``part`` [N, J, 3] (u, v px, visibility), ``S`` [N, J, 4] (x, y, z m camera frame, confidence))."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in NPZ_FIELDS}
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f'{path}: not a readable annotation npz with {NPZ_FIELDS} ({e})') from None
    n = len(arrays['imgname'])
    shapes = {'center': (n, 2), 'scale': (n,), 'part': (n, n_joints, 3), 'S': (n, n_joints, 4)}
    for key, shape in shapes.items():
        if arrays[key].shape != shape:
            raise ValueError(f'{path}: {key} must have shape {shape}, got {arrays[key].shape}')
    return arrays


def square_box(center, scale) -> np.ndarray:
    """(x, y, w, h) of the square box of side ``scale * SCALE_TO_PX`` px around ``center``."""
    side = float(scale) * SCALE_TO_PX
    return np.array([center[0] - side / 2, center[1] - side / 2, side, side], np.float32)


def intrinsics(f, c) -> np.ndarray:
    f = np.asarray(f, np.float64).reshape(-1)
    c = np.asarray(c, np.float64).reshape(-1)
    return np.array([[f[0], 0.0, c[0]], [0.0, f[-1], c[1]], [0.0, 0.0, 1.0]])


def frame_number(name: str) -> int:
    digits = os.path.splitext(os.path.basename(name))[0].split('_')[-1]
    return int(digits) if digits.isdigit() else -1


def filter_split(names: Sequence[str], subjects: Sequence[str], subject_of) -> np.ndarray:
    return np.array([subject_of(n) in subjects for n in names], bool)
