"""Tests of experiments.parallel_video: the configuration plan, and one end-to-end smoke run (results.json)."""
import json
import math

import pytest

from experiments import common
from experiments import parallel_video as pv

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def test_default_plan_has_every_configuration_of_the_issue():
    specs = pv.plan(pv.PRESETS['default'])
    keys = {(s.family, s.subnets, s.clocks, s.temporal, s.feedback, s.distilled) for s in specs}
    for clocks in (False, True):
        for k in (1, 2, 4, 7, 14):
            assert ('densenet', k, clocks, False, False, False) in keys
        for k in (1, 5, 10):
            assert ('inception', k, clocks, False, False, False) in keys
    assert ('densenet', 4, False, True, False, False) in keys  # temporal filters
    assert ('densenet', 4, False, False, True, False) in keys  # feedback
    assert ('densenet', 4, False, False, False, True) in keys  # distillation
    assert len(keys) == len(specs)
    first = {}
    for s in specs:
        first.setdefault(s.family, s)
    assert all(s.is_sequential for s in first.values())  # each family starts with its teacher


def test_plan_and_overrides_reject_bad_settings():
    with pytest.raises(ValueError, match="families must be among .*received 'resnet'"):
        pv.plan(pv.Config(families=('resnet',)))
    with pytest.raises(ValueError, match='must include 1'):
        pv.plan(pv.Config(densenet_subnets=(2, 4)))
    with pytest.raises(ValueError, match='distilled students must be parallel'):
        pv.plan(pv.Config(distill_densenet_subnets=(1,)))
    with pytest.raises(ValueError, match="unknown config key 'nope'"):
        common.apply_overrides(pv.PRESETS['smoke'], ['nope=1'])
    assert common.apply_overrides(pv.PRESETS['smoke'], ['densenet_subnets=1,2']).densenet_subnets == (1, 2)


@pytest.fixture(scope='module')
def smoke(experiment_runs):
    (out, process, _), = experiment_runs['parallel_video']  # --preset=smoke --seed=1 (conftest)
    assert process.returncode == 0, process.stderr[-4000:]
    record = json.loads((out / 'results.json').read_text())
    common.validate_results(record)
    return out, record


def test_smoke_writes_a_record_per_configuration_with_exact_counts(smoke):
    out, record = smoke
    results = record['results']
    config = pv.PRESETS['smoke']
    assert record['experiment'] == 'parallel_video' and record['seeds'] == [1]
    # The feedback variant: its activations carry 17 fed-back channels the teacher has not (the default
    # preset crashed computing its distance to the teacher); its distance is checked finite below.
    assert config.variants == ('feedback',)
    models = [r for r in results['records'] if r['kind'] == 'model']
    assert [r['model'] for r in models] == [s.name for s in pv.plan(config)]
    for r in models:
        assert r['unit_executions_per_16_frames'] == r['analytic_unit_executions_per_16_frames']
        assert r['miniblock_executions_per_16_frames'] == r['analytic_miniblock_executions_per_16_frames']
        assert math.isclose(r['measured_flops_per_frame'], r['flops_per_frame'], rel_tol=1e-9)
        for key in ('test_loss', 'train_loss', 'pck', 'frames_per_s', 'speedup_vs_sequential_no_clocks',
                    'distance_to_teacher'):
            assert math.isfinite(r[key]), (r['model'], key)
        assert r['params'] > 0 and r['frames_per_s'] > 0 and len(r['ms_per_frame_rounds']) == config.timing_rounds
        assert not r['temporal'] and r['latency'] == r['subnets'] - 1  # one parallel link per extra subnetwork
        assert r['sequential_depth_per_frame'] >= 1
    by = {(r['subnets'], r['clocks'], r['distilled']): r for r in models}
    for k in config.densenet_subnets:
        plain, clocked = by[(k, False, False)], by[(k, True, False)]
        assert clocked['unit_executions_per_16_frames'] < plain['unit_executions_per_16_frames']
        assert clocked['flops_per_frame'] < plain['flops_per_frame']
        assert plain['flops_per_frame'] == by[(1, False, False)]['flops_per_frame']
    assert by[(1, False, False)]['speedup_vs_sequential_no_clocks'] == 1.0
    assert by[(4, False, True)]['distill_units'] and by[(4, False, True)]['distill_weight'] == config.distill_weight
    baselines = [r for r in results['records'] if r['kind'] == 'baseline']
    assert [b['model_family'] for b in baselines] == list(config.families)
    assert all(math.isfinite(b['test_loss']) for b in baselines)
    report = (out / 'results.md').read_text()
    assert 'densenet_s4_clocks' in report and 'Notes' in report and 'sequential depth per frame' in report
    assert (out / 'loss_vs_speed.png').read_bytes()[:8] == PNG_MAGIC
    checks = {c['claim']: c for c in record['checks']}
    counting = 'Par-DenseNet: executions and FLOPs counted inside the compiled step equal the analytic counts ' \
               'for every configuration'
    assert checks[counting]['holds'] is True  # the counts compared one by one above
    beat = [r for r in models if r['test_loss'] < baselines[0]['test_loss']]
    baseline_check = [c for name, c in checks.items() if 'beats the constant mean-heatmap' in name]
    assert len(baseline_check) == 1 and baseline_check[0]['holds'] == (len(beat) == len(models))
    # Trained past the pipeline-filling transient: fill_steps is the latency without clocks and more with them;
    # the burn-in is the rest of the transient, and every model is scored from the largest fill on.
    for r in models:
        assert r['burn_in'] == r['fill_steps'] - r['latency'] >= 0
        assert (r['fill_steps'] > r['latency']) == (r['clocks'] and r['subnets'] > 1), r['model']
        assert r['eval_warmup'] == max(m['fill_steps'] for m in models)
    clocked_ratio = by[(4, True, False)]['test_loss'] / by[(1, True, False)]['test_loss']
    clocked_check = [c for name, c in checks.items() if 'clocked model with 4 subnetworks' in name]
    assert len(clocked_check) == 1 and clocked_check[0]['holds'] == (clocked_ratio <= pv.CLOCKED_PARALLEL_LOSS_RATIO)
