"""How much memory a training needs, and what `gradient_checkpointing: auto` and
`batch_scale: auto` choose from it.

A pure function of the free memory figure, so the choice is the same every time for the same
machine state and tests need no GPU. The per-sample activation figures are upper estimates
for fp16 training with LoRA adapters on every attention/resnet layer (each family's figure at its
base size, in its module under charfw/families, scaled by pixel count); gradient checkpointing keeps about a sixth of them.
They are deliberately generous: choosing checkpointing when it was not needed costs speed,
the other mistake costs the run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from charfw.families import Family

GIB = 2**30
CHECKPOINTED_SHARE = 1 / 6
MARGIN = 1.5 * GIB   # allocator fragmentation, the VAE, CUDA context
ADAPTER_BYTES_PER_PARAM = 18   # fp32 weight + gradient + two AdamW moments + the step's fp16 copy (train.network)


def training_bytes(family: Family, batch: int, pixels: int, adapter_params: int, weight_bytes: float,
                   checkpointing: bool) -> float:
    """Estimated peak memory of one training step; `weight_bytes`: the frozen model where it trains."""
    activations = family.activation_bytes * batch * pixels / family.base_pixels
    if checkpointing:
        activations *= CHECKPOINTED_SHARE
    return weight_bytes + activations + adapter_params * ADAPTER_BYTES_PER_PARAM + MARGIN


def use_checkpointing(setting: bool | str, free_bytes: float | None, family: Family, batch: int, pixels: int,
                      adapter_params: int, weight_bytes: float) -> bool:
    """The setting when it is True/False; for "auto", off only when the step fits without it.

    `free_bytes` None (unknown) keeps checkpointing on.
    """
    if setting != "auto":
        return bool(setting)
    if free_bytes is None:
        return True
    return training_bytes(family, batch, pixels, adapter_params, weight_bytes, checkpointing=False) > free_bytes


BATCH_SCALES = (8, 4, 2, 1)   # auto never goes past 8x the profile: beyond that a GPU step is no longer free


def auto_batch_scale(setting: int | str, free_bytes: float | None, on_gpu: bool, family: Family, batch: int, pixels: int,
                     adapter_params: int, weight_bytes: float, checkpointing: bool | str, largest_bucket: int) -> int:
    """How many times the profile's batch sizes a run trains at.

    An int setting is kept. ``auto`` grows the batch only on a GPU (on a CPU a bigger batch
    costs its full time) and only while the step still fits the free memory without
    checkpointing (with it, if checkpointing is forced on): there a bigger batch costs
    almost nothing per step. Never past the largest bucket's samples per epoch, where the
    batches could not fill. Unknown free memory keeps the profile.
    """
    if setting != "auto":
        return int(setting)
    if not on_gpu or free_bytes is None:
        return 1
    keep = checkpointing is True
    for scale in BATCH_SCALES:
        if scale > 1 and batch * scale > max(largest_bucket, batch):
            continue
        if training_bytes(family, batch * scale, pixels, adapter_params, weight_bytes, keep) <= free_bytes:
            return scale
    return 1
