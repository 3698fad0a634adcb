"""The loss and noise options users bring from sd-scripts: loss_type (l1, huber, smooth_l1 with their
threshold schedules), debiased estimation, input perturbation noise and pyramid noise. Each follows
sd-scripts' formula, reaches both trainers and the metadata, and retrains only what sets it."""

import json
import math
from pathlib import Path

import pytest
import torch

from charfw.config.models import TrainSettings
from charfw.families import SD15, SDXL_VPRED
from charfw.fingerprint import run_config
from charfw.models.configs import scheduler_config
from charfw.request import TrainRequest
from charfw.sdscripts.command import train_args
from charfw.train.objective import (debiased_weights, diffusion_loss, draw_noise, huber_threshold, perturbed,
                                    pixel_error, pyramid_noise)

OPTIONS = dict(loss_type="huber", huber_c=0.2, huber_schedule="exponential", huber_scale=1.5,
               debiased_estimation_loss=True, ip_noise_gamma=0.1, multires_noise_iterations=6,
               multires_noise_discount=0.4, loraplus_lr_ratio=4)


def scheduler(family=SD15):
    from diffusers import DDPMScheduler
    return DDPMScheduler.from_config(scheduler_config(family))


def test_pixel_errors_are_sd_scripts_formulas():
    pred, goal = torch.tensor([[0.0, 1.0, -3.0]]), torch.tensor([[0.5, 1.0, 1.0]])
    c = torch.tensor([0.2])
    d = pred - goal
    assert torch.equal(pixel_error(pred, goal), d ** 2)
    assert torch.equal(pixel_error(pred, goal, "l1"), d.abs())
    assert torch.allclose(pixel_error(pred, goal, "huber", c), 2 * 0.2 * (torch.sqrt(d ** 2 + 0.04) - 0.2))
    assert torch.allclose(pixel_error(pred, goal, "smooth_l1", c), 2 * (torch.sqrt(d ** 2 + 0.04) - 0.2))


def test_huber_thresholds_follow_the_schedule():
    sched, t = scheduler(), torch.tensor([0, 500, 999])
    exp = huber_threshold(sched, t, 0.1, "exponential", 2.0)
    assert torch.allclose(exp, torch.exp(math.log(0.1) / 1000 * t.float()) * 2.0)
    assert torch.equal(huber_threshold(sched, t, 0.1, "constant", 2.0), torch.full((3,), 0.2))
    ac = sched.alphas_cumprod[t].float()
    assert torch.allclose(huber_threshold(sched, t, 0.1, "snr", 1.0), 0.9 / (1 + ((1 - ac) / ac) ** 0.5) ** 2 + 0.1)


def test_debiased_weights():
    t = torch.tensor([0, 300, 998])
    for family, expected in ((SD15, lambda s: 1 / s.sqrt()), (SDXL_VPRED, lambda s: 1 / (s + 1))):
        sched = scheduler(family)
        ac = sched.alphas_cumprod[t].float()
        s = torch.clamp(ac / (1 - ac), max=1000)
        assert torch.allclose(debiased_weights(sched, t), expected(s))
    assert float(debiased_weights(scheduler(), torch.tensor([0]))) == pytest.approx(1 / math.sqrt(1000))  # capped


def test_pyramid_and_input_noise():
    gen = lambda: torch.Generator().manual_seed(3)   # noqa: E731
    plain, _ = draw_noise((2, 4, 16, 16), gen())
    multi, _ = draw_noise((2, 4, 16, 16), gen(), multires=(6, 0.4))
    assert abs(float(multi.std()) - 1) < 1e-5 and not torch.equal(plain, multi)
    assert torch.equal(multi, draw_noise((2, 4, 16, 16), gen(), multires=(6, 0.4))[0])    # the step's seed decides
    one_level = pyramid_noise(torch.zeros(1, 1, 8, 8), gen(), 1, 0.4)    # level 0: full-size noise, unit std
    assert one_level.shape == (1, 1, 8, 8) and abs(float(one_level.std()) - 1) < 1e-5
    assert perturbed(plain, gen(), None) is plain
    bumped = perturbed(plain, gen(), 0.1)
    assert 0.05 < float((bumped - plain).std()) < 0.15


def test_input_perturbation_changes_the_input_not_the_target():
    """The loss with extra input noise differs from the loss without, only through the U-Net's input."""
    from types import SimpleNamespace

    seen = []

    def unet(x, t, context, **_):
        seen.append(x.clone())
        return SimpleNamespace(sample=torch.zeros_like(x))

    sched = scheduler()
    x0, noise, t = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4), torch.tensor([400])
    plain = diffusion_loss(unet, sched, x0, None, noise, t)
    bumped = diffusion_loss(unet, sched, x0, None, noise, t, input_noise=noise + 0.5)
    assert torch.equal(plain, bumped)          # a zero prediction: the same target, the same loss
    assert not torch.equal(seen[0], seen[1])   # but another input


def request(**settings):
    return TrainRequest(name="k", settings=TrainSettings(**settings), steps=10, dataset_toml=Path("/d.toml"),
                        model="/m.safetensors", output=Path("/o.safetensors"), state_dir=Path("/s"), family=SD15)


def test_each_option_reaches_sd_scripts_the_recipe_and_the_run_key():
    args = train_args(request(**OPTIONS))
    for flag in ("--loss_type=huber", "--huber_c=0.2", "--huber_schedule=exponential", "--huber_scale=1.5",
                 "--debiased_estimation_loss", "--ip_noise_gamma=0.1", "--multires_noise_iterations=6",
                 "--multires_noise_discount=0.4", "loraplus_lr_ratio=4"):
        assert flag in args, flag
    plain = train_args(request())
    assert not any(a.startswith(("--loss_type", "--huber", "--debiased", "--ip_noise", "--multires")) for a in plain)
    base = run_config(request())["settings"]
    assert not set(OPTIONS) & set(base)       # added options at their defaults: existing LoRAs keep their keys
    for name, value in OPTIONS.items():
        assert run_config(request(**{name: value}))["settings"][name] == value


@pytest.mark.slow
def test_a_run_with_every_option_trains_and_records_them(dataset_toml, tmp_path):
    from safetensors import safe_open

    from charfw.report.charts import read_scalars
    from charfw.train import loop

    req = TrainRequest(name="krnk", settings=TrainSettings(dim=4, save_every_n_steps=1000, gradient_checkpointing=False,
                                                           min_snr_gamma=5, scale_weight_norms=1e-3, **OPTIONS),
                       steps=2, dataset_toml=dataset_toml, model="builtin:tiny-sd15", output=tmp_path / "o.safetensors",
                       state_dir=tmp_path / "state", family=SD15, progress=False, log_dir=tmp_path / "logs")
    losses = []
    loop.reset_accelerate()
    loop.run(req, on_step=lambda step, loss: losses.append(loss))
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    with safe_open(str(req.output), "pt") as f:
        meta = f.metadata()
    assert (meta["ss_loss_type"], meta["ss_huber_c"], meta["ss_huber_schedule"], meta["ss_huber_scale"]) == \
        ("huber", "0.2", "exponential", "1.5")
    assert (meta["ss_debiased_estimation"], meta["ss_ip_noise_gamma"], meta["ss_multires_noise_iterations"],
            meta["ss_multires_noise_discount"]) == ("True", "0.1", "6", "0.4")
    assert json.loads(meta["ss_network_args"])["loraplus_lr_ratio"] == "4" and meta["ss_scale_weight_norms"] == "0.001"
    scalars = read_scalars(tmp_path / "logs" / "krnk")      # sd-scripts' max_norm/* scalars, every step
    assert [step for step, _ in scalars["max_norm/keys_scaled"]] == [1, 2]
    assert all(value <= 1e-3 * 1.0001 for _, value in scalars["max_norm/max_key_norm"])


def test_noise_offset_is_sd_scripts_per_channel_constant():
    """sd-scripts' apply_noise_offset (no adaptive scale): noise + offset * randn(B, C, 1, 1)."""
    gen = torch.Generator().manual_seed(5)
    base = torch.randn((2, 4, 8, 8), generator=gen)
    shift = torch.randn((2, 4, 1, 1), generator=gen)
    noise, _ = draw_noise((2, 4, 8, 8), torch.Generator().manual_seed(5), noise_offset=0.05)
    assert torch.allclose(noise, base + 0.05 * shift)


def test_scale_weight_norms_caps_each_module(tiny):
    """sd-scripts' max-norm regularization on the packed network: a module above the cap is scaled back to
    it through both factors (in the packed parameter), one below it is left alone."""
    from charfw.recipe import network_spec
    from charfw.train.network import Network

    net = Network(network_spec(TrainSettings(network="c3lier", dim=4)), tiny)
    net.pack()
    big, small = net.names[0], net.names[1]
    for name, value in ((big, 1.0), (small, 1e-3)):
        getattr(net, name).lora_up.weight.fill_(value)

    def norm(name):
        m = getattr(net, name)
        up, down = m.lora_up.weight, m.lora_down.weight
        return float((up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)).norm()) * m.scale

    before_small = norm(small)
    assert norm(big) > 1.0 > before_small
    flats = [g.flat.detach().clone() for g in net.packed]
    scaled, mean, largest = net.scale_weight_norms(1.0)
    assert scaled >= 1 and norm(big) == pytest.approx(1.0, rel=1e-5) and norm(small) == pytest.approx(before_small)
    assert largest == pytest.approx(1.0, rel=1e-5)
    assert any(not torch.equal(a, g.flat.detach()) for a, g in zip(flats, net.packed))   # written to the packed factors
    assert "--scale_weight_norms=1" in train_args(request(scale_weight_norms=1.0))


def test_loraplus_moves_the_ups_faster(tiny):
    """LoRA+ (loraplus_lr_ratio 16): after one AdamW step on unit gradients the up factors moved 16 times as
    far as the down factors, in both groups; the command and the metadata name the ratio."""
    from charfw.recipe import recipe_of
    from charfw.train.network import Network
    from charfw.train.optim import build_optimizer

    settings = TrainSettings(network="c3lier", dim=4, optimizer="adamw", loraplus_lr_ratio=16)
    recipe = recipe_of(settings, SD15, 10)
    net = Network(recipe.network, tiny)
    net.pack()
    unet, te = net.param_groups()
    assert len(unet) == len(te) == 2 and len(net.up_params()) == 2
    opt, _ = build_optimizer(recipe, unet, te, "cpu", net.up_params())
    assert [g["lr"] for g in opt.param_groups] == [recipe.lr, recipe.text_encoder_lr, recipe.lr * 16,
                                                   recipe.text_encoder_lr * 16]
    before = [p.detach().clone() for p in unet + te]
    for p in unet + te:
        p.grad = torch.ones_like(p)
    opt.step()
    moved = [float((p.detach() - b).abs().mean()) for p, b in zip(unet + te, before)]
    assert moved[1] / moved[0] == pytest.approx(16, rel=0.02) and moved[3] / moved[2] == pytest.approx(16, rel=0.02)
    assert "loraplus_lr_ratio=16" in train_args(request(loraplus_lr_ratio=16))
    assert json.loads(recipe.network.args_json())["loraplus_lr_ratio"] == "16"


def test_loraplus_needs_a_lora_network():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="LoRA\\+ .* applies to the lora and c3lier networks, not loha"):
        TrainSettings(network="loha", loraplus_lr_ratio=4)
