"""Block-weight merge ("bake"): multiply each module's ΔW by its block's weight (docs/rules.md §8).

Nothing is rounded that need not be. Where every loader reads the LoRA modules' (LoRA, C3Lier,
LoCon) alphas alike (one rank for all, and an alpha on all or none: `alphas_read_alike`), each
keeps its alpha: a module at weight 1 is copied bit for bit, a power-of-two weight (±2^k: -1,
0.5, 2 ...) multiplies one factor, exact wherever no value loses a bit in the file's dtype
(checked; `down` first, as a trained `up` is tiny), and any other weight is split over both
factors, balanced and computed in fp32 (`modules.folded`), to the dtype's own rounding.
Otherwise (ranks that differ per module, whose alphas diffusers' kohya converter would let PEFT
ignore) w and the alpha/rank scale are folded into both factors and the alpha left out, so
every loader applies the same ΔW (alpha = rank). LoHa/LoKr
scale the one factor ΔW is linear in (`Module.merge_key`), in fp32. Weight 0 drops the module
with all its tensors. DoRA normalizes W + ΔW afterwards, so a DoRA module is only exactly
scalable by 0 or 1: other weights are refused.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import torch

from charfw.errors import CharfwError
from charfw.families import Family, from_lora
from charfw.lora.blocks import block_of, format_weights, parse_weights
from charfw.lora.io import LoraReader, save_lora
from charfw.lora.metadata import record_merge, record_ranks
from charfw.lora.modules import Module, folded


def scale_module(m: Module, w: float, keep_alpha: bool = False) -> Module | None:
    """The module with ΔW multiplied by w; None when w == 0 (drop it). `keep_alpha`: every loader reads
    the file's alphas alike (`alphas_read_alike`), so a LoRA module keeps its alpha and is scaled exactly
    where it can be."""
    if w == 0:
        return None
    if m.dora and w != 1:
        raise CharfwError(f"DoRA module cannot be scaled exactly by {w:g} (only 0 or 1); "
                          "set its block to 0 or 1", field=m.name)
    if m.kind == "lora":
        if not keep_alpha:
            return folded(m, w)
        exact = exactly_scaled(m, w)
        return exact if exact is not None else folded(m, w, keep_alpha=True)
    if w == 1:
        return m
    key = m.merge_key
    t = m.tensors[key]
    return Module(m.name, {**m.tensors, key: (t.float() * w).to(t.dtype)}, m.kind)


def exactly_scaled(m: Module, w: float) -> Module | None:
    """A LoRA module times w with no value rounded: itself at 1; one factor times w for a power of two
    where every scaled value is exact in the factor's dtype; None where neither holds."""
    if w == 1:
        return m
    if math.frexp(abs(w))[0] != 0.5:    # not ±2^k
        return None
    for key in ("lora_down.weight", "lora_up.weight"):
        t = m.tensors[key]
        scaled = t * w
        if torch.isfinite(scaled).all() and torch.equal(scaled.double() / w, t.double()):
            return Module(m.name, {**m.tensors, key: scaled.contiguous()}, m.kind)
    return None


def alphas_read_alike(modules: Iterable[Module]) -> bool:
    """Whether every loader reads these LoRA modules' alphas alike: one rank for all, and an alpha
    on all or on none (diffusers gives a module without one the file's common alpha)."""
    lora = [m for m in modules if m.kind == "lora"]
    return len({m.rank for m in lora}) <= 1 and len({m.alpha is None for m in lora}) <= 1


def apply_block_weights(modules: Iterable[Module], weights: Mapping[str, float], family: Family) -> Iterator[Module]:
    """Scale every module by its block's weight; modules outside blocks keep weight 1."""
    modules = list(modules)
    keep_alpha = alphas_read_alike(modules)
    for m in modules:
        block = block_of(m.name, family)
        try:
            scaled = scale_module(m, 1.0 if block is None else weights[block], keep_alpha)
        except CharfwError as exc:
            raise CharfwError(f"{exc.message} (block {block})", field=exc.field) from None
        if scaled is not None:
            yield scaled


def merge_file(src: str | Path, dst: str | Path, weights: str | Sequence[float] | Mapping[str, float],
               presets: Mapping[str, str | Sequence[float]] | None = None,
               family: Family | str | None = None) -> dict:
    """Bake block weights into `src`, writing `dst` atomically. Returns a small report.

    `weights` is a spec string (preset name, value list, NAME=v,...), a value list, or a
    {block: weight} mapping; `presets` are user presets by name; `family` overrides detection.
    """
    with LoraReader(src) as reader:
        try:
            family = from_lora(reader.names, family)
            table = parse_weights(weights, family, presets)
            spec = weights if isinstance(weights, str) else format_weights(table, family)
            kept = list(apply_block_weights(reader, table, family))
        except CharfwError as exc:
            raise CharfwError(exc.message, file=src, field=exc.field) from None
        metadata = dict(reader.metadata)
        total = len(reader.names)
        names = list(reader.names)
    if not kept:
        raise CharfwError(f"block weights {format_weights(table, family)} drop every module of this LoRA "
                          f"(its modules are in blocks {', '.join(_blocks_present(names, family))})", file=src)
    record_merge(metadata, spec, family.name, format_weights(table, family))
    record_ranks(metadata, [m for m in kept if m.kind == "lora"])
    save_lora(dst, kept, metadata)
    return {"arch": family.name, "weights": table, "modules_in": total, "modules_out": len(kept)}


def merge_suffix(weights: object) -> str:
    """File-name suffix for a merge: -FACE for a plain preset name, else -BW."""
    if isinstance(weights, str) and re.fullmatch(r"[A-Za-z_][\w.]*", weights.strip()):
        return f"-{weights.strip()}"
    return "-BW"


def _blocks_present(names: list[str], family: Family) -> list[str]:
    present = {block_of(n, family) for n in names} - {None}
    return [b for b in family.blocks.blocks if b in present]
