"""Which prepared images a set produces: pure rules on source sizes (SPEC §4).

Each source is emitted once per size (its longer side), never upscaled: a size
larger than the source's longer side skips that source.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from charfw.project import ImageSet, Source
from charfw.errors import CharfwError
from charfw.rules.sizeclass import class_pair

EXIF_ORIENTATION = 0x0112
ROTATED = {5, 6, 7, 8}  # EXIF orientations that swap width and height


@dataclass(frozen=True)
class Prepared:
    source: Source
    folder: str  # "krnk girl_f0512"
    size: int
    width: int
    height: int

    @property
    def name(self) -> str:
        return self.source.stem + ".png"


def folder_name(class_tokens: str, kind: str, size: int) -> str:
    return f"{class_tokens}_{kind}{size:04d}"


def scaled_size(width: int, height: int, size: int) -> tuple[int, int] | None:
    """(w, h) with the longer side = `size`, or None when that would upscale."""
    longer = max(width, height)
    if size > longer:
        return None
    if size == longer:
        return width, height
    scale = size / longer
    return max(1, round(width * scale)), max(1, round(height * scale))


def image_size(path: Path) -> tuple[int, int]:
    """Displayed (width, height) from the header only, honouring EXIF rotation."""
    from PIL import Image, UnidentifiedImageError  # only when a size is not cached yet

    try:
        with Image.open(path) as im:
            width, height = im.size
            if im.format in ("JPEG", "WEBP") and im.getexif().get(EXIF_ORIENTATION) in ROTATED:
                width, height = height, width
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CharfwError(f"cannot read image: {exc}", file=path) from None
    return width, height


def plan_set(image_set: ImageSet, sizes_of: dict[Path, tuple[int, int]] | None = None) -> list[Prepared]:
    """Every prepared image of a set, checked so each folder falls in one size class."""
    out: list[Prepared] = []
    sizes = {src.path: sizes_of[src.path] if sizes_of else image_size(src.path) for src in image_set.sources}
    for size in image_set.sizes:
        folder = folder_name(image_set.class_tokens, image_set.kind, size)
        first: Prepared | None = None
        for src in image_set.sources:
            w, h = sizes[src.path]
            dims = scaled_size(w, h, size)
            if dims is None:
                continue
            item = Prepared(src, folder, size, *dims)
            if first is None:
                first = item
            elif class_pair(*dims) != class_pair(first.width, first.height):
                raise CharfwError(
                    f"at size {size} this image is {dims[0]}x{dims[1]} ({class_pair(*dims)}) but "
                    f"{first.source.path.name} is {first.width}x{first.height} "
                    f"({class_pair(first.width, first.height)}); one folder must hold one size class: "
                    "use the same aspect ratio for every image of a set", file=src.path)
            out.append(item)
    return out
