"""Par-Inception: an I3D-style Inception-v1 heatmap network as a depth-parallel pipelined video network.

Architecture (compared row by row with appendix Tables 6-7 in the README video section; the layer sizes
are those of I3D / Inception-v1 with batch norm, 3x3 kernels in the "5x5" branch):

- stem: 7x7 conv stride 2 (64), 3x3 max-pool stride 2, 1x1 conv (64), 3x3 conv (192), 3x3 max-pool stride
  2 -> stride 8; every conv is conv-BN-ReLU;
- 9 inception blocks ``mixed_3b, 3c`` (stride 8), ``mixed_4b..4f`` (stride 16, 4b starts with a 3x3
  max-pool stride 2), ``mixed_5b, 5c`` (stride 32, 5b starts with a max-pool); branches
  1x1 | 1x1-3x3 | 1x1-3x3 | 3x3 max-pool stride 1 - 1x1, concatenated;
- head (``SkipHeatmapHead``): 1x1 conv (+bias, ReLU, ``skip_channels``) on the outputs of mixed_3c, 4f and
  5c, bilinear upsampling to stride 8, concatenation, 3x3 conv -> ``num_keypoints`` heatmap logits.

``inflate=True`` makes the convolutions causal 3D convolutions with I3D's temporal extents (7 for the stem's
7x7 conv, 3 for every 3x3 conv, 1 for 1x1 convs): each keeps its inputs of its last executions in the unit
state. This is what brings the network to the paper's parameter count (``ParInception.paper()``). I3D's
temporal strides and temporal max-pooling are not used (one output per frame).

Pipelining: 10 units (stem + 9 blocks; the paper's 1/5/10 subnetworks) and the head. With ``clocks`` the
stem and head run every frame, mixed_3x at rate 2, mixed_4x at 4, mixed_5x at 8: 40 instead of 144 inception
block executions per 16 frames (``miniblock_executions`` counts inception blocks).
"""
import keras
import tensorflow as tf

from posekit.layers.pipeline import FRAME_SOURCE, PipelinedNetwork, PipelineUnit, SkipHeatmapHead, ceil_div, \
    conv_flops
from posekit.models.par_densenet import scaled_channels

# name, (1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 | pool -> 1x1) channels, starts with a stride-2 max-pool, resolution level
INCEPTION_BLOCKS = (
    ('mixed_3b', (64, 96, 128, 16, 32, 32), False, 0),
    ('mixed_3c', (128, 128, 192, 32, 96, 64), False, 0),
    ('mixed_4b', (192, 96, 208, 16, 48, 64), True, 1),
    ('mixed_4c', (160, 112, 224, 24, 64, 64), False, 1),
    ('mixed_4d', (128, 128, 256, 24, 64, 64), False, 1),
    ('mixed_4e', (112, 144, 288, 32, 64, 64), False, 1),
    ('mixed_4f', (256, 160, 320, 32, 128, 128), False, 1),
    ('mixed_5b', (256, 160, 320, 32, 128, 128), True, 2),
    ('mixed_5c', (384, 192, 384, 48, 128, 128), False, 2),
)
HEAD_SOURCES = ('mixed_3c', 'mixed_4f', 'mixed_5c')
STEM_CHANNELS = (64, 64, 192)  # 7x7 stride 2, 1x1, 3x3
I3D_TEMPORAL = {7: 7, 3: 3, 1: 1}  # spatial kernel size -> I3D's temporal extent
SKIP_CHANNELS = 64
NUM_KEYPOINTS = 17
PAPER_WIDTH = 1.0
CPU_WIDTH = 0.25
PAPER_INPUT_SIZE = 224  # px
CPU_INPUT_SIZE = 64  # px
PAPER_PARAMS = 12_501_056  # appendix Tables 6-7
POOL_STRIDE = 2
POOL_SIZE = 3


class _CausalConvBN(keras.layers.Layer):
    """Conv(kernel_size, strides) over [x_t, x_{t-1}, ..., x_{t-T+1}] (channel concat; a causal 3D conv with
    temporal extent T = temporal_size), BN, ReLU: (B, h, w, c) -> (B, h', w', filters).

    ``call(x, history, training)`` with history = [x_{t-1}, ..., x_{t-T+1}] (None: zeros) returns
    (output, new_history).
    """

    def __init__(self, filters, kernel_size, strides=1, temporal_size=1, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.temporal_size = temporal_size

    def build(self, input_shape):
        self.conv = keras.layers.Conv2D(self.filters, self.kernel_size, strides=self.strides, padding='same',
                                        use_bias=False, name='conv')
        self.conv.build((None, None, None, input_shape[-1] * self.temporal_size))
        self.norm = keras.layers.BatchNormalization(name='bn')
        self.norm.build((None, None, None, self.filters))

    def call(self, x, history=None, training=None):
        if self.temporal_size > 1:
            history = [tf.zeros_like(x)] * (self.temporal_size - 1) if history is None else list(history)
            stacked = tf.concat([x] + history, axis=-1)
            history = [x] + history[:-1]
        else:
            stacked, history = x, []
        return tf.nn.relu(self.norm(self.conv(stacked), training=training)), history

    def flops(self, height, width):
        """FLOPs for an input of height x width px."""
        return conv_flops(ceil_div(height, self.strides), ceil_div(width, self.strides), self.conv)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size, strides=self.strides,
                      temporal_size=self.temporal_size)
        return config


class _InflatableUnit(PipelineUnit):
    """Shared state plumbing: every _CausalConvBN with temporal_size > 1 keeps '<conv>_h<j>' entries."""

    def _conv(self, name, filters, kernel_size, strides=1):
        return _CausalConvBN(filters, kernel_size, strides, I3D_TEMPORAL[kernel_size] if self.inflate else 1,
                             name=name)

    def _apply(self, conv, x, state, new_state, training):
        keys = [f'{conv.name}_h{j}' for j in range(conv.temporal_size - 1)]
        history = None if state is None else [state[k] for k in keys]
        y, history = conv(x, history, training=training)
        new_state.update(zip(keys, history))
        return y


class _InceptionStem(_InflatableUnit):
    """(B, H, W, C) -> (B, ceil(H/8), ceil(W/8), channels[2]): conv7x7/2, maxpool/2, conv1x1, conv3x3, maxpool/2."""

    def __init__(self, channels, inflate=False, **kwargs):
        kwargs.setdefault('depth', 3)
        super().__init__(**kwargs)
        self.channels = tuple(channels)
        self.inflate = inflate

    def build(self, input_shape):
        c1, c2, c3 = self.channels
        self.convs = [self._conv('conv1', c1, 7, POOL_STRIDE), self._conv('conv2b', c2, 1),
                      self._conv('conv2c', c3, 3)]
        for conv, c in zip(self.convs, (input_shape[-1] * (2 if self.temporal else 1), c1, c2)):
            conv.build((None, None, None, c))

    def call(self, inputs, state=None, previous_inputs=None, training=None):
        x = tf.concat([inputs, previous_inputs[0]], axis=-1) if self.temporal else inputs
        new_state = {}
        x = self._apply(self.convs[0], x, state, new_state, training)
        x = tf.nn.max_pool2d(x, POOL_SIZE, POOL_STRIDE, 'SAME')
        x = self._apply(self.convs[1], x, state, new_state, training)
        x = self._apply(self.convs[2], x, state, new_state, training)
        return tf.nn.max_pool2d(x, POOL_SIZE, POOL_STRIDE, 'SAME'), new_state

    def flops(self, input_sizes):
        height, width = input_sizes[0]
        total = self.convs[0].flops(height, width)
        height, width = ceil_div(height, POOL_STRIDE ** 2), ceil_div(width, POOL_STRIDE ** 2)
        return total + self.convs[1].flops(height, width) + self.convs[2].flops(height, width)

    def get_config(self):
        config = super().get_config()
        config.update(channels=list(self.channels), inflate=self.inflate)
        return config


class _InceptionUnit(_InflatableUnit):
    """[3x3 max-pool stride 2,] inception block: (B, h, w, c) -> (B, h', w', b0 + b1b + b2b + b3).

    With ``temporal`` the previous input is concatenated to the input of all four branches.
    """

    def __init__(self, channels, pool_first=False, inflate=False, **kwargs):
        kwargs.setdefault('depth', 2)
        kwargs.setdefault('num_miniblocks', 1)  # an inception block is the counted unit of work
        super().__init__(**kwargs)
        self.channels = tuple(channels)
        self.pool_first = pool_first
        self.inflate = inflate

    def build(self, input_shape):
        b0, b1a, b1b, b2a, b2b, b3 = self.channels
        c = input_shape[-1] * (2 if self.temporal else 1)
        self.convs = {'b0': self._conv('b0', b0, 1), 'b1a': self._conv('b1a', b1a, 1),
                      'b1b': self._conv('b1b', b1b, 3), 'b2a': self._conv('b2a', b2a, 1),
                      'b2b': self._conv('b2b', b2b, 3), 'b3': self._conv('b3', b3, 1)}
        for name, cin in (('b0', c), ('b1a', c), ('b1b', b1a), ('b2a', c), ('b2b', b2a), ('b3', c)):
            self.convs[name].build((None, None, None, cin))

    def call(self, inputs, state=None, previous_inputs=None, training=None):
        x = tf.concat([inputs, previous_inputs[0]], axis=-1) if self.temporal else inputs
        if self.pool_first:
            x = tf.nn.max_pool2d(x, POOL_SIZE, POOL_STRIDE, 'SAME')
        new_state = {}

        def apply(name, value):
            return self._apply(self.convs[name], value, state, new_state, training)

        branches = [apply('b0', x), apply('b1b', apply('b1a', x)), apply('b2b', apply('b2a', x)),
                    apply('b3', tf.nn.max_pool2d(x, POOL_SIZE, 1, 'SAME'))]
        return tf.concat(branches, axis=-1), new_state

    def flops(self, input_sizes):
        height, width = input_sizes[0]
        if self.pool_first:
            height, width = ceil_div(height, POOL_STRIDE), ceil_div(width, POOL_STRIDE)
        return sum(conv.flops(height, width) for conv in self.convs.values())

    def get_config(self):
        config = super().get_config()
        config.update(channels=list(self.channels), pool_first=self.pool_first, inflate=self.inflate)
        return config


@keras.saving.register_keras_serializable(package='posekit')
class ParInception(PipelinedNetwork):
    """Par-Inception keypoint heatmap network (see the module docstring for the architecture).

    Frames (batch, H, W, 3) float32 -> heatmap logits (batch, ceil(H/8), ceil(W/8), num_keypoints) per step,
    predicting frame t - ``latency``. All ``PipelinedNetwork`` methods apply.

    Args:
        num_keypoints: heatmap channels (17).
        width: channel multiplier > 0 for every layer (1 = paper sizes).
        skip_channels: channels of the head's per-source 1x1 convs at width 1.
        inflate: causal 3D kernels with I3D's temporal extents (see the module docstring).
        num_subnets: parallel subnetworks in [1, 10].
        clocks: multi-rate clocks (stem 1, mixed_3x 2, mixed_4x 4, mixed_5x 8, head 1).
        temporal_filters: temporal kernels of size 2 on the input of every unit but the head.
        feedback: previous heatmaps concatenated to the stem output.
        frame_channels: input channels.
        **kwargs: ``keras.Model`` arguments.
    """

    def __init__(self, num_keypoints=NUM_KEYPOINTS, width=CPU_WIDTH, skip_channels=SKIP_CHANNELS, inflate=False,
                 num_subnets=1, clocks=False, temporal_filters=False, feedback=False, frame_channels=3, **kwargs):
        if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
            raise ValueError(f'width must be a positive number; received width={width!r}')
        for arg, value in (('num_keypoints', num_keypoints), ('skip_channels', skip_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'{arg} must be a positive int; received {arg}={value!r}')
        for arg, value in (('inflate', inflate), ('clocks', clocks), ('temporal_filters', temporal_filters)):
            if not isinstance(value, bool):
                raise ValueError(f'{arg} must be a bool; received {arg}={value!r}')
        units = [_InceptionStem([scaled_channels(c, width) for c in STEM_CHANNELS], inflate=inflate,
                                temporal=temporal_filters, name='stem')]
        rates = [1]
        for name, channels, pool_first, level in INCEPTION_BLOCKS:
            units.append(_InceptionUnit([scaled_channels(c, width) for c in channels], pool_first=pool_first,
                                        inflate=inflate, temporal=temporal_filters, name=name))
            rates.append(POOL_STRIDE ** (level + 1) if clocks else 1)
        names = [u.name for u in units]
        units.append(SkipHeatmapHead(num_keypoints, scaled_channels(skip_channels, width), skip_kernel_size=1,
                                     pre_activation=False, name='head'))
        rates.append(1)
        sources = [[FRAME_SOURCE]] + [[i - 1] for i in range(1, len(units) - 1)] + [
            [names.index(n) for n in HEAD_SOURCES]]
        super().__init__(units, rates=rates, num_subnets=num_subnets, sources=sources, feedback=feedback,
                         frame_channels=frame_channels, **kwargs)
        self.num_keypoints = num_keypoints
        self.width = width
        self.skip_channels = skip_channels
        self.inflate = inflate
        self.clocks = clocks
        self.temporal_filters = temporal_filters

    @classmethod
    def paper(cls, **overrides):
        """The full-size network (width 1, I3D-inflated causal kernels); keyword arguments override."""
        overrides.setdefault('width', PAPER_WIDTH)
        overrides.setdefault('inflate', True)
        return cls(**overrides)

    def get_config(self):
        config = keras.layers.Layer.get_config(self)
        config.update(num_keypoints=self.num_keypoints, width=self.width, skip_channels=self.skip_channels,
                      inflate=self.inflate, num_subnets=self.num_subnets, clocks=self.clocks,
                      temporal_filters=self.temporal_filters, feedback=self.feedback,
                      frame_channels=self.frame_channels)
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)
