"""MeTRAbs learning-rate schedules (supplement S2 of Sárándi et al., WACV 2023)."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from posekit.train.schedules import FinetuneSchedule, MetrabsSchedule, finetune_lr, metrabs_lr

BASE = 2.12e-4
T = 10_000


def metrabs_formula(s, t=T, base=BASE):
    if s < 0.92 * t:
        return base * 3 ** (-s / (0.92 * t))
    return base / 30 * 3 ** (-(s - 0.92 * t) / (0.08 * t))


def head_formula(s, t=T, base=BASE):
    if s < 0.5 * t:
        return base * 3 ** (-s / (0.5 * t))
    return base / 30 * 3 ** (-(s - 0.5 * t) / (0.5 * t))


def backbone_formula(s, t=T, base=BASE):
    return base / 30 * 3 ** (-s / t)


METRABS_STEPS = [0, int(0.46 * T), int(0.92 * T) - 1, int(0.92 * T), T]
HALF_STEPS = [0, T // 4, T // 2 - 1, T // 2, T]


def _evaluate_all_ways(fn, steps):
    """fn on python ints, a numpy array, eager tensors and inside tf.function; returns four arrays."""
    python = np.array([fn(s) for s in steps])
    numpy = fn(np.array(steps))
    eager = np.array([fn(tf.constant(s, tf.int64)).numpy() for s in steps])
    graph = tf.function(lambda s: fn(s))(tf.constant(steps, tf.int64)).numpy()
    return python, numpy, eager, graph


def test_metrabs_lr_equals_formula():
    expected = np.array([metrabs_formula(s) for s in METRABS_STEPS])
    python, numpy, eager, graph = _evaluate_all_ways(lambda s: metrabs_lr(s, T), METRABS_STEPS)
    assert all(isinstance(metrabs_lr(s, T), float) for s in METRABS_STEPS)
    np.testing.assert_allclose(python, expected, rtol=1e-12)
    np.testing.assert_allclose(numpy, expected, rtol=1e-12)
    np.testing.assert_allclose(eager, expected, rtol=1e-6)  # float32 result
    np.testing.assert_allclose(graph, expected, rtol=1e-6)
    # shape of the recipe: 3x decay over the first phase, 30x drop, 3x decay over the second
    assert metrabs_lr(int(0.92 * T), T) == pytest.approx(BASE / 30)
    assert metrabs_lr(int(0.92 * T) - 1, T) == pytest.approx(BASE / 3, rel=1e-3)
    assert metrabs_lr(T, T) == pytest.approx(BASE / 90)
    assert metrabs_lr(0, T, base=1.0) == 1.0


@pytest.mark.parametrize('part,formula', [('head', head_formula), ('backbone', backbone_formula)])
def test_finetune_lr_equals_formula(part, formula):
    expected = np.array([formula(s) for s in HALF_STEPS])
    for values, rtol in zip(_evaluate_all_ways(lambda s: finetune_lr(s, T, part), HALF_STEPS),
                            (1e-12, 1e-12, 1e-6, 1e-6)):
        np.testing.assert_allclose(values, expected, rtol=rtol)


def test_finetune_head_is_a_warm_restart_and_backbone_starts_dropped():
    assert finetune_lr(0, T, 'head') == pytest.approx(BASE)
    assert finetune_lr(T // 2, T, 'head') == pytest.approx(BASE / 30)
    assert finetune_lr(T, T, 'head') == pytest.approx(BASE / 90)
    assert finetune_lr(0, T, 'backbone') == pytest.approx(BASE / 30)
    assert finetune_lr(T, T, 'backbone') == pytest.approx(BASE / 90)


def test_keras_schedules_drive_an_optimizer_and_round_trip():
    schedule = MetrabsSchedule(T)
    optimizer = keras.optimizers.AdamW(schedule)
    variable = keras.Variable(np.zeros(2, 'float32'))
    optimizer.build([variable])
    optimizer.iterations.assign(int(0.92 * T))
    assert float(optimizer.learning_rate) == pytest.approx(metrabs_formula(int(0.92 * T)), rel=1e-6)
    for sched in (schedule, FinetuneSchedule(T, 'head', base=1e-3), FinetuneSchedule(T, 'backbone')):
        clone = type(sched).from_config(sched.get_config())
        assert clone.get_config() == sched.get_config()
        assert float(clone(123)) == pytest.approx(float(sched(123)))
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(restored._learning_rate, MetrabsSchedule)
    assert restored._learning_rate.get_config() == schedule.get_config()


@pytest.mark.parametrize('call,match', [
    (lambda: metrabs_lr(0, 0), 'total_steps=0'),
    (lambda: metrabs_lr(0, T, base=-1.0), 'base=-1.0'),
    (lambda: metrabs_lr(-1, T), 'step=-1'),
    (lambda: finetune_lr(0, T, 'neck'), "part='neck'"),
    (lambda: FinetuneSchedule(T, 'tail'), "part='tail'"),
    (lambda: MetrabsSchedule(-5), 'total_steps=-5'),
])
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
