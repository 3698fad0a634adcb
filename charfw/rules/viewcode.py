"""View codes: the file-name rule that makes every character's data alike (docs/rules.md §2).

`f01-alt.png` = face set, pitch 0 (horizontal), yaw 1 (front-diagonal), free suffix `-alt`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

VIEW_CODE = re.compile(r"^(?P<set>[fb])(?P<pitch>[0-2])(?P<yaw>[0-7])(?P<suffix>[A-Za-z0-9_-]*)$")

PITCH_NAMES = {0: "horizontal", 1: "from above", 2: "from below"}
YAW_NAMES = {0: "front", 1: "front-diagonal", 2: "side", 3: "back-diagonal", 4: "back",
             5: "back-diagonal (other side)", 6: "side (other)", 7: "front-diagonal (other)"}
SYMMETRIC_YAWS = range(0, 5)
ALL_YAWS = range(0, 8)


@dataclass(frozen=True, order=True)
class ViewCode:
    set: str  # "f" face (upper body) or "b" body (full body)
    pitch: int
    yaw: int
    suffix: str = ""

    @property
    def code(self) -> str:
        return f"{self.set}{self.pitch}{self.yaw}"


def parse_view_code(stem: str) -> ViewCode | None:
    """The view code of a file stem, or None when the stem does not follow the rule."""
    m = VIEW_CODE.match(stem)
    if not m:
        return None
    return ViewCode(m["set"], int(m["pitch"]), int(m["yaw"]), m["suffix"])


def required_yaws(symmetric: bool) -> range:
    """Yaws a set must cover: 0-4 for a symmetric character (flips give 5-7), else 0-7."""
    return SYMMETRIC_YAWS if symmetric else ALL_YAWS


def missing_yaws(yaws, symmetric: bool) -> list[int]:
    """Required yaws that none of `yaws` (a set's images, any pitch) covers."""
    return sorted(set(required_yaws(symmetric)) - set(yaws))


def mirror_yaw(yaw: int) -> int:
    """Yaw seen in a horizontally flipped image: 1<->7, 2<->6, 3<->5."""
    return (8 - yaw) % 8
