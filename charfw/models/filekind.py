"""Which kind of weight file this is, from its tensor names alone (no torch, no tensors read).

One definition for the loader (before it reads any tensor) and `charfw check` (which reads
only a safetensors header), so both name a wrong file the same way.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Iterable

from charfw.errors import CharfwError
from charfw.families import UNET_PREFIX, Family, from_checkpoint

VAE_PREFIX = "first_stage_model."
LORA_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".hada_w1_a", ".hada_w2_a", ".lokr_w1", ".lokr_w1_a",
                 ".lokr_w2", ".lokr_w2_a")


def checkpoint_problem(keys: Iterable[str], family: Family) -> str | None:
    """Why these tensors are not a `family` single-file checkpoint, or None."""
    keys = list(keys)

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    found = from_checkpoint(keys)
    if found is not None and family.variant_of == found.name:
        return None   # a variant said of a file that does not mark itself (a v-prediction merge without v_pred)
    if found is not None and found is not family:
        return f"it is an {found.label} checkpoint ({found.checkpoint_evidence})"
    if found is family:
        return None
    if has("cond_stage_model.model."):
        return "it is an SD 2.x checkpoint (OpenCLIP text encoder)"
    if has("lora_unet_") or has("lora_te"):
        return "it is a LoRA file"
    if not has(UNET_PREFIX):
        if has("encoder.") or has(VAE_PREFIX):
            return "it looks like a VAE; give it as the VAE, not as the model"
        if has("down_blocks.") or has("text_model."):
            return "it looks like one component in diffusers layout; give the single-file checkpoint"
        return f"it has no U-Net tensors ({UNET_PREFIX}*)"
    return None


def vae_problem(keys: Iterable[str]) -> str | None:
    """Why these tensors are not a VAE in any layout the loader reads (LDM with or without a prefix,
    diffusers), or None."""
    if any(k.startswith("encoder.down") or ".encoder.down" in k for k in keys):
        return None
    return "it has no VAE encoder tensors (encoder.down.* or encoder.down_blocks.*)"


def lora_problem(keys: Iterable[str]) -> str | None:
    """Why these tensors are not a kohya/LyCORIS LoRA, or None."""
    keys = list(keys)
    if not keys:
        return "it holds no tensors"
    if not any(k.endswith(LORA_SUFFIXES) for k in keys):
        return "it has no LoRA weights (lora_up/lora_down, hada_*, lokr_*)"
    odd = next((k for k in keys if not k.startswith("lora_")), None)
    if odd is not None:
        return f"tensor {odd!r} is not a kohya LoRA key (lora_unet_*, lora_te*)"
    return None


def safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file (names, dtypes, shapes); tensors are not read."""
    try:
        with open(path, "rb") as f:
            size = struct.unpack("<Q", f.read(8))[0]
            if size > 100 * 2**20:
                raise ValueError("header larger than 100 MiB")
            header = json.loads(f.read(size))
        if not isinstance(header, dict):
            raise ValueError("header is not a table")
        return header
    except FileNotFoundError:
        raise CharfwError("file not found", file=path) from None
    except (OSError, struct.error, ValueError, UnicodeDecodeError) as exc:
        raise CharfwError(f"not a readable safetensors file ({exc})", file=path) from None
