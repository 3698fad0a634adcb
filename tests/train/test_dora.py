"""DoRA (LyCORIS dora_wd) for LoCon and C3Lier: trained by both trainers, saved as dora_scale, applied as the
loaders apply it, merged exactly at 0/1 and refused elsewhere."""

import json

import pytest
import torch
import torch.nn.functional as F
from test_train import FAST, job, modules, read, run

from charfw.config.models import TrainSettings
from charfw.errors import CharfwError
from charfw.families import SD15
from charfw.lora.keys import lora_module_specs


def test_dora_is_for_locon_and_c3lier_only():
    assert TrainSettings(network="c3lier", dora_wd=True).dora_wd
    with pytest.raises(ValueError, match="dora_wd applies to the locon and c3lier networks, not loha"):
        TrainSettings(network="loha", dora_wd=True)
    with pytest.raises(ValueError, match="LoRA\\+ .* and dora_wd"):
        TrainSettings(network="c3lier", dora_wd=True, loraplus_lr_ratio=16)


def test_sd_scripts_trains_dora_through_lycoris(tmp_path):
    from charfw.request import TrainRequest
    from charfw.sdscripts.command import train_args

    req = TrainRequest(name="krnk", settings=TrainSettings(network="c3lier", dora_wd=True, dim=8), steps=10,
                       dataset_toml=tmp_path / "a.toml", model="builtin:tiny-sd15", output=tmp_path / "o.safetensors",
                       state_dir=tmp_path / "s", family=SD15)
    args = train_args(req)
    assert "--network_module=lycoris.kohya" in args
    i = args.index("--network_args")
    assert args[i + 1:i + 6] == ["conv_dim=8", "conv_alpha=4", "algo=lora", "dora_wd=True", "wd_on_output=False"]
    assert req.recipe.network.args["algo"] == "locon"   # what ss_network_args records


@pytest.mark.slow
@pytest.mark.parametrize("network", ["c3lier", "locon"])
def test_a_dora_run_writes_dora_scale_that_loaders_apply_as_trained(dataset_toml, tmp_path, tiny, network):
    """Every module gets a dora_scale (one magnitude per input channel); W' = (W + ΔW) · m / ‖W + ΔW‖ per
    input column, as A1111's Lora extension, Forge and ComfyUI apply a (1, in) dora_scale, is what the trained
    module computes; a FULL merge keeps the file's tensors bit for bit and a 0.5 merge is refused."""
    from charfw.lora.io import load_lora
    from charfw.lora.merge import merge_file
    from charfw.lora.modules import delta_matrix
    from charfw.recipe import network_spec
    from charfw.train.network import Network

    settings = TrainSettings(network=network, dora_wd=True, lr=1e-2, save_precision="float", **FAST)
    out = run(job(dataset_toml, tmp_path, settings, 2))
    tensors, meta = read(out)
    mods = modules(tensors)
    assert set(mods) == set(lora_module_specs(SD15, conv3x3=True))
    assert all(s == {"lora_down.weight", "lora_up.weight", "alpha", "dora_scale"} for s in mods.values())
    args = json.loads(meta["ss_network_args"])
    assert args["dora_wd"] == "True" and args["algo"] == "locon" and meta["ss_network_module"] == "lycoris.kohya"

    lora = load_lora(out)
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    m = lora.modules[name]
    net = Network(network_spec(settings), tiny, text_encoders=False)
    net.load_kohya({k: v for k, v in tensors.items() if k.startswith("lora_unet")}, out)
    layer = net.get_submodule(name)
    base = layer.org_module[0].weight.detach().float()
    merged = base + delta_matrix(m).reshape(base.shape)
    scale = m.tensors["dora_scale"].float()
    assert scale.shape == (1, base.shape[1])
    loader = merged * (scale / merged.norm(dim=0, keepdim=True))
    x = torch.randn(3, base.shape[1])
    net.apply_to()
    try:
        with torch.no_grad():
            trained = layer(x) - F.linear(x, base, layer.org_module[0].bias)
    finally:
        net.restore()
    assert torch.allclose(trained, F.linear(x, loader - base), atol=1e-5)
    assert not torch.allclose(scale.flatten(), base.norm(dim=0))  # the magnitude trained

    full = tmp_path / "full.safetensors"
    merge_file(out, full, [1.0] * 26)
    merged_tensors = read(full)[0]
    assert merged_tensors.keys() == tensors.keys()
    assert all(torch.equal(merged_tensors[k], v) for k, v in tensors.items())
    with pytest.raises(CharfwError, match="DoRA module cannot be scaled exactly by 0.5"):
        merge_file(out, tmp_path / "half.safetensors", [0.5] * 26)
