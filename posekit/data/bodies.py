"""Body landmarks and per-format joint definitions: how "the same" joint differs between datasets.

Real datasets label the "same" joint differently: a Human3.6M hip is not an SMPL hip, a COCO
hip is on the skin. This module models that on top of a motion (:class:`posekit.data.bvh.Motion`,
mm, world y up):

1. **Segments.** Each landmark rides on one bone (segment) of the motion's skeleton. A vector
   ``v`` given in the *anatomical frame* (the subject standing, arms hanging, facing +z, the
   subject's left = +x, y up, mm) maps to the world as ``rotations[t, j] @ A_j @ (s * v)``:
   ``rotations[t, j]`` is the motion's global joint frame (identity in the rest pose, which
   faces +z with left = +x in every supported convention), ``A_j`` the minimal rotation from the
   segment's anatomical direction (e.g. an upper arm points down, (0, -1, 0)) to its rest-pose
   direction in this convention (cmu_mb2 rests in a T-pose with splayed legs, cmu_3dsmax with
   the arms down, cmu_daz in a T-pose), and ``s`` the body scale (the rest-pose hip-knee-ankle
   length over ``REFERENCE_LEG_MM``).
2. **Landmarks** (anatomical points, e.g. hip joint centre, acromion, vertex of the head) are
   an *anchor* (a weighted mean of the motion's joints) plus such an offset, defined per
   skeleton convention (``cmu_31``: cmu_mb2, cmu_3dsmax, cmu_amc2bvh and procedural motion;
   ``cmu_daz_43``: the Daz figure, whose trunk joints sit elsewhere, e.g. its ``neck`` is at the
   top of the thorax while the CMU ``Neck`` coincides with ``Spine1``, and whose head has no End
   Site). See ``LANDMARKS``.
3. **Formats.** Every format's joint is a landmark plus a format-specific offset in the same
   segment frame (table below), so same-named joints of two formats differ systematically
   (typically 2-8 cm, more for hips and head) while an affine combination of one format's
   joints predicts another's closely (the premise of the affine-combining autoencoder).
   ``cmu_31`` of a cmu_31 motion is the motion's own joints; of a Daz motion, the table's
   approximation.

Optional per-subject body shape (:func:`body_shape`, deterministic in the subject id) scales the
offsets' breadth/depth (x, z) and height (y) by a few percent.

Format definitions (left joints; right joints mirror x; offsets in the anatomical frame of the
landmark's segment: x = subject's left, y = up, z = forward, mm for a body of scale 1):

.. code-block:: text

    format           joint  landmark    offset (x, y, z) mm
    h36m_17          pelv   pelvis      (0, -25, 0)
    h36m_17          lhip   hip         (30, -25, 0)
    h36m_17          lkne   knee        (0, 20, -10)
    h36m_17          lank   ankle       (0, 20, -10)
    h36m_17          spin   lumbar      (0, 60, -15)
    h36m_17          thor   neckbase    (0, 10, -15)
    h36m_17          nose   chin        (0, 25, 0)
    h36m_17          htop   htop        (0, -5, 15)
    h36m_17          lsho   sho         (0, 25, -20)
    h36m_17          lelb   elb         (0, 20, -10)
    h36m_17          lwri   wri         (0, 15, 10)
    h36m_16          (h36m_17 without nose, same definitions)
    smpl_24          pelv   pelvis      (0, 60, -10)
    smpl_24          lhip   hip         (-10, 25, 0)
    smpl_24          spi1   lumbar      (0, -10, -10)
    smpl_24          lkne   knee        (0, -10, 10)
    smpl_24          spi2   chest       (0, -45, -5)
    smpl_24          lank   ankle       (0, -15, 10)
    smpl_24          spi3   chest       (0, 25, 0)
    smpl_24          ltoe   ball        (0, 0, 20)
    smpl_24          neck   neckmid     (0, -25, -20)
    smpl_24          lcla   clav        (40, 0, -45)
    smpl_24          head   headc       (0, -45, -10)
    smpl_24          lsho   sho         (-15, -10, 5)
    smpl_24          lelb   elb         (0, -15, 10)
    smpl_24          lwri   wri         (0, -10, -10)
    smpl_24          lhan   knuck       (0, 25, 0)
    coco_19          neck   neckbase    (0, 25, 25)
    coco_19          nose   nose        (0, 0, 0)
    coco_19          pelv   pelvis      (0, 55, 5)
    coco_19          lsho   acro        (15, -20, 0)
    coco_19          lelb   elb         (20, 0, 5)
    coco_19          lwri   wri         (15, -15, 0)
    coco_19          lhip   hip         (45, 55, 5)
    coco_19          lkne   knee        (0, -10, 25)
    coco_19          lank   ankle       (20, -5, 0)
    coco_19          leye   eye         (0, 0, 0)
    coco_19          lear   ear         (0, 0, 0)
    mpi_inf_3dhp_17  htop   htop        (0, -20, 25)
    mpi_inf_3dhp_17  neck   neckbase    (0, 45, 0)
    mpi_inf_3dhp_17  lsho   sho         (20, 20, 5)
    mpi_inf_3dhp_17  lelb   elb         (0, -15, 0)
    mpi_inf_3dhp_17  lwri   wri         (0, -25, 0)
    mpi_inf_3dhp_17  lhip   hip         (10, 0, 25)
    mpi_inf_3dhp_17  lkne   knee        (-5, -25, 0)
    mpi_inf_3dhp_17  lank   ankle       (0, -30, 0)
    mpi_inf_3dhp_17  pelv   pelvis      (0, 15, 20)
    mpi_inf_3dhp_17  spin   lumbar      (0, 110, 0)
    mpi_inf_3dhp_17  head   headc       (0, -10, 30)
    cmu_31 (Daz)     pelv   pelvis      (0, 100, -10)
    cmu_31 (Daz)     lhipjoint pelvis      (0, 100, -10)
    cmu_31 (Daz)     lhip   hip         (0, 0, 0)
    cmu_31 (Daz)     lkne   knee        (0, 0, 0)
    cmu_31 (Daz)     lank   ankle       (0, 0, 0)
    cmu_31 (Daz)     ltoe   ball        (0, 0, 0)
    cmu_31 (Daz)     back   pelvis      (0, 100, -10)
    cmu_31 (Daz)     spin   lumbar      (0, 45, -10)
    cmu_31 (Daz)     spi1   chest       (0, 0, 0)
    cmu_31 (Daz)     neck   chest       (0, 0, 0)
    cmu_31 (Daz)     nec1   neckmid     (0, -30, 0)
    cmu_31 (Daz)     head   skullbase   (0, 0, 0)
    cmu_31 (Daz)     lcla   chest       (0, 0, 0)
    cmu_31 (Daz)     lsho   sho         (0, 0, 0)
    cmu_31 (Daz)     lelb   elb         (0, 0, 0)
    cmu_31 (Daz)     lwri   wri         (0, 0, 0)
    cmu_31 (Daz)     lhan   wri         (0, 0, 0)
    cmu_31 (Daz)     lfin   knuck       (0, 45, 0)
    cmu_31 (Daz)     lthu   wri         (0, 0, 0)

Measured with :func:`disagreement_table` (subject shapes on; procedural motion and the CMU
folders in ``../shared/data``): same-named joints of two default formats differ by 29-47 mm on
average per pair (pelvis 16-85 mm, hips 41-81 mm, head 53 mm, elbows 10-40 mm); an affine
combination of one format's joints fitted on half of the poses predicts the other's on the
other half to 1-5 mm (procedural) or 4-11 mm (CMU), a 4-22x reduction.

The landmarks themselves (anchors and offsets per convention) are in ``LANDMARKS``; names:
centre ``pelvis lumbar chest neckbase neckmid skullbase headc htop nose chin`` and sided
(``l``/``r`` prefix) ``hip asis troch knee ankle heel ball toetip clav sho acro elb wri knuck
eye ear``.

Example::

    joints = format_joints(motion, 'h36m_17')             # [T, 17, 3] mm, world
    space_joints = all_format_joints(motion, DEFAULT_FORMATS)  # [T, J_all, 3]
    poses = {f: format_joints(motion, f) for f in DEFAULT_FORMATS}
    print(format_table(disagreement_table(poses)))          # same-named joint distances
"""

from __future__ import annotations

import functools
import zlib
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from posekit import geometry, skeletons
from posekit.data import bvh as bvh_lib

DEFAULT_FORMATS = ('h36m_17', 'smpl_24', 'coco_19', 'mpi_inf_3dhp_17')
"""The default multi-dataset joint space (data contract)."""

SUPPORTED_FORMATS = ('h36m_17', 'h36m_16', 'smpl_24', 'coco_19', 'mpi_inf_3dhp_17', 'cmu_31')
"""Formats :func:`format_joints` can produce."""

REFERENCE_LEG_MM = 840.0
"""Rest-pose hip-knee-ankle length of the reference body the offsets are written for (scale 1)."""

SHAPE_XZ_RANGE = (0.88, 1.12)
SHAPE_Y_RANGE = (0.95, 1.05)
"""Ranges of the per-subject body-shape factors on offsets (breadth/depth x, z; height y)."""

Vec = Tuple[float, float, float]

# ----------------------------------------------------------------------------------------------
# Segments: the joint whose rotation carries an offset, and its anatomical direction.
# ----------------------------------------------------------------------------------------------

_DOWN = (0.0, -1.0, 0.0)

# segment -> {convention: (joint whose rotation is used, child joint giving its rest direction)}
# and the anatomical direction (None: no alignment, the rest pose already is anatomical).
_SEGMENTS: Dict[str, Tuple[Dict[str, Tuple[str, Optional[str]]], Optional[Vec]]] = {
    'pelvis': ({'cmu_31': ('pelv', None), 'cmu_daz_43': ('pelv', None)}, None),
    'abdomen': ({'cmu_31': ('spin', None), 'cmu_daz_43': ('abdo', None)}, None),
    'chest': ({'cmu_31': ('spi1', None), 'cmu_daz_43': ('ches', None)}, None),
    'neck': ({'cmu_31': ('nec1', None), 'cmu_daz_43': ('neck', None)}, None),
    'head': ({'cmu_31': ('head', None), 'cmu_daz_43': ('head', None)}, None),
    'lclav': ({'cmu_31': ('lcla', None), 'cmu_daz_43': ('lcla', None)}, None),
    'luarm': ({'cmu_31': ('lsho', 'lelb'), 'cmu_daz_43': ('lsho', 'lelb')}, _DOWN),
    'lfarm': ({'cmu_31': ('lelb', 'lwri'), 'cmu_daz_43': ('lelb', 'lwri')}, _DOWN),
    'lhand': ({'cmu_31': ('lhan', 'lfin'), 'cmu_daz_43': ('lwri', 'lmid1')}, _DOWN),
    'lthigh': ({'cmu_31': ('lhip', 'lkne'), 'cmu_daz_43': ('lhip', 'lkne')}, _DOWN),
    'lshank': ({'cmu_31': ('lkne', 'lank'), 'cmu_daz_43': ('lkne', 'lank')}, _DOWN),
    'lfoot': ({'cmu_31': ('lank', None), 'cmu_daz_43': ('lank', None)}, None),
}

# ----------------------------------------------------------------------------------------------
# Landmarks per convention: name -> (anchor {joint: weight}, segment, offset (x, y, z) mm).
# Sided landmarks are written for the left side (names without the side letter here); the right
# side mirrors joints (l -> r), segments and the x offset.
# ----------------------------------------------------------------------------------------------

CENTRE_LANDMARKS = ('pelvis', 'lumbar', 'chest', 'neckbase', 'neckmid', 'skullbase', 'headc',
                    'htop', 'nose', 'chin')
SIDED_LANDMARKS = ('hip', 'asis', 'troch', 'knee', 'ankle', 'heel', 'ball', 'toetip', 'clav',
                   'sho', 'acro', 'elb', 'wri', 'knuck', 'eye', 'ear')

_LANDMARKS_SHARED = {
    # sided
    'hip': ({'lhip': 1.0}, 'pelvis', (0, 0, 0)),
    'asis': ({'lhip': 1.0}, 'pelvis', (35, 55, 70)),
    'troch': ({'lhip': 1.0}, 'lthigh', (75, -20, 0)),
    'knee': ({'lkne': 1.0}, 'lshank', (0, 0, 0)),
    'ankle': ({'lank': 1.0}, 'lshank', (0, 0, 0)),
    'heel': ({'lank': 1.0}, 'lfoot', (0, -55, -55)),
    'sho': ({'lsho': 1.0}, 'lclav', (0, 0, 0)),
    'acro': ({'lsho': 1.0}, 'lclav', (15, 40, -5)),
    'elb': ({'lelb': 1.0}, 'luarm', (0, 0, 0)),
    'wri': ({'lwri': 1.0}, 'lfarm', (0, 0, 0)),
    # centre
    'pelvis': ({'lhip': 0.5, 'rhip': 0.5}, 'pelvis', (0, 0, 0)),
}

LANDMARKS: Dict[str, Dict[str, Tuple[Dict[str, float], str, Vec]]] = {
    'cmu_31': {
        **_LANDMARKS_SHARED,
        # CMU: LowerBack coincides with Hips (~100 mm above the hip joint centres), Neck with
        # Spine1; the H36M-like spine lies between LowerBack and Spine1.
        'lumbar': ({'pelv': 0.4, 'spin': 0.6}, 'abdomen', (0, 0, -10)),
        'chest': ({'spi1': 1.0}, 'chest', (0, 0, 0)),
        'neckbase': ({'spi1': 0.35, 'nec1': 0.65}, 'chest', (0, 0, 0)),
        'neckmid': ({'nec1': 1.0}, 'neck', (0, 33, 0)),
        'skullbase': ({'head': 1.0}, 'head', (0, 0, 0)),
        'headc': ({'head': 1.0}, 'head', (0, 75, 15)),
        'htop': ({'head': 1.0}, 'head', (0, 170, 0)),
        'nose': ({'head': 1.0}, 'head', (0, 30, 105)),
        'chin': ({'head': 1.0}, 'head', (0, -30, 75)),
        'eye': ({'head': 1.0}, 'head', (32, 65, 85)),
        'ear': ({'head': 1.0}, 'head', (72, 45, -5)),
        'clav': ({'spi1': 1.0}, 'chest', (25, 30, 70)),
        'ball': ({'ltoe': 1.0}, 'lfoot', (0, 0, 0)),
        'toetip': ({'ltoe_end': 1.0}, 'lfoot', (0, 0, 0)),
        'knuck': ({'lwri': 1.0}, 'lhand', (0, -85, 0)),
    },
    'cmu_daz_43': {
        **_LANDMARKS_SHARED,
        # Daz: 'hip' sits just below the hip joint centres, 'neck' at the top of the thorax
        # (above shoulder level), the eyes are joints, the head has no End Site, and the foot's
        # End Site is the ball of the foot.
        'lumbar': ({'abdo': 1.0}, 'abdomen', (0, -10, -5)),
        'chest': ({'ches': 1.0}, 'chest', (0, 20, 0)),
        'neckbase': ({'neck': 1.0}, 'chest', (0, -45, 5)),
        'neckmid': ({'neck': 0.5, 'head': 0.5}, 'neck', (0, 0, 0)),
        'skullbase': ({'head': 1.0}, 'head', (0, 0, 0)),
        'headc': ({'head': 1.0}, 'head', (0, 85, 15)),
        'htop': ({'head': 1.0}, 'head', (0, 190, 5)),
        'nose': ({'head': 1.0}, 'head', (0, 45, 105)),
        'chin': ({'head': 1.0}, 'head', (0, -15, 80)),
        'eye': ({'leye': 1.0}, 'head', (0, 0, 0)),
        'ear': ({'head': 1.0}, 'head', (72, 55, -5)),
        'clav': ({'ches': 1.0}, 'chest', (25, 120, 55)),
        'ball': ({'lank_end': 1.0}, 'lfoot', (0, 0, 0)),
        'toetip': ({'lank_end': 1.0}, 'lfoot', (0, -5, 60)),
        'knuck': ({'lmid1': 1.0}, 'lhand', (0, 0, 0)),
    },
}

# ----------------------------------------------------------------------------------------------
# Format definitions: format -> [(joint name, landmark, offset)], left joints only for sided
# ones (the right joint of the format mirrors them).
# ----------------------------------------------------------------------------------------------

FORMAT_DEFINITIONS: Dict[str, List[Tuple[str, str, Vec]]] = {
    'h36m_17': [
        ('pelv', 'pelvis', (0, -25, 0)),
        ('lhip', 'hip', (30, -25, 0)),
        ('lkne', 'knee', (0, 20, -10)),
        ('lank', 'ankle', (0, 20, -10)),
        ('spin', 'lumbar', (0, 60, -15)),
        ('thor', 'neckbase', (0, 10, -15)),
        ('nose', 'chin', (0, 25, 0)),
        ('htop', 'htop', (0, -5, 15)),
        ('lsho', 'sho', (0, 25, -20)),
        ('lelb', 'elb', (0, 20, -10)),
        ('lwri', 'wri', (0, 15, 10)),
    ],
    'smpl_24': [
        ('pelv', 'pelvis', (0, 60, -10)),
        ('lhip', 'hip', (-10, 25, 0)),
        ('spi1', 'lumbar', (0, -10, -10)),
        ('lkne', 'knee', (0, -10, 10)),
        ('spi2', 'chest', (0, -45, -5)),
        ('lank', 'ankle', (0, -15, 10)),
        ('spi3', 'chest', (0, 25, 0)),
        ('ltoe', 'ball', (0, 0, 20)),
        ('neck', 'neckmid', (0, -25, -20)),
        ('lcla', 'clav', (40, 0, -45)),
        ('head', 'headc', (0, -45, -10)),
        ('lsho', 'sho', (-15, -10, 5)),
        ('lelb', 'elb', (0, -15, 10)),
        ('lwri', 'wri', (0, -10, -10)),
        ('lhan', 'knuck', (0, 25, 0)),
    ],
    'coco_19': [
        ('neck', 'neckbase', (0, 25, 25)),
        ('nose', 'nose', (0, 0, 0)),
        ('pelv', 'pelvis', (0, 55, 5)),
        ('lsho', 'acro', (15, -20, 0)),
        ('lelb', 'elb', (20, 0, 5)),
        ('lwri', 'wri', (15, -15, 0)),
        ('lhip', 'hip', (45, 55, 5)),
        ('lkne', 'knee', (0, -10, 25)),
        ('lank', 'ankle', (20, -5, 0)),
        ('leye', 'eye', (0, 0, 0)),
        ('lear', 'ear', (0, 0, 0)),
    ],
    'mpi_inf_3dhp_17': [
        ('htop', 'htop', (0, -20, 25)),
        ('neck', 'neckbase', (0, 45, 0)),
        ('lsho', 'sho', (20, 20, 5)),
        ('lelb', 'elb', (0, -15, 0)),
        ('lwri', 'wri', (0, -25, 0)),
        ('lhip', 'hip', (10, 0, 25)),
        ('lkne', 'knee', (-5, -25, 0)),
        ('lank', 'ankle', (0, -30, 0)),
        ('pelv', 'pelvis', (0, 15, 20)),
        ('spin', 'lumbar', (0, 110, 0)),
        ('head', 'headc', (0, -10, 30)),
    ],
    # Only used for motions that are not on the cmu_31 skeleton (Daz): an approximation of the
    # CMU joints from landmarks. A cmu_31 motion's own joints are returned as they are.
    'cmu_31': [
        ('pelv', 'pelvis', (0, 100, -10)),
        ('lhipjoint', 'pelvis', (0, 100, -10)),
        ('lhip', 'hip', (0, 0, 0)),
        ('lkne', 'knee', (0, 0, 0)),
        ('lank', 'ankle', (0, 0, 0)),
        ('ltoe', 'ball', (0, 0, 0)),
        ('back', 'pelvis', (0, 100, -10)),
        ('spin', 'lumbar', (0, 45, -10)),
        ('spi1', 'chest', (0, 0, 0)),
        ('neck', 'chest', (0, 0, 0)),
        ('nec1', 'neckmid', (0, -30, 0)),
        ('head', 'skullbase', (0, 0, 0)),
        ('lcla', 'chest', (0, 0, 0)),
        ('lsho', 'sho', (0, 0, 0)),
        ('lelb', 'elb', (0, 0, 0)),
        ('lwri', 'wri', (0, 0, 0)),
        ('lhan', 'wri', (0, 0, 0)),
        ('lfin', 'knuck', (0, 45, 0)),
        ('lthu', 'wri', (0, 0, 0)),
    ],
}


def _mirror_name(name: str) -> str:
    return ('r' + name[1:]) if name.startswith('l') else name


def _is_sided_joint(skeleton: str, name: str) -> bool:
    ji = skeletons.get(skeleton)
    return ji.mirror[ji.index(name)] != ji.index(name)


def _expand_format(skeleton: str) -> Dict[str, Tuple[str, Vec]]:
    """Format joint name -> (landmark name with side, offset), both sides."""
    base = 'h36m_17' if skeleton == 'h36m_16' else skeleton
    result = {}
    for name, landmark, offset in FORMAT_DEFINITIONS[base]:
        if _is_sided_joint(base, name):
            x, y, z = offset
            if landmark in CENTRE_LANDMARKS:
                result[name] = (landmark, tuple(offset))
                result[_mirror_name(name)] = (landmark, (-x, y, z))
            else:
                result[name] = ('l' + landmark, tuple(offset))
                result[_mirror_name(name)] = ('r' + landmark, (-x, y, z))
        else:
            result[name] = (landmark, tuple(offset))
    return result


def definitions_table() -> str:
    """The format-definition table of the module docstring (kept in sync by a test)."""
    lines = ['format           joint  landmark    offset (x, y, z) mm']
    for skeleton in ('h36m_17', 'smpl_24', 'coco_19', 'mpi_inf_3dhp_17', 'cmu_31'):
        label = 'cmu_31 (Daz)' if skeleton == 'cmu_31' else skeleton
        for name, landmark, offset in FORMAT_DEFINITIONS[skeleton]:
            off = '(' + ', '.join(str(int(v)) for v in offset) + ')'
            lines.append(f'{label:16s} {name:6s} {landmark:11s} {off}')
        if skeleton == 'h36m_17':
            lines.append('h36m_16          (h36m_17 without nose, same definitions)')
    return '\n'.join(line.rstrip() for line in lines)


# ----------------------------------------------------------------------------------------------
# Motion joints by posekit name
# ----------------------------------------------------------------------------------------------

def convention_of(motion: bvh_lib.Motion) -> str:
    """The landmark table used for ``motion``: 'cmu_31' or 'cmu_daz_43' (its skeleton)."""
    skeleton = getattr(motion, 'skeleton', None)
    if skeleton not in LANDMARKS:
        raise ValueError(f'motion.skeleton must be one of {sorted(LANDMARKS)} to attach body '
                         f'landmarks, got {skeleton!r} (source {getattr(motion, "source", "")!r})')
    if motion.rotations is None:
        raise ValueError(f'motion.rotations must be set to attach body landmarks, got None '
                         f'(source {motion.source!r})')
    return skeleton


def joint_index(motion: bvh_lib.Motion) -> Dict[str, int]:
    """Posekit joint name -> index into ``motion.positions``; End Sites are ``<parent>_end``."""
    convention_of(motion)
    return dict(_joint_index_cached(tuple(motion.joint_names), tuple(bool(e) for e in motion.is_end_site),
                                    tuple(motion.parents)))


@functools.lru_cache(maxsize=64)
def _joint_index_cached(names, is_end, parents) -> Tuple[Tuple[str, int], ...]:
    real = [n for n, e in zip(names, is_end) if not e]
    _, _, mapped = skeletons.identify_bvh_skeleton(real)
    bvh_to_posekit = dict(zip(real, mapped))
    result = {}
    for j, (n, e) in enumerate(zip(names, is_end)):
        if e:
            parent_name = bvh_to_posekit.get(names[parents[j]])
            if parent_name is not None and f'{parent_name}_end' not in result:
                result[f'{parent_name}_end'] = j
        else:
            result[bvh_to_posekit[n]] = j
    return tuple(result.items())


def rest_positions(motion: bvh_lib.Motion) -> np.ndarray:
    """[J, 3] rest-pose (identity rotations) joint positions relative to the root, mm."""
    rest = np.zeros_like(np.asarray(motion.offsets, np.float64))
    for j, p in enumerate(motion.parents):
        rest[j] = motion.offsets[j] + (rest[p] if p != -1 else 0.0)
    return rest


def body_scale(motion: bvh_lib.Motion) -> float:
    """Rest-pose hip-knee-ankle length (mean of both legs) over ``REFERENCE_LEG_MM``."""
    idx = joint_index(motion)
    rest = rest_positions(motion)
    lengths = [np.linalg.norm(rest[idx[s + 'kne']] - rest[idx[s + 'hip']])
               + np.linalg.norm(rest[idx[s + 'ank']] - rest[idx[s + 'kne']]) for s in 'lr']
    return float(np.mean(lengths) / REFERENCE_LEG_MM)


def body_shape(subject: Optional[str]) -> np.ndarray:
    """[3] per-subject offset factors (x, y, z), deterministic in the subject id; ones for None."""
    if subject is None:
        return np.ones(3)
    rng = np.random.default_rng(zlib.crc32(str(subject).encode('utf-8')))
    xz = rng.uniform(*SHAPE_XZ_RANGE)
    y = rng.uniform(*SHAPE_Y_RANGE)
    return np.array([xz, y, xz * rng.uniform(0.97, 1.03)])


# ----------------------------------------------------------------------------------------------
# Compiled definitions: joints = W @ positions + rotations[:, seg] @ vec
# ----------------------------------------------------------------------------------------------

def _segment_alignment(convention: str, segment: str, idx: Mapping[str, int],
                       rest: np.ndarray) -> Tuple[int, np.ndarray]:
    """(joint index whose rotation carries the segment, [3, 3] anatomical -> rest alignment)."""
    side = ''
    key = segment
    if segment[0] in 'lr' and segment[1:] in ('clav', 'uarm', 'farm', 'hand', 'thigh', 'shank', 'foot'):
        side, key = segment[0], 'l' + segment[1:]
    joints, direction = _SEGMENTS[key]
    joint, child = joints[convention]
    if side == 'r':
        joint = _mirror_name(joint)
        child = None if child is None else _mirror_name(child)
    j = idx[joint]
    if direction is None or child is None:
        return j, np.eye(3)
    rest_dir = rest[idx[child]] - rest[j]
    if np.linalg.norm(rest_dir) == 0:
        return j, np.eye(3)
    return j, geometry.rotation_from_vectors(np.asarray(direction, np.float64), rest_dir)


def _landmark_spec(convention: str, name: str):
    """(anchor dict, segment, offset) of a landmark with side prefix for sided ones."""
    table = LANDMARKS[convention]
    if name in table and name in CENTRE_LANDMARKS:
        return table[name]
    if name[:1] in 'lr' and name[1:] in SIDED_LANDMARKS:
        anchor, segment, offset = table[name[1:]]
        if name[0] == 'l':
            seg = segment if segment in _CENTRE_SEGMENTS else 'l' + segment[1:]
            return anchor, seg, offset
        anchor = {_mirror_name(k): w for k, w in anchor.items()}
        seg = segment if segment in _CENTRE_SEGMENTS else 'r' + segment[1:]
        x, y, z = offset
        return anchor, seg, (-x, y, z)
    raise KeyError(f'unknown landmark {name!r}; landmarks: {landmark_names()}')


_CENTRE_SEGMENTS = ('pelvis', 'abdomen', 'chest', 'neck', 'head')


def landmark_names() -> List[str]:
    """All landmark names: centre ones, then left and right ones."""
    return (list(CENTRE_LANDMARKS) + ['l' + n for n in SIDED_LANDMARKS]
            + ['r' + n for n in SIDED_LANDMARKS])


def _compile(motion, items: Sequence[Tuple[str, Vec]], shape: np.ndarray):
    """items: (landmark name, extra offset) -> (W [K, J], seg [K], vec [K, 3])."""
    convention = convention_of(motion)
    idx = joint_index(motion)
    rest = rest_positions(motion)
    scale = body_scale(motion)
    n_joints = len(motion.joint_names)
    weights = np.zeros((len(items), n_joints))
    segs = np.zeros(len(items), np.int64)
    vecs = np.zeros((len(items), 3))
    alignments = {}
    for k, (landmark, extra) in enumerate(items):
        anchor, segment, offset = _landmark_spec(convention, landmark)
        for joint, w in anchor.items():
            weights[k, idx[joint]] += w
        if segment not in alignments:
            alignments[segment] = _segment_alignment(convention, segment, idx, rest)
        j, align = alignments[segment]
        segs[k] = j
        local = (np.asarray(offset, np.float64) + np.asarray(extra, np.float64)) * shape * scale
        vecs[k] = align @ local
    return weights, segs, vecs


def _apply(motion, weights, segs, vecs) -> np.ndarray:
    positions = np.asarray(motion.positions, np.float64)
    rotations = np.asarray(motion.rotations, np.float64)
    out = np.einsum('kj,tjc->tkc', weights, positions)
    out += np.einsum('tkab,kb->tka', rotations[:, segs], vecs)
    return out


def landmarks(motion: bvh_lib.Motion, names: Optional[Sequence[str]] = None,
              subject: Optional[str] = None) -> np.ndarray:
    """Body landmarks of every frame.

    Args:
      motion: a Motion on the cmu_31 or cmu_daz_43 skeleton (with ``rotations``).
      names: landmark names (default :func:`landmark_names`).
      subject: optional subject id for the per-subject body shape (:func:`body_shape`).

    Returns:
      [T, L, 3] float64, mm, the motion's world frame (y up).
    """
    names = landmark_names() if names is None else list(names)
    items = [(n, (0.0, 0.0, 0.0)) for n in names]
    return _apply(motion, *_compile(motion, items, body_shape(subject)))


def _check_format(skeleton: str) -> None:
    if skeleton not in SUPPORTED_FORMATS:
        raise ValueError(f'skeleton must be one of {SUPPORTED_FORMATS}, got {skeleton!r}')


def format_joints(motion: bvh_lib.Motion, skeleton: str, subject: Optional[str] = None) -> np.ndarray:
    """The joints of skeleton format ``skeleton`` in every frame of ``motion``.

    Args:
      motion: a Motion on the cmu_31 or cmu_daz_43 skeleton (with ``rotations``).
      skeleton: one of ``SUPPORTED_FORMATS``.
      subject: optional subject id for the per-subject body shape.

    Returns:
      [T, J, 3] float64, mm, world frame (y up), in the order of ``skeletons.get(skeleton)``.
    """
    _check_format(skeleton)
    convention = convention_of(motion)
    ji = skeletons.get(skeleton)
    if skeleton == 'cmu_31' and convention == 'cmu_31':
        idx = joint_index(motion)
        return np.asarray(motion.positions, np.float64)[:, [idx[n] for n in ji.names]]
    definition = _expand_format(skeleton)
    items = [definition[n] for n in ji.names]
    return _apply(motion, *_compile(motion, items, body_shape(subject)))


def all_format_joints(motion: bvh_lib.Motion, joint_space: Union[skeletons.JointSpace, Sequence[str]]
                      = DEFAULT_FORMATS, subject: Optional[str] = None) -> np.ndarray:
    """[T, J_all, 3] mm, world: the joints of every format of ``joint_space``, concatenated."""
    formats = joint_space.formats if isinstance(joint_space, skeletons.JointSpace) else tuple(joint_space)
    if not formats:
        raise ValueError(f'joint_space must name at least one format, got {joint_space!r}')
    return np.concatenate([format_joints(motion, f, subject) for f in formats], axis=1)


# ----------------------------------------------------------------------------------------------
# Disagreement between formats and the affine-combination premise of the ACAE
# ----------------------------------------------------------------------------------------------

def shared_joint_names(skeleton_a: str, skeleton_b: str) -> List[str]:
    """Joint names present in both formats (order of ``skeleton_a``)."""
    b = set(skeletons.get(skeleton_b).names)
    return [n for n in skeletons.get(skeleton_a).names if n in b]


def fit_affine_combination(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares affine combination weights from one format's joints to another's.

    Each target joint is modelled as ``sum_a W[b, a] source[a]`` with ``sum_a W[b, a] = 1``, the
    same weights for x, y and z (so the map commutes with rotations and translations of the
    pose, like the ACAE's encoder/decoder).

    Args:
      source: [N, J_a, 3] poses (mm, any frame shared with ``target``).
      target: [N, J_b, 3] poses of the same N bodies in another format.

    Returns:
      [J_b, J_a] float64 weights, rows summing to 1.
    """
    source = np.asarray(source, np.float64)
    target = np.asarray(target, np.float64)
    if source.ndim != 3 or source.shape[-1] != 3 or target.ndim != 3 or target.shape[-1] != 3 \
            or source.shape[0] != target.shape[0]:
        raise ValueError(f'source and target must be [N, J, 3] with the same N, got shapes '
                         f'{source.shape} and {target.shape}')
    # Reference joint 0: x_b - x_0 = sum_{a>0} W[b, a] (x_a - x_0).
    design = (source[:, 1:] - source[:, :1]).transpose(0, 2, 1).reshape(-1, source.shape[1] - 1)
    rhs = (target - source[:, :1]).transpose(0, 2, 1).reshape(-1, target.shape[1])
    sol, *_ = np.linalg.lstsq(design, rhs, rcond=None)
    weights = np.zeros((target.shape[1], source.shape[1]))
    weights[:, 1:] = sol.T
    weights[:, 0] = 1.0 - sol.sum(axis=0)
    return weights


def apply_affine_combination(weights: np.ndarray, source: np.ndarray) -> np.ndarray:
    """[N, J_b, 3] = weights [J_b, J_a] applied to source [N, J_a, 3]."""
    return np.einsum('ba,nac->nbc', weights, source)


def disagreement(poses_a: np.ndarray, poses_b: np.ndarray, skeleton_a: str, skeleton_b: str) -> Dict[str, float]:
    """Mean distance (mm) of each same-named joint of two formats over N poses."""
    names = shared_joint_names(skeleton_a, skeleton_b)
    ia = [skeletons.get(skeleton_a).index(n) for n in names]
    ib = [skeletons.get(skeleton_b).index(n) for n in names]
    dist = np.linalg.norm(poses_a[:, ia] - poses_b[:, ib], axis=-1).mean(axis=0)
    return dict(zip(names, dist.tolist()))


def disagreement_table(poses: Mapping[str, np.ndarray], formats: Sequence[str] = DEFAULT_FORMATS,
                       holdout_fraction: float = 0.5) -> List[Dict]:
    """Same-named-joint disagreement of every pair of formats, raw and after an affine map.

    Args:
      poses: format -> [N, J, 3] poses of the same N bodies (mm, one shared frame), e.g.
        ``{f: format_joints(motion, f) for f in formats}`` stacked over clips.
      formats: the formats to compare (pairs with no shared joint names are skipped).
      holdout_fraction: the affine map is fitted on the first ``1 - holdout_fraction`` of the
        poses and evaluated on the rest.

    Returns:
      list of dicts (one per ordered pair a < b): ``pair`` (a, b), ``joints`` {name: mean mm},
      ``mean_mm`` (over shared joints), ``affine_mm`` (mean error on the held-out poses of the
      shared joints of b predicted from all joints of a), ``reduction`` (mean_mm / affine_mm).
    """
    if not 0 < holdout_fraction < 1:
        raise ValueError(f'holdout_fraction must be in (0, 1), got {holdout_fraction!r}')
    rows = []
    for i, fa in enumerate(formats):
        for fb in formats[i + 1:]:
            names = shared_joint_names(fa, fb)
            if not names:
                continue
            a, b = np.asarray(poses[fa]), np.asarray(poses[fb])
            n_fit = max(1, int(round(len(a) * (1 - holdout_fraction))))
            joints = disagreement(a[n_fit:], b[n_fit:], fa, fb)
            weights = fit_affine_combination(a[:n_fit], b[:n_fit])
            pred = apply_affine_combination(weights, a[n_fit:])
            ib = [skeletons.get(fb).index(n) for n in names]
            affine = float(np.linalg.norm(pred[:, ib] - b[n_fit:, ib], axis=-1).mean())
            mean = float(np.mean(list(joints.values())))
            rows.append(dict(pair=(fa, fb), joints=joints, mean_mm=mean, affine_mm=affine,
                             reduction=mean / max(affine, 1e-9)))
    return rows


def format_table(rows: Sequence[Mapping]) -> str:
    """A plain-text rendering of :func:`disagreement_table` rows."""
    lines = [f'{"format a":16s} {"format b":16s} {"mean mm":>8s} {"affine mm":>9s} {"x":>5s}  per joint (mm)']
    for r in rows:
        per = ' '.join(f'{k}:{v:.0f}' for k, v in r['joints'].items())
        lines.append(f'{r["pair"][0]:16s} {r["pair"][1]:16s} {r["mean_mm"]:8.1f} {r["affine_mm"]:9.1f} '
                     f'{r["reduction"]:5.1f}  {per}')
    return '\n'.join(lines)
