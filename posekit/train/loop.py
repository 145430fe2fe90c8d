"""The one custom training loop of posekit (every experiment trains through :func:`train`).

Usage::

    config = TrainConfig(total_steps=10_000, precision='auto', checkpoint_every=1000, log_every=100)
    strategy = tf.distribute.get_strategy()            # or MirroredStrategy(...), MultiWorkerMirroredStrategy()
    with strategy.scope(), policy_scope(config.precision):
        model = make_model()                           # built (variables created) inside both scopes
        optimizer = keras.optimizers.AdamW(MetrabsSchedule(config.total_steps), weight_decay=...)
    result = train(model, loss_fn, dataset_fn, optimizer, config, out_dir='runs/x', strategy=strategy)

Contract with the caller
------------------------
``loss_fn(model, batch, step, training) -> (loss, metrics)``
    Called inside ``tf.function`` (once per replica) with ``training=True``, ``step`` = the 0-based index of
    the step as an int64 scalar tensor and ``batch`` = this replica's part of the step's batch. Returns
    ``loss``: a float32 scalar, the MEAN over the (local) batch; ``metrics``: dict name -> scalar (cast to
    float32; ``'loss'`` and ``'step'`` are reserved). The loop does everything else: gradient tape,
    distribution scaling, loss scaling, clipping, optimizer updates. Model outputs under mixed precision are
    bfloat16/float16: cast them to float32 before computing the loss. Randomness: use layers' Keras
    ``SeedGenerator``s (checkpointed with the model, e.g. Dropout), ``extra_state`` generators, or stateless
    ops seeded from ``step`` (e.g. ``tf.random.stateless_normal(shape, seed=[seed, step])``); stateful
    ``tf.random.*`` ops are not checkpointed, so a resumed run would draw different numbers.
``dataset_fn(start_step) -> tf.data.Dataset``
    Yields the (global) batches of steps ``start_step, start_step + 1, ...``; batch k must be the same
    whatever ``start_step`` (the data pipeline guarantees it), so a resumed run sees the same stream. Under
    a multi-replica strategy the dataset is split with ``strategy.experimental_distribute_dataset``, so it
    must yield global batches whose size is a multiple of the number of replicas. Under the default strategy
    any iterable of (nested) arrays is also accepted. If it runs out, training stops early with a warning.
``optimizers``
    One Keras optimizer for all trainable variables, or a list of ``(optimizer, selector)`` pairs, where
    ``selector`` is a predicate ``f(variable) -> bool`` or a list of the model's variables, for several
    optimizers in one step (fine-tuning: head and backbone). A variable may be selected by at most one
    optimizer; trainable variables selected by none stay frozen (with a warning). Create optimizers under
    the strategy's scope. Kernel constraints (``variable.constraint``, e.g. max-norm) are applied after every
    update by Keras 3's ``Optimizer.apply`` (also inside ``LossScaleOptimizer``); a fresh (not resumed) run
    also projects the initial weights onto their constraints, so the bound holds after every step even when
    a mixed_float16 step is skipped.

Distribution convention
-----------------------
The same code runs under the default strategy, ``MirroredStrategy`` and ``MultiWorkerMirroredStrategy``.
Each replica's ``loss_fn`` returns the mean over its local batch; the loop divides it by
``num_replicas_in_sync`` before differentiation and Keras optimizers all-reduce (SUM) the gradients, so the
update equals that of the mean loss over the global batch (local batches of equal size). Logged losses and
metrics are means over replicas. ``clip_norm`` clips the global norm of the all-reduced gradient (costs one
extra all-reduce with several replicas). Keras' own ``BatchNormalization`` keeps per-replica moving
statistics under MirroredStrategy (Keras creates them with aggregation 'none'; checkpoints save replica 0's
copy); ``posekit.layers.GhostBatchNormalization`` averages them across replicas. Only the chief (worker 0)
writes checkpoints and TensorBoard logs; all workers must read the same ``out_dir`` to resume.
``jit_compile`` is ignored (with a warning) when there are several replicas, as in Keras.

Precision
---------
``config.precision`` is resolved with :func:`posekit.train.precision.resolve_policy` ('auto' =
mixed_float16 on a GPU, mixed_bfloat16 on CPUs with AVX512-BF16/AMX, else float32). The model must have
been built inside ``policy_scope`` of that policy; :func:`check_model_precision` raises otherwise. Under
``mixed_float16`` every optimizer is wrapped in ``keras.optimizers.LossScaleOptimizer`` (unless it already
is one): the loss is scaled by the first optimizer's dynamic scale, and when several optimizers or
``clip_norm`` are used the step is skipped by all of them if any gradient is non-finite.

Phases
------
Steps ``0 .. total_steps - 1`` are ordinary training; then ``bn_inference_steps`` extra steps run with every
BatchNormalization layer (Keras' and GhostBatchNormalization) in inference mode: they normalize with, and
keep, their moving statistics while their gamma/beta are still trained and everything else (dropout...)
stays in training mode. Implemented by setting ``trainable=False`` on the BN layers while a second
``tf.function`` is traced (Keras BN layers use batch statistics only when ``training and trainable``).
The run ends after ``config.num_steps = total_steps + bn_inference_steps`` steps.

Checkpoints and resume
----------------------
With ``out_dir``: checkpoints in ``out_dir/checkpoints`` (see :mod:`posekit.train.checkpoint`: written to a
temporary directory then atomically renamed; keep-last-k) every ``checkpoint_every`` steps, at the end,
and when SIGTERM or SIGINT arrives (handlers installed only in the main thread and restored on exit; the
first signal finishes the current step, writes a checkpoint and raises :class:`TrainingInterrupted`; a
second one gets the previous handler's behaviour). A checkpoint holds every model variable (weights, BN
statistics, Keras SeedGenerator states), every optimizer variable (slots, iteration counts, loss scale),
the ``extra_state`` variables, the step and the history so far. ``resume=True`` restores the newest
complete checkpoint and continues with ``dataset_fn(step)``.

Determinism: resuming is bit-exact on CPU (a run SIGKILLed and resumed, in another process, ends with weights
and optimizer state identical to an uninterrupted run; tested under float32 and mixed_bfloat16) because
(1) all state that evolves during training is in the checkpoint, stored exactly (npz of the raw values),
including the partial log window so the history matches too; (2) the data stream is a pure function of the
step; (3) randomness comes from checkpointed or step-derived seeds; (4) the same traced graph runs in both
processes, and TensorFlow's CPU kernels (Eigen, oneDNN) are run-to-run deterministic for a fixed graph,
shapes and thread count. This needs no ``enable_op_determinism`` on CPU, so it is off by default.
``deterministic=True`` calls ``tf.config.experimental.enable_op_determinism()`` (process-wide, irreversible),
which GPUs need for bit-exactness. Its cost: ops whose GPU kernels accumulate in a nondeterministic order get
slower deterministic algorithms (e.g. segment sums, gather/IndexedSlices gradients), the scatter_nd family runs
on the CPU, ops without a deterministic implementation raise errors, tf.data is forced to produce elements in
order (no ``deterministic=False`` speed-up) and unseeded stateful random ops raise. Changing the thread count,
the TF/oneDNN version or the hardware between the two runs voids bit-exactness. ``train`` also calls
``keras.utils.set_random_seed(config.seed)`` (Python, NumPy and TensorFlow global seeds) before building the
dataset and tracing. Unseeded ``keras.random`` calls draw from Keras' global SeedGenerator, which is not
checkpointed: give random ops a SeedGenerator (in the model or ``extra_state``).

Logging: TensorBoard scalars in ``out_dir/tb`` and the history (means over each ``log_every`` window) every
``log_every`` steps; a one-line progress bar with rate and ETA on stderr (``progress=False`` to silence).
"""
import contextlib
import dataclasses
import logging
import math
import os
import signal
import sys
import threading
import time
import zipfile

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from posekit.train import checkpoint as checkpoint_lib
from posekit.train import precision as precision_lib

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = 'checkpoints'
TENSORBOARD_DIR = 'tb'
#: Minimum time between two redraws of the progress bar on a terminal.
PROGRESS_INTERVAL_S = 0.5
_SCALARS_PLUGIN = 'scalars'
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_RESERVED_METRICS = ('loss', 'step')
_CHECKPOINT_FORMAT = 1
# JSON decoding errors are ValueErrors.
_CHECKPOINT_READ_ERRORS = (OSError, KeyError, EOFError, ValueError, zipfile.BadZipFile)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of :func:`train` (frozen; unknown keys are errors). See the module docstring.

    Attributes:
        total_steps: number of ordinary training steps (the schedules' T).
        precision: 'auto', 'float32', 'mixed_bfloat16' or 'mixed_float16'.
        checkpoint_every: steps between checkpoints (needs ``out_dir``).
        keep_last: number of newest checkpoints kept.
        log_every: steps between history entries / TensorBoard points.
        bn_inference_steps: extra final steps with BatchNorm layers in inference mode.
        jit_compile: compile the step with XLA (single replica only).
        seed: passed to ``keras.utils.set_random_seed`` at the start.
        clip_norm: None or max global gradient norm (after all-reduce and loss unscaling).
        deterministic: call ``tf.config.experimental.enable_op_determinism()`` (needed on GPU only).
        progress: draw the progress bar on stderr.
        raise_on_nonfinite: raise ``FloatingPointError`` when the loss is NaN or infinite.
        allow_cpu_float16: let precision='mixed_float16' run without a GPU (very slow).
    """
    total_steps: int
    precision: str = precision_lib.AUTO
    checkpoint_every: int = 1000
    keep_last: int = 3
    log_every: int = 100
    bn_inference_steps: int = 0
    jit_compile: bool = False
    seed: int = 0
    clip_norm: float | None = None
    deterministic: bool = False
    progress: bool = True
    raise_on_nonfinite: bool = True
    allow_cpu_float16: bool = False

    def __post_init__(self):
        for name, minimum in (('total_steps', 1), ('checkpoint_every', 1), ('keep_last', 1),
                              ('log_every', 1), ('bn_inference_steps', 0), ('seed', 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
                raise ValueError(f'{name} must be an int >= {minimum}; received {name}={value!r}')
        if self.precision != precision_lib.AUTO and self.precision not in precision_lib.POLICIES:
            raise ValueError(f'precision must be one of {(precision_lib.AUTO,) + precision_lib.POLICIES}; '
                             f'received precision={self.precision!r}')
        if self.clip_norm is not None and (isinstance(self.clip_norm, bool) or
                                           not isinstance(self.clip_norm, (int, float)) or
                                           not self.clip_norm > 0):
            raise ValueError(f'clip_norm must be None or a positive number; received clip_norm={self.clip_norm!r}')
        for name in ('jit_compile', 'deterministic', 'progress', 'raise_on_nonfinite', 'allow_cpu_float16'):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f'{name} must be a bool; received {name}={getattr(self, name)!r}')

    @property
    def num_steps(self):
        """Total number of steps run: ``total_steps + bn_inference_steps``."""
        return self.total_steps + self.bn_inference_steps


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        history: dict name -> list of float, one entry per log point: 'step' (completed steps), 'loss' and
            each metric (means over the log window), 'learning_rate' (or 'learning_rate/0', 'learning_rate/1'... with several optimizers),
            'loss_scale' (mixed_float16), 'steps_per_s'. Includes the entries of resumed-from runs.
        steps_per_s: training rate of this call (whole iterations: data, step, logging, checkpoints),
            excluding the iterations that traced a step function; nan if none was timed.
        start_step: step this call started from (0, or the resumed checkpoint's step).
        final_step: number of completed steps at the end.
        policy: the resolved precision policy name.
        checkpoint: path of the newest checkpoint written or restored, or None.
        wall_time_s: duration of the call in seconds.
        optimizers: the optimizers used (LossScaleOptimizer wrappers under mixed_float16), in order.
    """
    history: dict
    steps_per_s: float
    start_step: int
    final_step: int
    policy: str
    checkpoint: str | None
    wall_time_s: float
    optimizers: list


class TrainingInterrupted(Exception):
    """Raised by :func:`train` after a SIGTERM/SIGINT once the checkpoint of ``step`` is written.

    Attributes: ``step`` (completed steps), ``signum``, ``result`` (TrainResult up to now).
    """

    def __init__(self, step, signum, result):
        super().__init__(f'training stopped by signal {signal.Signals(signum).name} after step {step}; '
                         f'checkpoint: {result.checkpoint}')
        self.step = step
        self.signum = signum
        self.result = result


def write_scalar(tag, value, step):
    """Writes one scalar to the default ``tf.summary`` writer in TensorBoard's 'scalars' plugin format.

    Equivalent to ``tf.summary.scalar`` without needing the ``tensorboard`` package installed.
    """
    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = _SCALARS_PLUGIN
    return tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=metadata)


def count_params(model, trainable_only=False):
    """Number of scalar parameters of ``model`` (all weights, or only the trainable ones)."""
    variables = model.trainable_variables if trainable_only else model.weights
    return int(sum(math.prod(v.shape) for v in variables))


def measure_steps_per_s(step_fn, steps, warmup=1):
    """Calls ``step_fn()`` ``warmup`` times untimed, then ``steps`` times; returns calls per second.

    Tensors returned by ``step_fn`` are fetched to the host each call so the timing covers the work.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f'steps must be a positive int; received steps={steps!r}')
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f'warmup must be an int >= 0; received warmup={warmup!r}')

    def run():
        tf.nest.map_structure(lambda t: t.numpy() if tf.is_tensor(t) else t, step_fn())

    for _ in range(warmup):
        run()
    start = time.perf_counter()
    for _ in range(steps):
        run()
    return steps / (time.perf_counter() - start)


def batchnorm_layers(model):
    """All BatchNormalization layers (incl. subclasses such as GhostBatchNormalization) inside ``model``."""
    return [layer for layer in model._flatten_layers(include_self=True, recursive=True)
            if isinstance(layer, keras.layers.BatchNormalization)]


@contextlib.contextmanager
def batchnorm_inference_mode(layers):
    """Within the block, the given BN layers run in inference mode (``trainable=False``); restored after.

    Used while tracing: the traced graph keeps the behaviour.
    """
    saved = [layer.trainable for layer in layers]
    try:
        for layer in layers:
            layer.trainable = False
        yield
    finally:
        for layer, trainable in zip(layers, saved):
            layer.trainable = trainable


def check_model_precision(model, policy):
    """Raises ValueError unless ``model`` was built under the Keras dtype policy ``policy`` (a name).

    Checks: the model's own policy is ``policy``; trainable variables are float32 (mixed policies keep
    float32 master weights); under a mixed policy, at least one layer computes in its compute dtype.
    """
    hint = (f"build the model inside posekit.train.precision.policy_scope('{policy}') (or train with the "
            "precision it was built with)")
    model_policy = model.dtype_policy.name
    if model_policy != policy:
        raise ValueError(f'the model was built with dtype policy {model_policy!r} but training uses '
                         f'precision {policy!r}: {hint}')
    bad = [v.path for v in model.trainable_variables if v.dtype != 'float32']
    if bad:
        raise ValueError(f'trainable variables must be float32 under precision {policy!r}; received '
                         f'{len(bad)} that are not, e.g. {bad[:3]}')
    wanted = precision_lib.compute_dtype(policy)
    if wanted != 'float32':
        layers = [layer for layer in model._flatten_layers(include_self=False, recursive=True)
                  if layer.weights]
        if layers and not any(layer.compute_dtype == wanted for layer in layers):
            raise ValueError(f'no layer of the model computes in {wanted} although training uses precision '
                             f'{policy!r}: {hint}')


def _state_variables(extra_state):
    variables = []
    for i, item in enumerate(extra_state):
        if isinstance(item, keras.random.SeedGenerator):
            variables.append(item.state)
        elif isinstance(item, tf.random.Generator):
            variables.append(item.state)
        elif isinstance(item, (keras.Variable, tf.Variable)):
            variables.append(item)
        else:
            raise ValueError(f'extra_state items must be keras.random.SeedGenerator, tf.random.Generator or '
                             f'variables; received extra_state[{i}] of type {type(item).__name__}')
    return variables


def _variable_name(variable):
    return getattr(variable, 'path', None) or variable.name


def _optimizer_groups(optimizers, trainable):
    """[(optimizer, [variables])] from the ``optimizers`` argument; single flag."""
    if isinstance(optimizers, keras.optimizers.Optimizer):
        return [(optimizers, list(trainable))], True
    if not isinstance(optimizers, (list, tuple)) or not optimizers:
        raise ValueError('optimizers must be a Keras optimizer or a non-empty list of (optimizer, selector) '
                         f'pairs; received optimizers={optimizers!r}')
    groups, owner, seen_optimizers = [], {}, set()
    trainable_ids = {id(v) for v in trainable}
    for i, entry in enumerate(optimizers):
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2
                and isinstance(entry[0], keras.optimizers.Optimizer)):
            raise ValueError(f'optimizers[{i}] must be an (optimizer, selector) pair; received {entry!r}')
        optimizer, selector = entry
        if id(optimizer) in seen_optimizers:
            raise ValueError(f'optimizers[{i}] repeats an optimizer object; each pair needs its own optimizer')
        seen_optimizers.add(id(optimizer))
        if callable(selector):
            selected = [v for v in trainable if selector(v)]
        else:
            wanted = {id(v) for v in selector}
            unknown = [_variable_name(v) for v in selector if id(v) not in trainable_ids]
            if unknown:
                raise ValueError(f'optimizers[{i}] selects variables that are not trainable variables of the '
                                 f'model: {unknown[:3]}')
            selected = [v for v in trainable if id(v) in wanted]
        if not selected:
            raise ValueError(f'optimizers[{i}] selects no trainable variable of the model')
        for v in selected:
            if id(v) in owner:
                raise ValueError(f'variable {_variable_name(v)} is selected by optimizers[{owner[id(v)]}] and '
                                 f'optimizers[{i}]; each variable may have one optimizer')
            owner[id(v)] = i
        groups.append((optimizer, selected))
    frozen = [_variable_name(v) for v in trainable if id(v) not in owner]
    if frozen:
        logger.warning('%d trainable variables are selected by no optimizer and stay frozen, e.g. %s',
                       len(frozen), frozen[:3])
    return groups, False


def _is_chief(strategy):
    resolver = getattr(strategy, 'cluster_resolver', None)
    if resolver is None or not getattr(resolver, 'task_type', None):
        return True
    if resolver.task_type == 'chief':
        return True
    cluster = resolver.cluster_spec().as_dict()
    return resolver.task_type == 'worker' and resolver.task_id == 0 and 'chief' not in cluster


def _scale_gradient(gradient, factor):
    if gradient is None:
        return None
    if isinstance(gradient, tf.IndexedSlices):
        return tf.IndexedSlices(gradient.values * tf.cast(factor, gradient.values.dtype), gradient.indices,
                                gradient.dense_shape)
    return gradient * tf.cast(factor, gradient.dtype)


def _dense(gradient):
    return tf.convert_to_tensor(gradient) if isinstance(gradient, tf.IndexedSlices) else gradient


class _SignalCatcher:
    """Records the first SIGTERM/SIGINT (main thread only); a second one gets the previous behaviour."""

    def __init__(self, enabled):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signum = None
        self._previous = {}

    def __enter__(self):
        if self.enabled:
            for signum in HANDLED_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is None:
            self.signum = signum
            self._restore()

    def _restore(self):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def __exit__(self, *exc):
        self._restore()
        return False


def _format_duration(seconds):
    if not math.isfinite(seconds):
        return '?'
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f'{hours}:{minutes:02d}:{seconds:02d}' if hours else f'{minutes}:{seconds:02d}'


class _Progress:
    """One progress line on ``stream``: redrawn in place on a terminal, a new line per log point otherwise."""

    def __init__(self, total, enabled, stream=None):
        self.total = total
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, 'isatty', lambda: False)())
        self._last_draw = -math.inf
        self._width = 0

    def update(self, step, rate, loss, force=False):
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and (not self.tty or now - self._last_draw < PROGRESS_INTERVAL_S):
            return
        self._last_draw = now
        fraction = step / self.total
        filled = int(fraction * 20)
        eta = (self.total - step) / rate if rate > 0 else math.nan
        line = (f'step {step}/{self.total} [{"#" * filled}{"." * (20 - filled)}] {100 * fraction:5.1f}% '
                f'{rate:.2f} steps/s ETA {_format_duration(eta)} loss {loss:.4g}')
        if self.tty:
            self.stream.write('\r' + line.ljust(self._width))
            self._width = len(line)
        else:
            self.stream.write(line + '\n')
        self.stream.flush()

    def close(self):
        if self.enabled and self.tty and self._width:
            self.stream.write('\n')
            self.stream.flush()


class _RateMeter:
    """Steps per second over the timed iterations (those that did not trace a tf.function)."""

    def __init__(self):
        self.steps = 0
        self.seconds = 0.0
        self._last = None

    def start(self):
        self._last = time.perf_counter()

    def tick(self, timed):
        now = time.perf_counter()
        if timed:
            self.steps += 1
            self.seconds += now - self._last
        self._last = now

    @property
    def rate(self):
        return self.steps / self.seconds if self.steps and self.seconds > 0 else math.nan


class _Trainer:
    """State of one :func:`train` call (see its docstring)."""

    def __init__(self, model, loss_fn, dataset_fn, optimizers, config, out_dir, strategy, callbacks,
                 extra_state):
        self.model = model
        self.loss_fn = loss_fn
        self.dataset_fn = dataset_fn
        self.config = config
        self.out_dir = out_dir
        self.strategy = strategy
        self.callbacks = list(callbacks or ())
        self.extra_variables = _state_variables(extra_state or ())
        self.policy = precision_lib.resolve_policy(config.precision, allow_cpu_float16=config.allow_cpu_float16)
        self.float16 = self.policy == precision_lib.MIXED_FLOAT16
        self.num_replicas = strategy.num_replicas_in_sync
        self.chief = _is_chief(strategy)
        self.checkpoint_dir = None if out_dir is None else os.path.join(out_dir, CHECKPOINT_DIR)
        if not model.trainable_variables:
            raise ValueError('the model has no trainable variables; build it (call it once on a batch) inside '
                             'policy_scope and the strategy scope before training')
        check_model_precision(model, self.policy)
        self._check_strategy_scope()
        groups, self.single = _optimizer_groups(optimizers, model.trainable_variables)
        self.groups = self._prepare_optimizers(groups)
        self.bn_layers = batchnorm_layers(model)
        self.jit_compile = config.jit_compile
        if self.jit_compile and self.num_replicas > 1:
            logger.warning('jit_compile is ignored with %d replicas (XLA does not compile tf.distribute '
                           'steps here)', self.num_replicas)
            self.jit_compile = False
        self._step_fns = {}
        self.history = {}
        self.window = {}  # per-step logs since the last history entry

    def _check_strategy_scope(self):
        for v in self.model.variables:
            if not self.strategy.extended.variable_created_in_scope(v.value):
                raise ValueError(f'model variable {_variable_name(v)} was not created under the strategy passed '
                                 'to train(); build the model inside strategy.scope()')

    def _prepare_optimizers(self, groups):
        prepared = []
        with self.strategy.scope():
            for optimizer, variables in groups:
                inner = optimizer.inner_optimizer if isinstance(
                    optimizer, keras.optimizers.LossScaleOptimizer) else optimizer
                for opt in {id(optimizer): optimizer, id(inner): inner}.values():
                    opt_strategy = getattr(opt, '_distribution_strategy', self.strategy)
                    if opt_strategy is not self.strategy:
                        raise ValueError(f'optimizer {opt.name} was created outside the strategy passed to '
                                         'train(); create optimizers inside strategy.scope()')
                if self.float16 and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
                    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
                if not optimizer.built:
                    optimizer.build(variables)
                prepared.append((optimizer, variables))
        return prepared

    # ----------------------------------------------------------------------------------------- the step
    def _apply_constraints(self):
        """Projects the initial weights onto their constraints (Keras applies them only after updates), so
        the bound holds after every step even when a mixed_float16 step is skipped."""
        with self.strategy.scope():
            for _, variables in self.groups:
                for v in variables:
                    if v.constraint is not None:
                        v.assign(v.constraint(v))

    def _loss_and_metrics(self, batch, step):
        loss, metrics = self.loss_fn(self.model, batch, step, True)
        loss = tf.convert_to_tensor(loss)
        if loss.dtype != tf.float32 or loss.shape.rank != 0:
            raise ValueError(f'loss_fn must return a float32 scalar loss (cast mixed-precision outputs to '
                             f'float32); received dtype {loss.dtype.name} and shape {loss.shape}')
        if not isinstance(metrics, dict):
            raise ValueError(f'loss_fn must return (loss, dict of metrics); received metrics={metrics!r}')
        out = {}
        for name, value in metrics.items():
            if not isinstance(name, str) or name in _RESERVED_METRICS:
                raise ValueError(f'metric names must be strings other than {_RESERVED_METRICS}; '
                                 f'received {name!r}')
            value = tf.cast(value, tf.float32)
            if value.shape.rank != 0:
                raise ValueError(f'metric {name!r} must be a scalar; received shape {value.shape}')
            out[name] = value
        return loss, out

    def _process_gradients(self, grads):
        """Clipping and (float16) cross-optimizer skip consistency, in replica context."""
        clip = self.config.clip_norm
        lso = [opt for opt, _ in self.groups] if self.float16 else []
        if self.float16 and (len(self.groups) > 1 or clip is not None):
            flags = [tf.reduce_all(tf.math.is_finite(_dense(g))) for g in grads if g is not None]
            n_bad = tf.reduce_sum(tf.cast(tf.logical_not(tf.stack(flags)), tf.float32))
            if self.num_replicas > 1:
                n_bad = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, n_bad)
            finite = tf.equal(n_bad, 0.0)
            grads = [None if g is None else tf.where(finite, _dense(g), tf.constant(math.nan, g.dtype))
                     for g in grads]
        if clip is not None:
            dense = [_dense(g) for g in grads if g is not None]
            if self.num_replicas > 1:
                dense = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, dense)
            norm = tf.linalg.global_norm(dense)
            if self.float16:
                norm = norm / lso[0].dynamic_scale
            factor = tf.minimum(1.0, clip / norm)
            grads = [_scale_gradient(g, factor) for g in grads]
        if self.float16 and len(self.groups) > 1:
            # The loss was scaled by the first optimizer's scale; give each optimizer gradients at its own scale.
            out, start = [], 0
            for opt, variables in self.groups:
                part = grads[start:start + len(variables)]
                ratio = opt.dynamic_scale / lso[0].dynamic_scale
                out.extend(part if opt is lso[0] else [_scale_gradient(g, ratio) for g in part])
                start += len(variables)
            grads = out
        return grads

    def _replica_step(self, batch, step, bn_inference):
        variables = [v for _, vs in self.groups for v in vs]
        with batchnorm_inference_mode(self.bn_layers if bn_inference else []):
            with tf.GradientTape() as tape:
                loss, metrics = self._loss_and_metrics(batch, step)
                objective = loss / self.num_replicas if self.num_replicas > 1 else loss
                if self.float16:
                    objective = self.groups[0][0].scale_loss(objective)
            grads = tape.gradient(objective, variables)
        grads = self._process_gradients(list(grads))
        start = 0
        for optimizer, vs in self.groups:
            optimizer.apply(grads[start:start + len(vs)], vs)
            start += len(vs)
        return loss, metrics

    def _step_fn(self, bn_inference):
        if bn_inference not in self._step_fns:
            strategy = self.strategy

            def replica_step(batch, step):
                return self._replica_step(batch, step, bn_inference)

            def step_fn(batch, step):
                loss, metrics = strategy.run(replica_step, args=(batch, step))
                mean = tf.distribute.ReduceOp.MEAN
                loss = strategy.reduce(mean, loss, axis=None)
                metrics = {k: strategy.reduce(mean, v, axis=None) for k, v in metrics.items()}
                return loss, metrics

            self._step_fns[bn_inference] = tf.function(step_fn, jit_compile=self.jit_compile)
        return self._step_fns[bn_inference]

    # ------------------------------------------------------------------------------------ checkpoints
    def _state_items(self):
        items = [(f'model/{i:05d}', v) for i, v in enumerate(self.model.variables)]
        for j, (optimizer, _) in enumerate(self.groups):
            items += [(f'optimizer{j}/{i:05d}', v) for i, v in enumerate(optimizer.variables)]
        items += [(f'extra/{i:05d}', v) for i, v in enumerate(self.extra_variables)]
        return items

    def save(self, step):
        if self.checkpoint_dir is None or not self.chief:
            return None
        items = self._state_items()
        with self.strategy.scope():
            arrays = {key: np.asarray(v.numpy()) for key, v in items}
        meta = {'format': _CHECKPOINT_FORMAT, 'policy': self.policy, 'history': self.history,
                'log_window': self.window,
                'names': {key: _variable_name(v) for key, v in items},
                'config': dataclasses.asdict(self.config)}
        return checkpoint_lib.save_checkpoint(self.checkpoint_dir, step, arrays, meta, self.config.keep_last)

    def restore(self, path, arrays, meta):
        """Assigns a loaded checkpoint's arrays to the variables; ValueError if they do not match."""
        items = self._state_items()
        keys = [key for key, _ in items]
        if keys != list(arrays):
            raise ValueError(f'checkpoint {path} holds {len(arrays)} arrays but the model, optimizers and '
                             f'extra_state have {len(keys)} variables: not a checkpoint of this setup')
        for key, variable in items:
            value = arrays[key]
            if tuple(value.shape) != tuple(variable.shape):
                raise ValueError(f'checkpoint {path}: {key} ({meta["names"].get(key)}) has shape '
                                 f'{value.shape}, variable {_variable_name(variable)} has {tuple(variable.shape)}')
        with self.strategy.scope():
            for key, variable in items:
                variable.assign(arrays[key])
        self.history = {k: list(v) for k, v in meta.get('history', {}).items()}
        self.window = {k: list(v) for k, v in meta.get('log_window', {}).items()}
        return int(meta['step'])

    def find_resume_point(self, resume):
        """(step, path) of the restored checkpoint, or (0, None) when starting from scratch."""
        if self.checkpoint_dir is None:
            return 0, None
        found = checkpoint_lib.list_checkpoints(self.checkpoint_dir)
        if not found:
            return 0, None
        if not resume:
            raise ValueError(f'{self.checkpoint_dir} already holds checkpoints; pass resume=True to continue '
                             f'from them or use a new out_dir; received resume={resume!r}')
        for _, path in reversed(found):
            try:
                arrays, meta = checkpoint_lib.load_checkpoint(path)
            except _CHECKPOINT_READ_ERRORS as error:
                logger.warning('cannot read checkpoint %s (%s); trying an older one', path, error)
                continue
            return self.restore(path, arrays, meta), path
        raise ValueError(f'none of the checkpoints in {self.checkpoint_dir} can be read; delete them or use a '
                         'new out_dir')

    # ------------------------------------------------------------------------------------------- run
    def _log(self, step, rate, writer):
        """Appends the means over the log window (plus learning rate, loss scale, rate) to the history and TensorBoard."""
        entry = {'step': float(step)}
        entry.update({k: float(np.mean(v)) for k, v in self.window.items()})
        self.window = {}
        entry.update(self._learning_rates())
        if self.float16:
            entry['loss_scale'] = float(self.groups[0][0].dynamic_scale.numpy())
        entry['steps_per_s'] = rate
        for key, value in entry.items():
            self.history.setdefault(key, []).append(value)
        if writer is not None:
            with writer.as_default():
                for key, value in entry.items():
                    if key != 'step' and math.isfinite(value):
                        write_scalar(key, value, step)

    def _learning_rates(self):
        lrs = {}
        for j, (optimizer, _) in enumerate(self.groups):
            key = 'learning_rate' if self.single else f'learning_rate/{j}'
            lrs[key] = float(np.asarray(keras.ops.convert_to_numpy(optimizer.learning_rate)))
        return lrs

    def run(self, resume):
        wall_start = time.perf_counter()
        config = self.config
        if config.deterministic:
            tf.config.experimental.enable_op_determinism()
        keras.utils.set_random_seed(config.seed)
        start_step, checkpoint = self.find_resume_point(resume)
        if checkpoint is not None:
            logger.info('resumed from %s (step %d)', checkpoint, start_step)
        result = TrainResult(history=self.history, steps_per_s=math.nan, start_step=start_step,
                             final_step=start_step, policy=self.policy, checkpoint=checkpoint, wall_time_s=0.0,
                             optimizers=[opt for opt, _ in self.groups])
        if start_step >= config.num_steps:
            result.wall_time_s = time.perf_counter() - wall_start
            return result
        if checkpoint is None:
            self._apply_constraints()
        writer = None
        if self.out_dir is not None and self.chief:
            writer = tf.summary.create_file_writer(os.path.join(self.out_dir, TENSORBOARD_DIR))
        dataset = self.dataset_fn(start_step)
        plain_iterable = not isinstance(dataset, tf.data.Dataset)
        if not plain_iterable:
            dataset = self.strategy.experimental_distribute_dataset(dataset)
        elif self.num_replicas > 1:
            raise ValueError(f'dataset_fn must return a tf.data.Dataset under a {self.num_replicas}-replica '
                             f'strategy; received {type(dataset).__name__}')
        iterator = iter(dataset)
        progress = _Progress(config.num_steps, config.progress)
        meter = _RateMeter()
        step = start_step
        catcher = _SignalCatcher(enabled=self.checkpoint_dir is not None)
        try:
            with catcher, self.strategy.scope(), \
                    precision_lib.global_policy(self.policy):
                meter.start()
                while step < config.num_steps:
                    try:
                        batch = next(iterator)
                    except (StopIteration, tf.errors.OutOfRangeError):
                        logger.warning('dataset_fn(%d) ran out of data after step %d of %d; stopping early',
                                       start_step, step, config.num_steps)
                        break
                    if plain_iterable:
                        batch = tf.nest.map_structure(tf.convert_to_tensor, batch)
                    bn_inference = step >= config.total_steps
                    traces = bn_inference not in self._step_fns  # the first call of a step function traces
                    loss, metrics = self._step_fn(bn_inference)(batch, tf.constant(step, tf.int64))
                    logs = {'loss': float(loss)}
                    logs.update({k: float(v) for k, v in metrics.items()})
                    step += 1
                    if config.raise_on_nonfinite and not math.isfinite(logs['loss']):
                        raise FloatingPointError(f'non-finite loss {logs["loss"]} at step {step - 1}')
                    for key, value in logs.items():
                        self.window.setdefault(key, []).append(value)
                    for callback in self.callbacks:
                        callback(step, logs)
                    if step % config.log_every == 0 or step == config.num_steps:
                        self._log(step, meter.rate, writer)
                        progress.update(step, meter.rate, logs['loss'], force=True)
                    else:
                        progress.update(step, meter.rate, logs['loss'])
                    if step % config.checkpoint_every == 0 or step == config.num_steps:
                        result.checkpoint = self.save(step) or result.checkpoint
                    if catcher.signum is not None:
                        result.checkpoint = self.save(step) or result.checkpoint
                        raise TrainingInterrupted(step, catcher.signum, result)
                    meter.tick(timed=not traces)
                if self.window:  # the data ran out mid-window
                    self._log(step, meter.rate, writer)
                if step < config.num_steps:
                    result.checkpoint = self.save(step) or result.checkpoint
        finally:
            progress.close()
            if writer is not None:
                writer.close()
            result.final_step = step
            result.history = self.history
            result.steps_per_s = meter.rate
            result.wall_time_s = time.perf_counter() - wall_start
        return result


def train(model, loss_fn, dataset_fn, optimizers, config, out_dir=None, strategy=None, callbacks=None,
          resume=True, extra_state=None):
    """Trains ``model`` for ``config.num_steps`` steps (see the module docstring for the full contract).

    Args:
        model: a built Keras model (variables created under ``policy_scope(config.precision)`` and the
            strategy's scope).
        loss_fn: ``loss_fn(model, batch, step, training) -> (float32 scalar loss, dict of scalar metrics)``.
        dataset_fn: ``dataset_fn(start_step) -> tf.data.Dataset`` of the batches of steps start_step, ...
        optimizers: a Keras optimizer, or a list of (optimizer, predicate or list of variables) pairs.
        config: a :class:`TrainConfig`.
        out_dir: folder for checkpoints (``checkpoints/``) and TensorBoard logs (``tb/``); None for neither
            (then no signal handling either).
        strategy: a ``tf.distribute.Strategy``; None means ``tf.distribute.get_strategy()``.
        callbacks: callables ``callback(step, logs)`` run on the host after every step, with ``step`` = the
            number of completed steps and ``logs`` = this step's 'loss' and metrics as floats (all workers).
        resume: restore the newest checkpoint in ``out_dir`` if any (if False and one exists: ValueError).
        extra_state: SeedGenerators, tf.random.Generators or variables used by ``loss_fn``/``dataset_fn``
            that must be checkpointed with the model.

    Returns:
        A :class:`TrainResult`.

    Raises:
        TrainingInterrupted: after SIGTERM/SIGINT, once the checkpoint is written.
        FloatingPointError: non-finite loss (``config.raise_on_nonfinite``).
        ValueError: bad arguments, precision/strategy mismatch, incompatible checkpoint.
    """
    if not isinstance(config, TrainConfig):
        raise ValueError(f'config must be a TrainConfig; received {type(config).__name__}')
    if not callable(loss_fn) or not callable(dataset_fn):
        raise ValueError('loss_fn and dataset_fn must be callables; received '
                         f'loss_fn={loss_fn!r}, dataset_fn={dataset_fn!r}')
    strategy = strategy if strategy is not None else tf.distribute.get_strategy()
    trainer = _Trainer(model, loss_fn, dataset_fn, optimizers, config, out_dir, strategy, callbacks, extra_state)
    return trainer.run(resume)
