"""Tests of posekit.data.h36m on a tiny synthetic Human3.6M written in the common npz layout."""
import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from posekit import geometry
from posekit.data import h36m, lifting

SUBJECTS = ('S1', 'S5', 'S9')
ACTIONS = ('Walking 1', 'Sitting')
N_FRAMES = 12


def _cameras(subject_index):
    """4 cameras around the origin of a z-up world, 3.5-5 m away, 1.4-1.8 m high (like H36M)."""
    cams = []
    for c, camera_id in enumerate(h36m.CAMERA_IDS):
        az = np.deg2rad(45 + 90 * c + 7 * subject_index)
        eye = np.array([4200 * np.cos(az), 4200 * np.sin(az), 1500 + 60 * c])
        rot = geometry.look_at_rotation(eye, [0, 0, 900], world_up=(0, 0, 1))
        k = h36m.intrinsic_matrix(h36m.H36M_INTRINSICS[camera_id])
        cams.append(geometry.Camera(eye, rot, k, world_up=(0, 0, 1)))
    return cams


def _write_dataset(folder, rng, layout='h36m', n_joints=17, extra_2d_frames=0):
    positions_3d, positions_2d, cameras = {}, {}, {}
    for s, subject in enumerate(SUBJECTS):
        cameras[subject] = _cameras(s)
        positions_3d[subject], positions_2d[subject] = {}, {}
        for action in ACTIONS:
            root = np.array([0.2, -0.1, 0.9]) + rng.normal(0, 0.3, (N_FRAMES, 1, 3)) * [1, 1, 0]
            joints = root + rng.uniform(-0.5, 0.5, (N_FRAMES, 32, 3)) * [1, 1, 1.6]
            positions_3d[subject][action] = joints  # metres, world z up
            world17 = joints[:, h36m.H36M_32_TO_17] * 1000.0
            per_cam = []
            for cam in cameras[subject]:
                px = cam.world_to_image(world17)
                if extra_2d_frames:
                    px = np.concatenate([px, px[-extra_2d_frames:]])
                per_cam.append(px.astype(np.float32))
            positions_2d[subject][action] = per_cam
    np.savez_compressed(folder / 'data_3d_h36m.npz', positions_3d=positions_3d)
    metadata = {'layout_name': layout, 'num_joints': n_joints,
                'keypoints_symmetry': [[4, 5, 6, 11, 12, 13], [1, 2, 3, 14, 15, 16]]}
    np.savez_compressed(folder / 'data_2d_h36m_gt.npz', positions_2d=positions_2d, metadata=metadata)
    return positions_3d, cameras


def _write_cameras_file(path, cameras):
    extrinsics = {}
    for subject, cams in cameras.items():
        extrinsics[subject] = {}
        for camera_id, cam in zip(h36m.CAMERA_IDS, cams):
            x, y, z, w = Rotation.from_matrix(cam.rot_world_to_cam.T).as_quat()  # camera -> world
            extrinsics[subject][camera_id] = {'orientation': [w, x, y, z],
                                              'translation': cam.optical_center.tolist()}
    path.write_text(json.dumps({'extrinsics': extrinsics}))


@pytest.fixture
def dataset(tmp_path, rng):
    positions_3d, cameras = _write_dataset(tmp_path, rng)
    _write_cameras_file(tmp_path / 'cams.json', cameras)
    return tmp_path, positions_3d, cameras


def _expected_targets(positions_3d, cameras, subject, action, c):
    world = positions_3d[subject][action][:, h36m.H36M_32_TO_17] * 1000.0
    cam = cameras[subject][c].world_to_camera(world)
    return cam - cam[:, :1]


def test_quaternion_to_matrix_matches_scipy(rng):
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    np.testing.assert_allclose(h36m.quaternion_to_matrix(q),
                               Rotation.from_quat([x, y, z, w]).as_matrix(), atol=1e-12)
    with pytest.raises(ValueError, match='q must be a finite non-zero quaternion'):
        h36m.quaternion_to_matrix([0, 0, 0])


def test_splits_with_cameras_file_reproduce_the_targets_and_inputs(dataset):
    folder, positions_3d, cameras = dataset
    sets = h36m.h36m_splits(str(folder), train_subjects=('S1', 'S5'), test_subjects=('S9',),
                            cameras_file=str(folder / 'cams.json'))
    assert set(sets) == {'train', 'test'}
    train, test = sets['train'], sets['test']
    assert set(train.subjects.tolist()) == {'S1', 'S5'} and set(test.subjects.tolist()) == {'S9'}
    assert len(train) == 2 * len(ACTIONS) * 4 * N_FRAMES and train.joints == 'h36m_17'
    assert train.clip_names == ['S1/Sitting', 'S1/Walking 1', 'S5/Sitting', 'S5/Walking 1']
    for c in range(4):
        sel = (test.clip_ids == test.clip_names.index('S9/Walking 1')) & (test.camera_ids == c)
        np.testing.assert_allclose(test.targets[sel],
                                   _expected_targets(positions_3d, cameras, 'S9', 'Walking 1', c),
                                   atol=2e-3)
        intr = h36m.H36M_INTRINSICS[h36m.CAMERA_IDS[c]]
        px = cameras['S9'][c].world_to_image(positions_3d['S9']['Walking 1'][:, h36m.H36M_32_TO_17] * 1000)
        np.testing.assert_allclose(
            test.inputs[sel], lifting.normalize_screen_coordinates(px, intr['res_w'], intr['res_h']),
            atol=1e-5)
    np.testing.assert_array_equal(test.targets[:, 0], 0.0)


def test_pnp_recovers_the_extrinsics_without_a_cameras_file(dataset):
    folder, positions_3d, cameras = dataset
    sets = h36m.h36m_splits(str(folder), train_subjects=('S1',), test_subjects=('S9',))
    assert 'PnP' in sets['train'].description
    sel = (sets['test'].clip_ids == sets['test'].clip_names.index('S9/Sitting')) & (sets['test'].camera_ids == 2)
    np.testing.assert_allclose(sets['test'].targets[sel],
                               _expected_targets(positions_3d, cameras, 'S9', 'Sitting', 2), atol=0.05)
    fitted = h36m.estimate_cameras(positions_3d, h36m.load_positions_2d(str(folder / 'data_2d_h36m_gt.npz'))[0],
                                   ['S5'])
    for cam, true in zip(fitted['S5'], cameras['S5']):
        assert cam.rms_px < 1e-3
        np.testing.assert_allclose(cam.camera.rot_world_to_cam, true.rot_world_to_cam, atol=1e-7)
        np.testing.assert_allclose(cam.camera.optical_center, true.optical_center, atol=1e-3)


def test_saved_cameras_round_trip(dataset, tmp_path):
    folder, positions_3d, _ = dataset
    fitted = h36m.estimate_cameras(positions_3d, h36m.load_positions_2d(str(folder / 'data_2d_h36m_gt.npz'))[0],
                                   ['S1'])
    h36m.save_cameras_file(str(tmp_path / 'fitted.json'), fitted)
    loaded = h36m.load_cameras_file(str(tmp_path / 'fitted.json'))
    for a, b in zip(fitted['S1'], loaded['S1']):
        assert a.camera.allclose(b.camera) and (a.width, a.height) == (b.width, b.height)


def test_h36m_16_frame_step_val_subjects_and_trimmed_2d(tmp_path, rng):
    positions_3d, cameras = _write_dataset(tmp_path, rng, extra_2d_frames=3)  # detections 3 frames longer
    _write_cameras_file(tmp_path / 'cams.json', cameras)
    sets = h36m.h36m_splits(str(tmp_path), joints='h36m_16', train_subjects=('S1', 'S5'),
                            test_subjects=('S9',), val_subjects=('S5',), frame_step=5,
                            test_frame_step=1, cameras_file=str(tmp_path / 'cams.json'))
    assert set(sets) == {'train', 'val', 'test'}
    assert set(sets['val'].subjects.tolist()) == {'S5'} and set(sets['train'].subjects.tolist()) == {'S1'}
    assert sets['train'].inputs.shape[1:] == (16, 2)
    assert sorted(set(sets['train'].frame_ids.tolist())) == [0, 5, 10]
    assert sets['test'].frame_ids.max() == N_FRAMES - 1  # the 2D is cut to the 3D length
    full = h36m.h36m_splits(str(tmp_path), train_subjects=('S1',), test_subjects=('S9',),
                            cameras_file=str(tmp_path / 'cams.json'))['test']
    keep = [j for j in range(17) if j != h36m.NOSE_INDEX]
    np.testing.assert_array_equal(sets['test'].targets, full.targets[:, keep])
    with pytest.raises(ValueError, match=r"val_subjects must be among train_subjects \['S1', 'S5'\]"):
        h36m.h36m_splits(str(tmp_path), train_subjects=('S1', 'S5'), val_subjects=('S9',))


def test_clear_errors_for_missing_files_keys_and_layouts(tmp_path, rng):
    with pytest.raises(FileNotFoundError, match='data_3d_h36m.npz not found: expected Human3.6M'):
        h36m.h36m_splits(str(tmp_path))
    positions_3d, cameras = _write_dataset(tmp_path, rng)
    with pytest.raises(FileNotFoundError, match='data_2d_h36m_cpn_ft_h36m_dbb.npz not found'):
        h36m.h36m_splits(str(tmp_path), keypoints='cpn_ft_h36m_dbb')
    with pytest.raises(h36m.H36MFormatError,
                       match=r"data_3d_h36m.npz: positions_3d has no subjects \['S6', 'S7', 'S8', 'S11'\]"):
        h36m.h36m_splits(str(tmp_path))  # the default protocol needs S1 S5 S6 S7 S8 S9 S11
    np.savez(tmp_path / 'data_2d_h36m_bad.npz', metadata={'layout_name': 'h36m', 'num_joints': 17})
    with pytest.raises(h36m.H36MFormatError, match=r"has no 'positions_2d' array; it holds \['metadata'\]"):
        h36m.load_positions_2d(str(tmp_path / 'data_2d_h36m_bad.npz'))
    np.savez(tmp_path / 'data_3d_h36m.npz', positions_3d={'S1': {'Walking': np.zeros((5, 17, 3))}})
    with pytest.raises(h36m.H36MFormatError, match=r"positions_3d\['S1'\]\['Walking'\] must have shape \[T, 32, 3\]"):
        h36m.load_positions_3d(str(tmp_path / 'data_3d_h36m.npz'))
    coco = tmp_path / 'coco'
    coco.mkdir()
    _write_dataset(coco, rng, layout='coco', n_joints=17)
    with pytest.raises(h36m.H36MFormatError, match="layout_name='coco', num_joints=17"):
        h36m.load_positions_2d(str(coco / 'data_2d_h36m_gt.npz'))
    cams = tmp_path / 'cams.json'
    cams.write_text(json.dumps({'extrinsics': {'S1': {'54138969': {'orientation': [1, 0, 0, 0],
                                                                   'translation': [0, 0, 0]}}}}))
    with pytest.raises(h36m.H36MFormatError, match="extrinsics\\['S1'\\] has no camera '55011271'"):
        h36m.load_cameras_file(str(cams))
    with pytest.raises(FileNotFoundError, match='cameras file .*nope.json not found'):
        h36m.load_cameras_file(str(tmp_path / 'nope.json'))
