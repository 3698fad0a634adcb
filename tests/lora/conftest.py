"""The LoRA tests use small matrices: one torch thread is fastest for them, and keeps them
fast when the CPU is shared (two OpenMP threads spin-waiting against other work made a
one-second test take twenty)."""

import pytest
import torch


@pytest.fixture(scope="package", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
