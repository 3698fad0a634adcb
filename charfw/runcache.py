"""The shared run cache: a finished LoRA stored under its run key, so no one trains it twice.

`cache:` in charfw.yaml (or CHARFW_RUN_CACHE) is an fsspec URL: a folder (`/mnt/team/charfw-cache`,
`file:///...`), `s3://bucket/charfw` (with the `s3` extra), or anything fsspec opens. An entry is
`loras/<key>.safetensors` plus `loras/<key>.json`, its manifest (size and SHA-256 of the file); the
manifest is written last, each file under a temporary name first and then renamed, so a half
upload is never an entry. A hit is downloaded to a temporary file, checked against the manifest and
only then renamed into place; a corrupt or partial entry is reported and ignored (the LoRA is trained
again and the entry replaced). Only safetensors files and JSON are stored or read: never a pickle.

A stopped run's resumable state (the embedded trainer's: safetensors and state.json) is stored too,
under `states/<run key>/` with `states/<run key>.json` (each file's size and SHA-256) written
last, so another machine with the same inputs resumes it; a finished run removes it.
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
            _put(self.fs, self._path(key, suffix), payload)

    def _whole(self, key: str) -> bool:
        entry = self.manifest(key)
        try:
            return entry is not None and self.fs.size(self._path(key, ".safetensors")) == entry["size"]
        except FileNotFoundError:
            return False


class StateStore:
    """Resumable states in the run cache: whole or absent, as LoRA entries are."""

    def __init__(self, runs: RunCache):
        self.runs, self.fs = runs, runs.fs

    def _folder(self, key: str) -> str:
        return f"{self.runs.base.rstrip('/')}/states/{key.replace(':', '-')}"

    def _path(self, key: str, name: str | None = None) -> str:
        """A file of the state, or (no name) its manifest."""
        return f"{self._folder(key)}/{name}" if name else self._folder(key) + ".json"

    def store(self, key: str, folder: Path) -> int:
        """Upload the state in `folder` (its safetensors and JSON files); returns the bytes sent."""
        files = sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix in (".safetensors", ".json"))
        self.drop(key)                   # no entry while the new one uploads
        manifest, sent = {}, 0
        self.fs.makedirs(self._folder(key), exist_ok=True)
        for path in files:
            data = path.read_bytes()
            manifest[path.name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            _put(self.fs, self._path(key, path.name), data)
            sent += len(data)
        _put(self.fs, self._path(key), json.dumps({"files": manifest}).encode())
        return sent

    def fetch(self, key: str, folder: Path, index: str) -> bool:
        """Download a whole stored state into `folder` (`index`, its state.json, last); False if none."""
        try:
            with self.fs.open(self._path(key), "rb") as f:
                files = json.loads(f.read())["files"]
        except FileNotFoundError:
            return False
        except (OSError, ValueError, KeyError) as exc:
            self.runs.problems.append(f"run cache state {key[:12]}: unreadable manifest ({exc}); ignored")
            return False
        for name in sorted(files, key=lambda n: n == index):
            if "/" in name or name.startswith(".") or not name.endswith((".safetensors", ".json")):
                self.runs.problems.append(f"run cache state {key[:12]}: refusing the file name {name!r}")
                return False
            with self.fs.open(self._path(key, name), "rb") as src:
                data = src.read()
            if hashlib.sha256(data).hexdigest() != files[name]["sha256"]:
                self.runs.problems.append(f"run cache state {key[:12]}: {name} is corrupt; ignored")
                return False
            with atomic_path(Path(folder) / name) as tmp:
                Path(tmp).write_bytes(data)
        return True

    def drop(self, key: str) -> None:
        """Remove a stored state (its manifest first, so it is never seen half removed)."""
        for path in (self._path(key), self._folder(key)):
            try:
                self.fs.rm(path, recursive=True)
            except FileNotFoundError:
                pass



def _put(fs, final: str, payload: bytes) -> None:
    """Write under a temporary name, then rename: a reader sees the whole file or none."""
    tmp = f"{final}.tmp-{uuid.uuid4().hex}"
    with fs.open(tmp, "wb") as f:
        f.write(payload)
    fs.mv(tmp, final)


class _Corrupt(Exception):
    pass
