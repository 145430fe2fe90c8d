"""Shard integrity (issue 18 item 3, item 5's shard messages; issue 16 item 4): checksums, schema and value
checks, regeneration of damaged shards, one generation per dataset, and a fuzz test of the reader."""
import ast
import dataclasses
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from posekit.data import storage, synth

REPO = pathlib.Path(__file__).resolve().parents[2]
FUZZ_TRIALS = 600
"""Byte-flip trials of the fuzz test (about 3 s on the 2-core machine; fixed seed)."""


def _spec(n_train=4, name='h36m_like'):
    return dataclasses.replace(synth.PRESETS[name], n_train=n_train, n_val=0, n_test=0, crop_size=32)


@pytest.fixture(scope='module')
def pristine(tmp_path_factory):
    """A folder with two train shards (3 + 1 examples) and their arrays as written."""
    out = tmp_path_factory.mktemp('pristine')
    paths = storage.ensure_datasets(out, [_spec()], seed=5, shard_size=3, splits=['train'], progress=False)
    arrays = [storage.read_shard(p)[0] for p in paths['h36m_like']['train']]
    return out, paths['h36m_like']['train'], arrays


@pytest.fixture
def copy(pristine, tmp_path):
    """A fresh copy of the pristine folder; returns (out_dir, shard paths, arrays)."""
    out, paths, arrays = pristine
    shutil.copytree(out, tmp_path / 'data')
    return tmp_path / 'data', [str(tmp_path / 'data' / os.path.relpath(p, out)) for p in paths], arrays


def _ensure(out):
    return storage.ensure_datasets(out, [_spec()], seed=5, shard_size=3, splits=['train'], progress=False)


def _flip_image_byte(path, example, offset=100):
    with h5py.File(path, 'r') as f:
        image = f['image']
        position = image.id.get_offset() + example * int(np.prod(image.shape[1:])) + offset
    with open(path, 'r+b') as f:
        f.seek(position)
        byte = f.read(1)
        f.seek(position)
        f.write(bytes([byte[0] ^ 0x5A]))


def _set(path, key, fn):
    with h5py.File(path, 'a') as f:
        value = f[key][...]
        f[key][...] = fn(value)


def _replace(path, key, dtype):
    with h5py.File(path, 'a') as f:
        value = f[key][...]
        del f[key]
        f.create_dataset(key, data=value.astype(dtype))


METADATA_DAMAGED = ('(HDF5 metadata damaged: the file attributes, array headers or file structure differ from the '
                    'SHA-256 recorded when the shard was written|bytes appended after writing)')
DAMAGE = {  # edits of a written shard in place (as a disk, a copy or a careless user could make them)
    'changed coords3d': (lambda p: _set(p, 'coords3d', lambda v: v + np.float32(1.0)), "dataset 'coords3d': damaged"),
    'NaN coords3d': (lambda p: _set(p, 'coords3d', lambda v: np.where(np.arange(v.size).reshape(v.shape) == 7, np.nan, v)),
                     "dataset 'coords3d': damaged"),
    'inf coords2d': (lambda p: _set(p, 'coords2d', lambda v: np.full_like(v, np.inf)), "dataset 'coords2d': damaged"),
    'zeroed intrinsics': (lambda p: _set(p, 'intrinsics', np.zeros_like), "dataset 'intrinsics': damaged"),
    'changed example_id': (lambda p: _set(p, 'example_id', lambda v: v[::-1]), "dataset 'example_id': damaged"),
    'changed digests': (lambda p: _set(p, storage.IMAGE_DIGESTS, lambda v: v ^ 1), "dataset 'image_sha256': damaged"),
    # Metadata edits: refused before libhdf5 parses the changed structures (which can hang it).
    'float32 image': (lambda p: _replace(p, 'image', np.float32), METADATA_DAMAGED),
    'int8 coords3d': (lambda p: _replace(p, 'coords3d', np.int8), METADATA_DAMAGED),
    'changed attribute': (lambda p: _set_attr(p, 'seed', 6), METADATA_DAMAGED),
    'string crop_size': (lambda p: _set_attr(p, 'crop_size', '32'), METADATA_DAMAGED),
    'truncated': (lambda p: os.truncate(p, os.path.getsize(p) - 100), 'truncated file: .* bytes, .* when written'),
    'header byte': (lambda p: _flip_byte(p, 200), 'integrity header damaged'),
    'header magic': (lambda p: _flip_byte(p, 3), 'integrity header missing'),
}


def _flip_byte(path, position):
    with open(path, 'r+b') as f:
        f.seek(position)
        byte = f.read(1)
        f.seek(position)
        f.write(bytes([byte[0] ^ 0x01]))


def _rewrite_without_header(source, target, attrs=None, dtypes=None):
    """The shard as another tool (or posekit before schema 2) would write it: plain HDF5, no integrity header."""
    with h5py.File(source, 'r') as f, h5py.File(target, 'w') as g:
        for key, value in f.attrs.items():
            g.attrs[key] = value
        for key, value in (attrs or {}).items():
            g.attrs[key] = value
        for key in f:
            g.create_dataset(key, data=f[key][...].astype((dtypes or {}).get(key, f[key].dtype)))
    return target


def _set_attr(path, key, value):
    with h5py.File(path, 'a') as f:
        f.attrs[key] = value


@pytest.mark.parametrize('damage', sorted(DAMAGE))
def test_damaged_shard_is_refused_naming_path_and_dataset_then_regenerated(copy, damage):
    out, paths, arrays = copy
    mutate, message = DAMAGE[damage]
    mutate(paths[0])
    with pytest.raises(ValueError, match=message) as info:
        storage.open_shard(paths[0])
    assert str(info.value).startswith(f'{paths[0]}: ')
    with pytest.raises(ValueError, match=message):
        storage.open_dataset(paths)
    with pytest.raises(ValueError, match=message):
        storage.read_metadata(paths[0]) if 'dataset' not in message else storage.open_shard(paths[0], verify='full')
    with pytest.warns(storage.DamagedShardWarning, match=f'{paths[0]}: .*{message}.*; regenerating it'):
        again = _ensure(out)
    assert again['h36m_like']['train'] == paths
    restored = storage.read_shard(paths[0])[0]
    for key in storage.FIELDS:
        np.testing.assert_array_equal(restored[key], arrays[0][key], err_msg=key)


def test_flipped_image_byte_is_detected_lazily_and_in_full(copy):
    out, paths, arrays = copy
    _flip_image_byte(paths[0], example=2)
    shard = storage.open_shard(paths[0])  # lazy: labels checked, images when served
    np.testing.assert_array_equal(shard.get(np.array([0, 1]))['image'], arrays[0]['image'][:2])
    with pytest.raises(ValueError, match=f"{paths[0]}: dataset 'image': example 2 is damaged"):
        shard.get(np.array([1, 2]))
    with pytest.raises(ValueError, match="dataset 'image': example 2 is damaged"):
        shard[2]
    with pytest.raises(ValueError, match=f"{paths[0]}: dataset 'image': example 2 is damaged"):
        storage.open_shard(paths[0], verify='full')
    with pytest.raises(ValueError, match="dataset 'image': example 2 is damaged"):
        storage.open_dataset(paths).arrays()
    with pytest.raises(ValueError, match="dataset 'image': example 2 is damaged"):
        storage.open_shard(paths[0], in_memory=True)
    with pytest.warns(storage.DamagedShardWarning, match="dataset 'image': example 2 is damaged"):
        _ensure(out)
    np.testing.assert_array_equal(storage.read_shard(paths[0])[0]['image'], arrays[0]['image'])


@pytest.mark.parametrize('edit, message', [
    (lambda p: _set(p, 'coords3d', lambda v: np.where(np.arange(v.size).reshape(v.shape) == 7, np.nan, v)),
     "dataset 'coords3d': example 0 holds non-finite coordinates"),
    (lambda p: _set(p, 'coords2d', lambda v: np.where(np.arange(v.size).reshape(v.shape) == v.size - 1, np.inf, v)),
     "dataset 'coords2d': example 2 holds non-finite coordinates"),
    (lambda p: _set(p, 'intrinsics', lambda v: np.where(np.arange(v.size).reshape(v.shape) >= 9, 0, v)),
     r"dataset 'intrinsics': example 1 is not a camera matrix .*: \[\[0.0, 0.0, 0.0\]"),
    (lambda p: _replace(p, 'image', np.float32), "dataset 'image': has dtype float32, expected uint8"),
    (lambda p: _replace(p, 'coords3d', np.int8), "dataset 'coords3d': has dtype int8, expected float32"),
    (lambda p: _replace(p, 'joint_valid', np.float64), "dataset 'joint_valid': has dtype float64, expected bool"),
    (lambda p: _set_attr(p, 'joint_names', '["Hips", '), "attribute 'joint_names': is not valid JSON"),
    (lambda p: _set_attr(p, 'joint_space', '{"a": 1}'), "attribute 'joint_space': must be a JSON list, got the dict"),
    (lambda p: _set_attr(p, 'crop_size', 'abc'), "attribute 'crop_size': must be an int >= 1, got the str 'abc'"),
    (lambda p: _set_attr(p, 'crop_size', '32'), "attribute 'crop_size': must be an int >= 1, got the str '32'"),
    (lambda p: _set_attr(p, 'split', 'dev'), r"attribute 'split': must be one of \('train', 'val', 'test'\), got the str 'dev'"),
])
def test_schema_and_value_checks_hold_even_with_valid_checksums(copy, edit, message, reseal):
    """Edits with recomputed checksums (a buggy writer or a forger) are still refused by the schema."""
    _, paths, _ = copy
    edit(paths[0])
    reseal(paths[0])
    with pytest.raises(ValueError, match=message) as info:
        storage.open_shard(paths[0])
    assert str(info.value).startswith(f'{paths[0]}: ')


def test_schema_version_messages_say_the_type(copy, reseal):
    _, paths, _ = copy
    _set_attr(paths[0], 'schema_version', '2')
    reseal(paths[0])
    with pytest.raises(ValueError) as info:
        storage.read_metadata(paths[0])
    message = str(info.value)
    assert message == (f"{paths[0]}: attribute 'schema_version': is the str '2', expected an int (this posekit "
                       f"reads schema version {storage.SCHEMA_VERSION})")
    _set_attr(paths[0], 'schema_version', '1')
    reseal(paths[0])
    assert 'is the str \'1\', expected an int' in str(pytest.raises(ValueError, storage.read_metadata, paths[0]).value)
    _set_attr(paths[0], 'schema_version', 1)
    reseal(paths[0])
    with pytest.raises(storage.SchemaVersionError, match=f'schema version 1, this posekit reads schema version '
                                                         f'{storage.SCHEMA_VERSION}; regenerate it'):
        storage.read_metadata(paths[0])


def test_arrays_and_attributes_of_other_writers_are_checked_against_the_schema(pristine, tmp_path):
    _, paths, _ = pristine
    for attrs, dtypes, message in [
            ({}, {'image': np.float32}, "dataset 'image': has dtype float32, expected uint8"),
            ({}, {'coords3d': np.int8}, "dataset 'coords3d': has dtype int8, expected float32"),
            ({'crop_size': 'abc'}, {}, "attribute 'crop_size': must be an int >= 1, got the str 'abc'"),
            ({'joint_names': '["Hips", '}, {}, "attribute 'joint_names': is not valid JSON"),
            ({'schema_version': '1'}, {}, "attribute 'schema_version': is the str '1', expected an int"),
            ({}, {}, 'integrity header missing .*: damaged, or not written by posekit')]:
        target = _rewrite_without_header(paths[0], tmp_path / 'other.h5', attrs, dtypes)
        with pytest.raises(ValueError, match=message) as info:
            storage.open_shard(target)
        assert str(info.value).startswith(f'{target}: ')


def test_shards_of_an_older_schema_version_are_regenerated(copy, tmp_path):
    out, paths, arrays = copy
    old = _rewrite_without_header(paths[1], tmp_path / 'old.h5', {'schema_version': 1})
    shutil.copy(old, paths[1])
    messages = []
    storage.ensure_datasets(out, [_spec()], seed=5, shard_size=3, splits=['train'], log=messages.append)
    assert any(f'{paths[1]}: schema version 1, this posekit reads schema version {storage.SCHEMA_VERSION}'
               in m and 'regenerating' in m for m in messages)
    assert storage.read_metadata(paths[1])['schema_version'] == storage.SCHEMA_VERSION


def test_a_foreign_hdf5_file_in_the_way_is_not_replaced(copy):
    out, paths, _ = copy
    with h5py.File(paths[1], 'w') as f:
        f.attrs['format_tag'] = 'someone-else'
    with pytest.raises(ValueError, match=f'{paths[1]}: not a posekit dataset shard'):
        _ensure(out)


def test_a_full_disk_names_the_shard(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(h5py.Group, 'create_dataset', full)
    with pytest.raises(OSError) as info:
        storage.ensure_datasets(tmp_path, [_spec(2)], splits=['train'], progress=False)
    path = storage.shard_path(tmp_path, 'h36m_like', 'train', 0, 1)
    assert info.value.errno == 28 and str(info.value) == (f'[Errno 28] cannot write dataset shard {path}: '
                                                          f'No space left on device')
    assert os.listdir(os.path.dirname(path)) == []  # no temporary file left behind


def test_writing_refuses_what_reading_refuses(tmp_path, pristine):
    _, paths, arrays = pristine
    metadata = {k: v for k, v in storage.read_metadata(paths[0]).items()
                if k not in ('integrity_sha256', 'format_tag', 'schema_version')}
    bad = dict(arrays[0], coords3d=np.where(arrays[0]['coords3d'] > 0, np.nan, arrays[0]['coords3d']))
    with pytest.raises(ValueError, match="x.h5: dataset 'coords3d': example 0 holds non-finite"):
        storage.write_shard(tmp_path / 'x.h5', bad, metadata)
    with pytest.raises(ValueError, match="x.h5: dataset 'image': has dtype float32, expected uint8"):
        storage.write_shard(tmp_path / 'x.h5', dict(arrays[0], image=arrays[0]['image'].astype(np.float32)), metadata)
    with pytest.raises(ValueError, match="x.h5: attribute 'crop_size': must be an int >= 1, got the str '32'"):
        storage.write_shard(tmp_path / 'x.h5', arrays[0], dict(metadata, crop_size='32'))
    with pytest.raises(ValueError, match=r"metadata has unknown attributes \['colour'\]"):
        storage.write_shard(tmp_path / 'x.h5', arrays[0], dict(metadata, colour='red'))
    assert not (tmp_path / 'x.h5').exists()


# ---------------------------------------------------------------------------------------- generations
def test_regenerating_with_another_shard_size_reads_one_generation(tmp_path):
    spec = [_spec(6)]
    first = storage.ensure_datasets(tmp_path, spec, seed=1, shard_size=4, splits=['train'], progress=False)
    old_paths = first['h36m_like']['train']
    kept = tmp_path / 'kept-old-shard.h5'
    shutil.copy(old_paths[0], kept)
    messages = []
    second = storage.ensure_datasets(tmp_path, spec, seed=1, shard_size=2, splits=['train'], log=messages.append)
    new_paths = second['h36m_like']['train']
    names = ['train-000-of-003.h5', 'train-001-of-003.h5', 'train-002-of-003.h5']
    assert [os.path.basename(p) for p in new_paths] == names
    assert sorted(os.listdir(tmp_path / 'h36m_like')) == names
    assert sum('removed (a shard of an earlier generation of h36m_like/train)' in m for m in messages) == 2
    dataset = storage.open_dataset(tmp_path, 'h36m_like', 'train')
    assert len(dataset) == 6 and dataset.metadata['paths'] == new_paths
    np.testing.assert_array_equal(dataset.get(np.arange(6))['example_id'], np.arange(6))
    # An old shard put back beside the new ones: refused, never combined.
    shutil.copy(kept, tmp_path / 'h36m_like' / os.path.basename(old_paths[0]))
    with pytest.raises(ValueError, match=r'shards of 2 different generations of \(.h36m_like., .train.\) cannot be combined'):
        storage.open_dataset(tmp_path, 'h36m_like', 'train')
    with pytest.raises(ValueError, match='different generations'):
        storage.open_dataset([kept] + new_paths)
    with pytest.raises(ValueError, match=r'incomplete or inconsistent shards of h36m_like/train: got shard indices \[1, 2\]'):
        storage.open_dataset(new_paths[1:])
    with pytest.raises(ValueError, match=r'incomplete or inconsistent shards .*got shard indices \[0, 0, 1, 2\]'):
        storage.open_dataset(new_paths + new_paths[:1])


def test_fingerprint_follows_content(copy, reseal):
    _, paths, _ = copy
    before = storage.fingerprint(paths)
    assert storage.fingerprint(list(reversed(paths))) == before and len(before) == 64
    _set(paths[1], 'coords3d', lambda v: v + np.float32(1.0))
    reseal(paths[1])
    assert storage.fingerprint(paths) != before


# --------------------------------------------------------------------------------------- worker state
def test_storage_has_no_module_global_worker_state():
    """Issue 16 item 4: no module-level container that functions fill in (the workers' motion)."""
    tree = ast.parse(pathlib.Path(storage.__file__).read_text())
    module_names = {t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
                    for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                    if isinstance(t, ast.Name)}
    mutated = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            mutated.update(node.names)
        if isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name) and t.value.id in module_names:
                    mutated.add(t.value.id)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id in module_names
                and node.func.attr in ('clear', 'update', 'append', 'extend', 'pop', 'setdefault', 'add')):
            mutated.add(node.func.value.id)
    assert mutated == set()


PARALLEL = '''
    import dataclasses, json, sys
    import numpy as np
    from posekit.data import storage, synth
    specs = [dataclasses.replace(synth.PRESETS[n], n_train=5, n_val=2, n_test=0, crop_size=32)
             for n in ('h36m_like', 'coco_like')]
    one = storage.ensure_datasets(sys.argv[1] + '/one', specs, seed=2, shard_size=2, splits=['train', 'val'],
                                  workers=1, progress=False)
    two = storage.ensure_datasets(sys.argv[1] + '/two', specs, seed=2, shard_size=2, splits=['train', 'val'],
                                  workers=2, progress=False)
    same = all(np.array_equal(storage.read_shard(a)[0][k], storage.read_shard(b)[0][k])
               for name in one for split in one[name] for a, b in zip(one[name][split], two[name][split])
               for k in storage.FIELDS)
    # A worker's error reaches the caller with its own message (a full disk, naming the shard).
    import h5py
    def full(*args, **kwargs):
        raise OSError(28, 'No space left on device')
    h5py.Group.create_dataset = full
    try:
        storage.ensure_datasets(sys.argv[1] + '/three', specs, seed=2, shard_size=2, splits=['train'], workers=2,
                                progress=False)
        error = None
    except OSError as e:
        error = str(e)
    print(json.dumps({'same': same, 'shards': sum(len(p) for d in two.values() for p in d.values()), 'error': error}))
'''


def test_parallel_generation_equals_serial_and_reports_worker_errors(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    run = subprocess.run([sys.executable, '-c', textwrap.dedent(PARALLEL), str(tmp_path)], env=env, cwd=str(REPO),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    import json
    report = json.loads(run.stdout.strip().split('\n')[-1])
    assert report['same'] and report['shards'] == 2 * (3 + 1)
    assert report['error'].startswith('[Errno 28] cannot write dataset shard ' + str(tmp_path / 'three'))


# ------------------------------------------------------------------------------------------------ fuzz
def test_fuzzed_shards_are_refused_or_read_unchanged(pristine, tmp_path):
    """Random byte flips in the data and the metadata (HDF5 structures, attributes) of a small shard: every
    mutated file is either refused with a ValueError naming it or read back exactly as written."""
    _, paths, arrays = pristine
    source, original = paths[0], arrays[0]
    original_meta = storage.read_metadata(source)
    data = pathlib.Path(source).read_bytes()
    in_data = np.zeros(len(data), bool)
    with h5py.File(source, 'r') as f:
        for key in f:
            offset = f[key].id.get_offset()
            in_data[offset:offset + f[key].id.get_storage_size()] = True
    pools = {'data': np.nonzero(in_data)[0], 'metadata': np.nonzero(~in_data)[0]}
    rng = np.random.default_rng(0)
    target = str(tmp_path / 'fuzzed.h5')
    outcomes, problems = {}, []
    for trial in range(FUZZ_TRIALS):
        region = 'data' if trial % 2 else 'metadata'
        mutated = bytearray(data)
        for _ in range(int(rng.integers(1, 4))):
            mutated[int(rng.choice(pools[region]))] ^= int(rng.integers(1, 256))
        pathlib.Path(target).write_bytes(bytes(mutated))
        for verify in storage.VERIFY_MODES:
            try:
                with storage.open_shard(target, verify=verify) as shard:
                    got, meta = shard.arrays(), shard.metadata
            except ValueError as e:
                outcome = 'refused'
                if not str(e).startswith(f'{target}: '):
                    problems.append((trial, verify, 'message without the path', str(e)[:200]))
            except Exception as e:  # noqa: BLE001 - the finding this test looks for
                outcome = type(e).__name__
                problems.append((trial, verify, 'undocumented exception', f'{type(e).__name__}: {e}'[:200]))
            else:
                unchanged = meta == original_meta and all(
                    got[k].dtype == original[k].dtype and np.array_equal(got[k], original[k]) for k in storage.FIELDS)
                outcome = 'read unchanged' if unchanged else 'ACCEPTED CHANGED DATA'
                if not unchanged:
                    problems.append((trial, verify, 'silent acceptance', ''))
            outcomes[(region, outcome)] = outcomes.get((region, outcome), 0) + 1
    assert problems == [], (problems[:5], outcomes)
    # Both regions were exercised and damage in the data was always found.
    assert outcomes.get(('data', 'refused'), 0) == FUZZ_TRIALS  # half the trials, two modes each
    assert outcomes.get(('metadata', 'refused'), 0) > FUZZ_TRIALS // 2
