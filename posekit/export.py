"""SavedModel export of a trained :class:`posekit.models.metrabs.Metrabs` for downstream apps.

:func:`export_model` writes a TensorFlow SavedModel that runs the whole MeTRAbs test-time procedure
(crop cameras, image warping, the network, test-time augmentation, back-transformation, projection)
in the graph. Loading it needs TensorFlow only: neither posekit nor Keras is imported.

Usage (downstream app, TensorFlow only)
---------------------------------------
::

    import tensorflow as tf
    model = tf.saved_model.load('out/saved_model')

    image = tf.io.decode_jpeg(tf.io.read_file('people.jpg'))            # uint8 [H, W, 3]
    boxes = tf.constant([[120., 40., 180., 420.]])                       # [N, 4]: x, y, w, h (px)
    pred = model.estimate_poses(image, boxes)                            # default skeleton, 55 deg FOV
    pred['poses3d']   # float32 [N, J, 3]: mm, camera frame of the image (x right, y down, z forward)
    pred['poses2d']   # float32 [N, J, 2]: px in the image (projection of poses3d)

    # Calibrated camera, another skeleton, 5 test-time augmentations:
    pred = model.estimate_poses(image, boxes, intrinsic_matrix=K, skeleton='smpl_24', num_aug=5)

    # Several images at once (boxes ragged: any number per image):
    images = tf.stack([image, image])                                    # uint8 [B, H, W, 3]
    boxes = tf.ragged.constant([[[120., 40., 180., 420.]], []], ragged_rank=1, inner_shape=(4,))
    pred = model.estimate_poses_batched(images, boxes, skeleton='coco_19')
    pred['poses3d']   # tf.RaggedTensor [B, (N_b), J, 3]

    # Skeleton metadata (every format the model predicts):
    model.skeletons.numpy()                                   # [b'h36m_17', b'smpl_24', ...]
    model.per_skeleton_joint_names['h36m_17'].numpy()        # [J] bytes: b'pelv', b'rhip', ...
    model.per_skeleton_joint_edges['h36m_17'].numpy()        # [E, 2] int32 (child, parent) indices

    # If a person detector was given at export time:
    pred = model.detect_poses(image)                          # adds 'boxes' [N, 4] and 'scores' [N]

    # TF Serving / converters: the 'serving_default' signature takes image uint8 [H, W, 3] and
    # boxes float32 [N, 4] and returns {'poses3d', 'poses2d'} for the default skeleton.
    model.signatures['serving_default'](image=image, boxes=boxes)

Functions of the exported object
--------------------------------
- ``estimate_poses(image, boxes, intrinsic_matrix=<default>, skeleton=<default>, num_aug=1)``:
  ``image`` uint8 [H, W, 3] (RGB, 0-255); ``boxes`` float32 [N, 4] person boxes (x, y, w, h) in px of the
  image; ``intrinsic_matrix`` float32 [3, 3] ``[[fx, skew, cx], [0, fy, cy], [0, 0, 1]]`` px, omitted
  (or all zeros) for the default camera: a ``default_fov_degrees`` (55) field of view along the larger
  image side with the principal point at the image centre; ``skeleton`` string scalar, one of
  ``model.skeletons``; ``num_aug`` int32 scalar >= 1. Returns ``{'poses3d': float32 [N, J, 3] mm in the
  camera frame of the image, 'poses2d': float32 [N, J, 2] px}``, the projection of ``poses3d`` with
  the intrinsics (depths clamped to at least ``MIN_PROJECTION_DEPTH_MM`` = 1 mm of
  :mod:`posekit.geometry`, so points behind the camera stay finite).
- ``estimate_poses_batched(images, boxes, intrinsic_matrix=<default>, skeleton=<default>, num_aug=1)``:
  ``images`` uint8 [B, H, W, 3]; ``boxes`` float32 ``tf.RaggedTensor`` [B, (N_b), 4] (ragged_rank 1);
  ``intrinsic_matrix`` float32 [B, 3, 3] (an all-zero matrix selects the default camera for that
  image). Returns ragged ``poses3d`` [B, (N_b), J, 3] and ``poses2d`` [B, (N_b), J, 2].
- ``detect_poses(image, intrinsic_matrix=<default>, skeleton=<default>, num_aug=1,
  detector_threshold=0.3, max_detections=-1)`` (only when exported with a detector): the detector's
  boxes with score >= ``detector_threshold``, at most ``max_detections`` (-1: all) by decreasing score;
  returns ``boxes`` [N, 4], ``scores`` [N], ``poses3d``, ``poses2d``.
- Attributes: ``skeletons`` (string [F]), ``per_skeleton_joint_names`` (dict format -> string [J]),
  ``per_skeleton_joint_edges`` (dict format -> int32 [E, 2] (child, parent) pairs),
  ``default_skeleton`` (string scalar), ``crop_size`` (int32 scalar) -- all ``tf.Variable``: read them
  with ``.numpy()``.
- Signatures: ``serving_default`` (image, boxes) -> poses of the default skeleton with the default
  camera and no augmentation; ``estimate_poses`` (image, boxes, intrinsic_matrix, skeleton, num_aug),
  all inputs required.

Inputs and errors
-----------------
Every function has an input signature, so it is traced once and never retraces for new shapes.
TensorFlow converts numpy arrays and Python lists to the signature's dtype (float64 boxes or
intrinsics are fine), but tensors of another dtype or rank are rejected with a ``TypeError`` listing
the expected ``TensorSpec`` (e.g. a float32 image tensor, boxes [N, 3]). Because that conversion would
silently truncate a numpy float image in [0, 1] to zeros, an image whose pixels are all 0 or 1 is
rejected when it has boxes (such an image is black: there is no pose to estimate). An unknown
skeleton, non-finite or malformed intrinsics, non-finite boxes or boxes without positive width and
height, an empty image, ``num_aug < 1`` or a batch whose boxes do not have one row per image raise
``InvalidArgumentError`` with a message naming the argument. So do implausible inputs: boxes that do not
overlap the image, box sides below ``MIN_BOX_SIDE_PX`` or above ``MAX_BOX_SIDE_PER_IMAGE_SIDE`` times the
larger image side, and focal lengths outside ``FOCAL_RANGE_PER_IMAGE_SIDE`` times the larger image side.
A numpy integer image with values above 255 is wrapped by TensorFlow's conversion to the uint8 signature
before the function runs and cannot be detected (README, "Using an exported model").

Method (MeTRAbs test time)
--------------------------
For each box a virtual *crop camera* shares the optical centre of the image camera and is turned
towards the ray of the box centre, upright (its x axis stays perpendicular to the image camera's
vertical); its focal length makes the box's larger side plus ``box_margin`` fill the ``crop_size``
crop. This is :func:`posekit.geometry.crop_camera`, the same function that aims the training crops
(:mod:`posekit.data.synth`, :mod:`posekit.data.augment`). The image is resampled into the crop by
:func:`posekit.geometry.warp_to_crop` (bilinear; with ``antialias_factor`` a > 1 the crop is rendered
at a times the size and average-pooled). The network's ``coords3d_abs`` (crop camera frame) are rotated
back by ``M^T``; ``poses2d`` is their projection with the image intrinsics. Test-time augmentation
``a`` of ``num_aug`` rolls the crop camera about its optical axis by an angle from
``linspace(-tta_roll_degrees, +tta_roll_degrees, num_aug)`` (0 when ``num_aug`` is 1) and mirrors it
when ``(a - num_aug // 2)`` is odd; mirrored predictions go through the joint space's mirror
permutation. The augmentations are averaged in the image camera frame.

Detector interface
------------------
``detector`` (a SavedModel path given to :func:`export_model`) must load with
``tf.saved_model.load`` into an object with a ``detect`` function: ``detect(image)`` with ``image``
uint8 [H, W, 3] returns a dict with ``boxes`` float32 [N, 4] (x, y, w, h, px of the image) and
``scores`` float32 [N] (higher is more confident; non-maximum suppression already applied).
"""
from __future__ import annotations

import math
import os

import numpy as np
import tensorflow as tf

from posekit import geometry
from posekit.models import metrabs as metrabs_lib
from posekit.skeletons import JointSpace, get as get_skeleton

#: Default skeleton of the exported functions and of ``serving_default``.
DEFAULT_SKELETON = 'h36m_17'
#: Field of view (degrees, along the larger image side) of the camera assumed without intrinsics.
DEFAULT_FOV_DEGREES = 55.0
#: Fraction of the box's larger side added around it in the crop; the training crops of
#: :mod:`posekit.data.synth` frame the person's box with the same margin (``CameraSpec.box_margin``).
DEFAULT_BOX_MARGIN = geometry.DEFAULT_BOX_MARGIN
#: Largest roll (degrees) of the test-time augmentations (training rolls +-20 degrees by default).
DEFAULT_TTA_ROLL_DEGREES = 20.0
#: Default score threshold of ``detect_poses``.
DEFAULT_DETECTOR_THRESHOLD = 0.3
#: Intensity of 8-bit images that maps to 1.0 at the network's input.
PIXEL_MAX = 255.0
#: Tolerance on the fixed entries (0, 0, 1 and the lower triangle) of an intrinsic matrix.
INTRINSICS_TOLERANCE = 1e-6
#: Plausible focal lengths, in units of the image's larger side: 0.05 to 100 (a field of view of about 168
#: down to 0.6 degrees); outside, ``intrinsic_matrix`` is refused (a focal length of 1e-3 px gives depths of
#: 1e12 mm).
FOCAL_RANGE_PER_IMAGE_SIDE = (0.05, 100.0)
#: Smallest box side (px) the model estimates a pose for: smaller boxes are refused (the crop would
#: magnify a few pixels into a person at kilometres).
MIN_BOX_SIDE_PX = 2.0
#: Largest box side, in units of the image's larger side.
MAX_BOX_SIDE_PER_IMAGE_SIDE = 10.0


# ----------------------------------------------------------------------------------------------
# Pure TF geometry (usable eagerly and in graphs)
# ----------------------------------------------------------------------------------------------

def tta_params(num_aug, max_roll_degrees=DEFAULT_TTA_ROLL_DEGREES):
    """Rolls [A] (rad, float64) and flips [A] (bool) of ``num_aug`` = A test-time augmentations.

    Rolls are ``linspace(-max, max, A)`` (just 0 for A = 1); augmentation ``a`` is mirrored when
    ``a - A // 2`` is odd, so A = 1 is the identity and the middle one of an odd A is unflipped.
    """
    num_aug = tf.cast(num_aug, tf.int32)
    max_roll = math.radians(max_roll_degrees)
    steps = tf.cast(tf.maximum(num_aug - 1, 1), tf.float64)
    index = tf.range(num_aug)
    rolls = tf.where(num_aug > 1, -max_roll + 2.0 * max_roll * tf.cast(index, tf.float64) / steps,
                     tf.zeros([num_aug], tf.float64))
    flips = tf.math.floormod(index - num_aug // 2, 2) != 0
    return rolls, flips


def _checked_num_aug(num_aug):
    """``num_aug`` (int32 scalar) after asserting it is >= 1 (the message names it and its value)."""
    check = tf.debugging.Assert(num_aug >= 1, ['num_aug must be >= 1; received num_aug:', num_aug])
    with tf.control_dependencies([check]):
        return tf.identity(num_aug)


def make_crops(images, image_ids, intrinsics, rotation, crop_intrinsics, crop_size, antialias_factor=1):
    """Cuts one crop per crop camera out of its image with :func:`posekit.geometry.warp_to_crop`.

    Args:
      images: [B, H, W, 3] images (uint8 or float32).
      image_ids: [T] int, the image of each crop.
      intrinsics: [T, 3, 3] intrinsics of each crop's image; rotation, crop_intrinsics: [T, 3, 3] crop
        cameras (:func:`posekit.geometry.crop_camera`).
      crop_size: S (px).
      antialias_factor: a >= 1 (see ``warp_to_crop``).

    Returns:
      [T, S, S, 3] float32 (0-255); outside the image 0.
    """
    images = tf.convert_to_tensor(images)

    def warp_one(args):
        image_id, k, rot, crop_k = args
        return geometry.warp_to_crop(images[image_id], k, rot, crop_k, crop_size,
                                     antialias_factor=antialias_factor)

    return tf.map_fn(warp_one, (tf.cast(image_ids, tf.int32), tf.cast(intrinsics, tf.float64),
                                tf.cast(rotation, tf.float64), tf.cast(crop_intrinsics, tf.float64)),
                     fn_output_signature=tf.TensorSpec([crop_size, crop_size, 3], tf.float32))


def uncrop_poses(coords, rotation, flips, mirror):
    """Crop-camera poses back to the image camera: the inverse of the crop camera's label transform.

    A mirrored crop shows the mirror image of the person, so its joint ``j`` is the person's joint
    ``mirror[j]`` (as in :func:`posekit.data.augment.transform_labels`, whose crop-frame labels are
    ``rotation @ p[mirror]`` for flipped examples); the result is ``rotation^T @ coords[mirror]`` for
    flipped crops and ``rotation^T @ coords`` otherwise.

    Args:
      coords: [T, J, 3] crop-camera points (mm).
      rotation: [T, 3, 3] image camera -> crop camera rotations (``crop_cameras``; det -1 when flipped).
      flips: [T] bool, the crops that were mirrored.
      mirror: J ints, the joint space's mirror permutation.

    Returns:
      [T, J, 3] float64 points in the image camera frame (mm).
    """
    coords = tf.cast(coords, tf.float64)
    coords = tf.where(tf.reshape(tf.cast(flips, tf.bool), [-1, 1, 1]), tf.gather(coords, mirror, axis=1), coords)
    return tf.einsum('tji,tkj->tki', tf.cast(rotation, tf.float64), coords)


# ----------------------------------------------------------------------------------------------
# The exported module
# ----------------------------------------------------------------------------------------------

class _Untracked:
    """Holds an object without making it a SavedModel dependency (not a Trackable)."""

    def __init__(self, model):
        self.model = model


def _tf_variable(variable):
    """The tf.Variable behind a Keras 3 variable (TensorFlow backend), or ``variable`` itself."""
    value = getattr(variable, 'value', None)
    return value if isinstance(value, tf.Variable) else variable


class PoseEstimatorModule(tf.Module):
    """The tf.Module written by :func:`export_model` (see the module docstring for its interface).

    Args:
      model: a built ``Metrabs`` (its ``coords3d_abs`` covers ``joint_space``).
      joint_space: the ``posekit.skeletons.JointSpace`` the model predicts.
      crop_size: side of the network's input crop (px).
      default_skeleton, default_fov_degrees, box_margin, tta_roll_degrees, antialias_factor: see
        :func:`export_model`.
      detector: None or a loaded detector object (module docstring, "Detector interface").
    """

    def __init__(self, model, joint_space, crop_size, default_skeleton=DEFAULT_SKELETON,
                 default_fov_degrees=DEFAULT_FOV_DEGREES, box_margin=DEFAULT_BOX_MARGIN,
                 tta_roll_degrees=DEFAULT_TTA_ROLL_DEGREES, antialias_factor=1, detector=None,
                 name='pose_estimator'):
        super().__init__(name=name)
        # The Keras model stays out of the object graph (a plain holder is not tracked): only its
        # tf.Variables are saved, so loading needs no Keras object.
        self._holder = _Untracked(model)
        self._model_variables = [_tf_variable(v) for v in model.variables]
        self._formats = tuple(joint_space.formats)
        self._starts = [joint_space.slices[f].start for f in self._formats]
        self._stops = [joint_space.slices[f].stop for f in self._formats]
        self._mirror = list(joint_space.mirror)
        self._crop_size = int(crop_size)
        self._default_skeleton = default_skeleton
        self._fov = float(default_fov_degrees)
        self._box_margin = float(box_margin)
        self._tta_roll = float(tta_roll_degrees)
        self._antialias = int(antialias_factor)
        self._default_slice = joint_space.slices[default_skeleton]

        self.skeletons = tf.Variable(list(self._formats), trainable=False, name='skeletons')
        self.per_skeleton_joint_names = {
            f: tf.Variable(list(get_skeleton(f).names), trainable=False, name=f'joint_names_{f}')
            for f in self._formats}
        self.per_skeleton_joint_edges = {
            f: tf.Variable(np.array(get_skeleton(f).edges, np.int32).reshape(-1, 2), trainable=False,
                           name=f'joint_edges_{f}') for f in self._formats}
        self.default_skeleton = tf.Variable(default_skeleton, trainable=False, name='default_skeleton')
        self.crop_size = tf.Variable(self._crop_size, dtype=tf.int32, trainable=False, name='crop_size')

        self._core = tf.function(self._estimate, input_signature=[
            tf.TensorSpec([None, None, None, 3], tf.uint8, name='images'),
            tf.TensorSpec([None], tf.int32, name='image_ids'),
            tf.TensorSpec([None, 4], tf.float32, name='boxes'),
            tf.TensorSpec([None, 3, 3], tf.float64, name='intrinsics'),
            tf.TensorSpec([None], tf.int32, name='joint_indices'),
            tf.TensorSpec([], tf.int32, name='num_aug')])
        self.estimate_poses = self._make_estimate_poses()
        self.estimate_poses_batched = self._make_estimate_poses_batched()
        if detector is not None:
            self._detector = detector
            self.detect_poses = self._make_detect_poses()

    # -- graph pieces ---------------------------------------------------------------------------

    def _skeleton_indices(self, skeleton):
        """[J] int32 joint-space indices of ``skeleton`` (a string scalar tensor); asserts it is known."""
        known = tf.constant(self._formats)
        match = tf.equal(known, skeleton)
        check = tf.debugging.Assert(
            tf.reduce_any(match),
            ['skeleton must be one of the exported skeletons [', tf.strings.reduce_join(known, separator=', '),
             ']; received skeleton:', skeleton])
        with tf.control_dependencies([check]):
            index = tf.argmax(tf.cast(match, tf.int32), output_type=tf.int32)
        start = tf.gather(tf.constant(self._starts, tf.int32), index)
        stop = tf.gather(tf.constant(self._stops, tf.int32), index)
        return tf.range(start, stop)

    def _intrinsics(self, intrinsic_matrix, image_height, image_width):
        """Validated float64 K [..., 3, 3]; all-zero matrices are replaced by the default camera."""
        k = tf.cast(intrinsic_matrix, tf.float64)
        checks = [tf.debugging.assert_all_finite(
            intrinsic_matrix, 'intrinsic_matrix must be finite (omit it, or pass zeros, for the default camera)')]
        is_default = tf.reduce_all(tf.equal(k, 0.0), axis=[-2, -1])
        default = geometry.fov_intrinsics(self._fov, image_height, image_width)
        k = tf.where(is_default[..., tf.newaxis, tf.newaxis], default, k)
        fixed = tf.stack([k[..., 1, 0], k[..., 2, 0], k[..., 2, 1], k[..., 2, 2] - 1.0], axis=-1)
        well_formed = tf.logical_and(
            tf.reduce_all(tf.abs(fixed) <= INTRINSICS_TOLERANCE),
            tf.reduce_all(tf.logical_and(k[..., 0, 0] > 0.0, k[..., 1, 1] > 0.0)))
        checks.append(tf.debugging.Assert(
            well_formed, ['intrinsic_matrix must be [[fx, skew, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0 '
                          '(px); received:', intrinsic_matrix], summarize=-1))
        side = tf.cast(tf.maximum(image_height, image_width), tf.float64)
        low, high = FOCAL_RANGE_PER_IMAGE_SIDE
        focal = tf.stack([k[..., 0, 0], k[..., 1, 1]], axis=-1)
        checks.append(tf.debugging.Assert(
            tf.reduce_all(tf.logical_and(focal >= low * side, focal <= high * side)),
            [f'intrinsic_matrix must have focal lengths fx, fy of {low} to {high} times the larger image side '
             '(px); image side:', side, 'received intrinsic_matrix:', intrinsic_matrix], summarize=-1))
        with tf.control_dependencies(checks):
            return tf.identity(k)

    def _check_inputs(self, images, image_ids, boxes, num_aug):
        """Assertions on the core inputs (images uint8 [B, H, W, 3], image_ids [T], boxes [T, 4]): finite boxes
        of positive size, then (holding vacuously for boxes that fail those, one error per cause) boxes that
        overlap the image with sides from ``MIN_BOX_SIDE_PX`` to ``MAX_BOX_SIDE_PER_IMAGE_SIDE`` image sides."""
        shape = tf.shape(images)
        has_boxes = tf.math.unsorted_segment_max(tf.ones_like(image_ids), image_ids, shape[0]) > 0
        visible = tf.reduce_max(images, axis=[1, 2, 3]) > 1
        height, width = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
        x, y, box_w, box_h = tf.unstack(boxes, 4, axis=1)
        malformed = tf.logical_or(tf.logical_not(tf.reduce_all(tf.math.is_finite(boxes), axis=1)),
                                  tf.logical_or(box_w <= 0, box_h <= 0))
        overlaps = tf.logical_and(tf.logical_and(x < width, y < height), tf.logical_and(x + box_w > 0, y + box_h > 0))
        large_enough = tf.minimum(box_w, box_h) >= MIN_BOX_SIDE_PX
        small_enough = tf.maximum(box_w, box_h) <= MAX_BOX_SIDE_PER_IMAGE_SIDE * tf.maximum(width, height)
        return [
            tf.debugging.assert_positive(shape[1:3], 'image must have positive height and width'),
            tf.debugging.Assert(
                tf.reduce_all(tf.logical_or(visible, tf.logical_not(has_boxes))),
                ['image must hold uint8 intensities 0-255, but every pixel is 0 or 1 (was a float image '
                 'in [0, 1] converted to uint8?)']),
            tf.debugging.assert_all_finite(boxes, 'boxes must be finite (x, y, w, h in px)'),
            tf.debugging.assert_positive(boxes[:, 2:],
                                         'boxes must have positive width and height (x, y, w, h in px)'),
            tf.debugging.Assert(tf.reduce_all(tf.logical_or(overlaps, malformed)),
                                ['boxes must overlap the image (x, y, w, h px); image width, height:', width, height,
                                 'received boxes:', boxes], summarize=64),
            tf.debugging.Assert(tf.reduce_all(tf.logical_or(large_enough, malformed)),
                                [f'boxes must have width and height >= {MIN_BOX_SIDE_PX} px; received boxes:',
                                 boxes], summarize=64),
            tf.debugging.Assert(
                tf.reduce_all(tf.logical_or(small_enough, malformed)),
                [f'boxes must have width and height <= {MAX_BOX_SIDE_PER_IMAGE_SIDE} times the larger image '
                 'side; image width, height:', width, height, 'received boxes:', boxes], summarize=64),
        ]

    def _poses_joint_space(self, images, image_ids, boxes, intrinsics, num_aug):
        """[T, J_all, 3] float64 mm, image camera frame, averaged over the augmentations.

        ``intrinsics`` [T, 3, 3] float64 are those of each box's image.
        """
        num_aug = tf.cast(num_aug, tf.int32)
        n_boxes = tf.shape(boxes)[0]
        rolls, flips = tta_params(num_aug, self._tta_roll)
        rep_k = tf.repeat(intrinsics, num_aug, axis=0)
        rep_boxes = tf.repeat(boxes, num_aug, axis=0)
        rep_ids = tf.repeat(image_ids, num_aug, axis=0)
        rep_rolls = tf.tile(rolls, [n_boxes])
        rep_flips = tf.tile(flips, [n_boxes])
        rotation, crop_k = geometry.crop_camera(rep_k, rep_boxes, self._crop_size, self._box_margin,
                                                roll=rep_rolls, flip=rep_flips)
        crops = make_crops(images, rep_ids, rep_k, rotation, crop_k, self._crop_size, self._antialias)
        crop_k32 = tf.cast(crop_k, tf.float32)
        # TF's graph-mode convolution mishandles an empty batch: run at least one (blank) crop.
        n_crops = tf.shape(crops)[0]
        padding = tf.maximum(1 - n_crops, 0)
        crops = tf.concat([crops, tf.zeros(tf.concat([[padding], tf.shape(crops)[1:]], 0))], axis=0)
        crop_k32 = tf.concat([crop_k32, tf.tile(tf.eye(3)[tf.newaxis], [padding, 1, 1])], axis=0)
        outputs = self._holder.model(crops / PIXEL_MAX, crop_k32, training=False)
        # [T*A, J_all, 3] mm, image camera frame:
        coords = uncrop_poses(outputs['coords3d_abs'][:n_crops], rotation, rep_flips, self._mirror)
        coords = tf.reshape(coords, [n_boxes, num_aug, len(self._mirror), 3])
        return tf.reduce_mean(coords, axis=1)

    def _estimate(self, images, image_ids, boxes, intrinsics, joint_indices, num_aug):
        """The core graph shared by every exported function (traced once: ``self._core``).

        Args:
          images: uint8 [B, H, W, 3]; image_ids: int32 [T], the image of each box; boxes: float32
          [T, 4] (x, y, w, h px); intrinsics: float64 [B, 3, 3] validated K of each image;
          joint_indices: int32 [J] joint-space indices to return; num_aug: int32 scalar.

        Returns:
          dict(poses3d float32 [T, J, 3] mm image camera frame, poses2d float32 [T, J, 2] px).
        """
        checks = self._check_inputs(images, image_ids, boxes, num_aug)
        with tf.control_dependencies(checks):
            box_k = tf.gather(intrinsics, image_ids)
            num_aug = _checked_num_aug(num_aug)
        coords = self._poses_joint_space(images, image_ids, boxes, box_k, num_aug)
        coords = tf.gather(coords, joint_indices, axis=1)
        poses2d = geometry.project_tf(coords, box_k, min_depth=geometry.MIN_PROJECTION_DEPTH_MM)
        return dict(poses3d=tf.cast(coords, tf.float32), poses2d=tf.cast(poses2d, tf.float32))

    def _estimate_single(self, image, boxes, intrinsic_matrix, joint_indices, num_aug):
        shape = tf.shape(image)
        intrinsics = self._intrinsics(intrinsic_matrix, shape[0], shape[1])
        return self._core(image[tf.newaxis], tf.zeros([tf.shape(boxes)[0]], tf.int32), boxes,
                          intrinsics[tf.newaxis], joint_indices, num_aug)

    # -- exported functions ---------------------------------------------------------------------
    # Every public function has an input signature (one trace; the loaded function never retraces for
    # new shapes) and calls the shared core graph ``self._core``.

    def _make_estimate_poses(self):
        module = self

        @tf.function(input_signature=[
            tf.TensorSpec([None, None, 3], tf.uint8, name='image'),
            tf.TensorSpec([None, 4], tf.float32, name='boxes'),
            tf.TensorSpec([3, 3], tf.float32, name='intrinsic_matrix'),
            tf.TensorSpec([], tf.string, name='skeleton'),
            tf.TensorSpec([], tf.int32, name='num_aug')])
        def estimate_poses(image, boxes, intrinsic_matrix=tf.zeros([3, 3]), skeleton=self._default_skeleton,
                           num_aug=1):
            """Poses of the people in ``boxes`` of one image (see the posekit.export docstring)."""
            return module._estimate_single(image, boxes, intrinsic_matrix, module._skeleton_indices(skeleton),
                                           num_aug)

        return estimate_poses

    def _make_estimate_poses_batched(self):
        module = self

        @tf.function(input_signature=[
            tf.TensorSpec([None, None, None, 3], tf.uint8, name='images'),
            tf.RaggedTensorSpec([None, None, 4], tf.float32, ragged_rank=1),
            tf.TensorSpec([None, 3, 3], tf.float32, name='intrinsic_matrix'),
            tf.TensorSpec([], tf.string, name='skeleton'),
            tf.TensorSpec([], tf.int32, name='num_aug')])
        def estimate_poses_batched(images, boxes, intrinsic_matrix=tf.zeros([0, 3, 3]),
                                   skeleton=self._default_skeleton, num_aug=1):
            """Poses of the boxes of several images (see the posekit.export docstring)."""
            shape = tf.shape(images)
            n_images = shape[0]
            checks = [tf.debugging.assert_equal(
                boxes.nrows(out_type=tf.int32), n_images,
                'boxes must have one row (of any number of boxes) per image')]
            with tf.control_dependencies(checks):
                given = tf.shape(intrinsic_matrix)[0]
            intrinsic_matrix = tf.cond(given > 0, lambda: intrinsic_matrix,
                                       lambda: tf.zeros([n_images, 3, 3], tf.float32))
            checks = [tf.debugging.assert_equal(
                tf.shape(intrinsic_matrix)[0], n_images,
                'intrinsic_matrix must be [B, 3, 3], one per image (or omitted)')]
            with tf.control_dependencies(checks):
                intrinsics = module._intrinsics(intrinsic_matrix, shape[1], shape[2])
            image_ids = tf.cast(boxes.value_rowids(), tf.int32)
            result = module._core(images, image_ids, boxes.values, intrinsics,
                                  module._skeleton_indices(skeleton), num_aug)
            return {key: tf.RaggedTensor.from_row_splits(value, boxes.row_splits)
                    for key, value in result.items()}

        return estimate_poses_batched

    def _make_detect_poses(self):
        module = self

        @tf.function(input_signature=[
            tf.TensorSpec([None, None, 3], tf.uint8, name='image'),
            tf.TensorSpec([3, 3], tf.float32, name='intrinsic_matrix'),
            tf.TensorSpec([], tf.string, name='skeleton'),
            tf.TensorSpec([], tf.int32, name='num_aug'),
            tf.TensorSpec([], tf.float32, name='detector_threshold'),
            tf.TensorSpec([], tf.int32, name='max_detections')])
        def detect_poses(image, intrinsic_matrix=tf.zeros([3, 3]), skeleton=self._default_skeleton, num_aug=1,
                         detector_threshold=DEFAULT_DETECTOR_THRESHOLD, max_detections=-1):
            """Detects people with the exported detector, then estimates their poses (posekit.export)."""
            detections = module._detector.detect(image)
            boxes = tf.reshape(tf.cast(detections['boxes'], tf.float32), [-1, 4])
            scores = tf.reshape(tf.cast(detections['scores'], tf.float32), [-1])
            keep = scores >= detector_threshold
            boxes, scores = tf.boolean_mask(boxes, keep), tf.boolean_mask(scores, keep)
            order = tf.argsort(scores, direction='DESCENDING', stable=True)
            count = tf.where(max_detections >= 0, tf.minimum(max_detections, tf.size(order)), tf.size(order))
            order = order[:count]
            boxes, scores = tf.gather(boxes, order), tf.gather(scores, order)
            result = module._estimate_single(image, boxes, intrinsic_matrix,
                                             module._skeleton_indices(skeleton), num_aug)
            result.update(boxes=boxes, scores=scores)
            return result

        return detect_poses

    def serving_signatures(self):
        """Concrete functions for ``tf.saved_model.save(..., signatures=...)``."""
        module = self
        start, stop = self._default_slice.start, self._default_slice.stop

        @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8, name='image'),
                                      tf.TensorSpec([None, 4], tf.float32, name='boxes')])
        def serve(image, boxes):
            result = module._estimate_single(image, boxes, tf.zeros([3, 3]), tf.range(start, stop), 1)
            result['poses3d'].set_shape([None, stop - start, 3])
            result['poses2d'].set_shape([None, stop - start, 2])
            return result

        from posekit.crop_model import make_crop_function  # raw network on crops (posekit.crop_model)
        return {'serving_default': serve.get_concrete_function(),
                'estimate_poses': self.estimate_poses.get_concrete_function(),
                'crop_model': make_crop_function(self._holder.model, self._crop_size).get_concrete_function()}


def export_model(model, joint_space, out_dir, crop_size=None, default_skeleton=DEFAULT_SKELETON,
                 default_fov_degrees=DEFAULT_FOV_DEGREES, detector=None, box_margin=DEFAULT_BOX_MARGIN,
                 tta_roll_degrees=DEFAULT_TTA_ROLL_DEGREES, antialias_factor=1):
    """Writes ``model`` as a SavedModel for downstream apps (interface: the module docstring).

    Args:
      model: a built ``posekit.models.metrabs.Metrabs`` whose joints are ``joint_space``'s.
      joint_space: the ``posekit.skeletons.JointSpace`` (formats in order) the model predicts.
      out_dir: directory to write (created; e.g. ``<--out>/saved_model``).
      crop_size: side of the network's square input crop (px); None: the backbone's input size.
      default_skeleton: skeleton used by ``serving_default`` and when ``skeleton`` is omitted; a format
        of ``joint_space``.
      default_fov_degrees: field of view (degrees, larger image side) assumed without intrinsics.
      detector: None, or the path of a person-detector SavedModel (module docstring, "Detector
        interface"); only then ``detect_poses`` is exported.
      box_margin: fraction of the box's larger side added around it in the crop (>= 0; the training
        crops' margin, ``DEFAULT_BOX_MARGIN``).
      tta_roll_degrees: largest roll of the test-time augmentations (degrees, in [0, 180]).
      antialias_factor: int >= 1; crops are rendered at this multiple of ``crop_size`` and
        average-pooled (reduces aliasing when boxes are much larger than the crop).

    Returns:
      ``out_dir``.

    Raises:
      ValueError: naming the argument, for a model whose joint count differs from the joint space,
        an unknown default skeleton, a bad crop size, margin, roll or antialias factor, or a detector
        path that does not hold a SavedModel with a ``detect`` function.
    """
    if not isinstance(joint_space, JointSpace):
        raise ValueError(f'joint_space must be a posekit.skeletons.JointSpace; received '
                         f'joint_space={joint_space!r}')
    n_joints = getattr(model, 'n_joints', None)
    if n_joints != joint_space.n_joints:
        raise ValueError(f'model must predict the {joint_space.n_joints} joints of {joint_space!r}; received a '
                         f'model with n_joints={n_joints!r}')
    if default_skeleton not in joint_space.formats:
        raise ValueError(f'default_skeleton must be one of {list(joint_space.formats)}; received '
                         f'default_skeleton={default_skeleton!r}')
    if crop_size is None:
        crop_size = model.backbone.input_shape[1]
        if crop_size is None or model.backbone.input_shape[2] != crop_size:
            raise ValueError(f'crop_size must be given for a backbone without a square static input shape '
                             f'({model.backbone.input_shape}); received crop_size=None')
    if isinstance(crop_size, bool) or not isinstance(crop_size, (int, np.integer)) or crop_size < 1:
        raise ValueError(f'crop_size must be a positive int; received crop_size={crop_size!r}')
    if not isinstance(default_fov_degrees, (int, float)) or not 0 < default_fov_degrees < 180:
        raise ValueError(f'default_fov_degrees must be in (0, 180); received default_fov_degrees='
                         f'{default_fov_degrees!r}')
    if not isinstance(box_margin, (int, float)) or not 0 <= box_margin < math.inf:
        raise ValueError(f'box_margin must be a finite number >= 0; received box_margin={box_margin!r}')
    if not isinstance(tta_roll_degrees, (int, float)) or not 0 <= tta_roll_degrees <= 180:
        raise ValueError(f'tta_roll_degrees must be in [0, 180]; received tta_roll_degrees={tta_roll_degrees!r}')
    if (isinstance(antialias_factor, bool) or not isinstance(antialias_factor, (int, np.integer))
            or antialias_factor < 1):
        raise ValueError(f'antialias_factor must be an int >= 1; received antialias_factor={antialias_factor!r}')
    loaded_detector = None
    if detector is not None:
        path = os.fspath(detector)
        if not tf.saved_model.contains_saved_model(path):
            raise ValueError(f'detector must be the path of a SavedModel; received detector={detector!r}')
        loaded_detector = tf.saved_model.load(path)
        if not hasattr(loaded_detector, 'detect'):
            raise ValueError(f'detector must be a SavedModel with a `detect(image)` function (posekit.export '
                             f'docstring); received detector={detector!r} without one')
    module = PoseEstimatorModule(model, joint_space, crop_size, default_skeleton, default_fov_degrees,
                                 box_margin, tta_roll_degrees, antialias_factor, loaded_detector)
    out_dir = os.fspath(out_dir)
    tf.saved_model.save(module, out_dir, signatures=module.serving_signatures())
    return out_dir
