"""Tests of posekit.train.tasks: the tasks' losses, batch streams and the policy comparison."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from posekit.train import tasks


def test_lifter_task_loss_is_the_mpjpe_in_mm():
    task = tasks.LifterTask(channels=8, skeleton='h36m_17')
    keras.utils.set_random_seed(0)
    model = task.build()
    assert model is task.model and task.float32_layers == (tasks.LIFTER_OUTPUT_LAYER,)
    targets = np.zeros((2, 17, 3), np.float32)
    outputs = np.zeros((2, 17, 3), np.float32)
    outputs[..., 0] = 3.0
    outputs[..., 1] = 4.0  # every joint 5 mm off
    loss, metrics = task.loss(tf.constant(outputs), (None, targets))
    assert float(loss) == pytest.approx(5.0, abs=1e-6) and metrics == {}
    with pytest.raises(ValueError, match='must be the model this task built'):
        task.loss_fn(keras.Sequential(), (np.zeros((1, 17, 2), np.float32), targets[:1]), 0, True)


def test_motion_vae_task_noise_is_a_function_of_seed_and_step():
    task = tasks.MotionVAETask(state_dim=12, hidden=64, seed=5)
    task.build()
    a, b = task.noise(3, 7), task.noise(3, 7)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, task.noise(3, 8)) and a.shape == (3, task.model.latent_dim)
    with pytest.raises(ValueError, match='kl_weight=-1'):
        tasks.MotionVAETask(12, kl_weight=-1)


def test_backbone_task_stream_scales_images_to_unit_range():
    task = tasks.BackboneTask(n_points=3, image_size=16)
    images = np.full((4, 16, 16, 3), 255, np.uint8)
    images[1] = 51
    c2d, c3d = np.zeros((4, 3, 2), np.float32), np.zeros((4, 3, 3), np.float32)
    batch = next(iter(task.batches((images, c2d, c3d), 4, seed=0)))
    assert batch[0].dtype == tf.float32 and sorted(np.unique(batch[0]).tolist()) == pytest.approx([0.2, 1.0])
    with pytest.raises(ValueError, match='must hold 3 arrays'):
        task.batches((images, c2d), 2)
