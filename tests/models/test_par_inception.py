"""Par-Inception: paper size, causal I3D kernels, image-model equivalence, pipelining, clocks, FLOPs."""
import numpy as np
import pytest
import tensorflow as tf

from posekit.layers.pipeline import ExecutionCounter
from posekit.models.par_inception import PAPER_PARAMS, ParInception, _CausalConvBN

TINY = dict(width=0.125)
SIZE = 32  # px
PARAM_TOLERANCE = 0.02


def frames(num, batch=1, size=SIZE, seed=0):
    return [tf.random.stateless_normal((batch, size, size, 3), seed=(seed, t)) for t in range(num)]


def test_paper_size_parameter_count_within_two_percent():
    net = ParInception.paper()
    net.build((None, None, None, 3))
    params = net.count_params()
    assert abs(params - PAPER_PARAMS) / PAPER_PARAMS < PARAM_TOLERANCE, params
    names = [u.name for u in net.pipeline_units]
    assert names == ['stem', 'mixed_3b', 'mixed_3c', 'mixed_4b', 'mixed_4c', 'mixed_4d', 'mixed_4e', 'mixed_4f',
                     'mixed_5b', 'mixed_5c', 'head']
    stem = net.pipeline_units[0]
    assert stem.convs[0].conv.kernel.shape == (7, 7, 7 * 3, 64)  # 7x7x7 I3D stem kernel, causal in time
    assert net.pipeline_units[-2].convs['b1b'].conv.kernel.shape == (3, 3, 3 * 192, 384)
    flat = ParInception.paper(inflate=False)
    flat.build((None, None, None, 3))
    assert flat.count_params() < 0.5 * PAPER_PARAMS  # 2D kernels alone cannot reach the paper's count


def test_clock_rates_halve_with_resolution():
    assert ParInception(clocks=True).rates == [1, 2, 2, 4, 4, 4, 4, 4, 8, 8, 1]
    assert ParInception(num_subnets=5).subnet_of_unit == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 4]
    assert ParInception(num_subnets=10).latency == 9
    assert ParInception().miniblock_executions(16) == 9 * 16
    assert ParInception(clocks=True).miniblock_executions(16) == 2 * 8 + 5 * 4 + 2 * 2


def test_causal_conv_equals_3d_convolution_over_past_frames():
    conv = _CausalConvBN(4, 3, temporal_size=3)
    conv.build((None, None, None, 2))
    clip = tf.random.stateless_normal((1, 5, 6, 6, 2), seed=(1, 1))  # (batch, T, h, w, c)
    history, outputs = None, []
    for t in range(5):
        y, history = conv(clip[:, t], history)
        outputs.append(y)
    kernel = conv.conv.kernel  # (3, 3, [x_t, x_t-1, x_t-2] channel blocks, 4)
    kernel3d = tf.stack([kernel[:, :, 2 * (2 - d):2 * (3 - d)] for d in range(3)])  # time ascending
    padded = tf.pad(clip, [[0, 0], [2, 0], [0, 0], [0, 0], [0, 0]])
    expected = tf.nn.conv3d(tf.pad(padded, [[0, 0], [0, 0], [1, 1], [1, 1], [0, 0]]), kernel3d, [1] * 5, 'VALID')
    expected = tf.stack([tf.nn.relu(conv.norm(expected[:, t], training=False)) for t in range(5)], axis=1)
    np.testing.assert_allclose(tf.stack(outputs, axis=1), expected, atol=1e-5)


def test_single_subnetwork_equals_per_frame_image_model():
    net = ParInception(**TINY)
    states = net.init_states(2, SIZE, SIZE)
    for x in frames(3, batch=2):
        heat, states = net.step(x, states)
        np.testing.assert_array_equal(heat, net.per_frame(x))
    assert tuple(heat.shape) == (2, SIZE // 8, SIZE // 8, 17)


def test_later_subnetworks_do_not_see_the_current_frame():
    net = ParInception(num_subnets=5, inflate=True, **TINY)
    clips = frames(3)
    perturbed = [clips[0], clips[1] + 1.0, clips[2]]
    runs = []
    for clip in (clips, perturbed):
        states, outs = net.init_states(1, SIZE, SIZE), []
        for x in clip[:2]:
            heat, states = net.step(x, states)
            outs.append(heat.numpy())
        runs.append((outs, states))
    (outs_a, states_a), (outs_b, states_b) = runs
    np.testing.assert_array_equal(outs_a[1], outs_b[1])
    changed = {key for key in states_a if not np.array_equal(states_a[key], states_b[key])}
    assert {'stem__out', 'mixed_3b__out', 'stem__conv1_h0'} <= changed
    assert all(key.startswith(('stem__', 'mixed_3b__')) for key in changed), changed  # subnetwork 0 only


def test_compiled_clocked_step_counts_and_flops():
    net = ParInception(clocks=True, num_subnets=2, inflate=True, temporal_filters=True, feedback=True, **TINY)
    counter = ExecutionCounter(net)
    step = tf.function(net.step)
    states = net.init_states(1, SIZE, SIZE)
    for x in frames(8):
        heat, states = step(x, states, counter=counter)
    assert counter.as_dict() == net.unit_executions(8)
    assert counter.as_dict()['mixed_5c'] == 1 and counter.as_dict()['stem'] == 8
    assert counter.flops(SIZE, SIZE) == pytest.approx(8 * net.flops_per_frame(SIZE, SIZE))
    assert step.experimental_get_tracing_count() == 1
    assert tuple(heat.shape) == (1, 4, 4, 17)


def test_unit_flops_match_tf_profiler():
    net = ParInception(**TINY)
    specs = net.state_specs()
    height = 64
    flops = net.unit_flops(height, height)
    for index, source in ((0, None), (3, 'mixed_3c__out')):
        unit = net.pipeline_units[index]
        stride, channels = (1, 3) if source is None else specs[source]
        spec = tf.TensorSpec((1, height // stride, height // stride, channels))
        graph = tf.function(lambda x, unit=unit: unit(x)[0]).get_concrete_function(spec).graph
        options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
        options['output'] = 'none'
        profile = tf.compat.v1.profiler.profile(graph, options=options)
        measured = sum(n.total_float_ops for n in profile.children
                       if graph.get_operation_by_name(n.name).type == 'Conv2D')
        assert measured == flops[index], unit.name


def test_config_round_trip():
    net = ParInception(width=0.5, inflate=True, num_subnets=5, clocks=True, feedback=True, name='pi')
    clone = ParInception.from_config(net.get_config())
    assert clone.get_config() == net.get_config()
    assert clone.rates == net.rates


def test_invalid_arguments():
    with pytest.raises(ValueError, match='width=-1'):
        ParInception(width=-1)
    with pytest.raises(ValueError, match='num_subnets=11'):
        ParInception(num_subnets=11)
    with pytest.raises(ValueError, match='inflate=None'):
        ParInception(inflate=None)
