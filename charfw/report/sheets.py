"""Contact sheets: an image set's view-code grid as one PNG, thumbnails on the prepared background."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from charfw.dataset.images import flatten
from charfw.fsutil import atomic_path
from charfw.report.grid import Cell

THUMB = 128
LABEL = 18
PAD = 6
COLORS = {"present": (60, 60, 60), "mirrored": (40, 110, 200), "missing": (210, 60, 60)}


def render_sheet(rows: list[list[Cell]], background: tuple[int, int, int], out: Path) -> None:
    """Rows pitch 0-2 x columns yaw 0-7; each cell captioned with its code; missing cells crossed out
    in red, mirrored ones (symmetric: covered by flipping) framed in blue and labelled `flip`."""
    cols = max(len(r) for r in rows)
    cell_w, cell_h = THUMB + 2 * PAD, THUMB + LABEL + 2 * PAD
    sheet = Image.new("RGB", (cols * cell_w, len(rows) * cell_h), (245, 245, 245))
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            x, y = c * cell_w + PAD, r * cell_h + PAD
            box = (x, y, x + THUMB - 1, y + THUMB - 1)
            color = COLORS[cell.state]
            if cell.source is None:
                draw.rectangle(box, fill=(255, 235, 235), outline=color, width=2)
                draw.line(box, fill=color, width=2)
                draw.line((box[0], box[3], box[2], box[1]), fill=color, width=2)
            else:
                thumb = _thumbnail(cell.source, background, flip=cell.state == "mirrored")
                sheet.paste(thumb, (x + (THUMB - thumb.width) // 2, y + (THUMB - thumb.height) // 2))
                draw.rectangle(box, outline=color, width=3 if cell.state == "mirrored" else 1)
            text = cell.code + (" flip" if cell.state == "mirrored" else "") + (
                f" x{cell.count}" if cell.count > 1 else "")
            draw.text((x + 2, y + THUMB + 3), text, fill=color)
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")


def _thumbnail(path: Path, background: tuple[int, int, int], flip: bool) -> Image.Image:
    image = flatten(path, background)
    image.thumbnail((THUMB, THUMB), Image.Resampling.LANCZOS)
    return ImageOps.mirror(image) if flip else image
