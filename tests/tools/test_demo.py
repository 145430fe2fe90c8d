"""Tests of tools/demo.py on a tiny exported model: PNG layout, skeleton pixels where poses2d says."""

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from posekit import export, skeletons
from posekit.models.backbones import build_backbone
from posekit.models.metrabs import Metrabs
from tools import demo

CROP = 64
SPACE = skeletons.JointSpace(('h36m_17', 'coco_19'))
GREY = 128
HEIGHT, WIDTH = 120, 160
BOXES = ((20.0, 10.0, 60.0, 100.0), (90.0, 15.0, 50.0, 90.0))
VIEW = 160


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
    keras.utils.set_random_seed(1)
    backbone = build_backbone('mobile_small', input_shape=(CROP, CROP, 3), ghost_batch_size=2)
    net = Metrabs(backbone, SPACE.n_joints)
    net(tf.zeros([1, CROP, CROP, 3]), tf.eye(3)[tf.newaxis], training=False)
    return export.export_model(net, SPACE, tmp_path_factory.mktemp('demo') / 'saved_model')


@pytest.fixture
def image_path(tmp_path):
    path = tmp_path / 'grey.png'
    cv2.imwrite(str(path), np.full((HEIGHT, WIDTH, 3), GREY, np.uint8))
    return path


def segment_distance(points, a, b):
    """Distance of points [P, 2] to the segment a-b (px)."""
    ab = np.subtract(b, a)
    t = np.clip(((points - a) @ ab) / max(ab @ ab, 1e-12), 0.0, 1.0)
    return np.linalg.norm(points - (a + t[:, None] * ab), axis=-1)


def test_demo_draws_the_2d_skeletons_where_poses2d_says_and_a_3d_view(model_dir, image_path, tmp_path):
    out = tmp_path / 'demo.png'
    argv = [str(image_path), '--model', str(model_dir), '--skeleton', 'coco_19', '--out', str(out),
            '--view-size', str(VIEW)]
    for box in BOXES:
        argv += ['--boxes', ','.join(str(v) for v in box)]
    result = demo.main(argv)

    png = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)
    assert png.shape == (max(HEIGHT, VIEW), WIDTH + VIEW, 3)
    model = tf.saved_model.load(str(model_dir))  # what the demo shows is the model's output
    grey = np.full((HEIGHT, WIDTH, 3), GREY, np.uint8)
    expected = model.estimate_poses(grey, np.array(BOXES), skeleton='coco_19')
    np.testing.assert_array_equal(result['poses2d'], expected['poses2d'])
    assert result['poses2d'].shape == (2, 19, 2)

    joint_colours = {demo.LEFT_COLOUR, demo.RIGHT_COLOUR, demo.CENTRE_COLOUR}
    poses2d = result['poses2d']
    inside = [p for p in poses2d.reshape(-1, 2) if 2 <= p[0] <= WIDTH - 3 and 2 <= p[1] <= HEIGHT - 3]
    assert inside, 'the tiny model should put some joints inside the image'
    for x, y in inside:
        assert tuple(png[int(round(y)), int(round(x))]) in joint_colours

    # Pixels away from every joint, bone and box edge keep the image's grey.
    grid = np.stack(np.meshgrid(np.arange(WIDTH), np.arange(HEIGHT)), -1).reshape(-1, 2).astype(np.float64)
    distance = np.full(len(grid), np.inf)
    edges = skeletons.get('coco_19').edges
    for pose in poses2d.astype(np.float64):
        for i, j in edges:
            distance = np.minimum(distance, segment_distance(grid, pose[i], pose[j]))
    for x, y, w, h in BOXES:
        corners = [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]
        for a, b in zip(corners, corners[1:] + corners[:1]):
            distance = np.minimum(distance, segment_distance(grid, np.array(a), np.array(b)))
    far = distance > demo.MIN_JOINT_RADIUS_PX + 3
    assert far.sum() > 0.5 * len(grid)
    left = png[:HEIGHT, :WIDTH].reshape(-1, 3)
    np.testing.assert_array_equal(left[far], GREY)
    assert np.any(left[~far] != GREY)

    # The 3D view holds drawn bones of both sides; below the image the canvas is background.
    view = png[:VIEW, WIDTH:].reshape(-1, 3).astype(int)
    for colour in (demo.LEFT_COLOUR, demo.RIGHT_COLOUR):
        assert np.any(np.abs(view - colour).max(axis=1) < 40)
    np.testing.assert_array_equal(png[HEIGHT:, :WIDTH], 255)


def test_joint_sides_follow_the_name_prefixes():
    sides = skeletons.joint_sides(skeletons.get('coco_19').names)
    names = skeletons.get('coco_19').names
    assert sides[names.index('lsho')] == -1 and sides[names.index('rear')] == 1 and sides[names.index('nose')] == 0
    assert skeletons.joint_sides(['lowerback', 'lhip', 'rhip']).tolist() == [0, -1, 1]


def test_demo_bad_arguments(model_dir, image_path, tmp_path, capsys):
    with pytest.raises(demo._cli.UsageError, match="x,y,w,h in px with positive w and h; received '1,2,3'"):
        demo.parse_box('1,2,3')
    with pytest.raises(demo._cli.UsageError, match="received '1,2,0,5'"):
        demo.parse_box('1,2,0,5')
    base = ['--model', str(model_dir), '--out', str(tmp_path / 'x.png')]
    cases = [
        ([str(image_path), '--boxes', '1,2,3'] + base, 'positive w and h'),
        ([str(image_path), '--boxes', '1,2,3,4', '--skeleton', 'smpl_24'] + base,
         "--skeleton must be one of ['h36m_17', 'coco_19']; received 'smpl_24'"),
        ([str(tmp_path / 'missing.png'), '--boxes', '1,2,3,4'] + base, 'cannot read the image'),
        ([str(image_path), '--boxes', '1,2,3,4', '--num-aug', '0'] + base, '--num-aug must be >= 1'),
    ]
    for argv, message in cases:
        with pytest.raises(demo._cli.UsageError) as raised:
            demo.main(argv)
        assert message in str(raised.value)
    assert not (tmp_path / 'x.png').exists()
