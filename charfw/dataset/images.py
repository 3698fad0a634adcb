"""Prepared images: transparency composited onto the set's background, downscaled per size.

For a set trained with `masked_loss` the prepared PNG is RGBA: the same composited colours, and the
source's alpha (resized on its own, so the colours are exactly those of the RGB image) as the mask
sd-scripts' `alpha_mask` and the embedded trainer read."""

from __future__ import annotations

import shutil
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from charfw.dataset.plan import Prepared
from charfw.errors import CharfwError
from charfw.fsutil import atomic_path


def flatten(path: Path, background: tuple[int, int, int]) -> Image.Image:
    """The source as RGB, alpha composited onto `background`, EXIF rotation applied."""
    return flatten_with_alpha(path, background)[0]


def flatten_with_alpha(path: Path, background: tuple[int, int, int]) -> tuple[Image.Image, Image.Image | None]:
    """(the source as RGB composited onto `background`, its alpha as an L image or None), EXIF rotation applied."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CharfwError(f"cannot read image: {exc}", file=path) from None
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB"), rgba.getchannel("A")
    if im.mode.startswith("I;16") or im.mode == "I":  # 16-bit greyscale: keep the top 8 bits
        im = im.convert("I").point(lambda v: v / 256).convert("L")
    return im.convert("RGB"), None


def write_set(out_dir: Path, items: list[Prepared], background: tuple[int, int, int], keep_alpha: bool = False) -> None:
    """Write every prepared image of a set under `out_dir`, removing ones no longer planned; `keep_alpha`:
    sources with transparency are written RGBA, their alpha beside the composited colours."""
    by_source: dict[Path, list[Prepared]] = {}
    for item in items:
        by_source.setdefault(item.source.path, []).append(item)
    for src, prepared in by_source.items():
        full, alpha = flatten_with_alpha(src, background)
        for item in prepared:
            im = _sized(full, item)
            if keep_alpha and alpha is not None:
                im = im.copy()
                im.putalpha(_sized(alpha, item))
            with atomic_path(out_dir / item.folder / item.name) as tmp:
                im.save(tmp, format="PNG")
    remove_stale(out_dir, {(i.folder, i.name) for i in items}, ".png", remove_dirs=True)


def _sized(im: Image.Image, item: Prepared) -> Image.Image:
    if im.size == (item.width, item.height):
        return im
    return im.resize((item.width, item.height), Image.Resampling.LANCZOS, reducing_gap=3.0)


def remove_stale(out_dir: Path, keep: set[tuple[str, str]], suffix: str, remove_dirs: bool = False) -> None:
    """Delete `suffix` files (and with remove_dirs, whole folders) that the plan no longer has."""
    if not out_dir.is_dir():
        return
    folders = {f for f, _ in keep}
    for folder in out_dir.iterdir():
        if not folder.is_dir():
            continue
        if folder.name not in folders:
            if remove_dirs:
                shutil.rmtree(folder)
            continue
        for file in folder.iterdir():
            if file.suffix == suffix and (folder.name, file.name) not in keep:
                file.unlink()
