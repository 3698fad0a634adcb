"""Adapters: the exact kohya module sets, zero effect at init, init-weight checks, optimizer rules."""

import collections

import pytest
import torch

from charfw.config.models import TrainSettings
from charfw.errors import CharfwError
from charfw.families import SD15
from charfw.lora.keys import lora_module_specs
from charfw.recipe import network_spec, recipe_of
from charfw.train.network import Network
from charfw.train.optim import build_optimizer, build_scheduler

SUFFIXES = {
    "lora": {"lora_down.weight", "lora_up.weight", "alpha"},
    "c3lier": {"lora_down.weight", "lora_up.weight", "alpha"},
    "locon": {"lora_down.weight", "lora_up.weight", "alpha"},
    "loha": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"},
}


def modules_of(state: dict) -> dict[str, set[str]]:
    out = collections.defaultdict(set)
    for key in state:
        name, _, suffix = key.partition(".")
        out[name].add(suffix)
    return out


@pytest.mark.parametrize("algo", ["lora", "c3lier", "locon", "loha", "lokr"])
def test_module_sets_and_zero_init(tiny, algo):
    net = Network(network_spec(TrainSettings(network=algo, dim=4)), tiny)
    mods = modules_of(net.kohya_state_dict())
    assert set(mods) == set(list(lora_module_specs(SD15, conv3x3=algo != "lora")))
    assert len(mods) == (264 if algo == "lora" else 350)
    assert sum(n.startswith("lora_te_text_model_encoder_layers_") for n in mods) == 72
    for suffixes in mods.values():
        if algo == "lokr":
            assert "lokr_w1" in suffixes and ({"lokr_w2"} <= suffixes or {"lokr_w2_a", "lokr_w2_b"} <= suffixes)
        else:
            assert suffixes == SUFFIXES[algo]
    x, t, ctx = torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.randn(1, 77, 32)
    with torch.no_grad():
        base = tiny.unet(x, t, ctx).sample
        net.apply_to()
        try:
            adapted = tiny.unet(x, t, ctx).sample
        finally:
            net.restore()
        again = tiny.unet(x, t, ctx).sample
    assert torch.allclose(base, adapted, atol=1e-6) and torch.equal(base, again)


def test_lora_scale_and_conv_geometry(tiny):
    net = Network(network_spec(TrainSettings(network="c3lier", dim=8, alpha=2.0)), tiny)
    down = net.get_submodule("lora_unet_down_blocks_0_downsamplers_0_conv")
    assert down.lora_down.stride == (2, 2) and down.lora_down.kernel_size == (3, 3) and down.scale == 0.25
    layer = tiny.unet.down_blocks[0].downsamplers[0].conv
    x = torch.randn(1, layer.in_channels, 8, 8)
    with torch.no_grad():
        down.lora_up.weight.normal_()
        expected = layer(x) + 0.25 * down.lora_up(down.lora_down(x))
        net.apply_to()
        try:
            got = layer(x)
        finally:
            net.restore()
    assert torch.allclose(got, expected, atol=1e-5)


def test_init_weights_must_fit(tiny, tmp_path):
    c3 = Network(network_spec(TrainSettings(network="c3lier", dim=4)), tiny)
    tensors = c3.kohya_state_dict()
    plain = Network(network_spec(TrainSettings(network="lora", dim=4)), tiny)
    with pytest.raises(CharfwError, match="unknown module lora_unet_.*resnets"):
        plain.load_kohya(tensors, tmp_path / "x.safetensors")
    wide = Network(network_spec(TrainSettings(network="c3lier", dim=8)), tiny)
    with pytest.raises(CharfwError, match="shape"):
        wide.load_kohya(tensors, "x")
    other_alpha = Network(network_spec(TrainSettings(network="c3lier", dim=4, alpha="one")), tiny)
    with pytest.raises(CharfwError, match="alpha"):
        other_alpha.load_kohya(tensors, "x")
    loha = Network(network_spec(TrainSettings(network="loha", dim=4)), tiny)
    with pytest.raises(CharfwError, match="another algorithm"):
        loha.load_kohya(tensors, "x")
    partial = {k: v for k, v in tensors.items() if k.startswith("lora_te_")}
    partial["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"] += 1
    fresh = Network(network_spec(TrainSettings(network="c3lier", dim=4)), tiny)
    assert fresh.load_kohya(partial, "x") == 72  # modules absent from the file keep their fresh init
    assert torch.equal(fresh.kohya_state_dict()["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"],
                       partial["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"])


def test_dims_alphas_and_learning_rates():
    assert network_spec(TrainSettings()).dim == 128 and network_spec(TrainSettings()).alpha == 64
    assert network_spec(TrainSettings(network="loha")).dim == 32
    assert network_spec(TrainSettings(alpha="one")).alpha == 1.0
    assert network_spec(TrainSettings(network="c3lier", dim=16)).args == {"conv_dim": "16", "conv_alpha": "8"}
    assert network_spec(TrainSettings(network="loha", dim=16)).args["algo"] == "loha"
    assert network_spec(TrainSettings(network="lora")).args == {}
    assert recipe_of(TrainSettings(lr=1e-4), SD15, 1).text_encoder_lr == pytest.approx(44e-6, rel=1e-9)
    assert recipe_of(TrainSettings(lr=3e-4), SD15, 1).text_encoder_lr == pytest.approx(132e-6, rel=1e-9)
    assert recipe_of(TrainSettings(lr=1.5e-5), SD15, 1).text_encoder_lr == pytest.approx(6e-6, rel=1e-9)   # floor(6.6)
    assert recipe_of(TrainSettings(lr=1e-4, text_encoder_lr=5e-5), SD15, 1).text_encoder_lr == 5e-5


@pytest.mark.parametrize("scheduler", ["cosine_with_restarts", "cosine", "constant", "linear"])
def test_schedules(scheduler):
    p = torch.nn.Parameter(torch.zeros(1))
    recipe = recipe_of(TrainSettings(scheduler=scheduler, lr=1e-4, warmup_steps=2), SD15, 10)
    opt, name = build_optimizer(recipe, [p], [torch.nn.Parameter(torch.zeros(1))], "cpu")
    assert name == "torch.optim.adamw.AdamW"           # no bitsandbytes on CPU
    sched = build_scheduler(recipe, opt)
    lrs = []
    for _ in range(10):
        lrs.append(sched.get_last_lr())
        opt.step()
        sched.step()
    assert lrs[0] == [0.0, 0.0] and lrs[2][0] == pytest.approx(1e-4)           # warm-up, then full lr
    assert lrs[2][1] == pytest.approx(44e-6)                                    # text encoder group
    if scheduler != "constant":
        assert lrs[-1][0] < 0.5e-4


def test_adafactor_relative_step():
    p = torch.nn.Parameter(torch.zeros(4))
    recipe = recipe_of(TrainSettings(optimizer="adafactor"), SD15, 10)
    opt, name = build_optimizer(recipe, [p], [], "cpu")
    assert name == "transformers.optimization.Adafactor(relative_step=True,scale_parameter=True,warmup_init=False)"
    sched = build_scheduler(recipe, opt)
    p.grad = torch.ones(4)
    opt.step()
    sched.step()
    assert sched.get_last_lr()[0] > 0
