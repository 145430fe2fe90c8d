"""Shared pytest fixtures: the shared CMU data folders, TF settings, and the main experiment's smoke runs.

``experiment_runs`` runs every ``python -m experiments.<name> --preset=smoke`` run the tests check (the main
experiment's :data:`METRABS_RUNS`, the others' :data:`OTHER_SMOKE_RUNS`) once per session, two at a time;
``metrabs_smoke_run`` is the main experiment's plain one, whose outputs the experiment tests check and
whose SavedModel the quickstart notebook and tool tests load.
"""
import concurrent.futures
import json
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
REAL_SAMPLES = SHARED / 'data' / 'real_samples'
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


def run_experiment(module, out, *extra, timeout=SMOKE_TIMEOUT_S):
    """Runs ``python -m experiments.<module> --preset=smoke`` into ``out`` (procedural motion); returns
    (CompletedProcess, seconds)."""
    command = [sys.executable, '-m', f'experiments.{module}', '--preset=smoke', f'--out={out}',
               '--mocap-dir=procedural', *extra]
    start = time.monotonic()
    process = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    return process, time.monotonic() - start


def run_metrabs_experiment(out, *extra, timeout=SMOKE_TIMEOUT_S):
    """:func:`run_experiment` of the main experiment (``metrabs_acae``)."""
    return run_experiment('metrabs_acae', out, *extra, timeout=timeout)


@pytest.fixture(scope='session')
def run_metrabs_smoke():
    """The function ``run_metrabs_experiment(out, *extra_flags)``."""
    return run_metrabs_experiment


#: The smoke runs of the main experiment that the tests check: name -> list of flag lists, run in order
#: in one folder (a chain: later entries resume). 'real' (real_samples + a manifest + synthetic data) needs
#: ../shared and its manifest written first (:func:`write_manifest`).
PRECISION_FLAGS = ('--set', 'stop_after=stage1', '--set', 'stage1_steps=2', '--set', 'precision=auto')
METRABS_RUNS = {
    'smoke': [()],
    'again': [('--set', 'export=False')],  # a second same-seed run (the export does not change results)
    'latent_hybrid': [('--variant=latent,hybrid', '--set', 'export=False')],  # the export is tested above
    'precision': [PRECISION_FLAGS, PRECISION_FLAGS + ('--resume',)],
    'real': [()],  # flags from real_datasets_flags()
}
#: The other experiments' smoke runs their tests check: name -> (module, flags).
OTHER_SMOKE_RUNS = {
    'parallel_video': ('parallel_video', ('--seed=1',)),
    'mixed_precision': ('mixed_precision', ()),
    'gcn_weight_sharing': ('gcn_weight_sharing', ('--seeds=0',)),
}
#: Runs at a time. One run keeps about one of the two cores busy on average (tracing, tf.data and the
#: Python around them are mostly single-threaded: the real-datasets run took 144 CPU s in 137 s), so two
#: at a time nearly halve the wall time; the runs are deterministic, so their results are the same.
CONCURRENT_RUNS = 2


def write_manifest(folder, n=6):
    """A manifest of rendered full frames with cameras (half of them with lens distortion), written as JPEGs."""
    import cv2
    from posekit.data import synth
    spec = [s for s in synth.preset_specs('smoke', crop_size=64) if s.name == 'mpi_like'][0]
    motion = synth.PreparedMotion(synth.load_motion_splits(None, seed=3, max_frames_per_clip=30).train)
    items = []
    for i in range(n):
        frame = synth.render_full_frame(spec, motion, 'train', i, seed=3, image_shape=(240, 320),
                                        distortion_coeffs=[-0.2, 0.05, 0, 0, 0] if i % 2 else None)
        cv2.imwrite(str(folder / f'frame{i}.jpg'), cv2.cvtColor(frame['image'], cv2.COLOR_RGB2BGR))
        items.append({'image': f'frame{i}.jpg', 'split': 'train', 'box': frame['box'].tolist(),
                      'joints3d': frame['joints3d'].tolist(), 'subject': frame['subject'],
                      'camera': {'intrinsic_matrix': frame['intrinsics'].tolist(),
                                 'rotation': frame['rotation'].tolist(), 'translation': frame['translation'].tolist(),
                                 'distortion': frame['distortion'].tolist(), 'world_up': frame['world_up'].tolist()}})
    path = folder / 'labels.json'
    path.write_text(json.dumps({'dataset': 'my_lab', 'skeleton': frame['skeleton'], 'examples': items}))
    return path


REAL_COMPOSITION = 'h36m=1,mpi_inf_3dhp=1,my_lab=2,h36m_like=2,coco=1,coco_like=1'


def real_datasets_flags(manifest):
    """Flags mixing the real_samples adapters (Human3.6M, MPI-INF-3DHP, COCO), the manifest and synthetic data."""
    datasets = (f'h36m={REAL_SAMPLES / "h36m"},mpi_inf_3dhp={REAL_SAMPLES / "mpi_inf_3dhp"},'
                f'coco={REAL_SAMPLES / "coco"};annotation_file=test_coco.json;image_dir=,my_lab={manifest},'
                'h36m_like,coco_like')
    return (f'--datasets={datasets}', f'--composition={REAL_COMPOSITION}')


@pytest.fixture(scope='session')
def experiment_runs(tmp_path_factory):
    """name -> list of (out folder, CompletedProcess, wall seconds): one entry per run of each chain in
    :data:`METRABS_RUNS` (without 'real' where ../shared/data/real_samples is absent) and one for each of
    :data:`OTHER_SMOKE_RUNS`, all run once per session, :data:`CONCURRENT_RUNS` at a time. Failures are left
    to the tests."""
    root = tmp_path_factory.mktemp('experiment_runs')
    jobs = {name: ('metrabs_acae', chain) for name, chain in METRABS_RUNS.items()}
    if REAL_SAMPLES.is_dir():
        manifest_dir = root / 'manifest'
        manifest_dir.mkdir()
        jobs['real'] = ('metrabs_acae', [real_datasets_flags(write_manifest(manifest_dir))])
    else:
        jobs.pop('real')
    jobs.update({name: (module, [flags]) for name, (module, flags) in OTHER_SMOKE_RUNS.items()})

    def chain(name):
        module, flag_lists = jobs[name]
        out = root / name
        return [(out, *run_experiment(module, out, *flags)) for flags in flag_lists]

    with concurrent.futures.ThreadPoolExecutor(CONCURRENT_RUNS) as pool:
        futures = {name: pool.submit(chain, name) for name in sorted(jobs, key=lambda n: n != 'real')}  # longest first
        return {name: future.result() for name, future in futures.items()}


@pytest.fixture(scope='session')
def metrabs_runs(experiment_runs):
    """The main experiment's runs of :func:`experiment_runs` (the keys of :data:`METRABS_RUNS`)."""
    return {name: runs for name, runs in experiment_runs.items() if name in METRABS_RUNS}


@pytest.fixture(scope='session')
def metrabs_smoke_run(metrabs_runs):
    """(out folder, CompletedProcess, wall seconds) of the plain smoke run, shared by the session."""
    out, process, seconds = metrabs_runs['smoke'][0]
    if process.returncode != 0:
        pytest.fail(f'smoke run failed ({process.returncode}):\n{process.stderr[-4000:]}')
    return out, process, seconds
