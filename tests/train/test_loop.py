"""The training loop: updates, constraints, optimizers, BN-inference phase, checkpoints, resume, distribution."""
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from posekit.layers import GhostBatchNormalization
from posekit.train import checkpoint as checkpoint_lib
from posekit.train import loop
from posekit.train.loop import TrainConfig, TrainingInterrupted, train
from posekit.train.precision import policy_scope
from posekit.train.schedules import FinetuneSchedule, MetrabsSchedule, finetune_lr

REPO = pathlib.Path(__file__).resolve().parents[2]
HERE = pathlib.Path(__file__).resolve().parent
BATCH = 8
IN_DIM = 4
MAX_NORM = 0.3
DATA_SEED = 7
NOISE_STD = 0.1
SUBPROCESS_TIMEOUT_S = 240


# ------------------------------------------------------------------------------------------------ helpers
class TrainingProbe(keras.layers.Layer):
    """Identity layer recording the ``training`` flag it is traced with."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seen = []

    def call(self, x, training=None):
        self.seen.append(training)
        return x


def make_model(policy='float32', seed=1, dropout=0.2, keras_bn=False, allow_cpu_float16=False):
    """Dense(max-norm) -> [keras BN] -> GhostBN(4) -> Dropout -> probe -> Dense(max-norm, float32 out)."""
    with policy_scope(policy, allow_cpu_float16=allow_cpu_float16):
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((IN_DIM,))
        h = keras.layers.Dense(16, activation='relu', kernel_constraint=keras.constraints.MaxNorm(MAX_NORM),
                               name='hidden')(inputs)
        if keras_bn:
            h = keras.layers.BatchNormalization(name='kbn')(h)
        h = GhostBatchNormalization(virtual_batch_size=4, momentum=0.9, name='gbn')(h)
        h = keras.layers.Dropout(dropout, seed=seed, name='dropout')(h)
        h = TrainingProbe(name='probe')(h)
        outputs = keras.layers.Dense(1, dtype='float32', kernel_constraint=keras.constraints.MaxNorm(MAX_NORM),
                                     name='head')(h)
        return keras.Model(inputs, outputs)


def batch_of_step(step):
    """The batch of ``step`` (a pure function of the step): x [8, 4], y [8, 1]."""
    x = tf.random.stateless_normal((BATCH, IN_DIM), seed=tf.stack([tf.constant(DATA_SEED, tf.int64), step]))
    y = tf.reduce_sum(x, axis=1, keepdims=True) + tf.sin(3.0 * x[:, :1])
    return x, y


def dataset_fn(start_step):
    return tf.data.Dataset.range(start_step, 10 ** 9).map(batch_of_step)


def make_loss_fn(noise=None):
    """MSE loss (+ target noise drawn from the SeedGenerator ``noise`` if given) and an MAE metric."""
    def loss_fn(model, batch, step, training):
        x, y = batch
        if noise is not None:
            y = y + NOISE_STD * keras.random.normal(tf.shape(y), seed=noise)
        pred = model(x, training=training)
        return tf.reduce_mean(tf.square(pred - y)), {'mae': tf.reduce_mean(tf.abs(pred - y))}
    return loss_fn


def config(total_steps, **kwargs):
    kwargs.setdefault('precision', 'float32')
    kwargs.setdefault('progress', False)
    return TrainConfig(total_steps=total_steps, **kwargs)


def state_arrays(model, optimizers=()):
    return [v.numpy() for v in model.variables] + [v.numpy() for opt in optimizers for v in opt.variables]


def max_column_norm(model, name):
    return float(np.max(np.linalg.norm(model.get_layer(name).kernel.numpy(), axis=0)))


def assert_states_equal(a, b):
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        assert np.array_equal(x, y), f'state array {i} differs (max abs diff {np.max(np.abs(x - y))})'


def run_python(code, timeout=SUBPROCESS_TIMEOUT_S):
    env = dict(os.environ, PYTHONPATH=f'{REPO}{os.pathsep}{HERE}', TF_CPP_MIN_LOG_LEVEL='2')
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=str(REPO))


# ---------------------------------------------------------------------------------------- basic behaviour
def test_train_learns_logs_checkpoints_and_draws_progress(tmp_path, capsys):
    model = make_model()
    optimizer = keras.optimizers.AdamW(3e-2)
    result = train(model, make_loss_fn(), dataset_fn, optimizer,
                   config(40, log_every=10, checkpoint_every=10, keep_last=2, progress=True), out_dir=tmp_path)
    history = result.history
    assert history['step'] == [10.0, 20.0, 30.0, 40.0]
    assert set(history) == {'step', 'loss', 'mae', 'learning_rate', 'steps_per_s'}
    assert history['loss'][-1] < 0.5 * history['loss'][0]
    assert history['learning_rate'] == pytest.approx([3e-2] * 4)
    assert (result.start_step, result.final_step, result.policy) == (0, 40, 'float32')
    assert result.steps_per_s > 0 and result.wall_time_s > 0
    # keep-last-2 checkpoints
    assert [s for s, _ in checkpoint_lib.list_checkpoints(tmp_path / 'checkpoints')] == [30, 40]
    assert result.checkpoint == str(tmp_path / 'checkpoints' / 'ckpt-000000040')
    # TensorBoard scalars
    events = list((tmp_path / 'tb').glob('events.out.tfevents.*'))
    assert events
    tags = {value.tag: value.metadata.plugin_data.plugin_name
            for event in tf.compat.v1.train.summary_iterator(str(events[0])) for value in event.summary.value}
    assert tags['loss'] == 'scalars' and {'mae', 'learning_rate', 'steps_per_s'} <= set(tags)
    err = capsys.readouterr().err
    assert 'step 40/40' in err and 'steps/s' in err and 'ETA' in err
    # resuming a finished run does nothing and returns the stored history
    again = train(model, make_loss_fn(), dataset_fn, optimizer, config(40, log_every=10), out_dir=tmp_path)
    assert again.start_step == again.final_step == 40 and again.history == history


def test_quiet_without_out_dir_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = train(make_model(), make_loss_fn(), dataset_fn, keras.optimizers.SGD(1e-2), config(3))
    assert capsys.readouterr().err == ''
    assert result.checkpoint is None and list(tmp_path.iterdir()) == []
    assert result.history['step'] == [3.0]


@pytest.mark.filterwarnings("ignore:precision='mixed_float16' on a machine without a GPU")
@pytest.mark.parametrize('policy,n_optimizers,clip_norm', [
    ('float32', 1, None), ('mixed_bfloat16', 1, None), ('float32', 2, None), ('mixed_bfloat16', 2, 1.0),
    ('mixed_float16', 1, None), ('mixed_float16', 2, 1.0)])
def test_max_norm_holds_after_every_step(policy, n_optimizers, clip_norm):
    float16 = policy == 'mixed_float16'
    model = make_model(policy, allow_cpu_float16=float16)
    if n_optimizers == 2:
        optimizers = [(keras.optimizers.AdamW(0.1), lambda v: v.path.startswith('head/')),
                      (keras.optimizers.AdamW(0.1), lambda v: not v.path.startswith('head/'))]
    else:
        optimizers = keras.optimizers.AdamW(0.1)
    norms = []

    def check(step, logs):
        norms.append((max_column_norm(model, 'hidden'), max_column_norm(model, 'head')))

    result = train(model, make_loss_fn(), dataset_fn, optimizers,
                   config(12, precision=policy, allow_cpu_float16=float16, clip_norm=clip_norm), callbacks=[check])
    norms = np.array(norms)
    assert norms.shape == (12, 2)
    assert np.all(norms <= MAX_NORM * (1 + 1e-6))
    assert np.all(norms[-1] > 0.99 * MAX_NORM)  # the constraint is active, not vacuous
    assert result.history['loss'][-1] < result.history['loss'][0] or len(result.history['loss']) == 1
    if float16:
        assert all(isinstance(o, keras.optimizers.LossScaleOptimizer) for o in result.optimizers)
        scale = result.history['loss_scale'][-1]
        assert scale <= 2.0 ** 15 and np.log2(scale) == int(np.log2(scale))
        # several optimizers skip the same steps: their loss scales move together
        assert len({float(o.dynamic_scale.numpy()) for o in result.optimizers}) == 1


def test_two_optimizers_update_only_their_variables_with_their_schedules():
    model = make_model(dropout=0.0)
    head_vars = [v for v in model.trainable_variables if v.path.startswith('head/')]
    total = 100
    head_opt = keras.optimizers.AdamW(FinetuneSchedule(total, 'head'))
    frozen_opt = keras.optimizers.SGD(0.0)  # backbone with a zero rate: must stay unchanged
    before = {v.path: v.numpy() for v in model.trainable_variables}
    optimizers = [(head_opt, head_vars), (frozen_opt, lambda v: not v.path.startswith('head/'))]
    result = train(model, make_loss_fn(), dataset_fn, optimizers, config(10, log_every=5))
    for v in model.trainable_variables:
        if v.path.startswith('head/'):
            assert np.max(np.abs(v.numpy() - before[v.path])) > 1e-5, v.path
        elif v.constraint is None:
            assert np.array_equal(v.numpy(), before[v.path]), v.path
        else:  # only projected onto the max-norm ball (once before training, then after each zero-rate update)
            norms = np.linalg.norm(before[v.path], axis=0)
            np.testing.assert_allclose(v.numpy(), before[v.path] * np.minimum(1, MAX_NORM / norms), rtol=1e-5)
    assert result.history['learning_rate/0'] == pytest.approx([finetune_lr(5, total, 'head'),
                                                    finetune_lr(10, total, 'head')], rel=1e-6)
    assert result.history['learning_rate/1'] == [0.0, 0.0]


def test_optimizer_selection_errors():
    model = make_model()
    everything = lambda v: True
    with pytest.raises(ValueError, match=r'selected by optimizers\[0\] and optimizers\[1\]'):
        train(model, make_loss_fn(), dataset_fn, [(keras.optimizers.SGD(), everything),
                                                  (keras.optimizers.SGD(), everything)], config(1))
    with pytest.raises(ValueError, match=r'optimizers\[0\] selects no trainable variable'):
        train(model, make_loss_fn(), dataset_fn, [(keras.optimizers.SGD(), lambda v: False)], config(1))
    other = keras.Variable(np.zeros(3, 'float32'))
    with pytest.raises(ValueError, match='not trainable variables of the model'):
        train(model, make_loss_fn(), dataset_fn, [(keras.optimizers.SGD(), [other])], config(1))
    with pytest.raises(ValueError, match='optimizers must be a Keras optimizer'):
        train(model, make_loss_fn(), dataset_fn, 'adam', config(1))


def test_batchnorm_inference_phase_keeps_moving_statistics():
    model = make_model(keras_bn=True)
    bn_vars = ['kbn/moving_mean', 'kbn/moving_variance', 'gbn/moving_mean', 'gbn/moving_variance']
    snapshots = {}

    def snapshot(step, logs):
        snapshots[step] = {v.path: v.numpy() for v in model.variables}

    snapshot(0, {})
    model.get_layer('probe').seen.clear()  # forget the symbolic call of model construction
    train(model, make_loss_fn(), dataset_fn, keras.optimizers.AdamW(1e-2),
          config(5, bn_inference_steps=4), callbacks=[snapshot])
    assert sorted(snapshots) == list(range(10))
    for name in bn_vars:
        assert not np.array_equal(snapshots[0][name], snapshots[5][name]), name  # updated while training
        for step in range(6, 10):
            assert np.array_equal(snapshots[5][name], snapshots[step][name]), (name, step)
    for name in ['gbn/gamma', 'kbn/beta', 'hidden/kernel']:  # everything else still trains
        assert not np.array_equal(snapshots[5][name], snapshots[9][name]), name
    assert model.get_layer('gbn').trainable and model.get_layer('kbn').trainable  # restored after tracing
    # dropout & co. stay in training mode in both phases (one trace each)
    assert model.get_layer('probe').seen == [True, True]


def test_clip_norm_bounds_the_update():
    with policy_scope('float32'):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((IN_DIM,)), keras.layers.Dense(3), keras.layers.Dense(1)])
    before = [v.numpy() for v in model.trainable_variables]
    clip = 1e-3
    train(model, make_loss_fn(), dataset_fn, keras.optimizers.SGD(1.0), config(1, clip_norm=clip))
    delta = np.sqrt(sum(np.sum((v.numpy() - b) ** 2) for v, b in zip(model.trainable_variables, before)))
    np.testing.assert_allclose(delta, clip, rtol=1e-4)


def test_precision_and_loss_checks():
    model32 = make_model('float32')
    with pytest.raises(ValueError, match=r"built with dtype policy 'float32'.*policy_scope\('mixed_bfloat16'\)"):
        train(model32, make_loss_fn(), dataset_fn, keras.optimizers.SGD(), config(1, precision='mixed_bfloat16'))
    model16 = make_model('mixed_bfloat16')
    with pytest.raises(ValueError, match="'mixed_bfloat16' but training uses precision 'float32'"):
        train(model16, make_loss_fn(), dataset_fn, keras.optimizers.SGD(), config(1))

    def bf16_loss(model, batch, step, training):
        return tf.cast(make_loss_fn()(model, batch, step, training)[0], tf.bfloat16), {}

    with pytest.raises(ValueError, match='float32 scalar loss.*bfloat16'):
        train(model16, bf16_loss, dataset_fn, keras.optimizers.SGD(), config(1, precision='mixed_bfloat16'))

    def nan_loss(model, batch, step, training):
        loss, metrics = make_loss_fn()(model, batch, step, training)
        return loss * np.nan, metrics

    with pytest.raises(FloatingPointError, match='non-finite loss nan at step 0'):
        train(model32, nan_loss, dataset_fn, keras.optimizers.SGD(), config(2))
    with pytest.raises(ValueError, match='config must be a TrainConfig'):
        train(model32, make_loss_fn(), dataset_fn, keras.optimizers.SGD(), {'total_steps': 1})


@pytest.mark.parametrize('kwargs,match', [
    (dict(total_steps=0), 'total_steps=0'),
    (dict(total_steps=5, precision='fp8'), "precision='fp8'"),
    (dict(total_steps=5, clip_norm=-1.0), 'clip_norm=-1.0'),
    (dict(total_steps=5, keep_last=0), 'keep_last=0'),
    (dict(total_steps=5, bn_inference_steps=-2), 'bn_inference_steps=-2'),
    (dict(total_steps=5, jit_compile='yes'), "jit_compile='yes'"),
])
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)
    with pytest.raises(TypeError):
        TrainConfig(total_steps=5, epochs=3)  # unknown keys are errors


def test_dataset_running_out_stops_early_with_a_checkpoint(tmp_path, caplog):
    short = lambda start: dataset_fn(start).take(max(0, 5 - start))
    with caplog.at_level(logging.WARNING, logger='posekit.train.loop'):
        result = train(make_model(), make_loss_fn(), short, keras.optimizers.SGD(1e-2), config(10, log_every=3),
                       out_dir=tmp_path)
    assert result.final_step == 5 and result.history['step'] == [3.0, 5.0]
    assert 'ran out of data after step 5 of 10' in caplog.text
    assert checkpoint_lib.latest_checkpoint(tmp_path / 'checkpoints').endswith('ckpt-000000005')


def test_jit_compile_gives_the_same_training():
    results = []
    for jit in (False, True):
        model = make_model(dropout=0.0)
        train(model, make_loss_fn(), dataset_fn, keras.optimizers.AdamW(1e-2), config(3, jit_compile=jit))
        results.append([v.numpy() for v in model.trainable_variables])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_strategy_scope_is_checked():
    strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
    model = make_model()
    with strategy.scope():
        optimizer = keras.optimizers.SGD()
    with pytest.raises(ValueError, match='was not created under the strategy.*strategy.scope'):
        train(model, make_loss_fn(), dataset_fn, optimizer, config(1), strategy=strategy)
    with strategy.scope():
        model = make_model()
    with pytest.raises(ValueError, match='optimizer SGD was created outside the strategy'):
        train(model, make_loss_fn(), dataset_fn, keras.optimizers.SGD(name='SGD'), config(1), strategy=strategy)
    result = train(model, make_loss_fn(), dataset_fn, optimizer, config(2), strategy=strategy)
    assert result.final_step == 2


def test_chief_detection():
    class Resolver:
        def __init__(self, task_type, task_id, cluster):
            self.task_type, self.task_id, self._cluster = task_type, task_id, cluster

        def cluster_spec(self):
            return tf.train.ClusterSpec(self._cluster)

    class Strategy:
        def __init__(self, resolver):
            self.cluster_resolver = resolver

    workers = {'worker': ['localhost:1', 'localhost:2']}
    assert loop._is_chief(Strategy(None))
    assert loop._is_chief(Strategy(Resolver('worker', 0, workers)))
    assert not loop._is_chief(Strategy(Resolver('worker', 1, workers)))
    with_chief = dict(workers, chief=['localhost:3'])
    assert loop._is_chief(Strategy(Resolver('chief', 0, with_chief)))
    assert not loop._is_chief(Strategy(Resolver('worker', 0, with_chief)))


def test_count_params_and_rate_helper():
    model = make_model()
    # hidden 4*16+16, gbn 4*16, head 16+1
    assert loop.count_params(model) == 80 + 64 + 17
    assert loop.count_params(model, trainable_only=True) == 80 + 32 + 17
    assert loop.measure_steps_per_s(lambda: tf.constant(1.0), steps=3) > 0
    with pytest.raises(ValueError, match='steps=0'):
        loop.measure_steps_per_s(lambda: None, steps=0)


# ----------------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_files_are_atomic_and_pruned(tmp_path):
    arrays = {'a': np.arange(6, dtype='int64').reshape(2, 3),
              'b': np.array([1.5, -2.25], dtype=tf.bfloat16.as_numpy_dtype)}
    for step in (1, 2, 3):
        checkpoint_lib.save_checkpoint(tmp_path, step, arrays, {'note': step}, keep_last=2)
    assert [s for s, _ in checkpoint_lib.list_checkpoints(tmp_path)] == [2, 3]
    loaded, meta = checkpoint_lib.load_checkpoint(checkpoint_lib.latest_checkpoint(tmp_path))
    assert meta['step'] == 3 and meta['note'] == 3
    assert loaded['b'].dtype == arrays['b'].dtype and np.array_equal(loaded['b'], arrays['b'])
    assert np.array_equal(loaded['a'], arrays['a'])
    # a write killed midway leaves a temporary folder: ignored, and removed by the next save (its
    # owner, named in the folder, is dead: see tests/train/test_checkpoint.py for live owners)
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    stale = tmp_path / f'.tmp-000000004-{dead.pid}-abcd'
    stale.mkdir()
    (stale / 'state.npz').write_bytes(b'partial')
    assert checkpoint_lib.latest_checkpoint(tmp_path).endswith('ckpt-000000003')
    # saving an existing step keeps the existing checkpoint
    checkpoint_lib.save_checkpoint(tmp_path, 3, {'a': np.zeros(1)}, {}, keep_last=2)
    assert np.array_equal(checkpoint_lib.load_checkpoint(tmp_path / 'ckpt-000000003')[0]['a'], arrays['a'])
    assert not stale.exists()
    with pytest.raises(ValueError, match='keep_last=0'):
        checkpoint_lib.save_checkpoint(tmp_path, 5, arrays, {}, keep_last=0)


def test_training_in_a_worker_thread_installs_no_signal_handlers(tmp_path):
    handler_before = signal.getsignal(signal.SIGTERM)
    outcome = {}

    def work():
        try:
            outcome['result'] = train(make_model(), make_loss_fn(), dataset_fn, keras.optimizers.SGD(1e-2),
                                      config(2), out_dir=tmp_path)
        except Exception as error:  # reported below
            outcome['error'] = error

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert 'error' not in outcome, outcome.get('error')
    assert outcome['result'].final_step == 2
    assert signal.getsignal(signal.SIGTERM) is handler_before


def test_resume_refusals(tmp_path):
    train(make_model(), make_loss_fn(), dataset_fn, keras.optimizers.SGD(1e-2), config(2), out_dir=tmp_path)
    with pytest.raises(ValueError, match='already holds checkpoints.*resume=False'):
        train(make_model(), make_loss_fn(), dataset_fn, keras.optimizers.SGD(1e-2), config(4),
              out_dir=tmp_path, resume=False)
    with policy_scope('float32'):
        other = keras.Sequential([keras.Input((IN_DIM,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match='not a checkpoint of this setup'):
        train(other, make_loss_fn(), dataset_fn, keras.optimizers.SGD(1e-2), config(4), out_dir=tmp_path)


def _run_with_sigterm_at(step_to_stop, out_dir, total, seed):
    model = make_model(seed=seed)
    optimizer = keras.optimizers.AdamW(MetrabsSchedule(total, base=1e-2), weight_decay=1e-3)
    noise = keras.random.SeedGenerator(seed)

    def stopper(step, logs):
        if step == step_to_stop:
            os.kill(os.getpid(), signal.SIGTERM)

    result = train(model, make_loss_fn(noise), dataset_fn, optimizer,
                   config(total, checkpoint_every=5, log_every=4, bn_inference_steps=3), out_dir=out_dir,
                   callbacks=[stopper], extra_state=[noise])
    return model, optimizer, noise, result


def test_resume_after_sigterm_is_bit_exact(tmp_path):
    total = 16
    ref_model, ref_opt, ref_noise, ref = _run_with_sigterm_at(None, tmp_path / 'ref', total, seed=3)
    handler_before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as info:
        _run_with_sigterm_at(7, tmp_path / 'run', total, seed=3)
    assert info.value.step == 7 and info.value.signum == signal.SIGTERM
    assert info.value.result.checkpoint.endswith('ckpt-000000007')
    assert signal.getsignal(signal.SIGTERM) is handler_before  # handlers restored
    # other seeds for weights, dropout and noise generators: the checkpoint must overwrite all of them
    model, optimizer, noise, result = _run_with_sigterm_at(None, tmp_path / 'run', total, seed=99)
    assert result.start_step == 7 and result.final_step == total + 3
    assert_states_equal(state_arrays(model, [optimizer]) + [noise.state.numpy()],
                        state_arrays(ref_model, [ref_opt]) + [ref_noise.state.numpy()])
    without_rate = lambda history: {k: v for k, v in history.items() if k != 'steps_per_s'}
    assert without_rate(result.history) == without_rate(ref.history)  # history carried through the checkpoint


SIGKILL_TOTAL = 60
SIGKILL_CHECKPOINT_EVERY = 3
SIGKILL_AFTER_STEP = 9


def sigkill_run(out_dir, sleep_s):
    """The run of the SIGKILL test (also run in a subprocess): auto precision, dropout, GhostBN, AdamW."""
    model = make_model('auto')
    optimizer = keras.optimizers.AdamW(MetrabsSchedule(SIGKILL_TOTAL, base=1e-2), weight_decay=1e-3)
    callbacks = [lambda step, logs: time.sleep(sleep_s)] if sleep_s else []
    result = train(model, make_loss_fn(), dataset_fn, optimizer,
                   config(SIGKILL_TOTAL, precision='auto', checkpoint_every=SIGKILL_CHECKPOINT_EVERY,
                          log_every=5, bn_inference_steps=2), out_dir=out_dir, callbacks=callbacks)
    return model, optimizer, result


def test_sigkilled_run_resumes_bit_exact(tmp_path):
    out_dir = tmp_path / 'killed'
    code = f'''
        import test_loop
        test_loop.sigkill_run({str(out_dir)!r}, sleep_s=0.1)
    '''
    env = dict(os.environ, PYTHONPATH=f'{REPO}{os.pathsep}{HERE}', TF_CPP_MIN_LOG_LEVEL='2')
    process = subprocess.Popen([sys.executable, '-c', textwrap.dedent(code)], env=env, cwd=str(REPO),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
        while time.monotonic() < deadline and process.poll() is None:
            found = checkpoint_lib.list_checkpoints(out_dir / 'checkpoints')
            if found and found[-1][0] >= SIGKILL_AFTER_STEP:
                break
            time.sleep(0.05)
        assert process.poll() is None, f'the run ended before it could be killed:\n{process.stderr.read()}'
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL
    killed_at = checkpoint_lib.list_checkpoints(out_dir / 'checkpoints')[-1][0]
    assert SIGKILL_AFTER_STEP <= killed_at < SIGKILL_TOTAL
    model, optimizer, result = sigkill_run(out_dir, sleep_s=0)  # resume in this process
    assert result.start_step == killed_at and result.final_step == SIGKILL_TOTAL + 2
    assert result.policy == loop.precision_lib.auto_policy()
    ref_model, ref_optimizer, _ = sigkill_run(tmp_path / 'reference', sleep_s=0)
    assert_states_equal(state_arrays(model, [optimizer]), state_arrays(ref_model, [ref_optimizer]))


# ---------------------------------------------------------------------------------------------- distribution
DISTRIBUTED_CODE = '''
    import json
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    multi_worker = tf.distribute.MultiWorkerMirroredStrategy()  # one local worker (no TF_CONFIG)
    import keras
    import test_loop as t
    from posekit.train.loop import train

    def run(strategy, optimizer_fn, steps, **kwargs):
        with strategy.scope():
            model = t.make_model(dropout=0.0)   # same seed -> same initial weights
            optimizer = optimizer_fn()
        train(model, t.make_loss_fn(), t.dataset_fn, optimizer, t.config(steps, **kwargs), strategy=strategy)
        return model

    mirrored = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
    report = {'replicas': mirrored.num_replicas_in_sync}
    report['multi_worker_replicas'] = multi_worker.num_replicas_in_sync
    for name, strategy, optimizer_fn, kwargs, steps in [
            ('sgd', mirrored, lambda: keras.optimizers.SGD(0.1), {}, 1),
            ('sgd_clip', mirrored, lambda: keras.optimizers.SGD(0.1), dict(clip_norm=0.05), 2),
            ('adamw', mirrored, lambda: keras.optimizers.AdamW(0.05, weight_decay=0.01), {}, 3),
            ('multi_worker', multi_worker, lambda: keras.optimizers.SGD(0.1), dict(clip_norm=0.05), 2)]:
        single = run(tf.distribute.get_strategy(), optimizer_fn, steps, **kwargs)
        multi = run(strategy, optimizer_fn, steps, **kwargs)
        diffs = [float(np.max(np.abs(a.numpy() - b.numpy()))) for a, b in zip(single.variables, multi.variables)]
        replica_gap = max(float(np.max(np.abs(r.numpy() - v.value.values[0].numpy())))
                          for v in multi.variables for r in getattr(v.value, 'values', [v.value]))
        norms = t.max_column_norm(multi, 'hidden')
        report[f'{name}_{steps}'] = dict(max_diff=max(diffs), replica_gap=replica_gap, norm=norms,
                                         moved=float(np.max(np.abs(single.get_layer('gbn').moving_mean.numpy()))))
    print('REPORT' + json.dumps(report))
'''


def test_mirrored_two_replicas_match_single_device():
    """One and several steps on 2 logical CPUs equal the single-device steps on the same global batches (SGD
    catches any loss-scaling error, clip_norm must clip the all-reduced gradient); GhostBN moving statistics
    stay identical across replicas. Also runs the loop under a one-worker MultiWorkerMirroredStrategy."""
    done = run_python(DISTRIBUTED_CODE)
    lines = [line for line in done.stdout.splitlines() if line.startswith('REPORT')]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    report = json.loads(lines[-1][len('REPORT'):])
    assert report['replicas'] == 2 and report['multi_worker_replicas'] == 1
    for key in ('sgd_1', 'sgd_clip_2', 'adamw_3', 'multi_worker_2'):
        assert report[key]['max_diff'] < 1e-5, (key, report[key])  # incl. GhostBN moving statistics
        assert report[key]['replica_gap'] < 1e-6, (key, report[key])  # replicas stay in sync
        assert report[key]['norm'] <= MAX_NORM * (1 + 1e-6)
        assert report[key]['moved'] > 0  # moving statistics were updated
