"""Converts the crop model of a posekit SavedModel to TFLite/LiteRT and ONNX (``posekit.convert``).

Usage::

    python -m tools.convert --saved-model out/saved_model --out out/converted
    python -m tools.convert --saved-model out/saved_model --out out/converted --formats tflite_float32,onnx

The SavedModel is one written by ``posekit.export.export_model`` (or ``posekit.crop_model.save_crop_model``);
its ``crop_model`` signature (crops float32 [B, S, S, 3] in [0, 1] + crop intrinsics [B, 3, 3] px ->
``poses3d`` [B, J_all, 3] mm) is converted. Formats: tflite_float32, tflite_float16,
tflite_dynamic_range, onnx (needs ``pip install 'posekit[convert]'``). With ``--check``, each file is run
on random crops and its largest difference from the SavedModel (mm) is printed.
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
    flags.DEFINE_boolean('check', True, 'run each converted file on random crops and compare (mm)', flag_values=fv)


def check(saved_model_dir, paths, batch=4, seed=0):
    """``{format: max abs difference (mm)}`` of each converted file from the SavedModel on random crops."""
    import tensorflow as tf
    from posekit import convert
    _, signature = convert.load_crop_signature(saved_model_dir)
    size = signature.structured_input_signature[1]['images'].shape[1]
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 1, (batch, size, size, 3)).astype(np.float32)
    k = np.tile(np.array([[2.0 * size, 0, size / 2], [0, 2.0 * size, size / 2], [0, 0, 1]], np.float32), [batch, 1, 1])
    reference = signature(images=tf.constant(images), intrinsics=tf.constant(k))['poses3d'].numpy()
    runners = {'onnx': convert.run_onnx}
    return {fmt: float(np.abs(runners.get(fmt, convert.run_tflite)(path, images, k) - reference).max())
            for fmt, path in paths.items()}


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
    differences = check(args.saved_model, paths) if args.check else {}
    for fmt, path in paths.items():
        extra = f'  max |diff| vs SavedModel on random crops: {differences[fmt]:.4f} mm' if fmt in differences else ''
        print(f'{fmt}: {path} ({os.path.getsize(path) / 1e6:.2f} MB){extra}')
    return 0


if __name__ == '__main__':
    _cli.run(main, 'convert')
