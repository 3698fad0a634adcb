"""Pixels of one training sample: resize, centre-crop to the bucket, flip, colour augmentation.

Colour augmentation follows sd-scripts in kind (one sample in three gets either a small
hue shift of up to ±16° or a gamma of 0.95-1.05) but draws each image's augmented
looks from a fixed set of `COLOR_VARIANTS` per image, derived from the seed. A finite
set is what lets VAE latents be cached with colour augmentation on (sd-scripts
forbids that combination); with a weak augmentation a handful of variants loses
nothing that matters.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from charfw.errors import CharfwError
from charfw.rules.buckets import Placement, center_crop_box

COLOR_VARIANTS = 6          # augmented looks per image (variant 0 = unchanged)
COLOR_PROBABILITY = 1 / 3   # share of samples that get one (as sd-scripts)
HUE_LIMIT_DEGREES = 16.0    # sd-scripts: 8 on OpenCV's 0-180 hue scale
GAMMA_RANGE = (0.95, 1.05)


def color_params(seed: int, image_key: str, variant: int) -> tuple[str, float] | None:
    """What variant `variant` of an image does: ('hue', degrees) or ('gamma', g); None for 0."""
    if variant == 0:
        return None
    rng = random.Random(f"charfw-color/{seed}/{image_key}/{variant}")
    if variant % 2:
        return "hue", rng.uniform(-HUE_LIMIT_DEGREES, HUE_LIMIT_DEGREES)
    return "gamma", rng.uniform(*GAMMA_RANGE)


def apply_color(image: Image.Image, params: tuple[str, float] | None) -> Image.Image:
    if params is None:
        return image
    kind, value = params
    if kind == "hue":
        hsv = np.asarray(image.convert("HSV")).copy()
        shift = int(round(value / 360 * 256)) % 256
        hsv[..., 0] = (hsv[..., 0].astype(np.int16) + shift) % 256
        return Image.fromarray(hsv, "HSV").convert("RGB")
    table = [min(255, int(round(255 * (i / 255) ** value))) for i in range(256)]
    return image.point(table * 3)


def _placed(image: Image.Image, placement: Placement, flip: bool) -> Image.Image:
    """Resized as placed, centre-cropped to the bucket, flipped: the same for the pixels and their alpha."""
    if image.size != placement.resized:
        image = image.resize(placement.resized, Image.Resampling.LANCZOS)
    image = image.crop(center_crop_box(placement.resized, placement.bucket))
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else image


def load_mask(path: Path, placement: Placement, flip: bool, latent_size: tuple[int, int]) -> torch.Tensor:
    """(1, h, w) loss weights in [0, 1] at `latent_size` (h, w): the image's alpha resized, cropped and
    flipped as its pixels are, then averaged down to the latents (sd-scripts: area interpolation to
    the loss's size); all ones for an image without alpha."""
    try:
        with Image.open(path) as im:
            alpha = im.getchannel("A") if "A" in im.getbands() else None
    except Exception as exc:
        raise CharfwError(f"cannot read image ({exc})", file=path) from None
    if alpha is None:
        return torch.ones(1, *latent_size)
    mask = torch.from_numpy(np.asarray(_placed(alpha, placement, flip), dtype=np.float32) / 255.0)[None, None]
    return torch.nn.functional.interpolate(mask, size=latent_size, mode="area")[0]


def load_sample(path: Path, placement: Placement, flip: bool, color: tuple[str, float] | None) -> torch.Tensor:
    """(3, H, W) float tensor in [-1, 1], H x W = the bucket."""
    try:
        with Image.open(path) as im:
            image = im.convert("RGB")
    except Exception as exc:
        raise CharfwError(f"cannot read image ({exc})", file=path) from None
    image = apply_color(_placed(image, placement, flip), color)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
