"""What the generate stage makes for a set: its view codes, each view's prompt and control images, and the
candidates' file names. Pure functions over the manifests (no torch)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from charfw.families import Family
from charfw.project import Generation
from charfw.rules.captions import view_prompt
from charfw.rules.viewcode import ViewCode, parse_view_code, required_yaws
from charfw.templates.render import template, template_size

CANDIDATES_DIR = "candidates"


def views(gen: Generation) -> list[ViewCode]:
    """The view codes to generate: the settings' list, else every pitch of the yaws the set needs."""
    codes = gen.settings.views or [f"{k}{p}{y}" for k in gen.kind for p in range(3)
                                   for y in required_yaws(gen.symmetric)]
    return [parse_view_code(c) for c in codes if c[0] in gen.kind]


def size(gen: Generation, family: Family, view: ViewCode) -> tuple[int, int]:
    """(width, height) of the first pass: the settings', else the view's set kind's template size."""
    w, h = template_size(view.set, family)
    return gen.settings.width or w, gen.settings.height or h


def prompt(gen: Generation, view: ViewCode, captions) -> str:
    return view_prompt(gen.settings.prompt, view, captions, gen.background)


def user_template(gen: Generation, view: ViewCode) -> Path | None:
    """The workspace's own template image for this view (it wins over charfw's), resolved from the manifest."""
    own = gen.settings.templates.get(view.code)
    return (gen.manifest.parent / own).resolve() if own else None


def control_images(gen: Generation, view: ViewCode, family: Family) -> list[Image.Image]:
    """One control image per ControlNet, at the first pass's size: the user's template, else charfw's of the
    ControlNet's kind."""
    target = size(gen, family, view)
    own = user_template(gen, view)
    out = []
    for use in gen.settings.controlnets:
        image = Image.open(own).convert("RGB") if own else template(view, use.kind, family)
        out.append(image if image.size == target else image.resize(target, Image.LANCZOS))
    return out


def candidate_name(view: ViewCode, n: int) -> str:
    return f"{view.code}-{n}.png"


def control_name(view: ViewCode, i: int) -> str:
    """The control image ControlNet i was given for this view (written beside the candidates)."""
    return f"{view.code}-control-{i}.png"


def candidate_dir(build_dir: Path, gen: Generation) -> Path:
    return build_dir / CANDIDATES_DIR / gen.set_id
