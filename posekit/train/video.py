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
(``posekit.layers.pipeline.distillation_loss``) between its activations and the teacher's. The teacher is
frozen and runs in inference mode. A student unit's output at step t was computed (at its last clock tick
t' <= t) from frame t' - d, where d is the unit's pipeline delay (``unit_latencies``); it is matched with the
teacher's activation for that frame, once per execution. The student starts from the teacher's weights
(:func:`init_from_teacher`), which is possible because both have the same units.
"""
import numpy as np
import tensorflow as tf

from posekit.layers import pipeline

DEFAULT_DISTILL_UNITS = 3  # m, the number of matched layers (paper: 3)
PCK_FRACTION = 0.05  # PCK threshold as a fraction of the frame side (px); 3.2 px at 64 px
_LOGIT_CLIP = 1e-4  # mean heatmap probabilities are clipped to [eps, 1 - eps] before the logit


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
    they were computed from. Each matched (example, execution) is normalised separately."""
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
        students.append(tf.reshape(s, tf.concat([[-1], tf.shape(s)[2:]], 0)))
        teachers.append(tf.reshape(t, tf.concat([[-1], tf.shape(t)[2:]], 0)))
    if not students:
        return tf.constant(0.0)
    return pipeline.distillation_loss(students, teachers, weight)


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


def make_bptt_loss(latency, first_supervised_step=0, positive_weight=pipeline.DEFAULT_POSITIVE_WEIGHT,
                   teacher=None, distill_units=(), distill_weight=1.0):
    """loss_fn(model, batch, step, training) -> (loss, metrics) for :func:`posekit.train.loop.train`.

    The model (a ``PipelinedNetwork`` of the given ``latency``) is stepped through ``batch['frames']``
    (B, N, H, W, 3) from zero states; loss = weighted sigmoid cross-entropy of the outputs at steps
    t >= max(latency, first_supervised_step) against ``batch['heatmaps']`` of frame t - latency (mean over
    elements), plus, with a ``teacher``, ``distill_weight`` x the distillation term over ``distill_units``
    (see :func:`distillation_term`). Metrics: ``task_loss`` and ``distill_loss``.
    """
    if isinstance(latency, bool) or not isinstance(latency, int) or latency < 0:
        raise ValueError(f'latency must be an int >= 0; received latency={latency!r}')
    if teacher is not None and not distill_units:
        raise ValueError(f'distill_units must name the matched units when a teacher is given; received '
                         f'distill_units={distill_units!r}')
    if not distill_weight >= 0:
        raise ValueError(f'distill_weight must be >= 0; received distill_weight={distill_weight!r}')
    distill_units = tuple(distill_units)

    def loss_fn(model, batch, step, training):
        frames, targets = batch['frames'], batch['heatmaps']
        n_steps = int(frames.shape[1])
        s0, f0 = supervised_slices(n_steps, latency, first_supervised_step)
        capture = distill_units if teacher is not None else ()
        out = scan_unroll(model, frames, training=training, capture=capture)
        logits = tf.cast(out['heatmaps'], tf.float32)
        task = pipeline.heatmap_loss(logits[:, s0:], targets[:, f0:n_steps - latency], positive_weight)
        metrics = {'task_loss': task}
        loss = task
        if teacher is not None:
            check_teacher(teacher, model)
            distill = distillation_term(model, teacher, frames, out['activations'], distill_units, distill_weight)
            metrics['distill_loss'] = distill
            loss = loss + distill
        return loss, metrics

    return loss_fn


# ----------------------------------------------------------------------------------------- evaluation
def mean_heatmap_logits(heatmaps):
    """Logits of the mean target heatmap (h, w, K) over all leading axes: the trivial constant predictor."""
    mean = np.mean(np.asarray(heatmaps, np.float64).reshape((-1,) + np.shape(heatmaps)[-3:]), axis=0)
    mean = np.clip(mean, _LOGIT_CLIP, 1 - _LOGIT_CLIP)
    return np.log(mean / (1 - mean)).astype(np.float32)


def heatmap_argmax(logits, stride):
    """Keypoint positions (..., K, 2) px (x, y) from heatmaps (..., h, w, K): the argmax cell's centre (cell
    (i, j) is centred at (j, i) x stride + (stride - 1) / 2 px, as in ``keypoint_heatmaps``) moved a quarter
    cell towards the higher of its two neighbours along x and along y (no shift on the map's border)."""
    logits = np.asarray(logits, np.float32)
    h, w, k = logits.shape[-3:]
    grid = np.moveaxis(logits, -1, -3)  # (..., K, h, w)
    index = grid.reshape(grid.shape[:-2] + (h * w,)).argmax(-1)
    rows, cols = index // w, index % w
    padded = np.pad(grid, [(0, 0)] * (grid.ndim - 2) + [(1, 1), (1, 1)], constant_values=np.nan)

    def value(r, c):  # padded coordinates
        flat = padded.reshape(padded.shape[:-2] + (-1,))
        return np.take_along_axis(flat, (r * (w + 2) + c)[..., None], -1)[..., 0]

    r, c = rows + 1, cols + 1
    dx = 0.25 * np.sign(value(r, c + 1) - value(r, c - 1))
    dy = 0.25 * np.sign(value(r + 1, c) - value(r - 1, c))
    dx, dy = np.nan_to_num(dx), np.nan_to_num(dy)  # no shift at the border (a neighbour is missing)
    x = (cols + dx) * stride + (stride - 1) / 2.0
    y = (rows + dy) * stride + (stride - 1) / 2.0
    return np.stack([x, y], axis=-1).astype(np.float32)


def pck(pred, coords2d, valid, threshold):
    """Fraction of valid keypoints within ``threshold`` px of the truth: pred, coords2d (..., K, 2) px; valid
    (..., K). nan if none is valid."""
    valid = np.asarray(valid, bool)
    if not valid.any():
        return float('nan')
    dist = np.linalg.norm(np.asarray(pred) - np.asarray(coords2d), axis=-1)
    return float(np.mean(dist[valid] <= threshold))


def evaluate_stream(network, batches, latency, first_scored_step, positive_weight=pipeline.DEFAULT_POSITIVE_WEIGHT,
                    stride=None, constant_logits=None, teacher=None, distill_units=()):
    """Test metrics of a network streaming through clips from zero states (inference mode).

    Args:
        network: the ``PipelinedNetwork`` (or None with ``constant_logits``: the constant predictor).
        batches: iterable of batch dicts (``frames``, ``heatmaps``, ``coords2d``, ``joint_valid``), e.g. the
            test clips in fixed order.
        latency: the network's latency; outputs at steps t >= max(latency, first_scored_step) are scored against
            frame t - latency.
        stride: heatmap stride (px per cell) for PCK; constant_logits: (h, w, K) logits of a constant predictor.
        teacher, distill_units: optionally a sequential teacher and unit names: also report the mean normalised
            squared distance of the network's activations to the teacher's (per unit, execution and example,
            for the frame each activation was computed from) over steps >= first_scored_step.
    Returns:
        dict: ``test_loss`` (weighted sigmoid cross-entropy, mean over scored elements), ``pck`` (fraction of
        in-view keypoints whose heatmap argmax is within PCK_FRACTION x frame side px), ``scored_steps`` and, with a
        teacher, ``distance_to_teacher``.
    """
    losses, weights, distances, clip_counts, hits, counts, scored = [], [], [], [], 0.0, 0, 0
    run = None
    units = tuple(distill_units) if teacher is not None else ()
    if network is not None:
        def forward(frames):
            out = scan_unroll(network, frames, training=False, capture=units)
            if not units:
                return out['heatmaps'], tf.constant(0.0)
            acts = {k: v[:, first_scored_step:] for k, v in out['activations'].items()}
            return out['heatmaps'], distillation_term(network, teacher, frames, acts, units, 1.0 / len(units),
                                                      first_scored_step)
        run = tf.function(forward, autograph=False)
    for batch in batches:
        frames = tf.convert_to_tensor(batch['frames'])
        n_steps, size = int(frames.shape[1]), int(frames.shape[2])
        s0, f0 = supervised_slices(n_steps, latency, first_scored_step)
        targets = np.asarray(batch['heatmaps'])[:, f0:n_steps - latency]
        if run is not None:
            logits, distance = run(frames)
            logits = logits.numpy()[:, s0:]
            distances.append(float(distance))
            clip_counts.append(int(frames.shape[0]))
        else:
            logits = np.broadcast_to(constant_logits, targets.shape)
        losses.append(float(pipeline.heatmap_loss(tf.constant(logits), tf.constant(targets), positive_weight)))
        weights.append(targets.size)
        coords = np.asarray(batch['coords2d'])[:, f0:n_steps - latency]
        valid = np.asarray(batch['joint_valid'])[:, f0:n_steps - latency]
        pred = heatmap_argmax(logits, stride if stride is not None else size // logits.shape[-2])
        dist = np.linalg.norm(pred - coords, axis=-1)
        hits += float(np.sum((dist <= PCK_FRACTION * size) & valid))
        counts += int(valid.sum())
        scored = logits.shape[1]
    result = {'test_loss': float(np.average(losses, weights=weights)),
              'pck': hits / counts if counts else float('nan'), 'scored_steps': scored}
    if units:
        result['distance_to_teacher'] = float(np.average(distances, weights=clip_counts))
    return result
