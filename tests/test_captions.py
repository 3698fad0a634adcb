"""Captions follow docs/rules.md §3 exactly for every view code."""

import itertools

import pytest

from charfw.rules.captions import CaptionRule, caption
from charfw.rules.viewcode import ViewCode, mirror_yaw, parse_view_code

REFERENCE = ("krnk, white background, black background, simple background, from horizontal, from front, "
             "upper body, standing, straight standing, nude, completely nude, bare shoulders, nipples, "
             "collarbone, abs, ribs, looking at viewer, smile, open mouth, blush")


def spec_caption(keywords, s, pitch, yaw):
    """docs/rules.md §3 transcribed literally, as an oracle independent of the template data."""
    tags = list(keywords)
    tags += ["white background", "black background", "simple background"]
    tags.append({0: "from horizontal", 1: "from above", 2: "from below"}[pitch])
    tags.append("from front" if yaw in (0, 1, 7) else "from side" if yaw in (2, 6) else "from behind")
    tags.append("upper body" if s == "f" else "full body")
    tags += ["standing", "straight standing"]
    if s == "f":
        tags += ["nude", "completely nude", "bare shoulders"]
        if yaw in (0, 1, 2, 6, 7):
            tags += ["nipples", "collarbone", "abs", "ribs"]
        if yaw in (3, 4, 5):
            tags += ["shoulder blades", "median furrow"]
        if (pitch == 1 and yaw in (0, 1, 2, 6, 7)) or (pitch == 2 and yaw in (0, 1, 7)):
            tags.append("navel")
    tags.append("looking at viewer" if yaw == 0 else "looking away")
    if yaw != 4:
        tags += ["smile", "open mouth", "blush"]
    return ", ".join(tags)


def test_reference_string():
    assert caption(["krnk"], parse_view_code("f00")) == REFERENCE


@pytest.mark.parametrize("s,pitch,yaw", list(itertools.product("fb", range(3), range(8))))
def test_every_view_code(s, pitch, yaw):
    view = parse_view_code(f"{s}{pitch}{yaw}")
    assert view == ViewCode(s, pitch, yaw)
    assert caption(["krnksf", "krnk"], view) == spec_caption(["krnksf", "krnk"], s, pitch, yaw)


def test_outfit_keywords_come_first_and_body_has_no_nude_tags():
    text = caption(["krnksf", "krnk"], parse_view_code("b12"))
    assert text.startswith("krnksf, krnk, white background")
    assert "nude" not in text and "navel" not in text and "full body" in text


@pytest.mark.parametrize("stem,ok", [
    ("f00", True), ("b27", True), ("f01-alt", True), ("f01_x2", True),
    ("f30", False), ("f08", False), ("x00", False), ("F00", False), ("f0", False), ("f00 alt", False),
    ("f00.alt", False),
])
def test_view_code_pattern(stem, ok):
    assert (parse_view_code(stem) is not None) == ok


def test_suffix_kept():
    assert parse_view_code("f01-alt").suffix == "-alt"


def test_mirror_yaw():
    assert [mirror_yaw(y) for y in range(8)] == [0, 7, 6, 5, 4, 3, 2, 1]


def test_custom_template_replaces_rules():
    template = [CaptionRule(tags=["solo"]), CaptionRule(tags=["happy"], yaw=[0])]
    assert caption(["krnk"], parse_view_code("f00"), template) == "krnk, solo, happy"
    assert caption(["krnk"], parse_view_code("f04"), template) == "krnk, solo"


def test_background_tags_are_one_setting_away():
    """`captions: {background_tags: false}` (for masked_loss): the same captions without the background tags."""
    from charfw.config.models import Captions
    from charfw.rules.captions import BACKGROUND_TAGS, DEFAULT_TEMPLATE, caption, without_background
    from charfw.rules.viewcode import parse_view_code

    view = parse_view_code("f00")
    full, bare = caption(["krnk"], view), caption(["krnk"], view, without_background(DEFAULT_TEMPLATE))
    assert all(tag in full for tag in BACKGROUND_TAGS) and not any(tag in bare for tag in BACKGROUND_TAGS)
    assert [t for t in full.split(", ") if t not in BACKGROUND_TAGS] == bare.split(", ")
    assert Captions(background_tags=False).rules == without_background(DEFAULT_TEMPLATE)
    assert Captions().rules == list(DEFAULT_TEMPLATE)
