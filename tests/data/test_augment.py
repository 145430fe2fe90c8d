"""Tests of posekit.data.augment: exact label transport, flips, warping, photometric ops, statelessness.

Every transform is checked eagerly and inside ``tf.data.Dataset.map`` (style rule 9).
"""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from posekit import geometry
from posekit.data import augment
from posekit.data.augment import AugmentConfig
from posekit.skeletons import JointSpace

FORMATS = ('h36m_17', 'smpl_24', 'coco_19', 'mpi_inf_3dhp_17')
SPACE = JointSpace(FORMATS)
SIDE = 48
PROJECTION_TOLERANCE_PX = 0.01


def fake_batch(n, side=SIDE, seed=0, is_3d=True, pp_offset=(0.0, 0.0)):
    """Contract-conforming examples: Gaussian joints 3-6 m ahead, exact 2D projections, noise images."""
    rng = np.random.default_rng(seed)
    joints = SPACE.n_joints
    coords3d = rng.normal(0.0, 300.0, (n, joints, 3))
    coords3d[..., 2] += rng.uniform(3000.0, 6000.0, (n, 1))
    focal = rng.uniform(1.0, 2.0, n) * side
    k = np.zeros((n, 3, 3))
    k[:, 0, 0] = k[:, 1, 1] = focal
    k[:, 0, 2] = (side - 1) / 2 + pp_offset[0]
    k[:, 1, 2] = (side - 1) / 2 + pp_offset[1]
    k[:, 2, 2] = 1
    coords2d = np.einsum('bij,bkj->bki', k, coords3d)
    coords2d = coords2d[..., :2] / coords2d[..., 2:]
    valid = np.broadcast_to(SPACE.format_mask('h36m_17'), (n, joints)).copy()
    return dict(image=rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8),
                intrinsics=k.astype(np.float32), coords3d=coords3d.astype(np.float32),
                coords2d=coords2d.astype(np.float32), joint_valid=valid,
                is_3d=np.full(n, is_3d), example_id=np.arange(n, dtype=np.int64))


def make_keys(n, seed=0, stream=7, start=0):
    return np.stack([np.full(n, seed), np.full(n, stream), np.arange(start, start + n)], 1).astype(np.int64)


def numpy_dict(d):
    return {k: np.asarray(v) for k, v in d.items()}


def run_both(fn, *args):
    """(eager result, result of the same function inside Dataset.map), as numpy dicts."""
    eager = numpy_dict(fn(*args))
    mapped = next(iter(tf.data.Dataset.from_tensors(args).map(lambda *a: fn(*a))))
    return eager, numpy_dict(mapped)


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def reprojection_error(batch):
    k = batch['intrinsics'].astype(np.float64)
    p = np.einsum('bij,bkj->bki', k, batch['coords3d'].astype(np.float64))
    return np.abs(p[..., :2] / p[..., 2:] - batch['coords2d']).max()


# ----------------------------------------------------------------------------------------------

def test_config_validation():
    with pytest.raises(ValueError, match=r'zoom_range must be positive, got \(0, 1\)'):
        AugmentConfig(zoom_range=(0, 1))
    with pytest.raises(ValueError, match=r'zoom_range must be a finite \(min, max\) pair.*\(2, 1\)'):
        AugmentConfig(zoom_range=(2, 1))
    with pytest.raises(ValueError, match=r'flip_probability must be in \[0.0, 1.0\], got 1.5'):
        AugmentConfig(flip_probability=1.5)
    with pytest.raises(ValueError, match="fill_mode must be one of .*got 'mirror'"):
        AugmentConfig(fill_mode='mirror')
    with pytest.raises(ValueError, match="warp_backend must be one of .*got 'pil'"):
        AugmentConfig(warp_backend='pil')
    with pytest.raises(ValueError, match='output_side must be None or a positive int, got 0'):
        AugmentConfig(output_side=0)
    with pytest.raises(ValueError, match='config must be an AugmentConfig, got dict'):
        augment.sample_params(make_keys(2), {})
    with pytest.raises(ValueError, match='mirror must be 77 joint indices'):
        augment.augment_batch(fake_batch(2), make_keys(2), AugmentConfig(), [0, 1])
    with pytest.raises(ValueError, match='involutive permutation'):
        augment.augment_batch(fake_batch(2), make_keys(2), AugmentConfig(), [0] * SPACE.n_joints)


def test_uniform_from_keys_stateless_and_uniform():
    keys = make_keys(4000)
    u, u_mapped = run_both(lambda k: {'u': augment.uniform_from_keys(k, 3)}, keys)
    np.testing.assert_array_equal(u['u'], u_mapped['u'])
    u = u['u']
    assert u.shape == (4000, 3) and u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.005
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.05
    # Subsets of the keys give the same numbers (no dependence on the batch), other seeds differ.
    np.testing.assert_array_equal(augment.uniform_from_keys(keys[17:19], 3).numpy(), u[17:19])
    assert not np.any(augment.uniform_from_keys(make_keys(100, seed=1), 3).numpy() == u[:100])


@pytest.mark.parametrize('backend', augment.WARP_BACKENDS)
def test_identity_config_is_identity(backend):
    batch = fake_batch(3)
    config = AugmentConfig.identity(warp_backend=backend)
    eager, mapped = run_both(lambda b, k: augment.augment_batch(b, k, config, SPACE.mirror), batch, make_keys(3))
    assert_same(eager, mapped)
    for key in batch:
        np.testing.assert_allclose(eager[key], batch[key], atol=1e-3, err_msg=key)
    np.testing.assert_array_equal(eager['image'], batch['image'])


@pytest.mark.parametrize('is_3d,backend', [(True, 'opencv'), (False, 'opencv'), (True, 'tensorflow')])
def test_labels_equal_projection_after_random_augmentation(is_3d, backend):
    batch = fake_batch(32, is_3d=is_3d, pp_offset=(3.0, -2.0))
    config = AugmentConfig(output_side=40, warp_backend=backend)
    eager, mapped = run_both(lambda b, k: augment.augment_batch(b, k, config, SPACE.mirror), batch, make_keys(32))
    assert_same(eager, mapped)
    assert reprojection_error(eager) < PROJECTION_TOLERANCE_PX
    assert eager['image'].shape == (32, 40, 40, 3) and eager['image'].dtype == np.uint8
    # The augmentation really moved things: rotations of the 3D labels preserve bone lengths.
    moved = np.linalg.norm(eager['coords2d'] - batch['coords2d'] * 40 / SIDE, axis=-1).mean()
    assert moved > 1.0
    np.testing.assert_allclose(np.linalg.norm(eager['coords3d'], axis=-1).sum(-1),
                               np.linalg.norm(batch['coords3d'], axis=-1).sum(-1), rtol=1e-5)


def test_sampled_parameters_cover_configured_ranges():
    params = augment.sample_params(make_keys(2000), AugmentConfig())
    roll = np.degrees(params['roll'].numpy())
    assert -20 <= roll.min() < -19 and 19 < roll.max() <= 20
    zoom = params['zoom'].numpy()
    assert 0.75 <= zoom.min() < 0.76 and 1.24 < zoom.max() <= 1.25
    assert 0.45 < params['flip'].numpy().mean() < 0.55
    assert 0.25 < params['erase'].numpy().mean() < 0.35
    box = params['erase_box'].numpy()
    assert np.all((box >= 0) & (box <= 1)) and np.all(box[:, 2:] > box[:, :2])


def one_param(n, **values):
    params = dict(roll=np.zeros(n), zoom=np.ones(n), shift=np.zeros((n, 2)), flip=np.zeros(n, bool))
    params.update({k: np.asarray(v) for k, v in values.items()})
    return params


def test_camera_transform_matches_geometry_camera():
    batch = fake_batch(1)
    k = batch['intrinsics'][0].astype(np.float64)
    cam = geometry.Camera(intrinsic_matrix=k)
    shape = (SIDE, SIDE)
    roll = 0.3
    rot, new_k, _ = augment.camera_transform(k[None], one_param(1, roll=[roll]), shape, shape)
    np.testing.assert_allclose(rot[0], cam.rolled(roll).rot_world_to_cam, atol=1e-12)
    np.testing.assert_allclose(new_k[0], k, atol=1e-9)
    rot, new_k, _ = augment.camera_transform(k[None], one_param(1, zoom=[1.2]), shape, shape)
    np.testing.assert_allclose(new_k[0], cam.zoomed(1.2).intrinsic_matrix, atol=1e-9)
    rot, new_k, homography = augment.camera_transform(k[None], one_param(1, flip=[True]), shape, shape)
    flipped = cam.flipped(image_width=SIDE)
    np.testing.assert_allclose(rot[0], flipped.rot_world_to_cam, atol=1e-12)
    np.testing.assert_allclose(new_k[0], flipped.intrinsic_matrix, atol=1e-9)
    np.testing.assert_allclose(homography[0], cam.homography_to(flipped), atol=1e-9)
    # Re-aiming: the shifted target pixel lands on the new principal point; output scaling.
    shift = np.array([[0.1, -0.05]])
    rot, new_k, homography = augment.camera_transform(k[None], one_param(1, shift=shift), shape, (24, 24))
    target = np.array([(SIDE - 1) / 2 + 0.1 * SIDE, (SIDE - 1) / 2 - 0.05 * SIDE, 1.0])
    mapped = homography[0].numpy() @ target
    np.testing.assert_allclose(mapped[:2] / mapped[2], [11.5, 11.5], atol=1e-9)
    np.testing.assert_allclose(new_k[0, 0, 0], k[0, 0] * 0.5, rtol=1e-12)


@pytest.mark.parametrize('backend', augment.WARP_BACKENDS)
def test_flip_keeps_left_right_meaning(backend):
    batch = fake_batch(2)
    lsho = [SPACE.names.index(f'lsho_{f}') for f in FORMATS]
    rsho = [SPACE.names.index(f'rsho_{f}') for f in FORMATS]
    coords = batch['coords3d'].copy()
    # A person facing the camera: their left shoulder is on the camera's right (+x).
    coords[:, lsho, 0] = 250.0
    coords[:, rsho, 0] = -150.0
    batch['coords3d'] = coords
    batch['coords2d'] = geometry.project_tf(coords, batch['intrinsics']).numpy()
    batch['joint_valid'][:, lsho] = True
    batch['joint_valid'][:, rsho] = False
    config = AugmentConfig.identity(flip_probability=1.0, warp_backend=backend)
    eager, mapped = run_both(lambda b, k: augment.augment_batch(b, k, config, SPACE.mirror), batch, make_keys(2))
    assert_same(eager, mapped)
    # Still the left shoulder on the camera's right, now the mirror image of the right shoulder.
    assert np.all(eager['coords3d'][:, lsho, 0] > eager['coords3d'][:, rsho, 0])
    np.testing.assert_allclose(eager['coords3d'][:, lsho], coords[:, rsho] * [-1, 1, 1], atol=1e-3)
    np.testing.assert_allclose(eager['coords2d'][:, lsho, 0], SIDE - 1 - batch['coords2d'][:, rsho, 0], atol=1e-3)
    assert not eager['joint_valid'][:, lsho].any() and eager['joint_valid'][:, rsho].all()
    # A mirror about the centred principal point is exactly image[:, ::-1].
    np.testing.assert_array_equal(eager['image'], batch['image'][:, :, ::-1])
    assert reprojection_error(eager) < PROJECTION_TOLERANCE_PX


@pytest.mark.parametrize('backend', augment.WARP_BACKENDS)
def test_warp_moves_a_dot_where_its_label_moves(backend):
    n, side = 6, 64
    batch = fake_batch(n, side=side, seed=3)
    ys, xs = np.mgrid[:side, :side]
    images = np.zeros((n, side, side, 3), np.uint8)
    joint = SPACE.names.index('lwri_h36m_17')
    for i in range(n):
        centre = batch['coords2d'][i, joint] * 0.3 + (side - 1) / 2 * 0.7  # pull towards the middle
        batch['coords3d'][i, joint] *= 1.0  # keep 3D; set 2D/3D consistently below
        ray = np.linalg.solve(batch['intrinsics'][i].astype(np.float64), [*centre, 1.0])
        batch['coords3d'][i, joint] = ray * 4000.0
        batch['coords2d'][i, joint] = centre
        blob = np.exp(-((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2) / (2 * 1.5 ** 2))
        images[i] = np.round(255 * blob)[..., None]
    batch['image'] = images
    config = AugmentConfig.identity(roll_degrees=20, zoom_range=(0.8, 1.25), shift_fraction=0.1,
                                    flip_probability=0.5, warp_backend=backend)
    eager, mapped = run_both(lambda b, k: augment.augment_batch(b, k, config, SPACE.mirror), batch, make_keys(n))
    assert_same(eager, mapped)
    flipped = augment.sample_params(make_keys(n), config)['flip'].numpy()
    assert 0 < flipped.sum() < n
    for i in range(n):
        weight = eager['image'][i, ..., 0].astype(np.float64)
        weight[weight < 20] = 0
        centroid = [np.sum(weight * xs) / weight.sum(), np.sum(weight * ys) / weight.sum()]
        label_joint = SPACE.mirror[joint] if flipped[i] else joint
        np.testing.assert_allclose(centroid, eager['coords2d'][i, label_joint], atol=0.25)


def test_photometric_ops():
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 255, (4, 8, 8, 3)).astype(np.float32)
    base = dict(hue=np.zeros(4), saturation=np.ones(4), contrast=np.ones(4), brightness=np.zeros(4))
    fn = lambda im, p: {'out': augment.photometric_augment(im, p)}  # noqa: E731
    eager, mapped = run_both(fn, images, base)
    np.testing.assert_array_equal(eager['out'], mapped['out'])
    np.testing.assert_allclose(eager['out'], images, atol=1e-3)
    out = fn(images, dict(base, brightness=np.full(4, 10.0)))['out'].numpy()
    np.testing.assert_allclose(out, images + 10, atol=1e-3)
    out = fn(images, dict(base, contrast=np.full(4, 0.5)))['out'].numpy()
    mean = images.mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(out, mean + 0.5 * (images - mean), atol=1e-3)
    luma = images @ np.array([0.299, 0.587, 0.114], np.float32)
    out = fn(images, dict(base, saturation=np.zeros(4)))['out'].numpy()
    np.testing.assert_allclose(out, np.repeat(luma[..., None], 3, -1), atol=1e-3)
    out = fn(images, dict(base, hue=np.full(4, 0.3)))['out'].numpy()
    np.testing.assert_allclose(out @ np.array([0.299, 0.587, 0.114]), luma, atol=1e-3)  # luma kept
    assert np.abs(out - images).max() > 30
    chroma = lambda x: np.linalg.norm(x - x.mean(-1, keepdims=True), axis=-1)  # noqa: E731
    assert chroma(out).mean() == pytest.approx(chroma(images).mean(), rel=0.15)


def test_random_erase_paints_the_box_only():
    images = np.full((2, 10, 20, 3), 100.0, np.float32)
    params = dict(erase=np.array([True, False]), erase_box=np.array([[0.2, 0.5, 0.6, 1.0]] * 2),
                  erase_noise=np.array([False, False]), erase_colour=np.array([[1.0, 2.0, 3.0]] * 2),
                  erase_cells=np.zeros((2, 8, 8, 3)))
    eager, mapped = run_both(lambda im, p: {'out': augment.random_erase(im, p)}, images, params)
    np.testing.assert_array_equal(eager['out'], mapped['out'])
    out = eager['out']
    expected = images.copy()
    expected[0, 2:6, 10:20] = [1, 2, 3]
    np.testing.assert_array_equal(out, expected)
    noisy = augment.random_erase(images, dict(params, erase_noise=np.array([True, True]),
                                              erase_cells=np.arange(2 * 64 * 3).reshape(2, 8, 8, 3))).numpy()
    assert len(np.unique(noisy[0, 2:6, 10:20].reshape(-1, 3), axis=0)) > 1


def test_erasing_and_photometric_leave_labels_unchanged():
    batch = fake_batch(8)
    config = AugmentConfig.identity(brightness_delta=0.2, contrast_range=(0.5, 1.5), hue_delta=0.2,
                                    saturation_range=(0.5, 1.5), erase_probability=1.0)
    out = numpy_dict(augment.augment_batch(batch, make_keys(8), config, SPACE.mirror))
    for key in ('coords3d', 'coords2d', 'intrinsics', 'joint_valid'):
        np.testing.assert_allclose(out[key], batch[key], atol=1e-3)
    assert np.mean(out['image'] != batch['image']) > 0.5


def test_augmentation_depends_only_on_each_examples_key():
    batch = fake_batch(5)
    keys = make_keys(5, start=100)
    config = AugmentConfig()
    together = numpy_dict(augment.augment_batch(batch, keys, config, SPACE.mirror))
    single = {k: v[3] for k, v in batch.items()}
    ds = tf.data.Dataset.from_tensors((single, keys[3])).map(
        lambda e, k: augment.augment_example(e, k, config, SPACE.mirror))
    for alone in (augment.augment_example(single, keys[3], config, SPACE.mirror), next(iter(ds))):
        for key, value in numpy_dict(alone).items():
            np.testing.assert_array_equal(value, together[key][3], err_msg=key)
    other = numpy_dict(augment.augment_batch(batch, make_keys(5, start=101), config, SPACE.mirror))
    assert not np.array_equal(other['coords2d'][2], together['coords2d'][3])


def test_warp_backends_agree():
    batch = fake_batch(4, side=40, seed=5)
    ys, xs = np.mgrid[:40, :40]
    smooth = 127 + 100 * np.sin(xs / 5.0)[..., None] * np.cos(ys[..., None] / 7.0 + np.arange(3))
    batch['image'] = np.broadcast_to(np.round(smooth).astype(np.uint8), (4, 40, 40, 3)).copy()
    config = AugmentConfig.identity(roll_degrees=20, zoom_range=(0.8, 1.2), shift_fraction=0.1, fill_value=50.0)
    outs = [numpy_dict(augment.augment_batch(batch, make_keys(4), dataclasses.replace(config, warp_backend=b),
                                             SPACE.mirror)) for b in augment.WARP_BACKENDS]
    diff = np.abs(outs[0]['image'].astype(np.float64) - outs[1]['image'])
    assert np.median(diff) <= 1.0 and np.mean(diff) < 2.0  # cv2 quantises positions to 1/32 px
    np.testing.assert_array_equal(outs[0]['coords2d'], outs[1]['coords2d'])


def test_opencv_and_tensorflow_image_ops_agree():
    batch = fake_batch(16, side=40, seed=6)
    config = AugmentConfig.identity(brightness_delta=0.2, contrast_range=(0.5, 1.5), hue_delta=0.2,
                                    saturation_range=(0.5, 1.5), erase_probability=0.7)
    outs = []
    for backend in augment.WARP_BACKENDS:
        cfg = dataclasses.replace(config, warp_backend=backend)
        eager, mapped = run_both(lambda b, k: augment.augment_batch(b, k, cfg, SPACE.mirror), batch, make_keys(16))
        assert_same(eager, mapped)
        outs.append(eager['image'].astype(np.int64))
    assert np.abs(outs[0] - outs[1]).max() <= 1
    assert np.mean(outs[0] != batch['image']) > 0.5
