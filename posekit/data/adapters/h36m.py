"""Human3.6M frames in the SPIN/mmpose npz layout, with the dataset's calibration.

Expected layout (``root``)::

    root/
      <annotations>.npz        imgname [N] (path of the frame relative to root, e.g.
                               'S1/S1_Directions_1.54138969/S1_Directions_1.54138969_000001.jpg'),
                               center [N, 2] px, scale [N] (box side = scale * 200 px),
                               part [N, 17, 3] (u, v px, visibility), S [N, 17, 4] (x, y, z in metres,
                               camera frame, confidence); 17 joints in h36m_17 order
      cameras.json             the 11 subjects x 4 cameras: {"S1/54138969": {"R": [3x3], "T": [3x1], "f": [2x1],
                               "c": [2x1], "k": [3x1], "p": [2x1], "w", "h"}, ...}; or cameras.pkl, the original
                               pickle keyed by (subject, camera id), read by a loader that accepts only numpy
                               arrays and builtins
      S1/S1_Directions_1.54138969/...jpg   the frames

Cameras: the files store the camera-to-world rotation R (as VideoPose3D's quaternions and mmpose's
``SimpleCamera``, which computes camera points as row vectors ``(X - T) @ R``), so ``x_cam = R^T (X - T)`` with T
the camera centre in Human3.6M's world (z up, the floor near z = 0); T is in millimetres in the original
release and in metres in these conversions: values whose largest magnitude is below :data:`METRE_LIMIT` are
taken as metres. (With this convention every camera of every subject sees the capture volume's centre in
front of it and the labelled people stand on the floor, tested.) Distortion: radial k (k1, k2, k3) and tangential p (p1, p2), OpenCV
order (k1, k2, p1, p2, k3). The 3D labels ``S`` (camera frame) become world mm through the camera.
Official split: train S1, S5, S6, S7, S8; test S9, S11 (``split='all'``: every subject present).

The VideoPose3D npz files (``data_3d_h36m.npz``, ``data_2d_h36m_gt.npz``) that the lifting experiments read are
handled by :mod:`posekit.data.h36m` (``experiments.gcn_weight_sharing --dataset=h36m``): they hold no images.
"""
from __future__ import annotations

import os
from typing import Dict, List

import numpy as np

from posekit.data import examples as examples_lib
from posekit.data.adapters import _common

NAME = 'h36m'
SKELETON = 'h36m_17'
SPLITS = ('train', 'test', 'all')
SUBJECTS = {'train': ('S1', 'S5', 'S6', 'S7', 'S8'), 'test': ('S9', 'S11')}
MM_PER_M = 1000.0
METRE_LIMIT = 100.0
"""Camera centres T with all |T| below this are in metres (Human3.6M's cameras are 2-7 m from the origin)."""
WORLD_UP = (0.0, 0.0, 1.0)


def load_cameras(root: str) -> Dict[str, Dict[str, np.ndarray]]:
    """{'S1/54138969': {'R' (world -> camera), 'T' (camera centre, world, mm), 'K', 'distortion', and 'size'
    (width, height px) when the file has w and h}} from cameras.json (or cameras.pkl) in ``root``."""
    json_path, pkl_path = os.path.join(root, 'cameras.json'), os.path.join(root, 'cameras.pkl')
    if os.path.isfile(json_path):
        raw = _common.read_json(json_path, 'Human3.6M camera file')
        items = raw.items()
    elif os.path.isfile(pkl_path):
        raw = _common.load_arrays_pickle(pkl_path)
        items = ((f'{k[0]}/{k[1]}' if isinstance(k, tuple) else str(k), v) for k, v in raw.items())
    else:
        raise FileNotFoundError(f'no cameras.json or cameras.pkl in the Human3.6M root {root!r}')
    cameras = {}
    for key, cam in items:
        try:
            t = np.asarray(cam['T'], np.float64).reshape(3)
            cameras[key] = dict(
                R=np.asarray(cam['R'], np.float64).reshape(3, 3).T,  # world -> camera
                T=t * MM_PER_M if np.abs(t).max() < METRE_LIMIT else t,
                K=_common.intrinsics(cam['f'], cam['c']),
                distortion=np.concatenate([np.asarray(cam['k'], np.float64).reshape(3)[:2],
                                           np.asarray(cam['p'], np.float64).reshape(2),
                                           np.asarray(cam['k'], np.float64).reshape(3)[2:]]))
            if 'w' in cam and 'h' in cam:
                cameras[key]['size'] = (int(cam['w']), int(cam['h']))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f'{root}: camera {key!r} lacks R, T, f, c, k or p ({e})') from None
    return cameras


def _subject(name: str) -> str:
    return str(name).split('/')[0]


def _camera_key(name: str) -> str:
    folder = str(name).split('/')[1]  # S1_Directions_1.54138969
    return f'{_subject(name)}/{folder.rsplit(".", 1)[1]}'


def load(root: str, split: str = 'train', annotations=None) -> List[dict]:
    """The examples of ``split`` (module docstring); ``annotations``: npz file name(s) relative to ``root``
    (default: every npz of the layout with 17 joints)."""
    cameras = load_cameras(root)
    subjects = None if split == 'all' else SUBJECTS[split]
    out = []
    for path in _common.npz_files(root, 17, annotations):
        data = _common.read_npz(path, 17)
        for i, name in enumerate(data['imgname']):
            name = str(name)
            if subjects is not None and _subject(name) not in subjects:
                continue
            key = _camera_key(name)
            if key not in cameras:
                raise ValueError(f'{path}: frame {name!r} needs camera {key!r}, not in the camera file')
            cam = cameras[key]
            camera_mm = data['S'][i, :, :3] * MM_PER_M
            world = camera_mm @ cam['R'] + cam['T']  # X = R^T x + T with R world -> camera
            valid = (data['part'][i, :, 2] > 0) & (data['S'][i, :, 3] > 0)
            out.append(examples_lib.make_example(
                skeleton=SKELETON, dataset=NAME, image_path=name, intrinsics=cam['K'], rotation=cam['R'],
                translation=-cam['R'] @ cam['T'], distortion=cam['distortion'], world_up=WORLD_UP,
                box=_common.square_box(data['center'][i], data['scale'][i]), joints3d=world,
                joints2d=data['part'][i, :, :2], joint_valid=valid, is_3d=True, subject=_subject(name),
                sequence=name.split('/')[1], frame=_common.frame_number(name)))
    return out
