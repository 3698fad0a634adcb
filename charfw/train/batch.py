"""One batch's loss as the recipe draws it: noise and timesteps from the step's generator, the captions'
conditioning, the objective (charfw.train.objective). The training step and validation share it."""

from __future__ import annotations

import torch

from charfw.recipe import Recipe
from charfw.train.conditioning import TextConditioner
from charfw.train.dataset import Dataset
from charfw.train.objective import diffusion_loss, draw_noise, perturbed
from charfw.train.transfer import to_device


def batch_loss(sd, recipe: Recipe, accelerator, x0: torch.Tensor, conditioner: TextConditioner, captions: list[str],
               sizes: list[tuple[int, ...]], gen: torch.Generator, mask: torch.Tensor | None = None,
               weights: torch.Tensor | None = None, timesteps: torch.Tensor | None = None) -> torch.Tensor:
    """The mean loss of a batch (with autograd where enabled). `mask`: the pixels' loss weights (masked_loss);
    `weights`: the samples' (prior_loss_weight); `timesteps`: fixed ones instead of drawn (validation)."""
    device = accelerator.device
    multires = (recipe.multires_noise_iterations, recipe.multires_noise_discount) \
        if recipe.multires_noise_iterations else None
    noise, drawn = draw_noise(tuple(x0.shape), gen, sd.noise_scheduler.config.num_train_timesteps,
                              recipe.noise_offset, multires)
    input_noise = perturbed(noise, gen, recipe.ip_noise_gamma) if recipe.ip_noise_gamma else None
    with accelerator.autocast():
        cond = conditioner(captions, device, sizes)
        return diffusion_loss(sd.unet, sd.noise_scheduler, x0, cond.context, to_device(noise, device),
                              to_device(drawn if timesteps is None else timesteps, device), recipe.min_snr_gamma, mask,
                              input_noise=None if input_noise is None else to_device(input_noise, device),
                              loss_type=recipe.loss_type,
                              huber=(recipe.huber_c, recipe.huber_schedule, recipe.huber_scale), debiased=recipe.debiased_estimation, sample_weights=weights, **cond.unet_kwargs())


def prior_weights(datasets: list[Dataset], samples, prior_loss_weight: float) -> torch.Tensor | None:
    """Per-sample loss weights: `prior_loss_weight` for regularization images, 1 for the rest (None: all 1)."""
    regs = [datasets[s.dataset].subsets[datasets[s.dataset].images[s.image].subset].is_reg for s in samples]
    if prior_loss_weight == 1.0 or not any(regs):
        return None
    return torch.tensor([prior_loss_weight if r else 1.0 for r in regs])


def compute_dtype(accelerator) -> torch.dtype | None:
    """The dtype autocast computes in (the adapters' factors are cast to it once per step); None: fp32."""
    if accelerator.device.type == "cpu":
        return None
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision)


