"""Block maps, block-weight presets and the weight-spec parser (docs/rules.md §8).

Blocks follow the LoRA Block Weight convention: SD1.5 has 26 blocks
(BASE, IN00..IN11, M00, OUT00..OUT11), SDXL 20 (BASE, IN00..IN08, M00, OUT00..OUT08).
BASE is every text-encoder module. A U-Net module's block comes from its name:

- diffusers-style: down block i, resnet/attention j -> IN(1+3i+j); its downsampler
  -> IN(3+3i); mid block -> M00; up block i, resnet/attention j -> OUT(3i+j); its
  upsampler -> OUT(3i+2); conv_in -> IN00;
- LDM-style (SDXL kohya files): input_blocks_N -> INnn, middle_block -> M00,
  output_blocks_N -> OUTnn.

Modules outside every block (conv_out, time embedding, ...) get None and keep weight 1.

Weight specs (`parse_weights`), one string, whitespace ignored:

- a preset name: `FACE`, `OUTALL`, or a user preset (user presets shadow built-ins);
- a list of 26/17 values (SD1.5) or 20/12 values (SDXL) in block order; the short
  lists name only the blocks LoRA Block Weight lists and the rest are 0;
- `NAME=v,...` by block name (`IN04=0.5,OUT03=0`, `MID` = `M00`), others 1;
- a preset followed by `NAME=v` overrides (`FACE,OUT03=0.5`).

Presets with LoRA Block Weight's names are LBW's own lists: its 17 values on SD1.5, so
ALL and ALL0.5 set the blocks the short list lacks (a C3Lier file's IN00, the samplers
IN03/IN06/IN09, IN10/IN11, OUT00..OUT02) to 0, exactly as LBW applies them. The SDXL
versions (12 values) keep each preset's meaning (shallow = high-resolution levels, deep =
low). charfw's own FULL and HALF are uniform over all 26/20 blocks: FULL leaves a file
unchanged. The seed's FACE and BODY on SDXL are its SD1.5 lists at the same resolution
levels (charfw/families/sdxl.py).
"""

from __future__ import annotations

import math
import re
from functools import cache
from typing import Iterable, Mapping, Sequence

from charfw.errors import CharfwError
from charfw.families.family import Family

ALIASES = {"MID": "M00"}


@cache
def builtin_presets(family: Family) -> dict[str, list[float]]:
    """Built-in presets by name: LBW's (short lists), charfw's FULL/HALF and the family's own."""
    layout = family.blocks

    def on(*groups: Iterable[str]) -> list[float]:
        chosen = {b for g in groups for b in g}
        return [1.0 if b in chosen else 0.0 for b in layout.short]

    ins, outs = (*layout.shallow_in, *layout.deep_in), (*layout.deep_out, *layout.shallow_out)
    n = len(layout.short)
    return {
        "NONE": [0.0] * n,
        "ALL": [1.0] * n,     # LBW's: the blocks its list lacks are 0
        "ALL0.5": [0.5] * n,
        "INS": on(["BASE"], layout.shallow_in),
        "IND": on(["BASE"], layout.deep_in),
        "INALL": on(["BASE"], ins),
        "MIDD": on(["BASE"], layout.deep_in, ["M00"], layout.deep_out),
        "OUTD": on(["BASE"], layout.deep_out),
        "OUTS": on(["BASE"], layout.shallow_out),
        "OUTALL": on(["BASE"], outs),
        # charfw's own: every block, including those LBW's short lists lack
        "FULL": [1.0] * len(layout.blocks),
        "HALF": [0.5] * len(layout.blocks),
        **{name: [float(v) for v in values.split(",")] for name, values in layout.own.items()},
    }


# ---- module name -> block -------------------------------------------------------------

_TE = re.compile(r"^lora_te[12]?_")
_BLOCK_PATTERNS = [  # diffusers-style names first, then LDM-style
    (re.compile(r"down_blocks_(\d+)_(?:resnets|attentions)_(\d+)_"), lambda i, j: f"IN{1 + 3 * i + j:02d}"),
    (re.compile(r"down_blocks_(\d+)_downsamplers_0_"), lambda i: f"IN{3 + 3 * i:02d}"),
    (re.compile(r"up_blocks_(\d+)_(?:resnets|attentions)_(\d+)_"), lambda i, j: f"OUT{3 * i + j:02d}"),
    (re.compile(r"up_blocks_(\d+)_upsamplers_0_"), lambda i: f"OUT{3 * i + 2:02d}"),
    (re.compile(r"input_blocks_(\d+)_"), lambda n: f"IN{n:02d}"),
    (re.compile(r"output_blocks_(\d+)_"), lambda n: f"OUT{n:02d}"),
    (re.compile(r"(?:mid_block|middle_block)_"), lambda: "M00"),
    (re.compile(r"conv_in_"), lambda: "IN00"),
]


def block_of(name: str, family: Family | None = None) -> str | None:
    """The block of one kohya module name, or None for modules outside every block.

    With `family`, a block the family does not have is an error (wrong --arch).
    """
    if _TE.match(name):
        return "BASE"
    if not name.startswith("lora_unet_"):
        return None
    rest = name[len("lora_unet_"):] + "_"
    for pattern, make in _BLOCK_PATTERNS:
        m = pattern.match(rest)
        if m:
            block = make(*(int(g) for g in m.groups()))
            if family and block not in family.blocks.blocks:
                raise CharfwError(f"module maps to block {block}, which {family.name} does not have "
                                  "(wrong architecture?)", field=name)
            return block
    return None


# ---- weight specs ------------------------------------------------------------------------

def _number(tok: str, where: str) -> float:
    try:
        v = float(tok)
    except ValueError:
        raise CharfwError(f"{tok!r} is not a number", field=where) from None
    if not math.isfinite(v):
        raise CharfwError(f"{tok!r} is not a finite number", field=where)
    return v


def expand(values: Sequence[float], family: Family, where: str = "weights") -> dict[str, float]:
    """A full or short value list -> {block: weight} over all blocks of `family`."""
    full, short = family.blocks.blocks, family.blocks.short
    if len(values) == len(full):
        return dict(zip(full, map(float, values)))
    if len(values) == len(short):
        out = dict.fromkeys(full, 0.0)
        out.update(zip(short, map(float, values)))
        return out
    raise CharfwError(f"{len(values)} values given; {family.name} takes {len(full)} or {len(short)}", field=where)


def _block_name(tok: str, family: Family, where: str) -> str:
    name = ALIASES.get(tok.upper(), tok.upper())
    if name not in family.blocks.blocks:
        raise CharfwError(f"unknown block {tok!r}; {family.name} blocks are {', '.join(family.blocks.blocks)}",
                          field=where)
    return name


def parse_weights(spec: str | Sequence[float] | Mapping[str, float], family: Family,
                  presets: Mapping[str, str | Sequence[float]] | None = None,
                  _seen: tuple[str, ...] = ()) -> dict[str, float]:
    """Turn a weight spec (see module docstring) into {block: weight} for every block."""
    presets = presets or {}
    if isinstance(spec, Mapping):
        out = dict.fromkeys(family.blocks.blocks, 1.0)
        for k, v in spec.items():
            out[_block_name(str(k), family, "weights")] = _number(str(v), str(k))
        return out
    if not isinstance(spec, str):
        return expand([_number(str(v), "weights") for v in spec], family)

    tokens = [t for t in re.sub(r"\s+", "", spec).split(",") if t]
    if not tokens:
        raise CharfwError("empty block weights")
    head, rest = tokens[0], tokens[1:]
    if "=" not in head and not _is_number(head):
        base = _resolve_preset(head, family, presets, _seen)
        if any("=" not in t for t in rest):
            raise CharfwError(f"after preset {head} only NAME=value overrides may follow", field=spec)
    elif all(_is_number(t) for t in tokens):
        return expand([_number(t, "weights") for t in tokens], family)
    else:
        base, rest = dict.fromkeys(family.blocks.blocks, 1.0), tokens
    for t in rest:
        name, sep, value = t.partition("=")
        if not sep:
            raise CharfwError(f"{t!r}: mix of values and NAME=value; use one form", field="weights")
        base[_block_name(name, family, t)] = _number(value, t)
    return base


def _is_number(tok: str) -> bool:
    try:
        float(tok)
        return True
    except ValueError:
        return False


def _resolve_preset(name: str, family: Family, presets: Mapping[str, str | Sequence[float]],
                    seen: tuple[str, ...]) -> dict[str, float]:
    if name in seen:
        raise CharfwError(f"preset {name} refers to itself", field=" -> ".join((*seen, name)))
    if name in presets:
        return parse_weights(presets[name], family, presets, (*seen, name))
    key = name.upper()
    builtin = builtin_presets(family)
    if key in builtin:
        return expand(builtin[key], family)
    known = sorted({*presets, *builtin})
    raise CharfwError(f"unknown preset {name!r}; known: {', '.join(known)}")


def format_weights(weights: Mapping[str, float], family: Family) -> str:
    """The canonical 26/20-value list, as recorded in metadata."""
    return ",".join(f"{weights[b]:g}" for b in family.blocks.blocks)


def parse_preset_lines(text: str, file: str | None = None) -> dict[str, str]:
    """User presets in LoRA Block Weight's lbwpresets.txt form: `NAME:v,v,...` per line, # comments."""
    presets = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, values = line.partition(":")
        if not sep or not name.strip() or not values.strip():
            raise CharfwError("expected NAME:weights", file=file, line=n)
        presets[name.strip()] = values.strip()
    return presets
