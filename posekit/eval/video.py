"""Evaluation of per-frame keypoint heatmaps of the video networks: argmax decoding, 2D PCK in pixels, the
constant mean-heatmap baseline and streaming evaluation of a ``PipelinedNetwork`` (``evaluate_stream``).

Shapes: logits and heatmaps (..., h, w, K); keypoints (..., K, 2) px (x, y) with pixel centres at integers.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from posekit.train import losses_video
from posekit.train.video import distillation_term, scan_unroll, supervised_slices

PCK_FRACTION = 0.05
"""PCK threshold as a fraction of the frame side (px); 3.2 px at 64 px."""
_LOGIT_CLIP = 1e-4  # mean heatmap probabilities are clipped to [eps, 1 - eps] before the logit


def mean_heatmap_logits(heatmaps):
    """Logits of the mean target heatmap (h, w, K) over all leading axes: the trivial constant predictor."""
    mean = np.mean(np.asarray(heatmaps, np.float64).reshape((-1,) + np.shape(heatmaps)[-3:]), axis=0)
    mean = np.clip(mean, _LOGIT_CLIP, 1 - _LOGIT_CLIP)
    return np.log(mean / (1 - mean)).astype(np.float32)


def heatmap_argmax(logits, stride):
    """Keypoint positions (..., K, 2) px (x, y) from heatmaps (..., h, w, K): the argmax cell's centre (cell
    (i, j) is centred at (j, i) x stride + (stride - 1) / 2 px, as in ``keypoint_heatmaps``) moved a quarter
    cell towards the higher of its two neighbours along x and along y (no shift on the map's border)."""
    logits = np.asarray(logits, np.float32)
    h, w, k = logits.shape[-3:]
    grid = np.moveaxis(logits, -1, -3)  # (..., K, h, w)
    index = grid.reshape(grid.shape[:-2] + (h * w,)).argmax(-1)
    rows, cols = index // w, index % w
    padded = np.pad(grid, [(0, 0)] * (grid.ndim - 2) + [(1, 1), (1, 1)], constant_values=np.nan)

    def value(r, c):  # padded coordinates
        flat = padded.reshape(padded.shape[:-2] + (-1,))
        return np.take_along_axis(flat, (r * (w + 2) + c)[..., None], -1)[..., 0]

    r, c = rows + 1, cols + 1
    dx = 0.25 * np.sign(value(r, c + 1) - value(r, c - 1))
    dy = 0.25 * np.sign(value(r + 1, c) - value(r - 1, c))
    dx, dy = np.nan_to_num(dx), np.nan_to_num(dy)  # no shift at the border (a neighbour is missing)
    x = (cols + dx) * stride + (stride - 1) / 2.0
    y = (rows + dy) * stride + (stride - 1) / 2.0
    return np.stack([x, y], axis=-1).astype(np.float32)


def pck_2d(pred, coords2d, valid, threshold_px):
    """Fraction of valid 2D keypoints within ``threshold_px`` px of the truth (the 3D ``posekit.eval.metrics.pck``
    works in mm per pose): pred, coords2d (..., K, 2) px; valid
    (..., K). nan if none is valid."""
    valid = np.asarray(valid, bool)
    if not valid.any():
        return float('nan')
    dist = np.linalg.norm(np.asarray(pred) - np.asarray(coords2d), axis=-1)
    return float(np.mean(dist[valid] <= threshold_px))


def evaluate_stream(network, batches, latency, first_scored_step, positive_weight=losses_video.DEFAULT_POSITIVE_WEIGHT,
                    stride=None, constant_logits=None, teacher=None, distill_units=()):
    """Test metrics of a network streaming through clips from zero states (inference mode).

    Args:
        network: the ``PipelinedNetwork`` (or None with ``constant_logits``: the constant predictor).
        batches: iterable of batch dicts (``frames``, ``heatmaps``, ``coords2d``, ``joint_valid``), e.g. the
            test clips in fixed order.
        latency: the network's latency; outputs at steps t >= max(latency, first_scored_step) are scored against
            frame t - latency.
        stride: heatmap stride (px per cell) for PCK; constant_logits: (h, w, K) logits of a constant predictor.
        teacher, distill_units: optionally a sequential teacher and unit names: also report the mean normalised
            squared distance of the network's activations to the teacher's (per unit, execution and example,
            for the frame each activation was computed from) over steps >= first_scored_step.
    Returns:
        dict: ``test_loss`` (weighted sigmoid cross-entropy, mean over scored elements), ``pck`` (fraction of
        in-view keypoints whose heatmap argmax is within PCK_FRACTION x frame side px), ``scored_steps`` and, with a
        teacher, ``distance_to_teacher``.
    """
    losses, weights, distances, clip_counts, hits, counts, scored = [], [], [], [], 0.0, 0, 0
    run = None
    units = tuple(distill_units) if teacher is not None else ()
    if network is not None:
        def forward(frames):
            out = scan_unroll(network, frames, training=False, capture=units)
            if not units:
                return out['heatmaps'], tf.constant(0.0)
            acts = {k: v[:, first_scored_step:] for k, v in out['activations'].items()}
            return out['heatmaps'], distillation_term(network, teacher, frames, acts, units, 1.0 / len(units),
                                                      first_scored_step)
        run = tf.function(forward, autograph=False)
    for batch in batches:
        frames = tf.convert_to_tensor(batch['frames'])
        n_steps, size = int(frames.shape[1]), int(frames.shape[2])
        s0, f0 = supervised_slices(n_steps, latency, first_scored_step)
        targets = np.asarray(batch['heatmaps'])[:, f0:n_steps - latency]
        if run is not None:
            logits, distance = run(frames)
            logits = logits.numpy()[:, s0:]
            distances.append(float(distance))
            clip_counts.append(int(frames.shape[0]))
        else:
            logits = np.broadcast_to(constant_logits, targets.shape)
        losses.append(float(losses_video.heatmap_loss(tf.constant(logits), tf.constant(targets), positive_weight)))
        weights.append(targets.size)
        coords = np.asarray(batch['coords2d'])[:, f0:n_steps - latency]
        valid = np.asarray(batch['joint_valid'])[:, f0:n_steps - latency]
        pred = heatmap_argmax(logits, stride if stride is not None else size // logits.shape[-2])
        dist = np.linalg.norm(pred - coords, axis=-1)
        hits += float(np.sum((dist <= PCK_FRACTION * size) & valid))
        counts += int(valid.sum())
        scored = logits.shape[1]
    result = {'test_loss': float(np.average(losses, weights=weights)),
              'pck': hits / counts if counts else float('nan'), 'scored_steps': scored}
    if units:
        result['distance_to_teacher'] = float(np.average(distances, weights=clip_counts))
    return result
