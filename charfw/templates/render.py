"""Pose templates of one view code: the mannequin as an OpenPose skeleton, a depth image and a line image.

The OpenPose image is drawn as the OpenPose ControlNets' training annotations were (the annotator's
`draw_bodypose`): black canvas, the 17 limbs as filled ellipses 4 px wide (half-width) in the
limb's colour at 60 % brightness, then each keypoint as a 4 px disc in its full colour. A keypoint
is drawn where a detector would find it: body joints from every side, the nose, eyes and ears
only where their surface faces the camera, and only inside the frame. Depth is the mannequin's
silhouette on a flat far background (near bright, as depth ControlNets take it); the line image
its outline and inner depth edges, white on black (lineart ControlNets' form).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from charfw.families.family import Family
from charfw.rules.viewcode import ViewCode
from charfw.templates.geometry import Camera, make_camera, outline_mask, project, raycast
from charfw.templates.mannequin import ASPECT, FRAMING, keypoints, shapes

KINDS = ("openpose", "depth", "lineart")
TEMPLATE_VERSION = "charfw-templates-1"   # bump when a template's pixels change: candidates are made again
# The annotator's limbs (1-based keypoint pairs; the first 17 are drawn) and its 18 colours
LIMBS = ((2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12), (12, 13), (13, 14),
         (2, 1), (1, 15), (15, 17), (1, 16), (16, 18))
COLORS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
          (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
          (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))
STICK = 4            # half-width of a limb, px
DOT = 4              # keypoint radius, px
LIMB_SHADE = 0.6     # limbs are drawn darker than the keypoints
FACING = -0.1        # a face keypoint is seen while its surface faces the camera at least this much


def template_size(kind: str, family: Family) -> tuple[int, int]:
    """(width, height) of a set kind's templates: the example sets' shape at the family's resolution."""
    w, h = ASPECT[kind]
    return round(family.sample_size * w), round(family.sample_size * h)


def view_camera(view: ViewCode) -> tuple[Camera, float]:
    target, distance, tan_half = FRAMING[view.set]
    return make_camera(view.pitch, view.yaw, target, distance), tan_half


def pose(view: ViewCode, size: tuple[int, int]) -> list[tuple[float, float] | None]:
    """The 18 keypoints' pixel positions in OpenPose order; None where a detector would not see one."""
    cam, tan_half = view_camera(view)
    points = keypoints()
    xy = project(np.stack([k.position for k in points]), cam, *size, tan_half)
    out = []
    for k, (x, y) in zip(points, xy):
        seen = k.facing is None or float(k.facing @ cam.back) > FACING
        inside = 0 <= x < size[0] and 0 <= y < size[1]
        out.append((float(x), float(y)) if seen and inside else None)
    return out


def _ellipse(cx: float, cy: float, half_length: float, half_width: float, degrees: int) -> list[tuple[int, int]]:
    """The polygon of a rotated ellipse, one vertex per degree (as OpenCV's ellipse2Poly makes it)."""
    a = math.radians(degrees)
    pts = []
    for t in range(0, 361):
        r = math.radians(t)
        x = half_length * math.cos(r)
        y = half_width * math.sin(r)
        pts.append((round(cx + x * math.cos(a) - y * math.sin(a)), round(cy + x * math.sin(a) + y * math.cos(a))))
    return pts


def openpose_image(points: list[tuple[float, float] | None], size: tuple[int, int]) -> Image.Image:
    image = Image.new("RGB", size, (0, 0, 0))
    draw = ImageDraw.Draw(image)
    for (i, j), colour in zip(LIMBS, COLORS):
        a, b = points[i - 1], points[j - 1]
        if a is None or b is None:
            continue
        length = math.dist(a, b)
        angle = int(math.degrees(math.atan2(a[1] - b[1], a[0] - b[0])))
        shade = tuple(int(c * LIMB_SHADE) for c in colour)
        centre = (int((a[0] + b[0]) / 2), int((a[1] + b[1]) / 2))   # integer centre and axes, as the annotator
        draw.polygon(_ellipse(*centre, int(length / 2), STICK, angle), fill=shade)
    for point, colour in zip(points, COLORS):
        if point is not None:
            x, y = int(point[0]), int(point[1])
            draw.ellipse((x - DOT, y - DOT, x + DOT, y + DOT), fill=colour)
    return image


def _cast(view: ViewCode, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    cam, tan_half = view_camera(view)
    ident, depth, _ = raycast(shapes(), cam, *size, tan_half)
    return ident.reshape(size[1], size[0]), depth.reshape(size[1], size[0])


def depth_image(view: ViewCode, size: tuple[int, int]) -> Image.Image:
    ident, depth = _cast(view, size)
    hit = ident >= 0
    near, far = depth[hit].min(), depth[hit].max()
    level = np.where(hit, 255 * (1 - 0.75 * (depth - near) / max(far - near, 1e-9)), 0)
    return Image.fromarray(np.round(level).astype(np.uint8), "L").convert("RGB")


def line_image(view: ViewCode, size: tuple[int, int]) -> Image.Image:
    ident, depth = _cast(view, size)
    lines = outline_mask(ident, depth)
    return Image.fromarray(np.where(lines, 255, 0).astype(np.uint8), "L").convert("RGB")


def template(view: ViewCode, kind: str, family: Family) -> Image.Image:
    """One template image of `kind` (openpose, depth, lineart) for a view code."""
    size = template_size(view.set, family)
    if kind == "openpose":
        return openpose_image(pose(view, size), size)
    return depth_image(view, size) if kind == "depth" else line_image(view, size)
