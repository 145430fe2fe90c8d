"""Run directories: one writer per folder, the run's recorded identity, artefact keys (issue 18 items 1-2)."""
import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from posekit.train import rundir

RUNDIR_PY = pathlib.Path(rundir.__file__)
SUBPROCESS_TIMEOUT_S = 60

# A process holding the lock of a folder: loads rundir.py by path (no TensorFlow import), prints
# 'locked', then sleeps until killed or released by a line on stdin.
HOLDER = '''
    import importlib.util, sys
    spec = importlib.util.spec_from_file_location('rundir', sys.argv[1])
    rundir = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rundir)
    lock = rundir.RunLock(sys.argv[2], description='holder').acquire()
    print('locked', flush=True)
    sys.stdin.readline()
    lock.release()
    print('released', flush=True)
'''


@pytest.fixture
def holder(tmp_path):
    processes = []

    def start(folder):
        process = subprocess.Popen([sys.executable, '-c', textwrap.dedent(HOLDER), str(RUNDIR_PY), str(folder)],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        processes.append(process)
        line = process.stdout.readline().strip()
        assert line == 'locked', process.stderr.read()
        return process
    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=SUBPROCESS_TIMEOUT_S)


def _dead_pid():
    process = subprocess.Popen([sys.executable, '-c', 'pass'])
    process.wait()
    return process.pid


# ------------------------------------------------------------------------------------------------ lock
def test_lock_records_owner_and_is_released(tmp_path):
    folder = tmp_path / 'run'
    with rundir.RunLock(folder, description='python -m experiments.x') as lock:
        owner = json.loads((folder / rundir.LOCK_FILE).read_text())
        assert owner == lock.owner and rundir.lock_owner(folder) == owner
        assert owner['pid'] == os.getpid() and owner['host'] == rundir.hostname()
        assert owner['description'] == 'python -m experiments.x'
        assert abs(owner['started_unix'] - time.time()) < 60 and owner['started'].endswith('+00:00')
        assert lock.held and lock.previous is None
    assert not (folder / rundir.LOCK_FILE).exists() and not lock.held
    with rundir.RunLock(folder):  # free again
        pass


def test_a_second_run_on_a_locked_folder_is_refused_naming_folder_pid_and_host(tmp_path, holder):
    process = holder(tmp_path)
    with pytest.raises(rundir.FolderLockedError) as info:
        rundir.RunLock(tmp_path).acquire()
    message = str(info.value)
    assert f'output folder {tmp_path} is in use by another run' in message
    assert f'pid {process.pid} on host {rundir.hostname()!r}' in message and 'holder' in message
    assert info.value.owner['pid'] == process.pid and info.value.folder == str(tmp_path)
    # The holder's lock is untouched; once it releases, the folder is free.
    assert rundir.lock_owner(tmp_path)['pid'] == process.pid
    process.stdin.write('\n')
    process.stdin.flush()
    assert process.stdout.readline().strip() == 'released'
    with rundir.RunLock(tmp_path) as lock:
        assert lock.previous is None


def test_two_locks_in_one_process_conflict(tmp_path):
    with rundir.RunLock(tmp_path):
        with pytest.raises(rundir.FolderLockedError, match=f'pid {os.getpid()} on host'):
            rundir.RunLock(tmp_path).acquire()


def test_lock_of_a_sigkilled_run_is_taken_over_with_a_warning(tmp_path, holder):
    process = holder(tmp_path)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=SUBPROCESS_TIMEOUT_S)
    assert rundir.lock_owner(tmp_path)['pid'] == process.pid  # the file stays behind
    with pytest.warns(rundir.StaleLockWarning, match=f'taking over the stale lock of a dead process .pid {process.pid} on host'):
        lock = rundir.RunLock(tmp_path).acquire()
    assert lock.previous['pid'] == process.pid and rundir.lock_owner(tmp_path)['pid'] == os.getpid()
    lock.release()


def _write_lock(folder, **owner):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / rundir.LOCK_FILE).write_text(json.dumps(owner))


def test_stale_lock_files_without_a_kernel_lock(tmp_path):
    """Lock files whose flock is gone: dead pid -> taken over; a live pid of this host (a file system that
    does not enforce flock) or another host -> refused; a pid reused by a younger process -> taken over."""
    now = time.time()
    _write_lock(tmp_path / 'dead', pid=_dead_pid(), host=rundir.hostname(), started_unix=now)
    with pytest.warns(rundir.StaleLockWarning):
        rundir.RunLock(tmp_path / 'dead').acquire().release()

    parent = os.getppid()
    _write_lock(tmp_path / 'live', pid=parent, host=rundir.hostname(), started_unix=now)
    with pytest.raises(rundir.FolderLockedError, match=f'pid {parent} on host .*not enforced by this file system'):
        rundir.RunLock(tmp_path / 'live').acquire()
    assert rundir.lock_owner(tmp_path / 'live')['pid'] == parent  # left as it was

    _write_lock(tmp_path / 'other', pid=1, host='another-machine', started_unix=now)
    with pytest.raises(rundir.FolderLockedError, match="lock of another host .pid 1 on host 'another-machine'"):
        rundir.RunLock(tmp_path / 'other').acquire()

    # The parent process started long after this (fictitious) lock: its pid was reused.
    _write_lock(tmp_path / 'reused', pid=parent, host=rundir.hostname(), started_unix=1000.0)
    with pytest.warns(rundir.StaleLockWarning):
        rundir.RunLock(tmp_path / 'reused').acquire().release()

    (tmp_path / 'garbage').mkdir()
    (tmp_path / 'garbage' / rundir.LOCK_FILE).write_bytes(b'\x00\xffnot json')
    with pytest.raises(rundir.FolderLockedError, match='lock of another host'):
        rundir.RunLock(tmp_path / 'garbage').acquire()


def test_process_helpers():
    assert rundir.process_alive(os.getpid()) and not rundir.process_alive(_dead_pid())
    assert not rundir.process_alive(-1) and not rundir.process_alive(True)
    started = rundir.process_start_time(os.getppid())
    assert started is None or started <= time.time()
    assert rundir.owner_alive(os.getppid(), time.time()) and not rundir.owner_alive(os.getpid(), time.time())
    assert rundir.host_tag() == rundir.host_tag(rundir.hostname()) != rundir.host_tag('x')


# ------------------------------------------------------------------------------------------ run record
@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0
    crop_size: int = 128
    steps: tuple = (100, 50)
    log_every: int = 10
    optimizer: dict = dataclasses.field(default_factory=lambda: {'lr': 1e-3, 'wd': 0.1})


IGNORE = ('log_every',)


def test_start_run_records_then_refuses_other_settings(tmp_path):
    data = {'shards': 'abc123'}
    record = rundir.start_run(tmp_path, Config(), data, ignore=IGNORE)
    on_disk = json.loads((tmp_path / rundir.RUN_FILE).read_text())
    assert on_disk == record and on_disk['config']['steps'] == [100, 50] and on_disk['data'] == data
    assert on_disk['config_hash'] == rundir.config_hash({'config': Config(), 'data': data})
    # Same settings (or only ignored ones changed): accepted, the record is unchanged.
    assert rundir.start_run(tmp_path, Config(log_every=1), data, ignore=IGNORE) == record
    for changed, keys, shown in [
            (Config(seed=1), ['config.seed'], 'config.seed: 0 -> 1'),
            (Config(crop_size=96), ['config.crop_size'], 'config.crop_size: 128 -> 96'),
            (Config(steps=(100, 60), optimizer={'lr': 1e-3}), ['config.optimizer.wd', 'config.steps'],
             'config.optimizer.wd: 0.1 -> <absent>; config.steps: [100, 50] -> [100, 60]')]:
        with pytest.raises(rundir.ConfigMismatchError) as info:
            rundir.start_run(tmp_path, changed, data, ignore=IGNORE)
        assert info.value.differences == keys
        assert str(tmp_path) in str(info.value) and shown in str(info.value)
    with pytest.raises(rundir.ConfigMismatchError, match="data.shards: \"abc123\" -> \"def456\""):
        rundir.start_run(tmp_path, Config(), {'shards': 'def456'}, ignore=IGNORE)
    assert json.loads((tmp_path / rundir.RUN_FILE).read_text()) == record  # never overwritten


def test_run_record_errors(tmp_path):
    (tmp_path / rundir.RUN_FILE).write_text('{"half":')
    with pytest.raises(ValueError, match=f'{rundir.RUN_FILE}: unreadable run record'):
        rundir.start_run(tmp_path, Config())
    (tmp_path / rundir.RUN_FILE).write_text('{"config": {}}')
    with pytest.raises(ValueError, match='not a posekit run record'):
        rundir.read_run(tmp_path)
    with pytest.raises(ValueError, match='cannot record a value of type object'):
        rundir.start_run(tmp_path / 'b', {'x': object()})
    with pytest.raises(ValueError, match='non-finite number nan'):
        rundir.start_run(tmp_path / 'c', {'x': float('nan')})


def test_config_differences():
    a = {'seed': 0, 'train': {'lr': 1e-3, 'log_every': 10, 'sizes': (1, 2)}, 'eval': {'every': 5}, 'x': {}}
    b = {'seed': 0, 'train': {'lr': 1e-3, 'log_every': 20, 'sizes': [1, 2]}, 'eval': {'every': 6}, 'x': {},
         'new': np.float32(0.5)}
    assert rundir.config_differences(a, a) == []
    assert rundir.config_differences(a, b) == ['eval.every', 'new', 'train.log_every']
    assert rundir.config_differences(a, b, ignore=('*.log_every', 'eval', 'new')) == []
    assert rundir.config_differences(a, b, ignore=('train.log_every',)) == ['eval.every', 'new']
    assert rundir.flatten({'a': {'b': {'c': 1}}, 'd': [1, {'e': 2}]}) == {'a.b.c': 1, 'd': [1, {'e': 2}]}
    assert rundir.config_hash({'b': 1, 'a': (1, 2)}) == rundir.config_hash({'a': [1, 2], 'b': 1})


def test_atomic_json_names_the_path_when_the_disk_is_full(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(os, 'fsync', full)
    target = tmp_path / 'run.json'
    with pytest.raises(OSError, match=f'cannot write {target}: No space left on device') as info:
        rundir.write_json_atomic(target, {'a': 1})
    assert info.value.errno == 28 and os.listdir(tmp_path) == []  # no partial or temporary file


# ------------------------------------------------------------------------------------------- artefacts
def test_artefact_keys(tmp_path):
    path = tmp_path / 'acae.npz'
    key = {'stage1': 'ckpt-hash', 'n_latents': 32}
    assert 'does not exist' in rundir.stale_reason(path, key)
    with rundir.producing(path, key):
        np.savez(path, w=np.arange(4))
    assert rundir.stale_reason(path, key) is None
    assert json.loads((tmp_path / 'acae.npz.key.json').read_text())['config_hash'] == rundir.config_hash(key)
    reason = rundir.stale_reason(path, dict(key, n_latents=16))
    assert 'produced with other settings (n_latents: 32 -> 16)' in reason
    assert rundir.stale_reason(path, dict(key, n_latents=16), ignore=('n_latents',)) is None
    with pytest.raises(rundir.ConfigMismatchError) as info:
        rundir.check_artefact(path, dict(key, stage1='other'))
    assert info.value.differences == ['stage1'] and 'cannot reuse' in str(info.value)
    np.savez(path, w=np.arange(5))  # changed behind the key's back
    assert 'changed after it was written' in rundir.stale_reason(path, key)
    # An interrupted rewrite leaves no key: stale, never reused.
    with pytest.raises(KeyboardInterrupt):
        with rundir.producing(path, key):
            raise KeyboardInterrupt
    assert 'has no key file' in rundir.stale_reason(path, key)


def test_folder_artefacts(tmp_path):
    model = tmp_path / 'saved_model'
    (model / 'variables').mkdir(parents=True)
    (model / 'saved_model.pb').write_bytes(b'graph')
    (model / 'variables' / 'v.data').write_bytes(b'weights')
    rundir.record_artefact(model, {'variant': 'consistency'})
    assert rundir.stale_reason(model, {'variant': 'consistency'}) is None
    (model / 'variables' / 'v.data').write_bytes(b'Weights')
    assert 'changed after it was written' in rundir.stale_reason(model, {'variant': 'consistency'})
    with pytest.raises(FileNotFoundError, match='does not exist'):
        rundir.record_artefact(tmp_path / 'missing', {})
