"""Tests of posekit.geometry: rotations, the Camera class, Procrustes and the TF projection helpers."""
import math

import cv2
import numpy as np
import pytest

from posekit import geometry
from posekit.geometry import Camera

DISTORTIONS = {
    'none': None,
    'k5': [-0.2, 0.05, 0.001, -0.002, 0.01],
    'k8': [-0.2, 0.05, 0.001, -0.002, 0.01, 0.1, 0.02, 0.003],
    'k12': [-0.2, 0.05, 0.001, -0.002, 0.01, 0.1, 0.02, 0.003, 0.001, -0.002, 0.003, 0.0005],
}
PX_TOL = 1e-6
MM_TOL = 1e-6


def random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q * np.linalg.det(q)


def make_camera(distortion=None, skew=0.0):
    eye = np.array([300.0, -200.0, -3500.0])
    rot = geometry.look_at_rotation(eye, [0.0, 0.0, 0.0])
    intrinsics = [[1100.0, skew, 620.0], [0.0, 1080.0, 380.0], [0.0, 0.0, 1.0]]
    return Camera(eye, rot, intrinsics, distortion)


def points_in_view(rng, n=64):
    """World points around the origin, within the view of make_camera (normalized radius < ~0.35)."""
    return rng.uniform(-600.0, 600.0, size=(n, 3))


# --- rotations -------------------------------------------------------------------------------

def test_euler_to_matrix_composes_left_to_right():
    angles = np.array([0.3, -0.7, 1.1])
    expected = (geometry.axis_rotation('Z', 0.3) @ geometry.axis_rotation('Y', -0.7)
                @ geometry.axis_rotation('X', 1.1))
    np.testing.assert_allclose(geometry.euler_to_matrix(angles, 'ZYX'), expected, atol=1e-15)


def test_rotation_from_vectors_is_minimal_rotation(rng):
    a = rng.normal(size=(20, 3))
    b = rng.normal(size=(20, 3))
    b[0] = -a[0] * 2.0  # opposite
    b[1] = a[1] * 3.0  # parallel
    rot = geometry.rotation_from_vectors(a, b)
    unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)
    np.testing.assert_allclose(np.einsum('nij,nj->ni', rot, unit(a)), unit(b), atol=1e-12)
    np.testing.assert_allclose(rot @ np.swapaxes(rot, 1, 2), np.broadcast_to(np.eye(3), rot.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-12)
    np.testing.assert_allclose(rot[1], np.eye(3), atol=1e-12)
    axis = np.cross(a[2:], b[2:])  # minimal: the rotation axis is a x b, left fixed
    np.testing.assert_allclose(np.einsum('nij,nj->ni', rot[2:], axis), axis, atol=1e-9)


def test_look_at_rotation_is_upright_and_aims(rng):
    eye = rng.normal(size=(10, 3)) * 1000
    target = rng.normal(size=(10, 3)) * 1000
    up = np.array([0.0, 0.0, 1.0])
    rot = geometry.look_at_rotation(eye, target, up)
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-12)
    direction = (target - eye) / np.linalg.norm(target - eye, axis=-1, keepdims=True)
    np.testing.assert_allclose(rot[:, 2], direction, atol=1e-12)
    np.testing.assert_allclose(rot[:, 0] @ up, 0.0, atol=1e-12)  # horizontal x axis
    assert np.all(rot[:, 1] @ up < 0)  # y axis points down
    with pytest.raises(ValueError, match='parallel to world_up'):
        geometry.look_at_rotation([0, 0, 0], [0, 0, 5], up)
    with pytest.raises(ValueError, match='target must differ from eye'):
        geometry.look_at_rotation([1, 2, 3], [1, 2, 3])


# --- camera basics ----------------------------------------------------------------------------

def test_world_camera_round_trip_and_formula(rng):
    cam = make_camera()
    points = rng.normal(size=(4, 5, 3)) * 1000
    p_cam = cam.world_to_camera(points)
    np.testing.assert_allclose(p_cam, (points - cam.optical_center) @ cam.rot_world_to_cam.T, atol=1e-9)
    np.testing.assert_allclose(cam.camera_to_world(p_cam), points, atol=MM_TOL)


@pytest.mark.parametrize('distortion', DISTORTIONS.values(), ids=DISTORTIONS.keys())
def test_project_after_unproject_round_trip(rng, distortion):
    cam = make_camera(distortion, skew=3.0)
    pixels = rng.uniform([0, 0], [1240, 760], size=(7, 9, 2))
    depth = rng.uniform(500.0, 9000.0, size=(7, 9))
    back = cam.world_to_image(cam.image_to_world(pixels, depth))
    np.testing.assert_allclose(back, pixels, atol=PX_TOL, rtol=0)
    np.testing.assert_allclose(cam.image_to_camera(pixels, depth[..., None])[..., 2], depth, rtol=1e-15)


@pytest.mark.parametrize('distortion', DISTORTIONS.values(), ids=DISTORTIONS.keys())
def test_unproject_after_project_round_trip(rng, distortion):
    cam = make_camera(distortion)
    points = points_in_view(rng)
    depth = cam.world_to_camera(points)[:, 2]
    np.testing.assert_allclose(cam.image_to_world(cam.world_to_image(points), depth), points, atol=MM_TOL)


@pytest.mark.parametrize('name', ['k5', 'k8', 'k12'])
def test_distortion_matches_opencv(rng, name):
    cam = make_camera(DISTORTIONS[name])
    points = points_in_view(rng)
    rvec, _ = cv2.Rodrigues(cam.rot_world_to_cam)
    tvec = -cam.rot_world_to_cam @ cam.optical_center
    expected, _ = cv2.projectPoints(points, rvec, tvec, cam.intrinsic_matrix, np.array(DISTORTIONS[name]))
    np.testing.assert_allclose(cam.world_to_image(points), expected[:, 0], atol=PX_TOL)


def test_undistortion_outside_invertible_region_is_nan():
    # r_d = r (1 - 0.5 r^2) never exceeds 0.544, so a distorted radius of 1 has no preimage.
    cam = Camera(intrinsic_matrix=[[100.0, 0, 0], [0, 100.0, 0], [0, 0, 1]], distortion_coeffs=[-0.5, 0, 0, 0])
    result = cam.image_to_camera([[100.0, 0.0], [20.0, 10.0]], 1000.0)
    assert np.all(np.isnan(result[0]))
    np.testing.assert_allclose(cam.camera_to_image(result[1]), [20.0, 10.0], atol=PX_TOL)


def test_projection_matrix_matches_world_to_image(rng):
    cam = make_camera(skew=2.0)
    points = points_in_view(rng)
    homogeneous = np.concatenate([points, np.ones((len(points), 1))], 1) @ cam.projection_matrix.T
    np.testing.assert_allclose(homogeneous[:, :2] / homogeneous[:, 2:], cam.world_to_image(points), atol=PX_TOL)


def test_from_fov_focal_length_and_image_edges():
    cam = Camera.from_fov(60.0, (480, 640))
    focal = 320.0 / math.tan(math.radians(30.0))
    np.testing.assert_allclose(cam.intrinsic_matrix, [[focal, 0, 319.5], [0, focal, 239.5], [0, 0, 1]])
    # A ray at half the field of view to the right lands on the outer edge of the last pixel.
    ray = [math.sin(math.radians(30.0)), 0.0, math.cos(math.radians(30.0))]
    np.testing.assert_allclose(cam.camera_to_image(ray), [639.5, 239.5], atol=PX_TOL)
    portrait = Camera.from_fov(60.0, (640, 480, 3))  # fov along the larger side (height)
    np.testing.assert_allclose(portrait.focal_length, [focal, focal])
    np.testing.assert_allclose(portrait.principal_point, [239.5, 319.5])


# --- derived cameras --------------------------------------------------------------------------

@pytest.mark.parametrize('distortion', [None, DISTORTIONS['k12']], ids=['none', 'k12'])
def test_flipped_mirrors_projection_and_camera_points(rng, distortion):
    cam = make_camera(distortion, skew=4.0)
    points = points_in_view(rng)
    flipped = cam.flipped()
    np.testing.assert_allclose(flipped.world_to_camera(points),
                               cam.world_to_camera(points) @ np.diag([-1.0, 1.0, 1.0]), atol=1e-9)
    original = cam.world_to_image(points)
    cx = cam.principal_point[0]
    np.testing.assert_allclose(flipped.world_to_image(points),
                               np.stack([2 * cx - original[:, 0], original[:, 1]], 1), atol=PX_TOL)
    width = 1240
    in_flipped_image = cam.flipped(image_width=width).world_to_image(points)
    np.testing.assert_allclose(in_flipped_image[:, 0], width - 1 - original[:, 0], atol=PX_TOL)
    np.testing.assert_allclose(in_flipped_image[:, 1], original[:, 1], atol=PX_TOL)
    assert flipped.flipped() == cam
    assert np.linalg.det(flipped.rot_world_to_cam) == pytest.approx(-1.0)


def test_rolled_rotates_camera_points_and_image(rng):
    cam = Camera.from_fov(50.0, (480, 640), [0, 0, -4000], np.eye(3)).copy(
        distortion_coeffs=[-0.1, 0.02, 0.0, 0.0, 0.0])  # radial only: rotation-symmetric
    angle = 0.4
    rolled = cam.rolled(angle)
    points = points_in_view(rng)
    np.testing.assert_allclose(rolled.world_to_camera(points),
                               cam.world_to_camera(points) @ geometry.axis_rotation('Z', angle).T, atol=1e-9)
    # Image content turns clockwise on screen by `angle` about the principal point.
    c = cam.principal_point
    rot2d = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    expected = (cam.world_to_image(points) - c) @ rot2d.T + c
    np.testing.assert_allclose(rolled.world_to_image(points), expected, atol=PX_TOL)
    # Same as OpenCV's image rotation by -angle (counter-clockwise positive).
    affine = cv2.getRotationMatrix2D(tuple(c), -math.degrees(angle), 1.0)
    via_cv = cam.world_to_image(points) @ affine[:, :2].T + affine[:, 2]
    np.testing.assert_allclose(rolled.world_to_image(points), via_cv, atol=PX_TOL)
    assert rolled.rolled(-angle).allclose(cam)


def test_zoomed_shifted_scaled_centered(rng):
    cam = make_camera(skew=2.0)
    points = points_in_view(rng)
    original = cam.world_to_image(points)
    c = cam.principal_point
    np.testing.assert_allclose(cam.zoomed(1.7).world_to_image(points), (original - c) * 1.7 + c, atol=PX_TOL)
    np.testing.assert_allclose(cam.shifted_image(-30.0, 12.5).world_to_image(points),
                               original + [-30.0, 12.5], atol=PX_TOL)
    np.testing.assert_allclose(cam.scaled_image(0.5).world_to_image(points), (original + 0.5) * 0.5 - 0.5,
                               atol=PX_TOL)
    assert Camera.from_fov(40.0, (100, 150)).scaled_image(2.0).allclose(Camera.from_fov(40.0, (200, 300)))
    np.testing.assert_allclose(cam.center_principal_point((200, 300)).principal_point, [149.5, 99.5])


def test_turned_towards_aims_and_keeps_roll(rng):
    cam = make_camera(DISTORTIONS['k5'])
    target = np.array([900.0, 400.0, 700.0])
    turned = cam.turned_towards(target)
    np.testing.assert_allclose(turned.world_to_image(target), turned.principal_point, atol=PX_TOL)
    np.testing.assert_array_equal(turned.optical_center, cam.optical_center)
    np.testing.assert_allclose(turned.rot_world_to_cam[0] @ cam.world_up, 0.0, atol=1e-12)  # still upright
    assert turned.intrinsic_matrix is not None and turned.distortion_coeffs is not None
    # A rolled camera keeps its roll: turning commutes with rolling.
    assert cam.rolled(0.3).turned_towards(target).allclose(turned.rolled(0.3))
    # A mirrored camera stays mirrored and still aims at the target.
    flipped_turned = cam.flipped().turned_towards(target)
    assert np.linalg.det(flipped_turned.rot_world_to_cam) == pytest.approx(-1.0)
    assert flipped_turned.allclose(turned.flipped())
    # Degenerate: looking straight down along world_up (y down in this world), then away again.
    down = cam.optical_center + [0.0, 1000.0, 0.0]
    looking_down = cam.turned_towards(down)
    np.testing.assert_allclose(looking_down.world_to_image(down), looking_down.principal_point, atol=PX_TOL)
    again = looking_down.turned_towards(target)
    np.testing.assert_allclose(again.world_to_image(target), again.principal_point, atol=PX_TOL)


def test_homography_matches_projection_of_rays(rng):
    cam1 = make_camera(skew=1.5)
    cam2 = cam1.rolled(0.2).turned_towards([200.0, -100.0, 300.0]).zoomed(1.3).shifted_image(15.0, -8.0)
    points = points_in_view(rng)
    h = cam1.homography_to(cam2)
    src = np.concatenate([cam1.world_to_image(points), np.ones((len(points), 1))], 1) @ h.T
    np.testing.assert_allclose(src[:, :2] / src[:, 2:], cam2.world_to_image(points), atol=PX_TOL)
    # Same with OpenCV's perspectiveTransform.
    via_cv = cv2.perspectiveTransform(cam1.world_to_image(points)[:, None], h)[:, 0]
    np.testing.assert_allclose(via_cv, cam2.world_to_image(points), atol=PX_TOL)
    with pytest.raises(ValueError, match='other must share the optical centre'):
        cam1.homography_to(cam1.copy(optical_center=[0.0, 0.0, -3000.0]))


def test_camera_is_immutable_and_repr_round_trips():
    cam = make_camera(DISTORTIONS['k8'], skew=0.25)
    assert eval(repr(cam), {'Camera': Camera}) == cam
    assert hash(eval(repr(cam), {'Camera': Camera})) == hash(cam)
    with pytest.raises(ValueError, match='read-only'):
        cam.intrinsic_matrix[0, 0] = 1.0
    before = repr(cam)
    for derived in (cam.flipped(), cam.zoomed(2.0), cam.rolled(0.1), cam.turned_towards([1.0, 2.0, 3.0]),
                    cam.shifted_image(1, 2), cam.scaled_image(0.5), cam.center_principal_point((10, 20))):
        assert derived is not cam and derived != cam
    assert repr(cam) == before
    assert cam.copy() == cam and cam.copy() is not cam
    assert cam.copy(distortion_coeffs=[0, 0, 0, 0]) == cam.copy(distortion_coeffs=None)


def test_camera_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r'optical_center must have shape \(3,\)'):
        Camera(optical_center=[1, 2])
    with pytest.raises(ValueError, match='optical_center must be finite'):
        Camera(optical_center=[1, np.nan, 2])
    with pytest.raises(ValueError, match='rot_world_to_cam must be orthonormal'):
        Camera(rot_world_to_cam=np.eye(3) * 2)
    with pytest.raises(ValueError, match='intrinsic_matrix must be'):
        Camera(intrinsic_matrix=[[1, 0, 0], [0, -1, 0], [0, 0, 1]])
    with pytest.raises(ValueError, match='distortion_coeffs must be a vector of'):
        Camera(distortion_coeffs=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match='world_up must be a non-zero vector'):
        Camera(world_up=[0, 0, 0])
    with pytest.raises(ValueError, match=r'fov_degrees must be in \(0, 180\), got 180'):
        Camera.from_fov(180, (10, 10))
    with pytest.raises(ValueError, match='imshape must be'):
        Camera.from_fov(60, (0, 10))
    cam = make_camera()
    with pytest.raises(ValueError, match='factor must be > 0, got -1'):
        cam.zoomed(-1)
    with pytest.raises(ValueError, match=r'points_world must have shape \[..., 3\], got shape \(4, 2\)'):
        cam.world_to_image(np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r'depth must be broadcastable to the point batch shape \(4,\)'):
        cam.image_to_camera(np.zeros((4, 2)), np.ones(3))
    with pytest.raises(ValueError, match='target_world must differ from the optical centre'):
        cam.turned_towards(cam.optical_center)
    with pytest.raises(ValueError, match='other must be a Camera'):
        cam.homography_to(np.eye(3))


# --- alignment --------------------------------------------------------------------------------

def test_procrustes_recovers_similarity_transform(rng):
    gt = rng.normal(size=(6, 17, 3)) * 200
    rot = np.stack([random_rotation(rng) for _ in range(6)])
    scale = rng.uniform(0.5, 2.0, size=6)
    shift = rng.normal(size=(6, 3)) * 500
    pred = scale[:, None, None] * gt @ np.swapaxes(rot, 1, 2) + shift[:, None]
    aligned, s, r, t = geometry.procrustes(pred, gt, return_transform=True)
    np.testing.assert_allclose(aligned, gt, atol=MM_TOL)
    np.testing.assert_allclose(s, 1.0 / scale, rtol=1e-9)
    np.testing.assert_allclose(r, np.swapaxes(rot, 1, 2), atol=1e-9)
    np.testing.assert_allclose(aligned, s[:, None, None] * pred @ np.swapaxes(r, 1, 2) + t[:, None], atol=1e-9)
    rigid = geometry.procrustes(pred, gt, scale=False)
    np.testing.assert_allclose(np.linalg.norm(rigid[:, 1] - rigid[:, 0], axis=-1),
                               np.linalg.norm(pred[:, 1] - pred[:, 0], axis=-1), rtol=1e-9)


def test_procrustes_reflection_and_mask(rng):
    gt = rng.normal(size=(3, 12, 3)) * 200
    mirrored = gt * [-1.0, 1.0, 1.0]
    np.testing.assert_allclose(geometry.procrustes(mirrored, gt, allow_reflection=True), gt, atol=MM_TOL)
    _, _, r, _ = geometry.procrustes(mirrored, gt, return_transform=True)
    np.testing.assert_allclose(np.linalg.det(r), 1.0)
    assert np.abs(geometry.procrustes(mirrored, gt) - gt).max() > 10.0
    # Masked-out joints (even NaN) do not influence the fit; the transform still applies to them.
    pred = gt * 1.5 + 100.0
    pred[:, 0] = np.nan
    pred[:, 1] += 5000.0
    mask = np.ones(gt.shape[:2], bool)
    mask[:, :2] = False
    aligned = geometry.procrustes(pred, gt, mask=mask)
    np.testing.assert_allclose(aligned[:, 2:], gt[:, 2:], atol=MM_TOL)
    assert np.all(np.isnan(aligned[:, 0]))
    assert np.all(np.isnan(geometry.procrustes(pred, gt, mask=np.zeros_like(mask))))
    with pytest.raises(ValueError, match=r'mask must have shape \(3, 12\)'):
        geometry.procrustes(gt, gt, mask=np.ones((3, 11), bool))
    with pytest.raises(ValueError, match='pred and gt must have the same shape'):
        geometry.procrustes(gt[:, :5], gt)


def test_align_scale_least_squares(rng):
    gt = rng.normal(size=(5, 10, 3)) * 200
    pred = gt * rng.uniform(0.5, 2.0, size=(5, 1, 1)) + rng.normal(size=(5, 10, 3)) * 20 + 300.0
    aligned, s = geometry.align_scale(pred, gt, return_scale=True)
    for i in range(5):
        pc = pred[i] - pred[i].mean(0)
        gc = gt[i] - gt[i].mean(0)
        expected_s = np.linalg.lstsq(pc.reshape(-1, 1), gc.reshape(-1), rcond=None)[0][0]
        assert s[i] == pytest.approx(expected_s, rel=1e-9)
        np.testing.assert_allclose(aligned[i], expected_s * pc + gt[i].mean(0), atol=1e-9)
    rooted = geometry.align_scale(pred, gt, root_index=0)
    np.testing.assert_allclose(rooted[:, 0], gt[:, 0], atol=1e-9)
    with pytest.raises(ValueError, match='root_index must be None or a joint index'):
        geometry.align_scale(pred, gt, root_index=10)


# --- TensorFlow helpers -----------------------------------------------------------------------

def test_project_unproject_tf_match_camera(rng):
    tf = pytest.importorskip('tensorflow')
    cams = [make_camera(skew=2.0), Camera.from_fov(55.0, (256, 256))]
    points_cam = rng.uniform([-500, -500, 2000], [500, 500, 5000], size=(2, 17, 3))
    intrinsics = np.stack([c.intrinsic_matrix for c in cams])
    expected = np.stack([c.camera_to_image(p) for c, p in zip(cams, points_cam)])

    project = tf.function(geometry.project_tf)
    got = project(tf.constant(points_cam, tf.float64), tf.constant(intrinsics))
    np.testing.assert_allclose(got.numpy(), expected, atol=PX_TOL)
    shared = geometry.project_tf(tf.constant(points_cam), tf.constant(intrinsics[0]))
    np.testing.assert_allclose(shared.numpy()[0], expected[0], atol=PX_TOL)
    back = geometry.unproject_tf(tf.constant(expected), tf.constant(points_cam[..., 2]), tf.constant(intrinsics))
    np.testing.assert_allclose(back.numpy(), points_cam, atol=MM_TOL)
    with pytest.raises(ValueError, match='intrinsics batch rank'):
        geometry.project_tf(tf.zeros([3]), tf.zeros([2, 3, 3]))
    with pytest.raises(ValueError, match=r'points2d must have shape \[..., 2\]'):
        geometry.unproject_tf(tf.zeros([4, 3]), tf.ones([4]), tf.eye(3))


# --- camera math shared by training, losses and export (numpy or TF) ----------------------------

def _tf():
    return pytest.importorskip('tensorflow')


def _in_dataset_map(fn, *args):
    """fn(*args) run inside tf.data.Dataset.map (style rule 9), as numpy."""
    tf = _tf()
    out = next(iter(tf.data.Dataset.from_tensors(tuple(tf.constant(a) for a in args)).map(lambda *a: fn(*a))))
    return tf.nest.map_structure(lambda t: t.numpy(), out)


def test_project_tf_with_distortion_and_min_depth_matches_camera(rng):
    tf = _tf()
    d = DISTORTIONS['k8']
    cam = make_camera(d, skew=1.5)
    points = rng.uniform([-400, -300, 2000], [400, 300, 4000], size=(3, 17, 3))
    got = geometry.project_tf(tf.constant(points), tf.constant(np.tile(cam.intrinsic_matrix, (3, 1, 1))),
                              distortion_coeffs=tf.constant(np.tile(d, (3, 1))))
    np.testing.assert_allclose(got.numpy(), cam.camera_to_image(points), atol=PX_TOL)
    mapped = _in_dataset_map(lambda p, k, c: geometry.project_tf(p, k, c), points, cam.intrinsic_matrix, np.array(d))
    np.testing.assert_allclose(mapped, cam.camera_to_image(points), atol=PX_TOL)
    # min_depth: points behind or too close are projected as if at that depth (finite, direction kept).
    behind = np.array([[[100.0, -50.0, -30.0], [10.0, 20.0, 0.5]]])
    k = np.array([[100.0, 0, 50], [0, 100.0, 40], [0, 0, 1]])
    got = geometry.project_tf(tf.constant(behind), tf.constant(k), min_depth=1.0).numpy()
    np.testing.assert_allclose(got, [[[100 * 100 + 50, -50 * 100 + 40], [10 * 100 + 50, 20 * 100 + 40]]])


def test_undistort_tf_inverts_distortion(rng):
    for name in ('k5', 'k8', 'k12'):
        d = np.array(DISTORTIONS[name])
        xy = rng.uniform(-0.4, 0.4, (2, 50, 2))
        distorted = geometry.distort_normalized(xy, d)
        np.testing.assert_allclose(geometry.distort_normalized_tf(xy, np.stack([d, d])), distorted, atol=1e-15)
        back = _in_dataset_map(geometry.undistort_normalized_tf, distorted, np.stack([d, d]))
        np.testing.assert_allclose(back, xy, atol=1e-12)


def test_fov_intrinsics_formula_numpy_and_tf():
    tf = _tf()
    k = geometry.fov_intrinsics(55.0, 90, 150)
    focal = 150 / 2 / math.tan(math.radians(55) / 2)
    np.testing.assert_allclose(k, [[focal, 0, 74.5], [0, focal, 44.5], [0, 0, 1]], rtol=1e-15)
    np.testing.assert_allclose(geometry.fov_intrinsics(tf.constant(55.0), tf.constant(90), 150).numpy(), k,
                               rtol=1e-15)
    batch = geometry.fov_intrinsics(np.array([55.0, 90.0]), np.array([90, 100]), np.array([150, 100]))
    assert batch.shape == (2, 3, 3)
    np.testing.assert_allclose(batch[1, 0, 0], 50.0, rtol=1e-12)  # 90 degrees: f = half the side
    assert Camera.from_fov(55.0, (90, 150)).allclose(Camera(intrinsic_matrix=k))


def _boxes_and_cameras(rng, n=6):
    k = np.tile(np.array([[900.0, 1.5, 640.0], [0.0, 880.0, 360.0], [0.0, 0.0, 1.0]]), (n, 1, 1))
    xy = rng.uniform([0, 0], [1100, 500], (n, 2))
    boxes = np.concatenate([xy, rng.uniform(60, 400, (n, 2))], -1)
    return k, boxes


def test_crop_camera_numpy_tf_and_dataset_map_agree(rng):
    tf = _tf()
    k, boxes = _boxes_and_cameras(rng)
    n = len(boxes)
    roll, flip = rng.uniform(-0.5, 0.5, n), rng.uniform(size=n) < 0.5
    zoom, shift = rng.uniform(0.8, 1.2, n), rng.uniform(-0.1, 0.1, (n, 2))
    d = np.tile(DISTORTIONS['k5'], (n, 1))
    args = dict(box_margin=0.1, distortion_coeffs=d, roll=roll, flip=flip, zoom=zoom, shift=shift)
    rot_np, k_np = geometry.crop_camera(k, boxes, 96, **args)
    assert isinstance(rot_np, np.ndarray)
    rot_tf, k_tf = geometry.crop_camera(tf.constant(k), tf.constant(boxes), 96,
                                        **{a: tf.constant(v) for a, v in args.items() if a != 'box_margin'},
                                        box_margin=0.1)
    np.testing.assert_allclose(rot_tf.numpy(), rot_np, atol=1e-12)
    np.testing.assert_allclose(k_tf.numpy(), k_np, rtol=1e-12)
    mapped = _in_dataset_map(lambda kk, b, dd, r, f, z, s: geometry.crop_camera(
        kk, b, 96, 0.1, distortion_coeffs=dd, roll=r, flip=f, zoom=z, shift=s), k, boxes, d, roll, flip, zoom, shift)
    np.testing.assert_allclose(mapped[0], rot_np, atol=1e-12)
    np.testing.assert_allclose(mapped[1], k_np, rtol=1e-12)
    # Proper rotations, det -1 exactly where flipped.
    np.testing.assert_allclose(rot_np @ np.swapaxes(rot_np, -1, -2), np.tile(np.eye(3), (n, 1, 1)), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(rot_np), np.where(flip, -1.0, 1.0), atol=1e-12)


def test_crop_camera_aims_at_the_undistorted_box_centre_plus_shift(rng):
    k, boxes = _boxes_and_cameras(rng)
    d = DISTORTIONS['k5']
    shift = rng.uniform(-0.1, 0.1, (len(boxes), 2))
    rotation, crop_k = geometry.crop_camera(k, boxes, 64, distortion_coeffs=np.tile(d, (len(boxes), 1)),
                                            shift=shift)
    for i, (x, y, w, h) in enumerate(boxes):
        cam = Camera(intrinsic_matrix=k[i], distortion_coeffs=d)  # numpy Camera, damped-Newton undistortion
        aim_px = np.array([x + w / 2 + shift[i, 0] * max(w, h), y + h / 2 + shift[i, 1] * max(w, h)])
        ray = rotation[i] @ cam.image_to_camera(aim_px, 1.0)
        np.testing.assert_allclose(ray[:2] / ray[2], 0.0, atol=1e-12)  # on the crop's optical axis
        np.testing.assert_allclose(rotation[i][0] @ geometry.CAMERA_UP, 0.0, atol=1e-12)  # upright
        assert crop_k[i, 0, 0] == crop_k[i, 1, 1] and crop_k[i, 0, 1] == 0
        np.testing.assert_allclose(crop_k[i, :2, 2], 31.5)


def test_crop_camera_roll_flip_zoom_compose_like_camera_methods(rng):
    k = np.array([[500.0, 0.0, 320.0], [0.0, 500.0, 240.0], [0.0, 0.0, 1.0]])
    box = np.array([200.0, 100.0, 150.0, 300.0])
    base_rot, base_k = geometry.crop_camera(k, box, 64)
    base = Camera(rot_world_to_cam=base_rot, intrinsic_matrix=base_k)
    rot, new_k = geometry.crop_camera(k, box, 64, roll=0.3, flip=True, zoom=1.5)
    expected = base.rolled(0.3).flipped().zoomed(1.5)
    np.testing.assert_allclose(rot, expected.rot_world_to_cam, atol=1e-12)
    np.testing.assert_allclose(new_k, expected.intrinsic_matrix, atol=1e-9)
    # The farthest box corner is S / 2 / (1 + margin) from the crop centre (unrolled, no zoom).
    corners = np.array([[200, 100], [350, 100], [200, 400], [350, 400]], np.float64)
    rays = Camera(intrinsic_matrix=k).image_to_camera(corners, 1.0)
    uv = base.world_to_image(rays)
    assert np.max(np.abs(uv - 31.5)) == pytest.approx(32 / (1 + geometry.DEFAULT_BOX_MARGIN), rel=1e-12)


def test_crop_source_pixels_match_numpy_camera_with_distortion(rng):
    tf = _tf()
    k, boxes = _boxes_and_cameras(rng, n=2)
    for name in ('none', 'k5', 'k8'):
        d = DISTORTIONS[name]
        rotation, crop_k = geometry.crop_camera(k, boxes, 32, roll=np.array([0.2, -0.4]),
                                                distortion_coeffs=None if d is None else np.tile(d, (2, 1)))
        for i in range(2):
            got = geometry.crop_source_pixels(k[i], rotation[i], crop_k[i], 32,
                                              None if d is None else tf.constant(d)).numpy()
            crop_cam = Camera(rot_world_to_cam=rotation[i], intrinsic_matrix=crop_k[i])
            image_cam = Camera(intrinsic_matrix=k[i], distortion_coeffs=d)
            grid = np.stack(np.meshgrid(np.arange(32.0), np.arange(32.0), indexing='xy'), -1)  # [row, col, (x, y)]
            expected = image_cam.world_to_image(crop_cam.image_to_world(grid, 1000.0))
            np.testing.assert_allclose(got, expected, atol=1e-5)  # px (acceptance: 1e-3), an independent path


def test_warp_to_crop_samples_bilinearly_like_opencv_and_the_projective_kernel(rng):
    tf = _tf()
    image = np.round(255 * rng.uniform(size=(120, 160, 3))).astype(np.uint8)
    k = np.array([[150.0, 0.0, 80.0], [0.0, 150.0, 60.0], [0.0, 0.0, 1.0]])
    rotation, crop_k = geometry.crop_camera(k, np.array([40.0, 20.0, 70.0, 90.0]), 48, roll=0.3)
    ours = geometry.warp_to_crop(tf.constant(image), k, rotation, crop_k, 48).numpy()
    # ImageProjectiveTransformV3 through the homography (exact without distortion).
    homography = geometry.crop_homography(k, rotation, crop_k)
    kernel = geometry.warp_homography_tf(image[None], homography[None], (48, 48))[0].numpy()
    np.testing.assert_allclose(ours, kernel, atol=0.05)
    # With distortion: cv2.remap at the independently computed source pixels (cv2 quantises the
    # bilinear weights to 1/32, hence the tolerance in intensity levels).
    d = DISTORTIONS['k5']
    rotation, crop_k = geometry.crop_camera(k, np.array([40.0, 20.0, 70.0, 90.0]), 48, distortion_coeffs=d)
    ours = geometry.warp_to_crop(tf.constant(image), k, rotation, crop_k, 48, distortion_coeffs=d).numpy()
    crop_cam = Camera(rot_world_to_cam=rotation, intrinsic_matrix=crop_k)
    grid = np.stack(np.meshgrid(np.arange(48.0), np.arange(48.0), indexing='xy'), -1)
    source = Camera(intrinsic_matrix=k, distortion_coeffs=d).world_to_image(crop_cam.image_to_world(grid, 1000.0))
    remapped = cv2.remap(image, source[..., 0].astype(np.float32), source[..., 1].astype(np.float32),
                         cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0).astype(np.float32)
    inside = (source[..., 0] > 1) & (source[..., 0] < 158) & (source[..., 1] > 1) & (source[..., 1] < 118)
    assert inside.mean() > 0.9
    assert np.abs(ours[inside] - remapped[inside]).max() <= 255 / 32 + 1
    assert np.abs(ours[inside] - remapped[inside]).mean() < 1.0
    # Same function eagerly and inside Dataset.map.
    mapped = _in_dataset_map(lambda im, kk, r, ck, dd: geometry.warp_to_crop(im, kk, r, ck, 48, dd),
                             image, k, rotation, crop_k, np.array(d))
    np.testing.assert_allclose(mapped, ours, atol=0.01)  # intensity levels: graph kernels round differently


def test_crop_labels_are_the_projection_with_the_crop_intrinsics(rng):
    """A dot drawn at a joint's distorted image position is found at that joint's crop projection."""
    tf = _tf()
    k = np.array([[300.0, 0.0, 160.0], [0.0, 300.0, 120.0], [0.0, 0.0, 1.0]])
    d = DISTORTIONS['k5']
    joint = np.array([250.0, -180.0, 3000.0])  # mm, image camera frame
    px = Camera(intrinsic_matrix=k, distortion_coeffs=d).camera_to_image(joint)
    yy, xx = np.mgrid[:240, :320]
    image = (255 * np.exp(-((xx - px[0]) ** 2 + (yy - px[1]) ** 2) / (2 * 2.0 ** 2)))[..., None].repeat(3, -1)
    box = np.array([px[0] - 40, px[1] - 50, 90.0, 100.0])
    rotation, crop_k = geometry.crop_camera(k, box, 64, distortion_coeffs=d, roll=0.25)
    crop = geometry.warp_to_crop(tf.constant(image.astype(np.float32)), k, rotation, crop_k, 64, d).numpy()[..., 0]
    label = geometry.project_tf(tf.constant((rotation @ joint)[None]), tf.constant(crop_k)).numpy()[0]
    weights = np.clip(crop - 0.05 * crop.max(), 0, None)
    cy, cx = (np.indices(crop.shape) * weights).sum(axis=(1, 2)) / weights.sum()
    np.testing.assert_allclose([cx, cy], label, atol=0.05)  # centroid of a resampled blob: sub-0.1 px
