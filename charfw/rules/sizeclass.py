"""Size classes, batch sizes and default sizes of the dataset config (docs/rules.md §4), per model family
(the numbers are each family's, in its module under charfw/families).

Width and height are classed separately (LOW <= 512 < MID <= 768 < HIGH on SD1.5), so a
tall 512x768 image trains at [512, 768] instead of being squeezed into 512x512.

SDXL is trained at 1024, so its classes are the same rule at twice the size:
LOW <= 1024 < MID <= 1536 < HIGH, trained at 1024 / 1536 / 2048, with the default sizes
512, 768, 1024, 1536. At 1024x1024 SDXL fits a 12 GB card only at batch 1, so every SDXL
class trains at batch 1 in both profiles (give a table of your own on a bigger card).
"""

from __future__ import annotations

from charfw.families.family import Family

CLASSES = ("LOW", "MID", "HIGH")
CLASS_PAIRS = tuple(f"{w}_{h}" for w in CLASSES for h in CLASSES)
PROFILES = ("default", "12gb")


def size_class(pixels: int, family: Family) -> str:
    c = family.size_classes
    if pixels <= c.low:
        return "LOW"
    if pixels <= c.mid:
        return "MID"
    return "HIGH"


def class_pair(width: int, height: int, family: Family) -> str:
    """`MID_LOW` = width class MID, height class LOW (the seed's table keys)."""
    return f"{size_class(width, family)}_{size_class(height, family)}"


def resolution(pair: str, family: Family) -> tuple[int, int]:
    w, h = pair.split("_")
    res = family.size_classes.resolutions
    return res[w], res[h]


def batch_table(profile: str | dict[str, int], family: Family) -> dict[str, int]:
    """A named profile of the family, or the user's own table as it is."""
    return profile if isinstance(profile, dict) else family.size_classes.batch_profiles[profile]


def batch_size(pair: str, table: dict[str, int]) -> int:
    """Batch size for a class pair; pairs missing from the table train at 1."""
    return table.get(pair, 1)
