"""The manifest schema: pydantic models are the single source of truth for configuration.

Three files feed them: `charfw.yaml` (workspace defaults), `characters/<name>/character.yaml`
and `characters/groups.yaml`. Settings sections (`train`, `merge`, `compress`) may appear at
every level; a lower level overrides only the fields it sets.
"""

from __future__ import annotations

from dataclasses import fields as dataclass_fields
from typing import Annotated, Literal, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, create_model, field_validator, model_validator
from pydantic_core import PydanticUndefined

from charfw.errors import CharfwError
from charfw.families import FAMILIES
from charfw.lora.options import CompressOptions
from charfw.rules.blocklr import BLOCK_OPTIONS, CURVE, CURVES
from charfw.rules.captions import DEFAULT_TEMPLATE, CaptionRule, Tag, without_background
from charfw.rules.names import checked, name_problem, read_path_problem, relative_dir_problem, words_problem
from charfw.rules.sizeclass import CLASS_PAIRS, PROFILES

KEYWORD = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
Channel = Annotated[int, Field(ge=0, le=255)]
BlockLr = str | list[float]   # sd-scripts' down/up_lr_weight: a curve's name (rules.blocklr) or one value per block
ViewCodeText = Annotated[str, Field(pattern=r"^[fb][0-2][0-7]$")]   # a view code without suffix: f01, b20


Name = Annotated[str, checked(name_problem)]                # becomes a file or folder name
Keyword = Annotated[str, Field(pattern=KEYWORD), checked(name_problem)]
Words = Annotated[str, checked(words_problem)]              # the class word(s): part of folder names
ReadPath = Annotated[str, checked(read_path_problem)]       # read only: may point outside the workspace
OutputDir = Annotated[str, checked(relative_dir_problem)]   # written to: inside the workspace


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


Effect = Literal["weights", "file", "run"]
DORA_NETWORKS = ("locon", "c3lier")

Backend = Literal["both", "embedded", "sd-scripts"]


def setting(default=PydanticUndefined, *, effect: Effect, backend: Backend = "both", added: bool = False, **kwargs):
    """A TrainSettings field with what changing it does, declared once for every consumer.

    effect: ``weights`` changes what is learned (retrain, never resume another run's state);
    ``file`` changes only how the LoRA is written (retrain, but a saved state stays valid);
    ``run`` changes only how the run goes (speed, memory, resumability): never retrains.
    backend: which trainer reads it; the other ignores it.
    added: an option added after LoRAs were trained without it: at its default it is left out of
    the run and state keys (`keyed`), so adding it retrains nothing; set, it retrains what uses it.
    """
    return Field(default, json_schema_extra={"effect": effect, "backend": backend, "added": added}, **kwargs)


class TrainSettings(Strict):
    """How a target is trained (docs/rules.md §6). Read by the `train` stage."""

    trainer: Literal["embedded", "sd-scripts"] = setting("embedded", effect="weights")
    network: Literal["lora", "c3lier", "locon", "loha", "lokr"] = setting("c3lier", effect="weights")
    dim: int | None = setting(None, effect="weights", ge=1, description="network dim; None = 128 (LoHa 32)")
    alpha: Literal["half", "one"] | float = setting("half", effect="weights")
    optimizer: Literal["adamw8bit", "adamw", "adafactor"] = setting("adamw8bit", effect="weights")
    lr: float = setting(1e-4, effect="weights", gt=0)
    text_encoder_lr: float | None = setting(None, effect="weights", ge=0,
                                            description="None = floor(lr in 1e-6 x 44/100) x 1e-6")
    scheduler: Literal["cosine_with_restarts", "cosine", "constant", "linear"] = setting(
        "cosine_with_restarts", effect="weights")
    restarts: int = setting(1, effect="weights", ge=1)
    warmup_steps: int = setting(0, effect="weights", ge=0)
    steps: int | None = setting(None, effect="weights", ge=1, description="None = face 1000, outfit 1200, group 1600")
    train_text_encoder: bool | None = setting(
        None, effect="weights", description="None = yes on SD1.5, no on SDXL (U-Net only, text encoders cached)")
    clip_skip: int = setting(2, effect="weights", ge=1, le=12,
                             description="SD1.5 only: SDXL always conditions on the penultimate layers")
    mixed_precision: Literal["fp16", "bf16", "no"] = setting("fp16", effect="weights")
    save_precision: Literal["fp16", "bf16", "float"] = setting("fp16", effect="file")
    gradient_checkpointing: bool | Literal["auto"] = setting(
        "auto", effect="run", description="auto: off when the step fits in free memory without it (rules.memory)")
    batch_scale: Literal["auto"] | Annotated[int, Field(ge=1, le=64)] = setting(
        "auto", effect="weights", backend="embedded",
        description="the batch profile's sizes times this; auto: on a GPU, up to 8x where the step fits free "
                    "memory (steps shrink to keep the epochs, lr grows by the square root)")
    compile: Literal["auto", "on", "off"] = setting(
        "auto", effect="run", backend="embedded",
        description="torch.compile of the repeated transformer blocks; auto: on a GPU, for runs of 300+ steps")
    cuda_graphs: bool = setting(
        False, effect="run", backend="embedded",
        description="replay the compiled blocks as CUDA graphs (one per bucket shape): needs a GPU, compile and "
                    "gradient checkpointing off; a failure inside the graphs falls back to compiled blocks")
    gpus: list[int] | None = setting(
        None, effect="run", description="under doit -n: the GPUs the workers take, one each (default all visible)")
    seed: int = setting(31337, effect="weights")
    noise_offset: float | None = setting(None, effect="weights", ge=0)
    min_snr_gamma: float | None = setting(None, effect="weights", gt=0)
    save_every_n_steps: int = setting(200, effect="run", ge=1,
                                      description="resumable state for interrupted runs")
    save_every_minutes: float = setting(5, effect="run", backend="embedded", gt=0,
                                        description="also save the state this often (whichever comes first)")
    sample_every_n_steps: int | None = setting(
        None, effect="run", backend="embedded", ge=1,
        description="render the first sample prompt every N steps during training (the report's strip)")
    color_aug: bool = setting(True, effect="weights",
                              description="colour augmentation; off where sd-scripts caches latents")
    cache_latents: Literal["memory", "disk"] = setting("memory", effect="run")
    loss_type: Literal["l2", "l1", "huber", "smooth_l1"] = setting(
        "l2", effect="weights", added=True, description="the per-pixel error (sd-scripts' --loss_type)")
    huber_c: float = setting(0.1, effect="weights", added=True, gt=0, le=1,
                             description="huber / smooth_l1: the threshold (sd-scripts' --huber_c)")
    huber_schedule: Literal["snr", "exponential", "constant"] = setting(
        "snr", effect="weights", added=True, description="huber / smooth_l1: how the threshold varies with the timestep")
    huber_scale: float = setting(1.0, effect="weights", added=True, gt=0,
                                 description="huber / smooth_l1: the exponential and constant schedules' scale")
    debiased_estimation_loss: bool = setting(
        False, effect="weights", added=True,
        description="weight each timestep's loss by 1/sqrt(SNR) (v-prediction: 1/(SNR+1)), sd-scripts' option")
    ip_noise_gamma: float | None = setting(
        None, effect="weights", added=True, ge=0,
        description="input perturbation: the noised input gets this much extra noise, the target does not")
    multires_noise_iterations: int | None = setting(
        None, effect="weights", added=True, ge=1, description="pyramid (multi-resolution) noise levels")
    multires_noise_discount: float = setting(0.3, effect="weights", added=True, gt=0, le=1,
                                             description="each pyramid level's weight relative to the one above")
    loraplus_lr_ratio: float | None = setting(
        None, effect="weights", added=True, gt=0,
        description="LoRA+: the up factors learn this many times faster (lora and c3lier networks)")
    loraplus_unet_lr_ratio: float | None = setting(None, effect="weights", added=True, gt=0,
                                                   description="LoRA+ for the U-Net only (else loraplus_lr_ratio)")
    loraplus_text_encoder_lr_ratio: float | None = setting(
        None, effect="weights", added=True, gt=0, description="LoRA+ for the text encoders only (else loraplus_lr_ratio)")
    dora_wd: bool = setting(
        False, effect="weights", added=True,
        description="DoRA (weight-decomposed LoRA, LyCORIS' dora_wd): locon and c3lier networks; the file gets "
                    "a dora_scale per module")
    down_lr_weight: BlockLr | None = setting(
        None, effect="weights", added=True,
        description="learning-rate factor per input-side block: a list, or cosine | sine | linear | reverse_linear | "
                    "zeros (+base); a block at 0 is not trained (sd-scripts' network_args, lora and c3lier)")
    mid_lr_weight: float | list[float] | None = setting(
        None, effect="weights", added=True, description="the middle block's factor (SDXL: its three parts)")
    up_lr_weight: BlockLr | None = setting(None, effect="weights", added=True,
                                           description="learning-rate factor per output-side block, as down_lr_weight")
    block_lr_zero_threshold: float = setting(0.0, effect="weights", added=True, ge=0,
                                             description="block factors not above this become 0")
    block_dims: list[Annotated[int, Field(ge=0)]] | None = setting(
        None, effect="weights", added=True, description="rank per block (SD1.5 25 values, SDXL 23); 0 = no modules")
    block_alphas: list[Annotated[float, Field(ge=0)]] | None = setting(None, effect="weights", added=True,
                                                                       description="alpha per block")
    conv_block_dims: list[Annotated[int, Field(ge=0)]] | None = setting(
        None, effect="weights", added=True, description="rank per block of the 3x3 convs (c3lier)")
    conv_block_alphas: list[Annotated[float, Field(ge=0)]] | None = setting(
        None, effect="weights", added=True, description="alpha per block of the 3x3 convs (c3lier)")
    scale_weight_norms: float | None = setting(
        None, effect="weights", added=True, gt=0,
        description="max-norm regularization: a module whose ΔW norm exceeds this is scaled back after each step")
    masked_loss: bool = setting(
        False, effect="weights", added=True,
        description="weight the loss by each image's transparency: the character is learned, not the background "
                    "(sets whose sources have an alpha channel; sd-scripts' --masked_loss)")
    prior_loss_weight: float = setting(
        1.0, effect="weights", added=True, ge=0,
        description="the loss weight of regularization images (sd-scripts' --prior_loss_weight)")
    validation_split: float = setting(
        0.0, effect="weights", added=True, ge=0, lt=1,
        description="hold out this share of each set's images at random and report their loss (sd-scripts' option)")
    validation_seed: int | None = setting(None, effect="weights", added=True,
                                          description="which images validation_split holds out; None = seed")
    validation_views: list[ViewCodeText] = setting(
        effect="weights", backend="embedded", added=True, default_factory=list,
        description="hold out every image of these view codes (e.g. [f11, b02]) and report their loss")
    validate_every_n_steps: int | None = setting(
        None, effect="run", added=True, ge=1, description="steps between validations; None = a tenth of the run")
    attention: Literal["xformers", "sdpa", "none"] = setting("xformers", effect="weights", backend="sd-scripts",
                                                             description="sd-scripts attention switch")
    sd_scripts: str | None = setting(None, effect="weights", backend="sd-scripts",
                                     description="path to a kohya sd-scripts checkout")
    python: str | None = setting(None, effect="run", backend="sd-scripts",
                                 description="python (or venv) that runs sd-scripts")
    extra_args: list[str] = setting(effect="weights", backend="sd-scripts", default_factory=list,
                                    description="appended to sd-scripts' command line")


    @model_validator(mode="after")
    def _views_need_the_embedded_trainer(self, info: ValidationInfo):
        if not (info.context and info.context.get("partial")) and self.validation_views and self.trainer != "embedded":
            raise ValueError("validation_views needs the embedded trainer (sd-scripts cannot hold out views); "
                             "use validation_split")
        return self

    @model_validator(mode="after")
    def _block_options_network(self, info: ValidationInfo):
        if info.context and info.context.get("partial"):
            return self
        used = [name for name in BLOCK_OPTIONS if getattr(self, name) is not None]
        if used and (self.network not in ("lora", "c3lier") or self.dora_wd):
            raise ValueError(f"{used[0]} (block-wise learning rates and dims) applies to the lora and c3lier "
                             f"networks without dora_wd (sd-scripts' networks.lora), not {self.network}"
                             + (" with dora_wd" if self.dora_wd else ""))
        if self.network == "lora" and (self.conv_block_dims or self.conv_block_alphas):
            raise ValueError("conv_block_dims / conv_block_alphas need 3x3 conv modules: network c3lier")
        return self

    @model_validator(mode="after")
    def _dora_network(self, info: ValidationInfo):
        if not (info.context and info.context.get("partial")) and self.dora_wd and self.network not in DORA_NETWORKS:
            raise ValueError(f"dora_wd applies to the {' and '.join(DORA_NETWORKS)} networks, not {self.network}")
        return self

    @model_validator(mode="after")
    def _loraplus_network(self, info: ValidationInfo):
        loraplus = (self.loraplus_lr_ratio, self.loraplus_unet_lr_ratio, self.loraplus_text_encoder_lr_ratio)
        partial = info.context and info.context.get("partial")
        if not partial and any(r is not None for r in loraplus):
            if self.network not in ("lora", "c3lier"):
                raise ValueError(f"LoRA+ (loraplus_*) applies to the lora and c3lier networks, not {self.network}")
            if self.dora_wd:
                raise ValueError("LoRA+ (loraplus_*) and dora_wd do not go together (DoRA trains LyCORIS modules)")
        return self

    @field_validator("down_lr_weight", "up_lr_weight")
    @classmethod
    def _curve_name(cls, value):
        if isinstance(value, str) and not CURVE.match(value):
            raise ValueError(f"{value!r} is not a list or one of {', '.join(CURVES)} (optionally +base, e.g. sine+0.5)")
        return value

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_switch(cls, value):
        """YAML reads a bare `on`/`off` as true/false."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


def setting_class(name: str) -> tuple[Effect, Backend]:
    """(effect, backend) of one TrainSettings field; KeyError for a field nobody classified."""
    extra = TrainSettings.model_fields[name].json_schema_extra or {}
    return extra["effect"], extra["backend"]


def run_key_fields(trainer: str) -> frozenset[str]:
    """Fields whose change means `trainer` must train the LoRA again."""
    return frozenset(n for n in TrainSettings.model_fields
                     if setting_class(n)[0] in ("weights", "file") and setting_class(n)[1] in ("both", trainer))


def keyed(settings: TrainSettings, fields: frozenset[str]) -> dict:
    """The `fields` of `settings` as the run and state keys hash them: an `added` option at its default is
    left out, so the keys of runs from before it existed stay what they were."""
    out = settings.model_dump(include=set(fields))
    for name in list(out):
        field = TrainSettings.model_fields[name]
        if (field.json_schema_extra or {}).get("added") and out[name] == field.get_default(call_default_factory=True):
            del out[name]
    return out


def resume_fields() -> frozenset[str]:
    """Fields that decide the embedded trainer's weights: a saved state resumes only if these are equal."""
    return frozenset(n for n in TrainSettings.model_fields
                     if setting_class(n) in (("weights", "both"), ("weights", "embedded")))


BlockWeights = str | list[float] | dict[str, float]


class MergeSettings(Strict):
    """Block weights baked into the trained LoRA (docs/rules.md §8). Read by the `merge` stage."""

    weights: BlockWeights | None = Field(
        None, description="a preset name, a value list or {block: weight}; unset: the seed's FACE for faces, "
                          "BODY for outfits and groups (charfw.workspace.KIND_DEFAULTS)")


class _CompressSection(Strict):
    """SVD resize of the merged LoRA (docs/rules.md §9). Read by the `compress` stage.

    Its fields are CompressOptions' (charfw.lora.options, where each is written once), plus `enabled`;
    a level of the workspace may set only some of them, the merged section is checked as a whole.
    """

    enabled: bool = True

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo):
        if not (info.context and info.context.get("partial")):
            try:
                self.options()
            except CharfwError as exc:
                raise ValueError(exc.message) from None
        return self

    def options(self) -> CompressOptions:
        return CompressOptions(**self.model_dump(exclude={"enabled"}))


def _pydantic_fields(options: type) -> dict:
    """A dataclass's fields as pydantic field definitions (type, Field with its metadata)."""
    hints = get_type_hints(options)
    return {f.name: (hints[f.name], Field(f.default, **{k: v for k, v in f.metadata.items() if v is not None}))
            for f in dataclass_fields(options)}


CompressSettings = create_model("CompressSettings", __base__=_CompressSection, __module__=__name__,
                                __doc__=_CompressSection.__doc__, **_pydantic_fields(CompressOptions))


class SampleSettings(Strict):
    """Sample images of each finished LoRA, and its X/Y grid (block weights x strength). Read by `sample`."""

    enabled: bool = True
    prompts: list[str] | None = Field(None, description="None = captions of f00/f02/f04 and b00/b02 views")
    negative_prompt: str = "lowres, bad anatomy, bad hands, worst quality, low quality"
    seeds: list[int] = Field(default_factory=lambda: [1], min_length=1)
    steps: int = Field(20, ge=1)
    width: int | None = Field(None, ge=64, description="None = 512 (SD1.5) / 1024 (SDXL)")
    height: int | None = Field(None, ge=64)
    guidance: float = Field(7.0, ge=0)
    sampler: Literal["euler_a", "ddim", "dpmpp_2m"] = "euler_a"
    grid_weights: list[str] = Field(default_factory=lambda: ["target", "ALL", "NONE", "FACE", "BODY"],
                                    description="X/Y grid rows: `target` = the target's own weights, or presets")
    grid_strengths: list[float] = Field(default_factory=lambda: [0.5, 0.8, 1.0], min_length=1)


class Stages(Strict):
    """Per-level overrides of the settings sections."""

    train: TrainSettings | None = None
    merge: MergeSettings | None = None
    compress: CompressSettings | None = None
    sample: SampleSettings | None = None


class Sizes(Strict):
    """Sizes (longest side) each set is prepared at; None = the family's defaults (rules.sizeclass)."""

    face: list[int] | None = Field(None, min_length=1)
    body: list[int] | None = Field(None, min_length=1)

    @field_validator("face", "body")
    @classmethod
    def _positive_sorted(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return v
        if any(s < 64 for s in v):
            raise ValueError("sizes must be at least 64 pixels")
        return sorted(set(v))


class Repeats(Strict):
    face: int = Field(4, ge=1)
    body: int = Field(2, ge=1)
    group: int = Field(1, ge=1)


class Captions(Strict):
    template: list[CaptionRule] = Field(default_factory=lambda: list(DEFAULT_TEMPLATE))
    background_tags: bool = Field(True, description="false: no background tags (white background, black "
                                                    "background, simple background): for masked_loss, where the "
                                                    "background is not learned and needs no tags to absorb it")

    @property
    def rules(self) -> list[CaptionRule]:
        """The template as the captions apply it."""
        return self.template if self.background_tags else without_background(self.template)


class RegFolder(Strict):
    """A folder of view-coded images of generic figures (no character): regularization images that pair with a
    target's own view codes (docs/rules.md §4)."""

    folder: ReadPath = Field(description="view-coded images (f00.png, b02-alt.png...), face and body codes mixed")
    class_word: Words = Field("girl", alias="class", description="their captions' first tag: class tokens only")
    repeats: int = Field(1, ge=1, description="the reg subsets' num_repeats")
    background: Literal["black", "white"] | tuple[Channel, Channel, Channel] = "black"
    symmetric: bool = Field(True, description="flip them (flip_aug) as the character's symmetric sets are")
    generate: "GenerateSettings | None" = Field(
        None, description="make candidates of generic figures for this folder (its own prompt, no character's)")


class ControlNetUse(Strict):
    """One ControlNet of the generate stage: a file as users download it, the template kind it reads."""

    model: ReadPath = Field(description="a .safetensors ControlNet (original or diffusers layout, or an SDXL "
                                        "union model listed once per kind), or builtin:tiny-sd15-controlnet / "
                                        "builtin:tiny-sdxl-controlnet / builtin:tiny-sdxl-controlnet-union")
    kind: Literal["openpose", "depth", "lineart"]
    weight: float = Field(1.0, ge=0, le=2, description="controlnet_conditioning_scale")
    start: float = Field(0.0, ge=0, le=1, description="the share of the steps before it starts")
    end: float = Field(1.0, ge=0, le=1, description="the share of the steps after which it stops")


class HiresPass(Strict):
    """A second, image-to-image pass at a larger size (the seed's high-res fix)."""

    scale: float = Field(1.5, gt=1, le=4)
    denoise: float = Field(0.7, gt=0, le=1, description="strength: the seed used 0.6-0.8")
    steps: int | None = Field(None, ge=1, description="None = the first pass's steps")


class GenerateSettings(Strict):
    """Candidate images per view code, made with the workspace's model and ControlNets over the pose
    templates (docs/rules.md §2b). A character's section applies to its face set; an outfit's is laid
    over it for the outfit's body set (its prompt is added to the character's)."""

    prompt: str | None = Field(None, description="what the character looks like (the view's tags are added)")
    negative_prompt: str = "lowres, bad anatomy, bad hands, worst quality, low quality, multiple views"
    controlnets: list[ControlNetUse] = Field(default_factory=list)
    candidates: int = Field(4, ge=1, le=64, description="images per view code")
    seed: int = Field(1, description="candidate n of a view uses seed + n")
    steps: int = Field(20, ge=1)
    guidance: float = Field(9.0, ge=0, description="CFG (the seed used 8-14)")
    sampler: Literal["euler_a", "ddim", "dpmpp_2m"] = "euler_a"
    width: int | None = Field(None, ge=64, description="None = the template's (the family's resolution)")
    height: int | None = Field(None, ge=64)
    hires: HiresPass | None = None
    views: list[Annotated[str, Field(pattern=r"^[fb][0-2][0-7]$")]] | None = Field(
        None, description="view codes to generate; None = every pitch of the yaws the set needs")
    alpha: bool = Field(False, description="key the plain background out into transparency (for masked_loss)")
    alpha_tolerance: int = Field(40, ge=1, le=255, description="how far from the background colour still counts "
                                                               "as background (the edge is soft over as much again)")
    templates: dict[Annotated[str, Field(pattern=r"^[fb][0-2][0-7]$")], ReadPath] = Field(
        default_factory=dict, description="your own template image per view code (e.g. the seed's HED ones); "
                                          "it is given to every ControlNet instead of charfw's")


RegFolder.model_rebuild()


class ClusterSettings(Strict):
    """`cluster:`: where trainings run when not on this machine (charfw.cluster)."""

    engine: Literal["ray"] = "ray"
    address: str = Field("auto", description="the Ray cluster: auto (this machine is a node), ray://head:10001 "
                                             "(Ray Client) or host:port; CHARFW_RAY_ADDRESS wins")
    gpus_per_training: float = Field(1, gt=0, description="GPUs each training holds on its node")


class Workspace(Stages):
    """`charfw.yaml`: defaults for every character."""

    characters: ReadPath = "characters"
    build: OutputDir = "build"
    dist: OutputDir = "dist"
    model: ReadPath = Field(description="base checkpoint for training (SD1.5 or SDXL family)", json_schema_extra={
        "missing": "set it to your SD1.5 or SDXL checkpoint, e.g. `model: models/animefull-final.safetensors` "
                   "(or `model: builtin:tiny-sd15` for a quick test run)"})
    vae: ReadPath | None = None
    cache: str | None = Field(None, description="the shared run cache: a folder or an fsspec URL (s3://bucket/charfw); "
                                                "a LoRA trained anywhere with the same run key is taken from it")
    cluster: ClusterSettings | None = Field(None, description="train on a Ray cluster instead of this machine")
    family: Literal[tuple(FAMILIES)] | None = Field(
        None, description="model family; None = read from the model file (it must agree when set)")
    sizes: Sizes = Field(default_factory=Sizes)
    repeats: Repeats = Field(default_factory=Repeats)
    batch_profile: Literal[PROFILES] | dict[str, int] = "default"
    captions: Captions = Field(default_factory=Captions)
    presets: dict[Name, list[float]] = Field(default_factory=dict, description="user block-weight presets")
    regularization: dict[Name, RegFolder] = Field(
        default_factory=dict, description="regularization folders every character uses (a character may replace them)")
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


LORA_FIELD = Field(None, description="use this trained LoRA (e.g. from sd-scripts) instead of training")


class FaceSet(Stages):
    folder: ReadPath = "face"
    lora: ReadPath | None = LORA_FIELD
    repeats: int | None = Field(None, ge=1)
    sizes: list[int] | None = None


class Outfit(Stages):
    keyword: Keyword
    folder: ReadPath | None = Field(None, description="default: the outfit's name")
    tags: list[Tag] = Field(default_factory=list)
    repeats: int | None = Field(None, ge=1)
    face_repeats: int | None = Field(None, ge=1, description="repeats of the face images in this outfit's data")
    sizes: list[int] | None = None
    include_face: bool = True
    init: Literal["face"] | None = Field(None, description="start training from the face LoRA's weights")
    lora: ReadPath | None = LORA_FIELD
    generate: GenerateSettings | None = Field(
        None, description="candidates of the body set: laid over the character's generate section")


class Character(Stages):
    """`characters/<name>/character.yaml`."""

    keyword: Keyword
    class_word: Words = Field("girl", alias="class")
    tags: list[Tag] = Field(default_factory=list, description="extra tags after the keyword")
    symmetric: bool = True
    background: Literal["black", "white"] | tuple[Channel, Channel, Channel] = "black"
    face: FaceSet = Field(default_factory=FaceSet)
    outfits: dict[Name, Outfit] = Field(default_factory=dict)
    generate: GenerateSettings | None = Field(None, description="make candidate images of the face set (opt-in)")
    regularization: dict[Name, RegFolder] | None = Field(
        None, description="this character's regularization folders instead of the workspace's ({}: none)")


class Group(Stages):
    """One entry of `characters/groups.yaml` (group name -> this)."""

    members: list[Keyword] = Field(min_length=2, description="outfit keywords")
    repeats: int | None = Field(None, ge=1)
    lora: ReadPath | None = LORA_FIELD

