"""Skeleton formats: joint names, parents, edges and the left/right mirror permutation.

Joint names follow one convention across every format: lowercase, and sided joints carry an
``l``/``r`` prefix whose counterpart exists in the same format (``lsho``/``rsho``). A centre joint's
name never starts with ``l`` or ``r`` followed by the name of another joint of the format, so the
mirror permutation is derived from the names alone.

Orders follow the datasets' own conventions (see FORMATS.md in the project's shared notes), so
arrays match what users of these datasets already hold:

=================  =======================================================================
format             joints
=================  =======================================================================
h36m_17            Human3.6M 17-joint order of VideoPose3D / SemGCN
h36m_16            h36m_17 without the nose (joint 9)
smpl_24            SMPL body joints
coco_19            COCO keypoints plus neck and pelvis, CMU Panoptic order
mpi_inf_3dhp_17    MPI-INF-3DHP test-set order
cmu_31             CMU ASF skeleton (BVH releases cmu_mb2, cmu_3dsmax, cmu_amc2bvh)
cmu_daz_43         Daz-friendly CMU release (cmu_daz)
coco_17            the 17 COCO keypoints in COCO's order (coco_19 without neck and pelvis, reordered)
mpii_16            MPII Human Pose order (right ankle first, pelvis 6, thorax 7, upper neck 8, head top 9)
=================  =======================================================================

CMU Panoptic's ``hdPose3d_stage1_coco19`` joint order is exactly ``coco_19``.

Example::

    ji = posekit.skeletons.get('h36m_17')
    ji.names[ji.mirror[ji.names.index('lsho')]]  # 'rsho'
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Sequence, Tuple

import numpy as np


def _mirror_from_names(names: Sequence[str]) -> Tuple[int, ...]:
    index = {n: i for i, n in enumerate(names)}
    mirror = []
    for i, name in enumerate(names):
        if name[:1] in ('l', 'r'):
            other = ('r' if name[0] == 'l' else 'l') + name[1:]
            mirror.append(index.get(other, i))
        else:
            mirror.append(i)
    return tuple(mirror)


@dataclasses.dataclass(frozen=True)
class JointInfo:
    """A skeleton format.

    Attributes:
      name: registry name of the format, e.g. ``'h36m_17'``.
      names: joint names, list of str of length ``n_joints``.
      parents: parent index of each joint, -1 for the root.
      edges: list of (child, parent) index pairs, one per non-root joint: a tree.
      mirror: index of each joint's left/right counterpart (itself for centre joints).
    """

    name: str
    names: Tuple[str, ...]
    parents: Tuple[int, ...]

    def __post_init__(self):
        names = tuple(self.names)
        parents = tuple(int(p) for p in self.parents)
        object.__setattr__(self, 'names', names)
        object.__setattr__(self, 'parents', parents)
        if len(names) != len(parents):
            raise ValueError(
                f'JointInfo {self.name!r}: {len(names)} names but {len(parents)} parents')
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f'JointInfo {self.name!r}: duplicate joint names {dup}')
        for n in names:
            if n != n.lower():
                raise ValueError(f'JointInfo {self.name!r}: joint name {n!r} is not lowercase')
        roots = [i for i, p in enumerate(parents) if p == -1]
        if len(roots) != 1:
            raise ValueError(f'JointInfo {self.name!r}: expected one root, got {len(roots)}')
        for i, p in enumerate(parents):
            if p != -1 and not 0 <= p < len(names):
                raise ValueError(f'JointInfo {self.name!r}: parent {p} of joint {i} out of range')
        # Every joint must reach the root without cycles.
        for i in range(len(names)):
            seen, j = set(), i
            while j != -1:
                if j in seen:
                    raise ValueError(f'JointInfo {self.name!r}: cycle through joint {names[j]!r}')
                seen.add(j)
                j = parents[j]

    @property
    def n_joints(self) -> int:
        return len(self.names)

    @property
    def edges(self) -> List[Tuple[int, int]]:
        return [(i, p) for i, p in enumerate(self.parents) if p != -1]

    @property
    def mirror(self) -> List[int]:
        return list(_mirror_from_names(self.names))

    @property
    def root(self) -> int:
        return self.parents.index(-1)

    def index(self, joint_name: str) -> int:
        """Index of ``joint_name``; ``KeyError`` naming the format's joints if absent."""
        try:
            return self.names.index(joint_name)
        except ValueError:
            raise KeyError(
                f'joint {joint_name!r} not in format {self.name!r}; joints: {list(self.names)}'
            ) from None

    def adjacency(self) -> np.ndarray:
        """[n_joints, n_joints] symmetric 0/1 float32 matrix of the edges, no self-loops."""
        adj = np.zeros((self.n_joints, self.n_joints), np.float32)
        for i, j in self.edges:
            adj[i, j] = adj[j, i] = 1.0
        return adj

    def side(self) -> np.ndarray:
        """[n_joints] int: -1 left, +1 right, 0 centre (:func:`joint_sides` of the names)."""
        return joint_sides(self.names)

    def subset(self, joint_names: Sequence[str], name: str | None = None) -> 'JointInfo':
        """The format restricted to ``joint_names`` (order kept as given).

        A removed joint's children are re-attached to its nearest kept ancestor. The root of the
        original format must be kept.
        """
        keep = [self.index(n) for n in joint_names]
        if self.root not in keep:
            raise ValueError(
                f'subset of {self.name!r} must keep the root {self.names[self.root]!r}')
        new_index = {old: new for new, old in enumerate(keep)}
        parents = []
        for old in keep:
            p = self.parents[old]
            while p != -1 and p not in new_index:
                p = self.parents[p]
            parents.append(-1 if p == -1 else new_index[p])
        return JointInfo(name or f'{self.name}_subset', tuple(joint_names), tuple(parents))


def joint_sides(joint_names: Sequence[str]) -> np.ndarray:
    """[J] int: -1 left, +1 right, 0 centre, from joint names (the one left/right rule of posekit).

    A joint is sided when its name starts with ``l`` or ``r`` and the name with the other prefix is in
    the list too (``lsho``/``rsho``); anything else (``lowerback``, ``pelv``) is a centre joint.
    """
    names = list(joint_names)
    present = set(names)
    sides = np.zeros(len(names), np.int64)
    for i, name in enumerate(names):
        if name[:1] in ('l', 'r') and ('r' if name[0] == 'l' else 'l') + name[1:] in present:
            sides[i] = -1 if name[0] == 'l' else 1
    return sides


def _make(name: str, spec: str) -> JointInfo:
    """Builds a JointInfo from 'name:parent name:parent ...' (parent by name, '-' for the root)."""
    names, parent_names = [], []
    for token in spec.split():
        n, p = token.split(':')
        names.append(n)
        parent_names.append(p)
    parents = [-1 if p == '-' else names.index(p) for p in parent_names]
    return JointInfo(name, tuple(names), tuple(parents))


_REGISTRY: Dict[str, JointInfo] = {}


def register(joint_info: JointInfo) -> JointInfo:
    """Adds a format to the registry; ``ValueError`` if the name is taken by a different one."""
    existing = _REGISTRY.get(joint_info.name)
    if existing is not None and existing != joint_info:
        raise ValueError(f'skeleton format {joint_info.name!r} is already registered differently')
    _REGISTRY[joint_info.name] = joint_info
    return joint_info


def get(name: str) -> JointInfo:
    """The registered format ``name``; ``KeyError`` listing the known formats otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise KeyError(f'unknown skeleton format {name!r}; known formats: {names()}') from None


def names() -> List[str]:
    """Names of all registered formats, sorted."""
    return sorted(_REGISTRY)


register(_make('h36m_17', (
    'pelv:- rhip:pelv rkne:rhip rank:rkne lhip:pelv lkne:lhip lank:lkne spin:pelv thor:spin '
    'nose:thor htop:nose lsho:thor lelb:lsho lwri:lelb rsho:thor relb:rsho rwri:relb')))
register(get('h36m_17').subset(
    [n for n in get('h36m_17').names if n != 'nose'], name='h36m_16'))
register(_make('smpl_24', (
    'pelv:- lhip:pelv rhip:pelv spi1:pelv lkne:lhip rkne:rhip spi2:spi1 lank:lkne rank:rkne '
    'spi3:spi2 ltoe:lank rtoe:rank neck:spi3 lcla:spi3 rcla:spi3 head:neck lsho:lcla rsho:rcla '
    'lelb:lsho relb:rsho lwri:lelb rwri:relb lhan:lwri rhan:rwri')))
register(_make('coco_19', (
    'neck:- nose:neck pelv:neck lsho:neck lelb:lsho lwri:lelb lhip:pelv lkne:lhip lank:lkne '
    'rsho:neck relb:rsho rwri:relb rhip:pelv rkne:rhip rank:rkne leye:nose lear:leye '
    'reye:nose rear:reye')))
register(_make('mpi_inf_3dhp_17', (
    'htop:head neck:head rsho:neck relb:rsho rwri:relb lsho:neck lelb:lsho lwri:lelb rhip:pelv '
    'rkne:rhip rank:rkne lhip:pelv lkne:lhip lank:lkne pelv:- spin:pelv head:spin')))
# COCO's 17 keypoints (the official annotation order; edges along COCO's own skeleton).
register(_make('coco_17', (
    'nose:- leye:nose reye:nose lear:leye rear:reye lsho:nose rsho:nose lelb:lsho relb:rsho lwri:lelb '
    'rwri:relb lhip:lsho rhip:rsho lkne:lhip rkne:rhip lank:lkne rank:rkne')))
# MPII Human Pose: 0 r ankle ... 5 l ankle, 6 pelvis, 7 thorax, 8 upper neck, 9 head top, 10 r wrist ... 15 l wrist.
register(_make('mpii_16', (
    'rank:rkne rkne:rhip rhip:pelv lhip:pelv lkne:lhip lank:lkne pelv:- thor:pelv neck:thor htop:neck '
    'rwri:relb relb:rsho rsho:thor lsho:thor lelb:lsho lwri:lelb')))
# The CMU ASF skeleton as released in BVH form (cmu_mb2, cmu_3dsmax, cmu_amc2bvh): 31 joints in
# file order. Names map from the BVH names through BVH_NAME_MAPS below.
register(_make('cmu_31', (
    'pelv:- lhipjoint:pelv lhip:lhipjoint lkne:lhip lank:lkne ltoe:lank '
    'rhipjoint:pelv rhip:rhipjoint rkne:rhip rank:rkne rtoe:rank '
    'back:pelv spin:back spi1:spin neck:spi1 nec1:neck head:nec1 '
    'lcla:spi1 lsho:lcla lelb:lsho lwri:lelb lhan:lwri lfin:lhan lthu:lwri '
    'rcla:spi1 rsho:rcla relb:rsho rwri:relb rhan:rwri rfin:rhan rthu:rwri')))
register(_make('cmu_daz_43', (
    'pelv:- abdo:pelv ches:abdo neck:ches head:neck leye:head reye:head '
    'rcla:ches rsho:rcla relb:rsho rwri:relb rthu1:rwri rthu2:rthu1 rind1:rwri rind2:rind1 '
    'rmid1:rwri rmid2:rmid1 rrin1:rwri rrin2:rrin1 rpin1:rwri rpin2:rpin1 '
    'lcla:ches lsho:lcla lelb:lsho lwri:lelb lthu1:lwri lthu2:lthu1 lind1:lwri lind2:lind1 '
    'lmid1:lwri lmid2:lmid1 lrin1:lwri lrin2:lrin1 lpin1:lwri lpin2:lpin1 '
    'rbut:pelv rhip:rbut rkne:rhip rank:rkne lbut:pelv lhip:lbut lkne:lhip lank:lkne')))

# BVH joint names (lowercased) of the CMU releases -> posekit names, per registered format.
def _cmu31_bvh_names() -> Dict[str, str]:
    """cmu_mb2 names."""
    m = {'hips': 'pelv', 'lowerback': 'back', 'spine': 'spin', 'spine1': 'spi1',
         'neck': 'neck', 'neck1': 'nec1', 'head': 'head'}
    for side, long in (('l', 'Left'), ('r', 'Right')):
        s = side.upper()
        m.update({
            f'{s}HipJoint'.lower(): f'{side}hipjoint', f'{long}UpLeg'.lower(): f'{side}hip',
            f'{long}Leg'.lower(): f'{side}kne', f'{long}Foot'.lower(): f'{side}ank',
            f'{long}ToeBase'.lower(): f'{side}toe', f'{long}Shoulder'.lower(): f'{side}cla',
            f'{long}Arm'.lower(): f'{side}sho', f'{long}ForeArm'.lower(): f'{side}elb',
            f'{long}Hand'.lower(): f'{side}wri', f'{long}FingerBase'.lower(): f'{side}han',
            f'{long}HandIndex1'.lower(): f'{side}fin', f'{s}Thumb'.lower(): f'{side}thu',
        })
    return m


# cmu_3dsmax and cmu_amc2bvh use other names for the same 31 joints; their maps are separate
# because 'LeftShoulder' means the clavicle in cmu_mb2 but the shoulder joint in cmu_3dsmax.
def _cmu31_3dsmax_names() -> Dict[str, str]:
    m = {'hips': 'pelv', 'lowerback': 'back', 'chest': 'spin', 'chest2': 'spi1',
         'lowerneck': 'neck', 'neck': 'nec1', 'head': 'head'}
    for side, long in (('l', 'left'), ('r', 'right')):
        m.update({
            f'{side}hipjoint': f'{side}hipjoint', f'{long}hip': f'{side}hip',
            f'{long}knee': f'{side}kne', f'{long}ankle': f'{side}ank', f'{long}toe': f'{side}toe',
            f'{long}collar': f'{side}cla', f'{long}shoulder': f'{side}sho',
            f'{long}elbow': f'{side}elb', f'{long}wrist': f'{side}wri', f'{side}hand': f'{side}han',
            f'{side}fingers': f'{side}fin', f'{side}thumb': f'{side}thu',
        })
    return m


def _cmu31_amc_names() -> Dict[str, str]:
    m = {'hip': 'pelv', 'lowerback': 'back', 'upperback': 'spin', 'thorax': 'spi1',
         'lowerneck': 'neck', 'upperneck': 'nec1', 'head': 'head'}
    for side in ('l', 'r'):
        m.update({
            f'{side}hipjoint': f'{side}hipjoint', f'{side}femur': f'{side}hip',
            f'{side}tibia': f'{side}kne', f'{side}foot': f'{side}ank', f'{side}toes': f'{side}toe',
            f'{side}clavicle': f'{side}cla', f'{side}humerus': f'{side}sho',
            f'{side}radius': f'{side}elb', f'{side}wrist': f'{side}wri', f'{side}hand': f'{side}han',
            f'{side}fingers': f'{side}fin', f'{side}thumb': f'{side}thu',
        })
    return m


def _daz_names() -> Dict[str, str]:
    m = {'hip': 'pelv', 'abdomen': 'abdo', 'chest': 'ches', 'neck': 'neck', 'head': 'head',
         'lefteye': 'leye', 'righteye': 'reye'}
    parts = {'collar': 'cla', 'shldr': 'sho', 'forearm': 'elb', 'hand': 'wri',
             'thumb1': 'thu1', 'thumb2': 'thu2', 'index1': 'ind1', 'index2': 'ind2',
             'mid1': 'mid1', 'mid2': 'mid2', 'ring1': 'rin1', 'ring2': 'rin2',
             'pinky1': 'pin1', 'pinky2': 'pin2', 'buttock': 'but', 'thigh': 'hip',
             'shin': 'kne', 'foot': 'ank'}
    for side in ('l', 'r'):
        for bvh, ours in parts.items():
            m[side + bvh] = side + ours
    return m


# (format name, BVH convention, map from lowercased BVH joint name to posekit name), tried in order.
BVH_NAME_MAPS: Tuple[Tuple[str, str, Dict[str, str]], ...] = (
    ('cmu_31', 'cmu_mb2', _cmu31_bvh_names()),
    ('cmu_31', 'cmu_3dsmax', _cmu31_3dsmax_names()),
    ('cmu_31', 'cmu_amc2bvh', _cmu31_amc_names()),
    ('cmu_daz_43', 'cmu_daz', _daz_names()),
)


def identify_bvh_skeleton(bvh_joint_names: Sequence[str]) -> Tuple[str, str, List[str]]:
    """Identifies the registered format of a BVH file's joints (End Sites excluded).

    Args:
      bvh_joint_names: the file's joint names in file order.

    Returns:
      (format name, BVH convention name, posekit names in the same order).

    Raises:
      KeyError: if no registered format matches, naming the formats tried.
    """
    lowered = [n.lower() for n in bvh_joint_names]
    for skeleton, convention, mapping in BVH_NAME_MAPS:
        if all(n in mapping for n in lowered):
            mapped = [mapping[n] for n in lowered]
            if mapped == list(get(skeleton).names):
                return skeleton, convention, mapped
    raise KeyError(
        f'BVH skeleton with joints {list(bvh_joint_names)[:8]}... matches no registered format; '
        f'tried conventions {[c for _, c, _ in BVH_NAME_MAPS]}')


class JointSpace:
    """The concatenation of several formats' joints: what a multi-format model predicts.

    Joint ``k`` of format ``f`` is named ``f'{name}_{f}'`` (e.g. ``lsho_h36m_17``), so the sided
    prefix rule still gives the mirror permutation, which never crosses formats.

    Attributes:
      formats: the format names in order.
      names: J_all joint names; ``mirror``: J_all indices; ``n_joints``: J_all.
      slices: dict format -> slice of its joints in the joint space.
    """

    def __init__(self, formats: Sequence[str]):
        if not formats:
            raise ValueError('formats must name at least one skeleton format, got an empty list')
        if len(set(formats)) != len(formats):
            raise ValueError(f'formats must be distinct, got {list(formats)}')
        self.formats = tuple(formats)
        infos = [get(f) for f in self.formats]
        self.names: Tuple[str, ...] = tuple(
            f'{n}_{ji.name}' for ji in infos for n in ji.names)
        self.slices: Dict[str, slice] = {}
        start = 0
        parents: List[int] = []
        for ji in infos:
            self.slices[ji.name] = slice(start, start + ji.n_joints)
            parents += [-1 if p == -1 else p + start for p in ji.parents]
            start += ji.n_joints
        self.parents: Tuple[int, ...] = tuple(parents)
        self.mirror: List[int] = list(_mirror_from_names(self.names))
        self.name = '+'.join(self.formats)

    @property
    def n_joints(self) -> int:
        return len(self.names)

    @property
    def edges(self) -> List[Tuple[int, int]]:
        """Each format's tree edges, in joint-space indices (a forest)."""
        return [(i, p) for i, p in enumerate(self.parents) if p != -1]

    def format_of(self, index: int) -> str:
        for f, s in self.slices.items():
            if s.start <= index < s.stop:
                return f
        raise IndexError(f'joint index {index} out of range for {self.n_joints} joints')

    def base_name(self, index: int) -> str:
        """The joint's name within its format (``lsho`` for ``lsho_h36m_17``)."""
        f = self.format_of(index)
        return get(f).names[index - self.slices[f].start]

    def format_mask(self, skeleton: str) -> np.ndarray:
        """[J_all] bool, True on the joints of ``skeleton``."""
        if skeleton not in self.slices:
            raise KeyError(f'format {skeleton!r} not in joint space {list(self.formats)}')
        mask = np.zeros(self.n_joints, bool)
        mask[self.slices[skeleton]] = True
        return mask

    def name_groups(self) -> Dict[str, List[int]]:
        """Base joint name -> joint-space indices of every format that has a joint of that name."""
        groups: Dict[str, List[int]] = {}
        for i in range(self.n_joints):
            groups.setdefault(self.base_name(i), []).append(i)
        return groups

    def averaging_matrix(self) -> Tuple[List[str], np.ndarray]:
        """(base names, [n_names, J_all] float32 rows averaging the same-named joints of all formats)."""
        groups = self.name_groups()
        names_ = sorted(groups)
        mat = np.zeros((len(names_), self.n_joints), np.float32)
        for r, n in enumerate(names_):
            mat[r, groups[n]] = 1.0 / len(groups[n])
        return names_, mat

    def __repr__(self):
        return f'JointSpace({list(self.formats)})'
