"""The camera and ray-caster the pose templates and the example's figures share (docs/rules.md §2).

Coordinates: character units (a head is about 1.1), y up, the character faces +z, her left hand is
+x. Yaw k puts the camera at azimuth 45·k degrees, counter-clockwise seen from above (yaw 2 looks
at her left side), pitch 1 / 2 raise / lower it by 30 degrees: the view codes' camera rules.
Shapes are ellipsoids (`limb` spans a bone); `raycast` finds the nearest one per pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

Material = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (points, normals) -> rgb; None for shape-only uses
PITCH_DEGREES = {0: 0.0, 1: 30.0, 2: -30.0}


def normalize(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def frame_from_axis(axis, local: int = 1) -> np.ndarray:
    """Rotation whose column ``local`` is ``axis`` (the other two orthonormal)."""
    a = normalize(np.asarray(axis, dtype=float))
    helper = np.array([0.0, 0.0, 1.0]) if abs(a[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    u = normalize(np.cross(helper, a))
    w = np.cross(a, u)
    cols = [u, w]
    cols.insert(local, a)
    return np.stack(cols, axis=1)


class Ellipsoid:
    """Ellipsoid ``center + rot @ (radii * unit sphere)``; ``keep`` cuts holes."""

    def __init__(self, center, radii, material: Material, rot=None, keep=None, shade_center=None):
        self.c = np.asarray(center, dtype=float)
        self.r = np.asarray(radii, dtype=float)
        self.rot = np.eye(3) if rot is None else np.asarray(rot, dtype=float)
        self.material = material
        self.keep = keep
        self.shade_center = shade_center  # shade as a sphere around it (smooth seams)
        self.bound = float(self.r.max())

    def intersect(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
        ol = ((o - self.c) @ self.rot) / self.r
        dl = (d @ self.rot) / self.r
        a = np.einsum("ij,ij->i", dl, dl)
        b = 2.0 * (dl @ ol)
        c = ol @ ol - 1.0
        disc = b * b - 4 * a * c
        hit = disc >= 0
        sq = np.sqrt(np.where(hit, disc, 0.0))
        t_near = np.where(hit, (-b - sq) / (2 * a), np.inf)
        t_far = np.where(hit, (-b + sq) / (2 * a), np.inf)
        if self.keep is None:
            return t_near
        safe_near, safe_far = np.where(hit, t_near, 0.0), np.where(hit, t_far, 0.0)
        ok_near = hit & self.keep(o + safe_near[:, None] * d)
        ok_far = hit & self.keep(o + safe_far[:, None] * d)
        return np.where(ok_near, t_near, np.where(ok_far, t_far, np.inf))

    def normal(self, p: np.ndarray) -> np.ndarray:
        if self.shade_center is not None:
            return normalize(p - self.shade_center)
        local = ((p - self.c) @ self.rot) / self.r
        return normalize((local / self.r) @ self.rot.T)


def limb(a, b, radius, material, overhang=0.35) -> Ellipsoid:
    """Ellipsoid spanning segment a-b (a little past both ends)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    half = np.linalg.norm(b - a) / 2 + overhang * radius
    return Ellipsoid((a + b) / 2, (radius, half, radius), material, rot=frame_from_axis(b - a))


# --------------------------------------------------------------------------- camera


@dataclass
class Camera:
    origin: np.ndarray
    right: np.ndarray
    up: np.ndarray
    back: np.ndarray  # unit vector from target toward the camera


def make_camera(pitch: int, yaw: int, target, distance: float) -> Camera:
    yaw_a = math.radians(45.0 * yaw)
    pitch_a = math.radians(PITCH_DEGREES[pitch])
    back = np.array([
        math.sin(yaw_a) * math.cos(pitch_a),
        math.sin(pitch_a),
        math.cos(yaw_a) * math.cos(pitch_a),
    ])
    right = normalize(np.cross([0.0, 1.0, 0.0], back))
    up = np.cross(back, right)
    return Camera(np.asarray(target, dtype=float) + distance * back, right, up, back)


def camera_rays(cam: Camera, width: int, height: int, tan_half_h: float) -> np.ndarray:
    """Unit ray directions, row-major from the top-left pixel."""
    aspect = width / height
    xs = ((np.arange(width) + 0.5) / width * 2 - 1) * tan_half_h * aspect
    ys = (1 - (np.arange(height) + 0.5) / height * 2) * tan_half_h
    gx, gy = np.meshgrid(xs, ys)
    d = gx[..., None] * cam.right + gy[..., None] * cam.up - cam.back
    return normalize(d.reshape(-1, 3))


# --------------------------------------------------------------------------- renderer


def project(points: np.ndarray, cam: Camera, width: int, height: int, tan_half_h: float) -> np.ndarray:
    """Pixel coordinates (x right, y down; pixel centres at +0.5) of 3-D points: the inverse of camera_rays."""
    rel = np.atleast_2d(points) - cam.origin
    depth = -(rel @ cam.back)
    aspect = width / height
    u = (rel @ cam.right) / depth / (tan_half_h * aspect)
    v = (rel @ cam.up) / depth / tan_half_h
    return np.stack([(u + 1) / 2 * width, (1 - v) / 2 * height], axis=1)


def raycast(prims, cam: Camera, width: int, height: int, tan_half_h: float
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(index of the nearest shape per pixel, -1 for none; its distance, inf for none; the rays), row-major."""
    d = camera_rays(cam, width, height, tan_half_h)
    o = cam.origin
    n_px = d.shape[0]
    depth = np.full(n_px, np.inf)
    ident = np.full(n_px, -1)
    for k, prim in enumerate(prims):
        # Cull rays that miss the bounding sphere.
        w = prim.c - o
        tca = d @ w
        near = np.nonzero(w @ w - tca * tca <= prim.bound ** 2)[0]
        if near.size == 0:
            continue
        t = prim.intersect(o, d[near])
        closer = t < depth[near]
        depth[near[closer]] = t[closer]
        ident[near[closer]] = k
    return ident, depth, d


NEIGHBOURS = ((1, 0), (-1, 0), (0, 1), (0, -1))


def shifted(a: np.ndarray, dy: int, dx: int, fill) -> np.ndarray:
    """``a`` moved by (dy, dx) pixels, uncovered border filled with ``fill``."""
    out = np.full_like(a, fill)
    h, w = a.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        a[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def outline_mask(ident: np.ndarray, depth: np.ndarray, gap: float = 0.05) -> np.ndarray:
    """Silhouette and depth-discontinuity edges, dilated by one pixel."""
    fg = ident >= 0
    d = np.where(fg, depth, 1e9)
    edge = np.zeros_like(fg)
    for dy, dx in NEIGHBOURS:
        nd = shifted(d, dy, dx, 1e9)
        nid = shifted(ident, dy, dx, -1)
        # Mark the nearer pixel of a pair that jumps in depth (or meets background).
        edge |= fg & (nid != ident) & (nd - d > gap)
    grown = edge.copy()
    for dy, dx in NEIGHBOURS:
        grown |= shifted(edge, dy, dx, False)
    return grown
