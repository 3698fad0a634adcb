"""The architecture configs and tokenizer files shipped with charfw (no download, ever)."""

from __future__ import annotations

import json
import os
from pathlib import Path

DATA = Path(__file__).parent / "data"
TOKENIZER_DIR = DATA / "tokenizer"

# Architectures with a config set under data/<name>/ (unet.json, vae.json, text_encoder.json and,
# for SDXL, text_encoder_2.json), and the model family each belongs to.
ARCHS = ("sd15", "tiny-sd15", "sdxl", "tiny-sdxl")
FAMILY = {"sd15": "sd15", "tiny-sd15": "sd15", "sdxl": "sdxl", "tiny-sdxl": "sdxl"}
ARCH_LABEL = {"sd15": "SD1.5", "tiny-sd15": "tiny-sd15", "sdxl": "SDXL", "tiny-sdxl": "tiny-sdxl"}
ARTICLE = {"sd15": "an", "tiny-sd15": "a", "sdxl": "an", "tiny-sdxl": "a"}  # "an SD1.5 checkpoint"


def parts(arch: str) -> tuple[str, ...]:
    """The networks of one architecture, in checkpoint order."""
    base = ("unet", "vae", "text_encoder")
    return base + ("text_encoder_2",) if FAMILY[arch] == "sdxl" else base


def arch_config(arch: str, part: str) -> dict:
    """One component config: part is 'unet', 'vae', 'text_encoder' or (SDXL) 'text_encoder_2'."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
    return json.loads((DATA / arch / f"{part}.json").read_text(encoding="utf-8"))


def scheduler_config() -> dict:
    """The training noise schedule SD1.5 and SDXL share: DDPM, scaled_linear 0.00085-0.012, 1000 steps,
    epsilon."""
    return json.loads((DATA / "scheduler.json").read_text(encoding="utf-8"))


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """`cache_dir` if given, else $CHARFW_CACHE, else ~/.cache/charfw."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get("CHARFW_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "charfw"
