"""COCO person keypoints (2D labels only) from the official annotation JSON.

Expected layout (``root``)::

    root/
      annotations/person_keypoints_train2017.json   the official COCO keypoints JSON ('images', 'annotations' with
      annotations/person_keypoints_val2017.json     'keypoints' [51] = 17 x (x, y, v), 'bbox' x, y, w, h,
                                                    'num_keypoints', 'iscrowd', 'category_id'; 'categories')
      train2017/*.jpg  val2017/*.jpg                the images

(``annotation_file`` and ``image_dir`` override both, e.g. for a single JSON next to its images.)

People kept (the usual rules): category 'person', ``iscrowd == 0``, ``num_keypoints >= 1`` and a box with
positive width and height; the box is the annotation's. A keypoint is labelled when its flag v > 0 (1:
labelled, occluded; 2: visible). Coordinates are used as stored (COCO's pixel convention; posekit puts pixel
centres at integers, a possible 0.5 px offset that is far below the labelling noise). COCO has no
calibration: the examples get the default camera of :func:`posekit.data.examples.default_camera`
(55 degrees along the larger side) and no 3D.
"""
from __future__ import annotations

import os
from typing import List, Optional

import numpy as np

from posekit.data import examples as examples_lib
from posekit.data.adapters import _common

NAME = 'coco'
SKELETON = 'coco_17'
SPLITS = ('train', 'val')
N_KEYPOINTS = 17


def keep(annotation: dict, person_ids) -> bool:
    """The official filtering: a person, not a crowd, at least one labelled keypoint, a non-empty box."""
    bbox = annotation.get('bbox') or [0, 0, 0, 0]
    return (annotation.get('category_id') in person_ids and not annotation.get('iscrowd', 0)
            and annotation.get('num_keypoints', 0) >= 1 and bbox[2] > 0 and bbox[3] > 0)


def load(root: str, split: str = 'train', annotation_file: Optional[str] = None,
         image_dir: Optional[str] = None) -> List[dict]:
    """The kept people of ``split`` (module docstring)."""
    annotation_file = annotation_file or os.path.join('annotations', f'person_keypoints_{split}2017.json')
    image_dir = f'{split}2017' if image_dir is None else image_dir
    path = os.path.join(root, annotation_file)
    data = _common.read_json(path, 'COCO keypoint annotation file')
    try:
        person_ids = {c['id'] for c in data['categories'] if c.get('name') == 'person'}
        images = {im['id']: im for im in data['images']}
        annotations = data['annotations']
    except (KeyError, TypeError) as e:
        raise ValueError(f'{path}: not a COCO keypoint file (missing {e})') from None
    out = []
    for a in annotations:
        if not keep(a, person_ids):
            continue
        image = images.get(a['image_id'])
        if image is None:
            raise ValueError(f'{path}: annotation {a.get("id")} refers to unknown image {a["image_id"]}')
        points = np.asarray(a['keypoints'], np.float64).reshape(N_KEYPOINTS, 3)
        valid = points[:, 2] > 0
        joints2d = np.where(valid[:, None], points[:, :2], np.nan)
        out.append(examples_lib.make_example(
            skeleton=SKELETON, dataset=NAME, image_path=os.path.join(image_dir, image['file_name']),
            intrinsics=examples_lib.default_camera(image['height'], image['width']), box=a['bbox'],
            joints2d=joints2d, joint_valid=valid, is_3d=False, subject=str(a.get('id', '')),
            sequence=str(image['id'])))
    return out
