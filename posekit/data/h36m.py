"""Human3.6M in the common npz layout (VideoPose3D's ``prepare_data_h36m.py``) as lifting sets.

For users who have Human3.6M (it is not distributed with posekit). Expected files in ``data_dir``:

* ``data_3d_h36m.npz``: ``positions_3d``, a pickled dict subject -> action -> [T, 32, 3] float
  joint positions in **metres**, Human3.6M's world frame (z up).
* ``data_2d_h36m_<keypoints>.npz`` (``gt``, ``cpn_ft_h36m_dbb``, ``detectron_ft_h36m``, ...):
  ``positions_2d``, a dict subject -> action -> list of 4 arrays [T, 17, 2] in **pixels** (one per
  camera, in ``CAMERA_IDS`` order, 17 joints in the h36m_17 order), and ``metadata`` with
  ``layout_name`` 'h36m' and ``num_joints`` 17.

Both files hold pickled Python objects (loaded with ``allow_pickle=True``): only open files you
trust. :func:`h36m_splits` turns them into :class:`posekit.data.lifting.LiftingSet` s exactly like
the sets made from motion capture: inputs are the 2D keypoints normalized by each camera's image
width (``x / w * 2 - [1, h / w]``), targets the 3D joints (32 -> 17 selection ``H36M_32_TO_17``)
in mm, root-relative, in the camera frame; train subjects S1, S5, S6, S7, S8 and test subjects
S9, S11 (the standard protocol), 4 cameras per frame.

Cameras. The targets need each camera's rotation (per subject: the rig was re-calibrated).
``H36M_INTRINSICS`` holds the 4 cameras' resolution, focal length and principal point as
published with the dataset and reproduced in VideoPose3D's ``common/h36m_dataset.py``; they
are written here from memory and have not been checked against the dataset in this repository
(the residual reported by :func:`estimate_cameras` exposes a mismatch). The extrinsics are NOT
built in: they are read from a user's cameras file (:func:`load_cameras_file`, JSON, e.g. made
from VideoPose3D's table) or, without one, estimated per subject and camera from the 2D-3D
correspondences of the data itself by PnP (:func:`estimate_cameras`; with ground-truth 2D the
rotation is recovered to a small fraction of a degree, i.e. a small fraction of a mm in the
targets; the lens distortion is ignored by the fit).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from posekit import geometry, skeletons
from posekit.data import lifting

logger = logging.getLogger(__name__)

MM_PER_M = lifting.MM_PER_M
FILE_3D = 'data_3d_h36m.npz'
FILE_2D_PATTERN = 'data_2d_h36m_{}.npz'
GT_KEYPOINTS = 'gt'
H36M_TRAIN_SUBJECTS = ('S1', 'S5', 'S6', 'S7', 'S8')
H36M_TEST_SUBJECTS = ('S9', 'S11')
CAMERA_IDS = ('54138969', '55011271', '58860488', '60457274')
"""Human3.6M camera ids in the order of ``positions_2d``' per-camera lists."""
N_JOINTS_32 = 32
N_JOINTS_17 = 17
H36M_32_TO_17 = (0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 15, 17, 18, 19, 25, 26, 27)
"""Indices of the h36m_17 joints among Human3.6M's 32 (VideoPose3D's ``remove_joints``)."""
NOSE_INDEX = 9
"""Index of the nose in h36m_17; h36m_16 drops it."""
H36M_LAYOUT = 'h36m'

H36M_INTRINSICS: Dict[str, Dict[str, object]] = {
    # Written from memory of the published calibration (as in VideoPose3D); see the module docstring.
    '54138969': dict(res_w=1000, res_h=1002, focal_length=(1145.0494384765625, 1143.7811279296875),
                     center=(512.54150390625, 515.4514770507812)),
    '55011271': dict(res_w=1000, res_h=1000, focal_length=(1149.6756591796875, 1147.5916748046875),
                     center=(508.8486328125, 508.0649108886719)),
    '58860488': dict(res_w=1000, res_h=1000, focal_length=(1149.1407470703125, 1148.7989501953125),
                     center=(519.8158569335938, 501.40264892578125)),
    '60457274': dict(res_w=1000, res_h=1002, focal_length=(1145.5113525390625, 1144.77392578125),
                     center=(514.9682006835938, 501.88201904296875)),
}
MAX_PNP_FRAMES = 2000
"""Frames (evenly spread over a subject's actions) used to fit one camera's extrinsics."""
PNP_WARN_RMS_PX = 5.0
"""A PnP fit on ground-truth 2D with a larger RMS reprojection error is reported as suspicious."""


class H36MFormatError(ValueError):
    """A Human3.6M npz or cameras file does not have the expected layout."""


@dataclasses.dataclass(frozen=True)
class H36MCamera:
    """One calibrated Human3.6M camera of one subject.

    Attributes:
      camera: world (mm, Human3.6M's z-up frame) to image (px) camera, no distortion.
      width, height: image size (px), used to normalize the 2D inputs.
      camera_id: e.g. '54138969'.
      rms_px: RMS reprojection error of the PnP fit that produced it (None if from a file).
    """

    camera: geometry.Camera
    width: int
    height: int
    camera_id: str
    rms_px: Optional[float] = None


# ----------------------------------------------------------------------------------------------
# npz files
# ----------------------------------------------------------------------------------------------

def _load_pickled(path: str, key: str):
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f'{path} not found: expected Human3.6M in the common npz layout ({FILE_3D} and '
            f'{FILE_2D_PATTERN.format("<keypoints>")}, as written by VideoPose3D\'s '
            'prepare_data_h36m.py)')
    with np.load(path, allow_pickle=True) as f:
        if key not in f.files:
            raise H36MFormatError(f'{path} has no {key!r} array; it holds {sorted(f.files)}')
        value = f[key]
    if value.dtype != object or value.shape != ():
        raise H36MFormatError(f'{path}: {key!r} must be a pickled dict (0-d object array), '
                              f'received an array of shape {value.shape} and dtype {value.dtype}')
    return value.item()


def load_positions_3d(path: str) -> Dict[str, Dict[str, np.ndarray]]:
    """``positions_3d`` of ``data_3d_h36m.npz``: subject -> action -> [T, 32, 3] float64 metres."""
    data = _load_pickled(path, 'positions_3d')
    if not isinstance(data, Mapping):
        raise H36MFormatError(f'{path}: positions_3d must be a dict subject -> action -> array, '
                              f'received {type(data).__name__}')
    out = {}
    for subject, actions in data.items():
        out[subject] = {}
        for action, positions in actions.items():
            positions = np.asarray(positions, np.float64)
            if positions.ndim != 3 or positions.shape[1:] != (N_JOINTS_32, 3):
                raise H36MFormatError(f'{path}: positions_3d[{subject!r}][{action!r}] must have '
                                      f'shape [T, {N_JOINTS_32}, 3], received {positions.shape}')
            out[subject][action] = positions
    return out


def load_positions_2d(path: str):
    """(``positions_2d``, ``metadata``) of a ``data_2d_h36m_*.npz`` file.

    Returns:
      positions: subject -> action -> list of 4 float64 arrays [T, 17, 2] (px), one per camera
      in ``CAMERA_IDS`` order; metadata: the file's metadata dict.
    Raises:
      H36MFormatError: if the layout is not the 17-joint h36m one or the arrays are misshapen.
    """
    data = _load_pickled(path, 'positions_2d')
    metadata = _load_pickled(path, 'metadata')
    if not isinstance(metadata, Mapping):
        raise H36MFormatError(f'{path}: metadata must be a dict, received {type(metadata).__name__}')
    layout, n_joints = metadata.get('layout_name'), metadata.get('num_joints')
    if layout != H36M_LAYOUT or n_joints != N_JOINTS_17:
        raise H36MFormatError(f'{path}: expected 2D keypoints in the {H36M_LAYOUT!r} layout with '
                              f'{N_JOINTS_17} joints, received layout_name={layout!r}, '
                              f'num_joints={n_joints!r}')
    out = {}
    for subject, actions in data.items():
        out[subject] = {}
        for action, per_camera in actions.items():
            if len(per_camera) != len(CAMERA_IDS):
                raise H36MFormatError(f'{path}: positions_2d[{subject!r}][{action!r}] must be a '
                                      f'list of {len(CAMERA_IDS)} cameras, received '
                                      f'{len(per_camera)}')
            arrays = []
            for c, kp in enumerate(per_camera):
                kp = np.asarray(kp, np.float64)
                if kp.ndim != 3 or kp.shape[1:] != (N_JOINTS_17, 2):
                    raise H36MFormatError(f'{path}: positions_2d[{subject!r}][{action!r}][{c}] '
                                          f'must have shape [T, {N_JOINTS_17}, 2], received '
                                          f'{kp.shape}')
                arrays.append(kp)
            out[subject][action] = arrays
    return out, dict(metadata)


def _lookup(mapping, subject, action, what, path):
    if subject not in mapping:
        raise H36MFormatError(f'{path}: {what} has no subject {subject!r}; it has '
                              f'{sorted(mapping)}')
    if action is not None and action not in mapping[subject]:
        raise H36MFormatError(f'{path}: {what}[{subject!r}] has no action {action!r}; it has '
                              f'{sorted(mapping[subject])}')
    return mapping[subject] if action is None else mapping[subject][action]


# ----------------------------------------------------------------------------------------------
# Cameras
# ----------------------------------------------------------------------------------------------

def quaternion_to_matrix(q) -> np.ndarray:
    """[4] unit quaternion (w, x, y, z) -> [3, 3] rotation matrix R with ``R @ v`` = q v q*."""
    q = np.asarray(q, np.float64)
    if q.shape != (4,) or not np.all(np.isfinite(q)) or np.linalg.norm(q) == 0:
        raise ValueError(f'q must be a finite non-zero quaternion (w, x, y, z), received {q.tolist()}')
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def intrinsic_matrix(intrinsics: Mapping[str, object]) -> np.ndarray:
    """[3, 3] intrinsic matrix (px) from a dict with ``focal_length`` (fx, fy) and ``center``."""
    fx, fy = intrinsics['focal_length']
    cx, cy = intrinsics['center']
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], np.float64)


def load_cameras_file(path: str) -> Dict[str, List[H36MCamera]]:
    """Reads a cameras JSON file: subject -> list of 4 :class:`H36MCamera` in ``CAMERA_IDS`` order.

    Layout (VideoPose3D's parameter names)::

      {"intrinsics": {"54138969": {"res_w": 1000, "res_h": 1002, "focal_length": [fx, fy],
                                   "center": [cx, cy]}, ...},          # optional: H36M_INTRINSICS
       "extrinsics": {"S1": {"54138969": {"orientation": [w, x, y, z], "translation": [x, y, z]},
                             ...}, ...}}

    ``orientation`` is the camera-to-world rotation quaternion and ``translation`` the camera
    position in the world (mm), as in VideoPose3D's table; instead of ``orientation`` an entry may
    give ``rot_world_to_cam`` ([3, 3], rows = camera axes in world coordinates), as written by
    :func:`save_cameras_file`.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f'cameras file {path} not found')
    with open(path, encoding='utf-8') as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise H36MFormatError(f'cameras file {path} is not valid JSON: {e}') from e
    if not isinstance(data, Mapping) or 'extrinsics' not in data:
        raise H36MFormatError(f'cameras file {path} must be a JSON object with an "extrinsics" '
                              f'entry (and optionally "intrinsics")')
    intrinsics = {**H36M_INTRINSICS, **data.get('intrinsics', {})}
    cameras = {}
    for subject, per_camera in data['extrinsics'].items():
        cameras[subject] = []
        for camera_id in CAMERA_IDS:
            if camera_id not in per_camera:
                raise H36MFormatError(f'cameras file {path}: extrinsics[{subject!r}] has no camera '
                                      f'{camera_id!r}; it has {sorted(per_camera)}')
            entry = per_camera[camera_id]
            if 'rot_world_to_cam' in entry:
                rot = np.asarray(entry['rot_world_to_cam'], np.float64)
            elif 'orientation' in entry:
                rot = quaternion_to_matrix(entry['orientation']).T
            else:
                raise H36MFormatError(f'cameras file {path}: extrinsics[{subject!r}][{camera_id!r}] '
                                      f'needs "orientation" or "rot_world_to_cam"')
            if 'translation' not in entry:
                raise H36MFormatError(f'cameras file {path}: extrinsics[{subject!r}][{camera_id!r}] '
                                      f'needs "translation" (camera position, mm)')
            intr = intrinsics[camera_id]
            camera = geometry.Camera(optical_center=entry['translation'], rot_world_to_cam=rot,
                                     intrinsic_matrix=intrinsic_matrix(intr), world_up=(0, 0, 1))
            cameras[subject].append(H36MCamera(camera, int(intr['res_w']), int(intr['res_h']),
                                               camera_id))
    return cameras


def save_cameras_file(path: str, cameras: Mapping[str, Sequence[H36MCamera]]) -> None:
    """Writes cameras (e.g. from :func:`estimate_cameras`) in the :func:`load_cameras_file` layout."""
    intrinsics, extrinsics = {}, {}
    for subject, per_camera in cameras.items():
        extrinsics[subject] = {}
        for c in per_camera:
            k = c.camera.intrinsic_matrix
            intrinsics[c.camera_id] = dict(res_w=c.width, res_h=c.height,
                                           focal_length=[k[0, 0], k[1, 1]], center=[k[0, 2], k[1, 2]])
            extrinsics[subject][c.camera_id] = dict(
                rot_world_to_cam=c.camera.rot_world_to_cam.tolist(),
                translation=c.camera.optical_center.tolist())
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(dict(intrinsics=intrinsics, extrinsics=extrinsics), f, indent=1)


def estimate_extrinsics(points_world, points_px, intrinsic_matrix_px):
    """Camera pose from 2D-3D correspondences (PnP, no distortion).

    Args:
      points_world: [N, 3] world points (mm); points_px: [N, 2] their images (px);
      intrinsic_matrix_px: [3, 3].
    Returns:
      (rot_world_to_cam [3, 3], optical_center [3] mm, rms reprojection error px).
    """
    import cv2  # only needed here

    world = np.asarray(points_world, np.float64).reshape(-1, 3)
    px = np.asarray(points_px, np.float64).reshape(-1, 2)
    if len(world) != len(px) or len(world) < 6:
        raise ValueError(f'points_world and points_px must hold the same number (>= 6) of points, '
                         f'received {len(world)} and {len(px)}')
    ok = np.all(np.isfinite(world), axis=1) & np.all(np.isfinite(px), axis=1)
    world, px = world[ok], px[ok]
    k = np.asarray(intrinsic_matrix_px, np.float64)
    success, rvec, tvec = cv2.solvePnP(world, px, k, None, flags=cv2.SOLVEPNP_EPNP)
    if not success:
        raise ValueError('PnP failed: the 2D and 3D points do not determine a camera')
    success, rvec, tvec = cv2.solvePnP(world, px, k, None, rvec, tvec, useExtrinsicGuess=True,
                                       flags=cv2.SOLVEPNP_ITERATIVE)
    rot = cv2.Rodrigues(rvec)[0]
    center = -rot.T @ tvec.reshape(3)
    camera = geometry.Camera(center, rot, k)
    rms = float(np.sqrt(np.mean(np.sum((camera.world_to_image(world) - px) ** 2, axis=-1))))
    return rot, center, rms


def estimate_cameras(positions_3d, positions_2d, subjects: Sequence[str],
                     intrinsics: Mapping[str, Mapping[str, object]] = H36M_INTRINSICS,
                     max_frames: int = MAX_PNP_FRAMES) -> Dict[str, List[H36MCamera]]:
    """Per-subject extrinsics fitted by PnP to the data's own 2D-3D correspondences.

    Args:
      positions_3d: as returned by :func:`load_positions_3d` (metres, 32 joints).
      positions_2d: as returned by :func:`load_positions_2d` (px, 17 joints); ground truth gives
        the best fit, detections work too (more frames average out their noise).
      subjects: subjects to fit.
      intrinsics: camera id -> dict(res_w, res_h, focal_length, center).
      max_frames: frames per camera, evenly spread over the subject's actions.
    Returns:
      subject -> list of 4 :class:`H36MCamera` (``rms_px`` set) in ``CAMERA_IDS`` order.
    """
    cameras = {}
    for subject in subjects:
        actions = sorted(_lookup(positions_3d, subject, None, 'positions_3d', FILE_3D))
        cameras[subject] = []
        for c, camera_id in enumerate(CAMERA_IDS):
            world, px = [], []
            for action in actions:
                w = positions_3d[subject][action][:, H36M_32_TO_17] * MM_PER_M
                p = _lookup(positions_2d, subject, action, 'positions_2d', 'the 2D file')[c]
                n = min(len(w), len(p))
                world.append(w[:n])
                px.append(p[:n])
            world, px = np.concatenate(world), np.concatenate(px)
            idx = np.unique(np.linspace(0, len(world) - 1, min(max_frames, len(world))).round()
                            .astype(int))
            k = intrinsic_matrix(intrinsics[camera_id])
            rot, center, rms = estimate_extrinsics(world[idx], px[idx], k)
            if rms > PNP_WARN_RMS_PX:
                logger.warning('camera %s of %s: PnP reprojection RMS %.1f px (> %.1f px): noisy 2D '
                               'or intrinsics that do not match the data', camera_id, subject, rms,
                               PNP_WARN_RMS_PX)
            camera = geometry.Camera(center, rot, k, world_up=(0, 0, 1))
            cameras[subject].append(H36MCamera(camera, int(intrinsics[camera_id]['res_w']),
                                               int(intrinsics[camera_id]['res_h']), camera_id, rms))
    return cameras


# ----------------------------------------------------------------------------------------------
# Lifting sets
# ----------------------------------------------------------------------------------------------

def make_h36m_set(positions_3d, positions_2d, cameras: Mapping[str, Sequence[H36MCamera]],
                  subjects: Sequence[str], joints: str = 'h36m_17', frame_step: int = 1,
                  description: str = '') -> lifting.LiftingSet:
    """A :class:`LiftingSet` of every action of ``subjects`` seen by the 4 cameras.

    Args:
      positions_3d, positions_2d: as returned by the loaders; positions_2d's actions define what
        is used (each must exist in positions_3d). The 2D and 3D sequences are cut to the shorter
        length (detections may have a few frames more, as VideoPose3D does).
      cameras: subject -> 4 :class:`H36MCamera`.
      joints: 'h36m_17' or 'h36m_16' (drops the nose).
      frame_step: keep every ``frame_step``-th frame (Human3.6M is 50 fps).
    Returns:
      inputs = normalized 2D, targets = root-relative 3D in mm, camera frame; camera_ids 0..3,
      clip names 'S9/Walking 1'.
    """
    if joints not in lifting.LIFTING_JOINTS:
        raise ValueError(f'joints must be one of {lifting.LIFTING_JOINTS}, received {joints!r}')
    if isinstance(frame_step, bool) or not isinstance(frame_step, (int, np.integer)) or frame_step < 1:
        raise ValueError(f'frame_step must be an int >= 1, received {frame_step!r}')
    keep = [j for j in range(N_JOINTS_17) if joints == 'h36m_17' or j != NOSE_INDEX]
    parts = {key: [] for key in ('inputs', 'targets', 'camera_ids', 'subjects', 'clip_ids',
                                 'frame_ids')}
    clip_names = []
    for subject in subjects:
        actions_2d = _lookup(positions_2d, subject, None, 'positions_2d', 'the 2D file')
        if subject not in cameras:
            raise H36MFormatError(f'no cameras for subject {subject!r}; cameras are given for '
                                  f'{sorted(cameras)}')
        for action in sorted(actions_2d):
            world = _lookup(positions_3d, subject, action, 'positions_3d', FILE_3D)
            world = world[:, H36M_32_TO_17] * MM_PER_M
            clip_id = len(clip_names)
            clip_names.append(f'{subject}/{action}')
            for c, cam in enumerate(cameras[subject]):
                kp = actions_2d[action][c]
                n = min(len(world), len(kp))
                frames = np.arange(0, n, frame_step)
                targets = lifting.root_relative(cam.camera.world_to_camera(world[frames]))
                inputs = lifting.normalize_screen_coordinates(kp[frames], cam.width, cam.height)
                parts['inputs'].append(inputs[:, keep])
                parts['targets'].append(targets[:, keep])
                parts['camera_ids'].append(np.full(len(frames), c, np.int32))
                parts['subjects'].append(np.full(len(frames), subject))
                parts['clip_ids'].append(np.full(len(frames), clip_id, np.int32))
                parts['frame_ids'].append(frames.astype(np.int32))
    if not clip_names:
        raise H36MFormatError(f'no actions found for subjects {list(subjects)}')
    arrays = {key: np.concatenate(value) for key, value in parts.items()}
    n_joints = skeletons.get(joints).n_joints
    return lifting.LiftingSet(
        inputs=arrays['inputs'].astype(np.float32).reshape(-1, n_joints, 2),
        targets=arrays['targets'].astype(np.float32).reshape(-1, n_joints, 3),
        camera_ids=arrays['camera_ids'], subjects=arrays['subjects'].astype(str),
        clip_ids=arrays['clip_ids'], frame_ids=arrays['frame_ids'], clip_names=clip_names,
        joints=joints, description=description)


def h36m_splits(data_dir: str, keypoints: str = GT_KEYPOINTS, joints: str = 'h36m_17',
                train_subjects: Sequence[str] = H36M_TRAIN_SUBJECTS,
                test_subjects: Sequence[str] = H36M_TEST_SUBJECTS,
                val_subjects: Sequence[str] = (), frame_step: int = 1, test_frame_step: int = 1,
                cameras_file: Optional[str] = None) -> Dict[str, lifting.LiftingSet]:
    """Human3.6M lifting sets: 'train', 'test' and (if ``val_subjects``) 'val'.

    Args:
      data_dir: folder with ``data_3d_h36m.npz`` and ``data_2d_h36m_<keypoints>.npz``.
      keypoints: 2D source: 'gt' (Table 3 of Liu et al. uses ground-truth 2D) or a detection file
        suffix such as 'cpn_ft_h36m_dbb'.
      joints: 'h36m_17' or 'h36m_16'.
      train_subjects, test_subjects: the standard protocol by default (S1 S5 S6 S7 S8 / S9 S11).
      val_subjects: training subjects held out for validation (removed from train); () = none,
        as in the paper's protocol.
      frame_step, test_frame_step: keep every n-th frame of the train(/val) and test subjects.
      cameras_file: JSON cameras (:func:`load_cameras_file`); None fits the extrinsics by PnP
        (:func:`estimate_cameras`) on the ground-truth 2D file if present, else on ``keypoints``.
    Returns:
      dict of :class:`LiftingSet`.
    Raises:
      FileNotFoundError: a missing file; H36MFormatError: missing keys, subjects or actions.
    """
    unknown = set(val_subjects) - set(train_subjects)
    if unknown:
        raise ValueError(f'val_subjects must be among train_subjects {list(train_subjects)}, '
                         f'received {list(val_subjects)}')
    path_3d = os.path.join(data_dir, FILE_3D)
    path_2d = os.path.join(data_dir, FILE_2D_PATTERN.format(keypoints))
    positions_3d = load_positions_3d(path_3d)
    positions_2d, _ = load_positions_2d(path_2d)
    all_subjects = list(train_subjects) + list(test_subjects)
    for path, data, what in ((path_3d, positions_3d, 'positions_3d'),
                             (path_2d, positions_2d, 'positions_2d')):
        missing = [s for s in all_subjects if s not in data]
        if missing:
            raise H36MFormatError(f'{path}: {what} has no subjects {missing}; it has '
                                  f'{sorted(data)}')
    if cameras_file:
        cameras = load_cameras_file(cameras_file)
        camera_source = f'cameras file {cameras_file}'
    else:
        path_gt = os.path.join(data_dir, FILE_2D_PATTERN.format(GT_KEYPOINTS))
        fit_2d = positions_2d
        if keypoints != GT_KEYPOINTS and os.path.isfile(path_gt):
            fit_2d, _ = load_positions_2d(path_gt)
        cameras = estimate_cameras(positions_3d, fit_2d, all_subjects)
        worst = max(c.rms_px for per in cameras.values() for c in per)
        camera_source = f'extrinsics fitted by PnP (worst RMS {worst:.2f} px)'
    train = [s for s in train_subjects if s not in val_subjects]
    common = dict(positions_3d=positions_3d, positions_2d=positions_2d, cameras=cameras,
                  joints=joints)
    source = f'Human3.6M {data_dir} 2D={keypoints}, {camera_source}'
    sets = {
        'train': make_h36m_set(subjects=train, frame_step=frame_step,
                               description=f'{source}; subjects {train}', **common),
        'test': make_h36m_set(subjects=list(test_subjects), frame_step=test_frame_step,
                              description=f'{source}; subjects {list(test_subjects)}', **common),
    }
    if val_subjects:
        sets['val'] = make_h36m_set(subjects=list(val_subjects), frame_step=frame_step,
                                    description=f'{source}; subjects {list(val_subjects)}',
                                    **common)
    return sets
