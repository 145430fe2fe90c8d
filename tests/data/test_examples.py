"""Tests of posekit.data.examples: the full-image example contract and its HDF5 index."""
import os

import h5py
import numpy as np
import pytest

from posekit.data import examples


def _example(i, skeleton='h36m_17', **changes):
    rng = np.random.default_rng(i)
    fields = dict(skeleton=skeleton, dataset='lab', image_path=f'frames/{i:04d}.jpg', intrinsics=[[500, 0, 320], [0, 500, 240], [0, 0, 1]],
                  box=[10, 20, 100, 200], joints3d=rng.normal(0, 300, (17, 3)) + [0, 0, 4000],
                  joints2d=rng.uniform(0, 400, (17, 2)), subject=f's{i % 2}', frame=i)
    fields.update(changes)
    return examples.make_example(**fields)


def test_make_example_defaults_and_validation():
    e = _example(0)
    assert e['is_3d'] and e['joint_valid'].all() and e['distortion'].shape == (5,)
    np.testing.assert_array_equal(e['rotation'], np.eye(3))
    two_d = examples.make_example(skeleton='coco_17', dataset='c', image_path='a.jpg', intrinsics=np.eye(3),
                                  box=[0, 0, 5, 5], joints2d=np.where(np.arange(17)[:, None] < 5, np.ones((17, 2)), np.nan))
    assert not two_d['is_3d'] and two_d['joint_valid'].sum() == 5 and np.isnan(two_d['joints3d']).all()
    with pytest.raises(ValueError, match=r"joints3d must have shape \(17, 3\) for skeleton 'h36m_17', got \(16, 3\)"):
        _example(0, joints3d=np.zeros((16, 3)))
    with pytest.raises(ValueError, match="skeleton: unknown skeleton format 'h36m'"):
        _example(0, skeleton='h36m')
    with pytest.raises(ValueError, match=r'box must be \(x, y, w, h\) with w, h > 0 px, got \[10.0, 20.0, 0.0, 5.0\]'):
        _example(0, box=[10, 20, 0, 5])
    with pytest.raises(ValueError, match='rotation must be a proper rotation matrix'):
        _example(0, rotation=np.diag([1.0, 1.0, -1.0]))
    with pytest.raises(ValueError, match='intrinsics must be .* with fx, fy > 0'):
        _example(0, intrinsics=np.zeros((3, 3)))
    with pytest.raises(ValueError, match='an example needs image_path or image_bytes'):
        _example(0, image_path='')
    with pytest.raises(ValueError, match='higher-order terms are not supported'):
        _example(0, distortion=[0.1, 0, 0, 0, 0, 0.2, 0, 0])


def test_index_round_trip(tmp_path):
    items = [_example(i) for i in range(5)] + [_example(5, image_path='', image_bytes=b'\xff\xd8jpeg')]
    path = examples.write_index(tmp_path / 'idx' / 'lab_train.h5', items, 'train', root=tmp_path)
    source = examples.open_index(path)
    assert len(source) == 6 and source.skeleton == 'h36m_17' and source.root == str(tmp_path)
    got = source.get([3, 0, 3, 5])
    np.testing.assert_array_equal(got['example_id'], [3, 0, 3, 5])
    assert got['image_path'].tolist() == ['frames/0003.jpg', 'frames/0000.jpg', 'frames/0003.jpg', '']
    assert got['image_bytes'][3] == b'\xff\xd8jpeg' and got['image_bytes'][0] == b''
    for field in examples.ARRAY_FIELDS:
        np.testing.assert_array_equal(got[field][1], np.asarray(items[0][field], examples.ARRAY_FIELDS[field][0]))
    assert examples.open_index(path, root='/elsewhere').root == '/elsewhere'
    for example in source.examples():
        examples.validate_example(example)


def test_index_write_is_atomic(tmp_path):
    path = tmp_path / 'lab.h5'
    examples.write_index(path, [_example(0)], 'train')
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"an index holds one skeleton; the examples have \['h36m_16', 'h36m_17'\]"):
        examples.write_index(path, [_example(0), examples.make_example(
            skeleton='h36m_16', dataset='lab', image_path='a.jpg', intrinsics=np.eye(3), box=[0, 0, 1, 1])], 'train')
    assert path.read_bytes() == before and os.listdir(tmp_path) == ['lab.h5']  # no partial or temporary file


def test_bad_and_foreign_files_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match='full-image index .*missing.h5'):
        examples.open_index(tmp_path / 'missing.h5')
    text = tmp_path / 'text.h5'
    text.write_text('not hdf5')
    with pytest.raises(examples.IndexFormatError, match='text.h5: not an HDF5 file'):
        examples.open_index(text)
    foreign = tmp_path / 'foreign.h5'
    with h5py.File(foreign, 'w') as f:
        f.attrs['format_tag'] = 'something'
    with pytest.raises(examples.IndexFormatError, match="foreign.h5: not a posekit full-image index"):
        examples.open_index(foreign)
    path = examples.write_index(tmp_path / 'ok.h5', [_example(0), _example(1)], 'train')
    with h5py.File(path, 'a') as f:
        f.attrs['schema_version'] = '1'
    with pytest.raises(examples.IndexFormatError, match=r"ok.h5: index schema_version '1' \(str\)"):
        examples.open_index(path)
    path = examples.write_index(tmp_path / 'short.h5', [_example(0), _example(1)], 'train')
    with h5py.File(path, 'a') as f:
        del f['box']
        f.create_dataset('box', data=np.zeros((1, 4), np.float32))
    with pytest.raises(examples.IndexFormatError, match=r"short.h5: n_examples=2 but fields \['box'\]"):
        examples.open_index(path)
    good = examples.write_index(tmp_path / 'good.h5', [_example(0), _example(1)], 'train')
    with pytest.raises(IndexError, match=r'indices must be in \[0, 2\) for .*good.h5, got \[2\]'):
        examples.open_index(good).get([2])
