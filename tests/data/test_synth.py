import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from posekit import skeletons
from posekit.data import bodies, synth

CROP = 64


@pytest.fixture(scope='module')
def motion_splits():
    return synth.load_motion_splits(None, seed=0, n_subjects=4, clips_per_subject=2, seconds=2.0)


@pytest.fixture(scope='module')
def train_motion(motion_splits):
    return synth.PreparedMotion(motion_splits.train)


def _spec(name, crop=CROP):
    return dataclasses.replace(synth.PRESETS[name], crop_size=crop)


def _project(coords3d, intrinsics):
    p = np.einsum('...ab,...jb->...ja', intrinsics.astype(np.float64), coords3d.astype(np.float64))
    return p[..., :2] / p[..., 2:]


@pytest.mark.parametrize('name', list(synth.PRESETS))
def test_examples_follow_the_data_contract(train_motion, name):
    spec = _spec(name)
    space = skeletons.JointSpace(bodies.DEFAULT_FORMATS)
    for index in range(4):
        ex = synth.render_example(spec, train_motion, 'train', index, seed=1, dataset_index=2)
        fields = synth.example_fields(spec)
        assert set(ex) == set(fields)
        for key, (shape, dtype) in fields.items():
            assert np.shape(ex[key]) == shape and np.asarray(ex[key]).dtype == dtype, key
        np.testing.assert_array_equal(ex['joint_valid'], space.format_mask(spec.skeleton))
        assert bool(ex['is_3d']) == (spec.label_kind == '3d') and ex['dataset'] == 2
        assert ex['example_id'] == index
        # 2D labels are the projection of the 3D labels (all formats) to 0.01 px.
        np.testing.assert_allclose(ex['coords2d'], _project(ex['coords3d'], ex['intrinsics']), atol=0.01)
        # The person is in front of the camera, 2-10 m away, and centred in the crop.
        own = ex['coords3d'][space.slices[spec.skeleton]]
        assert np.all(own[:, 2] > 1000) and np.all(own[:, 2] < 12000)
        uv = ex['coords2d'][space.slices[spec.skeleton]]
        centre = (uv.min(0) + uv.max(0)) / 2
        assert np.all(np.abs(centre - (CROP - 1) / 2) < 0.2 * CROP)
        assert np.all(uv > -0.1 * CROP) and np.all(uv < 1.1 * CROP)
        assert ex['image'].std() > 5  # not a blank image


def test_labels_and_rendered_body_share_the_crop_camera(train_motion):
    """Trunk joints project onto pixels covered by the rendered body (same camera, same frame)."""
    from posekit.data import render
    space = skeletons.JointSpace(bodies.DEFAULT_FORMATS)
    h36m = space.slices['h36m_17']
    ji = skeletons.get('h36m_17')
    trunk = [ji.index(n) for n in ('pelv', 'spin', 'thor', 'lhip', 'rhip', 'lkne', 'rkne')]
    for clip, frame in ((0, 0), (1, 20), (2, 40)):
        lm = train_motion.landmarks[clip][frame].astype(np.float64)
        joints = train_motion.joints[clip][frame]
        root = lm[render.LANDMARK_INDEX['pelvis']]
        center = root + np.array([1500.0, 300.0, 3000.0])
        camera = synth.crop_camera(center, root, lm, CROP, margin=0.2)
        caps = render.body_capsules(lm, render.random_outfit(np.random.default_rng(0))).transformed(
            camera.rot_world_to_cam, camera.optical_center)
        image = np.zeros((CROP, CROP, 3), np.float32)
        depth = np.full((CROP, CROP), render.FAR_DEPTH_MM, np.float32)
        drawn = render.draw_capsules(image, depth, camera.intrinsic_matrix, caps)
        coords3d, coords2d = synth._labels(camera, joints)
        uv = np.round(coords2d[h36m][trunk]).astype(int)
        assert np.all(drawn[uv[:, 1], uv[:, 0]]), (clip, frame)
        # The box of all landmarks fills the crop minus the margin.
        p = camera.world_to_image(lm)
        extent = (p.max(0) - p.min(0)).max()
        assert CROP / 1.2 - 2 < extent <= CROP / 1.2 + 2


def test_generation_is_deterministic(train_motion):
    spec = _spec('coco_like')
    a = synth.generate_examples(spec, train_motion, 'train', 5, 3, seed=7)
    b = synth.generate_examples(spec, train_motion, 'train', 5, 3, seed=7)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    c = synth.generate_examples(spec, train_motion, 'train', 5, 3, seed=8)
    assert not np.array_equal(a['image'], c['image'])
    single = synth.render_example(spec, train_motion, 'train', 6, seed=7)
    np.testing.assert_array_equal(single['image'], a['image'][1])
    val = synth.render_example(spec, train_motion, 'val', 5, seed=7)
    assert not np.array_equal(val['image'], a['image'][0])
    assert val['example_id'] == synth.EXAMPLE_ID_SPLIT_STRIDE + 5


def test_studio_cameras_are_a_fixed_rig(train_motion):
    spec = _spec('h36m_like')
    positions = synth._rig_positions(spec, seed=0)
    assert positions.shape == (4, 3)
    horizontal = np.linalg.norm(positions[:, [0, 2]], axis=-1)
    assert np.all((horizontal >= 3000) & (horizontal <= 5000))
    np.testing.assert_array_equal(positions, synth._rig_positions(spec, seed=0))


def test_motion_splits_are_subject_wise(motion_splits):
    train = {c.subject for c in motion_splits.train}
    val = {c.subject for c in motion_splits.val}
    test = {c.subject for c in motion_splits.test}
    assert train and val and test
    assert train.isdisjoint(val) and train.isdisjoint(test) and val.isdisjoint(test)
    assert all(s.startswith('t') for s in test)


def test_spec_validation_and_json_round_trip():
    spec = synth.PRESETS['mpi_like']
    assert synth.DatasetSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError, match="skeleton must be one of formats .* got 'cmu_31'"):
        dataclasses.replace(spec, skeleton='cmu_31')
    with pytest.raises(ValueError, match="label_kind must be one of .* got '3D'"):
        dataclasses.replace(spec, label_kind='3D')
    with pytest.raises(ValueError, match='distance_m must satisfy'):
        synth.CameraSpec(distance_m=(5.0, 2.0))
    with pytest.raises(ValueError, match="background must be one of .* got 'beach'"):
        synth.AppearanceSpec(background='beach')
    with pytest.raises(ValueError, match='n_train must be a non-negative int, got -1'):
        dataclasses.replace(spec, n_train=-1)
    with pytest.raises(ValueError, match="size must be one of .* got 'huge'"):
        synth.preset_specs('huge')
    with pytest.raises(ValueError, match="unknown dataset 'mpii'"):
        synth.preset_specs('smoke', ['mpii'])
    assert [s.name for s in synth.preset_specs('smoke')] == ['h36m_like', 'mpi_like', 'smpl_like', 'coco_like']


def test_video_follows_the_subject_with_a_moving_camera(train_motion):
    spec = _spec('coco_like')
    video = synth.render_video(spec, train_motion, clip=1, start=2, n_frames=6, stride=2, seed=3)
    assert video['frames'].shape == (6, CROP, CROP, 3) and video['frames'].dtype == np.uint8
    assert video['coords3d'].shape == (6, 17, 3) and video['joint_valid'].shape == (6, 17)
    np.testing.assert_allclose(video['coords2d'], _project(video['coords3d'], video['intrinsics']), atol=0.01)
    # The camera moves smoothly: distinct, nearby optical centres.
    steps = np.linalg.norm(np.diff(video['optical_center'], axis=0), axis=-1)
    assert np.all(steps > 0) and np.all(steps < 1000)
    # The subject stays near the crop centre.
    pelvis = video['coords2d'][:, skeletons.get('h36m_17').index('pelv')]
    assert np.all(np.abs(pelvis - (CROP - 1) / 2) < 0.25 * CROP)
    again = synth.render_video(spec, train_motion, clip=1, start=2, n_frames=6, stride=2, seed=3)
    np.testing.assert_array_equal(video['frames'], again['frames'])
    with pytest.raises(ValueError, match='do not fit clip'):
        synth.render_video(spec, train_motion, clip=1, start=0, n_frames=10_000)


def _expected_heatmap(coords, valid, height, width, stride, sigma):
    ys = np.arange(height // stride) * stride + (stride - 1) / 2
    xs = np.arange(width // stride) * stride + (stride - 1) / 2
    out = np.zeros((height // stride, width // stride, len(coords)), np.float32)
    for k, ((x, y), v) in enumerate(zip(coords, valid)):
        if v:
            out[..., k] = np.exp(-((xs[None] - x) ** 2 + (ys[:, None] - y) ** 2) / (2 * sigma ** 2))
    return out


def test_keypoint_heatmaps_numpy_tf_eager_and_in_dataset_map():
    coords = np.array([[[10.0, 20.0], [40.5, 7.25], [0.0, 0.0]]], np.float32)
    valid = np.array([[True, True, False]])
    expected = _expected_heatmap(coords[0], valid[0], 48, 64, 4, 3.0)
    hm = synth.keypoint_heatmaps(coords, valid, 48, 64, stride=4, sigma=3.0)
    assert hm.shape == (1, 12, 16, 3) and hm.dtype == np.float32
    np.testing.assert_allclose(hm[0], expected, atol=1e-6)
    assert np.all(hm[..., 2] == 0)
    eager = synth.keypoint_heatmaps(tf.constant(coords), tf.constant(valid), 48, 64, stride=4, sigma=3.0)
    np.testing.assert_allclose(eager.numpy(), hm, atol=1e-6)
    ds = tf.data.Dataset.from_tensor_slices((coords, valid)).map(
        lambda c, v: synth.keypoint_heatmaps(c, v, 48, 64, stride=4, sigma=3.0))
    mapped = next(iter(ds)).numpy()
    np.testing.assert_allclose(mapped, hm[0], atol=1e-6)
    with pytest.raises(ValueError, match='multiples of stride=5'):
        synth.keypoint_heatmaps(coords, valid, 48, 64, stride=5)
    with pytest.raises(ValueError, match='valid must have shape'):
        synth.keypoint_heatmaps(coords, valid[:, :2], 48, 64)


def test_real_motion_with_subject_wise_split(cmu_mocap_dir, tmp_path):
    # A small BVH folder (links to four CMU files of four subjects, two conventions).
    for rel in ('cmu_mb2/01_02.bvh', 'cmu_mb2/02_02.bvh', 'cmu_mb2/05_02.bvh', 'cmu_daz/13_10.bvh'):
        target = tmp_path / rel.replace('/', '_')
        target.symlink_to(cmu_mocap_dir / rel)
    splits = synth.load_motion_splits(str(tmp_path), seed=0, max_frames_per_clip=30)
    train = {c.subject for c in splits.train}
    val = {c.subject for c in splits.val}
    assert train.isdisjoint(val) and len(val) >= 1
    assert 'test = val subjects' in splits.description
    motion = synth.PreparedMotion(splits.val)
    ex = synth.render_example(_spec('h36m_like'), motion, 'val', 0, seed=0)
    np.testing.assert_allclose(ex['coords2d'], _project(ex['coords3d'], ex['intrinsics']), atol=0.01)


def test_crop_camera_aims_at_the_points_box_like_a_detection(rng):
    """synth.crop_camera = an upright camera turned towards the centre of the points' box, the box's
    corners fitted into the crop with the margin, then rolled (geometry.crop_camera's rule)."""
    from posekit import geometry
    for _ in range(5):
        center = rng.uniform(-5000, 5000, 3)
        target = center + rng.uniform(-4000, 4000, 3) + np.array([0, 0, 3000.0])
        points = target + rng.normal(0, 500, (20, 3))
        roll = rng.uniform(-0.3, 0.3)
        cam = synth.crop_camera(center, target, points, 100, roll_rad=roll, margin=0.1)
        upright = geometry.Camera(center, geometry.look_at_rotation(center, target, world_up=(0, 1, 0)), None,
                                  world_up=(0, 1, 0))
        p = upright.world_to_camera(points)
        n = p[:, :2] / p[:, 2:]
        low, high = n.min(0), n.max(0)
        mid = (low + high) / 2
        aimed = upright.turned_towards(center + upright.rot_world_to_cam.T @ np.array([mid[0], mid[1], 1.0]))
        np.testing.assert_allclose(cam.rot_world_to_cam, geometry.axis_rotation('Z', roll) @ aimed.rot_world_to_cam,
                                   atol=1e-9)
        # The box corners (rays of the upright camera) fit the crop: the farthest one is S / 2 / 1.1 from the
        # centre before the roll; every point of the box lies inside the crop.
        corners = np.array([[low[0], low[1], 1], [high[0], low[1], 1], [low[0], high[1], 1], [high[0], high[1], 1]])
        unrolled = geometry.Camera(center, aimed.rot_world_to_cam, cam.intrinsic_matrix, world_up=(0, 1, 0))
        uv = unrolled.world_to_image(center + corners @ upright.rot_world_to_cam)
        assert np.max(np.abs(uv - 49.5)) == pytest.approx(100 / 2 / 1.1, rel=1e-9)
        assert np.all(np.abs(cam.world_to_image(points) - 49.5) < 50)
