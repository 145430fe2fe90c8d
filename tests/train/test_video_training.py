"""Tests of posekit.train.video: the while-loop unroll, the BPTT loss, distillation wiring and evaluation."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from posekit.models.par_densenet import ParDenseNet
from posekit.train import losses_video, loop
from posekit.train import video as tv

SIZE = 32  # px
TINY = dict(width=0.125, block_sizes=(1, 1, 1, 1), miniblocks_per_unit=1)  # 5 units + head


def tiny(**kwargs):
    keras.utils.set_random_seed(0)
    network = ParDenseNet(**TINY, **kwargs)
    network.build((None, None, None, 3))
    return network


def clip(batch=2, steps=6, seed=0):
    return tf.random.stateless_uniform((batch, steps, SIZE, SIZE, 3), seed=[seed, 1])


def test_scan_unroll_matches_python_unroll_eagerly_and_compiled():
    network = tiny(num_subnets=3, clocks=True, temporal_filters=True, feedback=True)
    frames = clip()
    expected = network.unroll(frames, capture=['block2_unit0', 'block4_unit0'])
    for fn in (lambda f: tv.scan_unroll(network, f, capture=['block2_unit0', 'block4_unit0']),
               tf.function(lambda f: tv.scan_unroll(network, f, capture=['block2_unit0', 'block4_unit0']))):
        got = fn(frames)
        np.testing.assert_allclose(got['heatmaps'], expected['heatmaps'], atol=1e-5)
        for name in ('block2_unit0', 'block4_unit0'):
            np.testing.assert_allclose(got['activations'][name], expected['activations'][name], atol=1e-5)
        assert int(got['states']['t']) == 6


def test_bptt_loss_is_the_latency_aligned_weighted_cross_entropy_and_reaches_the_stem():
    network = tiny(num_subnets=4)
    assert network.latency == 3
    frames = clip(steps=5)
    targets = tf.random.stateless_uniform((2, 5, SIZE // 4, SIZE // 4, 17), seed=[2, 3])
    loss_fn = tv.make_bptt_loss(network.latency)
    with tf.GradientTape() as tape:
        loss, metrics = loss_fn(network, {'frames': frames, 'heatmaps': targets}, tf.constant(0, tf.int64), True)
    logits = network.unroll(frames, training=True)['heatmaps']
    expected = losses_video.latency_heatmap_loss(logits, targets, 3)
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5)
    np.testing.assert_allclose(float(metrics['task_loss']), float(expected), rtol=1e-5)
    stem_kernel = network.pipeline_units[0].conv.kernel
    grad = tape.gradient(loss, stem_kernel)  # the stem's output reaches the head 3 steps later (through time)
    assert grad is not None and float(tf.reduce_max(tf.abs(grad))) > 0
    # first_supervised_step drops the earlier outputs.
    later = tv.make_bptt_loss(3, first_supervised_step=4)(network, {'frames': frames, 'heatmaps': targets}, 0,
                                                          True)[0]
    logits = network.unroll(frames, training=True)['heatmaps']
    np.testing.assert_allclose(float(later), float(losses_video.heatmap_loss(logits[:, 4:], targets[:, 1:2])), rtol=1e-5)


@pytest.mark.parametrize('kwargs', [dict(num_subnets=2), dict(num_subnets=5, clocks=True),
                                    dict(num_subnets=3, clocks=True, temporal_filters=True)],
                         ids=['2_subnets', '5_subnets_clocks', '3_subnets_clocks_temporal'])
def test_fill_steps_is_the_first_output_independent_of_the_initial_states(kwargs):
    network = tiny(**kwargs)
    fill = network.fill_steps()
    if not kwargs.get('clocks') and not kwargs.get('temporal_filters'):
        assert fill == network.latency
    frames = clip(batch=1, steps=fill + 3)
    zeros = network.init_states(1, SIZE, SIZE)
    noise = {k: v if k == 't' else tf.random.stateless_normal(tf.shape(v), seed=[7, i])
             for i, (k, v) in enumerate(zeros.items())}
    a = network.unroll(frames, states=zeros)['heatmaps'].numpy()
    b = network.unroll(frames, states=noise)['heatmaps'].numpy()
    change = np.abs(a - b).reshape(a.shape[0], a.shape[1], -1).max(axis=(0, 2))  # per step
    assert change[fill - 1] > 0  # the last step of the transient still depends on the initial states
    assert np.all(change[fill:] == 0)  # from fill_steps on the output is the frames' alone, bit for bit


def test_burn_in_gives_the_same_loss_without_gradients_through_the_burn_in_frames():
    network = tiny(num_subnets=3, clocks=True)
    frames = clip(steps=7)
    targets = tf.random.stateless_uniform((2, 7, SIZE // 4, SIZE // 4, 17), seed=[4, 5])
    batch = {'frames': frames, 'heatmaps': targets}
    losses_and_grads = []
    for loss_fn in (tv.make_bptt_loss(2, first_supervised_step=4), tv.make_bptt_loss(2, burn_in=4)):
        with tf.GradientTape() as tape:
            tape.watch(frames)
            loss, _ = loss_fn(network, batch, 0, False)
        losses_and_grads.append((float(loss), tape.gradient(loss, frames).numpy()))
    (plain, plain_grad), (burnt, burnt_grad) = losses_and_grads
    np.testing.assert_allclose(burnt, plain, rtol=1e-5)  # the same outputs are supervised against the same frames
    assert np.abs(plain_grad[:, :4]).max() > 0  # through time, the supervised outputs depend on earlier frames...
    assert np.abs(burnt_grad[:, :4]).max() == 0  # ...but the burn-in frames get no gradient
    np.testing.assert_allclose(burnt_grad[:, 4:], plain_grad[:, 4:], atol=1e-6 + 1e-4 * np.abs(plain_grad).max())
    with pytest.raises(ValueError, match='burn_in must be an int >= 0'):
        tv.make_bptt_loss(2, burn_in=-1)


def test_distillation_schedule_follows_clocks_and_delays():
    network = tiny(num_subnets=5, clocks=True)  # one unit per subnetwork: delays 0, 1, 2, 3, 4
    assert network.unit_latencies()[:5] == [0, 1, 2, 3, 4] and network.rates[:5] == [1, 2, 4, 8, 16]
    schedule = tv.distillation_schedule(network, ['block1_unit0', 'block2_unit0'], n_steps=10, first_step=1)
    assert schedule['block1_unit0'] == ([2, 4, 6, 8], [1, 3, 5, 7])  # executes at even steps, sees frame t - 1
    assert schedule['block2_unit0'] == ([4, 8], [2, 6])
    assert tv.default_distill_units(network) == ['block1_unit0', 'block2_unit0', 'block4_unit0']


def test_distillation_vanishes_for_a_student_with_the_teachers_weights_on_a_still_video():
    teacher = tiny()
    student = tiny(num_subnets=5)
    assert tv.init_from_teacher(student, teacher) == len(student.weights)
    still = tf.tile(clip(steps=1), [1, 8, 1, 1, 1])  # the same frame 8 times: delays do not matter
    units = tv.default_distill_units(student)
    acts = tv.scan_unroll(student, still, capture=units)['activations']
    first = 5  # after the pipeline has filled (largest delay 4)
    late = {k: v[:, first:] for k, v in acts.items()}
    assert float(tv.distillation_term(student, teacher, still, late, units, 1.0, first)) < 1e-8
    other = tiny(num_subnets=5)
    for v in other.trainable_weights:
        v.assign(v * 1.5 + 0.01)
    acts = tv.scan_unroll(other, still, capture=units)['activations']
    assert float(tv.distillation_term(other, teacher, still, {k: v[:, first:] for k, v in acts.items()}, units,
                                      1.0, first)) > 1e-3


def test_distillation_of_a_feedback_student_compares_the_teachers_channels_only():
    # Regression: the default preset's densenet_s4_feedback crashed in the distance to the teacher ((.., 161)
    # vs (.., 144) channels: the 17 fed-back heatmaps ride along the dense concatenation).
    teacher = tiny()
    student = tiny(num_subnets=5, feedback=True)
    stem = student.pipeline_units[0].channels
    assert student.feedback_channels('stem', stem + 17) == (stem, stem + 17)
    assert student.feedback_channels('block3_unit0', 99) == (stem, stem + 17)
    assert student.feedback_channels('head', 17) is None and teacher.feedback_channels('block3_unit0', 99) is None
    tv.init_from_teacher(student, teacher, partial=True)
    # Zero the weights reading the fed-back channels (rows [stem, stem + 17) of every 1x1 bottleneck kernel):
    # the student then computes the teacher's features on the teacher's channels.
    zeroed = 0
    for v, t in zip(student.weights, teacher.weights):  # same order (init_from_teacher)
        if tuple(v.shape) != tuple(t.shape) and v.path.endswith('conv1/kernel'):
            k = t.numpy()
            v.assign(np.concatenate([k[:, :, :stem], np.zeros((1, 1, 17, k.shape[3]), k.dtype), k[:, :, stem:]], 2))
            zeroed += 1
    assert zeroed == 4  # one miniblock per unit in 4 dense units
    still = tf.tile(clip(steps=1), [1, 8, 1, 1, 1])
    units = tv.default_distill_units(student)
    acts = tv.scan_unroll(student, still, capture=units)['activations']
    assert int(acts[units[0]].shape[-1]) == int(tv.scan_unroll(teacher, still, capture=units)['activations'][
        units[0]].shape[-1]) + 17
    late = {k: v[:, 5:] for k, v in acts.items()}
    assert float(tv.distillation_term(student, teacher, still, late, units, 1.0, 5)) < 1e-8
    for v, t in zip(student.weights, teacher.weights):  # the student now reads the fed-back heatmaps
        if v.path.endswith('conv1/kernel') and tuple(v.shape) != tuple(t.shape):
            v.assign(v + 0.05)
    acts = tv.scan_unroll(student, still, capture=units)['activations']
    assert float(tv.distillation_term(student, teacher, still, {k: v[:, 5:] for k, v in acts.items()}, units,
                                      1.0, 5)) > 1e-4


def test_training_with_distillation_through_the_loop_keeps_the_teacher_frozen():
    teacher = tiny()
    student = tiny(num_subnets=2)
    tv.init_from_teacher(student, teacher)
    before = [w.numpy().copy() for w in teacher.weights]
    units = tv.default_distill_units(student)
    loss_fn = tv.make_bptt_loss(student.latency, teacher=teacher, distill_units=units, distill_weight=0.5)
    frames = clip(steps=3)
    batch = {'frames': frames, 'heatmaps': tf.random.stateless_uniform((2, 3, 8, 8, 17), seed=[4, 4])}
    result = loop.train(student, loss_fn, lambda start: [batch] * (3 - start), keras.optimizers.Adam(1e-3),
                        loop.TrainConfig(total_steps=3, log_every=1, progress=False, precision='float32'))
    history = result.history
    assert len(history['distill_loss']) == 3 and all(np.isfinite(history['loss']))
    np.testing.assert_allclose(history['loss'], np.add(history['task_loss'], history['distill_loss']), rtol=1e-5)
    for w, b in zip(teacher.weights, before):
        np.testing.assert_array_equal(w.numpy(), b)
    assert any(not np.array_equal(s.numpy(), t) for s, t in zip(student.trainable_weights, before))


def test_init_from_teacher_checks_shapes():
    teacher, temporal = tiny(), tiny(temporal_filters=True)
    with pytest.raises(ValueError, match='weights differ in shape'):
        tv.init_from_teacher(temporal, teacher)
    copied = tv.init_from_teacher(temporal, teacher, partial=True)
    assert 0 < copied < len(temporal.weights)


def test_invalid_arguments():
    network = tiny(num_subnets=2)
    with pytest.raises(ValueError, match='latency must be an int >= 0; received latency=-1'):
        tv.make_bptt_loss(-1)
    with pytest.raises(ValueError, match='distill_units must name the matched units'):
        tv.make_bptt_loss(1, teacher=tiny())
    with pytest.raises(ValueError, match='the teacher must be sequential'):
        tv.check_teacher(network, tiny())
    with pytest.raises(ValueError, match='no supervised step'):
        tv.supervised_slices(3, latency=3)
    with pytest.raises(ValueError, match='m must be an int in \\[1, 4\\]; received m=5'):
        tv.default_distill_units(network, 5)
    with pytest.raises(ValueError, match='units must name units of the network'):
        tv.distillation_schedule(network, ['nope'], 4)
    with pytest.raises(ValueError, match='static N'):
        tv.scan_unroll(network, tf.zeros((1, SIZE, SIZE, 3)))
