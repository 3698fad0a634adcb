"""Base-model hashes as sd-scripts records them in LoRA metadata.

- `model_hash`  -> `ss_sd_model_hash` (and `ss_vae_hash`): AUTOMATIC1111's legacy
  short hash, the first 8 hex digits of SHA-256 over the 64 KiB that start 1 MiB
  into the file (empty input, hence 'e3b0c442', for files under 1 MiB).
- `model_sha256` -> `ss_new_sd_model_hash` (and `ss_new_vae_hash`): SHA-256 of the whole file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from charfw.errors import CharfwError

_LEGACY_OFFSET = 0x100000
_LEGACY_LENGTH = 0x10000


def _open(path: str | Path):
    path = Path(path)
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise CharfwError("model file not found", file=path) from None
    except (IsADirectoryError, PermissionError) as exc:
        raise CharfwError(f"cannot read model file: {exc.strerror}", file=path) from None


def model_hash(path: str | Path) -> str:
    """Legacy 8-hex-digit model hash (A1111 'old hash', sd-scripts `model_hash`)."""
    with _open(path) as f:
        f.seek(_LEGACY_OFFSET)
        return hashlib.sha256(f.read(_LEGACY_LENGTH)).hexdigest()[:8]


def model_sha256(path: str | Path) -> str:
    """Full-file SHA-256 in hex (A1111 'new hash', sd-scripts `calculate_sha256`)."""
    digest = hashlib.sha256()
    with _open(path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
