"""Stable Diffusion XL and the models trained from it (Illustrious, NoobAI, Pony, ...)."""

from charfw.families.family import BlockLayout, Family, LrBlocks, SizeClasses, TextEncoderArch, UNetArch, block_ids
from charfw.families.sd15 import SD15

GIB = 2**30


def from_sd15_levels(values: str) -> str:
    """A 26-value SD1.5 list as the 20 SDXL blocks at the same resolution levels.

    SDXL is SD1.5's U-Net without the lowest-resolution level (SD1.5's IN09..IN11 and
    OUT00..OUT02); every other block keeps its place: IN00..IN08 and M00 as they are, SDXL
    OUT00..OUT08 = SD1.5 OUT03..OUT11. The seed's FACE and BODY carry over to SDXL this way.
    """
    w = dict(zip(SD15.blocks.blocks, values.split(",")))
    return ",".join([w["BASE"], *(w[f"IN{i:02d}"] for i in range(9)), w["M00"],
                     *(w[f"OUT{i:02d}"] for i in range(3, 12))])


SDXL = Family(
    name="sdxl",
    label="SDXL",
    variant_of=None,
    checkpoint_marker="conditioner.embedders.",
    checkpoint_evidence="conditioner.embedders.* tensors",
    checkpoint_flag=None,
    text_encoder_prefix="conditioner.embedders.0.transformer.",
    configs=("sdxl", "tiny-sdxl"),
    builtin_model="tiny-sdxl",
    text_encoder_parts=("text_encoder", "text_encoder_2"),
    # SD1.5's classes at twice the size; at 1024x1024 SDXL fits a 12 GB card only at batch 1
    size_classes=SizeClasses(1024, 1536, 2048, {"default": {"LOW_LOW": 1}, "12gb": {"LOW_LOW": 1}},
                             (512, 768, 1024, 1536)),
    unet=UNetArch(channels=(320, 640, 1280), depth=(0, 2, 10), mid_depth=10, context_dim=2048,
                  linear_proj=True, ldm_names=True),
    text_encoders=(TextEncoderArch("lora_te1_", 12, 768, 3072), TextEncoderArch("lora_te2_", 32, 1280, 5120)),
    blocks=BlockLayout(
        blocks=("BASE", *block_ids("IN", 9), "M00", *block_ids("OUT", 9)),
        short=("BASE", "IN04", "IN05", "IN07", "IN08", "M00", *block_ids("OUT", 6)),
        shallow_in=("IN04", "IN05"), deep_in=("IN07", "IN08"),
        deep_out=block_ids("OUT", 3), shallow_out=block_ids("OUT", 6)[3:],
        own={name: from_sd15_levels(SD15.blocks.own[name]) for name in ("FACE", "BODY")}),
    # two text encoders, attention in the lowest-resolution up level, transformer depth > 1
    lora_marks=r"^lora_te[12]_|^lora_unet_(up_blocks_0_attentions|output_blocks_[0-2]_1_"
               r"|.*transformer_blocks_[1-9])",
    lr_blocks=LrBlocks(down=9, mid=3, ends=True),   # time embedding, IN00..IN08, middle 0-2, OUT00..OUT08, out
    trains_text_encoder=False,   # the U-Net only, text encoder outputs cached, as sd-scripts recommends
    uses_clip_skip=False,        # always the penultimate layers
    pooled_conditioning=True,
    activation_bytes=12.0 * GIB, base_pixels=1024 * 1024,
    prediction_type="epsilon",
    zero_terminal_snr=False,
    sd_scripts_script="sdxl_train_network.py",
    sd_scripts_flags=("--no_half_vae",),   # SDXL's VAE overflows in fp16 (the embedded trainer keeps it fp32)
    sd_scripts_caches_te_outputs=True,
    base_model_version="sdxl_base_v1-0",
    modelspec_architecture="stable-diffusion-xl-v1-base/lora",
    modelspec_implementation="https://github.com/Stability-AI/generative-models",
    sample_size=1024,
)
