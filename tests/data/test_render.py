import numpy as np
import pytest

from posekit.data import bodies, mocap, render

SIZE = 64
K = np.array([[80.0, 0.0, (SIZE - 1) / 2], [0.0, 80.0, (SIZE - 1) / 2], [0.0, 0.0, 1.0]])


def _blank():
    return np.zeros((SIZE, SIZE, 3), np.float32), np.full((SIZE, SIZE), render.FAR_DEPTH_MM, np.float32)


def _caps(starts, ends, radii, colours):
    return render.Capsules(np.array(starts, float), np.array(ends, float), np.array(radii, float),
                           np.array(colours, np.float32))


RED, BLUE = (1.0, 0.0, 0.0), (0.0, 0.0, 1.0)


@pytest.mark.parametrize('near_first', [True, False])
def test_near_capsule_occludes_far_capsule_whatever_the_order(near_first):
    near = ([-300.0, 0, 2000], [300.0, 0, 2000], 100.0, RED)     # horizontal, 2 m away
    far = ([0.0, -400, 3000], [0.0, 400, 3000], 150.0, BLUE)      # vertical, 3 m away, behind it
    parts = [near, far] if near_first else [far, near]
    caps = _caps(*zip(*parts))
    image, depth = _blank()
    drawn = render.draw_capsules(image, depth, K, caps, light_dir=(0, 0, -1), ambient=1.0, diffuse=0.0,
                                 up_dir=(0, 0, -1))
    c = SIZE // 2
    # The crossing pixel shows the near capsule at its front surface depth (2000 - 100 mm).
    assert image[c, c, 0] > 0.5 and image[c, c, 2] == 0.0
    assert depth[c, c] == pytest.approx(1900.0, abs=2.0)
    # Above the horizontal capsule, the vertical one is visible.
    assert image[c - 15, c, 2] > 0.5 and image[c - 15, c, 0] == 0.0
    assert drawn[c, c] and not drawn[0, 0]


def test_sphere_silhouette_and_depth_are_exact():
    z, r = 2000.0, 200.0
    image, depth = _blank()
    render.draw_capsules(image, depth, K, _caps([[0, 0, z]], [[0, 0, z]], [r], [RED]), ambient=1.0, diffuse=0.0)
    v, u = np.mgrid[0:SIZE, 0:SIZE]
    x, y = (u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1]
    # A ray (x, y, 1) hits the sphere iff its angle to the axis is below asin(r / z).
    sin2 = (x ** 2 + y ** 2) / (1 + x ** 2 + y ** 2)
    inside = sin2 < (r / z) ** 2 - 1e-4
    outside = sin2 > (r / z) ** 2 + 1e-4
    hit = depth < render.FAR_DEPTH_MM
    assert np.all(hit[inside]) and not np.any(hit[outside])
    c = SIZE // 2
    # Depth (camera z) of the front surface along each ray: t * dz with |d| = 1.
    d = np.stack([x[c, c], y[c, c], 1.0])
    d /= np.linalg.norm(d)
    b = d @ np.array([0, 0, z])
    t = b - np.sqrt(b * b - (z * z - r * r))
    assert depth[c, c] == pytest.approx(t * d[2], rel=1e-5)


def test_existing_depth_hides_capsules_behind_it():
    image, depth = _blank()
    depth[:] = 1500.0
    drawn = render.draw_capsules(image, depth, K, _caps([[0, 0, 2000]], [[0, 0, 2000]], [300], [RED]))
    assert not drawn.any() and image.max() == 0.0


@pytest.mark.parametrize('seed', range(4))
def test_stadium_candidates_cover_every_hit(monkeypatch, seed):
    """Candidate pixels from projected stadiums give the same image as testing every pixel."""
    rng = np.random.default_rng(seed)
    n = 40
    starts = rng.uniform([-1500, -1500, 300], [1500, 1500, 4000], (n, 3))
    ends = starts + rng.normal(0, 400, (n, 3))
    caps = render.Capsules(starts, ends, rng.uniform(20, 250, n), rng.random((n, 3)).astype(np.float32))
    fast_image, fast_depth = _blank()
    render.draw_capsules(fast_image, fast_depth, K, caps)

    def every_pixel(caps_, k, shape):
        n_pix = shape[0] * shape[1]
        return np.repeat(np.arange(len(caps_)), n_pix), np.tile(np.arange(n_pix), len(caps_))
    monkeypatch.setattr(render, '_capsule_spans', every_pixel)
    slow_image, slow_depth = _blank()
    render.draw_capsules(slow_image, slow_depth, K, caps)
    np.testing.assert_array_equal(fast_depth, slow_depth)
    np.testing.assert_array_equal(fast_image, slow_image)


def test_capsule_touching_the_camera_plane_is_clipped_not_crashing():
    image, depth = _blank()
    # A rod beside the camera reaching from behind it to 3 m ahead: its near part leaves the image.
    caps = _caps([[300, 0, -500]], [[300, 0, 3000]], [100], [RED])
    drawn = render.draw_capsules(image, depth, K, caps)
    assert drawn[SIZE // 2, SIZE - 1] and drawn[SIZE // 2, SIZE // 2 + 10]
    assert not drawn[:, :SIZE // 2].any()
    assert np.all(depth[drawn] > render.NEAR_MM)


def test_floor_depth_is_the_ray_plane_intersection():
    # Camera 1.5 m above the floor (world y up) looking horizontally along +z.
    rot = np.array([[1.0, 0, 0], [0, -1.0, 0], [0, 0, 1.0]])  # camera y (down) = -world y
    center = np.array([0.0, 1500.0, 0.0])
    scene = render.Scene(kind='room', floor=np.full((8, 8, 3), 0.5, np.float32),
                         walls=np.full((4, 8, 8, 3), 0.3, np.float32), bounds=(-1e5, 1e5, -1e5, 1e5),
                         wall_height_mm=1e5)
    rgb, depth = render.render_background(scene, K, rot, center, (SIZE, SIZE))
    row = SIZE - 1
    y_norm = (row - K[1, 2]) / K[1, 1]  # camera ray (x, y, 1): the floor is at y_cam = 1500 mm
    assert depth[row, SIZE // 2] == pytest.approx(1500.0 / y_norm, rel=1e-4)
    assert rgb.shape == (SIZE, SIZE, 3) and rgb.dtype == np.float32
    # Half-resolution rendering gives nearly the same depths.
    _, depth2 = render.render_background(scene, K, rot, center, (SIZE, SIZE), subsample=2)
    assert np.median(np.abs(depth2[SIZE // 2 + 4:] - depth[SIZE // 2 + 4:]) / depth[SIZE // 2 + 4:]) < 0.05


def test_composite_background_is_a_far_picture(rng):
    bank = render.texture_bank(3)
    scene = render.Scene(kind='composite', picture=render.composite_picture(rng, bank), picture_window=(0, 0, 50))
    rgb, depth = render.render_background(scene, K, np.eye(3), np.zeros(3), (SIZE, SIZE))
    assert rgb.shape == (SIZE, SIZE, 3) and 0 <= rgb.min() and rgb.max() <= 1
    assert np.all(depth == render.FAR_DEPTH_MM)
    with pytest.raises(ValueError, match="scene.kind must be 'room' or 'composite'"):
        render.render_background(render.Scene(kind='sky'), K, np.eye(3), np.zeros(3), (SIZE, SIZE))


def test_textures_are_deterministic_and_validated(rng):
    a, b = render.texture_bank(5), render.texture_bank(5)
    assert a is b and a.shape == (24, render.TEXTURE_SIZE, render.TEXTURE_SIZE, 3)
    assert not np.array_equal(a, render.texture_bank(6))
    assert 0 <= a.min() and a.max() <= 1
    with pytest.raises(ValueError, match="kind must be one of .* got 'marble'"):
        render.make_texture(rng, 'marble')


def test_body_capsules_follow_the_landmarks(rng):
    motion = mocap.procedural_motions(n_subjects=1, clips_per_subject=1, seconds=0.2)[0].motion
    lm = bodies.landmarks(motion)[0]
    outfit = render.random_outfit(rng)
    caps = render.body_capsules(lm, outfit)
    assert len(caps) == len(render.BODY_PARTS)
    names = [p[0] for p in render.BODY_PARTS]
    idx = {n: i for i, n in enumerate(bodies.landmark_names())}
    thigh = names.index('lthigh')
    np.testing.assert_allclose(caps.end[thigh], lm[idx['lknee']])
    np.testing.assert_allclose(caps.colour[names.index('lhand')], outfit.skin)
    # Everything within the body's reach of the pelvis.
    assert np.all(np.linalg.norm(caps.start - lm[idx['pelvis']], axis=-1) < 1200)
    with pytest.raises(ValueError, match='landmarks must have shape'):
        render.body_capsules(lm[:5], outfit)


def _look_at(center, forward):
    """World->camera rotation of a camera looking along ``forward`` (horizontal) with world y up."""
    z = forward / np.linalg.norm(forward)
    y = np.array([0.0, -1.0, 0.0])
    return np.stack([np.cross(y, z), y, z])


def test_shirt_print_shows_from_the_front_and_hides_from_behind():
    motion = mocap.procedural_motions(n_subjects=1, clips_per_subject=1, seconds=0.2)[0].motion
    lm = bodies.landmarks(motion)[0]
    idx = {n: i for i, n in enumerate(bodies.landmark_names())}
    facing = lm[idx['nose']] - lm[idx['headc']]
    facing[1] = 0.0
    facing /= np.linalg.norm(facing)
    caps = render.body_capsules(lm, render.random_outfit(np.random.default_rng(0)))
    names = [p[0] for p in render.BODY_PARTS]
    colour = np.tile(np.float32([0.0, 1.0, 0.0]), (len(caps), 1))
    colour[names.index('chest_print')] = (1.0, 0.0, 0.0)  # only the print has red
    pixels = {}
    for view, sign in (('front', 1.0), ('back', -1.0)):
        centre = lm[idx['chest']] + sign * 3000.0 * facing
        rot = _look_at(centre, -sign * facing)
        to_cam = lambda p: (p - centre) @ rot.T
        cam = render.Capsules(to_cam(caps.start), to_cam(caps.end), caps.radius, colour)
        image, depth = _blank()
        render.draw_capsules(image, depth, K, cam)
        pixels[view] = int((image[..., 0] > 0).sum())
        assert (image[..., 1] > 0).sum() > 100  # the body itself is in view
    assert pixels['front'] >= 4 and pixels['back'] == 0, pixels
    # The accent contrasts with the shirt (dark on light, light on dark).
    for shirt in ([0.9, 0.9, 0.8], [0.1, 0.2, 0.1], [0.2, 0.6, 0.9]):
        assert abs(float(np.mean(render.accent_colour(shirt))) - float(np.mean(shirt))) > 0.3


def test_to_uint8_rounds_and_clips():
    out = render.to_uint8(np.array([[[-0.1, 0.5, 1.2]]], np.float32))
    np.testing.assert_array_equal(out, [[[0, 128, 255]]])
