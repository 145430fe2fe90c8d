"""2D-to-3D lifting sets made from motion clips, and their resumable ``tf.data`` stream.

A lifting example is one person in one camera view: the input is the ground-truth 2D projection
of the joints, the target their 3D position relative to the root joint in the camera frame.
Everything follows the pipeline of the lifting papers (VideoPose3D, SemGCN, Liu et al. 2020):

* **Inputs** ``inputs`` [N, J, 2] float32: pixel coordinates normalized by the image width,
  keeping the aspect ratio (:func:`normalize_screen_coordinates`: ``x / w * 2 - [1, h / w]``), so
  the image spans [-1, 1] horizontally.
* **Targets** ``targets`` [N, J, 3] float32: root-relative 3D joints in mm, camera frame (x right,
  y down, z forward); the root (pelvis, joint 0) is exactly 0.
* **Skeleton** ``h36m_17`` (or ``h36m_16`` without the nose), joints from
  :func:`posekit.data.bodies.format_joints`.
* **Cameras**: a Human3.6M-like rig of ``N_RIG_CAMERAS`` cameras (ids 0..3) at fixed positions
  around each clip's capture volume (3.5-5 m from its centre, 1-2 m high, azimuths about
  45 + 90 k degrees; the same rig for every clip and split, from ``LiftingSpec.rig_seed``) plus
  ``n_random_cameras`` random views per frame (id ``RANDOM_CAMERA_ID``) at 2.5-6 m and 0.3-2.5 m
  high. Every camera looks at the subject's pelvis (the rig cameras pan to follow the subject:
  CMU subjects cross a larger volume than Human3.6M's), with Human3.6M's 1000 x 1000 px image and
  1145 px focal length, no distortion. Views closer than ``MIN_CAMERA_DISTANCE_MM`` are dropped.
* **Real Human3.6M cameras** (``LiftingSpec.h36m_cameras`` = a folder with Human3.6M's
  ``cameras.json``, e.g. ``../shared/data/real_samples/h36m``): the rig is replaced by the real
  calibrations (:func:`h36m_rigs`; R, T, K and OpenCV distortion k1, k2, p1, p2, k3). Each clip is
  placed in Human3.6M's capture volume (:func:`place_in_h36m_volume`: world z up, floor at z = 0,
  the clip's pelvis centre under the cameras' common look-at point) and seen by the 4 cameras of
  one subject (clip k of the split: subject ``k mod n``): S1 S5 S6 S7 S8 for train and val, S9 S11
  for test, as Human3.6M's protocol. The 2D inputs are the distorted projections; views with a
  joint outside the image or less than ``MIN_DEPTH_MM`` in front of the camera are dropped
  (fixed cameras do not follow a subject who walks out of the volume). Random extra views stay as
  above.
* **Splits** (:func:`lifting_splits`): subject-wise. train and val come from the training motion
  (``mocap.split_by_subject``); test is all of an external motion folder when given. Without a
  motion folder, procedural subjects are used, and the test set is procedural subjects of another
  seed.

Everything is deterministic in ``seed`` (numpy Generators keyed by seed, split and clip).
:func:`lifting_dataset` streams shuffled batches whose batch k is a pure function of (seed, k):
the training loop's ``dataset_fn(start_step)`` contract, so resumed runs see the same stream.
The Human3.6M loader (:mod:`posekit.data.h36m`) produces the same :class:`LiftingSet`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from posekit import geometry, skeletons
from posekit.data import bodies, mocap

MM_PER_M = 1000.0
LIFTING_JOINTS = ('h36m_17', 'h36m_16')
"""Skeleton formats a lifting set can use."""
ROOT_JOINT = 0
"""Index of the root (pelvis) in both lifting formats; targets are relative to it."""
N_RIG_CAMERAS = 4
"""Cameras of the Human3.6M-like rig (ids 0..3)."""
RANDOM_CAMERA_ID = -1
"""Camera id of the random views."""
RIG_AZIMUTH_START_DEG = 45.0
"""Azimuth of rig camera 0 around the capture volume; the others follow every 360/N degrees."""
MIN_CAMERA_DISTANCE_MM = 1500.0
"""Views whose camera is horizontally closer than this to the subject's pelvis are dropped."""
MIN_DEPTH_MM = 100.0
"""Views with a joint less than this in front of the camera are dropped."""
H36M_IMAGE_SIZE_PX = (1000, 1000)
"""(width, height) of the Human3.6M-like cameras (px)."""
H36M_FOCAL_PX = 1145.0
"""Focal length of the Human3.6M-like cameras (px; Human3.6M's are 1145-1150 px)."""
WORLD_UP = (0.0, 1.0, 0.0)
"""Motion worlds are y up (BVH)."""
SPLITS = ('train', 'val', 'test')
_SPLIT_CODES = {'train': 0, 'val': 1, 'test': 2}
INDEX_SHUFFLE_ROUNDS = 4
"""Rounds of the stateless index shuffle (TF's default)."""
PROCEDURAL_TEST_SEED_OFFSET = 7919
"""Procedural test subjects are generated with ``seed + PROCEDURAL_TEST_SEED_OFFSET``."""


def _check_pair(value, name, low, high):
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError) as e:
        raise ValueError(f'{name} must be a (low, high) pair, received {value!r}') from e
    if not low <= a <= b <= high:
        raise ValueError(f'{name} must satisfy {low} <= low <= high <= {high}, received {value!r}')


@dataclasses.dataclass(frozen=True)
class LiftingSpec:
    """How lifting examples are made from motion (lengths in metres, angles in degrees).

    Attributes:
      joints: 'h36m_17' or 'h36m_16'.
      fps: motion frame rate after resampling (CMU is captured at 120 fps; 10-25 keeps sizes
        sensible since neighbouring frames are nearly identical).
      max_frames_per_clip: evenly subsample longer clips to at most this many frames (None: all).
      rig_distance_m, rig_height_m: ranges of the rig cameras' horizontal distance from the
        volume centre and height above the floor (each camera's value is fixed by ``rig_seed``).
      rig_azimuth_jitter_deg: maximum deviation of each rig camera from 45 + 90 k degrees.
      rig_seed: seed of the rig layout (the same rig for every seed and split, like Human3.6M).
      n_random_cameras: random views per frame in the train split.
      eval_random_cameras: random views per frame in the val and test splits (0: rig only, as
        Human3.6M's test protocol).
      random_distance_m, random_height_m: ranges of the random cameras.
      aim_jitter_m: standard deviation of the random cameras' aim point around the pelvis.
      image_size_px: (width, height) of every camera.
      focal_px: focal length of every camera.
      val_fraction: fraction of the training motion's subjects held out for validation.
      procedural_subjects, procedural_clips, procedural_seconds: size of the procedural motion
        used when no motion folder is given.
      h36m_cameras: None (the synthetic rig) or a folder with Human3.6M's ``cameras.json`` /
        ``cameras.pkl``: the rig is then Human3.6M's real cameras (module docstring).
    """

    joints: str = 'h36m_17'
    fps: float = 20.0
    max_frames_per_clip: Optional[int] = None
    rig_distance_m: Tuple[float, float] = (3.5, 5.0)
    rig_height_m: Tuple[float, float] = (1.0, 2.0)
    rig_azimuth_jitter_deg: float = 15.0
    rig_seed: int = 0
    n_random_cameras: int = 1
    eval_random_cameras: int = 0
    random_distance_m: Tuple[float, float] = (2.5, 6.0)
    random_height_m: Tuple[float, float] = (0.3, 2.5)
    aim_jitter_m: float = 0.15
    image_size_px: Tuple[int, int] = H36M_IMAGE_SIZE_PX
    focal_px: float = H36M_FOCAL_PX
    val_fraction: float = 0.25
    procedural_subjects: int = 8
    procedural_clips: int = 4
    procedural_seconds: float = 6.0
    h36m_cameras: Optional[str] = None

    def __post_init__(self):
        if self.joints not in LIFTING_JOINTS:
            raise ValueError(f'joints must be one of {LIFTING_JOINTS}, received {self.joints!r}')
        if not self.fps > 0:
            raise ValueError(f'fps must be > 0, received {self.fps!r}')
        if self.max_frames_per_clip is not None and self.max_frames_per_clip < 1:
            raise ValueError(f'max_frames_per_clip must be None or >= 1, received '
                             f'{self.max_frames_per_clip!r}')
        _check_pair(self.rig_distance_m, 'rig_distance_m', 0.5, 100.0)
        _check_pair(self.rig_height_m, 'rig_height_m', 0.0, 50.0)
        _check_pair(self.random_distance_m, 'random_distance_m', 0.5, 100.0)
        _check_pair(self.random_height_m, 'random_height_m', 0.0, 50.0)
        if not 0 <= self.rig_azimuth_jitter_deg <= 45:
            raise ValueError(f'rig_azimuth_jitter_deg must be in [0, 45], received '
                             f'{self.rig_azimuth_jitter_deg!r}')
        for name in ('n_random_cameras', 'eval_random_cameras', 'rig_seed'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f'{name} must be an int >= 0, received {value!r}')
        if not self.aim_jitter_m >= 0:
            raise ValueError(f'aim_jitter_m must be >= 0, received {self.aim_jitter_m!r}')
        w, h = self.image_size_px
        if not (w > 0 and h > 0):
            raise ValueError(f'image_size_px must be positive (width, height), received '
                             f'{self.image_size_px!r}')
        if not self.focal_px > 0:
            raise ValueError(f'focal_px must be > 0, received {self.focal_px!r}')
        if not 0 < self.val_fraction < 1:
            raise ValueError(f'val_fraction must be in (0, 1), received {self.val_fraction!r}')
        if self.h36m_cameras is not None and not isinstance(self.h36m_cameras, str):
            raise ValueError(f'h36m_cameras must be None or a folder path, received {self.h36m_cameras!r}')

    @property
    def joint_info(self) -> skeletons.JointInfo:
        return skeletons.get(self.joints)

    def intrinsic_matrix(self) -> np.ndarray:
        """[3, 3] intrinsics (px): focal ``focal_px``, principal point at the image centre."""
        w, h = self.image_size_px
        return np.array([[self.focal_px, 0.0, (w - 1) / 2.0],
                         [0.0, self.focal_px, (h - 1) / 2.0],
                         [0.0, 0.0, 1.0]])


@dataclasses.dataclass
class LiftingSet:
    """A set of lifting examples (numpy arrays, first axis = example).

    Attributes:
      inputs: [N, J, 2] float32 normalized screen coordinates (:func:`normalize_screen_coordinates`).
      targets: [N, J, 3] float32 root-relative 3D joints, mm, camera frame (x right, y down,
        z forward).
      camera_ids: [N] int32: rig camera 0..3 (Human3.6M: its camera index), or RANDOM_CAMERA_ID.
      subjects: [N] str subject id of each example.
      clip_ids: [N] int32 index of the example's clip in ``clip_names``.
      frame_ids: [N] int32 frame of the example within its clip (after resampling).
      clip_names: names of the clips (Human3.6M: 'S9/Walking 1').
      joints: skeleton format ('h36m_17' or 'h36m_16').
      description: where the examples came from.
    """

    inputs: np.ndarray
    targets: np.ndarray
    camera_ids: np.ndarray
    subjects: np.ndarray
    clip_ids: np.ndarray
    frame_ids: np.ndarray
    clip_names: List[str]
    joints: str
    description: str = ''

    def __post_init__(self):
        n = len(self.inputs)
        j = skeletons.get(self.joints).n_joints
        if self.inputs.shape != (n, j, 2) or self.targets.shape != (n, j, 3):
            raise ValueError(f'inputs and targets must have shapes [N, {j}, 2] and [N, {j}, 3] for '
                             f'joints={self.joints!r}, received {self.inputs.shape} and '
                             f'{self.targets.shape}')
        for name in ('camera_ids', 'subjects', 'clip_ids', 'frame_ids'):
            if getattr(self, name).shape != (n,):
                raise ValueError(f'{name} must have shape [{n}], received '
                                 f'{getattr(self, name).shape}')

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def joint_info(self) -> skeletons.JointInfo:
        return skeletons.get(self.joints)

    def subset(self, index) -> 'LiftingSet':
        """The examples selected by ``index`` (int array or bool mask)."""
        return dataclasses.replace(
            self, inputs=self.inputs[index], targets=self.targets[index],
            camera_ids=self.camera_ids[index], subjects=self.subjects[index],
            clip_ids=self.clip_ids[index], frame_ids=self.frame_ids[index])

    def summary(self) -> str:
        subjects = sorted(set(self.subjects.tolist()))
        cams = np.unique(self.camera_ids).tolist()
        return (f'{len(self)} examples of {self.joints}, {len(self.clip_names)} clips, subjects '
                f'{subjects}, cameras {cams}')


# ----------------------------------------------------------------------------------------------
# Normalization
# ----------------------------------------------------------------------------------------------

def normalize_screen_coordinates(points_px, width, height):
    """Pixels -> the lifting papers' normalized screen coordinates: ``x / w * 2 - [1, h / w]``.

    The image's x range [0, w] maps to [-1, 1]; y is scaled by the same factor (aspect kept), so
    [0, h] maps to [-h/w, h/w]. Works on numpy arrays and tf tensors (also inside tf.data).

    Args:
      points_px: [..., 2] pixel coordinates (x right, y down).
      width, height: image size in px (> 0).
    Returns:
      [..., 2] normalized coordinates, same type and float dtype as the input.
    """
    if not (float(width) > 0 and float(height) > 0):
        raise ValueError(f'width and height must be > 0 px, received width={width!r}, '
                         f'height={height!r}')
    offset = [1.0, float(height) / float(width)]
    if tf.is_tensor(points_px):
        return points_px / float(width) * 2.0 - tf.constant(offset, points_px.dtype)
    points = np.asarray(points_px)
    dtype = points.dtype if np.issubdtype(points.dtype, np.floating) else np.float64
    return (points / float(width) * 2.0 - np.asarray(offset)).astype(dtype)


def image_coordinates(points_normalized, width, height):
    """Inverse of :func:`normalize_screen_coordinates`: [..., 2] normalized -> pixels."""
    if not (float(width) > 0 and float(height) > 0):
        raise ValueError(f'width and height must be > 0 px, received width={width!r}, '
                         f'height={height!r}')
    offset = [1.0, float(height) / float(width)]
    if tf.is_tensor(points_normalized):
        return (points_normalized + tf.constant(offset, points_normalized.dtype)) * float(width) / 2.0
    points = np.asarray(points_normalized)
    dtype = points.dtype if np.issubdtype(points.dtype, np.floating) else np.float64
    return ((points + np.asarray(offset)) * float(width) / 2.0).astype(dtype)


def root_relative(points, root: int = ROOT_JOINT):
    """[..., J, 3] -> the same with joint ``root`` subtracted from every joint."""
    points = np.asarray(points)
    return points - points[..., root:root + 1, :]


# ----------------------------------------------------------------------------------------------
# Cameras
# ----------------------------------------------------------------------------------------------

def rig_positions(spec: LiftingSpec) -> np.ndarray:
    """[N_RIG_CAMERAS, 3] rig camera positions relative to the capture volume's floor centre (mm).

    World y up: column 1 is the height. Camera k sits at azimuth ``45 + 90 k`` degrees (about
    +y, 0 = +z) plus a fixed jitter, at a fixed distance and height drawn from the spec's ranges
    with ``spec.rig_seed``.
    """
    rng = np.random.default_rng([int(spec.rig_seed), 0x416])
    jitter = rng.uniform(-spec.rig_azimuth_jitter_deg, spec.rig_azimuth_jitter_deg, N_RIG_CAMERAS)
    azimuth = np.deg2rad(RIG_AZIMUTH_START_DEG + 360.0 * np.arange(N_RIG_CAMERAS) / N_RIG_CAMERAS
                         + jitter)
    distance = rng.uniform(*spec.rig_distance_m, N_RIG_CAMERAS) * MM_PER_M
    height = rng.uniform(*spec.rig_height_m, N_RIG_CAMERAS) * MM_PER_M
    return np.stack([distance * np.sin(azimuth), height, distance * np.cos(azimuth)], -1)


def project_views(joints_world, eyes, aims, intrinsic_matrix) -> Tuple[np.ndarray, np.ndarray]:
    """Joints seen by upright pinhole cameras at ``eyes`` looking at ``aims`` (one per frame).

    Args:
      joints_world: [T, J, 3] mm, world frame (y up).
      eyes: [T, 3] camera positions (mm, world); aims: [T, 3] points looked at (mm, world).
      intrinsic_matrix: [3, 3] px.
    Returns:
      (points_px [T, J, 2] pixels, points_cam [T, J, 3] mm camera frame: x right, y down,
      z forward).
    """
    joints_world = np.asarray(joints_world, np.float64)
    rot = geometry.look_at_rotation(eyes, aims, world_up=WORLD_UP)  # [T, 3, 3] world -> cam rows
    points_cam = np.einsum('tij,tkj->tki', rot, joints_world - np.asarray(eyes)[:, None, :])
    camera = geometry.Camera(intrinsic_matrix=intrinsic_matrix)
    return camera.camera_to_image(points_cam), points_cam


def _views_of_clip(joints, spec: LiftingSpec, n_random: int, rng: np.random.Generator,
                   rig: bool = True):
    """Views of one clip by the rig (if ``rig``) and ``n_random`` random cameras: a list of
    (camera id, frame indices, points_px, points_cam)."""
    pelvis = joints[:, ROOT_JOINT]
    n_frames = len(joints)
    xz = pelvis[:, [0, 2]]
    centre = (xz.max(axis=0) + xz.min(axis=0)) / 2.0
    k = spec.intrinsic_matrix()
    views = []

    def add(camera_id, eyes, aims):
        horizontal = np.linalg.norm((pelvis - eyes)[:, [0, 2]], axis=-1)
        idx = np.flatnonzero(horizontal >= MIN_CAMERA_DISTANCE_MM)  # (never looks straight down)
        px, cam = project_views(joints[idx], eyes[idx], aims[idx], k)
        in_front = np.all(cam[..., 2] >= MIN_DEPTH_MM, axis=-1)
        views.append((camera_id, idx[in_front], px[in_front], cam[in_front]))

    for camera_id, offset in enumerate(rig_positions(spec) if rig else []):
        eye = np.array([centre[0] + offset[0], offset[1], centre[1] + offset[2]])
        add(camera_id, np.repeat(eye[None], n_frames, axis=0), pelvis)
    for _ in range(n_random):
        azimuth = rng.uniform(0.0, 2.0 * math.pi, n_frames)
        distance = rng.uniform(*spec.random_distance_m, n_frames) * MM_PER_M
        height = rng.uniform(*spec.random_height_m, n_frames) * MM_PER_M
        eyes = np.stack([pelvis[:, 0] + distance * np.sin(azimuth), height,
                         pelvis[:, 2] + distance * np.cos(azimuth)], -1)
        aims = pelvis + rng.normal(0.0, spec.aim_jitter_m * MM_PER_M, (n_frames, 3))
        add(RANDOM_CAMERA_ID, eyes, aims)
    return views


# ----------------------------------------------------------------------------------------------
# Real Human3.6M cameras
# ----------------------------------------------------------------------------------------------

H36M_SUBJECTS = {'train': ('S1', 'S5', 'S6', 'S7', 'S8'), 'val': ('S1', 'S5', 'S6', 'S7', 'S8'),
                 'test': ('S9', 'S11')}
"""Whose cameras see each split (Human3.6M's protocol: training subjects' for train and val)."""
Y_UP_TO_Z_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
"""Rotation from the motion world (y up, BVH) to Human3.6M's world (z up): (x, y, z) -> (x, -z, y)."""


def h36m_rigs(root: str, subjects: Optional[Sequence[str]] = None) -> Dict[str, List[dict]]:
    """Human3.6M's real cameras per subject, from ``cameras.json`` (or ``cameras.pkl``) in ``root``.

    Args:
      root: folder of the camera file (:func:`posekit.data.adapters.h36m.load_cameras`).
      subjects: subjects to return (default: every subject in the file).
    Returns:
      {subject: [4 cameras sorted by camera id]}, each a dict with 'name' ('S1/54138969'),
      'R' [3, 3] world -> camera, 'T' [3] camera centre (mm, world z up), 'K' [3, 3] px,
      'distortion' [5] OpenCV (k1, k2, p1, p2, k3), 'size' (width, height) px.
    Raises:
      FileNotFoundError: no camera file in ``root``; ValueError: a requested subject is missing
      or a camera lacks its image size.
    """
    from posekit.data.adapters import h36m as h36m_adapter
    cameras = h36m_adapter.load_cameras(root)
    rigs: Dict[str, List[dict]] = {}
    for name in sorted(cameras, key=lambda k: (k.split('/')[0], k.split('/')[-1])):
        cam = cameras[name]
        if 'size' not in cam:
            raise ValueError(f'{root}: camera {name!r} has no image size (w, h)')
        rigs.setdefault(name.split('/')[0], []).append(dict(cam, name=name))
    if subjects is None:
        return rigs
    missing = [s for s in subjects if s not in rigs]
    if missing:
        raise ValueError(f'{root}: the camera file has no cameras of subjects {missing} '
                         f'(it has {sorted(rigs)})')
    return {s: rigs[s] for s in subjects}


def look_at_point(cameras: Sequence[dict]) -> np.ndarray:
    """[3] world point (mm) closest, in least squares, to the optical axes of ``cameras``."""
    lhs, rhs = np.zeros((3, 3)), np.zeros(3)
    for cam in cameras:
        axis = np.asarray(cam['R'])[2]  # camera z in world coordinates
        proj = np.eye(3) - np.outer(axis, axis)
        lhs += proj
        rhs += proj @ np.asarray(cam['T'], np.float64)
    return np.linalg.solve(lhs, rhs)


def place_in_h36m_volume(joints, cameras: Sequence[dict]) -> np.ndarray:
    """Motion joints (mm, world y up, floor y = 0) -> Human3.6M's world (z up, floor z = 0) with
    the clip's pelvis centre (middle of its horizontal range) under the cameras' look-at point.

    Args:
      joints: [T, J, 3] mm, world y up.
      cameras: the cameras whose common look-at point is the target (:func:`look_at_point`).
    Returns:
      [T, J, 3] float64 mm, world z up.
    """
    world = np.asarray(joints, np.float64) @ Y_UP_TO_Z_UP.T
    pelvis_xy = world[:, ROOT_JOINT, :2]
    centre = (pelvis_xy.max(axis=0) + pelvis_xy.min(axis=0)) / 2.0
    shift = np.zeros(3)
    shift[:2] = look_at_point(cameras)[:2] - centre
    return world + shift


def project_real(joints_world, camera: dict) -> Tuple[np.ndarray, np.ndarray]:
    """Joints seen by a real (distorting) camera: (points_px [T, J, 2], points_cam [T, J, 3] mm)."""
    cam = geometry.Camera(optical_center=camera['T'], rot_world_to_cam=camera['R'],
                          intrinsic_matrix=camera['K'], distortion_coeffs=camera['distortion'],
                          world_up=(0.0, 0.0, 1.0))
    points_cam = cam.world_to_camera(joints_world)
    return cam.camera_to_image(points_cam), points_cam


def _real_views_of_clip(joints, rig: Sequence[dict]):
    """Views of one clip (y-up motion) by a subject's real cameras: (camera id, frames, px, cam, size)."""
    world = place_in_h36m_volume(joints, rig)
    views = []
    for camera_id, camera in enumerate(rig):
        px, cam = project_real(world, camera)
        w, h = camera['size']
        with np.errstate(invalid='ignore'):
            ok = (np.all(cam[..., 2] >= MIN_DEPTH_MM, axis=-1)
                  & np.all((px >= 0) & (px <= [w, h]), axis=(-1, -2)))
        idx = np.flatnonzero(ok)
        views.append((camera_id, idx, px[idx], cam[idx], (w, h)))
    return views


# ----------------------------------------------------------------------------------------------
# Sets
# ----------------------------------------------------------------------------------------------

def make_lifting_set(clips: Sequence[mocap.Clip], spec: LiftingSpec = LiftingSpec(),
                     split: str = 'train', seed: int = 0, description: str = '') -> LiftingSet:
    """Lifting examples from motion clips: every frame seen by every rig camera plus random views.

    Args:
      clips: motion clips (cmu_31 / cmu_daz_43 / procedural skeletons; mm, world y up).
      spec: how to make the examples.
      split: 'train' (``spec.n_random_cameras`` random views per frame) or 'val'/'test'
        (``spec.eval_random_cameras``); also keys the random cameras.
      seed: random cameras are a pure function of (seed, split, clip index).
      description: stored in the set.
    Returns:
      :class:`LiftingSet`, examples ordered by clip, then camera, then frame.
    """
    if split not in SPLITS:
        raise ValueError(f'split must be one of {SPLITS}, received {split!r}')
    if not clips:
        raise ValueError('clips must not be empty')
    n_random = spec.n_random_cameras if split == 'train' else spec.eval_random_cameras
    ji = spec.joint_info
    rigs = None
    if spec.h36m_cameras is not None:
        rigs = list(h36m_rigs(spec.h36m_cameras, H36M_SUBJECTS[split]).values())
        description = (f'{description}; ' if description else '') + (
            f'Human3.6M cameras of {", ".join(H36M_SUBJECTS[split])} ({spec.h36m_cameras})')
    parts = {key: [] for key in ('inputs', 'targets', 'camera_ids', 'subjects', 'clip_ids',
                                 'frame_ids')}
    for clip_id, clip in enumerate(clips):
        joints = bodies.format_joints(clip.motion, spec.joints, subject=clip.subject)
        rng = np.random.default_rng([int(seed), _SPLIT_CODES[split], clip_id])
        views = [view + (spec.image_size_px,) for view in _views_of_clip(
            joints, spec, n_random, rng, rig=rigs is None)]
        if rigs is not None:
            views = _real_views_of_clip(joints, rigs[clip_id % len(rigs)]) + views
        for camera_id, idx, px, cam, size in views:
            parts['inputs'].append(normalize_screen_coordinates(px, *size))
            parts['targets'].append(root_relative(cam))
            parts['camera_ids'].append(np.full(len(idx), camera_id, np.int32))
            parts['subjects'].append(np.full(len(idx), clip.subject))
            parts['clip_ids'].append(np.full(len(idx), clip_id, np.int32))
            parts['frame_ids'].append(idx.astype(np.int32))
    arrays = {key: np.concatenate(value) for key, value in parts.items()}
    return LiftingSet(
        inputs=arrays['inputs'].astype(np.float32).reshape(-1, ji.n_joints, 2),
        targets=arrays['targets'].astype(np.float32).reshape(-1, ji.n_joints, 3),
        camera_ids=arrays['camera_ids'], subjects=arrays['subjects'].astype(str),
        clip_ids=arrays['clip_ids'], frame_ids=arrays['frame_ids'],
        clip_names=[c.name for c in clips], joints=spec.joints, description=description)


def _renamed(clips: Sequence[mocap.Clip], prefix: str) -> List[mocap.Clip]:
    return [mocap.Clip(prefix + c.subject[1:], prefix + c.name[1:], c.motion) for c in clips]


def lifting_splits(mocap_dir: Optional[str] = None, test_mocap_dir: Optional[str] = None,
                   spec: LiftingSpec = LiftingSpec(), seed: int = 0) -> Dict[str, LiftingSet]:
    """Subject-wise train / val (/ test) lifting sets.

    Args:
      mocap_dir: folder of BVH training motion (e.g. ``../shared/data/cmu_mocap``); None uses
        procedural motion (``spec.procedural_*``).
      test_mocap_dir: folder of BVH motion used whole as the test set (e.g.
        ``../shared/data/cmu_mocap_test``); never mixed into train or val.
      spec: how to make the examples.
      seed: chooses the val subjects (``mocap.split_by_subject`` with ``spec.val_fraction``) and
        the random cameras.
    Returns:
      dict with 'train' and 'val' sets, and 'test' when ``test_mocap_dir`` is given or the motion
      is procedural (then test = procedural subjects of seed ``seed + PROCEDURAL_TEST_SEED_OFFSET``,
      ids 't..'). Real motion without a test folder has no 'test' key.
    """
    load = dict(fps=spec.fps, max_frames_per_clip=spec.max_frames_per_clip)
    procedural = dict(n_subjects=spec.procedural_subjects, clips_per_subject=spec.procedural_clips,
                      seconds=spec.procedural_seconds, fps=spec.fps)
    if mocap_dir:
        clips = mocap.load_mocap_folder(mocap_dir, **load)
        source = f'mocap:{mocap_dir}'
    else:
        clips = mocap.procedural_motions(seed=seed, **procedural)
        source = f'procedural(seed={seed})'
    train, val = mocap.split_by_subject(clips, test_fraction=spec.val_fraction, seed=seed)
    val_subjects = sorted({c.subject for c in val})
    sets = {
        'train': make_lifting_set(train, spec, 'train', seed,
                                  f'{source} train subjects (val subjects {val_subjects} held out)'),
        'val': make_lifting_set(val, spec, 'val', seed, f'{source} val subjects {val_subjects}'),
    }
    if test_mocap_dir:
        test = mocap.load_mocap_folder(test_mocap_dir, **load)
        sets['test'] = make_lifting_set(test, spec, 'test', seed, f'mocap:{test_mocap_dir} (all)')
    elif not mocap_dir:
        test_seed = seed + PROCEDURAL_TEST_SEED_OFFSET
        test = _renamed(mocap.procedural_motions(seed=test_seed, **{
            **procedural, 'n_subjects': max(2, spec.procedural_subjects // 4)}), 't')
        sets['test'] = make_lifting_set(test, spec, 'test', seed,
                                        f'procedural(seed={test_seed}) test subjects')
    return sets


# ----------------------------------------------------------------------------------------------
# tf.data
# ----------------------------------------------------------------------------------------------

def batch_indices(n_examples: int, batch_size: int, seed: int, step):
    """Example indices of batch ``step`` of the shuffled stream (int64 tensor [batch_size]).

    The stream visits the examples in epochs: position ``p = step * batch_size + i`` is example
    ``RandomIndexShuffle(p % n, key=(seed, p // n, 0))``, a fresh permutation per epoch. A pure function
    of (n_examples, batch_size, seed, step); usable eagerly and inside tf.data / tf.function.
    """
    n = _check_int('n_examples', n_examples, 1)
    b = _check_int('batch_size', batch_size, 1)
    seed = _check_int('seed', seed, 0)
    step = tf.cast(step, tf.int64)
    position = step * b + tf.range(b, dtype=tf.int64)
    epoch = position // n
    # One Philox key per example: (seed, epoch, 0). The raw op takes [b, 3] keys directly
    # (tf.random.experimental.index_shuffle mis-pads batched [b, 2] seeds in TF 2.21).
    keys = tf.stack([tf.fill([b], tf.constant(seed, tf.int64)), epoch,
                     tf.zeros([b], tf.int64)], axis=1)
    return tf.raw_ops.RandomIndexShuffle(index=position % n, seed=keys,
                                         max_index=tf.constant(n - 1, tf.int64),
                                         rounds=INDEX_SHUFFLE_ROUNDS)


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f'{name} must be an int >= {minimum}, received {value!r}')
    return int(value)


def lifting_dataset(lifting_set: LiftingSet, batch_size: int, seed: int = 0,
                    start_step: int = 0) -> tf.data.Dataset:
    """Endless shuffled batches ``(inputs [B, J, 2], targets [B, J, 3] mm)``, float32.

    Batch k (the k-th element of ``lifting_dataset(..., start_step=0)``) is a pure function of
    (the set, batch_size, seed, k) — see :func:`batch_indices` — and ``start_step=s`` yields
    batches s, s + 1, ...: the ``dataset_fn(start_step)`` contract of
    :func:`posekit.train.loop.train`.
    """
    n = len(lifting_set)
    if n == 0:
        raise ValueError('lifting_set must not be empty')
    _check_int('batch_size', batch_size, 1)
    _check_int('seed', seed, 0)
    start_step = _check_int('start_step', start_step, 0)
    inputs = tf.constant(lifting_set.inputs, tf.float32)
    targets = tf.constant(lifting_set.targets, tf.float32)

    def make_batch(step):
        idx = batch_indices(n, batch_size, seed, step)
        return tf.gather(inputs, idx), tf.gather(targets, idx)

    steps = tf.data.Dataset.range(start_step, np.iinfo(np.int64).max)
    return steps.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE,
                     deterministic=True).prefetch(tf.data.AUTOTUNE)
