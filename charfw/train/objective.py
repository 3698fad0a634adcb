"""The training objective SD1.5 and SDXL share, as sd-scripts computes it.

DDPM forward process (scaled-linear betas 0.00085-0.012, 1000 steps, from the model's
scheduler, rescaled to zero terminal SNR for such a model), uniform timesteps, MSE against
the noise (epsilon prediction) or the velocity v = sqrt(a)·noise - sqrt(1-a)·x0 (v-prediction:
what the scheduler's prediction_type says, as sd-scripts' --v_parameterization). Optional
noise offset and min-SNR-gamma weighting. Random draws take an explicit generator so a step's noise
depends only on (seed, step). The conditioning lives in charfw.train.conditioning.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def draw_noise(shape: tuple[int, ...], generator: torch.Generator, num_timesteps: int = 1000,
               noise_offset: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise, timesteps) on the CPU; noise offset adds a per-channel constant, as sd-scripts."""
    noise = torch.randn(shape, generator=generator)
    if noise_offset:
        noise = noise + noise_offset * torch.randn((shape[0], shape[1], 1, 1), generator=generator)
    timesteps = torch.randint(0, num_timesteps, (shape[0],), generator=generator)
    return noise, timesteps


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """min(SNR, gamma) / SNR per sample for epsilon prediction, min(SNR, gamma) / (SNR + 1) for v."""
    ac = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = ac / (1 - ac)
    return torch.clamp(snr, max=gamma) / (snr + 1 if predicts_velocity(scheduler) else snr)


def predicts_velocity(scheduler) -> bool:
    return scheduler.config.prediction_type == "v_prediction"


def target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the U-Net is trained to predict."""
    return scheduler.get_velocity(latents, noise, timesteps) if predicts_velocity(scheduler) else noise


def diffusion_loss(unet, scheduler, latents: torch.Tensor, context: torch.Tensor, noise: torch.Tensor,
                   timesteps: torch.Tensor, min_snr_gamma: float | None = None, mask: torch.Tensor | None = None,
                   **unet_kwargs) -> torch.Tensor:
    """Mean MSE of the U-Net against its target at the given noise and timesteps (`unet_kwargs`: SDXL's
    added condition). `mask` (B, 1, h, w): each latent pixel's error weighted by it before the mean, as
    sd-scripts' masked loss does (no renormalisation: a mostly empty image weighs less)."""
    noisy = scheduler.add_noise(latents, noise, timesteps)
    pred = unet(noisy, timesteps, context, **unet_kwargs).sample
    loss = F.mse_loss(pred.float(), target(scheduler, latents, noise, timesteps).float(), reduction="none")
    if mask is not None:
        loss = loss * mask.to(loss.device, loss.dtype)
    loss = loss.mean(dim=(1, 2, 3))
    if min_snr_gamma:
        loss = loss * min_snr_weights(scheduler, timesteps, min_snr_gamma)
    return loss.mean()
