"""Dropout whose random mask is drawn for the global batch of a data-parallel step.

``keras.layers.Dropout`` under ``tf.distribute`` draws its mask from one seed-generator state that every
replica reads, so all replicas draw the same mask for their own local batch: replica 1's examples get
replica 0's mask, and an R-replica run drops other examples than one process training the same global
batch. :class:`GlobalBatchDropout` draws the mask of the global batch (``R * local`` rows, the shape one
process would draw) and applies this replica's rows, so data-parallel training drops exactly the examples a
single process drops (the EfficientNetV2 backbones' stochastic depth, ``noise_shape=(None, 1, 1, 1)``).
With one replica it computes what ``keras.layers.Dropout`` computes.
"""
from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package='posekit')
class GlobalBatchDropout(keras.layers.Dropout):
    """``keras.layers.Dropout`` (same arguments and config) with the mask drawn for the global batch.

    Input and output: any shape [B, ...] (B this replica's batch), any float dtype.
    """

    def call(self, inputs, training=False):
        if not training or self.rate <= 0:
            return inputs
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync if context is not None else 1
        if replicas == 1:
            return keras.random.dropout(inputs, self.rate, noise_shape=self.noise_shape, seed=self.seed_generator)
        shape = tf.shape(inputs)
        local = shape[0]
        noise_shape = [d if d is not None else shape[i] for i, d in enumerate(self.noise_shape)] \
            if self.noise_shape is not None else [shape[i] for i in range(len(inputs.shape))]
        noise_shape = tf.stack([local * replicas] + list(noise_shape[1:]))
        mask = keras.random.dropout(tf.ones(noise_shape, inputs.dtype), self.rate, seed=self.seed_generator)
        replica = tf.cast(context.replica_id_in_sync_group, tf.int32)
        return inputs * mask[replica * local:(replica + 1) * local]
