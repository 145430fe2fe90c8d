"""Tests of posekit.data.pipeline: composition, epoch order, resumption, cross-process determinism."""
import dataclasses
import hashlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from posekit.data import pipeline
from posekit.data.augment import AugmentConfig
from posekit.skeletons import JointSpace

FORMATS = ('h36m_17', 'smpl_24', 'coco_19', 'mpi_inf_3dhp_17')
SPACE = JointSpace(FORMATS)
SIDE = 24
SIZES = {'h36m_like': 7, 'mpi_like': 11, 'coco_like': 5}
FORMAT_OF = {'h36m_like': 'h36m_17', 'mpi_like': 'mpi_inf_3dhp_17', 'coco_like': 'coco_19'}
COMPOSITION = {'h36m_like': 3, 'mpi_like': 2, 'coco_like': 1}


def make_streams(sizes=SIZES, side=SIDE):
    """Fake contract-conforming streams; example_id = 1000 * dataset number + index."""
    streams = {}
    for i, (name, size) in enumerate(sizes.items()):
        arrays = pipeline.synthetic_arrays(size, side, SPACE.format_mask(FORMAT_OF.get(name, 'h36m_17')),
                                           seed=i, is_3d=name != 'coco_like')
        arrays['example_id'] += 1000 * i
        streams[name] = pipeline.stream_from_arrays(arrays)
    return streams


class CountingSource:
    """Wraps a source and counts the examples read."""

    def __init__(self, source):
        self.source, self.read = source, 0

    def __len__(self):
        return len(self.source)

    def get(self, indices):
        self.read += len(indices)
        return self.source.get(indices)


def take(dataset, n):
    return [{k: v.numpy() for k, v in batch.items()} for batch in dataset.take(n)]


def batch_bytes(batch):
    digest = hashlib.sha256()
    for key in sorted(batch):
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(batch[key]).tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------

def test_every_batch_has_the_composition_in_order():
    batches = take(pipeline.interleave_by_composition(make_streams(), COMPOSITION, seed=0), 4)
    expected = np.repeat(np.arange(3), list(COMPOSITION.values())).astype(np.int32)
    for batch in batches:
        np.testing.assert_array_equal(batch['dataset'], expected)
        np.testing.assert_array_equal(batch['example_id'] // 1000, expected)
        assert batch['image'].shape == (6, SIDE, SIDE, 3) and batch['image'].dtype == np.uint8
        assert batch['coords3d'].shape == (6, SPACE.n_joints, 3)
        np.testing.assert_array_equal(batch['is_3d'], expected != 2)


def test_each_example_once_per_epoch_then_reshuffled():
    n_batches = 12  # 36 h36m examples (5 epochs of 7), 24 mpi (2 of 11), 12 coco (2 of 5)
    batches = take(pipeline.interleave_by_composition(make_streams(), COMPOSITION, seed=3), n_batches)
    for d, (name, size) in enumerate(SIZES.items()):
        ids = np.concatenate([b['example_id'][b['dataset'] == d] for b in batches]) - 1000 * d
        positions = np.concatenate([b['position'][b['dataset'] == d] for b in batches])
        np.testing.assert_array_equal(positions, np.arange(len(ids)))
        epochs = [ids[e * size:(e + 1) * size] for e in range(len(ids) // size)]
        assert len(epochs) >= 2
        for epoch in epochs:
            np.testing.assert_array_equal(np.sort(epoch), np.arange(size))
        assert len({tuple(e) for e in epochs}) > 1, f'{name} is not reshuffled between epochs'


def test_plan_is_the_concatenation_of_epoch_permutations():
    plan = pipeline.CompositionPlan(SIZES, COMPOSITION, seed=5)
    key = pipeline.stream_key('mpi_like')
    stream = np.concatenate([pipeline.epoch_permutation(5, key, e, 11) for e in range(4)])
    for step in (0, 4, 5, 9):
        indices, positions = plan.batch(step)[1]
        np.testing.assert_array_equal(positions, [2 * step, 2 * step + 1])
        np.testing.assert_array_equal(indices, stream[2 * step:2 * step + 2])
    # A dataset's order does not depend on the other datasets in the composition.
    alone = pipeline.CompositionPlan({'mpi_like': 11}, {'mpi_like': 2}, seed=5)
    np.testing.assert_array_equal(alone.batch(9)[0][0], plan.batch(9)[1][0])


def test_resume_at_step_k_gives_batch_k_without_reading_skipped_examples():
    config = AugmentConfig()
    full = take(pipeline.interleave_by_composition(make_streams(), COMPOSITION, seed=1, augment=config,
                                                   mirror=SPACE.mirror), 6)
    resumed = take(pipeline.interleave_by_composition(make_streams(), COMPOSITION, seed=1, start_step=4,
                                                      augment=config, mirror=SPACE.mirror), 2)
    for a, b in zip(full[4:], resumed):
        assert batch_bytes(a) == batch_bytes(b)
    streams = {name: CountingSource(s) for name, s in make_streams().items()}
    far = take(pipeline.interleave_by_composition(streams, COMPOSITION, seed=1, start_step=10**6,
                                                  prefetch=0, num_parallel_calls=1), 1)[0]
    # Only batch 10**6 (+ the one-example probe per stream, + at most one batch read ahead) was read.
    for name, count in COMPOSITION.items():
        assert count + 1 <= streams[name].read <= 2 * count + 1
    np.testing.assert_array_equal(far['position'], np.repeat([3, 2, 1], [3, 2, 1]) * 10**6 + [0, 1, 2, 0, 1, 0])
    # Dataset.skip on the result is the same free resumption.
    streams = {name: CountingSource(s) for name, s in make_streams().items()}
    dataset = pipeline.interleave_by_composition(streams, COMPOSITION, seed=1, augment=config, mirror=SPACE.mirror)
    assert isinstance(dataset, tf.data.Dataset) and dataset.names == tuple(COMPOSITION)
    skipped = dataset.skip(3).skip(1)
    assert skipped.start_step == 4
    assert batch_bytes(take(skipped, 1)[0]) == batch_bytes(full[4])
    skipped = take(dataset.skip(10**6), 1)[0]
    np.testing.assert_array_equal(skipped['position'], far['position'])
    assert sum(s.read for s in streams.values()) < 100


def test_same_seed_same_bytes_in_another_process():
    script = textwrap.dedent(f"""
        import hashlib, os
        os.environ['TF_CPP_MIN_LOG_LEVEL'] = '3'
        import numpy as np
        from posekit.data import pipeline
        from posekit.data.augment import AugmentConfig
        from posekit.skeletons import JointSpace
        space = JointSpace({FORMATS!r})
        streams = {{}}
        for i, (name, size) in enumerate({SIZES!r}.items()):
            skeleton = {FORMAT_OF!r}[name]
            arrays = pipeline.synthetic_arrays(size, {SIDE}, space.format_mask(skeleton), seed=i,
                                               is_3d=name != 'coco_like')
            arrays['example_id'] += 1000 * i
            streams[name] = pipeline.stream_from_arrays(arrays)
        ds = pipeline.interleave_by_composition(streams, {COMPOSITION!r}, seed=11, augment=AugmentConfig(),
                                                mirror=space.mirror)
        for batch in ds.take(3):
            digest = hashlib.sha256()
            for key in sorted(batch):
                digest.update(key.encode())
                digest.update(np.ascontiguousarray(batch[key].numpy()).tobytes())
            print(digest.hexdigest())
        """)
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=300,
                            check=True)
    theirs = result.stdout.split()
    ours = [batch_bytes(b) for b in take(pipeline.interleave_by_composition(
        make_streams(), COMPOSITION, seed=11, augment=AugmentConfig(), mirror=SPACE.mirror), 3)]
    assert theirs == ours
    other_seed = take(pipeline.interleave_by_composition(make_streams(), COMPOSITION, seed=12,
                                                         augment=AugmentConfig(), mirror=SPACE.mirror), 1)
    assert batch_bytes(other_seed[0]) != ours[0]


def test_augmented_batches_keep_labels_consistent_and_mask_other_formats():
    ds = pipeline.interleave_by_composition(make_streams(), COMPOSITION, seed=2, mirror=SPACE.mirror,
                                            augment=AugmentConfig(output_side=16), mask_to_own_format=True)
    for batch in take(ds, 3):
        assert batch['image'].shape == (6, 16, 16, 3)
        valid = batch['joint_valid']
        k = batch['intrinsics'].astype(np.float64)
        p = np.einsum('bij,bkj->bki', k, batch['coords3d'].astype(np.float64))
        with np.errstate(invalid='ignore'):
            error = np.abs(p[..., :2] / p[..., 2:] - batch['coords2d'])
        assert error[valid].max() < 0.01
        assert np.all(batch['coords3d'][~valid] == 0) and np.all(batch['coords2d'][~valid] == 0)
        for i, d in enumerate(batch['dataset']):
            own = SPACE.format_mask(FORMAT_OF[list(COMPOSITION)[d]])
            np.testing.assert_array_equal(valid[i], own)  # flips permute within the format


def test_eval_batches_are_sequential_and_unaugmented():
    arrays = pipeline.synthetic_arrays(10, SIDE, SPACE.format_mask('h36m_17'), seed=4)
    batches = take(pipeline.eval_batches(pipeline.stream_from_arrays(arrays), 4, dataset_index=2), 10)
    assert [len(b['example_id']) for b in batches] == [4, 4, 2]
    for key, value in arrays.items():
        np.testing.assert_array_equal(np.concatenate([b[key] for b in batches]), value, err_msg=key)
    assert np.all(np.concatenate([b['dataset'] for b in batches]) == 2)
    arrays['dataset'] = np.full(10, 5, np.int32)
    batch = take(pipeline.eval_batches(pipeline.stream_from_arrays(arrays), 16), 1)[0]
    np.testing.assert_array_equal(batch['dataset'], arrays['dataset'])  # the source's own field is kept


def test_synthetic_arrays_follow_the_contract():
    arrays = pipeline.synthetic_arrays(6, 32, SPACE.format_mask('coco_19'), seed=2, is_3d=False)
    k = arrays['intrinsics'].astype(np.float64)
    p = np.einsum('bij,bkj->bki', k, arrays['coords3d'].astype(np.float64))
    np.testing.assert_allclose(p[..., :2] / p[..., 2:], arrays['coords2d'], atol=1e-3)
    assert arrays['image'].shape == (6, 32, 32, 3) and arrays['image'].dtype == np.uint8
    assert not arrays['is_3d'].any() and np.array_equal(arrays['joint_valid'][0], SPACE.format_mask('coco_19'))
    np.testing.assert_array_equal(arrays['coords3d'],
                                  pipeline.synthetic_arrays(6, 32, SPACE.format_mask('coco_19'), seed=2)['coords3d'])


def test_presets_mirror_the_paper_split():
    paper = pipeline.COMPOSITIONS['paper']
    assert sum(paper[n] for n in pipeline.DATASETS_3D) == pipeline.PAPER_BATCH_3D == 96
    assert sum(paper[n] for n in pipeline.DATASETS_2D) == pipeline.PAPER_BATCH_2D == 32
    assert list(paper) == list(pipeline.DATASETS_3D) + list(pipeline.DATASETS_2D)
    for preset in pipeline.COMPOSITIONS.values():
        assert set(preset) == set(paper) and min(preset.values()) >= 1
    assert pipeline.make_composition(['a', 'b'], ['c'], 5, 2) == {'a': 3, 'b': 2, 'c': 2}


def test_bad_arguments():
    streams = make_streams()
    with pytest.raises(ValueError, match=r"composition names dataset 'h36m', which is not in streams"):
        pipeline.interleave_by_composition(streams, {'h36m': 2}, seed=0)
    with pytest.raises(ValueError, match=r"composition\['coco_like'\] must be a positive int, got 0"):
        pipeline.interleave_by_composition(streams, {'coco_like': 0}, seed=0)
    with pytest.raises(ValueError, match='seed must be a non-negative int, got -1'):
        pipeline.interleave_by_composition(streams, COMPOSITION, seed=-1)
    with pytest.raises(ValueError, match='start_step must be an int .* got -3'):
        pipeline.interleave_by_composition(streams, COMPOSITION, seed=0, start_step=-3)
    with pytest.raises(ValueError, match='mirror must be given when augment.flip_probability > 0'):
        pipeline.interleave_by_composition(streams, COMPOSITION, seed=0, augment=AugmentConfig())
    bigger = dict(streams, coco_like=make_streams({'coco_like': 5}, side=SIDE + 2)['coco_like'])
    with pytest.raises(ValueError, match="stream 'coco_like' has fields .* all streams must agree"):
        pipeline.interleave_by_composition(bigger, COMPOSITION, seed=0)
    with pytest.raises(ValueError, match="stream 'coco_like' must be an ExampleSource"):
        pipeline.interleave_by_composition(dict(streams, coco_like=[1, 2]), COMPOSITION, seed=0)
    with pytest.raises(ValueError, match='arrays must share one leading length'):
        pipeline.stream_from_arrays({'a': np.zeros(3), 'b': np.zeros(4)})
    with pytest.raises(ValueError, match='batch_size must be a positive int, got 0'):
        pipeline.eval_batches(streams['coco_like'], 0)


def test_synthetic_datasets_through_the_augmented_pipeline():
    synth = pytest.importorskip('posekit.data.synth')
    assert list(synth.PRESETS) == list(pipeline.DATASETS_3D) + list(pipeline.DATASETS_2D)
    assert all((synth.PRESETS[n].label_kind == '2d') == (n in pipeline.DATASETS_2D) for n in synth.PRESETS)
    splits = synth.load_motion_splits(n_subjects=2, clips_per_subject=1, seconds=1.0)
    motion = synth.PreparedMotion(splits.train)
    streams = {spec.name: pipeline.stream_from_arrays(synth.generate_examples(spec, motion, 'train', 0, 3))
               for spec in synth.preset_specs('smoke', crop_size=48)}
    space = synth.PRESETS['h36m_like'].joint_space
    composition = pipeline.COMPOSITIONS['smoke']
    batches = take(pipeline.interleave_by_composition(streams, composition, seed=0, augment=AugmentConfig(),
                                                      mirror=space.mirror), 2)
    for batch in batches:
        np.testing.assert_array_equal(batch['dataset'], np.arange(len(composition)))
        np.testing.assert_array_equal(batch['is_3d'], [n in pipeline.DATASETS_3D for n in composition])
        k = batch['intrinsics'].astype(np.float64)
        p = np.einsum('bij,bkj->bki', k, batch['coords3d'].astype(np.float64))
        assert np.abs(p[..., :2] / p[..., 2:] - batch['coords2d']).max() < 0.01
        assert batch['image'].shape == (len(composition), 48, 48, 3)
        assert 'clip_index' in batch and 'frame_index' in batch  # extra fields pass through


def test_hdf5_shards_give_the_same_batches_as_arrays(tmp_path):
    storage = pytest.importorskip('posekit.data.storage')
    synth = pytest.importorskip('posekit.data.synth')
    specs = [dataclasses.replace(spec, n_train=5, n_val=0, n_test=0)
             for spec in synth.preset_specs('smoke', crop_size=32)]
    paths = storage.ensure_datasets(tmp_path, specs, splits=('train',), progress=False)
    from_shards = {name: pipeline.stream_from_shard(p['train'][0]) for name, p in paths.items()}
    from_folder = {name: pipeline.stream_from_shards(tmp_path, name=name, split='train') for name in paths}
    from_arrays = {name: pipeline.stream_from_arrays(source.arrays()) for name, source in from_shards.items()}
    composition = pipeline.COMPOSITIONS['smoke']
    mirror = specs[0].joint_space.mirror
    digests = []
    for streams in (from_shards, from_folder, from_arrays):
        batches = take(pipeline.interleave_by_composition(streams, composition, seed=4, augment=AugmentConfig(),
                                                          mirror=mirror), 3)
        digests.append([batch_bytes(b) for b in batches])
    assert digests[0] == digests[1] == digests[2]
    foreign = tmp_path / 'foreign.h5'
    foreign.write_text('not a shard')
    with pytest.raises(ValueError, match='not an HDF5 file'):
        pipeline.stream_from_shard(foreign)


def test_stateless_batches_are_a_pure_function_of_the_batch_index():
    from posekit.data.lifting import batch_indices
    n, batch = 10, 4
    x = np.arange(n, dtype=np.float32) * 10.0
    y = np.arange(n, dtype=np.int32)
    stream = list(pipeline.stateless_batches((x, y), batch, seed=3).take(6))
    for k, (xb, yb) in enumerate(stream):
        np.testing.assert_array_equal(yb, batch_indices(n, batch, 3, k))  # the one index stream
        np.testing.assert_array_equal(xb, 10.0 * yb.numpy())  # the arrays stay aligned
    # every epoch (n / gcd consecutive examples) visits each example once
    seen = np.concatenate([yb.numpy() for _, yb in stream])[:n]
    assert sorted(seen.tolist()) == list(range(n))
    resumed = list(pipeline.stateless_batches((x, y), batch, seed=3, start_step=4).take(2))
    for (xa, ya), (xb, yb) in zip(stream[4:], resumed):
        np.testing.assert_array_equal(ya, yb)
    other = next(iter(pipeline.stateless_batches((x, y), batch, seed=4)))
    assert not np.array_equal(other[1], stream[0][1])
    halved = next(iter(pipeline.stateless_batches((x, y), batch, seed=3, transform=lambda b: b[0] / 2)))
    np.testing.assert_array_equal(halved, stream[0][0].numpy() / 2)


@pytest.mark.parametrize('kwargs, match', [
    (dict(arrays=(np.zeros(3), np.zeros(4))), r'first dimensions \[3, 4\]'),
    (dict(arrays=()), 'one or more arrays'),
    (dict(batch_size=0), 'batch_size=0'),
    (dict(seed=-1), 'seed=-1'),
    (dict(start_step=1.5), 'start_step=1.5'),
])
def test_stateless_batches_bad_arguments(kwargs, match):
    args = dict(dict(arrays=(np.zeros(3),), batch_size=2), **kwargs)
    with pytest.raises(ValueError, match=match):
        pipeline.stateless_batches(**args)
