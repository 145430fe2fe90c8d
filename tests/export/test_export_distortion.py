"""``distortion_coeffs`` on an image taken through a distorting lens (issue 14): with the coefficients, the
estimated poses point at the person more truly than without, and ``poses2d`` lands on the distorted joints.

The image: a person rendered by ``posekit.data.synth`` (pinhole, known camera and joints), seen through a wider
camera turned away from the person (so the person is near a corner, where distortion is strongest) with strong
barrel distortion: every output pixel shows the source pixel on its undistorted ray (``cv2.remap``). The model is
the export of the session's smoke run, which is barely trained: its depth (absolute scale) is far off, so the
3D comparison is on the joints' directions from the camera (the part of the pose the camera model decides),
averaged over four frames.
"""
import dataclasses

import cv2
import numpy as np
import pytest
import tensorflow as tf

from posekit import geometry
from posekit.data import synth

DISTORTION = np.array([-0.3, 0.08, 0.0, 0.0, 0.0])  # OpenCV k1, k2, p1, p2, k3: strong barrel distortion
OUT_SHAPE = (480, 640)
OUT_FOV_DEGREES = 105.0
TURN = geometry.axis_rotation('Y', np.radians(-40.0)) @ geometry.axis_rotation('X', np.radians(27.0))
FRAMES = 4


def distorted_frames():
    """[(image uint8 [H, W, 3], K [3, 3], true joints [J, 3] mm in the camera frame, true distorted 2D [J, 2] px,
    box [1, 4] px)] of h36m_17."""
    spec = [s for s in synth.preset_specs('default', crop_size=128) if s.name == 'h36m_like'][0]
    spec = dataclasses.replace(spec, appearance=dataclasses.replace(spec.appearance, noise_std=0.0))
    motion = synth.PreparedMotion(synth.load_motion_splits(None, seed=0, max_frames_per_clip=30).test)
    k_out = geometry.fov_intrinsics(OUT_FOV_DEGREES, *OUT_SHAPE)
    lens = geometry.Camera(intrinsic_matrix=k_out, distortion_coeffs=DISTORTION)
    pixels = np.stack(np.meshgrid(np.arange(OUT_SHAPE[1], dtype=np.float64),
                                  np.arange(OUT_SHAPE[0], dtype=np.float64)), -1)
    rays = lens.image_to_camera(pixels, 1.0) @ TURN  # each output pixel's ray in the source camera's frame
    frames = []
    for index in range(FRAMES):
        source = synth.render_full_frame(spec, motion, 'test', index, image_shape=OUT_SHAPE)
        uv = rays @ source['intrinsics'].T
        uv = (uv[..., :2] / uv[..., 2:]).astype(np.float32)
        image = cv2.remap(source['image'], uv[..., 0], uv[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        truth = (source['joints3d'] @ source['rotation'].T + source['translation']) @ TURN.T
        truth2d = lens.camera_to_image(truth)
        low, high = truth2d.min(0), truth2d.max(0)
        box = np.concatenate([low - 0.15 * (high - low), 1.3 * (high - low)])[np.newaxis].astype(np.float32)
        assert np.all(low > 0) and np.all(high < OUT_SHAPE[::-1]), 'the person must be inside the frame'
        frames.append((image, k_out.astype(np.float32), truth, truth2d, box))
    return frames


def direction_error_degrees(pred, truth):
    """Mean angle (degrees) between the camera rays of predicted and true joints ([J, 3] mm)."""
    cos = np.sum(pred * truth, -1) / np.linalg.norm(pred, axis=-1) / np.linalg.norm(truth, axis=-1)
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))).mean())


@pytest.fixture(scope='module')
def smoke_model(metrabs_smoke_run):
    return tf.saved_model.load(str(metrabs_smoke_run[0] / 'saved_model'))


def test_distortion_coeffs_bring_poses_closer_to_the_truth(smoke_model):
    frames = distorted_frames()
    # The person is near the corner, where the lens moves image points by tens of pixels.
    image, k, truth, truth2d, _ = frames[0]
    pinhole = geometry.Camera(intrinsic_matrix=k.astype(np.float64)).camera_to_image(truth)
    assert np.linalg.norm(pinhole - truth2d, axis=-1).mean() > 30.0
    errors = {'with': [], 'without': []}
    errors_2d, errors_2d_pinhole = [], []
    for image, k, truth, truth2d, box in frames:
        for name, extra in (('with', {'distortion_coeffs': DISTORTION.astype(np.float32)}), ('without', {})):
            out = smoke_model.estimate_poses(image, box, k, skeleton='h36m_17', **extra)
            poses3d = out['poses3d'].numpy()[0].astype(np.float64)
            errors[name].append(direction_error_degrees(poses3d, truth))
            if name == 'with':
                poses2d = out['poses2d'].numpy()[0]
                errors_2d.append(np.linalg.norm(poses2d - truth2d, axis=-1).mean())
                pinhole2d = geometry.Camera(intrinsic_matrix=k.astype(np.float64)).camera_to_image(poses3d)
                errors_2d_pinhole.append(np.linalg.norm(pinhole2d - truth2d, axis=-1).mean())
    # 3D: the joints' directions are closer to the truth with the lens model than without it.
    assert np.mean(errors['with']) < np.mean(errors['without']), errors
    # 2D: poses2d is the distorted projection, which lands nearer the distorted joints than the pinhole
    # projection of the same poses would.
    assert np.mean(errors_2d) < np.mean(errors_2d_pinhole), (errors_2d, errors_2d_pinhole)
