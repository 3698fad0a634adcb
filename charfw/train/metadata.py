"""The metadata of a trained LoRA: sd-scripts' `ss_*` keys and `modelspec.*` (SAI model spec).

Key names and value formats follow what sd-scripts' train_network writes, so
tools that read them (A1111's extra networks, sd-webui-additional-networks,
metadata viewers) show the right thing. Values are strings; nested values are JSON.
The `sshs_*` hashes are added at save time by charfw.lora.metadata.with_hashes.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from charfw import __version__
from charfw.families import Family
from charfw.fingerprint import file_identity
from charfw.recipe import Recipe
from charfw.train.dataset import Dataset, tag_frequency

IMPLEMENTATION = f"charfw/{__version__}"  # where sd-scripts writes sd-scripts/<commit>


def dataset_metadata(datasets: list[Dataset]) -> list[dict]:
    """ss_datasets: one entry per dataset, with bucket counts and subsets, like sd-scripts."""
    out = []
    for ds in datasets:
        buckets: dict[tuple[int, int], int] = {}
        errors = []
        for image in ds.images:
            reps = image.repeats
            buckets[image.bucket] = buckets.get(image.bucket, 0) + reps
            errors.append(abs(image.bucket[0] / image.bucket[1] - image.size[0] / image.size[1]))
        bucket_info = {"buckets": {str(i): {"resolution": list(r), "count": buckets[r]}
                                   for i, r in enumerate(sorted(buckets))},
                       "mean_img_ar_error": sum(errors) / len(errors)}
        out.append({
            "is_dreambooth": True,
            "batch_size_per_device": ds.batch_size,
            "num_train_images": ds.num_train_images,
            "num_reg_images": ds.num_reg_images,
            "resolution": list(ds.resolution),
            "enable_bucket": ds.enable_bucket,
            "min_bucket_reso": ds.min_bucket_reso,
            "max_bucket_reso": ds.max_bucket_reso,
            "tag_frequency": tag_frequency([ds]),
            "bucket_info": bucket_info,
            "resize_interpolation": None,  # Lanczos, the trainer's own resize
            "subsets": [{
                "img_count": s.img_count, "num_repeats": s.num_repeats, "color_aug": s.color_aug,
                "flip_aug": s.flip_aug, "random_crop": False, "shuffle_caption": False, "keep_tokens": 0,
                "keep_tokens_separator": "", "secondary_separator": None, "enable_wildcard": False,
                "caption_prefix": None, "caption_suffix": None, "resize_interpolation": None,
                "image_dir": s.name, "class_tokens": s.class_tokens, "is_reg": s.is_reg,
            } for s in ds.subsets],
        })
    return out


def training_metadata(*, recipe: Recipe, datasets: list[Dataset], optimizer_name: str, mixed_precision: str,
                      checkpointing: bool, model_name: str, model_hashes: tuple[str, str] | None,
                      vae_name: str | None, vae_hashes: tuple[str, str] | None, name: str, trigger_words: list[str],
                      started_at: float, batches_per_epoch: int, epochs: int, session_id: int) -> dict[str, str]:
    """Everything known when training starts (the recipe as sd-scripts records it); `finish_metadata`
    adds the end."""
    rates = not recipe.own_schedule
    spec, family = recipe.network, recipe.family
    meta: dict[str, object] = {
        "ss_session_id": session_id,
        "ss_training_started_at": started_at,
        "ss_output_name": name,
        "ss_learning_rate": recipe.lr if rates else None,
        "ss_text_encoder_lr": recipe.text_encoder_lr if rates else None,
        "ss_unet_lr": recipe.lr if rates else None,
        "ss_num_train_images": sum(ds.num_train_images for ds in datasets),
        "ss_num_validation_images": sum(len(ds.held_out) for ds in datasets),
        "ss_num_reg_images": sum(ds.num_reg_images for ds in datasets),
        "ss_num_batches_per_epoch": batches_per_epoch,
        "ss_num_epochs": epochs,
        "ss_gradient_checkpointing": checkpointing,
        "ss_gradient_accumulation_steps": 1,
        "ss_max_train_steps": recipe.steps,
        "ss_lr_warmup_steps": recipe.warmup_steps,
        "ss_lr_scheduler": recipe.scheduler,
        "ss_network_module": spec.module,
        "ss_network_dim": spec.dim,
        "ss_network_alpha": spec.alpha,
        "ss_network_dropout": None,
        "ss_mixed_precision": mixed_precision,
        "ss_full_fp16": False,
        "ss_v2": False,
        "ss_base_model_version": family.base_model_version,
        "ss_clip_skip": recipe.clip_skip,
        "ss_max_token_length": None,
        "ss_cache_latents": True,
        "ss_seed": recipe.seed,
        "ss_lowram": False,
        "ss_noise_offset": recipe.noise_offset,
        "ss_multires_noise_iterations": recipe.multires_noise_iterations,
        "ss_multires_noise_discount": recipe.multires_noise_discount,
        "ss_adaptive_noise_scale": None,
        "ss_zero_terminal_snr": family.zero_terminal_snr,
        "ss_sd_scripts_commit_hash": IMPLEMENTATION,  # not sd-scripts: which trainer wrote the file
        "ss_optimizer": optimizer_name,
        "ss_max_grad_norm": recipe.max_grad_norm,
        "ss_caption_dropout_rate": 0.0,
        "ss_caption_dropout_every_n_epochs": 0,
        "ss_caption_tag_dropout_rate": 0.0,
        "ss_face_crop_aug_range": None,
        "ss_prior_loss_weight": recipe.prior_loss_weight,
        "ss_min_snr_gamma": recipe.min_snr_gamma,
        "ss_scale_weight_norms": recipe.scale_weight_norms,
        "ss_ip_noise_gamma": recipe.ip_noise_gamma,
        "ss_debiased_estimation": recipe.debiased_estimation,
        "ss_noise_offset_random_strength": False,
        "ss_ip_noise_gamma_random_strength": False,
        "ss_loss_type": recipe.loss_type,
        "ss_huber_schedule": recipe.huber_schedule,   # sd-scripts records them whatever the loss
        "ss_huber_scale": recipe.huber_scale,
        "ss_huber_c": recipe.huber_c,
        "ss_fp8_base": False,
        "ss_fp8_base_unet": False,
        "ss_validation_seed": recipe.validation_seed if recipe.validation_split else None,
        "ss_validation_split": recipe.validation_split,
        "ss_max_validation_steps": None,
        "ss_validate_every_n_epochs": None,
        "ss_validate_every_n_steps": recipe.validation_every if recipe.validates else None,
        "ss_resize_interpolation": None,
        "ss_resolution": tuple(datasets[0].resolution),
        "ss_datasets": json.dumps(dataset_metadata(datasets)),
        "ss_tag_frequency": json.dumps(tag_frequency(datasets)),
        "ss_dataset_dirs": json.dumps(_dataset_dirs(datasets)),
        "ss_sd_model_name": model_name,
        "ss_training_comment": "trained by charfw",
    }
    if recipe.validation_views:
        meta["charfw_validation_views"] = json.dumps(list(recipe.validation_views))
    if spec.args:
        meta["ss_network_args"] = spec.args_json()
    if model_hashes:
        meta["ss_sd_model_hash"], meta["ss_new_sd_model_hash"] = model_hashes
    if vae_name:
        meta["ss_vae_name"] = vae_name
        if vae_hashes:
            meta["ss_vae_hash"], meta["ss_new_vae_hash"] = vae_hashes
    out = {k: str(v) for k, v in meta.items()}
    out.update(modelspec(name, trigger_words, datasets[0].resolution, recipe.clip_skip, started_at, family))
    return out


def _dataset_dirs(datasets: list[Dataset]) -> dict[str, dict]:
    """ss_dataset_dirs: the training subsets' folders (sd-scripts leaves regularization folders out)."""
    dirs: dict[str, dict] = {}
    for ds in datasets:
        for s in ds.subsets:
            if s.is_reg:
                continue
            key, n = s.name, 2
            while key in dirs:
                key, n = f"{s.name} ({n})", n + 1
            dirs[key] = {"n_repeats": s.num_repeats, "img_count": s.img_count}
    return dirs


def modelspec(title: str, trigger_words: list[str], resolution: tuple[int, int], clip_skip: int | None,
              timestamp: float, family: Family) -> dict[str, str]:
    meta = {
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": family.modelspec_architecture,
        "modelspec.implementation": family.modelspec_implementation,
        "modelspec.implementation_version": IMPLEMENTATION,
        "modelspec.title": title,
        "modelspec.resolution": f"{resolution[0]}x{resolution[1]}",
        "modelspec.date": datetime.datetime.fromtimestamp(int(timestamp)).isoformat(),
        "modelspec.prediction_type": family.prediction_type,
    }
    if clip_skip is not None:
        meta["modelspec.encoder_layer"] = str(clip_skip)
    if trigger_words:
        meta["modelspec.trigger_phrase"] = ", ".join(trigger_words)
        meta["modelspec.usage_hint"] = "Put " + ", ".join(trigger_words) + " in the prompt."
    return meta


def finish_metadata(meta: dict[str, str], *, steps: int, epoch: int, finished_at: float) -> dict[str, str]:
    out = dict(meta)
    out["ss_training_finished_at"] = str(finished_at)
    out["ss_steps"] = str(steps)
    out["ss_epoch"] = str(epoch)
    out["modelspec.date"] = datetime.datetime.fromtimestamp(int(finished_at)).isoformat()
    return out


def model_hashes(path: Path | None) -> tuple[str, str] | None:
    """(legacy 8-digit hash, full SHA-256) of a model file, as ss_sd_model_hash / ss_new_sd_model_hash."""
    if path is None or not Path(path).is_file():
        return None
    identity = file_identity(path)
    return identity.legacy_hash, identity.sha256
