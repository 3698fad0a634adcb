"""The Family type: everything that differs between Stable Diffusion model families, in one object.

A family module (sd15.py, sdxl.py) builds one frozen Family; the rest of charfw receives that
object and reads its fields, never compares family names. Adding a family, or a variant such as
a v-prediction SDXL model, is one new module registered in charfw/families/__init__.py.
Torch-free, so `charfw check`, `charfw plan` and `doit list` can hold one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping


@dataclass(frozen=True)
class SizeClasses:
    """A family's size classes (docs/rules.md §4: charfw.rules.sizeclass applies them)."""

    low: int      # largest LOW side, and LOW's training resolution
    mid: int      # largest MID side, and MID's training resolution
    high: int     # HIGH's training resolution
    batch_profiles: dict[str, dict[str, int]] = field(default_factory=dict)
    default_sizes: tuple[int, ...] = ()

    @property
    def resolutions(self) -> dict[str, int]:
        return {"LOW": self.low, "MID": self.mid, "HIGH": self.high}


@dataclass(frozen=True)
class UNetArch:
    """The structural facts of a Stable Diffusion U-Net that decide its LoRA modules."""

    channels: tuple[int, ...]          # output channels per level (down path order)
    depth: tuple[int, ...]             # transformer depth per level, 0 = no attention
    mid_depth: int
    context_dim: int                   # cross-attention input width (text encoder output)
    linear_proj: bool                  # proj_in/proj_out are Linear (else 1x1 Conv2d)
    layers_per_block: int = 2          # resnets per down level; up levels have one more
    ff_mult: int = 4                   # GEGLU feed-forward: in -> 2*mult*C, mult*C -> C
    ldm_names: bool = False            # name modules LDM-style (SDXL) instead of diffusers-style

    @property
    def temb_dim(self) -> int:
        return 4 * self.channels[0]


@dataclass(frozen=True)
class TextEncoderArch:
    """A CLIP text encoder: every layer has q/k/v/out projections and a two-layer MLP."""

    prefix: str
    layers: int
    width: int
    mlp: int


def block_ids(prefix: str, n: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i:02d}" for i in range(n))


@dataclass(frozen=True)
class BlockLayout:
    """A family's blocks in LoRA Block Weight's order, its short list, and the groups LBW's presets
    are defined by (shallow = high-resolution levels, deep = low)."""

    blocks: tuple[str, ...]
    short: tuple[str, ...]
    shallow_in: tuple[str, ...]
    deep_in: tuple[str, ...]
    deep_out: tuple[str, ...]
    shallow_out: tuple[str, ...]
    own: Mapping[str, str] = field(default_factory=dict)   # the family's own presets, full value lists


@dataclass(frozen=True)
class LrBlocks:
    """sd-scripts' blocks for block-wise learning rates and dims (its networks.lora): `down` entries for the
    input side, `mid` for the middle, `down` again for the output side, and with `ends` one more before and
    after (SDXL's time embedding and output layers, which carry no LoRA)."""

    down: int
    mid: int
    ends: bool

    @property
    def total(self) -> int:
        """Values block_dims / block_alphas take."""
        return 2 * self.down + self.mid + 2 * self.ends


@dataclass(frozen=True, eq=False)
class Family:
    """One model family. Compared by identity: there is one object per family."""

    name: str                     # as `family:` in workspace.yaml, `--arch` and merged files' charfw_arch spell it
    label: str                    # as people write it: "SD1.5"
    variant_of: str | None         # a variant (v-prediction) of this family: its LoRA files are that family's

    # single-file checkpoints (charfw.models): what tells this family's files apart, and their layout
    checkpoint_marker: str | None  # a tensor-name prefix only this family has (None: the family without one)
    checkpoint_evidence: str       # said when a file of this family is given where another is expected
    checkpoint_flag: str | None    # a variant's marker tensor (ComfyUI's `v_pred`), None for a base family
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
    lr_blocks: LrBlocks            # sd-scripts' block-wise learning rates and dims

    # training
    trains_text_encoder: bool      # default of `train_text_encoder`
    uses_clip_skip: bool           # False: always the penultimate layer, `clip_skip` does not apply
    pooled_conditioning: bool      # the U-Net also takes the pooled text embedding and size/crop ids
    activation_bytes: float        # per sample at `base_pixels`, without checkpointing (rules.memory)
    base_pixels: int
    prediction_type: str           # what the U-Net predicts: "epsilon" or "v" (velocity)
    zero_terminal_snr: bool        # the noise schedule rescaled so the last step is pure noise

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
        return registered, (self.name,)


REGISTRY: dict[str, Family] = {}   # filled by charfw.families


def registered(name: str) -> Family:
    return REGISTRY[name]
