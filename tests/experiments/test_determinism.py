"""Issue 15: two same-seed runs of the main experiment are bit-identical (results and weights)."""
import json

import numpy as np
import pytest


def _checkpoint_arrays(out, stage):
    folder = sorted((out / stage / 'checkpoints').glob('ckpt-*'))[-1]
    arrays = np.load(folder / 'state.npz')
    return folder.name, {k: arrays[k] for k in arrays.files}


def test_two_smoke_runs_are_bit_identical(metrabs_smoke_run, metrabs_runs):
    first, _, _ = metrabs_smoke_run
    (second, process, _), = metrabs_runs['again']  # run at the same time as the first (conftest)
    assert process.returncode == 0, process.stderr[-3000:]
    a = json.loads((first / 'results.json').read_text())
    b = json.loads((second / 'results.json').read_text())
    assert json.dumps(a['results'], sort_keys=True) == json.dumps(b['results'], sort_keys=True)
    assert json.dumps(a['checks'], sort_keys=True) == json.dumps(b['checks'], sort_keys=True)
    assert dict(a['config'], export=False) == b['config'] and a['config']['deterministic'] is True
    for stage in ['stage1'] + [f'stage2_{v}' for v in a['config']['variants']]:
        name_a, arrays_a = _checkpoint_arrays(first, stage)
        name_b, arrays_b = _checkpoint_arrays(second, stage)
        assert name_a == name_b and sorted(arrays_a) == sorted(arrays_b)
        for key in arrays_a:
            assert arrays_a[key].tobytes() == arrays_b[key].tobytes(), (stage, key)
    acae_a, acae_b = np.load(first / 'acae.npz'), np.load(second / 'acae.npz')
    assert sorted(acae_a.files) == sorted(acae_b.files)
    for key in acae_a.files:
        assert acae_a[key].tobytes() == acae_b[key].tobytes(), key


def test_precision_choice_is_recorded_and_reused(metrabs_runs):
    """The policy chosen from timings ('auto') is written to precision.json and reused without timing again."""
    (out, process, _), (_, resumed, _) = metrabs_runs['precision']  # a stage-1 run, then --resume in its folder
    assert process.returncode == 0, process.stderr[-3000:]
    recorded = json.loads((out / 'precision.json').read_text())
    assert recorded['requested'] == 'auto' and recorded['policy'] in ('float32', 'mixed_bfloat16', 'mixed_float16')
    assert 'choose_policy' in process.stderr  # timed
    # Resumed in the same folder: the recorded choice, no timing.
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 'choose_policy' not in resumed.stderr
    assert f"precision 'auto' -> {recorded['policy']} (recorded in" in resumed.stderr
