"""Tests of posekit.data.video: deterministic clip generation, the HDF5 cache and the tf.data batches."""
import dataclasses

import h5py
import numpy as np
import pytest
import tensorflow as tf

from posekit.data import synth, video

SIZE = 32  # px
STRIDE = 4


@pytest.fixture(scope='module')
def motion():
    return synth.PreparedMotion(synth.load_motion_splits(None, seed=0, n_subjects=4, clips_per_subject=2,
                                                         seconds=2.0).train)


@pytest.fixture(scope='module')
def spec():
    return dataclasses.replace(synth.PRESETS['h36m_like'], crop_size=SIZE)


@pytest.fixture(scope='module')
def clips(spec, motion):
    return video.generate_clips(spec, motion, n_clips=5, n_frames=4, seed=3, frame_stride=2)


def test_generated_clips_shapes_and_per_clip_determinism(spec, motion, clips):
    assert clips['frames'].shape == (5, 4, SIZE, SIZE, 3) and clips['frames'].dtype == np.uint8
    assert clips['coords2d'].shape == (5, 4, 17, 2) and clips['joint_valid'].shape == (5, 4, 17)
    assert clips['coords3d'].shape == (5, 4, 17, 3) and clips['intrinsics'].shape == (5, 4, 3, 3)
    # Clip i depends on (seed, split, i) only: a shorter set is a prefix; another seed differs.
    prefix = video.generate_clips(spec, motion, n_clips=2, n_frames=4, seed=3, frame_stride=2)
    for key in video.FIELDS:
        np.testing.assert_array_equal(prefix[key], clips[key][:2])
    other = video.generate_clips(spec, motion, n_clips=2, n_frames=4, seed=4, frame_stride=2)
    assert not np.array_equal(other['frames'], prefix['frames'])
    # The labels are those of render_video for the recorded clip and start frame.
    again = synth.render_video(spec, motion, clip=int(clips['clip_index'][1]), start=int(clips['start_frame'][1]),
                               n_frames=4, seed=3, stride=2, video_index=1)
    np.testing.assert_array_equal(again['coords2d'], clips['coords2d'][1])


def test_cache_is_reused_and_regenerated_when_parameters_change(spec, motion, tmp_path):
    path = tmp_path / 'clips.h5'
    calls = []

    def motion_fn():
        calls.append(1)
        return motion

    first = video.ensure_clips(path, spec, motion_fn, 2, 3, seed=1, motion_key='m')
    second = video.ensure_clips(path, spec, motion_fn, 2, 3, seed=1, motion_key='m')
    assert len(calls) == 1
    for key in video.FIELDS:
        np.testing.assert_array_equal(first[key], second[key])
    third = video.ensure_clips(path, spec, motion_fn, 2, 3, seed=2, motion_key='m')
    assert len(calls) == 2 and not np.array_equal(third['frames'], first['frames'])
    with h5py.File(tmp_path / 'foreign.h5', 'w') as f:
        f.attrs['format_tag'] = 'something else'
    with pytest.raises(ValueError, match='not a posekit video clip file'):
        video.read_clips(tmp_path / 'foreign.h5')


def test_batch_indices_are_seeded_epoch_permutations():
    n, batch = 7, 3
    steps = [video.batch_indices(n, batch, seed=5, step=k) for k in range(7)]  # 21 positions = 3 epochs
    flat = np.concatenate(steps)
    for e in range(3):
        assert sorted(flat[e * n:(e + 1) * n]) == list(range(n))
    np.testing.assert_array_equal(video.batch_indices(n, batch, seed=5, step=4), steps[4])
    assert not np.array_equal(np.concatenate([video.batch_indices(n, batch, seed=6, step=k) for k in range(3)]),
                              flat[:9])


def test_dataset_batch_is_a_function_of_seed_and_step_and_matches_eager(clips):
    stream = list(video.video_dataset(clips, 2, seed=1, start_step=0, num_steps=4, heatmap_stride=STRIDE).as_numpy_iterator())
    resumed = list(video.video_dataset(clips, 2, seed=1, start_step=2, num_steps=4, heatmap_stride=STRIDE).as_numpy_iterator())
    assert len(stream) == 4 and len(resumed) == 2
    for a, b in zip(stream[2:], resumed):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    fn = video.make_example_fn(clips, STRIDE, sigma=2.0)
    indices = video.batch_indices(5, 2, seed=1, step=3)
    eager = fn(tf.constant(indices))
    for key in eager:
        np.testing.assert_allclose(eager[key].numpy(), stream[3][key], atol=1e-6)
    np.testing.assert_allclose(stream[3]['frames'], clips['frames'][indices] / 255.0, atol=1e-6)
    expected = synth.keypoint_heatmaps(clips['coords2d'][indices], clips['joint_valid'][indices], SIZE, SIZE,
                                       stride=STRIDE, sigma=2.0)
    np.testing.assert_allclose(stream[3]['heatmaps'], expected, atol=1e-5)
    assert stream[3]['heatmaps'].shape == (2, 4, SIZE // STRIDE, SIZE // STRIDE, 17)
    cropped = video.make_example_fn(clips, STRIDE, n_frames=2)(tf.constant([0]))
    assert cropped['frames'].shape == (1, 2, SIZE, SIZE, 3)


def test_invalid_arguments(spec, motion, clips):
    with pytest.raises(ValueError, match='n_clips must be a positive int; received n_clips=0'):
        video.generate_clips(spec, motion, n_clips=0, n_frames=4)
    with pytest.raises(ValueError, match='split must be one of'):
        video.generate_clips(spec, motion, n_clips=1, n_frames=4, split='dev')
    with pytest.raises(ValueError, match='no motion clip has the'):
        video.generate_clips(spec, motion, n_clips=1, n_frames=100_000)
    with pytest.raises(ValueError, match='batch_size must be an int in \\[1, 5\\].*batch_size=6'):
        video.video_dataset(clips, 6)
    with pytest.raises(ValueError, match='heatmap_stride must be a positive int dividing the crop size 32.*=3'):
        video.make_example_fn(clips, 3)
    with pytest.raises(ValueError, match='n_frames must be in \\[1, 4\\].*n_frames=5'):
        video.make_example_fn(clips, STRIDE, n_frames=5)
