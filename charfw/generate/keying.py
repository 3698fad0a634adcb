"""Keying the plain background out: a candidate drawn on a flat colour becomes an RGBA image whose alpha
masked training can use (docs/rules.md §2b)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def key_out(image: Image.Image, background: tuple[int, int, int], tolerance: int) -> Image.Image:
    """RGBA: a pixel within `tolerance` of the background colour (largest channel difference) is
    transparent, one beyond twice that opaque, linear between (a soft edge); the colours are kept."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    distance = np.abs(rgb - np.asarray(background, dtype=np.int16)).max(axis=2)
    alpha = np.clip((distance - tolerance) / tolerance, 0.0, 1.0)
    out = np.dstack([rgb.astype(np.uint8), np.round(alpha * 255).astype(np.uint8)])
    return Image.fromarray(out, "RGBA")
