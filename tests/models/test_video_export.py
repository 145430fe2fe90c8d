"""Streaming SavedModel export: stepping the loaded model matches stepping the Python network."""
import numpy as np
import pytest
import tensorflow as tf

from posekit.models.par_densenet import ParDenseNet
from posekit.models.par_inception import ParInception
from posekit.models.video_export import HEATMAPS_KEY, export_streaming

TOLERANCE = 1e-5
HEIGHT, WIDTH = 36, 44  # px, not multiples of the strides
NUM_FRAMES = 4  # covers both phases of the rate-2 and rate-4 clocks


@pytest.mark.parametrize('make,check_signatures', [
    (lambda: ParDenseNet(width=0.125, num_subnets=2, clocks=True, temporal_filters=True, feedback=True), True),
    (lambda: ParInception(width=0.125, num_subnets=5, clocks=True, inflate=True), False),
], ids=['par_densenet', 'par_inception'])
def test_export_round_trip_matches_python_stepping(make, check_signatures, tmp_path):
    net = make()
    path = export_streaming(net, tmp_path / 'streaming')
    loaded = tf.saved_model.load(str(path))
    assert int(loaded.latency) == net.latency
    batch = 2
    exported_states = loaded.init_states(batch, HEIGHT, WIDTH)
    python_states = net.init_states(batch, HEIGHT, WIDTH)
    assert sorted(exported_states) == sorted(python_states)
    assert sorted(s.decode() for s in loaded.state_names.numpy()) == sorted(python_states)
    if check_signatures:
        signature_states = loaded.signatures['init_states'](batch=tf.constant(batch), height=tf.constant(HEIGHT),
                                                           width=tf.constant(WIDTH))
    rng = np.random.default_rng(0)
    for _ in range(NUM_FRAMES):
        frame = tf.constant(rng.normal(size=(batch, HEIGHT, WIDTH, 3)).astype(np.float32))
        exported_heat, exported_states = loaded.step(frame, exported_states)
        python_heat, python_states = net.step(frame, python_states)
        np.testing.assert_allclose(exported_heat, python_heat, atol=TOLERANCE)
        if check_signatures:  # the flat serving signatures run the same graph
            signature_states = loaded.signatures['step'](frame=frame, **signature_states)
            np.testing.assert_allclose(signature_states.pop(HEATMAPS_KEY), python_heat, atol=TOLERANCE)
    for key, value in python_states.items():
        np.testing.assert_allclose(exported_states[key], value, atol=TOLERANCE, err_msg=key)
    assert int(exported_states['t']) == NUM_FRAMES


def test_export_rejects_other_models(tmp_path):
    import keras
    with pytest.raises(ValueError, match='Sequential'):
        export_streaming(keras.Sequential([keras.layers.Dense(1)]), tmp_path)
