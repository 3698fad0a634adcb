"""Reading weight files safely: safetensors, or torch pickles restricted to tensors.

Nothing here ever unpickles an arbitrary object: `.ckpt`/`.pt` files go through
`torch.load(weights_only=True)`, which refuses any class that is not a tensor
or a plain container, and we turn that refusal into a CharfwError.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Iterator

import torch

from charfw.errors import CharfwError


class TensorFile:
    """Read-only view of the tensors in one checkpoint file (lazy for safetensors)."""

    def __init__(self, path: Path, tensors: dict[str, torch.Tensor] | None = None,
                 handle=None, metadata: dict[str, str] | None = None):
        self.path = path
        self._tensors = tensors
        self._handle = handle
        self._keys = set(handle.keys()) if handle is not None else set(tensors or {})
        self.metadata = metadata or {}

    def keys(self) -> set[str]:
        return self._keys

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def shape(self, key: str) -> tuple[int, ...]:
        if self._handle is not None:
            return tuple(self._handle.get_slice(key).get_shape())
        return tuple(self._tensors[key].shape)

    def get(self, key: str) -> torch.Tensor:
        if self._handle is not None:
            return self._handle.get_tensor(key)
        # A private, contiguous copy: no view into a shared storage or an mmap of the file survives.
        return self._tensors[key].clone(memory_format=torch.contiguous_format)

    def close(self) -> None:
        self._handle = None
        self._tensors = None

    def __enter__(self) -> "TensorFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _sniff(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"          # torch.save since 1.6
    if head[:1] == b"\x80":
        return "torch-legacy"       # raw pickle (protocol >= 2)
    if len(head) > 8 and head[8:9] == b"{":
        return "safetensors"        # u64 header length, then the JSON header
    return "unknown"


def open_tensors(path: str | Path, what: str = "checkpoint") -> TensorFile:
    """Open a weight file by content (not by extension); raise CharfwError on anything unsafe or unreadable."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CharfwError(f"{what} file not found", file=path)
    if path.is_dir():
        raise CharfwError(f"{what} is a directory; give a single .safetensors or .ckpt file", file=path)
    kind = _sniff(path)
    if kind == "safetensors":
        return _open_safetensors(path, what)
    if kind.startswith("torch"):
        return _open_torch(path, what, mmap=kind == "torch-zip")
    raise CharfwError(f"not a .safetensors or torch checkpoint file (unrecognised content) for the {what}", file=path)


def _open_safetensors(path: Path, what: str) -> TensorFile:
    from safetensors import safe_open
    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
        metadata = handle.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise CharfwError(f"cannot read {what} as safetensors: {exc}", file=path) from None
    return TensorFile(path, handle=handle, metadata=dict(metadata))


_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def _open_torch(path: Path, what: str, mmap: bool) -> TensorFile:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        found = _GLOBAL.search(str(exc))
        detail = f" (it contains {found.group(1)})" if found else ""
        raise CharfwError(
            f"refusing to load this {what}: it holds Python objects besides tensors{detail}, and unpickling them "
            "could run arbitrary code; only tensor-only .ckpt/.pt files are read. Convert it to .safetensors "
            "with a tool you trust", file=path) from None
    except Exception as exc:
        raise CharfwError(f"cannot read {what}: {type(exc).__name__}: {exc}", file=path) from None
    # Lightning-style checkpoints wrap the weights: {"state_dict": {...}, "global_step": ...}.
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CharfwError(f"not a {what}: the file holds a {type(obj).__name__}, not a dict of tensors", file=path)
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    return TensorFile(path, tensors=tensors)
