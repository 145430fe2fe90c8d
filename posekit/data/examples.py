"""Full-image examples with cameras: the contract of real datasets, and their on-disk index.

One *full-image example* is one person in one image, with the image's camera. Dataset adapters
(:mod:`posekit.data.adapters`) turn a dataset root into lists of them; :func:`write_index` stores a list in one
HDF5 index file; :func:`open_index` reads it back as a source for the input pipeline, where
:mod:`posekit.data.full_image` cuts the person crops at load time.

Fields (units: mm, px; camera frame x right, y down, z forward; world frame as the dataset defines it):

==============  ==================  ====================================================================
field           dtype, shape        meaning
==============  ==================  ====================================================================
image_path      str                 encoded image (JPEG, PNG) relative to the dataset root ('' if inline)
image_bytes     bytes               the encoded image itself (optional, b'' when ``image_path`` is used)
intrinsics      float64 [3, 3]      K of the image (px)
rotation        float64 [3, 3]      R, world -> camera
translation     float64 [3]         t (mm): ``x_cam = R x_world + t``
distortion      float64 [5]         OpenCV (k1, k2, p1, p2, k3) of the image; zeros: none
world_up        float64 [3]         the world's up direction, world frame (unit)
box             float32 [4]         person box x, y, w, h (px of the image)
joints3d        float32 [J, 3]      joints in the world frame (mm); NaN where unknown (all for 2D-only)
joints2d        float32 [J, 2]      joints in the image (px, distorted image); NaN where unknown
joint_valid     bool [J]            labelled joints (3D ones when ``is_3d``, else 2D ones)
is_3d           bool                3D labels present
skeleton        str                 registered skeleton of the J joints (:func:`posekit.skeletons.get`)
mask_path       str                 foreground mask image relative to the root ('' = none)
dataset         str                 dataset (adapter) name
subject         str                 subject id (for subject-wise splits)
sequence        str                 sequence / video id
frame           int64               frame index in the sequence (-1 unknown)
==============  ==================  ====================================================================

Datasets without calibration (COCO, MPII) get ``R = I``, ``t = 0``, no distortion, ``world_up = (0, -1, 0)``
(the camera's up) and the intrinsics of :func:`default_camera` (the exported model's default: a 55 degree
field of view along the larger image side), so their 2D labels stay exact; their 3D is unknown.

Index file: HDF5 with attributes ``format_tag`` (:data:`FORMAT_TAG`), ``schema_version``
(:data:`SCHEMA_VERSION`), ``dataset``, ``skeleton``, ``split``, ``root`` (absolute dataset root when built;
:func:`open_index` can override it) and ``n_examples``; one HDF5 dataset per field (strings UTF-8, image bytes
as variable-length uint8). Written to a temporary file and renamed (never half-written).
"""
from __future__ import annotations

import os
import tempfile
import threading
from typing import Dict, List, Mapping, Optional, Sequence, Union

import h5py
import numpy as np

from posekit import geometry, skeletons

FORMAT_TAG = 'posekit-full-image-index'
SCHEMA_VERSION = 1
N_DISTORTION = 5
DEFAULT_FOV_DEGREES = 55.0
"""Field of view (degrees, larger image side) assumed for images without calibration: the export's default."""
CAMERA_UP = (0.0, -1.0, 0.0)

STRING_FIELDS = ('image_path', 'skeleton', 'mask_path', 'dataset', 'subject', 'sequence')
#: field -> (numpy dtype, shape with 'J' for the number of joints).
ARRAY_FIELDS = {
    'intrinsics': (np.float64, (3, 3)), 'rotation': (np.float64, (3, 3)), 'translation': (np.float64, (3,)),
    'distortion': (np.float64, (N_DISTORTION,)), 'world_up': (np.float64, (3,)), 'box': (np.float32, (4,)),
    'joints3d': (np.float32, ('J', 3)), 'joints2d': (np.float32, ('J', 2)), 'joint_valid': (bool, ('J',)),
    'is_3d': (bool, ()), 'frame': (np.int64, ()),
}
FIELDS = STRING_FIELDS + ('image_bytes',) + tuple(ARRAY_FIELDS)

PathLike = Union[str, os.PathLike]


class IndexFormatError(ValueError):
    """A file that is not a readable posekit full-image index (the message names the path)."""


def default_camera(image_height, image_width) -> np.ndarray:
    """[3, 3] K of an uncalibrated image: :data:`DEFAULT_FOV_DEGREES` along the larger side, centred."""
    return geometry.fov_intrinsics(DEFAULT_FOV_DEGREES, image_height, image_width)


def make_example(*, skeleton: str, dataset: str, intrinsics, box, joints3d=None, joints2d=None, joint_valid=None,
                 is_3d: Optional[bool] = None, image_path: str = '', image_bytes: bytes = b'', rotation=None,
                 translation=None, distortion=None, world_up=CAMERA_UP, mask_path: str = '', subject: str = '',
                 sequence: str = '', frame: int = -1) -> Dict:
    """A validated full-image example (module docstring) with defaults for the optional fields.

    ``joints3d`` / ``joints2d`` may be omitted (all NaN); ``joint_valid`` defaults to the finite labels of the
    kind given by ``is_3d`` (default: 3D when any 3D label is finite). Raises ``ValueError`` naming the field.
    """
    try:
        n = skeletons.get(skeleton).n_joints
    except KeyError as e:
        raise ValueError(f'skeleton: {e.args[0]}') from None
    j3 = np.full((n, 3), np.nan, np.float32) if joints3d is None else np.asarray(joints3d, np.float32)
    j2 = np.full((n, 2), np.nan, np.float32) if joints2d is None else np.asarray(joints2d, np.float32)
    if is_3d is None:
        is_3d = bool(np.isfinite(j3).all(axis=-1).any())
    if joint_valid is None:
        joint_valid = np.isfinite(j3 if is_3d else j2).all(axis=-1)
    example = dict(
        image_path=str(image_path), image_bytes=bytes(image_bytes), skeleton=skeleton, mask_path=str(mask_path),
        dataset=str(dataset), subject=str(subject), sequence=str(sequence), frame=np.int64(frame),
        intrinsics=np.asarray(intrinsics, np.float64),
        rotation=np.eye(3) if rotation is None else np.asarray(rotation, np.float64),
        translation=np.zeros(3) if translation is None else np.asarray(translation, np.float64),
        distortion=_distortion(distortion), world_up=np.asarray(world_up, np.float64),
        box=np.asarray(box, np.float32), joints3d=j3, joints2d=j2, joint_valid=np.asarray(joint_valid, bool),
        is_3d=np.bool_(is_3d))
    validate_example(example)
    return example


def _distortion(value) -> np.ndarray:
    out = np.zeros(N_DISTORTION)
    if value is not None:
        coeffs = np.asarray(value, np.float64).reshape(-1)
        if coeffs.size > N_DISTORTION and np.any(coeffs[N_DISTORTION:] != 0):
            raise ValueError(f'distortion must be the 5 OpenCV coefficients (k1, k2, p1, p2, k3); higher-order '
                             f'terms are not supported, got {coeffs.tolist()}')
        out[:min(coeffs.size, N_DISTORTION)] = coeffs[:N_DISTORTION]
    return out


def validate_example(example: Mapping) -> None:
    """Raises ``ValueError`` naming the field and value when ``example`` breaks the contract."""
    missing = [f for f in FIELDS if f not in example]
    if missing:
        raise ValueError(f'a full-image example needs the fields {missing}')
    skeleton = example['skeleton']
    try:
        n = skeletons.get(skeleton).n_joints
    except KeyError as e:
        raise ValueError(f'skeleton: {e.args[0]}') from None
    for field, (dtype, shape) in ARRAY_FIELDS.items():
        value = np.asarray(example[field])
        want = tuple(n if s == 'J' else s for s in shape)
        if value.shape != want:
            raise ValueError(f'{field} must have shape {want} for skeleton {skeleton!r}, got {value.shape}')
    for field in ('intrinsics', 'rotation', 'translation', 'distortion', 'world_up', 'box'):
        if not np.all(np.isfinite(example[field])):
            raise ValueError(f'{field} must be finite, got {np.asarray(example[field]).tolist()}')
    k = np.asarray(example['intrinsics'])
    if not (k[0, 0] > 0 and k[1, 1] > 0 and np.allclose(k[2], [0, 0, 1]) and k[1, 0] == 0):
        raise ValueError(f'intrinsics must be [[fx, s, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0, got {k.tolist()}')
    r = np.asarray(example['rotation'])
    if not np.allclose(r @ r.T, np.eye(3), atol=1e-5) or np.linalg.det(r) <= 0:
        raise ValueError(f'rotation must be a proper rotation matrix, got {r.tolist()}')
    if not np.isclose(np.linalg.norm(example['world_up']), 1.0, atol=1e-6):
        raise ValueError(f'world_up must be a unit vector, got {np.asarray(example["world_up"]).tolist()}')
    box = np.asarray(example['box'])
    if not (box[2] > 0 and box[3] > 0):
        raise ValueError(f'box must be (x, y, w, h) with w, h > 0 px, got {box.tolist()}')
    if not example['image_path'] and not example['image_bytes']:
        raise ValueError('an example needs image_path or image_bytes, got neither')
    labels = example['joints3d'] if example['is_3d'] else example['joints2d']
    valid = np.asarray(example['joint_valid'])
    if not np.all(np.isfinite(np.asarray(labels)[valid])):
        raise ValueError(f'joint_valid marks joints whose {"joints3d" if example["is_3d"] else "joints2d"} '
                         'are not finite')


# ----------------------------------------------------------------------------------------------
# Index files
# ----------------------------------------------------------------------------------------------

def write_index(path: PathLike, examples: Sequence[Mapping], split: str, root: PathLike = '') -> str:
    """Writes ``examples`` (one dataset, one skeleton) to the HDF5 index ``path`` atomically; returns the path.

    Args:
      path: output file (.h5); its folder is created.
      examples: validated examples (:func:`make_example`), all of one dataset and skeleton.
      split: the split name stored in the file ('train', 'test', ...).
      root: the dataset root the image paths are relative to (stored absolute).
    """
    path = os.fspath(path)
    if not examples:
        raise ValueError(f'examples must not be empty (index {path!r})')
    for example in examples:
        validate_example(example)
    for field in ('dataset', 'skeleton'):
        values = sorted({e[field] for e in examples})
        if len(values) != 1:
            raise ValueError(f'an index holds one {field}; the examples have {values}')
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f'.{os.path.basename(path)}.', suffix='.tmp')
    os.close(fd)
    try:
        with h5py.File(tmp, 'w') as f:
            f.attrs.update(format_tag=FORMAT_TAG, schema_version=SCHEMA_VERSION, dataset=examples[0]['dataset'],
                           skeleton=examples[0]['skeleton'], split=str(split),
                           root=os.path.abspath(os.fspath(root)) if root else '', n_examples=len(examples))
            text = h5py.string_dtype('utf-8')
            for field in STRING_FIELDS:
                f.create_dataset(field, data=np.array([e[field] for e in examples], dtype=object), dtype=text)
            blob = f.create_dataset('image_bytes', (len(examples),), dtype=h5py.vlen_dtype(np.uint8))
            for i, e in enumerate(examples):
                blob[i] = np.frombuffer(e['image_bytes'], np.uint8)
            for field, (dtype, _) in ARRAY_FIELDS.items():
                f.create_dataset(field, data=np.stack([np.asarray(e[field], dtype) for e in examples]))
        os.replace(tmp, path)
    except OSError as e:
        raise OSError(e.errno, f'cannot write the index {path!r}: {e.strerror or e}') from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


class IndexSource:
    """An index file as an indexable source (``len()``, ``get(indices)``; thread-safe).

    Attributes: ``path``, ``root`` (the folder image paths are relative to), ``metadata`` (dict of the file's
    attributes), ``skeleton``, ``dataset``.
    """

    def __init__(self, path: PathLike, root: Optional[PathLike] = None):
        self.path = os.fspath(path)
        self.metadata = _read_metadata(self.path)
        self.root = os.fspath(root) if root is not None else self.metadata['root']
        self.skeleton = self.metadata['skeleton']
        self.dataset = self.metadata['dataset']
        self._lock = threading.Lock()
        self._file = None

    def __len__(self) -> int:
        return int(self.metadata['n_examples'])

    def __repr__(self) -> str:
        return f'IndexSource({self.path!r}, {len(self)} examples of {self.dataset} ({self.skeleton}))'

    def get(self, indices) -> Dict[str, np.ndarray]:
        """Stacked fields of ``indices`` (any order, repeats allowed); strings as str arrays, bytes as objects."""
        indices = np.asarray(indices, np.int64).reshape(-1)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f'indices must be in [0, {len(self)}) for {self.path}, got {indices.tolist()}')
        order = np.unique(indices)
        where = np.searchsorted(order, indices)
        with self._lock:
            if self._file is None:
                self._file = h5py.File(self.path, 'r')
            f = self._file
            try:
                out = {}
                for field in STRING_FIELDS:
                    out[field] = np.array([v.decode('utf-8') for v in f[field][order]])[where]
                blobs = f['image_bytes'][order]
                out['image_bytes'] = np.array([bytes(b) for b in blobs] + [None], dtype=object)[:-1][where]
                for field in ARRAY_FIELDS:
                    out[field] = f[field][order][where]
            except (OSError, KeyError, ValueError) as e:
                raise IndexFormatError(f'{self.path}: cannot read examples {indices.tolist()[:8]} ({e})') from None
        out['example_id'] = indices
        return out

    def field(self, name: str) -> np.ndarray:
        """One array field of every example (e.g. ``is_3d``), without reading images."""
        if name not in ARRAY_FIELDS:
            raise ValueError(f'name must be one of {sorted(ARRAY_FIELDS)}, got {name!r}')
        with self._lock:
            if self._file is None:
                self._file = h5py.File(self.path, 'r')
            return self._file[name][()]

    def examples(self) -> List[Dict]:
        """All examples as a list of dicts."""
        data = self.get(np.arange(len(self)))
        return [{k: v[i] for k, v in data.items() if k != 'example_id'} for i in range(len(self))]

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __getstate__(self):
        return dict(path=self.path, root=self.root)

    def __setstate__(self, state):
        self.__init__(state['path'], state['root'])


def open_index(path: PathLike, root: Optional[PathLike] = None) -> IndexSource:
    """Opens an index written by :func:`write_index` (``root`` overrides the recorded dataset root)."""
    return IndexSource(path, root)


def _read_metadata(path: str) -> Dict:
    if not os.path.exists(path):
        raise FileNotFoundError(f'full-image index {path!r} does not exist')
    try:
        if not h5py.is_hdf5(path):
            raise IndexFormatError(f'{path}: not an HDF5 file; not a posekit full-image index')
        with h5py.File(path, 'r') as f:
            attrs = {k: (v.decode('utf-8') if isinstance(v, bytes) else v.item() if isinstance(v, np.generic) else v)
                     for k, v in f.attrs.items()}
            if attrs.get('format_tag') != FORMAT_TAG:
                raise IndexFormatError(f'{path}: not a posekit full-image index (format_tag '
                                       f'{attrs.get("format_tag")!r}, expected {FORMAT_TAG!r})')
            version = attrs.get('schema_version')
            if not isinstance(version, int) or version != SCHEMA_VERSION:
                raise IndexFormatError(f'{path}: index schema_version {version!r} ({type(version).__name__}); this '
                                       f'posekit reads schema_version {SCHEMA_VERSION} (int): rebuild the index '
                                       '(python -m tools.make_index)')
            missing = [k for k in FIELDS if k not in f]
            if missing:
                raise IndexFormatError(f'{path}: missing fields {missing}')
            n = attrs.get('n_examples')
            short = [k for k in FIELDS if f[k].shape[:1] != (n,)]
            if not isinstance(n, int) or n < 1 or short:
                raise IndexFormatError(f'{path}: n_examples={n!r} but fields {short} have other lengths (truncated?)')
            try:
                skeletons.get(attrs.get('skeleton'))
            except KeyError as e:
                raise IndexFormatError(f'{path}: {e.args[0]}') from None
            return attrs
    except IndexFormatError:
        raise
    except (OSError, KeyError, RuntimeError) as e:
        raise IndexFormatError(f'{path}: corrupt or truncated index file ({e})') from None
