"""Video clips for the pipelined video networks: deterministic generation, HDF5 cache, tf.data batches.

A *clip set* is N clips of T consecutive frames rendered by :func:`posekit.data.synth.render_video`
(person-centred crops, a camera that orbits and follows the subject) as a dict of numpy arrays:

==============  =========================  =========================================================
key             shape, dtype               meaning
==============  =========================  =========================================================
frames          [N, T, S, S, 3] uint8      the video frames (S = crop side, px)
coords2d        [N, T, K, 2] float32       keypoints in the frame (px; x right, y down)
coords3d        [N, T, K, 3] float32       keypoints (mm, each frame's camera frame)
intrinsics      [N, T, 3, 3] float32       each frame's crop camera (px)
joint_valid     [N, T, K] bool             keypoint in view
clip_index      [N] int32                  motion clip the video was taken from (provenance)
start_frame     [N] int32                  its first motion frame (provenance)
==============  =========================  =========================================================

Clip i of a set is a pure function of (seed, split, i) and the parameters (:func:`generate_clips`);
:func:`ensure_clips` caches a set to one HDF5 file and reuses it while the parameters' hash matches.
:func:`video_dataset` yields training batches in which batch k is a pure function of (seed, k), so a
resumed training run sees the same stream (the contract of :func:`posekit.train.loop.train`).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Dict, Mapping, Optional

import h5py
import numpy as np

from posekit.data import synth

FORMAT_TAG = 'posekit-video-clips'
SCHEMA_VERSION = 1
FIELDS = ('frames', 'coords2d', 'coords3d', 'intrinsics', 'joint_valid', 'clip_index', 'start_frame')
PIXEL_MAX = 255.0  # uint8 frames are divided by this: model inputs are float32 in [0, 1]
DEFAULT_SIGMA = 2.0  # px, Gaussian of the heatmap targets
_SPLIT_KEYS = {'train': 0, 'val': 1, 'test': 2}
_CLIP_SEED_KEY = 0x51D0  # separates the clip-choice stream from render_video's own randomness
_VIDEO_INDEX_STRIDE = 1 << 24  # video_index = split code x stride + i: distinct scenes per split


def _clip_rng(seed, split, index):
    return np.random.default_rng([int(seed), _CLIP_SEED_KEY, _SPLIT_KEYS[split], int(index)])


def generate_clips(spec: synth.DatasetSpec, motion: synth.PreparedMotion, n_clips: int, n_frames: int,
                   seed: int = 0, split: str = 'train', frame_stride: int = 1,
                   skeleton: str = synth.VIDEO_FORMAT) -> Dict[str, np.ndarray]:
    """Renders n_clips clips of n_frames frames (see the module docstring for the arrays).

    Clip i takes a motion clip and start frame drawn from a Generator seeded with (seed, split, i) among
    the clips long enough for ``(n_frames - 1) * frame_stride + 1`` frames, and renders it with
    ``render_video(..., seed=seed, video_index=<split code> * 2**24 + i)``.

    Args:
      spec: dataset whose camera/appearance distributions and ``crop_size`` (S) are used.
      motion: the split's :class:`~posekit.data.synth.PreparedMotion`.
      n_clips: N >= 1; n_frames: T >= 1; frame_stride: motion frames between video frames (>= 1).
      seed: generation seed; split: 'train', 'val' or 'test'.
      skeleton: keypoint format (K keypoints; default h36m_17).
    """
    for name, value in (('n_clips', n_clips), ('n_frames', n_frames), ('frame_stride', frame_stride)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f'{name} must be a positive int; received {name}={value!r}')
    if split not in _SPLIT_KEYS:
        raise ValueError(f'split must be one of {sorted(_SPLIT_KEYS)}; received split={split!r}')
    span = (n_frames - 1) * frame_stride + 1
    lengths = np.array([len(x) for x in motion.landmarks])
    usable = np.flatnonzero(lengths >= span)
    if not len(usable):
        raise ValueError(f'no motion clip has the {span} frames needed for n_frames={n_frames} at '
                         f'frame_stride={frame_stride} (longest: {int(lengths.max())})')
    out = {k: [] for k in FIELDS}
    for i in range(n_clips):
        rng = _clip_rng(seed, split, i)
        clip = int(usable[rng.integers(len(usable))])
        start = int(rng.integers(lengths[clip] - span + 1))
        video = synth.render_video(spec, motion, clip=clip, start=start, n_frames=n_frames, seed=seed,
                                   stride=frame_stride, skeleton=skeleton,
                                   video_index=_SPLIT_KEYS[split] * _VIDEO_INDEX_STRIDE + i)
        for key in ('frames', 'coords2d', 'coords3d', 'intrinsics', 'joint_valid'):
            out[key].append(video[key])
        out['clip_index'].append(clip)
        out['start_frame'].append(start)
    arrays = {k: np.stack(v) for k, v in out.items()}
    arrays['clip_index'] = arrays['clip_index'].astype(np.int32)
    arrays['start_frame'] = arrays['start_frame'].astype(np.int32)
    return arrays


def clips_hash(params: Mapping) -> str:
    """SHA-256 (hex) of the canonical JSON of the generation parameters (the cache key)."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode('utf-8')).hexdigest()


def write_clips(path, arrays: Mapping[str, np.ndarray], params: Mapping) -> str:
    """Writes a clip set to an HDF5 file atomically (temporary file, then ``os.replace``)."""
    path = os.fspath(path)
    missing = [k for k in FIELDS if k not in arrays]
    if missing:
        raise ValueError(f'arrays must contain {list(FIELDS)}; missing {missing}')
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f'{path}.tmp-{os.getpid()}'
    try:
        with h5py.File(tmp, 'w') as f:
            f.attrs['format_tag'] = FORMAT_TAG
            f.attrs['schema_version'] = SCHEMA_VERSION
            f.attrs['generator_version'] = synth.GENERATOR_VERSION
            f.attrs['params_json'] = json.dumps(params, sort_keys=True, default=str)
            f.attrs['params_hash'] = clips_hash(params)
            for key in FIELDS:
                f.create_dataset(key, data=np.asarray(arrays[key]), track_times=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def read_clips(path):
    """(arrays, attributes) of a clip file; ValueError naming the file if it is not a valid clip set."""
    path = os.fspath(path)
    try:
        with h5py.File(path, 'r') as f:
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
            if attrs.get('format_tag') != FORMAT_TAG or attrs.get('schema_version') != SCHEMA_VERSION:
                raise ValueError(f'{path}: not a posekit video clip file of schema {SCHEMA_VERSION} '
                                 f'(format_tag={attrs.get("format_tag")!r}, '
                                 f'schema_version={attrs.get("schema_version")!r})')
            absent = [k for k in FIELDS if k not in f]
            if absent:
                raise ValueError(f'{path}: missing arrays {absent}')
            arrays = {k: f[k][()] for k in FIELDS}
    except OSError as error:
        raise ValueError(f'{path}: cannot read the file as HDF5 ({error})') from None
    return arrays, attrs


def ensure_clips(path, spec: synth.DatasetSpec, motion_fn, n_clips: int, n_frames: int, seed: int = 0,
                 split: str = 'train', frame_stride: int = 1, skeleton: str = synth.VIDEO_FORMAT,
                 motion_key: Optional[str] = None) -> Dict[str, np.ndarray]:
    """The clip set of these parameters, read from ``path`` if it holds it, else generated and written.

    Args:
      path: the HDF5 cache file.
      motion_fn: zero-argument callable returning the split's PreparedMotion (called only to generate).
      motion_key: a string identifying the motion (e.g. the motion folder and split; part of the cache key).
      Others: as :func:`generate_clips`.
    """
    params = dict(spec=json.loads(spec.to_json()), n_clips=int(n_clips), n_frames=int(n_frames), seed=int(seed),
                  split=split, frame_stride=int(frame_stride), skeleton=skeleton, motion=motion_key,
                  generator=synth.GENERATOR_VERSION, schema=SCHEMA_VERSION)
    if os.path.exists(path):
        try:
            arrays, attrs = read_clips(path)
            if attrs.get('params_hash') == clips_hash(params):
                return arrays
        except ValueError:
            pass  # a corrupt or foreign file at our cache path: regenerate it
    arrays = generate_clips(spec, motion_fn(), n_clips, n_frames, seed=seed, split=split,
                            frame_stride=frame_stride, skeleton=skeleton)
    write_clips(path, arrays, params)
    return arrays


# ----------------------------------------------------------------------------------------- batches
def batch_indices(n_clips: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Clip indices [batch_size] of batch ``step``: a pure function of (n_clips, batch_size, seed, step).

    Epochs are seeded permutations of the clips; batch k takes positions k*B .. k*B + B - 1 of their
    concatenation. Same result as the TensorFlow version inside :func:`video_dataset`.
    """
    import tensorflow as tf
    return _tf_batch_indices(n_clips, batch_size, seed, tf.constant(step, tf.int64)).numpy()


def _tf_batch_indices(n_clips, batch_size, seed, step):
    import tensorflow as tf
    positions = step * batch_size + tf.range(batch_size, dtype=tf.int64)
    epochs, offsets = positions // n_clips, positions % n_clips

    def permutation(epoch):
        keys = tf.random.stateless_uniform([n_clips], seed=tf.stack([tf.cast(seed, tf.int64), epoch]))
        return tf.argsort(keys, stable=True)

    first = permutation(epochs[0])
    second = permutation(epochs[0] + 1)  # a batch spans at most two epochs when batch_size <= n_clips
    return tf.where(epochs == epochs[0], tf.gather(first, offsets), tf.gather(second, offsets))


def make_example_fn(clips: Mapping[str, np.ndarray], heatmap_stride: int, sigma: float = DEFAULT_SIGMA,
                    n_frames: Optional[int] = None):
    """fn(indices [B] int) -> batch dict of tensors for those clips (eager or inside tf.data).

    The batch: ``frames`` float32 [B, T, S, S, 3] in [0, 1]; ``heatmaps`` float32
    [B, T, S/stride, S/stride, K] Gaussian targets (:func:`posekit.data.synth.keypoint_heatmaps`, sigma in px,
    0 for keypoints out of view); ``coords2d`` [B, T, K, 2] px; ``joint_valid`` bool [B, T, K]. With
    ``n_frames`` only the first n_frames frames of each clip are used.
    """
    import tensorflow as tf
    size = int(clips['frames'].shape[2])
    steps = int(clips['frames'].shape[1])
    n_frames = steps if n_frames is None else int(n_frames)
    if not 1 <= n_frames <= steps:
        raise ValueError(f'n_frames must be in [1, {steps}] (the clips\' length); received n_frames={n_frames}')
    if isinstance(heatmap_stride, bool) or not isinstance(heatmap_stride, int) or heatmap_stride < 1 \
            or size % heatmap_stride:
        raise ValueError(f'heatmap_stride must be a positive int dividing the crop size {size}; received '
                         f'heatmap_stride={heatmap_stride!r}')
    frames = tf.constant(clips['frames'][:, :n_frames])
    coords = tf.constant(clips['coords2d'][:, :n_frames].astype(np.float32))
    valid = tf.constant(clips['joint_valid'][:, :n_frames].astype(bool))

    def fn(indices):
        c, v = tf.gather(coords, indices), tf.gather(valid, indices)
        return {'frames': tf.cast(tf.gather(frames, indices), tf.float32) / PIXEL_MAX,
                'heatmaps': synth.keypoint_heatmaps(c, v, size, size, stride=heatmap_stride, sigma=sigma),
                'coords2d': c, 'joint_valid': v}

    return fn


def video_dataset(clips: Mapping[str, np.ndarray], batch_size: int, seed: int = 0, start_step: int = 0,
                  num_steps: Optional[int] = None, heatmap_stride: int = 4, sigma: float = DEFAULT_SIGMA,
                  n_frames: Optional[int] = None):
    """tf.data.Dataset of the training batches of steps start_step, start_step + 1, ... (see make_example_fn).

    Batch k holds the clips ``batch_indices(N, batch_size, seed, k)``: a pure function of (seed, k). Infinite
    unless ``num_steps`` (then it stops before step ``num_steps``).
    """
    import tensorflow as tf
    n_clips = int(clips['frames'].shape[0])
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= n_clips:
        raise ValueError(f'batch_size must be an int in [1, {n_clips}] (the number of clips); received '
                         f'batch_size={batch_size!r}')
    example_fn = make_example_fn(clips, heatmap_stride, sigma, n_frames)
    steps = tf.data.Dataset.range(start_step, num_steps if num_steps is not None else np.iinfo(np.int64).max)
    return steps.map(lambda k: example_fn(_tf_batch_indices(n_clips, batch_size, seed, k)),
                     num_parallel_calls=1, deterministic=True).prefetch(2)
