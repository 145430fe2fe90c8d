"""Tests of tools/acae_report.py (the quick report end to end) and of posekit.eval.acae_analysis (its functions)."""
import json
import pathlib

import numpy as np
import pytest

from posekit import skeletons
from posekit.acae import load_acae, reconstruction_error
from posekit.data import bodies, mocap
from posekit.eval import acae_analysis as analysis
from posekit.layers.acae import AffineCombiningAutoencoder
from tools import acae_report as ar

SPACE = skeletons.JointSpace(bodies.DEFAULT_FORMATS)
GRID = {(n, l1) for n in (16, 32, 48) for l1 in (0.0, 0.1, 1.0)}
FRAME_TOLERANCE_MM = 0.01  # float32 rounding of poses a few metres from the camera


@pytest.fixture(scope='module')
def quick_run(tmp_path_factory):
    """The quick report on procedural motion (9 fits in 2 worker processes)."""
    out = tmp_path_factory.mktemp('acae_quick')
    code = ar.main(['--preset=smoke', '--mocap-dir', 'procedural', '--out', str(out), '--quiet',
                    '--workers', '2'])
    assert code == 0
    return out, json.loads((out / 'report.json').read_text())


def _entries(report):
    return {(e['n_latents'], e['l1']): e for e in report['entries']}


# ------------------------------------------------------------------------------------ end to end
def test_quick_report_has_an_entry_for_every_latents_and_l1(quick_run):
    _, report = quick_run
    entries = _entries(report)
    assert set(entries) == GRID and len(report['entries']) == len(GRID)
    for e in entries.values():
        assert 0 < e['mpjpe_mm'] < report['disagreement']['mean_mm']
        assert 0 <= e['sparsity'] <= 1 and e['negative_mass'] >= 0
        assert e['negative_mass'] == pytest.approx(
            (e['encoder_negative_mass'] * e['n_latents'] + e['decoder_negative_mass'] * 77)
            / (e['n_latents'] + 77))
        assert 1 <= e['effective_support'] <= 77
        assert e['mpjpe_over_disagreement'] == pytest.approx(
            e['mpjpe_mm'] / report['disagreement']['mean_mm'])
    assert report['n_joints'] == SPACE.n_joints == 77
    assert report['source'] == 'procedural'


def test_raising_l1_lowers_negative_mass_and_raises_sparsity(quick_run):
    _, report = quick_run
    entries = _entries(report)
    for n in (16, 32, 48):
        neg = [entries[(n, l1)]['negative_mass'] for l1 in (0.0, 0.1, 1.0)]
        sparsity = [entries[(n, l1)]['sparsity'] for l1 in (0.0, 0.1, 1.0)]
        assert neg[0] > neg[1] > neg[2], (n, neg)
        assert sparsity[0] < sparsity[1] < sparsity[2], (n, sparsity)
        assert report['acceptance']['l1_trends'][str(n)]['negative_mass'] == neg
    assert report['acceptance']['l1_trends_passed'] is True


def test_32_latents_reconstruct_within_a_quarter_of_the_disagreement(quick_run):
    _, report = quick_run
    reference = report['disagreement']['mean_mm']
    # Same-named joints of the default formats differ by several cm on average (bodies.py).
    assert 20 < reference < 80
    for l1 in (0.0, 0.1, 1.0):
        assert _entries(report)[(32, l1)]['mpjpe_mm'] <= analysis.QUARTER * reference
    quarter = report['acceptance']['quarter_criterion']
    assert quarter['passed'] is True and quarter['threshold_mm'] == pytest.approx(reference / 4)


def test_split_is_subject_wise_and_reconstruction_is_frame_independent(quick_run):
    _, report = quick_run
    split = report['split']
    assert split['held_out_subjects'] and not set(split['held_out_subjects']) & set(
        split['fit_subjects'])
    assert report['frame_check']['max_mpjpe_change_mm'] < FRAME_TOLERANCE_MM
    for e in report['entries']:
        assert e['mpjpe_camera_frame_mm'] == pytest.approx(e['mpjpe_mm'], abs=FRAME_TOLERANCE_MM)


def test_saved_weights_reproduce_the_reported_error_and_files_exist(quick_run):
    out, report = quick_run
    layer = load_acae(out / 'acae_L32_l1_0.1.npz', expected_joint_names=SPACE.names)
    config = analysis.PRESETS['smoke']
    clips = analysis.load_clips(None, config)
    _, held = mocap.split_by_subject(clips, test_fraction=config.test_fraction, seed=config.seed)
    assert sorted({c.subject for c in held}) == report['split']['held_out_subjects']
    err = np.mean(reconstruction_error(layer, analysis.joint_space_poses(held, SPACE)))
    assert err == pytest.approx(_entries(report)[(32, 0.1)]['mpjpe_mm'], abs=1e-3)
    assert (out / 'latents.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert (out / analysis.WORKER_LOG_NAME).is_file()  # the workers' stderr went there
    markdown = (out / 'report.md').read_text()
    assert '| 32 | 0.1 |' in markdown and 'PASS' in markdown and 'FAIL' not in markdown
    assert f'{report["disagreement"]["mean_mm"]:.1f} mm' in markdown


# ---------------------------------------------------------------------------------------- helpers
def test_cross_format_disagreement_is_the_mean_over_shared_joint_entries():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(6, SPACE.n_joints, 3)) * 100
    poses = base.copy()
    # Every same-named joint of the formats: identical positions, except smpl_24's which are 10 mm
    # off along x. Pairs involving smpl_24 then disagree by 10 mm, the others by 0.
    groups = SPACE.name_groups()
    for idx in groups.values():
        poses[:, idx] = base[:, idx[:1]]
    smpl = SPACE.slices['smpl_24']
    poses[:, smpl, 0] += 10.0
    result = analysis.cross_format_disagreement(poses, SPACE)
    expected = []
    for row in result['pairs']:
        offset = 10.0 if 'smpl_24' in row['pair'] else 0.0
        assert row['mean_mm'] == pytest.approx(offset)
        expected += [offset] * len(row['joints'])
    assert result['n_entries'] == len(expected)
    assert result['mean_mm'] == pytest.approx(np.mean(expected))
    with pytest.raises(ValueError, match='at least 2 poses'):
        analysis.cross_format_disagreement(poses[:1], SPACE)


def test_joint_space_poses_are_root_relative_and_match_all_format_joints():
    clips = mocap.procedural_motions(n_subjects=1, clips_per_subject=2, seconds=0.5)
    poses = analysis.joint_space_poses(clips, SPACE)
    world = np.concatenate([bodies.all_format_joints(c.motion, SPACE, c.subject) for c in clips])
    root = SPACE.names.index(analysis.ROOT_JOINT)
    assert poses.shape == world.shape and poses.dtype == np.float32
    np.testing.assert_allclose(poses[:, root], 0.0, atol=1e-6)
    np.testing.assert_allclose(poses, world - world[:, root:root + 1], atol=1e-3)
    with pytest.raises(ValueError, match='at least one clip'):
        analysis.joint_space_poses([], SPACE)


def test_random_camera_frames_are_rigid_and_in_front_of_the_camera(rng):
    poses = rng.normal(size=(20, 77, 3)) * 300
    moved = analysis.random_camera_frames(poses, seed=1)
    dist = lambda p: np.linalg.norm(p[:, :, None] - p[:, None], axis=-1)  # noqa: E731
    np.testing.assert_allclose(dist(moved), dist(poses), atol=1e-2)
    assert np.all(moved[..., 2] > 0)
    # y flips: world up is camera -y (pose heights reverse sign up to a shift per pose).
    up = poses[:, :, 1] - poses[:, :1, 1]
    np.testing.assert_allclose(moved[:, :, 1] - moved[:, :1, 1], -up, atol=1e-2)


def test_facing_front_puts_the_left_hip_on_plus_x_and_the_nose_forward():
    clips = mocap.procedural_motions(n_subjects=1, clips_per_subject=1, seconds=0.5, seed=3)
    for pose in analysis.joint_space_poses(clips, SPACE)[::5]:
        turned = analysis.facing_front(pose, SPACE)
        index = SPACE.names.index
        across = turned[index('lhip_h36m_17')] - turned[index('rhip_h36m_17')]
        assert across[0] > 0 and abs(across[2]) < 1e-3 and across[1] == pytest.approx(0, abs=1e-3)
        nose = turned[index('nose_coco_19')] - turned[index('neck_coco_19')]
        assert nose[2] > 0
        np.testing.assert_allclose(turned[:, 1], pose[:, 1], atol=1e-3)  # a turn about y


def test_latent_sides_pair_left_with_right_by_encoder_mass():
    layer = AffineCombiningAutoencoder(16, joint_info=SPACE, chiral=True, seed=0)
    sides = analysis.latent_sides(layer, SPACE)
    mirror = layer.latent_mirror()
    assert (sides == 'centre').sum() == layer.n_centre_latents
    for k, m in enumerate(mirror):
        if m != k:
            assert {sides[k], sides[m]} == {'left', 'right'}
    w = layer.encoder_weights()
    joint_sides = analysis.joint_sides(SPACE)
    margin = w[joint_sides == 'left'].sum(0) - w[joint_sides == 'right'].sum(0)
    assert np.all(margin[sides == 'left'] >= 0) and np.all(margin[sides == 'right'] <= 0)


def test_acceptance_detects_a_broken_trend_and_a_missed_criterion():
    def entry(n, l1, mpjpe, neg, sparsity):
        return dict(n_latents=n, l1=l1, mpjpe_mm=mpjpe, negative_mass=neg, sparsity=sparsity)
    good = [entry(32, 0.0, 5.0, 0.6, 0.2), entry(32, 1.0, 6.0, 0.1, 0.8)]
    out = analysis.acceptance(good, reference_mm=40.0, l1s=(0.0, 1.0))
    assert out['quarter_criterion']['passed'] and out['l1_trends_passed']
    bad = [entry(32, 0.0, 5.0, 0.6, 0.2), entry(32, 1.0, 11.0, 0.7, 0.8)]
    out = analysis.acceptance(bad, reference_mm=40.0, l1s=(0.0, 1.0))
    assert not out['quarter_criterion']['passed']
    assert [p['passed'] for p in out['quarter_criterion']['per_l1']] == [True, False]
    assert not out['l1_trends']['32']['negative_mass_decreasing']
    assert out['l1_trends']['32']['sparsity_increasing'] and not out['l1_trends_passed']


def test_config_and_cli_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match='l1s must be strictly ascending'):
        analysis.ReportConfig(l1s=(1.0, 0.1))
    with pytest.raises(ValueError, match=r'latents must be positive ints; got \(0,\)'):
        analysis.ReportConfig(latents=(0,))
    with pytest.raises(ValueError, match='test_fraction must be in'):
        analysis.ReportConfig(test_fraction=1.5)
    with pytest.raises(ValueError, match='workers must be a positive int; got 0'):
        analysis.fit_grid(np.zeros((4, 77, 3)), SPACE, analysis.PRESETS['smoke'], workers=0)
    missing = str(tmp_path / 'nowhere')
    assert ar.main(['--out', str(tmp_path), '--mocap-dir', missing, '--quiet']) == 2
    assert 'nowhere' in capsys.readouterr().err
    assert ar.main(['--out', str(tmp_path), '--mocap-dir', 'procedural', '--l1', '1,0',
                    '--quiet']) == 2
    assert 'strictly ascending' in capsys.readouterr().err
    config = ar.config_from_args(ar.parse_args(['--out', 'x', '--preset=smoke', '--latents', '8,12',
                                                '--steps', '5']))
    assert config.latents == (8, 12) and config.steps == 5 and config.procedural_subjects == 4
    assert not pathlib.Path(tmp_path / 'report.json').exists()
