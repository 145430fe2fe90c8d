"""Load-time person crops from full images with cameras, inside tf.data (real datasets).

A *full-image example* (the contract of :mod:`posekit.data.examples`: an image file or encoded bytes, the
camera's intrinsics, extrinsics ``R``, ``t`` (mm, world -> camera), OpenCV distortion and world up direction,
a person box, and joints in world mm and/or image px of one skeleton) becomes a *crop example* of the
training contract (the one the rendered shards of :mod:`posekit.data.synth` hold: ``image`` uint8
[S, S, 3], ``intrinsics`` [3, 3] px, ``coords3d`` [J_all, 3] mm in the crop camera frame, ``coords2d``
[J_all, 2] px, ``joint_valid`` [J_all], ``is_3d``, ``example_id``) in the input pipeline:

1. the image file is read once per example (by :meth:`FullImageStream.get_raw`, in the pipeline's reader
   threads) and decoded in the graph (``tf.io.decode_image``, parallel over batches);
2. the crop camera is :func:`posekit.geometry.crop_camera` aimed at the box (margin
   ``geometry.DEFAULT_BOX_MARGIN``, upright with respect to the world's up direction seen from the camera,
   ``R @ world_up``), with MeTRAbs' augmentation (roll, zoom, shift of the aim point, flip) from the stateless
   parameters of :func:`posekit.data.augment.sample_params`;
3. the crop is cut by :func:`posekit.geometry.warp_to_crop`, undistorting with the example's coefficients --
   the two functions that the exported SavedModel (:mod:`posekit.export`) uses for its crops;
4. labels move exactly: 3D joints go world -> camera (R, t) -> crop camera (the crop rotation), their 2D
   labels are their projections with the crop intrinsics; 2D-only joints are undistorted, their rays rotated
   into the crop camera and projected; flipped crops permute the joints through the skeleton's mirror list;
   the skeleton's joints are placed in its slice of the model's joint space (the rest invalid);
5. photometric changes and random erasing of :mod:`posekit.data.augment` (same parameters).

Everything after step 1 is TF ops, identical eagerly and inside ``Dataset.map``; randomness is keyed like the
rest of the pipeline (seed, stream key, stream position), so a seed fixes crops bit for bit.
"""
from __future__ import annotations

import os
from typing import Dict, Mapping, Optional

import numpy as np
import tensorflow as tf

from posekit import geometry
from posekit.data import augment as augment_lib
from posekit.skeletons import JointSpace

#: Fields every full-image source must return from ``get`` (see :mod:`posekit.data.examples`).
RAW_FIELDS = ('intrinsics', 'rotation', 'translation', 'distortion', 'world_up', 'box', 'joints3d', 'joints2d',
              'joint_valid', 'is_3d')
#: Fields of the crop examples made here (the training contract's fields that real data can provide).
CROP_FIELDS = ('image', 'intrinsics', 'coords3d', 'coords2d', 'joint_valid', 'is_3d', 'example_id')
N_DISTORTION = 5


class FullImageStream:
    """A source of full-image examples bound to the model's joint space and crop size.

    ``interleave_by_composition`` accepts it beside the ordinary crop sources: its examples are cropped at
    load time (module docstring).

    Args:
      source: an indexable source (``len()``, ``get(indices)`` -> dict of stacked numpy arrays with the
        :data:`RAW_FIELDS`, plus ``image_path`` (str, relative to ``root``) and/or ``image_bytes`` (encoded)).
      joint_space: the model's :class:`posekit.skeletons.JointSpace` (or its list of formats).
      skeleton: the skeleton the source labels (one of the joint space's formats).
      crop_size: side S of the crops (px).
      root: folder the image paths are relative to (default: the source's ``root`` attribute, else '').
      box_margin: fraction of the box's larger side added around it.
      antialias_factor: ``geometry.warp_to_crop``'s supersampling (1: plain bilinear).
    """

    def __init__(self, source, joint_space, skeleton: str, crop_size: int, root: Optional[str] = None,
                 box_margin: float = geometry.DEFAULT_BOX_MARGIN, antialias_factor: int = 1):
        if not hasattr(source, 'get') or not hasattr(source, '__len__'):
            raise ValueError(f'source must have len() and get(indices), got {type(source).__name__}')
        if len(source) <= 0:
            raise ValueError('source must not be empty')
        self.joint_space = joint_space if isinstance(joint_space, JointSpace) else JointSpace(joint_space)
        if skeleton not in self.joint_space.slices:
            raise ValueError(f'skeleton must be one of the joint space formats {list(self.joint_space.formats)}, '
                             f'got {skeleton!r}')
        if not isinstance(crop_size, (int, np.integer)) or crop_size < 1:
            raise ValueError(f'crop_size must be a positive int, got {crop_size!r}')
        if not isinstance(antialias_factor, (int, np.integer)) or antialias_factor < 1:
            raise ValueError(f'antialias_factor must be an int >= 1, got {antialias_factor!r}')
        self.source = source
        self.skeleton = skeleton
        self.crop_size = int(crop_size)
        self.root = root if root is not None else getattr(source, 'root', '') or ''
        self.box_margin = float(box_margin)
        self.antialias_factor = int(antialias_factor)
        sl = self.joint_space.slices[skeleton]
        self.joint_slice = (sl.start, sl.stop)
        mirror = np.asarray(self.joint_space.mirror[sl.start:sl.stop]) - sl.start
        if np.any(mirror < 0) or np.any(mirror >= sl.stop - sl.start):
            raise ValueError(f'the mirror permutation of {skeleton!r} leaves its slice of the joint space')
        self.mirror = mirror
        sample = source.get(np.zeros(1, np.int64))
        missing = [f for f in RAW_FIELDS if f not in sample]
        if missing or ('image_path' not in sample and 'image_bytes' not in sample):
            raise ValueError(f'source must provide the fields {list(RAW_FIELDS)} and image_path or image_bytes; '
                             f'missing {missing or ["image_path/image_bytes"]}')
        n_joints = sl.stop - sl.start
        if np.shape(sample['joints3d'])[1:] != (n_joints, 3) or np.shape(sample['joints2d'])[1:] != (n_joints, 2):
            raise ValueError(f'joints3d/joints2d must be [N, {n_joints}, 3]/[N, {n_joints}, 2] for skeleton '
                             f'{skeleton!r}, got {np.shape(sample["joints3d"])} and {np.shape(sample["joints2d"])}')

    def __len__(self) -> int:
        return len(self.source)

    def _read(self, example_bytes, path) -> bytes:
        if example_bytes is not None and len(example_bytes):
            return bytes(example_bytes)
        full = os.path.join(self.root, str(path))
        try:
            with open(full, 'rb') as f:
                return f.read()
        except OSError as e:
            raise FileNotFoundError(f'cannot read the image {full!r} of a full-image example: {e}') from e

    def get_raw(self, indices) -> Dict[str, np.ndarray]:
        """The raw fields of ``indices`` (numpy) with ``image_bytes`` (object array of the file contents).

        Reads each image file once. Thread-safe if the source is.
        """
        indices = np.asarray(indices, np.int64)
        ex = self.source.get(indices)
        n = len(indices)
        stored = ex.get('image_bytes')
        paths = ex.get('image_path')
        encoded = np.empty(n, dtype=object)
        for i in range(n):
            encoded[i] = self._read(None if stored is None else stored[i], None if paths is None else paths[i])
        distortion = np.zeros((n, N_DISTORTION))
        coeffs = np.asarray(ex['distortion'], np.float64).reshape(n, -1)[:, :N_DISTORTION]
        distortion[:, :coeffs.shape[1]] = coeffs
        out = dict(image_bytes=encoded, distortion=distortion)
        for field in RAW_FIELDS:
            if field != 'distortion':
                out[field] = np.asarray(ex[field])
        out['example_id'] = np.asarray(ex['example_id'], np.int64) if 'example_id' in ex else indices
        return out

    def raw_spec(self) -> Dict[str, tf.TensorSpec]:
        """TensorSpecs (without the batch dimension) of :meth:`get_raw`'s fields."""
        j = self.joint_slice[1] - self.joint_slice[0]
        return dict(image_bytes=tf.TensorSpec([], tf.string), intrinsics=tf.TensorSpec([3, 3], tf.float64),
                    rotation=tf.TensorSpec([3, 3], tf.float64), translation=tf.TensorSpec([3], tf.float64),
                    distortion=tf.TensorSpec([N_DISTORTION], tf.float64), world_up=tf.TensorSpec([3], tf.float64),
                    box=tf.TensorSpec([4], tf.float32), joints3d=tf.TensorSpec([j, 3], tf.float32),
                    joints2d=tf.TensorSpec([j, 2], tf.float32), joint_valid=tf.TensorSpec([j], tf.bool),
                    is_3d=tf.TensorSpec([], tf.bool), example_id=tf.TensorSpec([], tf.int64))

    def crop_spec(self) -> Dict[str, tuple]:
        """{field: (shape, numpy dtype)} of the crop examples (the pipeline's spec format)."""
        n_all = self.joint_space.n_joints
        s = self.crop_size
        return {'image': ((s, s, 3), np.dtype(np.uint8)), 'intrinsics': ((3, 3), np.dtype(np.float32)),
                'coords3d': ((n_all, 3), np.dtype(np.float32)), 'coords2d': ((n_all, 2), np.dtype(np.float32)),
                'joint_valid': ((n_all,), np.dtype(bool)), 'is_3d': ((), np.dtype(bool)),
                'example_id': ((), np.dtype(np.int64))}


def raw_to_tensors(raw: Mapping[str, np.ndarray], stream: FullImageStream) -> Dict[str, tf.Tensor]:
    """:meth:`FullImageStream.get_raw` output as tensors of :meth:`FullImageStream.raw_spec` (eager use)."""
    return {k: tf.constant(np.asarray(raw[k], object) if k == 'image_bytes' else raw[k], spec.dtype)
            for k, spec in stream.raw_spec().items()}


def _params(keys, config: Optional[augment_lib.AugmentConfig], batch_size):
    if config is None:
        config = augment_lib.AugmentConfig.identity()
    if keys is None:
        keys = tf.zeros([batch_size, 3], tf.int64)
    return augment_lib.sample_params(keys, config), config


def crop_batch(raw: Mapping[str, tf.Tensor], stream: FullImageStream, keys=None,
               config: Optional[augment_lib.AugmentConfig] = None) -> Dict[str, tf.Tensor]:
    """Crops a batch of raw full-image examples (TF; eagerly or in tf.data).

    Args:
      raw: dict of batched tensors as :meth:`FullImageStream.raw_spec` (leading B).
      stream: the :class:`FullImageStream` (joint space, skeleton, crop size, margin).
      keys: [B, K] int64 augmentation keys (``posekit.data.augment.uniform_from_keys``); None: zeros.
      config: the AugmentConfig (None: no augmentation). Its ``output_side`` must be None or the crop size.

    Returns:
      dict of the :data:`CROP_FIELDS` (leading B): ``image`` uint8 [B, S, S, 3], ``intrinsics`` float32
      [B, 3, 3] px, ``coords3d`` float32 [B, J_all, 3] mm (crop camera frame, zeros outside the skeleton's
      slice and for 2D-only examples), ``coords2d`` float32 [B, J_all, 2] px, ``joint_valid`` bool
      [B, J_all], ``is_3d`` bool [B], ``example_id`` int64 [B].
    """
    if config is not None and config.output_side not in (None, stream.crop_size):
        raise ValueError(f'config.output_side must be None or the crop size {stream.crop_size}, '
                         f'got {config.output_side}')
    size = stream.crop_size
    k = tf.cast(raw['intrinsics'], tf.float64)
    rot = tf.cast(raw['rotation'], tf.float64)
    dist = tf.cast(raw['distortion'], tf.float64)
    batch = tf.shape(k)[0]
    params, config = _params(keys, config, batch)
    up = tf.linalg.matvec(rot, tf.cast(raw['world_up'], tf.float64))
    crop_rot, crop_k = geometry.crop_camera(k, tf.cast(raw['box'], tf.float64), size, stream.box_margin,
                                            distortion_coeffs=dist, up=up, roll=params['roll'],
                                            flip=params['flip'], zoom=params['zoom'], shift=params['shift'])

    def cut(args):
        data, k_i, rot_i, crop_k_i, dist_i = args
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        return geometry.warp_to_crop(image, k_i, rot_i, crop_k_i, size, dist_i, stream.antialias_factor)

    images = tf.map_fn(cut, (raw['image_bytes'], k, crop_rot, crop_k, dist),
                       fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32), parallel_iterations=8)

    # Labels of the skeleton's joints, [B, J] (float64 while transforming).
    is_3d = tf.cast(raw['is_3d'], tf.bool)
    world = tf.cast(raw['joints3d'], tf.float64)
    finite3d = tf.reduce_all(tf.math.is_finite(world), axis=-1)
    world = tf.where(finite3d[..., None], world, tf.zeros_like(world))
    camera = tf.einsum('bij,bkj->bki', rot, world) + tf.cast(raw['translation'], tf.float64)[:, None]
    crop3d = tf.einsum('bij,bkj->bki', crop_rot, camera)
    pixels = tf.cast(raw['joints2d'], tf.float64)
    finite2d = tf.reduce_all(tf.math.is_finite(pixels), axis=-1)
    pixels = tf.where(finite2d[..., None], pixels, tf.zeros_like(pixels))
    rays = geometry.undistort_normalized_tf(geometry.pixels_to_normalized(pixels, k), dist)
    rays = tf.concat([rays, tf.ones_like(rays[..., :1])], -1)
    crop_rays = tf.einsum('bij,bkj->bki', crop_rot, rays)
    from_3d = geometry.project_tf(crop3d, crop_k, min_depth=geometry.MIN_PROJECTION_DEPTH_MM)
    from_2d = geometry.project_tf(crop_rays, crop_k, min_depth=1e-6)
    coords2d = tf.where(is_3d[:, None, None], from_3d, from_2d)
    valid = tf.cast(raw['joint_valid'], tf.bool) & tf.where(is_3d[:, None], finite3d, finite2d)
    crop3d = tf.where(is_3d[:, None, None], crop3d, tf.zeros_like(crop3d))

    # Mirrored crops show the mirror image: joint j is the person's joint mirror[j].
    flip = tf.cast(params['flip'], tf.bool)
    mirror = tf.constant(stream.mirror, tf.int32)

    def permute(tensor):
        return tf.where(tf.reshape(flip, [-1] + [1] * (tensor.shape.rank - 1)), tf.gather(tensor, mirror, axis=1),
                        tensor)

    crop3d, coords2d, valid = permute(crop3d), permute(coords2d), permute(valid)
    start, stop = stream.joint_slice
    n_all = stream.joint_space.n_joints

    def place(tensor):
        before = tf.zeros(tf.concat([tf.shape(tensor)[:1], [start], tf.shape(tensor)[2:]], 0), tensor.dtype)
        after = tf.zeros(tf.concat([tf.shape(tensor)[:1], [n_all - stop], tf.shape(tensor)[2:]], 0), tensor.dtype)
        return tf.concat([before, tensor, after], axis=1)

    if config.has_photometric:
        images = augment_lib.photometric_augment(images, params)
    if config.has_erase:
        images = augment_lib.random_erase(images, params)
    return dict(image=augment_lib.to_uint8(images), intrinsics=tf.cast(crop_k, tf.float32),
                coords3d=tf.cast(place(crop3d), tf.float32), coords2d=tf.cast(place(coords2d), tf.float32),
                joint_valid=place(valid), is_3d=is_3d, example_id=tf.cast(raw['example_id'], tf.int64))


def crop_examples(stream: FullImageStream, indices) -> Dict[str, np.ndarray]:
    """The un-augmented crop examples of ``indices`` (numpy; eager TF): for evaluation and pseudo ground truth."""
    indices = np.asarray(indices, np.int64)
    out = crop_batch(raw_to_tensors(stream.get_raw(indices), stream), stream)
    return {k: v.numpy() for k, v in out.items()}


def crop_batches(stream: FullImageStream, batch_size: int, count: Optional[int] = None):
    """Yields :func:`crop_examples` of the first ``count`` (default all) examples, ``batch_size`` at a time."""
    n = len(stream) if count is None else min(int(count), len(stream))
    for start in range(0, n, batch_size):
        yield crop_examples(stream, np.arange(start, min(start + batch_size, n)))
