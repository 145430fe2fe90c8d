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


# Appendix Tables 6-7 (Carreira et al. 2018) as extracted: the conv rows with their kernel shapes, weights only.
TABLE_MIXED_4E_BRANCH0 = 128  # printed in Table 7; I3D / Inception-v1 (and ours) have 112
BN_PARAMS_PER_CHANNEL = 4  # gamma, beta, moving mean and variance (keras count_params counts all four)


def inception_conv_weights(mixed_4e_branch0):
    """Weights of the stem's and the 9 blocks' convolutions with I3D kernels (7x7x7, 1x1x1, 3x3x3) and the
    number of output channels of all those convolutions, from INCEPTION_BLOCKS."""
    from posekit.models.par_inception import INCEPTION_BLOCKS
    weights = 3 * 64 * 7 * 7 * 7 + 64 * 64 + 64 * 192 * 3 * 3 * 3
    outputs, channels = 64 + 64 + 192, 192
    for name, (b0, b1a, b1b, b2a, b2b, b3), _, _ in INCEPTION_BLOCKS:
        b0 = mixed_4e_branch0 if name == 'mixed_4e' else b0
        weights += channels * (b0 + b1a + b2a + b3) + (b1a * b1b + b2a * b2b) * 3 * 3 * 3
        outputs += b0 + b1a + b1b + b2a + b2b + b3
        channels = b0 + b1b + b2b + b3
    return weights, outputs, channels


def test_paper_size_parameter_count_itemised_against_tables_6_and_7():
    net = ParInception.paper()
    net.build((None, None, None, 3))
    weights, outputs, channels = inception_conv_weights(112)
    assert (weights, outputs, channels) == (12_272_704, 7_280, 1024)
    head = (480 + 832 + 1024) * 64 + 3 * 64 + 3 * 3 * 192 * 17 + 17  # 1x1 skips (+bias) and the 3x3 logits
    assert head == 179_089
    assert net.count_params() == weights + BN_PARAMS_PER_CHANNEL * outputs + head == 12_480_913
    # The paper's total is not reachable from the tables' rows: weights only, with the printed Mixed_4e branch0
    # (128) or I3D's (112), the rest of 12,501,056 is a whole number of 1x1x1 logits on 1024 channels, i.e. 206
    # or 223 outputs, neither a keypoint nor a usual class count: the head the total includes is unknown.
    for branch0, logits in ((TABLE_MIXED_4E_BRANCH0, 206), (112, 223)):
        table_weights, _, table_channels = inception_conv_weights(branch0)
        assert PAPER_PARAMS - table_weights == logits * table_channels
