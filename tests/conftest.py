"""Shared pytest fixtures: the shared CMU data folders and TF settings for fast, deterministic tests."""
import os
import pathlib

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / 'shared'
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
