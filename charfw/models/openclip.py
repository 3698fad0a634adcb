"""SDXL's second text encoder (OpenCLIP ViT-bigG/14) between its checkpoint layout and transformers'.

A single-file SDXL checkpoint stores it the way OpenCLIP does, under
`conditioner.embedders.1.model.`: one fused `attn.in_proj_weight` (q, k, v stacked) per layer,
`ln_1`/`ln_2`/`mlp.c_fc`/`mlp.c_proj`, `positional_embedding`, `ln_final`, and a
`text_projection` applied as `x @ P` (transformers' Linear holds its transpose).
This is not a rename, so it has its own module: both directions, from the layer count alone.
"""

from __future__ import annotations

from typing import Callable

import torch

PREFIX = "conditioner.embedders.1.model."
_LAYER_LEAVES = {  # transformers (inside encoder.layers.N.) -> OpenCLIP (inside transformer.resblocks.N.)
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_TOP = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
}


def to_openclip(state: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """transformers CLIPTextModelWithProjection tensors -> checkpoint tensors (with PREFIX)."""
    out = {PREFIX + v: state[k] for k, v in _TOP.items()}
    out[PREFIX + "text_projection"] = state["text_projection.weight"].t().contiguous()
    for n in range(layers):
        hf, oc = f"text_model.encoder.layers.{n}.", f"{PREFIX}transformer.resblocks.{n}."
        for leaf in ("weight", "bias"):
            out[f"{oc}attn.in_proj_{leaf}"] = torch.cat(
                [state[f"{hf}self_attn.{x}_proj.{leaf}"] for x in "qkv"]).contiguous()
            for src, dst in _LAYER_LEAVES.items():
                out[f"{oc}{dst}.{leaf}"] = state[f"{hf}{src}.{leaf}"]
    return out


def from_openclip(get: Callable[[str], torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """Checkpoint tensors (read through `get(full key)`, KeyError when absent) -> transformers tensors."""
    out = {k: get(PREFIX + v) for k, v in _TOP.items()}
    out["text_projection.weight"] = get(PREFIX + "text_projection").t().contiguous()
    for n in range(layers):
        hf, oc = f"text_model.encoder.layers.{n}.", f"{PREFIX}transformer.resblocks.{n}."
        for leaf in ("weight", "bias"):
            for x, part in zip("qkv", get(f"{oc}attn.in_proj_{leaf}").chunk(3)):
                out[f"{hf}self_attn.{x}_proj.{leaf}"] = part.contiguous()
            for src, dst in _LAYER_LEAVES.items():
                out[f"{hf}{src}.{leaf}"] = get(f"{oc}{dst}.{leaf}")
    return out


def checkpoint_keys(layers: int) -> list[str]:
    """Every tensor name the checkpoint holds for this encoder (`logit_scale`, if present, is unused)."""
    return sorted(to_openclip(_Names(), layers))


class _Names(dict):
    """A stand-in state dict whose every tensor is a 0-size tensor: for listing names only."""

    def __missing__(self, key):
        return torch.empty(0)
