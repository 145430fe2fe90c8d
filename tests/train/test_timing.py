"""Tests of posekit.train.timing: interleaved candidates, statistics, turns between processes, step parts."""
import sys

import numpy as np
import pytest

from posekit.train import timing


class FakeClock:
    """A clock that advances only when a candidate 'works' (``advance``); records the call order."""

    def __init__(self):
        self.now = 0.0
        self.log = []

    def __call__(self):
        return self.now

    def worker(self, name, seconds):
        def work():
            self.log.append(name)
            self.now += seconds() if callable(seconds) else seconds
        return work


def test_interleave_orders_warmup_then_rounds_and_times_each_call():
    clock = FakeClock()
    durations = timing.interleave({'a': clock.worker('a', 2.0), 'b': clock.worker('b', 0.5)}, rounds=3, calls=2,
                                  warmup=1, clock=clock)
    assert clock.log == ['a', 'b'] + ['a', 'a', 'b', 'b'] * 3  # warm-up first, then rounds of each in turn
    assert durations['a'].shape == (3, 2) and np.all(durations['a'] == 2.0) and np.all(durations['b'] == 0.5)


def test_interleave_spreads_a_load_change_over_all_candidates():
    # The machine slows down 3x after the 4th call: interleaving makes both candidates see the slow phase.
    clock = FakeClock()
    calls = []

    def cost(base):
        def seconds():
            calls.append(1)
            return base * (3.0 if len(calls) > 4 else 1.0)
        return seconds

    d = timing.interleave({'x': clock.worker('x', cost(1.0)), 'y': clock.worker('y', cost(2.0))}, rounds=4, clock=clock)
    ratio = timing.round_speedups(d['y'], np.arange(4), d['x'], np.arange(4))
    np.testing.assert_allclose(ratio, 2.0)  # the ratio per round is unaffected by the load change
    assert d['x'][:, 0].tolist() == [1.0, 1.0, 3.0, 3.0]


def test_interleave_after_round_and_bad_arguments():
    clock = FakeClock()
    seen = []
    timing.interleave({'a': clock.worker('a', 1.0)}, rounds=2, clock=clock,
                      after_round=lambda r, d: seen.append((r, d['a'].shape)))
    assert seen == [(0, (1, 1)), (1, (2, 1))]
    with pytest.raises(ValueError, match='rounds=0'):
        timing.interleave({'a': clock.worker('a', 1.0)}, rounds=0)
    with pytest.raises(ValueError, match='candidates must'):
        timing.interleave({}, rounds=1)
    with pytest.raises(ValueError, match="a=3"):
        timing.interleave({'a': 3}, rounds=1)


def test_summarize_statistics_in_ms():
    seconds = np.arange(1, 11) / 1000.0  # 1..10 ms
    stats = timing.summarize(seconds)
    assert stats.n == 10 and stats.median_ms == pytest.approx(5.5)
    assert stats.spread_ms == pytest.approx((np.percentile(np.arange(1, 11), 10), np.percentile(np.arange(1, 11), 90)))
    assert stats.iqr_ms == pytest.approx((3.25, 7.75)) and (stats.min_ms, stats.max_ms) == (1.0, 10.0)
    with pytest.raises(ValueError, match='at least one'):
        timing.summarize([])
    with pytest.raises(ValueError, match='finite and >= 0'):
        timing.summarize([0.1, -1.0])


def test_speedups_and_round_speedups():
    stats = {'float32': timing.summarize([0.2, 0.2]), 'bf16': 100.0}
    assert timing.speedups(stats, 'float32') == {'float32': 1.0, 'bf16': pytest.approx(2.0)}
    with pytest.raises(ValueError, match="reference='fp16'"):
        timing.speedups(stats, 'fp16')
    with pytest.raises(ValueError, match='medians must be positive'):
        timing.speedups({'a': 1.0, 'b': 0.0}, 'a')
    # round 0: medians 4 / 2; round 1: 9 / 3; round 2 only in the reference -> left out
    ratios = timing.round_speedups([4, 4, 9, 1], [0, 0, 1, 2], [2, 3, 3], [0, 1, 1])
    np.testing.assert_allclose(ratios, [2.0, 3.0])
    with pytest.raises(ValueError, match='same length'):
        timing.round_speedups([1, 2], [0], [1], [0])


class FakeTurn:
    def __init__(self, clock, wait_s):
        self.clock, self.wait_s, self.messages = clock, wait_s, []

    def hand_over(self, message):
        self.messages.append(message)
        self.clock.now += self.wait_s  # the other worker's turn: not counted in any step


def test_step_recorder_hands_over_by_turn_length_and_excludes_waits():
    clock = FakeClock()
    turn = FakeTurn(clock, wait_s=100.0)
    recorder = timing.StepRecorder(turn, turn_seconds=2.5, total_steps=7, clock=clock)
    for step in range(1, 8):
        clock.now += 1.0  # every step takes 1 s
        recorder(step, {'loss': float(step)})
    # READY after step 1, YIELD after step 4 (3 s >= 2.5 s into the turn); never after the last step
    assert turn.messages == [timing.READY, timing.YIELD]
    assert recorder.durations_s == [1.0] * 6 and recorder.losses == [float(s) for s in range(1, 8)]
    assert recorder.rounds == [0, 0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match='turn_seconds=0'):
        timing.StepRecorder(turn, 0, 3)


def test_step_parts_are_differences_of_cumulative_minima():
    seconds = {'forward': 0.010, 'forward_loss': 0.012, 'forward_loss_gradients': 0.030, 'full_step': 0.035}
    ms = timing.step_parts_ms(seconds)
    assert ms == pytest.approx({'forward_ms': 10.0, 'loss_ms': 2.0, 'backward_ms': 18.0, 'optimizer_ms': 5.0,
                                'full_step_ms': 35.0})
    with pytest.raises(ValueError, match='full_step'):
        timing.step_parts_ms({k: v for k, v in seconds.items() if k != 'full_step'})


def test_time_step_parts_keeps_the_minimum_over_repeats():
    import tensorflow as tf
    clock = FakeClock()
    costs = iter([5.0, 5.0] + [3.0, 1.0, 4.0])  # warm-up, calibration call, then 3 repeats (1 call each)

    def part():
        clock.now += next(costs)
        return tf.constant(0.0)

    after = []
    result = timing.time_step_parts({'forward': part}, repeats=3, after_repeat=after.append, clock=clock)
    assert result == {'forward': 1.0} and after == [0, 1, 2]


WORKER = '''
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location('timing', sys.argv[5])  # the module alone (no TensorFlow)
timing = sys.modules['timing'] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(timing)
turn = timing.Turn(int(sys.argv[1]), int(sys.argv[2]))
name, path = sys.argv[3], sys.argv[4]
turn.hand_over(timing.READY)
for k in range(3):
    with open(path, 'a') as f:
        f.write(f'{name}{k} start\\n')
    time.sleep(0.05)
    with open(path, 'a') as f:
        f.write(f'{name}{k} end\\n')
    if k < 2:
        turn.hand_over(timing.YIELD)
turn.done()
'''


def test_run_in_turns_never_overlaps_and_alternates(tmp_path):
    log = tmp_path / 'log.txt'
    script = tmp_path / 'worker.py'
    script.write_text(WORKER)

    def command(name):
        return lambda r, w: [sys.executable, str(script), str(r), str(w), name, str(log), timing.__file__]

    exits = timing.run_in_turns([command('a'), command('b')], timeout_s=120,
                                log_paths=[tmp_path / 'a.log', tmp_path / 'b.log'])
    assert [e.returncode for e in exits] == [0, 0] and [e.turns for e in exits] == [3, 3]
    assert all(e.peak_mem_mb > 0 for e in exits)
    lines = log.read_text().split()
    events = [(lines[i], lines[i + 1]) for i in range(0, len(lines), 2)]
    # each start is followed by its own end (no overlap), and the workers alternate
    assert all(events[i][1] == 'start' and events[i + 1] == (events[i][0], 'end') for i in range(0, len(events), 2))
    order = [name[0] for name, kind in events if kind == 'start']
    assert order in (list('ababab'), list('bababa'))
    with pytest.raises(ValueError, match='timeout_s=0'):
        timing.run_in_turns([command('a')], timeout_s=0)
