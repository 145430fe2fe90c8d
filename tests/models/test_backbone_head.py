"""Tests of posekit.models.backbone_head.BackboneWithHead: outputs, precision and the config round trip."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from posekit.models.backbone_head import BackboneWithHead
from posekit.models.backbones import build_backbone
from posekit.models.metrabs import MetrabsHead
from posekit.train.precision import policy_scope

SIZE, POINTS = 64, 5


def _model():
    keras.utils.set_random_seed(0)
    backbone = build_backbone('mobile_small', input_shape=(SIZE, SIZE, 3))
    stride = SIZE // backbone.output_shape[1]
    model = BackboneWithHead(backbone, MetrabsHead(POINTS, depth_bins=4, stride=stride), name='bwh')
    model.build((None, SIZE, SIZE, 3))
    return model


@pytest.fixture(scope='module')
def images():
    return np.random.default_rng(0).uniform(0, 1, (2, SIZE, SIZE, 3)).astype(np.float32)


def test_outputs_are_the_heads_coordinates_of_the_backbone_features(images):
    model = _model()
    out = model(images, training=False)
    assert set(out) == {'coords2d', 'coords3d_rel'}
    assert out['coords2d'].shape == (2, POINTS, 2) and out['coords3d_rel'].shape == (2, POINTS, 3)
    coords2d, coords3d = model.head(model.backbone(images, training=False))  # the composition, nothing else
    np.testing.assert_allclose(out['coords2d'], coords2d, rtol=1e-6)
    np.testing.assert_allclose(out['coords3d_rel'], coords3d, rtol=1e-6)
    # soft-argmax coordinates lie inside the crop (px)
    assert np.all((out['coords2d'].numpy() >= -0.5) & (out['coords2d'].numpy() <= SIZE))


def test_config_round_trip_gives_the_same_outputs(images):
    model = _model()
    config = model.get_config()
    clone = BackboneWithHead.from_config(config)
    clone.build((None, SIZE, SIZE, 3))
    clone.set_weights(model.get_weights())
    assert clone.name == 'bwh' and clone.head.n_points == POINTS
    for key, value in model(images, training=False).items():
        np.testing.assert_allclose(clone(images, training=False)[key], value, rtol=1e-5, atol=1e-4)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert isinstance(restored, BackboneWithHead)


def test_float32_outputs_under_the_mixed_policy(images):
    with policy_scope('mixed_bfloat16'):
        model = _model()
    out = model(images, training=False)
    assert out['coords2d'].dtype == tf.float32 and out['coords3d_rel'].dtype == tf.float32
    assert model.backbone.layers[-1].compute_dtype == 'bfloat16'


def test_bad_arguments_raise():
    backbone = build_backbone('mobile_small', input_shape=(SIZE, SIZE, 3))
    with pytest.raises(ValueError, match='backbone must be a built keras.Model'):
        BackboneWithHead('mobile_small', MetrabsHead(POINTS))
    with pytest.raises(ValueError, match='head must be a keras Layer'):
        BackboneWithHead(backbone, lambda x: x)
