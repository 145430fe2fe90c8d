"""MPI-INF-3DHP frames in the SPIN/mmpose npz layout, with per-sequence intrinsics.

Expected layout (``root``)::

    root/
      <annotations>.npz        imgname [N] (frame file relative to root: 'S4_Seq2_Cam0_001033.jpg' for the training
                               set, 'TS1_002001.jpg' for the test set), center, scale, part [N, 17, 3], S [N, 17, 4]
                               (metres, camera frame) as in the Human3.6M layout; 17 joints in mpi_inf_3dhp_17 order
      cameras_train.json       {"S4_Seq2_Cam0": {"f": [2x1], "c": [2x1], ...}, ...}
      cameras_test.json        {"TS1": {"f", "c", "w", "h"}, ...}
      *.jpg                    the frames

The labels are in the camera frame, so the world frame of these examples is the camera frame (R = I, t = 0)
and the world's up direction is the camera's (0, -1, 0): the cameras of MPI-INF-3DHP are close to upright
(the extrinsics some conversions add are not needed). No lens distortion is given. Official split: training
subjects S1-S8 (``train``), test sequences TS1-TS6 (``test``).
"""
from __future__ import annotations

import os
from typing import List

import numpy as np

from posekit.data import examples as examples_lib
from posekit.data.adapters import _common

NAME = 'mpi_inf_3dhp'
SKELETON = 'mpi_inf_3dhp_17'
SPLITS = ('train', 'test')
SUBJECTS = {'train': tuple(f'S{i}' for i in range(1, 9)), 'test': tuple(f'TS{i}' for i in range(1, 7))}
MM_PER_M = 1000.0
CAMERA_FILES = {'train': 'cameras_train.json', 'test': 'cameras_test.json'}


def _camera_key(name: str, split: str) -> str:
    parts = os.path.basename(str(name)).split('_')
    return '_'.join(parts[:3]) if split == 'train' else parts[0]


def load(root: str, split: str = 'train', annotations=None) -> List[dict]:
    """The examples of ``split`` (module docstring); ``annotations``: npz file name(s) relative to ``root``."""
    cameras = _common.read_json(os.path.join(root, CAMERA_FILES[split]), 'MPI-INF-3DHP camera file')
    out = []
    for path in _common.npz_files(root, 17, annotations):
        data = _common.read_npz(path, 17)
        for i, name in enumerate(data['imgname']):
            name = str(name)
            subject = os.path.basename(name).split('_')[0]
            if subject not in SUBJECTS[split]:
                continue
            key = _camera_key(name, split)
            if key not in cameras:
                raise ValueError(f'{path}: frame {name!r} needs camera {key!r} of {CAMERA_FILES[split]}')
            cam = cameras[key]
            valid = (data['part'][i, :, 2] > 0) & (data['S'][i, :, 3] > 0)
            out.append(examples_lib.make_example(
                skeleton=SKELETON, dataset=NAME, image_path=name, intrinsics=_common.intrinsics(cam['f'], cam['c']),
                box=_common.square_box(data['center'][i], data['scale'][i]),
                joints3d=data['S'][i, :, :3] * MM_PER_M, joints2d=data['part'][i, :, :2], joint_valid=valid,
                is_3d=True, world_up=examples_lib.CAMERA_UP, subject=subject, sequence=key,
                frame=_common.frame_number(name)))
    return out
