"""Streaming SavedModel export of pipelined video networks (Par-DenseNet, Par-Inception, any PipelinedNetwork).

The exported model is used frame by frame without posekit::

    model = tf.saved_model.load(path)
    states = model.init_states(batch, height, width)          # dict of zero tensors, incl. 't'
    for frame in frames:                                       # (batch, height, width, C) float32
        heatmaps, states = model.step(frame, states)           # heatmap logits predicting frame t - latency

Also exported as flat signatures (for serving tools): ``signatures['init_states'](batch=, height=, width=)``
returns the state dict; ``signatures['step'](frame=, **states)`` returns ``{'heatmaps': ..., **new_states}``.
Attributes: ``latency`` (frames, int64 variable), ``state_names`` (string tensor), ``frame_channels``.
Height and width are free; states must come from ``init_states`` of the same height and width.
"""
import tensorflow as tf

from posekit.layers.pipeline import STEP_KEY, PipelinedNetwork

HEATMAPS_KEY = 'heatmaps'
_INT = tf.int32


def _state_signature(network):
    specs = {name: tf.TensorSpec([None, None, None, channels], tf.float32, name=name)
             for name, (_, channels) in sorted(network.state_specs().items())}
    specs[STEP_KEY] = tf.TensorSpec([], tf.int64, name=STEP_KEY)
    return specs


def streaming_module(network):
    """A tf.Module with tf.functions ``init_states(batch, height, width)`` and ``step(frame, states)``."""
    if not isinstance(network, PipelinedNetwork):
        raise ValueError(f'network must be a PipelinedNetwork; received {type(network).__name__}')
    state_specs = _state_signature(network)
    if HEATMAPS_KEY in state_specs:
        raise ValueError(f'a state is named {HEATMAPS_KEY!r}, which clashes with the output name')
    frame_spec = tf.TensorSpec([None, None, None, network.frame_channels], tf.float32, name='frame')
    int_specs = [tf.TensorSpec([], _INT, name=n) for n in ('batch', 'height', 'width')]

    module = tf.Module()
    # Track the variables, not the Keras model (whose default serving signature expects clips).
    module.network_variables = list(network.variables)
    module.latency = tf.Variable(network.latency, dtype=tf.int64, trainable=False, name='latency')
    module.frame_channels = tf.Variable(network.frame_channels, dtype=tf.int64, trainable=False,
                                        name='frame_channels')
    module.state_names = tf.Variable(list(state_specs), dtype=tf.string, trainable=False, name='state_names')

    @tf.function(input_signature=int_specs, autograph=False)
    def init_states(batch, height, width):
        return network.init_states(batch, height, width)

    @tf.function(input_signature=[frame_spec, state_specs], autograph=False)
    def step(frame, states):
        return network.step(frame, states, training=False)

    names = list(state_specs)

    def flat_step(frame, *states):
        heatmaps, new_states = step(frame, dict(zip(names, states)))  # calls the traced step: no retrace
        return {HEATMAPS_KEY: heatmaps, **new_states}

    module.init_states = init_states
    module.step = step
    module.flat_step = tf.function(flat_step, input_signature=[frame_spec] + [state_specs[n] for n in names],
                                   autograph=False)
    return module


def export_streaming(network, directory):
    """Writes a SavedModel with ``init_states`` and ``step`` (functions and signatures) to directory.

    Returns the directory. See the module docstring for the exported interface.
    """
    module = streaming_module(network)
    # Pass the tf.functions (not concrete functions): saving traces them once, in its own save context.
    signatures = {'init_states': module.init_states, 'step': module.flat_step}
    tf.saved_model.save(module, str(directory), signatures=signatures)
    return directory
