"""LoRA file metadata: what charfw records about its edits, and the sd-scripts hashes.

Input metadata is kept; an edit adds to it the way sd-scripts' resize does (a prefix on
`ss_training_comment`, `ss_network_dim`/`ss_network_alpha` set to "Dynamic" where modules
differ) plus `charfw_*` keys saying exactly what was done.

`sshs_model_hash` / `sshs_legacy_hash` follow sd-scripts' definition (used by
sd-webui-additional-networks to index models): serialize the tensors with only the
`ss_*` metadata as safetensors; model hash = SHA-256 of everything after the header,
legacy hash = first 8 hex digits of SHA-256 of bytes 0x100000..0x10FFFF of that
serialization. They must be recomputed whenever tensors or `ss_*` metadata change.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Iterable, Mapping

import safetensors.torch
import torch

COMMENT_KEY = "ss_training_comment"
HASH_KEYS = ("sshs_model_hash", "sshs_legacy_hash")


# safetensors lays the data out by dtype (this order, descending), then by name; the header is compact
# JSON (UTF-8 as is) padded with spaces to a multiple of 8 bytes
_ST_DTYPES = {torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.float8_e5m2: "F8_E5M2",
              torch.float8_e4m3fn: "F8_E4M3", torch.int16: "I16", torch.uint16: "U16", torch.float16: "F16",
              torch.bfloat16: "BF16", torch.int32: "I32", torch.uint32: "U32", torch.float32: "F32",
              torch.float64: "F64", torch.int64: "I64", torch.uint64: "U64"}
_DTYPE_ORDER = {dtype: i for i, dtype in enumerate(_ST_DTYPES)}
LEGACY_WINDOW = (0x100000, 0x110000)


def layout_order(entries: Mapping[str, tuple[torch.dtype, tuple[int, ...]]]) -> list[str]:
    """Tensor names in the order safetensors lays their data out: by dtype (descending), then by name."""
    return sorted(entries, key=lambda k: (-_DTYPE_ORDER[entries[k][0]], k))


def data_layout(entries: Mapping[str, tuple[torch.dtype, tuple[int, ...]]]) -> dict[str, dict]:
    """{name: {"dtype", "shape", "data_offsets"}} as a safetensors header holds it, in layout order."""
    out, offset = {}, 0
    for name in layout_order(entries):
        dtype, shape = entries[name]
        size = math.prod(shape) * dtype.itemsize
        out[name] = {"dtype": _ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    return out


def sd_scripts_data_start(layout: Mapping[str, dict], metadata: Mapping[str, str]) -> int:
    """Where the data begins in sd-scripts' hashing serialization (its `ss_*` metadata only): the legacy
    hash's window is counted from the file's first byte, so it depends on that header's length."""
    training = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    n = len(json.dumps({"__metadata__": training, **layout}, separators=(",", ":"), ensure_ascii=False).encode())
    return 8 + n + (-n % 8)


class HashStream:
    """sd-scripts' (model_hash, legacy_hash) fed the data region chunk by chunk, in layout order.

    The legacy hash's window is counted from the file's first byte, so where it falls in the data
    depends on the header's length: the stream keeps the data's first bytes (never more than the
    window's end, ~1 MiB) and is told where the data starts only at the end, so a writer can hash
    tensors before its header is known.
    """

    def __init__(self):
        self.model, self.head = hashlib.sha256(), bytearray()

    def update(self, raw) -> None:
        raw = memoryview(raw).cast("B")
        self.model.update(raw)
        room = LEGACY_WINDOW[1] - len(self.head)
        if room > 0:
            self.head += raw[:room]

    def hexdigests(self, data_start: int) -> tuple[str, str]:
        """(model_hash, legacy_hash) for data that starts at byte `data_start` (≤ the window's start)."""
        lo, hi = LEGACY_WINDOW[0] - data_start, LEGACY_WINDOW[1] - data_start
        return self.model.hexdigest(), hashlib.sha256(self.head[lo:hi]).hexdigest()[:8]


def tensor_bytes(t: torch.Tensor):
    """A tensor's bytes as stored, without a copy when it is already contiguous."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy()


def safetensors_hashes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> tuple[str, str]:
    """(model_hash, legacy_hash) as sd-scripts computes them before saving, read straight from the
    tensors' memory in the order safetensors lays them out: no serialized copy of the file."""
    layout = data_layout({k: (t.dtype, tuple(t.shape)) for k, t in tensors.items()})
    start = sd_scripts_data_start(layout, metadata)
    if start > LEGACY_WINDOW[0]:    # metadata of over a MiB: the window holds header bytes
        training = {k: v for k, v in metadata.items() if k.startswith("ss_")}
        data = safetensors.torch.save(dict(tensors), training)
        return (hashlib.sha256(memoryview(data)[start:]).hexdigest(),
                hashlib.sha256(memoryview(data)[slice(*LEGACY_WINDOW)]).hexdigest()[:8])
    stream = HashStream()
    for name in layout:
        stream.update(tensor_bytes(tensors[name]))
    return stream.hexdigests(start)


def with_hashes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> dict[str, str]:
    meta = {k: v for k, v in metadata.items() if k not in HASH_KEYS}
    meta["sshs_model_hash"], meta["sshs_legacy_hash"] = safetensors_hashes(tensors, meta)
    return meta


def prefix_comment(metadata: dict[str, str], note: str) -> None:
    """Prepend `note; ` to the training comment, as sd-scripts' resize does."""
    metadata[COMMENT_KEY] = f"{note}; {metadata.get(COMMENT_KEY, '')}"


def _uniform(values: Iterable[float]) -> str:
    distinct = set(values)
    if len(distinct) != 1:
        return "Dynamic"
    v = distinct.pop()
    return str(int(v)) if isinstance(v, int) else str(float(v))


def record_merge(metadata: dict[str, str], spec: str, arch: str, weights_csv: str) -> None:
    metadata["charfw_block_weights"] = weights_csv
    metadata["charfw_block_weights_spec"] = spec
    metadata["charfw_arch"] = arch
    prefix_comment(metadata, f"block weights {spec} applied ({arch}: {weights_csv})")


def _alpha(m) -> float | int:
    """A module's alpha; without an alpha tensor loaders use the rank."""
    return m.rank if m.alpha is None else m.alpha


def record_ranks(metadata: dict[str, str], modules: list) -> None:
    """`ss_network_dim`/`_alpha` (and the conv values in `ss_network_args`) as the LoRA modules now are."""
    if not modules:
        return
    metadata["ss_network_dim"] = _uniform(m.rank for m in modules)
    metadata["ss_network_alpha"] = _uniform(_alpha(m) for m in modules)
    conv = [m for m in modules if m.conv3x3]
    try:
        args = json.loads(metadata.get("ss_network_args") or "null")
    except ValueError:
        return
    if conv and isinstance(args, dict) and "conv_dim" in args:
        args["conv_dim"] = _uniform(m.rank for m in conv)
        args["conv_alpha"] = _uniform(_alpha(m) for m in conv)
        metadata["ss_network_args"] = json.dumps(args)


def record_compress(metadata: dict[str, str], *, method: str, param: float | None, old_dim: int | None,
                    modules: list, options: Mapping[str, object]) -> None:
    """Record a resize the way sd-scripts words it, plus the exact options used."""
    record_ranks(metadata, modules)
    if method == "rank":
        prefix_comment(metadata, f"dimension is resized from {old_dim} to {int(param)}")
    else:
        prefix_comment(metadata, f"Dynamic resize with {method}: {param} from {old_dim}")
    metadata["charfw_compress"] = json.dumps({"method": method, "param": param, **options}, sort_keys=True)


SUMMARY_KEYS = ("ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_args",
                "ss_base_model_version", "ss_sd_model_name", "ss_max_train_steps", "ss_learning_rate",
                COMMENT_KEY, "modelspec.title", "modelspec.architecture", "modelspec.trigger_phrase",
                "charfw_block_weights", "charfw_compress", *HASH_KEYS)


def summary(metadata: Mapping[str, str]) -> dict[str, str]:
    """The metadata a person checks first; long JSON blobs (tag frequency...) left out."""
    return {k: metadata[k] for k in SUMMARY_KEYS if k in metadata}
