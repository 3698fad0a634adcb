"""The shared run cache: a finished LoRA stored under its run key, so no one trains it twice.

`cache:` in charfw.yaml (or CHARFW_RUN_CACHE) is an fsspec URL: a folder (`/mnt/team/charfw-cache`,
`file:///...`), `s3://bucket/charfw` (with the `s3` extra), or anything fsspec opens. An entry is
`loras/<key>.safetensors` plus `loras/<key>.json`, its manifest (size and SHA-256 of the file); the
manifest is written last, each file under a temporary name first and then renamed, so a half
upload is never an entry. A hit is downloaded to a temporary file, checked against the manifest and
only then renamed into place; a corrupt or partial entry is reported and ignored (the LoRA is trained
again and the entry replaced). Only safetensors files and JSON are stored or read: never a pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

from charfw.fsutil import atomic_path

ENV = "CHARFW_RUN_CACHE"
CHUNK = 1 << 20


def cache_url(configured: str | None, root: Path) -> str | None:
    """The cache in use: CHARFW_RUN_CACHE, else `cache:` (a plain path relative to the workspace)."""
    url = os.environ.get(ENV) or configured
    if not url:
        return None
    if "://" not in url:
        url = str((root / Path(url).expanduser()).resolve())
    return url


class RunCache:
    def __init__(self, url: str):
        import fsspec

        self.url = url
        self.fs, self.base = fsspec.core.url_to_fs(url)
        self.problems: list[str] = []     # what was found wrong (reported by the caller)
        self.bad: set[str] = set()        # keys whose entry was found corrupt: the next store replaces it

    def _path(self, key: str, suffix: str) -> str:
        return f"{self.base.rstrip('/')}/loras/{key.replace(':', '-')}{suffix}"

    def manifest(self, key: str) -> dict | None:
        try:
            with self.fs.open(self._path(key, ".json"), "rb") as f:
                data = json.loads(f.read())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            self.problems.append(f"run cache entry {key[:12]}: unreadable manifest ({exc}); ignored")
            return None
        return data if isinstance(data, dict) and {"sha256", "size"} <= set(data) else None

    def has(self, key: str) -> bool:
        return self.manifest(key) is not None

    def fetch(self, key: str, dest: Path) -> bool:
        """Download the entry to `dest` (atomically) if it is there and whole; False otherwise."""
        entry = self.manifest(key)
        if entry is None:
            return False
        digest, size = hashlib.sha256(), 0
        try:
            with atomic_path(dest) as tmp:
                with self.fs.open(self._path(key, ".safetensors"), "rb") as src, open(tmp, "wb") as out:
                    while chunk := src.read(CHUNK):
                        digest.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
                if digest.hexdigest() != entry["sha256"] or size != entry["size"]:
                    raise _Corrupt(f"{size} bytes, SHA-256 {digest.hexdigest()[:12]}; the manifest says "
                                   f"{entry['size']} bytes, {entry['sha256'][:12]}")
        except _Corrupt as exc:
            self.problems.append(f"run cache entry {key[:12]} is corrupt ({exc}): ignored, trained again")
            self.bad.add(key)
            return False
        except FileNotFoundError:
            self.problems.append(f"run cache entry {key[:12]} has a manifest but no file: ignored, trained again")
            self.bad.add(key)
            return False
        return True

    def store(self, key: str, source: Path) -> None:
        """Upload `source` under `key` (a whole entry or none; an existing whole entry is kept)."""
        if key not in self.bad and self.has(key) and self._whole(key):
            return
        data = Path(source).read_bytes()
        manifest = json.dumps({"sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                               "name": Path(source).name}).encode()
        self.fs.makedirs(f"{self.base.rstrip('/')}/loras", exist_ok=True)
        for suffix, payload in ((".safetensors", data), (".json", manifest)):   # the manifest last
            final = self._path(key, suffix)
            tmp = f"{final}.tmp-{uuid.uuid4().hex}"
            with self.fs.open(tmp, "wb") as f:
                f.write(payload)
            self.fs.mv(tmp, final)

    def _whole(self, key: str) -> bool:
        entry = self.manifest(key)
        try:
            return entry is not None and self.fs.size(self._path(key, ".safetensors")) == entry["size"]
        except FileNotFoundError:
            return False


class _Corrupt(Exception):
    pass
