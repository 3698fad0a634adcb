"""gradient_checkpointing: auto decides from a free-memory figure alone (no GPU needed)."""

import pytest

from charfw.families import SD15, SDXL
from charfw.rules.memory import GIB, training_bytes, use_checkpointing

SD15 = dict(family=SD15, batch=2, pixels=512 * 512, adapter_params=200_000_000, weight_bytes=2.0 * GIB)
SDXL = dict(family=SDXL, batch=1, pixels=1024 * 1024, adapter_params=450_000_000, weight_bytes=5.2 * GIB)


def test_explicit_settings_are_kept_whatever_the_memory():
    assert use_checkpointing(True, 1000 * GIB, **SD15) is True
    assert use_checkpointing(False, 1 * GIB, **SD15) is False


@pytest.mark.parametrize("free_gib, expected", [(80, False), (24, False), (12, True), (8, True)])
def test_auto_on_sd15_turns_checkpointing_off_only_where_the_step_fits(free_gib, expected):
    assert use_checkpointing("auto", free_gib * GIB, **SD15) is expected


@pytest.mark.parametrize("free_gib, expected", [(80, False), (24, True), (12, True)])
def test_auto_on_sdxl(free_gib, expected):
    assert use_checkpointing("auto", free_gib * GIB, **SDXL) is expected


def test_auto_is_deterministic_and_monotonic():
    need = training_bytes(checkpointing=False, **SD15)
    assert use_checkpointing("auto", need, **SD15) is False          # fits exactly
    assert use_checkpointing("auto", need - 1, **SD15) is True
    assert [use_checkpointing("auto", need, **SD15) for _ in range(3)] == [False] * 3
    assert use_checkpointing("auto", None, **SD15) is True            # unknown memory: the safe choice
    bigger = dict(SD15, batch=8)
    assert training_bytes(checkpointing=False, **bigger) > need > training_bytes(checkpointing=True, **SD15)


# -- batch_scale: auto ------------------------------------------------------------------------------

from charfw.rules.memory import auto_batch_scale  # noqa: E402

GROW = dict(SD15, checkpointing="auto", largest_bucket=40)


def test_batch_scale_setting_is_kept_whatever_the_memory():
    assert auto_batch_scale(1, 1000 * GIB, True, **GROW) == 1
    assert auto_batch_scale(4, 1 * GIB, True, **GROW) == 4


def test_auto_grows_the_batch_only_on_a_gpu_with_known_memory():
    assert auto_batch_scale("auto", 1000 * GIB, False, **GROW) == 1     # a CPU step costs its batch in full
    assert auto_batch_scale("auto", None, True, **GROW) == 1


@pytest.mark.parametrize("free_gib, expected", [(160, 8), (80, 4), (48, 4), (30, 2), (24, 1), (8, 1)])
def test_auto_takes_the_largest_scale_that_fits_without_checkpointing(free_gib, expected):
    scale = auto_batch_scale("auto", free_gib * GIB, True, **GROW)
    assert scale == expected
    fits = training_bytes(SD15["family"], SD15["batch"] * scale, SD15["pixels"], SD15["adapter_params"],
                          SD15["weight_bytes"], checkpointing=False)
    assert scale == 1 or fits <= free_gib * GIB
    if scale < 8:   # the next scale would not have fitted
        assert training_bytes(SD15["family"], SD15["batch"] * scale * 2, SD15["pixels"], SD15["adapter_params"],
                              SD15["weight_bytes"], checkpointing=False) > free_gib * GIB


def test_auto_with_forced_checkpointing_estimates_with_it():
    forced = dict(GROW, checkpointing=True)
    assert auto_batch_scale("auto", 12 * GIB, True, **forced) > auto_batch_scale("auto", 12 * GIB, True, **GROW)


def test_auto_never_makes_batches_bigger_than_the_largest_bucket():
    assert auto_batch_scale("auto", 1000 * GIB, True, **dict(GROW, largest_bucket=5)) == 2   # 2 x 2 <= 5 < 2 x 4
    assert auto_batch_scale("auto", 1000 * GIB, True, **dict(GROW, largest_bucket=1)) == 1
