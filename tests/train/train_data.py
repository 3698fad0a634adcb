"""A tiny drawn training set: four images in two buckets, captions, and an sd-scripts dataset TOML."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

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
