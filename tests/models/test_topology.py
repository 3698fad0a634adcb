"""The key table against diffusers' own converter, and tiny-vs-SD1.5 module names."""

import pytest
import torch

from charfw.models.build import empty_models, ldm_names


@pytest.fixture(scope="module")
def full():
    m = empty_models("sd15")  # meta device: no memory
    return m["unet"], m["vae"], m["text_encoder"]


def _types(model):
    return {name: type(m).__name__ for name, m in model.named_modules()}


def test_tiny_has_sd15_module_names(full, tiny):
    unet, vae, te = full
    assert _types(tiny.unet) == _types(unet)
    assert _types(tiny.text_encoder) == _types(te)
    assert tiny.text_encoder.config.num_hidden_layers == 12
    assert set(tiny.vae.state_dict()) == set(vae.state_dict())
    # and hence SD1.5's LoRA targets (docs/rules.md §7): 192 U-Net Linear/1x1 modules in the
    # transformers, 278 with every resnet conv/time_emb_proj, shortcut and resampler
    names = _types(tiny.unet)
    attn = [n for n in names if ".attentions." in n and names[n] in ("Linear", "Conv2d")
            and not n.endswith((".norm", ".norm1", ".norm2", ".norm3"))]
    conv = [n for n in names if names[n] in ("Linear", "Conv2d") and (
        ".resnets." in n or ".downsamplers." in n or ".upsamplers." in n)]
    assert len(attn) == 192 and len(attn) + len(conv) == 278
    assert sum(n.endswith("conv_shortcut") for n in names) == 14


def test_tiny_widths_and_latent_geometry(tiny):
    assert tiny.unet.config.block_out_channels == (32, 64, 128, 128) or \
        list(tiny.unet.config.block_out_channels) == [32, 64, 128, 128]
    assert tiny.unet.config.cross_attention_dim == tiny.text_encoder.config.hidden_size == 32
    assert tiny.vae.config.latent_channels == 4
    assert 2 ** (len(tiny.vae.config.block_out_channels) - 1) == 8
    assert tiny.text_encoder.config.vocab_size == 49408
    assert tiny.text_encoder.config.max_position_embeddings == 77


def test_sd15_table_matches_diffusers_converter(full):
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    unet, vae, te = full
    u_names, v_names, t_names = ldm_names({"unet": unet, "vae": vae, "text_encoder": te}, "sd15").values()
    # the real SD1.5 single-file key counts (1131 with the TE position_ids buffer)
    assert (len(u_names), len(v_names), len(t_names)) == (686, 248, 196)
    usd = unet.state_dict()
    ldm = {u_names[k]: usd[k] for k in usd}
    assert "model.diffusion_model.output_blocks.2.1.conv.weight" in ldm      # up block 0: no attention
    assert "model.diffusion_model.output_blocks.5.2.conv.weight" in ldm
    assert "model.diffusion_model.input_blocks.3.0.op.weight" in ldm
    assert "model.diffusion_model.middle_block.1.proj_in.weight" in ldm
    back = convert_ldm_unet_checkpoint(ldm, dict(unet.config))
    assert set(back) == set(usd) and all(back[k] is usd[k] for k in usd)

    vsd = vae.state_dict()
    vldm = {}
    for k, t in vsd.items():
        vldm[v_names[k]] = t[:, :, None, None] if ".mid.attn_1." in v_names[k] and t.dim() == 2 else t
    assert "first_stage_model.decoder.up.3.upsample.conv.weight" in vldm
    assert "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight" in vldm
    back = convert_ldm_vae_checkpoint(vldm, dict(vae.config))
    assert set(back) == set(vsd)
    assert all(tuple(back[k].shape) == tuple(vsd[k].shape) for k in vsd)

    assert all(v.startswith("cond_stage_model.transformer.text_model.") for v in t_names.values())
    assert "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight" in t_names.values()


def test_sd15_loads_strictly_from_ldm_names(full):
    """The whole SD1.5 path (gather, shape checks, strict assign) on meta tensors: no memory used."""
    from charfw.models.checkpoint import TensorFile
    from charfw.models.loader import _assign, _gather

    unet, vae, te = full
    u_names, _, _ = ldm_names({"unet": unet, "vae": vae, "text_encoder": te}, "sd15").values()
    usd = unet.state_dict()
    src = TensorFile(path=__import__("pathlib").Path("fake.safetensors"),
                     tensors={u_names[k]: torch.empty(v.shape, device="meta", dtype=torch.float16)
                              for k, v in usd.items()})
    state = _gather(src, {k: [v] for k, v in u_names.items()}, unet, torch.float32, "sd15", "checkpoint")
    assert len(state) == 686 and all(t.dtype == torch.float32 for t in state.values())
    _assign(unet, state)
