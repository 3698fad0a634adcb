"""The seed's training numbers (docs/rules.md §6) as functions of plain values.

One definition for both trainers: the sd-scripts command line prints these values and
the embedded trainer trains with them and records them in the LoRA's metadata, so the
two must agree to the last bit. Learning rates are computed in decimal units of 1e-6,
as the seed's LoRA.bat wrote them (`100e-6`, text encoder `44e-6`).
"""

from __future__ import annotations

from decimal import ROUND_FLOOR, Decimal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from charfw.families import Family

DEFAULT_DIM = 128
LOHA_DIM = 32          # LoHa squares its rank: the seed used 32 where LoRA uses 128
TE_LR_PERCENT = 44     # text encoder: floor(lr in 1e-6 x 44 / 100) x 1e-6
DEFAULT_STEPS = {"face": 1000, "outfit": 1200, "group": 1600}


def trains_text_encoder(family: Family, setting: bool | None) -> bool:
    """The setting, else the family's default: SD1.5 trains its text encoder (the seed's settings);
    SDXL trains the U-Net only, with the text encoders' outputs cached, as sd-scripts recommends."""
    return setting if setting is not None else family.trains_text_encoder


def resolved_dim(network: str, dim: int | None) -> int:
    """`dim`, or the default: 128, LoHa 32."""
    if dim is not None:
        return dim
    return LOHA_DIM if network == "loha" else DEFAULT_DIM


def resolved_alpha(alpha: str | float, dim: int) -> float:
    """Network alpha: ``half`` = dim / 2 (A50p), ``one`` = 1 (A1), or the number given."""
    if alpha == "half":
        return dim / 2
    if alpha == "one":
        return 1.0
    return float(alpha)


def in_e6(value: float) -> Decimal:
    """`value` in units of 1e-6, exact in decimal (1e-4 -> 100, 3e-5 -> 30, never 30.000000000000004)."""
    return (Decimal(repr(float(value))) * 1_000_000).normalize()


def text_encoder_lr_e6(lr: float, text_encoder_lr: float | None) -> Decimal:
    """The text-encoder rate in units of 1e-6: as set, else floor(lr in 1e-6 x 44 / 100)."""
    if text_encoder_lr is not None:
        return in_e6(text_encoder_lr)
    return (in_e6(lr) * TE_LR_PERCENT / 100).to_integral_value(rounding=ROUND_FLOOR)


def text_encoder_lr(lr: float, explicit: float | None) -> float:
    """The text-encoder learning rate as a float: 1e-4 -> 4.4e-05 (exactly float('44e-6'))."""
    return float(text_encoder_lr_e6(lr, explicit) / 1_000_000)


def decimal_text(d: Decimal) -> str:
    """A decimal as the seed wrote it: ``100`` not ``100.0``, ``2.5``, never exponent form."""
    return str(int(d)) if d == d.to_integral_value() else format(d, "f")


def number_text(x: float) -> str:
    """A number as sd-scripts records it and the seed wrote it: ``64`` not ``64.0``, else repr."""
    x = float(x)
    return str(int(x)) if x.is_integer() else repr(x)


def scaled_schedule(steps: int, warmup_steps: int, per_epoch_before: int, per_epoch_after: int) -> tuple[int, int, float]:
    """(steps, warm-up steps, learning-rate factor) after the batches grew (`batch_scale`).

    The run keeps its epochs, so every image is seen as often as at the profile's batch
    sizes: steps (and warm-up) shrink by the ratio of batches per epoch. The learning rate
    grows by the square root of that ratio, the mean samples per step: Adam's scaling rule
    (Malladi et al. 2022), which keeps the update noise of the smaller batch.
    """
    if per_epoch_after >= per_epoch_before:
        return steps, warmup_steps, 1.0
    ratio = per_epoch_before / per_epoch_after
    return (max(1, -(-steps * per_epoch_after // per_epoch_before)), -(-warmup_steps * per_epoch_after // per_epoch_before),
            ratio ** 0.5)


LATENT_CACHE_FLAGS = ("--cache_latents", "--cache_latents_to_disk")


def extra_caches_latents(extra_args: list[str]) -> str | None:
    """The latent-caching flag a user put in sd-scripts' extra_args, if any."""
    return next((a for a in extra_args if a.split("=", 1)[0] in LATENT_CACHE_FLAGS), None)


def dataset_color_aug(trainer: str, color_aug: bool, extra_args: list[str]) -> bool:
    """The dataset config's color_aug: sd-scripts refuses colour augmentation with cached latents,
    so an sd-scripts run whose extra_args cache them gets color_aug = false."""
    return color_aug and not (trainer == "sd-scripts" and extra_caches_latents(extra_args))
