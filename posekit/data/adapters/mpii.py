"""MPII Human Pose (2D labels only) from the common JSON conversion of the official .mat file.

Expected layout (``root``)::

    root/
      annotations/train.json   a list of {"image": "015601864.jpg", "joints": [16 x [x, y]], "joints_vis": [16],
      annotations/valid.json    "center": [x, y], "scale": s} (the conversion used by HRNet and mmpose; 16 joints
                                in MPII order: r ankle, r knee, r hip, l hip, l knee, l ankle, pelvis, thorax,
                                upper neck, head top, r wrist, r elbow, r shoulder, l shoulder, l elbow, l wrist)
      images/*.jpg              the images

(``annotation_file`` and ``image_dir`` override both.) The conversion keeps MATLAB's 1-based pixel coordinates:
1 is subtracted (as HRNet and mmpose do when loading). The box is the square of side ``scale * 200`` px around
``center`` (MPII's person scale). No calibration: the default camera of
:func:`posekit.data.examples.default_camera`, read from each image's size (the image must be present).
"""
from __future__ import annotations

import os
from typing import List, Optional

import cv2
import numpy as np

from posekit.data import examples as examples_lib
from posekit.data.adapters import _common

NAME = 'mpii'
SKELETON = 'mpii_16'
SPLITS = ('train', 'valid')
N_JOINTS = 16
MATLAB_OFFSET = 1.0


def image_size(path: str):
    """(height, width) of an image file."""
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise FileNotFoundError(f'cannot read the image {path!r} (needed for its size: MPII has no calibration)')
    return image.shape[:2]


def load(root: str, split: str = 'train', annotation_file: Optional[str] = None,
         image_dir: Optional[str] = None) -> List[dict]:
    """The annotated people of ``split`` (module docstring): one example per JSON record with a valid joint."""
    path = os.path.join(root, annotation_file or os.path.join('annotations', f'{split}.json'))
    records = _common.read_json(path, 'MPII annotation file')
    if not isinstance(records, list):
        raise ValueError(f'{path}: expected a list of MPII records, got {type(records).__name__}')
    image_dir = 'images' if image_dir is None else image_dir
    sizes = {}
    out = []
    for k, record in enumerate(records):
        try:
            joints = np.asarray(record['joints'], np.float64).reshape(N_JOINTS, 2) - MATLAB_OFFSET
            valid = np.asarray(record['joints_vis'], np.float64).reshape(N_JOINTS) > 0
            name = record['image']
            box = _common.square_box(record['center'], record['scale'])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f'{path}: record {k} is not an MPII record ({e})') from None
        if not valid.any():
            continue
        image_path = os.path.join(image_dir, name)
        if image_path not in sizes:
            sizes[image_path] = image_size(os.path.join(root, image_path))
        out.append(examples_lib.make_example(
            skeleton=SKELETON, dataset=NAME, image_path=image_path,
            intrinsics=examples_lib.default_camera(*sizes[image_path]), box=box,
            joints2d=np.where(valid[:, None], joints, np.nan), joint_valid=valid, is_3d=False,
            subject=f'{name}#{k}', sequence=name))
    return out
