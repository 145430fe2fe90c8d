"""Checkpoint clean-up removes only its own temporary folders and those of dead processes (issue 18 item 2)."""
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from posekit.train import checkpoint as checkpoint_lib
from posekit.train import rundir

REPO = pathlib.Path(__file__).resolve().parents[2]
SUBPROCESS_TIMEOUT_S = 240


def _dead_pid():
    process = subprocess.Popen([sys.executable, '-c', 'pass'])
    process.wait()
    return process.pid


@pytest.fixture
def live_pid():
    process = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])
    yield process.pid
    process.kill()
    process.wait()


def _partial_save(directory, name):
    folder = directory / name
    folder.mkdir()
    (folder / checkpoint_lib.STATE_FILE).write_bytes(b'half written')
    return folder


def test_remove_stale_spares_live_processes_and_other_hosts(tmp_path, live_pid):
    here, elsewhere, dead = rundir.host_tag(), rundir.host_tag('another-machine'), _dead_pid()
    kept = [_partial_save(tmp_path, f'.tmp-000000005-h{here}-p{live_pid}-0123abcd'),    # another live run
            _partial_save(tmp_path, f'.tmp-000000005-h{elsewhere}-p{dead}-0123abcd'),   # another host
            _partial_save(tmp_path, f'.trash-ckpt-000000001-h{here}-p{live_pid}-0123abcd'),
            _partial_save(tmp_path, f'.tmp-000000005-{live_pid}-0123abcd')]             # old name, live
    removed = [_partial_save(tmp_path, f'.tmp-000000005-h{here}-p{dead}-0123abcd'),     # killed save
               _partial_save(tmp_path, f'.tmp-000000005-h{here}-p{os.getpid()}-0123abcd'),  # this process
               _partial_save(tmp_path, f'.trash-ckpt-000000001-h{here}-p{dead}-0123abcd'),
               _partial_save(tmp_path, f'.tmp-000000005-{dead}-0123abcd'),              # old name, dead
               _partial_save(tmp_path, '.trash-ckpt-000000001-0123abcd')]               # old trash
    path = checkpoint_lib.save_checkpoint(tmp_path, 7, {'a': np.arange(3)}, {}, keep_last=1)
    assert [p.name for p in kept if not p.exists()] == []
    assert [p.name for p in removed if p.exists()] == []
    assert (tmp_path / kept[0].name / checkpoint_lib.STATE_FILE).read_bytes() == b'half written'
    assert checkpoint_lib.latest_checkpoint(tmp_path) == path


def test_own_temporary_names_carry_host_and_pid(tmp_path, monkeypatch):
    seen = []
    real_rename = os.rename

    def spy(src, dst):
        seen.append(os.path.basename(src))
        return real_rename(src, dst)
    monkeypatch.setattr(os, 'rename', spy)
    for step in (1, 2):
        checkpoint_lib.save_checkpoint(tmp_path, step, {'a': np.zeros(2)}, {}, keep_last=1)
    tmp_names = [n for n in seen if n.startswith('.tmp-')]
    assert len(tmp_names) == 2
    for name in tmp_names:
        assert f'-h{rundir.host_tag()}-p{os.getpid()}-' in name and checkpoint_lib.is_stale(name)
    assert [n for n in seen if n.startswith('ckpt-')] == ['ckpt-000000001']  # pruned via a trash name
    assert sorted(os.listdir(tmp_path)) == ['ckpt-000000002']


WRITER = '''
    import sys
    import numpy as np
    from posekit.train import checkpoint
    directory, first = sys.argv[1], int(sys.argv[2])
    arrays = {'w': np.random.default_rng(first).standard_normal((256, 1024))}
    for k in range(SAVES):
        checkpoint.save_checkpoint(directory, first + 2 * k, arrays, {}, keep_last=1000)
    print('done')
'''


def test_two_processes_saving_into_one_folder_do_not_delete_each_others_saves(tmp_path):
    """Today's runs never share a folder (RunLock); the checkpoint writer alone must still not break
    another process's save (before: FileNotFoundError .../.tmp-.../meta.json)."""
    saves = 25
    code = textwrap.dedent(WRITER).replace('SAVES', str(saves))
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL='2')
    writers = [subprocess.Popen([sys.executable, '-c', code, str(tmp_path), str(first)], env=env, cwd=str(REPO),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for first in (0, 1)]
    outputs = [w.communicate(timeout=SUBPROCESS_TIMEOUT_S) for w in writers]
    for writer, (out, err) in zip(writers, outputs):
        assert writer.returncode == 0 and out.strip() == 'done', err[-2000:]
    steps = [s for s, _ in checkpoint_lib.list_checkpoints(tmp_path)]
    assert steps == list(range(2 * saves))
    assert [n for n in os.listdir(tmp_path) if n.startswith('.')] == []
