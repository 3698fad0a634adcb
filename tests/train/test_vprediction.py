"""v-prediction models with a zero-terminal-SNR schedule (NoobAI-XL V-Pred): detected from the
checkpoint, trained against the velocity, passed to sd-scripts, recorded and sampled as such."""

import shlex
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from charfw.config.models import TrainSettings
from charfw.errors import CharfwError
from charfw.families import SDXL, SDXL_VPRED
from charfw.models.configs import scheduler_config
from charfw.request import TrainRequest
from charfw.sdscripts.command import train_args
from charfw.train.objective import min_snr_weights, target


def scheduler(family):
    from diffusers import DDPMScheduler
    return DDPMScheduler.from_config(scheduler_config(family))


def zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2024, Algorithm 1, written out from the paper."""
    root = (1 - betas).cumprod(0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    bar = root ** 2
    return 1 - torch.cat([bar[:1], bar[1:] / bar[:-1]])


def test_the_schedule_ends_in_pure_noise():
    v, eps = scheduler(SDXL_VPRED), scheduler(SDXL)
    assert v.config.prediction_type == "v_prediction" and eps.config.prediction_type == "epsilon"
    assert torch.allclose(v.betas, zero_terminal_snr(eps.betas), atol=1e-6)
    assert float(v.alphas_cumprod[-1]) == 0 and float(eps.alphas_cumprod[-1]) > 0


@pytest.mark.parametrize("t", [0, 250, 500, 999])
def test_the_target_is_the_velocity(t):
    sched = scheduler(SDXL_VPRED)
    gen = torch.Generator().manual_seed(t)
    x0, noise = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    a = sched.alphas_cumprod[t].double()
    expected = (a.sqrt() * noise.double() - (1 - a).sqrt() * x0.double()).float()
    got = target(sched, x0, noise, torch.tensor([t, t]))
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.equal(target(scheduler(SDXL), x0, noise, torch.tensor([t, t])), noise)    # epsilon: the noise


def test_min_snr_weights_follow_the_prediction_type():
    """sd-scripts' apply_snr_weight: min(SNR, gamma) / (SNR + 1) for v, / SNR for epsilon."""
    t = torch.tensor([10, 500, 999])
    for family, plus in ((SDXL_VPRED, 1), (SDXL, 0)):
        sched = scheduler(family)
        a = sched.alphas_cumprod[t].float()
        snr = a / (1 - a)
        assert torch.allclose(min_snr_weights(sched, t, 5.0), torch.clamp(snr, max=5.0) / (snr + plus), equal_nan=True)
    assert float(min_snr_weights(scheduler(SDXL_VPRED), torch.tensor([999]), 5.0)) == 0   # SNR 0 at the end


def checkpoint(path: Path, *flags: str) -> Path:
    keys = ["model.diffusion_model.input_blocks.0.0.weight", "conditioner.embedders.0.transformer.x", *flags]
    save_file({k: torch.zeros(1) for k in keys}, str(path))
    return path


def test_the_workspace_reads_the_family_from_the_checkpoint(workspace):
    from charfw.workspace import load_project

    (workspace / "models").mkdir()
    checkpoint(workspace / "models/vpred.safetensors", "v_pred", "ztsnr")
    checkpoint(workspace / "models/eps.safetensors")
    path = workspace / "charfw.yaml"
    text = path.read_text()
    path.write_text(text.replace("model: builtin:tiny-sd15", "model: models/vpred.safetensors"))
    assert load_project(workspace).family is SDXL_VPRED
    path.write_text(text.replace("model: builtin:tiny-sd15", "model: models/vpred.safetensors\nfamily: sdxl"))
    with pytest.raises(CharfwError, match="the model is an SDXL v-prediction checkpoint but `family: sdxl` is set"):
        load_project(workspace)
    # a v-prediction merge that does not mark itself: said in charfw.yaml
    path.write_text(text.replace("model: builtin:tiny-sd15", "model: models/eps.safetensors\nfamily: sdxl-vpred"))
    assert load_project(workspace).family is SDXL_VPRED


def test_sd_scripts_gets_both_flags():
    req = TrainRequest(name="k", settings=TrainSettings(), steps=10, dataset_toml=Path("/d.toml"), model="/m.safetensors",
                       output=Path("/o.safetensors"), state_dir=Path("/s"), family=SDXL_VPRED)
    args = train_args(req)
    assert "--v_parameterization" in args and "--zero_terminal_snr" in args and "--no_half_vae" in args
    assert "--v_parameterization" not in shlex.join(train_args(replace(req, family=SDXL)))
    assert req.family.sd_scripts_script == "sdxl_train_network.py"


@pytest.mark.slow
def test_the_tiny_v_prediction_model_trains_records_and_samples_as_one(dataset_toml, tmp_path):
    """builtin:tiny-sdxl-vpred: the loader gives the v-prediction schedule, training writes the file's
    prediction type, and the sampler keeps the schedule with trailing timesteps."""
    from safetensors import safe_open

    from charfw.models import load_model
    from charfw.sample.render import sample_scheduler
    from charfw.train import loop

    sd = load_model("builtin:tiny-sdxl-vpred")
    assert sd.family is SDXL_VPRED and sd.noise_scheduler.config.prediction_type == "v_prediction"
    sampler = sample_scheduler(sd, "euler_a")
    assert sampler.config.prediction_type == "v_prediction" and sampler.config.rescale_betas_zero_snr
    assert sampler.config.timestep_spacing == "trailing"
    with pytest.raises(CharfwError, match="not an SDXL checkpoint: it is an SDXL v-prediction checkpoint"):
        load_model("builtin:tiny-sdxl-vpred", family=SDXL)
    req = TrainRequest(name="krnk", settings=TrainSettings(dim=4, save_every_n_steps=1000, gradient_checkpointing=False),
                       steps=2, dataset_toml=dataset_toml, model="builtin:tiny-sdxl-vpred",
                       output=tmp_path / "out.safetensors", state_dir=tmp_path / "state", family=SDXL_VPRED,
                       progress=False)
    losses = []
    loop.reset_accelerate()
    loop.run(req, on_step=lambda step, loss: losses.append(loss), models=sd)
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    with safe_open(str(req.output), "pt") as f:
        meta = f.metadata()
    assert meta["modelspec.prediction_type"] == "v" and meta["ss_zero_terminal_snr"] == "True"
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and "ss_clip_skip" in meta
