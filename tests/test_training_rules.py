"""The seed's training numbers are defined once: both trainers print and use the same values."""

import pytest

from charfw.config.models import TrainSettings
from charfw.families import SD15
from charfw.recipe import network_spec, recipe_of
from charfw.request import TrainRequest
from charfw.rules.training import resolved_alpha, resolved_dim, text_encoder_lr
from charfw.sdscripts.command import train_args


@pytest.mark.parametrize("lr", [1e-4, 1e-3, 3e-5, 2.5e-6, 7e-4])
def test_text_encoder_lr_is_the_same_float_in_both_trainers(lr):
    s = TrainSettings(lr=lr)
    args = train_args(TrainRequest(name="k", settings=s, steps=1, dataset_toml="d.toml", model="/m.safetensors",
                                   output="o.safetensors", state_dir="s", family=SD15))
    printed = next(a.split("=", 1)[1] for a in args if a.startswith("--text_encoder_lr="))
    assert recipe_of(s, SD15, 1).text_encoder_lr == float(printed) == text_encoder_lr(lr, None)
    assert text_encoder_lr(1e-3, None) == 0.00044       # not 0.00044000000000000007


@pytest.mark.parametrize("network, dim, alpha", [("c3lier", None, "half"), ("loha", None, "one"), ("lora", 5, 2.5)])
def test_network_dim_and_alpha_agree(network, dim, alpha):
    s = TrainSettings(network=network, dim=dim, alpha=alpha)
    spec = network_spec(s)
    args = train_args(TrainRequest(name="k", settings=s, steps=1, dataset_toml="d.toml", model="/m.safetensors",
                                   output="o.safetensors", state_dir="s", family=SD15))
    assert f"--network_dim={spec.dim}" in args and spec.dim == resolved_dim(network, dim)
    assert float(next(a for a in args if a.startswith("--network_alpha=")).split("=")[1]) == spec.alpha
    assert spec.alpha == resolved_alpha(alpha, spec.dim)


def test_scaled_schedule_keeps_the_epochs_and_scales_lr_by_the_square_root():
    from charfw.rules.training import scaled_schedule
    steps, warmup, factor = scaled_schedule(1000, 100, per_epoch_before=40, per_epoch_after=10)
    assert (steps, warmup) == (250, 25)
    assert factor == pytest.approx(2.0)                 # 4x the samples per step: lr x sqrt(4)
    assert steps / 10 == 1000 / 40                      # the same number of epochs
    assert scaled_schedule(1001, 0, 40, 10)[0] == 251   # rounded up: never fewer epochs than asked
    assert scaled_schedule(1000, 0, 10, 10) == (1000, 0, 1.0)   # batches could not grow: nothing changes
    assert scaled_schedule(3, 0, 40, 5)[0] == 1
