"""CMU Panoptic Studio: the official calibration and 3D body files (coco19 joints), HD cameras.

Expected layout (``root``: one sequence folder, or a folder of sequence folders)::

    <sequence>/
      calibration_<sequence>.json              {"cameras": [{"name": "00_03", "type": "hd", "K": [3x3],
                                                "distCoef": [5], "R": [3x3], "t": [3x1] (cm)}, ...]}
      hdPose3d_stage1_coco19/body3DScene_<frame>.json
                                               {"bodies": [{"id": 0, "joints19": [19 x (x, y, z) cm, confidence]}]}
      hdImgs/<camera>/<camera>_<frame>.jpg      the HD frames as the Panoptic toolbox extracts them

One example per body, frame and HD camera (``cameras`` selects some): world = Panoptic's world frame (y down,
so ``world_up = (0, -1, 0)``), converted from cm to mm; ``x_cam = R X + t``; distortion ``distCoef`` (OpenCV
k1, k2, p1, p2, k3). Joints with confidence <= :data:`MIN_CONFIDENCE` are unlabelled. The box is the bounding
box of the labelled joints' projections enlarged by :data:`BOX_PADDING` of its larger side (Panoptic gives no
boxes); bodies behind the camera or whose box misses the image are skipped. The image files are not needed to
build the examples (their paths are recorded); the joint order is posekit's ``coco_19``. No official split:
``split='all'`` (choose sequences with ``sequences``).
"""
from __future__ import annotations

import glob
import os
import re
from typing import List, Optional, Sequence

import numpy as np

from posekit import geometry
from posekit.data import examples as examples_lib
from posekit.data.adapters import _common

NAME = 'panoptic'
SKELETON = 'coco_19'
SPLITS = ('all',)
MM_PER_CM = 10.0
MIN_CONFIDENCE = 0.1
BOX_PADDING = 0.1
WORLD_UP = (0.0, -1.0, 0.0)
BODY_DIR = 'hdPose3d_stage1_coco19'


def sequence_folders(root: str) -> List[str]:
    if glob.glob(os.path.join(root, 'calibration_*.json')):
        return [root]
    folders = sorted(os.path.dirname(p) for p in glob.glob(os.path.join(root, '*', 'calibration_*.json')))
    if not folders:
        raise FileNotFoundError(f'no Panoptic sequence (calibration_<sequence>.json) in {root!r}')
    return folders


def load_cameras(folder: str, names: Optional[Sequence[str]] = None) -> List[dict]:
    """The HD cameras of a sequence: name, K, R, t (mm), distortion, image size."""
    sequence = os.path.basename(os.path.normpath(folder))
    path = os.path.join(folder, f'calibration_{sequence}.json')
    calibration = _common.read_json(path, 'Panoptic calibration')
    cameras = []
    for cam in calibration.get('cameras', []):
        if cam.get('type') != 'hd' or (names is not None and cam['name'] not in names):
            continue
        try:
            cameras.append(dict(name=cam['name'], K=np.asarray(cam['K'], np.float64).reshape(3, 3),
                                R=np.asarray(cam['R'], np.float64).reshape(3, 3),
                                t=np.asarray(cam['t'], np.float64).reshape(3) * MM_PER_CM,
                                distortion=np.asarray(cam['distCoef'], np.float64).reshape(-1),
                                size=tuple(cam.get('resolution', (1920, 1080)))))
        except (KeyError, ValueError) as e:
            raise ValueError(f'{path}: camera {cam.get("name")!r} lacks K, R, t or distCoef ({e})') from None
    if not cameras:
        raise ValueError(f'{path}: no HD cameras{" named " + str(list(names)) if names else ""}')
    return cameras


def load(root: str, split: str = 'all', sequences: Optional[Sequence[str]] = None,
         cameras: Optional[Sequence[str]] = None) -> List[dict]:
    """Examples of every body in every frame seen by every selected HD camera (module docstring)."""
    out = []
    for folder in sequence_folders(root):
        sequence = os.path.basename(os.path.normpath(folder))
        if sequences is not None and sequence not in sequences:
            continue
        cams = load_cameras(folder, cameras)
        for body_path in sorted(glob.glob(os.path.join(folder, BODY_DIR, 'body3DScene_*.json'))):
            frame = int(re.search(r'body3DScene_(\d+)\.json$', body_path).group(1))
            scene = _common.read_json(body_path, 'Panoptic body file')
            for body in scene.get('bodies', []):
                joints = np.asarray(body['joints19'], np.float64).reshape(-1, 4)
                if joints.shape[0] != 19:
                    raise ValueError(f'{body_path}: body {body.get("id")} has {joints.shape[0]} joints, expected 19')
                world = joints[:, :3] * MM_PER_CM
                valid = joints[:, 3] > MIN_CONFIDENCE
                for cam in cams:
                    example = _example(world, valid, cam, sequence, frame, body.get('id', -1),
                                       os.path.relpath(folder, root))
                    if example is not None:
                        out.append(example)
    return out


def _example(world, valid, cam, sequence, frame, body_id, folder):
    camera = geometry.Camera(intrinsic_matrix=cam['K'], distortion_coeffs=cam['distortion'][:5])
    points = world @ cam['R'].T + cam['t']
    if not valid.any() or np.any(points[valid, 2] <= 0):
        return None
    pixels = camera.camera_to_image(points)
    low, high = pixels[valid].min(0), pixels[valid].max(0)
    pad = BOX_PADDING * (high - low).max()
    low, high = low - pad, high + pad
    width, height = cam['size']
    if high[0] < 0 or high[1] < 0 or low[0] > width - 1 or low[1] > height - 1:
        return None
    name = cam['name']
    return examples_lib.make_example(
        skeleton=SKELETON, dataset=NAME,
        image_path=os.path.normpath(os.path.join(folder, 'hdImgs', name, f'{name}_{frame:08d}.jpg')),
        intrinsics=cam['K'], rotation=cam['R'], translation=cam['t'], distortion=cam['distortion'][:5],
        world_up=WORLD_UP, box=np.concatenate([low, high - low]), joints3d=np.where(valid[:, None], world, np.nan),
        joints2d=np.where(valid[:, None], pixels, np.nan), joint_valid=valid, is_3d=True,
        subject=f'{sequence}/{body_id}', sequence=f'{sequence}/{name}', frame=frame)
