"""Dataset adapters: a dataset root in the layout users have on disk -> full-image examples.

Each adapter is a small module with ``NAME``, ``SKELETON`` (the skeleton its labels use; ``None`` when the data
says, e.g. the own-data manifest), ``SPLITS`` (the dataset's official splits) and
``load(root, split, **options) -> list of examples`` (the contract of :mod:`posekit.data.examples`). The layout
each expects is in its module docstring and in the README ("Real datasets").

==============  ==========================================================  ==============================
adapter         layout                                                       labels
==============  ==========================================================  ==============================
h36m            SPIN/mmpose npz + frames + cameras.json (or .pkl)           3D world mm + 2D, h36m_17
mpi_inf_3dhp    the same npz layout + per-sequence camera JSON               3D (camera frame) + 2D
coco            official person-keypoints JSON + images                      2D, coco_17
mpii            the common JSON conversion + images                          2D, mpii_16
panoptic        official calibration + hdPose3d_stage1_coco19 JSON           3D world mm, coco_19
manifest        a folder of images + one JSON/CSV manifest (yours)            3D and/or 2D, any skeleton
==============  ==========================================================  ==============================
"""
from __future__ import annotations

import importlib
from typing import List

_MODULES = ('h36m', 'mpi_inf_3dhp', 'coco', 'mpii', 'panoptic', 'manifest')


def names() -> List[str]:
    """The registered adapter names."""
    return list(_MODULES)


def get(name: str):
    """The adapter module ``name``; ``KeyError`` listing the known adapters otherwise."""
    if name not in _MODULES:
        raise KeyError(f'unknown dataset adapter {name!r}; known adapters: {names()}')
    return importlib.import_module(f'{__name__}.{name}')


def image_root(name: str, root: str) -> str:
    """The folder the image paths of adapter ``name``'s examples are relative to (the manifest's folder for
    ``manifest``, else ``root``)."""
    import os
    return os.path.dirname(os.path.abspath(root)) if name == 'manifest' else root


def load(name: str, root: str, split: str, **options) -> list:
    """``get(name).load(root, split, **options)``: the examples of one split."""
    adapter = get(name)
    if split not in adapter.SPLITS:
        raise ValueError(f'split must be one of {adapter.SPLITS} for adapter {name!r}, got {split!r}')
    return adapter.load(root, split, **options)
