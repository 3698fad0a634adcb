"""`charfw new`: a character folder a user only has to fill with images."""

from __future__ import annotations

import re
from pathlib import Path

from charfw.config.models import KEYWORD
from charfw.errors import CharfwError
from charfw.fsutil import write_text
from charfw.rules.viewcode import PITCH_NAMES, YAW_NAMES, required_yaws
from charfw.workspace import CHARACTER_FILE

MANIFEST = """\
# {name}: see README "Character manifest" for every field.
keyword: {keyword}          # trigger word of the face LoRA
class: {class_word}             # class tokens = "{keyword} {class_word}"
symmetric: {symmetric}         # true: yaws 0-4 and flip augmentation; false: yaws 0-7, no flip
background: {background}        # transparent pixels become this colour (black for dark hair)
face:
  folder: face
{outfits}"""

OUTFIT = """\
  {name}:
    keyword: {keyword}
    init: face              # start from the face LoRA's weights
"""


def view_code_note(symmetric: bool) -> str:
    yaws = required_yaws(symmetric)
    lines = [
        "# View codes",
        "",
        "Name every image `<set><pitch><yaw>[suffix].png`, e.g. `f00.png`, `f01-alt.png`.",
        "",
        "- set: `f` face set (upper body, nude, plain background), `b` body set (full body, one outfit)",
        "- pitch: " + ", ".join(f"`{k}` {v}" for k, v in PITCH_NAMES.items()),
        "- yaw (45° steps counter-clockwise from the front): " + ", ".join(f"`{y}` {YAW_NAMES[y]}" for y in yaws),
        "",
        "This character is " + ("symmetric: yaws 0-4 are enough, images are also trained flipped."
                                if symmetric else "asymmetric: use yaws 0-7; images are never flipped."),
        "Transparent PNGs are composited onto the character's background colour.",
        "",
    ]
    return "\n".join(lines)


def new_character(characters_dir: Path, name: str, *, keyword: str | None = None, class_word: str = "girl",
                  symmetric: bool = True, background: str = "black",
                  outfits: dict[str, str] | None = None) -> Path:
    """Create characters/<name>/ with a manifest, a face folder and one folder per outfit."""
    keyword = keyword or name
    for value, what in ((name, "name"), (keyword, "keyword"), *((k, "outfit keyword") for k in (outfits or {}).values())):
        if not re.match(KEYWORD, value):
            raise CharfwError(f"invalid {what} {value!r}: use letters, digits, - and _")
    folder = characters_dir / name
    manifest = folder / CHARACTER_FILE
    if manifest.exists():
        raise CharfwError("character already exists", file=manifest)
    outfit_text = ("outfits:\n" + "".join(OUTFIT.format(name=o, keyword=k) for o, k in outfits.items())) if outfits else ""
    note = view_code_note(symmetric)
    for sub in ["face", *(outfits or {})]:
        (folder / sub).mkdir(parents=True, exist_ok=True)
        write_text(folder / sub / "VIEW_CODES.md", note)
    write_text(manifest, MANIFEST.format(name=name, keyword=keyword, class_word=class_word,
                                         symmetric=str(symmetric).lower(), background=background,
                                         outfits=outfit_text))
    return manifest
