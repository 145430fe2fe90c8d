"""Shared fixture: one smoke run of ``python -m experiments.metrabs_acae`` per test session.

The run's SavedModel folder is also published in the environment variable ``POSEKIT_SMOKE_EXPORT``
for the rest of the session, so the quickstart notebook test (``tests/test_notebooks_quickstart.py``,
collected after this folder) reuses it instead of training its own.
"""
import os
import pathlib
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
SMOKE_EXPORT_ENV = 'POSEKIT_SMOKE_EXPORT'
SMOKE_TIMEOUT_S = 900


def run_experiment(out, *extra, timeout=SMOKE_TIMEOUT_S):
    """Runs the smoke preset into ``out`` (procedural motion); returns (CompletedProcess, seconds)."""
    command = [sys.executable, '-m', 'experiments.metrabs_acae', '--preset=smoke', f'--out={out}',
               '--mocap-dir=procedural', *extra]
    start = time.monotonic()
    process = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    return process, time.monotonic() - start


@pytest.fixture(scope='session')
def run_metrabs_smoke():
    """The function ``run_experiment(out, *extra_flags)``."""
    return run_experiment


@pytest.fixture(scope='session')
def metrabs_smoke_run(tmp_path_factory):
    """(out folder, CompletedProcess, wall seconds) of one smoke run."""
    out = tmp_path_factory.mktemp('metrabs_acae') / 'smoke'
    process, seconds = run_experiment(out)
    if process.returncode != 0:
        pytest.fail(f'smoke run failed ({process.returncode}):\n{process.stderr[-4000:]}')
    previous = os.environ.get(SMOKE_EXPORT_ENV)
    os.environ[SMOKE_EXPORT_ENV] = str(out / 'saved_model')
    yield out, process, seconds
    if previous is None:
        os.environ.pop(SMOKE_EXPORT_ENV, None)
    else:
        os.environ[SMOKE_EXPORT_ENV] = previous
