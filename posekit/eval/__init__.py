"""Evaluation: 3D pose metrics (numpy; importing this package does not load TensorFlow)."""

from posekit.eval.metrics import auc, cps, evaluate, mpjpe, n_mpjpe, pa_mpjpe, pck

__all__ = ['auc', 'cps', 'evaluate', 'mpjpe', 'n_mpjpe', 'pa_mpjpe', 'pck']
