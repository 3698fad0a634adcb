"""ControlNet files as users download them, loaded offline (docs/rules.md §2b).

Two layouts exist: the original one (lllyasviel's ControlNet 1.1 for SD1.5 under `control_model.*`,
most SDXL ControlNets without the prefix: the U-Net's encoder names plus `input_hint_block`,
`zero_convs`, `middle_block_out`) and diffusers' (`diffusion_pytorch_model.safetensors`, also as a
single file). Either is read by its tensor names (charfw.models.keymap), the model built from the
family's shipped U-Net config: nothing is downloaded. A file's family is read from its tensors
(SDXL's have the size/pooled-text embedding and a 2048-wide context), its kind from what the user
declares; a file whose name says another kind ("..._depth...") for `kind: openpose` is refused.

Union ControlNets (xinsir's controlnet-union-sdxl-1.0 and its ProMax, diffusers layout) take every
kind in one model: a `task_embedding` row per control type, the control type of each image given as
its index (`UNION_MODES`, xinsir's table). One union file serves all of a section's kinds.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from charfw.errors import CharfwError
from charfw.families import FAMILIES, Family, base
from charfw.models.configs import arch_config
from charfw.models.filekind import safetensors_header
from charfw.models.keymap import CONTROLNET_PREFIX, controlnet_to_ldm

KNOWN_KINDS = ("openpose", "depth", "lineart", "canny", "softedge", "hed", "scribble", "seg", "normal", "tile",
               "inpaint", "mlsd", "shuffle", "ip2p")
ALIASES = {"pose": "openpose", "lineart_anime": "lineart", "anime_lineart": "lineart", "midas": "depth"}
# xinsir's control types: 0 openpose, 1 depth, 2 hed/pidi/scribble/ted, 3 canny/lineart/anime_lineart/mlsd,
# 4 normal, 5 segment, 6 tile, 7 repaint (ProMax)
UNION_MODES = {"openpose": 0, "depth": 1, "lineart": 3}


def controlnet_config(arch: str) -> dict:
    """The ControlNetModel config built on a shipped U-Net config (what ControlNetModel.from_unet keeps)."""
    from diffusers import ControlNetModel

    params = inspect.signature(ControlNetModel.__init__).parameters
    return {k: v for k, v in arch_config(arch, "unet").items() if k in params}


def _stripped(keys) -> tuple[list[str], str]:
    keys = [k for k in keys if k != "__metadata__"]
    if any(k.startswith(CONTROLNET_PREFIX) for k in keys):
        return [k[len(CONTROLNET_PREFIX):] for k in keys if k.startswith(CONTROLNET_PREFIX)], CONTROLNET_PREFIX
    return keys, ""


def union_config(arch: str, header: dict) -> dict:
    """A ControlNetUnionModel config: the shipped U-Net's, the union parts' sizes read from the tensors."""
    from diffusers import ControlNetUnionModel

    params = inspect.signature(ControlNetUnionModel.__init__).parameters
    config = {k: v for k, v in arch_config(arch, "unet").items() if k in params}
    types, channels = header["task_embedding"]["shape"]
    layers = {k.split(".")[1] for k in header if k.startswith("transformer_layes.")}
    return {**config, "num_control_type": types, "num_trans_channel": channels, "num_trans_layer": len(layers),
            "num_proj_channel": header["spatial_ch_projs.weight"]["shape"][0]}


def file_family(path: Path, header: dict | None = None) -> tuple[Family, str, str]:
    """(family, shipped config set, layout "ldm" | "diffusers" | "union") of a ControlNet file, from its
    tensors."""
    header = header if header is not None else safetensors_header(path)
    keys, _ = _stripped(header)
    ldm = any(k.startswith("input_hint_block.") for k in keys)
    diffusers = any(k.startswith("controlnet_cond_embedding.") for k in keys)
    if ldm == diffusers:
        raise CharfwError("not a ControlNet (no input_hint_block / controlnet_cond_embedding tensors)", file=path)
    conv_in = header[next(k for k in header if k.endswith("input_blocks.0.0.weight" if ldm else "conv_in.weight")
                          and "hint" not in k and "cond_embedding" not in k)]["shape"]
    sdxl = any(k.startswith("label_emb." if ldm else "add_embedding.") for k in keys)
    for family in FAMILIES.values():
        if family.pooled_conditioning != sdxl or family.variant_of:
            continue
        for arch in family.configs:
            if arch_config(arch, "unet")["block_out_channels"][0] == conv_in[0]:
                return family, arch, "ldm" if ldm else "union" if "task_embedding" in keys else "diffusers"
    raise CharfwError(f"a ControlNet of no known size ({conv_in[0]} channels at the input)", file=path)


def check_kind(path: Path, kind: str) -> None:
    """Refuse a file whose name says it is another kind of ControlNet than `kind` (a union model takes any)."""
    words = re.split(r"[^a-z0-9]+", path.stem.lower())
    named = {ALIASES.get(w, w) for w in words} & set(KNOWN_KINDS)
    if "union" in words or "promax" in words or not named or kind in named:
        return
    raise CharfwError(f"its name says a {'/'.join(sorted(named))} ControlNet, but `kind: {kind}` is set "
                      "(fix the kind, or rename the file if its name is wrong)", file=path)


def union_uses(uses, layouts: list[str]) -> bool:
    """Whether a section's ControlNets are one union model (each use one of its control types). diffusers
    runs a union model alone and applies one weight and one start/end to it: anything else is refused."""
    unions = [u for u, layout in zip(uses, layouts) if layout == "union"]
    if not unions:
        return False
    if len(unions) != len(uses) or len({str(u.model) for u in uses}) > 1:
        raise CharfwError("a union ControlNet runs alone: list that one file once per kind (openpose, depth, "
                          "lineart), without other ControlNets", field="generate.controlnets")
    if len({(u.weight, u.start, u.end) for u in uses}) > 1:
        raise CharfwError("the kinds of one union ControlNet share one weight, start and end (it is one model)",
                          field="generate.controlnets")
    kinds = [u.kind for u in uses]
    if len(set(kinds)) != len(kinds):
        raise CharfwError(f"the union ControlNet is listed twice for {max(kinds, key=kinds.count)}",
                          field="generate.controlnets")
    return True


def load_controlnet(path: str | Path, family: Family, dtype=None, device: str = "cpu"):
    """A diffusers ControlNetModel from a single file of either layout, checked to be `family`'s (`dtype`:
    a torch dtype, None = float32)."""
    import torch
    from diffusers import ControlNetModel
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise CharfwError("a ControlNet must be a .safetensors file (pickled .pth/.ckpt files are not loaded)",
                          file=path)
    if not path.is_file():
        raise CharfwError("ControlNet file not found", file=path)
    found, arch, layout = file_family(path)
    if found is not base(family):
        raise CharfwError(f"an {found.label} ControlNet, but the workspace's model is {family.label}", file=path)
    tensors = load_file(str(path))
    unet_config = arch_config(arch, "unet")
    if layout == "union":
        from diffusers import ControlNetUnionModel

        model = ControlNetUnionModel(**union_config(arch, safetensors_header(path)))
    else:
        model = ControlNetModel(**controlnet_config(arch))
    if layout == "ldm":
        keys, prefix = _stripped(tensors)
        names = controlnet_to_ldm(model.state_dict(), unet_config, prefix)
        missing = [names[k] for k in model.state_dict() if names[k] not in tensors]
        if missing:
            raise CharfwError(f"the ControlNet lacks {missing[0]} (and {len(missing) - 1} more tensors)", file=path)
        tensors = {k: tensors[names[k]] for k in model.state_dict()}
    model.load_state_dict(tensors, strict=True)
    torch.nn.Module.to(model, device=device, dtype=dtype or torch.float32)   # (diffusers' .to warns needlessly)
    return model.eval().requires_grad_(False)


def write_random_controlnet(path: str | Path, arch: str, seed: int = 0, layout: str = "ldm") -> Path:
    """A random-weight ControlNet of a shipped config set (the tiny ones for tests and the example) in the
    original layout (SD1.5's under control_model.*, SDXL's bare, as they ship), diffusers', or as a union
    model (diffusers' layout, xinsir's six control types)."""
    import torch
    from diffusers import ControlNetModel, ControlNetUnionModel
    from safetensors.torch import save_file

    from charfw.families import of_config
    from charfw.fsutil import atomic_path

    torch.manual_seed(seed)
    if layout == "union":
        params = inspect.signature(ControlNetUnionModel.__init__).parameters
        model = ControlNetUnionModel(**{k: v for k, v in arch_config(arch, "unet").items() if k in params},
                                     num_trans_channel=arch_config(arch, "unet")["block_out_channels"][0],
                                     num_proj_channel=arch_config(arch, "unet")["block_out_channels"][0])
    else:
        model = ControlNetModel(**controlnet_config(arch))
    with torch.no_grad():   # its zero convs start at zero: give them weight so the control shows
        for name, p in model.named_parameters():
            if any(part in name for part in ("controlnet_down_blocks", "controlnet_mid_block",
                                             "cond_embedding.conv_out", "spatial_ch_projs")):
                p.normal_(0, 0.02)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if layout == "ldm":
        prefix = "" if of_config(arch).pooled_conditioning else CONTROLNET_PREFIX
        names = controlnet_to_ldm(state, arch_config(arch, "unet"), prefix)
        state = {names[k]: v for k, v in state.items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"charfw_arch": arch})
    return path
