"""The resolved training recipe: every number a training runs with, decided once (docs/rules.md §6).

`TrainRequest.recipe` builds it from the manifest's settings, the model family and the steps
(a request whose batches grew, `batch_scale`, is a new request with its own recipe). The
embedded trainer trains with it, and the sd-scripts command line (charfw.sdscripts.command)
and the LoRA's `ss_*` metadata (charfw.train.metadata) are renderings of it: none of them
derives a dimension, an alpha or a learning rate again. Torch-free.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from charfw.families import Family
from charfw.families.family import LrBlocks
from charfw.rules.blocklr import BLOCK_OPTIONS, BlockRanks, block_ranks, lr_weights
from charfw.rules.training import number_text, resolved_alpha, resolved_dim, text_encoder_lr, trains_text_encoder
from charfw.rules.validation import validation_every

LYCORIS_ALGOS = ("locon", "loha", "lokr")
LORAPLUS = ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio")
ADAFACTOR_ARGS = (("relative_step", True), ("scale_parameter", True), ("warmup_init", False))  # the seed's
MAX_GRAD_NORM = 1.0    # sd-scripts' default gradient clipping
WEIGHT_DECAY = 0.01    # AdamW's and bitsandbytes' default, what sd-scripts runs with


@dataclass(frozen=True)
class NetworkSpec:
    """The adapters: kind, rank and alpha (3x3 convs take the same as the linear layers)."""

    algo: str            # TrainSettings.network
    dim: int
    alpha: float
    conv_dim: int
    conv_alpha: float
    loraplus: tuple[tuple[str, float], ...] = ()   # LoRA+ ratios as sd-scripts' network_args name them
    dora: bool = False   # DoRA (LyCORIS dora_wd, magnitude per input channel): locon only
    lr_blocks: tuple[float, ...] | None = None   # learning-rate factor per sd-scripts block (rules.blocklr)
    ranks: BlockRanks | None = None              # rank and alpha per block (rules.blocklr)
    blocks: LrBlocks | None = None               # the family's blocks, where lr_blocks or ranks are set

    @property
    def conv3x3(self) -> bool:
        return self.algo != "lora"

    @property
    def module(self) -> str:
        """sd-scripts' --network_module for this network."""
        return "lycoris.kohya" if self.algo in LYCORIS_ALGOS else "networks.lora"

    @property
    def args(self) -> dict[str, str]:
        """sd-scripts' --network_args, as it records them (strings)."""
        args = {}
        if self.algo != "lora":
            args = {"conv_dim": number_text(self.conv_dim), "conv_alpha": number_text(self.conv_alpha)}
        if self.algo in LYCORIS_ALGOS:
            args["algo"] = self.algo
        if self.dora:   # per input channel, as A1111, Forge and ComfyUI apply dora_scale (LyCORIS' default differs)
            args.update(dora_wd="True", wd_on_output="False")
        return {**args, **self.block_args, **{name: number_text(ratio) for name, ratio in self.loraplus}}

    @property
    def block_args(self) -> dict[str, str]:
        """Block-wise rates and ranks as sd-scripts' networks.lora takes them: resolved lists (a curve drawn,
        short lists filled, the zero threshold applied), ranks in full so block_alphas alone applies too."""
        def text(values) -> str:
            return ",".join(number_text(v) for v in values)

        out = {}
        if self.lr_blocks is not None:
            ends, b = int(self.blocks.ends), self.blocks.down
            w = self.lr_blocks[ends:len(self.lr_blocks) - ends]
            out.update(down_lr_weight=text(w[:b]), mid_lr_weight=text(w[b:len(w) - b]), up_lr_weight=text(w[len(w) - b:]))
        if self.ranks is not None:
            out.update(block_dims=text(self.ranks.dims), block_alphas=text(self.ranks.alphas))
            if self.conv3x3:
                out.update(conv_block_dims=text(self.ranks.conv_dims), conv_block_alphas=text(self.ranks.conv_alphas))
        return out

    def module_rank(self, index: int | None, spatial: bool) -> tuple[int, float]:
        """(rank, alpha) of a module in sd-scripts block `index` (None: outside every block); rank 0: none."""
        if index is None or self.ranks is None:
            return (self.conv_dim, self.conv_alpha) if spatial else (self.dim, self.alpha)
        return self.ranks.of(index, spatial)

    def lr_factor(self, index: int | None) -> float:
        return 1.0 if index is None or self.lr_blocks is None else self.lr_blocks[index]

    @property
    def plus_ratios(self) -> tuple[float, float] | None:
        """LoRA+: (U-Net, text encoder) learning-rate factors of the up factors, None without LoRA+."""
        named = dict(self.loraplus)
        if not named:
            return None
        common = named.get("loraplus_lr_ratio", 1.0)
        return named.get("loraplus_unet_lr_ratio", common), named.get("loraplus_text_encoder_lr_ratio", common)

    def args_json(self) -> str | None:
        return json.dumps(self.args) if self.args else None


def network_spec(settings, family: Family | None = None) -> NetworkSpec:
    """Dim/alpha of docs/rules.md §6 from a TrainSettings. DoRA on c3lier trains LyCORIS' LoCon with DoRA:
    the same layers and key forms, the one module that decomposes the weight (sd-scripts' own LoRA cannot).
    With `family`, the block-wise rates and ranks (rules.blocklr; BlockError where they do not fit it)."""
    dim = resolved_dim(settings.network, settings.dim)
    alpha = resolved_alpha(settings.alpha, dim)
    loraplus = tuple((name, getattr(settings, name)) for name in LORAPLUS
                     if getattr(settings, name, None) is not None)
    dora = bool(getattr(settings, "dora_wd", False))
    algo = "locon" if dora else settings.network
    spec = NetworkSpec(algo, dim, alpha, dim, alpha, loraplus, dora)
    if family is None or not any(getattr(settings, name, None) is not None for name in BLOCK_OPTIONS):
        return spec
    weights = lr_weights(family, settings.down_lr_weight, settings.mid_lr_weight, settings.up_lr_weight,
                         settings.block_lr_zero_threshold)
    ranks = block_ranks(family, dim, alpha, dim, alpha, settings.block_dims, settings.block_alphas,
                        settings.conv_block_dims, settings.conv_block_alphas, weights)
    return replace(spec, lr_blocks=weights, ranks=ranks, blocks=family.lr_blocks)


@dataclass(frozen=True)
class Recipe:
    """What one training trains with. Adafactor brings its own learning rates and schedule
    (relative step): `lr`/`text_encoder_lr` are then what the seed's command line still passes."""

    family: Family
    network: NetworkSpec
    steps: int
    lr: float                         # the U-Net's
    text_encoder_lr: float
    train_text_encoder: bool
    optimizer: str                    # adamw8bit | adamw | adafactor
    optimizer_args: tuple[tuple[str, object], ...]
    scheduler: str                    # as sd-scripts names it ("adafactor" with Adafactor)
    warmup_steps: int
    restarts: int
    max_grad_norm: float
    weight_decay: float
    clip_skip: int | None             # None where the family always uses the penultimate layer
    noise_offset: float | None
    min_snr_gamma: float | None
    masked_loss: bool                 # the loss weighted by the images' alpha (subsets marked alpha_mask)
    loss_type: str                    # l2 | l1 | huber | smooth_l1
    huber_c: float
    huber_schedule: str
    huber_scale: float
    debiased_estimation: bool
    ip_noise_gamma: float | None
    multires_noise_iterations: int | None
    multires_noise_discount: float
    scale_weight_norms: float | None
    prior_loss_weight: float          # the loss weight of regularization images
    validation_split: float           # share of each training folder held out (rules.validation)
    validation_seed: int              # which ones (the setting, else the seed)
    validation_views: tuple[str, ...]  # view codes held out (embedded trainer)
    validation_every: int             # steps between validations (used where something is held out)
    seed: int

    @property
    def validates(self) -> bool:
        """Whether the run holds images out and reports their loss."""
        return bool(self.validation_split or self.validation_views)

    @property
    def own_schedule(self) -> bool:
        """The optimizer sets its own step sizes (Adafactor): no learning rates or warm-up apply."""
        return self.optimizer == "adafactor"

    @property
    def scheduler_steps(self) -> tuple[str, int]:
        """(diffusers' schedule name, warm-up steps) for an optimizer with learning rates."""
        name = self.scheduler
        if name == "constant" and self.warmup_steps:
            name = "constant_with_warmup"
        return name, self.warmup_steps


def recipe_of(settings, family: Family, steps: int) -> Recipe:
    """The recipe of a TrainSettings for `family` and `steps`."""
    adafactor = settings.optimizer == "adafactor"
    return Recipe(
        family=family, network=network_spec(settings, family), steps=steps, lr=settings.lr,
        text_encoder_lr=text_encoder_lr(settings.lr, settings.text_encoder_lr),
        train_text_encoder=trains_text_encoder(family, settings.train_text_encoder),
        optimizer=settings.optimizer, optimizer_args=ADAFACTOR_ARGS if adafactor else (),
        scheduler="adafactor" if adafactor else settings.scheduler, warmup_steps=settings.warmup_steps,
        restarts=settings.restarts, max_grad_norm=MAX_GRAD_NORM, weight_decay=WEIGHT_DECAY,
        clip_skip=settings.clip_skip if family.uses_clip_skip else None,
        noise_offset=settings.noise_offset, min_snr_gamma=settings.min_snr_gamma, masked_loss=settings.masked_loss,
        loss_type=settings.loss_type, huber_c=settings.huber_c, huber_schedule=settings.huber_schedule,
        huber_scale=settings.huber_scale, debiased_estimation=settings.debiased_estimation_loss,
        ip_noise_gamma=settings.ip_noise_gamma, multires_noise_iterations=settings.multires_noise_iterations,
        multires_noise_discount=settings.multires_noise_discount, scale_weight_norms=settings.scale_weight_norms,
        prior_loss_weight=settings.prior_loss_weight, validation_split=settings.validation_split,
        validation_seed=settings.seed if settings.validation_seed is None else settings.validation_seed,
        validation_views=tuple(settings.validation_views),
        validation_every=validation_every(settings.validate_every_n_steps, steps), seed=settings.seed)
