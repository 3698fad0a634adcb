"""Optimizer and learning-rate schedule (docs/rules.md §6).

AdamW 8-bit needs bitsandbytes and a GPU it supports; where that fails, plain AdamW
(same hyper-parameters) is used and the metadata says so. Adafactor runs as the
original workflow ran it: relative step, parameter scaling, no warm-up init, no lr
(its own schedule; U-Net and text-encoder rates then do not apply).
"""

from __future__ import annotations

import logging

import torch

from charfw.recipe import Recipe

log = logging.getLogger("charfw.train")


def _adamw8bit(groups, device: torch.device, weight_decay: float):
    """bitsandbytes' AdamW8bit if it imports and can take one step on `device`, else None."""
    if device.type != "cuda":
        return None
    try:
        import bitsandbytes as bnb
        probe = torch.nn.Parameter(torch.zeros(4096, device=device))
        probe.grad = torch.ones_like(probe)
        opt = bnb.optim.AdamW8bit([probe], lr=1e-3)
        opt.step()
        return bnb.optim.AdamW8bit(groups, weight_decay=weight_decay)
    except Exception as exc:  # ImportError, or a build without this GPU
        log.info("bitsandbytes AdamW8bit unavailable (%s)", exc)
        return None


def build_optimizer(recipe: Recipe, unet_params, te_params, device, up_params=frozenset()
                    ) -> tuple[torch.optim.Optimizer, str]:
    """(optimizer, the name sd-scripts would record in ss_optimizer). With LoRA+ the parameters in
    `up_params` form their own groups at the rate times the ratio, after the U-Net and text-encoder
    groups (so the first two groups' rates are still the U-Net's and the text encoder's)."""
    ratios = recipe.network.plus_ratios
    plus = set(up_params) if ratios else set()
    groups = [{"params": [p for p in unet_params if p not in plus], "lr": recipe.lr}]
    if te_params:
        groups.append({"params": [p for p in te_params if p not in plus], "lr": recipe.text_encoder_lr})
    if plus:
        groups.append({"params": [p for p in unet_params if p in plus], "lr": recipe.lr * ratios[0]})
        if te_params:
            groups.append({"params": [p for p in te_params if p in plus], "lr": recipe.text_encoder_lr * ratios[1]})
        groups = [g for g in groups if g["params"]]
    if recipe.optimizer == "adafactor":
        from transformers.optimization import Adafactor
        args = dict(recipe.optimizer_args)
        opt = Adafactor(groups, lr=None, **args)
        name = "transformers.optimization.Adafactor(" + ",".join(f"{k}={v}" for k, v in args.items()) + ")"
        log.info("optimizer: Adafactor (relative step; learning rates are its own)")
        return opt, name
    if recipe.optimizer == "adamw8bit":
        opt = _adamw8bit(groups, torch.device(device), recipe.weight_decay)
        if opt is not None:
            log.info("optimizer: bitsandbytes AdamW8bit")
            return opt, f"{type(opt).__module__}.{type(opt).__name__}"
        log.info("optimizer: torch AdamW (8-bit AdamW needs bitsandbytes on a supported GPU)")
    else:
        log.info("optimizer: torch AdamW")
    # One fused kernel for every parameter instead of several per parameter (the same maths)
    opt = torch.optim.AdamW(groups, weight_decay=recipe.weight_decay, fused=True)
    return opt, "torch.optim.adamw.AdamW"


def build_scheduler(recipe: Recipe, optimizer):
    """Learning-rate schedule; Adafactor's relative step brings its own."""
    if recipe.own_schedule:
        from transformers.optimization import AdafactorSchedule
        return AdafactorSchedule(optimizer, initial_lr=recipe.lr)
    from diffusers.optimization import get_scheduler
    name, warmup = recipe.scheduler_steps
    kwargs = {"num_cycles": recipe.restarts} if name == "cosine_with_restarts" else {}
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=recipe.steps, **kwargs)
