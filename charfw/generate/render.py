"""Candidates rendered with diffusers' ControlNet pipelines over the workspace's model (SD1.5 and SDXL).

Each candidate's noise comes from its own CPU generator seeded by its seed, so a candidate is the same
on every run of the same settings (on a CPU bit for bit). The optional second pass is image-to-image
at a larger size with the same ControlNets (the seed's high-res fix). Each PNG carries its settings in
A1111's `parameters` text chunk, so WebUIs and PNG-info tools read them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from charfw.families import Family
from charfw.fsutil import atomic_path
from charfw.generate.keying import key_out
from charfw.models.controlnet import UNION_MODES, load_controlnet, union_uses, write_random_controlnet
from charfw.rules.modelref import builtin_name, is_builtin
from charfw.sample.render import decode, load, prompt_kwargs, sample_scheduler

_CONTROLNETS: dict = {}   # one loaded copy per file per process


def controlnet_path(ref: str) -> Path:
    """A ControlNet reference as a file: builtin:tiny-sd15-controlnet (written to the cache on first use) or a
    path."""
    if not is_builtin(ref):
        return Path(ref)
    from charfw.families import FAMILIES
    from charfw.models.configs import default_cache_dir

    name = builtin_name(ref)
    builtins = {f"{f.configs[1]}-controlnet{tail}": (f.configs[1], layout) for f in FAMILIES.values()
                if not f.variant_of for tail, layout in (("", "ldm"), ("-union", "union"))
                if layout == "ldm" or f.pooled_conditioning}
    if name not in builtins:
        from charfw.errors import CharfwError
        known = ", ".join(f"builtin:{n}" for n in builtins)
        raise CharfwError(f"unknown builtin ControlNet {ref!r}; known: {known}", field="generate.controlnets")
    path = default_cache_dir() / "models" / f"{name}-s0.safetensors"
    if not path.is_file():
        arch, layout = builtins[name]
        write_random_controlnet(path, arch, layout=layout)
    return path


def controlnets(uses, family: Family, device: str, dtype: torch.dtype):
    models = []
    for use in uses:
        path = controlnet_path(use.model)
        key = (str(path), family.name, device, dtype)
        if key not in _CONTROLNETS:
            _CONTROLNETS[key] = load_controlnet(path, family, dtype, device)
        models.append(_CONTROLNETS[key])
    return models


def _pipelines(sd, nets, sampler: str, union: bool = False):
    import diffusers

    net = nets[0] if len(nets) == 1 or union else diffusers.MultiControlNetModel(nets)
    scheduler = sample_scheduler(sd, sampler)
    if sd.family.pooled_conditioning:
        parts = dict(vae=sd.vae, text_encoder=sd.text_encoder, text_encoder_2=sd.text_encoder_2,
                     tokenizer=sd.tokenizer, tokenizer_2=sd.tokenizer_2, unet=sd.unet, controlnet=net,
                     scheduler=scheduler)
        first, second = ((diffusers.StableDiffusionXLControlNetUnionPipeline,
                          diffusers.StableDiffusionXLControlNetUnionImg2ImgPipeline) if union else
                         (diffusers.StableDiffusionXLControlNetPipeline,
                          diffusers.StableDiffusionXLControlNetImg2ImgPipeline))
    else:
        parts = dict(vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer, unet=sd.unet,
                     controlnet=net, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                     requires_safety_checker=False)
        first, second = diffusers.StableDiffusionControlNetPipeline, diffusers.StableDiffusionControlNetImg2ImgPipeline
    pipes = first(**parts), second(**parts)
    for pipe in pipes:
        pipe.set_progress_bar_config(disable=True)
    return pipes


def parameters(prompt: str, settings, seed: int, size: tuple[int, int], model: str) -> str:
    """A1111's `parameters` text: prompt, negative prompt, then the settings on one line."""
    nets = ", ".join(f"ControlNet {i}: \"Model: {Path(u.model).name}, Module: {u.kind}, Weight: {u.weight:g}, "
                     f"Guidance Start: {u.start:g}, Guidance End: {u.end:g}\""
                     for i, u in enumerate(settings.controlnets))
    line = (f"Steps: {settings.steps}, Sampler: {settings.sampler}, CFG scale: {settings.guidance:g}, Seed: {seed}, "
            f"Size: {size[0]}x{size[1]}, Model: {Path(model).name}")
    if settings.hires:
        line += f", Denoising strength: {settings.hires.denoise:g}, Hires upscale: {settings.hires.scale:g}"
    return f"{prompt}\nNegative prompt: {settings.negative_prompt}\n{line}" + (f", {nets}" if nets else "")


@torch.no_grad()
def render_view(model: str, vae: str | None, family: Family, settings, prompt: str, controls: list[Image.Image],
                seeds: list[int], clip_skip: int = 2) -> list[Image.Image]:
    """One image per seed for one view."""
    sd = load(model, vae, family)
    device = next(sd.unet.parameters()).device
    dtype = next(sd.unet.parameters()).dtype
    nets, uses = controlnets(settings.controlnets, family, str(device), dtype), settings.controlnets
    union = union_uses(uses, ["union" if type(n).__name__ == "ControlNetUnionModel" else "" for n in nets])
    first, second = _pipelines(sd, nets, settings.sampler, union)
    many = len(controls) > 1 and not union
    control = dict(controlnet_conditioning_scale=[u.weight for u in uses] if many else uses[0].weight,
                   control_guidance_start=[u.start for u in uses] if many else uses[0].start,
                   control_guidance_end=[u.end for u in uses] if many else uses[0].end)
    if union:   # one model, each image with its control type
        control["control_mode"] = [UNION_MODES[u.kind] for u in uses]
    width, height = controls[0].size
    kwargs = prompt_kwargs(sd, prompt, settings, device, clip_skip)
    images = []
    for seed in seeds:
        gen = torch.Generator("cpu").manual_seed(seed)
        given = controls if many or union else controls[0]
        latents = first(**{"control_image" if union else "image": given}, num_inference_steps=settings.steps,
                        guidance_scale=settings.guidance, width=width, height=height, generator=gen,
                        output_type="latent", **control, **kwargs).images
        image = decode(sd, first, latents)
        if settings.hires:
            big = (round(width * settings.hires.scale / 8) * 8, round(height * settings.hires.scale / 8) * 8)
            larger = [c.resize(big, Image.LANCZOS) for c in controls]
            latents = second(image=image.resize(big, Image.LANCZOS),
                             control_image=larger if many or union else larger[0],
                             strength=settings.hires.denoise,
                             num_inference_steps=settings.hires.steps or settings.steps,
                             guidance_scale=settings.guidance, generator=gen, output_type="latent",
                             **control, **kwargs).images
            image = decode(sd, second, latents)
        images.append(image)
    return images


def save_candidate(image: Image.Image, path: Path, text: str, alpha_from: tuple | None, tolerance: int) -> None:
    """The candidate PNG, atomically, with its parameters; keyed to RGBA when `alpha_from` (a colour) is given."""
    if alpha_from is not None:
        image = key_out(image, alpha_from, tolerance)
    info = PngInfo()
    info.add_text("parameters", text)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
