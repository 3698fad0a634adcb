"""The model families charfw knows, one module each, and how a file tells which it is.

    from charfw.families import SD15, SDXL, family, from_checkpoint, from_lora
    family("sdxl") is SDXL

To add a family (or a variant: a v-prediction SDXL model), write a module building one
`Family` (see family.py for every field and sd15.py/sdxl.py as examples), add it to FAMILIES
below, and give it tests; nothing else names a family.
"""

from __future__ import annotations

import re
from typing import Iterable

from charfw.errors import CharfwError
from charfw.families.family import REGISTRY, Family
from charfw.families.sd15 import SD15
from charfw.families.sdxl import SDXL
from charfw.families.sdxl_vpred import SDXL_VPRED

FAMILIES: dict[str, Family] = REGISTRY   # by name, in the order detection tries them
FAMILIES.update((f.name, f) for f in (SD15, SDXL, SDXL_VPRED))
DEFAULT = SD15   # a workspace's when its model file cannot be read and `family:` is not set
UNET_PREFIX = "model.diffusion_model."
_SD2_TEXT_ENCODER = "cond_stage_model.model."   # OpenCLIP: SD 2.x, which charfw does not train


def family(name: str | Family) -> Family:
    """The family called `name` (a Family is returned as it is)."""
    if isinstance(name, Family):
        return name
    try:
        return FAMILIES[name]
    except KeyError:
        raise CharfwError(f"unknown model family {name!r}; use one of {', '.join(FAMILIES)}") from None


def base(fam: Family) -> Family:
    """The family a variant belongs to (itself for a base family): whose LoRA files it makes."""
    return FAMILIES[fam.variant_of] if fam.variant_of else fam


def of_config(config: str) -> Family:
    """The base family of a shipped config set ('tiny-sdxl' -> SDXL)."""
    found = next((f for f in FAMILIES.values() if config in f.configs and not f.variant_of), None)
    if found is None:
        raise CharfwError(f"unknown architecture {config!r}; known: "
                          f"{', '.join(c for f in FAMILIES.values() for c in f.configs)}")
    return found


def of_builtin(name: str) -> Family | None:
    """The family of a built-in test model ('tiny-sd15' -> SD15), None for an unknown name."""
    return next((f for f in FAMILIES.values() if f.builtin_model == name), None)


def from_checkpoint(keys: Iterable[str]) -> Family | None:
    """The family of a single-file Stable Diffusion checkpoint from its tensor names; None for
    anything else (no U-Net, SD 2.x). A checkpoint with no family's marker is the family without one."""
    keys = list(keys)
    if not any(k.startswith(UNET_PREFIX) for k in keys):
        return None
    marked = [f for f in FAMILIES.values() if f.checkpoint_marker and any(k.startswith(f.checkpoint_marker)
                                                                           for k in keys)]
    if marked:
        return _variant(marked[0], keys)
    if any(k.startswith(_SD2_TEXT_ENCODER) for k in keys):
        return None
    return _variant(next(f for f in FAMILIES.values() if f.checkpoint_marker is None), keys)


def _variant(fam: Family, keys: list[str]) -> Family:
    """The variant of `fam` whose flag tensor the checkpoint has, else `fam`."""
    return next((v for v in FAMILIES.values() if v.variant_of == fam.name and v.checkpoint_flag in keys), fam)


def from_lora(names: Iterable[str], override: str | Family | None = None) -> Family:
    """The family a kohya LoRA was trained for, from its module names; `override` wins (and is validated)."""
    if override:
        return family(override)
    names = list(names)
    found = [f for f in FAMILIES.values() if not f.variant_of and any(re.match(f.lora_marks, n) for n in names)]
    if len(found) == 1:
        return found[0]
    labels = [f.label for f in FAMILIES.values() if not f.variant_of]
    why = f"both {' and '.join(labels)} module names" if found else f"no module that tells {' from '.join(labels)}"
    options = " or ".join(f"--arch {f.name}" for f in FAMILIES.values() if not f.variant_of)
    raise CharfwError(f"cannot detect the architecture ({why}); pass {options}")
