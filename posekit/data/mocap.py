"""Motion sources: folders of BVH files (real capture) and procedural motion (the embedded default).

A :class:`Clip` is one motion of one subject. Everything downstream (bodies, rendered datasets,
lifting sets, video) consumes a list of clips, so real and procedural motion are interchangeable:

* ``load_mocap_folder(dir)`` reads every ``*.bvh`` below ``dir`` (e.g. ``../shared/data/cmu_mocap``
  or a user's folder), drops the T-pose frame that some CMU releases prepend (from ``MANIFEST.tsv``
  when present, else detected), drops implausible capture frames and resamples to a target rate.
* ``procedural_motions(...)`` synthesises clips on a CMU-like 31-joint skeleton (the ``cmu_31``
  format, same BVH joint names as the cmu_mb2 release) from parametric gaits and gestures with
  per-subject body proportions, so a fresh clone works without any data.

Positions are millimetres, world frame y up, floor at y = 0, the T-pose facing +z with the subject's
left towards +x (as the CMU BVH releases).
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import math
import os
import pathlib
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from posekit import geometry
from posekit.data import bvh as bvh_lib

MIN_PELVIS_HEIGHT_MM = 300.0  # frames with the pelvis lower than this above the floor are glitches
MAX_ROOT_STEP_MM_PER_S = 12000.0  # faster root motion between frames is a capture glitch
DEFAULT_FPS = 30.0


@dataclasses.dataclass
class Clip:
    """One motion of one subject.

    Attributes:
      subject: subject id (e.g. CMU '01', or 'p03' for procedural subjects).
      name: clip name (file stem or procedural description).
      motion: the :class:`posekit.data.bvh.Motion` (positions in mm, world y up).
    """

    subject: str
    name: str
    motion: bvh_lib.Motion


# --------------------------------------------------------------------------------------------
# Real capture
# --------------------------------------------------------------------------------------------

def _read_manifest(folder: pathlib.Path) -> Dict[str, Dict[str, str]]:
    """MANIFEST.tsv rows keyed by absolute file path, from ``folder`` or its parent."""
    for base in (folder, folder.parent):
        path = base / 'MANIFEST.tsv'
        if path.is_file():
            with open(path, newline='') as f:
                rows = list(csv.DictReader(f, delimiter='\t'))
            return {str((base / row['file']).resolve()): row for row in rows if row.get('file')}
    return {}


TPOSE_JUMP_MM = 50.0  # a prepended rest-pose frame differs from frame 1 by more than this


def _first_frame_is_rest_pose(motion: bvh_lib.Motion) -> bool:
    """True if frame 0 is a prepended rest pose: every non-root joint at its rest rotation, or a
    jump to frame 1 far larger than from frame 1 to 2."""
    if motion.n_frames < 3:
        return False
    if motion.rotations is not None:
        rot = motion.rotations[0]
        local = np.array([rot[j] if p == -1 else rot[p].T @ rot[j]
                          for j, p in enumerate(motion.parents)])
        non_root = [j for j, p in enumerate(motion.parents) if p != -1]
        if np.allclose(local[non_root], np.eye(3), atol=1e-6):
            return True
    root = motion.parents.index(-1)
    rel = motion.positions[:3] - motion.positions[:3, root:root + 1]
    d01 = np.linalg.norm(rel[1] - rel[0], axis=-1).mean()
    d12 = np.linalg.norm(rel[2] - rel[1], axis=-1).mean()
    return bool(d01 > TPOSE_JUMP_MM and d01 > 5 * d12)


MAX_BLEND_FRAMES = 30  # frames after a prepended rest pose that some releases blend from it


def _settled_start(motion: bvh_lib.Motion) -> int:
    """First frame after a prepended rest pose (frame 0) and the blend some releases add after it:
    leading frames whose root-relative joint motion exceeds 3x the clip's median are skipped."""
    root = motion.parents.index(-1)
    rel = motion.positions - motion.positions[:, root:root + 1]
    step = np.linalg.norm(np.diff(rel, axis=0), axis=-1).mean(axis=1)  # step[t]: t -> t+1
    if step.size < 2:
        return min(1, motion.n_frames - 1)
    limit = 3.0 * np.median(step)
    start = 1
    while start < min(MAX_BLEND_FRAMES, step.size) and step[start] > limit:
        start += 1
    return start


def plausible_frames(motion: bvh_lib.Motion) -> np.ndarray:
    """[T] bool: frames whose pelvis is at least MIN_PELVIS_HEIGHT_MM above the floor and whose
    root did not jump faster than MAX_ROOT_STEP_MM_PER_S from its neighbours (capture glitches).

    The floor is the 1st percentile of the lowest joint height over the clip (y up).
    """
    pos = motion.positions
    root = motion.parents.index(-1)
    floor = np.percentile(pos[..., 1].min(axis=1), 1)
    ok = pos[:, root, 1] - floor >= MIN_PELVIS_HEIGHT_MM
    if motion.n_frames > 1:
        step = np.linalg.norm(np.diff(pos[:, root], axis=0), axis=-1) * motion.fps
        jump = step > MAX_ROOT_STEP_MM_PER_S
        ok[1:] &= ~jump
        ok[:-1] &= ~jump
    return ok


def resample(motion: bvh_lib.Motion, fps: float) -> bvh_lib.Motion:
    """Nearest-frame resampling to ``fps`` (keeps every pose a real captured pose)."""
    if not fps > 0:
        raise ValueError(f'fps must be positive, got {fps!r}')
    duration = motion.n_frames / motion.fps
    n_out = max(1, int(math.floor(duration * fps + 1e-9)))
    index = np.minimum(np.round(np.arange(n_out) * motion.fps / fps).astype(int),
                       motion.n_frames - 1)
    out = motion.frames(index)
    out.fps = float(fps)
    return out


def find_bvh_files(folder) -> List[str]:
    """Sorted paths of every .bvh file below ``folder``; FileNotFoundError if none."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f'motion folder {folder!r} does not exist')
    files = sorted(glob.glob(os.path.join(folder, '**', '*.bvh'), recursive=True))
    if not files:
        raise FileNotFoundError(f'no .bvh files found below {folder!r}')
    return files


def load_mocap_folder(folder, fps: Optional[float] = DEFAULT_FPS,
                      subjects: Optional[Sequence[str]] = None,
                      conventions: Optional[Sequence[str]] = None,
                      max_frames_per_clip: Optional[int] = None) -> List[Clip]:
    """Reads every BVH file below ``folder`` into clips.

    Args:
      folder: directory searched recursively for ``*.bvh``; a ``MANIFEST.tsv`` beside the files
        (columns ``file``, ``first_frame_tpose``, ``cmu_capture_fps``) is used when present.
      fps: resample every clip to this rate (None keeps the file's rate).
      subjects: keep only these subject ids (from file names ``<subject>_<trial>.bvh``).
      conventions: keep only these BVH conventions (e.g. ['cmu_mb2']); None keeps all.
      max_frames_per_clip: evenly subsample longer clips to at most this many frames.

    Returns:
      Clips sorted by path, T-pose frame and implausible frames removed.
    """
    root = pathlib.Path(folder)
    manifest = _read_manifest(root)
    clips = []
    for path in find_bvh_files(root):
        subject = bvh_lib.subject_of(path)
        if subjects is not None and subject not in subjects:
            continue
        rel = os.path.relpath(path, root).replace(os.sep, '/')
        row = manifest.get(str(pathlib.Path(path).resolve()), {})
        true_fps = row.get('cmu_capture_fps')
        motion = bvh_lib.load_bvh(path, fps=float(true_fps) if true_fps else 'auto')
        if conventions is not None and motion.convention not in conventions:
            continue
        tpose_flag = row.get('first_frame_tpose')
        drop_first = ((tpose_flag == '1') if tpose_flag in ('0', '1')
                      else _first_frame_is_rest_pose(motion))
        if drop_first:
            motion = motion.frames(slice(_settled_start(motion), None))
        motion = motion.frames(plausible_frames(motion))
        if fps is not None:
            motion = resample(motion, fps)
        if max_frames_per_clip is not None and motion.n_frames > max_frames_per_clip:
            idx = np.linspace(0, motion.n_frames - 1, max_frames_per_clip).round().astype(int)
            motion = motion.frames(idx)
        if motion.n_frames == 0:
            continue
        clips.append(Clip(subject, os.path.splitext(rel)[0], motion))
    return clips


def split_by_subject(clips: Sequence[Clip], test_subjects: Optional[Sequence[str]] = None,
                     test_fraction: float = 0.25, seed: int = 0) -> Tuple[List[Clip], List[Clip]]:
    """Subject-wise split: no subject appears in both parts.

    Args:
      clips: the clips.
      test_subjects: explicit held-out subjects; otherwise ``test_fraction`` of the subjects
        (at least one, at most all but one) chosen with ``seed``.

    Returns:
      (train clips, test clips).
    """
    subjects = sorted({c.subject for c in clips})
    if test_subjects is None:
        if len(subjects) < 2:
            raise ValueError(f'a subject-wise split needs at least 2 subjects, got {subjects}')
        n_test = min(len(subjects) - 1, max(1, int(round(test_fraction * len(subjects)))))
        order = np.random.default_rng(seed).permutation(len(subjects))
        test_subjects = [subjects[i] for i in sorted(order[:n_test])]
    unknown = set(test_subjects) - set(subjects)
    if unknown:
        raise ValueError(f'test_subjects {sorted(unknown)} not among the clips\' subjects {subjects}')
    test = [c for c in clips if c.subject in test_subjects]
    train = [c for c in clips if c.subject not in test_subjects]
    return train, test


def default_mocap_dir(repository=None) -> Optional[str]:
    """``shared/data/cmu_mocap`` beside the repository (the folder holding the ``posekit`` package, or
    ``repository``), if present; never resolved from the working directory. None otherwise."""
    root = pathlib.Path(repository) if repository is not None else pathlib.Path(__file__).resolve().parents[2]
    candidate = root.parent / 'shared' / 'data' / 'cmu_mocap'
    return str(candidate) if candidate.is_dir() else None


# --------------------------------------------------------------------------------------------
# Procedural motion (the embedded default)
# --------------------------------------------------------------------------------------------

# The cmu_31 skeleton in BVH joint names (cmu_mb2 release) with End Sites, rest pose = T-pose
# facing +z, left towards +x, y up. Offsets in mm for a 1.75 m adult; our own round numbers.
_TEMPLATE = [
    # name, parent, offset (mm)
    ('Hips', None, (0, 0, 0)),
    ('LHipJoint', 'Hips', (0, 0, 0)),
    ('LeftUpLeg', 'LHipJoint', (90, -85, 20)),
    ('LeftLeg', 'LeftUpLeg', (0, -430, 0)),
    ('LeftFoot', 'LeftLeg', (0, -420, 0)),
    ('LeftToeBase', 'LeftFoot', (0, -45, 120)),
    ('LeftToeBase_End', 'LeftToeBase', (0, 0, 60)),
    ('RHipJoint', 'Hips', (0, 0, 0)),
    ('RightUpLeg', 'RHipJoint', (-90, -85, 20)),
    ('RightLeg', 'RightUpLeg', (0, -430, 0)),
    ('RightFoot', 'RightLeg', (0, -420, 0)),
    ('RightToeBase', 'RightFoot', (0, -45, 120)),
    ('RightToeBase_End', 'RightToeBase', (0, 0, 60)),
    ('LowerBack', 'Hips', (0, 0, 0)),
    ('Spine', 'LowerBack', (0, 120, -5)),
    ('Spine1', 'Spine', (0, 120, -5)),
    ('Neck', 'Spine1', (0, 0, 0)),
    ('Neck1', 'Neck', (0, 90, 5)),
    ('Head', 'Neck1', (0, 90, 0)),
    ('Head_End', 'Head', (0, 95, 0)),
    ('LeftShoulder', 'Spine1', (0, 0, 0)),
    ('LeftArm', 'LeftShoulder', (185, 45, -10)),
    ('LeftForeArm', 'LeftArm', (280, 0, 0)),
    ('LeftHand', 'LeftForeArm', (250, 0, 0)),
    ('LeftFingerBase', 'LeftHand', (0, 0, 0)),
    ('LeftHandIndex1', 'LeftFingerBase', (40, 0, 0)),
    ('LeftHandIndex1_End', 'LeftHandIndex1', (35, 0, 0)),
    ('LThumb', 'LeftHand', (0, 0, 0)),
    ('LThumb_End', 'LThumb', (30, 0, 30)),
    ('RightShoulder', 'Spine1', (0, 0, 0)),
    ('RightArm', 'RightShoulder', (-185, 45, -10)),
    ('RightForeArm', 'RightArm', (-280, 0, 0)),
    ('RightHand', 'RightForeArm', (-250, 0, 0)),
    ('RightFingerBase', 'RightHand', (0, 0, 0)),
    ('RightHandIndex1', 'RightFingerBase', (-40, 0, 0)),
    ('RightHandIndex1_End', 'RightHandIndex1', (-35, 0, 0)),
    ('RThumb', 'RightHand', (0, 0, 0)),
    ('RThumb_End', 'RThumb', (-30, 0, 30)),
]
_NAMES = [t[0] for t in _TEMPLATE]
_PARENTS = [-1 if t[1] is None else _NAMES.index(t[1]) for t in _TEMPLATE]
_OFFSETS = np.array([t[2] for t in _TEMPLATE], np.float64)
_IS_END = np.array([n.endswith(bvh_lib.END_SITE_SUFFIX) for n in _NAMES])
_HIP_HEIGHT_MM = 85 + 430 + 420 + 45  # pelvis above the floor in the rest pose

MOTION_KINDS = ('walk', 'run', 'jumping_jacks', 'squat', 'reach', 'turn', 'dance', 'kick')


def _smooth_noise(rng, n_frames, fps, n_channels, amplitude, max_hz=0.8, n_terms=3):
    """[T, n_channels] sums of random low-frequency sinusoids (radians)."""
    t = np.arange(n_frames) / fps
    out = np.zeros((n_frames, n_channels))
    for _ in range(n_terms):
        freq = rng.uniform(0.1, max_hz, n_channels)
        phase = rng.uniform(0, 2 * np.pi, n_channels)
        out += np.sin(2 * np.pi * freq * t[:, None] + phase) / n_terms
    return out * amplitude


def _rot(axis, angle):
    return geometry.axis_rotation(axis, angle)


def _procedural_clip(kind: str, n_frames: int, fps: float, rng: np.random.Generator,
                     scale: np.ndarray) -> bvh_lib.Motion:
    """One clip of ``kind``; ``scale`` [J] multiplies each bone's rest offset."""
    n_joints = len(_NAMES)
    j = {n: i for i, n in enumerate(_NAMES)}
    t = np.arange(n_frames) / fps
    local = np.broadcast_to(np.eye(3), (n_frames, n_joints, 3, 3)).copy()
    d = np.deg2rad

    def set_rot(name, matrix):
        local[:, j[name]] = matrix

    # Per-joint smooth variation so no two clips are alike.
    noise = _smooth_noise(rng, n_frames, fps, 24, d(8.0))
    cadence = rng.uniform(0.8, 1.1) * (1.5 if kind == 'run' else 1.0)
    phase = 2 * np.pi * cadence * t
    speed = {'walk': rng.uniform(900, 1500), 'run': rng.uniform(2500, 3500)}.get(kind, 0.0)

    hip_flex = np.zeros((n_frames, 2))
    knee = np.zeros((n_frames, 2))
    hip_abd = np.zeros((n_frames, 2))
    arm_down = np.full((n_frames, 2), d(75.0))  # arms lowered from the T-pose
    arm_swing = np.zeros((n_frames, 2))
    elbow = np.full((n_frames, 2), d(15.0))
    spine_bend = np.zeros(n_frames)
    spine_twist = np.zeros(n_frames)
    root_drop = np.zeros(n_frames)
    root_yaw = np.full(n_frames, rng.uniform(-np.pi, np.pi))
    root_lift = np.zeros(n_frames)

    if kind in ('walk', 'run'):
        amp = d(25.0) if kind == 'walk' else d(40.0)
        for s, sgn in ((0, 1.0), (1, -1.0)):
            hip_flex[:, s] = sgn * amp * np.sin(phase) + d(5.0)
            knee[:, s] = d(30.0 if kind == 'walk' else 60.0) * np.clip(
                np.sin(phase * sgn - 0.8 * sgn), 0, None) + d(5.0)
            arm_swing[:, s] = -sgn * amp * 0.8 * np.sin(phase)
            elbow[:, s] = d(20.0 if kind == 'walk' else 80.0)
        spine_bend[:] = d(5.0 if kind == 'walk' else 15.0)
        root_drop = 20.0 * np.abs(np.sin(phase)) * (2.0 if kind == 'run' else 1.0)
        root_yaw = root_yaw[0] + np.cumsum(np.full(n_frames, rng.uniform(-0.3, 0.3) / fps))
    elif kind == 'jumping_jacks':
        u = 0.5 - 0.5 * np.cos(phase)
        hip_abd[:] = (d(20.0) * u)[:, None]
        arm_down = (d(80.0) - d(150.0) * u)[:, None] * np.ones((1, 2))
        root_lift = 120.0 * np.abs(np.sin(phase))
    elif kind == 'squat':
        u = 0.5 - 0.5 * np.cos(phase * 0.5)
        hip_flex[:] = (d(95.0) * u)[:, None]
        knee[:] = (d(120.0) * u)[:, None]
        spine_bend = d(30.0) * u
        arm_swing[:] = (d(80.0) * u)[:, None]
        root_drop = 420.0 * u
    elif kind == 'reach':
        side = rng.integers(2)
        u = 0.5 - 0.5 * np.cos(phase * 0.5)
        arm_down[:, side] = d(75.0) - d(rng.uniform(60, 160)) * u
        arm_swing[:, side] = d(rng.uniform(0, 90)) * u
        elbow[:, side] = d(60.0) * (1 - u) + d(5.0)
        spine_bend = d(rng.uniform(-10, 40)) * u
        spine_twist = d(rng.uniform(-30, 30)) * u
    elif kind == 'turn':
        root_yaw = root_yaw[0] + np.cumsum(np.full(n_frames, rng.uniform(-2.0, 2.0) / fps))
        hip_flex[:, 0] = d(15.0) * np.clip(np.sin(phase), 0, None)
        hip_flex[:, 1] = d(15.0) * np.clip(-np.sin(phase), 0, None)
        knee[:] = hip_flex * 1.5
    elif kind == 'dance':
        big = _smooth_noise(rng, n_frames, fps, 12, 1.0, max_hz=1.2)
        hip_flex = d(35.0) * big[:, 0:2] + d(10.0)
        knee = d(50.0) * np.abs(big[:, 2:4])
        arm_down = d(75.0) - d(120.0) * (0.5 + 0.5 * big[:, 4:6])
        arm_swing = d(70.0) * big[:, 6:8]
        elbow = d(70.0) * np.abs(big[:, 8:10]) + d(5.0)
        spine_twist = d(35.0) * big[:, 10]
        spine_bend = d(15.0) * big[:, 11]
        root_yaw = root_yaw[0] + d(90.0) * big[:, 10]
    elif kind == 'kick':
        side = rng.integers(2)
        u = np.clip(np.sin(phase * 0.7), 0, None) ** 2
        hip_flex[:, side] = d(rng.uniform(50, 100)) * u
        knee[:, side] = d(70.0) * (1 - u) * (u > 0.05)
        arm_down[:] = d(45.0)
        arm_swing[:, 1 - side] = d(40.0) * u
        spine_bend = -d(10.0) * u
    else:
        raise ValueError(f'kind must be one of {MOTION_KINDS}, got {kind!r}')

    hip_flex = hip_flex + noise[:, 0:2]
    knee = np.clip(knee + np.abs(noise[:, 2:4]), 0, d(150.0))
    hip_abd = hip_abd + 0.5 * noise[:, 4:6]
    arm_down = arm_down + noise[:, 6:8]
    arm_swing = arm_swing + noise[:, 8:10]
    elbow = np.clip(elbow + np.abs(noise[:, 10:12]), 0, d(150.0))
    spine_bend = spine_bend + 0.5 * noise[:, 12]
    spine_twist = spine_twist + noise[:, 13]
    head_nod, head_turn = noise[:, 14], 2.0 * noise[:, 15]
    wrist = noise[:, 16:18] * 2.0
    ankle = noise[:, 18:20]

    for s, (side, sgn) in enumerate((('Left', 1.0), ('Right', -1.0))):
        # Hip: flexion swings the leg forward (+z): rotation about -x; abduction about z.
        set_rot(f'{side}UpLeg', _rot('Z', sgn * hip_abd[:, s]) @ _rot('X', -hip_flex[:, s]))
        set_rot(f'{side}Leg', _rot('X', knee[:, s]))
        set_rot(f'{side}Foot', _rot('X', ankle[:, s] - 0.3 * knee[:, s] + 0.2 * hip_flex[:, s]))
        # Arm in the T-pose points along sgn*x; lowering rotates about z, swinging about x.
        set_rot(f'{side}Arm', _rot('X', -arm_swing[:, s]) @ _rot('Z', -sgn * arm_down[:, s]))
        set_rot(f'{side}ForeArm', _rot('Y', -sgn * elbow[:, s]))
        set_rot(f'{side}Hand', _rot('Z', sgn * wrist[:, s]))
    set_rot('Spine', _rot('Y', 0.5 * spine_twist) @ _rot('X', 0.5 * spine_bend))
    set_rot('Spine1', _rot('Y', 0.5 * spine_twist) @ _rot('X', 0.5 * spine_bend))
    set_rot('Neck1', _rot('X', 0.5 * head_nod))
    set_rot('Head', _rot('Y', head_turn) @ _rot('X', 0.5 * head_nod))
    local[:, j['Hips']] = _rot('Y', root_yaw)

    offsets = _OFFSETS * scale[:, None]
    hip_height = _HIP_HEIGHT_MM * float(np.mean(scale[[j['LeftLeg'], j['LeftFoot']]]))
    heading = np.stack([np.sin(root_yaw), np.zeros(n_frames), np.cos(root_yaw)], -1)
    travel = np.cumsum(heading * speed / fps, axis=0)
    translation = np.zeros((n_frames, n_joints, 3))
    translation[:, 0] = travel + np.stack(
        [np.zeros(n_frames), hip_height - root_drop + root_lift, np.zeros(n_frames)], -1)
    positions, rotations = bvh_lib.forward_kinematics(_PARENTS, offsets, local, translation)
    # Put the lowest point of the clip's feet on the floor frame by frame where no jump happens.
    floor = positions[..., 1].min(axis=1)
    positions[..., 1] -= np.minimum(floor, 0.0 if kind == 'jumping_jacks' else floor)[:, None]
    return bvh_lib.Motion(
        positions=positions, joint_names=list(_NAMES), parents=list(_PARENTS), fps=float(fps),
        rotations=rotations, offsets=offsets, is_end_site=_IS_END.copy(), unit_mm=1.0,
        skeleton='cmu_31', convention='procedural', source=f'procedural:{kind}')


def procedural_motions(n_subjects: int = 8, clips_per_subject: int = 6, seconds: float = 6.0,
                       fps: float = DEFAULT_FPS, seed: int = 0,
                       kinds: Sequence[str] = MOTION_KINDS) -> List[Clip]:
    """Procedural clips for ``n_subjects`` subjects with their own body proportions.

    Deterministic in ``seed``. Subject ids are 'p00', 'p01', ...; each subject gets
    ``clips_per_subject`` clips cycling through ``kinds`` from a subject-specific start.

    Returns:
      Clips on the cmu_31 skeleton (cmu_mb2 BVH joint names, End Sites included), mm, y up.
    """
    if n_subjects < 1 or clips_per_subject < 1:
        raise ValueError(f'n_subjects and clips_per_subject must be >= 1, got '
                         f'{n_subjects}, {clips_per_subject}')
    for k in kinds:
        if k not in MOTION_KINDS:
            raise ValueError(f'kinds must be among {MOTION_KINDS}, got {k!r}')
    n_frames = max(2, int(round(seconds * fps)))
    clips = []
    for s in range(n_subjects):
        rng = np.random.default_rng([seed, s])
        height = rng.uniform(0.88, 1.1)
        scale = np.full(len(_NAMES), height)
        # Proportions: limbs, trunk, shoulders and hips vary independently by a few percent.
        groups = {
            'legs': ['LeftLeg', 'LeftFoot', 'RightLeg', 'RightFoot'],
            'arms': ['LeftForeArm', 'LeftHand', 'RightForeArm', 'RightHand'],
            'trunk': ['Spine', 'Spine1', 'Neck1', 'Head'],
            'width': ['LeftUpLeg', 'RightUpLeg', 'LeftArm', 'RightArm'],
        }
        for names in groups.values():
            factor = rng.uniform(0.92, 1.08)
            for n in names:
                scale[_NAMES.index(n)] *= factor
        start = int(rng.integers(len(kinds)))
        for c in range(clips_per_subject):
            kind = kinds[(start + c) % len(kinds)]
            motion = _procedural_clip(kind, n_frames, fps, rng, scale)
            clips.append(Clip(f'p{s:02d}', f'p{s:02d}_{c:02d}_{kind}', motion))
    return clips


def load_motions(mocap_dir: Optional[str] = None, fps: float = DEFAULT_FPS, seed: int = 0,
                 max_frames_per_clip: Optional[int] = None, **procedural_kwargs) -> List[Clip]:
    """Real motion from ``mocap_dir`` if given, else procedural motion (the embedded default)."""
    if mocap_dir:
        return load_mocap_folder(mocap_dir, fps=fps, max_frames_per_clip=max_frames_per_clip)
    return procedural_motions(fps=fps, seed=seed, **procedural_kwargs)
