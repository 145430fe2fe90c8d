"""Non-local block over graph nodes, as used between the graph convolutions of SemGCN.

Reference: L. Zhao et al., "Semantic Graph Convolutional Networks for 3D Human Pose Regression",
CVPR 2019 (its ``_GraphNonLocal``), after X. Wang et al., "Non-local Neural Networks", CVPR 2018
(dot-product form). For node features x [B, N, C] and C_i = ``inter_channels``::

  theta = x Wt + bt,  phi = pool(x Wp + bp),  g = pool(x Wg + bg)        [B, N or G, C_i]
  y = (theta phi^T / M) g                                                [B, N, C_i]
  z = x + BN(y Wz + bz)                                                  [B, N, C]

``pool`` max-pools node features within each of G equal-size ``groups`` (SemGCN's sub-sampling,
e.g. pairs of neighbouring joints), or is the identity when ``groups`` is None; M is the number of
pooled positions (G or N). BN's scale starts at zero, so the block starts as the identity.
Every output node depends on every input node (unlike a graph convolution).
"""

from __future__ import annotations

from typing import Optional, Sequence

import keras
import numpy as np
from keras import ops


def non_local_param_count(channels: int, inter_channels: Optional[int] = None,
                          trainable_only: bool = True) -> int:
    """Exact number of parameters of ``GraphNonLocal`` on ``channels`` input features.

    3 (C C_i + C_i) for theta, phi, g; C_i C + C for the output projection; 2 C for the BN scale
    and offset, plus 2 C moving statistics unless ``trainable_only``.
    """
    c = int(channels)
    ci = c // 2 if inter_channels is None else int(inter_channels)
    count = 3 * (c * ci + ci) + ci * c + c + 2 * c
    if not trainable_only:
        count += 2 * c
    return count


@keras.saving.register_keras_serializable(package='posekit')
class GraphNonLocal(keras.layers.Layer):
    """Residual non-local (self-attention) block over the nodes of a graph.

    Input and output: [B, N, C] node features (same shape; residual).

    Args:
      inter_channels: C_i of the embeddings; None means C // 2 (SemGCN).
      groups: None, or a list of G equal-size lists of node indices; phi and g are max-pooled
        within each group (SemGCN's sub-sampling). Every index must be in [0, N).
      kernel_initializer: for the four projections.
      bn_momentum: momentum of the output BatchNormalization (0.9 = PyTorch's 0.1).
      **kwargs: passed to ``keras.layers.Layer``.
    """

    def __init__(self, inter_channels: Optional[int] = None,
                 groups: Optional[Sequence[Sequence[int]]] = None,
                 kernel_initializer='glorot_uniform', bn_momentum: float = 0.9, **kwargs):
        super().__init__(**kwargs)
        if inter_channels is not None and (isinstance(inter_channels, bool) or
                                           int(inter_channels) != inter_channels or
                                           inter_channels <= 0):
            raise ValueError(f'inter_channels must be None or a positive int, received '
                             f'{inter_channels!r}')
        if groups is not None:
            groups = [[int(i) for i in g] for g in groups]
            sizes = {len(g) for g in groups}
            if not groups or len(sizes) != 1 or 0 in sizes:
                raise ValueError(f'groups must be non-empty lists of equal size, received '
                                 f'{groups!r}')
        self.inter_channels = None if inter_channels is None else int(inter_channels)
        self.groups = groups
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bn_momentum = float(bn_momentum)
        self.bn = keras.layers.BatchNormalization(
            momentum=self.bn_momentum, gamma_initializer='zeros', dtype=self.dtype_policy,
            name='bn')

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[-1] is None:
            raise ValueError(f'GraphNonLocal input must be [batch, nodes, channels] with known '
                             f'channels, received shape {tuple(input_shape)}')
        c = int(input_shape[-1])
        n = input_shape[1]
        if self.groups is not None and n is not None:
            flat = np.asarray(self.groups).reshape(-1)
            if flat.min() < 0 or flat.max() >= n:
                raise ValueError(f'groups must index nodes in [0, {n}), received {self.groups!r}')
        ci = c // 2 if self.inter_channels is None else self.inter_channels
        if ci <= 0:
            raise ValueError(f'inter_channels resolved to {ci} for {c} input channels')
        init = self.kernel_initializer
        self.theta_kernel = self.add_weight(name='theta_kernel', shape=(c, ci), initializer=init)
        self.theta_bias = self.add_weight(name='theta_bias', shape=(ci,), initializer='zeros')
        self.phi_kernel = self.add_weight(name='phi_kernel', shape=(c, ci), initializer=init)
        self.phi_bias = self.add_weight(name='phi_bias', shape=(ci,), initializer='zeros')
        self.g_kernel = self.add_weight(name='g_kernel', shape=(c, ci), initializer=init)
        self.g_bias = self.add_weight(name='g_bias', shape=(ci,), initializer='zeros')
        self.out_kernel = self.add_weight(name='out_kernel', shape=(ci, c), initializer=init)
        self.out_bias = self.add_weight(name='out_bias', shape=(c,), initializer='zeros')
        self.bn.build(tuple(input_shape))

    def _pool(self, t):
        if self.groups is None:
            return t
        idx = np.asarray(self.groups, np.int32)  # [G, S]
        t = ops.take(t, idx.reshape(-1), axis=1)  # [B, G * S, C_i]
        t = ops.reshape(t, (-1, idx.shape[0], idx.shape[1], ops.shape(t)[-1]))
        return ops.max(t, axis=2)

    def call(self, inputs, training=None):
        x = inputs
        theta = ops.matmul(x, self.theta_kernel) + self.theta_bias
        phi = self._pool(ops.matmul(x, self.phi_kernel) + self.phi_bias)
        g = self._pool(ops.matmul(x, self.g_kernel) + self.g_bias)
        n_pooled = phi.shape[1] if phi.shape[1] is not None else ops.shape(phi)[1]
        f = ops.einsum('bic,bjc->bij', theta, phi) / ops.cast(n_pooled, x.dtype)
        y = ops.einsum('bij,bjc->bic', f, g)
        z = ops.matmul(y, self.out_kernel) + self.out_bias
        return x + self.bn(z, training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({
            'inter_channels': self.inter_channels,
            'groups': self.groups,
            'kernel_initializer': keras.initializers.serialize(self.kernel_initializer),
            'bn_momentum': self.bn_momentum,
        })
        return config
