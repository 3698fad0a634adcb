"""Synthetic LoRA modules and files for the tests, written with safetensors directly."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from charfw.lora.keys import ModuleSpec

# Every algorithm variant the toolkit handles, by the name tests parametrize over.
VARIANTS = ["lora_linear", "c3lier_conv3x3", "locon_mid", "loha", "loha_tucker", "lokr_factored", "lokr_full"]


def _r(*shape, scale=0.1, gen=None):
    return torch.randn(*shape, generator=gen, dtype=torch.float64).float() * scale


def make_tensors(variant: str, out: int = 24, inp: int = 20, rank: int = 4, alpha: float = 2.0,
                 gen: torch.Generator | None = None, dora: bool = False) -> dict[str, torch.Tensor]:
    """Tensors (suffix -> tensor) of one module of `variant`, random, float32."""
    t: dict[str, torch.Tensor] = {}
    if variant == "lora_linear":
        t = {"lora_down.weight": _r(rank, inp, gen=gen), "lora_up.weight": _r(out, rank, gen=gen)}
    elif variant == "c3lier_conv3x3":
        t = {"lora_down.weight": _r(rank, inp, 3, 3, gen=gen), "lora_up.weight": _r(out, rank, 1, 1, gen=gen)}
    elif variant == "locon_mid":
        t = {"lora_down.weight": _r(rank, inp, 1, 1, gen=gen), "lora_mid.weight": _r(rank, rank, 3, 3, gen=gen),
             "lora_up.weight": _r(out, rank, 1, 1, gen=gen)}
    elif variant == "loha":
        t = {"hada_w1_a": _r(out, rank, gen=gen), "hada_w1_b": _r(rank, inp, gen=gen),
             "hada_w2_a": _r(out, rank, gen=gen), "hada_w2_b": _r(rank, inp, gen=gen)}
    elif variant == "loha_tucker":
        t = {"hada_w1_a": _r(rank, out, gen=gen), "hada_w1_b": _r(rank, inp, gen=gen),
             "hada_t1": _r(rank, rank, 3, 3, gen=gen),
             "hada_w2_a": _r(rank, out, gen=gen), "hada_w2_b": _r(rank, inp, gen=gen),
             "hada_t2": _r(rank, rank, 3, 3, gen=gen)}
    elif variant == "lokr_factored":  # out = 4*(out/4), in = 4*(in/4); both halves factored
        a, c = 4, 4
        t = {"lokr_w1_a": _r(a, rank, gen=gen), "lokr_w1_b": _r(rank, c, gen=gen),
             "lokr_w2_a": _r(out // a, rank, gen=gen), "lokr_w2_b": _r(rank, inp // c, gen=gen)}
    elif variant == "lokr_full":
        t = {"lokr_w1": _r(4, 4, gen=gen), "lokr_w2": _r(out // 4, inp // 4, gen=gen)}
    else:
        raise ValueError(variant)
    t["alpha"] = torch.tensor(alpha)
    if dora:
        t["dora_scale"] = _r(out, 1, gen=gen).abs() + 1
    return t


def lora_tensors(spec: ModuleSpec, rank: int, gen: torch.Generator | None = None, decay: float | None = None,
                 dtype=torch.float32, alpha: float | None = None) -> dict[str, torch.Tensor]:
    """A kohya LoRA module for a real layer shape; `decay` gives ΔW a geometric spectrum."""
    inp = spec.in_dim * spec.kernel * spec.kernel
    down = torch.randn(rank, inp, generator=gen) / inp ** 0.5
    up = torch.randn(spec.out_dim, rank, generator=gen) / rank ** 0.5
    if decay is not None:
        up = up * decay ** torch.arange(rank, dtype=torch.float32)
    if spec.conv:
        down, up = down.reshape(rank, spec.in_dim, spec.kernel, spec.kernel), up.reshape(spec.out_dim, rank, 1, 1)
    return {"lora_down.weight": down.to(dtype), "lora_up.weight": up.to(dtype),
            "alpha": torch.tensor(float(rank // 2 if alpha is None else alpha), dtype=dtype)}


def write(path: Path, modules: dict[str, dict[str, torch.Tensor]], metadata: dict[str, str] | None = None) -> Path:
    flat = {f"{name}.{suffix}": t.contiguous() for name, ts in modules.items() for suffix, t in ts.items()}
    save_file(flat, str(path), metadata or {})
    return path
