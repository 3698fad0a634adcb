"""What kohya sd-scripts checks before it trains, written from its documented behaviour.

An independent statement of the rules (not its code): `problems(argv, dataset)` lists what
`train_network.py` would refuse in a command line and its `--dataset_config`:

- every option must be one of its argparse options (those charfw can emit or documents,
  each checked to exist in sd-scripts' train_util / train_network argument definitions);
- `--cache_latents_to_disk` turns on `--cache_latents`;
- with cached latents no subset may use `color_aug` or `random_crop` (a subset inherits
  `[general]` and its dataset's values);
- `--adaptive_noise_scale` needs `--noise_offset`;
- `--network_args` values are `key=value`;
- dataset keys only at the levels its schema allows them (charfw.dataset.schema is tested
  against sd-scripts separately).

`sdxl_train_network.py` (``sdxl=True``) adds `--cache_text_encoder_outputs(_to_disk)`; it
refuses to cache text-encoder outputs while training a text-encoder network (needs
`--network_train_unet_only`), warns that `--clip_skip` "will be unexpected", and needs
bucket steps that are multiples of 32.
"""

from __future__ import annotations

OPTIONS = {
    "network_module", "network_args", "optimizer_type", "optimizer_args", "learning_rate", "text_encoder_lr",
    "lr_scheduler", "lr_scheduler_num_cycles", "lr_warmup_steps", "network_dim", "network_alpha",
    "dataset_config", "max_train_steps", "output_dir", "output_name", "pretrained_model_name_or_path", "vae",
    "clip_skip", "network_weights", "logging_dir", "log_prefix", "xformers", "sdpa", "save_model_as",
    "mixed_precision", "save_precision", "gradient_checkpointing", "persistent_data_loader_workers", "seed",
    "noise_offset", "min_snr_gamma", "cache_latents", "cache_latents_to_disk", "max_data_loader_n_workers",
    "save_state", "resume", "save_every_n_steps", "save_last_n_steps_state", "adaptive_noise_scale",
    "network_train_unet_only", "no_half_vae", "masked_loss", "loss_type", "huber_c", "huber_schedule", "huber_scale",
    "debiased_estimation_loss", "ip_noise_gamma", "scale_weight_norms", "multires_noise_iterations",
    "multires_noise_discount", "prior_loss_weight", "validate_every_n_steps", "v_parameterization", "zero_terminal_snr",
}
SDXL_OPTIONS = OPTIONS | {"cache_text_encoder_outputs", "cache_text_encoder_outputs_to_disk"}
MULTI_VALUE = {"network_args", "optimizer_args"}


def parse(argv: list[str]) -> dict[str, list[str]]:
    """--name=value / --name v1 v2 / --flag, as argparse reads them."""
    out: dict[str, list[str]] = {}
    name = None
    for tok in argv:
        if tok.startswith("--"):
            key, _, value = tok[2:].partition("=")
            out[key] = [value] if value else []
            name = key
        elif name is not None:
            out[name].append(tok)
    return out


def problems(argv: list[str], dataset: dict, sdxl: bool = False) -> list[str]:
    args = parse(argv)
    found = [f"unknown option --{k}" for k in args if k not in (SDXL_OPTIONS if sdxl else OPTIONS)]
    if sdxl:
        if "clip_skip" in args:
            found.append("clip_skip will be unexpected in SDXL training")
        if "cache_text_encoder_outputs_to_disk" in args:
            args["cache_text_encoder_outputs"] = []
        if "cache_text_encoder_outputs" in args and "network_train_unet_only" not in args:
            found.append("network for Text Encoder cannot be trained with caching Text Encoder outputs")
        for d, ds in enumerate(dataset.get("datasets", [])):
            steps = ds.get("bucket_reso_steps", dataset.get("general", {}).get("bucket_reso_steps", 64))
            if steps % 32:
                found.append(f"datasets[{d}]: bucket_reso_steps {steps} is not divisible by 32")
    found += [f"--{k} takes one value" for k, v in args.items() if k not in MULTI_VALUE and len(v) > 1]
    found += [f"--network_args {v} is not key=value" for v in args.get("network_args", []) if "=" not in v]
    if "adaptive_noise_scale" in args and "noise_offset" not in args:
        found.append("adaptive_noise_scale requires noise_offset")
    cache = "cache_latents" in args or "cache_latents_to_disk" in args
    general = dataset.get("general", {})
    for d, ds in enumerate(dataset.get("datasets", [])):
        for s, sub in enumerate(ds.get("subsets", [])):
            merged = {**general, **{k: v for k, v in ds.items() if k != "subsets"}, **sub}
            for key in ("color_aug", "random_crop"):
                if cache and merged.get(key):
                    found.append(f"datasets[{d}].subsets[{s}]: {key} cannot be used when caching latents")
    return found
