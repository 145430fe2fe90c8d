"""posekit.crop_model and posekit.convert: converted crop models agree with the SavedModel on rendered crops.

One tiny mobile_small Metrabs (64 px) with a head made consistent (its 3D heatmaps follow the 2D ones
with a per-joint depth profile), so the absolute poses land at a realistic 3-4 m instead of ~0 m: an
untrained head would hide depth-scaled conversion errors. Inputs are synthetic people rendered by
posekit.data.synth with their crop intrinsics.
"""
import dataclasses
import importlib.util

import keras
import numpy as np
import pytest
import tensorflow as tf

from posekit import convert, crop_model, skeletons
from posekit.data import bodies, synth
from posekit.models.backbones import build_backbone
from posekit.models.metrabs import Metrabs

CROP = 64
SPACE = skeletons.JointSpace(bodies.DEFAULT_FORMATS)
FLOAT32_TOLERANCE_MM = 0.1
REDUCED_PRECISION_TOLERANCE_MM = 5.0

requires_litert = pytest.mark.skipif(importlib.util.find_spec('ai_edge_litert') is None,
                                     reason="ai-edge-litert not installed (pip install 'posekit[test]')")
requires_onnx = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ('tf2onnx', 'onnx', 'onnxruntime')),
    reason="tf2onnx/onnx/onnxruntime not installed (pip install 'posekit[test]')")


def make_head_consistent(model, sharpness=10.0, seed=2):
    """3D heatmap channels = the 2D ones plus a per-joint depth profile (realistic absolute depths)."""
    head = model.head
    kernel, bias = [np.asarray(w) for w in head.conv.get_weights()]
    p, d = head.n_points, head.depth_bins
    rng = np.random.default_rng(seed)
    k2 = kernel[..., :p] * sharpness
    kernel[..., :p] = k2
    for b in range(d):  # 3D channels ordered (depth bin, point)
        kernel[..., p + b * p:p + (b + 1) * p] = k2
        bias[p + b * p:p + (b + 1) * p] = bias[:p] - 0.5 * (b - rng.uniform(2, 5, p)) ** 2
    head.conv.set_weights([kernel, bias])


@pytest.fixture(scope='module')
def model():
    keras.utils.set_random_seed(0)
    net = Metrabs(build_backbone('mobile_small', input_shape=(CROP, CROP, 3), ghost_batch_size=2), SPACE.n_joints)
    net(tf.zeros([1, CROP, CROP, 3]), tf.eye(3)[tf.newaxis], training=False)
    make_head_consistent(net)  # sharpness 10: median depth ~3.5 m on the rendered crops (3: ~0.4 m)
    return net


@pytest.fixture(scope='module')
def crops():
    """Rendered people: images float32 [4, 64, 64, 3] in [0, 1], crop intrinsics float32 [4, 3, 3]."""
    motion = synth.PreparedMotion(synth.load_motion_splits(None, seed=0, n_subjects=2, clips_per_subject=1,
                                                           seconds=1.0).train)
    spec = dataclasses.replace(synth.PRESETS['h36m_like'], crop_size=CROP)
    examples = [synth.render_example(spec, motion, 'train', i, seed=1) for i in range(4)]
    images = np.stack([ex['image'] for ex in examples]).astype(np.float32) / 255.0
    return images, np.stack([ex['intrinsics'] for ex in examples])


@pytest.fixture(scope='module')
def saved(model, tmp_path_factory):
    return crop_model.save_crop_model(model, CROP, tmp_path_factory.mktemp('crop') / 'saved_model')


@pytest.fixture(scope='module')
def reference(saved, crops):
    _, signature = convert.load_crop_signature(saved)
    return signature(images=tf.constant(crops[0]), intrinsics=tf.constant(crops[1]))['poses3d'].numpy()


def test_crop_function_matches_the_model_and_has_realistic_depths(model, crops, reference):
    images, k = crops
    direct = model(images, k, training=False)['coords3d_abs'].numpy()
    # graph vs eager: TF's own rounding differences (0.018 mm seen at 2.8 m)
    np.testing.assert_allclose(reference, direct, rtol=0, atol=FLOAT32_TOLERANCE_MM)
    assert reference.shape == (4, SPACE.n_joints, 3) and reference.dtype == np.float32
    assert 1000.0 < np.median(reference[..., 2]) < 20000.0  # metres away, so errors are depth-scaled
    table = crop_model.skeleton_index_table(SPACE)
    start, stop = table['h36m_17']
    assert stop - start == 17 and set(table) == set(SPACE.formats)


@requires_litert
def test_tflite_float32_and_float16_agree_with_the_saved_model(saved, crops, reference, tmp_path):
    images, k = crops
    f32 = convert.to_tflite(saved, tmp_path / 'f32.tflite', 'float32')
    error32 = np.abs(convert.run_tflite(f32, images, k) - reference).max()
    assert error32 < FLOAT32_TOLERANCE_MM, error32
    f16 = convert.to_tflite(saved, tmp_path / 'f16.tflite', 'float16')
    out16 = convert.run_tflite(f16, images, k)
    error16 = np.abs(out16 - reference).max()
    relative16 = np.abs((out16 - out16.mean(1, keepdims=True)) - (reference - reference.mean(1, keepdims=True))).max()
    depth16 = np.abs(out16[..., 2] / reference[..., 2] - 1).max()
    print(f'TFLite max abs error vs SavedModel: float32 {error32:.4f} mm, float16 weights {error16:.4f} mm '
          f'(mean-centred {relative16:.4f} mm, depth {100 * depth16:.2f} %)')
    # This untrained head's 2D points spread over only ~0.1 px, so its depth (~ f * 3D size / 2D size)
    # amplifies float16 weight rounding (tens of mm here); the pose itself must stay within 5 mm.
    assert relative16 < REDUCED_PRECISION_TOLERANCE_MM, relative16
    assert depth16 < 0.02, depth16
    # float16 weights really change the model (the test would notice a float32 file), and halve its size.
    assert error16 > error32
    assert (tmp_path / 'f16.tflite').stat().st_size < 0.6 * (tmp_path / 'f32.tflite').stat().st_size


@requires_onnx
def test_onnx_agrees_with_the_saved_model(saved, crops, reference, tmp_path):
    import onnx
    images, k = crops
    path = convert.to_onnx(saved, tmp_path / 'crop.onnx')
    graph = onnx.load(path).graph
    assert [i.name for i in graph.input] == ['images', 'intrinsics'] and [o.name for o in graph.output] == ['poses3d']
    error = np.abs(convert.run_onnx(path, images, k) - reference).max()
    print(f'ONNX max abs error vs SavedModel: {error:.4f} mm')
    assert error < FLOAT32_TOLERANCE_MM, error
    # Dynamic batch: one crop gives that crop's result.
    np.testing.assert_allclose(convert.run_onnx(path, images[:1], k[:1]), reference[:1], atol=FLOAT32_TOLERANCE_MM)


def test_bad_inputs_give_clear_errors(tmp_path, model):
    with pytest.raises(ValueError, match="saved_model_dir must be a SavedModel directory; received "):
        convert.load_crop_signature(tmp_path)
    with pytest.raises(ValueError, match="precision must be 'float32', 'float16' or 'dynamic_range'"):
        convert.to_tflite(tmp_path, tmp_path / 'x.tflite', precision='int4')
    with pytest.raises(ValueError, match=r"formats must be a non-empty subset of .*received formats=\['pb'\]"):
        convert.convert(tmp_path, tmp_path, formats=['pb'])
    with pytest.raises(ValueError, match='crop_size must be a positive int; received crop_size=0'):
        crop_model.make_crop_function(model, 0)
    with pytest.raises(ImportError, match='pip install no-such-package-posekit'):
        convert.require('no_such_module_posekit', 'no-such-package-posekit')


@requires_litert
def test_convert_tool_checks_on_rendered_people(saved, tmp_path, capsys):
    from tools import convert as convert_tool
    assert convert_tool.main(['--saved-model', str(saved), '--out', str(tmp_path / 'c'), '--formats', 'tflite_float32',
                              '--check-crops', '3']) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f'tflite_float32: {tmp_path / "c"}') and 'on 3 rendered people' in line
    max_diff = float(line.split('max |diff| ')[1].split(' mm')[0])
    assert 0 <= max_diff < FLOAT32_TOLERANCE_MM
    images, k = convert_tool.check_crops(CROP, 3)
    assert images.shape == (3, CROP, CROP, 3) and images.dtype == np.float32 and 0 <= images.min() < images.max() <= 1
    assert k.shape == (3, 3, 3) and np.allclose(k[:, 2], [0, 0, 1])
