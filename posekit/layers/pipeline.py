"""Depth-parallel pipelining with multi-rate clocks (Carreira et al., "Massively Parallel Video Networks", ECCV 2018).

A video network is a chain of *units* (Keras layers) stepped once per frame with explicit state:

- **subnetworks**: the units are split into ``num_subnets`` groups of consecutive units (Fig. 3). All groups
  run in parallel at every step, so a unit reads a unit of the *same* group through a sequential link (its
  output of this step) and a unit of an *earlier* group through a parallel link (its output of the previous
  step, read from the state). With one group the network is the sequential per-frame image model; with k
  groups the output at step t sees frame t - (k - 1): the prediction latency is the number of parallel links
  on the longest path (``PipelinedNetwork.latency``), and a network trained for it predicts ahead.
- **clocks**: unit i has a rate r_i; it computes at steps with ``t mod r_i == 0`` and otherwise reuses its
  last output without executing (``tf.cond`` on the step tensor ``t``: the skipped branch costs nothing).
- **temporal filters** (``unit.temporal``): the unit also receives its inputs of its previous execution
  (kept in the state) and filters both, a temporal kernel of size 2.
- **feedback**: the previous step's heatmaps (sigmoid of the head's logits, resized) are concatenated to the
  output of the first unit (the stem, i.e. after the first convolution).

The state is a flat dict of named tensors (so it exports): ``'<unit>__out'`` (last output of every unit),
``'<unit>__prev<j>'`` (previous input j of temporal units), ``'<unit>__<name>'`` (a unit's own state, e.g. the
history of causal 3D convolutions) and ``'t'`` (int64 scalar, the step index). Every spatial state tensor is
``(batch, ceil(height / stride), ceil(width / stride), channels)`` with a stride and channel count fixed by the
network (``state_specs()``).

Also here: ``SkipHeatmapHead`` (the heatmap head unit shared by Par-DenseNet and Par-Inception),
``ExecutionCounter`` (counts executions inside compiled steps), and pure loss functions for training through
time: latency alignment, weighted sigmoid cross-entropy on heatmaps, and the normalised squared distance
used for sequential-to-parallel distillation (section 3.3).
"""
import keras
import numpy as np
import tensorflow as tf

STEP_KEY = 't'
FRAME_SOURCE = -1  # source index meaning "the input frame"
FLOPS_PER_MULTIPLY_ADD = 2
_PROBE_SIZE = 64  # px; side of the zero frame pushed through the units to build them and infer state shapes
_OUT = 'out'
_PREV = 'prev'
_SEP = '__'


def ceil_div(size, stride):
    """ceil(size / stride) for ints or integer tensors: the spatial size after 'same' ops of total stride."""
    return (size + stride - 1) // stride


def conv_flops(out_height, out_width, conv):
    """FLOPs (2 per multiply-add) of a built Keras conv layer producing an out_height x out_width map."""
    return FLOPS_PER_MULTIPLY_ADD * out_height * out_width * int(np.prod(conv.kernel.shape))


def partition_units(num_units, num_subnets):
    """Subnetwork index of each of num_units consecutive units split into num_subnets contiguous groups.

    Group sizes differ by at most one; the earlier groups take the extra units. Example:
    ``partition_units(14, 4) == [0]*4 + [1]*4 + [2]*3 + [3]*3``.
    """
    if isinstance(num_subnets, bool) or not isinstance(num_subnets, int) or not 1 <= num_subnets <= num_units:
        raise ValueError(f'num_subnets must be an int in [1, {num_units}] (the number of units before the '
                         f'head); received num_subnets={num_subnets!r}')
    base, extra = divmod(num_units, num_subnets)
    groups = []
    for g in range(num_subnets):
        groups += [g] * (base + (1 if g < extra else 0))
    return groups


def executions(rate, num_frames, start=0):
    """How many of the steps start, ..., start + num_frames - 1 satisfy ``t mod rate == 0``."""
    return len([t for t in range(start, start + num_frames) if t % rate == 0])


def _sanitize(name):
    return ''.join(c if c.isalnum() or c == '_' else '_' for c in name)


class PipelineUnit(keras.layers.Layer):
    """Base class of the units of a ``PipelinedNetwork``.

    Subclasses implement ``call(inputs, state=None, previous_inputs=None, training=None) -> (outputs, new_state)``:

    - ``inputs``: one tensor ``(batch, height, width, channels)`` (float32; its stride w.r.t. the frame is
      fixed by the network) or, for a unit with several sources, a list of such tensors;
    - ``previous_inputs``: when ``temporal`` is True, the inputs of the unit's previous execution (same
      structure as ``inputs``, as a list), zeros at the start; otherwise None;
    - ``state``: dict of the unit's own state tensors (``(batch, h, w, c)``) or None for zeros;
      ``new_state`` has the same keys (empty dict for stateless units);
    - ``outputs``: one tensor ``(batch, h, w, c)``.

    and ``flops(input_sizes)``: FLOPs of one execution, ``input_sizes`` a list of ``(height, width)`` in
    pixels of each input.

    Args:
        temporal: bool; temporal filters of size 2 (the unit sees its inputs at its current and previous execution).
        num_miniblocks: int >= 0; miniblocks in the unit (counted by ``PipelinedNetwork.miniblock_executions``).
        depth: int >= 1; convolutions on the unit's longest sequential path (for ``sequential_depth_per_frame``).
        **kwargs: base layer arguments.
    """

    def __init__(self, temporal=False, num_miniblocks=0, depth=1, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(temporal, bool):
            raise ValueError(f'temporal must be a bool; received temporal={temporal!r}')
        for arg, value, low in (('num_miniblocks', num_miniblocks, 0), ('depth', depth, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f'{arg} must be an int >= {low}; received {arg}={value!r}')
        self.temporal = temporal
        self.num_miniblocks = num_miniblocks
        self.depth = depth

    def flops(self, input_sizes):
        raise NotImplementedError(f'{type(self).__name__} must implement flops(input_sizes)')

    def get_config(self):
        config = super().get_config()
        config.update(temporal=self.temporal, num_miniblocks=self.num_miniblocks, depth=self.depth)
        return config


@keras.saving.register_keras_serializable(package='posekit')
class SkipHeatmapHead(PipelineUnit):
    """Heatmap head over skip connections: per-source conv, upsample to the first source, concat, 3x3 conv.

    For each input i: ``[BN, ReLU] -> conv(skip_kernel_size, skip_channels) [-> ReLU]`` (pre-activation
    inputs, e.g. DenseNet features, use ``pre_activation=True``: BN-ReLU before the bias-free conv;
    post-activation inputs, e.g. Inception features, use False: conv with bias then ReLU), bilinear resize to
    the spatial size of input 0, concatenation, ``[BN, ReLU]`` if pre_activation, and a 3x3 conv with bias to
    ``num_keypoints`` channels: heatmap logits ``(batch, h0, w0, num_keypoints)`` at input 0's resolution.
    With ``temporal``, each input is concatenated with its previous value first.

    Args:
        num_keypoints: int >= 1, output channels.
        skip_channels: int >= 1, channels of each per-source conv.
        skip_kernel_size: int >= 1, kernel size of the per-source convs.
        pre_activation: bool, see above.
        **kwargs: ``PipelineUnit`` and base layer arguments.
    """

    def __init__(self, num_keypoints=17, skip_channels=32, skip_kernel_size=3, pre_activation=True, **kwargs):
        kwargs.setdefault('depth', 2)
        super().__init__(**kwargs)
        for arg, value in (('num_keypoints', num_keypoints), ('skip_channels', skip_channels),
                           ('skip_kernel_size', skip_kernel_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'{arg} must be a positive int; received {arg}={value!r}')
        self.num_keypoints = num_keypoints
        self.output_channels = num_keypoints
        self.skip_channels = skip_channels
        self.skip_kernel_size = skip_kernel_size
        self.pre_activation = bool(pre_activation)

    def build(self, input_shape):
        shapes = list(input_shape) if isinstance(input_shape, (list, tuple)) and isinstance(
            input_shape[0], (list, tuple)) else [input_shape]
        self.skip_norms, self.skip_convs = [], []
        for i, shape in enumerate(shapes):
            channels = shape[-1] * (2 if self.temporal else 1)
            if self.pre_activation:
                norm = keras.layers.BatchNormalization(name=f'skip{i}_bn')
                norm.build((None, None, None, channels))
                self.skip_norms.append(norm)
            conv = keras.layers.Conv2D(self.skip_channels, self.skip_kernel_size, padding='same',
                                       use_bias=not self.pre_activation, name=f'skip{i}_conv')
            conv.build((None, None, None, channels))
            self.skip_convs.append(conv)
        merged = self.skip_channels * len(shapes)
        self.final_norm = None
        if self.pre_activation:
            self.final_norm = keras.layers.BatchNormalization(name='final_bn')
            self.final_norm.build((None, None, None, merged))
        self.final_conv = keras.layers.Conv2D(self.num_keypoints, 3, padding='same', name='final_conv')
        self.final_conv.build((None, None, None, merged))

    def call(self, inputs, state=None, previous_inputs=None, training=None):
        inputs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        if self.temporal:
            inputs = [tf.concat([x, p], axis=-1) for x, p in zip(inputs, previous_inputs)]
        size = tf.shape(inputs[0])[1:3]
        branches = []
        for i, x in enumerate(inputs):
            if self.pre_activation:
                x = tf.nn.relu(self.skip_norms[i](x, training=training))
            x = self.skip_convs[i](x)
            if not self.pre_activation:
                x = tf.nn.relu(x)
            if i > 0:
                x = tf.cast(tf.image.resize(x, size, method='bilinear'), x.dtype)
            branches.append(x)
        x = tf.concat(branches, axis=-1)
        if self.pre_activation:
            x = tf.nn.relu(self.final_norm(x, training=training))
        return self.final_conv(x), {}

    def flops(self, input_sizes):
        total = sum(conv_flops(h, w, conv) for (h, w), conv in zip(input_sizes, self.skip_convs))
        return total + conv_flops(*input_sizes[0], self.final_conv)

    def get_config(self):
        config = super().get_config()
        config.update(num_keypoints=self.num_keypoints, skip_channels=self.skip_channels,
                      skip_kernel_size=self.skip_kernel_size, pre_activation=self.pre_activation)
        return config


class ExecutionCounter:
    """Counts unit executions, also inside compiled (``tf.function``) steps, with an int64 tf.Variable.

    Pass it as ``counter=`` to ``PipelinedNetwork.step``/``unroll``: the increment sits inside the unit's
    ``tf.cond`` branch, so a skipped unit is not counted (and not executed).
    """

    def __init__(self, network):
        self.network = network
        self.unit_names = [unit.name for unit in network.pipeline_units]
        self.counts = tf.Variable(tf.zeros([len(self.unit_names)], tf.int64), trainable=False,
                                  name='unit_executions')

    def record(self, index):
        return self.counts.assign_add(tf.one_hot(index, len(self.unit_names), dtype=tf.int64))

    def reset(self):
        self.counts.assign(tf.zeros_like(self.counts))

    def as_dict(self):
        """{unit name: number of executions} as Python ints."""
        return dict(zip(self.unit_names, (int(c) for c in self.counts.numpy())))

    def miniblocks(self):
        """Miniblock executions: sum over units of executions x miniblocks."""
        return sum(int(c) * unit.num_miniblocks
                   for c, unit in zip(self.counts.numpy(), self.network.pipeline_units))

    def flops(self, height, width):
        """FLOPs of the counted executions for frames of height x width px."""
        return sum(int(c) * f for c, f in zip(self.counts.numpy(), self.network.unit_flops(height, width)))


@keras.saving.register_keras_serializable(package='posekit')
class PipelinedNetwork(keras.Model):
    """A chain of ``PipelineUnit`` layers stepped frame by frame with explicit state (see the module docstring).

    Args:
        units: list of ``PipelineUnit``; the last one is the head (its output: heatmap logits).
            Unit names must be unique (they name the state entries).
        rates: None (all 1) or a list of positive ints, one clock rate per unit; unit i computes at steps
            with ``t mod rates[i] == 0``.
        num_subnets: int in [1, len(units) - 1]; the units before the head are split into this many
            contiguous groups of nearly equal size (``partition_units``); the head joins the last group.
        sources: None (a chain: unit 0 reads the frame, unit i reads unit i - 1) or one list per unit of
            source indices (``FRAME_SOURCE`` = -1 for the frame, else an earlier unit), e.g. a head reading the
            last unit of every block. Only unit 0 may read the frame. A source in another subnetwork is read
            with a delay of one step whatever the distance (all subnetworks run concurrently), so such skip
            connections carry fresher features than the chain; ``latency`` counts the longest path.
        feedback: bool; concatenate the previous step's heatmaps (sigmoid of the head's logits, resized
            bilinearly to unit 0's output size; 0.5 everywhere at the first step, from zero logits) to unit
            0's output. The head must have ``output_channels``.
        frame_channels: int, channels of the input frames (3 for RGB).
        **kwargs: ``keras.Model`` arguments (``name``...).

    Frames are ``(batch, height, width, frame_channels)`` float32 (any height/width; the units are fully
    convolutional); heatmaps are the head's logits ``(batch, h, w, K)``.
    """

    def __init__(self, units, rates=None, num_subnets=1, sources=None, feedback=False, frame_channels=3,
                 **kwargs):
        super().__init__(**kwargs)
        units = list(units)
        if len(units) < 2 or not all(isinstance(u, PipelineUnit) for u in units):
            raise ValueError(f'units must be a list of at least 2 PipelineUnit layers (the last is the head); '
                             f'received units={units!r}')
        names = [u.name for u in units]
        if len(set(names)) != len(names) or len({_sanitize(n) for n in names}) != len(names):
            raise ValueError(f'unit names must be unique; received names {names}')
        rates = [1] * len(units) if rates is None else list(rates)
        if len(rates) != len(units) or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in rates):
            raise ValueError(f'rates must be None or {len(units)} positive ints (one per unit); '
                             f'received rates={rates!r}')
        if sources is None:
            sources = [[i - 1] for i in range(len(units))]
        sources = [list(s) for s in sources]
        if len(sources) != len(units) or any(not s for s in sources) or any(
                not (j == FRAME_SOURCE and i == 0 or 0 <= j < i) for i, s in enumerate(sources) for j in s):
            raise ValueError('sources must be None or one non-empty list per unit of earlier unit indices '
                             f'(-1, the frame, only for unit 0); received sources={sources!r}')
        if not isinstance(feedback, bool):
            raise ValueError(f'feedback must be a bool; received feedback={feedback!r}')
        if feedback and not isinstance(getattr(units[-1], 'output_channels', None), int):
            raise ValueError(f'feedback=True needs a head with an int output_channels; received head '
                             f'{units[-1].name!r} of type {type(units[-1]).__name__}')
        if isinstance(frame_channels, bool) or not isinstance(frame_channels, int) or frame_channels < 1:
            raise ValueError(f'frame_channels must be a positive int; received frame_channels={frame_channels!r}')
        self.pipeline_units = units
        self.rates = rates
        self.num_subnets = num_subnets
        self.subnet_of_unit = partition_units(len(units) - 1, num_subnets) + [num_subnets - 1]
        self.sources = sources
        self.feedback = feedback
        self.frame_channels = frame_channels
        self._keys = [_sanitize(n) for n in names]
        self._state_specs = None
        self._internal_names = None

    # ----------------------------------------------------------------------------------------- structure
    def _is_parallel(self, source, reader):
        return source != FRAME_SOURCE and self.subnet_of_unit[source] != self.subnet_of_unit[reader]

    @property
    def latency(self):
        """Frames between an input and the output that first sees it: parallel links on the longest path."""
        return self.unit_latencies()[-1]

    def unit_latencies(self):
        """Per unit (list, unit order): parallel links on the longest path from the frame to its output, i.e.
        the output of unit i at step t was computed from frame t - unit_latencies()[i] (without clocks)."""
        delay = []
        for i, srcs in enumerate(self.sources):
            delay.append(max((0 if j == FRAME_SOURCE else delay[j]) + int(self._is_parallel(j, i))
                             for j in srcs))
        return delay

    def output_state_key(self, unit_name):
        """Name of the state entry holding the last output of the unit called unit_name."""
        names = [u.name for u in self.pipeline_units]
        if unit_name not in names:
            raise ValueError(f'unit_name must be one of {names}; received unit_name={unit_name!r}')
        return self._key(names.index(unit_name), _OUT)

    def feedback_channels(self, unit_name, channels):
        """(start, stop): the channels of the unit's output (``channels`` in all) that carry the fed-back
        heatmaps, or None. Without feedback None; the first unit's output ends with them (its own output
        then the head's ``output_channels`` heatmaps); networks whose later units pass their input through
        (dense concatenation) override this. Used to compare a feedback student with a teacher without it."""
        names = [u.name for u in self.pipeline_units]
        if unit_name not in names:
            raise ValueError(f'unit_name must be one of {names}; received unit_name={unit_name!r}')
        if not self.feedback or names.index(unit_name) != 0:
            return None
        return channels - self.pipeline_units[-1].output_channels, channels

    def fill_steps(self):
        """Steps from zero states until the output is computed from frames alone (the pipeline-filling transient).

        A unit's output is *filled* once it has executed with filled inputs (the frame is filled; a parallel link
        gives the source's output of the previous step, a sequential one its output of this step); a temporal
        unit also needs its previous inputs filled, i.e. two such executions. Without clocks this is the
        latency; with clocks a slow unit's execution at t = 0 reads its parallel inputs' zero states, so its
        output stays unfilled until it runs again (Par-DenseNet with clocks, block rates 2-16: 16 steps with 2
        subnetworks, 32 with 4, 96 with 14). The fed-back heatmaps and units' own state (a causal 3D convolution's history) are not tracked:
        for networks with them this is a lower bound. Returns the first step t whose output is filled.
        """
        n = len(self.pipeline_units)
        filled = [False] * n  # outputs held in the state (after the previous step)
        previous = [None] * n  # temporal units: whether the inputs of their last execution were filled
        limit = (self.latency + 2) * 2 * self.max_rate + 2 * n
        for t in range(limit):
            current = []
            for i, unit in enumerate(self.pipeline_units):
                ins = [True if j == FRAME_SOURCE else (filled[j] if self._is_parallel(j, i) else current[j])
                       for j in self.sources[i]]
                if t % self.rates[i] == 0:
                    out = all(ins) and (not unit.temporal or bool(previous[i]) and all(previous[i]))
                    previous[i] = ins
                else:
                    out = filled[i]
                current.append(out)
            filled = current
            if filled[-1]:
                return t
        raise RuntimeError(f'the output is still not filled after {limit} steps (rates {self.rates})')

    @property
    def max_rate(self):
        return max(self.rates)

    def unit_executions(self, num_frames, start=0):
        """{unit name: executions over steps start .. start + num_frames - 1} (analytic, from the clocks)."""
        return {u.name: executions(r, num_frames, start) for u, r in zip(self.pipeline_units, self.rates)}

    def miniblock_executions(self, num_frames, start=0):
        """Sum over units of executions x miniblocks over num_frames steps (paper: per 16 frames)."""
        return sum(executions(r, num_frames, start) * u.num_miniblocks
                   for u, r in zip(self.pipeline_units, self.rates))

    def sequential_depth_per_frame(self):
        """Convolutions on the longest chain computed within one step (all subnetworks run in parallel).

        This sets the per-frame latency on hardware with one processor per subnetwork; with one subnetwork
        it is the depth of the whole image model.
        """
        depth = []
        for i, srcs in enumerate(self.sources):
            before = [depth[j] for j in srcs if j != FRAME_SOURCE and not self._is_parallel(j, i)]
            depth.append(max(before, default=0) + self.pipeline_units[i].depth)
        return max(depth)

    # ------------------------------------------------------------------------------------------- build
    def build(self, input_shape):
        """Builds every unit by pushing a zero frame of _PROBE_SIZE px through them, eagerly.

        input_shape: any shape whose last entry is the number of frame channels.
        """
        channels = input_shape[-1] if input_shape is not None and input_shape[-1] is not None \
            else self.frame_channels
        if channels != self.frame_channels:
            raise ValueError(f'frames must have frame_channels={self.frame_channels} channels; received '
                             f'input_shape={tuple(input_shape)}')
        with tf.init_scope():
            probe = tf.zeros((1, _PROBE_SIZE, _PROBE_SIZE, channels))
            outputs = []
            specs, internal_names = {}, []
            for i, unit in enumerate(self.pipeline_units):
                ins = [probe if j == FRAME_SOURCE else outputs[j] for j in self.sources[i]]
                prev = [tf.zeros_like(x) for x in ins] if unit.temporal else None
                y, internal = unit(ins[0] if len(ins) == 1 else ins, state=None, previous_inputs=prev,
                                   training=False)
                y = tf.cast(y, tf.float32)
                if self.feedback and i == 0:
                    heat = tf.zeros(tuple(y.shape[:3]) + (self.pipeline_units[-1].output_channels,))
                    y = tf.concat([y, heat], axis=-1)
                outputs.append(y)
                specs[self._key(i, _OUT)] = self._spec(y)
                if unit.temporal:
                    for j, x in enumerate(ins):
                        specs[self._key(i, f'{_PREV}{j}')] = self._spec(x)
                internal_names.append(sorted(internal))
                for name in sorted(internal):
                    specs[self._key(i, name)] = self._spec(internal[name])
        self._state_specs = specs
        self._internal_names = internal_names
        self.built = True

    def _key(self, index, name):
        return f'{self._keys[index]}{_SEP}{name}'

    @staticmethod
    def _spec(tensor):
        height, width, channels = tensor.shape[1:]
        stride = _PROBE_SIZE // height
        if height != width or stride * height != _PROBE_SIZE:
            raise ValueError(f'cannot infer the stride of a state of shape {tuple(tensor.shape)} from a '
                             f'{_PROBE_SIZE} px probe frame (strides must be powers of 2 up to {_PROBE_SIZE // 2})')
        return stride, channels

    def _ensure_built(self):
        if not self.built or self._state_specs is None:
            self.build((None, None, None, self.frame_channels))

    def state_specs(self):
        """{state name: (stride, channels)}: the tensor is (batch, ceil(H / stride), ceil(W / stride), channels).

        Excludes ``'t'`` (int64 scalar).
        """
        self._ensure_built()
        return dict(self._state_specs)

    def init_states(self, batch, height, width):
        """Zero states for frames (batch, height, width, C); ints or int scalar tensors. Includes 't' = 0."""
        self._ensure_built()
        states = {STEP_KEY: tf.constant(0, tf.int64)}
        for key, (stride, channels) in self._state_specs.items():
            shape = [batch, ceil_div(height, stride), ceil_div(width, stride), channels]
            if all(isinstance(s, int) for s in shape):
                states[key] = tf.zeros(shape)
            else:
                states[key] = tf.zeros(tf.stack([tf.cast(s, tf.int32) for s in shape]))
        return states

    # -------------------------------------------------------------------------------------------- step
    def _step(self, frame, states, t, training, counter):
        """One step; returns (list of every unit's output this step, new states)."""
        self._ensure_built()
        t = tf.cast(tf.convert_to_tensor(t), tf.int64)
        new_states = {STEP_KEY: t + 1}
        current = []
        for i, unit in enumerate(self.pipeline_units):
            ins = []
            for j in self.sources[i]:
                if j == FRAME_SOURCE:
                    ins.append(frame)
                elif self._is_parallel(j, i):
                    ins.append(states[self._key(j, _OUT)])  # previous step's output
                else:
                    ins.append(current[j])
            prev_keys = [self._key(i, f'{_PREV}{j}') for j in range(len(ins))] if unit.temporal else []
            internal = {n: states[self._key(i, n)] for n in self._internal_names[i]}
            old_out = states[self._key(i, _OUT)]

            def run(unit=unit, i=i, ins=ins, prev_keys=prev_keys, internal=internal):
                prev = [states[k] for k in prev_keys] if unit.temporal else None
                y, new_internal = unit(ins[0] if len(ins) == 1 else ins, state=internal or None,
                                       previous_inputs=prev, training=training)
                y = tf.cast(y, tf.float32)  # states are float32 whatever the dtype policy
                new_internal = {n: tf.cast(v, tf.float32) for n, v in new_internal.items()}
                if self.feedback and i == 0:
                    y = tf.concat([y, self._feedback(states, y)], axis=-1)
                deps = [counter.record(i)] if counter is not None else []
                with tf.control_dependencies(deps):
                    y = tf.identity(y)
                return y, {n: new_internal[n] for n in self._internal_names[i]}, list(ins) if unit.temporal else []

            def hold(prev_keys=prev_keys, internal=internal, old_out=old_out):
                return old_out, dict(internal), [states[k] for k in prev_keys]

            if self.rates[i] == 1:
                y, new_internal, new_prev = run()
            else:
                y, new_internal, new_prev = tf.cond(tf.equal(t % self.rates[i], 0), run, hold)
            current.append(y)
            new_states[self._key(i, _OUT)] = y
            for k, v in zip(prev_keys, new_prev):
                new_states[k] = v
            for n, v in new_internal.items():
                new_states[self._key(i, n)] = v
        return current, new_states

    def _feedback(self, states, stem_out):
        heat = tf.sigmoid(states[self._key(len(self.pipeline_units) - 1, _OUT)])
        return tf.image.resize(heat, tf.shape(stem_out)[1:3], method='bilinear')

    def step(self, frame, states, t=None, training=False, counter=None):
        """Advances one frame.

        Args:
            frame: (batch, height, width, frame_channels) float32.
            states: dict from ``init_states`` or a previous step.
            t: step index (int or int scalar tensor); default ``states['t']``.
            training: forwarded to the units (batch norm).
            counter: optional ``ExecutionCounter``.
        Returns:
            (heatmaps, new_states): heatmap logits (batch, h, w, K) predicting frame t - latency, and the
            states for step t + 1 (``new_states['t'] == t + 1``).
        """
        t = states[STEP_KEY] if t is None else t
        current, new_states = self._step(frame, states, t, training, counter)
        return current[-1], new_states

    def unroll(self, frames, states=None, t=None, training=False, capture=(), counter=None):
        """Steps through frames (batch, T, height, width, C) (a Python loop: differentiable through time).

        Args:
            states: initial states (default zeros); t: index of the first step (default ``states['t']``).
            capture: names of units whose outputs to return for every step (e.g. for distillation).
        Returns:
            dict with ``heatmaps`` (batch, T, h, w, K), ``activations`` {unit name: (batch, T, ...)} and the
            final ``states``.
        """
        frames = tf.convert_to_tensor(frames)
        if frames.shape.rank != 5 or frames.shape[1] is None:
            raise ValueError(f'frames must be (batch, T, height, width, channels) with a static T; received '
                             f'shape {tuple(frames.shape)}')
        names = [u.name for u in self.pipeline_units]
        unknown = [c for c in capture if c not in names]
        if unknown:
            raise ValueError(f'capture must name units among {names}; received capture={list(capture)!r}')
        if states is None:
            shape = tf.shape(frames)
            static = frames.shape
            dims = [static[d] if static[d] is not None else shape[d] for d in (0, 2, 3)]
            states = self.init_states(*dims)
        t = states[STEP_KEY] if t is None else tf.cast(t, tf.int64)
        heatmaps, acts = [], {c: [] for c in capture}
        for k in range(frames.shape[1]):
            current, states = self._step(frames[:, k], states, t + k, training, counter)
            heatmaps.append(current[-1])
            for c in capture:
                acts[c].append(current[names.index(c)])
        return {'heatmaps': tf.stack(heatmaps, axis=1),
                'activations': {c: tf.stack(v, axis=1) for c, v in acts.items()},
                'states': states}

    def per_frame(self, images, training=False):
        """The per-frame image model: every link sequential, every unit executed, zero history/feedback.

        images: (batch, height, width, C) -> heatmap logits (batch, h, w, K). For a network without temporal
        filters, feedback or unit state this is the image network the video network is made from.
        """
        self._ensure_built()
        images = tf.convert_to_tensor(images)
        outputs = []
        for i, unit in enumerate(self.pipeline_units):
            ins = [images if j == FRAME_SOURCE else outputs[j] for j in self.sources[i]]
            prev = [tf.zeros_like(x) for x in ins] if unit.temporal else None
            y, _ = unit(ins[0] if len(ins) == 1 else ins, state=None, previous_inputs=prev, training=training)
            y = tf.cast(y, tf.float32)
            if self.feedback and i == 0:
                heat = tf.zeros(tf.concat([tf.shape(y)[:3], [self.pipeline_units[-1].output_channels]], 0))
                y = tf.concat([y, heat], axis=-1)
            outputs.append(y)
        return outputs[-1]

    def call(self, frames, training=None):
        """(batch, T, height, width, C) frames from zero states -> heatmap logits (batch, T, h, w, K)."""
        return self.unroll(frames, training=bool(training))['heatmaps']

    # ------------------------------------------------------------------------------------------- costs
    def unit_flops(self, height, width):
        """FLOPs of one execution of each unit for frames of height x width px (list, unit order)."""
        self._ensure_built()
        strides = [self._state_specs[self._key(i, _OUT)][0] for i in range(len(self.pipeline_units))]
        result = []
        for i, unit in enumerate(self.pipeline_units):
            sizes = [(height, width) if j == FRAME_SOURCE else (ceil_div(height, strides[j]),
                                                                ceil_div(width, strides[j]))
                     for j in self.sources[i]]
            result.append(unit.flops(sizes))
        return result

    def flops_per_frame(self, height, width):
        """Average FLOPs per frame in steady state: sum over units of flops / rate (convolutions only)."""
        return sum(f / r for f, r in zip(self.unit_flops(height, width), self.rates))

    def get_config(self):
        config = super().get_config()
        config.update(units=[keras.saving.serialize_keras_object(u) for u in self.pipeline_units],
                      rates=list(self.rates), num_subnets=self.num_subnets,
                      sources=[list(s) for s in self.sources], feedback=self.feedback,
                      frame_channels=self.frame_channels)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config['units'] = [keras.saving.deserialize_keras_object(u) for u in config['units']]
        return cls(**config)
