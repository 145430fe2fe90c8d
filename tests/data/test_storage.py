import dataclasses
import io
import json
import os
import threading

import h5py
import numpy as np
import pytest

from posekit.data import storage, synth
from tools import make_datasets


def _tiny_specs(names=('h36m_like', 'coco_like')):
    return [dataclasses.replace(synth.PRESETS[n], n_train=5, n_val=3, n_test=2, crop_size=32) for n in names]


@pytest.fixture(scope='module')
def made(tmp_path_factory):
    out = tmp_path_factory.mktemp('synth')
    paths = storage.ensure_datasets(out, _tiny_specs(), seed=3, shard_size=3, progress=False)
    return out, paths


def test_shards_hold_the_examples_and_metadata(made):
    out, paths = made
    assert set(paths) == {'h36m_like', 'coco_like'}
    assert [os.path.basename(p) for p in paths['h36m_like']['train']] == ['train-000-of-002.h5',
                                                                         'train-001-of-002.h5']
    shard = storage.open_shard(paths['coco_like']['train'][1])
    m = shard.metadata
    assert (m['name'], m['split'], m['skeleton'], m['label_kind']) == ('coco_like', 'train', 'coco_19', '2d')
    assert m['schema_version'] == storage.SCHEMA_VERSION and m['crop_size'] == 32 and m['seed'] == 3
    assert m['joint_space'] == list(synth.PRESETS['coco_like'].formats) and len(m['joint_names']) == 77
    assert (m['n_examples'], m['first_index'], m['split_examples'], m['shard_index'], m['n_shards']) == (2, 3, 5, 1, 2)
    assert m['dataset_index'] == 1 and 'procedural' in m['motion_source']
    assert synth.DatasetSpec.from_json(m['spec_json']).n_train == 5
    assert len(shard) == 2
    example = shard[1]
    assert example['dataset_name'] == 'coco_like' and example['image'].shape == (32, 32, 3)
    # Identical to generating example 4 of the split directly.
    motion = synth.PreparedMotion(synth.load_motion_splits(None, seed=3).train)
    direct = synth.render_example(_tiny_specs()[1], motion, 'train', 4, seed=3, dataset_index=1)
    for key, value in direct.items():
        np.testing.assert_array_equal(example[key], value, err_msg=key)


def test_random_access_in_any_order_with_repeats(made):
    _, paths = made
    dataset = storage.open_dataset(paths['h36m_like']['train'])
    assert len(dataset) == 5 and dataset.metadata['n_examples'] == 5
    batch = dataset.get(np.array([4, 0, 4, 2]))
    assert batch['image'].shape == (4, 32, 32, 3)
    for row, i in enumerate([4, 0, 4, 2]):
        single = dataset[i]
        for key in storage.FIELDS:
            np.testing.assert_array_equal(batch[key][row], single[key])
    np.testing.assert_array_equal(batch['example_id'], [4, 0, 4, 2])
    bulk = dataset.arrays(['coords2d', 'example_id'])
    assert bulk['coords2d'].shape == (5, 77, 2)
    np.testing.assert_array_equal(bulk['example_id'], np.arange(5))
    with pytest.raises(ValueError, match=r'indices must be in \[0, 5\)'):
        dataset.get(np.array([5]))
    with pytest.raises(IndexError):
        dataset[7]
    same = storage.open_dataset(made[0], 'h36m_like', 'train')
    np.testing.assert_array_equal(same.get(np.arange(5))['image'], dataset.get(np.arange(5))['image'])


def test_reads_are_thread_safe(made):
    _, paths = made
    shard = storage.open_shard(paths['coco_like']['val'][0])
    expected = shard.get(np.arange(len(shard)))['image']
    errors = []

    def read():
        for _ in range(50):
            idx = np.random.default_rng(threading.get_ident() % 1000).integers(0, len(shard), 3)
            if not np.array_equal(shard.get(idx)['image'], expected[idx]):
                errors.append(idx)
    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_existing_shards_are_reused(made, monkeypatch):
    out, paths = made
    mtimes = {p: os.stat(p).st_mtime_ns for d in paths.values() for ps in d.values() for p in ps}

    def fail(*args, **kwargs):
        raise AssertionError('shards were regenerated')
    monkeypatch.setattr(synth, 'generate_examples', fail)
    again = storage.ensure_datasets(out, _tiny_specs(), seed=3, shard_size=3, progress=False)
    assert again == paths
    assert mtimes == {p: os.stat(p).st_mtime_ns for p in mtimes}


def test_same_seed_identical_arrays_other_seed_different(tmp_path, made):
    _, paths = made
    spec = _tiny_specs(['coco_like'])
    other = storage.ensure_datasets(tmp_path / 'a', [_tiny_specs()[0]] + spec, seed=3, shard_size=3,
                                    splits=['val'], progress=False)
    a, _ = storage.read_shard(paths['coco_like']['val'][0])
    b, _ = storage.read_shard(other['coco_like']['val'][0])
    for key in storage.FIELDS:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    third = storage.ensure_datasets(tmp_path / 'b', spec, seed=4, shard_size=3, splits=['val'], progress=False)
    c, _ = storage.read_shard(third['coco_like']['val'][0])
    assert not np.array_equal(a['image'], c['image'])


def test_changed_parameters_regenerate(tmp_path):
    spec = _tiny_specs(['h36m_like'])
    first = storage.ensure_datasets(tmp_path, spec, seed=1, splits=['test'], progress=False)
    path = first['h36m_like']['test'][0]
    digest = storage.read_metadata(path)['params_hash']
    messages = []
    changed = [dataclasses.replace(spec[0], appearance=dataclasses.replace(spec[0].appearance, noise_std=0.0))]
    storage.ensure_datasets(tmp_path, changed, seed=1, splits=['test'], log=messages.append)
    assert storage.read_metadata(path)['params_hash'] != digest
    assert any('generation parameters changed, regenerating' in m for m in messages)


def _write_valid(path):
    spec = _tiny_specs(['h36m_like'])[0]
    arrays = synth.empty_arrays(spec)
    metadata = dict(generator_version='x', name='h36m_like', split='train', skeleton='h36m_17',
                    joint_space=list(spec.formats), joint_names=list(spec.joint_space.names), label_kind='3d',
                    crop_size=32, seed=0, motion_source='none', n_examples=0, split_examples=0,
                    first_index=0, shard_index=0, n_shards=1, dataset_index=0, spec_json=spec.to_json(),
                    params_hash='0', generation='0')
    return storage.write_shard(path, arrays, metadata)


def test_corrupt_or_foreign_files_are_reported(tmp_path, reseal):
    text = tmp_path / 'notes.h5'
    text.write_text('hello')
    with pytest.raises(ValueError, match='notes.h5: not an HDF5 file'):
        storage.open_shard(text)
    foreign = tmp_path / 'foreign.h5'
    with h5py.File(foreign, 'w') as f:
        f['x'] = np.arange(3)
    with pytest.raises(ValueError, match='foreign.h5: not a posekit dataset shard'):
        storage.open_shard(foreign)
    path = _write_valid(tmp_path / 'ok.h5')
    assert len(storage.open_shard(path)) == 0
    with h5py.File(path, 'a') as f:
        f.attrs['schema_version'] = 99
    with pytest.raises(ValueError, match='ok.h5: HDF5 metadata damaged'):  # an edit after writing ...
        storage.read_metadata(path)
    reseal(path)  # ... or a consistent file of another version
    with pytest.raises(ValueError, match=f'ok.h5: schema version 99, this posekit reads schema version '
                                         f'{storage.SCHEMA_VERSION}'):
        storage.read_metadata(path)
    with h5py.File(path, 'a') as f:
        del f.attrs['schema_version']
    reseal(path)
    with pytest.raises(ValueError, match='ok.h5: missing schema_version'):
        storage.read_metadata(path)
    path = _write_valid(tmp_path / 'short.h5')
    with h5py.File(path, 'a') as f:
        f.attrs['n_examples'] = 4
        f.attrs['split_examples'] = 4
    with pytest.raises(ValueError, match="short.h5: HDF5 metadata damaged"):
        storage.open_shard(path)
    reseal(path)
    with pytest.raises(ValueError, match=r"short.h5: dataset 'image': truncated arrays: image has 0 rows, "
                                         r"expected n_examples = 4"):
        storage.open_shard(path)
    with pytest.raises(FileNotFoundError):
        storage.open_shard(tmp_path / 'missing.h5')


def test_truncated_file_is_reported(made, tmp_path):
    _, paths = made
    source = paths['h36m_like']['train'][0]
    data = open(source, 'rb').read()
    cut = tmp_path / 'cut.h5'
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match='cut.h5: (corrupt or truncated|truncated file)'):
        storage.open_shard(cut)


def test_ensure_datasets_refuses_to_overwrite_a_foreign_file(tmp_path):
    spec = _tiny_specs(['coco_like'])
    target = storage.shard_path(tmp_path, 'coco_like', 'test', 0, 1)
    os.makedirs(os.path.dirname(target))
    with open(target, 'w') as f:
        f.write('not mine')
    with pytest.raises(ValueError, match='test-000-of-001.h5: not an HDF5 file'):
        storage.ensure_datasets(tmp_path, spec, splits=['test'], progress=False)
    paths = storage.ensure_datasets(tmp_path, spec, splits=['test'], progress=False, overwrite=True)
    assert len(storage.open_shard(paths['coco_like']['test'][0])) == 2


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match='seed must be a non-negative int, got -1'):
        storage.ensure_datasets(tmp_path, _tiny_specs(), seed=-1)
    with pytest.raises(ValueError, match='dataset names must be unique'):
        storage.ensure_datasets(tmp_path, _tiny_specs(['coco_like', 'coco_like']))
    with pytest.raises(ValueError, match="splits must be among .* got 'dev'"):
        storage.ensure_datasets(tmp_path, _tiny_specs(), splits=['dev'])
    with pytest.raises(ValueError, match='shard_size must be a positive int, got 0'):
        storage.shard_ranges(10, 0)
    assert storage.shard_ranges(5, 3) == [(0, 3), (3, 2)] and storage.shard_ranges(0, 3) == [(0, 0)]


def test_progress_bar_prints_plain_lines():
    stream = io.StringIO()
    bar = storage.Progress('demo/train', 4, stream=stream, interval_s=0.0)
    for i in range(1, 5):
        bar.update(i)
    lines = stream.getvalue().strip().split('\n')
    assert len(lines) == 4 and lines[-1].startswith('demo/train [########################] 4/4 100.0%')


def test_make_datasets_cli(tmp_path, capsys):
    argv = ['--out', str(tmp_path), '--preset', 'smoke', '--datasets', 'mpi_like', '--splits', 'val',
            '--crop-size', '32', '--seed', '2', '--quiet']
    assert make_datasets.main(argv) == 0
    paths = json.loads(capsys.readouterr().out.strip().split('\n')[-1])
    shard = storage.open_shard(paths['mpi_like']['val'][0])
    assert len(shard) == synth.SIZE_PRESETS['smoke']['mpi_like'][1] and shard.metadata['seed'] == 2
    with open(paths['mpi_like']['val'][0], 'r+b') as f:
        f.write(b'garbage!')  # a damaged shard of ours: regenerated with a warning
    with pytest.warns(storage.DamagedShardWarning, match='integrity header missing'):
        assert make_datasets.main(argv) == 0
    assert len(storage.open_shard(paths['mpi_like']['val'][0], verify='full')) == len(shard)
    with open(paths['mpi_like']['val'][0], 'wb') as f:
        f.write(b'garbage!')  # not a posekit shard: refused
    assert make_datasets.main(argv) == 2
    assert 'not an HDF5 file' in capsys.readouterr().err
