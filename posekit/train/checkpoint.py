"""Atomic, keep-last-k checkpoints of named NumPy arrays plus JSON metadata.

Layout: ``<directory>/ckpt-<step:09d>/{state.npz, meta.json}``. A checkpoint is written into a hidden
temporary directory (``.tmp-...``) whose files are fsync'ed, then renamed to its final name (an atomic
``rename(2)`` on POSIX file systems) and the parent directory fsync'ed. A process killed at any point
(even SIGKILL) therefore leaves either the complete new checkpoint or none, and never damages older ones.
Pruning renames old checkpoints to ``.trash-...`` before deleting them, so a half-deleted checkpoint is
never mistaken for a complete one.

Temporary and trash directories are named ``.tmp-<step>-h<host tag>-p<pid>-<random>`` (and
``.trash-<checkpoint>-h<host tag>-p<pid>-<random>``): the next save removes only those of its own process
and those left by dead processes of the same host (:func:`remove_stale`), never another live process's
checkpoint being written. (One run per folder is what :class:`posekit.train.rundir.RunLock` enforces.)

These are plain functions on arrays; :mod:`posekit.train.loop` decides what goes in (model, optimizer
and RNG state).
"""
import json
import os
import re
import shutil
import uuid

import numpy as np

from posekit.train import rundir

CHECKPOINT_PREFIX = 'ckpt-'
STATE_FILE = 'state.npz'
META_FILE = 'meta.json'
_TMP_PREFIX = '.tmp-'
_TRASH_PREFIX = '.trash-'
_NAME_RE = re.compile(r'^ckpt-(\d+)$')
_OWNED_RE = re.compile(r'^\.(?:tmp|trash)-.+-h(?P<host>[0-9a-f]{8})-p(?P<pid>\d+)-[0-9a-f]{8}$')
_LEGACY_TMP_RE = re.compile(r'^\.tmp-\d+-(?P<pid>\d+)-[0-9a-f]+$')  # posekit before host tags
#: NumPy dtype kinds np.savez stores natively; others (bfloat16...) are stored as raw unsigned ints.
_NATIVE_KINDS = 'biufc'


def checkpoint_path(directory, step):
    """Path of the checkpoint of ``step`` (int >= 0) inside ``directory``."""
    return os.path.join(directory, f'{CHECKPOINT_PREFIX}{int(step):09d}')


def list_checkpoints(directory):
    """Complete checkpoints in ``directory`` as a list of (step, path), oldest first ([] if none)."""
    if not os.path.isdir(directory):
        return []
    found = []
    for name in os.listdir(directory):
        match = _NAME_RE.match(name)
        path = os.path.join(directory, name)
        if match and os.path.isfile(os.path.join(path, META_FILE)):
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(directory):
    """Path of the newest complete checkpoint in ``directory``, or None."""
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _owned_name(prefix, what):
    return f'{prefix}{what}-h{rundir.host_tag()}-p{os.getpid()}-{uuid.uuid4().hex[:8]}'


def is_stale(name):
    """True if the temporary or trash directory ``name`` belongs to this process or to a dead process of
    this host (so removing it cannot disturb a save in progress); False for anything else, including
    another live process's directories and those of other hosts."""
    match = _OWNED_RE.match(name)
    if match:
        if match.group('host') != rundir.host_tag():
            return False
        pid = int(match.group('pid'))
        return pid == os.getpid() or not rundir.process_alive(pid)
    match = _LEGACY_TMP_RE.match(name)
    if match:
        pid = int(match.group('pid'))
        return pid == os.getpid() or not rundir.process_alive(pid)
    return name.startswith(_TRASH_PREFIX)  # legacy trash: an old checkpoint being deleted anyway


def remove_stale(directory):
    """Deletes the temporary and trash directories of this process and of dead processes of this host
    (left by killed saves); see :func:`is_stale`."""
    if not os.path.isdir(directory):
        return
    for name in os.listdir(directory):
        if name.startswith((_TMP_PREFIX, _TRASH_PREFIX)) and is_stale(name):
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


def _encode(arrays):
    encoded, dtypes = {}, {}
    for key, value in arrays.items():
        value = np.asarray(value)
        dtypes[key] = str(value.dtype)
        if value.dtype.kind not in _NATIVE_KINDS:
            value = value.view(np.dtype(f'u{value.dtype.itemsize}'))
        encoded[key] = value
    return encoded, dtypes


def save_checkpoint(directory, step, arrays, meta, keep_last):
    """Atomically writes a checkpoint of ``step`` and prunes all but the newest ``keep_last``.

    Args:
        directory: checkpoint folder (created if needed).
        step: int >= 0, the number of completed training steps.
        arrays: dict str -> array-like; any NumPy dtype (e.g. ml_dtypes bfloat16) is restored exactly.
        meta: JSON-serialisable dict stored as ``meta.json`` (with ``step`` and the array dtypes added).
        keep_last: positive int, number of newest checkpoints kept.

    Returns:
        The checkpoint's path. If a checkpoint of ``step`` already exists it is kept as is (training is
        deterministic, so it holds the same state) and its path returned.
    """
    if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
        raise ValueError(f'keep_last must be a positive int; received keep_last={keep_last!r}')
    os.makedirs(directory, exist_ok=True)
    remove_stale(directory)
    final = checkpoint_path(directory, step)
    if os.path.isdir(final):
        _prune(directory, keep_last)
        return final
    encoded, dtypes = _encode(arrays)
    tmp = os.path.join(directory, _owned_name(_TMP_PREFIX, f'{int(step):09d}'))
    os.makedirs(tmp)
    with open(os.path.join(tmp, STATE_FILE), 'wb') as f:
        np.savez(f, **encoded)
        f.flush()
        os.fsync(f.fileno())
    meta = dict(meta, step=int(step), dtypes=dtypes, keys=list(arrays))
    with open(os.path.join(tmp, META_FILE), 'w', encoding='utf-8') as f:
        json.dump(meta, f)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    os.rename(tmp, final)
    _fsync_dir(directory)
    _prune(directory, keep_last)
    return final


def _prune(directory, keep_last):
    for _, path in list_checkpoints(directory)[:-keep_last]:
        trash = os.path.join(directory, _owned_name(_TRASH_PREFIX, os.path.basename(path)))
        os.rename(path, trash)
        shutil.rmtree(trash, ignore_errors=True)


def _decode_dtype(name):
    try:
        return np.dtype(name)
    except TypeError:
        import ml_dtypes  # installed with TensorFlow; defines bfloat16, float8 types...
        return np.dtype(getattr(ml_dtypes, name))


def load_checkpoint(path):
    """Reads a checkpoint: returns (arrays: dict str -> np.ndarray in key order, meta: dict)."""
    with open(os.path.join(path, META_FILE), encoding='utf-8') as f:
        meta = json.load(f)
    arrays = {}
    with np.load(os.path.join(path, STATE_FILE), allow_pickle=False) as data:
        for key in meta['keys']:
            value = data[key]
            dtype = _decode_dtype(meta['dtypes'][key])
            if value.dtype != dtype:
                value = value.view(dtype)
            arrays[key] = value
    return arrays, meta
