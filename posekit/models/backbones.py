"""Convolutional backbones for MeTRAbs: EfficientNetV2 and ResNet50 with ghost BN and max-norm kernels.

:func:`build_backbone` builds a ``keras.applications`` network (random initialisation, or weights from a
user checkpoint), then rebuilds it layer by layer (``keras.models.clone_model`` with a clone function)
with two substitutions, copying every weight across:

- every ``BatchNormalization`` becomes a :class:`posekit.layers.GhostBatchNormalization` (statistics per
  ghost batch of ``ghost_batch_size`` examples, or per group of the batch given by ``ghost_groups``, e.g.
  the 3D- and the 2D-labelled parts), keeping the layer's name, momentum and epsilon;
- every ``Dropout`` (EfficientNetV2's stochastic depth) becomes a :class:`posekit.layers.GlobalBatchDropout`
  (the same mask for a data-parallel batch as for one process);
- every convolution kernel gets a ``keras.constraints.MaxNorm(max_norm)`` constraint: the L2 norm over
  the kernel's spatial and input axes is at most ``max_norm``, i.e. per output channel for a Conv2D
  kernel ``[kh, kw, in, out]`` (axes 0, 1, 2) and per channel for a depthwise kernel
  ``[kh, kw, channels, multiplier]`` (axes 0, 1). Keras optimizers project constrained variables after
  every ``apply_gradients``.

Input: images ``[B, H, W, 3]`` float RGB in [0, 1] (any float dtype). The network's own normalisation
is part of the model (EfficientNetV2: ``keras.applications``' built-in preprocessing on the [0, 255]
range; ResNet50: subtraction of the ImageNet channel means in RGB order on the [0, 255] range).
Output: features ``[B, ceil(H / s), ceil(W / s), C]`` in the compute dtype of the policy, where ``s`` is
the output stride (32, or 16 when cut after the last stride-16 stage).

Named backbones (``BACKBONES``): ``'efficientnetv2-b0'`` ... ``'-b3'``, ``'-s'``, ``'-m'``, ``'-l'``,
``'resnet50'``, and ``'mobile_small'``: EfficientNetV2-B0 at half width and half depth, cut at output
stride 16 (8x8 features at 128 px, 0.2 M parameters). ``mobile_small`` at 128 px is the default: a full
MeTRAbs training step (batch 32, 128 px, float32) took 150-250 ms with it on the project's 2-core Xeon
(shared with other jobs), against 0.7-1.9 s with the full-size EfficientNetV2-B0 (4x4 features) and
5-6 s with ResNet50. On this CPU ``mixed_bfloat16`` did not speed up these small models.

Mixed precision: the layers take the global Keras dtype policy at build time (build inside
``posekit.train.precision.policy_scope``), or the policy given as ``dtype_policy``.
"""
from __future__ import annotations

import keras

#: Default limit of the L2 norm of each convolution filter (MeTRAbs trains with 20).
DEFAULT_MAX_NORM = 20.0
#: Examples per ghost batch (MeTRAbs: 16 per GPU-batch part).
DEFAULT_GHOST_BATCH_SIZE = 16
#: Default backbone and input size: small enough for a few training steps per second on 2 CPU cores.
DEFAULT_BACKBONE = 'mobile_small'
DEFAULT_INPUT_SHAPE = (128, 128, 3)
#: Images enter the backbone in [0, 1]; keras.applications networks expect [0, 255].
PIXEL_MAX = 255.0
#: ImageNet channel means on the [0, 255] range, RGB order (subtracted before ResNet50).
IMAGENET_MEAN_RGB_255 = (123.68, 116.779, 103.939)

# name -> (keras.applications constructor name, width coefficient, depth coefficient, default size).
# The coefficients are those keras.applications uses for the variants; `width` and `depth`
# multiply them.
_EFFICIENTNETV2 = {
    'efficientnetv2-b0': ('EfficientNetV2B0', 1.0, 1.0, 224),
    'efficientnetv2-b1': ('EfficientNetV2B1', 1.0, 1.1, 240),
    'efficientnetv2-b2': ('EfficientNetV2B2', 1.1, 1.2, 260),
    'efficientnetv2-b3': ('EfficientNetV2B3', 1.2, 1.4, 300),
    'efficientnetv2-s': ('EfficientNetV2S', 1.0, 1.0, 384),
    'efficientnetv2-m': ('EfficientNetV2M', 1.0, 1.0, 480),
    'efficientnetv2-l': ('EfficientNetV2L', 1.0, 1.0, 480),
}
# Presets: name -> (base network, width, depth, output stride).
_PRESETS = {'mobile_small': ('efficientnetv2-b0', 0.5, 0.5, 16)}
BACKBONES = tuple(_EFFICIENTNETV2) + ('resnet50',) + tuple(_PRESETS)
OUTPUT_STRIDES = (16, 32)
# Name of the last layer at output stride 16 (the end of the last stride-16 stage).
_STRIDE16_CUT_PREFIX_EFFNETV2 = 'block5'  # stage 5 of every EfficientNetV2 variant runs at stride 16
_STRIDE16_CUT_RESNET50 = 'conv4_block6_out'


def build_backbone(name: str = DEFAULT_BACKBONE, input_shape=DEFAULT_INPUT_SHAPE, width: float | None = None,
                   depth: float | None = None, output_stride: int | None = None,
                   ghost_batch_size: int | None = DEFAULT_GHOST_BATCH_SIZE, ghost_groups=None,
                   max_norm: float | None = DEFAULT_MAX_NORM, checkpoint: str | None = None,
                   dtype_policy=None) -> keras.Model:
    """Builds a feature extractor with ghost batch normalization and max-norm-constrained kernels.

    Args:
      name: one of ``BACKBONES`` (module docstring).
      input_shape: ``(H, W, 3)``; H and W may be None for variable-size input (then the Metrabs head
        needs its stride given explicitly).
      width: multiplier of the channel counts (EfficientNetV2 only; default 1, or the preset's).
      depth: multiplier of the block repeats (EfficientNetV2 only; default 1, or the preset's).
      output_stride: 32 (whole network) or 16 (cut after the last stride-16 stage); default 32, or the
        preset's.
      ghost_batch_size: examples per ghost batch (``GhostBatchNormalization(virtual_batch_size=...)``);
        None: the whole batch is one group.
      ghost_groups: None, or a list of group sizes summing to the batch size (e.g. ``[n3d, n2d]``),
        which takes precedence over ``ghost_batch_size``.
      max_norm: limit of each filter's L2 norm (positive), or None for unconstrained kernels.
      checkpoint: None (random initialisation), or the path of a Keras weights file of the
        ``keras.applications`` network of the same name, width, depth and ``include_top=False``
        (e.g. ImageNet weights downloaded separately), loaded before the layers are substituted.
      dtype_policy: None (the global Keras policy at build time) or a policy name such as
        ``'mixed_bfloat16'`` applied to every layer.

    Returns:
      A functional ``keras.Model`` named ``name``: images [B, H, W, 3] in [0, 1] ->
      features [B, H/s, W/s, C].
    """
    if name not in BACKBONES:
        raise ValueError(f'name must be one of {BACKBONES}; received name={name!r}')
    base, preset_width, preset_depth, preset_stride = _PRESETS.get(name, (name, 1.0, 1.0, 32))
    width = preset_width if width is None else width
    depth = preset_depth if depth is None else depth
    output_stride = preset_stride if output_stride is None else output_stride
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(f'input_shape must be (H, W, 3); received input_shape={input_shape!r}')
    for arg, value in (('width', width), ('depth', depth)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f'{arg} must be a positive number; received {arg}={value!r}')
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f'output_stride must be one of {OUTPUT_STRIDES}; received output_stride={output_stride!r}')
    if max_norm is not None and (isinstance(max_norm, bool) or not isinstance(max_norm, (int, float))
                                 or not max_norm > 0):
        raise ValueError(f'max_norm must be a positive number or None; received max_norm={max_norm!r}')
    if base == 'resnet50' and (width != 1 or depth != 1):
        raise ValueError(f'resnet50 supports only width=1 and depth=1; received width={width!r}, depth={depth!r}')

    source = _build_keras_application(base, input_shape, float(width), float(depth), checkpoint)
    if output_stride == 16:
        source = keras.Model(source.inputs, source.get_layer(_stride16_cut(source, base)).output)

    from posekit.layers.ghost_bn import GhostBatchNormalization
    from posekit.layers.global_dropout import GlobalBatchDropout

    def clone(layer):
        config = layer.get_config()
        if dtype_policy is not None and not isinstance(layer, keras.layers.InputLayer):
            config['dtype'] = dtype_policy
        if isinstance(layer, keras.layers.BatchNormalization):
            return GhostBatchNormalization(
                virtual_batch_size=ghost_batch_size, groups=ghost_groups, momentum=layer.momentum,
                epsilon=layer.epsilon, center=layer.center, scale=layer.scale, name=layer.name,
                dtype=config.get('dtype'))
        if type(layer) is keras.layers.Dropout:  # stochastic depth: one mask for a data-parallel batch
            return GlobalBatchDropout.from_config(config)
        if max_norm is not None and isinstance(layer, keras.layers.DepthwiseConv2D):
            config['depthwise_constraint'] = keras.constraints.MaxNorm(max_norm, axis=[0, 1])
        elif max_norm is not None and isinstance(layer, keras.layers.Conv2D):
            config['kernel_constraint'] = keras.constraints.MaxNorm(max_norm, axis=[0, 1, 2])
        return layer.__class__.from_config(config)

    def call(layer, *args, **kwargs):
        # BatchNormalization nodes record a `mask=None` argument that the replacement need not accept.
        if isinstance(layer, GhostBatchNormalization) and kwargs.get('mask', True) is None:
            del kwargs['mask']
        return layer(*args, **kwargs)

    model = keras.models.clone_model(source, clone_function=clone, call_function=call)
    _copy_weights(source, model)
    return keras.Model(model.inputs, model.outputs, name=name)


def _build_keras_application(base, input_shape, width, depth, checkpoint):
    """The keras.applications network (include_top=False) behind a [0, 1] -> [0, 255] rescaling."""
    inputs = keras.Input(shape=input_shape, name='images')
    x = keras.layers.Rescaling(PIXEL_MAX, name='to_pixel_range')(inputs)
    if base == 'resnet50':
        x = keras.layers.Normalization(mean=IMAGENET_MEAN_RGB_255, variance=(1.0, 1.0, 1.0),
                                       name='subtract_imagenet_mean')(x)
        return keras.applications.ResNet50(include_top=False, weights=checkpoint, input_tensor=x)
    constructor_name, base_width, base_depth, default_size = _EFFICIENTNETV2[base]
    if width == 1 and depth == 1:
        constructor = getattr(keras.applications, constructor_name)
        return constructor(include_top=False, weights=checkpoint, input_tensor=x, include_preprocessing=True)
    # Scaled variants: the generic builder behind keras.applications' EfficientNetV2 constructors.
    from keras.src.applications.efficientnet_v2 import EfficientNetV2
    return EfficientNetV2(width_coefficient=base_width * width, depth_coefficient=base_depth * depth,
                          default_size=default_size, name=base, include_top=False, weights=checkpoint,
                          input_tensor=x, include_preprocessing=True)


def _stride16_cut(model, base):
    """Name of the layer that ends the last stride-16 stage."""
    if base == 'resnet50':
        return _STRIDE16_CUT_RESNET50
    return [layer.name for layer in model.layers if layer.name.startswith(_STRIDE16_CUT_PREFIX_EFFNETV2)][-1]


def _copy_weights(source, target):
    """Copies every weight of ``source`` into the same-named layer of ``target`` (shapes must agree)."""
    for src_layer in source.layers:
        src = src_layer.weights
        if not src:
            continue
        dst = target.get_layer(src_layer.name).weights
        src_by_name = {w.name: w for w in src}
        if len(src_by_name) != len(src) or {w.name for w in dst} != set(src_by_name):
            raise ValueError(f'cannot transfer the weights of layer {src_layer.name!r}: variables '
                             f'{[w.name for w in src]} vs {[w.name for w in dst]}')
        for w in dst:
            w.assign(src_by_name[w.name].value)
