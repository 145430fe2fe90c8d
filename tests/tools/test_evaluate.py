"""Tests of tools.evaluate: metrics of an exported model on real frames with the datasets' cameras."""
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from posekit import geometry, skeletons
from posekit.data import adapters
from tools import evaluate as ev

REPO = pathlib.Path(__file__).resolve().parents[2]
REAL = REPO.parent / 'shared' / 'data' / 'real_samples'


@pytest.fixture
def real():
    if not REAL.is_dir():
        pytest.skip('needs ../shared/data/real_samples beside the clone (present in CI)')
    return REAL


class Oracle:
    """A stand-in SavedModel that answers every box with the dataset's own labels (camera frame, distorted 2D)."""

    def __init__(self, items, skeleton='h36m_17', offset_mm=0.0):
        names = list(skeletons.get(skeleton).names)
        self.skeletons = tf.constant([skeleton.encode()])
        self.per_skeleton_joint_names = {skeleton: tf.constant([n.encode() for n in names])}
        self.items, self.offset = items, offset_mm

    def estimate_poses(self, image, boxes, intrinsic_matrix, skeleton, num_aug, distortion_coeffs=None):
        box = boxes.numpy()[0]
        e = next(e for e in self.items if np.allclose(e['box'], box))
        camera = e['joints3d'].astype(np.float64) @ e['rotation'].T + e['translation']
        camera = camera + [self.offset, 0.0, 0.0]
        cam = geometry.Camera(intrinsic_matrix=e['intrinsics'], distortion_coeffs=e['distortion'])
        return {'poses3d': tf.constant(camera[None]), 'poses2d': tf.constant(cam.camera_to_image(camera)[None])}


def test_metrics_against_an_oracle_on_real_frames(real):
    items = adapters.load('h36m', str(real / 'h36m'), 'train', annotations='test_h36m_body3d.npz')
    source = ev._ListSource(items, str(real / 'h36m'))
    perfect = ev.evaluate(Oracle(items), source)
    assert perfect['n_3d'] == 4 and perfect['complete'] and perfect['mpjpe_mm'] < 1e-6
    assert perfect['pck_at_100mm'] == 1.0 and perfect['pck2d_at_0_1'] == 1.0
    assert perfect['error2d_px'] < 3.0  # the projection of the 3D label vs the dataset's own 2D label
    shifted = ev.evaluate(Oracle(items, offset_mm=50.0), source)
    assert shifted['mpjpe_mm'] < 1e-6 and shifted['abs_mpjpe_mm'] == pytest.approx(50.0)  # root-relative vs not


def test_skeleton_mapping_by_joint_names():
    model = {'coco_19': list(skeletons.get('coco_19').names), 'h36m_17': list(skeletons.get('h36m_17').names)}
    skeleton, index, complete = ev.skeleton_mapping(skeletons.get('coco_17').names, model)
    assert skeleton == 'coco_19' and complete
    assert [model['coco_19'][i] for i in index] == list(skeletons.get('coco_17').names)
    skeleton, index, complete = ev.skeleton_mapping(skeletons.get('mpii_16').names, model)
    assert not complete and (index >= 0).sum() == 15  # h36m_17 lacks MPII's upper neck
    with pytest.raises(ValueError, match='predicts none of the joints'):
        ev.skeleton_mapping(['abc'], model)


def test_smoke_model_on_real_frames_and_cli_errors(real, metrabs_smoke_run, tmp_path):
    out, _, _ = metrabs_smoke_run
    model = tf.saved_model.load(str(out / 'saved_model'))
    items = adapters.load('mpi_inf_3dhp', str(real / 'mpi_inf_3dhp'), 'test', annotations='test_3dhp_test.npz')
    summary = ev.evaluate(model, ev._ListSource(items, str(real / 'mpi_inf_3dhp')))
    assert summary['model_skeleton'] == 'mpi_inf_3dhp_17' and summary['n_examples'] == 2
    for key in ('mpjpe_mm', 'pa_mpjpe_mm', 'abs_mpjpe_mm', 'error2d_px'):
        assert np.isfinite(summary[key]) and summary[key] > 0
    assert 0 <= summary['pck_at_100mm'] <= 1 and 0 <= summary['pck2d_at_0_1'] <= 1
    bad = subprocess.run([sys.executable, '-m', 'tools.evaluate', f'--model={tmp_path}/none', '--adapter=h36m',
                          f'--root={real / "h36m"}'], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and 'is not a SavedModel directory' in bad.stderr and 'Traceback' not in bad.stderr
