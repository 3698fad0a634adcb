"""Host-to-GPU copies that do not wait for the GPU.

A plain `.to("cuda")` of an ordinary (pageable) CPU tensor makes PyTorch synchronise the
stream, so a step that copies its noise or token ids that way waits for the previous step's
kernels to finish and the CPU can never run ahead. From pinned memory with `non_blocking`,
the copy is queued like a kernel (PyTorch's pinned-memory cache keeps the buffer alive until
the copy has run).
"""

from __future__ import annotations

import torch


def to_device(tensor: torch.Tensor, device) -> torch.Tensor:
    """`tensor` on `device`, queued without a synchronisation when that is a GPU."""
    device = torch.device(device)
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
