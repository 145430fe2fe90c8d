"""Tests of experiments.metrabs_acae: config, head initialisation, losses, reports and one smoke run."""
import dataclasses
import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from experiments import common
from experiments import metrabs_acae as mab
from experiments import metrabs_acae_eval as mab_eval
from posekit.layers.acae import AffineCombiningAutoencoder
from posekit.models.metrabs import MetrabsHead, heatmap_to_image, soft_argmax_2d



# ------------------------------------------------------------------------------------------- config
def test_presets_and_config_validation():
    assert set(mab.PRESETS) == {'smoke', 'default', 'paper'}
    paper = mab.PRESETS['paper']
    assert (paper.batch_3d, paper.batch_2d, paper.stage1_steps, paper.stage2_steps) == (96, 32, 400_000, 40_000)
    assert (paper.backbone, paper.crop_size, paper.base_learning_rate) == ('efficientnetv2-s', 256, 2.12e-4)
    from posekit.data import pipeline
    assert mab.composition(paper) == pipeline.COMPOSITIONS['paper']
    assert mab.composition(mab.PRESETS['default']) == pipeline.COMPOSITIONS['default']
    with pytest.raises(ValueError, match='stage1_steps must be an int >= 1, received stage1_steps=0'):
        mab.Config(stage1_steps=0)
    with pytest.raises(ValueError, match="variants must be distinct names among .*received variants=\\('joint',\\)"):
        mab.Config(variants=('joint',))
    with pytest.raises(ValueError, match="precision must be one of .*received precision='half'"):
        mab.Config(precision='half')
    with pytest.raises(ValueError, match="unknown config key 'stage3_steps'"):
        common.apply_overrides(mab.PRESETS['smoke'], ['stage3_steps=5'])
    changed = common.apply_overrides(mab.PRESETS['smoke'], ['consistency_weight=0.5', 'variants=latent,hybrid'])
    assert changed.consistency_weight == 0.5 and changed.variants == ('latent', 'hybrid')


def test_parse_variants():
    assert mab.parse_variants(None, ('consistency',)) == ('consistency',)
    assert mab.parse_variants('all', ()) == mab.VARIANTS
    assert mab.parse_variants('latent, separate', ()) == ('latent', 'separate')
    with pytest.raises(ValueError, match="--variant must be \"all\" or names among .*received 'joint'"):
        mab.parse_variants('joint', ())


def test_eval_splits_keep_tuning_and_testing_apart():
    assert list(mab.eval_splits(None, None)) == ['val', 'test']  # procedural test subjects
    assert list(mab.eval_splits('cmu_mocap', None)) == ['val']  # the test split would repeat val
    splits = mab.eval_splits('cmu_mocap', '/data/cmu_mocap_test/')
    assert list(splits) == ['val', 'test'] and 'cmu_mocap_test' in splits['test']


# ------------------------------------------------------------------------------------------- heads
def _quadratic_head(positions, grid, depth_bins=1, sharpness=0.5):
    """A separate head whose 2D logits are -sharpness * |cell - position_j|^2 for features [u^2+v^2, u, v, 1]."""
    n = len(positions)
    head = MetrabsHead(n, depth_bins=depth_bins, stride=1, name='separate')
    head.build((None, grid, grid, 4))
    kernel = np.zeros((1, 1, 4, n * (1 + depth_bins)), np.float32)
    for j, (a, b) in enumerate(positions):
        kernel[0, 0, :, j] = sharpness * np.array([-1.0, 2 * a, 2 * b, -(a * a + b * b)])
    head.conv.set_weights([kernel, np.zeros(kernel.shape[-1], np.float32)])
    return head


def _quadratic_features(grid):
    v, u = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32), indexing='ij')
    return tf.constant(np.stack([u * u + v * v, u, v, np.ones_like(u)], -1)[np.newaxis])


def test_latent_head_initialisation_puts_latent_peaks_at_the_encoded_positions():
    grid, n_joints, n_latents = 24, 6, 3
    rng = np.random.default_rng(0)
    positions = rng.uniform(8.0, 15.0, (n_joints, 2))
    separate = _quadratic_head(positions, grid)
    acae = AffineCombiningAutoencoder(n_latents, chiral=False, n_joints=n_joints, seed=0)
    acae.build((None, n_joints, 3))
    latent = MetrabsHead(n_latents, depth_bins=1, stride=1, name='latent')
    latent.build((None, grid, grid, 4))
    mab.init_head_from_separate(latent, separate, n_joints, acae=acae)
    features = _quadratic_features(grid)
    # The conv of the new head is the old conv followed by W_enc in every heatmap block.
    old, new = separate.conv(features).numpy(), latent.conv(features).numpy()
    weights = acae.encoder_weights()
    for k in range(2):
        np.testing.assert_allclose(new[..., k * n_latents:(k + 1) * n_latents],
                                   old[..., k * n_joints:(k + 1) * n_joints] @ weights, rtol=1e-4, atol=1e-3)
    # For quadratic log-heatmaps the latent's soft-argmax is the affine combination of the joints' positions.
    peaks = heatmap_to_image(soft_argmax_2d(new[..., :n_latents]), 1).numpy()[0]
    np.testing.assert_allclose(peaks, weights.T @ positions, atol=0.05)

    hybrid = MetrabsHead(n_latents + n_joints, depth_bins=1, stride=1, name='hybrid')
    hybrid.build((None, grid, grid, 4))
    mab.init_head_from_separate(hybrid, separate, n_joints, acae=acae, offset_joints=True)
    both = hybrid.conv(features).numpy()
    p = n_latents + n_joints
    for k in range(2):
        np.testing.assert_allclose(both[..., k * p + n_latents:(k + 1) * p], old[..., k * n_joints:(k + 1) * n_joints],
                                   rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(both[..., k * p:k * p + n_latents], new[..., k * n_latents:(k + 1) * n_latents],
                                   rtol=1e-5, atol=1e-3)


# ------------------------------------------------------------------------------------------- losses
@pytest.fixture(scope='module')
def tiny():
    """A 32 px default-recipe setup: config, joint space, a batch of the composition, an ACAE, a backbone."""
    from tools.benchmark_training import synthetic_batch
    config = dataclasses.replace(mab.PRESETS['smoke'], crop_size=32, batch_3d=3, batch_2d=1, hybrid_start_step=5)
    space = mab.joint_space()
    batch = synthetic_batch(config, space)
    acae = AffineCombiningAutoencoder(8, joint_info=space, seed=0)
    acae.build((None, space.n_joints, 3))
    acae.trainable = False
    keras.utils.set_random_seed(0)
    backbone = mab.build_backbone(config)
    return config, space, batch, acae, backbone


@pytest.mark.parametrize('variant', mab.VARIANTS)
def test_stage2_loss_of_every_variant_is_finite_and_reaches_the_head(tiny, variant):
    config, space, batch, acae, backbone = tiny
    head_mode = variant if variant in ('latent', 'hybrid') else 'separate'
    model = mab.build_model(config, space, head_mode=head_mode, acae=acae if head_mode != 'separate' else None,
                            backbone=backbone)
    loss_fn = mab.make_loss_fn(config, space, seed=0, stage=2, variant=variant, acae=acae)
    with tf.GradientTape() as tape:
        loss, parts = loss_fn(model, batch, tf.constant(7, tf.int64), True)
    grads = tape.gradient(loss, model.head.trainable_variables)
    assert loss.dtype == tf.float32 and np.isfinite(loss.numpy())
    assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in grads)
    assert {'meanrel3d', 'proj2d', 'abs3d', 'weak2d'} <= set(parts)
    assert ('consistency' in parts) == (variant == 'consistency')
    if variant == 'hybrid':  # the teacher is on from hybrid_start_step (5)
        assert parts['teacher'].numpy() > 0
        _, early = loss_fn(model, batch, tf.constant(2, tf.int64), True)
        assert early['teacher'].numpy() == 0
    # mix_3d_in_view comes from a stateless generator: the same step gives the same loss.
    again, _ = loss_fn(model, batch, tf.constant(7, tf.int64), False)
    repeat, _ = loss_fn(model, batch, tf.constant(7, tf.int64), False)
    assert again.numpy() == repeat.numpy()


def test_loss_fn_needs_the_acae_for_acae_variants(tiny):
    config, space, *_ = tiny
    with pytest.raises(ValueError, match="variant='latent' needs the fitted acae"):
        mab.make_loss_fn(config, space, seed=0, stage=2, variant='latent')
    with pytest.raises(ValueError, match="variant must be one of .*received variant='joint'"):
        mab.make_loss_fn(config, space, seed=0, stage=2, variant='joint')


# ------------------------------------------------------------------------------------------- evaluation
def _fake_results(stage1_mpjpe=50.0, consistency_mpjpe=50.5, residuals=(20.0, 12.0), mpjpe_2d_only=0.0):
    """Results whose all-format mean adds ``mpjpe_2d_only`` mm to the models' (a 2D-only format's error)."""
    def model(mpjpe, residual, offset, extra=mpjpe_2d_only):
        return dict(mean=dict(mpjpe=mpjpe + extra), mean_3d=dict(mpjpe=mpjpe),
                    consistency=dict(acae_residual_mm=residual, offset_error_mm=offset))
    metrics = {'val': {'mean_pose': model(200.0, 5.0, 30.0, extra=0.0),
                       'stage1': model(stage1_mpjpe, residuals[0], 40.0),
                       'consistency': model(consistency_mpjpe, residuals[1], 30.0)}}
    return dict(models=['mean_pose', 'stage1', 'consistency'], metrics=metrics, formats_3d=['h36m_17', 'smpl_24'])


def test_acceptance_checks():
    checks = {c.claim: c for c in mab_eval.acceptance_checks(_fake_results())}
    assert all(c.holds for c in checks.values()), checks
    raised = mab_eval.acceptance_checks(_fake_results(consistency_mpjpe=51.5))  # +3 %
    failing = [c for c in raised if not c.holds]
    assert len(failing) == 1 and 'more than 2%' in failing[0].claim and '+3.0 %' in failing[0].evidence
    worse = mab_eval.acceptance_checks(_fake_results(residuals=(20.0, 25.0)))
    assert [c.holds for c in worse if 'inconsistency' in c.claim] == [False]
    weak = mab_eval.acceptance_checks(_fake_results(stage1_mpjpe=150.0))
    assert not [c for c in weak if 'stage 1 (separate heads) beats' in c.claim][0].holds
    # The baseline comparison uses the 3D-labelled formats (named in the check); a 2D-only format's large
    # error does not decide it, while the 2 % MPJPE check still uses the mean over all formats.
    bad_2d = {c.claim: c for c in mab_eval.acceptance_checks(_fake_results(mpjpe_2d_only=300.0))}
    beats = [c for name, c in bad_2d.items() if 'beats the mean-pose baseline' in name]
    assert len(beats) == 2 and all(c.holds and '(h36m_17, smpl_24)' in c.claim for c in beats)
    assert all(c.holds for c in bad_2d.values())
    # A rise of more than 2 % in the 3D-labelled formats fails even when the all-format mean hides it.
    hidden = mab_eval.acceptance_checks(_fake_results(consistency_mpjpe=51.5, mpjpe_2d_only=300.0))
    assert [c.holds for c in hidden if 'more than 2%' in c.claim] == [False]


# ------------------------------------------------------------------------------------------- smoke run
def _flatten(tree, prefix=''):
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flatten(value, f'{prefix}/{key}'))
        return out
    return {prefix: tree}


def test_smoke_run_end_to_end(metrabs_smoke_run):
    out, process, _ = metrabs_smoke_run
    assert '| model | MPJPE (3D-labelled formats) | MPJPE | PA-MPJPE |' in process.stdout  # the printed table
    record = json.loads((out / 'results.json').read_text())
    common.validate_results(record)
    assert record['experiment'] == 'metrabs_acae' and record['preset'] == 'smoke' and record['seeds'] == [0]
    expected = dataclasses.asdict(dataclasses.replace(mab.PRESETS['smoke'], precision='float32', batch_splits=1,
                                                      composition='h36m_like=2,mpi_like=2,smpl_like=2,coco_like=2'))
    assert record['config'] == json.loads(json.dumps(expected))  # tuples become lists in JSON
    results = record['results']
    assert list(results['eval_sets']) == ['val', 'test']
    assert results['models'] == ['mean_pose', 'stage1', 'consistency']
    formats = record['context']['joint_space']
    assert formats == ['h36m_17', 'smpl_24', 'coco_19', 'mpi_inf_3dhp_17']
    assert results['formats_3d'] == ['h36m_17', 'mpi_inf_3dhp_17', 'smpl_24']  # the 3D datasets' formats
    for split in ('val', 'test'):
        for name in results['models']:
            m = results['metrics'][split][name]
            assert list(m['formats']) == formats
            for fmt_metrics in m['formats'].values():
                assert {'mpjpe', 'pa_mpjpe', 'pck@100', 'cps@200', 'abs_mpjpe'} <= set(fmt_metrics)
                assert all(math.isfinite(v) for v in fmt_metrics.values())
                assert 0 <= fmt_metrics['pck@100'] <= 1 and fmt_metrics['pa_mpjpe'] <= fmt_metrics['mpjpe'] + 1e-6
            assert m['consistency']['acae_residual_mm'] > 0 and m['consistency']['offset_error_mm'] > 0
            labelled = [m['formats'][f]['mpjpe'] for f in results['formats_3d']]
            assert m['mean_3d']['mpjpe'] == pytest.approx(np.mean(labelled))
            assert m['mean']['mpjpe'] == pytest.approx(np.mean([v['mpjpe'] for v in m['formats'].values()]))
    # The checks are recomputed from the numbers they report (not just present).
    recomputed = [c.to_dict() for c in mab_eval.acceptance_checks(results)]
    assert record['checks'] == recomputed and any('consistency regularization lowers' in c['claim']
                                                  for c in recomputed)
    training = record['context']['training']
    assert training['stage1']['steps'] == 40 and training['stage2_consistency']['steps'] == 24  # 20 + 4 BN steps
    report = (out / 'results.md').read_text()
    for heading in ('## val:', '## test:', '## Paper trends', '## Acceptance checks', '## Per format'):
        assert heading in report
    assert (out / 'saved_model' / 'saved_model.pb').is_file()
    assert (out / 'stage1' / 'checkpoints').is_dir() and (out / 'stage2_consistency' / 'checkpoints').is_dir()
    from posekit.acae import load_acae
    acae = load_acae(out / 'acae.npz', expected_joint_names=mab.joint_space().names)
    assert acae.n_latents == mab.PRESETS['smoke'].acae_latents


def test_smoke_run_refuses_to_overwrite_and_resumes(metrabs_smoke_run, run_metrabs_smoke):
    out, _, _ = metrabs_smoke_run
    process, _ = run_metrabs_smoke(out)
    assert process.returncode != 0 and 'pass --resume' in process.stderr
    before = json.loads((out / 'results.json').read_text())
    process, _ = run_metrabs_smoke(out, '--resume')
    assert process.returncode == 0, process.stderr[-3000:]
    for message in ('all 12 shards up to date', 'ACAE: reused', 'is up to date (reused)'):
        assert message in process.stderr
    after = json.loads((out / 'results.json').read_text())
    # Restored stages and cached predictions give the same numbers (the reloaded ACAE's float32 weights
    # may differ from the fitted layer's in the last bit).
    flat_before, flat_after = _flatten(before['results']['metrics']), _flatten(after['results']['metrics'])
    assert flat_before.keys() == flat_after.keys()
    for key, value in flat_before.items():
        assert flat_after[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert after['context']['training']['stage1']['steps'] == 40


def test_smoke_run_of_the_latent_and_hybrid_variants(metrabs_runs):
    (out, process, _), = metrabs_runs['latent_hybrid']  # --variant=latent,hybrid, no export (conftest)
    assert process.returncode == 0, process.stderr[-3000:]
    record = json.loads((out / 'results.json').read_text())
    results = record['results']
    assert results['models'] == ['mean_pose', 'stage1', 'latent', 'hybrid']
    for split in ('val', 'test'):
        m = results['metrics'][split]
        # Outputs decoded from the ACAE's latent points are nearly affine-consistent by construction:
        # far below the separate heads' ACAE residual.
        for variant in ('latent', 'hybrid'):
            assert m[variant]['consistency']['acae_residual_mm'] < 0.5 * m['stage1']['consistency']['acae_residual_mm']
    assert not (out / 'saved_model').exists()
    assert record['context']['training']['stage2_hybrid']['steps'] == 24


# ------------------------------------------------------------------------------------------- real datasets
def test_smoke_run_on_real_datasets_a_manifest_and_synthetic_data(metrabs_runs):
    """Real frames (Human3.6M, MPI-INF-3DHP, COCO of real_samples; plumbing only, no reported accuracy) and an
    own-data manifest of rendered full frames (conftest.write_manifest) mixed with synthetic datasets: every
    stage runs, the model predicts every skeleton."""
    if 'real' not in metrabs_runs:
        pytest.skip('needs ../shared/data/real_samples beside the clone (present in CI)')
    (out, process, _), = metrabs_runs['real']
    assert process.returncode == 0, process.stderr[-3000:]
    record = json.loads((out / 'results.json').read_text())
    common.validate_results(record)
    # The joint space: the synthetic formats, then the real skeletons that are new (coco_17 from COCO).
    assert record['context']['joint_space'] == ['h36m_17', 'smpl_24', 'coco_19', 'mpi_inf_3dhp_17', 'coco_17']
    # The composition written out, 3D datasets first; the ghost-BN groups are its 3D and 2D parts.
    assert record['config']['composition'] == 'h36m=1,mpi_inf_3dhp=1,my_lab=2,h36m_like=2,coco=1,coco_like=1'
    assert (record['config']['batch_3d'], record['config']['batch_2d']) == (6, 2)
    assert 'h36m: indexed 4 training examples' in process.stderr and 'my_lab: indexed 6 training examples' in process.stderr
    model = __import__('tensorflow').saved_model.load(str(out / 'saved_model'))
    assert [s.decode() for s in model.skeletons.numpy()] == record['context']['joint_space']


def test_compositions_explicit_and_table_s1():
    config = dataclasses.replace(mab.PRESETS['smoke'], datasets=('h36m=/d/h36m', 'mpi_inf_3dhp=/d/3dhp', 'coco=/d/coco',
                                                                 'smpl_like'))
    kinds = {'h36m': '3d', 'mpi_inf_3dhp': '3d', 'coco': '2d', 'smpl_like': '3d'}
    assert mab.composition(config, kinds) == {'h36m': 2, 'mpi_inf_3dhp': 2, 'smpl_like': 2, 'coco': 2}
    # Table S1 (medium): h36m 9, mpi_inf_3dhp 5, surreal (smpl_like stands in) 8 -> scaled to 6 3D examples.
    table = dataclasses.replace(config, composition='table_s1_medium')
    assert mab.composition(table, kinds) == {'h36m': 2, 'mpi_inf_3dhp': 2, 'smpl_like': 2, 'coco': 2}
    big = dataclasses.replace(table, batch_3d=22)
    assert mab.composition(big, kinds) == {'h36m': 9, 'mpi_inf_3dhp': 5, 'smpl_like': 8, 'coco': 2}
    resolved = mab.resolve_composition(dataclasses.replace(config, composition='coco=3,h36m=1,mpi_inf_3dhp=1,smpl_like=1'),
                                       kinds)
    assert resolved.composition == 'h36m=1,mpi_inf_3dhp=1,smpl_like=1,coco=3'
    assert (resolved.batch_3d, resolved.batch_2d) == (3, 3)
    assert mab.composition(resolved) == {'h36m': 1, 'mpi_inf_3dhp': 1, 'smpl_like': 1, 'coco': 3}
    with pytest.raises(ValueError, match="lacks the datasets \\['smpl_like'\\]"):
        mab.composition(dataclasses.replace(config, composition='h36m=1,mpi_inf_3dhp=1,coco=1'), kinds)
    with pytest.raises(ValueError, match="Table S1 \\(medium\\) has no count for the datasets \\['my_lab'\\]"):
        mab.composition(table, dict(kinds, my_lab='3d'))


def test_datasets_flag_parsing():
    entries = mab.parse_datasets(['h36m=/data/h36m', 'coco=/c;annotation_file=a.json;image_dir=', 'lab.json',
                                  'mine=/x/i.h5', 'coco_like'])
    assert [(e.name, e.kind) for e in entries] == [('h36m', 'adapter'), ('coco', 'adapter'), ('lab', 'manifest'),
                                                  ('mine', 'index'), ('coco_like', 'synthetic')]
    assert dict(entries[1].options) == {'annotation_file': 'a.json', 'image_dir': ''}
    for bad, message in (('h36m', "the adapter 'h36m' needs a root"), ('nope=/x', 'not a synthetic dataset'),
                         ('coco_like=/x', 'takes no root'), ('coco=/c;oops', 'options must be key=value')):
        with pytest.raises(ValueError, match=message):
            mab.parse_datasets([bad])
    with pytest.raises(ValueError, match='names must be distinct'):
        mab.parse_datasets(['coco_like', 'coco_like'])
