"""Rendering with the embedded diffusers pipeline and a LoRA applied the way A1111 applies it:
W += strength x ΔW on every layer the LoRA names (then put back), so no adapter library is needed
and a block-weighted variant is just other ΔWs.

Deterministic on a CPU: each image's noise comes from its own generator seeded by its seed.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

import diffusers
import torch

from charfw.families import Family
from charfw.fsutil import atomic_path
from charfw.lora.modules import delta_matrix
from charfw.models.loader import load_model
from charfw.models.targets import target_layers
from charfw.models.text import encode_text, tokenize

SAMPLERS = {"euler_a": "EulerAncestralDiscreteScheduler", "ddim": "DDIMScheduler",
            "dpmpp_2m": "DPMSolverMultistepScheduler"}
_MODELS: dict = {}   # one loaded model per process (a build renders every target with the same one)


def load(model: str, vae: str | None, family: Family):
    key = (model, vae)
    if key not in _MODELS:

        _MODELS.clear()
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.float16 if device == "cuda" else torch.float32
        sd = load_model(model, vae, family=family, dtype=dtype, device=device)
        if device == "cuda":
            sd.vae.to(torch.float32)   # SDXL's VAE overflows in fp16
        _MODELS[key] = sd
    return _MODELS[key]


def lora_layers(sd) -> dict:
    """kohya module name -> the model's layer, for every module a LoRA of this family can hold."""
    return target_layers(sd, conv3x3=True, text_encoders=True)


@contextmanager
def applied(layers: dict, modules, strength: float, quiet: bool = False):
    """The modules' ΔW x strength added to their layers for the duration of the block."""

    saved, unfit, modules = {}, 0, list(modules)
    try:
        with torch.no_grad():
            for m in modules:
                layer = layers.get(m.name)
                delta = delta_matrix(m, torch.float32, layer.weight.device) if layer is not None else None
                if delta is None or delta.numel() != layer.weight.numel():
                    unfit += 1        # a LoRA made for another model (e.g. a declared file from a real checkpoint)
                    continue
                saved[m.name] = layer.weight.detach().clone()
                layer.weight += (strength * delta.reshape(layer.weight.shape)).to(layer.weight.dtype)
        if unfit and not quiet:
            print(f"charfw: warning: {unfit} of the LoRA's {len(modules)} modules have other shapes than this "
                  "model's layers (a LoRA made for another checkpoint, like the example's group LoRA from a "
                  "full-size SD1.5 on builtin:tiny-sd15); rendered without them", file=sys.stderr, flush=True)
        yield
    finally:
        with torch.no_grad():
            for name, weight in saved.items():
                layers[name].weight.copy_(weight)


def sample_scheduler(sd, sampler: str):
    """The sampler over the model's training schedule (its prediction type and betas); with zero terminal
    SNR the first step starts at the last timestep, pure noise ("trailing" spacing, as Lin et al. advise)."""
    spacing = {"timestep_spacing": "trailing"} if sd.family.zero_terminal_snr else {}
    return getattr(diffusers, SAMPLERS[sampler]).from_config(sd.noise_scheduler.config, **spacing)


def render(sd, prompts: list[str], seeds: list[int], settings, clip_skip: int = 2,
           embeds: list[dict] | None = None) -> list:
    """One PIL image per (prompt, seed), prompts outer. `embeds`: per prompt, the conditioning already
    encoded (the trainer's own, during training) instead of encoding the prompt here."""
    scheduler = sample_scheduler(sd, settings.sampler)
    pipe = sd.pipeline(scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    base = sd.family.sample_size
    width, height = settings.width or base, settings.height or base
    device = next(sd.unet.parameters()).device
    images = []
    for i, prompt in enumerate(prompts):
        kwargs = embeds[i] if embeds else prompt_kwargs(sd, prompt, settings, device, clip_skip)
        for seed in seeds:
            gen = torch.Generator("cpu").manual_seed(seed)
            latents = pipe(num_inference_steps=settings.steps, guidance_scale=settings.guidance, width=width,
                           height=height, generator=gen, output_type="latent", **kwargs).images
            images.append(decode(sd, pipe, latents))
    return images


@torch.no_grad()
def decode(sd, pipe, latents: torch.Tensor):
    """Latents -> PIL in the VAE's own dtype (fp32: SDXL's VAE overflows in fp16), whatever the U-Net's."""
    vae = sd.vae
    param = next(vae.parameters())
    image = vae.decode(latents.to(param.device, param.dtype) / vae.config.scaling_factor).sample
    return pipe.image_processor.postprocess(image.float(), output_type="pil")[0]


def prompt_kwargs(sd, prompt: str, settings, device, clip_skip: int) -> dict:
    """SD1.5: the context as training builds it (clip skip included), which diffusers' own prompt
    encoding cannot do here; SDXL: the pipeline's encoding (the penultimate layers, as training)."""
    if sd.family.pooled_conditioning:
        return {"prompt": prompt, "negative_prompt": settings.negative_prompt}
    with torch.no_grad():
        pos = encode_text(sd.text_encoder, tokenize(sd.tokenizer, [prompt]).to(device), clip_skip)
        neg = encode_text(sd.text_encoder, tokenize(sd.tokenizer, [settings.negative_prompt]).to(device), clip_skip)
    return {"prompt_embeds": pos, "negative_prompt_embeds": neg}


def save_png(image, path: Path) -> None:

    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def grid_image(cells: list[list], rows: list[str], cols: list[str]):
    """Rows x columns of images with their labels (the X/Y plot of A1111's script, as one PNG)."""
    from PIL import Image, ImageDraw

    w, h = cells[0][0].size
    label_w, label_h = 110, 20
    grid = Image.new("RGB", (label_w + w * len(cols), label_h + h * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for c, text in enumerate(cols):
        draw.text((label_w + c * w + 4, 4), text, fill=(0, 0, 0))
    for r, text in enumerate(rows):
        draw.text((4, label_h + r * h + h // 2 - 6), text, fill=(0, 0, 0))
        for c, image in enumerate(cells[r]):
            grid.paste(image, (label_w + c * w, label_h + r * h))
    return grid
