"""SDXL training: size ids and conditioning against independent computations, and a trained
tiny-SDXL LoRA's key set and ΔW as diffusers' own SDXL LoRA loader applies it."""

from __future__ import annotations

import contextlib

import pytest
import safetensors
import torch

from charfw.config.models import TrainSettings
from charfw.families import SDXL
from charfw.lora.keys import lora_module_specs
from charfw.request import TrainRequest
from charfw.train import loop
from charfw.train.conditioning import TextConditioner, size_ids


@pytest.fixture(scope="module")
def tiny_xl():
    from modelutil import load_sdxl
    return load_sdxl("builtin:tiny-sdxl")


@pytest.mark.parametrize("original, bucket, flipped, expected", [
    ((1024, 1024), (1024, 1024), False, (1024, 1024, 0, 0, 1024, 1024)),
    ((832, 1216), (832, 1216), True, (1216, 832, 0, 0, 1216, 832)),
    # bucket wider than the image: fitted by height, 576 wide, centred: left (640 - 576) // 2 = 32
    ((600, 1000), (640, 960), False, (1000, 600, 0, 32, 960, 640)),
    # bucket narrower: fitted by width, 704 x 1005.71, top (1024 - 1005.71) // 2 = 9
    ((700, 1000), (704, 1024), False, (1000, 700, 9, 0, 1024, 704)),
    # 1022.98 wide in 1024: left floor(1.02 / 2) = 0; flipped: 1024 - (0 + 1022.98) = 1.02 -> 1
    ((1000, 1001), (1024, 1024), False, (1001, 1000, 0, 0, 1024, 1024)),
    ((1000, 1001), (1024, 1024), True, (1001, 1000, 0, 1, 1024, 1024)),
])
def test_size_ids_as_sd_scripts_computes_them(original, bucket, flipped, expected):
    assert size_ids(original, bucket, flipped) == expected


def test_size_ids_are_what_diffusers_builds_from_the_same_sizes(tiny_xl):
    pipe = tiny_xl.pipeline()
    ids = size_ids((1000, 1001), (1024, 1024), True)
    theirs = pipe._get_add_time_ids((1001, 1000), (0, 1), (1024, 1024), torch.float32,
                                    text_encoder_projection_dim=tiny_xl.text_encoder_2.config.projection_dim)
    assert theirs.tolist() == [list(map(float, ids))]


def test_conditioning_matches_diffusers_sdxl_prompt_encoding(tiny_xl):
    """Penultimate states of both encoders side by side, and bigG's projected pooled output."""
    caption = "krnk, 1girl, from front"
    cond = TextConditioner(tiny_xl, clip_skip=2, trained=True)(
        [caption], "cpu", [size_ids((64, 64), (64, 64), False)])
    w1, w2 = tiny_xl.text_encoder.config.hidden_size, tiny_xl.text_encoder_2.config.hidden_size
    assert cond.context.shape == (1, 77, w1 + w2) and cond.pooled.shape == (1, w2)
    assert cond.time_ids.tolist() == [[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]
    with torch.no_grad():
        embeds, _, pooled, _ = tiny_xl.pipeline().encode_prompt(caption, device="cpu", num_images_per_prompt=1,
                                                                do_classifier_free_guidance=False)
    torch.testing.assert_close(cond.context.detach(), embeds)
    torch.testing.assert_close(cond.pooled.detach(), pooled)
    frozen = TextConditioner(tiny_xl, clip_skip=2, trained=False)
    frozen.precompute([caption], "cpu", contextlib.nullcontext)
    again = frozen([caption, caption], "cpu", [(64, 64, 0, 0, 64, 64)] * 2)
    torch.testing.assert_close(again.context[1], embeds[0])


def _train(toml, tmp, settings, steps=2) -> TrainRequest:
    req = TrainRequest(name="krnk", settings=settings, steps=steps, dataset_toml=toml, model="builtin:tiny-sdxl",
                       output=tmp / "krnk.safetensors", state_dir=tmp / "state", trigger_words=("krnk",),
                       progress=False, family=SDXL)
    loop.reset_accelerate()
    loop.run(req)
    return req


def _modules(path) -> set[str]:
    with safetensors.safe_open(str(path), "pt") as f:
        return {k.partition(".")[0] for k in f.keys()}


@pytest.mark.slow
def test_unet_only_is_the_sdxl_default(dataset_toml, tmp_path):
    req = _train(dataset_toml, tmp_path, TrainSettings(network="lora", dim=4, gradient_checkpointing=False))
    assert not req.recipe.train_text_encoder
    unet = {n for n in lora_module_specs(SDXL, conv3x3=False) if n.startswith("lora_unet_")}
    assert _modules(req.output) == unet and len(unet) == 722   # sd-scripts: "create LoRA for U-Net: 722 modules"
    with safetensors.safe_open(str(req.output), "pt") as f:
        meta = f.metadata()
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert meta["ss_clip_skip"] == "None" and "modelspec.encoder_layer" not in meta


@pytest.mark.slow
def test_trained_sdxl_lora_loads_into_diffusers_with_the_same_delta(dataset_toml, tmp_path, tiny_xl):
    """Every module of a C3Lier with both text encoders lands on its layer with the file's ΔW."""
    from charfw.lora import load_lora
    from charfw.lora.modules import delta_matrix
    from charfw.models.keymap import unet_module_to_ldm

    req = _train(dataset_toml, tmp_path, TrainSettings(network="c3lier", dim=4, lr=1e-2, train_text_encoder=True,
                                                       gradient_checkpointing=False))
    names = _modules(req.output)
    assert names == set(lora_module_specs(SDXL, conv3x3=True))
    assert sum(n.startswith("lora_te1_") for n in names) == 72 and sum(n.startswith("lora_te2_") for n in names) == 192
    assert len(names) == 788 + 72 + 192

    pipe = tiny_xl.pipeline()
    parts = {"lora_unet_": pipe.unet, "lora_te1_": pipe.text_encoder, "lora_te2_": pipe.text_encoder_2}
    layers = {}
    for prefix, model in parts.items():
        paths = [p for p, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
        kohya = unet_module_to_ldm(paths, model.config) if prefix == "lora_unet_" else {
            p: p if p.startswith("text_model.") else "text_model." + p for p in paths}
        layers.update({prefix + kohya[p].replace(".", "_"): (model, p + ".weight") for p in paths})
    before = {id(m): {k: v.clone() for k, v in m.state_dict().items()} for m in parts.values()}
    try:
        pipe.load_lora_weights(str(req.output))
        pipe.fuse_lora()
        pipe.unload_lora_weights()
        lora = load_lora(req.output)
        for name, module in lora.modules.items():
            model, key = layers[name]
            after = model.state_dict()[key]
            got = (after - before[id(model)][key]).reshape(after.shape[0], -1).double()
            want = delta_matrix(module, torch.float64)
            # SDXL conditions on CLIP-L's penultimate layer: its last layer never learns (bigG's does,
            # through the pooled output)
            last = name.startswith("lora_te1_text_model_encoder_layers_11_")
            assert (want.norm() == 0) == last, name
            # fp32 weights: adding ΔW rounds at about 6e-8 of the weight itself
            tol = 1e-4 * want.norm() + 4e-7 * before[id(model)][key].double().norm()
            assert torch.linalg.norm(got - want) <= tol, name
        changed = {n for n, (m, k) in layers.items() if not torch.equal(m.state_dict()[k], before[id(m)][k])}
        assert changed == {n for n, m in lora.modules.items() if delta_matrix(m, torch.float64).norm() > 0}
    finally:
        for model in parts.values():
            model.load_state_dict(before[id(model)])


@pytest.fixture(scope="module")
def xl_files(dataset_toml, tmp_path_factory):
    """One trained tiny-SDXL file per algorithm (text encoders too, fp16 as saved by default)."""
    tmp = tmp_path_factory.mktemp("xl-algos")
    out = {}
    for algo in ("lora", "c3lier", "locon", "loha", "lokr"):
        req = TrainRequest(name=algo, settings=TrainSettings(network=algo, dim=4, lr=1e-2, train_text_encoder=True,
                                                             gradient_checkpointing=False, save_every_n_steps=1000),
                           steps=2, dataset_toml=dataset_toml, model="builtin:tiny-sdxl",
                           output=tmp / f"{algo}.safetensors", state_dir=tmp / algo, progress=False, family=SDXL)
        loop.reset_accelerate()
        out[algo] = loop.run(req)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["lora", "c3lier", "locon", "loha", "lokr"])
def test_block_weights_bake_exactly_into_trained_sdxl_files(xl_files, tmp_path, algo):
    """20 SDXL block weights, negative and zero included: each module's ΔW scales by its block's weight,
    for every algorithm; modules of 0-weight blocks leave the file."""
    from charfw.lora import load_lora, merge_file
    from charfw.lora.blocks import block_of
    from charfw.lora.modules import delta_matrix

    values = [0.5, 1, 0.25, 0, -0.7, 0.3, 1, 2, 0, 0.8, 0.6, -1, 0.4, 1, 0, 0.9, 0.2, 1.5, 0.7, 1]
    weights = dict(zip(SDXL.blocks.blocks, values))
    src = xl_files[algo]
    report = merge_file(src, tmp_path / "baked.safetensors", values)
    assert report["arch"] == "sdxl"
    before, after = load_lora(src), load_lora(tmp_path / "baked.safetensors")
    kept = {n for n in before.modules if weights.get(block_of(n, SDXL), 1.0) != 0}
    assert set(after.modules) == kept and len(kept) < len(before.modules)
    for name in kept:
        w = weights.get(block_of(name, SDXL), 1.0)
        want = w * delta_matrix(before.modules[name], torch.float64)
        got = delta_matrix(after.modules[name], torch.float64)
        assert torch.linalg.norm(got - want) <= 2e-3 * torch.linalg.norm(want) + 1e-12, name


@pytest.mark.slow
def test_compression_keeps_sdxl_deltas_including_3x3_convs(xl_files, tmp_path):
    """At the trained rank nothing is cut: every module (2,000+ in a real SDXL C3Lier, 1,052 here, 3x3
    convs included) keeps its ΔW to fp16 precision; sv_ratio then cuts only the small singular values."""
    from charfw.lora import compress_file, load_lora
    from charfw.lora.modules import delta_matrix
    from charfw.lora.options import CompressOptions

    src = xl_files["c3lier"]
    compress_file(src, tmp_path / "full.safetensors", CompressOptions.of(method="rank", value=4))
    before, full = load_lora(src), load_lora(tmp_path / "full.safetensors")
    assert set(full.modules) == set(before.modules) and len(before.modules) == 1052
    convs = [n for n, m in before.modules.items() if delta_matrix(m, torch.float32).shape[1] % 9 == 0
             and "_in_layers_2" in n]
    assert convs
    for name, m in before.modules.items():
        want = delta_matrix(m, torch.float64)
        assert torch.linalg.norm(delta_matrix(full.modules[name], torch.float64) - want) <= \
            2e-3 * torch.linalg.norm(want) + 1e-12, name
    compress_file(src, tmp_path / "cut.safetensors", CompressOptions.of(method="sv_ratio", value=2))
    cut = load_lora(tmp_path / "cut.safetensors")
    for name, m in before.modules.items():
        want = delta_matrix(m, torch.float64)
        s = torch.linalg.svdvals(want)
        dropped = s[s < s[0] / 2]
        err = torch.linalg.norm(delta_matrix(cut.modules[name], torch.float64) - want)
        assert err <= torch.linalg.norm(dropped) + 2e-3 * torch.linalg.norm(want) + 1e-12, name
