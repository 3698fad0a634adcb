"""The derived module tables agree with diffusers/transformers models under kohya's rules."""

import pytest
import torch

from charfw.families import SD15, SDXL
from charfw.lora.keys import lora_module_specs, text_encoder_module_specs

SD15_CONFIG = dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
                   attention_head_dim=8)
SDXL_CONFIG = dict(block_out_channels=(320, 640, 1280), layers_per_block=2, cross_attention_dim=2048,
                   down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                   up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                   transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
                   use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                   projection_class_embeddings_input_dim=2816)


def meta_unet(config):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**config)


def kohya_targets(unet, conv3x3: bool) -> dict[str, tuple[int, ...]]:
    """kohya networks/lora.py's rule: Linear and 1x1 Conv2d inside transformers; with conv_dim
    also every Linear/Conv2d inside resnets and down/upsamplers."""
    classes = {"Transformer2DModel"} | ({"ResnetBlock2D", "Downsample2D", "Upsample2D"} if conv3x3 else set())
    out = {}
    for name, module in unet.named_modules():
        if type(module).__name__ not in classes:
            continue
        for child_name, child in module.named_modules():
            is_conv = isinstance(child, torch.nn.Conv2d)
            if isinstance(child, torch.nn.Linear) or (is_conv and (conv3x3 or child.kernel_size == (1, 1))):
                out["lora_unet_" + f"{name}.{child_name}".replace(".", "_")] = tuple(child.weight.shape)
    return out


def test_counts():
    assert len(list(lora_module_specs(SD15, False))) == 264
    assert len(list(lora_module_specs(SD15, True))) == 350
    specs = lora_module_specs(SD15, True)
    assert sum(s.name.startswith("lora_unet_") for s in specs.values()) == 278
    assert sum("conv_shortcut" in n for n in specs) == 14
    assert sum("samplers" in n for n in specs) == 6


@pytest.mark.parametrize("conv3x3", [False, True])
def test_sd15_unet_matches_diffusers(conv3x3):
    expected = kohya_targets(meta_unet(SD15_CONFIG), conv3x3)
    ours = {n: s.weight_shape for n, s in lora_module_specs(SD15, conv3x3).items() if n.startswith("lora_unet_")}
    assert ours == expected


def test_text_encoders_match_transformers():
    from transformers import CLIPTextConfig, CLIPTextModel

    for te in (*SD15.text_encoders, *SDXL.text_encoders):
        with torch.device("meta"):
            model = CLIPTextModel(CLIPTextConfig(hidden_size=te.width, intermediate_size=te.mlp,
                                                 num_hidden_layers=te.layers, num_attention_heads=16))
        expected = {}
        for name, mod in model.named_modules():
            if type(mod).__name__ in ("CLIPAttention", "CLIPMLP"):
                for child_name, child in mod.named_modules():
                    if isinstance(child, torch.nn.Linear):
                        # kohya names keep transformers' historical `text_model.` prefix
                        path = f"text_model.{name}.{child_name}".replace("text_model.text_model.", "text_model.")
                        expected[te.prefix + path.replace(".", "_")] = tuple(child.weight.shape)
        assert {s.name: s.weight_shape for s in text_encoder_module_specs(te)} == expected


def test_sdxl_ldm_names_convert_onto_diffusers_sdxl_unet():
    """SDXL names go through diffusers' own kohya/LDM -> diffusers conversion and land on real
    modules of the SDXL U-Net with matching shapes, covering exactly kohya's target set."""
    from diffusers.loaders.lora_conversion_utils import (_convert_non_diffusers_lora_to_diffusers,
                                                         _maybe_map_sgm_blocks_to_diffusers)
    from diffusers.utils import convert_unet_state_dict_to_peft

    unet = meta_unet(SDXL_CONFIG)
    specs = lora_module_specs(SDXL, True)
    state = {}
    for s in specs.values():
        if s.name.startswith("lora_unet_"):
            k = (s.kernel, s.kernel) if s.conv else ()
            state[f"{s.name}.lora_down.weight"] = torch.empty(1, s.in_dim, *k, device="meta")
            state[f"{s.name}.lora_up.weight"] = torch.empty(s.out_dim, 1, *((1, 1) if s.conv else ()), device="meta")
    n_modules = len(state) // 2
    state = _maybe_map_sgm_blocks_to_diffusers(state, unet.config)
    converted, _ = _convert_non_diffusers_lora_to_diffusers(state)
    peft = convert_unet_state_dict_to_peft({k.removeprefix("unet."): v for k, v in converted.items()})
    landed = {}
    for key, down in peft.items():
        if key.endswith(".lora_A.weight"):
            path = key.removesuffix(".lora_A.weight")
            weight = unet.get_submodule(path).weight
            up = peft[f"{path}.lora_B.weight"]
            assert (up.shape[0], *down.shape[1:]) == tuple(weight.shape), path
            landed["lora_unet_" + path.replace(".", "_")] = tuple(weight.shape)
    assert len(landed) == n_modules == len(list(lora_module_specs(SDXL, True))) - 264
    assert landed == kohya_targets(unet, conv3x3=True)
