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
levels (`sd15_to_sdxl`).
"""

from __future__ import annotations

import math
import re
from typing import Iterable, Mapping, Sequence

from charfw.errors import CharfwError

ARCH_NAMES = ("sd15", "sdxl")


def _ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i:02d}" for i in range(n)]


BLOCKS = {
    "sd15": ["BASE", *_ids("IN", 12), "M00", *_ids("OUT", 12)],
    "sdxl": ["BASE", *_ids("IN", 9), "M00", *_ids("OUT", 9)],
}
SHORT_BLOCKS = {
    "sd15": ["BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00", *_ids("OUT", 12)[3:]],
    "sdxl": ["BASE", "IN04", "IN05", "IN07", "IN08", "M00", *_ids("OUT", 6)],
}
ALIASES = {"MID": "M00"}


def _preset(arch: str, on: Iterable[str]) -> list[float]:
    on = set(on)
    return [1.0 if b in on else 0.0 for b in SHORT_BLOCKS[arch]]


# Which short-list blocks are shallow (high resolution) or deep, per architecture: the
# LoRA Block Weight presets are defined by these groups.
_GROUPS = {
    "sd15": dict(shallow_in=["IN01", "IN02", "IN04"], deep_in=["IN05", "IN07", "IN08"],
                 deep_out=_ids("OUT", 7)[3:], shallow_out=_ids("OUT", 12)[7:]),
    "sdxl": dict(shallow_in=["IN04", "IN05"], deep_in=["IN07", "IN08"],
                 deep_out=_ids("OUT", 3), shallow_out=_ids("OUT", 6)[3:]),
}


def _lbw_presets(arch: str) -> dict[str, list[float]]:
    """LoRA Block Weight's default presets, as short lists, for one architecture."""
    g = _GROUPS[arch]
    ins, outs = g["shallow_in"] + g["deep_in"], g["deep_out"] + g["shallow_out"]
    return {
        "NONE": [0.0] * len(SHORT_BLOCKS[arch]),
        "ALL": [1.0] * len(SHORT_BLOCKS[arch]),     # LBW's: the blocks its list lacks are 0
        "ALL0.5": [0.5] * len(SHORT_BLOCKS[arch]),
        "INS": _preset(arch, ["BASE", *g["shallow_in"]]),
        "IND": _preset(arch, ["BASE", *g["deep_in"]]),
        "INALL": _preset(arch, ["BASE", *ins]),
        "MIDD": _preset(arch, ["BASE", *g["deep_in"], "M00", *g["deep_out"]]),
        "OUTD": _preset(arch, ["BASE", *g["deep_out"]]),
        "OUTS": _preset(arch, ["BASE", *g["shallow_out"]]),
        "OUTALL": _preset(arch, ["BASE", *outs]),
    }


PRESETS: dict[str, dict[str, list[float]]] = {arch: _lbw_presets(arch) for arch in ARCH_NAMES}
for _arch in ARCH_NAMES:  # charfw's own: every block, including those LBW's short lists lack
    PRESETS[_arch]["FULL"] = [1.0] * len(BLOCKS[_arch])
    PRESETS[_arch]["HALF"] = [0.5] * len(BLOCKS[_arch])
PRESETS["sd15"]["FACE"] = [float(v) for v in "0,1,1,1,1,1,0,0,0,1,0,0,0,0,1,0,1,1,1,0,1,1,1,0,0,1".split(",")]
PRESETS["sd15"]["BODY"] = [float(v) for v in "0,1,1,1,0,1,0,0,0,1,0,0,0,0,0,0,1,1,1,1,1,1,1,0,0,1".split(",")]


def sd15_to_sdxl(values: Sequence[float]) -> list[float]:
    """A 26-value SD1.5 list as the 20 SDXL blocks at the same resolution levels.

    SDXL is SD1.5's U-Net without the lowest-resolution level (SD1.5's IN09..IN11 and
    OUT00..OUT02); every other block keeps its place: IN00..IN08 and M00 as they are, SDXL
    OUT00..OUT08 = SD1.5 OUT03..OUT11. The seed's FACE and BODY carry over to SDXL this way.
    """
    w = dict(zip(BLOCKS["sd15"], values))
    outs = [w[f"OUT{i:02d}"] for i in range(3, 12)]
    return [w["BASE"], *(w[f"IN{i:02d}"] for i in range(9)), w["M00"], *outs]


for _name in ("FACE", "BODY"):
    PRESETS["sdxl"][_name] = sd15_to_sdxl(PRESETS["sd15"][_name])


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


def block_of(name: str, arch: str | None = None) -> str | None:
    """The block of one kohya module name, or None for modules outside every block.

    With `arch`, a block the architecture does not have is an error (wrong --arch).
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
            if arch and block not in BLOCKS[arch]:
                raise CharfwError(f"module maps to block {block}, which {arch} does not have "
                                  "(wrong architecture?)", field=name)
            return block
    return None


# ---- architecture detection ----------------------------------------------------------

# Structural facts only one architecture has: SDXL's two text encoders, attention in the
# lowest-resolution up level, transformer depth > 1; SD1.5's single text encoder, attention
# at the highest resolution, a fourth level (down_blocks_3, IN09..IN11).
_SDXL_MARKS = re.compile(r"^lora_te[12]_|^lora_unet_(up_blocks_0_attentions|output_blocks_[0-2]_1_"
                         r"|.*transformer_blocks_[1-9])")
_SD15_MARKS = re.compile(r"^lora_te_|^lora_unet_(down_blocks_0_attentions|down_blocks_3_|up_blocks_3_"
                         r"|input_blocks_(?:[12]_1_|9_|1[01]_)|output_blocks_(?:9|1[01])_)")


def detect_arch(names: Iterable[str], override: str | None = None) -> str:
    """"sd15" or "sdxl" from the module names; `override` wins (and is validated)."""
    if override:
        if override not in ARCH_NAMES:
            raise CharfwError(f"unknown architecture {override!r}; use one of {', '.join(ARCH_NAMES)}")
        return override
    sdxl = sd15 = False
    for n in names:
        sdxl = sdxl or bool(_SDXL_MARKS.match(n))
        sd15 = sd15 or bool(_SD15_MARKS.match(n))
    if sdxl != sd15:
        return "sdxl" if sdxl else "sd15"
    why = "both SD1.5 and SDXL module names" if sdxl else "no module that tells SD1.5 from SDXL"
    raise CharfwError(f"cannot detect the architecture ({why}); pass --arch sd15 or --arch sdxl")


# ---- weight specs ------------------------------------------------------------------------

def _number(tok: str, where: str) -> float:
    try:
        v = float(tok)
    except ValueError:
        raise CharfwError(f"{tok!r} is not a number", field=where) from None
    if not math.isfinite(v):
        raise CharfwError(f"{tok!r} is not a finite number", field=where)
    return v


def expand(values: Sequence[float], arch: str, where: str = "weights") -> dict[str, float]:
    """A full or short value list -> {block: weight} over all blocks of `arch`."""
    full, short = BLOCKS[arch], SHORT_BLOCKS[arch]
    if len(values) == len(full):
        return dict(zip(full, map(float, values)))
    if len(values) == len(short):
        out = dict.fromkeys(full, 0.0)
        out.update(zip(short, map(float, values)))
        return out
    raise CharfwError(f"{len(values)} values given; {arch} takes {len(full)} or {len(short)}", field=where)


def _block_name(tok: str, arch: str, where: str) -> str:
    name = ALIASES.get(tok.upper(), tok.upper())
    if name not in BLOCKS[arch]:
        raise CharfwError(f"unknown block {tok!r}; {arch} blocks are {', '.join(BLOCKS[arch])}", field=where)
    return name


def parse_weights(spec: str | Sequence[float] | Mapping[str, float], arch: str,
                  presets: Mapping[str, str | Sequence[float]] | None = None,
                  _seen: tuple[str, ...] = ()) -> dict[str, float]:
    """Turn a weight spec (see module docstring) into {block: weight} for every block."""
    if arch not in ARCH_NAMES:
        raise CharfwError(f"unknown architecture {arch!r}")
    presets = presets or {}
    if isinstance(spec, Mapping):
        out = dict.fromkeys(BLOCKS[arch], 1.0)
        for k, v in spec.items():
            out[_block_name(str(k), arch, "weights")] = _number(str(v), str(k))
        return out
    if not isinstance(spec, str):
        return expand([_number(str(v), "weights") for v in spec], arch)

    tokens = [t for t in re.sub(r"\s+", "", spec).split(",") if t]
    if not tokens:
        raise CharfwError("empty block weights")
    head, rest = tokens[0], tokens[1:]
    if "=" not in head and not _is_number(head):
        base = _resolve_preset(head, arch, presets, _seen)
        if any("=" not in t for t in rest):
            raise CharfwError(f"after preset {head} only NAME=value overrides may follow", field=spec)
    elif all(_is_number(t) for t in tokens):
        return expand([_number(t, "weights") for t in tokens], arch)
    else:
        base, rest = dict.fromkeys(BLOCKS[arch], 1.0), tokens
    for t in rest:
        name, sep, value = t.partition("=")
        if not sep:
            raise CharfwError(f"{t!r}: mix of values and NAME=value; use one form", field="weights")
        base[_block_name(name, arch, t)] = _number(value, t)
    return base


def _is_number(tok: str) -> bool:
    try:
        float(tok)
        return True
    except ValueError:
        return False


def _resolve_preset(name: str, arch: str, presets: Mapping[str, str | Sequence[float]],
                    seen: tuple[str, ...]) -> dict[str, float]:
    if name in seen:
        raise CharfwError(f"preset {name} refers to itself", field=" -> ".join((*seen, name)))
    if name in presets:
        return parse_weights(presets[name], arch, presets, (*seen, name))
    key = name.upper()
    if key in PRESETS[arch]:
        return expand(PRESETS[arch][key], arch)
    known = sorted({*presets, *PRESETS[arch]})
    raise CharfwError(f"unknown preset {name!r}; known: {', '.join(known)}")


def format_weights(weights: Mapping[str, float], arch: str) -> str:
    """The canonical 26/20-value list, as recorded in metadata."""
    return ",".join(f"{weights[b]:g}" for b in BLOCKS[arch])


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
