"""Geometry: rotations, cameras, Procrustes alignment (numpy), plus small TF projection helpers.

Conventions (used by every function here and by the whole project):

- Points are row vectors along the last axis; batches broadcast over the leading axes.
- Lengths are millimetres (mm); image coordinates are pixels (px); angles are radians unless a
  name says ``_degrees``.
- Rotation matrices act on column vectors, so a batch of points ``p [..., 3]`` is rotated as
  ``p @ R.T``.
- Camera frame: x right, y down, z forward (OpenCV). A world point ``X`` (mm) has camera
  coordinates ``(X - optical_center) @ rot_world_to_cam.T``; ``depth`` means camera-frame z (mm).
- Pixel coordinates: x to the right, y down, the centre of the top-left pixel is (0, 0), so an
  image of width w spans x in [-0.5, w - 0.5] and its centre is at ((w - 1) / 2, (h - 1) / 2).
  ``imshape`` arguments are (height, width) like ``image.shape[:2]``.
- Lens distortion follows OpenCV's model with coefficients (k1, k2, p1, p2[, k3[, k4, k5, k6
  [, s1, s2, s3, s4]]]) (4, 5, 8 or 12 values), applied to normalized coordinates (x/z, y/z)
  on the way camera -> image and inverted iteratively on the way image -> camera.

NaN points propagate (useful for missing joints); camera parameters must be finite.
TensorFlow is imported lazily: the camera functions at the end of the module take numpy arrays or TF
tensors (:func:`crop_camera`, :func:`fov_intrinsics`, ...), the ``*_tf`` ones and :func:`warp_to_crop` TF only.
"""

from __future__ import annotations

import numpy as np

_AXES = {'X': 0, 'Y': 1, 'Z': 2}
def axis_rotation(axis: str, angle_rad) -> np.ndarray:
    """Rotation matrices about one coordinate axis.

    Args:
      axis: 'X', 'Y' or 'Z' (case-insensitive).
      angle_rad: array of angles [...], radians, right-handed (counter-clockwise looking down the axis).

    Returns:
      [..., 3, 3] float64 rotation matrices.
    """
    key = str(axis).upper()
    if key not in _AXES:
        raise ValueError(f'axis must be one of X, Y, Z, got {axis!r}')
    a = np.asarray(angle_rad, np.float64)
    c, s = np.cos(a), np.sin(a)
    one, zero = np.ones_like(a), np.zeros_like(a)
    if key == 'X':
        rows = [[one, zero, zero], [zero, c, -s], [zero, s, c]]
    elif key == 'Y':
        rows = [[c, zero, s], [zero, one, zero], [-s, zero, c]]
    else:
        rows = [[c, -s, zero], [s, c, zero], [zero, zero, one]]
    return np.stack([np.stack(r, axis=-1) for r in rows], axis=-2)


def euler_to_matrix(angles_rad, order: str) -> np.ndarray:
    """Rotation matrices from intrinsic Euler angles, as BVH rotation channels define them.

    For ``order='ZYX'`` and angles (a, b, c) the result is ``Rz(a) @ Ry(b) @ Rx(c)``: the channels
    compose left to right in the order they are listed.

    Args:
      angles_rad: [..., k] angles in radians, one per letter of ``order``.
      order: string of k axis letters, e.g. 'ZYX' or 'ZXY'.

    Returns:
      [..., 3, 3] float64 rotation matrices.
    """
    angles = np.asarray(angles_rad, np.float64)
    if angles.shape[-1:] != (len(order),):
        raise ValueError(
            f'angles_rad must have last axis {len(order)} for order {order!r}, got shape {angles.shape}')
    result = np.broadcast_to(np.eye(3), angles.shape[:-1] + (3, 3)).copy()
    for k, axis in enumerate(order):
        result = result @ axis_rotation(axis, angles[..., k])
    return result


# ----------------------------------------------------------------------------------------------
# Constants
# ----------------------------------------------------------------------------------------------

ROTATION_TOLERANCE = 1e-5
"""Largest allowed entry of ``R @ R.T - I`` for a matrix accepted as a rotation (float32 input ok)."""

UNDISTORT_TOLERANCE = 1e-9
"""Largest residual (normalized image units) of an undistorted point; worse points become NaN."""

CENTER_TOLERANCE_MM = 1e-6
"""Optical centres closer than this (mm) count as the same point in :meth:`Camera.homography_to`."""

DEGENERATE_SINE = 1e-9
"""Below this sine of the angle between two directions they count as parallel."""

DISTORTION_LENGTHS = (4, 5, 8, 12)
"""Accepted numbers of OpenCV distortion coefficients."""

_N_DISTORTION_MAX = 12
_NEWTON_MAX_ITERATIONS = 40
_NEWTON_MAX_HALVINGS = 20
_NEWTON_TOLERANCE = 1e-15
_SINGULAR_JACOBIAN = 1e-12
# Below this sine of the angle between the viewing direction and world_up, roll is undefined.
_ROLL_UNDEFINED_SINE = 1e-6
_IDENTITY3 = np.eye(3)
_FLIP_X = np.diag([-1.0, 1.0, 1.0])
# Distortion coefficients whose sign changes when the camera x axis is negated: p2, s1, s2.
_ODD_IN_X_COEFFS = (3, 8, 9)


# ----------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------

def _finite_array(value, name: str, shape=None) -> np.ndarray:
    try:
        arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f'{name} must be numeric, got {value!r}') from e
    if shape is not None and arr.shape != shape:
        raise ValueError(f'{name} must have shape {shape}, got shape {arr.shape}')
    if not np.all(np.isfinite(arr)):
        raise ValueError(f'{name} must be finite, got {arr.tolist()}')
    return arr


def _finite_scalar(value, name: str, positive: bool = False) -> float:
    arr = _finite_array(value, name)
    if arr.ndim != 0:
        raise ValueError(f'{name} must be a scalar, got shape {arr.shape}')
    if positive and not arr > 0:
        raise ValueError(f'{name} must be > 0, got {float(arr)}')
    return float(arr)


def _points(value, name: str, dim: int) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f'{name} must be numeric, got {type(value).__name__}') from e
    if arr.ndim < 1 or arr.shape[-1] != dim:
        raise ValueError(f'{name} must have shape [..., {dim}], got shape {arr.shape}')
    return arr


def _imshape(imshape, name: str = 'imshape'):
    try:
        dims = tuple(int(s) for s in tuple(imshape)[:2])
    except (TypeError, ValueError) as e:
        raise ValueError(f'{name} must be (height, width), got {imshape!r}') from e
    if len(dims) != 2 or min(dims) <= 0:
        raise ValueError(f'{name} must be (height, width) with positive sizes, got {imshape!r}')
    return dims


def _unit(v, name: str) -> np.ndarray:
    v = np.asarray(v, np.float64)
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    if np.any(norm == 0):
        raise ValueError(f'{name} must be non-zero vectors, got {v.tolist()}')
    return v / norm


# ----------------------------------------------------------------------------------------------
# Rotations
# ----------------------------------------------------------------------------------------------

def _skew(v: np.ndarray) -> np.ndarray:
    zero = np.zeros_like(v[..., 0])
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    return np.stack([np.stack([zero, -z, y], -1),
                     np.stack([z, zero, -x], -1),
                     np.stack([-y, x, zero], -1)], -2)


def rotation_from_vectors(source, target) -> np.ndarray:
    """Minimal rotations taking direction ``source`` to direction ``target``.

    Args:
      source: [..., 3] non-zero vectors (any length).
      target: [..., 3] non-zero vectors, broadcastable with ``source``.

    Returns:
      [..., 3, 3] rotation matrices R (det +1) with ``R @ unit(source) == unit(target)``, rotating
      about ``source x target`` by the angle between them. Opposite directions give a half turn
      about an axis perpendicular to ``source``.
    """
    a = _unit(_points(source, 'source', 3), 'source')
    b = _unit(_points(target, 'target', 3), 'target')
    a, b = np.broadcast_arrays(a, b)
    axis = np.cross(a, b)
    cos = np.sum(a * b, axis=-1)
    k = _skew(axis)
    with np.errstate(divide='ignore', invalid='ignore'):
        factor = 1.0 / (1.0 + cos)
    opposite = (1.0 + cos) < DEGENERATE_SINE
    factor = np.where(opposite, 0.0, factor)
    result = _IDENTITY3 + k + (k @ k) * factor[..., None, None]
    if np.any(opposite):
        # Half turn about a unit axis n perpendicular to a: R = 2 n n^T - I.
        helper = np.where(np.abs(a[..., :1]) < 0.9, [1.0, 0.0, 0.0], [0.0, 1.0, 0.0])
        n = _unit(np.cross(a, helper), 'source')
        half_turn = 2.0 * n[..., :, None] * n[..., None, :] - _IDENTITY3
        result = np.where(opposite[..., None, None], half_turn, result)
    return result


def look_at_rotation(eye, target, world_up=(0, -1, 0)) -> np.ndarray:
    """World-to-camera rotation of an upright camera at ``eye`` looking at ``target``.

    The camera's z axis points from ``eye`` to ``target``, its x axis (right) is horizontal, i.e.
    perpendicular to ``world_up``, and its y axis (down) has a negative component along
    ``world_up``: zero roll.

    Args:
      eye: [..., 3] camera positions, world frame (mm).
      target: [..., 3] points to look at, world frame (mm), broadcastable with ``eye``.
      world_up: [3] (or [..., 3]) the world's up direction, e.g. (0, -1, 0) when world y is down,
        (0, 0, 1) for z-up worlds.

    Returns:
      [..., 3, 3] rotation matrices whose rows are the camera x, y, z axes in world coordinates.

    Raises:
      ValueError: if eye == target or the viewing direction is parallel to ``world_up``.
    """
    eye = _points(eye, 'eye', 3)
    target = _points(target, 'target', 3)
    up = _unit(_points(world_up, 'world_up', 3), 'world_up')
    forward = target - eye
    if np.any(np.linalg.norm(forward, axis=-1) == 0):
        raise ValueError(f'target must differ from eye, got eye={eye.tolist()}, target={target.tolist()}')
    forward = _unit(forward, 'target - eye')
    if np.any(np.linalg.norm(np.cross(forward, up), axis=-1) < DEGENERATE_SINE):
        raise ValueError(f'the viewing direction must not be parallel to world_up={up.tolist()}, '
                         f'got eye={eye.tolist()}, target={target.tolist()}')
    return upright_rotation(forward, up)


# ----------------------------------------------------------------------------------------------
# Lens distortion (OpenCV model) on normalized coordinates
# ----------------------------------------------------------------------------------------------

def _check_distortion(coeffs, name: str = 'distortion_coeffs') -> np.ndarray:
    d = _finite_array(coeffs, name)
    if d.ndim != 1 or d.shape[0] not in DISTORTION_LENGTHS:
        raise ValueError(f'{name} must be a vector of {DISTORTION_LENGTHS} OpenCV coefficients '
                         f'(k1, k2, p1, p2, k3, k4, k5, k6, s1, s2, s3, s4), got shape {d.shape}')
    return d


def _padded(d: np.ndarray) -> np.ndarray:
    return np.concatenate([d, np.zeros(_N_DISTORTION_MAX - d.shape[0])])


def _distort(xy, d, jacobian: bool = False):
    """OpenCV distortion of normalized points xy [..., 2] with 12 padded coefficients d [..., 12].

    numpy or TensorFlow (:func:`array_backend`); ``d``'s leading axes broadcast against ``xy``'s.
    """
    xp = array_backend(xy, d)
    k1, k2, p1, p2, k3, k4, k5, k6, s1, s2, s3, s4 = (d[..., i] for i in range(_N_DISTORTION_MAX))
    u, v = xy[..., 0], xy[..., 1]
    r2 = u * u + v * v
    num = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))
    den = 1.0 + r2 * (k4 + r2 * (k5 + r2 * k6))
    radial = num / den
    thin_x = s1 + s2 * r2
    thin_y = s3 + s4 * r2
    out = xp.stack([u * radial + 2.0 * p1 * u * v + p2 * (r2 + 2.0 * u * u) + r2 * thin_x,
                    v * radial + p1 * (r2 + 2.0 * v * v) + 2.0 * p2 * u * v + r2 * thin_y], -1)
    if not jacobian:
        return out
    d_num = k1 + r2 * (2.0 * k2 + 3.0 * k3 * r2)
    d_den = k4 + r2 * (2.0 * k5 + 3.0 * k6 * r2)
    d_radial = (d_num * den - num * d_den) / (den * den)  # d radial / d r2
    dthin_x = thin_x + s2 * r2  # d(r2 * thin_x) / d r2
    dthin_y = thin_y + s4 * r2
    j00 = radial + 2.0 * u * u * d_radial + 2.0 * p1 * v + 6.0 * p2 * u + 2.0 * u * dthin_x
    j01 = 2.0 * u * v * d_radial + 2.0 * p1 * u + 2.0 * p2 * v + 2.0 * v * dthin_x
    j10 = 2.0 * u * v * d_radial + 2.0 * p1 * u + 2.0 * p2 * v + 2.0 * u * dthin_y
    j11 = radial + 2.0 * v * v * d_radial + 6.0 * p1 * v + 2.0 * p2 * u + 2.0 * v * dthin_y
    return out, (j00, j01, j10, j11)


def distort_normalized(points, distortion_coeffs) -> np.ndarray:
    """Applies OpenCV lens distortion to normalized image points.

    Args:
      points: [..., 2] undistorted normalized coordinates (x/z, y/z), camera frame.
      distortion_coeffs: 4, 5, 8 or 12 OpenCV coefficients (k1, k2, p1, p2, k3, ...).

    Returns:
      [..., 2] distorted normalized coordinates (multiply by the intrinsic matrix for pixels).
    """
    xy = _points(points, 'points', 2)
    return _distort(xy, _padded(_check_distortion(distortion_coeffs)))


def undistort_normalized(points, distortion_coeffs, tolerance: float = UNDISTORT_TOLERANCE) -> np.ndarray:
    """Inverts :func:`distort_normalized` by damped Newton iteration.

    Args:
      points: [..., 2] distorted normalized coordinates.
      distortion_coeffs: 4, 5, 8 or 12 OpenCV coefficients.
      tolerance: largest accepted residual ``|distort(result) - points|`` (normalized units).

    Returns:
      [..., 2] undistorted normalized coordinates; NaN where no point within ``tolerance`` was
      found (outside the region where the distortion polynomial is invertible).
    """
    target = _points(points, 'points', 2)
    tolerance = _finite_scalar(tolerance, 'tolerance', positive=True)
    d = _padded(_check_distortion(distortion_coeffs))
    x = target.copy()
    with np.errstate(all='ignore'):
        residual_vec = _distort(x, d) - target
        residual = np.linalg.norm(residual_vec, axis=-1)
        for _ in range(_NEWTON_MAX_ITERATIONS):
            active = residual > _NEWTON_TOLERANCE
            if not np.any(active):
                break
            _, (j00, j01, j10, j11) = _distort(x, d, jacobian=True)
            det = j00 * j11 - j01 * j10
            rx, ry = residual_vec[..., 0], residual_vec[..., 1]
            singular = ~(np.abs(det) > _SINGULAR_JACOBIAN)
            safe_det = np.where(singular, 1.0, det)
            step = np.stack([(j11 * rx - j01 * ry) / safe_det, (j00 * ry - j10 * rx) / safe_det], -1)
            step = np.where(singular[..., None], residual_vec, step)
            scale = np.ones_like(residual)
            for _ in range(_NEWTON_MAX_HALVINGS):
                candidate = x - scale[..., None] * step
                cand_vec = _distort(candidate, d) - target
                cand_res = np.linalg.norm(cand_vec, axis=-1)
                better = cand_res < residual
                if np.all(better | ~active):
                    break
                scale = np.where(better, scale, 0.5 * scale)
            accept = better & active
            if not np.any(accept):
                break
            x = np.where(accept[..., None], candidate, x)
            residual_vec = np.where(accept[..., None], cand_vec, residual_vec)
            residual = np.where(accept, cand_res, residual)
    return np.where((residual <= tolerance)[..., None], x, np.nan)


# ----------------------------------------------------------------------------------------------
# Camera
# ----------------------------------------------------------------------------------------------

def _readonly(arr: np.ndarray) -> np.ndarray:
    arr = np.array(arr, dtype=np.float64)
    arr.flags.writeable = False
    return arr


class Camera:
    """A pinhole camera with optional OpenCV lens distortion. Immutable.

    A world point ``X`` (mm) maps to camera coordinates ``p = (X - optical_center) @ R.T``
    (x right, y down, z forward, mm), to normalized coordinates ``(p_x / p_z, p_y / p_z)``, through
    the lens distortion, and through the intrinsic matrix ``K`` to pixels.

    Methods that change the camera (``flipped``, ``zoomed``, ``rolled``, ``turned_towards``,
    ``shifted_image``, ``scaled_image``, ``center_principal_point``, ``copy``) return a new
    ``Camera``; the parameter arrays are read-only. Cameras compare equal when all parameters are
    equal, and ``eval(repr(camera)) == camera``.

    Args:
      optical_center: [3] camera position in the world frame (mm). Default: origin.
      rot_world_to_cam: [3, 3] orthonormal matrix whose rows are the camera axes in world
        coordinates (det +1, or -1 for a mirrored camera made by :meth:`flipped`). Default: I.
      intrinsic_matrix: [3, 3] ``[[fx, skew, cx], [0, fy, cy], [0, 0, 1]]`` in px with fx, fy > 0.
        Default: I (normalized image coordinates).
      distortion_coeffs: None or 4, 5, 8 or 12 OpenCV coefficients (k1, k2, p1, p2, k3, k4, k5,
        k6, s1, s2, s3, s4). All zeros is stored as None.
      world_up: [3] the world's up direction (stored normalized). Default (0, -1, 0): world y
        points down, like the camera frame. Used by :meth:`turned_towards` to keep the horizon.

    Projections equal ``cv2.projectPoints`` with the same parameters when the skew is 0 (OpenCV
    ignores ``K[0, 1]``); undistortion is solved to ``UNDISTORT_TOLERANCE``, tighter than
    ``cv2.undistortPoints``' default iterations.

    Raises:
      ValueError: naming the argument, for wrong shapes, non-finite values, a non-orthonormal
        rotation, or an intrinsic matrix that is not upper triangular with positive focal lengths.
    """

    __slots__ = ('_optical_center', '_rot', '_intrinsics', '_distortion', '_world_up')

    def __init__(self, optical_center=None, rot_world_to_cam=None, intrinsic_matrix=None,
                 distortion_coeffs=None, world_up=(0, -1, 0)):
        center = np.zeros(3) if optical_center is None else _finite_array(
            optical_center, 'optical_center', (3,))
        rot = _IDENTITY3 if rot_world_to_cam is None else _finite_array(
            rot_world_to_cam, 'rot_world_to_cam', (3, 3))
        orthonormality_error = np.abs(rot @ rot.T - _IDENTITY3).max()
        if orthonormality_error > ROTATION_TOLERANCE:
            raise ValueError(f'rot_world_to_cam must be orthonormal (|R R^T - I| <= {ROTATION_TOLERANCE}), '
                             f'got {rot.tolist()} with error {orthonormality_error:.3g}')
        intrinsics = _IDENTITY3 if intrinsic_matrix is None else _finite_array(
            intrinsic_matrix, 'intrinsic_matrix', (3, 3))
        lower = np.array([intrinsics[1, 0], intrinsics[2, 0], intrinsics[2, 1], intrinsics[2, 2] - 1.0])
        if np.abs(lower).max() > 1e-9 or not (intrinsics[0, 0] > 0 and intrinsics[1, 1] > 0):
            raise ValueError('intrinsic_matrix must be [[fx, skew, cx], [0, fy, cy], [0, 0, 1]] with '
                             f'fx, fy > 0, got {intrinsics.tolist()}')
        intrinsics = np.triu(intrinsics)
        intrinsics[2, 2] = 1.0
        distortion = None
        if distortion_coeffs is not None:
            distortion = _check_distortion(distortion_coeffs)
            if not np.any(distortion):
                distortion = None
        up = _finite_array(world_up, 'world_up', (3,))
        up_norm = np.linalg.norm(up)
        if up_norm == 0:
            raise ValueError(f'world_up must be a non-zero vector, got {up.tolist()}')
        self._optical_center = _readonly(center)
        self._rot = _readonly(rot)
        self._intrinsics = _readonly(intrinsics)
        self._distortion = None if distortion is None else _readonly(distortion)
        self._world_up = _readonly(up / up_norm)

    # -- parameters ---------------------------------------------------------------------------

    @property
    def optical_center(self) -> np.ndarray:
        """[3] camera position, world frame (mm), read-only."""
        return self._optical_center

    @property
    def rot_world_to_cam(self) -> np.ndarray:
        """[3, 3] world-to-camera rotation (rows: camera axes in world coordinates), read-only."""
        return self._rot

    @property
    def intrinsic_matrix(self) -> np.ndarray:
        """[3, 3] intrinsic matrix (px), read-only."""
        return self._intrinsics

    @property
    def distortion_coeffs(self):
        """None or [4|5|8|12] OpenCV distortion coefficients, read-only."""
        return self._distortion

    @property
    def world_up(self) -> np.ndarray:
        """[3] unit up direction of the world frame, read-only."""
        return self._world_up

    @property
    def has_distortion(self) -> bool:
        return self._distortion is not None

    @property
    def focal_length(self) -> np.ndarray:
        """[2] (fx, fy) in px."""
        return np.array([self._intrinsics[0, 0], self._intrinsics[1, 1]])

    @property
    def principal_point(self) -> np.ndarray:
        """[2] (cx, cy) in px."""
        return self._intrinsics[:2, 2].copy()

    @property
    def extrinsic_matrix(self) -> np.ndarray:
        """[4, 4] homogeneous world-to-camera transform ``[[R, -R c], [0, 0, 0, 1]]`` (mm)."""
        result = np.eye(4)
        result[:3, :3] = self._rot
        result[:3, 3] = -self._rot @ self._optical_center
        return result

    @property
    def projection_matrix(self) -> np.ndarray:
        """[3, 4] ``K [R | -R c]``: world (homogeneous, mm) to image (homogeneous, px), ignoring distortion."""
        return self._intrinsics @ self.extrinsic_matrix[:3]

    def _fields(self) -> dict:
        return dict(optical_center=self._optical_center, rot_world_to_cam=self._rot,
                    intrinsic_matrix=self._intrinsics, distortion_coeffs=self._distortion,
                    world_up=self._world_up)

    def copy(self, **changes) -> 'Camera':
        """A new camera with the same parameters except the given constructor arguments."""
        return Camera(**{**self._fields(), **changes})

    def __repr__(self) -> str:
        fields = self._fields()
        parts = [f'{k}={None if v is None else v.tolist()!r}' for k, v in fields.items()]
        return f'Camera({", ".join(parts)})'

    def __eq__(self, other) -> bool:
        if not isinstance(other, Camera):
            return NotImplemented
        for (_, a), (_, b) in zip(self._fields().items(), other._fields().items()):
            if (a is None) != (b is None) or (a is not None and not np.array_equal(a, b)):
                return False
        return True

    def __hash__(self) -> int:
        return hash(tuple(None if v is None else (v + 0.0).tobytes() for v in self._fields().values()))

    def allclose(self, other: 'Camera', rtol: float = 1e-7, atol: float = 1e-9) -> bool:
        """Whether all parameters of ``other`` are within numpy ``allclose`` tolerances of this camera's."""
        if not isinstance(other, Camera):
            raise ValueError(f'other must be a Camera, got {type(other).__name__}')
        da = np.zeros(_N_DISTORTION_MAX) if self._distortion is None else _padded(self._distortion)
        db = np.zeros(_N_DISTORTION_MAX) if other._distortion is None else _padded(other._distortion)
        pairs = [(self._optical_center, other._optical_center), (self._rot, other._rot),
                 (self._intrinsics, other._intrinsics), (da, db), (self._world_up, other._world_up)]
        return all(np.allclose(a, b, rtol=rtol, atol=atol) for a, b in pairs)

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_fov(cls, fov_degrees, imshape, optical_center=None, rot_world_to_cam=None,
                 world_up=(0, -1, 0)) -> 'Camera':
        """A distortion-free camera with square pixels from its field of view.

        Args:
          fov_degrees: field of view in degrees, in (0, 180), measured along the larger image side
            between the outer edges of the border pixels.
          imshape: (height, width) in px (extra trailing entries such as channels are ignored).
          optical_center, rot_world_to_cam, world_up: as in the constructor.

        Returns:
          Camera with ``fx = fy = max(height, width) / 2 / tan(fov / 2)`` and principal point at
          the image centre ((width - 1) / 2, (height - 1) / 2).
        """
        fov = _finite_scalar(fov_degrees, 'fov_degrees')
        if not 0 < fov < 180:
            raise ValueError(f'fov_degrees must be in (0, 180), got {fov}')
        height, width = _imshape(imshape)
        return cls(optical_center, rot_world_to_cam, fov_intrinsics(fov, height, width), None, world_up)

    # -- point transforms -----------------------------------------------------------------------

    def world_to_camera(self, points_world) -> np.ndarray:
        """[..., 3] world points (mm) -> [..., 3] camera-frame points (mm)."""
        p = _points(points_world, 'points_world', 3)
        return (p - self._optical_center) @ self._rot.T

    def camera_to_world(self, points_cam) -> np.ndarray:
        """[..., 3] camera-frame points (mm) -> [..., 3] world points (mm)."""
        p = _points(points_cam, 'points_cam', 3)
        return p @ self._rot + self._optical_center

    def _normalized_to_pixels(self, xy: np.ndarray) -> np.ndarray:
        k = self._intrinsics
        x, y = xy[..., 0], xy[..., 1]
        return np.stack([k[0, 0] * x + k[0, 1] * y + k[0, 2], k[1, 1] * y + k[1, 2]], -1)

    def _pixels_to_normalized(self, px: np.ndarray) -> np.ndarray:
        k = self._intrinsics
        y = (px[..., 1] - k[1, 2]) / k[1, 1]
        x = (px[..., 0] - k[0, 2] - k[0, 1] * y) / k[0, 0]
        return np.stack([x, y], -1)

    def camera_to_image(self, points_cam) -> np.ndarray:
        """[..., 3] camera-frame points (mm) -> [..., 2] pixels, with lens distortion.

        Points with z <= 0 (behind the camera) are divided by z like the others (the result is
        meaningless there, inf/NaN at z == 0); callers mask them.
        """
        p = _points(points_cam, 'points_cam', 3)
        with np.errstate(divide='ignore', invalid='ignore'):
            xy = p[..., :2] / p[..., 2:3]
        if self._distortion is not None:
            xy = _distort(xy, _padded(self._distortion))
        return self._normalized_to_pixels(xy)

    def world_to_image(self, points_world) -> np.ndarray:
        """[..., 3] world points (mm) -> [..., 2] pixels."""
        return self.camera_to_image(self.world_to_camera(points_world))

    def image_to_camera(self, points_image, depth) -> np.ndarray:
        """Back-projects pixels to camera-frame points at a given depth.

        Args:
          points_image: [..., 2] pixels (of the distorted image if the camera has distortion).
          depth: camera-frame z in mm: a scalar, [...] or [..., 1], broadcastable to
            ``points_image.shape[:-1]``.

        Returns:
          [..., 3] camera-frame points (mm) with z == depth. All-NaN points where undistortion
          finds no preimage (see :func:`undistort_normalized`).
        """
        px = _points(points_image, 'points_image', 2)
        z = self._depth(depth, px.shape[:-1])
        xy = self._pixels_to_normalized(px)
        if self._distortion is not None:
            xy = undistort_normalized(xy, self._distortion)
            z = np.where(np.isnan(xy[..., 0]), np.nan, z)
        return np.concatenate([xy * z[..., None], z[..., None]], -1)

    @staticmethod
    def _depth(depth, batch_shape) -> np.ndarray:
        try:
            z = np.asarray(depth, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f'depth must be numeric, got {type(depth).__name__}') from e
        if z.ndim == len(batch_shape) + 1 and z.shape[-1:] == (1,):
            z = z[..., 0]
        try:
            if np.broadcast_shapes(z.shape, batch_shape) != tuple(batch_shape):
                raise ValueError
        except ValueError:
            raise ValueError(f'depth must be broadcastable to the point batch shape {tuple(batch_shape)}, '
                             f'got shape {z.shape}') from None
        return np.broadcast_to(z, batch_shape)

    def image_to_world(self, points_image, depth) -> np.ndarray:
        """[..., 2] pixels + camera-frame depth (mm) -> [..., 3] world points (mm)."""
        return self.camera_to_world(self.image_to_camera(points_image, depth))

    # -- derived cameras -------------------------------------------------------------------------

    def flipped(self, image_width=None) -> 'Camera':
        """The camera of the horizontally mirrored image.

        The camera x axis is negated: camera-frame points become ``diag(-1, 1, 1) @ p`` (the
        rotation gets det -1), the skew and the x-odd distortion coefficients (p2, s1, s2) change
        sign, so distortion stays consistent with the mirrored image.

        Args:
          image_width: None to mirror about the principal point (a world point's new projection
            is ``(2 cx - x, y)``), or the width in px of the image being flipped with
            ``image[:, ::-1]``: then the new projection is ``(image_width - 1 - x, y)``.
        """
        rot = _FLIP_X @ self._rot
        intrinsics = self._intrinsics.copy()
        intrinsics[0, 1] = -intrinsics[0, 1]
        if image_width is not None:
            width = _finite_scalar(image_width, 'image_width', positive=True)
            intrinsics[0, 2] = width - 1.0 - intrinsics[0, 2]
        distortion = self._distortion
        if distortion is not None:
            distortion = distortion.copy()
            odd = [i for i in _ODD_IN_X_COEFFS if i < distortion.shape[0]]
            distortion[odd] = -distortion[odd]
        return self.copy(rot_world_to_cam=rot, intrinsic_matrix=intrinsics, distortion_coeffs=distortion)

    def zoomed(self, factor) -> 'Camera':
        """Focal lengths (and skew) multiplied by ``factor`` > 0; the principal point stays."""
        factor = _finite_scalar(factor, 'factor', positive=True)
        intrinsics = self._intrinsics.copy()
        intrinsics[:2, :2] *= factor
        return self.copy(intrinsic_matrix=intrinsics)

    def rolled(self, angle_rad) -> 'Camera':
        """The camera rotated about its optical axis.

        New camera-frame points are ``Rz(angle_rad) @ p``. On screen (x right, y down) the image
        content turns clockwise by ``angle_rad`` about the principal point (exactly so for square
        pixels, no skew, radial-only distortion); ``rolled(-a)`` matches
        ``cv2.getRotationMatrix2D(principal_point, degrees(a), 1)``.
        """
        angle = _finite_scalar(angle_rad, 'angle_rad')
        return self.copy(rot_world_to_cam=axis_rotation('Z', angle) @ self._rot)

    def turned_towards(self, target_world) -> 'Camera':
        """The camera rotated about its optical centre so that its optical axis passes through the target.

        Like a camera on a pan-tilt tripod: the roll relative to ``world_up`` is kept (an upright
        camera stays upright, a rolled one keeps its roll angle; a mirrored camera stays
        mirrored). When the old or the new viewing direction is parallel to ``world_up`` the roll
        is undefined and the minimal rotation taking the old axis to the new one is used.
        The target then projects to the principal point.

        Args:
          target_world: [3] point in the world frame (mm), different from the optical centre.
        """
        target = _finite_array(target_world, 'target_world', (3,))
        direction = target - self._optical_center
        if np.linalg.norm(direction) == 0:
            raise ValueError(f'target_world must differ from the optical centre, got {target.tolist()}')
        new_forward = direction / np.linalg.norm(direction)
        old_forward = self._rot[2]
        up = self._world_up
        degenerate = (np.linalg.norm(np.cross(old_forward, up)) < _ROLL_UNDEFINED_SINE
                      or np.linalg.norm(np.cross(new_forward, up)) < _ROLL_UNDEFINED_SINE)
        if degenerate:
            # Rotate the camera axes by the world-frame minimal rotation M: R_new = R M^T.
            rot = self._rot @ rotation_from_vectors(old_forward, new_forward).T
        else:
            old_upright = look_at_rotation(np.zeros(3), old_forward, up)
            new_upright = look_at_rotation(np.zeros(3), new_forward, up)
            roll = self._rot @ old_upright.T  # an orthogonal map fixing the z axis
            roll[2] = (0.0, 0.0, 1.0)
            roll[:2, 2] = 0.0
            rot = roll @ new_upright
        return self.copy(rot_world_to_cam=rot)

    def shifted_image(self, dx, dy) -> 'Camera':
        """The camera of the image translated by (dx, dy) px: a pixel at (x, y) moves to (x + dx, y + dy).

        Cropping the image at top-left corner (x0, y0) is ``shifted_image(-x0, -y0)``.
        """
        dx = _finite_scalar(dx, 'dx')
        dy = _finite_scalar(dy, 'dy')
        intrinsics = self._intrinsics.copy()
        intrinsics[0, 2] += dx
        intrinsics[1, 2] += dy
        return self.copy(intrinsic_matrix=intrinsics)

    def scaled_image(self, factor) -> 'Camera':
        """The camera of the image resized by ``factor`` (e.g. 0.5 halves width and height).

        Focal lengths scale by ``factor``; with pixel centres at integer coordinates (see the
        module docstring) the principal point maps as ``(c + 0.5) * factor - 0.5``, the
        convention of ``cv2.resize``, so ``from_fov(f, (h, w)).scaled_image(s) ==
        from_fov(f, (s h, s w))``.
        """
        factor = _finite_scalar(factor, 'factor', positive=True)
        intrinsics = self._intrinsics.copy()
        intrinsics[:2, :2] *= factor
        intrinsics[:2, 2] = (intrinsics[:2, 2] + 0.5) * factor - 0.5
        return self.copy(intrinsic_matrix=intrinsics)

    def center_principal_point(self, imshape) -> 'Camera':
        """The camera with its principal point moved to the centre of an image of ``imshape`` = (height, width)."""
        height, width = _imshape(imshape)
        intrinsics = self._intrinsics.copy()
        intrinsics[0, 2] = (width - 1) / 2.0
        intrinsics[1, 2] = (height - 1) / 2.0
        return self.copy(intrinsic_matrix=intrinsics)

    def homography_to(self, other: 'Camera') -> np.ndarray:
        """[3, 3] homography from this camera's (undistorted) pixels to ``other``'s pixels.

        ``H = K2 R2 R1^T K1^-1``, normalized to ``H[2, 2] == 1`` when that entry is non-zero; maps
        homogeneous pixel columns, e.g. for ``cv2.warpPerspective(image, H, size)``. Lens
        distortion is ignored. Exact only when both cameras share the optical centre.

        Raises:
          ValueError: if ``other`` is not a Camera or the optical centres differ by more than
            ``CENTER_TOLERANCE_MM``.
        """
        if not isinstance(other, Camera):
            raise ValueError(f'other must be a Camera, got {type(other).__name__}')
        gap = np.linalg.norm(other.optical_center - self._optical_center)
        if gap > CENTER_TOLERANCE_MM:
            raise ValueError(f'other must share the optical centre {self._optical_center.tolist()}, '
                             f'got {other.optical_center.tolist()} ({gap:.3g} mm away)')
        h = other.intrinsic_matrix @ other.rot_world_to_cam @ self._rot.T @ np.linalg.inv(self._intrinsics)
        return h / h[2, 2] if h[2, 2] != 0 else h


# ----------------------------------------------------------------------------------------------
# Alignment
# ----------------------------------------------------------------------------------------------

def _pose_pair(pred, gt, mask):
    pred = _points(pred, 'pred', 3)
    gt = _points(gt, 'gt', 3)
    if pred.ndim < 2 or pred.shape != gt.shape:
        raise ValueError(f'pred and gt must have the same shape [..., J, 3], got pred {pred.shape}, gt {gt.shape}')
    if mask is None:
        mask = np.ones(pred.shape[:-1], bool)
    else:
        mask = np.asarray(mask)
        if mask.shape != pred.shape[:-1]:
            raise ValueError(f'mask must have shape {pred.shape[:-1]} (pred.shape[:-1]), got shape {mask.shape}')
        if mask.dtype != bool:
            if not np.all((mask == 0) | (mask == 1)):
                raise ValueError(f'mask must be boolean (or 0/1), got dtype {mask.dtype}')
            mask = mask.astype(bool)
    return pred, gt, mask


def _masked_centers(pred, gt, mask):
    """Masked means [..., 1, 3] of pred and gt, the masked points zeroed elsewhere, and the counts."""
    weights = mask[..., None]
    count = np.sum(mask, axis=-1)[..., None, None].astype(np.float64)
    p = np.where(weights, pred, 0.0)
    g = np.where(weights, gt, 0.0)
    with np.errstate(invalid='ignore', divide='ignore'):
        mean_p = p.sum(-2, keepdims=True) / count
        mean_g = g.sum(-2, keepdims=True) / count
    return p, g, weights, count, mean_p, mean_g


def procrustes(pred, gt, scale: bool = True, allow_reflection: bool = False, mask=None,
               return_transform: bool = False):
    """Similarity (Umeyama) alignment of ``pred`` onto ``gt``, per pose.

    Finds s, R, t minimizing ``sum_j mask_j |s R pred_j + t - gt_j|^2`` with R a rotation
    (det +1) unless ``allow_reflection``, and s = 1 unless ``scale``.

    Args:
      pred: [..., J, 3] predicted poses (mm).
      gt: [..., J, 3] reference poses (mm), same shape.
      scale: fit a scale factor (similarity) or not (rigid).
      allow_reflection: allow det(R) = -1.
      mask: optional [..., J] bool, joints used for fitting (the transform is applied to all).
        Values at masked-out joints may be NaN.
      return_transform: also return the transform.

    Returns:
      aligned pred [..., J, 3] (mm), ``s * pred @ R.T + t``; with ``return_transform`` the tuple
      (aligned, s [...], R [..., 3, 3], t [..., 3]). Poses without valid joints give NaN;
      poses whose valid predicted joints all coincide get s = 0 (aligned onto gt's mean).
    """
    pred, gt, mask = _pose_pair(pred, gt, mask)
    p, g, weights, count, mean_p, mean_g = _masked_centers(pred, gt, mask)
    empty = count[..., 0, 0] == 0
    pc = np.where(weights, p - np.nan_to_num(mean_p), 0.0)
    gc = np.where(weights, g - np.nan_to_num(mean_g), 0.0)
    cov = np.swapaxes(pc, -1, -2) @ gc  # sum_j p_j g_j^T, [..., 3, 3]
    if not np.all(np.isfinite(cov)):
        raise ValueError('pred and gt must be finite at the joints selected by mask')
    u, sing, vt = np.linalg.svd(cov)
    rot = np.swapaxes(vt, -1, -2) @ np.swapaxes(u, -1, -2)  # V U^T maps pred onto gt
    signs = np.ones(sing.shape)
    if not allow_reflection:
        signs[..., 2] = np.where(np.linalg.det(rot) < 0, -1.0, 1.0)
        rot = np.swapaxes(vt, -1, -2) @ (signs[..., :, None] * np.swapaxes(u, -1, -2))
    if scale:
        variance = np.sum(pc * pc, axis=(-1, -2))
        trace = np.sum(sing * signs, axis=-1)
        s = np.divide(trace, variance, out=np.zeros_like(trace), where=variance > 0)
    else:
        s = np.ones(sing.shape[:-1])
    s = np.where(empty, np.nan, s)
    t = mean_g[..., 0, :] - s[..., None] * np.einsum('...ij,...j->...i', rot, mean_p[..., 0, :])
    aligned = s[..., None, None] * (pred @ np.swapaxes(rot, -1, -2)) + t[..., None, :]
    if return_transform:
        return aligned, s, rot, t
    return aligned


def align_scale(pred, gt, mask=None, root_index=None, return_scale: bool = False):
    """Scale-only alignment of ``pred`` to ``gt`` (the N-MPJPE normalization of Rhodin et al. 2018).

    Both poses are centred (on the mean of the valid joints, or on joint ``root_index``), the
    prediction is scaled by ``s = <p, g> / <p, p>`` (least squares over the valid joints), and
    moved to gt's centre: ``aligned = s * (pred - c_pred) + c_gt``. For root-relative inputs and
    ``root_index`` = the root this is exactly the common N-MPJPE scaling (no translation effect).

    Args:
      pred: [..., J, 3] predicted poses (mm).
      gt: [..., J, 3] reference poses (mm).
      mask: optional [..., J] bool of joints used for fitting.
      root_index: None (centre on the mean of valid joints) or the joint index to centre on.
      return_scale: also return s [...].

    Returns:
      aligned pred [..., J, 3] (mm) (and s). NaN for poses without valid joints or, with
      ``root_index``, whose root joint is not valid.
    """
    pred, gt, mask = _pose_pair(pred, gt, mask)
    p, g, weights, count, mean_p, mean_g = _masked_centers(pred, gt, mask)
    bad = count[..., 0, 0] == 0
    if root_index is not None:
        n_joints = pred.shape[-2]
        if not isinstance(root_index, (int, np.integer)) or not -n_joints <= root_index < n_joints:
            raise ValueError(f'root_index must be None or a joint index in [0, {n_joints}), got {root_index!r}')
        root = int(root_index) % n_joints
        mean_p = pred[..., root:root + 1, :]
        mean_g = gt[..., root:root + 1, :]
        bad = bad | ~mask[..., root]
    pc = np.where(weights, p - np.nan_to_num(mean_p), 0.0)
    gc = np.where(weights, g - np.nan_to_num(mean_g), 0.0)
    dot = np.sum(pc * gc, axis=(-1, -2))
    norm = np.sum(pc * pc, axis=(-1, -2))
    if not (np.all(np.isfinite(dot)) and np.all(np.isfinite(norm))):
        raise ValueError('pred and gt must be finite at the joints selected by mask')
    s = np.divide(dot, norm, out=np.zeros_like(dot), where=norm > 0)
    s = np.where(bad, np.nan, s)
    aligned = s[..., None, None] * (pred - mean_p) + mean_g
    if return_scale:
        return aligned, s
    return aligned


# ----------------------------------------------------------------------------------------------
# Camera math for numpy and TensorFlow: projection, field of view, crop cameras, crop warps
# ----------------------------------------------------------------------------------------------
#
# The functions below are the one implementation of each of these for the whole project: training
# (rendered crops in posekit.data.synth, augmentation in posekit.data.augment, full-image crops of
# real datasets), the losses, the exported SavedModel (posekit.export) and the tools call them. Those
# that say "numpy or TensorFlow" run on numpy arrays without importing TensorFlow (rendering workers)
# and on TF tensors eagerly, inside tf.function and inside Dataset.map (through
# tf.experimental.numpy, so exported graphs contain plain TF ops).

CAMERA_UP = (0.0, -1.0, 0.0)
"""'Up' in a camera frame (y points down): crop cameras aimed with it keep the image's horizon."""

MIN_PROJECTION_DEPTH_MM = 1.0
"""Default minimum depth (mm) of :func:`project_tf` in the losses and the export (points behind the
camera stay finite)."""

BOX_SIZE_MM = 2200.0
"""Metric side (mm) that a crop stands for in MeTRAbs: the 3D heatmap cube of
:mod:`posekit.models.metrabs` and the px-to-metre scale of the 2D losses."""

DEFAULT_BOX_MARGIN = 0.2
"""Fraction of the box's larger side added around it in a crop (training crops and the export)."""

_MIN_RAY_DEPTH = 1e-6
_UNDISTORT_ITERATIONS = 20


def array_backend(*values):
    """numpy for numpy arrays / Python numbers, ``tf.experimental.numpy`` when any value is a TF tensor."""
    import sys
    tf = sys.modules.get('tensorflow')
    if tf is not None and any(isinstance(v, (tf.Tensor, tf.Variable)) for v in values):
        import tensorflow.experimental.numpy as tnp
        return tnp
    return np


def _as_float64(value, xp):
    if xp is np:
        return np.asarray(value, np.float64)
    import tensorflow as tf
    return tf.cast(value, tf.float64)


def _cross(a, b, xp):
    """Cross product over the last axis with elementwise ops (TFLite has no float64 Cross kernel)."""
    return xp.stack([a[..., 1] * b[..., 2] - a[..., 2] * b[..., 1],
                     a[..., 2] * b[..., 0] - a[..., 0] * b[..., 2],
                     a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]], -1)


def _normalize(v, xp):
    return v / xp.sqrt(xp.sum(v * v, axis=-1, keepdims=True))


def _matvec(matrix, vector, xp):
    """[..., 3, 3] x [..., 3] -> [..., 3] (broadcasting)."""
    return xp.sum(matrix * vector[..., None, :], axis=-1)


def _matrix3(rows, xp):
    return xp.stack([xp.stack(row, -1) for row in rows], -2)


def fov_intrinsics(fov_degrees, image_height, image_width):
    """Intrinsic matrix of a distortion-free camera with square pixels from its field of view (numpy or TF).

    Args:
      fov_degrees: field of view in degrees, measured along the larger image side between the outer
        edges of the border pixels (scalar or [...]).
      image_height, image_width: image size in px (scalars or [...]).

    Returns:
      [..., 3, 3] float64 ``[[f, 0, (W - 1) / 2], [0, f, (H - 1) / 2], [0, 0, 1]]`` with
      ``f = max(H, W) / 2 / tan(fov / 2)`` px.
    """
    xp = array_backend(fov_degrees, image_height, image_width)
    fov = _as_float64(fov_degrees, xp)
    height, width = _as_float64(image_height, xp), _as_float64(image_width, xp)
    focal = xp.maximum(height, width) / 2.0 / xp.tan(fov * (np.pi / 360.0))
    zero, one = focal * 0.0, focal * 0.0 + 1.0
    return _matrix3([[focal, zero, (width - 1.0) / 2.0 + zero], [zero, focal, (height - 1.0) / 2.0 + zero],
                     [zero, zero, one]], xp)


def pixels_to_normalized(points2d, intrinsics):
    """Pixels [..., P, 2] -> normalized camera coordinates [..., P, 2] (x/z, y/z) through K^-1 (numpy or TF).

    ``intrinsics`` [..., 3, 3] (upper triangular, skew allowed) broadcast against the points' leading
    axes (one K per point set). Closed form (no matrix inverse op, so converters handle it). No lens
    distortion (see :func:`undistort_normalized_tf`). numpy: float64; TF: the dtype of ``points2d``.
    """
    xp = array_backend(points2d, intrinsics)
    if xp is np:
        px, k = np.asarray(points2d, np.float64), np.asarray(intrinsics, np.float64)
    else:  # TF: computed in the dtype of the points (float32 inside networks)
        import tensorflow as tf
        px = tf.convert_to_tensor(points2d)
        k = tf.cast(intrinsics, px.dtype)
    k = k[..., None, :, :]
    y = (px[..., 1] - k[..., 1, 2]) / k[..., 1, 1]
    x = (px[..., 0] - k[..., 0, 2] - k[..., 0, 1] * y) / k[..., 0, 0]
    return xp.stack([x, y], -1)


def normalized_to_pixels(points, intrinsics):
    """Normalized camera coordinates [..., P, 2] -> pixels [..., P, 2] (numpy or TF); K [..., 3, 3]."""
    xp = array_backend(points, intrinsics)
    xy, k = points, intrinsics
    if xp is np:
        xy, k = np.asarray(xy), np.asarray(k)
    else:
        import tensorflow as tf
        k = tf.cast(k, xy.dtype)
    k = k[..., None, :, :]
    x, y = xy[..., 0], xy[..., 1]
    return xp.stack([k[..., 0, 0] * x + k[..., 0, 1] * y + k[..., 0, 2], k[..., 1, 1] * y + k[..., 1, 2]], -1)


def _padded_coeffs(distortion_coeffs, xp):
    """[..., n] OpenCV coefficients (n in DISTORTION_LENGTHS) -> [..., 12] float64."""
    d = _as_float64(distortion_coeffs, xp)
    n = int(d.shape[-1])
    if n not in DISTORTION_LENGTHS:
        raise ValueError(f'distortion_coeffs must have {DISTORTION_LENGTHS} coefficients in the last axis, '
                         f'got shape {tuple(d.shape)}')
    if n == _N_DISTORTION_MAX:
        return d
    return xp.concatenate([d, d[..., :1] * 0.0 + xp.zeros(_N_DISTORTION_MAX - n)], axis=-1)


def distort_normalized_tf(points, distortion_coeffs):
    """OpenCV distortion of normalized points [..., P, 2] with coefficients [..., n] (numpy or TF)."""
    xp = array_backend(points, distortion_coeffs)
    d = _padded_coeffs(distortion_coeffs, xp)[..., None, :]
    return _distort(_as_float64(points, xp), d)


def undistort_normalized_tf(points, distortion_coeffs, iterations: int = _UNDISTORT_ITERATIONS):
    """Inverse of :func:`distort_normalized_tf` by a fixed number of Newton steps (numpy or TF, graph-safe).

    For the distortions of real lenses inside the image this converges to machine precision in a few
    steps; :func:`undistort_normalized` is the safeguarded numpy version (NaN where it fails).

    Args:
      points: [..., P, 2] distorted normalized coordinates.
      distortion_coeffs: [..., n] OpenCV coefficients, one set per point set.
    """
    xp = array_backend(points, distortion_coeffs)
    d = _padded_coeffs(distortion_coeffs, xp)[..., None, :]
    target = _as_float64(points, xp)
    x = target
    for _ in range(iterations):
        value, (j00, j01, j10, j11) = _distort(x, d, jacobian=True)
        rx, ry = value[..., 0] - target[..., 0], value[..., 1] - target[..., 1]
        det = j00 * j11 - j01 * j10
        det = xp.where(xp.abs(det) > _SINGULAR_JACOBIAN, det, 1.0)
        x = x - xp.stack([(j11 * rx - j01 * ry) / det, (j00 * ry - j10 * rx) / det], -1)
    return x


def project_tf(points_cam, intrinsics, distortion_coeffs=None, min_depth=None):
    """Projection of camera-frame points to pixels in TensorFlow (the project's one projection).

    Args:
      points_cam: [B..., M..., 3] camera-frame points (mm), float tensor.
      intrinsics: [B..., 3, 3] intrinsic matrices (px) whose batch shape is a prefix of the points'
        batch shape (e.g. points [batch, joints, 3] with intrinsics [batch, 3, 3] or [3, 3]).
      distortion_coeffs: None, or [B..., n] OpenCV coefficients (n in 4, 5, 8, 12) with the batch
        shape of ``intrinsics``: the lens distortion is applied to the normalized coordinates.
      min_depth: None, or the smallest depth (mm) divided by: points closer or behind the camera are
        projected as if at this depth (finite results; e.g. :data:`MIN_PROJECTION_DEPTH_MM`).

    Returns:
      [B..., M..., 2] pixels, in the dtype of ``points_cam``.
    """
    import tensorflow as tf
    points = tf.convert_to_tensor(points_cam)
    if points.shape.rank is None or points.shape[-1] != 3:
        raise ValueError(f'points_cam must have shape [..., 3], got shape {points.shape}')
    fx, skew, cx, fy, cy = _intrinsics_entries_tf(intrinsics, points.shape.rank, points.dtype)
    depth = points[..., 2]
    if min_depth is not None:
        depth = tf.maximum(depth, tf.cast(min_depth, points.dtype))
    x = points[..., 0] / depth
    y = points[..., 1] / depth
    if distortion_coeffs is not None:
        d = _padded_coeffs(tf.convert_to_tensor(distortion_coeffs), array_backend(points))
        for _ in range(points.shape.rank - 1 - (d.shape.rank - 1)):
            d = d[..., tf.newaxis, :]
        xy = _distort(tf.cast(tf.stack([x, y], -1), tf.float64), d)
        x, y = tf.cast(xy[..., 0], points.dtype), tf.cast(xy[..., 1], points.dtype)
    return tf.stack([fx * x + skew * y + cx, fy * y + cy], axis=-1)


def _intrinsics_entries_tf(intrinsics, points_rank: int, dtype):
    import tensorflow as tf
    k = tf.cast(tf.convert_to_tensor(intrinsics), dtype)
    if k.shape.rank is None or k.shape.rank < 2 or k.shape[-2:] != (3, 3):
        raise ValueError(f'intrinsics must have shape [..., 3, 3], got shape {k.shape}')
    extra = points_rank - 1 - (k.shape.rank - 2)
    if extra < 0:
        raise ValueError(f'intrinsics batch rank ({k.shape.rank - 2}) must not exceed the points '
                         f'batch rank ({points_rank - 1})')

    def entry(i, j):
        e = k[..., i, j]
        for _ in range(extra):
            e = e[..., tf.newaxis]
        return e

    return entry(0, 0), entry(0, 1), entry(0, 2), entry(1, 1), entry(1, 2)


def unproject_tf(points2d, depth, intrinsics):
    """Back-projection in TensorFlow (no distortion): pixels + camera-frame depth -> camera points.

    Args:
      points2d: [B..., M..., 2] pixels.
      depth: [B..., M...] camera-frame z (mm), broadcastable to ``points2d.shape[:-1]``.
      intrinsics: [B..., 3, 3] as in :func:`project_tf`.

    Returns:
      [B..., M..., 3] camera-frame points (mm) with z == depth, in the dtype of ``points2d``.
    """
    import tensorflow as tf
    points = tf.convert_to_tensor(points2d)
    if points.shape.rank is None or points.shape[-1] != 2:
        raise ValueError(f'points2d must have shape [..., 2], got shape {points.shape}')
    fx, skew, cx, fy, cy = _intrinsics_entries_tf(intrinsics, points.shape.rank, points.dtype)
    z = tf.cast(depth, points.dtype)
    y = (points[..., 1] - cy) / fy
    x = (points[..., 0] - cx - skew * y) / fx
    z = tf.broadcast_to(z, tf.shape(x))
    return tf.stack([x * z, y * z, z], axis=-1)


def points_in_image(coords2d, image_size, margin_px):
    """[B, J] bool (TF): pixels [B, J, 2] lie inside the image shrunk by ``margin_px`` on every side.

    ``image_size``: (height, width) px. Inside means ``margin <= coord <= size - 1 - margin`` on both
    axes (pixel centres at integers).
    """
    import tensorflow as tf
    size = tf.cast(tf.stack([image_size[1], image_size[0]]), coords2d.dtype)  # (width, height)
    margin = tf.cast(margin_px, coords2d.dtype)
    inside = tf.logical_and(coords2d >= margin, coords2d <= size - 1.0 - margin)
    return tf.reduce_all(inside, axis=-1)


def upright_rotation(forward, up):
    """Rotation of an upright camera looking along ``forward`` (numpy or TF; the one aiming rule).

    Args:
      forward: [..., 3] viewing direction (any length > 0) in some frame.
      up: [3] or [..., 3] the 'up' direction in the same frame (e.g. the world's up, or
        :data:`CAMERA_UP` in a camera frame).

    Returns:
      [..., 3, 3] float64 rotation whose rows are the new camera's x (right, perpendicular to ``up``),
      y (down, negative component along ``up``) and z (``forward``) axes in that frame. Undefined
      (NaN) when ``forward`` is parallel to ``up``; :func:`look_at_rotation` checks.
    """
    xp = array_backend(forward, up)
    f = _normalize(_as_float64(forward, xp), xp)
    u = _as_float64(up, xp) + f * 0.0
    right = _normalize(_cross(f, u, xp), xp)
    down = _cross(f, right, xp)
    return xp.stack([right, down, f], -2)


def roll_flip_rotation(rotation, roll=None, flip=None):
    """``F Rz(roll) rotation`` (numpy or TF): roll about the optical axis (rad), then mirror the x axis.

    ``rotation`` [..., 3, 3]; ``roll`` None or [...] rad; ``flip`` None or [...] bool (F = diag(-1, 1, 1)).
    New camera-frame points are ``F Rz(roll) rotation p``.
    """
    xp = array_backend(rotation, roll, flip)
    rot = _as_float64(rotation, xp)
    if roll is not None:
        angle = _as_float64(roll, xp)
        c, s = xp.cos(angle), xp.sin(angle)
        zero, one = angle * 0.0, angle * 0.0 + 1.0
        rot = xp.matmul(_matrix3([[c, -s, zero], [s, c, zero], [zero, zero, one]], xp), rot)
    if flip is not None:
        sign = _as_float64(xp.where(xp.asarray(flip, dtype=bool), -1.0, 1.0), xp)
        rot = xp.concatenate([rot[..., :1, :] * sign[..., None, None], rot[..., 1:, :]], axis=-2)
    return rot


def crop_camera(intrinsics, boxes, crop_size, box_margin=DEFAULT_BOX_MARGIN, distortion_coeffs=None,
                up=CAMERA_UP, roll=None, flip=None, zoom=None, shift=None):
    """The crop camera aimed at a person box: the one crop-aiming function (numpy or TF).

    A virtual camera shares the optical centre of the image camera and is turned (upright with respect
    to ``up``) towards the ray through the box centre, moved by ``shift``; its focal length makes the
    box (its four corners, seen from an upright camera aimed at the box centre) plus ``box_margin``
    fill the square crop, times ``zoom``; then it is rolled about its optical axis and mirrored (:func:`roll_flip_rotation`).
    Training crops (:mod:`posekit.data.synth`, :mod:`posekit.data.augment`, full-image datasets) and the
    exported model (:mod:`posekit.export`) all aim their crops with this function.

    Args:
      intrinsics: [..., 3, 3] intrinsic matrices of the images the boxes lie in (px).
      boxes: [..., 4] boxes (x, y, w, h), px of those images (of the distorted image when
        ``distortion_coeffs`` are given).
      crop_size: side S of the square crop (px).
      box_margin: fraction of the box's larger side added around it.
      distortion_coeffs: None or [..., n] OpenCV coefficients of the images: box centre and corners are
        undistorted before aiming.
      up: [3] or [..., 3] up direction in the image camera frame (default :data:`CAMERA_UP`; with
        extrinsics, ``R @ world_up``).
      roll: None or [...] roll about the crop camera's optical axis (rad).
      flip: None or [...] bool: mirror the crop camera (negate its x axis).
      zoom: None or [...] factor on the fitted focal length (> 1 magnifies).
      shift: None or [..., 2] aim-point offset from the box centre, in fractions of the box's larger side.

    Returns:
      (rotation [..., 3, 3], crop_intrinsics [..., 3, 3]), float64: crop-camera points are
      ``rotation @ p`` for image-camera points p (mm); the crop intrinsics have square pixels, no skew
      and the principal point at the crop centre ((S - 1) / 2, (S - 1) / 2).
    """
    xp = array_backend(intrinsics, boxes, distortion_coeffs, roll, flip, zoom, shift)
    k = _as_float64(intrinsics, xp)
    boxes = _as_float64(boxes, xp)
    x, y, w, h = boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]
    cx, cy = x + w / 2.0, y + h / 2.0
    sx, sy = cx, cy
    if shift is not None:
        side = xp.maximum(w, h)
        offset = _as_float64(shift, xp)
        sx, sy = cx + offset[..., 0] * side, cy + offset[..., 1] * side
    # Box centre, aim point and the four corners, [..., 6, 2] px -> normalized (undistorted) coordinates.
    pixels = xp.stack([xp.stack([cx, cy], -1), xp.stack([sx, sy], -1), xp.stack([x, y], -1),
                       xp.stack([x + w, y], -1), xp.stack([x, y + h], -1), xp.stack([x + w, y + h], -1)], -2)
    normalized = pixels_to_normalized(pixels, k)
    if distortion_coeffs is not None:
        normalized = undistort_normalized_tf(normalized, distortion_coeffs)
    rays = xp.concatenate([normalized, normalized[..., :1] * 0.0 + 1.0], -1)
    # The scale comes from the box seen by a camera aimed at its centre (a shift moves the crop window
    # without changing the scale); the crop camera is aimed at the (shifted) aim point.
    centred = upright_rotation(rays[..., 0, :], up)
    seen = xp.sum(centred[..., None, :, :] * rays[..., 2:, None, :], axis=-1)  # [..., 4, 3]
    extent = 2.0 * xp.max(xp.abs(seen[..., :2] / xp.maximum(seen[..., 2:], _MIN_RAY_DEPTH)), axis=(-2, -1))
    aim = upright_rotation(rays[..., 1, :], up)
    focal = float(crop_size) / (extent * (1.0 + box_margin))
    if zoom is not None:
        focal = focal * _as_float64(zoom, xp)
    zero, one = focal * 0.0, focal * 0.0 + 1.0
    centre = (float(crop_size) - 1.0) / 2.0 + zero
    crop_k = _matrix3([[focal, zero, centre], [zero, focal, centre], [zero, zero, one]], xp)
    return roll_flip_rotation(aim, roll, flip), crop_k


def crop_homography(intrinsics, rotation, crop_intrinsics):
    """[..., 3, 3] homography image px -> crop px, ``K' R K^-1`` normalized to H[2, 2] = 1 (numpy or TF).

    Exact for distortion-free images (a camera rotating about its centre).
    """
    xp = array_backend(intrinsics, rotation, crop_intrinsics)
    k = _as_float64(intrinsics, xp)
    fx, s, cx, fy, cy = k[..., 0, 0], k[..., 0, 1], k[..., 0, 2], k[..., 1, 1], k[..., 1, 2]
    zero, one = fx * 0.0, fx * 0.0 + 1.0
    k_inv = _matrix3([[1.0 / fx, -s / (fx * fy), (s * cy - cx * fy) / (fx * fy)],
                      [zero, 1.0 / fy, -cy / fy], [zero, zero, one]], xp)
    h = xp.matmul(xp.matmul(_as_float64(crop_intrinsics, xp), _as_float64(rotation, xp)), k_inv)
    return h / h[..., 2:, 2:]


def apply_homography(homography, points2d):
    """[B, 3, 3] homographies applied to [B, J, 2] pixels -> [B, J, 2] (TF; dtype of ``points2d``)."""
    import tensorflow as tf
    points = tf.convert_to_tensor(points2d)
    h = tf.cast(homography, tf.float64)
    p = tf.cast(points, tf.float64)
    hom = tf.concat([p, tf.ones_like(p[..., :1])], axis=-1)
    out = tf.einsum('bij,bkj->bki', h, hom)
    return tf.cast(out[..., :2] / out[..., 2:], points.dtype)


def scale_intrinsics(intrinsics, factor):
    """[..., 3, 3] K of an image resized by ``factor`` (``Camera.scaled_image`` convention; numpy or TF)."""
    xp = array_backend(intrinsics)
    k = _as_float64(intrinsics, xp)
    f = float(factor)
    scale = np.array([[f, f, f], [f, f, f], [0.0, 0.0, 1.0]])
    offset = np.array([[0.0, 0.0, (f - 1.0) / 2.0], [0.0, 0.0, (f - 1.0) / 2.0], [0.0, 0.0, 0.0]])
    return k * scale + offset


def _bilinear_sample(image, x, y):
    """Bilinear samples of ``image`` [H, W, C] float32 at pixel coordinates x, y [...]; 0 outside."""
    import tensorflow as tf
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    channels = image.shape[-1] if image.shape[-1] is not None else tf.shape(image)[2]
    flat = tf.reshape(image, [-1, channels])
    x0, y0 = tf.floor(x), tf.floor(y)
    wx, wy = x - x0, y - y0
    x0, y0 = tf.cast(x0, tf.int32), tf.cast(y0, tf.int32)
    result = 0.0
    for dx, dy, weight in ((0, 0, (1 - wx) * (1 - wy)), (1, 0, wx * (1 - wy)), (0, 1, (1 - wx) * wy),
                           (1, 1, wx * wy)):
        xi, yi = x0 + dx, y0 + dy
        inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
        index = tf.clip_by_value(yi, 0, height - 1) * width + tf.clip_by_value(xi, 0, width - 1)
        taps = tf.gather(flat, index)
        result += taps * tf.expand_dims(tf.where(inside, weight, 0.0), -1)
    return result


def crop_source_pixels(intrinsics, rotation, crop_intrinsics, crop_size, distortion_coeffs=None):
    """Where each crop pixel comes from: [S, S, 2] float64 pixel coordinates (x, y) in the image (TF).

    The ray of crop pixel (col, row) through the crop camera (``crop_intrinsics``) is rotated into the
    image camera (``rotation^T``), distorted with ``distortion_coeffs`` (OpenCV model) and projected
    with ``intrinsics``. Rays behind the image camera get coordinates far outside any image.

    Args:
      intrinsics, rotation, crop_intrinsics: [3, 3] (image K, image->crop rotation, crop K).
      crop_size: S (px, Python int).
      distortion_coeffs: None or [n] OpenCV coefficients of the image.
    """
    import tensorflow as tf
    side = int(crop_size)
    grid = tf.range(side, dtype=tf.float64)
    gy, gx = tf.meshgrid(grid, grid, indexing='ij')
    pixels = tf.reshape(tf.stack([gx, gy], -1), [-1, 2])
    normalized = pixels_to_normalized(pixels, tf.cast(crop_intrinsics, tf.float64))
    rays = tf.concat([normalized, tf.ones_like(normalized[:, :1])], -1)
    in_image = tf.linalg.matvec(tf.cast(rotation, tf.float64), rays, transpose_a=True)  # R^T ray
    depth = in_image[:, 2]
    xy = in_image[:, :2] / tf.maximum(depth, _MIN_RAY_DEPTH)[:, None]
    if distortion_coeffs is not None:
        xy = distort_normalized_tf(xy, distortion_coeffs)
    source = normalized_to_pixels(xy, tf.cast(intrinsics, tf.float64))
    source = tf.where((depth > _MIN_RAY_DEPTH)[:, None], source, tf.constant(-1e6, tf.float64))
    return tf.reshape(source, [side, side, 2])


def warp_to_crop(image, intrinsics, rotation, crop_intrinsics, crop_size, distortion_coeffs=None,
                 antialias_factor: int = 1):
    """Cuts the crop of :func:`crop_camera` out of an image (TF; tf.data and exported graphs).

    The image is sampled bilinearly at :func:`crop_source_pixels` (0 outside the image and behind the
    camera): with ``distortion_coeffs`` the crop is undistorted exactly (the crop camera is a pinhole).
    With ``antialias_factor`` a > 1 the crop is rendered at a times the size and a x a blocks averaged.

    Args:
      image: [H, W, C] image (uint8 or float).
      intrinsics: [3, 3] image intrinsics (px); rotation, crop_intrinsics: [3, 3] from :func:`crop_camera`.
      crop_size: S (px, Python int).
      distortion_coeffs: None or [n] OpenCV coefficients of the image.
      antialias_factor: a >= 1 (Python int).

    Returns:
      [S, S, C] float32 in the image's value range.
    """
    import tensorflow as tf
    image = tf.convert_to_tensor(image)
    factor = int(antialias_factor)
    if factor < 1:
        raise ValueError(f'antialias_factor must be an int >= 1, got {antialias_factor!r}')
    side = int(crop_size) * factor
    crop_k = crop_intrinsics if factor == 1 else scale_intrinsics(tf.cast(crop_intrinsics, tf.float64), factor)
    source = tf.cast(crop_source_pixels(intrinsics, rotation, crop_k, side, distortion_coeffs), tf.float32)
    crop = _bilinear_sample(tf.cast(image, tf.float32), source[..., 0], source[..., 1])
    if factor > 1:
        crop = tf.nn.avg_pool2d(crop[tf.newaxis], factor, factor, 'VALID')[0]
    if image.shape.rank == 3 and image.shape[-1] is not None:
        crop.set_shape([int(crop_size), int(crop_size), image.shape[-1]])
    return crop


def warp_homography_tf(images, homography, output_shape, fill_mode='constant', fill_value=0.0,
                       interpolation='bilinear'):
    """Warps a batch of images [B, H, W, C] by homographies [B, 3, 3] (input px -> output px) in TF.

    ``ImageProjectiveTransformV3`` (pixel centres at integer coordinates); float32 result of shape
    [B, out_h, out_w, C].
    """
    import tensorflow as tf
    homography = tf.cast(homography, tf.float64)
    out_shape = tf.stack([tf.cast(s, tf.int32) for s in output_shape])
    inverse = tf.linalg.inv(homography)
    inverse = inverse / inverse[:, 2:, 2:]
    transforms = tf.cast(tf.reshape(inverse, [-1, 9])[:, :8], tf.float32)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(images, tf.float32), transforms=transforms, output_shape=out_shape,
        fill_value=tf.constant(fill_value, tf.float32),
        interpolation=interpolation.upper(), fill_mode=fill_mode.upper())
