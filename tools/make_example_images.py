#!/usr/bin/env python3
"""Draw the example workspace's training images as simple procedural figures.

charfw's example workspace (``characters/``) needs view-coded training images
(docs/rules.md §2) for two small demo characters modelled on the seed document's:

* ``krnk`` ("kuroneko"): black-haired cat-eared girl with a hime cut and long hair.
  Symmetric, so only yaws 0-4.  Face set ``face/`` and outfit ``sf`` (sailor fuku).
* ``tyank`` ("chaneko"): light-brown-haired cat-eared girl with a side ponytail on
  her left and an X hair clip on her right.  Asymmetric, so yaws 0-7.  Face set
  ``face/`` and outfit ``ps`` (white/red plug suit).

The figures are a handful of 3-D primitives (ellipsoids and convex polyhedra) that
are ray-cast with numpy through a perspective camera placed at the view code's pitch
and yaw, so every view is consistent: eyes exist only on the front of the head,
the ponytail swaps sides between yaws 1/7, 2/6 and 3/5, from above shows the top
of the head, from below the chin.  Surface details (eyes, mouth, collar, suit
panels) are painted by per-primitive material functions in character coordinates.
The camera, the ray-caster and the skeleton live in charfw.templates (the pose templates
are rendered from the same mannequin). Images are drawn at 2x and downscaled with LANCZOS for anti-aliasing, and saved
as RGBA PNG with a transparent background.  Output is deterministic (no
randomness).

Coordinates: character units (about one head = 1.1), y up, the character faces +z,
her left hand is +x.  Yaw ``k`` puts the camera at azimuth 45*k degrees,
counter-clockwise seen from above; pitch 1/2 raise/lower it by 30 degrees.

Usage (from the repository root)::

    python tools/make_example_images.py            # writes characters/...
    python tools/make_example_images.py --root /tmp/out --only krnk/face
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from charfw.templates.geometry import (Camera, Ellipsoid, Material, frame_from_axis, limb, make_camera, normalize,
                                       outline_mask, raycast)
from charfw.templates.mannequin import ANKLE, ELBOW
from charfw.templates.mannequin import FRAMING as CAMERAS
from charfw.templates.mannequin import HEAD_C, HEAD_R, HIP, KNEE, NECK, SHOULDER, WRIST, mirror

SUPERSAMPLE = 2
OUTLINE = np.array([28, 24, 36]) / 255.0
LIGHT_IN_CAMERA = np.array([-0.35, 0.40, 0.85])  # (right, up, toward camera)



def rgb(r: int, g: int, b: int) -> np.ndarray:
    return np.array([r, g, b], dtype=float) / 255.0


def solid(colour: np.ndarray) -> Material:
    return lambda p, n: np.broadcast_to(colour, p.shape).copy()


# --------------------------------------------------------------------------- geometry


def rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def rot_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


class Convex:
    """Convex polyhedron {x : n_i . x <= off_i}."""

    def __init__(self, normals, offsets, material: Material):
        n = np.asarray(normals, dtype=float)
        length = np.linalg.norm(n, axis=1)
        self.n = n / length[:, None]
        self.off = np.asarray(offsets, dtype=float) / length
        self.material = material
        self.c, self.bound = self._bounding_sphere()

    def _bounding_sphere(self):
        # Vertices = feasible intersections of plane triples (shapes are tiny).
        verts = []
        k = len(self.off)
        for i in range(k):
            for j in range(i + 1, k):
                for m in range(j + 1, k):
                    a = self.n[[i, j, m]]
                    if abs(np.linalg.det(a)) < 1e-9:
                        continue
                    v = np.linalg.solve(a, self.off[[i, j, m]])
                    if np.all(self.n @ v <= self.off + 1e-7):
                        verts.append(v)
        verts = np.array(verts)
        centre = verts.mean(axis=0)
        return centre, float(np.linalg.norm(verts - centre, axis=1).max())

    def intersect(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
        num = self.off - self.n @ o  # (K,)
        den = d @ self.n.T  # (N, K)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = num / den
        t_enter = np.where(den < 0, t, -np.inf).max(axis=1)
        t_exit = np.where(den > 0, t, np.inf).min(axis=1)
        parallel_out = ((den == 0) & (num < 0)).any(axis=1)
        hit = (t_enter <= t_exit) & (t_enter > 0) & ~parallel_out
        return np.where(hit, t_enter, np.inf)

    def normal(self, p: np.ndarray) -> np.ndarray:
        side = p @ self.n.T - self.off
        return self.n[np.argmax(side, axis=1)]


def convex_in_frame(local_normals, local_offsets, center, rot, material) -> Convex:
    """Convex shape given in a local frame, placed at ``center`` rotated by ``rot``."""
    n = np.asarray(local_normals, dtype=float) @ rot.T
    off = np.asarray(local_offsets, dtype=float) + n @ np.asarray(center, dtype=float)
    return Convex(n, off, material)


def prism(poly2d, thickness, center, rot, material) -> Convex:
    """Counter-clockwise 2-D polygon in local xy, extruded +-thickness/2 along local z."""
    pts = np.asarray(poly2d, dtype=float)
    x, y = pts.T
    if np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y) < 0:  # make it counter-clockwise
        pts = pts[::-1]
    normals = [[0, 0, 1], [0, 0, -1]]
    offsets = [thickness / 2, thickness / 2]
    for a, b in zip(pts, np.roll(pts, -1, axis=0)):
        edge = b - a
        out = np.array([edge[1], -edge[0], 0.0])
        out /= np.linalg.norm(out)
        normals.append(out)
        offsets.append(out[:2] @ a)
    return convex_in_frame(normals, offsets, center, rot, material)


def frustum(y_top, y_bot, r_top, r_bot, sides, material, depth_scale=1.0) -> Convex:
    """Vertical many-sided cone section around the y axis (skirt)."""
    k = (r_top - r_bot) / (y_top - y_bot)
    normals = [[0, 1, 0], [0, -1, 0]]
    offsets = [y_top, -y_bot]
    for i in range(sides):
        a = 2 * math.pi * (i + 0.5) / sides
        normals.append([math.sin(a), -k, math.cos(a) / depth_scale])
        offsets.append(r_bot - k * y_bot)
    return Convex(normals, offsets, material)


def along(p: np.ndarray, a, b) -> np.ndarray:
    """Parameter of points' projection on segment a-b (0 at a, 1 at b)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ab = b - a
    return (p - a) @ ab / (ab @ ab)


# --------------------------------------------------------------------------- camera


def render(prims, cam: Camera, width: int, height: int, tan_half_h: float) -> np.ndarray:
    """Ray-cast the primitives; returns an RGBA float image (height, width, 4)."""
    ident, depth, d = raycast(prims, cam, width, height, tan_half_h)
    o = cam.origin
    n_px = d.shape[0]
    colour = np.zeros((n_px, 3))
    light = normalize(LIGHT_IN_CAMERA @ np.stack([cam.right, cam.up, cam.back]))
    for k, prim in enumerate(prims):
        sel = np.nonzero(ident == k)[0]
        if sel.size == 0:
            continue
        p = o + depth[sel, None] * d[sel]
        n = prim.normal(p)
        n = np.where((np.einsum("ij,ij->i", n, d[sel]) > 0)[:, None], -n, n)
        base = prim.material(p, n)
        colour[sel] = base * cel_shade(n @ light)[:, None]

    alpha = (ident >= 0).astype(float)
    line = outline_mask(ident.reshape(height, width), depth.reshape(height, width))
    img = np.concatenate([colour.reshape(height, width, 3), alpha.reshape(height, width, 1)], axis=2)
    img[line, :3] = OUTLINE
    img[line, 3] = 1.0
    return img


def cel_shade(lambert: np.ndarray) -> np.ndarray:
    """Anime-style shading: shadow / mid / lit tones (flat tones also keep PNGs small)."""
    return np.select([lambert < 0.12, lambert < 0.45], [0.68, 0.86], 1.0)


# --------------------------------------------------------------------------- characters


@dataclass
class Character:
    name: str
    hair: np.ndarray
    hair_shine: np.ndarray
    eyes: np.ndarray
    skin: np.ndarray
    ear_inner: np.ndarray
    blunt_bangs: bool
    long_hair: bool
    side_ponytail: bool


KRNK = Character(
    name="krnk", hair=rgb(40, 38, 56), hair_shine=rgb(105, 100, 140), eyes=rgb(200, 30, 60),
    skin=rgb(255, 233, 222), ear_inner=rgb(225, 140, 165),
    blunt_bangs=True, long_hair=True, side_ponytail=False,
)
TYANK = Character(
    name="tyank", hair=rgb(200, 145, 88), hair_shine=rgb(245, 210, 150), eyes=rgb(50, 150, 90),
    skin=rgb(255, 228, 210), ear_inner=rgb(240, 160, 170),
    blunt_bangs=False, long_hair=False, side_ponytail=True,
)

WHITE = rgb(246, 246, 250)
NAVY = rgb(36, 44, 92)
RED = rgb(210, 36, 48)
BLACK = rgb(42, 40, 48)
MOUTH = rgb(150, 40, 55)
TONGUE = rgb(235, 120, 130)
BLUSH = rgb(250, 150, 160)


def sphere_angles(p: np.ndarray, centre=HEAD_C):
    """Azimuth (0 = front, + toward her left) and elevation of points around the head."""
    v = normalize(p - centre)
    return np.arctan2(v[:, 0], v[:, 2]), np.arcsin(np.clip(v[:, 1], -1, 1)), v


def ellipse(az, el, az0, el0, w, h):
    return ((az - az0) / w) ** 2 + ((el - el0) / h) ** 2


def face_material(ch: Character) -> Material:
    """Skin with big anime eyes, an open smiling mouth and blush."""

    def mat(p, n):
        az, el, v = sphere_angles(p)
        col = np.broadcast_to(ch.skin, p.shape).copy()
        front = v[:, 2] > 0.2
        for side in (1.0, -1.0):
            blush = front & (ellipse(az, el, side * 0.62, -0.32, 0.16, 0.06) < 1)
            col[blush] = 0.55 * col[blush] + 0.45 * BLUSH
            e = ellipse(az, el, side * 0.42, -0.08, 0.17, 0.21)
            col[front & (e < 1)] = WHITE
            iris = front & (ellipse(az, el, side * 0.40, -0.11, 0.12, 0.17) < 1) & (e < 1)
            col[iris] = ch.eyes
            lower = iris & (el < -0.16)
            col[lower] = 0.6 * ch.eyes + 0.4 * WHITE
            col[front & (ellipse(az, el, side * 0.40, -0.10, 0.055, 0.09) < 1)] = BLACK
            col[front & (ellipse(az, el, side * 0.40 + 0.05, -0.03, 0.035, 0.035) < 1)] = WHITE
            lash = front & (e < 1.45) & (e > 0.72) & (el > -0.02)
            col[lash] = BLACK
        mouth = front & (ellipse(az, el, 0.0, -0.56, 0.13, 0.09) < 1) & (el < -0.56)
        col[mouth] = MOUTH
        col[mouth & (ellipse(az, el, 0.0, -0.66, 0.07, 0.04) < 1)] = TONGUE
        return col

    return mat


def hair_material(ch: Character) -> Material:
    """Hair colour with an 'angel ring' highlight band."""

    def mat(p, n):
        _, _, v = sphere_angles(p)
        col = np.broadcast_to(ch.hair, p.shape).copy()
        wave = 0.03 * np.sin(np.arctan2(v[:, 0], v[:, 2]) * 9)
        ring = (np.abs(v[:, 1] - 0.6 - wave) < 0.05) & (n[:, 1] > -0.2)
        col[ring] = ch.hair_shine
        return col

    return mat


def face_opening(ch: Character):
    """Where the hair shell is cut away: the face below the bangs, and under the chin."""

    def keep(p):
        az, el, v = sphere_angles(p)
        x, y, z = v.T
        if ch.blunt_bangs:
            bang = np.full_like(x, 0.30)
        else:  # zigzag bangs
            bang = 0.36 - 0.10 * np.abs(((x * 6) % 2) - 1)
        face = (z > 0.15) & (y < bang) & (np.abs(x) < 0.80)
        under = (y < -0.30) & (z > -0.35)
        return ~(face | under)

    return keep


def cat_ears(ch: Character) -> list:
    """Two triangular ears on top of the head; pink inside on the front face."""
    tri = [(-0.2, 0.0), (0.2, 0.0), (0.0, 0.44)]
    thick = 0.07
    prims = []
    for side in (1.0, -1.0):
        rot = rot_y(side * 0.45) @ rot_z(-side * 0.38) @ rot_x(-0.15)
        centre = np.array([side * 0.30, 6.30, -0.02])

        def mat(p, n, rot=rot, centre=centre):
            local = (p - centre) @ rot
            col = np.broadcast_to(ch.hair, p.shape).copy()
            inner = (local[:, 2] > thick / 2 - 1e-4) & (local[:, 1] > 0.05)
            inner &= np.abs(local[:, 0]) < 0.13 * (1 - (local[:, 1] - 0.05) / 0.33)
            col[inner] = ch.ear_inner
            return col

        prims.append(prism(tri, thick, centre, rot, mat))
    return prims


def hair_clip(side: float) -> list:
    """An X-shaped hair clip on the bangs at ``side`` (+1 her left, -1 her right)."""
    direction = normalize(np.array([side * math.sin(0.55) * math.cos(0.5), math.sin(0.5),
                                    math.cos(0.55) * math.cos(0.5)]))
    centre = HEAD_C + 0.60 * direction
    base = frame_from_axis(direction, local=2)
    bar = [(-0.13, -0.025), (0.13, -0.025), (0.13, 0.025), (-0.13, 0.025)]
    colour = solid(rgb(250, 205, 40))
    return [prism(bar, 0.04, centre, base @ rot_z(a), colour) for a in (0.7, -0.7)]


def head(ch: Character) -> list:
    """Head, jaw, hair shell, ears and the character's hair features."""
    hair = hair_material(ch)
    face = face_material(ch)
    prims = [
        Ellipsoid(HEAD_C, (HEAD_R,) * 3, face),
        Ellipsoid((0, 5.62, 0.08), (0.40, 0.40, 0.42), face, shade_center=HEAD_C),  # jaw
        Ellipsoid(HEAD_C + (0, 0.02, -0.02), (0.58, 0.60, 0.60), hair, keep=face_opening(ch)),
    ]
    prims += cat_ears(ch)
    if ch.long_hair:  # hime cut: side locks plus long hair down the back
        for side in (1.0, -1.0):
            prims.append(Ellipsoid((side * 0.45, 5.45, 0.16), (0.13, 0.55, 0.12), hair))
        prims.append(Ellipsoid((0, 4.95, -0.46), (0.64, 1.35, 0.22), hair))
        prims.append(Ellipsoid((0, 5.75, -0.28), (0.56, 0.55, 0.36), hair))
    if ch.side_ponytail:  # on her left (+x): the asymmetric feature
        prims.append(Ellipsoid((0.52, 6.08, -0.22), (0.09,) * 3, solid(RED)))
        prims.append(limb((0.62, 6.02, -0.24), (0.86, 4.95, -0.28), 0.17, hair))
        prims += hair_clip(-1.0)  # on her right
        prims.append(Ellipsoid((0, 5.68, -0.16), (0.50, 0.44, 0.42), hair))  # nape
    return prims


# --------------------------------------------------------------------------- bodies





@dataclass
class Outfit:
    """Material per body part; ``extras`` adds outfit-only shapes."""

    neck: Material
    torso: Material
    upper_arm: Material
    forearm: Material
    hand: Material
    thigh: Material
    shin: Material
    foot: Material
    joint_arm: Material
    joint_leg: Material
    extras: Callable[[], list] = lambda: []


def body(outfit: Outfit) -> list:
    prims = [
        limb(*NECK, 0.15, outfit.neck),
        Ellipsoid((0, 4.84, -0.02), (0.60, 0.20, 0.26), outfit.torso),  # shoulders
        Ellipsoid((0, 4.50, 0), (0.50, 0.56, 0.31), outfit.torso),  # chest
        Ellipsoid((0, 3.98, 0), (0.40, 0.46, 0.26), outfit.torso),  # waist
        Ellipsoid((0, 3.45, 0), (0.52, 0.36, 0.32), outfit.torso),  # hips
    ]
    for side in (1.0, -1.0):
        sh, el, wr = mirror(SHOULDER, side), mirror(ELBOW, side), mirror(WRIST, side)
        hp, kn, an = mirror(HIP, side), mirror(KNEE, side), mirror(ANKLE, side)
        prims += [
            Ellipsoid(sh, (0.15,) * 3, outfit.upper_arm),
            limb(sh, el, 0.12, outfit.upper_arm),
            Ellipsoid(el, (0.10,) * 3, outfit.joint_arm),
            limb(el, wr, 0.10, outfit.forearm),
            Ellipsoid(wr + (side * 0.02, -0.13, 0.02), (0.08, 0.14, 0.09), outfit.hand),
            limb(hp, kn, 0.22, outfit.thigh),
            Ellipsoid(kn, (0.15,) * 3, outfit.joint_leg),
            limb(kn, an, 0.15, outfit.shin),
            Ellipsoid(an + (0, -0.18, 0.12), (0.12, 0.12, 0.26), outfit.foot),
        ]
    return prims + outfit.extras()


def nude(ch: Character) -> Outfit:
    """Upper-body face sets: plain skin, no detail."""
    s = solid(ch.skin)
    return Outfit(s, s, s, s, s, s, s, s, s, s)


def sailor_top(p, n):
    """White blouse with a navy sailor collar (V in front, square flap at the back)."""
    x, y, z = p.T
    col = np.broadcast_to(WHITE, p.shape).copy()
    v_half = (y - 4.38) * 0.8
    lapel = (z > 0.0) & (y > 4.38) & (np.abs(np.abs(x) - v_half - 0.14) < 0.14)
    flap = (z <= 0.0) & (y > 4.25) & (np.abs(x) < 0.55)
    top = y > 5.0
    collar = lapel | flap | top
    col[collar] = NAVY
    stripe = flap & ((np.abs(y - 4.31) < 0.025) | (np.abs(np.abs(x) - 0.49) < 0.025))
    stripe |= (z > 0.0) & (y > 4.38) & (np.abs(np.abs(x) - v_half - 0.24) < 0.022)
    col[stripe] = WHITE
    return col


def sailor_extras() -> list:
    scarf = solid(RED)
    return [
        frustum(4.02, 2.95, 0.50, 0.86, 18, solid(NAVY), depth_scale=0.72),  # pleated skirt
        Ellipsoid((0, 4.44, 0.35), (0.12, 0.09, 0.07), scarf),
        prism([(-0.13, 0.0), (0.0, -0.36), (0.13, 0.0)], 0.03, (0, 4.42, 0.36),
              rot_x(-0.25), scarf),
    ]


def sleeve(p, n):
    """White sleeve with a navy cuff at the wrist (either arm: use |x|)."""
    col = np.broadcast_to(WHITE, p.shape).copy()
    q = p.copy()
    q[:, 0] = np.abs(q[:, 0])  # fold the right arm onto the left
    col[along(q, ELBOW, WRIST) > 0.86] = NAVY
    return col


def sailor(ch: Character) -> Outfit:
    skin = solid(ch.skin)

    def shin(p, n):
        col = np.broadcast_to(ch.skin, p.shape).copy()
        col[p[:, 1] < 1.45] = BLACK  # knee socks
        return col

    return Outfit(
        neck=skin, torso=sailor_top, upper_arm=solid(WHITE), forearm=sleeve,
        hand=skin, thigh=skin, shin=shin, foot=solid(rgb(90, 55, 35)),
        joint_arm=solid(WHITE), joint_leg=skin, extras=sailor_extras,
    )


def plug_suit(ch: Character) -> Outfit:
    """White suit with red side panels, red arms/shins and black joints."""

    def torso(p, n):
        x, y, z = p.T
        col = np.broadcast_to(WHITE, p.shape).copy()
        col[np.abs(x) > 0.33] = RED
        col[np.abs(y - 4.0) < 0.07] = RED  # waist band
        col[(z > 0) & (np.abs(y - 4.62) < 0.05) & (np.abs(x) < 0.36)] = BLACK  # chest line
        return col

    def thigh(p, n):
        col = np.broadcast_to(WHITE, p.shape).copy()
        outer = np.abs(p[:, 0]) > np.abs(HIP[0]) + 0.10
        col[outer] = RED
        return col

    def upper_arm(p, n):
        col = np.broadcast_to(WHITE, p.shape).copy()
        col[p[:, 1] > 4.65] = RED  # shoulder caps
        return col

    return Outfit(
        neck=solid(BLACK), torso=torso, upper_arm=upper_arm, forearm=solid(RED),
        hand=solid(WHITE), thigh=thigh, shin=solid(RED), foot=solid(RED),
        joint_arm=solid(BLACK), joint_leg=solid(BLACK),
    )


# --------------------------------------------------------------------------- sets


@dataclass
class ImageSet:
    character: Character
    folder: str  # "face" or outfit name
    kind: str  # "f" or "b"
    codes: list[str]  # pitch+yaw digits
    outfit: Callable[[Character], Outfit]


# (width, height, camera target, camera distance, tan of half vertical field of view)
FRAMING = {"f": (768, 768, *CAMERAS["f"]), "b": (512, 768, *CAMERAS["b"])}

SETS = [
    ImageSet(KRNK, "face", "f", [f"{p}{y}" for p in range(3) for y in range(5)], nude),
    ImageSet(KRNK, "sf", "b", ["00", "01", "02", "03", "04", "10", "11", "13", "20", "21", "23"],
             sailor),
    ImageSet(TYANK, "face", "f", [f"0{y}" for y in range(8)] + ["10", "11", "17", "20"], nude),
    ImageSet(TYANK, "ps", "b", [f"0{y}" for y in range(8)] + ["10", "11", "17", "20"],
             plug_suit),
]


def draw(image_set: ImageSet, code: str) -> Image.Image:
    width, height, target, distance, tan_half = FRAMING[image_set.kind]
    ch = image_set.character
    prims = head(ch) + body(image_set.outfit(ch))
    cam = make_camera(int(code[0]), int(code[1]), target, distance)
    big = render(prims, cam, width * SUPERSAMPLE, height * SUPERSAMPLE, tan_half)
    img = Image.fromarray(np.round(np.clip(big, 0, 1) * 255).astype(np.uint8), "RGBA")
    return img.resize((width, height), Image.LANCZOS)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path,
                        default=Path(__file__).resolve().parent.parent / "characters",
                        help="workspace characters folder (default: repo's characters/)")
    parser.add_argument("--only", action="append", default=[],
                        help="limit to <character>/<folder>, e.g. krnk/face (repeatable)")
    args = parser.parse_args(argv)
    for image_set in SETS:
        key = f"{image_set.character.name}/{image_set.folder}"
        if args.only and key not in args.only:
            continue
        out_dir = args.root / key
        out_dir.mkdir(parents=True, exist_ok=True)
        for code in image_set.codes:
            path = out_dir / f"{image_set.kind}{code}.png"
            draw(image_set, code).save(path, optimize=True)
            print(f"{path}  {path.stat().st_size // 1024} KiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
