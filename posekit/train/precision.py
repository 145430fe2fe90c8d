"""Precision policy: which Keras dtype policy to train with, and a scope that applies it.

Policies (Keras 3 names):

- ``'float32'``: everything in float32.
- ``'mixed_bfloat16'``: variables in float32, layer computations in bfloat16. Fast on CPUs with
  AVX512-BF16 / AMX-BF16 for wide layers (slower for narrow ones, see below) and on TPUs/recent GPUs. No
  loss scaling needed (bfloat16 has float32's exponent range).
- ``'mixed_float16'``: variables in float32, computations in float16, with dynamic loss scaling
  (``keras.optimizers.LossScaleOptimizer``, added by the training loop). For GPUs only: on CPUs float16
  is emulated and orders of magnitude slower (README, "Mixed precision"), so :func:`resolve_policy` refuses
  it on a machine without a GPU unless asked.

Models must be *built* inside :func:`policy_scope` (Keras layers read the global policy when they are
constructed); losses and model outputs given to losses should be float32 (cast at the model's end, e.g. a
final layer with ``dtype='float32'``, or :func:`keep_float32` on a built model).

Size-aware choice (``choose_policy``)
-------------------------------------
``'auto'`` (:func:`auto_policy`, what ``resolve_policy`` and the training loop use) names the machine's
reduced-precision policy. Whether it pays depends on the model: on this project's CPU it helps wide
matrix products (AMX tiles) and halves memory traffic, but adds casts, and the optimizer update and
per-op dispatch stay as they are. :func:`choose_policy` therefore *measures*: it builds the model under
float32 and under ``auto_policy()``, times their training steps interleaved, and keeps float32 unless the
mixed policy is at least ``MIN_SPEEDUP`` times faster. A static rule could not separate the measured
cases: at the same matrix-product width (:func:`typical_gemm_dim`, the MAC-weighted median of
min(M, K, N) of the forward pass's GEMMs, reported by the study) the GCN lifter gains and the MLP loses.

The measurements behind these rules (speed-ups by model and width, the float32 optimizer update as the
bound of large models, XLA without oneDNN's AMX kernels under bfloat16, emulated float16 on CPUs) are in
the README ("Mixed precision" and "Benchmarks"); they are reproduced by ``python -m
experiments.mixed_precision`` and ``python -m tools.benchmark_precision``. What follows from them here:
``jit_compile`` stays off under mixed_bfloat16 by default; :func:`resolve_policy` refuses float16 on a CPU;
small output layers, losses and normalization statistics stay float32 (``MotionVAE``'s output layers,
``MetrabsHead``'s soft-argmax, Keras' normalization layers, the loop's float32 loss, and :func:`keep_float32`
for a built functional model such as the GCN lifter, whose 3-unit bfloat16 outputs would be rounded to about
4 mm at 1 m).
"""
import contextlib
import dataclasses
import math
import warnings

import keras
import numpy as np
import tensorflow as tf

from posekit.train import timing

FLOAT32 = 'float32'
MIXED_BFLOAT16 = 'mixed_bfloat16'
MIXED_FLOAT16 = 'mixed_float16'
AUTO = 'auto'
POLICIES = (FLOAT32, MIXED_BFLOAT16, MIXED_FLOAT16)
#: /proc/cpuinfo flags that mean native bfloat16 arithmetic (AVX512-BF16 dot products, AMX tiles).
BF16_CPU_FLAGS = frozenset({'avx512_bf16', 'amx_bf16'})
CPUINFO_PATH = '/proc/cpuinfo'
#: :func:`choose_policy` picks the reduced-precision policy only when it makes the training step at least
#: this much faster than float32 (below, the small gain is not worth the rounding).
MIN_SPEEDUP = 1.05
#: Untimed training steps of each policy in :func:`choose_policy` before the timed rounds (tracing, warm-up).
WARMUP_STEPS = 2
#: TensorFlow op types :func:`gemm_sizes` counts (forward-pass matrix products and convolutions).
GEMM_OP_TYPES = ('MatMul', 'BatchMatMul', 'BatchMatMulV2', 'BatchMatMulV3', 'Einsum', 'Conv2D', 'Conv3D',
                 'DepthwiseConv2dNative')


def cpu_flags(cpuinfo_path=CPUINFO_PATH):
    """The set of CPU feature flags listed in ``cpuinfo_path`` (Linux ``/proc/cpuinfo``).

    Returns an empty set where the file does not exist (other operating systems).
    """
    try:
        with open(cpuinfo_path, encoding='utf-8', errors='replace') as f:
            text = f.read()
    except OSError:
        return frozenset()
    flags = set()
    for line in text.splitlines():
        key, sep, value = line.partition(':')
        if sep and key.strip() in ('flags', 'Features'):
            flags.update(value.split())
    return frozenset(flags)


def gpu_available():
    """True when TensorFlow sees at least one physical GPU (does not initialise the devices)."""
    return bool(tf.config.list_physical_devices('GPU'))


def policy_for(has_gpu, flags):
    """The automatic policy for a machine: pure function of ``has_gpu`` (bool) and CPU ``flags`` (set of str).

    ``'mixed_float16'`` with a GPU, ``'mixed_bfloat16'`` on a CPU with AVX512-BF16 or AMX-BF16,
    otherwise ``'float32'``. (Whether it pays for a given model: :func:`choose_policy`.)
    """
    if has_gpu:
        return MIXED_FLOAT16
    if BF16_CPU_FLAGS & set(flags):
        return MIXED_BFLOAT16
    return FLOAT32


def auto_policy():
    """The policy name ``'auto'`` stands for on this machine (see :func:`policy_for`)."""
    return policy_for(gpu_available(), cpu_flags())


def resolve_policy(name, allow_cpu_float16=False):
    """Turns a precision setting into a Keras policy name.

    Args:
        name: ``'auto'``, ``'float32'``, ``'mixed_bfloat16'`` or ``'mixed_float16'``.
        allow_cpu_float16: if False (default), ``'mixed_float16'`` on a machine without a GPU raises
            (float16 is emulated on CPUs, orders of magnitude slower); if True it only warns.

    Returns:
        One of ``'float32'``, ``'mixed_bfloat16'``, ``'mixed_float16'``.

    Raises:
        ValueError: unknown ``name``, or float16 on a CPU-only machine without ``allow_cpu_float16``.
    """
    if name == AUTO:
        return auto_policy()
    if name not in POLICIES:
        raise ValueError(f"precision must be one of {(AUTO,) + POLICIES}; received precision={name!r}")
    if name == MIXED_FLOAT16 and not gpu_available():
        message = ("precision='mixed_float16' on a machine without a GPU: float16 is emulated on CPUs and "
                   "extremely slow; use 'mixed_bfloat16' (CPUs with AVX512-BF16/AMX) or 'float32'")
        if not allow_cpu_float16:
            raise ValueError(message + "; received precision='mixed_float16' (pass allow_cpu_float16=True "
                             "to force it)")
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    return name


def compute_dtype(policy_name):
    """The dtype layers compute in under ``policy_name`` ('float32', 'bfloat16' or 'float16')."""
    return keras.DTypePolicy(policy_name).compute_dtype


@contextlib.contextmanager
def policy_scope(name, allow_cpu_float16=False):
    """Context manager: sets Keras' global dtype policy to ``resolve_policy(name)`` and restores the previous one.

    Build (construct and call once) models inside it; the training loop checks that the model agrees
    with the policy it trains with. Yields the resolved policy name. Keras keeps the global policy per
    thread, so the scope affects the current thread only.
    """
    resolved = resolve_policy(name, allow_cpu_float16=allow_cpu_float16)
    with global_policy(resolved):
        yield resolved


@contextlib.contextmanager
def global_policy(policy_name):
    """Sets Keras' global dtype policy to ``policy_name`` (used as given, no checks) and restores it on exit."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy_name)
    try:
        yield policy_name
    finally:
        keras.config.set_dtype_policy(previous)


# ------------------------------------------------------------------------------------ size-aware choice
@dataclasses.dataclass(frozen=True)
class GemmSize:
    """One matrix-product op of a traced forward pass: ``count`` products of [M, K] x [K, N].

    Attributes:
        op_type: the TensorFlow op type (``GEMM_OP_TYPES``).
        count: number of independent products (batch dimensions of batched products / einsums, channels of
            a depthwise convolution).
        m, k, n: the dimensions of one product (convolutions as implicit GEMMs: m = output positions,
            k = kernel volume x input channels, n = output channels; depthwise: k = kernel area, n = 1).
    """
    op_type: str
    count: int
    m: int
    k: int
    n: int

    @property
    def macs(self):
        """Multiply-accumulates of all ``count`` products."""
        return self.count * self.m * self.k * self.n

    @property
    def min_dim(self):
        """The smallest of m, k, n: what limits the efficiency of one product."""
        return min(self.m, self.k, self.n)


def _static_dims(tensor):
    dims = tensor.shape.as_list() if tensor.shape.rank is not None else None
    if dims is None or any(d is None for d in dims):
        return None
    return [int(d) for d in dims]


def op_gemm_size(op):
    """The :class:`GemmSize` of one graph op, or None if it is no matrix product or its shapes are unknown.

    ``MatMul``: [m, k] x [k, n]. ``BatchMatMul*``: one product per batch entry. ``Einsum`` (two operands):
    indices in both operands and the output are batch indices, indices in both operands only are
    contracted (k), the first operand's other indices are m and the second's n. ``Conv2D``/``Conv3D``: one
    implicit GEMM (m = output positions, k = kernel volume x input channels, n = output channels).
    ``DepthwiseConv2dNative``: one product per output channel with k = kernel area and n = 1.
    """
    kind = op.type
    if kind not in GEMM_OP_TYPES:
        return None
    shapes = [_static_dims(t) for t in list(op.inputs)[:2]] + [_static_dims(op.outputs[0])]
    if any(s is None for s in shapes):
        return None
    a, b, out = shapes
    if kind == 'MatMul':
        m, k = (a[1], a[0]) if op.get_attr('transpose_a') else (a[0], a[1])
        n = b[0] if op.get_attr('transpose_b') else b[1]
        return GemmSize(kind, 1, m, k, n)
    if kind.startswith('BatchMatMul'):
        k = a[-2] if op.get_attr('adj_x') else a[-1]
        return GemmSize(kind, math.prod(out[:-2]), out[-2], k, out[-1])
    if kind == 'Einsum':
        equation = op.get_attr('equation').decode().replace(' ', '')
        inputs, output = equation.split('->')
        specs = inputs.split(',')
        if len(specs) != 2 or '.' in equation:
            return None
        sizes = {}
        for spec, dims in zip(specs, (a, b)):
            sizes.update(zip(spec, dims))
        first, second, out_set = set(specs[0]), set(specs[1]), set(output)

        def prod(letters):
            return math.prod(sizes[c] for c in letters)

        return GemmSize(kind, prod(first & second & out_set), prod((first & out_set) - second),
                        prod((first - out_set) | (second - out_set)), prod((second & out_set) - first))
    if kind in ('Conv2D', 'Conv3D'):
        return GemmSize(kind, 1, math.prod(out[:-1]), math.prod(b[:-1]), out[-1])
    # DepthwiseConv2dNative: kernel [kh, kw, channels, multiplier]
    return GemmSize(kind, out[-1], math.prod(out[:-1]), b[0] * b[1], 1)


def gemm_sizes(model, example_inputs, training=True):
    """Matrix products of one forward pass of ``model`` on inputs shaped like ``example_inputs``.

    Traces ``model(example_inputs, training=training)`` once (no computation) and lists every op of
    ``GEMM_OP_TYPES`` with static shapes (ops inside control-flow bodies are not visited).

    Args:
        model: a built Keras model (any policy: shapes do not depend on it).
        example_inputs: a (nested) structure of arrays or tensors with the training batch's shapes.
        training: passed to the model call.

    Returns:
        List of :class:`GemmSize`.
    """
    specs = tf.nest.map_structure(
        lambda x: tf.TensorSpec(np.shape(x), tf.as_dtype(getattr(x, 'dtype', 'float32'))), example_inputs)
    function = tf.function(lambda inputs: model(inputs, training=training))
    graph = function.get_concrete_function(specs).graph
    return [size for size in (op_gemm_size(op) for op in graph.get_operations()) if size is not None]


def typical_gemm_dim(sizes):
    """MAC-weighted median of the products' smallest dimension: half of all MACs run in products at least this wide.

    Args:
        sizes: list of :class:`GemmSize` (:func:`gemm_sizes`).

    Returns:
        float (0.0 when ``sizes`` is empty).
    """
    if not sizes:
        return 0.0
    dims = np.array([s.min_dim for s in sizes], np.float64)
    macs = np.array([s.macs for s in sizes], np.float64)
    order = np.argsort(dims, kind='stable')
    cumulative = np.cumsum(macs[order])
    return float(dims[order][np.searchsorted(cumulative, cumulative[-1] / 2.0)])


@dataclasses.dataclass(frozen=True)
class PolicyChoice:
    """Result of :func:`choose_policy`.

    Attributes:
        policy: the chosen policy name (``candidate`` or ``'float32'``).
        candidate: the machine's reduced-precision policy that was compared with float32 (``auto_policy()``).
        float32_ms, candidate_ms: median training-step times (ms); nan when nothing was measured.
    """
    policy: str
    candidate: str
    float32_ms: float
    candidate_ms: float

    @property
    def speedup(self):
        """float32 step time / candidate step time."""
        return self.float32_ms / self.candidate_ms


def decide_policy(float32_ms, candidate_ms, candidate, min_speedup=MIN_SPEEDUP):
    """``candidate`` if it is at least ``min_speedup`` times faster than float32, else ``'float32'`` (pure)."""
    for name, value in (('float32_ms', float32_ms), ('candidate_ms', candidate_ms)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not value > 0:
            raise ValueError(f'{name} must be a positive number; received {name}={value!r}')
    if candidate not in POLICIES:
        raise ValueError(f'candidate must be one of {POLICIES}; received candidate={candidate!r}')
    return candidate if float32_ms / candidate_ms >= min_speedup else FLOAT32


def choose_policy(build_model, loss_fn, batch, make_optimizer=None, steps=5, rounds=3, min_speedup=MIN_SPEEDUP,
                  jit_compile=False, seed=0):
    """Size-aware automatic precision: measures whether the machine's mixed policy pays for this model.

    Builds the model under float32 and under ``auto_policy()`` (same seed, so the same initial weights) and
    times their training steps (gradient tape, float32 loss, optimizer update; under mixed_float16 with
    loss scaling) on ``batch``, interleaved (``posekit.train.timing.interleave``: ``WARMUP_STEPS`` untimed
    steps each, then ``rounds`` rounds of ``steps`` steps of each policy in turn, so a change of machine load
    hits both alike). Returns the mixed policy only if its median step (over all timed steps) is at least
    ``min_speedup`` times faster (module docstring: small models gain nothing or lose). Costs two builds,
    two traces and ``2 * rounds * steps`` steps; the models are discarded (build the training model inside
    ``policy_scope(choice.policy)`` and train with ``TrainConfig(precision=choice.policy)``).

    Args:
        build_model: zero-argument callable returning a built Keras model (called inside each policy scope).
        loss_fn: the training loop's ``loss_fn(model, batch, step, training) -> (float32 loss, metrics)``.
        batch: one training batch, as the loop passes it (nested tensors or arrays).
        make_optimizer: zero-argument callable returning a fresh Keras optimizer (default: Adam).
        steps, rounds: timed steps per policy per round, and rounds.
        min_speedup: required speed-up of the mixed policy.
        jit_compile: compile the steps with XLA (as the training will).
        seed: ``keras.utils.set_random_seed`` before each build.

    Returns:
        A :class:`PolicyChoice` (float32 without measuring when the machine has no reduced precision).
    """
    for name, value in (('steps', steps), ('rounds', rounds)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f'{name} must be a positive int; received {name}={value!r}')
    if not callable(build_model) or not callable(loss_fn):
        raise ValueError(f'build_model and loss_fn must be callables; received build_model={build_model!r}, '
                         f'loss_fn={loss_fn!r}')
    candidate = auto_policy()
    if candidate == FLOAT32:
        return PolicyChoice(FLOAT32, FLOAT32, math.nan, math.nan)
    batch = tf.nest.map_structure(tf.convert_to_tensor, batch)
    step_index = tf.constant(0, tf.int64)
    candidates = {}
    for policy in (FLOAT32, candidate):
        keras.utils.set_random_seed(seed)
        with policy_scope(policy):
            model = build_model()
            optimizer = make_optimizer() if make_optimizer is not None else keras.optimizers.Adam()
            if policy == MIXED_FLOAT16:
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            optimizer.build(model.trainable_variables)
        candidates[policy] = _training_step(model, loss_fn, optimizer, batch, step_index, policy, jit_compile)
    durations = timing.interleave(candidates, rounds, calls=steps, warmup=WARMUP_STEPS)
    stats = {policy: timing.summarize(seconds) for policy, seconds in durations.items()}
    float32_ms, candidate_ms = stats[FLOAT32].median_ms, stats[candidate].median_ms
    return PolicyChoice(decide_policy(float32_ms, candidate_ms, candidate, min_speedup), candidate, float32_ms,
                        candidate_ms)


def _training_step(model, loss_fn, optimizer, batch, step_index, policy, jit_compile):
    """One policy's compiled training step as a zero-argument callable that blocks until the step is done."""
    variables = model.trainable_variables
    scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

    @tf.function(jit_compile=jit_compile)
    def step():
        with tf.GradientTape() as tape:
            loss = tf.cast(loss_fn(model, batch, step_index, True)[0], tf.float32)
            objective = optimizer.scale_loss(loss) if scaled else loss
        optimizer.apply(tape.gradient(objective, variables), variables)
        return loss

    def run():
        with global_policy(policy):
            step().numpy()

    return run


def keep_float32(model, layer_names=None):
    """Makes the given layers of a built ``model`` compute in float32 (in place; returns ``model``).

    For the small layers whose outputs reach the loss (e.g. a lifter's final 3-unit graph convolution):
    under a mixed policy they would otherwise round their outputs to bfloat16 (8 significant bits,
    about 4 mm at 1 m). Their variables are float32 already; only the compute dtype changes (inputs are
    cast on entry), so this costs one small cast. The change is part of each layer's config.

    Args:
        model: a built Keras model.
        layer_names: names of layers of ``model`` (nested layers are found by name); None: the layers
            whose outputs are the outputs of a functional ``model``.

    Returns:
        ``model``.

    Raises:
        ValueError: an unknown layer name, or ``layer_names=None`` for a model that is not functional.
    """
    if layer_names is None:
        outputs = getattr(model, 'outputs', None)
        if not outputs:
            raise ValueError(f'layer_names=None needs a functional model with outputs; received '
                             f'{type(model).__name__} {model.name!r}: pass the layer names')
        layers = [t._keras_history.operation for t in tf.nest.flatten(outputs)]
    else:
        by_name = {layer.name: layer for layer in model._flatten_layers(include_self=False, recursive=True)}
        unknown = [name for name in layer_names if name not in by_name]
        if unknown:
            raise ValueError(f'layer_names must name layers of the model; received unknown names {unknown}')
        layers = [by_name[name] for name in layer_names]
    for layer in layers:
        layer.dtype_policy = keras.DTypePolicy(FLOAT32)
    return model
