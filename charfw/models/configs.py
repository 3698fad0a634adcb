"""The architecture configs and tokenizer files shipped with charfw (no download, ever)."""

from __future__ import annotations

import json
import os
from pathlib import Path

DATA = Path(__file__).parent / "data"
TOKENIZER_DIR = DATA / "tokenizer"

# Architectures with a config set under data/<name>/ (unet.json, vae.json, text_encoder.json).
ARCHS = ("sd15", "tiny-sd15")
ARCH_LABEL = {"sd15": "SD1.5", "tiny-sd15": "tiny-sd15"}
ARTICLE = {"sd15": "an", "tiny-sd15": "a"}  # "an SD1.5 checkpoint", "a tiny-sd15 checkpoint"


def arch_config(arch: str, part: str) -> dict:
    """One component config: part is 'unet', 'vae' or 'text_encoder'."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
    return json.loads((DATA / arch / f"{part}.json").read_text(encoding="utf-8"))


def scheduler_config() -> dict:
    """SD1.5 training noise schedule: DDPM, scaled_linear 0.00085-0.012, 1000 steps, epsilon."""
    return json.loads((DATA / "scheduler.json").read_text(encoding="utf-8"))


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """`cache_dir` if given, else $CHARFW_CACHE, else ~/.cache/charfw."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get("CHARFW_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "charfw"
