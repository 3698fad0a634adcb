"""The view-code grid of one image set: rows pitch 0/1/2, columns yaw 0-7 (docs/rules.md §2).

Each cell is `present` (a source has that code; the first one by name stands in, the count is
kept), `mirrored` (symmetric characters: yaws 5-7 come from flipping 3-1, so the cell shows
that source flipped) or `missing`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from charfw.project import ImageSet
from charfw.rules.viewcode import ALL_YAWS, PITCH_NAMES, YAW_NAMES, mirror_yaw, required_yaws

PITCHES = tuple(PITCH_NAMES)


@dataclass(frozen=True)
class Cell:
    code: str               # "f05"
    pitch: int
    yaw: int
    state: str              # present | mirrored | missing
    source: Path | None     # the image shown (for mirrored: the one flipped)
    count: int = 0          # sources with this code (suffixes: f00, f00-alt, ...)
    required: bool = False  # a yaw the set must cover (charfw check warns when no pitch has it)

    @property
    def label(self) -> str:
        return f"{PITCH_NAMES[self.pitch]}, {YAW_NAMES[self.yaw]}"


def view_grid(image_set: ImageSet) -> list[list[Cell]]:
    """3 rows x 8 cells."""
    by_code: dict[tuple[int, int], list[Path]] = {}
    for src in sorted(image_set.sources, key=lambda s: s.path.name):
        by_code.setdefault((src.view.pitch, src.view.yaw), []).append(src.path)
    required = set(required_yaws(image_set.symmetric))
    rows = []
    for pitch in PITCHES:
        row = []
        for yaw in ALL_YAWS:
            code = f"{image_set.kind}{pitch}{yaw}"
            own = by_code.get((pitch, yaw), [])
            mirror = by_code.get((pitch, mirror_yaw(yaw)), [])
            if own:
                cell = Cell(code, pitch, yaw, "present", own[0], len(own), yaw in required)
            elif image_set.symmetric and yaw not in required and mirror:
                cell = Cell(code, pitch, yaw, "mirrored", mirror[0], 0, False)
            else:
                cell = Cell(code, pitch, yaw, "missing", None, 0, yaw in required)
            row.append(cell)
        rows.append(row)
    return rows
