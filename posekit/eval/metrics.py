"""3D pose metrics: MPJPE and its aligned variants, PCK, AUC and CPS.

Every metric takes ``pred`` and ``gt`` of shape [N, J, 3] in millimetres (numpy arrays or
TensorFlow tensors; anything ``np.asarray`` accepts) and returns a float64 numpy array [N] with one
value per pose. The optional ``valid`` mask [N, J] (bool) selects the joints that count: per-pose
values average over valid joints only, values at invalid joints may be NaN, and a pose without
any valid joint gives NaN.

Frames: :func:`mpjpe`, :func:`pck` and :func:`auc` compare the coordinates as given and do NOT
re-centre them: pass root-relative poses for the usual root-relative MPJPE (callers subtract the
root), or absolute camera-frame poses for absolute errors. The aligned variants align first:
:func:`pa_mpjpe` and :func:`cps` use the Procrustes similarity alignment (rotation, translation,
scale; reflections excluded), :func:`n_mpjpe` the scale-only alignment of Rhodin et al. 2018
after centring (see :func:`posekit.geometry.align_scale`).

Thresholds are in mm; a joint counts as correct when its error is ``<=`` the threshold.
:func:`evaluate` bundles the means that every experiment reports.
"""

from __future__ import annotations

from typing import Dict

import numpy as np

from posekit import geometry

PCK_THRESHOLD_MM = 150.0
"""Default 3D-PCK threshold of MPI-INF-3DHP (mm)."""

AUC_THRESHOLDS_MM = np.linspace(0.0, PCK_THRESHOLD_MM, 31)
"""Default AUC thresholds: 0, 5, ..., 150 mm (MPI-INF-3DHP convention)."""
AUC_THRESHOLDS_MM.flags.writeable = False

EVAL_PCK_THRESHOLD_MM = 100.0
"""PCK threshold reported by :func:`evaluate` (mm)."""

EVAL_CPS_THRESHOLD_MM = 200.0
"""CPS threshold reported by :func:`evaluate` (mm)."""


def _inputs(pred, gt, valid):
    """Checked float64 pred, gt [N, J, 3] and bool valid [N, J]."""
    arrays = []
    for name, value in (('pred', pred), ('gt', gt)):
        try:
            arr = np.asarray(value).astype(np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f'{name} must be a numeric [N, J, 3] array, got {type(value).__name__}') from e
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise ValueError(f'{name} must have shape [N, J, 3], got shape {arr.shape}')
        arrays.append(arr)
    pred, gt = arrays
    if pred.shape != gt.shape:
        raise ValueError(f'pred and gt must have the same shape, got pred {pred.shape} and gt {gt.shape}')
    if valid is None:
        valid = np.ones(pred.shape[:2], bool)
    else:
        valid = np.asarray(valid)
        if valid.shape != pred.shape[:2]:
            raise ValueError(f'valid must have shape {pred.shape[:2]} ([N, J]), got shape {valid.shape}')
        if valid.dtype != bool:
            if not np.all((valid == 0) | (valid == 1)):
                raise ValueError(f'valid must be boolean (or 0/1), got dtype {valid.dtype}')
            valid = valid.astype(bool)
    for name, arr in (('pred', pred), ('gt', gt)):
        bad = ~np.all(np.isfinite(arr), axis=-1) & valid
        if np.any(bad):
            pose, joint = np.argwhere(bad)[0]
            raise ValueError(f'{name} must be finite at valid joints, got {arr[pose, joint].tolist()} '
                             f'at pose {pose}, joint {joint}')
    return pred, gt, valid


def _threshold(value, name: str) -> float:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != 0 or not np.isfinite(arr) or arr < 0:
        raise ValueError(f'{name} must be a finite scalar >= 0 (mm), got {value!r}')
    return float(arr)


def _joint_errors(pred, gt, valid) -> np.ndarray:
    """[N, J] Euclidean errors (mm), NaN at invalid joints."""
    diff = np.where(valid[..., None], pred - gt, np.nan)
    return np.linalg.norm(diff, axis=-1)


def _valid_mean(values, valid) -> np.ndarray:
    """Mean over valid joints per pose: [N, J] -> [N]; NaN where no joint is valid."""
    total = np.sum(np.where(valid, values, 0.0), axis=-1)
    count = np.sum(valid, axis=-1)
    return np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)


def mpjpe(pred, gt, valid=None) -> np.ndarray:
    """Mean per-joint position error (mm) per pose, without any alignment or re-centring.

    Args:
      pred, gt: [N, J, 3] poses (mm), in the same frame (root-relative or absolute).
      valid: optional [N, J] bool mask of joints that count.

    Returns:
      [N] float64 mean Euclidean joint error (mm).
    """
    pred, gt, valid = _inputs(pred, gt, valid)
    return _valid_mean(_joint_errors(pred, gt, valid), valid)


def pa_mpjpe(pred, gt, valid=None) -> np.ndarray:
    """MPJPE (mm) after Procrustes alignment of each predicted pose onto gt.

    Similarity alignment (rotation, translation, scale) fitted on the valid joints; reflections
    are excluded, so a mirrored prediction keeps a non-zero error. Returns [N] float64 (mm).
    """
    pred, gt, valid = _inputs(pred, gt, valid)
    aligned = geometry.procrustes(pred, gt, scale=True, allow_reflection=False, mask=valid)
    return _valid_mean(_joint_errors(aligned, gt, valid), valid)


def n_mpjpe(pred, gt, valid=None, root_index=None) -> np.ndarray:
    """MPJPE (mm) after scale-only alignment (N-MPJPE, Rhodin et al. 2018).

    Both poses are centred on the mean of their valid joints (or on joint ``root_index`` when
    given), then the prediction is scaled by the least-squares factor; see
    :func:`posekit.geometry.align_scale`. With root-relative inputs and ``root_index`` set to the
    root this equals the common N-MPJPE implementation. Returns [N] float64 (mm).
    """
    pred, gt, valid = _inputs(pred, gt, valid)
    aligned = geometry.align_scale(pred, gt, mask=valid, root_index=root_index)
    return _valid_mean(_joint_errors(aligned, gt, valid), valid)


def pck(pred, gt, threshold=PCK_THRESHOLD_MM, valid=None) -> np.ndarray:
    """Percentage of correct keypoints per pose, as a fraction in [0, 1].

    A valid joint is correct when its Euclidean error (mm, no alignment) is ``<= threshold``.
    Returns [N] float64.
    """
    threshold = _threshold(threshold, 'threshold')
    pred, gt, valid = _inputs(pred, gt, valid)
    correct = _joint_errors(pred, gt, valid) <= threshold
    return _valid_mean(correct.astype(np.float64), valid)


def auc(pred, gt, thresholds=AUC_THRESHOLDS_MM, valid=None) -> np.ndarray:
    """Area under the PCK curve per pose: the mean of :func:`pck` over ``thresholds`` (mm).

    Args:
      thresholds: non-empty 1-D sequence of thresholds >= 0 (mm); default 0, 5, ..., 150.

    Returns:
      [N] float64 in [0, 1].
    """
    thr = np.asarray(thresholds, dtype=np.float64)
    if thr.ndim != 1 or thr.size == 0 or not np.all(np.isfinite(thr)) or np.any(thr < 0):
        raise ValueError(f'thresholds must be a non-empty 1-D sequence of finite values >= 0 (mm), '
                         f'got {thresholds!r}')
    pred, gt, valid = _inputs(pred, gt, valid)
    errors = _joint_errors(pred, gt, valid)
    correct = np.mean(errors[..., None] <= thr, axis=-1)  # [N, J], fraction of thresholds met
    return _valid_mean(correct, valid)


def cps(pred, gt, threshold, valid=None) -> np.ndarray:
    """Correct pose score per pose: 1.0 if every valid joint is within ``threshold`` (mm) after
    Procrustes alignment (similarity, no reflection), else 0.0; NaN without valid joints.

    The mean over poses is the CPS at that threshold. Returns [N] float64.
    """
    threshold = _threshold(threshold, 'threshold')
    pred, gt, valid = _inputs(pred, gt, valid)
    aligned = geometry.procrustes(pred, gt, scale=True, allow_reflection=False, mask=valid)
    errors = _joint_errors(aligned, gt, valid)
    all_correct = np.all(~valid | (errors <= threshold), axis=-1).astype(np.float64)
    return np.where(np.any(valid, axis=-1), all_correct, np.nan)


def _label(threshold: float) -> str:
    return f'{threshold:g}'


def evaluate(pred, gt, valid=None, pck_threshold=EVAL_PCK_THRESHOLD_MM,
             cps_threshold=EVAL_CPS_THRESHOLD_MM, auc_thresholds=AUC_THRESHOLDS_MM) -> Dict[str, float]:
    """The named mean metrics every experiment reports.

    Args:
      pred, gt: [N, J, 3] poses (mm); ``mpjpe``/``pck``/``auc`` use them as given (pass
        root-relative poses for root-relative numbers).
      valid: optional [N, J] bool mask.
      pck_threshold, cps_threshold: thresholds in mm; they appear in the key names.
      auc_thresholds: thresholds (mm) of the AUC.

    Returns:
      dict of Python floats with keys ``mpjpe``, ``pa_mpjpe``, ``n_mpjpe`` (mm),
      ``pck@<pck_threshold>``, ``auc``, ``cps@<cps_threshold>`` (fractions in [0, 1]); e.g.
      ``pck@100`` and ``cps@200`` by default. Each is the mean of the per-pose values over poses
      with at least one valid joint (NaN if there is none).
    """
    pck_threshold = _threshold(pck_threshold, 'pck_threshold')
    cps_threshold = _threshold(cps_threshold, 'cps_threshold')
    pred, gt, valid = _inputs(pred, gt, valid)
    per_pose = {
        'mpjpe': mpjpe(pred, gt, valid),
        'pa_mpjpe': pa_mpjpe(pred, gt, valid),
        'n_mpjpe': n_mpjpe(pred, gt, valid),
        f'pck@{_label(pck_threshold)}': pck(pred, gt, pck_threshold, valid),
        'auc': auc(pred, gt, auc_thresholds, valid),
        f'cps@{_label(cps_threshold)}': cps(pred, gt, cps_threshold, valid),
    }
    return {name: _nanmean(values) for name, values in per_pose.items()}


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float('nan')
