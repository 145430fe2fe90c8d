import glob
import os

import numpy as np
import pytest

from posekit.data import bvh

SIMPLE = """HIERARCHY
ROOT Hips
{
  OFFSET 0 0 0
  CHANNELS 6 Xposition Yposition Zposition Zrotation Xrotation Yrotation
  JOINT Chest
  {
    OFFSET 0 10 0
    CHANNELS 3 Xrotation Yrotation Zrotation
    End Site
    {
      OFFSET 0 5 0
    }
  }
  JOINT Leg
  {
    OFFSET 2 -10 0
    CHANNELS 3 Yrotation Xrotation Zrotation
    End Site
    {
      OFFSET 0 -8 0
    }
  }
}
MOTION
Frames: 2
Frame Time: 0.04
1 90 3 0 0 0 0 0 0 0 0 0
1 90 3 90 0 0 0 0 90 0 90 0
"""


def _write(tmp_path, text, name='x.bvh'):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_forward_kinematics_by_hand(tmp_path):
    motion = bvh.load_bvh(_write(tmp_path, SIMPLE), unit='cm')
    assert motion.joint_names == ['Hips', 'Chest', 'Chest_End', 'Leg', 'Leg_End']
    assert motion.parents == [-1, 0, 1, 0, 3]
    assert list(motion.is_end_site) == [False, False, True, False, True]
    assert motion.fps == pytest.approx(25.0)
    p = motion.positions / 10.0  # back to file units (cm)
    np.testing.assert_allclose(p[0], [[1, 90, 3], [1, 100, 3], [1, 105, 3], [3, 80, 3], [3, 72, 3]],
                               atol=1e-12)
    # Frame 1: root Zrotation 90 turns +y into -x; Chest's Zrotation 90 (its third channel) adds
    # another 90 degrees about z for the End Site; Leg's first channel is Yrotation 90.
    root_z = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]], float)
    chest = np.array([1, 90, 3]) + root_z @ [0, 10, 0]
    np.testing.assert_allclose(p[1, 1], chest, atol=1e-9)
    np.testing.assert_allclose(p[1, 2], chest + root_z @ root_z @ [0, 5, 0], atol=1e-9)
    leg = np.array([1, 90, 3]) + root_z @ [2, -10, 0]
    np.testing.assert_allclose(p[1, 3], leg, atol=1e-9)
    # Leg's channels are Y X Z = (0, 90, 0): Rx(90) turns its End Site offset (0,-8,0) into
    # (0,0,-8), which the root's z rotation leaves unchanged.
    np.testing.assert_allclose(p[1, 4], leg + [0, 0, -8], atol=1e-9)


def test_unit_rule(tmp_path):
    path = _write(tmp_path, SIMPLE)
    # Unknown skeleton: the height heuristic (file height 33 units) picks CMU units (1.86 m)
    # over inches (0.84 m, below the plausible range) and centimetres (0.33 m).
    auto = bvh.load_bvh(path)
    assert auto.unit_mm == bvh.MM_PER_CMU_UNIT
    np.testing.assert_allclose(bvh.load_bvh(path, unit=2.0).positions, auto.positions * 2.0
                               / bvh.MM_PER_CMU_UNIT)
    with pytest.raises(ValueError, match='unit must be'):
        bvh.load_bvh(path, unit='furlong')
    with pytest.raises(ValueError, match='unit must be a positive'):
        bvh.load_bvh(path, unit=-1.0)


@pytest.mark.parametrize('mutate, message, line', [
    (lambda t: t.replace('1 90 3 90 0 0 0 0 90 0 90 0\n', ''), 'truncated motion', 29),
    (lambda t: t.replace('1 90 3 90 0 0 0 0 90 0 90 0', '1 90 3 90 0 0 0 0 90 0 90'),
     'has 11 values, expected 12', 29),
    (lambda t: t.replace('1 90 3 90 0 0', '1 90 3 9x0 0 0'), "bad number '9x0'", 29),
    (lambda t: t.replace('1 90 3 90 0 0', '1 90 3 nan 0 0'), 'non-finite', 29),
    (lambda t: t.replace('CHANNELS 3 Xrotation Yrotation Zrotation', 'CHANNELS 4 Xrotation Yrotation'
                         ' Zrotation'), 'declares 4 channels but lists 3', 9),
    (lambda t: t.replace('OFFSET 0 10 0', 'OFFSET 0 1O 0'), 'bad number in OFFSET', 8),
    (lambda t: t.replace('Frames: 2', 'Frames: two'), 'expected "Frames: <n>"', 26),
    (lambda t: t.replace('Xrotation Yrotation Zrotation', 'Xrotation Yrotation Wrotation'),
     "unknown channel 'Wrotation'", 9),
    (lambda t: t[:t.index('MOTION')], 'unexpected end of file', None),
])
def test_malformed_files_name_file_and_line(tmp_path, mutate, message, line):
    path = _write(tmp_path, mutate(SIMPLE), 'bad.bvh')
    with pytest.raises(ValueError, match=message) as info:
        bvh.load_bvh(path, unit='cm')
    assert 'bad.bvh' in str(info.value)
    if line is not None:
        assert f'bad.bvh:{line}:' in str(info.value)


def test_missing_file():
    with pytest.raises(FileNotFoundError):
        bvh.load_bvh('/nonexistent/file.bvh')


def _all_bvh(folder):
    files = sorted(glob.glob(os.path.join(folder, '*', '*.bvh')))
    assert files, f'no BVH files in {folder}'
    return files


def _check_real_file(path):
    motion = bvh.load_bvh(path)
    assert motion.skeleton in ('cmu_31', 'cmu_daz_43'), path
    # Bone lengths constant over frames (rigid skeleton) to 1e-6 relative.
    pos = motion.positions
    for j, p in enumerate(motion.parents):
        if p == -1:
            continue
        length = np.linalg.norm(pos[:, j] - pos[:, p], axis=-1)
        if length[0] > 1e-3:
            np.testing.assert_allclose(length, length[0], rtol=1e-6, err_msg=f'{path} joint {j}')
    # Vertical extent of frame 0, ground (lowest point) to the head joint: a human height.
    head = motion.index('Head' if 'Head' in motion.joint_names else 'head')
    extent = pos[0, head, 1] - pos[0, :, 1].min()
    assert 1200.0 <= extent <= 2000.0, (path, extent, motion.unit_mm)
    return motion


def test_every_training_bvh_loads_with_the_right_unit(cmu_mocap_dir):
    conventions = {_check_real_file(f).convention for f in _all_bvh(cmu_mocap_dir)}
    assert conventions == {'cmu_mb2', 'cmu_daz', 'cmu_3dsmax'}


def test_every_test_bvh_loads_with_the_right_unit(cmu_mocap_test_dir):
    motions = [_check_real_file(f) for f in _all_bvh(cmu_mocap_test_dir)]
    assert {m.convention for m in motions} == {'cmu_mb2', 'cmu_daz', 'cmu_3dsmax', 'cmu_amc2bvh'}
    # amc2bvh writes its default 30 fps header; the frames are the 120 fps capture.
    assert all(m.fps == pytest.approx(120.0, rel=1e-4) for m in motions)


def test_cross_convention_pair_agrees(cmu_mocap_dir):
    """02_01 exists in the MotionBuilder and the Daz releases: same capture, so the pelvis moves
    the same way in both (the Daz figure is a generic body, so only trajectories are compared)."""
    mb2 = bvh.load_bvh(cmu_mocap_dir / 'cmu_mb2' / '02_01.bvh')
    daz = bvh.load_bvh(cmu_mocap_dir / 'cmu_daz' / '02_01.bvh')
    n = min(mb2.n_frames, daz.n_frames)
    a = mb2.positions[10:n, 0] - mb2.positions[10, 0]
    b = daz.positions[10:n, 0] - daz.positions[10, 0]
    travel = np.linalg.norm(a[-1])
    assert travel > 1000.0  # a walk
    assert np.abs(a - b).max() < 0.1 * travel


# Issue 18 item 6: values that overflow, absurd frame times, repeated channels, byte-order mark.
@pytest.mark.parametrize('unit', ['cm', 'auto'])
@pytest.mark.parametrize('mutate, message, line', [
    # An OFFSET whose rest position overflows once in millimetres (1e308 cm = 1e309 mm).
    (lambda t: t.replace('OFFSET 2 -10 0', 'OFFSET 1e308 -10 0'), "OFFSET of 'Leg'.*not finite", 17),
    # A root position channel that overflows: reported at its frame's line.
    (lambda t: t.replace('1 90 3 90 0 0', '1e308 90 3 90 0 0'), 'frame 1: .*not finite', 29),
    (lambda t: t.replace('Frame Time: 0.04', 'Frame Time: 1e-320'), 'Frame Time 1e-320 gives a non-finite frame rate', 27),
    (lambda t: t.replace('Frame Time: 0.04', 'Frame Time: 0'), 'Frame Time must be positive', 27),
    (lambda t: t.replace('Frame Time: 0.04', 'Frame Time: -0.04'), 'Frame Time must be positive', 27),
    (lambda t: t.replace('Frame Time: 0.04', 'Frame Time: inf'), 'non-finite number in Frame Time', 27),
    (lambda t: t.replace('Frame Time: 0.04', 'Frame Time: 1e400'), 'non-finite number in Frame Time', 27),
    (lambda t: t.replace('OFFSET 0 10 0', 'OFFSET 0 inf 0'), 'non-finite number in OFFSET', 8),
    (lambda t: t.replace('CHANNELS 3 Xrotation Yrotation Zrotation', 'CHANNELS 3 Xrotation Xrotation Zrotation'),
     "joint 'Chest' lists channel 'Xrotation' twice", 9),
    (lambda t: t.replace('Xposition Yposition Zposition Zrotation', 'Xposition Xposition Zposition Zrotation'),
     "joint 'Hips' lists channel 'Xposition' twice", 5),
])
def test_overflow_frame_time_and_repeated_channels_name_file_and_line(tmp_path, mutate, message, line, unit):
    path = _write(tmp_path, mutate(SIMPLE), 'edge.bvh')
    with pytest.raises(ValueError, match=message) as info:
        bvh.load_bvh(path, unit=unit)
    assert f'edge.bvh:{line}:' in str(info.value)


def test_offsets_whose_sum_overflows_are_reported_at_the_child(tmp_path):
    text = SIMPLE.replace('OFFSET 0 10 0', 'OFFSET 1e308 10 0').replace('OFFSET 0 5 0', 'OFFSET 1e308 5 0')
    with pytest.raises(ValueError, match="edge.bvh:12: malformed BVH: OFFSET of 'Chest_End'.*not finite"):
        bvh.load_bvh(_write(tmp_path, text, 'edge.bvh'), unit='mm')


def test_huge_but_finite_values_load_with_finite_positions(tmp_path):
    """Large values that stay finite in mm are not errors (only overflow is)."""
    motion = bvh.load_bvh(_write(tmp_path, SIMPLE.replace('1 90 3 90 0 0', '1e300 90 3 90 0 0')), unit='cm')
    assert np.all(np.isfinite(motion.positions)) and motion.positions[1, 0, 0] == pytest.approx(1e301)


def test_explicit_fps_must_be_finite(tmp_path):
    path = _write(tmp_path, SIMPLE)
    with pytest.raises(ValueError, match="fps must be 'auto' or a positive finite number, got inf"):
        bvh.load_bvh(path, unit='cm', fps=float('inf'))
    assert bvh.load_bvh(path, unit='cm', fps=50.0).fps == 50.0


def test_utf8_byte_order_mark_is_accepted(tmp_path):
    plain = bvh.load_bvh(_write(tmp_path, SIMPLE), unit='cm')
    path = tmp_path / 'bom.bvh'
    path.write_bytes(b'\xef\xbb\xbf' + SIMPLE.encode('utf-8'))
    with_bom = bvh.load_bvh(path, unit='cm')
    np.testing.assert_array_equal(with_bom.positions, plain.positions)
    assert with_bom.joint_names == plain.joint_names
    # Line numbers of errors are unchanged by the mark.
    path.write_bytes(b'\xef\xbb\xbf' + SIMPLE.replace('OFFSET 0 10 0', 'OFFSET 0 1O 0').encode('utf-8'))
    with pytest.raises(ValueError, match='bom.bvh:8: malformed BVH: bad number in OFFSET'):
        bvh.load_bvh(path, unit='cm')
