"""Fixtures for the trainer tests: a tiny drawn dataset and the builtin tiny SD1.5 model, offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

os.environ["HF_HUB_OFFLINE"] = "1"

COLORS = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40)]
SIZES = [(64, 64), (64, 128), (64, 64), (64, 128)]


def make_dataset(root: Path, *, color_aug: bool = True, flip_aug: bool = True, repeats: int = 2,
                 batch_size: int = 2, captions: bool = True) -> Path:
    """Four small drawn images (two buckets) with captions, and an sd-scripts dataset TOML."""
    folder = root / "krnk girl_f0064"
    folder.mkdir(parents=True, exist_ok=True)
    for i, (color, size) in enumerate(zip(COLORS, SIZES)):
        image = Image.new("RGB", size, (0, 0, 0))
        ImageDraw.Draw(image).ellipse((8 + 2 * i, 8, 52, size[1] - 12), fill=color)
        image.save(folder / f"f0{i}.png")
        if captions:
            (folder / f"f0{i}.txt").write_text(f"krnk, white background, from front, c{i}\n", encoding="utf-8")
    toml = root / "data.toml"
    toml.write_text(f"""[general]
color_aug = {str(color_aug).lower()}
enable_bucket = true
bucket_no_upscale = true
caption_extension = '.txt'
num_repeats = {repeats}

[[datasets]]
resolution = [512, 512]
batch_size = {batch_size}

[[datasets.subsets]]
image_dir = 'krnk girl_f0064'
class_tokens = 'krnk girl'
flip_aug = {str(flip_aug).lower()}
""", encoding="utf-8")
    return toml


@pytest.fixture(scope="session", autouse=True)
def offline_cache(tmp_path_factory):
    """Tiny model cache for the session (written once), nothing downloaded, one thread (CPU may be shared)."""
    old_cache, old_threads = os.environ.get("CHARFW_CACHE"), torch.get_num_threads()
    os.environ["CHARFW_CACHE"] = str(tmp_path_factory.mktemp("charfw-cache"))
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old_threads)
    if old_cache is None:
        os.environ.pop("CHARFW_CACHE", None)
    else:
        os.environ["CHARFW_CACHE"] = old_cache


@pytest.fixture(scope="session")
def dataset_toml(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def tiny():
    """builtin:tiny-sd15, shared: tests that inject adapters must restore() them."""
    from charfw.models import load_sd15
    return load_sd15("builtin:tiny-sd15")
