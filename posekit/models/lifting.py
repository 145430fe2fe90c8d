"""2D-to-3D pose lifting networks: the residual GCN of Liu et al. (ECCV 2020, Fig. 5) and the
fully-connected baseline of Martinez et al. (ICCV 2017).

Both map 2D joints ``poses2d`` [B, N, 2] (image coordinates normalized to about [-1, 1] as in the
lifting papers' pipeline; any 2D input scale works) to root-relative 3D joints [B, N, 3] in the
camera frame (x right, y down, z forward), in the unit of the training targets (mm in posekit's
lifting experiments).

GCN lifter (``build_gcn_lifter``)::

  GraphConv(2 -> C) - BN - ReLU [- dropout] [- non-local]
  n_blocks x { x + [GraphConv(C -> C) - BN - ReLU [- dropout]] x 2 } [- non-local]
  GraphConv(C -> 3)

Every graph convolution uses the same sharing / decouple / normalization, so one config builds
any variant of the paper's tables (``SHARING_VARIANTS`` lists the 8 of Table 3), and
``channels_for_budget`` finds the width of a variant for a parameter budget (Table 4).
Parameter counts here follow the PyTorch convention of the papers: trainable parameters only
(BatchNorm moving statistics excluded) unless ``trainable_only=False``.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import keras

from posekit.layers.global_dropout import GlobalBatchDropout

from posekit.layers.graph_conv import GraphConv, graph_conv_param_count, validate_adjacency
from posekit.layers.nonlocal_block import GraphNonLocal, non_local_param_count

#: The 8 weight-sharing variants of Liu et al.'s Table 3, as GraphConv arguments.
SHARING_VARIANTS: Dict[str, Dict[str, object]] = {
    'full': dict(sharing='full', decouple=False),  # vanilla GCN
    'full_dec': dict(sharing='full', decouple=True),
    'conv_style': dict(sharing='conv_style', decouple=True),
    'pre_agg': dict(sharing='pre_agg', decouple=False),
    'pre_agg_dec': dict(sharing='pre_agg', decouple=True),
    'post_agg': dict(sharing='post_agg', decouple=False),
    'post_agg_dec': dict(sharing='post_agg', decouple=True),
    'no_sharing': dict(sharing='no_sharing', decouple=True),
}
#: Parameter budgets of Liu et al.'s Table 4 (about 4.2M, 2.1M, 1.05M).
PARAM_BUDGETS = (4_200_000, 2_100_000, 1_050_000)
#: How ``channels_for_budget`` rounds a width to a parameter budget.
BUDGET_ROUNDINGS = ('nearest', 'at_least')
#: BatchNorm momentum equivalent to PyTorch's default 0.1 used by SemGCN and Liu et al.
BN_MOMENTUM = 0.9
#: Coordinates per joint of the input (2D) and output (3D).
INPUT_DIM = 2
OUTPUT_DIM = 3


def _check_positive_int(name, value, minimum=1):
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f'{name} must be an int >= {minimum}, received {value!r}')
    return int(value)


def _check_dropout(dropout):
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f'dropout must be in [0, 1), received {dropout!r}')
    return float(dropout)


def build_gcn_lifter(adjacency, channels: int = 128, n_blocks: int = 4,
                     sharing: str = 'pre_agg', decouple: bool = True,
                     normalization: str = 'symmetric', dropout: float = 0.0,
                     non_local: bool = False,
                     non_local_groups: Optional[Sequence[Sequence[int]]] = None,
                     center: Optional[int] = None, bn_momentum: float = BN_MOMENTUM,
                     kernel_initializer='glorot_uniform', kernel_regularizer=None,
                     input_dim: int = INPUT_DIM, output_dim: int = OUTPUT_DIM,
                     name: str = 'gcn_lifter') -> keras.Model:
    """Residual graph-convolutional lifter (Liu et al. Fig. 5; SemGCN's layout).

    Args:
      adjacency: [N, N] 0/1 skeleton adjacency without self-loops (``JointInfo.adjacency()``).
      channels: features per node C of every hidden layer (128 in the paper's Table 3).
      n_blocks: residual blocks of two graph convolutions (4 in the paper).
      sharing, decouple, normalization, center: passed to every ``GraphConv``.
      dropout: rate after each hidden ReLU (0 disables).
      non_local: add a ``GraphNonLocal`` after the input layer and after each residual block
        (SemGCN); ``non_local_groups`` is its optional node grouping for sub-sampling.
      bn_momentum: BatchNormalization momentum (0.9 = PyTorch's 0.1).
      kernel_initializer, kernel_regularizer: for the graph convolutions.
      input_dim, output_dim: coordinates per joint in and out (2 and 3).
      name: model name.

    Returns:
      functional ``keras.Model``: ``poses2d`` [B, N, input_dim] -> [B, N, output_dim] root-relative
      3D (unit of the targets, e.g. mm), camera frame.
    """
    adj = validate_adjacency(adjacency)
    n = adj.shape[0]
    channels = _check_positive_int('channels', channels)
    n_blocks = _check_positive_int('n_blocks', n_blocks, minimum=0)
    dropout = _check_dropout(dropout)
    gconv_kwargs = dict(adjacency=adj, sharing=sharing, decouple=decouple,
                        normalization=normalization, center=center,
                        kernel_initializer=kernel_initializer,
                        kernel_regularizer=kernel_regularizer)

    def gconv_bn_relu(x, units, prefix):
        x = GraphConv(units, name=f'{prefix}_gconv', **gconv_kwargs)(x)
        x = keras.layers.BatchNormalization(momentum=bn_momentum, synchronized=True, name=f'{prefix}_bn')(x)
        x = keras.layers.ReLU(name=f'{prefix}_relu')(x)
        if dropout > 0:
            x = GlobalBatchDropout(dropout, name=f'{prefix}_dropout')(x)
        return x

    def maybe_non_local(x, prefix):
        if non_local:
            x = GraphNonLocal(groups=non_local_groups, bn_momentum=bn_momentum,
                              name=f'{prefix}_nonlocal')(x)
        return x

    inputs = keras.Input((n, input_dim), name='poses2d')
    x = gconv_bn_relu(inputs, channels, 'input')
    x = maybe_non_local(x, 'input')
    for b in range(n_blocks):
        residual = x
        x = gconv_bn_relu(x, channels, f'block{b}_1')
        x = gconv_bn_relu(x, channels, f'block{b}_2')
        x = keras.layers.Add(name=f'block{b}_add')([residual, x])
        x = maybe_non_local(x, f'block{b}')
    outputs = GraphConv(output_dim, name='output_gconv', **gconv_kwargs)(x)
    return keras.Model(inputs, outputs, name=name)


def gcn_lifter_param_count(adjacency, channels: int = 128, n_blocks: int = 4,
                           sharing: str = 'pre_agg', decouple: bool = True,
                           normalization: str = 'symmetric', dropout: float = 0.0,
                           non_local: bool = False,
                           non_local_groups: Optional[Sequence[Sequence[int]]] = None,
                           center: Optional[int] = None, bn_momentum: float = BN_MOMENTUM,
                           kernel_initializer='glorot_uniform', kernel_regularizer=None,
                           input_dim: int = INPUT_DIM, output_dim: int = OUTPUT_DIM,
                           name: str = 'gcn_lifter', trainable_only: bool = True) -> int:
    """Exact parameter count of ``build_gcn_lifter(...)`` without building it.

    Takes the builder's arguments (those that do not change the count are accepted and ignored,
    so a builder config can be passed as is). Trainable parameters only unless
    ``trainable_only=False`` (then BatchNorm moving statistics are included, = count_params()).
    """
    del dropout, non_local_groups, center, bn_momentum, kernel_initializer, kernel_regularizer
    del name
    adj = validate_adjacency(adjacency)
    channels = _check_positive_int('channels', channels)
    n_blocks = _check_positive_int('n_blocks', n_blocks, minimum=0)
    conv = dict(adjacency=adj, sharing=sharing, decouple=decouple, normalization=normalization)
    n_hidden = 2 * n_blocks
    count = graph_conv_param_count(input_dim=input_dim, units=channels, **conv)
    count += n_hidden * graph_conv_param_count(input_dim=channels, units=channels, **conv)
    count += graph_conv_param_count(input_dim=channels, units=output_dim, **conv)
    bn_per_layer = 2 * channels if trainable_only else 4 * channels
    count += (1 + n_hidden) * bn_per_layer
    if non_local:
        count += (1 + n_blocks) * non_local_param_count(channels, trainable_only=trainable_only)
    return count


def channels_for_budget(target_params: int, adjacency, min_channels: int = 1,
                        max_channels: int = 8192, rounding: str = 'nearest', **variant) -> int:
    """Channel count C of a lifter for a parameter budget (``gcn_lifter_param_count``).

    Args:
      target_params: budget, e.g. one of ``PARAM_BUDGETS``.
      adjacency: the skeleton adjacency of the lifter.
      min_channels, max_channels: search range (inclusive).
      rounding: 'nearest' (the C whose count is closest to the budget; ties go to the smaller C)
        or 'at_least' (the smallest C whose count reaches the budget: Liu et al.'s widths for
        4.2M, 512 / 128 / 128 for decoupled full / pre_agg / post_agg on ``h36m_16``, paper,
        Table 4 text; nearest gives 511 for full).
      **variant: any other ``build_gcn_lifter`` / ``gcn_lifter_param_count`` argument except
        ``channels`` (sharing, decouple, normalization, n_blocks, non_local, ...).
    Returns:
      int C (``max_channels`` when even that stays below the budget). The count grows strictly
      with C, so this is a bisection on exact counts.
    """
    if rounding not in BUDGET_ROUNDINGS:
        raise ValueError(f'rounding must be one of {BUDGET_ROUNDINGS}, received {rounding!r}')
    if 'channels' in variant:
        raise ValueError(f'channels is what channels_for_budget searches; received '
                         f'channels={variant["channels"]!r}')
    target = _check_positive_int('target_params', target_params)
    lo = _check_positive_int('min_channels', min_channels)
    hi = _check_positive_int('max_channels', max_channels)
    if hi < lo:
        raise ValueError(f'max_channels must be >= min_channels={lo}, received {hi}')

    def count(c):
        return gcn_lifter_param_count(adjacency, channels=c, **variant)

    if count(hi) <= target:
        return hi
    # smallest c in [lo, hi] with count(c) >= target
    a, b = lo, hi
    while a < b:
        mid = (a + b) // 2
        if count(mid) >= target:
            b = mid
        else:
            a = mid + 1
    if rounding == 'nearest' and a > lo and target - count(a - 1) <= count(a) - target:
        return a - 1
    return a


def build_fc_baseline(n_joints: int, hidden: int = 1024, n_blocks: int = 2,
                      dropout: float = 0.5, bn_momentum: float = BN_MOMENTUM,
                      kernel_initializer='he_normal', input_dim: int = INPUT_DIM,
                      output_dim: int = OUTPUT_DIM, name: str = 'fc_baseline') -> keras.Model:
    """Fully-connected lifting baseline of Martinez et al. 2017 ("a simple yet effective baseline").

    Flatten [B, N, 2] -> Dense(hidden) - BN - ReLU - dropout, then ``n_blocks`` residual blocks
    x + [Dense(hidden) - BN - ReLU - dropout] x 2, then Dense(3N) reshaped to [B, N, 3].
    (The original's max-norm weight clipping is not included.)

    Returns:
      functional ``keras.Model``: ``poses2d`` [B, N, input_dim] -> [B, N, output_dim]
      root-relative 3D in the unit of the targets (e.g. mm), camera frame.
    """
    n_joints = _check_positive_int('n_joints', n_joints)
    hidden = _check_positive_int('hidden', hidden)
    n_blocks = _check_positive_int('n_blocks', n_blocks, minimum=0)
    dropout = _check_dropout(dropout)

    def dense_bn_relu(x, prefix):
        x = keras.layers.Dense(hidden, kernel_initializer=kernel_initializer,
                               name=f'{prefix}_dense')(x)
        x = keras.layers.BatchNormalization(momentum=bn_momentum, synchronized=True, name=f'{prefix}_bn')(x)
        x = keras.layers.ReLU(name=f'{prefix}_relu')(x)
        if dropout > 0:
            x = GlobalBatchDropout(dropout, name=f'{prefix}_dropout')(x)
        return x

    inputs = keras.Input((n_joints, input_dim), name='poses2d')
    x = keras.layers.Flatten(name='flatten')(inputs)
    x = dense_bn_relu(x, 'input')
    for b in range(n_blocks):
        residual = x
        x = dense_bn_relu(x, f'block{b}_1')
        x = dense_bn_relu(x, f'block{b}_2')
        x = keras.layers.Add(name=f'block{b}_add')([residual, x])
    x = keras.layers.Dense(n_joints * output_dim, kernel_initializer=kernel_initializer,
                           name='output_dense')(x)
    outputs = keras.layers.Reshape((n_joints, output_dim), name='poses3d')(x)
    return keras.Model(inputs, outputs, name=name)
