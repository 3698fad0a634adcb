"""Bucket selection follows sd-scripts' BucketManager exactly (expectations computed by hand)."""

import pytest

from charfw.rules.buckets import bucket_resolutions, center_crop_box, cover_placement, no_upscale_placement

AREA = 512 * 512


@pytest.mark.parametrize("size, bucket, resized", [
    ((128, 128), (128, 128), (128, 128)),     # small: never upscaled
    ((100, 150), (64, 128), (100, 150)),      # rounded down to 64-px steps, then cropped
    ((512, 512), (512, 512), (512, 512)),     # exactly the area
    ((1024, 1024), (512, 512), (512, 512)),   # scaled down to the area
    ((768, 512), (576, 384), (576, 384)),     # 627x418 -> both roundings give 3:2; height rule wins ties
    ((900, 500), (576, 320), (576, 320)),     # width rule: 640x320 (2.0) vs height rule: 576x320 (1.8) -> height
    ((500, 900), (320, 576), (320, 576)),     # width rule: 320x576 exact vs 320x640 -> width
    ((1000, 600), (640, 384), (640, 384)),
    ((700, 1000), (384, 576), (403, 576)),    # resized keeps the aspect; the bucket crops 19 px of width
])
def test_no_upscale_matches_sd_scripts(size, bucket, resized):
    p = no_upscale_placement(*size, AREA, 64)
    assert (p.bucket, p.resized) == (bucket, resized)


def test_bucket_never_exceeds_area_nor_image():
    for w in range(64, 1500, 37):
        for h in range(64, 1500, 53):
            p = no_upscale_placement(w, h, AREA, 64)
            assert p.bucket[0] * p.bucket[1] <= AREA * 1.1
            assert p.bucket[0] <= p.resized[0] <= max(w, p.bucket[0]) and p.bucket[1] <= p.resized[1]
            assert p.bucket[0] % 64 == 0 and p.bucket[1] % 64 == 0


def test_predefined_buckets_and_cover():
    resos = bucket_resolutions((512, 512), 256, 1024, 64)
    assert (512, 512) in resos and (256, 1024) in resos and (1024, 256) in resos and (448, 576) in resos
    assert all(w * h <= AREA and w % 64 == 0 and h % 64 == 0 for w, h in resos)
    p = cover_placement(100, 100, resos)     # upscaled to cover the square bucket
    assert p == type(p)((512, 512), (512, 512))
    p = cover_placement(300, 200, [(512, 512)])  # enable_bucket off: one bucket, cover then crop
    assert p.bucket == (512, 512) and p.resized == (768, 512)


def test_center_crop():
    assert center_crop_box((403, 576), (384, 576)) == (9, 0, 393, 576)
    assert center_crop_box((100, 150), (64, 128)) == (18, 11, 82, 139)
