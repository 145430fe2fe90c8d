"""The ACAE analysis: poses of every format, their cross-format disagreement, a grid of ACAE fits and the
figures of each fit (reconstruction error, weight statistics), and the latent-point plot.

The library half of ``python -m tools.acae_report`` (which adds the command line and the report files) and
what ``experiments/notebooks/acae.ipynb`` runs; see that tool's docstring for the method. Poses are in mm;
root-relative poses are in the motion's world axes (y up) with ``ROOT_JOINT`` at the origin. Plotting
functions take matplotlib axes (matplotlib is imported only by :func:`save_latent_plot`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import sys
import time
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from posekit import skeletons
from posekit.acae import DEFAULT_STEPS, fit_acae, reconstruction_error, weight_stats
from posekit.data import bodies, mocap
from posekit.layers.acae import AffineCombiningAutoencoder

ROOT_JOINT = 'pelv_h36m_17'
"""Joint at the origin of the root-relative poses."""

QUARTER = 0.25
"""Acceptance: MPJPE of the L = ACCEPTANCE_LATENTS ACAE at most this fraction of the reference."""

ACCEPTANCE_LATENTS = 32

# Random camera frames of the frame check: pelvis position in the camera frame (mm).
CAMERA_DISTANCE_RANGE_MM = (3000.0, 6000.0)
CAMERA_LATERAL_RANGE_MM = (-1000.0, 1000.0)
CAMERA_HEIGHT_RANGE_MM = (-250.0, 250.0)
# World axes (y up) -> camera axes (y down, z forward): a rotation by 180 degrees about x.
WORLD_TO_CAMERA_AXES = np.diag([1.0, -1.0, -1.0])

# Colours of the latent-point plot.
SIDE_COLOURS = {'left': 'tab:blue', 'right': 'tab:red', 'centre': 'tab:green'}
TEST_DIR_NAME = 'cmu_mocap_test'
WORKER_LOG_NAME = 'workers.log'


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    """Everything the report depends on (besides the motion folders).

    Attributes:
      latents: numbers of latent points L to fit.
      l1s: L1 weights of the ACAE regularization (relative to the loss in metres), ascending.
      steps: Adam steps per fit (``fit_acae``; learning-rate decays at 60 % and 85 %).
      batch_size: poses per step.
      learning_rate: initial Adam learning rate.
      seed: seed of the subject split, the procedural motion and the fits.
      test_fraction: fraction of the subjects held out.
      fps: motion frame rate (frames of the BVH files are resampled to it).
      max_frames_per_clip: evenly subsample longer clips (None: keep all frames).
      procedural_subjects, procedural_clips, procedural_seconds: size of the procedural motion.
      plot_latents: L of the models shown in the latent-point plot.
    """

    latents: Tuple[int, ...] = (16, 32, 48)
    l1s: Tuple[float, ...] = (0.0, 0.1, 1.0)
    steps: int = DEFAULT_STEPS
    batch_size: int = 64
    learning_rate: float = 3e-2
    seed: int = 0
    test_fraction: float = 0.25
    fps: float = 30.0
    max_frames_per_clip: Optional[int] = None
    procedural_subjects: int = 8
    procedural_clips: int = 6
    procedural_seconds: float = 6.0
    plot_latents: int = 32

    def __post_init__(self):
        if not self.latents or any(int(n) < 1 for n in self.latents):
            raise ValueError(f'latents must be positive ints; got {self.latents!r}')
        if not self.l1s or any(not v >= 0 for v in self.l1s):
            raise ValueError(f'l1s must be non-negative numbers; got {self.l1s!r}')
        if list(self.l1s) != sorted(set(self.l1s)):
            raise ValueError(f'l1s must be strictly ascending; got {self.l1s!r}')
        if self.steps < 1:
            raise ValueError(f'steps must be a positive int; got {self.steps!r}')
        if not 0 < self.test_fraction < 1:
            raise ValueError(f'test_fraction must be in (0, 1); got {self.test_fraction!r}')


PRESETS = {
    'default': ReportConfig(),
    # Small procedural motion. A fit costs ~4 CPU-s of tracing and XLA compilation whatever its
    # length (a step is ~0.1 ms), so fewer steps would save little: 9 fits take ~40 CPU-s.
    'smoke': ReportConfig(steps=3000, max_frames_per_clip=40,
                          procedural_subjects=4, procedural_clips=4, procedural_seconds=4.0),
}


# ------------------------------------------------------------------------------------------ data
def resolve_test_mocap_dir(value: Optional[str]) -> Optional[str]:
    """'auto' -> ../shared/data/cmu_mocap_test if present else None; None/''/'none' -> None."""
    if value in (None, '', 'none'):
        return None
    if value == 'auto':
        train_dir = mocap.default_mocap_dir()
        if train_dir is None:
            return None
        candidate = pathlib.Path(train_dir).parent / TEST_DIR_NAME
        return str(candidate) if candidate.is_dir() else None
    if not os.path.isdir(value):
        raise FileNotFoundError(f'--test-mocap-dir {value!r} is not a directory')
    return value


def load_clips(mocap_dir: Optional[str], config: ReportConfig) -> List[mocap.Clip]:
    """Clips of the BVH folder ``mocap_dir``, or procedural clips when it is None."""
    if mocap_dir:
        return mocap.load_mocap_folder(mocap_dir, fps=config.fps,
                                       max_frames_per_clip=config.max_frames_per_clip)
    clips = mocap.procedural_motions(
        n_subjects=config.procedural_subjects, clips_per_subject=config.procedural_clips,
        seconds=config.procedural_seconds, fps=config.fps, seed=config.seed)
    if config.max_frames_per_clip is not None:
        clips = [mocap.Clip(c.subject, c.name, _subsample(c.motion, config.max_frames_per_clip))
                 for c in clips]
    return clips


def _subsample(motion, max_frames: int):
    if motion.n_frames <= max_frames:
        return motion
    return motion.frames(np.linspace(0, motion.n_frames - 1, max_frames).round().astype(int))


def joint_space_poses(clips: Sequence[mocap.Clip], joint_space: skeletons.JointSpace
                      ) -> np.ndarray:
    """All formats' ground-truth joints of every frame, root-relative.

    Returns:
      [N, J_all, 3] float32, mm, the motion's world axes (y up) with ``ROOT_JOINT`` at the origin;
      frames of all clips concatenated in clip order.
    """
    if not clips:
        raise ValueError('clips must contain at least one clip; got none')
    root = joint_space.names.index(ROOT_JOINT)
    poses = np.concatenate([bodies.all_format_joints(c.motion, joint_space, c.subject)
                            for c in clips])
    return (poses - poses[:, root:root + 1]).astype(np.float32)


def cross_format_disagreement(poses: np.ndarray, joint_space: skeletons.JointSpace,
                              seed: int = 0) -> Dict:
    """Mean distance of same-named joints of different formats (mm), the reconstruction reference.

    Args:
      poses: [N, J_all, 3] mm, one frame shared by all formats (N >= 2).
      joint_space: the formats of ``poses``.
      seed: seed of the random halves of the affine-map column.

    Returns:
      dict: ``mean_mm``, the mean over every (format pair, shared joint name) entry of the mean
      distance over all N poses; ``n_entries``; ``pairs``: per pair of formats ``pair``,
      ``mean_mm`` (over its shared joints), ``joints`` {name: mm} and, for context, ``affine_mm``:
      the error of the shared joints of the second format predicted by a least-squares affine
      combination of all joints of the first (``bodies.disagreement_table``), fitted on a random
      half of the poses and evaluated on the other half.
    """
    if len(poses) < 2:
        raise ValueError(f'poses must hold at least 2 poses; got {len(poses)}')
    by_format = {f: poses[:, joint_space.slices[f]] for f in joint_space.formats}
    # Random order so that both halves of disagreement_table mix all subjects.
    order = np.random.default_rng(seed).permutation(len(poses))
    affine = {tuple(r['pair']): r['affine_mm'] for r in bodies.disagreement_table(
        {f: p[order] for f, p in by_format.items()}, joint_space.formats)}
    pairs, values = [], []
    for i, fa in enumerate(joint_space.formats):
        for fb in joint_space.formats[i + 1:]:
            joints = bodies.disagreement(by_format[fa], by_format[fb], fa, fb)
            if not joints:
                continue
            values += list(joints.values())
            pairs.append({'pair': [fa, fb], 'mean_mm': float(np.mean(list(joints.values()))),
                          'affine_mm': float(affine[(fa, fb)]), 'joints': joints})
    if not values:
        raise ValueError(f'the formats {joint_space.formats} share no joint names')
    return {'mean_mm': float(np.mean(values)), 'n_entries': len(values), 'pairs': pairs}


def random_camera_frames(poses: np.ndarray, seed: int) -> np.ndarray:
    """The poses moved into random camera frames (x right, y down, z forward), mm.

    Each pose is turned by a random angle about the vertical axis, put in front of the camera at a
    random distance in ``CAMERA_DISTANCE_RANGE_MM`` and lateral offset, and its axes converted
    from world (y up) to camera (y down, z forward). [N, J, 3] -> [N, J, 3] float32.
    """
    rng = np.random.default_rng(seed)
    n = len(poses)
    yaw = rng.uniform(-np.pi, np.pi, n)
    c, s = np.cos(yaw), np.sin(yaw)
    rot = np.zeros((n, 3, 3))
    rot[:, 0, 0], rot[:, 0, 2], rot[:, 1, 1], rot[:, 2, 0], rot[:, 2, 2] = c, s, 1.0, -s, c
    rot = WORLD_TO_CAMERA_AXES @ rot
    shift = np.stack([rng.uniform(*CAMERA_LATERAL_RANGE_MM, n),
                      rng.uniform(*CAMERA_HEIGHT_RANGE_MM, n),
                      rng.uniform(*CAMERA_DISTANCE_RANGE_MM, n)], axis=-1)
    out = np.einsum('nij,nkj->nki', rot, poses.astype(np.float64)) + shift[:, None]
    return out.astype(np.float32)


# --------------------------------------------------------------------------------------- fitting
@dataclasses.dataclass
class FitResult:
    """One fitted ACAE and its figures."""

    n_latents: int
    l1: float
    layer: AffineCombiningAutoencoder
    history: Dict[str, np.ndarray]
    seconds: float


def _fit_task(task: Mapping) -> Dict:
    """Runs one ``fit_acae`` (in this process or a worker) and returns plain arrays."""
    import tensorflow as tf
    if task.get('single_thread'):
        try:
            tf.config.threading.set_intra_op_parallelism_threads(1)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # already initialised: keep the process's settings
            pass
    space = skeletons.JointSpace(task['formats'])
    start = time.monotonic()
    layer, history = fit_acae(
        task['poses'], space, n_latents=task['n_latents'], l1=task['l1'], chiral=True,
        steps=task['steps'], batch_size=task['batch_size'], learning_rate=task['learning_rate'],
        seed=task['seed'], log_every=task['log_every'])
    return {'encoder': layer.encoder_weights(), 'decoder': layer.decoder_weights(),
            'n_centre_latents': layer.n_centre_latents, 'history': history,
            'seconds': time.monotonic() - start}


@contextlib.contextmanager
def _stderr_to(path):
    """Points file descriptor 2 at ``path`` (appending) inside the block; None: unchanged.

    Processes started inside the block inherit it: TensorFlow's C++ start-up lines (which
    TF_CPP_MIN_LOG_LEVEL does not silence) then go to the file instead of the console/notebook.
    """
    if path is None:
        yield
        return
    sys.stderr.flush()
    target = os.open(os.fspath(path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    saved = os.dup(2)
    os.dup2(target, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(target)


def fit_grid(poses: np.ndarray, joint_space: skeletons.JointSpace, config: ReportConfig,
             workers: int = 1, worker_log=None, log=None) -> List[FitResult]:
    """Fits a chiral ACAE for every (L, l1) of the config on ``poses`` ([N, J_all, 3] mm).

    Each fit is one ``posekit.acae.fit_acae`` call with the same seed. With ``workers > 1`` the
    fits run in that many spawned processes (one thread each; a fit is dominated by tracing and
    XLA compilation, which are single-threaded) and the fitted normalised weights are loaded into
    layers here; the figures are the same as in-process up to float32 rounding of the weights.
    ``worker_log``: file that receives the workers' stderr (None: the console's).
    """
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f'workers must be a positive int; got {workers!r}')
    grid = [(int(n), float(l1)) for n in config.latents for l1 in config.l1s]
    tasks = [{'poses': poses, 'formats': joint_space.formats, 'n_latents': n, 'l1': l1,
              'steps': config.steps, 'batch_size': config.batch_size,
              'learning_rate': config.learning_rate, 'seed': config.seed,
              'log_every': max(1, config.steps // 4), 'single_thread': workers > 1}
             for n, l1 in grid]
    if workers == 1:
        outputs = map(_fit_task, tasks)
        pool = None
    else:
        import concurrent.futures
        import multiprocessing
        pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=min(workers, len(tasks)), mp_context=multiprocessing.get_context('spawn'))
        with _stderr_to(worker_log):  # the first submit starts every worker process
            futures = [pool.submit(_fit_task, task) for task in tasks]
        outputs = (f.result() for f in futures)
    results = []
    try:
        for (n_latents, l1), out in zip(grid, outputs):
            layer = AffineCombiningAutoencoder(n_latents, joint_info=joint_space, chiral=True,
                                               l1=l1, n_centre_latents=out['n_centre_latents'])
            layer.set_normalized_weights(out['encoder'], out['decoder'])
            results.append(FitResult(n_latents, l1, layer, out['history'], out['seconds']))
            if log:
                log(f'fit L={n_latents} l1={l1:g}: {out["seconds"]:.1f} s, final training loss '
                    f'{out["history"]["loss_mm"][-1]:.2f} mm')
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return results


def evaluate_fit(fit: FitResult, held_out: np.ndarray, reference_mm: float,
                 camera_held_out: Optional[np.ndarray] = None,
                 external: Optional[np.ndarray] = None) -> Dict:
    """Figures of one fit: held-out MPJPE (mm) and ratio to the reference, weight statistics."""
    mpjpe = float(np.mean(reconstruction_error(fit.layer, held_out)))
    entry = {'n_latents': fit.n_latents, 'l1': fit.l1, 'mpjpe_mm': mpjpe,
             'mpjpe_over_disagreement': mpjpe / reference_mm,
             'train_loss_mm': float(fit.history['loss_mm'][-1])}
    entry.update(weight_stats(fit.layer))
    if camera_held_out is not None:
        entry['mpjpe_camera_frame_mm'] = float(np.mean(reconstruction_error(fit.layer,
                                                                            camera_held_out)))
    if external is not None:
        entry['external_mpjpe_mm'] = float(np.mean(reconstruction_error(fit.layer, external)))
    entry['fit_seconds'] = fit.seconds
    return entry


def acceptance(entries: Sequence[Mapping], reference_mm: float, l1s: Sequence[float]) -> Dict:
    """The issue's acceptance figures from the report entries (see module docstring)."""
    quarter = [e for e in entries if e['n_latents'] == ACCEPTANCE_LATENTS]
    threshold = QUARTER * reference_mm
    out = {'quarter_criterion': {
        'n_latents': ACCEPTANCE_LATENTS, 'reference_mm': reference_mm, 'threshold_mm': threshold,
        'per_l1': [{'l1': e['l1'], 'mpjpe_mm': e['mpjpe_mm'],
                    'passed': bool(e['mpjpe_mm'] <= threshold)} for e in quarter],
        'passed': bool(quarter) and all(e['mpjpe_mm'] <= threshold for e in quarter),
    }}
    trends = {}
    for n_latents in sorted({e['n_latents'] for e in entries}):
        row = sorted((e for e in entries if e['n_latents'] == n_latents), key=lambda e: e['l1'])
        neg = [e['negative_mass'] for e in row]
        sparsity = [e['sparsity'] for e in row]
        trends[str(n_latents)] = {
            'l1': [e['l1'] for e in row], 'negative_mass': neg, 'sparsity': sparsity,
            'negative_mass_decreasing': bool(all(b < a for a, b in zip(neg, neg[1:]))),
            'sparsity_increasing': bool(all(b > a for a, b in zip(sparsity, sparsity[1:]))),
        }
    out['l1_trends'] = trends
    out['l1_trends_passed'] = len(l1s) > 1 and all(
        t['negative_mass_decreasing'] and t['sparsity_increasing'] for t in trends.values())
    return out


# ------------------------------------------------------------------------------------------ plot
def joint_sides(joint_space: skeletons.JointSpace) -> np.ndarray:
    """[J] array of 'left'/'right'/'centre' (:func:`posekit.skeletons.joint_sides` of the base names)."""
    sides = skeletons.joint_sides([joint_space.base_name(i) for i in range(joint_space.n_joints)])
    return np.array(['left', 'centre', 'right'])[sides + 1]


def latent_sides(layer: AffineCombiningAutoencoder, joint_space: skeletons.JointSpace
                 ) -> np.ndarray:
    """[L] 'left'/'right'/'centre' of the latents of a chiral ACAE.

    Centre latents are the mirror-invariant ones; of a mirror pair, the latent whose encoder
    weights put more mass on left joints than on right joints is 'left'.
    """
    mirror = layer.latent_mirror()
    w = layer.encoder_weights()
    sides = joint_sides(joint_space)
    left_mass = w[sides == 'left'].sum(axis=0)
    right_mass = w[sides == 'right'].sum(axis=0)
    out = []
    for k, m in enumerate(mirror):
        if m == k:
            out.append('centre')
        else:
            # The pair's masses are mirror images: own = -(the partner's); ties go by index.
            own = left_mass[k] - right_mass[k]
            out.append('left' if own > 0 or (own == 0 and k < m) else 'right')
    return np.array(out)


def facing_front(pose: np.ndarray, joint_space: skeletons.JointSpace) -> np.ndarray:
    """The pose ([J, 3] mm, y up) turned about the vertical so that the body faces +z with its
    left (h36m_17 left hip minus right hip) along +x."""
    lhip = joint_space.names.index('lhip_h36m_17')
    rhip = joint_space.names.index('rhip_h36m_17')
    across = pose[lhip] - pose[rhip]
    angle = np.arctan2(across[2], across[0])
    c, s = np.cos(angle), np.sin(angle)
    # Rotation about y taking the horizontal direction (cos angle, 0, sin angle) onto +x.
    rot = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    return pose @ rot.T


def plot_latent_points(axes, layer: AffineCombiningAutoencoder, pose: np.ndarray,
                       joint_space: skeletons.JointSpace, title: str = '') -> np.ndarray:
    """Draws one pose's skeleton and its encoded latent points, front view and side view.

    Args:
      axes: two matplotlib axes (front: x right = subject's left, y up; side: z = forward, y up).
      layer: a fitted chiral ACAE over ``joint_space``.
      pose: [J_all, 3] mm, y up (turned to face the viewer with :func:`facing_front` first).
      joint_space: the joint space.
      title: prefix of the axes titles.

    Returns:
      [L, 3] the latent points drawn (mm, the pose's frame).
    """
    pose = np.asarray(pose, np.float64)
    latents = layer.encode(pose[np.newaxis].astype(np.float32)).numpy()[0]
    sides = latent_sides(layer, joint_space)
    h36m = joint_space.slices['h36m_17']
    for ax, (u, name) in zip(axes, ((0, 'front'), (2, 'side'))):
        for i, p in joint_space.edges:
            own = h36m.start <= i < h36m.stop
            ax.plot(pose[[i, p], u], pose[[i, p], 1], color='0.3' if own else '0.75',
                    lw=1.5 if own else 0.8, zorder=1)
        ax.scatter(pose[:, u], pose[:, 1], s=6, color='0.5', zorder=2)
        for side, colour in SIDE_COLOURS.items():
            sel = sides == side
            ax.scatter(latents[sel, u], latents[sel, 1], s=28, color=colour, edgecolor='k',
                       linewidth=0.4, label=f'{side} latents ({int(sel.sum())})', zorder=3)
        ax.set_aspect('equal')
        ax.set_title(f'{title} {name}'.strip(), fontsize=9)
        ax.set_xlabel('x (mm, subject\'s left)' if u == 0 else 'z (mm, forward)', fontsize=8)
        ax.set_ylabel('y (mm, up)', fontsize=8)
        ax.tick_params(labelsize=7)
    return latents


def plot_pose_index(held_out: np.ndarray) -> int:
    """A held-out pose to draw: the one with the widest stance of the hands (deterministic)."""
    return int(np.argmax(np.ptp(held_out[..., 0], axis=1) + np.ptp(held_out[..., 2], axis=1)))


def save_latent_plot(path, fits: Sequence[FitResult], pose: np.ndarray,
                     joint_space: skeletons.JointSpace) -> None:
    """PNG with one row (front, side) per fit: the latent points of ``pose`` ([J_all, 3] mm)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    pose = facing_front(pose, joint_space)
    fig, axes = plt.subplots(len(fits), 2, figsize=(7.5, 3.6 * len(fits)), squeeze=False)
    for row, fit in zip(axes, fits):
        plot_latent_points(row, fit.layer, pose, joint_space,
                           title=f'L={fit.n_latents} l1={fit.l1:g}')
    axes[0, 0].legend(fontsize=7, loc='lower left')
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
