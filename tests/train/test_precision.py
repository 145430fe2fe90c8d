"""Precision policy selection and scope."""
import keras
import numpy as np
import pytest
import tensorflow as tf

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


# ------------------------------------------------------------------------------ size-aware choice
def test_decide_policy_requires_the_minimum_speedup():
    assert precision.decide_policy(105.0, 100.0, 'mixed_bfloat16') == 'mixed_bfloat16'
    assert precision.decide_policy(104.0, 100.0, 'mixed_bfloat16') == 'float32'
    assert precision.decide_policy(120.0, 100.0, 'mixed_float16', min_speedup=1.3) == 'float32'
    with pytest.raises(ValueError, match='candidate_ms=0'):
        precision.decide_policy(1.0, 0, 'mixed_bfloat16')
    with pytest.raises(ValueError, match="candidate='half'"):
        precision.decide_policy(1.0, 1.0, 'half')


def test_gemm_sizes_of_dense_einsum_and_conv_layers():
    keras.utils.set_random_seed(0)
    dense_in = keras.Input((6,))
    dense = keras.Model(dense_in, keras.layers.Dense(3)(keras.layers.Dense(5)(dense_in)))
    sizes = precision.gemm_sizes(dense, np.zeros((4, 6), np.float32))
    assert [(s.op_type, s.count, s.m, s.k, s.n) for s in sizes] == [('MatMul', 1, 4, 6, 5), ('MatMul', 1, 4, 5, 3)]
    assert [s.macs for s in sizes] == [4 * 6 * 5, 4 * 5 * 3] and [s.min_dim for s in sizes] == [4, 3]
    # A batched einsum: 'j' is a batch index (in both operands and the output), one [b, d] x [d, u] per j.
    einsum_in = keras.Input((7, 8))
    einsum = keras.Model(einsum_in, keras.layers.EinsumDense('bjd,jdu->bju', output_shape=(7, 2))(einsum_in))
    (size,) = precision.gemm_sizes(einsum, np.zeros((3, 7, 8), np.float32))
    assert (size.count, size.m, size.k, size.n) == (7, 3, 8, 2)
    conv_in = keras.Input((10, 10, 3))
    conv_out = keras.layers.DepthwiseConv2D(3, padding='same')(keras.layers.Conv2D(4, 3, padding='same')(conv_in))
    conv = keras.Model(conv_in, conv_out)
    sizes = precision.gemm_sizes(conv, np.zeros((2, 10, 10, 3), np.float32))
    assert [(s.op_type, s.count, s.m, s.k, s.n) for s in sizes] == [
        ('Conv2D', 1, 2 * 10 * 10, 3 * 3 * 3, 4), ('DepthwiseConv2dNative', 4, 2 * 10 * 10, 3 * 3, 1)]


def test_typical_gemm_dim_is_the_mac_weighted_median_width():
    G = precision.GemmSize
    # widths 2, 8, 64 carrying 20, 640, 64^3 MACs: half of all MACs is reached inside the width-64 product
    assert precision.typical_gemm_dim([G('a', 1, 2, 2, 5), G('b', 1, 8, 8, 10), G('c', 1, 64, 64, 64)]) == 64
    sizes = [G('a', 1, 4, 4, 4), G('b', 100, 2, 4, 4)]  # 64 MACs at width 4, 3200 at width 2
    assert precision.typical_gemm_dim(sizes) == 2.0
    assert precision.typical_gemm_dim([]) == 0.0


def test_choose_policy_measures_both_policies_and_decides():
    def build():
        inputs = keras.Input((8,))
        return keras.Model(inputs, keras.layers.Dense(2, dtype='float32')(keras.layers.Dense(16)(inputs)))

    def loss_fn(model, batch, step, training):
        return tf.reduce_mean(tf.square(model(batch[0], training=training) - batch[1])), {}

    batch = (np.ones((4, 8), np.float32), np.zeros((4, 2), np.float32))
    choice = precision.choose_policy(build, loss_fn, batch, steps=1, rounds=1)
    assert choice.candidate == auto_policy()
    if choice.candidate == 'float32':
        assert choice.policy == 'float32' and np.isnan(choice.float32_ms)
        return
    assert choice.float32_ms > 0 and choice.candidate_ms > 0
    assert choice.speedup == pytest.approx(choice.float32_ms / choice.candidate_ms)
    assert choice.policy == precision.decide_policy(choice.float32_ms, choice.candidate_ms, choice.candidate)
    assert keras.config.dtype_policy().name == 'float32'  # the global policy is restored
    with pytest.raises(ValueError, match='steps=0'):
        precision.choose_policy(build, loss_fn, batch, steps=0)


def test_keep_float32_makes_the_output_layer_compute_in_float32():
    keras.utils.set_random_seed(0)
    with policy_scope('mixed_bfloat16'):
        inputs = keras.Input((4,))
        hidden = keras.layers.Dense(8, name='hidden')(inputs)
        model = keras.Model(inputs, keras.layers.Dense(3, name='out')(hidden))
    x = np.ones((2, 4), np.float32)
    before = model(x)
    assert before.dtype == 'bfloat16'
    assert precision.keep_float32(model) is model
    after = model(x)
    assert after.dtype == 'float32' and model.get_layer('hidden').compute_dtype == 'bfloat16'
    assert model.get_layer('out').get_config()['dtype']['config']['name'] == 'float32'
    np.testing.assert_allclose(after, np.asarray(before, np.float32), rtol=1e-2, atol=1e-2)
    precision.keep_float32(model, ['hidden'])
    assert model.get_layer('hidden').compute_dtype == 'float32'
    with pytest.raises(ValueError, match=r"unknown names \['nope'\]"):
        precision.keep_float32(model, ['nope'])

    class Sub(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match='pass the layer names'):
        precision.keep_float32(Sub())
