"""Training pipelined video networks through time: BPTT loss, sequential-to-parallel distillation, evaluation.

Training goes through the one loop (:func:`posekit.train.loop.train`) with the ``loss_fn`` made by
:func:`make_bptt_loss`: a batch of clips (``frames`` (B, N, H, W, 3) float32 in [0, 1], ``heatmaps``
(B, N, h, w, K) Gaussian targets, from :func:`posekit.data.video.video_dataset`) is stepped through the
network from zero states with :func:`scan_unroll` (a ``tf.while_loop`` over ``network.step``: the traced
graph does not grow with N, and gradients flow back through time, through the states, to every step). The
output at step t is trained against the targets of frame t - ``network.latency`` with the weighted sigmoid
cross-entropy (keypoint pixels weighted 10) for t >= max(latency, ``first_supervised_step``).

Sequential-to-parallel distillation (Carreira et al., ECCV 2018, section 3.3; our reading, the paper's text was
not available to us): a trained *sequential* teacher of the same architecture (one subnetwork, no clocks)
provides the activations of m = 3 units; the student adds ``weight`` x the normalised squared distance
(``posekit.train.losses_video.distillation_loss``) between its activations and the teacher's. The teacher is
frozen and runs in inference mode. A student unit's output at step t was computed (at its last clock tick
t' <= t) from frame t' - d, where d is the unit's pipeline delay (``unit_latencies``); it is matched with the
teacher's activation for that frame, once per execution. The student starts from the teacher's weights
(:func:`init_from_teacher`), which is possible because both have the same units.
"""
import tensorflow as tf

from posekit.layers import pipeline
from posekit.train import losses_video

DEFAULT_DISTILL_UNITS = 3  # m, the number of matched layers (paper: 3)


# ------------------------------------------------------------------------------------------- stepping
def scan_unroll(network, frames, states=None, t=None, training=False, capture=()):
    """Steps ``network`` through frames (B, N, H, W, C) with a ``tf.while_loop`` (same results as
    ``network.unroll``; differentiable through time, and the traced graph does not grow with N).

    Args:
        network: a ``PipelinedNetwork``.
        frames: float32 (batch, N, height, width, channels) with a static N.
        states: initial states (default: zeros); t: index of the first step (default ``states['t']``, 0 for
            zero states).
        training: forwarded to the units.
        capture: names of units whose outputs to return for every step.
    Returns:
        dict: ``heatmaps`` (B, N, h, w, K) logits (float32), ``activations`` {unit: (B, N, ...)}, ``states``.
    """
    frames = tf.convert_to_tensor(frames, tf.float32)
    if frames.shape.rank != 5 or frames.shape[1] is None:
        raise ValueError(f'frames must be (batch, N, height, width, channels) with a static N; received shape '
                         f'{tuple(frames.shape)}')
    keys = [network.output_state_key(name) for name in capture]
    n_steps = int(frames.shape[1])
    if states is None:
        dynamic = tf.shape(frames)
        dims = [frames.shape[d] if frames.shape[d] is not None else dynamic[d] for d in (0, 2, 3)]
        states = network.init_states(*dims)
    states = dict(states)
    if t is not None:
        states[pipeline.STEP_KEY] = tf.cast(t, tf.int64)
    time_major = tf.transpose(frames, [1, 0, 2, 3, 4])
    outputs = [tf.TensorArray(tf.float32, size=n_steps) for _ in range(1 + len(keys))]

    def body(k, states, outputs):
        heatmaps, states = network.step(time_major[k], states, training=training)
        values = [tf.cast(heatmaps, tf.float32)] + [states[key] for key in keys]
        return k + 1, states, [ta.write(k, v) for ta, v in zip(outputs, values)]

    _, states, outputs = tf.while_loop(lambda k, *_: k < n_steps, body, (tf.constant(0), states, outputs),
                                       parallel_iterations=1)
    stacked = []
    for ta in outputs:
        value = ta.stack()  # (N, B, ...)
        stacked.append(tf.transpose(value, [1, 0] + list(range(2, value.shape.rank))))
    return {'heatmaps': stacked[0], 'activations': dict(zip(capture, stacked[1:])), 'states': states}


# ------------------------------------------------------------------------------------- distillation
def default_distill_units(network, m=DEFAULT_DISTILL_UNITS):
    """Names of m units evenly spaced along the chain before the head (excluding the first unit, whose
    output carries the feedback channels): units round((j + 1) * n / (m + 1)) for j < m, n = units - 1."""
    n = len(network.pipeline_units) - 1
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= n - 1:
        raise ValueError(f'm must be an int in [1, {n - 1}]; received m={m!r}')
    indices = sorted({max(1, int(round((j + 1) * n / (m + 1)))) for j in range(m)})
    return [network.pipeline_units[i].name for i in indices]


def distillation_schedule(network, units, n_steps, first_step=0):
    """{unit: (student steps, teacher frames)}: the steps in [first_step, n_steps) at which the unit executes
    (clock tick) and the frame its output was computed from (step - its pipeline delay, >= 0)."""
    names = [u.name for u in network.pipeline_units]
    delays = network.unit_latencies()
    schedule = {}
    for name in units:
        if name not in names:
            raise ValueError(f'units must name units of the network among {names}; received {name!r}')
        i = names.index(name)
        steps = [t for t in range(first_step, n_steps) if t % network.rates[i] == 0 and t - delays[i] >= 0]
        schedule[name] = (steps, [t - delays[i] for t in steps])
    return schedule


def check_teacher(teacher, student):
    """ValueError unless teacher is a sequential per-frame model (1 subnetwork, every rate 1) with the student's
    number of units."""
    if teacher.num_subnets != 1 or any(r != 1 for r in teacher.rates):
        raise ValueError(f'the teacher must be sequential (num_subnets=1, no clocks); received num_subnets='
                         f'{teacher.num_subnets}, rates={teacher.rates}')
    if [u.name for u in teacher.pipeline_units] != [u.name for u in student.pipeline_units]:
        raise ValueError('teacher and student must have the same units; received '
                         f'{[u.name for u in teacher.pipeline_units]} and {[u.name for u in student.pipeline_units]}')


def distillation_term(student, teacher, frames, student_activations, units, weight, first_step=0):
    """weight x sum over units of the mean normalised squared distance between the student's activations
    (B, N - first_step, ...) at steps first_step.. and the teacher's (frozen, inference mode) for the frames
    they were computed from. Each matched (example, execution) is normalised separately. A feedback student is
    compared on the teacher's channels only (its fed-back heatmap channels, ``feedback_channels``, are dropped)."""
    n_steps = int(frames.shape[1])
    teacher_acts = scan_unroll(teacher, frames, training=False, capture=units)['activations']
    schedule = distillation_schedule(student, units, n_steps, first_step)
    students, teachers = [], []
    for name in units:
        steps, source_frames = schedule[name]
        if not steps:
            continue
        s = tf.gather(student_activations[name], [t - first_step for t in steps], axis=1)
        t = tf.gather(teacher_acts[name], source_frames, axis=1)
        # A feedback student's activations also carry the fed-back heatmaps, which the teacher has not: compare
        # the teacher's channels only.
        fed_back = student.feedback_channels(name, int(s.shape[-1])) if not teacher.feedback else None
        if fed_back is not None:
            s = tf.concat([s[..., :fed_back[0]], s[..., fed_back[1]:]], axis=-1)
        students.append(tf.reshape(s, tf.concat([[-1], tf.shape(s)[2:]], 0)))
        teachers.append(tf.reshape(t, tf.concat([[-1], tf.shape(t)[2:]], 0)))
    if not students:
        return tf.constant(0.0)
    return losses_video.distillation_loss(students, teachers, weight)


def init_from_teacher(student, teacher, partial=False):
    """Copies the teacher's weights into the student (same variable order); returns the number copied.

    With ``partial`` a variable whose shape differs (e.g. a temporal filter's doubled input channels) keeps
    its initial value; otherwise every shape must match (ValueError listing the first mismatches).
    """
    s_vars, t_vars = student.weights, teacher.weights
    if len(s_vars) != len(t_vars):
        raise ValueError(f'student and teacher have {len(s_vars)} and {len(t_vars)} weights; they must have the '
                         'same architecture')
    mismatched = [(s.path, tuple(s.shape), tuple(t.shape)) for s, t in zip(s_vars, t_vars)
                  if tuple(s.shape) != tuple(t.shape)]
    if mismatched and not partial:
        raise ValueError(f'{len(mismatched)} weights differ in shape (pass partial=True to skip them), e.g. '
                         f'{mismatched[:3]}')
    copied = 0
    for s, t in zip(s_vars, t_vars):
        if tuple(s.shape) == tuple(t.shape):
            s.assign(t)
            copied += 1
    return copied


# ------------------------------------------------------------------------------------------- losses
def supervised_slices(n_steps, latency, first_supervised_step=0):
    """(first output step, first target frame) of the supervised pairs: outputs at steps
    s0 = max(latency, first_supervised_step) .. n_steps - 1 against frames s0 - latency .. n_steps - 1 - latency."""
    s0 = max(latency, first_supervised_step)
    if s0 >= n_steps:
        raise ValueError(f'no supervised step: clips of {n_steps} frames, latency {latency}, '
                         f'first_supervised_step {first_supervised_step}; use longer clips')
    return s0, s0 - latency


def make_bptt_loss(latency, first_supervised_step=0, positive_weight=losses_video.DEFAULT_POSITIVE_WEIGHT,
                   teacher=None, distill_units=(), distill_weight=1.0, burn_in=0):
    """loss_fn(model, batch, step, training) -> (loss, metrics) for :func:`posekit.train.loop.train`.

    The model (a ``PipelinedNetwork`` of the given ``latency``) is stepped through ``batch['frames']``
    (B, N, H, W, 3) from zero states; loss = weighted sigmoid cross-entropy of the outputs at steps
    t >= max(latency, first_supervised_step, burn_in) against ``batch['heatmaps']`` of frame t - latency (mean
    over elements), plus, with a ``teacher``, ``distill_weight`` x the distillation term over ``distill_units``
    (see :func:`distillation_term`) over the same steps. Metrics: ``task_loss`` and ``distill_loss``.

    ``burn_in``: the first ``burn_in`` frames only advance the states, without gradients (their states enter the
    rest of the clip as constants): use ``PipelinedNetwork.fill_steps()`` to train past the pipeline-filling
    transient without back-propagating through it.
    """
    if isinstance(latency, bool) or not isinstance(latency, int) or latency < 0:
        raise ValueError(f'latency must be an int >= 0; received latency={latency!r}')
    if isinstance(burn_in, bool) or not isinstance(burn_in, int) or burn_in < 0:
        raise ValueError(f'burn_in must be an int >= 0; received burn_in={burn_in!r}')
    if teacher is not None and not distill_units:
        raise ValueError(f'distill_units must name the matched units when a teacher is given; received '
                         f'distill_units={distill_units!r}')
    if not distill_weight >= 0:
        raise ValueError(f'distill_weight must be >= 0; received distill_weight={distill_weight!r}')
    distill_units = tuple(distill_units)

    def loss_fn(model, batch, step, training):
        frames, targets = batch['frames'], batch['heatmaps']
        n_steps = int(frames.shape[1])
        s0, f0 = supervised_slices(n_steps, latency, max(first_supervised_step, burn_in))
        capture = distill_units if teacher is not None else ()
        states = None
        if burn_in:
            warm = scan_unroll(model, frames[:, :burn_in], training=training)['states']
            states = {k: tf.stop_gradient(v) for k, v in warm.items()}
        out = scan_unroll(model, frames[:, burn_in:], states=states, training=training, capture=capture)
        logits = tf.cast(out['heatmaps'], tf.float32)  # steps burn_in .. n_steps - 1
        task = losses_video.heatmap_loss(logits[:, s0 - burn_in:], targets[:, f0:n_steps - latency], positive_weight)
        metrics = {'task_loss': task}
        loss = task
        if teacher is not None:
            check_teacher(teacher, model)
            distill = distillation_term(model, teacher, frames, out['activations'], distill_units, distill_weight,
                                        first_step=burn_in)
            metrics['distill_loss'] = distill
            loss = loss + distill
        return loss, metrics

    return loss_fn
