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


def build_optimizer(recipe: Recipe, unet_params, te_params, device, up_params=frozenset(), factors=None
                    ) -> tuple[torch.optim.Optimizer, str]:
    """(optimizer, the name sd-scripts would record in ss_optimizer). One group per (part, factor): the U-Net's
    and the text encoder's rates times a block-wise factor (`factors`: parameter -> factor, rules.blocklr)
    and, for the parameters in `up_params`, LoRA+'s ratio. Each group records its `role` (unet, te) and
    `factor`, so the logged rates are the parts' own (`logged_rates`)."""
    ratios = recipe.network.plus_ratios
    plus, factors = (set(up_params) if ratios else set()), factors or {}
    parts = (("unet", unet_params, recipe.lr, ratios[0] if ratios else 1.0),
             ("te", te_params, recipe.text_encoder_lr, ratios[1] if ratios else 1.0))
    keyed: dict[tuple[bool, str, float], dict] = {}   # (LoRA+ ups, role, factor) -> its group, in order of use
    for ups in (False, True):   # the seed's order first: the U-Net's groups, the text encoder's, then LoRA+'s
        for role, params, lr, ratio in parts:
            for p in params:
                if (p in plus) == ups:
                    factor = factors.get(p, 1.0) * (ratio if ups else 1.0)
                    keyed.setdefault((ups, role, factor), {"params": [], "lr": lr * factor, "role": role,
                                                           "factor": factor})["params"].append(p)
    groups = list(keyed.values())
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


def logged_rates(optimizer, rates: list[float]) -> list[float]:
    """[U-Net rate, text-encoder rate (if trained)] from the schedule's per-group `rates`, block-wise and LoRA+
    factors taken out: what lr/unet and lr/textencoder log."""
    out = []
    for role in ("unet", "te"):
        at = next((i for i, g in enumerate(optimizer.param_groups) if g.get("role") == role), None)
        if at is not None:
            out.append(rates[at] / optimizer.param_groups[at]["factor"])
    return out


def build_scheduler(recipe: Recipe, optimizer):
    """Learning-rate schedule; Adafactor's relative step brings its own."""
    if recipe.own_schedule:
        from transformers.optimization import AdafactorSchedule
        return AdafactorSchedule(optimizer, initial_lr=recipe.lr)
    from diffusers.optimization import get_scheduler
    name, warmup = recipe.scheduler_steps
    kwargs = {"num_cycles": recipe.restarts} if name == "cosine_with_restarts" else {}
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=recipe.steps, **kwargs)
