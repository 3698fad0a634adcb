"""gradient_checkpointing: auto decides from a free-memory figure alone (no GPU needed)."""

import pytest

from charfw.rules.memory import GIB, training_bytes, use_checkpointing

SD15 = dict(family="sd15", batch=2, pixels=512 * 512, adapter_params=200_000_000, weight_bytes=2.0 * GIB)
SDXL = dict(family="sdxl", batch=1, pixels=1024 * 1024, adapter_params=450_000_000, weight_bytes=5.2 * GIB)


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
