"""Empty (meta-device) models of a shipped architecture, and their single-file checkpoint names."""

from __future__ import annotations

from math import prod

import torch

from charfw.families import of_config
from charfw.models import keymap, openclip
from charfw.models.configs import arch_config, parts


def empty_models(arch: str) -> dict:
    """part name -> model with parameters on the meta device (shapes and names only, no memory).

    Parts: unet (UNet2DConditionModel), vae (AutoencoderKL), text_encoder (CLIPTextModel) and,
    for SDXL, text_encoder_2 (CLIPTextModelWithProjection).
    """
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with init_empty_weights():
        models = {
            "unet": UNet2DConditionModel.from_config(arch_config(arch, "unet")),
            "vae": AutoencoderKL.from_config(arch_config(arch, "vae")),
            "text_encoder": CLIPTextModel(CLIPTextConfig.from_dict(arch_config(arch, "text_encoder"))),
        }
        if "text_encoder_2" in parts(arch):
            models["text_encoder_2"] = CLIPTextModelWithProjection(
                CLIPTextConfig.from_dict(arch_config(arch, "text_encoder_2")))
    return models


def te_is_flat(text_encoder) -> bool:
    """True when CLIPTextModel has no `text_model` wrapper (transformers >= 5.6)."""
    # Look at registered children, not hasattr: callers may add plain attributes.
    return "text_model" not in dict(text_encoder.named_children())


def ldm_names(models: dict, arch: str, vae_prefix: str = keymap.VAE_PREFIX) -> dict[str, dict[str, str]]:
    """Per part: its state-dict key -> the key of the same tensor in a single-file checkpoint.

    Not for text_encoder_2, whose tensors are reshaped on the way (charfw.models.openclip).
    """
    unet, vae, te = models["unet"], models["vae"], models["text_encoder"]
    return {
        "unet": keymap.unet_to_ldm(unet.state_dict().keys(), unet.config),
        "vae": keymap.vae_to_ldm(vae.state_dict().keys(), vae.config, vae_prefix),
        "text_encoder": keymap.te_to_ldm(te.state_dict().keys(), te_is_flat(te), of_config(arch).text_encoder_prefix),
    }


def te2_canonical(key: str) -> str:
    """CLIPTextModelWithProjection key as charfw.models.openclip spells it (`text_model.*`, `text_projection.*`)."""
    return key if key.startswith(("text_model.", "text_projection.")) else "text_model." + key


def checkpoint_tensors(models: dict[str, dict[str, torch.Tensor]], arch: str,
                       names: dict[str, dict[str, str]]) -> dict[str, torch.Tensor]:
    """Per-part state dicts -> one single-file checkpoint's tensors (LDM/OpenCLIP layout)."""
    out: dict[str, torch.Tensor] = {}
    for part in ("unet", "vae", "text_encoder"):
        for key, t in models[part].items():
            ldm = names[part][key]
            if part == "vae" and ".mid.attn_1." in ldm and t.dim() == 2:
                t = t[:, :, None, None]    # LDM stores the VAE attention projections as 1x1 convs
            out[ldm] = t
    if "text_encoder_2" in models:
        layers = arch_config(arch, "text_encoder_2")["num_hidden_layers"]
        out.update(openclip.to_openclip({te2_canonical(k): v for k, v in models["text_encoder_2"].items()}, layers))
    return out


def fit(tensor: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor | None:
    """`tensor` in `shape`, allowing only 1x1-conv <-> linear (trailing 1s); None if it does not fit."""
    if tuple(tensor.shape) == tuple(shape):
        return tensor
    strip = lambda s: tuple(s[:2]) if len(s) > 2 and all(d == 1 for d in s[2:]) else tuple(s)  # noqa: E731
    if tensor.numel() == prod(shape) and strip(tensor.shape) == strip(shape):
        return tensor.reshape(shape)
    return None
