"""Empty (meta-device) SD1.5-topology models from the shipped configs, and their LDM names."""

from __future__ import annotations

from math import prod

import torch

from charfw.models import keymap
from charfw.models.configs import arch_config


def empty_models(arch: str):
    """(unet, vae, text_encoder) with parameters on the meta device: shapes and names only, no memory."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(arch_config(arch, "unet"))
        vae = AutoencoderKL.from_config(arch_config(arch, "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_dict(arch_config(arch, "text_encoder")))
    return unet, vae, text_encoder


def te_is_flat(text_encoder) -> bool:
    """True when CLIPTextModel has no `text_model` wrapper (transformers >= 5.6)."""
    # Look at registered children, not hasattr: callers may add plain attributes.
    return "text_model" not in dict(text_encoder.named_children())


def ldm_names(unet, vae, text_encoder, vae_prefix: str = keymap.VAE_PREFIX) -> tuple[dict, dict, dict]:
    """Per model: its state-dict key -> the key of the same tensor in a single-file LDM checkpoint."""
    return (
        keymap.unet_to_ldm(unet.state_dict().keys(), unet.config),
        keymap.vae_to_ldm(vae.state_dict().keys(), vae.config, vae_prefix),
        keymap.te_to_ldm(text_encoder.state_dict().keys(), te_is_flat(text_encoder)),
    )


def fit(tensor: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor | None:
    """`tensor` in `shape`, allowing only 1x1-conv <-> linear (trailing 1s); None if it does not fit."""
    if tuple(tensor.shape) == tuple(shape):
        return tensor
    strip = lambda s: tuple(s[:2]) if len(s) > 2 and all(d == 1 for d in s[2:]) else tuple(s)  # noqa: E731
    if tensor.numel() == prod(shape) and strip(tensor.shape) == strip(shape):
        return tensor.reshape(shape)
    return None
