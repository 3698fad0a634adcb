"""The LDM (CompVis) <-> diffusers tensor-name table for SD1.5- and SDXL-topology models.

A single-file SD1.5 checkpoint stores three networks under three prefixes:

    model.diffusion_model.*        U-Net           (LDM names)
    first_stage_model.*            VAE             (LDM names)
    cond_stage_model.transformer.* CLIP text model (transformers names)

SDXL keeps the U-Net and VAE prefixes (its U-Net adds `label_emb`, the size/pooled-text
embedding), stores CLIP ViT-L under `conditioner.embedders.0.transformer.` and OpenCLIP
bigG under `conditioner.embedders.1.model.` (charfw.models.openclip: not a pure rename).

The tables below are built from the architecture (block types and layers per
block of the shipped config), not from whatever a library version happens to
do, and are used in both directions: loading a user's checkpoint and writing
the builtin tiny model.  `tests/models` cross-checks them against diffusers'
own converter.

Every name is first split into a *module* part and a *leaf* part; modules are
mapped through the table, leaves through a small per-kind rename list.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from charfw.families import UNET_PREFIX  # noqa: F401  (one spelling)
from charfw.models.filekind import VAE_PREFIX  # noqa: F401

# Sub-module renames inside one residual block (diffusers -> LDM).
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
# The VAE's single-head mid-block attention (LDM stores q/k/v/proj_out as 1x1 convs).
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_SAME: dict[str, str] = {}


class KeyMapError(RuntimeError):
    """The installed diffusers/transformers name a tensor this table does not know (a library change)."""


def unet_modules(config: Mapping) -> dict[str, tuple[str, dict[str, str]]]:
    """diffusers module path -> (LDM module path, leaf renames) for a UNet2DConditionModel config."""
    per = int(config["layers_per_block"])
    down = list(config["down_block_types"])
    up = list(config["up_block_types"])
    table: dict[str, tuple[str, dict[str, str]]] = {
        "conv_in": ("input_blocks.0.0", _SAME),
        "time_embedding.linear_1": ("time_embed.0", _SAME),
        "time_embedding.linear_2": ("time_embed.2", _SAME),
        "conv_norm_out": ("out.0", _SAME),
        "conv_out": ("out.2", _SAME),
        "mid_block.resnets.0": ("middle_block.0", _UNET_RESNET),
        "mid_block.attentions.0": ("middle_block.1", _SAME),
        "mid_block.resnets.1": ("middle_block.2", _UNET_RESNET),
    }
    if config.get("addition_embed_type") == "text_time":  # SDXL: pooled text + size ids -> time embedding
        table["add_embedding.linear_1"] = ("label_emb.0.0", _SAME)
        table["add_embedding.linear_2"] = ("label_emb.0.2", _SAME)
    # input_blocks: 0 is conv_in; then per down block `per` (resnet[, attention]) slots
    # followed by one downsampler slot (none after the last block).
    for i, kind in enumerate(down):
        for j in range(per):
            slot = 1 + i * (per + 1) + j
            table[f"down_blocks.{i}.resnets.{j}"] = (f"input_blocks.{slot}.0", _UNET_RESNET)
            if "CrossAttn" in kind:
                table[f"down_blocks.{i}.attentions.{j}"] = (f"input_blocks.{slot}.1", _SAME)
        if i < len(down) - 1:
            table[f"down_blocks.{i}.downsamplers.0.conv"] = (f"input_blocks.{(i + 1) * (per + 1)}.0.op", _SAME)
    # output_blocks: per up block `per + 1` slots of (resnet[, attention][, upsampler]);
    # the upsampler sits in the block's last slot, after the attention if there is one.
    for i, kind in enumerate(up):
        attn = "CrossAttn" in kind
        for j in range(per + 1):
            slot = i * (per + 1) + j
            table[f"up_blocks.{i}.resnets.{j}"] = (f"output_blocks.{slot}.0", _UNET_RESNET)
            if attn:
                table[f"up_blocks.{i}.attentions.{j}"] = (f"output_blocks.{slot}.1", _SAME)
        if i < len(up) - 1:
            last = i * (per + 1) + per
            table[f"up_blocks.{i}.upsamplers.0.conv"] = (f"output_blocks.{last}.{2 if attn else 1}.conv", _SAME)
    return table


CONTROLNET_PREFIX = "control_model."   # lllyasviel's ControlNet 1.1 files; most SDXL ControlNets have none


def controlnet_modules(config: Mapping) -> dict[str, tuple[str, dict[str, str]]]:
    """diffusers ControlNetModel module path -> LDM module path, from the U-Net config it is built on (the
    shipped one of its family): the U-Net's encoder half and middle block,
    the hint encoder (`input_hint_block`: convs at 0, 2, ..., 14 between SiLUs), one zero conv per
    down-path output (`zero_convs.i.0`) and the middle block's (`middle_block_out.0`)."""
    unet = unet_modules(config)
    table = {k: v for k, v in unet.items() if not k.startswith(("up_blocks", "conv_norm_out", "conv_out"))}
    n_blocks = len(config.get("conditioning_embedding_out_channels", (16, 32, 96, 256)))
    table["controlnet_cond_embedding.conv_in"] = ("input_hint_block.0", _SAME)
    for k in range(2 * (n_blocks - 1)):
        table[f"controlnet_cond_embedding.blocks.{k}"] = (f"input_hint_block.{2 * (k + 1)}", _SAME)
    table["controlnet_cond_embedding.conv_out"] = (f"input_hint_block.{4 * n_blocks - 2}", _SAME)
    per, levels = int(config["layers_per_block"]), len(config["down_block_types"])
    for i in range(1 + levels * (per + 1) - 1):
        table[f"controlnet_down_blocks.{i}"] = (f"zero_convs.{i}.0", _SAME)
    table["controlnet_mid_block"] = ("middle_block_out.0", _SAME)
    return table


def controlnet_to_ldm(keys: Iterable[str], config: Mapping, prefix: str = CONTROLNET_PREFIX) -> dict[str, str]:
    """diffusers ControlNet state-dict key -> the key of a single-file ControlNet in the original layout
    (`config`: the U-Net config the ControlNet is built on)."""
    modules = controlnet_modules(config)
    return {k: prefix + _rename(k, modules) for k in keys}


def vae_modules(config: Mapping) -> dict[str, tuple[str, dict[str, str]]]:
    """diffusers module path -> (LDM module path, leaf renames) for an AutoencoderKL config."""
    levels = len(config["block_out_channels"])
    per = int(config["layers_per_block"])
    table: dict[str, tuple[str, dict[str, str]]] = {
        "quant_conv": ("quant_conv", _SAME),
        "post_quant_conv": ("post_quant_conv", _SAME),
    }
    for side in ("encoder", "decoder"):
        table[f"{side}.conv_in"] = (f"{side}.conv_in", _SAME)
        table[f"{side}.conv_out"] = (f"{side}.conv_out", _SAME)
        table[f"{side}.conv_norm_out"] = (f"{side}.norm_out", _SAME)
        table[f"{side}.mid_block.resnets.0"] = (f"{side}.mid.block_1", _VAE_RESNET)
        table[f"{side}.mid_block.attentions.0"] = (f"{side}.mid.attn_1", _VAE_ATTN)
        table[f"{side}.mid_block.resnets.1"] = (f"{side}.mid.block_2", _VAE_RESNET)
    for i in range(levels):
        for j in range(per):
            table[f"encoder.down_blocks.{i}.resnets.{j}"] = (f"encoder.down.{i}.block.{j}", _VAE_RESNET)
        if i < levels - 1:
            table[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = (f"encoder.down.{i}.downsample.conv", _SAME)
    # The LDM decoder numbers its levels from the lowest resolution up, diffusers the other way.
    for i in range(levels):
        level = levels - 1 - i
        for j in range(per + 1):
            table[f"decoder.up_blocks.{i}.resnets.{j}"] = (f"decoder.up.{level}.block.{j}", _VAE_RESNET)
        if i < levels - 1:
            table[f"decoder.up_blocks.{i}.upsamplers.0.conv"] = (f"decoder.up.{level}.upsample.conv", _SAME)
    return table


def _rename(key: str, modules: Mapping[str, tuple[str, dict[str, str]]]) -> str:
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):  # longest module prefix first
        module = ".".join(parts[:cut])
        if module in modules:
            target, leaves = modules[module]
            rest = ".".join(parts[cut:])
            for old, new in leaves.items():
                if rest.startswith(old + "."):
                    rest = new + rest[len(old):]
                    break
            return f"{target}.{rest}"
    raise KeyMapError(f"no LDM name known for tensor {key!r}: the installed library renamed a module")


def unet_to_ldm(keys: Iterable[str], config: Mapping) -> dict[str, str]:
    """diffusers U-Net state-dict key -> full LDM checkpoint key."""
    modules = unet_modules(config)
    return {k: UNET_PREFIX + _rename(k, modules) for k in keys}


def vae_to_ldm(keys: Iterable[str], config: Mapping, prefix: str = VAE_PREFIX) -> dict[str, str]:
    """diffusers VAE state-dict key -> LDM key (with `prefix`, '' for a stand-alone VAE file)."""
    modules = vae_modules(config)
    return {k: prefix + _rename(k, modules) for k in keys}


def te_canonical(key: str, flattened: bool) -> str:
    """The transformers CLIPTextModel key as SD checkpoints (and LoRA names) spell it: `text_model.*`.

    transformers >= 5.6 dropped the `text_model` wrapper module (`flattened`).
    """
    return "text_model." + key if flattened else key


def te_to_ldm(keys: Iterable[str], flattened: bool, prefix: str) -> dict[str, str]:
    """CLIPTextModel state-dict key -> checkpoint key under `prefix` (the family's text_encoder_prefix)."""
    return {k: prefix + te_canonical(k, flattened) for k in keys}


def te_legacy_ldm(ldm_key: str, prefix: str) -> str:
    """The same tensor as very old checkpoints name it (transformers < 4.?, no `text_model.` level)."""
    assert ldm_key.startswith(prefix + "text_model.")
    return prefix + ldm_key[len(prefix + "text_model."):]


def unet_module_to_ldm(paths: Iterable[str], config: Mapping) -> dict[str, str]:
    """diffusers U-Net module path -> LDM module path (kohya names SDXL LoRA modules by these)."""
    modules = unet_modules(config)
    return {p: _rename(p + ".weight", modules)[:-len(".weight")] for p in paths}
