"""The keys kohya sd-scripts' `--dataset_config` accepts, per level (its config_util schema,
DreamBooth-style datasets), with the value each has when absent.

One definition for the writer (charfw.dataset.toml writes only these keys) and the
embedded trainer's reader (charfw.train.dataset accepts exactly these).
"""

from __future__ import annotations

# Keys a subset may set, or inherit from its dataset or [general].
SUBSET = {
    "color_aug": False, "face_crop_aug_range": None, "flip_aug": False, "num_repeats": 1,
    "random_crop": False, "shuffle_caption": False, "keep_tokens": 0, "keep_tokens_separator": "",
    "secondary_separator": None, "caption_separator": ",", "enable_wildcard": False,
    "token_warmup_min": 1, "token_warmup_step": 0, "caption_prefix": None, "caption_suffix": None,
    "custom_attributes": None, "resize_interpolation": None,
    "caption_dropout_every_n_epochs": 0, "caption_dropout_rate": 0, "caption_tag_dropout_rate": 0,
    "caption_extension": ".caption", "class_tokens": None, "cache_info": False,
}
# Keys a dataset may set, or inherit from [general].
DATASET = {
    "batch_size": 1, "bucket_no_upscale": False, "bucket_reso_steps": 64, "enable_bucket": False,
    "max_bucket_reso": 1024, "min_bucket_reso": 256, "resolution": None, "network_multiplier": 1.0,
    "validation_seed": None, "validation_split": 0.0, "resize_interpolation": None,
}
# Keys only a subset itself may set.
SUBSET_ONLY = {"image_dir": None, "is_reg": False, "alpha_mask": False, "metadata_file": None}

SD_SCRIPTS_KEYS = {
    "general": set(SUBSET) | set(DATASET),
    "datasets": set(SUBSET) | set(DATASET) | {"subsets"},
    "subsets": set(SUBSET) | set(SUBSET_ONLY),
}
DEFAULTS = {**SUBSET, **DATASET, **SUBSET_ONLY}
