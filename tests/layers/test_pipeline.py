"""Tests of the pipelining machinery with tiny arithmetic units whose outputs are exact."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from posekit.layers.pipeline import (FRAME_SOURCE, STEP_KEY, ExecutionCounter, PipelinedNetwork, PipelineUnit,
                                     SkipHeatmapHead, executions, partition_units)

SIZE = 4  # px


@keras.saving.register_keras_serializable(package='test_pipeline')
class AddUnit(PipelineUnit):
    """Sum of the inputs + increment (+ 10 x sum of the previous inputs when temporal)."""

    def __init__(self, increment=1.0, **kwargs):
        super().__init__(**kwargs)
        self.increment = increment

    def call(self, inputs, state=None, previous_inputs=None, training=None):
        xs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        y = tf.add_n(xs) + self.increment
        if self.temporal:
            y = y + 10.0 * tf.add_n(previous_inputs)
        return y, {}

    def flops(self, input_sizes):
        return sum(h * w for h, w in input_sizes)

    def get_config(self):
        return {**super().get_config(), 'increment': self.increment}


class SumHead(PipelineUnit):
    """Sum over channels of input 0 -> one channel."""
    output_channels = 1

    def call(self, inputs, state=None, previous_inputs=None, training=None):
        return tf.reduce_sum(inputs, axis=-1, keepdims=True), {}

    def flops(self, input_sizes):
        return 0


class CountUnit(PipelineUnit):
    """Keeps a per-pixel count of its executions in its own state; output = input + count."""

    def call(self, inputs, state=None, previous_inputs=None, training=None):
        count = (tf.zeros_like(inputs) if state is None else state['count']) + 1.0
        return inputs + count, {'count': count}

    def flops(self, input_sizes):
        return 0


class PoolUnit(PipelineUnit):
    """2x2 average pool stride 2 ('same')."""

    def call(self, inputs, state=None, previous_inputs=None, training=None):
        return tf.nn.avg_pool2d(inputs, 2, 2, 'SAME'), {}

    def flops(self, input_sizes):
        return 0


def frame(t, batch=1, size=SIZE):
    return tf.fill((batch, size, size, 1), float(t))


def network(units, **kwargs):
    return PipelinedNetwork(units, frame_channels=1, **kwargs)


def add_chain(n_units=5, **kwargs):
    return network([AddUnit(name=f'u{i}') for i in range(n_units)], **kwargs)


def run(net, num_frames, compiled=False, counter=None, frames=None):
    states = net.init_states(1, SIZE, SIZE)
    step = tf.function(net.step) if compiled else net.step
    outputs = []
    for t in range(num_frames):
        f = frame(t) if frames is None else frames[t]
        heat, states = step(f, states, counter=counter)
        outputs.append(float(heat[0, 0, 0, 0]))
    return outputs, states, step


def test_partition_and_executions():
    assert partition_units(14, 4) == [0] * 4 + [1] * 4 + [2] * 3 + [3] * 3
    assert partition_units(10, 10) == list(range(10))
    assert partition_units(3, 1) == [0, 0, 0]
    assert [executions(r, 16) for r in (1, 2, 4, 8, 16)] == [16, 8, 4, 2, 1]
    assert executions(4, 4, start=1) == 1
    with pytest.raises(ValueError, match='num_subnets=5'):
        partition_units(4, 5)


@pytest.mark.parametrize('num_subnets', [1, 2, 4])
def test_parallel_links_delay_by_one_step_per_subnetwork(num_subnets):
    # Each unit adds 1 and frames hold t: the output at t is frame t - latency plus 5.
    net = add_chain(5, num_subnets=num_subnets)
    assert net.latency == num_subnets - 1
    outputs, _, _ = run(net, 6)
    for t in range(net.latency, 6):
        assert outputs[t] == t - net.latency + 5
    assert net.sequential_depth_per_frame() == {1: 5, 2: 3, 4: 2}[num_subnets]


def test_clocks_hold_outputs_and_skip_execution_in_compiled_step():
    net = add_chain(5, rates=[1, 2, 1, 4, 1])
    counter = ExecutionCounter(net)
    outputs, _, step = run(net, 8, compiled=True, counter=counter)
    # u1 updates at even t, u3 at multiples of 4: out = 4 * floor(t / 4) + 5.
    assert outputs == [4 * (t // 4) + 5 for t in range(8)]
    assert counter.as_dict() == net.unit_executions(8) == {'u0': 8, 'u1': 4, 'u2': 8, 'u3': 2, 'u4': 8}
    assert step.experimental_get_tracing_count() == 1
    assert counter.flops(SIZE, SIZE) == 30 * SIZE * SIZE
    assert net.flops_per_frame(SIZE, SIZE) == pytest.approx(SIZE * SIZE * (1 + 0.5 + 1 + 0.25 + 1))


def test_temporal_filter_sees_input_of_previous_execution():
    units = [AddUnit(name='u0'), AddUnit(temporal=True, name='u1'), AddUnit(increment=0.0, name='u2')]
    outputs, states, _ = run(network(units), 4)
    # u1 input at t is t + 1, its previous input t (zeros at t = 0).
    assert outputs == [(t + 2) + 10 * (t if t else 0) for t in range(4)]
    assert float(states['u1__prev0'][0, 0, 0, 0]) == 4.0
    outputs, _, _ = run(network(units, rates=[1, 2, 1]), 5)
    # at rate 2 the previous execution was 2 steps earlier; odd steps hold the last output.
    expected = {0: 2, 2: 4 + 10 * 1, 4: 6 + 10 * 3}
    assert outputs == [expected[t - t % 2] for t in range(5)]


def test_feedback_concatenates_previous_heatmaps_to_first_output():
    net = network([AddUnit(name='u0'), SumHead(name='head')], feedback=True)
    assert net.state_specs()['u0__out'] == (1, 2)
    outputs, _, _ = run(net, 4)
    previous, expected = 0.0, []
    for t in range(4):
        previous = t + 1 + 1 / (1 + np.exp(-previous))
        expected.append(previous)
    np.testing.assert_allclose(outputs, expected, rtol=1e-6)


def test_unit_state_is_carried_and_frozen_while_skipped():
    net = network([CountUnit(name='c'), AddUnit(increment=0.0, name='head')], rates=[2, 1])
    outputs, states, _ = run(net, 5)
    # executions at t = 0, 2, 4 with counts 1, 2, 3.
    assert outputs == [1, 1, 4, 4, 7]
    assert float(states['c__count'][0, 0, 0, 0]) == 3.0
    assert float(states[STEP_KEY]) == 5


def test_state_shapes_follow_strides_for_odd_sizes():
    net = network([PoolUnit(name='p0'), PoolUnit(temporal=True, name='p1'), CountUnit(name='c'),
                   AddUnit(name='head')], num_subnets=2)
    assert net.state_specs() == {'p0__out': (2, 1), 'p1__out': (4, 1), 'p1__prev0': (2, 1), 'c__out': (4, 1),
                                 'c__count': (4, 1), 'head__out': (4, 1)}
    states = net.init_states(2, 13, 10)
    assert tuple(states['p1__out'].shape) == (2, 4, 3, 1)
    heat, new = net.step(tf.ones((2, 13, 10, 1)), states)
    assert tuple(heat.shape) == (2, 4, 3, 1)
    assert {k: tuple(v.shape) for k, v in new.items()} == {k: tuple(v.shape) for k, v in states.items()}


def test_unroll_matches_steps_and_captures_activations():
    net = add_chain(4, num_subnets=2, rates=[1, 2, 1, 1])
    frames = tf.stack([frame(t)[0] for t in range(5)])[None]
    result = net.unroll(frames, capture=['u1'])
    outputs, states, _ = run(net, 5)
    np.testing.assert_array_equal(result['heatmaps'][0, :, 0, 0, 0], outputs)
    assert tuple(result['activations']['u1'].shape) == (1, 5, SIZE, SIZE, 1)
    for key in states:
        np.testing.assert_array_equal(result['states'][key], states[key])
    np.testing.assert_array_equal(net(frames), result['heatmaps'])
    with pytest.raises(ValueError, match="capture=\\['nope'\\]"):
        net.unroll(frames, capture=['nope'])


def test_per_frame_equals_single_subnetwork_step_with_skip_sources():
    units = [AddUnit(name='a'), AddUnit(name='b'), AddUnit(name='c'), AddUnit(name='head')]
    net = network(units, sources=[[FRAME_SOURCE], [0], [1], [0, 2]])
    image = tf.random.stateless_normal((2, SIZE, SIZE, 1), seed=(1, 2))
    heat, _ = net.step(image, net.init_states(2, SIZE, SIZE))
    np.testing.assert_array_equal(heat, net.per_frame(image))
    np.testing.assert_allclose(heat, 2 * image + 5, rtol=1e-6)


def test_config_round_trip():
    net = add_chain(3, rates=[1, 2, 1], num_subnets=2, sources=[[FRAME_SOURCE], [0], [0, 1]])
    clone = PipelinedNetwork.from_config(net.get_config())
    assert clone.rates == [1, 2, 1] and clone.num_subnets == 2 and clone.sources == [[-1], [0], [0, 1]]
    assert run(clone, 4)[0] == run(net, 4)[0]
    head = SkipHeatmapHead(num_keypoints=5, skip_channels=3, skip_kernel_size=1, pre_activation=False,
                           temporal=True, name='h')
    assert SkipHeatmapHead.from_config(head.get_config()).get_config() == head.get_config()


def test_invalid_arguments():
    with pytest.raises(ValueError, match='rates='):
        add_chain(3, rates=[1, 2])
    with pytest.raises(ValueError, match='num_subnets=3'):
        add_chain(3, num_subnets=3)
    with pytest.raises(ValueError, match='sources='):
        add_chain(3, sources=[[FRAME_SOURCE], [FRAME_SOURCE], [1]])
    with pytest.raises(ValueError, match='feedback=True'):
        add_chain(3, feedback=True)
    with pytest.raises(ValueError, match='unique'):
        network([AddUnit(name='x'), AddUnit(name='x')])
    with pytest.raises(ValueError, match='temporal=1'):
        AddUnit(temporal=1)
    with pytest.raises(ValueError, match='skip_channels=0'):
        SkipHeatmapHead(skip_channels=0)


def test_skip_head_shapes_and_flops_match_tf_profiler():
    head = SkipHeatmapHead(num_keypoints=3, skip_channels=4, name='head')
    inputs = [tf.zeros((1, 8, 8, 5)), tf.zeros((1, 4, 4, 6)), tf.zeros((1, 2, 2, 7))]
    out, state = head(inputs)
    assert tuple(out.shape) == (1, 8, 8, 3) and state == {}
    expected = 2 * (64 * 9 * 5 * 4 + 16 * 9 * 6 * 4 + 4 * 9 * 7 * 4 + 64 * 9 * 12 * 3)
    assert head.flops([(8, 8), (4, 4), (2, 2)]) == expected
    graph = tf.function(lambda *x: head(list(x))[0]).get_concrete_function(
        *[tf.TensorSpec(x.shape) for x in inputs]).graph
    assert profiled_conv_flops(graph) == expected


def profiled_conv_flops(graph):
    """FLOPs of the Conv2D ops of a graph according to TF's profiler."""
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options['output'] = 'none'
    profile = tf.compat.v1.profiler.profile(graph, options=options)
    return sum(node.total_float_ops for node in profile.children
               if graph.get_operation_by_name(node.name).type == 'Conv2D')


def test_skip_head_layer_contract(rng):
    from tests.layer_testing import run_layer_test
    inputs = [rng.normal(size=(2, 8, 8, 5)).astype(np.float32), rng.normal(size=(2, 4, 4, 6)).astype(np.float32)]
    run_layer_test(lambda: SkipHeatmapHead(num_keypoints=3, skip_channels=4, name='head'), inputs, (2, 8, 8, 3))
