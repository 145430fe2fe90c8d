"""A small vectorised software renderer for synthetic people in scenes (numpy + OpenCV).

Everything is drawn through one pinhole camera (intrinsics ``K`` in px, world-to-camera rotation
``R`` and optical centre ``c`` in mm; camera frame x right, y down, z forward) into a colour
image and a depth buffer (camera-frame z, mm), so occlusion is exact per pixel (a z-buffer):

* :func:`render_background` ray-casts a scene: a textured floor plane (world y = 0, the motion's
  world is y up) and the four textured walls of a box room (outdoors: far walls under a sky),
  so backgrounds are perspective-consistent and move correctly in video; or a screen-space
  picture (``Scene.kind == 'composite'``, like chroma-keyed or SURREAL-style composites). A soft
  contact shadow darkens the floor under the person.
* :func:`draw_capsules` ray-casts capsules (line segments with a radius; a sphere is a capsule
  of length 0) analytically, per pixel of each capsule's screen bounding box, all capsules at
  once (flat arrays), resolves visibility against the depth buffer with ``np.minimum.at`` and
  shades the winners with Lambert lighting, a hemisphere ambient term and an optional stripe
  pattern along the capsule axis (clothing).
* :func:`body_capsules` turns body landmarks (:mod:`posekit.data.bodies`) into ~35 capsules:
  torso columns, a print on the shirt front, pelvis, shoulders, neck, head with face, hair and
  eyes, arms, hands, legs and shoes, coloured by an :class:`Outfit`.

Textures are procedural (value noise, stripes, tiles, bricks, planks, blobs), generated once
per seed by :func:`texture_bank`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

from posekit.data import bodies

NEAR_MM = 50.0
"""Capsules closer to the camera plane than this are not drawn."""

BBOX_MARGIN = 1.15
"""Screen bounding boxes of capsules are enlarged by this factor (perspective elongation)."""

TEXTURE_SIZE = 64
"""Side (texels) of procedural textures."""

TEXTURE_KINDS = ('noise', 'stripes', 'tiles', 'bricks', 'planks', 'blobs')

FAR_DEPTH_MM = 1e7
"""Depth of background pixels that hit nothing (sky, composite pictures)."""

FOG_DISTANCE_MM = 40000.0
FOG_MAX = 0.6
"""The floor fades towards its mean colour with distance (reaching FOG_MAX at FOG_DISTANCE_MM)."""

SKIRTING_HEIGHT_MM = 80.0
"""Walls are darker below this height (a skirting board where they meet the floor)."""


# ----------------------------------------------------------------------------------------------
# Textures
# ----------------------------------------------------------------------------------------------

def tileable_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """[size, size] float32 smooth value noise in [0, 1], approximately tileable."""
    grid = rng.random((cells, cells)).astype(np.float32)
    big = cv2.resize(np.tile(grid, (3, 3)), (3 * size, 3 * size), interpolation=cv2.INTER_CUBIC)
    return np.clip(big[size:2 * size, size:2 * size], 0.0, 1.0)


def random_colour(rng: np.random.Generator, saturation=(0.1, 0.7), value=(0.25, 0.9)) -> np.ndarray:
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(*saturation) * 255,
                      rng.uniform(*value) * 255]]], np.float32)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32) / 255.0


def make_texture(rng: np.random.Generator, kind: str, size: int = TEXTURE_SIZE) -> np.ndarray:
    """One procedural texture.

    Args:
      rng: numpy Generator.
      kind: one of ``TEXTURE_KINDS``.
      size: side in texels.

    Returns:
      [size, size, 3] float32 RGB in [0, 1].
    """
    if kind not in TEXTURE_KINDS:
        raise ValueError(f'kind must be one of {TEXTURE_KINDS}, got {kind!r}')
    a, b = random_colour(rng), random_colour(rng)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    fine = tileable_noise(rng, size, 16)
    coarse = tileable_noise(rng, size, 4)
    if kind == 'noise':
        mix = 0.6 * coarse + 0.4 * fine
    elif kind == 'stripes':
        n = rng.integers(2, 7)
        angle = rng.choice([0.0, np.pi / 2, np.pi / 4])
        phase = (np.cos(angle) * xx + np.sin(angle) * yy) * n
        mix = ((phase % 1.0) < rng.uniform(0.3, 0.7)).astype(np.float32) * 0.85 + 0.15 * fine
    elif kind == 'tiles':
        n = int(rng.integers(2, 6))
        u, v = (xx * n) % 1.0, (yy * n) % 1.0
        grout = (np.minimum(u, v) < 0.06).astype(np.float32)
        checker = ((np.floor(xx * n) + np.floor(yy * n)) % 2).astype(np.float32)
        mix = 0.8 * checker * rng.uniform(0.2, 1.0) + 0.15 * fine
        mix = np.where(grout > 0, 1.0, mix)
    elif kind == 'bricks':
        rows = int(rng.integers(4, 9))
        r = np.floor(yy * rows)
        u = (xx * rows / 2 + 0.5 * (r % 2)) % 1.0
        v = (yy * rows) % 1.0
        mortar = ((u < 0.05) | (v < 0.1)).astype(np.float32)
        mix = np.where(mortar > 0, 1.0, 0.25 * fine + 0.3 * coarse)
    elif kind == 'planks':
        n = int(rng.integers(3, 8))
        v = (yy * n) % 1.0
        grain = 0.5 + 0.5 * np.sin(xx * 40 * np.pi + fine * 6)
        mix = 0.55 * grain * coarse + 0.35 * (v < 0.05)
    else:  # blobs
        mix = (coarse > rng.uniform(0.4, 0.6)).astype(np.float32) * 0.8 + 0.2 * fine
    mix = mix[..., None]
    return np.clip(a * (1 - mix) + b * mix, 0.0, 1.0).astype(np.float32)


@functools.lru_cache(maxsize=16)
def texture_bank(seed: int, n: int = 24, size: int = TEXTURE_SIZE) -> np.ndarray:
    """[n, size, size, 3] float32 procedural textures, deterministic in ``seed`` (cached, read-only)."""
    rng = np.random.default_rng([int(seed), 0x7E47])
    bank = np.stack([make_texture(rng, TEXTURE_KINDS[i % len(TEXTURE_KINDS)], size) for i in range(n)])
    bank.setflags(write=False)
    return bank


def composite_picture(rng: np.random.Generator, bank: np.ndarray, size: int = 96) -> np.ndarray:
    """[size, size, 3] float32 'photo' for screen-space composites: blended, blurred textures."""
    k = rng.integers(0, len(bank), 3)
    base = cv2.resize(bank[k[0]], (size, size), interpolation=cv2.INTER_LINEAR)
    over = cv2.resize(np.tile(bank[k[1]], (2, 2, 1)), (size, size), interpolation=cv2.INTER_LINEAR)
    mask = tileable_noise(rng, size, 3)[..., None] > 0.5
    picture = np.where(mask, over, base)
    # A horizon-like brightness gradient and a few soft shapes make it read as a scene.
    yy = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    picture = picture * (0.75 + 0.5 * (yy if rng.random() < 0.5 else 1 - yy))
    for _ in range(rng.integers(2, 6)):
        x0, y0 = rng.integers(0, size, 2)
        w, h = rng.integers(size // 8, size // 2, 2)
        cv2.rectangle(picture, (int(x0), int(y0)), (int(x0 + w), int(y0 + h)),
                      tuple(float(v) for v in random_colour(rng)), -1)
    picture = cv2.GaussianBlur(picture, (0, 0), 1.2)
    return np.clip(picture, 0, 1).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Scenes and background ray casting
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Scene:
    """A static background, world frame (mm, y up, floor at y = 0).

    Attributes:
      kind: 'room' (floor + four walls; tall walls under a sky for outdoor scenes) or
        'composite' (a screen-space picture behind the person, no geometry).
      floor: [T, T, 3] float32 texture; ``floor_tile_mm`` its size on the floor.
      walls: [4, T, T, 3] float32 textures of the walls x = x0, x = x1, z = z0, z = z1;
        ``wall_tile_mm`` their size.
      bounds: (x0, x1, z0, z1) mm, the room's walls (the camera must be inside).
      wall_height_mm: height of the walls; above them ``top_colour`` (ceiling or sky).
      top_colour: [3] float32.
      brightness: [3] floor/wall brightness multipliers (floor, x walls, z walls).
      picture: [P, P, 3] float32 screen-space picture for 'composite' scenes; ``picture_window``
        (x0, y0, size) in picture texels is the part shown behind the crop.
      shadow_xz: (x, z) mm of the contact shadow centre (None: no shadow); ``shadow_radius_mm``.
      shadow_strength: darkening at the shadow centre, in [0, 1].
    """

    kind: str = 'room'
    floor: Optional[np.ndarray] = None
    floor_tile_mm: float = 1000.0
    walls: Optional[np.ndarray] = None
    wall_tile_mm: float = 1500.0
    bounds: Tuple[float, float, float, float] = (-5000.0, 5000.0, -5000.0, 5000.0)
    wall_height_mm: float = 3000.0
    top_colour: np.ndarray = dataclasses.field(default_factory=lambda: np.array([0.8, 0.8, 0.8], np.float32))
    brightness: np.ndarray = dataclasses.field(default_factory=lambda: np.ones(3, np.float32))
    picture: Optional[np.ndarray] = None
    picture_window: Tuple[float, float, float] = (0.0, 0.0, 1.0)
    shadow_xz: Optional[Tuple[float, float]] = None
    shadow_radius_mm: float = 450.0
    shadow_strength: float = 0.5


def _ray_xy(intrinsics: np.ndarray, height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
    """x, y float32 [H * W] (row-major) of the camera-frame rays (x, y, 1) through the pixel centres."""
    k = np.asarray(intrinsics, np.float64)
    u, v = _pixel_grid(height, width)
    y = (v - np.float32(k[1, 2])) * np.float32(1.0 / k[1, 1])
    x = (u - np.float32(k[0, 2]) - np.float32(k[0, 1]) * y) * np.float32(1.0 / k[0, 0])
    return x, y


def pixel_rays(intrinsics: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """[H, W, 3] float32 camera-frame ray directions with z = 1 through each pixel centre."""
    height, width = shape
    x, y = _ray_xy(intrinsics, height, width)
    return np.stack([x, y, np.ones_like(x)], -1).reshape(height, width, 3)


def _sample(texture: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    size = texture.shape[0]
    iu = np.floor(u * size).astype(np.int64) % size
    iv = np.floor(v * size).astype(np.int64) % size
    return texture[iv, iu]


def render_background(scene: Scene, intrinsics: np.ndarray, rot_world_to_cam: np.ndarray,
                      optical_center: np.ndarray, shape: Tuple[int, int],
                      subsample: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    """Ray-casts the scene.

    Args:
      scene: the :class:`Scene`.
      intrinsics: [3, 3] K (px) of an image of ``shape``.
      rot_world_to_cam: [3, 3]; optical_center: [3] mm, world frame.
      shape: (height, width) px.
      subsample: ray-cast at 1/subsample of the resolution and upsample (colour and depth
        bilinear): a cheaper, slightly soft background.

    Returns:
      (rgb [H, W, 3] float32 in [0, 1], depth [H, W] float32 camera-frame z in mm;
      ``FAR_DEPTH_MM`` where nothing is hit).
    """
    height, width = shape
    if subsample > 1 and scene.kind == 'room':
        small = (-(-height // subsample), -(-width // subsample))
        factor_y, factor_x = small[0] / height, small[1] / width
        k = np.array(intrinsics, np.float64)
        k[0, :] *= factor_x
        k[1, :] *= factor_y
        k[0, 2] += 0.5 * factor_x - 0.5
        k[1, 2] += 0.5 * factor_y - 0.5
        rgb, depth = render_background(scene, k, rot_world_to_cam, optical_center, small)
        rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_LINEAR)
        depth = cv2.resize(depth, (width, height), interpolation=cv2.INTER_LINEAR)
        return rgb, depth
    if scene.kind == 'composite':
        x0, y0, size = scene.picture_window
        # The picture is fixed to the crop: map crop pixels to a window of the picture.
        map_x = (np.arange(width, dtype=np.float32) + 0.5) / width * size + x0
        map_y = (np.arange(height, dtype=np.float32) + 0.5) / height * size + y0
        mx, my = np.meshgrid(map_x, map_y)
        rgb = cv2.remap(scene.picture, mx - 0.5, my - 0.5, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        return rgb.astype(np.float32), np.full((height, width), FAR_DEPTH_MM, np.float32)
    if scene.kind != 'room':
        raise ValueError(f"scene.kind must be 'room' or 'composite', got {scene.kind!r}")
    rays = pixel_rays(intrinsics, shape).reshape(-1, 3)
    d = rays @ np.asarray(rot_world_to_cam, np.float32)  # world directions, camera z = 1
    c = np.asarray(optical_center, np.float32)
    x0, x1, z0, z1 = scene.bounds
    with np.errstate(divide='ignore', invalid='ignore'):
        t_floor = np.where(d[:, 1] < -1e-6, -c[1] / d[:, 1], np.inf)
        t_x = np.where(d[:, 0] > 0, (x1 - c[0]) / d[:, 0], (x0 - c[0]) / d[:, 0])
        t_z = np.where(d[:, 2] > 0, (z1 - c[2]) / d[:, 2], (z0 - c[2]) / d[:, 2])
    t_x = np.where(np.isfinite(t_x) & (t_x > 0), t_x, np.inf)
    t_z = np.where(np.isfinite(t_z) & (t_z > 0), t_z, np.inf)
    t_wall = np.minimum(t_x, t_z)
    floor_hit = t_floor < t_wall
    t = np.where(floor_hit, t_floor, t_wall)
    t = np.where(np.isfinite(t), t, FAR_DEPTH_MM)
    p = c + t[:, None] * d
    rgb = np.empty((rays.shape[0], 3), np.float32)
    # Floor.
    fi = np.nonzero(floor_hit)[0]
    if fi.size:
        pf = p[fi]
        col = _sample(scene.floor, pf[:, 0] / scene.floor_tile_mm, pf[:, 2] / scene.floor_tile_mm)
        shade = np.full(fi.size, scene.brightness[0], np.float32)
        if scene.shadow_xz is not None:
            r2 = ((pf[:, 0] - scene.shadow_xz[0]) ** 2 + (pf[:, 2] - scene.shadow_xz[1]) ** 2)
            shade = shade * (1.0 - scene.shadow_strength * np.exp(-r2 / scene.shadow_radius_mm ** 2))
        # Distance fog: far floor fades to the mean colour (also hides texture aliasing).
        fade = np.clip(t[fi] / FOG_DISTANCE_MM, 0.0, FOG_MAX)[:, None]
        col = col * (1 - fade) + scene.floor.mean(axis=(0, 1)) * fade
        rgb[fi] = col * shade[:, None]
    # Walls (and the sky/ceiling above them).
    wi = np.nonzero(~floor_hit)[0]
    if wi.size:
        pw = p[wi]
        on_x = t_x[wi] <= t_z[wi]
        side = np.where(on_x, np.where(d[wi, 0] > 0, 1, 0), np.where(d[wi, 2] > 0, 3, 2))
        along = np.where(on_x, pw[:, 2], pw[:, 0]) / scene.wall_tile_mm
        up = pw[:, 1] / scene.wall_tile_mm
        col = np.empty((wi.size, 3), np.float32)
        for s in range(4):
            sel = side == s
            if np.any(sel):
                col[sel] = _sample(scene.walls[s], along[sel], -up[sel])
        col = col * np.where(on_x, scene.brightness[1], scene.brightness[2])[:, None]
        # A darker skirting strip where walls meet the floor.
        col = np.where((pw[:, 1] < SKIRTING_HEIGHT_MM)[:, None], col * 0.55, col)
        above = pw[:, 1] > scene.wall_height_mm
        col[above] = scene.top_colour
        rgb[wi] = col
        t[wi[above]] = FAR_DEPTH_MM
    return rgb.reshape(height, width, 3), t.reshape(height, width).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Capsules
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Capsules:
    """N capsules (segments with radius), in the world or a camera frame (mm).

    Attributes:
      start, end: [N, 3] float end points (equal for spheres).
      radius: [N] mm.
      colour: [N, 3] float RGB in [0, 1].
      stripe: [N] stripe contrast in [0, 1) along the axis (0: plain); ``period_mm`` [N] > 0.
    """

    start: np.ndarray
    end: np.ndarray
    radius: np.ndarray
    colour: np.ndarray
    stripe: Optional[np.ndarray] = None
    period_mm: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return int(self.radius.shape[0])

    def transformed(self, rot: np.ndarray, center: np.ndarray) -> 'Capsules':
        """World -> camera frame: ``(p - center) @ rot.T``."""
        rot = np.asarray(rot, np.float64)
        return dataclasses.replace(self, start=(self.start - center) @ rot.T, end=(self.end - center) @ rot.T)

    @staticmethod
    def concatenate(parts: Sequence['Capsules']) -> 'Capsules':
        parts = [p for p in parts if p is not None and len(p)]
        if not parts:
            return Capsules(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), np.zeros((0, 3)))

        def cat(attr, default):
            return np.concatenate([getattr(p, attr) if getattr(p, attr) is not None
                                   else np.full(len(p), default) for p in parts])
        return Capsules(cat('start', 0), cat('end', 0), cat('radius', 0), cat('colour', 0),
                        cat('stripe', 0.0), cat('period_mm', 100.0))


def unit_rays(intrinsics: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """[3, H * W] float32 unit camera-frame ray directions through the pixel centres (row-major)."""
    x, y = _ray_xy(intrinsics, *shape)
    inv = 1.0 / np.sqrt(x * x + y * y + 1.0)
    return np.stack([x * inv, y * inv, inv])


@functools.lru_cache(maxsize=8)
def _pixel_grid(height: int, width: int):
    v, u = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = u.reshape(-1), v.reshape(-1)
    u.setflags(write=False)
    v.setflags(write=False)
    return u, v


def _capsule_spans(caps: Capsules, k: np.ndarray, shape):
    """Candidate pixels of each capsule: the rows of its projected stadium (conservative).

    Returns:
      (capsule index [N], flat pixel index [N]) int arrays.
    """
    height, width = shape
    a, b, r = caps.start, caps.end, caps.radius
    za, zb = a[:, 2], b[:, 2]
    visible = np.maximum(za, zb) + r > NEAR_MM
    near = np.minimum(za, zb) - r
    full = visible & (near < NEAR_MM)  # too close for a projected stadium: every pixel
    with np.errstate(divide='ignore', invalid='ignore'):
        ua = k[0, 0] * a[:, 0] / za + k[0, 1] * a[:, 1] / za + k[0, 2]
        va = k[1, 1] * a[:, 1] / za + k[1, 2]
        ub = k[0, 0] * b[:, 0] / zb + k[0, 1] * b[:, 1] / zb + k[0, 2]
        vb = k[1, 1] * b[:, 1] / zb + k[1, 2]
        rho = r * max(k[0, 0], k[1, 1]) / np.maximum(near, 1e-6) * BBOX_MARGIN + 1.0
    ok = visible & ~full & np.isfinite(ua + va + ub + vb + rho)
    ua, va, ub, vb, rho = (np.where(ok, x, 0.0) for x in (ua, va, ub, vb, rho))
    y_lo = np.where(full, 0, np.clip(np.ceil(np.minimum(va, vb) - rho), 0, height))
    y_hi = np.where(full, height - 1, np.clip(np.floor(np.maximum(va, vb) + rho), -1, height - 1))
    n_rows = np.where(ok | full, np.maximum(y_hi - y_lo + 1, 0), 0).astype(np.int64)
    total_rows = int(n_rows.sum())
    if total_rows == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty
    cap = np.repeat(np.arange(len(caps)), n_rows)
    row_first = np.cumsum(n_rows) - n_rows
    y = (y_lo.astype(np.int64)[cap] + np.arange(total_rows) - np.repeat(row_first, n_rows)).astype(np.float64)
    u0, v0, u1, v1, rh = ua[cap], va[cap], ub[cap], vb[cap], rho[cap]
    lo = np.full(total_rows, np.inf)
    hi = np.full(total_rows, -np.inf)
    for cu, cv in ((u0, v0), (u1, v1)):  # the end discs
        h2 = rh * rh - (y - cv) ** 2
        h = np.sqrt(np.maximum(h2, 0.0))
        inside = h2 >= 0
        lo = np.where(inside, np.minimum(lo, cu - h), lo)
        hi = np.where(inside, np.maximum(hi, cu + h), hi)
    du, dv = u1 - u0, v1 - v0
    length2 = du * du + dv * dv
    length = np.sqrt(length2)
    with np.errstate(divide='ignore', invalid='ignore'):
        nx, ny = -dv / length, du / length
        # |n . (p - p0)| <= rho
        base = ny * (y - v0)
        e1, e2 = u0 + (-rh - base) / nx, u0 + (rh - base) / nx
        band_lo1 = np.where(np.abs(nx) > 1e-9, np.minimum(e1, e2), np.where(np.abs(base) <= rh, -np.inf, np.inf))
        band_hi1 = np.where(np.abs(nx) > 1e-9, np.maximum(e1, e2), np.where(np.abs(base) <= rh, np.inf, -np.inf))
        # 0 <= d . (p - p0) <= |d|^2
        along = dv * (y - v0)
        f1, f2 = u0 + (0.0 - along) / du, u0 + (length2 - along) / du
        inside2 = (along >= 0) & (along <= length2)
        band_lo2 = np.where(np.abs(du) > 1e-9, np.minimum(f1, f2), np.where(inside2, -np.inf, np.inf))
        band_hi2 = np.where(np.abs(du) > 1e-9, np.maximum(f1, f2), np.where(inside2, np.inf, -np.inf))
    band_lo = np.maximum(band_lo1, band_lo2)
    band_hi = np.minimum(band_hi1, band_hi2)
    has_band = (length > 1e-9) & (band_lo <= band_hi)
    lo = np.where(has_band, np.minimum(lo, band_lo), lo)
    hi = np.where(has_band, np.maximum(hi, band_hi), hi)
    full_row = full[cap]
    x_start = np.where(full_row, 0, np.clip(np.ceil(np.nan_to_num(lo - 1.0, posinf=width, neginf=0)), 0, width))
    x_end = np.where(full_row, width - 1, np.clip(np.floor(np.nan_to_num(hi + 1.0, posinf=width - 1, neginf=-1)),
                                                  -1, width - 1))
    counts = np.maximum(x_end - x_start + 1, 0).astype(np.int64)
    total = int(counts.sum())
    if total == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty
    start_pix = y.astype(np.int64) * width + x_start.astype(np.int64)
    first = np.cumsum(counts) - counts
    pix = np.repeat(start_pix - first, counts) + np.arange(total)
    return np.repeat(cap, counts), pix


def draw_capsules(image: np.ndarray, depth: np.ndarray, intrinsics: np.ndarray, caps: Capsules,
                  light_dir: Sequence[float] = (0.3, -0.6, -0.7), ambient: float = 0.45,
                  diffuse: float = 0.7, up_dir: Sequence[float] = (0.0, -1.0, 0.0),
                  rays: Optional[np.ndarray] = None) -> np.ndarray:
    """Draws capsules into ``image``/``depth`` in place, with per-pixel depth testing.

    Each capsule is intersected analytically with the rays of the pixels of its projected
    outline; the nearest hit per pixel wins (z-buffer, independent of the capsules' order).

    Args:
      image: [H, W, 3] float32 RGB, modified in place.
      depth: [H, W] float32 camera-frame z (mm) of what is already drawn, modified in place.
      intrinsics: [3, 3] K (px).
      caps: :class:`Capsules` in the camera frame (x right, y down, z forward; mm).
      light_dir: direction towards the light, camera frame.
      ambient, diffuse: lighting weights.
      up_dir: the world's up direction in the camera frame (hemisphere ambient).
      rays: optional precomputed :func:`unit_rays` for this K and shape.

    Returns:
      [H, W] bool mask of the pixels this call drew.
    """
    height, width = depth.shape
    drawn = np.zeros(height * width, bool)
    if len(caps) == 0:
        return drawn.reshape(height, width)
    k = np.asarray(intrinsics, np.float64)
    idx, pix = _capsule_spans(caps, k, (height, width))
    if idx.size == 0:
        return drawn.reshape(height, width)
    if rays is None:
        rays = unit_rays(k, (height, width))
    f32 = np.float32
    a = caps.start.astype(f32)
    b = caps.end.astype(f32)
    r = caps.radius.astype(f32)
    ba = b - a
    baba = np.maximum(np.sum(ba * ba, -1), f32(1e-6))
    baoa = -np.sum(ba * a, -1)
    oaoa = np.sum(a * a, -1)
    rr = r * r
    # Per candidate: ray components and capsule scalars (1-D gathers).
    rx, ry, rz = rays[0].take(pix), rays[1].take(pix), rays[2].take(pix)
    bard = ba[:, 0].take(idx) * rx + ba[:, 1].take(idx) * ry + ba[:, 2].take(idx) * rz
    rdoa = -(a[:, 0].take(idx) * rx + a[:, 1].take(idx) * ry + a[:, 2].take(idx) * rz)
    baba_i, baoa_i = baba.take(idx), baoa.take(idx)
    qa = np.maximum(baba_i - bard * bard, f32(1e-9))
    qb = baba_i * rdoa - baoa_i * bard
    qc = baba_i * (oaoa.take(idx) - rr.take(idx)) - baoa_i * baoa_i
    disc = qb * qb - qa * qc
    sel = np.flatnonzero(disc >= 0)
    if sel.size == 0:
        return drawn.reshape(height, width)
    idx, pix, rx, ry, rz = idx[sel], pix[sel], rx[sel], ry[sel], rz[sel]
    bard, rdoa, baba_i, baoa_i = bard[sel], rdoa[sel], baba_i[sel], baoa_i[sel]
    t = (-qb[sel] - np.sqrt(disc[sel])) / qa[sel]
    y = baoa_i + t * bard
    body = (y > 0) & (y < baba_i)
    # Caps: the sphere at the start (y <= 0) or at the end.
    start_cap = y <= 0
    rdob = -(b[:, 0].take(idx) * rx + b[:, 1].take(idx) * ry + b[:, 2].take(idx) * rz)
    cb = np.where(start_cap, rdoa, rdob)
    cc = np.where(start_cap, oaoa.take(idx), np.sum(b * b, -1).take(idx)) - rr.take(idx)
    ch = cb * cb - cc
    t_cap = -cb - np.sqrt(np.maximum(ch, 0))
    t = np.where(body, t, np.where(ch > 0, t_cap, np.inf))
    z = t * rz
    flat_depth = depth.reshape(-1)
    hit = np.isfinite(z) & (z > NEAR_MM) & (z < flat_depth.take(pix))
    sel = np.flatnonzero(hit)
    if sel.size == 0:
        return drawn.reshape(height, width)
    idx, pix, t, z = idx[sel], pix[sel], t[sel], z[sel].astype(f32)
    rx, ry, rz = rx[sel], ry[sel], rz[sel]
    np.minimum.at(flat_depth, pix, z)
    win = np.flatnonzero(z <= flat_depth.take(pix))
    idx, pix, t = idx[win], pix[win], t[win]
    # Shading of the visible surface points.
    p = np.stack([rx[win] * t, ry[win] * t, rz[win] * t], -1)
    pa = p - a[idx]
    bai = ba[idx]
    hh = np.clip(np.einsum('ij,ij->i', pa, bai) / baba.take(idx), 0, 1)
    normal = (pa - hh[:, None] * bai) / r.take(idx)[:, None]
    light = np.asarray(light_dir, f32)
    light = light / np.linalg.norm(light)
    up = np.asarray(up_dir, f32)
    lambert = np.maximum(normal @ light, 0)
    hemi = 0.8 + 0.2 * (normal @ up)
    shade = ambient * hemi + diffuse * lambert
    colour = caps.colour.astype(f32)[idx]
    if caps.stripe is not None:
        stripe = caps.stripe.astype(f32).take(idx)
        if np.any(stripe > 0):
            phase = hh * np.sqrt(baba.take(idx)) / caps.period_mm.astype(f32).take(idx)
            colour = colour * (1 - stripe * ((phase % 1.0) < 0.5))[:, None]
    flat_image = image.reshape(-1, 3)
    flat_image[pix] = colour * shade[:, None]
    drawn[pix] = True
    return drawn.reshape(height, width)


# ----------------------------------------------------------------------------------------------
# The body model
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Outfit:
    """Colours (RGB in [0, 1]) and shape of one person's appearance.

    Attributes:
      skin, hair, shirt, trousers, shoes: [3] colours.
      long_sleeves, long_trousers: clothing coverage.
      thickness: limb radius factor (1 = average build).
      shirt_stripe, trousers_stripe: stripe contrast (0 = plain); ``stripe_period_mm``.
      bald: no hair cap.
    """

    skin: np.ndarray
    hair: np.ndarray
    shirt: np.ndarray
    trousers: np.ndarray
    shoes: np.ndarray
    long_sleeves: bool = True
    long_trousers: bool = True
    thickness: float = 1.0
    shirt_stripe: float = 0.0
    trousers_stripe: float = 0.0
    stripe_period_mm: float = 80.0
    bald: bool = False


SKIN_TONES = np.array([[0.96, 0.80, 0.69], [0.92, 0.72, 0.58], [0.80, 0.59, 0.45],
                       [0.66, 0.46, 0.33], [0.47, 0.32, 0.22], [0.33, 0.22, 0.15]], np.float32)
HAIR_COLOURS = np.array([[0.08, 0.06, 0.05], [0.25, 0.16, 0.09], [0.45, 0.30, 0.15],
                         [0.80, 0.65, 0.40], [0.55, 0.55, 0.55], [0.35, 0.10, 0.05]], np.float32)
TROUSER_COLOURS = np.array([[0.15, 0.22, 0.40], [0.10, 0.10, 0.12], [0.55, 0.50, 0.38],
                            [0.35, 0.35, 0.38], [0.25, 0.30, 0.20], [0.60, 0.60, 0.65]], np.float32)


def random_outfit(rng: np.random.Generator, thickness_range=(0.85, 1.2)) -> Outfit:
    """A random :class:`Outfit` drawn with ``rng``."""
    skin = SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.92, 1.05, 3)
    hair = HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))] * rng.uniform(0.85, 1.15)
    shirt = random_colour(rng, saturation=(0.0, 0.9), value=(0.15, 0.95))
    if rng.random() < 0.6:
        trousers = TROUSER_COLOURS[rng.integers(len(TROUSER_COLOURS))] * rng.uniform(0.8, 1.2, 3)
    else:
        trousers = random_colour(rng, saturation=(0.0, 0.7), value=(0.1, 0.8))
    shoes = np.array([0.08, 0.08, 0.08]) if rng.random() < 0.6 else random_colour(rng, value=(0.2, 0.95))
    return Outfit(
        skin=np.clip(skin, 0, 1).astype(np.float32), hair=np.clip(hair, 0, 1).astype(np.float32),
        shirt=shirt, trousers=np.clip(trousers, 0, 1).astype(np.float32), shoes=np.asarray(shoes, np.float32),
        long_sleeves=bool(rng.random() < 0.55), long_trousers=bool(rng.random() < 0.75),
        thickness=float(rng.uniform(*thickness_range)),
        shirt_stripe=float(rng.uniform(0.15, 0.4)) if rng.random() < 0.25 else 0.0,
        trousers_stripe=0.0, stripe_period_mm=float(rng.uniform(40, 120)), bald=bool(rng.random() < 0.08))


# (name, start: {landmark: weight}, end: {landmark: weight}, radius mm, colour part)
# Sided parts are written for the left side and mirrored.
_BODY_PARTS_SIDED = [
    ('torso_side', {'hip': 0.55, 'lumbar': 0.45}, {'sho': 0.42, 'chest': 0.58}, 92, 'shirt'),
    ('shoulder', {'neckbase': 0.6, 'acro': 0.4}, {'acro': 0.85, 'sho': 0.15}, 52, 'shirt'),
    ('upper_arm', {'sho': 1.0}, {'elb': 1.0}, 46, 'sleeve_upper'),
    ('forearm', {'elb': 1.0}, {'wri': 1.0}, 37, 'sleeve_lower'),
    ('hand', {'wri': 0.9, 'knuck': 0.1}, {'knuck': 1.0}, 30, 'skin'),
    ('thigh', {'hip': 0.9, 'knee': 0.1}, {'knee': 1.0}, 74, 'trousers'),
    ('shank', {'knee': 1.0}, {'ankle': 1.0}, 53, 'trouser_lower'),
    ('foot', {'heel': 0.85, 'ankle': 0.15}, {'toetip': 0.85, 'ball': 0.15}, 38, 'shoes'),
    ('eye', {'eye': 1.12, 'headc': -0.12}, {'eye': 1.12, 'headc': -0.12}, 11, 'eye'),
]
_BODY_PARTS_CENTRE = [
    ('pelvis', {'lhip': 1.0}, {'rhip': 1.0}, 95, 'trousers'),
    ('belly', {'lumbar': 0.8, 'pelvis': 0.2}, {'chest': 0.5, 'lclav': 0.25, 'rclav': 0.25}, 108, 'shirt'),
    ('neck', {'neckbase': 1.0}, {'skullbase': 0.7, 'headc': 0.3}, 48, 'skin'),
    ('head', {'headc': 1.0}, {'headc': 0.85, 'htop': 0.15}, 86, 'skin'),
    ('jaw', {'headc': 0.6, 'chin': 0.4}, {'chin': 0.75, 'nose': 0.25}, 55, 'skin'),
    ('nose', {'nose': 1.0}, {'nose': 1.0}, 17, 'skin'),
    ('hair', {'headc': 0.9, 'htop': 0.25, 'nose': -0.15}, {'headc': 0.75, 'htop': 0.3, 'chin': -0.05},
     90, 'hair'),
    # A print on the shirt front (upper chest to belly), in the shirt's contrasting accent colour: like
    # the collars, buttons and prints of real garments it shows which way the body faces (front vs
    # back, hence which side is left), a cue that faces alone give only at a few pixels. The centres lie
    # along chest + k * (mid-clavicle - chest), k = 1.83 and 1.33 (about 130 and 95 mm forward), so
    # the capsule protrudes a few centimetres from the belly's front surface.
    ('chest_print', {'chest': -0.83, 'lclav': 0.915, 'rclav': 0.915},
     {'lumbar': 0.7, 'chest': -1.03, 'lclav': 0.665, 'rclav': 0.665}, 50, 'accent'),
]


def _expand_parts():
    parts = []
    for name, start, end, radius, colour in _BODY_PARTS_SIDED:
        for side in 'lr':
            s = {(side + k if k in bodies.SIDED_LANDMARKS else k): w for k, w in start.items()}
            e = {(side + k if k in bodies.SIDED_LANDMARKS else k): w for k, w in end.items()}
            parts.append((side + name, s, e, radius, colour))
    parts += _BODY_PARTS_CENTRE
    return parts


BODY_PARTS = _expand_parts()
"""(name, start landmark weights, end landmark weights, radius mm, colour part) of every capsule."""

LANDMARK_INDEX = {n: i for i, n in enumerate(bodies.landmark_names())}
"""Landmark name -> row of :func:`posekit.data.bodies.landmarks` (default order)."""


def _part_matrices():
    n_landmarks = len(LANDMARK_INDEX)
    start = np.zeros((len(BODY_PARTS), n_landmarks))
    end = np.zeros((len(BODY_PARTS), n_landmarks))
    for i, (_, s, e, _, _) in enumerate(BODY_PARTS):
        for k, w in s.items():
            start[i, LANDMARK_INDEX[k]] += w
        for k, w in e.items():
            end[i, LANDMARK_INDEX[k]] += w
    radius = np.array([p[3] for p in BODY_PARTS], np.float64)
    return start, end, radius


_PART_START, _PART_END, _PART_RADIUS = _part_matrices()


def accent_colour(shirt) -> np.ndarray:
    """[3] float32: a colour contrasting with ``shirt`` ([3] RGB in [0, 1]): its complement, dark on a
    light shirt and light on a dark one (a pure function: it draws no random numbers)."""
    shirt = np.asarray(shirt, np.float32)
    complement = 1.0 - shirt
    if float(shirt.mean()) > 0.45:
        return (0.35 * complement).astype(np.float32)
    return (0.55 + 0.45 * complement).astype(np.float32)


def body_capsules(landmarks: np.ndarray, outfit: Outfit, scale: float = 1.0) -> Capsules:
    """The capsules of one body.

    Args:
      landmarks: [L, 3] positions of :func:`posekit.data.bodies.landmark_names` (mm, any frame).
      outfit: the person's :class:`Outfit`.
      scale: body scale (:func:`posekit.data.bodies.body_scale`); radii scale with it.

    Returns:
      :class:`Capsules` in the landmarks' frame.
    """
    landmarks = np.asarray(landmarks, np.float64)
    if landmarks.shape != (len(LANDMARK_INDEX), 3):
        raise ValueError(f'landmarks must have shape [{len(LANDMARK_INDEX)}, 3], got {landmarks.shape}')
    start = _PART_START @ landmarks
    end = _PART_END @ landmarks
    radius = _PART_RADIUS * scale * outfit.thickness
    colours = {
        'skin': outfit.skin, 'hair': outfit.hair if not outfit.bald else outfit.skin * 0.9,
        'shirt': outfit.shirt, 'trousers': outfit.trousers, 'shoes': outfit.shoes,
        'sleeve_upper': outfit.shirt, 'sleeve_lower': outfit.shirt if outfit.long_sleeves else outfit.skin,
        'trouser_lower': outfit.trousers if outfit.long_trousers else outfit.skin,
        'eye': np.array([0.05, 0.04, 0.04], np.float32), 'accent': accent_colour(outfit.shirt),
    }
    colour = np.stack([colours[p[4]] for p in BODY_PARTS]).astype(np.float32)
    stripe = np.array([outfit.shirt_stripe if p[4] in ('shirt', 'sleeve_upper') else 0.0
                       for p in BODY_PARTS], np.float32)
    period = np.full(len(BODY_PARTS), outfit.stripe_period_mm, np.float32)
    # Thin limbs should not thicken the head and eyes as much.
    fixed = np.array([p[4] in ('eye',) or p[0] in ('nose',) for p in BODY_PARTS])
    radius = np.where(fixed, _PART_RADIUS * scale, radius)
    head = np.array([p[0] in ('head', 'hair', 'jaw') for p in BODY_PARTS])
    radius = np.where(head, _PART_RADIUS * scale * (0.5 + 0.5 * outfit.thickness) ** 0.5, radius)
    return Capsules(start, end, radius, colour, stripe, period)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[H, W, 3] float in [0, 1] -> uint8 (rounded, clipped)."""
    return np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
