"""The training objective SD1.5 and SDXL share, as sd-scripts computes it.

DDPM forward process (scaled-linear betas 0.00085-0.012, 1000 steps, from the model's
scheduler, rescaled to zero terminal SNR for such a model), uniform timesteps, MSE against
the noise (epsilon prediction) or the velocity v = sqrt(a)·noise - sqrt(1-a)·x0 (v-prediction:
what the scheduler's prediction_type says, as sd-scripts' --v_parameterization). Optional
noise offset and min-SNR-gamma weighting. Random draws take an explicit generator so a step's noise
depends only on (seed, step). The conditioning lives in charfw.train.conditioning.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def draw_noise(shape: tuple[int, ...], generator: torch.Generator, num_timesteps: int = 1000,
               noise_offset: float | None = None, multires: tuple[int, float] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise, timesteps) on the CPU, drawn as sd-scripts draws them: noise offset adds a per-channel
    constant, `multires` (iterations, discount) pyramid noise, then the timesteps."""
    noise = torch.randn(shape, generator=generator)
    if noise_offset:
        noise = noise + noise_offset * torch.randn((shape[0], shape[1], 1, 1), generator=generator)
    if multires:
        noise = pyramid_noise(noise, generator, *multires)
    timesteps = torch.randint(0, num_timesteps, (shape[0],), generator=generator)
    return noise, timesteps


def pyramid_noise(noise: torch.Tensor, generator: torch.Generator, iterations: int, discount: float) -> torch.Tensor:
    """Multi-resolution noise (sd-scripts' pyramid_noise_like): coarser noise upsampled and added with
    weights discount^i, each level 2-4x coarser (a random factor), rescaled to unit variance."""
    b, c, h, w = noise.shape
    for i in range(iterations):
        r = float(torch.rand((), generator=generator)) * 2 + 2
        hn, wn = max(1, int(h / r ** i)), max(1, int(w / r ** i))
        coarse = torch.randn((b, c, hn, wn), generator=generator)
        noise = noise + F.interpolate(coarse, size=(h, w), mode="bilinear") * discount ** i
        if hn == 1 or wn == 1:
            break
    return noise / noise.std()


def perturbed(noise: torch.Tensor, generator: torch.Generator, gamma: float | None) -> torch.Tensor:
    """The noise the input is made with: with input perturbation (ip_noise_gamma), extra noise the target
    does not have (sd-scripts: add_noise(latents, noise + gamma * randn))."""
    if not gamma:
        return noise
    return noise + gamma * torch.randn(noise.shape, generator=generator)


def snr(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    ac = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    return ac / (1 - ac)


def debiased_weights(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """sd-scripts' debiased estimation: 1/sqrt(SNR) (v-prediction 1/(SNR+1)), SNR capped at 1000."""
    s = torch.clamp(snr(scheduler, timesteps), max=1000)
    return 1 / (s + 1) if predicts_velocity(scheduler) else 1 / torch.sqrt(s)


def huber_threshold(scheduler, timesteps: torch.Tensor, c: float, schedule: str, scale: float) -> torch.Tensor:
    """The per-sample threshold of the huber / smooth_l1 losses, as sd-scripts schedules it."""
    if schedule == "exponential":
        alpha = -math.log(c) / scheduler.config.num_train_timesteps
        return torch.exp(-alpha * timesteps.float()) * scale
    if schedule == "snr":
        ac = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
        sigmas = ((1.0 - ac) / ac) ** 0.5
        return (1 - c) / (1 + sigmas) ** 2 + c
    return torch.full(timesteps.shape, c * scale, device=timesteps.device)


def pixel_error(pred: torch.Tensor, goal: torch.Tensor, loss_type: str = "l2",
                threshold: torch.Tensor | None = None) -> torch.Tensor:
    """Per-element error (sd-scripts' conditional_loss, reduction none)."""
    if loss_type == "l2":
        return F.mse_loss(pred, goal, reduction="none")
    if loss_type == "l1":
        return F.l1_loss(pred, goal, reduction="none")
    c = threshold.view(-1, *([1] * (pred.ndim - 1)))
    smooth = torch.sqrt((pred - goal) ** 2 + c ** 2) - c
    return 2 * c * smooth if loss_type == "huber" else 2 * smooth


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """min(SNR, gamma) / SNR per sample for epsilon prediction, min(SNR, gamma) / (SNR + 1) for v."""
    s = snr(scheduler, timesteps)
    return torch.clamp(s, max=gamma) / (s + 1 if predicts_velocity(scheduler) else s)


def predicts_velocity(scheduler) -> bool:
    return scheduler.config.prediction_type == "v_prediction"


def target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the U-Net is trained to predict."""
    return scheduler.get_velocity(latents, noise, timesteps) if predicts_velocity(scheduler) else noise


def diffusion_loss(unet, scheduler, latents: torch.Tensor, context: torch.Tensor, noise: torch.Tensor,
                   timesteps: torch.Tensor, min_snr_gamma: float | None = None, mask: torch.Tensor | None = None,
                   *, input_noise: torch.Tensor | None = None, loss_type: str = "l2",
                   huber: tuple[float, str, float] = (0.1, "snr", 1.0), debiased: bool = False,
                   sample_weights: torch.Tensor | None = None, **unet_kwargs) -> torch.Tensor:
    """Mean error of the U-Net against its target at the given noise and timesteps (`unet_kwargs`: SDXL's
    added condition), in sd-scripts' order: the per-element error (`loss_type`; `huber`: c, schedule,
    scale), weighted by `mask` (B, 1, h, w; masked loss, no renormalisation: a mostly empty image weighs
    less), the per-sample mean, `sample_weights` (B,: prior_loss_weight for regularization images), min-SNR and
    debiased-estimation weights. `input_noise`: the noise the
    input is made with when it differs from the target's (input perturbation)."""
    noisy = scheduler.add_noise(latents, noise if input_noise is None else input_noise, timesteps)
    pred = unet(noisy, timesteps, context, **unet_kwargs).sample
    threshold = huber_threshold(scheduler, timesteps, *huber) if loss_type in ("huber", "smooth_l1") else None
    loss = pixel_error(pred.float(), target(scheduler, latents, noise, timesteps).float(), loss_type,
                       None if threshold is None else threshold.to(pred.device))
    if mask is not None:
        loss = loss * mask.to(loss.device, loss.dtype)
    loss = loss.mean(dim=(1, 2, 3))
    if sample_weights is not None:
        loss = loss * sample_weights.to(loss.device, loss.dtype)
    if min_snr_gamma:
        loss = loss * min_snr_weights(scheduler, timesteps, min_snr_gamma)
    if debiased:
        loss = loss * debiased_weights(scheduler, timesteps)
    return loss.mean()
