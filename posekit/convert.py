"""Conversion of the crop model (SavedModel signature ``crop_model``) to TFLite/LiteRT and ONNX.

Input: a SavedModel written by :func:`posekit.export.export_model` or
:func:`posekit.crop_model.save_crop_model`; only its ``crop_model`` signature is converted
(crops float32 [B, S, S, 3] in [0, 1] + crop intrinsics float32 [B, 3, 3] px -> ``poses3d`` float32
[B, J_all, 3] mm, see :mod:`posekit.crop_model`). The warping, test-time augmentation and skeleton
selection of the full estimator stay in the caller.

Formats (:data:`FORMATS`):

- ``tflite_float32``: ``tf.lite.TFLiteConverter`` with TFLite builtin ops only (no Flex/SELECT_TF_OPS:
  the file runs in any LiteRT interpreter). Agrees with the SavedModel to ~0.01 mm.
- ``tflite_float16``: the same with float16 weights (half the size; computed in float32 on CPU).
- ``tflite_dynamic_range``: int8 weights, dynamic-range quantised matmuls/convolutions (smallest,
  least accurate).
- ``onnx``: tf2onnx 1.17.0 (the last release; it is the converter that supports TF 2.x graphs and works
  with TF 2.21 / numpy 2 / protobuf 7 here), opset 17, from the **frozen** signature graph
  (``from_graph_def``): ``from_function`` / ``keras.Model.export(format='onnx')`` would turn the
  captured Keras ``Normalization`` constants of EfficientNetV2 backbones into extra graph inputs.
  Inputs ``images``, ``intrinsics``; output ``poses3d``.

Converters are optional dependencies (``pip install 'posekit[convert]'``): a missing one raises an
ImportError naming the pip package. Never trust a converter's exit status alone: tf2onnx writes files
with unsupported ops, so :func:`to_onnx` checks the model with onnx's checker and the op list.

Runners for the converted files (:func:`run_tflite`, :func:`run_onnx`) return the same
``poses3d`` array as the SavedModel signature, for tests and benchmarks.
"""
from __future__ import annotations

import importlib
import os

import numpy as np
import tensorflow as tf

SIGNATURE = 'crop_model'
FORMATS = ('tflite_float32', 'tflite_float16', 'tflite_dynamic_range', 'onnx')
FILE_NAMES = {'tflite_float32': 'crop_model_float32.tflite', 'tflite_float16': 'crop_model_float16.tflite',
              'tflite_dynamic_range': 'crop_model_dynamic_range.tflite', 'onnx': 'crop_model.onnx'}
ONNX_OPSET = 17


def require(module_name, pip_name):
    """Imports ``module_name`` or raises ImportError naming the pip package that provides it."""
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        raise ImportError(f'{module_name} is needed for this conversion/runtime: pip install {pip_name} '
                          f"(or pip install 'posekit[convert]')") from error


def load_crop_signature(saved_model_dir):
    """(loaded SavedModel, its ``crop_model`` concrete function); ValueError naming the path otherwise."""
    path = os.fspath(saved_model_dir)
    if not tf.saved_model.contains_saved_model(path):
        raise ValueError(f'saved_model_dir must be a SavedModel directory; received saved_model_dir={path!r}')
    loaded = tf.saved_model.load(path)
    if SIGNATURE not in loaded.signatures:
        raise ValueError(f'the SavedModel at {path!r} has no {SIGNATURE!r} signature (signatures: '
                         f'{sorted(loaded.signatures)}); write it with posekit.export.export_model or '
                         f'posekit.crop_model.save_crop_model')
    return loaded, loaded.signatures[SIGNATURE]


def to_tflite(saved_model_dir, out_path, precision='float32'):
    """Converts the ``crop_model`` signature to a TFLite file (builtin ops only); returns ``out_path``.

    Args:
      saved_model_dir: SavedModel with a ``crop_model`` signature.
      out_path: ``.tflite`` file to write (parent directory created).
      precision: ``'float32'``, ``'float16'`` (float16 weights) or ``'dynamic_range'`` (int8 weights).
    """
    if precision not in ('float32', 'float16', 'dynamic_range'):
        raise ValueError(f"precision must be 'float32', 'float16' or 'dynamic_range'; received "
                         f'precision={precision!r}')
    load_crop_signature(saved_model_dir)  # clear errors for a bad path/signature
    converter = tf.lite.TFLiteConverter.from_saved_model(os.fspath(saved_model_dir), signature_keys=[SIGNATURE])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if precision != 'float32':
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if precision == 'float16':
        converter.target_spec.supported_types = [tf.float16]
    data = converter.convert()
    _write(out_path, data)
    return os.fspath(out_path)


def to_onnx(saved_model_dir, out_path, opset=ONNX_OPSET):
    """Converts the ``crop_model`` signature to ONNX with tf2onnx (frozen graph); returns ``out_path``.

    Raises:
      ImportError: tf2onnx or onnx missing (names the pip package).
      RuntimeError: the converted graph holds ops the ONNX domain lacks (tf2onnx would write it anyway).
    """
    tf2onnx = require('tf2onnx', 'tf2onnx==1.17.0')
    onnx = require('onnx', 'onnx')
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    _, signature = load_crop_signature(saved_model_dir)
    frozen = convert_variables_to_constants_v2(signature)
    input_names = [t.name for t in frozen.inputs if t.dtype != tf.resource]
    output_names = [t.name for t in frozen.outputs]
    proto, _ = tf2onnx.convert.from_graph_def(frozen.graph.as_graph_def(), input_names=input_names,
                                              output_names=output_names, opset=int(opset))
    # Public names: images, intrinsics -> poses3d (the frozen graph's are e.g. 'images:0', 'Identity:0').
    renames = {name: name.split(':')[0] for name in input_names}
    renames[output_names[0]] = 'poses3d'
    for node in proto.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for value in list(proto.graph.input) + list(proto.graph.output):
        value.name = renames.get(value.name, value.name)
    onnx.checker.check_model(proto)
    domains = {node.domain for node in proto.graph.node if node.domain not in ('', 'ai.onnx')}
    if domains:
        raise RuntimeError(f'tf2onnx left ops outside the ONNX domain in the crop model: {sorted(domains)}')
    _write(out_path, proto.SerializeToString())
    return os.fspath(out_path)


def convert(saved_model_dir, out_dir, formats=FORMATS):
    """Writes each of ``formats`` (:data:`FORMATS`) into ``out_dir``; returns ``{format: path}``."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f'formats must be a non-empty subset of {list(FORMATS)}; received formats={list(formats)}')
    load_crop_signature(saved_model_dir)
    paths = {}
    for fmt in formats:
        path = os.path.join(os.fspath(out_dir), FILE_NAMES[fmt])
        if fmt == 'onnx':
            paths[fmt] = to_onnx(saved_model_dir, path)
        else:
            paths[fmt] = to_tflite(saved_model_dir, path, precision=fmt[len('tflite_'):])
    return paths


def _write(path, data):
    path = os.fspath(path)
    parent = os.path.dirname(path)
    try:
        if parent:
            os.makedirs(parent, exist_ok=True)
        with open(path, 'wb') as f:
            f.write(data)
    except OSError as error:
        raise OSError(f'cannot write the converted model to {path!r}: {error}') from error


# ------------------------------------------------------------------------------------------- runners
class TFLiteRunner:
    """Runs a converted ``.tflite`` crop model with the LiteRT interpreter (``ai_edge_litert``)."""

    def __init__(self, path, num_threads=1):
        interpreter_lib = require('ai_edge_litert.interpreter', 'ai-edge-litert')
        self.interpreter = interpreter_lib.Interpreter(model_path=os.fspath(path), num_threads=num_threads)
        self.runner = self.interpreter.get_signature_runner(SIGNATURE)

    def __call__(self, images, intrinsics):
        """images float32 [B, S, S, 3] in [0, 1], intrinsics [B, 3, 3] px -> poses3d float32 [B, J, 3] mm."""
        out = self.runner(images=np.asarray(images, np.float32), intrinsics=np.asarray(intrinsics, np.float32))
        return out['poses3d']


class OnnxRunner:
    """Runs a converted ``.onnx`` crop model with onnxruntime (CPU)."""

    def __init__(self, path, num_threads=1):
        ort = require('onnxruntime', 'onnxruntime')
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(os.fspath(path), options, providers=['CPUExecutionProvider'])

    def __call__(self, images, intrinsics):
        """Same contract as :meth:`TFLiteRunner.__call__`."""
        return self.session.run(['poses3d'], {'images': np.asarray(images, np.float32),
                                              'intrinsics': np.asarray(intrinsics, np.float32)})[0]


def run_tflite(path, images, intrinsics, num_threads=1):
    """poses3d float32 [B, J, 3] mm from a ``.tflite`` crop model (see :class:`TFLiteRunner`)."""
    return TFLiteRunner(path, num_threads)(images, intrinsics)


def run_onnx(path, images, intrinsics, num_threads=1):
    """poses3d float32 [B, J, 3] mm from an ``.onnx`` crop model (see :class:`OnnxRunner`)."""
    return OnnxRunner(path, num_threads)(images, intrinsics)
