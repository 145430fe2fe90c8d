"""Precision policy selection and scope."""
import keras
import pytest

from posekit.train import precision
from posekit.train.precision import auto_policy, policy_for, policy_scope, resolve_policy


def test_policy_for_each_machine_kind():
    assert policy_for(True, {'avx512_bf16'}) == 'mixed_float16'
    assert policy_for(False, {'sse2', 'avx512_bf16'}) == 'mixed_bfloat16'
    assert policy_for(False, {'amx_bf16'}) == 'mixed_bfloat16'
    assert policy_for(False, {'avx2', 'avx512f'}) == 'float32'
    assert policy_for(False, set()) == 'float32'


def test_cpu_flags_parses_cpuinfo(tmp_path):
    path = tmp_path / 'cpuinfo'
    path.write_text('processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu sse2 avx512_bf16 amx_bf16\n\n'
                    'processor\t: 1\nflags\t\t: fpu sse2\n')
    assert precision.cpu_flags(str(path)) == {'fpu', 'sse2', 'avx512_bf16', 'amx_bf16'}
    assert precision.cpu_flags(str(tmp_path / 'missing')) == frozenset()


def test_auto_policy_on_this_machine():
    expected = policy_for(precision.gpu_available(), precision.cpu_flags())
    assert auto_policy() == expected == resolve_policy('auto')
    if precision.gpu_available() or not precision.BF16_CPU_FLAGS & precision.cpu_flags():
        pytest.skip('the acceptance machine is a CPU-only Xeon with AVX512-BF16/AMX')
    assert auto_policy() == 'mixed_bfloat16'


def test_resolve_policy_names_and_errors():
    assert resolve_policy('float32') == 'float32'
    assert resolve_policy('mixed_bfloat16') == 'mixed_bfloat16'
    with pytest.raises(ValueError, match="precision='float64'"):
        resolve_policy('float64')


def test_float16_refused_on_cpu_unless_forced():
    if precision.gpu_available():
        assert resolve_policy('mixed_float16') == 'mixed_float16'
        return
    with pytest.raises(ValueError, match="without a GPU.*precision='mixed_float16'"):
        resolve_policy('mixed_float16')
    with pytest.warns(RuntimeWarning, match='without a GPU'):
        assert resolve_policy('mixed_float16', allow_cpu_float16=True) == 'mixed_float16'


def test_policy_scope_sets_and_restores():
    before = keras.config.dtype_policy().name
    with policy_scope('mixed_bfloat16') as name:
        assert name == 'mixed_bfloat16'
        layer = keras.layers.Dense(3)
        layer.build((None, 2))
    assert keras.config.dtype_policy().name == before
    assert layer.compute_dtype == 'bfloat16' and layer.kernel.dtype == 'float32'
    with pytest.raises(RuntimeError):
        with policy_scope('mixed_bfloat16'):
            raise RuntimeError('boom')
    assert keras.config.dtype_policy().name == before
    with pytest.raises(ValueError, match="precision='half'"):
        with policy_scope('half'):
            pass
    assert precision.compute_dtype('mixed_float16') == 'float16'
