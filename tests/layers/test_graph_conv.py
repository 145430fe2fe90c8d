"""Tests of posekit.layers.GraphConv: Liu et al. (ECCV 2020) weight-sharing graph convolutions."""
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from posekit import skeletons
from posekit.layers import GraphConv
from posekit.layers.graph_conv import (NORMALIZATIONS, SHARINGS, graph_conv_param_count,
                                       hop_distances, normalize_adjacency)

# (sharing, decouple) for the 8 variants of the paper plus the two no-op decouple flags.
VARIANTS = [('full', False), ('full', True), ('conv_style', True), ('conv_style', False),
            ('pre_agg', False), ('pre_agg', True), ('post_agg', False), ('post_agg', True),
            ('no_sharing', True), ('no_sharing', False)]
D_IN, UNITS = 5, 7


def _adj(n_joints=17):
    return skeletons.get(f'h36m_{n_joints}').adjacency()


def _layer(sharing, decouple, normalization='symmetric', n_joints=17, units=UNITS, d_in=D_IN,
           dtype='float64', use_bias=True, seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    layer = GraphConv(units, _adj(n_joints), sharing=sharing, decouple=decouple,
                      normalization=normalization, use_bias=use_bias, dtype=dtype, **kwargs)
    layer.build((None, n_joints, d_in))
    return layer


def _inputs(rng, n_joints=17, d_in=D_IN, batch=3, dtype=np.float64):
    return rng.normal(size=(batch, n_joints, d_in)).astype(dtype)


def _table1_transforms(sharing, decouple, n):
    """Table 1 of the paper divided by D * D' (derived from Eqs. 3-11); |E| = N - 1 on a tree."""
    n_edges = n - 1
    return {('full', False): 1, ('full', True): 2,
            ('pre_agg', False): n, ('pre_agg', True): 2 * n,
            ('post_agg', False): n, ('post_agg', True): 2 * n,
            ('conv_style', False): 3, ('conv_style', True): 3,
            ('no_sharing', False): n + 2 * n_edges, ('no_sharing', True): n + 2 * n_edges,
            }[(sharing, decouple)]


@pytest.mark.parametrize('n_joints', [16, 17])
@pytest.mark.parametrize('sharing,decouple', VARIANTS)
def test_param_count_matches_table1_plus_bias(sharing, decouple, n_joints):
    layer = _layer(sharing, decouple, n_joints=n_joints, dtype='float32')
    expected = _table1_transforms(sharing, decouple, n_joints) * D_IN * UNITS + UNITS
    assert layer.count_params() == expected
    assert graph_conv_param_count(_adj(n_joints), D_IN, UNITS, sharing, decouple) == expected
    assert sum('bias' in w.path for w in layer.weights) == 1


@pytest.mark.parametrize('sharing,decouple', [('pre_agg', True), ('no_sharing', True)])
def test_learnable_normalization_adds_one_logit_per_directed_edge(sharing, decouple):
    n = 17
    layer = _layer(sharing, decouple, 'learnable', dtype='float32')
    n_logits = n + 2 * (n - 1)
    assert layer.count_params() == _table1_transforms(sharing, decouple, n) * D_IN * UNITS \
        + UNITS + n_logits
    assert layer.count_params() == graph_conv_param_count(_adj(), D_IN, UNITS, sharing, decouple,
                                                          'learnable')


def test_normalizations_match_their_formulas():
    adj = _adj().astype(np.float64)
    closed = adj + np.eye(len(adj))
    deg = closed.sum(1)
    sym = np.diag(deg ** -0.5) @ closed @ np.diag(deg ** -0.5)
    np.testing.assert_allclose(normalize_adjacency(adj, 'symmetric'), sym, rtol=1e-12)
    np.testing.assert_allclose(normalize_adjacency(adj, 'row'), np.diag(1 / deg) @ closed,
                               rtol=1e-12)
    np.testing.assert_allclose(_layer('full', False, 'row').normalized_adjacency(),
                               np.diag(1 / deg) @ closed, rtol=1e-12)


@pytest.mark.parametrize('sharing,decouple', VARIANTS[:3] + VARIANTS[4:9])
def test_learnable_normalization_starts_as_row_normalization(sharing, decouple, rng):
    learn = _layer(sharing, decouple, 'learnable')
    row = _layer(sharing, decouple, 'row')
    np.testing.assert_allclose(learn.normalized_adjacency(),
                               normalize_adjacency(_adj(), 'row'), rtol=1e-12, atol=0)
    row.kernel.assign(learn.kernel)
    x = _inputs(rng)
    np.testing.assert_allclose(learn(x), row(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('normalization', NORMALIZATIONS)
@pytest.mark.parametrize('sharing,decouple', VARIANTS)
def test_locality_zero_gradient_outside_closed_neighbourhood(sharing, decouple, normalization,
                                                            rng):
    layer = _layer(sharing, decouple, normalization, dtype='float32', units=3, d_in=2)
    x = tf.constant(_inputs(rng, d_in=2, batch=1, dtype=np.float32))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
    jac = tape.jacobian(y, x).numpy()[0, :, :, 0]  # [N_out, U, N_in, D]
    dependence = np.abs(jac).sum(axis=(1, 3))  # [N_out, N_in]
    closed = _adj() + np.eye(17)
    assert np.all(dependence[closed == 0] == 0.0)  # exactly zero
    assert np.all(dependence[closed == 1] > 0.0)  # and every neighbour does contribute


def _copy_equal_weights(sharing, decouple, dst, full_kernel):
    """Sets every per-node / per-edge transform of ``dst`` from a full-sharing kernel."""
    self_w = full_kernel[0]
    neigh_w = full_kernel[1] if decouple else full_kernel[0]
    n = 17
    if sharing in ('pre_agg', 'post_agg'):
        dst.kernel.assign(np.broadcast_to(full_kernel[:, None], (len(full_kernel), n) +
                                          full_kernel.shape[1:]))
    elif sharing == 'no_sharing':
        dst.kernel.assign(np.stack([self_w if i == j else neigh_w for i, j in dst.edges]))
    elif sharing == 'conv_style':  # kernel[d + 1]; d = 0 only on self-edges of a tree
        dst.kernel.assign(np.stack([neigh_w, self_w, neigh_w]))


@pytest.mark.parametrize('normalization', NORMALIZATIONS)
@pytest.mark.parametrize('sharing,decouple', [('pre_agg', False), ('pre_agg', True),
                                              ('post_agg', False), ('post_agg', True),
                                              ('no_sharing', False), ('conv_style', True)])
def test_equal_per_node_weights_compute_full_sharing(sharing, decouple, normalization, rng):
    full_decoupled = decouple or sharing == 'conv_style'
    full = _layer('full', full_decoupled, normalization, seed=1)
    other = _layer(sharing, decouple, normalization, seed=2)
    _copy_equal_weights(sharing, full_decoupled, other, full.kernel.numpy())
    other.bias.assign(full.bias.numpy() + 0.5)
    full.bias.assign(full.bias.numpy() + 0.5)
    x = _inputs(rng)
    np.testing.assert_allclose(other(x), full(x), rtol=1e-12, atol=1e-12)


def _response_directions(sharing, decouple, node, rng):
    """Changes of the neighbours' outputs (no bias) when only ``node``'s input changes."""
    layer = _layer(sharing, decouple, use_bias=False)
    x = _inputs(rng, batch=1)
    dx = np.zeros_like(x)
    dx[0, node] = rng.normal(size=D_IN)
    dy = (layer(x + dx) - layer(x)).numpy()[0]
    neighbours = np.flatnonzero(_adj()[node])  # excludes the node itself
    return dy[neighbours]


def _rank_ratio(vectors):
    s = np.linalg.svd(vectors, compute_uv=False)
    return s[1] / s[0]


@pytest.mark.parametrize('decouple', [False, True])
def test_pre_agg_moves_neighbours_along_one_direction_post_agg_does_not(decouple, rng):
    thorax = skeletons.get('h36m_17').index('thor')  # 4 neighbours
    pre = _response_directions('pre_agg', decouple, thorax, rng)
    post = _response_directions('post_agg', decouple, thorax, rng)
    assert pre.shape == (4, UNITS)
    assert np.all(np.linalg.norm(pre, axis=1) > 0)
    assert _rank_ratio(pre) < 1e-10  # all parallel to x_j W_j
    assert _rank_ratio(post) > 1e-2  # each neighbour applies its own W_i


def test_conv_style_uses_hop_distance_to_center():
    ji = skeletons.get('h36m_17')
    dist = hop_distances(ji.adjacency(), 0)
    assert dist[ji.index('pelv')] == 0 and dist[ji.index('thor')] == 2
    assert dist[ji.index('htop')] == 4 and dist[ji.index('rwri')] == 5
    # With W_-1 = 0 and W_0 = 0, only messages from nodes farther from the centre (d = +1) remain:
    layer = _layer('conv_style', True, 'row', use_bias=False)
    k = np.zeros(layer.kernel.shape)
    k[2] = np.eye(D_IN, UNITS)
    layer.kernel.assign(k)
    x = np.zeros((1, 17, D_IN))
    x[0, ji.index('rkne'), 0] = 1.0
    y = layer(x).numpy()[0, :, 0]
    assert np.flatnonzero(y).tolist() == [ji.index('rhip')]  # parent of the knee only
    # moving the centre to the knee flips the role of hip and ankle
    layer2 = _layer('conv_style', True, 'row', use_bias=False, center=ji.index('rkne'))
    layer2.kernel.assign(k)
    y2 = layer2(x).numpy()[0, :, 0]
    assert np.flatnonzero(y2).tolist() == []  # the knee is now nearest; nobody is farther


@pytest.mark.parametrize('normalization', ['symmetric', 'learnable'])
@pytest.mark.parametrize('sharing,decouple', VARIANTS[:3] + VARIANTS[4:9])
def test_config_round_trip(sharing, decouple, normalization, rng):
    layer = _layer(sharing, decouple, normalization, dtype='float32',
                   kernel_regularizer=keras.regularizers.L2(1e-4), center=7)
    config = layer.get_config()
    json.dumps(config)
    assert config['adjacency'] == _adj().astype(int).tolist()
    assert (config['sharing'], config['decouple'], config['normalization'], config['center'],
            config['units']) == (sharing, decouple, normalization, 7, UNITS)
    clone = GraphConv.from_config(config)
    clone.build((None, 17, D_IN))
    assert clone.get_config() == config
    clone.set_weights(layer.get_weights())
    x = _inputs(rng, dtype=np.float32)
    np.testing.assert_array_equal(clone(x), layer(x))


@pytest.mark.parametrize('sharing,decouple', VARIANTS[:3] + VARIANTS[4:9])
def test_xla_compiled_forward_matches_eager(sharing, decouple, rng):
    layer = _layer(sharing, decouple, 'learnable', dtype='float32')
    x = tf.constant(_inputs(rng, dtype=np.float32))
    compiled = tf.function(layer.__call__, jit_compile=True)
    np.testing.assert_allclose(compiled(x), layer(x), rtol=1e-5, atol=1e-5)


def test_mixed_precision_output_dtype_and_values(rng):
    x = _inputs(rng, dtype=np.float32)
    ref = _layer('pre_agg', True, 'learnable', dtype='float32')
    mixed = _layer('pre_agg', True, 'learnable', dtype='mixed_bfloat16')
    mixed.set_weights(ref.get_weights())
    y = mixed(x)
    assert y.dtype == 'bfloat16'
    assert mixed.adjacency_logits.dtype == 'float32'
    np.testing.assert_allclose(np.asarray(y, np.float32), ref(x), rtol=0.05, atol=0.05)


def test_bad_arguments_raise_value_error():
    adj = _adj()
    with pytest.raises(ValueError, match=r"sharing must be one of .* received 'shared'"):
        GraphConv(4, adj, sharing='shared')
    with pytest.raises(ValueError, match=r"normalization must be one of .* received 'l2'"):
        GraphConv(4, adj, normalization='l2')
    with pytest.raises(ValueError, match=r'square .* received shape \(17, 16\)'):
        GraphConv(4, adj[:, :16])
    asym = adj.copy()
    asym[0, 5] = 1
    with pytest.raises(ValueError, match=r'symmetric, received adjacency\[0, 5\]=1 but '
                                         r'adjacency\[5, 0\]=0'):
        GraphConv(4, asym)
    loops = adj + np.eye(17)
    with pytest.raises(ValueError, match=r'zero diagonal.* self-loops at nodes \[0, 1'):
        GraphConv(4, loops)
    with pytest.raises(ValueError, match=r'only 0 and 1, received values \[0.5\]'):
        GraphConv(4, adj * 0.5)
    with pytest.raises(ValueError, match=r'units must be a positive int, received 0'):
        GraphConv(0, adj)
    with pytest.raises(ValueError, match=r'center must be a node index in \[0, 17\), received 17'):
        GraphConv(4, adj, sharing='conv_style', center=17)
    disconnected = adj.copy()
    disconnected[0, 7] = disconnected[7, 0] = 0  # cut the spine
    with pytest.raises(ValueError, match=r'reachable from center=0; unreachable nodes \[7, 8'):
        GraphConv(4, disconnected, sharing='conv_style')
    with pytest.raises(ValueError, match=r'input has 16 nodes but adjacency has 17'):
        GraphConv(4, adj)(np.zeros((2, 16, 3), np.float32))
    with pytest.raises(ValueError, match=r'\[batch, nodes, features\], received shape \(2, 17\)'):
        GraphConv(4, adj)(np.zeros((2, 17), np.float32))


@pytest.mark.parametrize('sharing,decouple', [('full', True), ('pre_agg', True),
                                              ('no_sharing', True)])
def test_glorot_scale_is_per_transform_like_dense(sharing, decouple):
    d = 64
    layer = _layer(sharing, decouple, units=d, d_in=d, dtype='float32')
    kernel = layer.kernel.numpy().reshape(-1, d, d)
    limit = np.sqrt(6.0 / (d + d))  # glorot_uniform of one Dense [d, d] kernel
    assert np.abs(kernel).max() <= limit
    np.testing.assert_allclose(kernel.std(), limit / np.sqrt(3.0), rtol=0.03)
    assert not np.allclose(kernel[0], kernel[1])  # independent draws per transform


@pytest.mark.parametrize('sharing,decouple', VARIANTS)
def test_layer_contract(sharing, decouple, rng):
    from tests.layer_testing import run_layer_test
    adjacency = skeletons.get('h36m_16').adjacency()
    x = rng.normal(size=(3, 16, D_IN)).astype(np.float32)
    run_layer_test(lambda: GraphConv(UNITS, adjacency, sharing=sharing, decouple=decouple), x, (3, 16, UNITS))
