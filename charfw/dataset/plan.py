"""Which prepared images a set produces: pure rules on source sizes (docs/rules.md §4).

Each source is emitted once per size (its longer side), never upscaled: a size
larger than the source's longer side skips that source.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from charfw.errors import CharfwError
from charfw.families import Family
from charfw.project import ImageSet, Source
from charfw.rules.buckets import no_upscale_placement
from charfw.rules.sizeclass import class_pair as pair_of
from charfw.rules.sizeclass import resolution

EXIF_ORIENTATION = 0x0112
ROTATED = {5, 6, 7, 8}  # EXIF orientations that swap width and height


def bucket_of(item: "Prepared", family: Family) -> tuple[int, int]:
    """The aspect-ratio bucket a prepared image trains in: its size class's resolution, no upscaling."""
    w, h = resolution(pair_of(item.width, item.height, family), family)
    return no_upscale_placement(item.width, item.height, w * h).bucket


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


PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def image_header(path: Path) -> tuple[int, int, bool]:
    """(width, height, has_alpha) from the header, honouring EXIF rotation, and a file that ends as its
    format ends: what `charfw check` and the plans need, without decoding the pixels. A file cut short
    (an interrupted copy) is refused here; damage inside a complete file is found by the images stage,
    which decodes it."""
    from PIL import Image, UnidentifiedImageError  # only when a file is not cached yet

    try:
        with Image.open(path) as im:
            width, height = im.size
            fmt = im.format
            if fmt in ("JPEG", "WEBP") and im.getexif().get(EXIF_ORIENTATION) in ROTATED:
                width, height = height, width
            alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CharfwError(f"cannot read image: {exc}", file=path) from None
    if not _ends_whole(path, fmt):
        raise CharfwError(f"cannot read image: the {fmt} file is cut short (an interrupted copy?)", file=path)
    return width, height, alpha


def _ends_whole(path: Path, fmt: str | None) -> bool:
    """Whether the file ends where its format says: PNG's IEND chunk, JPEG's end-of-image marker (some
    writers pad after it), WebP's RIFF length."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        f.seek(max(0, size - 64))
        tail = f.read()
        if fmt == "PNG":
            return tail.endswith(PNG_END)
        if fmt == "JPEG":
            return b"\xff\xd9" in tail
        if fmt == "WEBP":
            f.seek(4)
            return int.from_bytes(f.read(4), "little") + 8 <= size
    return True


def image_size(path: Path) -> tuple[int, int]:
    """Displayed (width, height) from the header only."""
    return image_header(path)[:2]


def plan_set(image_set: ImageSet, family: Family,
             sizes_of: dict[Path, tuple[int, int]] | None = None) -> list[Prepared]:
    """Every prepared image of a set, checked so each folder falls in one size class."""
    out: list[Prepared] = []
    sizes = {src.path: sizes_of[src.path] if sizes_of else image_size(src.path) for src in image_set.sources}
    for size in image_set.sizes:
        folder = folder_name(image_set.class_tokens, image_set.kind, size)
        items = [Prepared(src, folder, size, *dims) for src in image_set.sources
                 if (dims := scaled_size(*sizes[src.path], size)) is not None]
        _one_size_class(items, size, family)
        out += items
    return out


def _one_size_class(items: list[Prepared], size: int, family: Family) -> None:
    """All of a folder in one size class; else the error names an image that differs from most of them."""
    def class_pair(w: int, h: int) -> str:
        return pair_of(w, h, family)

    pairs = Counter(class_pair(i.width, i.height) for i in items)
    if len(pairs) < 2:
        return
    usual = pairs.most_common(1)[0][0]
    odd = next(i for i in items if class_pair(i.width, i.height) != usual)
    like = next(i for i in items if class_pair(i.width, i.height) == usual)
    raise CharfwError(
        f"at size {size} this image is {odd.width}x{odd.height} ({class_pair(odd.width, odd.height)}) but "
        f"{pairs[usual]} of the set's {len(items)} images are {usual} (e.g. {like.source.path.name}, "
        f"{like.width}x{like.height}); one folder must hold one size class: use the same aspect ratio for "
        "every image of a set", file=odd.source.path)
