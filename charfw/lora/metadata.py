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


def safetensors_hashes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> tuple[str, str]:
    """(model_hash, legacy_hash) as sd-scripts computes them before saving, read straight from the
    tensors' memory in the order safetensors lays them out: no serialized copy of the file."""
    training = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    names = sorted(tensors, key=lambda k: (-_DTYPE_ORDER[tensors[k].dtype], k))
    header: dict = {"__metadata__": training}
    offset = 0
    for name in names:
        t = tensors[name]
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    header_len = len(json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode())
    start = 8 + header_len + (-header_len % 8)          # where the data begins in the serialization
    if start > LEGACY_WINDOW[0]:                        # metadata of over a MiB: the window holds header bytes
        data = safetensors.torch.save(dict(tensors), training)
        return (hashlib.sha256(memoryview(data)[start:]).hexdigest(),
                hashlib.sha256(memoryview(data)[slice(*LEGACY_WINDOW)]).hexdigest()[:8])
    model, legacy = hashlib.sha256(), hashlib.sha256()
    lo, hi = LEGACY_WINDOW[0] - start, LEGACY_WINDOW[1] - start   # the window in data coordinates
    position = 0
    for name in names:
        raw = tensors[name].detach().contiguous().reshape(-1).view(torch.uint8).numpy()
        model.update(raw)
        end = position + len(raw)
        if end > lo and position < hi:
            legacy.update(raw[max(lo, position) - position:min(hi, end) - position])
        position = end
    return model.hexdigest(), legacy.hexdigest()[:8]


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
