"""builtin:tiny-sd15: deterministic file, loads through the user-checkpoint path, runs a pipeline."""

import hashlib
import subprocess
import sys

import pytest
import torch
from modelutil import load_sd15, write_tiny_sd15

from charfw.models import builtin_path
from charfw.models.build import ldm_names


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_generation_is_deterministic(tiny_path, tmp_path):
    # in a fresh interpreter: nothing (hash seeds, init order) may leak into the bytes
    again = tmp_path / "again.safetensors"
    code = f"from charfw.models import write_random; write_random({str(again)!r}, 'tiny-sd15', 0)"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    assert _sha(again) == _sha(tiny_path)
    other = write_tiny_sd15(tmp_path / "other.safetensors", seed=1)
    assert _sha(other) != _sha(tiny_path)


def test_builtin_is_cached_and_env_overridable(tiny_path, cache_dir, monkeypatch, tmp_path):
    assert tiny_path.parent.parent == cache_dir and tiny_path.suffix == ".safetensors"
    mtime = tiny_path.stat().st_mtime_ns
    assert builtin_path("tiny-sd15", cache_dir) == tiny_path and tiny_path.stat().st_mtime_ns == mtime
    monkeypatch.setenv("CHARFW_CACHE", str(cache_dir))
    assert builtin_path("tiny-sd15") == tiny_path
    assert not list(tmp_path.iterdir())


def test_file_is_single_file_ldm_layout(tiny_tensors):
    prefixes = {k.split(".")[0] for k in tiny_tensors}
    assert prefixes == {"model", "first_stage_model", "cond_stage_model"}
    assert tiny_tensors["first_stage_model.encoder.mid.attn_1.q.weight"].dim() == 4  # 1x1 conv, as in LDM
    assert tiny_tensors["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"].shape == (
        49408, 32)


def test_loaded_tensors_equal_file_tensors(tiny, tiny_tensors):
    names = ldm_names({"unet": tiny.unet, "vae": tiny.vae, "text_encoder": tiny.text_encoder}, "tiny-sd15")
    for model, part in ((tiny.unet, "unet"), (tiny.vae, "vae"), (tiny.text_encoder, "text_encoder")):
        for key, value in model.state_dict().items():
            assert torch.equal(value, tiny_tensors[names[part][key]].reshape(value.shape)), key
    assert tiny.name == "builtin:tiny-sd15" and tiny.arch == "tiny-sd15"
    assert not any(p.requires_grad for p in tiny.unet.parameters())


def test_diffusers_converter_reads_the_file_the_same_way(tiny, tiny_tensors):
    """An independent mapping (diffusers' own LDM converter) gives identical models and UNet output."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint,
                                                     convert_ldm_vae_checkpoint)

    unet = UNet2DConditionModel.from_config(tiny.unet.config)
    unet.load_state_dict(convert_ldm_unet_checkpoint(tiny_tensors, dict(unet.config)), strict=True)
    unet.eval()
    vae_sd = convert_ldm_vae_checkpoint(tiny_tensors, dict(tiny.vae.config))
    assert set(vae_sd) == set(tiny.vae.state_dict())
    for k, v in tiny.vae.state_dict().items():
        assert torch.equal(v, vae_sd[k]), k
    te_sd = convert_ldm_clip_checkpoint(tiny_tensors)
    mine = tiny.text_encoder.state_dict()
    flat = not hasattr(type(tiny.text_encoder)(tiny.text_encoder.config), "text_model")
    te_sd = {(k.removeprefix("text_model.") if flat else k): v for k, v in te_sd.items()}
    assert set(mine) <= set(te_sd)
    assert all(torch.equal(mine[k], te_sd[k]) for k in mine)

    g = torch.Generator().manual_seed(1)
    sample = torch.randn(1, 4, 8, 8, generator=g)
    cond = torch.randn(1, 77, 32, generator=g)
    with torch.no_grad():
        a = tiny.unet(sample, 500, encoder_hidden_states=cond).sample
        b = unet(sample, 500, encoder_hidden_states=cond).sample
    assert a.shape == (1, 4, 8, 8) and torch.isfinite(a).all() and a.abs().mean() > 0
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # same weights; kernels may differ in the last bit


def test_pipeline_runs_two_steps(tiny):
    pipe = tiny.pipeline()
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    out = pipe("krnk, white background", num_inference_steps=2, height=64, width=64, generator=g,
               output_type="np")
    image = out.images
    assert image.shape == (1, 64, 64, 3) and (image >= 0).all() and (image <= 1).all()
    # the pipeline shares the modules and leaves their state dicts alone
    assert pipe.unet is tiny.unet and "text_model" not in dict(tiny.text_encoder.named_children())


def test_fp16_load(tiny_path):
    sd = load_sd15(tiny_path, dtype=torch.float16)
    assert {sd.unet.dtype, sd.vae.dtype, sd.text_encoder.dtype} == {torch.float16}
    assert sd.name == tiny_path.stem and sd.arch == "tiny-sd15" and sd.path == tiny_path
