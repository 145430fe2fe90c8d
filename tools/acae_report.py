"""ACAE analysis: reconstruction error and weight statistics over a grid of latents and L1 weights.

Usage::

    python -m tools.acae_report --mocap-dir procedural --out results/acae_procedural
    python -m tools.acae_report --mocap-dir auto --test-mocap-dir auto --out results/acae_cmu
    python -m tools.acae_report --preset=smoke --mocap-dir procedural --out /tmp/acae_quick   # ~40 CPU-s

What it does (issue 5, part 4):

1. **Poses.** Ground truth of every format of the default multi-dataset joint space
   (``posekit.data.bodies.DEFAULT_FORMATS``: h36m_17, smpl_24, coco_19, mpi_inf_3dhp_17; 77 joints)
   derived from motion (``bodies.all_format_joints`` with the per-subject body shapes): procedural
   motion (``--mocap-dir procedural``) or the BVH files of a folder (``auto`` =
   ../shared/data/cmu_mocap if present, else procedural).
2. **Frame: root-relative.** Each pose is expressed in the motion's world axes (y up, mm) with the
   h36m_17 pelvis (``ROOT_JOINT``) at the origin. The ACAE is exactly equivariant to translations
   and rotations (its outputs are affine combinations), so the reconstruction error is the same
   in any camera frame; root-relative coordinates only keep the numbers small for float32. The
   report verifies this: ``frame_check`` re-evaluates every model on the held-out poses moved into
   random camera frames (x right, y down, z forward, 3-6 m in front of the camera) and gives the
   largest change of the MPJPE (float32 rounding, far below 0.1 mm).
3. **Subject-wise split** (``mocap.split_by_subject``, ``test_fraction`` of the subjects held
   out, seeded): ACAEs are fitted on the fit subjects only, for every L in ``--latents`` and every
   weight in ``--l1`` (``posekit.acae.fit_acae``, chiral, same seed), and evaluated on the
   held-out subjects: MPJPE (mm, mean over poses and all 77 joints), and the weight statistics of
   ``posekit.acae.weight_stats`` (negative-weight mass per column, sparsity = fraction of weights
   with ``|w| < SPARSITY_THRESHOLD``, effective support). An external test folder
   (``--test-mocap-dir``, e.g. ../shared/data/cmu_mocap_test) is only evaluated, never fitted on or
   used for any choice.
4. **Reference:** the mean cross-format disagreement of same-named joints on the held-out poses:
   for every pair of formats and every joint name they share, the mean distance (mm) between the
   two formats' versions of that joint; the reference is the mean over all these (pair, joint)
   entries (``bodies.disagreement_table`` gives the per-pair rows, also reported).
5. **Acceptance** (``report.json['acceptance']``): the L = 32 ACAEs reconstruct the held-out
   poses with MPJPE at most a quarter of the reference (``QUARTER``), and raising l1 lowers the
   total negative-weight mass and raises the sparsity for every L.

Outputs in ``--out``: ``report.json``, ``report.md`` (tables), ``latents.png`` (the encoded latent
points of one held-out pose over its skeleton, front and side view, left/right/centre coloured,
one row per l1 for L = ``plot_latents``), ``acae_L{L}_l1_{l1}.npz`` (``posekit.acae.save_acae``)
and ``workers.log`` (stderr of the fitting processes). The last stdout line is the path of
``report.json``.

Cost: each ``fit_acae`` call spends ~4 CPU-s tracing and XLA-compiling its training loop, whatever
the number of steps (a step costs ~0.1 ms), so the 9 fits run in ``--workers`` processes (default
2). Measured on the shared 2-core machine (others' jobs running): smoke ~50 CPU-s, procedural
~60 CPU-s, CMU with the external test ~70 CPU-s.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sys
import time
from typing import Dict, List, Mapping, Optional

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import flags

from experiments import common
from tools import _cli
from posekit import skeletons
from posekit.acae import SPARSITY_THRESHOLD, save_acae
from posekit.data import bodies, mocap
from posekit.eval.acae_analysis import (  # the analysis itself (also what experiments/notebooks/acae.ipynb runs)
    PRESETS, QUARTER, ROOT_JOINT, WORKER_LOG_NAME, ReportConfig, acceptance, cross_format_disagreement,
    evaluate_fit, fit_grid, joint_space_poses, load_clips, plot_pose_index, random_camera_frames,
    resolve_test_mocap_dir, save_latent_plot)

# ---------------------------------------------------------------------------------------- report
def run_report(config: ReportConfig, mocap_dir: Optional[str], out_dir,
               test_mocap_dir: Optional[str] = None, save_weights: bool = True,
               workers: int = 1, log=None) -> Dict:
    """Runs the whole analysis and writes report.json, report.md, latents.png into ``out_dir``.

    Args:
      config: the grid and data sizes.
      mocap_dir: BVH folder of the motion, or None for procedural motion.
      out_dir: output folder (created).
      test_mocap_dir: optional external test folder (evaluated only).
      save_weights: also write the fitted weights as npz.
      workers: processes for the fits (see :func:`fit_grid`).
      log: optional callable taking progress lines.

    Returns:
      the report dict (as written to report.json).
    """
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    space = skeletons.JointSpace(bodies.DEFAULT_FORMATS)
    clips = load_clips(mocap_dir, config)
    fit_clips, held_clips = mocap.split_by_subject(clips, test_fraction=config.test_fraction,
                                                   seed=config.seed)
    fit_poses = joint_space_poses(fit_clips, space)
    held_out = joint_space_poses(held_clips, space)
    external = None
    if test_mocap_dir:
        external = joint_space_poses(load_clips(test_mocap_dir, config), space)
    t_data = time.monotonic()
    if log:
        log(f'data: {len(fit_poses)} fit poses, {len(held_out)} held-out poses '
            f'({t_data - t_start:.1f} s)')

    reference = cross_format_disagreement(held_out, space, config.seed)
    camera_held_out = random_camera_frames(held_out, config.seed)
    fits = fit_grid(fit_poses, space, config, workers=workers,
                    worker_log=out_dir / WORKER_LOG_NAME, log=log)
    t_fit = time.monotonic()
    entries = [evaluate_fit(f, held_out, reference['mean_mm'], camera_held_out, external)
               for f in fits]
    frame_change = max(abs(e['mpjpe_camera_frame_mm'] - e['mpjpe_mm']) for e in entries)

    report = {
        'source': 'procedural' if not mocap_dir else os.path.abspath(mocap_dir),
        'config': dataclasses.asdict(config),
        'formats': list(space.formats),
        'n_joints': space.n_joints,
        'frame': f'root-relative ({ROOT_JOINT} at the origin), world axes (y up), mm',
        'sparsity_threshold': SPARSITY_THRESHOLD,
        'split': {
            'fit_subjects': sorted({c.subject for c in fit_clips}),
            'held_out_subjects': sorted({c.subject for c in held_clips}),
            'fit_poses': int(len(fit_poses)), 'held_out_poses': int(len(held_out)),
        },
        'disagreement': reference,
        'entries': entries,
        'frame_check': {
            'max_mpjpe_change_mm': float(frame_change),
            'description': 'held-out MPJPE in random camera frames minus root-relative'},
    }
    if external is not None:
        report['external_test'] = {
            'source': os.path.abspath(test_mocap_dir), 'poses': int(len(external)),
            'disagreement_mean_mm':
                cross_format_disagreement(external, space, config.seed)['mean_mm'],
        }
    report['acceptance'] = acceptance(entries, reference['mean_mm'], config.l1s)

    plot_fits = [f for f in fits if f.n_latents == config.plot_latents] or fits[:1]
    pose_index = plot_pose_index(held_out)
    save_latent_plot(out_dir / 'latents.png', plot_fits, held_out[pose_index], space)
    report['plot'] = {'path': 'latents.png', 'held_out_pose_index': pose_index,
                      'n_latents': plot_fits[0].n_latents}
    if save_weights:
        for f in fits:
            save_acae(out_dir / f'acae_L{f.n_latents}_l1_{f.l1:g}.npz', f.layer, space.names)
    report['timing_seconds'] = {
        'data': t_data - t_start, 'fits': t_fit - t_data,
        'per_fit': [f.seconds for f in fits], 'total': time.monotonic() - t_start,
    }
    common.write_json(out_dir / 'report.json', report)
    common.atomic_write_text(out_dir / 'report.md', markdown_report(report))
    return report


def markdown_report(report: Mapping) -> str:
    """The report as markdown: setup, reference disagreement, the (L, l1) table, acceptance."""
    acc = report['acceptance']
    quarter = acc['quarter_criterion']
    split = report['split']
    ref = report['disagreement']
    lines = [
        '# ACAE report', '',
        f'- source: `{report["source"]}`; formats {", ".join(report["formats"])} '
        f'({report["n_joints"]} joints); frame: {report["frame"]}',
        f'- fit subjects {", ".join(split["fit_subjects"])} ({split["fit_poses"]} poses); '
        f'held-out subjects {", ".join(split["held_out_subjects"])} ({split["held_out_poses"]} '
        'poses)',
        f'- {report["config"]["steps"]} Adam steps per fit, batch '
        f'{report["config"]["batch_size"]}, '
        f'seed {report["config"]["seed"]}; sparsity = fraction of |w| < '
        f'{report["sparsity_threshold"]:g}; negative mass = mean over columns (output points) of '
        'the summed negative weights, encoder and decoder',
        f'- reference: mean cross-format disagreement of same-named joints on the held-out poses '
        f'= **{ref["mean_mm"]:.1f} mm** ({ref["n_entries"]} format-pair/joint entries)',
    ]
    if 'external_test' in report:
        ext = report['external_test']
        lines.append(f'- external test `{ext["source"]}`: {ext["poses"]} poses, disagreement '
                     f'{ext["disagreement_mean_mm"]:.1f} mm (evaluation only)')
    lines += ['', '## Reconstruction on held-out subjects and weight statistics', '']
    columns = ['n_latents', 'l1', 'mpjpe_mm', 'mpjpe_over_disagreement', 'negative_mass',
               'encoder_negative_mass', 'decoder_negative_mass', 'sparsity', 'effective_support']
    headers = ['L', 'l1', 'MPJPE mm', 'MPJPE / disagr.', 'neg. mass', 'enc. neg.', 'dec. neg.',
               'sparsity', 'eff. support']
    if 'external_test' in report:
        columns.append('external_mpjpe_mm')
        headers.append('external MPJPE mm')
    columns.append('fit_seconds')
    headers.append('fit s')
    rows = []
    for e in report['entries']:
        row = dict(e)
        row['l1'] = f'{e["l1"]:g}'
        row['mpjpe_mm'] = f'{e["mpjpe_mm"]:.2f}'
        for k in ('mpjpe_over_disagreement', 'negative_mass', 'encoder_negative_mass',
                  'decoder_negative_mass', 'sparsity'):
            row[k] = f'{e[k]:.3f}'
        rows.append(row)
    lines.append(common.markdown_table(rows, columns, headers))
    lines += ['## Acceptance', '',
              f'- L={quarter["n_latents"]}: MPJPE <= {QUARTER:g} x '
              f'{quarter["reference_mm"]:.1f} mm '
              f'= {quarter["threshold_mm"]:.1f} mm: '
              + ', '.join(f'l1={p["l1"]:g}: {p["mpjpe_mm"]:.2f} mm '
                          f'({"pass" if p["passed"] else "FAIL"})' for p in quarter['per_l1'])
              + f' -> **{"PASS" if quarter["passed"] else "FAIL"}**']
    for n_latents, t in acc['l1_trends'].items():
        lines.append(
            f'- L={n_latents}, l1 {" -> ".join(f"{v:g}" for v in t["l1"])}: negative mass '
            f'{" -> ".join(f"{v:.3f}" for v in t["negative_mass"])} '
            f'({"decreasing" if t["negative_mass_decreasing"] else "NOT decreasing"}), sparsity '
            f'{" -> ".join(f"{v:.3f}" for v in t["sparsity"])} '
            f'({"increasing" if t["sparsity_increasing"] else "NOT increasing"})')
    lines.append(f'- l1 trends: **{"PASS" if acc["l1_trends_passed"] else "FAIL"}**')
    lines += ['', '## Cross-format disagreement (held-out poses)', '',
              common.markdown_table(
                  [{'a': p['pair'][0], 'b': p['pair'][1], 'mean': p['mean_mm'],
                    'affine': p['affine_mm']} for p in ref['pairs']],
                  ['a', 'b', 'mean', 'affine'],
                  ['format a', 'format b', 'same-named mean mm',
                   'affine map a -> b, mm (fit on a random half, error on the other)']),
              f'Frame check: largest change of a held-out MPJPE in random camera frames: '
              f'{report["frame_check"]["max_mpjpe_change_mm"]:.4f} mm.', '',
              f'![latent points]({report["plot"]["path"]})', '',
              f'Runtime: data {report["timing_seconds"]["data"]:.1f} s, fits '
              f'{report["timing_seconds"]["fits"]:.1f} s, total '
              f'{report["timing_seconds"]["total"]:.1f} s.', '']
    return '\n'.join(lines)


# ------------------------------------------------------------------------------------------- CLI
def define_flags(fv):
    flags.DEFINE_string('out', None, 'output folder', flag_values=fv)
    flags.DEFINE_string('mocap-dir', 'auto', "BVH folder; 'auto' = ../shared/data/cmu_mocap if present, else "
                        "procedural; 'procedural' = the embedded procedural motion", flag_values=fv)
    flags.DEFINE_string('test-mocap-dir', None, "external test BVH folder, evaluated only ('auto' = "
                        "../shared/data/cmu_mocap_test if present)", flag_values=fv)
    flags.DEFINE_enum('preset', 'default', sorted(PRESETS),
                      "smoke: small data, 3000 steps per fit (the tests); default: the report's grid", flag_values=fv)
    flags.DEFINE_list('latents', None, 'comma-separated L values', flag_values=fv)
    flags.DEFINE_list('l1', None, 'comma-separated l1 weights', flag_values=fv)
    flags.DEFINE_integer('steps', None, 'Adam steps per fit', lower_bound=1, flag_values=fv)
    flags.DEFINE_integer('seed', None, 'seed', lower_bound=0, flag_values=fv)
    flags.DEFINE_integer('max-frames-per-clip', None, 'subsample long clips (default: all frames)', lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_integer('workers', 2, 'processes for the fits (1 = in-process)', lower_bound=0, flag_values=fv)
    flags.DEFINE_bool('no-weights', False, 'do not write the npz weights', flag_values=fv)
    flags.DEFINE_bool('quiet', False, 'no progress output', flag_values=fv)


def parse_args(argv: Optional[List[str]] = None):
    """The flags of ``argv`` (absl, see :mod:`tools._cli`) as a namespace."""
    args, _ = _cli.parse(define_flags, argv, 'acae_report', required=('out',))
    try:
        args.latents = None if args.latents is None else tuple(int(v) for v in args.latents)
        args.l1 = None if args.l1 is None else tuple(float(v) for v in args.l1)
    except ValueError as e:
        raise _cli.UsageError(f'--latents must be ints and --l1 numbers: {e}') from None
    return args


def config_from_args(args) -> ReportConfig:
    config = PRESETS[args.preset]
    changes = {k: v for k, v in (('latents', args.latents), ('l1s', args.l1),
                                 ('steps', args.steps), ('seed', args.seed),
                                 ('max_frames_per_clip', args.max_frames_per_clip))
               if v is not None}
    return dataclasses.replace(config, **changes)


def main(argv: Optional[List[str]] = None) -> int:
    try:
        args = parse_args(argv)
    except _cli.UsageError as e:
        print(f'acae_report: error: {e}', file=sys.stderr)
        return 2
    log = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    try:
        config = config_from_args(args)
        mocap_dir = common.resolve_mocap_dir(args.mocap_dir)
        test_dir = resolve_test_mocap_dir(args.test_mocap_dir)
        run_report(config, mocap_dir, args.out, test_mocap_dir=test_dir,
                   save_weights=not args.no_weights, workers=args.workers, log=log)
    except (ValueError, FileNotFoundError) as e:
        print(f'acae_report: error: {e}', file=sys.stderr)
        return 2
    print(os.path.join(args.out, 'report.json'))
    return 0


if __name__ == '__main__':
    _cli.run(main, 'acae_report')
