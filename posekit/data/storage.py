"""HDF5 storage of synthetic datasets: shards, metadata, integrity, reuse and random access.

Layout: ``<out_dir>/<dataset name>/<split>-<k>-of-<n>.h5``, each shard holding a contiguous
range of a split's examples (``first_index`` .. ``first_index + n_examples - 1``), written
atomically (a temporary file in the same folder, then ``os.replace``).

Each shard stores one HDF5 dataset per example field of the data contract (``FIELD_DTYPES``:
``image`` uint8 [N, S, S, 3], contiguous and uncompressed so that readers memory-map it,
``intrinsics`` float32 [N, 3, 3], ``coords3d`` float32 [N, J, 3], ``coords2d`` float32 [N, J, 2],
``joint_valid`` bool [N, J], ``is_3d`` bool, ``dataset`` int32, ``example_id`` int64,
``clip_index`` int32, ``frame_index`` int32), the dataset ``image_sha256`` (uint8 [N, 32], the
SHA-256 of each example's image bytes) and file attributes:

=====================  ======================================================================
attribute              meaning
=====================  ======================================================================
format_tag             ``FORMAT_TAG`` (what makes a file a posekit shard)
schema_version         ``SCHEMA_VERSION`` (int; layout of this module; readers refuse others)
generator_version      :data:`posekit.data.synth.GENERATOR_VERSION` (rendering code version)
name, split            dataset name and split ('train', 'val', 'test')
skeleton               the format the dataset labels (``joint_valid``)
joint_space            JSON list of the formats of ``coords3d``/``coords2d`` (J_all joints)
joint_names            JSON list of the J_all joint-space names
label_kind             '3d' or '2d'
crop_size              S (px, int)
seed                   generation seed
motion_source          where the motion came from (folder or procedural parameters, subjects)
n_examples             examples in this shard; ``split_examples`` in the whole split
first_index            split index of the shard's first example
shard_index, n_shards  position of the shard in its split
dataset_index          the value of the ``dataset`` field
spec_json              the full :class:`~posekit.data.synth.DatasetSpec` as JSON
params_hash            SHA-256 of every generation parameter of this shard (reuse key)
generation             SHA-256 of the parameters shared by all shards of one generation of a split
                       (everything but the shard's range; the shard size included)
=====================  ======================================================================

Integrity (schema version 2). The first ``HEADER_SIZE`` bytes of a shard are the HDF5 user block
(which HDF5 skips); posekit writes there, after the file is complete, an integrity header:
``HEADER_MAGIC``, the SHA-256 of the following JSON, and the JSON: the file size, each HDF5
dataset's byte range and SHA-256 (``image`` excepted: ``image_sha256`` holds one SHA-256 per
example), and the SHA-256 of every other byte (HDF5 structures, dataset headers with dtypes and
shapes, and all attributes). Own checksums rather than HDF5's fletcher32 filter: fletcher32
needs chunked storage (the images could no longer be memory-mapped), covers no attributes and
no file structure, and is checked by libhdf5 only after it has parsed that structure; a
damaged HDF5 structure can make libhdf5 loop forever (the fuzz test found a vlen-string
attribute whose read never returned), so posekit verifies every non-array byte *before*
libhdf5 opens the file. Reading (:func:`open_shard`, :func:`open_dataset`) refuses with
:class:`ShardError` (a ``ValueError`` whose message starts with the file's path and names the
attribute or dataset concerned):

- at open (cheap: a few kB of metadata plus the label arrays, which are read into memory
  anyway): a damaged or missing integrity header, a truncated or extended file, damaged
  metadata (any changed attribute, dataset header or structure), then the format tag, schema
  version (type and value), every attribute's type and range, every dataset's presence, dtype
  (``FIELD_DTYPES``) and shape, each label dataset's SHA-256, finite ``coords3d``/``coords2d``,
  and camera matrices with positive focal lengths and last row (0, 0, 1);
- images (the bulk of a shard) with ``verify='lazy'`` (the default) each example the first time a
  :class:`Shard` serves it (about 30 us per 128 px image on this project's 2-core machine,
  whose CPU hashes SHA-256 at about 1.8 GB/s; later reads cost nothing), or all at open with
  ``verify='full'``.

Files without the header (other writers, posekit before schema version 2) get the same schema
checks (so a float32 ``image`` or an int8 ``coords3d`` is named) and are then refused as
unverifiable; a metadata edit of a written shard is reported as damaged metadata without naming
the attribute, because naming it would mean letting libhdf5 parse the damaged structure.

:func:`ensure_datasets` generates missing shards and reuses existing ones whose ``params_hash``
matches after a full verification. A shard that is ours (it starts with ``HEADER_MAGIC`` or its
``format_tag`` is readable) but damaged, unverifiable or of another schema version is
regenerated (with a :class:`DamagedShardWarning` for damage); a file in the way that is not a
posekit shard raises :class:`ShardError` naming it (unless ``overwrite``). Shards of the same
dataset and split left by a generation with another shard size are removed (if ours), and
:class:`Dataset` accepts only the complete shard set of one ``generation``. :func:`open_shard` /
:func:`open_dataset` give random access (``len()``, ``metadata``, ``[i]`` -> example dict,
``get(indices)`` -> dict of stacked arrays, thread-safe; the pipeline's ``ExampleSource``);
:func:`fingerprint` identifies a dataset's content cheaply (for run records).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import multiprocessing.connection
import os
import re
import sys
import threading
import time
import traceback
import warnings
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import h5py
import numpy as np

from posekit.data import synth

SCHEMA_VERSION = 3  # 2: integrity header (checksums of every byte), image_sha256, generation, typed attributes;
# 3: the skeleton attribute (was skeleton_format)
FORMAT_TAG = 'posekit-synth-shard'
DEFAULT_SHARD_SIZE = 1000
"""Examples per shard (the unit of reuse and of parallel generation)."""
PROGRESS_INTERVAL_S = 2.0
"""Seconds between progress lines on a non-terminal stderr."""
VERIFY_MODES = ('lazy', 'full')
VERIFY_BLOCK = 64
"""Images hashed per read when a whole shard is verified (bounds the memory used)."""

FIELDS = ('image', 'intrinsics', 'coords3d', 'coords2d', 'joint_valid', 'is_3d', 'dataset',
          'example_id', 'clip_index', 'frame_index')
FIELD_DTYPES = {
    'image': np.dtype(np.uint8), 'intrinsics': np.dtype(np.float32), 'coords3d': np.dtype(np.float32),
    'coords2d': np.dtype(np.float32), 'joint_valid': np.dtype(bool), 'is_3d': np.dtype(bool),
    'dataset': np.dtype(np.int32), 'example_id': np.dtype(np.int64), 'clip_index': np.dtype(np.int32),
    'frame_index': np.dtype(np.int32)}
IMAGE_DIGESTS = 'image_sha256'
"""Dataset of per-example SHA-256 digests of the images (uint8 [N, 32])."""
DIGEST_SIZE = 32
REQUIRED_ATTRS = ('format_tag', 'schema_version', 'generator_version', 'name', 'split',
                  'skeleton', 'joint_space', 'joint_names', 'label_kind', 'crop_size', 'seed',
                  'motion_source', 'n_examples', 'split_examples', 'first_index', 'shard_index',
                  'n_shards', 'dataset_index', 'spec_json', 'params_hash', 'generation')
HEADER_SIZE = 2048
"""Bytes of the integrity header (the HDF5 user block, which HDF5 itself never reads)."""
HEADER_MAGIC = b'POSEKIT-SHARD-INTEGRITY-1'

PathLike = Union[str, os.PathLike]


class ShardError(ValueError):
    """A shard that cannot be used: not a posekit shard, another schema version, damaged or invalid.

    The message starts with the file's path and names the attribute or dataset concerned
    (``.path``, ``.where``: e.g. ``"dataset 'coords3d'"`` or None).
    """

    def __init__(self, path: str, problem: str, where: Optional[str] = None):
        super().__init__(f'{path}: {where}: {problem}' if where else f'{path}: {problem}')
        self.path, self.where, self.problem = path, where, problem


class SchemaVersionError(ShardError):
    """A posekit shard of another (or an unreadable) schema version."""


class DamagedShardWarning(UserWarning):
    """A damaged shard of ours was found and is being regenerated."""


# ----------------------------------------------------------------------------------------------
# Checksums and checks shared by writing and reading
# ----------------------------------------------------------------------------------------------

def _sha256(data) -> str:
    return hashlib.sha256(data).hexdigest()


def _array_sha256(array: np.ndarray) -> str:
    return _sha256(np.ascontiguousarray(array).view(np.uint8).reshape(-1).data if array.size else b'')


def _image_digests(images: np.ndarray) -> np.ndarray:
    """uint8 [n, 32]: SHA-256 of each image's bytes."""
    out = np.zeros((len(images), DIGEST_SIZE), np.uint8)
    for i in range(len(images)):
        out[i] = np.frombuffer(hashlib.sha256(np.ascontiguousarray(images[i])).digest(), np.uint8)
    return out


def _attr_value(value):
    if isinstance(value, bytes):
        return value.decode('utf-8')
    if isinstance(value, np.generic):
        return value.item()
    return value


def _describe(value) -> str:
    text = repr(value)
    return f'the {type(value).__name__} {text if len(text) <= 60 else text[:57] + "..."}'


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_attr(path, attrs, key, kind):
    value = attrs[key]
    where = f'attribute {key!r}'
    if not isinstance(value, str):
        raise ShardError(path, f'must be a JSON {kind.__name__}, got {_describe(value)}', where)
    try:
        decoded = json.loads(value)
    except json.JSONDecodeError as e:
        raise ShardError(path, f'is not valid JSON ({e}): {value[:60]!r}', where) from None
    if not isinstance(decoded, kind):
        raise ShardError(path, f'must be a JSON {kind.__name__}, got {_describe(decoded)}', where)
    return decoded


def _check_attrs(path: str, attrs: Mapping) -> Dict:
    """Types and ranges of the attributes (``ShardError`` naming the attribute); returns the metadata
    with ``joint_space``/``joint_names`` decoded."""
    missing = [a for a in REQUIRED_ATTRS if a not in attrs]
    if missing:
        raise ShardError(path, f'missing metadata attributes {missing}')
    meta = dict(attrs)
    for key in ('generator_version', 'name', 'skeleton', 'motion_source', 'params_hash', 'generation'):
        if not isinstance(meta[key], str):
            raise ShardError(path, f'must be a str, got {_describe(meta[key])}', f'attribute {key!r}')
    choices = {'split': synth.SPLITS, 'label_kind': ('3d', '2d')}
    for key, allowed in choices.items():
        if not isinstance(meta[key], str) or meta[key] not in allowed:
            raise ShardError(path, f'must be one of {allowed}, got {_describe(meta[key])}', f'attribute {key!r}')
    minimum = dict(crop_size=1, seed=0, n_examples=0, split_examples=0, first_index=0, shard_index=0,
                   n_shards=1, dataset_index=0)
    for key, low in minimum.items():
        if not _is_int(meta[key]) or meta[key] < low:
            raise ShardError(path, f'must be an int >= {low}, got {_describe(meta[key])}', f'attribute {key!r}')
    for key in ('joint_space', 'joint_names'):
        meta[key] = _json_attr(path, attrs, key, list)
        if not meta[key] or not all(isinstance(v, str) for v in meta[key]):
            raise ShardError(path, f'must be a non-empty JSON list of str, got {meta[key]!r:.80}', f'attribute {key!r}')
    _json_attr(path, attrs, 'spec_json', dict)
    if meta['first_index'] + meta['n_examples'] > meta['split_examples']:
        raise ShardError(path, f'examples {meta["first_index"]}..{meta["first_index"] + meta["n_examples"] - 1} '
                               f'exceed split_examples = {meta["split_examples"]}', "attribute 'n_examples'")
    if meta['shard_index'] >= meta['n_shards']:
        raise ShardError(path, f'shard_index {meta["shard_index"]} >= n_shards {meta["n_shards"]}',
                         "attribute 'shard_index'")
    return meta


def _example_shapes(meta: Mapping) -> Dict[str, Tuple[int, ...]]:
    s, j = int(meta['crop_size']), len(meta['joint_names'])
    return {'image': (s, s, 3), 'intrinsics': (3, 3), 'coords3d': (j, 3), 'coords2d': (j, 2),
            'joint_valid': (j,), 'is_3d': (), 'dataset': (), 'example_id': (), 'clip_index': (),
            'frame_index': (), IMAGE_DIGESTS: (DIGEST_SIZE,)}


def _check_layout(path: str, name: str, dtype, shape, meta: Mapping) -> None:
    """dtype and shape of one dataset against the schema (``ShardError`` naming it)."""
    expected_dtype = FIELD_DTYPES.get(name, np.dtype(np.uint8))
    where = f'dataset {name!r}'
    if np.dtype(dtype) != expected_dtype:
        raise ShardError(path, f'has dtype {np.dtype(dtype)}, expected {expected_dtype}', where)
    per_example = _example_shapes(meta)[name]
    if tuple(shape[1:]) != per_example:
        raise ShardError(path, f'has per-example shape {tuple(shape[1:])}, expected {per_example}', where)
    if shape[0] != meta['n_examples']:
        raise ShardError(path, f'truncated arrays: {name} has {shape[0]} rows, expected n_examples = '
                               f'{meta["n_examples"]}', where)


def _check_values(path: str, labels: Mapping[str, np.ndarray], meta: Mapping) -> None:
    """Label values a shard must never hold: non-finite coordinates, impossible camera matrices."""
    for key in ('coords3d', 'coords2d'):
        bad = ~np.isfinite(labels[key]).all(axis=tuple(range(1, labels[key].ndim)))
        if bad.any():
            i = int(np.argmax(bad))
            raise ShardError(path, f'example {i} holds non-finite coordinates (NaN or inf)', f'dataset {key!r}')
    k = labels['intrinsics'].astype(np.float64)
    ok = (np.isfinite(k).all(axis=(1, 2)) & (k[:, 0, 0] > 0) & (k[:, 1, 1] > 0)
          & np.all(k[:, 2] == [0.0, 0.0, 1.0], axis=-1) & (k[:, 1, 0] == 0))
    if not ok.all():
        i = int(np.argmax(~ok))
        raise ShardError(path, f'example {i} is not a camera matrix (finite, focal lengths > 0, last row '
                               f'(0, 0, 1)): {k[i].tolist()}', "dataset 'intrinsics'")
    if np.any(labels['dataset'] != meta['dataset_index']):
        raise ShardError(path, f'values differ from dataset_index = {meta["dataset_index"]}', "dataset 'dataset'")


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------

def _header_error(path: str, problem: str) -> ShardError:
    return ShardError(path, f'integrity header damaged ({problem}); regenerate the shard')


def _load_header(path: str) -> Optional[Dict]:
    """The shard's verified integrity header (JSON in the HDF5 user block), or None if the file does
    not start with ``HEADER_MAGIC`` (not written by posekit with schema version 2 or later)."""
    with open(path, 'rb') as f:
        block = f.read(HEADER_SIZE)
    if not block.startswith(HEADER_MAGIC + b'\n'):
        return None
    parts = block[len(HEADER_MAGIC) + 1:].split(b'\n', 2)
    if len(parts) < 3 or len(block) < HEADER_SIZE:
        raise _header_error(path, 'truncated')
    digest, text = parts[0], parts[1]
    if hashlib.sha256(text).hexdigest().encode('ascii') != digest:
        raise _header_error(path, 'its SHA-256 does not match')
    try:
        header = json.loads(text.decode('utf-8'))
        arrays = header['arrays']
        ranges = sorted((int(a['offset']), int(a['size'])) for a in arrays.values() if a['offset'] is not None)
        file_size, metadata_sha256 = int(header['file_size']), str(header['metadata_sha256'])
        assert isinstance(arrays, dict) and all(isinstance(a.get('sha256'), (str, type(None))) for a in arrays.values())
    except Exception as e:  # noqa: BLE001 - any malformed header
        raise _header_error(path, f'{type(e).__name__}: {e}') from None
    end = HEADER_SIZE
    for offset, size in ranges:
        if offset < end or size < 0:
            raise _header_error(path, f'overlapping array ranges at byte {offset}')
        end = offset + size
    if end > file_size:
        raise _header_error(path, f'array ranges beyond the recorded file size {file_size}')
    actual = os.path.getsize(path)
    if actual != file_size:
        raise ShardError(path, f'truncated file: {actual} bytes, {file_size} when written'
                         if actual < file_size else f'{actual - file_size} bytes appended after writing')
    header['ranges'], header['integrity_sha256'] = ranges, digest.decode('ascii')
    return header


def _metadata_sha256(path: str, ranges: Sequence[Tuple[int, int]], file_size: int) -> str:
    """SHA-256 of every byte after the header that is not array data (HDF5 structures, attributes)."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        position = HEADER_SIZE
        for offset, size in list(ranges) + [(file_size, 0)]:
            f.seek(position)
            remaining = offset - position
            while remaining > 0:
                block = f.read(min(remaining, 1 << 20))
                if not block:
                    break
                digest.update(block)
                remaining -= len(block)
            position = offset + size
    return digest.hexdigest()


def _verify_envelope(path: str) -> Optional[Dict]:
    """Checks the header and every non-array byte *before* libhdf5 parses the file (damaged HDF5
    structures can make it loop or fail in unexpected ways). None for files without a header."""
    if not os.path.exists(path):
        raise FileNotFoundError(f'dataset shard {path!r} does not exist')
    header = _load_header(path)
    if header is None:
        try:
            is_hdf5 = h5py.is_hdf5(path)
        except OSError as e:
            raise ShardError(path, f'cannot read the file as HDF5 ({e})') from None
        if not is_hdf5:
            raise ShardError(path, 'not an HDF5 file (no HDF5 signature); not a posekit dataset shard')
        return None
    if _metadata_sha256(path, header['ranges'], header['file_size']) != header['metadata_sha256']:
        raise ShardError(path, 'HDF5 metadata damaged: the file attributes, array headers or file structure '
                               'differ from the SHA-256 recorded when the shard was written; regenerate it')
    return header


def _read_attrs(path: str, f: h5py.File, header: Optional[Dict]) -> Dict:
    """The checked metadata dict (attributes; ``integrity_sha256`` from the header)."""
    attrs = {}
    for key in f.attrs.keys():
        try:
            attrs[key] = _attr_value(f.attrs[key])
        except Exception as e:  # noqa: BLE001 - an undecodable attribute
            raise ShardError(path, f'unreadable ({type(e).__name__}: {e})', f'attribute {key!r}') from None
    tag = attrs.get('format_tag')
    if tag != FORMAT_TAG:
        raise ShardError(path, f'not a posekit dataset shard (attribute format_tag is {tag!r:.80}, expected '
                               f'{FORMAT_TAG!r}); a foreign HDF5 file?')
    if 'schema_version' not in attrs:
        raise SchemaVersionError(path, 'missing schema_version attribute')
    version = attrs['schema_version']
    if not _is_int(version):
        raise SchemaVersionError(path, f'is {_describe(version)}, expected an int (this posekit reads schema '
                                       f'version {SCHEMA_VERSION})', "attribute 'schema_version'")
    if version != SCHEMA_VERSION:
        raise SchemaVersionError(path, f'schema version {version}, this posekit reads schema version '
                                       f'{SCHEMA_VERSION}; regenerate it (tools/make_datasets.py)')
    unknown = sorted(set(attrs) - set(REQUIRED_ATTRS))
    if unknown:
        raise ShardError(path, f'unexpected metadata attributes {unknown}')
    meta = _check_attrs(path, attrs)
    meta['integrity_sha256'] = header['integrity_sha256'] if header else None
    return meta


def _check_datasets(path: str, f: h5py.File, meta: Mapping, header: Optional[Mapping]) -> None:
    """Presence, dtypes, shapes and storage of the arrays; then, for a file without an integrity header
    (whose attributes and arrays passed every check), ``ShardError``: it cannot be verified."""
    names = set(f.keys())
    expected = FIELDS + (IMAGE_DIGESTS,)
    absent = [k for k in expected if k not in names]
    if absent:
        raise ShardError(path, f'missing arrays {absent}')
    extra = sorted(names - set(expected))
    if extra:
        raise ShardError(path, f'unexpected arrays {extra} (not in schema version {SCHEMA_VERSION})')
    for key in expected:
        ds = f[key]
        if not isinstance(ds, h5py.Dataset):
            raise ShardError(path, f'is a {type(ds).__name__}, expected an array', f'dataset {key!r}')
        _check_layout(path, key, ds.dtype, ds.shape, meta)
        if header is None:
            continue
        recorded = header['arrays'].get(key)
        size = ds.id.get_storage_size()
        if (recorded is None or recorded['size'] != size or (size and recorded['offset'] != ds.id.get_offset())
                or ds.chunks is not None
                or (key != 'image' and recorded['sha256'] is None)):
            raise ShardError(path, 'stored differently from what the integrity header records (contiguous '
                                   'storage at the recorded place)', f'dataset {key!r}')
    if header is None:
        raise ShardError(path, f'integrity header missing (the first {HEADER_SIZE} bytes do not start with '
                               f'{HEADER_MAGIC.decode()}): damaged, or not written by posekit')


def _file_error(path: str, e: Exception) -> ShardError:
    return ShardError(path, f'corrupt or truncated HDF5 file ({type(e).__name__}: {e})')


def read_metadata(path: PathLike) -> Dict:
    """The validated metadata of a shard (file attributes, JSON fields decoded, ``integrity_sha256``).

    Checks the integrity header, every byte that is not array data (HDF5 structures and
    attributes) against its SHA-256, the attributes' types and ranges, and the arrays' presence,
    dtypes, shapes and places, not the array contents (:func:`open_shard` does).

    Raises:
      FileNotFoundError: no such file.
      ShardError (a ValueError): naming the file and the attribute or dataset: not HDF5,
        unreadable/corrupt, not a posekit shard, another schema version, damaged metadata,
        mistyped attributes, missing, mistyped or truncated arrays.
    """
    path = os.fspath(path)
    header = _verify_envelope(path)
    try:
        with h5py.File(path, 'r') as f:
            meta = _read_attrs(path, f, header)
            _check_datasets(path, f, meta, header)
            return meta
    except ShardError:
        raise
    except Exception as e:  # noqa: BLE001 - h5py raises many types for damaged files
        raise _file_error(path, e) from None


def is_posekit_shard(path: PathLike) -> bool:
    """True if ``path`` starts with posekit's integrity header or is an HDF5 file whose
    ``format_tag`` says it is a posekit shard (whatever its state otherwise): a file that
    :func:`ensure_datasets` may replace."""
    path = os.fspath(path)
    try:
        with open(path, 'rb') as f:
            if f.read(len(HEADER_MAGIC)) == HEADER_MAGIC:
                return True
        with h5py.File(path, 'r') as f:
            return _attr_value(f.attrs['format_tag']) == FORMAT_TAG
    except Exception:  # noqa: BLE001 - unreadable: not provably ours
        return False


def _seal(path: str) -> str:
    """Writes the integrity header of a closed shard file (array places and checksums, SHA-256 of the
    other bytes) into its user block; returns the header's SHA-256."""
    arrays = {}
    with h5py.File(path, 'r') as f:
        if f.userblock_size != HEADER_SIZE:
            raise ValueError(f'{path}: the HDF5 user block has {f.userblock_size} bytes, expected {HEADER_SIZE}')
        for key in f:
            ds = f[key]
            size = int(ds.id.get_storage_size())  # empty arrays have no storage (and no valid offset)
            arrays[key] = dict(offset=ds.id.get_offset() if size else None, size=size,
                               sha256=None if key == 'image' else _array_sha256(ds[...]))
    file_size = os.path.getsize(path)
    ranges = sorted((a['offset'], a['size']) for a in arrays.values() if a['offset'] is not None)
    header = dict(file_size=file_size, arrays=arrays, metadata_sha256=_metadata_sha256(path, ranges, file_size))
    text = json.dumps(header, sort_keys=True, separators=(',', ':')).encode('utf-8')
    digest = hashlib.sha256(text).hexdigest().encode('ascii')
    block = HEADER_MAGIC + b'\n' + digest + b'\n' + text + b'\n'
    if len(block) > HEADER_SIZE:
        raise ValueError(f'{path}: integrity header of {len(block)} bytes exceeds {HEADER_SIZE}')
    with open(path, 'r+b') as f:
        f.write(block.ljust(HEADER_SIZE, b'\0'))
    return digest.decode('ascii')


class Shard:
    """Random access to one shard (``open_shard``); thread-safe and fork-safe.

    Label fields are read into memory and verified when opened; images are memory-mapped (the
    file's contiguous image array; pages are read on demand and cached by the OS), or loaded with
    ``in_memory=True``. Each image is checked against its recorded SHA-256 the first time this
    object serves it (``verify='lazy'``) or all at open (``verify='full'``; also with
    ``in_memory``); a mismatch raises :class:`ShardError` naming the file, ``'image'`` and the
    example.

    Attributes:
      path: the file; metadata: dict of its attributes (see the module docstring).
    """

    def __init__(self, path: PathLike, in_memory: bool = False, verify: str = 'lazy'):
        if verify not in VERIFY_MODES:
            raise ValueError(f'verify must be one of {VERIFY_MODES}, got {verify!r}')
        self.path = os.fspath(path)
        header = _verify_envelope(self.path)
        self._lock = threading.Lock()
        self._file = None
        self._pid = None
        try:
            with h5py.File(self.path, 'r') as f:
                self.metadata = _read_attrs(self.path, f, header)
                _check_datasets(self.path, f, self.metadata, header)
                self._labels = {}
                for key in [k for k in FIELDS if k != 'image'] + [IMAGE_DIGESTS]:
                    value = f[key][...]
                    if _array_sha256(value) != header['arrays'][key]['sha256']:
                        raise ShardError(self.path, 'damaged (the SHA-256 of its array differs from the one '
                                                    'recorded when the shard was written)', f'dataset {key!r}')
                    self._labels[key] = value
                self._digests = self._labels.pop(IMAGE_DIGESTS)
                _check_values(self.path, self._labels, self.metadata)
                image = f['image']
                self._image_shape = image.shape
                offset = image.id.get_offset()
                contiguous = image.chunks is None and image.compression is None and offset is not None
                if in_memory or not contiguous:
                    self._images = image[...] if (in_memory or image.shape[0] == 0) else None
                else:
                    self._images = None
                self._image_offset = offset if contiguous else None
        except ShardError:
            raise
        except Exception as e:  # noqa: BLE001 - h5py raises many types for damaged files
            raise _file_error(self.path, e) from None
        self._verified = np.zeros(len(self), bool)
        if self._images is None and self._image_offset is not None:
            self._images = np.memmap(self.path, np.uint8, 'r', self._image_offset, self._image_shape)
        if in_memory or verify == 'full':
            self.verify()

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

    def _verify_rows(self, indices: np.ndarray, rows: np.ndarray) -> None:
        """Checks ``rows`` (the images of ``indices``) not yet verified against their digests."""
        for t in np.nonzero(~self._verified[indices])[0]:
            i = int(indices[t])
            if hashlib.sha256(np.ascontiguousarray(rows[t])).digest() != self._digests[i].tobytes():
                raise ShardError(self.path, f'example {i} is damaged (the SHA-256 of its image differs from '
                                            f'the one recorded when the shard was written)', "dataset 'image'")
            self._verified[i] = True

    def _read_images(self, unique: np.ndarray) -> np.ndarray:
        if self._images is not None:
            return np.asarray(self._images[unique])
        with self._lock:
            try:
                return self._h5()['image'][unique] if unique.size else np.zeros(
                    (0,) + tuple(self._image_shape[1:]), np.uint8)
            except Exception as e:  # noqa: BLE001
                raise _file_error(self.path, e) from None

    def images(self, indices) -> np.ndarray:
        """uint8 [n, S, S, 3] images of ``indices`` (any order, repeats allowed)."""
        indices = self._check_indices(indices)
        if self._images is not None:  # memory-mapped or in memory: any order
            data = np.asarray(self._images[indices])
            if not self._verified[indices].all():
                self._verify_rows(indices, data)
            return data
        unique, inverse = np.unique(indices, return_inverse=True)  # h5py reads need increasing indices
        data = self._read_images(unique)
        self._verify_rows(unique, data)
        return data[inverse.reshape(-1)]

    def verify(self) -> None:
        """Checks every image not yet verified (``ShardError`` naming the first damaged example)."""
        for start in range(0, len(self), VERIFY_BLOCK):
            block = np.arange(start, min(start + VERIFY_BLOCK, len(self)))
            block = block[~self._verified[block]]
            if block.size:
                self._verify_rows(block, self._read_images(block))

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


def open_shard(path: PathLike, in_memory: bool = False, verify: str = 'lazy') -> Shard:
    """Opens and validates one shard (see :class:`Shard`).

    Args:
      verify: 'lazy' (each image checked when first read) or 'full' (all images checked now).

    Raises:
      FileNotFoundError: no such file.
      ShardError (a ValueError): naming the file and attribute or dataset (see the module docstring).
    """
    return Shard(path, in_memory, verify)


def read_shard(path: PathLike) -> Tuple[Dict[str, np.ndarray], Dict]:
    """(all arrays of a shard, its metadata); every image verified."""
    with open_shard(path) as shard:
        return shard.arrays(), shard.metadata


class Dataset:
    """The shards of one generation of a dataset split as one indexable source (``open_dataset``).

    Same interface as :class:`Shard`: ``len()``, ``metadata`` (the first shard's, with
    ``n_examples`` summed), ``[i]``, ``get(indices)``, ``arrays()``; thread-safe. The shards must be
    exactly the ``n_shards`` shards of one ``generation`` (``ValueError`` otherwise), so that shards
    left from generating with another shard size are never combined with the current ones.
    """

    def __init__(self, shards: Sequence[Shard]):
        if not shards:
            raise ValueError('a dataset needs at least one shard, got none')
        self.shards = sorted(shards, key=lambda s: s.metadata['first_index'])
        names = {(s.metadata['name'], s.metadata['split']) for s in self.shards}
        if len(names) != 1:
            raise ValueError(f'shards must belong to one dataset split, got {sorted(names)}')
        generations = {}
        for s in self.shards:
            generations.setdefault(s.metadata['generation'], []).append(s.path)
        if len(generations) != 1:
            groups = '; '.join(f'{len(p)} shard(s) like {os.path.basename(p[0])}' for p in generations.values())
            raise ValueError(f'shards of {len(generations)} different generations of {names.pop()} cannot be '
                             f'combined ({groups}); use the shards of one generation (ensure_datasets returns them)')
        first = self.shards[0].metadata
        positions = [s.metadata['shard_index'] for s in self.shards]
        starts = [s.metadata['first_index'] for s in self.shards]
        expected_starts = np.concatenate([[0], np.cumsum([len(s) for s in self.shards])[:-1]]).tolist()
        if (positions != list(range(first['n_shards'])) or starts != expected_starts
                or sum(len(s) for s in self.shards) != first['split_examples']):
            raise ValueError(f'incomplete or inconsistent shards of {first["name"]}/{first["split"]}: got shard '
                             f'indices {positions} starting at examples {starts}, expected all {first["n_shards"]} '
                             f'shards of {first["split_examples"]} examples ({self.shards[0].path} ...)')
        self.offsets = np.concatenate([[0], np.cumsum([len(s) for s in self.shards])]).astype(np.int64)
        self.metadata = dict(first)
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
                 split: Optional[str] = None, in_memory: bool = False, verify: str = 'lazy') -> Dataset:
    """A dataset split (the shards of one generation) as one indexable source.

    Args:
      paths: a list of shard paths (e.g. ``ensure_datasets(...)[name][split]``), or an output
        folder together with ``name`` and ``split`` (its ``<split>-<k>-of-<n>.h5`` files must all
        belong to one generation).
      in_memory: load the images into memory too.
      verify: see :func:`open_shard`.

    Raises:
      FileNotFoundError: no such folder or shard.
      ValueError: a damaged or foreign shard (:class:`ShardError`), or shards that are not exactly
        the shards of one generation.
    """
    if isinstance(paths, (str, os.PathLike)):
        if name is None or split is None:
            raise ValueError(f'name and split are needed with a folder, got name={name!r}, split={split!r}')
        folder = os.path.join(os.fspath(paths), name)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f'no dataset folder {folder!r}')
        files = _split_files(folder, split)
        if not files:
            raise FileNotFoundError(f'no {split} shards in {folder!r}')
        paths = [os.path.join(folder, f) for f in files]
    shards = [open_shard(p, in_memory, verify) for p in paths]
    return Dataset(shards)


def _split_files(folder: str, split: str) -> List[str]:
    pattern = re.compile(rf'^{re.escape(split)}-\d+-of-\d+\.h5$')
    return sorted(f for f in os.listdir(folder) if pattern.match(f))


def fingerprint(paths: Sequence[PathLike]) -> str:
    """SHA-256 (hex) identifying the content of shards: their integrity headers, whose checksums cover
    every byte (the metadata is verified, the arrays are not read)."""
    entries = []
    for p in paths:
        meta = read_metadata(p)
        entries.append([meta['name'], meta['split'], meta['shard_index'], meta['n_shards'],
                        meta['integrity_sha256']])
    return params_hash({'shards': sorted(entries)})


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------

def _encode_attrs(metadata: Mapping) -> Dict:
    attrs = {}
    for k, v in metadata.items():
        if isinstance(v, (list, tuple, dict)):
            v = json.dumps(v)
        elif isinstance(v, np.generic):
            v = v.item()
        attrs[k] = v
    return attrs


def write_shard(path: PathLike, arrays: Mapping[str, np.ndarray], metadata: Mapping) -> str:
    """Writes one shard atomically (temporary file + ``os.replace``) with its checksums.

    Args:
      path: destination file.
      arrays: every field of ``FIELDS`` with the same leading N and the dtypes of ``FIELD_DTYPES``.
      metadata: every attribute of ``REQUIRED_ATTRS`` except ``format_tag`` and
        ``schema_version`` (added here); lists/dicts are stored as JSON.

    Raises:
      ValueError: missing or mistyped arrays or attributes, or label values a shard must not hold
        (non-finite coordinates, impossible camera matrices), naming the field.
      OSError: the file cannot be written (e.g. a full disk), naming ``path``.
    """
    path = os.fspath(path)
    missing = [k for k in FIELDS if k not in arrays]
    if missing:
        raise ValueError(f'arrays must contain the fields {list(FIELDS)}; missing {missing}')
    arrays = {k: np.asarray(arrays[k]) for k in FIELDS}
    lengths = {k: v.shape[0] if v.ndim else None for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f'arrays must share their leading length, got {lengths}')
    attrs = _encode_attrs(metadata)
    attrs['format_tag'] = FORMAT_TAG
    attrs['schema_version'] = SCHEMA_VERSION
    extra = sorted(set(attrs) - set(REQUIRED_ATTRS))
    if extra:
        raise ValueError(f'metadata has unknown attributes {extra}; known: {list(REQUIRED_ATTRS)}')
    if attrs.get('n_examples') != lengths['image']:
        raise ValueError(f'metadata n_examples={attrs.get("n_examples")} but arrays hold {lengths["image"]} examples')
    meta = _check_attrs(path, attrs)
    for key, value in arrays.items():
        _check_layout(path, key, value.dtype, value.shape, meta)
    _check_values(path, arrays, meta)
    datasets = dict(arrays)
    datasets[IMAGE_DIGESTS] = _image_digests(arrays['image'])
    folder = os.path.dirname(os.path.abspath(path))
    tmp = f'{path}.tmp-{os.getpid()}'
    try:
        os.makedirs(folder, exist_ok=True)
        with h5py.File(tmp, 'w', track_order=True, userblock_size=HEADER_SIZE) as f:
            for k, v in attrs.items():
                f.attrs[k] = v
            for k in FIELDS + (IMAGE_DIGESTS,):  # contiguous, uncompressed: readers memory-map the images
                f.create_dataset(k, data=datasets[k], track_times=False)
        _seal(tmp)
        os.replace(tmp, path)
    except OSError as e:
        message = f'cannot write dataset shard {path}: {e.strerror or e}'
        raise (OSError(e.errno, message) if e.errno else OSError(message)) from e
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


def _generate_shard(job, motion: Mapping[Tuple[str, Tuple[str, ...]], synth.PreparedMotion]) -> str:
    spec_json, split, first, count, path, metadata, seed, dataset_index, progress = job
    spec = synth.DatasetSpec.from_json(spec_json)
    bar = Progress(f'{spec.name}/{split} {os.path.basename(path)}', count) if progress else None
    arrays = synth.generate_examples(
        spec, motion[(split, spec.formats)], split, first, count, seed, dataset_index,
        progress=(lambda done: bar.update(done)) if bar else None)
    if bar and count == 0:
        bar.update(0)
    return write_shard(path, arrays, metadata)


def _worker(jobs, motion, conn) -> None:
    """A forked generator process: its ``jobs`` and the ``motion`` are inherited from the parent
    (fork, no pickling); results and errors go back through ``conn``."""
    for job in jobs:
        try:
            conn.send(('ok', _generate_shard(job, motion)))
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            try:
                conn.send(('error', e, traceback.format_exc()))
            except Exception:  # noqa: BLE001 - an unpicklable exception
                conn.send(('error', RuntimeError(f'{type(e).__name__}: {e}'), traceback.format_exc()))
            break
    conn.close()


def _generate_in_processes(jobs: Sequence, motion: Mapping, workers: int) -> None:
    """Runs ``jobs`` in ``workers`` forked processes (largest first, each to the least loaded one)."""
    context = multiprocessing.get_context('fork')
    shares: List[List] = [[] for _ in range(min(workers, len(jobs)))]
    loads = [0] * len(shares)
    for job in sorted(jobs, key=lambda j: -j[3]):
        k = int(np.argmin(loads))
        shares[k].append(job)
        loads[k] += max(job[3], 1)
    processes, pipes = [], {}
    try:
        for share in shares:
            receiver, sender = context.Pipe(duplex=False)
            process = context.Process(target=_worker, args=(share, motion, sender), daemon=True)
            process.start()
            sender.close()
            processes.append(process)
            pipes[receiver] = process
        done = 0
        waiting = dict(pipes)
        while done < len(jobs):
            if not waiting:
                raise RuntimeError(f'shard generation stopped after {done} of {len(jobs)} shards')
            for conn in multiprocessing.connection.wait(list(waiting)):
                try:
                    message = conn.recv()
                except EOFError:  # the worker exited
                    process = waiting.pop(conn)
                    process.join()
                    if process.exitcode != 0:
                        raise RuntimeError(f'a shard-generating worker process died (exit code '
                                           f'{process.exitcode}) after {done} of {len(jobs)} shards') from None
                    continue
                if message[0] == 'error':
                    error, trace = message[1], message[2]
                    if hasattr(error, 'add_note'):
                        error.add_note(f'in a shard-generating worker process:\n{trace}')
                    raise error
                done += 1
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join()
        for conn in pipes:
            conn.close()


def _remove_superseded(folder: str, split: str, keep: Sequence[str], name: str, log) -> None:
    """Removes this split's shards of other generations (another shard size) that are ours."""
    if not os.path.isdir(folder):
        return
    keep = {os.path.basename(p) for p in keep}
    for file in _split_files(folder, split):
        if file in keep:
            continue
        path = os.path.join(folder, file)
        if is_posekit_shard(path):
            os.remove(path)
            log(f'{path}: removed (a shard of an earlier generation of {name}/{split})')
        else:
            warnings.warn(f'{path}: not a posekit shard in the dataset folder; left in place (open_dataset '
                          f'with the folder will refuse it)', DamagedShardWarning, stacklevel=3)


def _reusable(path: str, digest: str, log) -> bool:
    """True if the shard at ``path`` (which exists) is intact and has ``params_hash == digest``; False
    if it is ours to regenerate; ShardError if it is a file that is not ours."""
    try:
        if read_metadata(path)['params_hash'] != digest:  # cheap: no array is read
            log(f'{path}: generation parameters changed, regenerating')
            return False
        open_shard(path, verify='full').close()
        return True
    except ShardError as e:
        if not is_posekit_shard(path):
            raise
        if isinstance(e, SchemaVersionError):
            log(f'{path}: {e.problem}: regenerating')
        else:
            warnings.warn(f'{e}; regenerating it', DamagedShardWarning, stacklevel=3)
        return False


def ensure_datasets(out_dir: PathLike, specs: Sequence[synth.DatasetSpec], seed: int = 0,
                    mocap_dir: Optional[str] = None, test_mocap_dir: Optional[str] = None,
                    splits: Sequence[str] = synth.SPLITS, shard_size: int = DEFAULT_SHARD_SIZE,
                    workers: int = 1, progress: bool = True, overwrite: bool = False,
                    max_frames_per_clip: Optional[int] = None,
                    log: Optional[Callable[[str], None]] = None) -> Dict[str, Dict[str, List[str]]]:
    """Makes sure every split of every dataset exists as intact HDF5 shards; returns their paths.

    Existing shards are verified in full (every checksum, every image) and reused when their
    ``params_hash`` equals the hash of the current generation parameters (spec, split, shard
    range and size, seed, motion source, schema and generator versions). Shards of ours with other
    parameters or of another schema version are regenerated; damaged ones too, with a
    :class:`DamagedShardWarning` naming the file and the attribute or dataset; a file in the way
    that is not a posekit shard raises :class:`ShardError` naming it (unless ``overwrite``).
    Shards of the same split left by a generation with another shard size are removed (if ours).

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
        after the motion is loaded and inherit it; call this before starting TensorFlow work in the
        process (a forked child of a process with live TF threads is fragile), or use ``workers=1``.
      progress: print progress bars to stderr.
      overwrite: regenerate every shard, replacing whatever file is in the way.
      max_frames_per_clip: subsample long BVH clips (faster loading).
      log: callable for messages (default: print to stderr when ``progress``).

    Returns:
      {dataset name: {split: [shard paths]}}.

    Raises:
      ShardError (a ValueError): a file in the way that is not a posekit shard.
      OSError: a shard cannot be written (e.g. a full disk), naming the file.
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
    motion_fingerprint = source.fingerprint(int(seed))
    result: Dict[str, Dict[str, List[str]]] = {}
    tasks = []
    for dataset_index, spec in enumerate(specs):
        result[spec.name] = {}
        for split in splits:
            ranges = shard_ranges(spec.n_examples(split), shard_size)
            generation = params_hash(dict(
                schema_version=SCHEMA_VERSION, generator_version=synth.GENERATOR_VERSION,
                spec=json.loads(spec.to_json()), split=split, split_examples=spec.n_examples(split),
                shard_size=shard_size, seed=int(seed), dataset_index=dataset_index, motion=motion_fingerprint))
            paths = []
            for k, (first, count) in enumerate(ranges):
                path = shard_path(out_dir, spec.name, split, k, len(ranges))
                digest = params_hash(dict(generation=generation, first_index=first, count=count))
                paths.append(path)
                if os.path.exists(path) and not overwrite and _reusable(path, digest, log):
                    continue
                metadata = dict(
                    generator_version=synth.GENERATOR_VERSION, name=spec.name, split=split,
                    skeleton=spec.skeleton, joint_space=list(spec.formats),
                    joint_names=list(spec.joint_space.names), label_kind=spec.label_kind,
                    crop_size=spec.crop_size, seed=int(seed), motion_source='', n_examples=count,
                    split_examples=spec.n_examples(split), first_index=first, shard_index=k,
                    n_shards=len(ranges), dataset_index=dataset_index, spec_json=spec.to_json(),
                    params_hash=digest, generation=generation)
                tasks.append((spec, split, first, count, path, metadata, dataset_index))
            result[spec.name][split] = paths
    if not tasks:
        log(f'posekit datasets in {os.fspath(out_dir)}: all {sum(len(p) for d in result.values() for p in d.values())} '
            f'shards up to date (reused)')
        _remove_all_superseded(out_dir, result, log)
        return result

    t0 = time.monotonic()
    log(f'loading motion ({"procedural" if not mocap_dir else mocap_dir})')
    motion_splits = source.load(int(seed))
    motion: Dict[Tuple[str, Tuple[str, ...]], synth.PreparedMotion] = {}
    for split, formats in sorted({(split, spec.formats) for spec, split, *_ in tasks}):
        clips = motion_splits.clips(split)
        if not clips:
            raise ValueError(f'no motion clips for split {split!r} ({motion_splits.description})')
        motion[(split, formats)] = synth.PreparedMotion(clips, formats)
    log(f'motion ready in {time.monotonic() - t0:.1f} s: {motion_splits.description}')
    jobs = []
    for spec, split, first, count, path, metadata, dataset_index in tasks:
        metadata = dict(metadata)
        metadata['motion_source'] = (f'{motion_splits.description}; {split}: '
                                     f'{motion[(split, spec.formats)].description()}')
        jobs.append((spec.to_json(), split, first, count, path, metadata, int(seed), dataset_index, progress))
    n_examples = sum(j[3] for j in jobs)
    t1 = time.monotonic()
    if workers == 1 or len(jobs) == 1:
        for job in jobs:
            _generate_shard(job, motion)
    else:
        _generate_in_processes(jobs, motion, workers)
    elapsed = time.monotonic() - t1
    log(f'generated {len(jobs)} shards, {n_examples} examples in {elapsed:.1f} s '
        f'({n_examples / max(elapsed, 1e-9):.0f} ex/s with {workers} worker(s)) in {os.fspath(out_dir)}')
    _remove_all_superseded(out_dir, result, log)
    return result


def _remove_all_superseded(out_dir, result: Mapping[str, Mapping[str, List[str]]], log) -> None:
    for name, by_split in result.items():
        for split, paths in by_split.items():
            _remove_superseded(os.path.join(os.fspath(out_dir), name), split, paths, name, log)
