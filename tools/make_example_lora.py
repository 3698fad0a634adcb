"""Write the example workspace's "trained elsewhere" LoRA: characters/lora/krnksf_tyankps.safetensors.

It stands for a group LoRA trained with kohya sd-scripts on a real SD1.5 checkpoint: the full
SD1.5 plain-LoRA key set (264 modules) with sd-scripts' metadata, at rank 4 so the file stays
small. Each module's singular values decay (1, 1/2, 1/20, 1/100 of a per-module scale) so the
default compression (sv_ratio 16) has something to cut. Deterministic: rerunning gives the
same tensors and metadata (safetensors orders header keys freely).

    python tools/make_example_lora.py
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from charfw.lora.io import save_lora
from charfw.lora.keys import lora_module_specs
from charfw.lora.modules import make_module

RANK, ALPHA = 4, 2.0
SPECTRUM = torch.tensor([1.0, 0.5, 0.05, 0.01])
OUT = Path(__file__).resolve().parents[1] / "characters" / "lora" / "krnksf_tyankps.safetensors"


def module_tensors(spec, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """up @ down with orthonormal factors and the SPECTRUM as singular values."""
    fan_in = spec.in_dim * spec.kernel * spec.kernel
    u, _ = torch.linalg.qr(torch.randn(spec.out_dim, RANK, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(fan_in, RANK, generator=gen))
    scale = 0.05 * torch.rand(1, generator=gen).item() + 0.01
    s = (SPECTRUM * scale * math.sqrt(RANK / ALPHA)).sqrt()
    up, down = u * s, (v * s).T
    if spec.conv:
        up, down = up[:, :, None, None], down.reshape(RANK, spec.in_dim, spec.kernel, spec.kernel)
    return {"lora_up.weight": up.half(), "lora_down.weight": down.half(), "alpha": torch.tensor(ALPHA).half()}


def main() -> None:
    gen = torch.Generator().manual_seed(31337)
    specs = lora_module_specs("sd15", conv3x3=False)
    modules = [make_module(name, module_tensors(spec, gen)) for name, spec in sorted(specs.items())]
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(RANK),
        "ss_network_alpha": str(ALPHA),
        "ss_network_args": json.dumps({}),
        "ss_output_name": "krnksf_tyankps-Lora1x1A50p-AdamW8-4-100-1600",
        "ss_max_train_steps": "1600",
        "ss_learning_rate": "0.0001",
        "ss_text_encoder_lr": "4.4e-05",
        "ss_clip_skip": "2",
        "ss_seed": "31337",
        "ss_base_model_version": "sd_v1",
        "ss_training_comment": "charfw example: synthetic weights standing for an sd-scripts run",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-v1/lora",
        "modelspec.title": "krnksf_tyankps",
        "modelspec.trigger_phrase": "krnksf, krnk, tyankps, tyank",
    }
    save_lora(OUT, modules, metadata)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.1f} MB, {len(modules)} modules)")


if __name__ == "__main__":
    main()
