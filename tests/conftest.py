"""Shared pytest fixtures: the shared CMU data folders, TF settings, and one smoke run of the main experiment.

``metrabs_smoke_run`` runs ``python -m experiments.metrabs_acae --preset=smoke`` once per session; the
experiment tests check its outputs and the quickstart notebook test loads its SavedModel.
"""
import os
import pathlib
import subprocess
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / 'shared'
SMOKE_TIMEOUT_S = 900  # hang guard only
CMU_MOCAP = SHARED / 'data' / 'cmu_mocap'
CMU_MOCAP_TEST = SHARED / 'data' / 'cmu_mocap_test'
SKIP_REASON = ('needs the CMU BVH files in ../shared/data/cmu_mocap beside the clone '
               '(present in CI; absent on a fresh user clone)')


@pytest.fixture
def cmu_mocap_dir():
    """Path of ../shared/data/cmu_mocap; skips the test where it is absent."""
    if not CMU_MOCAP.is_dir():
        pytest.skip(SKIP_REASON)
    return CMU_MOCAP


@pytest.fixture
def cmu_mocap_test_dir():
    """Path of ../shared/data/cmu_mocap_test; skips the test where it is absent."""
    if not CMU_MOCAP_TEST.is_dir():
        pytest.skip(SKIP_REASON.replace('cmu_mocap ', 'cmu_mocap_test '))
    return CMU_MOCAP_TEST


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def run_metrabs_experiment(out, *extra, timeout=SMOKE_TIMEOUT_S):
    """Runs the smoke preset into ``out`` (procedural motion); returns (CompletedProcess, seconds)."""
    command = [sys.executable, '-m', 'experiments.metrabs_acae', '--preset=smoke', f'--out={out}',
               '--mocap-dir=procedural', *extra]
    start = time.monotonic()
    process = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    return process, time.monotonic() - start


@pytest.fixture(scope='session')
def run_metrabs_smoke():
    """The function ``run_metrabs_experiment(out, *extra_flags)``."""
    return run_metrabs_experiment


@pytest.fixture(scope='session')
def metrabs_smoke_run(tmp_path_factory):
    """(out folder, CompletedProcess, wall seconds) of one smoke run, shared by the session."""
    out = tmp_path_factory.mktemp('metrabs_acae') / 'smoke'
    process, seconds = run_metrabs_experiment(out)
    if process.returncode != 0:
        pytest.fail(f'smoke run failed ({process.returncode}):\n{process.stderr[-4000:]}')
    return out, process, seconds
