"""Default sample prompts: the target's own captions at a few view codes, so the samples cover the
views the data covers (front, side and back of the face; front and side of the full body)."""

from __future__ import annotations

from charfw.config.models import SampleSettings
from charfw.project import Target
from charfw.rules.captions import caption
from charfw.rules.viewcode import parse_view_code

CODES = {"f": ("f00", "f02", "f04"), "b": ("b00", "b02")}


def sample_prompts(target: Target, settings: SampleSettings, template) -> list[str]:
    """The settings' prompts, or one caption per default view code of each kind of set the target has
    (its trigger words first, as training captions start with the set's keywords)."""
    if settings.prompts:
        return list(settings.prompts)
    kinds = sorted({sub.set.kind for sub in target.subsets}, key="fb".index)
    prompts = []
    for kind in kinds:
        for code in CODES[kind]:
            prompts.append(caption(list(target.trigger_words), parse_view_code(code), template))
    return prompts
