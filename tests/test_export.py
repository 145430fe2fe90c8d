"""Tests of posekit.export: the SavedModel for downstream apps.

One tiny random Metrabs (mobile_small at 64 px) is exported once per module (with a fake person
detector) and once more without a detector and with antialiasing. The exported functions are
compared with an independent reference built from ``posekit.geometry`` (numpy crop cameras), the
shared crop warp (``posekit.geometry.warp_to_crop``) and the in-process Keras model, run in graph
mode like the export (eager Keras kernels round differently, see the note in ``_run_model``).
"""
import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from posekit import export, geometry, skeletons
from posekit.data import augment, bodies, synth
from posekit.models.backbones import build_backbone
from posekit.models import metrabs
from posekit.models.metrabs import Metrabs

CROP = 64
SPACE = skeletons.JointSpace(bodies.DEFAULT_FORMATS)
K_IMAGE = np.array([[150.0, 0.0, 70.0], [0.0, 160.0, 65.0], [0.0, 0.0, 1.0]])
BOXES = np.array([[30.0, 20.0, 50.0, 80.0], [100.0, 10.0, 40.0, 90.0]])
#: The acceptance tolerance (mm) between the exported and the in-process model.
AGREEMENT_MM = 1e-4
#: Detector fake: (box as fractions x, y, w, h of the image width/height, score).
FAKE_DETECTIONS = (((0.25, 0.1, 0.5, 0.8), 0.2), ((0.0, 0.0, 0.3, 0.3), 0.9), ((0.5, 0.5, 0.4, 0.4), 0.6))


def smooth_image(seed, height=120, width=160):
    """A random image with structure at several scales (uint8 [H, W, 3])."""
    rng = np.random.default_rng(seed)
    walk = np.cumsum(np.cumsum(rng.normal(0.0, 3.0, (height, width, 3)), axis=0), axis=1)
    walk = (walk - walk.min()) / (walk.max() - walk.min())
    return np.round(255 * walk).astype(np.uint8)


class FakeDetector(tf.Module):
    """The documented detector interface: detect(image uint8 [H, W, 3]) -> boxes [N, 4], scores [N]."""

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    def detect(self, image):
        size = tf.cast(tf.shape(image)[:2], tf.float32)
        scale = tf.stack([size[1], size[0], size[1], size[0]])
        boxes = tf.constant([b for b, _ in FAKE_DETECTIONS], tf.float32) * scale
        return {'boxes': boxes, 'scores': tf.constant([s for _, s in FAKE_DETECTIONS], tf.float32)}


@pytest.fixture(scope='module')
def model():
    keras.utils.set_random_seed(0)
    backbone = build_backbone('mobile_small', input_shape=(CROP, CROP, 3), ghost_batch_size=2)
    net = Metrabs(backbone, SPACE.n_joints)
    net(tf.zeros([1, CROP, CROP, 3]), tf.eye(3)[tf.newaxis], training=False)
    return net


@pytest.fixture(scope='module')
def run_model(model):
    """The in-process model in graph mode: crops (0-255) and crop intrinsics -> coords3d_abs."""

    @tf.function(input_signature=[tf.TensorSpec([None, CROP, CROP, 3]), tf.TensorSpec([None, 3, 3])])
    def run(crops, intrinsics):
        return model(crops / export.PIXEL_MAX, intrinsics, training=False)['coords3d_abs']

    return lambda crops, k: run(tf.constant(crops, tf.float32), tf.constant(k, tf.float32)).numpy()


@pytest.fixture(scope='module')
def saved_dirs(model, tmp_path_factory):
    root = tmp_path_factory.mktemp('export')
    tf.saved_model.save(FakeDetector(), str(root / 'detector'))
    with_detector = export.export_model(model, SPACE, root / 'with_detector', detector=root / 'detector')
    plain = export.export_model(model, SPACE, root / 'plain', antialias_factor=2, default_skeleton='smpl_24')
    return dict(with_detector=with_detector, plain=plain)


@pytest.fixture(scope='module')
def loaded(saved_dirs):
    return tf.saved_model.load(saved_dirs['with_detector'])


def reference_poses(run_model, image, boxes, intrinsics, skeleton, num_aug=1, antialias=1,
                    roll_degrees=export.DEFAULT_TTA_ROLL_DEGREES, margin=export.DEFAULT_BOX_MARGIN):
    """MeTRAbs test time written out with numpy and posekit.geometry (the export's documented method)."""
    rolls = np.radians(np.linspace(-roll_degrees, roll_degrees, num_aug)) if num_aug > 1 else np.zeros(1)
    flips = (np.arange(num_aug) - num_aug // 2) % 2 == 1
    # Gamma and zoom variations of the original MeTRAbs (identity for a single augmentation).
    gammas = np.linspace(export.TTA_GAMMA_MIN, 1.0, num_aug) if num_aug > 1 else np.ones(1)
    low, mid, high = export.TTA_SCALE_RANGE
    scales = np.concatenate([np.linspace(low, mid, num_aug // 2, endpoint=False),
                             np.linspace(mid, high, num_aug - num_aug // 2)])
    k_inv = np.linalg.inv(intrinsics)
    rotations, crop_ks = [], []
    for x, y, w, h in boxes:
        aim = geometry.look_at_rotation(np.zeros(3), k_inv @ [x + w / 2, y + h / 2, 1.0], world_up=(0, -1, 0))
        corners = np.array([[x, y, 1], [x + w, y, 1], [x, y + h, 1], [x + w, y + h, 1]]) @ k_inv.T @ aim.T
        extent = 2 * np.max(np.abs(corners[:, :2] / corners[:, 2:]))
        focal = CROP / (extent * (1 + margin))
        for roll, flip, scale in zip(rolls, flips, scales):
            rotation = np.diag([-1.0 if flip else 1.0, 1, 1]) @ geometry.axis_rotation('Z', roll) @ aim
            rotations.append(rotation)
            crop_ks.append(np.array([[focal * scale, 0, (CROP - 1) / 2], [0, focal * scale, (CROP - 1) / 2], [0, 0, 1]]))
    # The pixels are resampled by geometry.warp_to_crop (tested against ImageProjectiveTransformV3 and an
    # independent per-pixel computation in tests/test_geometry.py); the cameras above are independent.
    # Graph mode like the export (eager and graph kernels round the bilinear weights differently).
    warp = tf.function(geometry.warp_to_crop)
    crops = np.stack([warp(tf.constant(image), tf.constant(intrinsics), tf.constant(rotation), tf.constant(crop_k),
                           CROP, antialias_factor=antialias).numpy()
                      for rotation, crop_k in zip(rotations, crop_ks)])
    gamma = np.tile(gammas, len(boxes))[:, None, None, None].astype(np.float32)
    adjust = tf.function(lambda c, g: 255.0 * tf.pow(tf.maximum(c, 0.0) / 255.0, g))  # graph mode like the export
    adjusted = adjust(tf.constant(crops), tf.constant(gamma)).numpy()
    crops = np.where(gamma == 1.0, crops, adjusted)
    coords = run_model(crops, np.array(crop_ks)).astype(np.float64)
    all_flips = np.tile(flips, len(boxes))
    coords = np.where(all_flips[:, None, None], coords[:, SPACE.mirror], coords)
    coords = np.einsum('tji,tkj->tki', np.array(rotations), coords)  # R^T p
    poses3d = coords.reshape(len(boxes), num_aug, -1, 3).mean(axis=1)[:, SPACE.slices[skeleton]]
    depth = np.maximum(poses3d[..., 2:], geometry.MIN_PROJECTION_DEPTH_MM)  # as documented for poses2d
    normalized = np.concatenate([poses3d[..., :2] / depth, np.ones_like(depth)], axis=-1)
    return poses3d, (normalized @ intrinsics.T)[..., :2]


# ---------------------------------------------------------------------------------------------- numerics

def test_exported_model_matches_in_process_model_for_every_skeleton(loaded, run_model):
    image = smooth_image(0)
    for num_aug in (1, 3):
        for skeleton in SPACE.formats:
            got = loaded.estimate_poses(image, BOXES, K_IMAGE, skeleton=skeleton, num_aug=num_aug)
            want3d, want2d = reference_poses(run_model, image, BOXES, K_IMAGE, skeleton, num_aug)
            n_joints = skeletons.get(skeleton).n_joints
            assert got['poses3d'].shape == (2, n_joints, 3) and got['poses2d'].shape == (2, n_joints, 2)
            assert got['poses3d'].dtype == tf.float32 and got['poses2d'].dtype == tf.float32
            np.testing.assert_allclose(got['poses3d'], want3d, rtol=0, atol=AGREEMENT_MM)
            np.testing.assert_allclose(got['poses2d'], want2d, rtol=1e-5, atol=1e-4)


def test_antialiased_export_matches_reference_and_has_no_detector(saved_dirs, run_model):
    plain = tf.saved_model.load(saved_dirs['plain'])
    assert not hasattr(plain, 'detect_poses')
    image = smooth_image(1)
    got = plain.estimate_poses(image, BOXES, K_IMAGE)  # default skeleton of this export: smpl_24
    want3d, _ = reference_poses(run_model, image, BOXES, K_IMAGE, 'smpl_24', antialias=2)
    np.testing.assert_allclose(got['poses3d'], want3d, rtol=0, atol=AGREEMENT_MM)
    assert plain.default_skeleton.numpy() == b'smpl_24'


def test_default_camera_is_55_degrees_at_the_image_centre(loaded):
    image = smooth_image(2, height=90, width=150)
    default_k = geometry.Camera.from_fov(export.DEFAULT_FOV_DEGREES, image.shape).intrinsic_matrix
    focal = 150 / 2 / np.tan(np.radians(export.DEFAULT_FOV_DEGREES) / 2)
    np.testing.assert_allclose(default_k, [[focal, 0, 74.5], [0, focal, 44.5], [0, 0, 1]], rtol=1e-14)
    omitted = loaded.estimate_poses(image, BOXES[:1])
    zeros = loaded.estimate_poses(image, BOXES[:1], np.zeros((3, 3), np.float32))
    np.testing.assert_array_equal(omitted['poses3d'], zeros['poses3d'])
    # Explicit K: rounded to float32 on input (the untrained model amplifies the 1e-8 difference).
    explicit = loaded.estimate_poses(image, BOXES[:1], default_k)
    np.testing.assert_allclose(omitted['poses3d'], explicit['poses3d'], rtol=1e-3, atol=1e-3)
    # poses2d is the projection of poses3d with the image camera
    p = omitted['poses3d'].numpy().astype(np.float64) @ default_k.T
    np.testing.assert_allclose(omitted['poses2d'], p[..., :2] / p[..., 2:], rtol=1e-5, atol=1e-3)


def test_batched_matches_single_image_calls(loaded):
    images = np.stack([smooth_image(3), smooth_image(4), smooth_image(5)])
    boxes = tf.ragged.constant([BOXES.tolist(), [], BOXES[1:].tolist()], ragged_rank=1, inner_shape=(4,),
                               dtype=tf.float32)
    intrinsics = np.stack([K_IMAGE, np.zeros((3, 3)), K_IMAGE * [[0.9], [0.9], [1.0]]]).astype(np.float32)
    got = loaded.estimate_poses_batched(images, boxes, intrinsics, skeleton='coco_19', num_aug=2)
    assert isinstance(got['poses3d'], tf.RaggedTensor)
    assert got['poses3d'].row_lengths().numpy().tolist() == [2, 0, 1]
    for i in (0, 2):
        single = loaded.estimate_poses(images[i], boxes[i], intrinsics[i], skeleton='coco_19', num_aug=2)
        for key in ('poses3d', 'poses2d'):
            np.testing.assert_allclose(got[key][i].numpy(), single[key], rtol=0, atol=AGREEMENT_MM)
    # Intrinsics omitted: the default camera for every image.
    default = loaded.estimate_poses_batched(images[:1], boxes[:1])
    single = loaded.estimate_poses(images[0], BOXES)
    np.testing.assert_array_equal(default['poses3d'][0].numpy(), single['poses3d'])


def test_no_boxes_gives_empty_results(loaded):
    out = loaded.estimate_poses(smooth_image(6), np.zeros((0, 4), np.float32), skeleton='mpi_inf_3dhp_17')
    assert out['poses3d'].shape == (0, 17, 3) and out['poses2d'].shape == (0, 17, 2)


# ---------------------------------------------------------------------------------------------- interface

def test_serving_default_signature_is_estimate_poses_with_default_skeleton(loaded):
    serving = loaded.signatures['serving_default']
    _, inputs = serving.structured_input_signature
    assert inputs == {'image': tf.TensorSpec([None, None, 3], tf.uint8, name='image'),
                      'boxes': tf.TensorSpec([None, 4], tf.float32, name='boxes')}
    assert serving.structured_outputs['poses3d'].shape.as_list() == [None, 17, 3]
    image = smooth_image(7)
    got = serving(image=tf.constant(image), boxes=tf.constant(BOXES, tf.float32))
    want = loaded.estimate_poses(image, BOXES)
    np.testing.assert_array_equal(got['poses3d'], want['poses3d'])
    full = loaded.signatures['estimate_poses'](
        image=tf.constant(image), boxes=tf.constant(BOXES, tf.float32),
        intrinsic_matrix=tf.constant(K_IMAGE, tf.float32), skeleton=tf.constant('smpl_24'), num_aug=tf.constant(1))
    want = loaded.estimate_poses(image, BOXES, K_IMAGE, 'smpl_24')
    np.testing.assert_array_equal(full['poses3d'], want['poses3d'])


def test_crop_model_signature_is_the_raw_network_on_crops(loaded, run_model):
    crop_model = loaded.signatures['crop_model']
    _, inputs = crop_model.structured_input_signature
    assert inputs == {'images': tf.TensorSpec([None, CROP, CROP, 3], tf.float32, name='images'),
                      'intrinsics': tf.TensorSpec([None, 3, 3], tf.float32, name='intrinsics')}
    crops = np.stack([smooth_image(s, CROP, CROP) for s in (3, 4, 5)]).astype(np.float32)
    ks = np.array([[[90.0 + 10 * i, 0.0, 32.0 + i], [0.0, 95.0, 31.0], [0.0, 0.0, 1.0]] for i in range(3)], np.float32)
    got = crop_model(images=tf.constant(crops / export.PIXEL_MAX), intrinsics=tf.constant(ks))['poses3d'].numpy()
    assert got.shape == (3, SPACE.n_joints, 3)  # every joint of the joint space (slices per skeleton)
    # A separate trace of the same network: graph rounding only (0.0007 mm seen), not AGREEMENT_MM.
    np.testing.assert_allclose(got, run_model(crops, ks), rtol=0, atol=0.01)


def test_joint_names_and_edges_of_every_skeleton(loaded):
    assert [s.decode() for s in loaded.skeletons.numpy()] == list(SPACE.formats)
    assert loaded.default_skeleton.numpy() == b'h36m_17' and int(loaded.crop_size.numpy()) == CROP
    for skeleton in SPACE.formats:
        info = skeletons.get(skeleton)
        assert [n.decode() for n in loaded.per_skeleton_joint_names[skeleton].numpy()] == list(info.names)
        assert loaded.per_skeleton_joint_edges[skeleton].numpy().tolist() == [list(e) for e in info.edges]


def test_detect_poses_uses_detector_boxes(loaded):
    image = smooth_image(8)
    height, width = image.shape[:2]
    scale = np.array([width, height, width, height])
    # The random model's poses are implausible: the filter is tested separately.
    keep_all = dict(suppress_implausible_poses=False)
    out = loaded.detect_poses(image, skeleton='smpl_24', **keep_all)  # default threshold 0.3: scores 0.9, 0.6
    np.testing.assert_allclose(out['scores'], [0.9, 0.6])
    expected_boxes = np.array([FAKE_DETECTIONS[1][0], FAKE_DETECTIONS[2][0]]) * scale
    # boxes [N, 5]: x, y, w, h and the score (as the original MeTRAbs)
    np.testing.assert_allclose(out['boxes'][:, :4], expected_boxes, rtol=1e-6)
    np.testing.assert_array_equal(out['boxes'][:, 4], out['scores'])
    direct = loaded.estimate_poses(image, out['boxes'][:, :4], skeleton='smpl_24')
    np.testing.assert_allclose(out['poses3d'], direct['poses3d'], rtol=0, atol=AGREEMENT_MM)
    assert loaded.detect_poses(image, detector_threshold=0.1, **keep_all)['boxes'].shape == (3, 5)
    top = loaded.detect_poses(image, detector_threshold=0.1, max_detections=1, **keep_all)
    np.testing.assert_allclose(top['scores'], [0.9])
    assert top['poses3d'].shape == (1, 17, 3)


def test_bad_inputs_fail_with_clear_messages(loaded):
    image = smooth_image(9)
    uint8_spec = r'dtype=tf\.float32.*to TensorSpec\(shape=\(None, None, 3\), dtype=tf\.uint8'
    with pytest.raises(TypeError, match=uint8_spec):
        loaded.estimate_poses(tf.constant(image, tf.float32), BOXES)
    errors = tf.errors.InvalidArgumentError
    with pytest.raises(errors, match=r'image must hold uint8 intensities 0-255, but every pixel is 0 or 1'):
        loaded.estimate_poses(image.astype(np.float32) / 255, BOXES)  # numpy: TF truncates it to uint8
    with pytest.raises(TypeError, match=r'shape=\(2, 3\).*to TensorSpec\(shape=\(None, 4\)'):
        loaded.estimate_poses(image, BOXES[:, :3])
    with pytest.raises(TypeError, match=r'to TensorSpec\(shape=\(None, None, 3\)'):
        loaded.estimate_poses(image[..., 0], BOXES)
    with pytest.raises(errors, match=r'skeleton must be one of .*h36m_17, smpl_24, coco_19, mpi_inf_3dhp_17.*42'):
        loaded.estimate_poses(image, BOXES, skeleton='smpl_42')
    with pytest.raises(errors, match='intrinsic_matrix must be finite'):
        loaded.estimate_poses(image, BOXES, np.where(np.eye(3) > 0, np.nan, K_IMAGE))
    with pytest.raises(errors, match=r'intrinsic_matrix must be \[\[fx, skew, cx\]'):
        loaded.estimate_poses(image, BOXES, K_IMAGE * [[-1.0], [1.0], [1.0]])
    with pytest.raises(errors, match='boxes must be finite'):
        loaded.estimate_poses(image, np.array([[np.inf, 0.0, 10.0, 10.0]]))
    with pytest.raises(errors, match='boxes must have positive width and height'):
        loaded.estimate_poses(image, np.array([[10.0, 10.0, 0.0, 10.0]]))
    with pytest.raises(errors, match='num_aug must be >= 1'):
        loaded.estimate_poses(image, BOXES, num_aug=0)
    with pytest.raises(errors, match='image must have positive height and width'):
        loaded.estimate_poses(image[:0], BOXES)
    with pytest.raises(errors, match='boxes must have one row .* per image'):
        loaded.estimate_poses_batched(image[None], tf.ragged.constant([[], []], ragged_rank=1, inner_shape=(4,)))
    with pytest.raises(errors, match=r'intrinsic_matrix must be \[B, 3, 3\]'):
        one_row = tf.ragged.constant([BOXES.tolist()], ragged_rank=1, inner_shape=(4,), dtype=tf.float32)
        loaded.estimate_poses_batched(image[None], one_row, np.zeros((2, 3, 3)))
    with pytest.raises(errors, match='skeleton must be one of'):
        loaded.detect_poses(image, skeleton='nope')
    # A black image without boxes is fine (nothing to estimate), e.g. a dark video frame.
    assert loaded.estimate_poses(np.zeros_like(image), np.zeros((0, 4)))['poses3d'].shape == (0, 17, 3)


def test_loads_in_a_process_without_posekit_or_keras(saved_dirs, loaded, tmp_path):
    """The SavedModel needs TensorFlow only: posekit and keras are made unimportable in the child."""
    script = tmp_path / 'use_model.py'
    script.write_text(textwrap.dedent('''
        import importlib.util, json, sys
        import numpy as np
        sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]
        sys.path[:] = [p for p in sys.path if p.rstrip('/') != sys.argv[3]]
        report = {'posekit_found': importlib.util.find_spec('posekit') is not None}
        sys.modules['posekit'] = None  # any import of posekit or keras now fails
        sys.modules['keras'] = None
        import tensorflow as tf
        model = tf.saved_model.load(sys.argv[1])
        image = np.load(sys.argv[2] + '/image.npy')
        boxes = np.load(sys.argv[2] + '/boxes.npy')
        results = {}
        for name in model.skeletons.numpy():
            skeleton = name.decode()
            out = model.estimate_poses(image, boxes, skeleton=skeleton)
            results[skeleton] = out['poses3d'].numpy()
            report[skeleton] = [model.per_skeleton_joint_names[skeleton].shape[0], list(out['poses2d'].shape)]
        report['serving'] = list(model.signatures['serving_default'](
            image=tf.constant(image), boxes=tf.constant(boxes))['poses3d'].shape)
        np.savez(sys.argv[2] + '/poses3d.npz', **results)
        report['loaded_modules'] = sorted({m.split('.')[0] for m in sys.modules if sys.modules[m] is not None
                                           and m.split('.')[0] in ('posekit', 'keras')})
        print(json.dumps(report))
    '''))
    image = smooth_image(10)
    np.save(tmp_path / 'image.npy', image)
    np.save(tmp_path / 'boxes.npy', BOXES.astype(np.float32))
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    env['TF_CPP_MIN_LOG_LEVEL'] = '3'
    repo = os.path.dirname(os.path.dirname(os.path.abspath(export.__file__)))
    done = subprocess.run([sys.executable, '-I', str(script), saved_dirs['with_detector'], str(tmp_path), repo],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report['posekit_found'] is False and report['loaded_modules'] == []
    assert report['serving'] == [2, 17, 3]
    results = np.load(tmp_path / 'poses3d.npz')
    for skeleton in SPACE.formats:
        n_joints = skeletons.get(skeleton).n_joints
        assert report[skeleton] == [n_joints, [2, n_joints, 2]]
        in_process = loaded.estimate_poses(image, BOXES, skeleton=skeleton)['poses3d'].numpy()
        np.testing.assert_allclose(results[skeleton], in_process, rtol=0, atol=AGREEMENT_MM)


# ---------------------------------------------------------------------------------------------- geometry

def test_crop_cameras_aim_upright_and_fit_the_box():
    boxes = np.array([[10.0, 20.0, 30.0, 90.0], [300.0, 5.0, 60.0, 40.0], [0.0, 200.0, 400.0, 100.0]])
    k = np.tile(np.array([[400.0, 0.0, 320.0], [0.0, 380.0, 240.0], [0.0, 0.0, 1.0]]), (3, 1, 1))
    rotation, crop_k = (t.numpy() for t in geometry.crop_camera(tf.constant(k), tf.constant(boxes), CROP, box_margin=0.2))
    np.testing.assert_allclose(rotation @ np.swapaxes(rotation, 1, 2), np.tile(np.eye(3), (3, 1, 1)), atol=1e-12)
    np.testing.assert_allclose(rotation[:, 0, 1], 0.0, atol=1e-12)  # x axis perpendicular to the vertical
    homography = crop_k @ rotation @ np.linalg.inv(k)
    centre = np.stack([boxes[:, 0] + boxes[:, 2] / 2, boxes[:, 1] + boxes[:, 3] / 2, np.ones(3)], -1)
    mapped = np.einsum('tij,tj->ti', homography, centre)
    np.testing.assert_allclose(mapped[:, :2] / mapped[:, 2:], (CROP - 1) / 2, atol=1e-9)
    # The corners lie inside the crop; the farthest one touches the margin: |offset| = S / 2 / (1 + margin).
    x, y, w, h = boxes.T
    corners = np.stack([np.stack([x, y], -1), np.stack([x + w, y], -1), np.stack([x, y + h], -1),
                        np.stack([x + w, y + h], -1)], 1)
    corners = np.concatenate([corners, np.ones((3, 4, 1))], -1)
    mapped = np.einsum('tij,tcj->tci', homography, corners)
    offset = np.abs(mapped[..., :2] / mapped[..., 2:] - (CROP - 1) / 2).max(axis=(1, 2))
    np.testing.assert_allclose(offset, CROP / 2 / 1.2, rtol=1e-9)


def test_uncrop_inverts_the_training_label_transform():
    """uncrop_poses undoes posekit.data.augment's crop-camera labels (rotation, flip, mirror permutation)."""
    rng = np.random.default_rng(0)
    n = 4
    coords3d = rng.normal(0.0, 300.0, (n, SPACE.n_joints, 3)) + [0.0, 0.0, 4000.0]
    k = np.tile(np.array([[90.0, 0, 31.5], [0, 90.0, 31.5], [0, 0, 1]]), (n, 1, 1))
    params = dict(roll=tf.constant([0.3, -0.2, 0.0, 1.0]), zoom=tf.ones([n]),
                  shift=tf.constant(rng.uniform(-0.1, 0.1, (n, 2)), tf.float32),
                  flip=tf.constant([True, False, True, False]))
    batch = dict(image=np.zeros((n, CROP, CROP, 3), np.uint8), intrinsics=k.astype(np.float32),
                 coords3d=coords3d.astype(np.float32), coords2d=np.zeros((n, SPACE.n_joints, 2), np.float32))
    labels, _, _ = augment.transform_labels(batch, params, SPACE.mirror)
    rotation, _, _ = augment.camera_transform(k, params, (CROP, CROP), (CROP, CROP))
    restored = export.uncrop_poses(labels['coords3d'], rotation, params['flip'], SPACE.mirror).numpy()
    np.testing.assert_allclose(restored, coords3d, atol=5e-3)  # float32 labels of points ~4 m away


def test_tta_params():
    rolls, flips = export.tta_params(1)
    assert rolls.numpy().tolist() == [0.0] and flips.numpy().tolist() == [False]
    rolls, flips = export.tta_params(3, max_roll_degrees=20.0)
    np.testing.assert_allclose(np.degrees(rolls), [-20.0, 0.0, 20.0])
    assert flips.numpy().tolist() == [True, False, True]
    assert export.tta_params(4)[1].numpy().tolist() == [False, True, False, True]


def test_antialiased_crops_average_away_fine_detail():
    """A 1-px checkerboard shrunk 4x: point sampling hits only black pixels, antialiasing gives grey."""
    board = (np.indices((256, 256)).sum(axis=0) % 2 * 255).astype(np.uint8)
    image = np.repeat(board[None, ..., None], 3, axis=-1)
    # Image camera K = I, no rotation, crop K = 'shrink': crop pixel (i, j) <- image pixel (4i+1, 4j+1).
    shrink = np.array([[[0.25, 0.0, -0.25], [0.0, 0.25, -0.25], [0.0, 0.0, 1.0]]])
    eye = np.eye(3)[None]
    aliased = export.make_crops(image, [0], eye, eye, shrink, CROP).numpy()
    smooth = export.make_crops(image, [0], eye, eye, shrink, CROP, antialias_factor=4).numpy()
    interior = (slice(None), slice(1, -1), slice(1, -1))
    np.testing.assert_array_equal(aliased[interior], 0.0)
    np.testing.assert_allclose(smooth[interior], 127.5, atol=1e-3)


def test_default_box_margin_matches_the_training_crops():
    fields = {f.name: f.default for f in dataclasses.fields(synth.CameraSpec)}
    assert export.DEFAULT_BOX_MARGIN == fields['box_margin']


def test_export_model_bad_arguments(model, tmp_path):
    out = tmp_path / 'never'
    with pytest.raises(ValueError, match="joint_space must be a posekit.skeletons.JointSpace"):
        export.export_model(model, ['h36m_17'], out)
    with pytest.raises(ValueError, match=r"model must predict the 17 joints.*n_joints=77"):
        export.export_model(model, skeletons.JointSpace(['h36m_17']), out)
    with pytest.raises(ValueError, match="default_skeleton must be one of .*received default_skeleton='cmu_31'"):
        export.export_model(model, SPACE, out, default_skeleton='cmu_31')
    with pytest.raises(ValueError, match='crop_size must be a positive int; received crop_size=0'):
        export.export_model(model, SPACE, out, crop_size=0)
    with pytest.raises(ValueError, match='default_fov_degrees must be in'):
        export.export_model(model, SPACE, out, default_fov_degrees=180)
    with pytest.raises(ValueError, match='antialias_factor must be an int >= 1; received antialias_factor=1.5'):
        export.export_model(model, SPACE, out, antialias_factor=1.5)
    with pytest.raises(ValueError, match='box_margin must be'):
        export.export_model(model, SPACE, out, box_margin=-0.1)
    with pytest.raises(ValueError, match='tta_roll_degrees must be in'):
        export.export_model(model, SPACE, out, tta_roll_degrees=270)
    with pytest.raises(ValueError, match='detector must be the path of a SavedModel'):
        export.export_model(model, SPACE, out, detector=tmp_path)
    tf.saved_model.save(tf.Module(), str(tmp_path / 'not_a_detector'))
    with pytest.raises(ValueError, match='detector must be a SavedModel with a `detect'):
        export.export_model(model, SPACE, out, detector=tmp_path / 'not_a_detector')
    assert not out.exists()

