"""Par-DenseNet: paper sizes (parameters, miniblock counts), image-model equivalence, pipelining, clocks."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from posekit.layers.pipeline import ExecutionCounter
from posekit.train.losses_video import latency_heatmap_loss
from posekit.models.par_densenet import PAPER_PARAMS, ParDenseNet

TINY = dict(width=0.125)  # growth 8
SIZE = 32  # px
PARAM_TOLERANCE = 0.02
FRAMES_PER_COUNT = 16  # the paper counts miniblock executions per 16 frames


def frames(num, batch=1, size=SIZE, seed=0):
    return [tf.random.stateless_normal((batch, size, size, 3), seed=(seed, t)) for t in range(num)]


def test_paper_size_parameter_count_within_two_percent():
    net = ParDenseNet.paper()
    net.build((None, None, None, 3))
    params = net.count_params()
    assert abs(params - PAPER_PARAMS) / PAPER_PARAMS < PARAM_TOLERANCE, params
    assert [u.name for u in net.pipeline_units][:3] == ['stem', 'block1_unit0', 'block1_unit1']
    assert len(net.pipeline_units) == 15  # stem + 13 two-miniblock units + head: up to 14 subnetworks
    assert [u.num_miniblocks for u in net.pipeline_units[1:-1]] == [2] * 13
    assert net.pipeline_units[1].miniblocks[0][3].kernel.shape == (3, 3, 256, 64)  # growth 64, bottleneck 256


def test_paper_miniblock_executions_per_16_frames():
    assert ParDenseNet.paper().miniblock_executions(FRAMES_PER_COUNT) == 416
    clocked = ParDenseNet.paper(clocks=True)
    assert clocked.rates == [1] + [2] * 2 + [4] * 4 + [8] * 4 + [16] * 3 + [1]
    assert clocked.miniblock_executions(FRAMES_PER_COUNT) == 4 * 8 + 8 * 4 + 8 * 2 + 6 * 1 == 86


@pytest.mark.parametrize('clocks,compiled,expected', [(True, True, 86), (False, False, 416)])
def test_measured_executions_and_flops(clocks, compiled, expected):
    net = ParDenseNet(clocks=clocks, num_subnets=2, **TINY)
    counter = ExecutionCounter(net)
    step = tf.function(net.step) if compiled else net.step
    states = net.init_states(1, SIZE, SIZE)
    for x in frames(FRAMES_PER_COUNT):
        _, states = step(x, states, counter=counter)
    assert counter.miniblocks() == expected
    assert counter.as_dict() == net.unit_executions(FRAMES_PER_COUNT)
    # 16 frames is a whole number of clock periods: the measured FLOPs are 16 x the analytic average.
    assert counter.flops(SIZE, SIZE) == pytest.approx(FRAMES_PER_COUNT * net.flops_per_frame(SIZE, SIZE))
    if compiled:
        assert step.experimental_get_tracing_count() == 1


def test_clock_flop_saving_is_smaller_than_miniblock_saving():
    size = 224
    plain, clocked = ParDenseNet.paper(), ParDenseNet.paper(clocks=True)
    flop_speedup = plain.flops_per_frame(size, size) / clocked.flops_per_frame(size, size)
    assert 1.5 < flop_speedup < 416 / 86


def test_single_subnetwork_equals_per_frame_image_model():
    net = ParDenseNet(**TINY)
    states = net.init_states(2, SIZE, SIZE)
    for x in frames(3, batch=2):
        heat, states = net.step(x, states)
        np.testing.assert_array_equal(heat, net.per_frame(x))
    assert tuple(heat.shape) == (2, SIZE // 4, SIZE // 4, 17)
    assert net.latency == 0


def test_later_subnetworks_do_not_see_the_current_frame():
    net = ParDenseNet(num_subnets=3, **TINY)
    assert net.latency == 2 and net.subnet_of_unit[:6] == [0] * 5 + [1]
    clips = frames(4)
    perturbed = list(clips)
    perturbed[2] = clips[2] + 1.0
    runs = []
    for clip in (clips, perturbed):
        states, outs, all_states = net.init_states(1, SIZE, SIZE), [], []
        for x in clip:
            heat, states = net.step(x, states)
            outs.append(heat.numpy())
            all_states.append(states)
        runs.append((outs, all_states))
    (outs_a, states_a), (outs_b, states_b) = runs
    for t in range(3):
        np.testing.assert_array_equal(outs_a[t], outs_b[t])  # the output at t = 2 ignores frame 2
    assert not np.allclose(outs_a[3], outs_b[3])
    first_subnet = {f'{u.name}__out' for u, g in zip(net.pipeline_units, net.subnet_of_unit) if g == 0}
    for key in states_a[2]:
        same = np.array_equal(states_a[2][key], states_b[2][key])
        assert same == (key not in first_subnet), key


def test_temporal_filters_and_feedback():
    base = ParDenseNet(**TINY)
    variant = ParDenseNet(temporal_filters=True, feedback=True, clocks=True, num_subnets=2, **TINY)
    base.build((None, None, None, 3))
    variant.build((None, None, None, 3))
    assert variant.state_specs()['stem__out'] == (4, 8 + 17)
    assert variant.state_specs()['block1_unit0__prev0'] == (4, 8 + 17)
    states = variant.init_states(1, 36, 44)
    for x in frames(3, size=36):
        heat, states = variant.step(tf.image.resize(x, (36, 44)), states)
    assert tuple(heat.shape) == (1, 9, 11, 17)
    assert variant.count_params() > base.count_params()
    temporal_only = ParDenseNet(temporal_filters=True, **TINY)
    temporal_only.build((None, None, None, 3))
    # Temporal filters: the stem's 7x7 conv sees 3 more channels (x 8 filters); each dense unit's first
    # miniblock sees its input twice (1x1 conv to bottleneck 32, BN with 4 values per channel).
    unit_inputs = [base.state_specs()[f'{u.name}__out'][1] for u in base.pipeline_units[:-2]]
    assert temporal_only.count_params() - base.count_params() == 7 * 7 * 3 * 8 + sum(unit_inputs) * (32 + 4)
    feedback_only = ParDenseNet(feedback=True, **TINY)
    feedback_only.build((None, None, None, 3))
    # Dense connectivity (and pool-only transitions) pass the 17 feedback channels on to all 26 miniblocks
    # (1x1 conv to bottleneck 32, BN with 4 values per channel) and the 4 skip heads (BN, 3x3 conv to 4).
    assert feedback_only.count_params() - base.count_params() == 26 * 17 * (32 + 4) + 4 * 17 * (4 + 9 * 4)


def test_backpropagation_through_time_reaches_every_unit():
    keras.utils.set_random_seed(1)  # independent of the RNG state other tests leave behind
    net = ParDenseNet(clocks=True, **TINY)
    clip = tf.stack(frames(4), axis=1)
    with tf.GradientTape() as tape:
        heat = net.unroll(clip)['heatmaps']
        loss = latency_heatmap_loss(heat[:, -1:], tf.zeros_like(heat[:, -1:]), net.latency)  # last step only
    grads = tape.gradient(loss, net.trainable_variables)
    assert all(g is not None and np.all(np.isfinite(g)) for g in grads)
    # Block 4 (rate 16) executed only at t = 0: the last step reaches it through the held states.
    block4 = [g for v, g in zip(net.trainable_variables, grads) if 'block4_unit2/' in v.path]
    assert block4 and any(np.any(g != 0) for g in block4)


def test_mixed_precision_policy_keeps_float32_states():
    keras.mixed_precision.set_global_policy('mixed_bfloat16')
    try:
        net = ParDenseNet(num_subnets=2, clocks=True, feedback=True, **TINY)
        heat, states = net.step(frames(1)[0], net.init_states(1, SIZE, SIZE))
        heat, states = net.step(frames(1)[0], states)
    finally:
        keras.mixed_precision.set_global_policy('float32')
    assert net.pipeline_units[1].miniblocks[0][1].compute_dtype == 'bfloat16'
    assert heat.dtype == tf.float32 and all(v.dtype in (tf.float32, tf.int64) for v in states.values())


def test_config_round_trip():
    net = ParDenseNet(width=0.5, num_subnets=4, clocks=True, temporal_filters=True, feedback=True,
                      miniblocks_per_unit=3, name='pd')
    clone = ParDenseNet.from_config(net.get_config())
    assert clone.get_config() == net.get_config()
    assert clone.rates == net.rates and clone.name == 'pd'


def test_invalid_arguments():
    with pytest.raises(ValueError, match='width=0'):
        ParDenseNet(width=0)
    with pytest.raises(ValueError, match='num_subnets=15'):
        ParDenseNet(num_subnets=15)
    with pytest.raises(ValueError, match='block_sizes'):
        ParDenseNet(block_sizes=(4, 0))
    with pytest.raises(ValueError, match='clocks=1'):
        ParDenseNet(clocks=1)


BN_PARAMS_PER_CHANNEL = 4  # gamma, beta, moving mean and variance (keras count_params counts all four)


def table5_weights(fed_back=17):
    """Weights of appendix Table 5's rows as extracted (Carreira et al. 2018), kernel shapes as printed (temporal
    extent 1): 7x7 stem conv 64; blocks of 4, 8, 8, 6 miniblocks (1x1 bottleneck 256, 3x3 conv 64); after blocks
    1-3 a 1x1 transition to floor(c / 2) channels; a 1x1 skip conv of 16 on every block's output; 3x3 logits on
    concat(MaxPool3d_sp 64, 4 x 16). ``fed_back`` heatmap channels join the stem output. Returns (weights,
    transition widths)."""
    weights, channels, transitions = 7 * 7 * 3 * 64, 64 + fed_back, []
    for b, size in enumerate((4, 8, 8, 6)):
        for _ in range(size):
            weights += channels * 256 + 3 * 3 * 256 * 64
            channels += 64
        weights += channels * 16
        if b < 3:
            transitions.append(channels // 2)
            weights += channels * (channels // 2)
            channels //= 2
    return weights + 3 * 3 * (64 + 4 * 16) * 17, transitions


def test_paper_size_parameter_count_itemised_against_table_5():
    net = ParDenseNet.paper()
    net.build((None, None, None, 3))
    stem = 7 * 7 * 3 * 64 + BN_PARAMS_PER_CHANNEL * 64
    miniblocks, channels, block_outputs = 0, 64, []
    for size in (4, 8, 8, 6):  # no transition convolutions: the channels keep growing by 64 per miniblock
        for _ in range(size):
            miniblocks += BN_PARAMS_PER_CHANNEL * (channels + 256) + channels * 256 + 3 * 3 * 256 * 64
            channels += 64
        block_outputs.append(channels)
    assert block_outputs == [320, 832, 1344, 1728]
    head = sum(BN_PARAMS_PER_CHANNEL * c + 3 * 3 * c * 32 for c in block_outputs) + \
        BN_PARAMS_PER_CHANNEL * 128 + 3 * 3 * 128 * 17 + 17
    assert (stem, miniblocks, head) == (9_664, 9_701_120, 1_253_521)
    assert net.count_params() == stem + miniblocks + head == 10_964_305
    # Table 5 read literally: its transition widths 168, 340, 426 are floor(c / 2) only with 17 fed-back heatmap
    # channels on the stem output (without: 160, 336, 424), and its rows then hold 7,595,712 weights, 3,247,752
    # short of its stated total; temporal extent 2 on every conv but the first (the appendix text) gives
    # 15,182,016 instead. The stated total is not reachable from the rows as printed.
    weights, transitions = table5_weights(17)
    assert transitions == [168, 340, 426] and table5_weights(0)[1] == [160, 336, 424]
    assert weights == 7_595_712 and PAPER_PARAMS - weights == 3_247_752
    temporal = 2 * weights - 7 * 7 * 3 * 64
    assert temporal == 15_182_016
