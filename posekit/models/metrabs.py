"""MeTRAbs: backbone + metric-scale truncation-robust heatmap head + absolute pose reconstruction.

Sárándi et al., "MeTRAbs: Metric-Scale Truncation-Robust Heatmaps for Absolute 3D Human Pose
Estimation", IEEE T-BIOM 2021, and the multi-format extension of Sárándi et al., WACV 2023.

Conventions
-----------
- Camera frame: x right, y down, z forward; lengths in mm. Image coordinates in px of the network's
  input crop, with the centre of pixel (col, row) at (col, row): the crop spans [-0.5, W - 0.5].
- 2D heatmaps: heatmap cell ``i`` (column or row) covers pixels ``[i * stride, (i + 1) * stride)``, so
  its centre is at ``i * stride + (stride - 1) / 2`` px. Soft-argmax gives a fractional cell index ``c``
  and the image coordinate ``c * stride + (stride - 1) / 2`` px (:func:`heatmap_to_image`). The reachable
  range is therefore ``[(stride - 1) / 2, W - 1 - (stride - 1) / 2]``: joints outside it (truncated
  joints) are pinned near the border, which is why the absolute reconstruction uses only joints
  predicted inside the image by a margin (:func:`posekit.geometry.points_in_image`).
- 3D heatmaps (metric-scale): a volume of ``h x w x depth_bins`` cells covering a cube of
  ``box_size_mm`` (2.2 m) on each side, centred on the box centre (an unknown point that
  :func:`reconstruct_absolute` recovers). Cell ``i`` of ``n`` along an axis has its centre at
  ``((i + 0.5) / n - 0.5) * box_size_mm``; row index grows with +y (down), depth bin with +z (away).
- Soft-argmax runs in float32 whatever the compute dtype (the logits are cast first).

Head modes (``Metrabs(head_mode=...)``)
-------------------------------------
- ``'separate'``: the head predicts all ``n_joints`` joints of the all-formats joint space directly.
- ``'latent'``: the head predicts the ``L`` latent points of an affine-combining autoencoder
  (``posekit.layers.AffineCombiningAutoencoder``); the joints are decoded from the latents
  (``acae.decode``, an affine combination, so it commutes with the absolute reconstruction).
- ``'hybrid'``: both, from one 1x1 convolution: ``L`` latent points then ``n_joints`` joints. The final
  output is the decoded latent head (as in the paper's released models); the all-joints head is
  returned under the ``direct_*`` keys for the student-teacher losses.

Absolute output
---------------
:func:`reconstruct_absolute` finds the translation of the relative 3D pose that best explains the 2D
points of the joints predicted in view (linear least squares, closed form, float32: converter-friendly,
see :func:`reconstruct_absolute`). For in-view joints
the output blends the 3D-based position with the back-projection of the 2D point at the reconstructed
depth (``mix_3d_in_view``, default 0.5), as the reference implementation does; this lets the losses
on the absolute output train the 2D head directly.

Supervision is through the absolute output (supplement S2 of WACV 2023): the losses in
:mod:`posekit.train.losses_metrabs` compare ``coords3d_abs`` (and its projection) with the labels.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from posekit import geometry
from posekit.geometry import BOX_SIZE_MM

#: Depth bins of the 3D heatmap (as many as the spatial cells of an 8x8 heatmap).
DEFAULT_DEPTH_BINS = 8
HEAD_MODES = ('separate', 'latent', 'hybrid')
#: A joint counts as in view (used for the absolute reconstruction) when its predicted 2D position is at
#: least this many strides inside the crop border. Soft-argmax cannot go closer than (stride - 1) / 2
#: to the border, so joints pinned there (truncated) are excluded.
IN_VIEW_MARGIN_STRIDES = 0.75
#: Lower bound on the weighted RMS spread (about the mean) of the normalised image coordinates in
#: :func:`reconstruct_absolute`: keeps the depth finite when all points coincide (e.g. at
#: initialisation). 1e-3 is the spread (~0.4 m RMS) of a person ~400 m away; real poses never hit it.
MIN_NORMALIZED_SPREAD = 1e-3
#: Default weight of the 3D head vs the 2D head for the position of in-view joints in the absolute output
#: (:func:`reconstruct_absolute`); the reference training draws it uniformly in [0, 1] per example.
DEFAULT_MIX_3D_IN_VIEW = 0.5


# ------------------------------------------------------------------------------------------- heatmaps
def soft_argmax_2d(logits):
    """Expected cell index under the softmax of 2D heatmap logits.

    Args:
      logits: [B, h, w, P] (any float dtype; cast to float32 first).

    Returns:
      [B, P, 2] float32 fractional cell indices (column, row).
    """
    logits = tf.cast(logits, tf.float32)
    h, w = tf.shape(logits)[1], tf.shape(logits)[2]
    flat = tf.reshape(tf.transpose(logits, [0, 3, 1, 2]), [tf.shape(logits)[0], tf.shape(logits)[3], -1])
    prob = tf.reshape(tf.nn.softmax(flat, axis=-1), [tf.shape(flat)[0], tf.shape(flat)[1], h, w])
    cols = tf.reduce_sum(tf.reduce_sum(prob, axis=2) * tf.range(w, dtype=tf.float32), axis=-1)
    rows = tf.reduce_sum(tf.reduce_sum(prob, axis=3) * tf.range(h, dtype=tf.float32), axis=-1)
    return tf.stack([cols, rows], axis=-1)


def soft_argmax_3d(logits):
    """Expected cell index under the softmax (over all h*w*D cells) of volumetric heatmap logits.

    Args:
      logits: [B, h, w, D, P] (any float dtype; cast to float32 first).

    Returns:
      [B, P, 3] float32 fractional cell indices (column, row, depth bin).
    """
    logits = tf.cast(logits, tf.float32)
    shape = tf.shape(logits)
    h, w, d = shape[1], shape[2], shape[3]
    flat = tf.reshape(tf.transpose(logits, [0, 4, 1, 2, 3]), [shape[0], shape[4], -1])
    prob = tf.reshape(tf.nn.softmax(flat, axis=-1), [shape[0], shape[4], h, w, d])
    cols = tf.reduce_sum(tf.reduce_sum(prob, axis=[2, 4]) * tf.range(w, dtype=tf.float32), axis=-1)
    rows = tf.reduce_sum(tf.reduce_sum(prob, axis=[3, 4]) * tf.range(h, dtype=tf.float32), axis=-1)
    bins = tf.reduce_sum(tf.reduce_sum(prob, axis=[2, 3]) * tf.range(d, dtype=tf.float32), axis=-1)
    return tf.stack([cols, rows, bins], axis=-1)


def heatmap_to_image(cell_coords, stride):
    """Fractional 2D heatmap cell indices [..., 2] -> image coordinates [..., 2] px (module docstring)."""
    return cell_coords * float(stride) + (float(stride) - 1.0) / 2.0


def heatmap_to_metric(cell_coords, n_cells, box_size_mm=BOX_SIZE_MM):
    """Fractional 3D heatmap cell indices [..., 3] -> mm relative to the box centre [..., 3].

    Args:
      cell_coords: [..., 3] (column, row, depth bin) fractional indices.
      n_cells: [3] numbers of cells (w, h, depth_bins), tensor or sequence.
      box_size_mm: side of the cube covered by the heatmap, mm.
    """
    n_cells = tf.cast(n_cells, cell_coords.dtype)
    return ((cell_coords + 0.5) / n_cells - 0.5) * box_size_mm


def reconstruct_absolute(coords2d, coords3d_rel, intrinsics, is_valid=None, mix_3d_in_view=1.0,
                         min_spread=MIN_NORMALIZED_SPREAD):
    """Absolute camera-frame pose from 2D image coordinates and a translation-free 3D pose.

    Finds the translation ``t = (tx, ty, tz)`` that makes the 3D pose project onto the 2D points, by
    weighted linear least squares over the valid joints (the full-perspective formulation of MeTRAbs):
    with normalised image coordinates ``(u_j, v_j) = K^-1 [x_j^px, y_j^px, 1]`` and relative points
    ``(x_j, y_j, z_j)``, the perspective equations ``(x_j + tx) / (z_j + tz) = u_j`` (and for y, v)
    are multiplied out to the linear residuals::

        r_jx = (x_j + tx) - u_j (z_j + tz),      r_jy = (y_j + ty) - v_j (z_j + tz)

    and ``sum_j w_j (r_jx^2 + r_jy^2)`` is minimised in closed form: eliminating tx, ty leaves a
    weighted 1D regression for tz on the mean-centred coordinates (stable, no matrix inverse):
    ``tz = -sum w (u - u_mean) (b - b_mean) / sum w (u - u_mean)^2`` (summing over x and y rows) with
    ``b_j = u_j z_j - x_j``, then ``(tx, ty) = u_mean tz + b_mean``. Exact for noise-free input.

    Computed in float32 (float64 only for float64 ``coords3d_rel``) with elementwise ops and sums only
    (no matrix inverse or cross product), so the crop model converts to TFLite builtins and ONNX (``posekit.convert``). The
    mean-centring keeps float32 accurate: on 4096 realistic noisy poses (roots at 2-10 m, f 200-2000 px,
    2 px / 30 mm noise, 10 % invalid joints) the largest difference from the former float64 version
    was 0.003 mm (about one float32 step at 10 m; ``tests/models/test_metrabs.py`` compares with a
    float64 numpy solution).

    The result is ``coords3d_rel + t``, except that for valid joints it can be blended with the
    back-projection of the 2D point at the reconstructed depth, ``(u_j, v_j, 1) * (z_j + tz)``, as in the
    MeTRAbs reference implementation: ``mix * (rel + t) + (1 - mix) * backprojection``. The
    back-projection trusts the 2D heatmap for the image-plane position of joints in view (it projects
    exactly onto coords2d) and lets a loss on the absolute pose train the 2D head directly. For
    noise-free input both agree, so the result is exact for any ``mix_3d_in_view``.

    Args:
      coords2d: [B, J, 2] image coordinates, px.
      coords3d_rel: [B, J, 3] camera-frame coordinates relative to any reference point, mm.
      intrinsics: [B, 3, 3] camera matrices (px); any invertible K.
      is_valid: None (all joints), or [B, J] bool (joints to use, e.g. in view) or non-negative
        float weights. An example without any valid joint uses all its joints.
      mix_3d_in_view: weight of the 3D-based position for valid joints, a float or a [B] tensor
        (per example) in [0, 1]; 1 (default): ``coords3d_rel + t`` for all joints; 0: valid joints are
        the back-projections of their 2D points. Invalid joints always get ``coords3d_rel + t``.
      min_spread: lower bound of the weighted RMS spread of the normalised 2D coordinates
        (``MIN_NORMALIZED_SPREAD``); keeps tz finite for degenerate input.

    Returns:
      [B, J, 3] absolute camera-frame coordinates, mm, in the dtype of ``coords3d_rel``.
    """
    out_dtype = coords3d_rel.dtype
    # float64 callers keep float64; network outputs (float32, bfloat16, float16) are computed in float32.
    dtype = tf.float64 if tf.as_dtype(out_dtype) == tf.float64 else tf.float32
    c2 = tf.cast(coords2d, dtype)
    c3 = tf.cast(coords3d_rel, dtype)
    uv = geometry.pixels_to_normalized(c2, intrinsics)  # [B, J, 2]
    w = tf.ones_like(uv[..., 0]) if is_valid is None else tf.cast(is_valid, dtype)
    blend = w > 0  # [B, J]: joints whose position may come from the 2D back-projection
    w = tf.where(tf.reduce_sum(w, axis=1, keepdims=True) > 0, w, tf.ones_like(w))
    w_sum = tf.reduce_sum(w, axis=1)  # [B]
    w3 = w[..., tf.newaxis]
    b = uv * c3[..., 2:] - c3[..., :2]  # [B, J, 2]
    uv_mean = tf.reduce_sum(w3 * uv, axis=1, keepdims=True) / w_sum[:, tf.newaxis, tf.newaxis]
    b_mean = tf.reduce_sum(w3 * b, axis=1, keepdims=True) / w_sum[:, tf.newaxis, tf.newaxis]
    du, db = uv - uv_mean, b - b_mean
    numerator = tf.reduce_sum(w3 * du * db, axis=[1, 2])
    denominator = tf.reduce_sum(w3 * du * du, axis=[1, 2])
    denominator = tf.maximum(denominator, w_sum * tf.constant(min_spread ** 2, dtype))
    tz = -numerator / denominator  # [B]
    txy = uv_mean[:, 0] * tz[:, tf.newaxis] + b_mean[:, 0]  # [B, 2]
    translation = tf.concat([txy, tz[:, tf.newaxis]], axis=-1)
    from_3d = c3 + translation[:, tf.newaxis]
    if isinstance(mix_3d_in_view, (int, float)) and mix_3d_in_view == 1:
        return tf.cast(from_3d, out_dtype)
    mix = tf.cast(mix_3d_in_view, dtype)
    mix = tf.reshape(mix, [-1, 1, 1]) if len(mix.shape) else mix
    depth = from_3d[..., 2:]
    backprojected = tf.concat([uv * depth, depth], axis=-1)
    blended = mix * from_3d + (1.0 - mix) * backprojected
    return tf.cast(tf.where(blend[..., tf.newaxis], blended, from_3d), out_dtype)


# ------------------------------------------------------------------------------------------- head layer
@keras.saving.register_keras_serializable(package='posekit')
class MetrabsHead(keras.layers.Layer):
    """1x1 convolution to 2D and metric 3D heatmaps, decoded by soft-argmax.

    Args:
      n_points: number P of predicted points (joints, latents, or both).
      depth_bins: depth bins D of the 3D heatmap.
      box_size_mm: side of the metric cube covered by the 3D heatmap, mm.
      stride: input pixels per feature cell (the backbone's output stride), for the 2D coordinates.
      kernel_max_norm: None, or the max-norm limit of each output channel's 1x1 kernel.
      **kwargs: keras Layer arguments (``name``, ``dtype``...).

    Call: features [B, h, w, C] -> (coords2d [B, P, 2] px in the input crop, float32;
    coords3d_rel [B, P, 3] mm relative to the box centre, camera axes, float32).
    Channels of the convolution: P 2D heatmaps, then D*P 3D heatmaps ordered (depth bin, point).
    """

    def __init__(self, n_points, depth_bins=DEFAULT_DEPTH_BINS, box_size_mm=BOX_SIZE_MM, stride=16,
                 kernel_max_norm=None, **kwargs):
        super().__init__(**kwargs)
        for arg, value in (('n_points', n_points), ('depth_bins', depth_bins), ('stride', stride)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f'{arg} must be a positive int; received {arg}={value!r}')
        if not isinstance(box_size_mm, (int, float)) or not box_size_mm > 0:
            raise ValueError(f'box_size_mm must be a positive number; received box_size_mm={box_size_mm!r}')
        if kernel_max_norm is not None and (not isinstance(kernel_max_norm, (int, float))
                                            or not kernel_max_norm > 0):
            raise ValueError(
                f'kernel_max_norm must be a positive number or None; received kernel_max_norm={kernel_max_norm!r}')
        self.n_points = int(n_points)
        self.depth_bins = int(depth_bins)
        self.box_size_mm = float(box_size_mm)
        self.stride = int(stride)
        self.kernel_max_norm = None if kernel_max_norm is None else float(kernel_max_norm)
        constraint = (None if kernel_max_norm is None
                      else keras.constraints.MaxNorm(self.kernel_max_norm, axis=[0, 1, 2]))
        self.conv = keras.layers.Conv2D(self.n_points * (1 + self.depth_bins), kernel_size=1,
                                        kernel_constraint=constraint, dtype=self.dtype_policy,
                                        name='heatmap_conv')

    def build(self, input_shape):
        self.conv.build(input_shape)

    def call(self, features):
        logits = self.conv(features)
        logits2d = logits[..., :self.n_points]
        shape = tf.shape(logits)
        logits3d = tf.reshape(logits[..., self.n_points:],
                              [shape[0], shape[1], shape[2], self.depth_bins, self.n_points])
        coords2d = heatmap_to_image(soft_argmax_2d(logits2d), self.stride)
        n_cells = tf.stack([shape[2], shape[1], self.depth_bins])
        coords3d = heatmap_to_metric(soft_argmax_3d(logits3d), n_cells, self.box_size_mm)
        return coords2d, coords3d

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.n_points, 2), (input_shape[0], self.n_points, 3)

    def get_config(self):
        config = super().get_config()
        config.update(n_points=self.n_points, depth_bins=self.depth_bins, box_size_mm=self.box_size_mm,
                      stride=self.stride, kernel_max_norm=self.kernel_max_norm)
        return config


# ------------------------------------------------------------------------------------------- model
@keras.saving.register_keras_serializable(package='posekit')
class Metrabs(keras.Model):
    """Backbone + :class:`MetrabsHead` + absolute reconstruction (+ ACAE decoding).

    Args:
      backbone: a Keras model images [B, H, W, 3] in [0, 1] -> features [B, H/s, W/s, C]
        (e.g. ``posekit.models.backbones.build_backbone()``).
      n_joints: J, the number of joints of the all-formats joint space.
      head_mode: 'separate', 'latent' or 'hybrid' (module docstring).
      acae: the ``AffineCombiningAutoencoder`` (L latents, J joints) for 'latent' and 'hybrid'; used as
        given (freeze it with ``acae.trainable = False`` to keep it fixed as in the paper).
      depth_bins, box_size_mm, kernel_max_norm: of the head (:class:`MetrabsHead`).
      stride: input pixels per feature cell; None: inferred from the backbone's static shapes.
      format_slices: optional ``{format name: (start, stop)}`` joint ranges of each format inside the
        all-formats joint space (:meth:`format_outputs`).
      in_view_margin: margin, in strides, for a joint to count as in view (``IN_VIEW_MARGIN_STRIDES``).
      mix_3d_in_view: default weight of the 3D head for in-view joints in ``coords3d_abs`` (the rest comes
        from back-projecting the 2D head; :func:`reconstruct_absolute`).
      **kwargs: keras Model arguments (``name``...).

    Call: ``model(images, intrinsics, training=False, mix_3d_in_view=None)`` with images [B, H, W, 3] in
    [0, 1] and intrinsics [B, 3, 3] (px, of the crop); ``mix_3d_in_view`` overrides the configured mix
    (a float or a [B] tensor: to train as the reference implementation, pass values drawn uniformly in
    [0, 1] from the training loop's seeded generator; the model itself holds no random state).
    Returns a dict of float32 tensors:

    - ``coords2d`` [B, J, 2] px; ``coords3d_rel`` [B, J, 3] mm relative to the box centre;
      ``coords3d_abs`` [B, J, 3] mm, camera frame (the output to supervise and evaluate).
    - 'latent' and 'hybrid' also: ``latents2d`` [B, L, 2], ``latents3d_rel`` [B, L, 3],
      ``latents3d_abs`` [B, L, 3] (raw latent head; the ``coords*`` are their decodings).
    - 'hybrid' also: ``direct_coords2d``, ``direct_coords3d_rel``, ``direct_coords3d_abs`` (all-joints
      head, [B, J, ...]).

    The absolute reconstruction of each head uses the points it predicts in view (``geometry.points_in_image`` with
    ``in_view_margin * stride`` px).
    """

    def __init__(self, backbone, n_joints, head_mode='separate', acae=None, depth_bins=DEFAULT_DEPTH_BINS,
                 box_size_mm=BOX_SIZE_MM, stride=None, kernel_max_norm=None, format_slices=None,
                 in_view_margin=IN_VIEW_MARGIN_STRIDES, mix_3d_in_view=DEFAULT_MIX_3D_IN_VIEW, **kwargs):
        super().__init__(**kwargs)
        if head_mode not in HEAD_MODES:
            raise ValueError(f'head_mode must be one of {HEAD_MODES}; received head_mode={head_mode!r}')
        if isinstance(n_joints, bool) or not isinstance(n_joints, (int, np.integer)) or n_joints < 1:
            raise ValueError(f'n_joints must be a positive int; received n_joints={n_joints!r}')
        if head_mode != 'separate':
            if acae is None or not hasattr(acae, 'decode'):
                raise ValueError(f'head_mode={head_mode!r} needs an acae with decode(); received acae={acae!r}')
            if getattr(acae, 'n_joints', n_joints) != n_joints:
                raise ValueError(f'acae decodes to {acae.n_joints} joints but n_joints={n_joints!r}')
        if stride is None:
            stride = _infer_stride(backbone)
        if not in_view_margin >= 0:
            raise ValueError(f'in_view_margin must be >= 0; received in_view_margin={in_view_margin!r}')
        self.backbone = backbone
        self.n_joints = int(n_joints)
        self.head_mode = head_mode
        self.acae = acae if head_mode != 'separate' else None
        self.n_latents = int(acae.n_latents) if self.acae is not None else 0
        self.format_slices = None if format_slices is None else {
            str(k): (int(v[0]), int(v[1])) for k, v in dict(format_slices).items()}
        if self.format_slices is not None:
            for key, (start, stop) in self.format_slices.items():
                if not 0 <= start < stop <= self.n_joints:
                    raise ValueError(f'format_slices[{key!r}] must lie in [0, n_joints={self.n_joints}]; '
                                     f'received {(start, stop)}')
        if not 0 <= mix_3d_in_view <= 1:
            raise ValueError(f'mix_3d_in_view must be in [0, 1]; received mix_3d_in_view={mix_3d_in_view!r}')
        self.in_view_margin = float(in_view_margin)
        self.mix_3d_in_view = float(mix_3d_in_view)
        n_points = {'separate': self.n_joints, 'latent': self.n_latents,
                    'hybrid': self.n_latents + self.n_joints}[head_mode]
        self.head = MetrabsHead(n_points, depth_bins=depth_bins, box_size_mm=box_size_mm, stride=stride,
                                kernel_max_norm=kernel_max_norm, name='metrabs_head')

    @property
    def stride(self):
        return self.head.stride

    def build(self, images_shape, intrinsics_shape=None):
        # The backbone is a built functional model; the head needs only the feature channels.
        self.head.build((None, None, None, self.backbone.output_shape[-1]))
        if self.acae is not None and not self.acae.built:
            self.acae.build((None, self.n_joints, 3))
        self.built = True

    def call(self, images, intrinsics, training=None, mix_3d_in_view=None):
        features = self.backbone(images, training=training)
        coords2d, coords3d_rel = self.head(features)
        image_size = _image_size(images)
        intrinsics = tf.cast(intrinsics, tf.float32)
        margin_px = self.in_view_margin * self.head.stride
        mix = self.mix_3d_in_view if mix_3d_in_view is None else mix_3d_in_view

        def absolute(points2d, points3d_rel):
            valid = geometry.points_in_image(points2d, image_size, margin_px)
            return reconstruct_absolute(points2d, points3d_rel, intrinsics, valid, mix_3d_in_view=mix)

        if self.head_mode == 'separate':
            return dict(coords2d=coords2d, coords3d_rel=coords3d_rel,
                        coords3d_abs=absolute(coords2d, coords3d_rel))
        n_lat = self.n_latents
        latents2d, latents3d_rel = coords2d[:, :n_lat], coords3d_rel[:, :n_lat]
        latents3d_abs = absolute(latents2d, latents3d_rel)
        outputs = dict(
            coords2d=self.acae.decode(latents2d), coords3d_rel=self.acae.decode(latents3d_rel),
            coords3d_abs=self.acae.decode(latents3d_abs), latents2d=latents2d,
            latents3d_rel=latents3d_rel, latents3d_abs=latents3d_abs)
        if self.head_mode == 'hybrid':
            direct2d, direct3d_rel = coords2d[:, n_lat:], coords3d_rel[:, n_lat:]
            outputs.update(direct_coords2d=direct2d, direct_coords3d_rel=direct3d_rel,
                           direct_coords3d_abs=absolute(direct2d, direct3d_rel))
        return outputs

    def format_outputs(self, outputs, format_name):
        """The joints of one format: every [B, J, ...] entry of ``outputs`` sliced by ``format_slices``."""
        if not self.format_slices or format_name not in self.format_slices:
            known = [] if not self.format_slices else sorted(self.format_slices)
            raise ValueError(f'format_name must be one of {known}; received format_name={format_name!r}')
        start, stop = self.format_slices[format_name]
        return {k: v[:, start:stop] for k, v in outputs.items()
                if not k.startswith('latents')}

    def get_config(self):
        config = super().get_config()
        config.update(
            backbone=keras.saving.serialize_keras_object(self.backbone), n_joints=self.n_joints,
            head_mode=self.head_mode,
            acae=None if self.acae is None else keras.saving.serialize_keras_object(self.acae),
            depth_bins=self.head.depth_bins, box_size_mm=self.head.box_size_mm, stride=self.head.stride,
            kernel_max_norm=self.head.kernel_max_norm,
            format_slices=None if self.format_slices is None else {
                k: list(v) for k, v in self.format_slices.items()},
            in_view_margin=self.in_view_margin, mix_3d_in_view=self.mix_3d_in_view)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config['backbone'] = keras.saving.deserialize_keras_object(config['backbone'])
        if config.get('acae') is not None:
            config['acae'] = keras.saving.deserialize_keras_object(config['acae'])
        return cls(**config)


def _image_size(images):
    """(height, width) of an image batch [B, H, W, 3]: Python ints when static, else scalar tensors."""
    height, width = images.shape[1], images.shape[2]
    dynamic = tf.shape(images)
    return (dynamic[1] if height is None else height, dynamic[2] if width is None else width)


def _infer_stride(backbone):
    in_size = backbone.input_shape[1]
    out_size = backbone.output_shape[1]
    if in_size is None or out_size is None or in_size % out_size:
        raise ValueError(f'cannot infer the stride from the backbone (input {backbone.input_shape}, output '
                         f'{backbone.output_shape}); pass stride explicitly, received stride=None')
    return in_size // out_size
