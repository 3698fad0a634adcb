"""Reading and writing kohya-format LoRA safetensors files.

Kept thin: parse keys into per-module groups (`group_keys`, pure), read modules one at a
time (`LoraReader`, so tools can stream a file without holding it twice), and write a
file atomically with recomputed hashes (`save_lora`). Every failure a user can cause is a
CharfwError naming the file, and the key or module where there is one.
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import safetensors
import safetensors.torch
import torch

from charfw.errors import CharfwError
from charfw.fsutil import atomic_path
from charfw.lora.metadata import (HASH_KEYS, LEGACY_WINDOW, HashStream, data_layout, safetensors_hashes,
                                  sd_scripts_data_start, tensor_bytes, with_hashes)
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
    return canonical_header(json.loads(data[8:8 + n])) + data[8 + n:]


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


def canonical_header(header: Mapping) -> bytes:
    """The length-prefixed header charfw writes: sorted keys, compact, padded with spaces to a multiple of 8."""
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def _allocate(fd: int, size: int) -> None:
    """Give the file its final size with its blocks reserved: a full disk fails here, before any work is
    written, and ext4 has no delayed allocation left to flush when the file is renamed over an older
    one (auto_da_alloc: 0.06 s per 200 MB measured, the same for O_TRUNC). ftruncate where the
    filesystem cannot reserve (every byte is written anyway)."""
    try:
        os.posix_fallocate(fd, 0, size)
    except (AttributeError, OSError) as exc:   # no posix_fallocate (macOS), or a filesystem without it
        if isinstance(exc, OSError) and exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
        os.ftruncate(fd, size)


class StreamedLora:
    """A LoRA file written tensor by tensor, from any thread, at offsets the header fixes up front, then
    hashed as sd-scripts defines it and its header completed: never a second copy of the data in memory.

    Byte for byte what write_safetensors writes for the same tensors and metadata. Use inside
    atomic_path: `put` every tensor (any order), then `finish(metadata)`.
    """

    def __init__(self, path: Path, entries: Mapping[str, tuple[torch.dtype, tuple[int, ...]]],
                 metadata: Mapping[str, str]):
        self.layout = data_layout(entries)
        self.order = list(self.layout)
        self.metadata = {**metadata, **{k: "0" * n for k, n in zip(HASH_KEYS, (64, 8))}}   # placeholders
        self.header = canonical_header({"__metadata__": self.metadata, **self.layout})
        self.hash_start = sd_scripts_data_start(self.layout, metadata)
        self.hash = HashStream() if self.hash_start <= LEGACY_WINDOW[0] else None
        self.hashed = 0   # tensors fed to the hash so far, in layout order
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        self.path = path
        size = self.order and self.layout[self.order[-1]]["data_offsets"][1]
        try:
            _allocate(self.fd, len(self.header) + (size or 0))
            os.pwrite(self.fd, self.header, 0)
        except BaseException:
            self.close()
            raise

    def put(self, name: str, tensor: torch.Tensor) -> None:
        entry = self.layout[name]
        raw = tensor_bytes(tensor)
        begin, end = entry["data_offsets"]
        if raw.nbytes != end - begin or list(tensor.shape) != entry["shape"]:
            raise ValueError(f"{name}: {tuple(tensor.shape)} {tensor.dtype} is not what the header says")
        view, offset = memoryview(raw).cast("B"), len(self.header) + begin
        while view:
            written = os.pwrite(self.fd, view, offset)
            view, offset = view[written:], offset + written

    def hash_in_order(self, name: str, tensor: torch.Tensor) -> None:
        """Feed the hash while tensors still arrive in layout order (saves reading the file back)."""
        if self.hash is not None and self.hashed < len(self.order) and self.order[self.hashed] == name:
            self.hash.update(tensor_bytes(tensor))
            self.hashed += 1
        else:
            self.hash = None

    def adopt(self, stream: HashStream, names: list[str]) -> None:
        """Take a hash fed elsewhere with the tensors `names`, in that order (while they were still being
        made, before this header was known), if that is the file's order; else they are hashed here."""
        if self.hash is not None and self.hashed == 0 and names == self.order:
            self.hash, self.hashed = stream, len(names)

    @property
    def hashed_all(self) -> bool:
        return self.hash is not None and self.hashed == len(self.order)

    def finish(self, metadata: Mapping[str, str]) -> None:
        """Complete the hashes (reading back what was not fed in order) and write the final header."""
        hashes = self.hash.hexdigests(self.hash_start) if self.hashed_all else self._hashes_from_file(metadata)
        header = canonical_header({"__metadata__": {**metadata, **dict(zip(HASH_KEYS, hashes))}, **self.layout})
        if len(header) != len(self.header):   # the hashes have fixed lengths: only other metadata could differ
            raise ValueError("the header changed length")
        os.pwrite(self.fd, header, 0)
        os.close(self.fd)
        self.fd = -1

    def _hashes_from_file(self, metadata: Mapping[str, str]) -> tuple[str, str]:
        if self.hash_start > LEGACY_WINDOW[0]:   # the hash window holds header bytes: the in-memory definition
            return safetensors_hashes(safetensors.torch.load_file(str(self.path)), metadata)
        stream = HashStream()
        offset, end = len(self.header), os.fstat(self.fd).st_size
        while offset < end:
            chunk = os.pread(self.fd, min(1 << 24, end - offset), offset)
            stream.update(chunk)
            offset += len(chunk)
        return stream.hexdigests(self.hash_start)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
