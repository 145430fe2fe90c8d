"""Tests of experiments.mixed_precision: one smoke run (results.json invariants) and the pure helpers."""
import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from experiments import common
from experiments import mixed_precision as mp

REPO = pathlib.Path(__file__).resolve().parents[2]
SMOKE_TIMEOUT_S = 900
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
BREAKDOWN_PARTS = ('forward_ms', 'loss_ms', 'backward_ms', 'optimizer_ms')


@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
    """(out folder, results.json) of one smoke run on procedural motion."""
    out = tmp_path_factory.mktemp('mixed_precision') / 'smoke'
    command = [sys.executable, '-m', 'experiments.mixed_precision', '--preset=smoke', f'--out={out}',
               '--mocap-dir=procedural']
    process = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S)
    assert process.returncode == 0, process.stderr[-4000:]
    record = json.loads((out / 'results.json').read_text())
    common.validate_results(record)
    assert record['checks'] == [c.to_dict() for c in mp.checks(record['results']['records'],
                                                               record['results']['mixed_policy'])]
    return out, record['results']


def test_smoke_has_both_policies_of_every_model_with_the_same_steps(smoke):
    _, results = smoke
    records = results['records']
    mixed = results['mixed_policy']
    assert mixed in ('mixed_bfloat16', 'mixed_float16')
    config = mp.PRESETS['smoke']
    expected = {spec.name: spec for spec in mp.plan(config)}
    assert {r['model'] for r in records} == set(expected)
    for name, spec in expected.items():
        pair = {r['policy']: r for r in records if r['model'] == name}
        assert set(pair) == {'float32', mixed}
        fp32, low = pair['float32'], pair[mixed]
        assert fp32['ok'] and low['ok'], (fp32.get('error'), low.get('error'))
        assert fp32['steps'] == low['steps'] == fp32['completed_steps'] == low['completed_steps'] == spec.steps
        assert len(fp32['train_losses']) == len(low['train_losses']) == spec.steps
        assert fp32['params'] == low['params'] > 0
        assert fp32['gemm_dim_typical'] == low['gemm_dim_typical'] > 0
        assert low['auto_choice'] == fp32['auto_choice'] in ('float32', mixed)
        assert (fp32['compute_dtype'], low['compute_dtype']) == ('float32', mixed.split('_')[1])
        for record in pair.values():
            assert math.isfinite(record['final_loss']) and math.isfinite(record['val_loss'])
            assert record['peak_mem_mb'] > 0 and record['exit_code'] == 0


def test_smoke_speedup_and_loss_differences_follow_from_the_recorded_values(smoke):
    _, results = smoke
    config = mp.PRESETS['smoke']
    by_key = {(r['model'], r['policy']): r for r in results['records']}
    for record in results['records']:
        fp32 = by_key[(record['model'], 'float32')]
        timed = record['step_ms'][config.timing_warmup:]
        assert len(record['step_ms']) == record['steps'] - 1  # the first (tracing) step is never timed
        assert record['step_ms_median'] == pytest.approx(float(np.median(timed)))
        low, high = record['step_ms_spread']
        assert low <= record['step_ms_median'] <= high
        assert record['speedup_vs_fp32'] == pytest.approx(fp32['step_ms_median'] / record['step_ms_median'])
        assert record['final_loss'] == pytest.approx(np.mean(record['train_losses'][-config.loss_window:]))
        assert record['loss_rel_diff'] == pytest.approx(abs(record['final_loss'] - fp32['final_loss']) /
                                                        abs(fp32['final_loss']))
        assert record['val_loss_rel_diff'] == pytest.approx(abs(record['val_loss'] - fp32['val_loss']) /
                                                            abs(fp32['val_loss']))
        if record['policy'] == 'float32':
            assert record['speedup_vs_fp32'] == 1.0 and record['loss_rel_diff'] == 0.0


def test_smoke_breakdown_parts_add_up_to_the_full_step(smoke):
    _, results = smoke
    for record in results['records']:
        b = record['breakdown']
        assert sum(b[k] for k in BREAKDOWN_PARTS) == pytest.approx(b['full_step_ms'])
        assert b['full_step_ms'] == pytest.approx(b['functions_ms']['full_step'])
        assert b['loop_overhead_ms'] == pytest.approx(record['step_ms_median'] - b['full_step_ms'])
        assert b['data_ms'] > 0 and all(v > 0 for v in b['functions_ms'].values())


def test_smoke_writes_the_table_and_the_plot(smoke):
    out, results = smoke
    table = (out / 'results.md').read_text()
    for record in results['records']:
        assert f'| {record["model"]} |' in table
    assert 'Comparison with the paper' in table and 'Step breakdown' in table
    assert (out / 'speedup.png').read_bytes()[:8] == PNG_MAGIC
    assert not (out / 'workers' / 'data.npz').exists()


# ----------------------------------------------------------------------------------------------- helpers
def test_motion_state_pairs_positions_relative_to_previous_root_and_velocities():
    fps = 10.0
    t = np.arange(5, dtype=np.float64)
    joints = np.zeros((5, 2, 3))
    joints[:, 0] = np.stack([100 * t, 900 + 0 * t, 50 * t], axis=1)  # root walks along x and z (mm)
    joints[:, 1] = joints[:, 0] + [0.0, 500.0, 20.0]
    prev, nxt = mp.motion_state_pairs(joints, fps)
    assert prev.shape == nxt.shape == (3, 12) and prev.dtype == np.float32
    # pair k: frames (k + 1, k + 2), reference = root of frame k + 1 on the floor
    np.testing.assert_allclose(prev[0, :6], [0, 0.9, 0, 0, 1.4, 0.02], atol=1e-6)
    np.testing.assert_allclose(nxt[0, :6], [0.1, 0.9, 0.05, 0.1, 1.4, 0.07], atol=1e-6)
    velocity = np.array([0.1, 0.0, 0.05]) * fps  # m/s
    np.testing.assert_allclose(prev[:, 6:9], np.tile(velocity, (3, 1)), atol=1e-5)
    np.testing.assert_allclose(nxt[:, 9:12], np.tile(velocity, (3, 1)), atol=1e-5)
    with pytest.raises(ValueError, match='joints_mm must be'):
        mp.motion_state_pairs(joints[:2], fps)


def test_render_crops_centres_the_pose_with_the_margin():
    rng = np.random.default_rng(0)
    poses = rng.normal(size=(3, 17, 2))
    size = 64
    edges = [(0, 1), (1, 2)]
    images, coords = mp.render_crops(poses, edges, size, seed=0)
    assert images.shape == (3, size, size, 3) and images.dtype == np.uint8
    extent = coords.max(axis=1) - coords.min(axis=1)
    np.testing.assert_allclose(extent.max(axis=1), size / mp.CROP_MARGIN, rtol=1e-5)
    np.testing.assert_allclose((coords.max(axis=1) + coords.min(axis=1)) / 2, (size - 1) / 2, atol=1e-4)
    again, _ = mp.render_crops(poses, edges, size, seed=0)
    np.testing.assert_array_equal(images, again)


def test_plan_and_config_checks():
    names = [spec.name for spec in mp.plan(mp.PRESETS['default'])]
    assert names == ['gcn_lifter@1x', 'gcn_lifter@4x', 'motion_vae@1x', 'motion_vae@4x', 'metrabs_backbone@1x']
    quick = mp.PRESETS['default']
    assert (quick.gcn_channels, quick.mvae_hidden, quick.widths) == (128, 1024, (1, 4))
    steps = {spec.name: spec.steps for spec in mp.plan(quick)}
    assert steps['gcn_lifter@4x'] == quick.wide_steps and steps['metrabs_backbone@1x'] == quick.steps
    with pytest.raises(ValueError, match=r"models=\('mlp',\)"):
        mp.Config(models=('mlp',))
    with pytest.raises(ValueError, match='steps=3'):
        mp.Config(steps=3, timing_warmup=2)
    with pytest.raises(ValueError, match="mixed_policy='float16'"):
        mp.Config(mixed_policy='float16')


def _record(model, policy, ms, loss, params=10, width=1):
    return dict(model=model, kind=model.split('@')[0], width=width, policy=policy, ok=True, step_ms_median=ms,
                final_loss=loss, val_loss=loss, params=params, forward_macs_per_step=params)


def test_pair_records_and_findings():
    pair = [_record('m@1x', 'float32', 100.0, 2.0), _record('m@1x', 'mixed_bfloat16', 80.0, 2.08)]
    fp32, low = mp.pair_records(pair, 'mixed_bfloat16')
    assert fp32['speedup_vs_fp32'] == 1.0 and low['speedup_vs_fp32'] == pytest.approx(1.25)
    assert low['loss_rel_diff'] == pytest.approx(0.04) and low['val_loss_rel_diff'] == pytest.approx(0.04)
    wide = mp.pair_records([_record('m@4x', 'float32', 400.0, 2.0, 100, 4),
                            _record('m@4x', 'mixed_bfloat16', 200.0, 2.02, 100, 4)], 'mixed_bfloat16')
    results = {claim: ok for claim, ok, _ in mp.findings([fp32, low] + wide, 'mixed_bfloat16')}
    assert results == {'m: speed-up grows with width': True,
                       'largest model (m@4x, 0M params) >= 1.3x faster': True,
                       'final losses within 5 % of float32': True,
                       '(informative) validation losses within 5 % of float32': True}
    failed = mp.pair_records([_record('m@1x', 'float32', 100.0, 2.0), {**_record('m@1x', 'mixed_bfloat16', 1, 1),
                                                                       'ok': False}], 'mixed_bfloat16')
    assert all('speedup_vs_fp32' not in r for r in failed)
