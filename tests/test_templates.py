"""Pose templates per view code: the mannequin's geometry under the view codes' camera rules, and the
OpenPose drawing as the annotator makes it."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from charfw.families import SD15, SDXL
from charfw.rules.viewcode import parse_view_code
from charfw.templates.render import COLORS, LIMB_SHADE, depth_image, openpose_image, pose, template, template_size

NOSE, NECK, R_EYE, L_EYE, R_EAR, L_EAR = 0, 1, 14, 15, 16, 17
# OpenPose's 18 keypoints: right/left pairs swap in a mirror image
SWAP = {2: 5, 3: 6, 4: 7, 8: 11, 9: 12, 10: 13, 14: 15, 16: 17}
SWAP.update({b: a for a, b in SWAP.items()})
# The annotator's palette (controlnet_aux / ControlNet's annotator draw_bodypose), restated
ANNOTATOR = [[255, 0, 0], [255, 85, 0], [255, 170, 0], [255, 255, 0], [170, 255, 0], [85, 255, 0], [0, 255, 0],
             [0, 255, 85], [0, 255, 170], [0, 255, 255], [0, 170, 255], [0, 85, 255], [0, 0, 255], [85, 0, 255],
             [170, 0, 255], [255, 0, 255], [255, 0, 170], [255, 0, 85]]


def view(code):
    return parse_view_code(code)


def points(code, family=SD15):
    return pose(view(code), template_size(code[0], family))


@pytest.mark.parametrize("kind", ["f", "b"])
def test_the_face_is_seen_from_the_front_not_from_behind(kind):
    front, back = points(f"{kind}00"), points(f"{kind}04")
    assert all(front[k] is not None for k in (NOSE, R_EYE, L_EYE))
    assert all(back[k] is None for k in (NOSE, R_EYE, L_EYE))
    assert back[NECK] is not None and back[R_EAR] is not None      # ears and body joints stay visible


@pytest.mark.parametrize("pitch", [0, 1, 2])
@pytest.mark.parametrize("kind", ["f", "b"])
def test_the_two_sides_are_mirror_images(kind, pitch):
    width = template_size(kind, SD15)[0]
    left, right = points(f"{kind}{pitch}2"), points(f"{kind}{pitch}6")
    assert sum(p is not None for p in left) >= 8
    for k, p in enumerate(left):
        q = right[SWAP.get(k, k)]
        assert (p is None) == (q is None), k
        if p is not None:
            assert p[0] == pytest.approx(width - q[0], abs=1e-6) and p[1] == pytest.approx(q[1], abs=1e-6)
    assert left[L_EYE] is not None and left[R_EYE] is None            # yaw 2 shows her left side


def test_from_above_the_head_is_higher_and_larger_than_from_below():
    for kind in "fb":
        above, below = points(f"{kind}10"), points(f"{kind}20")
        ears = lambda p: p[L_EAR][0] - p[R_EAR][0]   # noqa: E731
        assert ears(above) > ears(below)
        size = template_size(kind, SD15)
        tops = []
        for code in (f"{kind}10", f"{kind}20"):
            mask = np.asarray(depth_image(view(code), size).convert("L")) > 0
            tops.append(int(np.argmax(mask.any(axis=1))))   # first row of the silhouette: the top of the head
        assert tops[0] < tops[1]


@pytest.mark.parametrize("code", [f"{s}{p}{y}" for s in "fb" for p in range(3) for y in range(8)])
def test_every_keypoint_lies_inside_the_frame(code):
    size = template_size(code[0], SD15)
    pts = points(code)
    assert all(0 <= p[0] < size[0] and 0 <= p[1] < size[1] for p in pts if p is not None)
    if code[0] == "b":   # the full body: every joint (only the face's keypoints may turn away)
        assert all(pts[k] is not None for k in range(1, 14))
    else:                # upper body: head and shoulders
        assert all(pts[k] is not None for k in (NECK, 2, 5))


def test_openpose_colours_are_the_annotators():
    assert [list(c) for c in COLORS] == ANNOTATOR
    size = template_size("b", SD15)
    pts = points("b00")
    image = np.asarray(openpose_image(pts, size))
    for k, p in enumerate(pts):
        assert tuple(image[int(p[1]), int(p[0])]) == COLORS[k]            # each keypoint in its own colour
    a, b = pts[9], pts[10]                                                # right knee -> ankle: limb 8
    mid = image[int((a[1] + b[1]) / 2), int((a[0] + b[0]) / 2)]
    assert tuple(mid) == tuple(int(c * LIMB_SHADE) for c in COLORS[8])
    assert image[0, 0].tolist() == [0, 0, 0]


def test_sizes_follow_the_family_and_the_set():
    assert template_size("f", SD15) == (512, 512) and template_size("b", SD15) == (512, 768)
    assert template_size("f", SDXL) == (1024, 1024) and template(view("b00"), "lineart", SDXL).size == (1024, 1536)


def test_the_command_writes_the_seeds_folders(tmp_path):
    out = tmp_path / "poses"
    proc = subprocess.run([sys.executable, "-m", "charfw.cli", "templates", str(out), "--kind", "openpose",
                           "--codes", "f00,b02"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["b02.png", "f00.png"]
    assert Image.open(out / "b02.png").size == (512, 768)
    proc = subprocess.run([sys.executable, "-m", "charfw.cli", "templates", str(out), "--codes", "f0"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "'f0' is not a view code" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "charfw.cli", "templates", str(tmp_path / "all"), "--codes", "f01"],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and {p.name for p in (tmp_path / "all").iterdir()} == {"openpose", "depth", "lineart"}
