"""Merged and compressed files load with diffusers' kohya LoRA loader path.

A tiny U-Net and CLIP text encoder with SD1.5's exact block structure (small widths) get a
full C3Lier LoRA (350 modules); the outputs of merge and compress go through diffusers'
kohya -> diffusers -> PEFT key conversion, which rejects unexpected keys, and every
resulting LoRA pair must land on a real layer with matching shapes and run forward.
(`load_lora_weights` itself needs the optional `peft` package, not installed here.)
"""

from dataclasses import replace

import pytest
import torch
from lora_factory import lora_tensors, write
from test_keys import kohya_targets

from charfw.families import SD15
from charfw.families.family import TextEncoderArch
from charfw.lora import compress_file, merge_file
from charfw.lora.keys import text_encoder_module_specs, unet_module_specs
from charfw.lora.options import CompressOptions

TINY_UNET = replace(SD15.unet, channels=tuple(c // 40 for c in SD15.unet.channels), context_dim=16)  # 8, 16, 32, 32
TINY_TE = TextEncoderArch("lora_te_", 12, 16, 32)


@pytest.fixture(scope="module")
def tiny_models():
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=16, block_out_channels=TINY_UNET.channels, layers_per_block=2,
                                cross_attention_dim=16, attention_head_dim=2, norm_num_groups=8)
    te = CLIPTextModel(CLIPTextConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=12,
                                      num_attention_heads=2, vocab_size=100, max_position_embeddings=16))
    return unet.eval(), te.eval()


@pytest.fixture(scope="module")
def tiny_lora(tmp_path_factory):
    specs = text_encoder_module_specs(TINY_TE) + unet_module_specs(TINY_UNET, conv3x3=True)
    assert len(specs) == 350
    gen = torch.Generator().manual_seed(1)
    modules = {s.name: lora_tensors(s, 4, gen, decay=0.5, dtype=torch.float16) for s in specs}
    return write(tmp_path_factory.mktemp("tiny") / "tiny.safetensors", modules, {"ss_network_dim": "4"})


def diffusers_pairs(path, unet):
    from diffusers.loaders.lora_conversion_utils import (_convert_non_diffusers_lora_to_diffusers,
                                                         _maybe_map_sgm_blocks_to_diffusers)
    from diffusers.utils import (convert_state_dict_to_diffusers, convert_state_dict_to_peft,
                                 convert_unet_state_dict_to_peft)
    from safetensors.torch import load_file

    state = _maybe_map_sgm_blocks_to_diffusers(load_file(str(path)), unet.config)
    converted, alphas = _convert_non_diffusers_lora_to_diffusers(state)   # raises on leftover keys
    unet_sd = convert_unet_state_dict_to_peft({k.removeprefix("unet."): v for k, v in converted.items()
                                               if k.startswith("unet.")})
    te_sd = {k.removeprefix("text_encoder."): v for k, v in converted.items() if k.startswith("text_encoder.")}
    if te_sd:  # as diffusers does: converted only when the file has text-encoder modules
        te_sd = convert_state_dict_to_peft(convert_state_dict_to_diffusers(te_sd))
        te_sd = {k.removeprefix("text_model."): v for k, v in te_sd.items()}  # transformers 5 flattened CLIP
    assert len(unet_sd) + len(te_sd) == len(converted)
    return unet_sd, te_sd, alphas


def apply(model, pairs):
    """Add up @ down to each targeted weight; every pair must fit its layer exactly."""
    done = set()
    for key, down in pairs.items():
        if not key.endswith(".lora_A.weight"):
            continue
        path = key.removesuffix(".lora_A.weight")
        layer = model.get_submodule(path)
        up = pairs[f"{path}.lora_B.weight"]
        assert (up.shape[0], *down.shape[1:]) == tuple(layer.weight.shape), path
        with torch.no_grad():
            layer.weight += (up.reshape(up.shape[0], -1).float() @ down.reshape(down.shape[0], -1).float()
                             ).reshape(layer.weight.shape)
        done.add(path)
    assert len(done) * 2 == len(pairs), "lora_A/lora_B keys without a partner"
    return done


@pytest.mark.parametrize("edit", ["original", "merge", "compress", "merge+compress"])
def test_outputs_load_into_diffusers_models(tiny_lora, tiny_models, tmp_path, edit):
    unet, te = tiny_models
    path = tiny_lora
    if "merge" in edit:
        path = tmp_path / "m.safetensors"
        merge_file(tiny_lora, path, "FACE")
    if "compress" in edit:
        src, path = path, tmp_path / "c.safetensors"
        compress_file(src, path, CompressOptions.of(method="sv_fro", value=0.9))
    unet_sd, te_sd, alphas = diffusers_pairs(path, unet)
    state_unet, state_te = {k: v.clone() for k, v in unet.state_dict().items()}, te.state_dict()
    try:
        unet_done, te_done = apply(unet, unet_sd), apply(te, te_sd)
        if edit in ("original", "compress"):
            expected = kohya_targets(unet, conv3x3=True)
            assert {"lora_unet_" + p.replace(".", "_") for p in unet_done} == set(expected)
            assert len(te_done) == 72
        else:
            assert len(unet_done) + len(te_done) < 350
        with torch.no_grad():
            ids = torch.tensor([[1, 2, 3, 4]])
            hidden = te(ids).last_hidden_state
            out = unet(torch.randn(1, 4, 16, 16), 10, encoder_hidden_states=hidden).sample
        assert out.shape == (1, 4, 16, 16) and torch.isfinite(out).all()
    finally:
        unet.load_state_dict(state_unet)
        te.load_state_dict(state_te)


@pytest.fixture(scope="module")
def tiny_pipeline(tiny_models):
    """A StableDiffusionPipeline over the tiny models, for diffusers' own `load_lora_weights`."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from charfw.models.configs import TOKENIZER_DIR

    unet, _ = tiny_models
    torch.manual_seed(0)
    te = CLIPTextModel(CLIPTextConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=12,
                                      num_attention_heads=2, vocab_size=49408, max_position_embeddings=77)).eval()
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=8, latent_channels=4)
    tokenizer = CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)
    return StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def kohya_layers(model, prefix: str) -> dict[str, str]:
    """kohya module name -> the model's parameter name of that layer's weight."""
    out = {}
    for path, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            kohya = path if prefix == "lora_unet_" or path.startswith("text_model.") else "text_model." + path
            out[prefix + kohya.replace(".", "_")] = path + ".weight"
    return out


@pytest.mark.slow
@pytest.mark.parametrize("edit", ["merge", "compress", "merge+compress", "compress-sd-scripts"])
def test_diffusers_applies_the_same_delta_as_kohya_loaders(tiny_lora, tiny_pipeline, tmp_path, edit):
    """diffusers' load_lora_weights + fuse gives each layer exactly the file's ΔW (what ComfyUI and
    A1111 apply), also where compression left every module its own rank."""
    from charfw.lora import load_lora
    from charfw.lora.modules import delta_matrix

    path = tiny_lora
    if "merge" in edit:
        path = tmp_path / "m.safetensors"
        merge_file(tiny_lora, path, "IN04=0.5,OUT03=0.3,OUT05=-1")
    if "compress" in edit:
        src, path = path, tmp_path / "c.safetensors"
        compress_file(src, path, CompressOptions.of(method="sv_fro", value=0.9, dtype="fp32",
                                                    sd_scripts_compat=edit.endswith("sd-scripts")))
    lora = load_lora(path)
    if "compress" in edit:
        assert len({m.rank for m in lora.modules.values()}) > 1        # ranks differ per module
    pipe = tiny_pipeline
    models = {"lora_unet_": pipe.unet, "lora_te_": pipe.text_encoder}
    before = {p: {k: v.detach().clone() for k, v in m.state_dict().items()} for p, m in models.items()}
    try:
        pipe.load_lora_weights(str(path))
        pipe.fuse_lora()
        pipe.unload_lora_weights()
        for prefix, model in models.items():
            layers, weights = kohya_layers(model, prefix), dict(model.state_dict())
            for name, m in lora.modules.items():
                if not name.startswith(prefix):
                    continue
                key = layers[name]
                got = (weights[key] - before[prefix][key]).reshape(weights[key].shape[0], -1).double()
                want = delta_matrix(m, torch.float64)
                assert torch.linalg.norm(got - want) <= 1e-4 * torch.linalg.norm(want), (edit, name)
    finally:
        for prefix, model in models.items():
            model.load_state_dict(before[prefix])
