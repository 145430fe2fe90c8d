"""Evaluates an exported SavedModel on a real dataset's split (full images with the dataset's cameras).

Usage::

    python -m tools.evaluate --model runs/demo/saved_model --adapter h36m --root /data/h36m --split test
    python -m tools.evaluate --model runs/demo/saved_model --adapter mpi_inf_3dhp --root /data/3dhp --split test \\
        --out results/3dhp_test.json
    python -m tools.evaluate --model runs/demo/saved_model --index indices/coco_val.h5

For every example the model's ``estimate_poses`` gets the image, the person box and the camera's intrinsics (and
its distortion coefficients when the exported model accepts them); its ``poses3d`` (camera frame, mm) are compared
with the dataset's 3D labels moved into the camera frame with the dataset's extrinsics, and its ``poses2d`` with
the 2D labels. Metrics (:mod:`posekit.eval.metrics`, over the labelled joints):

- 3D (datasets with 3D labels): MPJPE and PA-MPJPE (root-relative, root = pelvis), PCK@100 mm, absolute MPJPE;
- 2D (every dataset): PCK@0.1 (fraction of joints within 10 % of the box's larger side of their label) and the
  mean 2D error in px.

The model must predict the dataset's skeleton, or one that contains all its joint names (COCO's ``coco_17`` from a
model's ``coco_19``); otherwise the joints shared by name with the best-covering skeleton are evaluated (stated in
the output). The summary is printed as JSON (and written to ``--out``). User errors: one line, exit status 2.
"""
from __future__ import annotations

import json
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import flags  # noqa: E402

import numpy as np  # noqa: E402

from tools import _cli  # noqa: E402

def define_flags(fv):
    flags.DEFINE_string('model', None, 'SavedModel directory written by posekit.export.', flag_values=fv)
    flags.DEFINE_string('adapter', None, 'Dataset adapter (posekit.data.adapters.names()); or give --index.',
                        flag_values=fv)
    flags.DEFINE_string('root', None, 'Dataset root (for manifest: the manifest file).', flag_values=fv)
    flags.DEFINE_string('split', 'test', "Split of the dataset (the adapter's official split names).", flag_values=fv)
    flags.DEFINE_string('index', None, 'An index file (tools.make_index) instead of --adapter/--root/--split.',
                        flag_values=fv)
    flags.DEFINE_multi_string('option', [], 'Adapter option key=value (repeatable).', flag_values=fv)
    flags.DEFINE_integer('num_aug', 1, 'Test-time augmentations of estimate_poses.', lower_bound=1, flag_values=fv)
    flags.DEFINE_string('out', None, 'Write the summary JSON here too.', flag_values=fv)


PCK3D_THRESHOLD_MM = 100.0
PCK2D_BOX_FRACTION = 0.1
ROOT_JOINT = 'pelv'


def skeleton_mapping(dataset_names, model_skeletons):
    """(model skeleton, [J] index of each dataset joint in it or -1, fully covered?) of the best skeleton."""
    best = None
    for skeleton, names in model_skeletons.items():
        index = [names.index(n) if n in names else -1 for n in dataset_names]
        covered = sum(i >= 0 for i in index)
        if best is None or covered > best[2]:
            best = (skeleton, index, covered)
    if best is None or best[2] == 0:
        raise ValueError(f'the model predicts none of the joints {list(dataset_names)}')
    return best[0], np.array(best[1]), best[2] == len(dataset_names)


def _root_relative(poses, names):
    root = names.index(ROOT_JOINT) if ROOT_JOINT in names else 0
    return poses - poses[:, root:root + 1]


def evaluate(model, source, num_aug: int = 1, log=None) -> dict:
    """Runs ``model.estimate_poses`` on every example of ``source`` (an index or adapter examples) -> summary."""
    import tensorflow as tf
    from posekit import skeletons
    from posekit.eval import metrics

    model_skeletons = {s.decode(): [n.decode() for n in model.per_skeleton_joint_names[s.decode()].numpy()]
                       for s in model.skeletons.numpy()}
    n = len(source)
    data = source.get(np.arange(n))
    skeleton_name = str(data['skeleton'][0])
    names = list(skeletons.get(skeleton_name).names)
    model_skeleton, index, complete = skeleton_mapping(names, model_skeletons)
    evaluated = index >= 0
    pred3d, pred2d, distortion_used = [], [], True
    for i in range(n):
        encoded = data['image_bytes'][i] or open(os.path.join(source.root, str(data['image_path'][i])), 'rb').read()
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        kwargs = dict(intrinsic_matrix=tf.constant(data['intrinsics'][i], tf.float32), skeleton=model_skeleton,
                      num_aug=num_aug)
        box = tf.constant(data['box'][i][None], tf.float32)
        if np.any(data['distortion'][i] != 0) and distortion_used:
            try:
                out = model.estimate_poses(image, box, distortion_coeffs=tf.constant(data['distortion'][i],
                                                                                     tf.float32), **kwargs)
            except (TypeError, ValueError):
                distortion_used = False
                out = model.estimate_poses(image, box, **kwargs)
        else:
            out = model.estimate_poses(image, box, **kwargs)
        pred3d.append(out['poses3d'].numpy()[0][np.maximum(index, 0)])
        pred2d.append(out['poses2d'].numpy()[0][np.maximum(index, 0)])
        if log is not None and (i + 1) % 50 == 0:
            log(f'{i + 1}/{n} examples')
    pred3d, pred2d = np.array(pred3d, np.float64), np.array(pred2d, np.float64)
    valid = data['joint_valid'] & evaluated[None]
    summary = dict(dataset=str(data['dataset'][0]), skeleton=skeleton_name, model_skeleton=model_skeleton,
                   evaluated_joints=[nm for nm, e in zip(names, evaluated) if e], complete=bool(complete),
                   n_examples=n, num_aug=num_aug, distortion_used=bool(distortion_used and np.any(data['distortion'])))
    is_3d = data['is_3d'].astype(bool)
    if is_3d.any():
        world = data['joints3d'][is_3d].astype(np.float64)
        camera = np.einsum('nij,nkj->nki', data['rotation'][is_3d], world) + data['translation'][is_3d][:, None]
        mask = valid[is_3d]
        p, g = pred3d[is_3d], camera
        rel_p, rel_g = _root_relative(p, names), _root_relative(g, names)
        summary.update(
            n_3d=int(is_3d.sum()),
            mpjpe_mm=float(np.mean(metrics.mpjpe(rel_p, rel_g, mask))),
            pa_mpjpe_mm=float(np.mean(metrics.pa_mpjpe(rel_p, rel_g, mask))),
            pck_at_100mm=float(np.mean(metrics.pck(rel_p, rel_g, PCK3D_THRESHOLD_MM, mask))),
            abs_mpjpe_mm=float(np.mean(metrics.mpjpe(p, g, mask))))
    labels2d = data['joints2d'].astype(np.float64)
    has2d = valid & np.isfinite(labels2d).all(axis=-1)
    error = np.linalg.norm(pred2d - np.nan_to_num(labels2d), axis=-1)
    side = data['box'][:, 2:].max(axis=1)[:, None]
    if has2d.any():
        summary.update(pck2d_at_0_1=float(np.mean((error <= PCK2D_BOX_FRACTION * side)[has2d])),
                       error2d_px=float(np.mean(error[has2d])))
    return summary


def main(argv=None) -> int:
    try:
        args, _ = _cli.parse(define_flags, argv, 'evaluate', required=('model',))
        from posekit.data import adapters, examples
        import tensorflow as tf
        if not os.path.isdir(args.model):
            raise FileNotFoundError(f'--model {args.model!r} is not a SavedModel directory')
        if args.index:
            source = examples.open_index(args.index)
        else:
            if not args.adapter or not args.root:
                raise ValueError('give --index, or --adapter and --root')
            options = dict(o.split('=', 1) for o in args.option)
            items = adapters.load(args.adapter, args.root, args.split, **options)
            if not items:
                raise ValueError(f'adapter {args.adapter!r} found no examples of split {args.split!r}')
            source = _ListSource(items, adapters.image_root(args.adapter, args.root))
        model = tf.saved_model.load(args.model)
        summary = evaluate(model, source, args.num_aug, log=lambda m: print(m, file=sys.stderr))
    except (ValueError, KeyError, OSError) as e:
        print(f'evaluate: error: {e}', file=sys.stderr)
        return 2
    text = json.dumps(summary, indent=1)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w', encoding='utf-8') as f:
            f.write(text + '\n')
    return 0


class _ListSource:
    """Adapter examples as a source (``len``, ``get``, ``root``)."""

    def __init__(self, items, root):
        self.items, self.root = items, root

    def __len__(self):
        return len(self.items)

    def get(self, indices):
        rows = [self.items[int(i)] for i in indices]
        out = {}
        for field in rows[0]:
            values = [r[field] for r in rows]
            out[field] = np.array(values, dtype=object) if field == 'image_bytes' else np.array(values)
        return out


if __name__ == '__main__':
    _cli.run(main, 'evaluate')
