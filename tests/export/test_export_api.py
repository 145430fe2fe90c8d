"""The original MeTRAbs call arguments of the exported model (issue 14) and its refusals (issue 18 item 4).

One tiny random Metrabs (mobile_small at 64 px) is exported once for the module, with a fake detector.
Every argument is checked for its meaning with a value (world frame, distortion, chunking, per-augmentation
outputs, broadcasting, detector options, the plausibility filter), and every refused input for an
``InvalidArgumentError`` naming the argument.
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

from posekit import export, geometry, skeletons
from posekit.data import bodies
from posekit.models.backbones import build_backbone
from posekit.models.metrabs import Metrabs

CROP = 64
SPACE = skeletons.JointSpace(bodies.DEFAULT_FORMATS)
K_IMAGE = np.array([[150.0, 0.0, 70.0], [0.0, 160.0, 65.0], [0.0, 0.0, 1.0]], np.float32)
BOXES = np.array([[30.0, 20.0, 50.0, 80.0], [100.0, 10.0, 40.0, 90.0], [60.0, 30.0, 45.0, 70.0]], np.float32)
DISTORTION = np.array([-0.25, 0.08, 0.002, -0.001, 0.0], np.float32)
#: Detector fake: (box as fractions x, y, w, h of the image width/height, score); the last two overlap.
FAKE_DETECTIONS = (((0.25, 0.1, 0.5, 0.8), 0.9), ((0.0, 0.0, 0.3, 0.3), 0.2), ((0.26, 0.1, 0.5, 0.8), 0.5),
                   ((0.5, 0.5, 0.0001, 0.0001), 0.95))
MM = 1e-3  # acceptance tolerance of issue 14 (mm)
ERRORS = tf.errors.InvalidArgumentError


def smooth_image(seed, height=120, width=160):
    rng = np.random.default_rng(seed)
    walk = np.cumsum(np.cumsum(rng.normal(0.0, 3.0, (height, width, 3)), axis=0), axis=1)
    walk = (walk - walk.min()) / (walk.max() - walk.min())
    return np.round(255 * walk).astype(np.uint8)


class FakeDetector(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    def detect(self, image):
        size = tf.cast(tf.shape(image)[:2], tf.float32)
        scale = tf.stack([size[1], size[0], size[1], size[0]])
        boxes = tf.constant([b for b, _ in FAKE_DETECTIONS], tf.float32) * scale
        return {'boxes': boxes, 'scores': tf.constant([s for _, s in FAKE_DETECTIONS], tf.float32)}


@pytest.fixture(scope='module')
def net():
    keras.utils.set_random_seed(1)
    backbone = build_backbone('mobile_small', input_shape=(CROP, CROP, 3), ghost_batch_size=2)
    model = Metrabs(backbone, SPACE.n_joints)
    model(tf.zeros([1, CROP, CROP, 3]), tf.eye(3)[tf.newaxis], training=False)
    return model


@pytest.fixture(scope='module')
def loaded(net, tmp_path_factory):
    root = tmp_path_factory.mktemp('export_api')
    tf.saved_model.save(FakeDetector(), str(root / 'detector'))
    export.export_model(net, SPACE, root / 'model', detector=root / 'detector')
    return tf.saved_model.load(str(root / 'model'))


# ---------------------------------------------------------------------------------------------- arguments

def test_world_coordinates_are_the_camera_outputs_transformed_by_the_extrinsics(loaded):
    image = smooth_image(0)
    # A turn about the vertical: the world's up (0, -1, 0) is exactly the camera's up, so the crops are the
    # same as without extrinsics (a float32-rounded up vector would turn them slightly).
    rot = geometry.axis_rotation('Y', 0.7)
    trans = np.array([120.0, -300.0, 2500.0])
    extrinsics = np.eye(4)
    extrinsics[:3, :3], extrinsics[:3, 3] = rot, trans
    world_up = rot.T @ np.array(geometry.CAMERA_UP)
    camera = loaded.estimate_poses(image, BOXES, K_IMAGE, num_aug=2)
    world = loaded.estimate_poses(image, BOXES, K_IMAGE, num_aug=2, extrinsic_matrix=extrinsics.astype(np.float32),
                                  world_up_vector=world_up.astype(np.float32))
    # R^T (X - t) with row vectors; float32 extrinsics: compare with the rounded matrix the model received
    rot32, trans32 = extrinsics.astype(np.float32)[:3, :3].astype(np.float64), trans.astype(np.float32)
    want = (camera['poses3d'].numpy().astype(np.float64) - trans32) @ rot32
    np.testing.assert_allclose(world['poses3d'], want, rtol=0, atol=MM)
    np.testing.assert_allclose(world['poses2d'], camera['poses2d'], rtol=0, atol=1e-3)
    assert np.abs(world['poses3d'] - camera['poses3d']).max() > 100.0  # the transform was applied


def test_world_up_vector_turns_the_crops(loaded):
    image = smooth_image(1)
    tilted = geometry.axis_rotation('Z', np.radians(30.0)) @ np.array(geometry.CAMERA_UP)
    upright = loaded.estimate_poses(image, BOXES, K_IMAGE)
    rolled = loaded.estimate_poses(image, BOXES, K_IMAGE, world_up_vector=tilted.astype(np.float32))
    assert np.abs(rolled['poses3d'] - upright['poses3d']).max() > 1e-3


def test_distortion_coefficients_reach_crops_and_poses2d(loaded):
    image = smooth_image(2)
    plain = loaded.estimate_poses(image, BOXES, K_IMAGE)
    zeros = loaded.estimate_poses(image, BOXES, K_IMAGE, distortion_coeffs=np.zeros(5, np.float32))
    np.testing.assert_array_equal(zeros['poses3d'], plain['poses3d'])
    out = loaded.estimate_poses(image, BOXES, K_IMAGE, distortion_coeffs=DISTORTION)
    assert np.abs(out['poses3d'] - plain['poses3d']).max() > 1e-3  # the crops were undistorted
    # poses2d is the OpenCV-distorted projection of poses3d (posekit.geometry.Camera, numpy).
    camera = geometry.Camera(intrinsic_matrix=K_IMAGE.astype(np.float64), distortion_coeffs=DISTORTION.astype(np.float64))
    poses3d = out['poses3d'].numpy().astype(np.float64)
    in_front = poses3d[..., 2] > geometry.MIN_PROJECTION_DEPTH_MM
    want = camera.camera_to_image(poses3d)
    np.testing.assert_allclose(out['poses2d'].numpy()[in_front], want[in_front], rtol=1e-4, atol=1e-2)
    # 8 and 12 coefficients are accepted (zero-padded), 13 are refused naming the argument.
    eight = loaded.estimate_poses(image, BOXES, K_IMAGE, distortion_coeffs=np.concatenate([DISTORTION, np.zeros(3)]))
    np.testing.assert_array_equal(eight['poses3d'], out['poses3d'])
    with pytest.raises(ERRORS, match='distortion_coeffs must have at most 12'):
        loaded.estimate_poses(image, BOXES, K_IMAGE, distortion_coeffs=np.zeros(13, np.float32))


def test_internal_batch_size_does_not_change_results(loaded):
    image = smooth_image(3)
    results = [loaded.estimate_poses(image, BOXES, K_IMAGE, num_aug=3, internal_batch_size=size)['poses3d'].numpy()
               for size in (1, 4, 64, 0)]
    for other in results[1:]:
        np.testing.assert_allclose(other, results[0], rtol=0, atol=MM)


def test_average_aug_false_returns_every_augmentation(loaded):
    image = smooth_image(4)
    averaged = loaded.estimate_poses(image, BOXES, K_IMAGE, skeleton='smpl_24', num_aug=4)
    each = loaded.estimate_poses(image, BOXES, K_IMAGE, skeleton='smpl_24', num_aug=4, average_aug=False)
    assert each['poses3d'].shape == (3, 4, 24, 3) and each['poses2d'].shape == (3, 4, 24, 2)
    np.testing.assert_allclose(each['poses3d'].numpy().mean(axis=1), averaged['poses3d'], rtol=0, atol=MM)
    # poses2d: the projections of each augmentation's pose, and of the averaged pose
    k = K_IMAGE.astype(np.float64)
    for poses3d, poses2d in ((each['poses3d'], each['poses2d']), (averaged['poses3d'], averaged['poses2d'])):
        p = poses3d.numpy().astype(np.float64) @ k.T
        in_front = p[..., 2] > 2 * geometry.MIN_PROJECTION_DEPTH_MM  # (the random model puts some joints behind)
        np.testing.assert_allclose(poses2d.numpy()[in_front], (p[..., :2] / p[..., 2:])[in_front], rtol=1e-4,
                                   atol=1e-2)
    # The augmentations differ (roll, flip, gamma, zoom).
    assert np.abs(np.diff(each['poses3d'].numpy(), axis=1)).max() > 1e-3


def test_tta_variations_follow_the_original():
    rolls, flips, gammas, scales = (t.numpy() for t in export.tta_variations(5, max_roll_degrees=25.0))
    np.testing.assert_allclose(np.degrees(rolls), [-25, -12.5, 0, 12.5, 25])
    assert flips.tolist() == [False, True, False, True, False]
    np.testing.assert_allclose(gammas, [0.6, 0.7, 0.8, 0.9, 1.0])
    np.testing.assert_allclose(scales, [0.8, 0.9, 1.0, 1.05, 1.1])
    _, _, gammas, scales = (t.numpy() for t in export.tta_variations(3))
    np.testing.assert_allclose(gammas, [0.6, 0.8, 1.0])
    np.testing.assert_allclose(scales, [0.8, 1.0, 1.1])
    _, _, gammas, scales = (t.numpy() for t in export.tta_variations(1))
    assert gammas.tolist() == [1.0] and scales.tolist() == [1.0]


def test_antialias_and_fov_call_arguments(loaded):
    image = smooth_image(5)
    base = loaded.estimate_poses(image, BOXES)
    assert np.abs(loaded.estimate_poses(image, BOXES, antialias_factor=2)['poses3d'] - base['poses3d']).max() > 1e-4
    # default_fov_degrees = the explicit FOV intrinsics
    k60 = geometry.fov_intrinsics(60.0, image.shape[0], image.shape[1]).astype(np.float32)
    np.testing.assert_allclose(loaded.estimate_poses(image, BOXES, default_fov_degrees=60.0)['poses3d'],
                               loaded.estimate_poses(image, BOXES, k60)['poses3d'], rtol=1e-3, atol=1e-3)
    # The original's 'unknown' intrinsics (all -1) select the default camera like zeros.
    np.testing.assert_array_equal(loaded.estimate_poses(image, BOXES, -np.ones((3, 3), np.float32))['poses3d'],
                                  base['poses3d'])
    with pytest.raises(ERRORS, match='antialias_factor must be in'):
        loaded.estimate_poses(image, BOXES, antialias_factor=9)
    with pytest.raises(ERRORS, match='default_fov_degrees must be in'):
        loaded.estimate_poses(image, BOXES, default_fov_degrees=0.0)


def test_batched_broadcasts_single_camera_arguments(loaded):
    images = np.stack([smooth_image(6), smooth_image(7)])
    boxes = tf.ragged.constant([BOXES[:2].tolist(), BOXES[2:].tolist()], ragged_rank=1, inner_shape=(4,),
                               dtype=tf.float32)
    extrinsics = np.eye(4, dtype=np.float32)
    extrinsics[:3, 3] = [10.0, 20.0, 30.0]
    got = loaded.estimate_poses_batched(images, boxes, K_IMAGE[None], distortion_coeffs=DISTORTION[None],
                                        extrinsic_matrix=extrinsics[None], num_aug=2)
    for i in range(2):
        single = loaded.estimate_poses(images[i], boxes[i], K_IMAGE, num_aug=2, distortion_coeffs=DISTORTION,
                                       extrinsic_matrix=extrinsics)
        np.testing.assert_allclose(got['poses3d'][i].numpy(), single['poses3d'], rtol=0, atol=MM)
        np.testing.assert_allclose(got['poses2d'][i].numpy(), single['poses2d'], rtol=0, atol=1e-3)
    per_aug = loaded.estimate_poses_batched(images, boxes, K_IMAGE[None], num_aug=2, average_aug=False)
    assert per_aug['poses3d'][0].shape == (2, 2, 17, 3)
    with pytest.raises(ERRORS, match='intrinsic_matrix must be'):
        loaded.estimate_poses_batched(images, boxes, np.stack([K_IMAGE] * 3))


def test_detect_poses_detector_options_and_batched(loaded):
    image = smooth_image(8)
    keep_all = dict(suppress_implausible_poses=False, detector_threshold=0.1)
    # The 1e-4-sized detection is dropped (too small to estimate); NMS at IoU 0.7 merges the two overlapping boxes.
    out = loaded.detect_poses(image, **keep_all)
    np.testing.assert_allclose(out['boxes'][:, 4], [0.9, 0.2])
    loose = loaded.detect_poses(image, detector_nms_iou_threshold=0.99, **keep_all)
    np.testing.assert_allclose(loose['boxes'][:, 4], [0.9, 0.5, 0.2])
    assert loaded.detect_poses(image, max_detections=1, **keep_all)['boxes'].shape == (1, 5)
    # Flip augmentation: every box also found mirrored (x -> W - x - w); here they coincide with NMS 0.99 off.
    flipped = loaded.detect_poses(image, detector_flip_aug=True, detector_nms_iou_threshold=1.0, **keep_all)
    assert flipped['boxes'].shape[0] == 6
    width = image.shape[1]
    mirrored = flipped['boxes'].numpy()
    originals = loose['boxes'].numpy()
    for box in originals:
        x_mirror = width - box[0] - box[2]
        assert np.any(np.all(np.abs(mirrored[:, 1:] - box[1:]) < 1e-3, axis=1) & (np.abs(mirrored[:, 0] - x_mirror) < 1e-3))
    images = np.stack([image, smooth_image(9)])
    batched = loaded.detect_poses_batched(images, **keep_all, num_aug=2)
    for i in range(2):
        single = loaded.detect_poses(images[i], **keep_all, num_aug=2)
        np.testing.assert_allclose(batched['boxes'][i].numpy(), single['boxes'], rtol=1e-6)
        np.testing.assert_allclose(batched['poses3d'][i].numpy(), single['poses3d'], rtol=0, atol=MM)


# ---------------------------------------------------------------------------------------------- filter

def constructed_module(net):
    return export.PoseEstimatorModule(net, SPACE, CROP)


def plausible_poses(n_aug=3):
    """[T, A, J, 3] poses of one body at three places, plus a near-duplicate of the first (10 mm off)."""
    rng = np.random.default_rng(0)
    base = rng.normal(0.0, 100.0, (SPACE.n_joints, 3))  # bones of ~250 mm, none near 900 mm
    offsets = np.array([[-1500.0, 0, 5000], [1500.0, 0, 5000], [0, 0, 9000], [-1500.0, 10.0, 5000]])
    poses = base[None] + offsets[:, None]
    return np.repeat(poses[:, None], n_aug, axis=1)


def project(poses3d):
    return poses3d[..., :2] / poses3d[..., 2:] * 150.0 + 80.0


def boxes_of(poses2d):
    low, high = poses2d.mean(axis=1).min(axis=1), poses2d.mean(axis=1).max(axis=1)
    return np.concatenate([low, high - low], axis=-1)


def test_suppress_implausible_poses_constructed_case(net):
    module = constructed_module(net)
    poses3d = plausible_poses()
    poses2d = project(poses3d)
    boxes = boxes_of(poses2d)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    ids = np.zeros(4, np.int32)

    def kept(p3, p2, b, s, i):
        return module._plausible(tf.constant(p3), tf.constant(p2), tf.constant(b, tf.float32),
                                 tf.constant(s, tf.float32), tf.constant(i)).numpy().tolist()

    # Three different people are kept; the near-duplicate of person 0 (scored lower) is suppressed.
    assert kept(poses3d, poses2d, boxes, scores, ids) == [0, 1, 2]
    # The same duplicate in another image is kept (NMS is per image).
    assert kept(poses3d, poses2d, boxes, scores, np.array([0, 0, 0, 1], np.int32)) == [0, 1, 2, 3]
    # Person 1 with one 2 m bone: implausible bone lengths.
    bad = poses3d.copy()
    child, parent = SPACE.edges[0]
    bad[1, :, child] = bad[1, :, parent] + [2000.0, 0.0, 0.0]
    assert kept(bad, project(bad), boxes, scores, ids) == [0, 2]
    # Person 2's augmentations disagree (each one a different random pose).
    rng = np.random.default_rng(1)
    noisy = poses3d.copy()
    noisy[2] += rng.normal(0.0, 600.0, noisy[2].shape)
    assert kept(noisy, project(noisy), boxes, scores, ids) == [0, 1]
    # A detection box far from person 1's 2D pose.
    far = boxes.copy()
    far[1, :2] += 5 * far[1, 2:]
    assert kept(poses3d, poses2d, far, scores, ids) == [0, 2]


# ---------------------------------------------------------------------------------------------- refusals

@pytest.mark.parametrize('boxes, message', [
    ([[500.0, 500.0, 40.0, 40.0]], 'boxes must overlap the image'),
    ([[-100.0, 10.0, 50.0, 50.0]], 'boxes must overlap the image'),
    ([[30.0, 20.0, 1e-6, 1e-6]], 'boxes must be at least 2.0 px wide and high'),
    ([[0.0, 0.0, 1e9, 1e9]], 'boxes must be at most 10.0 x the image'),
])
def test_absurd_boxes_are_refused(loaded, boxes, message):
    with pytest.raises(ERRORS, match=message):
        loaded.estimate_poses(smooth_image(10), np.array(boxes, np.float32), K_IMAGE)


def test_absurd_cameras_and_arguments_are_refused(loaded):
    image = smooth_image(11)
    tiny = K_IMAGE.copy()
    tiny[0, 0] = tiny[1, 1] = 1e-3
    with pytest.raises(ERRORS, match=r'intrinsic_matrix focal lengths fx, fy must be within \[0.01, 100.0\]'):
        loaded.estimate_poses(image, BOXES, tiny)
    huge = K_IMAGE.copy()
    huge[0, 0] = 1e9
    with pytest.raises(ERRORS, match='intrinsic_matrix focal lengths'):
        loaded.estimate_poses(image, BOXES, huge)
    singular = K_IMAGE.copy()
    singular[2, 2] = 0.0
    with pytest.raises(ERRORS, match='intrinsic_matrix must be'):
        loaded.estimate_poses(image, BOXES, singular)
    singular = K_IMAGE.copy()
    singular[1] = 0.0
    with pytest.raises(ERRORS, match='intrinsic_matrix must be'):
        loaded.estimate_poses(image, BOXES, singular)
    with pytest.raises(ERRORS, match=r'num_aug must be >= 1; received num_aug:\] \[-1\]'):
        loaded.estimate_poses(image, BOXES, num_aug=-1)
    with pytest.raises(ERRORS, match='internal_batch_size must be >= 0'):
        loaded.estimate_poses(image, BOXES, internal_batch_size=-2)
    not_rigid = np.eye(4, dtype=np.float32) * 2
    not_rigid[3, 3] = 1
    with pytest.raises(ERRORS, match='extrinsic_matrix must be'):
        loaded.estimate_poses(image, BOXES, extrinsic_matrix=not_rigid)
    with pytest.raises(ERRORS, match='world_up_vector must be non-zero'):
        loaded.estimate_poses(image, BOXES, world_up_vector=np.zeros(3, np.float32))
    # An int32 image tensor is refused by the signature (TypeError naming the uint8 spec) instead of wrapped.
    with pytest.raises(TypeError, match=r'dtype=tf\.int32.*dtype=tf\.uint8'):
        loaded.estimate_poses(tf.constant(image.astype(np.int32) + 200), BOXES)


def test_old_call_still_works(loaded):
    image = smooth_image(12)
    out = loaded.estimate_poses(image, BOXES)
    assert out['poses3d'].shape == (3, 17, 3) and out['poses2d'].shape == (3, 17, 2)
    assert np.all(np.isfinite(out['poses3d']))
