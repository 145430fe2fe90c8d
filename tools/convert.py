"""Converts the crop model of a posekit SavedModel to TFLite/LiteRT and ONNX (``posekit.convert``).

Usage::

    python -m tools.convert --saved-model out/saved_model --out out/converted
    python -m tools.convert --saved-model out/saved_model --out out/converted --formats tflite_float32,onnx

The SavedModel is one written by ``posekit.export.export_model`` (or ``posekit.crop_model.save_crop_model``);
its ``crop_model`` signature (crops float32 [B, S, S, 3] in [0, 1] + crop intrinsics [B, 3, 3] px ->
``poses3d`` [B, J_all, 3] mm) is converted. Formats: tflite_float32, tflite_float16,
tflite_dynamic_range, onnx (needs ``pip install 'posekit[convert]'``). With ``--check`` (default), each file is
run on people rendered by ``posekit.data.synth`` (``--check-crops``, ``--mocap-dir``) and its largest coordinate
difference and mean per-joint distance from the SavedModel (mm) are printed.
"""
from __future__ import annotations

import os
import sys

import numpy as np
from absl import flags

from tools import _cli


def define_flags(fv):
    flags.DEFINE_string('saved-model', None, 'SavedModel directory with a crop_model signature', flag_values=fv)
    flags.DEFINE_string('out', None, 'output directory for the converted files', flag_values=fv)
    flags.DEFINE_list('formats', ['tflite_float32', 'tflite_float16', 'onnx'],
                      'comma-separated: tflite_float32, tflite_float16, tflite_dynamic_range, onnx', flag_values=fv)
    flags.DEFINE_boolean('check', True, 'run each converted file on rendered people and compare (mm)', flag_values=fv)
    flags.DEFINE_integer('check-crops', 16, 'rendered crops per check', lower_bound=1, flag_values=fv)
    flags.DEFINE_string('mocap-dir', None, 'BVH folder whose motion the check crops show (default: procedural motion)',
                        flag_values=fv)


def check_crops(size, n, mocap_dir=None, seed=0):
    """``n`` people rendered by ``posekit.data.synth`` (h36m_like, ``size`` px): images float32 [n, S, S, 3] in
    [0, 1] and their crop intrinsics float32 [n, 3, 3] px. Realistic crops: random noise would leave the
    network's heatmaps flat and hide depth-scaled conversion errors."""
    from posekit.data import synth
    splits = synth.load_motion_splits(mocap_dir, seed=seed, max_frames_per_clip=300)
    motion = synth.PreparedMotion(splits.test)
    spec = synth.preset_specs('default', ['h36m_like'], crop_size=size)[0]
    examples = [synth.render_example(spec, motion, 'test', i, seed=seed) for i in range(n)]
    return (np.stack([ex['image'] for ex in examples]).astype(np.float32) / 255.0,
            np.stack([ex['intrinsics'] for ex in examples]))


def check(saved_model_dir, paths, n_crops=16, mocap_dir=None, seed=0, batch=16):
    """``{format: (max abs coordinate difference, mean per-joint distance)}`` (mm) of each converted file from
    the SavedModel's crop model on rendered people (:func:`check_crops`)."""
    import tensorflow as tf
    from posekit import convert
    _, signature = convert.load_crop_signature(saved_model_dir)
    size = signature.structured_input_signature[1]['images'].shape[1]
    images, k = check_crops(size, n_crops, mocap_dir, seed)
    chunks = range(0, n_crops, batch)
    reference = np.concatenate([signature(images=tf.constant(images[i:i + batch]),
                                          intrinsics=tf.constant(k[i:i + batch]))['poses3d'].numpy() for i in chunks])
    runners = {'onnx': convert.OnnxRunner}
    differences = {}
    for fmt, path in paths.items():
        run = runners.get(fmt, convert.TFLiteRunner)(path)  # loaded once, run on every chunk
        got = np.concatenate([run(images[i:i + batch], k[i:i + batch]) for i in chunks])
        differences[fmt] = (float(np.abs(got - reference).max()),
                            float(np.linalg.norm(got - reference, axis=-1).mean()))
    return differences


def main(argv=None):
    args, _ = _cli.parse(define_flags, argv, 'convert', required=('saved-model', 'out'))
    from posekit import convert
    unknown = [f for f in args.formats if f not in convert.FORMATS]
    if unknown or not args.formats:
        raise _cli.UsageError(f'--formats must be a non-empty subset of {",".join(convert.FORMATS)}, got '
                              f'{",".join(args.formats)}')
    try:
        paths = convert.convert(args.saved_model, args.out, args.formats)
    except (ValueError, ImportError, OSError, RuntimeError) as e:
        print(f'convert: error: {e}', file=sys.stderr)
        return _cli.EXIT_USER_ERROR
    differences = check(args.saved_model, paths, args.check_crops, args.mocap_dir) if args.check else {}
    for fmt, path in paths.items():
        extra = ''
        if fmt in differences:
            extra = (f'  vs the SavedModel on {args.check_crops} rendered people: max |diff| '
                     f'{differences[fmt][0]:.4f} mm, mean joint distance {differences[fmt][1]:.4f} mm')
        print(f'{fmt}: {path} ({os.path.getsize(path) / 1e6:.2f} MB){extra}')
    return 0


if __name__ == '__main__':
    _cli.run(main, 'convert')
