"""Under `doit -n N` each worker takes its own GPU (CUDA_VISIBLE_DEVICES), from a fake device list."""

import multiprocessing
import os

import pytest

from charfw.process import claim_worker_gpu, worker_gpu


def test_round_robin_over_visible_or_chosen_gpus():
    visible = ["0", "1", "2", "3"]
    assert [worker_gpu(s, None, visible) for s in range(5)] == ["0", "1", "2", "3", "0"]
    assert [worker_gpu(s, [2, 3], visible) for s in range(3)] == ["2", "3", "2"]
    assert worker_gpu(0, [7], visible) is None and worker_gpu(0, None, []) is None   # no such GPU, none at all
    assert worker_gpu(1, None, ["GPU-aa", "GPU-bb"]) == "GPU-bb"                    # UUIDs as given


def _claim(gpus):
    return multiprocessing.current_process()._identity[0], claim_worker_gpu(gpus), os.environ["CUDA_VISIBLE_DEVICES"]


@pytest.mark.parametrize("gpus, expected", [(None, {"7", "9"}), ([1], {"9"})])
def test_each_worker_process_sees_one_gpu(monkeypatch, gpus, expected):
    """Two worker processes (as `doit -n 2` forks them) inheriting the device list "7,9"."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7,9")
    ctx = multiprocessing.get_context("fork")
    seen = {}
    with ctx.Pool(2) as pool:
        while len(seen) < 2:
            for worker, claimed, env in pool.map(_claim, [gpus] * 8, chunksize=1):
                assert claimed == env == worker_gpu(worker - 1, gpus, ["7", "9"])
                assert seen.setdefault(worker, env) == env      # a worker keeps its GPU for every task
    assert set(seen.values()) == expected
    assert claim_worker_gpu(gpus) is None and os.environ["CUDA_VISIBLE_DEVICES"] == "7,9"   # main process
