"""Tests of experiments.mixed_precision: one smoke run (results.json invariants) and the pure helpers."""
import json
import math

import numpy as np
import pytest

from experiments import common
from experiments import mixed_precision as mp
from posekit.train import tasks

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
BREAKDOWN_PARTS = ('forward_ms', 'loss_ms', 'backward_ms', 'optimizer_ms')


@pytest.fixture(scope='module')
def smoke(experiment_runs):
    """(out folder, results.json) of one smoke run on procedural motion (conftest)."""
    (out, process, _), = experiment_runs['mixed_precision']
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
        # per interleaved round: the ratio of the two policies' median steps in that round
        rounds = np.array(record['step_rounds'][config.timing_warmup:])
        fp32_rounds = np.array(fp32['step_rounds'][config.timing_warmup:])
        common_rounds = sorted(set(rounds) & set(fp32_rounds))
        expected = [np.median(np.array(fp32['step_ms'][config.timing_warmup:])[fp32_rounds == k])
                    / np.median(np.array(timed)[rounds == k]) for k in common_rounds]
        assert len(common_rounds) >= 1
        np.testing.assert_allclose(record['speedup_rounds'], expected, rtol=1e-9)
        assert record['speedup_spread'] == [min(expected), max(expected)]


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


def _record(model, policy, ms, loss, params=10, width=1, rounds=(0, 0, 1, 1)):
    step_ms = [ms * (1 + k) for k in rounds]  # round k runs at (1 + k) x the speed of round 0
    return dict(model=model, kind=model.split('@')[0], width=width, policy=policy, ok=True, step_ms_median=ms,
                final_loss=loss, val_loss=loss, params=params, forward_macs_per_step=params, step_ms=step_ms,
                step_rounds=list(rounds))


def test_compare_policies_and_checks():
    pair = [_record('m@1x', 'float32', 100.0, 2.0), _record('m@1x', 'mixed_bfloat16', 80.0, 2.08)]
    fp32, low = tasks.compare_policies(pair, 'float32', 'mixed_bfloat16')
    assert fp32['speedup_vs_fp32'] == 1.0 and low['speedup_vs_fp32'] == pytest.approx(1.25)
    assert low['speedup_rounds'] == pytest.approx([1.25, 1.25]) and fp32['speedup_rounds'] == [1.0, 1.0]
    assert low['loss_rel_diff'] == pytest.approx(0.04) and low['val_loss_rel_diff'] == pytest.approx(0.04)
    assert low['auto_choice'] == 'mixed_bfloat16' and 'test_loss_rel_diff' not in low
    wide = tasks.compare_policies([_record('m@4x', 'float32', 400.0, 2.0, 100, 4),
                                   _record('m@4x', 'mixed_bfloat16', 200.0, 2.02, 100, 4)], 'float32', 'mixed_bfloat16')
    results = {c.claim: c.holds for c in mp.checks([fp32, low] + wide, 'mixed_bfloat16')}
    assert results == {'m: the mixed_bfloat16 speed-up grows with model size (1x -> 4x width)': True,
                       'largest model (m@4x, 0.0M params) >= 1.3x faster': True,
                       'final training losses of mixed_bfloat16 within 5% of float32': True,
                       '(informative) validation losses of mixed_bfloat16 within 5% of float32': True}


def test_checks_follow_the_numbers():
    def pair(kind, width, params, fp32_ms, mixed_ms, loss_diff):
        return tasks.compare_policies([_record(f'{kind}@{width}x', 'float32', fp32_ms, 2.0, params, width),
                                       _record(f'{kind}@{width}x', 'mixed_bfloat16', mixed_ms, 2.0 * (1 + loss_diff),
                                               params, width)], 'float32', 'mixed_bfloat16')
    good = pair('motion_vae', 1, 10, 100.0, 80.0, 0.01) + pair('motion_vae', 4, 100, 400.0, 200.0, 0.02)
    results = {c.claim: c.holds for c in mp.checks(good, 'mixed_bfloat16')}
    assert results == {'motion_vae: the mixed_bfloat16 speed-up grows with model size (1x -> 4x width)': True,
                       'largest model (motion_vae@4x, 0.0M params) >= 1.3x faster': True,
                       'final training losses of mixed_bfloat16 within 5% of float32': True,
                       '(informative) validation losses of mixed_bfloat16 within 5% of float32': True}
    bad = pair('motion_vae', 1, 10, 100.0, 50.0, 0.01) + pair('motion_vae', 4, 100, 400.0, 380.0, 0.2)
    assert [c.holds for c in mp.checks(bad, 'mixed_bfloat16')] == [False, False, False, False]
    failed = tasks.compare_policies([_record('m@1x', 'float32', 100.0, 2.0),
                                     {**_record('m@1x', 'mixed_bfloat16', 1, 1), 'ok': False}], 'float32', 'mixed_bfloat16')
    assert all('speedup_vs_fp32' not in r for r in failed)
    assert [c.holds for c in mp.checks(failed, 'mixed_bfloat16')] == [False]


def _breakdown(full, optimizer):
    return dict(data_ms=1.0, forward_ms=full / 4, loss_ms=0.0, backward_ms=full / 2 - optimizer, optimizer_ms=optimizer,
                full_step_ms=full, loop_overhead_ms=0.0)


def _study(vae_1x, vae_4x, loss_diff, optimizer_ms, backbone_speedup):
    """Records of a study whose mixed policy has the given speed-ups, loss difference and optimizer time."""
    records = []
    for name, speedup, params in (('motion_vae@1x', vae_1x, 9e6), ('motion_vae@4x', vae_4x, 1.3e8),
                                  ('metrabs_backbone@1x', backbone_speedup, 2e5)):
        width = int(name[-2])
        fp32 = dict(_record(name, 'float32', 100.0, 2.0, params, width), breakdown=_breakdown(100.0, 20.0),
                    gemm_dim_typical=48.0)
        low = dict(_record(name, 'mixed_bfloat16', 100.0 / speedup, 2.0 * (1 + loss_diff), params, width),
                   breakdown=_breakdown(100.0 / speedup, optimizer_ms), gemm_dim_typical=48.0)
        records += tasks.compare_policies([fp32, low], 'float32', 'mixed_bfloat16')
    return records


def test_discussion_sentences_follow_the_numbers():
    grows = mp.discussion(_study(1.3, 1.6, 0.001, 30.0, 0.85), 'mixed_bfloat16')
    shrinks = mp.discussion(_study(1.02, 0.9, 0.2, 5.0, 1.2), 'mixed_bfloat16')
    assert 'As in the paper, the gain of the HuMoR-like model grows with width: 1.30x' in grows
    assert 'and 1.60x at 4x width (paper: about 2x)' in grows
    assert 'Unlike in the paper, the gain of the HuMoR-like model does not grow with width: 1.02x' in shrinks
    assert 'gains enough for `precision.choose_policy` to pick mixed_bfloat16 (1.30x >= 1.05x)' in grows
    assert 'does not gain enough for `precision.choose_policy` to pick mixed_bfloat16 (1.02x < 1.05x)' in shrinks
    assert 'Training losses stay within 0.1 % of float32' in grows
    assert 'Training losses differ by up to 20.0 % of float32' in shrinks
    # largest model motion_vae@4x: optimizer 30 of 62.5 ms (48 %) bounds the speed-up at 100 / 30 = 3.3x
    assert 'takes 30 of the 62 ms mixed step (48 %; 20 ms in float32): it bounds the speed-up at 3.3x' in grows
    assert 'takes 5 of the 111 ms mixed step (4 %; 20 ms in float32): it is not what limits the speed-up' in shrinks
    assert 'gets 0.85x, so `precision.choose_policy` keeps it in float32' in grows
    assert 'gets 1.20x, so `precision.choose_policy` picks mixed_bfloat16' in shrinks
    for text in (grows, shrinks):  # every sentence carries a measured number
        assert all(any(ch.isdigit() for ch in sentence) for sentence in text.split('. ') if sentence)


def test_make_data_adds_the_external_test_motion_as_a_test_split(monkeypatch):
    from posekit.data import mocap
    config = mp.Config(**{**mp.dataclasses.asdict(mp.PRESETS['smoke']), 'models': ('motion_vae',)})
    external = mocap.procedural_motions(n_subjects=2, clips_per_subject=1, seconds=2.0, fps=config.fps, seed=7)
    calls = []

    def load_mocap_folder(folder, **kwargs):
        calls.append((folder, kwargs))
        return external

    monkeypatch.setattr(mocap, 'load_mocap_folder', load_mocap_folder)
    data = mp.make_data(config, None, '/external/motion', seed=0, log=lambda message: None)
    assert calls == [('/external/motion', dict(fps=config.fps, max_frames_per_clip=config.max_frames_per_clip))]
    assert sorted(data) == [f'motion_vae.{split}.{i}' for split in ('test', 'train', 'val') for i in (0, 1)]
    from posekit.data import bodies
    pairs = sum(len(bodies.format_joints(c.motion, mp.MOTION_JOINTS, subject=c.subject)) - 2 for c in external)
    assert len(data['motion_vae.test.0']) == len(data['motion_vae.test.1']) == pairs  # every state pair of the clips
    assert data['motion_vae.test.0'].shape[1] == data['motion_vae.train.0'].shape[1] == 6 * 24
    assert 'motion_vae.test.0' not in mp.make_data(config, None, None, seed=0, log=lambda message: None)
