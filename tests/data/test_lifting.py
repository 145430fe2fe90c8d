"""Tests of posekit.data.lifting: normalization, cameras, sets from motion, the resumable stream."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from posekit import skeletons
from posekit.data import bodies, lifting, mocap

W, H = 1000, 1002


@pytest.fixture(scope='module')
def clips():
    return mocap.procedural_motions(n_subjects=3, clips_per_subject=1, seconds=1.5, fps=10.0, seed=1)


@pytest.fixture(scope='module')
def train_set(clips):
    return lifting.make_lifting_set(clips, lifting.LiftingSpec(), 'train', seed=0)


# ------------------------------------------------------------------------------------ normalization
def test_normalize_screen_coordinates_formula_and_inverse(rng):
    corners = np.array([[0.0, 0.0], [W, H], [W / 2, H / 2]])
    np.testing.assert_allclose(lifting.normalize_screen_coordinates(corners, W, H),
                               [[-1, -H / W], [1, H / W], [0, 0]], atol=1e-12)
    px = rng.uniform(-50, 1050, (4, 17, 2))
    expected = px / W * 2 - np.array([1, H / W])
    np.testing.assert_allclose(lifting.normalize_screen_coordinates(px, W, H), expected, atol=1e-12)
    np.testing.assert_allclose(
        lifting.image_coordinates(lifting.normalize_screen_coordinates(px, W, H), W, H), px, atol=1e-9)
    with pytest.raises(ValueError, match='width and height must be > 0 px, received width=0'):
        lifting.normalize_screen_coordinates(px, 0, H)


def test_normalize_screen_coordinates_eager_tf_and_in_dataset_map(rng):
    px = rng.uniform(0, 1000, (6, 17, 2)).astype(np.float32)
    expected = lifting.normalize_screen_coordinates(px, W, H)
    eager = lifting.normalize_screen_coordinates(tf.constant(px), W, H)
    assert eager.dtype == tf.float32
    np.testing.assert_allclose(eager.numpy(), expected, rtol=1e-6, atol=1e-6)
    ds = tf.data.Dataset.from_tensor_slices(px).map(
        lambda p: lifting.image_coordinates(lifting.normalize_screen_coordinates(p, W, H), W, H))
    np.testing.assert_allclose(np.stack(list(ds.as_numpy_iterator())), px, rtol=1e-5, atol=1e-3)


# ------------------------------------------------------------------------------------------ cameras
def test_rig_is_h36m_like_and_fixed():
    spec = lifting.LiftingSpec()
    rig = lifting.rig_positions(spec)
    assert rig.shape == (lifting.N_RIG_CAMERAS, 3)
    horizontal = np.linalg.norm(rig[:, [0, 2]], axis=1)
    assert np.all((horizontal >= 3500) & (horizontal <= 5000))
    assert np.all((rig[:, 1] >= 1000) & (rig[:, 1] <= 2000))
    azimuth = np.rad2deg(np.arctan2(rig[:, 0], rig[:, 2])) % 360
    nominal = 45 + 90 * np.arange(4)
    assert np.all(np.abs((azimuth - nominal + 180) % 360 - 180) <= spec.rig_azimuth_jitter_deg)
    np.testing.assert_array_equal(rig, lifting.rig_positions(spec))
    assert not np.allclose(rig, lifting.rig_positions(dataclasses.replace(spec, rig_seed=1)))


def test_project_views_looks_at_the_aim_point():
    joints = np.array([[[0, 1000, 0], [100, 1500, 50]]], float)  # [T=1, J=2, 3], y up
    eyes = np.array([[0, 1500, 4000]])
    k = lifting.LiftingSpec().intrinsic_matrix()
    px, cam = lifting.project_views(joints, eyes, joints[:, 0], k)
    np.testing.assert_allclose(px[0, 0], k[:2, 2], atol=1e-9)  # the aim point is the image centre
    np.testing.assert_allclose(cam[0, 0], [0, 0, np.linalg.norm(eyes[0] - joints[0, 0])], atol=1e-9)
    assert cam[0, 1, 1] < 0  # higher in the world = up in the image (camera y points down)
    np.testing.assert_allclose(np.linalg.norm(cam[0, 1] - cam[0, 0]),
                               np.linalg.norm(joints[0, 1] - joints[0, 0]), rtol=1e-12)


# --------------------------------------------------------------------------------------------- sets
def test_lifting_set_shapes_units_and_root(train_set, clips):
    s = train_set
    n = len(s)
    assert s.inputs.shape == (n, 17, 2) and s.targets.shape == (n, 17, 3)
    assert s.inputs.dtype == np.float32 and s.targets.dtype == np.float32
    np.testing.assert_array_equal(s.targets[:, lifting.ROOT_JOINT], 0.0)
    # One view per frame for every rig camera (no camera is ever too close) plus one random view.
    n_frames = sum(c.motion.n_frames for c in clips)
    ids, counts = np.unique(s.camera_ids, return_counts=True)
    assert ids.tolist() == [lifting.RANDOM_CAMERA_ID, 0, 1, 2, 3]
    assert counts.sum() == n <= 5 * n_frames and counts.min() > 0.9 * n_frames
    assert set(s.subjects.tolist()) == {c.subject for c in clips}
    # Rig cameras aim at the pelvis: it projects to the image centre.
    rig = s.camera_ids >= 0
    centre = lifting.normalize_screen_coordinates(lifting.LiftingSpec().intrinsic_matrix()[:2, 2], 1000, 1000)
    np.testing.assert_allclose(s.inputs[rig, 0], np.broadcast_to(centre, (rig.sum(), 2)), atol=1e-5)
    # Targets are in mm: the thigh of an adult is 300-550 mm long in every view (rotation-invariant).
    ji = skeletons.get('h36m_17')
    thigh = np.linalg.norm(s.targets[:, ji.index('rkne')] - s.targets[:, ji.index('rhip')], axis=-1)
    assert np.all((thigh > 300) & (thigh < 550))
    # The bone length is the same in all views of one frame.
    same = (s.clip_ids == 0) & (s.frame_ids == 3)
    assert same.sum() == 5 and np.ptp(thigh[same]) < 1e-2
    # The 2D input is the projection of the camera-frame pose: image y grows downwards with camera y.
    head, ankle = ji.index('htop'), ji.index('rank')
    assert np.mean(s.inputs[:, head, 1] < s.inputs[:, ankle, 1]) > 0.95
    assert np.mean(s.targets[:, head, 1] < s.targets[:, ankle, 1]) > 0.95


def test_lifting_set_is_deterministic_in_seed(clips, train_set):
    again = lifting.make_lifting_set(clips, lifting.LiftingSpec(), 'train', seed=0)
    np.testing.assert_array_equal(again.inputs, train_set.inputs)
    np.testing.assert_array_equal(again.targets, train_set.targets)
    other = lifting.make_lifting_set(clips, lifting.LiftingSpec(), 'train', seed=1)
    rig = train_set.camera_ids >= 0
    np.testing.assert_array_equal(other.inputs[other.camera_ids >= 0], train_set.inputs[rig])
    assert not np.allclose(other.inputs[other.camera_ids < 0], train_set.inputs[~rig])


def test_eval_splits_use_the_rig_only_and_h36m_16_drops_the_nose(clips):
    val = lifting.make_lifting_set(clips, lifting.LiftingSpec(), 'val', seed=0)
    assert set(val.camera_ids.tolist()) == {0, 1, 2, 3}
    val16 = lifting.make_lifting_set(clips, lifting.LiftingSpec(joints='h36m_16'), 'val', seed=0)
    keep = [j for j in range(17) if j != skeletons.get('h36m_17').index('nose')]
    assert val16.joints == 'h36m_16' and val16.inputs.shape[1:] == (16, 2)
    np.testing.assert_allclose(val16.targets, val.targets[:, keep], atol=1e-3)
    np.testing.assert_allclose(val16.inputs, val.inputs[:, keep], atol=1e-6)


def test_subset_and_validation(train_set):
    sub = train_set.subset(train_set.camera_ids == 2)
    assert len(sub) == np.sum(train_set.camera_ids == 2) and set(sub.camera_ids.tolist()) == {2}
    with pytest.raises(ValueError, match=r'inputs and targets must have shapes \[N, 17, 2\]'):
        dataclasses.replace(train_set, inputs=train_set.inputs[:, :16])
    with pytest.raises(ValueError, match="joints must be one of .*received 'coco_19'"):
        lifting.LiftingSpec(joints='coco_19')
    with pytest.raises(ValueError, match=r'rig_distance_m must satisfy .*received \(5.0, 3.0\)'):
        lifting.LiftingSpec(rig_distance_m=(5.0, 3.0))
    with pytest.raises(ValueError, match='n_random_cameras must be an int >= 0, received -1'):
        lifting.LiftingSpec(n_random_cameras=-1)
    with pytest.raises(ValueError, match="split must be one of .*received 'dev'"):
        lifting.make_lifting_set([], split='dev')


def test_lifting_splits_are_subject_disjoint_procedural():
    spec = lifting.LiftingSpec(procedural_subjects=4, procedural_clips=1, procedural_seconds=1.0,
                               fps=5.0)
    sets = lifting.lifting_splits(None, None, spec, seed=0)
    assert set(sets) == {'train', 'val', 'test'}
    subjects = {k: set(s.subjects.tolist()) for k, s in sets.items()}
    assert subjects['train'].isdisjoint(subjects['val'])
    assert len(subjects['val']) == 1 and len(subjects['train']) == 3
    assert all(s.startswith('t') for s in subjects['test'])
    assert set(sets['test'].camera_ids.tolist()) == {0, 1, 2, 3}


# ------------------------------------------------------------------------------------------- stream
def test_batch_indices_visit_every_example_once_per_epoch():
    n, b = 10, 5
    idx = np.concatenate([lifting.batch_indices(n, b, seed=3, step=k).numpy() for k in range(4)])
    assert sorted(idx[:10].tolist()) == list(range(n)) == sorted(idx[10:].tolist())
    assert idx[:10].tolist() != idx[10:].tolist()  # a fresh permutation per epoch
    assert idx[:10].tolist() != list(range(n))
    other = np.concatenate([lifting.batch_indices(n, b, seed=4, step=k).numpy() for k in range(2)])
    assert other.tolist() != idx[:10].tolist()
    # Batches straddling an epoch boundary.
    idx7 = np.concatenate([lifting.batch_indices(n, 7, seed=3, step=k).numpy() for k in range(10)])
    for e in range(7):
        assert sorted(idx7[e * n:(e + 1) * n].tolist()) == list(range(n))
    with pytest.raises(ValueError, match='batch_size must be an int >= 1, received 0'):
        lifting.batch_indices(n, 0, seed=0, step=0)


def test_lifting_dataset_batch_k_is_a_pure_function_of_seed_and_k(train_set):
    ds = lifting.lifting_dataset(train_set, batch_size=16, seed=5)
    first = list(ds.take(6).as_numpy_iterator())
    resumed = list(lifting.lifting_dataset(train_set, batch_size=16, seed=5, start_step=4)
                   .take(2).as_numpy_iterator())
    for (x, y), (xr, yr) in zip(first[4:], resumed):
        np.testing.assert_array_equal(x, xr)
        np.testing.assert_array_equal(y, yr)
    x, y = first[0]
    assert x.shape == (16, 17, 2) and y.shape == (16, 17, 3) and x.dtype == np.float32
    idx = lifting.batch_indices(len(train_set), 16, 5, 0).numpy()
    np.testing.assert_array_equal(x, train_set.inputs[idx])
    np.testing.assert_array_equal(y, train_set.targets[idx])
    other = next(lifting.lifting_dataset(train_set, batch_size=16, seed=6).as_numpy_iterator())
    assert not np.array_equal(other[0], x)


def test_views_closer_than_the_minimum_distance_are_dropped(clips):
    spec = lifting.LiftingSpec()
    rig = lifting.rig_positions(spec)
    pose = lifting.root_relative(bodies.format_joints(clips[0].motion, 'h36m_17')[0])
    pose = pose + [0, 950, 0]  # pelvis 0.95 m above the floor
    r0 = np.array([rig[0, 0], 0, rig[0, 2]])
    joints = np.stack([pose + r0, pose - r0, pose])  # frame 0 stands right below rig camera 0
    views = lifting._views_of_clip(joints, spec, 0, np.random.default_rng(0))
    views = {camera_id: idx for camera_id, idx, _, _ in views}
    assert 0 not in views[0] and views[0].tolist() == [1, 2]
    assert 0 in views[1]


# ------------------------------------------------------------------------- real Human3.6M cameras
H36M_CAMERAS = (__import__('pathlib').Path(__file__).resolve().parents[3] / 'shared' / 'data' / 'real_samples'
                / 'h36m')


@pytest.fixture(scope='module')
def h36m_camera_dir():
    if not (H36M_CAMERAS / 'cameras.json').is_file():
        pytest.skip('needs ../shared/data/real_samples/h36m/cameras.json beside the clone (the real Human3.6M '
                    'calibrations; absent on a fresh user clone)')
    return str(H36M_CAMERAS)


def _independent_projection(points_world_mm, raw):
    """Pinhole + OpenCV distortion from the raw cameras.json entry (R camera -> world, T metres)."""
    r_cam_to_world = np.asarray(raw['R'], np.float64)
    centre_mm = np.asarray(raw['T'], np.float64).reshape(3) * 1000.0
    cam = (points_world_mm - centre_mm) @ r_cam_to_world  # row vectors: R^T (X - T)
    x, y = cam[..., 0] / cam[..., 2], cam[..., 1] / cam[..., 2]
    k1, k2, k3 = np.asarray(raw['k'], np.float64).reshape(3)
    p1, p2 = np.asarray(raw['p'], np.float64).reshape(2)
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2 ** 2 + k3 * r2 ** 3
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    f, c = np.asarray(raw['f'], np.float64).reshape(2), np.asarray(raw['c'], np.float64).reshape(2)
    return np.stack([f[0] * xd + c[0], f[1] * yd + c[1]], -1), cam


def test_real_h36m_cameras_project_like_an_independent_distorted_pinhole(h36m_camera_dir, clips):
    import json
    raw = json.loads((H36M_CAMERAS / 'cameras.json').read_text())
    rigs = lifting.h36m_rigs(h36m_camera_dir)
    assert sorted(rigs) == sorted({k.split('/')[0] for k in raw}) and all(len(r) == 4 for r in rigs.values())
    joints = bodies.format_joints(clips[0].motion, 'h36m_16', subject=clips[0].subject)
    for subject in ('S1', 'S9', 'S11'):
        world = lifting.place_in_h36m_volume(joints, rigs[subject])
        # z up, the floor at z = 0 (the motion's floor y = 0), the pelvis centre under the look-at point
        np.testing.assert_allclose(world[..., 2], joints[..., 1], atol=1e-9)
        pelvis = world[:, 0, :2]
        np.testing.assert_allclose((pelvis.max(0) + pelvis.min(0)) / 2, lifting.look_at_point(rigs[subject])[:2],
                                   atol=1e-6)
        for camera in rigs[subject]:
            px, cam = lifting.project_real(world, camera)
            expected_px, expected_cam = _independent_projection(world, raw[camera['name']])
            np.testing.assert_allclose(cam, expected_cam, atol=1e-9)
            assert np.abs(px - expected_px).max() < 1e-6
            assert np.all(cam[..., 2] > 2000)  # every camera sees the placed subject from 2+ m


def test_lifting_set_with_real_cameras_uses_each_splits_subjects(h36m_camera_dir, clips):
    import json
    raw = json.loads((H36M_CAMERAS / 'cameras.json').read_text())
    spec = lifting.LiftingSpec(joints='h36m_16', h36m_cameras=h36m_camera_dir, n_random_cameras=1)
    rigs = lifting.h36m_rigs(h36m_camera_dir)
    for split, subjects in (('train', ('S1', 'S5', 'S6')), ('test', ('S9', 'S11', 'S9'))):
        s = lifting.make_lifting_set(clips, spec, split, seed=0)
        assert 'Human3.6M cameras of' in s.description
        for clip_id, subject in enumerate(subjects):  # clip k sees subject k mod n's cameras
            joints = bodies.format_joints(clips[clip_id].motion, 'h36m_16', subject=clips[clip_id].subject)
            world = lifting.place_in_h36m_volume(joints, rigs[subject])
            for camera_id, camera in enumerate(rigs[subject]):
                sel = (s.clip_ids == clip_id) & (s.camera_ids == camera_id)
                assert sel.sum() > 0
                frames = s.frame_ids[sel]
                expected_px, expected_cam = _independent_projection(world[frames], raw[camera['name']])
                w, h = raw[camera['name']]['w'], raw[camera['name']]['h']
                np.testing.assert_allclose(lifting.image_coordinates(s.inputs[sel].astype(np.float64), w, h),
                                           expected_px, atol=1e-3)  # float32 inputs
                np.testing.assert_allclose(s.targets[sel], expected_cam - expected_cam[:, :1], atol=1e-2)
        # the random extra views are kept (train only) and are the same as without real cameras
        random_views = s.camera_ids == lifting.RANDOM_CAMERA_ID
        assert random_views.any() == (split == 'train')
        if split == 'train':
            plain = lifting.make_lifting_set(clips, dataclasses.replace(spec, h36m_cameras=None), split, seed=0)
            np.testing.assert_array_equal(s.inputs[random_views],
                                          plain.inputs[plain.camera_ids == lifting.RANDOM_CAMERA_ID])
    with pytest.raises(ValueError, match=r"no cameras of subjects \['S99'\]"):
        lifting.h36m_rigs(h36m_camera_dir, ['S99'])
