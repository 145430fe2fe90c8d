"""GhostBatchNormalization: batch normalization with statistics per ghost (virtual) batch."""
import keras
from keras import ops

_FLOAT32 = 'float32'


@keras.saving.register_keras_serializable(package='posekit')
class GhostBatchNormalization(keras.layers.BatchNormalization):
    """Batch normalization whose training-mode statistics are computed per ghost group of the batch.

    A drop-in replacement for ``keras.layers.BatchNormalization`` (it is a subclass, with the same
    variables ``gamma``, ``beta``, ``moving_mean``, ``moving_variance``, so weights transfer) for
    channels-last inputs: ``(batch, channels)``, ``(batch, height, width, channels)`` or any
    ``(batch, ..., channels)``; output has the input's shape and the layer's compute dtype.

    Training (``training=True`` and ``layer.trainable``): the batch is split along axis 0 into ghost
    groups, consecutive examples together:

    - ``groups=None``: groups of ``virtual_batch_size`` examples (the batch size must be a multiple of it);
      ``virtual_batch_size=None`` means one group (plain batch normalization);
    - ``groups=[n1, n2, ...]``: groups of these sizes, which must sum to the batch size (e.g. the 3D-labelled
      and the 2D-labelled parts of a mixed batch). ``groups`` takes precedence over ``virtual_batch_size``.

    A batch that does not fit raises ValueError when its size is known while tracing (otherwise TensorFlow
    raises InvalidArgumentError when the reshape or split runs).

    Each group is normalized with its own mean and biased variance over all axes but the last, exactly as
    ``keras.layers.BatchNormalization`` would normalize that group alone. The moving statistics are updated
    once per call from the unweighted mean over groups of the group means and of the group variances:
    ``moving = momentum * moving + (1 - momentum) * mean_g(stat_g)`` (for equal groups the mean of the
    group means is the batch mean; the variance is the within-group variance the groups were normalized
    with, not the whole-batch variance).

    Inference (``training`` false, or ``trainable=False``): normalizes with the moving statistics, like
    ``keras.layers.BatchNormalization``.

    Statistics and normalization are computed in float32 whatever the dtype policy (mixed-precision safe).
    The moving statistics are created with ``aggregation='mean'``, so under ``tf.distribute``
    (MirroredStrategy, MultiWorkerMirroredStrategy) every replica's copy receives the mean of the
    per-replica updates and the replicas stay identical; groups are formed within each replica's local batch.

    Args:
        virtual_batch_size: positive int or None; examples per ghost group when ``groups`` is None.
        groups: None or a non-empty list of positive ints, the sizes of the groups.
        momentum, epsilon, center, scale, *_initializer, *_regularizer, *_constraint: as in
            ``keras.layers.BatchNormalization``.
        axis: must be -1 (channels last).
        **kwargs: base layer arguments (``name``, ``dtype``, ``trainable``...). ``synchronized`` and
            ``renorm`` are accepted only as False (unsupported).
    """

    def __init__(self, virtual_batch_size=16, groups=None, momentum=0.99, epsilon=1e-3, center=True,
                 scale=True, beta_initializer='zeros', gamma_initializer='ones',
                 moving_mean_initializer='zeros', moving_variance_initializer='ones', beta_regularizer=None,
                 gamma_regularizer=None, beta_constraint=None, gamma_constraint=None, axis=-1, **kwargs):
        if virtual_batch_size is not None and (isinstance(virtual_batch_size, bool)
                                               or not isinstance(virtual_batch_size, int)
                                               or virtual_batch_size < 1):
            raise ValueError('virtual_batch_size must be a positive int or None; received '
                             f'virtual_batch_size={virtual_batch_size!r}')
        if groups is not None:
            groups = list(groups)
            if not groups or any(isinstance(g, bool) or not isinstance(g, int) or g < 1 for g in groups):
                raise ValueError(f'groups must be None or a non-empty list of positive ints; received '
                                 f'groups={groups!r}')
        if axis != -1:
            raise ValueError(f'GhostBatchNormalization supports channels-last inputs only (axis=-1); '
                             f'received axis={axis!r}')
        for name in ('synchronized', 'renorm'):
            if kwargs.get(name):
                raise ValueError(f'GhostBatchNormalization does not support {name}=True; received '
                                 f'{name}={kwargs[name]!r}')
        super().__init__(axis=axis, momentum=momentum, epsilon=epsilon, center=center, scale=scale,
                         beta_initializer=beta_initializer, gamma_initializer=gamma_initializer,
                         moving_mean_initializer=moving_mean_initializer,
                         moving_variance_initializer=moving_variance_initializer,
                         beta_regularizer=beta_regularizer, gamma_regularizer=gamma_regularizer,
                         beta_constraint=beta_constraint, gamma_constraint=gamma_constraint, **kwargs)
        self.virtual_batch_size = virtual_batch_size
        self.groups = groups

    def build(self, input_shape):
        if len(input_shape) < 2:
            raise ValueError(f'GhostBatchNormalization needs inputs of rank >= 2 (batch, ..., channels); '
                             f'received input_shape={tuple(input_shape)}')
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f'the channel axis must be known; received input_shape={tuple(input_shape)}')
        shape = (channels,)
        if self.scale:
            self.gamma = self.add_weight(shape=shape, name='gamma', initializer=self.gamma_initializer,
                                         regularizer=self.gamma_regularizer, constraint=self.gamma_constraint,
                                         trainable=True, autocast=False)
        if self.center:
            self.beta = self.add_weight(shape=shape, name='beta', initializer=self.beta_initializer,
                                        regularizer=self.beta_regularizer, constraint=self.beta_constraint,
                                        trainable=True, autocast=False)
        self.moving_mean = self.add_weight(shape=shape, name='moving_mean',
                                           initializer=self.moving_mean_initializer, trainable=False,
                                           autocast=False, aggregation='mean')
        self.moving_variance = self.add_weight(shape=shape, name='moving_variance',
                                               initializer=self.moving_variance_initializer, trainable=False,
                                               autocast=False, aggregation='mean')
        self.input_spec = keras.layers.InputSpec(ndim=len(input_shape), axes={-1: channels})
        self._reduction_axes = list(range(len(input_shape) - 1))

    def _group_statistics(self, x):
        """Per-group normalization statistics, broadcastable to x, and the group-averaged [C] statistics."""
        batch = x.shape[0]
        ndim = len(x.shape)
        if self.groups is not None:
            if batch is not None and batch != sum(self.groups):
                raise ValueError(f'groups={self.groups} must sum to the batch size; received a batch of '
                                 f'{batch} (input shape {tuple(x.shape)})')
            split_points = [sum(self.groups[:i + 1]) for i in range(len(self.groups) - 1)]
            parts = ops.split(x, split_points, axis=0) if split_points else [x]
            moments = [ops.moments(p, axes=self._reduction_axes, keepdims=True) for p in parts]
            means = [m for m, _ in moments]
            variances = [v for _, v in moments]
            # Per-example statistics: repeat each group's statistics over its examples.
            reps = ops.convert_to_tensor(self.groups, dtype='int32')
            mean_b = ops.repeat(ops.concatenate(means, axis=0), reps, axis=0)
            var_b = ops.repeat(ops.concatenate(variances, axis=0), reps, axis=0)
            group_mean = ops.mean(ops.concatenate(means, axis=0), axis=self._reduction_axes)
            group_var = ops.mean(ops.concatenate(variances, axis=0), axis=self._reduction_axes)
            return x, mean_b, var_b, group_mean, group_var
        size = self.virtual_batch_size
        if size is None:
            mean, var = ops.moments(x, axes=self._reduction_axes, keepdims=True)
            return x, mean, var, ops.reshape(mean, (-1,)), ops.reshape(var, (-1,))
        if batch is not None and batch % size:
            raise ValueError(f'the batch size must be a multiple of virtual_batch_size={size}; received a '
                             f'batch of {batch} (input shape {tuple(x.shape)})')
        channels = x.shape[-1]
        inner = [-1 if d is None else d for d in x.shape[1:]]
        if any(d == -1 for d in inner[:-1]):
            inner = list(ops.shape(x)[1:])
        grouped = ops.reshape(x, [-1, size] + inner)  # [G, size, ..., C]
        axes = list(range(1, ndim))
        mean, var = ops.moments(grouped, axes=axes, keepdims=True)  # [G, 1, ..., 1, C]
        group_mean = ops.reshape(ops.mean(mean, axis=[0] + axes[:-1]), (channels,))
        group_var = ops.reshape(ops.mean(var, axis=[0] + axes[:-1]), (channels,))
        return grouped, mean, var, group_mean, group_var

    def call(self, inputs, training=None):
        if not (training and self.trainable):
            return super().call(inputs, training=False)
        x = ops.cast(inputs, _FLOAT32)
        grouped, mean, var, group_mean, group_var = self._group_statistics(x)
        inv = ops.rsqrt(var + self.epsilon)
        if self.scale:
            inv = inv * ops.cast(self.gamma, _FLOAT32)
        offset = -mean * inv
        if self.center:
            offset = offset + ops.cast(self.beta, _FLOAT32)
        out = grouped * inv + offset
        if len(out.shape) != len(x.shape):  # [G, size, ..., C] -> [B, ..., C]
            out = ops.reshape(out, ops.shape(x))
        self.moving_mean.assign(self.moving_mean * self.momentum + group_mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + group_var * (1.0 - self.momentum))
        return ops.cast(out, self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(virtual_batch_size=self.virtual_batch_size,
                      groups=None if self.groups is None else list(self.groups))
        return config
