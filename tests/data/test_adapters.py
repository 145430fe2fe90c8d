"""Tests of posekit.data.adapters on the real samples of ../shared/data/real_samples (test data only) and on
manifests the tests write.

Counts of kept people are checked against an independent pass over each annotation file.
"""
import json
import pathlib
import pickle

import numpy as np
import pytest

from posekit import geometry, skeletons
from posekit.data import adapters, examples

REAL = pathlib.Path(__file__).resolve().parents[3] / 'shared' / 'data' / 'real_samples'
SKIP = 'needs ../shared/data/real_samples beside the clone (present in CI; absent on a fresh user clone)'


@pytest.fixture
def real():
    if not REAL.is_dir():
        pytest.skip(SKIP)
    return REAL


def _project(example):
    camera = geometry.Camera(intrinsic_matrix=example['intrinsics'], distortion_coeffs=example['distortion'])
    points = example['joints3d'].astype(np.float64) @ example['rotation'].T + example['translation']
    return camera.camera_to_image(points), points


def test_registry_names_and_errors():
    assert adapters.names() == ['h36m', 'mpi_inf_3dhp', 'coco', 'mpii', 'panoptic', 'manifest']
    with pytest.raises(KeyError, match="unknown dataset adapter 'h36'; known adapters"):
        adapters.get('h36')
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'val'\) for adapter 'coco', got 'valid'"):
        adapters.load('coco', '/nowhere', 'valid')


@pytest.mark.parametrize('name,split,npz,skeleton', [
    ('h36m', 'train', 'h36m/test_h36m_body3d.npz', 'h36m_17'),
    ('mpi_inf_3dhp', 'train', 'mpi_inf_3dhp/test_3dhp_train.npz', 'mpi_inf_3dhp_17'),
    ('mpi_inf_3dhp', 'test', 'mpi_inf_3dhp/test_3dhp_test.npz', 'mpi_inf_3dhp_17')])
def test_3d_labels_project_onto_the_datasets_2d_labels(real, name, split, npz, skeleton):
    root = real / npz.split('/')[0]
    got = adapters.load(name, str(root), split, annotations=npz.split('/')[1])
    data = np.load(real / npz)
    assert len(got) == len(data['imgname']) and all(e['skeleton'] == skeleton for e in got)
    for e, part in zip(got, data['part']):
        assert (root / e['image_path']).is_file()
        pixels, camera_points = _project(e)
        valid = e['joint_valid']
        assert valid.sum() >= 15
        assert np.abs(pixels - part[:, :2])[valid].max() < 3.0  # px, the acceptance bound
        np.testing.assert_allclose(e['joints2d'], part[:, :2], atol=1e-4)
        assert np.all(camera_points[valid, 2] > 1000)  # mm: people metres in front of the camera
    if name == 'h36m':  # world frame z up, floor at z ~ 0: feet on the floor, the head above them
        for e in got:
            z = e['joints3d'][:, 2]
            assert min(z[3], z[6]) < 150 and z[10] > 400 and np.abs(e['world_up'] - [0, 0, 1]).max() == 0
            assert np.linalg.norm(e['joints3d'][0, :2]) < 2000  # in the capture area


def test_h36m_splits_follow_the_official_subjects(real):
    train = adapters.load('h36m', str(real / 'h36m'), 'train', annotations='test_h36m_body3d.npz')
    test = adapters.load('h36m', str(real / 'h36m'), 'test', annotations='test_h36m_body3d.npz')
    assert {e['subject'] for e in train} == {'S1', 'S5', 'S7', 'S8'} and test == []


def test_coco_keeps_exactly_the_people_of_the_official_rules(real):
    got = adapters.load('coco', str(real / 'coco'), 'val', annotation_file='test_coco.json', image_dir='')
    data = json.loads((real / 'coco' / 'test_coco.json').read_text())
    person = [c['id'] for c in data['categories'] if c['name'] == 'person']
    expected = [a for a in data['annotations']
                if a['category_id'] in person and a['iscrowd'] == 0 and sum(v > 0 for v in a['keypoints'][2::3]) >= 1
                and a['bbox'][2] > 0 and a['bbox'][3] > 0]
    assert len(got) == len(expected) == 12
    for e, a in zip(got, expected):
        kp = np.array(a['keypoints'], float).reshape(17, 3)
        np.testing.assert_array_equal(e['joint_valid'], kp[:, 2] > 0)
        np.testing.assert_allclose(e['joints2d'][kp[:, 2] > 0], kp[kp[:, 2] > 0, :2])
        assert not e['is_3d'] and np.isnan(e['joints3d']).all() and (real / 'coco' / e['image_path']).is_file()
        image = [im for im in data['images'] if im['id'] == a['image_id']][0]
        np.testing.assert_allclose(e['intrinsics'], examples.default_camera(image['height'], image['width']))


def test_mpii_records_boxes_and_matlab_offset(real):
    got = adapters.load('mpii', str(real / 'mpii'), 'train', annotation_file='test_mpii.json', image_dir='')
    data = json.loads((real / 'mpii' / 'test_mpii.json').read_text())
    expected = [r for r in data if any(v > 0 for v in r['joints_vis'])]
    assert len(got) == len(expected) == 5
    for e, r in zip(got, expected):
        vis = np.array(r['joints_vis']) > 0
        np.testing.assert_allclose(e['joints2d'][vis], np.array(r['joints'])[vis] - 1.0)
        side = r['scale'] * 200
        np.testing.assert_allclose(e['box'], [r['center'][0] - side / 2, r['center'][1] - side / 2, side, side],
                                   rtol=1e-6)
        # The joints lie in the box (MPII's scale frames the person).
        x, y, w, h = e['box']
        inside = (e['joints2d'][vis, 0] >= x) & (e['joints2d'][vis, 0] <= x + w)
        assert inside.mean() > 0.9


def test_panoptic_bodies_lie_in_front_of_their_cameras_in_mm(real):
    got = adapters.load('panoptic', str(real / 'panoptic'), 'all')
    n_bodies = 0
    for body_file in (real / 'panoptic').glob('*/hdPose3d_stage1_coco19/*.json'):
        n_bodies += len(json.loads(body_file.read_text())['bodies'])
    cameras = {e['sequence'].split('/')[1] for e in got}
    assert n_bodies == 12 and len(cameras) == 31  # Panoptic's 31 HD cameras
    assert n_bodies * 31 >= len(got) > n_bodies * 20  # most bodies are seen by most cameras
    info = skeletons.get('coco_19')
    for e in got:
        pixels, points = _project(e)
        valid = e['joint_valid']
        assert np.all(points[valid, 2] > 0)
        assert np.all((points[valid, 2] > 1000) & (points[valid, 2] < 8000))  # mm: the dome is ~5 m across
        lsho, lelb = info.names.index('lsho'), info.names.index('lelb')
        if valid[lsho] and valid[lelb]:  # an upper arm is 200-400 mm long
            assert 150 < np.linalg.norm(e['joints3d'][lsho] - e['joints3d'][lelb]) < 450
        np.testing.assert_allclose(pixels[valid], e['joints2d'][valid], atol=1e-3)
        assert e['image_path'].endswith(f"{e['sequence'].split('/')[1]}_{e['frame']:08d}.jpg")


def _manifest_example(i, split='train'):
    return {'image': f'img{i}.jpg', 'split': split, 'box': [10, 20, 100, 200], 'image_size': [480, 640],
            'joints2d': [[50 + j, 60 + j] for j in range(16)], 'subject': f's{i}'}


def test_manifest_json_and_csv(tmp_path):
    path = tmp_path / 'labels.json'
    items = [_manifest_example(0), _manifest_example(1, 'test'),
             dict(_manifest_example(2), joints3d=[[j, 2 * j, 3000 + j] for j in range(16)],
                  camera={'intrinsic_matrix': [[500, 0, 320], [0, 500, 240], [0, 0, 1]],
                          'distortion': [0.1, 0, 0, 0, 0]})]
    path.write_text(json.dumps({'dataset': 'lab', 'skeleton': 'h36m_16', 'examples': items}))
    train = adapters.load('manifest', str(path), 'train')
    assert [e['subject'] for e in train] == ['s0', 's2'] and [e['is_3d'] for e in train] == [False, True]
    np.testing.assert_allclose(train[0]['intrinsics'], examples.default_camera(480, 640))
    assert train[1]['distortion'][0] == 0.1 and adapters.image_root('manifest', str(path)) == str(tmp_path)
    csv = tmp_path / 'labels.csv'
    joints = ' '.join(f'{50 + j} {60 + j}' for j in range(16))
    csv.write_text('dataset,skeleton,image,split,box,joints2d,image_size\n'
                   f'lab,h36m_16,img0.jpg,train,10 20 100 200,{joints},480 640\n')
    (row,) = adapters.load('manifest', str(csv), 'train')
    for field in ('joints2d', 'box', 'intrinsics', 'joint_valid'):
        np.testing.assert_array_equal(row[field], train[0][field])
    bad = tmp_path / 'bad.json'
    bad.write_text(json.dumps({'dataset': 'lab', 'skeleton': 'h36m_99', 'examples': items}))
    with pytest.raises(ValueError, match="unknown skeleton format 'h36m_99'"):
        adapters.load('manifest', str(bad), 'train')
    bad.write_text(json.dumps({'dataset': 'lab', 'skeleton': 'h36m_16',
                               'examples': [dict(_manifest_example(0), joints2d=[[1, 2]])]}))
    with pytest.raises(ValueError, match=r'bad.json, example 0: joints2d must have shape \(16, 2\)'):
        adapters.load('manifest', str(bad), 'train')


def test_camera_pickles_load_only_arrays(tmp_path, real):
    from posekit.data.adapters import _common
    good = _common.load_arrays_pickle(str(real / 'h36m' / 'cameras.pkl'))
    assert len(good) == 44
    evil = tmp_path / 'cameras.pkl'

    class Evil:
        def __reduce__(self):
            import os
            return os.system, ('echo pwned',)

    evil.write_bytes(pickle.dumps({('S1', '1'): Evil()}))
    with pytest.raises(ValueError, match=r'cameras.pkl: refusing to load posix.system'):
        _common.load_arrays_pickle(str(evil))


def test_h36m_cameras_see_the_capture_volume_upright(real):
    from posekit.data.adapters import h36m
    cameras = h36m.load_cameras(str(real / 'h36m'))
    assert len(cameras) == 44
    for key, cam in cameras.items():
        centre = cam['R'] @ (np.array([0.0, 0.0, 1000.0]) - cam['T'])  # the capture volume, camera frame
        assert 2500 < centre[2] < 7000, key
        assert (cam['R'] @ [0.0, 0.0, 1.0])[1] < -0.8, key  # world up points up in the image


def test_h36m_cameras_from_the_pickle_match_the_json(real, tmp_path):
    from posekit.data.adapters import h36m
    from_json = h36m.load_cameras(str(real / 'h36m'))
    (tmp_path / 'cameras.pkl').write_bytes((real / 'h36m' / 'cameras.pkl').read_bytes())
    from_pickle = h36m.load_cameras(str(tmp_path))
    assert set(from_json) == set(from_pickle)
    for key in from_json:
        for field in ('R', 'T', 'K', 'distortion'):
            np.testing.assert_allclose(from_pickle[key][field], from_json[key][field], rtol=1e-6, err_msg=key)
