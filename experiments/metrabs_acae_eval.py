"""Evaluation and reporting of :mod:`experiments.metrabs_acae`: predictions, metrics, results.md.

Metrics come from :mod:`posekit.eval.consistency` (per-format MPJPE, PA-MPJPE, PCK@100 mm, CPS@200 mm
on root-relative poses, absolute MPJPE; cross-format offset error and ACAE residual) for every
evaluation set, for the mean-pose baseline, stage 1 and each stage-2 variant. ``results.json``
holds everything; ``results.md`` the tables, the paper's trends beside ours and the acceptance
checks of the project's issues.
"""
from __future__ import annotations

import os
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from experiments import common

BASELINE = 'mean_pose'
STAGE1 = 'stage1'
WIDE_MARGIN_FRACTION = 0.6
"""A model beats the mean-pose baseline "by a wide margin" when its MPJPE is at most this fraction of the baseline's."""
MAX_MPJPE_INCREASE = 0.02
"""Stage 2 with consistency regularization may raise MPJPE by at most this fraction over stage 1."""
SUMMARY_METRICS = ('mpjpe', 'pa_mpjpe', 'pck@100', 'cps@200', 'abs_mpjpe')
MODEL_LABELS = {BASELINE: 'mean-pose baseline', STAGE1: 'stage 1 (separate heads)',
                'separate': 'stage 2: separate (plain fine-tuning)', 'consistency': 'stage 2: consistency reg.',
                'latent': 'stage 2: latent head', 'hybrid': 'stage 2: hybrid head'}
PAPER_TRENDS = {
    'consistency': 'consistency regularization improves accuracy a little and consistency clearly',
    'latent': 'the latent head improves accuracy and consistency a little',
    'hybrid': 'the hybrid head improves accuracy and consistency a little',
}
"""Sárándi et al., WACV 2023, Tables S2-S4 (trends only; their numbers are on real benchmarks)."""


# ----------------------------------------------------------------------------------------------
# Predictions
# ----------------------------------------------------------------------------------------------

def make_predict_fn(model, crop_size: int):
    """A traced ``f(images uint8 [B, S, S, 3], intrinsics [B, 3, 3]) -> coords3d_abs [B, J, 3]`` (mm)."""
    import tensorflow as tf
    from posekit.data import pipeline

    @tf.function(input_signature=[tf.TensorSpec([None, crop_size, crop_size, 3], tf.uint8),
                                  tf.TensorSpec([None, 3, 3], tf.float32)])
    def predict(images, intrinsics):
        out = model(pipeline.to_unit_range(images), intrinsics, training=False)
        return tf.cast(out['coords3d_abs'], tf.float32)
    return predict


def predict_source(predict, source, batch_size: int) -> Dict[str, np.ndarray]:
    """Predictions and labels of every example of ``source``: coords3d_abs, coords3d, intrinsics, dataset."""
    from posekit.data import pipeline
    out = {'coords3d_abs': [], 'coords3d': [], 'intrinsics': [], 'dataset': []}
    for batch in pipeline.eval_batches(source, batch_size):
        out['coords3d_abs'].append(predict(batch['image'], batch['intrinsics']).numpy())
        for key in ('coords3d', 'intrinsics', 'dataset'):
            out[key].append(batch[key].numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def weights_fingerprint(model) -> str:
    """Fingerprint of the weights (sum and squared sum of every variable): cached predictions match them."""
    total = sum(float(np.sum(np.asarray(v, np.float64))) for v in model.get_weights())
    square = sum(float(np.sum(np.square(np.asarray(v, np.float64)))) for v in model.get_weights())
    return f'{total:.9e}/{square:.9e}'


def _load_cache(path: str, key: str) -> Optional[Dict[str, np.ndarray]]:
    if not os.path.isfile(path):
        return None
    with np.load(path, allow_pickle=False) as f:
        if 'key' not in f.files or str(f['key']) != key:
            return None
        return {k: f[k] for k in f.files if k != 'key'}


def _save_cache(path: str, key: str, arrays: Mapping[str, np.ndarray]):
    tmp = path + '.tmp.npz'
    np.savez(tmp, key=np.array(key), **arrays)
    os.replace(tmp, path)


def predict_splits(model, eval_sources, config, folder: str, predict=None) -> Dict[str, Dict[str, np.ndarray]]:
    """{split: concatenated predictions over the datasets of the split} (cached in ``folder``).

    ``predict``: the model's :func:`make_predict_fn` if already traced.
    """
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, 'predictions.npz')
    key = weights_fingerprint(model)
    cached = _load_cache(path, key)
    if cached is not None:
        return {split: {k.split('/', 1)[1]: v for k, v in cached.items() if k.startswith(split + '/')}
                for split in eval_sources}
    predict = predict or make_predict_fn(model, config.crop_size)
    result = {}
    for split, sources in eval_sources.items():
        parts = [predict_source(predict, source, config.eval_batch) for source in sources.values()]
        result[split] = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    _save_cache(path, key, {f'{split}/{k}': v for split, arrays in result.items() for k, v in arrays.items()})
    return result


def pseudo_ground_truth(model, streams, config, path: str, predict=None) -> Dict[str, np.ndarray]:
    """Stage-1 predictions of all formats on the first ``pseudo_gt_per_dataset`` training images of
    every dataset (labels unused): ``coords3d_abs`` [N, J, 3] mm and ``intrinsics`` [N, 3, 3]. Cached."""
    from posekit.data.pipeline import SubsetSource
    key = weights_fingerprint(model) + f'/{config.pseudo_gt_per_dataset}'
    cached = _load_cache(path, key)
    if cached is not None:
        return cached
    from posekit.data import full_image
    predict = predict or make_predict_fn(model, config.crop_size)
    parts = []
    for source in streams.values():
        if isinstance(source, full_image.FullImageStream):  # crops cut at load time, without augmentation
            for batch in full_image.crop_batches(source, config.eval_batch, config.pseudo_gt_per_dataset):
                parts.append(dict(coords3d_abs=predict(batch['image'], batch['intrinsics']).numpy(),
                                  intrinsics=batch['intrinsics']))
        else:
            parts.append(predict_source(predict, SubsetSource(source, config.pseudo_gt_per_dataset),
                                        config.eval_batch))
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in ('coords3d_abs', 'intrinsics')}
    _save_cache(path, key, arrays)
    return arrays


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------

def _mean_over_formats(per_format: Mapping[str, Mapping[str, float]]) -> Dict[str, float]:
    keys = next(iter(per_format.values())).keys()
    return {k: float(np.mean([m[k] for m in per_format.values()])) for k in keys}


def model_metrics(pred, gt, space, acae, formats_3d: Sequence[str] = ()) -> Dict:
    """Per-format metrics, their mean over all formats (``mean``) and over the formats with 3D training
    labels (``mean_3d``; all formats when ``formats_3d`` is empty), and the consistency measures of
    one model on one set.

    ``pred`` may hold more joints than ``gt`` (the model's joint space is ``space`` extended by the skeletons of
    real datasets): then the metrics use its first ``gt``-many joints (``space``'s formats come first) and the
    ACAE residual, a property of the prediction alone, all of them.
    """
    from posekit.eval import consistency
    pred = np.asarray(pred, np.float64)
    evaluated = pred[:, :gt.shape[1]]
    formats = consistency.per_format_metrics(evaluated, gt, space)
    labelled = [f for f in formats if f in formats_3d] or list(formats)
    measures = consistency.consistency_metrics(evaluated, gt, space)
    if acae is not None and pred.shape[1] == acae.n_joints:
        measures['acae_residual_mm'] = float(np.mean(consistency.acae_residuals(pred, acae)))
    else:
        measures['acae_residual_mm'] = None  # the mean pose covers only the evaluated formats
    return dict(formats=formats, mean=_mean_over_formats(formats),
                mean_3d=_mean_over_formats({f: formats[f] for f in labelled}), consistency=measures)


def no_evaluation() -> Dict:
    """The ``results`` of a run without synthetic evaluation sets (only full-image datasets: evaluate the
    exported model on their test splits with ``python -m tools.evaluate``)."""
    return dict(eval_sets={}, models=[], metrics={}, formats_3d=[], ground_truth_acae_residual_mm={})


def evaluate_all(predictions, eval_sources, baseline_pose, space, acae, splits: Mapping[str, str],
                 formats_3d: Sequence[str] = (), eval_formats: Optional[Sequence[str]] = None) -> Dict:
    """(results, checks): the ``results`` of results.json (eval_sets, models, metrics[split][model], formats_3d,
    ground-truth ACAE residuals) and the acceptance checks (:class:`experiments.common.Check`).

    ``formats_3d``: the formats of the datasets with 3D labels. The accuracy checks against the
    mean-pose baseline use their mean (``mean_3d``): like the paper, which evaluates 3D accuracy only
    on 3D benchmarks, a format seen only with 2D labels (coco_19) has no depth supervision in stage 1
    and is reported separately, not hidden. ``eval_formats``: the formats the evaluation sets label (the
    first formats of ``space``; default all of ``space``).
    """
    from posekit.eval import consistency
    from posekit.skeletons import JointSpace
    eval_space = space if eval_formats is None else JointSpace(eval_formats)
    full = eval_space.n_joints == space.n_joints
    metrics, gt_residual = {}, {}
    for split in eval_sources:
        gt = predictions[STAGE1][split]['coords3d'].astype(np.float64)
        per_model = {BASELINE: model_metrics(np.broadcast_to(baseline_pose, gt.shape), gt, eval_space,
                                             acae if full else None, formats_3d)}
        for name, by_split in predictions.items():
            per_model[name] = model_metrics(by_split[split]['coords3d_abs'], gt, eval_space, acae, formats_3d)
        metrics[split] = per_model
        gt_residual[split] = float(np.mean(consistency.acae_residuals(gt, acae))) if full else None
    results = dict(eval_sets=dict(splits), models=[BASELINE] + list(predictions), metrics=metrics,
                   formats_3d=list(formats_3d), ground_truth_acae_residual_mm=gt_residual)
    return results, acceptance_checks(results)


def _formats_3d_label(results) -> str:
    formats = results.get('formats_3d') or []
    return f'the 3D-labelled formats ({", ".join(formats)})' if formats else 'all formats'


def _primary_split(results) -> str:
    return 'test' if 'test' in results['metrics'] else 'val'


def acceptance_checks(results) -> List[common.Check]:
    """The acceptance points of issues 6 and 7 evaluated on the results."""
    checks = []
    metrics = results['metrics']
    split = _primary_split(results)
    m = metrics[split]
    which = _formats_3d_label(results)
    base = m[BASELINE]['mean_3d']['mpjpe']
    for name in results['models'][1:]:
        value = m[name]['mean_3d']['mpjpe']
        checks.append(common.Check(
            claim=f'{MODEL_LABELS.get(name, name)} beats the mean-pose baseline by a wide margin on {split} '
                  f'(MPJPE over {which} <= {WIDE_MARGIN_FRACTION:.0%} of the baseline)',
            holds=bool(value <= WIDE_MARGIN_FRACTION * base),
            evidence=f'{value:.1f} vs {base:.1f} mm ({value / base:.0%})'))
    val = metrics['val']
    s1, vb = val[STAGE1]['mean_3d']['mpjpe'], val[BASELINE]['mean_3d']['mpjpe']
    checks.append(common.Check(claim=f'validation MPJPE ({which}) of the stage-1 model well below the mean-pose baseline '
                             f'(issue 6; <= {WIDE_MARGIN_FRACTION:.0%})',
                       holds=bool(s1 <= WIDE_MARGIN_FRACTION * vb), evidence=f'{s1:.1f} vs {vb:.1f} mm ({s1 / vb:.0%})'))
    if 'consistency' in m:
        for split_name, by_model in metrics.items():
            c1, c2 = by_model[STAGE1]['consistency'], by_model['consistency']['consistency']
            checks.append(common.Check(
                claim=f'stage 2 with consistency regularization lowers the cross-format inconsistency vs stage 1 '
                      f'({split_name})',
                holds=bool(c2['offset_error_mm'] < c1['offset_error_mm']
                           and c2['acae_residual_mm'] < c1['acae_residual_mm']),
                evidence=f'offset error {c2["offset_error_mm"]:.1f} vs {c1["offset_error_mm"]:.1f} mm, ACAE residual '
                         f'{c2["acae_residual_mm"]:.1f} vs {c1["acae_residual_mm"]:.1f} mm'))
            a1, a2 = by_model[STAGE1]['mean']['mpjpe'], by_model['consistency']['mean']['mpjpe']
            b1, b2 = by_model[STAGE1]['mean_3d']['mpjpe'], by_model['consistency']['mean_3d']['mpjpe']
            checks.append(common.Check(
                claim=f'... without raising MPJPE by more than {MAX_MPJPE_INCREASE:.0%} ({split_name}; mean over all '
                      f'formats and over {which})',
                holds=bool(a2 <= (1 + MAX_MPJPE_INCREASE) * a1 and b2 <= (1 + MAX_MPJPE_INCREASE) * b1),
                evidence=f'all formats {a2:.1f} vs {a1:.1f} mm ({100 * (a2 / a1 - 1):+.1f} %), 3D-labelled '
                         f'{b2:.1f} vs {b1:.1f} mm ({100 * (b2 / b1 - 1):+.1f} %)'))
    return checks


# ----------------------------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------------------------

def _summary_rows(results, split) -> List[Dict]:
    rows = []
    for name in results['models']:
        m = results['metrics'][split][name]
        row = {'model': MODEL_LABELS.get(name, name), 'mpjpe_3d': m['mean_3d']['mpjpe']}
        for k in SUMMARY_METRICS:
            value = m['mean'][k]
            row[k] = 100 * value if k.startswith(('pck', 'cps')) else value
        row['residual'] = m['consistency']['acae_residual_mm']
        row['offset'] = m['consistency']['offset_error_mm']
        rows.append(row)
    return rows


SUMMARY_COLUMNS = ['model', 'mpjpe_3d', 'mpjpe', 'pa_mpjpe', 'pck@100', 'cps@200', 'abs_mpjpe', 'residual', 'offset']
SUMMARY_HEADERS = ['model', 'MPJPE (3D-labelled formats)', 'MPJPE', 'PA-MPJPE', 'PCK@100mm %', 'CPS@200mm %',
                   'abs. MPJPE', 'ACAE residual', 'offset error']


def summary_table(record) -> str:
    """Markdown summary tables (mean over formats, mm) of every evaluation set of a results.json record: what
    the CLI prints."""
    results = record['results']
    lines = []
    for split, description in results['eval_sets'].items():
        n_formats = len(next(iter(results['metrics'][split].values()))['formats'])
        lines += [f'{description} (mm; columns from MPJPE on: mean over the {n_formats} formats)', '',
                  common.markdown_table(_summary_rows(results, split), SUMMARY_COLUMNS, SUMMARY_HEADERS)]
    return '\n'.join(lines)


def _trend_rows(results, split) -> List[Dict]:
    m = results['metrics'][split]
    rows = []
    references = [r for r in ('separate', STAGE1) if r in m]
    for variant in ('consistency', 'latent', 'hybrid'):
        if variant not in m:
            continue
        for ref in references:
            a, b = m[variant], m[ref]
            d_mpjpe = a['mean']['mpjpe'] - b['mean']['mpjpe']
            d_res = a['consistency']['acae_residual_mm'] - b['consistency']['acae_residual_mm']
            d_off = a['consistency']['offset_error_mm'] - b['consistency']['offset_error_mm']
            rows.append({'comparison': f'{variant} vs {MODEL_LABELS[ref]}', 'paper': PAPER_TRENDS[variant],
                         'd_mpjpe': f'{d_mpjpe:+.1f} ({100 * d_mpjpe / b["mean"]["mpjpe"]:+.1f} %)',
                         'd_res': f'{d_res:+.1f}', 'd_off': f'{d_off:+.1f}'})
    return rows


def _format_rows(results, split) -> List[Dict]:
    rows = []
    for name in results['models']:
        per_format = results['metrics'][split][name]['formats']
        for skeleton, m in per_format.items():
            rows.append({'model': MODEL_LABELS.get(name, name), 'format': skeleton, 'mpjpe': m['mpjpe'],
                         'pa_mpjpe': m['pa_mpjpe'], 'pck@100': 100 * m['pck@100'], 'cps@200': 100 * m['cps@200'],
                         'abs_mpjpe': m['abs_mpjpe']})
    return rows


def markdown_report(record) -> str:
    """results.md of a results.json record: setup, summary tables, the paper's trends beside ours, per-format
    tables, checks."""
    results, context, config = record['results'], record['context'], record['config']
    wall, cpu = context['timings']['wall_s'], context['timings']['cpu_s']
    lines = ['# MeTRAbs + affine-combining autoencoder (Sárándi et al., WACV 2023) on synthetic multi-dataset data',
             '',
             f'Joint space {" + ".join(context["joint_space"])} ({sum(1 for _ in context["joint_space"])} formats); '
             f'batches {context["composition"]}; {config["backbone"]} at {config["crop_size"]} px, precision '
             f'{context["training"]["stage1"]["policy"]}; stage 1 {config["stage1_steps"]} steps, stage 2 '
             f'{config["stage2_steps"]} + {config["bn_inference_steps"]} (BN inference) steps; ACAE with '
             f'{config["acae_latents"]} latents fitted to {context["acae"]["n_poses"]} pseudo-GT poses.',
             f'Motion: {context["motion"]}.',
             f'Wall time {wall["total"] / 60:.1f} min ({", ".join(f"{k} {v:.0f} s" for k, v in wall.items() if k != "total")}); '
             f'{cpu["total"] / 60:.1f} CPU min on {context["machine"]["cpus"]} CPUs '
             f'(load averages {context["machine"].get("load_average")} at the end).', '',
             'MPJPE, PA-MPJPE, PCK and CPS are root-relative (pelvis); absolute MPJPE is in the camera frame. '
             'ACAE residual: mean distance of the all-format prediction from its ACAE reconstruction; offset error: '
             'error of the predicted offsets between same-named joints of different formats relative to the true '
             'offsets (both mm, lower = more consistent). All values mm unless marked %. The mean-pose baseline '
             'predicts the mean training pose of the 3D datasets (camera frame). Columns from MPJPE on are means over '
             'all formats; "MPJPE (3D-labelled formats)" averages only the formats of datasets with 3D labels '
             f'({", ".join(results.get("formats_3d") or [])}): the others (2D labels only) get no depth supervision '
             'in stage 1 and are in the per-format tables.', '']
    for split, description in results['eval_sets'].items():
        lines += [f'## {description}', '',
                  common.markdown_table(_summary_rows(results, split), SUMMARY_COLUMNS, SUMMARY_HEADERS),
                  f'ACAE residual of the ground truth itself (floor of the measure): '
                  f'{common.format_number(results["ground_truth_acae_residual_mm"][split], missing="n/a (the evaluation sets do not label every format of the model)")} mm.', '']
    if not results['eval_sets']:
        lines += ['No synthetic evaluation set: the run trained on full-image datasets only. Evaluate the exported '
                  'model on their test splits with `python -m tools.evaluate`.', '']
        return '\n'.join(lines)
    split = _primary_split(results)
    trend_rows = _trend_rows(results, split)
    if trend_rows:
        lines += [f'## Paper trends (Tables S2-S4) beside ours ({split})', '',
                  common.markdown_table(trend_rows, ['comparison', 'paper', 'd_mpjpe', 'd_res', 'd_off'],
                                        ['comparison', 'paper (WACV 2023, real benchmarks)', 'ours: MPJPE change',
                                         'ACAE residual change', 'offset error change']),
                  'Negative changes are improvements.', '']
    lines += ['## Acceptance checks', '']
    for check in record['checks']:
        lines.append(common.Check(**check).markdown())
    lines.append('')
    for split, description in results['eval_sets'].items():
        lines += [f'## Per format: {description}', '',
                  common.markdown_table(_format_rows(results, split),
                                        ['model', 'format', 'mpjpe', 'pa_mpjpe', 'pck@100', 'cps@200', 'abs_mpjpe'],
                                        ['model', 'format', 'MPJPE', 'PA-MPJPE', 'PCK@100mm %', 'CPS@200mm %',
                                         'abs. MPJPE'])]
    pair_lines = []
    for name in results['models']:
        by_pair = results['metrics'][split][name]['consistency']['offset_error_by_pair']
        pair_lines.append({'model': MODEL_LABELS.get(name, name), **{k: v for k, v in by_pair.items()}})
    pairs = list(results['metrics'][split][STAGE1]['consistency']['offset_error_by_pair'])
    lines += [f'## Offset error per format pair ({split}, mm)', '',
              common.markdown_table(pair_lines, ['model'] + pairs)]
    return '\n'.join(lines)
