"""HDF5 storage of synthetic datasets: shards, metadata, reuse, validation and random access.

Layout: ``<out_dir>/<dataset name>/<split>-<k>-of-<n>.h5``, each shard holding a contiguous
range of a split's examples (``first_index`` .. ``first_index + n_examples - 1``), written
atomically (a temporary file in the same folder, then ``os.replace``).

Each shard stores one HDF5 dataset per example field of the data contract (``image`` uint8
[N, S, S, 3], contiguous and uncompressed so that readers memory-map it, ``intrinsics``,
``coords3d``, ``coords2d``, ``joint_valid``, ``is_3d``, ``dataset``, ``example_id``,
``clip_index``, ``frame_index``) and file attributes:

=====================  ======================================================================
attribute              meaning
=====================  ======================================================================
format_tag             ``FORMAT_TAG`` (what makes a file a posekit shard)
schema_version         ``SCHEMA_VERSION`` (layout of this module; readers refuse others)
generator_version      :data:`posekit.data.synth.GENERATOR_VERSION` (rendering code version)
name, split            dataset name and split ('train', 'val', 'test')
skeleton_format        the format the dataset labels (``joint_valid``)
joint_space            JSON list of the formats of ``coords3d``/``coords2d`` (J_all joints)
joint_names            JSON list of the J_all joint-space names
label_kind             '3d' or '2d'
crop_size              S (px)
seed                   generation seed
motion_source          where the motion came from (folder or procedural parameters, subjects)
n_examples             examples in this shard; ``split_examples`` in the whole split
first_index            split index of the shard's first example
shard_index, n_shards  position of the shard in its split
dataset_index          the value of the ``dataset`` field
spec_json              the full :class:`~posekit.data.synth.DatasetSpec` as JSON
params_hash            SHA-256 of every generation parameter (reuse key)
=====================  ======================================================================

:func:`ensure_datasets` generates missing shards and reuses existing ones whose
``params_hash`` matches (a valid shard with other parameters is regenerated; a corrupt or
foreign file raises ``ValueError`` naming the file). :func:`open_shard` /
:func:`open_dataset` give random access (``len()``, ``metadata``, ``[i]`` -> example dict,
``get(indices)`` -> dict of stacked arrays, thread-safe; the pipeline's ``ExampleSource``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import sys
import threading
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import h5py
import numpy as np

from posekit.data import synth

SCHEMA_VERSION = 1
FORMAT_TAG = 'posekit-synth-shard'
DEFAULT_SHARD_SIZE = 1000
"""Examples per shard (the unit of reuse and of parallel generation)."""
PROGRESS_INTERVAL_S = 2.0
"""Seconds between progress lines on a non-terminal stderr."""

FIELDS = ('image', 'intrinsics', 'coords3d', 'coords2d', 'joint_valid', 'is_3d', 'dataset',
          'example_id', 'clip_index', 'frame_index')
REQUIRED_ATTRS = ('format_tag', 'schema_version', 'generator_version', 'name', 'split',
                  'skeleton_format', 'joint_space', 'joint_names', 'label_kind', 'crop_size', 'seed',
                  'motion_source', 'n_examples', 'split_examples', 'first_index', 'shard_index',
                  'n_shards', 'dataset_index', 'spec_json', 'params_hash')

PathLike = Union[str, os.PathLike]


# ----------------------------------------------------------------------------------------------
# Validation and reading
# ----------------------------------------------------------------------------------------------

def _attr(value):
    if isinstance(value, bytes):
        return value.decode('utf-8')
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_metadata(path: PathLike) -> Dict:
    """The validated metadata of a shard (file attributes, JSON fields decoded).

    Raises:
      FileNotFoundError: no such file.
      ValueError: naming the file and the problem: not HDF5, unreadable/corrupt, not a posekit
        shard, missing or wrong schema version, missing attributes or arrays, truncated arrays.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f'dataset shard {path!r} does not exist')
    try:
        is_hdf5 = h5py.is_hdf5(path)
    except OSError as e:
        raise ValueError(f'{path}: cannot read the file as HDF5 ({e})') from None
    if not is_hdf5:
        raise ValueError(f'{path}: not an HDF5 file (no HDF5 signature); not a posekit dataset shard')
    try:
        with h5py.File(path, 'r') as f:
            return _validate(path, f)
    except ValueError:
        raise
    except (OSError, KeyError, RuntimeError) as e:
        raise ValueError(f'{path}: corrupt or truncated HDF5 file ({e})') from None


def _validate(path: str, f: h5py.File) -> Dict:
    attrs = {k: _attr(v) for k, v in f.attrs.items()}
    if attrs.get('format_tag') != FORMAT_TAG:
        raise ValueError(f'{path}: not a posekit dataset shard (attribute format_tag is '
                         f'{attrs.get("format_tag")!r}, expected {FORMAT_TAG!r}); a foreign HDF5 file?')
    if 'schema_version' not in attrs:
        raise ValueError(f'{path}: missing schema_version attribute')
    if attrs['schema_version'] != SCHEMA_VERSION:
        raise ValueError(f'{path}: schema version {attrs["schema_version"]}, this posekit reads version '
                         f'{SCHEMA_VERSION}; regenerate it (tools/make_datasets.py)')
    missing = [a for a in REQUIRED_ATTRS if a not in attrs]
    if missing:
        raise ValueError(f'{path}: missing metadata attributes {missing}')
    for key in ('joint_space', 'joint_names'):
        attrs[key] = json.loads(attrs[key])
    absent = [k for k in FIELDS if k not in f]
    if absent:
        raise ValueError(f'{path}: missing arrays {absent}')
    n = int(attrs['n_examples'])
    s = int(attrs['crop_size'])
    j = len(attrs['joint_names'])
    expected = {'image': (s, s, 3), 'intrinsics': (3, 3), 'coords3d': (j, 3), 'coords2d': (j, 2),
                'joint_valid': (j,), 'is_3d': (), 'dataset': (), 'example_id': (), 'clip_index': (),
                'frame_index': ()}
    for key, shape in expected.items():
        ds = f[key]
        if ds.shape[1:] != shape:
            raise ValueError(f'{path}: array {key} has per-example shape {ds.shape[1:]}, expected {shape}')
        if ds.shape[0] != n:
            raise ValueError(f'{path}: truncated arrays: {key} has {ds.shape[0]} rows, expected '
                             f'n_examples = {n}')
    return attrs


class Shard:
    """Random access to one shard (``open_shard``); thread-safe and fork-safe.

    Label fields are read into memory when opened; images are memory-mapped (the file's
    contiguous image array; pages are read on demand and cached by the OS), or loaded with
    ``in_memory=True``.

    Attributes:
      path: the file; metadata: dict of its attributes (see the module docstring).
    """

    def __init__(self, path: PathLike, in_memory: bool = False):
        self.path = os.fspath(path)
        self.metadata = read_metadata(self.path)
        self._lock = threading.Lock()
        self._file = None
        self._pid = None
        try:
            with h5py.File(self.path, 'r') as f:
                self._labels = {k: f[k][...] for k in FIELDS if k != 'image'}
                image = f['image']
                self._image_shape = image.shape
                offset = image.id.get_offset()
                contiguous = image.chunks is None and image.compression is None and offset is not None
                if in_memory or not contiguous:
                    self._images = image[...] if (in_memory or image.shape[0] == 0) else None
                else:
                    self._images = None
                self._image_offset = offset if contiguous else None
        except (OSError, RuntimeError) as e:
            raise ValueError(f'{self.path}: corrupt or truncated HDF5 file ({e})') from None
        if self._images is None and self._image_offset is not None:
            needed = self._image_offset + int(np.prod(self._image_shape))
            if os.path.getsize(self.path) < needed:
                raise ValueError(f'{self.path}: truncated file: the image array needs {needed} bytes, '
                                 f'the file has {os.path.getsize(self.path)}')
            self._images = np.memmap(self.path, np.uint8, 'r', self._image_offset, self._image_shape)

    def __len__(self) -> int:
        return int(self.metadata['n_examples'])

    def __repr__(self) -> str:
        m = self.metadata
        return f'Shard({self.path!r}, {m["name"]}/{m["split"]}, {len(self)} examples)'

    def _h5(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, 'r')
            self._pid = os.getpid()
        return self._file

    def _check_indices(self, indices) -> np.ndarray:
        indices = np.asarray(indices)
        if indices.ndim != 1 or (indices.size and indices.dtype.kind not in 'iu'):
            raise ValueError(f'indices must be a 1-D integer array, got shape {indices.shape} '
                             f'dtype {indices.dtype}')
        indices = indices.astype(np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise ValueError(f'indices must be in [0, {len(self)}), got min {indices.min()}, '
                             f'max {indices.max()} for {self.path}')
        return indices

    def images(self, indices) -> np.ndarray:
        """uint8 [n, S, S, 3] images of ``indices`` (any order, repeats allowed)."""
        indices = self._check_indices(indices)
        if self._images is not None:
            return np.asarray(self._images[indices])
        unique, inverse = np.unique(indices, return_inverse=True)
        with self._lock:
            try:
                data = self._h5()['image'][unique] if unique.size else np.zeros(
                    (0,) + self._h5()['image'].shape[1:], np.uint8)
            except (OSError, RuntimeError) as e:
                raise ValueError(f'{self.path}: corrupt or truncated HDF5 file ({e})') from None
        return data[inverse.reshape(-1)]

    def get(self, indices) -> Dict[str, np.ndarray]:
        """Examples ``indices`` as a dict of stacked arrays (leading dimension ``len(indices)``)."""
        indices = self._check_indices(indices)
        out = {k: v[indices] for k, v in self._labels.items()}
        out['image'] = self.images(indices)
        return out

    def __getitem__(self, i: int) -> Dict[str, np.ndarray]:
        """One example dict (data contract) plus ``dataset_name``."""
        if not isinstance(i, (int, np.integer)):
            raise ValueError(f'index must be an int, got {type(i).__name__}')
        if not -len(self) <= i < len(self):
            raise IndexError(f'index {i} out of range for {len(self)} examples in {self.path}')
        batch = self.get(np.array([int(i) % len(self)]))
        example = {k: v[0] for k, v in batch.items()}
        example['dataset_name'] = self.metadata['name']
        return example

    def arrays(self, fields: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
        """Bulk access: every example's ``fields`` (default all) as arrays with leading N."""
        fields = FIELDS if fields is None else tuple(fields)
        unknown = [k for k in fields if k not in FIELDS]
        if unknown:
            raise ValueError(f'fields must be among {FIELDS}, got {unknown}')
        out = {}
        for k in fields:
            if k == 'image':
                out[k] = self.images(np.arange(len(self)))
            else:
                out[k] = self._labels[k]
        return out

    def close(self) -> None:
        with self._lock:
            if self._file is not None and self._pid == os.getpid():
                self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getstate__(self):  # picklable (e.g. for worker processes): reopen lazily
        state = dict(self.__dict__)
        state['_file'] = None
        state['_lock'] = None
        if isinstance(self._images, np.memmap):
            state['_images'] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()
        if self._images is None and self._image_offset is not None:
            self._images = np.memmap(self.path, np.uint8, 'r', self._image_offset, self._image_shape)


def open_shard(path: PathLike, in_memory: bool = False) -> Shard:
    """Opens and validates one shard (see :class:`Shard`); ``ValueError`` if corrupt or foreign."""
    return Shard(path, in_memory)


def read_shard(path: PathLike) -> Tuple[Dict[str, np.ndarray], Dict]:
    """(all arrays of a shard, its metadata)."""
    with open_shard(path) as shard:
        return shard.arrays(), shard.metadata


class Dataset:
    """Several shards of one dataset split as one indexable source (``open_dataset``).

    Same interface as :class:`Shard`: ``len()``, ``metadata`` (the first shard's, with
    ``n_examples`` summed), ``[i]``, ``get(indices)``, ``arrays()``; thread-safe.
    """

    def __init__(self, shards: Sequence[Shard]):
        if not shards:
            raise ValueError('a dataset needs at least one shard, got none')
        self.shards = list(shards)
        names = {(s.metadata['name'], s.metadata['split']) for s in self.shards}
        if len(names) != 1:
            raise ValueError(f'shards must belong to one dataset split, got {sorted(names)}')
        self.offsets = np.concatenate([[0], np.cumsum([len(s) for s in self.shards])]).astype(np.int64)
        self.metadata = dict(self.shards[0].metadata)
        self.metadata['n_examples'] = int(self.offsets[-1])
        self.metadata['paths'] = [s.path for s in self.shards]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __repr__(self) -> str:
        m = self.metadata
        return f'Dataset({m["name"]}/{m["split"]}, {len(self)} examples, {len(self.shards)} shards)'

    def get(self, indices) -> Dict[str, np.ndarray]:
        indices = np.asarray(indices)
        if indices.ndim != 1 or (indices.size and indices.dtype.kind not in 'iu'):
            raise ValueError(f'indices must be a 1-D integer array, got shape {indices.shape}')
        indices = indices.astype(np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise ValueError(f'indices must be in [0, {len(self)}), got min {indices.min()}, max {indices.max()}')
        shard_of = np.searchsorted(self.offsets, indices, side='right') - 1
        out = None
        for s in np.unique(shard_of):
            sel = np.nonzero(shard_of == s)[0]
            part = self.shards[s].get(indices[sel] - self.offsets[s])
            if out is None:
                out = {k: np.empty((len(indices),) + v.shape[1:], v.dtype) for k, v in part.items()}
            for k, v in part.items():
                out[k][sel] = v
        if out is None:
            return self.shards[0].get(np.zeros(0, np.int64))
        return out

    def __getitem__(self, i: int) -> Dict[str, np.ndarray]:
        if not isinstance(i, (int, np.integer)):
            raise ValueError(f'index must be an int, got {type(i).__name__}')
        if not -len(self) <= i < len(self):
            raise IndexError(f'index {i} out of range for {len(self)} examples')
        batch = self.get(np.array([int(i) % len(self)]))
        example = {k: v[0] for k, v in batch.items()}
        example['dataset_name'] = self.metadata['name']
        return example

    def arrays(self, fields: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
        parts = [s.arrays(fields) for s in self.shards]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def close(self) -> None:
        for s in self.shards:
            s.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_dataset(paths: Union[PathLike, Sequence[PathLike]], name: Optional[str] = None,
                 split: Optional[str] = None, in_memory: bool = False) -> Dataset:
    """A dataset split as one indexable source.

    Args:
      paths: a list of shard paths (e.g. ``ensure_datasets(...)[name][split]``), or an output
        folder together with ``name`` and ``split``.
      in_memory: load the images into memory too.
    """
    if isinstance(paths, (str, os.PathLike)):
        if name is None or split is None:
            raise ValueError(f'name and split are needed with a folder, got name={name!r}, split={split!r}')
        folder = os.path.join(os.fspath(paths), name)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f'no dataset folder {folder!r}')
        files = sorted(f for f in os.listdir(folder) if f.startswith(f'{split}-') and f.endswith('.h5'))
        if not files:
            raise FileNotFoundError(f'no {split} shards in {folder!r}')
        paths = [os.path.join(folder, f) for f in files]
    shards = [open_shard(p, in_memory) for p in paths]
    shards.sort(key=lambda s: s.metadata['first_index'])
    return Dataset(shards)


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------

def write_shard(path: PathLike, arrays: Mapping[str, np.ndarray], metadata: Mapping) -> str:
    """Writes one shard atomically (temporary file + ``os.replace``).

    Args:
      path: destination file.
      arrays: every field of ``FIELDS`` with the same leading N.
      metadata: every attribute of ``REQUIRED_ATTRS`` except ``format_tag`` and
        ``schema_version`` (added here); lists/dicts are stored as JSON.
    """
    path = os.fspath(path)
    missing = [k for k in FIELDS if k not in arrays]
    if missing:
        raise ValueError(f'arrays must contain the fields {list(FIELDS)}; missing {missing}')
    lengths = {k: np.asarray(arrays[k]).shape[0] for k in FIELDS}
    if len(set(lengths.values())) != 1:
        raise ValueError(f'arrays must share their leading length, got {lengths}')
    attrs = dict(metadata)
    attrs['format_tag'] = FORMAT_TAG
    attrs['schema_version'] = SCHEMA_VERSION
    absent = [a for a in REQUIRED_ATTRS if a not in attrs]
    if absent:
        raise ValueError(f'metadata is missing {absent}')
    if attrs['n_examples'] != lengths['image']:
        raise ValueError(f'metadata n_examples={attrs["n_examples"]} but arrays hold {lengths["image"]} examples')
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f'{path}.tmp-{os.getpid()}'
    try:
        with h5py.File(tmp, 'w', track_order=True) as f:
            for k, v in attrs.items():
                if isinstance(v, (list, tuple, dict)):
                    v = json.dumps(v)
                f.attrs[k] = v
            for k in FIELDS:  # contiguous, uncompressed: readers memory-map the images
                f.create_dataset(k, data=np.asarray(arrays[k]), track_times=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


# ----------------------------------------------------------------------------------------------
# Generation: ensure_datasets
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class MotionSource:
    """Where generation takes its motion from (see :func:`posekit.data.synth.load_motion_splits`)."""

    mocap_dir: Optional[str] = None
    test_mocap_dir: Optional[str] = None
    fps: float = 30.0
    max_frames_per_clip: Optional[int] = None
    val_fraction: float = 0.25

    def fingerprint(self, seed: int) -> Dict:
        """Cheap identity of the motion (file names and sizes, not contents) for reuse checks."""
        def files(folder):
            if not folder:
                return None
            from posekit.data import mocap
            paths = mocap.find_bvh_files(folder)
            return [[os.path.relpath(p, folder), os.path.getsize(p)] for p in paths]
        return dict(mocap_dir=os.path.abspath(self.mocap_dir) if self.mocap_dir else None,
                    test_mocap_dir=os.path.abspath(self.test_mocap_dir) if self.test_mocap_dir else None,
                    mocap_files=files(self.mocap_dir), test_files=files(self.test_mocap_dir),
                    fps=self.fps, max_frames_per_clip=self.max_frames_per_clip,
                    val_fraction=self.val_fraction, seed=int(seed))

    def load(self, seed: int) -> synth.MotionSplits:
        return synth.load_motion_splits(self.mocap_dir, self.test_mocap_dir, seed=seed,
                                        val_fraction=self.val_fraction, fps=self.fps,
                                        max_frames_per_clip=self.max_frames_per_clip)


def shard_ranges(n_examples: int, shard_size: int = DEFAULT_SHARD_SIZE) -> List[Tuple[int, int]]:
    """[(first index, count)] of the shards of a split (at least one shard, possibly empty)."""
    if not isinstance(shard_size, int) or shard_size <= 0:
        raise ValueError(f'shard_size must be a positive int, got {shard_size!r}')
    n_shards = max(1, -(-n_examples // shard_size))
    return [(k * shard_size, min(shard_size, n_examples - k * shard_size)) for k in range(n_shards)]


def shard_path(out_dir: PathLike, name: str, split: str, shard_index: int, n_shards: int) -> str:
    return os.path.join(os.fspath(out_dir), name, f'{split}-{shard_index:03d}-of-{n_shards:03d}.h5')


def params_hash(params: Mapping) -> str:
    """SHA-256 (hex) of the canonical JSON of ``params``."""
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode('utf-8')).hexdigest()


class Progress:
    """A plain-text progress bar on stderr (redrawn in a terminal, periodic lines otherwise)."""

    def __init__(self, label: str, total: int, stream=None, interval_s: float = PROGRESS_INTERVAL_S):
        self.label, self.total = label, max(int(total), 0)
        self.stream = sys.stderr if stream is None else stream
        self.interval_s = interval_s
        self.start = self.last = time.monotonic()
        self.tty = bool(getattr(self.stream, 'isatty', lambda: False)())
        self.done = 0

    def _line(self) -> str:
        width = 24
        frac = self.done / self.total if self.total else 1.0
        bar = '#' * int(round(frac * width)) + '-' * (width - int(round(frac * width)))
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float('nan')
        return (f'{self.label} [{bar}] {self.done}/{self.total} {100 * frac:5.1f}% '
                f'{rate:6.1f} ex/s eta {eta:5.1f} s')

    def update(self, done: int) -> None:
        self.done = int(done)
        now = time.monotonic()
        if self.done >= self.total or now - self.last >= (0.2 if self.tty else self.interval_s):
            self.last = now
            end = '' if self.tty and self.done < self.total else '\n'
            prefix = '\r' if self.tty else ''
            self.stream.write(prefix + self._line() + end)
            self.stream.flush()


# Motion shared with forked worker processes (set by ensure_datasets before the pool starts).
_WORKER_MOTION: Dict[Tuple[str, Tuple[str, ...]], synth.PreparedMotion] = {}


def _generate_task(task) -> str:
    spec_json, split, first, count, path, metadata, seed, dataset_index, progress = task
    spec = synth.DatasetSpec.from_json(spec_json)
    motion = _WORKER_MOTION[(split, spec.formats)]
    bar = Progress(f'{spec.name}/{split} {os.path.basename(path)}', count) if progress else None
    arrays = synth.generate_examples(
        spec, motion, split, first, count, seed, dataset_index,
        progress=(lambda done: bar.update(done)) if bar else None)
    if bar and count == 0:
        bar.update(0)
    return write_shard(path, arrays, metadata)


def ensure_datasets(out_dir: PathLike, specs: Sequence[synth.DatasetSpec], seed: int = 0,
                    mocap_dir: Optional[str] = None, test_mocap_dir: Optional[str] = None,
                    splits: Sequence[str] = synth.SPLITS, shard_size: int = DEFAULT_SHARD_SIZE,
                    workers: int = 1, progress: bool = True, overwrite: bool = False,
                    max_frames_per_clip: Optional[int] = None,
                    log: Optional[Callable[[str], None]] = None) -> Dict[str, Dict[str, List[str]]]:
    """Makes sure every split of every dataset exists as HDF5 shards; returns their paths.

    Existing shards whose stored ``params_hash`` equals the hash of the current generation
    parameters (spec, split, shard range, seed, motion source, schema and generator versions)
    are reused; valid posekit shards with other parameters are regenerated; a corrupt or
    foreign file in the way raises ``ValueError`` naming it (unless ``overwrite``).

    Args:
      out_dir: output folder (``<out_dir>/<name>/<split>-<k>-of-<n>.h5``).
      specs: the datasets (e.g. ``synth.preset_specs('default')``); ``dataset`` field = position
        in this list.
      seed: generation seed (same seed -> identical arrays).
      mocap_dir: BVH folder for train/val motion (None: procedural motion).
      test_mocap_dir: BVH folder used whole for the test split.
      splits: which splits to make.
      shard_size: examples per shard.
      workers: processes generating shards in parallel (1 = in this process). Workers are forked
        after the motion is loaded; call this before starting TensorFlow work in the process (a
        forked child of a process with live TF threads is fragile), or use ``workers=1``.
      progress: print progress bars to stderr.
      overwrite: regenerate every shard, replacing whatever file is in the way.
      max_frames_per_clip: subsample long BVH clips (faster loading).
      log: callable for messages (default: print to stderr when ``progress``).

    Returns:
      {dataset name: {split: [shard paths]}}.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f'seed must be a non-negative int, got {seed!r}')
    if not specs:
        raise ValueError('specs must contain at least one DatasetSpec, got none')
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f'dataset names must be unique, got {names}')
    for split in splits:
        if split not in synth.SPLITS:
            raise ValueError(f'splits must be among {synth.SPLITS}, got {split!r}')
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f'workers must be a positive int, got {workers!r}')
    if log is None:
        log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else (lambda msg: None)
    source = MotionSource(mocap_dir, test_mocap_dir, max_frames_per_clip=max_frames_per_clip)
    fingerprint = source.fingerprint(int(seed))
    result: Dict[str, Dict[str, List[str]]] = {}
    tasks = []
    for dataset_index, spec in enumerate(specs):
        result[spec.name] = {}
        for split in splits:
            ranges = shard_ranges(spec.n_examples(split), shard_size)
            paths = []
            for k, (first, count) in enumerate(ranges):
                path = shard_path(out_dir, spec.name, split, k, len(ranges))
                params = dict(schema_version=SCHEMA_VERSION, generator_version=synth.GENERATOR_VERSION,
                              spec=json.loads(spec.to_json()), split=split, first_index=first, count=count,
                              split_examples=spec.n_examples(split), seed=int(seed),
                              dataset_index=dataset_index, motion=fingerprint)
                digest = params_hash(params)
                paths.append(path)
                if os.path.exists(path) and not overwrite:
                    meta = read_metadata(path)  # ValueError for corrupt or foreign files
                    if meta['params_hash'] == digest:
                        continue
                    log(f'{path}: generation parameters changed, regenerating')
                metadata = dict(
                    generator_version=synth.GENERATOR_VERSION, name=spec.name, split=split,
                    skeleton_format=spec.fmt, joint_space=list(spec.formats),
                    joint_names=list(spec.joint_space.names), label_kind=spec.label_kind,
                    crop_size=spec.crop_size, seed=int(seed), motion_source='', n_examples=count,
                    split_examples=spec.n_examples(split), first_index=first, shard_index=k,
                    n_shards=len(ranges), dataset_index=dataset_index, spec_json=spec.to_json(),
                    params_hash=digest)
                tasks.append((spec, split, first, count, path, metadata, dataset_index))
            result[spec.name][split] = paths
    if not tasks:
        log(f'posekit datasets in {os.fspath(out_dir)}: all {sum(len(p) for d in result.values() for p in d.values())} '
            f'shards up to date (reused)')
        return result

    t0 = time.monotonic()
    log(f'loading motion ({"procedural" if not mocap_dir else mocap_dir})')
    motion_splits = source.load(int(seed))
    needed = sorted({(split, spec.formats) for spec, split, *_ in tasks})
    _WORKER_MOTION.clear()
    for split, formats in needed:
        clips = motion_splits.clips(split)
        if not clips:
            raise ValueError(f'no motion clips for split {split!r} ({motion_splits.description})')
        _WORKER_MOTION[(split, formats)] = synth.PreparedMotion(clips, formats)
    log(f'motion ready in {time.monotonic() - t0:.1f} s: {motion_splits.description}')
    jobs = []
    for spec, split, first, count, path, metadata, dataset_index in tasks:
        metadata = dict(metadata)
        metadata['motion_source'] = (f'{motion_splits.description}; {split}: '
                                     f'{_WORKER_MOTION[(split, spec.formats)].description()}')
        jobs.append((spec.to_json(), split, first, count, path, metadata, int(seed), dataset_index, progress))
    n_examples = sum(j[3] for j in jobs)
    t1 = time.monotonic()
    if workers == 1 or len(jobs) == 1:
        for job in jobs:
            _generate_task(job)
    else:
        context = multiprocessing.get_context('fork')
        with context.Pool(min(workers, len(jobs))) as pool:
            for _ in pool.imap_unordered(_generate_task, jobs):
                pass
    elapsed = time.monotonic() - t1
    log(f'generated {len(jobs)} shards, {n_examples} examples in {elapsed:.1f} s '
        f'({n_examples / max(elapsed, 1e-9):.0f} ex/s with {workers} worker(s)) in {os.fspath(out_dir)}')
    return result
