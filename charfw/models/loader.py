"""load_model: an SD1.5- or SDXL-family single-file checkpoint (or a builtin) as diffusers models, offline."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from charfw.errors import CharfwError
from charfw.families import DEFAULT, Family
from charfw.families import family as family_named
from charfw.families import from_checkpoint, of_config
from charfw.models import keymap, openclip
from charfw.models.build import empty_models, fit, ldm_names
from charfw.models.checkpoint import TensorFile, open_tensors
from charfw.models.configs import ARCHS, TOKENIZER_DIR, arch_config, label, scheduler_config, with_article
from charfw.models.filekind import checkpoint_problem
from charfw.models.tiny import builtin_path
from charfw.rules.modelref import builtin_name, is_builtin


@dataclass
class Sd:
    """The parts of a Stable Diffusion model a trainer needs; weights frozen (requires_grad=False), eval mode.

    SDXL models also have `text_encoder_2` (OpenCLIP bigG, with projection) and `tokenizer_2`.
    """

    unet: Any            # diffusers.UNet2DConditionModel
    vae: Any             # diffusers.AutoencoderKL
    text_encoder: Any    # transformers.CLIPTextModel
    tokenizer: Any       # transformers.CLIPTokenizer
    noise_scheduler: Any  # diffusers.DDPMScheduler (training schedule)
    name: str            # file stem, or 'builtin:tiny-sd15'
    arch: str            # which shipped config set (a Family's configs): 'sd15', 'tiny-sdxl', ...
    family: Family       # what the file is (a variant such as SDXL v-prediction included)
    path: Path | None = None      # the weights file actually read (for builtins: the cached file)
    vae_path: Path | None = None  # the separate VAE file, if one was given
    text_encoder_2: Any = None    # SDXL: transformers.CLIPTextModelWithProjection
    tokenizer_2: Any = None       # SDXL: CLIPTokenizer padding with "!" (id 0), as OpenCLIP and sd-scripts

    @property
    def text_encoders(self) -> list:
        return [te for te in (self.text_encoder, self.text_encoder_2) if te is not None]

    def pipeline(self, scheduler=None):
        """A diffusers StableDiffusion(XL)Pipeline over these (shared, not copied) modules.

        Default scheduler: DDIM built from the training schedule. No safety checker.
        diffusers 0.42's `clip_skip` argument reads `text_encoder.text_model`, which transformers 5
        removed; pass no clip_skip (a `text_model` alias would break `load_lora_weights` instead).
        """
        from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

        scheduler = scheduler or DDIMScheduler.from_config(self.noise_scheduler.config)
        if self.family.pooled_conditioning:
            return StableDiffusionXLPipeline(
                vae=self.vae, text_encoder=self.text_encoder, text_encoder_2=self.text_encoder_2,
                tokenizer=self.tokenizer, tokenizer_2=self.tokenizer_2, unet=self.unet, scheduler=scheduler)
        return StableDiffusionPipeline(
            vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.unet,
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )


def load_model(model: str | Path, vae: str | Path | None = None, *, family: Family | str | None = None,
               dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
               cache_dir: str | Path | None = None) -> Sd:
    """Load a single-file checkpoint (`.safetensors`, or tensor-only `.ckpt`/`.pt`) or a builtin model.

    The family is read from the file's tensor names; `family` (a Family or its name), when given,
    must match it. `vae` optionally replaces the checkpoint's VAE (LDM layout with or without the
    `first_stage_model.` prefix, or diffusers layout). Nothing is downloaded.
    """
    if is_builtin(model):
        path = builtin_path(builtin_name(model), cache_dir)
        name = model
    else:
        path = Path(model).expanduser()
        name = path.stem
    vae_path = Path(vae).expanduser() if vae is not None else None
    family = family_named(family) if family else None

    with ExitStack() as stack:
        # The VAE file first: a wrong VAE path fails before seconds of checkpoint reading.
        vsrc = stack.enter_context(open_tensors(vae_path, "VAE")) if vae_path is not None else None
        src = stack.enter_context(open_tensors(path, "checkpoint"))
        detected = from_checkpoint(src.keys())
        arch = _arch_of(src, detected or family or DEFAULT)
        fam = family or detected or of_config(arch)
        _check_family(src, fam)
        models = empty_models(arch)
        names = ldm_names(models, arch)
        prefix = of_config(arch).text_encoder_prefix
        _assign(models["unet"], _gather(src, {k: [v] for k, v in names["unet"].items()}, models["unet"], dtype, arch,
                                        "checkpoint"))
        te_sources = {k: [v, keymap.te_legacy_ldm(v, prefix)] for k, v in names["text_encoder"].items()}
        _assign(models["text_encoder"], _gather(src, te_sources, models["text_encoder"], dtype, arch, "checkpoint"))
        if "text_encoder_2" in models:
            _assign(models["text_encoder_2"], _gather_openclip(src, models["text_encoder_2"], dtype, arch))
        if vsrc is not None:
            _assign(models["vae"], _gather(vsrc, _vae_sources(vsrc, models["vae"], arch), models["vae"], dtype, arch,
                                           "VAE"))
        elif _has(src, keymap.VAE_PREFIX):
            _assign(models["vae"], _gather(src, {k: [v] for k, v in names["vae"].items()}, models["vae"], dtype,
                                           arch, "checkpoint"))
        else:
            raise CharfwError(f"the checkpoint has no VAE ({keymap.VAE_PREFIX}* tensors); give a separate VAE file",
                              file=path)

    from diffusers import DDPMScheduler
    from transformers import CLIPTokenizer

    for m in models.values():
        m.to(device)  # tensors already have `dtype` (passing it here makes diffusers warn)
        m.eval()
        m.requires_grad_(False)
    tokenizer = CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)
    tokenizer_2 = None
    if "text_encoder_2" in models:  # the same BPE; OpenCLIP pads with "!" (id 0), not <|endoftext|>
        tokenizer_2 = CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True, pad_token="!")
    scheduler = DDPMScheduler.from_config(scheduler_config(fam))
    return Sd(unet=models["unet"], vae=models["vae"], text_encoder=models["text_encoder"], tokenizer=tokenizer,
              noise_scheduler=scheduler, name=name, arch=arch, family=fam, path=path, vae_path=vae_path,
              text_encoder_2=models.get("text_encoder_2"), tokenizer_2=tokenizer_2)


_PROBE = keymap.UNET_PREFIX + "input_blocks.0.0.weight"  # conv_in: its width tells the config apart


def _arch_of(src: TensorFile, found: Family) -> str:
    """Which shipped config set the file needs: its `charfw_arch` marker, else the config of `found` (the
    file's family from its tensor names, else the one asked for, else families.DEFAULT) of the file's
    conv_in width."""
    marked = src.metadata.get("charfw_arch")
    if marked in ARCHS:
        return marked
    if _PROBE in src:
        width = src.shape(_PROBE)[0]
        for arch in found.configs:
            if arch_config(arch, "unet")["block_out_channels"][0] == width:
                return arch
    return found.configs[0]


def _has(src: TensorFile, prefix: str) -> bool:
    return any(k.startswith(prefix) for k in src.keys())


def _check_family(src: TensorFile, want: Family) -> None:
    """Recognise the usual wrong files before looking at individual tensors."""
    problem = checkpoint_problem(src.keys(), want)
    if problem:
        raise CharfwError(f"not {with_article(want.configs[0])} checkpoint: {problem}", file=src.path)


def _gather_openclip(src: TensorFile, module, dtype: torch.dtype, arch: str) -> dict[str, torch.Tensor]:
    """SDXL's second text encoder from its OpenCLIP-layout tensors."""
    layers = module.config.num_hidden_layers
    missing = [k for k in openclip.checkpoint_keys(layers) if k not in src]
    if missing:
        raise CharfwError(f"incomplete {label(arch)} checkpoint: {len(missing)} tensors of the second text "
                          f"encoder (OpenCLIP bigG) are missing, e.g. {missing[0]}", file=src.path)
    state = openclip.from_openclip(src.get, layers)
    own = module.state_dict()
    flat = {k if k in own else k[len("text_model."):]: v for k, v in state.items()}
    sources = {k: [k] for k in own}
    return _gather(_Mapping(src.path, flat), sources, module, dtype, arch, "checkpoint")


class _Mapping(TensorFile):
    """Tensors already in memory, read like a file (for shape checks and messages naming the file)."""

    def __init__(self, path: Path, tensors: dict[str, torch.Tensor]):
        super().__init__(path, tensors=tensors)

    def get(self, key: str) -> torch.Tensor:
        return self._tensors[key]


def _vae_sources(src: TensorFile, vae_model, arch: str) -> dict[str, list[str]]:
    """Where each VAE tensor is in a stand-alone VAE file, whichever common layout it uses."""
    keys = list(vae_model.state_dict().keys())
    for prefix in (keymap.VAE_PREFIX, "vae.", ""):
        if prefix + "encoder.down.0.block.0.conv1.weight" in src:
            names = keymap.vae_to_ldm(keys, vae_model.config, prefix)
            return {k: [v] for k, v in names.items()}
    if "encoder.down_blocks.0.resnets.0.conv1.weight" in src:  # already diffusers layout
        return {k: [k] for k in keys}
    raise CharfwError(f"not {with_article(arch)} VAE: no encoder tensors in LDM (encoder.down.*) "
                      "or diffusers (encoder.down_blocks.*) layout", file=src.path)


def _gather(src: TensorFile, sources: dict[str, list[str]], module, dtype: torch.dtype, arch: str,
            what: str) -> dict[str, torch.Tensor]:
    """Every tensor `module` needs, from `src`; CharfwError on wrong shapes or missing tensors."""
    name, named = label(arch), with_article(arch)
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    wrong: list[tuple[str, tuple, tuple]] = []
    for key, candidates in sources.items():
        found = next((c for c in candidates if c in src), None)
        if found is None:
            missing.append(candidates[0])
            continue
        tensor = src.get(found)
        shaped = fit(tensor, expected[key])
        if shaped is None:
            wrong.append((found, tuple(tensor.shape), expected[key]))
            continue
        out[key] = shaped.to(dtype) if shaped.is_floating_point() else shaped
    if wrong:
        key, got, want = wrong[0]
        hint = ""
        if key.endswith("input_blocks.0.0.weight") and len(got) == 4 and got[1] != want[1]:
            hint = f" (a model with {got[1]} input channels, e.g. an inpainting model)"
        elif "attn2.to_k" in key and len(got) == 2 and got[1] != want[1]:
            hint = f" (cross-attention width {got[1]}: another model family)"
        more = f"; {len(wrong) - 1} more tensors differ" if len(wrong) > 1 else ""
        raise CharfwError(f"not {named} {what}: {key} has shape {list(got)}, {name} needs {list(want)}"
                          f"{hint}{more}", file=src.path)
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        if len(missing) * 2 > len(sources):
            raise CharfwError(f"not {named} {what}: {len(missing)} of the {len(sources)} tensors it needs "
                              f"are missing, e.g. {shown}", file=src.path)
        raise CharfwError(f"incomplete {name} {what}: {len(missing)} of the {len(sources)} tensors it needs "
                          f"are missing: {shown}", file=src.path)
    return out


def _assign(module, state: dict[str, torch.Tensor]) -> None:
    """Replace the meta parameters with the loaded tensors (strict: every key, nothing else)."""
    module.load_state_dict(state, strict=True, assign=True)
