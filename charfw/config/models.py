"""The manifest schema: pydantic models are the single source of truth for configuration.

Three files feed them: `charfw.yaml` (workspace defaults), `characters/<name>/character.yaml`
and `characters/groups.yaml`. Settings sections (`train`, `merge`, `compress`) may appear at
every level; a lower level overrides only the fields it sets.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from charfw.errors import CharfwError
from charfw.lora.params import check_compress_params

from charfw.rules.captions import DEFAULT_TEMPLATE, CaptionRule
from charfw.rules.sizeclass import BATCH_PROFILES, CLASS_PAIRS

KEYWORD = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
DEFAULT_SIZES = [128, 192, 256, 384, 512, 768]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrainSettings(Strict):
    """How a target is trained (SPEC §6). Read by the `train` stage."""

    trainer: Literal["embedded", "sd-scripts"] = "embedded"
    network: Literal["lora", "c3lier", "locon", "loha", "lokr"] = "c3lier"
    dim: int | None = Field(None, ge=1, description="network dim; None = 128 (LoHa 32)")
    alpha: Literal["half", "one"] | float = "half"
    optimizer: Literal["adamw8bit", "adamw", "adafactor"] = "adamw8bit"
    lr: float = Field(1e-4, gt=0)
    text_encoder_lr: float | None = Field(None, ge=0, description="None = floor(lr in 1e-6 x 44/100) x 1e-6")
    scheduler: Literal["cosine_with_restarts", "cosine", "constant", "linear"] = "cosine_with_restarts"
    restarts: int = Field(1, ge=1)
    warmup_steps: int = Field(0, ge=0)
    steps: int | None = Field(None, ge=1, description="None = face 1000, outfit 1200, group 1600")
    clip_skip: int = Field(2, ge=1, le=12)
    mixed_precision: Literal["fp16", "bf16", "no"] = "fp16"
    save_precision: Literal["fp16", "bf16", "float"] = "fp16"
    gradient_checkpointing: bool = True
    seed: int = 31337
    noise_offset: float | None = Field(None, ge=0)
    min_snr_gamma: float | None = Field(None, gt=0)
    save_every_n_steps: int = Field(200, ge=1, description="resumable state for interrupted runs")
    cache_latents: Literal["memory", "disk"] = "memory"
    attention: Literal["xformers", "sdpa", "none"] = Field("xformers", description="sd-scripts attention switch")
    sd_scripts: str | None = Field(None, description="path to a kohya sd-scripts checkout")
    python: str | None = Field(None, description="python (or venv) that runs sd-scripts")
    extra_args: list[str] = Field(default_factory=list, description="appended to sd-scripts' command line")


BlockWeights = str | list[float] | dict[str, float]


class MergeSettings(Strict):
    """Block weights baked into the trained LoRA (SPEC §8). Read by the `merge` stage."""

    weights: BlockWeights = "ALL"


class CompressSettings(Strict):
    """SVD resize of the merged LoRA (SPEC §9). Read by the `compress` stage."""

    enabled: bool = True
    method: Literal["sv_ratio", "sv_fro", "sv_cumulative", "rank"] = "sv_ratio"
    value: float = Field(16, gt=0)
    max_rank: int = Field(128, ge=1)
    max_conv_rank: int | None = Field(None, ge=1)
    dtype: Literal["fp16", "bf16", "fp32"] = "fp16"
    sd_scripts_compat: bool = Field(False, description="choose ranks exactly as sd-scripts' resize_lora.py")
    to_lora: bool = Field(False, description="convert LoHa/LoKr to LoRA (else they are left as they are)")

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo):
        """Cross-field rules apply to the merged result only: one level may set just `value`."""
        if info.context and info.context.get("merged"):
            try:
                check_compress_params(self.method, self.value, self.max_rank, self.max_conv_rank, self.dtype)
            except CharfwError as exc:
                raise ValueError(exc.message) from None
        return self


class Stages(Strict):
    """Per-level overrides of the settings sections."""

    train: TrainSettings | None = None
    merge: MergeSettings | None = None
    compress: CompressSettings | None = None


class Sizes(Strict):
    face: list[int] = Field(default_factory=lambda: list(DEFAULT_SIZES), min_length=1)
    body: list[int] = Field(default_factory=lambda: list(DEFAULT_SIZES), min_length=1)

    @field_validator("face", "body")
    @classmethod
    def _positive_sorted(cls, v: list[int]) -> list[int]:
        if any(s < 64 for s in v):
            raise ValueError("sizes must be at least 64 pixels")
        return sorted(set(v))


class Repeats(Strict):
    face: int = Field(4, ge=1)
    body: int = Field(2, ge=1)
    group: int = Field(1, ge=1)


class Captions(Strict):
    template: list[CaptionRule] = Field(default_factory=lambda: list(DEFAULT_TEMPLATE))


class Workspace(Stages):
    """`charfw.yaml`: defaults for every character."""

    characters: str = "characters"
    build: str = "build"
    dist: str = "dist"
    model: str = Field("builtin:tiny-sd15", description="base SD1.5 checkpoint for training")
    vae: str | None = None
    sizes: Sizes = Field(default_factory=Sizes)
    repeats: Repeats = Field(default_factory=Repeats)
    batch_profile: Literal["default", "12gb"] | dict[str, int] = "default"
    captions: Captions = Field(default_factory=Captions)
    presets: dict[str, list[float]] = Field(default_factory=dict, description="user block-weight presets")
    face: Stages = Field(default_factory=Stages, description="defaults for face targets")
    outfit: Stages = Field(default_factory=Stages, description="defaults for outfit targets")
    group: Stages = Field(default_factory=Stages, description="defaults for group targets")

    @field_validator("batch_profile")
    @classmethod
    def _known_pairs(cls, v):
        if isinstance(v, dict):
            unknown = sorted(set(v) - set(CLASS_PAIRS))
            if unknown:
                raise ValueError(f"unknown size-class pair {unknown[0]!r}; use one of {', '.join(CLASS_PAIRS)}")
        return v

    def batch_table(self) -> dict[str, int]:
        return self.batch_profile if isinstance(self.batch_profile, dict) else BATCH_PROFILES[self.batch_profile]


LORA_FIELD = Field(None, description="use this trained LoRA (e.g. from sd-scripts) instead of training")


class FaceSet(Stages):
    folder: str = "face"
    lora: str | None = LORA_FIELD
    repeats: int | None = Field(None, ge=1)
    sizes: list[int] | None = None


class Outfit(Stages):
    keyword: str = Field(pattern=KEYWORD)
    folder: str | None = Field(None, description="default: the outfit's name")
    tags: list[str] = Field(default_factory=list)
    repeats: int | None = Field(None, ge=1)
    face_repeats: int | None = Field(None, ge=1, description="repeats of the face images in this outfit's data")
    sizes: list[int] | None = None
    include_face: bool = True
    init: Literal["face"] | None = Field(None, description="start training from the face LoRA's weights")
    lora: str | None = LORA_FIELD


class Character(Strict):
    """`characters/<name>/character.yaml`."""

    keyword: str = Field(pattern=KEYWORD)
    class_word: str = Field("girl", alias="class")
    tags: list[str] = Field(default_factory=list, description="extra tags after the keyword")
    symmetric: bool = True
    background: Literal["black", "white"] | tuple[int, int, int] = "black"
    face: FaceSet = Field(default_factory=FaceSet)
    outfits: dict[str, Outfit] = Field(default_factory=dict)
    train: TrainSettings | None = None
    merge: MergeSettings | None = None
    compress: CompressSettings | None = None


class Group(Stages):
    """One entry of `characters/groups.yaml` (group name -> this)."""

    members: list[str] = Field(min_length=2, description="outfit keywords")
    repeats: int | None = Field(None, ge=1)
    lora: str | None = LORA_FIELD

