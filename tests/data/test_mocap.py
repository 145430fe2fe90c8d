import numpy as np
import pytest

from posekit import skeletons
from posekit.data import bvh, mocap


def test_procedural_motion_is_deterministic_and_rigid():
    a = mocap.procedural_motions(n_subjects=2, clips_per_subject=3, seconds=2.0, seed=3)
    b = mocap.procedural_motions(n_subjects=2, clips_per_subject=3, seconds=2.0, seed=3)
    c = mocap.procedural_motions(n_subjects=2, clips_per_subject=3, seconds=2.0, seed=4)
    assert [x.name for x in a] == [x.name for x in b]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.motion.positions, y.motion.positions)
    assert not np.allclose(a[0].motion.positions, c[0].motion.positions)
    for clip in a:
        m = clip.motion
        assert m.skeleton == 'cmu_31' and m.positions.shape == (60, 38, 3)
        joint_names = [n for n, e in zip(m.joint_names, m.is_end_site) if not e]
        assert skeletons.identify_bvh_skeleton(joint_names)[0] == 'cmu_31'
        for j, p in enumerate(m.parents):
            if p >= 0:
                length = np.linalg.norm(m.positions[:, j] - m.positions[:, p], axis=-1)
                np.testing.assert_allclose(length, length[0], rtol=1e-9, atol=1e-9)
        # Standing on the floor: feet touch y = 0 (jumps lift off), head 1.3-2.0 m up.
        assert m.positions[..., 1].min() >= -1e-6
        head = m.positions[:, m.index('Head_End'), 1]
        assert np.all((head > 700) & (head < 2100)), clip.name


def test_subjects_have_their_own_proportions():
    clips = mocap.procedural_motions(n_subjects=3, clips_per_subject=1, seconds=1.0)
    thigh = [np.linalg.norm(c.motion.offsets[c.motion.index('LeftLeg')]) for c in clips]
    assert len(set(np.round(thigh, 3))) == 3


def test_split_by_subject_is_disjoint():
    clips = mocap.procedural_motions(n_subjects=5, clips_per_subject=2, seconds=1.0)
    train, test = mocap.split_by_subject(clips, seed=1)
    assert {c.subject for c in train}.isdisjoint({c.subject for c in test})
    assert len(train) + len(test) == len(clips) and test
    train, test = mocap.split_by_subject(clips, test_subjects=['p01'])
    assert {c.subject for c in test} == {'p01'}
    with pytest.raises(ValueError, match="test_subjects \\['zz'\\]"):
        mocap.split_by_subject(clips, test_subjects=['zz'])


def test_resample_keeps_duration():
    clip = mocap.procedural_motions(n_subjects=1, clips_per_subject=1, seconds=2.0, fps=60)[0]
    half = mocap.resample(clip.motion, 30)
    assert half.n_frames == 60 and half.fps == 30
    np.testing.assert_array_equal(half.positions[1], clip.motion.positions[2])


def test_plausible_frames_drops_glitches():
    clip = mocap.procedural_motions(n_subjects=1, clips_per_subject=1, seconds=2.0)[0]
    m = clip.motion
    m.positions = m.positions.copy()
    m.positions[10] -= m.positions[10, 0]  # the root "sits at the origin" for one frame
    ok = mocap.plausible_frames(m)
    assert not ok[10] and ok[30]


def test_folder_loading_skips_rest_pose_and_reads_manifest(cmu_mocap_dir):
    clips = mocap.load_mocap_folder(cmu_mocap_dir / 'cmu_mb2', fps=None, subjects=['02'])
    assert {c.subject for c in clips} == {'02'}
    raw = bvh.load_bvh(cmu_mocap_dir / 'cmu_mb2' / '02_01.bvh')
    first = [c for c in clips if c.name.endswith('02_01')][0].motion
    # The manifest marks frame 0 as an added T-pose: it is gone.
    assert first.n_frames == raw.n_frames - 1
    np.testing.assert_array_equal(first.positions[0], raw.positions[1])


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        mocap.load_mocap_folder(tmp_path / 'nope')
    with pytest.raises(FileNotFoundError, match='no .bvh files'):
        mocap.load_mocap_folder(tmp_path)


def test_default_mocap_dir_is_found_beside_the_repository_not_the_working_directory(tmp_path, monkeypatch):
    import pathlib
    from posekit.data import mocap as mocap_module
    (tmp_path / 'shared' / 'data' / 'cmu_mocap').mkdir(parents=True)
    (tmp_path / 'repo').mkdir()
    assert mocap_module.default_mocap_dir(tmp_path / 'repo') == str(tmp_path / 'shared' / 'data' / 'cmu_mocap')
    assert mocap_module.default_mocap_dir(tmp_path / 'elsewhere' / 'repo') is None
    monkeypatch.chdir(tmp_path / 'repo')  # a working directory with ../shared beside it changes nothing
    repo = pathlib.Path(mocap_module.__file__).resolve().parents[2]
    expected = repo.parent / 'shared' / 'data' / 'cmu_mocap'
    assert mocap_module.default_mocap_dir() == (str(expected) if expected.is_dir() else None)
