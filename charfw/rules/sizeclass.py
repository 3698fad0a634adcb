"""Size classes and batch sizes of the dataset config (SPEC §4).

Width and height are classed separately (LOW <= 512 < MID <= 768 < HIGH), so a
tall 512x768 image trains at [512, 768] instead of being squeezed into 512x512.
"""

from __future__ import annotations

CLASSES = ("LOW", "MID", "HIGH")
RESOLUTION = {"LOW": 512, "MID": 768, "HIGH": 1024}

BATCH_PROFILES: dict[str, dict[str, int]] = {
    "default": {"LOW_LOW": 2},
    "12gb": {"LOW_LOW": 4, "MID_LOW": 3, "LOW_MID": 3, "MID_MID": 2, "HIGH_LOW": 2, "LOW_HIGH": 2},
}
CLASS_PAIRS = tuple(f"{w}_{h}" for w in CLASSES for h in CLASSES)


def size_class(pixels: int) -> str:
    if pixels <= 512:
        return "LOW"
    if pixels <= 768:
        return "MID"
    return "HIGH"


def class_pair(width: int, height: int) -> str:
    """`MID_LOW` = width class MID, height class LOW (the seed's table keys)."""
    return f"{size_class(width)}_{size_class(height)}"


def resolution(pair: str) -> tuple[int, int]:
    w, h = pair.split("_")
    return RESOLUTION[w], RESOLUTION[h]


def batch_size(pair: str, table: dict[str, int]) -> int:
    """Batch size for a class pair; pairs missing from the table train at 1."""
    return table.get(pair, 1)
