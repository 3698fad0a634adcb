"""What is in a LoRA file, per block: module count, ranks, and how strong ΔW is.

The strength is the Frobenius norm of ΔW (scale included), computed without the dense
matrix where the algebra allows: ‖up·down‖_F = ‖R_up·R_downᵀ‖_F from the QR factors'
r×r triangles; ‖kron(A, B)‖_F = ‖A‖_F·‖B‖_F. LoHa's Hadamard product has no such
shortcut and is formed one module at a time. A block's norm is the root sum of squares
of its modules' norms. Output as a text table, a JSON-ready dict, or a PNG bar chart
(Pillow only).
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import torch

from charfw.errors import CharfwError
from charfw.families import Family, from_lora
from charfw.fsutil import atomic_path
from charfw.lora.blocks import block_of
from charfw.lora.io import LoraReader
from charfw.lora.metadata import summary
from charfw.lora.modules import Module, delta_matrix, lora_factors

OUTSIDE = "(outside blocks)"


def delta_norm(m: Module) -> float:
    """‖ΔW‖_F of one module, from its factors where possible."""
    if m.kind == "lora":
        up, down = lora_factors(m, torch.float64)
        core = torch.linalg.qr(up, mode="r").R @ torch.linalg.qr(down.T, mode="r").R.T
        return abs(m.scale) * float(torch.linalg.norm(core))
    t = {k: v.double() for k, v in m.tensors.items()}
    if m.kind == "lokr" and "lokr_t2" not in t:
        w1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"] @ t["lokr_w1_b"]
        w2 = t["lokr_w2"] if "lokr_w2" in t else t["lokr_w2_a"] @ t["lokr_w2_b"].reshape(t["lokr_w2_b"].shape[0], -1)
        return abs(m.scale) * float(torch.linalg.norm(w1) * torch.linalg.norm(w2))
    return float(torch.linalg.norm(delta_matrix(m, torch.float64)))


def inspect_file(path: str | Path, family: Family | str | None = None) -> dict:
    """Per-block summary of a LoRA file as a JSON-ready dict."""
    with LoraReader(path) as reader:
        try:
            family = from_lora(reader.names, family)
        except CharfwError:
            if family:
                raise
            family = None
        rows: dict[str, dict] = {}
        kinds: Counter = Counter()
        for m in reader:
            kinds[m.kind + ("+dora" if m.dora else "")] += 1
            block = block_of(m.name, family) or OUTSIDE
            row = rows.setdefault(block, {"modules": 0, "ranks": set(), "norm_sq": 0.0})
            row["modules"] += 1
            if m.rank:
                row["ranks"].add(m.rank)
            row["norm_sq"] += delta_norm(m) ** 2
        metadata = summary(reader.metadata)
    blocks = [{"block": b, "modules": rows[b]["modules"], "ranks": sorted(rows[b]["ranks"]),
               "norm": math.sqrt(rows[b]["norm_sq"])} for b in sorted(rows, key=_block_order)]
    return {"file": str(path), "arch": family and family.name, "modules": sum(kinds.values()), "kinds": dict(kinds),
            "blocks": blocks, "metadata": metadata}


def _block_order(block: str) -> tuple[int, int]:
    """LoRA Block Weight's order, whatever the family: BASE, IN00.., M00, OUT00.., then the rest."""
    kind, number = block.rstrip("0123456789"), block[len(block.rstrip("0123456789")):]
    rank = {"BASE": 0, "IN": 1, "M": 2, "OUT": 3}.get(kind, 4) if block != OUTSIDE else 5
    return rank, int(number or 0)


def format_table(report: dict) -> str:
    lines = [f"{report['file']}: {report['arch'] or 'unknown architecture'}, {report['modules']} modules "
             f"({', '.join(f'{n} {k}' for k, n in report['kinds'].items())})",
             f"{'block':<17}{'modules':>8}  {'ranks':<12}{'‖ΔW‖_F':>10}"]
    for row in report["blocks"]:
        ranks = row["ranks"]
        rank_txt = "-" if not ranks else str(ranks[0]) if len(ranks) == 1 else f"{ranks[0]}..{ranks[-1]}"
        lines.append(f"{row['block']:<17}{row['modules']:>8}  {rank_txt:<12}{row['norm']:>10.4g}")
    lines += [f"{k}: {v}" for k, v in report["metadata"].items()]
    return "\n".join(lines)


def plot_blocks(report: dict, out: str | Path) -> None:
    """A PNG bar chart of per-block ΔW norms, written atomically."""
    from PIL import Image, ImageDraw, ImageFont

    rows = report["blocks"]
    if not rows:
        raise CharfwError("no modules to plot", file=report["file"])
    bar, gap, left, top, plot_h, label_h = 26, 8, 60, 30, 260, 56
    width = left + len(rows) * (bar + gap) + 20
    img = Image.new("RGB", (width, top + plot_h + label_h), "white")
    draw, font = ImageDraw.Draw(img), ImageFont.load_default()
    peak = max(r["norm"] for r in rows) or 1.0
    base_y = top + plot_h
    draw.text((left, 8), f"|dW|_F per block - {Path(report['file']).name}", fill="black", font=font)
    draw.line((left - 4, top, left - 4, base_y), fill="black")
    draw.line((left - 4, base_y, width - 10, base_y), fill="black")
    draw.text((4, top - 6), f"{peak:.3g}", fill="black", font=font)
    draw.text((4, base_y - 6), "0", fill="black", font=font)
    for i, row in enumerate(rows):
        x = left + i * (bar + gap)
        h = int(plot_h * row["norm"] / peak)
        draw.rectangle((x, base_y - h, x + bar, base_y), fill=(70, 110, 190))
        label = Image.new("RGB", (label_h - 6, bar), "white")
        ImageDraw.Draw(label).text((2, 6), row["block"], fill="black", font=font)
        img.paste(label.rotate(90, expand=True), (x, base_y + 4))
    with atomic_path(out) as tmp:
        img.save(tmp, format="PNG")
