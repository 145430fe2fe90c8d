"""A backbone followed by a point head: crops -> 2D and camera-relative 3D points, without the absolute step.

``BackboneWithHead(backbone, head)`` is :class:`posekit.models.metrabs.Metrabs` minus the absolute
reconstruction (no intrinsics, no float64 least squares): what the MeTRAbs backbone and its heatmap head
cost per training step, as the mixed-precision study times it.
"""
from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package='posekit')
class BackboneWithHead(keras.Model):
    """Backbone features fed to a point head.

    Args:
      backbone: a built Keras model, images [B, H, W, 3] in [0, 1] -> features [B, h, w, C] (e.g.
        ``posekit.models.backbones.build_backbone()``).
      head: a Keras layer, features -> (coords2d [B, P, 2] px of the input crop, coords3d [B, P, 3] mm
        relative to the head's reference point, camera axes), e.g. ``posekit.models.metrabs.MetrabsHead``.
      **kwargs: ``keras.Model`` arguments (``name``...).

    Call: ``model(images, training=None)`` -> ``{'coords2d': [B, P, 2] px, 'coords3d_rel': [B, P, 3] mm}``
    (the head's dtypes: float32 for ``MetrabsHead`` whatever the policy).
    """

    def __init__(self, backbone, head, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(backbone, keras.Model) or not backbone.built:
            raise ValueError(f'backbone must be a built keras.Model; received backbone={backbone!r}')
        if not isinstance(head, keras.layers.Layer):
            raise ValueError(f'head must be a keras Layer; received head={head!r}')
        self.backbone, self.head = backbone, head

    def build(self, input_shape=None):
        if not self.head.built:
            self.head.build((None, None, None, self.backbone.output_shape[-1]))
        self.built = True

    def call(self, images, training=None):
        coords2d, coords3d_rel = self.head(self.backbone(images, training=training))
        return {'coords2d': coords2d, 'coords3d_rel': coords3d_rel}

    def get_config(self):
        config = super().get_config()
        config.update(backbone=keras.saving.serialize_keras_object(self.backbone),
                      head=keras.saving.serialize_keras_object(self.head))
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ('backbone', 'head'):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)
