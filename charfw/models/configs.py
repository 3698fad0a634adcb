"""The architecture configs and tokenizer files shipped with charfw (no download, ever)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from charfw.families import FAMILIES, Family, of_config

DATA = Path(__file__).parent / "data"
TOKENIZER_DIR = DATA / "tokenizer"

# Config sets under data/<name>/ (unet.json, vae.json and one file per text encoder), each
# family's (charfw.families: Family.configs), full size first
ARCHS = tuple(config for f in FAMILIES.values() for config in f.configs)


def label(arch: str) -> str:
    """How messages name a config set: the family's label for its full-size one ("SD1.5")."""
    family = of_config(arch)
    return family.label if arch == family.configs[0] else arch


def with_article(arch: str) -> str:
    """ "an SD1.5", "a tiny-sd15" """
    text = label(arch)
    return f"{'an' if text[0] in 'AEFHILMNORSX' else 'a'} {text}"


def parts(arch: str) -> tuple[str, ...]:
    """The networks of one config set, in checkpoint order."""
    return ("unet", "vae", *of_config(arch).text_encoder_parts)


def arch_config(arch: str, part: str) -> dict:
    """One component config: part is 'unet', 'vae', 'text_encoder' or (SDXL) 'text_encoder_2'."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
    return json.loads((DATA / arch / f"{part}.json").read_text(encoding="utf-8"))


def scheduler_config(family: Family | None = None) -> dict:
    """The training noise schedule SD1.5 and SDXL share: DDPM, scaled_linear 0.00085-0.012, 1000 steps;
    epsilon, or for a v-prediction family velocity with the betas rescaled to zero terminal SNR
    (diffusers' rescale_betas_zero_snr: the algorithm of Lin et al. 2024 that sd-scripts'
    --zero_terminal_snr applies)."""
    config = json.loads((DATA / "scheduler.json").read_text(encoding="utf-8"))
    if family is not None and family.prediction_type == "v":
        config["prediction_type"] = "v_prediction"
    if family is not None and family.zero_terminal_snr:
        config["rescale_betas_zero_snr"] = True
    return config


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """`cache_dir` if given, else $CHARFW_CACHE, else ~/.cache/charfw."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get("CHARFW_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "charfw"
