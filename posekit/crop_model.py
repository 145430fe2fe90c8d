"""The raw crop model: network crops + crop intrinsics -> camera-frame poses, as a converter-friendly graph.

:func:`make_crop_function` wraps a trained :class:`posekit.models.metrabs.Metrabs` into a ``tf.function``
with a fixed input signature and nothing but the network and the absolute reconstruction in it (no
image warping, no test-time augmentation, no skeleton selection). It is the part of the pose estimator
worth running in another runtime (TFLite/LiteRT, ONNX Runtime; :mod:`posekit.convert`); the caller
does the cropping (``posekit.geometry.crop_camera`` + ``posekit.export.make_crops``, or its own).

Interface (also the ``crop_model`` signature of :func:`posekit.export.export_model`)::

    crop_fn = make_crop_function(model, crop_size=256)
    out = crop_fn(images=crops, intrinsics=crop_k)
    out['poses3d']   # float32 [B, J_all, 3] mm, camera frame of each crop (x right, y down, z forward)

- ``images``: float32 [B, S, S, 3], RGB in [0, 1] (the export divides uint8 crops by 255). float32
  rather than uint8 because crops are produced by bilinear warping (fractional values; uint8 would
  round them) and because it is the network's own input type: converters then add no cast/scale op,
  and the reduced-precision TFLite variant keeps float inputs.
- ``intrinsics``: float32 [B, 3, 3], the crop camera's K in px (principal point near S/2).
- ``poses3d``: all ``J_all`` joints of the model's joint space in one tensor (one output is simplest for
  ONNX/TFLite output naming); the joints of one skeleton are ``poses3d[:, start:stop]`` with
  ``(start, stop)`` from :func:`skeleton_index_table` (``JointSpace.slices``).
  The float32 reconstruction (``reconstruct_absolute``) keeps the graph free of float64, matrix
  inverses and cross products, which TFLite builtins and ONNX lack.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from posekit.skeletons import JointSpace


def _tf_variable(variable):
    """The tf.Variable behind a Keras 3 variable (TensorFlow backend), or ``variable`` itself."""
    value = getattr(variable, 'value', None)
    return value if isinstance(value, tf.Variable) else variable


def crop_input_signature(crop_size):
    """The ``[images, intrinsics]`` TensorSpecs of the crop function (batch dimension dynamic)."""
    return [tf.TensorSpec([None, crop_size, crop_size, 3], tf.float32, name='images'),
            tf.TensorSpec([None, 3, 3], tf.float32, name='intrinsics')]


def make_crop_function(model, crop_size):
    """A ``tf.function`` (images, intrinsics) -> dict(poses3d) over ``model`` (see the module docstring).

    Args:
      model: a built ``posekit.models.metrabs.Metrabs`` (any dtype policy: the output is cast to
        float32).
      crop_size: int, side of the square input crop (px), normally the backbone's input size.

    Returns:
      a ``tf.function`` with input signature ``crop_input_signature(crop_size)``: images float32
      [B, S, S, 3] in [0, 1], intrinsics float32 [B, 3, 3] px -> ``{'poses3d': float32 [B, J_all, 3]}``
      mm in the crop camera frame.

    Raises:
      ValueError: for a crop size that is not a positive int, or a model without ``n_joints``.
    """
    if isinstance(crop_size, bool) or not isinstance(crop_size, (int, np.integer)) or crop_size < 1:
        raise ValueError(f'crop_size must be a positive int; received crop_size={crop_size!r}')
    if not isinstance(getattr(model, 'n_joints', None), int):
        raise ValueError(f'model must be a built posekit Metrabs model (with n_joints); received model={model!r}')
    crop_size = int(crop_size)
    n_joints = model.n_joints

    @tf.function(input_signature=crop_input_signature(crop_size))
    def crop_model(images, intrinsics):
        outputs = model(images, intrinsics, training=False)
        poses3d = tf.cast(outputs['coords3d_abs'], tf.float32)
        poses3d.set_shape([None, n_joints, 3])
        return {'poses3d': poses3d}

    return crop_model


class CropModule(tf.Module):
    """A tf.Module holding the model's tf.Variables and its crop function (``self.crop_model``).

    Saving it (:func:`save_crop_model`) or handing it to ``tf.lite.TFLiteConverter.
    from_concrete_functions`` as the trackable object gives the converter the real tf.Variables: Keras 3
    variables there silently produce a TFLite model without weights (NaN outputs).
    """

    def __init__(self, model, crop_size, name='crop_model'):
        super().__init__(name=name)
        self._model_variables = [_tf_variable(v) for v in model.variables]
        self.crop_model = make_crop_function(model, crop_size)
        self.crop_size = tf.Variable(int(crop_size), dtype=tf.int32, trainable=False, name='crop_size')


def skeleton_index_table(joint_space):
    """``{skeleton: (start, stop)}``: the joints of each skeleton in the crop model's ``poses3d``."""
    if not isinstance(joint_space, JointSpace):
        raise ValueError(f'joint_space must be a posekit.skeletons.JointSpace; received joint_space={joint_space!r}')
    return {f: (joint_space.slices[f].start, joint_space.slices[f].stop) for f in joint_space.formats}


def save_crop_model(model, crop_size, out_dir):
    """Writes only the crop model as a SavedModel (signatures ``serving_default`` and ``crop_model``).

    Returns ``out_dir``. The full pose estimator (:func:`posekit.export.export_model`) has the same
    ``crop_model`` signature, so :mod:`posekit.convert` accepts either.
    """
    module = CropModule(model, crop_size)
    concrete = module.crop_model.get_concrete_function()
    out_dir = str(out_dir)
    tf.saved_model.save(module, out_dir, signatures={'serving_default': concrete, 'crop_model': concrete})
    return out_dir
