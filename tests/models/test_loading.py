"""User checkpoints: formats, separate VAEs, and every refusal with a clear, located error."""

import pytest
import torch
from modelutil import load_sd15
from safetensors.torch import save_file

from charfw.errors import CharfwError
from charfw.models import model_hash, model_sha256
from charfw.models.tiny import random_state_dict

UNPICKLED = []


class Payload:
    """A non-tensor object in a pickle: must never be reconstructed."""

    def __setstate__(self, state):
        UNPICKLED.append(state)

    def __reduce__(self):
        return (UNPICKLED.append, ("code ran",))


def _part(tensors, prefix, strip=False):
    return {(k[len(prefix):] if strip else k): v for k, v in tensors.items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def other_vae():
    """A different VAE (seed 1) in LDM layout with the first_stage_model. prefix."""
    return _part(random_state_dict("tiny-sd15", seed=1), "first_stage_model.")


def _assert_vae_is(sd, ldm_vae, prefix="first_stage_model."):
    w = sd.vae.encoder.conv_in.weight
    assert torch.equal(w, ldm_vae[prefix + "encoder.conv_in.weight"])
    q = sd.vae.decoder.mid_block.attentions[0].to_q.weight
    assert torch.equal(q, ldm_vae[prefix + "decoder.mid.attn_1.q.weight"].reshape(q.shape))


def test_plain_ckpt_loads(tiny, tiny_tensors, tmp_path):
    path = tmp_path / "plain.ckpt"
    torch.save({"state_dict": dict(tiny_tensors), "global_step": 470000, "epoch": 3}, path)
    sd = load_sd15(path)
    assert sd.name == "plain" and sd.arch == "tiny-sd15"
    for a, b in zip(sd.unet.parameters(), tiny.unet.parameters()):
        assert torch.equal(a, b)


def test_ckpt_with_custom_object_is_refused(tiny_tensors, tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": dict(tiny_tensors), "callbacks": Payload()}, path)
    with pytest.raises(CharfwError) as err:
        load_sd15(path)
    msg = str(err.value)
    assert "evil.ckpt" in msg and "refusing" in msg and ".safetensors" in msg
    assert UNPICKLED == []


def test_missing_file():
    with pytest.raises(CharfwError, match=r"nowhere\.safetensors: checkpoint file not found"):
        load_sd15("/nonexistent/nowhere.safetensors")
    with pytest.raises(CharfwError, match="unknown builtin model"):
        load_sd15("builtin:huge-sd15")


def test_sdxl_keys_are_not_sd15(tmp_path):
    path = tmp_path / "sdxl_base.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
               "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": torch.zeros(768),
               "conditioner.embedders.1.model.ln_final.weight": torch.zeros(1280)}, str(path))
    with pytest.raises(CharfwError, match=r"sdxl_base\.safetensors: not an SD1\.5 checkpoint: .*SDXL"):
        load_sd15(path)


def test_wrong_shapes_are_not_sd15(tmp_path):
    path = tmp_path / "inpainting.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 9, 3, 3),
               "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(320, 1024)},
              str(path))
    with pytest.raises(CharfwError, match=r"inpainting\.safetensors: not an SD1\.5 checkpoint: model\.diffusion_model\."
                                          r"input_blocks\.0\.0\.weight has shape \[320, 9, 3, 3\], SD1\.5 needs "
                                          r"\[320, 4, 3, 3\] \(a model with 9 input channels"):
        load_sd15(path)


def test_tiny_tensors_without_marker_load_as_tiny(tiny, tiny_tensors, tmp_path):
    path = tmp_path / "unmarked.safetensors"
    save_file(dict(tiny_tensors), str(path))
    assert load_sd15(path).arch == "tiny-sd15"


def test_missing_keys_are_named(tiny_tensors, tmp_path):
    tensors = dict(tiny_tensors)
    del tensors["model.diffusion_model.output_blocks.5.2.conv.weight"]
    del tensors["cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.bias"]
    path = tmp_path / "broken.safetensors"
    save_file(tensors, str(path), metadata={"charfw_arch": "tiny-sd15"})
    with pytest.raises(CharfwError) as err:
        load_sd15(path)
    msg = str(err.value)
    assert "broken.safetensors" in msg and "missing" in msg
    assert "model.diffusion_model.output_blocks.5.2.conv.weight" in msg


def test_lora_and_vae_files_given_as_model(tmp_path, other_vae):
    lora = tmp_path / "char.safetensors"
    save_file({"lora_unet_conv_in.lora_down.weight": torch.zeros(4, 4)}, str(lora))
    with pytest.raises(CharfwError, match="char.safetensors: not an SD1.5 checkpoint: it is a LoRA file"):
        load_sd15(lora)
    vae = tmp_path / "vae.safetensors"
    save_file(other_vae, str(vae))
    with pytest.raises(CharfwError, match="looks like a VAE"):
        load_sd15(vae)


def test_separate_vae_overrides_checkpoint_vae(tiny, tiny_path, other_vae, tmp_path):
    # LDM layout with prefix, .safetensors
    with_prefix = tmp_path / "anime-vae.safetensors"
    save_file(other_vae, str(with_prefix))
    sd = load_sd15(tiny_path, vae=with_prefix)
    _assert_vae_is(sd, other_vae)
    assert sd.vae_path == with_prefix
    for a, b in zip(sd.unet.parameters(), tiny.unet.parameters()):
        assert torch.equal(a, b)
    assert not torch.equal(sd.vae.encoder.conv_in.weight, tiny.vae.encoder.conv_in.weight)

    # kl-f8-anime2.ckpt style: no prefix, wrapped in state_dict, with extra non-VAE tensors
    bare = _part(other_vae, "first_stage_model.", strip=True)
    ckpt = tmp_path / "kl-f8-anime2.ckpt"
    torch.save({"state_dict": {**bare, "loss.logvar": torch.zeros(())}}, ckpt)
    _assert_vae_is(load_sd15(tiny_path, vae=ckpt), bare, prefix="")

    # legacy (pre-zip) torch serialization
    legacy = tmp_path / "legacy.pt"
    torch.save(bare, legacy, _use_new_zipfile_serialization=False)
    _assert_vae_is(load_sd15(tiny_path, vae=legacy), bare, prefix="")


def test_separate_vae_in_diffusers_layout(tiny, tiny_path, tmp_path):
    state = {k: v.clone() + 1.0 for k, v in tiny.vae.state_dict().items()}
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file(state, str(path))
    sd = load_sd15(tiny_path, vae=path)
    for k, v in sd.vae.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_checkpoint_without_vae_needs_separate_vae(tiny_tensors, other_vae, tmp_path):
    path = tmp_path / "novae.safetensors"
    save_file({k: v for k, v in tiny_tensors.items() if not k.startswith("first_stage_model.")}, str(path),
              metadata={"charfw_arch": "tiny-sd15"})
    with pytest.raises(CharfwError, match=r"novae\.safetensors: the checkpoint has no VAE \(first_stage_model\.\* tensors\)"):
        load_sd15(path)
    vae = tmp_path / "vae.safetensors"
    save_file(other_vae, str(vae))
    _assert_vae_is(load_sd15(path, vae=vae), other_vae)


def test_bad_vae_file(tiny_path, tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(CharfwError, match=r"nope\.pt: VAE file not found"):
        load_sd15(tiny_path, vae=missing)
    junk = tmp_path / "junk.safetensors"
    save_file({"something.else": torch.zeros(2)}, str(junk))
    with pytest.raises(CharfwError, match=r"junk\.safetensors: not an? .*VAE"):
        load_sd15(tiny_path, vae=junk)
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    with pytest.raises(CharfwError, match=r"notes\.ckpt: not a \.safetensors or torch checkpoint"):
        load_sd15(tiny_path, vae=text)


def test_model_hashes(tmp_path):
    import hashlib
    data = bytes(range(256)) * (3 * 4096)  # 3 MiB
    path = tmp_path / "m.safetensors"
    path.write_bytes(data)
    assert model_hash(path) == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    assert model_sha256(path) == hashlib.sha256(data).hexdigest()
    small = tmp_path / "small.bin"
    small.write_bytes(b"x" * 1000)
    assert model_hash(small) == "e3b0c442"  # nothing at 1 MiB: sha256 of no bytes, as sd-scripts gets
    with pytest.raises(CharfwError, match="not found"):
        model_hash(tmp_path / "absent.safetensors")


def test_old_text_encoder_layout_and_extra_tensors(tiny, tiny_tensors, tmp_path):
    """Checkpoints from before transformers' `text_model` level, with EMA and buffer extras, still load."""
    old = "cond_stage_model.transformer.text_model."
    tensors = {("cond_stage_model.transformer." + k[len(old):] if k.startswith(old) else k): v
               for k, v in tiny_tensors.items()}
    tensors["cond_stage_model.transformer.embeddings.position_ids"] = torch.arange(77)[None]
    tensors["model_ema.decay"] = torch.tensor(0.9999)
    tensors["alphas_cumprod"] = torch.ones(1000)
    path = tmp_path / "old.safetensors"
    save_file(tensors, str(path))
    sd = load_sd15(path)
    for a, b in zip(sd.text_encoder.parameters(), tiny.text_encoder.parameters()):
        assert torch.equal(a, b)
