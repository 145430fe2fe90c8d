import numpy as np
import pytest

from posekit import skeletons
from posekit.data import bodies, bvh, mocap


@pytest.fixture(scope='module')
def procedural_clips():
    return mocap.procedural_motions(n_subjects=4, clips_per_subject=4, seconds=2.0, seed=0)


def _stacked_poses(clips, formats, subject_shapes=True):
    poses = {f: np.concatenate([bodies.format_joints(c.motion, f, c.subject if subject_shapes else None)
                                for c in clips]) for f in formats}
    order = np.random.default_rng(0).permutation(len(poses[formats[0]]))
    return {f: p[order] for f, p in poses.items()}


def test_every_format_has_its_registry_order_and_finite_joints(procedural_clips):
    motion = procedural_clips[0].motion
    for skeleton in bodies.SUPPORTED_FORMATS:
        joints = bodies.format_joints(motion, skeleton)
        assert joints.shape == (motion.n_frames, skeletons.get(skeleton).n_joints, 3)
        assert np.all(np.isfinite(joints))
    space = skeletons.JointSpace(bodies.DEFAULT_FORMATS)
    assert bodies.all_format_joints(motion).shape == (motion.n_frames, space.n_joints, 3)
    h17 = bodies.format_joints(motion, 'h36m_17')
    h16 = bodies.format_joints(motion, 'h36m_16')
    np.testing.assert_allclose(h16, np.delete(h17, skeletons.get('h36m_17').index('nose'), axis=1))


def test_cmu31_of_a_cmu_motion_is_its_own_joints(procedural_clips):
    motion = procedural_clips[1].motion
    joints = bodies.format_joints(motion, 'cmu_31')
    for name, bvh_name in (('pelv', 'Hips'), ('lelb', 'LeftForeArm'), ('rtoe', 'RightToeBase')):
        np.testing.assert_array_equal(joints[:, skeletons.get('cmu_31').index(name)],
                                      motion.positions[:, motion.index(bvh_name)])


def test_landmarks_are_rigid_offsets_in_bone_frames(procedural_clips):
    motion = procedural_clips[2].motion
    names = ['lhip', 'lasis', 'ltroch', 'lheel', 'headc', 'htop']
    lm = bodies.landmarks(motion, names)
    # Offsets from the anchor joint keep their length and follow the segment's rotation.
    hip = motion.positions[:, motion.index('LeftUpLeg')]
    np.testing.assert_allclose(lm[:, 0], hip, atol=1e-9)
    for k in (1, 2):
        d = np.linalg.norm(lm[:, k] - hip, axis=-1)
        np.testing.assert_allclose(d, d[0], rtol=1e-9)
    head = motion.positions[:, motion.index('Head')]
    rot = motion.rotations[:, motion.index('Head')]
    local = np.einsum('tba,tb->ta', rot, lm[:, 5] - head)  # back to the rest frame
    np.testing.assert_allclose(local, local[:1].repeat(len(local), 0), atol=1e-6)
    np.testing.assert_allclose(local[0] / bodies.body_scale(motion), [0, 170, 0], atol=1e-6)


def test_upper_arm_alignment_maps_anatomical_down_to_the_rest_bone():
    # procedural motion rests in a T-pose: an anatomical offset "down the arm" is lateral at rest.
    motion = mocap.procedural_motions(n_subjects=1, clips_per_subject=1, seconds=0.2)[0].motion
    idx = bodies.joint_index(motion)
    rest = bodies.rest_positions(motion)
    j, align = bodies._segment_alignment('cmu_31', 'luarm', idx, rest)
    np.testing.assert_allclose(align @ np.array([0.0, -1.0, 0.0]), [1.0, 0.0, 0.0], atol=1e-9)
    j, align = bodies._segment_alignment('cmu_31', 'ruarm', idx, rest)
    np.testing.assert_allclose(align @ np.array([0.0, -1.0, 0.0]), [-1.0, 0.0, 0.0], atol=1e-9)


def test_same_named_joints_disagree_2_to_8_cm_and_affine_maps_reduce_it_3x(procedural_clips):
    poses = _stacked_poses(procedural_clips, bodies.DEFAULT_FORMATS)
    rows = bodies.disagreement_table(poses, bodies.DEFAULT_FORMATS)
    assert len(rows) == 6
    for row in rows:
        assert 20.0 <= row['mean_mm'] <= 80.0, row
        assert row['reduction'] >= 3.0, row
        assert max(row['joints'].values()) <= 120.0, row
    # Hips and head differ most (the FORMATS.md notes).
    h36m_smpl = next(r for r in rows if r['pair'] == ('h36m_17', 'smpl_24'))['joints']
    assert h36m_smpl['lhip'] > h36m_smpl['lwri'] and h36m_smpl['pelv'] > h36m_smpl['lelb']


def test_formats_have_different_joint_sets():
    sets = {f: set(skeletons.get(f).names) for f in bodies.DEFAULT_FORMATS}
    assert 'htop' in sets['h36m_17'] and 'htop' not in sets['smpl_24']
    assert 'leye' in sets['coco_19'] and 'leye' not in sets['mpi_inf_3dhp_17']
    assert bodies.shared_joint_names('coco_19', 'h36m_17') == [
        'nose', 'pelv', 'lsho', 'lelb', 'lwri', 'lhip', 'lkne', 'lank', 'rsho', 'relb', 'rwri', 'rhip',
        'rkne', 'rank']


def test_fit_affine_combination_recovers_weights(rng):
    source = rng.normal(0, 300, (200, 5, 3))
    weights = rng.uniform(-0.5, 1.0, (3, 5))
    weights /= weights.sum(axis=1, keepdims=True)
    target = bodies.apply_affine_combination(weights, source)
    fitted = bodies.fit_affine_combination(source, target)
    np.testing.assert_allclose(fitted, weights, atol=1e-9)
    np.testing.assert_allclose(fitted.sum(axis=1), 1.0)
    with pytest.raises(ValueError, match='same N'):
        bodies.fit_affine_combination(source, target[:10])


def test_body_shape_is_deterministic_per_subject(procedural_clips):
    a, b = bodies.body_shape('p01'), bodies.body_shape('p01')
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, bodies.body_shape('p02'))
    np.testing.assert_array_equal(bodies.body_shape(None), np.ones(3))
    motion = procedural_clips[0].motion
    assert not np.allclose(bodies.format_joints(motion, 'coco_19', 'p01'),
                           bodies.format_joints(motion, 'coco_19', 'p02'))


def test_definitions_table_is_in_the_module_docstring():
    table = bodies.definitions_table()
    docstring = '\n'.join(line[4:] if line.startswith('    ') else line for line in bodies.__doc__.split('\n'))
    assert table in docstring


def test_bad_arguments_raise_value_errors(procedural_clips):
    motion = procedural_clips[0].motion
    with pytest.raises(ValueError, match="skeleton must be one of .* got 'cmu_daz_43'"):
        bodies.format_joints(motion, 'cmu_daz_43')
    other = bvh.Motion(positions=motion.positions, joint_names=motion.joint_names, parents=motion.parents,
                       fps=30.0, rotations=motion.rotations, offsets=motion.offsets,
                       is_end_site=motion.is_end_site, skeleton=None)
    with pytest.raises(ValueError, match='motion.skeleton must be one of'):
        bodies.landmarks(other)
    with pytest.raises(ValueError, match='holdout_fraction'):
        bodies.disagreement_table({}, holdout_fraction=1.5)


def test_real_cmu_motion_disagreement_and_affine_premise(cmu_mocap_dir):
    clips = mocap.load_mocap_folder(cmu_mocap_dir, subjects=['02', '13'], max_frames_per_clip=120)
    assert {c.motion.convention for c in clips} == {'cmu_mb2', 'cmu_daz'}
    poses = _stacked_poses(clips, bodies.DEFAULT_FORMATS)
    rows = bodies.disagreement_table(poses, bodies.DEFAULT_FORMATS)
    for row in rows:
        assert 20.0 <= row['mean_mm'] <= 80.0, row
        assert row['reduction'] >= 3.0, row


def test_cross_convention_pair_gives_the_same_joints(cmu_mocap_dir):
    # The same trial in two releases with different rest poses (cmu_mb2: T-pose with an added
    # T-pose frame; cmu_3dsmax: arms down) yields the same format joints: the rest-pose alignment
    # of the segments works. The hands differ between the releases, so wrists' children are skipped.
    a = bvh.load_bvh(cmu_mocap_dir / 'cmu_mb2' / '01_01.bvh').frames(slice(1, 601))
    b = bvh.load_bvh(cmu_mocap_dir / 'cmu_3dsmax' / '01_01.bvh').frames(slice(0, 600))
    for skeleton in ('h36m_17', 'coco_19', 'mpi_inf_3dhp_17'):
        np.testing.assert_allclose(bodies.format_joints(a, skeleton), bodies.format_joints(b, skeleton), atol=1e-3)
    smpl = skeletons.get('smpl_24')
    keep = [i for i, n in enumerate(smpl.names) if n not in ('lhan', 'rhan')]
    np.testing.assert_allclose(bodies.format_joints(a, 'smpl_24')[:, keep],
                               bodies.format_joints(b, 'smpl_24')[:, keep], atol=1e-3)


def test_daz_motion_gets_every_format(cmu_mocap_dir):
    motion = bvh.load_bvh(cmu_mocap_dir / 'cmu_daz' / '02_01.bvh').frames(slice(1, 50))
    assert bodies.convention_of(motion) == 'cmu_daz_43'
    for skeleton in bodies.SUPPORTED_FORMATS:
        joints = bodies.format_joints(motion, skeleton)
        assert np.all(np.isfinite(joints))
    # Plausible anatomy: head top above the shoulders above the pelvis, ~1.4-2 m tall figure.
    h = bodies.format_joints(motion, 'h36m_17')
    ji = skeletons.get('h36m_17')
    y = h[..., 1]
    assert np.all(y[:, ji.index('htop')] > y[:, ji.index('lsho')])
    assert np.all(y[:, ji.index('lsho')] > y[:, ji.index('pelv')])
    assert 1400 < np.median(y[:, ji.index('htop')] - np.minimum(y[:, ji.index('lank')], y[:, ji.index('rank')])) < 2000
