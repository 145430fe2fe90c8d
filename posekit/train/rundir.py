"""Run directories: one writer per output folder, a recorded configuration checked on resume, and
cached artefacts that remember what produced them.

Three small guards for an experiment's ``--out`` folder (plain functions and one class; no flags,
no globals):

1. **One writer per folder** (:class:`RunLock`): ``<folder>/.posekit-run.lock`` holds the owner's pid,
   host and start time as JSON. It is taken with an exclusive, non-blocking ``flock(2)`` on the file
   (atomic; the kernel drops it when the owner dies, even by SIGKILL), so a second run on the folder
   gets :class:`FolderLockedError` naming the folder, pid and host. A lock file left by a dead
   process (its ``flock`` is gone) on this host is taken over with a :class:`StaleLockWarning`; one
   recorded by another host is refused (its liveness cannot be checked from here), as is one whose
   recorded owner is still alive on this host (a file system without working ``flock``).

2. **The run's identity** (:func:`start_run`, :func:`config_differences`): ``<folder>/run.json``
   records the resolved configuration and the data fingerprints when the run starts (written
   atomically). Starting again in the same folder (``--resume``) compares the current values with the
   recorded ones key by key (nested dicts as dotted keys); any difference outside ``ignore`` (settings
   that do not change results, such as logging intervals) raises :class:`ConfigMismatchError`
   listing the keys with both values.

3. **Cached artefacts** (:func:`record_artefact`, :func:`stale_reason`, :func:`producing`): beside an
   artefact (a file or a folder, e.g. ``pseudo_gt.npz`` or ``saved_model/``) a key file
   ``<artefact>.key.json`` records the configuration that produced it, its SHA-256 (``config_hash``)
   and a SHA-256 of the artefact's content. An artefact is reused only when its key file exists, the
   key is the current one and the content is unchanged; :func:`producing` removes the key file
   before the artefact is (re)written and writes it after, so an interrupted rewrite is never
   mistaken for a finished one.

Typical use in an experiment (``config`` a frozen dataclass, ``out`` the ``--out`` folder)::

    with rundir.RunLock(out):
        rundir.start_run(out, config, data={'shards': storage.fingerprint(paths)},
                         ignore=('log_every', 'eval_every'))
        key = {'stage1': stage1_checkpoint_key, 'acae': dataclasses.asdict(config.acae)}
        if rundir.stale_reason(acae_path, key) is None:
            acae = load(acae_path)                      # reused
        else:
            with rundir.producing(acae_path, key):
                save(acae_path, fit())                  # written, then its key file
"""
from __future__ import annotations

import dataclasses
import datetime
import errno
import fcntl
import fnmatch
import hashlib
import json
import math
import os
import socket
import time
import uuid
import warnings
from contextlib import contextmanager
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Union

import numpy as np

LOCK_FILE = '.posekit-run.lock'
RUN_FILE = 'run.json'
KEY_SUFFIX = '.key.json'
RUN_FORMAT = 'posekit-run-1'
KEY_FORMAT = 'posekit-artefact-key-1'
PID_START_SLACK_S = 2.0
"""A lock's pid counts as its owner if that process started at most this long after the lock's
recorded start (clock-tick rounding of /proc start times)."""
MAX_VALUE_CHARS = 80
"""Recorded and current values longer than this are shortened in error messages."""

PathLike = Union[str, os.PathLike]


class FolderLockedError(ValueError):
    """The folder is in use by another live run (``.folder``, ``.owner``: the lock file's JSON)."""

    def __init__(self, message: str, folder: str, owner: Mapping):
        super().__init__(message)
        self.folder = folder
        self.owner = dict(owner)


class ConfigMismatchError(ValueError):
    """A run or artefact recorded with other settings (``.differences``: dotted keys)."""

    def __init__(self, message: str, differences: List[str]):
        super().__init__(message)
        self.differences = list(differences)


class StaleLockWarning(UserWarning):
    """A lock left by a dead process was taken over."""


# ----------------------------------------------------------------------------------------------
# Processes and hosts
# ----------------------------------------------------------------------------------------------

def hostname() -> str:
    """This machine's host name (as recorded in lock files)."""
    return socket.gethostname()


def host_tag(host: Optional[str] = None) -> str:
    """8 hex digits identifying ``host`` (default: this one) in file names."""
    return hashlib.sha256((hostname() if host is None else host).encode('utf-8')).hexdigest()[:8]


def process_start_time(pid: int) -> Optional[float]:
    """Unix time at which process ``pid`` started (Linux ``/proc``), or None if unknown."""
    try:
        with open(f'/proc/{int(pid)}/stat', 'rb') as f:
            stat = f.read().decode('ascii', 'replace')
        with open('/proc/stat', 'rb') as f:
            boot = next(float(line.split()[1]) for line in f.read().decode('ascii', 'replace').splitlines()
                        if line.startswith('btime '))
        ticks = float(stat[stat.rindex(')') + 2:].split()[19])  # field 22: starttime, clock ticks after boot
        return boot + ticks / os.sysconf('SC_CLK_TCK')
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def owner_alive(pid: Any, started_unix: Any = None) -> bool:
    """True if process ``pid`` of this host is alive and (when both are known) started no later than
    ``started_unix``: a younger process with that pid is another process that reused the number."""
    if pid == os.getpid() or not process_alive(pid):
        return False
    started = process_start_time(pid)
    if started is None or not isinstance(started_unix, (int, float)) or isinstance(started_unix, bool):
        return True
    return started <= started_unix + PID_START_SLACK_S


def process_alive(pid: int) -> bool:
    """True if a process with ``pid`` exists on this host (a zombie counts as alive)."""
    if isinstance(pid, bool) or not isinstance(pid, (int, np.integer)) or pid <= 0:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OverflowError:
        return False
    return True


# ----------------------------------------------------------------------------------------------
# JSON helpers
# ----------------------------------------------------------------------------------------------

def to_jsonable(value: Any) -> Any:
    """``value`` as plain JSON types: dataclasses and mappings -> dicts (str keys), tuples/lists/sets ->
    lists (sets sorted), numpy scalars and arrays -> Python numbers and lists, paths -> str.

    Raises:
      ValueError: a value of another type (naming its type) or a non-finite float.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(to_jsonable(v) for v in value)
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f'cannot record the non-finite number {value!r} in a run configuration')
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise ValueError(f'cannot record a value of type {type(value).__name__} ({value!r:.60}) in a run '
                     f'configuration; convert it to str, number, list or dict')


def canonical_json(value: Any) -> str:
    """Canonical JSON of ``value`` (sorted keys, no spaces) after :func:`to_jsonable`."""
    return json.dumps(to_jsonable(value), sort_keys=True, separators=(',', ':'), allow_nan=False)


def config_hash(value: Any) -> str:
    """SHA-256 (hex) of :func:`canonical_json` of ``value``."""
    return hashlib.sha256(canonical_json(value).encode('utf-8')).hexdigest()


def write_json_atomic(path: PathLike, value: Any) -> str:
    """Writes ``value`` as JSON to ``path`` atomically (temporary file, fsync, ``os.replace``).

    Raises:
      OSError: naming ``path`` (e.g. a full disk or a read-only folder).
    """
    path = os.fspath(path)
    text = json.dumps(to_jsonable(value), indent=1, sort_keys=True, allow_nan=False) + '\n'
    tmp = f'{path}.tmp-{host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:8]}'
    try:
        with open(tmp, 'w', encoding='utf-8') as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        message = f'cannot write {path}: {e.strerror or e}'
        raise (OSError(e.errno, message) if e.errno else OSError(message)) from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _read_json(path: str, what: str) -> Dict:
    try:
        with open(path, encoding='utf-8') as f:
            value = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f'{path}: unreadable {what} ({e}); delete it if it is not needed') from None
    if not isinstance(value, dict):
        raise ValueError(f'{path}: unreadable {what} (a JSON {type(value).__name__}, expected an object)')
    return value


# ----------------------------------------------------------------------------------------------
# 1. One writer per folder
# ----------------------------------------------------------------------------------------------

class RunLock:
    """An exclusive lock on an output folder for the lifetime of a run (a context manager).

    Args:
      folder: the run's output folder (created if needed).
      description: optional text stored in the lock (e.g. the command line).

    ``acquire()`` (or ``with``) raises :class:`FolderLockedError` when another live process holds the
    folder, and warns (:class:`StaleLockWarning`) when it takes over a lock left by a dead process on
    this host. ``release()`` removes the lock file. The lock belongs to the process that took it: a
    child forked while it is held does not own it, and releasing it there is a no-op.

    Attributes:
      folder, path: the folder and its lock file; owner: the JSON written (pid, host, started, ...);
      previous: the stale owner taken over, or None.
    """

    def __init__(self, folder: PathLike, description: Optional[str] = None):
        self.folder = os.fspath(folder)
        self.path = os.path.join(self.folder, LOCK_FILE)
        self.description = description
        self.owner: Optional[Dict] = None
        self.previous: Optional[Dict] = None
        self._fd: Optional[int] = None
        self._pid: Optional[int] = None

    @property
    def held(self) -> bool:
        return self._fd is not None and self._pid == os.getpid()

    def acquire(self) -> 'RunLock':
        if self.held:
            raise ValueError(f'{self.path}: this RunLock is already held by this process')
        try:
            os.makedirs(self.folder, exist_ok=True)
        except OSError as e:
            raise OSError(e.errno, f'cannot create the output folder {self.folder}: {e.strerror or e}') from e
        for _ in range(100):  # retried only when the file was replaced between open and flock
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise OSError(e.errno, f'cannot create the lock file {self.path} (is the output folder '
                                       f'writable?): {e.strerror or e}') from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    os.close(fd)
                    raise OSError(e.errno, f'cannot lock {self.path}: {e.strerror or e}') from e
                owner = _read_lock_text(fd)
                os.close(fd)
                raise FolderLockedError(
                    f'output folder {self.folder} is in use by another run ({_describe(owner)}); wait for '
                    f'it to finish or choose another output folder', self.folder, owner) from None
            try:
                same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same_file = False
            if not same_file:  # released (unlinked) by its owner meanwhile: lock the new file
                os.close(fd)
                continue
            try:
                self._take(fd)
            except BaseException:
                os.close(fd)
                raise
            return self
        raise OSError(errno.EAGAIN, f'cannot lock {self.path}: the file keeps being replaced')

    def _take(self, fd: int) -> None:
        previous = _read_lock_text(fd)
        if previous:
            if previous.get('host') != hostname():
                raise FolderLockedError(
                    f'output folder {self.folder} holds a lock of another host ({_describe(previous)}); if '
                    f'that run is gone, delete {self.path}', self.folder, previous)
            if owner_alive(previous.get('pid'), previous.get('started_unix')):
                raise FolderLockedError(
                    f'output folder {self.folder} is in use by another run ({_describe(previous)}; its '
                    f'lock is not enforced by this file system)', self.folder, previous)
            warnings.warn(f'output folder {self.folder}: taking over the stale lock of a dead process '
                          f'({_describe(previous)})', StaleLockWarning, stacklevel=3)
            self.previous = previous
        now = time.time()
        self.owner = dict(pid=os.getpid(), host=hostname(), started_unix=now,
                          started=datetime.datetime.fromtimestamp(now, datetime.timezone.utc).isoformat(
                              timespec='seconds'),
                          description=self.description)
        data = (json.dumps(self.owner, sort_keys=True) + '\n').encode('utf-8')
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            os.fsync(fd)
        except OSError as e:
            raise OSError(e.errno, f'cannot write the lock file {self.path}: {e.strerror or e}') from e
        self._fd, self._pid = fd, os.getpid()

    def release(self) -> None:
        """Removes the lock file and drops the lock (no-op if not held by this process)."""
        if not self.held:
            self._fd = None
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> 'RunLock':
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __repr__(self) -> str:
        return f'RunLock({self.folder!r}, held={self.held})'


def _read_lock_text(fd: int) -> Dict:
    try:
        data = os.pread(fd, 1 << 16, 0)
    except OSError:
        return {}
    if not data.strip():
        return {}
    try:
        value = json.loads(data.decode('utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {'unreadable': data[:200].decode('utf-8', 'replace')}
    return value if isinstance(value, dict) else {'unreadable': repr(value)[:200]}


def _describe(owner: Mapping) -> str:
    if not owner or 'pid' not in owner:
        return f'lock file content {dict(owner)!r}' if owner else 'owner unknown'
    text = f'pid {owner.get("pid")} on host {owner.get("host")!r}, started {owner.get("started")}'
    if owner.get('description'):
        text += f': {owner["description"]}'
    return text


def lock_owner(folder: PathLike) -> Optional[Dict]:
    """The JSON of ``folder``'s lock file (whoever wrote it last), or None when there is none."""
    path = os.path.join(os.fspath(folder), LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        return _read_lock_text(fd) or None
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------
# 2. The run's identity: configuration and data fingerprints
# ----------------------------------------------------------------------------------------------

def flatten(value: Any, prefix: str = '') -> Dict[str, Any]:
    """Nested mappings as one dict of dotted keys (``{'a': {'b': 1}}`` -> ``{'a.b': 1}``); other
    values (lists included) are leaves. An empty mapping is the leaf ``{}``."""
    value = to_jsonable(value)
    if isinstance(value, dict) and value:
        out: Dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f'{prefix}{k}.'))
        return out
    return {prefix[:-1] if prefix else '': value}


def _ignored(key: str, ignore: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) or key.startswith(p + '.') for p in ignore)


def config_differences(recorded: Any, current: Any, ignore: Iterable[str] = ()) -> List[str]:
    """Sorted dotted keys (``''`` for a top-level value) whose values differ between ``recorded`` and ``current`` (keys present in
    only one count), except those matching ``ignore`` (exact dotted keys, ``fnmatch`` patterns such
    as ``'*.log_every'``, or a prefix that ignores everything below it).

    Values are compared after :func:`to_jsonable` (so a tuple equals the list recorded in JSON).
    """
    ignore = tuple(ignore)
    a, b = flatten(recorded), flatten(current)
    return sorted(k for k in set(a) | set(b)
                  if not _ignored(k, ignore) and (k not in a or k not in b or a[k] != b[k]))


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS - 3] + '...'


def describe_differences(recorded: Any, current: Any, keys: Iterable[str]) -> str:
    """``key: recorded -> current`` for each key (``<absent>`` where a side lacks it), ``; ``-joined."""
    a, b = flatten(recorded), flatten(current)
    return '; '.join(f'{k}: {_short(a[k]) if k in a else "<absent>"} -> {_short(b[k]) if k in b else "<absent>"}'
                     for k in keys)


def read_run(folder: PathLike) -> Optional[Dict]:
    """The recorded ``run.json`` of ``folder`` ({config, data, config_hash, ...}), or None."""
    path = os.path.join(os.fspath(folder), RUN_FILE)
    if not os.path.exists(path):
        return None
    record = _read_json(path, 'run record')
    if record.get('format') != RUN_FORMAT or 'config' not in record or 'data' not in record:
        raise ValueError(f'{path}: not a posekit run record (format {record.get("format")!r}, expected '
                         f'{RUN_FORMAT!r} with config and data)')
    return record


def start_run(folder: PathLike, config: Any, data: Any = None, ignore: Iterable[str] = ()) -> Dict:
    """Records the run in ``folder`` or checks that it is the one recorded there.

    Args:
      folder: the output folder (hold its :class:`RunLock` while calling this).
      config: the resolved configuration (a dataclass or mapping; everything that can change results,
        seed included).
      data: fingerprints of the inputs (e.g. ``{'shards': storage.fingerprint(paths)}``).
      ignore: keys of ``config`` that may differ on resume (see :func:`config_differences`), e.g.
        logging intervals; data fingerprints must always match.

    Returns:
      The record (as in ``run.json``).

    Raises:
      ConfigMismatchError: ``folder`` holds a run recorded with other values; the message lists every
        differing key with the recorded and the current value.
      ValueError: an unreadable ``run.json``, or a value that JSON cannot record.
    """
    folder = os.fspath(folder)
    current = {'config': to_jsonable(config), 'data': to_jsonable(data)}
    recorded = read_run(folder)
    if recorded is None:
        now = time.time()
        record = dict(format=RUN_FORMAT, config=current['config'], data=current['data'],
                      config_hash=config_hash(current), host=hostname(), pid=os.getpid(),
                      created=datetime.datetime.fromtimestamp(now, datetime.timezone.utc).isoformat(
                          timespec='seconds'))
        os.makedirs(folder, exist_ok=True)
        write_json_atomic(os.path.join(folder, RUN_FILE), record)
        return record
    old = {'config': recorded['config'], 'data': recorded['data']}
    differences = sorted([f'config.{k}' for k in config_differences(old['config'], current['config'], ignore)]
                         + [f'data.{k}' if k else 'data' for k in config_differences(old['data'], current['data'])])
    if differences:
        raise ConfigMismatchError(
            f'{os.path.join(folder, RUN_FILE)}: output folder {folder} holds a run with other settings '
            f'({len(differences)} differing: {describe_differences(old, current, differences)}); resume it '
            f'with its own settings or choose another output folder', differences)
    return recorded


# ----------------------------------------------------------------------------------------------
# 3. Cached artefacts
# ----------------------------------------------------------------------------------------------

def artefact_key_path(artefact: PathLike) -> str:
    """The key file of ``artefact`` (a file or folder): ``<artefact>.key.json`` beside it."""
    return os.fspath(artefact).rstrip(os.sep) + KEY_SUFFIX


def content_sha256(path: PathLike) -> str:
    """SHA-256 (hex) of a file's bytes, or of a folder's files (relative names and bytes, sorted)."""
    path = os.fspath(path)
    digest = hashlib.sha256()
    if os.path.isdir(path):
        files = []
        for root, dirs, names in os.walk(path):
            dirs.sort()
            files.extend(os.path.join(root, n) for n in names)
        for file in sorted(files):
            digest.update(os.path.relpath(file, path).replace(os.sep, '/').encode('utf-8') + b'\0')
            _hash_file(file, digest)
            digest.update(b'\0')
    else:
        _hash_file(path, digest)
    return digest.hexdigest()


def _hash_file(path: str, digest) -> None:
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)


def record_artefact(artefact: PathLike, key: Any) -> str:
    """Writes ``artefact``'s key file: the ``key`` that produced it, its hash and the artefact's
    content SHA-256. Call after the artefact is completely written. Returns the key file's path."""
    artefact = os.fspath(artefact)
    if not os.path.exists(artefact):
        raise FileNotFoundError(f'cannot record the key of {artefact}: it does not exist')
    key = to_jsonable(key)
    return write_json_atomic(artefact_key_path(artefact), dict(
        format=KEY_FORMAT, key=key, config_hash=config_hash(key), content_sha256=content_sha256(artefact)))


def invalidate_artefact(artefact: PathLike) -> None:
    """Removes ``artefact``'s key file (before the artefact is rewritten)."""
    try:
        os.remove(artefact_key_path(artefact))
    except FileNotFoundError:
        pass


def stale_reason(artefact: PathLike, key: Any, ignore: Iterable[str] = ()) -> Optional[str]:
    """None if ``artefact`` exists and was produced by ``key`` (and is unchanged since), otherwise why
    not: missing, no key file, the differing keys (recorded -> current), or changed content.

    ``ignore`` lists key entries that may differ (see :func:`config_differences`).
    """
    artefact = os.fspath(artefact)
    if not os.path.exists(artefact):
        return f'{artefact} does not exist'
    key_path = artefact_key_path(artefact)
    if not os.path.exists(key_path):
        return f'{artefact} has no key file {os.path.basename(key_path)} (written by an older or interrupted run)'
    recorded = _read_json(key_path, 'artefact key')
    if recorded.get('format') != KEY_FORMAT or 'key' not in recorded:
        return f'{key_path} is not a posekit artefact key (format {recorded.get("format")!r})'
    current = to_jsonable(key)
    differences = config_differences(recorded['key'], current, ignore)
    if differences:
        return (f'{artefact} was produced with other settings '
                f'({describe_differences(recorded["key"], current, differences)})')
    if recorded.get('content_sha256') != content_sha256(artefact):
        return f'{artefact} changed after it was written (content SHA-256 differs from its key file)'
    return None


def check_artefact(artefact: PathLike, key: Any, ignore: Iterable[str] = ()) -> None:
    """Like :func:`stale_reason` for artefacts that must not be recomputed: raises
    :class:`ConfigMismatchError` (``differences``: the differing keys, or [] for other reasons)."""
    reason = stale_reason(artefact, key, ignore)
    if reason is not None:
        recorded_path = artefact_key_path(artefact)
        differences = []
        if os.path.exists(recorded_path):
            recorded = _read_json(recorded_path, 'artefact key')
            differences = config_differences(recorded.get('key'), key, ignore)
        raise ConfigMismatchError(f'cannot reuse {os.fspath(artefact)}: {reason}', differences)


@contextmanager
def producing(artefact: PathLike, key: Any) -> Iterator[str]:
    """``with producing(path, key): write(path)``: removes the key file first and records ``key``
    after the block succeeded (an exception leaves the artefact without a key, i.e. stale)."""
    invalidate_artefact(artefact)
    yield os.fspath(artefact)
    record_artefact(artefact, key)
