"""SDXL single-file checkpoints: the key table, OpenCLIP bigG, builtin:tiny-sdxl and family errors."""

import pytest
import torch
from modelutil import load_sd15, load_sdxl
from safetensors.torch import save_file

from charfw.errors import CharfwError
from charfw.families import SD15, SDXL
from charfw.models import load_model, openclip
from charfw.models.build import checkpoint_tensors, empty_models, ldm_names


@pytest.fixture(scope="module")
def full():
    return empty_models("sdxl")  # meta device: no memory


def _types(model):
    return {name: type(m).__name__ for name, m in model.named_modules()}


def test_sdxl_key_set_is_the_real_single_file_layout(full):
    names = ldm_names(full, "sdxl")
    # SDXL base 1.0's single file holds 2515 tensors: these 2513 plus te1's position_ids and te2's logit_scale
    counts = {part: len(table) for part, table in names.items()}
    assert counts == {"unet": 1680, "vae": 248, "text_encoder": 196}
    assert len(openclip.checkpoint_keys(32)) == 389
    unet = set(names["unet"].values())
    for key in ("model.diffusion_model.label_emb.0.0.weight", "model.diffusion_model.label_emb.0.2.bias",
                "model.diffusion_model.input_blocks.7.1.transformer_blocks.9.attn2.to_k.weight",
                "model.diffusion_model.middle_block.1.transformer_blocks.9.ff.net.2.weight",
                "model.diffusion_model.output_blocks.2.2.conv.weight",      # up level 0: attention, then upsampler
                "model.diffusion_model.output_blocks.5.2.conv.weight",
                "model.diffusion_model.input_blocks.6.0.op.weight"):
        assert key in unet, key
    assert "model.diffusion_model.output_blocks.8.2.conv.weight" not in unet
    assert all(v.startswith("conditioner.embedders.0.transformer.text_model.")
               for v in names["text_encoder"].values())


def test_sdxl_unet_table_matches_diffusers_converter(full):
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    unet = full["unet"]
    names = ldm_names(full, "sdxl")["unet"]
    usd = unet.state_dict()
    back = convert_ldm_unet_checkpoint({names[k]: usd[k] for k in usd}, dict(unet.config))
    assert set(back) == set(usd) and all(back[k] is usd[k] for k in usd)


def test_tiny_sdxl_has_sdxl_topology(full, tiny_xl):
    assert _types(tiny_xl.unet) == _types(full["unet"])
    assert _types(tiny_xl.text_encoder) == _types(full["text_encoder"])
    assert _types(tiny_xl.text_encoder_2) == _types(full["text_encoder_2"])
    assert set(tiny_xl.vae.state_dict()) == set(full["vae"].state_dict())
    cfg = tiny_xl.unet.config
    assert list(cfg.transformer_layers_per_block) == [1, 2, 10]
    assert cfg.cross_attention_dim == tiny_xl.text_encoder.config.hidden_size + tiny_xl.text_encoder_2.config.hidden_size
    assert cfg.projection_class_embeddings_input_dim == 6 * cfg.addition_time_embed_dim + \
        tiny_xl.text_encoder_2.config.projection_dim
    assert tiny_xl.text_encoder_2.config.num_hidden_layers == 32
    assert tiny_xl.vae.config.scaling_factor == 0.13025
    assert tiny_xl.family is SDXL and tiny_xl.arch == "tiny-sdxl"


def test_tiny_sdxl_file_has_every_real_sdxl_key_family(tiny_xl_tensors, full):
    real = {k.split(".")[0] + "." + k.split(".")[1] for k in checkpoint_tensors(
        {p: m.state_dict() for p, m in full.items()}, "sdxl", ldm_names(full, "sdxl"))}
    mine = {k.split(".")[0] + "." + k.split(".")[1] for k in tiny_xl_tensors}
    assert mine == real
    tiny_names = {k for k in tiny_xl_tensors}
    full_names = set(ldm_names(full, "sdxl")["unet"].values())
    assert {k for k in tiny_names if k.startswith("model.diffusion_model.")} == full_names


def test_openclip_conversion_matches_diffusers(tiny_xl, tiny_xl_tensors):
    """diffusers' own OpenCLIP converter reads the file into the same bigG encoder the loader built."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    theirs = convert_open_clip_checkpoint(tiny_xl.text_encoder_2, tiny_xl_tensors,
                                          prefix="conditioner.embedders.1.model.")
    mine = tiny_xl.text_encoder_2.state_dict()
    theirs = {k if k in mine else "text_model." + k: v for k, v in theirs.items()}
    assert set(mine) <= set(theirs)
    for k, v in mine.items():
        assert torch.equal(v, theirs[k]), k


def test_openclip_round_trip():
    layers, width = 2, 8
    hf = {"text_model.embeddings.token_embedding.weight": torch.randn(10, width),
          "text_model.embeddings.position_embedding.weight": torch.randn(5, width),
          "text_model.final_layer_norm.weight": torch.randn(width),
          "text_model.final_layer_norm.bias": torch.randn(width),
          "text_projection.weight": torch.randn(width, width)}
    for n in range(layers):
        for leaf in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                     "layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2"):
            shape = (width, width) if "proj" in leaf or "mlp" in leaf else (width,)
            hf[f"text_model.encoder.layers.{n}.{leaf}.weight"] = torch.randn(shape)
            hf[f"text_model.encoder.layers.{n}.{leaf}.bias"] = torch.randn(width)
    oc = openclip.to_openclip(hf, layers)
    assert set(oc) == set(openclip.checkpoint_keys(layers))
    q = hf["text_model.encoder.layers.1.self_attn.q_proj.weight"]
    assert torch.equal(oc[openclip.PREFIX + "transformer.resblocks.1.attn.in_proj_weight"][:width], q)
    assert torch.equal(oc[openclip.PREFIX + "text_projection"], hf["text_projection.weight"].t())
    back = openclip.from_openclip(oc.__getitem__, layers)
    assert set(back) == set(hf) and all(torch.equal(back[k], hf[k]) for k in hf)


def test_pooled_output_is_the_projected_eos_state(tiny_xl):
    """What SDXL conditions on: bigG's projected output at <|endoftext|> (tokenizer 2 pads with '!' = id 0)."""
    ids = tiny_xl.tokenizer_2(["krnk, 1girl"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert ids[0, -1] == 0 and ids[0, 0] == 49406 and (ids[0] == 49407).sum() == 1
    with torch.no_grad():
        out = tiny_xl.text_encoder_2(ids, output_hidden_states=True)
        eos = int((ids[0] == 49407).nonzero()[0])
        by_hand = tiny_xl.text_encoder_2.text_projection(
            tiny_xl.text_encoder_2.text_model.final_layer_norm(out.hidden_states[-1])[0, eos])
    torch.testing.assert_close(out.text_embeds[0], by_hand)


def test_family_is_detected_and_wrong_family_is_one_clear_error(tiny_xl_path, tiny_path):
    assert load_model(tiny_xl_path).family is SDXL
    assert load_model(tiny_path).family is SD15
    with pytest.raises(CharfwError, match=rf"{tiny_xl_path.name}: not an SD1\.5 checkpoint: it is an SDXL checkpoint"):
        load_sd15(tiny_xl_path)
    with pytest.raises(CharfwError, match=rf"{tiny_path.name}: not an SDXL checkpoint: it is an SD1\.5 checkpoint"):
        load_sdxl(tiny_path)


def test_unmarked_tiny_sdxl_loads_as_tiny_sdxl(tiny_xl_tensors, tmp_path):
    path = tmp_path / "unmarked-xl.safetensors"
    save_file(dict(tiny_xl_tensors), str(path))
    assert load_model(path).arch == "tiny-sdxl"


def test_missing_bigg_tensor_is_named(tiny_xl_tensors, tmp_path):
    tensors = dict(tiny_xl_tensors)
    del tensors["conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight"]
    path = tmp_path / "broken-xl.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(CharfwError, match=r"broken-xl\.safetensors: incomplete tiny-sdxl checkpoint: 1 tensors of "
                                          r"the second text encoder .*\.resblocks\.31\.attn\.in_proj_weight"):
        load_model(path)


def test_sdxl_pipeline_renders(tiny_xl):
    pipe = tiny_xl.pipeline()
    pipe.set_progress_bar_config(disable=True)
    out = pipe("krnk", num_inference_steps=2, height=64, width=64, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 64, 64, 3) and (out >= 0).all() and (out <= 1).all()


def test_model_random_writes_a_loadable_single_file_checkpoint(tmp_path, tiny_xl_tensors):
    from charfw.cli import main

    out = tmp_path / "rand-xl.safetensors"
    assert main(["model", "random", "tiny-sdxl", str(out), "--dtype", "fp32"]) == 0
    sd = load_model(out)
    assert sd.family is SDXL and sd.arch == "tiny-sdxl"
    from safetensors.torch import load_file
    written = load_file(str(out))
    assert written.keys() == tiny_xl_tensors.keys()
    assert all(torch.equal(written[k], tiny_xl_tensors[k]) for k in written)   # same seed, same bytes
    assert main(["model", "random", "tiny-sd15", str(tmp_path / "half.safetensors"), "--seed", "3"]) == 0
    assert load_file(str(tmp_path / "half.safetensors"))["model.diffusion_model.out.2.weight"].dtype == torch.float16
