"""BVH motion-capture reader: HIERARCHY + MOTION -> joint positions in millimetres.

``load_bvh(path)`` parses any channel order and rotation order per joint (3 or 6 channels, End
Sites), runs forward kinematics vectorised over frames and returns a :class:`Motion`.

Forward kinematics (BVH convention, column vectors): a joint's local rotation is the product of its
rotation channels in the order listed, e.g. ``Zrotation Yrotation Xrotation`` gives
``Rz(a) @ Ry(b) @ Rx(c)`` (degrees in the file); its local translation is its OFFSET plus its
position channels, if any. ``R_global[j] = R_global[parent] @ R_local[j]`` and
``p[j] = p[parent] + R_global[parent] @ translation[j]``.

End Sites become joints named ``<parent name>_End`` (with ``Motion.is_end_site`` set), because they
carry the extremities (top of the head, toe and finger tips).

Unit rule (``unit='auto'``, the default):

1. Known CMU conventions are recognised by their joint names:
   the ASF-derived skeletons (cmu_mb2 ``Hips/LHipJoint/LeftUpLeg``, cmu_3dsmax ``LeftHip``,
   cmu_amc2bvh ``lfemur``) are in CMU units, 1 unit = 0.056444 m (the CMU FAQ: the calibrated
   skeleton is scaled by 1/0.45 from inches); the Daz-friendly release (``hip/abdomen/chest``) is in
   centimetres.
2. Any other file: the unit among mm, cm, m, inch and CMU units that makes the skeleton's rest-pose
   height closest to ``TYPICAL_HEIGHT_MM`` (1.7 m), provided the result lies in 1.0-2.5 m; otherwise
   ``ValueError`` asking for an explicit unit.

An explicit ``unit`` (a name in ``UNITS_MM`` or millimetres per file unit as a float) overrides the
rule. The world frame is the file's (BVH files are y-up; CMU's are y-up with the floor at y = 0).

Frame rate rule (``fps='auto'``): the header's ``1 / Frame Time``, except for the plain CMU
``amc2bvh`` conversion, whose header always says 30 fps (its default) although the frames are the
CMU capture at ``CMU_CAPTURE_FPS`` = 120; an explicit ``fps`` overrides both.
"""

from __future__ import annotations

import codecs
import dataclasses
import math
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from posekit import geometry, skeletons

MM_PER_CMU_UNIT = 56.444
UNITS_MM: Dict[str, float] = {
    'mm': 1.0, 'cm': 10.0, 'm': 1000.0, 'inch': 25.4, 'cmu': MM_PER_CMU_UNIT,
}
TYPICAL_HEIGHT_MM = 1700.0
CMU_CAPTURE_FPS = 120.0
AMC2BVH_DEFAULT_FRAME_TIME = 0.033333
PLAUSIBLE_HEIGHT_MM = (1000.0, 2500.0)
END_SITE_SUFFIX = '_End'

# Known conventions: (format name, unit name). The format is identified by joint names.
_CONVENTION_UNITS = {'cmu_31': 'cmu', 'cmu_daz_43': 'cm'}

_POSITION_CHANNELS = ('Xposition', 'Yposition', 'Zposition')
_ROTATION_CHANNELS = ('Xrotation', 'Yrotation', 'Zrotation')


@dataclasses.dataclass
class Motion:
    """A motion clip.

    Attributes:
      positions: [T, J, 3] float64 joint positions, millimetres, the file's world frame (y up for BVH).
      joint_names: J names as in the file; End Sites are ``<parent>_End``.
      parents: J parent indices, -1 for the root; parents precede children.
      fps: frames per second declared by the file (1 / Frame Time).
      rotations: [T, J, 3, 3] float64 global orientation of each joint's local frame (an End Site
        carries its parent's); ``rotations[t, j] @ v`` maps a vector of joint j's rest frame to the
        world frame.
      offsets: [J, 3] float64 rest offsets from the parent, millimetres.
      is_end_site: [J] bool.
      unit_mm: millimetres per file unit used for the conversion.
      skeleton: registered posekit format of the non-End-Site joints (e.g. 'cmu_31'), or None.
      convention: the BVH release recognised by joint names ('cmu_mb2', 'cmu_3dsmax', 'cmu_amc2bvh',
        'cmu_daz'), or None.
      source: path of the file read, or a description.
    """

    positions: np.ndarray
    joint_names: List[str]
    parents: List[int]
    fps: float
    rotations: Optional[np.ndarray] = None
    offsets: Optional[np.ndarray] = None
    is_end_site: Optional[np.ndarray] = None
    unit_mm: float = 1.0
    skeleton: Optional[str] = None
    convention: Optional[str] = None
    source: str = ''

    @property
    def n_frames(self) -> int:
        return int(self.positions.shape[0])

    def index(self, joint_name: str) -> int:
        """Index of a joint by its file name; ``KeyError`` listing the joints otherwise."""
        try:
            return self.joint_names.index(joint_name)
        except ValueError:
            raise KeyError(
                f'joint {joint_name!r} not in motion {self.source!r}; joints: {self.joint_names}'
            ) from None

    def frames(self, index) -> 'Motion':
        """A new Motion restricted to frames ``index`` (slice, int array or bool mask)."""
        return dataclasses.replace(
            self, positions=self.positions[index],
            rotations=None if self.rotations is None else self.rotations[index])


class _Lines:
    """Line-numbered token reader over the HIERARCHY section."""

    def __init__(self, path: str, lines: Sequence[str]):
        self.path = path
        self.lines = lines
        self.i = 0

    def error(self, message: str, line_index: Optional[int] = None) -> ValueError:
        n = (self.i if line_index is None else line_index) + 1
        return ValueError(f'{self.path}:{n}: malformed BVH: {message}')

    def next_tokens(self) -> List[str]:
        while self.i < len(self.lines):
            tokens = self.lines[self.i].split()
            self.i += 1
            if tokens:
                return tokens
        raise ValueError(f'{self.path}:{len(self.lines)}: malformed BVH: unexpected end of file')

    @property
    def line_no(self) -> int:
        return self.i  # 1-based number of the line last returned


def _parse_floats(reader: _Lines, tokens: Sequence[str], what: str) -> np.ndarray:
    try:
        values = np.array([float(t) for t in tokens], np.float64)
    except ValueError:
        raise reader.error(f'bad number in {what}: {" ".join(tokens)!r}', reader.line_no - 1) from None
    if not np.all(np.isfinite(values)):
        raise reader.error(f'non-finite number in {what}: {" ".join(tokens)!r}', reader.line_no - 1)
    return values


def _parse_hierarchy(reader: _Lines):
    """Returns names, parents, offsets [J,3] (file units), channels per joint, end-site flags and the
    0-based line index of each joint's OFFSET."""
    names: List[str] = []
    parents: List[int] = []
    offsets: List[np.ndarray] = []
    offset_lines: List[int] = []
    channels: List[List[str]] = []
    end_site: List[bool] = []

    tokens = reader.next_tokens()
    if tokens[0].upper() != 'HIERARCHY':
        raise reader.error(f'expected HIERARCHY, got {tokens[0]!r}', reader.line_no - 1)
    tokens = reader.next_tokens()
    if tokens[0] != 'ROOT' or len(tokens) < 2:
        raise reader.error(f'expected ROOT <name>, got {" ".join(tokens)!r}', reader.line_no - 1)

    stack: List[int] = []
    pending = ('ROOT', ' '.join(tokens[1:]), -1)
    while True:
        kind, name, parent = pending
        if kind == 'End':
            base = names[parent] + END_SITE_SUFFIX
            name, k = base, 1
            while name in names:
                k += 1
                name = f'{base}{k}'
        elif name in names:
            raise reader.error(f'duplicate joint name {name!r}', reader.line_no - 1)
        tokens = reader.next_tokens()
        if tokens != ['{']:
            raise reader.error(f'expected "{{" after {kind} {name}, got {" ".join(tokens)!r}',
                               reader.line_no - 1)
        tokens = reader.next_tokens()
        if tokens[0] != 'OFFSET' or len(tokens) != 4:
            raise reader.error(f'expected OFFSET x y z for {name!r}, got {" ".join(tokens)!r}',
                               reader.line_no - 1)
        offset = _parse_floats(reader, tokens[1:], f'OFFSET of {name!r}')
        offset_line = reader.line_no - 1
        joint_channels: List[str] = []
        if kind != 'End':
            tokens = reader.next_tokens()
            if tokens[0] != 'CHANNELS':
                raise reader.error(f'expected CHANNELS for {name!r}, got {" ".join(tokens)!r}',
                                   reader.line_no - 1)
            try:
                count = int(tokens[1])
            except (ValueError, IndexError):
                raise reader.error(f'bad channel count for {name!r}: {" ".join(tokens)!r}',
                                   reader.line_no - 1) from None
            joint_channels = tokens[2:]
            if count != len(joint_channels):
                raise reader.error(
                    f'joint {name!r} declares {count} channels but lists {len(joint_channels)}',
                    reader.line_no - 1)
            if count not in (3, 6):
                raise reader.error(f'joint {name!r} has {count} channels; expected 3 or 6',
                                   reader.line_no - 1)
            for k, c in enumerate(joint_channels):
                if c not in _POSITION_CHANNELS + _ROTATION_CHANNELS:
                    raise reader.error(f'unknown channel {c!r} of joint {name!r}', reader.line_no - 1)
                if c in joint_channels[:k]:
                    raise reader.error(f'joint {name!r} lists channel {c!r} twice', reader.line_no - 1)
        index = len(names)
        names.append(name)
        parents.append(parent)
        offsets.append(offset)
        offset_lines.append(offset_line)
        channels.append(joint_channels)
        end_site.append(kind == 'End')
        stack.append(index)

        # Read children or closing braces until the next joint starts or the hierarchy ends.
        while True:
            tokens = reader.next_tokens()
            head = tokens[0]
            if head == '}':
                stack.pop()
                if not stack:
                    return (names, parents, np.stack(offsets), channels, np.array(end_site),
                            offset_lines)
                continue
            if head == 'JOINT' and len(tokens) >= 2:
                if end_site[stack[-1]]:
                    raise reader.error('End Site cannot have children', reader.line_no - 1)
                pending = ('JOINT', ' '.join(tokens[1:]), stack[-1])
                break
            if head == 'End' and len(tokens) == 2 and tokens[1] == 'Site':
                pending = ('End', '', stack[-1])
                break
            raise reader.error(f'unexpected {" ".join(tokens)!r} in HIERARCHY', reader.line_no - 1)


def _parse_motion(reader: _Lines, n_channels: int) -> Tuple[np.ndarray, float, int]:
    """Returns the channel values [T, C], the frame time (s) and the 0-based line index of frame 0."""
    tokens = reader.next_tokens()
    if tokens[0].upper() != 'MOTION':
        raise reader.error(f'expected MOTION, got {" ".join(tokens)!r}', reader.line_no - 1)
    tokens = reader.next_tokens()
    if tokens[0] != 'Frames:' or len(tokens) != 2 or not tokens[1].isdigit():
        raise reader.error(f'expected "Frames: <n>", got {" ".join(tokens)!r}', reader.line_no - 1)
    n_frames = int(tokens[1])
    tokens = reader.next_tokens()
    if tokens[:2] != ['Frame', 'Time:'] or len(tokens) != 3:
        raise reader.error(f'expected "Frame Time: <s>", got {" ".join(tokens)!r}',
                           reader.line_no - 1)
    frame_time = float(_parse_floats(reader, tokens[2:], 'Frame Time')[0])
    if frame_time <= 0:
        raise reader.error(f'Frame Time must be positive, got {frame_time}', reader.line_no - 1)
    if not math.isfinite(1.0 / frame_time):
        raise reader.error(f'Frame Time {tokens[2]} gives a non-finite frame rate (1 / {frame_time!r})',
                           reader.line_no - 1)

    first = reader.i
    rows = [line for line in reader.lines[first:first + n_frames]]
    # Trailing blank lines are allowed; anything else after the frames is an error.
    rest = [k for k, line in enumerate(reader.lines[first + n_frames:]) if line.strip()]
    if rest:
        raise reader.error(f'{len(rest)} non-empty line(s) after the {n_frames} declared frames',
                           first + n_frames + rest[0])
    if len(rows) < n_frames or any(not r.strip() for r in rows):
        got = sum(1 for r in rows if r.strip())
        raise reader.error(
            f'truncated motion: {n_frames} frames declared, {got} present', first + got)
    text = ' '.join(rows)
    try:
        values = np.array(text.split(), dtype=np.float64)
    except ValueError:
        values = None
    if values is None or values.size != n_frames * n_channels or not np.all(np.isfinite(values)):
        # Locate the first offending line for a precise message.
        for k, row in enumerate(rows):
            toks = row.split()
            if len(toks) != n_channels:
                raise reader.error(
                    f'frame {k} has {len(toks)} values, expected {n_channels} channels', first + k)
            for t in toks:
                try:
                    v = float(t)
                except ValueError:
                    raise reader.error(f'bad number {t!r} in frame {k}', first + k) from None
                if not math.isfinite(v):
                    raise reader.error(f'non-finite value {t!r} in frame {k}', first + k)
        raise reader.error('could not parse motion values', first)  # pragma: no cover
    return values.reshape(n_frames, n_channels), frame_time, first


def resolve_unit(unit: Union[str, float], skeleton: Optional[str] = None,
                 rest_height_units: Optional[float] = None, path: str = '') -> float:
    """Millimetres per file unit, following the module's unit rule."""
    if isinstance(unit, (int, float)) and not isinstance(unit, bool):
        if not unit > 0 or not math.isfinite(unit):
            raise ValueError(f'unit must be a positive number of mm per file unit, got {unit!r}')
        return float(unit)
    if unit != 'auto':
        if unit not in UNITS_MM:
            raise ValueError(f"unit must be 'auto', one of {sorted(UNITS_MM)} or a number of mm, "
                             f'got {unit!r}')
        return UNITS_MM[unit]
    if skeleton in _CONVENTION_UNITS:
        return UNITS_MM[_CONVENTION_UNITS[skeleton]]
    if rest_height_units is None or not rest_height_units > 0:
        raise ValueError(f'{path}: cannot infer the unit of this BVH file; pass unit=...')
    best = min(UNITS_MM.values(),
               key=lambda mm: abs(math.log(rest_height_units * mm / TYPICAL_HEIGHT_MM)))
    height = rest_height_units * best
    if not PLAUSIBLE_HEIGHT_MM[0] <= height <= PLAUSIBLE_HEIGHT_MM[1]:
        raise ValueError(
            f'{path}: rest-pose height is {rest_height_units:.4g} file units; no unit among '
            f'{sorted(UNITS_MM)} gives a human height; pass unit=... explicitly')
    return best


def forward_kinematics(parents: Sequence[int], offsets: np.ndarray, local_rotations: np.ndarray,
                       local_translations: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Global positions and orientations, vectorised over frames.

    Args:
      parents: J parent indices (-1 root), parents before children.
      offsets: [J, 3] rest offsets.
      local_rotations: [T, J, 3, 3].
      local_translations: [T, J, 3] added to the offsets (the root's is its position).

    Returns:
      positions [T, J, 3] (offset units), rotations [T, J, 3, 3].
    """
    n_frames, n_joints = local_rotations.shape[:2]
    positions = np.zeros((n_frames, n_joints, 3))
    rotations = np.zeros((n_frames, n_joints, 3, 3))
    for j, p in enumerate(parents):
        translation = offsets[j] + local_translations[:, j]
        if p == -1:
            positions[:, j] = translation
            rotations[:, j] = local_rotations[:, j]
        else:
            if p >= j:
                raise ValueError(f'parents must precede children; joint {j} has parent {p}')
            positions[:, j] = positions[:, p] + np.einsum('tab,tb->ta', rotations[:, p], translation)
            rotations[:, j] = rotations[:, p] @ local_rotations[:, j]
    return positions, rotations


def _rest_positions(parents, offsets) -> np.ndarray:
    """[J, 3] joint positions of the rest pose (cumulative offsets, offset units)."""
    rest = np.zeros_like(offsets)
    with np.errstate(over='ignore', invalid='ignore'):
        for j, p in enumerate(parents):
            rest[j] = offsets[j] + (rest[p] if p != -1 else 0.0)
    return rest


def _check_rest_pose(reader: _Lines, names, parents, offsets, offset_lines, unit_mm: float) -> None:
    """ValueError at the OFFSET line of the first joint whose rest position (or offset) in mm is not
    finite: values so large that they overflow float64."""
    with np.errstate(over='ignore', invalid='ignore'):
        rest_mm = _rest_positions(parents, offsets) * unit_mm
        offsets_mm = offsets * unit_mm
    bad = ~(np.isfinite(rest_mm).all(-1) & np.isfinite(offsets_mm).all(-1))
    if bad.any():
        j = int(np.argmax(bad))  # parents precede children: the first one is the cause
        raise reader.error(
            f'OFFSET of {names[j]!r} is too large: the rest position is not finite in millimetres '
            f'({unit_mm:g} mm per file unit)', offset_lines[j])


def load_bvh(path: Union[str, os.PathLike], unit: Union[str, float] = 'auto',
             fps: Union[str, float] = 'auto') -> Motion:
    """Reads a BVH file.

    Args:
      path: the .bvh file.
      unit: 'auto' (the module's unit rule), a name in ``UNITS_MM`` or millimetres per file unit.
      fps: 'auto' (the module's frame rate rule) or the true frames per second.

    Returns:
      A :class:`Motion` with positions [T, J, 3] in millimetres (J includes End Sites).

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: malformed file (truncated motion, wrong channel count, a channel listed twice,
        bad or non-finite number, an OFFSET or channel value so large that a position overflows
        float64 in millimetres, a non-positive Frame Time or one whose frame rate 1 / Frame Time
        is not finite), naming the file and the line. A UTF-8 byte-order mark is accepted.
    """
    path = os.fspath(path)
    with open(path, 'rb') as f:
        raw = f.read()
    if raw.startswith(codecs.BOM_UTF8):  # a UTF-8 byte-order mark (written by some Windows tools)
        raw = raw[len(codecs.BOM_UTF8):]
    try:
        text = raw.decode('utf-8')
    except UnicodeDecodeError:
        text = raw.decode('latin-1')
    lines = text.splitlines()
    reader = _Lines(path, lines)
    names, parents, offsets, channels, end_site, offset_lines = _parse_hierarchy(reader)
    n_channels = sum(len(c) for c in channels)
    values, frame_time, first_frame_line = _parse_motion(reader, n_channels)
    n_frames = values.shape[0]
    if n_frames == 0:
        raise reader.error('no frames in MOTION', reader.i)

    n_joints = len(names)
    local_rot = np.broadcast_to(np.eye(3), (n_frames, n_joints, 3, 3)).copy()
    local_trans = np.zeros((n_frames, n_joints, 3))
    col = 0
    for j, chans in enumerate(channels):
        rot_axes = [c[0] for c in chans if c in _ROTATION_CHANNELS]
        rot_cols = [col + k for k, c in enumerate(chans) if c in _ROTATION_CHANNELS]
        for k, c in enumerate(chans):
            if c in _POSITION_CHANNELS:
                local_trans[:, j, _POSITION_CHANNELS.index(c)] = values[:, col + k]
        if rot_axes:
            local_rot[:, j] = geometry.euler_to_matrix(
                np.deg2rad(values[:, rot_cols]), ''.join(rot_axes))
        col += len(chans)

    joint_only = [n for n, e in zip(names, end_site) if not e]
    try:
        skeleton, convention, _ = skeletons.identify_bvh_skeleton(joint_only)
    except KeyError:
        skeleton, convention = None, None
    rest = _rest_positions(parents, offsets)
    if not np.all(np.isfinite(rest)):
        _check_rest_pose(reader, names, parents, offsets, offset_lines, 1.0)
    unit_mm = resolve_unit(unit, skeleton, float(rest[:, 1].max() - rest[:, 1].min()), path)
    _check_rest_pose(reader, names, parents, offsets, offset_lines, unit_mm)
    if fps == 'auto':
        fps_value = 1.0 / frame_time
        if convention == 'cmu_amc2bvh' and abs(frame_time - AMC2BVH_DEFAULT_FRAME_TIME) < 1e-5:
            fps_value = CMU_CAPTURE_FPS
    elif (isinstance(fps, (int, float)) and not isinstance(fps, bool) and fps > 0
          and math.isfinite(fps)):
        fps_value = float(fps)
    else:
        raise ValueError(f"fps must be 'auto' or a positive finite number, got {fps!r}")
    with np.errstate(over='ignore', invalid='ignore'):
        positions, rotations = forward_kinematics(parents, offsets, local_rot, local_trans)
        positions_mm = positions * unit_mm
    finite = np.isfinite(positions_mm).all(-1)
    if not finite.all():
        t, j = (int(i) for i in np.argwhere(~finite)[0])
        raise reader.error(
            f'frame {t}: the position of joint {names[j]!r} is not finite in millimetres (channel '
            f'values too large: float64 overflow)', first_frame_line + t)
    return Motion(
        positions=positions_mm, joint_names=names, parents=list(parents),
        fps=fps_value, rotations=rotations, offsets=offsets * unit_mm,
        is_end_site=end_site, unit_mm=unit_mm, skeleton=skeleton, convention=convention,
        source=path)


_TRIAL_RE = re.compile(r'^(\d+)_(\d+)')


def subject_of(path: Union[str, os.PathLike]) -> str:
    """CMU subject id of a file named like '<subject>_<trial>.bvh' (e.g. '01'), else the stem."""
    stem = os.path.splitext(os.path.basename(os.fspath(path)))[0]
    m = _TRIAL_RE.match(stem)
    return m.group(1) if m else stem
