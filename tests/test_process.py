"""Process-wide settings chosen by the entry points: threads per doit worker."""

import pytest

from charfw.process import doit_workers, threads_per_worker


@pytest.mark.parametrize("argv, n", [([], 1), (["-n", "3"], 3), (["-n3"], 3), (["--process=4"], 4),
                                     (["--process", "2", "train"], 2), (["list", "--all"], 1)])
def test_doit_workers_from_the_command_line(argv, n):
    assert doit_workers(argv) == n


def test_threads_per_worker():
    assert threads_per_worker(1, cpus=8, env={}) == 7         # one core left for everything else
    assert threads_per_worker(3, cpus=8, env={}) == 2
    assert threads_per_worker(1, cpus=2, env={}) == 1
    assert threads_per_worker(16, cpus=8, env={}) == 1
    assert threads_per_worker(3, cpus=8, env={"CHARFW_THREADS": "5"}) == 5
