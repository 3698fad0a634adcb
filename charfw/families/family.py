"""The Family type: everything that differs between Stable Diffusion model families, in one object.

A family module (sd15.py, sdxl.py) builds one frozen Family; the rest of charfw receives that
object and reads its fields, never compares family names. Adding a family, or a variant such as
a v-prediction SDXL model, is one new module registered in charfw/families/__init__.py.
Torch-free, so `charfw check`, `charfw plan` and `doit list` can hold one.
"""

from __future__ import annotations

from dataclasses import dataclass

from charfw.lora.blocks import BlockLayout
from charfw.lora.keys import TextEncoderArch, UNetArch
from charfw.rules.sizeclass import SizeClasses


@dataclass(frozen=True, eq=False)
class Family:
    """One model family. Compared by identity: there is one object per family."""

    name: str                     # as `family:` in workspace.yaml, `--arch` and merged files' charfw_arch spell it
    label: str                    # as people write it: "SD1.5"

    # single-file checkpoints (charfw.models): what tells this family's files apart, and their layout
    checkpoint_marker: str | None  # a tensor-name prefix only this family has (None: the family without one)
    checkpoint_evidence: str       # said when a file of this family is given where another is expected
    text_encoder_prefix: str       # the (first) text encoder's tensor names in a checkpoint
    configs: tuple[str, ...]       # shipped config sets under charfw/models/data/, full size first
    builtin_model: str             # `model: builtin:NAME`, a random-weight test model of this topology
    text_encoder_parts: tuple[str, ...]   # the text encoder networks, in checkpoint order

    # dataset (docs/rules.md §4)
    size_classes: SizeClasses

    # LoRA files (docs/rules.md §8): module names and shapes, blocks, what identifies a file
    unet: UNetArch
    text_encoders: tuple[TextEncoderArch, ...]
    blocks: BlockLayout
    lora_marks: str                # regex: module names only this family's LoRAs have

    # training
    trains_text_encoder: bool      # default of `train_text_encoder`
    uses_clip_skip: bool           # False: always the penultimate layer, `clip_skip` does not apply
    pooled_conditioning: bool      # the U-Net also takes the pooled text embedding and size/crop ids
    activation_bytes: float        # per sample at `base_pixels`, without checkpointing (rules.memory)
    base_pixels: int
    prediction_type: str           # what the U-Net predicts: "epsilon"

    # kohya sd-scripts
    sd_scripts_script: str
    sd_scripts_flags: tuple[str, ...]        # always passed, after the text-encoder options
    sd_scripts_caches_te_outputs: bool       # has --cache_text_encoder_outputs for a frozen text encoder

    # metadata written into a trained LoRA (sd-scripts' ss_* and the SAI model spec)
    base_model_version: str
    modelspec_architecture: str
    modelspec_implementation: str

    # sampling
    sample_size: int               # the side length the family was trained at

    def __repr__(self) -> str:
        return f"Family({self.name})"

    def __reduce__(self):
        """Pickled by name (doit's workers): the registry's one object on the other side."""
        from charfw.families import family
        return family, (self.name,)
