"""Issue 18: a run directory knows what it is, has one writer, is checked before work, and Ctrl-C is prompt."""
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


def _command(module, out, *extra):
    return [sys.executable, '-m', module, '--preset=smoke', f'--out={out}', '--mocap-dir=procedural', *extra]


def test_resume_with_other_settings_is_refused_listing_the_keys(metrabs_smoke_run, run_metrabs_smoke, tmp_path):
    source, _, _ = metrabs_smoke_run
    copy = tmp_path / 'copy'
    shutil.copytree(source, copy)
    before = (copy / 'results.json').read_bytes()
    seed, _ = run_metrabs_smoke(copy, '--resume', '--seed=1')
    assert seed.returncode == 2 and 'Traceback' not in seed.stderr
    assert 'holds a run with other settings' in seed.stderr and 'seeds' in seed.stderr
    crop, _ = run_metrabs_smoke(copy, '--resume', '--set', 'crop_size=96', '--set', 'stage1_steps=41')
    assert crop.returncode == 2 and 'config.crop_size: 64 -> 96' in crop.stderr
    assert 'config.stage1_steps: 40 -> 41' in crop.stderr
    # Settings that do not change results may differ.
    log, _ = run_metrabs_smoke(copy, '--resume', '--set', 'log_every=5')
    assert log.returncode == 0, log.stderr[-2000:]
    assert (copy / 'results.json').read_bytes() != b'' and json.loads(before)['seeds'] == [0]


def test_two_runs_on_one_folder_one_finishes_one_is_refused(tmp_path):
    out = tmp_path / 'shared'
    first = subprocess.Popen(_command('experiments.gcn_weight_sharing', out, '--seeds=0'), cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / '.posekit-run.lock').exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    second = subprocess.run(_command('experiments.gcn_weight_sharing', out, '--seeds=0'), cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    _, first_err = first.communicate(timeout=900)
    assert first.returncode == 0, first_err[-3000:]
    assert second.returncode == 2 and 'Traceback' not in second.stderr
    assert f'pid {first.pid}' in second.stderr and str(out) in second.stderr
    record = json.loads((out / 'results.json').read_text())
    assert record['seeds'] == [0] and len(record['results']['records']) > 1  # the first run's complete results


def test_unwritable_out_is_reported_before_any_work(tmp_path):
    locked = tmp_path / 'ro'
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip('running as a user who can write into read-only folders (root)')
        start = time.monotonic()
        run = subprocess.run(_command('experiments.metrabs_acae', locked / 'out'), cwd=REPO, capture_output=True,
                             text=True, timeout=300)
        assert run.returncode == 2 and 'is not a writable folder' in run.stderr
        assert 'rendering' not in run.stderr and time.monotonic() - start < 60
    finally:
        locked.chmod(0o700)


def test_unwritable_out_file_in_the_way(tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('not a folder')
    run = subprocess.run(_command('experiments.metrabs_acae', blocker / 'out'), cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 2 and 'is not a writable folder' in run.stderr and 'Traceback' not in run.stderr


def test_ctrl_c_checkpoints_and_exits_within_3_s(tmp_path):
    out = tmp_path / 'interrupted'
    process = subprocess.Popen(_command('experiments.metrabs_acae', out), cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    lines = []
    for line in process.stderr:  # wait until stage 1 trains
        lines.append(line)
        if 'step 10/40' in line:
            break
    process.send_signal(signal.SIGINT)
    sent = time.monotonic()
    _, rest = process.communicate(timeout=120)
    elapsed = time.monotonic() - sent
    assert process.returncode == 130, ''.join(lines[-5:]) + rest[-2000:]
    assert elapsed < 3.0 + 1.0  # 3 s after the current step (a smoke step takes well under 1 s)
    assert 'training stopped by signal SIGINT' in rest and 'Traceback' not in rest
    assert any((out / 'stage1' / 'checkpoints').iterdir())
