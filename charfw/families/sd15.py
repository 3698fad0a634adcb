"""Stable Diffusion 1.x and the models trained from it."""

from charfw.families.family import BlockLayout, Family, LrBlocks, SizeClasses, TextEncoderArch, UNetArch, block_ids

GIB = 2**30

SD15 = Family(
    name="sd15",
    label="SD1.5",
    variant_of=None,
    checkpoint_marker=None,
    checkpoint_evidence="cond_stage_model.transformer.* tensors",
    checkpoint_flag=None,
    text_encoder_prefix="cond_stage_model.transformer.",
    configs=("sd15", "tiny-sd15"),
    builtin_model="tiny-sd15",
    text_encoder_parts=("text_encoder",),
    # width and height classed separately, LOW <= 512 < MID <= 768 < HIGH; the seed's batch tables
    size_classes=SizeClasses(512, 768, 1024, {
        "default": {"LOW_LOW": 2},
        "12gb": {"LOW_LOW": 4, "MID_LOW": 3, "LOW_MID": 3, "MID_MID": 2, "HIGH_LOW": 2, "LOW_HIGH": 2},
    }, (128, 192, 256, 384, 512, 768)),
    unet=UNetArch(channels=(320, 640, 1280, 1280), depth=(1, 1, 1, 0), mid_depth=1, context_dim=768,
                  linear_proj=False),
    text_encoders=(TextEncoderArch("lora_te_", 12, 768, 3072),),
    blocks=BlockLayout(
        blocks=("BASE", *block_ids("IN", 12), "M00", *block_ids("OUT", 12)),
        short=("BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00", *block_ids("OUT", 12)[3:]),
        shallow_in=("IN01", "IN02", "IN04"), deep_in=("IN05", "IN07", "IN08"),
        deep_out=block_ids("OUT", 7)[3:], shallow_out=block_ids("OUT", 12)[7:],
        # the seed's presets
        own={"FACE": "0,1,1,1,1,1,0,0,0,1,0,0,0,0,1,0,1,1,1,0,1,1,1,0,0,1",
             "BODY": "0,1,1,1,0,1,0,0,0,1,0,0,0,0,0,0,1,1,1,1,1,1,1,0,0,1"}),
    # one text encoder, attention at the highest resolution, a fourth level (down_blocks_3, IN09..IN11)
    lora_marks=r"^lora_te_|^lora_unet_(down_blocks_0_attentions|down_blocks_3_|up_blocks_3_"
               r"|input_blocks_(?:[12]_1_|9_|1[01]_)|output_blocks_(?:9|1[01])_)",
    lr_blocks=LrBlocks(down=12, mid=1, ends=False),   # IN00..IN11, the mid block, OUT00..OUT11
    trains_text_encoder=True,
    uses_clip_skip=True,
    pooled_conditioning=False,
    activation_bytes=5.0 * GIB, base_pixels=512 * 512,
    prediction_type="epsilon",
    zero_terminal_snr=False,
    sd_scripts_script="train_network.py",
    sd_scripts_flags=(),
    sd_scripts_caches_te_outputs=False,
    base_model_version="sd_v1",
    modelspec_architecture="stable-diffusion-v1/lora",
    modelspec_implementation="diffusers",   # as sd-scripts' sai_model_spec names it for SD1.5
    sample_size=512,
)
