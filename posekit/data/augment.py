"""Geometric and photometric augmentation of person crops: batched, stateless, graph-mode.

Geometry is augmented by *re-projecting through the camera*, never by editing labels in pixel
space. Each example's crop camera (intrinsics ``K``, the labels' camera frame) is replaced by a
new virtual camera with the same optical centre, made by :func:`posekit.geometry.crop_camera` (the
function that also aims the rendered training crops and the exported model's crops) with the whole
input crop as the box and no margin:

1. re-aimed: upright (x axis perpendicular to the crop camera's vertical) towards the ray through the
   crop's centre pixel plus a random shift (``shift_fraction`` of the side, per axis);
2. rolled about the new optical axis by ``roll`` (uniform in +-``roll_degrees``);
3. optionally mirrored (probability ``flip_probability``): the camera x axis is negated;
4. zoomed: the focal length that fits the input crop into the output crop, times ``zoom`` (uniform
   in ``zoom_range``); square pixels, the principal point at the centre of the output crop.

So new camera-frame points are ``p' = M p`` with ``M = F Rz(roll) R_aim`` (F = diag(+-1, 1, 1))
and the new intrinsics are ``K'``. The image is warped by the homography ``K' M K^-1`` (exact
for a pinhole camera that rotates about its centre). Labels move exactly:
``coords3d' = coords3d @ M^T`` (mm, new camera frame) and ``coords2d' = project(coords3d', K')``
(px), so after any augmentation the 2D labels equal the
projection of the 3D labels with the crop's intrinsics. 2D-only examples (``is_3d`` False) get
the same warp; their ``coords2d`` are mapped through the homography (their 3D is rotated too).

Flipping keeps left/right meaning: a mirrored image shows the mirror image of the person, whose
left shoulder is the reflection of the original right shoulder, so joints are permuted through
the joint space's ``mirror`` list (``coords'[j] = F M0 coords[mirror[j]]``), and ``joint_valid``
with them. For a person facing the camera, ``lsho`` has the larger camera-frame x before and
after the flip.

Photometric augmentation is one per-example affine colour map (vectorised over the batch):
hue rotation and saturation scaling in YIQ space, contrast about the per-channel image mean,
additive brightness. Random erasing (occlusion) paints one rectangle per selected example with
a random solid colour or blocky colour noise; joints under it keep their labels.

Two image backends (``AugmentConfig.warp_backend``), both usable in graph mode and in
``Dataset.map``: 'opencv' (default) runs warp, colour map and erasing for a whole batch in one
``tf.numpy_function`` with ``cv2.warpPerspective``/``cv2.transform`` on uint8 images (about 7x
faster on CPU than the TF warp kernel); 'tensorflow' is pure TF (``ImageProjectiveTransformV3``
on the whole batch, float32). Parameters and labels are TF ops either way; the backends agree to
within 1-2 intensity levels.

Randomness is stateless: every random number is a hash of (seed, stream key, example position,
counter) (:func:`uniform_from_keys`), never TF's global random state, so augmentations are
reproducible across processes and identical when training resumes.

Pixel conventions follow :mod:`posekit.geometry`: the centre of the top-left pixel is (0, 0).
Images are uint8 [B, H, W, 3]; intrinsics [B, 3, 3] px; coords3d [B, J, 3] mm in the camera
frame (x right, y down, z forward); coords2d [B, J, 2] px.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from posekit import geometry

MAX_PIXEL_VALUE = 255.0
"""Largest uint8 intensity; photometric deltas are fractions of it."""

UNIT_INTERVAL_BITS = 24
"""Random bits per uniform number (exact in float32)."""

ERASE_NOISE_CELLS = 8
"""Blocky erase noise: a grid of ERASE_NOISE_CELLS x ERASE_NOISE_CELLS random colours."""

FILL_MODES = ('constant', 'reflect', 'wrap', 'nearest')
INTERPOLATIONS = ('bilinear', 'nearest')
WARP_BACKENDS = ('opencv', 'tensorflow')

# RGB -> YIQ (NTSC). Hue rotates the (I, Q) plane, saturation scales it.
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114],
                        [0.595716, -0.274453, -0.321263],
                        [0.211456, -0.522591, 0.311135]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)

# Column of each random number in uniform_from_keys(keys, N_RANDOM).
_ROLL, _ZOOM, _SHIFT_X, _SHIFT_Y, _FLIP = 0, 1, 2, 3, 4
_BRIGHTNESS, _CONTRAST, _HUE, _SATURATION = 5, 6, 7, 8
_ERASE, _ERASE_AREA, _ERASE_ASPECT, _ERASE_Y, _ERASE_X, _ERASE_NOISE = 9, 10, 11, 12, 13, 14
_ERASE_COLOUR = 15  # 3 columns
_ERASE_CELLS = 18  # ERASE_NOISE_CELLS**2 * 3 columns
N_RANDOM = _ERASE_CELLS + ERASE_NOISE_CELLS * ERASE_NOISE_CELLS * 3
"""Random numbers drawn per example by :func:`sample_params`."""

_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB


def _check_range(value, name, low=None, high=None):
    try:
        pair = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f'{name} must be a (min, max) pair of numbers, got {value!r}') from None
    if len(pair) != 2 or not pair[0] <= pair[1] or not all(math.isfinite(v) for v in pair):
        raise ValueError(f'{name} must be a finite (min, max) pair with min <= max, got {value!r}')
    if (low is not None and pair[0] < low) or (high is not None and pair[1] > high):
        raise ValueError(f'{name} must lie within [{low}, {high}], got {value!r}')
    return pair


def _check_number(value, name, low, high):
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f'{name} must be a number, got {value!r}') from None
    if not (math.isfinite(number) and low <= number <= high):
        raise ValueError(f'{name} must be in [{low}, {high}], got {value!r}')
    return number


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Hyperparameters of :func:`augment_batch`. Defaults follow MeTRAbs-style training.

    Attributes:
      roll_degrees: roll uniform in [-roll_degrees, roll_degrees] (degrees).
      zoom_range: (min, max) zoom factor, uniform (> 0; > 1 magnifies).
      shift_fraction: re-aiming offset per axis, uniform in +-shift_fraction * side (px of the input).
      flip_probability: probability of a horizontal mirror (with the joint permutation).
      output_side: side (px) of the output crops; None keeps the input size.
      fill_mode: border fill outside the source image: 'constant', 'reflect', 'wrap', 'nearest'.
      fill_value: intensity (0-255) of the 'constant' fill.
      interpolation: 'bilinear' or 'nearest'.
      warp_backend: 'opencv' (``cv2.warpPerspective`` per image inside ``tf.numpy_function``;
        uint8 in and out, about 7x faster on CPU) or 'tensorflow' (``ImageProjectiveTransformV3``
        on the whole batch; pure graph, float32). Both are deterministic.
      brightness_delta: additive brightness uniform in +-brightness_delta * 255.
      contrast_range: (min, max) contrast factor about the per-channel mean.
      hue_delta: hue rotation uniform in +-hue_delta turns (YIQ plane).
      saturation_range: (min, max) saturation factor (YIQ chroma scale).
      erase_probability: probability of one random-erasing rectangle.
      erase_area_range: (min, max) rectangle area as a fraction of the image area.
      erase_aspect_range: (min, max) rectangle height/width ratio, log-uniform.
      erase_noise_probability: probability that the rectangle is blocky noise (else a solid colour).
    """

    roll_degrees: float = 20.0
    zoom_range: Tuple[float, float] = (0.75, 1.25)
    shift_fraction: float = 0.1
    flip_probability: float = 0.5
    output_side: Optional[int] = None
    fill_mode: str = 'constant'
    fill_value: float = 0.0
    interpolation: str = 'bilinear'
    warp_backend: str = 'opencv'
    brightness_delta: float = 0.15
    contrast_range: Tuple[float, float] = (0.7, 1.3)
    hue_delta: float = 0.05
    saturation_range: Tuple[float, float] = (0.6, 1.4)
    erase_probability: float = 0.3
    erase_area_range: Tuple[float, float] = (0.02, 0.15)
    erase_aspect_range: Tuple[float, float] = (0.3, 3.3)
    erase_noise_probability: float = 0.5

    def __post_init__(self):
        _check_number(self.roll_degrees, 'roll_degrees', 0.0, 180.0)
        zoom = _check_range(self.zoom_range, 'zoom_range')
        if zoom[0] <= 0:
            raise ValueError(f'zoom_range must be positive, got {self.zoom_range!r}')
        object.__setattr__(self, 'zoom_range', zoom)
        _check_number(self.shift_fraction, 'shift_fraction', 0.0, 0.45)
        _check_number(self.flip_probability, 'flip_probability', 0.0, 1.0)
        if self.output_side is not None and (not isinstance(self.output_side, (int, np.integer))
                                             or self.output_side <= 0):
            raise ValueError(f'output_side must be None or a positive int, got {self.output_side!r}')
        if self.fill_mode not in FILL_MODES:
            raise ValueError(f'fill_mode must be one of {FILL_MODES}, got {self.fill_mode!r}')
        _check_number(self.fill_value, 'fill_value', 0.0, MAX_PIXEL_VALUE)
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f'interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}')
        if self.warp_backend not in WARP_BACKENDS:
            raise ValueError(f'warp_backend must be one of {WARP_BACKENDS}, got {self.warp_backend!r}')
        _check_number(self.brightness_delta, 'brightness_delta', 0.0, 1.0)
        object.__setattr__(self, 'contrast_range', _check_range(self.contrast_range, 'contrast_range', 0.0))
        _check_number(self.hue_delta, 'hue_delta', 0.0, 0.5)
        object.__setattr__(self, 'saturation_range',
                           _check_range(self.saturation_range, 'saturation_range', 0.0))
        _check_number(self.erase_probability, 'erase_probability', 0.0, 1.0)
        object.__setattr__(self, 'erase_area_range',
                           _check_range(self.erase_area_range, 'erase_area_range', 0.0, 1.0))
        aspect = _check_range(self.erase_aspect_range, 'erase_aspect_range')
        if aspect[0] <= 0:
            raise ValueError(f'erase_aspect_range must be positive, got {self.erase_aspect_range!r}')
        object.__setattr__(self, 'erase_aspect_range', aspect)
        _check_number(self.erase_noise_probability, 'erase_noise_probability', 0.0, 1.0)

    @classmethod
    def identity(cls, **changes) -> 'AugmentConfig':
        """A config that changes nothing (crops with a centred principal point pass unchanged)."""
        fields = dict(roll_degrees=0.0, zoom_range=(1.0, 1.0), shift_fraction=0.0, flip_probability=0.0,
                      brightness_delta=0.0, contrast_range=(1.0, 1.0), hue_delta=0.0,
                      saturation_range=(1.0, 1.0), erase_probability=0.0)
        fields.update(changes)
        return cls(**fields)

    @property
    def has_photometric(self) -> bool:
        return (self.brightness_delta > 0 or self.contrast_range != (1.0, 1.0) or self.hue_delta > 0
                or self.saturation_range != (1.0, 1.0))

    @property
    def has_erase(self) -> bool:
        return self.erase_probability > 0


# ----------------------------------------------------------------------------------------------
# Stateless per-example random numbers
# ----------------------------------------------------------------------------------------------

def _mix64(z):
    """SplitMix64 finalizer on uint64 tensors."""
    z = tf.bitwise.bitwise_xor(z, tf.bitwise.right_shift(z, tf.constant(30, tf.uint64)))
    z = z * tf.constant(_MIX1, tf.uint64)
    z = tf.bitwise.bitwise_xor(z, tf.bitwise.right_shift(z, tf.constant(27, tf.uint64)))
    z = z * tf.constant(_MIX2, tf.uint64)
    return tf.bitwise.bitwise_xor(z, tf.bitwise.right_shift(z, tf.constant(31, tf.uint64)))


def uniform_from_keys(keys, n: int):
    """Deterministic uniform numbers in [0, 1) from integer keys, vectorised over examples.

    Args:
      keys: [B, K] integer tensor (e.g. (seed, stream key, example position)); equal keys give
        equal numbers in any process, different keys independent-looking ones.
      n: numbers per example.

    Returns:
      [B, n] float32 in [0, 1), multiples of 2^-24.
    """
    if not isinstance(n, (int, np.integer)) or n <= 0:
        raise ValueError(f'n must be a positive int, got {n!r}')
    keys = tf.convert_to_tensor(keys)
    if keys.shape.rank != 2 or keys.shape[1] is None:
        raise ValueError(f'keys must have shape [B, K] with a static K, got shape {keys.shape}')
    keys = tf.bitcast(tf.cast(keys, tf.int64), tf.uint64)
    state = tf.fill(tf.shape(keys)[:1], tf.constant(_GOLDEN, tf.uint64))
    for i in range(keys.shape[1]):
        state = _mix64(tf.bitwise.bitwise_xor(state, keys[:, i]) + tf.constant(_GOLDEN, tf.uint64))
    counters = tf.range(1, n + 1, dtype=tf.int64)
    counters = tf.bitcast(counters, tf.uint64) * tf.constant(_GOLDEN, tf.uint64)
    bits = _mix64(state[:, None] + counters[None, :])
    top = tf.bitwise.right_shift(bits, tf.constant(64 - UNIT_INTERVAL_BITS, tf.uint64))
    return tf.cast(top, tf.float32) * (1.0 / (1 << UNIT_INTERVAL_BITS))


def _lerp(u, bounds):
    low, high = bounds
    return low + (high - low) * u


def sample_params(keys, config: AugmentConfig) -> Dict[str, tf.Tensor]:
    """Per-example augmentation parameters drawn statelessly from ``keys``.

    Args:
      keys: [B, K] integer keys (see :func:`uniform_from_keys`).
      config: the AugmentConfig.

    Returns:
      dict of tensors with leading B: ``roll`` (rad), ``zoom``, ``shift`` [B, 2] (fraction of the
      input side, per axis), ``flip`` bool, ``brightness`` (intensity delta, 0-255 scale),
      ``contrast``, ``hue`` (turns), ``saturation``, ``erase`` bool, ``erase_box`` [B, 4]
      (y0, x0, y1, x1) as fractions of the output height/width, ``erase_noise`` bool,
      ``erase_colour`` [B, 3] (0-255), ``erase_cells`` [B, C, C, 3] (0-255).
    """
    if not isinstance(config, AugmentConfig):
        raise ValueError(f'config must be an AugmentConfig, got {type(config).__name__}')
    u = uniform_from_keys(keys, N_RANDOM)
    roll = math.radians(config.roll_degrees) * (2.0 * u[:, _ROLL] - 1.0)
    area = _lerp(u[:, _ERASE_AREA], config.erase_area_range)
    log_aspect = _lerp(u[:, _ERASE_ASPECT], tuple(math.log(a) for a in config.erase_aspect_range))
    aspect = tf.exp(log_aspect)
    height = tf.minimum(tf.sqrt(area * aspect), 1.0)
    width = tf.minimum(tf.sqrt(area / aspect), 1.0)
    y0 = u[:, _ERASE_Y] * (1.0 - height)
    x0 = u[:, _ERASE_X] * (1.0 - width)
    cells = tf.reshape(u[:, _ERASE_CELLS:], [-1, ERASE_NOISE_CELLS, ERASE_NOISE_CELLS, 3])
    return dict(
        roll=roll,
        zoom=_lerp(u[:, _ZOOM], config.zoom_range),
        shift=config.shift_fraction * (2.0 * u[:, _SHIFT_X:_SHIFT_Y + 1] - 1.0),
        flip=u[:, _FLIP] < config.flip_probability,
        brightness=config.brightness_delta * MAX_PIXEL_VALUE * (2.0 * u[:, _BRIGHTNESS] - 1.0),
        contrast=_lerp(u[:, _CONTRAST], config.contrast_range),
        hue=config.hue_delta * (2.0 * u[:, _HUE] - 1.0),
        saturation=_lerp(u[:, _SATURATION], config.saturation_range),
        erase=u[:, _ERASE] < config.erase_probability,
        erase_box=tf.stack([y0, x0, y0 + height, x0 + width], axis=-1),
        erase_noise=u[:, _ERASE_NOISE] < config.erase_noise_probability,
        erase_colour=MAX_PIXEL_VALUE * u[:, _ERASE_COLOUR:_ERASE_COLOUR + 3],
        erase_cells=MAX_PIXEL_VALUE * cells,
    )


# ----------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------

def _matrix(rows):
    return tf.stack([tf.stack(r, axis=-1) for r in rows], axis=-2)


def camera_transform(intrinsics, params, input_shape, output_shape):
    """The new crop camera of each example: :func:`posekit.geometry.crop_camera` aimed at the input crop.

    The "box" is the whole input crop (pixel centres 0 ... side - 1, so the box spans -0.5 ... side - 0.5)
    with no margin: with zero shift, roll and flip and unit zoom the new camera is the old one with its
    principal point at the output centre and its focal length scaled by ``output side / input side``.

    Args:
      intrinsics: [B, 3, 3] original crop intrinsics (px).
      params: dict with ``roll`` [B] (rad), ``zoom`` [B], ``shift`` [B, 2] (fraction of the input
        side), ``flip`` [B] bool (see :func:`sample_params`).
      input_shape: (height, width) of the input crops (px), ints or scalar tensors.
      output_shape: (height, width) of the output crops (px); square (the crop camera's crops are).

    Returns:
      (rotation [B, 3, 3], new_intrinsics [B, 3, 3], homography [B, 3, 3]), float64: new
      camera-frame points are ``rotation @ p`` (mm), ``new_intrinsics`` is the new K (px), and
      ``homography`` maps old homogeneous pixels to new ones (``K' R K^-1``).
    """
    k = tf.cast(intrinsics, tf.float64)
    in_h, in_w = (tf.cast(s, tf.float64) for s in input_shape)
    out_side = tf.get_static_value(tf.convert_to_tensor(output_shape[0]))
    if out_side is None or tf.get_static_value(tf.convert_to_tensor(output_shape[1])) != out_side:
        raise ValueError(f'output_shape must be a static square (side, side), got {output_shape!r}')
    ones = tf.ones_like(k[:, 0, 0])
    boxes = tf.stack([-0.5 * ones, -0.5 * ones, in_w * ones, in_h * ones], axis=-1)
    rotation, new_k = geometry.crop_camera(k, boxes, int(out_side), box_margin=0.0,
                                           roll=params['roll'], flip=params['flip'], zoom=params['zoom'],
                                           shift=params['shift'])
    return rotation, new_k, geometry.crop_homography(k, rotation, new_k)


_CV2_BORDERS = {'constant': 'BORDER_CONSTANT', 'reflect': 'BORDER_REFLECT', 'wrap': 'BORDER_WRAP',
                'nearest': 'BORDER_REPLICATE'}
_CV2_INTERPOLATIONS = {'bilinear': 'INTER_LINEAR', 'nearest': 'INTER_NEAREST'}


def _warp_opencv(images, homographies, output_shape, fill_mode, fill_value, interpolation):
    import cv2
    out_h, out_w = (int(v) for v in output_shape)
    flags = getattr(cv2, _CV2_INTERPOLATIONS[interpolation])
    border = getattr(cv2, _CV2_BORDERS[fill_mode])
    out = np.empty((images.shape[0], out_h, out_w, images.shape[3]), images.dtype)
    for i in range(images.shape[0]):
        warped = cv2.warpPerspective(images[i], homographies[i], (out_w, out_h), flags=flags,
                                     borderMode=border, borderValue=(fill_value,) * 4)
        out[i] = warped.reshape(out.shape[1:])
    return out


def warp_images(images, homography, output_shape, fill_mode='constant', fill_value=0.0,
                interpolation='bilinear', backend='opencv'):
    """Warps a batch of images by per-example homographies (old pixels -> new pixels).

    Args:
      images: [B, H, W, C] images (uint8 or float32).
      homography: [B, 3, 3] maps homogeneous input pixels to output pixels (pixel centres at
        integer coordinates).
      output_shape: (height, width) of the output.
      fill_mode, fill_value, interpolation, backend: see :class:`AugmentConfig` (``warp_backend``).

    Returns:
      [B, out_h, out_w, C]: with the 'opencv' backend in the dtype of ``images`` (uint8 results
      are rounded), with 'tensorflow' float32.
    """
    if backend not in WARP_BACKENDS:
        raise ValueError(f'backend must be one of {WARP_BACKENDS}, got {backend!r}')
    images = tf.convert_to_tensor(images)
    homography = tf.cast(homography, tf.float64)
    out_shape = tf.stack([tf.cast(s, tf.int32) for s in output_shape])
    if backend == 'opencv':
        warped = tf.numpy_function(
            lambda im, h, shape: _warp_opencv(im, h, shape, fill_mode, fill_value, interpolation),
            [images, homography, out_shape], images.dtype, stateful=False)
        static = [tf.get_static_value(v) for v in output_shape]
        warped.set_shape([images.shape[0], static[0], static[1], images.shape[3]])
        return warped
    return geometry.warp_homography_tf(images, homography, output_shape, fill_mode, fill_value, interpolation)


def _permute_if(flip, tensor, mirror):
    permuted = tf.gather(tensor, mirror, axis=1)
    cond = tf.reshape(flip, [-1] + [1] * (tensor.shape.rank - 1))
    return tf.where(cond, permuted, tensor)


def transform_labels(example_batch, params, mirror, output_shape=None):
    """The labels and intrinsics of the new crop cameras (no image work).

    Args:
      example_batch: dict with ``image`` [B, H, W, 3] (only its shape is used), ``intrinsics``
        [B, 3, 3] px, ``coords3d`` [B, J, 3] mm (camera frame), ``coords2d`` [B, J, 2] px,
        optionally ``joint_valid`` [B, J] and ``is_3d`` [B] (default True). Other keys pass through.
      params: from :func:`sample_params` (``roll``, ``zoom``, ``shift``, ``flip``).
      mirror: J ints, each joint's left/right counterpart (``JointSpace(formats).mirror``).
      output_shape: (height, width) of the output, default the input's.

    Returns:
      (dict like ``example_batch`` with new ``coords3d``, ``coords2d``, ``joint_valid`` and
      ``intrinsics`` and the unchanged ``image``, homography [B, 3, 3] float64 old px -> new px,
      output_shape).
    """
    out = dict(example_batch)
    image = tf.convert_to_tensor(example_batch['image'])
    coords3d = tf.convert_to_tensor(example_batch['coords3d'])
    coords2d = tf.convert_to_tensor(example_batch['coords2d'])
    n_joints = coords3d.shape[1]
    mirror = check_mirror(mirror, n_joints)
    in_shape = (tf.shape(image)[1], tf.shape(image)[2])
    if output_shape is None:
        output_shape = tuple(image.shape[1:3]) if image.shape[1:3].is_fully_defined() else in_shape
    rotation, new_k, homography = camera_transform(example_batch['intrinsics'], params, in_shape,
                                                   output_shape)
    new3d = tf.einsum('bij,bkj->bki', tf.cast(rotation, coords3d.dtype), coords3d)
    projected = geometry.project_tf(new3d, new_k)
    mapped = geometry.apply_homography(homography, coords2d)
    is_3d = example_batch.get('is_3d')
    if is_3d is None:
        new2d = tf.cast(projected, coords2d.dtype)
    else:
        new2d = tf.where(tf.reshape(tf.cast(is_3d, tf.bool), [-1, 1, 1]),
                         tf.cast(projected, coords2d.dtype), mapped)
    flip = tf.convert_to_tensor(params['flip'])
    out['coords3d'] = _permute_if(flip, new3d, mirror)
    out['coords2d'] = _permute_if(flip, new2d, mirror)
    if 'joint_valid' in example_batch:
        out['joint_valid'] = _permute_if(flip, tf.convert_to_tensor(example_batch['joint_valid']), mirror)
    out['intrinsics'] = tf.cast(new_k, tf.convert_to_tensor(example_batch['intrinsics']).dtype)
    return out, homography, output_shape


def check_mirror(mirror, n_joints: int) -> np.ndarray:
    """Validates a joint mirror permutation (an involution of range(n_joints)); returns it as ints."""
    mirror = np.asarray(mirror)
    if mirror.shape != (n_joints,) or not np.issubdtype(mirror.dtype, np.integer):
        raise ValueError(f'mirror must be {n_joints} joint indices (one per joint), got {mirror.tolist()!r}')
    if not np.array_equal(np.sort(mirror), np.arange(n_joints)) or not np.array_equal(mirror[mirror],
                                                                                        np.arange(n_joints)):
        raise ValueError(f'mirror must be an involutive permutation of range({n_joints}), got {mirror.tolist()}')
    return mirror


# ----------------------------------------------------------------------------------------------
# Photometric
# ----------------------------------------------------------------------------------------------

def colour_matrices(params):
    """[B, 3, 3] float32 RGB maps rotating hue by ``params['hue']`` turns and scaling saturation (YIQ)."""
    angle = 2.0 * math.pi * tf.cast(params['hue'], tf.float64)
    sat = tf.cast(params['saturation'], tf.float64)
    c, s = sat * tf.cos(angle), sat * tf.sin(angle)
    zeros, ones = tf.zeros_like(c), tf.ones_like(c)
    yiq = _matrix([[ones, zeros, zeros], [zeros, c, -s], [zeros, s, c]])
    return tf.cast(tf.constant(_YIQ_TO_RGB) @ yiq @ tf.constant(_RGB_TO_YIQ), tf.float32)


def photometric_augment(images, params):
    """Hue, saturation, contrast and brightness as one affine colour map per example.

    Args:
      images: [B, H, W, 3] float32 intensities (0-255).
      params: ``hue`` [B] (turns), ``saturation`` [B], ``contrast`` [B], ``brightness`` [B]
        (intensity delta).

    Returns:
      [B, H, W, 3] float32, not clipped: ``contrast * C (x - m) + C m + brightness`` with C the
      colour matrix and m the per-channel image mean.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    colour = colour_matrices(params)
    contrast = tf.cast(params['contrast'], tf.float32)[:, None, None]
    mean = tf.reduce_mean(images, axis=[1, 2])  # [B, 3]
    matrix = contrast * colour  # [B, 3, 3]
    bias = (tf.linalg.matvec(colour, mean) * (1.0 - contrast[:, :, 0])
            + tf.cast(params['brightness'], tf.float32)[:, None])
    shape = tf.shape(images)
    flat = tf.reshape(images, [shape[0], -1, 3])
    result = tf.matmul(flat, matrix, transpose_b=True) + bias[:, None, :]
    return tf.reshape(result, shape)


def random_erase(images, params):
    """Paints one rectangle per example where ``params['erase']`` (occlusion; labels unchanged).

    Args:
      images: [B, H, W, 3] float32 (0-255).
      params: ``erase`` [B] bool, ``erase_box`` [B, 4] (y0, x0, y1, x1) fractions of H and W,
        ``erase_noise`` [B] bool, ``erase_colour`` [B, 3], ``erase_cells`` [B, C, C, 3] (0-255).

    Returns:
      [B, H, W, 3] float32.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    ys = (tf.cast(tf.range(height), tf.float32) + 0.5) / tf.cast(height, tf.float32)
    xs = (tf.cast(tf.range(width), tf.float32) + 0.5) / tf.cast(width, tf.float32)
    box = tf.cast(params['erase_box'], tf.float32)
    inside_y = (ys[None, :] >= box[:, 0:1]) & (ys[None, :] < box[:, 2:3])  # [B, H]
    inside_x = (xs[None, :] >= box[:, 1:2]) & (xs[None, :] < box[:, 3:4])  # [B, W]
    mask = (inside_y[:, :, None] & inside_x[:, None, :]
            & tf.reshape(tf.cast(params['erase'], tf.bool), [-1, 1, 1]))
    noise = tf.image.resize(tf.cast(params['erase_cells'], tf.float32), [height, width], method='nearest')
    fill = tf.where(tf.reshape(tf.cast(params['erase_noise'], tf.bool), [-1, 1, 1, 1]), noise,
                    tf.cast(params['erase_colour'], tf.float32)[:, None, None, :])
    return tf.where(mask[..., None], fill, images)


def to_uint8(images):
    """Rounds and saturates float intensities (0-255) to uint8 (uint8 input passes unchanged)."""
    images = tf.convert_to_tensor(images)
    if images.dtype == tf.uint8:
        return images
    return tf.saturate_cast(tf.round(images), tf.uint8)


# ----------------------------------------------------------------------------------------------
# Everything
# ----------------------------------------------------------------------------------------------

def _erase_rows(low, high, size):
    """Pixel index range [start, stop) whose centres (i + 0.5) / size lie in [low, high)."""
    return int(np.ceil(low * size - 0.5)), int(np.ceil(high * size - 0.5))


def _image_ops_opencv(images, homographies, output_shape, colour, contrast, brightness, erase, box, noise,
                      erase_colour, cells, fill_mode, fill_value, interpolation, photometric, erasing):
    """warp + photometric + erasing of one batch with OpenCV/numpy, uint8 throughout."""
    import cv2
    warped = _warp_opencv(images, homographies, output_shape, fill_mode, fill_value, interpolation)
    height, width = warped.shape[1:3]
    for i in range(warped.shape[0]):
        image = warped[i]
        if photometric:
            mean = np.asarray(cv2.mean(image)[:3])
            matrix = np.empty((3, 4))
            matrix[:, :3] = contrast[i] * colour[i]
            matrix[:, 3] = (1.0 - contrast[i]) * colour[i] @ mean + brightness[i]
            image[...] = cv2.transform(image, matrix)
        if erasing and erase[i]:
            y0, y1 = _erase_rows(box[i, 0], box[i, 2], height)
            x0, x1 = _erase_rows(box[i, 1], box[i, 3], width)
            if noise[i]:
                n_cells = cells.shape[1]
                rows = ((np.arange(y0, y1) + 0.5) * n_cells / height).astype(np.int64)
                cols = ((np.arange(x0, x1) + 0.5) * n_cells / width).astype(np.int64)
                fill = cells[i][rows][:, cols]
            else:
                fill = erase_colour[i]
            image[y0:y1, x0:x1] = np.round(fill)
    return warped


def augment_batch(example_batch, keys, config: AugmentConfig, mirror: Sequence[int]):
    """Geometric + photometric + erasing augmentation of a batch, stateless in ``keys``.

    With ``config.warp_backend == 'opencv'`` the image work (warp, colour map, erasing) runs in
    one ``tf.numpy_function`` per batch on uint8 images; with 'tensorflow' it is pure TF
    (:func:`warp_images`, :func:`photometric_augment`, :func:`random_erase`). Parameters and
    labels are computed in TF either way.

    Args:
      example_batch: dict of tensors with leading B (data contract: ``image`` uint8 [B, S, S, 3],
        ``intrinsics`` [B, 3, 3] px, ``coords3d`` [B, J, 3] mm camera frame, ``coords2d``
        [B, J, 2] px, ``joint_valid`` [B, J], ``is_3d`` [B]); other keys pass through.
      keys: [B, K] integer keys, e.g. (seed, stream key, example position): the same keys give
        the same augmentation in any process and any batch.
      config: AugmentConfig.
      mirror: J ints, the joint space's mirror permutation.

    Returns:
      dict with the same keys; ``image`` uint8 [B, S', S', 3] (S' = ``config.output_side`` or S),
      ``intrinsics``, ``coords3d``, ``coords2d``, ``joint_valid`` of the new crop cameras.
    """
    params = sample_params(keys, config)
    output_shape = None
    if config.output_side is not None:
        output_shape = (config.output_side, config.output_side)
    out, homography, output_shape = transform_labels(example_batch, params, mirror, output_shape)
    images = tf.convert_to_tensor(example_batch['image'])
    if config.warp_backend == 'opencv':
        photometric, erasing = config.has_photometric, config.has_erase
        inputs = [tf.cast(images, tf.uint8), homography, tf.stack([tf.cast(v, tf.int32) for v in output_shape]),
                  tf.cast(colour_matrices(params), tf.float64)]
        inputs += [tf.cast(params[k], tf.float64) for k in ('contrast', 'brightness')]
        inputs += [params['erase'], tf.cast(params['erase_box'], tf.float64), params['erase_noise'],
                   params['erase_colour'], params['erase_cells']]
        warped = tf.numpy_function(
            lambda *a: _image_ops_opencv(*a, config.fill_mode, config.fill_value, config.interpolation,
                                         photometric, erasing),
            inputs, tf.uint8, stateful=False)
        static = [tf.get_static_value(v) for v in output_shape]
        warped.set_shape([images.shape[0], static[0], static[1], images.shape[3]])
        out['image'] = warped
        return out
    images = warp_images(images, homography, output_shape, config.fill_mode, config.fill_value,
                         config.interpolation, 'tensorflow')
    if config.has_photometric:
        images = photometric_augment(images, params)
    if config.has_erase:
        images = random_erase(images, params)
    out['image'] = to_uint8(images)
    return out


def augment_example(example, key, config: AugmentConfig, mirror: Sequence[int]):
    """:func:`augment_batch` for one example (dict of unbatched tensors) and its key [K]."""
    batch = {name: tf.expand_dims(value, 0) for name, value in example.items()}
    key = tf.reshape(tf.convert_to_tensor(key), [1, -1])
    out = augment_batch(batch, key, config, mirror)
    return {name: value[0] for name, value in out.items()}
