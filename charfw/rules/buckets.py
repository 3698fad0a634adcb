"""Aspect-ratio buckets, with the exact rules of sd-scripts' BucketManager.

Matching sd-scripts matters: a dataset trained by charfw or by sd-scripts should see
the same pixels. Two modes:

- `bucket_no_upscale` (what charfw writes): an image larger than the dataset's area
  (resolution w x h) is first scaled down, keeping its aspect ratio, to that area
  with one side on a multiple of the step (whichever choice keeps the aspect
  ratio closer); then the bucket is that size rounded *down* to multiples of the
  step and the image is centre-cropped to it. Smaller images are never upscaled.
- otherwise: a predefined set of buckets (`bucket_resolutions`), or the single
  resolution when bucketing is off; the image is scaled to cover the closest
  aspect ratio bucket, then centre-cropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Size = tuple[int, int]  # (width, height)


@dataclass(frozen=True)
class Placement:
    """Where one image goes: its bucket and the size it is resized to before cropping."""

    bucket: Size
    resized: Size


def round_to_steps(x: float, steps: int) -> int:
    """Round half up to an integer, then down to a multiple of `steps`."""
    x = int(x + 0.5)
    return x - x % steps


def no_upscale_placement(width: int, height: int, max_area: int, steps: int = 64) -> Placement:
    """The bucket of an image under `bucket_no_upscale` (see module docstring)."""
    aspect = width / height
    if width * height > max_area:
        rw = math.sqrt(max_area * aspect)
        rh = max_area / rw
        bw = round_to_steps(rw, steps)
        bh_for_w = round_to_steps(bw / aspect, steps)
        bh = round_to_steps(rh, steps)
        bw_for_h = round_to_steps(bh * aspect, steps)
        err_w = abs(bw / bh_for_w - aspect) if bh_for_w else math.inf
        err_h = abs(bw_for_h / bh - aspect) if bh else math.inf
        if err_w < err_h:
            resized = (bw, int(bw / aspect + 0.5))
        else:
            resized = (int(bh * aspect + 0.5), bh)
    else:
        resized = (width, height)
    bucket = (resized[0] - resized[0] % steps, resized[1] - resized[1] % steps)
    return Placement(bucket, resized)


def bucket_resolutions(resolution: Size, min_size: int = 256, max_size: int = 1024, steps: int = 64) -> list[Size]:
    """The predefined buckets sd-scripts uses when upscaling is allowed."""
    max_area = resolution[0] * resolution[1]
    side = int(math.sqrt(max_area) // steps) * steps
    resos = {(side, side)}
    width = min_size
    while width <= max_size:
        height = min(max_size, int((max_area // width) // steps) * steps)
        if height >= min_size:
            resos.add((width, height))
            resos.add((height, width))
        width += steps
    return sorted(resos)


def cover_placement(width: int, height: int, buckets: list[Size]) -> Placement:
    """Closest-aspect bucket (exact size preferred); scale so the image covers it."""
    aspect = width / height
    if (width, height) in buckets:
        bucket = (width, height)
    else:
        bucket = min(buckets, key=lambda b: abs(b[0] / b[1] - aspect))  # first of ties, like argmin
    if aspect > bucket[0] / bucket[1]:
        scale = bucket[1] / height
    else:
        scale = bucket[0] / width
    return Placement(bucket, (int(width * scale + 0.5), int(height * scale + 0.5)))


def center_crop_box(resized: Size, bucket: Size) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the centred bucket-sized window of a resized image."""
    left = (resized[0] - bucket[0]) // 2 if resized[0] > bucket[0] else 0
    top = (resized[1] - bucket[1]) // 2 if resized[1] > bucket[1] else 0
    return left, top, left + bucket[0], top + bucket[1]


def batches_per_epoch(bucket_counts: list[int], batch_size: int) -> int:
    """Batches of one dataset per epoch: each bucket's samples (images x repeats) cut into batches
    of `batch_size`, the last one possibly short (as sd-scripts' BucketManager)."""
    return sum(-(-n // batch_size) for n in bucket_counts if n)
