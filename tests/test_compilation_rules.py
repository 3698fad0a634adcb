"""When the trainer compiles its blocks and when it replays them as CUDA graphs: pure rules, no GPU."""

import pytest

from charfw.rules.compilation import COMPILE_MIN_STEPS, cuda_graphs_blocker, use_compile


@pytest.mark.parametrize("setting, on_gpu, steps, expected", [
    ("on", False, 1, True), ("off", True, 10_000, False),
    ("auto", True, COMPILE_MIN_STEPS, True), ("auto", True, COMPILE_MIN_STEPS - 1, False),
    ("auto", False, 10_000, False),
])
def test_compile_auto_only_on_a_gpu_for_long_runs(setting, on_gpu, steps, expected):
    assert use_compile(setting, on_gpu, steps) is expected


def test_cuda_graphs_apply_to_compiled_uncheckpointed_gpu_runs_only():
    assert cuda_graphs_blocker(compiled=True, on_gpu=True, checkpointing=False) is None
    assert "GPU" in cuda_graphs_blocker(compiled=True, on_gpu=False, checkpointing=False)
    assert "compile" in cuda_graphs_blocker(compiled=False, on_gpu=True, checkpointing=False)
    assert "checkpointing" in cuda_graphs_blocker(compiled=True, on_gpu=True, checkpointing=True)
