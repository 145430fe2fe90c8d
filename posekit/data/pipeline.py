"""Per-dataset queues interleaved into fixed-composition tf.data batches.

A training batch holds exactly ``composition[name]`` examples of each dataset, in composition
order (a contiguous block per dataset), each example carrying ``dataset`` (int32, the dataset's
index in the composition) and ``position`` (int64, see below).

Every dataset is an *indexable* :class:`ExampleSource` (``len()`` and ``get(indices)``), so the
order is computed in closed form instead of being drawn from a stateful shuffle buffer:

- dataset ``d`` is repeated epoch after epoch; epoch ``e`` visits its examples in the order
  ``epoch_permutation(seed, stream_key(d), e, len(d))`` (a numpy PCG64 permutation keyed by the
  three numbers), so each example appears once per epoch before any repeat;
- the infinite concatenation of these permutations is the dataset's stream; batch ``k`` takes
  stream positions ``[k c_d, (k + 1) c_d)`` of dataset ``d`` (``c_d = composition[d]``);
- augmentation randomness is a hash of ``(seed, stream_key(d), position)``
  (:func:`posekit.data.augment.uniform_from_keys`), never TF's global random state.

Hence batch ``k`` is a pure function of ``(streams, composition, seed, k)``: the same seed gives
byte-identical batches in another process, and ``start_step=k`` resumes at batch ``k`` at no cost
(only batch ``k``'s examples are read; the permutation of one epoch is computed per stream).
``dataset.skip(k)`` on the returned :class:`ComposedBatches` is the same as ``start_step + k``
(after further transformations such as ``take`` or ``map``, tf.data's own skip runs the
pipeline for the skipped batches).

``stream_key(name)`` is the CRC32 of the dataset name, so a dataset's order does not change
when other datasets are added to or removed from the composition.
"""

from __future__ import annotations

import collections
import threading
import zlib
from typing import Dict, List, Mapping, Optional, Protocol, Sequence, Tuple, runtime_checkable

import numpy as np
import tensorflow as tf

from posekit import geometry
from posekit.data import augment as augment_lib
from posekit.data import full_image

DATASETS_3D = ('h36m_like', 'mpi_like', 'smpl_like')
"""Synthetic 3D datasets of posekit.data.synth, in batch order."""

DATASETS_2D = ('coco_like',)
"""Synthetic 2D-only (weakly supervised) datasets of posekit.data.synth."""

PAPER_BATCH_3D = 96
PAPER_BATCH_2D = 32
"""Sárándi et al. (WACV'23), Table S1: each batch has a 3D part of 96 and a 2D part of 32 examples."""

PERMUTATION_CACHE_EPOCHS = 4
"""Permutations kept per stream (a batch touches at most two epochs unless c_d > len(d))."""

_MAX_STEP = np.iinfo(np.int64).max // 2


def make_composition(names_3d: Sequence[str], names_2d: Sequence[str], n_3d: int, n_2d: int) -> Dict[str, int]:
    """Splits a 3D part of ``n_3d`` and a 2D part of ``n_2d`` examples evenly over the datasets.

    Remainders go to the first datasets of each part. Returns {name: count}, 3D names first.
    """
    for value, label in ((n_3d, 'n_3d'), (n_2d, 'n_2d')):
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f'{label} must be a non-negative int, got {value!r}')
    if n_3d < len(names_3d) or n_2d < len(names_2d):
        raise ValueError(f'n_3d={n_3d} and n_2d={n_2d} must give each of the {len(names_3d)} 3D and '
                         f'{len(names_2d)} 2D datasets at least one example per batch')
    result = {}
    for names, total in ((names_3d, n_3d), (names_2d, n_2d)):
        base, extra = divmod(total, max(len(names), 1))
        for i, name in enumerate(names):
            result[name] = base + (1 if i < extra else 0)
    return result


COMPOSITIONS: Dict[str, Dict[str, int]] = {
    # Table S1 of the paper: 96 3D + 32 2D examples per batch, here over the synthetic datasets.
    'paper': make_composition(DATASETS_3D, DATASETS_2D, PAPER_BATCH_3D, PAPER_BATCH_2D),
    # Same 3:1 ratio, a batch size a 2-core CPU can train with.
    'default': make_composition(DATASETS_3D, DATASETS_2D, 24, 8),
    # One example of each dataset.
    'smoke': make_composition(DATASETS_3D, DATASETS_2D, len(DATASETS_3D), len(DATASETS_2D)),
}
"""Batch compositions {dataset name: examples per batch} (datasets in batch order)."""

TABLE_S1: Dict[str, Dict[str, int]] = {
    'small': {'muco_3dhp': 32, 'h36m': 32, 'surreal': 32, 'coco': 8, 'mpii': 8, 'posetrack': 8, 'jrdb': 8},
    'medium': {'muco_3dhp': 9, 'panoptic': 9, 'aist_dance': 9, 'humbi': 7, 'mpi_inf_3dhp': 5, 'rich': 7,
               'h36m': 9, 'totalcapture': 5, 'surreal': 8, '3dpeople': 6, 'jta': 5, 'hspace': 5, 'sail_vos': 7,
               'agora': 5, 'coco': 8, 'mpii': 8, 'posetrack': 8, 'jrdb': 8},
    'full': {'muco_3dhp': 6, 'panoptic': 7, 'aist_dance': 6, 'humbi': 5, 'mpi_inf_3dhp': 3, 'rich': 4,
             'behave': 3, 'aspset': 4, '3doh50k': 3, 'ikea_asm': 2, 'h36m': 4, 'totalcapture': 3, 'bml_movi': 5,
             'berkeley_mhad': 3, 'umpm': 2, 'fit3d': 2, 'gpa': 4, 'humansc3d': 1, 'chi3d': 1, 'human4d': 1,
             'mads': 2, 'surreal': 5, '3dpeople': 4, 'jta': 3, 'hspace': 3, 'sail_vos': 5, 'agora': 3, 'spec': 2,
             'coco': 8, 'mpii': 8, 'posetrack': 8, 'jrdb': 8},
}
"""Sárándi et al. (WACV'23), supplement Table S1: examples per batch of each dataset for the small, medium and
full dataset combinations (96 3D + 32 2D per batch). Keys are posekit's adapter names where posekit has an
adapter (``h36m``, ``mpi_inf_3dhp``, ``panoptic``, ``coco``, ``mpii``), lowercase dataset names otherwise."""

TABLE_S1_2D = ('coco', 'mpii', 'posetrack', 'jrdb')
"""The weakly supervised (2D-only) datasets of Table S1."""


def replica_order(composition: Mapping[str, int], splits: int) -> np.ndarray:
    """The order that turns a fixed-composition batch into ``splits`` equal chunks of the same composition.

    A batch of :func:`interleave_by_composition` holds each dataset's examples as one block (in
    ``composition`` order). ``tf.distribute`` gives replica r the r-th consecutive chunk of the global batch,
    so data-parallel training needs every chunk to hold ``count / splits`` examples of every dataset: then
    each replica's mean loss and its Ghost-BN groups are those of the same composition, and the mean over
    replicas equals the single-process loss of the same batch arranged this way.

    Args:
      composition: dict dataset name -> examples per batch (every count divisible by ``splits``).
      splits: positive int, the number of chunks (replicas).

    Returns:
      int64 [B] permutation: ``batch[order]`` is chunk 0 (block 0's first count/splits examples, block 1's
      first ...), then chunk 1, ... ``splits=1`` gives the identity.
    """
    if isinstance(splits, bool) or not isinstance(splits, (int, np.integer)) or splits < 1:
        raise ValueError(f'splits must be an int >= 1, got {splits!r}')
    counts = [int(c) for c in composition.values()]
    uneven = {name: c for name, c in composition.items() if int(c) % splits}
    if uneven:
        raise ValueError(f'every count of the composition must be divisible by the {splits} replicas (batch '
                         f'splits); these are not: {uneven} (choose batch_3d/batch_2d or --composition counts '
                         'that are multiples of the number of replicas)')
    starts = np.cumsum([0] + counts[:-1])
    order = [start + r * (count // splits) + np.arange(count // splits)
             for r in range(splits) for start, count in zip(starts, counts)]
    return np.concatenate(order).astype(np.int64) if order else np.zeros([0], np.int64)


def _largest_remainder(weights: Sequence[float], total: int) -> List[int]:
    """Integer counts proportional to ``weights`` summing to ``total``, each at least 1."""
    weights = np.asarray(weights, np.float64)
    if total < len(weights):
        raise ValueError(f'{total} examples cannot give each of {len(weights)} datasets one')
    raw = (total - len(weights)) * weights / weights.sum()
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind='stable')[:total - len(weights) - counts.sum()]:
        counts[i] += 1
    return (counts + 1).tolist()


def table_s1_composition(level: str, names: Sequence[str], n_3d: int, n_2d: int,
                         aliases: Optional[Mapping[str, str]] = None) -> Dict[str, int]:
    """Table S1's composition ``level`` for the datasets one has, scaled to ``n_3d`` + ``n_2d`` examples.

    The paper's per-batch counts of the datasets in ``names`` keep their proportions within the 3D part and
    within the 2D part (largest remainders, at least one example each); datasets the paper used but one lacks
    are left out.

    Args:
      level: 'small', 'medium' or 'full'.
      names: dataset names in batch order (adapter names; ``aliases`` maps others, e.g. a manifest called
        'my_h36m' -> 'h36m').
      n_3d, n_2d: examples per batch of the 3D and the 2D part.

    Raises:
      ValueError: unknown level, a dataset Table S1 does not list at this level (naming it), or a part without
        datasets that needs examples.
    """
    if level not in TABLE_S1:
        raise ValueError(f'level must be one of {sorted(TABLE_S1)}, got {level!r}')
    aliases = dict(aliases or {})
    table = TABLE_S1[level]
    keys = [aliases.get(n, n) for n in names]
    missing = [n for n, k in zip(names, keys) if k not in table]
    if missing:
        raise ValueError(f'Table S1 ({level}) has no count for the datasets {missing}; give explicit counts '
                         f'(name=count,...) or use one of {sorted(table)}')
    part_2d = [k in TABLE_S1_2D for k in keys]
    out = {}
    for want_2d, total in ((False, n_3d), (True, n_2d)):
        members = [(n, table[k]) for n, k, is_2d in zip(names, keys, part_2d) if is_2d == want_2d]
        if not members:
            if total:
                raise ValueError(f'{total} {"2D" if want_2d else "3D"} examples per batch but no '
                                 f'{"2D" if want_2d else "3D"} dataset')
            continue
        for (name, _), count in zip(members, _largest_remainder([c for _, c in members], total)):
            out[name] = count
    return {name: out[name] for name in names}


# ----------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------

@runtime_checkable
class ExampleSource(Protocol):
    """A finite dataset with random access: what :func:`interleave_by_composition` reads.

    ``get(indices)`` returns a dict of numpy arrays with leading dimension ``len(indices)``, in
    the order of ``indices`` (which may repeat and need not be sorted), one entry per example
    field of the data contract (``image`` uint8 [n, S, S, 3], ``intrinsics``, ``coords3d``,
    ``coords2d``, ``joint_valid``, ``is_3d``, ``example_id``, ...). It must be thread-safe:
    the pipeline calls it from several threads.
    """

    def __len__(self) -> int: ...

    def get(self, indices: np.ndarray) -> Dict[str, np.ndarray]: ...


class ArraySource:
    """An :class:`ExampleSource` over in-memory arrays.

    Args:
      arrays: dict field -> numpy array, all with the same leading length N > 0.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray]):
        if not isinstance(arrays, Mapping) or not arrays:
            raise ValueError(f'arrays must be a non-empty dict of numpy arrays, got {arrays!r:.200}')
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        lengths = {k: (v.shape[0] if v.ndim else None) for k, v in self.arrays.items()}
        if len(set(lengths.values())) != 1 or None in lengths.values() or 0 in lengths.values():
            raise ValueError(f'arrays must share one leading length N > 0, got lengths {lengths}')
        self._length = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self._length

    def get(self, indices) -> Dict[str, np.ndarray]:
        indices = np.asarray(indices, np.int64)
        return {k: v[indices] for k, v in self.arrays.items()}


class SubsetSource:
    """The first ``count`` examples of an :class:`ExampleSource` (e.g. a few unlabeled images per dataset)."""

    def __init__(self, source: ExampleSource, count: int):
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
            raise ValueError(f'count must be a positive int, got {count!r}')
        self.source = source
        self.count = min(int(count), len(source))

    def __len__(self) -> int:
        return self.count

    def get(self, indices) -> Dict[str, np.ndarray]:
        indices = np.asarray(indices, np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= self.count):
            raise IndexError(f'indices must be in [0, {self.count}), got {indices.tolist()}')
        return self.source.get(indices)


PIXEL_MAX = 255.0
"""uint8 intensity that maps to 1.0 at the networks' inputs."""


def to_unit_range(images):
    """uint8 (or 0-255 float) images -> float32 in [0, 1], the networks' input range (TF)."""
    return tf.cast(images, tf.float32) / PIXEL_MAX


class JointSpaceSource:
    """An :class:`ExampleSource` whose joints (``coords3d``, ``coords2d``, ``joint_valid``) are placed into a
    larger joint space (the model's): formats the source lacks get zeros and ``joint_valid`` False.

    Args:
      source: the source; its joints are those of ``source_formats``.
      source_formats: the formats of the source's joint space (in its order).
      target_space: a :class:`posekit.skeletons.JointSpace` containing every source format.
    """

    JOINT_FIELDS = ('coords3d', 'coords2d', 'joint_valid')

    def __init__(self, source: ExampleSource, source_formats: Sequence[str], target_space):
        from posekit.skeletons import JointSpace
        source_space = JointSpace(source_formats)
        missing = [f for f in source_space.formats if f not in target_space.slices]
        if missing:
            raise ValueError(f'target_space lacks the source formats {missing}')
        self.source = source
        self.target_space = target_space
        self._index = np.concatenate([np.arange(target_space.slices[f].start, target_space.slices[f].stop)
                                      for f in source_space.formats])
        self.metadata = getattr(source, 'metadata', {})

    def __len__(self) -> int:
        return len(self.source)

    def _widen(self, examples):
        examples = dict(examples)
        for field in self.JOINT_FIELDS:
            if field in examples:
                value = examples[field]
                wide = np.zeros((value.shape[0], self.target_space.n_joints) + value.shape[2:], value.dtype)
                wide[:, self._index] = value
                examples[field] = wide
        return examples

    def get(self, indices) -> Dict[str, np.ndarray]:
        return self._widen(self.source.get(indices))

    def arrays(self, fields=None) -> Dict[str, np.ndarray]:
        """All examples' ``fields`` (the source's ``arrays``), widened."""
        return self._widen(self.source.arrays(fields))


def stream_from_arrays(arrays: Mapping[str, np.ndarray]) -> ArraySource:
    """An :class:`ExampleSource` over a dict of numpy arrays with leading N (one row per example)."""
    return ArraySource(arrays)


def stream_from_shard(path, in_memory: bool = False) -> ExampleSource:
    """An :class:`ExampleSource` reading one HDF5 shard written by :mod:`posekit.data.storage`.

    Labels are loaded when opened; images are memory-mapped (read on demand, no decoding) unless
    ``in_memory``. Raises ``ValueError`` (naming the file) for corrupt or foreign files.
    """
    from posekit.data import storage  # h5py and the renderer only when shards are used
    return storage.open_shard(path, in_memory=in_memory)


def stream_from_shards(paths, name: Optional[str] = None, split: Optional[str] = None,
                       in_memory: bool = False) -> ExampleSource:
    """One :class:`ExampleSource` over all shards of a dataset split.

    Args:
      paths: a list of shard paths (e.g. ``storage.ensure_datasets(...)[name][split]``), or the
        output folder of ``tools/make_datasets.py`` together with ``name`` and ``split``.
      in_memory: load the images into memory instead of memory-mapping them.
    """
    from posekit.data import storage
    return storage.open_dataset(paths, name=name, split=split, in_memory=in_memory)


# ----------------------------------------------------------------------------------------------
# Closed-form order
# ----------------------------------------------------------------------------------------------

def stream_key(name: str) -> int:
    """The stream key of a dataset: CRC32 of its name (stable across processes and versions)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f'dataset name must be a non-empty str, got {name!r}')
    return zlib.crc32(name.encode('utf-8'))


def _check_seed(seed) -> int:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f'seed must be a non-negative int, got {seed!r}')
    return int(seed)


def epoch_permutation(seed: int, key: int, epoch: int, size: int) -> np.ndarray:
    """[size] int64 visiting order of epoch ``epoch`` of the stream with key ``key``."""
    rng = np.random.default_rng([_check_seed(seed), int(key), int(epoch)])
    return rng.permutation(int(size)).astype(np.int64)


class StreamOrder:
    """The infinite, epoch-wise reshuffled order of one dataset (thread-safe, cached).

    Args:
      seed: non-negative int.
      name: dataset name (its :func:`stream_key` seeds the permutations).
      size: number of examples of the dataset.
    """

    def __init__(self, seed: int, name: str, size: int):
        self.seed = _check_seed(seed)
        self.key = stream_key(name)
        if not isinstance(size, (int, np.integer)) or size <= 0:
            raise ValueError(f'size of dataset {name!r} must be a positive int, got {size!r}')
        self.size = int(size)
        self._cache: 'collections.OrderedDict[int, np.ndarray]' = collections.OrderedDict()
        self._lock = threading.Lock()

    def permutation(self, epoch: int) -> np.ndarray:
        with self._lock:
            if epoch in self._cache:
                self._cache.move_to_end(epoch)
                return self._cache[epoch]
        perm = epoch_permutation(self.seed, self.key, epoch, self.size)
        with self._lock:
            self._cache[epoch] = perm
            while len(self._cache) > PERMUTATION_CACHE_EPOCHS:
                self._cache.popitem(last=False)
        return perm

    def indices(self, start: int, count: int) -> np.ndarray:
        """[count] int64 example indices at stream positions [start, start + count)."""
        positions = np.arange(start, start + count, dtype=np.int64)
        epochs = positions // self.size
        offsets = positions % self.size
        result = np.empty(count, np.int64)
        for epoch in np.unique(epochs):
            sel = epochs == epoch
            result[sel] = self.permutation(int(epoch))[offsets[sel]]
        return result


def _check_composition(composition, streams) -> Tuple[List[str], List[int]]:
    if not isinstance(composition, Mapping) or not composition:
        raise ValueError(f'composition must be a non-empty dict name -> count, got {composition!r}')
    names, counts = [], []
    for name, count in composition.items():
        if name not in streams:
            raise ValueError(f'composition names dataset {name!r}, which is not in streams '
                             f'{sorted(streams)}')
        if not isinstance(count, (int, np.integer)) or isinstance(count, bool) or count <= 0:
            raise ValueError(f'composition[{name!r}] must be a positive int, got {count!r}')
        names.append(name)
        counts.append(int(count))
    return names, counts


class CompositionPlan:
    """Which examples batch ``k`` holds: the closed-form order behind :func:`interleave_by_composition`.

    Args:
      sizes: dict dataset name -> number of examples.
      composition: dict dataset name -> examples per batch (batch order).
      seed: non-negative int.
    """

    def __init__(self, sizes: Mapping[str, int], composition: Mapping[str, int], seed: int):
        self.names, self.counts = _check_composition(composition, sizes)
        self.seed = _check_seed(seed)
        self.orders = [StreamOrder(seed, name, sizes[name]) for name in self.names]
        self.keys = [order.key for order in self.orders]
        self.batch_size = sum(self.counts)

    def batch(self, step: int) -> List[Tuple[np.ndarray, np.ndarray]]:
        """Per dataset (composition order): (example indices [c_d], stream positions [c_d]) of batch ``step``."""
        if step < 0:
            raise ValueError(f'step must be >= 0, got {step}')
        result = []
        for order, count in zip(self.orders, self.counts):
            start = int(step) * count
            result.append((order.indices(start, count), np.arange(start, start + count, dtype=np.int64)))
        return result


# ----------------------------------------------------------------------------------------------
# tf.data
# ----------------------------------------------------------------------------------------------

def _field_spec(name, source, keep_dataset: bool = False) -> Dict[str, Tuple[Tuple[int, ...], np.dtype]]:
    if not isinstance(source, ExampleSource):
        raise ValueError(f'stream {name!r} must be an ExampleSource (len() and get(indices)), got '
                         f'{type(source).__name__}; wrap arrays with stream_from_arrays and shards with '
                         f'stream_from_shard(s) (a tf.data.Dataset has no random access)')
    if len(source) <= 0:
        raise ValueError(f'stream {name!r} must not be empty, got len {len(source)}')
    sample = source.get(np.zeros(1, np.int64))
    spec = {}
    for field, value in sample.items():
        value = np.asarray(value)
        if value.dtype.kind in 'OSU':
            continue  # strings (e.g. dataset_name) are metadata; the `dataset` index names the dataset
        spec[field] = (value.shape[1:], value.dtype)
    if not keep_dataset:
        spec.pop('dataset', None)
    spec.pop('position', None)
    return spec


def _common_spec(streams: Mapping[str, ExampleSource], names: Sequence[str]):
    specs = {name: _field_spec(name, streams[name]) for name in names}
    reference_name = names[0]
    reference = specs[reference_name]
    for name in names[1:]:
        if specs[name] != reference:
            raise ValueError(f'stream {name!r} has fields {_describe(specs[name])}, but stream '
                             f'{reference_name!r} has {_describe(reference)}; all streams must agree')
    spec = dict(reference)
    spec['example_id'] = spec.get('example_id', ((), np.dtype(np.int64)))
    spec['dataset'] = ((), np.dtype(np.int32))
    spec['position'] = ((), np.dtype(np.int64))
    return dict(sorted(spec.items()))


def _describe(spec):
    return {k: (tuple(s), str(d)) for k, (s, d) in sorted(spec.items())}


def _gather(source, indices, out, start, overrides):
    """Reads ``source.get(indices)`` into rows [start, start + len) of ``out``; ``overrides``
    gives values for fields computed by the pipeline; a missing example_id becomes the index."""
    count = len(indices)
    examples = source.get(indices)
    for field, array in out.items():
        if field in overrides:
            array[start:start + count] = overrides[field]
        elif field == 'example_id' and 'example_id' not in examples:
            array[start:start + count] = indices
        else:
            array[start:start + count] = examples[field]


def _allocate(spec, size):
    return {field: np.empty((size,) + tuple(shape), dtype) for field, (shape, dtype) in spec.items()}


def _to_tensors(arrays_fn, index, spec, batch_dim):
    fields = list(spec)
    values = tf.numpy_function(lambda i: _ordered(arrays_fn(i), fields), [index],
                               [tf.as_dtype(spec[f][1]) for f in fields], stateful=False)
    result = {}
    for field, value in zip(fields, values):
        value.set_shape((batch_dim,) + tuple(spec[field][0]))
        result[field] = value
    return result


def _ordered(arrays, fields):
    return [arrays[f] for f in fields]


def _mask_to_own_format(batch):
    valid = tf.cast(batch['joint_valid'], tf.bool)
    for field in ('coords3d', 'coords2d'):
        if field in batch:
            batch[field] = tf.where(valid[..., None], batch[field], tf.zeros_like(batch[field]))
    return batch


def interleave_by_composition(streams: Mapping[str, ExampleSource], composition: Mapping[str, int], seed: int,
                              start_step: int = 0, augment: Optional[augment_lib.AugmentConfig] = None,
                              mirror: Optional[Sequence[int]] = None, mask_to_own_format: bool = False,
                              num_parallel_calls: int = tf.data.AUTOTUNE,
                              prefetch: int = tf.data.AUTOTUNE) -> 'ComposedBatches':
    """Infinite fixed-composition training batches (see the module docstring for the order).

    Args:
      streams: dict dataset name -> :class:`ExampleSource` (:func:`stream_from_arrays`,
        :func:`stream_from_shard`, :func:`stream_from_shards`); all must have the same fields, per-example shapes and dtypes.
        Streams missing from ``composition`` are ignored.
      composition: dict dataset name -> examples per batch; its order is the order of the blocks
        in each batch and defines the ``dataset`` index.
      seed: non-negative int; determines order and augmentation.
      start_step: index of the first batch produced (resume); costs nothing to skip.
      augment: None (no augmentation) or an :class:`~posekit.data.augment.AugmentConfig`.
      mirror: the joint space's mirror permutation (``JointSpace(formats).mirror``), needed when
        ``augment`` may flip.
      mask_to_own_format: zero ``coords3d``/``coords2d`` of joints outside ``joint_valid``
        (after augmentation).
      num_parallel_calls: batches read and augmented in parallel (order stays deterministic).
      prefetch: batches prefetched (``tf.data.AUTOTUNE`` or an int; 0 disables).

    Returns:
      :class:`ComposedBatches` (a tf.data.Dataset whose ``skip(k)`` is free) of dicts with
      leading dimension B = sum(composition.values()): the streams' fields (``image`` uint8 [B, S', S', 3], ``intrinsics`` [B, 3, 3] px, ``coords3d``
      [B, J, 3] mm camera frame, ``coords2d`` [B, J, 2] px, ``joint_valid`` [B, J], ``is_3d`` [B],
      ``example_id`` [B] int64), plus ``dataset`` [B] int32 (index in ``composition``) and
      ``position`` [B] int64 (position in the dataset's stream: epoch = position // len).
    """
    names, counts = _check_composition(composition, streams)
    if not isinstance(start_step, (int, np.integer)) or start_step < 0 or start_step > _MAX_STEP:
        raise ValueError(f'start_step must be an int in [0, {_MAX_STEP}], got {start_step!r}')
    if augment is not None and not isinstance(augment, augment_lib.AugmentConfig):
        raise ValueError(f'augment must be None or an AugmentConfig, got {type(augment).__name__}')
    full_names = [name for name in names if isinstance(streams[name], full_image.FullImageStream)]
    spec = _mixed_spec(streams, names, full_names) if full_names else _common_spec(streams, names)
    if augment is not None:
        missing = {'image', 'intrinsics', 'coords3d', 'coords2d'} - set(spec)
        if missing:
            raise ValueError(f'augment needs the fields {sorted(missing)}, missing from the streams')
        n_joints = spec['coords3d'][0][0]
        if mirror is None:
            if augment.flip_probability > 0:
                raise ValueError('mirror must be given when augment.flip_probability > 0, got None')
            mirror = list(range(n_joints))
        mirror = augment_lib.check_mirror(mirror, n_joints)
    if mask_to_own_format and 'joint_valid' not in spec:
        raise ValueError('mask_to_own_format=True needs a joint_valid field in the streams')
    plan = CompositionPlan({name: len(streams[name]) for name in names}, composition, seed)
    sources = [streams[name] for name in names]
    batch_size = plan.batch_size

    def load(step):
        out = _allocate(spec, batch_size)
        start = 0
        for d, (source, (indices, positions)) in enumerate(zip(sources, plan.batch(int(step)))):
            _gather(source, indices, out, start, {'dataset': d, 'position': positions})
            start += len(indices)
        return out

    keys_table = tf.constant(np.array(plan.keys, np.int64))

    def make_batch(step):
        batch = _to_tensors(load, step, spec, batch_size)
        if augment is not None:
            keys = tf.stack([tf.fill([batch_size], tf.constant(plan.seed, tf.int64)),
                             tf.gather(keys_table, batch['dataset']), batch['position']], axis=-1)
            batch = augment_lib.augment_batch(batch, keys, augment, mirror)
        if mask_to_own_format:
            batch = _mask_to_own_format(batch)
        return batch

    if full_names:
        make_batch = _mixed_batch_fn(streams, names, plan, spec, augment, mirror, mask_to_own_format)

    def build(first_step):
        dataset = tf.data.Dataset.counter(start=int(first_step), dtype=tf.int64)
        dataset = dataset.map(make_batch, num_parallel_calls=num_parallel_calls, deterministic=True)
        if prefetch:
            dataset = dataset.prefetch(prefetch)
        options = tf.data.Options()
        options.deterministic = True
        return dataset.with_options(options)

    return ComposedBatches(build, int(start_step), names, batch_size)


def _mixed_spec(streams, names, full_names):
    """The crop-example spec of a composition with full-image streams (cropped at load time).

    Every stream must yield :data:`posekit.data.full_image.CROP_FIELDS` with the same shapes: the full-image
    streams' crop size and joint space fix them, the crop streams' other fields are dropped.
    """
    reference_name = full_names[0]
    reference = streams[reference_name].crop_spec()
    for name in names:
        if name in full_names:
            own = streams[name].crop_spec()
        else:
            fields = _field_spec(name, streams[name])
            own = {f: fields[f] for f in full_image.CROP_FIELDS if f in fields}
            own.setdefault('example_id', reference['example_id'])
        if own != reference:
            raise ValueError(f'stream {name!r} has crop fields {_describe(own)}, but full-image stream '
                             f'{reference_name!r} makes {_describe(reference)}; all streams must agree '
                             '(crop size, joint space, dtypes)')
    spec = dict(reference)
    spec['dataset'] = ((), np.dtype(np.int32))
    spec['position'] = ((), np.dtype(np.int64))
    return dict(sorted(spec.items()))


def _mixed_batch_fn(streams, names, plan, spec, augment, mirror, mask_to_own_format):
    """``make_batch(step)`` of a composition with full-image streams: one block per dataset, crop streams
    augmented as usual (:func:`posekit.data.augment.augment_batch`), full-image streams cropped at load time
    (:func:`posekit.data.full_image.crop_batch`) with the same keys (seed, stream key, position)."""
    crop_fields = [f for f in spec if f not in ('dataset', 'position')]
    keys_table = np.array(plan.keys, np.int64)

    def block_fn(d, name):
        stream = streams[name]
        if isinstance(stream, full_image.FullImageStream):
            raw_spec = stream.raw_spec()
            fields = list(raw_spec)
            dtypes = [raw_spec[f].dtype for f in fields]
            shapes = {f: raw_spec[f].shape for f in fields}
        else:
            fields = crop_fields
            dtypes = [tf.as_dtype(spec[f][1]) for f in fields]
            shapes = {f: spec[f][0] for f in fields}

        def read(step):
            indices, positions = plan.batch(int(step))[d]
            if isinstance(stream, full_image.FullImageStream):
                arrays = stream.get_raw(indices)
            else:
                arrays = stream.get(indices)
                if 'example_id' not in arrays:
                    arrays = dict(arrays, example_id=indices)
            return [np.asarray(arrays[f], dtype=object if dt == tf.string else dt.as_numpy_dtype)
                    for f, dt in zip(fields, dtypes)] + [positions]

        def block(step):
            count = plan.counts[d]
            values = tf.numpy_function(read, [step], dtypes + [tf.int64], stateful=False)
            out = {}
            for f, v in zip(fields, values[:-1]):
                v.set_shape((count,) + tuple(shapes[f]))
                out[f] = v
            positions = values[-1]
            positions.set_shape((count,))
            keys = tf.stack([tf.fill([count], tf.constant(plan.seed, tf.int64)),
                             tf.fill([count], tf.constant(keys_table[d])), positions], axis=-1)
            if isinstance(stream, full_image.FullImageStream):
                out = full_image.crop_batch(out, stream, keys, augment)
            elif augment is not None:
                out = augment_lib.augment_batch(out, keys, augment, mirror)
            out = {f: out[f] for f in crop_fields}
            out['dataset'] = tf.fill([count], tf.constant(d, tf.int32))
            out['position'] = positions
            return out
        return block

    blocks = [block_fn(d, name) for d, name in enumerate(names)]

    def make_batch(step):
        parts = [block(step) for block in blocks]
        batch = {f: tf.concat([p[f] for p in parts], axis=0) for f in parts[0]}
        if mask_to_own_format:
            batch = _mask_to_own_format(batch)
        return batch

    return make_batch


class ComposedBatches(tf.data.Dataset):
    """The tf.data.Dataset of :func:`interleave_by_composition`; ``skip(k)`` is free.

    ``skip`` with a Python int returns the same pipeline started ``k`` batches later (nothing is
    read or decoded for the skipped batches); everything else is plain tf.data.

    Attributes:
      start_step: index of the first batch; names: dataset names by ``dataset`` index;
      batch_size: examples per batch.
    """

    def __init__(self, build, start_step: int, names: Sequence[str], batch_size: int):
        self._build = build
        self.start_step = start_step
        self.names = tuple(names)
        self.batch_size = batch_size
        self._dataset = build(start_step)
        super().__init__(self._dataset._variant_tensor)  # pylint: disable=protected-access

    @property
    def element_spec(self):
        return self._dataset.element_spec

    def _inputs(self):
        return [self._dataset]

    def skip(self, count, name=None):
        if isinstance(count, (int, np.integer)) and not isinstance(count, bool) and count >= 0:
            return ComposedBatches(self._build, self.start_step + int(count), self.names, self.batch_size)
        return super().skip(count, name=name)


def eval_batches(source: ExampleSource, batch_size: int, dataset_index: Optional[int] = None,
                 num_parallel_calls: int = tf.data.AUTOTUNE, prefetch: int = tf.data.AUTOTUNE) -> tf.data.Dataset:
    """Sequential evaluation batches: no shuffling, no augmentation, all formats' ground truth.

    Args:
      source: an :class:`ExampleSource`.
      batch_size: examples per batch; the last batch holds the remainder.
      dataset_index: if given, the ``dataset`` field (int32) is set to this value; otherwise the
        source's own ``dataset`` field (if any) is kept.
      num_parallel_calls, prefetch: as in :func:`interleave_by_composition`.

    Returns:
      tf.data.Dataset of dicts (the source's fields, leading dimension <= batch_size) covering
      examples 0 .. len(source) - 1 once, in order; ``example_id`` is the index if the source
      has none.
    """
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size <= 0:
        raise ValueError(f'batch_size must be a positive int, got {batch_size!r}')
    spec = _field_spec('source', source, keep_dataset=dataset_index is None)
    spec.setdefault('example_id', ((), np.dtype(np.int64)))
    if dataset_index is not None:
        spec['dataset'] = ((), np.dtype(np.int32))
    spec = dict(sorted(spec.items()))
    size = len(source)
    n_batches = -(-size // batch_size)

    def load(k):
        indices = np.arange(int(k) * batch_size, min(size, (int(k) + 1) * batch_size), dtype=np.int64)
        out = _allocate(spec, len(indices))
        _gather(source, indices, out, 0, {} if dataset_index is None else {'dataset': dataset_index})
        return out

    dataset = tf.data.Dataset.range(n_batches)
    dataset = dataset.map(lambda k: _to_tensors(load, k, spec, None),
                          num_parallel_calls=num_parallel_calls, deterministic=True)
    if prefetch:
        dataset = dataset.prefetch(prefetch)
    return dataset


# ----------------------------------------------------------------------------------------------
# Stand-in data
# ----------------------------------------------------------------------------------------------

SYNTHETIC_DEPTH_RANGE_MM = (3000.0, 6000.0)
SYNTHETIC_SPREAD_MM = 350.0
SYNTHETIC_PERSON_HEIGHT_MM = 2000.0


def synthetic_arrays(n: int, side: int, joint_valid, seed: int = 0, is_3d: bool = True) -> Dict[str, np.ndarray]:
    """Random examples that follow the data contract, for tests and benchmarks (not for training).

    Joints are Gaussian blobs (``SYNTHETIC_SPREAD_MM``) around a point at a depth in
    ``SYNTHETIC_DEPTH_RANGE_MM`` on the optical axis, the focal length makes
    ``SYNTHETIC_PERSON_HEIGHT_MM`` fill the crop, ``coords2d`` is their exact projection and the
    image is random noise. Use :mod:`posekit.data.synth` for real training data.

    Args:
      n: number of examples; side: crop side (px); joint_valid: [J] bool, the labelled joints
        (J_all = len(joint_valid)); seed: int; is_3d: the label kind.

    Returns:
      dict of numpy arrays with leading n: ``image`` uint8 [n, side, side, 3], ``intrinsics``
      float32 [n, 3, 3], ``coords3d`` float32 [n, J, 3] mm, ``coords2d`` float32 [n, J, 2] px,
      ``joint_valid`` bool [n, J], ``is_3d`` bool [n], ``example_id`` int64 [n].
    """
    for value, label in ((n, 'n'), (side, 'side')):
        if not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f'{label} must be a positive int, got {value!r}')
    valid = np.asarray(joint_valid, bool)
    if valid.ndim != 1 or valid.size == 0:
        raise ValueError(f'joint_valid must be a non-empty [J] bool vector, got shape {valid.shape}')
    rng = np.random.default_rng(_check_seed(seed))
    n_joints = valid.size
    depth = rng.uniform(*SYNTHETIC_DEPTH_RANGE_MM, size=(n, 1))
    coords3d = rng.normal(0.0, SYNTHETIC_SPREAD_MM, (n, n_joints, 3))
    coords3d[..., 2] += depth
    focal = side * depth[:, 0] / SYNTHETIC_PERSON_HEIGHT_MM
    centre = (side - 1) / 2.0
    intrinsics = np.zeros((n, 3, 3))
    intrinsics[:, 0, 0] = intrinsics[:, 1, 1] = focal
    intrinsics[:, :2, 2] = centre
    intrinsics[:, 2, 2] = 1.0
    coords2d = geometry.project_tf(coords3d, intrinsics).numpy()
    return dict(
        image=rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8),
        intrinsics=intrinsics.astype(np.float32),
        coords3d=coords3d.astype(np.float32),
        coords2d=coords2d.astype(np.float32),
        joint_valid=np.broadcast_to(valid, (n, n_joints)).copy(),
        is_3d=np.full(n, bool(is_3d)),
        example_id=np.arange(n, dtype=np.int64),
    )


# ----------------------------------------------------------------------------------------------
# Stateless batches of in-memory arrays
# ----------------------------------------------------------------------------------------------

def stateless_batches(arrays: Sequence[np.ndarray], batch_size: int, seed: int = 0, start_step: int = 0,
                      transform=None) -> tf.data.Dataset:
    """Endless shuffled batches of aligned in-memory arrays, batch ``k`` a pure function of ``k``.

    Batch ``k`` gathers the examples ``posekit.data.lifting.batch_indices(n, batch_size, seed, k)`` (a
    fresh permutation per epoch, no shuffle buffer) from every array, so ``start_step=s`` yields batches
    ``s, s + 1, ...`` at no cost: the ``dataset_fn(start_step)`` contract of
    :func:`posekit.train.loop.train`. Used eagerly or in ``tf.data`` alike.

    Args:
      arrays: one or more arrays with the same first dimension n >= 1 (examples), kept as constants.
      batch_size: examples per batch.
      seed: the shuffling seed (>= 0).
      start_step: the index of the first batch (>= 0).
      transform: optional ``transform(tuple of batch tensors) -> element``, run inside ``Dataset.map``
        (e.g. uint8 images to floats); the batch tuple is the element without it.

    Returns:
      A prefetched ``tf.data.Dataset`` of tuples ``(arrays[0][idx], arrays[1][idx], ...)`` (or their transform).
    """
    from posekit.data.lifting import batch_indices  # the one stateless index stream
    arrays = tuple(arrays)
    lengths = sorted({len(a) for a in arrays})
    if not arrays or len(lengths) != 1 or lengths[0] < 1:
        raise ValueError(f'arrays must be one or more arrays with the same first dimension >= 1; received '
                         f'first dimensions {[len(a) for a in arrays]}')
    for name, value, minimum in (('batch_size', batch_size, 1), ('seed', seed, 0), ('start_step', start_step, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise ValueError(f'{name} must be an int >= {minimum}; received {name}={value!r}')
    constants = [tf.constant(a) for a in arrays]

    def make(step):
        idx = batch_indices(lengths[0], int(batch_size), int(seed), step)
        batch = tuple(tf.gather(c, idx) for c in constants)
        return transform(batch) if transform is not None else batch

    return (tf.data.Dataset.range(int(start_step), np.iinfo(np.int64).max)
            .map(make, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE))
