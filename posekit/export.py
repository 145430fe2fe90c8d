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

    # Original MeTRAbs arguments (by keyword): calibrated, distorted camera with extrinsics -> world mm.
    pred = model.estimate_poses(image, boxes, intrinsic_matrix=K, distortion_coeffs=d, extrinsic_matrix=E,
                                world_up_vector=(0., 0., 1.), num_aug=5, average_aug=False)
    pred['poses3d']   # float32 [N, A, J, 3]: mm, world frame, one pose per augmentation

    # If a person detector was given at export time:
    pred = model.detect_poses(image)          # 'boxes' [N, 5] (x, y, w, h, score), 'scores' [N], poses
    pred = model.detect_poses_batched(images) # ragged [B, (N_b), ...]

    # TF Serving / converters: the 'serving_default' signature takes image uint8 [H, W, 3] and
    # boxes float32 [N, 4] and returns {'poses3d', 'poses2d'} for the default skeleton.
    model.signatures['serving_default'](image=image, boxes=boxes)

Functions of the exported object
--------------------------------
- ``estimate_poses(image, boxes, intrinsic_matrix, skeleton, num_aug, distortion_coeffs, extrinsic_matrix,
  world_up_vector, default_fov_degrees, internal_batch_size, antialias_factor, average_aug)``: ``image``
  uint8 [H, W, 3] (RGB, 0-255); ``boxes`` float32 [N, 4] person boxes (x, y, w, h) in px of the image;
  ``intrinsic_matrix`` float32 [3, 3] ``[[fx, skew, cx], [0, fy, cy], [0, 0, 1]]`` px, omitted (or all
  zeros, or all -1 as in the original) for the default camera: a ``default_fov_degrees`` (55) field of
  view along the larger image side with the principal point at the image centre; ``skeleton`` string
  scalar, one of ``model.skeletons``; ``num_aug`` int32 >= 1 test-time augmentations (default 1);
  ``distortion_coeffs`` float32 [n <= 12] OpenCV coefficients (k1, k2, p1, p2, k3, ...): the crops are
  undistorted and ``poses2d`` distorted; ``extrinsic_matrix`` float32 [4, 4] world -> camera (mm) and
  ``world_up_vector`` [3] (default (0, -1, 0)): crops upright w.r.t. the world's up, ``poses3d`` in world
  coordinates; ``internal_batch_size`` crops per network call (``internal_batch_size // num_aug`` whole
  boxes, 0: all at once; results do not depend on it); ``antialias_factor`` 1-4; ``average_aug`` (default
  True; False keeps the augmentation axis A). Returns ``{'poses3d': float32 [N, J, 3] (or [N, A, J, 3])
  mm, 'poses2d': float32 [N, J, 2] (or [N, A, J, 2]) px}``: ``poses2d`` is the projection of the (averaged)
  camera-frame poses with the intrinsics and distortion (depths clamped to at least
  ``MIN_PROJECTION_DEPTH_MM`` = 1 mm of :mod:`posekit.geometry`, so points behind the camera stay finite).
- ``estimate_poses_batched(images, boxes, intrinsic_matrix, skeleton, num_aug, distortion_coeffs,
  extrinsic_matrix, world_up_vector, ...)``: ``images`` uint8 [B, H, W, 3]; ``boxes`` float32
  ``tf.RaggedTensor`` [B, (N_b), 4] (ragged_rank 1); ``intrinsic_matrix`` [B, 3, 3] or [1, 3, 3]
  (broadcast; an all-zero matrix selects the default camera), ``distortion_coeffs`` [B or 1, n],
  ``extrinsic_matrix`` [B or 1, 4, 4] (each omitted: defaults). Returns ragged ``poses3d``
  [B, (N_b), J, 3] and ``poses2d`` [B, (N_b), J, 2] (with the A axis when ``average_aug`` is False).
- ``detect_poses(image, intrinsic_matrix, skeleton, num_aug, detector_threshold=0.3, max_detections=-1,
  <the estimate_poses arguments>, detector_nms_iou_threshold=0.7, detector_flip_aug=False,
  suppress_implausible_poses=True)`` and ``detect_poses_batched(images, ...)`` (only when exported with
  a detector): the detector's boxes (also on the mirrored image with ``detector_flip_aug``) with score
  >= ``detector_threshold``, after non-maximum suppression at ``detector_nms_iou_threshold``, at most
  ``max_detections`` (-1: all) by decreasing score; detections smaller than ``MIN_BOX_SIZE_PX`` or outside
  the image are dropped. With ``suppress_implausible_poses`` the poses with implausible bone lengths,
  disagreeing augmentations or a 2D pose outside their box are dropped, then duplicates (pose NMS);
  see "Plausibility filter". Returns ``boxes`` [N, 5] (x, y, w, h, score), ``scores`` [N], ``poses3d``,
  ``poses2d``.
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
the expected ``TensorSpec`` (e.g. a float32 or int32 image tensor, boxes [N, 3]). Because that conversion
would silently truncate a numpy float image in [0, 1] to zeros, an image whose pixels are all 0 or 1 is
rejected when it has boxes (such an image is black: there is no pose to estimate); a numpy integer image
is wrapped to uint8 by that conversion before the graph runs (a known limit: pass tensors or clip).
``InvalidArgumentError`` naming the argument and its value: an unknown skeleton, non-finite, malformed
or singular intrinsics, focal lengths outside ``FOCAL_RANGE`` x the image's larger side, non-finite boxes,
boxes without positive width and height, narrower or lower than ``MIN_BOX_SIZE_PX``, larger than
``MAX_BOX_SIZE_FACTOR`` x the image's larger side or not overlapping the image, an empty image,
``num_aug < 1``, ``internal_batch_size < 0``, ``antialias_factor`` outside [1, ``MAX_ANTIALIAS_FACTOR``],
``default_fov_degrees`` outside (0, 180), bad ``distortion_coeffs``, ``extrinsic_matrix`` or
``world_up_vector``, and batches whose boxes or per-image arguments do not have one row per image.

Plausibility filter
-------------------
As in the original MeTRAbs (camera frame, all joints of the model): a pose is implausible when any bone
of ``joint_space.edges`` has length l with (l / m < 0.1 or l / m > 3) and |l - m| > 300 mm for the
reference length m (``export_model(reference_bone_lengths=...)``); when fewer than J // 4 joints have a
spread below 200 mm over the augmentations (each scaled about the camera origin to their mean RMS); or
when the box around the mean 2D pose covers at most half of the detection box. Among the others,
pose NMS: similarity = mean of ``max(0, 1 - d / 300 mm)`` over the J // 4 largest joint distances d of
two poses scaled to their common RMS, duplicates above 0.4 of a better-scored pose of the same image are
dropped.

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
``linspace(-tta_roll_degrees, +tta_roll_degrees, num_aug)`` (0 when ``num_aug`` is 1), mirrors it
when ``(a - num_aug // 2)`` is odd, zooms it and changes the crop's gamma (:func:`tta_variations`);
mirrored predictions go through the joint space's mirror permutation. The augmentations are averaged
in the image camera frame (or the world frame: the same, the transform is affine).

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
#: Default IoU threshold of the non-maximum suppression of the detector boxes in ``detect_poses``.
DEFAULT_DETECTOR_NMS_IOU_THRESHOLD = 0.7
#: Default crops per chunk of the network (``internal_batch_size``).
DEFAULT_INTERNAL_BATCH_SIZE = 64
#: Largest ``antialias_factor`` accepted at call time.
MAX_ANTIALIAS_FACTOR = 4
#: Smallest gamma of the test-time augmentations (the original MeTRAbs: ``linspace(0.6, 1.0, A)``).
TTA_GAMMA_MIN = 0.6
#: Test-time zoom factors: the first ``A // 2`` augmentations from ``linspace(0.8, 1.0)`` (1.0 excluded),
#: the others ``linspace(1.0, 1.1)`` (as the original MeTRAbs).
TTA_SCALE_RANGE = (0.8, 1.0, 1.1)
#: Intensity of 8-bit images that maps to 1.0 at the network's input.
PIXEL_MAX = 255.0
#: Tolerance on the fixed entries (0, 0, 1 and the lower triangle) of an intrinsic matrix.
INTRINSICS_TOLERANCE = 1e-6
#: Tolerance on the rotation part (R R^T = I, det 1) and the last row (0, 0, 0, 1) of an extrinsic matrix.
EXTRINSICS_TOLERANCE = 1e-3
#: Plausible focal lengths (fx, fy) as multiples of the image's larger side: fields of view of about
#: 0.6 to 176 degrees. Other values are refused (``intrinsic_matrix``).
FOCAL_RANGE = (0.01, 100.0)
#: Smallest box width and height (px) accepted by ``estimate_poses`` (smaller detections are dropped).
MIN_BOX_SIZE_PX = 2.0
#: Largest box width or height, as a multiple of the image's larger side.
MAX_BOX_SIZE_FACTOR = 10.0
#: Plausibility filter (``suppress_implausible_poses``, as the original MeTRAbs): a bone is implausible
#: when its length l and the reference m satisfy (l / m < 0.1 or l / m > 3) and |l - m| > 300 mm.
BONE_RATIO_RANGE = (0.1, 3.0)
BONE_ABS_TOLERANCE_MM = 300.0
#: Default reference bone length (mm) used for every bone when the export got no reference lengths.
DEFAULT_REFERENCE_BONE_MM = 300.0
#: Augmentations agree when more than J // 4 joints have a spread (after scale alignment) below this.
AUG_AGREEMENT_MM = 200.0
#: Pose NMS: per-joint similarity max(0, 1 - d / POSE_NMS_DISTANCE_MM) averaged over the J // 4 largest
#: distances; poses more similar than POSE_NMS_THRESHOLD to a better-scored one are duplicates.
POSE_NMS_DISTANCE_MM = 300.0
POSE_NMS_THRESHOLD = 0.4


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


def tta_variations(num_aug, max_roll_degrees=DEFAULT_TTA_ROLL_DEGREES, gamma_min=TTA_GAMMA_MIN,
                   scale_range=TTA_SCALE_RANGE):
    """Rolls [A] (rad), flips [A] (bool), gammas [A] and zooms [A] (float64) of A test-time augmentations.

    Rolls and flips are :func:`tta_params`. As in the original MeTRAbs, gammas are
    ``linspace(gamma_min, 1, A)`` and zooms are ``linspace(lo, mid, A // 2)`` (``mid`` excluded) followed
    by ``linspace(mid, hi, A - A // 2)`` for ``scale_range`` = (lo, mid, hi); a single augmentation is the
    identity (gamma 1, zoom 1). A crop of gamma g shows ``255 (I / 255) ** g``; a zoom z > 1 magnifies.
    """
    num_aug = tf.cast(num_aug, tf.int32)
    rolls, flips = tta_params(num_aug, max_roll_degrees)
    index = tf.cast(tf.range(num_aug), tf.float64)
    count = tf.cast(num_aug, tf.float64)
    gammas = tf.where(num_aug > 1, gamma_min + (1.0 - gamma_min) * index / tf.maximum(count - 1.0, 1.0),
                      tf.ones_like(index))
    lo, mid, hi = (float(s) for s in scale_range)
    half = tf.cast(num_aug // 2, tf.float64)
    upper = count - half
    scales = tf.where(index < half, lo + (mid - lo) * index / tf.maximum(half, 1.0),
                      tf.where(upper > 1.0, mid + (hi - mid) * (index - half) / tf.maximum(upper - 1.0, 1.0),
                               mid + 0.0 * index))
    return rolls, flips, gammas, scales


def make_crops(images, image_ids, intrinsics, rotation, crop_intrinsics, crop_size, antialias_factor=1,
               distortion_coeffs=None):
    """Cuts one crop per crop camera out of its image with :func:`posekit.geometry.warp_to_crop`.

    Args:
      images: [B, H, W, 3] images (uint8 or float32).
      image_ids: [T] int, the image of each crop.
      intrinsics: [T, 3, 3] intrinsics of each crop's image; rotation, crop_intrinsics: [T, 3, 3] crop
        cameras (:func:`posekit.geometry.crop_camera`).
      crop_size: S (px).
      antialias_factor: a >= 1 (see ``warp_to_crop``).
      distortion_coeffs: None or [T, n] OpenCV coefficients of each crop's image (the crop is undistorted).

    Returns:
      [T, S, S, 3] float32 (0-255); outside the image 0.
    """
    images = tf.convert_to_tensor(images)

    ids = tf.cast(image_ids, tf.int32)
    if distortion_coeffs is None:
        coeffs = tf.zeros([tf.shape(ids)[0], 0], tf.float64)
    else:
        coeffs = tf.cast(distortion_coeffs, tf.float64)
    has_distortion = distortion_coeffs is not None

    def warp_one(args):
        image_id, k, rot, crop_k, d = args
        return geometry.warp_to_crop(images[image_id], k, rot, crop_k, crop_size,
                                     distortion_coeffs=d if has_distortion else None,
                                     antialias_factor=antialias_factor)

    return tf.map_fn(warp_one, (ids, tf.cast(intrinsics, tf.float64), tf.cast(rotation, tf.float64),
                                tf.cast(crop_intrinsics, tf.float64), coeffs),
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


def _project(points, intrinsics, distortion_coeffs):
    """[T, ..., 2] px: :func:`posekit.geometry.project_tf` of [T, ..., 3] camera points with [T, 3, 3] K and
    [T, 12] coefficients (the distortion-free formula where all coefficients are 0, bit-identical to it)."""
    distorted = tf.reduce_any(tf.not_equal(distortion_coeffs, 0.0), axis=-1)
    distorted = tf.reshape(distorted, tf.concat([tf.shape(distorted), tf.ones([points.shape.rank - 1], tf.int32)], 0))
    return tf.where(distorted, geometry.project_tf(points, intrinsics, distortion_coeffs=distortion_coeffs,
                                                   min_depth=geometry.MIN_PROJECTION_DEPTH_MM),
                    geometry.project_tf(points, intrinsics, min_depth=geometry.MIN_PROJECTION_DEPTH_MM))


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
      default_skeleton, default_fov_degrees, box_margin, tta_roll_degrees, antialias_factor,
        reference_bone_lengths: see :func:`export_model`.
      detector: None or a loaded detector object (module docstring, "Detector interface").
    """

    def __init__(self, model, joint_space, crop_size, default_skeleton=DEFAULT_SKELETON,
                 default_fov_degrees=DEFAULT_FOV_DEGREES, box_margin=DEFAULT_BOX_MARGIN,
                 tta_roll_degrees=DEFAULT_TTA_ROLL_DEGREES, antialias_factor=1, detector=None,
                 reference_bone_lengths=None, name='pose_estimator'):
        super().__init__(name=name)
        # The Keras model stays out of the object graph (a plain holder is not tracked): only its
        # tf.Variables are saved, so loading needs no Keras object.
        self._holder = _Untracked(model)
        self._model_variables = [_tf_variable(v) for v in model.variables]
        self._formats = tuple(joint_space.formats)
        self._starts = [joint_space.slices[f].start for f in self._formats]
        self._stops = [joint_space.slices[f].stop for f in self._formats]
        self._mirror = list(joint_space.mirror)
        self._n_joints = joint_space.n_joints
        self._edges = np.array(joint_space.edges, np.int32).reshape(-1, 2)
        if reference_bone_lengths is None:
            reference_bone_lengths = np.full(len(self._edges), DEFAULT_REFERENCE_BONE_MM)
        self._reference_bones = np.asarray(reference_bone_lengths, np.float64)
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
            tf.TensorSpec([None, 12], tf.float64, name='distortion_coeffs'),
            tf.TensorSpec([None, 3], tf.float64, name='camera_up'),
            tf.TensorSpec([], tf.int32, name='num_aug'),
            tf.TensorSpec([], tf.int32, name='internal_batch_size'),
            tf.TensorSpec([], tf.int32, name='antialias_factor')])
        self.estimate_poses = self._make_estimate_poses()
        self.estimate_poses_batched = self._make_estimate_poses_batched()
        if detector is not None:
            self._detector = detector
            self.detect_poses = self._make_detect_poses()
            self.detect_poses_batched = self._make_detect_poses_batched()

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

    def _intrinsics(self, intrinsic_matrix, image_height, image_width, default_fov_degrees):
        """Validated float64 K [..., 3, 3]; all-zero (or all -1) matrices select the default camera."""
        k = tf.cast(intrinsic_matrix, tf.float64)
        fov = tf.cast(default_fov_degrees, tf.float64)
        checks = [
            tf.debugging.assert_all_finite(
                intrinsic_matrix, 'intrinsic_matrix must be finite (omit it, or pass zeros, for the default camera)'),
            tf.debugging.Assert(tf.logical_and(fov > 0.0, fov < 180.0),
                                ['default_fov_degrees must be in (0, 180); received default_fov_degrees:',
                                 default_fov_degrees])]
        with tf.control_dependencies(checks):
            is_default = tf.logical_or(tf.reduce_all(tf.equal(k, 0.0), axis=[-2, -1]),
                                       tf.reduce_all(tf.equal(k, -1.0), axis=[-2, -1]))
            default = geometry.fov_intrinsics(fov, image_height, image_width)
        k = tf.where(is_default[..., tf.newaxis, tf.newaxis], default, k)
        fixed = tf.stack([k[..., 1, 0], k[..., 2, 0], k[..., 2, 1], k[..., 2, 2] - 1.0], axis=-1)
        well_formed = tf.logical_and(
            tf.reduce_all(tf.abs(fixed) <= INTRINSICS_TOLERANCE),
            tf.reduce_all(tf.logical_and(k[..., 0, 0] > 0.0, k[..., 1, 1] > 0.0)))
        side = tf.cast(tf.maximum(image_height, image_width), tf.float64)
        focal = tf.stack([k[..., 0, 0], k[..., 1, 1]], -1)
        plausible = tf.reduce_all(tf.logical_and(focal >= FOCAL_RANGE[0] * side, focal <= FOCAL_RANGE[1] * side))
        checks = [
            tf.debugging.Assert(
                well_formed, ['intrinsic_matrix must be [[fx, skew, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0 '
                              '(px; an invertible camera matrix); received intrinsic_matrix:', intrinsic_matrix],
                summarize=-1),
            tf.debugging.Assert(
                plausible, [f'intrinsic_matrix focal lengths fx, fy must be within [{FOCAL_RANGE[0]}, '
                            f'{FOCAL_RANGE[1]}] x the image\'s larger side (px); received intrinsic_matrix:',
                            intrinsic_matrix, 'image height, width:', image_height, image_width], summarize=-1)]
        with tf.control_dependencies(checks):
            return tf.identity(k)

    def _distortion(self, distortion_coeffs):
        """[..., n] float32 OpenCV coefficients (n <= 12) -> validated [..., 12] float64 (zero-padded)."""
        d = tf.cast(distortion_coeffs, tf.float64)
        n = tf.shape(d)[-1]
        checks = [
            tf.debugging.assert_less_equal(
                n, 12, 'distortion_coeffs must have at most 12 coefficients (OpenCV order k1, k2, p1, p2, k3, '
                       'k4, k5, k6, s1, s2, s3, s4)'),
            tf.debugging.assert_all_finite(distortion_coeffs, 'distortion_coeffs must be finite')]
        with tf.control_dependencies(checks):
            rank = tf.rank(d)
            padding = tf.concat([tf.zeros([rank - 1, 2], tf.int32), [[0, tf.maximum(12 - n, 0)]]], 0)
            padded = tf.pad(d, padding)
        return padded

    def _extrinsics(self, extrinsic_matrix, world_up_vector):
        """Validated float64 E [..., 4, 4] (world -> camera, mm) and the camera-frame up [..., 3]."""
        e = tf.cast(extrinsic_matrix, tf.float64)
        up = tf.cast(world_up_vector, tf.float64)
        rot = e[..., :3, :3]
        eye = tf.eye(3, dtype=tf.float64)
        orthonormal = tf.reduce_all(tf.abs(tf.matmul(rot, rot, transpose_b=True) - eye) <= EXTRINSICS_TOLERANCE)
        last_row = tf.reduce_all(tf.abs(e[..., 3, :] - tf.constant([0.0, 0.0, 0.0, 1.0], tf.float64))
                                 <= EXTRINSICS_TOLERANCE)
        proper = tf.reduce_all(tf.linalg.det(rot) > 0.0)
        up_norm = tf.norm(up)
        checks = [
            tf.debugging.assert_all_finite(extrinsic_matrix, 'extrinsic_matrix must be finite'),
            tf.debugging.Assert(
                tf.logical_and(tf.logical_and(orthonormal, last_row), proper),
                ['extrinsic_matrix must be [[R, t], [0, 0, 0, 1]] (world -> camera, mm) with a rotation R; '
                 'received extrinsic_matrix:', extrinsic_matrix], summarize=-1),
            tf.debugging.assert_all_finite(world_up_vector, 'world_up_vector must be finite'),
            tf.debugging.Assert(up_norm > 0.0, ['world_up_vector must be non-zero; received world_up_vector:',
                                                world_up_vector])]
        with tf.control_dependencies(checks):
            camera_up = tf.linalg.matvec(rot, up / up_norm)
            return tf.identity(e), camera_up

    def _check_inputs(self, images, image_ids, boxes, num_aug, internal_batch_size, antialias_factor):
        """Assertions on the core inputs (images uint8 [B, H, W, 3], image_ids [T], boxes [T, 4])."""
        shape = tf.shape(images)
        n_images = shape[0]
        has_boxes = tf.math.unsorted_segment_max(tf.ones_like(image_ids), image_ids, n_images) > 0
        visible = tf.reduce_max(images, axis=[1, 2, 3]) > 1
        size = tf.cast(tf.gather(tf.stack([shape[2], shape[1]]), [0, 1]), tf.float32)  # (W, H)
        larger = tf.reduce_max(size)
        x, y, w, h = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
        overlaps = tf.logical_and(tf.logical_and(x < size[0], x + w > 0.0), tf.logical_and(y < size[1], y + h > 0.0))
        return [
            tf.debugging.assert_positive(shape[1:3], 'image must have positive height and width'),
            tf.debugging.Assert(
                tf.reduce_all(tf.logical_or(visible, tf.logical_not(has_boxes))),
                ['image must hold uint8 intensities 0-255, but every pixel is 0 or 1 (was a float image '
                 'in [0, 1] converted to uint8?)']),
            tf.debugging.assert_all_finite(boxes, 'boxes must be finite (x, y, w, h in px)'),
            tf.debugging.assert_positive(boxes[:, 2:],
                                         'boxes must have positive width and height (x, y, w, h in px)'),
            tf.debugging.Assert(
                tf.reduce_all(boxes[:, 2:] >= MIN_BOX_SIZE_PX),
                [f'boxes must be at least {MIN_BOX_SIZE_PX} px wide and high; received boxes:', boxes],
                summarize=40),
            tf.debugging.Assert(
                tf.reduce_all(boxes[:, 2:] <= MAX_BOX_SIZE_FACTOR * larger),
                [f'boxes must be at most {MAX_BOX_SIZE_FACTOR} x the image\'s larger side wide and high; '
                 'received boxes:', boxes, 'image height, width:', shape[1], shape[2]], summarize=40),
            tf.debugging.Assert(
                tf.reduce_all(overlaps),
                ['boxes must overlap the image (x, y, w, h px); received boxes:', boxes,
                 'image height, width:', shape[1], shape[2]], summarize=40),
            tf.debugging.Assert(num_aug >= 1, ['num_aug must be >= 1; received num_aug:', num_aug]),
            tf.debugging.Assert(internal_batch_size >= 0, ['internal_batch_size must be >= 0 (0: one chunk); '
                                                           'received internal_batch_size:', internal_batch_size]),
            tf.debugging.Assert(
                tf.logical_and(antialias_factor >= 1, antialias_factor <= MAX_ANTIALIAS_FACTOR),
                [f'antialias_factor must be in [1, {MAX_ANTIALIAS_FACTOR}]; received antialias_factor:',
                 antialias_factor]),
        ]

    def _crops(self, images, ids, k, rotation, crop_k, coeffs, gammas, antialias_factor):
        """Crops [n, S, S, 3] (0-255, float32) with a run-time antialias factor and gamma."""
        # Distortion-free images take the plain pinhole path (bit-identical to the warp without coefficients).
        distorted = tf.reduce_any(tf.not_equal(coeffs, 0.0))
        branches = [
            (lambda f=f, d=d: make_crops(images, ids, k, rotation, crop_k, self._crop_size, f, d))
            for d in (None, coeffs) for f in range(1, MAX_ANTIALIAS_FACTOR + 1)]
        index = (tf.clip_by_value(antialias_factor, 1, MAX_ANTIALIAS_FACTOR) - 1
                 + tf.cast(distorted, tf.int32) * MAX_ANTIALIAS_FACTOR)
        crops = tf.switch_case(index, branches)
        gamma = tf.cast(gammas, tf.float32)[:, tf.newaxis, tf.newaxis, tf.newaxis]
        adjusted = PIXEL_MAX * tf.pow(tf.maximum(crops, 0.0) / PIXEL_MAX, gamma)
        return tf.where(tf.equal(gamma, 1.0), crops, adjusted)

    def _estimate(self, images, image_ids, boxes, intrinsics, distortion_coeffs, camera_up, num_aug,
                  internal_batch_size, antialias_factor):
        """The core graph shared by every exported function (traced once: ``self._core``).

        Args:
          images: uint8 [B, H, W, 3]; image_ids: int32 [T], the image of each box; boxes: float32
          [T, 4] (x, y, w, h px); intrinsics: float64 [B, 3, 3] validated K of each image;
          distortion_coeffs: float64 [B, 12]; camera_up: float64 [B, 3] the up direction in each camera
          frame; num_aug, internal_batch_size, antialias_factor: int32 scalars.

        Returns:
          dict(poses3d float64 [T, A, J_all, 3] mm image camera frame, poses2d float64 [T, A, J_all, 2]
          px: the (distorted) projection of each augmentation's pose).
        """
        checks = self._check_inputs(images, image_ids, boxes, num_aug, internal_batch_size, antialias_factor)
        with tf.control_dependencies(checks):
            num_aug = tf.identity(num_aug)
            boxes = tf.identity(boxes)
        n_boxes = tf.shape(boxes)[0]
        n_crops = n_boxes * num_aug
        rolls, flips, gammas, scales = tta_variations(num_aug, self._tta_roll)
        rep_ids = tf.repeat(image_ids, num_aug, axis=0)
        rep_k = tf.gather(intrinsics, rep_ids)
        rep_d = tf.gather(distortion_coeffs, rep_ids)
        rep_up = tf.gather(camera_up, rep_ids)
        rep_boxes = tf.repeat(boxes, num_aug, axis=0)
        rep_rolls, rep_flips = tf.tile(rolls, [n_boxes]), tf.tile(flips, [n_boxes])
        rep_gammas, rep_scales = tf.tile(gammas, [n_boxes]), tf.tile(scales, [n_boxes])
        distorted = tf.reduce_any(tf.not_equal(rep_d, 0.0), axis=-1)[:, tf.newaxis, tf.newaxis]
        cameras = [geometry.crop_camera(rep_k, rep_boxes, self._crop_size, self._box_margin, distortion_coeffs=d,
                                        up=rep_up, roll=rep_rolls, flip=rep_flips, zoom=rep_scales)
                   for d in (None, rep_d)]
        rotation = tf.where(distorted, cameras[1][0], cameras[0][0])
        crop_k = tf.where(distorted, cameras[1][1], cameras[0][1])
        # Chunks of whole boxes (all augmentations of a box together), each padded to the same size.
        boxes_per_chunk = tf.where(internal_batch_size > 0, tf.maximum(internal_batch_size // num_aug, 1),
                                   tf.maximum(n_boxes, 1))
        chunk = tf.minimum(boxes_per_chunk * num_aug, tf.maximum(n_crops, 1))
        n_chunks = tf.maximum((n_crops + chunk - 1) // chunk, 1)
        n_joints = len(self._mirror)

        def body(i, outputs):
            lo = i * chunk
            hi = tf.minimum(lo + chunk, n_crops)
            crops = self._crops(images, rep_ids[lo:hi], rep_k[lo:hi], rotation[lo:hi], crop_k[lo:hi],
                                rep_d[lo:hi], rep_gammas[lo:hi], antialias_factor)
            ks = tf.cast(crop_k[lo:hi], tf.float32)
            # Every chunk has the same size (blank padding; TF's graph-mode convolution also mishandles
            # an empty batch).
            padding = chunk - (hi - lo)
            crops = tf.concat([crops, tf.zeros(tf.concat([[padding], tf.shape(crops)[1:]], 0))], axis=0)
            ks = tf.concat([ks, tf.tile(tf.eye(3)[tf.newaxis], [padding, 1, 1])], axis=0)
            out = self._holder.model(crops / PIXEL_MAX, ks, training=False)['coords3d_abs'][:hi - lo]
            return i + 1, outputs.write(i, tf.cast(out, tf.float32))

        outputs = tf.TensorArray(tf.float32, size=n_chunks, element_shape=tf.TensorShape([None, n_joints, 3]),
                                 infer_shape=False)
        _, outputs = tf.while_loop(lambda i, _: i < n_chunks, body, (tf.constant(0), outputs))
        coords = outputs.concat()
        coords = uncrop_poses(coords, rotation, rep_flips, self._mirror)  # [T*A, J, 3] image camera frame
        poses2d = _project(coords, rep_k, rep_d)
        shape3 = tf.stack([n_boxes, num_aug, n_joints, 3])
        return dict(poses3d=tf.reshape(coords, shape3),
                    poses2d=tf.reshape(poses2d, tf.stack([n_boxes, num_aug, n_joints, 2])))

    # -- plausibility filter -----------------------------------------------------------------------

    def _plausible(self, poses3d, poses2d, boxes, scores, image_ids):
        """Indices [K] of the kept poses (suppress_implausible_poses), in their input order.

        poses3d [T, A, J_all, 3] and poses2d [T, A, J_all, 2] (camera frame, mm / px), boxes [T, 4],
        scores [T], image_ids [T]. See the module docstring ("Plausibility filter").
        """
        n_joints = self._n_joints
        mean3d = tf.reduce_mean(poses3d, axis=1)
        parents = tf.gather(mean3d, self._edges[:, 1], axis=1)
        children = tf.gather(mean3d, self._edges[:, 0], axis=1)
        lengths = tf.norm(children - parents, axis=-1)  # [T, E]
        ref = tf.constant(self._reference_bones, tf.float64)
        ratio = lengths / ref
        bad_bone = tf.logical_and(tf.logical_or(ratio < BONE_RATIO_RANGE[0], ratio > BONE_RATIO_RANGE[1]),
                                  tf.abs(lengths - ref) > BONE_ABS_TOLERANCE_MM)
        bones_ok = tf.logical_not(tf.reduce_any(bad_bone, axis=-1))
        # Augmentations scale-aligned about the camera origin, then their spread per joint.
        mean_square = tf.reduce_mean(tf.square(poses3d), axis=[2, 3], keepdims=True)  # [T, A, 1, 1]
        aligned = poses3d * tf.sqrt(tf.reduce_mean(mean_square, axis=1, keepdims=True) / tf.maximum(mean_square, 1e-12))
        spread = tf.sqrt(tf.reduce_sum(tf.math.reduce_variance(aligned, axis=1), axis=-1))  # [T, J]
        agree = tf.reduce_sum(tf.cast(spread < AUG_AGREEMENT_MM, tf.int32), axis=-1) > n_joints // 4
        # The box around the mean 2D pose must cover more than half of the detection box.
        mean2d = tf.reduce_mean(poses2d, axis=1)
        low, high = tf.reduce_min(mean2d, axis=1), tf.reduce_max(mean2d, axis=1)
        b = tf.cast(boxes, tf.float64)
        inter_w = tf.maximum(tf.minimum(high[:, 0], b[:, 0] + b[:, 2]) - tf.maximum(low[:, 0], b[:, 0]), 0.0)
        inter_h = tf.maximum(tf.minimum(high[:, 1], b[:, 1] + b[:, 3]) - tf.maximum(low[:, 1], b[:, 1]), 0.0)
        in_box = inter_w * inter_h > 0.5 * b[:, 2] * b[:, 3]
        keep = tf.logical_and(tf.logical_and(bones_ok, agree), in_box)
        candidates = tf.cast(tf.where(keep)[:, 0], tf.int32)
        # Pose NMS among the plausible ones (similarity 0 between poses of different images).
        poses = tf.gather(mean3d, candidates)
        ms = tf.reduce_mean(tf.square(poses), axis=[1, 2])  # [K]
        common = (ms[:, tf.newaxis] + ms[tf.newaxis, :]) / 2.0
        pi = poses[:, tf.newaxis] * tf.sqrt(common / tf.maximum(ms[:, tf.newaxis], 1e-12))[..., tf.newaxis, tf.newaxis]
        pj = poses[tf.newaxis, :] * tf.sqrt(common / tf.maximum(ms[tf.newaxis, :], 1e-12))[..., tf.newaxis, tf.newaxis]
        dists = tf.norm(pi - pj, axis=-1)  # [K, K, J]
        largest = tf.math.top_k(dists, k=max(n_joints // 4, 1)).values
        similarity = tf.reduce_mean(tf.nn.relu(1.0 - largest / POSE_NMS_DISTANCE_MM), axis=-1)
        ids = tf.gather(image_ids, candidates)
        similarity = tf.where(tf.equal(ids[:, tf.newaxis], ids[tf.newaxis, :]), similarity, 0.0)
        selected = tf.image.non_max_suppression_overlaps(
            tf.cast(similarity, tf.float32), tf.gather(scores, candidates), tf.size(candidates),
            overlap_threshold=POSE_NMS_THRESHOLD)
        return tf.sort(tf.gather(candidates, selected))

    # -- shared wrapper --------------------------------------------------------------------------

    def _run(self, images, image_ids, boxes, scores, intrinsics, distortion, extrinsics, world_up, skeleton,
             num_aug, average_aug, internal_batch_size, antialias_factor, suppress, default_fov_degrees):
        """Runs the core for per-image arguments ([B, ...] or [1, ...]) and finishes the outputs.

        Returns (kept indices [K] into the boxes, dict of poses3d [K, J, 3] or [K, A, J, 3] (world frame
        when extrinsics are given) and poses2d [K, J, 2] or [K, A, J, 2] px).
        """
        n_images = tf.shape(images)[0]
        joint_indices = self._skeleton_indices(skeleton)
        k = self._intrinsics(intrinsics, tf.shape(images)[1], tf.shape(images)[2], default_fov_degrees)
        d = self._distortion(distortion)
        e, camera_up = self._extrinsics(extrinsics, world_up)

        def broadcast(x, name):
            count = tf.shape(x)[0]
            check = tf.debugging.Assert(
                tf.logical_or(tf.equal(count, 1), tf.equal(count, n_images)),
                [f'{name} must have one entry per image or a single one (broadcast); received', count,
                 'for', n_images, 'images'])
            with tf.control_dependencies([check]):
                return tf.cond(tf.equal(count, 1), lambda: tf.repeat(x, n_images, axis=0), lambda: x)

        k = broadcast(k, 'intrinsic_matrix')
        d = broadcast(d, 'distortion_coeffs')
        e = broadcast(e, 'extrinsic_matrix')
        camera_up = broadcast(camera_up, 'extrinsic_matrix')
        out = self._core(images, image_ids, boxes, k, d, camera_up, num_aug, internal_batch_size,
                         antialias_factor)
        poses3d, poses2d = out['poses3d'], out['poses2d']
        if suppress is False:
            keep = tf.range(tf.shape(boxes)[0])
        else:
            keep = tf.cond(suppress, lambda: self._plausible(poses3d, poses2d, boxes, scores, image_ids),
                           lambda: tf.range(tf.shape(boxes)[0]))
        poses3d, poses2d = tf.gather(poses3d, keep), tf.gather(poses2d, keep)
        box_e = tf.gather(e, tf.gather(image_ids, keep))  # [K, 4, 4]
        rot, trans = box_e[:, :3, :3], box_e[:, :3, 3]
        # World points: R^T (X - t).
        # The averaged poses2d is the projection of the averaged camera-frame pose.
        box_ids = tf.gather(image_ids, keep)
        mean2d = _project(tf.reduce_mean(poses3d, axis=1), tf.gather(k, box_ids), tf.gather(d, box_ids))
        poses3d = tf.einsum('kji,kanj->kani', rot, poses3d - trans[:, tf.newaxis, tf.newaxis, :])
        poses3d = tf.cast(tf.gather(poses3d, joint_indices, axis=2), tf.float32)
        poses2d = tf.cast(tf.gather(poses2d, joint_indices, axis=2), tf.float32)
        mean2d = tf.cast(tf.gather(mean2d, joint_indices, axis=1), tf.float32)
        result = dict(poses3d=tf.cond(average_aug, lambda: tf.reduce_mean(poses3d, axis=1), lambda: poses3d),
                      poses2d=tf.cond(average_aug, lambda: mean2d, lambda: poses2d))
        return keep, result

    # -- exported functions ---------------------------------------------------------------------
    # Every public function has an input signature (one trace; the loaded function never retraces for
    # new shapes) and calls the shared core graph ``self._core``.

    def _common_specs(self):
        return [
            tf.TensorSpec([], tf.float32, name='default_fov_degrees'),
            tf.TensorSpec([], tf.int32, name='internal_batch_size'),
            tf.TensorSpec([], tf.int32, name='antialias_factor'),
            tf.TensorSpec([], tf.bool, name='average_aug')]

    def _make_estimate_poses(self):
        module = self

        @tf.function(input_signature=[
            tf.TensorSpec([None, None, 3], tf.uint8, name='image'),
            tf.TensorSpec([None, 4], tf.float32, name='boxes'),
            tf.TensorSpec([3, 3], tf.float32, name='intrinsic_matrix'),
            tf.TensorSpec([], tf.string, name='skeleton'),
            tf.TensorSpec([], tf.int32, name='num_aug'),
            tf.TensorSpec([None], tf.float32, name='distortion_coeffs'),
            tf.TensorSpec([4, 4], tf.float32, name='extrinsic_matrix'),
            tf.TensorSpec([3], tf.float32, name='world_up_vector'),
            *self._common_specs()])
        def estimate_poses(image, boxes, intrinsic_matrix=tf.zeros([3, 3]), skeleton=self._default_skeleton,
                           num_aug=1, distortion_coeffs=tf.zeros([5]), extrinsic_matrix=tf.eye(4),
                           world_up_vector=tf.constant(geometry.CAMERA_UP, tf.float32),
                           default_fov_degrees=self._fov, internal_batch_size=DEFAULT_INTERNAL_BATCH_SIZE,
                           antialias_factor=self._antialias, average_aug=True):
            """Poses of the people in ``boxes`` of one image (see the posekit.export docstring)."""
            _, result = module._run(
                image[tf.newaxis], tf.zeros([tf.shape(boxes)[0]], tf.int32), boxes, tf.ones([tf.shape(boxes)[0]]),
                intrinsic_matrix[tf.newaxis], distortion_coeffs[tf.newaxis], extrinsic_matrix[tf.newaxis],
                world_up_vector, skeleton, num_aug, average_aug, internal_batch_size, antialias_factor,
                False, default_fov_degrees)
            return result

        return estimate_poses

    def _batched_args(self, images, intrinsic_matrix, distortion_coeffs, extrinsic_matrix):
        """Omitted (empty) per-image arguments -> their defaults [1, ...]."""
        intrinsic_matrix = tf.cond(tf.shape(intrinsic_matrix)[0] > 0, lambda: intrinsic_matrix,
                                   lambda: tf.zeros([1, 3, 3], tf.float32))
        distortion_coeffs = tf.cond(tf.shape(distortion_coeffs)[0] > 0, lambda: distortion_coeffs,
                                    lambda: tf.zeros([1, tf.shape(distortion_coeffs)[1]], tf.float32))
        extrinsic_matrix = tf.cond(tf.shape(extrinsic_matrix)[0] > 0, lambda: extrinsic_matrix,
                                   lambda: tf.eye(4, batch_shape=[1]))
        return intrinsic_matrix, distortion_coeffs, extrinsic_matrix

    def _make_estimate_poses_batched(self):
        module = self

        @tf.function(input_signature=[
            tf.TensorSpec([None, None, None, 3], tf.uint8, name='images'),
            tf.RaggedTensorSpec([None, None, 4], tf.float32, ragged_rank=1),
            tf.TensorSpec([None, 3, 3], tf.float32, name='intrinsic_matrix'),
            tf.TensorSpec([], tf.string, name='skeleton'),
            tf.TensorSpec([], tf.int32, name='num_aug'),
            tf.TensorSpec([None, None], tf.float32, name='distortion_coeffs'),
            tf.TensorSpec([None, 4, 4], tf.float32, name='extrinsic_matrix'),
            tf.TensorSpec([3], tf.float32, name='world_up_vector'),
            *self._common_specs()])
        def estimate_poses_batched(images, boxes, intrinsic_matrix=tf.zeros([0, 3, 3]),
                                   skeleton=self._default_skeleton, num_aug=1, distortion_coeffs=tf.zeros([0, 5]),
                                   extrinsic_matrix=tf.zeros([0, 4, 4]),
                                   world_up_vector=tf.constant(geometry.CAMERA_UP, tf.float32),
                                   default_fov_degrees=self._fov, internal_batch_size=DEFAULT_INTERNAL_BATCH_SIZE,
                                   antialias_factor=self._antialias, average_aug=True):
            """Poses of the boxes of several images (see the posekit.export docstring)."""
            n_images = tf.shape(images)[0]
            checks = [tf.debugging.assert_equal(
                boxes.nrows(out_type=tf.int32), n_images,
                'boxes must have one row (of any number of boxes) per image')]
            with tf.control_dependencies(checks):
                image_ids = tf.cast(boxes.value_rowids(), tf.int32)
            k, d, e = module._batched_args(images, intrinsic_matrix, distortion_coeffs, extrinsic_matrix)
            checks = [tf.debugging.Assert(
                tf.logical_or(tf.equal(tf.shape(k)[0], n_images), tf.equal(tf.shape(k)[0], 1)),
                ['intrinsic_matrix must be [B, 3, 3], one per image, or [1, 3, 3] (or omitted); received shape',
                 tf.shape(intrinsic_matrix), 'for', n_images, 'images'])]
            with tf.control_dependencies(checks):
                k = tf.identity(k)
            values = boxes.values
            _, result = module._run(images, image_ids, values, tf.ones([tf.shape(values)[0]]), k, d, e,
                                    world_up_vector, skeleton, num_aug, average_aug, internal_batch_size,
                                    antialias_factor, False, default_fov_degrees)
            return {key: tf.RaggedTensor.from_row_splits(value, boxes.row_splits, validate=False)
                    for key, value in result.items()}

        return estimate_poses_batched

    def _detect(self, image, detector_threshold, detector_nms_iou_threshold, max_detections, detector_flip_aug):
        """Detector boxes [M, 5] (x, y, w, h px, score) of one image, by decreasing score."""
        width = tf.cast(tf.shape(image)[1], tf.float32)

        def run(img):
            detections = self._detector.detect(img)
            return (tf.reshape(tf.cast(detections['boxes'], tf.float32), [-1, 4]),
                    tf.reshape(tf.cast(detections['scores'], tf.float32), [-1]))

        boxes, scores = run(image)

        def with_flipped():
            fboxes, fscores = run(tf.reverse(image, axis=[1]))
            fboxes = tf.stack([width - fboxes[:, 0] - fboxes[:, 2], fboxes[:, 1], fboxes[:, 2], fboxes[:, 3]], -1)
            return tf.concat([boxes, fboxes], 0), tf.concat([scores, fscores], 0)

        boxes, scores = tf.cond(detector_flip_aug, with_flipped, lambda: (boxes, scores))
        # Detections the pose estimator would refuse (too small, outside the image) are dropped.
        height = tf.cast(tf.shape(image)[0], tf.float32)
        usable = tf.reduce_all(tf.logical_and(boxes[:, 2:] >= MIN_BOX_SIZE_PX,
                                              boxes[:, 2:] <= MAX_BOX_SIZE_FACTOR * tf.maximum(width, height)), -1)
        usable &= (boxes[:, 0] < width) & (boxes[:, 0] + boxes[:, 2] > 0) & (boxes[:, 1] < height)
        usable &= (boxes[:, 1] + boxes[:, 3] > 0) & tf.reduce_all(tf.math.is_finite(boxes), -1)
        keep = tf.logical_and(scores >= detector_threshold, usable)
        boxes, scores = tf.boolean_mask(boxes, keep), tf.boolean_mask(scores, keep)
        corners = tf.stack([boxes[:, 1], boxes[:, 0], boxes[:, 1] + boxes[:, 3], boxes[:, 0] + boxes[:, 2]], -1)
        limit = tf.where(max_detections >= 0, tf.minimum(max_detections, tf.size(scores)), tf.size(scores))
        selected = tf.image.non_max_suppression(corners, scores, limit, detector_nms_iou_threshold)
        return tf.concat([tf.gather(boxes, selected), tf.gather(scores, selected)[:, tf.newaxis]], -1)

    def _detector_specs(self):
        return [
            tf.TensorSpec([], tf.float32, name='detector_threshold'),
            tf.TensorSpec([], tf.float32, name='detector_nms_iou_threshold'),
            tf.TensorSpec([], tf.int32, name='max_detections'),
            tf.TensorSpec([], tf.bool, name='detector_flip_aug'),
            tf.TensorSpec([], tf.bool, name='suppress_implausible_poses')]

    def _make_detect_poses(self):
        module = self

        @tf.function(input_signature=[
            tf.TensorSpec([None, None, 3], tf.uint8, name='image'),
            tf.TensorSpec([3, 3], tf.float32, name='intrinsic_matrix'),
            tf.TensorSpec([], tf.string, name='skeleton'),
            tf.TensorSpec([], tf.int32, name='num_aug'),
            tf.TensorSpec([], tf.float32, name='detector_threshold'),
            tf.TensorSpec([], tf.int32, name='max_detections'),
            tf.TensorSpec([None], tf.float32, name='distortion_coeffs'),
            tf.TensorSpec([4, 4], tf.float32, name='extrinsic_matrix'),
            tf.TensorSpec([3], tf.float32, name='world_up_vector'),
            *self._common_specs(),
            tf.TensorSpec([], tf.float32, name='detector_nms_iou_threshold'),
            tf.TensorSpec([], tf.bool, name='detector_flip_aug'),
            tf.TensorSpec([], tf.bool, name='suppress_implausible_poses')])
        def detect_poses(image, intrinsic_matrix=tf.zeros([3, 3]), skeleton=self._default_skeleton, num_aug=1,
                         detector_threshold=DEFAULT_DETECTOR_THRESHOLD, max_detections=-1,
                         distortion_coeffs=tf.zeros([5]), extrinsic_matrix=tf.eye(4),
                         world_up_vector=tf.constant(geometry.CAMERA_UP, tf.float32),
                         default_fov_degrees=self._fov, internal_batch_size=DEFAULT_INTERNAL_BATCH_SIZE,
                         antialias_factor=self._antialias, average_aug=True,
                         detector_nms_iou_threshold=DEFAULT_DETECTOR_NMS_IOU_THRESHOLD, detector_flip_aug=False,
                         suppress_implausible_poses=True):
            """Detects people with the exported detector, then estimates their poses (posekit.export)."""
            boxes = module._detect(image, detector_threshold, detector_nms_iou_threshold, max_detections,
                                   detector_flip_aug)
            keep, result = module._run(
                image[tf.newaxis], tf.zeros([tf.shape(boxes)[0]], tf.int32), boxes[:, :4], boxes[:, 4],
                intrinsic_matrix[tf.newaxis], distortion_coeffs[tf.newaxis], extrinsic_matrix[tf.newaxis],
                world_up_vector, skeleton, num_aug, average_aug, internal_batch_size, antialias_factor,
                suppress_implausible_poses, default_fov_degrees)
            boxes = tf.gather(boxes, keep)
            result.update(boxes=boxes, scores=boxes[:, 4])
            return result

        return detect_poses

    def _make_detect_poses_batched(self):
        module = self

        @tf.function(input_signature=[
            tf.TensorSpec([None, None, None, 3], tf.uint8, name='images'),
            tf.TensorSpec([None, 3, 3], tf.float32, name='intrinsic_matrix'),
            tf.TensorSpec([], tf.string, name='skeleton'),
            tf.TensorSpec([], tf.int32, name='num_aug'),
            tf.TensorSpec([], tf.float32, name='detector_threshold'),
            tf.TensorSpec([], tf.int32, name='max_detections'),
            tf.TensorSpec([None, None], tf.float32, name='distortion_coeffs'),
            tf.TensorSpec([None, 4, 4], tf.float32, name='extrinsic_matrix'),
            tf.TensorSpec([3], tf.float32, name='world_up_vector'),
            *self._common_specs(),
            tf.TensorSpec([], tf.float32, name='detector_nms_iou_threshold'),
            tf.TensorSpec([], tf.bool, name='detector_flip_aug'),
            tf.TensorSpec([], tf.bool, name='suppress_implausible_poses')])
        def detect_poses_batched(images, intrinsic_matrix=tf.zeros([0, 3, 3]), skeleton=self._default_skeleton,
                                 num_aug=1, detector_threshold=DEFAULT_DETECTOR_THRESHOLD, max_detections=-1,
                                 distortion_coeffs=tf.zeros([0, 5]), extrinsic_matrix=tf.zeros([0, 4, 4]),
                                 world_up_vector=tf.constant(geometry.CAMERA_UP, tf.float32),
                                 default_fov_degrees=self._fov, internal_batch_size=DEFAULT_INTERNAL_BATCH_SIZE,
                                 antialias_factor=self._antialias, average_aug=True,
                                 detector_nms_iou_threshold=DEFAULT_DETECTOR_NMS_IOU_THRESHOLD,
                                 detector_flip_aug=False, suppress_implausible_poses=True):
            """detect_poses for several images: ragged outputs [B, (M_b), ...] (posekit.export)."""
            boxes = tf.map_fn(
                lambda img: module._detect(img, detector_threshold, detector_nms_iou_threshold, max_detections,
                                           detector_flip_aug),
                images, fn_output_signature=tf.RaggedTensorSpec([None, 5], tf.float32, ragged_rank=0))
            image_ids = tf.cast(boxes.value_rowids(), tf.int32)
            values = boxes.values
            k, d, e = module._batched_args(images, intrinsic_matrix, distortion_coeffs, extrinsic_matrix)
            keep, result = module._run(images, image_ids, values[:, :4], values[:, 4], k, d, e, world_up_vector,
                                       skeleton, num_aug, average_aug, internal_batch_size, antialias_factor,
                                       suppress_implausible_poses, default_fov_degrees)
            kept_ids = tf.gather(image_ids, keep)
            n_images = tf.shape(images)[0]
            result['boxes'] = tf.gather(values, keep)
            return {key: tf.RaggedTensor.from_value_rowids(value, kept_ids, nrows=n_images, validate=False)
                    for key, value in result.items()}

        return detect_poses_batched

    def serving_signatures(self):
        """Concrete functions for ``tf.saved_model.save(..., signatures=...)`` (a dict: easy to extend)."""
        module = self
        start, stop = self._default_slice.start, self._default_slice.stop

        @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8, name='image'),
                                      tf.TensorSpec([None, 4], tf.float32, name='boxes')])
        def serve(image, boxes):
            result = module.estimate_poses(image, boxes)
            result['poses3d'].set_shape([None, stop - start, 3])
            result['poses2d'].set_shape([None, stop - start, 2])
            return result

        @tf.function(input_signature=[
            tf.TensorSpec([None, None, 3], tf.uint8, name='image'),
            tf.TensorSpec([None, 4], tf.float32, name='boxes'),
            tf.TensorSpec([3, 3], tf.float32, name='intrinsic_matrix'),
            tf.TensorSpec([], tf.string, name='skeleton'),
            tf.TensorSpec([], tf.int32, name='num_aug')])
        def estimate(image, boxes, intrinsic_matrix, skeleton, num_aug):
            return module.estimate_poses(image, boxes, intrinsic_matrix, skeleton, num_aug)

        from posekit.crop_model import make_crop_function  # raw network on crops (posekit.crop_model)
        return {'serving_default': serve.get_concrete_function(),
                'estimate_poses': estimate.get_concrete_function(),
                'crop_model': make_crop_function(self._holder.model, self._crop_size).get_concrete_function()}


def export_model(model, joint_space, out_dir, crop_size=None, default_skeleton=DEFAULT_SKELETON,
                 default_fov_degrees=DEFAULT_FOV_DEGREES, detector=None, box_margin=DEFAULT_BOX_MARGIN,
                 tta_roll_degrees=DEFAULT_TTA_ROLL_DEGREES, antialias_factor=1, reference_bone_lengths=None):
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
        average-pooled (reduces aliasing when boxes are much larger than the crop); the default of the
        call argument ``antialias_factor`` (at most ``MAX_ANTIALIAS_FACTOR``).
      reference_bone_lengths: None, or mean bone lengths (mm, > 0) [E] of ``joint_space.edges`` (e.g.
        of the training data) for ``suppress_implausible_poses``; None: ``DEFAULT_REFERENCE_BONE_MM``
        for every bone (then only bones longer than 900 mm are implausible).

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
    if antialias_factor > MAX_ANTIALIAS_FACTOR:
        raise ValueError(f'antialias_factor must be at most {MAX_ANTIALIAS_FACTOR}; received '
                         f'antialias_factor={antialias_factor!r}')
    if reference_bone_lengths is not None:
        lengths = np.asarray(reference_bone_lengths, np.float64)
        if lengths.shape != (len(joint_space.edges),) or not np.all(np.isfinite(lengths)) or np.any(lengths <= 0):
            raise ValueError(f'reference_bone_lengths must be {len(joint_space.edges)} positive finite lengths (mm) of '
                             f'joint_space.edges; received reference_bone_lengths with shape {lengths.shape}')
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
                                 box_margin, tta_roll_degrees, antialias_factor, loaded_detector,
                                 reference_bone_lengths)
    out_dir = os.fspath(out_dir)
    tf.saved_model.save(module, out_dir, signatures=module.serving_signatures())
    return out_dir
