"""Whether a target's LoRA is finished: its *run key*, recorded beside the LoRA.

doit's database is written only at the end of a run, so losing it must not retrain finished
LoRAs: the run key hashes every setting the chosen trainer reads that changes the result
(charfw.config.models classifies each field once) plus the content of every input file.
A LoRA whose stored key matches is finished whatever doit remembers.

File contents are digested once per (path, size, mtime_ns), as doit's own MD5 checker
does, and the digests are kept in `build/.digests.json` (charfw.filecache): a no-op `doit`
reads no image bytes, and targets sharing a face set digest it once.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from charfw.config.models import run_key_fields
from charfw.errors import CharfwError
from charfw.filecache import FileCache, file_cache
from charfw.fsutil import write_text
from charfw.request import TrainRequest
from charfw.rules.modelref import is_builtin

DIGESTS_FILE = ".digests.json"


def _md5(path) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "md5").hexdigest()
    except OSError:
        return None


class DigestCache:
    """md5 of files by (size, mtime_ns), persisted as one JSON file (None: in memory only)."""

    def __init__(self, path: Path | None = None, cache: FileCache | None = None):
        self.cache = cache or FileCache(path)

    def digest(self, path: str | Path) -> str | None:
        """The file's md5, or None when it does not exist (not built yet)."""
        return self.cache.get(path, _md5)

    def save(self) -> None:
        self.cache.save()


def digest_cache(build_dir: Path) -> DigestCache:
    """The process's digest cache for one workspace's build folder."""
    return DigestCache(cache=file_cache(build_dir, DIGESTS_FILE))


def model_identity(model: str | None) -> str | None:
    """A cheap content identity for multi-GB checkpoints: size + sd-scripts' legacy 64 KiB hash."""
    if model is None or is_builtin(model):
        return model
    from charfw.models.hashing import model_hash

    path = Path(model)
    try:
        return f"{path.name}:{path.stat().st_size}:{model_hash(path)}"
    except (OSError, CharfwError):  # missing now: the run itself will say so clearly
        return f"{path.name}:missing"


CPU_PREFIX = "cpu:"  # a key file "cpu:<key>": trained on a CPU, where mixed precision is not used


def run_config(req: TrainRequest, cpu: bool = False) -> dict:
    """Every value the chosen trainer reads that changes its result, JSON-ready.

    `cpu`: the embedded trainer ran on a CPU, always in fp32, so `mixed_precision` did not matter.
    """
    fields = set(run_key_fields(req.settings.trainer))
    if cpu and req.settings.trainer == "embedded":
        fields.discard("mixed_precision")
    return {
        "settings": req.settings.model_dump(include=fields),
        "steps": req.steps,
        "model": model_identity(req.model),
        "vae": model_identity(req.vae),
        "name": req.name,
        "trigger_words": list(req.trigger_words),
    }


def run_key(req: TrainRequest, cache: DigestCache | None = None, cpu: bool = False) -> str | None:
    """Hash of config + input contents; None while an input is missing (not built yet)."""
    cache = cache or DigestCache()
    h = hashlib.sha256(json.dumps(run_config(req, cpu), sort_keys=True).encode())
    root = str(req.root) + os.sep
    for path in sorted(req.inputs, key=str):
        digest = cache.digest(path)
        if digest is None:
            return None
        text = str(path)
        h.update(f"{text[len(root):] if text.startswith(root) else text}:{digest}\n".encode())
    cache.save()
    return h.hexdigest()


def is_trained(req: TrainRequest, cache: DigestCache | None = None) -> bool:
    try:
        stored = req.key_file.read_text().strip()
    except OSError:
        return False
    cpu = stored.startswith(CPU_PREFIX)
    key = run_key(req, cache, cpu)
    return key is not None and req.output.is_file() and stored == (CPU_PREFIX if cpu else "") + key


def record(req: TrainRequest, key: str | None, cpu: bool = False) -> None:
    """Mark the LoRA finished (after it is in place); `key` computed with the same `cpu`."""
    if key is not None:
        write_text(req.key_file, (CPU_PREFIX if cpu else "") + key + "\n")
