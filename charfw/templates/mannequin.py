"""The posable mannequin the pose templates are rendered from: the example figures' skeleton.

Joints are in charfw.templates.geometry's coordinates (y up, facing +z, her left hand +x), in the
standing pose of the seed's templates (arms slightly away from the body). `keypoints` gives the 18
COCO/OpenPose body keypoints, each with the direction its surface faces, so a view decides which
ones a pose detector would see; `shapes` the ellipsoids the depth and line images are cast from.
`FRAMING` is the camera of each set kind: upper body for faces (`f`), full body for bodies (`b`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from charfw.templates.geometry import Ellipsoid, limb

HEAD_C = np.array([0.0, 5.9, 0.0])
HEAD_R = 0.52
NECK = ((0, 5.45, -0.02), (0, 4.9, -0.02))
SHOULDER = np.array([0.57, 4.84, -0.02])
ELBOW = np.array([0.74, 4.12, -0.05])
WRIST = np.array([0.80, 3.45, 0.02])
HIP = np.array([0.27, 3.35, 0.0])
KNEE = np.array([0.25, 1.80, 0.03])
ANKLE = np.array([0.23, 0.32, -0.02])

# kind -> (camera target, distance, tan of half the vertical field of view)
FRAMING = {
    "f": ((0.0, 5.25, 0.0), 5.5, 0.30),
    "b": ((0.0, 3.30, 0.0), 11.0, 0.345),
}
# kind -> (width, height) as multiples of the family's sample size: the example's set shapes, 1:1 and 2:3
ASPECT = {"f": (1.0, 1.0), "b": (1.0, 1.5)}


def mirror(p, side: float) -> np.ndarray:
    """A left-side point moved to side +1 (her left) or -1 (her right)."""
    return np.array([side * p[0], p[1], p[2]])


@dataclass(frozen=True)
class Keypoint:
    name: str
    position: np.ndarray
    facing: np.ndarray | None   # the surface's outward direction; None: a joint a detector sees from anywhere


def _unit(*v) -> np.ndarray:
    a = np.asarray(v, dtype=float)
    return a / np.linalg.norm(a)


def keypoints() -> list[Keypoint]:
    """The 18 OpenPose body keypoints in its order (nose, neck, right arm, left arm, right leg, left leg,
    right eye, left eye, right ear, left ear); right is the character's right (-x)."""
    right, left = -1.0, 1.0
    eye = np.array([0.19, 5.95, 0.45])
    ear = np.array([0.52, 5.85, -0.02])
    neck = np.array([0.0, SHOULDER[1], SHOULDER[2]])   # between the shoulders, as OpenPose places it
    points = [
        Keypoint("nose", np.array([0.0, 5.78, 0.55]), _unit(0, 0, 1)),
        Keypoint("neck", neck, None),
    ]
    for side, label in ((right, "right"), (left, "left")):
        points += [Keypoint(f"{label}_shoulder", mirror(SHOULDER, side), None),
                   Keypoint(f"{label}_elbow", mirror(ELBOW, side), None),
                   Keypoint(f"{label}_wrist", mirror(WRIST, side), None)]
    for side, label in ((right, "right"), (left, "left")):
        points += [Keypoint(f"{label}_hip", mirror(HIP, side), None),
                   Keypoint(f"{label}_knee", mirror(KNEE, side), None),
                   Keypoint(f"{label}_ankle", mirror(ANKLE, side), None)]
    points += [Keypoint("right_eye", mirror(eye, right), _unit(-0.45, 0, 0.9)),
               Keypoint("left_eye", mirror(eye, left), _unit(0.45, 0, 0.9)),
               Keypoint("right_ear", mirror(ear, right), _unit(-1, 0, 0)),
               Keypoint("left_ear", mirror(ear, left), _unit(1, 0, 0))]
    return points


def shapes() -> list[Ellipsoid]:
    """The mannequin's ellipsoids: head, neck, torso, arms and legs (no material: shape only)."""
    out = [Ellipsoid(HEAD_C, (HEAD_R,) * 3, None),
           Ellipsoid((0, 5.62, 0.08), (0.40, 0.40, 0.42), None),            # jaw
           Ellipsoid((0, 5.78, 0.50), (0.06, 0.08, 0.08), None),            # nose
           limb(*NECK, 0.15, None),
           Ellipsoid((0, 4.84, -0.02), (0.60, 0.20, 0.26), None),           # shoulders
           Ellipsoid((0, 4.50, 0), (0.50, 0.56, 0.31), None),               # chest
           Ellipsoid((0, 3.98, 0), (0.40, 0.46, 0.26), None),               # waist
           Ellipsoid((0, 3.45, 0), (0.52, 0.36, 0.32), None)]               # hips
    for side in (1.0, -1.0):
        sh, el, wr = mirror(SHOULDER, side), mirror(ELBOW, side), mirror(WRIST, side)
        hp, kn, an = mirror(HIP, side), mirror(KNEE, side), mirror(ANKLE, side)
        out += [Ellipsoid(sh, (0.15,) * 3, None), limb(sh, el, 0.12, None), Ellipsoid(el, (0.10,) * 3, None),
                limb(el, wr, 0.10, None), Ellipsoid(wr + (side * 0.02, -0.13, 0.02), (0.08, 0.14, 0.09), None),
                limb(hp, kn, 0.22, None), Ellipsoid(kn, (0.15,) * 3, None), limb(kn, an, 0.15, None),
                Ellipsoid(an + (0, -0.18, 0.12), (0.12, 0.12, 0.26), None)]
    return out
