"""Precision policy: which Keras dtype policy to train with, and a scope that applies it.

Policies (Keras 3 names):

- ``'float32'``: everything in float32.
- ``'mixed_bfloat16'``: variables in float32, layer computations in bfloat16. Fast on CPUs with
  AVX512-BF16 / AMX-BF16 (measured on this project's Xeon: about 1.8x faster than float32) and on TPUs/
  recent GPUs. No loss scaling needed (bfloat16 has float32's exponent range).
- ``'mixed_float16'``: variables in float32, computations in float16, with dynamic loss scaling
  (``keras.optimizers.LossScaleOptimizer``, added by the training loop). For GPUs only: on CPUs float16
  is emulated and extremely slow (a 4-layer 2048-wide dense stack did not finish in 13 minutes on this
  project's Xeon), so :func:`resolve_policy` refuses it on a machine without a GPU unless asked.

Models must be *built* inside :func:`policy_scope` (Keras layers read the global policy when they are
constructed); losses and model outputs given to losses should be float32 (cast at the model's end, e.g. a
final layer with ``dtype='float32'``).
"""
import contextlib
import warnings

import keras
import tensorflow as tf

FLOAT32 = 'float32'
MIXED_BFLOAT16 = 'mixed_bfloat16'
MIXED_FLOAT16 = 'mixed_float16'
AUTO = 'auto'
POLICIES = (FLOAT32, MIXED_BFLOAT16, MIXED_FLOAT16)
#: /proc/cpuinfo flags that mean native bfloat16 arithmetic (AVX512-BF16 dot products, AMX tiles).
BF16_CPU_FLAGS = frozenset({'avx512_bf16', 'amx_bf16'})
CPUINFO_PATH = '/proc/cpuinfo'


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
    otherwise ``'float32'``.
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
