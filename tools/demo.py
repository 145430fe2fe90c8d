"""Demo: 3D human poses in one image with an exported posekit SavedModel.

Usage::

    python -m tools.demo IMAGE --model DIR --boxes x,y,w,h [--boxes x,y,w,h ...] \\
        [--skeleton h36m_17] [--out demo.png] [--fov DEGREES] [--num-aug 1] [--view-size 480]

``DIR`` is a SavedModel written by :func:`posekit.export.export_model` (e.g. ``<--out>/saved_model`` of
``python -m experiments.metrabs_acae``); it is loaded with ``tf.saved_model.load`` alone, so this script
needs TensorFlow, OpenCV and matplotlib but not posekit. Each ``--boxes`` is one person box in pixels of
the image (x, y of the top-left corner, width, height). ``--fov`` sets the camera's field of view along
the larger image side (degrees; default: the model's default camera, 55 degrees).

The PNG shows, on the left, the image at its own resolution with each person's 2D skeleton
(``poses2d``: the projection of the 3D pose) overlaid -- left-side bones and joints in
``LEFT_COLOUR``, right side in ``RIGHT_COLOUR``, centre in ``CENTRE_COLOUR``, boxes in ``BOX_COLOUR`` --
and, on the right, a ``--view-size`` px square 3D view of ``poses3d`` (mm, camera frame: x right,
depth away from the viewer, up = -y). The canvas is ``max(H, view_size)`` px high and
``W + view_size`` px wide, white where nothing is drawn; image pixel (x, y) is canvas pixel (x, y).
"""
from __future__ import annotations

import math
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np
from absl import flags

from posekit import geometry, skeletons
from tools import _cli

#: Colours (RGB) of the overlay.
LEFT_COLOUR = (230, 40, 40)
RIGHT_COLOUR = (40, 90, 230)
CENTRE_COLOUR = (30, 170, 60)
BOX_COLOUR = (250, 200, 0)
BACKGROUND = (255, 255, 255)
#: Joint marker radius and line width as fractions of the image's smaller side (at least MIN_* px).
JOINT_RADIUS_FRACTION = 0.008
LINE_WIDTH_FRACTION = 0.004
MIN_JOINT_RADIUS_PX = 2
MIN_LINE_WIDTH_PX = 1
MM_PER_M = 1000.0
#: Default side of the 3D view (px).
DEFAULT_VIEW_SIZE = 480
#: Dots per inch of the matplotlib figure (the view size in px is exact whatever the dpi).
VIEW_DPI = 100
#: Sub-pixel precision (bits) of the OpenCV drawing calls.
_SHIFT_BITS = 4


def parse_box(text):
    """'x,y,w,h' (px) -> tuple of 4 floats; :class:`tools._cli.UsageError` otherwise."""
    try:
        values = tuple(float(v) for v in text.split(','))
    except ValueError:
        values = ()
    if len(values) != 4 or not all(math.isfinite(v) for v in values) or values[2] <= 0 or values[3] <= 0:
        raise _cli.UsageError(f'a box is x,y,w,h in px with positive w and h; received {text!r}')
    return values


def _colour(side):
    return {-1: LEFT_COLOUR, 1: RIGHT_COLOUR}.get(int(side), CENTRE_COLOUR)


def _bone_side(sides, i, j):
    return sides[i] if sides[i] == sides[j] else 0


def draw_skeletons(image, poses2d, edges, sides, boxes=()):
    """The image (uint8 [H, W, 3], RGB) with boxes, bones and joints drawn (a new array).

    Args:
      image: uint8 [H, W, 3] RGB.
      poses2d: [N, J, 2] px.
      edges: [E, 2] joint index pairs.
      sides: [J] -1/0/+1 (:func:`posekit.skeletons.joint_sides`).
      boxes: [N, 4] x, y, w, h px (drawn first, thin).
    """
    import cv2
    canvas = np.ascontiguousarray(image, np.uint8).copy()
    scale = 1 << _SHIFT_BITS
    short = min(canvas.shape[:2])
    radius = max(MIN_JOINT_RADIUS_PX, int(round(JOINT_RADIUS_FRACTION * short)))
    width = max(MIN_LINE_WIDTH_PX, int(round(LINE_WIDTH_FRACTION * short)))

    def point(p):
        return tuple(int(round(v * scale)) for v in p)

    for x, y, w, h in boxes:
        cv2.rectangle(canvas, point((x, y)), point((x + w, y + h)), BOX_COLOUR, 1, cv2.LINE_AA, _SHIFT_BITS)
    for pose in np.asarray(poses2d, np.float64):
        finite = np.all(np.isfinite(pose), axis=-1)
        for i, j in np.asarray(edges, np.int64).reshape(-1, 2):
            if finite[i] and finite[j]:
                cv2.line(canvas, point(pose[i]), point(pose[j]), _colour(_bone_side(sides, i, j)), width,
                         cv2.LINE_AA, _SHIFT_BITS)
        for k in np.argsort(np.abs(sides), kind='stable')[::-1]:  # centre joints last: on top
            if finite[k]:
                cv2.circle(canvas, point(pose[k]), radius * scale, _colour(sides[k]), cv2.FILLED, cv2.LINE_8,
                           _SHIFT_BITS)  # crisp: the joint pixels have exactly the joint colour
    return canvas


def render_3d(poses3d, edges, sides, size=DEFAULT_VIEW_SIZE):
    """uint8 [size, size, 3] RGB matplotlib (Agg) view of poses [N, J, 3] (mm, camera frame)."""
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure = Figure(figsize=(size / VIEW_DPI, size / VIEW_DPI), dpi=VIEW_DPI)
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot(projection='3d')
    poses = np.asarray(poses3d, np.float64)
    # Plot axes: x right, camera depth z away from the viewer, up = -y.
    shown = np.stack([poses[..., 0], poses[..., 2], -poses[..., 1]], axis=-1)
    for pose in shown:
        for i, j in np.asarray(edges, np.int64).reshape(-1, 2):
            colour = np.array(_colour(_bone_side(sides, i, j))) / 255.0
            axes.plot(*zip(pose[i], pose[j]), color=colour, linewidth=2)
        axes.scatter(*pose.T, c=[np.array(_colour(s)) / 255.0 for s in sides], s=8, depthshade=False)
    finite = shown[np.all(np.isfinite(shown), axis=-1)]
    if len(finite):
        centre = (finite.min(axis=0) + finite.max(axis=0)) / 2
        half = max(float(np.max(finite.max(axis=0) - finite.min(axis=0))) / 2, 1.0)
        for setter, c in zip((axes.set_xlim, axes.set_ylim, axes.set_zlim), centre):
            setter(c - half, c + half)
    axes.set_box_aspect((1, 1, 1))
    axes.set_xlabel('x (mm)')
    axes.set_ylabel('depth z (mm)')
    axes.set_zlabel('up -y (mm)')
    axes.view_init(elev=10, azim=-80)
    axes.set_title('3D poses, camera frame')
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return np.ascontiguousarray(rgba[..., :3])


def compose(overlay, view):
    """Canvas [max(H, S), W + S, 3]: ``overlay`` [H, W, 3] at the top left, ``view`` [S, S, 3] right of it."""
    height = max(overlay.shape[0], view.shape[0])
    canvas = np.empty((height, overlay.shape[1] + view.shape[1], 3), np.uint8)
    canvas[...] = BACKGROUND
    canvas[:overlay.shape[0], :overlay.shape[1]] = overlay
    canvas[:view.shape[0], overlay.shape[1]:] = view
    return canvas


def define_flags(fv):
    flags.DEFINE_string('model', None, 'SavedModel directory written by posekit.export', flag_values=fv)
    flags.DEFINE_multi_string('boxes', [], 'a person box x,y,w,h in px (repeat for several people)', flag_values=fv)
    flags.DEFINE_string('skeleton', None, "skeleton format (default: the model's default)", flag_values=fv)
    flags.DEFINE_string('out', 'demo.png', 'output PNG path', flag_values=fv)
    flags.DEFINE_float('fov', None, "field of view along the larger image side, degrees (default: the model's)",
                       flag_values=fv)
    flags.DEFINE_integer('num-aug', 1, 'test-time augmentations (>= 1)', flag_values=fv)
    flags.DEFINE_integer('view-size', DEFAULT_VIEW_SIZE, 'side of the 3D view, px', flag_values=fv)


def main(argv=None):
    """Runs the demo (``IMAGE --model DIR --boxes x,y,w,h ...``); returns the dict of the model's outputs as numpy
    arrays (also writes ``--out``). A bad command line raises :class:`tools._cli.UsageError`."""
    args, rest = _cli.parse(define_flags, argv, 'demo', required=('model', 'boxes'), positional=(1, 1))
    args.image = rest[0]
    boxes_in = [parse_box(text) for text in args.boxes]
    if args.num_aug < 1:
        raise _cli.UsageError(f'--num-aug must be >= 1; received {args.num_aug}')
    if args.view_size < 32:
        raise _cli.UsageError(f'--view-size must be >= 32 px; received {args.view_size}')
    if args.fov is not None and not 0 < args.fov < 180:
        raise _cli.UsageError(f'--fov must be in (0, 180) degrees; received {args.fov}')
    import cv2
    bgr = cv2.imread(args.image, cv2.IMREAD_COLOR)
    if bgr is None:
        raise _cli.UsageError(f'cannot read the image {args.image!r}')
    image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    import tensorflow as tf
    try:
        model = tf.saved_model.load(args.model)
    except (OSError, ValueError) as error:
        raise _cli.UsageError(f'cannot load a SavedModel from --model {args.model!r}: {error}') from None
    known = [s.decode() for s in model.skeletons.numpy()]
    skeleton = args.skeleton or model.default_skeleton.numpy().decode()
    if skeleton not in known:
        raise _cli.UsageError(f'--skeleton must be one of {known}; received {skeleton!r}')
    boxes = np.array(boxes_in, np.float32)
    kwargs = dict(skeleton=skeleton, num_aug=args.num_aug)
    if args.fov is not None:
        kwargs['intrinsic_matrix'] = geometry.fov_intrinsics(args.fov, *image.shape[:2]).astype(np.float32)
    result = {k: v.numpy() for k, v in model.estimate_poses(image, boxes, **kwargs).items()}
    edges = model.per_skeleton_joint_edges[skeleton].numpy()
    sides = skeletons.joint_sides([n.decode() for n in model.per_skeleton_joint_names[skeleton].numpy()])

    overlay = draw_skeletons(image, result['poses2d'], edges, sides, boxes)
    view = render_3d(result['poses3d'], edges, sides, args.view_size)
    canvas = compose(overlay, view)
    if not cv2.imwrite(args.out, cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR)):
        raise _cli.UsageError(f'cannot write --out {args.out!r}')
    depths = ', '.join(f'{np.median(p[:, 2]) / MM_PER_M:.2f} m' for p in result['poses3d'])
    print(f'{len(boxes)} person(s), skeleton {skeleton}, median depth {depths}; wrote {args.out} '
          f'({canvas.shape[1]}x{canvas.shape[0]} px)')
    return result


if __name__ == '__main__':
    _cli.run(lambda argv: main(argv) and 0, 'demo')
