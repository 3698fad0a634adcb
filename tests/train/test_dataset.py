"""Reading the sd-scripts dataset TOML, and how samples are batched (pure, fast)."""

import collections

import pytest
import torch
from train_data import make_dataset

from charfw.errors import CharfwError
from charfw.train.augment import color_params, load_sample
from charfw.train.dataset import load_datasets, tag_frequency
from charfw.train.sampling import BatchPlan, epoch_batches


def test_reads_toml_relative_dirs_captions_and_buckets(tmp_path):
    toml = make_dataset(tmp_path, repeats=3)
    [ds] = load_datasets(toml)
    assert ds.resolution == (512, 512) and ds.batch_size == 2 and ds.bucket_no_upscale
    [sub] = ds.subsets
    assert sub.image_dir == tmp_path / "krnk girl_f0064" and sub.num_repeats == 3 and sub.flip_aug and sub.color_aug
    assert [i.caption for i in ds.images][0] == "krnk, white background, from front, c0"
    assert collections.Counter(i.bucket for i in ds.images) == {(64, 64): 2, (64, 128): 2}
    assert ds.num_train_images == 12
    assert tag_frequency([ds])["krnk girl_f0064"]["krnk"] == 4


def test_missing_caption_uses_class_tokens(tmp_path):
    toml = make_dataset(tmp_path, captions=False)
    [ds] = load_datasets(toml)
    assert {i.caption for i in ds.images} == {"krnk girl"}


def test_unsupported_and_unknown_keys_are_errors(tmp_path):
    toml = make_dataset(tmp_path)
    text = toml.read_text()
    toml.write_text(text.replace("flip_aug = true", "flip_aug = true\nshuffle_caption = true"))
    with pytest.raises(CharfwError, match="shuffle_caption"):
        load_datasets(toml)
    toml.write_text(text.replace("batch_size = 2", "batch_size = 2\nbatchsize = 3"))
    with pytest.raises(CharfwError, match="unknown key 'batchsize'"):
        load_datasets(toml)
    toml.write_text(text.replace("'krnk girl_f0064'", "'nowhere'"))
    with pytest.raises(CharfwError, match="not a folder"):
        load_datasets(toml)


def test_epoch_plan_repeats_buckets_and_determinism(tmp_path):
    toml = make_dataset(tmp_path, repeats=3)
    datasets = load_datasets(toml)
    batches = epoch_batches(datasets, 31337, 0)
    ds = datasets[0]
    seen = collections.Counter(s.image for b in batches for s in b)
    assert seen == {i: 3 for i in range(4)}                      # every image num_repeats times
    for b in batches:
        assert len({ds.images[s.image].bucket for s in b}) == 1  # one bucket per batch
        assert 1 <= len(b) <= ds.batch_size
    assert batches == epoch_batches(datasets, 31337, 0)          # a pure function of (seed, epoch)
    assert batches != epoch_batches(datasets, 31337, 1)
    flips = [s.flip for e in range(20) for b in epoch_batches(datasets, 1, e) for s in b]
    assert 0.3 < sum(flips) / len(flips) < 0.7
    colors = [s.color for e in range(20) for b in epoch_batches(datasets, 1, e) for s in b]
    assert 0.2 < sum(c > 0 for c in colors) / len(colors) < 0.5
    plan = BatchPlan(datasets, 31337)
    assert plan.per_epoch == len(batches) and plan[plan.per_epoch] == epoch_batches(datasets, 31337, 1)[0]


def test_no_flip_or_color_when_off(tmp_path):
    datasets = load_datasets(make_dataset(tmp_path, color_aug=False, flip_aug=False))
    assert not any(s.flip or s.color for e in range(5) for b in epoch_batches(datasets, 3, e) for s in b)


def test_sample_pixels_flip_and_color(tmp_path):
    [ds] = load_datasets(make_dataset(tmp_path))
    image = ds.images[1]
    plain = load_sample(image.path, image.placement, False, None)
    assert plain.shape == (3, 128, 64) and plain.min() >= -1 and plain.max() <= 1
    flipped = load_sample(image.path, image.placement, True, None)
    assert torch.equal(flipped, plain.flip(-1))
    hue = load_sample(image.path, image.placement, False, ("hue", 15.0))
    assert 0 < (hue - plain).abs().max() < 0.5
    assert color_params(1, "abc", 1)[0] == "hue" and color_params(1, "abc", 2)[0] == "gamma"
    assert color_params(1, "abc", 0) is None and color_params(1, "abc", 3) == color_params(1, "abc", 3)


def test_reader_accepts_every_key_sd_scripts_accepts(tmp_path, caplog):
    """Keys current sd-scripts takes are read: at their "off" value silently, with a note where the
    embedded trainer ignores a value, as an error where ignoring it would train differently
    (alpha_mask: test_masked_loss; is_reg: test_regularization; validation_split: test_validation)."""
    toml = make_dataset(tmp_path)
    text = toml.read_text()
    toml.write_text(text.replace("flip_aug = true", "flip_aug = true\nalpha_mask = false\ncaption_separator = ','\n"
                                 "is_reg = false").replace("batch_size = 2", "batch_size = 2\nvalidation_split = 0.0\n"
                                                           "validation_seed = 3"))
    assert len(load_datasets(toml)[0].images) == 4
    toml.write_text(text.replace("batch_size = 2", "batch_size = 2\nresize_interpolation = 'area'"))
    with caplog.at_level("WARNING", logger="charfw.train"):
        load_datasets(toml)
    assert "resize_interpolation = 'area' is ignored by the embedded trainer" in caplog.text
    for old, line, key in (("batch_size = 2", "network_multiplier = 0.5", "network_multiplier"),
                           ("flip_aug = true", "shuffle_caption = true", "shuffle_caption")):
        toml.write_text(text.replace(old, old + "\n" + line))
        with pytest.raises(CharfwError, match=f"{key} = .* not supported by the embedded trainer"):
            load_datasets(toml)
    toml.write_text(text.replace("batch_size = 2", "batch_size = 2\nvalidation_split = 0.2"))
    with pytest.raises(CharfwError, match="validation_split needs validation_seed"):
        load_datasets(toml)    # sd-scripts would draw its split at random: the trainers would differ


def test_reader_follows_sd_scripts_levels(tmp_path):
    """A key at a level sd-scripts' schema does not allow there is rejected, as sd-scripts rejects it."""
    toml = make_dataset(tmp_path)
    text = toml.read_text()
    toml.write_text(text.replace("flip_aug = true", "flip_aug = true\nbatch_size = 4"))   # dataset key in a subset
    with pytest.raises(CharfwError, match=r"subsets\[0\]\.batch_size: unknown key"):
        load_datasets(toml)
    toml.write_text(text.replace("[general]", "[general]\nimage_dir = 'x'"))
    with pytest.raises(CharfwError, match=r"general\.image_dir: unknown key"):
        load_datasets(toml)
