"""Affine-combining autoencoder (ACAE) of Sárándi et al., WACV 2023.

"Learning 3D Human Pose Estimation from Dozens of Datasets using a Geometry-Aware Autoencoder to
Bridge Between Skeleton Formats". The autoencoder maps J joints to L latent points and back with two
linear maps whose every output point is an *affine combination* of the input points::

    z_l = sum_j W_enc[j, l] x_j      with  sum_j W_enc[j, l] = 1     (encode, [J, L])
    y_j = sum_l W_dec[l, j] z_l      with  sum_l W_dec[l, j] = 1     (decode, [L, J])

Affine combinations commute with every affine map of space, so the autoencoder is exactly equivariant
to translation, rotation and scaling of the pose, and it works on any number of coordinates C (3D
points, 2D image points).

Normalization (columns summing to one)
--------------------------------------
Free weights ``V`` are stored as variables and normalised column-wise by division,
``W = V / (1^T V)``. The supplement's Eqs. 1-2 were not readable from here; division is what the
authors' public implementation does, and it keeps the relative sizes of the free weights, so with
the mostly positive initialisation (uniform in [INIT_MIN, INIT_MAX], also the authors') the weights
start as near-convex combinations. (The additive alternative ``V + (1 - 1^T V) / J`` has no pole
but spreads every correction over all J inputs, which works against sparse weights.) The division is evaluated in float64 (the matrices are tiny, at most a few thousand
entries): ``encoder_weights()``/``decoder_weights()`` return these float64 weights, whose columns
sum to 1 to ~1e-15 after any training; the layer applies them rounded to float32, whose exact
column sums differ from 1 by at most one float32 rounding per entry (about ``6e-8 * sum_j |W[j,
l]|``, i.e. ~1e-7 for trained weights; a float32 *summation* of them adds its own error of a few
1e-7). A column whose free sum gets closer to zero than ``MIN_COLUMN_SUM`` is kept away from the
pole (its divisor is clamped, sign kept), which keeps the weights finite under any optimizer step.

Chirality (``chiral=True``)
---------------------------
Joints are split by the mirror permutation into a left group A, the right group B (``B[i] =
mirror[A[i]]``) and the centre group C (``mirror[j] == j``); the latents likewise into sided pairs
(A', B') and centre latents C'. In that order the [J, L] weight matrices (encoder, and the decoder
before its transpose) are assembled from five free blocks::

              A'  B'  C'
        A  [  S   Q   X ]
        B  [  Q   S   X ]
        C  [  K   K   Z ]

so left-to-left equals right-to-right (S), left-to-right equals right-to-left (Q), both sides feed
the centre latents through one shared block (X) and the centre joints feed both sided groups through
one shared block (K). Then ``reconstruct(mirror(x)) == mirror(reconstruct(x))`` exactly, where
``mirror`` negates the x coordinate and permutes the joints by ``mirror``; the latents mirror by
:meth:`AffineCombiningAutoencoder.latent_mirror`. Of a mirror pair, the joint whose name starts with
``l`` goes to A (the lower index if the names do not tell).

Split rule for the latents: ``n_centre_latents`` defaults to the integer nearest to
``n_latents * n_centre_joints / n_joints`` among those with the parity of ``n_latents`` (so the rest
splits into pairs), ties towards more centre latents, at least 1 when there are centre joints, and
at least one pair when there are sided joints (e.g. 100 joints with 20 centre: L = 16 -> 4 centre
latents + 6 pairs, 32 -> 6 + 13 pairs, 48 -> 10 + 19 pairs). Pass ``n_centre_latents`` to override.

Regularization
--------------
:meth:`AffineCombiningAutoencoder.regularization_loss` returns
``l1 * (mean |W_enc| + mean |W_dec|)`` on the normalised weights. Since every column sums to one,
``sum |w| = 1 + 2 * (negative mass of the column)``, so the penalty is, up to a constant, the
negative weight mass (supplement S6): it pushes towards convex combinations and thereby sparse,
local weights. It is returned by a method rather than registered with ``add_loss`` so that a model
holding a frozen ACAE (for the consistency losses) never picks it up by accident; the fitting code in
:mod:`posekit.acae` adds it explicitly.

Precision: the layer always computes in float32 (its dtype policy is forced to ``float32``); inputs
of other float dtypes (e.g. bfloat16 under a mixed policy) are cast to float32 and outputs are
float32.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import keras
import tensorflow as tf

# Default L1 weight of the regularization loss, relative to a reconstruction loss in metres.
DEFAULT_L1 = 0.3
# Free weights are initialised uniformly in [INIT_MIN, INIT_MAX] (mostly positive: near-convex start).
INIT_MIN = -0.1
INIT_MAX = 1.0
# Column sums of the free weights are kept at least this far from zero before dividing.
MIN_COLUMN_SUM = 1e-3
# Per-example encoder weight sums over the valid joints are kept at least this far from zero.
MIN_VALID_WEIGHT_SUM = 1e-3


class _MirrorSpec:
    """Names and mirror permutation of the joint space, validated; serialisable as a dict."""

    def __init__(self, joint_info):
        if isinstance(joint_info, dict):
            names, mirror = joint_info.get('names'), joint_info.get('mirror')
        else:
            names = getattr(joint_info, 'names', None)
            mirror = getattr(joint_info, 'mirror', None)
        if names is None or mirror is None:
            raise ValueError(
                'joint_info must have .names and .mirror (or be a dict with keys names, mirror); '
                f'got {joint_info!r}')
        self.names = [str(n) for n in names]
        self.mirror = [int(m) for m in mirror]
        n = len(self.names)
        if len(self.mirror) != n:
            raise ValueError(
                f'joint_info.mirror has {len(self.mirror)} entries but joint_info.names has {n}')
        for i, m in enumerate(self.mirror):
            if not 0 <= m < n or self.mirror[m] != i:
                raise ValueError(
                    f'joint_info.mirror must be an involution on range({n}); got {self.mirror}')

    def to_dict(self):
        return {'names': list(self.names), 'mirror': list(self.mirror)}


def _split_groups(mirror: Sequence[int], names: Optional[Sequence[str]]):
    """(left A, right B with B[i] = mirror[A[i]], centre C) joint index lists."""
    left, centre = [], []
    for i, m in enumerate(mirror):
        if m == i:
            centre.append(i)
        elif i < m:
            a, b = i, m
            if names is not None and names[m][:1] == 'l' and names[i][:1] != 'l':
                a, b = m, i
            left.append(a)
    left.sort()
    right = [mirror[a] for a in left]
    return left, right, centre


def default_centre_latents(n_latents: int, n_joints: int, n_centre_joints: int) -> int:
    """Number of centre latents for ``n_latents`` latents (split rule in the module docstring)."""
    n_sided = n_joints - n_centre_joints
    if n_sided == 0:
        return n_latents
    target = n_latents * n_centre_joints / n_joints
    lo = 1 if n_centre_joints > 0 else 0
    if (n_latents - lo) % 2:
        lo += 1
    hi = n_latents - 2  # keep at least one sided pair
    candidates = [c for c in range(lo, hi + 1, 2)]
    if not candidates:
        raise ValueError(
            f'n_latents={n_latents} is too small for a chiral split of {n_centre_joints} centre and '
            f'{n_sided} sided joints (need at least {lo + 2})')
    return min(candidates, key=lambda c: (abs(c - target), -c))


@keras.saving.register_keras_serializable(package='posekit')
class AffineCombiningAutoencoder(keras.layers.Layer):
    """Linear autoencoder whose encoder and decoder output affine combinations of their inputs.

    Args:
      n_latents: number L of latent points.
      joint_info: the joint space: an object with ``.names`` (list of J str) and ``.mirror`` (list of
        J int, each joint's left/right counterpart, itself for centre joints) such as a
        ``posekit.skeletons.JointInfo``, or a dict ``{'names': [...], 'mirror': [...]}`` (what
        ``get_config`` stores). Required when ``chiral`` is True.
      chiral: tie the weight blocks so the autoencoder commutes with mirroring (module docstring).
      l1: weight of :meth:`regularization_loss` (L1 of the normalised weights; >= 0).
      n_joints: number J of joints; only needed without ``joint_info`` (must match it otherwise).
      n_centre_latents: number of centre latents when chiral; default by the split rule in the
        module docstring. Must leave an even number of sided latents.
      seed: int seed of the weight initialisation (None: unseeded).
      **kwargs: keras Layer arguments (``name``, ``trainable``, ...). ``dtype`` may only be a
        float32 policy: the layer always computes in float32.

    Call: ``layer(x, valid=None)`` = ``decode(encode(x, valid))``; x [B, J, C] in any unit and
    frame (mm camera frame, px, ...), result [B, J, C] float32 in the same unit and frame.
    """

    def __init__(self, n_latents: int, joint_info=None, chiral: bool = True, l1: float = DEFAULT_L1,
                 n_joints: Optional[int] = None, n_centre_latents: Optional[int] = None,
                 seed: Optional[int] = None, **kwargs):
        dtype = kwargs.pop('dtype', None)
        if dtype is not None:
            policy = keras.dtype_policies.get(dtype)
            if policy.compute_dtype != 'float32' or policy.variable_dtype != 'float32':
                raise ValueError(
                    f'dtype must be a float32 policy (the ACAE computes in float32); got {dtype!r}')
        super().__init__(dtype='float32', **kwargs)
        if isinstance(n_latents, bool) or not isinstance(n_latents, (int, np.integer)) \
                or n_latents < 1:
            raise ValueError(f'n_latents must be a positive int; got {n_latents!r}')
        if not isinstance(l1, (int, float, np.floating, np.integer)) or not l1 >= 0:
            raise ValueError(f'l1 must be a non-negative number; got {l1!r}')
        self.n_latents = int(n_latents)
        self.chiral = bool(chiral)
        self.l1 = float(l1)
        self.seed = None if seed is None else int(seed)

        self._spec = None if joint_info is None else _MirrorSpec(joint_info)
        if self._spec is not None:
            if n_joints is not None and int(n_joints) != len(self._spec.names):
                raise ValueError(
                    f'n_joints={n_joints!r} disagrees with joint_info, which has '
                    f'{len(self._spec.names)} joints')
            n_joints = len(self._spec.names)
        if n_joints is None:
            raise ValueError('n_joints must be given when joint_info is None; got None')
        if isinstance(n_joints, bool) or not isinstance(n_joints, (int, np.integer)) \
                or n_joints < 1:
            raise ValueError(f'n_joints must be a positive int; got {n_joints!r}')
        self.n_joints = int(n_joints)
        if self.chiral and self._spec is None:
            raise ValueError('joint_info (names and mirror) is required when chiral=True; got None')

        if self.chiral:
            a, b, c = _split_groups(self._spec.mirror, self._spec.names)
            self._groups = (a, b, c)
            if n_centre_latents is None:
                n_centre_latents = default_centre_latents(self.n_latents, self.n_joints, len(c))
            n_centre_latents = int(n_centre_latents)
            if (not 0 <= n_centre_latents <= self.n_latents
                    or (self.n_latents - n_centre_latents) % 2):
                raise ValueError(
                    f'n_centre_latents must be in [0, n_latents={self.n_latents}] and leave an even '
                    f'number of sided latents; got {n_centre_latents}')
            self.n_centre_latents = n_centre_latents
            self.n_latent_pairs = (self.n_latents - n_centre_latents) // 2
            perm = a + b + c
            self._joint_inverse_perm = np.argsort(np.asarray(perm, np.int64)).astype(np.int32)
        else:
            if n_centre_latents is not None:
                raise ValueError(
                    f'n_centre_latents applies only when chiral=True; got {n_centre_latents!r}')
            self._groups = None
            self.n_centre_latents = None
            self.n_latent_pairs = None
            self._joint_inverse_perm = None

    # ----------------------------------------------------------------------------- variables
    def _block_shapes(self) -> List[Tuple[str, Tuple[int, int]]]:
        if not self.chiral:
            return [('full', (self.n_joints, self.n_latents))]
        n_pairs_j = len(self._groups[0])
        n_centre_j = len(self._groups[2])
        p, lc = self.n_latent_pairs, self.n_centre_latents
        return [('s', (n_pairs_j, p)), ('q', (n_pairs_j, p)), ('x', (n_pairs_j, lc)),
                ('k', (n_centre_j, p)), ('z', (n_centre_j, lc))]

    def build(self, input_shape=None):
        if input_shape is not None and len(input_shape) >= 2 and input_shape[-2] is not None \
                and int(input_shape[-2]) != self.n_joints:
            raise ValueError(
                f'input has {input_shape[-2]} joints but the layer was made for {self.n_joints}')
        self._enc_blocks = {}
        self._dec_blocks = {}
        counter = 0
        for part, store in (('encoder', self._enc_blocks), ('decoder', self._dec_blocks)):
            for name, shape in self._block_shapes():
                # Distinct, reproducible seeds per variable.
                init_seed = None if self.seed is None else self.seed * 1000 + counter
                counter += 1
                store[name] = self.add_weight(
                    name=f'{part}_{name}', shape=shape, dtype='float32',
                    initializer=keras.initializers.RandomUniform(INIT_MIN, INIT_MAX,
                                                                 seed=init_seed))
        self.built = True

    def _ensure_built(self):
        if not self.built:
            self.build((None, self.n_joints, 3))

    # ----------------------------------------------------------------------------- weights
    def _assemble(self, blocks) -> tf.Tensor:
        """Free [J, L] matrix in the original joint order and the latent order A', B', C'."""
        if not self.chiral:
            return blocks['full']
        s, q, x, k, z = (blocks[n] for n in 'sqxkz')
        rows_a = tf.concat([s, q, x], axis=1)
        rows_b = tf.concat([q, s, x], axis=1)
        rows_c = tf.concat([k, k, z], axis=1)
        w = tf.concat([rows_a, rows_b, rows_c], axis=0)
        return tf.gather(w, self._joint_inverse_perm, axis=0)

    @staticmethod
    def _normalize(free: tf.Tensor, axis: int) -> tf.Tensor:
        """Divides by the sums along ``axis`` (clamped away from 0) in float64; float64 result."""
        w = tf.cast(free, tf.float64)
        total = tf.reduce_sum(w, axis=axis, keepdims=True)
        sign = tf.where(total < 0, tf.constant(-1.0, tf.float64), tf.constant(1.0, tf.float64))
        total = sign * tf.maximum(tf.abs(total), MIN_COLUMN_SUM)
        return w / total

    def _encoder64(self) -> tf.Tensor:
        self._ensure_built()
        return self._normalize(self._assemble(self._enc_blocks), axis=0)

    def _decoder64(self) -> tf.Tensor:
        self._ensure_built()
        return tf.transpose(self._normalize(self._assemble(self._dec_blocks), axis=1))

    def encoder_matrix(self) -> tf.Tensor:
        """Normalised encoder weights as applied: float32 tensor [J, L], columns sum to 1."""
        return tf.cast(self._encoder64(), tf.float32)

    def decoder_matrix(self) -> tf.Tensor:
        """Normalised decoder weights as applied: float32 tensor [L, J], columns sum to 1."""
        return tf.cast(self._decoder64(), tf.float32)

    def encoder_weights(self) -> np.ndarray:
        """Normalised encoder weights, numpy float64 [J, L]; every column sums to 1.

        These are the exact (float64) normalised weights; the layer applies them rounded to
        float32 (:meth:`encoder_matrix`), which changes each entry by at most one float32 rounding.
        """
        return self._encoder64().numpy()

    def decoder_weights(self) -> np.ndarray:
        """Normalised decoder weights, numpy float64 [L, J]; every column sums to 1 (see
        :meth:`encoder_weights`)."""
        return self._decoder64().numpy()

    def set_normalized_weights(self, encoder_weights, decoder_weights):
        """Sets the layer so that it applies the given normalised weights (e.g. loaded from a file).

        Args:
          encoder_weights: [J, L] array whose columns sum to 1 (and which has the chiral block
            structure when ``chiral``; checked to 1e-5).
          decoder_weights: [L, J] array whose columns sum to 1 (same conditions).
        """
        self._ensure_built()
        enc = np.asarray(encoder_weights, np.float64)
        dec = np.asarray(decoder_weights, np.float64)
        if enc.shape != (self.n_joints, self.n_latents):
            raise ValueError(f'encoder_weights must have shape {(self.n_joints, self.n_latents)}; '
                             f'got {enc.shape}')
        if dec.shape != (self.n_latents, self.n_joints):
            raise ValueError(f'decoder_weights must have shape {(self.n_latents, self.n_joints)}; '
                             f'got {dec.shape}')
        for name, w in (('encoder_weights', enc), ('decoder_weights', dec)):
            err = np.max(np.abs(w.sum(axis=0) - 1.0))
            if not err <= 1e-5:
                raise ValueError(f'{name} columns must sum to 1; largest deviation {err:.3g}')
        # Both matrices in the [J, L] layout; normalised columns already sum to 1, so dividing by the
        # sums again returns them unchanged: the free weights can be the normalised ones.
        for w, store in ((enc, self._enc_blocks), (dec.T, self._dec_blocks)):
            for name, value in self._disassemble(w).items():
                store[name].assign(value.astype(np.float32))

    def _disassemble(self, w: np.ndarray):
        """Inverse of :meth:`_assemble` for a [J, L] numpy matrix; checks the chiral ties."""
        if not self.chiral:
            return {'full': w}
        a, b, c = self._groups
        p = self.n_latent_pairs
        la, lb, lc = slice(0, p), slice(p, 2 * p), slice(2 * p, self.n_latents)
        blocks = {'s': w[a][:, la], 'q': w[a][:, lb], 'x': w[a][:, lc], 'k': w[c][:, la],
                  'z': w[c][:, lc]}
        ties = ((w[b][:, lb], blocks['s']), (w[b][:, la], blocks['q']),
                (w[b][:, lc], blocks['x']), (w[c][:, lb], blocks['k']))
        for got, want in ties:
            if got.size and np.max(np.abs(got - want)) > 1e-5:
                raise ValueError('weights do not have the chiral block structure of this layer '
                                 '(mirror-tied blocks differ)')
        return blocks

    def latent_mirror(self) -> List[int]:
        """Index of each latent's mirror counterpart (itself for centre latents); needs chiral."""
        if not self.chiral:
            raise ValueError('latent_mirror needs chiral=True; this layer has chiral=False')
        p = self.n_latent_pairs
        return list(range(p, 2 * p)) + list(range(p)) + list(range(2 * p, self.n_latents))

    def regularization_loss(self) -> tf.Tensor:
        """``l1 * (mean |W_enc| + mean |W_dec|)`` on the normalised weights; float32 scalar."""
        return self.l1 * (tf.reduce_mean(tf.abs(self.encoder_matrix()))
                          + tf.reduce_mean(tf.abs(self.decoder_matrix())))

    # ----------------------------------------------------------------------------- mapping
    def encode(self, x, valid=None) -> tf.Tensor:
        """Latent points of poses.

        Args:
          x: [B, J, C] points (any unit/frame; e.g. mm camera frame or px).
          valid: optional [B, J] bool/0-1 mask of the joints present. Missing joints get zero
            weight and each latent's remaining weights are divided by their sum (kept at least
            MIN_VALID_WEIGHT_SUM away from zero), so latents stay affine combinations. Missing
            joints' coordinates are ignored (they may be NaN).

        Returns:
          [B, L, C] float32 latent points in the unit and frame of x.
        """
        x = tf.cast(x, tf.float32)
        w = self.encoder_matrix()
        if valid is None:
            return tf.einsum('bjc,jl->blc', x, w)
        v = tf.cast(valid, tf.float32)
        x = tf.where(v[..., tf.newaxis] > 0, x, tf.zeros_like(x))
        w_eff = w[tf.newaxis] * v[:, :, tf.newaxis]  # [B, J, L]
        total = tf.reduce_sum(w_eff, axis=1, keepdims=True)
        sign = tf.where(total < 0, -1.0, 1.0)
        total = sign * tf.maximum(tf.abs(total), MIN_VALID_WEIGHT_SUM)
        return tf.einsum('bjc,bjl->blc', x, w_eff / total)

    def decode(self, z) -> tf.Tensor:
        """Joints from latent points: z [B, L, C] -> [B, J, C] float32, unit and frame of z."""
        z = tf.cast(z, tf.float32)
        return tf.einsum('blc,lj->bjc', z, self.decoder_matrix())

    def call(self, x, valid=None):
        return self.decode(self.encode(x, valid))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({
            'n_latents': self.n_latents,
            'joint_info': None if self._spec is None else self._spec.to_dict(),
            'chiral': self.chiral,
            'l1': self.l1,
            'n_joints': self.n_joints,
            'n_centre_latents': self.n_centre_latents,
            'seed': self.seed,
        })
        return config

    @property
    def joint_names(self) -> Optional[List[str]]:
        """Joint names of the joint space, or None if the layer was made from n_joints only."""
        return None if self._spec is None else list(self._spec.names)

    @property
    def joint_mirror(self) -> Optional[List[int]]:
        """Mirror permutation of the joints, or None if the layer was made from n_joints only."""
        return None if self._spec is None else list(self._spec.mirror)
