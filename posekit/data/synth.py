"""Datasets made from motion: cameras, 2D/3D labels in every format, rendered person crops and video.

A dataset is a :class:`DatasetSpec` (frozen): one skeleton format it labels, a camera
distribution (:class:`CameraSpec`), an appearance distribution (:class:`AppearanceSpec`), a
label kind ('3d', or '2d' for weakly supervised 2D-only sets) and its split sizes. The motions
(subjects) come from :func:`load_motion_splits` (procedural by default; a BVH folder such as
``../shared/data/cmu_mocap`` gives real motion with a subject-wise train/val split; a separate
test folder is used whole). ``PRESETS`` mirror the paper's mix of datasets (names as used by
:mod:`posekit.data.pipeline`):

================  ===============  =====  ===========================================================
name              format           label  what it mimics
================  ===============  =====  ===========================================================
h36m_like         h36m_17          3d     Human3.6M: one studio, 4 fixed cameras 3-5 m away, per-subject
                                          clothes, little occlusion
mpi_like          mpi_inf_3dhp_17  3d     MPI-INF-3DHP: green-screen studio, composited/re-textured
                                          backgrounds, cameras from low to ceiling height, some occluders
smpl_like         smpl_24          3d     SURREAL-like synthetic set: varied cameras 2-10 m, roll, screen-
                                          space photo backgrounds, random clothes, build and lighting
coco_like         coco_19          2d     COCO-like in-the-wild photos: indoor/outdoor scenes with clutter,
                                          bystanders, occluders, low resolution; 2D labels only
================  ===============  =====  ===========================================================

Every example (data contract) is a person-centred crop rendered directly through a *crop camera*:
a camera in the motion's world (mm, y up) aimed at the person's box as the exported model aims
at a detection (:func:`crop_camera`, i.e. :func:`posekit.geometry.crop_camera`) and zoomed so the
box fits the crop with a margin. It holds
``image`` uint8 [S, S, 3], ``intrinsics`` float32 [3, 3] (px), ``coords3d`` float32 [J_all, 3]
(mm, crop camera frame: x right, y down, z forward) for ALL formats of the joint space,
``coords2d`` float32 [J_all, 2] (px, their exact projection), ``joint_valid`` bool [J_all] (the
dataset's own format), ``is_3d`` bool, ``dataset`` int32, ``example_id`` int64, plus
``clip_index`` and ``frame_index`` (int32, provenance). Everything is a pure function of
(seed, dataset name, split, example index) through numpy Generators.

Video (:func:`render_video`): consecutive frames of one clip with a smoothly moving camera
following the subject and per-frame labels; :func:`keypoint_heatmaps` makes Gaussian heatmap
targets (numpy, or TensorFlow when given tensors).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
import zlib
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from posekit import geometry, skeletons
from posekit.data import bodies, mocap
from posekit.data import render

GENERATOR_VERSION = 'synth-3'  # synth-2: shirt-front print; synth-3: crops aimed by geometry.crop_camera
"""Version of the example generator; stored shards made by another version are regenerated."""

MM_PER_M = 1000.0
SPLITS = ('train', 'val', 'test')
SPLIT_CODES = {'train': 0, 'val': 1, 'test': 2}
EXAMPLE_ID_SPLIT_STRIDE = 1 << 40
"""example_id = split code * EXAMPLE_ID_SPLIT_STRIDE + index: unique across a dataset's splits."""

WORLD_UP = (0.0, 1.0, 0.0)
"""Motion worlds are y up (BVH)."""

LABEL_KINDS = ('3d', '2d')
BACKGROUNDS = ('studio', 'greenscreen', 'composite', 'wild')
VIDEO_FORMAT = 'h36m_17'
MIN_CAMERA_DISTANCE_MM = 1500.0
"""Fixed-rig cameras closer than this to the person are not used for that example."""
BACKGROUND_SUBSAMPLE = 2
"""Backgrounds are ray-cast at half resolution and upsampled (soft, like a shallow depth of field)."""
COMPOSITE_PICTURES = 48
"""Background pictures per texture bank for composite (screen-space) backgrounds."""
CAPTURE_AREA_RADIUS_MM = 1500.0
"""Studio (rig) datasets place the subject within this radius of the rig centre."""
OCCLUDER_BODY_HEIGHT_MM = 1700.0
"""Occluder sizes are fractions of this height (times the body scale) at their distance."""
PROCEDURAL_TEST_SEED_OFFSET = 7919
"""Procedural test subjects are generated with seed + this offset (new people, new motion)."""


# ----------------------------------------------------------------------------------------------
# Specs
# ----------------------------------------------------------------------------------------------

def _check_range(value, name, low=None, high=None):
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f'{name} must be a (low, high) pair of numbers, got {value!r}') from None
    if not lo <= hi or (low is not None and lo < low) or (high is not None and hi > high):
        raise ValueError(f'{name} must satisfy {low} <= low <= high <= {high}, got {value!r}')


@dataclasses.dataclass(frozen=True)
class CameraSpec:
    """Camera distribution of a dataset (lengths in metres, angles in degrees).

    Attributes:
      rig: 0 for free cameras placed around the person; n > 0 for n cameras fixed in the world
        around the clip's mean position (a studio), each example using one of them.
      distance_m: (low, high) camera-to-person (rig: camera-to-rig-centre) horizontal distance.
      height_m: (low, high) optical centre height above the floor.
      azimuth_deg: (low, high) horizontal angle of free cameras relative to the person's facing
        (0: in front).
      fov_deg: (low, high) field of view of the original (uncropped) camera along its larger
        image side ``image_side_px``; crops of small people get the blur of upsampling.
      roll_deg: maximum absolute roll.
      box_margin: fraction of the person's box added around it in the crop.
      box_jitter: relative jitter of the crop's scale and centre (detector noise).
    """

    rig: int = 0
    distance_m: Tuple[float, float] = (2.0, 10.0)
    height_m: Tuple[float, float] = (0.5, 2.5)
    azimuth_deg: Tuple[float, float] = (-180.0, 180.0)
    fov_deg: Tuple[float, float] = (40.0, 70.0)
    image_side_px: int = 1000
    roll_deg: float = 0.0
    box_margin: float = 0.2
    box_jitter: float = 0.05

    def __post_init__(self):
        if not isinstance(self.rig, int) or self.rig < 0:
            raise ValueError(f'rig must be a non-negative int, got {self.rig!r}')
        _check_range(self.distance_m, 'distance_m', 0.5, 100.0)
        _check_range(self.height_m, 'height_m', 0.0, 50.0)
        _check_range(self.azimuth_deg, 'azimuth_deg', -360.0, 360.0)
        _check_range(self.fov_deg, 'fov_deg', 1.0, 170.0)
        if not 0 <= self.roll_deg <= 90:
            raise ValueError(f'roll_deg must be in [0, 90], got {self.roll_deg!r}')
        if not 0 <= self.box_margin <= 2 or not 0 <= self.box_jitter <= 0.5:
            raise ValueError(f'box_margin must be in [0, 2] and box_jitter in [0, 0.5], got '
                             f'{self.box_margin!r}, {self.box_jitter!r}')


@dataclasses.dataclass(frozen=True)
class AppearanceSpec:
    """Appearance distribution of a dataset.

    Attributes:
      background: 'studio' (one fixed room per dataset), 'greenscreen' (green room, mostly
        re-textured or composited), 'composite' (screen-space photos) or 'wild' (random indoor
        and outdoor rooms with clutter).
      occluder_rate: probability that objects are placed between the camera and the person.
      max_occluders: at most this many occluders.
      clutter: (low, high) number of background objects.
      bystander_rate: probability of a second person in the scene.
      outfit_per_subject: clothes fixed per subject (studio datasets) instead of per example.
      thickness: (low, high) limb thickness factor.
      ambient: (low, high); diffuse: (low, high) lighting weights.
      noise_std: per-pixel Gaussian noise (0-255 units).
    """

    background: str = 'wild'
    occluder_rate: float = 0.2
    max_occluders: int = 2
    clutter: Tuple[int, int] = (0, 4)
    bystander_rate: float = 0.0
    outfit_per_subject: bool = False
    thickness: Tuple[float, float] = (0.85, 1.2)
    ambient: Tuple[float, float] = (0.35, 0.55)
    diffuse: Tuple[float, float] = (0.45, 0.8)
    noise_std: float = 2.0

    def __post_init__(self):
        if self.background not in BACKGROUNDS:
            raise ValueError(f'background must be one of {BACKGROUNDS}, got {self.background!r}')
        for name in ('occluder_rate', 'bystander_rate'):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise ValueError(f'{name} must be in [0, 1], got {v!r}')
        if not isinstance(self.max_occluders, int) or self.max_occluders < 0:
            raise ValueError(f'max_occluders must be a non-negative int, got {self.max_occluders!r}')
        _check_range(self.clutter, 'clutter', 0, 50)
        _check_range(self.thickness, 'thickness', 0.3, 3.0)
        _check_range(self.ambient, 'ambient', 0.0, 2.0)
        _check_range(self.diffuse, 'diffuse', 0.0, 2.0)
        if not 0 <= self.noise_std <= 50:
            raise ValueError(f'noise_std must be in [0, 50], got {self.noise_std!r}')


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One synthetic dataset.

    Attributes:
      name: dataset name (seeds its randomness; used by the pipeline's compositions).
      skeleton: the skeleton format it labels (``joint_valid``).
      label_kind: '3d' or '2d' (2D-only: ``is_3d`` False).
      camera, appearance: the distributions.
      n_train, n_val, n_test: examples per split.
      crop_size: S, side of the square crops (px).
      formats: the joint space whose ground truth every example carries.
    """

    name: str
    skeleton: str
    label_kind: str = '3d'
    camera: CameraSpec = CameraSpec()
    appearance: AppearanceSpec = AppearanceSpec()
    n_train: int = 1000
    n_val: int = 100
    n_test: int = 100
    crop_size: int = 128
    formats: Tuple[str, ...] = bodies.DEFAULT_FORMATS

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name or '/' in self.name:
            raise ValueError(f'name must be a non-empty string without "/", got {self.name!r}')
        object.__setattr__(self, 'formats', tuple(self.formats))
        for f in self.formats:
            if f not in bodies.SUPPORTED_FORMATS:
                raise ValueError(f'formats must be among {bodies.SUPPORTED_FORMATS}, got {f!r}')
        if self.skeleton not in self.formats:
            raise ValueError(f'skeleton must be one of formats {self.formats}, got {self.skeleton!r}')
        if self.label_kind not in LABEL_KINDS:
            raise ValueError(f'label_kind must be one of {LABEL_KINDS}, got {self.label_kind!r}')
        for split in SPLITS:
            n = getattr(self, f'n_{split}')
            if not isinstance(n, int) or n < 0:
                raise ValueError(f'n_{split} must be a non-negative int, got {n!r}')
        if not isinstance(self.crop_size, int) or not 16 <= self.crop_size <= 1024:
            raise ValueError(f'crop_size must be an int in [16, 1024], got {self.crop_size!r}')
        if not isinstance(self.camera, CameraSpec) or not isinstance(self.appearance, AppearanceSpec):
            raise ValueError('camera must be a CameraSpec and appearance an AppearanceSpec, got '
                             f'{type(self.camera).__name__}, {type(self.appearance).__name__}')

    def n_examples(self, split: str) -> int:
        if split not in SPLITS:
            raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
        return getattr(self, f'n_{split}')

    @property
    def joint_space(self) -> skeletons.JointSpace:
        return skeletons.JointSpace(self.formats)

    def to_json(self) -> str:
        """Canonical JSON of every field (used in HDF5 metadata and generation hashes)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> 'DatasetSpec':
        d = json.loads(text)
        d['camera'] = CameraSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in d['camera'].items()})
        d['appearance'] = AppearanceSpec(**{k: tuple(v) if isinstance(v, list) else v
                                            for k, v in d['appearance'].items()})
        d['formats'] = tuple(d['formats'])
        return cls(**d)


PRESETS: Dict[str, DatasetSpec] = {
    'h36m_like': DatasetSpec(
        name='h36m_like', skeleton='h36m_17', label_kind='3d',
        camera=CameraSpec(rig=4, distance_m=(3.0, 5.0), height_m=(1.3, 1.8), fov_deg=(45.0, 50.0),
                          image_side_px=1000, roll_deg=2.0, box_margin=0.2, box_jitter=0.04),
        appearance=AppearanceSpec(background='studio', occluder_rate=0.05, max_occluders=1,
                                  clutter=(1, 2), outfit_per_subject=True, thickness=(0.9, 1.15),
                                  ambient=(0.45, 0.5), diffuse=(0.55, 0.6), noise_std=1.5)),
    'mpi_like': DatasetSpec(
        name='mpi_like', skeleton='mpi_inf_3dhp_17', label_kind='3d',
        camera=CameraSpec(rig=0, distance_m=(2.5, 6.0), height_m=(0.3, 2.8), fov_deg=(50.0, 75.0),
                          image_side_px=2048, roll_deg=5.0, box_margin=0.2, box_jitter=0.05),
        appearance=AppearanceSpec(background='greenscreen', occluder_rate=0.15, max_occluders=2,
                                  clutter=(0, 2), outfit_per_subject=True, thickness=(0.85, 1.2),
                                  ambient=(0.35, 0.55), diffuse=(0.45, 0.8), noise_std=2.0)),
    'smpl_like': DatasetSpec(
        name='smpl_like', skeleton='smpl_24', label_kind='3d',
        camera=CameraSpec(rig=0, distance_m=(2.0, 10.0), height_m=(0.3, 3.0), fov_deg=(30.0, 80.0),
                          image_side_px=640, roll_deg=10.0, box_margin=0.2, box_jitter=0.06),
        appearance=AppearanceSpec(background='composite', occluder_rate=0.1, max_occluders=1,
                                  clutter=(0, 0), outfit_per_subject=False, thickness=(0.75, 1.35),
                                  ambient=(0.25, 0.6), diffuse=(0.35, 0.9), noise_std=2.5)),
    'coco_like': DatasetSpec(
        name='coco_like', skeleton='coco_19', label_kind='2d',
        camera=CameraSpec(rig=0, distance_m=(2.0, 10.0), height_m=(0.3, 3.5), fov_deg=(40.0, 80.0),
                          image_side_px=640, roll_deg=15.0, box_margin=0.2, box_jitter=0.08),
        appearance=AppearanceSpec(background='wild', occluder_rate=0.45, max_occluders=3,
                                  clutter=(2, 8), bystander_rate=0.35, outfit_per_subject=False,
                                  thickness=(0.75, 1.35), ambient=(0.25, 0.6), diffuse=(0.3, 0.9),
                                  noise_std=4.0)),
}
"""The synthetic datasets, in the pipeline's order (3D sets, then the 2D set)."""

SIZE_PRESETS: Dict[str, Dict[str, Tuple[int, int, int]]] = {
    # (n_train, n_val, n_test) per dataset
    'smoke': {name: (192, 32, 32) for name in PRESETS},
    'default': {'h36m_like': (4000, 400, 400), 'mpi_like': (4000, 400, 400),
                'smpl_like': (4000, 400, 400), 'coco_like': (4000, 400, 400)},
    'paper': {name: (50000, 2000, 5000) for name in PRESETS},
}


def preset_specs(size: str = 'default', names: Optional[Sequence[str]] = None,
                 crop_size: int = 128) -> List[DatasetSpec]:
    """The preset datasets with the split sizes of ``size`` ('smoke', 'default', 'paper')."""
    if size not in SIZE_PRESETS:
        raise ValueError(f'size must be one of {sorted(SIZE_PRESETS)}, got {size!r}')
    names = list(PRESETS) if names is None else list(names)
    specs = []
    for name in names:
        if name not in PRESETS:
            raise ValueError(f'unknown dataset {name!r}; presets: {list(PRESETS)}')
        n_train, n_val, n_test = SIZE_PRESETS[size][name]
        specs.append(dataclasses.replace(PRESETS[name], n_train=n_train, n_val=n_val, n_test=n_test,
                                         crop_size=crop_size))
    return specs


# ----------------------------------------------------------------------------------------------
# Motion
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class MotionSplits:
    """Clips per split and a description of where they came from."""

    train: List[mocap.Clip]
    val: List[mocap.Clip]
    test: List[mocap.Clip]
    description: str

    def clips(self, split: str) -> List[mocap.Clip]:
        if split not in SPLITS:
            raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
        return getattr(self, split)


def _renamed(clips: Sequence[mocap.Clip], prefix: str) -> List[mocap.Clip]:
    return [mocap.Clip(prefix + c.subject[1:], prefix + c.name[1:], c.motion) for c in clips]


def load_motion_splits(mocap_dir: Optional[str] = None, test_mocap_dir: Optional[str] = None,
                       seed: int = 0, val_fraction: float = 0.25, fps: float = mocap.DEFAULT_FPS,
                       max_frames_per_clip: Optional[int] = None, n_subjects: int = 8,
                       clips_per_subject: int = 6, seconds: float = 6.0) -> MotionSplits:
    """Train/val/test motion.

    With ``mocap_dir``: its clips split by subject (``val_fraction`` of the subjects for val,
    chosen with ``seed``); test = all clips of ``test_mocap_dir`` if given, else the val clips.
    Without: procedural subjects (train/val split by subject) and, for test, procedural subjects
    of another seed (named 't..', never seen in training) unless ``test_mocap_dir`` is given.
    """
    if mocap_dir:
        clips = mocap.load_mocap_folder(mocap_dir, fps=fps, max_frames_per_clip=max_frames_per_clip)
        train, val = mocap.split_by_subject(clips, test_fraction=val_fraction, seed=seed)
        description = (f'mocap:{mocap_dir} ({len(clips)} clips); val subjects '
                       f'{sorted({c.subject for c in val})}')
    else:
        clips = mocap.procedural_motions(n_subjects=n_subjects, clips_per_subject=clips_per_subject,
                                         seconds=seconds, fps=fps, seed=seed)
        train, val = mocap.split_by_subject(clips, test_fraction=val_fraction, seed=seed)
        description = (f'procedural(seed={seed}, subjects={n_subjects}, clips={clips_per_subject}, '
                       f'seconds={seconds}, fps={fps}); val subjects {sorted({c.subject for c in val})}')
    if test_mocap_dir:
        test = mocap.load_mocap_folder(test_mocap_dir, fps=fps, max_frames_per_clip=max_frames_per_clip)
        description += f'; test mocap:{test_mocap_dir} ({len(test)} clips)'
    elif mocap_dir:
        test = list(val)
        description += '; test = val subjects (no test folder given)'
    else:
        n_test = max(2, n_subjects // 4)
        test = _renamed(mocap.procedural_motions(
            n_subjects=n_test, clips_per_subject=clips_per_subject, seconds=seconds, fps=fps,
            seed=seed + PROCEDURAL_TEST_SEED_OFFSET), 't')
        description += f'; test procedural(seed={seed + PROCEDURAL_TEST_SEED_OFFSET}, subjects={n_test})'
    return MotionSplits(train, val, test, description)


class PreparedMotion:
    """Per-frame landmarks and joints of a list of clips, precomputed for fast sampling.

    Attributes:
      clips: the clips.
      landmarks: list of [T_c, L, 3] float32 (mm, world).
      joints: list of [T_c, J_all, 3] float64 (mm, world), the joint space ``formats``.
      scales: list of body scales; subjects: list of subject ids.
      cumulative: [C + 1] cumulative frame counts (frame-uniform sampling).
    """

    def __init__(self, clips: Sequence[mocap.Clip], formats: Sequence[str] = bodies.DEFAULT_FORMATS):
        if not clips:
            raise ValueError('clips must not be empty')
        self.clips = list(clips)
        self.formats = tuple(formats)
        self.landmarks = []
        self.joints = []
        self.scales = []
        self.subjects = [c.subject for c in self.clips]
        for c in self.clips:
            self.landmarks.append(bodies.landmarks(c.motion, subject=c.subject).astype(np.float32))
            self.joints.append(bodies.all_format_joints(c.motion, self.formats, subject=c.subject))
            self.scales.append(bodies.body_scale(c.motion))
        lengths = [len(x) for x in self.landmarks]
        self.cumulative = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.subject_ids = sorted(set(self.subjects))

    @property
    def n_frames(self) -> int:
        return int(self.cumulative[-1])

    def locate(self, global_frame: int) -> Tuple[int, int]:
        clip = int(np.searchsorted(self.cumulative, global_frame, side='right') - 1)
        return clip, int(global_frame - self.cumulative[clip])

    def sample(self, rng: np.random.Generator) -> Tuple[int, int]:
        """(clip index, frame index), uniform over all frames."""
        return self.locate(int(rng.integers(self.n_frames)))

    def description(self) -> str:
        return f'{len(self.clips)} clips, {self.n_frames} frames, subjects {self.subject_ids}'


# ----------------------------------------------------------------------------------------------
# Randomness
# ----------------------------------------------------------------------------------------------

def _name_key(name: str) -> int:
    return zlib.crc32(name.encode('utf-8'))


def example_rng(seed: int, name: str, split: str, index: int) -> np.random.Generator:
    """The Generator of one example: a pure function of (seed, dataset name, split, index)."""
    return np.random.default_rng([int(seed), _name_key(name), SPLIT_CODES[split], int(index)])


def _uniform(rng, pair):
    return float(rng.uniform(pair[0], pair[1]))


# ----------------------------------------------------------------------------------------------
# Scenes
# ----------------------------------------------------------------------------------------------

GREEN = np.array([0.20, 0.62, 0.25], np.float32)


def _green_texture(rng) -> np.ndarray:
    noise = render.tileable_noise(rng, render.TEXTURE_SIZE, 8)[..., None]
    return np.clip(GREEN * (0.85 + 0.3 * noise), 0, 1).astype(np.float32)


def _studio_scene(seed: int, name: str) -> render.Scene:
    """The one room of a studio dataset (fixed per dataset and seed)."""
    rng = np.random.default_rng([int(seed), _name_key(name), 0x57D])
    bank = render.texture_bank(int(seed))
    floor = np.clip(bank[0] * 0.4 + 0.25, 0, 1) * np.array([0.9, 0.85, 0.8], np.float32)
    walls = np.stack([np.clip(bank[rng.integers(len(bank))] * 0.5 + 0.2, 0, 1) for _ in range(4)])
    return render.Scene(kind='room', floor=floor.astype(np.float32), floor_tile_mm=800.0,
                        walls=walls.astype(np.float32), wall_tile_mm=1200.0,
                        bounds=(-6500.0, 6500.0, -6500.0, 6500.0), wall_height_mm=3500.0,
                        top_colour=np.array([0.7, 0.7, 0.72], np.float32),
                        brightness=np.array([1.0, 0.9, 0.8], np.float32))


def _room_scene(rng, bank, points_xz, outdoor: bool, green: bool = False) -> render.Scene:
    """A random room containing ``points_xz`` [n, 2] (mm) with margins."""
    lo = points_xz.min(axis=0) - rng.uniform(1000, 6000 if not outdoor else 20000, 2)
    hi = points_xz.max(axis=0) + rng.uniform(1000, 6000 if not outdoor else 20000, 2)
    if green:
        floor = _green_texture(rng)
        walls = np.stack([_green_texture(rng) for _ in range(4)])
    else:
        floor = bank[rng.integers(len(bank))]
        walls = bank[rng.integers(len(bank), size=4)]
        if rng.random() < 0.5:  # same wall texture all around, as in most rooms
            walls = np.repeat(walls[:1], 4, axis=0)
    sky = (np.array([0.55, 0.7, 0.9]) * rng.uniform(0.8, 1.15) if outdoor
           else np.array([0.85, 0.85, 0.85]) * rng.uniform(0.6, 1.0))
    return render.Scene(
        kind='room', floor=floor, floor_tile_mm=float(rng.uniform(300, 2500)),
        walls=walls, wall_tile_mm=float(rng.uniform(600, 4000 if not outdoor else 12000)),
        bounds=(float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])),
        wall_height_mm=float(rng.uniform(2400, 4000) if not outdoor else rng.uniform(4000, 30000)),
        top_colour=np.clip(sky, 0, 1).astype(np.float32),
        brightness=rng.uniform(0.6, 1.1, 3).astype(np.float32),
        shadow_strength=float(rng.uniform(0.3, 0.6)))


@functools.lru_cache(maxsize=8)
def _composite_bank(bank_seed: int) -> Tuple[np.ndarray, ...]:
    """Screen-space 'photos' for composite backgrounds, made once per texture bank."""
    bank = render.texture_bank(bank_seed)
    rng = np.random.default_rng([bank_seed, 0xC0B])
    return tuple(render.composite_picture(rng, bank) for _ in range(COMPOSITE_PICTURES))


def _composite_scene(rng, bank_seed: int) -> render.Scene:
    pictures = _composite_bank(bank_seed)
    picture = pictures[rng.integers(len(pictures))]
    if rng.random() < 0.5:
        picture = picture[:, ::-1]
    size = picture.shape[0]
    window = float(rng.uniform(0.4, 1.0) * size)
    x0, y0 = rng.uniform(0, size - window, 2)
    return render.Scene(kind='composite', picture=picture, picture_window=(float(x0), float(y0), window))


def make_scene(spec: DatasetSpec, rng: np.random.Generator, seed: int, points_xz: np.ndarray) -> render.Scene:
    """A background for one example (or one video) of ``spec``."""
    kind = spec.appearance.background
    bank_seed = int(seed) + _name_key(spec.name) % 1000
    bank = render.texture_bank(bank_seed)
    if kind == 'studio':
        return _studio_scene(seed, spec.name)
    if kind == 'composite':
        return _composite_scene(rng, bank_seed)
    if kind == 'greenscreen':
        u = rng.random()
        if u < 0.25:
            return _room_scene(rng, bank, points_xz, outdoor=False, green=True)
        if u < 0.6:
            return _room_scene(rng, bank, points_xz, outdoor=False)
        return _composite_scene(rng, bank_seed)
    return _room_scene(rng, bank, points_xz, outdoor=bool(rng.random() < 0.45))


# ----------------------------------------------------------------------------------------------
# Cameras
# ----------------------------------------------------------------------------------------------

def _facing_yaw(landmarks: np.ndarray) -> float:
    """Yaw (radians about +y) of the person's facing direction from the hip line."""
    idx = render.LANDMARK_INDEX
    left = landmarks[idx['lhip']] - landmarks[idx['rhip']]
    forward = np.cross(left, np.array(WORLD_UP))  # left x up = forward for left = +x, up = +y
    return float(math.atan2(forward[0], forward[2]))


def _rig_positions(spec: DatasetSpec, seed: int) -> np.ndarray:
    """[rig, 3] camera positions (relative to the rig centre, y = height), fixed per dataset."""
    cam = spec.camera
    rng = np.random.default_rng([int(seed), _name_key(spec.name), 0x416])
    az = np.deg2rad(45.0 + 360.0 * np.arange(cam.rig) / cam.rig + rng.uniform(-10, 10, cam.rig))
    dist = rng.uniform(*cam.distance_m, cam.rig) * MM_PER_M
    height = rng.uniform(*cam.height_m, cam.rig) * MM_PER_M
    return np.stack([dist * np.sin(az), height, dist * np.cos(az)], -1)


def camera_position(spec: DatasetSpec, rng: np.random.Generator, seed: int, root: np.ndarray,
                    yaw: float) -> np.ndarray:
    """[3] optical centre (world, mm) of one example's camera (rig cameras surround the origin)."""
    cam = spec.camera
    if cam.rig:
        positions = _rig_positions(spec, seed)
        horizontal = np.linalg.norm((positions - root)[:, [0, 2]], axis=-1)
        usable = np.nonzero(horizontal >= MIN_CAMERA_DISTANCE_MM)[0]
        if usable.size:
            chosen = positions[usable[rng.integers(usable.size)]]
            return chosen + rng.normal(0, 20.0, 3)  # a few cm of jitter between sessions
    az = yaw + np.deg2rad(_uniform(rng, cam.azimuth_deg))
    dist = _uniform(rng, cam.distance_m) * MM_PER_M
    height = _uniform(rng, cam.height_m) * MM_PER_M
    return np.array([root[0] + dist * math.sin(az), height, root[2] + dist * math.cos(az)])


def crop_camera(center: np.ndarray, target: np.ndarray, box_points: np.ndarray, crop_size: int,
                roll_rad: float = 0.0, margin: float = 0.2, scale_jitter: float = 1.0,
                shift: Tuple[float, float] = (0.0, 0.0)) -> geometry.Camera:
    """A camera at ``center`` aimed at the person like the exported model aims at a detection box.

    An upright reference camera at ``center`` looks at ``target``; the person's box is the bounding
    box of ``box_points`` in its normalized image coordinates (what a person detector would return);
    :func:`posekit.geometry.crop_camera` then turns the camera upright (x axis horizontal in the world)
    towards the box centre (moved
    by ``shift``, fractions of the box's larger side), fits the box plus ``margin`` into the crop
    (times ``scale_jitter``) and rolls it by ``roll_rad``. Training crops and the export's crops are
    therefore aimed by the same function.

    Args:
      center: [3] optical centre (world, mm); target: [3] initial aim (world, mm).
      box_points: [P, 3] points (world, mm) that define the person's box.

    Returns:
      the crop :class:`posekit.geometry.Camera` (world y up).
    """
    center = np.asarray(center, np.float64)
    reference = geometry.upright_rotation(np.asarray(target, np.float64) - center, WORLD_UP)
    normalized = geometry.Camera(center, reference, np.eye(3)).world_to_image(box_points)
    low, high = normalized.min(0), normalized.max(0)
    box = np.concatenate([low, high - low])
    rotation, k = geometry.crop_camera(np.eye(3), box, crop_size, box_margin=margin, up=reference @ WORLD_UP,
                                       roll=roll_rad, zoom=scale_jitter, shift=np.asarray(shift, np.float64))
    return geometry.Camera(center, rotation @ reference, k, world_up=WORLD_UP)


# ----------------------------------------------------------------------------------------------
# Scene objects
# ----------------------------------------------------------------------------------------------

def _yaw_matrix(yaw: float) -> np.ndarray:
    return geometry.axis_rotation('Y', yaw)


def _clutter(rng, scene: render.Scene, n: int, avoid: Sequence[np.ndarray]) -> render.Capsules:
    """Background objects standing on the floor inside the room, away from ``avoid`` points."""
    if n == 0 or scene.kind != 'room':
        return None
    x0, x1, z0, z1 = scene.bounds
    starts, ends, radii, colours = [], [], [], []
    for _ in range(n):
        for _attempt in range(8):
            x, z = rng.uniform(x0 + 300, x1 - 300), rng.uniform(z0 + 300, z1 - 300)
            if all(np.hypot(x - a[0], z - a[2]) > 900 for a in avoid):
                break
        kind = rng.integers(3)
        if kind == 0:  # pillar / post / plant
            r = rng.uniform(80, 350)
            h = rng.uniform(500, 2500)
            starts.append([x, r, z])
            ends.append([x, max(h, r), z])
        elif kind == 1:  # bench / bar / table edge
            r = rng.uniform(60, 250)
            h = rng.uniform(r, 1000)
            a = rng.uniform(0, np.pi)
            half = rng.uniform(300, 1200)
            d = np.array([np.cos(a), 0, np.sin(a)]) * half
            starts.append(np.array([x, h, z]) - d)
            ends.append(np.array([x, h, z]) + d)
        else:  # ball / boulder
            r = rng.uniform(120, 500)
            starts.append([x, r, z])
            ends.append([x, r, z])
        radii.append(r)
        colours.append(render.random_colour(rng, saturation=(0.0, 0.8), value=(0.15, 0.9)))
    stripe = np.where(rng.random(n) < 0.3, rng.uniform(0.2, 0.5, n), 0.0)
    return render.Capsules(np.array(starts, np.float64), np.array(ends, np.float64), np.array(radii),
                           np.array(colours, np.float32), stripe, rng.uniform(60, 300, n))


def _occluders(rng, n: int, center: np.ndarray, body_points: np.ndarray, scale: float) -> render.Capsules:
    """Objects between the camera at ``center`` and random body points, each hiding part of the
    person: their size is a fraction of the body height at their distance from the camera."""
    if n == 0:
        return None
    starts, ends, radii = [], [], []
    height = OCCLUDER_BODY_HEIGHT_MM * scale
    for _ in range(n):
        target = body_points[rng.integers(len(body_points))]
        dist = np.linalg.norm(target - center)
        frac = rng.uniform(0.5, 0.85)
        r = rng.uniform(0.05, 0.14) * height * frac
        frac = max(frac, min(0.9, (r + 400.0) / dist))
        mid = center + frac * (target - center) + rng.normal(0, 0.03 * height * frac, 3)
        direction = rng.normal(0, 1, 3)
        if rng.random() < 0.6:
            direction = np.array([0, 1.0, 0]) if rng.random() < 0.5 else np.array([direction[0], 0, direction[2]])
        direction /= max(np.linalg.norm(direction), 1e-9)
        half = rng.uniform(0, 0.3) * height * frac
        starts.append(mid - half * direction)
        ends.append(mid + half * direction)
        radii.append(r)
    colours = np.array([render.random_colour(rng, saturation=(0.0, 0.9), value=(0.1, 0.95))
                        for _ in range(n)], np.float32)
    stripe = np.where(rng.random(n) < 0.3, rng.uniform(0.2, 0.5, n), 0.0)
    return render.Capsules(np.array(starts), np.array(ends), np.array(radii), colours, stripe,
                           rng.uniform(40, 200, n))


def _bystander(rng, motion: PreparedMotion, root: np.ndarray, center: np.ndarray) -> render.Capsules:
    """Another person from a random frame, placed near the subject (not between it and the camera)."""
    clip, frame = motion.sample(rng)
    lm = motion.landmarks[clip][frame].astype(np.float64)
    pelvis = lm[render.LANDMARK_INDEX['pelvis']]
    away = root - center
    away[1] = 0
    away /= max(np.linalg.norm(away), 1e-9)
    side = np.array([-away[2], 0, away[0]])
    position = root + away * rng.uniform(800, 5000) + side * rng.uniform(-3000, 3000)
    yaw = rng.uniform(-np.pi, np.pi)
    moved = (lm - pelvis) @ _yaw_matrix(yaw).T + np.array([position[0], pelvis[1], position[2]])
    return render.body_capsules(moved, render.random_outfit(rng), motion.scales[clip])


# ----------------------------------------------------------------------------------------------
# Examples
# ----------------------------------------------------------------------------------------------

def _outfit(spec: DatasetSpec, rng: np.random.Generator, seed: int, subject: str) -> render.Outfit:
    thickness = spec.appearance.thickness
    if spec.appearance.outfit_per_subject:
        sub_rng = np.random.default_rng([int(seed), _name_key(spec.name), _name_key(subject)])
        return render.random_outfit(sub_rng, thickness)
    return render.random_outfit(rng, thickness)


def _light(rng, spec: DatasetSpec, rot: np.ndarray):
    azimuth = rng.uniform(-np.pi, np.pi)
    elevation = rng.uniform(0.3, 1.3)
    world = np.array([math.cos(elevation) * math.sin(azimuth), math.sin(elevation),
                      math.cos(elevation) * math.cos(azimuth)])
    return (rot @ world, _uniform(rng, spec.appearance.ambient), _uniform(rng, spec.appearance.diffuse))


def _finish(image: np.ndarray, rng, spec: DatasetSpec, focal_crop: float, focal_original: float) -> np.ndarray:
    """Resolution blur (upsampled crops of small people) and sensor noise; -> uint8."""
    ratio = focal_crop / focal_original
    if ratio > 1.2:
        sigma = 0.5 * math.sqrt(ratio * ratio - 1.0)
        image = cv2.GaussianBlur(image, (0, 0), min(sigma, 4.0))
    if spec.appearance.noise_std > 0:
        noise = _noise_bank(image.shape[0], image.shape[1])
        y0 = int(rng.integers(noise.shape[0] - image.shape[0] + 1))
        x0 = int(rng.integers(noise.shape[1] - image.shape[1] + 1))
        patch = noise[y0:y0 + image.shape[0], x0:x0 + image.shape[1]]
        image = image + patch * np.float32(spec.appearance.noise_std / 255.0)
    return render.to_uint8(image)


@functools.lru_cache(maxsize=4)
def _noise_bank(height: int, width: int) -> np.ndarray:
    """[2H, 2W, 3] float32 unit Gaussian noise (fixed); examples use random windows of it."""
    noise = np.random.default_rng(0x5E11).standard_normal((2 * height, 2 * width, 3), dtype=np.float32)
    noise.setflags(write=False)
    return noise


def _labels(camera: geometry.Camera, joints_world: np.ndarray):
    coords3d = camera.world_to_camera(joints_world).astype(np.float32)
    coords2d = camera.camera_to_image(coords3d.astype(np.float64)).astype(np.float32)
    return coords3d, coords2d


def _render_person(spec: DatasetSpec, motion: PreparedMotion, split: str, index: int, seed: int,
                   full_frame: Optional[Tuple[int, int]] = None, distortion_coeffs=None):
    """The scene of example ``index`` rendered through its crop camera, or (``full_frame`` = (H, W)) through
    the original upright camera that the crop was cut from (same random draws either way), optionally with
    OpenCV lens distortion (``distortion_coeffs``, full frames only).

    Returns (image uint8, camera, joints world [J_all, 3] mm, landmarks world, clip, frame).
    """
    if tuple(motion.formats) != spec.formats:
        raise ValueError(f'motion was prepared for formats {motion.formats}, but the spec needs {spec.formats}')
    rng = example_rng(seed, spec.name, split, index)
    size = spec.crop_size
    clip, frame = motion.sample(rng)
    lm = motion.landmarks[clip][frame].astype(np.float64)
    joints = motion.joints[clip][frame]
    idx = render.LANDMARK_INDEX
    root = lm[idx['pelvis']]
    if spec.camera.rig:
        # A studio: the subject performs inside the capture area around the origin, whatever
        # distance the clip travels (labels are in camera coordinates, so this is harmless).
        radius = CAPTURE_AREA_RADIUS_MM * math.sqrt(rng.random())
        angle = rng.uniform(0, 2 * np.pi)
        shift = np.array([radius * math.cos(angle) - root[0], 0.0, radius * math.sin(angle) - root[2]])
        lm, joints, root = lm + shift, joints + shift, root + shift
    yaw = _facing_yaw(lm)
    center = camera_position(spec, rng, seed, root, yaw)
    cam_spec = spec.camera
    roll = np.deg2rad(rng.uniform(-cam_spec.roll_deg, cam_spec.roll_deg))
    jitter = cam_spec.box_jitter
    camera = crop_camera(center, root, lm, size, roll, cam_spec.box_margin,
                         scale_jitter=float(np.exp(rng.uniform(-jitter, jitter))),
                         shift=tuple(rng.uniform(-jitter, jitter, 2)))
    side_px = cam_spec.image_side_px
    focal_original = geometry.fov_intrinsics(_uniform(rng, cam_spec.fov_deg), side_px, side_px)[0, 0]
    shape = (size, size)
    if full_frame is not None:
        # The original camera: upright towards the person, rolled like the crop, the drawn field of view
        # along the larger side of the requested frame.
        shape = tuple(int(v) for v in full_frame)
        upright = geometry.upright_rotation(root - center, WORLD_UP)
        k = geometry.fov_intrinsics(2.0 * math.degrees(math.atan(side_px / 2.0 / focal_original)), *shape)
        camera = geometry.Camera(center, geometry.roll_flip_rotation(upright, roll), k, distortion_coeffs,
                                 world_up=WORLD_UP)
    rot, k = camera.rot_world_to_cam, camera.intrinsic_matrix
    render_shape, render_k, source = shape, k, None
    if full_frame is not None and distortion_coeffs is not None:
        # Each pixel of the distorted frame shows the undistorted view at its undistorted position: render
        # the undistorted view on a canvas that holds all those positions, then resample.
        grid = np.stack(np.meshgrid(np.arange(shape[1], dtype=np.float64), np.arange(shape[0], dtype=np.float64)),
                        -1)
        source = camera.copy(distortion_coeffs=None).camera_to_image(camera.image_to_camera(grid, 1.0))
        if not np.all(np.isfinite(source)):
            raise ValueError(f'distortion_coeffs {np.asarray(distortion_coeffs).tolist()} are not invertible '
                             f'over the {shape} frame')
        low = np.floor(source.reshape(-1, 2).min(0)) - 1
        high = np.ceil(source.reshape(-1, 2).max(0)) + 1
        render_k = k.copy()
        render_k[:2, 2] -= low
        render_shape = (int(high[1] - low[1]) + 1, int(high[0] - low[0]) + 1)
        source = (source - low).astype(np.float32)

    scene = make_scene(spec, rng, seed, np.array([[root[0], root[2]], [center[0], center[2]]]))
    scene.shadow_xz = (float(root[0]), float(root[2]))
    outfit = _outfit(spec, rng, seed, motion.subjects[clip])
    app = spec.appearance
    parts = [render.body_capsules(lm, outfit, motion.scales[clip])]
    n_clutter = int(rng.integers(app.clutter[0], app.clutter[1] + 1))
    parts.append(_clutter(rng, scene, n_clutter, [root, center]))
    if rng.random() < app.bystander_rate:
        parts.append(_bystander(rng, motion, root, center))
    if app.max_occluders and rng.random() < app.occluder_rate:
        parts.append(_occluders(rng, int(rng.integers(1, app.max_occluders + 1)), center, lm,
                                motion.scales[clip]))
    capsules = render.Capsules.concatenate(parts).transformed(rot, camera.optical_center)
    light, ambient, diffuse = _light(rng, spec, rot)

    image, depth = render.render_background(scene, render_k, rot, camera.optical_center, render_shape,
                                             subsample=BACKGROUND_SUBSAMPLE)
    render.draw_capsules(image, depth, render_k, capsules, light, ambient, diffuse,
                         up_dir=rot @ np.array(WORLD_UP))
    if source is not None:
        image = cv2.remap(image, source[..., 0], source[..., 1], cv2.INTER_LINEAR)
    image = _finish(image, rng, spec, k[0, 0], focal_original if full_frame is None else k[0, 0])
    return image, camera, joints, lm, clip, frame


def render_example(spec: DatasetSpec, motion: PreparedMotion, split: str, index: int, seed: int = 0,
                   dataset_index: int = 0) -> Dict[str, np.ndarray]:
    """One example of ``spec`` (data contract), a pure function of (seed, spec, split, index).

    Args:
      spec: the dataset.
      motion: :class:`PreparedMotion` of the split's clips (joint space ``spec.formats``).
      split: 'train', 'val' or 'test'.
      index: example index within the split.
      seed: the generation seed.
      dataset_index: value of the ``dataset`` field.

    Returns:
      dict: ``image`` uint8 [S, S, 3], ``intrinsics`` float32 [3, 3] px, ``coords3d`` float32
      [J_all, 3] mm (crop camera frame), ``coords2d`` float32 [J_all, 2] px, ``joint_valid`` bool
      [J_all], ``is_3d`` bool, ``dataset`` int32, ``example_id`` int64, ``clip_index`` int32,
      ``frame_index`` int32.
    """
    image, camera, joints, _, clip, frame = _render_person(spec, motion, split, index, seed)
    coords3d, coords2d = _labels(camera, joints)
    space = spec.joint_space
    return dict(
        image=image, intrinsics=camera.intrinsic_matrix.astype(np.float32), coords3d=coords3d, coords2d=coords2d,
        joint_valid=space.format_mask(spec.skeleton), is_3d=np.bool_(spec.label_kind == '3d'),
        dataset=np.int32(dataset_index),
        example_id=np.int64(SPLIT_CODES[split] * EXAMPLE_ID_SPLIT_STRIDE + index),
        clip_index=np.int32(clip), frame_index=np.int32(frame))


def render_full_frame(spec: DatasetSpec, motion: PreparedMotion, split: str, index: int, seed: int = 0,
                      image_shape: Tuple[int, int] = (480, 640), distortion_coeffs=None) -> Dict:
    """Example ``index`` of ``spec`` as a full camera frame with its camera: a full-image example.

    The same person, scene and draws as :func:`render_example`, rendered through the original upright camera
    (the crop's field of view along the larger side of ``image_shape``); with ``distortion_coeffs`` (OpenCV,
    5 coefficients) each pixel of the frame shows the undistorted view at its undistorted position (rendered on a
    large enough canvas) and the 2D labels are the distorted projections.

    Returns:
      dict with ``image`` uint8 [H, W, 3] and the fields of the full-image example contract
      (:mod:`posekit.data.examples`): ``intrinsics`` [3, 3], ``rotation`` [3, 3] and ``translation`` [3] (mm,
      world -> camera), ``distortion`` [5], ``world_up`` [3], ``box`` [4] (x, y, w, h px: the box of the body's
      landmarks, as a detector would give), ``joints3d`` [J, 3] world mm and ``joints2d`` [J, 2] px of the
      dataset's skeleton, ``joint_valid`` [J], ``is_3d``, ``skeleton``, ``dataset``, ``subject``, ``sequence``,
      ``frame``.
    """
    image, camera, joints, lm, clip, frame = _render_person(spec, motion, split, index, seed,
                                                            full_frame=image_shape,
                                                            distortion_coeffs=distortion_coeffs)
    distortion = np.zeros(5)
    if distortion_coeffs is not None:
        distortion[:len(distortion_coeffs)] = np.asarray(distortion_coeffs, np.float64)[:5]
    sl = spec.joint_space.slices[spec.skeleton]
    joints = np.asarray(joints, np.float64)[sl]
    uv = camera.world_to_image(lm)
    low, high = uv.min(0), uv.max(0)
    return dict(
        image=image, intrinsics=camera.intrinsic_matrix, rotation=camera.rot_world_to_cam,
        translation=-camera.rot_world_to_cam @ camera.optical_center, distortion=distortion,
        world_up=np.asarray(WORLD_UP, np.float64), box=np.concatenate([low, high - low]).astype(np.float32),
        joints3d=joints.astype(np.float32), joints2d=camera.world_to_image(joints).astype(np.float32),
        joint_valid=np.ones(len(joints), bool), is_3d=np.bool_(spec.label_kind == '3d'), skeleton=spec.skeleton,
        dataset=spec.name, subject=str(motion.subjects[clip]), sequence=f'{spec.name}/{split}/{clip}',
        frame=np.int64(frame))


def generate_examples(spec: DatasetSpec, motion: PreparedMotion, split: str, start: int, count: int,
                      seed: int = 0, dataset_index: int = 0, progress=None) -> Dict[str, np.ndarray]:
    """Examples ``start .. start + count - 1`` of a split, stacked (leading dimension ``count``).

    Args:
      progress: optional callable(n_done) called after each example.
    """
    if count < 0 or start < 0:
        raise ValueError(f'start and count must be non-negative, got {start}, {count}')
    examples = []
    for i in range(start, start + count):
        examples.append(render_example(spec, motion, split, i, seed, dataset_index))
        if progress is not None:
            progress(i - start + 1)
    if not examples:
        return empty_arrays(spec)
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def example_fields(spec: DatasetSpec) -> Dict[str, Tuple[Tuple[int, ...], np.dtype]]:
    """Field -> (per-example shape, dtype) of the examples of ``spec``."""
    s, j = spec.crop_size, spec.joint_space.n_joints
    return {
        'image': ((s, s, 3), np.dtype(np.uint8)), 'intrinsics': ((3, 3), np.dtype(np.float32)),
        'coords3d': ((j, 3), np.dtype(np.float32)), 'coords2d': ((j, 2), np.dtype(np.float32)),
        'joint_valid': ((j,), np.dtype(bool)), 'is_3d': ((), np.dtype(bool)),
        'dataset': ((), np.dtype(np.int32)), 'example_id': ((), np.dtype(np.int64)),
        'clip_index': ((), np.dtype(np.int32)), 'frame_index': ((), np.dtype(np.int32)),
    }


def empty_arrays(spec: DatasetSpec) -> Dict[str, np.ndarray]:
    return {k: np.zeros((0,) + shape, dtype) for k, (shape, dtype) in example_fields(spec).items()}


# ----------------------------------------------------------------------------------------------
# Video
# ----------------------------------------------------------------------------------------------

def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Moving average along axis 0 with edge padding (odd ``window``)."""
    if window <= 1 or len(values) < 2:
        return values
    pad = window // 2
    padded = np.concatenate([np.repeat(values[:1], pad, 0), values, np.repeat(values[-1:], pad, 0)])
    kernel = np.ones(window) / window
    return np.stack([np.convolve(padded[:, c], kernel, mode='valid') for c in range(values.shape[1])], -1)


def render_video(spec: DatasetSpec, motion: PreparedMotion, clip: int, start: int = 0, n_frames: int = 16,
                 seed: int = 0, stride: int = 1, skeleton: str = VIDEO_FORMAT, video_index: int = 0,
                 orbit_deg_per_s: Tuple[float, float] = (-20.0, 20.0)) -> Dict[str, np.ndarray]:
    """Consecutive frames of one clip seen by a smoothly moving camera that follows the subject.

    The camera orbits the subject (angular speed uniform in ``orbit_deg_per_s``) with slowly
    drifting distance and height; each frame's crop camera aims at the smoothed pelvis track with
    a zoom that follows the smoothed box size, so the person stays centred and the perspective-
    consistent background moves with the camera. One scene and one outfit per video.

    Args:
      spec: dataset whose camera/appearance distributions are used.
      motion: :class:`PreparedMotion` whose joint space contains ``skeleton``.
      clip: clip index; start: first frame; n_frames: T; stride: frame step.
      seed, video_index: randomness (pure function of (seed, spec.name, video_index)).
      skeleton: the keypoint format of the labels (K joints).

    Returns:
      dict: ``frames`` uint8 [T, S, S, 3], ``intrinsics`` float32 [T, 3, 3] px, ``coords2d``
      float32 [T, K, 2] px, ``coords3d`` float32 [T, K, 3] mm (each frame's camera frame),
      ``joint_valid`` bool [T, K] (in view: in front of the camera and inside the crop),
      ``rot_world_to_cam`` float32 [T, 3, 3], ``optical_center`` float32 [T, 3] mm (world).
    """
    if skeleton not in motion.formats:
        raise ValueError(f'skeleton must be one of the prepared formats {motion.formats}, got {skeleton!r}')
    if not 0 <= clip < len(motion.clips):
        raise ValueError(f'clip must be in [0, {len(motion.clips)}), got {clip!r}')
    n_clip = len(motion.landmarks[clip])
    if n_frames < 1 or stride < 1 or start < 0 or start + (n_frames - 1) * stride >= n_clip:
        raise ValueError(f'start={start}, n_frames={n_frames}, stride={stride} do not fit clip {clip} '
                         f'of {n_clip} frames')
    rng = np.random.default_rng([int(seed), _name_key(spec.name), 0x71DE0, int(video_index)])
    frames_idx = start + stride * np.arange(n_frames)
    lms = motion.landmarks[clip][frames_idx].astype(np.float64)
    space = skeletons.JointSpace(motion.formats)
    joints = motion.joints[clip][frames_idx][:, space.slices[skeleton]]
    idx = render.LANDMARK_INDEX
    size = spec.crop_size
    fps = motion.clips[clip].motion.fps / stride
    if spec.appearance.background == 'studio':  # stay inside the studio room around the origin
        shift = -lms[:, idx['pelvis']].mean(axis=0) * np.array([1.0, 0.0, 1.0])
        lms, joints = lms + shift, joints + shift
    pelvis = lms[:, idx['pelvis']]
    track = _smooth(pelvis, 9)
    cam_spec = spec.camera
    yaw0 = _facing_yaw(lms[0]) + np.deg2rad(_uniform(rng, cam_spec.azimuth_deg))
    t = np.arange(n_frames) / fps
    yaw = yaw0 + np.deg2rad(_uniform(rng, orbit_deg_per_s)) * t
    dist = _uniform(rng, cam_spec.distance_m) * MM_PER_M * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.05, 0.2) * t))
    height = _uniform(rng, cam_spec.height_m) * MM_PER_M + rng.uniform(-150, 150) * np.sin(
        2 * np.pi * rng.uniform(0.05, 0.2) * t)
    centers = np.stack([track[:, 0] + dist * np.sin(yaw), height, track[:, 2] + dist * np.cos(yaw)], -1)
    roll = np.deg2rad(rng.uniform(-cam_spec.roll_deg, cam_spec.roll_deg))
    # Zoom from the smoothed box size: first pass with unit focal length.
    cams = [crop_camera(centers[i], track[i], lms[i], size, roll, cam_spec.box_margin) for i in range(n_frames)]
    focal = _smooth(np.array([[c.intrinsic_matrix[0, 0]] for c in cams]), 9)[:, 0]
    span = np.concatenate([centers[:, [0, 2]], pelvis[:, [0, 2]]])
    scene = make_scene(spec, rng, seed, span)
    outfit = _outfit(spec, rng, seed, motion.subjects[clip])
    light_world = rng.normal(0, 1, 3)
    light_world[1] = abs(light_world[1]) + 0.5
    ambient, diffuse = _uniform(rng, spec.appearance.ambient), _uniform(rng, spec.appearance.diffuse)
    n_clutter = int(rng.integers(spec.appearance.clutter[0], spec.appearance.clutter[1] + 1))
    clutter = _clutter(rng, scene, n_clutter, list(pelvis[::max(1, n_frames // 8)]) + [centers[0], centers[-1]])
    side_px = cam_spec.image_side_px
    focal_original = geometry.fov_intrinsics(_uniform(rng, cam_spec.fov_deg), side_px, side_px)[0, 0]
    out = {k: [] for k in ('frames', 'intrinsics', 'coords2d', 'coords3d', 'joint_valid',
                           'rot_world_to_cam', 'optical_center')}
    for i in range(n_frames):
        c0 = (size - 1) / 2.0
        k = np.array([[focal[i], 0, c0], [0, focal[i], c0], [0, 0, 1.0]])
        cam = cams[i].copy(intrinsic_matrix=k)
        rot = cam.rot_world_to_cam
        scene.shadow_xz = (float(pelvis[i, 0]), float(pelvis[i, 2]))
        caps = render.Capsules.concatenate(
            [render.body_capsules(lms[i], outfit, motion.scales[clip]), clutter]).transformed(rot, cam.optical_center)
        image, depth = render.render_background(scene, k, rot, cam.optical_center, (size, size),
                                                 subsample=BACKGROUND_SUBSAMPLE)
        render.draw_capsules(image, depth, k, caps, rot @ light_world, ambient, diffuse,
                             up_dir=rot @ np.array(WORLD_UP))
        frame_rng = np.random.default_rng([int(seed), _name_key(spec.name), 0x71DE1, int(video_index), i])
        out['frames'].append(_finish(image, frame_rng, spec, k[0, 0], focal_original))
        coords3d, coords2d = _labels(cam, joints[i])
        inside = ((coords3d[:, 2] > 0) & (coords2d >= -0.5).all(-1) & (coords2d <= size - 0.5).all(-1))
        out['intrinsics'].append(k.astype(np.float32))
        out['coords3d'].append(coords3d)
        out['coords2d'].append(coords2d)
        out['joint_valid'].append(inside)
        out['rot_world_to_cam'].append(rot.astype(np.float32))
        out['optical_center'].append(cam.optical_center.astype(np.float32))
    return {k: np.stack(v) for k, v in out.items()}


def keypoint_heatmaps(coords2d, valid, height: int, width: int, stride: int = 4, sigma: float = 2.0):
    """Gaussian keypoint heatmaps (numpy, or TensorFlow when ``coords2d`` is a tf.Tensor).

    Heatmap cell (i, j) covers image pixels ``[j*stride, (j+1)*stride) x [i*stride, (i+1)*stride)``
    and is evaluated at its centre ``(j*stride + (stride-1)/2, i*stride + (stride-1)/2)`` px:
    ``exp(-|x - c|^2 / (2 sigma^2))`` for each keypoint c, 0 where ``valid`` is False.

    Args:
      coords2d: [..., K, 2] keypoints (px, image of height x width).
      valid: [..., K] bool (or 0/1).
      height, width: image size (px), multiples of ``stride``.
      stride: output stride (px per heatmap cell).
      sigma: Gaussian standard deviation in image px.

    Returns:
      float32 [..., height // stride, width // stride, K].
    """
    for value, name in ((height, 'height'), (width, 'width'), (stride, 'stride')):
        if not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f'{name} must be a positive int, got {value!r}')
    if height % stride or width % stride:
        raise ValueError(f'height and width must be multiples of stride={stride}, got {height}x{width}')
    if not sigma > 0:
        raise ValueError(f'sigma must be > 0, got {sigma!r}')
    h, w = height // stride, width // stride
    ys = (np.arange(h) * stride + (stride - 1) / 2.0).astype(np.float32)
    xs = (np.arange(w) * stride + (stride - 1) / 2.0).astype(np.float32)
    tf = sys.modules.get('tensorflow')  # a tensor input implies TensorFlow is already imported
    if tf is not None and isinstance(coords2d, (tf.Tensor, tf.Variable)):
        c = tf.cast(coords2d, tf.float32)
        v = tf.cast(valid, tf.float32)
        dx = (tf.constant(xs)[:, None] - c[..., None, None, :, 0])  # [..., 1, W, K] via broadcasting
        dy = (tf.constant(ys)[:, None] - c[..., None, :, 1])        # [..., H, K]
        gx = tf.exp(-tf.square(dx) / (2.0 * sigma * sigma))         # [..., 1, W, K]
        gy = tf.exp(-tf.square(dy) / (2.0 * sigma * sigma))[..., :, None, :]  # [..., H, 1, K]
        return gy * gx * v[..., None, None, :]
    c = np.asarray(coords2d, np.float32)
    if c.ndim < 2 or c.shape[-1] != 2:
        raise ValueError(f'coords2d must have shape [..., K, 2], got {c.shape}')
    v = np.asarray(valid).astype(np.float32)
    if v.shape != c.shape[:-1]:
        raise ValueError(f'valid must have shape {c.shape[:-1]}, got {v.shape}')
    gx = np.exp(-np.square(xs[:, None] - c[..., None, :, 0]) / (2.0 * sigma * sigma))  # [..., W, K]
    gy = np.exp(-np.square(ys[:, None] - c[..., None, :, 1]) / (2.0 * sigma * sigma))  # [..., H, K]
    return (gy[..., :, None, :] * gx[..., None, :, :] * v[..., None, None, :]).astype(np.float32)
