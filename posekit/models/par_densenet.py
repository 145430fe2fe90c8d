"""Par-DenseNet: a DenseNet heatmap network as a depth-parallel pipelined video network (Carreira et al. 2018).

Architecture (compared row by row with appendix Table 5 in the README video section: the table lists 1x1
transitions and 1x1 skips of 16 that we do not have, and its stated total is not reachable from its rows):

- stem: 7x7 conv stride 2 (``stem_channels``), BN, ReLU, 3x3 max-pool stride 2 -> stride 4;
- four dense blocks of ``block_sizes = (4, 8, 8, 6)`` miniblocks; a miniblock is BN-ReLU-1x1 conv
  (``bottleneck_factor x growth_rate`` channels) then BN-ReLU-3x3 conv (``growth_rate``), its output
  concatenated to its input; between blocks a 2x2 average pool stride 2 (no transition convolution), so
  the blocks work at strides 4, 8, 16, 32;
- head (``SkipHeatmapHead``): from each block's output BN-ReLU-3x3 conv (``skip_channels``), bilinear
  upsampling to stride 4, concatenation, BN-ReLU-3x3 conv -> ``num_keypoints`` heatmap logits at stride 4.

Pipelining: units are the stem, groups of ``miniblocks_per_unit`` consecutive miniblocks of a block (2 by
default: 2 + 4 + 4 + 3 = 13 units, so 14 units with the stem, as in the paper's 1/2/4/7/14 subnetworks) and
the head. With ``clocks`` the stem and head run every frame and blocks 1-4 at rates 2, 4, 8, 16 (the rate
doubles whenever the resolution halves): 86 instead of 416 miniblock executions per 16 frames.
``temporal_filters`` gives every unit but the head a temporal kernel of size 2 on its input (the stem's conv
and each dense unit's first miniblock see the unit's input at its previous execution too); ``feedback``
concatenates the previous heatmaps to the stem output.

At ``width=1`` (``ParDenseNet.paper()``) the network has the paper's sizes (growth 64); the default
``width=0.25`` (growth 16) with ``CPU_INPUT_SIZE`` px frames suits a 2-core CPU.
"""
import keras
import tensorflow as tf

from posekit.layers.pipeline import FRAME_SOURCE, PipelinedNetwork, PipelineUnit, SkipHeatmapHead, ceil_div, \
    conv_flops

BLOCK_SIZES = (4, 8, 8, 6)
GROWTH_RATE = 64
STEM_CHANNELS = 64
BOTTLENECK_FACTOR = 4
SKIP_CHANNELS = 32
NUM_KEYPOINTS = 17
PAPER_WIDTH = 1.0
CPU_WIDTH = 0.25
PAPER_INPUT_SIZE = 224  # px
CPU_INPUT_SIZE = 64  # px
PAPER_PARAMS = 10_843_464  # appendix Table 5
POOL_STRIDE = 2
STEM_KERNEL = 7


def scaled_channels(channels, width):
    """round(channels x width), at least 1."""
    return max(1, int(round(channels * width)))


class _DenseStem(PipelineUnit):
    """7x7 conv stride 2, BN, ReLU, 3x3 max-pool stride 2: (B, H, W, C) -> (B, ceil(H/4), ceil(W/4), channels)."""

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels

    def build(self, input_shape):
        channels = input_shape[-1] * (2 if self.temporal else 1)
        self.conv = keras.layers.Conv2D(self.channels, STEM_KERNEL, strides=POOL_STRIDE, padding='same',
                                        use_bias=False, name='conv')
        self.conv.build((None, None, None, channels))
        self.norm = keras.layers.BatchNormalization(name='bn')
        self.norm.build((None, None, None, self.channels))

    def call(self, inputs, state=None, previous_inputs=None, training=None):
        x = tf.concat([inputs, previous_inputs[0]], axis=-1) if self.temporal else inputs
        x = tf.nn.relu(self.norm(self.conv(x), training=training))
        return tf.nn.max_pool2d(x, 3, POOL_STRIDE, 'SAME'), {}

    def flops(self, input_sizes):
        height, width = input_sizes[0]
        return conv_flops(ceil_div(height, POOL_STRIDE), ceil_div(width, POOL_STRIDE), self.conv)

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels)
        return config


class _DenseUnit(PipelineUnit):
    """[2x2 avg-pool stride 2,] then num_miniblocks dense miniblocks: (B, h, w, c) -> (B, h', w', c + n x growth).

    With ``temporal`` the unit's first miniblock sees the previous input concatenated to the input (a
    temporal kernel of size 2 on the unit's first convolution); it is not passed on to the output.
    """

    def __init__(self, growth_rate, bottleneck_channels, pool_first, **kwargs):
        kwargs.setdefault('depth', 2 * kwargs.get('num_miniblocks', 1))
        super().__init__(**kwargs)
        self.growth_rate = growth_rate
        self.bottleneck_channels = bottleneck_channels
        self.pool_first = pool_first

    def build(self, input_shape):
        channels = input_shape[-1]
        self.miniblocks = []
        for m in range(self.num_miniblocks):
            seen = channels + (input_shape[-1] if self.temporal and m == 0 else 0)
            layers = (keras.layers.BatchNormalization(name=f'mb{m}_bn1'),
                      keras.layers.Conv2D(self.bottleneck_channels, 1, use_bias=False, name=f'mb{m}_conv1'),
                      keras.layers.BatchNormalization(name=f'mb{m}_bn2'),
                      keras.layers.Conv2D(self.growth_rate, 3, padding='same', use_bias=False,
                                          name=f'mb{m}_conv2'))
            for layer, c in zip(layers, (seen, seen, self.bottleneck_channels, self.bottleneck_channels)):
                layer.build((None, None, None, c))
            self.miniblocks.append(layers)
            channels += self.growth_rate

    def call(self, inputs, state=None, previous_inputs=None, training=None):
        x = inputs
        prev = previous_inputs[0] if self.temporal else None
        if self.pool_first:
            x = tf.nn.avg_pool2d(x, POOL_STRIDE, POOL_STRIDE, 'SAME')
            if prev is not None:
                prev = tf.nn.avg_pool2d(prev, POOL_STRIDE, POOL_STRIDE, 'SAME')
        new = []
        for m, (bn1, conv1, bn2, conv2) in enumerate(self.miniblocks):
            seen = [x] + new + ([prev] if prev is not None and m == 0 else [])
            z = tf.concat(seen, axis=-1) if len(seen) > 1 else x
            z = conv1(tf.nn.relu(bn1(z, training=training)))
            z = conv2(tf.nn.relu(bn2(z, training=training)))
            new.append(z)
        return tf.concat([x] + new, axis=-1), {}

    def flops(self, input_sizes):
        height, width = input_sizes[0]
        if self.pool_first:
            height, width = ceil_div(height, POOL_STRIDE), ceil_div(width, POOL_STRIDE)
        return sum(conv_flops(height, width, conv1) + conv_flops(height, width, conv2)
                   for _, conv1, _, conv2 in self.miniblocks)

    def get_config(self):
        config = super().get_config()
        config.update(growth_rate=self.growth_rate, bottleneck_channels=self.bottleneck_channels,
                      pool_first=self.pool_first)
        return config


@keras.saving.register_keras_serializable(package='posekit')
class ParDenseNet(PipelinedNetwork):
    """Par-DenseNet keypoint heatmap network (see the module docstring for the architecture).

    Frames (batch, H, W, 3) float32 -> heatmap logits (batch, ceil(H/4), ceil(W/4), num_keypoints) per step,
    predicting frame t - ``latency``. All ``PipelinedNetwork`` methods apply (``init_states``, ``step``,
    ``unroll``, ``per_frame``, ``flops_per_frame``, ``miniblock_executions``...).

    Args:
        num_keypoints: heatmap channels (17).
        width: channel multiplier > 0 applied to growth_rate, stem_channels and skip_channels (1 = paper).
        block_sizes: miniblocks per dense block.
        growth_rate, stem_channels, skip_channels: channels at width 1.
        bottleneck_factor: 1x1 bottleneck channels = bottleneck_factor x (scaled) growth rate.
        miniblocks_per_unit: miniblocks per pipeline unit (a block's last unit may have fewer).
        num_subnets: parallel subnetworks, in [1, number of units before the head].
        clocks: multi-rate clocks (stem 1, block b at rate 2**b, head 1); False: every unit every frame.
        temporal_filters: temporal kernels of size 2 on the input of every unit but the head.
        feedback: previous heatmaps concatenated to the stem output.
        frame_channels: input channels.
        **kwargs: ``keras.Model`` arguments.
    """

    def __init__(self, num_keypoints=NUM_KEYPOINTS, width=CPU_WIDTH, block_sizes=BLOCK_SIZES,
                 growth_rate=GROWTH_RATE, stem_channels=STEM_CHANNELS, bottleneck_factor=BOTTLENECK_FACTOR,
                 skip_channels=SKIP_CHANNELS, miniblocks_per_unit=2, num_subnets=1, clocks=False,
                 temporal_filters=False, feedback=False, frame_channels=3, **kwargs):
        if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
            raise ValueError(f'width must be a positive number; received width={width!r}')
        block_sizes = tuple(block_sizes)
        if not block_sizes or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in block_sizes):
            raise ValueError(f'block_sizes must be a non-empty sequence of positive ints; received '
                             f'block_sizes={block_sizes!r}')
        for arg, value in (('num_keypoints', num_keypoints), ('growth_rate', growth_rate),
                           ('stem_channels', stem_channels), ('bottleneck_factor', bottleneck_factor),
                           ('skip_channels', skip_channels), ('miniblocks_per_unit', miniblocks_per_unit)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'{arg} must be a positive int; received {arg}={value!r}')
        for arg, value in (('clocks', clocks), ('temporal_filters', temporal_filters)):
            if not isinstance(value, bool):
                raise ValueError(f'{arg} must be a bool; received {arg}={value!r}')
        growth = scaled_channels(growth_rate, width)
        units = [_DenseStem(scaled_channels(stem_channels, width), temporal=temporal_filters, name='stem')]
        rates = [1]
        last_of_block = []
        for b, size in enumerate(block_sizes):
            for u, start in enumerate(range(0, size, miniblocks_per_unit)):
                units.append(_DenseUnit(growth, bottleneck_factor * growth, pool_first=(b > 0 and u == 0),
                                        num_miniblocks=min(miniblocks_per_unit, size - start),
                                        temporal=temporal_filters, name=f'block{b + 1}_unit{u}'))
                rates.append(POOL_STRIDE ** (b + 1) if clocks else 1)
            last_of_block.append(len(units) - 1)
        units.append(SkipHeatmapHead(num_keypoints, scaled_channels(skip_channels, width), skip_kernel_size=3,
                                     pre_activation=True, name='head'))
        rates.append(1)
        sources = [[FRAME_SOURCE]] + [[i - 1] for i in range(1, len(units) - 1)] + [last_of_block]
        super().__init__(units, rates=rates, num_subnets=num_subnets, sources=sources, feedback=feedback,
                         frame_channels=frame_channels, **kwargs)
        self.num_keypoints = num_keypoints
        self.width = width
        self.block_sizes = block_sizes
        self.growth_rate = growth_rate
        self.stem_channels = stem_channels
        self.bottleneck_factor = bottleneck_factor
        self.skip_channels = skip_channels
        self.miniblocks_per_unit = miniblocks_per_unit
        self.clocks = clocks
        self.temporal_filters = temporal_filters

    def feedback_channels(self, unit_name, channels):
        """(start, stop) of the fed-back heatmap channels in the unit's output, or None: the stem output is
        [stem features, heatmaps] and every dense unit's output starts with its input, so the heatmaps sit at
        channels [stem channels, stem channels + num_keypoints) of every unit before the head."""
        found = super().feedback_channels(unit_name, channels)
        if not self.feedback or unit_name in (self.pipeline_units[0].name, self.pipeline_units[-1].name):
            return found
        start = scaled_channels(self.stem_channels, self.width)
        return start, start + self.num_keypoints

    @classmethod
    def paper(cls, **overrides):
        """The full-size network of the paper (width 1, growth 64); keyword arguments override."""
        overrides.setdefault('width', PAPER_WIDTH)
        return cls(**overrides)

    def get_config(self):
        config = keras.layers.Layer.get_config(self)
        config.update(num_keypoints=self.num_keypoints, width=self.width, block_sizes=list(self.block_sizes),
                      growth_rate=self.growth_rate, stem_channels=self.stem_channels,
                      bottleneck_factor=self.bottleneck_factor, skip_channels=self.skip_channels,
                      miniblocks_per_unit=self.miniblocks_per_unit, num_subnets=self.num_subnets,
                      clocks=self.clocks, temporal_filters=self.temporal_filters, feedback=self.feedback,
                      frame_channels=self.frame_channels)
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)
