"""Graph convolution with every weight-sharing scheme of Liu et al., ECCV 2020.

Reference: K. Liu, R. Ding, Z. Zou, L. Wang, W. Tang, "A Comprehensive Study of Weight Sharing in
Graph Networks for 3D Human Pose Estimation", ECCV 2020 (equation numbers below are the paper's).

Notation: a layer maps node features ``x`` [B, N, D] to ``y`` [B, N, D'] (D' = ``units``) on a graph
with N nodes and |E| undirected edges. ``â`` is the normalized adjacency *with* self-connections
(``â_ij`` weights the message from source node j to destination node i; a row is a destination).
``N(i)`` is the closed neighbourhood of i (its neighbours and i itself). With ``W^T x`` written as
``x @ W`` (a [D, D'] matrix per transform)::

  full        (Eq. 3/4)  y_i = sum_{j in N(i)} â_ij x_j W                        1 transform
  pre_agg     (Eq. 5)    y_i = sum_{j in N(i)} â_ij x_j W_j    (source's)         N transforms
  post_agg    (Eq. 6)    y_i = (sum_{j in N(i)} â_ij x_j) W_i  (destination's)    N transforms
  no_sharing  (Eq. 7)    y_i = sum_{j in N(i)} â_ij x_j W_ij   (per edge)         N + 2|E| transforms
  conv_style  (Eq. 8)    y_i = sum_{j in N(i)} â_ij x_j W_{d(i,j)},               3 transforms
                         d(i,j) = c_j - c_i in {-1, 0, 1}, c = hop distance to ``center``

Decoupling (Eqs. 9-11, ``decouple=True``) gives the self-connection its own transform; the
normalized adjacency's diagonal weights the self term and its off-diagonal the neighbours::

  full        y_i = â_ii x_i T   + sum_{j in N(i), j != i} â_ij x_j W           2 transforms
  pre_agg     y_i = â_ii x_i T_i + sum_{j in N(i), j != i} â_ij x_j W_j         2N transforms
  post_agg    y_i = â_ii x_i T_i + (sum_{j in N(i), j != i} â_ij x_j) W_i       2N transforms

``conv_style`` and ``no_sharing`` already have a separate self transform (W_0 when no two
neighbours are equally far from the centre, which holds on trees such as skeletons; W_ii), so
``decouple`` is accepted for them and changes nothing. Each layer adds exactly one bias of size
D'. Parameters per layer are therefore ``n_transforms * D * D' + D'`` with ``n_transforms`` from
the table above (see :func:`n_transforms`), plus ``N + 2|E|`` adjacency logits when
``normalization='learnable'``. These counts are derived from the equations (the paper's Table 1
text was not available to check against); in particular no_sharing stores one transform per
directed edge including self-edges, not an N x N grid of which most entries would be unused.

Every variant is computed with one or two batched einsums (no_sharing adds one gather): no Python
loop over nodes or edges at call time, and the layer compiles with XLA (``jit_compile=True``).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import keras
import numpy as np
from keras import ops

SHARINGS = ('full', 'conv_style', 'pre_agg', 'post_agg', 'no_sharing')
NORMALIZATIONS = ('symmetric', 'row', 'learnable')
#: Node used as the body centre by conv_style when ``center`` is None: the root (pelvis) of h36m.
DEFAULT_CENTER = 0
#: Initial value of every learnable adjacency logit (SemGCN's); equal logits give row normalization.
LEARNABLE_LOGIT_INIT = 1.0
#: Logit given to non-edges before the softmax; exp() of it underflows to exactly 0 in float32.
MASKED_LOGIT = -1e9
#: Number of distinct values of d(i, j) = c_j - c_i for adjacent nodes: -1, 0, +1.
N_CONV_STYLE_TRANSFORMS = 3


def validate_adjacency(adjacency) -> np.ndarray:
    """Checks a skeleton adjacency and returns it as a float32 [N, N] 0/1 array.

    Args:
      adjacency: array-like [N, N], symmetric, 0/1 entries, zero diagonal (no self-loops).
    Raises:
      ValueError naming ``adjacency`` if it is not square, not symmetric, has non-0/1 entries
      or a nonzero diagonal.
    """
    try:
        adj = np.asarray(adjacency, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f'adjacency must be a numeric [N, N] array, received {adjacency!r}') from e
    if adj.ndim != 2 or adj.shape[0] != adj.shape[1] or adj.shape[0] == 0:
        raise ValueError(f'adjacency must be a non-empty square [N, N] matrix, received shape '
                         f'{adj.shape}')
    if not np.all((adj == 0) | (adj == 1)):
        bad = np.unique(adj[(adj != 0) & (adj != 1)])
        raise ValueError(f'adjacency must contain only 0 and 1, received values {bad.tolist()}')
    if not np.array_equal(adj, adj.T):
        i, j = np.argwhere(adj != adj.T)[0]
        raise ValueError(f'adjacency must be symmetric, received adjacency[{i}, {j}]='
                         f'{adj[i, j]:g} but adjacency[{j}, {i}]={adj[j, i]:g}')
    if np.any(np.diag(adj) != 0):
        nodes = np.flatnonzero(np.diag(adj)).tolist()
        raise ValueError(f'adjacency must have a zero diagonal (the layer adds self-connections), '
                         f'received self-loops at nodes {nodes}')
    return adj.astype(np.float32)


def normalize_adjacency(adjacency, normalization: str = 'symmetric') -> np.ndarray:
    """Normalized adjacency with self-connections, float64 [N, N].

    ``symmetric`` (Eq. 2): D^-1/2 (A + I) D^-1/2; ``row``: D^-1 (A + I) (each destination row sums
    to 1); ``learnable``: the initial value of the learnable normalization, equal to ``row``.
    D is the degree matrix of A + I.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f'normalization must be one of {NORMALIZATIONS}, received '
                         f'{normalization!r}')
    closed = validate_adjacency(adjacency).astype(np.float64) + np.eye(len(adjacency))
    degree = closed.sum(axis=1)
    if normalization == 'symmetric':
        d = 1.0 / np.sqrt(degree)
        return d[:, None] * closed * d[None, :]
    return closed / degree[:, None]


def hop_distances(adjacency, center: int) -> np.ndarray:
    """Shortest-path hop distance of every node to ``center``, int64 [N]; -1 if unreachable."""
    adj = validate_adjacency(adjacency) > 0
    dist = np.full(len(adj), -1, np.int64)
    dist[center] = 0
    frontier = [center]
    while frontier:  # breadth-first search, at construction time only
        nxt = []
        for i in frontier:
            for j in np.flatnonzero(adj[i]):
                if dist[j] < 0:
                    dist[j] = dist[i] + 1
                    nxt.append(int(j))
        frontier = nxt
    return dist


def n_transforms(adjacency, sharing: str, decouple: bool) -> int:
    """Number of [D, D'] transforms of one layer (Table 1 counts divided by D * D').

    full: 1 (2 decoupled); pre_agg, post_agg: N (2N decoupled); conv_style: 3;
    no_sharing: N + 2|E| (one per directed edge, self-edges included).
    """
    adj = validate_adjacency(adjacency)
    n = adj.shape[0]
    n_directed_edges = int(adj.sum())  # 2|E|
    if sharing == 'full':
        return 2 if decouple else 1
    if sharing in ('pre_agg', 'post_agg'):
        return 2 * n if decouple else n
    if sharing == 'conv_style':
        return N_CONV_STYLE_TRANSFORMS
    if sharing == 'no_sharing':
        return n + n_directed_edges
    raise ValueError(f'sharing must be one of {SHARINGS}, received {sharing!r}')


def graph_conv_param_count(adjacency, input_dim: int, units: int, sharing: str = 'pre_agg',
                           decouple: bool = True, normalization: str = 'symmetric',
                           use_bias: bool = True) -> int:
    """Exact number of parameters of ``GraphConv`` (all trainable).

    ``n_transforms * input_dim * units`` + ``units`` (bias) + ``N + 2|E|`` logits if learnable.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f'normalization must be one of {NORMALIZATIONS}, received '
                         f'{normalization!r}')
    adj = validate_adjacency(adjacency)
    count = n_transforms(adj, sharing, decouple) * int(input_dim) * int(units)
    if use_bias:
        count += int(units)
    if normalization == 'learnable':
        count += adj.shape[0] + int(adj.sum())
    return count


def _per_matrix_initializer(initializer, n_matrices: int):
    """Makes a variance-scaling initializer scale each [D, D'] matrix of a stacked kernel as if it
    were a Dense kernel on its own (Keras would count the stack as a receptive field and shrink
    the variance by the number of matrices). Other initializers are returned unchanged."""
    if isinstance(initializer, keras.initializers.VarianceScaling) and n_matrices > 1:
        return keras.initializers.VarianceScaling(
            scale=initializer.scale * n_matrices, mode=initializer.mode,
            distribution=initializer.distribution, seed=initializer.seed)
    return initializer


@keras.saving.register_keras_serializable(package='posekit')
class GraphConv(keras.layers.Layer):
    """Graph convolution on a fixed skeleton graph with a chosen weight-sharing scheme.

    See the module docstring for the equations. Input ``x``: [B, N, D] node features (any unit;
    the lifter's first layer takes normalized 2D image coordinates); output [B, N, units], linear
    (no activation).

    Args:
      units: output features per node, D' > 0.
      adjacency: [N, N] 0/1 symmetric matrix of the skeleton edges, zero diagonal (e.g.
        ``posekit.skeletons.get('h36m_17').adjacency()``); the layer adds the self-connections.
      sharing: 'full', 'conv_style', 'pre_agg', 'post_agg' or 'no_sharing'.
      decouple: separate transform for the self-connection (Eqs. 9-11) for full, pre_agg and
        post_agg; accepted and without effect for conv_style and no_sharing.
      normalization: 'symmetric' (Eq. 2), 'row' (D^-1 (A + I)) or 'learnable' (softmax over each
        node's closed neighbourhood of learnable per-edge logits, initialised equal so the layer
        starts with row normalization, as SemGCN). Decoupled and conv_style variants split the
        same normalized matrix: its diagonal weights the self term, off-diagonals the neighbours.
      use_bias: add the single bias vector [units].
      kernel_initializer: applied to the stacked kernel; variance-scaling initializers (glorot,
        he, lecun) are rescaled so each [D, units] transform gets Dense-like variance.
      kernel_regularizer, kernel_constraint: applied to the whole stacked kernel.
      center: node index used as the body centre for conv_style hop distances; None means
        ``DEFAULT_CENTER`` (0, the pelvis/root of h36m). Ignored by the other schemes.
      **kwargs: passed to ``keras.layers.Layer`` (name, dtype, ...).

    Weights: ``kernel`` with shape
      full [K, D, D'] (K = 1, or 2 decoupled: [self, neighbours]);
      pre_agg / post_agg [K, N, D, D'] (kernel[k, n] belongs to node n; k as for full);
      conv_style [3, D, D'] (kernel[d + 1] for d(i, j) = d);
      no_sharing [N + 2|E|, D, D'] (kernel[e] for the edge ``edges[e] = (i, j)``, source j to
      destination i, self-edges included);
    ``bias`` [D'] and, if learnable, ``adjacency_logits`` [N + 2|E|] (same edge order).
    """

    def __init__(self, units: int, adjacency, sharing: str = 'pre_agg', decouple: bool = True,
                 normalization: str = 'symmetric', use_bias: bool = True,
                 kernel_initializer='glorot_uniform', kernel_regularizer=None,
                 kernel_constraint=None, center: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(units, bool) or not isinstance(units, (int, np.integer)) or units <= 0:
            raise ValueError(f'units must be a positive int, received {units!r}')
        if sharing not in SHARINGS:
            raise ValueError(f'sharing must be one of {SHARINGS}, received {sharing!r}')
        if normalization not in NORMALIZATIONS:
            raise ValueError(f'normalization must be one of {NORMALIZATIONS}, received '
                             f'{normalization!r}')
        adj = validate_adjacency(adjacency)
        n = adj.shape[0]
        if center is None:
            center = DEFAULT_CENTER
        if (isinstance(center, bool) or not isinstance(center, (int, np.integer))
                or not 0 <= center < n):
            raise ValueError(f'center must be a node index in [0, {n}), received {center!r}')

        self.units = int(units)
        self.sharing = sharing
        self.decouple = bool(decouple)
        self.normalization = normalization
        self.use_bias = bool(use_bias)
        self.center = int(center)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.n_nodes = n
        self._adjacency = adj

        closed = (adj + np.eye(n, dtype=np.float32)) > 0
        self._closed = closed.astype(np.float32)
        dst, src = np.nonzero(closed)  # row-major: destination i, source j
        self._edges = np.stack([dst, src], axis=1).astype(np.int32)  # [N + 2|E|, 2]

        # masks [K, N, N] (or [N, N + 2|E|] for no_sharing) that select, for each transform k,
        # the entries of the normalized adjacency it is applied to.
        eye = np.eye(n, dtype=np.float32)
        if sharing == 'no_sharing':
            masks = np.zeros((n, len(dst)), np.float32)
            masks[dst, np.arange(len(dst))] = 1.0  # scatters edge e into its destination row
        elif sharing == 'conv_style':
            dist = hop_distances(adj, self.center)
            if np.any(dist < 0):
                raise ValueError(
                    f'adjacency: conv_style needs every node reachable from center={self.center}; '
                    f'unreachable nodes {np.flatnonzero(dist < 0).tolist()}')
            d = dist[None, :] - dist[:, None]  # d[i, j] = c_j - c_i
            masks = np.stack([closed & (d == k) for k in (-1, 0, 1)]).astype(np.float32)
        elif self.decouple:
            masks = np.stack([eye, adj])
        else:
            masks = closed[None].astype(np.float32)
        self._masks = masks
        self._n_transforms = n_transforms(adj, sharing, self.decouple)
        if normalization != 'learnable':
            self._mixing_np = self._mix(normalize_adjacency(adj, normalization))

    # -- helpers ---------------------------------------------------------------------------------
    @property
    def edges(self) -> List[Tuple[int, int]]:
        """Directed edges (destination i, source j) incl. self-edges, in no_sharing kernel order."""
        return [(int(i), int(j)) for i, j in self._edges]

    def _mix(self, norm_adj):
        """Mixing tensor from a normalized adjacency [N, N] (numpy, or a tensor when learnable)."""
        if isinstance(norm_adj, np.ndarray):
            if self.sharing == 'no_sharing':
                return self._masks * norm_adj[self._edges[:, 0], self._edges[:, 1]][None, :]
            return self._masks * norm_adj[None]
        masks = ops.convert_to_tensor(self._masks, dtype=norm_adj.dtype)
        if self.sharing == 'no_sharing':
            flat = self._edges[:, 0] * self.n_nodes + self._edges[:, 1]
            return masks * ops.take(ops.reshape(norm_adj, [-1]), flat)[None, :]
        return masks * norm_adj[None]

    def _learned_adjacency(self):
        """Softmax-normalized learnable adjacency [N, N], in the logits' dtype (float32 or 64)."""
        logits = ops.scatter(self._edges, self.adjacency_logits, (self.n_nodes, self.n_nodes))
        closed = ops.convert_to_tensor(self._closed, dtype=logits.dtype)
        logits = logits + (1.0 - closed) * MASKED_LOGIT
        return ops.softmax(logits, axis=-1) * closed

    def normalized_adjacency(self) -> np.ndarray:
        """Current normalized adjacency with self-connections, numpy [N, N] (learned if learnable)."""
        if self.normalization == 'learnable':
            if not self.built:
                raise ValueError(f'layer {self.name!r} is not built yet: its learnable adjacency '
                                 f'exists after build() or the first call')
            return np.asarray(ops.convert_to_numpy(self._learned_adjacency()))
        return normalize_adjacency(self._adjacency, self.normalization)

    # -- keras -----------------------------------------------------------------------------------
    def build(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f'GraphConv input must be [batch, nodes, features], received shape '
                             f'{tuple(input_shape)}')
        n = input_shape[1]
        d = None if input_shape[2] is None else int(input_shape[2])
        if n is not None and n != self.n_nodes:
            raise ValueError(f'GraphConv input has {n} nodes but adjacency has {self.n_nodes} '
                             f'(input shape {tuple(input_shape)})')
        if d is None:
            raise ValueError(f'GraphConv input feature dimension must be known, received shape '
                             f'{tuple(input_shape)}')
        k = self._n_transforms
        if self.sharing in ('pre_agg', 'post_agg'):
            shape = (k // self.n_nodes, self.n_nodes, d, self.units)
        else:
            shape = (k, d, self.units)
        self.kernel = self.add_weight(
            name='kernel', shape=shape,
            initializer=_per_matrix_initializer(self.kernel_initializer, k),
            regularizer=self.kernel_regularizer, constraint=self.kernel_constraint)
        if self.use_bias:
            self.bias = self.add_weight(name='bias', shape=(self.units,), initializer='zeros')
        else:
            self.bias = None
        if self.normalization == 'learnable':
            # variable dtype (float32) even under mixed precision: the softmax with MASKED_LOGIT
            # needs the range; the normalized matrix is cast to the compute dtype afterwards.
            self.adjacency_logits = self.add_weight(
                name='adjacency_logits', shape=(len(self._edges),),
                initializer=keras.initializers.Constant(LEARNABLE_LOGIT_INIT),
                dtype=self.variable_dtype, autocast=False)
        self.input_spec = keras.layers.InputSpec(ndim=3, axes={1: self.n_nodes, 2: d})

    def call(self, inputs):
        x = inputs
        if self.normalization == 'learnable':
            mix = ops.cast(self._mix(self._learned_adjacency()), x.dtype)
        else:
            mix = ops.convert_to_tensor(self._mixing_np, dtype=x.dtype)
        kernel = ops.cast(self.kernel, x.dtype)
        if self.sharing in ('full', 'conv_style'):
            h = ops.einsum('bjd,kdu->bkju', x, kernel)  # transform with each shared matrix
            y = ops.einsum('kij,bkju->biu', mix, h)  # aggregate
        elif self.sharing == 'pre_agg':
            h = ops.einsum('bjd,kjdu->bkju', x, kernel)  # source node's own matrix
            y = ops.einsum('kij,bkju->biu', mix, h)
        elif self.sharing == 'post_agg':
            a = ops.einsum('kij,bjd->bkid', mix, x)  # aggregate first
            y = ops.einsum('bkid,kidu->biu', a, kernel)  # destination node's own matrix
        else:  # no_sharing
            x_src = ops.take(x, self._edges[:, 1], axis=1)  # [B, E, D]
            h = ops.einsum('bed,edu->beu', x_src, kernel)  # per-edge matrix
            y = ops.einsum('ie,beu->biu', mix, h)  # weighted sum into destinations
        if self.bias is not None:
            y = y + ops.cast(self.bias, y.dtype)
        return y

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        config = super().get_config()
        config.update({
            'units': self.units,
            'adjacency': self._adjacency.astype(int).tolist(),
            'sharing': self.sharing,
            'decouple': self.decouple,
            'normalization': self.normalization,
            'use_bias': self.use_bias,
            'kernel_initializer': keras.initializers.serialize(self.kernel_initializer),
            'kernel_regularizer': keras.regularizers.serialize(self.kernel_regularizer),
            'kernel_constraint': keras.constraints.serialize(self.kernel_constraint),
            'center': self.center,
        })
        return config
