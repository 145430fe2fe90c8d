"""Tests of posekit.eval.video: heatmap argmax, 2D PCK, the mean-heatmap baseline, streaming evaluation."""
import keras
import numpy as np
import tensorflow as tf

from posekit.eval import video as ev
from posekit.models.par_densenet import ParDenseNet
from posekit.train import losses_video

SIZE = 32  # px
TINY = dict(width=0.125, block_sizes=(1, 1, 1, 1), miniblocks_per_unit=1)  # 5 units + head


def tiny(**kwargs):
    keras.utils.set_random_seed(0)
    network = ParDenseNet(**TINY, **kwargs)
    network.build((None, None, None, 3))
    return network


def clip(batch=2, steps=6, seed=0):
    return tf.random.stateless_uniform((batch, steps, SIZE, SIZE, 3), seed=[seed, 1])


def test_heatmap_argmax_pck_and_mean_baseline():
    stride = 4
    coords = np.array([[[5.5, 9.5], [21.5, 1.5]]], np.float32)  # cell centres: (1, 2) and (5, 0)
    heat = pipeline_heatmaps(coords, stride)
    np.testing.assert_allclose(ev.heatmap_argmax(np.log(heat + 1e-6), stride), coords, atol=1e-5)
    off = coords + np.array([1.0, 0.0], np.float32)  # a quarter cell to the right
    np.testing.assert_allclose(ev.heatmap_argmax(np.log(pipeline_heatmaps(off, stride) + 1e-6), stride)[..., 0],
                               off[..., 0], atol=1e-5)
    assert ev.pck_2d(coords + [[[3.0, 0.0], [0.0, 5.0]]], coords, np.array([[True, True]]), 4.0) == 0.5
    maps = np.stack([pipeline_heatmaps(coords, stride)[0], np.zeros_like(heat[0])])
    logits = ev.mean_heatmap_logits(maps)
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), np.clip(maps.mean(0), 1e-4, 1 - 1e-4), rtol=1e-4)


def pipeline_heatmaps(coords, stride):
    from posekit.data.synth import keypoint_heatmaps
    return keypoint_heatmaps(coords, np.ones(coords.shape[:-1], bool), 8 * stride, 8 * stride, stride=stride,
                             sigma=1.5)


def test_evaluate_stream_scores_aligned_steps():
    network = tiny(num_subnets=2)
    frames = clip(batch=1, steps=5).numpy()
    coords = np.full((1, 5, 17, 2), 15.5, np.float32)
    valid = np.ones((1, 5, 17), bool)
    from posekit.data.synth import keypoint_heatmaps
    heat = keypoint_heatmaps(coords, valid, SIZE, SIZE, stride=4, sigma=2.0)
    batch = {'frames': frames, 'heatmaps': heat, 'coords2d': coords, 'joint_valid': valid}
    result = ev.evaluate_stream(network, [batch], network.latency, 3, stride=4)
    logits = network.unroll(tf.constant(frames))['heatmaps']
    expected = losses_video.heatmap_loss(logits[:, 3:], heat[:, 2:4])
    np.testing.assert_allclose(result['test_loss'], float(expected), rtol=1e-5)
    assert result['scored_steps'] == 2
    constant = ev.evaluate_stream(None, [batch], 0, 3, stride=4, constant_logits=np.log(heat[0, 0] + 1e-6))
    assert constant['pck'] == 1.0  # the constant map peaks at the (static) keypoints


