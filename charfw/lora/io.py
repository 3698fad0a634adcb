"""Reading and writing kohya-format LoRA safetensors files.

Kept thin: parse keys into per-module groups (`group_keys`, pure), read modules one at a
time (`LoraReader`, so tools can stream a file without holding it twice), and write a
file atomically with recomputed hashes (`save_lora`). Every failure a user can cause is a
CharfwError naming the file, and the key or module where there is one.
"""

from __future__ import annotations

import json

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import safetensors
import safetensors.torch
import torch

from charfw.errors import CharfwError
from charfw.fsutil import atomic_path
from charfw.lora.metadata import with_hashes
from charfw.lora.modules import KNOWN_SUFFIXES, Module, make_module


def group_keys(keys: Iterable[str], file: str | Path | None = None) -> dict[str, dict[str, str]]:
    """{module name: {suffix: key}}, in first-seen order; unknown suffixes are errors."""
    groups: dict[str, dict[str, str]] = {}
    for key in keys:
        name, dot, suffix = key.partition(".")
        if not dot or suffix not in KNOWN_SUFFIXES:
            raise CharfwError(f"unknown LoRA key suffix {suffix or '(none)'!r}; expected one of "
                              f"{', '.join(sorted(KNOWN_SUFFIXES))}", file=file, field=key)
        groups.setdefault(name, {})[suffix] = key
    return groups


class LoraReader:
    """An open LoRA file: metadata, module names, and modules read on demand."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise CharfwError("no such LoRA file", file=self.path)
        try:
            self._f = safetensors.safe_open(str(self.path), framework="pt")
            self.metadata: dict[str, str] = dict(self._f.metadata() or {})
            keys = list(self._f.keys())
        except CharfwError:
            raise
        except Exception as exc:  # safetensors raises several types for bad headers
            raise CharfwError(f"not a readable safetensors file ({exc})", file=self.path) from None
        self._groups = group_keys(keys, self.path)

    @property
    def names(self) -> list[str]:
        return list(self._groups)

    def read(self, name: str) -> Module:
        try:
            tensors = {suffix: self._f.get_tensor(key) for suffix, key in self._groups[name].items()}
        except Exception as exc:
            raise CharfwError(f"cannot read tensors of module {name} ({exc})", file=self.path) from None
        try:
            return make_module(name, tensors)
        except CharfwError as exc:
            raise CharfwError(exc.message, file=self.path, field=exc.field) from None

    def __iter__(self) -> Iterator[Module]:
        return (self.read(n) for n in self.names)

    def __enter__(self) -> "LoraReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._f = None


@dataclass
class LoraFile:
    """A whole LoRA in memory: metadata plus modules by name."""

    metadata: dict[str, str] = field(default_factory=dict)
    modules: dict[str, Module] = field(default_factory=dict)


def load_lora(path: str | Path) -> LoraFile:
    with LoraReader(path) as reader:
        return LoraFile(reader.metadata, {m.name: m for m in reader})


def flatten(modules: Iterable[Module]) -> dict[str, torch.Tensor]:
    """Module groups back to safetensors keys; tensors made contiguous and unshared."""
    out = {}
    for m in modules:
        for suffix, t in m.tensors.items():
            out[f"{m.name}.{suffix}"] = t.detach().contiguous()
    return out


def save_lora(path: str | Path, lora: LoraFile | Iterable[Module], metadata: Mapping[str, str] | None = None) -> None:
    """Write atomically, with `sshs_*` hashes recomputed for the tensors written."""
    if isinstance(lora, LoraFile):
        modules, metadata = lora.modules.values(), lora.metadata if metadata is None else metadata
    else:
        modules = lora
    tensors = flatten(modules)
    if not tensors:
        raise CharfwError("nothing to write: no module left", file=path)
    write_safetensors(path, tensors, with_hashes(tensors, metadata or {}))


def canonical_safetensors(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    """safetensors bytes with the header's keys sorted: the same tensors and metadata give the same file.

    safetensors itself writes the header from a hash map, so two saves of equal content differ
    in byte order and whole-file hashes change on every rebuild. The tensor data (and with it
    sd-scripts' `sshs_*` hashes, taken over the data) is exactly what safetensors lays out.
    """
    data = safetensors.torch.save(dict(tensors), dict(metadata))
    n = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8:8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + data[8 + n:]


def write_safetensors(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Write a canonical safetensors file atomically, without a copy of the data in memory.

    safetensors streams the tensors to the temporary file; then only its header is replaced by
    the sorted one (the same JSON in another key order: the same length).
    """
    with atomic_path(path) as tmp:
        safetensors.torch.save_file(dict(tensors), str(tmp), dict(metadata))
        with open(tmp, "r+b") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.dumps(json.loads(f.read(n)), sort_keys=True, separators=(",", ":")).encode()
            header += b" " * (n - len(header))
            if len(header) != n:  # not expected: fall back to writing the whole file anew
                f.close()
                tmp.write_bytes(canonical_safetensors(tensors, metadata))
                return
            f.seek(8)
            f.write(header)
