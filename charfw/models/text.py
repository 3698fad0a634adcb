"""Text conditioning as sd-scripts computes it, for training and sampling alike (the family's
conditioning is described in charfw.train.conditioning).
"""

from __future__ import annotations

import torch

MAX_TOKENS = 77  # CLIP's context: 75 tokens + BOS/EOS, what sd-scripts uses by default


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                     return_tensors="pt").input_ids


def final_layer_norm(text_encoder):
    return getattr(text_encoder, "text_model", text_encoder).final_layer_norm


def encode_text(text_encoder, input_ids: torch.Tensor, clip_skip: int) -> torch.Tensor:
    """SD1.5's context: last layer (clip_skip 1) or hidden_states[-clip_skip] + final LN."""
    out = text_encoder(input_ids, output_hidden_states=clip_skip > 1, return_dict=True)
    if clip_skip <= 1:
        return out.last_hidden_state
    return final_layer_norm(text_encoder)(out.hidden_states[-clip_skip])


def encode_sdxl(te1, te2, ids1: torch.Tensor, ids2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL's (context, pooled): penultimate states of both encoders side by side, bigG's projected EOS."""
    h1 = te1(ids1, output_hidden_states=True, return_dict=True).hidden_states[-2]
    out2 = te2(ids2, output_hidden_states=True, return_dict=True)
    context = torch.cat([h1, out2.hidden_states[-2].to(h1.dtype)], dim=-1)
    return context, out2.text_embeds
