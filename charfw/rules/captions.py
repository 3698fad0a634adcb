"""Captions derived from view codes (docs/rules.md §3).

The template is data: an ordered list of rules, each adding its tags when the
image's set/pitch/yaw match. The seed's rules are the default; a workspace may
replace them (`captions.template` in charfw.yaml). Keywords always come first.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from charfw.rules.names import checked, tag_problem
from charfw.rules.viewcode import ViewCode

Tag = Annotated[str, checked(tag_problem)]   # one caption tag: no comma, line break or control character

FRONT = [0, 1, 2, 6, 7]
BACK = [3, 4, 5]


class CaptionRule(BaseModel):
    """Add `tags` when the view code matches every given condition (an absent condition matches all)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    tags: list[Tag] = Field(min_length=1)
    set: list[Literal["f", "b"]] | None = None
    pitch: list[Literal[0, 1, 2]] | None = None
    yaw: list[Literal[0, 1, 2, 3, 4, 5, 6, 7]] | None = None

    def matches(self, view: ViewCode) -> bool:
        return ((self.set is None or view.set in self.set)
                and (self.pitch is None or view.pitch in self.pitch)
                and (self.yaw is None or view.yaw in self.yaw))


def _rule(tags: str, **when) -> CaptionRule:
    return CaptionRule(tags=[t.strip() for t in tags.split(",")], **when)


DEFAULT_TEMPLATE: tuple[CaptionRule, ...] = (
    # Both background colours on purpose: the background is not what the keyword learns.
    _rule("white background, black background, simple background"),
    _rule("from horizontal", pitch=[0]),
    _rule("from above", pitch=[1]),
    _rule("from below", pitch=[2]),
    _rule("from front", yaw=[0, 1, 7]),
    _rule("from side", yaw=[2, 6]),
    _rule("from behind", yaw=[3, 4, 5]),
    _rule("upper body", set=["f"]),
    _rule("full body", set=["b"]),
    _rule("standing, straight standing"),
    _rule("nude, completely nude, bare shoulders", set=["f"]),
    _rule("nipples, collarbone, abs, ribs", set=["f"], yaw=FRONT),
    _rule("shoulder blades, median furrow", set=["f"], yaw=BACK),
    _rule("navel", set=["f"], pitch=[1], yaw=FRONT),
    _rule("navel", set=["f"], pitch=[2], yaw=[0, 1, 7]),
    _rule("looking at viewer", yaw=[0]),
    _rule("looking away", yaw=[1, 2, 3, 4, 5, 6, 7]),
    _rule("smile, open mouth, blush", yaw=[0, 1, 2, 3, 5, 6, 7]),
)


BACKGROUND_TAGS = ("white background", "black background", "simple background")


def without_background(template) -> list[CaptionRule]:
    """The template without the background tags (rules left empty dropped): for masked training."""
    out = []
    for rule in template:
        tags = [t for t in rule.tags if t not in BACKGROUND_TAGS]
        if tags:
            out.append(rule.model_copy(update={"tags": tags}))
    return out


def caption(keywords: list[str], view: ViewCode, template=DEFAULT_TEMPLATE) -> str:
    """One line: keywords, then each matching rule's tags, in order, never shuffled."""
    tags = list(keywords)
    for rule in template:
        if rule.matches(view):
            tags.extend(rule.tags)
    return ", ".join(tags)


BACKGROUND_NAMES = {(0, 0, 0): "black background", (255, 255, 255): "white background"}


def view_prompt(description: str | None, view: ViewCode, template=DEFAULT_TEMPLATE,
                background: tuple[int, int, int] = (0, 0, 0)) -> str:
    """The generate stage's prompt for a view: the character's description, then the caption template's tags
    for the view (pitch, yaw, framing...) with the background the character is drawn on (plain, in its
    colour) instead of both colours: generation and captions say the same thing."""
    tags = [t for t in caption([], view, template).split(", ") if t and t not in BACKGROUND_TAGS]
    plain = ["simple background", *([BACKGROUND_NAMES[background]] if background in BACKGROUND_NAMES else [])]
    return ", ".join([*([description] if description else []), *plain, *tags])
